"""`corpus.tokens.ground`: an LLM's entity strings onto character spans of the document (docs/method.md).

The rules pinned here are the ones `ground` states: every occurrence whose start and end fall on token boundaries
(tokens are `\\w+` runs and single other non-space characters) becomes a span; exact-case occurrences first, the
case-insensitive ones only when there is no exact one; overlapping occurrences are all kept; spans are deduplicated
and sorted; strings with no occurrence are counted in `not_found`. Offsets are Python `str` indices.
"""

from __future__ import annotations

import pytest

from corpus.tokens import ground


def spans_of(text: str, entities: list[tuple[str, str]]) -> list[tuple[int, int, str]]:
    g = ground(text, entities)
    assert g.not_found == 0, g
    return g.spans


# ---------------------------------------------------------------- repeated mentions


def test_every_occurrence_of_a_repeated_string_is_grounded():
    text = "Paris loves Paris , and Paris loves nobody ."
    #       0     6     12    18 20  24    30
    assert spans_of(text, [("Paris", "LOC")]) == [(0, 5, "LOC"), (12, 17, "LOC"), (24, 29, "LOC")]
    assert [text[a:b] for a, b, _ in spans_of(text, [("Paris", "LOC")])] == ["Paris"] * 3


def test_repeated_multi_token_string_and_listing_it_twice():
    text = "New York beat New York Jets in New York ."
    #       0        9    14       23   28 31       40
    expected = [(0, 8, "ORG"), (14, 22, "ORG"), (31, 39, "ORG")]
    assert spans_of(text, [("New York", "ORG")]) == expected
    # the same pair twice: the spans are deduplicated, nothing counted as missing
    assert spans_of(text, [("New York", "ORG"), ("New York", "ORG")]) == expected


def test_same_string_with_two_types_gives_a_span_of_each_type_at_every_occurrence():
    text = "Jordan met Jordan"
    assert spans_of(text, [("Jordan", "PER"), ("Jordan", "LOC")]) == [
        (0, 6, "LOC"), (0, 6, "PER"), (11, 17, "LOC"), (11, 17, "PER"),
    ]


# ---------------------------------------------------------------- token boundaries


def test_no_match_inside_a_longer_word():
    # "Paris" inside "Parisian" ends inside a token; "is" inside "This" starts inside one
    g = ground("Parisian food", [("Paris", "LOC")])
    assert (g.spans, g.not_found) == ([], 1)
    assert spans_of("This is it", [("is", "X")]) == [(5, 7, "X")]
    # a word boundary inside the document's own token is not enough: "York" of "NewYork" is not a token
    g = ground("NewYork and York", [("York", "LOC")])
    assert g.spans == [(12, 16, "LOC")]


def test_punctuation_is_its_own_token():
    # "Paris," is two tokens, so "Paris" ends on a boundary; "U.S" ends on the token "S" of "U.S."
    assert spans_of("Paris, France", [("Paris", "LOC"), ("France", "LOC")]) == [(0, 5, "LOC"), (7, 13, "LOC")]
    assert spans_of("the U.S. army", [("U.S", "LOC"), ("U.S.", "ORG")]) == [(4, 7, "LOC"), (4, 8, "ORG")]
    # regex metacharacters in an entity string are literal
    assert spans_of("C++ and (IL-2) here", [("C++", "LANG"), ("(IL-2)", "PROT"), ("IL-2", "PROT")]) == [
        (0, 3, "LANG"), (8, 14, "PROT"), (9, 13, "PROT"),
    ]


def test_overlapping_occurrences_are_all_kept():
    # "a a" occurs at 0-3 and, overlapping it, at 2-5
    assert spans_of("a a a", [("a a", "X")]) == [(0, 3, "X"), (2, 5, "X")]
    # nested candidates of different strings: both kept (the IOB2 projection later chooses)
    assert spans_of("Bank of America Tower", [("Bank of America", "ORG"), ("America", "LOC")]) == [
        (0, 15, "ORG"), (8, 15, "LOC"),
    ]


# ---------------------------------------------------------------- case


def test_exact_case_first_then_case_insensitive():
    text = "Apple sells apple juice and APPLE shares"
    #       0     6     12    18    24  28
    # an exact occurrence exists: only the exact ones
    assert spans_of(text, [("apple", "X")]) == [(12, 17, "X")]
    assert spans_of(text, [("Apple", "ORG")]) == [(0, 5, "ORG")]
    # no exact occurrence: every case-insensitive one
    assert spans_of(text, [("aPPle", "X")]) == [(0, 5, "X"), (12, 17, "X"), (28, 33, "X")]


def test_case_fallback_on_non_ascii_letters():
    assert spans_of("ÉCOLE et école", [("École", "ORG")]) == [(0, 5, "ORG"), (9, 14, "ORG")]
    assert spans_of("ÉCOLE et école", [("école", "ORG")]) == [(9, 14, "ORG")]


# ---------------------------------------------------------------- not found


def test_not_found_counts_each_string_without_an_occurrence():
    g = ground("Barack Obama spoke", [("Obama", "PER"), ("Merkel", "PER"), ("Obam", "PER"), ("Barack  Obama", "PER")])
    # "Obam" ends inside a token; the double space never occurs
    assert g.spans == [(7, 12, "PER")]
    assert g.not_found == 3


def test_surrounding_whitespace_is_stripped_and_empty_strings_are_not_found():
    g = ground("Barack Obama spoke", [("  Obama ", "PER"), ("", "PER"), ("   ", "PER"), (None, "PER")])
    assert g.spans == [(7, 12, "PER")]
    assert g.not_found == 3


def test_nothing_to_ground():
    g = ground("", [("x", "X")])
    assert (g.spans, g.not_found) == ([], 1)
    g = ground("some text", [])
    assert (g.spans, g.not_found) == ([], 0)


# ---------------------------------------------------------------- non-ASCII text: offsets are str indices


def test_accented_and_astral_characters_are_one_index_each():
    text = "😀 Zoë met Zoë"  # the emoji is one str index (two UTF-16 units, four UTF-8 bytes)
    got = spans_of(text, [("Zoë", "PER")])
    assert got == [(2, 5, "PER"), (10, 13, "PER")]
    assert all(text[a:b] == "Zoë" for a, b, _ in got)


def test_emoji_are_tokens_of_their_own():
    # a flag is two regional-indicator code points, each its own token
    text = "🇫🇷 Paris 🇫🇷"
    assert spans_of(text, [("🇫🇷", "FLAG"), ("Paris", "LOC")]) == [(0, 2, "FLAG"), (3, 8, "LOC"), (9, 11, "FLAG")]
    assert spans_of("I ❤ Paris", [("❤", "X")]) == [(2, 3, "X")]


@pytest.mark.parametrize(
    ("text", "entity", "spans", "not_found"),
    [
        # CJK punctuation separates tokens
        ("東京、大阪", "東京", [(0, 2)], 0),
        ("東京、大阪", "大阪", [(3, 5)], 0),
        # CJK letters are word characters: an unspaced sentence is one token, so a name inside it has no boundary
        ("東京タワーは東京にある", "東京", [], 1),
        ("東京タワーは東京にある", "東京タワーは東京にある", [(0, 11)], 0),
        # spaced CJK: both occurrences
        ("東京 と 東京", "東京", [(0, 2), (5, 7)], 0),
    ],
)
def test_cjk_boundaries(text, entity, spans, not_found):
    g = ground(text, [(entity, "LOC")])
    assert g.spans == [(a, b, "LOC") for a, b in spans]
    assert g.not_found == not_found
    assert all(text[a:b] == entity for a, b in spans)


def test_spans_are_sorted_and_deduplicated_across_strings():
    text = "Rome and Paris and Rome"
    g = ground(text, [("Rome", "LOC"), ("Paris", "LOC"), ("rome", "LOC"), ("Rome", "LOC")])
    # "rome" has no exact occurrence, falls back to the same two spans: deduplicated
    assert g.spans == [(0, 4, "LOC"), (9, 14, "LOC"), (19, 23, "LOC")]
    assert g.not_found == 0
