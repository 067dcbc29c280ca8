#!/usr/bin/env bash
# Precision/accuracy table: FP32, FP16, INT8 post-training (TensorRT and CPU flavours) and INT8
# quantization-aware ONNX of ONE checkpoint, each evaluated on CamVid val through the deployment
# path, then ONNX Runtime CPU latency of all of them with `edgeseg bench` (same run).
# Usage: benchmarks/precision_table.sh CKPT [OUT]      (~15 min on a 2-core CPU)
#        QAT_EPOCHS=0 benchmarks/precision_table.sh ...  skips the QAT rows
# Environment: CAMVID (dataset folder, default ../shared/data/camvid), QAT_EPOCHS (default 3),
# BENCH_FRAMES (frames `edgeseg bench` times, default 200), MAX_DROP (the INT8 exports' --max-drop,
# default none: plain post-training INT8, the table's subject; a number makes each row the file the
# guarantee would ship, with its kept layers).
set -euo pipefail
CKPT=${1:?usage: benchmarks/precision_table.sh CKPT [OUT]}
OUT=${2:-runs/precision}
DATA=camvid:${CAMVID:-../shared/data/camvid}
QAT_EPOCHS=${QAT_EPOCHS:-3}
BENCH_FRAMES=${BENCH_FRAMES:-200}
MAX_DROP=${MAX_DROP:-none}
mkdir -p "$OUT"
edgeseg export "$CKPT" --out "$OUT" --json "$OUT/export_fp32.json"                    # model.onnx
edgeseg export "$CKPT" --out "$OUT" --fp16 --json "$OUT/export_fp16.json"             # model.fp16.onnx
for t in trt cpu; do                                                                     # model.int8-T.onnx
  edgeseg export "$CKPT" --out "$OUT" --int8 --calib "$DATA" --target "$t" --max-drop "$MAX_DROP" --json "$OUT/export_int8_$t.json"
  if [ "$QAT_EPOCHS" -gt 0 ]; then
    edgeseg export "$CKPT" --out "$OUT" --qat --data "$DATA" --epochs "$QAT_EPOCHS" --target "$t" \
      --max-drop "$MAX_DROP" --device cpu --json "$OUT/export_qat_$t.json"                                      # model.int8-qat-T.onnx
  fi
done
QAT=(); [ "$QAT_EPOCHS" -gt 0 ] && QAT=(model.int8-qat-trt model.int8-qat-cpu)
for m in model model.fp16 model.int8-trt model.int8-cpu "${QAT[@]}"; do
  edgeseg eval "$OUT/$m.onnx" --data "$DATA" --device cpu --json "$OUT/eval_$m.json"
done
for m in model.int8-trt ${QAT[0]:-}; do   # what TensorRT computes: Q/DQ as written, int32 sums
  edgeseg eval "$OUT/$m.onnx" --data "$DATA" --device cpu --exact-qdq --json "$OUT/eval_exact_$m.json"
done
if [ "$QAT_EPOCHS" -gt 0 ]; then   # last QAT run's float weights
  edgeseg eval "$OUT/qat.pt" --data "$DATA" --device cpu --json "$OUT/eval_qat_fp32.json"
fi
BENCH=("$OUT/model.onnx" "$OUT/model.int8-cpu.onnx" "$OUT/model.fp16.onnx")
[ "$QAT_EPOCHS" -gt 0 ] && BENCH+=("$OUT/model.int8-qat-cpu.onnx")
edgeseg bench "${BENCH[@]}" --no-baselines --frames "$BENCH_FRAMES" --json "$OUT/bench.json"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
bench = {r["file"].split("/")[-1]: r for r in json.load(open(f"{out}/bench.json"))["results"] if "skipped" not in r}
fp32 = json.load(open(f"{out}/eval_model.json"))["miou"]
print(f"{'model':24s} {'val mIoU':>9s} {'vs FP32':>8s} {'exact Q/DQ':>10s} {'vs FP32':>8s} {'ORT CPU p50 ms':>15s}")
for m in ["model", "model.fp16", "model.int8-trt", "model.int8-cpu", "model.int8-qat-trt", "model.int8-qat-cpu"]:
    try:
        miou = json.load(open(f"{out}/eval_{m}.json"))["miou"]
    except FileNotFoundError:  # QAT_EPOCHS=0
        continue
    try:
        ex = json.load(open(f"{out}/eval_exact_{m}.json"))["miou"]
        exact = f"{ex:10.4f} {100 * (ex - fp32):+7.2f}pt"
    except FileNotFoundError:
        exact = f"{'-':>10s} {'':>8s}"
    b = bench.get(f"{m}.onnx")
    lat = f"{b['model_only_ms']['p50']:.2f}" if b else "-"
    print(f"{m + '.onnx':24s} {miou:9.4f} {100 * (miou - fp32):+7.2f}pt {exact} {lat:>15s}")
PY
