"""Bad input that used to slip through, each driven through `cli.main.main`: exit 2 and a message naming the file,
the line (where there is one) and the problem; or, for CoNLL-2003's four columns, read correctly with a note.

The table of these inputs and what the program does is docs/bad-inputs.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import agents.models
from cli import rundir
from cli.main import main
from corpus.io import read_documents
from state.errors import InputError
from tests.scripted import POLITICS_TASK, ScriptedModels, write_pool
from tests.test_cli_refine import ANNOTATORS, CONLL, TASK, refine_args, respond_for

DEEP = "[" * 100_000  # nested far beyond what the JSON parser can read


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *objects: dict) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `diziner ARGV` in-process."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def input_error(capsys, *argv: str) -> str:
    """stderr of a command that must exit 2 with one short message and print nothing on stdout."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, err)
    assert out == "" and "Traceback" not in err and "unexpected failure" not in err, err
    assert len(err) < 600, err  # a message, not a dump of the bad line
    return err


@pytest.fixture
def models(scripted_models) -> ScriptedModels:
    return scripted_models(respond_for)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.jsonl")


@pytest.fixture
def small_run(tmp_path, pool, models, capsys) -> Path:
    """A finished two-round run on the tiny task (with a label mapping), scripted models."""
    task = write(tmp_path / "tiny.yaml", POLITICS_TASK.format(name="tiny_politics"))
    out = tmp_path / "small-run"
    code, _, err = run_cli(capsys, "refine", "--task", task, "--docs", pool, "--out", out, "--annotators",
                           ",".join(ANNOTATORS), "--supervisor", "openai:sup", "--max-loops", "2", "--pilot-size", "3")
    assert code == 0, err
    assert (out / rundir.GUIDELINE_JSON).is_file()
    return out


# ---------------------------------------------------------------- CoNLL-2003's four columns

CONLL2003 = """\
-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""
TWO_COLUMNS = """\
EU\tB-ORG
rejects\tO
German\tB-MISC
call\tO
.\tO

Peter\tB-PER
Blackburn\tI-PER

BRUSSELS\tB-LOC
1996-08-22\tO
"""


def test_conll2003_four_columns_are_token_and_tag(tmp_path):
    four = write(tmp_path / "eng.testa", CONLL2003)
    docs, stats = read_documents(four)
    assert stats.format == "conll" and stats.four_columns
    assert [d.text for d in docs] == ["EU rejects German call .", "Peter Blackburn", "BRUSSELS 1996-08-22"]
    assert [d.entities for d in docs] == [[(0, 2, "ORG"), (11, 17, "MISC")], [(0, 15, "PER")], [(0, 8, "LOC")]]
    assert [d.line for d in docs] == [3, 9, 14]
    assert [d.id for d in docs] == ["eng-1", "eng-2", "eng-3"]
    note = stats.warnings(four)
    assert len(note) == 1 and note[0].startswith(f"{four}: read as CoNLL-2003") and "first column" in note[0]
    # the same documents as the two-column file, which keeps today's rule and no note
    two_docs, two_stats = read_documents(write(tmp_path / "eng.two", TWO_COLUMNS))
    assert [(d.text, d.entities, d.tokens) for d in two_docs] == [(d.text, d.entities, d.tokens) for d in docs]
    assert not two_stats.four_columns and two_stats.warnings("x") == []
    # tab-separated CoNLL-2003 columns are read the same way
    tabs = write(tmp_path / "tabs.txt", CONLL2003.replace(" ", "\t"))
    tab_docs, tab_stats = read_documents(tabs)
    assert tab_stats.four_columns
    assert [(d.text, d.entities, d.tokens) for d in tab_docs] == [(d.text, d.entities, d.tokens) for d in docs]


def test_one_line_without_four_columns_keeps_the_two_column_rule(tmp_path):
    # a single two-column line: the whole file is read with today's rule (the token is everything before the tag)
    mixed = write(tmp_path / "mixed.txt", CONLL2003 + "\nalone\tO\n")
    docs, stats = read_documents(mixed)
    assert not stats.four_columns
    assert docs[0].tokens[0] == "EU NNP B-NP" and docs[-1].tokens == ["alone"]
    # a two-column file whose tokens hold spaces (three words and a tag on every line) is not CoNLL-2003
    spaced = write(tmp_path / "spaced.txt", "New York Times\tB-ORG\nis not here\tO\n")
    docs, stats = read_documents(spaced)
    assert not stats.four_columns and docs[0].tokens == ["New York Times", "is not here"]
    # a four-field line whose last field is no tag is not CoNLL-2003 either: today's rule names the bad tag
    bad = write(tmp_path / "bad.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP Q-X\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:2: bad tag 'Q-X'")):
        read_documents(bad)


def test_evaluate_reads_conll2003_with_a_note(tmp_path, capsys):
    gold = write(tmp_path / "gold.conll", CONLL2003)
    pred = write(tmp_path / "pred.conll", TWO_COLUMNS.replace("B-MISC", "O"))
    code, out, err = run_cli(capsys, "evaluate", "--gold", gold, "--pred", pred, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["tp"], result["fp"], result["fn"]) == (3, 0, 1)  # MISC missed; POS/chunk tags are not text
    assert f"warning: {gold}: read as CoNLL-2003" in err and str(pred) not in err


# ---------------------------------------------------------------- evaluate: an unlabelled gold


def test_evaluate_refuses_an_unlabelled_gold(tmp_path, capsys):
    unlabelled = jsonl(tmp_path / "pool.jsonl", {"id": "a", "text": "Paris"}, {"id": "b", "text": "Rome", "entities": None})
    pred = jsonl(tmp_path / "pred.jsonl", {"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 5, "type": "LOC"}]})
    err = input_error(capsys, "evaluate", "--gold", unlabelled, "--pred", pred)
    assert f"{unlabelled}: the gold file is unlabelled: no document has 'entities'" in err
    # predictions without any 'entities' (the pool given as predictions) are refused the same way
    labelled = jsonl(tmp_path / "gold.jsonl", {"id": "a", "text": "Paris", "entities": []}, {"id": "b", "text": "Rome", "entities": []})
    err = input_error(capsys, "evaluate", "--gold", labelled, "--pred", unlabelled)
    assert f"{unlabelled}: the predictions file is unlabelled: no document has 'entities'" in err
    # an empty gold file has nothing to score
    empty = write(tmp_path / "empty.jsonl", "")
    assert "holds no documents" in input_error(capsys, "evaluate", "--gold", empty, "--pred", pred)


def test_evaluate_accepts_a_conll_gold_of_only_o_tags_and_a_partly_labelled_gold(tmp_path, capsys):
    only_o = write(tmp_path / "o.conll", "Paris\tO\nis\tO\n\nRome\tO\n")
    code, out, err = run_cli(capsys, "evaluate", "--gold", only_o, "--pred", only_o, "--json")
    assert code == 0, err
    assert {k: json.loads(out)[k] for k in ("tp", "fp", "fn", "f1")} == {"tp": 0, "fp": 0, "fn": 0, "f1": 0.0}
    partly = jsonl(tmp_path / "partly.jsonl", {"id": "a", "text": "Paris", "entities": [{"start": 0, "end": 5, "type": "LOC"}]},
                   {"id": "b", "text": "Rome"})
    code, out, err = run_cli(capsys, "evaluate", "--gold", partly, "--pred", partly, "--json")
    assert code == 0, err
    assert json.loads(out)["tp"] == 1
    assert f"{partly}: 1 of 2 document(s) have no 'entities'" in err and "'b', line 2" in err


# ---------------------------------------------------------------- analyze: BOM and span errors


def test_analyze_accepts_a_bom_and_names_file_and_line_of_a_bad_span(tmp_path, capsys):
    good = {"id": "a", "text": "Paris is", "annotations": {"m": [{"start": 0, "end": 5, "type": "LOC"}], "n": []}}
    bom = write(tmp_path / "bom.jsonl", "\ufeff" + json.dumps(good) + "\n")
    code, out, err = run_cli(capsys, "analyze", bom, "--json")
    assert code == 0, err
    assert json.loads(out)["documents"][0]["id"] == "a"
    bad = {"id": "b", "text": "xy", "annotations": {"m": [{"start": 0, "end": 9, "type": "X"}], "n": None}}
    path = write(tmp_path / "bad.jsonl", "\ufeff" + json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    err = input_error(capsys, "analyze", path)
    assert f"{path}:3: document 'b', annotator 'm': span [0, 9) lies outside the text (length 2)" in err
    missing = {"id": "c", "text": "xy", "annotations": {"m": [{"start": 0, "type": "X"}]}}
    path = write(tmp_path / "missing.jsonl", json.dumps(good) + "\n" + json.dumps(missing) + "\n")
    assert f"{path}:2: document 'c', annotator 'm', span 0: missing key 'end'" in input_error(capsys, "analyze", path)


# ---------------------------------------------------------------- JSON nested too deeply, in every reader


def test_deeply_nested_json_in_every_jsonl_reader_is_exit_2(tmp_path, capsys, models):
    good = {"id": "a", "text": "Paris", "entities": [], "annotations": {"m": [], "n": []}}  # for every reader
    deep = write(tmp_path / "deep.jsonl", json.dumps(good) + "\n" + DEEP + "\n")
    deep_object = write(tmp_path / "deep-object.jsonl", '{"id": "a", "text": ' + DEEP + "\n")
    fine = jsonl(tmp_path / "fine.jsonl", good)
    for path in (deep, deep_object):
        line = 2 if path == deep else 1
        # gold, predictions, the pool of a new run, the input of analyze
        for argv in (("evaluate", "--gold", path, "--pred", fine), ("evaluate", "--gold", fine, "--pred", path),
                     ("analyze", path),
                     ("refine", "--task", TASK, "--docs", path, "--out", tmp_path / "never", "--annotators",
                      ",".join(ANNOTATORS), "--supervisor", "openai:sup")):
            err = input_error(capsys, *argv)
            assert f"{path}:{line}: not valid JSON" in err and "nested too deeply" in err, (argv, err)
    assert not (tmp_path / "never").exists()
    # a file starting with the deep line is not JSONL (no "{"): a CoNLL error, the line quoted only in part
    first = write(tmp_path / "first.jsonl", DEEP + "\n")
    err = input_error(capsys, "evaluate", "--gold", first, "--pred", fine)
    assert f"{first}:1: no tab or space" in err and "(100000 characters)" in err


def test_deeply_nested_run_json_and_configuration_are_exit_2(tmp_path, capsys, small_run):
    docs = write(tmp_path / "gold.conll", CONLL)
    pred = tmp_path / "pred.jsonl"
    conf = rundir.configuration_path(small_run, 1, "openai:b")
    write(conf, DEEP)
    err = input_error(capsys, "annotate", "--run", small_run, "--docs", docs, "--out", pred,
                      "--round", "1", "--annotator", "openai:b")
    assert f"{conf}: configuration is not valid JSON: nested too deeply" in err
    write(small_run / rundir.GUIDELINE_JSON, DEEP)
    err = input_error(capsys, "annotate", "--run", small_run, "--docs", docs, "--out", pred)
    assert f"{small_run / rundir.GUIDELINE_JSON}: guideline.json is not valid JSON: nested too deeply" in err
    write(small_run / rundir.RUN_FILE, DEEP)
    for argv in (("annotate", "--run", small_run, "--docs", docs, "--out", pred), ("refine", "--resume", small_run)):
        err = input_error(capsys, *argv)
        assert f"{small_run / rundir.RUN_FILE}: run.json" in err and "nested too deeply" in err
    assert not pred.exists()


# ---------------------------------------------------------------- task and run files


def test_task_and_run_file_not_utf8_or_with_a_duplicate_key(tmp_path, capsys, pool, models):
    out = tmp_path / "run"
    base = ["refine", "--docs", pool, "--out", out, "--supervisor", "openai:sup"]
    latin1 = write(tmp_path / "latin1.yaml", TASK.read_text(encoding="utf-8").replace("name:", "n\xe4me:", 1).encode("latin-1"))
    err = input_error(capsys, *base, "--task", latin1, "--annotators", ",".join(ANNOTATORS))
    assert f"{latin1}: task file is not UTF-8 text" in err
    duplicate = write(tmp_path / "dup.yaml", TASK.read_text(encoding="utf-8") + "final_task_goal: again\n")
    err = input_error(capsys, *base, "--task", duplicate, "--annotators", ",".join(ANNOTATORS))
    line = len(TASK.read_text(encoding="utf-8").splitlines()) + 1
    assert f"{duplicate}:{line}: duplicate key 'final_task_goal'" in err
    run_file = write(tmp_path / "run.yaml", "annotators:\n  - name: openai:a\n  - name: openai:b\nsupervisor:\n"
                     "  name: openai:sup\nsupervisor:\n  name: openai:b\n")
    err = input_error(capsys, "refine", "--task", TASK, "--docs", pool, "--out", out, "--config", run_file)
    assert f"{run_file}:6: duplicate key 'supervisor'" in err
    run_file_latin1 = write(tmp_path / "run1.yaml", "annotators: [openai:a, openai:b]  # \xe9\n".encode("latin-1"))
    err = input_error(capsys, "refine", "--task", TASK, "--docs", pool, "--out", out, "--config", run_file_latin1)
    assert str(run_file_latin1) in err and "not UTF-8" in err
    assert not out.exists()


# ---------------------------------------------------------------- refine --seed


@pytest.mark.parametrize("seed", ["-1", "-42"])
def test_a_negative_seed_fails_before_the_run_directory_exists(tmp_path, capsys, pool, models, seed):
    out = tmp_path / "run"
    err = input_error(capsys, *refine_args(out, pool, "--seed", seed))
    assert "--seed" in err and "greater than or equal to 0" in err
    assert not out.exists() and not models.by_name  # no run.json, no model made
    assert main(refine_args(out, pool, "--seed", "0", loops=1)) == 0


# ---------------------------------------------------------------- annotate: checked before the first model call


def test_annotate_checks_its_output_before_any_model_call(tmp_path, capsys, small_run, models):
    docs = write(tmp_path / "gold.conll", CONLL)
    calls_before = {name: len(m.calls) for name, m in models.by_name.items()}
    base = ["annotate", "--run", small_run, "--docs", docs]
    directory = tmp_path / "a-directory"
    directory.mkdir()
    err = input_error(capsys, *base, "--out", directory)
    assert f"{directory}: --out names a directory" in err
    missing = tmp_path / "no" / "such" / "pred.jsonl"
    err = input_error(capsys, *base, "--out", missing)
    assert f"{missing}: the output's directory" in err and "does not exist" in err
    err = input_error(capsys, *base, "--out", docs)
    assert "--out would overwrite --docs" in err
    err = input_error(capsys, *base, "--out", tmp_path / "p.jsonl", "--limit", "0")
    assert "--limit must be at least 1" in err
    assert {name: len(m.calls) for name, m in models.by_name.items()} == calls_before


def test_annotate_on_a_run_that_finished_without_a_selection(tmp_path, capsys, pool, monkeypatch):
    """Every annotator fails on every document: the run finishes, selects nothing, and annotate says so."""

    def failing(name: str):
        return lambda prompt, schema: RuntimeError("scripted failure")

    failing_models = ScriptedModels(failing)
    monkeypatch.setattr(agents.models, "chat_model", failing_models)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *refine_args(out, pool, loops=2))
    assert code == 0, err
    summary = json.loads((out / rundir.SUMMARY).read_text(encoding="utf-8"))
    assert summary["status"] == "finished" and summary["selection"] is None
    assert not (out / rundir.GUIDELINE_JSON).exists()
    calls = sum(len(m.calls) for m in failing_models.by_name.values())
    docs = write(tmp_path / "gold.conll", CONLL)
    err = input_error(capsys, "annotate", "--run", out, "--docs", docs, "--out", tmp_path / "pred.jsonl")
    assert "the run finished without selecting any configuration" in err
    assert "--round T and --annotator NAME" in err and "rounds with files: 1" in err
    assert "--resume" not in err
    assert sum(len(m.calls) for m in failing_models.by_name.values()) == calls
    # a run that has not finished is still told to resume
    summary["status"] = "running"
    write(out / rundir.SUMMARY, json.dumps(summary))
    err = input_error(capsys, "annotate", "--run", out, "--docs", docs, "--out", tmp_path / "pred.jsonl")
    assert "it has not finished" in err and f"diziner refine --resume {out}" in err


def test_annotate_on_a_finished_run_that_lost_its_guideline(tmp_path, capsys, small_run):
    docs = write(tmp_path / "gold.conll", CONLL)
    saved = (small_run / rundir.GUIDELINE_JSON).read_bytes()
    (small_run / rundir.GUIDELINE_JSON).unlink()
    err = input_error(capsys, "annotate", "--run", small_run, "--docs", docs, "--out", tmp_path / "pred.jsonl")
    assert "selected a configuration, but guideline.json is missing" in err
    assert f"diziner refine --resume {small_run}` writes it again" in err
    # ... as the message says
    code, _, err = run_cli(capsys, "refine", "--resume", small_run)
    assert code == 0 and "already finished" in err
    assert (small_run / rundir.GUIDELINE_JSON).read_bytes() == saved
