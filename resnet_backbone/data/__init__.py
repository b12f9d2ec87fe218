"""Datasets: the embedded generated sets (detection: COCO + VOC writers; classification), ImageNet / CIFAR readers,
the pretraining data sets by name (classification_sets), classification transforms. Importing registers nothing:
call register_synthetic_datasets()."""
from .register import check_dataset_registered, ensure_synthetic_dataset, register_synthetic_datasets

__all__ = ["check_dataset_registered", "ensure_synthetic_dataset", "register_synthetic_datasets"]
