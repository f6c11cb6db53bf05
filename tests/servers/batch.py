"""A loopback OpenAI Batch API server for tests (standard library only; never part of the product).

`BatchServer` is the OpenAI-compatible server of `tests.servers.openai_compat` (same responders, fault schedule,
models, usage, API key and request log; its chat endpoint still answers) with OpenAI's file and batch endpoints:

- ``POST /v1/files`` (multipart: ``purpose`` and ``file``; only purpose ``batch`` is taken), ``GET /v1/files``
  (``purpose``, ``order``, ``limit``, ``after``), ``GET /v1/files/{id}`` and ``GET /v1/files/{id}/content``;
- ``POST /v1/batches`` (``input_file_id``, ``endpoint`` = ``/v1/chat/completions``, ``completion_window`` = ``24h``,
  ``metadata``), ``GET /v1/batches`` (newest first; ``limit``, ``after``) and ``GET /v1/batches/{id}``.

A batch moves on each retrieve: ``validating`` (as created) -> ``in_progress`` (or ``failed`` when its input file
does not validate: not JSONL objects, a duplicate ``custom_id``, another method or url) -> after ``in_progress_polls``
more retrieves, every request line is answered at once and the batch is ``completed``, with an output file (the lines
answered 200) and, when any line failed, an error file (the others). With ``expire_after=N`` only the first N lines
are answered and the batch is ``expired``: the rest are in the error file with code ``batch_expired``.

Each request line is answered as the chat endpoint answers a whole (not streamed) request: the server's model list
(404 ``model_not_found``), its context window, the fault schedule (an error status gives that status' error line;
a transport fault such as ``drop`` a 500 line; content faults as in chat) and the responder; it is logged in the
request log under the path `BATCH_LINE`, with its usage. The HTTP requests are logged under their own paths, so a
test counts uploads with ``[r for r in server.requests(FILES) if r.method == "POST"]``.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers import Fault, LoggedRequest, apply_content_faults, factory_fixture, prompt_tokens_of
from tests.servers.openai_compat import _ERRORS, CHAT, OpenAICompatServer, OpenAIHandler, _flat, context_error

FILES = "/v1/files"
BATCHES = "/v1/batches"
BATCH_LINE = "batch:" + CHAT  # the request-log path of a request line a batch answered
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class StoredFile:
    """One uploaded or generated file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass
class StoredBatch:
    """One batch and where it is."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    lines: list[Any]  # the parsed input lines
    invalid: list[dict[str, Any]]  # validation errors ({code, message, line})
    status: str = "validating"
    polls: int = 0  # retrieves while in progress
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    times: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """OpenAI's batch object."""
        errors = {"object": "list", "data": self.invalid} if self.status == "failed" else None
        stamps = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                  "cancelled_at")
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": errors,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": self.created_at, "expires_at": self.created_at + 86_400,
                **{name: self.times.get(name) for name in stamps},
                "request_counts": dict(self.counts), "metadata": self.metadata}


class BatchHandler(OpenAIHandler):
    """OpenAI's chat, file and batch endpoints."""

    owner: BatchServer  # type: ignore[assignment]

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] == FILES:  # multipart, not JSON
            self.upload()
            return
        super().do_POST()

    def route(self, method: str, path: str, body: Any) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        parts = path.split("/")  # "", "v1", kind, id, extra
        if path == BATCHES and method == "POST":
            self.create_batch(body)
        elif path == BATCHES and method == "GET":
            self.listing(path, self.owner.batch_list(), query)
        elif path.startswith(BATCHES + "/") and method == "GET" and len(parts) == 4:
            self.retrieve_batch(path, parts[3])
        elif path == FILES and method == "GET":
            purpose = query.get("purpose")
            files = [f for f in self.owner.file_list() if purpose is None or f.purpose == purpose]
            if query.get("order") == "asc":
                files.reverse()
            self.listing(path, files, query)
        elif path.startswith(FILES + "/") and method == "GET" and len(parts) in (4, 5):
            self.file(path, parts[3], content=len(parts) == 5 and parts[4] == "content")
        else:
            super().route(method, path, body)

    # ------------------------------------------------------------------ files

    def upload(self) -> None:
        """``POST /v1/files``: store the ``file`` part of a multipart form whose ``purpose`` is ``batch``."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        entry = self.owner.log.open("POST", FILES, None, None, False)
        if not self.authorised(entry):
            return
        fields = _multipart(self.headers.get("Content-Type", ""), raw)
        self.owner.log.close(entry, body={k: v[0] if isinstance(v, tuple) else v for k, v in fields.items()})
        upload = fields.get("file")
        if not isinstance(upload, tuple):
            self.send_error_json(entry, 400, "bad-request", "'file' is a required property")
            return
        if fields.get("purpose") != "batch":
            self.send_error_json(entry, 400, "bad-request", f"purpose {fields.get('purpose')!r}: this server takes "
                                 "only 'batch'")
            return
        stored = self.owner.add_file(upload[0], "batch", upload[1])
        self.record(entry, status=200, outcome="ok")
        self.send_json(200, stored.to_json())
        self.finish_entry(entry)

    def file(self, path: str, file_id: str, content: bool) -> None:
        """``GET /v1/files/{id}`` (the file object) or ``.../content`` (its bytes)."""
        entry = self.owner.log.open("GET", path, None, None, False)
        if not self.authorised(entry):
            return
        stored = self.owner.files.get(file_id)
        if stored is None:
            self.send_error_json(entry, 404, "unknown-file", f"No such File object: {file_id}")
            return
        self.record(entry, status=200, outcome="ok")
        if content:
            self.send_bytes(200, stored.data, "application/octet-stream")
        else:
            self.send_json(200, stored.to_json())
        self.finish_entry(entry)

    def listing(self, path: str, items: list[Any], query: Mapping[str, str]) -> None:
        """A cursor page of `items` (already in the page order): ``after`` an id, at most ``limit``."""
        entry = self.owner.log.open("GET", path, dict(query), None, False)
        if not self.authorised(entry):
            return
        if "after" in query:
            ids = [i.id for i in items]
            items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
        limit = int(query.get("limit") or 20)
        page = items[:limit]
        data = [i.to_json() for i in page]
        self.record(entry, status=200, outcome="ok")
        self.send_json(200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit})
        self.finish_entry(entry)

    # ------------------------------------------------------------------ batches

    def create_batch(self, body: Any) -> None:
        """``POST /v1/batches``: a batch of an uploaded file, validating."""
        entry = self.owner.log.open("POST", BATCHES, body, None, False)
        if not self.authorised(entry):
            return
        body = body if isinstance(body, Mapping) else {}
        source = self.owner.files.get(str(body.get("input_file_id")))
        if source is None or source.purpose != "batch":
            self.send_error_json(entry, 400, "bad-request", f"input_file_id {body.get('input_file_id')!r}: no "
                                 "uploaded file with purpose 'batch'")
            return
        if body.get("endpoint") != CHAT or body.get("completion_window") != "24h":
            self.send_error_json(entry, 400, "bad-request", f"this server runs endpoint {CHAT} with completion "
                                 "window 24h only")
            return
        batch = self.owner.add_batch(source, body.get("metadata"))
        self.record(entry, status=200, outcome="ok")
        self.send_json(200, batch.to_json())
        self.finish_entry(entry)

    def retrieve_batch(self, path: str, batch_id: str) -> None:
        """``GET /v1/batches/{id}``: the batch, one step further along."""
        entry = self.owner.log.open("GET", path, None, None, False)
        if not self.authorised(entry):
            return
        batch = self.owner.batches.get(batch_id)
        if batch is None:
            self.send_error_json(entry, 404, "unknown-batch", f"No such Batch object: {batch_id}")
            return
        self.owner.advance(batch)
        self.record(entry, status=200, outcome=batch.status)
        self.send_json(200, batch.to_json())
        self.finish_entry(entry)


def _multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """The fields of a multipart form: name -> text, or (filename, bytes) for a file part."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    fields: dict[str, Any] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[str(name)] = (filename or "upload", data) if filename is not None else data.decode("utf-8")
    return fields


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind, _, default_code = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", "",
                                                 None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code or default_code}}


class BatchServer(OpenAICompatServer):
    """An OpenAI-compatible server with the Batch API (files and batches) on 127.0.0.1; see the module docstring.

    Options beyond `OpenAICompatServer`'s: ``in_progress_polls`` (retrieves a batch stays ``in_progress``, default
    1) and ``expire_after`` (answer only this many lines of each batch, then expire it)."""

    handler_class = BatchHandler
    name = "batch-loopback"

    def __init__(self, respond: Callable[[Mapping[str, Any]], Any] | None = None, *, in_progress_polls: int = 1,
                 expire_after: int | None = None, **options: Any) -> None:
        super().__init__(respond, **options)
        self.in_progress_polls = in_progress_polls
        self.expire_after = expire_after
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, StoredBatch] = {}
        self._ids = itertools.count(1)
        self._store = threading.RLock()

    def file_list(self) -> list[StoredFile]:
        """Every file, newest first."""
        with self._store:
            return list(reversed(self.files.values()))

    def batch_list(self) -> list[StoredBatch]:
        """Every batch, newest first."""
        with self._store:
            return list(reversed(self.batches.values()))

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        """Store a file under a new id."""
        with self._store:
            stored = StoredFile(f"file-{next(self._ids)}", filename, purpose, data, int(time.time()))
            self.files[stored.id] = stored
            return stored

    def add_batch(self, source: StoredFile, metadata: Any) -> StoredBatch:
        """A new batch of `source`'s request lines, validated now (the result shows on the first retrieve)."""
        lines, invalid, seen = [], [], set()
        for number, text in enumerate(source.data.decode("utf-8", "replace").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                invalid.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                                "line": number})
                continue
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
                invalid.append({"code": "invalid_request", "message": "A request line needs a 'body' object.",
                                "line": number})
                continue
            if line.get("custom_id") in seen:
                invalid.append({"code": "duplicate_custom_id", "message": "The custom_id for this request is a "
                                "duplicate of another request.", "line": number})
            seen.add(line.get("custom_id"))
            if line.get("method") != "POST" or line.get("url") != CHAT:
                invalid.append({"code": "invalid_url", "message": f"method POST and url {CHAT} expected.",
                                "line": number})
            lines.append(line)
        with self._store:
            batch = StoredBatch(f"batch_{next(self._ids)}", source.id, CHAT, "24h",
                                dict(metadata) if isinstance(metadata, Mapping) else None, int(time.time()), lines,
                                invalid)
            batch.counts["total"] = len(lines)
            self.batches[batch.id] = batch
            return batch

    def advance(self, batch: StoredBatch) -> None:
        """One step of a batch's life (a retrieve moves it on)."""
        with self._store:
            now = int(time.time())
            if batch.status == "validating":
                if batch.invalid:
                    batch.status, batch.times["failed_at"] = "failed", now
                    batch.counts["total"] = 0
                else:
                    batch.status, batch.times["in_progress_at"] = "in_progress", now
            elif batch.status == "in_progress":
                batch.polls += 1
                if batch.polls > self.in_progress_polls:
                    self._run(batch, now)

    def _run(self, batch: StoredBatch, now: int) -> None:
        """Answer every request line (the first `expire_after` only, then expire) and write the result files."""
        answered, failed = [], []
        for index, line in enumerate(batch.lines):
            custom_id = line.get("custom_id")
            if self.expire_after is not None and index >= self.expire_after:
                failed.append({"id": f"batch_req_{batch.id}_{index}", "custom_id": custom_id, "response": None,
                               "error": {"code": "batch_expired", "message": "This request could not be executed "
                                         "before the completion window expired."}})
                continue
            status, data = self.complete(line["body"])
            record = {"id": f"batch_req_{batch.id}_{index}", "custom_id": custom_id,
                      "response": {"status_code": status, "request_id": f"req_{batch.id}_{index}", "body": data},
                      "error": None}
            (answered if status == 200 else failed).append(record)
        if answered:
            batch.output_file_id = self._result_file(batch, "output", answered).id
        if failed:
            batch.error_file_id = self._result_file(batch, "error", failed).id
        batch.counts.update(completed=len(answered), failed=len(failed))
        batch.times["finalizing_at"] = now
        if self.expire_after is not None and len(batch.lines) > self.expire_after:
            batch.status, batch.times["expired_at"] = "expired", now
        else:
            batch.status, batch.times["completed_at"] = "completed", now

    def _result_file(self, batch: StoredBatch, kind: str, records: list[dict[str, Any]]) -> StoredFile:
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        return self.add_file(f"{batch.id}_{kind}.jsonl", "batch_output", data)

    def complete(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, body) of one request line, answered as the chat endpoint answers a whole request."""
        model = body.get("model")
        entry = self.log.open("POST", BATCH_LINE, body, model, False)

        def error(status: int, outcome: str, message: str, code: str | None = None) -> tuple[int, dict[str, Any]]:
            self.log.close(entry, status=status, outcome=outcome, elapsed=time.time() - entry.time)
            return status, _error_body(status, message, code)

        if not isinstance(body.get("messages"), list) or not model:
            return error(400, "bad-request", "'model' and 'messages' are required properties")
        if body.get("stream"):
            return error(400, "bad-request", "streaming is not supported in a batch")
        if self.models is not None and model not in self.models:
            return error(404, "unknown-model", f"The model `{model}` does not exist or you do not have access to it.",
                         "model_not_found")
        fault = self.schedule.next(body)
        if fault.status is not None:
            message = _ERRORS.get(fault.status, ("", f"Scripted error {fault.status}.", None))[1]
            return error(fault.status, fault.name, message)
        if not fault.answers:  # drop, silent, drip, cut, bad-json, stream-error: the batch worker's request failed
            return error(500, fault.name, "The server had an error while processing your request.")
        tokens = prompt_tokens_of(body)
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if self.context_window is not None and len(tokens) + (cap or 0) > self.context_window:
            message, code = context_error(self.context_window, len(tokens) + (cap or 0))
            return error(400, "context-length", message, code)
        try:
            reply = self.answer(body)
        except Exception as exc:  # a broken responder is a test bug: say so in a 500
            return error(500, "responder-error", f"responder failed: {type(exc).__name__}: {exc}")
        if isinstance(reply, Fault):
            return error(reply.status or 500, reply.name, f"Scripted error {reply.name}.")
        reply = apply_content_faults(reply, fault.content_faults, cap)
        usage = self.usage_of(model, tokens, reply)
        completion: dict[str, Any] = {
            "id": f"chatcmpl-batch-{entry.index}", "object": "chat.completion", "created": int(entry.time),
            "model": model, "system_fingerprint": "fp_loopback",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content, "refusal": None},
                         "logprobs": None, "finish_reason": reply.finish_reason}],
        }
        if usage is not None:
            completion["usage"] = usage
        self.log.close(entry, status=200, outcome="ok" if fault.name == "ok" else fault.name, usage=_flat(usage),
                       finish_reason=reply.finish_reason, elapsed=time.time() - entry.time)
        return 200, completion

    def batch_lines(self) -> list[LoggedRequest]:
        """The logged request lines batches answered."""
        return self.requests(BATCH_LINE)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "in_progress_polls": self.in_progress_polls, "expire_after": self.expire_after}


batch_server = factory_fixture(
    BatchServer, """``batch_server(respond=None, **options)`` -> a started BatchServer; all are stopped at teardown."""
)
