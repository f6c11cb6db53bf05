"""`diziner annotate --backend ray`: the local backend's annotation run on Ray Data, for corpora and pools of model
servers beyond what one machine's client gets through (the call itself: docs/method.md#annotator-prompt-and-call).

`annotate_with_ray` does what the local backend does, with the same results:

- Input. The driver first checks the whole input as the local backend does (`annotation.stream.scan_input`: the same
  InputErrors, before any model call). Ray then reads each document's ``id`` and ``text``: JSONL with
  `ray.data.read_json` under an explicit two-column schema (every other key ignored: Arrow's JSON reader would
  otherwise unify every record's keys and types across the file), Parquet (a ``.parquet`` file with string columns
  ``id`` and ``text``, and optionally ``tokens``) with `ray.data.read_parquet`, and CoNLL converted by the driver to
  such JSONL records first, streaming, in a work directory beside the output (removed at the end).
- Annotation. A pool of actors, each with its own event loop (Ray Data's asynchronous batch UDF), runs
  `agents.annotator.annotate_document` on every document, or on each of its chunks when it is longer than
  ``chunk_chars`` (`annotation.chunks`): the call layer does the call cache, preflight check, deadline, retries,
  tolerant parsing and usage. Each actor lets ``concurrency / actors`` documents be in flight at once, so the pool's
  requests in flight total ``concurrency``: the pool is the largest number of actors, at most the number asked for
  (default: the Ray cluster's CPUs), that divides ``concurrency``.
- Output. Results come back to the driver in input order (Ray Data's ``preserve_order``) as they finish and are
  written at once by the local backend's writer (`annotation.exports.open_writer`), each document's other fields
  (tokens, extra keys) read by the driver from the input itself: the same records as the local backend's, byte for
  byte. Failed documents are left out of a JSONL output (other formats write them without entities) and listed in
  ``<out>.failures.jsonl`` ({"id", "reason", "error", "raw"}). Usage is summed from every document's result.
- Stops. A model that cannot be reached or is misconfigured (the preflight check in a worker) stops the command with
  the error the local backend raises (`ModelUnavailable`, `InputError`), as does a run of at least
  ``max(3, concurrency)`` consecutive documents failing on transport errors or timeouts. There is no ledger: a rerun
  writes the output anew, and the persistent call cache answers every request a finished run already made.

Where Ray runs: without ``address`` (and without ``RAY_ADDRESS`` in the environment) a private local Ray runtime is
started (``LOCAL_CPUS`` CPUs, no dashboard) and shut down at the end; with one, the command joins that cluster as its
driver: ``head:6379`` (the GCS address ``ray start --head`` prints) or ``auto``, from a machine of the cluster (the
head node, or through ``ray job submit``). Ray Client addresses (``ray://``) are refused: Ray Data does not run
through Ray Client. On a cluster every node needs this package installed, and the input must be on a file system
every node mounts (for a CoNLL input, the output's directory too: the converted records are read from there; the
output itself is written by the driver). The actors get the environment variables the model needs (its key
variable, ``OPENAI_BASE_URL``/``OLLAMA_HOST``, ``DIZINER_CACHE_DIR``, LangSmith's) from the driver's environment
through the actor pool's runtime environment (locally too: a Ray runtime already running in the process may have
started before they were set). Each node's workers use the call cache in ``cache_dir`` (default: the workers' own
default cache directory on a cluster, the driver's locally). A local backend's ledger beside the output
(``<out>.ledger.sqlite``) is removed when the output is written anew, so a later ``--resume`` cannot trust it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.io import CorpusDocument
from state.errors import InputError
from state.graph_state import TokenUsage

__all__ = ["LOCAL_CPUS", "AnnotationJob", "RayReport", "annotate_text", "annotate_with_ray", "pool_shape"]

LOCAL_CPUS = 2  # CPUs of the private local Ray runtime
ACTOR_CPUS = 0.5  # an actor mostly waits on the network; half a CPU each leaves room for the read tasks
BLOCK_DOCUMENTS = 1000  # documents per block of a large corpus (a small one is cut into 4 blocks per actor)
UNREACHABLE_AFTER = 3  # as the local backend: this many (and at least `concurrency`) transport failures in a row
LOG_EVERY_S = 5.0
_FORWARDED_ENV = ("OPENAI_BASE_URL", "OLLAMA_HOST", "DIZINER_CACHE_DIR")
_FORWARDED_PREFIXES = ("LANGSMITH_", "LANGCHAIN_")
_PAR1 = b"PAR1"


@dataclass
class RayReport:
    """What one `annotate_with_ray` did: documents annotated, failed and written, entities, usage and the pool."""

    output: Path
    failures: Path
    documents: int = 0  # annotated (written or failed)
    ok: int = 0
    failed: int = 0
    spans: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    seconds: float = 0.0
    actors: int = 0
    per_actor: int = 0  # documents in flight per actor at most
    address: str | None = None  # the cluster's address; None: a private local runtime
    notes: list[str] = field(default_factory=list)  # the writer's notes (spans a format could not hold)

    def lines(self, prog: str = "diziner annotate") -> list[str]:
        """The closing lines for stderr: what was written, what failed, the requests and tokens."""
        out = [f"{prog}: wrote {self.output}: {self.ok} document(s), {self.spans} entities ({self.seconds:.1f} s, "
               f"Ray: {self.actors} actor(s) x {self.per_actor})"]
        out += [f"{prog}: {note}" for note in self.notes]
        if self.failed:
            out.append(f"{prog}: {self.failed} of {self.documents} document(s) failed: listed in {self.failures}")
        u = self.usage
        out.append(f"{prog}: {u.calls} request(s), {u.cache_hits} answered by the call cache; "
                   f"{u.input_tokens + u.output_tokens} tokens")
        return out


@dataclass(frozen=True)
class AnnotationJob:
    """What every actor needs to annotate a document as the local backend does (sent to the actors pickled)."""

    spec: Any  # agents.models.ModelSpec
    configuration: Any  # state.models.TaskConfiguration
    labels: dict[str, str]
    round_: int
    chunk_chars: int | None
    per_actor: int
    cache_dir: str | None
    use_cache: bool


# ---------------------------------------------------------------------------------------------------- one document


async def annotate_text(handle: Any, job: AnnotationJob, doc_id: str, text: str, cache: Any) -> dict[str, Any]:
    """One document's result as the local backend computes it: its spans with the dataset's labels (sorted, each
    once), whole or from its chunks merged, or why it failed; with the usage of every request."""
    from agents.annotator import annotate_document
    from agents.structured import trace_config
    from state.models import Document

    spec = job.spec
    pieces: list[Any] = [None]
    if job.chunk_chars is not None and len(text) > job.chunk_chars:
        from annotation.chunks import plan_chunks

        pieces = plan_chunks(text, job.chunk_chars)
    usage = TokenUsage()
    found = []
    tags = ["annotator", spec.name, "apply"]
    meta = {"round": job.round_, "annotator": spec.name, "document": doc_id, "phase": "apply"}
    for chunk in pieces:
        part = text if chunk is None else chunk.substring(text)
        name = f"annotate {doc_id}" if chunk is None else f"annotate {doc_id} chunk {chunk.index + 1}"
        output, used = await annotate_document(handle, spec, job.configuration, Document(id=doc_id, text=part),
                                               job.round_, config=trace_config(name, tags, **meta), cache=cache)
        usage = usage.add(used)
        if output.status != "ok":
            reason = output.reason if chunk is None else f"chunk {chunk.index + 1} of {len(pieces)}: {output.reason}"
            return {"status": "failed", "spans": [], "reason": reason, "error": output.error_kind or "answer",
                    "raw": output.raw, "usage": usage.model_dump()}
        found.append((chunk, output.spans))
    if pieces[0] is None:
        spans = found[0][1]
    else:
        from annotation.chunks import merge_spans

        spans = merge_spans(found, len(text))
    kept = sorted({(s.start, s.end, job.labels.get(s.type, s.type)) for s in spans})
    return {"status": "ok", "spans": [list(s) for s in kept], "reason": "", "error": "", "raw": None,
            "usage": usage.model_dump()}


def _text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class _Annotator:
    """One actor of the pool: its own model client, call cache and gate of `per_actor` documents in flight."""

    def __init__(self, job: AnnotationJob) -> None:
        from agents import models
        from agents.cache import open_cache
        from agents.models import ModelHandle

        self.job = job
        self.handle = ModelHandle(models.chat_model, job.spec)
        self.cache = open_cache(job.cache_dir) if job.use_cache else None
        self.gate: asyncio.Semaphore | None = None

    async def __call__(self, batch: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Annotate a batch of documents (columns id, text) concurrently; one JSON result per document (an
        asynchronous generator: the form of asynchronous UDF every Ray Data since 2.32 runs)."""
        import numpy as np

        if self.gate is None:  # made on the actor's event loop
            self.gate = asyncio.Semaphore(self.job.per_actor)
        ids = [str(x) for x in batch["id"]]
        texts = [str(x) for x in batch["text"]]
        results = await asyncio.gather(*(self._one(i, t) for i, t in zip(ids, texts, strict=True)))
        yield {"id": np.array(ids, dtype=object), "result": np.array(results, dtype=object)}

    async def _one(self, doc_id: str, text: str) -> str:
        from agents.models.errors import ModelUnavailable

        assert self.gate is not None
        async with self.gate:
            try:
                result = await annotate_text(self.handle, self.job, doc_id, text, self.cache)
            except ModelUnavailable as exc:
                result = {"fatal": "unavailable", "model": exc.spec_name, "cause": exc.cause}
            except InputError as exc:
                result = {"fatal": "input", "message": exc.message, "path": exc.path, "line": exc.line}
        result["digest"] = _text_digest(text)
        return json.dumps(result, ensure_ascii=True)


# ---------------------------------------------------------------------------------------------------- the pool


def pool_shape(concurrency: int, actors: int) -> tuple[int, int]:
    """(actors, documents in flight per actor): the most actors, at most `actors`, that split `concurrency` evenly."""
    if concurrency < 1 or actors < 1:
        raise ValueError(f"concurrency and actors must be at least 1, got {concurrency} and {actors}")
    n = max(d for d in range(1, min(concurrency, actors) + 1) if concurrency % d == 0)
    return n, concurrency // n


def _need_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--backend ray needs Ray Data: pip install -e '.[ray]'") from None
    return ray


def _runtime_env(spec: Any) -> dict[str, Any]:
    """The driver's environment variables the workers need to call the model, trace and find the cache."""
    names = set(_FORWARDED_ENV)
    if spec.api_key_env:
        names.add(spec.api_key_env)
    env = {k: v for k, v in os.environ.items() if k in names or k.startswith(_FORWARDED_PREFIXES)}
    return {"env_vars": env} if env else {}


@contextlib.contextmanager
def _ray_runtime(ray: Any, address: str | None) -> Iterator[str | None]:
    """A Ray runtime for the run: the cluster at `address`, else a private local one; shut down at the end (one
    that was already running in this process is used and left running)."""
    if ray.is_initialized():
        yield address
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(address="local", num_cpus=LOCAL_CPUS, include_dashboard=False, **options)
    try:
        yield address
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------- input


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == _PAR1
    except OSError:
        return False


class _ParquetInput:
    """A Parquet input: string columns ``id`` (non-empty, unique) and ``text``, optional ``tokens``; checked whole by
    the driver before any call, then read in row order."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError("a Parquet input needs pyarrow: pip install -e '.[ray]'") from None
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own error types for a file that is not Parquet
            raise InputError(f"cannot read Parquet file: {exc}", path=str(path)) from None
        names = self.file.schema_arrow.names
        for required in ("id", "text"):
            if required not in names:
                raise InputError(f"a Parquet input needs a column {required!r} (it has {', '.join(names)})",
                                 path=str(path))
        self.columns = ["id", "text"] + (["tokens"] if "tokens" in names else [])
        self.documents = self._check()

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        row = 0
        for batch in self.file.iter_batches(columns=self.columns, batch_size=10_000):
            for record in batch.to_pylist():
                row += 1
                yield row, record

    def _check(self) -> int:
        seen: set[bytes] = set()
        count = 0
        for row, record in self._rows():
            doc_id, text = record["id"], record["text"]
            where = f"row {row}"
            if not isinstance(doc_id, str) or not doc_id:
                raise InputError(f'{where}: "id" must be a non-empty string, got {doc_id!r}', path=str(self.path))
            if not isinstance(text, str):
                raise InputError(f'{where}: document {doc_id!r}: "text" must be a string, got {type(text).__name__}',
                                 path=str(self.path))
            digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            if digest in seen:
                raise InputError(f"{where}: duplicate document id {doc_id!r}", path=str(self.path))
            seen.add(digest)
            count += 1
        return count

    def __iter__(self) -> Iterator[CorpusDocument]:
        for _, record in self._rows():
            tokens = record.get("tokens")
            if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                    and " ".join(tokens) == record["text"]):
                tokens = None
            yield CorpusDocument(record["id"], record["text"], None, tokens, {})


def _stage_jsonl(documents: Iterator[CorpusDocument], total: int, path: Path) -> None:
    """The first `total` documents as JSONL records {"id", "text"}, written one at a time, for Ray to read."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for i, doc in enumerate(documents):
            if i >= total:
                break
            fh.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=True))
            fh.write("\n")


def _starts_with_bom(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(3) == b"\xef\xbb\xbf"


# ---------------------------------------------------------------------------------------------------- the run


def annotate_with_ray(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    spec: Any,
    configuration: Any,
    labels: dict[str, str],
    *,
    round_: int,
    concurrency: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    call_cache: bool = True,
    fmt: str = "jsonl",
    address: str | None = None,
    chunk_chars: int | None = None,
    limit: int | None = None,
    actors: int | None = None,
    log: Callable[[str], None] | None = None,
    scan: Any = None,
) -> RayReport:
    """Annotate the documents of `input_path` with `spec` under `configuration` on Ray Data and write them to
    `output_path` in input order, as the local backend writes them (see the module docstring).

    `labels` maps the task's type names to the dataset's labels; `concurrency` (default: ``spec.concurrency``) is the
    requests in flight over the whole pool; `call_cache` uses the persistent call cache in `cache_dir` for a
    temperature-0 model; `fmt` is an `annotation.exports` format; `address` (default: ``RAY_ADDRESS``) names a Ray
    cluster; `chunk_chars` annotates longer documents in chunks; `limit` takes only the first documents; `actors`
    bounds the pool (default: the cluster's CPUs); `log` gets progress lines (default: stderr, after the command's
    name); `scan` is the caller's `annotation.stream.scan_input` of the same JSONL or CoNLL input (else it is scanned
    here; the reader's warnings are the caller's to print). Raises InputError for bad input (nothing called) or a
    missing ``ray`` (naming the extra), ModelUnavailable when the model cannot be reached."""
    from agents.cache import default_cache_dir
    from annotation.exports import FORMATS, open_writer
    from annotation.stream import FailuresFile, iter_documents, scan_input

    started = time.perf_counter()
    say = log or (lambda message: print(f"diziner annotate: {message}", file=sys.stderr, flush=True))
    concurrency = spec.concurrency if concurrency is None else concurrency
    for name, value in (("concurrency", concurrency), ("limit", limit), ("actors", actors),
                        ("chunk_chars", chunk_chars)):
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r} (choose from {', '.join(FORMATS)})")
    source = Path(input_path).absolute()
    out = Path(output_path).absolute()
    ray = _need_ray()

    # every check before Ray starts: the input read whole, the output's directory
    if source.is_dir():
        raise InputError("cannot read file: Is a directory", path=str(input_path))
    parquet = _ParquetInput(source) if source.is_file() and _is_parquet(source) else None
    if parquet is None and (scan is None or Path(scan.path).absolute() != source):
        scan = scan_input(source)
    count = parquet.documents if parquet is not None else scan.documents
    total = count if limit is None else min(count, limit)
    if total == 0:
        raise InputError("no documents to annotate", path=str(input_path))
    if not out.parent.is_dir():
        raise InputError(f"the output's directory {str(out.parent)!r} does not exist", path=str(output_path))
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and address.startswith("ray://"):
        raise InputError(f"Ray address {address!r}: Ray Data does not run through Ray Client (ray://); run the "
                         "command on a node of the cluster with RAY_ADDRESS=HEAD:6379 (or auto), or submit it with "
                         "`ray job submit -- diziner annotate ...`")
    use_cache = call_cache and spec.temperature == 0
    if cache_dir is None and address is None:
        cache_dir = default_cache_dir()  # the driver's, as the local backend's; a cluster's workers use their own

    def documents() -> Iterator[CorpusDocument]:
        return iter(parquet) if parquet is not None else iter_documents(scan)

    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.ray-", dir=out.parent))
    report = RayReport(output=out, failures=Path(f"{out}.failures.jsonl"), address=address)
    try:
        if parquet is None and (scan.format == "conll" or _starts_with_bom(source)):
            staged = workdir / "documents.jsonl"
            _stage_jsonl(documents(), total, staged)
            read_from, read_count = staged, total
        else:
            read_from, read_count = source, count
        with _ray_runtime(ray, address):
            cpus = int(ray.cluster_resources().get("CPU", LOCAL_CPUS))
            n_actors, per_actor = pool_shape(concurrency, min(actors or max(1, cpus), total))
            report.actors, report.per_actor = n_actors, per_actor
            job = AnnotationJob(spec=spec, configuration=configuration, labels=dict(labels), round_=round_,
                       chunk_chars=chunk_chars, per_actor=per_actor,
                       cache_dir=str(cache_dir) if cache_dir is not None else None, use_cache=use_cache)
            blocks = max(1, min(read_count, max(4 * n_actors, math.ceil(read_count / BLOCK_DOCUMENTS))))
            dataset = _dataset(ray, read_from, parquet is not None, blocks, total if total < read_count else None,
                               job, n_actors)
            say(f"{total} document(s) with {spec.name} on Ray "
                f"({address or 'a local runtime'}: {n_actors} actor(s) x {per_actor} in flight)")
            with warnings.catch_warnings():  # a corpus of fewer blocks than actors is no fault
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                _write_results(dataset, documents(), total, out, fmt, spec, concurrency, report, say,
                               open_writer, FailuresFile)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _dataset(ray: Any, path: Path, parquet: bool, blocks: int, limit: int | None, job: AnnotationJob,
             n_actors: int) -> Any:
    """The Ray dataset of the results: documents (id, text) read in order, annotated by the actor pool."""
    import pyarrow as pa
    import pyarrow.json as pajson

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # results in input order
    ctx.enable_progress_bars = False  # the driver prints its own progress lines
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if parquet:
        dataset = ray.data.read_parquet(str(path), override_num_blocks=blocks).select_columns(["id", "text"])
    else:
        schema = pa.schema([("id", pa.string()), ("text", pa.string())])
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        dataset = ray.data.read_json(str(path), parse_options=parse, override_num_blocks=blocks,
                                     file_extensions=None)
    if limit is not None:
        dataset = dataset.limit(limit)
    env = _runtime_env(job.spec)  # the actors' own: a Ray runtime started before the variables were set has none
    return dataset.map_batches(
        _Annotator, fn_constructor_args=(job,), batch_size=job.per_actor,
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=ACTOR_CPUS, **({"runtime_env": env} if env else {}),
    )


def _write_results(dataset: Any, documents: Iterator[CorpusDocument], total: int, out: Path, fmt: str, spec: Any,
                   concurrency: int, report: RayReport, say: Callable[[str], None], open_writer: Any,
                   failures_file: Any) -> None:
    """Take the results in input order, match each to its document read by the driver, write it (failed documents
    to the failures file too) and sum the usage."""
    from agents.models.errors import ModelUnavailable
    from annotation.ledger import ledger_path

    ledger = ledger_path(out)  # a local run's ledger no longer describes the output written anew
    for stale in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    writer = open_writer(fmt, out)
    failures = failures_file(report.failures)
    held: list[tuple[CorpusDocument, dict[str, Any]]] = []
    unreachable_after = max(UNREACHABLE_AFTER, concurrency)
    last_line = time.perf_counter()
    started = last_line

    def write(doc: CorpusDocument, result: dict[str, Any]) -> None:
        failed = result["status"] != "ok"
        spans = None if failed else [(s, e, t) for s, e, t in result["spans"]]
        writer.write(CorpusDocument(doc.id, doc.text, spans, doc.tokens, dict(doc.extra)), failed=failed)
        if failed:
            report.failed += 1
            failures.add({"id": doc.id, "reason": result["reason"], "error": result["error"], "raw": result["raw"]})
        else:
            report.ok += 1
            report.spans += len(spans)

    try:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for doc_id, raw in zip(batch.column("id").to_pylist(), batch.column("result").to_pylist(), strict=True):
                doc = next(documents, None)
                result = json.loads(raw)
                if doc is None or doc.id != doc_id or result["digest"] != _text_digest(doc.text):
                    where = "no more documents" if doc is None else f"{doc.id!r} (or another text)"
                    raise RuntimeError(f"Ray returned document {doc_id!r} where the input has {where}: the input "
                                       "changed during the run, or Ray read it otherwise")
                if "fatal" in result:
                    if result["fatal"] == "unavailable":
                        raise ModelUnavailable(result["model"], result["cause"])
                    raise InputError(result["message"], path=result["path"], line=result["line"])
                report.documents += 1
                report.usage = report.usage.add(TokenUsage(**result["usage"]))
                if result["status"] != "ok" and result["error"] in ("transport", "timeout"):
                    held.append((doc, result))
                    if len(held) >= unreachable_after:
                        raise ModelUnavailable(spec.name, f"{len(held)} documents in a row failed: {result['reason']}")
                    continue
                for earlier in held:
                    write(*earlier)
                held.clear()
                write(doc, result)
            now = time.perf_counter()
            if now - last_line >= LOG_EVERY_S:
                last_line = now
                rate = report.documents / max(now - started, 1e-9)
                say(f"{report.documents}/{total} documents, {report.failed} failed, "
                    f"{rate:.1f} docs/s")
        for earlier in held:
            write(*earlier)
        held.clear()
        if report.documents != total:
            raise RuntimeError(f"Ray returned {report.documents} results for {total} documents")
    finally:
        writer.close()
        failures.close()
        report.notes = [note for note in writer.notes() if "failed document" not in note]
