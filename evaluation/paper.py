"""The DiZiNER paper's reported figures (`paper_results.yaml` beside this module) as typed, validated records.

Figures are F1 x 100 as the paper prints them (`SystemFigure.fraction` gives the 0-1 value the scorers return).
Every malformed file is an `InputError` naming the file, the line of the bad field and what is wrong.
See docs/method.md (evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from state.inputs import load_yaml, validate_yaml

__all__ = [
    "PAPER_RESULTS_PATH",
    "Average",
    "Benchmark",
    "Claim",
    "PaperResults",
    "PublishedFigures",
    "Source",
    "SystemFigure",
    "load_paper_results",
]

PAPER_RESULTS_PATH = Path(__file__).with_name("paper_results.yaml")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Record):
    """Where figures come from: the paper version, the table, and a locator (repository file at a commit, or URL)."""

    version: str = Field(min_length=1)
    table: str = Field(min_length=1)
    location: str = Field(min_length=1)


class SystemFigure(_Record):
    """One system's F1 (x 100) with the system's name, e.g. the best prior zero-shot system."""

    f1: float = Field(ge=0, le=100)
    system: str = Field(min_length=1)

    @property
    def fraction(self) -> float:
        return self.f1 / 100


class Benchmark(_Record):
    """One benchmark's row: DiZiNER, GPT-5 mini alone, the best prior zero-shot and (outside CrossNER) supervised."""

    key: str = ""
    paper_name: str = Field(min_length=1)
    group: Literal["crossner", "others"]
    source: str
    diziner: float = Field(ge=0, le=100)
    gpt5_mini: float = Field(ge=0, le=100)
    prior_zero_shot: SystemFigure
    supervised: SystemFigure | None = None
    note: str | None = None


class PublishedFigures(_Record):
    """The published version's DiZiNER F1 for the benchmarks where it is known."""

    source: str
    f1: dict[str, float]


class Average(_Record):
    """An average the paper reports, the benchmarks it is taken over, and the difference rows printed with it."""

    paper_name: str = Field(min_length=1)
    source: str
    benchmarks: list[str] = Field(min_length=1)
    diziner: float = Field(ge=0, le=100)
    gpt5_mini: float = Field(ge=0, le=100)
    prior_zero_shot: SystemFigure | None = None
    reported_differences: dict[str, float] = Field(default_factory=dict)
    note: str | None = None


class Claim(_Record):
    """A headline claim of one paper version."""

    source: str
    text: str = Field(min_length=1)


class PaperResults(_Record):
    """The whole file: sources, tasks not in the paper, benchmarks, published figures, averages and claims."""

    sources: dict[str, Source] = Field(min_length=1)
    not_in_paper: list[str] = Field(default_factory=list)
    benchmarks: dict[str, Benchmark] = Field(min_length=1)
    published_diziner: PublishedFigures | None = None
    averages: dict[Literal["crossner", "others"], Average]
    claims: list[Claim] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _keys_into_benchmarks(cls, data: object) -> object:
        """Each benchmark record carries its own key (the task name)."""
        if isinstance(data, dict) and isinstance(data.get("benchmarks"), dict):
            data = dict(data)
            data["benchmarks"] = {
                k: ({**v, "key": k} if isinstance(v, dict) and "key" not in v else v)
                for k, v in data["benchmarks"].items()
            }
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PaperResults:
        cited = [(f"benchmarks.{k}", b.source) for k, b in self.benchmarks.items()]
        cited += [(f"averages.{k}", a.source) for k, a in self.averages.items()]
        cited += [(f"claims[{i}]", c.source) for i, c in enumerate(self.claims)]
        if self.published_diziner is not None:
            cited.append(("published_diziner", self.published_diziner.source))
        for where, source in cited:
            if source not in self.sources:
                raise ValueError(f"{where} cites source {source!r}, which is not under 'sources'")
        for key, b in self.benchmarks.items():
            if b.key != key:
                raise ValueError(f"benchmarks.{key} has key {b.key!r}")
        overlap = sorted(set(self.not_in_paper) & self.benchmarks.keys())
        if overlap:
            raise ValueError(f"not_in_paper names benchmarks that have figures: {overlap}")
        if self.published_diziner is not None:
            unknown = sorted(self.published_diziner.f1.keys() - self.benchmarks.keys())
            if unknown:
                raise ValueError(f"published_diziner names unknown benchmarks: {unknown}")
        for name, avg in self.averages.items():
            unknown = sorted(set(avg.benchmarks) - self.benchmarks.keys())
            if unknown:
                raise ValueError(f"averages.{name} names unknown benchmarks: {unknown}")
            if len(set(avg.benchmarks)) != len(avg.benchmarks):
                raise ValueError(f"averages.{name} names a benchmark twice")
            group = sorted(k for k, b in self.benchmarks.items() if b.group == name)
            if sorted(avg.benchmarks) != group:
                raise ValueError(f"averages.{name} must list exactly the benchmarks of group {name!r}: {group}")
        return self

    def average_benchmarks(self, name: Literal["crossner", "others"]) -> list[Benchmark]:
        """The benchmark records an average is taken over, in the file's order."""
        return [self.benchmarks[k] for k in self.averages[name].benchmarks]

    def for_task(self, task: str) -> Benchmark | None:
        """The paper's figures for a task of this repository; None when the paper does not evaluate it."""
        if task in self.benchmarks:
            return self.benchmarks[task]
        if task in self.not_in_paper:
            return None
        raise KeyError(f"task {task!r} is neither a paper benchmark nor listed under not_in_paper")


def load_paper_results(path: str | Path = PAPER_RESULTS_PATH) -> PaperResults:
    """The validated paper figures; a missing, unreadable or malformed file is an InputError naming file and line."""
    data, root = load_yaml(path, "paper results file")
    return validate_yaml(PaperResults, data, root, path)
