#!/usr/bin/env python
"""resnet_backbone: the ResNet paper (He et al., CVPR 2016) as a Detectron2 plugin.

detectron2 is not on PyPI under its own name, so it is not an install requirement here:
`python tools/setup_env.py` (or `make setup`) provides it.
"""
from setuptools import find_packages, setup

setup(
    name="resnet_backbone",
    version="0.1.0",
    description="Paper-faithful ResNets (He et al., 2016) as a Detectron2 backbone plugin",
    python_requires=">=3.10",
    packages=find_packages(include=["resnet_backbone", "resnet_backbone.*"]),
    # the deploy path's Winograd transforms, compiled on first use (or by tools/setup_env.py) with the C compiler
    package_data={"resnet_backbone.deploy": ["csrc/*.c"]},
    install_requires=[
        "torch>=1.13",
        "torchvision>=0.14",
        "fvcore",
        "pycocotools>=2.0.2",
        "numpy",
        "Pillow",
        "matplotlib",
        "PyYAML",
        "tqdm",
        "tabulate",
        # detectron2's Visualizer (tools/predict.py, the demo's pictures) imports cv2; detectron2 does not require it
        "opencv-python-headless",
    ],
    # requirements/test-constraints.txt pins the versions the suite was run with (applied by tools/setup_env.py)
    # deploy: the runtimes tools/export_model.py writes for and tools/benchmark.py compares with (OpenVINO pinned to
    # the version the speed table and the export tests ran with)
    extras_require={"test": ["pytest>=7", "hypothesis>=6"], "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
                    "deploy": ["onnx>=1.14", "onnxruntime>=1.16", "openvino==2026.4.1"],
                    # the demo's real images: scikit-learn's bundled handwritten digits (tools/demo.py)
                    "demo": ["scikit-learn>=1.0"]},
)
