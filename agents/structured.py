"""One structured-output call with retries, and the prompt budget, shared by the annotator agents and the
supervisor phases."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ValidationError

from agents.models import ModelSpec
from state.graph_state import TokenUsage

_ANSWER_ERRORS = ("LengthFinishReasonError", "ContentFilterFinishReasonError")
CHARS_PER_TOKEN = 3.0  # conservative estimate for prompt budgeting


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
    """One structured call's outcome: the parsed answer or why it failed, with the tokens every attempt used."""
    parsed: BaseModel | None  # None: every attempt failed, see `reason`
    usage: TokenUsage
    reason: str  # why the last attempt failed ("" on success)
    raw_text: str | None  # the model's last raw answer, when there was one
    attempts: int  # attempts made


def usage_of(message: Any) -> TokenUsage:
    """The token usage a LangChain message reports (zeros where the server gave none)."""
    meta = getattr(message, "usage_metadata", None) or {}
    return TokenUsage(input_tokens=int(meta.get("input_tokens", 0)), output_tokens=int(meta.get("output_tokens", 0)), calls=1)


def _completion_usage(completion: Any) -> TokenUsage:
    used = getattr(completion, "usage", None)
    return TokenUsage(
        input_tokens=int(getattr(used, "prompt_tokens", 0) or 0), output_tokens=int(getattr(used, "completion_tokens", 0) or 0), calls=1
    )


def _completion_text(completion: Any) -> str | None:
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError):
        return None
    return content if isinstance(content, str) else None


def is_answer_error(exc: BaseException) -> bool:
    """True when the model answered but the answer is unusable (token cap reached, invalid output)."""
    return isinstance(exc, (OutputParserException, ValidationError, ValueError)) or type(exc).__name__ in _ANSWER_ERRORS


async def invoke_structured(
    model: BaseChatModel,
    spec: ModelSpec,
    schema: type[BaseModel],
    prompt: str,
    config: dict[str, Any] | None = None,
    attempts: int = 2,
) -> StructuredAnswer:
    """Ask for `schema`; retry a failed call up to `attempts - 1` times.

    ``json_schema`` for every model: OpenAI-compatible servers take it as structured output (llama.cpp turns it into
    a grammar), ChatOllama passes it as Ollama's ``format``. An unusable answer from a deterministic model is not
    retried: the same prompt would give the same answer."""
    runnable = model.with_structured_output(schema, method="json_schema", include_raw=True)
    usage, reason, raw_text, made = TokenUsage(), "no attempt made", None, 0
    for made in range(1, attempts + 1):
        try:
            result = await runnable.ainvoke([HumanMessage(content=prompt)], config=config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # provider errors, timeouts, answers cut at the token cap
            reason = f"{type(exc).__name__}: {exc}"[:500]
            completion = getattr(exc, "completion", None)  # openai's LengthFinishReasonError keeps the answer
            if completion is not None:
                usage = usage.add(_completion_usage(completion))
                raw_text = _completion_text(completion) or raw_text
            if spec.deterministic and is_answer_error(exc):
                break
            continue
        raw = result.get("raw")
        usage = usage.add(usage_of(raw))
        content = getattr(raw, "content", None) if raw is not None else None
        raw_text = content if isinstance(content, str) else raw_text
        if result.get("parsed") is not None:
            return StructuredAnswer(result["parsed"], usage, "", raw_text, made)
        err = result.get("parsing_error")
        reason = f"unparseable answer: {err}"[:500] if err else "empty answer"
        if spec.deterministic:
            break
    return StructuredAnswer(None, usage, f"after {made} attempt{'s' if made != 1 else ''}: {reason}", raw_text, made)
