"""Graph nodes: small adapters between the state and the pure core (engine, pilot sampler, agents).

Node functions are named like their nodes. Model calls go through a `ModelFactory` bound by the builder, so the CLI,
the server and the tests share the same nodes with their own models. The models themselves are resolved once per
run (`agents.models.resolve_models`) and carried in the state. Each node reports its figures on the custom stream
(`graph.progress`). The method: docs/method.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, Send
from pydantic import BaseModel

from agents import supervisor as sup
from agents.annotator import run_annotator
from agents.cache import CallCache, open_cache
from agents.guideline import (
    change_ratio,
    configuration_for,
    enforce_caps,
    guideline_markdown,
    render_instructions,
    screen_guideline,
)
from agents.models import ModelHandle, ModelSpec, RunModels, resolve_models
from agents.models.errors import ModelUnavailable
from agents.structured import trace_config
from graph.context import DizinerContext, get_context
from graph.progress import SelectionFigures, StepFigures, report_document, report_step
from graph.routing import select_configuration, stop_decision
from prompts import fence_untrusted, render
from state.errors import BudgetReached, InputError
from state.graph_state import (
    DizinerState,
    Guideline,
    PhaseFailure,
    RejectedItem,
    RoundRecord,
    Selection,
    SupervisorRound,
    TokenUsage,
)
from state.models import AgreementStats, DisagreementReport, Document, Hotspot, Span, TaskConfiguration
from state.phases import SupervisorPhase, as_record

ModelFactory = Callable[[ModelSpec], BaseChatModel]


def call_cache(ctx: DizinerContext, spec: ModelSpec) -> CallCache | None:
    """The persistent call cache for this model's calls: on for temperature 0 unless the run turned it off."""
    return open_cache(ctx.cache_dir or None) if ctx.call_cache and spec.temperature == 0 else None


def with_deadline(spec: ModelSpec, ctx: DizinerContext) -> ModelSpec:
    """The spec with the run's call deadline (`--timeout`) when one was given."""
    return spec if ctx.timeout is None else spec.model_copy(update={"timeout": ctx.timeout})


def spent_usd(state: DizinerState) -> float:
    """What the run's billed calls cost so far (priced models only)."""
    from agents.models.usage import usage_summary

    return usage_summary(state.usage_by_model(), state.model_specs())["cost_usd"]


def check_budget(state: DizinerState, ctx: DizinerContext, step: str, expected: float = 0.0) -> None:
    """Stop before `step` when the spending so far, plus what the step is expected to cost, would pass the budget."""
    if ctx.budget_usd is None:
        return
    spent = spent_usd(state)
    from agents.models.prices import fits_budget

    if not fits_budget(spent, expected, ctx.budget_usd):
        raise BudgetReached(
            f"budget: ${spent:.4f} spent of ${ctx.budget_usd:.4f}; stopped before {step}"
            + (f" (expected ${expected:.4f} more)" if expected else "")
        )


def run_models(state: DizinerState, ctx: DizinerContext) -> RunModels:
    """The run's resolved models: those in the state, else resolved from the context (run file or names)."""
    if state.models is not None:
        return state.models
    if ctx.run_config:
        return resolve_models(run_file=ctx.run_config)
    return resolve_models(ctx.annotators, ctx.supervisor)


# ---------------------------------------------------------------- pilot set


class AnnotateTask(BaseModel):
    """The payload of one annotator branch (a LangGraph Send)."""

    spec: ModelSpec
    round: int
    documents: list[Document]
    configuration: TaskConfiguration

    @property
    def annotator(self) -> str:
        return self.spec.name


def select_pilot(state: DizinerState, runtime: Runtime[DizinerContext]) -> dict[str, Any]:
    """Draw the next pilot set (lexically diverse, disjoint while the pool allows) and open a new round."""
    from corpus.pilot import select_pilot as choose

    started = time.perf_counter()
    ctx = get_context(runtime)
    models = run_models(state, ctx)  # bad specs fail here, before any model runs
    round_ = state.round + 1
    if state.history:
        last = state.history[-1]
        specs = state.model_specs()
        from agents.models.prices import cost_usd

        expected = sum(cost_usd(specs[k].price, u) for k, u in last.token_usage.items() if k in specs)
        check_budget(state, ctx, f"round {round_}", expected)
    chosen = choose([d.text for d in state.documents], ctx.pilot_size, ctx.seed, round_ - 1, state.pilot_history)
    report_step(runtime, StepFigures(
        node="select_pilot", round=round_, seconds=time.perf_counter() - started,
        pilot_documents=len(chosen), pool_documents=len(state.documents),
    ))
    return {
        "models": models,
        "annotators": models.names,
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
                spec=spec,
                round=state.round,
                documents=docs,
                configuration=configuration_for(state.task, state.guideline, spec.name),
            ),
        )
        for spec in state.models.annotators
    ]


# ---------------------------------------------------------------- annotators


UNREACHABLE_AFTER = 3
"""A model none of whose calls in a round (at least this many) reached it stops the run, resumable."""


async def annotate(task: AnnotateTask, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """One annotator agent: all pilot documents, concurrently up to the model's limit. A model that cannot be built,
    fails its check, or that no call of the round reached stops the run (resumable): a round of failures is never
    analysed."""
    ctx = get_context(runtime)
    spec = with_deadline(task.spec, ctx)
    started = time.perf_counter()
    total = len(task.documents)
    from agents.models.prices import cost_usd

    cache = await asyncio.to_thread(call_cache, ctx, spec)  # opening it touches the disk: off the event loop
    outputs, usage = await run_annotator(
        models, spec, task.configuration, task.documents, task.round, cache=cache,
        on_start=lambda doc: report_document(runtime, task.round, spec.name, "start", total),
        on_done=lambda out, used: report_document(runtime, task.round, spec.name, "done", total,
                                                  out.status != "ok", cost_usd(spec.price, used)),
    )
    unreachable = [o for o in outputs if o.error_kind in ("transport", "timeout")]
    if len(outputs) >= UNREACHABLE_AFTER and len(unreachable) == len(outputs):
        raise ModelUnavailable(spec.name, f"every call of round {task.round} failed: {unreachable[0].reason}")
    usage.seconds = time.perf_counter() - started
    report_step(runtime, StepFigures(
        node="annotate", round=task.round, annotator=spec.name, seconds=usage.seconds, documents=len(outputs),
        failed=sum(1 for o in outputs if o.status != "ok"), spans=sum(len(o.spans) for o in outputs),
        usage_calls=usage.calls, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        cost_usd=cost_usd(spec.price, usage),
    ))
    return {"annotations": outputs, "usage": {spec.name: usage}}


# ---------------------------------------------------------------- the deterministic node


def analyze_disagreement(state: DizinerState, runtime: Runtime[DizinerContext]) -> dict[str, Any]:
    """The engine on this round's annotations; appends the round's figures and decides whether to stop."""
    from disagreement.engine import AnnotationBatch, EngineParams, analyze

    ctx = get_context(runtime)
    started = time.perf_counter()
    readings = state.pilot_readings()
    names = list(state.annotators)
    docs = [
        (d.id, d.text, {n: None if r is None else [(s.start, s.end, s.type) for s in r] for n, r in ann.items()})
        for _, d, ann in readings
    ]
    failed = {n: sum(1 for _, _, a in docs if a[n] is None) for n in names}
    record = RoundRecord(
        round=state.round,
        pilot=[d.id for _, d, _ in readings],
        failed=failed,
        succeeded={n: len(docs) - failed[n] for n in names},
        predicted_spans={n: sum(len(a[n] or []) for _, _, a in docs) for n in names},
        invented={n: sum(o.not_found for o in state.annotations if o.annotator == n) for n in names},
        dropped_types={n: sum(o.dropped_types for o in state.annotations if o.annotator == n) for n in names},
        token_usage=dict(state.usage),
    )
    report = None
    try:
        result = analyze(AnnotationBatch.from_documents(docs, annotators=names), EngineParams(percentile=ctx.percentile))
    except InputError as exc:
        record.error = str(exc)
    else:
        report = round_report(result, ctx.max_report_examples)
        stats = report.agreement
        record.mean_pairwise_f1 = stats.mean_pairwise_f1
        record.mean_agreement = stats.mean_agreement
        record.weights = stats.weights
        record.elite = stats.elite
        record.hotspots = len(report.hotspots)
    record.seconds["analyze_disagreement"] = time.perf_counter() - started
    history = [*state.history, record]
    reason = stop_decision(history, ctx.max_loops, ctx.min_gain, ctx.patience)
    report_step(runtime, StepFigures(
        node="analyze_disagreement", round=state.round, seconds=record.seconds["analyze_disagreement"],
        mean_pairwise_f1=record.mean_pairwise_f1, hotspots=record.hotspots, elite=record.elite,
        not_analysed=record.error if record.mean_pairwise_f1 is None else None, stop_reason=reason,
    ))
    return {"report": report, "history": history, "stop_reason": reason}


def round_report(result: Any, max_examples: int) -> DisagreementReport:
    """The engine's result as the state's report: agreement figures, hotspots and consensus (the same records
    `diziner analyze --json` prints), the supervisor's Markdown report (full and compact) and per-annotator reports."""
    from disagreement.io import consensus_records, hotspot_records
    from disagreement.render_markdown import render_annotator_markdown, render_markdown
    from disagreement.report import ReportParams, agreement_figures, build_annotator_report, build_report, hotspot_kinds

    params = ReportParams(max_examples_per_type=max_examples)
    compact = ReportParams(max_examples_per_type=min(2, max_examples))
    return DisagreementReport(
        agreement=AgreementStats(**agreement_figures(result)),
        hotspots=[Hotspot(**h) for h in hotspot_records(result)],
        hotspot_kinds=hotspot_kinds(result),
        consensus={doc_id: [Span(**s) for s in spans] for doc_id, spans in consensus_records(result).items()},
        markdown=render_markdown(build_report(result, params)),
        markdown_compact=render_markdown(build_report(result, compact)),
        annotator_reports={m: render_annotator_markdown(build_annotator_report(result, m, params)) for m in result.models},
    )


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


def _common(state: DizinerState, ctx: DizinerContext) -> str:
    goal, in_force = _supervisor_inputs(state, ctx)
    return sup.common_context(state.task.entity_types, goal, in_force, _roles(state))


def _supervisor_record(state: DizinerState) -> tuple[list[SupervisorRound], SupervisorRound]:
    if state.supervisor and state.supervisor[-1].round == state.round:
        return state.supervisor[:-1], state.supervisor[-1].model_copy(deep=True)
    return list(state.supervisor), SupervisorRound(round=state.round)


def _with_usage(state: DizinerState, usage: TokenUsage, node: str, seconds: float) -> list[RoundRecord]:
    """The history with the supervisor's tokens and this node's time added to the last round."""
    last = state.history[-1].model_copy(deep=True)
    last.token_usage = dict(last.token_usage)
    last.token_usage["supervisor"] = last.token_usage.get("supervisor", TokenUsage()).add(usage)
    last.seconds = {**last.seconds, node: seconds}
    return [*state.history[:-1], last]


async def _ask_supervisor(
    state: DizinerState, ctx: DizinerContext, factory: ModelFactory, phase: SupervisorPhase,
    build_prompt: Callable[[int], str], annotator: str | None = None,
) -> tuple[BaseModel, TokenUsage]:
    """One supervisor call for `phase`: its record on success; PhaseFailed (or a build error) otherwise."""
    check_budget(state, ctx, f"{phase.value} of round {state.round}")
    spec = with_deadline(state.models.supervisor, ctx)
    model = ModelHandle(factory, spec)
    prompt = sup.fit(build_prompt, spec)
    meta: dict[str, Any] = {"round": state.round, "phase": phase.value}
    if annotator is not None:
        meta["annotator"] = annotator
    cfg = trace_config(f"{phase.value} · {spec.name}", ["supervisor", phase.value], **meta)
    cache = await asyncio.to_thread(call_cache, ctx, spec)
    answer, usage = await sup.call_phase(model, spec, sup.schema_for(spec, phase), prompt, cfg, cache)
    return as_record(phase, answer), usage


def _failure(phase: SupervisorPhase, exc: BaseException, annotator: str | None = None) -> PhaseFailure:
    """Why a phase failed, and the unusable answer when there was one (never an empty result in its place)."""
    reason = str(exc) if isinstance(exc, sup.PhaseFailed) else f"{type(exc).__name__}: {exc}"
    return PhaseFailure(phase=phase, annotator=annotator, reason=reason[:500], answer=getattr(exc, "raw_text", None) or None)


def _phase_figures(runtime: Any, state: DizinerState, rec: SupervisorRound, phase: SupervisorPhase, seconds: float,
                   **figures: Any) -> None:
    failures = {f.key: f.reason for f in rec.failures if f.phase == phase}
    report_step(runtime, StepFigures(node=phase.value, round=state.round, seconds=seconds, failures=failures, **figures))


async def _single_phase(state, runtime, models, phase: SupervisorPhase, build, store, report: bool = True) -> dict[str, Any]:
    """Run one supervisor call for `phase`; `store(record, answer)` files the result. A failure is recorded in the
    round's supervisor record (never silently replaced by an empty result) and the loop goes on."""
    started = time.perf_counter()
    rounds, rec = _supervisor_record(state)
    usage = TokenUsage()
    try:
        out, usage = await _ask_supervisor(state, get_context(runtime), models, phase, build)
        store(rec, out)
    except (ModelUnavailable, InputError, BudgetReached):
        raise  # an error of the run: it stops, resumable
    except Exception as exc:
        rec.failures.append(_failure(phase, exc))
        usage = getattr(exc, "usage", usage)
    seconds = time.perf_counter() - started
    if report:
        _phase_figures(runtime, state, rec, phase, seconds)
    return {"supervisor": [*rounds, rec], "history": _with_usage(state, usage, phase.value, seconds)}


async def analyze_patterns(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 1: recurring disagreement patterns, root causes, competing approaches and who holds them."""
    ctx = get_context(runtime)
    common = _common(state, ctx)
    report = state.report

    def build(level: int) -> str:
        md = report.markdown if level >= 5 else report.markdown_compact
        return render(
            "supervisor_patterns", common=common, report=md, max_patterns=ctx.max_patterns, max_common=ctx.max_common_instructions
        )

    def store(rec: SupervisorRound, out: Any) -> None:
        rec.patterns = out

    return await _single_phase(state, runtime, models, SupervisorPhase.PATTERNS, build, store)


def diagnosis_targets(state: DizinerState, ctx: DizinerContext) -> list[str]:
    """The annotators phase 2 diagnoses: the non-elite ones, or all with `diagnose_all`."""
    stats = state.report.agreement
    return [m for m in stats.models if ctx.diagnose_all or m not in stats.elite]


async def diagnose_models(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 2: one diagnosis per non-elite annotator (or all), concurrently."""
    ctx = get_context(runtime)
    started = time.perf_counter()
    _, in_force = _supervisor_inputs(state, ctx)
    rounds, rec = _supervisor_record(state)
    common = _common(state, ctx)
    patterns = fence_untrusted(sup.as_json(rec.patterns or {}), "phase1_result")
    elite = set(state.report.agreement.elite)
    phase = SupervisorPhase.DIAGNOSIS

    async def one(name: str) -> tuple[str, Any, TokenUsage, BaseException | None]:
        own = (in_force.per_annotator.get(name) if in_force else None) or []

        def build(level: int) -> str:
            return render(
                "supervisor_diagnosis", common=common, patterns=patterns, annotator=name,
                error_report=state.report.annotator_reports.get(name, "(no report)"),
                own_instructions=render_instructions(own) or "(none)",
                elite_status="elite" if name in elite else "non-elite", max_model=ctx.max_model_instructions,
            )

        try:
            out, usage = await _ask_supervisor(state, ctx, models, phase, build, annotator=name)
            return name, out, usage, None
        except (ModelUnavailable, InputError, BudgetReached):
            raise
        except Exception as exc:
            return name, None, getattr(exc, "usage", TokenUsage()), exc

    results = await asyncio.gather(*(one(n) for n in diagnosis_targets(state, ctx)))
    usage = TokenUsage()
    for name, out, u, exc in results:
        usage = usage.add(u)
        if out is not None:
            rec.diagnoses[name] = out
        else:
            rec.failures.append(_failure(phase, exc, annotator=name))
    seconds = time.perf_counter() - started
    _phase_figures(runtime, state, rec, phase, seconds, diagnoses=len(rec.diagnoses))
    return {"supervisor": [*rounds, rec], "history": _with_usage(state, usage, phase.value, seconds)}


async def integrate_guidelines(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 3: concrete common and per-annotator instructions, conflicts settled by the goal (which it may sharpen)."""
    ctx = get_context(runtime)
    _, rec = _supervisor_record(state)
    common = _common(state, ctx)
    targets = diagnosis_targets(state, ctx)
    diagnoses = {name: d.model_dump(mode="json") for name, d in rec.diagnoses.items()}

    def build(level: int) -> str:
        return render(
            "supervisor_integration", common=common,
            patterns=fence_untrusted(sup.as_json(rec.patterns or {}), "phase1_result"),
            diagnoses=fence_untrusted(sup.as_json(diagnoses), "phase2_result"), max_common=ctx.max_common_instructions,
            max_model=ctx.max_model_instructions, targets=", ".join(targets) or "(none)",
        )

    def store(record: SupervisorRound, out: Any) -> None:
        record.integration = out

    return await _single_phase(state, runtime, models, SupervisorPhase.INTEGRATION, build, store)


async def organize_guidelines(state: DizinerState, runtime: Runtime[DizinerContext], *, models: ModelFactory) -> dict[str, Any]:
    """Phase 4: one numbered hierarchy merged with the instructions in force; caps enforced in code.

    When phase 3 produced nothing, or this phase fails, the guideline in force is kept (not emptied)."""
    ctx = get_context(runtime)
    started = time.perf_counter()
    goal, _ = _supervisor_inputs(state, ctx)
    phase = SupervisorPhase.ORGANIZATION
    from agents.screening import prompt_vocabulary

    await asyncio.to_thread(prompt_vocabulary)  # the final check reads the prompt templates once: off the loop
    _, rec = _supervisor_record(state)
    drafted: list[Guideline] = []
    if rec.integration is None:
        rounds, rec = _supervisor_record(state)
        if rec.failure(phase) is None:
            rec.failures.append(PhaseFailure(
                phase=phase, reason="skipped: phase 3 produced nothing; the guideline in force is kept"
            ))
        update: dict[str, Any] = {"supervisor": [*rounds, rec], "history": list(state.history)}
    else:
        common = _common(state, ctx)
        integration = rec.integration

        def build(level: int) -> str:
            return render(
                "supervisor_organization", common=common,
                integration=fence_untrusted(sup.as_json(integration), "phase3_result"),
                max_common=ctx.max_common_instructions, max_model=ctx.max_model_instructions,
            )

        def store(record: SupervisorRound, out: Any) -> None:
            record.organization = out
            new_goal, refused = sup.sharpened_goal(goal, integration)
            record.goal_refused = refused
            base = state.guideline if ctx.cumulative else Guideline()
            in_force = base.model_copy(update={"goal": goal})  # the goal in force, the task's until one is sharpened
            seen = [state.documents[i].text for pilot in state.pilot_history for i in pilot]
            screened, rejected, usable = screen_guideline(
                sup.organization_to_guideline(out, new_goal), in_force, seen, state.task.type_names
            )
            record.rejected = [RejectedItem(**r) for r in rejected]
            if rejected and not usable:
                record.failures.append(PhaseFailure(
                    phase=phase, reason=f"nothing usable: {len(rejected)} new item(s) rejected by the final check; "
                    "the guideline in force is kept",
                ))
                return
            capped, cut = enforce_caps(screened, state.annotators, ctx.max_common_instructions, ctx.max_model_instructions)
            record.cut_by_caps = cut
            drafted.append(capped)

        update = await _single_phase(state, runtime, models, phase, build, store, report=False)
    new_guideline = drafted[0] if drafted else state.guideline
    change = change_ratio(state.guideline, new_guideline)
    _phase_figures(runtime, state, update["supervisor"][-1], phase, time.perf_counter() - started, guideline_change=change)
    history = [*update["history"][:-1], update["history"][-1].model_copy(update={"guideline_change": change})]
    return {**update, "guideline": new_guideline, "history": history}


# ---------------------------------------------------------------- selection


def select_best(state: DizinerState, runtime: Runtime[DizinerContext]) -> dict[str, Any]:
    """The label-free choice (docs/method.md#selection) and the export of that configuration as a guideline."""
    chosen = select_configuration(state.history)
    if chosen is None:
        report_step(runtime, StepFigures(node="select_best", round=state.round, selected_nothing=True))
        return {"selection": None, "selected_configuration": None, "guideline_markdown": None,
                "stop_reason": state.stop_reason or "no eligible annotator"}
    round_, annotator, score = chosen
    used = state.guidelines_used[round_ - 1] if round_ - 1 < len(state.guidelines_used) else Guideline()
    configuration = configuration_for(state.task, used, annotator)
    report_step(runtime, StepFigures(
        node="select_best", round=state.round,
        selection=SelectionFigures(round=round_, annotator=annotator, mean_pairwise_f1=score),
    ))
    return {
        "selection": Selection(round=round_, annotator=annotator, mean_pairwise_f1=score),
        "selected_configuration": {"round": round_, "annotator": annotator, **configuration.model_dump(mode="json", by_alias=True)},
        "guideline_markdown": guideline_markdown(state.task, configuration, annotator, round_, score),
        "status": "stopped",
    }
