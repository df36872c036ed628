"""The training loop that wastes nothing: batches built by DataLoader workers are the batches
the training process would build (augmentation included), and losses are read back from the
device only every sync_every steps."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from fsx.algorithms import PretrainData, build_algorithm
from fsx.data.coco import CocoSet, DetectionDataset
from fsx.data.transforms import build_transform
from fsx.engine.device import loader_workers
from fsx.engine.loop import infinite_batches, train
from fsx.errors import UsageError
from fsx.evaluation.predict import predict
from fsx.models.detectors import build_detector
from fsx.run.checks import check_pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def augmented(letters_source) -> DetectionDataset:
    source = CocoSet.load(letters_source / "annotations.json", letters_source).restrict(list(range(1, 25)))
    return DetectionDataset(source, [c["id"] for c in source.categories], build_transform(brightness=0.3, contrast=0.3, seed=4))


def _fcos(num_classes: int):
    spec = {
        "detector": {"name": "fcos"},
        "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]},
        "num_classes": num_classes,
        "image_size": 128,
        "image_mean": [0.9] * 3,
        "image_std": [0.25] * 3,
    }
    return build_detector(spec)


def _take(batches, k: int) -> list:
    return [next(batches) for _ in range(k)]


def _same(a: list, b: list) -> bool:
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b, strict=True):
        if [t["image_id"] for t in targets_a] != [t["image_id"] for t in targets_b]:
            return False
        if not all(torch.equal(x, y) for x, y in zip(images_a, images_b, strict=True)):
            return False
        if not all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(targets_a, targets_b, strict=True)):
            return False
    return True


def test_worker_processes_build_the_batches_of_the_training_process(augmented):
    here = _take(infinite_batches(augmented, 5, seed=2), 7)  # more than an epoch: two permutations
    workers = _take(infinite_batches(augmented, 5, seed=2, workers=2), 7)
    assert _same(here, workers)
    # the augmentation really draws: a different seed for the transform gives other pixels
    other = DetectionDataset(augmented.source, augmented.class_ids, build_transform(brightness=0.3, contrast=0.3, seed=5))
    assert not _same(here, _take(infinite_batches(other, 5, seed=2), 7))


def test_a_resumed_or_sharded_stream_augments_as_the_whole_one(augmented):
    whole = _take(infinite_batches(augmented, 4, seed=1), 6)
    resumed = _take(infinite_batches(augmented, 4, seed=1, skip=2, workers=1), 4)
    assert _same(whole[2:], resumed)
    shards = [_take(infinite_batches(augmented, 2, seed=1, rank=r, world_size=2), 6) for r in range(2)]
    for b, (images, targets) in enumerate(whole):
        assert [t["image_id"] for t in targets[0::2]] == [t["image_id"] for t in shards[0][b][1]]
        assert all(torch.equal(x, y) for x, y in zip(images[1::2], shards[1][b][0], strict=True))


def test_an_item_augments_from_its_draw_number_in_any_order(augmented):
    first = augmented[(3, 17)][0]
    augmented[(5, 2)]  # another draw in between moves no shared state
    assert torch.equal(augmented[(3, 17)][0], first)
    assert not torch.equal(augmented[(3, 18)][0], first)


def test_standard_pretraining_with_workers_gives_the_same_weights(augmented):
    def trained(workers: int) -> dict:
        torch.manual_seed(0)
        model = _fcos(len(augmented.class_ids))
        data = PretrainData(augmented.source, augmented.class_ids, [str(c) for c in augmented.class_ids], augmented, workers=workers)
        build_algorithm("standard", batch_size=4, lr=1e-3).pretrain(model, data, 3, torch.device("cpu"), seed=0, sync_every=2)
        return model.state_dict()

    zero, two = trained(0), trained(2)
    assert all(torch.equal(zero[k], two[k]) for k in zero)


def test_scoring_with_workers_predicts_what_the_main_process_does(augmented):
    torch.manual_seed(0)
    model = _fcos(len(augmented.class_ids))
    plain = DetectionDataset(augmented.source, augmented.class_ids)
    here = predict(model, plain, torch.device("cpu"), batch_size=5)
    assert here and predict(model, plain, torch.device("cpu"), batch_size=5, workers=2) == here


def test_losses_are_read_back_every_sync_every_steps_and_at_the_end():
    seen: list[tuple[int, type]] = []
    step_losses = iter([torch.tensor(v) for v in (3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05)])
    model = torch.nn.Linear(1, 1)
    train(model, lambda batch: {"loss": next(step_losses)}, iter(range(100)), 7, on_step=lambda s, l: seen.append((s, type(l["loss"]))), sync_every=3, show_progress=False)
    assert seen == [(1, torch.Tensor), (2, torch.Tensor), (3, float), (4, torch.Tensor), (5, torch.Tensor), (6, float), (7, float)]


def test_a_non_finite_loss_is_caught_at_the_next_read_back():
    losses = iter([torch.tensor(1.0), torch.tensor(math.nan), torch.tensor(1.0), torch.tensor(1.0)])
    steps: list[int] = []
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        train(torch.nn.Linear(1, 1), lambda b: {"loss": next(losses)}, iter(range(9)), 4, on_step=lambda s, l: steps.append(s), sync_every=2, show_progress=False)
    assert steps == [1]


def test_loader_workers_setting():
    cpu = torch.device("cpu")
    assert loader_workers("auto", cpu) == 0
    assert loader_workers(3, cpu) == 3 and loader_workers(0, cpu) == 0
    for bad in (-1, "two", 1.5, True):
        cfg = OmegaConf.create({"workers": bad, "train": {"steps": 1, "log_every": 1, "passes": None, "checkpoint_every": 0, "val_images": 0}})
        with pytest.raises(UsageError, match="workers="):
            check_pretrain(cfg)
