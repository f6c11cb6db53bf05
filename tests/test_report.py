"""The disagreement report: comparison, data and Markdown (disagreement/compare.py, report.py, render_markdown.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disagreement.compare import FAMILIES, ConsensusComparison
from disagreement.engine import AnnotationBatch, EngineParams, analyze
from disagreement.render_markdown import render_annotator_markdown, render_markdown
from disagreement.report import ReportParams, build_annotator_report, build_report

ALL_HOT = EngineParams(percentile=0.0)  # every token with any disagreement is hot


def annotator_error_report(result, annotator, params=None):
    """One annotator's report as the supervisor reads it (data, then Markdown)."""
    return render_annotator_markdown(build_annotator_report(result, annotator, params))

TEXT = "John Smith visited New York City yesterday ."
MAJ = [(0, 10, "PER"), (19, 32, "LOC")]  # [John Smith]PER [New York City]LOC
BAD = [(0, 10, "ORG"), (19, 27, "LOC"), (33, 42, "DATE")]  # type, boundary and O->T errors
MISS = [(19, 32, "LOC")]  # misses John Smith


def families_result():
    """a, b, c agree (the consensus); d and e share the same mistakes; f misses one entity."""
    docs = [
        ("d1", TEXT, {"a": MAJ, "b": MAJ, "c": MAJ, "d": BAD, "e": BAD, "f": MISS}),
        ("d2", "Paris is nice", {**{x: [(0, 5, "LOC")] for x in "abcf"}, "d": [], "e": []}),
    ]
    return analyze(AnnotationBatch.from_documents(docs), ALL_HOT)


def by_key(rep):
    return {e.key: e for e in rep.error_types}


def section(md: str, heading: str) -> str:
    """The text of one '### ' section (up to the next heading)."""
    start = md.index(heading + "\n")
    nxt = re.search(r"\n#{2,3} ", md[start + len(heading) :])
    return md[start : start + len(heading) + (nxt.start() if nxt else len(md))]


# ------------------------------------------------------------------------------------------------------
# error families, grouping of readings


def test_error_families_counts():
    rep = build_report(families_result())
    got = {k: (e.family, e.errors, e.hotspots, e.by_annotator) for k, e in by_key(rep).items()}
    assert got == {
        "O_to_DATE": ("O_to_T", 2, 1, (("d", 1), ("e", 1))),
        "LOC_to_O": ("T_to_O", 2, 1, (("d", 1), ("e", 1))),
        "PER_to_O": ("T_to_O", 1, 1, (("f", 1),)),
        "PER_to_ORG": ("A_to_B", 2, 1, (("d", 1), ("e", 1))),
        "span_LOC": ("span", 2, 1, (("d", 1), ("e", 1))),
    }
    assert rep.n_errors == 9
    assert rep.family_counts == (("O_to_T", 2), ("T_to_O", 3), ("A_to_B", 2), ("span", 2))
    assert rep.n_hotspots == 3 and rep.n_hotspots_without_errors == 0
    assert [(k.kind, k.count) for k in rep.hotspot_kinds] == [
        ("complex", 0),
        ("elite_split", 0),
        ("systematic_bias", 1),
        ("minor", 2),
    ]
    # order: by family, then by number of errors (LOC_to_O before PER_to_O)
    assert [e.key for e in rep.error_types] == ["O_to_DATE", "LOC_to_O", "PER_to_O", "PER_to_ORG", "span_LOC"]


def test_grouped_readings_and_context():
    rep = build_report(families_result())
    ex = by_key(rep)["PER_to_ORG"].examples
    assert len(ex) == 1
    ex = ex[0]
    assert (ex.doc_id, ex.token_start, ex.token_end, ex.kind) == ("d1", 0, 2, "systematic_bias")
    assert ex.consensus.text == "[John Smith]PER" and ex.consensus.annotators == ("a", "b", "c")
    assert [(m.text, m.annotators) for m in ex.minority] == [
        ("[John Smith]ORG", ("d", "e")),  # identical readings grouped, the most held first
        ("John Smith", ("f",)),
    ]
    assert ex.with_error == ("d", "e")
    md = render_markdown(rep)
    assert (
        "### PER → ORG: 2 errors in 1 hotspot\n\n"
        "**1.** document d1, tokens [0, 2), hotspot kind systematic_bias; this error made by d, e\n"
        "- text: **`John Smith`** `visited New York`\n"
        "- consensus: `[John Smith]PER` — held by a, b, c\n"
        "- minority: `[John Smith]ORG` — held by d, e\n"
        "- minority: `John Smith` (no entity) — held by f\n"
    ) in md


def test_reading_widened_to_whole_entities():
    """The hotspot is 'City yesterday'; the readings widen to the entities crossing it (New York City)."""
    md = render_markdown(build_report(families_result()))
    assert (
        "### LOC span: 2 errors in 1 hotspot\n\n"
        "**1.** document d1, tokens [5, 7), hotspot kind minor; this error made by d, e\n"
        "- text: `visited New York` **`City yesterday`** `.`\n"
        "- consensus: `[New York City]LOC yesterday` — held by a, b, c, f\n"
        "- minority: `[New York]LOC City [yesterday]DATE` — held by d, e\n"
    ) in md
    assert (
        "### LOC → O: 2 errors in 1 hotspot\n\n"
        "**1.** document d2, tokens [0, 1), hotspot kind minor; this error made by d, e\n"
        "- text: **`Paris`** `is nice`\n"
        "- consensus: `[Paris]LOC` — held by a, b, c, f\n"
        "- minority: `Paris` (no entity) — held by d, e\n"
    ) in md
    assert "## A → B: type confusion (the consensus says A, a minority says B)" in md


def test_header_and_tables():
    result = families_result()
    md = render_markdown(build_report(result))
    assert "| Documents | 2 |" in md
    assert "| Tokens (all / in scored documents) | 11 / 11 |" in md
    assert "| Hotspots | 3 |" in md
    assert "| Differences from the consensus inside hotspots | 9 |" in md
    # 0.21875 in exact arithmetic: the printed rounding follows the float the engine computed
    assert abs(result.weights[0] - 0.21875) < 1e-15
    assert f"| a | {result.weights[0]:.4f} | 0.5600 | yes | 0 | 0 |" in md
    assert "| d | 0.0781 | 0.2000 | no | 0 | 0 |" in md
    assert "| minor | neither; a scattered disagreement | 2 | 66.7% |" in md
    assert "| A_to_B | PER → ORG | 2 | 22.2% | 1 | d (1), e (1) |" in md
    assert "Elite annotators: a, b, c." in md


def test_failed_annotator_and_unscored_document():
    docs = [
        ("d1", "Paris is nice", {"a": [(0, 5, "LOC")], "b": [(0, 5, "LOC")], "c": [], "x": None}),
        ("d2", "Rome too", {"a": [(0, 4, "LOC")], "b": None, "c": None, "x": None}),  # unscored
    ]
    r = analyze(AnnotationBatch.from_documents(docs), ALL_HOT)
    rep = build_report(r)
    assert rep.excluded == ("x",)
    assert rep.n_scored_documents == 1 and rep.n_scored_tokens == 3
    assert [a.failed_documents for a in rep.annotators] == [0, 1, 1]
    assert {e.key: e.errors for e in rep.error_types} == {"LOC_to_O": 1}
    md = render_markdown(rep)
    assert "Excluded (failed on every document): x." in md
    rep2 = annotator_error_report(r, "c")
    assert "| Documents compared | 1 |" in rep2  # d2 is unscored, so not compared
    doc_b = AnnotationBatch.from_documents(
        [
            ("d1", "Paris is nice", {"a": [(0, 5, "LOC")], "b": [], "c": None}),
            ("d2", "Oslo", {"a": [], "b": [], "c": []}),
        ]
    )
    md = render_markdown(build_report(analyze(doc_b, ALL_HOT)))
    assert "- no output on this document: c" in md
    assert annotator_error_report(r, "x").startswith("# Error report for annotator x\n\nThis annotator failed on every")
    with pytest.raises(ValueError):
        annotator_error_report(r, "nobody")


# ------------------------------------------------------------------------------------------------------
# caps, the size bound, determinism


def many_result(n_docs=30, n_types=1):
    """In every document d alone marks `Acme` (O -> ORG); in some, a and b say MISC where c says LOC."""
    docs = []
    for i in range(n_docs):
        text = f"Acme rocks in Rome number {i} ."
        ann = {"a": [], "b": [], "c": [], "d": [(0, 4, "ORG")]}
        if n_types > 1 and i % 5 == 0:
            ann["a"] = ann["b"] = [(14, 18, "LOC")]
            ann["c"] = [(14, 18, "MISC")]
            ann["d"] = [(0, 4, "ORG"), (14, 18, "LOC")]
        docs.append((f"doc-{i:02d}", text, ann))
    return analyze(AnnotationBatch.from_documents(docs), ALL_HOT)


def test_examples_capped_and_sorted():
    rep = build_report(many_result(), ReportParams(max_examples_per_type=4))
    e = by_key(rep)["O_to_ORG"]
    assert (e.errors, e.hotspots, len(e.examples), e.omitted) == (30, 30, 4, 26)
    docs = [x.doc for x in e.examples]
    assert docs == sorted(docs) and len(set(docs)) == 4
    md = render_markdown(rep)
    assert "### O → ORG: 30 errors in 30 hotspots" in md
    assert "_… 26 more examples omitted._" in md
    assert md.count("this error made by d\n") == 4


def test_deterministic_and_seeded():
    a = render_markdown(build_report(many_result(), ReportParams(max_examples_per_type=4)))
    b = render_markdown(build_report(many_result(), ReportParams(max_examples_per_type=4)))
    assert a == b
    picks = {
        seed: tuple(x.doc for x in by_key(build_report(many_result(), ReportParams(4, seed=seed)))["O_to_ORG"].examples)
        for seed in range(5)
    }
    assert len(set(picks.values())) > 1  # the seed decides the sample
    r = many_result()
    assert annotator_error_report(r, "d", ReportParams(max_model_examples=2)) == annotator_error_report(
        r, "d", ReportParams(max_model_examples=2)
    )
    json.dumps(build_report(r).to_dict())  # plain data


def test_max_chars_drops_examples_from_largest_category_first():
    r = many_result(30, n_types=2)
    params = ReportParams(max_examples_per_type=6)
    rep = build_report(r, params)
    shown = {e.key: len(e.examples) for e in rep.error_types}
    assert shown == {"O_to_ORG": 6, "LOC_to_MISC": 6}
    full = render_markdown(rep)
    assert len(full) <= params.max_chars
    # LOC_to_MISC has 6 hotspots, O_to_ORG 30: on a tie in shown examples the larger category loses first
    cut = render_markdown(build_report(r, ReportParams(max_examples_per_type=6, max_chars=len(full) - 1)))
    assert len(cut) <= len(full) - 1
    assert section(cut, "### O → ORG: 30 errors in 30 hotspots").count("this error made by") == 5
    assert "_… 25 more examples omitted._" in cut
    assert section(cut, "### LOC → MISC: 6 errors in 6 hotspots").count("this error made by") == 6
    # a tight bound: examples go, statistics stay
    stats_only = render_markdown(build_report(r, ReportParams(max_examples_per_type=6, max_chars=2000)))
    assert "this error made by" not in stats_only
    assert "_… 30 more examples omitted._" in stats_only and "_… 6 more examples omitted._" in stats_only
    assert "| O_to_T | O → ORG | 30 |" in stats_only and "## Annotators" in stats_only
    assert len(stats_only) > 2000  # the statistics alone exceed this bound: they are kept whole
    for bound in (3000, 3500, 4000, 4500, 5000):
        md = render_markdown(build_report(r, ReportParams(max_examples_per_type=6, max_chars=bound)))
        assert len(md) <= bound
        assert len(md) > bound - 600  # drops no more than needed (one example is well under 600 chars)


# ------------------------------------------------------------------------------------------------------
# hostile document text


def _strip_code_spans(line: str) -> str:
    """The line with every CommonMark inline code span replaced by <CODE>."""
    out, i = [], 0
    while i < len(line):
        if line[i] != "`":
            out.append(line[i])
            i += 1
            continue
        j = i
        while j < len(line) and line[j] == "`":
            j += 1
        n, k, close = j - i, j, -1
        while k < len(line):
            if line[k] == "`":
                m = k
                while m < len(line) and line[m] == "`":
                    m += 1
                if m - k == n:
                    close = k
                    break
                k = m
            else:
                k += 1
        if close < 0:
            out.append(line[i:j])
            i = j
        else:
            out.append("<CODE>")
            i = close + n
    return "".join(out)


HOSTILE = "Evil ```python\n# Heading <script>alert(1)</script> | `x` Acme\n\n## Fake\n| a | b |"


def hostile_result():
    h = HOSTILE.index("# Heading")
    s_end = HOSTILE.index("</script>") + len("</script>")
    docs = [
        (
            "evil`|id\n# x",
            HOSTILE,
            {
                "a": [(HOSTILE.index("Acme"), HOSTILE.index("Acme") + 4, "ORG")],
                "b": [(HOSTILE.index("Acme"), HOSTILE.index("Acme") + 4, "ORG")],
                "<b>m|</b>": [(0, HOSTILE.index("python") + 6, "MISC"), (h, s_end, "MISC")],
            },
        )
    ]
    return analyze(AnnotationBatch.from_documents(docs), ALL_HOT)


def test_hostile_text_cannot_break_structure():
    r = hostile_result()
    rep = build_report(r)
    md = render_markdown(rep)
    outputs = [md, annotator_error_report(r, "<b>m|</b>"), annotator_error_report(r, "a")]
    assert "# Heading <script>alert(1)</script>" in md  # the text is quoted, not lost
    for text in outputs:
        for line in text.splitlines():
            assert not line.startswith(("```", "# Heading", "## Fake", "<")), line
            rest = _strip_code_spans(line)
            assert "<script" not in rest and "<b>" not in rest and "```" not in rest, line
        headings = [ln for ln in text.splitlines() if ln.startswith("#")]
        assert all(h.startswith(("# Disagreement report", "# Error report", "## ", "### ")) for h in headings)
        assert not any("Heading" in h or "Fake" in h for h in headings)
    # table rows keep their column count: pipes from names/ids are neutralised in cells
    ann_rows = [ln for ln in md.splitlines() if ln.startswith("| `<b>m")]
    assert len(ann_rows) == 1 and ann_rows[0].count("|") == 7
    rep2 = annotator_error_report(r, "<b>m|</b>")
    cat_rows = [ln for ln in rep2.splitlines() if ln.startswith("| O → MISC")]
    assert len(cat_rows) == 1 and cat_rows[0].count("|") == 7, cat_rows
    assert "evil`|id" not in md.replace("``evil`|id↵# x``", "")  # the id only appears as a code span
    assert "- text: " in md and "↵" in md


def test_code_span_fences():
    from disagreement.render_markdown import _code

    assert _code("a`b") == "``a`b``"
    assert _code("```x") == "```` ```x ````"
    assert _code("line\nbreak") == "`line↵break`"
    assert _code("a|b", table=True) == "`a¦b`"
    assert _code("") == "(empty)"


# ------------------------------------------------------------------------------------------------------
# per-annotator error reports (docs/method.md, "Annotator error reports"), counted by hand


def test_annotator_error_report_counts():
    r = families_result()
    d = annotator_error_report(r, "d")
    for row in [
        "| Documents compared | 2 |",
        "| Documents with at least one difference | 2 |",
        "| Tokens compared | 11 |",
        "| Tokens whose type (O or entity type) differs from the consensus | 5 |",  # John Smith City yesterday Paris
        "| Entities of this annotator / of the consensus | 3 / 3 |",
        "| Exact matches (same boundaries and type) | 0 |",
        "| Differences (entity level) | 4 |",
        "| O → DATE | O_to_T | 1 | 25.0% | 1 | d1 |",
        "| LOC → O | T_to_O | 1 | 25.0% | 1 | d2 |",
        "| PER → ORG | A_to_B | 1 | 25.0% | 1 | d1 |",
        "| LOC span | span | 1 | 25.0% | 1 | d1 |",
        "| DATE | 1 | `yesterday` (1) |",
    ]:
        assert row + "\n" in d, row
    assert (
        "### LOC span (1 of 1 shown)\n\n"
        "**1.** document d1, tokens [3, 6)\n"
        "- text: `John Smith visited` **`New York City`** `yesterday .`\n"
        "- consensus: `[New York City]LOC`\n"
        "- this annotator: `[New York]LOC City`\n"
    ) in d
    f = annotator_error_report(r, "f")
    assert "| Precision / recall / F1 against the consensus | 1.0000 / 0.6667 / 0.8000 |" in f
    assert "| PER → O | T_to_O | 1 | 100.0% | 1 | d1 |" in f
    assert "## O → T by type (entities this annotator marks where the consensus has none)\n\nNone." in f
    a = annotator_error_report(r, "a")
    assert "| Differences (entity level) | 0 |" in a and "No differences from the consensus." in a


def test_annotator_error_report_caps_and_strings():
    r = many_result(12)
    rep = annotator_error_report(r, "d", ReportParams(max_model_examples=3))
    assert "| O → ORG | O_to_T | 12 | 100.0% | 12 | doc-00, doc-01, doc-02, doc-03, doc-04 |" in rep
    assert "| ORG | 12 | `Acme` (12) |" in rep
    assert "### O → ORG (3 of 12 shown)" in rep
    assert rep.count("- this annotator: `[Acme]ORG`") == 3


# ------------------------------------------------------------------------------------------------------
# the vectorised comparison against a plain Python oracle


def _oracle_errors(r):
    """(annotator, family, ref, pred, start, end) by straightforward loops over documents."""
    fr_types = r.batch.types
    out = []
    tok = r.table
    for d in range(len(r.batch.doc_ids)):
        if not r.scored[d]:
            continue
        a0, a1 = int(tok.token_offset[d]), int(tok.token_offset[d + 1])
        cons, i = [], a0
        cl = r.consensus_labels
        while i < a1:
            if cl[i] > 0:
                j = i
                while j < a1 and cl[j] == cl[i]:
                    j += 1
                cons.append((i, j, int(cl[i]) - 1))
                i = j
            else:
                i += 1
        for k in range(len(r.models)):
            if not r.succeeded[d, k]:
                continue
            lab = [int(x) for x in r.labels[a0:a1, k]]
            ents, i = [], 0
            while i < len(lab):
                if lab[i] > 0:
                    t = (lab[i] - 1) // 2
                    j = i + 1
                    while j < len(lab) and lab[j] == 2 * t + 2:
                        j += 1
                    ents.append((a0 + i, a0 + j, t))
                    i = j
                else:
                    i += 1
            covered = set()
            for s, e, t in ents:
                hits = [c for c in cons if c[0] < e and s < c[1]]
                if not hits:
                    out.append((k, "O_to_T", "O", fr_types[t], s, e))
                for c in hits:
                    covered.add(c)
                    if c[2] != t:
                        out.append((k, "A_to_B", fr_types[c[2]], fr_types[t], min(s, c[0]), max(e, c[1])))
                    elif (c[0], c[1]) != (s, e):
                        out.append((k, "span", fr_types[t], fr_types[t], min(s, c[0]), max(e, c[1])))
            for c in cons:
                if c not in covered:
                    out.append((k, "T_to_O", fr_types[c[2]], "O", c[0], c[1]))
    return sorted(out)


span_st = st.tuples(st.integers(0, 7), st.integers(1, 3), st.sampled_from(["LOC", "ORG", "PER"]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.lists(span_st, max_size=4)), min_size=3, max_size=3),
        min_size=1,
        max_size=4,
    )
)
def test_vectorised_errors_match_oracle(doc_anns):
    text = "a bb c dd e ff g hh"
    starts = [m.start() for m in re.finditer(r"\w+", text)]
    ends = [m.end() for m in re.finditer(r"\w+", text)]
    docs = []
    for n, anns in enumerate(doc_anns):
        ann = {}
        for k, spans in enumerate(anns):
            ann[f"m{k}"] = (
                None if spans is None else [(starts[i], ends[min(7, i + w - 1)], t) for i, w, t in spans]
            )
        docs.append((f"d{n}", text, ann))
    batch = AnnotationBatch.from_documents(docs, annotators=["m0", "m1", "m2"])
    if batch.succeeded.any(axis=0).sum() < 2:
        return
    r = analyze(batch, ALL_HOT)
    fr = ConsensusComparison(r)
    got = []
    for k in range(len(r.models)):
        e = fr.errors(k)
        for i in range(e.k.size):
            label, fam, ref, pred = fr.decode(int(fr.key(e.take(np.array([i])))[0]))
            got.append((k, fam, ref, pred, int(e.s[i]), int(e.e[i])))
    assert sorted(got) == _oracle_errors(r)
    # the hotspot report keeps exactly the errors overlapping a hotspot
    hs = [
        (int(r.table.token_offset[h.doc]) + h.token_start, int(r.table.token_offset[h.doc]) + h.token_end)
        for h in r.hotspots
    ]
    inside = [g for g in got if any(a < g[5] and g[4] < b for a, b in hs)]
    rep = build_report(r)
    assert rep.n_errors == len(inside)
    assert sum(e.errors for e in rep.error_types) == len(inside)
    assert set(FAMILIES) >= {e.family for e in rep.error_types}
    md = render_markdown(rep)
    assert len(md) <= rep.params.max_chars


def test_no_hotspots_and_nothing_scored():
    same = AnnotationBatch.from_documents([("d1", "Paris is nice", {"a": [(0, 5, "LOC")], "b": [(0, 5, "LOC")]})])
    rep = build_report(analyze(same))
    assert (rep.n_hotspots, rep.n_errors, rep.error_types) == (0, 0, ())
    md = render_markdown(rep)
    assert md.count("No differences of this family inside hotspots.") == 4
    unscored = AnnotationBatch.from_documents(
        [("d1", "Paris", {"a": [(0, 5, "LOC")], "b": None}), ("d2", "Rome", {"a": None, "b": []})]
    )
    r = analyze(unscored)
    rep = build_report(r)
    assert rep.threshold is None and rep.n_scored_documents == 0
    assert "| Hotspot threshold τ (percentile 80 of the combined disagreement score) | n/a |" in render_markdown(rep)
    assert "| Documents compared | 0 |" in annotator_error_report(r, "a")
