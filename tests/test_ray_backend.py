"""`annotation.ray_backend`: the local backend's annotation on Ray Data, checked against the loopback
OpenAI-compatible server's request log and against the local path computed in this process.

The Ray tests (integration: about 70 s in all on a loaded 2-core machine) share one local Ray runtime, started once for
the module before any test sets the model's key, so the actors have it only if annotate_with_ray forwards it; each
starts a loopback server in a thread. What they check is what a user sees: the output file's bytes, the failures
file, the server's request log and the reported usage. The fast tests need no Ray runtime.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from agents.annotator import annotate_document
from agents.cache import open_cache
from agents.models import ModelHandle, chat_model, parse_model_spec
from agents.models.preflight import PROBE_PROMPT
from annotation.ray_backend import AnnotationJob, annotate_text, annotate_with_ray, pool_shape
from corpus.io import CorpusDocument, read_documents, write_jsonl
from state.errors import InputError
from state.models import Document, EntityType, TaskConfiguration
from tests.servers import capitalised_entities, document_in, message_text, prompt_of
from tests.servers.openai_compat import OpenAICompatServer

MODEL = "loopback-model"
LABELS = {"PER": "person", "ORG": "organisation", "LOC": "location"}
WORDS = ["Paris", "met", "Angela", "the", "Labour", "in", "Berlin", "and", "Obama", "spoke", "of", "UMP", "."]
FAILING = "Zanzibar"  # the responder answers a document with this word in prose: a failed document


def configuration() -> TaskConfiguration:
    return TaskConfiguration(
        schema=[EntityType(name=n, definition=f"a {label}") for n, label in LABELS.items()],
        goal="Find the people, organisations and locations.",
    )


def documents(n: int) -> list[dict]:
    """n short documents; some carry tokens, extra keys and gold entities (replaced by the predictions)."""
    records = []
    for i in range(n):
        words = ["item", str(i)] + [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(2 + i % 5)]
        if i % 67 == 42:
            words.append(FAILING)
        record: dict = {"id": f"d{i:05d}", "text": " ".join(words)}
        if i % 3 == 0:
            record["tokens"] = words
        if i % 4 == 0:
            record["source"] = {"n": i, "tags": ["x"] * (i % 2)}
        if i % 5 == 0:
            record["entities"] = [{"start": 0, "end": len(words[0]), "type": "gold"}]
        records.append(record)
    return records


def respond(body):
    """Capitalised words of the document, except a prose answer for the FAILING document."""
    if FAILING in document_in(prompt_of(body)):
        return "I cannot help with that."
    return capitalised_entities(body)


def first_asks(server) -> Counter:
    """How many times each document was asked for the first time (preflight probes and re-asks left out)."""
    asked: Counter = Counter()
    for entry in server.chat_requests():
        messages = entry.body.get("messages") or []
        if len(messages) == 1 and message_text(messages[0]).strip() != PROBE_PROMPT:
            asked[document_in(message_text(messages[0]))] += 1
    return asked


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the module (annotate_with_ray uses a running one and leaves it running)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers get no key: the
    # tests set it after this, so the actors have it only through the runtime environment annotate_with_ray gives
    yield ray
    ray.shutdown()


@pytest.fixture
def server():
    with OpenAICompatServer(respond, models=[MODEL], latency=0.02) as server:
        yield server
    assert not server.errors


def local_reference(records: list[dict], spec, tmp: Path, cache_dir: Path) -> tuple[bytes, list[str]]:
    """The local backend's output for the corpus, computed here: annotate_document per document with the call cache,
    spans sorted once each with the dataset's labels, failed documents left out, written by the corpus writer."""
    source = tmp / "reference-input.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    docs, _ = read_documents(source)
    handle = ModelHandle(chat_model, spec)
    cache = open_cache(cache_dir)

    async def run():
        return await asyncio.gather(*(annotate_document(handle, spec, configuration(), Document(id=d.id, text=d.text),
                                                        3, cache=cache) for d in docs))

    out, failed = [], []
    for doc, (output, _) in zip(docs, asyncio.run(run()), strict=True):
        if output.status != "ok":
            failed.append(doc.id)
            continue
        spans = sorted({(s.start, s.end, LABELS[s.type]) for s in output.spans})
        out.append(CorpusDocument(doc.id, doc.text, spans, doc.tokens, dict(doc.extra)))
    path = tmp / "reference.jsonl"
    write_jsonl(path, out)
    return path.read_bytes(), failed


def test_pool_splits_the_concurrency_evenly():
    assert pool_shape(32, 2) == (2, 16)
    assert pool_shape(8, 3) == (2, 4)
    assert pool_shape(7, 4) == (1, 7)
    assert pool_shape(2, 16) == (2, 1)
    with pytest.raises(ValueError):
        pool_shape(0, 2)


def test_a_long_document_is_annotated_in_chunks_and_merged(monkeypatch):
    """The per-document work each actor does (annotate_text): chunks cut, asked one by one, spans mapped back to the
    document, kept once where chunks overlap, written with the dataset's labels; a failing chunk fails the
    document, named."""
    import re

    from annotation.chunks import plan_chunks
    from tests.servers import CAPITALISED

    def person_words(body):
        document = document_in(prompt_of(body))
        if "Kohl" in document:
            return "no JSON here"
        return {"entities": [{"text": w, "type": "PER"} for w in re.findall(CAPITALISED, document)]}

    text = ("Angela spoke at noon. Boris listened there. Nobody else came in. Helmut left early. "
            "Moscow was quiet then. Paris was not.")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    with OpenAICompatServer(person_words, models=[MODEL]) as server:
        spec = parse_model_spec(f"openai:{MODEL}", base_url=server.base_url)
        job = AnnotationJob(spec=spec, configuration=configuration(), labels=LABELS, round_=1, chunk_chars=40,
                            per_actor=1, cache_dir=None, use_cache=False)
        chunks = plan_chunks(text, 40)
        assert len(chunks) >= 3 and any(a.end > b.start for a, b in zip(chunks, chunks[1:]))  # overlapping
        result = asyncio.run(annotate_text(ModelHandle(chat_model, spec), job, "long", text, None))
        asked = [document_in(prompt_of(e.body)) for e in server.chat_requests() if "<document>" in prompt_of(e.body)]
        failed = asyncio.run(annotate_text(ModelHandle(chat_model, spec), job, "kohl", text + " Kohl too.", None))
    assert asked == [c.substring(text) for c in chunks]  # each chunk asked once, in order
    expected = [[m.start(), m.end(), "person"] for m in re.finditer(CAPITALISED, text)]
    assert result["status"] == "ok" and result["spans"] == expected
    assert result["usage"]["calls"] == len(chunks) + 1  # the chunks and the preflight probe
    assert failed["status"] == "failed" and re.match(r"chunk \d+ of \d+: unusable answer", failed["reason"])
    assert failed["raw"] == "no JSON here"


def test_a_missing_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": "a", "text": "Paris"}\n')
    spec = parse_model_spec(f"openai:{MODEL}")
    with pytest.raises(InputError, match=r"pip install -e '\.\[ray\]'"):
        annotate_with_ray(source, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1)


@pytest.mark.integration
def test_ray_equals_the_local_path_each_document_once_and_a_cached_rerun_sends_nothing(
        tmp_path, ray_runtime, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    records = documents(200)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    spec = parse_model_spec(f"openai:{MODEL}", base_url=server.base_url, concurrency=8)
    out = tmp_path / "pred.jsonl"
    cache = tmp_path / "ray-cache"
    lines: list[str] = []

    report = annotate_with_ray(source, out, spec, configuration(), LABELS, round_=3, concurrency=8, cache_dir=cache,
                               log=lines.append)

    # every document requested exactly once (each actor's preflight probe and the re-asks aside), at most 8 at once
    assert first_asks(server) == Counter(r["text"] for r in records)
    assert report.actors == 2 and report.per_actor == 4
    assert report.per_actor < server.peak_concurrency <= 8  # both actors at work at once, never past the limit
    assert lines[0].startswith("200 document(s) with openai:loopback-model on Ray")
    assert report.documents == 200 and report.ok + report.failed == 200 and report.failed >= 1
    sent = len(server.chat_requests())
    probes = sum(PROBE_PROMPT in prompt_of(e.body) for e in server.chat_requests())
    assert report.usage.calls == sent and report.usage.cache_hits == 0

    # the local path, in this process, with its own cache: byte-identical output, the same failed documents
    before = len(server.chat_requests())
    expected, failed = local_reference(records, spec, tmp_path, tmp_path / "local-cache")
    assert len(server.chat_requests()) - before >= 200  # the reference really asked the server
    assert out.read_bytes() == expected
    failures = [json.loads(ln) for ln in Path(f"{out}.failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == failed == [r["id"] for r in records if FAILING in r["text"]]
    assert all(f["raw"] == "I cannot help with that." and f["reason"] for f in failures)
    assert report.failed == len(failed) and report.ok == 200 - len(failed)
    assert report.spans == sum(len(json.loads(ln)["entities"]) for ln in expected.decode().splitlines())
    closing = report.lines()
    assert f"{report.failed} of 200 document(s) failed" in closing[1] and str(report.failures) in closing[1]
    assert closing[-1].startswith(f"diziner annotate: {report.usage.calls} request(s), 0 answered by the call cache")

    # a rerun with the same cache: no request at all (not even a preflight), the same bytes
    before = len(server.chat_requests())
    out.write_bytes(b"stale")
    stale_ledger = Path(f"{out}.ledger.sqlite")  # a local run's ledger of the output being replaced
    stale_ledger.write_bytes(b"ledger")
    again = annotate_with_ray(source, out, spec, configuration(), LABELS, round_=3, concurrency=8, cache_dir=cache,
                              log=lines.append)
    assert len(server.chat_requests()) == before
    assert out.read_bytes() == expected and not stale_ledger.exists()
    assert again.usage.calls == 0 and again.usage.cache_hits == sent - probes
    assert not any(p.name.startswith(".pred.jsonl.ray-") for p in tmp_path.iterdir())  # the work directory removed


@pytest.mark.integration
def test_the_cli_with_backend_ray_writes_the_local_backends_bytes(tmp_path, ray_runtime, server, monkeypatch, capsys):
    from cli.main import main
    from tests.test_annotate_stream import make_run

    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    run = make_run(tmp_path / "run", {"name": f"openai:{MODEL}", "concurrency": 4})
    records = documents(60)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    local, via_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    command = ["annotate", "--run", str(run), "--docs", str(docs)]

    assert main([*command, "--out", str(local), "--cache-dir", str(tmp_path / "local-cache")]) == 0
    assert first_asks(server) == Counter(r["text"] for r in records)
    server.log.clear()
    capsys.readouterr()
    assert main([*command, "--out", str(via_ray), "--backend", "ray", "--cache-dir", str(tmp_path / "ray-cache")]) == 0
    err = capsys.readouterr().err

    assert first_asks(server) == Counter(r["text"] for r in records)
    assert via_ray.read_bytes() == local.read_bytes() and len(local.read_bytes().splitlines()) == 59
    failed = [json.loads(ln) for ln in Path(f"{via_ray}.failures.jsonl").read_text().splitlines()]
    assert failed == [json.loads(ln) for ln in Path(f"{local}.failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["d00042"]
    assert "diziner annotate: 60 document(s) with openai:loopback-model on Ray (a local runtime" in err
    assert "diziner annotate: diziner annotate" not in err


@pytest.mark.integration
def test_conll_and_parquet_inputs_with_a_limit(tmp_path, ray_runtime, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    conll = tmp_path / "gold.conll"
    conll.write_text("Angela\tB-PER\nspoke\tO\n\nParis\tB-LOC\nand\tO\nBerlin\tB-LOC\n\nthe\tO\nUMP\tB-ORG\n\n")
    spec = parse_model_spec(f"openai:{MODEL}", base_url=server.base_url, concurrency=2)
    out = tmp_path / "pred.jsonl"
    report = annotate_with_ray(conll, out, spec, configuration(), LABELS, round_=1, limit=2,
                               cache_dir=tmp_path / "cache", log=lambda _: None)
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    docs, _ = read_documents(conll)
    assert [r["id"] for r in records] == [d.id for d in docs[:2]]
    assert [r["tokens"] for r in records] == [d.tokens for d in docs[:2]]  # the CoNLL tokens kept
    # capitalised words typed in turn with the schema's types, written with the dataset's labels
    assert records[1]["entities"] == [{"start": 0, "end": 5, "type": "person"},
                                      {"start": 10, "end": 16, "type": "organisation"}]
    assert report.documents == 2 and report.actors == 2 and report.per_actor == 1
    assert len(first_asks(server)) == 2  # the third document never asked

    # the same documents as Parquet (ids, texts, tokens): the same output, from the cache
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [d.id for d in docs], "text": [d.text for d in docs], "tokens": [d.tokens for d in docs]})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=1)
    before = len(server.chat_requests())
    parquet_out = tmp_path / "parquet-pred.jsonl"
    again = annotate_with_ray(tmp_path / "docs.parquet", parquet_out, spec, configuration(), LABELS, round_=1,
                              limit=2, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert parquet_out.read_bytes() == out.read_bytes()
    assert len(server.chat_requests()) == before and again.usage.cache_hits == 2


@pytest.mark.integration
def test_an_unreachable_server_stops_the_run(tmp_path, ray_runtime, monkeypatch):
    import socket

    from agents.models.errors import ModelUnavailable

    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = parse_model_spec(f"openai:{MODEL}", base_url=f"http://127.0.0.1:{port}/v1", concurrency=2, timeout=5)
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in documents(6)))
    with pytest.raises(ModelUnavailable, match="openai:loopback-model"):
        annotate_with_ray(source, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1,
                          cache_dir=tmp_path / "cache", log=lambda _: None)


def test_bad_input_is_refused_before_ray_starts(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray

    def no_init(*args, **kwargs):
        raise AssertionError("Ray started for a bad input")

    monkeypatch.setattr(ray, "init", no_init)
    spec = parse_model_spec(f"openai:{MODEL}")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(InputError, match="duplicate document id 'a'"):
        annotate_with_ray(dup, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no documents"):
        annotate_with_ray(empty, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1)
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "text": "x"}\n')
    with pytest.raises(InputError, match="does not exist"):
        annotate_with_ray(good, tmp_path / "missing" / "out.jsonl", spec, configuration(), LABELS, round_=1)
    with pytest.raises(InputError, match=r"does not run through Ray Client"):
        annotate_with_ray(good, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1,
                          address="ray://head:10001")
    with pytest.raises(InputError, match="unknown --format"):
        annotate_with_ray(good, tmp_path / "out.jsonl", spec, configuration(), LABELS, round_=1, fmt="xml")
    assert not os.path.exists(tmp_path / "out.jsonl")
