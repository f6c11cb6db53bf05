"""Where `diziner refine` keeps its checkpoints: `checkpoints.sqlite` in the run directory (the default), or a
PostgreSQL database named with `--checkpoint-db postgresql://user:password@host:port/dbname`, so that a run can be
resumed on another machine that sees the same database.

run.json records the URL without its password (`redact`). A resumed run connects with that URL, libpq taking the
password from PGPASSWORD or ~/.pgpass as usual, or with `--checkpoint-db` given again, which must name the same
database apart from the password (`resume_url`). Both checkpointers use the graph's serializer allowlist
(`graph.builder.checkpoint_serde()`), passed in by the caller.

Bad URLs and a missing `postgres` extra are InputErrors (exit 2), found before the run directory is touched. A server
that cannot be reached is a `CheckpointDatabaseError` (exit 1) naming host and port: run.json is already written, so
the run resumes once the server is up.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from state.errors import InputError

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from cli.rundir import RunRecord

__all__ = ["CheckpointDatabaseError", "attach", "new_run_url", "open_saver", "redact", "resume_url"]

FLAG = "--checkpoint-db"
INSTALL_HINT = "pip install 'diziner[postgres]'  (langgraph-checkpoint-postgres and psycopg[binary])"
SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
SQLITE_FILE = "checkpoints.sqlite"  # cli.rundir.CHECKPOINTS


class CheckpointDatabaseError(RuntimeError):
    """The checkpoint database could not be reached or set up (not the user's input syntax: exit 1, resumable)."""


# ---------------------------------------------------------------- the URL


def redact(url: str | None) -> str | None:
    """The URL without its password (in the user part or as a ``password`` query parameter): what run.json keeps."""
    if url is None:
        return None
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _scrub(message: str, url: str) -> str:
    """A libpq message with the URL's password (as written in it) replaced by ***: libpq quotes bad tokens."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        secrets = [userinfo.partition(":")[2]] + [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                                                   if k == "password"]
        secrets += [raw.partition("=")[2] for raw in parts.query.split("&") if raw.startswith("password=")]
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            message = message.replace(secret, "***")
    return " ".join(message.split())


def _require_postgres() -> None:
    """The `postgres` extra must be installed for --checkpoint-db."""
    try:
        import psycopg  # noqa: F401
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver  # noqa: F401
    except ImportError as exc:
        raise InputError(f"{FLAG} needs the PostgreSQL checkpointer, which is not installed ({exc}): "
                         f"{INSTALL_HINT}") from None


def _conninfo(url: str) -> dict[str, str]:
    """The URL's connection parameters as libpq reads them; a URL libpq rejects is an InputError naming the option."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except Error as exc:
        raise InputError(f"{FLAG}: not a PostgreSQL URL libpq can read: {_scrub(str(exc), url)}") from None
    for port in filter(None, info.get("port", "").split(",")):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"{FLAG}: the port must be a number from 1 to 65535, got {port!r}")
    return info


def _checked(url: str) -> dict[str, str]:
    """Check a --checkpoint-db URL (scheme, the extra installed, libpq's syntax); its connection parameters."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:  # the value is not echoed: it may hold a password
        got = f"scheme {scheme!r}" if scheme else "no scheme://"
        raise InputError(f"{FLAG} must be a URL postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME (got {got})")
    try:
        urlsplit(url)
    except ValueError as exc:
        raise InputError(f"{FLAG}: not a URL: {exc}") from None
    _require_postgres()
    return _conninfo(url)


def new_run_url(given: str | None) -> str | None:
    """The --checkpoint-db of a new run, checked before anything is written (None: SQLite in the run directory)."""
    if given is None:
        return None
    _checked(given)
    return given


def resume_url(saved: str | None, given: str | None, run_dir: Path) -> str | None:
    """The URL a resumed run connects with: --checkpoint-db when given (it must name the run's database, apart from
    the password), else the saved URL (libpq then finds the password in PGPASSWORD or ~/.pgpass)."""
    if given is None:
        if saved is not None:
            _require_postgres()
        return saved
    if saved is None:
        raise InputError(f"this run keeps its checkpoints in {SQLITE_FILE} in the run directory; {FLAG} cannot move "
                         "them to another database (resume without it)", path=str(run_dir))
    want = _checked(given)
    have = _conninfo(saved)
    want.pop("password", None)
    have.pop("password", None)
    diffs = [f"{key} {want.get(key)!r} (the run has {have.get(key)!r})"
             for key in sorted(want.keys() | have.keys()) if want.get(key) != have.get(key)]
    if diffs:
        raise InputError(f"{FLAG} names another database than the run's ({saved}); only the password may differ: "
                         + "; ".join(diffs), path=str(run_dir))
    return given


def attach(record: RunRecord, url: str | None) -> None:
    """Give `record` this session's checkpoint URL, password included (kept in memory only, never written)."""
    record._checkpoint_url = url


def endpoint(info: dict[str, str]) -> str:
    """HOST:PORT of connection parameters, libpq's defaults filled in (PGHOST/PGPORT, else localhost:5432)."""
    host = info.get("host") or os.environ.get("PGHOST") or "localhost"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    return f"{host}:{port}"


# ---------------------------------------------------------------- the saver


@contextlib.asynccontextmanager
async def open_saver(run_dir: Path, record: RunRecord, *, serde: Any) -> AsyncIterator[BaseCheckpointSaver]:
    """The run's checkpointer, open for the session: AsyncSqliteSaver on RUN_DIR/checkpoints.sqlite, or
    AsyncPostgresSaver on the run's database (its tables set up once per session)."""
    url = record._checkpoint_url or record.checkpoint_db
    if url is None:
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        # a generous busy timeout: a writer of an interrupted session (a thread still closing) may hold the lock
        async with aiosqlite.connect(str(run_dir / SQLITE_FILE), timeout=60) as conn:
            yield AsyncSqliteSaver(conn, serde=serde)
        return
    _require_postgres()
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection, Error, OperationalError
    from psycopg.rows import dict_row

    info = _conninfo(url)
    where = f"{endpoint(info)} (database {info.get('dbname') or 'default'}, user {info.get('user') or 'default'})"
    options: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    if "connect_timeout" not in info:
        options["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn = await AsyncConnection.connect(url, **options)
    except Error as exc:
        reason = _scrub(str(exc), url)
        hint = ""
        if "password" in reason.lower() and "password" not in info:
            hint = (f"; the URL has no password: set PGPASSWORD, add it to ~/.pgpass, or give {FLAG} again with "
                    "the password")
        raise CheckpointDatabaseError(f"cannot reach the checkpoint database at {where}: {reason}{hint}") from None
    async with conn:
        saver = AsyncPostgresSaver(conn, serde=serde)
        try:
            await saver.setup()
        except Error as exc:
            raise CheckpointDatabaseError(
                f"cannot set up the checkpoint tables in the database at {where}: {_scrub(str(exc), url)}"
            ) from None
        try:
            yield saver
        except OperationalError as exc:  # the server went away during the run
            raise CheckpointDatabaseError(
                f"lost the checkpoint database at {where}: {_scrub(str(exc), url)}"
            ) from None
