# xfusion developer entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xfusion-installed
TEST_DEPS := "pytest>=8" "pytest-timeout>=2.2" "hypothesis>=6.100" "import-linter>=2.1" "jsonschema>=4.18"
DEV_DEPS := "ruff>=0.5"

.PHONY: install demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# CPU torch first (a pinned local wheel); an unpinned torch would pull GB of CUDA packages.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[torch]" $(TEST_DEPS) $(DEV_DEPS)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xfusion demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py --out bench_out

lint: $(STAMP)
	$(VENV)/bin/ruff check xfusion tests benchmarks examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo_out bench_out
