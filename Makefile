# mmzoo: the two set-up commands are `make demo` and `make test`; both install what they need.
# PKG=name restricts demo, test, bench and repro to one package.

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
RUN := $(UV) run --no-sync
PACKAGES := $(sort $(notdir $(wildcard packages/*)))
PKG ?=
SELECTED := $(if $(PKG),$(PKG),$(PACKAGES))
TEST_PATHS := $(if $(PKG),packages/$(PKG),shared/tests $(addprefix packages/,$(PACKAGES)) tests)

.PHONY: help setup demo test bench repro ddp lint wheels clean

help:
	@echo "make demo    run every package's demo (PKG=name for one) and print a summary table"
	@echo "make test    run the whole test suite (PKG=name for one package)"
	@echo "make bench   run benchmarks/*.py; JSON lines to benchmarks/results/<device>.jsonl"
	@echo "make repro   run every packages/*/repro.py (the papers' claims in miniature)"
	@echo "make ddp     every package's tiny fit/test/predict on 2 CPU processes (about 15 min)"
	@echo "make lint    ruff check and ruff format --check"
	@echo "make wheels  build every workspace member's wheel into dist/"

# Installs uv through pip when it is missing, then the locked environment of the whole workspace. Bytecode is
# compiled once at install (about a minute on 2 cores, then under a second): where Python may not write .pyc files
# (PYTHONDONTWRITEBYTECODE), every process, the spawned two-process tests included, would otherwise recompile
# torch, Lightning and transformers from source on import.
setup:
	@command -v $(UV) >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --target $(CURDIR)/.tools uv
	$(UV) sync --all-packages --locked --compile-bytecode

demo: setup
	$(RUN) python scripts/run_demos.py $(SELECTED)

test: setup
	$(RUN) pytest $(TEST_PATHS)

bench: setup
	$(RUN) python scripts/run_bench.py $(if $(PKG),benchmarks/$(PKG).py,$(sort $(wildcard benchmarks/*.py)))

# Every selected repro runs even when an earlier one's gate fails (its script exits 1); the target then names the
# packages whose gates failed and exits 1.
repro: setup
	@failed=""; for p in $(SELECTED); do \
		if [ -f packages/$$p/repro.py ]; then echo "== repro $$p"; \
			$(RUN) python packages/$$p/repro.py || failed="$$failed $$p"; \
		else echo "== repro $$p: no repro.py"; fi; done; \
	if [ -n "$$failed" ]; then echo "== repro: gate failed or run stopped for:$$failed"; exit 1; fi; \
	echo "== repro: every gate passed"

ddp: setup
	$(RUN) python scripts/ddp_check.py $(SELECTED)

lint: setup
	$(RUN) ruff check shared packages tests benchmarks scripts
	$(RUN) ruff format --check shared packages tests benchmarks scripts

wheels: setup
	rm -rf dist && $(UV) build --all-packages --wheel -o dist

clean:
	rm -rf dist runs .tools
