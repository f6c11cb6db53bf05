"""The method's objects as typed Pydantic v2 models (docs/method.md#task-configuration).

Spans are validated against their document when a validation context supplies it:
`Model.model_validate(data, context={"text": text, "types": {...}})` rejects a span outside the text or of an
unknown type; `end <= start` is rejected always.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from state.errors import InputError
from state.inputs import describe_validation_error

TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------- schema and task configuration


class EntityType(_Model):
    """One entry of the entity schema Σ: never edited by the supervisor."""

    name: str = Field(description="type name, UPPER_SNAKE_CASE")
    definition: str = Field(min_length=1)
    positive_examples: list[str] = Field(default_factory=list)
    negative_examples: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TYPE_NAME.match(v):
            raise ValueError(f"type name {v!r} must be UPPER_SNAKE_CASE ([A-Z][A-Z0-9_]*)")
        return v


class TaskDefinition(_Model):
    """A task file: the schema Σ, the final task goal G and the dataset label mapping."""

    name: str = Field(min_length=1)
    description: str = ""
    entity_types: list[EntityType] = Field(min_length=1)
    final_task_goal: str = Field(min_length=1)
    label_mapping: dict[str, str] = Field(default_factory=dict, description="dataset label -> type name")

    @model_validator(mode="after")
    def _consistent(self) -> TaskDefinition:
        names = [t.name for t in self.entity_types]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate entity type names: {sorted(dup)}")
        unknown = {v for v in self.label_mapping.values() if v not in names}
        if unknown:
            raise ValueError(f"label_mapping targets unknown type names: {sorted(unknown)}")
        return self

    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.entity_types]

    def to_dataset_label(self) -> dict[str, str]:
        """type name -> dataset label (identity for types the mapping does not name)."""
        back = {v: k for k, v in self.label_mapping.items()}
        return {n: back.get(n, n) for n in self.type_names}

    @classmethod
    def from_yaml(cls, path: str | Path) -> TaskDefinition:
        """A task file; every problem is an InputError naming the file, line and field."""
        from state.inputs import load_yaml, validate_yaml

        data, root = load_yaml(path, "task file")
        if not isinstance(data, dict):
            raise InputError("a task must be a mapping with name, entity_types, final_task_goal", path=str(path))
        return validate_yaml(cls, data, root, path)

    @classmethod
    def from_data(cls, data: Any, source: str = "task") -> TaskDefinition:
        if not isinstance(data, dict):
            raise InputError("a task must be a mapping with name, entity_types, final_task_goal", path=source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc), path=source) from None


class InstructionExample(_Model):
    text: str
    correct_annotation: str
    explanation: str = ""


class Instruction(_Model):
    """One guideline item; common instructions nest (1., 1.1, ...), per-annotator ones are flat."""

    number: str = Field(description="hierarchical number, e.g. '2' or '2.1'")
    text: str = Field(min_length=1)
    examples: list[InstructionExample] = Field(default_factory=list)
    sub_instructions: list[Instruction] = Field(default_factory=list)
    priority: Literal["high", "medium", "low"] = "medium"


class TaskConfiguration(_Model):
    """Θ_k = (Σ, C, R_k, G): what annotator k is told in one round."""

    schema_: list[EntityType] = Field(alias="schema", description="Σ: the entity schema")
    common_instructions: list[Instruction] = Field(default_factory=list, description="C")
    annotator_instructions: list[Instruction] = Field(default_factory=list, description="R_k")
    goal: str = Field(description="G: the final task goal")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- documents, spans, annotator outputs


class Span(_Model):
    start: int = Field(ge=0)
    end: int
    type: str = Field(min_length=1)

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> Span:
        if self.end <= self.start:
            raise ValueError(f"span end {self.end} must be greater than start {self.start}")
        ctx = info.context or {}
        text = ctx.get("text")
        if text is not None and self.end > len(text):
            raise ValueError(f"span [{self.start}, {self.end}) lies outside the text (length {len(text)})")
        types = ctx.get("types")
        if types is not None and self.type not in types:
            raise ValueError(f"unknown entity type {self.type!r} (known: {', '.join(sorted(types))})")
        return self


class Document(_Model):
    id: str = Field(min_length=1)
    text: str
    entities: list[Span] | None = None

    @model_validator(mode="after")
    def _inside(self) -> Document:
        for s in self.entities or []:
            if s.end > len(self.text):
                raise ValueError(f"document {self.id!r}: span [{s.start}, {s.end}) lies outside the text")
        return self


class AnnotatorOutput(_Model):
    """One annotator's reading of one document. A failure is recorded as such, never as 'no entities'."""

    annotator: str
    document_id: str
    status: Literal["ok", "failed"]
    spans: list[Span] = Field(default_factory=list)
    reason: str | None = Field(default=None, description="why it failed")
    error_kind: str | None = Field(default=None, description="how it failed: answer, timeout, transport, server, ...")
    raw: str | None = Field(default=None, description="the model's raw reply")
    not_found: int = Field(default=0, description="entity strings that could not be grounded in the text")
    dropped_types: int = Field(default=0, description="entities of a type outside the schema")

    @model_validator(mode="after")
    def _status(self) -> AnnotatorOutput:
        if self.status == "failed" and self.spans:
            raise ValueError("a failed annotation carries no spans")
        if self.status == "failed" and not self.reason:
            raise ValueError("a failed annotation needs a reason")
        return self


# ---------------------------------------------------------------- disagreement


class AgreementStats(_Model):
    """A round's agreement figures: weights, pairwise and mean agreement, elite, hotspot threshold (docs/method.md#agreement-and-weights)."""
    models: list[str]
    excluded: list[str] = Field(default_factory=list)
    weights: dict[str, float]
    pairwise_f1: dict[str, dict[str, float]]
    mean_agreement: dict[str, float]
    mean_pairwise_f1: float
    elite: list[str]
    threshold: float | None
    dropped_spans: dict[str, int]


HotspotKind = Literal["complex", "elite_split", "systematic_bias", "minor"]


class Hotspot(_Model):
    """A disputed span of a pilot document and its kind (docs/method.md#hotspot-kinds)."""
    document_id: str
    start: int
    end: int
    token_start: int
    token_end: int
    kind: HotspotKind
    text: str = ""


class DisagreementReport(_Model):
    """The deterministic step's output for one round: figures, hotspots, consensus and the supervisor's report."""

    agreement: AgreementStats
    hotspots: list[Hotspot] = Field(default_factory=list)
    hotspot_kinds: dict[str, int] = Field(default_factory=dict)
    consensus: dict[str, list[Span]] = Field(default_factory=dict)
    markdown: str = ""
    markdown_compact: str = Field(default="", description="the same report with at most two examples per type")
    annotator_reports: dict[str, str] = Field(default_factory=dict, description="per-annotator error reports")
