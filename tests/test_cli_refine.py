"""`diziner refine` and `diziner annotate` in-process, with scripted chat models (deterministic, no network).

The scripted models are injected by monkeypatching `agents.models.chat_model`, which `graph.builder.build_graph`
and `cli.annotate` look up when they run: the product code knows nothing about them.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import agents.models
from agents.models import safe_name
from cli import rundir
from cli.main import main
from state.models import TaskDefinition
from tests.scripted import (
    POLITICS_SENTENCES,
    POLITICS_TASK,
    ScriptedModels,
    document_of,
    responder,
    tag_words,
    write_pool,
)

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tasks" / "crossner_politics.yaml"
ANNOTATORS = ["openai:a", "openai:b", "openai:c"]

POOL = POLITICS_SENTENCES

# a small task with a label mapping, for annotate + evaluate on CoNLL
CONLL = """\
Barack\tB-politician
Obama\tI-politician
met\tO
Merkel\tB-politician
in\tO
Berlin\tB-location
.\tO

Paris\tB-location
is\tO
nice\tO
.\tO

Kohl\tB-politician
visited\tO
Moscow\tB-location
.\tO

Nothing\tO
here\tO
FAILS\tO
.\tO
"""


def annotator(name: str):
    """Capitalised words as entities; the type depends on the annotator so that they disagree; annotator c
    fails on documents with 'Senate'; every document containing FAILS fails."""

    def annotate(prompt: str):
        doc = document_of(prompt)
        if "FAILS" in doc or (name.endswith("c") and "Senate" in doc):
            return RuntimeError("scripted failure")
        kind = "PERSON" if name.endswith("a") and "- PERSON:" in prompt else "POLITICIAN"
        return tag_words(doc, kind, "LOCATION")

    return annotate


ONLY_A = [{"annotator": "openai:a", "instructions": [{"text": "ONLY-A"}]}]
SUPERVISOR = {
    "Integration": {"goal": "GOAL-2", "common": [{"text": "RULE-1"}], "per_annotator": ONLY_A},
    "Organization": {"common": [{"text": "RULE-1", "priority": "high"}], "per_annotator": ONLY_A},
}


def respond_for(name: str):
    return responder(annotator(name), SUPERVISOR)


class Models(ScriptedModels):
    """The injected chat models, one per spec name, with their recorded calls."""

    def __init__(self) -> None:
        super().__init__(respond_for)


@pytest.fixture
def models(monkeypatch) -> Models:
    m = Models()
    monkeypatch.setattr(agents.models, "chat_model", m)
    return m


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.jsonl", POOL)


def refine_args(out: Path, pool: Path, *extra: str, loops: int = 2) -> list[str]:
    return ["refine", "--task", str(TASK), "--docs", str(pool), "--out", str(out), "--annotators", ",".join(ANNOTATORS),
            "--supervisor", "openai:sup", "--max-loops", str(loops), "--pilot-size", "3", "--min-gain", "0",
            "--patience", "5", *extra]


def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every deterministic file of a run directory (not run.json, summary.json, report.html with its timings, the
    checkpoints, the lock)."""
    skip = {rundir.RUN_FILE, rundir.SUMMARY, rundir.LOCK_FILE, "report.html"}
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith(rundir.CHECKPOINTS)
    }


def progress_lines(err: str) -> list[str]:
    """The per-node progress lines without their durations."""
    return [ln.rsplit(" (", 1)[0] for ln in err.splitlines() if ln.startswith("round ")]


# ---------------------------------------------------------------- the run directory


def test_refine_writes_the_run_directory(tmp_path, pool, models, capsys):
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    err = capsys.readouterr().err
    assert "round 1 · annotate · openai:c 3 docs" in err
    assert "round 2 · select_best" in err or "select_best" in err

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["stop_reason"].startswith("max_loops reached")
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert {"round", "mean_pairwise_f1", "weights", "elite", "hotspots", "failed", "token_usage"} <= set(r)
        assert isinstance(r["hotspots"], int)
        assert set(r["failed"]) == set(ANNOTATORS)
        assert set(r["weights"]) <= set(ANNOTATORS)
        assert {"openai:a", "supervisor"} <= set(r["token_usage"]) or r["round"] == 2
        assert len(r["pilot"]) == 3
    assert set(summary["selection"]) == {"round", "annotator", "mean_pairwise_f1"}

    info = json.loads((out / "run.json").read_text())
    assert info["context"]["max_loops"] == 2 and info["context"]["annotators"] == ANNOTATORS
    assert info["docs"]["documents"] == len(POOL) and len(info["thread_id"]) == 32
    assert [s["name"] for s in info["models"]["annotators"]] == ANNOTATORS
    with sqlite3.connect(out / rundir.CHECKPOINTS) as db:
        assert db.execute("select count(*) from checkpoints").fetchone()[0] > 10

    for t in (1, 2):
        rdir = out / f"round-{t}"
        assert (rdir / "report.md").read_text().startswith("#")
        for name in ANNOTATORS:
            conf = json.loads((rdir / "configurations" / f"{safe_name(name)}.json").read_text())
            assert conf["round"] == t and conf["annotator"] == name and conf["schema"]
        records = [json.loads(ln) for ln in (rdir / "annotations.jsonl").read_text().splitlines()]
        ids = [r["id"] for r in records]
        assert ids == summary["rounds"][t - 1]["pilot"]
        assert ids == sorted(ids, key=lambda i: int(i[1:]))  # pool order
        for r in records:
            assert list(r["annotations"]) == ANNOTATORS  # run order
            assert r["text"] == POOL[int(r["id"][1:])]
            assert (r["annotations"]["openai:c"] is None) == ("Senate" in r["text"])
    # round 1's supervisor wrote the phase files; round 2 was the last one (no supervisor)
    for name in rundir.PHASE_FILES.values():
        doc = json.loads((out / "round-1" / name).read_text())
        assert doc["round"] == 1 and doc["output"] is not None and doc["failed"] is None
        assert not (out / "round-2" / name).exists()
    # round 2 annotated under round 1's phase-4 guideline; per-annotator instructions only for their annotator
    conf_a = (out / "round-2" / "configurations" / "openai_a.json").read_text()
    conf_b = (out / "round-2" / "configurations" / "openai_b.json").read_text()
    assert "RULE-1" in conf_a and "ONLY-A" in conf_a and "RULE-1" in conf_b and "ONLY-A" not in conf_b
    assert "RULE-1" not in (out / "round-1" / "configurations" / "openai_a.json").read_text()

    guideline = json.loads((out / "guideline.json").read_text())
    assert (guideline["round"], guideline["annotator"]) == (summary["selection"]["round"], summary["selection"]["annotator"])
    assert (out / "guideline.md").read_text().startswith("# Annotation guideline")
    # no temporary files left behind
    assert not [p for p in out.rglob("*.tmp")]


def test_round_annotations_are_reanalysable(tmp_path, pool, models, capsys):
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    capsys.readouterr()
    assert main(["analyze", str(out / "round-1" / "annotations.jsonl"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert figures["mean_pairwise_f1"] == pytest.approx(summary["rounds"][0]["mean_pairwise_f1"])


def test_two_identical_runs_write_identical_files(tmp_path, pool, monkeypatch):
    files = []
    for name in ("one", "two"):
        monkeypatch.setattr(agents.models, "chat_model", Models())
        assert main(refine_args(tmp_path / name, pool, loops=3)) == 0
        files.append(run_files(tmp_path / name))
    assert files[0] == files[1]
    assert "round-3/annotations.jsonl" in files[0] and "guideline.md" in files[0]


# ---------------------------------------------------------------- refusals and input errors


def test_refuses_a_non_empty_directory(tmp_path, pool, models, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(refine_args(out, pool)) == 2
    assert "not empty" in capsys.readouterr().err
    # --overwrite does not delete what is not a run directory
    assert main(refine_args(out, pool, "--overwrite")) == 2
    assert "not a diziner run directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert models.by_name == {}


def test_an_existing_run_needs_overwrite_or_resume(tmp_path, pool, models, capsys):
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    (out / "mine.txt").write_text("keep me")
    thread = json.loads((out / "run.json").read_text())["thread_id"]
    assert main(refine_args(out, pool)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(refine_args(out, pool, "--overwrite", loops=1)) == 0
    assert json.loads((out / "run.json").read_text())["thread_id"] != thread
    assert not (out / "round-2").exists()  # the earlier run's files are gone
    assert (out / "mine.txt").read_text() == "keep me"
    assert len(json.loads((out / "summary.json").read_text())["rounds"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-loops", "6"], "--max-loops"),
        (["--max-loops", "0"], "--max-loops"),
        (["--pilot-size", "0"], "--pilot-size"),
        (["--annotators", "openai:a"], "at least two"),
        (["--annotators", "openai:a,openai:a"], "duplicate"),
        (["--supervisor", "nope:x"], "unknown provider"),
        (["--config", "/nonexistent/run.yaml", "--annotators", "x"], "not both"),
    ],
)
def test_bad_settings_are_input_errors(tmp_path, pool, models, capsys, extra, message):
    out = tmp_path / "run"
    args = refine_args(out, pool)
    for flag in ("--max-loops", "--annotators", "--supervisor"):  # later flags win in argparse
        if flag in extra:
            i = args.index(flag)
            del args[i : i + 2]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_task_and_pool_are_input_errors(tmp_path, pool, models, capsys):
    bad_task = tmp_path / "task.yaml"
    bad_task.write_text("name: x\nentity_types: []\nfinal_task_goal: g\n")
    args = refine_args(tmp_path / "run", pool)
    args[args.index("--task") + 1] = str(bad_task)
    assert main(args) == 2
    assert "entity_types" in capsys.readouterr().err
    bad_task.write_text("name: [unclosed\n")
    assert main(args) == 2
    assert "YAML" in capsys.readouterr().err
    bad_pool = tmp_path / "pool-bad.jsonl"
    bad_pool.write_text('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n')
    args = refine_args(tmp_path / "run", bad_pool)
    assert main(args) == 2
    assert "duplicate document id" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["refine", "--task", str(TASK), "--out", str(tmp_path / "run")]) == 2
    assert "--docs" in capsys.readouterr().err


def test_help_texts(capsys):
    for command in ("refine", "annotate"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--resume", "--overwrite", "--max-loops", "--pilot-size", "--seed", "--no-cumulative", "--limit", "--round"):
        assert flag in out


# ---------------------------------------------------------------- resume (in-process; the kill -9 test is test_resume.py)


def test_resume_after_a_failure_repeats_no_finished_node(tmp_path, pool, monkeypatch, capsys, caplog):
    """Round 2's annotator c crashes after a and b finished in the same super-step: exit 1; the resumed run
    re-runs only c's branch and what follows, and ends with the same files as an uninterrupted run."""
    import graph.nodes as nodes

    plain = Models()
    monkeypatch.setattr(agents.models, "chat_model", plain)
    assert main(refine_args(tmp_path / "plain", pool, "--no-cache", loops=3)) == 0
    capsys.readouterr()

    real_annotate = nodes.annotate

    async def crashing_annotate(task, runtime, *, models):
        if task.round == 2 and task.annotator == "openai:c":
            import asyncio

            await asyncio.sleep(0.3)  # the siblings finish (and are checkpointed) first
            raise RuntimeError("simulated crash")
        return await real_annotate(task, runtime, models=models)

    first = Models()
    monkeypatch.setattr(agents.models, "chat_model", first)
    monkeypatch.setattr(nodes, "annotate", crashing_annotate)
    out = tmp_path / "run"
    assert main(refine_args(out, pool, "--no-cache", loops=3)) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "simulated crash" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running" and len(summary["rounds"]) == 1
    assert (out / "round-1" / "annotations.jsonl").exists() and not (out / "round-2" / "annotations.jsonl").exists()
    before = progress_lines(err)

    monkeypatch.setattr(nodes, "annotate", real_annotate)
    second = Models()
    monkeypatch.setattr(agents.models, "chat_model", second)
    assert main(["refine", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "resuming at round 2" in err and "2 of 3 already done" in err
    serde_warnings = [r.getMessage() for r in caplog.records if r.name.startswith("langgraph.checkpoint.serde")]
    assert not serde_warnings  # the state's types are allowlisted: they come back as themselves, silently
    after = progress_lines(err)
    assert not set(before) & set(after)  # no finished node ran again
    assert after[0].startswith("round 2 · annotate · openai:c")
    # a and b were not asked again in round 2 (only in round 3); c from round 2 on; the supervisor for round 2 only
    assert len(second.calls("openai:a", "Entities")) == 3
    assert second.calls("openai:a", "Entities") == plain.calls("openai:a", "Entities")[-3:]
    assert second.calls("openai:c", "Entities") == plain.calls("openai:c", "Entities")[len(first.calls("openai:c", "Entities")):]
    assert len(second.calls("openai:sup", "PatternAnalysis")) == 1
    assert run_files(out) == run_files(tmp_path / "plain")

    # a finished run: said so, exit 0, nothing run
    third = Models()
    monkeypatch.setattr(agents.models, "chat_model", third)
    assert main(["refine", "--resume", str(out)]) == 0
    assert "already finished" in capsys.readouterr().err
    assert third.by_name == {}
    assert run_files(out) == run_files(tmp_path / "plain")


def test_resume_keeps_the_saved_settings(tmp_path, pool, models, capsys):
    out = tmp_path / "run"
    assert main(refine_args(out, pool, loops=1)) == 0
    capsys.readouterr()
    # repeating the same command with --resume is fine (finished: nothing to do)
    assert main(refine_args(out, pool, "--resume", loops=1)) == 0
    assert "already finished" in capsys.readouterr().err
    assert main(refine_args(out, pool, "--resume", loops=3)) == 2
    assert "--max-loops 3" in capsys.readouterr().err
    assert main(["refine", "--resume", str(tmp_path / "nothing-here")]) == 2
    assert main(["refine", "--resume", str(out), "--overwrite"]) == 2
    # --resume with the full command on a new directory starts the run
    assert main(refine_args(tmp_path / "new", pool, "--resume", loops=1)) == 0
    assert (tmp_path / "new" / "guideline.md").exists()


# ---------------------------------------------------------------- annotate + evaluate


@pytest.fixture
def small_run(tmp_path, pool, models) -> Path:
    task = tmp_path / "tiny.yaml"
    task.write_text(POLITICS_TASK.format(name="tiny_politics"))
    out = tmp_path / "small-run"
    args = ["refine", "--task", str(task), "--docs", str(pool), "--out", str(out), "--annotators", ",".join(ANNOTATORS),
            "--supervisor", "openai:sup", "--max-loops", "2", "--pilot-size", "3"]
    assert main(args) == 0
    return out


def test_annotate_then_evaluate_on_conll(tmp_path, small_run, models, capsys):
    gold = tmp_path / "gold.conll"
    gold.write_text(CONLL)
    pred = tmp_path / "pred.jsonl"
    capsys.readouterr()
    assert main(["annotate", "--run", str(small_run), "--docs", str(gold), "--out", str(pred)]) == 0
    err = capsys.readouterr().err
    assert "1 of 4 document(s) failed" in err and "gold-4" in err
    records = [json.loads(ln) for ln in pred.read_text().splitlines()]
    assert [r["id"] for r in records] == ["gold-1", "gold-2", "gold-3"]  # the reader's ids; the failed one left out
    types = {e["type"] for r in records for e in r["entities"]}
    assert types and types <= {"politician", "location"}  # dataset labels, not type names
    selection = json.loads((small_run / "summary.json").read_text())["selection"]
    assert len(models.calls(selection["annotator"], "Entities")) > 0

    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["tp"] + scores["fn"] == 6  # every gold span counted, the failed document's as misses
    assert scores["tp"] >= 1

    # a named configuration and --limit
    assert main(["annotate", "--run", str(small_run), "--docs", str(gold), "--out", str(pred), "--round", "1",
                 "--annotator", "openai:b", "--limit", "2"]) == 0
    assert [json.loads(ln)["id"] for ln in pred.read_text().splitlines()] == ["gold-1", "gold-2"]


def test_annotate_input_errors(tmp_path, small_run, models, capsys):
    gold = tmp_path / "gold.conll"
    gold.write_text(CONLL)
    pred = str(tmp_path / "pred.jsonl")
    base = ["annotate", "--run", str(small_run), "--docs", str(gold), "--out", pred]
    assert main(base + ["--round", "1"]) == 2
    assert "together" in capsys.readouterr().err
    assert main(base + ["--round", "1", "--annotator", "openai:zzz"]) == 2
    assert "not an annotator" in capsys.readouterr().err
    assert main(base + ["--round", "9", "--annotator", "openai:a"]) == 2
    assert "round 9" in capsys.readouterr().err
    assert main(["annotate", "--run", str(tmp_path / "nope"), "--docs", str(gold), "--out", pred]) == 2
    (small_run / "guideline.json").unlink()
    assert main(base) == 2
    assert "--resume" in capsys.readouterr().err


def test_run_file_is_copied_and_used(tmp_path, pool, models, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("annotators:\n  - name: openai:a\n    max_tokens: 100\n  - name: openai:b\n  - name: openai:c\n"
                      "supervisor:\n  name: openai:sup\n  temperature: 0.5\n")
    out = tmp_path / "run"
    args = ["refine", "--task", str(TASK), "--docs", str(pool), "--out", str(out), "--config", str(config),
            "--max-loops", "1", "--pilot-size", "3"]
    assert main(args) == 0
    assert (out / rundir.RUN_CONFIG_COPY).read_text() == config.read_text()
    info = json.loads((out / "run.json").read_text())
    assert info["context"]["run_config"] == rundir.RUN_CONFIG_COPY and info["context"]["annotators"] == ANNOTATORS
    assert info["models"]["annotators"][0]["max_tokens"] == 100 and info["models"]["supervisor"]["temperature"] == 0.5
    capsys.readouterr()
    config.write_text(config.read_text().replace("0.5", "0.7"))
    assert main(args[:-4] + ["--resume"]) == 2
    assert "--config" in capsys.readouterr().err


def test_failed_supervisor_phases_are_written_as_failed(tmp_path, pool, monkeypatch):
    failing = {**SUPERVISOR, "Integration": RuntimeError("no plan")}
    monkeypatch.setattr(agents.models, "chat_model", ScriptedModels(lambda name: responder(annotator(name), failing)))
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    phase3 = json.loads((out / "round-1" / "phase3_integration.json").read_text())
    phase4 = json.loads((out / "round-1" / "phase4_organization.json").read_text())
    assert phase3["output"] is None and "no plan" in phase3["failed"]
    assert phase4["output"] is None and phase4["failed"].startswith("skipped")
    assert "RULE-1" not in (out / "round-2" / "configurations" / "openai_a.json").read_text()


def test_an_unusable_supervisor_answer_is_kept_and_its_tokens_counted(tmp_path, pool, monkeypatch):
    broken = {**SUPERVISOR, "Integration": "not json {"}
    monkeypatch.setattr(agents.models, "chat_model", ScriptedModels(lambda name: responder(annotator(name), broken)))
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    phase3 = json.loads((out / "round-1" / "phase3_integration.json").read_text())
    assert phase3["output"] is None and phase3["failed"].startswith("unusable answer: answer truncated (unbalanced JSON)")
    assert phase3["failed_answer"] == "not json {"
    usage = json.loads((out / "summary.json").read_text())["rounds"][0]["token_usage"]["supervisor"]
    assert usage["calls"] == 1 + 1 + 2  # phase 1, one diagnosis, phase 3's answer and its one re-ask; phase 4 skipped


def test_a_sharpened_goal_that_drops_the_goal_is_refused_and_reported(tmp_path, pool, monkeypatch):
    shrunk = {**SUPERVISOR, "Integration": {**SUPERVISOR["Integration"], "goal": "GOAL-2", "goal_changed": True}}
    models = ScriptedModels(lambda name: responder(annotator(name), shrunk))
    monkeypatch.setattr(agents.models, "chat_model", models)
    out = tmp_path / "run"
    assert main(refine_args(out, pool)) == 0
    phase3 = json.loads((out / "round-1" / "phase3_integration.json").read_text())
    assert phase3["failed"] is None and phase3["goal_refused"].startswith("sharpened goal refused")
    second_round = models.calls("openai:b", "Entities")[3:]
    assert second_round and all("GOAL-2" not in p and "RULE-1" in p for p in second_round)
    original = TaskDefinition.from_yaml(TASK).final_task_goal.strip()
    assert all(original in p for p in second_round)  # the task's own goal is still in force, whole
