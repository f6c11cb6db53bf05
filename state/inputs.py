"""Reading user files into typed models: one YAML loader and one validation-error formatter for every input.

Every problem becomes an `InputError` naming the file, the line (where YAML tells it) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from state.errors import InputError

__all__ = ["describe_validation_error", "load_yaml", "validate_yaml"]

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(
    exc: ValidationError, prefix: str = "", names: Mapping[str, str] | None = None, *, limit: int | None = None,
    show_input: bool = False,
) -> str:
    """Pydantic's errors as one readable clause each: 'annotators[1].temperature: Input should be ...'.

    `prefix` goes before field errors; `names` renames top-level fields (a context field to its command-line flag);
    `limit` lists at most that many ('and N more'); `show_input` quotes each offending value ('(got "CITY")').
    """
    import json

    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:limit] if limit else errors:
        loc = list(err.get("loc", ()))
        if names and loc and isinstance(loc[0], str) and loc[0] in names:
            loc[0] = names[loc[0]]
        field = ""
        for part in loc:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif err.get("type") == "missing":
            msg = "required"
        msg = msg.removeprefix("Value error, ")
        if show_input and err.get("type") != "missing":
            got = json.dumps(err.get("input"), ensure_ascii=False, default=str)
            msg += f" (got {got if len(got) <= 40 else got[:39] + '…'})"
        parts.append(f"{prefix}{field}: {msg}" if field else msg)
    if limit and len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def load_yaml(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML file and its node tree (for line numbers); duplicate keys, non-UTF-8 text and YAML
    errors are InputErrors naming the file and line."""
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"cannot read the {what}: file not found", path=where) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason})", path=where) from None
    except OSError as exc:
        raise InputError(f"cannot read the {what}: {exc.strerror or exc}", path=where) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"the {what} is nested too deeply", path=where) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", path=where, line=line) from None
    if root is not None:
        _reject_duplicate_keys(root, where)
    return data, root


def validate_yaml(model: type[M], data: Any, root: yaml.Node | None, path: str | Path) -> M:
    """`model` validated from YAML data; the error names the line of the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        line = _line_of(root, exc.errors()[0]["loc"]) if root is not None else None
        raise InputError(describe_validation_error(exc), path=str(path), line=line) from None


def _reject_duplicate_keys(node: yaml.Node, where: str) -> None:
    """PyYAML keeps the last of duplicate keys silently; two 'supervisor's (or two 'name's) are an error."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise InputError(f"duplicate key {key.value!r}", path=where, line=key.start_mark.line + 1)
                seen.add(key.value)
            _reject_duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, where)


def _line_of(root: yaml.Node, loc: Iterable[Any]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (as deep as it resolves)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if match is None:  # a missing key: point at the mapping
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1
