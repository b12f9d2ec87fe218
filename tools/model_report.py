#!/usr/bin/env python
"""Parameters and multiply-adds of the registered models next to the paper (Tables 1 and 6) and torchvision.

    python tools/model_report.py                                  # every model of list_models()
    python tools/model_report.py --models resnet50 cifar_resnet110 vgg16 --markdown

Multiply-adds at 224x224 (32x32 for the CIFAR nets), counted with fvcore; the models use the paper's stride
placement (create_model defaults). Progress goes to stderr, the table to stdout (and --output, if given).
"""
import argparse
import sys
from pathlib import Path


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="create_model names (default: all registered)")
    parser.add_argument("--markdown", action="store_true", help="print a GitHub-markdown table")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch

    from resnet_backbone.report import format_model_table, model_rows

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    def progress(i, n, row):
        print(f"[{i}/{n}] {row.name}: {row.params:,} params, {row.multiply_adds / 1e9:.3f} GMACs "
              f"({row.seconds:.1f} s)", file=sys.stderr, flush=True)

    rows = model_rows(args.models, progress=progress)
    table = format_model_table(rows, markdown=args.markdown)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
