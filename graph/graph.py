"""The compiled graph served by `langgraph dev` and the hosted platform (`langgraph.json`: graph id `diziner`).

Compiled without a checkpointer, as the platform requires; importing it has no side effects (models and
embedded servers start lazily, on the first call).
"""

from graph.builder import GRAPH_NAME, build_graph

graph = build_graph().compile(name=GRAPH_NAME)
