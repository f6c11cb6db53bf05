"""Self-tests of the loopback model servers (tests/servers), driven by the real clients: `openai`,
`langchain_openai.ChatOpenAI`, the `ollama` client and `langchain_ollama.ChatOllama`. Every fault must behave as the
servers' docstrings say, and every request, failed ones included, must reach the request log."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import ollama
import openai
import pytest
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.servers import (
    Fault,
    FaultSchedule,
    Reply,
    as_reply,
    capitalised_entities,
    capitalised_responder,
    count_tokens,
    minimal_instance,
    usage_totals,
)
from tests.servers import ollama as ollama_servers
from tests.servers import openai_compat as openai_servers
from tests.servers.ollama import OllamaProcess, OllamaServer
from tests.servers.openai_compat import CHAT, MODELS, OpenAICompatProcess, OpenAICompatServer

# the servers' fixtures, for the tests of this module
openai_server = openai_servers.openai_server
openai_process = openai_servers.openai_process
ollama_server = ollama_servers.ollama_server
ollama_process = ollama_servers.ollama_process

MODEL = "loopback-model"
DOC = "<document>\nBarack Obama met Angela Merkel in Berlin .\n</document>"
WORDS = ["Barack", "Obama", "Angela", "Merkel", "Berlin"]


class Entity(BaseModel):
    text: str
    type: str


class Entities(BaseModel):
    entities: list[Entity]


def client(server, **options) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key="k", **options)


def ask(c: openai.OpenAI, content: str = DOC, **options):
    return c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **options)


def wait_until(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ---------------------------------------------------------------------------------------------- shared pieces


def test_fault_parse_and_schedules():
    assert Fault.parse("429:2") == Fault("429", 2.0)
    assert Fault.parse("think+fence").content_faults == ("think", "fence")
    assert Fault.parse("drip").content_faults == ()
    assert str(Fault.parse("429:2")) == "429:2"
    for bad in ("teapot", "think+drop", "42"):
        with pytest.raises(ValueError):
            Fault.parse(bad)

    in_order = FaultSchedule.of("500, 429:1")
    assert [str(in_order.next()) for _ in range(4)] == ["500", "429:1", "ok", "ok"]
    cycled = FaultSchedule.sequence_of("500", "ok", cycle=True)
    assert [str(cycled.next()) for _ in range(4)] == ["500", "ok", "500", "ok"]
    then = FaultSchedule.sequence_of("drop", then="503")
    assert [str(then.next()) for _ in range(3)] == ["drop", "503", "503"]

    chance = FaultSchedule.chance({"500": 0.3, "drop": 0.2}, seed=7)
    outcomes = [str(chance.next()) for _ in range(400)]
    again = FaultSchedule.chance({"500": 0.3, "drop": 0.2}, seed=7)
    assert outcomes == [str(again.next()) for _ in range(400)]  # seeded: the same faults in the same order
    assert 0.2 < outcomes.count("500") / 400 < 0.4 and 0.1 < outcomes.count("drop") / 400 < 0.3
    with pytest.raises(ValueError):
        FaultSchedule.chance({"500": 0.7, "drop": 0.5})

    per_body = FaultSchedule.sequence_of("500", per_body=True)
    assert [str(per_body.next(b)) for b in ({"a": 1}, {"b": 2}, {"a": 1}, {"b": 2})] == ["500", "500", "ok", "ok"]
    assert FaultSchedule.from_json(per_body.to_json()).to_json() == per_body.to_json()


def test_minimal_instance_validates_nested_schemas():
    class Principle(BaseModel):
        text: str = Field(min_length=3)
        weight: int = Field(ge=2)

    class Analysis(BaseModel):
        summary: str
        principles: list[Principle] = Field(min_length=2)
        level: str | None = None
        kind: Entity

    value = minimal_instance(Analysis.model_json_schema())
    assert Analysis.model_validate(value).principles[0].weight == 2
    assert set(value) == {"summary", "principles", "kind"}
    assert as_reply(Entities(entities=[])) == Reply('{"entities":[]}')
    assert as_reply({"entities": []}) == Reply('{"entities": []}') and as_reply(Fault("drop")) == Fault("drop")


def test_capitalised_responder_reads_types_and_caps_from_the_schema():
    schema = {
        "$defs": {
            "Kind": {"enum": ["PER", "LOC"], "type": "string"},
            "Item": {
                "properties": {"text": {"type": "string"}, "type": {"$ref": "#/$defs/Kind"}},
                "required": ["text", "type"],
                "type": "object",
            },
        },
        "properties": {"entities": {"items": {"$ref": "#/$defs/Item"}, "maxItems": 3, "type": "array"}},
        "required": ["entities"],
        "type": "object",
    }
    body = {"messages": [{"role": "user", "content": DOC}], "format": schema}
    assert capitalised_entities(body) == {
        "entities": [
            {"text": "Barack", "type": "PER"},
            {"text": "Obama", "type": "LOC"},
            {"text": "Angela", "type": "PER"},
        ]
    }
    prompt = "### Entity types\n- POLITICIAN: a politician\n- PLACE: a place\n\n### Document\n" + DOC
    shifted = capitalised_responder(offset=1)({"messages": [{"role": "user", "content": prompt}]})
    assert [e["type"] for e in shifted["entities"]] == ["PLACE", "POLITICIAN", "PLACE", "POLITICIAN", "PLACE"]
    assert capitalised_entities({"messages": [{"role": "user", "content": "Say Hello"}]}) == {"entities": []}


# ---------------------------------------------------------------------------------------------- OpenAI-compatible


def test_openai_answers_lists_models_and_reports_the_logged_usage(openai_server):
    server = openai_server(capitalised_entities, models=[MODEL, "other"])
    c = client(server)
    assert [m.id for m in c.models.list().data] == [MODEL, "other"]
    answer = ask(c)
    assert [e["text"] for e in json.loads(answer.choices[0].message.content)["entities"]] == WORDS
    assert answer.choices[0].finish_reason == "stop"
    chat = server.chat_requests()
    assert len(chat) == 1 and chat[0].outcome == "ok" and chat[0].status == 200 and chat[0].model == MODEL
    assert chat[0].body["messages"][0]["content"] == DOC
    assert chat[0].usage == {
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "total_tokens": answer.usage.total_tokens,
        "cached_tokens": answer.usage.prompt_tokens_details.cached_tokens,
    }
    assert answer.usage.prompt_tokens == count_tokens(DOC)
    assert [r.path for r in server.requests()] == [MODELS, CHAT]


def test_openai_stream_sends_usage_only_when_asked(openai_server):
    server = openai_server(capitalised_entities, chunk_chars=5)
    c = client(server)
    whole = ask(c).choices[0].message.content
    chunks = list(ask(c, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole
    assert len(chunks) > len(whole) // 5  # really streamed in pieces
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count_tokens(whole)
    plain = list(ask(c, stream=True))
    assert all(ch.usage is None for ch in plain)
    log = server.chat_requests()
    assert [r.stream for r in log] == [False, True, True]
    assert log[1].usage["completion_tokens"] == chunks[-1].usage.completion_tokens and log[2].usage is None
    assert usage_totals(log)["calls"] == 2


def test_openai_429_carries_retry_after_and_the_client_waits_it(openai_server):
    server = openai_server(schedule="429:1, 429:1")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client(server))
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    started = time.monotonic()
    ask(client(server, max_retries=1))  # the second 429, then ok after the announced second
    assert time.monotonic() - started >= 0.95
    log = server.chat_requests()
    assert [(r.status, r.outcome) for r in log] == [(429, "429"), (429, "429"), (200, "ok")]
    assert log[2].time - log[1].time >= 0.95


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("500", openai.InternalServerError, None),
        ("503", openai.InternalServerError, None),
        ("401", openai.AuthenticationError, "invalid_api_key"),
        ("404", openai.NotFoundError, "model_not_found"),
        ("400", openai.BadRequestError, "context_length_exceeded"),
    ],
)
def test_openai_error_faults_use_openai_error_bodies(openai_server, fault, error, code):
    server = openai_server(schedule=[fault])
    with pytest.raises(error) as caught:
        ask(client(server))
    assert caught.value.status_code == int(fault) and caught.value.code == code
    assert ask(client(server)).choices[0].message.content == '{"entities": []}'  # the schedule moved on
    assert [(r.status, r.outcome) for r in server.chat_requests()] == [(int(fault), fault), (200, "ok")]


def test_openai_unknown_model_and_api_key(openai_server):
    server = openai_server(schedule="500", api_key="secret")
    with pytest.raises(openai.AuthenticationError):
        ask(client(server))
    good = openai.OpenAI(base_url=server.base_url, api_key="secret", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        good.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found" and "gpt-nothing" in caught.value.message
    with pytest.raises(openai.InternalServerError):  # neither failure took the scheduled 500
        ask(good)
    assert [r.outcome for r in server.requests()] == ["unauthorised", "unknown-model", "500"]


def test_openai_responder_errors_and_unknown_paths(openai_server):
    server = openai_server(lambda body: 1 / 0)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client(server))
    assert "ZeroDivisionError" in caught.value.message
    with httpx.Client(trust_env=False) as http:
        answer = http.post(server.url + "/v1/embeddings", json={"input": "x"})
        not_json = http.post(server.base_url + "/chat/completions", content=b"{not json")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
    assert not_json.status_code == 400
    assert [(r.path, r.outcome) for r in server.requests()] == [
        (CHAT, "responder-error"),
        ("/v1/embeddings", "unknown-path"),
        (CHAT, "bad-request"),
    ]


def test_openai_slow_answer_and_model_list_faults(openai_server):
    server = openai_server(schedule="slow:0.3", list_schedule="503, drop")
    c = client(server)
    started = time.monotonic()
    assert ask(c).choices[0].finish_reason == "stop"
    assert time.monotonic() - started >= 0.3
    with pytest.raises(openai.InternalServerError):
        c.models.list()
    with pytest.raises(openai.APIConnectionError):
        c.models.list()
    assert [m.id for m in c.models.list().data] == [MODEL]
    log = server.requests()
    assert [(r.method, r.outcome) for r in log] == [("POST", "slow"), ("GET", "503"), ("GET", "drop"), ("GET", "ok")]
    assert log[0].elapsed >= 0.3 and log[0].usage is not None


def test_openai_dropped_connections_are_retried_and_all_logged(openai_server):
    server = openai_server(schedule="drop, drop")
    with pytest.raises(openai.APIConnectionError):
        ask(client(server))
    assert ask(client(server, max_retries=2)).choices[0].finish_reason == "stop"
    log = server.chat_requests()
    assert [(r.status, r.outcome) for r in log] == [(None, "drop"), (None, "drop"), (200, "ok")]


def test_openai_silent_server_times_out(openai_server):
    server = openai_server(schedule="silent")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client(server, timeout=0.4))
    assert time.monotonic() - started < 2.0
    entry = server.chat_requests()[0]
    assert entry.outcome == "silent" and entry.status is None
    assert wait_until(lambda: server.chat_requests()[0].elapsed is not None)  # it noticed the client leave


def test_openai_drip_defeats_a_read_timeout_but_not_a_deadline(openai_server):
    server = openai_server(schedule="drip:0.1")

    async def call() -> None:
        c = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=httpx.Timeout(0.4))
        async with c:
            await asyncio.wait_for(
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]), 0.8
            )

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(call())  # a byte every 0.1 s never lets the 0.4 s read timeout fire: only the deadline ends it
    assert 0.75 < time.monotonic() - started < 3.0
    entry = server.chat_requests()[0]
    assert (entry.status, entry.outcome) == (200, "drip")
    assert wait_until(lambda: server.chat_requests()[0].elapsed is not None)


def test_openai_bad_json_cut_and_stream_error(openai_server):
    server = openai_server(schedule="bad-json, bad-json, cut, cut, stream-error")
    c = client(server)
    with pytest.raises(json.JSONDecodeError):
        ask(c)
    with pytest.raises(json.JSONDecodeError):
        list(ask(c, stream=True))
    with pytest.raises(openai.APIConnectionError):
        ask(c)
    with pytest.raises(openai.APIConnectionError):
        list(ask(c, stream=True))
    with pytest.raises(openai.APIError) as caught:
        list(ask(c, stream=True))
    assert "error while processing" in str(caught.value)
    log = server.chat_requests()
    assert [r.outcome for r in log] == ["bad-json", "bad-json", "cut", "cut", "stream-error"]
    assert all(r.status == 200 and r.usage is None for r in log)


def test_openai_content_faults(openai_server):
    answer = '{"entities": [{"text": "Berlin", "type": "LOC"}]}'
    server = openai_server(lambda body: answer, schedule="think, fence, prose, preamble, think+fence, length")
    c = client(server)
    contents = [ask(c).choices[0] for _ in range(6)]
    assert contents[0].message.content.startswith("<think>\n") and contents[0].message.content.endswith(
        "</think>\n" + answer
    )
    assert contents[1].message.content == f"```json\n{answer}\n```"
    assert (
        contents[2].message.content.startswith(answer + "\n\n") and len(contents[2].message.content) > len(answer) + 10
    )
    assert contents[3].message.content.endswith("\n" + answer) and not contents[3].message.content.startswith("{")
    assert (
        contents[4].message.content.startswith("<think>")
        and "```json\n" + answer + "\n```" in contents[4].message.content
    )
    assert contents[5].finish_reason == "length" and answer.startswith(contents[5].message.content)
    assert count_tokens(contents[5].message.content) == count_tokens(answer) // 2
    assert [c.finish_reason for c in contents[:5]] == ["stop"] * 5


def test_openai_max_tokens_cuts_and_parse_raises_length_error(openai_server):
    server = openai_server(capitalised_entities)
    c = client(server)
    cut = ask(c, max_tokens=7)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 7
    with pytest.raises(openai.LengthFinishReasonError):
        c.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": DOC}], response_format=Entities, max_tokens=7
        )
    assert [r.finish_reason for r in server.chat_requests()] == ["length", "length"]


def test_openai_reasoning_content_and_reply_token_overrides(openai_server):
    server = openai_server(
        lambda body: Reply('{"entities": []}', reasoning="thinking hard", prompt_tokens=1000, cached_tokens=600)
    )
    answer = ask(client(server))
    assert answer.choices[0].message.model_extra["reasoning_content"] == "thinking hard"
    assert (answer.usage.prompt_tokens, answer.usage.prompt_tokens_details.cached_tokens) == (1000, 600)
    assert answer.usage.completion_tokens == count_tokens('{"entities": []}') + count_tokens("thinking hard")
    assert server.chat_requests()[0].usage["cached_tokens"] == 600


def test_openai_prompt_cache_context_window_and_no_usage(openai_server):
    cached = openai_server(prompt_cache=True)
    c = client(cached)
    first = ask(c, "alpha beta gamma delta")
    second = ask(c, "alpha beta gamma epsilon zeta")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 3
    small = openai_server(context_window=12)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client(small), "one two three four five six seven eight", max_tokens=8)
    assert caught.value.code == "context_length_exceeded" and "16 tokens" in caught.value.message
    assert ask(client(small), "one two", max_tokens=8).choices[0].finish_reason == "stop"  # 2 + 8 tokens fit
    silent = openai_server(usage=False)
    assert ask(client(silent)).usage is None
    chunks = list(ask(client(silent), stream=True, stream_options={"include_usage": True}))
    assert all(ch.usage is None for ch in chunks)
    assert [r.usage for r in silent.chat_requests()] == [None, None]


def test_openai_concurrent_requests_and_per_body_faults(openai_server):
    server = openai_server(capitalised_entities, schedule=FaultSchedule.sequence_of("500", per_body=True), latency=0.2)

    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=1)
        async with c:
            answers = await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"<document>\n{city} Town\n</document>"}]
                    )
                    for city in ("Paris", "Rome", "Oslo", "Lima")
                )
            )
        return [a.choices[0].message.content for a in answers]

    started = time.monotonic()
    answers = asyncio.run(run())
    assert time.monotonic() - started < 3.0
    assert all(json.loads(a)["entities"][1]["text"] == "Town" for a in answers)
    assert server.peak_concurrency == 4
    log = server.chat_requests()
    assert sorted(r.outcome for r in log) == ["500"] * 4 + ["ok"] * 4  # each distinct request failed once, then passed
    assert usage_totals(log)["calls"] == 4


def test_chat_openai_structured_output_and_stream_usage(openai_server):
    server = openai_server(capitalised_entities)
    model = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="k", max_retries=0, timeout=5)
    result = model.with_structured_output(Entities, method="json_schema", include_raw=True).invoke(DOC)
    assert [e.text for e in result["parsed"].entities] == WORDS
    request = server.chat_requests()[0]
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["schema"]["required"] == ["entities"]
    meta = result["raw"].usage_metadata
    assert (meta["input_tokens"], meta["output_tokens"]) == (
        request.usage["prompt_tokens"],
        request.usage["completion_tokens"],
    )

    streaming = ChatOpenAI(
        model=MODEL, base_url=server.base_url, api_key="k", max_retries=0, timeout=5, stream_usage=True
    )

    async def collect():
        total = None
        async for chunk in streaming.astream(DOC):
            total = chunk if total is None else total + chunk
        return total

    total = asyncio.run(collect())
    streamed = server.chat_requests()[1]
    assert streamed.stream and json.loads(total.content)["entities"][0]["text"] == "Barack"
    assert total.usage_metadata["output_tokens"] == streamed.usage["completion_tokens"]
    assert usage_totals(server.chat_requests())["prompt_tokens"] == 2 * count_tokens(DOC)


def test_openai_server_stop_ends_hanging_connections():
    server = OpenAICompatServer(schedule="silent, drip:0.05")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ask(client(server, timeout=30.0))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    with server:
        callers = [threading.Thread(target=call) for _ in range(2)]
        for caller in callers:
            caller.start()
        assert wait_until(lambda: sorted(r.outcome for r in server.chat_requests()) == ["drip", "silent"])
        assert len(server.live_threads()) >= 3  # the serving thread and the two hanging connections
        started = time.monotonic()
    for caller in callers:
        caller.join(5.0)
    assert time.monotonic() - started < 3.0  # the stop ended both calls, long before their 30 s timeout
    assert server.live_threads() == []
    assert len(errors) == 2 and all(isinstance(e, openai.APIConnectionError) for e in errors)
    assert all(r.elapsed is not None for r in server.chat_requests())


def test_openai_child_process_logs_and_can_be_killed(openai_process):
    server = openai_process("tests.servers:capitalised_entities", schedule="503")
    c = client(server, max_retries=1)
    assert [e["text"] for e in json.loads(ask(c).choices[0].message.content)["entities"]] == WORDS
    assert [(r.status, r.outcome) for r in server.chat_requests()] == [(503, "503"), (200, "ok")]
    server.clear_log()
    assert server.requests() == []
    server.kill()
    assert not server.running
    with pytest.raises(openai.APIConnectionError):
        ask(client(server))


# ---------------------------------------------------------------------------------------------- Ollama


def test_ollama_client_lists_shows_and_chats(ollama_server):
    server = ollama_server(capitalised_entities, models=["loopback", "small:1b"])
    c = ollama.Client(host=server.url)
    assert [m.model for m in c.list().models] == ["loopback:latest", "small:1b"]
    shown = c.show("loopback")
    assert shown.capabilities == ["completion"] and shown.modelinfo["llama.context_length"] == 4096
    with pytest.raises(ollama.ResponseError) as caught:
        c.show("absent")
    assert caught.value.status_code == 404
    answer = c.chat(model="loopback", messages=[{"role": "user", "content": DOC}], format=Entities.model_json_schema())
    assert [e.text for e in Entities.model_validate_json(answer.message.content).entities] == WORDS
    parts = list(c.chat(model="small:1b", messages=[{"role": "user", "content": DOC}], stream=True))
    assert len(parts) > 2 and [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == answer.message.content
    last = parts[-1]
    log = server.chat_requests()
    assert log[0].body["format"] == Entities.model_json_schema() and log[0].stream is False and log[1].stream is True
    assert log[1].usage == {
        "prompt_tokens": last.prompt_eval_count,
        "completion_tokens": last.eval_count,
        "total_tokens": last.prompt_eval_count + last.eval_count,
        "cached_tokens": 0,
    }
    assert (answer.prompt_eval_count, answer.eval_count) == (
        log[0].usage["prompt_tokens"],
        log[0].usage["completion_tokens"],
    )
    assert [r.path for r in server.requests()] == ["/api/tags", "/api/show", "/api/show", "/api/chat", "/api/chat"]


def test_ollama_model_not_pulled_and_errors(ollama_server):
    server = ollama_server(schedule="500, stream-error, drop, 503")
    c = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as caught:
        c.chat(model="x", messages=[{"role": "user", "content": "hi"}])
    assert (caught.value.status_code, caught.value.error) == (404, "model 'x' not found, try pulling it first")
    with pytest.raises(ollama.ResponseError) as caught:
        c.chat(model="loopback", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 500
    with pytest.raises(ollama.ResponseError) as caught:
        list(c.chat(model="loopback", messages=[{"role": "user", "content": DOC}], stream=True))
    assert "error was encountered" in caught.value.error
    with pytest.raises(httpx.RemoteProtocolError):
        c.chat(model="loopback", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError) as caught:
        c.chat(model="loopback", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert [(r.status, r.outcome) for r in server.chat_requests()] == [
        (404, "unknown-model"),
        (500, "500"),
        (200, "stream-error"),
        (None, "drop"),
        (503, "503"),
    ]
    with pytest.raises(ValueError, match="not found in Ollama"):
        ChatOllama(model="absent", base_url=server.url, validate_model_on_init=True)


def test_ollama_silent_and_drip(ollama_server):
    server = ollama_server(schedule="silent, drip:0.1")
    c = ollama.Client(host=server.url, timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        c.chat(model="loopback", messages=[{"role": "user", "content": "hi"}])
    slow = ollama.AsyncClient(host=server.url, timeout=0.4)  # per read: the drip never trips it

    async def dripped() -> None:
        await asyncio.wait_for(
            slow.chat(model="loopback", messages=[{"role": "user", "content": "hi"}], stream=False), 0.8
        )

    with pytest.raises(TimeoutError):
        asyncio.run(dripped())
    assert [(r.status, r.outcome) for r in server.chat_requests()] == [(None, "silent"), (200, "drip")]


def test_chat_ollama_format_structured_output_streaming_and_not(ollama_server):
    server = ollama_server(capitalised_entities)
    schema = Entities.model_json_schema()
    for stream in (True, False):
        model = ChatOllama(model="loopback", base_url=server.url, format=schema)
        message = model.invoke(DOC, stream=stream)
        assert [e.text for e in Entities.model_validate_json(message.content).entities] == WORDS
        assert message.usage_metadata["output_tokens"] == server.chat_requests()[-1].usage["completion_tokens"]
    structured = ChatOllama(model="loopback", base_url=server.url, num_predict=500).with_structured_output(
        Entities, method="json_schema", include_raw=True
    )
    result = structured.invoke(DOC)
    assert [e.text for e in result["parsed"].entities] == WORDS
    streamed = "".join(chunk.content for chunk in ChatOllama(model="loopback", base_url=server.url).stream(DOC))
    assert json.loads(streamed)["entities"][0]["text"] == "Barack"
    log = server.chat_requests()
    assert [r.stream for r in log] == [True, False, True, True]
    assert (
        log[0].body["format"] == schema
        and log[2].body["format"] == schema
        and log[2].body["options"]["num_predict"] == 500
    )
    assert usage_totals(log)["calls"] == 4


def test_ollama_thinking_models(ollama_server):
    server = ollama_server(thinking_models=["qwen3:0.6b"], schedule=["ok", "ok", "ok", "length"])
    separate = ChatOllama(model="qwen3:0.6b", base_url=server.url, reasoning=True).invoke("hi")
    assert separate.content == '{"entities": []}' and separate.additional_kwargs["reasoning_content"]
    inline = ChatOllama(model="qwen3:0.6b", base_url=server.url).invoke("hi")
    assert inline.content.startswith("<think>\n") and inline.content.endswith('</think>\n{"entities": []}')
    silent = ChatOllama(model="qwen3:0.6b", base_url=server.url, reasoning=False).invoke("hi")
    assert silent.content == '{"entities": []}' and "reasoning_content" not in silent.additional_kwargs
    cut = ollama.Client(host=server.url).chat(
        model="qwen3:0.6b", messages=[{"role": "user", "content": "hi"}], think=True
    )
    assert cut.done_reason == "length" and cut.message.thinking and len(cut.message.content) < len('{"entities": []}')
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).chat(model="loopback", messages=[{"role": "user", "content": "hi"}], think=True)
    assert (caught.value.status_code, caught.value.error) == (400, '"loopback" does not support thinking')
    log = server.chat_requests()
    assert [r.body.get("think") for r in log] == [True, None, False, True, True]
    assert log[0].usage["completion_tokens"] > count_tokens('{"entities": []}')  # thinking tokens are generated tokens


def test_ollama_no_usage_and_child_process(ollama_server, ollama_process):
    quiet = ollama_server(usage=False)
    answer = ollama.Client(host=quiet.url).chat(model="loopback", messages=[{"role": "user", "content": "hi"}])
    assert answer.prompt_eval_count is None and answer.eval_count is None and quiet.chat_requests()[0].usage is None
    child: OllamaProcess = ollama_process("tests.servers:capitalised_entities", schedule="500")
    c = ollama.Client(host=child.url)
    with pytest.raises(ollama.ResponseError):
        c.chat(model="loopback", messages=[{"role": "user", "content": DOC}])
    assert "Barack" in c.chat(model="loopback", messages=[{"role": "user", "content": DOC}]).message.content
    assert [r.outcome for r in child.chat_requests()] == ["500", "ok"]
    child.stop()
    assert not child.running


def test_ollama_server_stops_every_thread():
    server = OllamaServer(schedule="silent")
    with server:
        with pytest.raises(httpx.ReadTimeout):
            ollama.Client(host=server.url, timeout=0.3).chat(
                model="loopback", messages=[{"role": "user", "content": "hi"}]
            )
        assert server.live_threads()
    assert server.live_threads() == []
    assert OpenAICompatProcess.module != OllamaProcess.module
