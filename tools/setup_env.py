#!/usr/bin/env python
"""Make the active Python environment ready for resnet_backbone. Idempotent; fast when all is there.

Steps (each logged; a failure names the step and what to do):
  1. torch + torchvision   (torch==2.14.1 / torchvision==0.29.1 when torch is missing; see README)
  2. detectron2            (setuptools<81 first, as detectron2.model_zoo imports pkg_resources; keep an
                            installed one; else, with --detectron2-source / RB_DETECTRON2_SOURCE, a
                            local source archive or folder (checksum checked against a SHA256SUMS beside it),
                            built once with its compiled ops into a cached wheel, replacing an installed
                            detectron2 built from another source; else the official source install; else the
                            official v0.6 source release from PyPI, `pb1-detectron2==0.6`, built with an
                            empty `detectron2._C` and the version pins v0.6 needs)
  3. the project itself    (`pip install -e .[test]`, editable, pointing at this checkout; the test tools
                            pinned by requirements/test-constraints.txt)
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
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_CONSTRAINTS = REPO / "requirements" / "test-constraints.txt"
D2_SOURCE_ENV = "RB_DETECTRON2_SOURCE"
# The same folder as resnet_backbone's own cache (RB_CACHE_DIR); this script runs before the package is installed.
CACHE = Path(os.environ.get("RB_CACHE_DIR") or Path.home() / ".cache" / "resnet_backbone")
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
D2_GIT = "git+https://github.com/facebookresearch/detectron2.git"
D2_SDIST = "pb1-detectron2==0.6"
D2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# detectron2's model_zoo (main and v0.6) imports pkg_resources, which setuptools 81 removed; torch 2.14 requires
# setuptools>=77.0.3. If a future detectron2 drops pkg_resources, the pin goes.
SETUPTOOLS_PIN = "setuptools>=77.0.3,<81"
# detectron2 v0.6 also uses np.int/np.bool (removed in numpy 1.24) and Image.LINEAR (removed in Pillow 10).
# OpenCV 4.9 and newer are built against numpy 2.
V06_PINS = ["numpy<1.24", "Pillow<10", SETUPTOOLS_PIN, "opencv-python-headless<4.9",
            "scikit-learn==1.3.2"]  # the demo's digits; later scikit-learn needs numpy >= 1.24
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
    # -q: pip's per-requirement lines would bury the step log (and CI's view of the test results); errors still show
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
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


def step_torch(_workdir, source=None):
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


def _requirement_name(line):
    return re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_constraints(workdir, v06):
    """requirements/test-constraints.txt, with the v0.6 pins replacing the lines they name on that path."""
    lines = [ln.strip() for ln in TEST_CONSTRAINTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if v06:
        pinned = {_requirement_name(p) for p in V06_PINS}
        lines = [ln for ln in lines if _requirement_name(ln) not in pinned] + V06_PINS
    path = Path(workdir) / "test_constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


V06_MARKER = "v0.6 sdist fallback"


def detectron2_is_v06():
    """Whether the installed detectron2 is this script's v0.6 fallback. Its version string cannot tell: detectron2
    main also calls itself 0.6. The fallback's empty extension says so in its compiler version."""
    res = subprocess.run([sys.executable, "-c", "from detectron2 import _C; print(_C.get_compiler_version())"],
                         capture_output=True, text=True)
    return dist_version("pb1-detectron2") is not None or V06_MARKER in res.stdout


# a model-zoo config that detectron2 main and v0.6 both ship inside the package
MODEL_ZOO_PROBE = "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"
READY = "detectron2.engine, collect_env_info, detectron2.model_zoo and its configs"


def detectron2_ready():
    # engine imports evaluation, which imports detectron2._C; default_setup runs collect_env_info; model_zoo
    # (get_config, how detectron2's tutorials and tests start) needs pkg_resources and its configs installed
    return importable("detectron2.engine, detectron2.model_zoo; "
                      "from detectron2.utils.collect_env import collect_env_info as c; c(); "
                      f"detectron2.model_zoo.get_config_file({MODEL_ZOO_PROBE!r})")


def pin_setuptools(_workdir):
    """A detectron2 that imports except for `pkg_resources` (setuptools >= 81, e.g. pulled in by torch): pin it."""
    ok, err = importable("pkg_resources")
    if ok:
        return
    log(f"detectron2.model_zoo needs pkg_resources ({err}): installing {SETUPTOOLS_PIN}")
    pip(SETUPTOOLS_PIN)


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
    # v0.6's setup.py installs the model-zoo configs from a top-level configs/ (a git checkout's layout, globbed
    # relative to it); the sdist carries them only in detectron2/model_zoo/configs, so without this copy
    # model_zoo.get_config finds none
    if not (src / "configs").exists():
        shutil.copytree(src / "detectron2" / "model_zoo" / "configs", src / "configs")
        log("copied detectron2/model_zoo/configs to configs/ (where v0.6's setup.py takes the model-zoo configs from)")
    extra = ["--force-reinstall", "--no-deps"] if rebuild else []
    pip("--no-build-isolation", *extra, str(src), constraints=cons)


def source_digest(src: Path) -> str:
    """sha256 of an archive, or of a folder's relative paths and contents (build outputs excluded)."""
    h = hashlib.sha256()
    if src.is_file():
        with open(src, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if rel.startswith(("build/", ".git/")) or "/__pycache__/" in rel or path.suffix in (".so", ".pyc"):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def verify_source(src: Path) -> str:
    """The source's digest; checked against a SHA256SUMS beside it when there is one (a mismatch is an error)."""
    if not src.exists():
        raise StepError(f"detectron2 source {src} (from --detectron2-source / {D2_SOURCE_ENV}) does not exist; "
                        "give a detectron2 source archive (.tar.gz / .zip) or an unpacked source folder")
    digest = source_digest(src)
    sums = src.parent / "SHA256SUMS"
    if sums.exists():
        listed = dict((line.split()[1].lstrip("*"), line.split()[0]) for line in sums.read_text().splitlines()
                      if len(line.split()) == 2)
        if src.name not in listed:
            raise StepError(f"{sums} lists no checksum for {src.name} (it lists {sorted(listed)})")
        if listed[src.name] != digest:
            raise StepError(f"sha256 of {src} is {digest}, {sums} says {listed[src.name]}: refusing it")
        log(f"sha256 of {src.name} verified against {sums}")
    return digest


def wheel_cache_dir(digest: str) -> Path:
    """One folder per (source, torch, Python): a wheel built against another torch would not load."""
    torch_v = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True).stdout.strip().replace("+", "_")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return CACHE / "detectron2" / f"{digest[:16]}-torch{torch_v}-{py}"


def installed_detectron2_origin():
    """The file URL detectron2 was installed from (pip's direct_url.json), or None."""
    for name in ("detectron2", "pb1-detectron2"):
        try:
            info = json.loads(md.distribution(name).read_text("direct_url.json") or "{}")
        except md.PackageNotFoundError:
            continue
        return info.get("url", "")
    return None


def unpack_source(src: Path, workdir) -> Path:
    if src.is_dir():
        return src
    dest = Path(workdir) / "d2_source"
    dest.mkdir()
    if src.suffix == ".zip":
        import zipfile
        with zipfile.ZipFile(src) as z:
            z.extractall(dest)
    else:
        with tarfile.open(src) as tar:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, **kw)
    tops = [p for p in dest.iterdir() if (p / "setup.py").exists()]
    if (dest / "setup.py").exists():
        return dest
    if len(tops) != 1:
        raise StepError(f"{src} holds no single detectron2 source folder with a setup.py: {list(dest.iterdir())}")
    return tops[0]


def install_local_source(src: Path, workdir):
    """Build detectron2 from a local source (compiled ops included) once per source/torch/Python; install it."""
    cache = wheel_cache_dir(verify_source(src))
    wheels = sorted(cache.glob("detectron2-*.whl"))
    origin = installed_detectron2_origin() or ""
    if wheels and origin == wheels[0].as_uri() and detectron2_ready()[0]:
        log(f"detectron2 from {src.name} (wheel {wheels[0]}): present")
        return
    if not wheels:
        folder = unpack_source(src, workdir)
        build = Path(workdir) / "d2_wheel"
        log(f"building detectron2 from {src} with its compiled ops (a few minutes, once; cached in {cache})")
        cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-build-isolation",
               "--no-deps", str(folder), "-w", str(build)]
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise StepError(f"building detectron2 from {src} failed (see pip's output above); unset "
                            f"{D2_SOURCE_ENV} / drop --detectron2-source to use the other install paths")
        cache.mkdir(parents=True, exist_ok=True)
        for whl in build.glob("detectron2-*.whl"):
            tmp = cache / (whl.name + ".part")
            shutil.copyfile(whl, tmp)
            os.replace(tmp, cache / whl.name)  # a half-copied wheel is never taken for a cached build
        wheels = sorted(cache.glob("detectron2-*.whl"))
    else:
        log(f"detectron2 from {src.name}: cached wheel {wheels[0]}")
    if origin is not None:
        log(f"replacing the installed detectron2 ({origin or 'unknown origin'}) by the one built from {src.name}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check",
                        "detectron2", "pb1-detectron2"], capture_output=True)
    pip(str(wheels[0]))
    ok, err = detectron2_ready()
    if not ok:
        raise StepError(f"detectron2 built from {src} installed, but not usable ({READY}): {err}")


def step_detectron2(workdir, source=None):
    pin_setuptools(workdir)
    if source:
        install_local_source(Path(source).expanduser().resolve(), workdir)
        return
    ok, err = detectron2_ready()
    if ok:
        log(f"detectron2 {dist_version('detectron2') or dist_version('pb1-detectron2')}: present")
        return
    if importable("detectron2")[0]:
        log(f"detectron2 is installed but not usable ({READY}): {err}")
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
        raise StepError(f"detectron2 built but not usable ({READY}): {err}")


def pinned_versions_ok(v06):
    """Every installed test tool at the version the constraints file pins (a newer one may break the suite)."""
    for line in TEST_CONSTRAINTS.read_text().splitlines():
        if "==" not in line or line.startswith("#"):
            continue
        name, version = line.split("==")
        if v06 and _requirement_name(name) in {_requirement_name(p) for p in V06_PINS}:
            continue
        if v06 and name.startswith(("onnx", "openvino")):
            continue
        if dist_version(name.strip()) != version.strip():
            return False
    return True


def project_ready(v06=False):
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
            "tabulate", "cv2", "pytest", "hypothesis", "sklearn"]
    return all(importlib.util.find_spec(m) is not None for m in mods) and pinned_versions_ok(v06)


def step_project(workdir, source=None):
    v06 = detectron2_is_v06()
    if project_ready(v06):
        log(f"resnet_backbone (editable, {REPO}) and test requirements (pinned): present")
        return
    # onnx / onnxruntime / openvino (export tests, benchmark peers) are not installed beside v0.6: newer numpy
    extras = "test,demo" if v06 else "test,onnx,deploy,demo"
    pip("--no-build-isolation", "-e", f"{REPO}[{extras}]", constraints=test_constraints(workdir, v06))
    if not project_ready(v06):
        raise StepError(f"resnet_backbone is not installed editable from {REPO} after `pip install -e`")


def step_kernels(workdir, source=None):
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
    parser.add_argument("--detectron2-source", metavar="ARCHIVE_OR_DIR", default=os.environ.get(D2_SOURCE_ENV),
                        help=f"build detectron2 from this local source (air-gapped install; default: ${D2_SOURCE_ENV})")
    args = parser.parse_args(argv)
    t0 = time.time()
    log(f"python {sys.executable} ({sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="rb_setup_") as workdir:
        for name, fn in STEPS:
            log(f"step '{name}'")
            try:
                fn(workdir, source=args.detectron2_source)
            except Exception as e:  # noqa: BLE001 - every failure is reported with its step
                log(f"FAILED at step '{name}': {e}")
                log("Fix the cause above and run `make setup` again; finished steps are kept. "
                    "See README 'Installing detectron2'.")
                return 1
    log(f"environment ready in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
