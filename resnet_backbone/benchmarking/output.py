"""Benchmark results as a JSON file, a short text table and a bar plot of the time ratios."""
import json
import math
import os
from typing import Iterator, List, Optional, Tuple

from ..utils.atomic import atomic_write_text
from .sections import section_of
from ..utils.figures import new_figure, save_figure

__all__ = ["groups", "format_table", "check_targets", "check_deploy", "check_peers", "machine_lines", "write_json",
           "plot_ratios"]

# the project's targets: (section, phase, contender, what is compared, bound) on median times vs the group's
# reference; "time_ratio_max": contender / reference <= bound; "speedup_min": reference / contender >= bound;
# "memory_ratio_max": peak memory contender / reference <= bound
TARGETS = (
    ("backbone_r101", "train", "plugin", "time_ratio_max", 0.95),
    ("c4_r101", "train", "plugin", "time_ratio_max", 0.97),
    ("backbone_r101", "inference", "plugin-deploy", "speedup_min", 1.30),
    ("backbone_r50", "inference", "plugin-deploy", "speedup_min", 1.30),
    ("backbone_r101", "train", "plugin", "memory_ratio_max", 1.00),
    ("backbone_r101", "inference", "plugin-deploy", "memory_ratio_max", 1.00),
    ("c4_r101", "train", "plugin", "memory_ratio_max", 1.00),
    ("c4_r101", "inference", "plugin-deploy", "memory_ratio_max", 1.00),
)


def groups(results: dict) -> Iterator[Tuple[str, str, dict]]:
    """(section, phase, group) for every timed group in the results."""
    for section, value in results.get("sections", {}).items():
        for phase in ("train", "inference"):
            if isinstance(value, dict) and phase in value:
                yield section, phase, value[phase]


def _fmt(value, pattern, missing="-"):
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


# instruction-set extensions that decide which kernels are fast (x86 SIMD / matrix units, ARM NEON / SVE)
_SIMD_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "asimd", "neon", "sve", "sme")


def machine_lines(env: dict) -> List[str]:
    """The benchmark's header: where it ran (CPU model and SIMD flags, GPU, threads, library versions)."""
    simd = [f for f in env.get("cpu_flags", []) if f.startswith(_SIMD_PREFIXES) and f != "smep"]  # smep: paging
    lines = [f"machine: {env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} CPU(s); device "
             f"{env.get('device', '?')}{' (' + env['cuda_device'] + ')' if env.get('cuda_device') else ''}, "
             f"{env.get('threads', '?')} torch thread(s); torch {env.get('torch', '?')}, detectron2 "
             f"{env.get('detectron2', '?')}",
             f"CPU flags (SIMD): {' '.join(simd) if simd else 'none reported'}"]
    if env.get("cudnn"):
        lines.append(f"cuDNN {env['cudnn']}")
    return lines


def format_table(results: dict) -> str:
    """The machine, then one line per contender: median time, ratio and speedup vs the group's reference, speedup
    vs the plugin without deploy, images/s, MACs, GFLOP/s, peak memory and its ratio; then the matmul peak, each
    section's own lines (sections.py: differences, kernels chosen, input pipeline ...), the deploy check and the
    targets."""
    header = (f"{'section':<15} {'phase':<9} {'contender':<30} {'median s':>9} {'spread':>7} {'ratio':>6} "
              f"{'speedup':>7} {'vs plugin':>9} {'img/s':>7} {'GMAC/img':>8} {'GFLOP/s':>8} {'peak MiB':>9} "
              f"{'mem ratio':>9}")
    lines = machine_lines(results.get("environment", {})) + [header, "-" * len(header)]
    for section, phase, group in groups(results):
        ref = group["reference"]
        for name, c in group["contenders"].items():
            mark = "*" if name == ref else " "
            macs, peak = c["multiply_adds_per_image"], c["peak_memory_bytes"]
            lines.append(
                f"{section:<15} {phase:<9} {name + mark:<30} {c['median_s']:>9.4f} "
                f"{c['spread_iqr_over_median']:>6.0%} {c['ratio_to_reference']:>6.3f} "
                f"{c['speedup_vs_reference']:>7.3f} {_fmt(c.get('speedup_vs_plugin'), '{:.3f}'):>9} "
                f"{c['images_per_s']:>7.2f} "
                f"{_fmt(macs and macs / 1e9, '{:.2f}'):>8} {_fmt(c['achieved_gflops'], '{:.1f}'):>8} "
                f"{_fmt(peak and peak / 2**20, '{:.0f}'):>9} {_fmt(c['memory_ratio_to_reference'], '{:.3f}'):>9}")
    lines.append("* reference of the group; ratio = median time / reference's (< 1 faster); speedup = 1 / ratio; "
                 "vs plugin = plugin's median / contender's; spread = interquartile range / median;")
    lines.append("  reference-copy = a deep copy of the reference (noise floor); training GFLOP/s counts "
                 "3 x forward multiply-adds x 2")
    env = results.get("environment", {})
    if env.get("matmul_peak_gflops"):
        lines.append(f"matmul peak (torch.mm float32 {env.get('matmul_size')}^3): {env['matmul_peak_gflops']:.1f} "
                     f"GFLOP/s on {env.get('device')} with {env.get('threads')} thread(s)")
    for key, value in results.get("sections", {}).items():
        section = section_of(key, value)
        if section is not None:
            lines.extend(section.rows(key, value))
    lines.extend(check_deploy(results))
    lines.extend(check_peers(results))
    for line in check_targets(results):
        lines.append(line)
    return "\n".join(lines)


def check_deploy(results: dict) -> List[str]:
    """The deploy path is never slower: every deploy contender against the group's reference (detectron2's
    built-in, for VGG-16 the plugin) and against the plugin without deploy, >= 1.0x. "-rules" (the fixed kernel
    rule, not the default) is listed for comparison but not part of the check."""
    out = []
    for section, phase, group in groups(results):
        if phase != "inference":
            continue
        parts, ok = [], True
        for name, c in group["contenders"].items():
            if "deploy" not in name:
                continue
            vs_ref, vs_plugin = c["speedup_vs_reference"], c.get("speedup_vs_plugin")
            if not name.endswith("-rules"):
                ok = ok and vs_ref >= 1.0 and (vs_plugin is None or vs_plugin >= 1.0)
            parts.append(f"{name} {vs_ref:.2f}x" + (f" / {vs_plugin:.2f}x" if vs_plugin is not None else ""))
        if parts:
            out.append(f"deploy vs {group['reference']} / vs plugin without deploy, {section}: " + "; ".join(parts)
                       + f" (all but -rules >= 1.00x: {'met' if ok else 'NOT met'})")
    return out


# contenders that are the peers (benchmarking/peers.py), by precision
_FP32_PEERS = ("openvino-fp32", "onnxruntime-fp32", "inductor-freezing")
_BF16_PEERS = ("openvino-bf16",)


def _fastest(contenders: dict, names) -> Optional[str]:
    found = [n for n in names if n in contenders]
    return min(found, key=lambda n: contenders[n]["median_s"]) if found else None


def check_peers(results: dict) -> List[str]:
    """Per inference group, the deploy path against the fastest peer of its precision: float32 plugin-deploy against
    OpenVINO / ONNX Runtime / inductor float32, bfloat16 (plugin-deploy-bf16, and with OpenVINO underneath) against
    OpenVINO bfloat16; speed ratio = peer's median / the deploy path's (>= 1.00: the deploy path is as fast)."""
    out = []
    for section, phase, group in groups(results):
        c = group["contenders"]
        if phase != "inference":
            continue
        for ours, peers, label in ((("plugin-deploy", "plugin-deploy-openvino"), _FP32_PEERS, "float32"),
                                   (("plugin-deploy-bf16", "plugin-deploy-bf16-openvino"), _BF16_PEERS, "bfloat16")):
            peer = _fastest(c, peers)
            mine = [n for n in ours if n in c]
            if not peer or not mine:
                continue
            parts = [f"{n} {c[peer]['median_s'] / c[n]['median_s']:.2f}x" for n in mine]
            best = max(c[peer]["median_s"] / c[n]["median_s"] for n in mine)
            out.append(f"deploy vs the fastest {label} peer ({peer}), {section}: " + "; ".join(parts)
                       + f" (best >= 1.00x: {'met' if best >= 1.0 else 'NOT met'})")
    return out


def check_targets(results: dict) -> List[str]:
    """One line per target whose section was run: the measured value and met / NOT met."""
    out = []
    sections = results.get("sections", {})
    for section, phase, name, kind, bound in TARGETS:
        group = sections.get(section, {}).get(phase)
        if not group or name not in group["contenders"]:
            continue
        c, ref = group["contenders"][name], group["reference"]
        floor = group["contenders"].get("reference-copy")
        if kind == "time_ratio_max":
            value, ok, text, rel = c["ratio_to_reference"], c["ratio_to_reference"] <= bound, f"time {name}/{ref}", "<="
        elif kind == "speedup_min":
            value, ok, text = c["speedup_vs_reference"], c["speedup_vs_reference"] >= bound, f"speedup {ref}/{name}"
            rel = ">="
        else:
            value = c["memory_ratio_to_reference"]
            if value is None:
                continue
            ok, text, rel = value <= bound, f"peak memory {name}/{ref}", "<="
        line = f"target {section} {phase}: {text} = {value:.3f} ({rel} {bound:.2f}: {'met' if ok else 'NOT met'})"
        if floor and kind == "time_ratio_max":
            line += f"; noise floor: a copy of {ref} / {ref} = {floor['ratio_to_reference']:.3f}"
        out.append(line)
    return out


def write_json(results: dict, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=1, sort_keys=False))


def plot_ratios(results: dict, path: str):
    """Horizontal bars: median time / reference's median for every contender of every group (line at 1)."""
    rows = []
    for section, phase, group in groups(results):
        for name, c in group["contenders"].items():
            rows.append((f"{section} {phase}: {name} / {group['reference']}", c["ratio_to_reference"],
                         name == group["reference"]))
    if not rows:
        raise ValueError("no timed groups in the results to plot")
    fig = new_figure((9, 0.32 * len(rows) + 1.2))
    ax = fig.subplots()
    labels = [r[0] for r in rows][::-1]
    values = [r[1] for r in rows][::-1]
    colours = ["#999999" if r[2] else ("#2a7ab9" if r[1] <= 1.0 else "#d95f02") for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=colours)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("median time / reference median time (< 1: faster)")
    env = results.get("environment", {})
    ax.set_title(f"resnet_backbone benchmark ({env.get('device', '?')}, {env.get('threads', '?')} thread(s))",
                 fontsize=9)
    save_figure(fig, path, dpi=110)
