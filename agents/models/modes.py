"""How a model is asked for JSON, per provider, and how its reply is read back as text.

Modes (a spec's ``output``): ``json_schema`` (structured output: OpenAI-compatible ``response_format`` with the
schema, which llama.cpp turns into a grammar; Ollama's ``format`` with the schema), ``json`` (JSON mode, no schema),
``tools`` (one forced tool call whose arguments are the answer) and ``text`` (nothing bound: the prompt asks for JSON
and the tolerant reader `agents.replies` finds it). Whatever the mode, the caller parses the reply text itself, so an
unusable answer is always kept.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["OutputMode", "bind_output", "reply_parts"]

OutputMode = Literal["json_schema", "json", "tools", "text"]


def openai_response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """The strict ``response_format`` the openai SDK sends for a Pydantic class (LangChain's structured output)."""
    from openai.lib._parsing._completions import type_to_response_format_param

    return dict(type_to_response_format_param(schema))


def bind_output(model: Any, spec: Any, schema: type[BaseModel]) -> Any:
    """`model` bound so that its reply carries the JSON answer in the spec's output mode."""
    mode: OutputMode = spec.output
    if mode == "text":
        return model
    if mode == "tools":
        return model.bind_tools([schema], tool_choice=schema.__name__)
    if spec.provider == "ollama":
        return model.bind(format=schema.model_json_schema() if mode == "json_schema" else "json")
    if mode == "json_schema":
        return model.bind(response_format=openai_response_format(schema))
    return model.bind(response_format={"type": "json_object"})


def reply_parts(message: Any) -> tuple[str, str | None, bool]:
    """(answer text, reasoning text or None, cut at the output cap) of a chat model's reply message."""
    tool_calls = getattr(message, "tool_calls", None) or []
    content = getattr(message, "content", "")
    if isinstance(content, list):  # content blocks
        content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    text = json.dumps(tool_calls[0].get("args", {}), ensure_ascii=False) if tool_calls else str(content or "")
    extra = getattr(message, "additional_kwargs", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or None
    meta = getattr(message, "response_metadata", None) or {}
    reason = meta.get("finish_reason") or meta.get("done_reason")
    return text, reasoning if isinstance(reasoning, str) else None, reason == "length"
