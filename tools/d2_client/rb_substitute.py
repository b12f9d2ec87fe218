"""pytest plugin for tools/d2_client_tests.py: detectron2's own tests, run as a client of the plugin.

Loaded with `-p rb_substitute` (tools/d2_client on PYTHONPATH), so it acts before detectron2's test modules are
imported. RB_D2_CLIENT_MODE picks what it does (RB_D2_CLIENT_DESELECT: node ids not taken, one a line):

* "substitute": the plugin's builders take the place of detectron2's. Every `get_cfg` returns a config with
  `add_resnet_backbone_config` applied; detectron2's registry entries build_resnet_backbone /
  build_resnet_fpn_backbone / build_retinanet_resnet_fpn_backbone / Res5ROIHeads build the plugin's
  build_rb_resnet_backbone / build_rb_resnet_fpn_backbone / build_rb_retinanet_resnet_fpn_backbone /
  RBRes5ROIHeads, and the functions of those names, wherever a detectron2 module holds them (tests import
  `build_resnet_backbone` directly), are replaced too. Each built module is checked (a plugin ResNet, alone or as
  the FPN's bottom-up), and so is every model from `build_model` (no detectron2 ResNet anywhere in it; a C4 head is
  the plugin's).
* "baseline": nothing is replaced; the run only counts, as in the other mode.

Both modes count, per test, the detectron2 ResNets constructed and the plugin builds, and write them with each
test's outcome to the JSON file RB_D2_CLIENT_REPORT. The runner compares the two runs: the substituted run must
construct no detectron2 ResNet, and every test that built one in the baseline must build the plugin's instead.
detectron2's extracted files are not edited.
"""
import json
import os
import sys
from collections import Counter

import detectron2.config
import detectron2.modeling  # noqa: F401  loads the registries and the backbone modules
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.backbone import resnet as d2_resnet
from detectron2.modeling.meta_arch import build as d2_meta_build
from detectron2.modeling.roi_heads import Res5ROIHeads

MODE = os.environ.get("RB_D2_CLIENT_MODE", "")
if MODE not in ("baseline", "substitute"):
    raise ValueError(f"RB_D2_CLIENT_MODE={MODE!r}: allowed 'baseline' or 'substitute' "
                     "(set by tools/d2_client_tests.py)")

_current = Counter()   # this test's counts
_total = Counter()     # the session's
_results = {}          # nodeid -> {"outcome", "reason", counts}


def _count(key):
    _current[key] += 1
    _total[key] += 1


# detectron2's ResNet, however it is built (registry, direct call, LazyConfig): counted in both modes
_d2_resnet_init = d2_resnet.ResNet.__init__


def _counting_init(self, *args, **kwargs):
    _count("d2_resnets")
    _d2_resnet_init(self, *args, **kwargs)


d2_resnet.ResNet.__init__ = _counting_init


def _replace_everywhere(original, replacement):
    """Rebind `original` to `replacement` in every loaded detectron2 module that holds it (modules imported later
    take the name from these)."""
    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("detectron2"):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                setattr(mod, attr, replacement)


def _substitute():
    from resnet_backbone.config import add_resnet_backbone_config
    from resnet_backbone.d2.backbones import (
        build_rb_resnet_backbone,
        build_rb_resnet_fpn_backbone,
        build_rb_retinanet_resnet_fpn_backbone,
    )
    from resnet_backbone.d2.roi_heads import RBRes5ROIHeads
    from resnet_backbone.modeling.resnet import ResNet as RBResNet

    d2_get_cfg = detectron2.config.get_cfg

    def get_cfg():
        return add_resnet_backbone_config(d2_get_cfg())

    get_cfg.__doc__ = d2_get_cfg.__doc__
    _replace_everywhere(d2_get_cfg, get_cfg)

    def substituted(d2_name, builder, bottom_up):
        def build(cfg, input_shape):
            module = builder(cfg, input_shape)
            resnet = module.bottom_up if bottom_up else module
            if not isinstance(resnet, RBResNet):
                raise AssertionError(f"{builder.__name__} in place of {d2_name} returned {type(resnet)}")
            _count(f"plugin:{builder.__name__}")
            return module

        build.__name__ = build.__qualname__ = d2_name
        return build

    for d2_name, builder, bottom_up in [
        ("build_resnet_backbone", build_rb_resnet_backbone, False),
        ("build_resnet_fpn_backbone", build_rb_resnet_fpn_backbone, True),
        ("build_retinanet_resnet_fpn_backbone", build_rb_retinanet_resnet_fpn_backbone, True),
    ]:
        original = BACKBONE_REGISTRY.get(d2_name)
        replacement = substituted(d2_name, builder, bottom_up)
        BACKBONE_REGISTRY._obj_map[d2_name] = replacement  # fvcore's Registry has no public replace
        _replace_everywhere(original, replacement)

    def res5_roi_heads(cfg, input_shape):
        _count("plugin:RBRes5ROIHeads")
        return RBRes5ROIHeads(cfg, input_shape)

    ROI_HEADS_REGISTRY._obj_map["Res5ROIHeads"] = res5_roi_heads

    d2_build_model = d2_meta_build.build_model

    def build_model(cfg):
        """detectron2's build_model, then a check that the model runs the plugin's modules, not detectron2's."""
        model = d2_build_model(cfg)
        backbone = getattr(model, "backbone", None)
        if backbone is not None:
            mods = list(backbone.modules())
            if not any(isinstance(m, RBResNet) for m in mods) or any(isinstance(m, d2_resnet.ResNet) for m in mods):
                raise AssertionError(f"build_model({cfg.MODEL.META_ARCHITECTURE}): the backbone is not the plugin's "
                                     f"ResNet: {type(backbone)}")
        roi_heads = getattr(model, "roi_heads", None)
        if isinstance(roi_heads, Res5ROIHeads) and not isinstance(roi_heads, RBRes5ROIHeads):
            raise AssertionError(f"build_model: the C4 head is detectron2's {type(roi_heads)}, not RBRes5ROIHeads")
        _count("plugin_models_checked")
        return model

    build_model.__doc__ = d2_build_model.__doc__
    _replace_everywhere(d2_build_model, build_model)


if MODE == "substitute":
    _substitute()


def pytest_collection_modifyitems(config, items):
    """Deselect RB_D2_CLIENT_DESELECT's node ids (one a line): a test, or all of a class or file (pytest's
    --deselect matches any prefix, so test_rpn would take test_rpn_scriptability with it)."""
    ids = [i for i in os.environ.get("RB_D2_CLIENT_DESELECT", "").splitlines() if i]
    if not ids:
        return
    dropped = [it for it in items if any(it.nodeid == i or it.nodeid.startswith(i + "::") for i in ids)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [it for it in items if it not in dropped]


def pytest_runtest_logstart(nodeid, location):
    _current.clear()


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if report.outcome == "passed" or entry["outcome"] != "passed":
        return  # the first phase that did not pass decides
    if report.outcome == "skipped":
        entry["outcome"] = "skipped"
        entry["reason"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    else:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["reason"] = (report.longreprtext or "").strip().splitlines()[-1:][0] if report.longreprtext else ""


def pytest_runtest_logfinish(nodeid, location):
    _results.setdefault(nodeid, {"outcome": "passed", "reason": ""}).update(dict(_current))


def pytest_terminal_summary(terminalreporter):
    counts = ", ".join(f"{k} {v}" for k, v in sorted(_total.items())) or "nothing built"
    terminalreporter.write_line(f"rb_substitute ({MODE}): {counts}")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("RB_D2_CLIENT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"mode": MODE, "totals": dict(_total), "tests": _results}, f, indent=1, sort_keys=True)
