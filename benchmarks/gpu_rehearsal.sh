#!/usr/bin/env bash
# Rehearse the GPU machine's run on a CPU (CI runs this): benchmarks/gpu_check.sh --rehearse in
# a fresh virtual environment that holds only what the GPU machine's image holds of edgeseg's
# dependencies, on a copy of the checkout as the device tool sends it (tracked files and
# untracked ones git does not ignore; nothing built), with pip kept off the network while
# gpu_check.sh runs.
#   benchmarks/gpu_rehearsal.sh OUTDIR
# Fails when a step fails (a skip for want of a GPU is expected) or when gpu.json lacks a
# section that a GPU run writes.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_rehearsal.sh OUTDIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The image's packages that edgeseg and its tests use (benchmarks/README.md, KINDS.md of the
# device tool): no torch-pruning, onnxslim, onnxconverter-common or ruff. PyTorch is the CPU
# build here; cuda-bindings and NVRTC import and compile without a GPU. cupy is in the image
# too, but nothing of edgeseg imports it.
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "torch==2.13.0" numpy opencv-python-headless onnx onnxruntime \
    "cuda-bindings>=13,<14" "nvidia-cuda-nvrtc>=13,<14" rich prometheus-client matplotlib \
    pytest hypothesis pytest-benchmark pybind11 "setuptools>=68"

mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 cp --parents -t "$work/src")

PYTHON="$work/venv/bin/python" bash "$work/src/benchmarks/gpu_check.sh" --rehearse "$out" \
    || { echo "gpu_check.sh --rehearse failed: $(grep -v ': ok\|skipped' "$out/steps.txt")"; exit 1; }
"$work/venv/bin/python" - "$out" "$work/src/benchmarks" <<'EOF'
import json, sys
from pathlib import Path

out, bench = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, bench)
from gpu_figures import SECTIONS  # noqa: E402

steps = (out / "steps.txt").read_text()
bad = [line for line in steps.splitlines() if not line.startswith("gpu_check:")
       and not line.endswith((" s", "skipped: no GPU")) or "failed" in line or "timed out" in line]
figures = json.loads((out / "gpu.json").read_text())
missing = [s for s in SECTIONS if s not in figures]
errors = {s: v["error"] for s, v in figures.items() if isinstance(v, dict) and "error" in v}
if bad or missing or errors:
    sys.exit(f"rehearsal: steps {bad}, missing sections {missing}, errors {errors}")
print(f"rehearsal: every step ran or said why not; gpu.json has all {len(SECTIONS)} sections")
EOF
