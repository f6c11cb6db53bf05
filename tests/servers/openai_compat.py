"""A loopback OpenAI-compatible model server for tests (standard library only; never part of the product).

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``, whole or streamed (``stream: true``: server-sent
events, the usage in a last chunk when ``stream_options.include_usage`` is set), with OpenAI's error bodies
(``{"error": {"message", "type", "param", "code"}}``).

In a test::

    pytest_plugins = ["tests.servers.openai_compat"]  # in the root conftest; or, in the test module itself:
    openai_server = tests.servers.openai_compat.openai_server

    def test_retry(openai_server):
        server = openai_server(capitalised_entities, schedule="500, 429:1")  # then ok
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2)
        ...
        assert [r.outcome for r in server.requests(CHAT)] == ["500", "429", "ok"]

or ``with OpenAICompatServer(...) as server:``. `OpenAICompatProcess` runs the same server in a child process (its
responder named ``module:attribute``; `requests()` fetches the log over HTTP; `kill()` crashes it); the fixture
`openai_process` starts them. See `tests.servers` for responders, fault schedules and the request log.

Options (both forms): ``respond``, ``schedule`` (chat completions), ``list_schedule`` (``/v1/models``), ``models``
(served ids, default ``("loopback-model",)``; a request for another model gets 404 ``model_not_found``; None serves
any), ``usage`` (False: no usage block, as some servers), ``api_key`` (when set, any other bearer token gets 401
``invalid_api_key``), ``prompt_cache`` (report as cached the longest token prefix shared with an earlier prompt to
the same model), ``context_window`` (a prompt whose tokens plus ``max_tokens`` exceed it gets 400
``context_length_exceeded``), ``chunk_chars`` (characters per streamed chunk), ``latency`` (seconds before each
answer), ``keep_log`` (False: keep no request log, for benchmarks of a million requests). ``max_tokens`` / ``max_completion_tokens`` cap the answer: a longer one is cut, finish reason ``length``.
As OpenAI does, a request with a forced tool (``tool_choice``) is answered with that tool's call (the responder's
answer as its arguments, finish reason ``tool_calls``), and JSON mode (``response_format`` ``json_object``) without the
word "json" in the messages, or a forced tool the request does not declare, gets 400.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.servers import (
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

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
DEFAULT_MODEL = "loopback-model"

_ERRORS: dict[int, tuple[str, str, str | None]] = {  # status -> (type, message, code)
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("permission_denied", "You are not allowed to use this model.", None),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it.", "model_not_found"),
    429: ("requests", "Rate limit reached for requests. Please try again later.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


def context_error(window: int | None, used: int) -> tuple[str, str]:
    """OpenAI's context-length message and code."""
    return (
        f"This model's maximum context length is {window or 4096} tokens. However, your messages resulted in {used} "
        "tokens. Please reduce the length of the messages.",
        "context_length_exceeded",
    )


class OpenAIHandler(LoopbackHandler):
    """The OpenAI chat-completions protocol over the shared HTTP mechanics."""

    owner: OpenAICompatServer  # type: ignore[assignment]

    def error_body(self, status: int, message: str, code: str | None = None) -> Any:
        kind, _, default_code = _ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", "", None)
        )
        param = "messages" if code == "context_length_exceeded" else None
        return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}

    def fault_error(self, fault: Fault, body: Any) -> tuple[Any, dict[str, str]]:
        status = fault.status or 500
        model = body.get("model") if isinstance(body, Mapping) else None
        if status == 400:
            message, code = context_error(self.owner.context_window, len(prompt_tokens_of(body or {})))
            return self.error_body(400, message, code), {}
        if status == 404:
            return self.error_body(404, f"The model `{model}` does not exist or you do not have access to it."), {}
        message = _ERRORS.get(status, ("", f"Scripted error {status}.", None))[1]
        return self.error_body(status, message), self.retry_after(fault)

    def bad_json(self, stream: bool) -> tuple[bytes, str]:
        if stream:
            return b'data: {"id": "chatcmpl-bad", "choices": [\n\ndata: [DONE]\n\n', "text/event-stream"
        return (
            b'{"id": "chatcmpl-bad", "object": "chat.completion", "choices": [{"message": {"content": "',
            "application/json",
        )

    def route(self, method: str, path: str, body: Any) -> None:
        if method == "GET" and path == MODELS:
            self.list_models()
        elif method == "POST" and path == CHAT:
            self.chat(body)
        else:
            entry = self.owner.log.open(method, path, body, None, False)
            self.send_error_json(entry, 404, "unknown-path", f"Invalid URL ({method} {path})", "unknown_url")

    def authorised(self, entry: LoggedRequest) -> bool:
        """False (after a 401) when the server wants an API key and the request does not carry it."""
        key = self.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.send_error_json(entry, 401, "unauthorised", "Incorrect API key provided.", "invalid_api_key")
        return False

    def list_models(self) -> None:
        """``GET /v1/models``: the served model ids."""
        entry = self.owner.log.open("GET", MODELS, None, None, False)
        if not self.authorised(entry):
            return
        fault = self.owner.list_schedule.next(None)
        if self.transport_fault(entry, fault, None, False):
            return
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "loopback"}
            for m in self.owner.models or ()
        ]
        self.record(entry, status=200, outcome="ok" if fault.name == "ok" else fault.name)
        self.send_json(200, {"object": "list", "data": data})
        self.finish_entry(entry)

    def chat(self, body: Any) -> None:
        """``POST /v1/chat/completions``: the scheduled fault, or the responder's answer."""
        model = body.get("model") if isinstance(body, Mapping) else None
        stream = bool(body.get("stream")) if isinstance(body, Mapping) else False
        entry = self.owner.log.open("POST", CHAT, body, model, stream)
        if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list) or not model:
            self.send_error_json(entry, 400, "bad-request", "'model' and 'messages' are required properties")
            return
        if not self.authorised(entry):
            return
        if self.owner.models is not None and model not in self.owner.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            self.send_error_json(entry, 404, "unknown-model", message, "model_not_found")
            return
        problem = request_problem(body)
        if problem is not None:
            self.send_error_json(entry, 400, "bad-request", problem)
            return
        with self.owner.in_flight():
            if self.owner.latency:
                self.sleep(self.owner.latency)
            self._answer(entry, body, model, stream)

    def _answer(self, entry: LoggedRequest, body: Mapping[str, Any], model: str, stream: bool) -> None:
        fault = self.owner.schedule.next(body)
        if fault.name == "stream-error" and not stream:
            fault = Fault("500")
        if self.transport_fault(entry, fault, body, stream):
            return
        tokens = prompt_tokens_of(body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        window = self.owner.context_window
        if window is not None and len(tokens) + (cap or 0) > window:
            message, code = context_error(window, len(tokens) + (cap or 0))
            self.send_error_json(entry, 400, "context-length", message, code)
            return
        answered = self.responder_reply(entry, fault, body, stream)
        if answered is None:
            return
        reply, fault = answered
        reply = apply_content_faults(reply, fault.content_faults, cap)
        usage = self.owner.usage_of(model, tokens, reply)
        outcome = "ok" if fault.name == "ok" else fault.name
        if stream:
            self._stream(entry, body, model, reply, usage, fault, outcome)
            return
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        tool = forced_tool(body)
        finish_reason = reply.finish_reason
        if tool is not None:  # the answer is the forced call's arguments
            message["content"] = None
            message["tool_calls"] = [{"id": f"call_loopback_{entry.index}", "type": "function",
                                      "function": {"name": tool, "arguments": reply.content}}]
            finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        if reply.reasoning is not None and "think" not in fault.content_faults:
            message["reasoning_content"] = reply.reasoning
        completion: dict[str, Any] = {
            "id": f"chatcmpl-loopback-{entry.index}",
            "object": "chat.completion",
            "created": int(entry.time),
            "model": model,
            "system_fingerprint": "fp_loopback",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            completion["usage"] = usage
        payload = json.dumps(completion).encode()
        if fault.name == "cut":
            self.record(entry, status=200, outcome="cut")
            self.send_cut(200, payload, "application/json")
            self.finish_entry(entry)
            return
        self.record(entry, status=200, outcome=outcome, usage=_flat(usage), finish_reason=reply.finish_reason)
        self.send_bytes(200, payload, "application/json")
        self.finish_entry(entry)

    def _stream(
        self,
        entry: LoggedRequest,
        body: Mapping[str, Any],
        model: str,
        reply: Reply,
        usage: dict[str, Any] | None,
        fault: Fault,
        outcome: str,
    ) -> None:
        include_usage = usage is not None and bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": f"chatcmpl-loopback-{entry.index}",
            "object": "chat.completion.chunk",
            "created": int(entry.time),
            "model": model,
            "system_fingerprint": "fp_loopback",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            return data

        size = self.owner.chunk_chars
        events = [chunk({"role": "assistant", "content": ""})]
        if reply.reasoning is not None and "think" not in fault.content_faults:
            events += [
                chunk({"reasoning_content": reply.reasoning[i : i + size]})
                for i in range(0, len(reply.reasoning), size)
            ]
        tool = forced_tool(body)
        pieces = [reply.content[i : i + size] for i in range(0, len(reply.content), size)]
        if tool is None:
            events += [chunk({"content": piece}) for piece in pieces]
        else:  # the forced call's arguments, in pieces after its name
            call = {"index": 0, "id": f"call_loopback_{entry.index}", "type": "function"}
            events.append(chunk({"tool_calls": [{**call, "function": {"name": tool, "arguments": ""}}]}))
            events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces]
        finish = "tool_calls" if tool is not None and reply.finish_reason == "stop" else reply.finish_reason
        events.append(chunk({}, finish))
        if include_usage:
            events.append({**base, "choices": [], "usage": usage})
        if fault.name in ("cut", "stream-error"):
            self.record(entry, status=200, outcome=fault.name)
        else:
            usage_sent = _flat(usage) if include_usage else None
            self.record(entry, status=200, outcome=outcome, usage=usage_sent, finish_reason=reply.finish_reason)
        self.start_chunked(200, "text/event-stream")
        if fault.name in ("cut", "stream-error"):
            for event in events[: max(1, len(events) // 2)]:
                self.write_chunk(f"data: {json.dumps(event)}\n\n".encode())
            if fault.name == "stream-error":
                error = self.error_body(500, "The server had an error while processing your request.")
                self.write_chunk(f"data: {json.dumps(error)}\n\n".encode())
                self.end_chunked()
            self.close_connection = True
            self.finish_entry(entry)
            return
        for event in events:
            self.write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        self.write_chunk(b"data: [DONE]\n\n")
        self.end_chunked()
        self.finish_entry(entry)


def forced_tool(body: Mapping[str, Any]) -> str | None:
    """The function a request forces a call of (``tool_choice`` naming one, or ``required`` with one tool)."""
    tools = [t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, Mapping)]
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return name if name in tools else None
    return tools[0] if choice == "required" and len(tools) == 1 else None


def request_problem(body: Mapping[str, Any]) -> str | None:
    """What OpenAI refuses in a request (400) that a client could send: JSON mode without the word "json" in the
    messages, a forced tool the request does not declare."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        said = " ".join(str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, Mapping))
        if "json" not in said.lower():
            return "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and forced_tool(body) is None:
        return "Invalid value for 'tool_choice': the named function is not among 'tools'."
    return None


def _flat(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    """OpenAI's usage block in the request log's flat names."""
    if usage is None:
        return None
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
    }


class OpenAICompatServer(LoopbackServer):
    """An OpenAI-compatible server on 127.0.0.1 in a background thread; `base_url` ends in ``/v1``."""

    chat_path = CHAT
    handler_class = OpenAIHandler
    name = "openai-loopback"

    def __init__(
        self,
        respond: Callable[[Mapping[str, Any]], Any] | None = None,
        *,
        models: Sequence[str] | None = (DEFAULT_MODEL,),
        api_key: str | None = None,
        prompt_cache: bool = False,
        context_window: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(respond, models=models, **options)
        self.api_key = api_key
        self.prompt_cache = prompt_cache
        self.context_window = context_window
        self._prompts: dict[str, list[list[str]]] = {}
        self._prompts_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what OpenAI clients take as ``base_url``."""
        return self.url + "/v1"

    def cached_prefix(self, model: str, tokens: list[str]) -> int:
        """With `prompt_cache`, the longest token prefix `tokens` shares with an earlier prompt to `model`."""
        if not self.prompt_cache:
            return 0
        with self._prompts_lock:
            earlier = self._prompts.setdefault(model, [])
            best = 0
            for other in earlier:
                n = 0
                for a, b in zip(tokens, other, strict=False):
                    if a != b:
                        break
                    n += 1
                best = max(best, n)
            earlier.append(tokens)
            return best

    def usage_of(self, model: str, tokens: list[str], reply: Reply) -> dict[str, Any] | None:
        """The usage block for `reply` (None when the server reports no usage)."""
        cached = self.cached_prefix(model, tokens)
        if not self.usage:
            return None
        prompt = len(tokens) if reply.prompt_tokens is None else reply.prompt_tokens
        reasoning = count_tokens(reply.reasoning or "")
        completion = (
            count_tokens(reply.content) + reasoning if reply.completion_tokens is None else reply.completion_tokens
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached if reply.cached_tokens is None else reply.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "api_key": self.api_key,
            "prompt_cache": self.prompt_cache,
            "context_window": self.context_window,
        }


class OpenAICompatProcess(ServerProcess):
    """`OpenAICompatServer` in a child process: ``OpenAICompatProcess("tests.servers:capitalised_entities",
    schedule=...)``; same options, the responder named ``module:attribute``."""

    module = "tests.servers.openai_compat"
    server_class = OpenAICompatServer

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"


openai_server = factory_fixture(
    OpenAICompatServer,
    """``openai_server(respond=None, **options)`` -> a started OpenAICompatServer; all are stopped at teardown.""",
)
openai_process = factory_fixture(
    OpenAICompatProcess,
    """``openai_process("module:responder" | None, **options)`` -> a started OpenAICompatProcess; all are stopped
    at teardown.""",
)

if __name__ == "__main__":
    OpenAICompatServer.main()
