#!/usr/bin/env bash
# How the demo bundles shipped in demo/bundles were made: Move4Digits (4 classes, 60 videos per
# class, seed 0), then each family's demo preset with seed 0, then the ONNX export. Every step
# is the project's own command. `make demo-train` trains the same way into store/ instead.
#
#   bash demo/train_bundles.sh            # regenerate data/move4digits and demo/bundles
#   OUT=/tmp/b bash demo/train_bundles.sh # somewhere else
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/move4digits}
OUT=${OUT:-demo/bundles}

[ -f "$DATA/classInd.txt" ] || "$PY" -m training.synth --out "$DATA" --classes 4 --per-class 60 --seed 0
mkdir -p "$OUT"
for family in c3d_vll attention_lstm ms3d full_video; do
    name="$family-move4digits"
    start=$(date +%s)
    "$PY" -m training.run --family "$family" --data "$DATA" --out "$OUT" --name "$name" --seed 0
    echo "$name trained in $(( $(date +%s) - start )) s"
    "$PY" -m export.onnx --bundle "$OUT/$name"
done
