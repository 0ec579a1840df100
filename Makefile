# Two commands matter: `make demo` (install + the main job on built-in data) and `make test`.
# Uses the active virtual environment if there is one, else creates .venv here.
ifdef VIRTUAL_ENV
PYTHON := $(VIRTUAL_ENV)/bin/python
else
PYTHON := .venv/bin/python
endif
STAMP := $(dir $(PYTHON)).sslseg-installed
DEMO_DIR ?= demo

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml
	@[ -x $(PYTHON) ] || python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m sslseg demo --out $(DEMO_DIR)

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

format: install
	$(PYTHON) -m ruff format src tests benchmarks
	$(PYTHON) -m ruff check --fix src tests benchmarks

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
