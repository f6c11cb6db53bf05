"""Annotating a corpus through the OpenAI Batch API (`diziner annotate --backend openai-batch`).

OpenAI answers a batch of chat-completion requests within 24 hours at half the price of the same requests sent one
by one. `BatchAnnotation` applies one annotator configuration to a corpus that way, in steps:

1. ``prepare``: every document (every chunk of a long one) becomes the request the synchronous path would send for
   it: the annotator prompt (`agents.annotator.fit_annotator_prompt`) as one user message, with the same model
   parameters and output mode (`request_body`). A request the persistent call cache (`agents.cache`) already
   answers is not sent, nor a second copy of a request already in the batch (same prompt, same answer). The
   requests are written as Batch JSONL lines ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
   "body"}``, whose ``custom_id`` is the stable request id of the ledger (`annotation.ledger.request_id`: document id,
   chunk, model, configuration hash); at most 50,000 requests or 190 MB per batch (OpenAI's limits are 50,000 and
   200 MB), so a large corpus makes several batches.
2. ``upload``: before the first upload, the key (a missing one is an InputError, as for every model call) and the
   model (the server's model list must hold it: InputError otherwise; a refused key is an InputError too); then
   each file with purpose ``batch``.
3. ``create``: one batch per file (``completion_window`` 24h), tagged in its metadata.
4. ``poll``: every ``poll_interval`` seconds until each batch has ended (completed, expired, cancelled or failed),
   with a progress line (status, requests done and failed) whenever it changes, and at least every 10 minutes.
5. ``download``: the output and error files; each answer goes into the call cache under the key the synchronous
   path uses (`agents.cache.cache_key` of the same model, schema, mode and message), so a later synchronous run of
   the same documents sends nothing.
6. ``results``: every document in input order, parsed and grounded as the annotator does (`agents.replies`,
   `corpus.tokens.ground`), chunks merged (`annotation.chunks`), entity types written back as the dataset's labels.
   `run` writes them as the local backend does: the predictions (`annotation.exports`: JSONL by default, or any
   of its formats) and, for the documents that failed, ``<out>.failures.jsonl`` ({"id", "reason", "error", "raw"}).
   A rerun once everything is downloaded sends nothing and writes the same files.

Resumable at every step. ``<out>.batch.json`` (the state) records, for each batch, its request file, the uploaded
file's id, the batch id and how far it got, and is written (atomically) before and after every remote step; the
request files, the downloaded answers and a small SQLite index of them live in ``<out>.batch/``. A rerun after a
kill continues from the state: it polls the batch already created instead of paying again. The two moments a kill
could lose an id (after an upload or a batch creation was sent, before its id was saved) are recorded as
"uploading" / "creating", and a rerun first looks for that file (by its unique name) or that batch (by its input
file) on the server before sending anything again. A state written for another model, configuration or input is
refused (delete it, and ``<out>.batch/``, to start again).

What a batch cannot do as the synchronous path does: an answer that does not fit the schema is not asked again (the
synchronous path re-asks once, quoting the validation error): the document fails with the reason, and a
synchronous retry of the failed documents asks again. Usage comes from each answer's ``usage`` block (estimated
from text length when it has none); every request line the server ran counts as a call, an expired one that never
ran does not. Cost: `batch_cost_usd`, the model's price (`agents.models.prices`) times `BATCH_DISCOUNT` (0.5, the
Batch API's discount on input and output tokens).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.annotator import fit_annotator_prompt, schema_for
from agents.cache import CachedReply, CallCache, cache_key, chat_messages
from agents.models.clients import endpoint, openai_key
from agents.models.errors import ModelUnavailable, classify, status_kind
from agents.models.prices import ModelPrice, cost_usd
from agents.models.spec import ModelSpec
from agents.models.usage import read_completion
from agents.replies import read_reply
from annotation import ledger
from corpus.io import CorpusDocument
from corpus.tokens import ground
from state.errors import InputError
from state.figures import duration
from state.graph_state import TokenUsage
from state.models import Span, TaskConfiguration

__all__ = [
    "BATCH_DISCOUNT",
    "BatchAnnotation",
    "BatchError",
    "BatchResult",
    "BatchSummary",
    "annotate_batch",
    "batch_cost_usd",
    "request_body",
    "state_path",
    "supports",
    "work_dir",
]

BATCH_DISCOUNT = 0.5
"""The Batch API's price as a share of the synchronous price (input and output tokens)."""
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_REQUESTS = 50_000  # OpenAI: at most 50,000 requests per batch
MAX_BYTES = 190 * 1024 * 1024  # OpenAI: at most 200 MB per input file
STATE_FORMAT = 1
ENDED = ("completed", "expired", "cancelled", "failed")
PROGRESS_EVERY_S = 600.0  # a progress line at least this often while polling
POLL_FAILURES = 10  # consecutive failed polls that stop the command (resumable)
LOOKBACK_S = 600  # how far before an interrupted upload or creation its file or batch is looked for
_MODES = ("json_schema", "json", "text")


def supports(spec: ModelSpec) -> bool:
    """Whether the Batch API backend can run this model (an openai: model in output mode json_schema, json or text)."""
    return spec.provider == "openai" and spec.output in _MODES


def batch_cost_usd(price: ModelPrice | None, usage: TokenUsage) -> float:
    """What `usage` costs through the Batch API: the model's price times `BATCH_DISCOUNT`."""
    return cost_usd(price, usage) * BATCH_DISCOUNT


def state_path(out: str | os.PathLike[str]) -> Path:
    """``<out>.batch.json``: the backend's state beside the output."""
    return Path(f"{out}.batch.json")


def work_dir(out: str | os.PathLike[str]) -> Path:
    """``<out>.batch/``: the request files, the downloaded answers and their index."""
    return Path(f"{out}.batch")


def request_body(spec: ModelSpec, schema: type[BaseModel], messages: list[dict[str, str]]) -> dict[str, Any]:
    """The chat-completions body the synchronous path sends for `messages` (model, messages, output cap, output
    mode, temperature, frequency penalty), without ``stream``: a batch request is never streamed."""
    from agents.models.modes import openai_response_format

    body: dict[str, Any] = {"model": spec.model, "messages": messages}
    if spec.max_tokens is not None:
        body["max_completion_tokens"] = spec.max_tokens
    if spec.output == "json_schema":
        body["response_format"] = openai_response_format(schema)
    elif spec.output == "json":
        body["response_format"] = {"type": "json_object"}
    body["temperature"] = spec.temperature
    if spec.profile.frequency_penalty is not None:
        body["frequency_penalty"] = spec.profile.frequency_penalty
    return body



class BatchError(RuntimeError):
    """A step of the Batch API that failed for a reason other than the key or the network (the state is kept)."""


@dataclass(slots=True)
class BatchResult:
    """One document's outcome, in the fields of the ledger's entry."""

    seq: int  # position in the input, from 0
    doc: CorpusDocument
    status: str  # "ok" or "failed"
    spans: list[tuple[int, int, str]]  # with the dataset's labels, sorted
    reason: str
    error: str  # the failure's kind ("" when ok)
    raw: str | None  # the model's answer of a failed document
    usage: TokenUsage
    requests: list[dict[str, Any]]  # {chunk, start, end, request_id, cache_key} per request

    @property
    def failed(self) -> bool:
        return self.status != "ok"

    def failure_record(self) -> dict[str, Any]:
        """The document's line in the failures file."""
        return {"id": self.doc.id, "reason": self.reason, "error": self.error, "raw": self.raw}


@dataclass
class BatchSummary:
    """What a batch annotation did: documents, entities, the batches, and the tokens and cost of its requests."""

    documents: int = 0
    ok: int = 0
    failed: int = 0
    spans: int = 0
    requests: int = 0  # request lines in the batches
    from_cache: int = 0  # requests the call cache answered (never sent)
    batches: list[str] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: float = 0.0


@dataclass(slots=True)
class _Piece:
    """One request of a document: the whole text (chunk None) or one chunk."""

    chunk: Any
    prompt: str
    key: str
    custom_id: str


@dataclass(slots=True)
class _Answer:
    """A stored answer to one request line, or why there is none."""

    ok: bool
    text: str
    truncated: bool
    filtered: bool
    usage: TokenUsage
    reason: str
    kind: str


class BatchAnnotation:
    """One configuration applied to a corpus through the Batch API (see the module docstring for the steps).

    ``documents`` is called once per pass over the corpus and returns the documents (objects with ``id`` and
    ``text``; `corpus.io.CorpusDocument` keeps its tokens and extra keys in the output) in input order.
    ``labels`` maps the task's type names to the dataset's labels. ``cache`` is the persistent call cache (None:
    answers are neither looked up nor stored). ``input_fingerprint`` (any JSON), when given, must match on a rerun.
    ``output_format`` is one of `annotation.exports.FORMATS` (the predictions `run` writes).
    """

    def __init__(
        self,
        spec: ModelSpec,
        configuration: TaskConfiguration,
        round_: int,
        labels: dict[str, str],
        documents: Callable[[], Iterable[Any]],
        out: str | os.PathLike[str],
        *,
        configuration_hash: str | None = None,
        chunk_chars: int | None = None,
        cache: CallCache | None = None,
        input_fingerprint: Any = None,
        output_format: str = "jsonl",
        poll_interval: float = 30.0,
        say: Callable[[str], None] | None = None,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if not supports(spec):
            raise InputError(f"the openai-batch backend runs openai: models in output mode json_schema, json or "
                             f"text; {spec.name} is {spec.provider} with output {spec.output}")
        self.spec = spec
        self.configuration = configuration
        self.round_ = round_
        self.labels = labels
        self.documents = documents
        self.out = Path(out)
        self.chunk_chars = chunk_chars
        self.configuration_hash = configuration_hash or ledger.configuration_hash(configuration, round_, labels, chunk_chars)
        self.cache = cache
        self.input_fingerprint = input_fingerprint
        self.output_format = output_format
        self.poll_interval = poll_interval
        self.say = say or _stderr
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.schema = schema_for(spec, tuple(t.name for t in configuration.schema_))
        self.schema_json = self.schema.model_json_schema()
        self.state_file = state_path(self.out)
        self.dir = work_dir(self.out)
        self.state: dict[str, Any] | None = None
        self._client: Any = None
        self._checked = False
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ requests

    def pieces(self, doc: Any) -> list[_Piece]:
        """The requests of one document: its prompt (or its chunks' prompts), cache key and custom id."""

        text = doc.text
        chunks: list[Any] = [None]
        if self.chunk_chars is not None and len(text) > self.chunk_chars:
            from annotation.chunks import plan_chunks

            chunks = plan_chunks(text, self.chunk_chars)
        out = []
        for chunk in chunks:
            part = text if chunk is None else chunk.substring(text)
            prompt, _ = fit_annotator_prompt(self.spec, self.configuration, part, self.round_)
            key = cache_key(self.spec, self.schema_json, self.spec.output, chat_messages([prompt]))
            rid = ledger.request_id(doc.id, None if chunk is None else chunk.index, self.spec.name, self.configuration_hash)
            out.append(_Piece(chunk, prompt, key, rid))
        return out

    def header(self) -> dict[str, Any]:
        """What the state must match on a rerun: model, endpoint, configuration and input."""
        spec = self.spec
        model = {"name": spec.name, "base_url": self._base_url(), "temperature": spec.temperature,
                 "max_tokens": spec.max_tokens, "frequency_penalty": spec.profile.frequency_penalty,
                 "output": spec.output, "context_window": spec.context_window}
        return {"format": STATE_FORMAT, "model": model, "configuration_hash": self.configuration_hash,
                "input": self.input_fingerprint}

    # ------------------------------------------------------------------ step 1: prepare

    def prepare(self) -> dict[str, Any]:
        """The state: continued from ``<out>.batch.json`` when there is one (it must match this command), else the
        request files written anew."""
        if self.state is not None:
            return self.state
        if self.state_file.is_file():
            try:
                state = json.loads(self.state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"the batch state cannot be read ({exc}); delete it and {self.dir} to start "
                                 "again (a batch it names may still be running: see the provider's dashboard)",
                                 path=str(self.state_file)) from None
            different = _differences(state.get("header") or {}, self.header())
            if different:
                raise InputError("the batch state beside the output was written for " + "; ".join(different) +
                                 f": delete it and {self.dir} to start again, or run the command it was written for",
                                 path=str(self.state_file))
            self.state = state
            self.say(f"continuing the batches in {self.state_file} ({_stages(state)})")
            return state
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("part-*"):
            old.unlink()
        tag = uuid.uuid4().hex[:12]
        parts: list[dict[str, Any]] = []
        seen_ids: set[str] = set()
        sent: set[bytes] = set()
        fh = None
        count = size = from_cache = duplicates = documents = 0

        def close_part() -> None:
            nonlocal fh
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
                fh = None
                parts[-1].update(requests=count, bytes=size)

        for doc in self.documents():
            documents += 1
            for piece in self.pieces(doc):
                if piece.custom_id in seen_ids:
                    raise InputError(f"document id {doc.id!r} appears twice: a batch needs unique ids")
                seen_ids.add(piece.custom_id)
                digest = bytes.fromhex(piece.key)[:16]
                if digest in sent:
                    duplicates += 1
                    continue
                if self.cache is not None and self.cache.get(piece.key) is not None:
                    from_cache += 1
                    continue
                line = json.dumps({"custom_id": piece.custom_id, "method": "POST", "url": ENDPOINT,
                                   "body": request_body(self.spec, self.schema, chat_messages([piece.prompt]))},
                                  ensure_ascii=False).encode("utf-8") + b"\n"
                if fh is None or count >= self.max_requests or (count and size + len(line) > self.max_bytes):
                    close_part()
                    index = len(parts)
                    name = f"part-{index:05d}.jsonl"
                    parts.append({"index": index, "file": name, "upload_name": f"diziner-{tag}-{name}",
                                  "stage": "prepared"})
                    fh = open(self.dir / name, "wb")  # noqa: SIM115 (closed by close_part)
                    count = size = 0
                fh.write(line)
                count += 1
                size += len(line)
                sent.add(digest)
        close_part()
        state = {"header": self.header(), "tag": tag, "prepared_at": time.time(), "documents": documents,
                 "requests": sum(p["requests"] for p in parts), "from_cache": from_cache,
                 "duplicates": duplicates, "parts": parts}
        self.state = state
        self._save()
        self.say(f"{documents} document(s): {state['requests']} request(s) in {len(parts)} batch file(s), "
                 f"{from_cache} answered by the call cache, {duplicates} repeated")
        return state

    # ------------------------------------------------------------------ step 2: upload

    def upload(self) -> None:
        """Upload every request file not uploaded yet (after checking the key and the model)."""
        state = self.prepare()
        todo = [p for p in state["parts"] if p["stage"] in ("prepared", "uploading")]
        if not todo:
            return
        self.check_model()
        client = self.client()
        for part in todo:
            if part["stage"] == "uploading":
                found = self._find_upload(part)
                if found is not None:
                    part.update(stage="uploaded", input_file_id=found)
                    self._save()
                    self.say(f"batch file {part['index'] + 1}: found the upload of an interrupted run ({found})")
                    continue
            part.update(stage="uploading", upload_started=time.time())
            self._save()
            with open(self.dir / part["file"], "rb") as fh:
                uploaded = self._call("uploading the batch file",
                                      lambda fh=fh, part=part: client.files.create(file=(part["upload_name"], fh),
                                                                                   purpose="batch"))
            part.update(stage="uploaded", input_file_id=uploaded.id)
            self._save()
            self.say(f"batch file {part['index'] + 1} of {len(state['parts'])} uploaded: {uploaded.id} "
                     f"({part['requests']} requests, {part['bytes']} bytes)")

    def _find_upload(self, part: dict[str, Any]) -> str | None:
        """The id of the file an interrupted upload of `part` left on the server, if any."""
        client = self.client()
        since = part.get("upload_started", 0) - LOOKBACK_S
        page = self._call("listing the uploaded files",
                          lambda: client.files.list(purpose="batch", order="desc", limit=100))
        for item in page:  # the SDK fetches further pages as needed
            if item.created_at < since:
                break
            if item.filename == part["upload_name"] and item.bytes == part["bytes"]:
                return item.id
        return None

    # ------------------------------------------------------------------ step 3: create

    def create(self) -> None:
        """Create a batch for every uploaded file that has none yet."""
        state = self.prepare()
        todo = [p for p in state["parts"] if p["stage"] in ("uploaded", "creating")]
        if not todo:
            return
        client = self.client()
        for part in todo:
            if part["stage"] == "creating":
                found = self._find_batch(part)
                if found is not None:
                    part.update(stage="submitted", batch_id=found.id, status=found.status)
                    self._save()
                    self.say(f"batch {part['index'] + 1}: found the batch of an interrupted run ({found.id})")
                    continue
            part.update(stage="creating", create_started=time.time())
            self._save()
            metadata = {"diziner_run": state["tag"], "diziner_part": str(part["index"]),
                        "diziner_model": self.spec.name[:512]}
            batch = self._call("creating the batch", lambda part=part, metadata=metadata: client.batches.create(
                input_file_id=part["input_file_id"], endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
                metadata=metadata))
            part.update(stage="submitted", batch_id=batch.id, status=batch.status)
            self._save()
            self.say(f"batch {part['index'] + 1} of {len(state['parts'])} created: {batch.id} ({batch.status})")

    def _find_batch(self, part: dict[str, Any]) -> Any:
        """The batch an interrupted creation for `part` made on the server, if any."""
        client = self.client()
        since = part.get("create_started", 0) - LOOKBACK_S
        page = self._call("listing the batches", lambda: client.batches.list(limit=100))
        for item in page:
            if item.created_at < since:
                break
            if item.input_file_id == part["input_file_id"]:
                return item
        return None

    # ------------------------------------------------------------------ step 4: poll

    def poll(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Wait until every batch has ended, with a progress line when it changes (and every 10 minutes)."""
        state = self.prepare()
        client = self.client() if any(p["stage"] == "submitted" for p in state["parts"]) else None
        last_line: dict[int, tuple[str, float]] = {}
        failures = 0
        started = time.monotonic()
        while True:
            waiting = [p for p in state["parts"] if p["stage"] == "submitted"]
            if not waiting:
                return
            for part in waiting:
                try:
                    batch = client.batches.retrieve(part["batch_id"])
                except Exception as exc:  # a poll that fails is tried again; many in a row stop the command
                    failure = classify(exc)
                    if failure.kind == "auth":
                        raise InputError(f"model {self.spec.name!r}: the key was refused while polling batch "
                                         f"{part['batch_id']} ({failure.message})") from None
                    if failure.kind == "not_found":
                        raise BatchError(f"batch {part['batch_id']} is not on the server ({failure.message}); "
                                         f"delete {self.state_file} and {self.dir} to start again") from None
                    failures += 1
                    if failures >= POLL_FAILURES:
                        raise ModelUnavailable(self.spec.name, f"{failures} polls of batch {part['batch_id']} in a "
                                               f"row failed: {failure.message}") from None
                    self.say(f"polling batch {part['batch_id']} failed ({failure.message}); trying again")
                    continue
                failures = 0
                counts = batch.request_counts
                done, failed, total = (counts.completed, counts.failed, counts.total) if counts else (0, 0, 0)
                part.update(status=batch.status, counts={"completed": done, "failed": failed, "total": total},
                            output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
                if batch.status in ENDED:
                    errors = [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                              for e in ((batch.errors.data or []) if batch.errors else [])]
                    part.update(stage="ended", errors=errors)
                    self._save()
                now = time.monotonic()
                seen = f"{batch.status} {done} {failed}"
                previous = last_line.get(part["index"])
                if previous is None or previous[0] != seen or now - previous[1] >= PROGRESS_EVERY_S:
                    last_line[part["index"]] = (seen, now)
                    errors = "; " + "; ".join(part["errors"][:3]) if part.get("errors") else ""
                    self.say(f"batch {part['index'] + 1} of {len(state['parts'])} ({part['batch_id']}): "
                             f"{batch.status}, {done}/{total or part['requests']} done, {failed} failed, "
                             f"{duration(now - started)} waited{errors}")
            if any(p["stage"] == "submitted" for p in state["parts"]):
                sleep(self.poll_interval)

    # ------------------------------------------------------------------ step 5: download

    def download(self) -> None:
        """Download the output and error files of every ended batch, index the answers and put them into the call
        cache."""
        state = self.prepare()
        for part in state["parts"]:
            if part["stage"] != "ended":
                continue
            client = self.client()
            files = []
            for kind in ("output", "error"):
                file_id = part.get(f"{kind}_file_id")
                if not file_id:
                    continue
                answer = self._call(f"downloading the {kind} file {file_id}",
                                    lambda file_id=file_id, client=client: client.files.content(file_id))
                path = self.dir / f"part-{part['index']:05d}.{kind}.jsonl"
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(answer.content)
                os.replace(tmp, path)
                files.append(path)
            self._index(part, files)
            part["stage"] = "collected"
            self._save()

    def _index(self, part: dict[str, Any], files: list[Path]) -> None:
        """Store the answers of one batch (by cache key) in the index, and the usable ones in the call cache."""
        keys: dict[str, tuple[str, int]] = {}  # custom_id -> (cache key, prompt characters)
        with open(self.dir / part["file"], "rb") as fh:
            for raw in fh:
                line = json.loads(raw)
                messages = line["body"]["messages"]
                keys[line["custom_id"]] = (cache_key(self.spec, self.schema_json, self.spec.output, messages),
                                           sum(len(m.get("content") or "") for m in messages))
        db = self.db()
        rows = []
        for path in files:
            with open(path, "rb") as fh:
                for raw in fh:
                    if not raw.strip():
                        continue
                    line = json.loads(raw)
                    known = keys.get(line.get("custom_id"))
                    if known is None:
                        continue  # not a request of ours
                    key, prompt_chars = known
                    answer = _answer_of(line, prompt_chars)
                    rows.append((key, line.get("custom_id"), *_row(answer)))
                    if answer.ok and not answer.filtered and self.cache is not None:
                        used = answer.usage
                        self.cache.put(key, self.spec.name, CachedReply(answer.text, used.input_tokens,
                                                                        used.cached_input_tokens,
                                                                        used.output_tokens, answer.truncated))
        with db:
            db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    # ------------------------------------------------------------------ step 6: results

    def results(self) -> Iterator[BatchResult]:
        """Every document's outcome, in input order, from the batches' answers and the call cache."""
        state = self.prepare()
        unfinished = [p for p in state["parts"] if p["stage"] not in ("collected",)]
        if unfinished:
            raise BatchError(f"{len(unfinished)} batch(es) not downloaded yet: run the steps first")
        why_missing = "; ".join(f"batch {p.get('batch_id')} {p.get('status')}" +
                                (f" ({'; '.join(p['errors'][:3])})" if p.get("errors") else "")
                                for p in state["parts"] if p.get("status") != "completed")
        charged: set[str] = set()
        for seq, doc in enumerate(self.documents()):
            yield self._result(seq, _corpus_document(doc), charged, why_missing)

    def _result(self, seq: int, doc: CorpusDocument, charged: set[str], why_missing: str) -> BatchResult:
        pieces = self.pieces(doc)
        usage = TokenUsage()
        requests: list[dict[str, Any]] = []
        found: list[tuple[Any, list[Span]]] = []
        failure: tuple[str, str, str | None] | None = None
        for piece in pieces:
            chunk = piece.chunk
            where = {} if chunk is None else {"chunk": chunk.index, "start": chunk.start, "end": chunk.end}
            requests.append({**where, "request_id": piece.custom_id, "cache_key": piece.key})
            answer = self._lookup(piece.key, charged, why_missing)
            usage = usage.add(answer.usage)
            if failure is not None:
                continue
            text = doc.text if chunk is None else chunk.substring(doc.text)
            spans, reason, kind, raw = self._read(text, answer)
            if reason:
                prefix = "" if chunk is None else f"chunk {chunk.index + 1} of {len(pieces)}: "
                failure = (prefix + reason, kind, raw)
                continue
            found.append((chunk, spans))
        if failure is not None:
            return BatchResult(seq, doc, "failed", [], failure[0], failure[1], failure[2], usage, requests)
        if pieces[0].chunk is None:
            spans = found[0][1]
        else:
            from annotation.chunks import merge_spans

            spans = merge_spans(found, len(doc.text))
        kept = sorted({(s.start, s.end, self.labels.get(s.type, s.type)) for s in spans})
        return BatchResult(seq, doc, "ok", kept, "", "", None, usage, requests)

    def _lookup(self, key: str, charged: set[str], why_missing: str) -> _Answer:
        """The answer to the request with this cache key: from the batches (its usage counted once), else the call
        cache, else a failure saying why there is none."""
        row = self.db().execute("SELECT ok, text, truncated, filtered, input, cached, output, calls, estimated, "
                                "reason, kind FROM answers WHERE key = ?", (key,)).fetchone()
        if row is not None:
            ok, text, truncated, filtered, inp, cached, out, calls, estimated, reason, kind = row
            if key in charged:
                usage = TokenUsage(cache_hits=1, cache_input_tokens=inp, cache_output_tokens=out)
            else:
                charged.add(key)
                usage = TokenUsage(input_tokens=inp, cached_input_tokens=cached, output_tokens=out, calls=calls,
                                   estimated_calls=estimated)
            return _Answer(bool(ok), text, bool(truncated), bool(filtered), usage, reason, kind)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            usage = TokenUsage(cache_hits=1, cache_input_tokens=hit.input_tokens, cache_output_tokens=hit.output_tokens)
            return _Answer(True, hit.text, hit.truncated, False, usage, "", "")
        reason = f"no answer in the batch output ({why_missing})" if why_missing else "no answer in the batch output"
        return _Answer(False, "", False, False, TokenUsage(), reason, "server")

    def _read(self, text: str, answer: _Answer) -> tuple[list[Span], str, str, str | None]:
        """(spans, failure reason or "", failure kind, raw answer) of one answer, grounded on `text`."""
        if not answer.ok:
            return [], f"after 1 attempt: {answer.reason}"[:500], answer.kind or "server", None
        if answer.filtered:
            return [], "after 1 attempt: the provider's content filter stopped the answer", "answer", answer.text
        parsed, error = read_reply(answer.text, self.schema)
        if parsed is None:
            if answer.truncated:
                reason = f"unusable answer: answer cut at the output cap ({self.spec.max_tokens} tokens): {error}"
            else:
                reason = (f"unusable answer: {error} (a batch asks once; a synchronous retry asks again quoting the "
                          "error)")
            return [], reason[:500], "answer", answer.text
        grounding = ground(text, [(e.text, e.type.value) for e in parsed.entities])
        return [Span(start=s, end=e, type=t) for s, e, t in grounding.spans], "", "", None

    # ------------------------------------------------------------------ all steps

    def run(self, sleep: Callable[[float], None] = time.sleep) -> BatchSummary:
        """Every step that is not done yet, then the predictions and the failures file written; what it did."""
        state = self.prepare()
        self.upload()
        self.create()
        self.poll(sleep)
        self.download()
        from annotation.exports import open_writer

        summary = BatchSummary(requests=state["requests"], from_cache=state["from_cache"],
                               batches=[p["batch_id"] for p in state["parts"] if p.get("batch_id")])
        failures_path = Path(f"{self.out}.failures.jsonl")
        tmp = failures_path.with_name(failures_path.name + ".tmp")
        with open_writer(self.output_format, self.out) as writer, open(tmp, "wb") as failures:
            for result in self.results():
                doc = result.doc
                spans = None if result.failed else list(result.spans)
                writer.write(CorpusDocument(doc.id, doc.text, spans, doc.tokens, dict(doc.extra)),
                             failed=result.failed)
                summary.documents += 1
                summary.usage = summary.usage.add(result.usage)
                if result.failed:
                    summary.failed += 1
                    failures.write(json.dumps(result.failure_record(), ensure_ascii=False).encode("utf-8") + b"\n")
                else:
                    summary.ok += 1
                    summary.spans += len(result.spans)
        os.replace(tmp, failures_path)
        summary.cost_usd = batch_cost_usd(self.spec.price, summary.usage)
        self.say(f"wrote {self.out}: {summary.ok} document(s), {summary.spans} entities; {summary.failed} failed"
                 + (f" (in {failures_path})" if summary.failed else "") + f"; {summary.usage.calls} request(s) "
                 f"through the Batch API, {summary.usage.cache_hits} answered by the call cache; "
                 f"{summary.usage.input_tokens + summary.usage.output_tokens} tokens"
                 + (f", ${summary.cost_usd:.4f} at the batch price" if self.spec.price else ""))
        return summary

    def close(self) -> None:
        """Close the answer index and the client."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> BatchAnnotation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the client, the state, the index

    def _base_url(self) -> str | None:
        return endpoint(self.spec)

    def client(self) -> Any:
        """The openai client (the key read here: a missing one is an InputError)."""
        if self._client is None:
            import openai

            self._client = openai.OpenAI(api_key=openai_key(self.spec), base_url=self._base_url(), timeout=self.spec.timeout,
                                         max_retries=0)  # a repeated create could pay twice: no silent retries
        return self._client

    def check_model(self) -> None:
        """The key is accepted and the server lists the model (a server with no model list is taken at its word)."""
        if self._checked:
            return
        client = self.client()
        try:
            names = [m.id for m in client.models.list()]
        except Exception as exc:
            failure = classify(exc)
            if failure.kind == "auth":
                raise InputError(f"model {self.spec.name!r}: the server refused the key ({failure.message}); "
                                 f"check the environment variable {self.spec.api_key_env or 'OPENAI_API_KEY'}"
                                 ) from None
            if failure.unreachable:
                raise ModelUnavailable(self.spec.name, f"no answer from {self._base_url() or 'the OpenAI API'}: "
                                       f"{failure.message}") from None
            names = []  # no model list here
        if names and self.spec.model not in names:
            shown = ", ".join(sorted(names)[:10])
            raise InputError(f"model {self.spec.name!r}: the server does not serve {self.spec.model!r}; it serves: "
                             f"{shown}")
        self._checked = True

    def _call(self, what: str, send: Callable[[], Any]) -> Any:
        """One request of the Batch API; its failure worded (InputError for the key, ModelUnavailable for the
        network, else BatchError)."""
        try:
            return send()
        except Exception as exc:
            failure = classify(exc)
            if failure.kind == "auth":
                raise InputError(f"model {self.spec.name!r}: {what}: the server refused the key "
                                 f"({failure.message})") from None
            if failure.unreachable:
                raise ModelUnavailable(self.spec.name, f"{what}: {failure.message}") from None
            if failure.kind == "other":
                raise
            raise BatchError(f"{what} failed: {failure.message}") from None

    def _save(self) -> None:
        """Write the state atomically (and durably) beside the output."""
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.state, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)

    def db(self) -> sqlite3.Connection:
        """The index of downloaded answers (SQLite in the work directory), keyed by cache key."""
        if self._db is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.dir / "answers.sqlite")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, custom_id TEXT, ok INTEGER, text TEXT, "
                "truncated INTEGER, filtered INTEGER, input INTEGER, cached INTEGER, output INTEGER, calls INTEGER, "
                "estimated INTEGER, reason TEXT, kind TEXT)")
        return self._db


def annotate_batch(spec: ModelSpec, configuration: TaskConfiguration, round_: int, labels: dict[str, str],
                   documents: Callable[[], Iterable[Any]], out: str | os.PathLike[str], **options: Any) -> BatchSummary:
    """Annotate a corpus through the Batch API, resuming whatever an earlier run of the same command left
    (`BatchAnnotation`'s options); the predictions at `out`, the failed documents in ``<out>.failures.jsonl``."""
    with BatchAnnotation(spec, configuration, round_, labels, documents, out, **options) as job:
        return job.run()


# ---------------------------------------------------------------------------------------------------- helpers



def _corpus_document(doc: Any) -> CorpusDocument:
    if isinstance(doc, CorpusDocument):
        return doc
    return CorpusDocument(str(doc.id), doc.text)


def _answer_of(line: dict[str, Any], prompt_chars: int) -> _Answer:
    """One line of a batch's output or error file as an answer (or why there is none)."""
    response = line.get("response") or None
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if status == 200 and isinstance(body, dict):
        try:
            text, truncated, filtered, usage = read_completion(body, prompt_chars)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            return _Answer(False, "", False, False, TokenUsage(calls=1),
                           f"the server's answer is not a chat completion: {exc!r}", "server")
        return _Answer(True, text, truncated, filtered, usage, "", "")
    error = (body or {}).get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else (line.get("error") or {})
    message = str(error.get("message") or "no answer")
    code = str(error.get("code") or "")
    if status is None:  # never ran (expired or cancelled with its batch)
        kind = "timeout" if code == "batch_expired" else "server"
        return _Answer(False, "", False, False, TokenUsage(), f"{code or 'not run'}: {message}", kind)
    kind = status_kind(int(status), f"{code} {message}")
    return _Answer(False, "", False, False, TokenUsage(calls=1), f"HTTP {status}: {message}", kind)


def _row(answer: _Answer) -> tuple[Any, ...]:
    u = answer.usage
    return (int(answer.ok), answer.text, int(answer.truncated), int(answer.filtered), u.input_tokens,
            u.cached_input_tokens, u.output_tokens, u.calls, u.estimated_calls, answer.reason, answer.kind)


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why a state written under `stored` cannot be continued under `current` (empty: it can)."""
    out = []
    if stored.get("format") != current.get("format"):
        return [f"state format {stored.get('format')!r} (this diziner writes {current.get('format')!r})"]
    if stored.get("model") != current.get("model"):
        s, c = stored.get("model") or {}, current.get("model") or {}
        changed = [f"{k} {s.get(k)!r} -> {c.get(k)!r}" for k in sorted(set(s) | set(c)) if s.get(k) != c.get(k)]
        out.append(f"another model setting ({', '.join(changed)})")
    if stored.get("configuration_hash") != current.get("configuration_hash"):
        out.append("another configuration (configuration, round, label mapping or chunking)")
    if stored.get("input") != current.get("input"):
        out.append(f"another input ({stored.get('input')!r}, now {current.get('input')!r})")
    return out


def _stages(state: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for part in state["parts"]:
        counts[part["stage"]] = counts.get(part["stage"], 0) + 1
    return ", ".join(f"{n} {stage}" for stage, n in sorted(counts.items())) or "nothing to send"



def _stderr(message: str) -> None:
    print(f"diziner annotate: {message}", file=sys.stderr, flush=True)
