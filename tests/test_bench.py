"""`diziner bench` in-process with scripted chat models (deterministic, no network), and the protocol's pure parts.

A synthetic benchmark (CoNLL train/dev/test written here) with three scripted annotators of different quality: `a`
types runs of capitalised words by a list of places (close to the gold), `b` tags single capitalised words with
alternating types (poor), `c` tags every run as a politician (half right).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import agents.annotator
from cli.main import main
from corpus.io import CorpusDocument, read_documents
from corpus.scoring import score
from evaluation import protocol
from tests.scripted import POLITICS_TASK, ScriptedModels, document_of, responder, tag_words

ANNOTATORS = ["openai:a", "openai:b", "openai:c"]
PLACES = {"Berlin", "Moscow", "London", "Paris", "Washington", "Ottawa", "Rome"}
RUN = r"[A-Z][a-z]+(?: [A-Z][a-z]+)*"


TRAIN = [
    "Barack Obama met Angela Merkel in Berlin .",
    "Helmut Kohl visited Moscow in 1990 .",
    "Boris Johnson spoke in London .",
    "voters in Paris cheered Nicolas Sarkozy .",
    "Tony Blair flew to Washington .",
]
DEV = [
    "Gordon Brown stayed in London .",
    "crowds in Moscow greeted Mikhail Gorbachev .",
    "Jacques Chirac returned to Paris .",
    "Olaf Scholz spoke in Berlin .",
]
TEST = [
    "Joe Biden visited Paris .",
    "Emmanuel Macron met Angela Merkel in Berlin .",
    "Theresa May left London .",
    "Vladimir Putin stayed in Moscow .",
    "protesters in Washington met Bernie Sanders .",
    "nothing happened here .",
]


def conll(sentences: list[str], extra_label: str | None = None) -> str:
    """Gold IOB2: capitalised runs, places as location, the rest politician (`extra_label`: the first sentence's)."""
    out = []
    for n, sent in enumerate(sentences):
        tokens = sent.split(" ")
        tags = ["O"] * len(tokens)
        for m in re.finditer(RUN, sent):
            first = sent[: m.start()].count(" ")
            width = m.group().count(" ") + 1
            label = "location" if m.group() in PLACES else "politician"
            if extra_label and n == 0:
                label = extra_label
            for i in range(width):
                tags[first + i] = ("B-" if i == 0 else "I-") + label
        out += [f"{t}\t{g}" for t, g in zip(tokens, tags, strict=True)] + [""]
    return "\n".join(out) + "\n"


def annotator(name: str, fail_all: bool = False):
    def annotate(prompt: str):
        doc = document_of(prompt)
        if fail_all:
            return RuntimeError("scripted failure")
        if name.endswith("a"):
            return {"entities": [{"text": r, "type": "LOCATION" if r in PLACES else "POLITICIAN"}
                                 for r in re.findall(RUN, doc)]}
        if name.endswith("b"):
            return tag_words(doc, "POLITICIAN", "LOCATION")
        return {"entities": [{"text": r, "type": "POLITICIAN"} for r in re.findall(RUN, doc)]}

    return annotate


ONLY_A = [{"annotator": "openai:a", "instructions": [{"text": "ONLY-A"}]}]
SUPERVISOR = {
    "Integration": {"goal": "GOAL-2", "common": [{"text": "RULE-1"}], "per_annotator": ONLY_A},
    "Organization": {"common": [{"text": "RULE-1", "priority": "high"}], "per_annotator": ONLY_A},
}


class Models(ScriptedModels):
    def __init__(self, fail_all: bool = False) -> None:
        super().__init__(lambda name: responder(annotator(name, fail_all), SUPERVISOR))

    def total_calls(self) -> int:
        return sum(len(m.calls) for m in self.by_name.values())


@pytest.fixture
def install(monkeypatch):
    import agents.models

    def put(models: Models) -> Models:
        monkeypatch.setattr(agents.models, "chat_model", models)
        return models

    return put


def write_benchmark(root: Path, name: str = "crossner_politics", *, test: bool = True, extra_label: str | None = None):
    """A task file and a data folder with train, dev and (optionally) test CoNLL files."""
    data = root / "data" / name
    data.mkdir(parents=True)
    (data / "train.txt").write_text(conll(TRAIN))
    (data / "dev.txt").write_text(conll(DEV))
    if test:
        (data / "test.txt").write_text(conll(TEST, extra_label))
    task = root / "tasks" / f"{name}.yaml"
    task.parent.mkdir(exist_ok=True)
    task.write_text(POLITICS_TASK.format(name=name))
    return task, data


def bench_args(task: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["bench", "--task", str(task), "--data", str(data), "--out", str(out), "--annotators", ",".join(ANNOTATORS),
            "--supervisor", "openai:sup", "--max-loops", "2", "--pilot-size", "3", "--min-gain", "0",
            "--patience", "5", *extra]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------- the whole protocol on one benchmark


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One bench with --ensemble and a 4-sentence test sample (run once for the module), its scripted models and
    its stderr."""
    import agents.models

    root = tmp_path_factory.mktemp("finished")
    task, data = write_benchmark(root)
    models = Models()
    out = root / "bench"
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setenv("DIZINER_CACHE_DIR", str(root / "call-cache"))  # never the user's cache (module scope: no autouse)
        mp.setattr(agents.models, "chat_model", models)
        assert main(bench_args(task, data, out, "--test-sample", "4", "--ensemble")) == 0
    return out, models, err.getvalue()


def test_bench_writes_every_file(finished):
    out, models, err = finished
    for name in ("bench.json", "pool.jsonl", "test-sample.jsonl", "metrics.json", "table.md", "run/summary.json",
                 "run/guideline.json", "predictions/selected.jsonl", "predictions/oracle.jsonl",
                 "predictions/ensemble.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    pool = jsonl(out / "pool.jsonl")
    assert [set(d) for d in pool] == [{"id", "text"}] * (len(TRAIN) + len(DEV))  # labels hidden
    assert [d["text"] for d in pool] == TRAIN + DEV
    assert len({d["id"] for d in pool}) == len(pool)
    sample = jsonl(out / "test-sample.jsonl")
    test_ids = [f"test-{i}" for i in range(1, len(TEST) + 1)]
    assert len(sample) == 4 and [d["id"] for d in sample] == [i for i in test_ids if i in {d["id"] for d in sample}]
    assert all(TEST[int(d["id"].split("-")[1]) - 1] == d["text"] and "entities" in d for d in sample)
    assert "diziner bench: crossner_politics:" in err
    # the loop never saw a test sentence or a gold tag: its prompts hold pool texts only
    loop_prompts = [p for name in ANNOTATORS for p in models.calls(name, "Entities")
                    if "<document>" in p and document_of(p) in TRAIN + DEV]
    assert loop_prompts and not [p for p in loop_prompts if "B-politician" in p or "politician\t" in p]


def test_metrics_rows_and_intervals(finished):
    out, models, _ = finished
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "run" / "summary.json").read_text())
    rows = metrics["configurations"]
    assert [r["name"] for r in rows] == ["baseline"] * 3 + ["selected", "oracle", "ensemble"]
    assert [r["annotator"] for r in rows[:3]] == ANNOTATORS and {r["round"] for r in rows[:3]} == {1}
    assert [r["predictions"] for r in rows[:3]] == [f"predictions/baseline-openai_{k}.jsonl" for k in "abc"]
    sel = summary["selection"]
    assert (rows[3]["round"], rows[3]["annotator"]) == (sel["round"], sel["annotator"])
    assert metrics["test_documents"] == 4
    for r in rows:
        m = r["micro"]
        for key in ("precision", "recall", "f1"):
            low, high = m[f"{key}_ci"]
            assert low <= m[key] <= high, (r["name"], key)
        assert set(r["per_type"]) == {"politician", "location"}
        for t in r["per_type"].values():
            assert t["f1_ci"][0] <= t["f1"] <= t["f1_ci"][1]
    # the scripted annotators' quality shows: a is exact on these sentences, b is not
    f1 = {r["annotator"]: r["micro"]["f1"] for r in rows[:3]}
    assert f1["openai:a"] == 1.0 and f1["openai:b"] < f1["openai:c"] < 1.0
    # every chat request the scripted models received is counted (loop and test), none answered by a cache
    assert metrics["model_calls"] == models.total_calls() and metrics["cache_hits"] == 0


def test_oracle_and_correlation_points(finished, tmp_path):
    out, _, _ = finished
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "run" / "summary.json").read_text())
    points = metrics["correlation"]["points"]
    assert [(p["round"], p["annotator"]) for p in points] == [(t, k) for t in (1, 2) for k in ANNOTATORS]
    for p in points:
        assert p["agreement"] == summary["rounds"][p["round"] - 1]["mean_agreement"][p["annotator"]]
    # pilot F1 recomputed here from the round's annotations and the gold of the data files
    gold = {}
    for split, sentences in (("train", TRAIN), ("dev", DEV)):
        path = tmp_path / f"{split}.conll"
        path.write_text(conll(sentences))
        gold.update({d.id: d for d in read_documents(path)[0]})
    back = {"POLITICIAN": "politician", "LOCATION": "location"}
    for p in points:
        records = jsonl(out / "run" / f"round-{p['round']}" / "annotations.jsonl")
        pred = [CorpusDocument(r["id"], r["text"], [(s["start"], s["end"], back[s["type"]]) for s in r["annotations"][p["annotator"]]])
                for r in records]
        assert p["pilot_f1"] == pytest.approx(score([gold[r["id"]] for r in records], pred)["f1"])
    oracle = next(r for r in metrics["configurations"] if r["name"] == "oracle")
    best = max(p["pilot_f1"] for p in points)
    assert oracle["pilot_f1"] == best and oracle["selectable_without_labels"] is False
    assert (oracle["round"], oracle["annotator"]) == next((p["round"], p["annotator"]) for p in points if p["pilot_f1"] == best)
    corr = metrics["correlation"]
    x = [p["agreement"] for p in points]
    y = [p["pilot_f1"] for p in points]
    assert corr["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert -1 <= corr["spearman"] <= 1
    table = (out / "table.md").read_text()
    assert "not selectable without labels" in table and "oracle †" in table
    assert "80.9" in table and "B2NER" in table and "Table 1" in table  # the paper's CrossNER-Politics figures
    assert "Pearson" in table


def test_evaluate_reproduces_every_row(finished, capsys):
    out, _, _ = finished
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["configurations"]:
        assert main(["evaluate", "--gold", str(out / "test-sample.jsonl"), "--pred", str(out / row["predictions"]),
                     "--json"]) == 0
        figures = json.loads(capsys.readouterr().out)
        for key in ("precision", "recall", "f1", "tp", "fp", "fn"):
            assert figures[key] == row["micro"][key], (row["name"], key)


def test_predictions_use_the_dataset_labels(finished):
    out, _, _ = finished
    labels = {e["type"] for d in jsonl(out / "predictions" / "baseline-openai_a.jsonl") for e in d["entities"]}
    assert labels == {"politician", "location"}


def test_ensemble_is_the_weighted_consensus_of_the_selected_round(finished):
    out, _, _ = finished
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "run" / "summary.json").read_text())
    ens = next(r for r in metrics["configurations"] if r["name"] == "ensemble")
    t = summary["selection"]["round"]
    assert ens["round"] == t and ens["weights"] == summary["rounds"][t - 1]["weights"]
    assert ens["annotators"] == ANNOTATORS
    # recomputed here from the member annotations of that round
    sample = {d["id"]: d for d in jsonl(out / "test-sample.jsonl")}
    members = {k: {d["id"]: [(s["start"], s["end"], s["type"]) for s in d["spans"]]
                   for d in jsonl(out / "annotations" / f"round-{t}" / f"openai_{k[-1]}.jsonl")} for k in ANNOTATORS}
    from disagreement.engine import weighted_consensus

    docs = [(i, sample[i]["text"], {k: members[k][i] for k in ANNOTATORS}) for i in sample]
    merged = weighted_consensus(docs, ens["weights"])
    back = {"POLITICIAN": "politician", "LOCATION": "location"}
    expected = {i: sorted((s, e, back[ty]) for s, e, ty in spans) for (i, _, _), spans in zip(docs, merged, strict=True)}
    got = {d["id"]: sorted((e["start"], e["end"], e["type"]) for e in d["entities"])
           for d in jsonl(out / "predictions" / "ensemble.jsonl")}
    assert got == expected


# ---------------------------------------------------------------- resume


def test_resume_after_a_crash_repeats_no_finished_annotation(tmp_path, install, monkeypatch, capsys):
    task, data = write_benchmark(tmp_path)
    install(Models())
    plain = tmp_path / "plain"
    assert main(bench_args(task, data, plain, "--test-sample", "100")) == 0
    err = capsys.readouterr().err
    assert "larger than the test split" in err and "whole split" in err  # not an error: the whole split is used
    assert json.loads((plain / "metrics.json").read_text())["test_documents"] == len(TEST)

    real = agents.annotator.run_annotator

    async def crashing(factory, spec, configuration, documents, round_, **kwargs):
        if spec.name == "openai:c" and kwargs.get("phase") == "test":
            raise RuntimeError("simulated crash")
        return await real(factory, spec, configuration, documents, round_, **kwargs)

    # each session its own call cache, so that the scripted models see every call a session makes
    monkeypatch.setenv("DIZINER_CACHE_DIR", str(tmp_path / "cache-1"))
    monkeypatch.setattr(agents.annotator, "run_annotator", crashing)
    first = install(Models())
    out = tmp_path / "bench"
    assert main(bench_args(task, data, out, "--test-sample", "100")) == 1
    assert "simulated crash" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    done = sorted(p.relative_to(out).as_posix() for p in (out / "annotations").rglob("*.jsonl"))
    assert done and not [d for d in done if d.endswith("openai_c.jsonl")]  # a and b finished theirs
    stamps = {d: (out / d).stat().st_mtime_ns for d in done}

    monkeypatch.setenv("DIZINER_CACHE_DIR", str(tmp_path / "cache-2"))
    monkeypatch.setattr(agents.annotator, "run_annotator", real)
    second = install(Models())
    assert main(["bench", "--out", str(out), "--resume"]) == 0  # the saved task, data and settings
    err = capsys.readouterr().err
    assert "already finished" in err
    # nothing of the loop, nothing of a or b again: only c's test annotations
    assert second.calls("openai:sup") == [] and second.calls("openai:a") == [] and second.calls("openai:b") == []
    c_jobs = len([p for p in (out / "annotations").rglob("openai_c.jsonl")])
    assert len(second.calls("openai:c", "Entities")) == c_jobs * len(TEST)
    assert {d: (out / d).stat().st_mtime_ns for d in done} == stamps
    for p in (plain / "predictions").iterdir():
        assert (out / "predictions" / p.name).read_bytes() == p.read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_calls"] == first.total_calls() + second.total_calls()
    # a finished bench: resumed again, no model is asked anything, the files stay
    monkeypatch.setenv("DIZINER_CACHE_DIR", str(tmp_path / "cache-3"))
    third = install(Models())
    before = (out / "metrics.json").read_bytes()
    assert main(["bench", "--out", str(out), "--resume"]) == 0
    assert third.by_name == {} and (out / "metrics.json").read_bytes() == before
    # a changed setting is refused on resume
    assert main(["bench", "--out", str(out), "--resume", "--test-sample", "3"]) == 2
    assert "--test-sample 3" in capsys.readouterr().err


def test_a_repeated_bench_is_answered_by_the_call_cache(tmp_path, install):
    task, data = write_benchmark(tmp_path)
    install(Models())
    args = bench_args(task, data, tmp_path / "one", "--test-sample", "3")
    assert main(args) == 0
    first = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert first["model_calls"] > 0
    again = install(Models())
    args[args.index("--out") + 1] = str(tmp_path / "two")
    assert main(args) == 0
    second = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert again.total_calls() == 0 and second["model_calls"] == 0
    detail = second["model_calls_detail"]
    assert detail["loop_cache_hits"] > 0 and detail["test_cache_hits"] > 0  # the loop's and the test phase's
    assert second["cache_hits"] == detail["loop_cache_hits"] + detail["test_cache_hits"]
    assert [r["micro"] for r in second["configurations"]] == [r["micro"] for r in first["configurations"]]


def test_a_loop_that_stops_unfinished_stops_the_bench_with_its_code(tmp_path, install, monkeypatch, capsys):
    import cli.refine

    task, data = write_benchmark(tmp_path)
    models = install(Models())
    monkeypatch.setattr(cli.refine, "run", lambda args: 3)  # e.g. a budget reached: resumable
    out = tmp_path / "bench"
    assert main(bench_args(task, data, out)) == 3
    assert "--resume" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and models.by_name == {}


def test_budget_covers_the_test_annotations_and_a_higher_one_continues(tmp_path, install, monkeypatch, capsys):
    task, data = write_benchmark(tmp_path)
    config = tmp_path / "run.yaml"
    price = "price: {input: 1000, output: 1000}"
    config.write_text("annotators:\n" + "".join(f"  - {{name: '{a}', {price}}}\n" for a in ANNOTATORS)
                      + f"supervisor: {{name: 'openai:sup', {price}}}\n")

    def args(out: Path, *extra: str) -> list[str]:
        argv = bench_args(task, data, out, "--config", str(config), "--test-sample", "4", "--no-cache", *extra)
        at = argv.index("--annotators")
        del argv[at:at + 4]  # the models come from the run file
        return argv

    install(Models())
    plain = tmp_path / "plain"
    assert main(args(plain)) == 0, capsys.readouterr().err
    loop_cost = json.loads((plain / "run" / "summary.json").read_text())["usage"]["cost_usd"]
    job_costs = []
    for usage_file in sorted((plain / "annotations").rglob("*.usage.json")):
        usage = json.loads(usage_file.read_text())["usage"]
        job_costs.append((usage["input_tokens"] + usage["output_tokens"]) * 1000 / 1e6)
    assert loop_cost > 0 and len(job_costs) >= 4 and min(job_costs) > 0

    first = install(Models())
    out = tmp_path / "bench"
    # the loop fits, and the test annotations of one configuration or two: each job is estimated before it starts
    assert main(args(out, "--budget", f"{loop_cost + 1.5 * max(job_costs):.6f}")) == 3
    err = capsys.readouterr().err
    assert "budget: $" in err and "stopped before the test annotations" in err and "--budget" in err
    assert not (out / "metrics.json").exists()
    done = sorted(p.relative_to(out) for p in (out / "annotations").rglob("*.jsonl"))
    assert 0 < len(done) < len(job_costs)
    spent = sum(json.loads((out / d).with_suffix(".usage.json").read_text())["usage"]["input_tokens"] for d in done)
    assert first.calls("openai:sup") and spent > 0  # the loop ran whole

    second = install(Models())
    assert main(["bench", "--out", str(out), "--resume", "--budget", "1000"]) == 0, capsys.readouterr().err
    assert second.calls("openai:sup") == []  # the loop is not asked again, nor any finished job
    assert len([c for a in ANNOTATORS for c in second.calls(a, "Entities")]) == 4 * (len(job_costs) - len(done))
    for p in (plain / "predictions").iterdir():
        assert (out / "predictions" / p.name).read_bytes() == p.read_bytes()


# ---------------------------------------------------------------- nothing selected


def test_nothing_selected(tmp_path, install):
    task, data = write_benchmark(tmp_path)
    install(Models(fail_all=True))
    out = tmp_path / "bench"
    assert main(bench_args(task, data, out, "--test-sample", "3", "--ensemble")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    selected = next(r for r in metrics["configurations"] if r["name"] == "selected")
    assert selected["annotator"] is None and selected["round"] is None
    assert (out / "predictions" / "selected.jsonl").read_text() == ""
    assert selected["micro"]["recall"] == 0.0 and selected["micro"]["fn"] > 0
    table = (out / "table.md").read_text()
    assert "selected no configuration" in table and "every gold entity counts as missed" in table
    assert not [r for r in metrics["configurations"] if r["name"] == "ensemble"]


# ---------------------------------------------------------------- --all


def test_all_runs_every_task_with_data(tmp_path, install, monkeypatch):
    import cli.bench

    tasks = tmp_path / "tasks"
    for name in ("crossner_politics", "broad_twitter"):
        write_benchmark(tmp_path, name)
    (tasks / "crossner_ai.yaml").write_text(POLITICS_TASK.format(name="crossner_ai"))  # no data: left out
    monkeypatch.setattr(cli.bench, "TASKS_DIR", tasks)
    models = install(Models())
    out = tmp_path / "all"
    args = ["bench", "--all", "--data-root", str(tmp_path / "data"), "--out", str(out), "--annotators",
            ",".join(ANNOTATORS), "--supervisor", "openai:sup", "--max-loops", "1", "--pilot-size", "3",
            "--test-sample", "3"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["broad_twitter", "crossner_politics"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["task"] for r in summary["benchmarks"]] == ["broad_twitter", "crossner_politics"]
    groups = {a["group"]: a for a in summary["averages"]}
    assert set(groups) == {"crossner", "others"}
    assert groups["crossner"]["benchmarks"] == ["crossner_politics"] and not groups["crossner"]["complete"]
    sel = json.loads((out / "crossner_politics" / "metrics.json").read_text())["configurations"]
    assert groups["crossner"]["selected"] == next(r for r in sel if r["name"] == "selected")["micro"]["f1"]
    assert groups["crossner"]["paper_reported"]["diziner"] == pytest.approx(0.768)
    table = (out / "table.md").read_text()
    assert "CrossNER average" in table and "BroadTwitter" in table and "78.3" in table
    assert sum(r["model_calls"] for r in summary["benchmarks"]) == models.total_calls()


# ---------------------------------------------------------------- bad input (exit 2, no model call)


def test_bad_inputs(tmp_path, install, capsys):
    models = install(Models())
    task, data = write_benchmark(tmp_path, test=False)
    out = tmp_path / "bench"
    assert main(bench_args(task, data, out)) == 2
    assert "no test split" in capsys.readouterr().err

    (data / "test.txt").write_text(conll(TEST, extra_label="party"))
    assert main(bench_args(task, data, out)) == 2
    err = capsys.readouterr().err
    assert "'party'" in err and str(data / "test.txt") in err

    (data / "test.txt").write_text(conll(TEST))
    assert main(bench_args(task, data, out, "--test-sample", "-1")) == 2
    assert "--test-sample" in capsys.readouterr().err
    assert main(bench_args(task, data, out, "--annotators", "openai:a")) == 2
    assert "at least two" in capsys.readouterr().err
    assert not out.exists() and models.by_name == {}

    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(bench_args(task, data, out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert models.by_name == {}


# ---------------------------------------------------------------- the pure parts


def test_sample_indices_is_seeded_sorted_and_complete_when_large():
    a = protocol.sample_indices(100, 10, 42)
    assert a == sorted(a) and len(set(a)) == 10 and a == protocol.sample_indices(100, 10, 42)
    assert a != protocol.sample_indices(100, 10, 43)
    assert protocol.sample_indices(5, 0, 1) == protocol.sample_indices(5, 9, 1) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        protocol.sample_indices(5, -1, 1)


def test_pilot_pool_keeps_unique_ids_and_prefixes_colliding_ones():
    train = [CorpusDocument("x", "a"), CorpusDocument("y", "b")]
    dev = [CorpusDocument("z", "c")]
    assert [d.id for d in protocol.pilot_pool({"train": train, "dev": dev})] == ["x", "y", "z"]
    dev = [CorpusDocument("x", "c")]
    assert [d.id for d in protocol.pilot_pool({"train": train, "dev": dev})] == ["train:x", "train:y", "dev:x"]


def test_covered_labels():
    assert protocol.covered_labels({"per": "PERSON"}, ["PERSON", "LOC"]) == {"per", "LOC"}
    docs = [CorpusDocument("d", "ab", [(0, 1, "per"), (1, 2, "PERSON")])]
    assert protocol.find_uncovered_label(docs, {"per", "LOC"}) == ("PERSON", docs[0])


def test_weighted_consensus_with_the_engine_weights_is_the_engine_consensus():
    from disagreement.engine import AnnotationBatch, analyze, weighted_consensus

    rng = np.random.default_rng(7)
    words = ["Alpha", "beta", "Gamma", "delta", "Eps", "zeta"]
    docs = []
    for d in range(30):
        text = " ".join(rng.choice(words, size=8))
        starts = [m.start() for m in re.finditer(r"\S+", text)]
        ann = {}
        for k in "abcd":
            if rng.random() < 0.1:
                ann[k] = None
                continue
            spans = set()
            for i in rng.choice([0, 2, 4, 6], size=3, replace=False):  # never adjacent: IO would merge them
                s = starts[i]
                spans.add((s, s + len(text[s:].split(" ")[0]), str(rng.choice(["P", "L"]))))
            ann[k] = sorted(spans)
        docs.append((f"d{d}", text, ann))
    result = analyze(AnnotationBatch.from_documents(docs))
    assert weighted_consensus(docs, result.weight_of()) == result.consensus_spans
    reordered = dict(reversed(list(result.weight_of().items())))
    assert weighted_consensus(docs, reordered) == result.consensus_spans
    # one annotator with all the weight: its own spans (a document it failed on: nothing)
    only = weighted_consensus(docs, {"a": 1.0})
    for (_, _, ann), spans in zip(docs, only, strict=True):
        assert spans == ([] if ann["a"] is None else sorted(ann["a"]))
    with pytest.raises(ValueError):
        weighted_consensus(docs, {"a": -1.0})
