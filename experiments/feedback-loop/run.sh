#!/usr/bin/env bash
# Reproduces experiments/feedback-loop from the repository root (after `make install`): the
# tiny FCOS pretrained on letters fold 1 by `standard` and by `reptile` with the same compute
# (the letters_speed preset: 1,500 forward-backward passes of 16 images), then the simulated
# feedback loop from each checkpoint with random and with entropy acquisition: a 5-way 1-shot
# start (5 images), +5 images a round for 3 rounds, 50 adaptation steps a round, over task
# seeds 1-6. Writes ./mlflow.db (experiment feedback-loop) and ./feedback-loop-report/.
set -euo pipefail
export FSX_PROGRESS=plain
FSX=${FSX:-.venv/bin/fsx}
EXP=(mlflow.experiment=feedback-loop)

"$FSX" pretrain -m experiment=letters_speed algorithm=standard,reptile "${EXP[@]}"
"$FSX" loop -m checkpoint=latest:pretrain:standard,latest:pretrain:reptile acquire.rule=random,entropy task_seed=1,2,3,4,5,6 \
  ways=5 shots=1 acquire.k=5 loop.rounds=3 loop.steps=50 "${EXP[@]}"
"$FSX" report --loops --experiment feedback-loop --out feedback-loop-report
