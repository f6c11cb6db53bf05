"""The LangGraph state of the pilot-annotation loop: input, full state and output schemas.

Everything a person inspects in Studio lives here: the pool, the pilot sets, each round's annotations,
figures, report, the supervisor's four phase outputs, and the guideline in force.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.models.runfile import RunModels
from state.models import AnnotatorOutput, DisagreementReport, Document, Instruction, Span, TaskDefinition
from state.phases import AnnotatorDiagnosis, Integration, Organization, PatternAnalysis, SupervisorPhase


def merge_annotations(left: list[AnnotatorOutput] | None, right: list[AnnotatorOutput] | None) -> list[AnnotatorOutput]:
    """Reducer for the annotator fan-out: each annotator's branch appends its outputs.

    A node resets the field for a new round by returning `Overwrite([])` (langgraph.types.Overwrite).
    Outputs are kept sorted by (annotator, document order is restored by the consumer) so that the state
    does not depend on which branch finished first.
    """
    merged = list(left or []) + list(right or [])
    return sorted(merged, key=lambda o: (o.annotator, o.document_id))


class Guideline(BaseModel):
    """The guideline in force: common instructions C, per-annotator instructions R_k, final task goal G."""

    model_config = ConfigDict(extra="forbid")
    common: list[Instruction] = Field(default_factory=list)
    per_annotator: dict[str, list[Instruction]] = Field(default_factory=dict)
    goal: str = ""


class TokenUsage(BaseModel):
    """Tokens and calls of one model (an annotator or the supervisor) over some calls, and the wall time.

    `calls` counts the requests sent and billed: retries, failed answers and preflight checks included. Calls the
    call cache answered are not sent: they are counted in `cache_hits`, with their stored tokens in the `cache_*`
    fields. `estimated_calls` counts calls whose tokens were estimated from text length (the server gave none).
    """

    input_tokens: int = 0
    cached_input_tokens: int = Field(default=0, description="input tokens the provider served from its prompt cache")
    output_tokens: int = 0
    calls: int = 0
    estimated_calls: int = 0
    cache_hits: int = 0
    cache_input_tokens: int = 0
    cache_output_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(**{name: getattr(self, name) + getattr(other, name) for name in TokenUsage.model_fields})


def merge_usage(left: dict[str, TokenUsage] | None, right: dict[str, TokenUsage] | None) -> dict[str, TokenUsage]:
    """Reducer for per-annotator usage from the fan-out branches (reset per round with Overwrite({}))."""
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = out[k].add(v) if k in out else v
    return {k: out[k] for k in sorted(out)}


class RoundRecord(BaseModel):
    """One round's figures (the `rounds` entries of summary.json)."""

    round: int
    pilot: list[str] = Field(description="document ids of the pilot set, in pool order")
    mean_pairwise_f1: float | None = None
    mean_agreement: dict[str, float] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    elite: list[str] = Field(default_factory=list)
    hotspots: int = 0
    failed: dict[str, int] = Field(default_factory=dict)
    succeeded: dict[str, int] = Field(default_factory=dict)
    predicted_spans: dict[str, int] = Field(default_factory=dict)
    invented: dict[str, int] = Field(default_factory=dict, description="entity strings not found in the text")
    dropped_types: dict[str, int] = Field(default_factory=dict, description="entities of a type outside the schema")
    token_usage: dict[str, TokenUsage] = Field(default_factory=dict)
    guideline_change: float | None = Field(default=None, description="share of guideline words changed")
    error: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict, description="wall time per node")


class Selection(BaseModel):
    round: int
    annotator: str
    mean_pairwise_f1: float


class PhaseFailure(BaseModel):
    """A supervisor phase (for phase 2: one annotator's diagnosis) that gave no usable answer, or was skipped."""

    phase: SupervisorPhase
    annotator: str | None = Field(default=None, description="phase 2: whose diagnosis failed")
    reason: str
    answer: str | None = Field(default=None, description="the model's unusable answer, if it gave one")

    @property
    def key(self) -> str:
        """'diagnose_models:<annotator>' or the phase's node name (the summary.json key)."""
        return f"{self.phase.value}:{self.annotator}" if self.annotator else self.phase.value


class RejectedItem(BaseModel):
    """A new or changed guideline item the final check kept out of the guideline, and why."""

    kind: str = Field(description="instruction, example or goal")
    scope: str = Field(description="'common', an annotator's name, or 'goal'")
    text: str
    reason: str


class SupervisorRound(BaseModel):
    """The four phases' answers of one supervisor round, and what failed or was refused."""

    round: int
    patterns: PatternAnalysis | None = None
    diagnoses: dict[str, AnnotatorDiagnosis] = Field(default_factory=dict)
    integration: Integration | None = None
    organization: Organization | None = None
    cut_by_caps: dict[str, int] = Field(default_factory=dict, description="instructions phase 4 wrote beyond the caps")
    goal_refused: str | None = Field(default=None, description="why phase 3's sharpened goal was refused")
    rejected: list[RejectedItem] = Field(
        default_factory=list, description="new items the final check left out (copied text, contradiction, filler)"
    )
    failures: list[PhaseFailure] = Field(default_factory=list)

    def failure(self, phase: SupervisorPhase, annotator: str | None = None) -> PhaseFailure | None:
        return next((f for f in self.failures if f.phase == phase and f.annotator == annotator), None)

    def summary_failures(self) -> dict[str, str]:
        """{phase or 'diagnose_models:<annotator>': reason}, with a refused goal as 'integrate_guidelines:goal'."""
        out = {f.key: f.reason for f in self.failures}
        if self.goal_refused:
            out[f"{SupervisorPhase.INTEGRATION.value}:goal"] = self.goal_refused
        return out


class DizinerInput(BaseModel):
    """What a run starts from: a task file's content and the unlabelled pool (and, from `diziner refine`, the run's
    resolved models; without them the first node resolves the context's)."""

    task: TaskDefinition
    documents: list[Document] = Field(min_length=1)
    models: RunModels | None = Field(default=None, description="resolved models; empty: from the run context")


class DizinerOutput(BaseModel):
    history: list[RoundRecord] = Field(default_factory=list)
    stop_reason: str | None = None
    selection: Selection | None = None
    selected_configuration: dict[str, Any] | None = None
    guideline_markdown: str | None = None


class DizinerState(DizinerInput, DizinerOutput):
    annotators: list[str] = Field(default_factory=list, description="annotator names, in the run's order")
    round: int = 0
    pilot_history: list[list[int]] = Field(default_factory=list, description="pool indices of each round's pilot set")
    annotations: Annotated[list[AnnotatorOutput], merge_annotations] = Field(default_factory=list)
    usage: Annotated[dict[str, TokenUsage], merge_usage] = Field(default_factory=dict)
    report: DisagreementReport | None = None
    guideline: Guideline = Field(default_factory=Guideline)
    guidelines_used: list[Guideline] = Field(
        default_factory=list, description="the guideline each round annotated under (index = round - 1)"
    )
    supervisor: list[SupervisorRound] = Field(default_factory=list)
    status: Literal["running", "stopped"] = "running"

    def usage_by_model(self) -> list[tuple[str, TokenUsage]]:
        """(model name, usage) of every round so far (the supervisor's under its model's name), the current round's
        annotators included before its record exists."""
        supervisor = self.models.supervisor.name if self.models else "supervisor"
        pairs = [(supervisor if k == "supervisor" else k, u) for r in self.history for k, u in r.token_usage.items()]
        if not any(r.round == self.round for r in self.history):
            pairs += list(self.usage.items())
        return pairs

    def model_specs(self) -> dict[str, Any]:
        """Model name -> resolved spec, annotators and supervisor."""
        if self.models is None:
            return {}
        return {**{s.name: s for s in self.models.annotators}, self.models.supervisor.name: self.models.supervisor}

    def pilot_readings(self) -> list[tuple[int, Document, dict[str, list[Span] | None]]]:
        """The current round's pilot documents in pilot-set order, each with its pool index and every annotator's
        spans (None where the annotator failed or left no output), annotators in run order."""
        if self.round < 1 or len(self.pilot_history) < self.round:
            return []
        by_key = {(o.annotator, o.document_id): o for o in self.annotations}
        out = []
        for i in self.pilot_history[self.round - 1]:
            doc = self.documents[i]
            readings: dict[str, list[Span] | None] = {}
            for name in self.annotators:
                o = by_key.get((name, doc.id))
                readings[name] = None if o is None or o.status != "ok" else list(o.spans)
            out.append((i, doc, readings))
        return out
