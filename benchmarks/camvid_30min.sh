#!/usr/bin/env bash
# Accuracy benchmark: each model trained from scratch for 30 minutes on CamVid, then the
# checkpoint and its ONNX export evaluated on val. Run from the repository root; ~35 min a model
# and seed on a 2-core CPU, nothing else running.
# Usage: [SEEDS="0 1"] [EXTRA="--flags"] [MINUTES=30] [CAMVID=DIR] [OUT=DIR] \
#          benchmarks/camvid_30min.sh [MODEL...]
# MINUTES is the training budget (fractions allowed; default 30), CAMVID the dataset folder
# (default ../shared/data/camvid), OUT where the runs go (default runs/camvid_30min).
set -euo pipefail
DATA=camvid:${CAMVID:-../shared/data/camvid}
OUT=${OUT:-runs/camvid_30min}
SEEDS=${SEEDS:-0}
MINUTES=${MINUTES:-30}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(mbv3_lraspp_small mbv3_unet_small mbv3_unet_large bisenetv2)
runs=()
for m in "${models[@]}"; do
  for s in $SEEDS; do
    dir="$OUT/$m-s$s"
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    edgeseg train --data "$DATA" --model "$m" --minutes "$MINUTES" --seed "$s" --out "$dir" ${EXTRA:-}
    edgeseg export "$dir/best.pt" --out "$dir"
    edgeseg eval "$dir/best.pt" --data "$DATA" --device cpu --json "$dir/eval_pt.json"
    edgeseg eval "$dir/model.onnx" --data "$DATA" --json "$dir/eval_onnx.json"
    runs+=("$dir")
  done
done
python - "${runs[@]}" <<'PY'
import json, sys
print(f"{'run':34s} {'train val mIoU':>15s} {'eval .pt':>9s} {'eval .onnx':>10s} {'Pole':>6s}")
for d in sys.argv[1:]:
    t = json.load(open(f"{d}/metrics.json"))
    a = json.load(open(f"{d}/eval_pt.json"))
    b = json.load(open(f"{d}/eval_onnx.json"))
    pole = a["per_class_iou"].get("Pole", float("nan"))
    print(f"{d:34s} {t['val_miou']:15.4f} {a['miou']:9.4f} {b['miou']:10.4f} {pole:6.3f}")
PY
