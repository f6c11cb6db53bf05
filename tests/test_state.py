"""State models and task files."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from pydantic import ValidationError

from state.errors import InputError
from state.models import AnnotatorOutput, Document, EntityType, Span, TaskConfiguration, TaskDefinition
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA
BENCHMARKS = sorted(p.name for p in DATA.iterdir() if p.is_dir())


def test_span_rejects_bad_values_with_clear_messages():
    with pytest.raises(ValidationError, match="must be greater than start"):
        Span(start=3, end=3, type="X")
    with pytest.raises(ValidationError, match="outside the text"):
        Span.model_validate({"start": 0, "end": 9, "type": "X"}, context={"text": "short"})
    with pytest.raises(ValidationError, match="unknown entity type 'Y'"):
        Span.model_validate({"start": 0, "end": 2, "type": "Y"}, context={"text": "short", "types": {"X"}})
    assert Span.model_validate({"start": 0, "end": 5, "type": "X"}, context={"text": "short", "types": {"X"}})


def test_document_and_annotator_output():
    with pytest.raises(ValidationError, match="outside the text"):
        Document(id="d", text="abc", entities=[Span(start=0, end=4, type="X")])
    assert Document(id="d", text="abc").entities is None
    with pytest.raises(ValidationError, match="needs a reason"):
        AnnotatorOutput(annotator="m", document_id="d", status="failed")
    with pytest.raises(ValidationError, match="carries no spans"):
        AnnotatorOutput(annotator="m", document_id="d", status="failed", reason="x", spans=[Span(start=0, end=1, type="X")])
    ok = AnnotatorOutput(annotator="m", document_id="d", status="ok")
    assert ok.spans == [] and ok.status == "ok"


def test_entity_type_name_and_configuration():
    with pytest.raises(ValidationError, match="UPPER_SNAKE_CASE"):
        EntityType(name="person", definition="x")
    theta = TaskConfiguration(schema=[EntityType(name="PER", definition="people")], goal="find people")
    assert theta.schema_[0].name == "PER" and theta.common_instructions == []


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_task_file_per_benchmark_maps_every_dataset_label(bench):
    task = TaskDefinition.from_yaml(ROOT / "tasks" / f"{bench}.yaml")
    assert task.name == bench
    labels = collections.Counter()
    for f in (DATA / bench).iterdir():
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip() and "\t" in line:
                tag = line.rsplit("\t", 1)[1]
                if tag != "O":
                    labels[tag[2:]] += 1
    assert set(task.label_mapping) == set(labels), bench
    assert sorted(task.label_mapping.values()) == sorted(task.type_names)  # a bijection
    for t in task.entity_types:
        assert t.definition.strip() and t.positive_examples and t.negative_examples


def test_tasks_folder_has_no_stray_benchmark_files():
    for p in (ROOT / "tasks").iterdir():
        for bench in BENCHMARKS:
            if p.name.startswith(bench):
                assert p.name == f"{bench}.yaml"


def test_bad_task_file_messages(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nentity_types:\n  - name: lower\n    definition: d\nfinal_task_goal: g\n")
    with pytest.raises(InputError, match=r"entity_types\[0\]\.name: .*UPPER_SNAKE_CASE"):
        TaskDefinition.from_yaml(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        TaskDefinition.from_yaml(bad)
    bad.write_text("name: x\nentity_types:\n  - {name: A, definition: d}\nfinal_task_goal: g\nlabel_mapping: {a: B}\n")
    with pytest.raises(InputError, match="unknown type names"):
        TaskDefinition.from_yaml(bad)
    with pytest.raises(InputError, match="cannot read"):
        TaskDefinition.from_yaml(tmp_path / "missing.yaml")
