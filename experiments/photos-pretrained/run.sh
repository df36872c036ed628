#!/usr/bin/env bash
# Reproduces experiments/photos-pretrained from the repository root (after `make install`):
# on the three real-photo datasets (../shared/data, or $FSX_SHARED_DATA), FCOS on
# EfficientNet-Lite0 from ImageNet against the same from scratch and ResNet-18 from scratch,
# and a Faster R-CNN on the ImageNet Lite0 adapted with TFA's stage 2; every checkpoint then
# evaluated on the same 10 sampled 4-way 5-shot tasks. Writes ./mlflow.db, experiment
# photos-pretrained, and the commands' output into $LOGS; two commands at a time, one thread each.
set -euo pipefail
export OMP_NUM_THREADS=1 FSX_PROGRESS=plain
export FSX_SHARED_DATA=${FSX_SHARED_DATA:-../shared/data}
FSX=${FSX:-.venv/bin/fsx}
PYTHON=${PYTHON:-.venv/bin/python}
LOGS=${LOGS:-experiments/photos-pretrained/logs}
mkdir -p "$LOGS"

# run NAME VERB OVERRIDES...: one fsx command, its output in $LOGS/NAME.log
# (a command that finished before is not run again, so an interrupted study resumes)
run() {
  local name=$1 verb=$2
  shift 2
  [ -e "$LOGS/$name.done" ] && return 0
  "$FSX" "$verb" experiment=photos_pretrained "$@" > "$LOGS/$name.log" 2>&1 || { echo "fsx $verb failed: see $LOGS/$name.log" >&2; return 1; }
  touch "$LOGS/$name.done"
}
checkpoint_of() {  # the run id a pretraining printed
  sed -n 's|^checkpoint: runs:/\([0-9a-f]*\)/.*|\1|p' "$LOGS/$1.log"
}

# Two lanes of commands, one per core, each in order; an evaluation runs after the
# pretraining it reads, which its own lane ran before it. The lanes come out about equally
# long (about an hour of pretraining and an hour of evaluation each on a quiet 2-core machine).
lane_a() {
  # 1. pretraining on the 9 base classes (cards, blood cells)
  run pretrain-lite0-imagenet pretrain backbone=efficientnet_lite0 backbone.weights=imagenet
  run pretrain-fasterrcnn-lite0-imagenet pretrain detector=fasterrcnn backbone=efficientnet_lite0 backbone.weights=imagenet
  # 2. the same 10 tasks of the 4 microcontroller boards for every checkpoint
  local lite0
  lite0=$(checkpoint_of pretrain-lite0-imagenet)
  run eval-lite0-imagenet eval "checkpoint=runs:/$lite0"
  run eval-lite0-imagenet-head eval "checkpoint=runs:/$lite0" adapt.params=class_head
  # TFA's stage 2 on the ImageNet body: a fresh cosine box predictor trained alone (SGD 0.001, momentum 0.9)
  run eval-fasterrcnn-tfa-stage2 eval "checkpoint=runs:/$(checkpoint_of pretrain-fasterrcnn-lite0-imagenet)" \
    adapt.params=class_head adapt.optimizer=sgd adapt.lr=0.001 adapt.momentum=0.9 adapt.weight_decay=1e-4 adapt.classifier=cos
}
lane_b() {
  run pretrain-lite0-scratch pretrain backbone=efficientnet_lite0
  run pretrain-resnet18-scratch pretrain backbone=resnet18
  run eval-lite0-scratch eval "checkpoint=runs:/$(checkpoint_of pretrain-lite0-scratch)"
  run eval-resnet18-scratch eval "checkpoint=runs:/$(checkpoint_of pretrain-resnet18-scratch)"
}
lane_a & a=$!
lane_b & b=$!
failed=0
wait $a || failed=1
wait $b || failed=1
[ $failed = 0 ] || { echo "a command failed (see above); run this script again to resume" >&2; exit 1; }

"$PYTHON" experiments/photos-pretrained/table.py --experiment photos-pretrained --plot "$LOGS/curves.png"
