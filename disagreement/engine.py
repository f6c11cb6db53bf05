"""The deterministic disagreement engine (docs/method.md, "Agreement and weights" to "Hotspot kinds").

Pure numpy, float64, vectorised over tokens: it knows nothing of LLMs or LangGraph. Input is an
`AnnotationBatch` (flat span arrays); output a `DisagreementResult` that the JSON writer, the report
(`disagreement.report`) and the graph node all read.

Label ids follow `corpus.tokens`: 0 = O, 2t+1 = B-t, 2t+2 = I-t for type id t (types in string order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from corpus.io import is_int
from corpus.tokens import TokenTable, label_tokens, sort_order, tokenize_many
from state.errors import InputError

HOT_EPS = 1e-9  # "U > 1e-9": a token (or a typing statistic) must exceed this to count as hot
TIE_EPS = 1e-9  # consensus ties: scores within this of the maximum are tied
MASS_EPS = 1e-12  # type confusion is 0 when 1 - q(O) <= this; elite prefix reaches cutoff - this
CHUNK = 1 << 16  # tokens per chunk: bounds memory to CHUNK x (1 + 2 * n_types) floats

HOTSPOT_KINDS = ("complex", "elite_split", "systematic_bias", "minor")


@dataclass(frozen=True)
class EngineParams:
    percentile: float = 80.0  # hotspot threshold: percentile of the combined score ("Hot tokens")
    coalition_cutoff: float = 0.5  # elite = shortest top-weight prefix reaching this mass ("Elite")
    weight_floor: float = 0.1  # w_k = max(floor, mean pairwise F1) before normalising ("Agreement and weights")
    tv_percentile: float = 90.0  # systematic-bias threshold on elite-vs-rest total variation ("Hotspot kinds")
    elite_internal_percentile: float = 90.0  # elite-split threshold on elite-internal impurity ("Hotspot kinds")

    def __post_init__(self) -> None:
        for name in ("percentile", "tv_percentile", "elite_internal_percentile"):
            v = getattr(self, name)
            if not 0.0 <= v <= 100.0:
                raise InputError(f"{name} must be within [0, 100], got {v}")
        if not 0.0 < self.coalition_cutoff <= 1.0:
            raise InputError(f"coalition_cutoff must be within (0, 1], got {self.coalition_cutoff}")
        if not 0.0 <= self.weight_floor <= 1.0:
            raise InputError(f"weight_floor must be within [0, 1], got {self.weight_floor}")


@dataclass
class AnnotationBatch:
    """Every annotator's spans on every document, as flat arrays.

    `succeeded[d, k]` is False where annotator k failed on document d (null in the input); such a document
    holds no spans of k. Span offsets are document-relative characters, end exclusive.
    """

    doc_ids: list[str]
    texts: list[str]
    annotators: list[str]
    types: list[str]  # sorted (Python string order): type id t is types[t]
    succeeded: np.ndarray  # (n_docs, n_annotators) bool
    span_doc: np.ndarray
    span_annotator: np.ndarray
    span_start: np.ndarray
    span_end: np.ndarray
    span_type: np.ndarray

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[tuple[str, str, Mapping[str, Sequence[tuple[int, int, str]] | None]]],
        annotators: Sequence[str] | None = None,
    ) -> AnnotationBatch:
        """Build from (doc id, text, {annotator: [(start, end, type), ...] or None}); validates spans.

        An annotator missing from a document's mapping is treated as failed on it.
        """
        names = list(annotators) if annotators is not None else sorted({a for _, _, ann in documents for a in ann})
        index = {a: i for i, a in enumerate(names)}
        succeeded = np.zeros((len(documents), len(names)), dtype=bool)
        rows: list[tuple[int, int, int, int, str]] = []
        seen: set[str] = set()
        for d, (doc_id, text, ann) in enumerate(documents):
            if doc_id in seen:
                raise InputError(f"duplicate document id {doc_id!r}")
            seen.add(doc_id)
            for a, spans in ann.items():
                if a not in index:
                    raise InputError(f"document {doc_id!r}: unknown annotator {a!r}")
                if spans is None:
                    continue
                succeeded[d, index[a]] = True
                for s, e, t in spans:
                    check_span(doc_id, a, s, e, t, len(text))
                    rows.append((d, index[a], s, e, t))
        types = sorted({r[4] for r in rows})
        tid = {t: i for i, t in enumerate(types)}
        arr = np.array([r[:4] for r in rows], dtype=np.int64).reshape(-1, 4)
        return cls(
            doc_ids=[d for d, _, _ in documents],
            texts=[t for _, t, _ in documents],
            annotators=names,
            types=types,
            succeeded=succeeded,
            span_doc=arr[:, 0],
            span_annotator=arr[:, 1],
            span_start=arr[:, 2],
            span_end=arr[:, 3],
            span_type=np.array([tid[r[4]] for r in rows], dtype=np.int64),
        )


def check_span(doc_id: str, annotator: str, start: object, end: object, etype: object, text_len: int) -> None:
    """One span's validity, with a message naming the document and annotator."""
    where = f"document {doc_id!r}, annotator {annotator!r}"
    if not is_int(start) or not is_int(end):
        raise InputError(f"{where}: span offsets must be integers, got start={start!r} end={end!r}")
    if not isinstance(etype, str) or not etype:
        raise InputError(f"{where}: span type must be a non-empty string, got {etype!r}")
    if end <= start:
        raise InputError(f"{where}: span end {end} must be greater than start {start}")
    if start < 0 or end > text_len:
        raise InputError(f"{where}: span [{start}, {end}) lies outside the text (length {text_len})")


@dataclass
class HotspotRun:
    """One hotspot as the engine finds it: a run of hot tokens in one document, typed by its coalition statistics."""

    doc: int  # document index
    token_start: int  # document-relative token index
    token_end: int  # exclusive
    start: int  # character offsets in the document's text
    end: int
    kind: str  # one of HOTSPOT_KINDS ("Hotspot kinds")
    mean_combined: float
    max_tv_between: float
    max_elite_internal: float


@dataclass
class DisagreementResult:
    """Everything the engine computed for one round; arrays indexed by global token unless noted."""

    params: EngineParams
    batch: AnnotationBatch
    models: list[str]  # annotators kept, in batch order
    excluded: list[str]  # annotators that failed on every document
    model_index: np.ndarray  # batch column of each kept model
    pairwise_f1: np.ndarray  # (K, K), diagonal 1
    co_succeeded: np.ndarray  # (K, K) documents both succeeded on
    mean_agreement: np.ndarray  # (K,) mean over j != k of F1(k, j)
    weights: np.ndarray  # (K,) normalised
    mean_pairwise_f1: float
    elite: list[str]
    dropped_spans: np.ndarray  # (K,)
    table: TokenTable
    labels: np.ndarray  # (n_tokens, K) label ids over the engine's tokens
    succeeded: np.ndarray  # (n_docs, K)
    scored: np.ndarray  # (n_docs,) at least two annotators succeeded
    conflict: np.ndarray
    type_confusion: np.ndarray
    boundary: np.ndarray
    combined: np.ndarray
    tv_between: np.ndarray
    elite_internal: np.ndarray
    rest_internal: np.ndarray
    elite_dominance: np.ndarray
    consensus_labels: np.ndarray  # (n_tokens,) 0 = O, 1 + t = type t (IO)
    threshold: float | None
    tv_threshold: float | None
    elite_internal_threshold: float | None
    hot: np.ndarray  # (n_tokens,) bool
    hotspots: list[HotspotRun]
    consensus_spans: list[list[tuple[int, int, str]]] = field(default_factory=list)  # per document

    @property
    def types(self) -> list[str]:
        return self.batch.types

    def weight_of(self) -> dict[str, float]:
        return {m: float(w) for m, w in zip(self.models, self.weights)}


def analyze(batch: AnnotationBatch, params: EngineParams | None = None) -> DisagreementResult:
    """Run the whole deterministic analysis of one round."""
    params = params or EngineParams()
    n_docs = len(batch.doc_ids)
    # --- annotators that failed everywhere are left out ("Agreement and weights")
    ever = batch.succeeded.any(axis=0) if n_docs else np.zeros(len(batch.annotators), dtype=bool)
    model_index = np.flatnonzero(ever)
    models = [batch.annotators[i] for i in model_index]
    excluded = [a for a, ok in zip(batch.annotators, ever) if not ok]
    if len(models) < 2:
        raise InputError(
            f"at least two annotators must succeed on some document; usable: {models or 'none'}"
            + (f", excluded (failed on every document): {excluded}" if excluded else "")
        )
    K = len(models)
    remap = np.full(len(batch.annotators), -1, dtype=np.int64)
    remap[model_index] = np.arange(K)
    S = batch.succeeded[:, model_index]
    span_k = remap[batch.span_annotator]
    keep = span_k >= 0
    sd, sk = batch.span_doc[keep], span_k[keep]
    ss, se, st = batch.span_start[keep], batch.span_end[keep], batch.span_type[keep]

    f1, co = pairwise_agreement(n_docs, K, S, sd, sk, ss, se, st)
    # Sums below run over sorted values or in a canonical annotator order, so that renaming or reordering
    # annotators cannot change a single bit of any score (and so cannot flip a token at the threshold).
    off = ~np.eye(K, dtype=bool)
    mean_agreement = np.sort(np.where(off, f1, 0.0), axis=1).sum(axis=1) / (K - 1)
    raw = np.maximum(params.weight_floor, mean_agreement)
    weights = raw / np.sort(raw).sum()
    iu = np.triu_indices(K, 1)
    mean_pairwise = float(np.sort(f1[iu]).sum() / iu[0].size)
    elite_idx = elite_members(models, weights, params.coalition_cutoff)
    elite = [models[i] for i in elite_idx]

    # --- tokens and each annotator's IOB2 labels ("Tokens and IOB2")
    table = tokenize_many(batch.texts)
    proj = label_tokens(table, K, sk, sd, ss, se, st)
    labels = proj.labels
    tok_doc = table.token_doc()
    n_succ = S.sum(axis=1)
    scored = n_succ >= 2
    elite_mask = np.zeros(K, dtype=bool)
    elite_mask[elite_idx] = True

    # canonical column order for token-level sums: weight descending, then name (equal weights are equal values)
    canon = np.array(sorted(range(K), key=lambda i: (-float(weights[i]), models[i])), dtype=np.int64)
    labels_c, S_c, weights_c, elite_c = labels[:, canon], S[:, canon], weights[canon], elite_mask[canon]
    T = len(batch.types)
    n = table.n_tokens
    out = {name: np.zeros(n) for name in ("conflict", "type", "boundary", "combined", "tv", "ei", "ri", "dom")}
    consensus = np.zeros(n, dtype=np.int64)
    w_all = _row_normalise(S_c * weights_c)  # (n_docs, K): weights renormalised among those who succeeded
    w_elite = _row_normalise(S_c * (weights_c * elite_c))
    w_rest = _row_normalise(S_c * (weights_c * ~elite_c))
    n_elite = (S_c & elite_c).sum(axis=1)
    n_rest = (S_c & ~elite_c).sum(axis=1)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        docs = tok_doc[a:b]
        lab = labels_c[a:b]
        p = _distribution(lab, w_all[docs], T)
        conf, typ, bnd = token_scores(p)
        out["conflict"][a:b], out["type"][a:b], out["boundary"][a:b] = conf, typ, bnd
        out["combined"][a:b] = np.maximum(np.maximum(conf, typ), bnd)
        consensus[a:b] = consensus_vote(p)
        # coalition diagnostics ("Hotspot kinds")
        pc = _distribution(lab, w_elite[docs], T)
        pr = _distribution(lab, w_rest[docs], T)
        both = (n_elite[docs] > 0) & (n_rest[docs] > 0)
        tv = np.where(both, 0.5 * np.abs(pc - pr).sum(axis=1), 0.0)
        ei = np.where(n_elite[docs] > 1, 1.0 - (pc * pc).sum(axis=1), 0.0)
        ri = np.where(n_rest[docs] > 1, 1.0 - (pr * pr).sum(axis=1), 0.0)
        out["tv"][a:b], out["ei"][a:b], out["ri"][a:b] = tv, ei, ri
        out["dom"][a:b] = np.where(tv > 0, tv - ei, 0.0)

    no_vote = n_succ[tok_doc] == 0
    consensus[no_vote] = 0
    scored_tok = scored[tok_doc]
    for key in out:  # unscored documents carry no token scores
        out[key][~scored_tok] = 0.0
    threshold = _percentile(out["combined"][scored_tok], params.percentile)
    tv_thr = _percentile(out["tv"][scored_tok], params.tv_percentile)
    ei_thr = _percentile(out["ei"][scored_tok], params.elite_internal_percentile)
    if threshold is None:
        hot = np.zeros(n, dtype=bool)
    else:
        hot = scored_tok & (out["combined"] >= threshold) & (out["combined"] > HOT_EPS)
    hotspots = _hotspots(table, tok_doc, hot, out, tv_thr, ei_thr)
    result = DisagreementResult(
        params=params,
        batch=batch,
        models=models,
        excluded=excluded,
        model_index=model_index,
        pairwise_f1=f1,
        co_succeeded=co,
        mean_agreement=mean_agreement,
        weights=weights,
        mean_pairwise_f1=mean_pairwise,
        elite=elite,
        dropped_spans=proj.dropped,
        table=table,
        labels=labels,
        succeeded=S,
        scored=scored,
        conflict=out["conflict"],
        type_confusion=out["type"],
        boundary=out["boundary"],
        combined=out["combined"],
        tv_between=out["tv"],
        elite_internal=out["ei"],
        rest_internal=out["ri"],
        elite_dominance=out["dom"],
        consensus_labels=consensus,
        threshold=threshold,
        tv_threshold=tv_thr,
        elite_internal_threshold=ei_thr,
        hot=hot,
        hotspots=hotspots,
    )
    result.consensus_spans = consensus_spans(table, tok_doc, consensus, batch.types)
    return result


def pairwise_agreement(
    n_docs: int,
    K: int,
    S: np.ndarray,
    doc: np.ndarray,
    ann: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    etype: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """F1(a, b) = 2|A and B| / (|A| + |B|) over the span *sets* (doc, start, end, type) as given, restricted to
    the documents where both succeeded; 1.0 when both sets are empty, 0.0 when they never co-succeeded.

    Returns (F1 matrix with unit diagonal, co-success document counts).
    """
    order = sort_order(doc, start, end, etype, ann)
    d, s, e, t, k = doc[order], start[order], end[order], etype[order], ann[order]
    same_span = np.zeros(d.size, dtype=bool)
    if d.size:
        same_span[1:] = (d[1:] == d[:-1]) & (s[1:] == s[:-1]) & (e[1:] == e[:-1]) & (t[1:] == t[:-1])
    dup = np.zeros(d.size, dtype=bool)
    dup[1:] = same_span[1:] & (k[1:] == k[:-1])
    d, k, same_span = d[~dup], k[~dup], same_span[~dup]
    span_id = np.cumsum(~same_span) - 1
    n_spans = int(span_id[-1]) + 1 if span_id.size else 0
    member = np.zeros((n_spans, K))
    member[span_id, k] = 1.0
    inter = member.T @ member  # |A and B| (both hold the span, so both succeeded on its document)
    counts = np.bincount(d * K + k, minlength=n_docs * K).reshape(n_docs, K).astype(np.float64)
    Sf = S.astype(np.float64)
    sizes = counts.T @ Sf  # sizes[a, b] = |A| over documents where b succeeded
    co = Sf.T @ Sf
    denom = sizes + sizes.T
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2.0 * inter / denom, 1.0)
    f1 = np.where(co > 0, f1, 0.0)
    np.fill_diagonal(f1, 1.0)
    return f1, co.astype(np.int64)


def elite_members(models: Sequence[str], weights: np.ndarray, cutoff: float) -> list[int]:
    """Indices of the elite: by weight descending, ties by name; shortest prefix whose mass >= cutoff - 1e-12."""
    order = sorted(range(len(models)), key=lambda i: (-float(weights[i]), models[i]))
    total = 0.0
    chosen: list[int] = []
    for i in order:
        chosen.append(i)
        total += float(weights[i])
        if total >= cutoff - MASS_EPS:
            break
    return chosen


def _row_normalise(w: np.ndarray) -> np.ndarray:
    s = w.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, w / np.where(s > 0, s, 1.0), 0.0)


def _distribution(labels: np.ndarray, w: np.ndarray, n_types: int) -> np.ndarray:
    """p[i, y] = sum of the (renormalised) weights of the annotators giving token i label y."""
    n, K = labels.shape
    width = 1 + 2 * n_types
    idx = (np.arange(n)[:, None] * width + labels).ravel()
    return np.bincount(idx, weights=w.ravel(), minlength=n * width).reshape(n, width)


def token_scores(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label conflict, type confusion and boundary uncertainty from label distributions ("Disagreement scores")."""
    conflict = 1.0 - (p * p).sum(axis=1)
    qB = p[:, 1::2].sum(axis=1)
    qI = p[:, 2::2].sum(axis=1)
    q_type = p[:, 1::2] + p[:, 2::2]
    mass = 1.0 - p[:, 0]
    ok = mass > MASS_EPS
    safe = np.where(ok, mass, 1.0)[:, None]
    type_conf = np.where(ok, 1.0 - ((q_type / safe) ** 2).sum(axis=1), 0.0)
    boundary = np.maximum(4.0 * qB * (1.0 - qB), 4.0 * qI * (1.0 - qI))
    return conflict, type_conf, boundary


def consensus_vote(p: np.ndarray) -> np.ndarray:
    """Weighted IO vote: 0 = O or 1 + t; ties (within 1e-9) go to O if tied, else the first type in string order."""
    io = np.concatenate([p[:, :1], p[:, 1::2] + p[:, 2::2]], axis=1)
    tied = io >= io.max(axis=1, keepdims=True) - TIE_EPS
    return np.argmax(tied, axis=1)  # first tied column: O is column 0, types follow in string order


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def token_runs(
    mask: np.ndarray, tok_doc: np.ndarray, key: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) global token ranges of maximal runs of `mask` within a document (and of equal `key`)."""
    n = mask.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    brk = np.ones(n + 1, dtype=bool)  # brk[i]: a run cannot continue from token i-1 into token i
    brk[1:n] = tok_doc[1:] != tok_doc[:-1]
    if key is not None:
        brk[1:n] |= key[1:] != key[:-1]
    m = np.concatenate([[False], mask, [False]])
    starts = np.flatnonzero(m[1:-1] & (brk[:-1] | ~m[:-2]))
    ends = np.flatnonzero(m[1:-1] & (brk[1:] | ~m[2:])) + 1
    return starts, ends


def _hotspots(
    table: TokenTable,
    tok_doc: np.ndarray,
    hot: np.ndarray,
    s: dict[str, np.ndarray],
    tv_thr: float | None,
    ei_thr: float | None,
) -> list[HotspotRun]:
    """Runs of hot tokens bridging any number of single cold tokens (two cold in a row end a run)."""
    n = hot.size
    filled = hot.copy()
    if n >= 3:
        same = (tok_doc[:-2] == tok_doc[1:-1]) & (tok_doc[1:-1] == tok_doc[2:])
        filled[1:-1] |= hot[:-2] & hot[2:] & same
    starts, ends = token_runs(filled, tok_doc)
    if starts.size == 0:
        return []
    # typing ("Hotspot kinds"): any token of the run over its P90 threshold (and > 1e-9)
    sys_tok = (s["tv"] >= tv_thr) & (s["tv"] > HOT_EPS) if tv_thr is not None else np.zeros(n, bool)
    split_tok = (s["ei"] >= ei_thr) & (s["ei"] > HOT_EPS) if ei_thr is not None else np.zeros(n, bool)
    cum_sys = np.concatenate([[0], np.cumsum(sys_tok)])
    cum_split = np.concatenate([[0], np.cumsum(split_tok)])
    cum_u = np.concatenate([[0.0], np.cumsum(s["combined"])])
    has_sys = (cum_sys[ends] - cum_sys[starts]) > 0
    has_split = (cum_split[ends] - cum_split[starts]) > 0
    mean_u = (cum_u[ends] - cum_u[starts]) / (ends - starts)
    max_tv = _range_max(s["tv"], starts, ends)
    max_ei = _range_max(s["ei"], starts, ends)
    docs = tok_doc[starts]
    tok0 = table.token_offset[docs]
    c0 = table.char_offset[docs]
    char_start = table.starts[starts] - c0
    char_end = table.ends[ends - 1] - c0
    kinds = np.where(has_split & has_sys, 0, np.where(has_split, 1, np.where(has_sys, 2, 3)))
    return [
        HotspotRun(int(d), int(a), int(b), int(cs), int(ce), HOTSPOT_KINDS[k], float(mu), float(tv), float(ei))
        for d, a, b, cs, ce, k, mu, tv, ei in zip(
            docs.tolist(),
            (starts - tok0).tolist(),
            (ends - tok0).tolist(),
            char_start.tolist(),
            char_end.tolist(),
            kinds.tolist(),
            mean_u.tolist(),
            max_tv.tolist(),
            max_ei.tolist(),
        )
    ]


def _range_max(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """max(values[a:b]) for each non-empty [a, b)."""
    idx = np.empty(2 * starts.size, dtype=np.int64)
    idx[0::2], idx[1::2] = starts, ends
    return np.maximum.reduceat(np.append(values, 0.0), idx)[0::2]


def consensus_spans(
    table: TokenTable, tok_doc: np.ndarray, consensus: np.ndarray, types: Sequence[str]
) -> list[list[tuple[int, int, str]]]:
    """Consecutive tokens of one consensus type form one span; per document, character offsets."""
    n_docs = table.char_offset.size
    out: list[list[tuple[int, int, str]]] = [[] for _ in range(n_docs)]
    starts, ends = token_runs(consensus > 0, tok_doc, key=consensus)
    if starts.size == 0:
        return out
    docs = tok_doc[starts]
    c0 = table.char_offset[docs]
    cs = (table.starts[starts] - c0).tolist()
    ce = (table.ends[ends - 1] - c0).tolist()
    ty = (consensus[starts] - 1).tolist()
    for d, a, b, t in zip(docs.tolist(), cs, ce, ty):
        out[d].append((a, b, types[t]))
    return out


def weighted_consensus(
    documents: Sequence[tuple[str, str, Mapping[str, Sequence[tuple[int, int, str]] | None]]],
    weights: Mapping[str, float],
) -> list[list[tuple[int, int, str]]]:
    """The weighted IO consensus ("Consensus") of each document under GIVEN annotator weights, as character spans.

    `documents` is what `AnnotationBatch.from_documents` takes (None where an annotator failed on a document);
    `weights` maps annotator -> weight (>= 0; an annotator it does not name gets 0 and so never votes). On each
    document the weights are renormalised among the annotators that succeeded on it, exactly as `analyze` does
    with its own weights; a document no weighted annotator succeeded on has no consensus spans.
    """
    for name, w in weights.items():
        if not np.isfinite(w) or w < 0:
            raise InputError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
    names = list(dict.fromkeys([*weights, *(a for _, _, ann in documents for a in ann)]))
    batch = AnnotationBatch.from_documents(documents, annotators=names)
    K = len(batch.annotators)
    w = np.array([float(weights.get(a, 0.0)) for a in batch.annotators])
    table = tokenize_many(batch.texts)
    labels = label_tokens(
        table, K, batch.span_annotator, batch.span_doc, batch.span_start, batch.span_end, batch.span_type
    ).labels
    tok_doc = table.token_doc()
    # canonical column order (weight descending, then name), as in `analyze`: sums cannot depend on input order
    canon = np.array(sorted(range(K), key=lambda i: (-float(w[i]), batch.annotators[i])), dtype=np.int64)
    w_docs = _row_normalise(batch.succeeded[:, canon] * w[canon])
    labels_c = labels[:, canon]
    n = table.n_tokens
    consensus = np.zeros(n, dtype=np.int64)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        consensus[a:b] = consensus_vote(_distribution(labels_c[a:b], w_docs[tok_doc[a:b]], len(batch.types)))
    if n:
        consensus[w_docs.sum(axis=1)[tok_doc] == 0] = 0
    return consensus_spans(table, tok_doc, consensus, batch.types)
