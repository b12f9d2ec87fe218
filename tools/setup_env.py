#!/usr/bin/env python
"""Make the active Python environment ready for resnet_backbone. Idempotent; fast when all is there.

Steps (each logged; a failure names the step and what to do):
  1. torch + torchvision   (torch==2.14.1 / torchvision==0.29.1 when torch is missing; see README)
  2. detectron2            (keep an installed one; else the official source install; else the
                            official v0.6 source release from PyPI, `pb1-detectron2==0.6`, built with an
                            empty `detectron2._C` and the version pins v0.6 needs)
  3. the project itself    (`pip install -e .[test]`, editable, pointing at this checkout)
  4. Winograd kernels      (the deploy path's C transforms, built with the system C compiler into
                            ~/.cache/resnet_backbone; without a compiler the deploy path keeps oneDNN's direct
                            3x3 convolutions, so this step only reports it)
"""
import argparse
import hashlib
import importlib
import importlib.util
import json
import importlib.metadata as md
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
D2_GIT = "git+https://github.com/facebookresearch/detectron2.git"
D2_SDIST = "pb1-detectron2==0.6"
D2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# detectron2 v0.6 uses np.int/np.bool (removed in numpy 1.24), Image.LINEAR (removed in Pillow 10) and
# pkg_resources (removed in setuptools 81); torch wants setuptools>=77.0.3.
V06_PINS = ["numpy<1.24", "Pillow<10", "setuptools>=77.0.3,<81"]
# The v0.6 sdist on PyPI omits detectron2/layers/csrc: an extension with no ops, so that `from detectron2 import _C`
# succeeds; it keeps the two version queries detectron2's collect_env_info (run by default_setup) calls.
EMPTY_EXT = """// Written by resnet_backbone's tools/setup_env.py: detectron2 v0.6 built without its compiled ops.
#include <torch/extension.h>
#include <string>
std::string get_compiler_version() { return "none (compiled ops not built: v0.6 sdist fallback)"; }
std::string get_cuda_version() { return "none"; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version, "get_compiler_version");
  m.def("get_cuda_version", &get_cuda_version, "get_cuda_version");
}
"""


class StepError(RuntimeError):
    pass


def log(msg):
    print(f"[setup_env {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pip(*args, constraints=None, check=True, timeout=None):
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    if constraints:
        cmd += ["-c", str(constraints)]
    log("$ " + " ".join(cmd))
    try:
        res = subprocess.run(cmd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    if check and res.returncode != 0:
        raise StepError(f"pip failed ({res.returncode}): {' '.join(cmd)}")
    return res.returncode == 0


def importable(mod):
    """Import in a fresh interpreter, so a half-installed package in this process does not fool us."""
    res = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True)
    return res.returncode == 0, res.stderr.strip().splitlines()[-1:] if res.returncode else []


def dist_version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def step_torch(_workdir):
    ok_t, _ = importable("torch")
    ok_v, err = importable("torchvision.ops")
    if ok_t and ok_v:
        log(f"torch {dist_version('torch')} / torchvision {dist_version('torchvision')}: present")
        return
    if ok_t and not ok_v:
        log(f"torchvision missing or broken beside torch {dist_version('torch')}: {err}")
    pip(*TORCH_PINS)
    ok_v, err = importable("torchvision.ops")
    if not ok_v:
        raise StepError(f"torchvision still does not import: {err}. Install a torch/torchvision pair "
                        f"that match (e.g. {' '.join(TORCH_PINS)}) and re-run.")


def v06_constraints(workdir):
    path = Path(workdir) / "d2_v06_constraints.txt"
    path.write_text("\n".join(V06_PINS) + "\n")
    return path


def detectron2_is_v06():
    return any(dist_version(n) == "0.6" for n in ("pb1-detectron2", "detectron2"))


def detectron2_ready():
    # engine imports evaluation, which imports detectron2._C; default_setup runs collect_env_info
    return importable("detectron2.engine; from detectron2.utils.collect_env import collect_env_info as c; c()")


def build_v06(workdir, rebuild=False):
    cons = v06_constraints(workdir)
    log(f"detectron2 fallback: official v0.6 source release from PyPI ({D2_SDIST}) with pins {V06_PINS}")
    pip(*V06_PINS, constraints=cons)
    dl = Path(workdir) / "sdist"
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
           "--no-binary", ":all:", "--no-build-isolation", D2_SDIST, "-d", str(dl)]
    log("$ " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise StepError(f"could not download {D2_SDIST} from PyPI")
    archives = sorted(dl.glob("pb1*detectron2-0.6.tar.gz"))
    if not archives:
        raise StepError(f"no sdist archive found in {dl}: {list(dl.iterdir())}")
    digest = hashlib.sha256(archives[0].read_bytes()).hexdigest()
    if digest != D2_SDIST_SHA256:
        raise StepError(f"sha256 of {archives[0].name} is {digest}, expected {D2_SDIST_SHA256}: refusing it")
    log(f"sha256 verified: {digest}")
    with tarfile.open(archives[0]) as tar:
        # the "data" filter refuses absolute paths and links out of the folder (Python >= 3.10.12)
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dl, **kw)
    src = next(p for p in dl.iterdir() if p.is_dir() and (p / "setup.py").exists())
    csrc = src / "detectron2" / "layers" / "csrc"
    csrc.mkdir(parents=True, exist_ok=True)
    if not (csrc / "vision.cpp").exists():
        (csrc / "vision.cpp").write_text(EMPTY_EXT)
        log(f"added {csrc / 'vision.cpp'} (no compiled ops)")
    extra = ["--force-reinstall", "--no-deps"] if rebuild else []
    pip("--no-build-isolation", *extra, str(src), constraints=cons)


def step_detectron2(workdir):
    ok, err = detectron2_ready()
    if ok:
        log(f"detectron2 {dist_version('detectron2') or dist_version('pb1-detectron2')}: present")
        return
    if importable("detectron2")[0]:
        log(f"detectron2 is installed but detectron2.engine does not import: {err}")
        if detectron2_is_v06():
            log("re-applying the v0.6 pins")
            pip(*V06_PINS, constraints=v06_constraints(workdir))
            if detectron2_ready()[0]:
                return
            log("rebuilding the v0.6 fallback")
            build_v06(workdir, rebuild=True)
            if detectron2_ready()[0]:
                return
            raise StepError(f"detectron2 v0.6 rebuilt but still not usable: {detectron2_ready()[1]}")
    log("detectron2: trying the official source install")
    if pip("--no-build-isolation", D2_GIT, check=False, timeout=1800) and detectron2_ready()[0]:
        return
    log("official source install failed (no GitHub access?); using the v0.6 fallback")
    build_v06(workdir)
    ok, err = detectron2_ready()
    if not ok:
        raise StepError(f"detectron2 built but `import detectron2.engine` fails: {err}")


def project_ready():
    """Installed editable from this checkout, with every requirement of setup.py and the test extra importable."""
    try:
        info = json.loads(md.distribution("resnet_backbone").read_text("direct_url.json") or "{}")
    except md.PackageNotFoundError:
        return False
    url = info.get("url", "")
    if not (info.get("dir_info", {}).get("editable") and url.startswith("file://")):
        return False
    if os.path.realpath(url[len("file://"):]) != os.path.realpath(REPO):
        return False
    mods = ["torch", "torchvision", "fvcore", "pycocotools", "numpy", "PIL", "matplotlib", "yaml", "tqdm",
            "tabulate", "pytest", "hypothesis"]
    return all(importlib.util.find_spec(m) is not None for m in mods)


def step_project(workdir):
    if project_ready():
        log(f"resnet_backbone (editable, {REPO}) and test requirements: present")
        return
    cons = v06_constraints(workdir) if detectron2_is_v06() else None
    pip("--no-build-isolation", "-e", f"{REPO}[test]", constraints=cons)
    if not project_ready():
        raise StepError(f"resnet_backbone is not installed editable from {REPO} after `pip install -e`")


def step_kernels(workdir):
    # a fresh interpreter: the project was just installed, and its build needs torch and detectron2 importable
    code = ("import logging, sys; from resnet_backbone.deploy import winograd as w\n"
            "try:\n    print(w.build())\nexcept RuntimeError as e:\n    print(e); sys.exit(3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    if res.returncode == 0:
        log(f"Winograd kernels: {res.stdout.strip().splitlines()[-1]}")
    elif res.returncode == 3:
        log(f"Winograd kernels not built ({res.stdout.strip()}); the deploy path will use oneDNN's direct 3x3 "
            "convolutions. Install a C compiler (gcc or clang) or set RB_CC to use them.")
    else:
        raise StepError(f"checking the Winograd kernels failed: {res.stderr.strip()[-800:]}")


STEPS = [("torch", step_torch), ("detectron2", step_detectron2), ("project", step_project),
         ("kernels", step_kernels)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    t0 = time.time()
    log(f"python {sys.executable} ({sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="rb_setup_") as workdir:
        for name, fn in STEPS:
            log(f"step '{name}'")
            try:
                fn(workdir)
            except Exception as e:  # noqa: BLE001 - every failure is reported with its step
                log(f"FAILED at step '{name}': {e}")
                log("Fix the cause above and run `make setup` again; finished steps are kept. "
                    "See README 'Installing detectron2'.")
                return 1
    log(f"environment ready in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
