"""Prompts kept inside a model's context window (docs/method.md): the annotator prompt loses the entity types'
examples before anything else and never its instructions; a supervisor prompt is rebuilt with fewer report
examples, level by level; a prompt that cannot fit is still sent, with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agents.annotator import fit_annotator_prompt
from agents.guideline import configuration_for
from agents.models import parse_model_spec
from agents.structured import fits_context
from agents.supervisor import fit
from state.graph_state import Guideline
from state.models import Instruction, InstructionExample, TaskDefinition

ROOT = Path(__file__).resolve().parents[1]
TASK = TaskDefinition.from_yaml(ROOT / "tasks" / "crossner_politics.yaml")
TEXT = "Barack Obama met Angela Merkel in Berlin ."
MAX_TOKENS = 8

COMMON = [
    Instruction(
        number="1",
        text="COMMON-RULE: tag party leaders as POLITICIAN",
        examples=[InstructionExample(text="leader Kohl", correct_annotation="[Kohl]POLITICIAN", explanation="WHY-1")],
        sub_instructions=[Instruction(number="1.1", text="SUB-RULE: keep titles outside")],
    ),
    Instruction(number="2", text="SECOND-RULE: countries are COUNTRY", priority="low"),
]
OWN = [Instruction(number="1", text="OWN-RULE: you over-tag PERSON")]
CONFIGURATION = configuration_for(TASK, Guideline(common=COMMON, per_annotator={"openai:tiny": OWN}), "openai:tiny")
KEPT = ["COMMON-RULE", "leader Kohl", "[Kohl]POLITICIAN", "WHY-1", "SUB-RULE", "SECOND-RULE", "OWN-RULE", TEXT]


def spec(window: int | None):
    return parse_model_spec("openai:tiny", context_window=window, max_tokens=MAX_TOKENS)


def type_examples() -> list[str]:
    """Every entity type's positive and negative examples that the rest of the prompt does not also mention."""
    others = TASK.final_task_goal + " ".join(t.definition for t in TASK.entity_types) + TEXT
    others += " ".join(i.text for i in COMMON + OWN)
    examples = [e for t in TASK.entity_types for e in [*t.positive_examples, *t.negative_examples]]
    return [e for e in examples if e not in others]


def smallest_window(prompt: str) -> int:
    """The smallest context window (tokens) into which `prompt` plus the output cap fits."""
    lo, hi = 1, 1 << 22
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_context(spec(mid), prompt) else (mid + 1, hi)
    return lo


@pytest.fixture(scope="module")
def prompts() -> dict[str, str]:
    full, trimmed = fit_annotator_prompt(spec(None), CONFIGURATION, TEXT, 2)
    assert not trimmed
    bare, trimmed = fit_annotator_prompt(spec(MAX_TOKENS + 1), CONFIGURATION, TEXT, 2)
    assert trimmed
    return {"full": full, "bare": bare}


# ---------------------------------------------------------------- the annotator prompt


def test_unknown_context_never_trims(prompts, caplog):
    with caplog.at_level(logging.WARNING):
        prompt, trimmed = fit_annotator_prompt(spec(None), CONFIGURATION, TEXT, 2)
    assert (prompt, trimmed) == (prompts["full"], False)
    assert all(e in prompt for e in type_examples())
    assert all(k in prompt for k in KEPT)
    assert caplog.records == []


def test_full_prompt_when_it_fits(prompts, caplog):
    window = smallest_window(prompts["full"])
    with caplog.at_level(logging.WARNING):
        assert fit_annotator_prompt(spec(window), CONFIGURATION, TEXT, 2) == (prompts["full"], False)
    assert caplog.records == []


def test_type_examples_dropped_first_and_instructions_kept(prompts, caplog):
    full, bare = prompts["full"], prompts["bare"]
    examples = type_examples()
    assert len(examples) >= 20  # the politics task carries many type examples
    assert len(bare) < len(full)
    # one token short of the full prompt, and enough for the prompt without type examples
    window = smallest_window(full) - 1
    assert window >= smallest_window(bare)
    with caplog.at_level(logging.WARNING):
        prompt, trimmed = fit_annotator_prompt(spec(window), CONFIGURATION, TEXT, 2)
    assert (prompt, trimmed) == (bare, True)
    assert not [e for e in examples if e in prompt]
    assert [k for k in KEPT if k not in prompt] == []  # every instruction, its example and the document stay
    assert all(t.name in prompt and t.definition.split(".")[0] in prompt for t in TASK.entity_types)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "type examples left out" in caplog.records[0].getMessage()


def test_prompt_that_cannot_fit_is_still_returned_with_a_warning(prompts, caplog):
    window = smallest_window(prompts["bare"]) - 1  # not even the trimmed prompt fits
    with caplog.at_level(logging.WARNING):
        prompt, trimmed = fit_annotator_prompt(spec(window), CONFIGURATION, TEXT, 2)
    assert (prompt, trimmed) == (prompts["bare"], True)
    assert [k for k in KEPT if k not in prompt] == []
    assert len(caplog.records) >= 1 and all(r.levelname == "WARNING" for r in caplog.records)
    assert "openai:tiny" in caplog.records[0].getMessage()


# ---------------------------------------------------------------- the supervisor prompt


INSTRUCTIONS = "PHASE INSTRUCTIONS: find the disagreement patterns; answer in the schema.\n"


class Report:
    """A supervisor prompt whose report shows `level` examples per error type; records the levels asked for."""

    def __init__(self) -> None:
        self.levels: list[int] = []

    def __call__(self, level: int) -> str:
        self.levels.append(level)
        examples = "".join(f"example {i}: 'Obama' LOC vs PER, a long quoted context line\n" for i in range(level))
        return INSTRUCTIONS + f"## Report ({level} examples per type)\n" + examples


def window_for(level: int) -> int:
    return smallest_window(Report()(level))


def test_supervisor_prompt_untouched_when_it_fits(caplog):
    build = Report()
    with caplog.at_level(logging.WARNING):
        assert fit(build, spec(None)) == Report()(10)
        assert fit(build, spec(window_for(10))) == Report()(10)
    assert build.levels == [10, 10]
    assert caplog.records == []


def test_supervisor_report_examples_cut_level_by_level(caplog):
    build = Report()
    window = window_for(2)  # 2 examples fit, 5 do not
    assert window < window_for(5)
    with caplog.at_level(logging.WARNING):
        prompt = fit(build, spec(window))
    assert build.levels == [10, 5, 2]
    assert prompt == Report()(2) and prompt.startswith(INSTRUCTIONS)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "cut to 5 per type" in messages[0] and "cut to 2 per type" in messages[1]
    # one example fits exactly: the levels go on to 1
    build = Report()
    assert fit(build, spec(window_for(1))) == Report()(1)
    assert build.levels == [10, 5, 2, 1]


def test_supervisor_prompt_that_cannot_fit_is_still_returned(caplog):
    build = Report()
    window = window_for(0) - 1  # not even the instructions alone fit
    with caplog.at_level(logging.WARNING):
        prompt = fit(build, spec(window))
    assert build.levels == [10, 5, 2, 1, 0]
    assert prompt == Report()(0) and prompt.startswith(INSTRUCTIONS)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    assert "still exceeds the context of openai:tiny" in messages[-1]


# ---------------------------------------------------------------- a whole run with a run file's context window


def test_refine_run_trims_only_the_annotator_with_a_small_context(tmp_path, scripted_models):
    """`diziner refine` with a run file giving openai:a a context the type examples do not fit: every prompt of a
    loses them and keeps round 2's instructions; b (no context window) keeps them."""
    from cli.main import main
    from tests.scripted import POLITICS_SENTENCES, document_of, responder, tag_words

    supervisor = {
        "Integration": {"goal": "", "common": [{"text": "RULE-ONE for everyone"}], "per_annotator": []},
        "Organization": {"common": [{"text": "RULE-ONE for everyone", "priority": "high"}],
                         "per_annotator": [{"annotator": "openai:a", "instructions": [{"text": "RULE-A only"}]}]},
    }
    models = scripted_models(
        lambda name: responder(lambda p: tag_words(document_of(p), "POLITICIAN", "LOCATION"), supervisor)
    )
    # a window between the longest pilot prompt without type examples (round 2 instructions included) and the
    # shortest one with them
    round2 = configuration_for(
        TASK, Guideline(common=[Instruction(number="1", text="RULE-ONE for everyone")],
                        per_annotator={"openai:a": [Instruction(number="1", text="RULE-A only")]}), "openai:a")
    longest = max(POLITICS_SENTENCES, key=len)
    shortest = min(POLITICS_SENTENCES, key=len)
    window = smallest_window(fit_annotator_prompt(spec(MAX_TOKENS + 1), round2, longest, 2)[0]) + 50
    assert window < smallest_window(fit_annotator_prompt(spec(None), configuration_for(TASK, Guideline(), "openai:a"),
                                                         shortest, 1)[0])
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        f"annotators:\n  - name: openai:a\n    context_window: {window}\n    max_tokens: {MAX_TOKENS}\n"
        "  - name: openai:b\n  - name: openai:c\nsupervisor:\n  name: openai:sup\n",
        encoding="utf-8",
    )
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"id": "d{i}", "text": "{t}"}}\n' for i, t in enumerate(POLITICS_SENTENCES)),
                    encoding="utf-8")
    out = tmp_path / "run"
    code = main(["refine", "--task", str(ROOT / "tasks" / "crossner_politics.yaml"), "--docs", str(pool),
                 "--out", str(out), "--config", str(run_file), "--max-loops", "2", "--pilot-size", "3",
                 "--min-gain", "0", "--patience", "5"])
    assert code == 0
    examples = [e for e in type_examples() if not any(e in t for t in POLITICS_SENTENCES)]
    assert len(examples) >= 20
    prompts_a, prompts_b = models.calls("openai:a", "Entities"), models.calls("openai:b", "Entities")
    assert len(prompts_a) == len(prompts_b) == 6  # two rounds of three pilot documents
    assert all(not [e for e in examples if e in p] for p in prompts_a)
    assert all(all(e in p for e in examples) for p in prompts_b)
    assert all("RULE-ONE for everyone" in p and "RULE-A only" in p for p in prompts_a[3:])
    assert all("RULE-ONE for everyone" in p and "RULE-A only" not in p for p in prompts_b[3:])
