"""`torch.compile`, guarded: when it is unavailable or fails, the model runs uncompiled and the reason is logged."""
import logging

import torch
from torch import nn

__all__ = ["compile_model"]

logger = logging.getLogger(__name__)


def compile_model(model: nn.Module, **compile_kwargs) -> nn.Module:
    """`torch.compile(model, **compile_kwargs)`, or the model itself (with a log line saying why) when torch has no
    compile or it fails. Compilation is lazy: errors of the first call are caught by a guard around it."""
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        logger.warning("torch.compile is not available in torch %s; running the model uncompiled", torch.__version__)
        return model
    try:
        compiled = compile_fn(model, **compile_kwargs)
    except Exception as e:  # backend missing, unsupported platform ...
        logger.warning("torch.compile failed (%s: %s); running the model uncompiled", type(e).__name__, e)
        return model
    return _GuardedCompiled(model, compiled)


class _GuardedCompiled(nn.Module):
    """Runs the compiled module; if a call of it fails (compilation happens there), logs once and falls back to
    the eager module for that and every later call. Attributes other than forward are the eager module's."""

    def __init__(self, eager: nn.Module, compiled):
        super().__init__()
        self.eager = eager
        # kept out of the module tree, so parameters are listed (and saved) once, under "eager."
        object.__setattr__(self, "_compiled", compiled)
        self._failed = False

    def forward(self, *args, **kwargs):
        if not self._failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:
                self._failed = True
                logger.warning("torch.compile failed on the first call (%s: %s); running the model uncompiled",
                               type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return self.eager(*args, **kwargs)

    @property
    def compiled_ok(self) -> bool:
        return not self._failed

    def __getattr__(self, name):  # only called when normal lookup fails: e.g. a detector's .device
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["eager"], name)
