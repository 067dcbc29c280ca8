#!/usr/bin/env bash
# Accuracy benchmark: each model trained from scratch for 30 minutes on CamVid, then the
# checkpoint and its ONNX export evaluated on val. Run from the repository root; ~35 min a model
# on a 2-core CPU. Usage: benchmarks/camvid_30min.sh [MODEL...]   (default: all registered)
set -euo pipefail
DATA=camvid:${CAMVID:-../shared/data/camvid}
OUT=${OUT:-runs/camvid_30min}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(mbv3_unet_small mbv3_unet_large bisenetv2)
for m in "${models[@]}"; do
  # The defaults are the CPU recipe: batch 4, crop 3/4 of the input (256x352), scale 0.5-1.75,
  # ce+dice, weight EMA, five validations a run, BatchNorm frozen for the last 15%, no loader
  # process on 2 cores.
  edgeseg train --data "$DATA" --model "$m" --minutes 30 --out "$OUT/$m"
  edgeseg export "$OUT/$m/best.pt" --out "$OUT/$m"
  edgeseg eval "$OUT/$m/best.pt" --data "$DATA" --device cpu --json "$OUT/$m/eval_pt.json"
  edgeseg eval "$OUT/$m/model.onnx" --data "$DATA" --json "$OUT/$m/eval_onnx.json"
done
python - "$OUT" "${models[@]}" <<'PY'
import json, sys
out, models = sys.argv[1], sys.argv[2:]
print(f"{'model':18s} {'train val mIoU':>15s} {'eval .pt':>9s} {'eval .onnx':>10s}")
for m in models:
    t = json.load(open(f"{out}/{m}/metrics.json"))
    a = json.load(open(f"{out}/{m}/eval_pt.json"))
    b = json.load(open(f"{out}/{m}/eval_onnx.json"))
    print(f"{m:18s} {t['val_miou']:15.4f} {a['miou']:9.4f} {b['miou']:10.4f}")
PY
