"""Weights on disk: safe loading (never runs code from a file), atomic saves, name conversion between formats."""
from .atomic import atomic_save, save_pkl
from .safe_load import CorruptCheckpointError, UnsafeCheckpointError, load_file, state_dict_from

__all__ = ["atomic_save", "save_pkl", "CorruptCheckpointError", "UnsafeCheckpointError", "load_file",
           "state_dict_from"]
