"""Tests for the benchmark statistics: bootstrap intervals, correlation, and the paper's reported figures."""

from __future__ import annotations

import math
import random
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.io import CorpusDocument, read_documents
from corpus.scoring import score
from evaluation.correlation import average_ranks, pearson, spearman
from evaluation.intervals import bootstrap_intervals, document_counts
from evaluation.paper import PAPER_RESULTS_PATH, load_paper_results
from state.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ner"
METRICS = ("precision", "recall", "f1")


# ------------------------------------------------------------------------------------------------ bootstrap


def perturbed(gold: list[CorpusDocument], seed: int) -> list[CorpusDocument]:
    """A noisy system output: spans dropped, retyped, shifted, doubled and invented; some documents left out."""
    rng = random.Random(seed)
    types = sorted({t for d in gold for _, _, t in d.entities or ()})
    out = []
    for d in gold:
        if rng.random() < 0.05:
            continue  # a document the system never returned: its gold spans are false negatives
        spans = []
        for s, e, t in d.entities or ():
            r = rng.random()
            if r < 0.15:
                continue
            if r < 0.25:
                t = rng.choice(types)
            elif r < 0.3 and e - s > 1:
                e -= 1
            spans.append((s, e, t))
            if rng.random() < 0.05:
                spans.append((s, e, t))  # a duplicate counts once
        if rng.random() < 0.2 and len(d.text) > 4:
            spans.append((0, 3, rng.choice(types)))
        out.append(replace(d, entities=spans))
    return out


def assert_points_equal_score(result: dict, expected: dict) -> None:
    for key in (*METRICS, "tp", "fp", "fn"):
        assert result["micro"][key] == expected[key], key
    assert list(result["per_type"]) == list(expected["per_type"])
    for t, row in expected["per_type"].items():
        for key in (*METRICS, "tp", "fp", "fn"):
            assert result["per_type"][t][key] == row[key], (t, key)


@pytest.mark.parametrize("split", ["wnut17/test.conll", "crossner_politics/test.txt"])
def test_point_estimates_equal_scoring_on_shared_data(split):
    gold, _ = read_documents(DATA / split)
    pred = perturbed(gold, seed=7)
    result = bootstrap_intervals(document_counts(gold, pred), n_resamples=200, seed=1)
    expected = score(gold, pred)
    assert expected["fp"] > 0 and expected["fn"] > 0 and 0 < expected["f1"] < 1
    assert_points_equal_score(result, expected)
    assert result["n_documents"] == len(gold)
    for row in [result["micro"], *result["per_type"].values()]:
        for m in METRICS:
            lo, hi = row[f"{m}_ci"]
            assert 0.0 <= lo <= hi <= 1.0
    # Over this many documents the micro point estimate lies inside its interval, and the interval is narrow.
    for m in METRICS:
        lo, hi = result["micro"][f"{m}_ci"]
        assert lo < result["micro"][m] < hi
        assert hi - lo < 0.15


def test_counts_by_document_and_type():
    gold = [
        CorpusDocument("a", "Ann met Bob", [(0, 3, "PER"), (8, 11, "PER")]),
        CorpusDocument("b", "in Paris now", [(3, 8, "LOC")]),
        CorpusDocument("c", "nothing here", []),
        CorpusDocument("d", "Oslo and Rome", [(0, 4, "LOC"), (9, 13, "LOC")]),
    ]
    pred = [
        CorpusDocument("a", "Ann met Bob", [(0, 3, "PER"), (0, 3, "PER"), (8, 11, "LOC")]),
        CorpusDocument("b", "in Paris now", [(3, 8, "LOC")]),
        CorpusDocument("c", "nothing here", [(0, 7, "ORG")]),
    ]  # "d" is missing: both its spans are false negatives
    counts = document_counts(gold, pred)
    assert counts.doc_ids == ("a", "b", "c", "d")
    assert counts.types == ("LOC", "ORG", "PER")
    # columns: all types, LOC, ORG, PER
    assert counts.tp.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert counts.fp.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert counts.fn.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 0, 0]]
    result = bootstrap_intervals(counts, n_resamples=50)
    assert_points_equal_score(result, score(gold, pred))
    assert result["micro"]["tp"] == 2 and result["micro"]["fp"] == 2 and result["micro"]["fn"] == 3


def test_matches_naive_resampling_with_scoring():
    """The weight-matrix shortcut gives, resample by resample, the figures of scoring the resampled documents."""
    gold, _ = read_documents(DATA / "wnut17" / "test.conll")
    gold = gold[:60]
    pred = perturbed(gold, seed=3)
    n, b, seed, level = len(gold), 300, 11, 0.9
    result = bootstrap_intervals(document_counts(gold, pred), n_resamples=b, seed=seed, level=level)

    by_id = {d.id: d for d in pred}
    draws = np.random.default_rng(seed).integers(0, n, size=(b, n))
    samples = {"micro": {m: [] for m in METRICS}}
    types = list(result["per_type"])
    for t in types:
        samples[t] = {m: [] for m in METRICS}
    for row in draws:
        g = [replace(gold[i], id=f"{gold[i].id}#{k}") for k, i in enumerate(row)]
        p = [replace(by_id[gold[i].id], id=f"{gold[i].id}#{k}") for k, i in enumerate(row) if gold[i].id in by_id]
        s = score(g, p)
        for m in METRICS:
            samples["micro"][m].append(s[m])
            for t in types:
                samples[t][m].append(s["per_type"][t][m] if t in s["per_type"] else 0.0)
    for name, got in [("micro", result["micro"]), *result["per_type"].items()]:
        for m in METRICS:
            expected = np.percentile(samples[name][m], [5.0, 95.0])
            assert got[f"{m}_ci"] == pytest.approx(list(expected), abs=1e-12), (name, m)


def test_deterministic_and_seeded():
    gold, _ = read_documents(DATA / "wnut17" / "test.conll")
    counts = document_counts(gold, perturbed(gold, seed=5))
    first = bootstrap_intervals(counts, n_resamples=300, seed=42)
    assert bootstrap_intervals(counts, n_resamples=300, seed=42) == first
    other = bootstrap_intervals(counts, n_resamples=300, seed=43)
    assert other["micro"]["f1_ci"] != first["micro"]["f1_ci"]
    assert other["micro"]["f1"] == first["micro"]["f1"]
    wider = bootstrap_intervals(counts, n_resamples=300, seed=42, level=0.99)
    (lo, hi), (wide_lo, wide_hi) = first["micro"]["f1_ci"], wider["micro"]["f1_ci"]
    assert wide_lo < lo < hi < wide_hi


def test_thousand_resamples_over_two_thousand_documents_is_fast():
    gold, _ = read_documents(DATA / "broad_twitter" / "test.conll")
    assert len(gold) == 2000
    counts = document_counts(gold, perturbed(gold, seed=9))
    start = time.perf_counter()
    bootstrap_intervals(counts)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f} s"  # measured about 0.16 s on two shared cores


def test_no_documents():
    counts = document_counts([], [])
    assert counts.tp.shape == (0, 1)
    result = bootstrap_intervals(counts)
    assert_points_equal_score(result, score([], []))
    assert result["micro"]["f1_ci"] == [0.0, 0.0] and result["micro"]["precision_ci"] == [0.0, 0.0]
    assert result["per_type"] == {} and result["n_documents"] == 0


def test_type_with_no_gold_and_no_predictions():
    gold = [CorpusDocument("a", "Ann", [(0, 3, "PER")]), CorpusDocument("b", "Bob", [(0, 3, "PER")])]
    pred = [CorpusDocument("a", "Ann", [(0, 3, "PER")]), CorpusDocument("b", "Bob", [])]
    assert list(bootstrap_intervals(document_counts(gold, pred))["per_type"]) == ["PER"]
    result = bootstrap_intervals(document_counts(gold, pred, types=["LOC", "PER"]), n_resamples=200)
    loc = result["per_type"]["LOC"]
    assert (loc["precision"], loc["recall"], loc["f1"], loc["tp"], loc["fp"], loc["fn"]) == (0.0, 0.0, 0.0, 0, 0, 0)
    assert loc["f1_ci"] == [0.0, 0.0] and loc["recall_ci"] == [0.0, 0.0]
    # PER: resamples "a a" (P = R = 1), "a b" (P = 1, R = 0.5) and "b b" (no prediction, no hit: all 0).
    per = result["per_type"]["PER"]
    assert per["precision"] == 1.0 and per["recall"] == 0.5
    assert per["precision_ci"] == [0.0, 1.0] and per["recall_ci"] == [0.0, 1.0] and per["f1_ci"] == [0.0, 1.0]


def test_undefined_f1_in_resamples_is_zero():
    """A type in one document of two is absent from a quarter of the resamples, where its F1 is 0 (not NaN)."""
    gold = [CorpusDocument("a", "Ann", [(0, 3, "PER")]), CorpusDocument("b", "Rome", [(0, 4, "LOC")])]
    pred = [CorpusDocument("a", "Ann", [(0, 3, "PER")]), CorpusDocument("b", "Rome", [(0, 4, "LOC")])]
    result = bootstrap_intervals(document_counts(gold, pred), n_resamples=1000)
    for t in ("PER", "LOC"):
        row = result["per_type"][t]
        assert row["f1"] == 1.0
        assert row["f1_ci"] == [0.0, 1.0] and row["precision_ci"] == [0.0, 1.0]
        assert not any(math.isnan(v) for m in METRICS for v in row[f"{m}_ci"])
    assert result["micro"]["f1_ci"] == [1.0, 1.0]


def test_single_document_interval_is_the_point():
    gold = [CorpusDocument("a", "Ann and Bob", [(0, 3, "PER"), (8, 11, "PER")])]
    pred = [CorpusDocument("a", "Ann and Bob", [(0, 3, "PER"), (4, 7, "PER")])]
    result = bootstrap_intervals(document_counts(gold, pred))
    for m in METRICS:
        assert result["micro"][f"{m}_ci"] == [0.5, 0.5]


def test_input_errors_are_scorings():
    gold = [CorpusDocument("a", "Ann", [(0, 3, "PER")])]
    with pytest.raises(InputError, match="'z' is not in the gold"):
        document_counts(gold, [CorpusDocument("z", "Ann", [])])
    with pytest.raises(InputError, match="different text"):
        document_counts(gold, [CorpusDocument("a", "Bob", [])])
    with pytest.raises(InputError, match="duplicate gold document id"):
        document_counts(gold + gold, [])


@pytest.mark.parametrize("kwargs", [{"n_resamples": 0}, {"n_resamples": 2.5}, {"level": 1.0}, {"level": 0.0}])
def test_bad_bootstrap_arguments(kwargs):
    counts = document_counts([CorpusDocument("a", "Ann", [(0, 3, "PER")])], [])
    with pytest.raises(ValueError):
        bootstrap_intervals(counts, **kwargs)


# ------------------------------------------------------------------------------------------------ correlation


def test_hand_worked_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # deviations (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): 4 / sqrt(5 * 5)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Spearman ignores the scale: a monotone but non-linear relation is a perfect rank correlation.
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 8, 27, 1000]) < 0.9
    # ties: ranks of x are (1, 2.5, 2.5, 4); deviations (-1.5, 0, 0, 1.5) with (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(22.5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_average_ranks():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([7, 7, 7]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([3.0, 1.0, 2.0, 1.0, 3.0]).tolist() == [4.5, 1.5, 3.0, 1.5, 4.5]
    assert average_ranks([]).tolist() == []


@pytest.mark.parametrize(
    "x, y",
    [([], []), ([1.0], [2.0]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [0.1, 0.1, 0.1]), ([0.3, 0.3], [0.3, 0.3])],
)
def test_undefined_correlation_is_none(x, y):
    assert pearson(x, y) is None
    assert spearman(x, y) is None


def test_bad_correlation_input():
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, float("nan"), 3], [1, 2, 3])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.floats(-1e3, 1e3, allow_nan=False, width=32)), min_size=2, max_size=40))
def test_correlations_agree_with_scipy(points):
    stats = pytest.importorskip("scipy.stats")
    x = [float(a) for a, _ in points]
    y = [float(b) for _, b in points]
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert pearson(x, y) is None and spearman(x, y) is None
        return
    assert pearson(x, y) == pytest.approx(float(stats.pearsonr(x, y)[0]), abs=1e-9)
    assert spearman(x, y) == pytest.approx(float(stats.spearmanr(x, y)[0]), abs=1e-9)


# ------------------------------------------------------------------------------------------------ paper figures


def test_every_task_has_paper_figures_or_is_listed_as_not_in_paper():
    paper = load_paper_results()
    tasks = sorted(p.stem for p in (REPO / "tasks").glob("*.yaml"))
    assert tasks, "no task files found"
    missing = [t for t in tasks if t not in paper.benchmarks and t not in paper.not_in_paper]
    assert missing == []
    assert set(paper.not_in_paper) <= set(tasks)
    assert paper.for_task("wnut17") is None
    assert paper.for_task("crossner_ai").prior_zero_shot.system == "GNER"
    with pytest.raises(KeyError):
        paper.for_task("no_such_task")


def test_paper_benchmarks_and_averages():
    paper = load_paper_results()
    assert len(paper.benchmarks) == 18
    assert len(paper.averages["crossner"].benchmarks) == 5 and len(paper.averages["others"].benchmarks) == 13
    assert all(b.supervised is None for b in paper.average_benchmarks("crossner"))
    assert all(b.supervised is not None for b in paper.average_benchmarks("others"))
    bt = paper.benchmarks["broad_twitter"]
    assert (bt.diziner, bt.gpt5_mini, bt.prior_zero_shot.f1) == (78.3, 59.2, 67.9)
    assert bt.prior_zero_shot.system == "UniNER-7B" and bt.group == "others"
    assert paper.benchmarks["anatem"].prior_zero_shot.fraction == pytest.approx(0.333)


def test_reported_averages_agree_with_the_per_benchmark_figures():
    """Each printed figure is rounded to 0.1, so a mean of them and its printed value differ by at most 0.1."""
    paper = load_paper_results()
    for name, avg in paper.averages.items():
        rows = paper.average_benchmarks(name)
        assert np.mean([b.diziner for b in rows]) == pytest.approx(avg.diziner, abs=0.1), name
        assert np.mean([b.gpt5_mini for b in rows]) == pytest.approx(avg.gpt5_mini, abs=0.1), name
    others = paper.average_benchmarks("others")
    d = np.mean([b.diziner for b in others])
    z = np.mean([b.prior_zero_shot.f1 for b in others])
    s = np.mean([b.supervised.f1 for b in others])
    diffs = paper.averages["others"].reported_differences
    assert d - z == pytest.approx(diffs["diziner_minus_prior_zero_shot"], abs=0.1)
    assert d - s == pytest.approx(diffs["diziner_minus_supervised"], abs=0.1)
    assert z - s == pytest.approx(diffs["prior_zero_shot_minus_supervised"], abs=0.1)
    # The published version's known DiZiNER figures are all a little below the submission's.
    for key, f1 in paper.published_diziner.f1.items():
        assert 0 < paper.benchmarks[key].diziner - f1 < 4, key


def test_paper_results_are_package_data():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "evaluation" in project["tool"]["setuptools"]["packages"]
    assert "*.yaml" in project["tool"]["setuptools"]["package-data"]["evaluation"]
    assert PAPER_RESULTS_PATH.parent == REPO / "evaluation"


def _malformed(tmp_path: Path, old: str, new: str) -> InputError:
    text = PAPER_RESULTS_PATH.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "paper_results.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_paper_results(path)
    assert str(path) in str(info.value)
    return info.value


def test_malformed_paper_results(tmp_path):
    exc = _malformed(tmp_path, "    diziner: 71.1\n", "    diziner: high\n")
    assert "benchmarks.crossner_ai.diziner" in exc.message and exc.line is not None
    exc = _malformed(tmp_path, "    gpt5_mini: 64.3\n", "")
    assert "benchmarks.crossner_ai.gpt5_mini: required" in exc.message
    exc = _malformed(tmp_path, "    diziner: 71.1\n", "    diziner: 71.1\n    dizner: 71.1\n")
    assert "dizner: unknown key" in exc.message
    exc = _malformed(tmp_path, "source: submission_table1\n    diziner: 73.8", "source: table_9\n    diziner: 73.8")
    assert "'table_9'" in exc.message
    exc = _malformed(tmp_path, "not_in_paper: [ncbi_disease, wnut17]", "not_in_paper: [ncbi_disease, anatem]")
    assert "anatem" in exc.message
    exc = _malformed(
        tmp_path,
        "group: crossner\n    source: submission_table1\n    diziner: 82.9",
        "group: others\n    source: submission_table1\n    diziner: 82.9",
    )
    assert "averages" in exc.message
    exc = _malformed(tmp_path, "sources:\n", "sources: [\n")
    assert "invalid YAML" in exc.message
    with pytest.raises(InputError, match="not found"):
        load_paper_results(tmp_path / "absent.yaml")
