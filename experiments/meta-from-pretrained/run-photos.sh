#!/usr/bin/env bash
# experiments/meta-from-pretrained, part 3 (the real photos of experiments/photos-pretrained,
# FCOS on EfficientNet-Lite0 from ImageNet, about 2 h on 2 cores): standard for N passes against
# ImageNet -> Reptile for N and standard N/2 -> Reptile N/2, Reptile adapted with its own recipe
# and with the common one. N = $PASSES (default 1000 batches of 8 images). Reptile's tasks are
# 4-way like the evaluation's, its inner batches 8 images like standard's.
PART=photos
LOGS=${LOGS:-experiments/meta-from-pretrained/logs/$PART}
source "$(dirname "$0")/../common.sh"
export FSX_SHARED_DATA=${FSX_SHARED_DATA:-../shared/data}
N=${PASSES:-1000}
H=$((N / 2))
P=(experiment=photos_pretrained mlflow.experiment=meta-photos backbone=efficientnet_lite0 backbone.weights=imagenet)
# ~algorithm.batch_size: the experiment sets standard's batch size, a key Reptile does not have
R=(algorithm=reptile '~algorithm.batch_size' algorithm.ways=4 algorithm.inner_batch=8)

spawn standard-$H pretrain "${P[@]}" train.passes=$H
spawn reptile-from-imagenet pretrain "${P[@]}" "${R[@]}" train.passes=$N
finish standard-$H
spawn reptile-from-standard pretrain "${P[@]}" "${R[@]}" train.passes=$H "init=$(checkpoint standard-$H)"
spawn standard-$N pretrain "${P[@]}" train.passes=$N
finish standard-$N reptile-from-imagenet reptile-from-standard

spawn eval-standard-$N eval "${P[@]}" "checkpoint=$(checkpoint standard-$N)"
for name in reptile-from-imagenet reptile-from-standard; do
  spawn "eval-$name-own" eval "${P[@]}" "checkpoint=$(checkpoint "$name")"
  spawn "eval-$name-common" eval "${P[@]}" "checkpoint=$(checkpoint "$name")" adapt.recipe=none
done
finish eval-standard-$N eval-{reptile-from-imagenet,reptile-from-standard}-{own,common}
"$PYTHON" experiments/meta-from-pretrained/table.py --experiment meta-photos --plot "$LOGS/curves.png"
