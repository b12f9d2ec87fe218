"""Reference numbers from He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016, arXiv 1512.03385).

Tables as data, copied from the paper; code that compares against them (report.py, the tests) reads them here.
Each value keeps the precision the paper prints (`Reference.precision`), so a comparison can say whether a
measured number agrees "to the paper's precision".
"""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["Reference", "TABLE1_FLOPS", "VGG_FLOPS", "TABLE6_PARAMS", "TABLE6_TEST_ERROR", "DETECTION_TABLE",
           "reference_for"]


@dataclass(frozen=True)
class Reference:
    """One number of the paper: its value, the unit of its last printed digit, and where it is printed."""

    value: float
    precision: float
    source: str

    def agrees(self, measured: float) -> bool:
        """True if `measured`, rounded as the paper rounds, reads the same (within half a printed digit)."""
        return abs(measured - self.value) <= self.precision / 2 + 1e-9 * self.precision


# Table 1, last row: FLOPs of the ImageNet architectures, in multiply-adds (the paper counts a multiply-add as one
# FLOP; e.g. Sec 3.3: "the 34-layer baseline has 3.6 billion FLOPs (multiply-adds)"). Key: depth.
TABLE1_FLOPS: Dict[int, Reference] = {
    depth: Reference(gflops * 1e9, 0.1e9, "Table 1")
    for depth, gflops in ((18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6), (152, 11.3))
}

# Sec 4.1 ("Deeper Bottleneck Architectures"): "VGG-16/19 nets (15.3/19.6 billion FLOPs)". Key: VGG depth.
VGG_FLOPS: Dict[int, Reference] = {
    16: Reference(15.3e9, 0.1e9, "Sec 4.1"),
    19: Reference(19.6e9, 0.1e9, "Sec 4.1"),
}

# Table 6: parameters of the CIFAR-10 ResNets (option A shortcuts, so the plain nets have the same count:
# Sec 4.2, "our residual models have exactly the same depth, width, and number of parameters as the plain
# counterparts"). Key: depth 6n+2. The paper prints 2 decimals below 1M and 1 decimal above.
TABLE6_PARAMS: Dict[int, Reference] = {
    20: Reference(0.27e6, 0.01e6, "Table 6"),
    32: Reference(0.46e6, 0.01e6, "Table 6"),
    44: Reference(0.66e6, 0.01e6, "Table 6"),
    56: Reference(0.85e6, 0.01e6, "Table 6"),
    110: Reference(1.7e6, 0.1e6, "Table 6"),
    1202: Reference(19.4e6, 0.1e6, "Table 6"),
}

# Table 6: CIFAR-10 test error (%) of the ResNets (best of 5 runs; ResNet-110 also "6.61 +- 0.16" over 5 runs).
TABLE6_TEST_ERROR: Dict[int, Reference] = {
    depth: Reference(error, 0.01, "Table 6")
    for depth, error in ((20, 8.75), (32, 7.51), (44, 7.17), (56, 6.97), (110, 6.43), (1202, 7.93))
}

# Tables 7 and 8: Faster R-CNN object detection, VGG-16 vs ResNet-101, in percent.
# (benchmark, metric) -> {model: value}; VOC trained on 07+12 (2007 test) and 07++12 (2012 test), COCO on train.
DETECTION_TABLE: Dict[tuple, Dict[str, float]] = {
    ("PASCAL VOC 2007 test", "mAP@.5"): {"VGG-16": 73.2, "ResNet-101": 76.4},  # Table 7
    ("PASCAL VOC 2012 test", "mAP@.5"): {"VGG-16": 70.4, "ResNet-101": 73.8},  # Table 7
    ("COCO val", "mAP@.5"): {"VGG-16": 41.5, "ResNet-101": 48.4},  # Table 8
    ("COCO val", "mAP@[.5,.95]"): {"VGG-16": 21.2, "ResNet-101": 27.2},  # Table 8
}


def reference_for(family: str, depth: int, quantity: str) -> Optional[Reference]:
    """The paper's number for a model, or None where the paper prints none.

    Args:
        family: "imagenet" (ResNets and their plain counterparts of Table 1: the same layers, so the same FLOPs up
            to the projection shortcuts), "cifar" (Table 6) or "vgg".
        depth: the model's depth (18, 110, 16, ...).
        quantity: "flops" (multiply-adds) or "params".
    """
    tables = {
        ("imagenet", "flops"): TABLE1_FLOPS,
        ("vgg", "flops"): VGG_FLOPS,
        ("cifar", "params"): TABLE6_PARAMS,
    }
    if quantity not in ("flops", "params"):
        raise ValueError(f"unknown quantity {quantity!r}; allowed: 'flops', 'params'")
    if family not in ("imagenet", "cifar", "vgg"):
        raise ValueError(f"unknown model family {family!r}; allowed: 'imagenet', 'cifar', 'vgg'")
    return tables.get((family, quantity), {}).get(depth)


# Tables 7-8 (Sec 4.3, Appendix A): Faster R-CNN with VGG-16 vs ResNet-101, as (benchmark, metric) -> model -> %.
# VOC: trained on 07+12 (VOC 2007 test) and 07++12 (VOC 2012 test); COCO: trained on train, evaluated on val.
DETECTION_TABLE: Dict[tuple, Dict[str, float]] = {
    ("PASCAL VOC 2007 test", "mAP@.5"): {"VGG-16": 73.2, "ResNet-101": 76.4},
    ("PASCAL VOC 2012 test", "mAP@.5"): {"VGG-16": 70.4, "ResNet-101": 73.8},
    ("COCO val", "mAP@.5"): {"VGG-16": 41.5, "ResNet-101": 48.4},
    ("COCO val", "mAP@[.5,.95]"): {"VGG-16": 21.2, "ResNet-101": 27.2},
}
