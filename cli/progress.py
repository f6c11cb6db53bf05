"""The refine command's progress display, made from the nodes' own figures.

Nodes send `graph.progress.StepFigures` when they finish and a per-document event for each annotation call on
LangGraph's custom stream; this module only formats them: one stderr line per finished node ('round 2 · annotate ·
openai:x 25 docs 3 failed, 40 spans (12.3 s)'), and on a terminal live rich progress bars per annotator (documents
done, failed, calls waiting, rate, ETA, cost). A node that raises is reported from the tasks stream.
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


class _Rate:
    """A rich column: documents per second."""

    def __new__(cls) -> Any:
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:5.2f} doc/s" if speed else "   -- doc/s")

        return Rate()


class Progress:
    """Prints each finished node's line, a failed node's error, and the run's start, resume and end; on a terminal,
    live bars for the annotation calls."""

    def __init__(self, live: bool | None = None) -> None:
        self._started: dict[str, tuple[float, Any]] = {}
        if live is None:
            live = sys.stderr.isatty()
        self._bars: Any = None
        self._tasks: dict[tuple[int, str], Any] = {}
        self._counts: dict[tuple[int, str], list[float]] = {}
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bars

            self._bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[extra]}"), _Rate(), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=True)
            self._bars.start()

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def _say(self, line: str) -> None:
        if self._bars is not None:
            self._bars.console.print(line, highlight=False, markup=False)
        else:
            say(line)

    def document(self, event: dict[str, Any]) -> None:
        """One annotation call started or finished: the annotator's bar (live mode only)."""
        if self._bars is None:
            return
        key = (int(event["round"]), str(event["annotator"]))
        if key not in self._tasks:
            self._counts[key] = [0, 0, 0.0]  # waiting, failed, cost
            self._tasks[key] = self._bars.add_task(f"round {key[0]} · annotate · {key[1]}", total=event["total"],
                                                   extra="")
        counts = self._counts[key]
        if event["event"] == "start":
            counts[0] += 1
        else:
            counts[0] -= 1
            counts[1] += 1 if event.get("failed") else 0
            counts[2] += float(event.get("cost_usd") or 0.0)
            self._bars.advance(self._tasks[key])
        cost = f" · ${counts[2]:.4f}" if counts[2] else ""
        self._bars.update(self._tasks[key], extra=f"{int(counts[1])} failed · {int(counts[0])} waiting on "
                                                  f"{key[1]}{cost}")

    def step(self, step: StepFigures) -> None:
        if step.node == "annotate" and self._bars is not None:
            task = self._tasks.pop((step.round or 0, step.annotator or ""), None)
            if task is not None:
                self._bars.remove_task(task)
        self._say(f"{describe(step)} ({step.seconds:.1f} s)")

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
        self._say(f"{head} failed: {type(error).__name__}: {error} ({seconds:.1f} s)")

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
        self._say(line)

    def finished(self, state: Any, run_dir: Path, guideline: str, failed: str) -> None:
        self.close()
        sel = state.selection
        say(f"{PROG}: finished after {len(state.history)} round(s): {state.stop_reason}")
        if sel is not None:
            say(f"{PROG}: selected round {sel.round}, {sel.annotator}: {run_dir / guideline}")
        else:
            say(f"{PROG}: no configuration could be selected (no annotator had a successful document with entities); "
                f"see {run_dir / 'round-1' / failed}")
        say(f"{PROG}: outputs in {run_dir}/")
