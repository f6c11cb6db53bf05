"""The supervisor phases' answers as typed records, and the bounded output schemas the models are asked for.

Every list and string of a phase answer can be bounded: with grammar-constrained decoding the bounds are what stops
a small model that would otherwise repeat items until its token cap (docs/embedded-models.md). The state keeps each
answer as the unbounded record type of the same shape (`PatternAnalysis`, `AnnotatorDiagnosis`, `Integration`,
`Organization`), so the graph reads fields, not dictionary keys. The phases: docs/method.md#the-supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

__all__ = [
    "AnnotatorDiagnosis",
    "Integration",
    "Organization",
    "PatternAnalysis",
    "PhaseSchemas",
    "SupervisorPhase",
    "phase_schemas",
]

Priority = Literal["high", "medium", "low"]


class SupervisorPhase(str, Enum):
    """The four supervisor phases, valued by their graph node names."""

    PATTERNS = "analyze_patterns"
    DIAGNOSIS = "diagnose_models"
    INTEGRATION = "integrate_guidelines"
    ORGANIZATION = "organize_guidelines"

    @property
    def number(self) -> int:
        return list(SupervisorPhase).index(self) + 1


@dataclass(frozen=True)
class PhaseSchemas:
    PatternAnalysis: type[BaseModel]
    AnnotatorDiagnosis: type[BaseModel]
    Integration: type[BaseModel]
    Organization: type[BaseModel]

    def of(self, phase: SupervisorPhase) -> type[BaseModel]:
        """The output schema of `phase`."""
        return {
            SupervisorPhase.PATTERNS: self.PatternAnalysis,
            SupervisorPhase.DIAGNOSIS: self.AnnotatorDiagnosis,
            SupervisorPhase.INTEGRATION: self.Integration,
            SupervisorPhase.ORGANIZATION: self.Organization,
        }[phase]


@lru_cache(maxsize=8)
def phase_schemas(max_items: int | None, max_chars: int | None, max_examples: int | None, module: str | None = None) -> PhaseSchemas:
    """The four phases' output models with lists of at most `max_items` (`max_examples` for an instruction's
    examples) and strings of at most `max_chars`; None leaves a bound open."""

    def text(default: str | None = None, description: str = "") -> Any:
        kind = Annotated[str, Field(max_length=max_chars, description=description)]
        return (kind, default) if default is not None else (kind, ...)

    def items(model: Any, description: str = "", at_most: int | None = max_items) -> Any:
        return (list[model], Field(default_factory=list, max_length=at_most, description=description))

    closed = ConfigDict(extra="forbid")  # additionalProperties: false, so a grammar admits no invented keys
    names = Annotated[str, Field(max_length=80)]
    prio = (Priority, "medium")
    where = {"__module__": module} if module else {}

    def model(title: str, /, **fields: Any) -> type[BaseModel]:
        return create_model(title, __config__=closed, **where, **fields)

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
    organized = create_model("OrganizedInstruction", __base__=draft, **where, sub_instructions=items(draft))  # closed, as its base
    goal_chars = None if max_chars is None else max(max_chars, 4000)
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
                Annotated[str, Field(max_length=goal_chars)],
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


_RECORDS = phase_schemas(None, None, None, module=__name__)
# module-level names, so that checkpoints find the record types by module and name
PatternAnalysis = _RECORDS.PatternAnalysis
AnnotatorDiagnosis = _RECORDS.AnnotatorDiagnosis
Integration = _RECORDS.Integration
Organization = _RECORDS.Organization


def as_record(phase: SupervisorPhase, answer: BaseModel) -> BaseModel:
    """A phase's bounded answer as the state's record type of the same shape."""
    return _RECORDS.of(phase).model_validate(answer.model_dump())
