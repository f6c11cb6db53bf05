"""Corpus I/O (docs/method.md, "Documents"): JSONL documents and CoNLL-style two-column files (and CoNLL-2003's
four columns).

Documents are `CorpusDocument` dataclasses (plain stdlib; no Pydantic, LangGraph or LangChain here, so that `diziner
evaluate` and `diziner analyze` stay cheap to start):

- ``id``: non-empty string. CoNLL sentences get ``<file name without extension>-<n>``, n counting the non-empty
  sentences from 1.
- ``text``: the document text. For CoNLL, the sentence's tokens joined by single spaces.
- ``entities``: list of ``(start, end, type)`` character spans into ``text`` (end exclusive), or ``None`` for an
  unlabelled document (a JSONL line without ``entities`` or with ``"entities": null``).
- ``tokens``: the original CoNLL tokens (verbatim) or ``None``. A JSONL ``"tokens"`` key is taken as tokens when it is
  a list of strings whose single-space join equals ``text``; any other ``"tokens"`` value is kept in ``extra``.
- ``extra``: every other top-level JSONL key, in input order, written back by `write_jsonl`.
- ``line``: 1-based line where the document starts in its file (for messages; not compared, not written).

Public entry points: `read_documents`, `write_jsonl`, `write_conll`; `iter_jsonl` is the one JSONL line reader (also
used by `diziner analyze`), `is_int` the one integer check. Every bad input raises `state.errors.InputError` naming the
file, the line and what is wrong.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

from state.errors import InputError

__all__ = [
    "CorpusDocument",
    "ReadStats",
    "read_documents",
    "iter_jsonl",
    "is_int",
    "write_jsonl",
    "write_conll",
    "conll_tags",
]

Span = tuple[int, int, str]

_DOCSTART = "-DOCSTART-"
_MAX_QUOTED = 80  # characters of a bad line quoted in a message


@dataclass(slots=True)
class CorpusDocument:
    """One document. See the module docstring for the meaning of each field."""

    id: str
    text: str
    entities: list[Span] | None = None
    tokens: list[str] | None = None
    extra: dict = field(default_factory=dict)
    line: int | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class ReadStats:
    """What `read_documents` found besides the documents (repairs are counted and reported).

    - ``format``: ``"jsonl"`` or ``"conll"`` (detected from content).
    - ``repairs`` / ``repair_lines``: CoNLL ``I-X`` tags that did not continue an X span and so started one
      (conlleval behaviour), with their 1-based line numbers.
    - ``empty_entities_skipped`` / ``empty_entity_lines``: CoNLL entities of zero length (a single empty token),
      which cannot be a character span and are skipped, with the line of their token.
    - ``four_columns``: the CoNLL file was read as CoNLL-2003 (token, POS tag, chunk tag, NER tag on every line): the
      first column is the token, the last the tag, the middle two are ignored.
    """

    format: str
    repairs: int = 0
    repair_lines: list[int] = field(default_factory=list)
    empty_entities_skipped: int = 0
    empty_entity_lines: list[int] = field(default_factory=list)
    four_columns: bool = False

    def warnings(self, path: str | os.PathLike) -> list[str]:
        """Human-readable notes (one per kind) for the CLI to print on stderr; empty when the file was read plainly."""
        out = []
        if self.four_columns:
            out.append(
                f"{path}: read as CoNLL-2003 (every line has four columns: token, POS tag, chunk tag, NER tag): "
                "the first column is the token and the last the tag; the POS and chunk columns are ignored"
            )
        if self.repairs:
            n = self.repairs
            out.append(
                f"{path}: {n} I-X tag{'s' if n > 1 else ''} not continuing an X span started a new span "
                f"(conlleval repair), first at line {self.repair_lines[0]}"
            )
        if self.empty_entities_skipped:
            n = self.empty_entities_skipped
            out.append(
                f"{path}: {n} zero-length entit{'ies' if n > 1 else 'y'} (a single empty token) skipped, "
                f"first at line {self.empty_entity_lines[0]}"
            )
        return out


# --------------------------------------------------------------------------------------------------- reading


def is_int(value: object) -> bool:
    """An integer (Python or numpy); bool is not one, nor is a float such as 3.0."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def numbered_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 file, split on "\\n" only (not str.splitlines, which also splits on
    U+2028 etc.), without the line break and one CR before it; a leading BOM is dropped. A missing or unreadable file,
    or a line that is not UTF-8, is an InputError naming the file (and the line)."""
    p = str(path)
    try:
        with open(path, "rb") as fh:
            offset = 0
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(f"not valid UTF-8 (byte {offset + exc.start})", path=p, line=lineno) from None
                offset += len(raw)
                if line.endswith("\n"):
                    line = line[:-2] if line.endswith("\r\n") else line[:-1]
                elif line.endswith("\r"):
                    line = line[:-1]
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line
    except OSError as exc:  # opening (missing file, a directory, no permission) or reading
        raise InputError(f"cannot read file: {exc.strerror or exc}", path=p) from None


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def json_objects(lines: Iterable[tuple[int, str]], path: str) -> Iterator[tuple[int, dict]]:
    """The JSON object of every non-blank line (blank: empty or whitespace-only), with its line number."""
    loads = json.loads
    for lineno, line in lines:
        if not line or line.isspace():
            continue
        try:
            obj = loads(line)
        except RecursionError:
            detail = ": nested too deeply to read"
            raise InputError(f"not valid JSON (invalid JSON{detail})", path=path, line=lineno) from None
        except ValueError as exc:
            detail = f" at column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else f": {exc}"
            raise InputError(f"not valid JSON (invalid JSON{detail})", path=path, line=lineno) from None
        if type(obj) is not dict:
            kind = "true or false" if isinstance(obj, bool) else _JSON_KINDS.get(type(obj), "null")
            raise InputError(f"expected a JSON object, got {kind}", path=path, line=lineno)
        yield lineno, obj


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; every fault is an InputError "FILE:N: ...".

    Blank lines are skipped (they still count for line numbers), a UTF-8 BOM is accepted, and a line that is not
    UTF-8, not JSON, nested too deeply for the parser or not a JSON object is an error naming its line.
    """
    return json_objects(numbered_lines(path), str(path))


def read_documents(path: str | os.PathLike) -> tuple[list[CorpusDocument], ReadStats]:
    """Read a JSONL or CoNLL file, the format detected from content.

    The first non-blank line starting with ``{`` (after leading whitespace) means JSONL, anything else CoNLL, whatever
    the file's extension. An empty file is CoNLL with no documents. Duplicate ids are an error.
    """
    lines = numbered_lines(path)
    head: list[tuple[int, str]] = []
    fmt = "conll"
    for item in lines:
        head.append(item)
        s = item[1].strip()
        if s:
            fmt = "jsonl" if s.startswith("{") else "conll"
            break
    stream = itertools.chain(head, lines)
    if fmt == "jsonl":
        return parse_jsonl(json_objects(stream, str(path)), str(path)), ReadStats(format="jsonl")
    return _parse_conll(stream, str(path))


def parse_jsonl(objects: Iterable[tuple[int, dict]], path: str) -> list[CorpusDocument]:
    """JSONL: the documents of `iter_jsonl`'s objects (one per non-blank line).

    Checks: ``id`` a non-empty string, unique in the file; ``text`` a string;
    ``entities`` (optional, ``null`` allowed = unlabelled) a list of objects with int ``start``/``end`` (not bool),
    ``0 <= start < end <= len(text)`` and a non-empty string ``type``. Other keys of an entity object are dropped;
    other top-level keys are kept in ``extra``.
    """
    docs: list[CorpusDocument] = []
    seen: dict[str, int] = {}
    for lineno, obj in objects:
        if "id" not in obj:
            raise InputError('missing key "id"', path=path, line=lineno)
        doc_id = obj["id"]
        if not isinstance(doc_id, str) or not doc_id:
            raise InputError(f'"id" must be a non-empty string, got {doc_id!r}', path=path, line=lineno)
        if doc_id in seen:
            raise InputError(
                f"duplicate document id {doc_id!r} (first on line {seen[doc_id]})", path=path, line=lineno
            )
        seen[doc_id] = lineno
        if "text" not in obj:
            raise InputError(f'document {doc_id!r}: missing key "text"', path=path, line=lineno)
        text = obj["text"]
        if not isinstance(text, str):
            raise InputError(
                f'document {doc_id!r}: "text" must be a string, got {type(text).__name__}', path=path, line=lineno
            )
        raw_entities = obj.get("entities")
        entities: list[Span] | None = None
        if raw_entities is not None:
            if not isinstance(raw_entities, list):
                raise InputError(
                    f'document {doc_id!r}: "entities" must be a list, got {type(raw_entities).__name__}',
                    path=path,
                    line=lineno,
                )
            entities = []
            n = len(text)
            for i, ent in enumerate(raw_entities):
                where = f"document {doc_id!r}: entity {i}"
                if not isinstance(ent, dict):
                    raise InputError(f"{where}: expected an object, got {type(ent).__name__}", path=path, line=lineno)
                for key in ("start", "end", "type"):
                    if key not in ent:
                        raise InputError(f'{where}: missing key "{key}"', path=path, line=lineno)
                start, end, etype = ent["start"], ent["end"], ent["type"]
                if not is_int(start):
                    raise InputError(f'{where}: "start" must be an integer, got {start!r}', path=path, line=lineno)
                if not is_int(end):
                    raise InputError(f'{where}: "end" must be an integer, got {end!r}', path=path, line=lineno)
                if not isinstance(etype, str) or not etype:
                    raise InputError(
                        f'{where}: "type" must be a non-empty string, got {etype!r}', path=path, line=lineno
                    )
                if not 0 <= start < end <= n:
                    raise InputError(
                        f"{where}: offsets [{start}, {end}) not within the text (need 0 <= start < end <= {n})",
                        path=path,
                        line=lineno,
                    )
                entities.append((start, end, etype))
        tokens = None
        extra = {k: v for k, v in obj.items() if k not in ("id", "text", "entities")}
        tok = extra.get("tokens")
        if isinstance(tok, list) and all(isinstance(t, str) for t in tok) and " ".join(tok) == text:
            tokens = extra.pop("tokens")
        docs.append(CorpusDocument(doc_id, text, entities, tokens, extra, lineno))
    return docs


def _is_tag(text: str) -> bool:
    """An IOB2 tag: ``O``, ``B-X`` or ``I-X`` with X non-empty."""
    return text == "O" or (len(text) > 2 and text[1] == "-" and text[0] in "BI")


def _four_columns(line: str) -> list[str] | None:
    """The fields of a CoNLL-2003 line (``EU NNP B-NP B-ORG``): exactly four whitespace-separated fields, the last an
    IOB2 tag, and, when the line has tabs, four tab-separated fields too (so that a ``token<TAB>tag`` line whose token
    holds spaces is never taken for one). None for any other line."""
    fields = line.split()
    if len(fields) != 4 or not _is_tag(fields[3]) or ("\t" in line and line.count("\t") != 3):
        return None
    return fields


class NotFourColumns(Exception):
    """Raised by the CoNLL-2003 reading at the first line that does not have its four columns."""


def _quoted(line: str) -> str:
    """A line for an error message: its repr, cut after _MAX_QUOTED characters."""
    return repr(line) if len(line) <= _MAX_QUOTED else repr(line[:_MAX_QUOTED]) + f" ... ({len(line)} characters)"


def _parse_conll(lines: Iterable[tuple[int, str]], path: str) -> tuple[list[CorpusDocument], ReadStats]:
    """CoNLL: CoNLL-2003 when every token line has its four columns (`_four_columns`), else ``token<TAB>tag``.

    The lines are read once: as CoNLL-2003 while every line fits, keeping them, and at the first line that does not,
    again from the kept lines with the two-column rule (so a two-column file switches at its first token line).
    """
    source = iter(lines)
    kept: list[tuple[int, str]] = []

    def keeping() -> Iterator[tuple[int, str]]:
        for item in source:
            kept.append(item)
            yield item

    try:
        return parse_conll_lines(keeping(), path, four_columns=True)
    except NotFourColumns:
        return parse_conll_lines(itertools.chain(kept, source), path, four_columns=False)


def parse_conll_lines(
    lines: Iterable[tuple[int, str]], path: str, *, four_columns: bool
) -> tuple[list[CorpusDocument], ReadStats]:
    """CoNLL, one ``token<TAB>tag`` per line, or with ``four_columns`` one CoNLL-2003 line (`_four_columns`; any
    other token line raises `NotFourColumns`).

    Each two-column line is split at its last tab, or, without a tab, at its last run of spaces; the token is kept
    verbatim (it may be empty or contain spaces/tabs). Runs of blank (empty or whitespace-only) lines separate sentences;
    lines starting with ``-DOCSTART-`` are skipped. Tags must be ``O``, ``B-X`` or ``I-X`` (X non-empty). An ``I-X``
    not continuing an X span starts one (counted as a repair). Entity offsets run from the first token's start to the
    last token's end in the space-joined text; a zero-length entity (a single empty token) is skipped and counted.
    """
    stem = Path(path).stem
    stats = ReadStats(format="conll")
    docs: list[CorpusDocument] = []
    tokens: list[str] = []
    entities: list[Span] = []
    first_line = 0
    pos = 0  # char offset of the next token in the joined text
    cur_type: str | None = None  # type of the open span, or None
    cur_start = 0
    cur_line = 0  # line of the open span's first token

    def close(end: int) -> None:
        if end > cur_start:
            entities.append((cur_start, end, cur_type))
        else:
            stats.empty_entities_skipped += 1
            stats.empty_entity_lines.append(cur_line)

    def flush() -> None:
        nonlocal tokens, entities, pos, cur_type
        if cur_type is not None:
            close(pos - 1)
        cur_type = None
        if tokens:
            docs.append(CorpusDocument(f"{stem}-{len(docs) + 1}", " ".join(tokens), entities, tokens, {}, first_line))
        tokens, entities, pos = [], [], 0

    for lineno, line in lines:
        if not line or line.isspace():
            flush()
            continue
        if line.startswith(_DOCSTART):
            continue
        if four_columns:
            fields = _four_columns(line)
            if fields is None:
                raise NotFourColumns
            token, tag = fields[0], fields[3]
            stats.four_columns = True
        elif (cut := line.rfind("\t")) >= 0:
            token, tag = line[:cut], line[cut + 1 :]
        else:
            cut = line.rfind(" ")
            if cut < 0:
                raise InputError(
                    f"no tab or space separating a token from its tag in {_quoted(line)}", path=path, line=lineno
                )
            tag = line[cut + 1 :]
            while cut > 0 and line[cut - 1] == " ":
                cut -= 1
            token = line[:cut]
        if tag == "O":
            if cur_type is not None:
                close(pos - 1)
                cur_type = None
        elif _is_tag(tag):
            etype = tag[2:]
            if tag[0] == "B" or cur_type != etype:
                if tag[0] == "I":
                    stats.repairs += 1
                    stats.repair_lines.append(lineno)
                if cur_type is not None:
                    close(pos - 1)
                cur_type, cur_start, cur_line = etype, pos, lineno
        else:
            raise InputError(f"bad tag {_quoted(tag)}: expected O, B-X or I-X (IOB2)", path=path, line=lineno)
        if not tokens:
            first_line = lineno
        tokens.append(token)
        pos += len(token) + 1
    flush()
    return docs, stats


# --------------------------------------------------------------------------------------------------- writing


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask is process-wide, so never toggle it while threads run


def atomic_write(path: str | os.PathLike, content: str) -> None:
    """Write UTF-8 text atomically: a temp file in the same directory, then os.replace.

    An existing file keeps its permission bits, a new one gets the usual 0o666 & ~umask. Failure to write (missing
    directory, no permission) is an InputError naming the file; the temp file is removed and the target untouched.
    """
    target = Path(path)
    data = content.encode("utf-8")
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_UMASK
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write file: {exc.strerror or exc}", path=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write file: {exc.strerror or exc}", path=str(path)) from None
        raise


def write_jsonl(path: str | os.PathLike, docs: Iterable[CorpusDocument]) -> None:
    """Write documents as JSONL: keys ``id``, ``text``, ``entities`` (omitted when None), ``tokens`` (when
    present), then the kept extra keys in their input order; ``ensure_ascii=False``; one line per document."""
    dumps = json.dumps
    atomic_write(path, "".join(dumps(document_object(d), ensure_ascii=False) + "\n" for d in docs))


def document_object(doc: CorpusDocument) -> dict:
    """A document as its JSONL line holds it: id, text, entities and tokens when present, then the kept extra keys
    in their input order."""
    obj: dict = {"id": doc.id, "text": doc.text}
    if doc.entities is not None:
        obj["entities"] = [{"start": s, "end": e, "type": t} for s, e, t in doc.entities]
    if doc.tokens is not None:
        obj["tokens"] = doc.tokens
    for k, v in doc.extra.items():
        if k not in obj:
            obj[k] = v
    return obj


def conll_tags(doc: CorpusDocument, *, path: str | None = None) -> list[str]:
    """IOB2 tags of ``doc.tokens`` derived from ``doc.entities`` (the writing side).

    A span maps to the tokens from the one starting at its start to the one ending at its end; a span that does not
    fall on token boundaries covers every token it overlaps (an empty token only when strictly inside). A span covering
    no token, or sharing a token with another span, cannot be written as IOB2 and raises InputError (naming the
    document). Identical duplicate spans are written once.
    """
    toks = doc.tokens
    if toks is None:
        raise InputError(f"document {doc.id!r} has no tokens: cannot write it as CoNLL", path=path)
    if " ".join(toks) != doc.text:
        raise InputError(f"document {doc.id!r}: its text is not its tokens joined by single spaces", path=path)
    tags = ["O"] * len(toks)
    if not doc.entities:
        return tags
    starts: list[int] = []
    pos = 0
    for t in toks:
        starts.append(pos)
        pos += len(t) + 1
    by_start = {s: i for i, s in enumerate(starts)}
    by_end = {s + len(t): i for i, (s, t) in enumerate(zip(starts, toks, strict=True))}
    for s, e, etype in sorted(set(doc.entities), key=lambda x: (x[0], x[0] - x[1], x[2])):
        i, j = by_start.get(s), by_end.get(e)
        if i is not None and j is not None and i <= j:
            covered = range(i, j + 1)
        else:
            covered = [
                k
                for k, (ts, t) in enumerate(zip(starts, toks, strict=True))
                if (t and ts < e and ts + len(t) > s) or (not t and s < ts < e)
            ]
        if not covered:
            raise InputError(f"document {doc.id!r}: entity ({s}, {e}, {etype!r}) covers no token", path=path)
        if any(tags[k] != "O" for k in covered):
            raise InputError(
                f"document {doc.id!r}: entity ({s}, {e}, {etype!r}) shares a token with another entity; "
                "overlapping spans cannot be written as IOB2",
                path=path,
            )
        first = True
        for k in covered:
            tags[k] = ("B-" if first else "I-") + etype
            first = False
    return tags


def write_conll(path: str | os.PathLike, docs: Iterable[CorpusDocument]) -> None:
    """Write documents as CoNLL: ``token<TAB>tag`` lines, one blank line after each sentence.

    Documents must carry ``tokens``; tags are derived from the entity spans (`conll_tags`). A document with no tokens
    has no sentence to write and is left out. A token containing a line break, or one that would read back as a
    ``-DOCSTART-`` line, cannot be written and raises InputError.
    """
    p = str(path)
    out: list[str] = []
    for d in docs:
        tags = conll_tags(d, path=p)
        if not d.tokens:
            continue
        for tok, tag in zip(d.tokens, tags, strict=True):
            if "\n" in tok or tok.startswith(_DOCSTART):
                raise InputError(f"document {d.id!r}: token {tok!r} cannot be written as a CoNLL line", path=p)
            out.append(f"{tok}\t{tag}\n")
        out.append("\n")
    atomic_write(path, "".join(out))
