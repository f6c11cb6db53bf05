"""Graph nodes: small adapters between the state and the pure core (engine, pilot sampler, agents).

Node functions are named like their nodes. Model calls go through a `ModelFactory` bound by the builder, so
the CLI, the server and the tests share the same nodes with their own models.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send
from pydantic import BaseModel, Field

from agents import supervisor as sup
from agents.annotator import annotate_documents
from agents.guideline import change_ratio, configuration_for, enforce_caps, guideline_markdown
from agents.models import ModelSpec, load_run_config, parse_model_spec, supervisor_spec
from graph.context import DizinerContext, get_context
from graph.routing import select_configuration, stop_decision
from state.errors import InputError
from state.graph_state import GOAL_REFUSED, DizinerState, Guideline, RoundRecord, Selection, SupervisorRound, TokenUsage
from state.models import AgreementStats, AnnotatorOutput, DisagreementReport, Document, Hotspot, Span, TaskConfiguration

ModelFactory = Callable[[ModelSpec], BaseChatModel]


# ---------------------------------------------------------------- models from the context


def model_specs(ctx: DizinerContext) -> tuple[dict[str, ModelSpec], ModelSpec]:
    """Annotator specs by name (in the context's order) and the supervisor's spec."""
    if ctx.run_config:
        rc = load_run_config(ctx.run_config)
        return {s.name: s for s in rc.annotators}, rc.supervisor
    return {a: parse_model_spec(a) for a in ctx.annotators}, supervisor_spec(ctx.supervisor)


async def get_model(factory: ModelFactory, spec: ModelSpec) -> BaseChatModel:
    """Build (possibly starting an embedded server: blocking) off the event loop; name runs after the model."""
    model = await asyncio.to_thread(factory, spec)
    try:
        return model.model_copy(update={"name": spec.name})
    except Exception:  # a model class that cannot be copied keeps its own name
        return model


def call_config(name: str, tags: list[str], **metadata: Any) -> dict[str, Any]:
    return {"run_name": name, "tags": tags, "metadata": metadata}


# ---------------------------------------------------------------- pilot set


class AnnotateTask(BaseModel):
    """The payload of one annotator branch (a LangGraph Send)."""

    annotator: str
    round: int
    documents: list[Document]
    configuration: TaskConfiguration


def select_pilot(state: DizinerState, runtime: Runtime[DizinerContext]) -> dict[str, Any]:
    """Draw the next pilot set (lexically diverse, disjoint while the pool allows) and open a new round."""
    from corpus.pilot import select_pilot as choose

    ctx = get_context(runtime)
    specs, _ = model_specs(ctx)  # bad specs fail here, before any model runs
    if len(specs) < 2:
        raise InputError(f"at least two annotators are needed, got {list(specs)}")
    round_ = state.round + 1
    chosen = choose([d.text for d in state.documents], ctx.pilot_size, ctx.seed, round_ - 1, state.pilot_history)
    return {
        "annotators": list(specs),
        "round": round_,
        "pilot_history": [*state.pilot_history, list(chosen)],
        "annotations": Overwrite([]),
        "usage": Overwrite({}),
        "report": None,
        "guidelines_used": [*state.guidelines_used, state.guideline],
    }


def assign_annotators(state: DizinerState) -> list[Send]:
    """Fan out: every annotator labels every pilot document under its own configuration Θ_k."""
    pilot = [state.documents[i] for i in state.pilot_history[-1]]
    docs = [Document(id=d.id, text=d.text) for d in pilot]
    return [
        Send(
            "annotate",
            AnnotateTask(
                annotator=name,
                round=state.round,
                documents=docs,
                configuration=configuration_for(state.task, state.guideline, name),
            ),
        )
        for name in state.annotators
    ]


# ---------------------------------------------------------------- annotators


async def annotate(task: AnnotateTask, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """One annotator agent: all pilot documents, concurrently up to the model's limit."""
    ctx = get_context(runtime)
    specs, _ = model_specs(ctx)
    spec = specs[task.annotator]
    started = time.perf_counter()
    try:
        model = await get_model(models, spec)
    except InputError as exc:  # e.g. a missing API key: every document fails with that reason
        outputs = [
            AnnotatorOutput(annotator=spec.name, document_id=d.id, status="failed", reason=str(exc)) for d in task.documents
        ]
        return {"annotations": outputs, "usage": {spec.name: TokenUsage()}}

    def config_for(doc: Document) -> dict[str, Any]:
        return call_config(
            f"annotate {doc.id}", ["annotator", spec.name], round=task.round, annotator=spec.name, document=doc.id, phase="annotate"
        )

    outputs, usage = await annotate_documents(model, spec, task.configuration, task.documents, task.round, config_for)
    usage.seconds = time.perf_counter() - started
    return {"annotations": outputs, "usage": {spec.name: usage}}


# ---------------------------------------------------------------- the deterministic node


def analyze_disagreement(state: DizinerState, runtime: Runtime[DizinerContext]) -> dict[str, Any]:
    """The engine on this round's annotations; appends the round's figures and decides whether to stop."""
    from disagreement.engine import AnnotationBatch, EngineParams, analyze
    from disagreement.io import agreement_figures, hotspot_kinds
    from disagreement.report import ReportParams, annotator_error_report, build_report, render_markdown

    ctx = get_context(runtime)
    started = time.perf_counter()
    pilot = [state.documents[i] for i in state.pilot_history[-1]]
    by_key = {(o.annotator, o.document_id): o for o in state.annotations}
    names = list(state.annotators)
    docs = []
    for d in pilot:
        ann: dict[str, list[tuple[int, int, str]] | None] = {}
        for name in names:
            o = by_key.get((name, d.id))
            ann[name] = None if o is None or o.status != "ok" else [(s.start, s.end, s.type) for s in o.spans]
        docs.append((d.id, d.text, ann))
    failed = {n: sum(1 for _, _, a in docs if a[n] is None) for n in names}
    succeeded = {n: len(docs) - failed[n] for n in names}
    predicted = {n: sum(len(a[n] or []) for _, _, a in docs) for n in names}
    record = RoundRecord(
        round=state.round,
        pilot=[d.id for d in pilot],
        failed=failed,
        succeeded=succeeded,
        predicted_spans=predicted,
        token_usage=dict(state.usage),
    )
    report = None
    try:
        result = analyze(AnnotationBatch.from_documents(docs, annotators=names), EngineParams(percentile=ctx.percentile))
    except InputError as exc:
        record.error = str(exc)
    else:
        params = ReportParams(max_examples_per_type=ctx.max_report_examples)
        structured = build_report(result, params)
        compact = ReportParams(max_examples_per_type=min(2, ctx.max_report_examples))
        stats = AgreementStats(**agreement_figures(result))
        ids = result.batch.doc_ids
        hotspots = [
            Hotspot(
                document_id=ids[h.doc], start=h.start, end=h.end, token_start=h.token_start, token_end=h.token_end,
                kind=h.kind, text=result.batch.texts[h.doc][h.start:h.end],
            )
            for h in result.hotspots
        ]
        report = DisagreementReport(
            agreement=stats,
            hotspots=hotspots,
            hotspot_kinds=hotspot_kinds(result),
            consensus={ids[i]: [Span(start=s, end=e, type=t) for s, e, t in spans] for i, spans in enumerate(result.consensus_spans)},
            markdown=render_markdown(structured),
            markdown_compact=render_markdown(build_report(result, compact)),
            annotator_reports={m: annotator_error_report(result, m, params) for m in result.models},
        )
        record.mean_pairwise_f1 = stats.mean_pairwise_f1
        record.mean_agreement = stats.mean_agreement
        record.weights = stats.weights
        record.elite = stats.elite
        record.hotspots = len(hotspots)
    record.seconds["analyze_disagreement"] = time.perf_counter() - started
    history = [*state.history, record]
    reason = stop_decision(history, ctx.max_loops, ctx.min_gain, ctx.patience)
    return {"report": report, "history": history, "stop_reason": reason}


# ---------------------------------------------------------------- the supervisor's four phases


def _supervisor_inputs(state: DizinerState, ctx: DizinerContext) -> tuple[str, Guideline | None]:
    """What the supervisor is shown as goal and guideline in force (cumulative or the reference's behaviour)."""
    if ctx.cumulative:
        return state.guideline.goal or state.task.final_task_goal, state.guideline
    return state.task.final_task_goal, None


def _roles(state: DizinerState) -> dict[str, str]:
    stats = state.report.agreement if state.report else None
    roles = {}
    for name in state.annotators:
        if stats is None or name not in stats.weights:
            roles[name] = "failed on every pilot document"
        else:
            kind = "elite" if name in stats.elite else "non-elite"
            roles[name] = f"{kind}, weight {stats.weights[name]:.3f}, mean agreement {stats.mean_agreement[name]:.3f}"
    return roles


def _update_last_round(state: DizinerState, **changes: Any) -> list[RoundRecord]:
    last = state.history[-1].model_copy(deep=True)
    for key, value in changes.items():
        setattr(last, key, value)
    return [*state.history[:-1], last]


def _supervisor_record(state: DizinerState) -> tuple[list[SupervisorRound], SupervisorRound]:
    if state.supervisor and state.supervisor[-1].round == state.round:
        return state.supervisor[:-1], state.supervisor[-1].model_copy(deep=True)
    return list(state.supervisor), SupervisorRound(round=state.round)


def _add_usage(state: DizinerState, usage: TokenUsage, node: str, seconds: float) -> list[RoundRecord]:
    last = state.history[-1]
    token_usage = dict(last.token_usage)
    token_usage["supervisor"] = token_usage.get("supervisor", TokenUsage()).add(usage)
    timing = {**last.seconds, node: seconds}
    return _update_last_round(state, token_usage=token_usage, seconds=timing)


async def _phase(state, runtime, factory, node: str, schema_name: str, build_prompt, extra_meta=None):
    ctx = get_context(runtime)
    _, spec = model_specs(ctx)
    schema = getattr(sup.schemas_for(spec), schema_name)
    model = await get_model(factory, spec)
    prompt = sup.fit(build_prompt, spec)
    meta = {"round": state.round, "phase": node, **(extra_meta or {})}
    cfg = call_config(f"{node} · {spec.name}", ["supervisor", node], **meta)
    return await sup.call_phase(model, spec, schema, prompt, cfg)


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, sup.PhaseFailed) else f"{type(exc).__name__}: {exc}"
    return text[:500]


def _record_failure(rec: SupervisorRound, key: str, exc: BaseException) -> None:
    """Why a phase failed, and the unusable answer when there was one (never an empty result in its place)."""
    rec.failures[key] = _reason(exc)
    raw = getattr(exc, "raw_text", None)
    if raw:
        rec.failed_answers[key] = raw


async def _single_phase(state, runtime, models, node: str, schema: str, build, store) -> dict[str, Any]:
    """Run one supervisor call for `node`; `store(record, output)` files the result. A failure is recorded in the
    round's supervisor record (never silently replaced by an empty result) and the loop goes on."""
    started = time.perf_counter()
    rounds, rec = _supervisor_record(state)
    usage = TokenUsage()
    try:
        out, usage = await _phase(state, runtime, models, node, schema, build)
        store(rec, out)
    except Exception as exc:
        _record_failure(rec, node, exc)
        usage = getattr(exc, "usage", usage)
    return {"supervisor": [*rounds, rec], "history": _add_usage(state, usage, node, time.perf_counter() - started)}


async def analyze_patterns(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 1: recurring disagreement patterns, root causes, competing approaches and who holds them."""
    ctx = get_context(runtime)
    goal, in_force = _supervisor_inputs(state, ctx)
    common = sup.common_context(state.task.entity_types, goal, in_force, _roles(state))
    report = state.report

    def build(level: int) -> str:
        md = report.markdown if level >= 5 else report.markdown_compact
        return sup.render_phase(
            "supervisor_patterns", common=common, report=md, max_patterns=ctx.max_patterns, max_common=ctx.max_common_instructions
        )

    def store(rec: SupervisorRound, out: Any) -> None:
        rec.patterns = out.model_dump(mode="json")

    return await _single_phase(state, runtime, models, "analyze_patterns", "PatternAnalysis", build, store)


def diagnosis_targets(state: DizinerState, ctx: DizinerContext) -> list[str]:
    stats = state.report.agreement
    return [m for m in stats.models if ctx.diagnose_all or m not in stats.elite]


async def diagnose_models(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 2: one diagnosis per non-elite annotator (or all), concurrently."""
    ctx = get_context(runtime)
    started = time.perf_counter()
    goal, in_force = _supervisor_inputs(state, ctx)
    rounds, rec = _supervisor_record(state)
    common = sup.common_context(state.task.entity_types, goal, in_force, _roles(state))
    patterns = sup.as_json(rec.patterns or {})
    elite = set(state.report.agreement.elite)

    async def one(name: str) -> tuple[str, Any, TokenUsage, str | None]:
        own = (in_force.per_annotator.get(name) if in_force else None) or []
        from agents.guideline import render_instructions

        def build(level: int) -> str:
            return sup.render_phase(
                "supervisor_diagnosis", common=common, patterns=patterns, annotator=name,
                error_report=state.report.annotator_reports.get(name, "(no report)"),
                own_instructions=render_instructions(own) or "(none)",
                elite_status="elite" if name in elite else "non-elite", max_model=ctx.max_model_instructions,
            )

        try:
            out, usage = await _phase(state, runtime, models, "diagnose_models", "AnnotatorDiagnosis", build, {"annotator": name})
            return name, out.model_dump(mode="json"), usage, None
        except Exception as exc:
            return name, None, getattr(exc, "usage", TokenUsage()), exc

    results = await asyncio.gather(*(one(n) for n in diagnosis_targets(state, ctx)))
    usage = TokenUsage()
    for name, out, u, exc in results:
        usage = usage.add(u)
        if out is not None:
            rec.diagnoses[name] = out
        else:
            _record_failure(rec, f"diagnose_models:{name}", exc)
    return {"supervisor": [*rounds, rec], "history": _add_usage(state, usage, "diagnose_models", time.perf_counter() - started)}


async def integrate_guidelines(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 3: concrete common and per-annotator instructions, conflicts settled by the goal (which it may sharpen)."""
    ctx = get_context(runtime)
    goal, in_force = _supervisor_inputs(state, ctx)
    _, rec = _supervisor_record(state)
    common = sup.common_context(state.task.entity_types, goal, in_force, _roles(state))
    targets = diagnosis_targets(state, ctx)

    def build(level: int) -> str:
        return sup.render_phase(
            "supervisor_integration", common=common, patterns=sup.as_json(rec.patterns or {}),
            diagnoses=sup.as_json(rec.diagnoses), max_common=ctx.max_common_instructions,
            max_model=ctx.max_model_instructions, targets=", ".join(targets) or "(none)",
        )

    def store(record: SupervisorRound, out: Any) -> None:
        record.integration = out.model_dump(mode="json")

    return await _single_phase(state, runtime, models, "integrate_guidelines", "Integration", build, store)


async def organize_guidelines(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 4: one numbered hierarchy merged with the instructions in force; caps enforced in code.

    When phase 3 produced nothing, or this phase fails, the guideline in force is kept (not emptied)."""
    ctx = get_context(runtime)
    goal, in_force = _supervisor_inputs(state, ctx)
    _, rec = _supervisor_record(state)
    drafted: list[Guideline] = []
    if rec.integration is None:
        rounds, rec = _supervisor_record(state)
        rec.failures.setdefault("organize_guidelines", "skipped: phase 3 produced nothing; the guideline in force is kept")
        update: dict[str, Any] = {"supervisor": [*rounds, rec], "history": list(state.history)}
    else:
        common = sup.common_context(state.task.entity_types, goal, in_force, _roles(state))

        def build(level: int) -> str:
            return sup.render_phase(
                "supervisor_organization", common=common, integration=sup.as_json(rec.integration),
                max_common=ctx.max_common_instructions, max_model=ctx.max_model_instructions,
            )

        def store(record: SupervisorRound, out: Any) -> None:
            record.organization = out.model_dump(mode="json")
            new_goal, refused = sup.sharpened_goal(goal, record.integration)
            if refused:
                record.failures[GOAL_REFUSED] = refused
            capped, cut = enforce_caps(
                sup.organization_to_guideline(out, new_goal), state.annotators, ctx.max_common_instructions, ctx.max_model_instructions
            )
            if cut:
                record.organization["cut_by_caps"] = cut
            drafted.append(capped)

        update = await _single_phase(state, runtime, models, "organize_guidelines", "Organization", build, store)
    new_guideline = drafted[0] if drafted else state.guideline
    history = [*update["history"][:-1], update["history"][-1].model_copy(update={"guideline_change": change_ratio(state.guideline, new_guideline)})]
    return {**update, "guideline": new_guideline, "history": history}


# ---------------------------------------------------------------- selection


def select_best(state: DizinerState) -> dict[str, Any]:
    """The label-free choice (DIZINER.md 15.3) and the export of that configuration as a guideline."""
    chosen = select_configuration(state.history)
    if chosen is None:
        return {"selection": None, "selected_configuration": None, "guideline_markdown": None,
                "stop_reason": state.stop_reason or "no eligible annotator"}
    round_, annotator, score = chosen
    used = state.guidelines_used[round_ - 1] if round_ - 1 < len(state.guidelines_used) else Guideline()
    configuration = configuration_for(state.task, used, annotator)
    return {
        "selection": Selection(round=round_, annotator=annotator, mean_pairwise_f1=score),
        "selected_configuration": {"round": round_, "annotator": annotator, **configuration.model_dump(mode="json", by_alias=True)},
        "guideline_markdown": guideline_markdown(state.task, configuration, annotator, round_, score),
        "status": "stopped",
    }
