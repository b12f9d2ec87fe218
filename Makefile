PYTHON ?= python
.PHONY: setup demo test test-fast

setup:
	$(PYTHON) tools/setup_env.py

demo: setup
	$(PYTHON) tools/demo.py

test: setup
	$(PYTHON) -m pytest tests -q

test-fast: setup
	$(PYTHON) -m pytest tests -q -m "not slow"
