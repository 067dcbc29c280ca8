#!/usr/bin/env bash
# The one prepared script a session with a GPU runs (budget: 8 minutes on a fresh machine with
# the checkout installed: pip install --no-deps --no-build-isolation -e .).
#   benchmarks/gpu_check.sh OUTDIR [CHECKPOINT] [CLIP]
# Writes OUTDIR/nvidia-smi.txt, gpu_tests.log (every gpu-marked test), gpu.json and
# gpu_figures.log (benchmarks/gpu_figures.py). Each step has its own time limit, so a hang in
# one still leaves the others' results.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR [CHECKPOINT] [CLIP]}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 EDGESEG_CACHE=${EDGESEG_CACHE:-/tmp/edgeseg-cache}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
start=$(date +%s)
timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
echo "gpu tests: $(( $(date +%s) - start )) s" | tee -a "$out/gpu_tests.log"
args=(--out "$out/gpu.json")
[ -n "${2:-}" ] && args+=(--checkpoint "$2")
[ -n "${3:-}" ] && args+=(--clip "$3")
timeout 210 python3 benchmarks/gpu_figures.py "${args[@]}" 2>&1 | tee "$out/gpu_figures.log"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$out/gpu_figures.log"
