"""Structured calls to an OpenAI-compatible server through the openai client itself, for annotating whole corpora.

`diziner annotate` sends thousands of short requests; LangChain's per-call machinery (runnables, callbacks, message
objects, and a JSON schema rebuilt for every call) costs more CPU than the request itself. `DirectCaller` sends
the same chat-completions body the LangChain client would (model, messages, output cap, the spec's output mode,
temperature, frequency penalty) with the openai client's own `post`, and keeps everything else of
`agents.structured`: the persistent call cache and its key, the preflight check before the first uncached call,
one total deadline per call with retries of the errors that can heal (`agents.models.errors.classify`,
`agents.structured.backoff_seconds`), the tolerant reply reader with one re-ask (`agents.replies`), every request
counted in the usage (estimated from text length when the server reports none), and the unusable answer kept.
With LangSmith tracing on, each call is a traced chain and each request a traced `llm` run named after the spec.

Only specs of the ``openai`` provider with output mode json_schema, json or text (`supports`); any other model is
called through `agents.structured`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agents.cache import CallCache, cache_key, chat_messages
from agents.models.clients import endpoint, openai_key
from agents.models.errors import CallError, Failure
from agents.models.preflight import ensure_checked
from agents.models.spec import ModelSpec
from agents.models.usage import read_completion
from state.errors import InputError
from state.graph_state import TokenUsage

if TYPE_CHECKING:  # agents.structured imports this package: imported where called
    from agents.structured import Reply

__all__ = ["DirectCaller", "request_key", "supports"]

_MODES = ("json_schema", "json", "text")


def supports(spec: ModelSpec) -> bool:
    """Whether `DirectCaller` can call this model (an OpenAI-compatible server, an output mode it sends)."""
    return spec.provider == "openai" and spec.output in _MODES


@lru_cache(maxsize=64)
def _schema_json(schema: type[BaseModel]) -> dict[str, Any]:
    """The schema's JSON schema, built once per schema class (shared: never changed by its users)."""
    return schema.model_json_schema()


@lru_cache(maxsize=64)
def _response_format(schema: type[BaseModel], mode: str) -> dict[str, Any] | None:
    """The ``response_format`` the LangChain client sends for this schema and mode, or None (shared, read only)."""
    if mode == "json_schema":
        from agents.models.modes import openai_response_format

        return openai_response_format(schema)
    if mode == "json":
        return {"type": "json_object"}
    return None


def request_key(spec: ModelSpec, schema: type[BaseModel], turns: list[str]) -> str:
    """The call-cache key of a request for `turns` (alternating user and assistant messages): equal to
    `agents.cache.cache_key` of the same request, with the parts that do not change between requests serialised
    once per model and schema (checked against `cache_key` itself; where they would differ, it is called)."""
    messages = chat_messages(turns)
    parts = _key_parts(spec, schema, endpoint(spec))
    if parts is None:
        return cache_key(spec, _schema_json(schema), spec.output, messages)
    head, tail = parts
    text = head + json.dumps(messages, sort_keys=True, ensure_ascii=False) + tail
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=64)
def _key_parts(spec: ModelSpec, schema: type[BaseModel], where: str | None) -> tuple[str, str] | None:
    """The JSON text `cache_key` hashes for requests going to `where` (`agents.models.clients.endpoint`: it depends
    on the environment, so it is part of this function's cache key), split around its messages (the only part that
    changes per request), or None when this split no longer gives `cache_key`'s result."""
    slot = "\x00messages\x00"
    sampling = {"temperature": spec.temperature, "max_tokens": spec.max_tokens,
                "frequency_penalty": spec.profile.frequency_penalty, "context_window": spec.context_window}
    payload = {"model": spec.name, "base_url": where, "sampling": sampling, "mode": spec.output,
               "schema": _schema_json(schema), "messages": slot}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    head, found, tail = text.partition(json.dumps(slot))
    probe = [{"role": "user", "content": "probe \u00e9 \"x\""}, {"role": "assistant", "content": "{}"}]
    mine = hashlib.sha256((head + json.dumps(probe, sort_keys=True, ensure_ascii=False) + tail).encode()).hexdigest()
    if not found or mine != cache_key(spec, _schema_json(schema), spec.output, probe):
        return None
    return head, tail


class DirectCaller:
    """One model's structured calls through the openai client (see the module docstring). The client is built on
    the first call the cache cannot answer, reading the API key as `agents.models.clients` does (a missing key is
    the same InputError); the preflight check (`agents.models.preflight.ensure_checked`) runs before it, through
    the same client."""

    def __init__(self, spec: ModelSpec) -> None:
        if not supports(spec):
            raise InputError(f"model {spec.name!r} cannot be called directly (provider {spec.provider}, output "
                             f"{spec.output}); use the LangChain backend")
        self.spec = spec
        self._client: Any = None
        self._tracing = _tracing_on()

    # ------------------------------------------------------------------ the client

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=openai_key(self.spec),
                base_url=endpoint(self.spec),
                timeout=self.spec.timeout,
                max_retries=0,  # retries are ours, within the call's deadline
            )
        return self._client

    async def aclose(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    def body(self, schema: type[BaseModel], messages: list[dict[str, str]]) -> dict[str, Any]:
        """The chat-completions request body for `messages`, as the LangChain client builds it."""
        spec = self.spec
        body: dict[str, Any] = {"model": spec.model, "stream": False, "messages": messages}
        if spec.max_tokens is not None:
            body["max_completion_tokens"] = spec.max_tokens
        response_format = _response_format(schema, spec.output)
        if response_format is not None:
            body["response_format"] = response_format
        body["temperature"] = spec.temperature
        if spec.profile.frequency_penalty is not None:
            body["frequency_penalty"] = spec.profile.frequency_penalty
        return body

    # ------------------------------------------------------------------ one structured call

    def key(self, schema: type[BaseModel], turns: list[str]) -> str:
        """The call-cache key of a request for `turns` (alternating user and assistant messages)."""
        return request_key(self.spec, schema, turns)

    async def ask(self, schema: type[BaseModel], prompt: str, cache: CallCache | None = None,
                  run_name: str | None = None, metadata: dict[str, Any] | None = None,
                  salvage: Any = None) -> tuple[Any, str]:
        """An answer fitting `schema` (`agents.structured.StructuredAnswer`), with the same policy as
        `agents.structured.invoke_structured` (`salvage` as there), and the call-cache key of its first request."""
        key = self.key(schema, [prompt])
        if self._tracing:
            from langsmith import traceable

            traced = traceable(run_type="chain", name=run_name or "structured call", metadata=metadata or {})
            return await traced(self._ask)(schema, prompt, cache, key, salvage), key
        return await self._ask(schema, prompt, cache, key, salvage), key

    async def _ask(self, schema: type[BaseModel], prompt: str, cache: CallCache | None, key: str,
                   salvage: Any = None) -> Any:
        from agents.structured import answer_policy

        async def complete(turns: list[str], round_trip: int) -> Reply:
            return await self._complete(schema, turns, cache, key if round_trip == 0 else None)

        return await answer_policy(complete, self.spec, schema, prompt, salvage)

    async def _complete(self, schema: type[BaseModel], turns: list[str], cache: CallCache | None,
                        key: str | None) -> Reply:
        """One reply to `turns` (`key`: their cache key when known): from the cache, or from the server within the
        call's deadline; CallError when no reply came."""
        spec = self.spec
        messages = chat_messages(turns)
        if cache is not None and key is None:
            key = self.key(schema, turns)
        from agents.structured import Reply, cached_reply, retry_wait, store_reply, time_left

        hit = cached_reply(cache, key)
        if hit is not None:
            return Reply(*hit, 0)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.timeout
        client = self._openai()  # the key is read here, as for every other call
        usage = await ensure_checked(spec, _CheckedModel(self), deadline)
        body = self.body(schema, messages)
        prompt_chars = sum(len(t) for t in turns)
        attempt = 0
        while True:
            attempt += 1
            remaining = time_left(deadline, spec, usage)
            try:
                async with asyncio.timeout(remaining):
                    answer = await self._send(client, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # provider errors, transport errors, the deadline
                usage = usage.add(TokenUsage(calls=1))
                await asyncio.sleep(retry_wait(exc, attempt, spec, deadline, usage))
                continue
            try:
                text, truncated, filtered, used = read_completion(answer, prompt_chars)
            except (KeyError, IndexError, TypeError, AttributeError) as exc:
                usage = usage.add(TokenUsage(calls=1))
                raise CallError(Failure("server", f"the server's answer is not a chat completion: {exc!r}"),
                                usage) from exc
            usage = usage.add(used)
            if filtered:
                raise CallError(Failure("answer", "the provider's content filter stopped the answer"), usage, text)
            store_reply(cache, key, spec, text, used, truncated)
            return Reply(text, truncated, usage, attempt)

    async def _send(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST the body; the parsed JSON answer (errors are the openai client's exceptions)."""
        import httpx

        if self._tracing:
            from langsmith import traceable

            @traceable(run_type="llm", name=self.spec.name,
                       metadata={"ls_provider": "openai", "ls_model_name": self.spec.model})
            async def chat_completion(messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
                response = await client.post("/chat/completions", cast_to=httpx.Response, body=body)
                return json.loads(response.content)

            return await chat_completion(body["messages"], **{k: v for k, v in body.items() if k != "messages"})
        response = await client.post("/chat/completions", cast_to=httpx.Response, body=body)
        return json.loads(response.content)


class _CheckedModel:
    """What `ensure_checked` reads of a model: its endpoint and key, and `bind(...).ainvoke(messages)` for the tiny
    probe call, answered through the caller's own client."""

    def __init__(self, caller: DirectCaller, **params: Any) -> None:
        self._caller = caller
        self._params = params
        client = caller._openai()
        self.openai_api_base = str(client.base_url)
        self.openai_api_key = client.api_key

    def bind(self, **params: Any) -> _CheckedModel:
        return _CheckedModel(self._caller, **{**self._params, **params})

    async def ainvoke(self, messages: list[Any], config: Any = None) -> Any:
        spec = self._caller.spec
        body: dict[str, Any] = {"model": spec.model, "stream": False,
                                "messages": [{"role": "user", "content": str(m.content)} for m in messages]}
        if "max_tokens" in self._params:
            body["max_completion_tokens"] = self._params["max_tokens"]
        body["temperature"] = spec.temperature
        answer = await self._caller._send(self._caller._openai(), body)
        text, _, _, used = read_completion(answer, sum(len(m["content"]) for m in body["messages"]))
        return _Answer(text, used)


class _Answer:
    """A reply as `agents.structured.usage_of` reads it (content and LangChain's usage metadata)."""

    def __init__(self, text: str, used: TokenUsage) -> None:
        self.content = text
        self.usage_metadata = None if used.estimated_calls else {
            "input_tokens": used.input_tokens, "output_tokens": used.output_tokens,
            "input_token_details": {"cache_read": used.cached_input_tokens}}




def _tracing_on() -> bool:
    """Whether LangSmith tracing is on (LANGSMITH_TRACING / LANGCHAIN_TRACING_V2)."""
    try:
        from langsmith.utils import tracing_is_enabled

        return bool(tracing_is_enabled())
    except Exception:  # an old or missing langsmith traces nothing
        return False
