"""End to end through `langgraph dev`: what a person does in Studio, driven with langgraph-sdk.

A real `python -m langgraph_cli dev` serves `langgraph.json` on a free loopback port, offline (no analytics, no
version check, no tracing, no OpenAI key), with the embedded default models and short settings. The session
reads the assistant's schemas (the Studio form), creates a thread, runs to a breakpoint before `analyze_patterns`,
reads and edits the state, resumes to stop after the next node, resumes to the end (streaming) and reads the
history. The same session also runs against a scripted twin of the graph (seconds, deterministic), and a server
whose langgraph.json names a missing `.env` must start (a fresh clone has none).

`start_dev_server` is shared with tests/test_traces.py (the tracing run starts its own server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SHARED_DATA, require_shared

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
DEV_TXT = SHARED_DATA / "crossner_ai" / "dev.txt"
TASK_FILE = REPO / "tasks" / "crossner_ai.yaml"

OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
}
# variables that would send the server elsewhere or change what it does; never inherited by the test server
_SCRUBBED = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OLLAMA_HOST",
    "LANGSMITH_API_KEY",
    "LANGSMITH_ENDPOINT",
    "LANGSMITH_PROJECT",
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_API_KEY",
    "LANGCHAIN_ENDPOINT",
    "LANGCHAIN_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGCHAIN_PROJECT",
    "LANGGRAPH_ALLOW_BLOCKING",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTUP_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 1800.0  # one runs.wait call; the embedded models are slow on a busy 2-core machine

# short settings for the embedded default models (the Studio form's values; models and caps are the defaults)
STUDIO_CONTEXT = {"max_loops": 2, "pilot_size": 3}


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DevServer:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    started_in: float

    def log(self) -> str:
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def blocking_reports(self) -> list[str]:
        """Lines where the server reported a blocking call in async code (blockbuster)."""
        return [ln for ln in self.log().splitlines() if "Blocking call" in ln or "BlockingError" in ln]


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ok", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _absolute(config: dict[str, Any]) -> dict[str, Any]:
    """A langgraph.json whose dependency, graph and env paths point into the repo whatever the working directory."""

    def fix(path: str) -> str:
        return path if Path(path).is_absolute() else str((REPO / path).resolve())

    out = dict(config)
    out["dependencies"] = [fix(d) if d.startswith(".") or "/" in d else d for d in config.get("dependencies", [])]
    graphs = {}
    for gid, target in config.get("graphs", {}).items():
        path, sep, attr = str(target).rpartition(":")
        graphs[gid] = f"{fix(path)}{sep}{attr}" if sep else target
    out["graphs"] = graphs
    if isinstance(config.get("env"), str):
        out["env"] = fix(config["env"])
    return out


@contextlib.contextmanager
def start_dev_server(
    extra_env: dict[str, str] | None = None, name: str = "langgraph-dev", config: dict[str, Any] | None = None
) -> Iterator[DevServer]:
    """`langgraph dev` serving the repo's graph on a free loopback port; the process group is killed at the end.

    It serves the repo's langgraph.json (or `config`) with its relative paths made absolute (against the repo
    root), from a fresh temporary working directory. The in-memory runtime keeps its state in `./.langgraph_api/`
    of the working directory and retries the runs it finds unfinished there, so a server started in the repo root
    would share state with a developer's Studio session and with killed test servers; `"disable_persistence"` does
    not help (langgraph-cli 0.4.40 drops the key when it validates the file). The server's log stays in that
    directory (named in failure messages); its `.langgraph_api/` is removed at the end.
    """
    import json

    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(OFFLINE_ENV)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(filter(None, [str(REPO), *env.get("PYTHONPATH", "").split(os.pathsep)])))
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix=f"diziner-{name}-"))
    log_path = log_dir / "server.log"
    served = _absolute(config if config is not None else json.loads((REPO / "langgraph.json").read_text(encoding="utf-8")))
    config_path = log_dir / "langgraph.json"
    config_path.write_text(json.dumps(served, indent=2), encoding="utf-8")
    handle = open(log_path, "wb")  # noqa: SIM115  (closed below)
    cmd = [sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload", "--port", str(port),
           "--host", "127.0.0.1", "--config", str(config_path)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=log_dir, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    server = DevServer(url=url, port=port, process=proc, log_path=log_path, started_in=0.0)
    try:
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            text = server.log()
            moved = re.search(r"Port (\d+) is already in use, using port (\d+)", text)
            if moved:
                pytest.fail(f"langgraph dev did not bind the chosen port {port}: {moved.group(0)}\n{text[-3000:]}")
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {proc.returncode} before answering /ok ({log_path}):\n{text[-4000:]}")
            if _get_ok(url):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not answer {url}/ok within {STARTUP_TIMEOUT_S:.0f} s:\n{text[-4000:]}")
            time.sleep(0.25)
        announced = re.search(r"API: (http://\S+)", server.log())
        if announced and announced.group(1).rstrip("/") != url:
            pytest.fail(f"langgraph dev announced {announced.group(1)}, not {url}")
        server.started_in = time.monotonic() - started
        yield server
    finally:
        _kill_group(proc)
        handle.close()
        shutil.rmtree(log_dir / ".langgraph_api", ignore_errors=True)


@pytest.fixture(scope="module")
def dev_server() -> Iterator[DevServer]:
    with start_dev_server(name="studio") as server:
        yield server
        blocking = server.blocking_reports()
        assert not blocking, "the server reported blocking calls (the run must not need --allow-blocking):\n" + "\n".join(blocking)


# ---------------------------------------------------------------- inputs


def crossner_sentences(n: int = 8, min_tokens: int = 6, max_tokens: int = 18) -> list[dict[str, str]]:
    """The first `n` short sentences of CrossNER AI dev (CoNLL: one token per line, blank line between)."""
    require_shared("crossner_ai", "dev.txt")
    docs, tokens = [], []
    for line in [*DEV_TXT.read_text(encoding="utf-8").splitlines(), ""]:
        if line.strip():
            tokens.append(line.split()[0])
            continue
        if min_tokens <= len(tokens) <= max_tokens:
            docs.append({"id": f"dev-{len(docs) + 1}", "text": " ".join(tokens)})
            if len(docs) == n:
                break
        tokens = []
    assert len(docs) == n, f"only {len(docs)} short sentences in {DEV_TXT}"
    return docs


def studio_input(n_docs: int = 8) -> dict[str, Any]:
    return {"task": yaml.safe_load(TASK_FILE.read_text(encoding="utf-8")), "documents": crossner_sentences(n_docs)}


async def diziner_assistant(client) -> dict[str, Any]:
    found = await client.assistants.search(graph_id="diziner", limit=10)
    assert found, "no assistant for graph id 'diziner'"
    return found[0]


def test_dev_server_starts_without_env_file(tmp_path: Path) -> None:
    """A fresh clone has no `.env`, while langgraph.json names one: the server must start and load the graph."""
    import json

    config = json.loads((REPO / "langgraph.json").read_text(encoding="utf-8"))
    assert config.get("graphs", {}).get("diziner") == "./graph/graph.py:graph"
    missing = tmp_path / ".env"
    assert isinstance(config.get("env"), str), config.get("env")
    config["env"] = str(missing)  # the same setting, naming a file that surely does not exist
    with start_dev_server(name="no-env", config=config) as server:
        assert not missing.exists()
        asyncio.run(_graph_is_served(server.url))


async def _graph_is_served(url: str) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=url)
    assistant = await diziner_assistant(client)
    drawn = await client.assistants.get_graph(assistant["assistant_id"])
    assert {"select_pilot", "annotate", "analyze_disagreement", "select_best"} <= {n["id"] for n in drawn["nodes"]}


# ---------------------------------------------------------------- a scripted twin of the served graph

# The same builder with scripted models (tests/scripted.py), served from a temporary langgraph.json: it runs the
# same Studio session in seconds, so the API flow is checked even when the embedded models are slow or weak.
_SCRIPTED_GRAPH = """
from graph.builder import GRAPH_NAME, build_graph
from tests.scripted import ScriptedModels, document_of, responder, tag_words

KIND = {"openai:a": "ALGORITHM", "openai:b": "MISC", "openai:c": "PRODUCT"}
ANSWERS = {
    "PatternAnalysis": lambda prompt: {
        "summary": "note seen" if "Reviewer note (Studio)" in prompt else "no note",
        "patterns": [{"name": "algorithm vs misc"}], "principles": [{"text": "prefer ALGORITHM"}],
    },
    "AnnotatorDiagnosis": {"tendencies": ["over-labels"], "needs": [{"text": "label methods as ALGORITHM"}]},
    "Integration": {"goal": "", "common": [{"text": "Methods are ALGORITHM."}], "per_annotator": []},
    "Organization": {"common": [{"text": "Methods are ALGORITHM."}], "per_annotator": []},
}


def respond_for(name):
    return responder(lambda prompt: tag_words(document_of(prompt), KIND[name], "FIELD", r"\\b[A-Z][A-Za-z]+\\b"), ANSWERS)


graph = build_graph(ScriptedModels(respond_for)).compile(name=GRAPH_NAME)
"""
SCRIPTED_CONTEXT = {"annotators": ["openai:a", "openai:b", "openai:c"], "supervisor": "openai:sup", **STUDIO_CONTEXT}


@pytest.fixture(scope="module")
def scripted_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    root = tmp_path_factory.mktemp("scripted-graph")
    (root / "scripted_graph.py").write_text(_SCRIPTED_GRAPH, encoding="utf-8")
    config = {"dependencies": ["."], "graphs": {"diziner": str(root / "scripted_graph.py") + ":graph"}}
    with start_dev_server(name="studio-scripted", config=config) as server:
        yield server
        blocking = server.blocking_reports()
        assert not blocking, "the server reported blocking calls:\n" + "\n".join(blocking)


# ---------------------------------------------------------------- the Studio session


def test_studio_session(dev_server: DevServer) -> None:
    """The embedded default models (no keys, no network), short settings."""
    asyncio.run(studio_session(dev_server, STUDIO_CONTEXT, ["embedded:smollm2", "embedded:gemma3-270m"]))


def test_studio_session_scripted(scripted_dev_server: DevServer) -> None:
    """The same session against the scripted twin: the API flow, independent of the models' speed and quality."""
    asyncio.run(studio_session(scripted_dev_server, SCRIPTED_CONTEXT, SCRIPTED_CONTEXT["annotators"], scripted=True))


NODE_ORDER = ["select_pilot", "annotate", "analyze_disagreement", "analyze_patterns", "diagnose_models",
              "integrate_guidelines", "organize_guidelines", "select_pilot", "annotate", "analyze_disagreement",
              "select_best"]


async def studio_session(server: DevServer, context: dict[str, Any], annotators: list[str], scripted: bool = False) -> None:
    import httpx
    from langgraph_sdk import get_client

    client = get_client(url=server.url, timeout=httpx.Timeout(connect=5, read=RUN_TIMEOUT_S, write=60, pool=5))
    t0 = time.monotonic()
    timings: dict[str, float] = {"server start": server.started_in}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.monotonic()
        timings[name] = now - t0
        t0 = now

    # the Studio form: the assistant's context schema, with our descriptions
    assistant = await diziner_assistant(client)
    schemas = await client.assistants.get_schemas(assistant["assistant_id"])
    props = (schemas.get("context_schema") or {}).get("properties") or {}
    for name in ("annotators", "supervisor", "max_loops", "pilot_size", "min_gain", "patience", "seed",
                 "max_common_instructions", "max_model_instructions"):
        assert name in props, f"context field {name!r} missing from the Studio form: {sorted(props)}"
        assert props[name].get("description"), f"context field {name!r} has no description"
    assert props["max_loops"].get("default") == 5
    assert props["supervisor"].get("default") == "embedded:smollm2"
    assert props["annotators"].get("default") == ["embedded:smollm2", "embedded:gemma3-270m"]
    assert {"task", "documents"} <= set((schemas.get("input_schema") or {}).get("properties", {}))
    lap("schemas")

    thread = await client.threads.create()
    tid = thread["thread_id"]

    # 1. run to a breakpoint before the supervisor's first phase
    await client.runs.wait(tid, "diziner", input=studio_input(), context=context, interrupt_before=["analyze_patterns"], raise_error=True)
    lap("round 1 to the breakpoint")
    state = await client.threads.get_state(tid)
    values = state["values"]
    record = values["history"][0]
    assert state["next"] == ["analyze_patterns"], (
        f"the run did not stop before analyze_patterns: next={state['next']}, stop_reason={values.get('stop_reason')!r}, "
        f"failed={record.get('failed')}, reasons={sorted({o.get('reason') for o in values['annotations'] if o.get('reason')})[:3]}"
    )
    assert values["annotators"] == annotators
    pilot_ids = record["pilot"]
    assert len(pilot_ids) == context["pilot_size"]
    by_annotator = {a: {o["document_id"] for o in values["annotations"] if o["annotator"] == a} for a in annotators}
    for a in annotators:  # every annotator has an output (ok, or failed with its reason) for every pilot document
        assert by_annotator[a] == set(pilot_ids), (a, by_annotator[a], pilot_ids)
    for o in values["annotations"]:
        assert o["status"] in ("ok", "failed")
        assert o["status"] == "ok" or o.get("reason"), o
    assert isinstance(record["mean_pairwise_f1"], float), record
    assert values["report"]["markdown"].strip()

    # 2. edit the state as a person does in Studio: a note on the report, written as the disagreement node
    note = "\n\n> Reviewer note (Studio): check how multi-word method names are split.\n"
    edited = {**values["report"], "markdown": values["report"]["markdown"] + note}
    await client.threads.update_state(tid, {"report": edited}, as_node="analyze_disagreement")
    state = await client.threads.get_state(tid)
    assert state["values"]["report"]["markdown"].endswith(note)
    assert state["next"] == ["analyze_patterns"], state["next"]
    assert state["metadata"].get("source") == "update"
    lap("edit")

    # 3. resume and stop after the next node
    await client.runs.wait(tid, "diziner", input=None, context=context, interrupt_after=["analyze_patterns"], raise_error=True)
    lap("phase 1")
    state = await client.threads.get_state(tid)
    assert state["next"] == ["diagnose_models"], state["next"]
    sup = state["values"]["supervisor"]
    assert [s["round"] for s in sup] == [1]
    assert sup[0]["patterns"] is not None or any(f["phase"] == "analyze_patterns" for f in sup[0]["failures"]), sup[0]
    if scripted:  # the edited report is what the supervisor read
        assert sup[0]["patterns"]["summary"] == "note seen", sup[0]["patterns"]
    assert state["values"]["report"]["markdown"].endswith(note)  # the edit survived the resume

    # 4. resume to the end, streaming the node updates as Studio shows them
    seen: list[str] = []
    async for part in client.runs.stream(tid, "diziner", input=None, context=context, stream_mode="updates"):
        if part.event == "error":
            pytest.fail(f"run failed: {part.data}")
        if part.event == "updates" and isinstance(part.data, dict):
            seen.extend(k for k in part.data if not k.startswith("__"))
    lap("to the end")
    assert seen[:3] == ["diagnose_models", "integrate_guidelines", "organize_guidelines"], seen
    assert seen[3:] == ["select_pilot", *["annotate"] * len(annotators), "analyze_disagreement", "select_best"], seen
    state = await client.threads.get_state(tid)
    assert state["next"] == []
    final = state["values"]
    assert [h["round"] for h in final["history"]] == [1, 2]
    assert final["stop_reason"]
    if final["selection"] is not None:
        assert final["selection"]["annotator"] in annotators
        assert final["guideline_markdown"].strip()
    if scripted:
        assert final["selection"] is not None and "Methods are ALGORITHM." in final["guideline_markdown"]

    # 5. the history, as Studio's timeline shows it: every checkpoint, in order, with the nodes it leads to
    history = await client.threads.get_history(tid, limit=200)
    chronological = list(reversed(history))  # the API lists the newest checkpoint first
    steps = [c["metadata"]["step"] for c in chronological]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
    assert chronological[0]["metadata"]["source"] == "input" and chronological[0]["next"] == ["__start__"]
    assert history[0]["next"] == [] and history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    assert [c["metadata"]["source"] for c in chronological].count("update") == 1
    walk = [n for c in chronological for n in c["next"] if n != "__start__"]
    deduped = [n for i, n in enumerate(walk) if i == 0 or walk[i - 1] != n]
    assert deduped == NODE_ORDER, deduped
    for c in chronological:  # each pending node is a named task of that checkpoint
        assert sorted(t["name"] for t in c["tasks"]) == sorted(c["next"]), (c["next"], c["tasks"])
    lap("history")
    print("studio timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
