"""The refine command's progress display: one stderr line per finished node, made from the node's own figures.

Nodes send `graph.progress.StepFigures` on LangGraph's custom stream; this module only formats them, e.g.
'round 2 · annotate · openai:x 25 docs 3 failed, 40 spans (12.3 s)'. A node that raises is reported from the
tasks stream.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from graph.progress import StepFigures

PROG = "diziner refine"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(step: StepFigures) -> str:
    """The line for one finished node, without its duration."""
    head = f"round {step.round} · {step.node}" if step.round else step.node
    if step.annotator:
        head += f" · {step.annotator}"
    if step.node == "annotate":
        return f"{head} {step.documents} docs {step.failed} failed, {step.spans} spans"
    return f"{head} · {_figures(step)}"


def _figures(step: StepFigures) -> str:
    if step.pilot_documents is not None:
        return f"{step.pilot_documents} of {step.pool_documents} documents"
    if step.node == "analyze_disagreement":
        if step.mean_pairwise_f1 is None:
            text = f"not analysed: {step.not_analysed}"
        else:
            text = (f"mean pairwise F1 {step.mean_pairwise_f1:.4f}, {step.hotspots} hotspots, "
                    f"elite {', '.join(step.elite or []) or '-'}")
        return text + (f"; stop: {step.stop_reason}" if step.stop_reason else "")
    if step.selection is not None:
        sel = step.selection
        return f"round {sel.round} · {sel.annotator} (mean pairwise F1 {sel.mean_pairwise_f1:.4f})"
    if step.selected_nothing:
        return "no eligible annotator"
    failures = "; ".join(f"{k}: {v[:120]}" for k, v in step.failures.items())
    text = "ok" if not failures else f"failed: {failures}"
    if step.diagnoses is not None:
        count = f"{step.diagnoses} diagnos{'i' if step.diagnoses == 1 else 'e'}s"
        text = count if not failures else f"{count}, {text}"
    if step.guideline_change is not None:
        text += f", guideline change {step.guideline_change:.2f}"
    return text


class Progress:
    """Prints each finished node's line, a failed node's error, and the run's start, resume and end."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[float, Any]] = {}

    def step(self, step: StepFigures) -> None:
        say(f"{describe(step)} ({step.seconds:.1f} s)")

    def task(self, event: dict[str, Any]) -> None:
        """A tasks-stream event: remembered at start, reported only when the node raised."""
        if "result" not in event:
            self._started[event["id"]] = (time.perf_counter(), event.get("input"))
            return
        t0, inp = self._started.pop(event["id"], (None, None))
        error = event.get("error")
        if error is None:
            return
        round_ = getattr(inp, "round", None)
        head = f"round {round_} · {event['name']}" if round_ else event["name"]
        spec = getattr(inp, "spec", None)
        if spec is not None:
            head += f" · {spec.name}"
        seconds = time.perf_counter() - t0 if t0 is not None else 0.0
        say(f"{head} failed: {type(error).__name__}: {error} ({seconds:.1f} s)")

    def resuming(self, state: Any, snapshot: Any) -> None:
        pending = list(snapshot.tasks)
        done = [t for t in pending if t.result is not None]
        line = f"{PROG}: resuming at round {state.round}, next: {', '.join(sorted({t.name for t in pending}))}"
        if done:
            who = []
            for t in done:
                anns = (t.result or {}).get("annotations") if isinstance(t.result, dict) else None
                who.append(f"{t.name} · {anns[0].annotator}" if anns else t.name)
            line += f" ({len(done)} of {len(pending)} already done: {', '.join(who)})"
        say(line)

    def finished(self, state: Any, run_dir: Path, guideline: str, failed: str) -> None:
        sel = state.selection
        say(f"{PROG}: finished after {len(state.history)} round(s): {state.stop_reason}")
        if sel is not None:
            say(f"{PROG}: selected round {sel.round}, {sel.annotator}: {run_dir / guideline}")
        else:
            say(f"{PROG}: no configuration could be selected (no annotator had a successful document with entities); "
                f"see {run_dir / 'round-1' / failed}")
        say(f"{PROG}: outputs in {run_dir}/")
