"""`diziner annotate --run RUN_DIR --docs DOCS --out PRED.jsonl [--round T --annotator NAME] [--limit N]`.

Applies the configuration `diziner refine` selected (RUN_DIR/guideline.json), or the one annotator NAME used in
round T, to a corpus, with that annotator's model as saved in RUN_DIR/run.json, concurrently up to the model's
limit. Document ids and texts are the reader's, and entity types are written back as the dataset's labels through
the task's label mapping, so `diziner evaluate --gold DOCS --pred PRED.jsonl` works directly. A document the
model fails on is left out of PRED (its gold spans then count as misses) and reported on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from cli import rundir
from state.errors import InputError

PROG = "diziner annotate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Without --round/--annotator the selected configuration (RUN_DIR/guideline.json) is applied with the selected\n"
        "annotator's model. PRED is JSONL {id, text, entities: [{start, end, type}]} with the dataset's labels;\n"
        "documents that failed are left out and counted on stderr. Exit codes: 0 done (even with some failed\n"
        "documents), 2 bad input, 1 every document failed."
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by `diziner refine`")
    p.add_argument("--docs", required=True, metavar="DOCS", help="documents to annotate (JSONL or CoNLL; gold entities are ignored)")
    p.add_argument("--out", required=True, metavar="PRED.jsonl", help="predictions (JSONL), written whole")
    p.add_argument("--round", type=int, metavar="T", help="with --annotator: the configuration of round T ...")
    p.add_argument("--annotator", metavar="NAME", help="... that annotator NAME used (and NAME's model)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N documents (evaluate against the same N)")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_configuration(run_dir: Path, record: rundir.RunRecord, round_: int | None, annotator: str | None):
    """(round, annotator, TaskConfiguration, model spec) chosen by the options: the selected configuration, or the
    one annotator NAME used in round T; the spec is the one the run resolved for that annotator."""
    from pydantic import ValidationError

    from state.inputs import describe_validation_error
    from state.models import TaskConfiguration

    names = record.models.names
    if (round_ is None) != (annotator is None):
        raise InputError("give --round and --annotator together (or neither, for the selected configuration)")
    if annotator is not None:
        if annotator not in names:
            raise InputError(f"--annotator {annotator!r} is not an annotator of this run ({', '.join(names)})")
        path = rundir.configuration_path(run_dir, round_, annotator)
        if not path.is_file():
            rounds = rundir.round_numbers(run_dir)
            raise InputError(
                f"no configuration of {annotator} in round {round_} (rounds with files: "
                f"{', '.join(map(str, rounds)) or 'none'})", path=str(run_dir))
        data = rundir.read_json(path, "configuration")
    else:
        path = run_dir / rundir.GUIDELINE_JSON
        if not path.is_file():
            raise InputError(_no_selection(run_dir), path=str(run_dir))
        data = rundir.read_json(path, "guideline.json")
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=str(path))
    try:
        configuration = TaskConfiguration.model_validate({k: v for k, v in data.items() if k not in ("round", "annotator")})
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc), path=str(path)) from None
    name = data.get("annotator", annotator)
    if name not in names:
        raise InputError(f"the configuration names annotator {name!r}, which run.json does not list", path=str(path))
    return int(data.get("round", round_ or 0)), name, configuration, record.models.annotator(name)


def _no_selection(run_dir: Path) -> str:
    """Why a run has no guideline.json, and what to do: a finished run that selected nothing needs a named
    configuration; a finished run that lost the file, or an unfinished one, is resumed."""
    rounds = ", ".join(map(str, rundir.round_numbers(run_dir))) or "none"
    try:
        summary = rundir.read_json(run_dir / rundir.SUMMARY, "summary.json")
    except InputError:
        summary = None
    if isinstance(summary, dict) and summary.get("status") == "finished":
        if not summary.get("selection"):
            reason = summary.get("stop_reason")
            return (f"the run finished without selecting any configuration{f' ({reason})' if reason else ''}: name "
                    f"one with --round T and --annotator NAME (rounds with files: {rounds})")
        return ("the run finished and selected a configuration, but guideline.json is missing: "
                f"`diziner refine --resume {run_dir}` writes it again from the checkpoints, or name a configuration "
                f"with --round and --annotator (rounds with files: {rounds})")
    return ("the run has no selected configuration yet (guideline.json): it has not finished; continue it with "
            f"`diziner refine --resume {run_dir}`, or name a configuration with --round and --annotator "
            f"(rounds with files: {rounds})")


def check_output(out: Path, docs: Path) -> None:
    """--out must name a file that can be written whole, and not --docs: checked before any model call."""
    if out.is_dir():
        raise InputError("--out names a directory; give the predictions file's path (PRED.jsonl)", path=str(out))
    if out.exists() and out.resolve() == docs.resolve():
        raise InputError("--out would overwrite --docs", path=str(out))
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"the output's directory {str(parent)!r} does not exist", path=str(out))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"the output's directory {str(parent)!r} is not writable", path=str(out))
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError("the output file is not writable", path=str(out))


def run(args: argparse.Namespace) -> int:
    """Apply the chosen configuration to a corpus and write the predictions with the dataset's labels."""
    from corpus.io import CorpusDocument, read_documents, write_jsonl

    # every check before the first model call: options, run directory, configuration, output path, documents
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    run_dir = Path(args.run)
    record = rundir.read_run(run_dir)
    task = record.task_definition
    round_, annotator, configuration, spec = load_configuration(run_dir, record, args.round, args.annotator)
    out = Path(args.out)
    check_output(out, Path(args.docs))
    docs, stats = read_documents(args.docs)
    for msg in stats.warnings(args.docs):
        _say(f"{PROG}: warning: {msg}")
    if args.limit is not None:
        docs = docs[: args.limit]
    if not docs:
        raise InputError("no documents to annotate", path=args.docs)

    _say(f"{PROG}: {len(docs)} document(s) with {annotator}, configuration of round {round_}")
    started = time.perf_counter()
    outputs = asyncio.run(_annotate(spec, configuration, docs, round_))
    labels = task.to_dataset_label()
    by_id = {o.document_id: o for o in outputs}
    kept, failed = [], []
    for d in docs:
        o = by_id.get(d.id)
        if o is None or o.status != "ok":
            failed.append((d.id, o.reason if o is not None else "no output"))
            continue
        spans = sorted({(s.start, s.end, labels.get(s.type, s.type)) for s in o.spans})
        kept.append(CorpusDocument(d.id, d.text, list(spans), d.tokens, dict(d.extra)))
    write_jsonl(out, kept)
    seconds = time.perf_counter() - started
    n_spans = sum(len(d.entities or []) for d in kept)
    _say(f"{PROG}: wrote {out}: {len(kept)} document(s), {n_spans} entities ({seconds:.1f} s)")
    if failed:
        first = "; ".join(f"{i}: {' '.join(str(r).split())[:160]}" for i, r in failed[:3])
        _say(f"{PROG}: {len(failed)} of {len(docs)} document(s) failed and were left out (their gold entities count as "
             f"misses): {first}{' ...' if len(failed) > 3 else ''}")
    if not kept:
        _say(f"{PROG}: every document failed")
        return 1
    return 0


async def _annotate(spec, configuration, docs, round_: int):
    from agents import models
    from agents.annotator import run_annotator
    from state.models import Document

    documents = [Document(id=d.id, text=d.text) for d in docs]
    total = len(documents)
    step = max(1, total // 10)
    seen = 0

    def on_start(doc: Document) -> None:
        nonlocal seen
        seen += 1
        if total >= 20 and seen % step == 0:
            _say(f"{PROG}: {seen}/{total} documents started")

    outputs, _ = await run_annotator(models.chat_model, spec, configuration, documents, round_, phase="apply", on_start=on_start)
    return outputs
