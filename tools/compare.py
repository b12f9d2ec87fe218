#!/usr/bin/env python
"""Compare finished detection runs with the paper (Tables 7-8): prints a table and writes a PNG.

    python tools/compare.py output/demo/frcnn_r101 output/demo/frcnn_vgg16 --png output/demo/comparison.png

Each argument is the OUTPUT_DIR of a tools/train_net.py run (training or --eval-only), e.g. real COCO/VOC runs.
"""
import argparse

from resnet_backbone.compare import compare_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="OUTPUT_DIRs of finished tools/train_net.py runs")
    parser.add_argument("--png", default="comparison.png", help="where to write the plot (mAP bars + loss curves)")
    parser.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    return compare_runs(args.runs, args.png, markdown=args.markdown)


if __name__ == "__main__":
    main()
