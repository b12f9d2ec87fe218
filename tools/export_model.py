#!/usr/bin/env python
"""Export a detector of the plugin to TorchScript, ONNX, OpenVINO IR or torch.export, as detectron2's
tools/deploy/export_model.py does (TracingAdapter), then run the exported file on a sample image and report its largest
difference from the eager model.

    python tools/export_model.py --config configs/coco/frcnn_r101.yaml --format onnx --output out/export \
           MODEL.WEIGHTS output/coco/frcnn_r101/model_final.pth MODEL.DEVICE cpu
    python tools/export_model.py --config configs/lazy/frcnn_r101.py --format torchscript --output out/export \
           train.init_checkpoint=output/lazy/frcnn_r101/model_final.pth train.device=cpu

--config is a yacs YAML config (trailing KEY VALUE overrides) or a LazyConfig (.py, trailing key=value). The sample
is --sample-image or the first image of the first test dataset, through the config's test-time mapper (resized as
in evaluation). Written to --output: the model (model.ts / model.onnx / model.xml + .bin / backbone.pt2),
export_report.json (what was exported, the difference per output, whether other input sizes work: other_size),
load_and_run.py + sample.npy (loads and runs it in a fresh process with only its runtime) and, for the detector
formats, detections.png (the exported model's detections on the sample; drawn by detectron2's Visualizer, which
needs OpenCV). MODEL.RB_DEPLOY.{ONEDNN, WINOGRAD, COMPILE} are eager-only and refused; MODEL.RB_DEPLOY.FUSE_BN
exports the BN-folded model. "torch.export" exports the backbone (resnet_backbone/engine/detector_export.py says why).
"""
import argparse
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import List

import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.logger import setup_logger

import resnet_backbone  # noqa: F401  (registers the plugin's backbones and heads)
from resnet_backbone.data.register import check_dataset_registered
from resnet_backbone.engine.detector_export import FORMATS, check_exportable_config, export_model
from resnet_backbone.engine.run_config import RunConfig
from resnet_backbone.utils.atomic import atomic_write_text

logger = logging.getLogger("resnet_backbone.export_model")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="a detection config: configs/coco/*.yaml, configs/voc/*.yaml or configs/lazy/*.py")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="output format (default torchscript)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the exported model and the report")
    p.add_argument("--sample-image", metavar="FILE", help="image to trace and compare on (default: the first "
                   "image of the first test dataset)")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="export without weights (a randomly initialised detector, e.g. to try the export)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="OVERRIDES",
                   help="config overrides: KEY VALUE for YAML (MODEL.WEIGHTS out/model_final.pth MODEL.DEVICE cpu), "
                        "key=value for a LazyConfig (train.init_checkpoint=... train.device=cpu)")
    return p


@dataclass
class Detector:
    """A detector ready to export (eval mode, weights loaded) and the config it comes from."""

    model: torch.nn.Module
    run: RunConfig

    @property
    def datasets(self) -> List[str]:
        """The test datasets (the first gives the sample and the picture's class names)."""
        return list(self.run.view.DATASETS.TEST)


def build_detector(args) -> Detector:
    """The detector of --config (YAML or LazyConfig) with its weights, BN folded where MODEL.RB_DEPLOY.FUSE_BN."""
    run = RunConfig.load(args.config_file, args.opts)
    run.check(weights_needed="" if args.allow_random_weights else (
        "the export would hold a randomly initialised detector. Set it to a trained model (e.g. "
        "output/coco/frcnn_r101/model_final.pth), or pass --allow-random-weights to export an untrained one on purpose"))
    check_exportable_config(run.view)
    return Detector(run.inference_model(), run)


def sample_inputs(detector: Detector, image_path=None):
    """One sample as the detector's test loader gives it: [{"image": CHW float in its input format, ...}]."""
    if image_path:
        sample = detector.run.test_mapper()({"file_name": image_path})
    else:
        if not detector.datasets:
            raise ValueError("no sample: the config has no test dataset; pass --sample-image")
        check_dataset_registered(detector.datasets[0])
        sample = next(iter(detector.run.test_loader(detector.datasets[0])))[0]
    sample["image"] = sample["image"].float()
    return [sample]


def draw_detections(detector: Detector, sample, instances, path, max_shown=20):
    """The exported model's detections (network-input coordinates) on the sample image, as a PNG drawn by
    detectron2's Visualizer; None (with a log line) where it cannot be imported (it needs OpenCV)."""
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError as e:
        logger.warning("no detections.png: detectron2's Visualizer is not available (%s; pip install "
                       "opencv-python-headless)", e)
        return None
    image = sample["image"].permute(1, 2, 0).clamp(0, 255).byte().numpy()
    if detector.run.view.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    meta = MetadataCatalog.get(detector.datasets[0]) if detector.datasets else None
    inst = instances.to("cpu")
    if inst.has("scores"):
        inst = inst[inst.scores.argsort(descending=True)[:max_shown]]
    Visualizer(image, meta).draw_instance_predictions(inst).save(path)
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logger(name="resnet_backbone")
    detector = build_detector(args)
    inputs = sample_inputs(detector, args.sample_image)
    logger.info("exporting %s to %s as %s", args.config_file, args.output, args.format)
    result = export_model(detector.model, inputs, args.format, args.output)
    for name, shape, diff in result.outputs:
        logger.info("  %-40s %-16s max abs diff %.3g", name, "x".join(map(str, shape)) or "scalar", diff)
    what = f"{result.detections} detections" if result.detections is not None else "backbone features"
    logger.info("exported %s: %s; on the sample (%s) max abs difference from the eager model: %.3g", result.exported,
                result.path, what, result.max_abs_diff)
    if result.other_size:
        logger.info("input size: %s", result.other_size["note"])
    logger.info("to load and run it in a fresh process: python %s", result.load_script)
    report = dict(result.to_dict(), config=args.config_file, overrides=list(args.opts),
                  sample=inputs[0].get("file_name", ""), image_size=list(inputs[0]["image"].shape[1:]))
    if result.instances is not None:
        picture = draw_detections(detector, inputs[0], result.instances[0]["instances"],
                                  os.path.join(args.output, "detections.png"))
        if picture:
            report["picture"] = picture
    atomic_write_text(os.path.join(args.output, "export_report.json"), json.dumps(report, indent=2))
    if not math.isfinite(result.max_abs_diff):
        logger.warning("the exported model does not return the eager model's detections (see the report)")
    return result


if __name__ == "__main__":
    main()
