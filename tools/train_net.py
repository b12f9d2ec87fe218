#!/usr/bin/env python
"""Train / evaluate a detector of the plugin with detectron2 (Faster R-CNN ResNet-101 vs VGG-16, paper Tables 7-8).

    python tools/train_net.py --config configs/coco/frcnn_r101.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/voc/frcnn_vgg16.yaml --eval-only MODEL.WEIGHTS out/model_final.pth

Evaluation is chosen from the dataset: COCO mAP@[.5:.95] / mAP@.5 (pycocotools) or VOC mAP@.5.
"""

from detectron2.engine import default_setup

import resnet_backbone  # noqa: F401  (registers the plugin's backbones and heads)
from resnet_backbone.checkpoint.frozen import check_training_weights
from resnet_backbone.engine.launch import build_argument_parser, parse_and_launch
from resnet_backbone.engine.run_config import RunConfig
from resnet_backbone.engine.trainer import Trainer, write_eval_results


build_parser = build_argument_parser  # every tool's parser goes by this name (tests build it too)


def setup(args):
    cfg = RunConfig.load(args.config_file, args.opts, lazy=False).check(datasets=("TRAIN", "TEST")).cfg
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def run(cfg, args):
    """Train (or, with --eval-only, evaluate) in this process; returns (evaluation results, model)."""
    if args.eval_only:
        model = RunConfig(cfg).inference_model(resume=args.resume)  # weights loaded safely, MODEL.RB_DEPLOY.* applied
        return Trainer.test(cfg, model), model
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    check_training_weights(cfg, trainer.model, trainer.checkpointer.last_load_report)  # frozen layers got weights
    trainer.train()
    # DefaultTrainer's final evaluation ran on every rank (its results are empty on ranks > 0); evaluate here only
    # when it did not run at all (nothing left to train), so that all ranks enter the same collectives
    results = trainer._last_eval_results if hasattr(trainer, "_last_eval_results") else Trainer.test(cfg, trainer.model)
    return results, trainer.model


def worker(args):
    """One process of the job (detectron2's launch starts one per GPU / CPU worker)."""
    cfg = setup(args)
    results, _ = run(cfg, args)
    write_eval_results(cfg, results, config_file=args.config_file)  # rank 0 only
    return results


def main(argv=None):
    return parse_and_launch(worker, argv)


if __name__ == "__main__":
    main()
