"""Classification transforms of the ResNet paper (He et al., 2016, Sec. 3.4 and Sec. 4.2).

ImageNet training: shorter side resized to a random value in [256, 480] ("scale augmentation", after Simonyan &
Zisserman), a random 224x224 crop, horizontal flip, mean subtraction and AlexNet's PCA colour ("lighting")
augmentation (Krizhevsky et al., 2012, Sec. 4.1). ImageNet testing: the standard 10-crop (Krizhevsky et al.).
CIFAR-10 training: 4-pixel padding, a random 32x32 crop and horizontal flip; testing uses the image as is.

Every size is a keyword argument, so tests and the generated data sets can run the same pipelines on small images.

Mean subtraction: the paper subtracts the *per-pixel* mean image. The per-channel mean is the common approximation
(fb.resnet.torch, torchvision's reference scripts, detectron2's PIXEL_MEAN) and is what this module does: it
commutes with the random resize and crop, which a per-pixel mean image of a fixed size does not. How pixels are
normalised (mean, std, channel order, value range) is data - a `Preprocessing` - so that exported weights can
record it beside them.

Images enter the pipelines as PIL RGB images (the readers in `classification.py` return those).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F

from ..modeling.options import check_choice, check_int

__all__ = [
    "Preprocessing",
    "IMAGENET_PAPER",
    "IMAGENET_TORCHVISION",
    "CIFAR10_PAPER",
    "IMAGENET_PCA_EIGVAL",
    "IMAGENET_PCA_EIGVEC",
    "Normalize",
    "Lighting",
    "RandomShorterSideResize",
    "TenCrop",
    "imagenet_train_transform",
    "imagenet_eval_transform",
    "cifar_train_transform",
    "cifar_eval_transform",
    "average_crop_logits",
]

_CHANNEL_ORDERS = ("RGB", "BGR")
_INPUT_RANGES = (1, 255)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a network expects its input pixels: ``(pixel * input_range - pixel_mean) / pixel_std``, pixel in [0, 1].

    pixel_mean, pixel_std: one value per channel, listed in ``channel_order`` and in units of ``input_range``
        (``input_range=255``: pixels in [0, 255], as Caffe/detectron2; ``input_range=1``: pixels in [0, 1],
        as torchvision).
    channel_order: "RGB" or "BGR" (the MSRA Caffe models were trained on BGR images).
    """

    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    input_range: int = 255

    def __post_init__(self):
        for name in ("pixel_mean", "pixel_std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or not all(np.isfinite(values)):
                raise ValueError(f"Preprocessing.{name} must be 3 finite numbers (one per channel), got {values}")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError(f"Preprocessing.pixel_std must be positive, got {self.pixel_std}")
        check_choice("Preprocessing.channel_order", self.channel_order, _CHANNEL_ORDERS)
        check_choice("Preprocessing.input_range", self.input_range, _INPUT_RANGES)

    def to_dict(self) -> dict:
        """JSON-ready description, e.g. to write beside exported weights."""
        return dataclasses.asdict(self) | {"pixel_mean": list(self.pixel_mean), "pixel_std": list(self.pixel_std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Preprocessing keys {sorted(unknown)}; allowed: "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)

    def as_detectron2(self) -> dict:
        """The equivalent detectron2 settings; detectron2 feeds pixels in [0, 255] in INPUT.FORMAT order."""
        scale = 255.0 / self.input_range
        return {
            "MODEL.PIXEL_MEAN": [m * scale for m in self.pixel_mean],
            "MODEL.PIXEL_STD": [s * scale for s in self.pixel_std],
            "INPUT.FORMAT": self.channel_order,
        }

    @classmethod
    def from_images(cls, images: np.ndarray, *, with_std: bool = False, channel_order: str = "RGB",
                    input_range: int = 255, chunk: int = 4096) -> "Preprocessing":
        """Per-channel mean (and std if ``with_std``) of uint8 RGB images shaped [N, H, W, 3].

        Computed in float64 in chunks, so 50k CIFAR images need little memory.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
            raise ValueError(f"expected a non-empty uint8 array [N, H, W, 3], got {images.dtype} {images.shape}")
        total = np.zeros(3)
        total_sq = np.zeros(3)
        for start in range(0, len(images), chunk):
            block = images[start:start + chunk].reshape(-1, 3).astype(np.float64)
            total += block.sum(0)
            total_sq += np.square(block).sum(0)
        count = images.shape[0] * images.shape[1] * images.shape[2]
        mean = total / count
        scale = input_range / 255.0
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0)) * scale if with_std else np.ones(3)
        if channel_order == "BGR":
            mean, std = mean[::-1], std[::-1]
        return cls(tuple(mean * scale), tuple(std), channel_order, input_range)


# Per-channel ImageNet statistics in [0, 1] RGB, as in torchvision's reference scripts (and, x255, detectron2's
# PIXEL_MEAN / PIXEL_STD for its MSRA models).
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# The paper's recipe: mean subtraction only (std 1), pixels in [0, 255] (the MSRA Caffe models; RGB here).
IMAGENET_PAPER = Preprocessing(tuple(255 * m for m in _IMAGENET_MEAN_RGB), (1.0, 1.0, 1.0), "RGB", 255)
# torchvision's convention: [0, 1] RGB, divided by the per-channel std.
IMAGENET_TORCHVISION = Preprocessing(_IMAGENET_MEAN_RGB, _IMAGENET_STD_RGB, "RGB", 1)
# Per-channel mean of the 50k CIFAR-10 training images (the widely quoted 0.4914, 0.4822, 0.4465, x255); for a
# 45k split or another data set compute it with Preprocessing.from_images(dataset.images).
CIFAR10_PAPER = Preprocessing((125.307, 122.950, 113.865), (1.0, 1.0, 1.0), "RGB", 255)

# PCA of ImageNet RGB pixels in [0, 1] (Krizhevsky et al., 2012, Sec. 4.1). The numbers are those published with
# fb.resnet.torch (datasets/imagenet.lua), the data used to train Facebook's reproduction of the paper's models.
# Columns of the eigenvector matrix are the eigenvectors; eigenvalues in decreasing order.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Normalize:
    """[..., 3, H, W] float RGB tensor in [0, 1] -> the network input described by a `Preprocessing`."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self._mean = torch.tensor(preprocessing.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(preprocessing.pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or img.dim() < 3 or img.shape[-3] != 3:
            raise ValueError(f"Normalize expects a float tensor [..., 3, H, W], got "
                             f"{getattr(img, 'shape', type(img).__name__)}")
        if self.preprocessing.channel_order == "BGR":
            img = img.flip(-3)
        img = img * float(self.preprocessing.input_range)
        return (img - self._mean.to(img.dtype)) / self._std.to(img.dtype)

    def __repr__(self):
        return f"{type(self).__name__}({self.preprocessing})"


class Lighting:
    """AlexNet PCA colour augmentation on a [3, H, W] RGB tensor in [0, 1].

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)`` drawn per image
    (Krizhevsky et al., 2012; alphastd 0.1 as there and in fb.resnet.torch). No clamping, as in fb.resnet.torch.
    """

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC, generator: torch.Generator | None = None):
        if alphastd < 0:
            raise ValueError(f"Lighting alphastd must be >= 0, got {alphastd}")
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            raise ValueError(f"Lighting needs 3 eigenvalues and a 3x3 eigenvector matrix, got "
                             f"{tuple(self.eigval.shape)} and {tuple(self.eigvec.shape)}")
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"Lighting expects an RGB tensor [3, H, W], got {tuple(img.shape)}")
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3, generator=self.generator) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.to(img.dtype).view(3, 1, 1)

    def __repr__(self):
        return f"{type(self).__name__}(alphastd={self.alphastd})"


class RandomShorterSideResize:
    """Resize so that the shorter side is a random integer in [min_size, max_size] (both inclusive; Sec. 3.4)."""

    def __init__(self, min_size: int, max_size: int, interpolation=T.InterpolationMode.BILINEAR):
        if not (1 <= min_size <= max_size):
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.interpolation = interpolation

    def __call__(self, img):
        # torch's RNG, so DataLoader workers (seeded by torch) draw different sizes.
        size = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        return F.resize(img, size, interpolation=self.interpolation)

    def __repr__(self):
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class TenCrop:
    """[C, H, W] tensor -> [10, C, size, size]: crops 0..4 are top-left, top-right, bottom-left, bottom-right and
    centre (torchvision's five_crop order) and crop 5 + i is the horizontal flip of crop i.

    (torchvision's TenCrop instead five-crops the flipped image, which swaps the left and right corners.)
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"TenCrop size must be >= 1, got {size}")
        self.size = int(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"TenCrop of size {self.size} needs an image at least that large, got {h}x{w}")
        five = torch.stack(F.five_crop(img, [self.size, self.size]))
        return torch.cat([five, five.flip(-1)])

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size})"


def _check_sizes(**sizes):
    for name, value in sizes.items():
        check_int(name, value, 1)


def imagenet_train_transform(preprocessing: Preprocessing = IMAGENET_PAPER, *, scale: tuple[int, int] = (256, 480),
                             crop_size: int = 224, flip: bool = True, lighting_std: float = 0.1) -> Callable:
    """PIL image -> [3, crop_size, crop_size] tensor: scale augmentation, random crop, flip, lighting, normalise."""
    _check_sizes(scale_min=scale[0], scale_max=scale[1], crop_size=crop_size)
    if scale[0] < crop_size:
        raise ValueError(f"scale {tuple(scale)} must not go below crop_size={crop_size} (shorter side >= crop)")
    steps = [RandomShorterSideResize(*scale), T.RandomCrop(crop_size)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())
    if lighting_std > 0:
        steps.append(Lighting(lighting_std))
    steps.append(Normalize(preprocessing))
    return T.Compose(steps)


def imagenet_eval_transform(preprocessing: Preprocessing = IMAGENET_PAPER, *, resize_size: int = 256,
                            crop_size: int = 224, ten_crop: bool = False) -> Callable:
    """PIL image -> [3, crop, crop] (centre crop) or [10, 3, crop, crop] (``ten_crop``); shorter side resized first."""
    _check_sizes(resize_size=resize_size, crop_size=crop_size)
    if resize_size < crop_size:
        raise ValueError(f"resize_size={resize_size} must be >= crop_size={crop_size}")
    steps = [T.Resize(resize_size, interpolation=T.InterpolationMode.BILINEAR)]
    if ten_crop:
        # Normalising commutes with cropping, so normalise once and crop the tensor.
        steps += [T.ToTensor(), Normalize(preprocessing), TenCrop(crop_size)]
    else:
        steps += [T.CenterCrop(crop_size), T.ToTensor(), Normalize(preprocessing)]
    return T.Compose(steps)


def cifar_train_transform(preprocessing: Preprocessing = CIFAR10_PAPER, *, crop_size: int = 32,
                          padding: int = 4, flip: bool = True) -> Callable:
    """PIL image -> [3, crop, crop]: mean subtraction, zero-pad ``padding``, random crop, flip (Sec. 4.2).

    Padding comes after mean subtraction, so the padded border is the mean colour (as fb.resnet.torch's CIFAR
    pipeline: ColorNormalize, then RandomCrop(32, 4) with zero padding).
    """
    _check_sizes(crop_size=crop_size)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    steps = [T.ToTensor(), Normalize(preprocessing), T.RandomCrop(crop_size, padding=padding or None, fill=0)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def cifar_eval_transform(preprocessing: Preprocessing = CIFAR10_PAPER) -> Callable:
    """PIL image -> [3, H, W]: mean subtraction only (single view, Sec. 4.2)."""
    return T.Compose([T.ToTensor(), Normalize(preprocessing)])


def average_crop_logits(logits: torch.Tensor, num_crops: int = 10) -> torch.Tensor:
    """Average per-crop logits into per-image logits.

    ``logits``: [N, num_crops, K], or [N * num_crops, K] with an image's crops consecutive (what a model returns
    for a batch of [N, 10, C, H, W] images flattened with ``images.flatten(0, 1)``). Returns [N, K].
    fb.resnet.torch likewise averages (sums) the 10 crops' outputs before the softmax.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    if logits.dim() == 2:
        if logits.shape[0] % num_crops:
            raise ValueError(f"{logits.shape[0]} rows are not a multiple of num_crops={num_crops}")
        logits = logits.view(-1, num_crops, logits.shape[1])
    elif logits.dim() != 3 or logits.shape[1] != num_crops:
        raise ValueError(f"expected logits [N, {num_crops}, K] or [N*{num_crops}, K], got {tuple(logits.shape)}")
    return logits.mean(dim=1)
