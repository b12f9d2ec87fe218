#!/usr/bin/env bash
# The GPU checks, on a machine with one CUDA GPU, in under 8 minutes (each step has its own time limit):
#   1. the GPU tests (tests/test_gpu.py, marked `gpu`): deploy path on CUDA (BN folding, channels-last,
#      float16 / bfloat16, torch.compile) against float32, AMP detection training through detectron2's AMPTrainer;
#   2. the backbone and C4 sections of tools/benchmark.py on CUDA (plugin vs detectron2's built-in, channels-last
#      and mixed-precision contenders measured, deploy contenders);
#   3. 100 iterations of the demo's detector (configs/coco/frcnn_r101.yaml + configs/demo) through
#      tools/train_net.py with MODEL.DEVICE cuda, the plugin's and detectron2's built-in R-101-C4, and their ratio.
# Results: output/gpu_check/{benchmark,demo}/benchmark.{txt,json,_ratios.png}; the tables are printed at the end.
#
#   bash tools/gpu_check.sh                 # from the repository root, in the environment `make setup` prepared
#   PYTHON=/path/to/python OUT=/tmp/gc bash tools/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-output/gpu_check}
START=$(date +%s)

step() { echo; echo "== $1 ($(( $(date +%s) - START )) s elapsed)"; }

step "GPU"
"$PYTHON" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("tools/gpu_check.sh needs a CUDA GPU: torch.cuda.is_available() is False "
             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
print(f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s) visible (the checks use cuda:0)")
EOF

step "1/3 GPU tests (tests/test_gpu.py -m gpu)"
timeout 200 "$PYTHON" -m pytest tests/test_gpu.py -m gpu -q -rs -p no:cacheprovider

step "2/3 benchmark on CUDA: backbone (ResNet-101, batch 8) and C4 R-101 (2 images of 600x1000)"
timeout 170 "$PYTHON" tools/benchmark.py --device cuda --sections backbone c4 --depths 101 --batch 8 --size 224 \
    --det-images 2 --det-size 600 1000 --repeats 9 --warmup 3 --memory-rounds 3 --output-dir "$OUT/benchmark"

step "3/3 the demo's detector, 100 iterations on CUDA: plugin vs detectron2's built-in"
timeout 170 "$PYTHON" tools/benchmark.py --device cuda --sections demo --demo-iters 100 --output-dir "$OUT/demo" \
    --no-plot

step "summary"
cat "$OUT/benchmark/benchmark.txt"
grep "^demo detector" "$OUT/demo/benchmark.txt"
echo
echo "gpu_check done in $(( $(date +%s) - START )) s; results under $OUT"
