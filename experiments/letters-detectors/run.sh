#!/usr/bin/env bash
# Reproduces experiments/letters-detectors from the repository root (after `make install`):
# each detector pretrained with the demo's budget, scored on held-out base images, then
# evaluated on the same 10 sampled 5-way 5-shot tasks. Writes ./mlflow.db, experiment letters-detectors.
set -euo pipefail
export FSX_PROGRESS=plain
FSX=${FSX:-.venv/bin/fsx}
PYTHON=${PYTHON:-.venv/bin/python}
while read -r detector; do
  [ -n "$detector" ] || continue
  # shellcheck disable=SC2086 # each line is a list of overrides
  "$FSX" pretrain experiment=letters_detectors $detector
  "$FSX" eval experiment=letters_detectors checkpoint=latest
done <<'LIST'
detector=fcos
detector=retinanet
detector=retinanet detector.head_norm=none detector.box_loss=l1
detector=fasterrcnn
detector=ssd
LIST
"$PYTHON" experiments/letters-detectors/table.py --experiment letters-detectors
