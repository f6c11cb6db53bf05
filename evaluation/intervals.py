"""Bootstrap percentile intervals over documents for strict span micro P/R/F1 and per type.

The figures are those of `corpus.scoring.score` (spans are the set of (document id, start, end, type); P = 0 with no
predictions, R = 0 with no gold, F1 = 0 when P + R = 0). The unit of resampling is the document: each resample
draws as many documents as there are, with replacement, and sums their true positive, false positive and false
negative counts. The per-document counts are computed once, so a resample is one row of a weight matrix times the
counts matrix. See docs/method.md (evaluation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from corpus.io import CorpusDocument
from corpus.scoring import prf, score

__all__ = ["DocumentCounts", "document_counts", "bootstrap_intervals"]

# Resamples are drawn in blocks of at most this many (resample, document) cells, to bound memory.
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class DocumentCounts:
    """Per-document strict span counts: row i is ``doc_ids[i]``; column 0 is every type, column 1 + j is ``types[j]``.

    ``tp``, ``fp`` and ``fn`` are integer arrays of shape (number of documents, 1 + number of types).
    """

    doc_ids: tuple[str, ...]
    types: tuple[str, ...]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def n_documents(self) -> int:
        return len(self.doc_ids)

    def totals(self) -> dict:
        """The corpus-level figures (sums over every document), in the shape `corpus.scoring.score` returns."""
        tp, fp, fn = (a.sum(axis=0) for a in (self.tp, self.fp, self.fn))
        result = prf(int(tp[0]), int(fp[0]), int(fn[0]))
        result["per_type"] = {t: prf(int(tp[j + 1]), int(fp[j + 1]), int(fn[j + 1])) for j, t in enumerate(self.types)}
        return result


def document_counts(
    gold: Iterable[CorpusDocument],
    pred: Iterable[CorpusDocument],
    *,
    types: Iterable[str] = (),
    gold_path: str | None = None,
    pred_path: str | None = None,
) -> DocumentCounts:
    """True positive, false positive and false negative counts of each gold document (gold order), total and per type.

    Documents are matched by id and validated exactly as `corpus.scoring.score` does (its InputErrors are raised);
    a gold document missing from the predictions counts its spans as false negatives. The columns are the types
    that occur in the gold or the predictions, plus any of ``types`` (e.g. the task's types, so that a type with no
    gold and no predictions still gets a row of zeros), sorted.
    """
    gold = list(gold)
    pred = list(pred)
    score(gold, pred, gold_path=gold_path, pred_path=pred_path)  # validation only: the same errors as scoring

    pred_spans = {d.id: set(d.entities or ()) for d in pred}
    per_doc: list[tuple[Counter, Counter, Counter]] = []
    all_types: set[str] = set(types)
    for d in gold:
        g = set(d.entities or ())
        p = pred_spans.get(d.id, set())
        hit = g & p
        tp = Counter(t for _, _, t in hit)
        fp = Counter(t for _, _, t in p - hit)
        fn = Counter(t for _, _, t in g - hit)
        per_doc.append((tp, fp, fn))
        all_types.update(t for _, _, t in g | p)

    ordered = tuple(sorted(all_types))
    column = {t: j + 1 for j, t in enumerate(ordered)}
    shape = (len(gold), 1 + len(ordered))
    arrays = [np.zeros(shape, dtype=np.int64) for _ in range(3)]
    for i, counters in enumerate(per_doc):
        for array, counter in zip(arrays, counters, strict=True):
            for t, n in counter.items():
                array[i, column[t]] = n
            array[i, 0] = sum(counter.values())
    tp_a, fp_a, fn_a = arrays
    return DocumentCounts(doc_ids=tuple(d.id for d in gold), types=ordered, tp=tp_a, fp=fp_a, fn=fn_a)


def _resample_sums(matrix: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums of ``matrix`` (documents x columns) over ``n_resamples`` bootstrap resamples of its rows."""
    n_docs = matrix.shape[0]
    if n_docs == 0:
        return np.zeros((n_resamples, matrix.shape[1]))
    counts = matrix.astype(np.float64)  # BLAS matmul; integer sums stay exact below 2**53
    block = max(1, _BLOCK_CELLS // n_docs)
    out = np.empty((n_resamples, matrix.shape[1]))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        drawn = rng.integers(0, n_docs, size=(b, n_docs))
        offsets = (np.arange(b) * n_docs)[:, None]
        weights = np.bincount((drawn + offsets).ravel(), minlength=b * n_docs).reshape(b, n_docs)
        out[start : start + b] = weights @ counts
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (the scoring convention)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def bootstrap_intervals(
    counts: DocumentCounts,
    n_resamples: int = 1000,
    seed: int = 42,
    level: float = 0.95,
) -> dict:
    """Point estimates and bootstrap percentile intervals (over documents) for micro and per-type P/R/F1.

    Returns ``{"micro": row, "per_type": {TYPE: row}, "n_documents", "n_resamples", "seed", "level"}`` where a row
    is `corpus.scoring.prf`'s dict (fractions, equal to `corpus.scoring.score`'s) plus ``precision_ci``,
    ``recall_ci`` and ``f1_ci`` as ``[low, high]``: the (1 - level) / 2 and (1 + level) / 2 percentiles (linear
    interpolation) of the figure over ``n_resamples`` resamples drawn with ``numpy.random.default_rng(seed)``.
    A resample without gold or predictions for a type scores 0 for it, by the scoring convention; with no
    documents every resample is empty, so every interval is [0.0, 0.0].
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, Integral) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    k = counts.tp.shape[1]
    sums = _resample_sums(
        np.concatenate([counts.tp, counts.fp, counts.fn], axis=1), n_resamples, np.random.default_rng(seed)
    )
    tp, fp, fn = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    bounds = {
        name: np.percentile(values, q, axis=0)
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1))
    }

    point = counts.totals()

    def row(base: dict, j: int) -> dict:
        out = dict(base)
        for name, b in bounds.items():
            out[f"{name}_ci"] = [float(b[0, j]), float(b[1, j])]
        return out

    micro = {key: value for key, value in point.items() if key != "per_type"}
    return {
        "micro": row(micro, 0),
        "per_type": {t: row(point["per_type"][t], j + 1) for j, t in enumerate(counts.types)},
        "n_documents": counts.n_documents,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "level": level,
    }
