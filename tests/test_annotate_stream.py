"""`diziner annotate` on whole corpora: streamed, ordered, resumable from its ledger, against a loopback
OpenAI-compatible server (the real openai client over real HTTP), never a real model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agents.guideline import configuration_for
from agents.models import ModelSpec, RunModels
from cli import rundir
from cli.main import main
from corpus.io import read_documents, write_jsonl
from graph.context import DizinerContext
from state.graph_state import Guideline
from state.models import TaskDefinition
from tests.servers import Fault, capitalised_entities, document_in, prompt_of
from tests.servers.openai_compat import openai_server  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tasks" / "crossner_politics.yaml"
MODEL = "openai:loopback-model"
NAMES = ("Angela Merkel", "Boris Johnson", "Berlin", "Labour", "Paris", "Helmut Kohl", "Moscow", "Senate")


def make_run(directory: Path, annotator: dict[str, Any] | str, task: Path = TASK) -> Path:
    """A run directory as `diziner refine` leaves it, as far as `diziner annotate` reads it: run.json naming the
    annotator's model (and a second annotator, as a run has at least two) and guideline.json selecting the task's
    first-round configuration for that annotator."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    definition = TaskDefinition.from_yaml(task)
    spec = ModelSpec.model_validate(annotator).for_role("annotator")
    other = ModelSpec.model_validate("openai:second-annotator").for_role("annotator")
    models = RunModels(annotators=[spec, other], supervisor=ModelSpec.model_validate("openai:sup").for_role("supervisor"))
    digest = hashlib.sha256(Path(task).read_bytes()).hexdigest()
    record = rundir.RunRecord(
        thread_id="annotate-test", created="2026-01-01T00:00:00+00:00",
        task=rundir.InputFile(path=str(task), sha256=digest),
        docs=rundir.PoolFile(path="pool.jsonl", sha256="0" * 64, format="jsonl", documents=1),
        context=DizinerContext(annotators=[spec.name, other.name], supervisor="openai:sup"),
        models=models, task_definition=definition,
    )
    rundir.write_run(directory, record)
    configuration = configuration_for(definition, Guideline(), spec.name)
    rundir.write_json(directory / rundir.GUIDELINE_JSON,
                      {"round": 1, "annotator": spec.name, **configuration.model_dump(mode="json", by_alias=True)})
    return directory


def corpus(path: Path, n: int, extra: dict[int, str] | None = None) -> Path:
    """`n` distinct short JSONL documents; `extra` replaces the text of some of them."""
    lines = []
    for i in range(n):
        text = f"{NAMES[i % 8]} met {NAMES[(i * 3 + 1) % 8]} in {NAMES[(i * 5 + 2) % 8]} on day {i} ."
        lines.append(json.dumps({"id": f"doc-{i}", "text": (extra or {}).get(i, text), "source": "test"}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def documents_requested(server: Any) -> Counter[str]:
    """How many chat requests asked about each document (by its text)."""
    return Counter(document_in(prompt_of(e.body)) for e in server.chat_requests() if isinstance(e.body, Mapping)
                   and "<document>" in prompt_of(e.body))


@pytest.fixture
def loopback(monkeypatch, openai_server):  # noqa: F811 (the fixture's own name)
    """`loopback(respond=capitalised_entities, **options)` -> a started server the openai: model resolves to."""

    def start(respond: Any = capitalised_entities, **options: Any):
        server = openai_server(respond, **options)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "loopback")
        return server

    return start


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", {"name": MODEL, "concurrency": 4})


def annotate(capsys, run: Path, docs: Path, out: Path, *extra: Any) -> tuple[int, str]:
    """(exit code, stderr) of `diziner annotate` in-process."""
    capsys.readouterr()
    code = main(["annotate", "--run", str(run), "--docs", str(docs), "--out", str(out), *map(str, extra)])
    return code, capsys.readouterr().err


def old_annotate(run: Path, docs: Path, out: Path) -> None:
    """What `diziner annotate` wrote before it streamed: every document through `run_annotator` (LangChain), the
    documents that did not fail written whole by `corpus.io.write_jsonl`."""
    from agents import models
    from agents.annotator import run_annotator
    from cli.annotate import load_configuration
    from corpus.io import CorpusDocument
    from state.models import Document

    record = rundir.read_run(run)
    round_, _, configuration, spec = load_configuration(run, record, None, None)
    docs_read, _ = read_documents(docs)
    outputs, _ = asyncio.run(run_annotator(models.chat_model, spec, configuration,
                                           [Document(id=d.id, text=d.text) for d in docs_read], round_, phase="apply"))
    labels = record.task_definition.to_dataset_label()
    by_id = {o.document_id: o for o in outputs}
    kept = [CorpusDocument(d.id, d.text, sorted({(s.start, s.end, labels.get(s.type, s.type)) for s in by_id[d.id].spans}),
                           d.tokens, dict(d.extra)) for d in docs_read if by_id[d.id].status == "ok"]
    write_jsonl(out, kept)


def ledger_ids(out: Path) -> set[str]:
    conn = sqlite3.connect(f"{out}.ledger.sqlite")
    try:
        return {row[0] for row in conn.execute("SELECT doc_id FROM documents")}
    finally:
        conn.close()


# ---------------------------------------------------------------- the output


def with_unknown_types(body: Mapping[str, Any]) -> Any:
    """capitalised_entities, plus an entity of a type outside the schema in every third document (dropped, counted,
    not asked again)."""
    answer = capitalised_entities(body)
    if isinstance(answer, dict) and "day" in prompt_of(body) and int(prompt_of(body).split("day ")[-1][:2].strip()) % 3 == 0:
        answer = {"entities": [*answer["entities"], {"text": "day", "type": "WEEKDAY"}]}
    return answer


@pytest.mark.parametrize("backend", ["openai", "langchain"])
def test_output_equals_the_whole_file_annotation(tmp_path, capsys, loopback, run_dir, backend):
    server = loopback(with_unknown_types)
    docs = corpus(tmp_path / "docs.jsonl", 30)
    old = tmp_path / "old.jsonl"
    # in a process of its own: LangChain's OpenAI client keeps its connections on the event loop that opened them
    script = f"from tests.test_annotate_stream import old_annotate; old_annotate(*map(__import__('pathlib').Path, " \
             f"{[str(run_dir), str(docs), str(old)]!r}))"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), check=True)
    server.log.clear()
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, run_dir, docs, out, "--backend", backend, "--no-cache")
    assert code == 0, err
    assert out.read_bytes() == old.read_bytes()
    assert f"wrote {out}: 30 document(s)" in err
    assert len(server.chat_requests()) == 31  # the preflight's tiny call, then one request per document (no re-ask)
    assert server.peak_concurrency <= 4
    assert Path(f"{out}.failures.jsonl").read_bytes() == b""
    unordered = tmp_path / "unordered.jsonl"
    code, err = annotate(capsys, run_dir, docs, unordered, "--backend", backend, "--unordered")
    assert code == 0, err
    assert sorted(unordered.read_bytes().splitlines()) == sorted(old.read_bytes().splitlines())


@pytest.mark.parametrize(("output", "backend"), [("json", "openai"), ("json", "langchain"), ("tools", "langchain"),
                                               ("text", "openai"), ("text", "langchain")])
def test_every_output_mode_writes_what_structured_output_writes(tmp_path, capsys, loopback, output, backend):
    server = loopback()
    docs = corpus(tmp_path / "docs.jsonl", 12)
    reference = tmp_path / "reference.jsonl"
    code, err = annotate(capsys, make_run(tmp_path / "ref", {"name": MODEL}), docs, reference, "--no-cache")
    assert code == 0, err
    server.log.clear()
    out = tmp_path / "pred.jsonl"
    run = make_run(tmp_path / "run", {"name": MODEL, "concurrency": 4, "output": output})
    code, err = annotate(capsys, run, docs, out, "--backend", backend, "--no-cache")
    assert code == 0, err
    assert out.read_bytes() == reference.read_bytes()
    asked = [e for e in server.chat_requests() if "<document>" in prompt_of(e.body)]
    assert len(asked) == 12 and {e.outcome for e in asked} == {"ok"}  # each answer read as sent: no re-ask
    formats = [e.body.get("response_format") for e in asked]
    tools = [[t["function"]["name"] for t in e.body.get("tools") or []] for e in asked]
    if output == "json":
        assert formats == [{"type": "json_object"}] * 12 and tools == [[]] * 12
    elif output == "tools":  # one forced call of the answer's schema, answered as a tool call
        assert formats == [None] * 12 and all(len(t) == 1 for t in tools)
        assert [e.body["tool_choice"]["function"]["name"] for e in asked] == [t[0] for t in tools]
    else:
        assert formats == [None] * 12 and tools == [[]] * 12


def test_a_rerun_with_the_same_configuration_is_answered_by_the_cache(tmp_path, capsys, loopback, run_dir):
    server = loopback()
    docs = corpus(tmp_path / "docs.jsonl", 12)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert annotate(capsys, run_dir, docs, first)[0] == 0
    server.log.clear()
    code, err = annotate(capsys, run_dir, docs, second)
    assert code == 0, err
    assert server.requests() == []  # not even the preflight check: nothing was uncached
    assert second.read_bytes() == first.read_bytes()
    assert "0 request(s), 12 answered by the call cache" in err
    # the ledger names each document's request and its call-cache key
    conn = sqlite3.connect(f"{second}.ledger.sqlite")
    rows = conn.execute("SELECT requests FROM documents ORDER BY seq").fetchall()
    conn.close()
    keys = [json.loads(r[0])[0]["cache_key"] for r in rows]
    assert len(set(keys)) == 12 and all(len(k) == 64 for k in keys)


def test_conll_in_conll_out(tmp_path, capsys, loopback, run_dir):
    loopback()
    docs = tmp_path / "gold.conll"
    docs.write_text("Angela\tB-politician\nMerkel\tI-politician\nmet\tO\nKohl\tB-politician\n.\tO\n\n"
                    "-DOCSTART-\tO\n\nParis\tB-location\nis\tO\nnice\tO\n.\tO\n", encoding="utf-8")
    out = tmp_path / "pred.conll"
    code, err = annotate(capsys, run_dir, docs, out, "--format", "conll")
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [ln.split("\t")[0] for ln in lines if ln] == ["Angela", "Merkel", "met", "Kohl", ".", "Paris", "is",
                                                         "nice", "."]
    back, _ = read_documents(out)
    assert [d.id for d in back] == ["pred-1", "pred-2"]
    assert {t for d in back for _, _, t in d.entities} <= {"politician", "location", "politicalparty", "country",
                                                           "person", "organisation", "misc", "election", "event"}


def test_long_documents_are_annotated_in_chunks(tmp_path, capsys, loopback, run_dir):
    server = loopback()
    long_text = " ".join(f"Sentence {i} names Merkel and Kohl in Berlin." for i in range(12))
    docs = corpus(tmp_path / "docs.jsonl", 3, extra={1: long_text})
    whole, chunked = tmp_path / "whole.jsonl", tmp_path / "chunked.jsonl"
    assert annotate(capsys, run_dir, docs, whole)[0] == 0
    server.log.clear()
    code, err = annotate(capsys, run_dir, docs, chunked, "--chunk-chars", "120")
    assert code == 0, err
    asked = documents_requested(server)
    assert len(asked) > 3 and all(len(text) <= 120 for text in asked)  # the long one in pieces, each asked once
    assert set(asked.values()) == {1}
    spans = {json.loads(ln)["id"]: json.loads(ln)["entities"] for ln in chunked.read_text().splitlines()}
    expected = {json.loads(ln)["id"]: json.loads(ln)["entities"] for ln in whole.read_text().splitlines()}
    found = {(e["start"], e["end"]) for e in spans["doc-1"]}
    assert found == {(e["start"], e["end"]) for e in expected["doc-1"]}  # every capitalised word, once, in place
    assert all(long_text[s:e][0].isupper() for s, e in found)
    conn = sqlite3.connect(f"{chunked}.ledger.sqlite")
    requests = json.loads(conn.execute("SELECT requests FROM documents WHERE doc_id = 'doc-1'").fetchone()[0])
    conn.close()
    assert [r["chunk"] for r in requests] == list(range(len(requests))) and len(requests) > 1


# ---------------------------------------------------------------- kill -9, resume


def annotate_child(run_dir: Path, docs: Path, out: Path, lines: int) -> subprocess.Popen:
    """`diziner annotate --no-cache` in a child process, returned once `out` holds `lines` lines (or it ended)."""
    argv = [sys.executable, "-m", "cli.main", "annotate", "--run", str(run_dir), "--docs", str(docs), "--out",
            str(out), "--no-cache"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.01)
    return proc


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, capsys, loopback, run_dir):
    server = loopback(latency=0.1)
    n = 80
    docs = corpus(tmp_path / "docs.jsonl", n)
    reference = tmp_path / "reference.jsonl"
    assert annotate(capsys, run_dir, docs, reference, "--no-cache")[0] == 0
    server.log.clear()

    out = tmp_path / "pred.jsonl"
    proc = annotate_child(run_dir, docs, out, lines=20)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = ledger_ids(out)
    assert 20 <= len(finished) < n  # killed half-way
    sent_before = len(server.chat_requests())
    with open(out, "ab") as fh:  # a torn last line, as a write cut by the kill leaves it
        fh.write(b'{"id": "doc-77", "text": "Hel')

    code, err = annotate(capsys, run_dir, docs, out, "--no-cache", "--resume")
    assert code == 0, err
    assert f"{len(finished)} already done" in err
    assert out.read_bytes() == reference.read_bytes()
    assert Path(f"{out}.failures.jsonl").read_bytes() == Path(f"{reference}.failures.jsonl").read_bytes()
    text_of = {json.loads(ln)["id"]: json.loads(ln)["text"] for ln in docs.read_text().splitlines()}
    after = Counter(document_in(prompt_of(e.body)) for e in server.chat_requests()[sent_before:]
                    if "<document>" in prompt_of(e.body))
    assert not {text_of[i] for i in finished} & set(after)  # no finished document asked again
    assert set(after) | {text_of[i] for i in finished} == set(text_of.values())
    # a resume of a finished output changes nothing and asks nothing
    server.log.clear()
    code, err = annotate(capsys, run_dir, docs, out, "--no-cache", "--resume")
    assert code == 0 and out.read_bytes() == reference.read_bytes()
    assert server.chat_requests() == []


# ---------------------------------------------------------------- failures


class FailWhile:
    """A responder: a server error for the documents saying FAILS while `failing`, else capitalised entities."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, body: Mapping[str, Any]) -> Any:
        if self.failing and "FAILS" in document_in(prompt_of(body)):
            return Fault("500")
        return capitalised_entities(body)


def test_failures_file_and_retry_failed(tmp_path, capsys, loopback, run_dir):
    responder = FailWhile()
    server = loopback(responder)
    docs = corpus(tmp_path / "docs.jsonl", 10, extra={2: "Merkel FAILS here .", 7: "Kohl FAILS too ."})
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, run_dir, docs, out)
    assert code == 0, err
    assert "2 of 10 document(s) failed" in err and "--retry-failed" in err
    assert [json.loads(ln)["id"] for ln in out.read_text().splitlines()] == [f"doc-{i}" for i in range(10)
                                                                             if i not in (2, 7)]
    failures = [json.loads(ln) for ln in Path(f"{out}.failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["doc-2", "doc-7"]
    assert all(f["error"] == "server" and "500" in f["reason"] and "after 3 attempts" in f["reason"]
               for f in failures)

    responder.failing = False
    server.log.clear()
    code, err = annotate(capsys, run_dir, docs, out, "--retry-failed")
    assert code == 0, err
    assert sorted(documents_requested(server)) == ["Kohl FAILS too .", "Merkel FAILS here ."]  # only those
    clean = tmp_path / "clean.jsonl"
    assert annotate(capsys, run_dir, docs, clean)[0] == 0
    assert out.read_bytes() == clean.read_bytes()
    assert Path(f"{out}.failures.jsonl").read_bytes() == b""


def test_every_document_failed_is_exit_1(tmp_path, capsys, loopback, run_dir):
    loopback(lambda body: Fault("500") if "<document>" in prompt_of(body) else capitalised_entities(body))
    docs = corpus(tmp_path / "docs.jsonl", 4)
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, run_dir, docs, out)
    assert code == 1
    assert "every document failed" in err and "4 of 4 document(s) failed" in err
    assert out.read_bytes() == b""
    assert len(Path(f"{out}.failures.jsonl").read_text().splitlines()) == 4


def test_an_unreachable_server_stops_resumably(tmp_path, capsys, loopback, run_dir, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "loopback")
    docs = corpus(tmp_path / "docs.jsonl", 6)
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, run_dir, docs, out)
    assert code == 1
    assert "cannot be reached" in err and "--resume" in err
    assert not out.exists() or out.read_bytes() == b""
    loopback()
    code, err = annotate(capsys, run_dir, docs, out, "--resume")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 6


def test_a_server_that_goes_away_mid_run_stops_it_and_resume_finishes(tmp_path, capsys, loopback, run_dir):
    # the preflight's list and tiny call, then 8 documents answered, then every connection dropped
    first = loopback(schedule=["ok"] * 9 + ["drop"] * 200)
    docs = corpus(tmp_path / "docs.jsonl", 30)
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, run_dir, docs, out, "--concurrency", "1")
    assert code == 1
    assert "cannot be reached" in err and "documents in a row failed" in err
    written = out.read_text().splitlines()
    assert 0 < len(written) < 30
    assert not Path(f"{out}.failures.jsonl").read_text()  # transport failures are not recorded as failed documents
    done = ledger_ids(out)
    first.stop()
    second = loopback()
    code, err = annotate(capsys, run_dir, docs, out, "--resume")
    assert code == 0, err
    text_of = {json.loads(ln)["id"]: json.loads(ln)["text"] for ln in docs.read_text().splitlines()}
    assert not {text_of[i] for i in done} & set(documents_requested(second))
    clean = tmp_path / "clean.jsonl"
    assert annotate(capsys, run_dir, docs, clean)[0] == 0
    assert out.read_bytes() == clean.read_bytes()


# ---------------------------------------------------------------- budget


def test_budget_stops_with_exit_3_and_a_higher_budget_continues(tmp_path, capsys, loopback):
    loopback()
    priced = make_run(tmp_path / "priced", {"name": MODEL, "concurrency": 2,
                                            "price": {"input": 100.0, "output": 100.0}})
    docs = corpus(tmp_path / "docs.jsonl", 12)
    out = tmp_path / "pred.jsonl"
    code, err = annotate(capsys, priced, docs, out, "--budget", "0.5")
    assert code == 3, err
    assert "budget" in err and "--resume --budget" in err
    kept = out.read_text().splitlines()
    assert 0 < len(kept) < 12
    code, err = annotate(capsys, priced, docs, out, "--resume", "--budget", "1000")
    assert code == 0, err
    clean = tmp_path / "clean.jsonl"
    assert annotate(capsys, priced, docs, clean)[0] == 0
    assert out.read_bytes() == clean.read_bytes()


# ---------------------------------------------------------------- refused before any call


def test_resume_with_another_configuration_model_input_or_format_is_refused(tmp_path, capsys, loopback, run_dir):
    server = loopback()
    docs = corpus(tmp_path / "docs.jsonl", 5)
    out = tmp_path / "pred.jsonl"
    assert annotate(capsys, run_dir, docs, out)[0] == 0
    server.log.clear()
    before = out.read_bytes()

    guideline = json.loads((run_dir / rundir.GUIDELINE_JSON).read_text())
    other_conf = make_run(tmp_path / "other-conf", {"name": MODEL, "concurrency": 4})
    rundir.write_json(other_conf / rundir.GUIDELINE_JSON, {**guideline, "goal": "Another goal."})
    code, err = annotate(capsys, other_conf, docs, out, "--resume")
    assert code == 2 and "another configuration" in err, err

    other_model = make_run(tmp_path / "other-model", {"name": "openai:another-model", "concurrency": 4})
    code, err = annotate(capsys, other_model, docs, out, "--resume")
    assert code == 2 and "another model" in err and "openai:another-model" in err, err

    warmer = make_run(tmp_path / "warmer", {"name": MODEL, "concurrency": 4, "temperature": 0.7})
    code, err = annotate(capsys, warmer, docs, out, "--resume")
    assert code == 2 and "temperature 0.0 -> 0.7" in err, err

    code, err = annotate(capsys, run_dir, corpus(tmp_path / "other.jsonl", 6), out, "--resume")
    assert code == 2 and "another input" in err, err

    code, err = annotate(capsys, run_dir, docs, out, "--resume", "--format", "conll")
    assert code == 2 and "another output format" in err, err

    code, err = annotate(capsys, run_dir, docs, out, "--resume", "--unordered")
    assert code == 2 and "another order" in err, err

    assert server.requests() == [] and out.read_bytes() == before


def test_bad_outputs_and_options_are_exit_2_before_any_call(tmp_path, capsys, loopback, run_dir):
    server = loopback()
    docs = corpus(tmp_path / "docs.jsonl", 3)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    code, err = annotate(capsys, run_dir, docs, directory)
    assert code == 2 and "--out names a directory" in err
    code, err = annotate(capsys, run_dir, docs, tmp_path / "missing" / "pred.jsonl")
    assert code == 2 and "does not exist" in err
    out = tmp_path / "pred.jsonl"
    for option, value, says in (("--format", "xml", "unknown --format 'xml'"),
                                ("--backend", "grpc", "unknown --backend 'grpc'"),
                                ("--concurrency", "0", "--concurrency must be at least 1"),
                                ("--chunk-chars", "0", "--chunk-chars must be at least 1")):
        code, err = annotate(capsys, run_dir, docs, out, option, value)
        assert code == 2 and says in err, err
    out.write_text("not ours\n")
    code, err = annotate(capsys, run_dir, docs, out, "--resume")
    assert code == 2 and "no ledger" in err
    assert out.read_text() == "not ours\n"
    Path(f"{out}.ledger.sqlite").write_bytes(b"this is no SQLite file, only some text " * 100)
    code, err = annotate(capsys, run_dir, docs, out, "--resume")
    assert code == 2 and "the ledger cannot be read" in err, err
    assert server.requests() == []


def test_openai_batch_backend_writes_what_the_local_backend_writes(tmp_path, capsys, monkeypatch, run_dir):
    from agents.models.batch import BatchAnnotation
    from tests.servers.batch import BatchServer

    monkeypatch.setitem(BatchAnnotation.__init__.__kwdefaults__, "poll_interval", 0.01)
    with BatchServer(capitalised_entities, models=("loopback-model",)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "loopback")
        docs = corpus(tmp_path / "docs.jsonl", 8)
        local, batched = tmp_path / "local.jsonl", tmp_path / "batched.jsonl"
        assert annotate(capsys, run_dir, docs, local, "--no-cache")[0] == 0
        code, err = annotate(capsys, run_dir, docs, batched, "--backend", "openai-batch", "--no-cache")
        assert code == 0, err
        assert batched.read_bytes() == local.read_bytes()
        assert "openai-batch backend" in err


def test_other_backends_refuse_what_only_the_local_ones_do(tmp_path, capsys, loopback, run_dir):
    server = loopback()
    docs = corpus(tmp_path / "docs.jsonl", 3)
    out = tmp_path / "pred.jsonl"
    for backend, flag in (("openai-batch", "--unordered"), ("openai-batch", "--retry-failed"), ("ray", "--resume")):
        code, err = annotate(capsys, run_dir, docs, out, "--backend", backend, flag)
        assert code == 2 and flag in err and backend in err, err
    code, err = annotate(capsys, run_dir, docs, out, "--backend", "openai-batch", "--budget", "1")
    assert code == 2 and "--budget" in err
    assert server.requests() == []


# ---------------------------------------------------------------- the pieces


def test_streamed_documents_equal_the_corpus_reader(tmp_path):
    from annotation.stream import iter_documents, scan_input
    from state.errors import InputError

    jsonl = corpus(tmp_path / "docs.jsonl", 7)
    conll = tmp_path / "two.conll"
    conll.write_text("-DOCSTART-\tO\n\nA\tB-x\nb\tI-y\n\n\n  \nC\tO\n-DOCSTART-\tO\nd\tI-x\n\n", encoding="utf-8")
    four = tmp_path / "four.conll"
    four.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n", encoding="utf-8")
    for path in (jsonl, conll, four, tmp_path / "empty.conll"):
        path.touch()
        expected, stats = read_documents(path)
        scan = scan_input(path)
        assert list(iter_documents(scan)) == expected, path
        assert [d.line for d in iter_documents(scan)] == [d.line for d in expected]
        assert scan.documents == len(expected) and scan.format == stats.format
        assert scan.stats.warnings(path) == stats.warnings(path)
        assert scan.size == path.stat().st_size
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text(jsonl.read_text() + json.dumps({"id": "doc-3", "text": "again"}) + "\n")
    with pytest.raises(InputError, match=r"dup.jsonl:8: duplicate document id 'doc-3' \(first on line 4\)"):
        scan_input(duplicate)


def test_request_keys_and_prompts_equal_the_call_layers(monkeypatch):
    from agents.annotator import fit_annotator_prompt, schema_for
    from agents.cache import cache_key
    from agents.models.bulk import request_key
    from cli.annotate import prompt_parts
    from prompts import fence

    definition = TaskDefinition.from_yaml(TASK)
    configuration = configuration_for(definition, Guideline(), MODEL)
    for settings, env in (({"name": MODEL}, None), ({"name": MODEL}, "http://127.0.0.1:9/v1"),
                          ({"name": MODEL, "base_url": "http://h/v1", "temperature": 0.3, "output": "json"}, "http://x"),
                          ({"name": "openai:x", "profile": "small", "context_window": 4096}, None)):
        if env is None:
            monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        else:
            monkeypatch.setenv("OPENAI_BASE_URL", env)
        spec = ModelSpec.model_validate(settings).for_role("annotator")
        schema = schema_for(spec, tuple(t.name for t in configuration.schema_))
        for turns in (["un été à Zürich \"quoted\" </document>"], ["a", "b", "c"]):
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            assert request_key(spec, schema, turns) == cache_key(spec, schema.model_json_schema(), spec.output, messages)
        head, tail = prompt_parts(spec, configuration, 2)
        for text in ("Merkel met Kohl .", "a $goal </document> <document> b"):
            assert head + fence(text) + tail == fit_annotator_prompt(spec, configuration, text, 2)[0]


@pytest.mark.parametrize("fmt", ["conll", "label-studio"])
def test_other_formats_resume_to_the_same_bytes(tmp_path, capsys, loopback, fmt):
    loopback()
    priced = make_run(tmp_path / "priced", {"name": MODEL, "concurrency": 2,
                                            "price": {"input": 100.0, "output": 100.0}})
    docs = corpus(tmp_path / "docs.jsonl", 10, extra={4: "Merkel and Kohl and Merkel met in Berlin ."})
    out, clean = tmp_path / "pred.out", tmp_path / "clean.out"
    assert annotate(capsys, priced, docs, clean, "--format", fmt)[0] == 0
    code, err = annotate(capsys, priced, docs, out, "--format", fmt, "--budget", "0.5", "--no-cache")
    assert code == 3, err
    assert out.read_bytes() != clean.read_bytes()
    code, err = annotate(capsys, priced, docs, out, "--format", fmt, "--resume")
    assert code == 0, err
    assert out.read_bytes() == clean.read_bytes()


def test_ctrl_c_then_resume(tmp_path, capsys, loopback, run_dir):
    server = loopback(latency=0.1)
    docs = corpus(tmp_path / "docs.jsonl", 40)
    out = tmp_path / "pred.jsonl"
    proc = annotate_child(run_dir, docs, out, lines=8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err and b"--resume" in err
    finished = ledger_ids(out)
    assert 8 <= len(finished) < 40
    sent = len(server.chat_requests())
    code, err = annotate(capsys, run_dir, docs, out, "--no-cache", "--resume")
    assert code == 0, err
    text_of = {json.loads(ln)["id"]: json.loads(ln)["text"] for ln in docs.read_text().splitlines()}
    after = {document_in(prompt_of(e.body)) for e in server.chat_requests()[sent:] if "<document>" in prompt_of(e.body)}
    assert not {text_of[i] for i in finished} & after
    assert [json.loads(ln)["id"] for ln in out.read_text().splitlines()] == [f"doc-{i}" for i in range(40)]


def test_run_in_order_keeps_order_within_its_window_and_stops_cleanly():
    import random

    from annotation.stream import run_in_order

    async def scenario(ordered: bool, known: set[int], stop_after: int | None = None, fail_at: int | None = None):
        emitted: list[int] = []
        waiting: list[int] = []  # finished but not yet emitted, sampled at every start
        finished: set[int] = set()
        in_flight = 0
        peak = 0
        rng = random.Random(7)

        async def work(i: int) -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            waiting.append(len(finished - set(emitted)))
            await asyncio.sleep(rng.random() / 500)
            in_flight -= 1
            if i == fail_at:
                raise RuntimeError("boom")
            finished.add(i)
            return i * 10

        def emit(i: int, result: int) -> None:
            assert result == i * 10
            emitted.append(i)

        items = ((i, i * 10 if i in known else None) for i in range(60))
        may_start = (lambda n: len(emitted) + n < stop_after) if stop_after is not None else None
        done = await run_in_order(items, work, emit, concurrency=3, ordered=ordered, may_start=may_start)
        return done, emitted, peak, max(waiting, default=0)

    done, emitted, peak, waiting = asyncio.run(scenario(True, {0, 5, 6, 40}))
    assert done and emitted == list(range(60)) and peak <= 3 and waiting <= 12
    done, emitted, peak, _ = asyncio.run(scenario(False, set()))
    assert done and sorted(emitted) == list(range(60)) and emitted != list(range(60)) and peak <= 3
    done, emitted, _, _ = asyncio.run(scenario(True, set(), stop_after=20))
    assert not done and emitted == list(range(len(emitted))) and 20 <= len(emitted) < 23  # in flight finish
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario(True, set(), fail_at=30))
