"""One self-contained report.html for a run directory of `diziner refine` or a bench directory of `diziner bench`.

`load(directory)` gathers the directory's files into one typed model (`RunData` or `BenchData`); `render_page`
turns it into the page; `write_report(directory)` does both and writes DIRECTORY/report.html.

What the page shows, section by section (each a `<section id=...>`):

- `agreement`: mean pairwise agreement per round and each annotator's mean agreement (summary.json), the stop
  rule's bar for each round (the best earlier round + min_gain, docs/method.md "Loop and stop rule"), the selected
  (round, annotator); for a bench also gold F1 per round and the agreement-vs-gold-F1 scatter with its correlations;
- `matrices`: each round's pairwise agreement matrix, recomputed by the engine from round-<t>/annotations.jsonl with
  the run's percentile, and the annotators' weights and elite per round;
- `hotspots`: each round's hotspot report (`disagreement.render_html` of `build_report`'s data);
- `guideline-changes`: what the supervisor answered after each round (failed, refused or rejected answers shown as
  such) and the diff of the instructions and goal between consecutive rounds' configurations;
- `usage`: tokens, calls, cache hits, cost and time per round, node and model;
- `guideline`: the final guideline, and `metrics` (bench only): the scores with their intervals.

Everything read from the directory is untrusted and HTML-escaped. The page loads nothing (a Content-Security-Policy
forbids it): styles are inline and plots are SVG `data:` URIs. The same directory always gives the same bytes.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cli import rundir
from corpus.io import iter_jsonl
from disagreement.engine import AnnotationBatch, EngineParams, analyze
from disagreement.io import read_annotations
from disagreement.render_html import STYLE as HOTSPOT_STYLE
from disagreement.render_html import bar, esc, name_html, names_html, render_html
from disagreement.report import ReportData, ReportParams, agreement_figures, build_report
from reporting import plots
from state.errors import InputError
from state.graph_state import RoundRecord
from state.inputs import describe_validation_error
from state.models import Instruction

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
BENCH_TABLE = "table.md"
BENCH_RUN = "run"


# ---------------------------------------------------------------- the typed model of a directory


class ConfigurationFile(BaseModel):
    """round-<t>/configurations/<annotator>.json: the instructions and goal one annotator was given."""

    model_config = ConfigDict(extra="ignore")
    round: int
    annotator: str
    common_instructions: list[Instruction] = Field(default_factory=list)
    annotator_instructions: list[Instruction] = Field(default_factory=list)
    goal: str = ""


class PhaseFile(BaseModel):
    """round-<t>/phase<n>_*.json: one supervisor phase's answer, or its failure, refusal or rejections."""

    model_config = ConfigDict(extra="allow")
    round: int
    phase: int
    node: str
    output: Any = None
    failed: Any = None
    failed_answer: Any = None
    goal_refused: str | None = None
    rejected: Any = None

    def extras(self) -> dict[str, Any]:
        """Keys this reader does not know (a newer run may add some): shown as they are."""
        return dict(self.model_extra or {})


class Scores(BaseModel):
    model_config = ConfigDict(extra="allow")
    precision: float
    recall: float
    f1: float
    f1_ci: tuple[float, float] | None = None


class BenchConfiguration(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    round: int | None = None
    annotator: str | None = None
    micro: Scores
    per_type: dict[str, dict[str, Any]] = Field(default_factory=dict)
    predictions: str | None = None


class CorrelationPoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    round: int
    annotator: str
    agreement: float | None = None
    pilot_f1: float | None = None


class Correlation(BaseModel):
    model_config = ConfigDict(extra="allow")
    pearson: float | None = None
    spearman: float | None = None
    points: list[CorrelationPoint] = Field(default_factory=list)


class BenchMetrics(BaseModel):
    """metrics.json of a bench directory."""

    model_config = ConfigDict(extra="allow")
    configurations: list[BenchConfiguration] = Field(default_factory=list)
    correlation: Correlation | None = None
    test_documents: int | None = None
    model_calls: int | None = None
    cache_hits: int | None = None


@dataclass(frozen=True)
class RoundData:
    """One round as its directory and summary.json hold it, with the engine's figures recomputed."""

    round: int
    record: RoundRecord | None  # summary.json's entry
    agreement: dict[str, Any] | None  # agreement_figures of the recomputed analysis
    report: ReportData | None
    documents: dict[str, str]  # pilot document id -> text
    configurations: dict[str, ConfigurationFile]  # annotator -> configuration, in run order
    phases: tuple[PhaseFile, ...]
    failed: dict[str, Any] = field(default_factory=dict)  # failed.json
    problem: str | None = None  # why there is no analysis


@dataclass(frozen=True)
class RunData:
    directory: Path
    record: rundir.RunRecord
    summary: dict[str, Any]
    annotators: tuple[str, ...]  # run order
    rounds: tuple[RoundData, ...]
    guideline_markdown: str | None


@dataclass(frozen=True)
class BenchData:
    directory: Path
    metrics: BenchMetrics
    table: str | None
    run: RunData | None


def _validate(model: type[BaseModel], obj: Any, path: Path, what: str) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InputError(f"{what}: {describe_validation_error(exc)}", path=str(path)) from None


def _read_text(path: Path, what: str) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what}: {exc}", path=str(path)) from None


def _analyse_round(path: Path, order: tuple[str, ...], ctx: Any) -> tuple[dict[str, Any], ReportData, dict[str, str]]:
    """Recompute a round's analysis from its annotations.jsonl, annotators in run order (as the graph orders them)."""
    batch = read_annotations(str(path))  # validates, naming file and line
    names = [n for n in order if n in batch.annotators] + [n for n in batch.annotators if n not in order]
    docs = [
        (
            obj["id"],
            obj["text"],
            {a: None if s is None else [(x["start"], x["end"], x["type"]) for x in s] for a, s in obj["annotations"].items()},
        )
        for _, obj in iter_jsonl(str(path))
    ]
    result = analyze(AnnotationBatch.from_documents(docs, annotators=names), EngineParams(percentile=ctx.percentile))
    report = build_report(result, ReportParams(max_examples_per_type=ctx.max_report_examples))
    return agreement_figures(result), report, dict(zip(batch.doc_ids, batch.texts, strict=True))


def _load_round(run_dir: Path, t: int, record: RoundRecord | None, order: tuple[str, ...], ctx: Any) -> RoundData:
    rdir = rundir.round_dir(run_dir, t)
    agreement = report = None
    documents: dict[str, str] = {}
    problem = record.error if record is not None else None
    ann = rdir / rundir.ANNOTATIONS
    if ann.is_file():
        try:
            agreement, report, documents = _analyse_round(ann, order, ctx)
        except InputError as exc:
            if exc.path:  # the file itself is bad
                raise
            problem = f"the round's annotations could not be analysed: {exc}"
    elif problem is None:
        problem = "no annotations.jsonl (the round was not annotated)"
    configurations = {}
    conf_dir = rdir / rundir.CONFIGURATIONS
    for name in order:
        path = rundir.configuration_path(run_dir, t, name)
        if path.is_file():
            configurations[name] = _validate(ConfigurationFile, rundir.read_json(path, "configuration"), path, "configuration")
    if conf_dir.is_dir():  # configurations of annotators not in run.json's order (a changed run file)
        for path in sorted(conf_dir.glob("*.json")):
            if path.is_file() and path.stem not in {rundir.safe_name(n) for n in configurations}:
                conf = _validate(ConfigurationFile, rundir.read_json(path, "configuration"), path, "configuration")
                configurations.setdefault(conf.annotator, conf)
    phases = []
    for name in rundir.PHASE_FILES.values():
        path = rdir / name
        if path.is_file():
            phases.append(_validate(PhaseFile, rundir.read_json(path, "supervisor phase file"), path, "phase file"))
    failed_path = rdir / rundir.FAILED
    failed = rundir.read_json(failed_path, "failed.json") if failed_path.is_file() else {}
    if not isinstance(failed, dict):
        raise InputError("failed.json must hold an object", path=str(failed_path))
    return RoundData(t, record, agreement, report, documents, configurations, tuple(phases), failed, problem)


def load_run(directory: Path) -> RunData:
    """A `diziner refine` run directory as a `RunData`; InputError naming the file when something is unreadable."""
    record = rundir.read_run(directory)
    summary_path = directory / rundir.SUMMARY
    summary = rundir.read_json(summary_path, "summary.json")
    if not isinstance(summary, dict):
        raise InputError("summary.json must hold an object", path=str(summary_path))
    entries = summary.get("rounds") or []
    if not isinstance(entries, list):
        raise InputError("summary.json: 'rounds' must be a list", path=str(summary_path))
    records = {}
    for i, entry in enumerate(entries):
        rec = _validate(RoundRecord, entry, summary_path, f"summary.json rounds[{i}]")
        records[rec.round] = rec
    order = tuple(s.name for s in record.models.annotators)
    numbers = sorted(set(rundir.round_numbers(directory)) | set(records))
    rounds = tuple(_load_round(directory, t, records.get(t), order, record.context) for t in numbers)
    guideline = _read_text(directory / rundir.GUIDELINE_MD, "guideline.md")
    return RunData(directory, record, summary, order, rounds, guideline)


def load_bench(directory: Path) -> BenchData:
    """A `diziner bench` directory (metrics.json, table.md, and the loop's run in run/) as a `BenchData`."""
    path = directory / METRICS_FILE
    metrics = _validate(BenchMetrics, rundir.read_json(path, "metrics.json"), path, "metrics.json")
    run_dir = directory / BENCH_RUN
    run = load_run(run_dir) if rundir.is_run_dir(run_dir) else None
    return BenchData(directory, metrics, _read_text(directory / BENCH_TABLE, "table.md"), run)


def load(directory: Path) -> RunData | BenchData:
    """Detect the kind of directory (bench: metrics.json; run: run.json) and load it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory", path=str(directory))
    if (directory / METRICS_FILE).is_file():
        return load_bench(directory)
    if rundir.is_run_dir(directory):
        return load_run(directory)
    raise InputError(
        "neither a run directory (no run.json: made by `diziner refine`) nor a bench directory "
        "(no metrics.json: made by `diziner bench`)",
        path=str(directory),
    )


# ---------------------------------------------------------------- small HTML pieces


def _num(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else esc(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return esc(x)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | frozenset[int] = frozenset(), cls: str = "") -> str:
    """A table; header cells are plain text (escaped here), body cells are HTML already."""
    th = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _json_pre(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, ensure_ascii=False, indent=2))}</pre>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# ---------------------------------------------------------------- sections


def _stop_bars(run: RunData) -> list[float | None]:
    """Per round, the stop rule's bar: the best earlier round's mean pairwise F1 + min_gain (None for round 1)."""
    bars: list[float | None] = []
    best: float | None = None
    for r in run.rounds:
        bars.append(None if best is None else best + run.record.context.min_gain)
        v = r.record.mean_pairwise_f1 if r.record else None
        if v is not None:
            best = v if best is None else max(best, v)
    return bars


def _selection(run: RunData) -> tuple[int, str] | None:
    sel = run.summary.get("selection")
    if isinstance(sel, dict) and isinstance(sel.get("round"), int) and isinstance(sel.get("annotator"), str):
        return sel["round"], sel["annotator"]
    return None


def _gold_by_annotator(bench: BenchData | None, rounds: list[int]) -> dict[str, list[float | None]] | None:
    if bench is None or bench.metrics.correlation is None or not bench.metrics.correlation.points:
        return None
    gold: dict[str, dict[int, float | None]] = {}
    for p in bench.metrics.correlation.points:
        gold.setdefault(p.annotator, {})[p.round] = p.pilot_f1
    return {a: [g.get(t) for t in rounds] for a, g in gold.items()}


def agreement_section(run: RunData | None, bench: BenchData | None) -> str:
    """Agreement per round (plot and table), the stop rule's bars, gold F1 and the scatter when labels exist."""
    out = []
    if run is None:
        out.append(_note("No run directory: no agreement per round."))
    else:
        rounds = [r.round for r in run.rounds]
        names = list(run.annotators)
        mean = [r.record.mean_pairwise_f1 if r.record else None for r in run.rounds]
        per = {n: [r.record.mean_agreement.get(n) if r.record else None for r in run.rounds] for n in names}
        bars = _stop_bars(run)
        gold = _gold_by_annotator(bench, rounds)
        sel = _selection(run)
        out.append(_img(plots.agreement_plot(rounds, mean, per, bars, sel, gold), "agreement per round"))
        ctx = run.record.context
        out.append(_note(
            f"A round is stale when its mean pairwise F1 does not beat the best earlier round by more than min_gain = "
            f"{ctx.min_gain:g} (the dashed bar); {ctx.patience} stale round(s) in a row stop the run. "
            + (f"Selected: round {sel[0]}, {name_html(sel[1])}." if sel else "No selection yet.")
        ))
        head = ["Round", "Mean pairwise F1", "Stop-rule bar", "Stale"] + names
        rows = []
        for r, m, b in zip(run.rounds, mean, bars, strict=True):
            stale = "—" if b is None or m is None else ("yes" if m <= b else "no")
            cells = [str(r.round), _num(m), _num(b), stale]
            for n in names:
                v = r.record.mean_agreement.get(n) if r.record else None
                star = " ★" if sel == (r.round, n) else ""
                cells.append(_num(v) + star)
            rows.append(cells)
        out.append(_table(head, rows, numeric=set(range(1, len(head))) - {3}))
        out.append(_note(f"Stop reason: {esc(run.summary.get('stop_reason') or 'none (the run has not stopped)')}."))
    corr = bench.metrics.correlation if bench else None
    if corr is not None and corr.points:
        pts = [(p.annotator, p.agreement, p.pilot_f1) for p in corr.points]
        title = f"Agreement vs gold F1: Pearson {_fmt(corr.pearson)}, Spearman {_fmt(corr.spearman)}"
        out.append(_img(plots.scatter_plot(pts, list(run.annotators) if run else [], title), "agreement vs gold F1", "plot small"))
        out.append(_note(f"Agreement against gold F1 on the pilot documents, one point per (round, annotator): Pearson "
                         f"{_fmt(corr.pearson)}, Spearman {_fmt(corr.spearman)} over {len(pts)} points."))
        rows = [[str(p.round), name_html(p.annotator), _num(p.agreement), _num(p.pilot_f1)] for p in corr.points]
        out.append(
            f"<details><summary>The {len(rows)} points</summary>"
            + _table(["Round", "Annotator", "Agreement", "Gold F1 (pilot)"], rows, numeric={0, 2, 3})
            + "</details>"
        )
    elif run is not None:
        out.append(_note("No gold labels in a run directory: gold F1 per round comes with <code>diziner bench</code>."))
    return _section("agreement", "Agreement per round", "\n".join(out))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def matrices_section(run: RunData | None) -> str:
    """Each round's pairwise agreement matrix (recomputed by the engine) and the annotators' weights and elite."""
    if run is None:
        return _section("matrices", "Pairwise agreement, weights and elite", _note("No run directory."))
    out = [_note(
        f"Recomputed from each round's annotations.jsonl by the disagreement engine (hotspot percentile "
        f"{run.record.context.percentile:g}). Cell (a, b): strict span F1 between a and b over the documents both "
        "annotated."
    ), '<div class="grid">']
    for r in run.rounds:
        if r.agreement is None:
            out.append(f'<div class="card"><h3>Round {r.round}</h3>{_note(esc(r.problem or "not analysed"))}</div>')
            continue
        names = r.agreement["models"]
        pf = r.agreement["pairwise_f1"]
        matrix = [[None if a == b else pf[a][b] for b in names] for a in names]
        out.append(
            f'<div class="card"><h3>Round {r.round}</h3>'
            + _img(plots.heatmap(names, matrix, f"Round {r.round}: mean {r.agreement['mean_pairwise_f1']:.3f}"),
                   f"pairwise agreement, round {r.round}", "plot heat")
            + "</div>"
        )
    out.append("</div>")
    rounds = [r for r in run.rounds if r.agreement is not None]
    if rounds:
        names = list(run.annotators) + sorted({n for r in rounds for n in r.agreement["weights"]} - set(run.annotators))
        rows = []
        for n in names:
            cells = [name_html(n)]
            for r in rounds:
                w = r.agreement["weights"].get(n)
                if w is None:
                    cells.append('<span class="muted">excluded</span>' if n in r.agreement["excluded"] else "—")
                    continue
                elite = n in r.agreement["elite"]
                badge = ' <span class="dz-elite">elite</span>' if elite else ""
                cells.append(f"{bar(w, '#0f766e' if elite else '#94a3b8', 5)} {w:.3f}{badge}")
            rows.append(cells)
        out.append("<h3>Weights and elite</h3>")
        out.append(_note("w<sub>k</sub> = max(0.1, mean agreement of k), normalised; the elite is the shortest "
                         "top-weight prefix holding half the weight."))
        out.append(_table(["Annotator"] + [f"Round {r.round}" for r in rounds], rows))
    return _section("matrices", "Pairwise agreement, weights and elite", "\n".join(out))


def hotspots_section(run: RunData | None) -> str:
    """Each round's hotspot report, rendered from build_report's data."""
    if run is None:
        return _section("hotspots", "Hotspots and error families", _note("No run directory."))
    out = [_note(
        "The consensus is the weighted vote of the annotators (a reference point, not ground truth). A hotspot is a "
        "run of tokens where they disagree most; its readings are the distinct ways annotators labelled it. Entities "
        "are boxed and typed; the hotspot is highlighted in the document."
    )]
    for i, r in enumerate(run.rounds):
        summary = f"Round {r.round}"
        if r.report is not None:
            n = r.report.n_hotspots
            summary += f" · {n} hotspot{'' if n == 1 else 's'} · mean pairwise F1 {r.report.mean_pairwise_f1:.4f}"
        body = render_html(r.report, documents=r.documents) if r.report is not None else _note(esc(r.problem or ""))
        is_open = " open" if i in (0, len(run.rounds) - 1) else ""  # the first and the last round
        out.append(f'<details class="round"{is_open}><summary><h3>{esc(summary)}</h3></summary>{body}</details>')
    return _section("hotspots", "Hotspots and error families", "\n".join(out))


def _instruction_lines(items: list[Instruction], depth: int = 0) -> list[str]:
    lines = []
    pad = "    " * depth
    for it in items:
        prio = "" if it.priority == "medium" else f"  [{it.priority}]"
        lines.append(f"{pad}{it.number}. {it.text}{prio}")
        for ex in it.examples:
            why = f" ({ex.explanation})" if ex.explanation else ""
            lines.append(f"{pad}    e.g. {ex.text} → {ex.correct_annotation}{why}")
        lines += _instruction_lines(it.sub_instructions, depth + 1)
    return lines


def diff_html(old: list[str], new: list[str], context: int = 2) -> str:
    """Lines removed and added between two texts (difflib), long unchanged runs folded to `context` lines a side."""
    if old == new:
        return _note("unchanged") if old else _note("none")
    rows = []
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    ops = sm.get_opcodes()
    for k, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            same = old[i1:i2]
            keep_head = context if k > 0 else 0
            keep_tail = context if k < len(ops) - 1 else 0
            if len(same) > keep_head + keep_tail + 1:
                rows += [("ctx", x) for x in same[:keep_head]]
                rows.append(("fold", f"… {len(same) - keep_head - keep_tail} unchanged lines …"))
                rows += [("ctx", x) for x in same[len(same) - keep_tail :]]
            else:
                rows += [("ctx", x) for x in same]
            continue
        rows += [("del", x) for x in old[i1:i2]]
        rows += [("add", x) for x in new[j1:j2]]
    sign = {"ctx": " ", "del": "−", "add": "+", "fold": " "}
    body = "".join(f'<div class="{c}"><span class="sign">{sign[c]}</span>{esc(x) or " "}</div>' for c, x in rows)
    return f'<div class="diff">{body}</div>'


def _phase_html(p: PhaseFile) -> str:
    """One supervisor phase: its status, failed answers, a refused goal, rejected items, the answer itself."""
    failed = p.failed
    if failed is None:
        status = '<span class="ok">answered</span>'
    elif isinstance(failed, str) and failed.startswith("skipped"):
        status = f'<span class="skip">{esc(failed)}</span>'
    elif isinstance(failed, dict):
        answered = [str(k) for k in p.output] if isinstance(p.output, dict) else []
        status = (f'<span class="ok">answered for {names_html(answered)}</span>; ' if answered else "") + (
            '<span class="bad">failed for ' + names_html([str(k) for k in failed]) + "</span>")
    else:
        status = f'<span class="bad">failed: {esc(failed)}</span>'
    out = [f'<div class="phase"><div class="phasehead"><b>Phase {p.phase}</b> <code>{esc(p.node)}</code> · {status}</div>']
    if isinstance(failed, dict):
        out.append("<ul>" + "".join(f"<li>{name_html(str(k))}: {esc(v)}</li>" for k, v in failed.items()) + "</ul>")
    if p.failed_answer:
        answers = p.failed_answer if isinstance(p.failed_answer, dict) else {"answer": p.failed_answer}
        for who, text in answers.items():
            out.append(f'<div class="failed-answer"><div class="label">unusable answer ({esc(who)})</div>'
                       f"<pre>{esc(text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=2))}</pre></div>")
    if p.goal_refused:
        out.append(f'<div class="refused"><b>Sharpened goal refused</b> (the goal in force was kept): {esc(p.goal_refused)}</div>')
    if p.rejected:
        items = p.rejected if isinstance(p.rejected, list) else [p.rejected]
        lis = "".join(
            f"<li>{esc(x) if isinstance(x, str) else '<code>' + esc(json.dumps(x, ensure_ascii=False)) + '</code>'}</li>"
            for x in items
        )
        out.append(f'<div class="refused"><b>Rejected by screening ({len(items)})</b><ul>{lis}</ul></div>')
    for key, value in p.extras().items():
        out.append(f'<div class="extra"><b>{esc(key)}</b>{_json_pre(value)}</div>')
    if p.output is not None:
        out.append(f"<details><summary>the answer</summary>{_json_pre(p.output)}</details>")
    out.append("</div>")
    return "".join(out)


def guideline_changes_section(run: RunData | None) -> str:
    """The supervisor's answers after each round and the diff of each round's guideline against the previous."""
    if run is None:
        return _section("guideline-changes", "The guideline as it changed", _note("No run directory."))
    out = []
    prev: RoundData | None = None
    for r in run.rounds:
        if prev is not None:
            out.append(f'<div class="change"><h3>Round {prev.round} → round {r.round}</h3>')
            out.append(_configuration_diff(prev, r, run.annotators))
            out.append("</div>")
        else:
            out.append(f'<div class="change"><h3>Round {r.round}: the guideline at the start</h3>')
            conf = next(iter(r.configurations.values()), None)
            if conf is None:
                out.append(_note("no configuration files"))
            else:
                lines = _instruction_lines(conf.common_instructions)
                out.append("<h4>Common instructions</h4>" + (diff_html(lines, lines) if not lines else _pre(lines)))
                own = [(n, c) for n, c in r.configurations.items() if c.annotator_instructions]
                for n, c in own:
                    out.append(f"<h4>Instructions for {name_html(n)}</h4>" + _pre(_instruction_lines(c.annotator_instructions)))
                out.append(f"<details><summary>The goal</summary><pre>{esc(conf.goal)}</pre></details>")
            out.append("</div>")
        if r.phases:
            out.append(f'<div class="supervisor"><h3>The supervisor after round {r.round}</h3>')
            out += [_phase_html(p) for p in r.phases]
            out.append("</div>")
        prev = r
    return _section("guideline-changes", "The guideline as it changed", "\n".join(out))


def _pre(lines: list[str]) -> str:
    return f'<pre class="plain">{esc(chr(10).join(lines))}</pre>'


def _configuration_diff(old: RoundData, new: RoundData, order: tuple[str, ...]) -> str:
    a = next(iter(old.configurations.values()), None)
    b = next(iter(new.configurations.values()), None)
    if a is None or b is None:
        return _note("no configuration files to compare")
    out = ["<h4>Common instructions</h4>", diff_html(_instruction_lines(a.common_instructions),
                                                      _instruction_lines(b.common_instructions))]
    names = [n for n in order if n in old.configurations or n in new.configurations]
    for n in names:
        la = _instruction_lines(old.configurations[n].annotator_instructions) if n in old.configurations else []
        lb = _instruction_lines(new.configurations[n].annotator_instructions) if n in new.configurations else []
        if la or lb:
            out.append(f"<h4>Instructions for {name_html(n)}</h4>" + diff_html(la, lb))
    if a.goal != b.goal:
        out.append("<h4>The goal was sharpened</h4>" + diff_html(a.goal.splitlines(), b.goal.splitlines()))
    else:
        out.append(_note("The goal did not change."))
    return "".join(out)


def _usage_columns(entries: list[dict[str, Any]]) -> list[str]:
    """The numeric keys of usage entries, in first-seen order, leaving out those that are zero everywhere."""
    cols: list[str] = []
    for e in entries:
        for k, v in e.items():
            if k not in cols and isinstance(v, int | float) and not isinstance(v, bool):
                cols.append(k)
    return [c for c in cols if any(e.get(c) for e in entries)]


def _usage_table(rows: list[tuple[list[str], dict[str, Any]]], lead: list[str]) -> str:
    cols = _usage_columns([e for _, e in rows])
    head = lead + [c.replace("_", " ") for c in cols]
    body = [cells + [_num(e.get(c), 3 if c in ("seconds", "cost_usd") else 4) for c in cols] for cells, e in rows]
    return _table(head, body, numeric=set(range(len(lead), len(head))))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _label(key: str) -> str:
    return {"cost_usd": "cost (USD)", "cached_input_tokens": "input tokens from the provider's prompt cache"}.get(
        key, key.replace("_", " "))


def _cost(value: Any, priced: bool | None) -> str:
    return '<span class="muted">no price</span>' if priced is False else _num(value, 4)


def _usage_totals(usage: dict[str, Any]) -> str:
    """summary.json's `usage`: totals beside what the call cache answered, then one row per model."""
    cache = usage.get("from_cache") if isinstance(usage.get("from_cache"), dict) else {}
    unpriced = [str(x) for x in usage.get("unpriced") or []] if isinstance(usage.get("unpriced"), list) else []
    keys = [k for k, v in usage.items() if _is_num(v)] + [k for k, v in cache.items() if _is_num(v) and k not in usage]
    by_model = usage.get("by_model")
    rows = []
    for k in keys:
        total = _num(usage.get(k))
        if k == "cost_usd" and unpriced and isinstance(by_model, dict) and set(by_model) <= set(unpriced):
            total = '<span class="muted">no price</span>'
        cached = _num(cache.get(k), 4) if k in cache else "—"
        rows.append([esc(_label(k)), total, cached])
    out = [_table(["", "sent (billed)", "answered by the call cache (not sent)"], rows, numeric={1, 2})]
    if unpriced:
        out.append(_note(f"No price is known for {names_html(unpriced)}: the cost counts the other models only."))
    if isinstance(by_model, dict) and by_model:
        entries = {m: v for m, v in by_model.items() if isinstance(v, dict)}
        cols = [c for c in _usage_columns(list(entries.values())) if c != "cost_usd"]
        cache_cols = _usage_columns([v["from_cache"] for v in entries.values() if isinstance(v.get("from_cache"), dict)])
        head = ["model"] + [_label(c) for c in cols] + ["cost (USD)"] + [f"cache: {_label(c)}" for c in cache_cols]
        body = []
        for m, v in entries.items():
            fc = v.get("from_cache") if isinstance(v.get("from_cache"), dict) else {}
            body.append([name_html(m)] + [_num(v.get(c)) for c in cols] + [_cost(v.get("cost_usd"), v.get("priced"))]
                        + [_num(fc.get(c), 4) for c in cache_cols])
        out.append("<h4>By model</h4>" + _table(head, body, numeric=set(range(1, len(head)))))
    known = {"by_model", "from_cache", "unpriced"}
    for key, value in usage.items():
        if key not in known and not _is_num(value):
            out.append(f"<h4>{esc(_label(key))}</h4>" + _json_pre(value))
    return "".join(out)


def usage_section(run: RunData | None, bench: BenchData | None) -> str:
    """Tokens, calls, cache hits, cost and time per round, model and node; the run's totals when recorded."""
    out = []
    usage = run.summary.get("usage") if run else None
    out.append("<h3>The run's totals</h3>")
    if isinstance(usage, dict):
        out.append(_usage_totals(usage))
    else:
        out.append(_note("Run totals (cost, provider cache, call cache): not recorded in this run's summary.json."))
    if bench is not None:
        facts = {"test documents": bench.metrics.test_documents, "model calls": bench.metrics.model_calls,
                 "cache hits": bench.metrics.cache_hits}
        out.append(_table(list(facts), [[_num(v) for v in facts.values()]], numeric={0, 1, 2}))
    if run is not None and run.rounds:
        rows = []
        for r in run.rounds:
            if r.record is None:
                continue
            for model, u in r.record.token_usage.items():
                rows.append(([str(r.round), name_html(model)], u.model_dump(mode="json")))
        out.append("<h3>Per round and model</h3>")
        out.append(_usage_table(rows, ["round", "model"]) if rows else _note("not recorded"))
        quality = [[str(r.round), name_html(name), _num(r.record.predicted_spans.get(name, 0)),
                     _num(r.record.invented.get(name, 0)), _num(r.record.dropped_types.get(name, 0)),
                     _num(r.record.failed.get(name, 0))]
                    for r in run.rounds if r.record is not None for name in run.annotators]
        if quality:
            out.append("<h3>Answers per round and annotator</h3>")
            out.append(_table(["round", "annotator", "spans", "invented (not in the text)", "types outside the schema",
                               "failed documents"], quality, numeric={2, 3, 4, 5}))
        rounds = [r.round for r in run.rounds if r.record is not None]
        nodes: list[str] = []
        for r in run.rounds:
            for n in r.record.seconds if r.record else {}:
                if n not in nodes:
                    nodes.append(n)
        if nodes:
            series = {n: [r.record.seconds.get(n, 0.0) for r in run.rounds if r.record is not None] for n in nodes}
            slowest = [max((u.seconds for m, u in r.record.token_usage.items() if m in run.annotators), default=0.0)
                       for r in run.rounds if r.record is not None]
            if "annotate" not in series and any(slowest):  # the annotators run in parallel: the slowest one
                series = {"annotate (slowest annotator)": slowest, **series}
                nodes = list(series)
            out.append("<h3>Time per round and node</h3>")
            out.append(_img(plots.stacked_bars(rounds, series, "seconds", "Wall time per node"), "seconds per node"))
            body = [[str(t)] + [_num(series[n][i], 2) for n in nodes] + [_num(sum(series[n][i] for n in nodes), 2)]
                    for i, t in enumerate(rounds)]
            out.append(_table(["round"] + nodes + ["total"], body, numeric=set(range(1, len(nodes) + 2))))
            out.append(_note("Wall time of each node; the annotators run in parallel, so annotation counts the "
                             "slowest annotator's seconds (the table above has each one's)."))
    return _section("usage", "Tokens, calls, cache, cost and time", "\n".join(o for o in out if o))


_INLINE_CODE = re.compile(r"`([^`]+)`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_NUMERIC_CELL = re.compile(r"[-+–]?[\d.,]+%?(?: \[[\d.,]+, [\d.,]+\])?|[–—-]")
_ITEM = re.compile(r"^(\s*)([-*]|\d+(?:\.\d+)*\.)\s+(.*)$")


def markdown_lines_html(text: str) -> str:
    """Markdown (guideline.md, table.md) as simple HTML: headings, list items, tables and plain lines; every text
    escaped, `code` kept as code."""

    def inline(s: str) -> str:
        return _INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", esc(s))

    blocks: list[list[Any]] = []  # [kind, text, indent, marker]
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                continue  # the header separator
            if blocks and blocks[-1][0] == "table":
                blocks[-1][1].append(cells)
            else:
                blocks.append(["table", [cells], 0, ""])
        elif m := _HEADING.match(line):
            blocks.append(["h", m.group(2), len(m.group(1)), ""])
        elif m := _ITEM.match(line):
            marker = "•" if m.group(2) in "-*" else m.group(2)
            blocks.append(["li", m.group(3), len(m.group(1).expandtabs(4)) // 2, marker])
        elif line.strip() and line[:1].isspace() and blocks and blocks[-1][0] == "li":
            blocks[-1][1] += " " + line.strip()  # a list item's wrapped continuation
        elif line.strip():
            blocks.append(["ln", line, 0, ""])
        else:
            blocks.append(["gap", "", 0, ""])
    out = []
    for kind, body, indent, marker in blocks:
        if kind == "h":
            level = min(indent + 2, 6)
            out.append(f"<h{level}>{inline(body)}</h{level}>")
        elif kind == "li":
            out.append(f'<div class="li" style="margin-left:{indent}rem"><span class="marker">{esc(marker)}</span>'
                       f"<span>{inline(body)}</span></div>")
        elif kind == "table":
            head, *rest = body
            th = "".join(f"<th>{inline(c)}</th>" for c in head)
            trs = "".join(
                "<tr>" + "".join(f"<td{' class=num' if _NUMERIC_CELL.fullmatch(c) else ''}>{inline(c)}</td>" for c in r)
                + "</tr>" for r in rest
            )
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "ln":
            out.append(f'<div class="ln">{inline(body)}</div>')
        else:
            out.append('<div class="gap"></div>')
    return '<div class="md">' + "\n".join(out) + "</div>"


def guideline_section(run: RunData | None) -> str:
    """The final (selected) guideline, as guideline.md has it."""
    if run is None or run.guideline_markdown is None:
        body = _note("No guideline.md yet: the run has not selected a configuration.")
    else:
        body = markdown_lines_html(run.guideline_markdown)
    return _section("guideline", "The final guideline", body)


def _with_ci(scores: Any, key: str, bold: bool = False) -> str:
    """`key` of a scores mapping (or model) with its `key_ci` interval when there is one."""
    get = scores.get if isinstance(scores, dict) else lambda k, d=None: getattr(scores, k, d)
    value, ci = get(key), get(f"{key}_ci")
    if not _is_num(value):
        return "—"
    text = f"<b>{value:.3f}</b>" if bold else f"{value:.3f}"
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_is_num(x) for x in ci):
        text += f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'
    return text


def metrics_section(bench: BenchData) -> str:
    """The bench's scores on the test sample: micro P/R/F1 with their intervals, per type on demand, table.md (the
    rows beside the paper's figures) and the bench's other facts."""
    m = bench.metrics
    rows = []
    for c in m.configurations:
        failed = (c.model_extra or {}).get("failed_documents")
        rows.append([esc(c.name), _num(c.round), name_html(c.annotator) if c.annotator else "—",
                     _with_ci(c.micro, "precision"), _with_ci(c.micro, "recall"), _with_ci(c.micro, "f1", bold=True),
                     _num(failed)])
    level = (m.model_extra or {}).get("level", 0.95)
    out = [_note(f"Strict span micro scores on {_num(m.test_documents)} test documents, with "
                 f"{100 * level if _is_num(level) else 95:g}% document-level bootstrap intervals in brackets.")]
    out.append(_table(["Configuration", "Round", "Annotator", "Precision", "Recall", "F1", "Failed documents"], rows,
                      numeric={1, 3, 4, 5, 6}))
    for c in m.configurations:
        typed = {t: v for t, v in c.per_type.items() if isinstance(v, dict)}
        if typed:
            trows = [[name_html(t), _with_ci(v, "precision"), _with_ci(v, "recall"), _with_ci(v, "f1", bold=True),
                      _num(v.get("tp")), _num(v.get("fp")), _num(v.get("fn"))] for t, v in typed.items()]
            who = ", ".join(x for x in (f"round {c.round}" if c.round is not None else "", c.annotator or "") if x)
            out.append(f"<details><summary>Per type: {esc(c.name)}{esc(f' ({who})' if who else '')}</summary>"
                       + _table(["Type", "Precision", "Recall", "F1", "TP", "FP", "FN"], trows, numeric={1, 2, 3, 4, 5, 6})
                       + "</details>")
    if bench.table:
        out.append('<div class="from-file">table.md: the rows beside the paper\'s figures</div>' + markdown_lines_html(bench.table))
    extra = dict(m.model_extra or {})
    notes = extra.pop("notes", None)
    if isinstance(notes, list) and notes:
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    facts = [[esc(k.replace("_", " ")), _num(v) if not isinstance(v, dict | list) else
              f"<code>{esc(json.dumps(v, ensure_ascii=False))}</code>"] for k, v in extra.items() if k != "level"]
    if facts:
        out.append("<details><summary>The bench's other figures (metrics.json)</summary>"
                   + _table(["", ""], facts) + "</details>")
    return _section("metrics", "Scores on the test sample", "\n".join(out))


# ---------------------------------------------------------------- the page


PAGE_STYLE = """
:root{--sans:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  --serif:Georgia,"Times New Roman",serif;--mono:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
*{box-sizing:border-box}
body{font-family:var(--sans);color:#1f2937;background:#f3f4f6;margin:0;line-height:1.5;font-size:15px}
header{background:#0f172a;color:#e2e8f0;padding:1.4rem 0 1rem}
header h1{margin:0 0 .3rem;font-size:1.55rem;font-weight:650;color:#fff}
header .sub{color:#94a3b8;font-size:.9rem}
header .facts{display:flex;flex-wrap:wrap;gap:.4rem 1.4rem;margin-top:.8rem;font-size:.85rem}
header .facts b{color:#fff;font-weight:600}
header code,header .dz-name{background:#1e293b;color:#e2e8f0}
nav{background:#fff;border-bottom:1px solid #e5e7eb;position:sticky;top:0;z-index:2}
nav a{display:inline-block;padding:.55rem .8rem;color:#334155;text-decoration:none;font-size:.88rem}
nav a:hover{color:#0f766e}
.wrap{max-width:1180px;margin:0 auto;padding:0 1.4rem}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;margin:1.2rem 0;padding:1.1rem 1.4rem 1.3rem}
h2{font-size:1.25rem;margin:.1rem 0 .7rem;color:#0f172a;border-bottom:2px solid #0f766e;display:inline-block;padding-bottom:.15rem}
h3{font-size:1.05rem;margin:1.1rem 0 .4rem;color:#0f172a}
h4{font-size:.92rem;margin:.9rem 0 .3rem;color:#334155}
table{border-collapse:collapse;margin:.5rem 0 .8rem;font-size:.88rem}
th{text-align:left;font-weight:600;color:#475569;border-bottom:2px solid #e2e8f0;padding:.35rem .6rem;white-space:nowrap}
td{border-bottom:1px solid #f1f5f9;padding:.3rem .6rem;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:hover{background:#f8fafc}
img.plot{max-width:100%;height:auto;display:block;margin:.4rem 0}
img.plot.small{max-width:560px}
img.plot.heat{max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.8rem}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:.3rem .7rem .5rem}
.card h3{margin:.4rem 0 .2rem}
.note{color:#64748b;font-size:.86rem;margin:.3rem 0 .6rem}
.muted{color:#94a3b8}
pre{background:#f8fafc;border:1px solid #e5e7eb;border-radius:6px;padding:.55rem .7rem;font-family:var(--mono);
  font-size:.8rem;white-space:pre-wrap;word-break:break-word;max-height:28rem;overflow:auto}
code{font-family:var(--mono);font-size:.85em;background:#f1f5f9;border-radius:3px;padding:0 .25em}
details>summary{cursor:pointer;color:#334155;font-size:.9rem;margin:.2rem 0}
details.round{border-top:1px solid #e5e7eb;padding:.2rem 0}
details.round>summary h3{display:inline;margin:0}
.diff{font-family:var(--mono);font-size:.8rem;border:1px solid #e5e7eb;border-radius:6px;overflow:hidden;margin:.3rem 0 .6rem}
.diff div{padding:.08rem .6rem;white-space:pre-wrap;word-break:break-word}
.diff .sign{display:inline-block;width:1.1rem;color:#94a3b8;user-select:none}
.diff .add{background:#dcfce7;color:#14532d}.diff .add .sign{color:#16a34a}
.diff .del{background:#fee2e2;color:#7f1d1d;text-decoration:line-through;text-decoration-color:#fca5a5}
.diff .del .sign{color:#dc2626}
.diff .fold{color:#94a3b8;background:#f8fafc;font-style:italic}
.change,.supervisor{border-left:3px solid #e2e8f0;padding-left:.9rem;margin:.6rem 0 1rem}
.supervisor{border-left-color:#c7d2fe}
.phase{margin:.45rem 0 .6rem}
.phasehead{font-size:.9rem}
.ok{color:#15803d;font-weight:600}.bad{color:#b91c1c;font-weight:600}.skip{color:#a16207;font-weight:600}
.failed-answer .label{font-size:.78rem;color:#b91c1c;margin-top:.3rem}
.failed-answer pre{border-color:#fecaca;background:#fef2f2}
.refused{background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:.4rem .7rem;margin:.35rem 0;font-size:.88rem}
.md{font-size:.92rem;max-width:62rem}
.md h3,.md h4,.md h5{margin:1rem 0 .3rem}
.md .ln{white-space:pre-wrap}
.md .li{display:flex;gap:.45rem}.md .li .marker{color:#64748b;flex:none}
.md .gap{height:.55rem}
.md table{margin:.4rem 0}
.ci{color:#64748b;font-size:.8em}
.from-file{margin:1.2rem 0 -.4rem;font-size:.75rem;color:#64748b;text-transform:uppercase;letter-spacing:.06em;border-top:1px solid #e5e7eb;padding-top:.6rem}
footer{color:#94a3b8;font-size:.8rem;padding:1rem 0 2rem}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _header(run: RunData | None, bench: BenchData | None) -> str:
    kind = "Bench report" if bench else "Run report"
    title = f"{kind}: {run.record.task_definition.name}" if run else kind
    facts: list[tuple[str, str]] = []
    if run is not None:
        ctx = run.record.context
        facts += [
            ("annotators", names_html(list(run.annotators))),
            ("supervisor", name_html(run.record.models.supervisor.name)),
            ("rounds", f"{len(run.rounds)} of at most {ctx.max_loops}"),
            ("pilot size", str(ctx.pilot_size)),
            ("status", esc(run.summary.get("status", "unknown"))),
        ]
        sel = _selection(run)
        if sel:
            facts.append(("selected", f"round {sel[0]}, {name_html(sel[1])}"))
    if bench is not None and bench.metrics.test_documents is not None:
        facts.append(("test documents", _num(bench.metrics.test_documents)))
    where = esc(str((bench or run).directory.name)) if (bench or run) else ""
    fact_html = "".join(f"<span>{esc(k)}: <b>{v}</b></span>" for k, v in facts)
    sub = "DiZiNER: zero-shot NER by pilot annotation, disagreement analysis and supervisor refinement"
    return (f'<header><div class="wrap"><h1>{esc(title)}</h1><div class="sub">{esc(sub)} · {where}</div>'
            f'<div class="facts">{fact_html}</div></div></header>')


def render_page(data: RunData | BenchData) -> str:
    """The whole report.html for a loaded run or bench directory."""
    bench = data if isinstance(data, BenchData) else None
    run = bench.run if bench else data
    assert run is None or isinstance(run, RunData)
    sections = []
    if bench is not None:
        sections.append(("metrics", "Scores", metrics_section(bench)))
    sections += [
        ("agreement", "Agreement", agreement_section(run, bench)),
        ("matrices", "Pairwise agreement", matrices_section(run)),
        ("hotspots", "Hotspots", hotspots_section(run)),
        ("guideline-changes", "Guideline changes", guideline_changes_section(run)),
        ("usage", "Usage", usage_section(run, bench)),
        ("guideline", "Final guideline", guideline_section(run)),
    ]
    nav = "".join(f'<a href="#{sid}">{esc(label)}</a>' for sid, label, _ in sections)
    title = f"DiZiNER report: {run.record.task_definition.name}" if run else "DiZiNER bench report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{esc(title)}</title>\n<style>{PAGE_STYLE}{HOTSPOT_STYLE}</style></head>\n<body>\n"
        + _header(run, bench)
        + f'\n<nav><div class="wrap">{nav}</div></nav>\n<main class="wrap">\n'
        + "\n".join(body for _, _, body in sections)
        + '\n</main>\n<footer><div class="wrap">Written by <code>diziner report</code> from the files of this '
        "directory; see docs/method.md for the method.</div></footer>\n</body></html>\n"
    )


def write_report(directory: Path) -> Path:
    """Write DIRECTORY/report.html for a run or bench directory and return its path (InputError on bad input)."""
    directory = Path(directory)
    data = load(directory)
    path = directory / REPORT_FILE
    rundir.write_text(path, render_page(data))
    return path
