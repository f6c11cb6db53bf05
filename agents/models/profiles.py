"""Model profiles: what a model can do, so that callers ask for capabilities, never for a provider's name.

A profile bounds a model's answers and says how to treat an unusable one. The ``small`` profile is for tiny
grammar-constrained models (the embedded ones, or a small model behind Ollama or llama.cpp): without these bounds
they repeat entities or pad until their token cap. The measurements behind each figure: docs/embedded-models.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_PROFILE", "PROFILES", "SMALL_PROFILE", "ModelProfile", "profile_named"]


class ModelProfile(BaseModel):
    """Output bounds and answer handling of a model (frozen: part of the spec that keys the client cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="'default', 'small', or a name of the user's")
    annotator_max_tokens: int = Field(default=1024, gt=0, description="output cap of an annotation call")
    supervisor_max_tokens: int = Field(default=4096, gt=0, description="output cap of a supervisor phase call")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="sent where the API takes one")
    max_entities: int | None = Field(default=None, gt=0, description="entities per annotation answer at most")
    max_entity_chars: int | None = Field(default=None, gt=0, description="characters per entity text at most")
    phase_items: int = Field(default=12, gt=0, description="items per list in a supervisor phase answer")
    phase_chars: int = Field(default=2000, gt=0, description="characters per string in a supervisor phase answer")
    phase_examples: int = Field(default=2, gt=0, description="worked examples per instruction")
    deterministic: bool = Field(
        default=False,
        description="at temperature 0 the same prompt gives the same answer, so an unusable answer is not asked again",
    )


DEFAULT_PROFILE = ModelProfile(name="default")
SMALL_PROFILE = ModelProfile(
    name="small",
    annotator_max_tokens=512,
    supervisor_max_tokens=1024,
    frequency_penalty=0.5,
    max_entities=8,
    max_entity_chars=120,
    phase_items=2,
    phase_chars=60,
    phase_examples=1,
    deterministic=True,
)
PROFILES: dict[str, ModelProfile] = {p.name: p for p in (DEFAULT_PROFILE, SMALL_PROFILE)}


def profile_named(name: str) -> ModelProfile:
    """The shipped profile of that name; ValueError listing the names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; the profiles are {', '.join(PROFILES)}") from None
