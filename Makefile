PYTHON ?= python
.PHONY: setup demo test test-fast

setup:
	$(PYTHON) tools/setup_env.py

demo: setup
	$(PYTHON) tools/demo.py

test: setup
	$(PYTHON) -m pytest tests -q -rfE --tb=short

test-fast: setup
	$(PYTHON) -m pytest tests -q -rfE --tb=short -m "not slow"
