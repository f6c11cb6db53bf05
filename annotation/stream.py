"""Streaming for `diziner annotate`: the input read one document at a time, documents annotated concurrently and
written in input order (or as they finish), never the whole corpus in memory.

Reading. `scan_input` reads the input once before any model is called: it checks every document by the corpus
reader's own rules (`corpus.io`: a JSONL line or a CoNLL sentence at a time, the same InputErrors naming file, line
and problem; duplicate JSONL ids found through 8-byte hashes, so memory grows by 8 bytes per document), and finds
the format, the number of documents, whether a CoNLL file is CoNLL-2003 (four columns on every line) and the file's
fingerprint (size, modification time, SHA-256 of its first MiB) that a resumed run compares. `iter_documents`
then yields the documents one at a time, equal to what `corpus.io.read_documents` returns, id for id.

Ordering. `run_in_order` keeps at most `concurrency` documents in flight and hands each finished one to `emit`: in
input order (a document is started only while fewer than `window` documents, by default 4 x concurrency, wait for
an earlier one to finish), or as they finish (``ordered=False``). Items whose result is already known (a resumed
run's finished documents written again) pass through in their place without a call.

Writing. The formats are `annotation.exports`' writers; `FailuresFile` appends the documents that failed to
``<out>.failures.jsonl`` (id, reason, error kind, the model's raw answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corpus.io import (
    CorpusDocument,
    NotFourColumns,
    ReadStats,
    json_objects,
    numbered_lines,
    parse_conll_lines,
    parse_jsonl,
)
from state.errors import InputError

__all__ = ["FailuresFile", "InputScan", "iter_documents", "run_in_order", "scan_input"]

HEAD_BYTES = 1 << 20  # the part of the input whose hash identifies it (with its size)
_DOCSTART = "-DOCSTART-"

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class InputScan:
    """What `scan_input` found: format, documents, CoNLL-2003 or not, the reader's notes and the fingerprint."""

    path: str
    format: str  # "jsonl" or "conll"
    documents: int
    four_columns: bool = False
    stats: ReadStats = field(default_factory=lambda: ReadStats(format="conll"))
    size: int = 0
    mtime: float = 0.0
    head_sha256: str = ""

    def fingerprint(self) -> dict[str, Any]:
        """The input as the ledger records it: path, size, modification time, hash of the first MiB."""
        return {"path": self.path, "size": self.size, "mtime": self.mtime, "head_sha256": self.head_sha256}


def _format_of(path: str) -> str:
    """``jsonl`` when the first non-blank line starts with ``{`` (corpus.io's rule), else ``conll``."""
    for _, line in numbered_lines(path):
        s = line.strip()
        if s:
            return "jsonl" if s.startswith("{") else "conll"
    return "conll"


def _fingerprint(path: str) -> tuple[int, float, str]:
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=path) from None
    return st.st_size, st.st_mtime, hashlib.sha256(head).hexdigest()


def scan_input(path: str | os.PathLike[str]) -> InputScan:
    """Check every document of a JSONL or CoNLL file as `corpus.io.read_documents` would, keeping none of them."""
    p = str(path)
    if os.path.isdir(p):
        raise InputError("cannot read file: Is a directory", path=p)
    fmt = _format_of(p)
    size, mtime, head = _fingerprint(p)
    if fmt == "jsonl":
        scan = InputScan(p, "jsonl", _scan_jsonl(p), stats=ReadStats(format="jsonl"))
    else:
        try:
            count, stats = _scan_conll(p, four_columns=True)
            scan = InputScan(p, "conll", count, four_columns=stats.four_columns, stats=stats)
        except NotFourColumns:
            count, stats = _scan_conll(p, four_columns=False)
            scan = InputScan(p, "conll", count, stats=stats)
    scan.size, scan.mtime, scan.head_sha256 = size, mtime, head
    return scan


def _jsonl_documents(path: str) -> Iterator[CorpusDocument]:
    """Every JSONL document, checked alone (ids are checked for duplicates by the scan)."""
    for item in json_objects(numbered_lines(path), path):
        yield parse_jsonl((item,), path)[0]


def _scan_jsonl(path: str) -> int:
    """The number of documents; every line checked, duplicate ids an InputError naming both lines."""
    hashes = array("q")
    for doc in _jsonl_documents(path):
        hashes.append(_id_hash(doc.id))
    if len(hashes) > 1:
        _check_duplicates(path, hashes)
    return len(hashes)


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


def _check_duplicates(path: str, hashes: array) -> None:
    """An InputError for the first duplicate id (in file order), found again by a second read for colliding hashes."""
    import numpy as np

    values = np.sort(np.frombuffer(hashes, dtype=np.int64))
    repeated = values[1:][values[1:] == values[:-1]]
    if not len(repeated):
        return
    suspects = set(repeated.tolist())
    seen: dict[str, int] = {}
    for doc in _jsonl_documents(path):
        if _id_hash(doc.id) not in suspects:
            continue
        if doc.id in seen:
            raise InputError(f"duplicate document id {doc.id!r} (first on line {seen[doc.id]})", path=path,
                             line=doc.line)
        seen[doc.id] = doc.line or 0


def _sentences(path: str) -> Iterator[list[tuple[int, str]]]:
    """The lines of each CoNLL sentence (a run of non-blank lines), the blank lines between them dropped."""
    group: list[tuple[int, str]] = []
    for item in numbered_lines(path):
        line = item[1]
        if not line or line.isspace():
            if group:
                yield group
                group = []
            continue
        group.append(item)
    if group:
        yield group


def _conll_documents(path: str, four_columns: bool, stats: ReadStats) -> Iterator[CorpusDocument]:
    """The CoNLL documents one sentence at a time, by `corpus.io`'s own parser; ids ``<stem>-<n>`` as it numbers
    them. Raises `NotFourColumns` (four_columns) at the first line that is not CoNLL-2003."""
    stem = Path(path).stem
    n = 0
    for group in _sentences(path):
        docs, part = parse_conll_lines(group, path, four_columns=four_columns)
        _merge_stats(stats, part)
        for doc in docs:
            n += 1
            doc.id = f"{stem}-{n}"
            yield doc


def _merge_stats(into: ReadStats, part: ReadStats) -> None:
    """Add one sentence's reader notes (only the first line of each kind is kept: that is all a warning quotes)."""
    into.four_columns = into.four_columns or part.four_columns
    if part.repairs:
        into.repairs += part.repairs
        if not into.repair_lines:
            into.repair_lines.append(part.repair_lines[0])
    if part.empty_entities_skipped:
        into.empty_entities_skipped += part.empty_entities_skipped
        if not into.empty_entity_lines:
            into.empty_entity_lines.append(part.empty_entity_lines[0])


def _scan_conll(path: str, four_columns: bool) -> tuple[int, ReadStats]:
    stats = ReadStats(format="conll")
    count = sum(1 for _ in _conll_documents(path, four_columns, stats))
    return count, stats


def iter_documents(scan: InputScan) -> Iterator[CorpusDocument]:
    """The documents of a scanned input, one at a time, in file order (as `corpus.io.read_documents` reads them)."""
    if scan.format == "jsonl":
        return _jsonl_documents(scan.path)
    return _conll_documents(scan.path, scan.four_columns, ReadStats(format="conll"))


# ---------------------------------------------------------------------------------------------------- ordering


async def run_in_order(
    items: Iterable[tuple[T, R | None]],
    work: Callable[[T], Awaitable[R]],
    emit: Callable[[T, R], None],
    *,
    concurrency: int,
    ordered: bool = True,
    window: int | None = None,
    may_start: Callable[[int], bool] | None = None,
) -> bool:
    """Run `work` on every item whose result is not given (at most `concurrency` at once) and `emit` every item with
    its result: in the items' order (at most `window` items, default 4 x concurrency, started past the first one
    not yet emitted), or as they finish. `may_start(in_flight)` is asked before each call; once it says no, nothing
    more is started, the calls in flight finish and are emitted, and the return value is False (True: every item
    was emitted). An exception from `work` or `emit` cancels the calls in flight and propagates."""
    limit = max(1, concurrency)
    window = max(limit, window or 4 * limit)
    finished: asyncio.Queue[asyncio.Task[R]] = asyncio.Queue()
    in_flight: dict[asyncio.Task[R], tuple[int, T]] = {}
    ready: dict[int, tuple[T, R]] = {}
    source = iter(items)
    started = next_out = 0
    exhausted = stopped = False
    passed = 0  # known items passed through since the loop last yielded

    def flush() -> None:
        nonlocal next_out
        if ordered:
            while next_out in ready:
                item, result = ready.pop(next_out)
                next_out += 1
                emit(item, result)
        else:
            while ready:
                item, result = ready.pop(next(iter(ready)))
                emit(item, result)

    try:
        while True:
            while (not exhausted and not stopped and len(in_flight) < limit
                   and (not ordered or started - next_out < window)):
                try:
                    item, known = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if known is not None:
                    ready[started] = (item, known)
                    started += 1
                    flush()
                    passed += 1
                    if passed >= 256:  # a long run of known items: let the calls in flight move on
                        passed = 0
                        await asyncio.sleep(0)
                    continue
                if may_start is not None and not may_start(len(in_flight)):
                    stopped = True
                    break
                task = asyncio.ensure_future(work(item))
                in_flight[task] = (started, item)
                task.add_done_callback(finished.put_nowait)
                started += 1
            if not in_flight:
                flush()
                return not stopped
            done = [await finished.get()]
            while not finished.empty():
                done.append(finished.get_nowait())
            for task in done:
                index, item = in_flight.pop(task)
                ready[index] = (item, task.result())
            flush()
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


# ---------------------------------------------------------------------------------------------------- writing


class FailuresFile:
    """``<out>.failures.jsonl``: one line per failed document ({"id", "reason", "error", "raw"}), flushed at once."""

    def __init__(self, path: str | os.PathLike[str], records: Iterable[dict[str, Any]] = ()) -> None:
        """Open it anew (an existing file is replaced) with `records` first (a resumed run's earlier failures)."""
        self.path = Path(path)
        try:
            self._fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise InputError(f"cannot write file: {exc.strerror or exc}", path=str(self.path)) from None
        self.count = 0
        for record in records:
            self._fh.write(_line(record))
            self.count += 1
        self._fh.flush()

    def add(self, record: dict[str, Any]) -> None:
        """Append one failed document and flush."""
        self._fh.write(_line(record))
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _line(record: dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: escaped, reads back the same
        return json.dumps(record).encode("ascii") + b"\n"
