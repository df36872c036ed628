#!/usr/bin/env bash
# experiments/tune-adaptation: how much does tuning the adaptation on the test tasks inflate a
# few-shot number? PART=letters (default) or PART=photos (../shared/data, FSX_SHARED_DATA).
# From the repository root after `make install`; resumes where it stopped; two commands at a
# time, one thread each. Writes ./mlflow.db (experiment tune-<part>) and logs in
# experiments/tune-adaptation/logs/<part>/.
#
# 1. standard pretraining;
# 2. an Optuna sweep (hydra/sweeper=tune, $TRIALS trials) over adapt.lr x adapt.params on
#    validation tasks (base classes, the pretraining's held-out images), the step count chosen
#    from the milestones (eval.objective=AP50@best);
# 3. the same sweep on the test tasks: what a study that peeks would choose, and report;
# 4. the test tasks scored once with 10 tasks for: the defaults, the validation choice, the
#    peeking choice; and the peeking choice on 10 test tasks it never saw (task seeds 101-110).
PART=${PART:-letters}
export FSX_SHARED_DATA=${FSX_SHARED_DATA:-../shared/data}
LOGS=${LOGS:-experiments/tune-adaptation/logs/$PART}
source "$(dirname "$0")/../common.sh"
TRIALS=${TRIALS:-12}
case $PART in
  letters) DATA=(experiment=letters_speed) ; HOLD=(train.val_images=280) ;;  # a fifth of the training images: validation tasks need a pool
  photos) DATA=(experiment=photos_pretrained backbone=efficientnet_lite0 backbone.weights=imagenet) ; HOLD=() ;;
  *) echo "PART=$PART: choose letters or photos" >&2; exit 2 ;;
esac
COMMON=("${DATA[@]}" "mlflow.experiment=tune-$PART")
SEARCH=(eval.milestones=[25,50,100,200] eval.objective=AP50@best "adapt.lr=tag(log, interval(1e-4, 1e-2))" "adapt.params=choice(all, heads, class_head)")
best() {  # best NAME: the best trial's overrides a sweep printed
  sed -n 's|^best trial: \(.*\) -> .*|\1|p' "$LOGS/$1.log"
}

# the pretraining alone, on both cores
OMP_NUM_THREADS=$JOBS run pretrain pretrain "${COMMON[@]}" "${HOLD[@]}"
CHECKPOINT=$(checkpoint pretrain)
# the two sweeps side by side, each in its own sweep folder (same sampler seed: the same
# settings, judged by different tasks)
spawn tune-validation eval -m hydra/sweeper=tune "hydra.sweeper.n_trials=$TRIALS" "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.tasks=validation eval.repeats=5 "${SEARCH[@]}" "hydra.sweep.dir=$LOGS/sweep-validation"
spawn tune-test eval -m hydra/sweeper=tune "hydra.sweeper.n_trials=$TRIALS" "${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.tasks=test eval.repeats=5 "${SEARCH[@]}" "hydra.sweep.dir=$LOGS/sweep-test"
finish tune-validation tune-test
FINAL=("${COMMON[@]}" "checkpoint=$CHECKPOINT" eval.milestones=[25,50,100,200])
# shellcheck disable=SC2046 # the best trial's overrides, one word each
{
  spawn final-defaults eval "${FINAL[@]}"
  spawn final-validation-choice eval "${FINAL[@]}" $(best tune-validation)
  spawn final-test-choice eval "${FINAL[@]}" $(best tune-test)
  spawn final-test-choice-fresh eval "${FINAL[@]}" task_seed=101 $(best tune-test)
}
finish final-defaults final-validation-choice final-test-choice final-test-choice-fresh
"$PYTHON" experiments/tune-adaptation/table.py --experiment "tune-$PART"
