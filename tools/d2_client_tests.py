#!/usr/bin/env python
"""detectron2's own model tests, run as a client of the plugin (a step of .ci/run; docs/detectron2_tests.md).

The tests come from the detectron2 source the setup step built detectron2 from (--detectron2-source, default
$RB_DETECTRON2_SOURCE, which .ci/run sets to the vendored archive); without one the step is skipped, saying why.
They run twice in a fresh pytest each: on detectron2's own backbone (baseline), then with the plugin's builders in
place of detectron2's (tools/d2_client/rb_substitute.py, a pytest plugin; detectron2's files are not edited).
The step fails if
  * a test that passed on detectron2's backbone does not pass on the plugin's;
  * the substituted run constructs any detectron2 ResNet, a test that built one in the baseline builds none of the
    plugin's, or one of the substituted builders is never built (the step cannot pass on detectron2's backbone);
  * a run does not finish (collection error, crash, no tests).

Taken (the CPU tests that build a ResNet through detectron2's builders, plus the heads tests the issue names):
  tests/modeling/test_model_e2e.py     Mask R-CNN FPN, RetinaNet, semantic FPN: training with empty / half-empty
                                       ground truth, inf/NaN features; its CUDA cases (eval_tocpu, autocast) skip
  tests/modeling/test_backbone.py      ResNet and FPN scriptability (torch.jit.script == eager)
  tests/modeling/test_roi_heads.py     ROI heads on given features (they build no backbone: run as the issue asks,
                                       with the plugin's config keys in every get_cfg)
  tests/modeling/test_rpn.py           RPN on the default config's backbone shapes (two cases deselected, below)
  tests/test_model_analysis.py         exact parameter counts and conv FLOPs of R-50 RetinaNet / Faster R-CNN
  tests/test_model_zoo.py              model_zoo.get on a yacs config (the LazyConfig cases deselected, below)
  tests/test_export_torchscript.py::TestTorchscriptUtils::test_dump_IR_tracing   tracing a ResNet-18 backbone
  tools/d2_client/d2_c4_cases.py       detectron2's InstanceModelE2ETest on its Mask R-CNN C4 config (no CPU test
                                       of detectron2 builds a C4 model; this covers RBRes5ROIHeads)
Not taken:
  * the rest of test_export_torchscript.py / test_export_onnx.py: model_zoo.get(trained=True) downloads COCO
    weights and get_sample_coco_image downloads an image; their C4 / Cascade cases also skip on CPU CI;
    test_export_caffe2.py needs caffe2 and the same downloads;
  * tests/modeling/test_mmdet.py needs mmdet; tests/layers/test_blocks.py builds detectron2's ResNet class directly,
    not through a builder; tests/test_engine.py and tests/config/ train toy models / parse configs;
  * LazyConfig models (FCOSE2ETest, test_model_zoo's lazy cases: DESELECTED below) instantiate detectron2's ResNet
    class directly, so there is no builder to substitute (the plugin's LazyConfig path: tests/test_lazy_config.py).
Not on the v0.6 path of .ci/run: PyPI's v0.6 sdist carries no tests, and the vendored tests are detectron2 main's,
written against main's API (LazyConfig configs, export patches) that v0.6 lacks; the plugin's v06 subset covers it.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "tools" / "d2_client"
TAKEN = [
    "tests/modeling/test_model_e2e.py",
    "tests/modeling/test_backbone.py",
    "tests/modeling/test_roi_heads.py",
    "tests/modeling/test_rpn.py",
    "tests/test_model_analysis.py",
    "tests/test_model_zoo.py",
    "tests/test_export_torchscript.py::TestTorchscriptUtils::test_dump_IR_tracing",
]
C4_CASES = "d2_c4_cases.py"
LAZY = "LazyConfig model: instantiates detectron2's ResNet class directly, no builder to substitute"
DESELECTED = {
    "tests/modeling/test_model_e2e.py::FCOSE2ETest": LAZY,
    "tests/test_model_zoo.py::TestModelZoo::test_mask_rcnn_fpn": LAZY,
    "tests/test_model_zoo.py::TestModelZoo::test_mask_rcnn_c4": LAZY,
    "tests/test_model_zoo.py::TestModelZoo::test_panoptic_fpn": LAZY,
    # measured: with detectron2's own backbone and one extra torch.rand(1) after building it, both fail the same way
    "tests/modeling/test_rpn.py::RPNTest::test_rpn": "expects exact losses of an RPN whose weights are drawn from "
    "the RNG after the backbone's init (the backbone only gives shapes): any backbone drawing other random numbers "
    "changes them",
    "tests/modeling/test_rpn.py::RPNTest::test_rrpn": "as test_rpn (rotated RPN)",
}
SUBSTITUTES = ["build_rb_resnet_backbone", "build_rb_resnet_fpn_backbone", "build_rb_retinanet_resnet_fpn_backbone",
               "RBRes5ROIHeads"]


def log(msg):
    print(f"[d2_client_tests {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_setup_env():
    """tools/setup_env.py, for its source handling (checksum, unpacking, which detectron2 is installed)."""
    spec = importlib.util.spec_from_file_location("rb_setup_env", REPO / "tools" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_from(setup_env, src: Path, digest: str) -> str:
    """Whether the installed detectron2 is the wheel the setup step built from `src`, in words."""
    origin = setup_env.installed_detectron2_origin() or "unknown origin"
    if origin.startswith(setup_env.wheel_cache_dir(digest).as_uri()):
        return f"installed detectron2 built from it ({origin})"
    return f"NOTE: the installed detectron2 was not built from it ({origin}): its tests may not fit that detectron2"


def prepare(setup_env, src: Path, workdir: Path) -> Path:
    """detectron2's tests/ (alone: the source's detectron2/ folder must not shadow the installed package) and the
    C4 cases in a folder of their own, with an empty pytest.ini so the project's settings do not apply."""
    source = setup_env.unpack_source(src, workdir)
    missing = [t.split("::")[0] for t in TAKEN if not (source / t.split("::")[0]).is_file()]
    if missing:
        raise SystemExit(f"{src} has no {', '.join(missing)}: not a detectron2 source with its tests")
    root = workdir / "client"
    shutil.copytree(source / "tests", root / "tests")
    shutil.copyfile(CLIENT / C4_CASES, root / C4_CASES)
    (root / "pytest.ini").write_text("[pytest]\n")
    return root


def run(root: Path, mode: str, workdir: Path) -> dict:
    report = workdir / f"{mode}.json"
    env = dict(os.environ, RB_D2_CLIENT_MODE=mode, RB_D2_CLIENT_REPORT=str(report),
               RB_D2_CLIENT_DESELECT="\n".join(DESELECTED),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), str(CLIENT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-c", "pytest.ini", "-p", "rb_substitute", "-p", "no:cacheprovider",
           "-q", "-rfE", "--tb=short", "--disable-warnings", *TAKEN, C4_CASES]
    log(f"{mode} run: {'detectron2 own backbones' if mode == 'baseline' else 'plugin builders substituted'}")
    t0 = time.time()
    res = subprocess.run(cmd, cwd=root, env=env)
    log(f"{mode} run: pytest exit {res.returncode}, {time.time() - t0:.0f}s")
    # 0 all passed, 1 some failed; anything else (interrupted, internal or usage error, nothing collected) is fatal
    if res.returncode not in (0, 1) or not report.is_file():
        raise SystemExit(f"the {mode} run did not complete (pytest exit {res.returncode})")
    return json.loads(report.read_text())


def compare(base: dict, plugin: dict) -> list:
    """The problems that fail the step (empty: it passes); prints the per-test table."""
    problems = []
    tests_b, tests_p = base["tests"], plugin["tests"]
    if set(tests_b) != set(tests_p):
        problems.append(f"the runs ran different tests: only baseline {sorted(set(tests_b) - set(tests_p))}, "
                        f"only plugin {sorted(set(tests_p) - set(tests_b))}")
    print(f"{'baseline':9} {'plugin':9} {'d2 ResNets':>10} {'plugin builds':>13}  test")
    for nodeid in sorted(tests_b):
        b, p = tests_b[nodeid], tests_p.get(nodeid, {"outcome": "missing"})
        builds = sum(v for k, v in p.items() if k.startswith("plugin:"))
        print(f"{b['outcome']:9} {p['outcome']:9} {b.get('d2_resnets', 0):>10} {builds:>13}  {nodeid}")
        if b["outcome"] == "passed" and p["outcome"] != "passed":
            problems.append(f"{nodeid}: passes on detectron2's backbone, {p['outcome']} on the plugin's: "
                            f"{p.get('reason', '')}")
        if b.get("d2_resnets") and not builds and p["outcome"] != "skipped":
            problems.append(f"{nodeid}: built a detectron2 ResNet in the baseline, nothing of the plugin's here")
    if plugin["totals"].get("d2_resnets"):
        culprits = [n for n, t in tests_p.items() if t.get("d2_resnets")]
        problems.append(f"the substituted run constructed {plugin['totals']['d2_resnets']} detectron2 ResNet(s): "
                        f"{culprits}")
    unused = [s for s in SUBSTITUTES if not plugin["totals"].get(f"plugin:{s}")]
    if unused:
        problems.append(f"never built in the substituted run: {unused}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectron2-source", metavar="ARCHIVE_OR_DIR", default=os.environ.get("RB_DETECTRON2_SOURCE"),
                        help="the detectron2 source whose tests to run (default: $RB_DETECTRON2_SOURCE)")
    args = parser.parse_args(argv)
    t0 = time.time()
    if not args.detectron2_source:
        log("skipped: no detectron2 source at hand (give --detectron2-source or RB_DETECTRON2_SOURCE, the archive "
            "or folder the setup step built detectron2 from); the installed package carries no tests")
        return 0
    setup_env = load_setup_env()
    if setup_env.detectron2_is_v06():
        log("skipped: the installed detectron2 is the v0.6 fallback; the tests of a detectron2 main source use "
            "main's API (see this script's docstring)")
        return 0
    src = Path(args.detectron2_source).expanduser().resolve()
    digest = setup_env.verify_source(src)
    log(f"detectron2 tests from {src}; {installed_from(setup_env, src, digest)}")
    for nodeid, why in DESELECTED.items():
        log(f"not taken: {nodeid}: {why}")
    with tempfile.TemporaryDirectory(prefix="rb_d2_client_") as tmp:
        workdir = Path(tmp)
        root = prepare(setup_env, src, workdir)
        base = run(root, "baseline", workdir)
        plugin = run(root, "substitute", workdir)
    problems = compare(base, plugin)
    outcomes_b = Counter(t["outcome"] for t in base["tests"].values())
    outcomes_p = Counter(t["outcome"] for t in plugin["tests"].values())
    built = ", ".join(f"{k[len('plugin:'):]} {v}" for k, v in sorted(plugin["totals"].items())
                      if k.startswith("plugin:"))
    log(f"detectron2 own backbones: {outcomes_b['passed']} passed, {outcomes_b['failed'] + outcomes_b['error']} "
        f"failed, {outcomes_b['skipped']} skipped")
    log(f"plugin backbones:         {outcomes_p['passed']} passed, {outcomes_p['failed'] + outcomes_p['error']} "
        f"failed, {outcomes_p['skipped']} skipped (built: {built}; "
        f"{plugin['totals'].get('plugin_models_checked', 0)} models checked)")
    for problem in problems:
        log(f"FAILED: {problem}")
    log(f"{'FAILED' if problems else 'passed'} in {time.time() - t0:.0f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
