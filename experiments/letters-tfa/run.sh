#!/usr/bin/env bash
# Reproduces experiments/letters-tfa from the repository root (after `make install`): a tiny
# Faster R-CNN pretrained on letters fold 1 with the demo's budget by `standard` (Adam) and by
# `tfa` (TFA stage 1: SGD), then evaluated on the same 10 sampled 5-way 5-shot tasks (task
# seeds 1-10, scored at 10/50/200 adaptation steps) with four adaptation recipes, compared
# pairwise. Writes ./mlflow.db, experiment letters-tfa. About 2.5 hours on 2 CPU cores.
set -euo pipefail
export FSX_PROGRESS=plain
FSX=${FSX:-.venv/bin/fsx}
PYTHON=${PYTHON:-.venv/bin/python}
# the letters_detectors preset (1,000 steps of 16 images; 10 tasks at 10/50/200 steps) on Faster R-CNN, tiny backbone
COMMON=(experiment=letters_detectors detector=fasterrcnn backbone=tiny mlflow.experiment=letters-tfa)
EVAL=(task_seed=1 ways=5 shots=5)

"$FSX" pretrain "${COMMON[@]}" algorithm=standard   # A: Adam 1e-3, every parameter
"$FSX" pretrain "${COMMON[@]}" algorithm=tfa        # B: SGD momentum 0.9, LR 0.02 x 16/16, warm-up, steps

runs=()
evaluate() {  # evaluate LABEL OVERRIDES...: runs fsx eval and keeps LABEL=<its run id>
  local label=$1 out
  shift
  out=$("$FSX" eval "${COMMON[@]}" "${EVAL[@]}" "$@" | tee /dev/stderr)
  runs+=("$label=$(sed -n 's/^MLflow run: //p' <<<"$out" | tail -1)")
}
A=checkpoint=latest:pretrain:standard
B=checkpoint=latest:pretrain:tfa
evaluate "standard" "$A"                        # every parameter, Adam 1e-3 (fsx's default adaptation)
evaluate "TFA w/cos" "$B"                       # B's own recipe: a fresh cosine box predictor alone, SGD at LR/20
evaluate "TFA w/fc" "$B" adapt.classifier=fc    # the same with an FC classifier
# A's checkpoint with TFA's stage-2 recipe set by hand (the LR of B's recipe: 0.02 / 20)
evaluate "standard + TFA stage 2" "$A" adapt.params=class_head adapt.optimizer=sgd adapt.momentum=0.9 adapt.lr=0.001 adapt.weight_decay=1e-4 adapt.classifier=cos
# not run in the README's table (about an hour here): TFA's FRCN+ft-full baseline
# evaluate "TFA ft-full" "$B" adapt.params=all

ids=("${runs[@]#*=}")
"$FSX" compare --tracking-uri sqlite:///mlflow.db "${ids[@]}"                 # each minus standard
"$FSX" compare --tracking-uri sqlite:///mlflow.db "${ids[1]}" "${ids[2]}" "${ids[3]}"  # each minus TFA w/cos
"$PYTHON" experiments/letters-tfa/table.py "${runs[@]}"
