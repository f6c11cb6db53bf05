"""Long documents cut into overlapping chunks on sentence boundaries, and the chunks' spans merged back.

A document longer than an annotator's context is annotated chunk by chunk, never silently truncated (see
`docs/method.md` for where annotation sits in a round). All offsets are Python string indices (code points), end
exclusive, as everywhere else in the project.

Cutting (`plan_chunks`). A chunk is at most `max_chars` long. Its end is the best cut point in the window
`(start, start + max_chars]`, by these levels, best first:

1. a sentence boundary: after ``.``, ``?``, ``!`` (and the Arabic ``؟`` ``۔`` and Devanagari ``।`` ``॥``) with any
   closing quotes or brackets, followed by whitespace (cut after the whitespace); after the CJK full stops
   ``。！？｡`` with any closing brackets and whitespace; after a newline and the whitespace that follows it. A period
   followed by a lower-case letter or a digit, or ending a one-letter word (an initial, "J. Smith"), ends no sentence;
2. the start of a word after whitespace;
3. any point not between two word characters (a grapheme cluster whose first character matches ``\\w``);
4. any grapheme-cluster boundary (scripts written without spaces, such as Chinese, have no other cut points inside
   a long sentence).

A level is taken when it has a point in the back half of the window, `(start + max_chars // 2, start + max_chars]`,
so a chunk is never cut short at a sentence end if that would leave it less than half full; when none has, the
best level with a point anywhere in the window is taken (its latest point). A cut never falls inside a grapheme cluster
(`grapheme_boundaries`: the extended grapheme cluster rules of Unicode text segmentation, approximated
conservatively where Python's `unicodedata` lacks a property: never a break after a zero-width joiner or after a
virama followed by a letter, or between a high and a low surrogate). The one exception to the length bound: a single
grapheme cluster longer than `max_chars` (a letter carrying hundreds of combining marks) makes its chunk longer.

Consecutive chunks overlap by at most `overlap_chars` (default: a tenth of `max_chars`): the next chunk starts at
the earliest cut point in `[end - overlap_chars, end)` of the best level that has one in the earlier half of that
range (so the overlap is at whole sentences where that keeps at least half of it), else of the best level that has
one anywhere in it, else at `end` (no overlap). A start inside a word (level 4) is taken only when the chunk's end
is itself inside a word (a run without spaces). Every chunk ends after the one before, so the chunks cover the text
from 0 to its length, in order, and every chunk starts after the one before.

Merging (`merge_spans`). Each chunk's spans come in the chunk's own offsets (as an annotator grounds them in
`chunk.substring(text)`) and are moved to document offsets. A span found by several chunks (same start, end and
type) is kept once. Two different spans that share a character conflict when no single chunk produced both (one
chunk's own nested or overlapping spans are its annotator's decision, left as they are). Conflicts are resolved
greedily in this order of preference, and a span is dropped when it conflicts with one already kept:

1. the larger margin: the span's distance to the nearer cut edge of the chunk that produced it (the chunk with more
   context around it; the document's own start and end are no cut, so a span there has full context; a span
   produced by several chunks takes its largest margin);
2. the longer span;
3. the smaller start;
4. the type name, in Python string order.

The preference is a total order on distinct spans, so the result does not depend on the order the chunks finished.
The result is sorted by (start, end, type).
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from agents.structured import CHARS_PER_TOKEN
from state.models import Span

SENTENCE, SPACE, WORD, GRAPHEME = 0, 1, 2, 3  # cut-point levels, best first
_LEVELS = (SENTENCE, SPACE, WORD, GRAPHEME)

_STOP = r"[.?!\u061f\u06d4\u0964\u0965]"
_CLOSERS = "\"'\u201d\u2019)\\]}\u00bb\u300d\u300f\uff09\u3011"
_WESTERN_END = re.compile(rf"({_STOP}+)[{_CLOSERS}]*\s+")
_CJK_END = re.compile(rf"[\u3002\uff01\uff1f\uff61]+[{_CLOSERS}]*\s*")
_LINE_END = re.compile(r"\n\s*")
_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: characters [start, end) of it, the index-th piece from the start."""

    index: int
    start: int
    end: int

    def substring(self, text: str) -> str:
        """The chunk's text, cut from the whole document's text."""
        return text[self.start:self.end]

    def __len__(self) -> int:
        return self.end - self.start


# ---------------------------------------------------------------- grapheme clusters

_CR, _LF, _CONTROL, _EXTEND, _ZWJ, _RI, _PREPEND, _SPACING, _L, _V, _T, _LV, _LVT, _OTHER = range(14)

_PREPEND_CHARS = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2, 0x111C3,
     0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02]
)


def _break_class(ch: str) -> int:
    """The character's Grapheme_Cluster_Break class, from `unicodedata` and a few code point ranges."""
    cp = ord(ch)
    if cp == 0x0D:
        return _CR
    if cp == 0x0A:
        return _LF
    if cp == 0x200D:
        return _ZWJ
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _RI
    if cp in _PREPEND_CHARS:
        return _PREPEND
    if 0x1100 <= cp <= 0x115F or 0xA960 <= cp <= 0xA97C:
        return _L
    if 0x1160 <= cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return _V
    if 0x11A8 <= cp <= 0x11FF or 0xD7CB <= cp <= 0xD7FB:
        return _T
    if 0xAC00 <= cp <= 0xD7A3:
        return _LV if (cp - 0xAC00) % 28 == 0 else _LVT
    if (cp == 0x200C or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F or cp in (0xFF9E, 0xFF9F)):
        return _EXTEND  # zero-width non-joiner, emoji skin tones, tag characters, half-width kana voicing marks
    category = unicodedata.category(ch)
    if category in ("Mn", "Me"):
        return _EXTEND
    if category == "Mc":
        return _SPACING
    if category in ("Cc", "Zl", "Zp", "Cf", "Cs"):
        return _CONTROL
    return _OTHER


def _no_break(prev: str, prev_class: int, cls: int, ch: str) -> bool:
    """Whether the rules forbid a break between `prev` and `ch` (regional indicators are counted by the caller)."""
    if prev_class == _CR and cls == _LF:
        return True
    if prev_class in (_CR, _LF, _CONTROL):
        # a high surrogate and a low one are one character that a str read with surrogatepass keeps in two halves
        return "\ud800" <= prev <= "\udbff" and "\udc00" <= ch <= "\udfff"
    if cls in (_CR, _LF, _CONTROL):
        return False
    if prev_class == _L and cls in (_L, _V, _LV, _LVT):
        return True
    if prev_class in (_LV, _V) and cls in (_V, _T):
        return True
    if prev_class in (_LVT, _T) and cls == _T:
        return True
    if cls in (_EXTEND, _ZWJ, _SPACING) or prev_class in (_PREPEND, _ZWJ):
        return True  # after a joiner: never (emoji sequences; conservative where the pictograph property is unknown)
    # a virama followed by a letter: the conjunct of Indic scripts (conservative superset of the Unicode rule)
    return unicodedata.combining(prev) == 9 and unicodedata.category(ch).startswith("L")


def grapheme_boundaries(text: str) -> list[int]:
    """The positions where `text` may be cut without splitting a grapheme cluster, 0 and len(text) included."""
    if not text:
        return [0]
    bounds = [0]
    prev, prev_class = text[0], _break_class(text[0])
    regional_run = 1 if prev_class == _RI else 0
    for i in range(1, len(text)):
        ch = text[i]
        cls = _break_class(ch)
        if prev_class == _RI and cls == _RI:
            joined = regional_run % 2 == 1  # flags pair up regional indicators from the left
        else:
            joined = _no_break(prev, prev_class, cls, ch)
        if not joined:
            bounds.append(i)
        regional_run = regional_run + 1 if cls == _RI else 0
        prev, prev_class = ch, cls
    bounds.append(len(text))
    return bounds


# ---------------------------------------------------------------- cut points


def _sentence_ends(text: str) -> set[int]:
    """Positions just after a sentence's end and the whitespace that follows it."""
    ends: set[int] = set()
    for m in _WESTERN_END.finditer(text):
        if m.group(1) == "." and _continues_after_period(text, m.start(), m.end()):
            continue
        ends.add(m.end())
    ends.update(m.end() for m in _CJK_END.finditer(text))
    ends.update(m.end() for m in _LINE_END.finditer(text))
    return ends


def _continues_after_period(text: str, period: int, after: int) -> bool:
    """A single period that ends an initial, or that a lower-case letter or a digit follows, ends no sentence."""
    if "\n" in text[period:after]:
        return False
    if after < len(text) and (text[after].islower() or text[after].isdigit()):
        return True
    word_start = period
    while word_start > 0 and _WORD_CHAR.match(text[word_start - 1]):
        word_start -= 1
    return period - word_start == 1 and text[word_start].isupper()


def _cut_points(text: str) -> list[list[int]]:
    """For each level, the sorted positions 0 < p < len(text) that are cut points of that level or a better one."""
    bounds = grapheme_boundaries(text)
    sentence_ends = _sentence_ends(text)
    by_level: list[list[int]] = [[] for _ in _LEVELS]
    for j in range(1, len(bounds) - 1):
        p = bounds[j]
        before, after = text[p - 1], text[p]
        if p in sentence_ends:
            level = SENTENCE
        elif before.isspace() and not after.isspace():
            level = SPACE
        elif not (_WORD_CHAR.match(text[bounds[j - 1]]) and _WORD_CHAR.match(after)):
            level = WORD
        else:
            level = GRAPHEME
        for at_least in range(level, len(_LEVELS)):
            by_level[at_least].append(p)
    return by_level


def _latest(points: list[int], above: int, at_most: int) -> int | None:
    """The largest point p with above < p <= at_most, if any."""
    k = bisect.bisect_right(points, at_most) - 1
    return points[k] if k >= 0 and points[k] > above else None


def _earliest(points: list[int], at_least: int, below: int) -> int | None:
    """The smallest point p with at_least <= p < below, if any."""
    k = bisect.bisect_left(points, at_least)
    return points[k] if k < len(points) and points[k] < below else None


def plan_chunks(text: str, max_chars: int, overlap_chars: int | None = None) -> list[Chunk]:
    """Cut `text` into chunks of at most `max_chars` characters, on sentence boundaries where possible, consecutive
    chunks overlapping by at most `overlap_chars` (default max_chars // 10); the rules are in the module docstring."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    overlap = max_chars // 10 if overlap_chars is None else overlap_chars
    if not 0 <= overlap < max_chars:
        raise ValueError(f"overlap_chars must be in [0, max_chars) = [0, {max_chars}), got {overlap}")
    n = len(text)
    if n <= max_chars:
        return [Chunk(0, 0, n)]
    points = _cut_points(text)
    any_point = points[GRAPHEME]
    chunks: list[Chunk] = []
    start, prev_end = 0, 0
    while True:
        if start + max_chars >= n:
            end = n
        else:
            end = _chunk_end(points, start, prev_end, max_chars)
            if end is None and start < prev_end:
                start = prev_end  # the overlap leaves no cut point past the last chunk: drop the overlap
                continue
            if end is None:  # one grapheme cluster longer than max_chars
                k = bisect.bisect_right(any_point, start)
                end = any_point[k] if k < len(any_point) else n
        chunks.append(Chunk(len(chunks), start, end))
        if end == n:
            return chunks
        prev_end = end
        start = _next_start(points, start, end, overlap)


def _chunk_end(points: list[list[int]], start: int, prev_end: int, max_chars: int) -> int | None:
    """The chunk's end: the latest cut point of the best level with one in the back half of the window, else of the
    best level with one anywhere in it (past the previous chunk's end)."""
    limit = start + max_chars
    half = max(prev_end, start + max_chars // 2)
    for level in _LEVELS:
        end = _latest(points[level], half, limit)
        if end is not None:
            return end
    for level in _LEVELS:
        end = _latest(points[level], max(start, prev_end), limit)
        if end is not None:
            return end
    return None


def _next_start(points: list[list[int]], start: int, end: int, overlap: int) -> int:
    """The next chunk's start: the best level with a cut point in the earlier half of the overlap, else the best
    level with one anywhere in it, else `end` (no overlap); never a point worse than the chunk's own end's level."""
    if overlap == 0:
        return end
    lowest = max(end - overlap, start + 1)
    half = max(lowest, end - overlap // 2)
    allowed = range(max(WORD, _level_of(points, end)) + 1)
    for below in (half + 1, end):
        for level in allowed:
            at = _earliest(points[level], lowest, min(below, end))
            if at is not None:
                return at
    return end


def _level_of(points: list[list[int]], p: int) -> int:
    """The best level of which `p` is a cut point."""
    for level in _LEVELS:
        k = bisect.bisect_left(points[level], p)
        if k < len(points[level]) and points[level][k] == p:
            return level
    raise ValueError(f"{p} is no cut point")


def chunk_chars_for(context_window_tokens: int, prompt_overhead_chars: int, output_tokens: int) -> int:
    """The largest chunk (in characters) that fits a model's context beside the prompt around it and its answer,
    at `agents.structured.CHARS_PER_TOKEN` characters per token."""
    chars = math.floor((context_window_tokens - output_tokens) * CHARS_PER_TOKEN) - prompt_overhead_chars
    if chars < 1:
        raise ValueError(
            f"a context of {context_window_tokens} tokens leaves no room for a document beside {output_tokens} output "
            f"tokens and {prompt_overhead_chars} characters of prompt"
        )
    return chars


# ---------------------------------------------------------------- spans


def map_spans(chunk: Chunk, spans: Iterable[Span]) -> list[Span]:
    """The chunk's spans, given in the chunk's own offsets, moved to offsets in the whole document."""
    moved = []
    for span in spans:
        if not 0 <= span.start < span.end <= len(chunk):
            raise ValueError(
                f"span [{span.start}, {span.end}) lies outside chunk {chunk.index} (length {len(chunk)}): "
                "spans must be in the chunk's own offsets"
            )
        moved.append(span.model_copy(update={"start": span.start + chunk.start, "end": span.end + chunk.start}))
    return moved


def merge_spans(per_chunk: Iterable[tuple[Chunk, Iterable[Span]]], text_length: int | None = None) -> list[Span]:
    """One document's spans from its chunks' spans (each in its chunk's own offsets): duplicates kept once, conflicts
    between chunks resolved by the rule in the module docstring, independently of the order of `per_chunk`.
    `text_length` (default: the largest chunk end) tells a chunk's cut edges from the document's own edges."""
    results = [(chunk, map_spans(chunk, spans)) for chunk, spans in per_chunk]
    if text_length is None:
        text_length = max((chunk.end for chunk, _ in results), default=0)
    full_context = text_length + 1
    sources: dict[tuple[int, int, str], set[int]] = {}
    margin: dict[tuple[int, int, str], int] = {}
    for chunk, spans in results:
        for span in spans:
            key = (span.start, span.end, span.type)
            left = span.start - chunk.start if chunk.start > 0 else full_context
            right = chunk.end - span.end if chunk.end < text_length else full_context
            sources.setdefault(key, set()).add(chunk.index)
            margin[key] = max(margin.get(key, -1), min(left, right))
    preferred = sorted(sources, key=lambda k: (-margin[k], -(k[1] - k[0]), k[0], k[2], k[1]))
    kept: list[tuple[int, int, str]] = []
    for key in preferred:
        start, end, _ = key
        if not any(start < other[1] and other[0] < end and not sources[key] & sources[other] for other in kept):
            kept.append(key)
    return [Span(start=s, end=e, type=t) for s, e, t in sorted(kept)]
