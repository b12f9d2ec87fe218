"""Weights on disk: safe loading (never runs code from a file), .pkl writing, name conversion between formats.
Every file is written through resnet_backbone.utils.atomic."""
from .pkl_writer import save_pkl
from .safe_load import CorruptCheckpointError, UnsafeCheckpointError, load_file, state_dict_from

__all__ = ["save_pkl", "CorruptCheckpointError", "UnsafeCheckpointError", "load_file",
           "state_dict_from"]
