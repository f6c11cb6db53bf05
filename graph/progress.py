"""What a node reports when it finishes: its own figures, sent on LangGraph's custom stream.

A front end (the CLI's progress display, Studio's stream view) shows these figures; it never digs into a node's
state update. Without a custom stream subscriber the writer is a no-op.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["SelectionFigures", "StepFigures", "report_step"]

STREAM_KEY = "diziner_step"


class SelectionFigures(BaseModel):
    round: int
    annotator: str
    mean_pairwise_f1: float


class StepFigures(BaseModel):
    """One finished node: which, for which round and annotator, how long, and the figures it produced."""

    node: str
    round: int | None = None
    annotator: str | None = None
    seconds: float = 0.0
    # select_pilot
    pilot_documents: int | None = None
    pool_documents: int | None = None
    # annotate
    documents: int | None = None
    failed: int | None = None
    spans: int | None = None
    # analyze_disagreement
    mean_pairwise_f1: float | None = None
    hotspots: int | None = None
    elite: list[str] | None = None
    not_analysed: str | None = None
    stop_reason: str | None = None
    usage_calls: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    # supervisor phases
    failures: dict[str, str] = Field(default_factory=dict, description="failure key -> reason")
    diagnoses: int | None = None
    guideline_change: float | None = None
    # select_best
    selection: SelectionFigures | None = None
    selected_nothing: bool = False


def report_step(runtime: Any, figures: StepFigures) -> None:
    """Send a finished node's figures on the custom stream (nothing happens when no one listens)."""
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({STREAM_KEY: figures.model_dump(mode="json", exclude_defaults=True) | {"node": figures.node}})


DOC_KEY = "diziner_document"


def report_document(runtime: Any, round_: int, annotator: str, event: str, total: int, failed: bool = False,
                    cost_usd: float = 0.0) -> None:
    """One annotation call started or finished (for live progress bars)."""
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({DOC_KEY: {"round": round_, "annotator": annotator, "event": event, "total": total, "failed": failed,
                          "cost_usd": cost_usd}})


def document_of(chunk: Any) -> dict[str, Any] | None:
    """The per-document event in a custom-stream chunk, or None."""
    return chunk.get(DOC_KEY) if isinstance(chunk, dict) else None


def step_of(chunk: Any) -> StepFigures | None:
    """The figures in a custom-stream chunk, or None for any other chunk."""
    if isinstance(chunk, dict) and STREAM_KEY in chunk:
        return StepFigures.model_validate(chunk[STREAM_KEY])
    return None
