"""Traces read like the method: real langsmith clients sending to a loopback collector.

(a) In process: the graph with scripted models runs inside `tracing_context` with a real `langsmith.Client`
    pointed at tests/trace_collector.py; the received tree is checked: one root `diziner`, node runs named
    like the nodes, LLM runs named after the model spec under the right node, with round/annotator/phase
    metadata and tags.
(b) Through `langgraph dev` (integration): the server, with LANGSMITH_ENDPOINT pointed at the collector,
    delivers a run's traces there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.scripted import POLITICS_SENTENCES
from tests.trace_collector import Run, TraceCollector

NODES = (
    "select_pilot",
    "annotate",
    "analyze_disagreement",
    "analyze_patterns",
    "diagnose_models",
    "integrate_guidelines",
    "organize_guidelines",
    "select_best",
)
SUPERVISOR_NODES = NODES[3:7]
ANNOTATORS = ("openai:a", "openai:b", "openai:c")
SUPERVISOR = "openai:sup"

DOCS = POLITICS_SENTENCES[:7]


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch):
    # the collector advertises no zstd support; this also keeps the client from warning about it
    monkeypatch.setenv("LANGSMITH_DISABLE_RUN_COMPRESSION", "true")
    with TraceCollector() as c:
        yield c


# ---------------------------------------------------------------- (a) in process, scripted models


ONLY_B = [{"annotator": "openai:b", "instructions": [{"text": "ONLY-B"}]}]
SUPERVISOR_ANSWERS = {
    "Integration": {"goal": "GOAL-2", "common": [{"text": "RULE-1"}], "per_annotator": ONLY_B},
    "Organization": {"common": [{"text": "RULE-1"}, {"text": "R2"}], "per_annotator": ONLY_B},
}


def _respond_for(name: str):
    """Capitalised words; a and the others disagree on types; c fails on documents with 'Berlin'."""
    from tests.scripted import document_of, responder, tag_words

    def annotate(prompt: str) -> Any:
        doc = document_of(prompt)
        if name.endswith("c") and "Berlin" in doc:
            return RuntimeError("scripted failure")
        return tag_words(doc, "PERSON" if name.endswith("a") else "POLITICIAN", "LOCATION")

    return responder(annotate, SUPERVISOR_ANSWERS)


def _run_scripted_graph(client, project: str) -> dict[str, Any]:
    from langsmith.run_helpers import tracing_context

    from graph.builder import GRAPH_NAME, build_graph
    from graph.context import DizinerContext
    from state.models import TaskDefinition
    from tests.scripted import ScriptedModels

    factory = ScriptedModels(_respond_for)

    task = TaskDefinition.from_yaml("tasks/crossner_politics.yaml")
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    graph = build_graph(factory).compile(name=GRAPH_NAME)
    ctx = DizinerContext(annotators=list(ANNOTATORS), supervisor=SUPERVISOR, max_loops=2, pilot_size=3, min_gain=0, patience=5)
    with tracing_context(enabled=True, client=client, project_name=project):
        out = asyncio.run(
            graph.ainvoke({"task": task.model_dump(), "documents": docs}, context=ctx, config={"tags": ["trace-test"]})
        )
    client.flush()
    return out


def _node_of(collector: TraceCollector, run: Run, root_id: str) -> Run | None:
    """The node run (a direct child of the root) a run is nested under."""
    for anc in [run, *collector.ancestors(run.id)]:
        if anc.parent_id == root_id:
            return anc
    return None


def test_trace_tree_in_process(collector: TraceCollector, monkeypatch: pytest.MonkeyPatch) -> None:
    import langsmith

    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    client = langsmith.Client(api_url=collector.url, api_key="test")
    out = _run_scripted_graph(client, project="diziner-trace-test")
    assert [h.round for h in out["history"]] == [1, 2]
    assert collector.wait_for(lambda c: c.runs() and all(r.get("end_time") for r in c.runs()), timeout=20), "runs still open"
    assert not collector.errors, collector.errors
    assert ("POST", "/runs/multipart", 200) in collector.requests or ("POST", "/runs/batch", 200) in collector.requests

    # one root, named like the graph, carrying the run's input and output
    roots = collector.roots()
    assert [r.name for r in roots] == ["diziner"], [(r.name, r.run_type) for r in roots]
    root = roots[0]
    assert root.run_type == "chain"
    assert "trace-test" in root.tags
    assert root.get("session_name") == "diziner-trace-test"
    assert "task" in (root.get("inputs") or {}) and "history" in (root.get("outputs") or {})
    runs = collector.runs()
    assert all(r.get("trace_id") == root.id for r in runs)

    # node runs: every node, named like the node, directly under the root, in the loop's order
    node_runs = sorted(collector.children(root.id), key=lambda r: r.get("dotted_order") or "")
    names = [r.name for r in node_runs if r.name in NODES]
    assert set(names) == set(NODES), names
    assert names.count("annotate") == len(ANNOTATORS) * 2  # one branch per annotator per round
    assert names.count("select_pilot") == 2 and names.count("analyze_disagreement") == 2
    for node in SUPERVISOR_NODES:
        assert names.count(node) == 1  # max_loops 2: the supervisor runs once
    assert names[-1] == "select_best"
    for r in node_runs:
        if r.name in NODES:
            assert r.metadata.get("langgraph_node") == r.name
            assert r.metadata.get("phase"), r.name  # add_node(metadata={"phase": ...})

    # LLM runs: named after the model spec, nested under the right node, with round/annotator/phase metadata
    llm_runs = [r for r in runs if r.run_type == "llm"]
    assert {r.name for r in llm_runs} == {*ANNOTATORS, SUPERVISOR}, sorted({r.name for r in llm_runs})
    per_round: dict[tuple[str, int], int] = {}
    for r in llm_runs:
        node = _node_of(collector, r, root.id)
        assert node is not None, r.name
        md = r.metadata
        if r.name in ANNOTATORS:
            assert node.name == "annotate", (r.name, node.name)
            assert md.get("annotator") == r.name and md.get("phase") == "annotate", md
            assert md.get("round") in (1, 2) and md.get("document"), md
            assert {"annotator", r.name, "trace-test"} <= set(r.tags), r.tags
            per_round[(r.name, md["round"])] = per_round.get((r.name, md["round"]), 0) + 1
            # the call's own run, between the node and the model, is named after the document
            assert r.parent_id and collector.get(r.parent_id).name == f"annotate {md['document']}"
        else:
            assert node.name in SUPERVISOR_NODES, node.name
            assert md.get("round") == 1 and md.get("phase") == node.name, md
            assert {"supervisor", node.name} <= set(r.tags), r.tags
            if node.name == "diagnose_models":
                assert md.get("annotator") in ANNOTATORS, md
            parent = collector.get(r.parent_id)
            assert parent.name == f"{node.name} · {SUPERVISOR}", parent.name
    for a in ("openai:a", "openai:b"):
        assert per_round[(a, 1)] == 3 and per_round[(a, 2)] == 3, per_round
    # the failing annotator's calls are traced with their error (and retried)
    failed = [r for r in llm_runs if r.name == "openai:c" and r.get("error")]
    assert failed and all("scripted failure" in r["error"] for r in failed)
    # the annotator branches of one round are tagged with that round: each annotate node run holds one round only
    for node_run in (r for r in node_runs if r.name == "annotate"):
        rounds = {d.metadata.get("round") for d in collector.descendants(node_run.id) if d.run_type == "llm"}
        assert len(rounds) == 1, rounds
    # supervisor phases read like the method, in order, once
    sup_nodes = [r.name for r in node_runs if r.name in SUPERVISOR_NODES]
    assert sup_nodes == list(SUPERVISOR_NODES)


# ---------------------------------------------------------------- (b) through langgraph dev


TINY_TASK = {
    "name": "tiny_news",
    "description": "Two entity types in short news sentences (a small task for the trace test).",
    "entity_types": [
        {"name": "PERSON", "definition": "A named person.", "positive_examples": ["Angela Merkel"], "negative_examples": []},
        {"name": "LOCATION", "definition": "A named place: city, country, region.", "positive_examples": ["Berlin"], "negative_examples": []},
    ],
    "final_task_goal": "Mark every person and place named in the sentence.",
}


@pytest.mark.integration
def test_dev_server_delivers_traces(collector: TraceCollector) -> None:
    from tests.test_studio import start_dev_server

    env = {
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_API_KEY": "test",
        "LANGSMITH_ENDPOINT": collector.url,
        "LANGSMITH_PROJECT": "diziner-dev-trace-test",
        "LANGSMITH_DISABLE_RUN_COMPRESSION": "true",
    }
    with start_dev_server(env, name="traces") as server:
        asyncio.run(_one_round(server.url))
        ok = collector.wait_for(
            lambda c: any(r.name == "diziner" and r.get("end_time") for r in c.roots())
            and {"select_pilot", "annotate", "analyze_disagreement"} <= {r.name for r in c.runs()},
            timeout=60,
        )
        blocking = server.blocking_reports()
        log_tail = server.log()[-3000:]
    assert not blocking, blocking
    assert ok, f"traces not delivered: {sorted({(r.name, r.run_type) for r in collector.runs()})}\n{collector.requests[-10:]}\n{log_tail}"
    assert not collector.errors, collector.errors
    roots = [r for r in collector.roots() if r.name == "diziner"]
    assert len(roots) == 1, [(r.name, r.id) for r in collector.roots()]
    root = roots[0]
    assert root.get("session_name") == "diziner-dev-trace-test"
    children = {r.name for r in collector.children(root.id)}
    assert {"select_pilot", "annotate", "analyze_disagreement"} <= children, children
    llm = [r for r in collector.descendants(root.id) if r.run_type == "llm"]
    assert {r.name for r in llm} == {"embedded:smollm2", "embedded:gemma3-270m"}, sorted({r.name for r in llm})
    for r in llm:
        assert r.metadata.get("round") == 1 and r.metadata.get("annotator") == r.name and r.metadata.get("phase") == "annotate"


async def _one_round(url: str) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=url)
    thread = await client.threads.create()
    started = time.monotonic()
    await client.runs.wait(
        thread["thread_id"],
        "diziner",
        input={"task": TINY_TASK, "documents": [{"id": "n1", "text": "Angela Merkel visited Paris ."}]},
        context={"max_loops": 1, "pilot_size": 1},
        raise_error=True,
    )
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["history"][0]["round"] == 1, state["values"]
    print(f"dev-server traced run: {time.monotonic() - started:.1f} s")
