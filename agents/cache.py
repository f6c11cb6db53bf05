"""The persistent LLM-call cache: never pay twice for the same question to the same model.

Keyed by (model, its sampling settings, the output schema and mode, the messages); the value is the model's reply
text and the usage the server reported for it. One SQLite file shared by every run and command
(`--cache-dir`, else ``DIZINER_CACHE_DIR``, else the user's cache directory, e.g. ``~/.cache/diziner``). A cache file
that cannot be read, or was written by another format version, is set aside and rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FILE", "CallCache", "CachedReply", "cache_key", "chat_messages", "default_cache_dir", "open_cache"]

log = logging.getLogger(__name__)

CACHE_FILE = "llm-calls.sqlite"
_FORMAT = 1
_caches: dict[Path, CallCache] = {}
_caches_lock = threading.Lock()


def default_cache_dir() -> Path:
    """``DIZINER_CACHE_DIR``, else ``$XDG_CACHE_HOME/diziner``, else ``~/.cache/diziner``."""
    explicit = os.environ.get("DIZINER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diziner"


def chat_messages(turns: list[str]) -> list[dict[str, str]]:
    """Alternating user and assistant messages, as a cache key and a request body hold them."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def cache_key(spec: Any, schema: dict[str, Any], mode: str, messages: list[dict[str, str]]) -> str:
    """The SHA-256 of everything that decides a deterministic model's answer."""
    sampling = {
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "frequency_penalty": spec.profile.frequency_penalty,
        "context_window": spec.context_window,
    }
    from agents.models.clients import endpoint

    payload = {"model": spec.name, "base_url": endpoint(spec), "sampling": sampling, "mode": mode, "schema": schema,
               "messages": messages}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedReply:
    text: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    truncated: bool


class CallCache:
    """One SQLite cache file; safe to use from several threads and processes (WAL, short transactions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            stale = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            log.warning("the LLM-call cache %s cannot be used (%s): moved to %s and rebuilt", self.path, exc, stale)
            for suffix in ("", "-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    side.replace(Path(str(stale) + suffix))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(_FORMAT),))
            elif row[0] != str(_FORMAT):
                raise sqlite3.DatabaseError(f"cache format {row[0]}, this diziner writes format {_FORMAT}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, model TEXT NOT NULL, reply TEXT NOT NULL, "
                "input_tokens INTEGER NOT NULL, cached_input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, "
                "truncated INTEGER NOT NULL, created REAL NOT NULL)"
            )
            conn.execute("SELECT count(*) FROM calls").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def get(self, key: str) -> CachedReply | None:
        """The stored reply for `key`, or None."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT reply, input_tokens, cached_input_tokens, output_tokens, truncated FROM calls WHERE key = ?",
                    (key,),
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                log.warning("the LLM-call cache %s could not be read (%s): calling the model", self.path, exc)
                return None
        return CachedReply(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def put(self, key: str, model: str, reply: CachedReply) -> None:
        """Store a reply (a later identical call is answered from here)."""
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, model, reply.text, reply.input_tokens, reply.cached_input_tokens, reply.output_tokens,
                     int(reply.truncated), time.time()),
                )
            except sqlite3.DatabaseError as exc:
                log.warning("the LLM-call cache %s could not be written (%s)", self.path, exc)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_cache(directory: str | os.PathLike[str] | None = None) -> CallCache:
    """The cache in `directory` (default: `default_cache_dir()`), opened once per process."""
    path = (Path(directory) if directory else default_cache_dir()).resolve() / CACHE_FILE
    with _caches_lock:
        cache = _caches.get(path)
        if cache is None:
            cache = _caches[path] = CallCache(path)
        return cache
