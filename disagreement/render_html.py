"""The report data as HTML (docs/method.md, "Disagreement report"): a second renderer of the same `ReportData`.

Formatting only, like `disagreement.render_markdown`: every figure, error type and example comes from
`disagreement.report.build_report`; nothing here counts, weighs or chooses. `render_html` returns a fragment (no
<html> or <head>) whose classes are styled by `STYLE`, so a page can hold several rounds' reports.

Document text, document ids, annotator and type names are untrusted: every one of them goes through
`html.escape` (quotes included) and is never used as a class name, id or URL. Entity types are coloured by their
position in `ReportData.types`, not by their name.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from disagreement.compare import FAMILIES
from disagreement.report import FAMILY_TITLES, KIND_NOTES, ErrorTypeSummary, Example, Reading, ReportData

# Colour slots for entity types (background, border), cycled by the type's index in ReportData.types.
TYPE_COLOURS = (
    ("#dbeafe", "#3b82f6"),
    ("#dcfce7", "#16a34a"),
    ("#fef3c7", "#d97706"),
    ("#fce7f3", "#db2777"),
    ("#ede9fe", "#7c3aed"),
    ("#cffafe", "#0891b2"),
    ("#ffedd5", "#ea580c"),
    ("#e0e7ff", "#4f46e5"),
    ("#ecfccb", "#65a30d"),
    ("#f1f5f9", "#475569"),
)

FAMILY_COLOURS = {"O_to_T": "#f59e0b", "T_to_O": "#ef4444", "A_to_B": "#8b5cf6", "span": "#0ea5e9"}
FAMILY_SHORT = {"O_to_T": "O → T", "T_to_O": "T → O", "A_to_B": "A → B", "span": "span"}

STYLE = (
    """
.dz-stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(138px,1fr));gap:.5rem;margin:.75rem 0}
.dz-stat{background:#f8fafc;border:1px solid #e2e8f0;border-radius:6px;padding:.45rem .6rem}
.dz-stat b{display:block;font-size:1.15rem;font-variant-numeric:tabular-nums;color:#0f172a}
.dz-stat span{font-size:.78rem;color:#64748b}
.dz-bar{display:inline-block;height:.7rem;border-radius:2px;vertical-align:middle;min-width:1px}
.dz-bars td.dz-barcell{min-width:9rem;white-space:nowrap}
.dz-bars td:first-child{white-space:nowrap}
.dz-exgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:.6rem;margin:.5rem 0 .8rem}
.dz-ex{border:1px solid #e2e8f0;border-radius:6px;padding:.5rem .75rem;background:#fff}
.dz-exhead{font-size:.8rem;color:#475569;margin-bottom:.35rem}
.dz-doc{font-family:var(--serif,Georgia,serif);font-size:1rem;line-height:1.9;background:#f8fafc;
  border-left:3px solid #cbd5e1;padding:.3rem .6rem;margin:.3rem 0 .5rem;white-space:pre-wrap;word-break:break-word}
.dz-hot{background:#fde68a;border-bottom:2px solid #d97706;padding:0 .1em;border-radius:2px}
.dz-readings{width:100%;border-collapse:collapse;font-size:.9rem}
.dz-readings td{padding:.3rem .4rem;border-top:1px solid #f1f5f9;vertical-align:top}
.dz-readings td.dz-role{width:6.5rem;color:#475569;font-size:.8rem;white-space:nowrap}
.dz-readings td.dz-who{width:34%;font-size:.8rem;color:#334155}
.dz-reading{line-height:2.1;white-space:pre-wrap;word-break:break-word}
.dz-ent{border:1px solid;border-radius:3px;padding:.05em .2em}
.dz-ent sub{font-size:.62rem;font-weight:600;letter-spacing:.02em;margin-left:.25em;vertical-align:baseline;
  font-family:var(--sans,system-ui,sans-serif)}
.dz-none{color:#94a3b8;font-style:italic}
.dz-name{font-family:var(--mono,ui-monospace,monospace);font-size:.85em;background:#f1f5f9;border-radius:3px;
  padding:0 .25em;white-space:nowrap}
.dz-elite{display:inline-block;font-size:.7rem;background:#0f766e;color:#fff;border-radius:3px;padding:0 .35em}
.dz-kind{display:inline-block;font-size:.72rem;background:#e2e8f0;border-radius:3px;padding:0 .35em}
.dz-fam{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;vertical-align:middle;margin-right:.3rem}
details.dz-type{border-top:1px solid #e2e8f0;padding:.35rem 0}
details.dz-type>summary{cursor:pointer;font-weight:600}
.dz-muted{color:#64748b;font-size:.85rem}
"""
    + "".join(f".dz-t{i}{{background:{bg};border-color:{fg}}}.dz-t{i} sub{{color:{fg}}}\n" for i, (bg, fg) in enumerate(TYPE_COLOURS))
)


def esc(value: object) -> str:
    """Any value as HTML text: `html.escape` with quotes, so it is safe in element content and attribute values."""
    return html.escape(str(value), quote=True)


def name_html(name: str) -> str:
    """A name (annotator, document id, type) as an escaped inline code-like span."""
    return f'<span class="dz-name">{esc(name)}</span>'


def names_html(names: Sequence[str]) -> str:
    return ", ".join(name_html(n) for n in names) if names else '<span class="dz-none">none</span>'


def pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def bar(fraction: float, colour: str = "#64748b", width_rem: float = 12.0) -> str:
    """A horizontal bar `fraction` (clamped to [0, 1]) of `width_rem` wide."""
    f = min(max(float(fraction), 0.0), 1.0)
    return f'<span class="dz-bar" style="width:{f * width_rem:.2f}rem;background:{colour}"></span>'


def _type_class(types: Sequence[str], etype: str) -> str:
    return f"dz-t{types.index(etype) % len(TYPE_COLOURS)}" if etype in types else f"dz-t{len(TYPE_COLOURS) - 1}"


def reading_html(reading: Reading, types: Sequence[str]) -> str:
    """A reading's region with each entity boxed in its type's colour and its type written after it."""
    if not reading.region and not reading.entities:
        return '<span class="dz-none">(empty)</span>'
    out, pos = [], 0
    region = reading.region
    for e in sorted(reading.entities, key=lambda x: (x.start, x.end)):
        a, b = e.start - reading.start, e.end - reading.start
        if a < pos or b > len(region):  # not inside the region (never the case for build_report's data)
            continue
        out.append(esc(region[pos:a]))
        out.append(f'<span class="dz-ent {_type_class(types, e.type)}">{esc(region[a:b])}<sub>{esc(e.type)}</sub></span>')
        pos = b
    out.append(esc(region[pos:]))
    text = "".join(out)
    if not reading.entities:
        text += ' <span class="dz-none">(no entity)</span>'
    return f'<span class="dz-reading">{text}</span>'


def _document_html(ex: Example, documents: Mapping[str, str] | None, context_chars: int) -> str:
    """The document around the hotspot with the hotspot highlighted (the full text when given, else the context)."""
    text = documents.get(ex.doc_id) if documents else None
    if text is not None and 0 <= ex.start <= ex.end <= len(text):
        a = max(0, ex.start - context_chars)
        b = min(len(text), ex.end + context_chars)
        left, focus, right = text[a : ex.start], text[ex.start : ex.end], text[ex.end : b]
        pre, post = ("…" if a > 0 else ""), ("…" if b < len(text) else "")
    else:
        left, focus, right, pre, post = ex.left + " ", ex.focus, " " + ex.right, "… ", " …"
    return (
        f'<div class="dz-doc">{esc(pre)}{esc(left)}<mark class="dz-hot">{esc(focus)}</mark>{esc(right)}{esc(post)}</div>'
    )


def example_html(
    n: int, ex: Example, types: Sequence[str], documents: Mapping[str, str] | None = None, context_chars: int = 240
) -> str:
    """One hotspot example: where it is, the document with the hotspot highlighted, every reading beside it."""
    head = (
        f"<b>{n}.</b> document {name_html(ex.doc_id)} · tokens [{ex.token_start}, {ex.token_end}) · "
        f'<span class="dz-kind" title="{esc(KIND_NOTES.get(ex.kind, ""))}">{esc(ex.kind)}</span> · '
        f"this error by {names_html(ex.with_error)}"
    )
    rows = [
        f'<tr><td class="dz-role">consensus</td><td>{reading_html(ex.consensus, types)}</td>'
        f'<td class="dz-who">{names_html(ex.consensus.annotators)}</td></tr>'
    ]
    rows += [
        f'<tr><td class="dz-role">minority</td><td>{reading_html(m, types)}</td>'
        f'<td class="dz-who">{names_html(m.annotators)}</td></tr>'
        for m in ex.minority
    ]
    if ex.failed:
        rows.append(
            f'<tr><td class="dz-role">no output</td><td colspan="2">{names_html(ex.failed)}</td></tr>'
        )
    return (
        f'<div class="dz-ex"><div class="dz-exhead">{head}</div>{_document_html(ex, documents, context_chars)}'
        f'<table class="dz-readings">{"".join(rows)}</table></div>'
    )


def error_label_html(family: str, ref: str, pred: str) -> str:
    if family == "span":
        return f"{name_html(ref)} span"
    return f"{name_html(ref)} → {name_html(pred)}"


def _stat(value: str, label: str) -> str:
    return f'<div class="dz-stat"><b>{value}</b><span>{esc(label)}</span></div>'


def families_html(report: ReportData) -> str:
    """The four error families as bars (counts of differences from the consensus inside hotspots)."""
    top = max((n for _, n in report.family_counts), default=0) or 1
    rows = [
        f'<tr><td><span class="dz-fam" style="background:{FAMILY_COLOURS[f]}"></span>{esc(FAMILY_SHORT[f])}</td>'
        f'<td class="dz-barcell">{bar(n / top, FAMILY_COLOURS[f])}</td><td class="num">{n}</td>'
        f'<td class="dz-muted">{esc(FAMILY_TITLES[f])}</td></tr>'
        for f, n in report.family_counts
    ]
    return (
        '<table class="dz-bars"><thead><tr><th>Family</th><th>Differences</th><th class="num">Count</th>'
        f'<th>Meaning</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _error_type_row(e: ErrorTypeSummary) -> str:
    by = ", ".join(f"{name_html(m)} ({n})" for m, n in e.by_annotator)
    return (
        f'<tr><td><span class="dz-fam" style="background:{FAMILY_COLOURS[e.family]}"></span>'
        f"{error_label_html(e.family, e.ref, e.pred)}</td><td class=\"num\">{e.errors}</td>"
        f'<td class="dz-barcell">{bar(e.share, FAMILY_COLOURS[e.family], 8)} {pct(e.share)}</td>'
        f'<td class="num">{e.hotspots}</td><td>{by}</td></tr>'
    )


def render_html(report: ReportData, *, documents: Mapping[str, str] | None = None, context_chars: int = 240) -> str:
    """The hotspot report as an HTML fragment: overview, annotators, hotspot kinds, error families as bars, error
    types, and each type's examples with the document text, the hotspot highlighted and every reading beside it.

    `documents` (document id -> full text) lets an example show up to `context_chars` characters of the document
    either side of the hotspot; without it, the example's own context tokens are shown.
    """
    thr = "n/a" if report.threshold is None else f"{report.threshold:.4f}"
    out = ['<div class="dz-stats">']
    out += [
        _stat(f"{report.mean_pairwise_f1:.4f}", "mean pairwise agreement (span F1)"),
        _stat(f"{report.n_hotspots}", "hotspots"),
        _stat(f"{report.n_errors}", "differences from the consensus inside hotspots"),
        _stat(f"{report.n_hotspots_without_errors}", "hotspots without an entity-level difference"),
        _stat(f"{report.n_scored_documents} / {report.n_documents}", "documents scored (≥ 2 annotators) / all"),
        _stat(f"{report.n_hot_tokens} / {report.n_scored_tokens}", "hot tokens / tokens in scored documents"),
        _stat(esc(thr), f"threshold τ (percentile {report.percentile:g} of the disagreement score)"),
    ]
    out.append("</div>")

    elite_badge = ' <span class="dz-elite">elite</span>'
    rows = [
        f"<tr><td>{name_html(a.name)}{elite_badge if a.elite else ''}</td>"
        f'<td class="num">{a.weight:.4f}</td><td class="dz-barcell">{bar(a.weight, "#0f766e" if a.elite else "#94a3b8", 8)}</td>'
        f'<td class="num">{a.mean_agreement:.4f}</td><td class="num">{a.failed_documents}</td>'
        f'<td class="num">{a.dropped_spans}</td></tr>'
        for a in report.annotators
    ]
    out.append(
        '<h4>Annotators</h4><table class="dz-bars"><thead><tr><th>Annotator</th><th class="num">Weight</th><th></th>'
        '<th class="num">Mean agreement</th><th class="num">Failed documents</th><th class="num">Dropped spans</th>'
        f'</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    if report.excluded:
        out.append(f'<p class="dz-muted">Excluded (failed on every document): {names_html(report.excluded)}.</p>')

    top_kind = max((k.count for k in report.hotspot_kinds), default=0) or 1
    kind_rows = [
        f'<tr><td><span class="dz-kind">{esc(k.kind)}</span></td><td class="dz-muted">{esc(KIND_NOTES[k.kind])}</td>'
        f'<td class="dz-barcell">{bar(k.count / top_kind, "#64748b", 8)}</td><td class="num">{k.count}</td>'
        f'<td class="num">{pct(k.share)}</td></tr>'
        for k in report.hotspot_kinds
    ]
    out.append(
        '<h4>Hotspots by kind</h4><table class="dz-bars"><thead><tr><th>Kind</th><th>Meaning</th><th></th>'
        f'<th class="num">Count</th><th class="num">Share</th></tr></thead><tbody>{"".join(kind_rows)}</tbody></table>'
    )

    out.append("<h4>Error families</h4>" + families_html(report))
    if report.error_types:
        out.append(
            '<h4>Error types</h4><table class="dz-bars"><thead><tr><th>Error type</th><th class="num">Errors</th>'
            '<th>Share</th><th class="num">Hotspots</th><th>By annotator</th></tr></thead><tbody>'
            + "".join(_error_type_row(e) for e in report.error_types)
            + "</tbody></table>"
        )
        out.append("<h4>Examples</h4>")
    for fam in FAMILIES:
        for e in (x for x in report.error_types if x.family == fam):
            more = f" · {e.omitted} more not shown" if e.omitted else ""
            examples = "".join(
                example_html(n, ex, report.types, documents, context_chars) for n, ex in enumerate(e.examples, 1)
            )
            out.append(
                f'<details class="dz-type" open><summary><span class="dz-fam" style="background:{FAMILY_COLOURS[fam]}">'
                f"</span>{error_label_html(e.family, e.ref, e.pred)}: {e.errors} error{'s' if e.errors != 1 else ''} "
                f"in {e.hotspots} hotspot{'s' if e.hotspots != 1 else ''}"
                f'<span class="dz-muted">{esc(more)}</span></summary><div class="dz-exgrid">{examples}</div></details>'
            )
    if not report.error_types:
        out.append('<p class="dz-muted">No differences from the consensus inside hotspots.</p>')
    return "\n".join(out)
