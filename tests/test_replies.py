"""Reading JSON objects from replies shaped the way local models send them."""

from __future__ import annotations

import enum

import pytest
from pydantic import BaseModel, ConfigDict

from agents.replies import ReplyError, parse_reply, read_reply, reask_message, reply_objects, validate_reply

# ------------------------------------------------------------------ reply shapes, as recorded from local models

QWEN3_THINK = """<think>
Okay, let me look at the document. "Angela Merkel" is a person, "Berlin" is a location. The format is
{"entities": [...]} so I should output that.
</think>

{"entities": [{"text": "Angela Merkel", "type": "PER"}, {"text": "Berlin", "type": "LOC"}]}"""

# deepseek-r1's chat template opens the think block itself: the reply starts inside it
R1_OPEN_IN_TEMPLATE = """The user wants entities. Paris is a city, so LOC. Output JSON {"entities": []} form.
</think>

```json
{"entities": [{"text": "Paris", "type": "LOC"}]}
```"""

THINK_CUT = '<think>\nLet me think. The first entity is "Barack Obama", a PER. Then {"text": "Hawaii", "type": "LO'

GPT_OSS_PLAIN = (
    'analysisWe need to extract entities. "IBM" is an organisation. Output {"entities": [{"text": "IBM"}]} '
    'but with type.assistantfinal{"entities": [{"text": "IBM", "type": "ORG"}]}'
)
GPT_OSS_TOKENS = (
    "<|channel|>analysis<|message|>Find ORG mentions: {IBM}.<|end|><|start|>assistant<|channel|>final<|message|>"
    '{"entities": [{"text": "IBM", "type": "ORG"}]}<|return|>'
)
GPT_OSS_CUT = '<|channel|>analysis<|message|>We need to list entities. "IBM" is ORG; "Armonk" is'

ANALYSIS_PROSE = """We need to find the named entities. The document mentions Toyota, a company, and Japan.
Let's produce the JSON.

{"entities": [{"text": "Toyota", "type": "ORG"}, {"text": "Japan", "type": "LOC"}]}"""

FENCED_PLAIN = """Here are the entities:
```
{"entities": [{"text": "Nile", "type": "LOC"}]}
```"""

TRAILING_PROSE = """Sure! Here is the annotation:
{"entities": [{"text": "Lionel Messi", "type": "PER"}]}
Hope this helps! Let me know if you need anything else {or a different format}."""

SINGLE_QUOTES = "{'entities': [{'text': \"O'Neill\", 'type': 'PER'}, {'text': 'Dublin', 'type': 'LOC'}]}"

TRAILING_COMMAS = """{
  "entities": [
    {"text": "Rome", "type": "LOC",},
    {"text": "Caesar", "type": "PER"},
  ],
}"""

TRUNCATED_MID_STRING = '{"entities": [{"text": "Rome", "type": "LOC"}, {"text": "Julius Cae'

BRACES_IN_STRINGS = '{"entities": [{"text": "a {b} c", "type": "MISC"}, {"text": "x}y", "type": "MISC"}]} done'

UNICODE = (
    '```json\n{"entities": [{"text": "Zürich", "type": "LOC"}, {"text": "東京", "type": "LOC"}, '
    '{"text": "Björk", "type": "PER"}]}\n```'
)


class Kind(enum.StrEnum):
    PER = "PER"
    LOC = "LOC"
    ORG = "ORG"
    MISC = "MISC"


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    type: Kind


class Entities(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[Entity]


def texts(data: dict) -> list[tuple[str, str]]:
    return [(e["text"], e["type"]) for e in data["entities"]]


# ------------------------------------------------------------------ parse_reply


def test_think_block_before_the_json():
    assert texts(parse_reply(QWEN3_THINK)) == [("Angela Merkel", "PER"), ("Berlin", "LOC")]


@pytest.mark.parametrize("tag", ["think", "THINK", "Thinking", "thinking"])
def test_think_block_any_case(tag):
    reply = f'<{tag}>maybe {{"entities": [{{"text": "X", "type": "PER"}}]}}</{tag}>\n{{"entities": []}}'
    assert parse_reply(reply) == {"entities": []}


def test_closing_tag_only_when_the_template_opened_the_block():
    assert texts(parse_reply(R1_OPEN_IN_TEMPLATE)) == [("Paris", "LOC")]


def test_answer_cut_inside_think_block():
    with pytest.raises(ReplyError, match="answer cut inside a reasoning block") as err:
        parse_reply(THINK_CUT)
    assert '"type": "LO' in str(err.value)  # the message quotes the reply's end


def test_final_channel_after_analysis():
    assert texts(parse_reply(GPT_OSS_PLAIN)) == [("IBM", "ORG")]
    assert texts(parse_reply(GPT_OSS_TOKENS)) == [("IBM", "ORG")]


def test_answer_cut_inside_analysis_channel():
    with pytest.raises(ReplyError, match="answer cut inside a reasoning block"):
        parse_reply(GPT_OSS_CUT)


def test_analysis_prose_then_json():
    assert texts(parse_reply(ANALYSIS_PROSE)) == [("Toyota", "ORG"), ("Japan", "LOC")]


def test_fenced_json():
    assert texts(parse_reply(FENCED_PLAIN)) == [("Nile", "LOC")]
    assert texts(parse_reply(UNICODE)) == [("Zürich", "LOC"), ("東京", "LOC"), ("Björk", "PER")]


def test_fenced_object_preferred_over_a_draft_in_prose():
    reply = (
        'A draft: {"entities": [{"text": "Nil", "type": "LOC"}]}\n'
        '```json\n{"entities": [{"text": "Nile", "type": "LOC"}]}\n```'
    )
    assert texts(parse_reply(reply)) == [("Nile", "LOC")]


def test_trailing_prose_with_braces():
    assert texts(parse_reply(TRAILING_PROSE)) == [("Lionel Messi", "PER")]


def test_single_quoted_python_dict():
    assert texts(parse_reply(SINGLE_QUOTES)) == [("O'Neill", "PER"), ("Dublin", "LOC")]
    assert parse_reply("{'entities': [], 'done': True, 'note': None}") == {"entities": [], "done": True, "note": None}


def test_python_literal_that_json_cannot_express_is_refused():
    with pytest.raises(ReplyError, match="invalid JSON"):
        parse_reply("{'entities': {1, 2}}")  # a set
    with pytest.raises(ReplyError, match="invalid JSON"):
        parse_reply("{1: 'a'}")  # a non-string key


def test_trailing_commas():
    assert texts(parse_reply(TRAILING_COMMAS)) == [("Rome", "LOC"), ("Caesar", "PER")]


def test_trailing_comma_inside_a_string_is_kept():
    assert parse_reply('{"text": "a, }", "n": [1, 2,],}') == {"text": "a, }", "n": [1, 2]}


def test_truncated_mid_string():
    with pytest.raises(ReplyError, match=r"answer truncated \(unbalanced JSON\)") as err:
        parse_reply(TRUNCATED_MID_STRING)
    assert "Julius Cae" in str(err.value)


def test_truncated_object_never_yields_an_inner_object():
    with pytest.raises(ReplyError, match="truncated"):
        parse_reply('Answer: {"entities": [{"text": "A", "type": "PER"}, {"text": "B", "ty')


def test_truncated_list():
    with pytest.raises(ReplyError, match="truncated"):
        parse_reply('[{"text": "A", "type": "PER"}, {"text": "B"')


def test_nested_braces_inside_strings():
    assert texts(parse_reply(BRACES_IN_STRINGS)) == [("a {b} c", "MISC"), ("x}y", "MISC")]


def test_raw_line_break_inside_a_string():
    assert parse_reply('{"entities": [{"text": "New\nYork", "type": "LOC"}]}')["entities"][0]["text"] == "New\nYork"


@pytest.mark.parametrize("reply", ["", "   \n\t", None])
def test_empty_reply(reply):
    with pytest.raises(ReplyError, match="empty answer"):
        parse_reply(reply)


def test_nothing_after_the_reasoning():
    with pytest.raises(ReplyError, match="no answer after the reasoning block"):
        parse_reply("<think>all thought, no answer</think>\n")


def test_top_level_list_is_an_error():
    with pytest.raises(ReplyError, match="a JSON list where an object is wanted"):
        parse_reply('[{"text": "Paris", "type": "LOC"}]')


def test_list_in_prose_before_the_object_is_skipped():
    reply = 'Types considered: ["PER", "LOC"]. Tagged [Paris]LOC.\n{"entities": [{"text": "Paris", "type": "LOC"}]}'
    assert texts(parse_reply(reply)) == [("Paris", "LOC")]


def test_no_json_at_all():
    with pytest.raises(ReplyError, match="no JSON object in the answer: 'I could not find any entities.'"):
        parse_reply("I could not find any entities.")


def test_invalid_json_object_says_why():
    with pytest.raises(ReplyError, match="invalid JSON") as err:
        parse_reply("{entities: [Paris]}")
    assert "{entities: [Paris]}" in str(err.value)


def test_error_quotes_only_a_bit_of_a_long_reply():
    reply = "no json here " * 200
    with pytest.raises(ReplyError) as err:
        parse_reply(reply)
    assert len(str(err.value)) < 150


def test_reply_objects_lists_all_top_level_objects_in_order():
    assert reply_objects('{"a": 1} and {"b": {"c": 2}}') == [{"a": 1}, {"b": {"c": 2}}]


# ------------------------------------------------------------------ validation and the re-ask


def test_validate_reply_accepts_a_fitting_object():
    parsed, error = validate_reply(parse_reply(QWEN3_THINK), Entities)
    assert error == ""
    assert isinstance(parsed, Entities)
    assert [(e.text, e.type.value) for e in parsed.entities] == [("Angela Merkel", "PER"), ("Berlin", "LOC")]


def test_validate_reply_lists_errors_compactly():
    parsed, error = validate_reply({"entities": [{"text": "Paris", "type": "CITY"}, {"type": "PER"}]}, Entities)
    assert parsed is None
    assert "entities[0].type" in error and '(got "CITY")' in error
    assert "entities[1].text: required" in error
    assert "\n" not in error


def test_validate_reply_counts_errors_beyond_the_listed_ones():
    data = {"entities": [{"text": "x", "type": "BAD"} for _ in range(10)]}
    _, error = validate_reply(data, Entities)
    assert "and 4 more" in error
    assert len(error) < 1000


def test_read_reply_takes_the_first_object_that_fits():
    reply = 'Format: {"entities": "list"}\nAnswer: {"entities": [{"text": "Oslo", "type": "LOC"}]}'
    parsed, error = read_reply(reply, Entities)
    assert error == "" and parsed is not None and parsed.entities[0].text == "Oslo"


def test_read_reply_reports_the_first_objects_error_when_none_fits():
    parsed, error = read_reply('{"entities": [{"text": "Oslo", "type": "TOWN"}]} {"x": 1}', Entities)
    assert parsed is None and "entities[0].type" in error


def test_read_reply_reports_parse_errors():
    parsed, error = read_reply(TRUNCATED_MID_STRING, Entities)
    assert parsed is None and error.startswith("answer truncated (unbalanced JSON)")
    parsed, error = read_reply(GPT_OSS_PLAIN, Entities)
    assert error == "" and parsed is not None


def test_reask_message_quotes_the_error_and_asks_for_json_only():
    _, error = read_reply('{"entities": [{"text": "Oslo", "type": "TOWN"}]}', Entities)
    message = reask_message(error)
    assert error in message
    assert "only the JSON object" in message
    assert len(message) < len(error) + 250
