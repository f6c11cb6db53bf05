"""A scripted chat model for graph tests (control flow only; never part of the product).

`ScriptedChatModel(respond)` answers each call with `respond(prompt, schema_name)` -> dict (serialised as the
JSON answer) or an Exception (raised). It records every prompt it saw. Structured output is implemented as the
real chat-model run followed by parsing, so traces show a genuine LLM run.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda
from pydantic import PrivateAttr


def _schema_name(kwargs: dict[str, Any]) -> str:
    """The output schema's name from how the call layer bound it (response_format, format or tools)."""
    fmt = kwargs.get("response_format")
    if isinstance(fmt, dict):
        return str((fmt.get("json_schema") or {}).get("name", ""))
    ollama = kwargs.get("format")
    if isinstance(ollama, dict):
        return str(ollama.get("title", ""))
    tools = kwargs.get("tools") or []
    return str(tools[0].get("function", {}).get("name", "")) if tools else ""


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
        schema = kwargs.get("schema_name") or _schema_name(kwargs)
        with self._lock:
            self._calls.append((prompt, schema))
        answer = self.respond(prompt, schema)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, AIMessage):  # a reply with its own metadata (e.g. cut at the output cap)
            return ChatResult(generations=[ChatGeneration(message=answer)])
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


# ---------------------------------------------------------------- scripted annotator teams

CAPITALISED = r"\b[A-Z][a-z]+\b"

POLITICS_SENTENCES = [
    "Barack Obama met Angela Merkel in Berlin .",
    "The Labour Party won the 1997 election .",
    "Paris is the capital of France .",
    "Nicolas Sarkozy led the UMP .",
    "The Senate met in Washington .",
    "Boris Johnson spoke in London .",
    "The Green Party of Canada held a rally .",
    "Helmut Kohl visited Moscow in 1990 .",
]

# a task with a label mapping (``.format(name=...)``), for runs evaluated on CoNLL files
POLITICS_TASK = """\
name: {name}
entity_types:
  - name: POLITICIAN
    definition: A person active in politics.
  - name: LOCATION
    definition: A place.
final_task_goal: Mark politicians and places.
label_mapping:
  politician: POLITICIAN
  location: LOCATION
"""


def write_pool(path: Path, texts: Iterable[str] = POLITICS_SENTENCES) -> Path:
    """`texts` as a JSONL pool of documents ``d0``, ``d1``, ...; returns `path`."""
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path


SUPERVISOR_BASICS: dict[str, Any] = {
    "PatternAnalysis": {"summary": "s", "patterns": [{"name": "p1"}], "principles": [{"text": "prefer POLITICIAN"}]},
    "AnnotatorDiagnosis": {"tendencies": ["x"], "needs": [{"text": "n"}]},
}


def document_of(prompt: str) -> str:
    """The fenced document of an annotator prompt."""
    return prompt.split("<document>\n", 1)[1].split("\n</document>", 1)[0]


def tag_words(doc: str, odd_type: str, even_type: str, pattern: str = CAPITALISED) -> dict[str, Any]:
    """Every word matching `pattern` as an entity, typed alternately (the first one `even_type`)."""
    words = re.findall(pattern, doc)
    return {"entities": [{"text": w, "type": odd_type if i % 2 else even_type} for i, w in enumerate(words)]}


def responder(annotate: Callable[[str], Any], supervisor: dict[str, Any]) -> Callable[[str, str], Any]:
    """`respond(prompt, schema)`: annotator prompts go to `annotate(prompt)`, a supervisor phase's schema is looked
    up in `supervisor` (an answer, or a function of the prompt), falling back on SUPERVISOR_BASICS."""
    answers = {**SUPERVISOR_BASICS, **supervisor}

    def respond(prompt: str, schema: str) -> Any:
        if schema == "Entities":
            return annotate(prompt)
        if schema not in answers:
            return ValueError(f"no scripted answer for {schema}")
        answer = answers[schema]
        return answer(prompt) if callable(answer) else answer

    return respond


class ScriptedModels:
    """The injected chat-model factory: one ScriptedChatModel per spec name, answering with `respond_for(name)`."""

    def __init__(self, respond_for: Callable[[str], Callable[[str, str], Any]]) -> None:
        self.respond_for = respond_for
        self.by_name: dict[str, ScriptedChatModel] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: Any) -> ScriptedChatModel:
        with self._lock:
            if spec.name not in self.by_name:
                self.by_name[spec.name] = ScriptedChatModel(respond=self.respond_for(spec.name))
            return self.by_name[spec.name]

    def calls(self, name: str, schema: str | None = None) -> list[str]:
        model = self.by_name.get(name)
        return [p for p, s in (model.calls if model else []) if schema is None or s == schema]
