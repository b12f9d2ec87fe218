"""Registered ROI heads (filled in by the detectron2-integration work)."""
