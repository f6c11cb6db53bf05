"""Loopback model servers for tests (never part of the product): the parts both protocols share.

Two servers speak real model-server protocols on 127.0.0.1, so that the model-call layer can be tested end to end
with the real client libraries, faults included:

- `tests.servers.openai_compat`: an OpenAI-compatible server (`/v1/models`, `/v1/chat/completions`).
- `tests.servers.ollama`: an Ollama server (`/api/chat`, `/api/tags`, `/api/show`, `/api/version`).

Each runs in a background thread of the test process (`OpenAICompatServer`, `OllamaServer`; context managers) or
in a child process (`OpenAICompatProcess`, `OllamaProcess`: for speed benchmarks and kill tests). Pytest fixtures:
`openai_server`, `openai_process`, `ollama_server`, `ollama_process` (factories; every server they start is stopped
at teardown). Load them with ``pytest_plugins = ["tests.servers.openai_compat", "tests.servers.ollama"]`` in the
root conftest, or by naming them in a test module (``openai_server = openai_compat.openai_server``).

What a server answers
    A responder ``respond(body) -> reply`` gets the request's parsed JSON body. The reply is a `Reply`, a string
    (the message content), a dict or list (sent as its JSON text) or a `Fault` (that fault for this request).
    `empty_entities` (the default) answers ``{"entities": []}``; `capitalised_entities` (or
    `capitalised_responder(offset)`) finds the capitalised words of an annotation prompt's document, and answers
    any other structured request with the smallest instance of its JSON schema (`minimal_instance`).

Fault schedule
    Each generation request that passes the server's own checks (API key, known model) takes the next fault of
    the server's `schedule` before the responder is called; the model-listing endpoint has its own `list_schedule`:

    - ``schedule="500, 429:1"`` or ``["500", "429:1"]``: in order, then ``ok`` for every later request
      (`FaultSchedule.sequence_of(*faults, then="ok", cycle=False, per_body=False)`).
    - ``FaultSchedule.chance({"500": 0.2, "drop": 0.1}, seed=7)``: by seeded chance, the rest ``ok``.
    - ``per_body=True`` keys either schedule by the request body: every distinct request runs through the schedule
      on its own (its first attempt takes the first fault, its retry the second), so concurrent requests get the
      same faults in any arrival order.

    Faults (`Fault.parse`): ``ok``; an HTTP status ``500``, ``503``, ``401``, ``404`` (model not found), ``400``
    (context length exceeded), ``429[:N]`` (with ``Retry-After: N``, default 1), or any other 3-digit status, each
    with the protocol's error body; ``drop`` (close the connection without answering); ``silent`` (never answer;
    the connection stays open until the client gives up or the server stops); ``drip[:K]`` (send the status line
    and headers, then one byte every K seconds, default 0.2, never finishing: a per-read timeout longer than K
    never fires, only an overall deadline ends the call); ``cut`` (send half the answer, then close); ``slow:N``
    (answer after N seconds); ``bad-json`` (a 200 whose body is not JSON); ``stream-error`` (half a stream, then
    the protocol's error event or line; a 500 when not streaming); and the content faults, combinable with ``+``
    (``think+fence``): ``think`` (the content preceded by a ``<think>...</think>`` block), ``fence`` (in a
    ```` ```json ```` code fence), ``prose`` (trailing prose), ``preamble`` (leading prose), ``length`` (cut to half
    its tokens, finish reason ``length``). Independently of faults, an answer longer than the request's token cap
    is cut at the cap with finish reason ``length``.

Request log
    `server.log` is the thread-safe `RequestLog` of every request, failed ones included (`server.requests(path)` and
    `server.chat_requests()` give snapshots): `LoggedRequest` records with the time, method, path, model, parsed
    body, stream flag, HTTP status sent (None when none was), outcome (``ok``, the fault's name, or
    ``unknown-model``, ``unauthorised``, ``bad-request``, ``context-length``, ``no-thinking``, ``unknown-path``,
    ``responder-error``), the usage the client was sent (``{"prompt_tokens", "completion_tokens",
    "total_tokens", "cached_tokens"}``; None when the client got none), the finish reason and the elapsed time.
    The outcome is recorded before the answer leaves, so a client holding an answer finds it logged. Tokens are
    counted by `count_tokens` (words and punctuation marks), deterministically; `usage_totals` sums a log's usage.
    `server.peak_concurrency` is the most generation requests served at once; `server.errors` holds the server's
    own failures (the fixtures fail the test on any); `server.live_threads()` is empty once the server stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LOG_PATH = "/_log"  # the control endpoint a child-process server serves its request log on (never logged)

# ---------------------------------------------------------------------------------------------------- tokens

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The servers' token count of `text`: its words and punctuation marks."""
    return len(_TOKEN.findall(text))


def cut_to_tokens(text: str, limit: int) -> str:
    """The beginning of `text` holding its first `limit` tokens."""
    if limit <= 0:
        return ""
    for i, match in enumerate(_TOKEN.finditer(text)):
        if i == limit - 1:
            return text[: match.end()]
    return text


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message (a string, or OpenAI's list of content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def prompt_tokens_of(body: Mapping[str, Any]) -> list[str]:
    """The tokens of every message of a chat request, in order."""
    return [t for m in body.get("messages") or [] if isinstance(m, Mapping) for t in _TOKEN.findall(message_text(m))]


# ---------------------------------------------------------------------------------------------------- replies


@dataclass
class Reply:
    """A responder's answer: the content, optionally reasoning text, a finish reason and token counts that
    replace the server's own counts."""

    content: str
    reasoning: str | None = None
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


CONTENT_FAULTS = ("think", "fence", "prose", "preamble", "length")
_STATUS = re.compile(r"^[1-5]\d\d$")
_KINDS = ("ok", "drop", "silent", "drip", "cut", "slow", "bad-json", "stream-error")
DEFAULT_DRIP_INTERVAL = 0.2
DEFAULT_RETRY_AFTER = 1.0
THINKING = "The user wants the named entities. Let me read the document."


@dataclass(frozen=True)
class Fault:
    """One request's scripted behaviour: a name (see the package docstring) and an optional number."""

    name: str = "ok"
    arg: float | None = None

    @classmethod
    def parse(cls, text: str | Fault) -> Fault:
        """``"429:2"`` -> Fault("429", 2.0); raises ValueError for an unknown fault."""
        if isinstance(text, Fault):
            return text
        name, _, arg = text.strip().partition(":")
        name = name.strip().lower()
        parts = name.split("+")
        known = name in _KINDS or _STATUS.match(name) or all(p in CONTENT_FAULTS for p in parts)
        if not known:
            raise ValueError(f"unknown fault {text!r}")
        return cls(name, float(arg) if arg.strip() else None)

    @property
    def status(self) -> int | None:
        """The HTTP status of an error fault, else None."""
        return int(self.name) if _STATUS.match(self.name) else None

    @property
    def content_faults(self) -> tuple[str, ...]:
        """The content faults this fault applies to a successful answer (empty for any other fault)."""
        parts = tuple(self.name.split("+"))
        return parts if all(p in CONTENT_FAULTS for p in parts) else ()

    @property
    def answers(self) -> bool:
        """Whether the request is answered normally (``ok``, ``slow`` or a content fault)."""
        return self.name in ("ok", "slow") or bool(self.content_faults)

    def __str__(self) -> str:
        if self.arg is None:
            return self.name
        return f"{self.name}:{int(self.arg) if self.arg == int(self.arg) else self.arg}"


OK = Fault()


def apply_content_faults(reply: Reply, faults: Sequence[str], token_cap: int | None) -> Reply:
    """`reply` with the content faults applied (fence, prose and preamble in order, the thinking block always
    first), then cut at `token_cap` tokens (finish reason ``length``) when its content is longer; ``length`` cuts
    it even without a cap (to half its tokens)."""
    content, finish = reply.content, reply.finish_reason
    for fault in faults:
        if fault == "fence":
            content = f"```json\n{content}\n```"
        elif fault == "prose":
            content = f"{content}\n\nThese are all the entities I found in the document."
        elif fault == "preamble":
            content = f"Here is the annotation you asked for:\n{content}"
    if "think" in faults:
        content = f"<think>\n{reply.reasoning or THINKING}\n</think>\n{content}"
    cap = token_cap
    if "length" in faults and (cap is None or count_tokens(content) <= cap):
        cap = max(1, count_tokens(content) // 2)
    if cap is not None and count_tokens(content) > cap:
        content, finish = cut_to_tokens(content, cap), "length"
    return dataclasses.replace(reply, content=content, finish_reason=finish)


def as_reply(answer: Any) -> Reply | Fault:
    """A responder's answer (Reply, Fault, str, Pydantic model or JSON value) as a Reply or the Fault it asks for."""
    if isinstance(answer, (Reply, Fault)):
        return answer
    if isinstance(answer, str):
        return Reply(answer)
    if hasattr(answer, "model_dump_json"):  # a Pydantic model
        return Reply(answer.model_dump_json())
    return Reply(json.dumps(answer))


# ---------------------------------------------------------------------------------------------------- schedules


@dataclass
class FaultSchedule:
    """Which fault each request gets: `sequence` in order (cycled, or followed by `then`), else drawn from
    `weights` with `seed`; with `per_body`, each distinct request body runs through the schedule on its own."""

    sequence: tuple[Fault, ...] = ()
    then: Fault = OK
    cycle: bool = False
    weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    per_body: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _count: int = field(default=0, repr=False, compare=False)
    _per_body: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sequence = tuple(Fault.parse(f) for f in self.sequence)
        self.then = Fault.parse(self.then)
        for name in self.weights:
            Fault.parse(name)
        if sum(self.weights.values()) > 1 + 1e-9:
            raise ValueError(f"fault chances add up to more than 1: {self.weights}")
        if self.cycle and not self.sequence:
            raise ValueError("a cycled schedule needs a sequence")

    @classmethod
    def sequence_of(
        cls, *faults: str | Fault, then: str | Fault = "ok", cycle: bool = False, per_body: bool = False
    ) -> FaultSchedule:
        """Faults in order, then `then` for every later request (or the sequence again, with `cycle`)."""
        return cls(
            sequence=tuple(Fault.parse(f) for f in faults), then=Fault.parse(then), cycle=cycle, per_body=per_body
        )

    @classmethod
    def chance(cls, weights: Mapping[str, float], seed: int = 0, per_body: bool = False) -> FaultSchedule:
        """Each request draws a fault with these chances (``ok`` for the rest), from a generator seeded by `seed`."""
        return cls(weights=dict(weights), seed=seed, per_body=per_body)

    @classmethod
    def of(cls, schedule: Any) -> FaultSchedule:
        """A schedule from a FaultSchedule, a comma-separated string, a sequence of faults or None (always ok)."""
        if schedule is None:
            return cls()
        if isinstance(schedule, FaultSchedule):
            return schedule
        if isinstance(schedule, str):
            schedule = [s for s in schedule.split(",") if s.strip()]
        return cls.sequence_of(*schedule)

    def next(self, body: Any = None) -> Fault:
        """The fault for the next request (thread-safe)."""
        with self._lock:
            if self.per_body:
                key = hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
                n = self._per_body.get(key, 0)
                self._per_body[key] = n + 1
            else:
                key, n = "", self._count
                self._count += 1
        if n < len(self.sequence) or (self.cycle and self.sequence):
            return self.sequence[n % len(self.sequence)]
        if self.weights:
            draw = random.Random(f"{self.seed}:{key}:{n}").random()
            for name, weight in self.weights.items():
                if draw < weight:
                    return Fault.parse(name)
                draw -= weight
            return OK
        return self.then

    def to_json(self) -> dict[str, Any]:
        """The schedule as plain JSON (what a child-process server is started with)."""
        return {
            "sequence": [str(f) for f in self.sequence],
            "then": str(self.then),
            "cycle": self.cycle,
            "weights": self.weights,
            "seed": self.seed,
            "per_body": self.per_body,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultSchedule:
        """The inverse of `to_json`."""
        return cls(**data)


# ---------------------------------------------------------------------------------------------------- request log


@dataclass
class LoggedRequest:
    """One request as the server saw and answered it."""

    index: int
    time: float  # time.time() when the request was read
    method: str
    path: str
    model: str | None
    body: Any  # the parsed JSON body (None for a GET or a body that is not JSON)
    stream: bool
    status: int | None = None  # the HTTP status sent; None when no status line was sent (drop, silent)
    outcome: str = "pending"
    usage: dict[str, int] | None = None  # the usage sent to the client; None when it got none
    finish_reason: str | None = None  # of an answer that was sent ("stop", "length")
    elapsed: float | None = None  # seconds from reading the request to finishing the answer

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON."""
        return dataclasses.asdict(self)


class RequestLog:
    """The thread-safe list of every request a server received, failed ones included (with `keep` False none is
    kept: a long benchmark's server would hold every request body)."""

    def __init__(self, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self._entries: list[LoggedRequest] = []
        self._keep = keep
        self._count = 0

    def open(self, method: str, path: str, body: Any, model: str | None, stream: bool) -> LoggedRequest:
        """Record a request as it arrives."""
        with self._lock:
            entry = LoggedRequest(self._count, time.time(), method, path, model, body, stream)
            self._count += 1
            if self._keep:
                self._entries.append(entry)
            return entry

    def close(self, entry: LoggedRequest, **changes: Any) -> None:
        """Fill in how a request was answered."""
        with self._lock:
            for name, value in changes.items():
                setattr(entry, name, value)

    def entries(self, path: str | None = None) -> list[LoggedRequest]:
        """A snapshot of the records (copies), optionally of one path only."""
        with self._lock:
            return [dataclasses.replace(e) for e in self._entries if path is None or e.path == path]

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._entries.clear()
            self._count = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[LoggedRequest]:
        return iter(self.entries())


def usage_totals(entries: Sequence[LoggedRequest]) -> dict[str, int]:
    """The usage the records report, summed, with the number of requests that reported one (``calls``)."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0, "calls": 0}
    for entry in entries:
        if entry.usage is not None:
            for name, value in entry.usage.items():
                totals[name] = totals.get(name, 0) + value
            totals["calls"] += 1
    return totals


# ---------------------------------------------------------------------------------------------------- responders

CAPITALISED = r"\b[A-Z][a-z]+\b"


def prompt_of(body: Mapping[str, Any]) -> str:
    """The text of a chat request's user messages, joined."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, Mapping)]
    return "\n".join(message_text(m) for m in messages if m.get("role", "user") == "user")


def schema_of(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks the answer to follow: OpenAI's ``response_format`` (json_schema), Ollama's
    ``format``, or the parameters of its tool; None when it gives none."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    fmt = body.get("format")
    if isinstance(fmt, Mapping):
        return dict(fmt)
    for tool in body.get("tools") or []:  # a forced tool call: its parameters are the answer's schema
        parameters = (tool.get("function") or {}).get("parameters") if isinstance(tool, Mapping) else None
        if isinstance(parameters, Mapping):
            return dict(parameters)
    return None


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while isinstance(schema, Mapping) and "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def minimal_instance(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, every_property: bool = False
) -> Any:
    """The smallest value that validates against `schema` (required properties only, or with `every_property` all of
    them; shortest arrays, first enum member, strings of "x")."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [_resolve(o, root) for o in schema[key]]
            usable = [o for o in options if o.get("type") != "null"] or options
            return minimal_instance(usable[0], root, every_property)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return minimal_instance(merged, root, every_property)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        names = list(props) if every_property else schema.get("required") or []
        return {name: minimal_instance(props.get(name, {}), root, every_property) for name in names}
    if kind == "array":
        return [minimal_instance(schema.get("items") or {}, root, every_property)
                for _ in range(int(schema.get("minItems", 0)))]
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(0, low + (1 if "exclusiveMinimum" in schema else 0))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


def _entity_item(schema: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, int | None]:
    """The schema of one entity and the entity list's maxItems, when `schema` asks for {"entities": [...]}."""
    top = _resolve(schema, schema)
    entities = (top.get("properties") or {}).get("entities")
    if entities is None:
        return None, None
    entities = _resolve(entities, schema)
    return _resolve(entities.get("items") or {}, schema), entities.get("maxItems")


def _types_in_prompt(prompt: str) -> list[str]:
    section = prompt.split("### Entity types", 1)[1] if "### Entity types" in prompt else ""
    section = section.split("\n###", 1)[0]
    return re.findall(r"^- ([^:\s]+):", section, flags=re.MULTILINE)


def document_in(prompt: str) -> str:
    """The fenced document of an annotation prompt (`<document>` ... `</document>`), else the whole prompt."""
    if "<document>\n" in prompt:
        return prompt.split("<document>\n", 1)[1].split("\n</document>", 1)[0]
    return prompt


def capitalised_responder(
    offset: int = 0, pattern: str = CAPITALISED, every_property: bool = False
) -> Callable[[Mapping[str, Any]], Any]:
    """A deterministic responder: an annotation request is answered with every word of its document matching
    `pattern`, typed in turn with the task's types (the schema's enum, else the prompt's type list), starting
    `offset` types along; any other request gets `minimal_instance` of its schema (``{"entities": []}`` without;
    `every_property`: the answer does not depend on which properties the schema marks required)."""

    def respond(body: Mapping[str, Any]) -> Any:
        schema = schema_of(body)
        prompt = prompt_of(body)
        item, max_items = _entity_item(schema) if schema is not None else (None, None)
        if schema is not None and item is None:
            return minimal_instance(schema, every_property=every_property)
        if schema is None and "<document>" not in prompt:
            return {"entities": []}
        types: list[str] = []
        if item is not None:
            type_schema = _resolve((item.get("properties") or {}).get("type") or {}, schema or {})
            types = [str(t) for t in type_schema.get("enum") or []]
        types = types or _types_in_prompt(prompt) or ["MISC"]
        words = re.findall(pattern, document_in(prompt))
        entities = [{"text": w, "type": types[(i + offset) % len(types)]} for i, w in enumerate(words)]
        return {"entities": entities[:max_items] if max_items is not None else entities}

    return respond


capitalised_entities = capitalised_responder()


def empty_entities(body: Mapping[str, Any]) -> Any:
    """The default responder: no entities."""
    return {"entities": []}


def load_responder(dotted: str | None) -> Callable[[Mapping[str, Any]], Any]:
    """A responder named ``module:attribute`` (empty_entities for None)."""
    if not dotted:
        return empty_entities
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------------- HTTP server


_SERVER_IDS = itertools.count(1)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connection threads are named, tracked and closed on stop."""

    daemon_threads = True

    def __init__(self, owner: LoopbackServer, port: int) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.track = threading.Lock()
        super().__init__((HOST, port), owner.handler_class)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{self.owner.label}-conn",
            daemon=True,
        )
        with self.track:
            self.connections.add(request)
            self.threads = {t for t in self.threads if t.is_alive()}
            self.threads.add(thread)
        thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is no error; anything else is kept in `owner.errors` and printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError) or (
            isinstance(exc, (OSError, ValueError)) and self.owner.stopping.is_set()
        ):
            return
        self.owner.errors.append(traceback.format_exc())
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.track:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.track:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackHandler(BaseHTTPRequestHandler):
    """The HTTP mechanics both protocols share: JSON and streamed answers, and the transport faults."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    @property
    def owner(self) -> LoopbackServer:
        return self.server.owner

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path == LOG_PATH:
            if method == "POST":
                self.owner.log.clear()
            self.send_json(200, [e.to_json() for e in self.owner.log.entries()])
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
            if method == "POST":
                entry = self.owner.log.open(method, path, raw.decode("utf-8", "replace"), None, False)
                self.send_error_json(entry, 400, "bad-request", "the request body is not JSON")
                return
        try:
            self.route(method, path, body)
        except (BrokenPipeError, ConnectionResetError):  # the client left while the server was answering
            self.close_connection = True

    def route(self, method: str, path: str, body: Any) -> None:
        """Answer one request (each protocol implements it)."""
        raise NotImplementedError

    def send_error_json(
        self, entry: LoggedRequest, status: int, outcome: str, message: str, code: str | None = None
    ) -> None:
        """Answer with the protocol's error body (`error_body`) and record it."""
        self.record(entry, status=status, outcome=outcome)
        self.send_json(status, self.error_body(status, message, code))
        self.finish_entry(entry)

    def error_body(self, status: int, message: str, code: str | None = None) -> Any:
        """The protocol's JSON error body."""
        return {"error": message}

    def record(self, entry: LoggedRequest, **changes: Any) -> None:
        """Record how the request is answered (before the answer leaves, so a client that has it sees it logged)."""
        self.owner.log.close(entry, **changes)

    def finish_entry(self, entry: LoggedRequest, **changes: Any) -> None:
        """Record that the answer is over (its `elapsed` time)."""
        self.owner.log.close(entry, elapsed=time.time() - entry.time, **changes)

    # ------------------------------------------------------------------ writing answers

    def send_json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        """A complete JSON answer."""
        self.send_bytes(status, json.dumps(data).encode(), "application/json", headers)

    def send_bytes(
        self, status: int, payload: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """A complete answer of `payload`."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def start_chunked(self, status: int, content_type: str) -> None:
        """The status line and headers of a streamed (chunked) answer."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a streamed answer."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        """The end of a streamed answer."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_cut(self, status: int, payload: bytes, content_type: str) -> None:
        """Announce `payload`, send its first half and close the connection."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True

    def drop(self) -> None:
        """Close the connection without answering."""
        self.close_connection = True

    def stay_silent(self) -> None:
        """Never answer: wait until the client closes the connection or the server stops."""
        self.close_connection = True
        while not self.owner.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return  # the client closed the connection
                except OSError:
                    return
                time.sleep(0.05)

    def drip(self, content_type: str, prefix: bytes, filler: bytes, interval: float) -> None:
        """Send the status line and headers, then one byte every `interval` seconds until the client or the
        server gives up."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(prefix)
            self.wfile.flush()
            while not self.owner.stopping.wait(interval):
                self.wfile.write(filler)
                self.wfile.flush()
        except OSError:
            return

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (cut short when the server stops)."""
        self.owner.stopping.wait(seconds)

    # ------------------------------------------------------------------ faults

    def fault_error(self, fault: Fault, body: Any) -> tuple[Any, dict[str, str]]:
        """The JSON body and extra headers of an error fault (each protocol words its own errors)."""
        return self.error_body(fault.status or 500, f"scripted error {fault.name}"), self.retry_after(fault)

    @staticmethod
    def retry_after(fault: Fault) -> dict[str, str]:
        """``Retry-After: N`` for a 429 (N from the fault, default 1 second); no header otherwise."""
        if fault.status != 429:
            return {}
        seconds = DEFAULT_RETRY_AFTER if fault.arg is None else fault.arg
        return {"Retry-After": str(int(seconds) if seconds == int(seconds) else seconds)}

    def bad_json(self, stream: bool) -> tuple[bytes, str]:
        """A 200 body that does not parse, and its content type."""
        return b'{"model": "loopback", "message": {"content": "', "application/json"

    def responder_reply(self, entry: LoggedRequest, fault: Fault, body: Any, stream: bool) -> tuple[Reply, Fault] | None:
        """The responder's reply and the fault that applies to it (the schedule's, or one the responder returned);
        None when the request is done already (a broken responder's 500, or the returned fault's transport fault)."""
        try:
            reply = self.owner.answer(body)
        except Exception as exc:  # a broken responder is a test bug: say so in a 500
            self.send_error_json(entry, 500, "responder-error", f"responder failed: {type(exc).__name__}: {exc}")
            return None
        if isinstance(reply, Fault):
            fault = reply
            if self.transport_fault(entry, fault, body, stream):
                return None
            reply = Reply("")  # a returned fault that lets the answer go on (``slow``, a content fault) answers ""
        return reply, fault

    def transport_fault(self, entry: LoggedRequest, fault: Fault, body: Any, stream: bool) -> bool:
        """Carry out a fault that replaces the answer (an error status, drop, silent, drip, bad JSON) and record
        it; True when the request is done. ``slow`` waits, then lets the answer go on (False)."""
        if fault.status is not None:
            data, headers = self.fault_error(fault, body)
            self.record(entry, status=fault.status, outcome=fault.name)
            self.send_json(fault.status, data, headers)
            self.finish_entry(entry)
            return True
        if fault.name == "drop":
            self.record(entry, outcome="drop")
            self.drop()
            self.finish_entry(entry)
            return True
        if fault.name == "silent":
            self.record(entry, outcome="silent")
            self.stay_silent()
            self.finish_entry(entry)
            return True
        if fault.name == "drip":
            self.record(entry, status=200, outcome="drip")
            interval = DEFAULT_DRIP_INTERVAL if fault.arg is None else fault.arg
            if stream:
                self.drip("text/event-stream", b": ", b" ", interval)
            else:
                self.drip("application/json", b"{", b" ", interval)
            self.finish_entry(entry)
            return True
        if fault.name == "bad-json":
            payload, content_type = self.bad_json(stream)
            self.record(entry, status=200, outcome="bad-json")
            self.send_bytes(200, payload, content_type)
            self.finish_entry(entry)
            return True
        if fault.name == "slow":
            self.sleep(1.0 if fault.arg is None else fault.arg)
        return False


class LoopbackServer:
    """A protocol server on 127.0.0.1 (a free port), run by a background thread: ``with Server(...) as s:``."""

    handler_class: ClassVar[type[LoopbackHandler]] = LoopbackHandler
    name: ClassVar[str] = "loopback"
    chat_path: ClassVar[str] = ""  # the protocol's generation endpoint

    def __init__(
        self,
        respond: Callable[[Mapping[str, Any]], Any] | None = None,
        *,
        schedule: Any = None,
        list_schedule: Any = None,
        models: Sequence[str] | None = None,
        usage: bool = True,
        chunk_chars: int = 8,
        latency: float = 0.0,
        port: int = 0,
        keep_log: bool = True,
    ) -> None:
        self.respond = respond or empty_entities
        self.schedule = FaultSchedule.of(schedule)
        self.list_schedule = FaultSchedule.of(list_schedule)
        self.models = tuple(models) if models is not None else None
        self.usage = usage
        self.chunk_chars = max(1, chunk_chars)
        self.latency = latency
        self.keep_log = keep_log
        self.log = RequestLog(keep_log)
        self.stopping = threading.Event()
        self.label = f"{self.name}-{next(_SERVER_IDS)}"  # names this server's threads
        self.errors: list[str] = []  # tracebacks of the server's own failures (none expected)
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self.peak_concurrency = 0
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and serve from a background thread."""
        self.stopping.clear()
        self._httpd = _HTTPServer(self, self._port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{self.label}-serve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every open connection (silent and dripping ones included) and join the threads."""
        if self._httpd is None:
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._httpd.track:
            threads = list(self._httpd.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    def live_threads(self) -> list[threading.Thread]:
        """The server's threads still alive (none after `stop`)."""
        return [t for t in threading.enumerate() if t.name in (f"{self.label}-conn", f"{self.label}-serve")]

    # ------------------------------------------------------------------ shared behaviour

    def requests(self, path: str | None = None) -> list[LoggedRequest]:
        """A snapshot of the request log, optionally of one path."""
        return self.log.entries(path)

    def chat_requests(self) -> list[LoggedRequest]:
        """The logged generation requests (`chat_path`)."""
        return self.requests(self.chat_path)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a generation request as running (for `peak_concurrency`)."""
        with self._count_lock:
            self._in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self._in_flight)
        try:
            yield
        finally:
            with self._count_lock:
                self._in_flight -= 1

    def answer(self, body: Mapping[str, Any]) -> Reply | Fault:
        """The responder's reply to `body` (or the fault it asks for)."""
        return as_reply(self.respond(body))

    # ------------------------------------------------------------------ child process

    def config(self) -> dict[str, Any]:
        """The options a child-process server of this kind is started with (the responder aside)."""
        return {
            "schedule": self.schedule.to_json(),
            "list_schedule": self.list_schedule.to_json(),
            "models": list(self.models) if self.models is not None else None,
            "usage": self.usage,
            "chunk_chars": self.chunk_chars,
            "latency": self.latency,
            "keep_log": self.keep_log,
        }

    @classmethod
    def from_config(cls, respond: Callable[[Mapping[str, Any]], Any], config: Mapping[str, Any]) -> LoopbackServer:
        """A server built from `config` (the JSON of `config()`)."""
        options = dict(config)
        for key in ("schedule", "list_schedule"):
            if isinstance(options.get(key), Mapping):
                options[key] = FaultSchedule.from_json(options[key])
        return cls(respond, **options)

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> None:
        """Run as a child process: ``python -m <module> --config JSON --respond module:attr``; prints
        ``LISTENING <url>`` once it serves, and stops on SIGTERM."""
        parser = argparse.ArgumentParser(description=f"loopback {cls.name} server for tests")
        parser.add_argument("--config", default="{}", help="JSON of the server's options")
        parser.add_argument("--respond", default=None, help="the responder, as module:attribute")
        parser.add_argument("--port", type=int, default=0)
        args = parser.parse_args(argv)
        config = json.loads(args.config)
        server = cls.from_config(load_responder(args.respond), {**config, "port": args.port})
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        with server:
            print(f"LISTENING {server.url}", flush=True)
            while not done.wait(0.5):
                pass


class ServerProcess:
    """A loopback server in a child process (``python -m <module>``), with the same request log fetched over
    HTTP; `kill` ends it abruptly (SIGKILL), as a crashed server."""

    module: ClassVar[str] = ""
    server_class: ClassVar[type[LoopbackServer]] = LoopbackServer

    def __init__(self, respond: str | None = None, **options: Any) -> None:
        self.respond = respond
        self.options = options
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> Self:
        """Start the child and wait until it listens."""
        config = self.server_class(**self.options).config()
        cmd = [sys.executable, "-m", self.module, "--config", json.dumps(config)]
        if self.respond:
            cmd += ["--respond", self.respond]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING "):
            self.kill()
            raise RuntimeError(f"{self.module} did not start within {timeout} s (said {line!r})")
        self.url = line.split()[1]
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _control(self, method: str) -> list[dict[str, Any]]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.url + LOG_PATH, method=method, data=b"" if method == "POST" else None)
        with opener.open(request, timeout=300) as answer:  # a long log of long bodies takes a while
            return json.loads(answer.read())

    def requests(self, path: str | None = None) -> list[LoggedRequest]:
        """The child's request log (fetched over HTTP), optionally of one path."""
        entries = [LoggedRequest(**e) for e in self._control("GET")]
        return [e for e in entries if path is None or e.path == path]

    def chat_requests(self) -> list[LoggedRequest]:
        """The child's logged generation requests."""
        return self.requests(self.server_class.chat_path)

    def clear_log(self) -> None:
        """Forget the child's request log."""
        self._control("POST")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after `timeout`)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close()

    def kill(self) -> None:
        """End the child at once (SIGKILL): open connections drop as if the server crashed."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close()

    def _close(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def factory_fixture(make: Callable[..., Any], doc: str) -> Any:
    """A pytest fixture yielding ``start(*args, **options)`` for `make` (see `server_factory`)."""

    def fixture() -> Iterator[Callable[..., Any]]:
        yield from server_factory(make)

    fixture.__doc__ = doc
    return pytest.fixture(fixture)


def server_factory(make: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """The body of a factory fixture: yields ``start(*args, **options)``, stops everything it started and fails
    the test when a server failed itself (`LoopbackServer.errors`)."""
    started: list[Any] = []

    def start(*args: Any, **options: Any) -> Any:
        server = make(*args, **options).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()
    failures = [e for server in started for e in getattr(server, "errors", [])]
    assert not failures, "a loopback server failed:\n" + "\n".join(failures)
