"""The sections of tools/benchmark.py, one entry each: a new section is one `register(Section(...))` here.

A section says what it measures (`doc`, shown in the tool's help), which command-line options it adds and checks,
its tiny --quick settings, how it runs (`run(args, settings, log)` -> {result key: result dict}) and the lines of
the text table it adds beyond the timed groups (`rows(key, result)`); the tool and output.py know nothing else
about it. Timed groups ("train" / "inference" in a result) are tabled by output.py for every section alike.
"""
import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

__all__ = ["Section", "SECTIONS", "register", "default_sections", "section_of", "deploy_rows"]

REPO = Path(__file__).resolve().parents[2]


def _no_arguments(parser: argparse.ArgumentParser):
    return None


def _no_check(args: argparse.Namespace):
    return None


def _no_rows(key: str, result: dict) -> List[str]:
    return []


@dataclass(frozen=True)
class Section:
    name: str  # the --sections choice
    doc: str  # what it measures (the tool's help)
    run: Callable[..., Dict[str, dict]]  # (args, settings, log) -> {result key: result}
    rows: Callable[[str, dict], List[str]] = _no_rows  # table lines of one result beyond its timed groups
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    check: Callable[[argparse.Namespace], None] = _no_check  # SystemExit naming a bad option
    quick: dict = field(default_factory=dict)  # --quick: tiny settings of its options (a smoke test)
    default: bool = True  # part of a run without --sections


SECTIONS: Dict[str, Section] = {}


def register(section: Section) -> Section:
    if section.name in SECTIONS:
        raise ValueError(f"benchmark section {section.name!r} is registered twice")
    SECTIONS[section.name] = section
    return section


def default_sections() -> List[str]:
    return [name for name, s in SECTIONS.items() if s.default]


def _fmt_diff(value) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) else str(value)


def deploy_rows(key: str, result: dict) -> List[str]:
    """Output differences, peers skipped, kernels the deploy path chose and what it holds beyond its parameters."""
    lines = []
    for what, diffs in (("outputs vs detectron2 (float32), max relative difference", "max_rel_diff_vs_detectron2"),
                        ("outputs vs the reference (float32), max abs difference of paired detections",
                         "max_abs_diff_vs_reference")):
        if result.get(diffs):
            lines.append(f"{what}, {key}: " + ", ".join(f"{k} {_fmt_diff(v)}" for k, v in result[diffs].items()))
    for peer, reason in result.get("peers_skipped", {}).items():
        lines.append(f"peer {peer} not measured, {key}: {reason}")
    lines.extend(_kernel_lines(key, result.get("kernel_choice")))
    state = result.get("deploy_state")
    if state and state.get("derived_weight_bytes"):
        params, derived = state["parameter_bytes"], state["derived_weight_bytes"]
        lines.append(f"deploy state {key}: {state['winograd_layers']} of {state['winograd_eligible_layers']} "
                     f"eligible 3x3 layers run Winograd; derived weights (Winograd transforms, copies in another "
                     f"memory format) {derived / 2**20:.0f} MiB (+{derived / params:.0%} of the "
                     f"{params / 2**20:.0f} MiB of parameters), scratch {state['workspace_bytes'] / 2**20:.0f} "
                     f"MiB; both persist between calls, so the per-call peak memory above leaves them out")
    return lines


def _kernel_lines(key: str, report) -> List[str]:
    """The kernels plugin-deploy chose per layer type, and what choosing them cost."""
    if not report or "plugin-deploy" not in report.get("chosen", {}):
        return []
    lines = [f"kernels chosen by plugin-deploy, {key} ({report['measured']} layer shapes measured in "
             f"{report['seconds']:.1f} s, {report['cached']} from the cache), per layer type:"]
    for kind, counts in report["chosen"]["plugin-deploy"].items():
        lines.append(f"  {kind:<32} " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda i: -i[1])))
    return lines


# ------------------------------------------------------------------------------------------------------ backbone

def _backbone_arguments(p):
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101], help="backbone depths")
    p.add_argument("--batch", type=int, default=2, help="backbone batch size")
    p.add_argument("--size", type=int, default=224, help="backbone input side (square)")
    p.add_argument("--norm", default="FrozenBN", choices=("FrozenBN", "BN"), help="backbone norm (all contenders)")
    p.add_argument("--freeze-at", type=int, default=2, help="backbone freeze_at (detectron2's meaning)")


def _positive(args, *names):
    for name in names:
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _run_backbone(args, settings, log):
    from .suite import run_backbone_section

    out = {}
    for depth in args.depths:
        log.info("backbone ResNet-%d: batch %d at %d, %s, freeze_at %d", depth, args.batch, args.size, args.norm,
                 args.freeze_at)
        out[f"backbone_r{depth}"] = run_backbone_section(depth, norm=args.norm, freeze_at=args.freeze_at,
                                                         batch=args.batch, size=args.size, settings=settings)
    return out


register(Section(
    "backbone",
    "training step (forward + backward) and inference of the plugin ResNet-{50,101}, detectron2's built-in "
    "build_resnet_backbone (same depth / norm / freeze_at / weights) and torchvision's resnet trunk; inference also "
    "through the deploy path (resnet_backbone.deploy: BN folded; on CPU fused oneDNN convolutions with each layer's "
    "kernel measured and cached on disk; channels-last), for the plugin and for detectron2's own backbone "
    "(\"-direct\": without Winograd, \"-rules\": the fixed kernel rule, \"-bf16\" / \"-fp16\": reduced precision), "
    "and the peers a user deploys with (--peers: OpenVINO f32 / bf16, ONNX Runtime, torch.compile inductor with "
    "freezing) on the same weights and input. Training groups also time \"reference-copy\" (the noise floor) and "
    "\"-amp\" contenders where asked.",
    _run_backbone, deploy_rows, _backbone_arguments, lambda a: _positive(a, "batch", "size"),
    quick=dict(depths=[50], batch=1, size=64)))


# ------------------------------------------------------------------------------------------------------ detectors

def _detector_arguments(p):
    if any(a.dest == "det_images" for a in p._actions):  # shared by the two detector sections
        return
    p.add_argument("--det-images", type=int, default=1, help="images per detector iteration")
    p.add_argument("--det-size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"),
                   help="detector input size (images are fed at this size; no resizing)")
    p.add_argument("--c4-config", default=str(REPO / "configs/coco/frcnn_r101.yaml"))
    p.add_argument("--vgg-config", default=str(REPO / "configs/coco/frcnn_vgg16.yaml"))


def _detector_check(args):
    _positive(args, "det_images")
    if min(args.det_size) < 64:
        raise SystemExit(f"--det-size must be >= 64 on both sides, got {args.det_size}")


def _detector_run(kind, key, label):
    def run(args, settings, log):
        from .suite import run_detector_section

        h, w = args.det_size
        log.info("%s: %d image(s) of %dx%d", label, args.det_images, h, w)
        config = args.c4_config if kind == "c4" else args.vgg_config
        return {key: run_detector_section(kind, config, images=args.det_images, height=h, width=w,
                                          settings=settings)}

    return run


_DETECTOR_QUICK = dict(det_images=1, det_size=[128, 160])
register(Section(
    "c4",
    "Faster R-CNN C4 R-101: the plugin's configs/coco/frcnn_r101.yaml vs detectron2's built-in R-101-C4 (the same "
    "config with build_resnet_backbone + Res5ROIHeads, same weights): a full training iteration (forward, backward, "
    "SGD step with lr 0 so the work stays the same) and inference, with the deploy path and the peers.",
    _detector_run("c4", "c4_r101", "Faster R-CNN C4 R-101"), deploy_rows, _detector_arguments, _detector_check,
    quick=_DETECTOR_QUICK))
register(Section(
    "vgg16",
    "the plugin's VGG-16 Faster R-CNN (configs/coco/frcnn_vgg16.yaml): training iteration and inference, with the "
    "deploy path and the peers.",
    _detector_run("vgg16", "vgg16", "Faster R-CNN VGG-16"), deploy_rows, _detector_arguments, _detector_check,
    quick=_DETECTOR_QUICK))


# ------------------------------------------------------------------------------------------------------ pipeline

def _pipeline_arguments(p):
    p.add_argument("--pipeline-workers", type=int, default=None, help="loader workers (default: min(2, CPUs))")
    p.add_argument("--pipeline-batch", type=int, default=8)
    p.add_argument("--pipeline-batches", type=int, default=6, help="timed loader batches")
    p.add_argument("--pipeline-image-size", type=int, default=320, help="side of the generated PNGs")
    p.add_argument("--pipeline-scale", type=int, nargs=2, default=[256, 480], help="scale augmentation range")
    p.add_argument("--pipeline-crop", type=int, default=224)
    p.add_argument("--pipeline-model", default="resnet50", help="classifier whose training rate is compared")
    p.add_argument("--pipeline-root", default=None, help="where to write the generated set (default: a temp dir)")


def _run_pipeline(args, settings, log):
    from .suite import run_pipeline_section

    workers = args.pipeline_workers if args.pipeline_workers is not None else min(2, os.cpu_count() or 1)
    log.info("input pipeline: %d worker(s); model %s", workers, args.pipeline_model)
    return {"pipeline": run_pipeline_section(
        model_name=args.pipeline_model, batch=args.pipeline_batch, crop_size=args.pipeline_crop,
        image_size=args.pipeline_image_size, scale=tuple(args.pipeline_scale), num_workers=workers,
        num_batches=args.pipeline_batches, settings=settings, root=args.pipeline_root)}


def _pipeline_rows(key, pipe):
    lp = pipe["loader"]
    return [f"input pipeline: {lp['images_per_s']:.1f} images/s with {lp['num_workers']} worker(s) "
            f"({lp['images_per_s_per_worker']:.1f} per worker, {lp['image_size']}px PNG -> scale "
            f"{tuple(lp['scale'])} crop {lp['crop_size']}); {pipe['model']} trains on "
            f"{pipe['model_images_per_s']:.1f} images/s -> {pipe['workers_needed_to_keep_up']:.2f} worker(s) keep up"]


register(Section(
    "pipeline",
    "images/s of the pretraining input pipeline (PNG decode + scale augmentation + crop + flip + lighting, per "
    "worker) next to images/s a plugin classifier consumes in a training step.",
    _run_pipeline, _pipeline_rows, _pipeline_arguments,
    lambda a: _positive(a, "pipeline_batch", "pipeline_batches", "pipeline_crop"),
    quick=dict(pipeline_image_size=64, pipeline_scale=[64, 80], pipeline_crop=56, pipeline_batch=2,
               pipeline_batches=2, pipeline_workers=0, pipeline_model="resnet18")))


# ------------------------------------------------------------------------------------------------------ demo

def _demo_arguments(p):
    p.add_argument("--demo-iters", type=int, default=100, help="training iterations of each demo run")


def _demo_check(args):
    from .demo_pair import WARMUP_ITERS

    if args.demo_iters <= WARMUP_ITERS:
        raise SystemExit(f"--demo-iters must be > {WARMUP_ITERS} (the first {WARMUP_ITERS} iterations are not "
                         f"timed), got {args.demo_iters}")


def _run_demo(args, settings, log):
    from .demo_pair import run_demo_pair

    return {"demo": run_demo_pair(str(Path(args.output_dir) / "demo"), device=str(settings.device),
                                  iters=args.demo_iters, log=log.info)}


def _demo_rows(key, demo):
    parts = []
    for name, c in demo["contenders"].items():
        spi = c.get("seconds_per_iteration")
        parts.append(f"{name} {spi:.3f} s/iter, AP50 {c.get('AP50')}" if c["ok"] and spi else f"{name} FAILED")
    ratio = demo.get("time_ratio_plugin_over_detectron2")
    return [f"demo detector ({demo['iterations']} iterations on {demo['device']}, first "
            f"{demo['warmup_iterations']} not timed): " + "; ".join(parts)
            + (f"; time plugin / detectron2 = {ratio:.3f}" if ratio else "")]


register(Section(
    "demo",
    "(only when listed) --demo-iters iterations of the demo's detector (configs/coco/frcnn_r101.yaml + "
    "configs/demo) through tools/train_net.py, the plugin's and detectron2's built-in R-101-C4 one after the "
    "other: seconds per iteration, ratio, AP50 (minutes of training).",
    _run_demo, _demo_rows, _demo_arguments, _demo_check, default=False))


# ------------------------------------------------------------------------------------------------------ precision-ap

def _ap_arguments(p):
    p.add_argument("--ap-config", default=None, help="precision-ap: the detector's config (e.g. the config.yaml its "
                   "training wrote beside model_final.pth)")
    p.add_argument("--ap-weights", default=None, help="precision-ap: the detector checkpoint (model_final.pth)")
    p.add_argument("--ap-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="precision-ap: config overrides (e.g. DATASETS.TEST '(\"rb_digits_coco_val\",)')")


def _ap_check(args):
    if "precision-ap" in args.sections and not (args.ap_config and args.ap_weights):
        raise SystemExit("--sections precision-ap needs --ap-config and --ap-weights (a trained detector: its AP "
                         "is what the section compares)")
    if len(args.ap_opts) % 2:
        raise SystemExit(f"--ap-opts takes KEY VALUE pairs, got {len(args.ap_opts)} items")


def _run_precision_ap(args, settings, log):
    from .precision_ap import section_results

    return section_results(args, log)


def _precision_ap_rows(key, result):
    from .precision_ap import precision_ap_rows

    return precision_ap_rows(key, result)


register(Section(
    "precision-ap",
    "(only when listed) one trained detector (--ap-config, --ap-weights) evaluated on its config's test sets as "
    "tools/train_net.py --eval-only does (detectron2's evaluators), on the deploy path at float32 and at bfloat16, "
    "with torch's kernels and with OpenVINO underneath (MODEL.RB_DEPLOY.RUNTIME openvino): AP / AP50 of each and "
    "the difference of its detections from float32's on the same images.",
    _run_precision_ap, _precision_ap_rows, _ap_arguments, _ap_check, default=False))


def section_of(key: str, result: dict) -> Optional[Section]:
    """The section that produced a result (recorded in it as "section" by the tool)."""
    return SECTIONS.get(result.get("section")) if isinstance(result, dict) else None
