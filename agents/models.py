"""Model specs (``provider:model``), run files, and lazy construction of chat models.

A spec names a model the way the user wrote it: ``openai:gpt-5-mini``, ``ollama:qwen3:14b``,
``embedded:smollm2``. The name is the annotator's identity end to end (prompts, state, run
directory, traces); only the first colon separates the provider.

Nothing here talks to a model or reads a key at import time: ``chat_model`` builds a client on
first use, so a missing ``OPENAI_API_KEY`` breaks only the run that needs it, never an import,
``langgraph dev`` or the tests. The provider packages are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agents import embedded
from state.errors import InputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "DEFAULT_ANNOTATORS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SUPERVISOR",
    "EMBEDDED_MAX_TOKENS",
    "EMBEDDED_SUPERVISOR_MAX_TOKENS",
    "PROVIDERS",
    "SUPERVISOR_MAX_TOKENS",
    "ModelSpec",
    "RunConfig",
    "chat_model",
    "clear_cache",
    "load_run_config",
    "parse_model_spec",
    "safe_name",
    "structured_output_method",
    "supervisor_spec",
]

Provider = Literal["openai", "ollama", "embedded"]
PROVIDERS: tuple[str, ...] = ("openai", "ollama", "embedded")

DEFAULT_ANNOTATORS: tuple[str, ...] = ("embedded:smollm2", "embedded:gemma3-270m")
DEFAULT_SUPERVISOR = "embedded:smollm2"

DEFAULT_MAX_TOKENS = 1024
"""Output cap for an annotation call: a JSON list of entities for one document."""
SUPERVISOR_MAX_TOKENS = 4096
"""Default output cap for the supervisor (its phases write analyses and guidelines)."""
EMBEDDED_MAX_TOKENS = 512
"""Annotation cap for the embedded models: their at most eight entities take about 200 tokens, and a runaway
answer costs the whole cap (about 8 s on two cores instead of 17 s at 1024)."""
EMBEDDED_SUPERVISOR_MAX_TOKENS = 1024
"""Supervisor cap for the embedded models: their phase schemas are compact (two items, short strings)."""
EMBEDDED_FREQUENCY_PENALTY = 0.5
"""The tiny models loop (the same entity again and again, or whitespace once the grammar closes a list) until
their token cap; a frequency penalty lets them end the answer. Measured with Gemma on 20 Broad Twitter tweets and
with both models on 3 short sentences, the annotator schema bounding entity count and text: 2 of 11 answers cut
at the cap without a penalty, none of 26 at 0.5 (and half the output tokens and time of 0.3)."""
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONCURRENCY = {"openai": 4, "ollama": 4, "embedded": 1}
DEFAULT_API_KEY_ENV = {"openai": "OPENAI_API_KEY"}

_ALLOWED_FORMS = (
    "expected provider:model with provider one of openai, ollama, embedded, for example "
    "openai:gpt-5-mini, ollama:qwen3:14b, "
    + ", ".join(f"embedded:{alias}" for alias in embedded.EMBEDDED_MODELS)
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelSpec(BaseModel):
    """One model and how to call it. Immutable and hashable (it keys the client cache).

    Build it with :func:`parse_model_spec` or from a mapping with a ``name``; ``provider`` and
    ``model`` are derived from the name, and provider-dependent defaults are filled in.
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
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, gt=0, description="Output cap per call.")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="Seconds per request.")
    max_retries: int = Field(default=2, ge=0)
    concurrency: int = Field(description="Max concurrent requests to this model (embedded 1, else 4).", ge=1)
    context_window: int | None = Field(
        default=None, gt=0, description="Tokens (prompt plus output); known for embedded models."
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
            data["concurrency"] = DEFAULT_CONCURRENCY[provider]
        if "api_key_env" not in data:
            data["api_key_env"] = DEFAULT_API_KEY_ENV.get(provider)
        if provider == "embedded":
            if data.get("base_url") is not None:
                raise ValueError("base_url cannot be set for an embedded model (it runs in this process)")
            if "max_tokens" not in data:
                data["max_tokens"] = EMBEDDED_MAX_TOKENS
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
        if value is not None and not value.strip():
            return None
        return value.strip() if value is not None else None


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


def parse_model_spec(text: str, **overrides: Any) -> ModelSpec:
    """Parse ``provider:model`` into a spec with defaults; ``overrides`` set other fields.

    Unknown provider or malformed text -> InputError naming the spec and the allowed forms.
    """
    if not isinstance(text, str):
        raise InputError(f"model spec must be a string like 'openai:gpt-5-mini', not {text!r}")
    try:
        return ModelSpec.model_validate({**overrides, "name": text})
    except ValidationError as exc:
        raise InputError(_validation_message(exc, prefix=f"model {text!r}: ")) from None


def supervisor_max_tokens(name: Any) -> int:
    """The supervisor's default output cap for a model name (smaller for the embedded models)."""
    embedded_model = isinstance(name, str) and name.strip().startswith("embedded:")
    return EMBEDDED_SUPERVISOR_MAX_TOKENS if embedded_model else SUPERVISOR_MAX_TOKENS


def supervisor_spec(text: str, **overrides: Any) -> ModelSpec:
    """Like :func:`parse_model_spec`, with the supervisor's larger default output cap."""
    return parse_model_spec(text, **{"max_tokens": supervisor_max_tokens(text), **overrides})


class RunConfig(BaseModel):
    """Which models annotate and which supervises. Without a run file: the embedded defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annotators: list[ModelSpec] = Field(
        default_factory=lambda: [parse_model_spec(n) for n in DEFAULT_ANNOTATORS],
        description="Annotator models; each name must be unique (it identifies the annotator).",
    )
    supervisor: ModelSpec = Field(
        default_factory=lambda: supervisor_spec(DEFAULT_SUPERVISOR),
        description="The model that analyses disagreements and rewrites the guidelines.",
    )

    @field_validator("supervisor", mode="before")
    @classmethod
    def _supervisor_defaults(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value, "max_tokens": supervisor_max_tokens(value)}
        if isinstance(value, dict) and "max_tokens" not in value:
            return {**value, "max_tokens": supervisor_max_tokens(value.get("name"))}
        return value

    @field_validator("annotators")
    @classmethod
    def _unique_annotators(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        if len(value) < 2:
            raise ValueError("list at least two annotators (the method compares annotators with each other)")
        seen: dict[str, int] = {}
        for i, spec in enumerate(value):
            if spec.name in seen:
                raise ValueError(
                    f"duplicate annotator {spec.name!r} at positions {seen[spec.name]} and {i} "
                    f"(names identify annotators)"
                )
            seen[spec.name] = i
        return value

    @classmethod
    def from_names(cls, annotators: Sequence[str] | None = None, supervisor: str | None = None) -> RunConfig:
        """From command-line style names; None means the default. InputError on bad names."""
        data: dict[str, Any] = {}
        if annotators is not None:
            data["annotators"] = list(annotators)
        if supervisor is not None:
            data["supervisor"] = supervisor
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(_validation_message(exc)) from None


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a run file (YAML). Every problem -> InputError with the file, the line and the field."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("run file not found", path=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the run file: {exc}", path=where) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"invalid YAML: {problem}", path=where, line=line) from None
    if root is None:
        raise InputError("the run file is empty; expected 'annotators' and/or 'supervisor'", path=where)
    _reject_duplicate_keys(root, where)
    if not isinstance(data, dict):
        raise InputError(
            "expected a mapping with 'annotators' and/or 'supervisor' at the top level", path=where, line=1
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        raise InputError(_validation_message(exc), path=where, line=_line_of(root, loc)) from None


def _reject_duplicate_keys(node: yaml.Node, where: str) -> None:
    """PyYAML keeps the last of duplicate keys silently; a run file with two 'supervisor's is an error."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise InputError(f"duplicate key {key.value!r}", path=where, line=key.start_mark.line + 1)
                seen.add(key.value)
            _reject_duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, where)


def _line_of(root: yaml.Node, loc: Iterable[Any]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (as deep as it resolves)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if match is None:  # a missing key: point at the mapping
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    """Readable pydantic errors: 'annotators[1].temperature: Input should be ...'.

    ``prefix`` goes before field errors only: errors about the name already quote the spec.
    """
    lines = []
    for err in exc.errors():
        field = ""
        for part in err["loc"]:
            if isinstance(part, int):
                field += f"[{part}]"
            else:
                field += f".{part}" if field else str(part)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif err["type"] == "missing":
            msg = "required"
        lines.append(f"{prefix}{field}: {msg}" if field else msg)
    return "; ".join(lines)


# --------------------------------------------------------------------------- file names

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9.:-]+")
_MAX_STEM = 80


def safe_name(name: str) -> str:
    """A file-name-safe, deterministic and (practically) injective form of an annotator name.

    Colons become underscores ("ollama:qwen3:14b" -> "ollama_qwen3_14b"). That alone is
    reversible for names made only of letters, digits, '.', '-' and ':'; any other name
    (underscores, slashes, spaces, very long, or starting with '.') gets an 8-hex-digit hash of
    the full name appended, so two different names cannot share a file.
    """
    stem = _SAFE_CHARS.sub("_", name)
    reversible = bool(_PLAIN_NAME.fullmatch(name)) and not name.startswith(".") and len(stem) <= _MAX_STEM
    if reversible:
        return stem
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    stem = stem[:_MAX_STEM].lstrip(".") or "model"
    return f"{stem}-{digest}"


# --------------------------------------------------------------------------- chat models

# spec -> (model, embedded server URL it was built for, or None)
_cache: dict[ModelSpec, tuple[BaseChatModel, str | None]] = {}
_cache_lock = threading.Lock()
_build_locks: dict[ModelSpec, threading.Lock] = {}


def structured_output_method(spec: ModelSpec) -> str:
    """The ``with_structured_output`` method that works for the provider.

    ``json_schema`` everywhere: OpenAI structured outputs; the embedded llama.cpp server turns
    the schema into a grammar (``function_calling`` silently returns None there); ChatOllama
    passes the schema as Ollama's ``format``.
    """
    return "json_schema"


def chat_model(spec: ModelSpec) -> BaseChatModel:
    """The chat model for a spec, built on first use and cached per spec (thread-safe).

    openai: the API key is read here, from ``spec.api_key_env``; a missing key is an InputError.
    embedded: starts the model's server in this process (blocking, about a second).
    """
    cached = _cache.get(spec)
    if cached is not None and _still_valid(spec, cached[1]):
        return cached[0]
    with _cache_lock:
        lock = _build_locks.setdefault(spec, threading.Lock())
    with lock:
        cached = _cache.get(spec)
        if cached is None or not _still_valid(spec, cached[1]):
            url = embedded.ensure_server(spec.model) if spec.provider == "embedded" else None
            cached = (_build(spec), url)
            with _cache_lock:
                _cache[spec] = cached
    return cached[0]


def _still_valid(spec: ModelSpec, url: str | None) -> bool:
    """An embedded client is stale once its server was stopped (a new one has a new port)."""
    return spec.provider != "embedded" or embedded.running_servers().get(spec.model) == url


def clear_cache() -> None:
    """Forget the built clients (when the environment, e.g. a key, changed)."""
    with _cache_lock:
        _cache.clear()
        _build_locks.clear()


def _build(spec: ModelSpec) -> BaseChatModel:
    if spec.provider == "openai":
        return _build_openai(spec)
    if spec.provider == "ollama":
        return _build_ollama(spec)
    return _build_embedded(spec)


def _require(package: str) -> NoReturn:
    raise InputError(f"the Python package {package!r} is not installed; run `make install`")


def _build_openai(spec: ModelSpec) -> BaseChatModel:
    key_env = spec.api_key_env or "OPENAI_API_KEY"
    key = os.environ.get(key_env)
    if not key:
        raise InputError(
            f"model {spec.name!r} needs an API key in the environment variable {key_env}: set it "
            f"(any non-empty value for a local OpenAI-compatible server), or name another variable "
            f"with api_key_env in the run file"
        )
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        _require("langchain-openai")
    return ChatOpenAI(
        model=spec.model,
        base_url=spec.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        api_key=key,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        timeout=spec.timeout,
        max_retries=spec.max_retries,
    )


def _build_ollama(spec: ModelSpec) -> BaseChatModel:
    """ChatOllama. Its client does not retry: retries belong to the caller for this provider.

    Ollama's default context is small and silently truncates long prompts: set
    ``context_window`` (sent as ``num_ctx``) in the run file for real tasks.
    """
    try:
        from langchain_ollama import ChatOllama
    except ImportError:
        _require("langchain-ollama")
    client_kwargs: dict[str, Any] = {"timeout": spec.timeout}
    if spec.api_key_env:  # an Ollama behind an authenticating proxy
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise InputError(f"model {spec.name!r} needs the environment variable {spec.api_key_env} to be set")
        client_kwargs["headers"] = {"Authorization": f"Bearer {key}"}
    kwargs: dict[str, Any] = {}
    if spec.context_window is not None:
        kwargs["num_ctx"] = spec.context_window
    if spec.max_tokens is not None:
        kwargs["num_predict"] = spec.max_tokens
    return ChatOllama(
        model=spec.model,
        base_url=spec.base_url or os.environ.get("OLLAMA_HOST") or None,
        temperature=spec.temperature,
        client_kwargs=client_kwargs,
        **kwargs,
    )


def _build_embedded(spec: ModelSpec) -> BaseChatModel:
    """ChatOpenAI on the in-process server, with HTTP clients that ignore proxy settings.

    The async client pools connections per event loop: the model is cached for the whole
    process, and a pooled connection opened under one ``asyncio.run`` fails (then hangs until
    the timeout) when reused under the next one.
    """
    try:
        import httpx
        from langchain_openai import ChatOpenAI
    except ImportError:
        _require("langchain-openai")
    base_url = embedded.ensure_server(spec.model)
    return ChatOpenAI(
        model=spec.model,
        base_url=base_url,
        api_key="unused",
        temperature=spec.temperature,
        frequency_penalty=EMBEDDED_FREQUENCY_PENALTY,
        max_tokens=spec.max_tokens,
        timeout=spec.timeout,
        max_retries=spec.max_retries,
        http_client=httpx.Client(trust_env=False, timeout=spec.timeout),
        http_async_client=httpx.AsyncClient(transport=_per_loop_transport(), timeout=spec.timeout),
    )


def _per_loop_transport() -> Any:
    """An httpx async transport holding one connection pool per running event loop."""
    import asyncio
    import weakref

    import httpx

    class PerLoopTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport]
            self._pools = weakref.WeakKeyDictionary()
            self._lock = threading.Lock()

        def _pool(self) -> httpx.AsyncHTTPTransport:
            loop = asyncio.get_running_loop()
            with self._lock:
                pool = self._pools.get(loop)
                if pool is None:
                    pool = self._pools[loop] = httpx.AsyncHTTPTransport()
                return pool

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await self._pool().handle_async_request(request)

        async def aclose(self) -> None:
            with self._lock:
                pool = self._pools.pop(asyncio.get_running_loop(), None)
            if pool is not None:
                await pool.aclose()

    return PerLoopTransport()
