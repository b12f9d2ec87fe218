"""Former home of the atomic writer, kept as a name only: the writer is :mod:`resnet_backbone.utils.atomic`
(importable from data/ as well), ``.pkl`` writing is :mod:`resnet_backbone.checkpoint.pkl_writer`."""
from ..utils.atomic import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text
from .pkl_writer import save_pkl

__all__ = ["atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "save_pkl"]
