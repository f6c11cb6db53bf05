"""The DiZiNER state machine. `build_graph` returns the uncompiled builder so that the CLI, the
server and the tests compile it with their own checkpointer and models."""

from __future__ import annotations

from enum import Enum
from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from agents.models import profiles, runfile, spec
from graph import nodes
from graph.context import DizinerContext
from graph.routing import route_after_analysis
from state import graph_state, models, phases
from state.graph_state import DizinerInput, DizinerOutput, DizinerState

GRAPH_NAME = "diziner"


def build_graph(models: nodes.ModelFactory | None = None) -> StateGraph:
    """The loop: select_pilot -> annotate (one branch per annotator) -> analyze_disagreement -> either the four
    supervisor phases and back to select_pilot, or select_best -> END."""
    if models is None:
        from agents.models import chat_model as models
    b = StateGraph(DizinerState, context_schema=DizinerContext, input_schema=DizinerInput, output_schema=DizinerOutput)
    b.add_node("select_pilot", nodes.select_pilot, metadata={"phase": "pilot"})
    b.add_node("annotate", partial(nodes.annotate, models=models), metadata={"phase": "annotate"}, input_schema=nodes.AnnotateTask)
    b.add_node("analyze_disagreement", nodes.analyze_disagreement, metadata={"phase": "disagreement"})
    b.add_node("analyze_patterns", partial(nodes.analyze_patterns, models=models), metadata={"phase": "supervisor-1"})
    b.add_node("diagnose_models", partial(nodes.diagnose_models, models=models), metadata={"phase": "supervisor-2"})
    b.add_node("integrate_guidelines", partial(nodes.integrate_guidelines, models=models), metadata={"phase": "supervisor-3"})
    b.add_node("organize_guidelines", partial(nodes.organize_guidelines, models=models), metadata={"phase": "supervisor-4"})
    b.add_node("select_best", nodes.select_best, metadata={"phase": "selection"})
    b.add_edge(START, "select_pilot")
    b.add_conditional_edges("select_pilot", nodes.assign_annotators, ["annotate"])
    b.add_edge("annotate", "analyze_disagreement")
    b.add_conditional_edges("analyze_disagreement", route_after_analysis)
    b.add_edge("analyze_patterns", "diagnose_models")
    b.add_edge("diagnose_models", "integrate_guidelines")
    b.add_edge("integrate_guidelines", "organize_guidelines")
    b.add_edge("organize_guidelines", "select_pilot")
    b.add_edge("select_best", END)
    return b


def checkpoint_types() -> list[tuple[str, str]]:
    """(module, name) of every Pydantic model and enum a checkpoint holds: the state's models, the phase records,
    the model specs and the `Send` payload."""
    found = []
    for module in (models, graph_state, phases, nodes, spec, profiles, runfile):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, (BaseModel, Enum)) and obj.__module__ == module.__name__:
                found.append((obj.__module__, obj.__qualname__))
    return sorted(found)


def checkpoint_serde() -> Any:
    """The checkpoint serializer with our types allowlisted: they round-trip as themselves, with no
    "unregistered type" warning, and any other custom type in a checkpoint is refused."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=checkpoint_types())
