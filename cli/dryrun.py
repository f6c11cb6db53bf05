"""`--dry-run`: the calls and tokens a command will ask for, and their cost where prices are known, before any call.

The plan assumes the run goes the whole way (every round up to `max_loops`: the plateau rule can only stop it
earlier), no failures or retries, phase 2 diagnosing every annotator with `--diagnose-all` and otherwise the
non-elite half (with equal weights the elite is the first ceil(n/2) annotators), and one preflight call per model
that is not in-process. Input tokens are the real round-1 prompts (`ESTIMATE_CHARS_PER_TOKEN` characters a token; later
rounds add the instructions, not counted); output tokens are the models' caps, an upper bound. Round-1 calls the
cache can already answer are counted apart.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.models import ModelSpec, RunModels
from agents.models.preflight import is_checked
from agents.models.prices import cost_usd
from agents.models.usage import ESTIMATE_CHARS_PER_TOKEN
from state.graph_state import Guideline, TokenUsage


@dataclass
class ModelPlan:
    calls: int = 0
    cached_calls: int = 0
    preflight_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, calls: int, input_tokens: int, output_tokens: int) -> None:
        self.calls += calls
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


@dataclass
class Plan:
    """Expected calls and tokens per model name."""

    models: dict[str, ModelPlan] = field(default_factory=dict)
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def of(self, spec: ModelSpec) -> ModelPlan:
        self.specs.setdefault(spec.name, spec)
        return self.models.setdefault(spec.name, ModelPlan())

    def as_json(self) -> dict[str, Any]:
        """{"calls", "preflight_calls", "cached_calls", "input_tokens", "output_tokens", "cost_usd", "unpriced",
        "by_model": {...}, "assumptions"}."""
        by_model = {}
        for name, p in sorted(self.models.items()):
            spec = self.specs[name]
            usage = TokenUsage(input_tokens=p.input_tokens, output_tokens=p.output_tokens)
            by_model[name] = {"calls": p.calls + p.preflight_calls, "preflight_calls": p.preflight_calls,
                              "cached_calls": p.cached_calls, "input_tokens": p.input_tokens,
                              "output_tokens": p.output_tokens, "cost_usd": round(cost_usd(spec.price, usage), 6),
                              "priced": spec.price is not None}
        return {
            "calls": sum(m["calls"] for m in by_model.values()),
            "preflight_calls": sum(m["preflight_calls"] for m in by_model.values()),
            "cached_calls": sum(m["cached_calls"] for m in by_model.values()),
            "input_tokens": sum(m["input_tokens"] for m in by_model.values()),
            "output_tokens": sum(m["output_tokens"] for m in by_model.values()),
            "cost_usd": round(sum(m["cost_usd"] for m in by_model.values()), 6),
            "unpriced": [n for n, m in by_model.items() if not m["priced"]],
            "by_model": by_model,
            "assumptions": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
            "notes": self.notes,
        }


def tokens(text: str) -> int:
    return math.ceil(len(text) / ESTIMATE_CHARS_PER_TOKEN)


def _cached(spec: ModelSpec, schema: Any, prompt: str, cache: Any) -> bool:
    from agents.cache import cache_key

    key = cache_key(spec, schema.model_json_schema(), spec.output, [{"role": "user", "content": prompt}])
    return cache.get(key) is not None


def plan_refine(task: Any, texts: Sequence[str], models: RunModels, ctx: Any, cache: Any = None) -> Plan:
    """The calls `diziner refine` will make with these inputs and settings."""
    from agents.annotator import fit_annotator_prompt, schema_for
    from agents.guideline import configuration_for
    from agents.supervisor import common_context
    from corpus.pilot import PilotSampler
    from prompts import render

    plan = Plan()
    sampler = PilotSampler(list(texts), ctx.pilot_size, ctx.seed)
    history: list[list[int]] = []
    for r in range(ctx.max_loops):
        history.append(list(sampler.select(r, history)))
    types = tuple(task.type_names)
    for spec in models.annotators:
        mp = plan.of(spec)
        configuration = configuration_for(task, Guideline(), spec.name)
        schema = schema_for(spec, types)
        for r, pilot in enumerate(history, 1):
            for i in pilot:
                prompt, _ = fit_annotator_prompt(spec, configuration, texts[i], r)
                if r == 1 and cache is not None and _cached(spec, schema, prompt, cache):
                    mp.cached_calls += 1
                    continue
                mp.add(1, tokens(prompt), spec.max_tokens or 0)
    n = len(models.annotators)
    diagnosed = n if ctx.diagnose_all else n - math.ceil(n / 2)
    supervisor_rounds = ctx.max_loops - 1
    sup = models.supervisor
    roles = {a.name: "annotator" for a in models.annotators}
    common = common_context(task.entity_types, task.final_task_goal, None, roles)
    for template in ("supervisor_patterns", "supervisor_diagnosis", "supervisor_integration", "supervisor_organization"):
        quoted = sum(len(texts[i]) for i in history[0])  # the report quotes the pilot documents
        prompt_tokens = tokens(common + render(template, **_blank(template))) + tokens(" " * quoted)
        calls = supervisor_rounds * (diagnosed if template == "supervisor_diagnosis" else 1)
        plan.of(sup).add(calls, calls * prompt_tokens, calls * (sup.max_tokens or 0))
    checked = {}
    for spec in [*models.annotators, sup]:
        if is_checked(spec):
            checked.setdefault((spec.provider, spec.model, spec.base_url, spec.api_key_env), spec)
    for spec in checked.values():
        mp = plan.of(spec)
        mp.preflight_calls += 1
        mp.input_tokens += tokens("Reply with the word OK.")
        mp.output_tokens += 8
    return plan


def _blank(template: str) -> dict[str, str]:
    from string import Template

    from prompts import template as load

    names = {m.group("named") or m.group("braced") for m in Template.pattern.finditer(load(template).template)}
    return {n: "" for n in names if n}


def print_plan(plan: Plan, as_json: bool = False, title: str = "dry run") -> None:
    """The plan on stdout: one JSON object, or a table."""
    data = plan.as_json()
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
        return
    out = sys.stdout
    out.write(f"{title}: nothing was called; expected at most:\n")
    out.write(f"{'model':40} {'calls':>7} {'cached':>7} {'input tok':>11} {'output tok':>11} {'cost USD':>10}\n")
    for name, m in data["by_model"].items():
        cost = f"{m['cost_usd']:.4f}" if m["priced"] else "unpriced"
        out.write(f"{name:40} {m['calls']:>7} {m['cached_calls']:>7} {m['input_tokens']:>11} {m['output_tokens']:>11} "
                  f"{cost:>10}\n")
    out.write(f"{'total':40} {data['calls']:>7} {data['cached_calls']:>7} {data['input_tokens']:>11} "
              f"{data['output_tokens']:>11} {data['cost_usd']:>10.4f}\n")
    out.write(f"(calls include {data['preflight_calls']} preflight check(s); output tokens are the caps; "
              f"{data['assumptions']})\n")
    for note in data["notes"]:
        out.write(f"note: {note}\n")
