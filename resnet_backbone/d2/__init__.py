"""Detectron2 adapters: the only place in the package that reads ``cfg.MODEL.*``."""
