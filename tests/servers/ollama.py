"""A loopback Ollama server for tests (standard library only; never part of the product).

It speaks the part of Ollama's API that the `ollama` client and `langchain_ollama.ChatOllama` use:
``POST /api/chat`` (a JSON-schema ``format``; streamed as NDJSON lines, the last with ``done: true``,
``done_reason``, ``prompt_eval_count`` and ``eval_count``, or whole with ``stream: false``; Ollama streams when
``stream`` is absent), ``GET /api/tags`` (the pulled models), ``POST /api/show`` (a model's details and
capabilities), ``GET /api/version`` and ``GET /``. Errors are ``{"error": "..."}``; a model that is not served gets
404 ``{"error": "model 'x' not found, try pulling it first"}``. A name without a tag means ``:latest``.

A reasoning model (listed in ``thinking_models``, or any answer whose `Reply` has ``reasoning``) thinks as Ollama's
do: with ``think: true`` (or a level) the thinking comes apart in ``message.thinking``; with ``think`` absent it
stays in the content inside ``<think>...</think>``; with ``think: false`` there is none. ``think: true`` for a
model that does not reason gets 400 ``"<model>" does not support thinking``.

In a test::

    pytest_plugins = ["tests.servers.ollama"]  # in the root conftest; or, in the test module itself:
    ollama_server = tests.servers.ollama.ollama_server

    def test_chat(ollama_server):
        server = ollama_server(capitalised_entities, schedule=["500"], thinking_models=["qwen3:0.6b"])
        model = ChatOllama(model="loopback", base_url=server.url)
        ...

or ``with OllamaServer(...) as server:``; `OllamaProcess` (fixture `ollama_process`) runs it in a child process.
See `tests.servers` for responders, fault schedules (``stream-error`` puts an ``{"error": ...}`` line in the middle
of a stream, as Ollama does when the runner fails) and the request log.

Options: ``respond``, ``schedule`` (``/api/chat``), ``list_schedule`` (``/api/tags``), ``models`` (default
``("loopback:latest",)``; None serves any), ``thinking_models`` (served too), ``usage`` (False: no
``prompt_eval_count`` / ``eval_count``, as Ollama omits them for a prompt it had cached), ``context_length``
(reported by ``/api/show``), ``chunk_chars``, ``latency``. ``options.num_predict`` caps the answer
(``done_reason: "length"``). ``ChatOllama`` streams unless called with ``stream=False`` (its structured output
always streams)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tests.servers import (
    THINKING,
    Fault,
    LoggedRequest,
    LoopbackHandler,
    LoopbackServer,
    Reply,
    ServerProcess,
    apply_content_faults,
    count_tokens,
    factory_fixture,
    prompt_tokens_of,
)

CHAT = "/api/chat"
TAGS = "/api/tags"
SHOW = "/api/show"
VERSION = "0.12.0"
DEFAULT_MODEL = "loopback:latest"

_ERRORS = {
    400: "invalid request",
    401: "unauthorized",
    429: "too many requests",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def canonical(name: str) -> str:
    """An Ollama model name with its tag (``llama3`` -> ``llama3:latest``)."""
    return name if ":" in name else f"{name}:latest"


def not_found(model: str) -> str:
    """Ollama's message for a model that is not pulled."""
    return f"model '{model}' not found, try pulling it first"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class OllamaHandler(LoopbackHandler):
    """Ollama's API over the shared HTTP mechanics."""

    owner: OllamaServer  # type: ignore[assignment]

    def fault_error(self, fault: Fault, body: Any) -> tuple[Any, dict[str, str]]:
        status = fault.status or 500
        if status == 404:
            return {"error": not_found(str((body or {}).get("model", "")))}, {}
        return {"error": _ERRORS.get(status, f"scripted error {status}")}, self.retry_after(fault)

    def bad_json(self, stream: bool) -> tuple[bytes, str]:
        if stream:
            return b'{"model": "loopback", "message": {"role": "assistant", "content": \n', "application/x-ndjson"
        return b'{"model": "loopback", "message": {"role": "assistant", "content": "', "application/json"

    def route(self, method: str, path: str, body: Any) -> None:
        if method == "POST" and path == CHAT:
            self.chat(body)
        elif method == "GET" and path == TAGS:
            self.tags()
        elif method == "POST" and path == SHOW:
            self.show(body)
        elif method == "GET" and path == "/api/version":
            entry = self.owner.log.open(method, path, None, None, False)
            self.record(entry, status=200, outcome="ok")
            self.send_json(200, {"version": VERSION})
            self.finish_entry(entry)
        elif method in ("GET", "HEAD") and path == "/":
            entry = self.owner.log.open(method, path, None, None, False)
            self.record(entry, status=200, outcome="ok")
            self.send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
            self.finish_entry(entry)
        else:
            entry = self.owner.log.open(method, path, body, None, False)
            self.record(entry, status=404, outcome="unknown-path")
            self.send_bytes(404, b"404 page not found", "text/plain")
            self.finish_entry(entry)

    def tags(self) -> None:
        """``GET /api/tags``: the served models."""
        entry = self.owner.log.open("GET", TAGS, None, None, False)
        fault = self.owner.list_schedule.next(None)
        if self.transport_fault(entry, fault, None, False):
            return
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": _now(),
                "size": 400_000_000,
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": self.owner.details(),
            }
            for m in self.owner.served()
        ]
        self.record(entry, status=200, outcome="ok" if fault.name == "ok" else fault.name)
        self.send_json(200, {"models": models})
        self.finish_entry(entry)

    def show(self, body: Any) -> None:
        """``POST /api/show``: a served model's details, or 404."""
        model = str((body or {}).get("model") or (body or {}).get("name") or "")
        entry = self.owner.log.open("POST", SHOW, body, model, False)
        if not self.owner.serves(model):
            self.send_error_json(entry, 404, "unknown-model", f"model '{model}' not found")
            return
        capabilities = ["completion"] + (["thinking"] if self.owner.thinks(model) else [])
        info = {
            "general.architecture": "llama",
            "general.parameter_count": 1_000_000_000,
            "llama.context_length": self.owner.context_length,
        }
        self.record(entry, status=200, outcome="ok")
        self.send_json(
            200,
            {
                "license": "",
                "modelfile": f"FROM {canonical(model)}\n",
                "parameters": "temperature 0.8",
                "template": "{{ .Prompt }}",
                "details": self.owner.details(),
                "model_info": info,
                "capabilities": capabilities,
                "modified_at": _now(),
            },
        )
        self.finish_entry(entry)

    def chat(self, body: Any) -> None:
        """``POST /api/chat``: the scheduled fault, or the responder's answer."""
        model = body.get("model") if isinstance(body, Mapping) else None
        stream = bool(body.get("stream", True)) if isinstance(body, Mapping) else True
        entry = self.owner.log.open("POST", CHAT, body, model, stream)
        if not isinstance(body, Mapping) or not model:
            self.send_error_json(entry, 400, "bad-request", "model is required")
            return
        if not self.owner.serves(model):
            self.send_error_json(entry, 404, "unknown-model", not_found(model))
            return
        think = body.get("think")
        if think not in (None, False) and not self.owner.thinks(model):
            self.send_error_json(entry, 400, "no-thinking", f'"{model}" does not support thinking')
            return
        with self.owner.in_flight():
            if self.owner.latency:
                self.sleep(self.owner.latency)
            self._answer(entry, body, model, stream, think)

    def _answer(self, entry: LoggedRequest, body: Mapping[str, Any], model: str, stream: bool, think: Any) -> None:
        fault = self.owner.schedule.next(body)
        if fault.name == "stream-error" and not stream:
            fault = Fault("500")
        if self.transport_fault(entry, fault, body, stream):
            return
        answered = self.responder_reply(entry, fault, body, stream)
        if answered is None:
            return
        reply, fault = answered
        reasoning = reply.reasoning if reply.reasoning is not None else (THINKING if self.owner.thinks(model) else None)
        faults = fault.content_faults
        if reasoning is not None and think is None:
            faults = ("think", *faults)  # a reasoning model asked nothing about thinking thinks aloud
        cap = (body.get("options") or {}).get("num_predict")
        reply = apply_content_faults(
            dataclasses.replace(reply, reasoning=reasoning), faults, cap if cap and cap > 0 else None
        )
        thinking = reasoning if think not in (None, False) else None
        tokens = prompt_tokens_of(body)
        prompt = len(tokens) if reply.prompt_tokens is None else reply.prompt_tokens
        generated = count_tokens(reply.content) + count_tokens(thinking or "")
        completion = generated if reply.completion_tokens is None else reply.completion_tokens
        final: dict[str, Any] = {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reply.finish_reason,
            "total_duration": 1_000_000 * (prompt + completion + 1),
            "load_duration": 100_000,
        }
        usage = None
        if self.owner.usage:
            final.update(
                prompt_eval_count=prompt,
                prompt_eval_duration=500_000 * prompt,
                eval_count=completion,
                eval_duration=1_000_000 * completion,
            )
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cached_tokens": 0,
            }
        outcome = "ok" if fault.name == "ok" else fault.name
        if stream:
            self._stream(entry, model, reply, thinking, final, usage, fault, outcome, tool_call(body, reply.content))
            return
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        call = tool_call(body, reply.content)
        if call is not None:
            message.update(content="", tool_calls=[call])
        if thinking is not None:
            message["thinking"] = thinking
        payload = json.dumps({**final, "message": message}).encode()
        if fault.name == "cut":
            self.record(entry, status=200, outcome="cut")
            self.send_cut(200, payload, "application/json; charset=utf-8")
            self.finish_entry(entry)
            return
        self.record(entry, status=200, outcome=outcome, usage=usage, finish_reason=reply.finish_reason)
        self.send_bytes(200, payload, "application/json; charset=utf-8")
        self.finish_entry(entry)

    def _stream(
        self,
        entry: LoggedRequest,
        model: str,
        reply: Reply,
        thinking: str | None,
        final: dict[str, Any],
        usage: dict[str, int] | None,
        fault: Fault,
        outcome: str,
        call: dict[str, Any] | None = None,
    ) -> None:
        size = self.owner.chunk_chars

        def part(**message: Any) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": "", **message},
                "done": False,
            }

        lines = [part(thinking=thinking[i : i + size]) for i in range(0, len(thinking or ""), size)] if thinking else []
        if call is None:
            lines += [part(content=reply.content[i : i + size]) for i in range(0, len(reply.content), size)]
        else:  # as Ollama streams a tool call: whole, in one message
            lines.append(part(tool_calls=[call]))
        lines.append(final)
        if fault.name in ("cut", "stream-error"):
            self.record(entry, status=200, outcome=fault.name)
        else:
            self.record(entry, status=200, outcome=outcome, usage=usage, finish_reason=reply.finish_reason)
        self.start_chunked(200, "application/x-ndjson")
        if fault.name in ("cut", "stream-error"):
            for line in lines[: max(1, len(lines) // 2)]:
                self.write_chunk(json.dumps(line).encode() + b"\n")
            if fault.name == "stream-error":
                self.write_chunk(
                    json.dumps({"error": "an error was encountered while running the model: unexpected EOF"}).encode()
                    + b"\n"
                )
                self.end_chunked()
            self.close_connection = True
            self.finish_entry(entry)
            return
        for line in lines:
            self.write_chunk(json.dumps(line).encode() + b"\n")
        self.end_chunked()
        self.finish_entry(entry)


def tool_call(body: Mapping[str, Any], content: str) -> dict[str, Any] | None:
    """With ``tools`` declared, an answer that is a JSON object becomes a call of the first tool (Ollama has no
    forced choice; its arguments an object, as Ollama sends them); None otherwise."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)]
    if not tools:
        return None
    try:
        arguments = json.loads(content)
    except ValueError:
        return None
    return {"function": {"name": tools[0]["function"].get("name"), "arguments": arguments}} if isinstance(
        arguments, dict) else None


class OllamaServer(LoopbackServer):
    """An Ollama server on 127.0.0.1 in a background thread; `url` is the client's host."""

    chat_path = CHAT
    handler_class = OllamaHandler
    name = "ollama-loopback"

    def __init__(
        self,
        respond: Callable[[Mapping[str, Any]], Any] | None = None,
        *,
        models: Sequence[str] | None = (DEFAULT_MODEL,),
        thinking_models: Sequence[str] = (),
        context_length: int = 4096,
        **options: Any,
    ) -> None:
        super().__init__(respond, models=models, **options)
        self.thinking_models = tuple(thinking_models)
        self.context_length = context_length

    def served(self) -> list[str]:
        """The served model names, tagged (the reasoning models included)."""
        return list(dict.fromkeys(canonical(m) for m in (*(self.models or ()), *self.thinking_models)))

    def serves(self, model: str) -> bool:
        """Whether `model` is pulled (every model, when `models` is None)."""
        return self.models is None or canonical(model) in self.served()

    def thinks(self, model: str) -> bool:
        """Whether `model` is a reasoning model."""
        return canonical(model) in {canonical(m) for m in self.thinking_models}

    @staticmethod
    def details() -> dict[str, Any]:
        """The ``details`` block of a served model."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "1B",
            "quantization_level": "Q4_K_M",
        }

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "thinking_models": list(self.thinking_models),
            "context_length": self.context_length,
        }


class OllamaProcess(ServerProcess):
    """`OllamaServer` in a child process: ``OllamaProcess("tests.servers:capitalised_entities", schedule=...)``."""

    module = "tests.servers.ollama"
    server_class = OllamaServer


ollama_server = factory_fixture(
    OllamaServer,
    """``ollama_server(respond=None, **options)`` -> a started OllamaServer; all are stopped at teardown.""",
)
ollama_process = factory_fixture(
    OllamaProcess,
    """``ollama_process("module:responder" | None, **options)`` -> a started OllamaProcess; all are stopped at
    teardown.""",
)

if __name__ == "__main__":
    OllamaServer.main()
