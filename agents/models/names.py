"""File-name safety: an annotator's name as a file name that no other name maps to."""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_name"]

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9.:-]+")
_MAX_STEM = 80


def safe_name(name: str) -> str:
    """A file-name-safe, deterministic and (practically) injective form of an annotator name.

    Colons become underscores ("ollama:qwen3:14b" -> "ollama_qwen3_14b"). That alone is
    reversible for names made only of letters, digits, '.', '-' and ':'; any other name
    (underscores, slashes, spaces, very long, or starting with '.') gets an 8-hex-digit hash of
    the full name appended, so two different names cannot share a file.
    """
    stem = _SAFE_CHARS.sub("_", name)
    reversible = bool(_PLAIN_NAME.fullmatch(name)) and not name.startswith(".") and len(stem) <= _MAX_STEM
    if reversible:
        return stem
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    stem = stem[:_MAX_STEM].lstrip(".") or "model"
    return f"{stem}-{digest}"
