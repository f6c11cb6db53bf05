"""`diziner evaluate --gold G --pred P [--limit N] [--json]`: strict span P/R/F1 (docs/method.md, "Scoring").

Documents are matched by id; when both files are CoNLL, by position (differing sentence counts or tokens are an
error). ``--limit N`` scores the first N gold documents only. With ``--json`` stdout holds exactly one JSON object
(floats unrounded) and every message goes to stderr; otherwise an aligned table. Imports only `corpus` (no
LangGraph, LangChain or Pydantic).
"""

from __future__ import annotations

import argparse
import json
import sys


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `diziner evaluate`."""
    parser.add_argument("--gold", required=True, metavar="G", help="gold documents (JSONL or CoNLL)")
    parser.add_argument("--pred", required=True, metavar="P", help="predicted documents (JSONL or CoNLL)")
    parser.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="score only the first N gold documents, in file order; predictions for the other gold documents are "
        "ignored (an id missing from the whole gold file is still an error). With two CoNLL files, the first N "
        "sentences of each are matched by position",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def format_table(result: dict) -> str:
    """Readable table: one row per type, then the micro row; P/R/F1 in percent with 2 decimals, tp/fp/fn counts."""
    rows = [(t, r) for t, r in result["per_type"].items()] + [("micro", result)]
    name_w = max([len("type")] + [len(t) for t, _ in rows])
    count_w = max([5] + [len(str(r[k])) for _, r in rows for k in ("tp", "fp", "fn")])
    header = f"{'type':<{name_w}}  {'P %':>7}  {'R %':>7}  {'F1 %':>7}  " + "  ".join(
        f"{k:>{count_w}}" for k in ("tp", "fp", "fn")
    )

    def line(name: str, r: dict) -> str:
        return (
            f"{name:<{name_w}}  {100 * r['precision']:>7.2f}  {100 * r['recall']:>7.2f}  {100 * r['f1']:>7.2f}  "
            + "  ".join(f"{r[k]:>{count_w}}" for k in ("tp", "fp", "fn"))
        )

    out = [header, "-" * len(header)]
    out += [line(t, r) for t, r in rows[:-1]]
    if len(rows) > 1:
        out.append("-" * len(header))
    out.append(line(*rows[-1]))
    return "\n".join(out)


def check_labelled(docs: list, path: str, what: str) -> None:
    """Refuse a file of documents none of which has an ``entities`` key (it would score zero without a word); warn
    when only some lack it (they count as having no entities). A CoNLL file is always labelled."""
    from state.errors import InputError

    unlabelled = [d for d in docs if d.entities is None]
    if not unlabelled:
        return
    if len(unlabelled) == len(docs):
        raise InputError(f"the {what} is unlabelled: no document has 'entities'", path=path)
    first = unlabelled[0]
    print(
        f"diziner evaluate: warning: {path}: {len(unlabelled)} of {len(docs)} document(s) have no 'entities' and "
        f"count as having none (first: {first.id!r}, line {first.line})",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    """Read both files, match documents, score, print. InputError propagates to cli.main (exit 2)."""
    from corpus.io import read_documents
    from corpus.scoring import align_by_position, score
    from state.errors import InputError

    gold, gold_stats = read_documents(args.gold)
    pred, pred_stats = read_documents(args.pred)
    for path, stats in ((args.gold, gold_stats), (args.pred, pred_stats)):
        for msg in stats.warnings(path):
            print(f"diziner evaluate: warning: {msg}", file=sys.stderr)
    check_labelled(gold, str(args.gold), "gold file")
    check_labelled(pred, str(args.pred), "predictions file")
    if not gold:
        raise InputError("the gold file holds no documents: there is nothing to score", path=str(args.gold))
    if gold_stats.format == "conll" and pred_stats.format == "conll":
        if args.limit is not None:
            gold, pred = gold[: args.limit], pred[: args.limit]
        pred = align_by_position(gold, pred, gold_path=str(args.gold), pred_path=str(args.pred))
    result = score(gold, pred, gold_path=str(args.gold), pred_path=str(args.pred), limit=args.limit)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(format_table(result) + "\n")
    sys.stdout.flush()
    return 0
