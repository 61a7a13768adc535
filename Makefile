# Two commands do all the set-up on a fresh machine (see README):
#   make demo   - create .venv, install, run the main job on built-in data (no download)
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip call, build environments included, is held to the CPU torch wheel.
export PIP_CONSTRAINT := $(abspath constraints.txt)

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[data,plot,audit,federated,fast,test,dp]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/instahide demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/encrypt.py

.PHONY: install demo test bench
