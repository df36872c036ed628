#!/usr/bin/env bash
# experiments/meta-from-pretrained, part 2 (letters fold 1): standard and Reptile from random
# weights at several budgets, to tell "too little compute" from "a method that learns worse
# features". BUDGETS="1500 5000" (default, about 2.5 h on 2 cores); add 15000 where there is
# time (about 6 h more on 2 cores) or a GPU.
PART=budget
LOGS=${LOGS:-experiments/meta-from-pretrained/logs/$PART}
source "$(dirname "$0")/../common.sh"
L=(experiment=meta_letters mlflow.experiment=meta-budget)
names=()
for B in ${BUDGETS:-1500 5000}; do
  for alg in standard reptile; do
    spawn "$alg-$B" pretrain "${L[@]}" "algorithm=$alg" "train.passes=$B"
    names+=("$alg-$B")
  done
done
finish "${names[@]}"
for name in "${names[@]}"; do
  spawn "eval-$name" eval "${L[@]}" "checkpoint=$(checkpoint "$name")"
done
finish "${names[@]/#/eval-}"
"$PYTHON" experiments/meta-from-pretrained/table.py --experiment meta-budget --plot "$LOGS/curves.png"
