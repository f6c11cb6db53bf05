"""`diziner refine --checkpoint-db postgresql://...` against a real PostgreSQL server (tests/pg_cluster.py).

The main test kills a refine run with SIGKILL in the middle of round 2's annotate step (scripted models; annotator c
hangs on its first round-2 document, a and b have finished and their writes are in the database), resumes it in a
new process with the password only in PGPASSWORD, and checks that it writes every file of an uninterrupted SQLite
run and runs no finished node again. Others: the password never reaches the run directory; the saved URL and the
--checkpoint-db given on resume; ~/.pgpass (through PGPASSFILE); a server that is down (exit 1 naming host:port,
resumable once it is up); bad URLs and the missing extra (exit 2, nothing written).

The server tests (marked integration: they start a real server and subprocesses, about 20 s) skip, with the reason,
only when no PostgreSQL server binaries are installed; a server that is installed but fails to start fails them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import agents.models
from cli import rundir
from cli.main import main
from tests.pg_cluster import MISSING, PgCluster, find_bin_dir
from tests.scripted import ScriptedModels, write_pool
from tests.test_cli_refine import refine_args, respond_for, run_files
from tests.test_resume import node_lines, wait_exit

ROOT = Path(__file__).resolve().parents[1]
HANG_ENV = "DIZINER_TEST_HANG_MARKER"  # the launcher's annotator c hangs on round 2 and touches this file


# ---------------------------------------------------------------- the subprocess launcher


def hanging_respond_for(name: str, marker: str | None):
    """The scripted team of test_cli_refine; with `marker`, annotator c hangs on its first round-2 document (its
    prompt carries the round-1 supervisor's RULE-1) after touching `marker`."""
    respond = respond_for(name)
    if marker is None or name != "openai:c":
        return respond

    def respond_or_hang(prompt: str, schema: str):
        if schema == "Entities" and "RULE-1" in prompt:
            Path(marker).touch()
            threading.Event().wait()  # until the process is killed
        return respond(prompt, schema)

    return respond_or_hang


def launch(argv: list[str]) -> int:
    """`diziner ARGV` with the scripted models installed (run in a subprocess by the tests below)."""
    marker = os.environ.get(HANG_ENV)
    agents.models.chat_model = ScriptedModels(lambda name: hanging_respond_for(name, marker))
    return main(argv)


def _env(**extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != HANG_ENV}
    env.update(PYTHONUNBUFFERED="1", LANGSMITH_TRACING="false", PYTHONPATH=str(ROOT))
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _diziner(argv: list[str], log: Path, **env: str | None) -> subprocess.Popen:
    code = "import sys; from tests.test_postgres import launch; sys.exit(launch(sys.argv[1:]))"
    with open(log, "w", encoding="utf-8") as fh:
        return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, env=_env(**env),
                                stdout=subprocess.DEVNULL, stderr=fh)


def _comparable(run_dir: Path) -> dict[str, object]:
    """Every file of a run directory; run.json and summary.json without what differs between two runs of the same
    inputs (identifiers, times, sessions, where the checkpoints are)."""
    files: dict[str, object] = dict(run_files(run_dir))
    run = json.loads((run_dir / rundir.RUN_FILE).read_text(encoding="utf-8"))
    files["run.json"] = {k: v for k, v in run.items() if k not in ("thread_id", "created", "sessions", "checkpoint_db")}
    summary = json.loads((run_dir / rundir.SUMMARY).read_text(encoding="utf-8"))
    summary = {k: v for k, v in summary.items() if k not in ("thread_id", "session_seconds")}
    for r in summary["rounds"]:
        r.pop("seconds")
        for usage in r["token_usage"].values():
            usage.pop("seconds", None)
    files["summary.json"] = summary
    return files


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(MISSING)
    server = PgCluster.create(bin_dir)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.jsonl")


@pytest.fixture
def models(scripted_models) -> ScriptedModels:
    return scripted_models(respond_for)


@pytest.fixture
def no_password(monkeypatch, tmp_path):
    """libpq finds no password of its own: no PGPASSWORD, and a password file that does not exist."""
    for key in [k for k in os.environ if k.startswith("PG")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


def _checkpoint_rows(cluster: PgCluster, thread_id: str) -> int:
    import psycopg

    with psycopg.connect(cluster.url()) as conn:
        return conn.execute("select count(*) from checkpoints where thread_id = %s", (thread_id,)).fetchone()[0]


def _step_in_database(cluster: PgCluster, thread_id: str) -> tuple[dict[str, str], set[str], tuple[str, ...]]:
    """(tasks by id -> node, ids of the tasks whose writes are saved, the nodes still to run) of the latest checkpoint."""
    from langgraph.checkpoint.postgres import PostgresSaver

    from graph.builder import build_graph, checkpoint_serde

    config = {"configurable": {"thread_id": thread_id}}
    with PostgresSaver.from_conn_string(cluster.url()) as saver:
        saver.serde = checkpoint_serde()
        snapshot = build_graph(lambda spec: None).compile(checkpointer=saver).get_state(config)
        saved = saver.get_tuple(config)
    tasks = {t.id: t.name for t in snapshot.tasks}
    return tasks, {w[0] for w in saved.pending_writes or []}, tuple(snapshot.next)


# ---------------------------------------------------------------- kill -9, resume from PostgreSQL


@pytest.mark.integration  # a real PostgreSQL server
def test_kill_9_then_resume_from_postgres_gives_the_sqlite_run_files(cluster, pool, tmp_path, no_password):
    # refine's options, for the launcher; no call cache, so the killed run calls (and hangs on) c as the first did
    args = lambda out: refine_args(out, pool, "--no-cache", loops=3)[1:]  # noqa: E731

    # 1. the reference: an uninterrupted run on SQLite
    reference, ref_log = tmp_path / "reference", tmp_path / "reference.log"
    ref_text = wait_exit(_diziner(["refine", *args(reference)], ref_log), ref_log, timeout=180)
    assert (reference / rundir.CHECKPOINTS).is_file() and (reference / rundir.GUIDELINE_JSON).is_file()

    # 2. the same run on PostgreSQL, killed in round 2's annotate step once a and b are saved and c hangs
    out, log1, marker = tmp_path / "killed", tmp_path / "killed.log", tmp_path / "c-hangs"
    proc = _diziner(["refine", *args(out), "--checkpoint-db", cluster.url()], log1, **{HANG_ENV: str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log1.read_text()}"
        assert time.monotonic() < deadline, log1.read_text()
        time.sleep(0.05)
    thread_id = json.loads((out / rundir.RUN_FILE).read_text(encoding="utf-8"))["thread_id"]
    while True:  # a and b finish in the same step as c: wait until their writes are in the database
        tasks, done, pending = _step_in_database(cluster, thread_id)
        if len(done & set(tasks)) == 2:
            break
        assert time.monotonic() < deadline, (tasks, done)
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_text = log1.read_text(encoding="utf-8")
    assert pending == ("annotate",) and sorted(tasks.values()) == ["annotate"] * 3, (tasks, pending)
    assert sum(ln.startswith("round 2 · annotate") for ln in node_lines(killed_text)) == 2, killed_text
    assert not (out / rundir.GUIDELINE_JSON).exists()
    assert not list(out.glob(rundir.CHECKPOINTS + "*")), "a PostgreSQL run wrote checkpoints.sqlite"
    saved = json.loads((out / rundir.RUN_FILE).read_text(encoding="utf-8"))["checkpoint_db"]
    assert saved == cluster.url(password=False)
    assert _checkpoint_rows(cluster, thread_id) > 5

    # 3. resume in a new process, the password only in PGPASSWORD
    log2 = tmp_path / "resumed.log"
    resumed = _diziner(["refine", "--resume", out], log2, PGPASSWORD=cluster.password)
    resumed_text = wait_exit(resumed, log2, timeout=180)
    assert "resuming at round 2" in resumed_text, resumed_text

    # every file as the uninterrupted SQLite run wrote it, and no finished node ran again
    resumed_files, reference_files = _comparable(out), _comparable(reference)
    assert sorted(resumed_files) == sorted(reference_files)
    assert {"guideline.json", "round-2/annotations.jsonl", "round-3/report.md"} <= set(reference_files)
    for name, content in reference_files.items():
        assert resumed_files[name] == content, name
    before, after = node_lines(killed_text), node_lines(resumed_text)
    assert before and not set(before) & set(after), (before, after)
    assert sorted(before + after) == sorted(node_lines(ref_text))
    assert after.count("round 2 · annotate · openai:c") == 1 and "round 2 · annotate · openai:a" not in after

    # the password is nowhere in the run directory
    password = cluster.password.encode()
    assert not [p for p in out.rglob("*") if p.is_file() and password in p.read_bytes()]


# ---------------------------------------------------------------- the saved URL, the password, a server that is down


@pytest.mark.integration  # a real PostgreSQL server
def test_password_sources_and_the_url_given_again(cluster, pool, tmp_path, models, capsys, no_password):
    out = tmp_path / "run"
    assert main(refine_args(out, pool, "--checkpoint-db", cluster.url(), loops=1)) == 0
    record = json.loads((out / rundir.RUN_FILE).read_text(encoding="utf-8"))
    assert record["checkpoint_db"] == cluster.url(password=False)
    capsys.readouterr()

    # no password anywhere: exit 1 naming the server, with the ways to give one
    assert main(["refine", "--resume", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the checkpoint database at 127.0.0.1:{cluster.port}" in err
    assert "PGPASSWORD" in err and "--resume" in err and cluster.password not in err
    # ~/.pgpass (libpq's password file, here through PGPASSFILE)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{cluster.port}:*:diziner:{cluster.password}\n", encoding="utf-8")
    pgpass.chmod(0o600)
    os.environ["PGPASSFILE"] = str(pgpass)  # restored by no_password's monkeypatch
    assert main(["refine", "--resume", str(out)]) == 0
    assert "already finished" in capsys.readouterr().err
    os.environ["PGPASSFILE"] = str(tmp_path / "no-such-pgpass")
    # --checkpoint-db again, with the password: the same database
    assert main(["refine", "--resume", str(out), "--checkpoint-db", cluster.url()]) == 0
    assert "already finished" in capsys.readouterr().err
    # another database, user or host: exit 2 naming the difference
    for other, diff in ((cluster.url(database="elsewhere"), "dbname 'elsewhere' (the run has 'diziner_checkpoints')"),
                        (cluster.url().replace("127.0.0.1", "localhost"), "host 'localhost' (the run has '127.0.0.1')")):
        assert main(["refine", "--resume", str(out), "--checkpoint-db", other]) == 2
        err = capsys.readouterr().err
        assert diff in err and "only the password may differ" in err and cluster.password not in err
    # a SQLite run cannot move its checkpoints
    sqlite_run = tmp_path / "sqlite-run"
    assert main(refine_args(sqlite_run, pool, loops=1)) == 0
    capsys.readouterr()
    assert main(["refine", "--resume", str(sqlite_run), "--checkpoint-db", cluster.url()]) == 2
    assert "checkpoints.sqlite" in capsys.readouterr().err
    assert not [p for p in out.rglob("*") if p.is_file() and cluster.password.encode() in p.read_bytes()]


@pytest.mark.integration  # a real PostgreSQL server
def test_a_server_that_is_down_fails_with_exit_1_and_the_run_resumes(cluster, pool, tmp_path, models, capsys):
    out = tmp_path / "run"
    cluster.stop()
    try:
        assert main(refine_args(out, pool, "--checkpoint-db", cluster.url(), loops=1)) == 1
    finally:
        cluster.start()
    err = capsys.readouterr().err
    assert f"cannot reach the checkpoint database at 127.0.0.1:{cluster.port}" in err
    assert f"diziner refine --resume {out}" in err and cluster.password not in err
    assert rundir.is_run_dir(out)
    assert main(["refine", "--resume", str(out), "--checkpoint-db", cluster.url()]) == 0
    summary = json.loads((out / rundir.SUMMARY).read_text(encoding="utf-8"))
    assert summary["status"] == "finished" and (out / rundir.GUIDELINE_JSON).is_file()


# ---------------------------------------------------------------- bad input (no server needed)


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u:secret@h/db", "must be a URL postgresql://"),
        ("u:secret@h/db", "(got no scheme://)"),
        ("postgresql://u:secret@h:notaport/db", "the port must be a number"),
        ("postgresql://u:secret@h:70000/db", "the port must be a number"),
        ("postgresql://u:secret@h/db?no_such_option=1", "not a PostgreSQL URL libpq can read"),
        ("postgresql://u:secret%zz@h/db", 'invalid percent-encoded token: "***"'),  # libpq quotes the token
        ("postgresql://u@h/db?password=secret%zz", 'invalid percent-encoded token: "***"'),
        ("postgresql://u:se cret@h/db", 'unexpected spaces found in "***"'),
    ],
)
def test_a_bad_url_is_exit_2_before_anything_is_written(tmp_path, pool, models, capsys, url, message):
    out = tmp_path / "run"
    assert main(refine_args(out, pool, "--checkpoint-db", url)) == 2
    err = capsys.readouterr().err
    assert "--checkpoint-db" in err and message in err and "secret" not in err and "cret" not in err
    assert not out.exists() and not models.by_name


def test_without_the_postgres_extra_the_option_is_exit_2_with_the_install_hint(tmp_path, pool, models, capsys,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.postgres.aio", None)  # import fails as if not installed
    out = tmp_path / "run"
    assert main(refine_args(out, pool, "--checkpoint-db", "postgresql://u@127.0.0.1/db")) == 2
    err = capsys.readouterr().err
    assert "pip install 'diziner[postgres]'" in err and not out.exists()


def test_redact_drops_the_password_only():
    from cli.checkpoints import redact

    assert redact("postgresql://u:p%40ss@h:5432/db") == "postgresql://u@h:5432/db"
    assert redact("postgresql://u@h1:5432,h2:5433/db?sslmode=require&password=x") == (
        "postgresql://u@h1:5432,h2:5433/db?sslmode=require")
    assert redact("postgres://h/db") == "postgres://h/db"
    assert redact("postgresql://:p@[::1]:5/db") == "postgresql://[::1]:5/db"
    assert redact(None) is None
