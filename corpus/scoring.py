"""Scoring (docs/method.md, "Scoring"): strict span micro P/R/F1 over (document id, start, end, type), and per type.

Plain dicts and tuple sets; no Pydantic, LangGraph or LangChain (imported by `diziner evaluate`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

from corpus.io import CorpusDocument
from state.errors import InputError

__all__ = ["score", "prf", "align_by_position"]


def prf(tp: int, fp: int, fn: int) -> dict:
    """One row of the result: P = 0 with no predictions, R = 0 with no gold, F1 = 0 when P + R = 0."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def _where(path: str | None, doc: CorpusDocument) -> dict:
    return {"path": path, "line": doc.line if path is not None else None}


def score(
    gold: Iterable[CorpusDocument],
    pred: Iterable[CorpusDocument],
    *,
    gold_path: str | None = None,
    pred_path: str | None = None,
    limit: int | None = None,
) -> dict:
    """Strict span micro P/R/F1 of ``pred`` against ``gold``, documents matched by id.

    Spans are the set of (document id, start, end, type): duplicates count once. A gold document missing from the
    predictions contributes its spans as false negatives. A predicted id absent from the gold, a predicted document
    whose text differs from the gold's, or a duplicate id on either side is an InputError naming the id (and the
    file and line when ``gold_path``/``pred_path`` are given). ``entities=None`` counts as no spans.

    With ``limit``, only the first ``limit`` gold documents (in the given order) are scored: the predictions for the
    later gold documents are ignored (an id absent from the whole gold is still an error).

    Returns ``{"precision", "recall", "f1", "tp", "fp", "fn", "per_type": {TYPE: {same keys}}}`` with unrounded
    floats and ``per_type`` holding every type that occurs in the gold or the predictions, keys sorted.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    gold_text: dict[str, str] = {}
    gold_spans: set[tuple[str, int, int, str]] = set()
    beyond: set[str] = set()  # ids of the gold documents after the first `limit`
    for n, d in enumerate(gold):
        if d.id in gold_text or d.id in beyond:
            raise InputError(f"duplicate gold document id {d.id!r}", **_where(gold_path, d))
        if limit is not None and n >= limit:
            beyond.add(d.id)
            continue
        gold_text[d.id] = d.text
        if d.entities:
            i = d.id
            gold_spans.update((i, s, e, t) for s, e, t in d.entities)
    pred_spans: set[tuple[str, int, int, str]] = set()
    seen: set[str] = set()
    for d in pred:
        i = d.id
        if i in seen:
            raise InputError(f"duplicate predicted document id {i!r}", **_where(pred_path, d))
        seen.add(i)
        if i in beyond:
            continue
        text = gold_text.get(i)
        if text is None:
            raise InputError(f"predicted document id {i!r} is not in the gold", **_where(pred_path, d))
        if text != d.text:
            raise InputError(
                f"predicted document {i!r} has a different text from the gold document with that id",
                **_where(pred_path, d),
            )
        if d.entities:
            pred_spans.update((i, s, e, t) for s, e, t in d.entities)

    tp_set = gold_spans & pred_spans
    tp_by = Counter(x[3] for x in tp_set)
    gold_by = Counter(x[3] for x in gold_spans)
    pred_by = Counter(x[3] for x in pred_spans)
    tp = len(tp_set)
    result = prf(tp, len(pred_spans) - tp, len(gold_spans) - tp)
    result["per_type"] = {
        t: prf(tp_by[t], pred_by[t] - tp_by[t], gold_by[t] - tp_by[t]) for t in sorted(gold_by.keys() | pred_by.keys())
    }
    return result


def align_by_position(
    gold: Sequence[CorpusDocument],
    pred: Sequence[CorpusDocument],
    *,
    gold_path: str | None = None,
    pred_path: str | None = None,
) -> list[CorpusDocument]:
    """Match two CoNLL files by position (`diziner evaluate` when both inputs are CoNLL).

    Both must hold the same number of sentences with identical token sequences; otherwise InputError naming the
    first differing sentence (1-based) and its lines. Returns the predicted documents renamed to the gold ids, ready
    for `score`.
    """
    g_name = gold_path or "gold"
    p_name = pred_path or "predictions"
    for n, (g, p) in enumerate(zip(gold, pred, strict=False), 1):
        if g.tokens != p.tokens:
            gt, pt = g.tokens or [], p.tokens or []
            k = next((k for k, (a, b) in enumerate(zip(gt, pt, strict=False)) if a != b), min(len(gt), len(pt)))
            if k < min(len(gt), len(pt)):
                what = f"token {k + 1} is {gt[k]!r} in the gold but {pt[k]!r} in the predictions"
            else:
                what = f"it has {len(gt)} token(s) in the gold but {len(pt)} in the predictions"
            raise InputError(
                f"sentence {n} differs from the gold's sentence {n} ({g_name}:{g.line}): {what}",
                path=pred_path,
                line=p.line if pred_path is not None else None,
            )
    if len(gold) != len(pred):
        n = min(len(gold), len(pred)) + 1
        raise InputError(
            f"{p_name} has {len(pred)} sentence(s) but {g_name} has {len(gold)}: "
            f"sentence {n} is missing from the {'predictions' if len(pred) < len(gold) else 'gold'}",
            path=pred_path,
        )
    return [replace(p, id=g.id) for g, p in zip(gold, pred, strict=True)]
