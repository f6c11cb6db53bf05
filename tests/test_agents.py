"""Agent building blocks: closed output schemas, the retry policy, the goal update (no model server needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from pydantic import BaseModel, ValidationError

from agents.annotator import annotate_document, entity_schema
from agents.models import DEFAULT_PROFILE, SMALL_PROFILE, parse_model_spec
from agents.structured import invoke_structured
from agents.supervisor import sharpened_goal
from state.models import Document, EntityType, TaskConfiguration
from state.phases import Integration, phase_schemas
from tests.scripted import ScriptedChatModel


def _objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [schema] if schema.get("type") == "object" else []
    for sub in schema.get("$defs", {}).values():
        found += _objects(sub)
    return found


def test_entity_schema_is_closed_and_requires_the_entity_list() -> None:
    model = entity_schema(("PER", "LOC"), 8)
    objects = _objects(model.model_json_schema())
    assert len(objects) == 2 and all(o["additionalProperties"] is False for o in objects)
    assert model.model_json_schema()["required"] == ["entities"]
    assert model.model_validate({"entities": []}).entities == []
    for bad in ({}, {"entities": [], "note": "x"}, {"entities": [{"text": "Ada", "type": "PER", "age": 3}]},
                {"entities": [{"text": "Ada", "type": "ORG"}]}, {"entities": [{"text": "a", "type": "PER"}] * 9}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


@pytest.mark.parametrize("profile", [SMALL_PROFILE, DEFAULT_PROFILE])
def test_phase_schemas_are_closed(profile) -> None:
    schemas = phase_schemas(profile.phase_items, profile.phase_chars, profile.phase_examples)
    for name in ("PatternAnalysis", "AnnotatorDiagnosis", "Integration", "Organization"):
        model: type[BaseModel] = getattr(schemas, name)
        objects = _objects(model.model_json_schema())
        assert objects and all(o.get("additionalProperties") is False for o in objects), name
        with pytest.raises(ValidationError):
            model.model_validate({"invented": 1})


def _doc() -> Document:
    return Document(id="d1", text="Ada Lovelace lived in London .")


def _configuration() -> TaskConfiguration:
    return TaskConfiguration(schema=[EntityType(name="PER", definition="a person"), EntityType(name="LOC", definition="a place")], goal="Find people and places.")


def _run(spec_name: str, answers: list[Any]) -> tuple[Any, ScriptedChatModel]:
    queue = list(answers)
    model = ScriptedChatModel(respond=lambda prompt, schema: queue.pop(0))
    out, usage = asyncio.run(annotate_document(model, parse_model_spec(spec_name), _configuration(), _doc(), 1))
    return out, model


def test_an_invalid_answer_gets_one_reask_quoting_the_error() -> None:
    out, model = _run("embedded:smollm2", [{}, {"entities": []}])
    assert out.status == "ok" and len(model.calls) == 2
    reask = model.calls[1][0]
    assert reask.startswith(model.calls[0][0]) and "entities" in reask.split(model.calls[0][0], 1)[1]  # the error quoted
    out, model = _run("openai:gpt-5-mini", [{}, {"entities": [{"text": "London", "type": "LOC"}]}])
    assert out.status == "ok" and len(model.calls) == 2
    assert [(s.start, s.end, s.type) for s in out.spans] == [(22, 28, "LOC")]
    out, model = _run("openai:gpt-5-mini", [{}, "not json"])
    assert out.status == "failed" and len(model.calls) == 2
    assert out.reason == "unusable answer: no JSON object in the answer: 'not json'"
    assert out.raw == "not json" and out.error_kind == "answer"  # the last answer is kept for the reader


def test_answers_in_think_blocks_fences_and_prose_are_read() -> None:
    reply = '<think>PER? yes.</think>\nSure:\n```json\n{"entities": [{"text": "Ada Lovelace", "type": "PER"}]}\n```\nDone.'
    out, model = _run("ollama:qwen3:14b", [reply])
    assert out.status == "ok" and len(model.calls) == 1 and [(s.start, s.end) for s in out.spans] == [(0, 12)]


def test_an_answer_cut_at_the_cap_is_not_asked_again_of_a_deterministic_model() -> None:
    cut = AIMessage(content='{"entities": [{"text": "Ada', response_metadata={"finish_reason": "length"})
    out, model = _run("embedded:smollm2", [cut, {"entities": []}])
    assert out.status == "failed" and len(model.calls) == 1 and out.reason.startswith("unusable answer: answer cut at")
    out, model = _run("openai:gpt-5-mini", [cut, {"entities": []}])  # a sampling model may finish next time
    assert out.status == "ok" and len(model.calls) == 2


def test_call_errors_are_retried_even_for_deterministic_models() -> None:
    out, model = _run("embedded:smollm2", [ConnectionError("server restarting"), {"entities": [{"text": "Ada Lovelace", "type": "PER"}]}])
    assert out.status == "ok" and len(model.calls) == 2 and [(s.start, s.end) for s in out.spans] == [(0, 12)]
    out, model = _run("embedded:smollm2", [ConnectionError("down"), ConnectionError("down"), ConnectionError("still down")])
    assert out.status == "failed" and out.reason == "after 3 attempts: ConnectionError: still down"
    assert out.error_kind == "transport" and len(model.calls) == 3  # 1 + max_retries (2)


def test_errors_that_cannot_heal_are_not_retried() -> None:
    class Refused(Exception):
        status_code = 401

    out, model = _run("openai:gpt-5-mini", [Refused("bad key"), {"entities": []}])
    assert out.status == "failed" and len(model.calls) == 1 and out.error_kind == "auth"


def test_invoke_structured_reports_usage_of_every_answer() -> None:
    queue: list[Any] = ["{", {"entities": []}]
    model = ScriptedChatModel(respond=lambda prompt, schema: queue.pop(0))
    answer = asyncio.run(invoke_structured(model, parse_model_spec("ollama:qwen3:14b"), entity_schema(("PER",)), "prompt"))
    assert answer.parsed is not None and answer.attempts == 2 and answer.usage.calls == 2 and answer.reason == ""


GOAL = "PURPOSE: mark people and places in news.\nDOWNSTREAM USE: search.\nPRINCIPLES: full names, no titles."


def test_sharpened_goal_is_adopted_only_when_changed_and_complete() -> None:
    longer = GOAL + "\nClarified: titles such as 'President' are left out of PER spans."
    assert sharpened_goal(GOAL, Integration(goal=longer, goal_changed=True)) == (longer, None)
    assert sharpened_goal(GOAL, Integration(goal=longer, goal_changed=False)) == (GOAL, None)  # not declared changed
    assert sharpened_goal(GOAL, Integration(goal="", goal_changed=True)) == (GOAL, None)
    assert sharpened_goal(GOAL, Integration()) == (GOAL, None)
    goal, refused = sharpened_goal(GOAL, Integration(goal="Your task", goal_changed=True))
    assert goal == GOAL and refused and "refused" in refused and "'Your task'" in refused


def test_entities_of_unknown_types_are_dropped_and_counted_without_a_reask() -> None:
    answer = {"entities": [{"text": "Ada Lovelace", "type": "PER"}, {"text": "London", "type": "CITY"},
                           {"text": "Babbage", "type": "PER"}]}
    out, model = _run("openai:gpt-5-mini", [answer])
    assert out.status == "ok" and len(model.calls) == 1
    assert out.dropped_types == 1 and out.not_found == 1  # CITY dropped; "Babbage" is not in the text (invented)
    assert [(s.start, s.end, s.type) for s in out.spans] == [(0, 12, "PER")]
