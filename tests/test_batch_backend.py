"""The OpenAI Batch API backend (`agents.models.batch`) against the loopback batch server (`tests.servers.batch`).

Checked from outside: the output and failures files, the server's request log (uploads, batch creations, the request
lines it answered and their usage) and the persistent call cache (a synchronous rerun sends nothing).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agents.annotator import annotate_document
from agents.cache import open_cache
from agents.models import ModelHandle, chat_model, parse_model_spec
from agents.models import batch as batches
from agents.models.batch import BatchAnnotation, annotate_batch, batch_cost_usd
from agents.models.prices import ModelPrice, cost_usd
from annotation.chunks import merge_spans, plan_chunks
from annotation.ledger import request_id
from corpus.io import CorpusDocument
from state.errors import InputError
from state.graph_state import TokenUsage
from state.models import Document, EntityType, TaskConfiguration
from tests.servers import Reply, capitalised_entities, usage_totals
from tests.servers import batch as batch_servers
from tests.servers.batch import BATCHES, FILES
from tests.servers.openai_compat import CHAT

batch_server = batch_servers.batch_server

MODEL = "m-a"
LABELS = {"PER": "person", "LOC": "location"}
TEXTS = [
    "Barack Obama met Angela Merkel in Berlin .",
    "Paris is the capital of France .",
    "nothing to see here .",
    "Boris Johnson spoke in London .",
    "Paris is the capital of France .",  # the same request as the second: sent once
    "Helmut Kohl visited Moscow in 1990 .",
]
FAST = {"poll_interval": 0.01, "say": lambda message: None}


def configuration(goal: str = "Find people and places.") -> TaskConfiguration:
    return TaskConfiguration(schema=[EntityType(name="PER", definition="a person"),
                                     EntityType(name="LOC", definition="a place")], goal=goal)


def documents(texts: list[str] = TEXTS) -> list[CorpusDocument]:
    return [CorpusDocument(f"d{i}", t) for i, t in enumerate(texts)]


@pytest.fixture
def server(batch_server, monkeypatch):
    """A loopback batch server the openai provider is pointed at, with a dummy key."""

    def start(respond=capitalised_entities, **options):
        started = batch_server(respond, models=(MODEL, "m-b"), **options)
        monkeypatch.setenv("OPENAI_BASE_URL", started.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
        return started

    return start


def job(out: Path, docs: list[CorpusDocument], spec=None, conf=None, **options) -> BatchAnnotation:
    return BatchAnnotation(spec or parse_model_spec(f"openai:{MODEL}"), conf or configuration(), 1, LABELS,
                           lambda: iter(docs), out, **{**FAST, **options})


def predictions(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {d["id"]: [(e["start"], e["end"], e["type"]) for e in d["entities"]] for d in lines}


def posts(server, path: str) -> int:
    return len([r for r in server.requests(path) if r.method == "POST"])


def synchronous(docs: list[CorpusDocument], cache=None) -> dict[str, list[tuple[int, int, str]]]:
    """Each document through `annotate_document` (the synchronous path) against the chat endpoint."""
    spec = parse_model_spec(f"openai:{MODEL}")
    handle = ModelHandle(chat_model, spec)

    async def all_docs():
        return [await annotate_document(handle, spec, configuration(), Document(id=d.id, text=d.text), 1, cache=cache)
                for d in docs]

    out = {}
    for output, _ in asyncio.run(all_docs()):
        assert output.status == "ok", output.reason
        out[output.document_id] = sorted((s.start, s.end, LABELS[s.type]) for s in output.spans)
    return out


def test_predictions_equal_the_synchronous_path_and_usage_equals_the_servers_log(tmp_path, server):
    srv = server()
    out = tmp_path / "pred.jsonl"
    priced = parse_model_spec(f"openai:{MODEL}", price=ModelPrice(input=1.0, output=4.0))
    summary = annotate_batch(priced, configuration(), 1, LABELS, lambda: iter(documents()), out, cache=None, **FAST)
    assert posts(srv, FILES) == 1 and posts(srv, BATCHES) == 1
    lines = srv.batch_lines()
    assert len(lines) == len(set(TEXTS)) == 5  # the repeated document was sent once
    got = predictions(out)
    assert list(got) == [f"d{i}" for i in range(len(TEXTS))]  # input order, every document
    assert sum(len(v) for v in got.values()) > 10 and got["d4"] == got["d1"]
    assert Path(f"{out}.failures.jsonl").read_text() == ""
    assert summary.ok == len(TEXTS) and summary.failed == 0

    # the same predictions as the synchronous path, which sends the same bodies (a batch never streams)
    assert got == synchronous(documents())
    sent = [r.body for r in srv.requests(CHAT) if r.body["messages"][0]["content"].startswith("## Named entity")]
    bodies = [{k: v for k, v in b.items() if k != "stream"} for b in sent]
    assert {json.dumps(b, sort_keys=True) for b in bodies} == {json.dumps(r.body, sort_keys=True) for r in lines}
    assert len(bodies) == len(TEXTS)
    assert all(b["stream"] is False for b in sent)

    # the request file: custom ids are the ledger's request ids; usage and cost from the server's own counts
    upload = next(f for f in srv.files.values() if f.purpose == "batch")
    custom_ids = [json.loads(line)["custom_id"] for line in upload.data.decode().splitlines()]
    assert custom_ids == [request_id(f"d{i}", None, priced.name, job(out, []).configuration_hash)
                          for i in (0, 1, 2, 3, 5)]
    served = usage_totals(lines)
    usage = summary.usage
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (5, served["prompt_tokens"],
                                                                       served["completion_tokens"])
    assert usage.cache_hits == 1  # the repeated document
    assert summary.cost_usd == pytest.approx(cost_usd(priced.price, usage) / 2)
    assert summary.cost_usd == pytest.approx((served["prompt_tokens"] * 1.0 + served["completion_tokens"] * 4.0) / 2e6)


def test_results_land_in_the_call_cache_so_a_synchronous_run_sends_nothing(tmp_path, server):
    srv = server()
    cache = open_cache()
    out = tmp_path / "pred.jsonl"
    annotate_batch(parse_model_spec(f"openai:{MODEL}"), configuration(), 1, LABELS, lambda: iter(documents()), out,
                   cache=cache, **FAST)
    before = len(srv.log)
    assert synchronous(documents(), cache=cache) == predictions(out)
    assert len(srv.log) == before  # not a model list, not a preflight call, not one chat completion
    # and a second batch run of the same documents into another output uploads nothing
    again = tmp_path / "again.jsonl"
    summary = annotate_batch(parse_model_spec(f"openai:{MODEL}"), configuration(), 1, LABELS,
                             lambda: iter(documents()), again, cache=cache, **FAST)
    assert len(srv.log) == before and again.read_bytes() == out.read_bytes()
    assert summary.usage.calls == 0 and summary.usage.cache_hits == len(TEXTS) and summary.batches == []
    conll = tmp_path / "pred.conll"
    annotate_batch(parse_model_spec(f"openai:{MODEL}"), configuration(), 1, LABELS, lambda: iter(documents()), conll,
                   cache=cache, output_format="conll", **FAST)
    assert conll.read_text().startswith("Barack\tB-person\nObama\tB-location\nmet\tO\n") and len(srv.log) == before


def test_a_kill_between_create_and_completion_polls_the_same_batch(tmp_path, server):
    srv = server(in_progress_polls=3)
    out = tmp_path / "pred.jsonl"
    first = job(out, documents())
    first.prepare()
    first.upload()
    first.create()
    first.close()  # the process dies here: the batch runs on at the provider
    state = json.loads(batches.state_path(out).read_text())
    assert [p["stage"] for p in state["parts"]] == ["submitted"]
    said: list[str] = []
    summary = job(out, documents(), say=said.append).run()
    assert posts(srv, FILES) == 1 and posts(srv, BATCHES) == 1 and len(srv.batch_lines()) == 5
    assert summary.batches == [state["parts"][0]["batch_id"]] and summary.ok == len(TEXTS)
    assert said[0] == f"continuing the batches in {batches.state_path(out)} (1 submitted)"
    polled = [m for m in said if m.startswith("batch 1 of 1")]
    assert "in_progress, 0/5 done" in polled[0] and "completed, 5/5 done, 0 failed" in polled[-1]
    assert len(polled) == 2  # a line when the status changes, not on every poll
    logged, written = len(srv.log), out.read_bytes()
    job(out, documents()).run()  # everything downloaded: a rerun sends nothing and writes the same file
    assert len(srv.log) == logged and out.read_bytes() == written
    whole = tmp_path / "whole.jsonl"
    job(whole, documents()).run()  # an uninterrupted run, no call cache: its own batch
    assert posts(srv, BATCHES) == 2 and len(srv.batch_lines()) == 10
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("stage", ["uploaded", "submitted"])
def test_a_kill_before_an_id_was_saved_finds_it_on_the_server(tmp_path, server, monkeypatch, stage):
    srv = server()
    out = tmp_path / "pred.jsonl"
    first = job(out, documents())
    save = BatchAnnotation._save

    def dies_before_saving(self):
        if any(p["stage"] == stage for p in self.state["parts"]):
            raise KeyboardInterrupt  # the request went through; its answer never reached the state
        save(self)

    monkeypatch.setattr(BatchAnnotation, "_save", dies_before_saving)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    monkeypatch.setattr(BatchAnnotation, "_save", save)
    assert posts(srv, FILES) == 1 and posts(srv, BATCHES) == (1 if stage == "submitted" else 0)
    job(out, documents()).run()
    assert posts(srv, FILES) == 1 and posts(srv, BATCHES) == 1  # found, not sent again
    assert [r.method for r in srv.requests(FILES if stage == "uploaded" else BATCHES)].count("GET") == 1
    assert predictions(out) == synchronous(documents())


def test_a_missing_key_or_an_unknown_model_is_an_input_error_before_any_upload(tmp_path, server, monkeypatch):
    srv = server()
    with pytest.raises(InputError, match="'openai:nope'.*does not serve 'nope'.*m-a"):
        job(tmp_path / "a.jsonl", documents(), spec=parse_model_spec("openai:nope")).run()
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        job(tmp_path / "b.jsonl", documents()).run()
    assert posts(srv, FILES) == 0 and posts(srv, BATCHES) == 0
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    srv_keyed = server(api_key="sk-right")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(InputError, match="refused the key"):
        job(tmp_path / "c.jsonl", documents()).run()
    assert posts(srv_keyed, FILES) == 0
    with pytest.raises(InputError, match="openai-batch backend runs openai: models"):
        job(tmp_path / "d.jsonl", documents(), spec=parse_model_spec("ollama:qwen3:14b"))


def test_failed_lines_unusable_answers_and_an_expired_batch_go_to_the_failures_file(tmp_path, server):
    def respond(body):
        prompt = body["messages"][0]["content"]
        if "Johnson" in prompt:
            return Reply("I cannot find any entities, sorry.")
        return capitalised_entities(body)

    # lines in order d0, d1, d2, d3, d5: the second line gets a 500, the fifth is never run (expired)
    srv = server(respond, schedule="ok, 500", expire_after=4)
    out = tmp_path / "pred.jsonl"
    summary = job(out, documents()).run()
    failures = {f["id"]: f for f in map(json.loads, Path(f"{out}.failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"d1", "d3", "d4", "d5"}
    assert failures["d1"]["error"] == "server" and "HTTP 500" in failures["d1"]["reason"]
    assert failures["d4"]["reason"] == failures["d1"]["reason"]  # the same request
    assert failures["d3"]["error"] == "answer" and failures["d3"]["reason"].startswith("unusable answer")
    assert failures["d3"]["raw"] == "I cannot find any entities, sorry."
    assert failures["d5"]["error"] == "timeout" and "batch_expired" in failures["d5"]["reason"]
    assert list(predictions(out)) == ["d0", "d2"]
    assert (summary.ok, summary.failed) == (2, 4)
    assert summary.usage.calls == 4  # the expired line never ran
    assert len(srv.batch_lines()) == 4


def test_long_documents_are_sent_in_chunks_and_merged(tmp_path, server):
    srv = server()
    long_text = " ".join(f"Anna Berg met Carl Dahl in Essen on day {i} ." for i in range(12))
    docs = documents([long_text, "Paris is nice ."])
    out = tmp_path / "pred.jsonl"
    job(out, docs, chunk_chars=120).run()
    chunks = plan_chunks(long_text, 120)
    assert len(chunks) > 3 and len(srv.batch_lines()) == len(chunks) + 1
    spec = parse_model_spec(f"openai:{MODEL}")

    async def per_chunk():
        handle = ModelHandle(chat_model, spec)
        return [await annotate_document(handle, spec, configuration(), Document(id="c", text=c.substring(long_text)),
                                        1) for c in chunks]

    merged = merge_spans([(c, o.spans) for c, (o, _) in zip(chunks, asyncio.run(per_chunk()), strict=True)],
                         len(long_text))
    assert predictions(out)["d0"] == sorted((s.start, s.end, LABELS[s.type]) for s in merged)
    assert len(predictions(out)["d0"]) >= 12 * 4


def test_a_state_of_another_configuration_is_refused(tmp_path, server):
    server()
    out = tmp_path / "pred.jsonl"
    first = job(out, documents())
    first.prepare()
    first.upload()
    with pytest.raises(InputError, match="another configuration"):
        job(out, documents(), conf=configuration("Find only people.")).prepare()
    with pytest.raises(InputError, match="another input"):
        job(out, documents(), input_fingerprint={"size": 1}).prepare()


def test_batch_cost_is_half_the_price():
    price = ModelPrice(input=2.0, cached_input=0.5, output=8.0)
    usage = TokenUsage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=500_000, calls=3)
    assert batch_cost_usd(price, usage) == pytest.approx((800_000 * 2.0 + 200_000 * 0.5 + 500_000 * 8.0) / 2e6)
    assert batch_cost_usd(None, usage) == 0.0
