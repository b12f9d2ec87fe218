#!/usr/bin/env python
"""Generate the embedded "rb_shapes" detection dataset (COCO json + Pascal VOC xml) at a root folder.

    python tools/make_synthetic_data.py                          # default root, default size
    python tools/make_synthetic_data.py --root /data/rb_shapes --num-train 500 --num-val 100

Idempotent: a complete dataset with the same parameters is left as it is. The rb_shapes_* datasets
registered by resnet_backbone.data.register use whatever complete dataset is at their root.
"""
import argparse

from resnet_backbone.data.synthetic_detection import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    FORMATS,
    coco_paths,
    generate_dataset,
    voc_dirname,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", default=None, help="output folder (default: $RB_DATASETS/rb_shapes, else <repo>/datasets/rb_shapes)"
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="validation (VOC: test) images")
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=list(DEFAULT_IMAGE_SIZE), metavar=("HEIGHT", "WIDTH")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.root is None:
        from resnet_backbone.data.register import default_root  # imports detectron2: only when needed

        args.root = default_root()
    manifest = generate_dataset(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=tuple(args.image_size),
        seed=args.seed,
        formats=tuple(args.formats),
    )
    params = manifest["params"]
    print(
        "rb_shapes dataset at {} ({} train / {} val images, formats: {})".format(
            args.root, params["num_train"], params["num_val"], ", ".join(manifest["formats"])
        )
    )
    if "coco" in manifest["formats"]:
        for split in ("train", "val"):
            print("  COCO {}: {} (images: {})".format(split, *coco_paths(args.root, split)))
    if "voc" in manifest["formats"]:
        print("  VOC: {} (splits: train, test)".format(voc_dirname(args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
