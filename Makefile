PYTHON ?= python
.PHONY: setup demo test test-fast test-d2-client

setup:
	$(PYTHON) tools/setup_env.py

demo: setup
	$(PYTHON) tools/demo.py

test: setup
	$(PYTHON) tools/run_tests.py

test-fast: setup
	$(PYTHON) tools/run_tests.py -m "not slow"

# detectron2's own model tests on the plugin's backbones (needs RB_DETECTRON2_SOURCE; docs/detectron2_tests.md)
test-d2-client: setup
	$(PYTHON) tools/d2_client_tests.py
