"""Shared test settings: CPU threads, headless plots, quiet detectron2 logging."""
import importlib.util
import os
from contextlib import contextmanager
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


@contextmanager
def registered_shapes(root, **generate_kwargs):
    """The embedded shapes data generated in root/rb_shapes and registered from there (RB_DATASETS=root); the
    datasets are registered from the default root again afterwards, for later modules."""
    from resnet_backbone.data.register import register_synthetic_datasets
    from resnet_backbone.data.synthetic_detection import generate_dataset

    generate_dataset(str(Path(root) / "rb_shapes"), **generate_kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RB_DATASETS", str(root))
        register_synthetic_datasets()
        yield root
    register_synthetic_datasets()


def randomize_norms(model, seed=0):
    """Non-trivial running statistics (and affine parameters, where a norm has them) in every BatchNorm / FrozenBN,
    so that a misplaced norm tensor or a wrong BN folding shows in the outputs. Returns the model, mode unchanged."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is None:
                continue
            n = m.running_var.numel()
            # scales in [0.5, 1): with scales up to 1.5 a random R-50 C4 detector detected nothing at all
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if getattr(m, "num_batches_tracked", None) is not None:
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """For modules that train small nets: one thread is as fast on an idle machine and far faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
