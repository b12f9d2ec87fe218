#!/usr/bin/env python
"""Speed, work and memory of the plugin's backbones and detectors next to detectron2's and torchvision's, in one run.

    python tools/benchmark.py                          # everything, defaults sized for a 2-core CPU
    python tools/benchmark.py --threads 1 --repeats 15 # steadier medians on a busy machine
    python tools/benchmark.py --sections backbone --depths 101 --batch 4 --size 320
    python tools/benchmark.py --quick                  # tiny settings: checks that everything runs

Sections (all on the same inputs within a section; contenders alternate round by round; medians reported): listed
below the options; each is one entry of resnet_backbone/benchmarking/sections.py (where a new one is added).
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
import textwrap
import time
from pathlib import Path

from resnet_backbone.benchmarking.peers import PEERS
from resnet_backbone.benchmarking.sections import SECTIONS, default_sections

# --quick: every section on tiny inputs (a smoke test of the tool, not a measurement); each section adds its own
QUICK = dict(repeats=1, warmup=0, memory_rounds=1, matmul_size=256)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=default_sections(), choices=list(SECTIONS),
                   help="what to measure (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per group (each contender once a round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--compile", action="store_true",
                   help="also time the deploy path with torch.compile (skipped with a log line if it fails)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                   help="engines users deploy with, timed beside the deploy path on CPU where installed (pip install "
                        "-e .[deploy]): OpenVINO f32 + bf16, ONNX Runtime, torch.compile inductor with freezing "
                        "(default: all; none: pass the flag alone)")
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
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the torch.mm used for the peak")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (not a measurement)")
    p.add_argument("--output-dir", default="output/benchmark")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    for section in SECTIONS.values():
        section.add_arguments(p)
    p.epilog = "sections:\n" + "\n".join(textwrap.fill(f"{name:<10} {s.doc}", 116, subsequent_indent=" " * 11)
                                         for name, s in SECTIONS.items())
    return p


def _check_args(args):
    for name in ("repeats", "matmul_size", "memory_rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    for name in args.sections:
        SECTIONS[name].check(args)


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
    from resnet_backbone.benchmarking.suite import Settings

    from resnet_backbone.benchmarking.output import machine_lines

    torch.manual_seed(0)
    settings = Settings(device=device, repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                        channels_last=False if args.no_channels_last else "auto",
                        onednn=False if args.no_onednn else "auto",
                        winograd=False if args.no_winograd else "auto", kernels=args.kernels,
                        precisions=tuple(_precisions(args, device, torch)),
                        amp=device.type == "cuda" if args.amp is None else args.amp,
                        layout_variants=_layout_variants(args, device), memory_rounds=args.memory_rounds,
                        noise_floor=not args.no_noise_floor, peers=tuple(args.peers))
    results = {"environment": _environment(args, device, torch), "arguments": vars(args), "sections": {}}
    for line in machine_lines(results["environment"]):
        log.info(line)
    log.info("matmul peak %.1f GFLOP/s; deploy kernels %s, reduced precisions %s, mixed-precision training %s, "
             "channels-last variants %s", results["environment"]["matmul_peak_gflops"], settings.kernels,
             list(settings.precisions) or "none", "on" if settings.amp else "off",
             "on" if settings.layout_variants else "off")
    start = time.perf_counter()
    for name in args.sections:
        for key, result in SECTIONS[name].run(args, settings, log).items():
            results["sections"][key] = dict(result, section=name)
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
        for name in args.sections:
            for key, value in SECTIONS[name].quick.items():
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
