"""Real providers, real faults: `diziner refine` against loopback OpenAI-compatible and Ollama servers of our own.

Checked from outside the code: exit codes and messages, the run directory, and each server's own request log
(usage equals the log; a cached rerun sends nothing; a dripping or silent server is given up on in time).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agents.annotator import annotate_document
from agents.models import ModelHandle, chat_model, parse_model_spec
from agents.models.errors import ModelUnavailable
from agents.models.preflight import PROBE_PROMPT, forget_checks
from cli.main import main
from state.models import Document, EntityType, TaskConfiguration
from tests.scripted import write_pool
from tests.servers import FaultSchedule, capitalised_entities, capitalised_responder, openai_compat, usage_totals
from tests.servers import ollama as ollama_servers

openai_server = openai_compat.openai_server
ollama_server = ollama_servers.ollama_server

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tasks" / "crossner_politics.yaml"
TEXTS = [
    "Barack Obama met Angela Merkel in Berlin .",
    "The Labour Party won the 1997 election .",
    "Paris is the capital of France .",
    "Nicolas Sarkozy led the UMP .",
    "Boris Johnson spoke in London .",
    "Helmut Kohl visited Moscow in 1990 .",
]
MODELS = ("m-a", "m-b", "m-c", "m-sup")
CHAT = openai_compat.CHAT


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.jsonl", TEXTS)


def refine(out: Path, pool: Path, *extra: str, provider: str = "openai", loops: int = 2) -> list[str]:
    names = ",".join(f"{provider}:{m}" for m in MODELS[:3])
    return ["refine", "--task", str(TASK), "--docs", str(pool), "--out", str(out), "--annotators", names,
            "--supervisor", f"{provider}:{MODELS[3]}", "--max-loops", str(loops), "--pilot-size", "3",
            "--min-gain", "0", "--patience", "5", *extra]


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in ("run.json", "summary.json", ".lock", "report.html")
            and "checkpoints" not in p.name}


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch, openai_server):
    """A started loopback server the openai provider is pointed at, with a dummy key."""

    def start(respond=capitalised_entities, **options):
        server = openai_server(respond, models=MODELS, **options)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
        return server

    return start


def test_usage_equals_the_servers_request_log_under_faults(tmp_path, pool, openai_env, capsys):
    # per body: each request's own fault sequence, whatever order concurrent requests arrive in
    faults = FaultSchedule.chance({"500": 0.12, "drop": 0.08, "bad-json": 0.08, "think+fence": 0.1}, seed=21, per_body=True)
    server = openai_env(schedule=faults)
    out = tmp_path / "run"
    assert main(refine(out, pool, "--no-cache")) == 0, capsys.readouterr().err
    log = server.requests(CHAT)
    outcomes = {r.outcome for r in log}
    assert {"500", "drop", "bad-json"} <= outcomes  # the faults really happened
    summary = json.loads((out / "summary.json").read_text())
    usage = summary["usage"]
    served = usage_totals(log)
    assert usage["calls"] == len(log)  # every request sent, failed ones and preflight included
    assert (usage["input_tokens"], usage["output_tokens"]) == (served["prompt_tokens"], served["completion_tokens"])
    for m in MODELS:
        assert usage["by_model"][f"openai:{m}"]["calls"] == len([r for r in log if r.model == m])
    assert summary["selection"] is not None and summary["status"] == "finished"


def test_a_cached_rerun_contacts_no_server_and_writes_the_same_files(tmp_path, pool, openai_env, capsys):
    server = openai_env()
    assert main(refine(tmp_path / "first", pool)) == 0, capsys.readouterr().err
    sent = len(server.log)
    forget_checks()  # a new process would check again: only a call the cache cannot answer may trigger it
    assert main(refine(tmp_path / "again", pool)) == 0
    assert len(server.log) == sent  # not one request, not even a model list or a preflight call
    assert run_files(tmp_path / "again") == run_files(tmp_path / "first")
    first = json.loads((tmp_path / "first" / "summary.json").read_text())["usage"]
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["usage"]
    assert again["calls"] == 0 and again["from_cache"]["calls"] == first["calls"] - len(MODELS)  # preflight not cached
    probes = [r for r in server.requests(CHAT) if r.body["messages"][0]["content"] == PROBE_PROMPT]
    assert len(probes) == len(MODELS)
    assert again["from_cache"]["output_tokens"] == first["output_tokens"] - sum(r.usage["completion_tokens"] for r in probes)


def test_an_unreachable_server_stops_the_run_and_resume_continues(tmp_path, pool, openai_env, openai_server, capsys):
    probe = openai_env()
    port = probe.port
    probe.stop()
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main(refine(out, pool, "--timeout", "5")) == 1
    err = capsys.readouterr().err
    assert "'openai:m-a'" in err or "'openai:m-b'" in err or "'openai:m-c'" in err
    assert "cannot be reached" in err and "--resume" in err
    assert time.perf_counter() - started < 20
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    assert summary.get("status") != "finished" and (out / "run.json").is_file()
    openai_server(capitalised_entities, models=MODELS, port=port)  # the server is back
    forget_checks()
    assert main(["refine", "--resume", str(out), "--timeout", "120"]) == 0  # call options may change on resume
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_a_missing_key_is_a_configuration_error_named_and_resumable(tmp_path, pool, openai_env, monkeypatch, capsys):
    server = openai_env()
    monkeypatch.delenv("OPENAI_API_KEY")
    out = tmp_path / "run"
    assert main(refine(out, pool)) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "openai:m-" in err and "--resume" in err
    assert not server.requests(CHAT)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    assert main(["refine", "--resume", str(out)]) == 0


def test_an_unknown_model_is_named_before_any_annotation(tmp_path, pool, openai_env, capsys):
    server = openai_env()
    args = refine(tmp_path / "run", pool)
    args[args.index("--annotators") + 1] = "openai:m-a,openai:m-b,openai:nope"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'openai:nope'" in err and "does not serve 'nope'" in err and "m-a" in err
    assert all(r.model != "nope" for r in server.requests(CHAT))


def test_a_rejected_key_is_a_configuration_error(tmp_path, pool, openai_env, monkeypatch, capsys):
    openai_env(api_key="sk-right")
    assert main(refine(tmp_path / "run", pool)) == 2
    assert "refused the key" in capsys.readouterr().err


def _configuration() -> TaskConfiguration:
    return TaskConfiguration(schema=[EntityType(name="PER", definition="a person")], goal="Find people.")


@pytest.mark.parametrize("fault", ["drip:0.2", "silent"])
def test_a_dripping_or_silent_server_is_given_up_on_within_the_deadline(openai_env, fault):
    server = openai_env(schedule=FaultSchedule.sequence_of("ok", then=fault))  # the preflight call, then the fault
    spec = parse_model_spec("openai:m-a", timeout=1.5, max_retries=5)
    doc = Document(id="d", text="Barack Obama spoke .")
    started = time.perf_counter()
    out, usage = asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(), doc, 1))
    elapsed = time.perf_counter() - started
    assert out.status == "failed" and out.error_kind == "timeout" and "1.5 s deadline" in out.reason
    assert elapsed < 1.5 + 1.0  # the deadline bounds the whole call, retries included
    assert usage.calls == len(server.requests(CHAT))


def test_a_model_that_stops_answering_mid_run_stops_the_run(tmp_path, pool, openai_env, capsys):
    # m-c answers its preflight and round 1, then goes silent: round 2's three calls all time out
    server = openai_env()
    out = tmp_path / "run"
    args = refine(out, pool, "--timeout", "8", loops=2)  # generous: only the silent calls may time out
    real = server.respond

    def respond(body):
        if body.get("model") == "m-c" and len([r for r in server.requests(CHAT) if r.model == "m-c"]) > 4:
            from tests.servers import Fault

            return Fault.parse("silent")
        return real(body)

    server.respond = respond
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "'openai:m-c' cannot be reached" in err and "every call of round 2" in err


def test_a_supervisor_that_goes_away_mid_run_stops_it_and_resume_asks_no_annotator_again(tmp_path, pool, openai_env,
                                                                                         capsys):
    # the supervisor answers its preflight, then every connection to it drops (retried, then given up on)
    server = openai_env()
    out = tmp_path / "run"
    real = server.respond
    down = {"m-sup": True}

    def respond(body):
        if body.get("model") == "m-sup" and down["m-sup"] and body["messages"][0]["content"] != PROBE_PROMPT:
            from tests.servers import Fault

            return Fault.parse("drop")
        return real(body)

    server.respond = respond
    assert main(refine(out, pool, "--timeout", "8", loops=2)) == 1
    err = capsys.readouterr().err
    assert "'openai:m-sup'" in err and "--resume" in err and "Traceback" not in err, err
    annotated = [r for r in server.requests(CHAT) if r.model != "m-sup" and r.body["messages"][0]["content"] != PROBE_PROMPT]
    assert len(annotated) == 9  # round 1: three annotators, three documents each
    assert (out / "round-1" / "annotations.jsonl").is_file()
    down["m-sup"] = False  # it is back
    server.log.clear()
    forget_checks()
    assert main(["refine", "--resume", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    again = [r for r in server.requests(CHAT) if r.body["messages"][0]["content"] != PROBE_PROMPT]
    assert len([r for r in again if r.model != "m-sup"]) == 9  # round 2 only: round 1 is never asked again


# ---------------------------------------------------------------- Ollama


@pytest.fixture
def ollama_env(monkeypatch: pytest.MonkeyPatch, ollama_server):
    def start(respond=capitalised_entities, **options):
        server = ollama_server(respond, models=tuple(f"{m}:latest" for m in MODELS), **options)
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        return server

    return start


def test_ollama_wire_path_structured_output_usage_and_preflight(tmp_path, pool, ollama_env, capsys):
    server = ollama_env(schedule=FaultSchedule.sequence_of("ok", "500", "ok", "think"))
    out = tmp_path / "run"
    assert main(refine(out, pool, "--no-cache", provider="ollama")) == 0, capsys.readouterr().err
    log = server.requests(ollama_servers.CHAT)
    assert {"500"} <= {r.outcome for r in log}
    assert all(isinstance(r.body.get("format"), (dict, type(None))) for r in log)
    assert any(isinstance(r.body.get("format"), dict) and r.body["format"].get("title") == "Entities" for r in log)
    assert server.requests(ollama_servers.TAGS)  # the model list was checked
    usage = json.loads((out / "summary.json").read_text())["usage"]
    served = usage_totals(log)
    assert usage["calls"] == len(log)
    assert (usage["input_tokens"], usage["output_tokens"]) == (served["prompt_tokens"], served["completion_tokens"])
    annotations = (out / "round-1" / "annotations.jsonl").read_text()
    assert '"type": ' in annotations  # spans came back through Ollama's structured output


def test_ollama_model_not_pulled_is_named(tmp_path, pool, ollama_env, capsys):
    ollama_env()
    args = refine(tmp_path / "run", pool, provider="ollama")
    args[args.index("--annotators") + 1] = "ollama:m-a,ollama:m-b,ollama:qwen3:14b"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'ollama:qwen3:14b'" in err and "ollama pull qwen3:14b" in err


def test_ollama_reasoning_output_is_read(ollama_env):
    server = ollama_env(thinking_models=("m-a:latest",))
    spec = parse_model_spec("ollama:m-a")
    doc = Document(id="d", text="Barack Obama spoke .")
    out, usage = asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(), doc, 1))
    assert out.status == "ok" and [(s.start, s.end) for s in out.spans] == [(0, 6), (7, 12)]
    assert usage.calls == len(server.requests(ollama_servers.CHAT))


def test_unreachable_is_raised_by_the_check_not_swallowed(openai_env):
    server = openai_env()
    port_url = server.base_url
    server.stop()
    spec = parse_model_spec("openai:m-a", base_url=port_url, timeout=3)
    with pytest.raises(ModelUnavailable, match="'openai:m-a' cannot be reached"):
        asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(),
                                      Document(id="d", text="x ."), 1))


def test_a_429_is_retried_after_the_wait_the_server_asks_for(openai_env):
    server = openai_env(schedule=FaultSchedule.sequence_of("ok", "429:1"))  # the preflight call, then a 429
    spec = parse_model_spec("openai:m-a", timeout=30)
    doc = Document(id="d", text="Barack Obama spoke .")
    started = time.perf_counter()
    out, usage = asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(), doc, 1))
    assert out.status == "ok" and time.perf_counter() - started >= 1.0  # Retry-After: 1 was honoured
    assert [r.outcome for r in server.requests(CHAT)] == ["ok", "429", "ok"] and usage.calls == 3


def test_a_prompt_too_long_for_the_context_is_not_retried(openai_env):
    server = openai_env(context_window=20)
    spec = parse_model_spec("openai:m-a", timeout=30)
    doc = Document(id="d", text="Barack Obama spoke . " * 50)
    out, usage = asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(), doc, 1))
    assert out.status == "failed" and out.error_kind == "context"
    assert [r.outcome for r in server.requests(CHAT)][-1] == "context-length"
    assert len([r for r in server.requests(CHAT) if r.outcome == "context-length"]) == 1  # never retried


@pytest.mark.parametrize(("status", "kind"), [("404", "not_found"), ("422", "bad_request"), ("403", "auth")])
def test_a_client_error_during_a_call_is_not_retried(openai_env, status, kind):
    server = openai_env(schedule=FaultSchedule.sequence_of("ok", status))  # the preflight call, then the error
    spec = parse_model_spec("openai:m-a", timeout=30)
    doc = Document(id="d", text="Barack Obama spoke .")
    out, usage = asyncio.run(annotate_document(ModelHandle(chat_model, spec), spec, _configuration(), doc, 1))
    assert out.status == "failed" and out.error_kind == kind
    assert [r.outcome for r in server.requests(CHAT)] == ["ok", status] and usage.calls == 2  # asked once, counted


# ---------------------------------------------------------------- output modes


def run_file(path: Path, provider: str, output: str) -> Path:
    """A run file giving every model of `refine` (three annotators, the supervisor) the output mode `output`."""
    entry = lambda m: f"  - {{name: '{provider}:{m}', output: {output}}}\n"  # noqa: E731
    path.write_text("annotators:\n" + "".join(entry(m) for m in MODELS[:3])
                    + f"supervisor: {{name: '{provider}:{MODELS[3]}', output: {output}}}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_run_in_tool_call_mode_writes_what_structured_output_writes(tmp_path, pool, openai_env, ollama_env, capsys,
                                                                        provider):
    # every property answered: a strict schema marks all required, a tool's schema only those without a default
    respond = capitalised_responder(every_property=True)
    server = openai_env(respond) if provider == "openai" else ollama_env(respond)
    chat = CHAT if provider == "openai" else ollama_servers.CHAT
    runs = {}
    for output in ("json_schema", "tools"):
        out = tmp_path / output
        args = refine(out, pool, "--no-cache", provider=provider)
        at = args.index("--annotators")
        del args[at:at + 2]
        del args[args.index("--supervisor"):args.index("--supervisor") + 2]
        args += ["--config", str(run_file(tmp_path / f"{output}.yaml", provider, output))]
        server.log.clear()
        assert main(args) == 0, capsys.readouterr().err
        runs[output] = run_files(out)
        log = [r for r in server.requests(chat) if r.body.get("messages", [{}])[0].get("content") != "ping"]
        if output == "tools":  # every call but the preflight's carried the answer's schema as its one tool
            asked = [r for r in log if r.body.get("tools")]
            assert len(asked) >= 20 and all(len(r.body["tools"]) == 1 for r in asked)
            assert not any(r.body.get("response_format") or isinstance(r.body.get("format"), dict) for r in log)
    runs["tools"].pop("run-config.yaml")
    runs["json_schema"].pop("run-config.yaml")
    assert runs["tools"] == runs["json_schema"]
