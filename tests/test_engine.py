"""The disagreement engine against hand-worked values, a naive oracle, and its invariances (issue 2, item 6)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disagreement.engine import AnnotationBatch, EngineParams, analyze, elite_members
from disagreement.io import result_to_json
from state.errors import InputError
from tests import naive_reference as naive

ROOT = Path(__file__).resolve().parents[1]


def run(docs, **kw):
    result = analyze(AnnotationBatch.from_documents(docs), EngineParams(**kw) if kw else None)
    return result, result_to_json(result, token_scores=True)


# ---------------------------------------------------------------- hand-worked values

DOCS = [
    ("d1", "Paris is in France .", {"a": [(0, 5, "LOC"), (12, 18, "LOC")], "b": [(0, 5, "LOC"), (12, 18, "ORG")], "c": [(0, 5, "PER")]}),
    ("d2", "Nothing here", {"a": [], "b": None, "c": [(0, 7, "X")]}),
    ("d3", "One doc", {"a": None, "b": None, "c": [(0, 3, "X")]}),
]


def test_pairwise_weights_elite_by_hand():
    _, out = run(DOCS)
    # F1(a,b) on d1 only: {Paris LOC, France LOC} vs {Paris LOC, France ORG} -> 2*1/4
    assert out["pairwise_f1"]["a"]["b"] == pytest.approx(0.5, abs=1e-15)
    assert out["pairwise_f1"]["b"]["a"] == pytest.approx(0.5, abs=1e-15)
    # a and c co-succeed on d1 and d2: no common span
    assert out["pairwise_f1"]["a"]["c"] == 0.0
    # means 0.25, 0.25, 0 -> floor 0.1 -> normalised by 0.6
    assert out["weights"] == pytest.approx({"a": 0.25 / 0.6, "b": 0.25 / 0.6, "c": 0.1 / 0.6}, abs=1e-15)
    assert out["mean_pairwise_f1"] == pytest.approx(0.5 / 3, abs=1e-15)
    assert out["elite"] == ["a", "b"]  # 0.4167 < 0.5, 0.8333 >= 0.5


def test_token_scores_by_hand():
    _, out = run(DOCS)
    d1 = out["documents"][0]["token_scores"]
    wa, wc = 0.25 / 0.6, 0.1 / 0.6
    # "Paris": B-LOC (a, b) 5/6, B-PER (c) 1/6
    assert d1["conflict"][0] == pytest.approx(1 - (25 / 36 + 1 / 36), abs=1e-12)
    assert d1["type"][0] == pytest.approx(1 - (25 / 36 + 1 / 36), abs=1e-12)
    assert d1["boundary"][0] == pytest.approx(0.0, abs=1e-12)
    # "France": B-LOC wa, B-ORG wa, O wc
    assert d1["conflict"][3] == pytest.approx(1 - (2 * wa * wa + wc * wc), abs=1e-12)
    assert d1["type"][3] == pytest.approx(0.5, abs=1e-12)
    qB = 2 * wa
    assert d1["boundary"][3] == pytest.approx(4 * qB * (1 - qB), abs=1e-12)
    assert d1["combined"][3] == pytest.approx(max(1 - (2 * wa * wa + wc * wc), 0.5, 4 * qB * (1 - qB)), abs=1e-12)
    # d2: only a and c succeeded, renormalised: a 0.25/0.35, c 0.1/0.35 on "Nothing"
    d2 = out["documents"][1]["token_scores"]
    pa, pc = 0.25 / 0.35, 0.1 / 0.35
    assert d2["conflict"][0] == pytest.approx(1 - (pa * pa + pc * pc), abs=1e-12)
    assert d2["boundary"][0] == pytest.approx(4 * pc * (1 - pc), abs=1e-12)
    assert d2["type"][0] == 0.0 or d2["type"][0] == pytest.approx(0.0, abs=1e-12)
    # d3: one annotator succeeded -> not scored, consensus is c's reading
    assert out["documents"][2]["token_scores"] is None
    assert out["documents"][2]["hotspots"] == []
    assert out["documents"][2]["consensus"] == [{"start": 0, "end": 3, "type": "X"}]


def test_threshold_and_hotspots_by_hand():
    _, out = run(DOCS)
    u = sorted(out["documents"][0]["token_scores"]["combined"] + out["documents"][1]["token_scores"]["combined"])
    assert out["threshold"] == pytest.approx(float(np.percentile(u, 80)), abs=1e-15)
    assert out["documents"][0]["hotspots"] == [{"start": 12, "end": 18, "token_start": 3, "token_end": 4}]
    assert out["documents"][1]["hotspots"] == [{"start": 0, "end": 7, "token_start": 0, "token_end": 1}]


def test_consensus_tie_goes_to_first_type_then_o():
    _, out = run(DOCS)
    # France: LOC (a) and ORG (b) tie with equal weights -> LOC, the first in string order
    assert out["documents"][0]["consensus"] == [{"start": 0, "end": 5, "type": "LOC"}, {"start": 12, "end": 18, "type": "LOC"}]
    # two annotators with equal weight: one says X, the other O -> O wins the tie
    docs = [("t", "alpha beta", {"a": [(0, 5, "X")], "b": []}), ("u", "gamma", {"a": [], "b": []})]
    _, out = run(docs)
    assert out["weights"]["a"] == out["weights"]["b"]
    assert out["documents"][0]["consensus"] == []


def test_consensus_merges_adjacent_same_type_tokens():
    # the single annotator's two adjacent B-X spans are seen through the IO rule: one consensus span
    docs = [("t", "New York Paris", {"a": [(0, 8, "X"), (9, 14, "X")], "b": [(0, 8, "X"), (9, 14, "X")]})]
    _, out = run(docs)
    assert out["documents"][0]["consensus"] == [{"start": 0, "end": 14, "type": "X"}]


def test_weight_floor_and_normalisation():
    # a and b agree perfectly, c never agrees: means 0.5, 0.5, 0 -> floor 0.1 for c
    docs = [("d", "one two three", {"a": [(0, 3, "X")], "b": [(0, 3, "X")], "c": [(4, 7, "Y")]})]
    _, out = run(docs)
    assert out["weights"] == pytest.approx({"a": 0.5 / 1.1, "b": 0.5 / 1.1, "c": 0.1 / 1.1}, abs=1e-15)
    assert math.isclose(sum(out["weights"].values()), 1.0, abs_tol=1e-15)


def test_f1_conventions_empty_and_never_cosucceeded():
    docs = [
        ("d1", "a b", {"x": [], "y": [], "z": None}),
        ("d2", "c d", {"x": None, "y": None, "z": []}),
    ]
    _, out = run(docs)
    assert out["pairwise_f1"]["x"]["y"] == 1.0  # both sets empty
    assert out["pairwise_f1"]["x"]["z"] == 0.0  # never succeeded on the same document
    assert out["pairwise_f1"]["y"]["z"] == 0.0


def test_elite_boundary_and_ties():
    names = ["b", "a", "c", "d"]
    w = np.array([0.25, 0.25, 0.25, 0.25])
    # sorted by weight desc, ties by name: a, b, c, d; a + b = 0.5 reaches the cutoff exactly
    assert [names[i] for i in elite_members(names, w, 0.5)] == ["a", "b"]
    # within 1e-12 below the cutoff still counts
    w2 = np.array([0.25 - 4e-13, 0.25, 0.25, 0.25 + 4e-13])
    assert [names[i] for i in elite_members(names, w2, 0.5)] == ["d", "a"]
    assert [names[i] for i in elite_members(names, w, 0.51)] == ["a", "b", "c"]


def test_bridging_single_cold_gaps_and_two_cold_break():
    # Build a document where token scores are hot/cold by construction: annotators disagree on chosen tokens.
    text = "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11"
    toks = [(m.start(), m.end()) for m in __import__("re").finditer(r"\w+", text)]
    hot = [0, 2, 4, 7, 9]  # 0 _ 2 _ 4 : bridged; 4 _ _ 7 : broken; 7 _ 9 : bridged
    a = [(toks[i][0], toks[i][1], "X") for i in hot]
    quiet = ("q", "calm words only here now and then again more", {"a": [], "b": []})
    _, out = run([("h", text, {"a": a, "b": []}), quiet], percentile=0.0)
    spans = out["documents"][0]["hotspots"]
    assert [(h["token_start"], h["token_end"]) for h in spans] == [(0, 5), (7, 10)]
    assert spans[0]["start"] == toks[0][0] and spans[0]["end"] == toks[4][1]


def test_guard_no_hotspots_when_everyone_agrees():
    docs = [("d", "Paris and Rome", {"a": [(0, 5, "LOC")], "b": [(0, 5, "LOC")], "c": [(0, 5, "LOC")]})]
    result, out = run(docs)
    assert out["threshold"] < 1e-12
    assert all(d["hotspots"] == [] for d in out["documents"])
    assert float(result.combined.max()) < 1e-12


def test_excluded_annotators_and_too_few():
    docs = [("d", "x y", {"a": [], "b": [], "dead": None}), ("e", "z", {"a": [], "b": [], "dead": None})]
    _, out = run(docs)
    assert out["excluded"] == ["dead"] and out["models"] == ["a", "b"]
    with pytest.raises(InputError, match="at least two annotators"):
        run([("d", "x", {"a": [], "b": None})])


def test_dropped_spans_counted():
    docs = [("d", "Paris, France", {"a": [(0, 6, "LOC"), (0, 5, "LOC"), (5, 6, "X"), (6, 7, "Y")], "b": []})]
    _, out = run(docs)
    # (0,6) kept; (0,5) overlaps; (5,6) overlaps the comma token; (6,7) is a space: covers no token
    assert out["dropped_spans"] == {"a": 3, "b": 0}


def test_invalid_spans_rejected():
    for bad, msg in [((3, 3, "X"), "greater than start"), ((0, 99, "X"), "outside the text"), ((0, 1, ""), "non-empty")]:
        with pytest.raises(InputError, match=msg):
            AnnotationBatch.from_documents([("d", "abc", {"a": [bad], "b": []})])


# ---------------------------------------------------------------- the naive oracle on random inputs

WORDS = ["Paris", "New", "York", ",", "the", "U.S.", "IBM's", "(IL-2)", "é", "x", "--", "a_b"]


@st.composite
def annotated_documents(draw):
    n_ann = draw(st.integers(2, 5))
    names = draw(st.lists(st.text("abcdefghij", min_size=1, max_size=3), min_size=n_ann, max_size=n_ann, unique=True))
    types = ["LOC", "ORG", "PER", "X"][: draw(st.integers(1, 4))]
    docs = []
    for i in range(draw(st.integers(1, 6))):
        text = draw(st.lists(st.sampled_from(WORDS), min_size=0, max_size=10).map(lambda ws: " ".join(ws)))
        ann = {}
        for a in names:
            if draw(st.integers(0, 9)) == 0:
                ann[a] = None
                continue
            spans = []
            for _ in range(draw(st.integers(0, 4))):
                if len(text) == 0:
                    break
                s = draw(st.integers(0, len(text) - 1))
                e = draw(st.integers(s + 1, len(text)))
                spans.append((s, e, draw(st.sampled_from(types))))
            ann[a] = spans
        docs.append((f"doc{i}", text, ann))
    return docs


def _comparable(out):
    keys = ["models", "excluded", "weights", "pairwise_f1", "mean_pairwise_f1", "elite", "threshold", "dropped_spans", "documents"]
    return {k: out[k] for k in keys}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(annotated_documents(), st.sampled_from([80.0, 50.0, 0.0, 95.0]))
def test_engine_matches_naive_reference(docs, percentile):
    try:
        expected = naive.analyze(docs, percentile=percentile)
    except ValueError:
        with pytest.raises(InputError):
            run(docs, percentile=percentile)
        return
    _, out = run(docs, percentile=percentile)
    assert naive.close(_comparable(out), expected), (docs, _comparable(out), expected)


@settings(max_examples=100, deadline=None)
@given(annotated_documents())
def test_f1_symmetric_and_bounded(docs):
    try:
        _, out = run(docs)
    except InputError:
        return
    pf = out["pairwise_f1"]
    for a in pf:
        for b in pf[a]:
            assert 0.0 <= pf[a][b] <= 1.0
            assert pf[a][b] == pf[b][a]


@settings(max_examples=100, deadline=None)
@given(annotated_documents())
def test_identical_annotators_agree_fully(docs):
    # every annotator copies the first one's reading (and its failures)
    first = {d[0]: next(iter(d[2].values())) for d in docs}
    names = ["p", "q", "r"]
    clones = [(i, t, {n: first[i] for n in names}) for i, t, _ in docs]
    try:
        result, out = run(clones)
    except InputError:
        return
    assert float(result.combined.max(initial=0.0)) < 1e-12
    assert all(d["hotspots"] == [] for d in out["documents"])


@settings(max_examples=300, deadline=None)
@given(annotated_documents(), st.randoms(use_true_random=False))
def test_renaming_and_reordering_annotators_changes_only_names(docs, rnd):
    try:
        _, out = run(docs)
    except InputError:
        return
    names = sorted({a for _, _, ann in docs for a in ann})
    new = [f"m{i:02d}" for i in range(len(names))]
    rnd.shuffle(new)
    rename = dict(zip(names, new))
    renamed = []
    for i, t, ann in docs:
        items = list(ann.items())
        rnd.shuffle(items)
        renamed.append((i, t, {rename[a]: s for a, s in items}))
    _, out2 = run(renamed)
    assert sorted(rename[m] for m in out["models"]) == out2["models"]
    for a in out["weights"]:
        assert out2["weights"][rename[a]] == pytest.approx(out["weights"][a], abs=1e-12)
        for b in out["pairwise_f1"][a]:
            assert out2["pairwise_f1"][rename[a]][rename[b]] == pytest.approx(out["pairwise_f1"][a][b], abs=1e-12)
    w = out["weights"]
    ties = len({round(v, 12) for v in w.values()}) < len(w)
    if not ties:  # with tied weights the elite boundary is broken by name, which renaming may change
        assert sorted(rename[m] for m in out["elite"]) == sorted(out2["elite"])
    assert out2["mean_pairwise_f1"] == pytest.approx(out["mean_pairwise_f1"], abs=1e-12)
    assert out2["threshold"] == out["threshold"]  # bit-identical: sums run in a name-independent order
    for d1, d2 in zip(out["documents"], out2["documents"]):
        assert d1["consensus"] == d2["consensus"]
        assert d1["hotspots"] == d2["hotspots"]
        assert d1["token_scores"] == d2["token_scores"]


# ---------------------------------------------------------------- the CLI


def _cli(*args, input_path):
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "analyze", str(input_path), *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_json_matches_engine_and_oracle(tmp_path):
    path = tmp_path / "ann.jsonl"
    with path.open("w") as fh:
        for i, t, ann in DOCS:
            fh.write(json.dumps({"id": i, "text": t, "annotations": {a: None if s is None else [{"start": x, "end": y, "type": z} for x, y, z in s] for a, s in ann.items()}}) + "\n")
    proc = _cli("--json", "--token-scores", input_path=path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert naive.close(_comparable(out), naive.analyze(DOCS))
    assert "langgraph" not in proc.stderr


def test_cli_does_not_import_langgraph(tmp_path):
    code = (
        "import sys, runpy; sys.argv=['diziner','analyze','--help'];\n"
        "from cli.main import build_parser; build_parser(['analyze']); import cli.analyze, disagreement.io, disagreement.engine;\n"
        "bad=[m for m in sys.modules if m.startswith(('langgraph','langchain','pydantic'))]; print(bad); assert not bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "line, needle",
    [
        ("not json", ":1: not valid JSON"),
        ('{"id": "a", "text": "x"}', ":1: missing key 'annotations'"),
        ('{"id": "a", "text": "xy", "annotations": {"m": [{"start": 0, "end": 5, "type": "X"}], "n": []}}', "outside the text"),
        ('{"id": "a", "text": "xy", "annotations": {"m": [{"start": 0, "type": "X"}], "n": []}}', "missing key 'end'"),
        ('{"id": "a", "text": "xy", "annotations": {"m": [{"start": 0.0, "end": 1, "type": "X"}], "n": []}}', "integers"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    proc = _cli("--json", input_path=path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_cli_duplicate_id_and_missing_file(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = '{"id": "a", "text": "x", "annotations": {"m": [], "n": []}}\n'
    path.write_text(row + row)
    proc = _cli("--json", input_path=path)
    assert proc.returncode == 2 and "duplicate document id 'a'" in proc.stderr and ":2:" in proc.stderr
    proc = _cli("--json", input_path=tmp_path / "nope.jsonl")
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr
