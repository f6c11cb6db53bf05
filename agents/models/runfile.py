"""Which models a run uses: the run file (YAML), command-line names, or the embedded defaults, resolved once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agents.models.spec import DEFAULT_ANNOTATORS, DEFAULT_SUPERVISOR, ModelSpec
from state.errors import InputError
from state.inputs import describe_validation_error, load_yaml, validate_yaml

__all__ = ["RunModels", "check_annotator_names", "load_run_config", "resolve_models"]


def check_annotator_names(names: Sequence[str]) -> list[str]:
    """Two or more distinct annotator names (names identify annotators); ValueError saying which rule failed."""
    names = list(names)
    if len(names) < 2:
        raise ValueError("list at least two annotators (the method compares annotators with each other)")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"duplicate annotator {name!r} at positions {seen[name]} and {i} (names identify annotators)")
        seen[name] = i
    return names


class RunModels(BaseModel):
    """The resolved models of a run: every annotator and the supervisor, each with concrete settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annotators: list[ModelSpec] = Field(
        default_factory=lambda: [ModelSpec.model_validate(n).for_role("annotator") for n in DEFAULT_ANNOTATORS],
        description="Annotator models; each name must be unique (it identifies the annotator).",
    )
    supervisor: ModelSpec = Field(
        default_factory=lambda: ModelSpec.model_validate(DEFAULT_SUPERVISOR).for_role("supervisor"),
        description="The model that analyses disagreements and rewrites the guidelines.",
    )

    @field_validator("annotators")
    @classmethod
    def _annotators(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        check_annotator_names([s.name for s in value])
        return [s.for_role("annotator") for s in value]

    @field_validator("supervisor")
    @classmethod
    def _supervisor(cls, value: ModelSpec) -> ModelSpec:
        return value.for_role("supervisor")

    def annotator(self, name: str) -> ModelSpec:
        """The spec of the annotator called `name`; KeyError naming the run's annotators otherwise."""
        for spec in self.annotators:
            if spec.name == name:
                return spec
        raise KeyError(f"{name!r} is not an annotator of this run ({', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.annotators]


def load_run_config(path: str | os.PathLike[str]) -> RunModels:
    """Read a run file (YAML). Every problem -> InputError with the file, the line and the field."""
    data, root = load_yaml(path, "run file")
    if root is None:
        raise InputError("the run file is empty; expected 'annotators' and/or 'supervisor'", path=str(path))
    if not isinstance(data, dict):
        raise InputError("expected a mapping with 'annotators' and/or 'supervisor' at the top level", path=str(path), line=1)
    return validate_yaml(RunModels, data, root, path)


def resolve_models(
    annotators: Sequence[str] | None = None, supervisor: str | None = None, run_file: str | os.PathLike[str] | None = None
) -> RunModels:
    """The run's models from a run file, or from names (None: the embedded defaults). InputError on bad names."""
    if run_file:
        if annotators is not None or supervisor is not None:
            raise InputError("a run file lists the models itself: give either it or annotator/supervisor names")
        return load_run_config(run_file)
    data: dict[str, Any] = {}
    if annotators is not None:
        data["annotators"] = list(annotators)
    if supervisor is not None:
        data["supervisor"] = supervisor
    try:
        return RunModels.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc)) from None
