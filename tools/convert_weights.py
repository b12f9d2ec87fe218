#!/usr/bin/env python
"""Convert pretrained weights between namings: torchvision, MSRA/Caffe2 pkl, detectron2, this plugin.

    python tools/convert_weights.py --input resnet50-0676ba61.pth --output r50_tv.pkl --to detectron2
    python tools/convert_weights.py --input R-50.pkl --output r50.pth --from msra --to plugin --model resnet50
    python tools/convert_weights.py --input r101.pth --output r101_c4.pkl --to detectron2 --layout c4
    python tools/convert_weights.py --to detectron2 --model resnet101 \\
        --input detectron2://ImageNetPretrained/MSRA/R-101.pkl --output weights/R-101.pkl
    python tools/convert_weights.py --to detectron2 --model vgg16 \\
        --input https://download.pytorch.org/models/vgg16-397923af.pth --output weights/vgg16.pkl

--input may be a URL or a detectron2:// path: it is downloaded once into $RB_CACHE_DIR (default
~/.cache/resnet_backbone) with a progress bar and checked against the SHA-256 its name publishes (torchvision's
<name>-<hash prefix>.pth) or --sha256. Run it on a machine with internet access and copy the output (and its
.provenance.json) to one without: MODEL.WEIGHTS then names the local file.

The input is read only through resnet_backbone.checkpoint.safe_load (nothing stored in it runs). The output is
written atomically, with <output>.provenance.json beside it: source, pixel mean / std, channel order, input range
and stride placement - the settings the weights need, which the tensors themselves do not record.
Exit status 1, and nothing written, if a key could not be converted (or --model does not fit), unless --force.
"""
import argparse
import hashlib
import os
import sys


from resnet_backbone.checkpoint.pkl_writer import save_pkl
from resnet_backbone.utils.atomic import atomic_save
from resnet_backbone.checkpoint.convert import (
    FORMATS, convert_from_plugin, convert_to_plugin, detect_format,
)
from resnet_backbone.checkpoint.download import fetch, is_remote
from resnet_backbone.checkpoint.provenance import (
    PROVENANCE, get_provenance, provenance_for, write_provenance,
)
from resnet_backbone.checkpoint.safe_load import load_file
from resnet_backbone.d2.weights import DETECTOR_LAYOUTS

# what each output format is written as: detectron2 and Caffe2 read pickles of numpy arrays, the others torch.save
PICKLE_FORMATS = ("detectron2", "msra")
PICKLE_EXTENSIONS = (".pkl",)
TORCH_EXTENSIONS = (".pth", ".pt")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="weights file (.pth/.pt/.pkl, ...), URL or detectron2:// path (downloaded once)")
    parser.add_argument("--sha256", default=None,
                        help="expected SHA-256 (or its first hex digits) of a downloaded --input; default: the one "
                             "its file name publishes, if any")
    parser.add_argument("--output", required=True, help="where to write (.pkl for detectron2/msra, else .pth/.pt)")
    parser.add_argument("--from", dest="source", default="auto", choices=("auto",) + FORMATS,
                        help="naming of the input (default: detected from its keys)")
    parser.add_argument("--to", dest="to", default="plugin", choices=FORMATS, help="naming of the output")
    parser.add_argument("--model", default=None,
                        help="a create_model name (e.g. resnet50): check that the weights fill it exactly")
    parser.add_argument("--layout", default=None, choices=tuple(DETECTOR_LAYOUTS),
                        help="with --to detectron2: emit a detector's full key names (C4: backbone.* + "
                             "roi_heads.res5.*, FPN: backbone.bottom_up.*, ...); the classifier is dropped")
    parser.add_argument("--provenance", default=None, choices=sorted(PROVENANCE),
                        help="where the weights come from (default: the input's .provenance.json if any, "
                             "else the input format)")
    parser.add_argument("--force", action="store_true", help="write even if some keys did not convert")
    return parser


def _output_kind(to: str, output: str) -> str:
    ext = os.path.splitext(output)[1].lower()
    allowed = PICKLE_EXTENSIONS if to in PICKLE_FORMATS else TORCH_EXTENSIONS
    if ext not in allowed:
        raise ValueError(f"--output {output!r}: a {to} file must end in {' or '.join(allowed)}")
    return "pkl" if to in PICKLE_FORMATS else "torch"


def _provenance(args, local, checkpoint, source, plugin_sd):
    if args.provenance is not None:
        provenance = get_provenance(args.provenance)
    else:
        # the input's own record, else a known public source by its name (MSRA, torchvision, detectron2 zoo)
        found = provenance_for(local) or provenance_for(args.input)
        provenance = found[0] if found else None
        if provenance is None:
            key = source
            if source == "detectron2" and checkpoint.get("__author__") == "torchvision":
                key = "torchvision"  # detectron2's convert-torchvision-to-d2.py marks its output so
            elif source == "plugin" and any(v.dim() == 4 and v.shape[-1] == 3 for k, v in plugin_sd.items()
                                            if k == "stem.conv1.weight"):
                key = "plugin_cifar"  # a 3x3 stem is the CIFAR layout (paper Sec 4.2)
            provenance = get_provenance(key)
    # stride placement means something only for bottleneck ResNets
    if not any(k.startswith("res") and ".conv3." in k for k in plugin_sd):
        provenance = provenance.replace(stride_in_1x1=None)
    return provenance


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path, expected: str) -> None:
    got = _sha256(path)
    if not got.startswith(expected.lower()):
        raise SystemExit(f"--input {path}: its SHA-256 is {got}, not {expected} (--sha256)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.layout is not None and args.to != "detectron2":
        raise SystemExit(f"--layout {args.layout} needs --to detectron2 (got --to {args.to})")
    kind = _output_kind(args.to, args.output)

    local = fetch(args.input, sha256=args.sha256)  # a URL / detectron2:// path: the cached download
    if args.sha256 is not None:  # also a file downloaded before (fetch checks only what it downloads)
        _check_sha256(local, args.sha256)
    checkpoint = load_file(local)
    source = detect_format(checkpoint) if args.source == "auto" else args.source
    target = None
    if args.model is not None:
        from resnet_backbone.modeling import create_model

        target = create_model(args.model).state_dict()
    plugin_sd, to_plugin = convert_to_plugin(checkpoint, source, target=target)
    print(f"input {args.input}: {source} naming" + (" (detected)" if args.source == "auto" else ""))
    print(to_plugin)
    reports = [to_plugin]
    result = plugin_sd
    if args.to != "plugin":
        result, from_plugin = convert_from_plugin(plugin_sd, args.to, layout=args.layout)
        print(from_plugin)
        reports.append(from_plugin)

    if not all(r.ok for r in reports) and not args.force:
        print("not written: some keys did not convert (see above); --force writes anyway", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if kind == "pkl":
        save_pkl(result, args.output)
    else:
        atomic_save(result, args.output)
    provenance = _provenance(args, local, checkpoint, source, plugin_sd)
    record = write_provenance(provenance, args.output,
                              converted_from=args.input if is_remote(args.input) else os.path.abspath(args.input),
                              input_sha256=_sha256(local), input_format=source, format=args.to, layout=args.layout)
    print(f"wrote {args.output} ({args.to} naming" + (f", layout {args.layout}" if args.layout else "") + ")")
    print(f"wrote {record}: {provenance.source}; detectron2 settings {provenance.detectron2_settings()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
