"""A deliberately naive, loop-per-token implementation of the disagreement analysis (docs/method.md), written
straight from its wording: agreement, weights, elite, token scores, hotspots and their kinds.

It shares no code with the engine (not even tokenisation or IOB2 projection) and serves as the oracle that the
vectorised engine must reproduce.
"""

from __future__ import annotations

import math
import re

import numpy as np


def tokens(text):
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def to_iob2(text, spans):
    """(labels over tokens, number dropped) for one annotator on one document."""
    toks = tokens(text)
    labels = ["O"] * len(toks)
    dropped = 0
    for s, e, t in sorted(set(spans), key=lambda x: (x[0], -(x[1] - x[0]), x[2])):
        covered = [i for i, (a, b) in enumerate(toks) if a < e and b > s]
        if not covered or any(labels[i] != "O" for i in covered):
            dropped += 1
            continue
        for j, i in enumerate(covered):
            labels[i] = ("B-" if j == 0 else "I-") + t
    return labels, dropped


def f1(a_spans, b_spans, co_docs):
    A = {x for x in a_spans if x[0] in co_docs}
    B = {x for x in b_spans if x[0] in co_docs}
    if not co_docs:
        return 0.0
    if not A and not B:
        return 1.0
    return 2 * len(A & B) / (len(A) + len(B))


def label_key(y):
    """The engine's label order: O, then per type (string order) B before I."""
    return (0, "", 0) if y == "O" else (1, y[2:], 0 if y[0] == "B" else 1)


def distribution(labels, group, w):
    """A group's label distribution on one token (`labels`: the label of each annotator that succeeded): the
    weights of its members that succeeded, renormalised among them, summed per label in the group's order."""
    members = [a for a in group if a in labels]
    total = float(np.array([w[a] for a in members]).sum()) if members else 0.0
    p = {}
    for a in members:
        p[labels[a]] = p.get(labels[a], 0.0) + w[a] / total
    return p, len(members)


def hotspot_kind(elite_split, systematic_bias):
    if elite_split and systematic_bias:
        return "complex"
    if elite_split:
        return "elite_split"
    if systematic_bias:
        return "systematic_bias"
    return "minor"


def analyze(docs, percentile=80.0, cutoff=0.5, floor=0.1, tv_percentile=90.0, elite_internal_percentile=90.0):
    """docs: list of (id, text, {annotator: [(s, e, t)] or None}). Returns a dict shaped like the CLI's JSON, plus
    the coalition diagnostics (per-token TV between elite and rest, elite-internal impurity, their thresholds) and
    each hotspot's kind."""
    names = sorted({a for _, _, ann in docs for a in ann})
    ok = {a: {d for d, (_, _, ann) in enumerate(docs) if ann.get(a) is not None} for a in names}
    excluded = [a for a in names if not ok[a]]
    models = [a for a in names if ok[a]]
    if len(models) < 2:
        raise ValueError("fewer than two annotators")
    spans = {
        a: {(d, s, e, t) for d, (_, _, ann) in enumerate(docs) for (s, e, t) in (ann.get(a) or [])} for a in models
    }
    pf = {a: {b: f1(spans[a], spans[b], ok[a] & ok[b]) for b in models if b != a} for a in models}
    # Summation order is part of the contract that makes results independent of annotator names and order:
    # means over sorted values, and token sums in the order (weight descending, name).
    mean_agree = {a: float(np.sort(np.array(list(pf[a].values()) + [0.0])).sum()) / (len(models) - 1) for a in models}
    raw = {a: max(floor, mean_agree[a]) for a in models}
    tot = float(np.sort(np.array(list(raw.values()))).sum())
    w = {a: raw[a] / tot for a in models}
    pairs = [pf[a][b] for i, a in enumerate(models) for b in models[i + 1:]]
    mean_pw = float(np.sort(np.array(pairs)).sum()) / len(pairs)
    canonical = sorted(models, key=lambda m: (-w[m], m))
    elite, acc = [], 0.0
    for a in sorted(models, key=lambda m: (-w[m], m)):
        elite.append(a)
        acc += w[a]
        if acc >= cutoff - 1e-12:
            break
    rest = [a for a in canonical if a not in elite]
    elite_canonical = [a for a in canonical if a in elite]
    all_types = sorted({t for _, _, ann in docs for a in models for (_, _, t) in (ann.get(a) or [])})
    # every label of the batch in the engine's order (O, then B and I per type): the coalition sums below run over
    # this full list so their floating-point result does not depend on which labels happen to be present
    label_list = ["O"] + [f"{p}-{t}" for t in all_types for p in ("B", "I")]
    dropped = {a: 0 for a in models}
    per_doc = []
    all_u = []
    all_tv = []
    all_ei = []
    for _doc_id, text, ann in docs:
        toks = tokens(text)
        succ = [a for a in canonical if ann.get(a) is not None]
        labels = {}
        for a in succ:
            labels[a], n = to_iob2(text, ann[a])
            dropped[a] += n
        scored = len(succ) >= 2
        wsum = float(np.array([w[a] for a in succ]).sum()) if succ else 0.0
        conf, typ, bnd, comb, cons, tvs, eis = [], [], [], [], [], [], []
        for i in range(len(toks)):
            # coalition diagnostics: elite vs the rest, each renormalised among its members that succeeded
            token_labels = {a: labels[a][i] for a in succ}
            pc, n_elite = distribution(token_labels, elite_canonical, w)
            pr, n_rest = distribution(token_labels, rest, w)
            pc_full = [pc.get(y, 0.0) for y in label_list]
            pr_full = [pr.get(y, 0.0) for y in label_list]
            tv = 0.5 * float(np.abs(np.array(pc_full) - np.array(pr_full)).sum()) if n_elite and n_rest else 0.0
            ei = 1 - float((np.array(pc_full) * np.array(pc_full)).sum()) if n_elite > 1 else 0.0
            tvs.append(tv if scored else 0.0)
            eis.append(ei if scored else 0.0)
            p = {}
            for a in succ:
                p[labels[a][i]] = p.get(labels[a][i], 0.0) + w[a] / wsum
            q = {}
            for y, v in p.items():
                c = "O" if y == "O" else y[2:]
                q[c] = q.get(c, 0.0) + v
            qB = sum(v for y, v in p.items() if y.startswith("B-"))
            qI = sum(v for y, v in p.items() if y.startswith("I-"))
            order = sorted(p, key=label_key)
            dc = 1 - float(np.array([p[y] * p[y] for y in order]).sum())
            m = 1 - q.get("O", 0.0)
            dt = 0.0 if m <= 1e-12 else 1 - sum((v / m) ** 2 for c, v in q.items() if c != "O")
            ub = max(4 * qB * (1 - qB), 4 * qI * (1 - qI))
            conf.append(dc)
            typ.append(dt)
            bnd.append(ub)
            comb.append(max(dc, dt, ub))
            if succ:
                best = max(q.values())
                tied = sorted(c for c, v in q.items() if v >= best - 1e-9)
                cons.append("O" if "O" in tied else tied[0])
            else:
                cons.append("O")
        if scored:
            all_u.extend(comb)
            all_tv.extend(tvs)
            all_ei.extend(eis)
        per_doc.append(
            dict(toks=toks, scored=scored, conf=conf, typ=typ, bnd=bnd, comb=comb, cons=cons, tv=tvs, ei=eis)
        )
    tau = float(np.percentile(all_u, percentile)) if all_u else None
    tau_tv = float(np.percentile(all_tv, tv_percentile)) if all_tv else None
    tau_ei = float(np.percentile(all_ei, elite_internal_percentile)) if all_ei else None
    kinds = {}
    documents = []
    for d, (doc_id, _text, _ann) in enumerate(docs):
        P = per_doc[d]
        toks = P["toks"]
        hot = [P["scored"] and tau is not None and u >= tau and u > 1e-9 for u in P["comb"]]
        hotspots = []
        i = 0
        while i < len(toks):
            if not hot[i]:
                i += 1
                continue
            j = i
            while True:
                if j + 1 < len(toks) and hot[j + 1]:
                    j += 1
                elif j + 2 < len(toks) and not hot[j + 1] and hot[j + 2]:
                    j += 2
                else:
                    break
            # typing: a token of the block (bridged cold tokens included) at or over its 90th-percentile threshold
            split = any(P["ei"][x] >= tau_ei and P["ei"][x] > 1e-9 for x in range(i, j + 1))
            bias = any(P["tv"][x] >= tau_tv and P["tv"][x] > 1e-9 for x in range(i, j + 1))
            kind = hotspot_kind(split, bias)
            kinds[kind] = kinds.get(kind, 0) + 1
            hotspots.append(
                {"start": toks[i][0], "end": toks[j][1], "token_start": i, "token_end": j + 1, "kind": kind}
            )
            i = j + 1
        consensus = []
        i = 0
        while i < len(toks):
            c = P["cons"][i]
            if c == "O":
                i += 1
                continue
            j = i
            while j + 1 < len(toks) and P["cons"][j + 1] == c:
                j += 1
            consensus.append({"start": toks[i][0], "end": toks[j][1], "type": c})
            i = j + 1
        entry = {"id": doc_id, "consensus": consensus, "hotspots": hotspots}
        scores = {"conflict": P["conf"], "type": P["typ"], "boundary": P["bnd"], "combined": P["comb"]}
        entry["token_scores"] = scores if P["scored"] else None
        entry["coalition_scores"] = {"tv_between": P["tv"], "elite_internal": P["ei"]} if P["scored"] else None
        documents.append(entry)
    return {
        "models": models,
        "excluded": excluded,
        "weights": w,
        "pairwise_f1": pf,
        "mean_pairwise_f1": mean_pw,
        "elite": elite,
        "threshold": tau,
        "tv_threshold": tau_tv,
        "elite_internal_threshold": tau_ei,
        "hotspot_kinds": {k: kinds[k] for k in sorted(kinds)},
        "dropped_spans": dropped,
        "documents": documents,
    }


def close(a, b, tol=1e-9):
    """Structural equality with a float tolerance."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=tol)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b
