"""The persistent call cache: a repeated bench contacts no server (counted in the server's own log), and a cache file
that cannot be used is set aside and rebuilt with a warning, never a crash."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from agents.cache import CACHE_FILE, CachedReply, CallCache
from agents.models.preflight import forget_checks
from cli.main import main
from tests.servers import capitalised_entities, openai_compat
from tests.test_bench import write_benchmark

openai_server = openai_compat.openai_server
MODELS = ("m-a", "m-b", "m-c", "m-sup")


def test_a_repeated_bench_makes_zero_calls_and_the_same_scores(tmp_path, openai_server, monkeypatch, capsys):
    server = openai_server(capitalised_entities, models=MODELS)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    task, data = write_benchmark(tmp_path)
    args = ["bench", "--task", str(task), "--data", str(data), "--out", str(tmp_path / "one"), "--annotators",
            "openai:m-a,openai:m-b,openai:m-c", "--supervisor", "openai:m-sup", "--max-loops", "2",
            "--pilot-size", "3", "--min-gain", "0", "--patience", "5", "--test-sample", "4"]
    assert main(args) == 0, capsys.readouterr().err
    first = json.loads((tmp_path / "one" / "metrics.json").read_text())
    sent = server.chat_requests()
    assert first["model_calls"] == len(sent) > 0  # the bench's own count equals the server's log
    requests_before = len(server.log)
    forget_checks()
    args[args.index("--out") + 1] = str(tmp_path / "two")
    assert main(args) == 0
    second = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert len(server.log) == requests_before  # not one request of any kind
    assert second["model_calls"] == 0 and second["cache_hits"] > 0
    assert [(r["name"], r["annotator"], r["micro"]) for r in second["configurations"]] == [
        (r["name"], r["annotator"], r["micro"]) for r in first["configurations"]
    ]


def test_an_unreadable_cache_file_is_set_aside_and_rebuilt(tmp_path, caplog):
    path = tmp_path / CACHE_FILE
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        cache = CallCache(path)
    assert "cannot be used" in caplog.text and "rebuilt" in caplog.text
    assert list(tmp_path.glob(CACHE_FILE + ".unreadable-*"))  # kept for a person to look at
    cache.put("k", "m", CachedReply("{}", 1, 0, 2, False))
    assert cache.get("k") == CachedReply("{}", 1, 0, 2, False)


def test_a_cache_of_another_format_is_rebuilt(tmp_path, caplog):
    path = tmp_path / CACHE_FILE
    CallCache(path).put("k", "m", CachedReply("{}", 1, 0, 2, False))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'format'")
    with caplog.at_level(logging.WARNING):
        cache = CallCache(Path(path))
    assert "format 999" in caplog.text and cache.get("k") is None
