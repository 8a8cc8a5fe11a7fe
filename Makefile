# `make repro` runs the pipeline, `make test` runs the tests; both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup setup-dev init repro test bench browser clean-venv

# The pipeline needs only the core packages; the tests add the `dev` extra (SAELens, transformers,
# playwright...), so `make repro` on a fresh machine does not wait for what only the tests use.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Prefer a local CPU build of torch where the machine has one (no multi-GB CUDA download):
	@# --no-deps because its dependencies are not local; the next install adds them around it.
	@# Elsewhere this fails quietly and the loose range in pyproject.toml picks torch.
	-$(PY) -m pip install -q --no-deps --no-index "torch==2.13.0" 2>/dev/null
	$(PY) -m pip install -q -e .
	@$(PY) -c "import torch; print('set-up done: torch', torch.__version__)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

init: setup
	@[ -d .git ] || git init -q
	@[ -d .dvc ] || dvc init -q

repro: init
	dvc repro

# The report tests drive a real browser: Debian's chromium (playwright's own download is not used).
browser:
	@[ -x /usr/bin/chromium ] || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: setup-dev browser
	$(PY) -m pytest

bench: setup-dev
	$(PY) benchmarks/tokenize_throughput.py
	$(PY) benchmarks/cache_throughput.py
	$(PY) benchmarks/sae_step.py
	$(PY) benchmarks/ddp_overhead.py
	$(PY) benchmarks/remote_reader.py

clean-venv:
	rm -rf $(VENV)
