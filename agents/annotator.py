"""The annotator agent: one model labels one document under its configuration Θ_k (docs/method.md#annotator-prompt-and-call).

Structured output whose entity type is an enum of the task's types, then grounding of each entity string onto
the text (model offsets are never trusted). A failure is recorded with its reason, never as "no entities".
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, create_model

from agents.cache import CallCache
from agents.guideline import render_instructions, render_types
from agents.models import ModelHandle, ModelSpec
from agents.structured import fits_context, invoke_structured, trace_config
from corpus.tokens import ground
from prompts import fence, render
from state.graph_state import TokenUsage
from state.models import AnnotatorOutput, Document, Span, TaskConfiguration

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def entity_schema(types: tuple[str, ...], max_entities: int | None = None, max_chars: int | None = None) -> type[BaseModel]:
    """`{"entities": [{"text": str, "type": <enum of the task's types>}]}` as a Pydantic model.

    Closed (``additionalProperties: false``): a grammar built from an open schema lets a small model invent keys
    and run on until its token cap. `entities` is required, so an answer without it (a bare ``{}``) is a failure,
    never "no entities". Grammar-constrained small models get the entity count and text length bounded (their
    profile; docs/embedded-models.md)."""
    closed = ConfigDict(extra="forbid")
    type_enum = enum.Enum("EntityTypeName", [(t, t) for t in types], type=str)
    entity = create_model(
        "Entity",
        __config__=closed,
        text=(str, Field(max_length=max_chars, description="the entity exactly as written in the document")),
        type=(type_enum, Field(description="one of the entity types")),
    )
    return create_model(
        "Entities",
        __config__=closed,
        entities=(list[entity], Field(max_length=max_entities, description="every entity mention, in order; [] if none")),
    )


def schema_for(spec: ModelSpec, types: tuple[str, ...]) -> type[BaseModel]:
    """The annotator's output schema, bounded as the model's profile says."""
    return entity_schema(types, spec.profile.max_entities, spec.profile.max_entity_chars)


def keep_known_types(text: str, schema: type[BaseModel], types: tuple[str, ...]) -> tuple[BaseModel, int] | None:
    """An answer whose only fault is entities of types outside the schema: those entities left out, and counted."""
    from agents.replies import ReplyError, parse_reply

    try:
        data = parse_reply(text)
    except ReplyError:
        return None
    entities = data.get("entities") if isinstance(data, dict) else None
    if not isinstance(entities, list):
        return None
    known = [e for e in entities if isinstance(e, dict) and e.get("type") in types]
    if len(known) == len(entities):
        return None  # something else is wrong: let the re-ask quote it
    try:
        return schema.model_validate({**data, "entities": known}), len(entities) - len(known)
    except ValueError:
        return None


def annotator_prompt(configuration: TaskConfiguration, text: str, round_: int, annotator: str, with_examples: bool = True) -> str:
    """The annotator's prompt for one document under Θ_k (prompts/annotator.md), the document fenced."""
    types = configuration.schema_
    if not with_examples:
        types = [t.model_copy(update={"positive_examples": [], "negative_examples": []}) for t in types]
    blocks = ""
    if configuration.common_instructions:
        blocks += "\n### Instructions\n" + render_instructions(configuration.common_instructions) + "\n"
    if configuration.annotator_instructions:
        blocks += "\n### Instructions for you\n" + render_instructions(configuration.annotator_instructions) + "\n"
    refined = configuration.common_instructions or configuration.annotator_instructions
    return render(
        "annotator",
        round_note=f" (round {round_}, refined guideline)" if refined else "",
        goal=configuration.goal.strip(),
        types=render_types(types),
        instructions=blocks,
        document=fence(text),
    )


def fit_annotator_prompt(spec: ModelSpec, configuration: TaskConfiguration, text: str, round_: int) -> tuple[str, bool]:
    """The prompt, trimmed of the type examples (never the instructions) when it would overflow the context."""
    prompt = annotator_prompt(configuration, text, round_, spec.name)
    if fits_context(spec, prompt):
        return prompt, False
    log.warning("prompt for %s exceeds its context (%d tokens): type examples left out", spec.name, spec.context_window)
    return annotator_prompt(configuration, text, round_, spec.name, with_examples=False), True


async def annotate_document(
    model: BaseChatModel | ModelHandle,
    spec: ModelSpec,
    configuration: TaskConfiguration,
    document: Document,
    round_: int,
    config: dict[str, Any] | None = None,
    cache: CallCache | None = None,
) -> tuple[AnnotatorOutput, TokenUsage]:
    """One annotator on one document (the call's policy: `agents.structured`)."""
    types = tuple(t.name for t in configuration.schema_)
    schema = schema_for(spec, types)
    prompt, _ = fit_annotator_prompt(spec, configuration, document.text, round_)
    answer = await invoke_structured(model, spec, schema, prompt, config=config, cache=cache,
                                     salvage=lambda text: keep_known_types(text, schema, types))
    if answer.parsed is None:
        output = AnnotatorOutput(
            annotator=spec.name, document_id=document.id, status="failed", reason=answer.reason, raw=answer.raw_text,
            error_kind=answer.failure.kind if answer.failure else "answer",
        )
        return output, answer.usage
    grounding = ground(document.text, [(e.text, e.type.value) for e in answer.parsed.entities])
    output = AnnotatorOutput(
        annotator=spec.name,
        document_id=document.id,
        status="ok",
        spans=[Span(start=s, end=e, type=t) for s, e, t in grounding.spans],
        raw=answer.raw_text,
        not_found=grounding.not_found,
        dropped_types=answer.salvaged,
    )
    return output, answer.usage


async def annotate_documents(
    model: BaseChatModel | ModelHandle,
    spec: ModelSpec,
    configuration: TaskConfiguration,
    documents: list[Document],
    round_: int,
    config_for: Any = None,
    cache: CallCache | None = None,
    on_done: Callable[[AnnotatorOutput, TokenUsage], None] | None = None,
) -> tuple[list[AnnotatorOutput], TokenUsage]:
    """All pilot documents for one annotator, at most `spec.concurrency` requests in flight."""
    gate = asyncio.Semaphore(max(1, spec.concurrency))

    async def one(doc: Document) -> tuple[AnnotatorOutput, TokenUsage]:
        async with gate:
            cfg = config_for(doc) if config_for else None
            output, usage = await annotate_document(model, spec, configuration, doc, round_, config=cfg, cache=cache)
        if on_done is not None:
            on_done(output, usage)
        return output, usage

    results = await asyncio.gather(*(one(d) for d in documents))
    total = TokenUsage()
    for _, u in results:
        total = total.add(u)
    return [o for o, _ in results], total


async def run_annotator(
    factory: Callable[[ModelSpec], BaseChatModel],
    spec: ModelSpec,
    configuration: TaskConfiguration,
    documents: list[Document],
    round_: int,
    *,
    phase: str = "annotate",
    on_start: Callable[[Document], None] | None = None,
    on_done: Callable[[AnnotatorOutput, TokenUsage], None] | None = None,
    cache: CallCache | None = None,
) -> tuple[list[AnnotatorOutput], TokenUsage]:
    """One annotator on many documents, as the graph's `annotate` node and `diziner annotate` both run it: the model
    built on its first uncached call and named after its spec, every call traced with round, annotator, document
    and phase. A model that cannot be built (a missing key) or fails its check raises (InputError or
    ModelUnavailable): an error of the run, not of documents."""
    model = ModelHandle(factory, spec)
    tags = ["annotator", spec.name] + ([phase] if phase != "annotate" else [])

    def config_for(doc: Document) -> dict[str, Any]:
        if on_start is not None:
            on_start(doc)
        return trace_config(
            f"annotate {doc.id}", tags, round=round_, annotator=spec.name, document=doc.id, phase=phase
        )

    return await annotate_documents(model, spec, configuration, documents, round_, config_for, cache, on_done)
