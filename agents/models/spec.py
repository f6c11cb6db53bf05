"""Model specs: ``provider:model`` strings, their provider defaults, and the resolved spec a run carries.

A spec names a model the way the user wrote it: ``openai:gpt-5-mini``, ``ollama:qwen3:14b``, ``embedded:smollm2``.
The name is the annotator's identity end to end (prompts, state, run directory, traces); only the first colon
separates the provider. A resolved spec has every setting concrete, its profile included, so a run stores it in its
state and run.json and never resolves it again.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents.models import embedded
from agents.models.modes import OutputMode
from agents.models.prices import ModelPrice, known_price
from agents.models.profiles import DEFAULT_PROFILE, SMALL_PROFILE, ModelProfile, profile_named
from state.errors import InputError
from state.inputs import describe_validation_error

__all__ = ["DEFAULT_ANNOTATORS", "DEFAULT_SUPERVISOR", "PROVIDERS", "ModelSpec", "Role", "parse_model_spec"]

Provider = Literal["openai", "ollama", "embedded"]
Role = Literal["annotator", "supervisor"]
PROVIDERS: tuple[str, ...] = ("openai", "ollama", "embedded")

DEFAULT_ANNOTATORS: tuple[str, ...] = ("embedded:smollm2", "embedded:gemma3-270m")
DEFAULT_SUPERVISOR = "embedded:smollm2"

DEFAULT_TIMEOUT_S = 600.0
"""A call's total deadline, first attempt to last retry: reasoning models can think for minutes."""
_CONCURRENCY = {"openai": 4, "ollama": 4, "embedded": 1}  # the embedded server has one slot
_API_KEY_ENV = {"openai": "OPENAI_API_KEY"}
_PROFILE = {"embedded": SMALL_PROFILE}

_ALLOWED_FORMS = (
    "expected provider:model with provider one of openai, ollama, embedded, for example "
    "openai:gpt-5-mini, ollama:qwen3:14b, " + ", ".join(f"embedded:{alias}" for alias in embedded.EMBEDDED_MODELS)
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelSpec(BaseModel):
    """One model and how to call it. Immutable and hashable (it keys the client cache).

    Build it with :func:`parse_model_spec` or from a mapping with a ``name``; ``provider`` and ``model`` are derived
    from the name, and the provider's defaults and profile are filled in. ``max_tokens`` left unset takes the
    profile's cap for the role the spec is resolved for (:meth:`for_role`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Canonical id as written by the user, e.g. 'ollama:qwen3:14b'.")
    provider: Provider = Field(description="Derived from the name: the text before the first colon.")
    model: str = Field(description="Derived from the name: everything after the first colon.")
    base_url: str | None = Field(
        default=None,
        description="Endpoint. openai: OPENAI_BASE_URL or the OpenAI API; ollama: OLLAMA_HOST or local.",
    )
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the key (openai: OPENAI_API_KEY)."
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0, description="Output cap per call (default: the profile's).")
    timeout: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds a call may take in all, from its first attempt to its last retry."
    )
    max_retries: int = Field(default=2, ge=0, description="Retries of a call that failed on an error that can heal.")
    concurrency: int = Field(description="Max concurrent requests to this model (embedded 1, else 4).", ge=1)
    context_window: int | None = Field(
        default=None, gt=0, description="Tokens (prompt plus output); known for embedded models."
    )
    output: OutputMode = Field(
        default="json_schema",
        description="How JSON is asked for: json_schema (structured output), json (JSON mode), tools, or text",
    )
    price: ModelPrice | None = Field(default=None, description="USD per million tokens; known for some API models")
    profile: ModelProfile = Field(
        default=DEFAULT_PROFILE,
        description="'default' or 'small' (tiny grammar-constrained models: bounded answers); embedded: small",
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict):
            return data  # pydantic reports the type
        name = data.get("name")
        if not isinstance(name, str):
            raise ValueError(f"'name' is required and must be a model spec string; {_ALLOWED_FORMS}")
        data = dict(data)
        provider, model = _split_name(name)
        for key, derived in (("provider", provider), ("model", model)):
            if data.get(key) is not None and data[key] != derived:
                raise ValueError(f"{key} {data[key]!r} contradicts the name {name!r} (it says {derived!r})")
            data[key] = derived
        data["name"] = name.strip()
        if data.get("concurrency") is None:
            data["concurrency"] = _CONCURRENCY[provider]
        if "api_key_env" not in data:
            data["api_key_env"] = _API_KEY_ENV.get(provider)
        profile = data.get("profile")
        if profile is None:
            data["profile"] = _PROFILE.get(provider, DEFAULT_PROFILE)
        elif isinstance(profile, str):
            data["profile"] = profile_named(profile)
        if data.get("price") is None:
            endpoint = data.get("base_url") or (os.environ.get("OPENAI_BASE_URL") if provider == "openai" else None)
            data["price"] = known_price(provider, model, endpoint)
        if provider == "embedded":
            if data.get("base_url") is not None:
                raise ValueError("base_url cannot be set for an embedded model (it runs in this process)")
            n_ctx = embedded.context_window(model)
            window = data.get("context_window")
            if window is None:
                data["context_window"] = n_ctx
            elif isinstance(window, int) and window > n_ctx:
                raise ValueError(f"context_window {window} exceeds the embedded server's {n_ctx} tokens")
        return data

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    def for_role(self, role: Role) -> ModelSpec:
        """This spec with its output cap made concrete: the profile's cap for `role` unless one was set."""
        if self.max_tokens is not None:
            return self
        cap = self.profile.supervisor_max_tokens if role == "supervisor" else self.profile.annotator_max_tokens
        return self.model_copy(update={"max_tokens": cap})

    @property
    def deterministic(self) -> bool:
        """The same prompt gives the same answer: an unusable answer is not asked again."""
        return self.profile.deterministic and self.temperature == 0


def _split_name(name: str) -> tuple[str, str]:
    """``provider:model`` -> (provider, model); raises ValueError with the allowed forms."""
    text = name.strip()
    if not text or any(ch.isspace() for ch in text) or any(ord(ch) < 32 for ch in text):
        raise ValueError(f"model spec {name!r} is malformed (empty or contains spaces); {_ALLOWED_FORMS}")
    provider, sep, model = text.partition(":")
    if not sep or not provider or not model:
        raise ValueError(f"model spec {name!r} is malformed; {_ALLOWED_FORMS}")
    if provider not in PROVIDERS:
        raise ValueError(f"model spec {name!r} has an unknown provider {provider!r}; {_ALLOWED_FORMS}")
    if provider == "embedded" and model not in embedded.EMBEDDED_MODELS:
        known = ", ".join(f"embedded:{a}" for a in embedded.EMBEDDED_MODELS)
        raise ValueError(f"model spec {name!r} names no embedded model; the embedded models are {known}")
    return provider, model


def parse_model_spec(text: str, role: Role = "annotator", **overrides: Any) -> ModelSpec:
    """``provider:model`` resolved for `role` with defaults; ``overrides`` set other fields.

    Unknown provider or malformed text -> InputError naming the spec and the allowed forms.
    """
    if not isinstance(text, str):
        raise InputError(f"model spec must be a string like 'openai:gpt-5-mini', not {text!r}")
    try:
        return ModelSpec.model_validate({**overrides, "name": text}).for_role(role)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, prefix=f"model {text!r}: ")) from None
