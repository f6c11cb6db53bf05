"""Control flow of the graph with scripted chat models (issue 3, "Tests")."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from graph.builder import build_graph
from graph.context import DizinerContext
from graph.routing import select_configuration, stop_decision
from state.graph_state import RoundRecord
from state.models import TaskDefinition
from state.phases import SupervisorPhase
from tests.scripted import ScriptedModels, document_of

ROOT = Path(__file__).resolve().parents[1]
TASK = TaskDefinition.from_yaml(ROOT / "tasks" / "crossner_politics.yaml")
SENTENCES = [
    "Barack Obama met Angela Merkel in Berlin .",
    "The Labour Party won the election in Britain .",
    "Paris is the capital of France .",
    "Nicolas Sarkozy led the party in France .",
    "The Senate met in Washington with Joe Biden .",
    "Boris Johnson spoke in London about Brexit .",
    "The Green Party of Canada held a rally in Ottawa .",
    "Emmanuel Macron visited Rome and Madrid .",
    "Theresa May resigned after the vote .",
]
DOCS = [{"id": f"d{i}", "text": t} for i, t in enumerate(SENTENCES)]


TYPES = ["POLITICIAN", "LOCATION", "COUNTRY", "PERSON"]
CAPITALISED = r"\b[A-Z][a-z]+\b"


def is_shared(idx, level, peak=None):
    """Whether annotator `idx` reads with the shared type at `level`: from level idx on, or (with a `peak` round)
    only at that round's level, peak - 1."""
    return level >= idx if peak is None else level == peak - 1


def reading(idx, level, text, peak=None):
    """The scripted annotator's entities on one text: every capitalised word, typed POLITICIAN when it shares the
    reading, else the type its index and the word's position give (two annotators never agree on one then)."""
    shared = is_shared(idx, level, peak)
    return [(c, TYPES[0] if shared else TYPES[(idx + j) % 4]) for j, c in enumerate(re.findall(CAPITALISED, text))]


def expected_agreement(pilot_ids, levels, peak=None, skip=()):
    """(mean pairwise F1, {annotator: mean agreement}) of one round, computed from the script's rule.

    Every capitalised word occurs once per pilot sentence, so a span is (document, word position, type); two
    annotators agree on a word when they give it the same type. `skip`: annotators that failed everywhere."""
    texts = {d["id"]: d["text"] for d in DOCS}
    sets = {}
    for idx, name in enumerate(NAMES):
        if name in skip:
            continue
        sets[name] = set()
        for d in pilot_ids:
            words = re.findall(CAPITALISED, texts[d])
            assert len(set(words)) == len(words), texts[d]
            sets[name] |= {(d, j, t) for j, (_, t) in enumerate(reading(idx, levels[name], texts[d], peak))}
    names = list(sets)
    f1 = {(a, b): 2 * len(sets[a] & sets[b]) / (len(sets[a]) + len(sets[b])) for a in names for b in names if a != b}
    pairs = [f1[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
    mean = {a: sum(f1[a, b] for b in names if b != a) / (len(names) - 1) for a in names}
    return sum(pairs) / len(pairs), mean


class Script:
    """Annotators tag capitalised words; how much they agree is set by the 'LEVEL-k' instruction they receive.

    level 0: annotators disagree on types; each supervisor round raises the level by `step`, and at a level
    >= the annotator's index it switches to the shared reading, so agreement rises round by round. With `peak`
    set, every annotator shares the reading in that round only (level peak - 1), so agreement peaks there.
    """

    def __init__(self, names, step=1, fail=(), fail_docs=(), per_annotator=None, peak=None):
        self.names = names
        self.step = step
        self.peak = peak
        self.fail = set(fail)
        self.fail_docs = set(fail_docs)
        self.level = 0
        self.factory = ScriptedModels(lambda name: self.respond_for(name))
        self.per_annotator = per_annotator or {}
        self.supervisor_calls: list[str] = []

    def respond_for(self, name):
        def respond(prompt, schema):
            if schema == "Entities":
                doc = document_of(prompt)
                if name in self.fail or any(f in doc for f in self.fail_docs if name == self.names[-1]):
                    return RuntimeError(f"{name} is down")
                m = re.search(r"LEVEL-(\d+)", prompt)
                level = int(m.group(1)) if m else 0
                idx = self.names.index(name)
                return {"entities": [{"text": c, "type": t} for c, t in reading(idx, level, doc, self.peak)]}
            self.supervisor_calls.append(schema)
            if schema == "PatternAnalysis":
                return {"summary": "types differ", "patterns": [{"name": "type choice"}],
                        "principles": [{"text": "prefer POLITICIAN"}]}
            if schema == "AnnotatorDiagnosis":
                return {"tendencies": ["mixes types"], "needs": [{"text": "use POLITICIAN"}]}
            if schema == "Integration":
                self.level += self.step
                goal = f"{TASK.final_task_goal.strip()} Sharpened goal {self.level}."
                return {"goal": goal, "goal_changed": True, "common": [{"text": f"LEVEL-{self.level}"}]}
            if schema == "Organization":
                per = [
                    {"annotator": a, "instructions": [{"text": t} for t in ts]} for a, ts in self.per_annotator.items()
                ]
                return {
                    "common": [
                        {"text": f"LEVEL-{self.level}: tag names as POLITICIAN", "priority": "high"},
                        {"text": "minor rule", "priority": "low"},
                    ],
                    "per_annotator": per,
                }
            raise AssertionError(schema)

        return respond

    def prompts(self, name):
        return self.factory.calls(name, "Entities")


NAMES = ["openai:a", "openai:b", "openai:c"]


def picked(out):
    """(round, annotator, score) of the run's selection."""
    sel = out["selection"]
    return sel.round, sel.annotator, sel.mean_pairwise_f1


def run_graph(script: Script, **ctx):
    g = build_graph(script.factory).compile()
    context = DizinerContext(annotators=script.names, supervisor="openai:sup", pilot_size=3, **ctx)
    return asyncio.run(g.ainvoke({"task": TASK.model_dump(), "documents": DOCS}, context=context))


def test_stops_at_max_loops_with_rising_agreement():
    script = Script(NAMES)
    out = run_graph(script, max_loops=3, min_gain=0.0)
    assert [h.round for h in out["history"]] == [1, 2, 3]
    a = [h.mean_pairwise_f1 for h in out["history"]]
    assert a[0] < a[1] < a[2]
    # each round's agreement is the one the script's rule gives on that round's pilot (levels 0, 1, 2)
    for t, h in enumerate(out["history"]):
        mean, per = expected_agreement(h.pilot, {n: t for n in NAMES})
        assert h.mean_pairwise_f1 == pytest.approx(mean, abs=1e-12)
        assert h.mean_agreement == pytest.approx(per, abs=1e-12)
    assert a[2] == 1.0  # at level 2 every annotator shares the reading
    assert out["stop_reason"].startswith("max_loops reached")
    assert script.supervisor_calls.count("Organization") == 2  # max_loops - 1 supervisor rounds


def test_plateau_stops_after_patience_stale_rounds():
    # step 0: the level never rises, agreement stays flat -> round 2 is stale -> stop (patience 1)
    script = Script(NAMES, step=0)
    out = run_graph(script, max_loops=5, min_gain=0.01, patience=1)
    assert len(out["history"]) == 2
    assert out["stop_reason"].startswith("agreement plateau")
    assert script.supervisor_calls.count("Organization") == 1
    script = Script(NAMES, step=0)
    out = run_graph(script, max_loops=5, min_gain=0.01, patience=2)
    assert len(out["history"]) == 3
    # a gain smaller than min_gain is stale too: rising agreement with a huge min_gain stops after round 2
    out = run_graph(Script(NAMES), max_loops=5, min_gain=0.9, patience=1)
    assert len(out["history"]) == 2


def test_next_round_prompts_carry_phase4_instructions_and_goal():
    script = Script(NAMES)
    run_graph(script, max_loops=2)
    first, second = script.prompts("openai:a")[:3], script.prompts("openai:a")[3:]
    assert len(second) == 3
    assert not any("LEVEL-" in p for p in first)
    assert all("LEVEL-1: tag names as POLITICIAN" in p for p in second)
    assert all("Sharpened goal 1." in p for p in second)  # phase 3 sharpened the goal
    assert all("minor rule" in p for p in second)  # within the default cap of 3 it stays


def test_caps_are_enforced_in_code():
    script = Script(NAMES)
    out = run_graph(script, max_loops=2, max_common_instructions=1)
    second = script.prompts("openai:b")[3:]
    assert all("LEVEL-1" in p and "minor rule" not in p for p in second)  # the low-priority one was cut
    assert out["history"][0].guideline_change == 1.0  # from the empty guideline every word is new
    assert out["history"][1].guideline_change is None  # no supervisor after the last round


def test_per_annotator_instructions_reach_only_that_annotator():
    script = Script(NAMES, per_annotator={"openai:c": ["ONLY-FOR-C"], "openai:ghost": ["NOBODY"]})
    run_graph(script, max_loops=2, diagnose_all=True)
    assert all("ONLY-FOR-C" in p for p in script.prompts("openai:c")[3:])
    for name in ("openai:a", "openai:b"):
        assert not any("ONLY-FOR-C" in p for p in script.prompts(name))
    assert not any("NOBODY" in p for n in NAMES for p in script.prompts(n))


def test_failed_annotator_is_recorded_and_round_goes_on():
    script = Script(NAMES, fail={"openai:c"})
    out = run_graph(script, max_loops=2)
    first = out["history"][0]
    assert first.failed["openai:c"] == 3 and first.succeeded["openai:c"] == 0
    # a and b still measured, on their own
    mean, per = expected_agreement(first.pilot, {n: 0 for n in NAMES}, skip={"openai:c"})
    assert first.mean_pairwise_f1 == pytest.approx(mean, abs=1e-12)
    assert first.mean_agreement == pytest.approx(per, abs=1e-12)
    assert "openai:c" not in first.weights  # excluded: failed on every document
    assert sorted(first.weights) == ["openai:a", "openai:b"]
    # round 2 (level 1): a and b share the reading -> 1.0 each; the tie goes to the smaller name
    assert out["history"][1].mean_agreement == {"openai:a": 1.0, "openai:b": 1.0}
    assert picked(out) == (2, "openai:a", 1.0)


def test_partial_failure_counts_document_as_failed_not_empty():
    every = ("Obama", "Labour", "Paris", "Sarkozy", "Senate", "Boris", "Green", "Macron", "Theresa")
    script = Script(NAMES, fail_docs=every)
    out = run_graph(script, max_loops=1)
    assert out["history"][0].failed["openai:c"] == 3


def test_selection_label_free_and_exported():
    script = Script(NAMES)
    out = run_graph(script, max_loops=3)
    best = max((h.mean_agreement[k], h.round, k) for h in out["history"] for k in h.mean_agreement)
    assert (out["selection"].round, out["selection"].mean_pairwise_f1) == (best[1], best[0])
    # round 3: every annotator at 1.0; the product's tie-break (later round, then smaller name) gives openai:a
    assert out["history"][2].mean_agreement == {n: 1.0 for n in NAMES}
    assert picked(out) == (3, "openai:a", 1.0)
    assert out["selected_configuration"]["annotator"] == "openai:a"
    assert out["selected_configuration"]["round"] == 3
    assert "LEVEL-2: tag names as POLITICIAN" in out["guideline_markdown"]
    assert out["guideline_markdown"].startswith("# Annotation guideline")


def _instruction_texts(configuration):
    return [i["text"] for i in configuration["common_instructions"]] + [
        i["text"] for i in configuration["annotator_instructions"]
    ]


def test_selection_peaking_in_round_1_exports_round_1_configuration():
    # agreement 1.0 in round 1 (no instruction yet), 0 afterwards: the supervisor's rules made things worse
    script = Script(NAMES, peak=1)
    out = run_graph(script, max_loops=3, min_gain=0.0, patience=3)
    assert [h.mean_pairwise_f1 for h in out["history"]] == [1.0, 0.0, 0.0]
    assert out["stop_reason"] == "max_loops reached (3 rounds)"
    assert picked(out) == (1, "openai:a", 1.0)
    # the final round's prompts carried the supervisor's rules ...
    assert all("LEVEL-2: tag names as POLITICIAN" in p for p in script.prompts("openai:a")[6:])
    # ... the export is round 1's configuration: no instruction, the task's own goal
    config = out["selected_configuration"]
    assert (config["round"], config["annotator"]) == (1, "openai:a")
    assert _instruction_texts(config) == []
    assert config["goal"] == TASK.final_task_goal
    md = out["guideline_markdown"]
    assert "used in round 1," in md
    for later in ("LEVEL-", "minor rule", "Sharpened goal"):
        assert later not in md, later


def test_selection_peaking_in_round_2_exports_round_2_configuration():
    # agreement 0, 1.0, 0: the guideline written after round 1 is exported, not round 1's nor the last one
    script = Script(NAMES, peak=2)
    out = run_graph(script, max_loops=3, min_gain=0.0, patience=3)
    assert [h.mean_pairwise_f1 for h in out["history"]] == [0.0, 1.0, 0.0]
    assert picked(out) == (2, "openai:a", 1.0)
    config = out["selected_configuration"]
    assert (config["round"], config["annotator"]) == (2, "openai:a")
    assert _instruction_texts(config) == ["LEVEL-1: tag names as POLITICIAN", "minor rule"]
    assert config["goal"] == f"{TASK.final_task_goal.strip()} Sharpened goal 1."
    md = out["guideline_markdown"]
    assert "used in round 2," in md
    assert "1. LEVEL-1: tag names as POLITICIAN" in md and "Sharpened goal 1." in md
    assert "LEVEL-2" not in md and "Sharpened goal 2." not in md


def test_max_loops_hard_cap():
    with pytest.raises(ValidationError, match="at most 5"):
        DizinerContext(max_loops=6)


# ---------------------------------------------------------------- pure routing and selection


def rec(t, a, mean=None, succeeded=None, predicted=None):
    mean = mean or {}
    return RoundRecord(
        round=t, pilot=[], mean_pairwise_f1=a, mean_agreement=mean,
        succeeded=succeeded or {k: 1 for k in mean}, predicted_spans=predicted or {k: 1 for k in mean},
    )


def test_stop_decision_rules():
    assert stop_decision([rec(1, 0.5)], 5, 0.01, 1) is None  # round 1 never stops on a plateau
    assert stop_decision([rec(1, 0.5)], 1, 0.01, 1).startswith("max_loops")
    assert stop_decision([rec(1, 0.5), rec(2, 0.51)], 5, 0.01, 1).startswith("agreement plateau")  # 0.51 <= 0.5 + 0.01
    assert stop_decision([rec(1, 0.5), rec(2, 0.5101)], 5, 0.01, 1) is None
    hist = [rec(1, 0.5), rec(2, 0.6), rec(3, 0.55)]
    assert stop_decision(hist, 5, 0.01, 1) is not None
    assert stop_decision(hist, 5, 0.01, 2) is None  # only one stale round so far
    assert stop_decision([*hist, rec(4, 0.6)], 5, 0.01, 2) is not None  # 0.6 <= 0.6 + 0.01: two in a row
    assert stop_decision([*hist, rec(4, 0.7)], 5, 0.01, 2) is None  # a gain resets the count
    assert stop_decision([rec(1, None)], 5, 0.01, 1).startswith("round 1 could not be analysed")


def test_select_configuration_rules():
    h = [rec(1, 0.5, {"a": 0.7, "b": 0.6}), rec(2, 0.5, {"a": 0.7, "b": 0.65})]
    assert select_configuration(h) == (2, "a", 0.7)  # tie on score: the later round
    h = [rec(1, 0.5, {"b": 0.7, "a": 0.7})]
    assert select_configuration(h) == (1, "a", 0.7)  # then the name
    h = [rec(1, 0.5, {"a": 0.9, "b": 0.6}, predicted={"a": 0, "b": 3})]
    assert select_configuration(h) == (1, "b", 0.6)  # no predicted span: not eligible
    h = [rec(1, 0.5, {"a": 0.9, "b": 0.6}, succeeded={"a": 0, "b": 3})]
    assert select_configuration(h) == (1, "b", 0.6)
    assert select_configuration([]) is None


def test_failed_supervisor_phase_keeps_guideline_and_records_why():
    script = Script(NAMES)
    original = script.respond_for

    def respond_for(name):
        inner = original(name)

        def respond(prompt, schema):
            if schema == "Organization" and script.level >= 2:
                return RuntimeError("supervisor overloaded")
            return inner(prompt, schema)

        return respond

    script.respond_for = respond_for
    from langgraph.checkpoint.memory import InMemorySaver

    g = build_graph(script.factory).compile(checkpointer=InMemorySaver())
    ctx = DizinerContext(annotators=NAMES, supervisor="openai:sup", pilot_size=3, max_loops=3, min_gain=0.0, patience=3)
    cfg = {"configurable": {"thread_id": "t"}}
    out = asyncio.run(g.ainvoke({"task": TASK.model_dump(), "documents": DOCS}, cfg, context=ctx))
    records = g.get_state(cfg).values["supervisor"]
    assert records[0].failure(SupervisorPhase.ORGANIZATION) is None
    assert records[1].failure(SupervisorPhase.ORGANIZATION).reason == "after 3 attempts: RuntimeError: supervisor overloaded"
    third = script.prompts("openai:a")[6:]
    assert len(third) == 3 and all("LEVEL-1: tag names as POLITICIAN" in p for p in third)  # round 1's guideline kept
    assert out["history"][1].guideline_change == 0.0
