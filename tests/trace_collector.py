"""A small LangSmith stand-in on loopback: receives real traces from the langsmith client (tests only).

It answers the endpoints the langsmith client uses to send runs (measured on langsmith 0.14):

* ``GET /info``: the server description. No ``instance_flags.zstd_compression_enabled`` is advertised, so
  the client sends plain multipart (compression is also off when ``LANGSMITH_DISABLE_RUN_COMPRESSION=true``).
  gzip and zstd request bodies are still decoded if they arrive (``Content-Encoding``).
* ``POST /runs/multipart``: multipart/form-data whose parts are named ``post.<run_id>`` / ``patch.<run_id>``
  (the run without its large fields) and ``post.<run_id>.inputs``, ``.outputs``, ``.events``, ``.extra``,
  ``.error``, ``.serialized`` (one field each), plus ``attachment.<run_id>.<name>`` (kept raw).
* ``POST /runs/batch``: ``{"post": [run, ...], "patch": [run, ...]}``.
* ``POST /runs``: one run; ``PATCH /runs/{id}``: an update of one run.

Runs are merged by id (a patch updates the posted run) and kept with their parent id, name, run_type, tags,
metadata (``extra.metadata``), inputs, outputs and error. Anything else is answered (``{}`` or 404) and
recorded in ``requests`` so that a test can see what the client tried.

    with TraceCollector() as collector:
        client = langsmith.Client(api_url=collector.url, api_key="test")
        ...
        client.flush()
        root = collector.roots()[0]
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RUN_FIELDS = ("inputs", "outputs", "events", "extra", "error", "serialized")


class Run(dict):
    """One run as merged from its post and patches (a dict, with a few readable accessors)."""

    @property
    def id(self) -> str:
        return str(self["id"])

    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def run_type(self) -> str | None:
        return self.get("run_type")

    @property
    def parent_id(self) -> str | None:
        p = self.get("parent_run_id")
        return str(p) if p else None

    @property
    def tags(self) -> list[str]:
        return list(self.get("tags") or [])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict((self.get("extra") or {}).get("metadata") or {})


class TraceCollector:
    """A threaded HTTP server on 127.0.0.1 (a free port) that stores the runs it receives."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.errors: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                collector._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                collector._handle(self, "POST")

            def do_PATCH(self) -> None:  # noqa: N802
                collector._handle(self, "PATCH")

            def do_PUT(self) -> None:  # noqa: N802
                collector._handle(self, "PUT")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="trace-collector", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TraceCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TraceCollector:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def runs(self) -> list[Run]:
        """All runs, in the order their start times (then ids) give."""
        with self._lock:
            runs = [Run(r) for r in self._runs.values()]
        return sorted(runs, key=lambda r: (str(r.get("dotted_order") or r.get("start_time") or ""), r.id))

    def get(self, run_id: str) -> Run | None:
        with self._lock:
            r = self._runs.get(str(run_id))
            return Run(r) if r is not None else None

    def roots(self) -> list[Run]:
        return [r for r in self.runs() if not r.parent_id]

    def children(self, run_id: str) -> list[Run]:
        return [r for r in self.runs() if r.parent_id == str(run_id)]

    def descendants(self, run_id: str) -> list[Run]:
        out, todo = [], [str(run_id)]
        by_parent: dict[str, list[Run]] = {}
        for r in self.runs():
            by_parent.setdefault(r.parent_id or "", []).append(r)
        while todo:
            for child in by_parent.get(todo.pop(), []):
                out.append(child)
                todo.append(child.id)
        return out

    def ancestors(self, run_id: str) -> list[Run]:
        """Parent first, up to the root."""
        out, run = [], self.get(run_id)
        while run is not None and run.parent_id:
            run = self.get(run.parent_id)
            if run is not None:
                out.append(run)
        return out

    def wait_for(self, predicate: Callable[[TraceCollector], bool], timeout: float = 30.0, interval: float = 0.2) -> bool:
        """Poll until `predicate(self)` holds (traces arrive asynchronously); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate(self):
                    return True
            except Exception:  # noqa: BLE001  (a predicate over a partial tree may fail; keep polling)
                pass
            time.sleep(interval)
        return bool(predicate(self))

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()
            self.requests.clear()
            self.errors.clear()

    # ------------------------------------------------------------------ storage

    def _store(self, op: str, run: dict[str, Any]) -> None:
        run_id = str(run.get("id") or "")
        if not run_id:
            self.errors.append(f"{op} without id: {sorted(run)}")
            return
        with self._lock:
            current = self._runs.setdefault(run_id, {"id": run_id})
            for key, value in run.items():
                if key == "extra" and isinstance(value, dict) and isinstance(current.get("extra"), dict):
                    merged = dict(current["extra"])
                    for k, v in value.items():
                        if k == "metadata" and isinstance(v, dict) and isinstance(merged.get("metadata"), dict):
                            merged["metadata"] = {**merged["metadata"], **v}
                        else:
                            merged[k] = v
                    current["extra"] = merged
                elif value is not None or key not in current:
                    current[key] = value
            for key in ("id", "parent_run_id", "trace_id"):
                if current.get(key) is not None:
                    current[key] = str(current[key])

    # ------------------------------------------------------------------ HTTP

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0].rstrip("/") or "/"
        status, payload = 200, {}
        try:
            body = self._read_body(h)
            if method == "GET" and path.endswith("/info"):
                payload = {"version": "0.0-test-collector", "instance_flags": {}, "batch_ingest_config": {}}
            elif method == "POST" and path.endswith("/runs/multipart"):
                self._ingest_multipart(h.headers.get("Content-Type", ""), body)
            elif method == "POST" and path.endswith("/runs/batch"):
                data = json.loads(body or b"{}")
                for run in data.get("post") or []:
                    self._store("post", run)
                for run in data.get("patch") or []:
                    self._store("patch", run)
            elif method == "POST" and path.endswith("/runs"):
                self._store("post", json.loads(body or b"{}"))
            elif method == "PATCH" and "/runs/" in path:
                run = json.loads(body or b"{}")
                run.setdefault("id", path.rsplit("/", 1)[-1])
                self._store("patch", run)
            elif method == "GET":
                status, payload = 404, {"detail": "not served by the test collector"}
        except Exception as exc:  # noqa: BLE001  (report, never kill the server thread)
            self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            status, payload = 400, {"detail": str(exc)}
        self.requests.append((method, path, status))
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            body = b"".join(chunks)
        else:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        encoding = (h.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "zstd":
            import zstandard  # only if the client compressed anyway

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        return body

    def _ingest_multipart(self, content_type: str, body: bytes) -> None:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise ValueError(f"not a multipart body: {content_type}")
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        order: list[tuple[str, str]] = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            pieces = name.split(".")
            if pieces[0] == "attachment":
                continue
            op, run_id, field = pieces[0], pieces[1], (pieces[2] if len(pieces) > 2 else None)
            key = (op, run_id)
            if key not in runs:
                runs[key] = {"id": run_id}
                order.append(key)
            value = json.loads(payload) if payload else None
            if field is None:
                runs[key].update(value or {})
            elif field in _RUN_FIELDS:
                runs[key][field] = value
        for key in order:  # posts before patches of the same run, whatever the part order
            if key[0] == "post":
                self._store("post", runs[key])
        for key in order:
            if key[0] == "patch":
                self._store("patch", runs[key])
