"""The supervisor's four phases (DIZINER.md section 12), each an LLM call with its own Pydantic output schema.

Phase 1 finds disagreement patterns, phase 2 diagnoses one annotator, phase 3 writes concrete instructions and
may sharpen the goal, phase 4 organises one numbered guideline. Caps are enforced afterwards in code
(`agents.guideline.enforce_caps`), not only asked for in prose.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Callable, Literal

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, create_model

from agents.guideline import render_instructions, render_types
from agents.models import ModelSpec
from agents.structured import fits_context, invoke_structured
from prompts import render
from state.graph_state import Guideline, TokenUsage
from state.models import EntityType, Instruction, InstructionExample

log = logging.getLogger(__name__)
Priority = Literal["high", "medium", "low"]


# ---------------------------------------------------------------- phase output schemas
#
# Every list and string is bounded. With grammar-constrained decoding (llama.cpp, Ollama) the bounds are what
# stops a small model that would otherwise repeat items until its token cap; real models get generous bounds.


@dataclass(frozen=True)
class PhaseSchemas:
    PatternAnalysis: type[BaseModel]
    AnnotatorDiagnosis: type[BaseModel]
    Integration: type[BaseModel]
    Organization: type[BaseModel]


GENEROUS = (12, 2000, 2)  # (items per list, characters per string, examples per instruction: 1-2, DIZINER.md 12.4)
COMPACT = (2, 60, 1)  # SmolLM2 fills every bound: the largest phase-4 answer must fit its 1024-token cap


@lru_cache(maxsize=8)
def phase_schemas(max_items: int, max_chars: int, max_examples: int) -> PhaseSchemas:
    """The four phases' output models with lists of at most `max_items` (`max_examples` for an instruction's
    examples) and strings of at most `max_chars`."""

    def text(default: str | None = None, description: str = "") -> Any:
        kind = Annotated[str, Field(max_length=max_chars, description=description)]
        return (kind, default) if default is not None else (kind, ...)

    def items(model: Any, description: str = "", at_most: int = max_items) -> Any:
        return (list[model], Field(default_factory=list, max_length=at_most, description=description))

    closed = ConfigDict(extra="forbid")  # additionalProperties: false, so a grammar admits no invented keys
    names = Annotated[str, Field(max_length=80)]
    prio = (Priority, "medium")

    def model(title: str, /, **fields: Any) -> type[BaseModel]:
        return create_model(title, __config__=closed, **fields)

    example = model("InstructionExample", text=text(), correct_annotation=text(), explanation=text(""))
    approach = model("Approach", approach=text(), rationale=text(""), annotators=items(names, "annotators holding it"))
    pattern = model(
        "Pattern", name=text(), root_cause=text(""), entity_types=items(names), covered_by_guideline=(bool, False),
        approaches=items(approach),
    )
    principle = model("Principle", text=text(), addresses=items(names, "pattern names"), priority=prio)
    need = model("Need", text=text(), priority=prio)
    draft = model("DraftInstruction", text=text(), priority=prio, examples=items(example, "1-2 worked examples", max_examples))
    per_annotator = model("AnnotatorInstructions", annotator=(names, ...), instructions=items(draft))
    resolution = model("Resolution", conflict=text(), chosen_approach=text(), rationale=text(""))
    organized = create_model("OrganizedInstruction", __base__=draft, sub_instructions=items(draft))  # closed, as its base
    return PhaseSchemas(
        PatternAnalysis=model(
            "PatternAnalysis", summary=text(""), patterns=items(pattern), principles=items(principle),
            goal_questions=items(names),
        ),
        AnnotatorDiagnosis=model(
            "AnnotatorDiagnosis", tendencies=items(names), strengths=items(names), deviation=text(""), needs=items(need)
        ),
        Integration=model(
            "Integration",
            goal=(
                Annotated[str, Field(max_length=max(max_chars, 4000))],
                Field(default="", description="the whole goal with the sharpened sections rewritten, or empty"),
            ),
            goal_changed=(bool, False),
            resolutions=items(resolution),
            common=items(draft),
            per_annotator=items(per_annotator),
        ),
        Organization=model(
            "Organization", common=items(organized), per_annotator=items(per_annotator),
            retired=items(names, "dropped instructions and why"),
        ),
    )


def schemas_for(spec: ModelSpec) -> PhaseSchemas:
    """Tight bounds for the tiny embedded models, generous ones for real models."""
    return phase_schemas(*(COMPACT if spec.provider == "embedded" else GENEROUS))


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
    model: BaseChatModel, spec: ModelSpec, schema: type[BaseModel], prompt: str, config: dict[str, Any] | None, attempts: int = 2
) -> tuple[BaseModel, TokenUsage]:
    """One structured supervisor call; raises PhaseFailed with the reason after `attempts` failures."""
    answer = await invoke_structured(model, spec, schema, prompt, config=config, attempts=attempts)
    if answer.parsed is None:
        raise PhaseFailed(answer.reason, answer.raw_text, answer.usage)
    return answer.parsed, answer.usage


MIN_GOAL_KEPT = 0.5
"""A sharpened goal rewrites sections where needed (DIZINER.md 12.4); one shorter than half the goal in force has
dropped sections, and is refused."""


def sharpened_goal(current: str, integration: dict[str, Any]) -> tuple[str, str | None]:
    """The goal for the next round from phase 3's output, and why a proposed goal was refused (or None)."""
    proposed = (integration.get("goal") or "").strip()
    if not integration.get("goal_changed") or not proposed or proposed == current.strip():
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
    per: dict[str, list[Instruction]] = {}
    for block in org.per_annotator:
        per.setdefault(block.annotator, []).extend(drafts_to_instructions(block.instructions))
    return Guideline(common=drafts_to_instructions(org.common), per_annotator=per, goal=goal)
