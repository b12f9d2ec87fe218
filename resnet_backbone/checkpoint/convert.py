"""Weight conversion between state-dict namings: pure functions returning (converted, ConversionReport).

Namings (a "format" below):
  plugin       this package, which is detectron2's ResNet backbone naming: stem.conv1.weight, stem.conv1.norm.*,
               res2.0.conv1.weight, res2.0.conv1.norm.*, res2.0.shortcut.*, linear.*; VGG-16: conv1_1.* ... conv5_3.*,
               fc6.*, fc7.*, fc8.*
  torchvision  torchvision.models resnet* / resnext*: conv1, bn1, layerN.i.convK / bnK, layerN.i.downsample.0 / .1, fc;
               vgg16: features.N, classifier.0 / .3 / .6
  msra         the MSRA / Caffe2 pickles (detectron2's ImageNetPretrained/MSRA/R-*.pkl): conv1_w, res_conv1_bn_s / _b,
               res2_0_branch2a_w, res2_0_branch2a_bn_s / _b, res2_0_branch1_w, fc1000_w / _b. BatchNorm is stored
               folded into one affine per channel (scale _s, shift _b), as detectron2's FrozenBatchNorm2d reads it.
  detectron2   the .pkl detectron2's DetectionCheckpointer reads: {"model": {name: ndarray}, "__author__": ...,
               "matching_heuristics": True} with plugin names, or a detector's full names (backbone.*,
               roi_heads.res5.*, backbone.bottom_up.*; the layouts of resnet_backbone.d2.weights).

Every function leaves its input untouched and says in its report which source keys did not map, which were left out
on purpose (and why) and, given a target (a model, a state dict or a list of keys), which target keys were not
filled.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..d2.weights import DETECTOR_LAYOUTS, map_classifier_to_detector
from ..modeling.options import check_choice, check_rate
from ..modeling.vgg import VGG16_LAYERS
from .safe_load import state_dict_from

__all__ = [
    "FORMATS",
    "ConversionReport",
    "torchvision_to_plugin",
    "plugin_to_torchvision",
    "msra_to_plugin",
    "plugin_to_msra",
    "plugin_to_detectron2",
    "detectron2_to_plugin",
    "to_detection_checkpoint",
    "detect_format",
    "convert_to_plugin",
    "convert_from_plugin",
    "torchvision_for_detectron2",
]

FORMATS = ("plugin", "torchvision", "msra", "detectron2")
Target = Union[nn.Module, Mapping[str, Any], Iterable[str], None]
Eps = Union[float, Mapping[str, float]]

_BN_COUNTER = "num_batches_tracked"
_PARAM_NAMES = ("weight", "bias", "running_mean", "running_var", _BN_COUNTER)
# detectron2's BatchNorm2d / FrozenBatchNorm2d default (layers/batch_norm.py) and torch's
DEFAULT_BN_EPS = 1e-5
D2_AUTHOR = "resnet_backbone"

# A key in the plugin's naming (ResNet or VGG-16).
_PLUGIN_KEY = re.compile(r"^(stem|res\d+\.\d+|linear|conv\d+_\d+|fc[678])\.")
_CLASSIFIER_KEY = re.compile(r"^(linear|fc8)\.")


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What one conversion did.

    unmapped: source key -> why it has no name in the target naming (a real problem: the key is not written).
    dropped: source key -> why it was left out on purpose (a classifier for a detector, a step counter, ...).
    missing / unexpected / shape_mismatches: only when a target was given: target keys not produced, produced keys
        the target lacks, and key -> (produced shape, target shape). BatchNorm step counters are never listed.
    """

    source: str
    target: str
    converted: int = 0
    unmapped: "OrderedDict[str, str]" = field(default_factory=OrderedDict)
    dropped: "OrderedDict[str, str]" = field(default_factory=OrderedDict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatches: "OrderedDict[str, Tuple[tuple, tuple]]" = field(default_factory=OrderedDict)
    notes: List[str] = field(default_factory=list)
    checked: bool = False  # a target was given

    @property
    def ok(self) -> bool:
        """Every source key accounted for and (if checked) every target key filled with the right shape."""
        return not (self.unmapped or self.missing or self.shape_mismatches)

    def __str__(self) -> str:
        status = "OK" if self.ok else "PROBLEMS"
        head = (f"{self.source} -> {self.target}: {self.converted} tensors converted, {len(self.unmapped)} unmapped, "
                f"{len(self.dropped)} dropped")
        if self.checked:
            head += (f", {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                     f"{len(self.shape_mismatches)} shape mismatches")
        lines = [f"{head} [{status}]"]
        lines += _listing("unmapped (not written)", [f"{k}: {why}" for k, why in self.unmapped.items()])
        lines += _listing("missing in the result (target keys not filled)", self.missing)
        lines += _listing("shape mismatches (result vs target)",
                          [f"{k}: {tuple(a)} vs {tuple(b)}" for k, (a, b) in self.shape_mismatches.items()])
        by_reason: "OrderedDict[str, List[str]]" = OrderedDict()
        for key, why in self.dropped.items():
            by_reason.setdefault(why, []).append(key)
        lines += _listing("dropped on purpose", [
            f"{why}: {', '.join(keys[:3])}" + (f", ... ({len(keys)} keys)" if len(keys) > 3 else "")
            for why, keys in by_reason.items()], count=len(self.dropped))
        lines += _listing("unexpected (not in the target)", self.unexpected)
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _listing(title: str, items: List[str], limit: int = 12, count: Optional[int] = None) -> List[str]:
    if not items:
        return []
    out = [f"  {title} ({len(items) if count is None else count}):"] + [f"    {x}" for x in items[:limit]]
    if len(items) > limit:
        out.append(f"    ... and {len(items) - limit} more")
    return out


# ---------------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------------


def _to_tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise ValueError(f"entry {key!r} is a numpy array of Python objects, not weights")
        return torch.as_tensor(array)
    raise ValueError(f"entry {key!r} is a {type(value).__name__}; expected a tensor or a numpy array")


def _to_numpy(value: Any, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    tensor = _to_tensor(value, key)
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: converting would change the values
        raise ValueError(f"entry {key!r} is bfloat16, which numpy cannot hold; convert the weights to float32 first")
    return tensor.cpu().numpy()


def _target_shapes(target: Target) -> Optional[Dict[str, Optional[tuple]]]:
    if target is None:
        return None
    if isinstance(target, nn.Module):
        target = target.state_dict()
    if isinstance(target, str):
        raise ValueError(f"target must be a model, a state dict or a list of keys, got the string {target!r}")
    if isinstance(target, Mapping):
        return {k: (tuple(v.shape) if hasattr(v, "shape") else None) for k, v in target.items()}
    return {k: None for k in target}


def _check_target(out: Mapping[str, Any], report: ConversionReport, target: Target, keep=None) -> None:
    """Fill report.missing / unexpected / shape_mismatches against the target's keys (those `keep` accepts)."""
    shapes = _target_shapes(target)
    if shapes is None:
        return
    if keep is not None:
        shapes = {k: s for k, s in shapes.items() if keep(k)}
    report.checked = True
    for key, value in out.items():
        if key not in shapes:
            if not key.endswith(_BN_COUNTER):
                report.unexpected.append(key)
        elif shapes[key] is not None and tuple(value.shape) != shapes[key]:
            report.shape_mismatches[key] = (tuple(value.shape), shapes[key])
    # a BN step counter left at 0 changes nothing in eval and little in training (momentum is fixed)
    report.missing = [k for k in shapes if k not in out and not k.endswith(_BN_COUNTER)]


def _split(key: str) -> Tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _rename(state_dict: Mapping[str, Any], module_map, source: str, target: str
            ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Rename `module.param` keys with `module_map(module) -> new module or None`; params keep their names."""
    report = ConversionReport(source, target)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state_dict.items():
        module, param = _split(key)
        new_module = module_map(module) if param in _PARAM_NAMES else None
        if new_module is None:
            report.unmapped[key] = f"no {target} name for this {source} key"
            continue
        out[f"{new_module}.{param}"] = _to_tensor(value, key)
    report.converted = len(out)
    return out, report


def _inverse(mapping: Mapping[str, str]) -> Dict[str, str]:
    return {v: k for k, v in mapping.items()}


# ---------------------------------------------------------------------------------------------------------------
# torchvision <-> plugin
# ---------------------------------------------------------------------------------------------------------------

# torchvision's ResNet (torchvision/models/resnet.py) -> plugin module names.
_TV_RESNET_TOP = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm", "fc": "linear"}
# inside a block: BasicBlock / Bottleneck children -> the plugin block's (blocks.py: conv + its norm, shortcut)
_TV_BLOCK_CHILDREN = {
    "conv1": "conv1", "bn1": "conv1.norm",
    "conv2": "conv2", "bn2": "conv2.norm",
    "conv3": "conv3", "bn3": "conv3.norm",
    "downsample.0": "shortcut", "downsample.1": "shortcut.norm",
}
# torchvision's layerN is Table 1's conv{N+1}_x, detectron2's res{N+1}
_TV_LAYER_TO_RES = 1
_TV_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_PLUGIN_BLOCK = re.compile(r"res(\d+)\.(\d+)\.(.+)")


def _vgg_feature_index() -> Dict[str, str]:
    """torchvision vgg16 `features.N` -> plugin conv name. torchvision's make_layers (batch_norm=False) emits
    Conv2d, ReLU per conv and one MaxPool2d per block, so the indices follow from VGG16_LAYERS."""
    names, index = {}, 0
    for b, block in enumerate(VGG16_LAYERS):
        for i in range(len(block)):
            names[f"features.{index}"] = f"conv{b + 1}_{i + 1}"
            index += 2  # conv, ReLU
        index += 1  # max pool
    return names


# torchvision's VGG classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
_TV_VGG = {**_vgg_feature_index(), "classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}
_TV_TOP = {**_TV_RESNET_TOP, **_TV_VGG}
_TV_TOP_INV = _inverse(_TV_TOP)
_TV_BLOCK_CHILDREN_INV = _inverse(_TV_BLOCK_CHILDREN)
_TV_VGG_BN = re.compile(r"^features\.\d+\.running_mean$")


def _module_renamer(table, block_pattern, block_name):
    """A module-name mapping: names in `table` map directly; names matching `block_pattern` (res/layer blocks) are
    formatted by `block_name(match)`, which returns None where the block has no counterpart; others map to None."""
    def rename(module: str) -> Optional[str]:
        if module in table:
            return table[module]
        m = block_pattern.fullmatch(module)
        return block_name(m) if m else None
    return rename


_tv_module_to_plugin = _module_renamer(
    _TV_TOP, _TV_BLOCK, lambda m: f"res{int(m[1]) + _TV_LAYER_TO_RES}.{m[2]}.{_TV_BLOCK_CHILDREN[m[3]]}"
    if m[3] in _TV_BLOCK_CHILDREN else None)
_plugin_module_to_tv = _module_renamer(
    _TV_TOP_INV, _PLUGIN_BLOCK, lambda m: f"layer{int(m[1]) - _TV_LAYER_TO_RES}.{m[2]}.{_TV_BLOCK_CHILDREN_INV[m[3]]}"
    if m[3] in _TV_BLOCK_CHILDREN_INV and int(m[1]) > _TV_LAYER_TO_RES else None)


def torchvision_to_plugin(state_dict: Mapping[str, Any], *, target: Target = None
                          ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """torchvision resnet* / resnext* / vgg16 state dict -> plugin names (tensors shared, not copied).

    torchvision's bottlenecks put the stride in the 3x3 conv: build the plugin model with stride_in_1x1=False.
    """
    if any(_TV_VGG_BN.match(k) for k in state_dict):
        raise ValueError("this looks like torchvision's vgg16_bn (BatchNorm in `features`); only the paper's VGG-16 "
                         "(torchvision vgg16, no BatchNorm) has a plugin counterpart")
    out, report = _rename(state_dict, _tv_module_to_plugin, "torchvision", "plugin")
    _check_target(out, report, target)
    return out, report


def plugin_to_torchvision(state_dict: Mapping[str, Any], *, target: Target = None
                          ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """plugin ResNet / VGG-16 state dict -> torchvision names (the inverse of torchvision_to_plugin)."""
    out, report = _rename(state_dict, _plugin_module_to_tv, "plugin", "torchvision")
    _check_target(out, report, target)
    return out, report


# ---------------------------------------------------------------------------------------------------------------
# MSRA / Caffe2 pkl <-> plugin
# ---------------------------------------------------------------------------------------------------------------

# Caffe2 names (detectron2 checkpoint/c2_model_loading.py, convert_basic_c2_names) -> plugin module names
_MSRA_TOP = {"conv1": "stem.conv1", "res_conv1_bn": "stem.conv1.norm", "fc1000": "linear"}
_MSRA_BRANCHES = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_MSRA_BLOCK = re.compile(r"res(\d+)_(\d+)_(branch1|branch2[abc])(_bn)?")
# blob suffixes: convs / fc have _w (weight) and _b (bias); the folded BN has _s (scale) and _b (shift)
_MSRA_LAYER_PARAMS = {"w": "weight", "b": "bias"}
_MSRA_NORM_PARAMS = {"s": "weight", "b": "bias"}
_MSRA_KEY = re.compile(r"(.+)_([a-z]+)")
_MSRA_TOP_INV = _inverse(_MSRA_TOP)
_MSRA_LAYER_PARAMS_INV = _inverse(_MSRA_LAYER_PARAMS)
_MSRA_BRANCHES_INV = _inverse(_MSRA_BRANCHES)
_PLUGIN_BLOCK_PART = re.compile(r"res(\d+)\.(\d+)\.(conv[123]|shortcut)(\.norm)?")


_msra_module_to_plugin = _module_renamer(
    _MSRA_TOP, _MSRA_BLOCK, lambda m: f"res{m[1]}.{m[2]}.{_MSRA_BRANCHES[m[3]]}" + (".norm" if m[4] else ""))
_plugin_module_to_msra = _module_renamer(
    _MSRA_TOP_INV, _PLUGIN_BLOCK_PART,
    lambda m: f"res{m[1]}_{m[2]}_{_MSRA_BRANCHES_INV[m[3]]}" + ("_bn" if m[4] else ""))


def _eps_for(eps: Eps, norm_module: str) -> float:
    value = eps.get(norm_module, DEFAULT_BN_EPS) if isinstance(eps, Mapping) else eps
    return check_rate(f"BatchNorm eps for {norm_module!r}", value)


def msra_to_plugin(state_dict: Mapping[str, Any], *, eps: Eps = DEFAULT_BN_EPS, target: Target = None
                   ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """MSRA / Caffe2 names -> plugin names, BatchNorm as FrozenBatchNorm semantics.

    Each folded BN (scale s, shift b) becomes weight=s, bias=b, running_mean=0, running_var=1-eps: the plugin's
    norms compute x * weight / sqrt(running_var + eps) + bias, so with running_var = 1 - eps the affine is exactly
    s * x + b (detectron2's FrozenBatchNorm2d initialises running_var the same way). `eps` is the norm layers' eps,
    one number or {plugin norm module name: eps} (as a model has them: {name: m.eps for its norms}).
    """
    report = ConversionReport("msra", "plugin")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    norms: List[Tuple[str, torch.Tensor]] = []
    for key, value in state_dict.items():
        if key.endswith("_momentum"):
            # SGD momentum blobs of Detectron1 training files (detectron2 drops them too)
            report.dropped[key] = "SGD momentum buffer (training state, not a weight)"
            continue
        m = _MSRA_KEY.fullmatch(key)
        module = _msra_module_to_plugin(m[1]) if m else None
        params = _MSRA_NORM_PARAMS if module is not None and module.endswith(".norm") else _MSRA_LAYER_PARAMS
        if module is None or m[2] not in params:
            report.unmapped[key] = "no plugin name for this MSRA/Caffe2 blob"
            continue
        tensor = _to_tensor(value, key)
        out[f"{module}.{params[m[2]]}"] = tensor
        if module.endswith(".norm") and m[2] == "s":
            norms.append((module, tensor))
    for module, scale in norms:
        out[f"{module}.running_mean"] = torch.zeros_like(scale)
        out[f"{module}.running_var"] = torch.full_like(scale, 1.0 - _eps_for(eps, module))
    report.converted = len(out)
    if norms:
        report.notes.append("BatchNorm came folded (scale, shift): written as weight, bias with running_mean 0 and "
                            "running_var 1-eps (exact in eval); fine-tune such weights with norm='FrozenBN'")
    _check_target(out, report, target)
    return out, report


def plugin_to_msra(state_dict: Mapping[str, Any], *, eps: Eps = DEFAULT_BN_EPS, target: Target = None
                   ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """plugin ResNet names -> MSRA / Caffe2 names, BatchNorm statistics folded into the affine.

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale (what BN computes in eval);
    `eps` as in msra_to_plugin. Norms without running statistics (GroupNorm) cannot be folded and are unmapped.
    """
    report = ConversionReport("plugin", "msra")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    norm_params: "OrderedDict[str, Dict[str, Tuple[str, torch.Tensor]]]" = OrderedDict()
    for key, value in state_dict.items():
        module, param = _split(key)
        if param == _BN_COUNTER:
            report.dropped[key] = "BatchNorm step counter (not a weight)"
            continue
        msra = _plugin_module_to_msra(module)
        if msra is None:
            report.unmapped[key] = "no MSRA/Caffe2 name for this plugin key (MSRA pkls hold ResNets only)"
        elif module.endswith(".norm"):
            norm_params.setdefault(module, {})[param] = (key, _to_tensor(value, key))
        elif param in _MSRA_LAYER_PARAMS_INV:
            out[f"{msra}_{_MSRA_LAYER_PARAMS_INV[param]}"] = _to_tensor(value, key)
        else:
            report.unmapped[key] = "no MSRA/Caffe2 name for this parameter"
    for module, params in norm_params.items():
        needed = ("weight", "bias", "running_mean", "running_var")
        if any(p not in params for p in needed) or set(params) - set(needed):
            for key, _ in params.values():
                report.unmapped[key] = (f"norm {module} has {sorted(params)}; folding needs exactly {list(needed)} "
                                        "(BatchNorm / FrozenBatchNorm)")
            continue
        w, b, mean, var = (params[p][1] for p in needed)
        # in float64, then back: the fold is then as exact as the stored dtype allows
        scale = w.double() / torch.sqrt(var.double() + _eps_for(eps, module))
        shift = b.double() - mean.double() * scale
        msra = _plugin_module_to_msra(module)
        out[f"{msra}_s"] = scale.to(w.dtype)
        out[f"{msra}_b"] = shift.to(b.dtype)
    report.converted = len(out)
    _check_target(out, report, target)
    return out, report


# ---------------------------------------------------------------------------------------------------------------
# detectron2 format <-> plugin
# ---------------------------------------------------------------------------------------------------------------


def plugin_to_detectron2(state_dict: Mapping[str, Any], *, author: str = D2_AUTHOR, target: Target = None
                         ) -> Tuple[Dict[str, Any], ConversionReport]:
    """plugin state dict -> the detectron2 .pkl object {"model": {name: ndarray}, "__author__", "matching_heuristics"}.

    Names are unchanged (the plugin's naming is detectron2's backbone naming); detectron2's DetectionCheckpointer
    matches them to a detector's keys by suffix (matching_heuristics). Every tensor is kept, step counters included,
    so detectron2_to_plugin gives back the same tensors bit for bit. Arrays share memory with the input tensors.
    """
    report = ConversionReport("plugin", "detectron2")
    model: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in state_dict.items():
        if _PLUGIN_KEY.match(key):
            model[key] = _to_numpy(value, key)
        else:
            report.unmapped[key] = "not a plugin ResNet / VGG key"
    report.converted = len(model)
    _check_target(model, report, target)
    return {"model": model, "__author__": author, "matching_heuristics": True}, report


def _detector_name(plugin_key: str, layout: str) -> Optional[str]:
    """Where `plugin_key` goes in a detector of `layout` (d2.weights' table), None if nowhere."""
    module, param = _split(plugin_key)
    probe = f"{module}.weight"  # the table skips step counters, so map the module through its weight
    mapped, _ = map_classifier_to_detector({probe: None}, layout)
    return f"{next(iter(mapped))[:-len('weight')]}{param}" if mapped else None


def _plugin_part(key: str) -> Optional[str]:
    """The plugin key inside a detector key (its longest suffix in plugin naming), e.g. backbone.res2.0.conv1.weight."""
    parts = key.split(".")
    for i in range(len(parts)):
        rest = ".".join(parts[i:])
        if _PLUGIN_KEY.match(rest):
            return rest
    return None


def _infer_layout(keys: Iterable[str]) -> Optional[str]:
    """The detector layout most keys follow (None = plain plugin names)."""
    keys = list(keys)
    counts = {None: sum(1 for k in keys if _PLUGIN_KEY.match(k))}
    for layout in DETECTOR_LAYOUTS:
        counts[layout] = sum(1 for k in keys if (p := _plugin_part(k)) and _detector_name(p, layout) == k)
    return max(counts, key=lambda layout: counts[layout])  # ties: the first, i.e. plain names


def _unwrap_detectron2(checkpoint: Mapping[str, Any]) -> Tuple[Mapping[str, Any], Optional[str]]:
    if isinstance(checkpoint.get("model"), Mapping):
        return checkpoint["model"], checkpoint.get("__author__")
    return checkpoint, None


def detectron2_to_plugin(checkpoint: Mapping[str, Any], *, target: Target = None
                         ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """detectron2 .pkl object (or its "model" dict) -> plugin state dict of tensors.

    Plain plugin names pass through; a detector's keys (layouts "c4", "backbone", "fpn", "vgg16") are mapped back
    to the backbone / classifier they came from, and the rest of the detector (RPN, FPN, box predictor) is dropped.
    """
    model, author = _unwrap_detectron2(checkpoint)
    layout = _infer_layout(model)
    report = ConversionReport("detectron2", "plugin")
    if author is not None:
        report.notes.append(f"written by {author!r}")
    if layout is not None:
        report.notes.append(f"detector layout {layout!r}")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in model.items():
        if layout is None:
            if _PLUGIN_KEY.match(key):
                out[key] = _to_tensor(value, key)
            else:
                report.unmapped[key] = "not a plugin ResNet / VGG key"
            continue
        part = _plugin_part(key)
        if part is not None and _detector_name(part, layout) == key:
            out[part] = _to_tensor(value, key)
        else:
            report.dropped[key] = f"detection-only (not part of the backbone in layout {layout!r})"
    report.converted = len(out)
    _check_target(out, report, target)
    return out, report


def to_detection_checkpoint(state_dict: Mapping[str, Any], layout: str = "c4", *, author: str = D2_AUTHOR,
                            target: Target = None) -> Tuple[Dict[str, Any], ConversionReport]:
    """plugin classifier state dict -> a detectron2 .pkl object with the keys a detector of `layout` has.

    layout (resnet_backbone.d2.weights.DETECTOR_LAYOUTS): "c4" (stem, res2-res4 under backbone., res5 under
    roi_heads.res5.), "fpn" (backbone.bottom_up.), "backbone" (backbone.), "vgg16" (backbone.conv*,
    roi_heads.box_head.fc6/fc7). The classifier (linear, fc8) is dropped, and so are BatchNorm step counters.
    Names are exact, so "matching_heuristics" is False: detectron2 then loads by name and lists what is missing.
    `target` (a detector, its state dict or keys) is checked only on the keys this layout can fill.
    """
    mapped, unmapped = map_classifier_to_detector(state_dict, layout)  # ValueError for an unknown layout
    report = ConversionReport("plugin", f"detectron2 ({layout})")
    for key in state_dict:
        if key.endswith(_BN_COUNTER):
            report.dropped[key] = "BatchNorm step counter (detection uses FrozenBatchNorm2d)"
    for key in unmapped:
        if _CLASSIFIER_KEY.match(key):
            report.dropped[key] = "ImageNet classifier: a detector has its own box predictor"
        else:
            report.unmapped[key] = f"no place in a {layout!r} detector"
    model = OrderedDict((k, _to_numpy(v, k)) for k, v in mapped.items())
    report.converted = len(model)

    def fillable(key):
        part = _plugin_part(key)
        return part is not None and _detector_name(part, layout) == key

    _check_target(model, report, target, keep=fillable)
    return {"model": model, "__author__": author, "matching_heuristics": False}, report


# ---------------------------------------------------------------------------------------------------------------
# detection and dispatch
# ---------------------------------------------------------------------------------------------------------------

_FORMAT_KEYS = {
    "plugin": _PLUGIN_KEY,
    "torchvision": re.compile(r"^(conv1\.|bn1\.|layer\d+\.\d+\.|fc\.|features\.\d+\.|classifier\.\d+\.)"),
    "msra": re.compile(r"^(conv1_[wb]$|res_conv1_bn_|res\d+_\d+_branch|fc1000_)"),
    "detectron2": re.compile(r"^(backbone\.|roi_heads\.|proposal_generator\.)"),
}


def detect_format(checkpoint: Mapping[str, Any]) -> str:
    """The naming of a loaded checkpoint or state dict, by its key patterns: one of FORMATS.

    A {"model": ..., "__author__": ...} object is "detectron2"; otherwise the format most keys match wins
    (detector-prefixed names count as "detectron2", plain plugin names as "plugin").
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a checkpoint dict or a state dict, got {type(checkpoint).__name__}")
    if "model" in checkpoint and "__author__" in checkpoint:
        return "detectron2"
    keys = list(state_dict_from(checkpoint))
    counts = {fmt: sum(1 for k in keys if pattern.match(k)) for fmt, pattern in _FORMAT_KEYS.items()}
    best = max(counts, key=lambda fmt: counts[fmt])
    if counts[best] == 0:
        raise ValueError(f"cannot tell the naming of these weights (keys like {keys[:3]}); allowed formats: "
                         f"{', '.join(FORMATS)} - pass the format explicitly")
    return best


def convert_to_plugin(checkpoint: Mapping[str, Any], source: str = "auto", *, target: Target = None,
                      eps: Eps = DEFAULT_BN_EPS) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Any supported checkpoint (as loaded by safe_load.load_file, or a state dict) -> plugin state dict."""
    check_choice("source format", source, ("auto",) + FORMATS)
    if source == "auto":
        source = detect_format(checkpoint)
    if source == "detectron2":
        return detectron2_to_plugin(checkpoint, target=target)
    state_dict = state_dict_from(checkpoint)
    if source == "torchvision":
        return torchvision_to_plugin(state_dict, target=target)
    if source == "msra":
        return msra_to_plugin(state_dict, eps=eps, target=target)
    out, report = _rename(state_dict, lambda m: m if _PLUGIN_KEY.match(f"{m}.") else None, "plugin", "plugin")
    _check_target(out, report, target)
    return out, report


def torchvision_for_detectron2(checkpoint: Mapping[str, Any], model_keys: Iterable[str] = ()
                               ) -> Optional[Dict[str, Any]]:
    """A torchvision.models state dict (its published .pth, e.g. vgg16-397923af.pth) in the form detectron2's
    checkpointer loads: plugin names, matched by suffix into the plugin's C4 / FPN / VGG-16 detector layouts
    ({"model": ..., "__author__": "torchvision", "matching_heuristics": True}). None unless `checkpoint` is a bare
    state dict of a torchvision ResNet / VGG-16, every key of which has a plugin name: other models that happen to
    share some of its names (``features.0.weight``, ``fc.bias``) are loaded by their own names, and so are weights
    for a model that has these names itself (``model_keys``: the state-dict keys of the model being loaded).
    """
    if not isinstance(checkpoint, Mapping) or "model" in checkpoint:
        return None
    if not set(model_keys).isdisjoint(checkpoint):
        return None
    try:
        if detect_format(checkpoint) != "torchvision":
            return None
        converted, report = torchvision_to_plugin(state_dict_from(checkpoint))
    except ValueError:  # not a state dict of tensors, no known naming, or vgg16_bn: not one of these
        return None
    if report.unmapped:
        return None
    return {"model": converted, "__author__": "torchvision", "matching_heuristics": True}


def convert_from_plugin(state_dict: Mapping[str, Any], to: str, *, layout: Optional[str] = None,
                        eps: Eps = DEFAULT_BN_EPS, author: str = D2_AUTHOR) -> Tuple[Any, ConversionReport]:
    """plugin state dict -> `to` ("plugin", "torchvision", "msra", "detectron2"; with `layout`, a detector's keys)."""
    check_choice("target format", to, FORMATS)
    if layout is not None and to != "detectron2":
        raise ValueError(f"layout={layout!r} applies to the detectron2 format only, not to {to!r}")
    if to == "detectron2":
        if layout is None:
            return plugin_to_detectron2(state_dict, author=author)
        return to_detection_checkpoint(state_dict, layout, author=author)
    if to == "torchvision":
        return plugin_to_torchvision(state_dict)
    if to == "msra":
        return plugin_to_msra(state_dict, eps=eps)
    return convert_to_plugin(state_dict, "plugin")
