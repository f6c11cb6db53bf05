"""annotation.exports: every format read back by its own library (spaCy, datasets, the CoNLL reader, json), the
engine's IOB2 rule and its counts, Unicode offsets, resuming after a mark, and the errors of paths and extras."""

from __future__ import annotations

import json
import random
import sys
import xml.etree.ElementTree as ET

import pytest

from annotation.exports import (
    FORMATS,
    SPAN_GROUP,
    Mark,
    document_tokens,
    label_studio_config,
    open_writer,
    tag_document,
)
from corpus.io import CorpusDocument, read_documents, write_jsonl
from corpus.tokens import spans_to_iob2
from state.errors import InputError

TEXT = "John Smith lives in New York."


def _docs() -> list[CorpusDocument]:
    """A JSONL-like document with overlapping and off-boundary spans, a CoNLL-like one (own tokens), an empty one."""
    return [
        # John Smith (0,10) PER; Smith (5,10) PER overlaps it; New York (20,28) LOC; New (20,23) ORG overlaps it;
        # "ew Y" (21,25) is off token boundaries and overlaps New York too.
        CorpusDocument("a", TEXT, [(0, 10, "PER"), (5, 10, "PER"), (20, 28, "LOC"), (20, 23, "ORG"), (21, 25, "MISC")]),
        # own tokens: "U.S." is one token here (the engine's tokenizer would make it four)
        CorpusDocument(
            "b",
            "U.S. officials met EU ones",
            [(0, 4, "LOC"), (19, 21, "ORG")],
            tokens=["U.S.", "officials", "met", "EU", "ones"],
        ),
        CorpusDocument("c", "  \n ", []),
    ]


# --------------------------------------------------------------------------------------------------- tokens and tags


def test_tags_follow_the_engines_iob2_rule():
    rng = random.Random(7)
    words = ["Anna", "went", "to", "New", "York", ",", "then", "Paris", "!", "Ü", "北京", "x"]
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 9)))
        n = len(text)
        spans = []
        for _ in range(rng.randint(0, 6)):
            if n < 1:
                break
            s = rng.randrange(n)
            spans.append((s, rng.randint(s + 1, n), rng.choice("ABC")))
        tagging = tag_document(CorpusDocument("d", text, spans))
        tokens, tags, dropped = spans_to_iob2(text, spans)
        assert tagging.tokens == tokens
        assert tagging.tags == tags
        assert tagging.overlapping + tagging.no_token == dropped


def test_tagging_counts_and_kept_spans():
    t = tag_document(_docs()[0])
    assert t.tags == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    assert [k[:3] for k in t.kept] == [(0, 10, "PER"), (20, 28, "LOC")]
    assert (t.overlapping, t.no_token, t.snapped) == (3, 0, 1)
    # a span over whitespace only covers no token; a duplicate counts once
    t = tag_document(CorpusDocument("w", "a   b", [(1, 4, "X"), (0, 1, "Y"), (0, 1, "Y")]))
    assert (t.tags, t.no_token, t.overlapping, len(t.covered)) == (["B-Y", "O"], 1, 0, 2)
    # a failed document has no span
    assert tag_document(_docs()[0], failed=True).tags == ["O"] * 7


def test_document_tokens_own_or_engines():
    toks, starts, ends = document_tokens(_docs()[1])
    assert toks == ["U.S.", "officials", "met", "EU", "ones"]
    assert (starts[3], ends[3]) == (19, 21)
    toks, _, _ = document_tokens(CorpusDocument("x", "U.S. met", []))
    assert toks == ["U", ".", "S", ".", "met"]
    # tokens whose join is not the text are not taken
    assert document_tokens(CorpusDocument("x", "a  b", [], tokens=["a b"]))[0] == ["a", "b"]
    assert document_tokens(CorpusDocument("x", "a  b", [], tokens=["a", "", "b"]))[0] == ["a", "", "b"]


# --------------------------------------------------------------------------------------------------- jsonl


def test_jsonl_is_the_readers_record_and_leaves_failed_out(tmp_path):
    docs = [
        CorpusDocument("a", "Olá mundo 🙂", [(0, 3, "X")], None, {"meta": {"k": [1, 2]}, "z": None}),
        CorpusDocument("b", "EU rejects", [(0, 2, "ORG")], ["EU", "rejects"], {"lang": "en"}),
        CorpusDocument("c", "no spans", []),
        CorpusDocument("d", "unlabelled", None),
    ]
    write_jsonl(tmp_path / "ref.jsonl", docs)
    with open_writer("jsonl", tmp_path / "out.jsonl") as w:
        for d in docs:
            w.write(d)
        w.write(CorpusDocument("e", "failed", []), failed=True)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert (w.counts.documents, w.counts.failed, w.counts.spans) == (5, 1, 2)
    assert w.notes() == [f"{tmp_path / 'out.jsonl'}: 1 failed document(s) left out"]


# --------------------------------------------------------------------------------------------------- conll


def test_conll_reads_back_one_line_per_token(tmp_path):
    docs = _docs() + [CorpusDocument("f", "Paris is nice", [])]
    out = tmp_path / "pred.conll"
    with open_writer("conll", out) as w:
        for d in docs:
            w.write(d, failed=d.id == "f")
    lines = out.read_text(encoding="utf-8").split("\n")
    token_lines = [x for x in lines if x]
    n_tokens = sum(len(document_tokens(d)[0]) for d in docs)
    assert len(token_lines) == n_tokens == 7 + 5 + 0 + 3
    back, stats = read_documents(out)
    # document c has no token, so no sentence; the others in order
    assert [d.tokens for d in back] == [document_tokens(d)[0] for d in docs if document_tokens(d)[0]]
    a, b, f = back
    # the kept spans, on the space-joined tokens of the read-back text
    assert [(a.text[s:e], t) for s, e, t in a.entities] == [("John Smith", "PER"), ("New York", "LOC")]
    assert b.text == docs[1].text and b.entities == [(0, 4, "LOC"), (19, 21, "ORG")]
    assert f.entities == [] and token_lines[-3:] == ["Paris\tO", "is\tO", "nice\tO"]
    assert stats.repairs == 0
    c = w.counts
    assert (c.documents, c.failed, c.spans, c.overlapping, c.no_token, c.snapped, c.no_token_documents) == (
        4,
        1,
        7,
        3,
        0,
        1,
        1,
    )
    notes = "\n".join(w.notes())
    assert "3 span(s) sharing a token" in notes and "left out of the IOB2 tags" in notes
    assert "1 span(s) not on token boundaries" in notes and "1 failed document(s) written all O" in notes
    assert "1 document(s) with no token have no line" in notes


def test_conll_of_a_conll_input_reproduces_it(tmp_path):
    src = tmp_path / "in.conll"
    src.write_text(
        "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall\tO\n\nPeter\tB-PER\nBlackburn\tI-PER\n\n", encoding="utf-8"
    )
    docs, _ = read_documents(src)
    out = tmp_path / "out.conll"
    with open_writer("conll", out) as w:
        for d in docs:
            w.write(d)
    assert out.read_text(encoding="utf-8") == src.read_text(encoding="utf-8")
    assert w.notes() == []


def test_conll_refuses_a_token_it_cannot_write(tmp_path):
    with open_writer("conll", tmp_path / "x.conll") as w, pytest.raises(InputError, match="as a CoNLL line"):
        w.write(CorpusDocument("d", "-DOCSTART- x", [], tokens=["-DOCSTART-", "x"]))
    assert (tmp_path / "x.conll").read_bytes() == b""


# --------------------------------------------------------------------------------------------------- spaCy


def _spacy_docs(path):
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    files = sorted(path.iterdir()) if path.is_dir() else [path]
    vocab = Vocab()
    return [d for f in files for d in DocBin().from_disk(f).get_docs(vocab)]


def _spans(spans):
    return [(s.start_char, s.end_char, s.label_) for s in spans]


def test_spacy_round_trip_ents_and_span_group(tmp_path):
    docs = _docs() + [
        CorpusDocument("u", "Zoë  met\n北京 🙂 friends", [(0, 3, "PER"), (9, 11, "LOC"), (0, 8, "EVT")]),
        CorpusDocument("f", "failed one", []),
    ]
    out = tmp_path / "pred.spacy"
    with open_writer("spacy", out) as w:
        for d in docs:
            w.write(d, failed=d.id == "f")
    got = _spacy_docs(out)
    assert [d.user_data["id"] for d in got] == [d.id for d in docs]
    for doc, sdoc in zip(docs, got, strict=True):
        assert sdoc.text == doc.text  # whitespace kept
    a, b, c, u, f = got
    assert _spans(a.ents) == [(0, 10, "PER"), (20, 28, "LOC")]
    # every span in the group, overlapping ones included; the off-boundary one widened to its tokens
    assert sorted(_spans(a.spans[SPAN_GROUP])) == sorted(
        [(0, 10, "PER"), (5, 10, "PER"), (20, 28, "LOC"), (20, 23, "ORG"), (20, 28, "MISC")]
    )
    assert [t.text for t in b] == ["U.S.", "officials", "met", "EU", "ones"]  # the input's own tokens
    assert _spans(b.ents) == _spans(b.spans[SPAN_GROUP]) == [(0, 4, "LOC"), (19, 21, "ORG")]
    assert _spans(c.ents) == [] and [t.ent_iob_ for t in c] == ["O"] * len(c)
    assert _spans(u.ents) == [(0, 8, "EVT"), (9, 11, "LOC")]
    assert sorted(_spans(u.spans[SPAN_GROUP])) == [(0, 3, "PER"), (0, 8, "EVT"), (9, 11, "LOC")]
    # a failed document: entity annotation missing, not "O"
    assert f.user_data.get("failed") is True and {t.ent_iob_ for t in f} == {""}
    assert (w.counts.overlapping, w.counts.snapped, w.counts.failed) == (4, 1, 1)
    assert any("left out of doc.ents; doc.spans['diziner'] has them" in n for n in w.notes())


def test_spacy_shards_when_the_corpus_passes_shard_size(tmp_path):
    docs = [CorpusDocument(f"d{i}", f"Anna {i} went to Paris", [(0, 4, "PER")]) for i in range(5)]
    small, large = tmp_path / "small.spacy", tmp_path / "large"
    with open_writer("spacy", small, shard_size=5) as w:
        for d in docs:
            w.write(d)
    assert small.is_file() and w.close() == Mark("spacy", 5, small.stat().st_size, 0)
    with open_writer("spacy", large, shard_size=2) as w:
        marks = []
        for d in docs:
            w.write(d)
            marks.append(w.flush().documents)
    # whole shards only: none while the corpus may still be one file, then each shard once full
    assert marks == [0, 0, 2, 4, 4]
    assert sorted(p.name for p in large.iterdir()) == ["00000.spacy", "00001.spacy", "00002.spacy"]
    assert w.close() == Mark("spacy", 5, 0, 3)
    assert [d.user_data["id"] for d in _spacy_docs(large)] == [d.id for d in docs]
    # spaCy's training corpus reads the directory of shards
    import spacy
    from spacy.training import Corpus

    examples = list(Corpus(large)(spacy.blank("xx")))
    assert [_spans(e.reference.ents) for e in examples] == [[(0, 4, "PER")]] * 5
    # replacing it with a small corpus makes PATH a file again; a directory holding other files is refused
    with open_writer("spacy", large, shard_size=10) as w:
        w.write(docs[0])
    assert large.is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="other files than .spacy shards"):
        open_writer("spacy", other)


def test_spacy_encoder_cache_writes_the_same_bytes(tmp_path):
    from spacy.tokens import DocBin

    out = tmp_path / "x.spacy"
    with open_writer("spacy", out) as w:
        for d in _docs():
            w.write(d)
    plain = DocBin(store_user_data=True)
    for d in _spacy_docs(out):
        plain.add(d)
    assert plain.to_bytes() == out.read_bytes()


# --------------------------------------------------------------------------------------------------- hf


@pytest.mark.parametrize("name", ["pred.jsonl", "pred.parquet"])
def test_hf_round_trip_through_datasets(tmp_path, name):
    datasets = pytest.importorskip("datasets")
    docs = _docs() + [CorpusDocument("f", "failed one", [])]
    out = tmp_path / name
    with open_writer("hf", out, row_group_size=2) as w:
        for d in docs:
            w.write(d, failed=d.id == "f")
    kind = "parquet" if name.endswith(".parquet") else "json"
    ds = datasets.load_dataset(kind, data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["id"] == [d.id for d in docs]
    assert ds["text"] == [d.text for d in docs]
    for row, doc in zip(ds, docs, strict=True):
        tagging = tag_document(doc, failed=doc.id == "f")
        assert row["tokens"] == tagging.tokens
        assert row["ner_tags"] == tagging.tags
        want = [] if doc.id == "f" else [(s, e, t, doc.text[s:e]) for s, e, t in doc.entities]
        assert [(x["start"], x["end"], x["label"], x["text"]) for x in row["spans"]] == want
    assert ds[0]["ner_tags"] == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    assert len(ds[0]["spans"]) == 5  # overlapping spans kept in spans
    assert ds[3]["ner_tags"] == ["O", "O"]
    if kind == "parquet":
        import pyarrow.parquet as pq

        assert pq.ParquetFile(out).metadata.num_row_groups == 2
    assert any("left out of ner_tags; spans has them" in n for n in w.notes())


# --------------------------------------------------------------------------------------------------- Label Studio


def _at(text: str, *found: tuple[str, str]) -> tuple[str, str, list[tuple[int, int, str]]]:
    """(text, spans) from the entity strings' first occurrences."""
    return text, [(text.index(s), text.index(s) + len(s), label) for s, label in found]


UNICODE = [
    ("cjk", *_at("東京で山田太郎が講演した。", ("東京", "LOC"), ("山田太郎", "PER"))),
    ("combining", *_at("Zoe\u0308 and Ame\u0301lie", ("Zoe\u0308", "PER"), ("Ame\u0301lie", "PER"))),
    (
        "emoji",
        *_at(
            "🙂👍🏽 Paris loves 👨\u200d👩\u200d👧 Lyon",
            ("Paris", "LOC"),
            ("👨\u200d👩\u200d👧", "FAM"),
            ("Lyon", "LOC"),
        ),
    ),
    ("rtl", *_at("زار محمد القاهرة אתמול", ("محمد", "PER"), ("القاهرة", "LOC"))),
]


def test_label_studio_tasks_offsets_and_unicode(tmp_path):
    docs = [CorpusDocument(i, t, s) for i, t, s in UNICODE]
    # offsets count code points: two emoji and a skin-tone modifier before "Paris" are 3 (UTF-16 would say 6)
    assert docs[2].entities[0] == (4, 9, "LOC")
    out = tmp_path / "tasks.json"
    with open_writer("label-studio", out, model_version="diziner-test") as w:
        for d in docs:
            w.write(d)
        w.write(CorpusDocument("f", "failed", []), failed=True)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert len(tasks) == 5
    ids = []
    for task, doc in zip(tasks, docs, strict=False):
        assert task["data"] == {"text": doc.text, "doc_id": doc.id}
        (pred,) = task["predictions"]
        assert pred["model_version"] == "diziner-test"
        got = []
        for r in pred["result"]:
            assert (r["from_name"], r["to_name"], r["type"]) == ("label", "text", "labels")
            v = r["value"]
            assert v["text"] == doc.text[v["start"] : v["end"]]
            got.append((v["start"], v["end"], v["labels"][0]))
            ids.append(r["id"])
        assert got == doc.entities
    assert len(set(ids)) == len(ids)
    assert tasks[4] == {"data": {"text": "failed", "doc_id": "f"}, "predictions": []}
    assert "🙂" in out.read_text(encoding="utf-8")  # non-ASCII written as is, one task per line
    assert out.read_text(encoding="utf-8").count("\n") == 5 + 2


def test_label_studio_empty_output_and_lone_surrogate(tmp_path):
    out = tmp_path / "empty.json"
    with open_writer("label-studio", out):
        pass
    assert json.loads(out.read_text()) == []
    # a lone surrogate (a JSON escape the reader accepts) cannot be UTF-8: that task is written ASCII-escaped
    with open_writer("label-studio", out) as w:
        w.write(CorpusDocument("s", "a\ud800b", [(0, 1, "X")]))
    assert json.loads(out.read_text(encoding="utf-8"))[0]["data"]["text"] == "a\ud800b"


def test_label_studio_config_lists_the_labels():
    root = ET.fromstring(label_studio_config(["PER", 'A "quoted" & <odd> label']))
    labels = root.find("Labels")
    assert labels.get("name") == "label" and labels.get("toName") == "text"
    assert [x.get("value") for x in labels] == ["PER", 'A "quoted" & <odd> label']
    assert root.find("Text").get("value") == "$text"


# --------------------------------------------------------------------------------------------------- resume


def _corpus(n: int) -> list[CorpusDocument]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        text = f"Anna {i} met Bob in Paris"
        spans = rng.sample([(0, 4, "PER"), (12, 15, "PER"), (19, 24, "LOC"), (0, 6, "X")], rng.randint(0, 3))
        out.append(CorpusDocument(f"d{i}", text, spans))
    return out


def _output_bytes(path):
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


@pytest.mark.parametrize(
    "fmt,name",
    [("jsonl", "o.jsonl"), ("conll", "o.conll"), ("hf", "o.jsonl"), ("label-studio", "o.json"), ("spacy", "o")],
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, fmt, name):
    docs = _corpus(9)
    failed = {"d3"}
    ref = tmp_path / "ref" / name
    ref.parent.mkdir()
    with open_writer(fmt, ref, shard_size=2) as w:
        for d in docs:
            w.write(d, failed=d.id in failed)
    out = tmp_path / name
    # a run that dies: a mark after 6 documents, 2 more written (part of them on disk), never closed
    w = open_writer(fmt, out, shard_size=2)
    for d in docs[:6]:
        w.write(d, failed=d.id in failed)
    saved = json.dumps(w.flush(fsync=True).to_dict())
    for d in docs[6:8]:
        w.write(d, failed=d.id in failed)
    if fmt != "spacy":  # (spaCy wrote the shard of documents 7 and 8 itself)
        w._fh.write(b"torn" * 5000)  # then a long torn record
        w._fh.flush()  # bytes beyond the mark reached the file before the crash
    mark = Mark.from_dict(json.loads(saved))
    assert mark.documents == 6
    with open_writer(fmt, out, resume=json.loads(saved), shard_size=2) as w2:
        for d in docs[mark.documents :]:
            w2.write(d, failed=d.id in failed)
    assert _output_bytes(out) == _output_bytes(ref)
    assert w2.close().documents == 9


def test_resume_a_closed_single_spacy_file_and_parquet(tmp_path):
    docs = _corpus(5)
    for fmt, name in (("spacy", "x.spacy"), ("hf", "x.parquet")):
        ref, out = tmp_path / f"ref-{name}", tmp_path / name
        with open_writer(fmt, ref) as w:
            for d in docs:
                w.write(d)
        with open_writer(fmt, out) as w:
            for d in docs[:3]:
                w.write(d)
        mark = w.close()
        assert mark.documents == 3
        with open_writer(fmt, out, resume=mark) as w:
            for d in docs[3:]:
                w.write(d)
        assert w.close().documents == 5
        if fmt == "spacy":
            assert [(d.text, _spans(d.spans[SPAN_GROUP])) for d in _spacy_docs(out)] == [
                (d.text, _spans(d.spans[SPAN_GROUP])) for d in _spacy_docs(ref)
            ]
        else:
            import pyarrow.parquet as pq

            assert pq.read_table(out).to_pylist() == pq.read_table(ref).to_pylist()


def test_resume_refuses_a_mark_that_does_not_fit(tmp_path):
    out = tmp_path / "o.jsonl"
    with open_writer("jsonl", out) as w:
        w.write(CorpusDocument("a", "x", []))
    # every document so far left out (failed): nothing to keep, the file starts again
    with open_writer("jsonl", out, resume=Mark("jsonl", 3, 0)) as w:
        w.write(CorpusDocument("b", "y", []))
    assert w.close() == Mark("jsonl", 4, out.stat().st_size) and out.read_text().startswith('{"id": "b"')
    with pytest.raises(InputError, match="the mark says 999"):
        open_writer("jsonl", out, resume=Mark("jsonl", 5, 999))
    with pytest.raises(InputError, match="cannot resume a conll output as jsonl"):
        open_writer("jsonl", out, resume={"format": "conll", "documents": 1, "offset": 1, "shards": 0})
    with pytest.raises(InputError, match="not an export mark"):
        open_writer("jsonl", out, resume={"format": "jsonl", "documents": -1, "offset": 0, "shards": 0})
    with pytest.raises(InputError, match="not an export mark"):
        open_writer("jsonl", out, resume={"documents": 1})


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_output_paths_fail_at_open(tmp_path, fmt):
    name = "x.parquet" if fmt == "hf" else "x"
    with pytest.raises(InputError, match="cannot write"):
        open_writer(fmt, tmp_path / "missing" / name)
    if fmt != "spacy":  # a directory PATH is how the spaCy export writes shards
        (tmp_path / name).mkdir()
        with pytest.raises(InputError, match="cannot write"):
            open_writer(fmt, tmp_path / name)


def test_unknown_format():
    with pytest.raises(InputError, match="unknown export format 'xml'"):
        open_writer("xml", "x")


@pytest.mark.parametrize(
    "fmt,name,module,extra", [("spacy", "x.spacy", "spacy", "spacy"), ("hf", "x.parquet", "pyarrow", "hf")]
)
def test_missing_library_names_the_extra(tmp_path, monkeypatch, fmt, name, module, extra):
    for mod in list(sys.modules):
        if mod == module or mod.startswith(module + "."):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(InputError, match=rf"pip install -e '\.\[{extra}\]'"):
        open_writer(fmt, tmp_path / name)
    assert not (tmp_path / name).exists()
