"""`diziner annotate --run RUN_DIR --docs DOCS --out PRED [--round T --annotator NAME] [--limit N] [--resume]`.

Applies the configuration `diziner refine` selected (RUN_DIR/guideline.json), or the one annotator NAME used in
round T, to a corpus of any size, with that annotator's model as saved in RUN_DIR/run.json. Document ids and texts
are the reader's, and entity types are written back as the dataset's labels through the task's label mapping, so
`diziner evaluate --gold DOCS --pred PRED` works directly.

The corpus is streamed (`annotation.stream`): read a document at a time after one checking pass, annotated with
up to the model's concurrency (`--concurrency`) of requests in flight, and written as each document finishes, in
input order by default (`--unordered`: as they finish). The output grows as documents finish; the ledger
(`annotation.ledger`, ``PRED.ledger.sqlite``) records every finished document durably, so `--resume` after a kill,
Ctrl-C, a budget stop or an unreachable model continues without asking the model again for any finished document,
and the finished output equals an uninterrupted run's. A document longer than the model's context is annotated in
chunks cut on sentence boundaries (`annotation.chunks`). A document the model fails on is left out of a JSONL
output (its gold spans then count as misses), written to ``PRED.failures.jsonl`` with the reason and the model's
answer, and can be tried again with `--retry-failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli import rundir
from cli.calling import add_call_options, call_settings
from state.errors import BudgetReached, InputError
from state.figures import duration

PROG = "diziner annotate"
BACKENDS = ("auto", "langchain", "openai", "openai-batch", "ray")
UNREACHABLE_AFTER = 3
"""Consecutive documents (at least this many, and at least the concurrency) failing on transport errors or
timeouts mean the model cannot be reached: the command stops, resumable (as the refine loop's annotate node)."""
LOG_EVERY_S = 5.0  # plain progress lines when stderr is not a terminal


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Without --round/--annotator the selected configuration (RUN_DIR/guideline.json) is applied with the selected\n"
        "annotator's model. PRED (--format jsonl) is JSONL {id, text, entities: [{start, end, type}]} with the\n"
        "dataset's labels, written as documents finish, in input order unless --unordered. Beside it:\n"
        "PRED.ledger.sqlite records every finished document (what --resume continues from; delete it with PRED) and\n"
        "PRED.failures.jsonl the documents that failed ({id, reason, error, raw}), left out of a JSONL output and\n"
        "counted on stderr. Without --resume an existing PRED is replaced.\n"
        "Exit codes: 0 done (even with some failed documents), 2 bad input (nothing called), 1 every document\n"
        "failed or the model cannot be reached (resumable), 3 the budget stopped it (resumable with a higher\n"
        "--budget), 130 interrupted (resumable)."
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory written by `diziner refine`")
    p.add_argument("--docs", required=True, metavar="DOCS", help="documents to annotate (JSONL or CoNLL; gold entities are ignored)")
    p.add_argument("--out", required=True, metavar="PRED", help="the predictions, written as documents finish")
    p.add_argument("--round", type=int, metavar="T", help="with --annotator: the configuration of round T ...")
    p.add_argument("--annotator", metavar="NAME", help="... that annotator NAME used (and NAME's model)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N documents (evaluate against the same N)")
    p.add_argument("--format", default="jsonl", metavar="FORMAT",
                   help="jsonl (default), conll, spacy, hf or label-studio (annotation.exports)")
    p.add_argument("--resume", action="store_true",
                   help="continue PRED from its ledger (same run configuration, model, input and format)")
    p.add_argument("--retry-failed", action="store_true",
                   help="as --resume, and ask again for the documents that failed (PRED is written anew)")
    p.add_argument("--unordered", action="store_true", help="write documents as they finish, not in input order")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="requests in flight at most (default: the model's `concurrency` in the run)")
    p.add_argument("--backend", default="auto", metavar="BACKEND",
                   help="auto (default: the openai client itself for openai: models, else LangChain), langchain, "
                        "openai, openai-batch (the OpenAI Batch API: half price, within 24 h; a rerun continues the "
                        "same batches) or ray (Ray Data: a local runtime, or the cluster RAY_ADDRESS names)")
    p.add_argument("--chunk-chars", type=int, metavar="N",
                   help="annotate documents longer than N characters in chunks (default: from the model's context "
                        "window when the run knows it, else never)")
    add_call_options(p)


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


def side_files(out: Path) -> tuple[Path, Path]:
    """(ledger, failures file) of an output."""
    from annotation.ledger import ledger_path

    return ledger_path(out), Path(f"{out}.failures.jsonl")


def check_output(out: Path, docs: Path, fmt: str = "jsonl") -> None:
    """--out must name a file that can be written (a spaCy output may be a directory of shards), and not --docs;
    its ledger and failures file beside it too: checked before any model call."""
    if out.is_dir() and fmt != "spacy":
        raise InputError("--out names a directory; give the predictions file's path (PRED.jsonl)", path=str(out))
    if out.exists() and out.resolve() == docs.resolve():
        raise InputError("--out would overwrite --docs", path=str(out))
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"the output's directory {str(parent)!r} does not exist", path=str(out))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"the output's directory {str(parent)!r} is not writable", path=str(out))
    for path in (out, *side_files(out)):
        if path.is_file() and not os.access(path, os.W_OK):
            raise InputError("the file is not writable", path=str(path))
        if path != out and path.is_dir():
            raise InputError("a directory is in the way of the output's side file", path=str(path))
        if path != out and path.exists() and path.resolve() == docs.resolve():
            raise InputError("--out's side file would overwrite --docs", path=str(path))


def _check_options(args: argparse.Namespace) -> None:
    from annotation.exports import FORMATS

    for name in ("limit", "concurrency", "chunk_chars"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.format not in FORMATS:
        raise InputError(f"unknown --format {args.format!r} (choose from {', '.join(FORMATS)})")
    if args.backend not in BACKENDS:
        raise InputError(f"unknown --backend {args.backend!r} (choose from {', '.join(BACKENDS)})")


def run(args: argparse.Namespace) -> int:
    """Annotate a corpus with the chosen configuration, streaming, resumable; exit code as the epilog says."""
    from annotation import ledger as ledgers
    from annotation.stream import scan_input

    # every check before the first model call: options, run directory, configuration, output path, documents
    _check_options(args)
    settings = call_settings(args)
    run_dir = Path(args.run)
    record = rundir.read_run(run_dir)
    task = record.task_definition
    round_, annotator, configuration, spec = load_configuration(run_dir, record, args.round, args.annotator)
    updates: dict[str, Any] = {}
    if "timeout" in settings:
        updates["timeout"] = settings["timeout"]
    if args.concurrency is not None:
        updates["concurrency"] = args.concurrency
    spec = spec.model_copy(update=updates) if updates else spec
    out = Path(args.out)
    check_output(out, Path(args.docs), args.format)
    backend = choose_backend(args.backend, spec)
    scan = scan_input(args.docs)
    for msg in scan.stats.warnings(args.docs):
        _say(f"{PROG}: warning: {msg}")
    total = scan.documents if args.limit is None else min(scan.documents, args.limit)
    if total == 0:
        raise InputError("no documents to annotate", path=args.docs)
    chunk_chars = chunk_size(args.chunk_chars, spec, configuration, round_)
    if backend in ("openai-batch", "ray"):
        return run_elsewhere(args, backend, spec, configuration, round_, annotator, task.to_dataset_label(), scan,
                             total, chunk_chars, settings)
    job = Job(
        out=out, fmt=args.format, ordered=not args.unordered, total=total, scan=scan, round_=round_,
        annotator=annotator, configuration=configuration, spec=spec, labels=task.to_dataset_label(),
        backend=backend, chunk_chars=chunk_chars, retry_failed=args.retry_failed,
        cache_on=settings.get("call_cache", True), cache_dir=settings.get("cache_dir"),
        budget=settings.get("budget_usd"),
    )
    ledger_file, _ = side_files(out)
    header = job.header()
    resuming = args.resume or args.retry_failed
    if resuming and ledger_file.is_file():
        ledger = ledgers.Ledger.open(ledger_file)
        different = ledgers.differences(ledger.header, header)
        if different:
            ledger.close()
            raise InputError("--resume refused: " + "; ".join(different) + " (run without --resume to write the "
                             "output anew)", path=str(out))
    elif resuming and out.exists():
        raise InputError(f"--resume: no ledger beside the output ({ledger_file.name}), so nothing says which documents "
                         "are done; run without --resume to write the output anew", path=str(out))
    else:
        if resuming:
            _say(f"{PROG}: nothing to resume at {out}: starting")
        ledger = ledgers.Ledger.create(ledger_file, header)
        resuming = False
    job.resuming = resuming
    try:
        return asyncio.run(job.run(ledger))
    except BudgetReached as exc:
        _say(f"{PROG}: {exc}; everything finished is kept: continue with a higher budget: the same command with "
             "--resume --budget USD")
        return 3
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted; everything finished is kept: continue with the same command and --resume")
        raise
    except InputError:
        raise
    except Exception:
        _say(f"{PROG}: stopped; everything finished is kept: after fixing the cause, continue with the same command "
             "and --resume")
        raise
    finally:
        ledger.close()


def run_elsewhere(args: argparse.Namespace, backend: str, spec: Any, configuration: Any, round_: int, annotator: str,
                  labels: dict[str, str], scan: Any, total: int, chunk_chars: int | None,
                  settings: dict[str, Any]) -> int:
    """The openai-batch backend (`agents.models.batch`) or the ray backend (`annotation.ray_backend`): the same
    predictions and failures file, written at the end; each resumes in its own way (the batch from its state file
    beside the output, so a rerun never pays twice; Ray from the call cache)."""
    from agents.cache import open_cache

    for flag, given in (("--retry-failed", args.retry_failed), ("--unordered", args.unordered),
                        ("--budget", "budget_usd" in settings)):
        if given:
            raise InputError(f"{flag} works with the local backends (auto, langchain, openai), not with {backend}")
    if args.resume and backend == "ray":
        raise InputError("--resume works with the local backends; a ray rerun is answered by the call cache")
    cache_on = settings.get("call_cache", True) and spec.temperature == 0
    _say(f"{PROG}: {total} document(s) with {annotator}, configuration of round {round_} ({backend} backend)")
    if backend == "openai-batch":
        from agents.models.batch import annotate_batch
        from annotation.ledger import configuration_hash
        from annotation.stream import iter_documents

        def documents() -> Any:
            for seq, doc in enumerate(iter_documents(scan)):
                if seq >= total:
                    return
                yield doc

        summary = annotate_batch(
            spec, configuration, round_, labels, documents, args.out,
            configuration_hash=configuration_hash(configuration, round_, labels, chunk_chars), chunk_chars=chunk_chars,
            cache=open_cache(settings.get("cache_dir") or None) if cache_on else None,
            input_fingerprint=scan.fingerprint(), output_format=args.format,
            say=lambda message: _say(f"{PROG}: {message}"),
        )
        ok, failed = summary.ok, summary.failed
    else:
        try:
            from annotation.ray_backend import annotate_with_ray
        except ImportError as exc:
            raise InputError(f"the ray backend is not available here ({exc})") from None
        report = annotate_with_ray(
            args.docs, args.out, spec, configuration, labels, round_=round_, concurrency=spec.concurrency,
            cache_dir=settings.get("cache_dir"), call_cache=settings.get("call_cache", True), fmt=args.format,
            chunk_chars=chunk_chars, limit=args.limit, log=lambda message: _say(f"{PROG}: {message}"),
        )
        ok, failed = report.ok, report.failed
        _say(f"{PROG}: wrote {args.out}: {ok} document(s), {report.spans} entities ({report.seconds:.1f} s); "
             f"{failed} failed; {report.usage.calls} request(s), {report.usage.cache_hits} answered by the call cache")
    if ok == 0 and failed:
        _say(f"{PROG}: every document failed")
        return 1
    return 0


def choose_backend(name: str, spec: Any) -> str:
    """The backend for --backend NAME and the model: ``openai`` (the openai client itself, `agents.models.bulk`),
    ``langchain`` (`agents.structured`), ``openai-batch`` or ``ray``. ``auto`` takes the openai client for an openai:
    model in an output mode it sends, unless the chat-model factory was replaced (tests inject scripted chat models
    that way), else LangChain."""
    from agents import models
    from agents.models import bulk, clients

    if name in ("langchain", "ray"):
        return name
    if name == "openai-batch":
        from agents.models import batch

        if not batch.supports(spec):
            raise InputError(f"--backend openai-batch runs openai: models in output mode json_schema, json or text; "
                             f"{spec.name} is {spec.provider} with output {spec.output}")
        return name
    if name == "openai":
        if not bulk.supports(spec):
            raise InputError(f"--backend openai calls openai: models in output mode json_schema, json or text; "
                             f"{spec.name} is {spec.provider} with output {spec.output}")
        return "openai"
    return "openai" if bulk.supports(spec) and models.chat_model is clients.chat_model else "langchain"


def chunk_size(given: int | None, spec: Any, configuration: Any, round_: int) -> int | None:
    """The longest document annotated whole (longer ones in chunks): --chunk-chars, else what the model's context
    holds beside the prompt and the answer, else None (no limit known: never chunked)."""
    if given is not None:
        return given
    if spec.context_window is None:
        return None
    from agents.annotator import annotator_prompt
    from annotation.chunks import chunk_chars_for

    for with_examples in (True, False):
        overhead = len(annotator_prompt(configuration, "", round_, spec.name, with_examples=with_examples))
        try:
            return chunk_chars_for(spec.context_window, overhead, spec.max_tokens or 0)
        except ValueError:
            continue
    raise InputError(f"model {spec.name!r}: its context of {spec.context_window} tokens cannot hold the annotation "
                     f"prompt and a {spec.max_tokens}-token answer")


# ---------------------------------------------------------------------------------------------------- one job


@dataclass(slots=True)
class Item:
    seq: int
    doc: Any  # corpus.io.CorpusDocument


@dataclass
class Job:
    """One `diziner annotate` command: its settings, and the session that annotates and writes."""

    out: Path
    fmt: str
    ordered: bool
    total: int
    scan: Any
    round_: int
    annotator: str
    configuration: Any
    spec: Any
    labels: dict[str, str]
    backend: str
    chunk_chars: int | None
    retry_failed: bool
    cache_on: bool
    cache_dir: str | None
    budget: float | None
    resuming: bool = False
    configuration_hash: str = ""
    # the session's state
    ledger: Any = None  # annotation.ledger.Ledger
    writer: Any = None  # annotation.exports.Writer
    failures: Any = None  # annotation.stream.FailuresFile
    caller: Any = None  # Caller
    progress: Any = None  # Progress
    wpos: int = 0  # the next document's place in the output's write order
    mark: dict[str, Any] | None = None  # the writer's mark after the last document written
    held: list[tuple[Item, Any]] = field(default_factory=list)  # transport failures not written yet
    spent_before: float = 0.0  # USD the ledger's earlier sessions spent
    spent_now: float = 0.0  # USD this session spent

    def __post_init__(self) -> None:
        from annotation.ledger import configuration_hash

        self.configuration_hash = configuration_hash(self.configuration, self.round_, self.labels, self.chunk_chars)

    def header(self) -> dict[str, Any]:
        """The ledger header of this command (what a resume must match)."""
        from annotation.ledger import LEDGER_FORMAT

        spec = self.spec
        model = {"name": spec.name, "base_url": spec.base_url, "temperature": spec.temperature,
                 "max_tokens": spec.max_tokens, "frequency_penalty": spec.profile.frequency_penalty,
                 "context_window": spec.context_window, "output": spec.output}
        return {
            "format": LEDGER_FORMAT,
            "configuration": {"hash": self.configuration_hash, "round": self.round_, "annotator": self.annotator},
            "model": model,
            "input": self.scan.fingerprint(),
            "output": {"path": str(self.out), "format": self.fmt, "order": "input" if self.ordered else "finish"},
        }

    # ------------------------------------------------------------------ the session

    async def run(self, ledger: Any) -> int:
        """Annotate what the ledger does not hold, write everything in order, and say how it went."""
        from agents.cache import open_cache
        from annotation.exports import open_writer
        from annotation.stream import FailuresFile, run_in_order

        started = time.perf_counter()
        self.ledger = ledger
        before = ledger.totals()
        self.spent_before = _cost(self.spec, before.usage)
        self.spent_now = 0.0
        rebuild = self.retry_failed or not self.resuming
        if not rebuild and ledger.mark is not None and not self.out.exists():
            _say(f"{PROG}: {self.out} is missing: writing it again from the ledger")
            rebuild = True
        self.mark = ledger.prepare(rebuild=rebuild)
        try:
            writer = open_writer(self.fmt, self.out, resume=self.mark)
        except InputError as exc:
            if self.mark is None:
                raise
            _say(f"{PROG}: the output cannot be continued ({exc}): writing it again from the ledger")
            self.mark = ledger.prepare(rebuild=True)
            writer = open_writer(self.fmt, self.out, resume=None)
        self.writer = writer
        self.failures = None
        self.caller = None
        complete = False
        try:
            self.wpos = int(self.mark.get("documents", 0)) if self.mark else 0
            written = ledger.written()
            done = before.documents - (before.failed if self.retry_failed else 0)
            cache = open_cache(self.cache_dir or None) if self.cache_on and self.spec.temperature == 0 else None
            self.caller = Caller(self, cache)
            _, failures_path = side_files(self.out)
            self.failures = FailuresFile(failures_path, (e.failure_record() for e in ledger.written_failures()))
            self.progress = Progress(self.total, written, before, self.spec)
            note = f", {done} already done" if done else ""
            _say(f"{PROG}: {self.total} document(s) with {self.annotator}, configuration of round {self.round_}{note} "
                 f"(concurrency {self.spec.concurrency}, {self.backend} client"
                 f"{', in input order' if self.ordered else ', unordered'})")
            with self.progress:
                complete = await run_in_order(
                    self.items(), self.caller.annotate, self.emit, concurrency=self.spec.concurrency,
                    ordered=self.ordered, may_start=self.may_start if self.budget is not None else None,
                )
                self.release_held(at_end=True)
        finally:
            self.mark = writer.close().to_dict()
            ledger.set_mark(self.mark, self.wpos)
            if self.failures is not None:
                self.failures.close()
            if self.caller is not None:
                await self.caller.aclose()
        totals = ledger.totals()
        seconds = time.perf_counter() - started
        if not complete:
            raise BudgetReached(f"budget: ${self.spent():.4f} spent of ${self.budget:.4f}; stopped before the next "
                                f"document ({totals.documents} of {self.total} done)")
        self.report(totals, writer, seconds)
        if totals.ok == 0:
            _say(f"{PROG}: every document failed")
            return 1
        return 0

    def items(self):
        """(Item, known result or None) for every input document the output does not hold yet, in input order."""
        from annotation.stream import iter_documents

        entries = self.ledger.entries() if self.resuming else iter(())
        entry = next(entries, None)
        for seq, doc in enumerate(iter_documents(self.scan)):
            if seq >= self.total:
                return
            while entry is not None and entry.seq < seq:
                entry = next(entries, None)
            if entry is not None and entry.seq == seq:
                if entry.doc_id != doc.id:
                    raise InputError(f"the input changed since the output was written: document {seq + 1} is "
                                     f"{doc.id!r}, the ledger has {entry.doc_id!r}; run without --resume",
                                     path=self.scan.path, line=doc.line)
                if entry.wpos is not None:
                    continue  # in the output already
                if not (entry.failed and self.retry_failed):
                    yield Item(seq, doc), Known(entry)
                    continue
            yield Item(seq, doc), None

    def may_start(self, in_flight: int) -> bool:
        """Whether one more document fits the budget: the spending so far, plus the documents in flight and this
        one at the mean cost of a document so far, must stay within it."""
        spent = self.spent()
        done = self.progress.session_done + self.progress.before_documents
        mean = spent / done if done else 0.0
        from agents.models.prices import fits_budget

        return fits_budget(spent, (in_flight + 1) * mean, self.budget)

    def spent(self) -> float:
        return self.spent_before + self.spent_now

    # ------------------------------------------------------------------ writing

    def emit(self, item: Item, result: Any) -> None:
        """Write one finished document (in output order). Transport failures are held back: a run of them long
        enough means the model cannot be reached, and then they are not written (a resume asks again)."""
        from agents.models.errors import ModelUnavailable

        if isinstance(result, Known):
            self.release_held()
            self.write(item, result.entry, replay=True)
            return
        cost = _cost(self.spec, result.usage) if self.spec.price is not None else 0.0
        self.spent_now += cost
        self.progress.used(result.usage, cost)
        if result.status != "ok" and result.error in ("transport", "timeout"):
            self.held.append((item, result))
            if len(self.held) >= max(UNREACHABLE_AFTER, self.spec.concurrency):
                raise ModelUnavailable(self.spec.name, f"{len(self.held)} documents in a row failed: {result.reason}")
            return
        self.release_held()
        self.write(item, self.entry(item, result))

    def release_held(self, at_end: bool = False) -> None:
        """Write the held-back transport failures (the model answered since); at the end, enough of them in a row
        still mean it cannot be reached."""
        from agents.models.errors import ModelUnavailable

        if at_end and len(self.held) >= UNREACHABLE_AFTER:
            raise ModelUnavailable(self.spec.name, f"the last {len(self.held)} documents failed: {self.held[-1][1].reason}")
        held, self.held = self.held, []
        for item, result in held:
            self.write(item, self.entry(item, result))

    def entry(self, item: Item, result: Any) -> Any:
        from annotation.ledger import Entry, request_id

        rid = request_id(item.doc.id, None, self.spec.name, self.configuration_hash)
        return Entry(item.seq, item.doc.id, rid, result.status, result.spans, result.reason, result.error,
                     result.raw, result.requests, result.usage)

    def write(self, item: Item, entry: Any, *, replay: bool = False) -> None:
        """Commit the document's row, then write it; the writer's mark goes with the next commit."""
        from corpus.io import CorpusDocument

        doc = item.doc
        self.ledger.record(entry, self.wpos, self.mark, replay=replay)
        self.wpos += 1
        spans = None if entry.failed else list(entry.spans)
        self.writer.write(CorpusDocument(doc.id, doc.text, spans, doc.tokens, dict(doc.extra)), failed=entry.failed)
        self.mark = self.writer.flush().to_dict()
        if entry.failed:
            self.failures.add(entry.failure_record())
        self.progress.written(entry)

    def report(self, totals: Any, writer: Any, seconds: float) -> None:
        """The closing lines on stderr: what was written, what failed, what the format could not hold."""
        _say(f"{PROG}: wrote {self.out}: {totals.ok} document(s), {totals.spans} entities ({seconds:.1f} s)")
        for note in writer.notes():
            if "failed document" not in note:
                _say(f"{PROG}: {note}")
        if totals.failed:
            first = self.ledger.first_failures(3)
            listed = "; ".join(f"{e.doc_id}: {' '.join(str(e.reason).split())[:160]}" for e in first)
            fate = ("were left out (their gold entities count as misses)" if self.fmt == "jsonl"
                    else "were written with no entity")
            _, failures_path = side_files(self.out)
            _say(f"{PROG}: {totals.failed} of {totals.documents} document(s) failed and {fate}: {listed}"
                 f"{' ...' if totals.failed > 3 else ''}; all in {failures_path}; ask again with --retry-failed")
        usage = totals.usage
        cost = _cost(self.spec, usage)
        _say(f"{PROG}: {usage.calls} request(s), {usage.cache_hits} answered by the call cache; "
             f"{usage.input_tokens + usage.output_tokens} tokens" + (f", ${cost:.4f}" if self.spec.price else ""))


@dataclass(slots=True)
class Known:
    """A finished document's result from the ledger, written again without a call."""

    entry: Any


@dataclass(slots=True)
class Result:
    """One document's annotation."""

    status: str
    spans: list[tuple[int, int, str]]
    reason: str
    error: str
    raw: str | None
    usage: Any
    requests: list[dict[str, Any]]


def _cost(spec: Any, usage: Any) -> float:
    from agents.models.prices import cost_usd

    return cost_usd(spec.price, usage) if usage is not None else 0.0


# ---------------------------------------------------------------------------------------------------- the calls


class Caller:
    """One document's requests (one per chunk) through the chosen backend, grounded and merged."""

    def __init__(self, job: Job, cache: Any) -> None:
        from agents import models
        from agents.annotator import schema_for
        from agents.models import ModelHandle

        self.job = job
        self.spec = job.spec
        self.cache = cache
        self.types = tuple(t.name for t in job.configuration.schema_)
        self.schema = schema_for(self.spec, self.types)
        self.direct = None
        self.handle = None
        if job.backend == "openai":
            from agents.models.bulk import DirectCaller

            self.direct = DirectCaller(self.spec)
        else:
            self.handle = ModelHandle(models.chat_model, self.spec)
        self.tags = ["annotator", self.spec.name, "apply"]
        self._parts = prompt_parts(self.spec, job.configuration, job.round_)

    def prompt(self, text: str) -> str:
        """The annotator's prompt for `text`: `agents.annotator.fit_annotator_prompt`'s, its fixed parts rendered
        once."""
        from agents.annotator import fit_annotator_prompt
        from agents.structured import fits_context
        from prompts import fence

        if self._parts is not None:
            prompt = self._parts[0] + fence(text) + self._parts[1]
            if fits_context(self.spec, prompt):
                return prompt
        return fit_annotator_prompt(self.spec, self.job.configuration, text, self.job.round_)[0]

    async def aclose(self) -> None:
        if self.direct is not None:
            await self.direct.aclose()

    async def annotate(self, item: Item) -> Result:
        """The document's result: its spans with the dataset's labels, or why it failed."""
        from annotation.ledger import request_id

        job, doc = self.job, item.doc
        text = doc.text
        pieces = [None]
        if job.chunk_chars is not None and len(text) > job.chunk_chars:
            from annotation.chunks import plan_chunks

            pieces = plan_chunks(text, job.chunk_chars)
        usage = None
        requests: list[dict[str, Any]] = []
        found = []
        for chunk in pieces:
            part = text if chunk is None else chunk.substring(text)
            output, used, key = await self.call(doc.id, part, chunk)
            usage = used if usage is None else usage.add(used)
            where = {} if chunk is None else {"chunk": chunk.index, "start": chunk.start, "end": chunk.end}
            rid = request_id(doc.id, None if chunk is None else chunk.index, self.spec.name, job.configuration_hash)
            requests.append({**where, "request_id": rid, "cache_key": key})
            if output.status != "ok":
                reason = output.reason if chunk is None else f"chunk {chunk.index + 1} of {len(pieces)}: {output.reason}"
                return Result("failed", [], reason, output.error_kind or "answer", output.raw, usage, requests)
            found.append((chunk, output.spans))
        if pieces[0] is None:
            spans = found[0][1]
        else:
            from annotation.chunks import merge_spans

            spans = merge_spans(found, len(text))
        labels = job.labels
        kept = sorted({(s.start, s.end, labels.get(s.type, s.type)) for s in spans})
        return Result("ok", kept, "", "", None, usage, requests)

    async def call(self, doc_id: str, text: str, chunk: Any) -> tuple[Any, Any, str]:
        """(AnnotatorOutput, usage, cache key of the first request) for one text."""
        from agents.annotator import annotate_document, fit_annotator_prompt
        from agents.models.bulk import request_key
        from state.models import Document

        job = self.job
        name = f"annotate {doc_id}" if chunk is None else f"annotate {doc_id} chunk {chunk.index + 1}"
        meta = {"round": job.round_, "annotator": self.spec.name, "document": doc_id, "phase": "apply"}
        document = Document(id=doc_id, text=text)
        if self.direct is None:
            from agents.structured import trace_config

            prompt, _ = fit_annotator_prompt(self.spec, job.configuration, text, job.round_)
            output, used = await annotate_document(self.handle, self.spec, job.configuration, document, job.round_,
                                                   config=trace_config(name, self.tags, **meta), cache=self.cache)
            return output, used, request_key(self.spec, self.schema, [prompt])
        from agents.annotator import keep_known_types

        prompt = self.prompt(text)
        answer, key = await self.direct.ask(self.schema, prompt, self.cache, run_name=name, metadata=meta,
                                            salvage=lambda reply: keep_known_types(reply, self.schema, self.types))
        return annotator_output(self.spec, document, answer), answer.usage, key


def prompt_parts(spec: Any, configuration: Any, round_: int) -> tuple[str, str] | None:
    """The annotator prompt around its fenced document (None if the template holds the document more than once)."""
    from agents.annotator import annotator_prompt
    from prompts import fence

    slot = fence("\x00document\x00")
    head, found, tail = annotator_prompt(configuration, "\x00document\x00", round_, spec.name).partition(slot)
    return (head, tail) if found and slot not in tail else None


def annotator_output(spec: Any, document: Any, answer: Any) -> Any:
    """The AnnotatorOutput of a structured answer, grounded on the text (as `agents.annotator.annotate_document`)."""
    from corpus.tokens import ground
    from state.models import AnnotatorOutput, Span

    if answer.parsed is None:
        return AnnotatorOutput(annotator=spec.name, document_id=document.id, status="failed", reason=answer.reason,
                               raw=answer.raw_text, error_kind=answer.failure.kind if answer.failure else "answer")
    grounding = ground(document.text, [(e.text, e.type.value) for e in answer.parsed.entities])
    return AnnotatorOutput(annotator=spec.name, document_id=document.id, status="ok",
                           spans=[Span(start=s, end=e, type=t) for s, e, t in grounding.spans], raw=answer.raw_text,
                           not_found=grounding.not_found, dropped_types=answer.salvaged)


# ---------------------------------------------------------------------------------------------------- progress


class Progress:
    """Documents done and failed, rate, ETA, tokens and cost: a live bar on a terminal, else a line every few
    seconds on stderr."""

    def __init__(self, total: int, already: int, before: Any, spec: Any) -> None:
        from state.graph_state import TokenUsage

        self.total = total
        self.before_documents = already
        self.done = already
        self.failed = 0
        self.session_done = 0
        self.spec = spec
        usage = before.usage if before is not None else TokenUsage()
        self.tokens = usage.input_tokens + usage.output_tokens
        self.cost = _cost(spec, usage) if spec.price is not None else 0.0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.live = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("annotate"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"),
                            console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("annotate", total=self.total, completed=self.done, status=self.status())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, status=self.status())
            self._bar.__exit__(*exc)
            self._bar = None

    def used(self, usage: Any, cost: float) -> None:
        self.tokens += usage.input_tokens + usage.output_tokens
        self.cost += cost

    def written(self, entry: Any) -> None:
        self.done += 1
        self.session_done += 1
        if entry.failed:
            self.failed += 1
        now = time.perf_counter()
        if self._bar is not None:
            if now - self.last_line >= 0.25:
                self.last_line = now
                self._bar.update(self._task, completed=self.done, status=self.status())
        elif now - self.last_line >= LOG_EVERY_S:
            self.last_line = now
            _say(f"{PROG}: {self.done}/{self.total} documents, {self.status()}")

    def status(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.session_done / elapsed
        left = self.total - self.done
        eta = f", ETA {duration(left / rate)}" if rate > 0 and left > 0 else ""
        cost = f", ${self.cost:.4f}" if self.spec.price else ""
        return f"{self.failed} failed, {rate:.1f} docs/s{eta}, {self.tokens} tokens{cost}"

