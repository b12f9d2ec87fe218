"""Shared test settings: CPU threads, headless plots, quiet detectron2 logging."""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _logger_propagation():
    """Tools run in-process call detectron2's setup_logger, which stops their loggers propagating to the root
    logger (where pytest's caplog listens): put that back after each test."""
    import logging

    loggers = [logging.getLogger(n) for n in ("resnet_backbone", "detectron2", "d2")]
    saved = [lg.propagate for lg in loggers]
    yield
    for lg, propagate in zip(loggers, saved):
        lg.propagate = propagate


REPO = Path(__file__).resolve().parents[1]


def load_tool(name):
    """Import tools/<name>.py (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    """For modules that train small nets: one thread is as fast on an idle machine and far faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
