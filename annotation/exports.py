"""Exports of annotated documents: one streaming writer per format, behind one interface.

    with open_writer("conll", "pred.conll") as writer:
        for doc, failed in results:            # CorpusDocument, in output order
            writer.write(doc, failed=failed)
            mark = writer.flush()              # optional: what is safely in the file, for a later resume
    for note in writer.notes():                # counts of spans the format could not hold as given
        print(note, file=sys.stderr)

`open_writer(format, path, ...)` returns a `Writer`: ``write(doc, failed=False)`` adds one document, ``flush()``
pushes what is written to the file and returns a `Mark`, ``close()`` finalises the file (a ``with`` block closes it
even on an exception, so what was written stays readable). Formats (`FORMATS`):

- ``jsonl``: the corpus reader's JSONL, record for record as `corpus.io.write_jsonl` writes it ({id, text, entities:
  [{start, end, type}]}, then ``tokens`` and the kept extra keys). A failed document is left out (its gold spans
  then count as misses in `diziner evaluate`).
- ``conll``: ``token<TAB>tag`` lines (IOB2), a blank line after each document, every document in the order written.
  The tokens are the document's own (a CoNLL input's tokens, or a JSONL ``tokens`` field), else the engine's
  tokenizer's (`\\w+|[^\\w\\s]`). A failed document is written all ``O``; a document with no token has no line.
- ``hf``: Hugging Face datasets rows {id, text, tokens, ner_tags (IOB2 strings), spans: [{start, end, label, text}]}
  (``text`` added to the rows so that the character offsets of ``spans`` have their string). JSON lines, loadable
  with ``datasets.load_dataset("json", data_files=PATH)``; Parquet when PATH ends in ``.parquet`` (pyarrow, row
  groups of ``row_group_size`` rows), loadable with ``load_dataset("parquet", ...)``. ``spans`` holds every span,
  overlapping ones included; ``ner_tags`` their IOB2 resolution.
- ``spacy``: spaCy `DocBin` data. ``doc.ents`` holds the spans the IOB2 resolution keeps, ``doc.spans["diziner"]``
  every span that covers a token (overlapping ones included), ``doc.user_data["id"]`` the document id. The tokens are
  the same as the CoNLL export's (so the three token formats agree), made a spaCy Doc with the text's whitespace
  kept (a gap other than one space becomes a whitespace token; empty CoNLL tokens are left out: spaCy has none).
  A failed document has its entity annotation *missing* (not ``O``), so that training does not learn "no entity"
  from it. Memory and files: a DocBin holds its documents in memory, so at most ``shard_size`` (10,000) are held:
  a corpus of at most ``shard_size`` documents is one file PATH; a larger one makes PATH a directory of shards
  ``00000.spacy``, ``00001.spacy``, ... of ``shard_size`` documents each (the last one shorter). ``spacy train
  --paths.train PATH`` and `spacy.training.Corpus` read either form.
- ``label-studio``: Label Studio pre-annotations, a JSON array of tasks written one task per line: {"data": {"text",
  "doc_id"}, "predictions": [{"model_version", "result": [{"id", "from_name": "label", "to_name": "text", "type":
  "labels", "value": {"start", "end", "text", "labels": [LABEL]}}]}]}. The labeling configuration must have
  ``<Labels name="label" toName="text">`` and ``<Text name="text" value="$text"/>`` (`label_studio_config`).
  Offsets count Unicode code points, as Python strings and Label Studio's text regions do. Every span is given, as
  Label Studio shows overlapping regions; a failed document has no prediction.

Tags and ``doc.ents`` follow the engine's IOB2 rule (docs/method.md#tokens-and-iob2): a span covers every token it
overlaps; spans are taken by start, longer first, then type, and one that shares a token with an earlier span or
covers no token is left out. Every such case, and every span not on token boundaries, is counted in
`Writer.counts` (`ExportCounts`), and `Writer.notes` words the counts for stderr.

Resuming: `Writer.flush` returns a `Mark` (``documents`` safely in the output, in the order written, and where
the file ends); ``open_writer(..., resume=mark)`` cuts the output back to the mark and continues, so that the
finished output equals an uninterrupted run's byte for byte. The text formats (jsonl, conll, hf JSON lines,
label-studio) mark every written document; spaCy marks whole shards (a single-file corpus only at close) and Parquet
its closed file, so their documents after the mark are written again.

spaCy and pyarrow are optional (`pip install -e '.[spacy]'`, `pip install -e '.[hf]'`); a writer whose library is
missing raises `InputError` naming the extra. Every fault of the output path is an InputError raised by
`open_writer`, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from corpus.io import CorpusDocument, document_object
from corpus.tokens import TokenTable, label_tokens, tokenize
from state.errors import InputError

__all__ = [
    "FORMATS",
    "SPAN_GROUP",
    "ExportCounts",
    "Mark",
    "Tagging",
    "Writer",
    "document_tokens",
    "label_studio_config",
    "open_writer",
    "tag_document",
]

FORMATS = ("jsonl", "conll", "spacy", "hf", "label-studio")
SPAN_GROUP = "diziner"  # doc.spans key of the spaCy export
DEFAULT_SHARD_SIZE = 10_000  # spaCy documents per DocBin file
DEFAULT_ROW_GROUP_SIZE = 10_000  # Parquet rows per row group
_DOCSTART = "-DOCSTART-"
_BUFFER = 1 << 20

Span = tuple[int, int, str]


# --------------------------------------------------------------------------------------------------- tokens and tags


def document_tokens(doc: CorpusDocument) -> tuple[list[str], list[int], list[int]]:
    """(tokens, start offsets, end offsets) of a document: its own tokens when their space-join is its text, else the
    engine's tokenizer's."""
    if doc.tokens is not None and " ".join(doc.tokens) == doc.text:
        starts, ends, pos = [], [], 0
        for tok in doc.tokens:
            starts.append(pos)
            ends.append(pos + len(tok))
            pos += len(tok) + 1
        return list(doc.tokens), starts, ends
    s, e = tokenize(doc.text)
    starts, ends = s.tolist(), e.tolist()
    return [doc.text[a:b] for a, b in zip(starts, ends, strict=True)], starts, ends


@dataclass(slots=True)
class Tagging:
    """One document's spans projected onto its tokens by the engine's IOB2 rule.

    ``covered`` holds, for every distinct span in first-seen order, ``(start, end, label, first, last)`` with the
    token range it covers (``first > last`` when it covers none); ``kept`` the ones the tags hold. ``overlapping``,
    ``no_token`` and ``snapped`` count distinct spans left out for sharing a token with an earlier one, left out for
    covering no token, and not on token boundaries (taken as the tokens they overlap).
    """

    tokens: list[str]
    starts: list[int]
    ends: list[int]
    tags: list[str]
    covered: list[tuple[int, int, str, int, int]] = field(default_factory=list)
    kept: list[tuple[int, int, str, int, int]] = field(default_factory=list)
    overlapping: int = 0
    no_token: int = 0
    snapped: int = 0


def tag_document(doc: CorpusDocument, *, failed: bool = False) -> Tagging:
    """Tokens and IOB2 tags of a document (`document_tokens`, `corpus.tokens.label_tokens`); no span when failed."""
    tokens, starts, ends = document_tokens(doc)
    n = len(tokens)
    spans = [] if failed else list(dict.fromkeys(doc.entities or ()))
    if not spans:
        return Tagging(tokens, starts, ends, ["O"] * n)
    types = sorted({t for _, _, t in spans})
    tid = {t: i for i, t in enumerate(types)}
    s = np.fromiter((x[0] for x in spans), dtype=np.int64, count=len(spans))
    e = np.fromiter((x[1] for x in spans), dtype=np.int64, count=len(spans))
    t = np.fromiter((tid[x[2]] for x in spans), dtype=np.int64, count=len(spans))
    tok_s = np.asarray(starts, dtype=np.int64)
    tok_e = np.asarray(ends, dtype=np.int64)
    table = TokenTable(tok_s, tok_e, np.zeros(1, dtype=np.int64), np.array([0, n], dtype=np.int64))
    zeros = np.zeros(len(spans), dtype=np.int64)
    res = label_tokens(table, 1, zeros, zeros, s, e, t)
    names = ["O"] + [f"{p}-{x}" for x in types for p in ("B", "I")]
    tags = [names[x] for x in res.labels[:, 0].tolist()]
    # the token range of every span, by label_tokens' own covering rule
    first = np.searchsorted(tok_e, s, side="right").tolist()
    last = (np.searchsorted(tok_s, e, side="left") - 1).tolist()
    out = Tagging(tokens, starts, ends, tags)
    for (a, b, label), f, z, kept in zip(spans, first, last, res.kept.tolist(), strict=True):
        item = (a, b, label, f, z)
        out.covered.append(item)
        if f > z:
            out.no_token += 1
            continue
        if starts[f] != a or ends[z] != b:
            out.snapped += 1
        if kept:
            out.kept.append(item)
        else:
            out.overlapping += 1
    return out


# --------------------------------------------------------------------------------------------------- counts, marks


@dataclass(slots=True)
class ExportCounts:
    """What a writer wrote, and the spans its format could not hold as given (the caller prints `notes`)."""

    documents: int = 0  # documents written (write calls), failed ones included
    failed: int = 0  # of which failed: written with no entity (left out of jsonl)
    spans: int = 0  # spans of the documents that did not fail
    overlapping: int = 0  # distinct spans left out of the tags for sharing a token with an earlier span
    no_token: int = 0  # distinct spans left out for covering no token
    snapped: int = 0  # distinct spans not on token boundaries, taken as the tokens they overlap
    no_token_documents: int = 0  # documents with no token (conll: no line)

    def add(self, tagging: Tagging) -> None:
        """Count one document's tagging."""
        self.overlapping += tagging.overlapping
        self.no_token += tagging.no_token
        self.snapped += tagging.snapped
        if not tagging.tokens:
            self.no_token_documents += 1


@dataclass(slots=True)
class Mark:
    """How far an output is safely written: ``documents`` (in write order) whose output is complete in the file,
    the file's length ``offset`` in bytes after them (text formats) and the number of ``shards`` (spaCy)."""

    format: str
    documents: int = 0
    offset: int = 0
    shards: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Mark:
        """A mark from `to_dict`'s dict; a malformed one is an InputError."""
        try:
            mark = cls(**data)
        except TypeError as exc:
            raise InputError(f"not an export mark: {data!r} ({exc})") from None
        ints = (mark.documents, mark.offset, mark.shards)
        if mark.format not in FORMATS or not all(type(x) is int and x >= 0 for x in ints):
            raise InputError(f"not an export mark: {data!r}")
        return mark


# --------------------------------------------------------------------------------------------------- writers


def _dumps(obj: object) -> bytes:
    """One JSON value as UTF-8 (non-ASCII kept); a string that UTF-8 cannot hold (a lone surrogate from a JSON
    escape) makes the value ASCII-escaped instead, which reads back the same."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj).encode("ascii")


def _check_parent(path: Path) -> None:
    """InputError unless PATH's directory exists and is writable."""
    parent = path.parent
    if not parent.is_dir():
        raise InputError("cannot write file: its directory does not exist", path=str(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError("cannot write file: its directory is not writable", path=str(path))


def _write_atomic(path: Path, data: bytes) -> None:
    """Bytes to PATH through a hidden temp file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Writer:
    """A streaming export: `write` documents one at a time, `flush` for a resume mark, `close` to finalise.

    ``counts`` (`ExportCounts`) holds what was written and what the format could not hold as given; ``path`` is the
    output; ``closed`` says whether it is finalised.
    """

    format: ClassVar[str] = ""
    # words for notes: where the tag resolution shows (None: the format keeps every span as given), and where the
    # spans it leaves out are still found
    _resolved_in: ClassVar[str | None] = None
    _all_spans_in: ClassVar[str | None] = None
    _failed_note: ClassVar[str] = "written with no entity"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.counts = ExportCounts()
        self.closed = False

    def write(self, doc: CorpusDocument, *, failed: bool = False) -> None:
        """Add one document; a failed one (the model gave no answer) is written with no entity."""
        if self.closed:
            raise ValueError(f"{self.format} writer for {self.path} is closed")
        self._write(doc, failed)
        self.counts.documents += 1
        if failed:
            self.counts.failed += 1
        else:
            self.counts.spans += len(doc.entities or ())

    def flush(self, *, fsync: bool = False) -> Mark:
        """Push what is written to the file (and to the disk with ``fsync``); the mark a resume continues from."""
        raise NotImplementedError

    def close(self) -> Mark:
        """Finalise the output (idempotent); the final mark."""
        raise NotImplementedError

    def notes(self) -> list[str]:
        """One line per kind of thing worth telling on stderr (failed documents, spans left out or moved)."""
        c, p = self.counts, self.path
        out = []
        if c.failed:
            out.append(f"{p}: {c.failed} failed document(s) {self._failed_note}")
        if self._resolved_in is not None:
            if c.overlapping:
                kept = f"; {self._all_spans_in} has them" if self._all_spans_in else ""
                out.append(
                    f"{p}: {c.overlapping} span(s) sharing a token with an earlier span (spans taken by start, longer "
                    f"first) left out of {self._resolved_in}{kept}"
                )
            if c.no_token:
                out.append(f"{p}: {c.no_token} span(s) covering no token left out of {self._resolved_in}")
            if c.snapped:
                out.append(f"{p}: {c.snapped} span(s) not on token boundaries taken as the tokens they overlap")
            if c.no_token_documents and self.format == "conll":
                out.append(f"{p}: {c.no_token_documents} document(s) with no token have no line")
        return out

    def _write(self, doc: CorpusDocument, failed: bool) -> None:
        raise NotImplementedError

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TextWriter(Writer):
    """A writer whose output is bytes appended per document; ``_head``/``_tail`` open and close the file (JSON array).

    Opened with "wb" (an existing output is replaced), or on resume cut back to the mark's offset and appended to.
    """

    _head: ClassVar[bytes] = b""
    _tail: ClassVar[bytes] = b""

    def __init__(self, path: str | os.PathLike, resume: Mark | None = None) -> None:
        super().__init__(path)
        p = str(self.path)
        self._done = resume.documents if resume is not None else 0  # documents written (bytes in buffer or file)
        try:
            if resume is None or resume.offset <= len(self._head):  # nothing written yet (or documents left out)
                self._fh = open(self.path, "wb", buffering=_BUFFER)  # noqa: SIM115 (closed by close())
                self._fh.write(self._head)
            else:
                self._fh = open(self.path, "r+b", buffering=_BUFFER)  # noqa: SIM115
                size = self._fh.seek(0, os.SEEK_END)
                if size < resume.offset:
                    self._fh.close()
                    raise InputError(f"cannot resume: the file has {size} bytes, the mark says {resume.offset}", path=p)
                self._fh.truncate(resume.offset)
                self._fh.seek(resume.offset)
        except OSError as exc:
            raise InputError(f"cannot write file: {exc.strerror or exc}", path=p) from None
        self._body = self._fh.tell() > len(self._head)  # something written after the head

    def _emit(self, data: bytes) -> None:
        self._fh.write(data)
        self._body = True

    def _write(self, doc: CorpusDocument, failed: bool) -> None:
        data = self._record(doc, failed)
        if data:
            self._emit(data)
        self._done += 1

    def _record(self, doc: CorpusDocument, failed: bool) -> bytes:
        raise NotImplementedError

    def flush(self, *, fsync: bool = False) -> Mark:
        if self.closed:
            return self._final
        self._fh.flush()
        if fsync:
            os.fsync(self._fh.fileno())
        return Mark(self.format, self._done, self._fh.tell())

    def close(self) -> Mark:
        if not self.closed:
            mark = self.flush()
            self._fh.write(self._tail)
            self._fh.close()
            self.closed = True
            self._final = mark
        return self._final


class JsonlWriter(_TextWriter):
    """The corpus reader's JSONL (`corpus.io.write_jsonl`'s records); failed documents are left out."""

    format = "jsonl"
    _failed_note = "left out"

    def _record(self, doc: CorpusDocument, failed: bool) -> bytes:
        if failed:
            return b""
        return _dumps(document_object(doc)) + b"\n"


class ConllWriter(_TextWriter):
    """``token<TAB>tag`` lines, a blank line after each document; failed documents all O."""

    format = "conll"
    _resolved_in = "the IOB2 tags"
    _failed_note = "written all O"

    def _record(self, doc: CorpusDocument, failed: bool) -> bytes:
        tagging = tag_document(doc, failed=failed)
        lines = []
        for tok, tag in zip(tagging.tokens, tagging.tags, strict=True):
            if "\n" in tok or tok.startswith(_DOCSTART):
                raise InputError(
                    f"document {doc.id!r}: token {tok!r} cannot be written as a CoNLL line", path=str(self.path)
                )
            lines.append(f"{tok}\t{tag}\n")
        self.counts.add(tagging)
        if not lines:
            return b""
        lines.append("\n")
        try:
            return "".join(lines).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"document {doc.id!r}: a token holds a character UTF-8 cannot encode (a lone surrogate)",
                path=str(self.path),
            ) from None


def _hf_row(doc: CorpusDocument, tagging: Tagging, failed: bool) -> dict:
    """The hf export's row of a document."""
    text = doc.text
    spans = [] if failed else [{"start": s, "end": e, "label": t, "text": text[s:e]} for s, e, t in doc.entities or ()]
    return {"id": doc.id, "text": text, "tokens": tagging.tokens, "ner_tags": tagging.tags, "spans": spans}


class HfJsonlWriter(_TextWriter):
    """Hugging Face datasets rows as JSON lines."""

    format = "hf"
    _resolved_in = "ner_tags"
    _all_spans_in = "spans"
    _failed_note = "written all O with no span"

    def _record(self, doc: CorpusDocument, failed: bool) -> bytes:
        tagging = tag_document(doc, failed=failed)
        self.counts.add(tagging)
        return _dumps(_hf_row(doc, tagging, failed)) + b"\n"


class LabelStudioWriter(_TextWriter):
    """Label Studio tasks with predictions, a JSON array written one task per line."""

    format = "label-studio"
    _head = b"["
    _tail = b"\n]\n"
    _failed_note = "written with no prediction"

    def __init__(self, path: str | os.PathLike, resume: Mark | None = None, *, model_version: str = "diziner") -> None:
        super().__init__(path, resume)
        self.model_version = model_version

    def _record(self, doc: CorpusDocument, failed: bool) -> bytes:
        n = self._done
        task: dict = {"data": {"text": doc.text, "doc_id": doc.id}, "predictions": []}
        if not failed:
            result = [
                {
                    "id": f"{n}-{k}",
                    "from_name": "label",
                    "to_name": "text",
                    "type": "labels",
                    "value": {"start": s, "end": e, "text": doc.text[s:e], "labels": [t]},
                }
                for k, (s, e, t) in enumerate(doc.entities or ())
            ]
            task["predictions"].append({"model_version": self.model_version, "result": result})
        return (b",\n" if self._body else b"\n") + _dumps(task)


def label_studio_config(labels: list[str] | tuple[str, ...]) -> str:
    """A Label Studio labeling configuration (XML) that the label-studio export's tasks fit."""
    from xml.sax.saxutils import quoteattr

    items = "".join(f"    <Label value={quoteattr(x)}/>\n" for x in labels)
    return f'<View>\n  <Labels name="label" toName="text">\n{items}  </Labels>\n  <Text name="text" value="$text"/>\n</View>\n'


class HfParquetWriter(Writer):
    """Hugging Face datasets rows as Parquet, in row groups; the file appears (atomically) at close."""

    format = "hf"
    _resolved_in = HfJsonlWriter._resolved_in
    _all_spans_in = HfJsonlWriter._all_spans_in
    _failed_note = HfJsonlWriter._failed_note

    def __init__(
        self, path: str | os.PathLike, resume: Mark | None = None, *, row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    ) -> None:
        super().__init__(path)
        pa, pq = _need_pyarrow()
        self._pa, self._pq = pa, pq
        _check_parent(self.path)
        if self.path.is_dir():
            raise InputError("cannot write file: it is a directory", path=str(self.path))
        self.row_group_size = max(1, row_group_size)
        span = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()), ("text", pa.string())])
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                ("text", pa.string()),
                ("tokens", pa.list_(pa.string())),
                ("ner_tags", pa.list_(pa.string())),
                ("spans", pa.list_(span)),
            ]
        )
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self._rows: list[dict] = []
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self._final: Mark | None = None
        if resume is not None and resume.documents:
            self._copy_back(resume.documents)

    def _copy_back(self, n: int) -> None:
        """Take the first N rows of the existing (closed) file into the new one."""
        try:
            pf = self._pq.ParquetFile(self.path)
            have = pf.metadata.num_rows
        except (OSError, self._pa.ArrowException) as exc:
            self._discard()
            raise InputError(f"cannot resume: not a readable Parquet file ({exc})", path=str(self.path)) from None
        if have < n:
            self._discard()
            raise InputError(f"cannot resume: the file has {have} rows, the mark says {n}", path=str(self.path))
        left = n
        for i in range(pf.num_row_groups):
            if left <= 0:
                break
            table = pf.read_row_group(i).cast(self.schema)
            table = table.slice(0, left)
            self._writer.write_table(table)
            left -= table.num_rows
        self._resumed = n

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        self.closed = True

    def _write(self, doc: CorpusDocument, failed: bool) -> None:
        tagging = tag_document(doc, failed=failed)
        self.counts.add(tagging)
        self._rows.append(_hf_row(doc, tagging, failed))
        if len(self._rows) >= self.row_group_size:
            self._write_rows()

    def _write_rows(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def flush(self, *, fsync: bool = False) -> Mark:
        # a Parquet file is readable only once its footer is written: nothing is safe before close
        return self._final or Mark(self.format, 0, 0)

    def close(self) -> Mark:
        if not self.closed:
            try:
                self._write_rows()
                self._writer.close()
                os.replace(self._tmp, self.path)
            except BaseException:
                self._discard()
                raise
            self.closed = True
            total = getattr(self, "_resumed", 0) + self.counts.documents
            self._final = Mark(self.format, total, self.path.stat().st_size)
        return self._final


class SpacyWriter(Writer):
    """spaCy DocBin data: one file, or a directory of shards once the corpus passes ``shard_size`` documents."""

    format = "spacy"
    _resolved_in = "doc.ents"
    _all_spans_in = f"doc.spans[{SPAN_GROUP!r}]"
    _failed_note = "written with their entity annotation missing"

    def __init__(
        self, path: str | os.PathLike, resume: Mark | None = None, *, shard_size: int = DEFAULT_SHARD_SIZE
    ) -> None:
        super().__init__(path)
        spacy = _need_spacy()
        self._Doc, self._DocBin, self._Vocab = spacy
        self.shard_size = max(1, shard_size)
        _check_parent(self.path)
        self._encoders = _msgpack_encoders()
        self._new_shard()
        self._shards = 0  # shards written to the directory PATH
        self._final: Mark | None = None
        if resume is not None and (resume.shards or resume.documents):
            self._resume(resume)
        else:
            self._clear()

    # ------------------------------------------------------------------ files

    def _shard_files(self) -> list[Path]:
        """The shard files of the directory PATH, checked to hold nothing else (so it may be replaced)."""
        files = sorted(p for p in self.path.iterdir() if not p.name.startswith("."))
        if not all(p.is_file() and p.suffix == ".spacy" for p in files):
            raise InputError("cannot write: a directory that holds other files than .spacy shards", path=str(self.path))
        return files

    def _clear(self) -> None:
        """Remove an earlier output at PATH (a file, or a directory of shards only)."""
        try:
            if self.path.is_dir():
                self._shard_files()
                shutil.rmtree(self.path)
            elif self.path.exists() and not self.path.is_file():
                raise InputError("cannot write: not a regular file", path=str(self.path))
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", path=str(self.path)) from None

    def _resume(self, mark: Mark) -> None:
        """Continue after MARK: keep its shards, or read back the documents of its single file."""
        p = str(self.path)
        if mark.shards:
            if not self.path.is_dir():
                raise InputError(f"cannot resume: the mark says {mark.shards} shard(s), no such directory", path=p)
            files = self._shard_files()
            names = [self._shard_name(i) for i in range(mark.shards)]
            if [f.name for f in files[: mark.shards]] != names:
                raise InputError(f"cannot resume: shards {names[0]}..{names[-1]} are not all there", path=p)
            for f in files[mark.shards :]:
                f.unlink()
            self._shards = mark.shards
            self._resumed = mark.shards * self.shard_size
        else:
            if not self.path.is_file():
                raise InputError(f"cannot resume: the mark says {mark.documents} document(s), no such file", path=p)
            try:
                docs = list(self._DocBin().from_disk(self.path).get_docs(self._vocab))
            except Exception as exc:  # spaCy raises several kinds on a bad file
                raise InputError(f"cannot resume: not a readable .spacy file ({exc})", path=p) from None
            if len(docs) < mark.documents:
                raise InputError(
                    f"cannot resume: the file has {len(docs)} documents, the mark says {mark.documents}", path=p
                )
            for d in docs[: mark.documents]:
                self._add(d)
            self._resumed = mark.documents

    @staticmethod
    def _shard_name(i: int) -> str:
        return f"{i:05d}.spacy"

    def _new_shard(self) -> None:
        """An empty DocBin (and a new Vocab: the strings of finished shards are not kept)."""
        self._docbin = self._DocBin(store_user_data=True)
        self._pending = 0
        self._vocab = self._Vocab()

    def _add(self, sdoc) -> None:
        """Add a spaCy Doc to the current DocBin (which serialises it at once; the Doc is not kept)."""
        with _cached_encoders(self._encoders):
            self._docbin.add(sdoc)
        self._pending += 1

    def _write_shard(self) -> None:
        """The pending documents as the next shard of the directory PATH."""
        if self._shards == 0:
            if self.path.is_file():
                self.path.unlink()  # a resumed single file becomes the directory's first shard
            self.path.mkdir(exist_ok=True)
        _write_atomic(self.path / self._shard_name(self._shards), self._docbin.to_bytes())
        self._shards += 1
        self._new_shard()

    # ------------------------------------------------------------------ documents

    def _spacy_doc(self, doc: CorpusDocument, tagging: Tagging, failed: bool):
        """The spaCy Doc of a document: the export's tokens, the text's whitespace, ents and the span group."""
        text = doc.text
        words: list[str] = []
        spaces: list[bool] = []

        def gap(chunk: str) -> None:
            if chunk and words and chunk[0] == " " and not spaces[-1]:
                spaces[-1] = True
                chunk = chunk[1:]
            if chunk:
                words.append(chunk)
                spaces.append(False)

        pos = 0
        for s, e in zip(tagging.starts, tagging.ends, strict=True):
            if e > s:
                gap(text[pos:s])
                words.append(text[s:e])
                spaces.append(False)
                pos = e
        gap(text[pos:])
        sdoc = self._Doc(self._vocab, words=words, spaces=spaces)
        sdoc.user_data["id"] = doc.id
        if failed:
            sdoc.user_data["failed"] = True
            sdoc.spans[SPAN_GROUP] = []
            return sdoc
        starts, ends = tagging.starts, tagging.ends
        ents = []
        for _, _, label, f, z in tagging.kept:
            span = sdoc.char_span(starts[f], ends[z], label=label, alignment_mode="expand")
            if span is not None:
                ents.append(span)
        sdoc.ents = ents
        group = []
        for _, _, label, f, z in tagging.covered:
            if f <= z:
                span = sdoc.char_span(starts[f], ends[z], label=label, alignment_mode="expand")
                if span is not None:
                    group.append(span)
        sdoc.spans[SPAN_GROUP] = group
        return sdoc

    def _write(self, doc: CorpusDocument, failed: bool) -> None:
        tagging = tag_document(doc, failed=failed)
        self.counts.add(tagging)
        if self._pending >= self.shard_size:  # the corpus passes one shard: PATH becomes a directory
            self._write_shard()
        self._add(self._spacy_doc(doc, tagging, failed))
        if self._shards and self._pending >= self.shard_size:  # a directory's full shard is written at once
            self._write_shard()

    def flush(self, *, fsync: bool = False) -> Mark:
        if self._final is not None:
            return self._final
        return Mark(self.format, self._shards * self.shard_size, 0, self._shards)

    def close(self) -> Mark:
        if not self.closed:
            self.closed = True
            total = getattr(self, "_resumed", 0) + self.counts.documents
            if self._shards:
                if self._pending:
                    self._write_shard()
                self._final = Mark(self.format, total, 0, self._shards)
            else:
                _write_atomic(self.path, self._docbin.to_bytes())
                self._new_shard()
                self._final = Mark(self.format, total, self.path.stat().st_size, 0)
        return self._final


# --------------------------------------------------------------------------------------------------- opening


def _need_spacy():
    """(Doc, DocBin, Vocab) from spaCy, or an InputError naming the extra to install."""
    try:
        from spacy.tokens import Doc, DocBin
        from spacy.vocab import Vocab
    except ImportError:
        raise InputError("the spacy export needs spaCy: pip install -e '.[spacy]'") from None
    return Doc, DocBin, Vocab


def _msgpack_encoders() -> object:
    """srsly's msgpack encoder registry and its encoders, read once.

    spaCy's DocBin packs a document's user data and span groups with srsly, whose every pack looks its encoders up
    again in catalogue's registry (a scan of every registered function and every installed package's entry points:
    about 1 ms per document here). The lookup's answer does not change while a writer runs, so `_cached_encoders`
    hands it out again: about 5x faster spaCy export, the same bytes.
    """
    try:
        from srsly import msgpack
    except ImportError:  # not the srsly spaCy uses: leave it alone
        return None
    registry = getattr(msgpack, "msgpack_encoders", None)
    if registry is None or not callable(getattr(registry, "get_all", None)):
        return None
    return registry, registry.get_all()


@contextlib.contextmanager
def _cached_encoders(encoders: object):
    """Within the block, srsly's encoder lookup answers ENCODERS' saved result (see `_msgpack_encoders`)."""
    if encoders is None:
        yield
        return
    registry, found = encoders
    registry.get_all = lambda: found
    try:
        yield
    finally:
        del registry.get_all


def _need_pyarrow():
    """(pyarrow, pyarrow.parquet), or an InputError naming the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("the hf export to Parquet needs pyarrow: pip install -e '.[hf]'") from None
    return pa, pq


def open_writer(
    fmt: str,
    path: str | os.PathLike,
    *,
    resume: Mark | dict | None = None,
    model_version: str = "diziner",
    shard_size: int = DEFAULT_SHARD_SIZE,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
) -> Writer:
    """A writer of format FMT (one of `FORMATS`) to PATH, replacing an existing output, or continuing it after a
    `Mark` (``resume``). ``model_version`` names the predictions of label-studio, ``shard_size`` the documents per
    spaCy file, ``row_group_size`` the rows per Parquet row group (hf to ``.parquet``)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if isinstance(resume, dict):
        resume = Mark.from_dict(resume)
    if resume is not None and resume.format != fmt:
        raise InputError(f"cannot resume a {resume.format} output as {fmt}", path=str(path))
    if fmt == "jsonl":
        return JsonlWriter(path, resume)
    if fmt == "conll":
        return ConllWriter(path, resume)
    if fmt == "label-studio":
        return LabelStudioWriter(path, resume, model_version=model_version)
    if fmt == "hf":
        if str(path).endswith(".parquet"):
            return HfParquetWriter(path, resume, row_group_size=row_group_size)
        return HfJsonlWriter(path, resume)
    return SpacyWriter(path, resume, shard_size=shard_size)
