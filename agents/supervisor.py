"""The supervisor's four phases (docs/method.md#the-supervisor), each an LLM call with its own Pydantic output schema.

Phase 1 finds disagreement patterns, phase 2 diagnoses one annotator, phase 3 writes concrete instructions and
may sharpen the goal, phase 4 organises one numbered guideline. Caps are enforced afterwards in code
(`agents.guideline.enforce_caps`), not only asked for in prose.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from agents.cache import CallCache
from agents.guideline import render_instructions, render_types
from agents.models import ModelHandle, ModelSpec
from agents.models.errors import ModelUnavailable
from agents.structured import fits_context, invoke_structured
from prompts import render
from state.graph_state import Guideline, TokenUsage
from state.models import EntityType, Instruction, InstructionExample
from state.phases import Integration, PhaseSchemas, SupervisorPhase, phase_schemas

log = logging.getLogger(__name__)


def schema_for(spec: ModelSpec, phase: SupervisorPhase) -> type[BaseModel]:
    """The output schema of `phase` for this model."""
    return schemas_for(spec).of(phase)


def schemas_for(spec: ModelSpec) -> PhaseSchemas:
    """The phase schemas bounded as the model's profile says (tight for small models, generous otherwise)."""
    p = spec.profile
    return phase_schemas(p.phase_items, p.phase_chars, p.phase_examples)


# ---------------------------------------------------------------- prompts


def common_context(schema: list[EntityType], goal: str, guideline: Guideline | None, annotators: dict[str, str]) -> str:
    """The part every supervisor phase prompt shares: schema, goal, guideline in force, annotators' roles."""
    if guideline is None or not (guideline.common or guideline.per_annotator):
        in_force = "(none yet)"
    else:
        parts = [render_instructions(guideline.common) or "(no common instructions)"]
        for name in sorted(guideline.per_annotator):
            parts.append(f"For {name}:\n" + render_instructions(guideline.per_annotator[name]))
        in_force = "\n\n".join(parts)
    who = "\n".join(f"- {name}: {role}" for name, role in annotators.items())
    return render("supervisor_common", schema=render_types(schema), goal=goal.strip(), guideline=in_force, annotators=who)


def as_json(obj: Any) -> str:
    """A phase answer (or a mapping of them) as the indented JSON a later phase's prompt quotes."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, ensure_ascii=False, indent=1)


def fit(build: Callable[[int], str], spec: ModelSpec, levels: tuple[int, ...] = (10, 5, 2, 1, 0)) -> str:
    """Render with fewer report examples until the prompt fits the model's context (never dropping instructions)."""
    prompt = build(levels[0])
    for level in levels[1:]:
        if fits_context(spec, prompt):
            return prompt
        log.warning("supervisor prompt exceeds the context of %s: report examples cut to %d per type", spec.name, level)
        prompt = build(level)
    if not fits_context(spec, prompt):
        log.warning("supervisor prompt still exceeds the context of %s after trimming the report", spec.name)
    return prompt


class PhaseFailed(RuntimeError):
    """A supervisor call that gave no usable answer; the message says why. Keeps the last raw answer (for the
    reader) and the tokens the failed attempts used."""

    def __init__(self, reason: str, raw_text: str | None = None, usage: TokenUsage | None = None) -> None:
        super().__init__(reason)
        self.raw_text = raw_text
        self.usage = usage or TokenUsage()


async def call_phase(
    model: BaseChatModel | ModelHandle, spec: ModelSpec, schema: type[BaseModel], prompt: str,
    config: dict[str, Any] | None, cache: CallCache | None = None,
) -> tuple[BaseModel, TokenUsage]:
    """One structured supervisor call; PhaseFailed with the reason when no usable answer came, ModelUnavailable
    when the supervisor could not be reached at all (the run stops, resumable)."""
    answer = await invoke_structured(model, spec, schema, prompt, config=config, cache=cache)
    if answer.parsed is None:
        if answer.failure is not None and answer.failure.unreachable:
            raise ModelUnavailable(spec.name, answer.reason)
        raise PhaseFailed(answer.reason, answer.raw_text, answer.usage)
    return answer.parsed, answer.usage


MIN_GOAL_KEPT = 0.5
"""A sharpened goal rewrites sections where needed (docs/method.md#phase-3-instructions-and-goal); one shorter than half the goal in force has
dropped sections, and is refused."""


def sharpened_goal(current: str, integration: Integration) -> tuple[str, str | None]:
    """The goal for the next round from phase 3's output, and why a proposed goal was refused (or None)."""
    proposed = (integration.goal or "").strip()
    if not integration.goal_changed or not proposed or proposed == current.strip():
        return current, None
    if len(proposed) < MIN_GOAL_KEPT * len(current.strip()):
        return current, (
            f"sharpened goal refused: {len(proposed)} characters against {len(current.strip())} in force "
            f"(a rewrite keeps the goal's sections): {proposed[:120]!r}"
        )
    return proposed, None


def _examples(items: Any) -> list[InstructionExample]:
    return [InstructionExample.model_validate(e.model_dump()) for e in items or []]


def drafts_to_instructions(drafts: Any) -> list[Instruction]:
    """A phase answer's draft instructions as numbered guideline instructions (empty texts dropped)."""
    out = []
    for i, d in enumerate(drafts, 1):
        subs = [
            Instruction(number=f"{i}.{j}", text=s.text, priority=s.priority, examples=_examples(s.examples))
            for j, s in enumerate(getattr(d, "sub_instructions", []) or [], 1)
            if s.text.strip()
        ]
        if d.text.strip():
            out.append(Instruction(number=str(i), text=d.text, priority=d.priority, examples=_examples(d.examples), sub_instructions=subs))
    return out


def organization_to_guideline(org: Any, goal: str) -> Guideline:
    """Phase 4's answer as the guideline in force: numbered common and per-annotator instructions, and the goal."""
    per: dict[str, list[Instruction]] = {}
    for block in org.per_annotator:
        per.setdefault(block.annotator, []).extend(drafts_to_instructions(block.instructions))
    return Guideline(common=drafts_to_instructions(org.common), per_annotator=per, goal=goal)
