"""Guidelines as data: rendering for prompts and people, caps enforced in code, change between rounds.

Pure functions (no LLM): the annotator prompt, the exported `guideline.md` and the supervisor's view of the
instructions in force all render through `render_instructions`, so there is one way to show a guideline.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from state.graph_state import Guideline
from state.models import EntityType, Instruction, TaskConfiguration, TaskDefinition

PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}


def render_types(types: Iterable[EntityType]) -> str:
    """The entity schema as the prompts show it: name, definition, positive and negative examples."""
    lines = []
    for t in types:
        lines.append(f"- {t.name}: {t.definition.strip()}")
        if t.positive_examples:
            lines.append("  - examples: " + ", ".join(f'"{x}"' for x in t.positive_examples))
        if t.negative_examples:
            lines.append("  - not this type: " + ", ".join(f'"{x}"' for x in t.negative_examples))
    return "\n".join(lines)


def render_instructions(items: Iterable[Instruction], indent: int = 0) -> str:
    """Numbered hierarchy with examples, e.g. '1. ...', '   1.1 ...', '      e.g. "x" -> [x]TYPE'."""
    lines: list[str] = []
    pad = "   " * indent
    for item in items:
        lines.append(f"{pad}{item.number}. {item.text.strip()}" if indent == 0 else f"{pad}{item.number} {item.text.strip()}")
        for ex in item.examples:
            note = f" ({ex.explanation.strip()})" if ex.explanation.strip() else ""
            lines.append(f'{pad}   e.g. "{ex.text.strip()}" -> {ex.correct_annotation.strip()}{note}')
        if item.sub_instructions:
            lines.append(render_instructions(item.sub_instructions, indent + 1))
    return "\n".join(lines)


def configuration_for(task: TaskDefinition, guideline: Guideline, annotator: str) -> TaskConfiguration:
    """Θ_k = (Σ, C, R_k, G) for one annotator; the goal falls back to the task's when none was written."""
    return TaskConfiguration(
        schema=task.entity_types,
        common_instructions=guideline.common,
        annotator_instructions=guideline.per_annotator.get(annotator, []),
        goal=guideline.goal or task.final_task_goal,
    )


def renumber(items: list[Instruction], prefix: str = "") -> list[Instruction]:
    """The same instructions numbered 1, 2, ... (sub-instructions 1.1, 1.2, ...) under `prefix`."""
    out = []
    for i, item in enumerate(items, 1):
        number = f"{prefix}{i}"
        out.append(
            item.model_copy(update={"number": number, "sub_instructions": renumber(item.sub_instructions, number + ".")})
        )
    return out


def by_priority(items: list[Instruction]) -> list[Instruction]:
    """Stable sort: high before medium before low, otherwise the supervisor's order."""
    return sorted(items, key=lambda x: PRIORITY_RANK.get(x.priority, 1))


def enforce_caps(
    guideline: Guideline, annotators: Iterable[str], max_common: int, max_per_annotator: int
) -> tuple[Guideline, dict[str, int]]:
    """Keep at most `max_common` top-level common instructions and `max_per_annotator` per annotator, by
    priority; instructions for unknown annotators are dropped. Returns the capped guideline and what was cut."""
    known = set(annotators)
    cut: dict[str, int] = {}
    common = by_priority(guideline.common)
    if len(common) > max_common:
        cut["common"] = len(common) - max_common
    common = renumber(common[:max_common])
    per: dict[str, list[Instruction]] = {}
    for name, items in guideline.per_annotator.items():
        if name not in known:
            cut[f"unknown annotator {name}"] = len(items)
            continue
        ranked = by_priority(items)
        if len(ranked) > max_per_annotator:
            cut[name] = len(ranked) - max_per_annotator
        kept = renumber(ranked[:max_per_annotator])
        if kept:
            per[name] = kept
    return Guideline(common=common, per_annotator=per, goal=guideline.goal), cut


def guideline_words(g: Guideline) -> list[str]:
    """A guideline's words (goal, common, then per-annotator instructions by name), for the change ratio."""
    parts = [g.goal, render_instructions(g.common)]
    for name in sorted(g.per_annotator):
        parts.append(name)
        parts.append(render_instructions(g.per_annotator[name]))
    return " ".join(parts).split()


def change_ratio(old: Guideline, new: Guideline) -> float:
    """Share of words changed between two guidelines: 1 - difflib similarity over word sequences."""
    a, b = guideline_words(old), guideline_words(new)
    if not a and not b:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(a=a, b=b, autojunk=False).ratio()


def guideline_markdown(
    task: TaskDefinition, configuration: TaskConfiguration, annotator: str, round_: int, agreement: float | None
) -> str:
    """A readable annotation guideline a person could hand to human annotators (no timestamps: deterministic)."""
    lines = [
        f"# Annotation guideline: {task.name}",
        "",
        f"Selected without labels: the configuration annotator `{annotator}` used in round {round_}"
        + (f", whose mean pairwise agreement with the other annotators was {agreement:.4f}." if agreement is not None else "."),
        "",
        "## Goal of the annotation",
        "",
        configuration.goal.strip(),
        "",
        "## Entity types",
        "",
        render_types(configuration.schema_),
        "",
    ]
    if configuration.common_instructions:
        lines += ["## Instructions", "", render_instructions(configuration.common_instructions), ""]
    if configuration.annotator_instructions:
        lines += ["## Additional instructions", "", render_instructions(configuration.annotator_instructions), ""]
    if task.label_mapping:
        lines += ["## Dataset labels", ""]
        lines += [f"- {t} is written as `{lab}`" for lab, t in sorted(task.label_mapping.items(), key=lambda x: x[1])]
        lines.append("")
    return "\n".join(lines)


def screen_guideline(
    proposed: Guideline, in_force: Guideline, documents: Iterable[str], type_names: Iterable[str]
) -> tuple[Guideline, list[dict[str, str]], bool]:
    """The proposed guideline with every new or changed instruction, example and goal that copies a pilot document,
    contradicts the task wholesale, repeats another item, or is filler left out (`agents.screening`); what was left
    out, and why; and whether any new item passed. Items already in force are not screened again.
    """
    from agents.screening import Candidate, Screen

    old_texts = {i.text for i in _all_instructions(in_force)}
    old_examples = {(e.text, e.correct_annotation) for i in _all_instructions(in_force) for e in i.examples}
    candidates: list[Candidate] = []

    def collect(items: list[Instruction], group: str) -> None:
        for item in items:
            if item.text not in old_texts:
                candidates.append(Candidate(item.text, "instruction", group, ref=id(item)))
            for example in item.examples:
                if (example.text, example.correct_annotation) not in old_examples:
                    text = f"{example.text} -> {example.correct_annotation}"
                    candidates.append(Candidate(text, "example", group, ref=id(example)))
            collect(item.sub_instructions, group)

    collect(proposed.common, "common")
    for name, items in proposed.per_annotator.items():
        collect(items, name)
    goal_changed = bool(proposed.goal) and proposed.goal.strip() != (in_force.goal or "").strip()
    if goal_changed:
        candidates.append(Candidate(proposed.goal, "goal", ref="goal"))
    outcome = Screen(list(documents), list(type_names)).screen(candidates)
    dropped = {r.item.ref for r in outcome.rejected}
    rejected = [{"kind": r.item.kind, "scope": r.item.group or r.item.kind, "text": r.item.text, "reason": r.reason}
                for r in outcome.rejected]

    def keep(items: list[Instruction]) -> list[Instruction]:
        return [
            item.model_copy(update={"examples": [e for e in item.examples if id(e) not in dropped],
                                    "sub_instructions": keep(item.sub_instructions)})
            for item in items if id(item) not in dropped
        ]

    common = keep(proposed.common)
    per = {name: kept for name, items in proposed.per_annotator.items() if (kept := keep(items))}
    goal = in_force.goal if "goal" in dropped else proposed.goal
    return Guideline(common=common, per_annotator=per, goal=goal), rejected, bool(outcome.kept)


def _walk(items: Iterable[Instruction]) -> Iterable[Instruction]:
    for item in items:
        yield item
        yield from _walk(item.sub_instructions)


def _all_instructions(guideline: Guideline) -> list[Instruction]:
    return [*_walk(guideline.common), *(i for items in guideline.per_annotator.values() for i in _walk(items))]
