"""One structured call to a model, as the annotator agents and the supervisor phases make it.

Per call: the persistent cache first (`agents.cache`: a hit is never sent); before a model's first call that the
cache cannot answer, its preflight check (`agents.models.preflight`); then attempts within one total deadline
(`spec.timeout`, from the first attempt to the last retry, back-off included) with exponential back-off and jitter
that honours Retry-After, retrying only errors that can heal (`agents.models.errors.classify`); the reply is read by
the tolerant parser (`agents.replies`: reasoning blocks, code fences, prose around the JSON), and a complete reply
that does not fit the schema gets one re-ask quoting the validation error. Every request sent is counted in the
usage, failed ones and the preflight check included; tokens come from the provider's usage fields, or are estimated
from text length (and counted as estimated). The unusable answer is always kept.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from pydantic import BaseModel

from agents.cache import CachedReply, CallCache, cache_key, chat_messages
from agents.models import ModelHandle, ModelSpec
from agents.models.errors import CallError, Failure, classify
from agents.models.modes import bind_output, reply_parts
from agents.models.preflight import ensure_checked
from agents.models.usage import estimated_usage
from agents.replies import read_reply, reask_message
from state.graph_state import TokenUsage

CHARS_PER_TOKEN = 3.0  # conservative estimate for prompt budgeting
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


def fits_context(spec: ModelSpec, prompt: str) -> bool:
    """Whether `prompt` plus the output cap fits the model's context (always, when the context is unknown)."""
    if spec.context_window is None:
        return True
    return len(prompt) / CHARS_PER_TOKEN <= spec.context_window - (spec.max_tokens or 0)


def trace_config(run_name: str, tags: list[str], **metadata: Any) -> dict[str, Any]:
    """The call's run name, tags and metadata (round, annotator, phase), so a LangSmith trace reads like the method."""
    return {"run_name": run_name, "tags": tags, "metadata": metadata}


@dataclass
class StructuredAnswer:
    """One structured call's outcome: the parsed answer or why it failed, with the tokens every request used."""

    parsed: BaseModel | None  # None: the call failed, see `reason`
    usage: TokenUsage
    reason: str  # why it failed ("" on success)
    raw_text: str | None  # the model's last answer, when there was one
    attempts: int  # requests made for it (cache hits excluded)
    failure: Failure | None = None  # how it failed, for a call that got no usable reply at all
    salvaged: int = 0  # items the caller's salvage left out of an answer that did not fit the schema whole


@dataclass(slots=True)
class Reply:
    """One model reply to a conversation: its text, whether the output cap cut it, the usage, the attempts it took
    (0: from the cache)."""

    text: str
    truncated: bool
    usage: TokenUsage
    attempts: int


def cached_reply(cache: CallCache | None, key: str | None) -> tuple[str, bool, TokenUsage] | None:
    """(text, cut at the cap, usage as a cache hit) of a stored reply, or None."""
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is None:
        return None
    return hit.text, hit.truncated, TokenUsage(cache_hits=1, cache_input_tokens=hit.input_tokens,
                                               cache_output_tokens=hit.output_tokens)


def usage_of(message: Any, prompt_chars: int) -> TokenUsage:
    """The usage a reply reports (input, cached input, output tokens); estimated from text length when absent."""
    meta = getattr(message, "usage_metadata", None) or {}
    if not meta:
        return estimated_usage(prompt_chars, str(getattr(message, "content", "") or ""))
    details = meta.get("input_token_details") or {}
    return TokenUsage(input_tokens=int(meta.get("input_tokens", 0) or 0),
                      cached_input_tokens=int(details.get("cache_read", 0) or 0),
                      output_tokens=int(meta.get("output_tokens", 0) or 0), calls=1)


def _completion_reply(exc: BaseException, prompt_chars: int) -> tuple[str, TokenUsage] | None:
    """The answer an openai SDK kept on a finish-reason error (answer cut at the cap), with its usage."""
    completion = getattr(exc, "completion", None)
    if completion is None:
        return None
    try:
        text = completion.choices[0].message.content or ""
    except (AttributeError, IndexError):
        text = ""
    used = getattr(completion, "usage", None)
    if used is None:
        return text, usage_of(AIMessage(content=text), prompt_chars)
    details = getattr(used, "prompt_tokens_details", None)
    return text, TokenUsage(input_tokens=int(getattr(used, "prompt_tokens", 0) or 0),
                            cached_input_tokens=int(getattr(details, "cached_tokens", 0) or 0) if details else 0,
                            output_tokens=int(getattr(used, "completion_tokens", 0) or 0), calls=1)


def backoff_seconds(attempt: int, failure: Failure) -> float:
    """Wait before retry `attempt` (1-based): the server's Retry-After, else exponential with full jitter."""
    if failure.retry_after is not None:
        return failure.retry_after
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def deadline_failure(spec: ModelSpec) -> Failure:
    return Failure("timeout", f"no answer within the {spec.timeout:g} s deadline")


def time_left(deadline: float, spec: ModelSpec, usage: TokenUsage) -> float:
    """The seconds left before the call's `deadline` (loop time); raises CallError when none are."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise CallError(deadline_failure(spec), usage)
    return remaining


def retry_wait(exc: Exception, attempt: int, spec: ModelSpec, deadline: float, usage: TokenUsage) -> float:
    """The seconds to wait before attempt `attempt + 1` after `exc`; raises CallError when the call must stop: the
    failure is not retryable, the retries are spent, or the wait would pass the call's `deadline` (loop time)."""
    failure = deadline_failure(spec) if isinstance(exc, TimeoutError) else classify(exc)
    if not failure.retryable or attempt > spec.max_retries:
        raise CallError(failure, usage) from exc
    wait = backoff_seconds(attempt, failure)
    if asyncio.get_running_loop().time() + wait >= deadline:
        raise CallError(Failure(failure.kind, f"{failure.message} (no time left for a retry within the "
                                f"{spec.timeout:g} s deadline)", failure.status), usage) from exc
    return wait


async def _complete(
    model_now: Any, spec: ModelSpec, schema: type[BaseModel], turns: list[str], config: dict[str, Any] | None,
    cache: CallCache | None,
) -> Reply:
    """One reply to `turns` (alternating user and assistant messages): from the cache, or from the model within the
    call's deadline. Raises CallError when no reply came."""
    schema_json = schema.model_json_schema()
    key = cache_key(spec, schema_json, spec.output, chat_messages(turns)) if cache else None
    hit = await asyncio.to_thread(cached_reply, cache, key) if cache is not None else None  # disk: off the loop
    if hit is not None:
        return Reply(*hit, 0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + spec.timeout
    model = await model_now()
    usage = await ensure_checked(spec, model, deadline)
    messages: list[BaseMessage] = [HumanMessage(t) if i % 2 == 0 else AIMessage(t) for i, t in enumerate(turns)]
    prompt_chars = sum(len(t) for t in turns)
    bound = bind_output(model, spec, schema)
    attempt = 0
    while True:
        attempt += 1
        remaining = time_left(deadline, spec, usage)
        try:
            message = await asyncio.wait_for(bound.ainvoke(messages, config=config), remaining)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # provider errors, timeouts, an answer cut at the token cap
            kept = _completion_reply(exc, prompt_chars)
            if kept is not None:
                text, used = kept
                usage = usage.add(used)
                truncated = type(exc).__name__ == "LengthFinishReasonError"
                if truncated:
                    await asyncio.to_thread(store_reply, cache, key, spec, text, used, truncated)
                    return Reply(text, truncated, usage, attempt)
            else:
                usage = usage.add(TokenUsage(calls=1))
            await asyncio.sleep(retry_wait(exc, attempt, spec, deadline, usage))
            continue
        text, _reasoning, truncated = reply_parts(message)
        used = usage_of(message, prompt_chars)
        usage = usage.add(used)
        if cache is not None:
            await asyncio.to_thread(store_reply, cache, key, spec, text, used, truncated)
        return Reply(text, truncated, usage, attempt)


def store_reply(cache: CallCache | None, key: str | None, spec: ModelSpec, text: str, used: TokenUsage,
                truncated: bool) -> None:
    if cache is not None and key is not None:
        cache.put(key, spec.name, CachedReply(text, used.input_tokens, used.cached_input_tokens, used.output_tokens,
                                              truncated))


async def invoke_structured(
    model: BaseChatModel | ModelHandle,
    spec: ModelSpec,
    schema: type[BaseModel],
    prompt: str,
    config: dict[str, Any] | None = None,
    cache: CallCache | None = None,
    salvage: Any = None,
) -> StructuredAnswer:
    """Ask `model` for an answer fitting `schema` (see the module docstring for the policy). `salvage(text)` may
    turn a reply that does not fit the schema whole into (answer, items left out), before any re-ask."""

    async def run(prompt_text: str, config: dict[str, Any] | None = None) -> StructuredAnswer:
        return await _ask(model, spec, schema, prompt_text, config, cache, salvage)

    # one traced run per call (named by the caller's run_name), the model's requests as its children
    return await RunnableLambda(run, name="structured call").ainvoke(prompt, config=config)


async def _ask(model, spec, schema, prompt, config, cache, salvage=None) -> StructuredAnswer:
    if isinstance(model, ModelHandle):
        handle = model

        async def model_now() -> BaseChatModel:
            return await handle.get()
    else:
        async def model_now() -> BaseChatModel:
            return model

    child = {k: v for k, v in (config or {}).items() if k not in ("run_name",)} if config else None

    async def complete(turns: list[str], round_trip: int) -> Any:
        return await _complete(model_now, spec, schema, turns, child, cache)

    return await answer_policy(complete, spec, schema, prompt, salvage)


async def answer_policy(complete: Any, spec: ModelSpec, schema: type[BaseModel], prompt: str,
                        salvage: Any = None) -> StructuredAnswer:
    """The answer policy every call path shares: read the reply tolerantly; salvage it when the caller can; a complete
    reply that does not fit gets one re-ask quoting the error; an answer cut at the cap is asked again only of a
    sampling model. `complete(turns, round_trip)` returns a reply (`.text`, `.truncated`, `.usage`, `.attempts`) or
    raises CallError."""
    turns = [prompt]
    usage, attempts, raw, error = TokenUsage(), 0, None, ""
    for round_trip in range(2):
        try:
            reply = await complete(turns, round_trip)
        except CallError as exc:
            usage = usage.add(exc.usage or TokenUsage())
            attempts += 1 if exc.usage is None else exc.usage.calls
            return StructuredAnswer(None, usage, f"after {max(attempts, 1)} attempt{'s' if attempts != 1 else ''}: "
                                    f"{exc.failure.message}", raw, attempts, exc.failure)
        usage, attempts, raw = usage.add(reply.usage), attempts + reply.attempts, reply.text
        parsed, error = read_reply(reply.text, schema)
        if parsed is not None:
            return StructuredAnswer(parsed, usage, "", raw, attempts)
        rescued = salvage(reply.text) if salvage is not None and not reply.truncated else None
        if rescued is not None:
            return StructuredAnswer(rescued[0], usage, "", raw, attempts, salvaged=rescued[1])
        if reply.truncated:
            error = f"answer cut at the output cap ({spec.max_tokens} tokens): {error}"
            if spec.deterministic or round_trip == 1:
                break
            continue  # a sampling model may finish next time: ask again, the same prompt
        if round_trip == 0:
            turns = [prompt, reply.text, reask_message(error)]
    return StructuredAnswer(None, usage, f"unusable answer: {error}"[:500], raw, attempts)

