"""A throw-away PostgreSQL server for tests (never part of the product).

`PgCluster.create()` runs Debian's `initdb` into a new temporary directory, with SCRAM password authentication for
every connection, and `pg_ctl start`s it on a free loopback port (its Unix socket in the same directory, so it never
meets a system server). `stop()`/`start()` take it down and up again on the same port; `destroy()` stops it and
removes the directory. initdb refuses to run as root: as root the server runs as the `postgres` system user (or
`nobody`) through `runuser`.

`find_bin_dir()` returns None when no server binaries are installed; the caller skips with that reason. Any other
failure (initdb or the start failing) raises, with the server's log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "diziner"
DATABASE = "diziner_checkpoints"
MISSING = ("no PostgreSQL server binaries (initdb and pg_ctl) found under /usr/lib/postgresql/*/bin or on PATH: "
           "install Debian's postgresql package (make system-deps)")


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest /usr/lib/postgresql/<version>/bin, else initdb's on PATH."""
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> str | None:
    """The system user the server runs as when we are root (initdb refuses root); None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@dataclass
class PgCluster:
    """One running test server: `url()` names its database with the password, `url(password=False)` without."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, *, password: bool = True, database: str = DATABASE) -> str:
        auth = f"{USER}:{self.password}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:1])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    @classmethod
    def create(cls, bin_dir: Path) -> PgCluster:
        """initdb a new cluster in a temporary directory and start it; its database DATABASE is created."""
        run_as = _server_user()
        root = Path(tempfile.mkdtemp(prefix="diziner-pg-"))
        cluster = cls(bin_dir=bin_dir, root=root, port=0, password=secrets.token_urlsafe(12), run_as=run_as)
        try:
            pwfile = root / "pwfile"
            pwfile.write_text(cluster.password + "\n", encoding="utf-8")
            if run_as:
                entry = pwd.getpwnam(run_as)
                for p in (root, pwfile):
                    os.chown(p, entry.pw_uid, entry.pw_gid)
            root.chmod(0o700)
            cluster._run("initdb", "-D", str(cluster.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                         "-E", "UTF8", "--locale=C")
            pwfile.unlink()
            for _ in range(5):  # another process may take the free port between the probe and the start
                cluster.port = _free_port()
                try:
                    cluster.start()
                    break
                except RuntimeError:
                    if "could not bind" not in (cluster.log.read_text(errors="replace") if cluster.log.exists() else ""):
                        raise
            else:
                raise RuntimeError("no free port to start PostgreSQL on")
            import psycopg

            with psycopg.connect(cluster.url(database="postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def start(self) -> None:
        """pg_ctl start on 127.0.0.1:port, the Unix socket in the cluster's own directory; waits until it accepts."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """pg_ctl stop (fast: open connections are closed)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
