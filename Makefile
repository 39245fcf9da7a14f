# dronedepth: the two front-door commands are `make demo` and `make test`.
# Both set everything up on their own (apt packages, .venv, the embedded Triton's env).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
TRITON_ENV := .venv-triton
STAMPS := .cache/stamps
APT_PACKAGES := libusb-1.0-0 libgl1 libgomp1 chromium fonts-dejavu-core coturn
# CPU torch is all export needs, even on a GPU server; the pin keeps pip from pulling a CUDA build.
TORCH := torch==2.13.0

# Demo inputs: a Hugging Face id or directory (MODEL), or an official checkpoint (CHECKPOINT + ENCODER [+ METRIC]).
MODEL ?=
CHECKPOINT ?=
ENCODER ?= vits
METRIC ?= outdoor
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup demo test lint typecheck bench clean help
help:
	@echo "make demo   run the whole pipeline end to end on this machine (outputs/demo)"
	@echo "make test   lint, type-check and run the test suite"
	@echo "make bench  measure latency and throughput (benchmarks/results)"
	@echo "make setup  install apt packages, $(VENV) and $(TRITON_ENV) (idempotent)"

setup: $(STAMPS)/apt $(STAMPS)/venv $(STAMPS)/triton-env

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "apt packages present"; else \
	  echo "Installing apt packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; fi
	@touch $@

$(STAMPS)/venv: pyproject.toml Makefile
	@mkdir -p $(STAMPS)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing dronedepth into $(VENV) (first time: about a minute)"
	@$(VENV)/bin/pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev]"
	@touch $@

# The embedded Triton's Python backend needs numpy < 2 (NOTES): a separate env from the gateway's.
$(STAMPS)/triton-env: Makefile
	@mkdir -p $(STAMPS)
	@test -x $(TRITON_ENV)/bin/python || $(PYTHON) -m venv $(TRITON_ENV)
	@echo "Installing the embedded Triton server into $(TRITON_ENV)"
	@$(TRITON_ENV)/bin/pip install -q --disable-pip-version-check "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.18"
	@touch $@

demo: setup
	$(VENV)/bin/dronedepth demo --out outputs/demo \
	  $(if $(MODEL),--model "$(MODEL)") \
	  $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)" --encoder $(ENCODER) $(if $(METRIC),--metric $(METRIC))) \
	  $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow the package-dir mapping (dronedepth.gateway lives in gateway/), so it checks a
# mirror of symlinks: the ground-floor modules plus one link per sub-package folder named in pyproject.toml.
# Error paths are rewritten back to the repository's own paths.
TYPECHECK_TREE := .cache/typecheck/dronedepth
typecheck: setup
	@rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)
	@ln -s $(CURDIR)/dronedepth/*.py $(TYPECHECK_TREE)/
	@for folder in $$($(VENV)/bin/python -c 'import tomllib; dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]; print(*(d for p, d in dirs.items() if p != "dronedepth"))'); do \
	  ln -sfn $(CURDIR)/$$folder $(TYPECHECK_TREE)/$$folder; done
	set -o pipefail; $(VENV)/bin/mypy -p dronedepth | sed -E 's#^$(TYPECHECK_TREE)/([a-z_]+/)#\1#; s#^$(TYPECHECK_TREE)/#dronedepth/#'

test: lint typecheck
	$(VENV)/bin/python -m pytest -q -ra

bench: setup
	$(VENV)/bin/dronedepth bench $(BENCH_ARGS)

clean:
	rm -rf outputs benchmarks/results .pytest_cache .ruff_cache
