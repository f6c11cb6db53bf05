"""Tests for scoring (corpus/scoring.py) and `diziner evaluate`, with seqeval as an independent oracle."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, Entities

from corpus.io import CorpusDocument, read_documents, write_conll, write_jsonl
from corpus.scoring import align_by_position, prf, score
from state.errors import InputError
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

TEST_SPLITS = {
    "crossner_ai": "test.txt",
    "crossner_literature": "test.txt",
    "crossner_music": "test.txt",
    "crossner_politics": "test.txt",
    "crossner_science": "test.txt",
    "anatem": "test.tsv",
    "bc2gm": "test.tsv",
    "ncbi_disease": "test.tsv",
    "wnut17": "test.conll",
    "broad_twitter": "test.conll",
}


def D(i, text, ents=(), tokens=None):
    return CorpusDocument(i, text, list(ents) if ents is not None else None, tokens, {})


def row(p, r, f, tp, fp, fn):
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, abs=1e-12), k
        else:
            assert got[k] == v, k


# ---------------------------------------------------------------------------------------------- hand-worked


TEXT1 = "Alice met Bob in Paris"  # Alice 0-5, Bob 10-13, Paris 17-22
TEXT2 = "Acme hired Carol"  # Acme 0-4, Carol 11-16


def test_hand_worked_micro_and_per_type():
    gold = [
        D("d1", TEXT1, [(0, 5, "PER"), (10, 13, "PER"), (17, 22, "LOC")]),
        D("d2", TEXT2, [(0, 4, "ORG"), (11, 16, "PER")]),
    ]
    pred = [
        D("d1", TEXT1, [(0, 5, "PER"), (10, 13, "ORG"), (17, 21, "LOC")]),  # 1 tp, retyped Bob, short Paris
        D("d2", TEXT2, [(0, 4, "ORG"), (11, 16, "PER"), (5, 10, "MISC")]),  # 2 tp, 1 fp
    ]
    res = score(gold, pred)
    # tp = 3 (Alice, Acme, Carol); fp = 3 (Bob/ORG, Pari/LOC, hired/MISC); fn = 2 (Bob/PER, Paris/LOC)
    assert_close({k: v for k, v in res.items() if k != "per_type"}, row(0.5, 0.6, 6 / 11, 3, 3, 2))
    assert list(res["per_type"]) == ["LOC", "MISC", "ORG", "PER"]
    assert_close(res["per_type"]["PER"], row(1.0, 2 / 3, 0.8, 2, 0, 1))
    assert_close(res["per_type"]["ORG"], row(0.5, 1.0, 2 / 3, 1, 1, 0))
    assert_close(res["per_type"]["LOC"], row(0.0, 0.0, 0.0, 0, 1, 1))
    assert_close(res["per_type"]["MISC"], row(0.0, 0.0, 0.0, 0, 1, 0))
    assert set(res) == {"precision", "recall", "f1", "tp", "fp", "fn", "per_type"}
    assert all(isinstance(res[k], float) for k in ("precision", "recall", "f1"))


def test_duplicates_count_once():
    gold = [D("d1", TEXT1, [(0, 5, "PER"), (0, 5, "PER"), (10, 13, "PER")])]
    pred = [D("d1", TEXT1, [(0, 5, "PER"), (0, 5, "PER"), (0, 5, "PER"), (17, 22, "LOC"), (17, 22, "LOC")])]
    res = score(gold, pred)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 1)
    assert_close(res["per_type"]["PER"], row(1.0, 0.5, 2 / 3, 1, 0, 1))


def test_same_span_in_two_documents_counts_twice():
    gold = [D("a", "x y", [(0, 1, "T")]), D("b", "x y", [(0, 1, "T")])]
    res = score(gold, [D("a", "x y", [(0, 1, "T")])])
    assert (res["tp"], res["fp"], res["fn"]) == (1, 0, 1)


def test_missing_predicted_document_counts_false_negatives():
    gold = [D("d1", TEXT1, [(0, 5, "PER")]), D("d2", TEXT2, [(0, 4, "ORG"), (11, 16, "PER")])]
    res = score(gold, [D("d1", TEXT1, [(0, 5, "PER")])])
    assert_close({k: v for k, v in res.items() if k != "per_type"}, row(1.0, 1 / 3, 0.5, 1, 0, 2))
    assert_close(res["per_type"]["ORG"], row(0.0, 0.0, 0.0, 0, 0, 1))


def test_empty_predictions_and_empty_gold():
    gold = [D("d1", TEXT1, [(0, 5, "PER")])]
    res = score(gold, [])
    assert_close({k: v for k, v in res.items() if k != "per_type"}, row(0.0, 0.0, 0.0, 0, 0, 1))
    res = score(gold, [D("d1", TEXT1, None)])  # unlabelled prediction = no spans
    assert (res["precision"], res["fn"]) == (0.0, 1)
    res = score([D("d1", TEXT1, [])], [D("d1", TEXT1, [(0, 5, "PER")])])
    assert_close({k: v for k, v in res.items() if k != "per_type"}, row(0.0, 0.0, 0.0, 0, 1, 0))
    assert_close(res["per_type"]["PER"], row(0.0, 0.0, 0.0, 0, 1, 0))
    res = score([], [])
    assert res == {**row(0.0, 0.0, 0.0, 0, 0, 0), "per_type": {}}


def test_prf_zero_rules():
    assert prf(0, 0, 0) == row(0.0, 0.0, 0.0, 0, 0, 0)
    assert prf(0, 2, 3) == row(0.0, 0.0, 0.0, 0, 2, 3)
    assert prf(2, 0, 0) == row(1.0, 1.0, 1.0, 2, 0, 0)
    assert prf(1, 3, 0)["f1"] == pytest.approx(0.4)


def test_unknown_predicted_id_is_input_error():
    with pytest.raises(InputError, match="'zz'") as info:
        score([D("d1", TEXT1)], [D("d1", TEXT1), CorpusDocument("zz", "x", [], None, {}, line=7)], pred_path="p.jsonl")
    assert str(info.value).startswith("p.jsonl:7: ")
    with pytest.raises(InputError, match="'zz'"):
        score([D("d1", TEXT1)], [D("zz", "x")])


def test_text_mismatch_is_input_error():
    with pytest.raises(InputError, match="'d1'.*different text"):
        score([D("d1", TEXT1)], [D("d1", TEXT1 + " ")])


def test_duplicate_ids_are_input_errors():
    with pytest.raises(InputError, match="duplicate predicted"):
        score([D("d1", TEXT1)], [D("d1", TEXT1), D("d1", TEXT1)])
    with pytest.raises(InputError, match="duplicate gold"):
        score([D("d1", TEXT1), D("d1", TEXT1)], [])


def test_align_by_position():
    gold = [D("g-1", "a b", [(0, 1, "X")], ["a", "b"]), D("g-2", "c", [], ["c"])]
    pred = [D("p-1", "a b", [(2, 3, "X")], ["a", "b"]), D("p-2", "c", [(0, 1, "Y")], ["c"])]
    aligned = align_by_position(gold, pred)
    assert [d.id for d in aligned] == ["g-1", "g-2"] and aligned[1].entities == [(0, 1, "Y")]
    assert [d.id for d in pred] == ["p-1", "p-2"]  # inputs untouched
    res = score(gold, aligned)
    assert (res["tp"], res["fp"], res["fn"]) == (0, 2, 1)
    with pytest.raises(InputError, match="sentence 2 differs.*token 1 is 'c' in the gold but 'd'"):
        align_by_position(gold, [pred[0], D("p-2", "d", [], ["d"])], gold_path="g.txt", pred_path="p.txt")
    with pytest.raises(InputError, match="sentence 1 differs.*2 token.*3 in the predictions"):
        align_by_position(gold, [D("p-1", "a b c", [], ["a", "b", "c"]), pred[1]])
    with pytest.raises(InputError, match="1 sentence.*has 2: sentence 2 is missing from the predictions"):
        align_by_position(gold, pred[:1])
    with pytest.raises(InputError, match="sentence 3 is missing from the gold"):
        align_by_position(gold, pred + [D("p-3", "e", [], ["e"])])


# ----------------------------------------------------------------------------------------- seqeval oracle


def read_tags(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Independent minimal reader for the shared (valid, tab-separated) files: sentences of tokens and of tags."""
    toks, tags, ct, cg = [], [], [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            if ct:
                toks.append(ct)
                tags.append(cg)
                ct, cg = [], []
            continue
        t, g = line.rsplit("\t", 1)
        ct.append(t)
        cg.append(g)
    if ct:
        toks.append(ct)
        tags.append(cg)
    return toks, tags


def decode(tags: list[str]) -> list[list]:
    spans, cur = [], None
    for i, g in enumerate(tags):
        if (g == "O" or g.startswith("B-") or (cur is not None and g[2:] != cur[2])) and cur is not None:
            spans.append(cur)
            cur = None
        if g.startswith("B-"):
            cur = [i, i + 1, g[2:]]
        elif g.startswith("I-"):
            assert cur is not None, "shared gold is valid IOB2"
            cur[1] = i + 1
    if cur is not None:
        spans.append(cur)
    return spans


def perturb(tags: list[str], rng: np.random.Generator, types: list[str]) -> list[str]:
    """Drop, shift by one token left/right, retype spans and add spurious one-token spans; result is valid IOB2."""
    n = len(tags)
    busy = [g != "O" for g in tags]
    out = []
    for s, e, t in decode(tags):
        r = rng.random()
        if r < 0.12:  # drop
            for k in range(s, e):
                busy[k] = False
            continue
        if r < 0.24 and s > 0 and not busy[s - 1]:  # shift left
            busy[s - 1], busy[e - 1] = True, False
            s, e = s - 1, e - 1
        elif 0.24 <= r < 0.36 and e < n and not busy[e]:  # shift right
            busy[e], busy[s] = True, False
            s, e = s + 1, e + 1
        elif 0.36 <= r < 0.5 and len(types) > 1:  # retype
            others = [x for x in types if x != t]
            t = others[int(rng.integers(len(others)))]
        out.append((s, e, t))
    for k in np.flatnonzero(rng.random(n) < 0.01):  # spurious spans on free tokens
        if not busy[k]:
            busy[k] = True
            out.append((int(k), int(k) + 1, types[int(rng.integers(len(types)))]))
    new = ["O"] * n
    for s, e, t in out:
        new[s] = "B-" + t
        for k in range(s + 1, e):
            new[k] = "I-" + t
    return new


def make_prediction(name: str, tmp_path: Path) -> tuple[Path, Path, list[list[str]], list[list[str]]]:
    gold_path = DATA / name / TEST_SPLITS[name]
    assert gold_path.is_file(), f"shared benchmark file missing: {gold_path}"
    toks, y_true = read_tags(gold_path)
    types = sorted({g[2:] for sent in y_true for g in sent if g != "O"})
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y_pred = [perturb(sent, rng, types) for sent in y_true]
    pred_path = tmp_path / f"pred{gold_path.suffix}"
    pred_path.write_text(
        "".join("".join(f"{t}\t{g}\n" for t, g in zip(ts, gs)) + "\n" for ts, gs in zip(toks, y_pred)), encoding="utf-8"
    )
    return gold_path, pred_path, y_true, y_pred


def check_against_seqeval(res: dict, y_true, y_pred) -> None:
    assert abs(res["precision"] - precision_score(y_true, y_pred, mode="strict", scheme=IOB2)) < 1e-9
    assert abs(res["recall"] - recall_score(y_true, y_pred, mode="strict", scheme=IOB2)) < 1e-9
    assert abs(res["f1"] - f1_score(y_true, y_pred, mode="strict", scheme=IOB2)) < 1e-9
    report = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    n_pred = Counter(e.tag for sent in Entities(y_pred, IOB2).entities for e in sent)
    types = sorted(k for k in report if not k.endswith(" avg"))
    assert list(res["per_type"]) == types
    for t in types:
        ours, theirs = res["per_type"][t], report[t]
        assert abs(ours["precision"] - theirs["precision"]) < 1e-9, t
        assert abs(ours["recall"] - theirs["recall"]) < 1e-9, t
        assert abs(ours["f1"] - theirs["f1-score"]) < 1e-9, t
        assert ours["tp"] + ours["fn"] == theirs["support"], t
        assert ours["tp"] + ours["fp"] == n_pred[t], t
    assert res["tp"] + res["fn"] == report["micro avg"]["support"]
    assert res["tp"] + res["fp"] == sum(n_pred.values())


@pytest.mark.parametrize("name", sorted(TEST_SPLITS))
def test_agrees_with_seqeval_on_perturbed_benchmark(tmp_path, name):
    gold_path, pred_path, y_true, y_pred = make_prediction(name, tmp_path)
    gold, gstats = read_documents(gold_path)
    pred, pstats = read_documents(pred_path)
    assert gstats.repairs == pstats.repairs == 0
    res = score(gold, align_by_position(gold, pred))
    assert 0.4 < res["f1"] < 0.95, "the perturbation must change the score noticeably"
    assert res["fp"] > 0 and res["fn"] > 0
    check_against_seqeval(res, y_true, y_pred)


# ----------------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "cli.main", "evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_json_agrees_with_seqeval_conll_and_jsonl(tmp_path):
    gold_path, pred_path, y_true, y_pred = make_prediction("crossner_music", tmp_path)
    proc = run_cli("--gold", str(gold_path), "--pred", str(pred_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    res = json.loads(proc.stdout)  # exactly one JSON object
    assert proc.stdout.count("\n") == 1
    check_against_seqeval(res, y_true, y_pred)
    # the same predictions as JSONL with the gold's ids: documents matched by id, same numbers
    gold, _ = read_documents(gold_path)
    jpath = tmp_path / "pred.jsonl"
    write_jsonl(jpath, align_by_position(gold, read_documents(pred_path)[0]))
    proc2 = run_cli("--gold", str(gold_path), "--pred", str(jpath), "--json")
    assert proc2.returncode == 0, proc2.stderr
    assert json.loads(proc2.stdout) == res
    # the table
    proc3 = run_cli("--gold", str(gold_path), "--pred", str(pred_path))
    assert proc3.returncode == 0, proc3.stderr
    lines = proc3.stdout.splitlines()
    micro = next(ln for ln in lines if ln.startswith("micro "))
    assert f"{100 * res['f1']:.2f}" in micro.split() and str(res["tp"]) in micro.split()
    assert any(ln.split()[0] == "musicalartist" for ln in lines)
    assert len({len(ln) for ln in lines}) == 1  # aligned columns


def test_cli_bad_input_exit_2_names_file_stdout_empty(tmp_path):
    gold_path = DATA / "ncbi_disease" / TEST_SPLITS["ncbi_disease"]
    bad = tmp_path / "bad.conll"
    bad.write_text("Clustering\tO\nof\tQ-Disease\n", encoding="utf-8")
    proc = run_cli("--gold", str(gold_path), "--pred", str(bad), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{bad}:2:" in proc.stderr and "bad tag" in proc.stderr and "Traceback" not in proc.stderr
    missing = tmp_path / "missing.jsonl"
    proc = run_cli("--gold", str(missing), "--pred", str(gold_path), "--json")
    assert (proc.returncode, proc.stdout) == (2, "") and str(missing) in proc.stderr
    # CoNLL vs CoNLL with a different sentence count
    short = tmp_path / "short.tsv"
    short.write_text("BRCA1\tO\n\n", encoding="utf-8")
    proc = run_cli("--gold", str(gold_path), "--pred", str(short), "--json")
    assert (proc.returncode, proc.stdout) == (2, "") and str(short) in proc.stderr and "sentence 1" in proc.stderr
    # JSONL prediction with an id unknown to the gold
    unknown = tmp_path / "u.jsonl"
    unknown.write_text(json.dumps({"id": "nope-1", "text": "x", "entities": []}) + "\n", encoding="utf-8")
    proc = run_cli("--gold", str(gold_path), "--pred", str(unknown), "--json")
    assert (proc.returncode, proc.stdout) == (2, "") and f"{unknown}:1:" in proc.stderr and "'nope-1'" in proc.stderr


def test_score_limit_scores_the_first_gold_documents_only():
    gold = [
        D("d1", TEXT1, [(0, 5, "PER"), (10, 13, "PER")]),
        D("d2", TEXT2, [(0, 4, "ORG")]),
        D("d3", "x", [(0, 1, "X")]),
    ]
    pred = [D("d2", TEXT2, [(0, 4, "LOC")]), D("d1", TEXT1, [(0, 5, "PER")]), D("d3", "x", [])]
    res = score(gold, pred, limit=1)
    assert res == score(gold[:1], [pred[1]])
    assert (res["tp"], res["fp"], res["fn"]) == (1, 0, 1) and list(res["per_type"]) == ["PER"]
    assert score(gold, pred, limit=2) == score(gold[:2], pred[:2])
    assert score(gold, pred, limit=3) == score(gold, pred) == score(gold, pred, limit=99)
    # a prediction for a later gold document is ignored, whatever its text; an id unknown to the gold is not
    assert score(gold, [D("d3", "another text", [(0, 1, "X")])], limit=1) == score(gold[:1], [])
    with pytest.raises(InputError, match="'zz'"):
        score(gold, [D("zz", "x")], limit=1)
    with pytest.raises(InputError, match="duplicate gold document id 'd3'"):
        score(gold + [D("d3", "x")], [], limit=1)


def _cli_json(*args: object) -> dict:
    proc = run_cli(*map(str, args), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cli_limit_equals_evaluating_a_sliced_gold(tmp_path):
    n = 10
    gold_path, pred_path, _, _ = make_prediction("crossner_music", tmp_path)
    gold, _ = read_documents(gold_path)
    pred = align_by_position(gold, read_documents(pred_path)[0])
    g_slice, p_slice = tmp_path / "gold-slice.conll", tmp_path / "pred-slice.conll"
    write_conll(g_slice, gold[:n])
    write_conll(p_slice, pred[:n])
    want = _cli_json("--gold", g_slice, "--pred", p_slice)
    assert want["tp"] > 0 and want["fn"] > 0
    assert want != _cli_json("--gold", gold_path, "--pred", pred_path)  # the slice's figures differ from the whole
    # CoNLL gold: CoNLL predictions of every sentence or of the first N only, matched by position
    assert _cli_json("--gold", gold_path, "--pred", pred_path, "--limit", n) == want
    assert _cli_json("--gold", gold_path, "--pred", p_slice, "--limit", n) == want
    # CoNLL gold, JSONL predictions matched by id: of every document, or of the first N (`annotate --limit N`)
    j_all, j_first = tmp_path / "pred.jsonl", tmp_path / "pred-first.jsonl"
    write_jsonl(j_all, pred)
    write_jsonl(j_first, pred[:n])
    assert _cli_json("--gold", gold_path, "--pred", j_all, "--limit", n) == want
    assert _cli_json("--gold", gold_path, "--pred", j_first, "--limit", n) == want
    assert _cli_json("--gold", gold_path, "--pred", j_first) != want  # without --limit the rest count as misses
    # JSONL gold
    jg_all, jg_slice = tmp_path / "gold.jsonl", tmp_path / "gold-slice.jsonl"
    write_jsonl(jg_all, gold)
    write_jsonl(jg_slice, gold[:n])
    assert _cli_json("--gold", jg_slice, "--pred", j_first) == want
    assert _cli_json("--gold", jg_all, "--pred", j_all, "--limit", n) == want
    assert _cli_json("--gold", jg_all, "--pred", j_first, "--limit", n) == want
    for bad in ("0", "-1", "x"):
        proc = run_cli("--gold", str(jg_all), "--pred", str(j_all), "--limit", bad)
        assert proc.returncode == 2 and "positive integer" in proc.stderr and proc.stdout == ""


def test_cli_repairs_warn_on_stderr_only(tmp_path):
    gold = tmp_path / "g.conll"
    pred = tmp_path / "p.conll"
    gold.write_text("a\tB-X\nb\tI-X\n\n", encoding="utf-8")
    pred.write_text("a\tO\nb\tI-X\n\n", encoding="utf-8")
    proc = run_cli("--gold", str(gold), "--pred", str(pred), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (res["tp"], res["fp"], res["fn"]) == (0, 1, 1)
    assert "warning" in proc.stderr and str(pred) in proc.stderr and "line 2" in proc.stderr
