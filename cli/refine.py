"""`diziner refine`: run the pilot-annotation loop into a run directory, resumable after any interruption.

New run:  diziner refine --task TASK --docs POOL --out RUN_DIR [options]
Resume:   diziner refine --resume RUN_DIR      (or the new-run command again with --resume added)

The graph is compiled with an AsyncSqliteSaver whose database lives in RUN_DIR and run with durability="sync", so
a run killed even with SIGKILL resumes from its last checkpoint (same thread id, `input=None`) without repeating a
finished node. The models are resolved once, before the run starts, and travel in the graph's input; the run
context is not checkpointed: run.json (`cli.rundir.RunRecord`) keeps it, with the thread id, the input files' paths
and hashes, the resolved models and the task. After every super-step the files of the run directory are rewritten
from the checkpointed state (see `cli.rundir`). Progress goes to stderr, one line per finished node (`cli.progress`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.models.errors import ModelUnavailable
from cli import checkpoints, rundir
from cli.calling import add_call_options, call_settings
from cli.progress import Progress, say
from state.errors import BudgetReached, InputError

PROG = "diziner refine"

# run-context fields settable from the command line: flag -> (field, type, help)
SETTINGS: dict[str, tuple[str, Any, str]] = {
    "--max-loops": ("max_loops", int, "annotation rounds at most, 1-5 (default %(default)s)"),
    "--pilot-size": ("pilot_size", int, "documents per pilot set (default %(default)s)"),
    "--seed": ("seed", int, "seed of the pilot-set selection (default %(default)s)"),
    "--min-gain": ("min_gain", float, "a round is stale unless its agreement beats the best so far by more than this (default %(default)s)"),
    "--patience": ("patience", int, "consecutive stale rounds that stop the run (default %(default)s)"),
    "--max-patterns": ("max_patterns", int, "supervisor phase 1: disagreement patterns at most (default %(default)s)"),
    "--max-common-instructions": ("max_common_instructions", int, "top-level common instructions in force at most (default %(default)s)"),
    "--max-model-instructions": ("max_model_instructions", int, "instructions per annotator at most (default %(default)s)"),
    "--percentile": ("percentile", float, "hotspot threshold percentile (default %(default)s)"),
    "--max-report-examples": ("max_report_examples", int, "report examples per error type (default %(default)s)"),
}
SWITCHES: dict[str, tuple[str, str]] = {
    "--cumulative": ("cumulative", "refine the guideline in force (default); --no-cumulative restarts each round from "
                     "no instructions and the original goal, as the reference code does"),
    "--diagnose-all": ("diagnose_all", "supervisor phase 2 diagnoses every annotator, not only the non-elite (default: off)"),
}

EPILOG = """\
Resuming:
  diziner refine --resume RUN_DIR
      continues an interrupted run (even one killed with kill -9) from its last checkpoint with the settings
      saved in RUN_DIR/run.json; finished nodes are not repeated. On a finished run it says so and exits 0.
  diziner refine --task TASK --docs POOL --out RUN_DIR --resume
      the same, or a new run when RUN_DIR is empty or does not exist. Options given together with --resume must
      match the saved run (same inputs, models and settings).

RUN_DIR holds summary.json, guideline.json, guideline.md, round-<t>/ (annotations.jsonl, configurations/,
report.md, phase1_patterns.json .. phase4_organization.json, failed.json), run.json and checkpoints.sqlite.
Exit codes: 0 done, 2 bad input, 1 failure (the run can then be resumed), 130 interrupted (resumable).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    io = p.add_argument_group("inputs and output")
    io.add_argument("--task", metavar="TASK", help="task file (YAML): entity types, final task goal, label mapping")
    io.add_argument("--docs", metavar="POOL", help="the unlabelled pool: JSONL {id, text} or CoNLL (gold entities are ignored)")
    io.add_argument("--out", metavar="RUN_DIR", help="run directory; must be empty or new unless --resume or --overwrite")
    io.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR (or in --out) from its last checkpoint")
    io.add_argument("--checkpoint-db", metavar="URL",
                    help="keep the checkpoints in PostgreSQL (postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME; needs the "
                         "postgres extra) instead of RUN_DIR/checkpoints.sqlite, to resume on another machine; run.json "
                         "keeps the URL without the password")
    io.add_argument("--overwrite", action="store_true",
                    help="start afresh in a run directory of an earlier run (removes its run files; other files stay)")
    models = p.add_argument_group("models (default: annotators embedded:smollm2,embedded:gemma3-270m, supervisor embedded:smollm2)")
    models.add_argument("--config", metavar="RUN.yaml",
                        help="run file listing annotators and supervisor with per-model settings (base URL, key variable, "
                             "temperature, max tokens, timeout, concurrency); excludes --annotators/--supervisor")
    models.add_argument("--annotators", metavar="A,B,...", help="annotator model specs provider:model, comma-separated (two or more)")
    models.add_argument("--supervisor", metavar="S", help="supervisor model spec provider:model")
    add_loop_options(p, "loop settings")
    add_call_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the calls, tokens and cost the run will ask for (from the pool, the prompts and the "
                        "settings) and stop before anything is called or written")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON object")


def add_loop_options(p: argparse.ArgumentParser, title: str, skip: tuple[str, ...] = ()) -> None:
    """The loop settings (`SETTINGS`, `SWITCHES`) as options, for refine and for bench (which passes them on)."""
    from graph.context import DizinerContext

    defaults = {name: f.default for name, f in DizinerContext.model_fields.items()}
    loop = p.add_argument_group(title)
    for flag, (field, typ, help_text) in SETTINGS.items():
        if flag not in skip:
            loop.add_argument(flag, type=typ, default=None, metavar="N" if typ is int else "X",
                              help=help_text % {"default": defaults[field]})
    for flag, (field, help_text) in SWITCHES.items():
        loop.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=help_text)


# ---------------------------------------------------------------- small helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    out = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in SETTINGS.items()}
    out.update({field: getattr(args, field) for field, _ in SWITCHES.values()})
    return {k: v for k, v in out.items() if v is not None}


_FLAG_OF = {field: flag for flag, (field, _, _) in SETTINGS.items()} | {f: flag for flag, (f, _) in SWITCHES.items()}


def _context(data: dict[str, Any]):
    """A DizinerContext from settings, bad values named by their command-line flag."""
    from pydantic import ValidationError

    from graph.context import DizinerContext
    from state.inputs import describe_validation_error

    try:
        return DizinerContext.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, names=_FLAG_OF)) from None


def _split_names(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def _visible_entries(path: Path) -> list[str]:
    """Entries of an existing directory, the lock file of a run that died before writing anything excepted."""
    return sorted(e.name for e in path.iterdir() if e.name != rundir.LOCK_FILE)


# ---------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """Start a new run, or resume one, in the run directory the options name."""
    resume = args.resume
    if resume is not None and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if isinstance(resume, str):
        if args.out and Path(args.out).resolve() != Path(resume).resolve():
            raise InputError(f"--resume {resume} and --out {args.out} name different run directories")
        run_dir = Path(resume)
    elif args.out:
        run_dir = Path(args.out)
    else:
        raise InputError("name the run directory: --out RUN_DIR (new run) or --resume RUN_DIR")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("the run directory is not a directory", path=str(run_dir))
    if resume is not None and rundir.is_run_dir(run_dir):
        return _resume(run_dir, args)
    if resume is not None and not (args.task and args.docs):
        raise InputError("nothing to resume: no run.json in this directory (start a run with --task, --docs and --out)",
                         path=str(run_dir))
    return _start(run_dir, args)


# ---------------------------------------------------------------- a new run


def _read_inputs(task_path: str, docs_path: str):
    """The task and the pool as graph input, validated; a labelled pool's entities are dropped (with a note)."""
    from corpus.io import read_documents
    from state.models import TaskDefinition

    task = TaskDefinition.from_yaml(task_path)
    docs, stats = read_documents(docs_path)
    for msg in stats.warnings(docs_path):
        say(f"{PROG}: warning: {msg}")
    if not docs:
        raise InputError("the pool holds no documents", path=docs_path)
    labelled = sum(1 for d in docs if d.entities is not None)
    if labelled:
        say(f"{PROG}: note: gold entities of {labelled} pool document(s) are ignored (the loop needs no labels)")
    empty = sum(1 for d in docs if not d.text.strip())
    if empty:
        say(f"{PROG}: warning: {empty} pool document(s) have no text")
    graph_input = {"task": task.model_dump(mode="json"), "documents": [{"id": d.id, "text": d.text} for d in docs]}
    return task, graph_input, stats.format


def _start(run_dir: Path, args: argparse.Namespace) -> int:
    from agents.models import resolve_models

    missing = [flag for flag, v in (("--task", args.task), ("--docs", args.docs)) if not v]
    if missing:
        raise InputError(f"a new run needs {' and '.join(missing)}")
    # 1. every input, before the run directory is touched
    task, graph_input, fmt = _read_inputs(args.task, args.docs)
    checkpoint_url = checkpoints.new_run_url(args.checkpoint_db)
    if args.config and (args.annotators or args.supervisor):
        raise InputError("give the models either in --config or with --annotators/--supervisor, not both")
    names = _split_names(args.annotators) if args.annotators is not None else None
    models = resolve_models(names, args.supervisor, run_file=args.config)
    context_data = {
        "annotators": models.names,
        "supervisor": models.supervisor.name,
        "run_config": rundir.RUN_CONFIG_COPY if args.config else "",  # relative to the run directory
        **_given_settings(args),
        **call_settings(args),
    }
    ctx = _context(context_data)
    graph_input["models"] = models.model_dump(mode="json")
    if getattr(args, "dry_run", False):
        from agents.cache import open_cache
        from cli.dryrun import plan_refine, print_plan

        cache = open_cache(ctx.cache_dir or None) if ctx.call_cache else None
        texts = [d["text"] for d in graph_input["documents"]]
        print_plan(plan_refine(task, texts, models, ctx, cache), as_json=args.json, title=f"{PROG} --dry-run")
        return 0
    # 2. the run directory
    if run_dir.is_dir():
        entries = _visible_entries(run_dir)
        if entries and not args.overwrite:
            raise InputError(
                f"the run directory is not empty ({len(entries)} entries): choose a new directory, add --resume to "
                f"continue the run in it, or --overwrite to start it afresh", path=str(run_dir))
        if entries and not rundir.is_run_dir(run_dir):
            raise InputError("--overwrite refused: not a diziner run directory (no run.json); its files are not "
                             "removed, choose another directory", path=str(run_dir))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the run directory: {exc.strerror or exc}", path=str(run_dir)) from None
    with rundir.RunLock(run_dir):
        if args.overwrite:
            kept = [k for k in rundir.clear_run_dir(run_dir) if k != rundir.LOCK_FILE]
            if kept:
                say(f"{PROG}: note: kept files that are not the run's: {', '.join(kept)}")
        record = rundir.RunRecord(
            thread_id=uuid.uuid4().hex,
            created=_now(),
            task=rundir.InputFile(path=str(Path(args.task).resolve()), sha256=rundir.file_sha256(args.task)),
            docs=rundir.PoolFile(path=str(Path(args.docs).resolve()), sha256=rundir.file_sha256(args.docs), format=fmt,
                                 documents=len(graph_input["documents"])),
            run_config=(rundir.RunFileCopy(path=str(Path(args.config).resolve()), sha256=rundir.file_sha256(args.config),
                                           copy_name=rundir.RUN_CONFIG_COPY) if args.config else None),
            context=ctx,
            models=models,
            task_definition=task,
            checkpoint_db=checkpoints.redact(checkpoint_url),
        )
        checkpoints.attach(record, checkpoint_url)
        rundir.write_run(run_dir, record)  # first: from now on the directory is a run directory
        if args.config:
            try:
                shutil.copyfile(args.config, run_dir / rundir.RUN_CONFIG_COPY)
            except OSError as exc:
                raise InputError(f"cannot copy the run file: {exc.strerror or exc}", path=args.config) from None
        say(f"{PROG}: run {record.thread_id} in {run_dir}: {len(graph_input['documents'])} documents, annotators "
            f"{', '.join(models.names)}, supervisor {models.supervisor.name}, at most {ctx.max_loops} round(s) of "
            f"{ctx.pilot_size} documents, seed {ctx.seed}")
        return _execute(run_dir, record, graph_input)


# ---------------------------------------------------------------- resuming


def _check_resume_arguments(run_dir: Path, record, args: argparse.Namespace) -> None:
    """Options repeated with --resume must agree with the saved run: a resumed run never changes its settings."""
    ctx = record.context
    diffs = []
    for field, value in _given_settings(args).items():
        if getattr(ctx, field) != value:
            diffs.append(f"{_FLAG_OF[field]} {value} (the run has {getattr(ctx, field)})")
    for flag, path, saved in (("--task", args.task, record.task.sha256), ("--docs", args.docs, record.docs.sha256)):
        if path:
            try:
                same = rundir.file_sha256(path) == saved
            except OSError as exc:
                raise InputError(f"cannot read {flag}: {exc.strerror or exc}", path=path) from None
            if not same:
                diffs.append(f"{flag} {path} (differs from the file the run started from)")
    if args.config:
        saved = record.run_config.sha256 if record.run_config else None
        if saved is None or rundir.file_sha256(args.config) != saved:
            diffs.append(f"--config {args.config} (the run used {'another run file' if saved else 'none'})")
    if args.annotators is not None and _split_names(args.annotators) != record.models.names:
        diffs.append(f"--annotators {args.annotators} (the run has {','.join(record.models.names)})")
    if args.supervisor is not None and args.supervisor != record.models.supervisor.name:
        diffs.append(f"--supervisor {args.supervisor} (the run has {record.models.supervisor.name})")
    if diffs:
        raise InputError("a resumed run keeps its saved settings; these options disagree with it: " + "; ".join(diffs),
                         path=str(run_dir))


def _resume(run_dir: Path, args: argparse.Namespace) -> int:
    record = rundir.read_run(run_dir)
    _check_resume_arguments(run_dir, record, args)
    given = call_settings(args)  # how calls are made may change on resume; what the method computes may not
    if given:
        record.context = record.context.model_copy(update=given)
    checkpoints.attach(record, checkpoints.resume_url(record.checkpoint_db, args.checkpoint_db, run_dir))
    with rundir.RunLock(run_dir):
        return _execute(run_dir, record, None)


def _inputs_again(record) -> dict[str, Any]:
    """A run killed before its first checkpoint starts over from its recorded inputs (if they are unchanged)."""
    docs_path = record.docs.path
    try:
        same = rundir.file_sha256(docs_path) == record.docs.sha256
    except OSError as exc:
        raise InputError(f"the run has no checkpoint yet and its pool cannot be read: {exc.strerror or exc}", path=docs_path) from None
    if not same:
        raise InputError("the run has no checkpoint yet and its pool changed since it started", path=docs_path)
    _, graph_input, _ = _read_inputs(record.task.path, docs_path)
    graph_input["task"] = record.task_definition.model_dump(mode="json")
    graph_input["models"] = record.models.model_dump(mode="json")
    return graph_input


# ---------------------------------------------------------------- running the graph


def _execute(run_dir: Path, record, graph_input: dict[str, Any] | None) -> int:
    session = rundir.Session(started=_now(), resumed=graph_input is None, pid=os.getpid())
    record.sessions.append(session)
    rundir.write_run(run_dir, record)
    started = time.perf_counter()
    try:
        status = asyncio.run(_run_graph(run_dir, record, graph_input))
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted; continue with: diziner refine --resume {run_dir}")
        raise
    except BudgetReached as exc:
        _mark_stopped(run_dir, str(exc))
        say(f"{PROG}: {exc}; everything done is kept: continue with a higher budget: "
            f"diziner refine --resume {run_dir} --budget USD")
        return 3
    except (InputError, ModelUnavailable):
        say(f"{PROG}: the run stopped; after fixing the cause continue with: diziner refine --resume {run_dir}")
        raise
    except Exception:
        say(f"{PROG}: the run stopped on an error; after fixing its cause continue with: diziner refine --resume {run_dir}")
        raise
    session.seconds = round(time.perf_counter() - started, 3)
    session.outcome = status
    rundir.write_run(run_dir, record)
    _write_report(run_dir)
    return 0


def _write_report(run_dir: Path) -> None:
    """report.html of the finished run (`diziner report` writes it again at any time)."""
    try:
        from reporting.run_report import write_report

        path = write_report(run_dir)
    except Exception as exc:  # the run's own files are written: a report that fails is only a warning
        say(f"{PROG}: warning: report.html not written ({type(exc).__name__}: {exc}); try `diziner report {run_dir}`")
    else:
        say(f"{PROG}: report: {path}")


def _mark_stopped(run_dir: Path, reason: str) -> None:
    """summary.json of a run the budget stopped: its status and why (the state's own figures stay as written)."""
    path = run_dir / rundir.SUMMARY
    summary = rundir.read_json(path, "summary.json") if path.is_file() else {}
    summary.update(status="stopped", stop_reason=reason)
    rundir.write_json(path, summary)


def _state(values: dict[str, Any]):
    from state.graph_state import DizinerState

    return DizinerState.model_validate(values)


def _extras(record, session_started: float) -> dict[str, Any]:
    return {"thread_id": record.thread_id, "session_seconds": round(time.perf_counter() - session_started, 3)}


async def _run_graph(run_dir: Path, record, graph_input: dict[str, Any] | None) -> str:
    progress = Progress()
    try:
        return await _stream_graph(run_dir, record, graph_input, progress)
    finally:
        progress.close()


async def _stream_graph(run_dir: Path, record, graph_input: dict[str, Any] | None, progress: Progress) -> str:
    from graph.builder import GRAPH_NAME, build_graph, checkpoint_serde
    from graph.progress import document_of, step_of

    config = {"configurable": {"thread_id": record.thread_id}}
    t0 = time.perf_counter()
    async with checkpoints.open_saver(run_dir, record, serde=checkpoint_serde()) as saver:
        graph = build_graph().compile(checkpointer=saver, name=GRAPH_NAME)
        if graph_input is None:
            snapshot = await graph.aget_state(config)
            if not snapshot.values or "task" not in snapshot.values:
                say(f"{PROG}: the run has no checkpoint yet: starting it from its recorded inputs")
                graph_input = _inputs_again(record)
            else:
                state = _state(snapshot.values)
                await _backfill(graph, config, run_dir, state)
                if not snapshot.next:
                    rundir.write_state(run_dir, state, finished=True, extra=_extras(record, t0))
                    sel = state.selection
                    chosen = f"; selected: round {sel.round}, {sel.annotator}" if sel else ""
                    say(f"{PROG}: the run in {run_dir} has already finished ({state.stop_reason}{chosen}); nothing to do")
                    return "already finished"
                rundir.write_state(run_dir, state, extra=_extras(record, t0))
                progress.resuming(state, snapshot)
        async for mode, event in graph.astream(
            graph_input, config, context=record.context, stream_mode=["checkpoints", "tasks", "custom"], durability="sync"
        ):
            if mode == "custom":
                step = step_of(event)
                if step is not None:
                    progress.step(step)
                elif (document := document_of(event)) is not None:
                    progress.document(document)
                continue
            if mode == "tasks":
                progress.task(event)
                continue
            values = event.get("values") or {}
            if "task" not in values:  # the input checkpoint, before the input is applied
                continue
            finished = not event.get("next")
            state = _state(values)
            rundir.write_state(run_dir, state, finished=finished, extra=_extras(record, t0))
            if finished:
                progress.finished(state, run_dir, rundir.GUIDELINE_MD, rundir.FAILED)
    return "finished"


async def _backfill(graph, config: dict[str, Any], run_dir: Path, state) -> None:
    """Round files a killed run had no time to write, recovered from the checkpoint history."""
    missing = set(rundir.missing_round_files(run_dir, state))
    if not missing:
        return
    async for snap in graph.aget_state_history(config):
        values = snap.values or {}
        if values.get("round") in missing and values.get("annotations"):
            rundir.write_round_files(run_dir, _state(values))
    left = rundir.missing_round_files(run_dir, state)
    if left:
        say(f"{PROG}: warning: could not recover the files of round(s) {', '.join(map(str, left))} from the checkpoints")
