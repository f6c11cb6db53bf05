"""The ledger of `diziner annotate`: which documents are done, durably, so that a run stopped in any way continues
without asking the model again for any finished document.

One SQLite file beside the output, ``<out>.ledger.sqlite`` (WAL journal, so a killed process loses nothing that
was committed). It holds:

- a header (`header`): the ledger format, the configuration hash (the configuration, its round, the label mapping
  and the chunking, everything that decides the requests and what is written), the model (its name and the settings
  that decide its answers), the input file (path, size, modification time and the SHA-256 of its first MiB) and the
  output (path, format, order). A resume compares it with the new command and refuses another configuration, model,
  input or output format (`differences`).
- one row per finished document (`Entry`), keyed by its position in the input and by a stable request id (a hash
  of the document id, the model and the configuration hash): done or failed, its spans with the dataset's labels
  (or why it failed, and the model's answer), the call-cache key of each request made for it (one per chunk), the
  tokens it used, and its place in the output's write order (`wpos`).
- the output writer's marks (`annotation.exports.Mark`): how much of the output is safely written.

A document's row is committed (one statement, one transaction) before its output is written (`record`), holding
the mark of everything written before it. So after a crash every document whose output may be in the file has a
row, and the latest row (or the mark saved when a session ended, if later) says how far the output can be kept; a
resume cuts the output back to that mark and writes the documents after it again from their rows (`prepare`),
never asking the model again for any of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.errors import InputError
from state.graph_state import TokenUsage

__all__ = ["LEDGER_FORMAT", "Entry", "Ledger", "Totals", "configuration_hash", "differences", "ledger_path",
           "request_id"]

LEDGER_FORMAT = 1
_SUFFIXES = ("", "-wal", "-shm", "-journal")
_USAGE = ("input_tokens", "cached_input_tokens", "output_tokens", "calls", "estimated_calls", "cache_hits",
          "cache_input_tokens", "cache_output_tokens")
_PAGE = 512


def ledger_path(out: str | os.PathLike[str]) -> Path:
    """``<out>.ledger.sqlite``."""
    return Path(f"{out}.ledger.sqlite")


def configuration_hash(configuration: Any, round_: int, labels: dict[str, str], chunk_chars: int | None) -> str:
    """The hash of everything that decides a document's requests and what is written for it: the configuration
    (`state.models.TaskConfiguration`), its round (the prompt names it), the label mapping and the chunk size."""
    payload = {"configuration": configuration.model_dump(mode="json", by_alias=True), "round": round_,
               "labels": labels, "chunk_chars": chunk_chars}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def request_id(document_id: str, chunk: int | None, model: str, configuration_hash: str) -> str:
    """The stable id of one request: document, chunk (None: the whole document), model and configuration."""
    text = "\x1f".join((document_id, "" if chunk is None else str(chunk), model, configuration_hash))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(slots=True)
class Entry:
    """One finished document as the ledger keeps it."""

    seq: int  # position in the input, from 0
    doc_id: str
    request_id: str
    status: str  # "ok" or "failed"
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # with the dataset's labels, sorted
    reason: str = ""
    error: str = ""  # the failure's kind (agents.models.errors), "" when ok
    raw: str | None = None  # the model's answer of a failed document
    requests: list[dict[str, Any]] = field(default_factory=list)  # {chunk, start, end, request_id, cache_key}
    usage: TokenUsage = field(default_factory=TokenUsage)
    wpos: int | None = None  # place in the output's write order; None: not (or no longer) in the output

    @property
    def failed(self) -> bool:
        return self.status != "ok"

    def failure_record(self) -> dict[str, Any]:
        """The document's line in the failures file."""
        return {"id": self.doc_id, "reason": self.reason, "error": self.error, "raw": self.raw}


@dataclass(slots=True)
class Totals:
    """What the ledger holds in all: documents done and failed, entities, and the tokens every session used."""

    ok: int = 0
    failed: int = 0
    spans: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)

    @property
    def documents(self) -> int:
        return self.ok + self.failed


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why an output written under the `stored` header cannot be continued under the `current` one (empty: it can)."""
    out = []
    if stored.get("format") != current.get("format"):
        out.append(f"the ledger has format {stored.get('format')!r}, this diziner writes format {current.get('format')!r}")
        return out
    s_conf, c_conf = stored.get("configuration", {}), current.get("configuration", {})
    if s_conf.get("hash") != c_conf.get("hash"):
        out.append(f"another configuration: the output was written with {_configuration(s_conf)}, this command "
                   f"applies {_configuration(c_conf)}")
    s_model, c_model = stored.get("model", {}), current.get("model", {})
    if s_model.get("name") != c_model.get("name"):
        out.append(f"another model: the output was written by {s_model.get('name')}, this command uses "
                   f"{c_model.get('name')}")
    else:
        changed = [f"{k} {s_model.get(k)!r} -> {c_model.get(k)!r}" for k in sorted(set(s_model) | set(c_model))
                   if s_model.get(k) != c_model.get(k)]
        if changed:
            out.append(f"another setting of model {c_model.get('name')}: {', '.join(changed)}")
    s_in, c_in = stored.get("input", {}), current.get("input", {})
    if (s_in.get("size"), s_in.get("head_sha256")) != (c_in.get("size"), c_in.get("head_sha256")):
        out.append(f"another input: the output was written from {s_in.get('path')} ({s_in.get('size')} bytes), "
                   f"this command reads {c_in.get('path')} ({c_in.get('size')} bytes"
                   f"{', other content' if s_in.get('size') == c_in.get('size') else ''})")
    s_out, c_out = stored.get("output", {}), current.get("output", {})
    if s_out.get("format") != c_out.get("format"):
        out.append(f"another output format: the output is {s_out.get('format')}, this command writes "
                   f"{c_out.get('format')}")
    if s_out.get("order") != c_out.get("order"):
        out.append(f"another order: the output was written {_order(s_out.get('order'))}, this command writes "
                   f"{_order(c_out.get('order'))}")
    return out


def _configuration(conf: dict[str, Any]) -> str:
    return f"the configuration of round {conf.get('round')} · {conf.get('annotator')} (hash {str(conf.get('hash'))[:12]})"


def _order(order: Any) -> str:
    return "in input order" if order == "input" else "as documents finished (--unordered)"


class Ledger:
    """One ledger file (see the module docstring). Not thread-safe: one event loop uses it."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: dict[str, Any]) -> Ledger:
        """A new, empty ledger with `header` (an existing one is removed)."""
        path = Path(path)
        remove(path)
        ledger = cls(path, _connect(path))
        ledger._conn.execute("BEGIN")
        ledger._conn.execute("INSERT INTO meta VALUES ('header', ?)", (json.dumps(header, sort_keys=True),))
        ledger._conn.execute("INSERT INTO meta VALUES ('mark', ?)", (json.dumps({"mark": None, "written": 0}),))
        ledger._conn.execute("COMMIT")
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        """An existing ledger; InputError when it cannot be read as one."""
        path = Path(path)
        if not path.is_file():
            raise InputError("no ledger found", path=str(path))
        try:
            ledger = cls(path, _connect(path))
            ledger.header  # noqa: B018 (read once to check it)
        except (sqlite3.DatabaseError, ValueError, KeyError) as exc:
            raise InputError(f"the ledger cannot be read ({exc}); run without --resume to start the output again",
                             path=str(path)) from None
        return ledger

    @property
    def header(self) -> dict[str, Any]:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'header'").fetchone()
        if row is None:
            raise KeyError("no header")
        return json.loads(row[0])

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ the output's mark

    @property
    def mark(self) -> dict[str, Any] | None:
        """The writer's latest mark (None: nothing of the output can be kept): the one saved when a session ended,
        or the one the latest row holds when that row came after it."""
        saved = json.loads(self._conn.execute("SELECT value FROM meta WHERE key = 'mark'").fetchone()[0])
        row = self._conn.execute("SELECT wpos, mark FROM documents WHERE wpos IS NOT NULL ORDER BY wpos DESC "
                                 "LIMIT 1").fetchone()
        if row is not None and row[0] >= saved["written"]:
            return json.loads(row[1])
        return saved["mark"]

    def set_mark(self, mark: dict[str, Any] | None, written: int) -> None:
        """Record how far the output is safely written, `written` documents in all."""
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'mark'",
                           (json.dumps({"mark": mark, "written": written}),))

    def prepare(self, *, rebuild: bool) -> dict[str, Any] | None:
        """Before a session writes: documents past the mark (or, with `rebuild`, every document: the output is
        written anew) are taken out of the output, to be written again from their rows; the mark to resume from."""
        mark = None if rebuild else self.mark
        kept = int(mark.get("documents", 0)) if mark else 0
        self._conn.execute("BEGIN")
        self._conn.execute("UPDATE documents SET wpos = NULL WHERE wpos >= ?", (kept,))
        self._conn.execute("UPDATE meta SET value = ? WHERE key = 'mark'",
                           (json.dumps({"mark": mark, "written": kept}),))
        self._conn.execute("COMMIT")
        return mark

    # ------------------------------------------------------------------ documents

    def record(self, entry: Entry, wpos: int, mark: dict[str, Any] | None, *, replay: bool = False) -> None:
        """Commit one document at its place `wpos` in the output, with the mark of what is written before it. A
        replayed document (written again from its row) only moves; a document worked again (a retried failure)
        replaces its row, the tokens of both attempts kept."""
        marked = json.dumps(mark)
        if replay:
            self._conn.execute("UPDATE documents SET wpos = ?, mark = ? WHERE seq = ?", (wpos, marked, entry.seq))
        else:
            u = entry.usage
            self._conn.execute(_UPSERT, (
                entry.seq, entry.doc_id, entry.request_id, entry.status, json.dumps(entry.spans, ensure_ascii=False),
                len(entry.spans), entry.reason, entry.error, entry.raw, json.dumps(entry.requests, ensure_ascii=False),
                wpos, marked, *(getattr(u, k) for k in _USAGE)))
        entry.wpos = wpos

    def entries(self) -> Iterator[Entry]:
        """Every row, in input order (read a page at a time)."""
        last = -1
        while True:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM documents WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (last, _PAGE)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            last = rows[-1][0]

    def written_failures(self) -> Iterator[Entry]:
        """The failed documents in the output, in write order."""
        last = -1
        while True:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM documents WHERE status != 'ok' AND wpos > ? ORDER BY wpos LIMIT ?",
                (last, _PAGE)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            last = rows[-1][-1]

    def written(self) -> int:
        """Documents in the output (by the rows)."""
        return self._conn.execute("SELECT count(*) FROM documents WHERE wpos IS NOT NULL").fetchone()[0]

    def totals(self) -> Totals:
        """Documents, entities and tokens over every row."""
        sums = ", ".join(f"coalesce(sum({k}), 0)" for k in _USAGE)
        row = self._conn.execute(
            f"SELECT coalesce(sum(status = 'ok'), 0), coalesce(sum(status != 'ok'), 0), coalesce(sum(n_spans), 0), "
            f"{sums} FROM documents").fetchone()
        return Totals(row[0], row[1], row[2], TokenUsage(**dict(zip(_USAGE, row[3:], strict=True))))

    def first_failures(self, n: int) -> list[Entry]:
        """The first `n` failed documents in input order."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM documents WHERE status != 'ok' ORDER BY seq LIMIT ?",
                                  (n,)).fetchall()
        return [_entry(r) for r in rows]


_UPSERT = (
    "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(seq) DO UPDATE SET doc_id = excluded.doc_id, request_id = excluded.request_id, "
    "status = excluded.status, spans = excluded.spans, n_spans = excluded.n_spans, reason = excluded.reason, "
    "error = excluded.error, raw = excluded.raw, requests = excluded.requests, wpos = excluded.wpos, "
    "mark = excluded.mark, " + ", ".join(f"{k} = {k} + excluded.{k}" for k in _USAGE)
)
_COLUMNS = ("seq, doc_id, request_id, status, spans, reason, error, raw, requests, "
            + ", ".join(_USAGE) + ", wpos")


def _entry(row: tuple[Any, ...]) -> Entry:
    seq, doc_id, rid, status, spans, reason, error, raw, requests = row[:9]
    usage = TokenUsage(**dict(zip(_USAGE, row[9:9 + len(_USAGE)], strict=True)))
    return Entry(seq, doc_id, rid, status, [tuple(s) for s in json.loads(spans)], reason or "", error or "", raw,
                 json.loads(requests), usage, row[-1])


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a commit survives a killed process; a power loss may lose the last
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS documents (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, "
            "request_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, spans TEXT NOT NULL, n_spans INTEGER NOT NULL, "
            "reason TEXT, error TEXT, raw TEXT, requests TEXT NOT NULL, wpos INTEGER, mark TEXT, "
            + ", ".join(f"{k} INTEGER NOT NULL DEFAULT 0" for k in _USAGE) + ")"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS documents_wpos ON documents (wpos)")
    except sqlite3.DatabaseError:
        raise
    except OSError as exc:
        raise InputError(f"cannot write the ledger: {exc.strerror or exc}", path=str(path)) from None
    return conn


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a ledger file and its journal files."""
    for suffix in _SUFFIXES:
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InputError(f"cannot remove the old ledger: {exc.strerror or exc}", path=f"{path}{suffix}") from None
