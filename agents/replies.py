"""Reading the JSON object a model wrote in free text, as local models actually write it.

A reply may open with a reasoning block (``<think>...</think>``, or an analysis channel before a final one), wrap
the object in a Markdown code fence, surround it with prose, use Python-style single quotes or leave a trailing
comma. `parse_reply` finds the object in all of these and raises `ReplyError` with a short, quoted reason when
there is none (empty reply, reply cut at the token cap, a list where an object is wanted). `read_reply` also
validates it against a Pydantic model and returns a compact error text that `reask_message` quotes in one
re-ask. Pure functions: no model is called here.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from state.inputs import describe_validation_error

EXCERPT_CHARS = 70  # how much of a reply an error message quotes
MAX_LISTED_ERRORS = 6  # validation errors listed in an error text; the rest are counted

_THINK_BLOCK = re.compile(r"<\s*(think|thinking)\b[^>]*>.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<\s*(?:think|thinking)\b[^>]*>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"<\s*/\s*(?:think|thinking)\s*>", re.IGNORECASE)
# Channel-tagged replies: reasoning in an "analysis" channel, the answer in the "final" one. Rendered either with
# its special tokens or, when a server strips them, as plain words ("analysis...assistantfinal{...}").
_FINAL_CHANNEL = re.compile(r"<\|channel\|>\s*final\s*<\|message\|>|assistantfinal", re.IGNORECASE)
_ANALYSIS_CHANNEL = re.compile(r"<\|channel\|>\s*analysis\s*<\|message\|>", re.IGNORECASE)
_SPECIAL_TOKEN = re.compile(r"<\|(?:end|return|call|start|im_end|eot_id)\|>", re.IGNORECASE)
_CODE_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_CLOSER_AHEAD = re.compile(r"\s*[}\]]")
_PY_CONSTANTS = {"true": "True", "false": "False", "null": "None"}


class ReplyError(ValueError):
    """A model's reply holds no usable JSON object; the message says why and quotes a bit of the reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _clip(text: str, limit: int) -> str:
    """`text` with whitespace collapsed, its head and tail kept when it is longer than `limit`."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        tail = limit // 3
        flat = f"{flat[: limit - tail - 1]}…{flat[-tail:]}"
    return flat


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A short quotation of `text` for an error message (head and tail kept when it is long)."""
    return repr(_clip(text, limit))


def answer_text(reply: str) -> str:
    """The reply without its reasoning: think blocks removed, only the final channel kept.

    Raises `ReplyError` when the reply ends inside a reasoning block (cut at the token cap while thinking)."""
    text = reply
    finals = list(_FINAL_CHANNEL.finditer(text))
    if finals:
        text = text[finals[-1].end() :]
    elif _ANALYSIS_CHANNEL.search(text):
        raise ReplyError(f"answer cut inside a reasoning block: {excerpt(reply)}")
    text = _SPECIAL_TOKEN.sub("", text)
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:  # the opening tag was part of the prompt's chat template: everything before the close is reasoning
        text = text[closes[-1].end() :]
    if _THINK_OPEN.search(text):
        raise ReplyError(f"answer cut inside a reasoning block: {excerpt(reply)}")
    return text


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at `start`, skipping brackets inside quoted strings (double
    or single quotes, with backslash escapes); None when the text ends first."""
    closer = {"{": "}", "[": "]"}
    stack: list[str] = []
    quote: str | None = None
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in closer:
            stack.append(closer[ch])
        elif ch in "}]":  # a bracket of the wrong kind still closes one level; the candidate then fails to parse
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return None


def _outside_strings(text: str) -> Iterator[tuple[int, str, bool]]:
    """(index, character, inside a quoted string) for every character of `text`."""
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            yield i, ch, True
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        else:
            if ch in "\"'":
                quote = ch
                yield i, ch, True
            else:
                yield i, ch, False


def _repair(text: str) -> str:
    """Drop trailing commas before a closing bracket (outside strings)."""
    out: list[str] = []
    for i, ch, quoted in _outside_strings(text):
        if not quoted and ch == "," and _CLOSER_AHEAD.match(text, i + 1):
            continue
        out.append(ch)
    return "".join(out)


def _pythonic(text: str) -> str:
    """JSON's true/false/null as Python's constants (outside strings), for a reply mixing both styles."""
    out: list[str] = []
    word: list[str] = []

    def flush() -> None:
        token = "".join(word)
        out.append(_PY_CONSTANTS.get(token, token))
        word.clear()

    for _, ch, quoted in _outside_strings(text):
        if not quoted and ch.isalnum():
            word.append(ch)
            continue
        flush()
        out.append(ch)
    flush()
    return "".join(out)


def _json_typed(value: Any) -> bool:
    """Whether `value` consists only of JSON types (string keys)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, list):
        return all(_json_typed(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_typed(v) for k, v in value.items())
    return False


_DECODER = json.JSONDecoder(strict=False)  # local models put raw line breaks inside strings


def _load(candidate: str) -> tuple[Any, str]:
    """The value written in `candidate` (JSON, JSON with trailing commas, or a Python literal of JSON types), or
    (None, why it is not one)."""
    try:
        return _DECODER.decode(candidate), ""
    except json.JSONDecodeError as exc:
        first_error = f"{exc.msg} at character {exc.pos}"
    repaired = _repair(candidate)
    try:
        return _DECODER.decode(repaired), ""
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(_pythonic(repaired))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, first_error
    if not _json_typed(value):  # a set, a tuple, bytes...: not something JSON could have said
        return None, first_error
    return value, ""


@dataclass
class _Scan:
    objects: list[tuple[int, dict[str, Any]]]  # (start, object) in reply order
    lists: list[str]  # top-level JSON lists met
    invalid: list[tuple[str, str]]  # (candidate, error) for balanced objects that did not parse
    truncated: str | None  # the unbalanced tail, when the reply ended inside an object or list


def _scan(text: str) -> _Scan:
    """Every top-level bracketed value of `text`, left to right."""
    scan = _Scan([], [], [], None)
    i = 0
    while True:
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p >= 0]
        if not starts:
            return scan
        start = min(starts)
        end = _balanced_end(text, start)
        if end is None:
            if text[start] == "{" or text[start + 1 :].lstrip()[:1] in ("{", "[", '"', "'"):
                scan.truncated = text[start:]
                return scan  # everything after an unbalanced bracket is inside it
            i = start + 1  # a stray "[" in prose
            continue
        candidate = text[start:end]
        value, error = _load(candidate)
        if isinstance(value, dict):
            scan.objects.append((start, value))
        elif isinstance(value, list):
            scan.lists.append(candidate)
        elif text[start] == "{":
            scan.invalid.append((candidate, error))
        i = end


def reply_objects(reply: str | None) -> list[dict[str, Any]]:
    """Every top-level JSON object of a model's reply, those inside a Markdown code fence first.

    Raises `ReplyError` when there is none, saying why."""
    if reply is None or not reply.strip():
        raise ReplyError("empty answer")
    text = answer_text(reply)
    if not text.strip():
        raise ReplyError(f"no answer after the reasoning block: {excerpt(reply)}")
    scan = _scan(text)
    if scan.objects:
        fenced = [(m.start(1), m.end(1)) for m in _CODE_FENCE.finditer(text)]
        ordered = sorted(scan.objects, key=lambda item: not any(a <= item[0] < b for a, b in fenced))  # stable
        return [obj for _, obj in ordered]
    if scan.truncated is not None:
        raise ReplyError(f"answer truncated (unbalanced JSON): {excerpt(scan.truncated)}")
    if scan.lists:
        raise ReplyError(f"a JSON list where an object is wanted: {excerpt(scan.lists[0])}")
    if scan.invalid:
        candidate, error = scan.invalid[0]
        raise ReplyError(f"invalid JSON ({error}): {excerpt(candidate)}")
    raise ReplyError(f"no JSON object in the answer: {excerpt(text)}")


def parse_reply(reply: str | None) -> dict[str, Any]:
    """The JSON object a model sent (the first one, preferring a fenced one); `ReplyError` when there is none."""
    return reply_objects(reply)[0]


def validation_errors(exc: ValidationError) -> str:
    """A compact one-line list of a validation's errors for the re-ask: 'entities[0].type: <message> (got "X"); ...'."""
    return describe_validation_error(exc, limit=MAX_LISTED_ERRORS, show_input=True)


def validate_reply(data: dict[str, Any], schema: type[BaseModel]) -> tuple[BaseModel | None, str]:
    """(`schema` instance, "") when `data` fits the schema, else (None, a compact list of what is wrong)."""
    try:
        return schema.model_validate(data), ""
    except ValidationError as exc:
        return None, f"the JSON does not fit the required structure: {validation_errors(exc)}"


def read_reply(reply: str | None, schema: type[BaseModel]) -> tuple[BaseModel | None, str]:
    """Parse and validate a model's reply: the first object in it that fits `schema`, or (None, why not).

    When several objects fit none, the error is the first one's."""
    try:
        objects = reply_objects(reply)
    except ReplyError as exc:
        return None, exc.reason
    first_error = ""
    for data in objects:
        parsed, error = validate_reply(data, schema)
        if parsed is not None:
            return parsed, ""
        first_error = first_error or error
    return None, first_error


def reask_message(error_text: str) -> str:
    """The one follow-up message sent after an invalid answer: what was wrong, and a request for the JSON only."""
    return (
        f"Your previous answer could not be used: {error_text.strip()}\n"
        "Reply again with only the JSON object in the required structure: no reasoning, no Markdown, no other text."
    )
