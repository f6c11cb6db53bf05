"""The embedded models for real: servers, schema-constrained output, order-independence.

Short prompts and small output caps keep the file well under a minute on 2 cores. The tests
check structure and determinism, not annotation quality (the models are tiny).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agents.annotator import schema_for
from agents.models import SMALL_PROFILE, chat_model, embedded, parse_model_spec

pytestmark = pytest.mark.integration

ALIASES = tuple(embedded.EMBEDDED_MODELS)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


TYPES = ("PER", "ORG", "LOC")


INSTRUCTIONS = (
    "You label named entities. Types: PER (person), ORG (organisation), LOC (location). "
    "Answer with JSON: the entities that appear in the text, copied exactly."
)
SENTENCES = (
    "Angela Merkel met Emmanuel Macron in Paris.",
    "Apple opened a new office in Berlin.",
    "The United Nations held a summit in Geneva.",
)


def messages(alias: str, text: str) -> list[tuple[str, str]]:
    """One user turn, as every prompt of the product is (Gemma's template has no system role)."""
    return [("user", f"{INSTRUCTIONS}\n\nText: {text}")]


def health(base_url: str) -> int | None:
    root = base_url.removesuffix("/v1")
    try:
        with _DIRECT.open(root + "/health", timeout=5) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return None


def test_one_server_per_model_from_threads_and_asyncio() -> None:
    embedded.stop_all()  # start cold, so the threads race on the start itself
    barrier = threading.Barrier(2)
    urls: list[str] = []

    def start() -> None:
        barrier.wait()
        urls.append(embedded.ensure_server("smollm2"))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(urls) == 2 and urls[0] == urls[1]
    url = urls[0]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert health(url) == 200
    assert embedded.running_servers()["smollm2"] == url

    async def from_event_loop() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(embedded.ensure_server, "gemma3-270m") for _ in range(2)))

    gemma_urls = asyncio.run(from_event_loop())
    assert gemma_urls[0] == gemma_urls[1] != url
    assert set(embedded.running_servers()) == {"smollm2", "gemma3-270m"}

    # Stopping frees the port; a cached client notices and is rebuilt on a new server.
    spec = parse_model_spec("embedded:smollm2", max_tokens=4)
    stale = chat_model(spec)
    embedded.stop_all()
    assert health(url) is None and embedded.running_servers() == {}
    fresh = chat_model(spec)
    assert fresh is not stale
    assert str(fresh.openai_api_base) == embedded.running_servers()["smollm2"] != url
    assert fresh.invoke("Hi").content is not None


@pytest.mark.parametrize("alias", ALIASES)
def test_structured_output_validates(alias: str) -> None:
    """The product's annotator schema for the embedded models, with their default caps: a valid answer."""
    spec = parse_model_spec(f"embedded:{alias}")
    schema = schema_for(spec, TYPES)
    model = chat_model(spec).with_structured_output(schema, method="json_schema")
    for sentence in SENTENCES:
        result = model.invoke(messages(alias, sentence))
        assert isinstance(result, schema)
        assert len(result.entities) <= SMALL_PROFILE.max_entities and all(e.type.value in TYPES for e in result.entities)


@pytest.mark.parametrize("alias", ALIASES)
def test_outputs_do_not_depend_on_request_order(alias: str) -> None:
    model = chat_model(parse_model_spec(f"embedded:{alias}", max_tokens=24, temperature=0))

    def run(order: tuple[str, ...]) -> dict[str, str]:
        return {text: str(model.invoke(messages(alias, text)).content) for text in order}

    forward = run(SENTENCES)
    backward = run(tuple(reversed(SENTENCES)))
    assert forward == backward
    assert any(out.strip() for out in forward.values())


def test_cached_model_serves_several_event_loops() -> None:
    """The client is cached per process; each asyncio.run must still get working connections."""
    model = chat_model(parse_model_spec("embedded:smollm2", max_tokens=4, timeout=60, max_retries=0))

    async def two_calls() -> list[str]:
        replies = await asyncio.gather(model.ainvoke("Hi"), model.ainvoke("Hello"))
        return [str(r.content) for r in replies]

    first = asyncio.run(two_calls())
    second = asyncio.run(two_calls())
    assert first == second and all(first)


def test_gemma_file_is_assembled_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tmp_path / "diziner" / "models"
    folder.mkdir(parents=True)
    stale = folder / ".gemma-3-270m-q4_k_m.gguf.999.deadbeef.tmp"
    stale.write_bytes(b"left by a killed process")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    path = embedded.model_path("gemma3-270m")
    assert path.parent == folder and path.is_file()
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporaries left
    first = path.stat()
    again = embedded.model_path("gemma3-270m")
    assert again == path and again.stat().st_ino == first.st_ino and again.stat().st_mtime_ns == first.st_mtime_ns

    with path.open("r+b") as f:  # a truncated file (copied by hand, disk full) is replaced
        f.truncate(1000)
    repaired = embedded.model_path("gemma3-270m")
    assert repaired.stat().st_size == first.st_size


def test_openmp_threads_sleep_when_idle_and_environment_is_restored() -> None:
    """Spinning OpenMP threads made calls 30-100x slower on a shared 2-core machine."""
    code = (
        "import os\n"
        "from agents.models import embedded\n"
        "embedded._import_xllamacpp()\n"
        "print('left in environment:', os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints its settings when it loads
    root = Path(__file__).resolve().parents[1]
    run = [sys.executable, "-c", code]
    result = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, cwd=root)
    assert result.returncode == 0, result.stderr
    # Unset, libgomp also displays 'PASSIVE' but spins 300000 rounds: the spin count tells.
    assert "GOMP_SPINCOUNT = '0'" in result.stderr
    assert "left in environment: None" in result.stdout


@pytest.mark.integration
def test_two_models_started_concurrently_in_a_fresh_process():
    """Regression: two annotator branches starting their servers at once must not see a half-imported xllamacpp."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import threading\n"
        "from agents.models import parse_model_spec, chat_model\n"
        "errs = []\n"
        "def go(n):\n"
        "    try:\n"
        "        chat_model(parse_model_spec(n))\n"
        "    except Exception as e:\n"
        "        errs.append(repr(e))\n"
        "ts = [threading.Thread(target=go, args=(n,)) for n in ('embedded:smollm2', 'embedded:gemma3-270m')]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "assert not errs, errs\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
