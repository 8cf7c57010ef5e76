#!/usr/bin/env bash
# How the demo bundles shipped in demo/bundles were made, in two stages per family:
#   1. the family's demo preset (seed 0) on Move4Digits' classic look (4 classes, 60 videos per
#      class, seed 0), into $FIRST;
#   2. that bundle fine-tuned (--init-from) on the varied look (the same classes and counts,
#      seed 0), into $OUT, then the ONNX export.
# The second stage is what makes the bundles hold up on a look they never saw (the alt style,
# docs/training.md#generalising-to-a-new-look); from scratch on the varied look attention_lstm
# and ms3d do not learn within the demo budgets. Every step is the project's own command;
# `make demo-train` runs the same recipe (service/quickstart.py, FINE_TUNE_ARGS) into store/.
#
#   bash demo/train_bundles.sh            # regenerate the data and demo/bundles
#   OUT=/tmp/b bash demo/train_bundles.sh # somewhere else
#   FAMILIES="c3d_vll ms3d" bash demo/train_bundles.sh  # some families only
#   TRAIN_ARGS="--threads 1 --workers 1" bash demo/train_bundles.sh  # flags for every run
# A first-stage bundle already in $FIRST is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/move4digits}
VARIED=${VARIED:-data/move4digits-varied}
FIRST=${FIRST:-store/demo-classic}
OUT=${OUT:-demo/bundles}

[ -f "$DATA/classInd.txt" ] || "$PY" -m training.synth --out "$DATA" --classes 4 --per-class 60 --seed 0
[ -f "$VARIED/classInd.txt" ] || "$PY" -m training.synth --out "$VARIED" --classes 4 --per-class 60 --seed 0 --style varied
mkdir -p "$FIRST" "$OUT"
for family in ${FAMILIES:-c3d_vll attention_lstm ms3d full_video}; do
    name="$family-move4digits"
    # The family's extra flags per stage, from the one place that holds them
    # (service/quickstart.py FIRST_STAGE_ARGS, FINE_TUNE_ARGS; none of them has a space).
    read -r -a first <<< "$("$PY" -c "import sys; from service.quickstart import FIRST_STAGE_ARGS as A; print(*A.get(sys.argv[1], ()))" "$family")"
    read -r -a extra <<< "$("$PY" -c "import sys; from service.quickstart import FINE_TUNE_ARGS as A; print(*A.get(sys.argv[1], ()))" "$family")"
    start=$(date +%s)
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
    [ -f "$FIRST/$name/manifest.json" ] ||
        "$PY" -m training.run --family "$family" --data "$DATA" --out "$FIRST" --name "$name" \
            --seed 0 "${first[@]}" ${TRAIN_ARGS:-}
    # shellcheck disable=SC2086
    "$PY" -m training.run --family "$family" --data "$VARIED" --out "$OUT" --name "$name" --seed 0 \
        --init-from "$FIRST/$name" "${extra[@]}" ${TRAIN_ARGS:-}
    echo "$name trained in $(( $(date +%s) - start )) s"
    "$PY" -m export.onnx --bundle "$OUT/$name"
done
