"""The report page's plots, drawn with matplotlib (no pyplot: figures are plain objects, the Agg/SVG canvases) and
returned as `data:` URIs of SVG so that the page is self-contained.

Deterministic: SVG ids come from a fixed hash salt, the SVG carries no date, and every input is plotted in the order
given, so the same figures give the same bytes. Names on the plots (annotators, nodes) are run data: matplotlib
escapes text in the SVG it writes, and the SVG is shown through <img>, where it can run nothing.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c")
RC = {
    "svg.hashsalt": "diziner-report",
    "svg.fonttype": "none",  # text stays text: smaller files, the page's fonts
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#9ca3af",
    "axes.labelcolor": "#374151",
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "legend.frameon": False,
}


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def short(name: str, limit: int = 28) -> str:
    """A label clipped in the middle to `limit` characters."""
    if len(name) <= limit:
        return name
    half = (limit - 1) // 2
    return name[:half] + "…" + name[len(name) - half :]


def svg_uri(fig: Figure) -> str:
    """The figure as a deterministic SVG `data:` URI."""
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height), dpi=100)


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend when something on the axes has a label (an empty legend only warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def agreement_plot(
    rounds: Sequence[int],
    mean: Sequence[float | None],
    per_annotator: Mapping[str, Sequence[float | None]],
    thresholds: Sequence[float | None],
    selected: tuple[int, str] | None = None,
    gold: Mapping[str, Sequence[float | None]] | None = None,
) -> str:
    """Agreement per round: the mean pairwise F1, each annotator's mean agreement, the stop rule's bar (the best
    earlier round + min_gain) and the selected (round, annotator); with `gold`, each annotator's gold F1 beside it."""
    with matplotlib.rc_context(RC):
        fig = _figure(11.0 if gold else 8.0, 3.6)
        axes = fig.subplots(1, 2 if gold else 1, squeeze=False)[0]
        ax = axes[0]
        names = list(per_annotator)
        for i, name in enumerate(names):
            pts = [(r, v) for r, v in zip(rounds, per_annotator[name], strict=True) if _is_number(v)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=4, lw=1.2, color=colour(i), alpha=0.75, label=short(name))
        pts = [(r, v) for r, v in zip(rounds, mean, strict=True) if _is_number(v)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="s", ms=6, lw=2.6, color="#111827", label="mean pairwise F1")
        bars = [(r, v) for r, v in zip(rounds, thresholds, strict=True) if _is_number(v)]
        if bars:
            ax.hlines([v for _, v in bars], [r - 0.3 for r, _ in bars], [r + 0.3 for r, _ in bars], colors="#b91c1c",
                      linestyles="dashed", lw=1.5, label="stop-rule bar (best earlier + min_gain)")
        if selected is not None and selected[1] in per_annotator and selected[0] in rounds:
            v = per_annotator[selected[1]][list(rounds).index(selected[0])]
            if _is_number(v):
                ax.plot([selected[0]], [v], marker="*", ms=15, color="#f59e0b", markeredgecolor="#92400e",
                        ls="none", label="selected", zorder=5)
        ax.set_xticks(list(rounds))
        ax.set_xlabel("round")
        ax.set_ylabel("agreement (strict span F1)")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlim(min(rounds, default=1) - 0.5, max(rounds, default=1) + 0.5)
        ax.set_title("Agreement without labels", loc="left", fontsize=10, fontweight="bold")
        _legend(ax, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        if gold:
            gx = axes[1]
            for i, name in enumerate(names + [n for n in gold if n not in per_annotator]):
                if name not in gold:
                    continue
                pts = [(r, v) for r, v in zip(rounds, gold[name], strict=True) if _is_number(v)]
                if pts:
                    gx.plot(*zip(*pts, strict=True), marker="o", ms=4, lw=1.2, color=colour(i), label=short(name))
            gx.set_xticks(list(rounds))
            gx.set_xlim(min(rounds, default=1) - 0.5, max(rounds, default=1) + 0.5)
            gx.set_ylim(-0.03, 1.05)
            gx.set_xlabel("round")
            gx.set_ylabel("gold F1 on the pilot set")
            gx.set_title("Gold F1 (labels)", loc="left", fontsize=10, fontweight="bold")
        fig.tight_layout()
    return svg_uri(fig)


def scatter_plot(points: Sequence[tuple[str, float, float]], names: Sequence[str], title: str) -> str:
    """Agreement (x) against gold F1 (y), one point per (round, annotator), coloured by annotator."""
    with matplotlib.rc_context(RC):
        fig = _figure(5.2, 3.8)
        ax = fig.subplots()
        order = list(names) + sorted({n for n, _, _ in points if n not in names})
        for i, name in enumerate(order):
            pts = [(x, y) for n, x, y in points if n == name and _is_number(x) and _is_number(y)]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=70, color=colour(i), label=short(name), alpha=0.8,
                           edgecolors="#1f2937", linewidths=0.6)
        ax.set_xlabel("agreement (mean pairwise F1 with the others)")
        ax.set_ylabel("gold F1 on the pilot set")
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        _legend(ax, fontsize=7, loc="best")
        fig.tight_layout()
    return svg_uri(fig)


def heatmap(names: Sequence[str], matrix: Sequence[Sequence[float | None]], title: str) -> str:
    """A pairwise agreement matrix (None on the diagonal) with each cell's value written in it."""
    n = len(names)
    with matplotlib.rc_context({**RC, "axes.grid": False}):
        side = max(3.2, 1.0 + 0.6 * n)  # two annotators with long names still get a readable matrix
        fig = _figure(side + 1.4, side)
        ax = fig.subplots()
        data = [[float("nan") if v is None else float(v) for v in row] for row in matrix]
        im = ax.imshow(data, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(n):
            for j in range(n):
                v = data[i][j]
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if v > 0.6 else "white")
        labels = [short(x, 20) for x in names]
        ax.set_xticks(range(n), labels, rotation=35, ha="right")
        ax.set_yticks(range(n), labels)
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
    return svg_uri(fig)


def stacked_bars(
    rounds: Sequence[int], series: Mapping[str, Sequence[float]], ylabel: str, title: str
) -> str:
    """One bar per round, stacked by series (nodes or models), in the order given."""
    with matplotlib.rc_context(RC):
        fig = _figure(7.0, 3.2)
        ax = fig.subplots()
        ax.set_axisbelow(True)
        bottom = [0.0] * len(rounds)
        for i, (name, values) in enumerate(series.items()):
            vals = [float(v) if _is_number(v) else 0.0 for v in values]
            ax.bar(list(rounds), vals, bottom=bottom, color=colour(i), width=0.6, label=short(name))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(list(rounds))
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        _legend(ax, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        fig.tight_layout()
    return svg_uri(fig)
