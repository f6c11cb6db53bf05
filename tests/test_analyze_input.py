"""`diziner analyze` input (disagreement/io.py): every bad span or line is named by file and line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from disagreement.io import read_annotations
from state.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def doc(doc_id: str, text: str, spans: list[tuple[object, object, object]]) -> str:
    """One input line: annotator m with `spans`, annotator n with none."""
    ann = {"m": [{"start": s, "end": e, "type": t} for s, e, t in spans], "n": []}
    return json.dumps({"id": doc_id, "text": text, "annotations": ann})


def write_lines(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "ann.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def error_of(path: Path) -> str:
    with pytest.raises(InputError) as info:
        read_annotations(str(path))
    return str(info.value)


GOOD = doc("ok", "Paris is nice", [(0, 5, "LOC")])


@pytest.mark.parametrize(
    "span, message",
    [
        ((0, 5, "X"), "document 'b', annotator 'm': span [0, 5) lies outside the text (length 2)"),
        ((-1, 1, "X"), "span [-1, 1) lies outside the text"),
        ((0, 2**70, "X"), f"span [0, {2**70}) lies outside the text (length 2)"),
        ((2**70, 2**70 + 1, "X"), f"span [{2**70}, {2**70 + 1}) lies outside the text"),
        ((-(2**70), 1, "X"), f"span [{-(2**70)}, 1) lies outside the text"),
        ((2**70, 1, "X"), f"span end 1 must be greater than start {2**70}"),
        ((1, 1, "X"), "span end 1 must be greater than start 1"),
        ((0, 1.0, "X"), "span offsets must be integers, got start=0 end=1.0"),
        ((True, 1, "X"), "span offsets must be integers"),
        ((0, 1, ""), "span type must be a non-empty string"),
    ],
)
def test_bad_span_names_file_and_line(tmp_path, span, message):
    p = write_lines(tmp_path, GOOD, "", doc("b", "xy", [(0, 1, "X"), span]))
    err = error_of(p)
    assert err.startswith(f"{p}:3: "), err
    assert message in err, err


def test_first_bad_span_in_file_order_is_named(tmp_path):
    p = write_lines(tmp_path, GOOD, doc("b", "xy", [(1, 1, "X")]), doc("c", "xy", [(0, 2**70, "X")]))
    err = error_of(p)
    assert err.startswith(f"{p}:2: ") and "document 'b'" in err, err
    p = write_lines(tmp_path, GOOD, doc("b", "xy", [(0, 3, "X")]), doc("c", "xyz", [(0, 3, "X")]))
    err = error_of(p)  # (0, 3) fits the longest text but not document b's
    assert err.startswith(f"{p}:2: ") and "document 'b'" in err and "outside the text (length 2)" in err, err


def test_valid_input_with_bom_blank_lines_and_crlf(tmp_path):
    p = tmp_path / "ann.jsonl"
    p.write_bytes(("\ufeff" + GOOD + "\r\n\r\n" + doc("b", "Rome", [(0, 4, "LOC")]) + "\r\n").encode("utf-8"))
    batch = read_annotations(str(p))
    assert batch.doc_ids == ["ok", "b"] and batch.annotators == ["m", "n"]
    assert batch.span_start.tolist() == [0, 0] and batch.span_end.tolist() == [5, 4]
    assert batch.span_start.dtype == np.int64


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (invalid JSON: nested too deeply"),
        ("[1]", "expected a JSON object, got an array"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    p = write_lines(tmp_path, GOOD, "", line)
    err = error_of(p)
    assert err.startswith(f"{p}:3: ") and message in err, err


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "analyze", str(path), *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.parametrize("args", [(), ("--json",)])
@pytest.mark.parametrize("end", [5, 2**70])
def test_cli_out_of_range_span_exit_2(tmp_path, args, end):
    p = write_lines(tmp_path, GOOD, doc("b", "xy", [(0, end, "X")]))
    proc = _cli(p, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert f"{p}:2: document 'b', annotator 'm': span [0, {end}) lies outside the text (length 2)" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected failure" not in proc.stderr
