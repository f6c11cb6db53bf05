"""Pilot sets: which documents the annotators label in each round (docs/method.md#pilot-sets).

The rule: `pilot_size` documents per round (default 25), chosen for lexical diversity
with TF-IDF vectors and seeded k-means in numpy, taking the member nearest each centroid; a fresh disjoint set each
round while the pool allows, then the least recently used documents; a pool no larger than `pilot_size` is used whole
each round. Seeded and reproducible.

This follows the reference's lexical-diversity grouping (k-means with k = group size on the
*remaining* pool, the member closest to each centroid, chosen sets removed from the pool) with two differences:
sentence embeddings are replaced by TF-IDF vectors (no embedding model is available offline), and the sets are not
precomputed as 20 groups but drawn round by round from the history of earlier rounds, so a run can resume anywhere.

Pure numpy; no LLM or graph imports.

Features (`tfidf_matrix`)
    tokens      `re.findall(r"\\w+", text.lower())`
    vocabulary  the `max_features` (5,000) tokens with the highest total count in the pool, ties by token string
    tf          sublinear: 1 + ln(count in the document)
    idf         smoothed: ln((1 + n) / (1 + df)) + 1, with n documents and df the documents containing the token
    rows        L2-normalised; a text with no vocabulary token is an all-zero row
    reduction   when the vocabulary has more than `dims` (256) tokens, the sparse TF-IDF rows are multiplied by a
                seeded sparse random projection (vocabulary x dims; each token has 8 non-zero entries +-1/sqrt(8) in
                distinct columns, drawn from `np.random.default_rng(seed)`) and L2-normalised again. Inner products
                are kept in expectation, with an error of roughly 1/sqrt(dims) on cosines (Johnson-Lindenstrauss;
                Li, Hastie & Church 2006 for sparse projections). With a vocabulary of at most `dims` tokens the
                result is the exact TF-IDF matrix, one column per token in vocabulary order.
    The pool is tokenised by one regex call over the joined texts, entries are built by numpy sorting, and the
    projection is accumulated by `np.bincount` in chunks of documents, so memory is O(tokens in the pool + n x dims):
    about 2 KB a document at dims=256 (200 MB for 100,000 texts).

Clustering (`kmeans`, `choose_diverse`)
    Greedy k-means++ initialisation (2 + floor(ln k) local trials per centre, as scikit-learn) from
    `np.random.default_rng(seed)`, vectorised Lloyd iterations (distances by BLAS in small row blocks), best of `n_init`
    by inertia (first run wins ties). An empty cluster is re-seeded with the points farthest from their centroids
    (ties by row index). Lloyd stops when the assignment no longer changes, when the squared centroid shift is at most
    1e-4 x the mean per-feature variance, or after `max_iter` iterations; the returned assignment is always the
    nearest-centroid assignment of the returned centroids (ties to the lower cluster id).
    `choose_diverse` fits k-means on all candidates, or on a seeded uniform sample of `MAX_FIT_ROWS` (5,000) of them
    when there are more (200 rows a centroid at k = 25, so the centroids barely move, and a round over a
    100,000-document pool costs one pass over the pool instead of hundreds); then every candidate is assigned to its
    nearest centroid and the member nearest each centroid is taken (ties by pool index). A cluster left without a
    member takes, in cluster order, the unused candidate nearest its centroid, so the k picks are always distinct.

Selection for a round (`PilotSampler.select`), given the earlier rounds' selections `history`:
    1. If the pool has at most `pilot_size` documents: the whole pool.
    2. Unused = documents in no earlier selection. If at least `pilot_size` are unused: `choose_diverse` on the unused
       rows with k = `pilot_size` and seed `seed + 1000 * round_index`.
    3. Otherwise: every unused document, filled up with used ones in least-recently-used order: by the last round
       (position in `history`) that selected them, oldest first, ties by pool index.
    The result is a list of pool indices sorted ascending. It depends only on the pool, `pilot_size`, `seed` and the
    arguments (no hidden state), so the graph keeps `history` in its state and can resume at any round.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from corpus.io import is_int
from state.errors import InputError

__all__ = [
    "DEFAULT_PILOT_SIZE",
    "MAX_FEATURES",
    "MAX_FIT_ROWS",
    "PROJECTION_DIMS",
    "PilotSampler",
    "choose_diverse",
    "kmeans",
    "select_pilot",
    "tfidf_matrix",
]

DEFAULT_PILOT_SIZE = 25
MAX_FEATURES = 5000
PROJECTION_DIMS = 256
ROUND_SEED_STRIDE = 1000
MAX_FIT_ROWS = 5_000
_SAMPLE_STREAM = 0x5A3D1E  # second seed word of the fit-sample generator, so it is not the k-means stream

_SENTINEL = "\x00"
_TOKEN_OR_SENTINEL = re.compile(r"\w+|\x00")  # the word tokens of `re.findall(r"\w+", ...)`, plus the sentinel
_PROJECTION_NONZEROS = 8  # non-zero entries per vocabulary token in the sparse random projection
_CHUNK_ENTRIES = 1 << 22  # float64 cells per temporary block (32 MB)
_BLAS_BLOCK = 1 << 18  # multiply-adds per matrix product call (OpenBLAS's single-thread threshold, 65536 x 4)


def _check_seed(seed: object) -> int:
    if not is_int(seed) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ---------------------------------------------------------------------------------------------------------------------
# TF-IDF
# ---------------------------------------------------------------------------------------------------------------------


def tfidf_matrix(
    texts: Sequence[str],
    *,
    max_features: int = MAX_FEATURES,
    dims: int | None = PROJECTION_DIMS,
    seed: int = 0,
) -> np.ndarray:
    """Dense float64 TF-IDF features of `texts`, one L2-normalised row per text (see the module docstring).

    Shape (len(texts), V) with V <= `dims` vocabulary tokens, or (len(texts), dims) after the seeded sparse random
    projection when the vocabulary is larger. `dims=None` never projects (then the result is n x V: mind the memory).
    Rows of texts without any vocabulary token are zero.
    """
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of strings, not a single string")
    if not is_int(max_features) or max_features < 1:
        raise InputError(f"max_features must be a positive integer, got {max_features!r}")
    if dims is not None and (not is_int(dims) or dims < 1):
        raise InputError(f"dims must be a positive integer or None, got {dims!r}")
    seed = _check_seed(seed)
    texts = list(texts)
    n = len(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is {type(text).__name__}, not a string")
    if n == 0:
        return np.zeros((0, 0), dtype=np.float64)

    # Tokenise the whole pool with one regex call: texts joined by a NUL sentinel token (NUL is not a word character,
    # so it never joins two words; NULs inside texts are blanked first so that every sentinel is a boundary).
    joined = f" {_SENTINEL} ".join(t.replace(_SENTINEL, " ") if _SENTINEL in t else t for t in texts)
    tokens = _TOKEN_OR_SENTINEL.findall(joined.lower())
    del joined
    index = dict.fromkeys(tokens)  # distinct tokens in order of first occurrence
    index[_SENTINEL] = None
    for j, token in enumerate(index):
        index[token] = j
    all_ids = np.fromiter(map(index.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    del tokens
    sentinel_id = index[_SENTINEL]
    bounds = np.flatnonzero(all_ids == sentinel_id)  # n - 1 of them
    lengths = np.diff(np.concatenate(([-1], bounds, [all_ids.size]))) - 1
    words = np.delete(all_ids, bounds)
    del all_ids
    if words.size == 0:
        return np.zeros((n, 0), dtype=np.float64)

    # Vocabulary: highest total count first, ties by token string.
    counts = np.bincount(words, minlength=len(index))
    names = list(index)
    present = np.flatnonzero(counts)
    order = sorted(present.tolist(), key=lambda j: (-int(counts[j]), names[j]))[:max_features]
    vocab_size = len(order)
    remap = np.full(len(index), -1, dtype=np.int64)
    remap[np.asarray(order, dtype=np.int64)] = np.arange(vocab_size, dtype=np.int64)

    term = remap[words]
    doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = term >= 0
    keys, tf = np.unique(doc[keep] * vocab_size + term[keep], return_counts=True)  # sorted by (doc, term)
    del words, term, doc, keep
    doc_e = keys // vocab_size
    term_e = keys % vocab_size
    df = np.bincount(term_e, minlength=vocab_size)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    weight = (1.0 + np.log(tf)) * idf[term_e]
    norms = np.sqrt(np.bincount(doc_e, weights=weight * weight, minlength=n))
    weight /= norms[doc_e]

    if dims is None or vocab_size <= dims:
        out = np.zeros((n, vocab_size), dtype=np.float64)
        out[doc_e, term_e] = weight
        return out

    # Sparse random projection: token v adds +-1/sqrt(s) times its weight to s distinct columns.
    rng = np.random.default_rng(seed)
    s = min(_PROJECTION_NONZEROS, dims)
    columns = np.argsort(rng.random((vocab_size, dims)), axis=1, kind="stable")[:, :s]
    signs = (rng.integers(0, 2, size=(vocab_size, s)) * 2 - 1) / math.sqrt(s)
    out = np.zeros((n, dims), dtype=np.float64)
    flat = out.reshape(-1)
    doc_starts = np.searchsorted(doc_e, np.arange(n + 1))  # entries of document i: doc_starts[i]:doc_starts[i+1]
    step = max(1, _CHUNK_ENTRIES // dims)  # documents per chunk
    for d0 in range(0, n, step):
        d1 = min(d0 + step, n)
        a, b = doc_starts[d0], doc_starts[d1]
        if a == b:
            continue
        cells = (doc_e[a:b, None] - d0) * dims + columns[term_e[a:b]]
        values = weight[a:b, None] * signs[term_e[a:b]]
        flat[d0 * dims : d1 * dims] = np.bincount(cells.ravel(), weights=values.ravel(), minlength=(d1 - d0) * dims)
    _normalise_rows(out)
    return out


def _normalise_rows(x: np.ndarray) -> None:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0  # all-zero rows stay zero
    x /= norms[:, None]


# ---------------------------------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------------------------------


def _row_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ENTRIES // max(1, n_cols))


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (rows of x) x (centers), clipped at 0. Caller chunks the rows for memory.

    The product runs in row blocks of at most `_BLAS_BLOCK` multiply-adds: OpenBLAS keeps such calls on one thread,
    and its threading costs far more than it saves at these sizes (about 100x on a busy two-core machine), while
    the blocks stay in cache. The result does not depend on the blocking.
    """
    c_sq = np.einsum("ij,ij->i", centers, centers)
    n = x.shape[0]
    d = np.empty((n, centers.shape[0]), dtype=np.float64)
    ct = centers.T
    step = max(1, _BLAS_BLOCK // max(1, centers.shape[0] * x.shape[1]))
    for a in range(0, n, step):
        np.matmul(x[a : a + step], ct, out=d[a : a + step])
    d *= -2.0
    d += x_sq[:, None]
    d += c_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _assign(
    x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, want_sums: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Nearest centre of every row (ties to the lower id), its squared distance, and optionally per-cluster sums."""
    n, k = x.shape[0], centers.shape[0]
    labels = np.empty(n, dtype=np.int64)
    mind = np.empty(n, dtype=np.float64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64) if want_sums else None
    step = _row_chunk(max(k, x.shape[1]))
    for a in range(0, n, step):
        b = min(a + step, n)
        d = _sq_dists(x[a:b], x_sq[a:b], centers)
        lab = np.argmin(d, axis=1)
        labels[a:b] = lab
        mind[a:b] = d[np.arange(b - a), lab]
        if sums is not None:
            # Per-cluster sums over the rows grouped by a stable sort (cheaper than a one-hot product or reduceat).
            order = np.argsort(lab, kind="stable")
            grouped = x[a:b][order]
            bounds = np.searchsorted(lab[order], np.arange(k + 1))
            for j in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
                sums[j] += grouped[bounds[j] : bounds[j + 1]].sum(axis=0)
    return labels, mind, sums


def _kmeans_plus_plus(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++: each new centre is the best (lowest potential) of 2 + floor(ln k) D^2-sampled trials."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    closest = _sq_dists(x, x_sq, x[chosen])[:, 0]
    for _ in range(1, k):
        cumulative = np.cumsum(closest)
        total = cumulative[-1]
        if not total > 0.0:
            # Every point coincides with a chosen centre: take the lowest unchosen row (duplicates make empty
            # clusters, which the callers handle).
            taken = np.zeros(n, dtype=bool)
            taken[chosen] = True
            chosen.append(int(np.flatnonzero(~taken)[0]))
            continue
        picks = np.searchsorted(cumulative, rng.random(trials) * total, side="right")
        picks = np.minimum(picks, n - 1)
        candidate_d = np.minimum(closest[:, None], _sq_dists(x, x_sq, x[picks]))
        best = int(np.argmin(candidate_d.sum(axis=0)))
        chosen.append(int(picks[best]))
        closest = candidate_d[:, best]
    return x[np.asarray(chosen)].copy()


def kmeans(
    x: np.ndarray, k: int, seed: int, n_init: int = 4, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of `x`: (centroids k x d, assignment of each row to a centroid id).

    Deterministic for the same inputs; see the module docstring for initialisation, stopping and empty clusters.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"kmeans needs a non-empty 2-D array, got shape {x.shape}")
    n = x.shape[0]
    if not is_int(k) or not 1 <= k <= n:
        raise InputError(f"k must be an integer between 1 and the number of rows ({n}), got {k!r}")
    if not is_int(n_init) or n_init < 1:
        raise InputError(f"n_init must be a positive integer, got {n_init!r}")
    if not is_int(max_iter) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not np.all(np.isfinite(x)):
        raise InputError("kmeans input contains NaN or infinite values")
    seed = _check_seed(seed)
    x = np.ascontiguousarray(x)
    k = int(k)
    x_sq = np.einsum("ij,ij->i", x, x)
    tol = 1e-4 * float(np.mean(np.var(x, axis=0))) if x.shape[1] else 0.0
    rng = np.random.default_rng(seed)

    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(int(n_init)):
        centers = _kmeans_plus_plus(x, x_sq, k, rng)
        centers, labels, inertia = _lloyd(x, x_sq, centers, int(max_iter), tol)
        if best is None or inertia < best[0]:
            best = (inertia, centers, labels)
    assert best is not None
    return best[1], best[2]


def _lloyd(
    x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, float]:
    k = centers.shape[0]
    previous: np.ndarray | None = None
    for _ in range(max_iter):
        labels, mind, sums = _assign(x, x_sq, centers, want_sums=True)
        if previous is not None and np.array_equal(labels, previous):
            return centers, labels, float(mind.sum())  # centres are already the means of this assignment
        assert sums is not None
        counts = np.bincount(labels, minlength=k)
        new = centers.copy()
        filled = counts > 0
        new[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            farthest = np.argsort(-mind, kind="stable")[: empty.size]
            new[empty] = x[farthest]
        shift = float(((new - centers) ** 2).sum())
        centers, previous = new, labels
        if shift <= tol and not empty.size:
            break
    labels, mind, _ = _assign(x, x_sq, centers, want_sums=False)
    return centers, labels, float(mind.sum())


# ---------------------------------------------------------------------------------------------------------------------
# Diverse choice and the per-round sampler
# ---------------------------------------------------------------------------------------------------------------------


def choose_diverse(
    x: np.ndarray, candidates: np.ndarray, k: int, seed: int, *, max_fit_rows: int = MAX_FIT_ROWS
) -> list[int]:
    """`k` distinct rows of `x` among `candidates` (row indices), sorted ascending.

    k-means with k clusters on the candidate rows (on a seeded uniform sample of `max_fit_rows` of them when there
    are more), every candidate assigned to its nearest centroid, and the member nearest each centroid taken (ties by
    row index). A cluster left without a member takes, in cluster order, the unused candidate nearest its centroid.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be a 2-D array, got shape {x.shape}")
    cand = np.asarray(candidates)
    if cand.ndim != 1 or cand.size == 0:
        raise InputError("candidates must be a non-empty 1-D array of row indices")
    if not np.issubdtype(cand.dtype, np.integer):
        raise InputError(f"candidates must be integer row indices, got dtype {cand.dtype}")
    cand = np.sort(cand.astype(np.int64))
    if cand[0] < 0 or cand[-1] >= x.shape[0]:
        raise InputError(f"candidate indices must lie in [0, {x.shape[0]}), got {int(cand[0])}..{int(cand[-1])}")
    if np.any(cand[1:] == cand[:-1]):
        raise InputError("candidates contain duplicate indices")
    if not is_int(k) or not 1 <= k <= cand.size:
        raise InputError(f"k must be an integer between 1 and the number of candidates ({cand.size}), got {k!r}")
    if not is_int(max_fit_rows) or max_fit_rows < k:
        raise InputError(f"max_fit_rows must be an integer of at least k ({k}), got {max_fit_rows!r}")
    seed = _check_seed(seed)
    k = int(k)
    if k == cand.size:
        return cand.tolist()

    fit = cand
    if cand.size > max_fit_rows:
        fit = np.sort(np.random.default_rng([seed, _SAMPLE_STREAM]).choice(cand, size=int(max_fit_rows), replace=False))
    centroids, _ = kmeans(x[fit], k, seed)

    # Every candidate's nearest centroid (ties to the lower id) and its exact squared distance, in row chunks.
    labels = np.empty(cand.size, dtype=np.int64)
    own = np.empty(cand.size, dtype=np.float64)
    step = _row_chunk(max(k, x.shape[1]))
    for a in range(0, cand.size, step):
        b = min(a + step, cand.size)
        rows = x[cand[a:b]]
        lab, _, _ = _assign(rows, np.einsum("ij,ij->i", rows, rows), centroids, want_sums=False)
        diff = rows - centroids[lab]
        labels[a:b] = lab
        own[a:b] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((np.arange(cand.size), own, labels))  # by cluster, then distance, then row
    first = np.r_[True, labels[order][1:] != labels[order][:-1]]
    picked = {int(labels[i]): int(i) for i in order[first]}
    used = np.zeros(cand.size, dtype=bool)
    used[list(picked.values())] = True
    for j in range(k):
        if j in picked:
            continue
        d = np.empty(cand.size, dtype=np.float64)
        for a in range(0, cand.size, step):
            b = min(a + step, cand.size)
            diff = x[cand[a:b]] - centroids[j]
            d[a:b] = np.einsum("ij,ij->i", diff, diff)
        d[used] = np.inf
        i = int(np.argmin(d))  # lowest row among equals
        picked[j] = i
        used[i] = True
    return sorted(int(cand[i]) for i in picked.values())


class PilotSampler:
    """Per-round pilot sets over a fixed pool (see the module docstring for the rule).

    The TF-IDF features of the pool are computed once here (only when the pool is larger than `pilot_size`);
    `select` is otherwise a pure function of its arguments.
    """

    def __init__(self, texts: Sequence[str], pilot_size: int = DEFAULT_PILOT_SIZE, seed: int = 0) -> None:
        if isinstance(texts, str):
            raise InputError("the pool must be a sequence of document texts, not a single string")
        if len(texts) == 0:
            raise InputError("the document pool is empty: pilot sets need at least one document")
        if not is_int(pilot_size) or pilot_size < 1:
            raise InputError(f"pilot_size must be a positive integer, got {pilot_size!r}")
        self.pool_size = len(texts)
        self.pilot_size = int(pilot_size)
        self.seed = _check_seed(seed)
        self.features: np.ndarray | None = None
        if self.pool_size > self.pilot_size:
            self.features = tfidf_matrix(list(texts), seed=self.seed)

    def select(self, round_index: int, history: Sequence[Sequence[int]] = ()) -> list[int]:
        """Pool indices (ascending) for the round; `history` holds the earlier rounds' selections, oldest first.

        `round_index` is the caller's round number (count from 0 or 1, but consistently); it only mixes into the
        k-means seed as `seed + 1000 * round_index`.
        """
        if not is_int(round_index) or round_index < 0:
            raise InputError(f"round_index must be a non-negative integer, got {round_index!r}")
        n, p = self.pool_size, self.pilot_size
        last_used = np.full(n, -1, dtype=np.int64)
        if isinstance(history, (str, bytes)):
            raise InputError("history must be a list of earlier selections (lists of pool indices)")
        for r, selection in enumerate(history):
            if isinstance(selection, (str, bytes)):
                raise InputError(f"history[{r}] must be a list of pool indices")
            idx = list(selection)
            for v in idx:
                if not is_int(v) or not 0 <= v < n:
                    raise InputError(f"history[{r}] holds {v!r}, not a pool index in [0, {n})")
            if idx:
                last_used[np.asarray(idx, dtype=np.int64)] = r
        if n <= p:
            return list(range(n))
        unused = np.flatnonzero(last_used < 0)
        if unused.size >= p:
            assert self.features is not None
            return choose_diverse(self.features, unused, p, self.seed + ROUND_SEED_STRIDE * int(round_index))
        used = np.flatnonzero(last_used >= 0)
        lru = used[np.lexsort((used, last_used[used]))]  # oldest last use first, ties by pool index
        fill = lru[: p - unused.size]
        return sorted(int(i) for i in np.concatenate([unused, fill]))


def select_pilot(
    texts: Sequence[str],
    pilot_size: int = DEFAULT_PILOT_SIZE,
    seed: int = 0,
    round_index: int = 0,
    history: Sequence[Sequence[int]] = (),
) -> list[int]:
    """One-shot convenience: `PilotSampler(texts, pilot_size, seed).select(round_index, history)`."""
    return PilotSampler(texts, pilot_size, seed).select(round_index, history)
