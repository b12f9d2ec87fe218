#!/usr/bin/env python
"""Export a detector of the plugin to TorchScript, ONNX or torch.export, as detectron2's tools/deploy/export_model.py
does (TracingAdapter), then run the exported file on a sample image and report its largest difference from the eager
model.

    python tools/export_model.py --config configs/coco/frcnn_r101.yaml --format onnx --output out/export \
           MODEL.WEIGHTS output/coco/frcnn_r101/model_final.pth MODEL.DEVICE cpu

The sample is --sample-image (resized as the test loader does) or the first image of DATASETS.TEST[0]. Written to
--output: the model (model.ts / model.onnx / backbone.pt2), export_report.json (what was exported, per-output
differences) and, for the detector formats, detections.png (the exported model's detections on the sample).
MODEL.RB_DEPLOY.{ONEDNN, WINOGRAD, COMPILE} are eager-only and refused; MODEL.RB_DEPLOY.FUSE_BN exports the BN-folded
model. "torch.export" exports the backbone (see resnet_backbone/engine/detector_export.py for why).
"""
import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from detectron2.data import MetadataCatalog, build_detection_test_loader, detection_utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import resnet_backbone  # noqa: E402,F401  (registers the plugin's backbones and heads)
from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer  # noqa: E402
from resnet_backbone.checkpoint.preprocessing import check_preprocessing  # noqa: E402
from resnet_backbone.data.checked_mapper import CheckedDatasetMapper  # noqa: E402
from resnet_backbone.data.register import check_dataset_registered, register_synthetic_datasets  # noqa: E402
from resnet_backbone.deploy import apply_deploy_config  # noqa: E402
from resnet_backbone.engine.config_io import check_device, load_config  # noqa: E402
from resnet_backbone.engine.detector_export import FORMATS, check_exportable_config, export_model  # noqa: E402
from resnet_backbone.utils.atomic import atomic_write_text  # noqa: E402

logger = logging.getLogger("resnet_backbone.export_model")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                   help="a detection config (configs/coco/*.yaml, configs/voc/*.yaml)")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="output format (default torchscript)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the exported model and the report")
    p.add_argument("--sample-image", metavar="FILE", help="image to trace and compare on (default: the first "
                   "image of DATASETS.TEST[0])")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="export with MODEL.WEIGHTS empty (a randomly initialised detector, e.g. to try the export)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS out/model_final.pth MODEL.DEVICE cpu")
    return p


def sample_inputs(cfg, image_path=None):
    """One sample as the detector's test loader gives it: [{"image": CHW float in INPUT.FORMAT, "height", "width"}]."""
    if image_path:
        original = detection_utils.read_image(image_path, format=cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        image = resize.get_transform(original).apply_image(original)
        return [{"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
                 "height": original.shape[0], "width": original.shape[1], "file_name": image_path}]
    if not cfg.DATASETS.TEST:
        raise ValueError("no sample: DATASETS.TEST is empty; pass --sample-image")
    register_synthetic_datasets()
    check_dataset_registered(cfg.DATASETS.TEST[0])
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=CheckedDatasetMapper(cfg, is_train=False))
    sample = next(iter(loader))[0]
    sample["image"] = sample["image"].float()
    return [sample]


def draw_detections(cfg, sample, instances, path, max_shown=20):
    """The exported model's detections (network-input coordinates) on the sample image, as a PNG drawn by
    detectron2's Visualizer; None (with a log line) where it cannot be imported (it needs OpenCV)."""
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError as e:
        logger.warning("no detections.png: detectron2's Visualizer is not available (%s; pip install "
                       "opencv-python-headless)", e)
        return None
    image = sample["image"].permute(1, 2, 0).clamp(0, 255).byte().numpy()
    if cfg.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    inst = instances.to("cpu")
    if inst.has("scores"):
        inst = inst[inst.scores.argsort(descending=True)[:max_shown]]
    Visualizer(image, meta).draw_instance_predictions(inst).save(path)
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logger(name="resnet_backbone")
    cfg = load_config(args.config_file, args.opts)
    check_device(cfg.MODEL.DEVICE)
    check_exportable_config(cfg)
    if not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        raise ValueError("MODEL.WEIGHTS is empty: the export would hold a randomly initialised detector. Pass "
                         "MODEL.WEIGHTS <trained model, e.g. output/coco/frcnn_r101/model_final.pth>, or "
                         "--allow-random-weights to export an untrained one on purpose")
    if cfg.MODEL.RB_WEIGHTS.CHECK_PREPROCESSING:
        check_preprocessing(cfg, cfg.MODEL.WEIGHTS)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    model = build_model(cfg)
    SafeDetectionCheckpointer(model, allow_partial=cfg.MODEL.RB_WEIGHTS.ALLOW_PARTIAL).load(cfg.MODEL.WEIGHTS)
    model.eval()
    model = apply_deploy_config(cfg, model)  # FUSE_BN / CHANNELS_LAST: the exportable part of the deploy path
    inputs = sample_inputs(cfg, args.sample_image)
    logger.info("exporting %s to %s as %s", args.config_file, args.output, args.format)
    result = export_model(model, inputs, args.format, args.output)
    for name, shape, diff in result.outputs:
        logger.info("  %-40s %-16s max abs diff %.3g", name, "x".join(map(str, shape)) or "scalar", diff)
    what = f"{result.detections} detections" if result.detections is not None else "backbone features"
    logger.info("exported %s: %s; on the sample (%s) max abs difference from the eager model: %.3g", result.exported,
                result.path, what, result.max_abs_diff)
    report = dict(result.to_dict(), config=args.config_file, weights=cfg.MODEL.WEIGHTS,
                  sample=inputs[0].get("file_name", ""), image_size=list(inputs[0]["image"].shape[1:]))
    if result.instances is not None:
        instances = result.instances[0]["instances"]
        picture = draw_detections(cfg, inputs[0], instances, os.path.join(args.output, "detections.png"))
        if picture:
            report["picture"] = picture
    atomic_write_text(os.path.join(args.output, "export_report.json"), json.dumps(report, indent=2))
    if not math.isfinite(result.max_abs_diff):
        logger.warning("the exported model does not return the eager model's detections (see the report)")
    return result


if __name__ == "__main__":
    main()
