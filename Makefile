# auglab: the README quick start's commands: `make repro`, `make test` (`make test-fast`), `make tour`.
# Each builds .venv from nothing (Python 3.11, pip and apt are all they assume).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN    := PATH="$(BIN):$$PATH"

.PHONY: repro test test-fast tour install apt-index bench clean-venv

repro: install apt-index  ## create .venv, install, fetch the data and run the whole pipeline
	$(RUN) dvc repro

# make test runs the suite in WORKERS processes (pytest-xdist), a test file each at a time: the
# end-to-end file (tests/conftest.py starts it first) on one, the rest beside it; run alone, each
# leaves much of a 2-core host idle in start-up and I/O. WORKERS=0 runs it in this process.
WORKERS ?= 2

test: install apt-index  ## create .venv, install, lint, run the test suite (real data, real DVC)
	$(RUN) ruff check .
	$(RUN) python -m pytest -n $(WORKERS) --dist loadfile

test-fast: install  ## the inner loop: units only, no `dvc repro`, stage subprocess or network (<= 2 min)
	$(RUN) ruff check .
	$(RUN) python -m pytest -m "not slow and not network"

tour: install apt-index  ## the whole pipeline on the CI profile in a scratch copy (~5 min); prints its report
	$(RUN) python ci/tour.py $(DIR)

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable '.[dev]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist where no mirror answers; on a fresh
# machine apt may not have its package index yet.
apt-index:
	@if command -v apt-get >/dev/null 2>&1 && ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then \
		echo "apt has no index for dataset-fashion-mnist yet: running apt-get update"; \
		$(SUDO) apt-get update -qq; \
	fi

bench: install  ## speed and memory benchmarks (need `make repro` data); print ratios
	$(RUN) python bench/read_split.py
	$(RUN) python bench/augment_speed.py
	$(RUN) python bench/eval_speed.py

clean-venv:
	rm -rf $(VENV)
