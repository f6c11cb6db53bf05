"""Tests for corpus I/O (corpus/io.py): JSONL and CoNLL parsing, errors, detection, writing, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus.io import (
    CorpusDocument,
    ReadStats,
    conll_tags,
    is_int,
    iter_jsonl,
    read_documents,
    write_conll,
    write_jsonl,
)
from state.errors import InputError
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA

# Every shared file (README of ../shared/data/ner), with the test split's sentence / entity counts from that README.
SHARED_FILES = (
    [
        f"crossner_{d}/{s}.txt"
        for d in ("ai", "literature", "music", "politics", "science")
        for s in ("train", "dev", "test")
    ]
    + [f"{d}/{s}.tsv" for d in ("anatem", "bc2gm", "ncbi_disease") for s in ("dev", "test")]
    + [f"{d}/{s}.conll" for d in ("wnut17", "broad_twitter") for s in ("dev", "test")]
)
TEST_COUNTS = {
    "crossner_ai/test.txt": (431, 1809),
    "crossner_literature/test.txt": (416, 2266),
    "crossner_music/test.txt": (465, 3336),
    "crossner_politics/test.txt": (651, 4209),
    "crossner_science/test.txt": (543, 3089),
    "anatem/test.tsv": (3830, 4616),
    "bc2gm/test.tsv": (5038, 6325),
    "ncbi_disease/test.tsv": (940, 960),
    "wnut17/test.conll": (1287, 1079),
    "broad_twitter/test.conll": (2000, 4376),
}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_bytes(content.encode("utf-8"))
    return p


def error_of(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        read_documents(path)
    return info.value


def assert_error_at(path: Path, line: int | None, *fragments: str) -> None:
    exc = error_of(path)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(exc).startswith(prefix), str(exc)
    for frag in fragments:
        assert frag in str(exc), str(exc)


# ------------------------------------------------------------------------------------------------------- JSONL


def test_jsonl_basic_extras_unlabelled_and_blank_lines(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "Alice in Paris", "entities": [{"start": 0, "end": 5, "type": "PER"},
                    {"start": 9, "end": 14, "type": "LOC", "note": "dropped"}], "source": {"x": 1}}),
        "",
        "   \t",
        json.dumps({"id": "b", "text": "no labels here", "meta": [1, 2]}),
        json.dumps({"id": "c", "text": "", "entities": None}),
        json.dumps({"id": "d", "text": "x", "entities": []}),
    ]
    p = write(tmp_path, "docs.jsonl", "\n".join(lines) + "\n")
    docs, stats = read_documents(p)
    assert stats.format == "jsonl" and stats.repairs == 0
    assert [d.id for d in docs] == ["a", "b", "c", "d"]
    assert docs[0].entities == [(0, 5, "PER"), (9, 14, "LOC")]
    assert docs[0].extra == {"source": {"x": 1}}
    assert docs[0].tokens is None
    assert docs[1].entities is None and docs[1].extra == {"meta": [1, 2]}
    assert docs[2].entities is None and docs[2].text == ""
    assert docs[3].entities == []
    assert [d.line for d in docs] == [1, 4, 5, 6]


def test_jsonl_error_line_counts_blank_lines(tmp_path):
    good = json.dumps({"id": "a", "text": "t"})
    p = write(tmp_path, "d.jsonl", f"{good}\n\n\n{{not json\n")
    assert_error_at(p, 4, "invalid JSON")


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ([1, 2], "expected a JSON object"),
        ({"text": "x"}, 'missing key "id"'),
        ({"id": "", "text": "x"}, '"id" must be a non-empty string'),
        ({"id": 3, "text": "x"}, '"id" must be a non-empty string'),
        ({"id": "a"}, 'missing key "text"'),
        ({"id": "a", "text": 5}, '"text" must be a string'),
        ({"id": "a", "text": "abc", "entities": {"start": 0}}, '"entities" must be a list'),
        ({"id": "a", "text": "abc", "entities": [[0, 1, "X"]]}, "entity 0: expected an object"),
        ({"id": "a", "text": "abc", "entities": [{"end": 1, "type": "X"}]}, 'missing key "start"'),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "type": "X"}]}, 'missing key "end"'),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": 1}]}, 'missing key "type"'),
        (
            {"id": "a", "text": "abc", "entities": [{"start": True, "end": 1, "type": "X"}]},
            '"start" must be an integer',
        ),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": True, "type": "X"}]}, '"end" must be an integer'),
        ({"id": "a", "text": "abc", "entities": [{"start": 0.0, "end": 1, "type": "X"}]}, '"start" must be an integer'),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": "2", "type": "X"}]}, '"end" must be an integer'),
        ({"id": "a", "text": "abc", "entities": [{"start": -1, "end": 1, "type": "X"}]}, "not within the text"),
        ({"id": "a", "text": "abc", "entities": [{"start": 1, "end": 1, "type": "X"}]}, "not within the text"),
        ({"id": "a", "text": "abc", "entities": [{"start": 2, "end": 1, "type": "X"}]}, "not within the text"),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": 4, "type": "X"}]}, "not within the text"),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": 1, "type": ""}]}, '"type" must be a non-empty'),
        ({"id": "a", "text": "abc", "entities": [{"start": 0, "end": 1, "type": 7}]}, '"type" must be a non-empty'),
        (
            {
                "id": "a",
                "text": "abc",
                "entities": [{"start": 0, "end": 1, "type": "X"}, {"start": 0, "end": 9, "type": "X"}],
            },
            "entity 1",
        ),
    ],
)
def test_jsonl_validation_errors_name_file_and_line(tmp_path, obj, fragment):
    first = json.dumps({"id": "first", "text": "ok"})
    p = write(tmp_path, "bad.jsonl", first + "\n\n" + json.dumps(obj) + "\n")
    assert_error_at(p, 3, fragment)


def test_jsonl_text_offsets_are_code_points(tmp_path):
    text = "é😀 Zürich"
    line = json.dumps({"id": "u", "text": text, "entities": [{"start": 3, "end": 9, "type": "LOC"}]})
    p = write(tmp_path, "u.jsonl", line)
    docs, _ = read_documents(p)
    s, e, _t = docs[0].entities[0]
    assert text[s:e] == "Zürich"


def test_jsonl_duplicate_ids(tmp_path):
    a = json.dumps({"id": "a", "text": "x"})
    b = json.dumps({"id": "b", "text": "x"})
    p = write(tmp_path, "dup.jsonl", "\n".join([a, b, "", a]) + "\n")
    assert_error_at(p, 4, "duplicate document id 'a'", "line 1")


def test_jsonl_write_is_deterministic_and_keeps_extras(tmp_path):
    docs = [
        CorpusDocument("x1", "Zoë in Genève", [(0, 3, "PER"), (7, 13, "LOC")], None, {"src": "wiki", "n": 1}),
        CorpusDocument("x2", "unlabelled", None, None, {}),
        CorpusDocument("x3", "a b", [], ["a", "b"], {}),
    ]
    out = tmp_path / "out.jsonl"
    write_jsonl(out, docs)
    raw = out.read_text(encoding="utf-8")
    lines = raw.split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert "Zoë" in lines[0] and "\\u" not in raw  # ensure_ascii=False
    assert list(json.loads(lines[0])) == ["id", "text", "entities", "src", "n"]
    assert "entities" not in json.loads(lines[1])
    assert json.loads(lines[2]) == {"id": "x3", "text": "a b", "entities": [], "tokens": ["a", "b"]}
    back, stats = read_documents(out)
    assert stats.format == "jsonl" and back == docs
    write_jsonl(tmp_path / "again.jsonl", back)
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def test_jsonl_tokens_key_only_taken_when_consistent(tmp_path):
    good = {"id": "g", "text": "a  b", "tokens": ["a", "", "b"]}
    other = {"id": "o", "text": "a b", "tokens": ["ab"]}
    p = write(tmp_path, "t.jsonl", json.dumps(good) + "\n" + json.dumps(other) + "\n")
    docs, _ = read_documents(p)
    assert docs[0].tokens == ["a", "", "b"] and "tokens" not in docs[0].extra
    assert docs[1].tokens is None and docs[1].extra == {"tokens": ["ab"]}


# ------------------------------------------------------------------------------------------------------- CoNLL


def test_conll_basic_ids_text_offsets(tmp_path):
    p = write(tmp_path, "news.v1.conll", "John\tB-PER\nSmith\tI-PER\nvisited\tO\nNew\tB-LOC\nYork\tI-LOC\n\nHi\tO\n\n")
    docs, stats = read_documents(p)
    assert stats.format == "conll" and stats.repairs == 0 and stats.empty_entities_skipped == 0
    assert [d.id for d in docs] == ["news.v1-1", "news.v1-2"]
    d = docs[0]
    assert d.text == "John Smith visited New York"
    assert d.tokens == ["John", "Smith", "visited", "New", "York"]
    assert d.entities == [(0, 10, "PER"), (19, 27, "LOC")]
    assert [d.text[s:e] for s, e, _ in d.entities] == ["John Smith", "New York"]
    assert docs[1].entities == [] and docs[1].line == 7


def test_conll_id_without_extension(tmp_path):
    p = write(tmp_path, "plain", "a\tO\n")
    assert [d.id for d in read_documents(p)[0]] == ["plain-1"]


def test_conll_split_at_last_tab_keeps_tabs_and_spaces_in_token(tmp_path):
    p = write(tmp_path, "t.tsv", "a\tb\tB-X\nNew York\tI-X\n two \tO\n")
    (d,), _ = read_documents(p)
    assert d.tokens == ["a\tb", "New York", " two "]
    assert d.entities == [(0, len("a\tb New York"), "X")]


def test_conll_no_tab_splits_at_last_run_of_spaces(tmp_path):
    p = write(tmp_path, "s.txt", "New York    B-LOC\ncity O\n   O\nx\tO\n")
    (d,), _ = read_documents(p)
    assert d.tokens == ["New York", "city", "", "x"]
    assert d.text == "New York city  x"
    assert d.entities == [(0, 8, "LOC")]


def test_conll_empty_token_and_entities_around_it(tmp_path):
    # An empty token inside an entity, and an entity starting on an empty token, are fine (non-zero length).
    p = write(tmp_path, "e.conll", "a\tB-X\n\tI-X\nb\tO\n\tB-Y\nc\tI-Y\n")
    (d,), stats = read_documents(p)
    assert d.tokens == ["a", "", "b", "", "c"]
    assert d.text == "a  b  c"
    assert d.entities == [(0, 2, "X"), (5, 7, "Y")]
    assert stats.empty_entities_skipped == 0


def test_conll_zero_length_entity_skipped_and_counted(tmp_path):
    p = write(tmp_path, "z.conll", "a\tO\n\tB-X\nb\tB-Y\n\nc\tO\n\tI-Z\n")
    docs, stats = read_documents(p)
    assert docs[0].entities == [(3, 4, "Y")]
    assert docs[1].entities == []
    assert stats.empty_entities_skipped == 2 and stats.empty_entity_lines == [2, 6]
    assert stats.repairs == 1 and stats.repair_lines == [6]
    assert any("zero-length" in w for w in stats.warnings(p))


def test_conll_docstart_and_runs_of_blank_lines(tmp_path):
    content = "\n \n-DOCSTART-\tO\n\na\tO\n\n\n  \t \n\nb\tB-X\n-DOCSTART- -X- O O\nc\tI-X\n\n-DOCSTART-\tO\n\n\n"
    p = write(tmp_path, "d.txt", content)
    docs, stats = read_documents(p)
    assert [(d.id, d.tokens) for d in docs] == [("d-1", ["a"]), ("d-2", ["b", "c"])]
    assert docs[1].entities == [(0, 3, "X")] and stats.repairs == 0
    assert [d.line for d in docs] == [5, 10]


def test_conll_last_sentence_without_trailing_blank_line_and_crlf(tmp_path):
    p = write(tmp_path, "c.txt", "a\tB-X\r\nb\tI-X\r\n\r\nc\tO")
    docs, _ = read_documents(p)
    assert [d.tokens for d in docs] == [["a", "b"], ["c"]]
    assert docs[0].entities == [(0, 3, "X")]


@pytest.mark.parametrize(
    "tags, entities, repairs",
    [
        (["I-X", "I-X"], [(0, 3, "X")], [1]),  # sentence start
        (["O", "I-X"], [(2, 3, "X")], [2]),  # after O
        (["B-Y", "I-X"], [(0, 1, "Y"), (2, 3, "X")], [2]),  # after B-Y: starts a new X span
        (["B-Y", "I-Y", "I-X", "I-X"], [(0, 3, "Y"), (4, 7, "X")], [3]),  # after I-Y
        (["B-X", "I-X", "B-X"], [(0, 3, "X"), (4, 5, "X")], []),  # no repair
    ],
)
def test_conll_ix_repair_counted(tmp_path, tags, entities, repairs):
    toks = "abcd"[: len(tags)]
    p = write(tmp_path, "r.conll", "".join(f"{t}\t{g}\n" for t, g in zip(toks, tags)))
    (d,), stats = read_documents(p)
    assert d.entities == entities
    assert stats.repairs == len(repairs) and stats.repair_lines == repairs
    assert bool(stats.warnings(p)) == bool(repairs)


@pytest.mark.parametrize("bad", ["X", "B-", "I-", "b-PER", "B_PER", "", "BX-PER", "O-X", "E-PER", "o"])
def test_conll_bad_tag_names_file_and_line(tmp_path, bad):
    p = write(tmp_path, "bad.conll", f"a\tO\n\nb\tB-X\nc\t{bad}\n")
    assert_error_at(p, 4, "bad tag")


def test_conll_line_without_separator(tmp_path):
    p = write(tmp_path, "n.conll", "a\tO\nlonely\n")
    assert_error_at(p, 2, "no tab or space")


# --------------------------------------------------------------------------------------------- detection, files


def test_detection_by_content_not_extension(tmp_path):
    j = write(tmp_path, "looks_like.conll", "\n  \n" + json.dumps({"id": "a", "text": "x"}) + "\n")
    c = write(tmp_path, "looks_like.jsonl", "\n x{\tB-X\n")
    assert read_documents(j)[1].format == "jsonl"
    docs, stats = read_documents(c)
    assert stats.format == "conll" and docs[0].tokens == [" x{"] and docs[0].id == "looks_like-1"
    # A CoNLL file whose first non-blank line starts with "{" is read as JSONL, and so fails as JSONL.
    j2 = write(tmp_path, "braces.txt", "{\tO\n")
    assert_error_at(j2, 1, "invalid JSON")


def test_empty_file_has_no_documents(tmp_path):
    docs, stats = read_documents(write(tmp_path, "empty.txt", "\n\n"))
    assert docs == [] and stats.format == "conll"


def test_missing_unreadable_and_non_utf8(tmp_path):
    assert_error_at(tmp_path / "nope.jsonl", None, "cannot read file")
    assert_error_at(tmp_path, None, "cannot read file")  # a directory
    p = write(tmp_path, "latin1.conll", "a\tO\n\nZ\xfcrich\tB-LOC\n".encode("latin-1"))
    assert_error_at(p, 3, "not valid UTF-8")


def test_bom_is_ignored(tmp_path):
    p = write(tmp_path, "bom.jsonl", "\ufeff" + json.dumps({"id": "a", "text": "x"}) + "\n")
    assert read_documents(p)[1].format == "jsonl"


def test_iter_jsonl_lines_blank_lines_bom_and_crlf(tmp_path):
    a, b = json.dumps({"id": "a", "n": [1]}), json.dumps({"id": "b"})
    p = write(tmp_path, "x.jsonl", "\ufeff" + a + "\r\n\n  \t\r\n" + b)
    assert list(iter_jsonl(p)) == [(1, {"id": "a", "n": [1]}), (4, {"id": "b"})]
    assert list(iter_jsonl(write(tmp_path, "empty.jsonl", ""))) == []


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("{not json", "not valid JSON (invalid JSON at column 2: Expecting property name"),
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"text"', "expected a JSON object, got a string"),
        ("3.5", "expected a JSON object, got a number"),
        ("null", "expected a JSON object, got null"),
        ("true", "expected a JSON object, got true or false"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (invalid JSON: nested too deeply"),
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON (invalid JSON: Exceeds the limit"),
    ],
)
def test_iter_jsonl_errors_name_file_and_line(tmp_path, line, fragment):
    ok = json.dumps({"id": "a", "text": "x"})
    p = write(tmp_path, "bad.jsonl", ok + "\n\n" + line + "\n" + ok + "\n")
    with pytest.raises(InputError) as info:
        list(iter_jsonl(p))
    assert str(info.value).startswith(f"{p}:3: "), str(info.value)
    assert fragment in str(info.value), str(info.value)
    assert_error_at(p, 3, fragment)  # read_documents reads JSONL through the same reader


def test_iter_jsonl_non_utf8_and_missing_file(tmp_path):
    p = write(tmp_path, "latin1.jsonl", b'{"a": 1}\n{"t": "Z\xfcrich"}\n')
    with pytest.raises(InputError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 17\)"):
        list(iter_jsonl(p))
    with pytest.raises(InputError, match="cannot read file"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_is_int():
    import numpy as np

    assert is_int(0) and is_int(-3) and is_int(2**70) and is_int(np.int64(5)) and is_int(np.uint8(1))
    assert not any(is_int(v) for v in (True, False, np.bool_(True), 3.0, np.float64(1.0), "1", None))


# ------------------------------------------------------------------------------------------------------ writing


def test_write_conll_tags_from_spans_and_exact_bytes(tmp_path):
    content = "a b\tB-X\n\tI-X\nc\tO\nd\tB-X\ne\tB-Y\n\nf\tO\n\n"
    p = write(tmp_path, "w.conll", content)
    docs, _ = read_documents(p)
    out = tmp_path / "out.conll"
    write_conll(out, docs)
    assert out.read_bytes() == content.encode("utf-8")
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


def test_write_conll_from_jsonl_with_tokens(tmp_path):
    doc = CorpusDocument("q", "New York  rocks", [(0, 8, "LOC")], ["New", "York", "", "rocks"], {})
    out = tmp_path / "q.txt"
    write_conll(out, [doc])
    assert out.read_text(encoding="utf-8") == "New\tB-LOC\nYork\tI-LOC\n\tO\nrocks\tO\n\n"


def test_conll_tags_unaligned_and_invalid_spans():
    doc = CorpusDocument("d", "Paris, France", [(0, 5, "LOC"), (7, 13, "LOC")], ["Paris,", "France"], {})
    assert conll_tags(doc) == ["B-LOC", "B-LOC"]  # "Paris" covers the token "Paris," it overlaps
    dup = CorpusDocument("d", "a b", [(0, 1, "X"), (0, 1, "X")], ["a", "b"], {})
    assert conll_tags(dup) == ["B-X", "O"]
    with pytest.raises(InputError, match="overlapping"):
        conll_tags(CorpusDocument("d", "a b", [(0, 3, "X"), (2, 3, "Y")], ["a", "b"], {}))
    with pytest.raises(InputError, match="covers no token"):
        conll_tags(CorpusDocument("d", "a  b", [(1, 2, "X")], ["a", "", "b"], {}))
    with pytest.raises(InputError, match="no tokens"):
        conll_tags(CorpusDocument("d", "a b", [], None, {}))
    with pytest.raises(InputError, match="joined by single spaces"):
        conll_tags(CorpusDocument("d", "a  b", [], ["a", "b"], {}))


def test_write_conll_error_leaves_existing_file(tmp_path):
    out = tmp_path / "keep.conll"
    out.write_text("old\tO\n\n", encoding="utf-8")
    with pytest.raises(InputError):
        write_conll(out, [CorpusDocument("d", "a b", [], None, {})])
    with pytest.raises(InputError, match="cannot be written"):
        write_conll(out, [CorpusDocument("d", "-DOCSTART- x", [], ["-DOCSTART-", "x"], {})])
    assert out.read_text(encoding="utf-8") == "old\tO\n\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.conll"]


def test_repaired_file_round_trips_at_document_level(tmp_path):
    p = write(tmp_path, "rep.conll", "a\tO\nb\tI-X\nc\tI-X\n\n")
    docs, stats = read_documents(p)
    assert stats.repairs == 1
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "rep.conll"  # same file name, so the same ids
    write_conll(out, docs)
    assert out.read_text(encoding="utf-8") == "a\tO\nb\tB-X\nc\tI-X\n\n"  # the repair is written as B-X
    assert read_documents(out)[0] == docs


# ------------------------------------------------------------------------------------------- shared benchmarks


def test_shared_data_present_and_complete():
    """The shared data is always there in CI: fail (do not skip) when it is missing or differs from the list."""
    assert DATA.is_dir(), f"shared NER data missing: {DATA}"
    found = sorted(
        str(p.relative_to(DATA)) for p in DATA.glob("*/*") if p.is_file() and p.suffix in (".txt", ".tsv", ".conll")
    )
    assert found == sorted(SHARED_FILES)


@pytest.mark.parametrize("rel", SHARED_FILES)
def test_round_trip_every_shared_file(tmp_path, rel):
    src = DATA / rel
    assert src.is_file(), f"missing shared file {src}"
    docs, stats = read_documents(src)
    assert stats.format == "conll" and docs
    stem = Path(rel).stem
    assert [d.id for d in docs] == [f"{stem}-{n}" for n in range(1, len(docs) + 1)]
    out = tmp_path / Path(rel).name
    write_conll(out, docs)
    if stats.repairs == 0 and stats.empty_entities_skipped == 0:
        assert out.read_bytes() == src.read_bytes()
    else:  # repaired tags are written back as valid IOB2, so only the documents can be compared
        assert read_documents(out)[0] == docs
    # and through JSONL: same documents, and back to the same CoNLL bytes
    j = tmp_path / "docs.jsonl"
    write_jsonl(j, docs)
    jdocs, jstats = read_documents(j)
    assert jstats.format == "jsonl" and jdocs == docs
    out2 = tmp_path / ("again" + Path(rel).suffix)
    write_conll(out2, jdocs)
    assert out2.read_bytes() == out.read_bytes()
    if rel in TEST_COUNTS:
        assert (len(docs), sum(len(d.entities) for d in docs)) == TEST_COUNTS[rel]


def test_readstats_defaults():
    s = ReadStats(format="conll")
    assert s.repairs == 0 and s.warnings("x") == []


def test_write_to_missing_directory_is_input_error_and_mode_kept(tmp_path):
    doc = CorpusDocument("a", "x", [], ["x"], {})
    with pytest.raises(InputError, match="cannot write file") as info:
        write_jsonl(tmp_path / "no" / "such.jsonl", [doc])
    assert str(info.value).startswith(str(tmp_path / "no" / "such.jsonl"))
    target = tmp_path / "m.conll"
    target.write_text("", encoding="utf-8")
    target.chmod(0o640)
    write_conll(target, [doc])
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text(encoding="utf-8") == "x\tO\n\n"
