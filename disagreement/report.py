"""The disagreement report as data (docs/method.md, "Disagreement report" and "Annotator error reports").

`build_report` turns a `DisagreementResult` into a `ReportData` (the round's hotspot report) and
`build_annotator_report` into an `AnnotatorReportData` (one annotator against the consensus, for supervisor
phase 2). Both are frozen dataclasses of plain values (`to_dict()` is JSON-serialisable); they are computed here
from `disagreement.compare` and only formatted by the renderers (`disagreement.render_markdown`).
`agreement_figures` and `hotspot_kinds` are the round's figures as plain dicts (analyze's JSON, the graph state).

The hotspot report keeps the errors whose token extent overlaps a hotspot (each error goes to the first hotspot it
overlaps). Example selection uses `numpy.random.default_rng(seed)` over sorted candidates, so the same input gives
the same data, and so byte-identical output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from disagreement.compare import FAMILIES, ConsensusComparison, EntityErrors, choose_examples
from disagreement.engine import HOTSPOT_KINDS, DisagreementResult

# The wording of the families and kinds, shared by every renderer.
FAMILY_TITLES = {
    "O_to_T": "O → T: the consensus says O, a minority says T",
    "T_to_O": "T → O: the consensus says T, a minority says O",
    "A_to_B": "A → B: type confusion (the consensus says A, a minority says B)",
    "span": "Span errors: same type, overlapping, different boundaries",
}
KIND_NOTES = {
    "complex": "elite split and systematic bias at once",
    "elite_split": "the elite annotators disagree among themselves",
    "systematic_bias": "the elite and the other annotators read it differently",
    "minor": "neither; a scattered disagreement",
}


@dataclass(frozen=True)
class ReportParams:
    max_examples_per_type: int = 10  # examples per fine-grained error type in the hotspot report
    context_tokens: int = 3  # tokens of context either side of a hotspot / an error
    max_model_examples: int = 5  # examples per category in a per-annotator report
    max_chars: int = 60_000  # bound on the rendered hotspot report (examples are dropped to meet it)
    seed: int = 42  # example selection
    max_snippet_chars: int = 300  # one quoted piece of document text is clipped in the middle beyond this

    def __post_init__(self) -> None:
        for name in ("max_examples_per_type", "context_tokens", "max_model_examples", "max_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_snippet_chars < 8:
            raise ValueError(f"max_snippet_chars must be >= 8, got {self.max_snippet_chars}")


@dataclass(frozen=True)
class Entity:
    start: int  # document-relative characters, end exclusive
    end: int
    type: str
    text: str


@dataclass(frozen=True)
class Reading:
    """One way of labelling a region: its entities, written inline, and the annotators holding it."""

    text: str  # the region's text with every entity marked `[text]TYPE`
    entities: tuple[Entity, ...]
    annotators: tuple[str, ...]
    region: str = ""  # the region's text, unmarked
    start: int = 0  # the region's first character in the document: an entity is region[e.start - start : e.end - start]


@dataclass(frozen=True)
class Example:
    doc_id: str
    doc: int  # document index in the batch
    hotspot: int  # index into result.hotspots
    kind: str
    token_start: int  # document-relative, end exclusive
    token_end: int
    start: int  # characters
    end: int
    left: str  # context before the hotspot (context_tokens tokens)
    focus: str  # the hotspot's text
    right: str  # context after
    consensus: Reading  # annotators = those whose reading equals the consensus reading
    minority: tuple[Reading, ...]  # every other distinct reading, most held first
    with_error: tuple[str, ...]  # annotators making this example's error type here
    failed: tuple[str, ...]  # annotators without output on this document


@dataclass(frozen=True)
class AnnotatorRow:
    name: str
    weight: float
    mean_agreement: float
    elite: bool
    failed_documents: int
    dropped_spans: int


@dataclass(frozen=True)
class KindCount:
    kind: str
    count: int
    share: float  # of all hotspots


@dataclass(frozen=True)
class ErrorTypeSummary:
    key: str  # "O_to_PER", "PER_to_O", "LOC_to_ORG", "span_LOC"
    family: str  # one of FAMILIES
    ref: str  # consensus type or "O"
    pred: str  # minority type or "O"
    errors: int  # (annotator, entity) errors inside hotspots
    hotspots: int  # distinct hotspots holding at least one
    share: float  # of all errors inside hotspots
    by_annotator: tuple[tuple[str, int], ...]  # most errors first
    examples: tuple[Example, ...]  # at most max_examples_per_type, in document order
    omitted: int  # hotspots of this type not shown as examples


@dataclass(frozen=True)
class ReportData:
    """The round's hotspot report: overview figures, annotators, kinds, error types with their examples."""

    params: ReportParams
    n_documents: int
    n_scored_documents: int
    n_tokens: int
    n_scored_tokens: int
    n_hot_tokens: int
    n_hotspots: int
    threshold: float | None
    percentile: float
    mean_pairwise_f1: float
    types: tuple[str, ...]
    elite: tuple[str, ...]
    excluded: tuple[str, ...]
    annotators: tuple[AnnotatorRow, ...]
    hotspot_kinds: tuple[KindCount, ...]
    n_errors: int  # errors inside hotspots
    n_hotspots_without_errors: int
    family_counts: tuple[tuple[str, int], ...]
    error_types: tuple[ErrorTypeSummary, ...] = field(default=())  # by family, then errors descending

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AnnotatorTotals:
    documents_compared: int  # scored documents the annotator succeeded on
    documents_with_differences: int
    tokens_compared: int
    tokens_differing: int  # tokens whose IO type (O or an entity type) differs from the consensus
    entities: int  # the annotator's
    consensus_entities: int
    exact_matches: int  # same boundaries and type
    precision: float  # against the consensus
    recall: float
    f1: float
    differences: int  # entity-level


@dataclass(frozen=True)
class CategoryRow:
    key: str  # as ErrorTypeSummary.key
    family: str
    ref: str
    pred: str
    count: int
    share: float  # of the annotator's differences
    documents: int  # documents holding at least one
    first_documents: tuple[str, ...]  # up to 5 ids, in document order


@dataclass(frozen=True)
class FrequentStrings:
    type: str  # the annotator's type of O -> T entities
    count: int
    strings: tuple[tuple[str, int], ...]  # the 5 most frequent texts (ties by text) and their counts


@dataclass(frozen=True)
class AnnotatorExample:
    doc_id: str
    doc: int
    token_start: int  # document-relative, end exclusive
    token_end: int
    left: str
    focus: str
    right: str
    consensus: Reading  # annotators = ()
    annotator: Reading  # annotators = (the annotator,)


@dataclass(frozen=True)
class CategoryExamples:
    key: str
    family: str
    ref: str
    pred: str
    total: int  # differences of this category
    examples: tuple[AnnotatorExample, ...]  # at most max_model_examples, in document order


@dataclass(frozen=True)
class AnnotatorReportData:
    """One annotator against the consensus over every scored document it labelled (not only inside hotspots)."""

    params: ReportParams
    annotator: str
    excluded: bool  # failed on every document: left out of the analysis, so nothing below is filled
    row: AnnotatorRow | None = None
    totals: AnnotatorTotals | None = None
    categories: tuple[CategoryRow, ...] = ()  # by family, then count descending
    o_to_t: tuple[FrequentStrings, ...] = ()  # by type id
    examples: tuple[CategoryExamples, ...] = ()  # in the order of `categories`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# the round's figures as plain dicts


def agreement_figures(result: DisagreementResult) -> dict[str, Any]:
    """The agreement figures of a round (weights, pairwise and mean agreement, elite, threshold), JSON-able and
    unrounded: the `diziner analyze --json` keys and the fields of `state.models.AgreementStats`."""
    models = result.models
    f1 = result.pairwise_f1.tolist()
    return {
        "models": list(models),
        "excluded": list(result.excluded),
        "weights": result.weight_of(),
        "pairwise_f1": {a: {b: f1[i][j] for j, b in enumerate(models) if j != i} for i, a in enumerate(models)},
        "mean_pairwise_f1": result.mean_pairwise_f1,
        "mean_agreement": {m: float(v) for m, v in zip(models, result.mean_agreement)},
        "elite": list(result.elite),
        "threshold": result.threshold,
        "dropped_spans": {m: int(n) for m, n in zip(models, result.dropped_spans)},
    }


def hotspot_kinds(result: DisagreementResult) -> dict[str, int]:
    """Hotspots per kind, keys sorted."""
    kinds: dict[str, int] = {}
    for h in result.hotspots:
        kinds[h.kind] = kinds.get(h.kind, 0) + 1
    return {k: kinds[k] for k in sorted(kinds)}


# ----------------------------------------------------------------------------------------------------------
# the hotspot report


def build_report(result: DisagreementResult, params: ReportParams | None = None) -> ReportData:
    """The round's hotspot report as data: figures, error types inside hotspots and their seeded examples."""
    params = params or ReportParams()
    cmp = ConsensusComparison(result)
    K = len(result.models)
    hs = result.hotspots
    H = len(hs)
    t = result.table
    h_doc = np.fromiter((h.doc for h in hs), dtype=np.int64, count=H)
    h_g0 = np.fromiter((h.token_start for h in hs), dtype=np.int64, count=H) + t.token_offset[h_doc]
    h_g1 = np.fromiter((h.token_end for h in hs), dtype=np.int64, count=H) + t.token_offset[h_doc]
    kind_id = {k: i for i, k in enumerate(HOTSPOT_KINDS)}
    h_kind = np.fromiter((kind_id[h.kind] for h in hs), dtype=np.int64, count=H)

    err = EntityErrors.concat([cmp.errors(k) for k in range(K)])
    # each error goes to the first hotspot it overlaps
    j = np.searchsorted(h_g1, err.s, side="right")
    inside = j < H
    inside[inside] = h_g0[j[inside]] < err.e[inside]
    err = err.take(np.flatnonzero(inside))
    h_of = j[inside]
    keys = cmp.key(err)
    order = np.lexsort((err.k, h_of, keys))
    keys, h_of, ek = keys[order], h_of[order], err.k[order]
    n_err = int(keys.size)

    ukeys, kcount = np.unique(keys, return_counts=True)
    # distinct (key, hotspot) pairs, sorted by key then hotspot
    pair = keys * max(H, 1) + h_of
    upair, pstart = np.unique(pair, return_index=True)
    pkey, phot = upair // max(H, 1), upair % max(H, 1)
    per_ann = np.bincount(np.searchsorted(ukeys, keys) * K + ek, minlength=ukeys.size * K).reshape(-1, K)
    hot_with_err = np.zeros(H, dtype=bool)
    hot_with_err[h_of] = True

    decoded = [cmp.decode(int(u)) for u in ukeys]
    fam_of = np.array([FAMILIES.index(dk[1]) for dk in decoded], dtype=np.int64)
    out_order = sorted(range(ukeys.size), key=lambda i: (fam_of[i], -int(kcount[i]), int(ukeys[i])))
    rng = np.random.default_rng(params.seed)
    views: dict[int, dict[str, Any]] = {}
    summaries = []
    for i in out_order:
        label, family, rname, pname = decoded[i]
        a, b = np.searchsorted(pkey, [ukeys[i], ukeys[i] + 1])
        hot_list = phot[a:b]
        chosen = choose_examples(rng, hot_list.size, params.max_examples_per_type)
        examples = []
        for c in chosen.tolist():
            hh = int(hot_list[c])
            p0 = int(pstart[a + c])
            p1 = int(pstart[a + c + 1]) if a + c + 1 < upair.size else n_err
            holders = tuple(result.models[x] for x in sorted(set(ek[p0:p1].tolist())))
            if hh not in views:
                views[hh] = _hotspot_view(cmp, hh, int(h_doc[hh]), int(h_g0[hh]), int(h_g1[hh]), params)
            examples.append(Example(**views[hh], kind=hs[hh].kind, with_error=holders))
        by_ann = sorted(
            ((result.models[x], int(per_ann[i, x])) for x in range(K) if per_ann[i, x]), key=lambda p: -p[1]
        )
        summaries.append(
            ErrorTypeSummary(
                key=label,
                family=family,
                ref=rname,
                pred=pname,
                errors=int(kcount[i]),
                hotspots=int(hot_list.size),
                share=float(kcount[i]) / n_err if n_err else 0.0,
                by_annotator=tuple(by_ann),
                examples=tuple(examples),
                omitted=int(hot_list.size - len(examples)),
            )
        )

    kind_counts = np.bincount(h_kind, minlength=len(HOTSPOT_KINDS))
    fam_counts = np.bincount(fam_of, weights=kcount, minlength=len(FAMILIES)) if ukeys.size else np.zeros(4)
    return ReportData(
        params=params,
        n_documents=len(result.batch.doc_ids),
        n_scored_documents=int(result.scored.sum()),
        n_tokens=int(t.n_tokens),
        n_scored_tokens=int(cmp.scored_tok.sum()),
        n_hot_tokens=int(np.asarray(result.hot).sum()),
        n_hotspots=H,
        threshold=None if result.threshold is None else float(result.threshold),
        percentile=float(result.params.percentile),
        mean_pairwise_f1=float(result.mean_pairwise_f1),
        types=tuple(cmp.types),
        elite=tuple(result.elite),
        excluded=tuple(result.excluded),
        annotators=tuple(_annotator_row(result, k) for k in range(K)),
        hotspot_kinds=tuple(
            KindCount(k, int(kind_counts[i]), float(kind_counts[i]) / H if H else 0.0)
            for i, k in enumerate(HOTSPOT_KINDS)
        ),
        n_errors=n_err,
        n_hotspots_without_errors=int(H - hot_with_err.sum()),
        family_counts=tuple((f, int(fam_counts[i])) for i, f in enumerate(FAMILIES)),
        error_types=tuple(summaries),
    )


def _annotator_row(result: DisagreementResult, k: int) -> AnnotatorRow:
    m = result.models[k]
    return AnnotatorRow(
        name=m,
        weight=float(result.weights[k]),
        mean_agreement=float(result.mean_agreement[k]),
        elite=m in result.elite,
        failed_documents=int((~result.succeeded[:, k]).sum()),
        dropped_spans=int(result.dropped_spans[k]),
    )


def _reading(
    cmp: ConsensusComparison, d: int, r0: int, r1: int, ents: list[tuple[int, int, int]], holders: tuple[str, ...]
) -> Reading:
    """The reading of global tokens [r0, r1) holding `ents` (start, end, type id), each marked `[text]TYPE`."""
    text = cmp.texts[d]
    a, b = cmp.doc_chars(d, r0, r1)
    marks: list[tuple[int, int, str]] = []
    entities = []
    for s, e, t in ents:
        cs, ce = cmp.doc_chars(d, s, e)
        marks.append((cs, 1, "["))
        marks.append((ce, 0, "]" + cmp.types[t]))
        entities.append(Entity(cs, ce, cmp.types[t], text[cs:ce]))
    marks.sort()
    pieces, pos = [], a
    for p, _, m in marks:
        pieces.append(text[pos:p])
        pieces.append(m)
        pos = p
    pieces.append(text[pos:b])
    return Reading("".join(pieces), tuple(entities), holders, text[a:b], a)


def _hotspot_view(cmp: ConsensusComparison, h: int, d: int, g0: int, g1: int, params: ReportParams) -> dict[str, Any]:
    """The fields of an `Example` that do not depend on the error type: context and grouped readings.

    The readings cover the hotspot widened until no entity (of the consensus or of any annotator) crosses
    its edge, so every entity involved in an error attributed to the hotspot appears whole.
    """
    r = cmp.r
    ok = [k for k in range(len(r.models)) if r.succeeded[d, k]]
    failed = [r.models[k] for k in range(len(r.models)) if not r.succeeded[d, k]]
    r0, r1 = g0, g1
    while True:
        cons = cmp.entities(d, cmp.consensus, r0, r1)
        per_k = {k: tuple(cmp.entities(d, cmp.annotator_entities(k), r0, r1)) for k in ok}
        all_ents = cons + [x for rd in per_k.values() for x in rd]
        n0 = min([r0] + [x[0] for x in all_ents])
        n1 = max([r1] + [x[1] for x in all_ents])
        if (n0, n1) == (r0, r1):
            break
        r0, r1 = n0, n1
    readings: dict[tuple, list[int]] = {}
    for k in ok:
        readings.setdefault(per_k[k], []).append(k)

    def reading(ents: tuple | list, holders: list[int]) -> Reading:
        return _reading(cmp, d, r0, r1, list(ents), tuple(r.models[k] for k in holders))

    cons_key = tuple(cons)
    others = sorted(((ks, rd) for rd, ks in readings.items() if rd != cons_key), key=lambda p: (-len(p[0]), p[0][0]))
    left, focus, right = cmp.context(d, g0, g1, params.context_tokens)
    a, b = cmp.doc_chars(d, g0, g1)
    tok0 = int(cmp.table.token_offset[d])
    return {
        "doc_id": r.batch.doc_ids[d],
        "doc": d,
        "hotspot": h,
        "token_start": g0 - tok0,
        "token_end": g1 - tok0,
        "start": a,
        "end": b,
        "left": left,
        "focus": focus,
        "right": right,
        "consensus": reading(cons, readings.get(cons_key, [])),
        "minority": tuple(reading(rd, ks) for ks, rd in others),
        "failed": tuple(failed),
    }


# ----------------------------------------------------------------------------------------------------------
# one annotator against the consensus (supervisor phase 2)


def build_annotator_report(
    result: DisagreementResult, annotator: str, params: ReportParams | None = None
) -> AnnotatorReportData:
    """How one annotator differs from the consensus over every scored document it labelled, as data."""
    params = params or ReportParams()
    if annotator not in result.models:
        if annotator in result.excluded:
            return AnnotatorReportData(params=params, annotator=annotator, excluded=True)
        raise ValueError(f"unknown annotator {annotator!r}; known: {result.models}")
    k = result.models.index(annotator)
    cmp = ConsensusComparison(result)
    doc_ids = result.batch.doc_ids
    mine_arrays = cmp.annotator_entities(k)
    cons_arrays = cmp.consensus_for(k)
    a_s, a_e, a_t = mine_arrays
    c_s, c_e, c_t = cons_arrays
    err = cmp.errors(k)
    err = err.take(np.lexsort((err.pred, err.ref, err.fam, err.e, err.s)))
    keys = cmp.key(err)
    err_doc = cmp.tok_doc[err.s] if err.s.size else np.zeros(0, dtype=np.int64)

    valid_doc = result.scored & result.succeeded[:, k]
    valid_tok = valid_doc[cmp.tok_doc] if cmp.tok_doc.size else np.zeros(0, dtype=bool)
    lab = np.asarray(result.labels[:, k], dtype=np.int64)
    io = np.where(lab > 0, ((lab - 1) >> 1) + 1, 0)
    idx = np.searchsorted(c_s, a_s)
    ok = idx < c_s.size
    ok[ok] = (c_s[idx[ok]] == a_s[ok]) & (c_e[idx[ok]] == a_e[ok]) & (c_t[idx[ok]] == a_t[ok])
    matches = int(ok.sum())
    prec = matches / a_s.size if a_s.size else (1.0 if not c_s.size else 0.0)
    rec = matches / c_s.size if c_s.size else (1.0 if not a_s.size else 0.0)
    totals = AnnotatorTotals(
        documents_compared=int(valid_doc.sum()),
        documents_with_differences=int(np.unique(err_doc).size),
        tokens_compared=int(valid_tok.sum()),
        tokens_differing=int((valid_tok & (io != result.consensus_labels)).sum()),
        entities=int(a_s.size),
        consensus_entities=int(c_s.size),
        exact_matches=matches,
        precision=prec,
        recall=rec,
        f1=2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0,
        differences=int(keys.size),
    )

    ukeys, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    decoded = [cmp.decode(int(u)) for u in ukeys]
    cat_order = sorted(range(ukeys.size), key=lambda i: (FAMILIES.index(decoded[i][1]), -int(counts[i]), int(ukeys[i])))
    categories = []
    for i in cat_order:
        docs = np.unique(err_doc[inv == i])
        categories.append(
            CategoryRow(
                *decoded[i],
                count=int(counts[i]),
                share=float(counts[i] / keys.size),
                documents=int(docs.size),
                first_documents=tuple(doc_ids[d] for d in docs[:5].tolist()),
            )
        )

    o_to_t = []
    o2t = np.flatnonzero(err.fam == 0)
    for t in np.unique(err.pred[o2t]).tolist():
        sel = o2t[err.pred[o2t] == t]
        freq: dict[str, int] = {}
        for i in sel.tolist():
            d = int(err_doc[i])
            a, b = cmp.doc_chars(d, int(err.s[i]), int(err.e[i]))
            s = result.batch.texts[d][a:b]
            freq[s] = freq.get(s, 0) + 1
        top = sorted(freq.items(), key=lambda p: (-p[1], p[0]))[:5]
        o_to_t.append(FrequentStrings(cmp.types[t], int(sel.size), tuple(top)))

    rng = np.random.default_rng(params.seed)
    examples = []
    for i in cat_order:
        members = np.flatnonzero(inv == i)
        chosen = members[choose_examples(rng, members.size, params.max_model_examples)]
        shown = []
        for e in chosen.tolist():
            d = int(err_doc[e])
            g0, g1 = int(err.s[e]), int(err.e[e])
            cons = cmp.entities(d, cons_arrays, g0, g1)
            mine = cmp.entities(d, mine_arrays, g0, g1)
            r0 = min([g0] + [x[0] for x in cons + mine])
            r1 = max([g1] + [x[1] for x in cons + mine])
            left, focus, right = cmp.context(d, g0, g1, params.context_tokens)
            tok0 = int(cmp.table.token_offset[d])
            shown.append(
                AnnotatorExample(
                    doc_id=doc_ids[d],
                    doc=d,
                    token_start=g0 - tok0,
                    token_end=g1 - tok0,
                    left=left,
                    focus=focus,
                    right=right,
                    consensus=_reading(cmp, d, r0, r1, cons, ()),
                    annotator=_reading(cmp, d, r0, r1, mine, (annotator,)),
                )
            )
        examples.append(CategoryExamples(*decoded[i], total=int(members.size), examples=tuple(shown)))
    return AnnotatorReportData(
        params=params,
        annotator=annotator,
        excluded=False,
        row=_annotator_row(result, k),
        totals=totals,
        categories=tuple(categories),
        o_to_t=tuple(o_to_t),
        examples=tuple(examples),
    )
