"""The check before a model's first call that the cache cannot answer: key, server, model, one tiny call.

A model that cannot be reached or has no key is an error of the run, not of documents: it stops the run (exit 2 for
configuration: a rejected key, an unknown model; exit 1 for an unreachable server), with a message that names the
model spec and the cause, and the run can be resumed once the cause is fixed. The key itself is checked when the
client is built (`agents.models.clients`). A reply to the tiny call that fits no schema never fails the check.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.messages import HumanMessage

from agents.models.errors import Failure, ModelUnavailable, classify
from agents.models.spec import ModelSpec
from state.errors import InputError
from state.graph_state import TokenUsage

__all__ = ["PROBE_PROMPT", "ensure_checked", "forget_checks", "is_checked"]

PROBE_PROMPT = "Reply with the word OK."
LIST_TIMEOUT_S = 10.0
_PROBE_ATTEMPTS = 3
_checked: set[tuple[Any, ...]] = set()
_locks: dict[tuple[Any, ...], asyncio.Lock] = {}


def _key(spec: ModelSpec) -> tuple[Any, ...]:
    return (spec.provider, spec.model, spec.base_url, spec.api_key_env)


def forget_checks() -> None:
    """Check every model again before its next uncached call (after its server or key changed)."""
    _checked.clear()
    _locks.clear()


def is_checked(spec: ModelSpec) -> bool:
    """Whether the model is checked before its first call (an in-process model is not: building it checks it)."""
    return spec.provider != "embedded"


def _endpoint(spec: ModelSpec, model: Any) -> tuple[str, dict[str, str]] | None:
    """(base URL, headers) of a real client's server; None for a model with no server to check."""
    if not is_checked(spec):
        return None  # in-process: started (and so checked) when its client was built
    if spec.provider == "openai":
        base = getattr(model, "openai_api_base", None)
        key = getattr(model, "openai_api_key", None)
        if not base and key is None:
            return None
        base = base or "https://api.openai.com/v1"
        secret = key.get_secret_value() if hasattr(key, "get_secret_value") else key
        return base.rstrip("/"), ({"Authorization": f"Bearer {secret}"} if secret else {})
    if spec.provider == "ollama":
        if not hasattr(model, "num_predict"):
            return None
        base = getattr(model, "base_url", None) or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        if "://" not in base:
            base = f"http://{base}"
        headers = dict((getattr(model, "client_kwargs", None) or {}).get("headers") or {})
        return base.rstrip("/"), headers
    return None


def _served(spec: ModelSpec, payload: Any) -> list[str] | None:
    """Model names in a server's model list, or None when the answer is not a list we know."""
    try:
        if spec.provider == "ollama":
            return [m.get("name") or m.get("model") for m in payload["models"]]
        return [m["id"] for m in payload["data"]]
    except (KeyError, TypeError, AttributeError):
        return None


async def _check_listed(spec: ModelSpec, base: str, headers: dict[str, str], timeout: float) -> None:
    """The server answers and serves the model (judged by its model list where it has one)."""
    import httpx

    url = f"{base}/api/tags" if spec.provider == "ollama" else f"{base}/models"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url, headers=headers)
    except Exception as exc:  # connection refused, DNS, timeout
        raise ModelUnavailable(spec.name, f"no answer from {base}: {classify(exc).message}") from None
    if response.status_code in (401, 403):
        raise InputError(f"model {spec.name!r}: the server at {base} refused the key ({response.status_code}); "
                         f"check {_key_hint(spec)}")
    if response.status_code != 200:
        return  # no model list here: the probe decides
    try:
        names = _served(spec, response.json())
    except ValueError:
        return
    if not names:
        return
    wanted = {spec.model, f"{spec.model}:latest"} if spec.provider == "ollama" else {spec.model}
    if not wanted & set(names):
        shown = ", ".join(sorted(str(n) for n in names)[:10])
        hint = f" (pull it with `ollama pull {spec.model}`)" if spec.provider == "ollama" else ""
        raise InputError(f"model {spec.name!r}: the server at {base} does not serve {spec.model!r}{hint}; "
                         f"it serves: {shown}")


def _key_hint(spec: ModelSpec) -> str:
    return f"the environment variable {spec.api_key_env}" if spec.api_key_env else "the server's access settings"


async def _probe(spec: ModelSpec, model: Any, deadline: float) -> TokenUsage:
    """One tiny call answered with any reply; transient errors are retried within the deadline."""
    from agents.structured import backoff_seconds, usage_of

    loop = asyncio.get_running_loop()
    bound = model.bind(options={"num_predict": 8}) if spec.provider == "ollama" else model.bind(max_tokens=8)
    usage = TokenUsage()
    failure: Failure | None = None
    for attempt in range(1, _PROBE_ATTEMPTS + 1):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            message = await asyncio.wait_for(bound.ainvoke([HumanMessage(PROBE_PROMPT)]), remaining)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            usage = usage.add(TokenUsage(calls=1))
            failure = classify(exc)
            if isinstance(exc, asyncio.TimeoutError):
                failure = Failure("timeout", f"no answer within the {spec.timeout:g} s deadline")
            if failure.kind == "auth":
                raise InputError(f"model {spec.name!r}: the key was refused ({failure.message}); check "
                                 f"{_key_hint(spec)}") from None
            if failure.kind == "not_found":
                raise InputError(f"model {spec.name!r}: the server does not know this model ({failure.message})") from None
            if failure.kind == "other":
                raise  # not a fault of the server or the configuration: show it as it is
            if not failure.retryable:
                return usage  # the server answered (with an error about the request): it is reachable
            wait = backoff_seconds(attempt, failure)
            if loop.time() + wait >= deadline:
                break
            await asyncio.sleep(wait)
            continue
        return usage.add(usage_of(message, len(PROBE_PROMPT)))
    raise ModelUnavailable(spec.name, failure.message if failure else f"no answer within {spec.timeout:g} s")


async def ensure_checked(spec: ModelSpec, model: Any, deadline: float) -> TokenUsage:
    """Check the model once per process, before its first uncached call; the usage of the tiny call (else zero)."""
    key = _key(spec)
    if key in _checked:
        return TokenUsage()
    endpoint = _endpoint(spec, model)
    if endpoint is None:
        _checked.add(key)
        return TokenUsage()
    lock_key = (*key, id(asyncio.get_running_loop()))
    lock = _locks.setdefault(lock_key, asyncio.Lock())
    async with lock:
        if key in _checked:
            return TokenUsage()
        base, headers = endpoint
        loop = asyncio.get_running_loop()
        await _check_listed(spec, base, headers, min(LIST_TIMEOUT_S, max(0.1, deadline - loop.time())))
        usage = await _probe(spec, model, deadline)
        _checked.add(key)
        return usage
