"""Token-level comparison of each annotator with the consensus (docs/method.md, the disagreement report).

One reference everywhere: the engine's weighted IO consensus (`result.consensus_labels`). Each annotator's
entities (decoded from its IOB2 labels) are compared with the consensus entities, entity by entity:

* an annotator entity overlapping no consensus entity            -> O_to_T (T = the annotator's type);
* a consensus entity that none of the annotator's entities overlaps -> T_to_O for that annotator;
* an overlapping (consensus, annotator) pair with different types   -> A_to_B (A = consensus, B = annotator);
* an overlapping pair with the same type and different boundaries   -> span error.

The comparison only covers documents that are scored and on which the annotator succeeded. Everything is
vectorised over tokens and entities; only the text of the few examples a report shows is cut per example.
This module computes; `disagreement.report` assembles the results into report data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disagreement.engine import DisagreementResult, token_runs

FAMILIES = ("O_to_T", "T_to_O", "A_to_B", "span")

EntityArrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # (global token start, end exclusive, type id), sorted


@dataclass
class EntityErrors:
    """Entity-level differences from the consensus, one per row."""

    k: np.ndarray  # annotator (model index)
    fam: np.ndarray  # index into FAMILIES
    ref: np.ndarray  # consensus type id or -1 for O
    pred: np.ndarray  # annotator type id or -1
    s: np.ndarray  # global token extent [s, e): union of the entities involved
    e: np.ndarray

    @classmethod
    def concat(cls, parts: list[EntityErrors]) -> EntityErrors:
        """The rows of every part, in order."""
        if not parts:
            z = np.zeros(0, dtype=np.int64)
            return cls(z, z, z, z, z, z)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("k", "fam", "ref", "pred", "s", "e")))

    def take(self, idx: np.ndarray) -> EntityErrors:
        return EntityErrors(self.k[idx], self.fam[idx], self.ref[idx], self.pred[idx], self.s[idx], self.e[idx])


class ConsensusComparison:
    """Token-level views of one engine result: consensus entities, each annotator's entities, their differences."""

    def __init__(self, result: DisagreementResult) -> None:
        self.r = result
        t = result.table
        self.table = t
        self.texts = result.batch.texts
        self.types = list(result.batch.types)
        self.T = len(self.types)
        self.tok_doc = t.token_doc()
        n = t.n_tokens
        self.scored_tok = result.scored[self.tok_doc] if n else np.zeros(0, dtype=bool)
        cl = np.asarray(result.consensus_labels, dtype=np.int64)
        cs, ce = token_runs(cl > 0, self.tok_doc, key=cl)  # type id = cl[start] - 1
        keep = result.scored[self.tok_doc[cs]] if cs.size else np.zeros(0, dtype=bool)
        self.cons_s, self.cons_e = cs[keep], ce[keep]
        self.cons_t = cl[self.cons_s] - 1
        self.cons_d = self.tok_doc[self.cons_s]
        self._ann: dict[int, EntityArrays] = {}

    @property
    def consensus(self) -> EntityArrays:
        return self.cons_s, self.cons_e, self.cons_t

    def annotator_entities(self, k: int) -> EntityArrays:
        """Entities of model k decoded from its IOB2 labels, on scored documents where it succeeded."""
        if k not in self._ann:
            lab = np.asarray(self.r.labels[:, k], dtype=np.int64)
            valid = (self.r.scored & self.r.succeeded[:, k])[self.tok_doc]
            ent = (lab > 0) & valid
            typ = (lab - 1) >> 1
            is_b = (lab & 1) == 1
            n = lab.size
            cont_prev = np.zeros(n, dtype=bool)
            if n:
                cont_prev[1:] = ent[:-1] & (typ[1:] == typ[:-1]) & (self.tok_doc[1:] == self.tok_doc[:-1])
            start = ent & (is_b | ~cont_prev)
            cont = ent & ~start
            nxt = np.zeros(n, dtype=bool)
            if n:
                nxt[:-1] = cont[1:]
            s = np.flatnonzero(start)
            e = np.flatnonzero(ent & ~nxt) + 1
            self._ann[k] = (s, e, typ[s])
        return self._ann[k]

    def consensus_for(self, k: int) -> EntityArrays:
        """The consensus entities on the documents where model k succeeded."""
        keep = self.r.succeeded[self.cons_d, k]
        return self.cons_s[keep], self.cons_e[keep], self.cons_t[keep]

    def errors(self, k: int) -> EntityErrors:
        """Every entity-level difference of model k from the consensus (the four families)."""
        a_s, a_e, a_t = self.annotator_entities(k)
        c_s, c_e, c_t = self.consensus_for(k)
        lo = np.searchsorted(c_e, a_s, side="right")  # first consensus entity ending after a starts
        hi = np.searchsorted(c_s, a_e, side="left")  # consensus entities starting before a ends
        cnt = np.maximum(hi - lo, 0)
        o2t = np.flatnonzero(cnt == 0)
        m = cnt > 0
        cover = np.cumsum(
            np.bincount(lo[m], minlength=c_s.size + 1) - np.bincount(hi[m], minlength=c_s.size + 1)
        )[: c_s.size]
        t2o = np.flatnonzero(cover == 0)
        total = int(cnt.sum())
        pa = np.repeat(np.arange(a_s.size), cnt)
        pc = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
        diff_type = a_t[pa] != c_t[pc]
        diff_span = ~diff_type & ((a_s[pa] != c_s[pc]) | (a_e[pa] != c_e[pc]))
        pa_t, pc_t = pa[diff_type], pc[diff_type]
        pa_s, pc_s = pa[diff_span], pc[diff_span]
        none = lambda x: np.full(x.size, -1, dtype=np.int64)  # noqa: E731
        fam = np.concatenate(
            [np.full(o2t.size, 0), np.full(t2o.size, 1), np.full(pa_t.size, 2), np.full(pa_s.size, 3)]
        ).astype(np.int64)
        ref = np.concatenate([none(o2t), c_t[t2o], c_t[pc_t], c_t[pc_s]]).astype(np.int64)
        pred = np.concatenate([a_t[o2t], none(t2o), a_t[pa_t], a_t[pa_s]]).astype(np.int64)
        s = np.concatenate(
            [a_s[o2t], c_s[t2o], np.minimum(a_s[pa_t], c_s[pc_t]), np.minimum(a_s[pa_s], c_s[pc_s])]
        ).astype(np.int64)
        e = np.concatenate(
            [a_e[o2t], c_e[t2o], np.maximum(a_e[pa_t], c_e[pc_t]), np.maximum(a_e[pa_s], c_e[pc_s])]
        ).astype(np.int64)
        return EntityErrors(np.full(fam.size, k, dtype=np.int64), fam, ref, pred, s, e)

    def key(self, err: EntityErrors) -> np.ndarray:
        """One integer per error type (family, consensus type, annotator type), ordered by family first."""
        w = self.T + 1
        return (err.fam * w + (err.ref + 1)) * w + (err.pred + 1)

    def decode(self, key: int) -> tuple[str, str, str, str]:
        """(label such as "PER_to_ORG" or "span_LOC", family, consensus type or "O", annotator type or "O")."""
        w = self.T + 1
        fam, rest = divmod(int(key), w * w)
        ref, pred = divmod(rest, w)
        rname = self.types[ref - 1] if ref else "O"
        pname = self.types[pred - 1] if pred else "O"
        family = FAMILIES[fam]
        label = f"span_{rname}" if family == "span" else f"{rname}_to_{pname}"
        return label, family, rname, pname

    # --- text of the examples shown (per example only)
    def doc_chars(self, d: int, g0: int, g1: int) -> tuple[int, int]:
        """Document d's character extent [start, end) of global tokens [g0, g1)."""
        off = int(self.table.char_offset[d])
        return int(self.table.starts[g0]) - off, int(self.table.ends[g1 - 1]) - off

    def context(self, d: int, g0: int, g1: int, n_ctx: int) -> tuple[str, str, str]:
        """(left context, text, right context) of global tokens [g0, g1), n_ctx tokens either side."""
        t0, t1 = int(self.table.token_offset[d]), int(self.table.token_offset[d + 1])
        text = self.texts[d]
        a, b = self.doc_chars(d, g0, g1)
        lo, hi = max(t0, g0 - n_ctx), min(t1, g1 + n_ctx)
        left = text[self.doc_chars(d, lo, g0)[0] : a] if lo < g0 else ""
        right = text[b : self.doc_chars(d, g1, hi)[1]] if g1 < hi else ""
        return left.strip(), text[a:b], right.strip()

    def entities(self, d: int, arrays: EntityArrays, g0: int, g1: int) -> list[tuple[int, int, int]]:
        """(start, end, type id) of the entities in `arrays` overlapping global tokens [g0, g1)."""
        s, e, t = arrays
        lo = int(np.searchsorted(e, g0, side="right"))
        hi = int(np.searchsorted(s, g1, side="left"))
        return [(int(s[i]), int(e[i]), int(t[i])) for i in range(lo, hi)]


def choose_examples(rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
    """Indices of the examples shown: all when n <= cap, else a seeded sample, in ascending order."""
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))
