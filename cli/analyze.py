"""`diziner analyze ANNOTATIONS [--json] [--token-scores] [--percentile 80]` (docs/method.md, "Disagreement report").

Deterministic and LLM-free: imports neither LangGraph nor LangChain.
"""

from __future__ import annotations

import argparse
import gc
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `diziner analyze`."""
    p.add_argument(
        "annotations", metavar="ANNOTATIONS", help="JSONL: {id, text, annotations: {annotator: [spans] | null}}"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the Markdown report")
    p.add_argument("--token-scores", action="store_true", help="with --json: per-token disagreement scores")
    p.add_argument("--percentile", type=float, default=80.0, help="hotspot threshold percentile (default 80)")
    p.add_argument("--coalition-cutoff", type=float, default=0.5, help="weight mass of the elite (default 0.5)")
    p.add_argument("--weight-floor", type=float, default=0.1, help="floor of an annotator's weight (default 0.1)")


def run(args: argparse.Namespace) -> int:
    """Read, analyse, print the Markdown report or the JSON. InputError propagates to cli.main (exit 2)."""
    # Millions of small objects and no cycles: the cyclic GC would only cost time here.
    """Analyse an annotations file and print the Markdown report or the JSON figures."""
    gc.disable()
    from disagreement.engine import EngineParams, analyze
    from disagreement.io import read_annotations, result_to_json, write_json

    params = EngineParams(
        percentile=args.percentile, coalition_cutoff=args.coalition_cutoff, weight_floor=args.weight_floor
    )
    batch = read_annotations(args.annotations)
    result = analyze(batch, params)
    if result.excluded:
        print(f"note: excluded (failed on every document): {', '.join(result.excluded)}", file=sys.stderr)
    if args.json:
        write_json(result_to_json(result, token_scores=args.token_scores), sys.stdout)
    else:
        if args.token_scores:
            print("note: --token-scores only applies with --json", file=sys.stderr)
        from disagreement.render_markdown import render_markdown
        from disagreement.report import ReportParams, build_report

        sys.stdout.write(render_markdown(build_report(result, ReportParams())))
    sys.stdout.flush()
    return 0
