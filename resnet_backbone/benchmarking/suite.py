"""The sections of tools/benchmark.py: backbones, the C4 R-101 and VGG-16 detectors, the input pipeline.

Every section builds its contenders, checks that contenders meant to compute the same function do (max relative
difference recorded), times them interleaved (see timing.py), then measures each one's peak memory and work.
Results are plain dicts, ready for JSON.
"""
import contextlib
import copy
import math
import statistics
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..deploy import OneDNNConv2d, prepare_for_inference
from ..deploy import kernels as _kernels
from ..deploy import winograd as _winograd
from ..deploy.precision import autocast_forward
from ..engine.amp import amp_dtype
from ..engine import runtimes
from ..engine.detector_export import compare_outputs
from ..modeling.factory import create_model
from .contenders import (backbone_contenders, build_detector, builtin_c4_cfg, calibrate_frozen_norms,
                         detector_inputs, plugin_backbone, plugin_detector_cfg)
from .flops import achieved_gflops, detector_multiply_adds, multiply_adds
from .peers import backbone_peers, detector_peers
from .memory import peak_memory_bytes
from .pipeline import input_pipeline_throughput
from .timing import interleaved_timings, ratios

__all__ = ["Settings", "run_backbone_section", "run_detector_section", "run_pipeline_section", "deployed",
           "timed_group"]

# a training step does a forward and a backward pass; backward ~ 2 x forward (input and weight gradients)
TRAIN_PASSES = 3.0
NOISE_FLOOR = "reference-copy"  # a deep copy of the group's reference model (see Settings.noise_floor)
SHORT_PRECISION = {"float16": "fp16", "bfloat16": "bf16"}


@dataclass
class Settings:
    device: torch.device
    repeats: int
    warmup: int
    compile: bool = False
    channels_last: object = "auto"
    onednn: object = "auto"
    winograd: object = "auto"
    kernels: str = "measure"
    # deploy contenders in these reduced precisions too ("float16" / "bfloat16": autocast, outputs checked
    # against float32)
    precisions: Sequence[str] = ()
    # training contenders with mixed precision too ("-amp": engine.amp's autocast dtype for the device)
    amp: bool = False
    # channels-last contenders where the "auto" rule leaves it off (CUDA), so that it is measured, not assumed
    layout_variants: bool = False
    memory_rounds: int = 7
    # time a deep copy of the reference too: two copies of one model differ only by noise (memory placement, load),
    # which bounds what a ratio between two contenders can resolve
    noise_floor: bool = True
    # the engines users deploy with, timed beside the deploy path where installed (peers.py: openvino,
    # onnxruntime, inductor)
    peers: Sequence[str] = ()


def deployed(model: nn.Module, settings: Settings, *, compile: bool = False, winograd=None, kernels=None,
             precision: str = "float32", channels_last=None, runtime: str = "torch") -> nn.Module:
    """A deep copy of `model` through the deploy path (BN folding, oneDNN fusion with the measured kernel choice
    and Winograd 3x3 convolutions on CPU, channels-last, optionally torch.compile / a reduced precision)."""
    return prepare_for_inference(copy.deepcopy(model), fuse_bn=True,
                                 channels_last=settings.channels_last if channels_last is None else channels_last,
                                 onednn=settings.onednn, compile=compile, precision=precision,
                                 winograd=settings.winograd if winograd is None else winograd,
                                 kernels=settings.kernels if kernels is None else kernels, runtime=runtime)


def deploy_state(model: nn.Module) -> dict:
    """What a deployed model holds beyond its parameters, after it has run: derived weights (Winograd-transformed
    weights, (m + 2)^2 / 9 times their 3x3 weights; weight copies in another memory format) and this thread's
    Winograd scratch buffers. Peak memory of a call does not show them (they persist between calls), so they are
    reported apart."""
    convs = [m for m in model.modules() if isinstance(m, OneDNNConv2d)]
    winograd_layers = [m for m in convs if any(k.startswith("winograd") for k in m.kernel_choices.values())]
    return {"winograd_layers": len(winograd_layers), "winograd_eligible_layers": sum(bool(m.winograd) for m in convs),
            "derived_weight_bytes": sum(m.cached_weight_bytes() for m in convs),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "workspace_bytes": _winograd.workspace_bytes()}


def kernel_report(infer_models: Dict[str, nn.Module], before: dict) -> dict:
    """Kernels the deploy contenders' convolutions chose, per layer type (kernels.summarize), and what choosing
    cost in this section (measurements, cache hits, seconds)."""
    after = _kernels.stats()
    chosen = {name: _kernels.summarize(m) for name, m in infer_models.items() if "deploy" in name}
    return {"chosen": {k: v for k, v in chosen.items() if v},
            "measured": after["measured"] - before["measured"], "cached": after["cached"] - before["cached"],
            "seconds": after["seconds"] - before["seconds"]}


def _fresh_copies(models: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """Deep copies of every contender, made one after the other once all are built. A model used as it came out of
    its builder can run slower than a copy of itself (its tensors lie in memory among the builder's temporaries;
    README, Speed), which would favour whichever contender was copied or loaded last; copying them all gives each
    the same start (the reference-copy noise floor is then a copy of a copy)."""
    return {name: copy.deepcopy(m) for name, m in models.items()}


def _inference_contenders(models, macs, settings, *, deploy_detectron2):
    """The eval-mode models plus their deploy-path versions; the deployed ones count the MACs of their source.
    "plugin-deploy-direct" (the deploy path without Winograd) shows what the Winograd layers add,
    "plugin-deploy-rules" (the fixed kernel rule) what measuring the kernel choice adds; "-channels-last" and
    "-fp16" / "-bf16" variants where Settings asks for them."""
    for m in models.values():
        m.eval()
    plugin = models["plugin"]
    infer_models = dict(models)
    infer_models["plugin-deploy"] = deployed(plugin, settings)
    modules = list(infer_models["plugin-deploy"].modules())
    if any(getattr(m, "winograd", False) for m in modules):
        infer_models["plugin-deploy-direct"] = deployed(plugin, settings, winograd=False)
    if settings.kernels == "measure" and any(isinstance(m, OneDNNConv2d) for m in modules):
        infer_models["plugin-deploy-rules"] = deployed(plugin, settings, kernels="rules")
    if deploy_detectron2:
        infer_models["detectron2-deploy"] = deployed(models["detectron2"], settings)
    if settings.layout_variants:
        infer_models["plugin-deploy-channels-last"] = deployed(plugin, settings, channels_last=True)
    for precision in settings.precisions:
        name = f"plugin-deploy-{SHORT_PRECISION[precision]}"
        infer_models[name] = deployed(plugin, settings, precision=precision)
        if settings.layout_variants:
            infer_models[name + "-channels-last"] = deployed(plugin, settings, precision=precision,
                                                             channels_last=True)
    if settings.compile:
        infer_models["plugin-deploy-compile"] = deployed(plugin, settings, compile=True)
    if "openvino" in settings.peers and settings.device.type == "cpu" and not runtimes.missing("openvino"):
        # MODEL.RB_DEPLOY.RUNTIME openvino: the deploy path with OpenVINO underneath its backbone and box head
        infer_models["plugin-deploy-openvino"] = deployed(plugin, settings, runtime="openvino")
        if "bfloat16" in settings.precisions:
            infer_models["plugin-deploy-bf16-openvino"] = deployed(plugin, settings, precision="bfloat16",
                                                                   runtime="openvino")
    for name in [n for n in infer_models if n not in macs]:
        macs[name] = macs["plugin" if name.startswith("plugin") else "detectron2"]
    return infer_models


def _add_peers(infer_models, macs, build, reference: str, settings: Settings, workdir: str) -> Dict[str, str]:
    """The peers (built by build(model, wanted, workdir) from the reference, same weights) into infer_models with
    the reference's multiply-adds; returns the peers skipped and why."""
    if settings.peers and settings.device.type != "cpu":
        return {p: f"CPU runtimes; the device is {settings.device}" for p in settings.peers}
    if not settings.peers:
        return {}
    found = build(infer_models[reference], settings.peers, workdir)
    for name, call in found.calls.items():
        infer_models[name] = call
        macs[name] = macs[reference]
    return found.skipped


def _max_rel_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_rel_diff(a[k], b[k]) for k in a)
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _summary(timings, reference, *, macs: Dict[str, int], images: int, passes: float,
             memory: Dict[str, Optional[int]]) -> dict:
    rel = ratios(timings, reference)
    plugin = timings["plugin"].median if "plugin" in timings else None
    out = {}
    for name, t in timings.items():
        out[name] = dict(t.to_dict(), ratio_to_reference=rel[name], speedup_vs_reference=1.0 / rel[name],
                         speedup_vs_plugin=plugin / t.median if plugin else None,
                         images_per_s=images / t.median, multiply_adds_per_image=macs.get(name),
                         achieved_gflops=(achieved_gflops(macs[name], images, t.median, passes=passes)
                                          if macs.get(name) else None),
                         peak_memory_bytes=memory.get(name),
                         memory_ratio_to_reference=(memory[name] / memory[reference]
                                                    if memory.get(name) and memory.get(reference) else None))
    return {"reference": reference, "contenders": out}


def _peak_memory(calls: Dict[str, Callable[[], object]], device: torch.device, rounds: int) -> Dict[str, Optional[int]]:
    """Median over `rounds` interleaved measurements of each call's peak memory (allocator state varies a little
    from call to call)."""
    names = list(calls)
    seen: Dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seen[name].append(peak_memory_bytes(calls[name], device))
    return {n: (None if None in v else int(statistics.median(v))) for n, v in seen.items()}


def timed_group(calls: Dict[str, Callable[[], object]], reference: str, settings: Settings, *,
                macs: Dict[str, int], images: int, passes: float = 1.0) -> dict:
    """A timed group of a section (what output.py tables): the calls interleaved, their peak memory and work, the
    ratios to `reference`; macs: multiply-adds per image of the contenders that have them."""
    timings = interleaved_timings(calls, repeats=settings.repeats, warmup=settings.warmup, device=settings.device)
    memory = _peak_memory(calls, settings.device, settings.memory_rounds)
    return _summary(timings, reference, macs=macs, images=images, passes=passes, memory=memory)


# ---------------------------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------------------------


def _backbone_train_step(model, x, amp: bool = False):
    # amp: the forward under autocast (the backward follows its dtypes); no GradScaler, which scales the loss
    # without changing the work (there is no optimizer step to unscale for here)
    precision = amp_dtype(x.device) if amp else None

    def step():
        model.zero_grad(set_to_none=True)
        with autocast_forward(model, x.device, precision):
            feats = model(x)
        sum(f.float().sum() for f in feats.values()).backward()

    return step


def _amp_name(name: str) -> bool:
    return name.endswith("-amp")


def _inference_call(model, *args):
    def call():
        with torch.no_grad():
            return model(*args)

    return call


def _training_contenders(models, macs, reference, *, noise_floor, amp):
    """The models timed in training, in train mode: each contender, a fresh copy of the reference (the noise floor)
    and with `amp` mixed-precision twins of the plugin and detectron2; `macs` gets their entries."""
    train_models = dict(models)
    if noise_floor:
        train_models[NOISE_FLOOR] = copy.deepcopy(models[reference])
        macs[NOISE_FLOOR] = macs[reference]
    if amp:
        for name in [n for n in ("plugin", "detectron2") if n in models]:
            train_models[f"{name}-amp"] = copy.deepcopy(models[name])
            macs[f"{name}-amp"] = macs[name]
    for m in train_models.values():
        m.train()
    return train_models


def run_backbone_section(depth: int, *, norm: str, freeze_at: int, batch: int, size: int,
                         settings: Settings) -> dict:
    """Training step (forward + backward) and inference of the plugin ResNet, detectron2's and torchvision's."""
    device = settings.device
    built = {k: m.to(device) for k, m in backbone_contenders(depth, norm, freeze_at, device).items()}
    if settings.layout_variants:
        built["plugin-channels-last"] = plugin_backbone(depth, norm, freeze_at, channels_last=True).to(device)
        built["plugin-channels-last"].load_state_dict(built["detectron2"].state_dict())
    models = _fresh_copies(built)
    x = torch.randn(batch, 3, size, size, device=device)
    macs = {k: multiply_adds(m, x[:1]) for k, m in models.items()}

    train_models = _training_contenders(models, macs, "detectron2", noise_floor=settings.noise_floor,
                                        amp=settings.amp)
    train = timed_group({k: _backbone_train_step(m, x, amp=_amp_name(k)) for k, m in train_models.items()},
                        "detectron2", settings, macs=macs, images=batch, passes=TRAIN_PASSES)

    # the same deploy path applied to detectron2's own backbone too: what the folding / layout alone is worth
    infer_base = {k: m for k, m in models.items() if k != "plugin-channels-last"}  # deploy has its own variant
    before = _kernels.stats()
    infer_models = _inference_contenders(infer_base, macs, settings, deploy_detectron2=True)
    with tempfile.TemporaryDirectory(prefix="rb_peers_") as workdir:
        skipped = _add_peers(infer_models, macs, lambda m, wanted, d: backbone_peers(m, x, wanted, d), "detectron2",
                             settings, workdir)
        with torch.no_grad():  # also the first call of each deploy contender / peer: kernel choice, compilation
            ref = models["detectron2"](x)
            check = {name: _max_rel_diff(infer_models[name](x), ref) for name in infer_models
                     if name != "torchvision"}
        kernel_choice = kernel_report(infer_models, before)
        infer = timed_group({k: _inference_call(m, x) for k, m in infer_models.items()}, "detectron2", settings,
                            macs=macs, images=batch, passes=1.0)
    return {"depth": depth, "norm": norm, "freeze_at": freeze_at, "batch": batch, "size": size,
            "max_rel_diff_vs_detectron2": check, "peers_skipped": skipped, "train": train, "inference": infer,
            "deploy_state": deploy_state(infer_models["plugin-deploy"]), "kernel_choice": kernel_choice}


# ---------------------------------------------------------------------------------------------------------------
# detectors
# ---------------------------------------------------------------------------------------------------------------


def _grad_scaler(device: torch.device, dtype: torch.dtype):
    """torch's GradScaler for float16 (what detectron2's AMPTrainer uses), None for bfloat16 (no scaling needed)."""
    if dtype != torch.float16:
        return None
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()


def _detector_train_step(model, inputs, optimizer, amp: bool = False, device: Optional[torch.device] = None):
    """One training iteration: as detectron2's SimpleTrainer, or with amp as its AMPTrainer on CUDA (float16
    autocast forward, GradScaler) / the plugin's CPUAMPTrainer (bfloat16 autocast forward)."""
    from detectron2.utils.events import EventStorage

    precision = amp_dtype(device) if amp else None
    scaler = _grad_scaler(device, precision) if amp else None

    def step():
        with EventStorage(0):  # the heads log scalars into the current storage while training
            with autocast_forward(model, device or "cpu", precision):
                losses = model(inputs)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                total.backward()
                optimizer.step()
            else:
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()

    return step


def _sgd(model):
    # lr 0: the update is computed and applied, but the weights (so proposals and sampled RoIs) stay as they are
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9,
                           weight_decay=0.0)


def _detection_counts(outputs) -> list:
    return [len(o["instances"]) for o in outputs]


def _detection_diff(reference, outputs):
    """Largest absolute difference of boxes and scores after pairing the detections (detector_export), or a note
    when the two do not give the same number of detections (a reduced precision moves scores across the
    threshold)."""
    worst, _, _ = compare_outputs([{"instances": o["instances"]} for o in reference],
                                  [{"instances": o["instances"]} for o in outputs])
    if math.isfinite(worst):
        return worst
    return f"detections {_detection_counts(outputs)} vs {_detection_counts(reference)}"


def run_detector_section(kind: str, config_file: str, *, images: int, height: int, width: int, settings: Settings,
                         opts: Sequence[str] = ()) -> dict:
    """kind "c4": plugin C4 R-101 config vs detectron2's built-in R-101-C4 (same weights); kind "vgg16": the
    plugin's VGG-16 Faster R-CNN alone. Full training iteration (forward, backward, SGD step) and inference."""
    if kind not in ("c4", "vgg16"):
        raise ValueError(f"detector kind must be 'c4' or 'vgg16', got {kind!r}")
    device = settings.device
    cfg = plugin_detector_cfg(config_file, str(device), opts)
    inputs = detector_inputs(images, height, width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                             input_format=cfg.INPUT.FORMAT)
    models = {"plugin": build_detector(cfg)}
    if kind == "c4":
        models["detectron2"] = build_detector(builtin_c4_cfg(cfg))
        calibrate_frozen_norms(models["detectron2"], inputs)
        # same weights (same parameter names), so both make the same proposals and sample alike
        models["plugin"].load_state_dict(models["detectron2"].state_dict())
    else:
        calibrate_frozen_norms(models["plugin"], inputs)
        if settings.layout_variants:
            cl_cfg = cfg.clone()
            cl_cfg.MODEL.RB_RESNET.CHANNELS_LAST = True
            models["plugin-channels-last"] = build_detector(cl_cfg)
            models["plugin-channels-last"].load_state_dict(models["detectron2"].state_dict())
    models = _fresh_copies(models)
    reference = "detectron2" if kind == "c4" else "plugin"

    for m in models.values():
        m.eval()
    macs = {k: detector_multiply_adds(m, inputs) for k, m in models.items()}
    train_models = _training_contenders(models, macs, reference, noise_floor=settings.noise_floor and kind == "c4",
                                        amp=settings.amp)
    train = timed_group({k: _detector_train_step(m, inputs, _sgd(m), amp=_amp_name(k), device=device)
                         for k, m in train_models.items()},
                        reference, settings, macs=macs, images=images,
                        passes=TRAIN_PASSES)

    infer_base = {k: m for k, m in models.items() if k != "plugin-channels-last"}  # deploy has its own variant
    before = _kernels.stats()
    infer_models = _inference_contenders(infer_base, macs, settings, deploy_detectron2=kind == "c4")
    with tempfile.TemporaryDirectory(prefix="rb_peers_") as workdir:
        skipped = _add_peers(infer_models, macs, lambda m, wanted, d: detector_peers(m, inputs, wanted, d),
                             reference, settings, workdir)
        with torch.no_grad():  # also the first call of each deploy contender / peer: kernel choice, compilation
            outputs = {name: m(inputs) for name, m in infer_models.items()}
        counts = {name: _detection_counts(out) for name, out in outputs.items()}
        diffs = {name: _detection_diff(outputs[reference], out) for name, out in outputs.items() if name != reference}
        kernel_choice = kernel_report(infer_models, before)
        infer = timed_group({k: _inference_call(m, inputs) for k, m in infer_models.items()}, reference, settings,
                            macs=macs, images=images, passes=1.0)
    return {"kind": kind, "config": config_file, "images": images, "height": height, "width": width,
            "detections_per_image": counts, "max_abs_diff_vs_reference": diffs, "peers_skipped": skipped,
            "train": train, "inference": infer, "deploy_state": deploy_state(infer_models["plugin-deploy"]),
            "kernel_choice": kernel_choice}


# ---------------------------------------------------------------------------------------------------------------
# input pipeline vs consumption
# ---------------------------------------------------------------------------------------------------------------


def run_pipeline_section(*, model_name: str, batch: int, crop_size: int, image_size: int, scale: tuple,
                         num_workers: int, num_batches: int, settings: Settings, root: Optional[str] = None) -> dict:
    """Images/s the pretraining loader delivers (per worker and in total) and images/s the plugin classifier
    consumes in a training step (forward, backward, SGD step) at the same crop size."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="rb_pipeline_"))
        loader = input_pipeline_throughput(root, num_workers=num_workers, batch_size=batch, num_batches=num_batches,
                                           image_size=image_size, crop_size=crop_size, scale=scale)
    model = create_model(model_name).to(settings.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    x = torch.randn(batch, 3, crop_size, crop_size, device=settings.device)
    y = torch.randint(0, model.num_classes, (batch,), device=settings.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    timing = interleaved_timings({"train": step}, repeats=settings.repeats, warmup=settings.warmup,
                                 device=settings.device)["train"]
    consumption = batch / timing.median
    workers_needed = consumption / loader.images_per_s_per_worker
    return {"loader": loader.to_dict(), "model": model_name, "batch": batch,
            "model_images_per_s": consumption, "model_step": timing.to_dict(),
            "loader_over_model": loader.images_per_s / consumption,
            "workers_needed_to_keep_up": workers_needed}
