"""Chat-model clients for resolved specs, built lazily and cached per spec.

Nothing here talks to a model or reads a key at import time: ``chat_model`` builds a client on first use, so a
missing ``OPENAI_API_KEY`` breaks only the run that needs it, never an import, ``langgraph dev`` or the tests. The
provider packages are imported inside the functions.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from agents.models import embedded
from agents.models.spec import ModelSpec
from state.errors import InputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["ModelHandle", "chat_model", "clear_cache", "endpoint", "named_chat_model", "openai_key"]

# spec -> (model, embedded server URL it was built for, or None)
_cache: dict[tuple[ModelSpec, tuple[str | None, ...]], tuple[BaseChatModel, str | None]] = {}
_cache_lock = threading.Lock()
_build_locks: dict[tuple[ModelSpec, tuple[str | None, ...]], threading.Lock] = {}


def endpoint(spec: ModelSpec) -> str | None:
    """Where the spec's calls go: its base_url, else the provider's environment variable (None: the default)."""
    if spec.base_url:
        return spec.base_url
    variable = {"openai": "OPENAI_BASE_URL", "ollama": "OLLAMA_HOST"}.get(spec.provider)
    return os.environ.get(variable) or None if variable else None


def _environment(spec: ModelSpec) -> tuple[str | None, ...]:
    """The environment a client is built from (endpoint and key variables): a client is reused only while it holds."""
    names = {"openai": ("OPENAI_BASE_URL",), "ollama": ("OLLAMA_HOST",)}.get(spec.provider, ())
    return (*(os.environ.get(n) for n in names), os.environ.get(spec.api_key_env) if spec.api_key_env else None)


def chat_model(spec: ModelSpec) -> BaseChatModel:
    """The chat model for a spec, built on first use and cached per spec (thread-safe).

    openai: the API key is read here, from ``spec.api_key_env``; a missing key is an InputError.
    embedded: starts the model's server in this process (blocking, about a second).
    """
    key = (spec, _environment(spec))
    cached = _cache.get(key)
    if cached is not None and _still_valid(spec, cached[1]):
        return cached[0]
    with _cache_lock:
        lock = _build_locks.setdefault(key, threading.Lock())
    with lock:
        cached = _cache.get(key)
        if cached is None or not _still_valid(spec, cached[1]):
            url = embedded.ensure_server(spec.model) if spec.provider == "embedded" else None
            cached = (_build(spec), url)
            with _cache_lock:
                _cache[key] = cached
    return cached[0]


async def named_chat_model(factory: Any, spec: ModelSpec) -> BaseChatModel:
    """`factory(spec)` built off the event loop (an embedded server may start: blocking), its runs named after the
    spec so that traces read like the method."""
    model = await asyncio.to_thread(factory, spec)
    try:
        return model.model_copy(update={"name": spec.name})
    except Exception:  # a model class that cannot be copied keeps its own name
        return model


class ModelHandle:
    """A spec's chat model, built on its first use: a run whose calls the cache answers needs no key and starts no
    server."""

    def __init__(self, factory: Any, spec: ModelSpec) -> None:
        self.factory = factory
        self.spec = spec
        self._model: BaseChatModel | None = None
        self._building: asyncio.Task[BaseChatModel] | None = None

    async def get(self) -> BaseChatModel:
        """The model, built once (concurrent callers share the build)."""
        if self._model is not None:
            return self._model
        if self._building is None or self._building.get_loop() is not asyncio.get_running_loop():
            self._building = asyncio.ensure_future(named_chat_model(self.factory, self.spec))
        self._model = await asyncio.shield(self._building)
        return self._model


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


def openai_key(spec: ModelSpec) -> str:
    """The key of an OpenAI-compatible model, read now; a missing one is an InputError naming its variable."""
    key_env = spec.api_key_env or "OPENAI_API_KEY"
    key = os.environ.get(key_env)
    if not key:
        raise InputError(
            f"model {spec.name!r} needs an API key in the environment variable {key_env}: set it "
            f"(any non-empty value for a local OpenAI-compatible server), or name another variable "
            f"with api_key_env in the run file"
        )
    return key


def _build_openai(spec: ModelSpec) -> BaseChatModel:
    key = openai_key(spec)
    try:
        import httpx
        from langchain_openai import ChatOpenAI
        from openai import DEFAULT_CONNECTION_LIMITS
    except ImportError:
        _require("langchain-openai")
    return ChatOpenAI(
        model=spec.model,
        base_url=spec.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        api_key=key,
        temperature=spec.temperature,
        frequency_penalty=spec.profile.frequency_penalty,
        max_tokens=spec.max_tokens,
        timeout=spec.timeout,
        max_retries=0,  # the call layer retries (agents.structured), within the call's deadline
        # the model is cached for the process, which may run several event loops (bench --all, a resume)
        http_async_client=httpx.AsyncClient(transport=_per_loop_transport(limits=DEFAULT_CONNECTION_LIMITS),
                                            timeout=spec.timeout, limits=DEFAULT_CONNECTION_LIMITS,
                                            follow_redirects=True),
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
    # the model is cached for the process, which may run several event loops (bench --all, a resume)
    async_client_kwargs: dict[str, Any] = {"transport": _per_loop_transport()}
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
        async_client_kwargs=async_client_kwargs,
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
        frequency_penalty=spec.profile.frequency_penalty,
        max_tokens=spec.max_tokens,
        timeout=spec.timeout,
        max_retries=0,  # the call layer retries (agents.structured), within the call's deadline
        http_client=httpx.Client(trust_env=False, timeout=spec.timeout),
        http_async_client=httpx.AsyncClient(transport=_per_loop_transport(), timeout=spec.timeout),
    )


def _per_loop_transport(**options: Any) -> Any:
    """An httpx async transport holding one connection pool per running event loop (`options`: each pool's)."""
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
                    pool = self._pools[loop] = httpx.AsyncHTTPTransport(**options)
                return pool

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await self._pool().handle_async_request(request)

        async def aclose(self) -> None:
            with self._lock:
                pool = self._pools.pop(asyncio.get_running_loop(), None)
            if pool is not None:
                await pool.aclose()

    return PerLoopTransport()
