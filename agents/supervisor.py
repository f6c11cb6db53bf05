"""The supervisor's four phases (DIZINER.md section 12), each an LLM call with its own Pydantic output schema.

Phase 1 finds disagreement patterns, phase 2 diagnoses one annotator, phase 3 writes concrete instructions and
may sharpen the goal, phase 4 organises one numbered guideline. Caps are enforced afterwards in code
(`agents.guideline.enforce_caps`), not only asked for in prose.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field

from agents.annotator import CHARS_PER_TOKEN, usage_of
from agents.guideline import render_instructions, render_types
from agents.models import ModelSpec, structured_output_method
from prompts import render
from state.graph_state import Guideline, TokenUsage
from state.models import EntityType, Instruction, InstructionExample

log = logging.getLogger(__name__)
Priority = Literal["high", "medium", "low"]


# ---------------------------------------------------------------- phase output schemas


class Approach(BaseModel):
    approach: str
    rationale: str = ""
    annotators: list[str] = Field(default_factory=list, description="annotators that follow this approach")


class Pattern(BaseModel):
    name: str
    root_cause: str = ""
    entity_types: list[str] = Field(default_factory=list)
    covered_by_guideline: bool = False
    approaches: list[Approach] = Field(default_factory=list)


class Principle(BaseModel):
    text: str
    addresses: list[str] = Field(default_factory=list, description="pattern names")
    priority: Priority = "medium"


class PatternAnalysis(BaseModel):
    """Phase 1."""

    summary: str = ""
    patterns: list[Pattern] = Field(default_factory=list)
    principles: list[Principle] = Field(default_factory=list)
    goal_questions: list[str] = Field(default_factory=list)


class Need(BaseModel):
    text: str
    priority: Priority = "medium"


class AnnotatorDiagnosis(BaseModel):
    """Phase 2, one annotator."""

    tendencies: list[str] = Field(default_factory=list)
    strengths: list[str] = Field(default_factory=list)
    deviation: str = ""
    needs: list[Need] = Field(default_factory=list)


class DraftInstruction(BaseModel):
    text: str
    priority: Priority = "medium"
    examples: list[InstructionExample] = Field(default_factory=list)


class AnnotatorInstructions(BaseModel):
    annotator: str
    instructions: list[DraftInstruction] = Field(default_factory=list)


class Resolution(BaseModel):
    conflict: str
    chosen_approach: str
    rationale: str = ""


class Integration(BaseModel):
    """Phase 3."""

    goal: str = Field(default="", description="the goal of the annotation, sharpened where needed, else unchanged")
    goal_changed: bool = False
    resolutions: list[Resolution] = Field(default_factory=list)
    common: list[DraftInstruction] = Field(default_factory=list)
    per_annotator: list[AnnotatorInstructions] = Field(default_factory=list)


class OrganizedInstruction(DraftInstruction):
    sub_instructions: list[DraftInstruction] = Field(default_factory=list)


class Organization(BaseModel):
    """Phase 4."""

    common: list[OrganizedInstruction] = Field(default_factory=list)
    per_annotator: list[AnnotatorInstructions] = Field(default_factory=list)
    retired: list[str] = Field(default_factory=list, description="instructions in force that were dropped, and why")


# ---------------------------------------------------------------- prompts


def common_context(schema: list[EntityType], goal: str, guideline: Guideline | None, annotators: dict[str, str]) -> str:
    if guideline is None or not (guideline.common or guideline.per_annotator):
        in_force = "(none yet)"
    else:
        parts = [render_instructions(guideline.common) or "(no common instructions)"]
        for name in sorted(guideline.per_annotator):
            parts.append(f"For {name}:\n" + render_instructions(guideline.per_annotator[name]))
        in_force = "\n\n".join(parts)
    who = "\n".join(f"- {name}: {role}" for name, role in annotators.items())
    return render("supervisor_common", schema=render_types(schema), goal=goal.strip(), guideline=in_force, annotators=who)


def render_phase(template_name: str, **values: Any) -> str:
    return render(template_name, **values)


def as_json(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, ensure_ascii=False, indent=1)


def fit(build: Callable[[int], str], spec: ModelSpec, levels: tuple[int, ...] = (10, 5, 2, 1, 0)) -> str:
    """Render with fewer report examples until the prompt fits the model's context (never dropping instructions)."""
    prompt = build(levels[0])
    window = spec.context_window
    if window is None:
        return prompt
    budget = window - (spec.max_tokens or 0)
    for level in levels[1:]:
        if len(prompt) / CHARS_PER_TOKEN <= budget:
            return prompt
        log.warning("supervisor prompt exceeds the context of %s: report examples cut to %d per type", spec.name, level)
        prompt = build(level)
    if len(prompt) / CHARS_PER_TOKEN > budget:
        log.warning("supervisor prompt still exceeds the context of %s after trimming the report", spec.name)
    return prompt


class PhaseFailed(RuntimeError):
    """A supervisor call that gave no usable answer; the message says why."""


async def call_phase(
    model: BaseChatModel, spec: ModelSpec, schema: type[BaseModel], prompt: str, config: dict[str, Any] | None, attempts: int = 2
) -> tuple[BaseModel, TokenUsage]:
    """One structured supervisor call; raises PhaseFailed with the reason after `attempts` failures."""
    runnable = model.with_structured_output(schema, method=structured_output_method(spec), include_raw=True)
    usage = TokenUsage()
    reason = "no attempt made"
    for _ in range(attempts):
        try:
            result = await runnable.ainvoke([HumanMessage(content=prompt)], config=config)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            continue
        usage = usage.add(usage_of(result.get("raw")))
        if result.get("parsed") is not None:
            return result["parsed"], usage
        reason = f"unparseable answer: {result.get('parsing_error')}"[:500]
    raise PhaseFailed(f"after {attempts} attempts: {reason}")


def drafts_to_instructions(drafts: list[DraftInstruction] | list[OrganizedInstruction]) -> list[Instruction]:
    out = []
    for i, d in enumerate(drafts, 1):
        subs = [
            Instruction(number=f"{i}.{j}", text=s.text, priority=s.priority, examples=s.examples)
            for j, s in enumerate(getattr(d, "sub_instructions", []) or [], 1)
            if s.text.strip()
        ]
        if d.text.strip():
            out.append(Instruction(number=str(i), text=d.text, priority=d.priority, examples=d.examples, sub_instructions=subs))
    return out


def organization_to_guideline(org: Organization, goal: str) -> Guideline:
    per: dict[str, list[Instruction]] = {}
    for block in org.per_annotator:
        per.setdefault(block.annotator, []).extend(drafts_to_instructions(block.instructions))
    return Guideline(common=drafts_to_instructions(org.common), per_annotator=per, goal=goal)
