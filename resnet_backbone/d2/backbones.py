"""Registered detectron2 backbone builders (filled in by the detectron2-integration work)."""
