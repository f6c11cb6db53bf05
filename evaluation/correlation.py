"""Pearson and Spearman correlation over paired points (e.g. pilot agreement against gold F1 across iterations).

Both return ``None`` when the coefficient is undefined: fewer than two points, or every x (or every y) equal.
Spearman's coefficient is Pearson's over the ranks, tied values sharing the average of their ranks.
See docs/method.md (evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["pearson", "spearman", "average_ranks"]


def _as_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float arrays of finite values, or ValueError."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1:
        raise ValueError("x and y must be one-dimensional sequences of numbers")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must hold finite numbers only (no NaN or infinity)")
    return xa, ya


def _defined(xa: np.ndarray, ya: np.ndarray) -> bool:
    return xa.size >= 2 and bool((xa != xa[0]).any()) and bool((ya != ya[0]).any())


def _pearson(xa: np.ndarray, ya: np.ndarray) -> float:
    dx = xa - xa.mean()
    dy = ya - ya.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return max(-1.0, min(1.0, float(dx @ dy) / denominator))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's product-moment correlation of the points (x[i], y[i]); None when undefined."""
    xa, ya = _as_pair(x, y)
    if not _defined(xa, ya):
        return None
    return _pearson(xa, ya)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, tied values sharing the mean of the ranks they span."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(a.size, dtype=np.float64)
    sorted_a = a[order]
    # Start index of each run of equal values in sorted order, and the run's end (exclusive).
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]]) if a.size else np.array([], dtype=int)
    ends = np.r_[starts[1:], a.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of the points (x[i], y[i]) with average ranks for ties; None when undefined."""
    xa, ya = _as_pair(x, y)
    if not _defined(xa, ya):
        return None
    return _pearson(average_ranks(xa), average_ranks(ya))
