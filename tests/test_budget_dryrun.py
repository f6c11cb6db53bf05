"""`--dry-run` predicts the calls a real run makes; `--budget` stops cleanly (exit 3) and resumes with more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import agents.models
from cli.main import main
from tests.scripted import write_pool
from tests.test_cli_refine import ANNOTATORS, POOL, TASK, Models

PRICE = "{input: 1000, cached_input: 1000, output: 1000}"  # USD per million tokens: scripted runs cost cents


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    texts = [t for t in POOL if "Senate" not in t]  # annotator c fails on that one: the plan assumes no failure
    return write_pool(tmp_path / "pool.jsonl", texts)


def run_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    lines = ["annotators:"] + [f"  - {{name: '{a}', price: {PRICE}}}" for a in ANNOTATORS]
    lines.append(f"supervisor: {{name: 'openai:sup', price: {PRICE}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def args(out: Path, pool: Path, config: Path, *extra: str) -> list[str]:
    return ["refine", "--task", str(TASK), "--docs", str(pool), "--out", str(out), "--config", str(config),
            "--max-loops", "3", "--pilot-size", "3", "--min-gain", "0", "--patience", "5", "--diagnose-all",
            "--no-cache", *extra]


def test_the_dry_run_counts_the_calls_a_real_run_makes(tmp_path, pool, monkeypatch, capsys):
    monkeypatch.setattr(agents.models, "chat_model", Models())
    config = run_file(tmp_path)
    assert main(args(tmp_path / "dry", pool, config, "--dry-run", "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "dry").exists()  # nothing written
    assert main(args(tmp_path / "run", pool, config)) == 0
    usage = json.loads((tmp_path / "run" / "summary.json").read_text())["usage"]
    # scripted models have no server, so no preflight call is made; every other planned call is
    assert plan["calls"] - plan["preflight_calls"] == usage["calls"]
    for name, figures in plan["by_model"].items():
        assert figures["calls"] - figures["preflight_calls"] == usage["by_model"][name]["calls"], name
    assert plan["cost_usd"] > 0 and plan["unpriced"] == []


def test_the_budget_stops_before_the_next_round_and_resume_with_more_continues(tmp_path, pool, monkeypatch, capsys):
    monkeypatch.setattr(agents.models, "chat_model", Models())
    config = run_file(tmp_path)
    out = tmp_path / "run"
    assert main(args(out, pool, config, "--budget", "0.01")) == 3
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"].startswith("budget") and summary["status"] == "stopped"
    spent = summary["usage"]["cost_usd"]
    assert spent > 0 and "--budget" in err and "--resume" in err
    done = len(summary["rounds"])
    assert 1 <= done < 3 and (out / "round-1" / "annotations.jsonl").exists()
    assert main(["refine", "--resume", str(out), "--budget", "1000"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and len(summary["rounds"]) == 3
    assert summary["usage"]["cost_usd"] > spent


def test_a_negative_budget_is_bad_input(tmp_path, pool, capsys):
    assert main(args(tmp_path / "run", pool, run_file(tmp_path), "--budget", "-1")) == 2
    assert "--budget" in capsys.readouterr().err and not (tmp_path / "run").exists()
