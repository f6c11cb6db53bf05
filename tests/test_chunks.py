"""Chunks of long documents: exact offsets for any Unicode text, cuts on sentences and never inside a grapheme
cluster, and spans mapped back and merged independently of the order the chunks finished."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.structured import CHARS_PER_TOKEN
from annotation.chunks import (
    Chunk,
    _sentence_ends,
    chunk_chars_for,
    grapheme_boundaries,
    map_spans,
    merge_spans,
    plan_chunks,
)
from state.models import Span

regex = pytest.importorskip("regex")  # the \X grapheme-cluster oracle (installed with tiktoken)

# characters whose cluster rules Python's unicodedata knows as well as the oracle does: Latin, CJK with its full
# stops, combining accents, emoji with skin tone and variation selector, flags, Arabic and Hebrew with their vowel
# marks, Hangul jamo and syllables, Devanagari, a prepended Arabic number sign, zero-width space and non-joiner
EXACT_ALPHABET = (
    "ab Z.?!,'\n\r\t東京。！？\u0301\u0308\u0327\U0001f468\U0001f469\U0001f3fd\ufe0f\U0001f1eb\U0001f1f7"
    "\u0645\u064e\u05e9\u05b8\u1100\u1161\u11a8\uac00\uac01\u0915\u0937\u00a0\u200b\u200c\u0600"
)
# plus the zero-width joiner and the virama, where the module is conservative (never breaks after them)
ALPHABET = EXACT_ALPHABET + "\u200d\u094d"
PIECES = [
    "Paris", "New York", "e\u0301te\u0301", "東京", "大阪", "。", "！", "？", "」", ". ", "? ", "! ", " ", "  ", "\n",
    "\r\n", "\u0645\u064e\u062f\u064a\u0646\u0629", "\u05e9\u05b8\u05dc\u05d5\u05dd", "👨\u200d👩\u200d👧",
    "👍🏽", "🇫🇷🇩🇪", "한국어", "\u1100\u1161\u11a8", "नमस्ते", "क्\u200dष", "\u0301", "\u200d", "J. Doe",
    "e.g. this", "\u0600\u0661", "\ufe0f", "\t", "a" * 12, "\u0627\u0644\u0633\u0644\u0627\u0645\u061f ",
]
texts = st.lists(st.sampled_from(PIECES) | st.text(alphabet=ALPHABET, max_size=4), max_size=40).map("".join)


def oracle_boundaries(text: str) -> set[int]:
    """Grapheme-cluster boundaries by the `regex` module's \\X (Unicode's extended grapheme clusters)."""
    return {0} | {m.end() for m in regex.finditer(r"\X", text)}


def check_plan(text: str, chunks: list[Chunk], max_chars: int, overlap: int) -> None:
    """The invariants every plan keeps: coverage, order, bounds, overlap and cuts between grapheme clusters."""
    bounds = set(grapheme_boundaries(text))
    oracle = oracle_boundaries(text)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for chunk in chunks:
        assert chunk.start in bounds and chunk.end in bounds
        assert chunk.start in oracle and chunk.end in oracle
        assert chunk.substring(text) == text[chunk.start:chunk.end]
        if len(chunk) > max_chars:  # only one grapheme cluster longer than the bound may exceed it
            assert not any(chunk.start < b < chunk.end for b in bounds), chunk
        assert len(chunk) > 0 or text == ""
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.start < b.start <= a.end < b.end
        assert a.end - b.start <= overlap


# ---------------------------------------------------------------- grapheme clusters


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=EXACT_ALPHABET, max_size=30))
def test_grapheme_boundaries_equal_the_oracle_where_unicodedata_knows_the_rules(text):
    assert set(grapheme_boundaries(text)) == oracle_boundaries(text) | {len(text)}


@settings(max_examples=300, deadline=None)
@given(texts)
def test_grapheme_boundaries_never_split_a_cluster(text):
    bounds = grapheme_boundaries(text)
    assert bounds == sorted(set(bounds)) and bounds[0] == 0 and bounds[-1] == len(text)
    assert set(bounds) <= oracle_boundaries(text) | {len(text)}


def test_grapheme_clusters_by_hand():
    def clusters(text):
        b = grapheme_boundaries(text)
        return [text[i:j] for i, j in zip(b, b[1:], strict=False)]

    assert clusters("cafe\u0301!") == ["c", "a", "f", "e\u0301", "!"]
    assert clusters("a\r\nb") == ["a", "\r\n", "b"]
    assert clusters("👨\u200d👩\u200d👧x") == ["👨\u200d👩\u200d👧", "x"]
    assert clusters("👍🏽👍") == ["👍🏽", "👍"]
    assert clusters("🇫🇷🇩🇪🇮") == ["🇫🇷", "🇩🇪", "🇮"]
    assert clusters("\u1100\u1161\u11a8\uac00") == ["\u1100\u1161\u11a8", "\uac00"]
    assert clusters("\u0600\u0661 ") == ["\u0600\u0661", " "]
    assert clusters("\ud83d\ude00a") == ["\ud83d\ude00", "a"]  # a surrogate pair kept by surrogatepass
    assert clusters("\n\u0301") == ["\n", "\u0301"]  # after a newline, a lone mark starts a cluster of its own
    assert clusters("") == []


# ---------------------------------------------------------------- planning


@settings(max_examples=400, deadline=None)
@given(texts, st.integers(1, 60), st.data())
def test_plan_covers_the_text_in_bounded_overlapping_chunks(text, max_chars, data):
    overlap = data.draw(st.none() | st.integers(0, max_chars - 1))
    chunks = plan_chunks(text, max_chars, overlap)
    check_plan(text, chunks, max_chars, max_chars // 10 if overlap is None else overlap)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.text(alphabet="abcXYZ", min_size=1, max_size=6), st.sampled_from(["", ".", ","])).map("".join),
             min_size=1, max_size=60),
    st.integers(16, 40),
    st.data(),
)
def test_cuts_never_fall_inside_a_word_when_words_are_short(words, max_chars, data):
    text = " ".join(words)
    overlap = data.draw(st.integers(0, max_chars // 2))
    chunks = plan_chunks(text, max_chars, overlap)
    check_plan(text, chunks, max_chars, overlap)
    for chunk in chunks:
        for p in (chunk.start, chunk.end):
            if 0 < p < len(text):
                assert not (re.match(r"\w", text[p - 1]) and re.match(r"\w", text[p])), (text, p)


def test_chunks_end_on_sentences_when_they_fill_half_the_window():
    text = "One two three. Four five six. Seven eight nine."
    chunks = plan_chunks(text, 35, 0)
    assert [c.substring(text) for c in chunks] == ["One two three. Four five six. ", "Seven eight nine."]


def test_a_sentence_end_too_early_in_the_window_gives_way_to_a_space():
    text = "Hi. Aaaa bbbb cccc dddd eeee ffff"
    assert _sentence_ends(text) == {4}
    chunks = plan_chunks(text, 20, 0)
    # the sentence ends at 4, before the window's back half (10, 20]: the cut is the last word start in it
    assert [c.substring(text) for c in chunks] == ["Hi. Aaaa bbbb cccc ", "dddd eeee ffff"]


def test_sentence_ends_in_several_scripts_but_not_after_initials_or_before_lower_case():
    text = "東京に行った。大阪も！ J. Doe met e.g. them. Then?\nA line (yes.) Next مرحبا؟ Ok"
    ends = sorted(_sentence_ends(text))
    assert [text[:p][-3:] for p in ends] == ["った。", "も！ ", "m. ", "n?\n", ".) ", "ا؟ "]
    # with room for 12 characters the first chunk takes both CJK sentences and the next cuts at a word start,
    # as "J. " ends no sentence
    chunks = plan_chunks(text[:46], 12, 0)
    assert [c.substring(text) for c in chunks] == ["東京に行った。大阪も！ ", "J. Doe met ", "e.g. them. ", "Then?\nA line"]


def test_the_overlap_is_whole_sentences_where_it_can_be():
    text = "Aaa bbb. Ccc ddd. Eee fff. Ggg hhh. Iii jjj. Kkk lll."
    chunks = plan_chunks(text, 27, 10)
    assert [c.substring(text) for c in chunks] == [
        "Aaa bbb. Ccc ddd. Eee fff. ", "Eee fff. Ggg hhh. Iii jjj. ", "Iii jjj. Kkk lll.",
    ]
    # each next start is the sentence start in the earlier half of [end - 10, end): 18 in [17, 22], 36 in [35, 40]
    assert [(c.start, c.end) for c in chunks] == [(0, 27), (18, 45), (36, 53)]


def test_text_without_spaces_is_cut_between_grapheme_clusters():
    text = "東京は大きい都市である" * 4
    chunks = plan_chunks(text, 20, 6)
    check_plan(text, chunks, 20, 6)
    assert [len(c) for c in chunks] == [20, 20, 16]
    assert chunks[1].start == 14


def test_a_cluster_longer_than_the_bound_gets_a_chunk_of_its_own():
    text = "a" + "\u0301" * 30 + " bc de"
    chunks = plan_chunks(text, 10, 3)
    assert chunks[0] == Chunk(0, 0, 31)
    check_plan(text, chunks, 10, 3)


def test_short_and_empty_texts_are_one_chunk():
    assert plan_chunks("", 5) == [Chunk(0, 0, 0)]
    assert plan_chunks("short", 5) == [Chunk(0, 0, 5)]


@pytest.mark.parametrize(("max_chars", "overlap"), [(0, None), (-3, None), (10, 10), (10, 11), (10, -1)])
def test_plan_rejects_bad_sizes(max_chars, overlap):
    with pytest.raises(ValueError):
        plan_chunks("some text here", max_chars, overlap)


def test_a_long_document_is_planned_quickly():
    text = ("Bob lives in Paris. 彼は東京に住んでいる。 Hello\u0301 world! " * 6000)[:300_000]
    chunks = plan_chunks(text, 6000)
    assert len(chunks) > 50 and chunks[-1].end == len(text)
    check_plan(text[:20000], plan_chunks(text[:20000], 6000), 6000, 600)


# ---------------------------------------------------------------- context budget


def test_chunk_chars_for_a_context():
    # 7168 tokens left for the prompt: 21504 characters at 3 a token, 3000 of them the prompt around the document
    assert chunk_chars_for(8192, 3000, 1024) == int((8192 - 1024) * CHARS_PER_TOKEN) - 3000
    assert chunk_chars_for(1000, 0, 0) == int(1000 * CHARS_PER_TOKEN)
    with pytest.raises(ValueError, match="no room"):
        chunk_chars_for(2048, 5000, 512)


# ---------------------------------------------------------------- spans


@settings(max_examples=200, deadline=None)
@given(texts, st.integers(1, 40), st.data())
def test_map_spans_is_exact(text, max_chars, data):
    for chunk in plan_chunks(text, max_chars):
        piece = chunk.substring(text)
        if not piece:
            continue
        pairs = data.draw(st.lists(st.tuples(st.integers(0, len(piece) - 1), st.integers(1, len(piece))), max_size=5))
        local = [Span(start=min(a, b - 1), end=b, type="X") for a, b in pairs if min(a, b - 1) < b]
        for before, after in zip(local, map_spans(chunk, local), strict=True):
            assert text[after.start:after.end] == piece[before.start:before.end]
            assert (after.end - after.start, after.type) == (before.end - before.start, before.type)


def test_map_spans_rejects_spans_outside_the_chunk():
    with pytest.raises(ValueError, match="chunk's own offsets"):
        map_spans(Chunk(1, 10, 20), [Span(start=12, end=22, type="X")])


def spans_in(chunk: Chunk, data, types: str = "ABC") -> list[Span]:
    """Random spans in the chunk's own offsets."""
    if len(chunk) == 0:
        return []
    starts = st.integers(0, len(chunk) - 1)
    drawn = data.draw(st.lists(st.tuples(starts, st.integers(1, 6), st.sampled_from(types)), max_size=6))
    return [Span(start=s, end=min(s + w, len(chunk)), type=t) for s, w, t in drawn]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 120), st.integers(4, 40), st.data())
def test_merge_is_independent_of_the_order_chunks_finished(length, max_chars, data):
    text = ("Ab cd. Ef gh ij. " * 10)[:length]
    chunks = plan_chunks(text, max_chars, data.draw(st.integers(0, max_chars - 1)))
    per_chunk = [(chunk, spans_in(chunk, data)) for chunk in chunks]
    # a span in each overlap, given by both chunks: kept once
    for a, b in zip(chunks, chunks[1:], strict=False):
        if b.start < a.end:
            doc = (b.start, a.end)
            per_chunk[a.index][1].append(Span(start=doc[0] - a.start, end=doc[1] - a.start, type="D"))
            per_chunk[b.index][1].append(Span(start=0, end=doc[1] - b.start, type="D"))
    merged = merge_spans(per_chunk)
    shuffled = [(c, list(reversed(s))) for c, s in per_chunk]
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(shuffled)
    assert merge_spans(shuffled, text_length=len(text)) == merged

    keys = [(s.start, s.end, s.type) for s in merged]
    assert keys == sorted(set(keys))
    produced: dict[tuple[int, int, str], set[int]] = {}
    for chunk, doc_spans in ((c, map_spans(c, s)) for c, s in per_chunk):
        for s in doc_spans:
            produced.setdefault((s.start, s.end, s.type), set()).add(chunk.index)
    assert set(keys) <= set(produced)

    def conflict(x, y):
        return x != y and x[0] < y[1] and y[0] < x[1] and not produced[x] & produced[y]

    assert not any(conflict(x, y) for x in keys for y in keys)  # no conflict between chunks is left
    for key in produced:  # a span that conflicts with no other is kept, duplicates included
        if not any(conflict(key, other) for other in produced):
            assert key in keys


def test_merge_keeps_one_chunks_own_nested_spans():
    chunk = Chunk(0, 0, 30)
    spans = [Span(start=0, end=8, type="LOC"), Span(start=0, end=3, type="LOC"), Span(start=2, end=8, type="ORG")]
    assert merge_spans([(chunk, spans + spans[:1])]) == sorted(spans, key=lambda s: (s.start, s.end, s.type))


def test_merge_resolves_a_conflicting_overlap_by_hand():
    text = "Alice met Bob. They flew to New York City. It rained."
    first, second = Chunk(0, 0, 32), Chunk(1, 10, len(text))
    assert first.substring(text) == "Alice met Bob. They flew to New "
    assert second.substring(text) == "Bob. They flew to New York City. It rained."
    first_spans = [
        Span(start=0, end=5, type="PER"),  # Alice: only the first chunk sees it
        Span(start=10, end=13, type="PER"),  # Bob: margin 19 (to the cut at 32; 0 is the document's start)
        Span(start=28, end=31, type="LOC"),  # New: 1 character from the cut at 32
    ]
    second_spans = [
        Span(start=0, end=3, type="PER"),  # Bob again, at the cut (margin 0): a duplicate, kept once
        Span(start=18, end=31, type="LOC"),  # New York City, [28, 41): margin 18 (the document's end is no cut)
        Span(start=18, end=26, type="LOC"),  # New York, nested in the same chunk's New York City: kept
    ]
    merged = merge_spans([(second, second_spans), (first, first_spans)])
    assert [(s.start, s.end, s.type, text[s.start:s.end]) for s in merged] == [
        (0, 5, "PER", "Alice"),
        (10, 13, "PER", "Bob"),
        (28, 36, "LOC", "New York"),
        (28, 41, "LOC", "New York City"),
    ]


def test_merge_tie_breaks_by_margin_then_length_then_start_then_type():
    a, b = Chunk(0, 0, 20), Chunk(1, 10, 30)  # a 30-character document, overlap [10, 20)

    def merge(in_a, in_b):
        return [(s.start, s.end, s.type) for s in merge_spans([(a, in_a), (b, in_b)], text_length=30)]

    # same extent [12, 16), other types: a's margin is 20 - 16 = 4, b's is 12 - 10 = 2, so a's type wins
    assert merge([Span(start=12, end=16, type="ORG")], [Span(start=2, end=6, type="LOC")]) == [(12, 16, "ORG")]
    # the larger margin wins over the longer span: [12, 16) in a (margin 4) against [11, 17) in b (margin 1)
    assert merge([Span(start=12, end=16, type="A")], [Span(start=1, end=7, type="A")]) == [(12, 16, "A")]
    # equal margins (4), equal lengths: the smaller start wins
    assert merge([Span(start=12, end=16, type="B")], [Span(start=4, end=8, type="A")]) == [(12, 16, "B")]
    # equal margins (3): the longer span wins ([11, 17) in a: margin 3; [13, 16) in b: margin 3)
    assert merge([Span(start=11, end=17, type="B")], [Span(start=3, end=6, type="A")]) == [(11, 17, "B")]
    # everything equal but the type ([13, 17): margin 3 in both): the type name decides
    assert merge([Span(start=13, end=17, type="ORG")], [Span(start=3, end=7, type="LOC")]) == [(13, 17, "LOC")]


def test_the_documents_own_edges_are_no_cut():
    a, b = Chunk(0, 0, 20), Chunk(1, 10, 30)  # a 30-character document, overlap [10, 20)

    def merge(in_a, in_b):
        return [(s.start, s.end, s.type) for s in merge_spans([(a, in_a), (b, in_b)])]

    # [1, 12) in a: 1 from the document's start, which is no cut, and 8 from a's cut at 20: margin 8;
    # [11, 28) in b: margin 1 (from b's cut at 10), though longer
    assert merge([Span(start=1, end=12, type="A")], [Span(start=1, end=18, type="B")]) == [(1, 12, "A")]
    # [18, 29) in b: 8 from b's cut at 10, 1 from the document's end: margin 8; [5, 19) in a: margin 1, though longer
    assert merge([Span(start=5, end=19, type="A")], [Span(start=8, end=19, type="B")]) == [(18, 29, "B")]
