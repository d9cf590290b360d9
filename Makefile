# MiniMind, the course: one entry point for learners, CI and the docs.
#   make course   run the course pipeline on the bundled sample (CPU)
#   make test     install everything from nothing, then run the test suite (what CI runs)
#   make lab      open JupyterLab on nbs/ with the package installed editable and widgets working
#   make docs     build the Quarto site into _docs/ and say where it is (needs `quarto`, or ../shared/quarto)
#   make check    nbdev-clean and nbdev-export must leave the git tree unchanged
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.minimind-installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k tokenizer"`.
PYTEST_ARGS ?=
# pytest-xdist workers when it is installed (the machine has 2 cores).
XDIST_N ?= 2

.PHONY: help install browser test course lab docs check

help:
	@sed -n '2,6p' Makefile | sed 's/^# *//'

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml's or constraints.txt's content changed (their hash is kept in the stamp;
# nbdev-export rewrites pyproject.toml with the same content, so its mtime is no guide). The package declares ranges
# (torch>=2.5); constraints.txt pins the test environment: torch==2.13.0, the CPU build, which pip takes from local disk.
# papermill and JupyterLab start the kernel named python3: register this venv's python under that name
# (--sys-prefix, not --user: a user-level spec would outlive this venv and shadow every other one).
# `make test` also installs the export and eval extras (llama-cpp-python compiles llama.cpp once: LLAMA_CMAKE_ARGS
# skip the parts of it the Python package never loads; pip's wheel cache makes later installs quick).
EXTRAS ?= dev
test: EXTRAS = dev,export,eval
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
install: | $(PY)
	@h="$$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $(EXTRAS)"; \
	if [ "$$(cat $(STAMP) 2>/dev/null)" != "$$h" ]; then \
	  set -x; \
	  CMAKE_ARGS="$${CMAKE_ARGS:-$(LLAMA_CMAKE_ARGS)}" $(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"; \
	  $(PY) -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null; \
	  echo "$$h" > $(STAMP); \
	fi

# Headless Chromium and its driver for tests/test_browser.py and tests/test_webui.py (Debian packages; we run as
# root in CI), and a CJK font so that the chat page's screenshots show Chinese text instead of boxes.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -d /usr/share/fonts/truetype/wqy ]; then \
	  echo "chromium, chromedriver and a CJK font present"; \
	else \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null; \
	  /usr/bin/chromium --version; \
	fi

test: install browser
	@n=""; if $(PY) -c "import xdist" 2>/dev/null; then n="-n $(XDIST_N)"; fi; \
	set -x; $(PY) -m pytest -q $$n $(PYTEST_ARGS) tests

course: install
	$(BIN)/minimind course

lab: install
	$(BIN)/jupyter lab --notebook-dir nbs --ip 127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root || true)

# One quarto worker: two would each pay quarto's start-up (on 2 busy cores 151 s against 79 s for the whole site).
docs: install
	@if ! command -v quarto >/dev/null && [ -f ../shared/quarto/install.sh ]; then eval "$$(bash ../shared/quarto/install.sh)"; fi; \
	if command -v quarto >/dev/null; then \
	  t0=$$(date +%s); $(BIN)/nbdev-docs --n-workers 1; \
	  echo "make docs: the site is in $(CURDIR)/_docs/ (built in $$(( $$(date +%s) - t0 )) s); open _docs/index.html, or serve it with"; \
	  echo "  python3 -m http.server 8000 --bind 127.0.0.1 --directory _docs   and browse http://127.0.0.1:8000/"; \
	else \
	  echo "make docs: quarto is not on PATH, so the site cannot be rendered here."; \
	  echo "  Install Quarto (https://quarto.org/docs/get-started/, or '$(BIN)/nbdev-install-quarto' where the web is reachable),"; \
	  echo "  then rerun 'make docs'. The docs config and nbdev's notebook processing are checked by 'make test' without it."; \
	  exit 1; \
	fi

check: install
	$(BIN)/nbdev-clean
	$(BIN)/nbdev-export
	@git diff --exit-code --stat -- nbs minimind || { echo "make check: nbdev-clean/nbdev-export changed the files above: run them and commit the result"; exit 1; }
	@new=$$(git ls-files --others --exclude-standard -- minimind nbs); \
	if [ -n "$$new" ]; then echo "make check: untracked files after export:"; echo "$$new"; exit 1; fi
	@echo "make check: notebooks clean, modules up to date"
