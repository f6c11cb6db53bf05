"""`diziner report`: report.html of a real run directory (scripted models, three rounds) and of a bench directory,
rendered by headless Chromium; the HTML renderer of the hotspot report; escaping, determinism and bad input."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from disagreement.engine import AnnotationBatch, EngineParams, analyze
from disagreement.render_html import FAMILY_SHORT, render_html
from disagreement.report import build_report
from reporting.run_report import diff_html, markdown_lines_html, write_report
from tests.scripted import POLITICS_SENTENCES, ScriptedModels, document_of, responder

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tasks" / "crossner_politics.yaml"
ANNOTATORS = ["openai:a", "openai:b", "openai:c", "openai:d"]
SECTIONS = ("agreement", "matrices", "hotspots", "guideline-changes", "usage", "guideline")
HOSTILE = 'Obama wrote "<script>alert(1)</script>" & left France .'

# ---------------------------------------------------------------- a scripted run with something to show

LEXICON = {
    "Barack Obama": "POLITICIAN", "Angela Merkel": "POLITICIAN", "Nicolas Sarkozy": "POLITICIAN",
    "Boris Johnson": "POLITICIAN", "Helmut Kohl": "POLITICIAN", "Margaret Thatcher": "POLITICIAN",
    "Jacques Chirac": "POLITICIAN", "Tony Blair": "POLITICIAN", "Obama": "POLITICIAN",
    "Labour Party": "POLITICAL_PARTY", "UMP": "POLITICAL_PARTY", "Green Party of Canada": "POLITICAL_PARTY",
    "Conservative Party": "POLITICAL_PARTY", "1997 election": "ELECTION", "1979 election": "ELECTION",
    "2001 election": "ELECTION", "Berlin": "LOCATION", "Paris": "LOCATION", "Washington": "LOCATION",
    "London": "LOCATION", "Moscow": "LOCATION", "Brussels": "LOCATION", "France": "COUNTRY", "Germany": "COUNTRY",
    "Italy": "COUNTRY", "Senate": "ORGANISATION", "European Union": "ORGANISATION",
}
POOL = [
    *POLITICS_SENTENCES,
    "Margaret Thatcher led the Conservative Party in the 1979 election .",
    "Jacques Chirac visited Germany and Italy .",
    "The European Union met in Brussels .",
    "Tony Blair won the 2001 election for the Labour Party .",
]
# three rounds of four documents use the whole pool, so the hostile document is annotated (and `c` always types
# France as LOCATION, so it is in a hotspot)
HOSTILE_POOL = [*POOL[:-1], HOSTILE]

RULE_POLITICIAN = "Tag people in office as POLITICIAN, not PERSON."
RULE_PARTY = "Tag the full party name, including 'of Canada' when it is part of the name."
RULE_D = "Never mark an article such as 'The' on its own."
GOAL_NOTE = "SHARPENED: a party's full official name is one mention."
BAD_ANSWER = 'Sorry, I cannot answer in JSON. <b>Annotator c</b> fails on "Senate".'


def _entities(doc: str, keep: dict[str, str]) -> dict[str, Any]:
    """The longest lexicon phrases found in the document (a phrase inside a longer one is left out)."""
    found = [(p, t) for p, t in keep.items() if re.search(rf"(?<!\w){re.escape(p)}(?!\w)", doc)]
    found = [(p, t) for p, t in found if not any(p != q and p in q for q, _ in found)]
    return {"entities": [{"text": p, "type": t} for p, t in sorted(found, key=lambda x: doc.index(x[0]))]}


def annotator(name: str):
    """b follows the lexicon; c types countries as LOCATION and fails on 'Senate'; a types politicians as PERSON and
    cuts party names short until the guideline says otherwise; d marks surnames only, misses elections and marks a
    leading 'The' until its own instruction forbids it."""

    def annotate(prompt: str):
        doc = document_of(prompt)
        lex = dict(LEXICON)
        if name == "openai:c":
            if "Senate" in doc:
                return RuntimeError("scripted failure")
            lex = {p: ("LOCATION" if t == "COUNTRY" else t) for p, t in lex.items()}
        if name == "openai:a":
            if "people in office" not in prompt:
                lex = {p: ("PERSON" if t == "POLITICIAN" else t) for p, t in lex.items()}
            if "full party name" not in prompt:
                lex = {("Green Party" if p == "Green Party of Canada" else p): t for p, t in lex.items()}
        if name == "openai:d":
            lex = {(p.split()[-1] if t == "POLITICIAN" else p): t for p, t in lex.items() if t != "ELECTION"}
            if "never mark an article" not in prompt.lower() and doc.startswith("The "):
                lex["The"] = "MISC"
        return _entities(doc, lex)

    return annotate


def _draft(text: str, priority: str = "medium", examples: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"text": text, "priority": priority, "examples": examples or [], **extra}


def supervisor_answers(goal: str) -> dict[str, Any]:
    """The supervisor's scripted answers: phase 2 unusable for `c`, a sharpened goal refused after round 1 (it drops
    most of the goal) and accepted after round 2, the guideline growing by one common rule a round."""
    second = lambda prompt: "people in office" in prompt  # noqa: E731  (the guideline in force has round 1's rule)
    example = {"text": "Angela Merkel met Obama", "correct_annotation": "[Angela Merkel]POLITICIAN met [Obama]POLITICIAN",
               "explanation": "both hold office"}
    rule_1 = _draft(RULE_POLITICIAN, "high", [example])
    rule_2 = _draft(RULE_PARTY)
    own_d = {"annotator": "openai:d", "instructions": [_draft(RULE_D)]}

    def integration(prompt: str) -> dict[str, Any]:
        if second(prompt):
            return {"goal": goal.rstrip() + "\n" + GOAL_NOTE, "goal_changed": True, "common": [rule_1, rule_2],
                    "per_annotator": [own_d]}
        return {"goal": "Mark politicians.", "goal_changed": True, "common": [rule_1], "per_annotator": [own_d]}

    def organization(prompt: str) -> dict[str, Any]:
        if second(prompt):
            sub = _draft("A party named after a country keeps the country inside the span.")
            return {"common": [{**rule_1, "sub_instructions": []}, {**rule_2, "sub_instructions": [sub]}],
                    "per_annotator": [own_d], "retired": ["an older wording of the first rule"]}
        return {"common": [{**rule_1, "sub_instructions": []}], "per_annotator": [own_d], "retired": []}

    def diagnosis(prompt: str) -> Any:
        if "annotator: openai:c" in prompt:
            return BAD_ANSWER
        return {"tendencies": ["types office holders as PERSON"], "strengths": ["finds every place"],
                "deviation": "type confusion", "needs": [{"text": "Use POLITICIAN for office holders", "priority": "high"}]}

    return {
        "PatternAnalysis": {
            "summary": "Office holders are typed as PERSON by one annotator; party names are cut short.",
            "patterns": [{"name": "Politicians typed as PERSON", "root_cause": "PERSON read as the default for people",
                          "entity_types": ["POLITICIAN", "PERSON"], "covered_by_guideline": False,
                          "approaches": [{"approach": "POLITICIAN", "rationale": "they hold office",
                                          "annotators": ["openai:b", "openai:c"]}]}],
            "principles": [{"text": "Prefer the most specific type", "addresses": ["Politicians typed as PERSON"],
                            "priority": "high"}],
            "goal_questions": [],
        },
        "AnnotatorDiagnosis": diagnosis,
        "Integration": integration,
        "Organization": organization,
    }


def build_scripted_run(out: Path, pool: list[str] = POOL, rounds: int = 3) -> Path:
    """Run `diziner refine` in-process with the scripted annotators and supervisor above; returns the run directory."""
    goal = yaml.safe_load(TASK.read_text(encoding="utf-8"))["final_task_goal"]
    answers = supervisor_answers(goal)
    out.parent.mkdir(parents=True, exist_ok=True)
    docs = out.parent / f"{out.name}-pool.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(pool)), encoding="utf-8")
    import agents.models

    with pytest.MonkeyPatch.context() as mp:
        # a module-scoped fixture runs before conftest's per-test cache directory: use a call cache of its own
        mp.setenv("DIZINER_CACHE_DIR", str(out.parent / f"{out.name}-call-cache"))
        mp.setattr(agents.models, "chat_model", ScriptedModels(lambda name: responder(annotator(name), answers)))
        code = main(["refine", "--task", str(TASK), "--docs", str(docs), "--out", str(out),
                     "--annotators", ",".join(ANNOTATORS), "--supervisor", "openai:sup", "--max-loops", str(rounds),
                     "--pilot-size", "4", "--min-gain", "0", "--patience", "5", "--diagnose-all", "--overwrite"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished three-round run whose pool holds a document full of HTML (never rewritten by the tests)."""
    return build_scripted_run(tmp_path_factory.mktemp("report") / "run", HOSTILE_POOL)


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("report.html", "checkpoints.sqlite*"))
    return dest


def bench_metrics(run: Path) -> dict[str, Any]:
    """A metrics.json of the shape `diziner bench` writes, over the run's rounds and annotators."""
    summary = json.loads((run / "summary.json").read_text())
    sel = summary["selection"]
    points = [
        {"round": r["round"], "annotator": a, "agreement": v, "pilot_f1": round(0.2 + 0.7 * v, 4)}
        for r in summary["rounds"] for a, v in r["mean_agreement"].items()
    ]
    return {
        "configurations": [
            {"name": "selected", "round": sel["round"], "annotator": sel["annotator"],
             "micro": {"precision": 0.7143, "recall": 0.6389, "f1": 0.6751, "f1_ci": [0.5512, 0.7801]},
             "per_type": {"POLITICIAN": {"precision": 0.9, "recall": 0.8, "f1": 0.8471, "support": 10}},
             "predictions": "predictions/selected.jsonl"},
            {"name": "round 1, openai:a <initial>", "round": 1, "annotator": "openai:a",
             "micro": {"precision": 0.5, "recall": 0.4, "f1": 0.4444, "f1_ci": [0.3, 0.6]}, "per_type": {},
             "predictions": "predictions/r1-a.jsonl"},
        ],
        "correlation": {"pearson": 0.8731, "spearman": 0.8012, "points": points},
        "test_documents": 50,
        "model_calls": 123,
        "cache_hits": 7,
    }


@pytest.fixture(scope="module")
def bench_dir(run_dir, tmp_path_factory) -> Path:
    bench = tmp_path_factory.mktemp("bench") / "bench"
    bench.mkdir()
    copy_run(run_dir, bench / "run")
    (bench / "metrics.json").write_text(json.dumps(bench_metrics(run_dir)), encoding="utf-8")
    (bench / "table.md").write_text("| configuration | F1 |\n|---|---|\n| selected | 67.5 |\n", encoding="utf-8")
    (bench / "test-sample.jsonl").write_text(json.dumps({"id": "t1", "text": "Obama .", "entities": []}) + "\n")
    (bench / "predictions").mkdir()
    (bench / "predictions" / "selected.jsonl").write_text("")
    return bench


# ---------------------------------------------------------------- reading the page


class Sections(HTMLParser):
    """The text of each <section id=...>, and every <img> src, of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.scripts = 0
        self._stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._stack.append(a.get("id"))
            self.text.setdefault(a.get("id") or "", [])
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1]:
            self.text[self._stack[-1]].append(data)

    def section(self, sid: str) -> str:
        return " ".join(" ".join(self.text[sid]).split())


def parse(html_text: str) -> Sections:
    p = Sections()
    p.feed(html_text)
    return p


def chromium_dom(page: Path) -> tuple[str, list[str]]:
    """The DOM after load (--dump-dom) and the console messages Chromium logged while loading `page`."""
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: `make system-deps` installs it (Debian package chromium); `make test` runs that"
    with tempfile.TemporaryDirectory(prefix="diziner-chromium-") as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return proc.stdout, console


def test_chromium_console_check_catches_errors(tmp_path):
    """The console check used below sees a script error and a blocked network load (so its silence means something)."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="img-src data:">'
                    '</head><body><script>undefinedFunction()</script><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, console = chromium_dom(page)
    assert any("undefinedFunction" in ln for ln in console), console
    assert any("127.0.0.1:9" in ln for ln in console), console


def _check_page(page: Path, sections: tuple[str, ...]) -> Sections:
    dom, console = chromium_dom(page)
    assert console == [], console
    parsed = parse(dom)
    for sid in sections:
        assert sid in parsed.text, f"section {sid} missing"
        heading_only = len(parsed.section(sid).split()) < 12
        assert not heading_only, f"section {sid} is empty: {parsed.section(sid)!r}"
    assert parsed.scripts == 0
    assert parsed.images, "no plots"
    for src in parsed.images:  # every plot is an inline SVG that parses
        assert src.startswith("data:image/svg+xml;base64,"), src[:60]
        root = ET.fromstring(base64.b64decode(src.split(",", 1)[1]))
        assert root.tag.endswith("svg")
    raw = page.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", raw), "the page refers to the network"
    return parsed


def test_run_report_in_chromium(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    parsed = _check_page(page, SECTIONS)
    assert "metrics" not in parsed.text
    summary = json.loads((run_dir / "summary.json").read_text())
    agreement = parsed.section("agreement")
    for r in summary["rounds"]:  # the summary's agreement per round is in the table
        assert f"{r['mean_pairwise_f1']:.4f}" in agreement
    assert "No gold labels" in agreement
    hotspots = parsed.section("hotspots")
    for r in summary["rounds"]:  # recomputed by the engine: the hotspot counts the run recorded
        n = r["hotspots"]
        assert f"Round {r['round']} · {n} hotspot{'' if n == 1 else 's'} · mean pairwise F1 {r['mean_pairwise_f1']:.4f}" in hotspots
    assert "POLITICIAN → PERSON" in hotspots and "COUNTRY → LOCATION" in hotspots
    assert HOSTILE in hotspots  # the document text, shown as text
    usage = parsed.section("usage")
    totals = summary["usage"]  # recorded by refine: shown with its per-model rows
    assert "sent (billed) answered by the call cache" in usage and f"{totals['input_tokens']:,}" in usage
    assert "By model" in usage and "openai:sup" in usage and "no price" in usage
    assert "supervisor" in usage and "analyze_disagreement" in usage  # per round and model, per round and node
    assert "Answers per round and annotator" in usage and "invented (not in the text)" in usage
    assert "Annotation guideline: crossner_politics" in parsed.section("guideline")


def test_run_report_content(run_dir, tmp_path):
    """Matrices recomputed by the engine match summary.json; the guideline's changes, the goal, the supervisor's
    failed and refused answers are all on the page."""
    run = copy_run(run_dir, tmp_path / "run")
    page = write_report(run).read_text(encoding="utf-8")
    summary = json.loads((run / "summary.json").read_text())
    parsed = parse(page)
    matrices = parsed.section("matrices")
    for r in summary["rounds"]:
        assert f"Round {r['round']}" in matrices
        for name, w in r["weights"].items():
            assert f"{w:.3f}" in matrices, (name, w)
    assert matrices.count("elite") >= sum(len(r["elite"]) for r in summary["rounds"])

    changes = parsed.section("guideline-changes")
    assert "Round 1 → round 2" in changes and "Round 2 → round 3" in changes
    added = [html.unescape(x) for x in re.findall(r'<div class="add"><span class="sign">\+</span>([^<]*)</div>', page)]
    assert f"1. {RULE_POLITICIAN}  [high]" in added
    assert any(RULE_PARTY in x for x in added) and any(RULE_D in x for x in added)
    assert any("A party named after a country" in x for x in added)  # a sub-instruction
    assert GOAL_NOTE in added  # the sharpened goal (round 2 -> 3) ...
    assert "The goal was sharpened" in changes and changes.count("The goal did not change") == 1
    assert "Sharpened goal refused" in changes and "Mark politicians." in changes  # ... and the refused one
    assert re.search(r"answered for openai:a ?, openai:b ?, openai:d ?; failed for openai:c", changes)  # phase 2
    assert BAD_ANSWER in changes  # its unusable answer, as text
    assert "&lt;b&gt;Annotator c&lt;/b&gt;" in page
    assert "an older wording of the first rule" in changes  # phase 4's retired list, in its answer


def test_untrusted_text_is_escaped(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    page = write_report(run).read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>Annotator c</b>" not in page


def test_same_directory_same_bytes(run_dir, tmp_path):
    """Rewriting, and writing from a fresh process with another hash seed, gives identical bytes."""
    run = copy_run(run_dir, tmp_path / "run")
    first = write_report(run).read_bytes()
    (run / "report.html").unlink()
    assert write_report(run).read_bytes() == first
    (run / "report.html").unlink()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # this process's seed is random
    proc = subprocess.run([sys.executable, "-m", "cli.main", "report", str(run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (run / "report.html").read_bytes() == first


def test_usage_totals_priced_or_not_recorded(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    usage = summary["usage"]
    usage["cost_usd"] = 0.0421
    usage["from_cache"]["calls"] = 5
    usage["unpriced"] = ["openai:d"]
    usage["by_model"]["openai:sup"].update({"cost_usd": 0.0311, "priced": True})
    (run / "summary.json").write_text(json.dumps(summary))
    section = parse(write_report(run).read_text(encoding="utf-8")).section("usage")
    assert "cost (USD) 0.0421 0.0000" in section and "No price is known for openai:d " in section
    assert "calls {:,} 5".format(usage["calls"]) in section
    assert "openai:sup" in section and "0.0311" in section

    del summary["usage"]  # a run from before usage was recorded
    (run / "summary.json").write_text(json.dumps(summary))
    section = parse(write_report(run).read_text(encoding="utf-8")).section("usage")
    assert "not recorded" in section and "Per round and model" in section


def test_bench_report_in_chromium(bench_dir, capsys):
    assert main(["report", str(bench_dir)]) == 0
    capsys.readouterr()
    parsed = _check_page(bench_dir / "report.html", ("metrics", *SECTIONS))
    metrics = parsed.section("metrics")
    assert "0.675 [0.551, 0.780]" in metrics and "50 test documents" in metrics
    assert "selected 67.5" in metrics  # table.md's rows, as a table
    assert "round 1, openai:a <initial>" in metrics  # escaped in the page, text again in the DOM
    agreement = parsed.section("agreement")
    assert "Pearson 0.873" in agreement and "Spearman 0.801" in agreement
    assert "No gold labels" not in agreement
    assert "123" in parsed.section("usage")


def test_bad_directories_exit_2(tmp_path, run_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err

    run = copy_run(run_dir, tmp_path / "run")
    ann = run / "round-2" / "annotations.jsonl"
    lines = ann.read_text().splitlines()
    lines[1] = lines[1].replace('"start": ', '"start": -', 1)
    ann.write_text("\n".join(lines) + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{ann}:2:" in err and not (run / "report.html").exists()

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "metrics.json").write_text('{"configurations": [{"name": "x"}]}')
    assert main(["report", str(bench)]) == 2
    assert "metrics.json" in capsys.readouterr().err
    (bench / "metrics.json").write_text("{not json")
    assert main(["report", str(bench)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- the renderer and the page's pieces


def test_render_html_shows_every_example_and_reading():
    text = 'John <Smith> & "Co" visited New York City .'
    ny = text.index("New York City")
    major = [(0, 12, "PER"), (ny, ny + 13, "LOC")]
    minor = [(0, 12, "ORG"), (ny, ny + 8, "LOC")]  # a type confusion and a span error
    docs = [("d<1>", text, {"a": major, "b": major, "c": minor, "d": None}),  # d failed here, not everywhere
            ("d2", "Paris is nice", {x: [(0, 5, "LOC")] for x in "abcd"})]
    rep = build_report(analyze(AnnotationBatch.from_documents(docs), EngineParams(percentile=0.0)))
    out = render_html(rep, documents={"d<1>": text})
    n_examples = sum(len(e.examples) for e in rep.error_types)
    assert n_examples > 0 and out.count('class="dz-ex"') == n_examples
    assert "<Smith>" not in out and "&lt;Smith&gt;" in out and "d&lt;1&gt;" in out
    assert "&quot;Co&quot;" in out
    for e in rep.error_types:
        for ex in e.examples:
            # the hotspot highlighted in the document, every distinct reading with its holders
            assert f'<mark class="dz-hot">{_esc(text[ex.start:ex.end])}</mark>' in out
            assert len(ex.minority) >= 1
    assert out.count('<td class="dz-role">minority</td>') == sum(len(x.minority) for e in rep.error_types for x in e.examples)
    assert '<td class="dz-role">no output</td>' in out  # d failed on the document
    for fam, n in rep.family_counts:  # each family's bar row carries its count
        assert re.search(rf'{re.escape(FAMILY_SHORT[fam])}</td><td class="dz-barcell">[^\n]*?</td><td class="num">{n}</td>', out)
    assert dict(rep.family_counts)["A_to_B"] >= 1 and dict(rep.family_counts)["span"] >= 1


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def test_diff_html_marks_added_removed_and_folds():
    old = ["1. keep", "2. drop me", *[f"ctx {i}" for i in range(10)], "3. tail"]
    new = ["1. keep", "2. <new>", *[f"ctx {i}" for i in range(10)], "3. tail changed"]
    out = diff_html(old, new)
    assert '<div class="del"><span class="sign">−</span>2. drop me</div>' in out
    assert '<div class="add"><span class="sign">+</span>2. &lt;new&gt;</div>' in out
    assert "… 6 unchanged lines …" in out  # 10 unchanged lines between two changes, 2 of context each side
    assert "ctx 1</div>" in out and "ctx 2</div>" not in out and "ctx 8</div>" in out
    tail = diff_html(["a", *[f"x{i}" for i in range(9)]], ["b", *[f"x{i}" for i in range(9)]])
    assert "… 7 unchanged lines …" in tail  # at the end only the 2 lines after the change are kept
    assert "unchanged" in diff_html(["a"], ["a"]) and "none" in diff_html([], [])


def test_markdown_lines_html_escapes_and_structures():
    out = markdown_lines_html("# Title <x>\n\n- item `code` &\n  continued\n1. first\nplain <b>\n")
    assert "<h3>Title &lt;x&gt;</h3>" in out
    assert "item <code>code</code> &amp; continued" in out
    assert '<span class="marker">1.</span>' in out and "plain &lt;b&gt;" in out
