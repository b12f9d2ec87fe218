"""Throughput of the pretraining input pipeline (decode + the paper's augmentation) next to how fast the model eats
images, to tell whether training would wait for data."""
import os
from dataclasses import dataclass

from ..data.classification import ImageNetFolder, build_classification_loader, measure_loader_throughput
from ..data.synthetic_classification import generate_classification_set
from ..data.transforms import imagenet_train_transform

__all__ = ["PipelineResult", "input_pipeline_throughput"]


@dataclass
class PipelineResult:
    images_per_s: float  # all workers together
    images_per_s_per_worker: float
    num_workers: int
    image_size: int  # stored images (square PNGs of the generated set)
    crop_size: int
    scale: tuple

    def to_dict(self) -> dict:
        return dict(self.__dict__, scale=list(self.scale))


def input_pipeline_throughput(root: str, *, num_workers: int, batch_size: int, num_batches: int, image_size: int,
                              crop_size: int, scale: tuple, num_classes: int = 10,
                              per_class: int = 8) -> PipelineResult:
    """Images/s of the training loader over the generated ImageNet-layout set under `root` (written if absent):
    PNG decode, scale augmentation, random crop, flip, PCA lighting, normalisation (imagenet_train_transform).

    With num_workers = 0 the main process does the work and counts as one worker."""
    generate_classification_set(root, num_classes=num_classes, train_per_class=per_class, val_per_class=1,
                                image_size=image_size, layout="imagenet")
    dataset = ImageNetFolder(os.fspath(root), "train",
                             transform=imagenet_train_transform(scale=tuple(scale), crop_size=crop_size))
    loader = build_classification_loader(dataset, batch_size, train=True, num_workers=num_workers, pin_memory=False,
                                         persistent_workers=False)
    rate = measure_loader_throughput(loader, num_batches)
    return PipelineResult(rate, rate / max(num_workers, 1), num_workers, image_size, crop_size, tuple(scale))
