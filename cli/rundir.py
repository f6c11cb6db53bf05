"""The run directory of `diziner refine`: its layout, run.json, and the files derived from the graph state.

Layout of RUN_DIR::

    run.json                    thread id, full run context, input paths and hashes, model specs, the task
    run-config.yaml             a copy of --config (when given): a resumed run reads this copy
    checkpoints.sqlite          the LangGraph checkpoint database (resume point)
    summary.json                per-round figures, stop reason, selection (+ timings: the only timed file)
    guideline.json              the selected configuration (round, annotator, schema, instructions, goal)
    guideline.md                the same as a readable annotation guideline
    round-<t>/annotations.jsonl the round's annotations in `diziner analyze` input format
    round-<t>/failed.json       {annotator: {document id: reason}} for the documents an annotator failed on
    round-<t>/configurations/<safe annotator name>.json   the configuration Θ_k each annotator used
    round-<t>/report.md         the disagreement report
    round-<t>/phase1_patterns.json ... phase4_organization.json   the supervisor's four phases

Every file is written whole (temporary file in the same directory, then `os.replace`) and rewritten only when its
content changes. Everything except summary.json and run.json is a pure function of the graph state: no timestamps
or durations, documents in pool order, annotators in run order, so that a resumed run and an uninterrupted run
with the same seed write identical bytes.

Imports neither LangGraph nor LangChain (pydantic models only), so `diziner annotate` can use it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from agents.models import RunModels, safe_name
from corpus.io import atomic_write
from graph.context import DizinerContext
from state.errors import InputError
from state.inputs import describe_validation_error
from state.models import TaskDefinition
from state.phases import SupervisorPhase

RUN_FILE = "run.json"
RUN_CONFIG_COPY = "run-config.yaml"
CHECKPOINTS = "checkpoints.sqlite"
SUMMARY = "summary.json"
GUIDELINE_JSON = "guideline.json"
GUIDELINE_MD = "guideline.md"
LOCK_FILE = ".lock"
RUN_FORMAT = 1

ANNOTATIONS = "annotations.jsonl"
FAILED = "failed.json"
REPORT = "report.md"
CONFIGURATIONS = "configurations"
PHASE_FILES = {
    SupervisorPhase.PATTERNS: "phase1_patterns.json",
    SupervisorPhase.DIAGNOSIS: "phase2_diagnoses.json",
    SupervisorPhase.INTEGRATION: "phase3_integration.json",
    SupervisorPhase.ORGANIZATION: "phase4_organization.json",
}
_ROUND_DIR = re.compile(r"round-[0-9]+")
# names `refine --overwrite` may remove: what refine itself creates (checkpoint side files included)
_OWN_FILES = {RUN_FILE, RUN_CONFIG_COPY, SUMMARY, GUIDELINE_JSON, GUIDELINE_MD, LOCK_FILE, CHECKPOINTS,
              CHECKPOINTS + "-wal", CHECKPOINTS + "-shm", CHECKPOINTS + "-journal"}


# ---------------------------------------------------------------- small file helpers


def dumps(obj: Any) -> str:
    """The JSON text of every JSON file in a run directory: UTF-8, indented, newline-terminated."""
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def write_text(path: Path, text: str) -> bool:
    """Write `text` whole (corpus.io's atomic write: temp file, fsync, os.replace); skip when the file already
    holds exactly that. Returns True when the file was (re)written. OS errors become InputError naming the file.
    """
    try:
        if path.read_bytes() == text.encode("utf-8"):
            return False
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write file: {exc.strerror or exc}", path=str(path)) from None
    atomic_write(path, text)
    return True


def write_json(path: Path, obj: Any) -> bool:
    return write_text(path, dumps(obj))


def read_json(path: Path, what: str) -> Any:
    """A JSON file of the run directory; InputError naming the file otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what}: {exc}", path=str(path)) from None
    except ValueError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}", path=str(path)) from None
    except RecursionError:
        raise InputError(f"{what} is not valid JSON: nested too deeply to read", path=str(path)) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (how run.json recognises an input file again)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def round_dir(run_dir: Path, round_: int) -> Path:
    return run_dir / f"round-{round_}"


def configuration_path(run_dir: Path, round_: int, annotator: str) -> Path:
    return round_dir(run_dir, round_) / CONFIGURATIONS / f"{safe_name(annotator)}.json"


def round_numbers(run_dir: Path) -> list[int]:
    """Rounds that have a directory, ascending."""
    if not run_dir.is_dir():
        return []
    return sorted(int(p.name[6:]) for p in run_dir.iterdir() if p.is_dir() and _ROUND_DIR.fullmatch(p.name))


# ---------------------------------------------------------------- the directory itself


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def clear_run_dir(path: Path) -> list[str]:
    """Remove what `refine` writes (run files, checkpoints, round-<t>/ folders, stray temporaries) and nothing
    else; returns the names of entries left in place (the caller warns about them)."""
    kept = []
    for entry in sorted(path.iterdir()):
        own = entry.name in _OWN_FILES or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        if entry.is_dir() and not entry.is_symlink() and _ROUND_DIR.fullmatch(entry.name):
            shutil.rmtree(entry)
        elif own and (entry.is_file() or entry.is_symlink()):
            entry.unlink()
        else:
            kept.append(entry.name)
    return kept


class RunLock:
    """An exclusive advisory lock on RUN_DIR/.lock (flock): one `refine` per run directory at a time.

    The kernel drops it when the process dies, even by SIGKILL, so a killed run never leaves a stale lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise InputError(f"another `diziner refine` is running on this run directory{who}", path=str(self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------- run.json


class InputFile(BaseModel):
    """An input file as the run started from it: where it was and its hash."""

    path: str
    sha256: str


class PoolFile(InputFile):
    format: str
    documents: int


class RunFileCopy(InputFile):
    model_config = ConfigDict(populate_by_name=True)

    copy_name: str = Field(alias="copy", description="its copy inside the run directory")


class Session(BaseModel):
    """One `diziner refine` process that worked on the run."""

    started: str
    resumed: bool
    pid: int
    seconds: float | None = None
    outcome: str | None = None


class RunRecord(BaseModel):
    """run.json: what a run is (thread, inputs, context, resolved models, task) and the sessions that ran it."""

    model_config = ConfigDict(extra="forbid")

    format: int = RUN_FORMAT
    thread_id: str
    created: str
    task: InputFile
    docs: PoolFile
    run_config: RunFileCopy | None = None
    checkpoint_db: str | None = Field(default=None, description="PostgreSQL URL of the checkpoints, without its "
                                      "password (cli.checkpoints); None: checkpoints.sqlite in the run directory")
    context: DizinerContext
    models: RunModels
    task_definition: TaskDefinition
    sessions: list[Session] = Field(default_factory=list)
    _checkpoint_url: str | None = PrivateAttr(default=None)  # this session's URL, password included; never written


def write_run(run_dir: Path, record: RunRecord) -> None:
    """Write run.json (whole, atomically)."""
    write_json(run_dir / RUN_FILE, record.model_dump(mode="json", by_alias=True))


def read_run(run_dir: Path) -> RunRecord:
    """run.json of a run directory, validated; InputError naming the file and the field otherwise."""
    if not run_dir.is_dir():
        raise InputError("run directory not found", path=str(run_dir))
    path = run_dir / RUN_FILE
    info = read_json(path, "run.json (is this a `diziner refine` run directory?)")
    if isinstance(info, dict) and info.get("format", RUN_FORMAT) != RUN_FORMAT:
        raise InputError(f"run.json has format {info['format']!r}; this diziner reads format {RUN_FORMAT}", path=str(path))
    try:
        return RunRecord.model_validate(info)
    except ValidationError as exc:
        raise InputError(f"run.json: {describe_validation_error(exc)}", path=str(path)) from None


# ---------------------------------------------------------------- files derived from the state


def annotation_records(state: Any) -> list[dict[str, Any]]:
    """The current round's annotations as `diziner analyze` input: pilot documents in pool order, annotators in
    run order, spans sorted, `null` for a document the annotator failed on (or has no output for)."""
    records = []
    for _, doc, readings in sorted(state.pilot_readings(), key=lambda item: item[0]):
        ann = {
            name: None if spans is None
            else [{"start": s, "end": e, "type": t} for s, e, t in sorted((x.start, x.end, x.type) for x in spans)]
            for name, spans in readings.items()
        }
        records.append({"id": doc.id, "text": doc.text, "annotations": ann})
    return records


def annotations_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def failures(state: Any) -> dict[str, dict[str, str]]:
    """{annotator: {document id: reason}} for the current round, annotators in run order, documents in pool order."""
    order = {d: k for k, d in enumerate(state.documents[i].id for i in sorted(state.pilot_history[state.round - 1]))}
    out: dict[str, dict[str, str]] = {}
    for name in state.annotators:
        failed = [o for o in state.annotations if o.annotator == name and o.status == "failed"]
        if failed:
            failed.sort(key=lambda o: order.get(o.document_id, len(order)))
            out[name] = {o.document_id: o.reason or "failed" for o in failed}
    return out


def phase_documents(state: Any, round_: int) -> dict[str, dict[str, Any]]:
    """file name -> JSON object for each supervisor phase that has run in `round_`.

    A phase has run when it left an output, a failure (also "skipped: ..."), or its time in the round's record.
    Each file: {"round", "phase", "node", "output", "failed"} and, when a failed call left an unusable answer,
    "failed_answer"; phase 2's output maps annotator -> diagnosis and its `failed` maps annotator -> reason.
    """
    record = next((r for r in state.history if r.round == round_), None)
    sup = next((s for s in state.supervisor if s.round == round_), None)
    if record is None or sup is None:
        return {}

    def dump(answer: Any) -> Any:
        return answer.model_dump(mode="json") if answer is not None else None

    organization = dump(sup.organization)
    if organization is not None and sup.cut_by_caps:
        organization["cut_by_caps"] = sup.cut_by_caps
    outputs = {
        SupervisorPhase.PATTERNS: dump(sup.patterns),
        SupervisorPhase.DIAGNOSIS: {name: dump(d) for name, d in sup.diagnoses.items()},
        SupervisorPhase.INTEGRATION: dump(sup.integration),
        SupervisorPhase.ORGANIZATION: organization,
    }
    docs = {}
    for phase, name in PHASE_FILES.items():
        failures = [f for f in sup.failures if f.phase == phase]
        if phase == SupervisorPhase.DIAGNOSIS:
            failed: Any = {f.annotator: f.reason for f in failures} or None
            answer: Any = {f.annotator: f.answer for f in failures if f.answer} or None
            output = outputs[phase] or None
        else:
            failed = failures[0].reason if failures else None
            answer = failures[0].answer if failures else None
            output = outputs[phase]
        if output is None and failed is None and phase.value not in record.seconds:
            continue
        docs[name] = {"round": round_, "phase": phase.number, "node": phase.value, "output": outputs[phase], "failed": failed}
        if answer:
            docs[name]["failed_answer"] = answer
        if phase == SupervisorPhase.INTEGRATION and sup.goal_refused:
            docs[name]["goal_refused"] = sup.goal_refused
        if phase == SupervisorPhase.ORGANIZATION and sup.rejected:
            docs[name]["rejected"] = [r.model_dump(mode="json") for r in sup.rejected]
    return docs


def configuration_document(state: Any, round_: int, annotator: str) -> dict[str, Any]:
    """The configuration Θ_k an annotator used in a round, as its JSON file holds it."""
    from agents.guideline import configuration_for

    configuration = configuration_for(state.task, state.guidelines_used[round_ - 1], annotator)
    return {"round": round_, "annotator": annotator, **configuration.model_dump(mode="json", by_alias=True)}


def round_summary(record: Any) -> dict[str, Any]:
    """One round's entry of summary.json."""
    return {
        "round": record.round,
        "mean_pairwise_f1": record.mean_pairwise_f1,
        "weights": record.weights,
        "elite": record.elite,
        "hotspots": record.hotspots,
        "failed": record.failed,
        "token_usage": {k: v.model_dump(mode="json") for k, v in record.token_usage.items()},
        # extras
        "pilot": record.pilot,
        "mean_agreement": record.mean_agreement,
        "succeeded": record.succeeded,
        "predicted_spans": record.predicted_spans,
        "invented": record.invented,
        "dropped_types": record.dropped_types,
        "guideline_change": record.guideline_change,
        "error": record.error,
        "seconds": record.seconds,
    }


def run_usage(state: Any) -> dict[str, Any]:
    """summary.json's `usage`: every billed call of the run (retries, failed answers, preflight checks included),
    by model, priced, and the calls the cache answered."""
    from agents.models.usage import usage_summary

    return usage_summary(state.usage_by_model(), state.model_specs())


def summary(state: Any, *, finished: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """summary.json: every round's figures, the stop reason, the selection and the supervisor's failures."""
    sel = state.selection
    return {
        "rounds": [round_summary(r) for r in state.history],
        "stop_reason": state.stop_reason,
        "selection": sel.model_dump(mode="json") if sel is not None else None,
        "status": "finished" if finished else "running",
        "annotators": list(state.annotators),
        "current_round": state.round,
        "supervisor_failures": {str(s.round): s.summary_failures() for s in state.supervisor if s.summary_failures()},
        "supervisor_rejections": {str(s.round): [r.model_dump(mode="json") for r in s.rejected]
                                  for s in state.supervisor if s.rejected},
        "usage": run_usage(state),
        **(extra or {}),
    }


def write_state(run_dir: Path, state: Any, *, finished: bool = False, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write every file the state determines; returns the files that changed.

    Per round t: configurations as soon as the round has a guideline (select_pilot), annotations.jsonl and
    failed.json while the state holds round t's annotations (from `annotate` until the next select_pilot),
    report.md after `analyze_disagreement`, the phase files as each phase finishes. guideline.json/.md once
    `select_best` has chosen. summary.json always.
    """
    written: list[Path] = []

    def put(path: Path, text: str) -> None:
        if write_text(path, text):
            written.append(path)

    for t in range(1, len(state.guidelines_used) + 1):
        for name in state.annotators:
            put(configuration_path(run_dir, t, name), dumps(configuration_document(state, t, name)))
    written += write_round_files(run_dir, state)
    for record in state.history:
        rdir = round_dir(run_dir, record.round)
        for name, doc in phase_documents(state, record.round).items():
            put(rdir / name, dumps(doc))
    if state.selected_configuration is not None:
        put(run_dir / GUIDELINE_JSON, dumps(state.selected_configuration))
    if state.guideline_markdown is not None:
        put(run_dir / GUIDELINE_MD, state.guideline_markdown)
    put(run_dir / SUMMARY, dumps(summary(state, finished=finished, extra=extra)))
    return written


def write_round_files(run_dir: Path, state: Any) -> list[Path]:
    """The current round's annotations.jsonl and failed.json (once annotated) and report.md (once analysed)."""
    written = []
    if state.round < 1 or len(state.pilot_history) < state.round:
        return written
    rdir = round_dir(run_dir, state.round)
    files = {}
    if state.annotations:
        files[ANNOTATIONS] = annotations_jsonl(annotation_records(state))
        files[FAILED] = dumps(failures(state))
    record = next((r for r in state.history if r.round == state.round), None)
    if record is not None and state.report is not None:
        files[REPORT] = state.report.markdown
    elif record is not None and record.error:
        files[REPORT] = f"# Disagreement report: round {record.round}\n\nThe round could not be analysed: {record.error}\n"
    for name, text in files.items():
        if write_text(rdir / name, text):
            written.append(rdir / name)
    return written


def missing_round_files(run_dir: Path, state: Any) -> list[int]:
    """Rounds up to the current one whose annotations.jsonl or report.md should exist but does not (a run killed
    between a checkpoint and the file write): the resume fills them in from the checkpoint history."""
    missing = []
    for t in range(1, state.round + 1):
        rdir = round_dir(run_dir, t)
        analysed = any(r.round == t for r in state.history)
        if (t < state.round or analysed) and not (rdir / ANNOTATIONS).is_file() or analysed and not (rdir / REPORT).is_file():
            missing.append(t)
    return missing
