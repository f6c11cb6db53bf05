"""The DiZiNER state machine (issue 3). `build_graph` returns the uncompiled builder so that the CLI, the
server and the tests compile it with their own checkpointer and models."""

from __future__ import annotations

import os
from functools import partial

os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")  # Pydantic state round-trips through checkpoints

from langgraph.graph import END, START, StateGraph  # noqa: E402

from graph import nodes  # noqa: E402
from graph.context import DizinerContext  # noqa: E402
from graph.routing import route_after_analysis  # noqa: E402
from state.graph_state import DizinerInput, DizinerOutput, DizinerState  # noqa: E402

SUPERVISOR_PHASES = ("analyze_patterns", "diagnose_models", "integrate_guidelines", "organize_guidelines")
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
