#!/usr/bin/env python
"""Speed, work and memory of the plugin's backbones and detectors next to detectron2's and torchvision's, in one run.

    python tools/benchmark.py                          # everything, defaults sized for a 2-core CPU
    python tools/benchmark.py --threads 1 --repeats 15 # steadier medians on a busy machine
    python tools/benchmark.py --sections backbone --depths 101 --batch 4 --size 320
    python tools/benchmark.py --quick                  # tiny settings: checks that everything runs

Sections (all on the same inputs within a section; contenders alternate round by round; medians reported):
  backbone   training step (forward + backward) and inference of the plugin ResNet-{50,101}, detectron2's built-in
             build_resnet_backbone (same depth / norm / freeze_at / weights) and torchvision's resnet trunk;
             inference also through the deploy path (resnet_backbone.deploy: BN folded; on CPU fused oneDNN
             convolutions with each layer's kernel measured (F.conv2d NCHW / NHWC, packed oneDNN, Winograd
             F(4x4 / 2x2, 3x3)) and cached on disk; channels-last), for the plugin and, for comparison, for
             detectron2's own backbone; "plugin-deploy-direct" is the deploy path without Winograd,
             "plugin-deploy-rules" with the fixed kernel rule instead of the measured choice, "-fp16" / "-bf16"
             in reduced precision (autocast; outputs compared with float32), "-channels-last" forced where the
             auto rule leaves it off (CUDA). Training groups also time "reference-copy", a deep copy of the
             reference: the spread between two copies of one model is the noise floor of every ratio; "-amp"
             contenders train with mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU).
  c4         Faster R-CNN C4 R-101: the plugin's configs/coco/frcnn_r101.yaml vs detectron2's built-in R-101-C4
             (the same config with build_resnet_backbone + Res5ROIHeads, same weights): a full training iteration
             (forward, backward, SGD step with lr 0 so the work stays the same) and inference.
  vgg16      the plugin's VGG-16 Faster R-CNN (configs/coco/frcnn_vgg16.yaml): training iteration and inference.
  pipeline   images/s of the pretraining input pipeline (PNG decode + scale augmentation + crop + flip + lighting,
             per worker) next to images/s a plugin classifier consumes in a training step.
  demo       (only when listed) --demo-iters iterations of the demo's detector (configs/coco/frcnn_r101.yaml +
             configs/demo) through tools/train_net.py, the plugin's and detectron2's built-in R-101-C4 one after
             the other: seconds per iteration, ratio, AP50.
Per contender: multiply-adds per image (fvcore, weight layers), achieved GFLOP/s next to a torch.mm peak, the peak
memory of one call (CUDA allocator peak; on CPU the rise of the resident set), and the speedup against the group's
reference and against the plugin without deploy. The header names the CPU and its SIMD flags (and the GPU); each
section lists the kernels the deploy path chose per layer type.

    python tools/benchmark.py --device cuda --sections backbone c4   # the same sections on a GPU

Writes OUTPUT_DIR/benchmark.json, benchmark.txt (the table) and benchmark_ratios.png.
"""
import argparse
import logging
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("backbone", "c4", "vgg16", "pipeline")
OPTIONAL_SECTIONS = ("demo",)  # only when asked for (--sections ... demo): minutes of training
# --quick: every section on tiny inputs (a smoke test of the tool, not a measurement)
QUICK = dict(depths=[50], batch=1, size=64, det_images=1, det_size=[128, 160], repeats=1, warmup=0, memory_rounds=1,
             pipeline_image_size=64, pipeline_scale=[64, 80], pipeline_crop=56, pipeline_batch=2,
             pipeline_batches=2, pipeline_workers=0, pipeline_model="resnet18", matmul_size=256)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS + OPTIONAL_SECTIONS,
                   help="what to measure")
    p.add_argument("--demo-iters", type=int, default=100, help="training iterations of each demo run")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per group (each contender once a round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--depths", type=int, nargs="+", default=[50, 101], help="backbone depths")
    p.add_argument("--batch", type=int, default=2, help="backbone batch size")
    p.add_argument("--size", type=int, default=224, help="backbone input side (square)")
    p.add_argument("--norm", default="FrozenBN", choices=("FrozenBN", "BN"), help="backbone norm (all contenders)")
    p.add_argument("--freeze-at", type=int, default=2, help="backbone freeze_at (detectron2's meaning)")
    p.add_argument("--det-images", type=int, default=1, help="images per detector iteration")
    p.add_argument("--det-size", type=int, nargs=2, default=[320, 480], metavar=("H", "W"),
                   help="detector input size (images are fed at this size; no resizing)")
    p.add_argument("--c4-config", default=str(REPO / "configs/coco/frcnn_r101.yaml"))
    p.add_argument("--vgg-config", default=str(REPO / "configs/coco/frcnn_vgg16.yaml"))
    p.add_argument("--compile", action="store_true",
                   help="also time the deploy path with torch.compile (skipped with a log line if it fails)")
    p.add_argument("--no-channels-last", action="store_true", help="deploy path without channels-last")
    p.add_argument("--no-onednn", action="store_true", help="deploy path without the fused oneDNN convolutions")
    p.add_argument("--no-winograd", action="store_true",
                   help="deploy path without Winograd 3x3 convolutions (and no plugin-deploy-direct contender)")
    p.add_argument("--kernels", default="measure", choices=("measure", "rules"),
                   help="deploy path's kernel choice on CPU: measured per layer (cached) or the fixed rule")
    p.add_argument("--precisions", nargs="*", default=None, choices=("float16", "bfloat16"),
                   help="reduced-precision deploy contenders (default: float16 + bfloat16 where supported on CUDA; "
                        "bfloat16 on CPUs with AVX512-BF16 / AMX-BF16; none: pass the flag alone)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="also time mixed-precision training contenders (default: on for CUDA, off for CPU)")
    p.add_argument("--channels-last-variants", action=argparse.BooleanOptionalAction, default=None,
                   help="also time channels-last contenders where the auto rule leaves it off (default: on CUDA)")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="do not also time a copy of the reference model in the training groups")
    p.add_argument("--memory-rounds", type=int, default=7,
                   help="peak-memory measurements per contender (median; one RSS reading varies by +-10%%)")
    p.add_argument("--pipeline-workers", type=int, default=None, help="loader workers (default: min(2, CPUs))")
    p.add_argument("--pipeline-batch", type=int, default=8)
    p.add_argument("--pipeline-batches", type=int, default=6, help="timed loader batches")
    p.add_argument("--pipeline-image-size", type=int, default=320, help="side of the generated PNGs")
    p.add_argument("--pipeline-scale", type=int, nargs=2, default=[256, 480], help="scale augmentation range")
    p.add_argument("--pipeline-crop", type=int, default=224)
    p.add_argument("--pipeline-model", default="resnet50", help="classifier whose training rate is compared")
    p.add_argument("--pipeline-root", default=None, help="where to write the generated set (default: a temp dir)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the torch.mm used for the peak")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (not a measurement)")
    p.add_argument("--output-dir", default="output/benchmark")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _check_args(args):
    for name in ("repeats", "batch", "size", "det_images", "pipeline_batch", "pipeline_batches", "pipeline_crop",
                 "matmul_size", "memory_rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    if "demo" in args.sections and args.demo_iters <= 20:
        raise SystemExit(f"--demo-iters must be > 20 (the first 20 iterations are not timed), got {args.demo_iters}")
    if min(args.det_size) < 64:
        raise SystemExit(f"--det-size must be >= 64 on both sides, got {args.det_size}")


def _environment(args, device, torch):
    import detectron2
    import torchvision

    from resnet_backbone.benchmarking.flops import matmul_peak_gflops

    from resnet_backbone.deploy.cache import cpu_flags, cpu_model

    return {"device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "detectron2": detectron2.__version__ + _detectron2_build(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "matmul_size": args.matmul_size, "matmul_peak_gflops": matmul_peak_gflops(device, size=args.matmul_size),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _detectron2_build() -> str:
    """main and the v0.6 fallback both call themselves 0.6: the compiled ops tell them apart."""
    from resnet_backbone.engine.trainer import has_fast_coco_eval

    return " (compiled ops)" if has_fast_coco_eval() else " (no compiled ops: the v0.6 fallback)"


def _measure(args, device, torch, log) -> dict:
    from resnet_backbone.benchmarking.flops import matmul_peak_gflops
    from resnet_backbone.benchmarking.suite import (Settings, run_backbone_section, run_detector_section,
                                                    run_pipeline_section)

    from resnet_backbone.benchmarking.output import machine_lines

    torch.manual_seed(0)
    settings = Settings(device=device, repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                        channels_last=False if args.no_channels_last else "auto",
                        onednn=False if args.no_onednn else "auto",
                        winograd=False if args.no_winograd else "auto", kernels=args.kernels,
                        precisions=tuple(_precisions(args, device, torch)),
                        amp=device.type == "cuda" if args.amp is None else args.amp,
                        layout_variants=_layout_variants(args, device), memory_rounds=args.memory_rounds,
                        noise_floor=not args.no_noise_floor)
    results = {"environment": _environment(args, device, torch), "arguments": vars(args), "sections": {}}
    for line in machine_lines(results["environment"]):
        log.info(line)
    log.info("matmul peak %.1f GFLOP/s; deploy kernels %s, reduced precisions %s, mixed-precision training %s, "
             "channels-last variants %s", results["environment"]["matmul_peak_gflops"], settings.kernels,
             list(settings.precisions) or "none", "on" if settings.amp else "off",
             "on" if settings.layout_variants else "off")
    sections = results["sections"]
    start = time.perf_counter()
    if "backbone" in args.sections:
        for depth in args.depths:
            log.info("backbone ResNet-%d: batch %d at %d, %s, freeze_at %d", depth, args.batch, args.size, args.norm,
                     args.freeze_at)
            sections[f"backbone_r{depth}"] = run_backbone_section(depth, norm=args.norm, freeze_at=args.freeze_at,
                                                                  batch=args.batch, size=args.size,
                                                                  settings=settings)
    h, w = args.det_size
    if "c4" in args.sections:
        log.info("Faster R-CNN C4 R-101: %d image(s) of %dx%d", args.det_images, h, w)
        sections["c4_r101"] = run_detector_section("c4", args.c4_config, images=args.det_images, height=h, width=w,
                                                   settings=settings)
    if "vgg16" in args.sections:
        log.info("Faster R-CNN VGG-16: %d image(s) of %dx%d", args.det_images, h, w)
        sections["vgg16"] = run_detector_section("vgg16", args.vgg_config, images=args.det_images, height=h,
                                                 width=w, settings=settings)
    if "pipeline" in args.sections:
        workers = args.pipeline_workers if args.pipeline_workers is not None else min(2, os.cpu_count() or 1)
        log.info("input pipeline: %d worker(s); model %s", workers, args.pipeline_model)
        sections["pipeline"] = run_pipeline_section(
            model_name=args.pipeline_model, batch=args.pipeline_batch, crop_size=args.pipeline_crop,
            image_size=args.pipeline_image_size, scale=tuple(args.pipeline_scale), num_workers=workers,
            num_batches=args.pipeline_batches, settings=settings, root=args.pipeline_root)
    if "demo" in args.sections:
        from resnet_backbone.benchmarking.demo_pair import run_demo_pair

        sections["demo"] = run_demo_pair(str(Path(args.output_dir) / "demo"), device=str(device),
                                         iters=args.demo_iters, log=log.info)
    results["seconds"] = time.perf_counter() - start
    # measured again at the end and the best kept: on a shared machine one measurement can hit a busy moment
    env = results["environment"]
    env["matmul_peak_gflops_end"] = matmul_peak_gflops(device, size=args.matmul_size)
    env["matmul_peak_gflops"] = max(env["matmul_peak_gflops"], env["matmul_peak_gflops_end"])
    return results


def _precisions(args, device, torch):
    """--precisions, or by default those the device runs fast: float16 (+ bfloat16 where the GPU has it) on CUDA,
    bfloat16 on CPUs with bfloat16 instructions."""
    from resnet_backbone.deploy.cache import cpu_flags
    from resnet_backbone.deploy.precision import precision_supported

    if args.precisions is not None:
        for p in args.precisions:
            if not precision_supported(device, p):
                raise SystemExit(f"--precisions {p}: not supported on {device}")
        return args.precisions
    if device.type == "cuda":
        return [p for p in ("float16", "bfloat16") if precision_supported(device, p)]
    fast_bf16 = {"avx512_bf16", "amx_bf16"} & set(cpu_flags())
    return ["bfloat16"] if device.type == "cpu" and fast_bf16 else []


def _layout_variants(args, device) -> bool:
    from resnet_backbone.deploy.layout import channels_last_helps

    if args.channels_last_variants is not None:
        return args.channels_last_variants
    return not args.no_channels_last and not channels_last_helps(device)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    _check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("benchmark")
    import numpy as np
    import torch

    import resnet_backbone  # noqa: F401  registers the plugin into detectron2
    from resnet_backbone.benchmarking import output

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    threads_before = torch.get_num_threads()
    np.finfo(np.float32), np.finfo(np.float64)  # computed before flushing denormals (numpy warns otherwise)
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        # denormal floats make CPU kernels slow in a value-dependent way; random-init models can produce them
        torch.set_flush_denormal(True)
        results = _measure(args, device, torch, log)
    finally:  # leave the process as it was (main() is also called from tests)
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads_before)

    out = Path(args.output_dir)
    output.write_json(results, str(out / "benchmark.json"))
    table = output.format_table(results)
    (out / "benchmark.txt").write_text(table + "\n")
    if not args.no_plot and any(True for _ in output.groups(results)):
        output.plot_ratios(results, str(out / "benchmark_ratios.png"))
    print(table)
    return results


if __name__ == "__main__":
    main()
