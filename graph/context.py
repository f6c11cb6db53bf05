"""The run context: one typed object whose fields and descriptions double as the Studio form."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from agents.models import DEFAULT_ANNOTATORS, DEFAULT_SUPERVISOR, check_annotator_names

MAX_LOOPS_CAP = 5


class DizinerContext(BaseModel):
    """The run's settings: models, loop and pilot settings, supervisor caps (docs/method.md#defaults)."""
    annotators: list[str] = Field(
        default=list(DEFAULT_ANNOTATORS),  # a plain default (pydantic copies it per instance) shows in the Studio form
        description="annotator model specs 'provider:model' (openai:..., ollama:..., embedded:smollm2, embedded:gemma3-270m)",
    )
    supervisor: str = Field(default=DEFAULT_SUPERVISOR, description="supervisor model spec 'provider:model'")
    run_config: str = Field(
        default="",
        description="optional run file (YAML) listing annotators and supervisor with base URL, key variable, "
        "temperature, max tokens, timeout and concurrency; overrides the two fields above",
    )
    max_loops: int = Field(default=5, ge=1, description="annotation rounds at most (hard cap 5)")
    pilot_size: int = Field(default=25, ge=1, description="documents per pilot set")
    min_gain: float = Field(default=0.01, ge=0.0, description="a round is stale unless agreement beats the best so far by more than this")
    patience: int = Field(default=1, ge=1, description="consecutive stale rounds that stop the run")
    seed: int = Field(default=42, ge=0, description="seed of the pilot-set selection (a non-negative integer)")
    max_patterns: int = Field(default=5, ge=1, description="phase 1: disagreement patterns at most")
    max_common_instructions: int = Field(default=3, ge=1, description="top-level common instructions in force at most")
    max_model_instructions: int = Field(default=2, ge=0, description="instructions per annotator at most")
    diagnose_all: bool = Field(default=False, description="phase 2 diagnoses every annotator, not only the non-elite")
    cumulative: bool = Field(
        default=True,
        description="refine the guideline in force (the paper's design); false reproduces the reference code, "
        "where each round starts from no instructions and the original goal",
    )
    percentile: float = Field(default=80.0, ge=0, le=100, description="hotspot threshold percentile")
    call_cache: bool = Field(
        default=True, description="answer repeated calls of temperature-0 models from the persistent call cache"
    )
    cache_dir: str = Field(default="", description="call cache directory (empty: DIZINER_CACHE_DIR or ~/.cache/diziner)")
    timeout: float | None = Field(
        default=None, gt=0, description="every model call's total deadline in seconds (empty: each model's own)"
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="stop before priced spending would pass this many US dollars (empty: no limit)"
    )
    max_report_examples: int = Field(default=10, ge=0, description="report examples per error type")

    @field_validator("max_loops")
    @classmethod
    def _cap(cls, v: int) -> int:
        if v > MAX_LOOPS_CAP:
            raise ValueError(f"max_loops is at most {MAX_LOOPS_CAP}, got {v}")
        return v

    @field_validator("annotators")
    @classmethod
    def _annotators(cls, v: list[str]) -> list[str]:
        return check_annotator_names(v)


def get_context(runtime: Any) -> DizinerContext:
    """The run's context: on the server it is always set; an in-process invoke without `context=` gives None."""
    ctx = getattr(runtime, "context", None)
    if ctx is None:
        return DizinerContext()
    if isinstance(ctx, DizinerContext):
        return ctx
    if isinstance(ctx, dict):
        return DizinerContext.model_validate(ctx)
    return DizinerContext.model_validate(ctx, from_attributes=True)
