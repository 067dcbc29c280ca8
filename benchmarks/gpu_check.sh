#!/usr/bin/env bash
# The one prepared run for a machine with a GPU, from a fresh checkout (no network needed):
#   benchmarks/gpu_check.sh OUTDIR [CHECKPOINT] [CLIP]
#   benchmarks/gpu_check.sh --rehearse OUTDIR      # the same run on a CPU: GPU steps say why not
# Steps, each with its own time limit (a hang in one keeps the others' results; the limits sum
# to 7 minutes, and a lent GPU machine's start-up comes out of the same 15):
#   1 nvidia-smi                                   -> OUTDIR/nvidia-smi.txt
#   2 install this checkout (its C++ extension)    -> OUTDIR/install.log
#   3 the imports every later step needs           -> OUTDIR/imports.log
#   4 NVRTC builds the shipped CUDA sources        -> OUTDIR/nvrtc.log
#   5 every gpu-marked test                        -> OUTDIR/gpu_tests.log
#   6 benchmarks/gpu_figures.py                    -> OUTDIR/gpu.json, OUTDIR/gpu_figures.log
# OUTDIR/steps.txt lists each step's status and seconds. No torch.compile here: max-autotune
# takes minutes.
set -uo pipefail
rehearse=0
if [ "${1:-}" = "--rehearse" ]; then rehearse=1; shift; fi
out=${1:?usage: benchmarks/gpu_check.sh [--rehearse] OUTDIR [CHECKPOINT] [CLIP]}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export EDGESEG_CACHE=${EDGESEG_CACHE:-/tmp/edgeseg-cache}
py=${PYTHON:-python3}
: > "$out/steps.txt"

step() {  # step NAME LIMIT_S LOG COMMAND...: run with a limit, record status and time
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$log" 2>&1
    local rc=$?
    local status=ok
    [ $rc -ne 0 ] && status="failed (exit $rc)"
    [ $rc -eq 124 ] && status="timed out after ${limit} s"
    echo "$name: $status, $(( SECONDS - t0 )) s" | tee -a "$out/steps.txt"
    tail -n 3 "$out/$log"
    return $rc
}

skip() {  # skip NAME: a step that needs a GPU, on a rehearsal
    echo "$1: skipped: no GPU" | tee -a "$out/steps.txt"
}

if [ $rehearse = 1 ]; then
    skip nvidia-smi
else
    step nvidia-smi 10 nvidia-smi.txt nvidia-smi
fi
# --no-deps --no-build-isolation: the machine has what edgeseg needs (or the run says what is
# missing) and nothing can be fetched there.
step install 75 install.log "$py" -m pip install --no-deps --no-build-isolation -e . || exit 1
need_gpu="import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'"
[ $rehearse = 1 ] && need_gpu="print('rehearsal: no GPU asked for')"
step imports 20 imports.log "$py" -c "
import edgeseg, edgeseg._cpu, cuda.bindings.driver, cuda.bindings.nvrtc
from edgeseg.runtime import kernels
kernels.use('cpu')
$need_gpu
print('edgeseg', edgeseg.__file__, 'C++ kernels', kernels.implementation)" || exit 1
# a skip (no NVRTC library) is a failure here: the GPU pipeline cannot run without it
step nvrtc 25 nvrtc.log bash -c "$py -m pytest -q -rs -p no:cacheprovider \
    tests/runtime/test_kernels_cuda.py::test_nvrtc_builds_the_shipped_sources \
    && ! grep -q skipped '$out/nvrtc.log'"
step gpu-tests 130 gpu_tests.log "$py" -m pytest -q -m gpu -p no:cacheprovider tests
args=(--out "$out/gpu.json")
[ $rehearse = 1 ] && args+=(--rehearse)
[ -n "${2:-}" ] && args+=(--checkpoint "$2")
[ -n "${3:-}" ] && args+=(--clip "$3")
step figures 150 gpu_figures.log "$py" benchmarks/gpu_figures.py "${args[@]}"
echo "gpu_check: $(( SECONDS )) s in all" | tee -a "$out/steps.txt"
