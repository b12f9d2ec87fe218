"""The benchmark's "precision-ap" section: one detector checkpoint evaluated on its config's test sets at float32
and at bfloat16 on the deploy path, the way tools/train_net.py --eval-only evaluates (RunConfig.inference_model:
the weights loaded safely, MODEL.RB_DEPLOY.* applied; Trainer.test: detectron2's COCO / VOC evaluators), so that
the AP a reduced precision costs is measured, not assumed. Beside the APs: how far each contender's detections are
from the float32 deploy path's on the same images (paired as the export tool pairs them).
"""
import math
import statistics
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..engine import runtimes
from ..engine.detector_export import compare_outputs

__all__ = ["CONTENDERS", "run_precision_ap"]

# (name, MODEL.RB_DEPLOY settings) evaluated; the first is the reference the others are compared with
_TORCH = ["MODEL.RB_DEPLOY.FUSE_BN", "True", "MODEL.RB_DEPLOY.ONEDNN", "True", "MODEL.RB_DEPLOY.WINOGRAD", "True",
          "MODEL.RB_DEPLOY.CHANNELS_LAST", "True"]
_OPENVINO = ["MODEL.RB_DEPLOY.FUSE_BN", "True", "MODEL.RB_DEPLOY.RUNTIME", "openvino"]
CONTENDERS: Tuple[Tuple[str, List[str]], ...] = (
    ("deploy-fp32", _TORCH + ["MODEL.RB_DEPLOY.PRECISION", "float32"]),
    ("deploy-bf16", _TORCH + ["MODEL.RB_DEPLOY.PRECISION", "bfloat16"]),
    ("deploy-openvino-fp32", _OPENVINO + ["MODEL.RB_DEPLOY.PRECISION", "float32"]),
    ("deploy-openvino-bf16", _OPENVINO + ["MODEL.RB_DEPLOY.PRECISION", "bfloat16"]),
)


class _Recording(nn.Module):
    """The model, keeping each image's detections (on the CPU) by file name for the comparison."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.outputs = model, {}

    def forward(self, inputs):
        outputs = self.model(inputs)
        for item, out in zip(inputs, outputs):
            self.outputs[item.get("file_name", len(self.outputs))] = {"instances": out["instances"].to("cpu"),
                                                                      "size": (item["height"], item["width"])}
        return outputs


def _difference(reference: dict, outputs: dict) -> dict:
    """Per image: the largest difference of paired detections' boxes (relative to the image's longer side) and
    scores, over the images where both give the same number of detections; and how many do not."""
    boxes, scores, differ = [], [], 0
    for key, ref in reference.items():
        out = outputs.get(key)
        if out is None or len(out["instances"]) != len(ref["instances"]):
            differ += 1
            continue
        _, rows, _ = compare_outputs(ref["instances"], out["instances"])
        by_field = {name.rsplit(".", 1)[-1]: diff for name, _, diff in rows}
        if not math.isfinite(max(by_field.values(), default=0.0)):
            differ += 1
            continue
        boxes.append(by_field.get("pred_boxes", 0.0) / max(ref["size"]))
        scores.append(by_field.get("scores", 0.0))
    return {"images": len(reference), "images_with_other_detection_counts": differ,
            "max_box_diff_rel": max(boxes, default=None), "median_box_diff_rel": statistics.median(boxes) if boxes
            else None, "max_score_diff": max(scores, default=None),
            "median_score_diff": statistics.median(scores) if scores else None}


def _evaluate(config_file: str, opts: Sequence[str]) -> Tuple[dict, dict, float]:
    from ..engine.run_config import RunConfig
    from ..engine.trainer import Trainer

    run = RunConfig.load(config_file, list(opts), lazy=False).check(datasets=("TEST",))
    cfg = run.cfg
    model = _Recording(run.inference_model(complete=True))
    start = time.perf_counter()
    with torch.no_grad():
        results = Trainer.test(cfg, model)
    if len(cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test returns a single dataset's results unnamed
        results = {cfg.DATASETS.TEST[0]: results}
    return {k: dict(v) for k, v in results.items()}, model.outputs, time.perf_counter() - start


def run_precision_ap(config_file: str, weights: str, opts: Sequence[str], log) -> dict:
    """Evaluate `weights` under `config_file` (+ `opts`) for every contender of CONTENDERS that can run here (the
    OpenVINO ones need openvino; bfloat16 falls back to float32, with a warning, on CPUs without bfloat16
    instructions, which `native_bf16` records). Returns the results per contender and the differences."""
    from ..deploy.precision import native_bf16

    out = {"config": config_file, "weights": weights, "opts": list(opts), "native_bf16": native_bf16(),
           "contenders": {}, "skipped": {}}
    reference = None
    with tempfile.TemporaryDirectory(prefix="rb_precision_ap_") as tmp:
        for name, deploy in CONTENDERS:
            if "openvino" in name and runtimes.missing("openvino"):
                out["skipped"][name] = runtimes.missing("openvino")
                continue
            log.info("precision-ap: %s on %s", name, weights)
            results, outputs, seconds = _evaluate(config_file, [*opts, "MODEL.WEIGHTS", weights, "MODEL.DEVICE",
                                                                "cpu", "OUTPUT_DIR", f"{tmp}/{name}", *deploy])
            entry = {"results": results, "seconds": seconds}
            if reference is None:
                reference = outputs
            else:
                entry["vs_" + CONTENDERS[0][0]] = _difference(reference, outputs)
            out["contenders"][name] = entry
    return out


def _fmt(value, spec=".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def precision_ap_rows(key: str, result: dict) -> List[str]:
    """One line per contender: AP / AP50 of each test set, and the difference to the float32 deploy path."""
    lines = [f"precision-ap {key}: {result['weights']} (bfloat16 instructions: {result['native_bf16']})"]
    for name, entry in result["contenders"].items():
        aps = []
        for dataset, metrics in entry["results"].items():
            bbox = metrics.get("bbox", {})
            aps.append(f"{dataset} AP {_fmt(bbox.get('AP'), '.2f')} AP50 {_fmt(bbox.get('AP50'), '.2f')}")
        line = f"  {name:<22} " + "; ".join(aps) + f" ({entry['seconds']:.0f} s)"
        diff = entry.get("vs_" + CONTENDERS[0][0])
        if diff:
            line += (f"; vs {CONTENDERS[0][0]}: {diff['images_with_other_detection_counts']} of {diff['images']} "
                     f"images with another number of detections, elsewhere boxes max {_fmt(diff['max_box_diff_rel'])}"
                     f" (median {_fmt(diff['median_box_diff_rel'])}) of the image side, scores max "
                     f"{_fmt(diff['max_score_diff'])} (median {_fmt(diff['median_score_diff'])})")
        lines.append(line)
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"  {name}: not evaluated: {reason}")
    return lines


def section_results(args, log) -> Dict[str, dict]:
    return {"precision_ap": run_precision_ap(args.ap_config, args.ap_weights, args.ap_opts, log)}
