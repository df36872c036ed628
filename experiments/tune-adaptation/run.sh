#!/usr/bin/env bash
# experiments/tune-adaptation: how much does tuning the adaptation on the test tasks inflate a
# few-shot number? PART=letters (default) or PART=photos (../shared/data, FSX_SHARED_DATA).
# From the repository root after `make install`; resumes where it stopped; about 2 h per part
# on 2 cores. Writes ./mlflow.db (experiment tune-<part>) and logs in
# experiments/tune-adaptation/logs/<part>/.
#
# 1. standard pretraining;
# 2. an Optuna sweep (hydra/sweeper=tune, $TRIALS trials) over adapt.lr x adapt.params on
#    validation tasks (base classes, the pretraining's held-out images), the step count chosen
#    from the milestones (eval.objective=AP50@best);
# 3. the same sweep on the test tasks: what a study that peeks would choose, and report;
# 4. the test tasks scored once with 10 tasks for: the defaults, the validation choice, the
#    peeking choice; and the peeking choice on 10 test tasks it never saw (task seeds 101-110).
set -euo pipefail
PART=${PART:-letters}
export OMP_NUM_THREADS=1 FSX_PROGRESS=plain FSX_SHARED_DATA=${FSX_SHARED_DATA:-../shared/data}
FSX=${FSX:-.venv/bin/fsx}
PYTHON=${PYTHON:-.venv/bin/python}
TRIALS=${TRIALS:-12}
LOGS=${LOGS:-experiments/tune-adaptation/logs/$PART}
mkdir -p "$LOGS"
case $PART in
  letters) DATA=(experiment=letters_speed) ; HOLD=(train.val_images=280) ;;  # a fifth of the training images: validation tasks need a pool
  photos) DATA=(experiment=photos_pretrained backbone=efficientnet_lite0 backbone.weights=imagenet) ; HOLD=() ;;
  *) echo "PART=$PART: choose letters or photos" >&2; exit 2 ;;
esac
COMMON=("${DATA[@]}" "mlflow.experiment=tune-$PART")
SEARCH=(eval.milestones=[25,50,100,200] eval.objective=AP50@best "adapt.lr=tag(log, interval(1e-4, 1e-2))" "adapt.params=choice(all, heads, class_head)")

run() {  # run NAME VERB OVERRIDES...: once; output in $LOGS/NAME.log
  local name=$1 verb=$2
  shift 2
  [ -e "$LOGS/$name.done" ] && return 0
  "$FSX" "$verb" "$@" > "$LOGS/$name.log" 2>&1 || { echo "fsx $verb failed ($name): see $LOGS/$name.log" >&2; return 1; }
  touch "$LOGS/$name.done"
}
best() {  # best NAME: the best trial's overrides a sweep printed
  sed -n 's|^best trial: \(.*\) -> .*|\1|p' "$LOGS/$1.log"
}

run pretrain pretrain "${COMMON[@]}" "${HOLD[@]}"
CHECKPOINT=runs:/$(sed -n 's|^checkpoint: runs:/\([0-9a-f]*\)/.*|\1|p' "$LOGS/pretrain.log")
run tune-validation eval -m hydra/sweeper=tune "hydra.sweeper.n_trials=$TRIALS" "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.tasks=validation eval.repeats=5 "${SEARCH[@]}"
run tune-test eval -m hydra/sweeper=tune "hydra.sweeper.n_trials=$TRIALS" "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.tasks=test eval.repeats=5 "${SEARCH[@]}"
# shellcheck disable=SC2046 # the best trial's overrides, one word each
run final-defaults eval "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.milestones=[25,50,100,200]
run final-validation-choice eval "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.milestones=[25,50,100,200] $(best tune-validation)
run final-test-choice eval "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.milestones=[25,50,100,200] $(best tune-test)
run final-test-choice-fresh eval "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.milestones=[25,50,100,200] task_seed=101 $(best tune-test)
"$PYTHON" experiments/tune-adaptation/table.py --experiment "tune-$PART"
