#!/usr/bin/env bash
# experiments/meta-from-pretrained, part 1 (letters fold 1, about 2.5 h on 2 cores): standard
# pretraining for N passes against standard for N/2 then a meta-learner for N/2 (Meta-Baseline's
# recipe), each meta-learner adapted with its own recipe and with the common one; Reptile from
# scratch (the letters-adaptation-speed row) beside them. N = $PASSES (default 1500).
PART=letters
LOGS=${LOGS:-experiments/meta-from-pretrained/logs/$PART}
source "$(dirname "$0")/../common.sh"
N=${PASSES:-1500}
H=$((N / 2))
L=(experiment=meta_letters mlflow.experiment=meta-letters)

spawn standard-$N pretrain "${L[@]}" algorithm=standard train.passes=$N
spawn standard-$H pretrain "${L[@]}" algorithm=standard train.passes=$H
finish standard-$H
BASE=$(checkpoint standard-$H)
spawn reptile-from-standard pretrain "${L[@]}" algorithm=reptile train.passes=$H "init=$BASE"
spawn fomaml-from-standard pretrain "${L[@]}" algorithm=fomaml train.passes=$H "init=$BASE"
spawn joint-fixed-from-standard pretrain "${L[@]}" algorithm=joint algorithm.head=fixed train.passes=$H "init=$BASE"
spawn reptile-scratch pretrain "${L[@]}" algorithm=reptile train.passes=$N
finish standard-$N reptile-from-standard fomaml-from-standard joint-fixed-from-standard reptile-scratch

# the same 10 tasks for every row; a meta-learner's checkpoint with its own recipe and the common one
spawn eval-standard-$N eval "${L[@]}" "checkpoint=$(checkpoint standard-$N)"
for name in reptile-from-standard fomaml-from-standard joint-fixed-from-standard reptile-scratch; do
  spawn "eval-$name-own" eval "${L[@]}" "checkpoint=$(checkpoint "$name")"
  spawn "eval-$name-common" eval "${L[@]}" "checkpoint=$(checkpoint "$name")" adapt.recipe=none
done
finish eval-standard-$N eval-{reptile-from-standard,fomaml-from-standard,joint-fixed-from-standard,reptile-scratch}-{own,common}
"$PYTHON" experiments/meta-from-pretrained/table.py --experiment meta-letters --plot "$LOGS/curves.png"
