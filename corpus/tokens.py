"""The engine's tokens, spans -> IOB2, and grounding of entity strings (docs/method.md#tokens-and-iob2, #grounding).

Tokens are the runs of word characters and every other non-space character on its own
(`\\w+|[^\\w\\s]`, so "Paris," is two tokens). One vectorised routine, `label_tokens`, projects many annotators'
spans onto many documents' tokens at once; the single-document helpers call it too, so there is one rule.

Label ids: 0 is O; for the type with id t (types sorted in Python string order), B-t is 2t+1 and I-t is 2t+2.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


_WORD = re.compile(r"\w")
_SPACE = re.compile(r"\s")
_ASCII_CLASS = np.array(
    [1 if _WORD.match(chr(c)) else (0 if _SPACE.match(chr(c)) else 2) for c in range(128)], dtype=np.int8
)


def _char_classes(codes: np.ndarray) -> np.ndarray:
    """0 = whitespace, 1 = word character, 2 = anything else -- decided by the same regex classes as
    TOKEN_PATTERN, once per distinct code point."""
    cls = np.empty(codes.size, dtype=np.int8)
    ascii_ = codes < 128
    cls[ascii_] = _ASCII_CLASS[codes[ascii_]]
    if not ascii_.all():
        rest = codes[~ascii_]
        uniq, inv = np.unique(rest, return_inverse=True)
        table = np.array(
            [1 if _WORD.match(chr(c)) else (0 if _SPACE.match(chr(c)) else 2) for c in uniq.tolist()], dtype=np.int8
        )
        cls[~ascii_] = table[inv]
    return cls


def tokenize(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token start and end (exclusive) character offsets of `text`, exactly those of
    `TOKEN_PATTERN.finditer(text)`, computed from per-character classes: a token starts at a word character
    not preceded by one, or at any other non-space character; it ends symmetrically."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    cls = _char_classes(codes)
    word = cls == 1
    other = cls == 2
    prev_word = np.empty_like(word)
    next_word = np.empty_like(word)
    if word.size:
        prev_word[0] = False
        prev_word[1:] = word[:-1]
        next_word[-1] = False
        next_word[:-1] = word[1:]
    starts = np.flatnonzero(other | (word & ~prev_word))
    ends = np.flatnonzero(other | (word & ~next_word)) + 1
    return starts.astype(np.int64), ends.astype(np.int64)


@dataclass(frozen=True)
class TokenTable:
    """The tokens of many documents in global arrays.

    `starts`/`ends` are offsets into the virtual concatenation of the texts joined by one newline (a
    separator no token can cross); `char_offset[d]` is where document d starts in it, so a document-relative
    offset x is `char_offset[d] + x`. Document d owns tokens `token_offset[d]:token_offset[d + 1]`.
    """

    starts: np.ndarray
    ends: np.ndarray
    char_offset: np.ndarray  # (n_docs,)
    token_offset: np.ndarray  # (n_docs + 1,)

    @property
    def n_tokens(self) -> int:
        return int(self.starts.size)

    def doc_tokens(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Document-relative (starts, ends) of document d's tokens."""
        a, b = self.token_offset[d], self.token_offset[d + 1]
        off = self.char_offset[d]
        return self.starts[a:b] - off, self.ends[a:b] - off

    def token_doc(self) -> np.ndarray:
        """The document index of every token."""
        return np.repeat(np.arange(self.char_offset.size), np.diff(self.token_offset))


def tokenize_many(texts: Sequence[str]) -> TokenTable:
    """Tokenise many texts with one regex pass over their newline-joined concatenation."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    char_offset = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        np.cumsum(lengths[:-1] + 1, out=char_offset[1:])
    starts, ends = tokenize("\n".join(texts))
    # token t belongs to the last document whose start is <= the token's start
    token_offset = np.searchsorted(starts, np.append(char_offset, np.iinfo(np.int64).max), side="left")
    return TokenTable(starts, ends, char_offset, token_offset.astype(np.int64))


def sort_order(*keys: np.ndarray) -> np.ndarray:
    """Stable lexicographic order of rows, the first key most significant (non-negative int64 keys).

    Packs the keys into one int64 when their bit widths fit (one argsort is several times faster than
    np.lexsort); otherwise falls back to np.lexsort.
    """
    widths = [int(k.max()).bit_length() if k.size else 1 for k in keys]
    if sum(widths) > 62:
        return np.lexsort(keys[::-1])
    packed = np.zeros(keys[0].size, dtype=np.int64)
    for k, w in zip(keys, widths):
        packed <<= w
        packed |= k
    return np.argsort(packed, kind="stable")


@dataclass(frozen=True)
class TokenLabels:
    """Result of projecting spans onto tokens."""

    labels: np.ndarray  # (n_tokens, n_groups) int16 label ids
    dropped: np.ndarray  # (n_groups,) spans dropped (overlap with an earlier span, or covering no token)
    kept: np.ndarray  # boolean mask over the input spans: the span labelled tokens


def label_tokens(
    table: TokenTable,
    n_groups: int,
    group: np.ndarray,
    doc: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    type_id: np.ndarray,
) -> TokenLabels:
    """Spans -> IOB2 label ids over the engine's tokens, for several groups (annotators) at once.

    A span covers every token it overlaps; a group's spans (duplicates removed) are taken in
    order of (start char, length descending, type in string order -- type ids must follow that order); a span
    that touches an already labelled token, or covers no token, is dropped and counted. Duplicates are not
    counted as dropped. `start`/`end` are document-relative character offsets.
    """
    n = int(start.size)
    labels = np.zeros((table.n_tokens, n_groups), dtype=np.int16)
    dropped = np.zeros(n_groups, dtype=np.int64)
    kept = np.zeros(n, dtype=bool)
    if n == 0:
        return TokenLabels(labels, dropped, kept)
    group = group.astype(np.int64, copy=False)
    doc = doc.astype(np.int64, copy=False)
    gstart = table.char_offset[doc] + start
    gend = table.char_offset[doc] + end
    length = gend - gstart
    type_id = type_id.astype(np.int64, copy=False)
    # order: group, (global) start, length descending, type; then drop exact duplicates
    order = sort_order(group, gstart, length.max() - length, type_id)
    g, s, e, t = group[order], gstart[order], gend[order], type_id[order]
    dup = np.zeros(n, dtype=bool)
    dup[1:] = (g[1:] == g[:-1]) & (s[1:] == s[:-1]) & (e[1:] == e[:-1]) & (t[1:] == t[:-1])
    unique = ~dup
    order, g, s, e, t = order[unique], g[unique], s[unique], e[unique], t[unique]
    # first token whose end > start; last token whose start < end
    first = np.searchsorted(table.ends, s, side="right")
    last = np.searchsorted(table.starts, e, side="left") - 1
    covers = first <= last
    dropped += np.bincount(g[~covers], minlength=n_groups)
    order, g, s, first, last, t = order[covers], g[covers], s[covers], first[covers], last[covers], t[covers]
    if order.size == 0:
        return TokenLabels(labels, dropped, kept)
    # Overlap: offset token indices by group so one running maximum serves every group.
    shift = g * (table.n_tokens + 1)
    f_abs, l_abs = first + shift, last + shift
    prev_max = np.empty_like(l_abs)
    prev_max[0] = -1
    np.maximum.accumulate(l_abs[:-1], out=prev_max[1:])
    keep = f_abs > prev_max
    clash = ~keep
    if clash.any():
        # Exact greedy only in the (group, document) cells where something clashed: there a span that
        # follows a *dropped* one may still be kept.
        d_sorted = doc[order]
        cell = g * table.char_offset.size + d_sorted
        idx = np.flatnonzero(np.isin(cell, np.unique(cell[clash])))
        reach, current = -1, -1
        for i, c, f, end_tok in zip(idx.tolist(), cell[idx].tolist(), f_abs[idx].tolist(), l_abs[idx].tolist()):
            if c != current:
                current, reach = c, -1
            if f > reach:
                keep[i] = True
                reach = end_tok
            else:
                keep[i] = False
    dropped += np.bincount(g[~keep], minlength=n_groups)
    kept[order[keep]] = True
    g, first, last, t = g[keep], first[keep], last[keep], t[keep]
    span_len = last - first + 1
    total = int(span_len.sum())
    rows = np.repeat(first - np.cumsum(span_len) + span_len, span_len) + np.arange(total)
    cols = np.repeat(g, span_len)
    labels[rows, cols] = np.repeat(2 * t + 2, span_len).astype(np.int16)  # I-t
    labels[first, g] = (2 * t + 1).astype(np.int16)  # B-t
    return TokenLabels(labels, dropped, kept)


def spans_to_iob2(text: str, spans: Iterable[tuple[int, int, str]]) -> tuple[list[str], list[str], int]:
    """One annotator's spans on one text -> (tokens, IOB2 tags, number of dropped spans)."""
    spans = list(spans)
    table = tokenize_many([text])
    types = sorted({t for _, _, t in spans})
    tid = {t: i for i, t in enumerate(types)}
    n = len(spans)
    res = label_tokens(
        table,
        1,
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.array([s for s, _, _ in spans], dtype=np.int64),
        np.array([e for _, e, _ in spans], dtype=np.int64),
        np.array([tid[t] for _, _, t in spans], dtype=np.int64),
    )
    names = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    tokens = [text[a:b] for a, b in zip(table.starts.tolist(), table.ends.tolist())]
    return tokens, [names[x] for x in res.labels[:, 0].tolist()], int(res.dropped[0])


def iob2_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """IOB2 tags -> token spans (start, end exclusive, type); an I-X that does not continue X starts a span."""
    out: list[tuple[int, int, str]] = []
    open_start, open_type = -1, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, typ = tag.partition("-")
        continues = prefix == "I" and typ == open_type
        if open_type is not None and not continues:
            out.append((open_start, i, open_type))
            open_type = None
        if prefix == "B" or (prefix == "I" and not continues):
            open_start, open_type = i, typ
    return out


@dataclass(frozen=True)
class Grounding:
    spans: list[tuple[int, int, str]]  # (start, end, type), deduplicated, sorted
    not_found: int  # entity strings with no occurrence on token boundaries


def ground(text: str, entities: Iterable[tuple[str, str]]) -> Grounding:
    """Ground an LLM's (entity string, type) pairs onto `text` (docs/method.md#grounding).

    Every occurrence whose start and end fall on token boundaries becomes a span; exact matches first, and a
    case-insensitive match only when there is no exact one. Occurrences may overlap (the IOB2 projection then
    keeps the first in its order). Spans are deduplicated; strings with no occurrence are counted.
    """
    starts, ends = tokenize(text)
    start_set, end_set = set(starts.tolist()), set(ends.tolist())
    found: set[tuple[int, int, str]] = set()
    not_found = 0
    for surface, etype in entities:
        surface = surface.strip() if isinstance(surface, str) else ""
        hits: list[tuple[int, int]] = []
        if surface:
            for flags in (0, re.IGNORECASE):
                pattern = re.compile("(?=(" + re.escape(surface) + "))", flags)
                hits = [
                    (m.start(1), m.end(1))
                    for m in pattern.finditer(text)
                    if m.start(1) in start_set and m.end(1) in end_set and m.end(1) > m.start(1)
                ]
                if hits:
                    break
        if not hits:
            not_found += 1
        found.update((a, b, etype) for a, b in hits)
    return Grounding(sorted(found), not_found)
