"""Loop control and the label-free selection: pure functions over the round history.

The rules: docs/method.md#loop-and-stop-rule and docs/method.md#selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from state.graph_state import DizinerState, RoundRecord


def stop_decision(history: Sequence[RoundRecord], max_loops: int, min_gain: float, patience: int) -> str | None:
    """Why the run stops after the latest round, or None to run the supervisor.

    Stops after round `max_loops`; or on a plateau: round 1 never stops it; after round t >= 2 the round is
    stale when A_t <= max(A_1..A_{t-1}) + min_gain; `patience` consecutive stale rounds stop the run. A round
    whose agreement could not be measured stops the run too.
    """
    t = len(history)
    last = history[-1]
    if last.mean_pairwise_f1 is None:
        return f"round {t} could not be analysed: {last.error or 'no agreement'}"
    if t >= max_loops:
        return f"max_loops reached ({max_loops} rounds)"
    stale = 0
    for i in range(1, t):
        best = max(h.mean_pairwise_f1 for h in history[:i] if h.mean_pairwise_f1 is not None)
        a = history[i].mean_pairwise_f1
        stale = stale + 1 if a is not None and a <= best + min_gain else 0
    if stale >= patience:
        return (
            f"agreement plateau: {stale} consecutive round(s) without a gain above {min_gain} "
            f"(round {t}: {last.mean_pairwise_f1:.4f})"
        )
    return None


def select_configuration(history: Sequence[RoundRecord]) -> tuple[int, str, float] | None:
    """(round, annotator, score): the highest mean pairwise agreement of an annotator with the others in a round.

    Annotators with no successful document or no predicted span that round are not eligible; ties go to the
    later round, then to the annotator name (string order).
    """
    best: tuple[float, int, str] | None = None
    for rec in history:
        for name, score in rec.mean_agreement.items():
            if rec.succeeded.get(name, 0) == 0 or rec.predicted_spans.get(name, 0) == 0:
                continue
            key = (score, rec.round)
            if best is None or key > (best[0], best[1]) or (key == (best[0], best[1]) and name < best[2]):
                best = (score, rec.round, name)
    if best is None:
        return None
    return best[1], best[2], best[0]


def route_after_analysis(state: DizinerState) -> Literal["analyze_patterns", "select_best"]:
    """After the disagreement node: the supervisor's first phase, or the selection once the stop rule fired."""
    return "select_best" if state.stop_reason else "analyze_patterns"
