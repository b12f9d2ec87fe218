#!/usr/bin/env python
"""The paper's CIFAR-10 depth study (Sec 4.2): plain vs residual nets at several depths, training and test error
curves in one figure (like Fig. 6) and the final test errors beside Table 6.

    python tools/cifar_study.py                        # embedded default: generated CIFAR-format set, 30 iterations
    python tools/cifar_study.py --data-root datasets/cifar10 --num-gpus 1      # the paper's 64k-iteration schedule
    python tools/cifar_study.py --data-root datasets/cifar10 --depths 20 32 44 56 --iters 8000 MODEL.DEVICE cpu

Writes <output>/<kind><depth>/ (checkpoints, metrics.json) per network, <output>/cifar_study.png and
<output>/cifar_study.md. Trailing KEY VALUE pairs override every network's config.
"""
import argparse
import os
from pathlib import Path

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from resnet_backbone.engine.cifar_study import (
    DEFAULT_DEPTHS,
    KINDS,
    embedded_settings,
    format_study_table,
    plot_study,
    run_study,
    scale_schedule,
    study_config,
)
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.launch import launch_checked
from resnet_backbone.utils.atomic import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "cifar"
EMBEDDED_ITERS = 30
EMBEDDED_BATCH = 16


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="", help="folder holding cifar-10-batches-py; without it the "
                        "embedded generated set is used")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS), help="depths 6n+2")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--iters", type=int, default=None, help="iterations per network (the schedule is scaled; "
                        f"default: the configs' 64k, or {EMBEDDED_ITERS} on the embedded set)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per iteration (lr scaled linearly; "
                        f"default: the configs' 128, or {EMBEDDED_BATCH} on the embedded set)")
    parser.add_argument("--config-dir", default=str(CONFIG_DIR), help="where <kind><depth>.yaml and "
                        "Base-CIFAR10.yaml live")
    parser.add_argument("--output", default="output/cifar_study")
    parser.add_argument("--resume", action="store_true", help="continue each network from its last checkpoint")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def _configs(args):
    embedded = not args.data_root
    tiny = load_config(os.path.join(args.config_dir, "tiny.yaml")) if embedded else None
    iters = args.iters or (EMBEDDED_ITERS if embedded else None)
    batch = args.batch_size or (EMBEDDED_BATCH if embedded else None)
    configs = []
    for kind in args.kinds:
        for depth in args.depths:
            cfg = study_config(args.config_dir, kind, depth, args.opts)  # clear errors for bad overrides
            if embedded:
                embedded_settings(cfg, tiny)
            else:
                cfg.PRETRAIN.DATASET.ROOT = os.path.abspath(args.data_root)
            if iters or batch:
                scale_schedule(cfg, iters or cfg.PRETRAIN.SOLVER.MAX_ITER, batch)
            cfg.merge_from_list(list(args.opts))  # the command line wins over the study's settings
            configs.append((kind, depth, cfg))
    return configs


def worker(args):
    logger = setup_logger(args.output, distributed_rank=comm.get_rank(), name="resnet_backbone")
    runs = run_study(_configs(args), args.output, resume=args.resume)
    if comm.is_main_process():
        figure = plot_study(runs, os.path.join(args.output, "cifar_study.png"))
        table = format_study_table(runs)
        atomic_write_text(os.path.join(args.output, "cifar_study.md"), table + "\n")
        logger.info("figure: %s", figure)
        print("CIFAR-10 test error after training, beside the paper's Table 6:\n" + table)
    return runs


def main(argv=None):
    args = build_parser().parse_args(argv)
    if len(args.opts) % 2:
        build_parser().error(f"config overrides come as KEY VALUE pairs, got {args.opts}")
    return launch_checked(worker, args)


if __name__ == "__main__":
    main()
