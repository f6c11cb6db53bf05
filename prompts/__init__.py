"""Prompt templates (plain text, `string.Template` placeholders such as $goal), written for this project.

Documents are untrusted data: every template fences them and says so.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from string import Template

_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def template(name: str) -> Template:
    return Template((_DIR / f"{name}.md").read_text(encoding="utf-8"))


def render(name: str, **values: object) -> str:
    """Fill a template; a missing placeholder is a programming error (KeyError), not a silent blank."""
    return template(name).substitute({k: str(v) for k, v in values.items()})


def fence(text: str, label: str = "document") -> str:
    """Wrap untrusted text so that it cannot close the fence: any closing tag inside it is neutralised."""
    safe = text.replace(f"</{label}>", f"<\\/{label}>")
    return f"<{label}>\n{safe}\n</{label}>"
