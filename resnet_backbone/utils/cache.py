"""The project's cache folder: downloaded weights, the built Winograd kernels, the measured kernel choices."""
import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """$RB_CACHE_DIR, default ~/.cache/resnet_backbone (tools/setup_env.py, which runs before the package is
    installed, reads the same variable for its detectron2 wheel cache)."""
    return Path(os.environ.get("RB_CACHE_DIR") or Path.home() / ".cache" / "resnet_backbone").expanduser().absolute()
