"""`diziner bench`: the paper's protocol on one benchmark, or on every benchmark whose data is present.

One benchmark:  diziner bench --task TASK --data DIR --out BENCH_DIR [models] [loop options] [--test-sample N]
                [--seed N] [--ensemble] [--resume]
Every one:      diziner bench --all --data-root ROOT --out BENCH_ROOT [same options]

DIR holds the splits as files named train, dev and test (.txt/.tsv/.conll CoNLL, or .jsonl with gold entities). The
pilot pool is train + dev with the labels hidden (BENCH_DIR/pool.jsonl, {id, text} only); the loop runs into
BENCH_DIR/run/ through `diziner refine`'s own code. The test split, or a seeded sample of it (test-sample.jsonl), is
then annotated by every annotator's round-1 configuration (baseline), the label-free selection (selected), the
(round, annotator) with the best gold F1 on its pilot set (oracle: not selectable without labels) and, with
--ensemble, every annotator under the selected round's configuration merged by the engine's weighted consensus.
Each configuration's predictions go to predictions/<name>.jsonl (the dataset's labels), its figures with bootstrap
intervals to metrics.json, and table.md sets them beside the paper's figures (`evaluation.protocol`).

A (round, annotator) configuration is applied to the test documents once, whatever rows use it, and kept in
annotations/ with its token usage; `--resume` repeats no finished step: the loop resumes as refine does, finished
annotations and predictions are kept, and the metrics are recomputed from the files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from inspect import signature
from pathlib import Path
from typing import Any

from cli import refine, rundir
from cli.progress import say
from state.errors import BudgetReached, InputError

PROG = "diziner bench"
TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
SPLITS = ("train", "dev", "test")
SPLIT_SUFFIXES = (".txt", ".tsv", ".conll", ".jsonl")
DEFAULT_TEST_SAMPLE = 300
DEFAULT_SEED = 42
BENCH_FORMAT = 1

BENCH_FILE = "bench.json"
POOL = "pool.jsonl"
TEST_SAMPLE = "test-sample.jsonl"
RUN = "run"
ANNOTATIONS = "annotations"
PREDICTIONS = "predictions"
METRICS = "metrics.json"
TABLE = "table.md"
SUMMARY = "summary.json"

EPILOG = """\
BENCH_DIR holds bench.json (inputs, hashes, settings, sessions), pool.jsonl, test-sample.jsonl, run/ (the loop's run
directory), annotations/ (each configuration applied once to the test documents, with its usage),
predictions/<configuration>.jsonl (dataset labels: `diziner evaluate --gold test-sample.jsonl --pred
predictions/<configuration>.jsonl` reproduces each row), metrics.json and table.md. With --all, BENCH_ROOT/<task>/ per
task and BENCH_ROOT/summary.json and table.md with the paper's average rows.
Exit codes: 0 done, 2 bad input (before any model call), 1 failure (continue with --resume), 130 interrupted.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `diziner bench` (models, loop settings and call options as `diziner refine` has them)."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    io = p.add_argument_group("inputs and output")
    io.add_argument("--task", metavar="TASK", help="task file (YAML), or the name of one in tasks/")
    io.add_argument("--data", metavar="DIR", help="the benchmark's splits: train, dev and test files (test required)")
    io.add_argument("--out", metavar="BENCH_DIR", help="bench directory (with --all: the root of one per task)")
    io.add_argument("--all", action="store_true", help="every task in tasks/ whose data is under --data-root")
    io.add_argument("--data-root", metavar="DIR", help="with --all: the folder holding DIR/<task>/ per benchmark")
    io.add_argument("--resume", action="store_true",
                    help="continue a bench in BENCH_DIR: the loop resumes from its checkpoint, finished steps are kept")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--test-sample", type=int, default=None, metavar="N",
                       help=f"score a seeded sample of N test sentences (default {DEFAULT_TEST_SAMPLE}, as the paper; "
                            "0: the whole split)")
    proto.add_argument("--seed", type=int, default=None, metavar="N",
                       help=f"seed of the test sample, the pilot sets and the bootstrap (default {DEFAULT_SEED})")
    proto.add_argument("--ensemble", action="store_true",
                       help="also score every annotator under the selected round's configuration, merged by weighted "
                            "consensus with that round's weights")
    models = p.add_argument_group("models (as `diziner refine`; default: the embedded models)")
    models.add_argument("--config", metavar="RUN.yaml", help="run file listing annotators and supervisor")
    models.add_argument("--annotators", metavar="A,B,...", help="annotator model specs provider:model, comma-separated")
    models.add_argument("--supervisor", metavar="S", help="supervisor model spec provider:model")
    try:  # the call options (cache, deadline, budget), where this diziner has them
        from cli.calling import add_call_options
    except ImportError:
        pass
    else:
        add_call_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the calls, tokens and cost the bench will ask for (loop and test annotations) and stop "
                        "before anything is called or written")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON object")
    refine.add_loop_options(p, "loop settings (passed to `diziner refine`)", skip=("--seed",))


# ---------------------------------------------------------------- small helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rel(path: Path, base: Path) -> str:
    return str(path.relative_to(base))


def _task_path(arg: str) -> Path:
    path = Path(arg)
    if path.is_file():
        return path
    named = TASKS_DIR / f"{arg}.yaml"
    if not path.suffix and named.is_file():
        return named
    raise InputError("task file not found (give a task file or the name of one in tasks/)", path=arg)


def split_files(data_dir: Path) -> dict[str, Path]:
    """split -> its file in DIR (train/dev may be absent; test may not); two files for one split is an error."""
    if not data_dir.is_dir():
        raise InputError("data directory not found", path=str(data_dir))
    found: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for entry in sorted(data_dir.iterdir()):
        if entry.is_file() and entry.stem in found and entry.suffix in SPLIT_SUFFIXES:
            found[entry.stem].append(entry)
    for split, paths in found.items():
        if len(paths) > 1:
            raise InputError(f"two files for the {split} split: {', '.join(p.name for p in paths)}", path=str(data_dir))
    if not found["test"]:
        raise InputError(f"no test split in the data directory (expected test{'/test'.join(SPLIT_SUFFIXES)})",
                         path=str(data_dir))
    return {s: paths[0] for s, paths in found.items() if paths}


# ---------------------------------------------------------------- preparing (every check, no writes, no model call)


@dataclass
class Prepared:
    """One benchmark, validated: its task, splits, pool, test sample and settings."""

    bench_dir: Path
    task_path: Path
    task: Any
    data_dir: Path
    files: dict[str, Path]
    pool: list[Any]
    test: list[Any]
    sample: list[Any]
    test_sample: int
    seed: int
    ensemble: bool
    resume_run: bool
    notes: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


def _read_split(path: Path, covered: set[str], task_path: Path) -> list[Any]:
    from corpus.io import read_documents
    from evaluation.protocol import find_uncovered_label

    docs, stats = read_documents(path)
    for msg in stats.warnings(path):
        say(f"{PROG}: warning: {msg}")
    unlabelled = next((d for d in docs if d.entities is None), None)
    if unlabelled is not None:
        raise InputError(f"document {unlabelled.id!r} has no gold entities (a benchmark split must be labelled)",
                         path=str(path), line=unlabelled.line)
    bad = find_uncovered_label(docs, covered)
    if bad is not None:
        label, doc = bad
        raise InputError(f"dataset label {label!r} (document {doc.id!r}) is not covered by the label_mapping of "
                         f"{task_path}", path=str(path), line=doc.line)
    return docs


def prepare(task_arg: str, data_dir: Path, bench_dir: Path, args: argparse.Namespace) -> Prepared:
    """Validate one benchmark's inputs and the bench directory; InputError (exit 2) before anything is written."""
    from evaluation.protocol import covered_labels, pilot_pool, sample_indices
    from state.models import TaskDefinition

    saved = _saved_bench(bench_dir, args)
    if saved is not None:
        task_arg = task_arg or saved["task"]["path"]
        data_dir = data_dir or Path(saved["data"]["dir"])
    if not task_arg or not data_dir:
        raise InputError("a new bench needs --task and --data (or --all with --data-root)")
    task_path = _task_path(task_arg)
    task = TaskDefinition.from_yaml(task_path)
    files = split_files(Path(data_dir))
    covered = covered_labels(task.label_mapping, task.type_names)
    splits = {s: _read_split(p, covered, task_path) for s, p in files.items()}
    test = splits.pop("test")
    if not test:
        raise InputError("the test split holds no documents", path=str(files["test"]))
    pool = pilot_pool(splits)
    if not pool:
        raise InputError("no train or dev documents: the pilot pool would be empty", path=str(data_dir))
    test_sample = args.test_sample if args.test_sample is not None else (saved or {}).get("test_sample", DEFAULT_TEST_SAMPLE)
    seed = args.seed if args.seed is not None else (saved or {}).get("seed", DEFAULT_SEED)
    if test_sample < 0:
        raise InputError(f"--test-sample must be 0 (the whole split) or more, got {test_sample}")
    notes = []
    if test_sample > len(test):
        msg = f"--test-sample {test_sample} is larger than the test split ({len(test)} sentences): the whole split is used"
        say(f"{PROG}: note: {msg}")
        notes.append(msg)
    sample = [test[i] for i in sample_indices(len(test), test_sample, seed)]
    record = {
        "format": BENCH_FORMAT,
        "task": {"path": str(task_path.resolve()), "sha256": rundir.file_sha256(task_path), "name": task.name},
        "data": {"dir": str(Path(data_dir).resolve()),
                 "splits": {s: {"path": str(p.resolve()), "sha256": rundir.file_sha256(p)} for s, p in files.items()}},
        "test_sample": test_sample,
        "seed": seed,
        "sessions": list((saved or {}).get("sessions", [])),
    }
    if saved is not None:
        _check_saved(bench_dir, saved, record)
    resume_run = args.resume and rundir.is_run_dir(bench_dir / RUN)
    if not resume_run:
        _check_models(args)
    ensemble = bool(args.ensemble or (saved or {}).get("ensemble"))
    return Prepared(bench_dir, task_path, task, Path(data_dir), files, pool, test, sample, test_sample, seed, ensemble,
                    resume_run, notes, record)


def _saved_bench(bench_dir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """bench.json of an earlier bench in BENCH_DIR (with --resume); a non-empty directory otherwise refused."""
    if bench_dir.exists() and not bench_dir.is_dir():
        raise InputError("the bench directory is not a directory", path=str(bench_dir))
    if (bench_dir / BENCH_FILE).is_file():
        if not args.resume:
            raise InputError("the directory already holds a bench: add --resume to continue it, or choose a new "
                             "directory", path=str(bench_dir))
        saved = rundir.read_json(bench_dir / BENCH_FILE, "bench.json")
        if not isinstance(saved, dict) or saved.get("format") != BENCH_FORMAT:
            raise InputError(f"bench.json is not a format-{BENCH_FORMAT} bench record", path=str(bench_dir / BENCH_FILE))
        return saved
    if bench_dir.is_dir() and any(e.name != rundir.LOCK_FILE for e in bench_dir.iterdir()):
        raise InputError("the bench directory is not empty and holds no bench (no bench.json): choose a new directory",
                         path=str(bench_dir))
    return None


def _check_saved(bench_dir: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A resumed bench keeps its inputs and protocol settings."""
    diffs = []
    if saved["task"]["sha256"] != now["task"]["sha256"]:
        diffs.append(f"the task file {now['task']['path']} differs from the one the bench started from")
    old = {s: v["sha256"] for s, v in saved["data"]["splits"].items()}
    new = {s: v["sha256"] for s, v in now["data"]["splits"].items()}
    if old != new:
        diffs.append(f"the data splits differ from the ones the bench started from ({now['data']['dir']})")
    for key, flag in (("test_sample", "--test-sample"), ("seed", "--seed")):
        if saved.get(key) != now[key]:
            diffs.append(f"{flag} {now[key]} (the bench has {saved.get(key)})")
    if diffs:
        raise InputError("a resumed bench keeps its inputs and settings: " + "; ".join(diffs), path=str(bench_dir))


def _check_models(args: argparse.Namespace) -> None:
    from agents.models import resolve_models

    if args.config and (args.annotators or args.supervisor):
        raise InputError("give the models either in --config or with --annotators/--supervisor, not both")
    names = [a.strip() for a in args.annotators.split(",") if a.strip()] if args.annotators is not None else None
    resolve_models(names, args.supervisor, run_file=args.config)


# ---------------------------------------------------------------- running one benchmark


def _refine_argv(prep: Prepared, args: argparse.Namespace) -> list[str]:
    """The `diziner refine` command line of the bench's loop."""
    argv = ["--task", str(prep.task_path), "--docs", str(prep.bench_dir / POOL), "--out", str(prep.bench_dir / RUN)]
    for flag in ("--config", "--annotators", "--supervisor"):
        value = getattr(args, flag[2:])
        if value is not None:
            argv += [flag, value]
    for flag, (field_name, _, _) in refine.SETTINGS.items():
        value = prep.seed if flag == "--seed" else getattr(args, field_name)
        if value is not None:
            argv += [flag, str(value)]
    for flag, (field_name, _) in refine.SWITCHES.items():
        value = getattr(args, field_name)
        if value is not None:
            argv.append(flag if value else "--no-" + flag[2:])
    if args.resume:
        argv.append("--resume")
    return argv


def _call_argv(args: argparse.Namespace, accepted: set[str]) -> list[str]:
    """The call options given to the bench, as refine's flags (those its parser has)."""
    argv, ignored = [], []
    for flag, dest in (("--cache-dir", "cache_dir"), ("--timeout", "timeout"), ("--budget", "budget")):
        value = getattr(args, dest, None)
        if value is None:
            continue
        if flag in accepted:
            argv += [flag, str(value)]
        else:
            ignored.append(flag)
    if getattr(args, "no_cache", False):
        if "--no-cache" in accepted:
            argv.append("--no-cache")
        else:
            ignored.append("--no-cache")
    if ignored:
        say(f"{PROG}: warning: this diziner's loop does not take {', '.join(ignored)}: not applied to the loop")
    if getattr(args, "timeout", None) is not None:
        say(f"{PROG}: warning: --timeout is not applied to the test annotations (only the loop takes it)")
    return argv


class LoopStopped(Exception):
    """The loop returned without finishing (e.g. stopped by a budget): the bench stops with its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the loop stopped with exit code {code}")
        self.code = code


def run_loop(prep: Prepared, args: argparse.Namespace) -> None:
    """The pilot-annotation loop into BENCH_DIR/run/, by refine's own parser and entry point."""
    parser = argparse.ArgumentParser(prog=refine.PROG)
    refine.add_arguments(parser)
    argv = _refine_argv(prep, args) + _call_argv(args, set(parser._option_string_actions))
    code = int(refine.run(parser.parse_args(argv)) or 0)
    if code != 0:
        raise LoopStopped(code)


def _test_cache(args: argparse.Namespace, spec: Any) -> Any:
    """The persistent call cache for a model's test calls, as the loop uses it: temperature-0 models only, unless
    --no-cache; None where this diziner has no call cache."""
    if getattr(args, "no_cache", False) or spec.temperature != 0:
        return None
    try:
        from agents.cache import open_cache
    except ImportError:
        return None
    return open_cache(getattr(args, "cache_dir", None) or None)


@dataclass
class Job:
    """One configuration applied to the test documents by one annotator: the unit of model calls."""

    round: int
    annotator: str
    configuration: Any
    source: str  # the configuration's file, relative to the run directory
    path: Path  # annotations/... .jsonl (its existence means complete)

    @property
    def usage_path(self) -> Path:
        return self.path.with_suffix(".usage.json")


@dataclass
class TestBudget:
    """--budget over a benchmark's test annotations: the loop's spending and every finished job's count against it;
    a job starts only while the spending, the jobs running and the expected cost of this one fit (the mean of the
    annotator's finished jobs; before any, its mean cost per call in the loop times the test documents). A started
    job finishes."""

    limit: float
    spent: float
    first_job: dict[str, float] = field(default_factory=dict)  # per annotator, the estimate before any job finished
    finished: dict[str, list[float]] = field(default_factory=dict)  # per annotator, its finished jobs' costs
    running: float = 0.0

    @classmethod
    def after_loop(cls, limit: float, loop_usage: dict[str, Any], documents: int) -> TestBudget:
        per_model = loop_usage.get("by_model") or {}
        first = {name: float(f.get("cost_usd") or 0.0) / f["calls"] * documents
                 for name, f in per_model.items() if f.get("calls")}
        return cls(limit, float(loop_usage.get("cost_usd") or 0.0), first)

    def admit(self, job: Job) -> float:
        """The job's expected cost, counted as running; BudgetReached when it does not fit."""
        costs = self.finished.get(job.annotator)
        expected = sum(costs) / len(costs) if costs else self.first_job.get(job.annotator, 0.0)
        from agents.models.prices import fits_budget

        if not fits_budget(self.spent, self.running + expected, self.limit):
            raise BudgetReached(f"budget: ${self.spent:.4f} spent of ${self.limit:.4f}; stopped before the test "
                                f"annotations of {job.annotator} with {job.source}")
        self.running += expected
        return expected

    def settle(self, job: Job, expected: float, cost: float) -> None:
        self.running -= expected
        self.spent += cost
        self.finished.setdefault(job.annotator, []).append(cost)


def _job_cost(record: Any, job: Job) -> float:
    """What a job of an earlier session cost (its usage file, the annotator's price)."""
    from agents.models.prices import cost_usd
    from state.graph_state import TokenUsage

    usage = TokenUsage.model_validate(rundir.read_json(job.usage_path, "usage file").get("usage") or {})
    return cost_usd(record.models.annotator(job.annotator).price, usage)


@dataclass
class Row:
    """One configuration row of metrics.json, before it is scored."""

    name: str
    file: str
    round: int | None
    annotator: str | None
    jobs: list[Job]
    extra: dict[str, Any] = field(default_factory=dict)


def _job_for(jobs: dict[tuple[str, str], Job], bench_dir: Path, run_dir: Path, record, round_: int | None,
             annotator: str | None) -> Job:
    """The job of a configuration, shared by every row that uses the same (annotator, configuration): the one
    `annotator` used in `round_`, or with both None the selected one (guideline.json, normally the same content as
    its round's file, whose job it then shares)."""
    from agents.models import safe_name
    from cli.annotate import load_configuration

    t, name, configuration, _ = load_configuration(run_dir, record, round_, annotator)
    key = (name, json.dumps(configuration.model_dump(mode="json", by_alias=True), sort_keys=True))
    if round_ is None:
        same = _job_for(jobs, bench_dir, run_dir, record, t, name)
        if (same.annotator, json.dumps(same.configuration.model_dump(mode="json", by_alias=True), sort_keys=True)) == key:
            return same
    if key not in jobs:
        if round_ is None:
            source, path = rundir.GUIDELINE_JSON, bench_dir / ANNOTATIONS / "guideline" / f"{safe_name(name)}.jsonl"
        else:
            source = _rel(rundir.configuration_path(run_dir, t, name), run_dir)
            path = bench_dir / ANNOTATIONS / f"round-{t}" / f"{safe_name(name)}.jsonl"
        jobs[key] = Job(t, name, configuration, source, path)
    return jobs[key]


def _read_readings(path: Path) -> dict[str, list[tuple[int, int, str]] | None]:
    from corpus.io import iter_jsonl

    return {obj["id"]: None if obj["spans"] is None else [(s["start"], s["end"], s["type"]) for s in obj["spans"]]
            for _, obj in iter_jsonl(path)}


async def _run_jobs(prep: Prepared, record, jobs: list[Job], args: argparse.Namespace,
                    budget: TestBudget | None = None) -> None:
    """Apply each pending job to the test documents; one annotator's jobs in turn, different annotators at once;
    within `budget` when given."""
    from agents import annotator as annotator_agent
    from agents import models
    from agents.models.prices import cost_usd
    from state.graph_state import TokenUsage
    from state.models import Document

    documents = [Document(id=d.id, text=d.text) for d in prep.sample]

    async def one(job: Job) -> None:
        expected = budget.admit(job) if budget is not None else 0.0
        spec = record.models.annotator(job.annotator)
        say(f"{PROG}: {prep.task.name}: {len(documents)} test documents with {job.annotator}, configuration "
            f"{job.source}")
        started = time.perf_counter()
        params = signature(annotator_agent.run_annotator).parameters
        takes_cache = "cache" in params or any(v.kind is v.VAR_KEYWORD for v in params.values())
        extra = {"cache": _test_cache(args, spec)} if takes_cache else {}
        outputs, usage = await annotator_agent.run_annotator(
            models.chat_model, spec, job.configuration, documents, job.round, phase="test", **extra)
        usage = usage if isinstance(usage, TokenUsage) else TokenUsage()
        usage.seconds = round(time.perf_counter() - started, 3)
        by_id = {o.document_id: o for o in outputs}
        lines = []
        for d in documents:
            o = by_id.get(d.id)
            ok = o is not None and o.status == "ok"
            spans = sorted((s.start, s.end, s.type) for s in o.spans) if ok else None
            lines.append(json.dumps({
                "id": d.id,
                "spans": None if spans is None else [{"start": s, "end": e, "type": t} for s, e, t in spans],
                "reason": None if ok else (o.reason if o is not None else "no output"),
            }, ensure_ascii=False) + "\n")
        failed = sum(1 for ln in lines if '"spans": null' in ln)
        # the usage first, then the readings: the readings file marks the job complete
        rundir.write_json(job.usage_path, {"round": job.round, "annotator": job.annotator, "configuration": job.source,
                                           "usage": usage.model_dump(mode="json")})
        rundir.write_text(job.path, "".join(lines))
        if budget is not None:
            budget.settle(job, expected, cost_usd(spec.price, usage))
        say(f"{PROG}: {prep.task.name}: {job.annotator} ({job.source}) done: {failed} failed, "
            f"{usage.calls} calls, {usage.cache_hits} from the cache ({time.perf_counter() - started:.1f} s)")

    async def chain(group: list[Job]) -> None:
        for job in group:
            await one(job)

    by_annotator: dict[str, list[Job]] = {}
    for job in jobs:
        by_annotator.setdefault(job.annotator, []).append(job)
    results = await asyncio.gather(*(chain(g) for g in by_annotator.values()), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


def _predictions(prep: Prepared, row: Row, weights: dict[str, float] | None) -> list[Any]:
    """The row's predicted documents (dataset labels), in test-sample order; failed documents left out."""
    from corpus.io import CorpusDocument
    from evaluation.protocol import ensemble_readings

    labels = prep.task.to_dataset_label()
    if not row.jobs:
        return []
    if row.name == "ensemble":
        readings = {job.annotator: _read_readings(job.path) for job in row.jobs}
        merged = ensemble_readings(prep.sample, readings, weights or {})
    else:
        merged = _read_readings(row.jobs[0].path)
    out = []
    for d in prep.sample:
        spans = merged.get(d.id)
        if spans is None:
            continue
        mapped = sorted({(s, e, labels.get(t, t)) for s, e, t in spans})
        out.append(CorpusDocument(d.id, d.text, mapped, d.tokens, dict(d.extra)))
    return out


def _loop_usage(summary: dict[str, Any]) -> tuple[int, int, str]:
    """(calls, cache hits, where they were read) of the loop, from summary.json; read defensively."""

    def total(obj: Any) -> tuple[int, int] | None:
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("calls"), int):
            cached = obj.get("from_cache")
            hits = obj.get("cache_hits") or (cached.get("calls") if isinstance(cached, dict) else 0)
            return obj["calls"], int(hits or 0)
        if "total" in obj:
            return total(obj["total"])
        parts = [t for v in obj.values() if (t := total(v)) is not None]
        return (sum(p[0] for p in parts), sum(p[1] for p in parts)) if parts else None

    found = total(summary.get("usage"))
    if found is not None:
        return found[0], found[1], "summary.json usage"
    calls = hits = 0
    for r in summary.get("rounds", []):
        for u in (r.get("token_usage") or {}).values():
            calls += int(u.get("calls") or 0)
            hits += int(u.get("cache_hits") or 0)
    return calls, hits, "summary.json rounds[].token_usage (the run has no top-level usage)"


def run_benchmark(prep: Prepared, args: argparse.Namespace) -> dict[str, Any]:
    """The whole protocol on one prepared benchmark; returns metrics.json's content."""
    from agents.models import safe_name
    from corpus.io import CorpusDocument, iter_jsonl, read_documents, write_jsonl
    from evaluation.paper import load_paper_results
    from evaluation.protocol import (
        PilotPoint,
        choose_oracle,
        configuration_metrics,
        correlation_block,
        pilot_f1,
        render_table,
    )

    bench_dir = prep.bench_dir
    started = time.perf_counter()
    bench_dir.mkdir(parents=True, exist_ok=True)
    session = {"started": _now(), "resumed": bool(prep.record["sessions"]), "seconds": None}
    prep.record["sessions"].append(session)
    prep.record["ensemble"] = prep.ensemble
    rundir.write_json(bench_dir / BENCH_FILE, prep.record)
    write_jsonl(bench_dir / POOL, [CorpusDocument(d.id, d.text) for d in prep.pool])
    write_jsonl(bench_dir / TEST_SAMPLE, prep.sample)
    say(f"{PROG}: {prep.task.name}: pool of {len(prep.pool)} documents (labels hidden), {len(prep.sample)} test "
        f"documents, seed {prep.seed}")

    # 1. the loop
    run_loop(prep, args)
    run_dir = bench_dir / RUN
    record = rundir.read_run(run_dir)
    summary = rundir.read_json(run_dir / rundir.SUMMARY, "summary.json")
    if summary.get("status") != "finished":
        raise InputError("the loop has not finished (summary.json status is not 'finished'); continue with --resume",
                         path=str(run_dir))
    names = record.models.names
    labels = prep.task.to_dataset_label()

    # 2. agreement and pilot gold F1 per (round, annotator)
    gold_pool = {d.id: d for d in prep.pool}
    points: list[PilotPoint] = []
    rounds = {r["round"]: r for r in summary.get("rounds", [])}
    for t in sorted(rounds):
        path = rundir.round_dir(run_dir, t) / rundir.ANNOTATIONS
        if not path.is_file():
            continue
        records = [obj for _, obj in iter_jsonl(path)]
        f1 = pilot_f1(records, gold_pool, labels, names)
        agreement = rounds[t].get("mean_agreement") or {}
        points += [PilotPoint(t, k, agreement.get(k), f1[k]) for k in names]

    # 3. the configurations and the jobs they need
    jobs: dict[tuple[str, str], Job] = {}
    rows: list[Row] = []
    for k in names:
        rows.append(Row("baseline", f"baseline-{safe_name(k)}.jsonl", 1, k, [_job_for(jobs, bench_dir, run_dir, record, 1, k)]))
    selection = summary.get("selection")
    notes = list(prep.notes)
    if selection:
        t_sel, k_sel = selection["round"], selection["annotator"]
        rows.append(Row("selected", "selected.jsonl", t_sel, k_sel,
                        [_job_for(jobs, bench_dir, run_dir, record, None, None)],
                        {"agreement": selection.get("mean_pairwise_f1"), "configuration": rundir.GUIDELINE_JSON}))
    else:
        t_sel = None
        rows.append(Row("selected", "selected.jsonl", None, None, [], {"configuration": None}))
        notes.append(f"The loop selected no configuration (stop reason: {summary.get('stop_reason')}): the selected "
                     "row predicts nothing, so every gold entity counts as missed.")
    oracle = choose_oracle(points)
    if oracle is not None:
        rows.append(Row("oracle", "oracle.jsonl", oracle.round, oracle.annotator,
                        [_job_for(jobs, bench_dir, run_dir, record, oracle.round, oracle.annotator)],
                        {"pilot_f1": oracle.pilot_f1, "agreement": oracle.agreement, "selectable_without_labels": False}))
    else:
        notes.append("No round left annotations to score against the pilot gold: no oracle row.")
    weights = None
    if prep.ensemble:
        if t_sel is None:
            notes.append("--ensemble: no selected round, so no ensemble row.")
        else:
            weights = {k: float(w) for k, w in (rounds.get(t_sel, {}).get("weights") or {}).items()}
            members = [_job_for(jobs, bench_dir, run_dir, record, t_sel, k) for k in names]
            rows.append(Row("ensemble", "ensemble.jsonl", t_sel, None, members,
                            {"annotators": names, "weights": weights}))

    # 4. the model calls: every pending job
    pending = [j for j in jobs.values() if not j.path.is_file()]
    done = len(jobs) - len(pending)
    if done:
        say(f"{PROG}: {prep.task.name}: {done} of {len(jobs)} configuration(s) already applied to the test documents")
    if pending:
        budget = None
        if getattr(args, "budget", None) is not None:  # the loop's spending and the finished jobs' count
            finished = [j for j in jobs.values() if j.path.is_file() and j.usage_path.is_file()]
            budget = TestBudget.after_loop(args.budget, summary.get("usage") or {}, len(prep.sample))
            for job in finished:
                budget.settle(job, 0.0, _job_cost(record, job))
        asyncio.run(_run_jobs(prep, record, pending, args, budget))

    # 5. predictions (written once), then metrics recomputed from the files
    pred_dir = bench_dir / PREDICTIONS
    pred_dir.mkdir(exist_ok=True)
    for row in rows:
        path = pred_dir / row.file
        if not path.is_file():
            write_jsonl(path, _predictions(prep, row, weights))
    gold, _ = read_documents(bench_dir / TEST_SAMPLE)
    types = sorted(set(labels.values()))
    configurations = []
    for row in rows:
        path = pred_dir / row.file
        pred, _ = read_documents(path)
        figures = configuration_metrics(gold, pred, types=types, seed=prep.seed, pred_path=str(path))
        configurations.append({
            "name": row.name,
            "round": row.round,
            "annotator": row.annotator,
            **figures,
            "predictions": f"{PREDICTIONS}/{row.file}",
            "configuration": row.extra.pop("configuration", row.jobs[0].source if len(row.jobs) == 1 else None),
            "failed_documents": len(gold) - len(pred) if row.jobs else None,
            **row.extra,
        })
    calls, hits, source = _loop_usage(summary)
    if source != "summary.json usage":
        notes.append(f"The loop's model calls are counted from {source}.")
    job_calls = job_hits = 0
    for job in jobs.values():
        if job.usage_path.is_file():
            usage = rundir.read_json(job.usage_path, "usage file").get("usage", {})
            job_calls += int(usage.get("calls") or 0)
            job_hits += int(usage.get("cache_hits") or 0)
    metrics = {
        "task": prep.task.name,
        "configurations": configurations,
        "correlation": correlation_block(points),
        "test_documents": len(gold),
        "model_calls": calls + job_calls,
        "cache_hits": hits + job_hits,
        "model_calls_detail": {"loop": calls, "loop_cache_hits": hits, "loop_source": source, "test": job_calls,
                               "test_cache_hits": job_hits},
        "test_sample": {"requested": prep.test_sample, "split_documents": len(prep.test),
                        "whole_split": len(gold) == len(prep.test)},
        "seed": prep.seed,
        "n_resamples": 1000,
        "level": 0.95,
        "selection": selection,
        "stop_reason": summary.get("stop_reason"),
        "pool_documents": len(prep.pool),
        "notes": notes,
    }
    rundir.write_json(bench_dir / METRICS, metrics)
    paper = load_paper_results()
    rundir.write_text(bench_dir / TABLE, render_table(metrics, paper))
    session["seconds"] = round(time.perf_counter() - started, 3)
    rundir.write_json(bench_dir / BENCH_FILE, prep.record)
    _report(bench_dir)
    say(f"{PROG}: {prep.task.name}: wrote {bench_dir / METRICS} and {bench_dir / TABLE} "
        f"({session['seconds']:.1f} s this session)")
    return metrics


def _report(bench_dir: Path) -> None:
    """The run report, when the reporting module is installed (skipped silently otherwise)."""
    try:
        from reporting.run_report import write_report
    except ModuleNotFoundError as exc:
        if exc.name in ("reporting", "reporting.run_report"):
            return
        raise
    except ImportError:
        return
    write_report(bench_dir)


# ---------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """One benchmark (--task/--data), or every benchmark with data (--all/--data-root)."""
    if not args.out:
        raise InputError("name the bench directory: --out BENCH_DIR")
    if args.test_sample is not None and args.test_sample < 0:
        raise InputError(f"--test-sample must be 0 (the whole split) or more, got {args.test_sample}")
    if args.all:
        return run_all(args)
    if args.data_root:
        raise InputError("--data-root goes with --all (one benchmark: --data DIR)")
    prep = prepare(args.task, Path(args.data) if args.data else None, Path(args.out), args)
    if getattr(args, "dry_run", False):
        return dry_run(prep, args)
    try:
        run_benchmark(prep, args)
    except LoopStopped as stop:
        say(f"{PROG}: {stop}; continue with --resume")
        return stop.code
    except BudgetReached as exc:
        say(f"{PROG}: {exc}; everything finished is kept: continue with a higher budget: diziner bench --out "
            f"{prep.bench_dir} --resume --budget USD")
        return 3
    return 0


def dry_run(prep: Prepared, args: argparse.Namespace) -> int:
    """The loop's plan (as `diziner refine --dry-run`) plus the test annotations: every annotator's round-1
    configuration, the selected and the oracle configuration (counted on the dearest annotator: an upper bound), and
    with --ensemble every annotator once more."""
    from agents.annotator import fit_annotator_prompt
    from agents.cache import open_cache
    from agents.guideline import configuration_for
    from agents.models import resolve_models
    from agents.models.prices import cost_usd
    from cli.calling import call_settings
    from cli.dryrun import plan_refine, print_plan, tokens
    from state.graph_state import Guideline, TokenUsage

    names = refine._split_names(args.annotators) if args.annotators is not None else None
    models = resolve_models(names, args.supervisor, run_file=args.config)
    ctx = refine._context({"annotators": models.names, "supervisor": models.supervisor.name,
                           **refine._given_settings(args), "seed": prep.seed, **call_settings(args)})
    cache = open_cache(ctx.cache_dir or None) if ctx.call_cache else None
    plan = plan_refine(prep.task, [d.text for d in prep.pool], models, ctx, cache)
    dearest = max(models.annotators, key=lambda s: cost_usd(s.price, TokenUsage(input_tokens=10**6, output_tokens=10**6)))
    for spec in models.annotators:
        configuration = configuration_for(prep.task, Guideline(), spec.name)
        prompt_tokens = sum(tokens(fit_annotator_prompt(spec, configuration, d.text, 1)[0]) for d in prep.sample)
        runs = 1 + (1 if prep.ensemble else 0) + (2 if spec is dearest else 0)
        plan.of(spec).add(runs * len(prep.sample), runs * prompt_tokens, runs * len(prep.sample) * (spec.max_tokens or 0))
    plan.notes.append(f"test annotations: {len(prep.sample)} documents; the selected and oracle configurations are "
                      f"counted on {dearest.name} (the dearest annotator)")
    print_plan(plan, as_json=args.json, title=f"{PROG} --dry-run")
    return 0


def run_all(args: argparse.Namespace) -> int:
    """Every task of tasks/ with data under --data-root, into BENCH_ROOT/<task>/, then the summary table."""
    from evaluation.paper import load_paper_results
    from evaluation.protocol import average_rows, render_summary_table, summary_row

    if args.task or args.data:
        raise InputError("--all runs every task with data under --data-root: leave out --task and --data")
    if not args.data_root:
        raise InputError("--all needs --data-root DIR (holding DIR/<task>/ per benchmark)")
    root = Path(args.data_root)
    if not root.is_dir():
        raise InputError("data root not found", path=str(root))
    out = Path(args.out)
    tasks = [p for p in sorted(TASKS_DIR.glob("*.yaml")) if (root / p.stem).is_dir()]
    if not tasks:
        raise InputError(f"no task of {TASKS_DIR} has a data folder here", path=str(root))
    say(f"{PROG}: {len(tasks)} benchmark(s) with data: {', '.join(p.stem for p in tasks)}")
    prepared = [prepare(str(p), root / p.stem, out / p.stem, args) for p in tasks]  # every check first
    paper = load_paper_results()
    rows = []
    for prep in prepared:
        try:
            rows.append(summary_row(run_benchmark(prep, args), paper))
        except LoopStopped as stop:
            say(f"{PROG}: {prep.task.name}: {stop}; continue with --resume")
            return stop.code
        except BudgetReached as exc:
            say(f"{PROG}: {prep.task.name}: {exc}; everything finished is kept: continue with --resume and a "
                "higher --budget")
            return 3
    averages = average_rows(rows, paper)
    rundir.write_json(out / SUMMARY, {"benchmarks": rows, "averages": averages})
    rundir.write_text(out / TABLE, render_summary_table(rows, averages, paper))
    say(f"{PROG}: wrote {out / SUMMARY} and {out / TABLE}")
    return 0
