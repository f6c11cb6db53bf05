"""The benchmark protocol of `diziner bench`, its pure parts: test sampling, the pilot pool, gold F1 of every
(round, annotator) on its pilot set, the oracle pick, the ensemble merge, the metrics of a configuration and the
Markdown tables. No model calls and no file writes here (the command does those, `cli/bench.py`).

Figures are strict span micro P/R/F1 as fractions (docs/method.md#scoring), each with a bootstrap percentile interval
over documents (`evaluation.intervals`); the ensemble is the engine's weighted IO consensus (docs/method.md#consensus)
under the weights of the selected round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corpus.io import CorpusDocument
from corpus.scoring import score
from evaluation.correlation import pearson, spearman
from evaluation.intervals import bootstrap_intervals, document_counts
from state.errors import InputError

__all__ = [
    "N_RESAMPLES",
    "PilotPoint",
    "average_rows",
    "choose_oracle",
    "configuration_metrics",
    "correlation_block",
    "covered_labels",
    "ensemble_readings",
    "find_uncovered_label",
    "pilot_f1",
    "pilot_pool",
    "render_summary_table",
    "render_table",
    "sample_indices",
    "summary_row",
]

N_RESAMPLES = 1000  # bootstrap resamples per interval
LEVEL = 0.95
ROW_NAMES = ("baseline", "selected", "oracle", "ensemble")

Span = tuple[int, int, str]


# ---------------------------------------------------------------- inputs


def sample_indices(n: int, size: int, seed: int) -> list[int]:
    """Indices (ascending) of a seeded sample of `size` of `n` items without replacement; all `n` when `size` is 0 or
    at least `n`."""
    if size < 0:
        raise ValueError(f"sample size must be >= 0, got {size}")
    if size == 0 or size >= n:
        return list(range(n))
    chosen = np.random.default_rng(seed).choice(n, size=size, replace=False)
    return sorted(int(i) for i in chosen)


def covered_labels(label_mapping: Mapping[str, str], type_names: Iterable[str]) -> set[str]:
    """Dataset labels a task can read: the mapping's keys, and the type names no mapping entry targets (identity)."""
    targeted = set(label_mapping.values())
    return set(label_mapping) | {t for t in type_names if t not in targeted}


def find_uncovered_label(docs: Iterable[CorpusDocument], covered: set[str]) -> tuple[str, CorpusDocument] | None:
    """The first gold label (in file order) outside `covered`, with its document; None when every label is covered."""
    for d in docs:
        for _, _, label in d.entities or ():
            if label not in covered:
                return label, d
    return None


def pilot_pool(splits: Mapping[str, Sequence[CorpusDocument]]) -> list[CorpusDocument]:
    """The splits' documents as one pool, in the given split order; ids are kept when unique across the splits,
    otherwise every id becomes '<split>:<id>'."""
    ids = [d.id for docs in splits.values() for d in docs]
    unique = len(ids) == len(set(ids))
    return [
        d if unique else CorpusDocument(f"{split}:{d.id}", d.text, d.entities, d.tokens, dict(d.extra), d.line)
        for split, docs in splits.items()
        for d in docs
    ]


# ---------------------------------------------------------------- pilot F1, oracle, correlation


@dataclass(frozen=True)
class PilotPoint:
    """One (round, annotator): its mean pairwise agreement (label-free) and its gold F1 on that round's pilot set."""

    round: int
    annotator: str
    agreement: float | None
    pilot_f1: float

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "annotator": self.annotator, "agreement": self.agreement, "pilot_f1": self.pilot_f1}


def _mapped(spans: Iterable[Sequence[Any]], labels: Mapping[str, str]) -> list[Span]:
    return sorted({(int(s), int(e), labels.get(t, t)) for s, e, t in spans})


def pilot_f1(
    records: Sequence[Mapping[str, Any]], gold: Mapping[str, CorpusDocument], labels: Mapping[str, str], annotators: Sequence[str]
) -> dict[str, float]:
    """Strict span micro F1 of each annotator on one round's pilot documents against the pool's hidden gold.

    `records` are the lines of round-<t>/annotations.jsonl ({id, text, annotations: {annotator: spans or null}});
    spans carry type names, mapped to dataset labels through `labels` (type name -> dataset label). A document an
    annotator failed on (null, or absent) counts its gold spans as misses.
    """
    gold_docs = []
    for r in records:
        if r["id"] not in gold:
            raise InputError(f"pilot document {r['id']!r} is not in the pool's gold")
        gold_docs.append(gold[r["id"]])
    out = {}
    for name in annotators:
        pred = [
            CorpusDocument(r["id"], gold[r["id"]].text, _mapped(((s["start"], s["end"], s["type"]) for s in spans), labels))
            for r in records
            if (spans := r.get("annotations", {}).get(name)) is not None
        ]
        out[name] = score(gold_docs, pred)["f1"]
    return out


def choose_oracle(points: Sequence[PilotPoint]) -> PilotPoint | None:
    """The point with the highest pilot gold F1; ties go to the earlier round, then to the earlier point in order."""
    best = None
    for p in points:
        if best is None or p.pilot_f1 > best.pilot_f1 or (p.pilot_f1 == best.pilot_f1 and p.round < best.round):
            best = p
    return best


def correlation_block(points: Sequence[PilotPoint]) -> dict[str, Any]:
    """Pearson and Spearman correlation of agreement with pilot gold F1 over the points that have an agreement
    (None when undefined), and every point."""
    usable = [p for p in points if p.agreement is not None]
    x = [p.agreement for p in usable]
    y = [p.pilot_f1 for p in usable]
    return {"pearson": pearson(x, y), "spearman": spearman(x, y), "n": len(usable), "points": [p.as_dict() for p in points]}


# ---------------------------------------------------------------- ensemble and metrics


def ensemble_readings(
    documents: Sequence[CorpusDocument],
    readings: Mapping[str, Mapping[str, Sequence[Span] | None]],
    weights: Mapping[str, float],
) -> dict[str, list[Span] | None]:
    """document id -> the weighted consensus spans of every annotator's reading (annotator -> document id -> spans
    or None where it failed), under the given weights; None where no weighted annotator succeeded on the document."""
    from disagreement.engine import weighted_consensus

    batch = [(d.id, d.text, {name: by_doc.get(d.id) for name, by_doc in readings.items()}) for d in documents]
    merged = weighted_consensus(batch, weights)
    out: dict[str, list[Span] | None] = {}
    for (doc_id, _, ann), spans in zip(batch, merged, strict=True):
        voted = any(v is not None and weights.get(name, 0.0) > 0 for name, v in ann.items())
        out[doc_id] = sorted(spans) if voted else None
    return out


def configuration_metrics(
    gold: Sequence[CorpusDocument],
    pred: Sequence[CorpusDocument],
    *,
    types: Iterable[str] = (),
    seed: int = 42,
    n_resamples: int = N_RESAMPLES,
    pred_path: str | None = None,
) -> dict[str, Any]:
    """Micro and per-type strict span P/R/F1 (fractions, equal to `diziner evaluate`'s) with 95% bootstrap
    percentile intervals over documents, seeded."""
    counts = document_counts(gold, pred, types=types, pred_path=pred_path)
    figures = bootstrap_intervals(counts, n_resamples=n_resamples, seed=seed, level=LEVEL)
    return {"micro": figures["micro"], "per_type": figures["per_type"]}


# ---------------------------------------------------------------- Markdown


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _with_ci(row: Mapping[str, Any] | None, key: str = "f1") -> str:
    if row is None:
        return "–"
    ci = row.get(f"{key}_ci")
    return f"{_pct(row[key])} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(row[key])


def _coef(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


_ROW_LABEL = {
    "baseline": "baseline: zero-shot (round-1 configuration)",
    "selected": "selected: label-free (highest agreement)",
    "oracle": "oracle † (best pilot gold F1)",
    "ensemble": "ensemble ‡ (weighted consensus)",
}


def _provenance(paper: Any, source_key: str) -> str:
    src = paper.sources[source_key]
    return f"{src.version}, {src.table} ({src.location})"


def render_table(metrics: Mapping[str, Any], paper: Any | None) -> str:
    """table.md of one benchmark: the configurations' figures beside the paper's, with the provenance of the latter."""
    task = metrics["task"]
    n = metrics["test_documents"]
    sample = metrics.get("test_sample", {})
    lines = [f"# Benchmark: {task}", ""]
    whole = sample.get("whole_split", False)
    what = (f"the whole test split ({n} sentences)" if whole
            else f"a seeded sample of {n} of the test split's {sample.get('split_documents', '?')} sentences (seed {metrics.get('seed')})")
    lines += [
        f"Strict span micro precision, recall and F1 in percent on {what}; 95% bootstrap percentile intervals over "
        f"documents ({metrics.get('n_resamples', N_RESAMPLES):,} resamples). The paper scores a 300-sentence sample "
        "of each test split with its own models (eight annotators, GPT-5 mini as supervisor), so its figures are "
        "context, not a target for other models.",
        "",
        "| configuration | round | annotator | P % | R % | F1 % [95% CI] | failed documents |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in metrics["configurations"]:
        m = c["micro"]
        who = c.get("annotator") or (", ".join(c.get("annotators", [])) if c["name"] == "ensemble" else "none")
        lines.append(
            f"| {_ROW_LABEL.get(c['name'], c['name'])} | {c.get('round') or '–'} | {who} | {_pct(m['precision'])} | "
            f"{_pct(m['recall'])} | {_with_ci(m)} | {c.get('failed_documents', 0)} |"
        )
    bench = None
    if paper is not None:
        try:
            bench = paper.for_task(task)
        except KeyError:
            bench = None
    if bench is not None:
        lines += [
            f"| paper: DiZiNER ({bench.paper_name}) | | | | | {bench.diziner:.1f} | |",
            f"| paper: GPT-5 mini alone | | | | | {bench.gpt5_mini:.1f} | |",
            f"| paper: best prior zero-shot ({bench.prior_zero_shot.system}) | | | | | {bench.prior_zero_shot.f1:.1f} | |",
        ]
    lines += ["", "† Chosen with the pilot sets' gold labels: not selectable without labels; an upper bound on the "
              "label-free selection, not a result of the method."]
    if any(c["name"] == "ensemble" for c in metrics["configurations"]):
        lines.append("‡ Every annotator under its configuration of the selected round, merged by the disagreement "
                     "engine's weighted IO vote with that round's weights; not part of the paper's method.")
    lines.append("")
    if bench is not None:
        lines.append(f"Paper figures: {_provenance(paper, bench.source)}.")
        if bench.note:
            lines.append(f"Note on the paper's figures: {' '.join(bench.note.split())}")
    elif paper is not None:
        lines.append(f"The paper does not evaluate {task}: no published figures to compare with.")
    configs = metrics["configurations"]
    types = sorted({t for c in configs for t in c.get("per_type", {})})
    if types:
        heads = [c["name"] + (f" {c['annotator']}" if c["name"] == "baseline" else "") for c in configs]
        lines += ["", "## F1 % per type [95% CI]", "", "| type | " + " | ".join(heads) + " |",
                  "|---|" + "---|" * len(configs)]
        lines += [f"| {t} | " + " | ".join(_with_ci(c["per_type"].get(t)) for c in configs) + " |" for t in types]
    corr = metrics.get("correlation") or {}
    points = corr.get("points", [])
    if points:
        lines += [
            "",
            "## Agreement and pilot gold F1",
            "",
            f"Over {corr.get('n', len(points))} (round, annotator) points: Pearson {_coef(corr.get('pearson'))}, "
            f"Spearman {_coef(corr.get('spearman'))}.",
            "",
            "| round | annotator | mean pairwise agreement % | pilot gold F1 % |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['round']} | {p['annotator']} | {_pct(p['agreement'])} | {_pct(p['pilot_f1'])} |" for p in points]
    notes = list(metrics.get("notes", []))
    calls = metrics.get("model_calls")
    notes.append(f"Model calls sent: {calls} ({metrics.get('cache_hits', 0)} answered by the cache instead).")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def summary_row(metrics: Mapping[str, Any], paper: Any | None) -> dict[str, Any]:
    """One benchmark's line of the --all summary: the configurations' micro F1 (with intervals) and the paper's."""
    rows = metrics["configurations"]

    def one(name: str) -> dict[str, Any] | None:
        row = next((c for c in rows if c["name"] == name), None)
        if row is None:
            return None
        return {"f1": row["micro"]["f1"], "f1_ci": row["micro"].get("f1_ci"), "round": row.get("round"),
                "annotator": row.get("annotator")}

    baselines = [c for c in rows if c["name"] == "baseline"]
    best = max(baselines, key=lambda c: c["micro"]["f1"], default=None)
    bench = None
    if paper is not None:
        try:
            bench = paper.for_task(metrics["task"])
        except KeyError:
            bench = None
    return {
        "task": metrics["task"],
        "paper_name": bench.paper_name if bench else None,
        "group": bench.group if bench else None,
        "test_documents": metrics["test_documents"],
        "selected": one("selected"),
        "oracle": one("oracle"),
        "ensemble": one("ensemble"),
        "baseline_mean": float(np.mean([c["micro"]["f1"] for c in baselines])) if baselines else None,
        "baseline_best": {"annotator": best["annotator"], "f1": best["micro"]["f1"]} if best else None,
        "paper": None if bench is None else {
            "diziner": bench.diziner / 100, "gpt5_mini": bench.gpt5_mini / 100,
            "prior_zero_shot": bench.prior_zero_shot.fraction, "prior_zero_shot_system": bench.prior_zero_shot.system,
            "source": bench.source,
        },
        "model_calls": metrics.get("model_calls"),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def average_rows(rows: Sequence[Mapping[str, Any]], paper: Any) -> list[dict[str, Any]]:
    """The paper's average rows (CrossNER, and the other benchmarks) over the benchmarks run here: our mean figures,
    the paper's mean over the same benchmarks, and the paper's reported average (over its whole group)."""
    out = []
    for group, avg in paper.averages.items():
        present = [r for r in rows if r.get("group") == group]
        if not present:
            continue
        names = [r["task"] for r in present]

        def col(name: str, rs: Sequence[Mapping[str, Any]] = present) -> float | None:
            return _mean([(r[name] or {}).get("f1") if r[name] is not None else None for r in rs])

        out.append({
            "group": group,
            "paper_name": avg.paper_name,
            "benchmarks": names,
            "complete": sorted(names) == sorted(avg.benchmarks),
            "selected": col("selected"),
            "oracle": col("oracle"),
            "ensemble": col("ensemble"),
            "baseline_mean": _mean([r["baseline_mean"] for r in present]),
            "paper_same_benchmarks": {
                "diziner": _mean([r["paper"]["diziner"] for r in present]),
                "gpt5_mini": _mean([r["paper"]["gpt5_mini"] for r in present]),
                "prior_zero_shot": _mean([r["paper"]["prior_zero_shot"] for r in present]),
            },
            "paper_reported": {
                "diziner": avg.diziner / 100, "gpt5_mini": avg.gpt5_mini / 100,
                "prior_zero_shot": avg.prior_zero_shot.fraction if avg.prior_zero_shot else None,
                "benchmarks": list(avg.benchmarks), "source": avg.source,
            },
        })
    return out


def render_summary_table(rows: Sequence[Mapping[str, Any]], averages: Sequence[Mapping[str, Any]], paper: Any) -> str:
    """BENCH_ROOT/table.md: one line per benchmark and the paper's average rows, beside the paper's figures."""
    lines = [
        "# Benchmarks: summary",
        "",
        "Strict span micro F1 in percent (95% bootstrap interval for the selected configuration). Baseline: the "
        "round-1 (zero-shot) configurations, their mean and the best annotator on the test sample. Oracle †: chosen "
        "with the pilot gold labels, not selectable without labels. Paper: the DiZiNER paper's figures (its own "
        "models, a 300-sentence test sample).",
        "",
        "| benchmark | test sentences | baseline mean | baseline best | selected [95% CI] | oracle † | ensemble | "
        "paper DiZiNER | paper GPT-5 mini | paper best prior zero-shot |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f1(cell: Mapping[str, Any] | None) -> str:
        return "–" if cell is None else _pct(cell["f1"])

    for r in rows:
        p = r["paper"]
        sel = r["selected"]
        lines.append(
            f"| {r['paper_name'] or r['task']} | {r['test_documents']} | {_pct(r['baseline_mean'])} | "
            f"{f1(r['baseline_best'])} | {_with_ci(sel) if sel else '–'} | {f1(r['oracle'])} | {f1(r['ensemble'])} | "
            + (f"{_pct(p['diziner'])} | {_pct(p['gpt5_mini'])} | {_pct(p['prior_zero_shot'])} ({p['prior_zero_shot_system']}) |"
               if p else "not in the paper | | |")
        )
    for a in averages:
        same = a["paper_same_benchmarks"]
        rep = a["paper_reported"]
        label = a["paper_name"] + ("" if a["complete"] else f" (over the {len(a['benchmarks'])} run here)")
        lines.append(
            f"| **{label}** | | {_pct(a['baseline_mean'])} | | {_pct(a['selected'])} | {_pct(a['oracle'])} | "
            f"{_pct(a['ensemble'])} | {_pct(same['diziner'])} | {_pct(same['gpt5_mini'])} | {_pct(same['prior_zero_shot'])} |"
        )
        if not a["complete"]:
            lines.append(
                f"| {a['paper_name']} as the paper reports it ({len(rep['benchmarks'])} benchmarks) | | | | | | | "
                f"{_pct(rep['diziner'])} | {_pct(rep['gpt5_mini'])} | {_pct(rep['prior_zero_shot'])} |"
            )
    lines += ["", "Paper figures: " + "; ".join(
        f"{a['paper_name']}: {_provenance(paper, a['paper_reported']['source'])}" for a in averages
    ) if averages else "No benchmark of the paper's groups was run."]
    return "\n".join(lines) + "\n"
