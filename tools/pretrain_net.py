#!/usr/bin/env python
"""Train / evaluate a classifier of the plugin on ImageNet or CIFAR-10 with the paper's recipe (Sec 3.4, 4.2).

    python tools/pretrain_net.py                                   # embedded default: configs/imagenet/tiny.yaml
    python tools/pretrain_net.py --config-file configs/imagenet/resnet101.yaml --num-gpus 8
    python tools/pretrain_net.py --config configs/imagenet/resnet101.yaml --num-gpus 8 --resume
    python tools/pretrain_net.py --config configs/cifar/resnet110.yaml PRETRAIN.SOLVER.MAX_ITER 1000
    python tools/pretrain_net.py --config configs/imagenet/resnet50.yaml --eval-only MODEL.WEIGHTS out/model_final.pth

Same flags as detectron2's train_net (--num-gpus, --num-machines, --machine-rank, --dist-url, --resume,
--eval-only, trailing KEY VALUE overrides). At the end it writes OUTPUT_DIR/model_final_d2.pkl: MODEL.WEIGHTS
for configs/coco/frcnn_r101.yaml (ResNet) or frcnn_vgg16.yaml (VGG-16), with its .provenance.json.
"""
import json
import logging
import sys
from pathlib import Path

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.launch import build_argument_parser, launch_checked
from resnet_backbone.engine.pretrain import evaluate_pretrained, run_pretraining

logger = logging.getLogger("resnet_backbone.pretrain_net")

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "imagenet" / "tiny.yaml"


build_parser = build_argument_parser  # every tool's parser goes by this name (tests build it too)


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)  # output dir, config.yaml, detectron2 logging, seeds
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="resnet_backbone")
    return cfg


def worker(args):
    """One process's work (detectron2's launch runs it in every process)."""
    cfg = setup(args)
    if args.eval_only:
        results = evaluate_pretrained(cfg)
    else:
        results = run_pretraining(cfg, resume=args.resume)
    if comm.is_main_process():
        logger.info("results:\n%s", json.dumps(results, indent=2))
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.config_file:
        args.config_file = str(DEFAULT_CONFIG)
        print(f"no --config-file given: using the embedded default {args.config_file}", file=sys.stderr)
    return launch_checked(worker, args)


if __name__ == "__main__":
    main()
