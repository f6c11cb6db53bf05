"""A scripted chat model for graph tests (control flow only; never part of the product).

`ScriptedChatModel(respond)` answers each call with `respond(prompt, schema_name)` -> dict (serialised as the
JSON answer) or an Exception (raised). It records every prompt it saw. Structured output is implemented as the
real chat-model run followed by parsing, so traces show a genuine LLM run.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda
from pydantic import PrivateAttr


class ScriptedChatModel(BaseChatModel):
    respond: Callable[[str, str], Any]
    _calls: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _schema: str = PrivateAttr(default="")

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[tuple[str, str]]:
        return self._calls

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        prompt = "\n".join(str(m.content) for m in messages)
        schema = kwargs.get("schema_name", "")
        with self._lock:
            self._calls.append((prompt, schema))
        answer = self.respond(prompt, schema)
        if isinstance(answer, Exception):
            raise answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        msg = AIMessage(content=text, usage_metadata={"input_tokens": len(prompt) // 4, "output_tokens": len(text) // 4, "total_tokens": (len(prompt) + len(text)) // 4})
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def with_structured_output(self, schema, *, method: str = "json_schema", include_raw: bool = False, **kwargs: Any):
        bound = self.bind(schema_name=schema.__name__)

        def parse(msg: AIMessage) -> dict[str, Any]:
            try:
                parsed = schema.model_validate_json(msg.content)
                return {"raw": msg, "parsed": parsed, "parsing_error": None}
            except Exception as exc:  # noqa: BLE001
                return {"raw": msg, "parsed": None, "parsing_error": exc}

        return bound | RunnableLambda(parse, name="parse")
