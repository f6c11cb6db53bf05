"""What several test files share: where the shared benchmark data lives, and scripted chat models injected in
place of the real ones.

The shared data is the `shared/data/ner` folder beside the repository (override: DIZINER_SHARED_DATA). Tests that
need it fail when it is missing; they never skip, so `make test` cannot pass without having run them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.scripted import ScriptedModels

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIZINER_SHARED_DATA") or REPO.parent / "shared" / "data" / "ner").expanduser()


def require_shared(*parts: str) -> Path:
    """A path inside the shared data; fails the calling test (no skip) when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    assert path.exists(), f"shared data missing: {path} (set DIZINER_SHARED_DATA to the shared/data/ner folder)"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared NER benchmarks folder (fails the test when it is missing)."""
    return require_shared()


@pytest.fixture
def scripted_models(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str], Any]], ScriptedModels]:
    """`scripted_models(respond_for)` -> a ScriptedModels that the graph and the CLI use instead of real models
    (it replaces `agents.models.chat_model`, which they look up when they run) for the rest of the test."""
    import agents.models

    def install(respond_for: Callable[[str], Any]) -> ScriptedModels:
        models = ScriptedModels(respond_for)
        monkeypatch.setattr(agents.models, "chat_model", models)
        return models

    return install


@pytest.fixture(autouse=True)
def private_call_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own LLM-call cache directory (never the user's ~/.cache/diziner), every model is checked
    again before its first uncached call, and retries wait 10 ms instead of seconds."""
    import agents.structured
    from agents.models.preflight import forget_checks

    directory = tmp_path_factory.mktemp("call-cache")
    monkeypatch.setenv("DIZINER_CACHE_DIR", str(directory))
    monkeypatch.setattr(agents.structured, "BACKOFF_BASE_S", 0.01)  # retries keep their count, not their wait
    forget_checks()
    return directory
