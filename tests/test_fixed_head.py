"""Fixed-slot heads (algorithm.head=fixed) and the adaptation recipe a meta-learner's
checkpoint carries: the narrowed head is the same detector as a head cut down to the task's
rows, for every family; meta-training moves only the rows of the tasks' classes; a checkpoint
adapts as it was meta-trained unless told otherwise."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_algorithms import SETTINGS, small_model

from fsx.algorithms import build_algorithm
from fsx.algorithms.episodes import EpisodeSampler
from fsx.engine.finetune import AdaptSettings
from fsx.errors import UsageError
from fsx.models.heads import _class_rows, num_classes, only_class_rows, reset_class_head
from fsx.run import wiring
from fsx.run.fewshot import adapt_tags

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
FAMILIES = ("retinanet", "fcos", "fasterrcnn", "ssd")
ROWS = [5, 1, 6]


def batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 100.0, 110.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def losses(model, images, targets) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # Faster R-CNN samples its proposals
    model.train()
    return model(images, targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_narrowed_head_is_the_head_cut_down_to_the_tasks_rows(family):
    model = small_model(family, 8)
    cut = copy.deepcopy(model)
    reset_class_head(cut, len(ROWS), keep=ROWS)  # rows carried, background too
    images, targets = batch()
    expected = losses(cut, images, targets)
    with only_class_rows(model, ROWS):
        got = losses(model, images, targets)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=f"{family} {key}")
    assert num_classes(model) == 8  # restored after the block
    model.eval()
    with torch.no_grad():
        detections = model([images[0]])[0]
    assert detections["labels"].numel() == 0 or int(detections["labels"].max()) < 8


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_tasks_rows_receive_gradient(family):
    model = small_model(family, 8)
    images, targets = batch()
    with only_class_rows(model, ROWS):
        sum(losses(model, images, targets).values()).backward()
    for weight, _, anchors, rows, slots in _class_rows(model):
        grad = weight.grad.reshape(anchors, 8 + slots, rows, -1)
        used = [slots + r for r in ROWS]
        unused = [slots + r for r in range(8) if r not in ROWS]
        assert torch.count_nonzero(grad[:, unused]) == 0, family
        assert torch.count_nonzero(grad[:, used]) > 0, family


def test_bad_rows_and_bad_head_policies_are_refused():
    model = small_model("fcos", 4)
    with pytest.raises(ValueError, match="distinct head rows"), only_class_rows(model, [1, 1]):
        pass
    with pytest.raises(ValueError, match="distinct head rows"), only_class_rows(model, [4]):
        pass
    with pytest.raises(UsageError, match="head=global: choose shuffled"):
        build_algorithm("reptile", head="global")
    with pytest.raises(UsageError, match="head=global: choose shuffled"):
        build_algorithm("fomaml", head="global")


@pytest.mark.parametrize("name", ["reptile", "fomaml"])
def test_fixed_head_meta_training_moves_only_the_rows_of_the_tasks_classes(name, letters_data):
    alg = build_algorithm(name, **{**SETTINGS[name], "meta_batch": 1, "head": "fixed"})
    assert not alg.task_sized_head and alg.num_outputs(letters_data) == len(letters_data.class_names)
    model = small_model("fcos", alg.num_outputs(letters_data))
    before = model.head.classification_head.cls_logits.weight.detach().clone()
    alg.pretrain(model, letters_data, 1, CPU, seed=0)
    sampler = EpisodeSampler(letters_data, alg.ways, alg.shots, getattr(alg, "query_shots", 0), fixed_head=True)
    episode = sampler.sample(0, 1, 0)  # the one task of meta-iteration 1
    assert [letters_data.class_names[r] for r in episode.rows] == episode.classes
    moved = (model.head.classification_head.cls_logits.weight.detach() - before).flatten(1).abs().sum(1)
    assert sorted(torch.nonzero(moved).flatten().tolist()) == sorted(episode.rows)
    assert alg.checkpoint_extras()["adapt_head"] == "reset"  # adaptation starts a fresh M-row head


def test_a_shuffled_head_has_one_output_per_task_slot(letters_data):
    alg = build_algorithm("reptile", **SETTINGS["reptile"])
    assert alg.task_sized_head and alg.num_outputs(letters_data) == alg.ways
    assert EpisodeSampler(letters_data, 5, 2).sample(0, 1, 0).rows is None
    assert alg.checkpoint_extras()["adapt_head"] == "keep"


def test_each_meta_learner_carries_the_recipe_it_was_meta_trained_for():
    reptile = build_algorithm("reptile", inner_lr=2e-3, inner_beta1=0.0)
    assert reptile.checkpoint_extras()["adapt_recipe"] == {"params": "all", "optimizer": "adam", "lr": 2e-3, "beta1": 0.0, "weight_decay": 0.0, "momentum": 0.0, "from": "reptile"}
    assert build_algorithm("joint").checkpoint_extras()["adapt_recipe"]["from"] == "joint"
    anil = build_algorithm("anil", inner_params="heads", inner_lr=0.05)  # conf/algorithm/anil.yaml's preset
    assert anil.checkpoint_extras()["adapt_recipe"] == {"params": "heads", "optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "from": "anil"}
    assert build_algorithm("fomaml").checkpoint_extras()["adapt_recipe"]["optimizer"] == "sgd"
    assert "adapt_recipe" not in build_algorithm("standard").checkpoint_extras()


def adapt_cfg(**adapt):
    base = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "base.yaml")
    return OmegaConf.merge(base, {"adapt": adapt})


def test_a_reptile_checkpoint_adapts_with_its_inner_adam_unless_told_otherwise(monkeypatch):
    checkpoint = build_algorithm("reptile", inner_lr=2e-3).checkpoint_extras()
    monkeypatch.setattr(wiring, "explicit_keys", lambda: set())
    own = wiring.adapt_settings(adapt_cfg(), checkpoint)
    assert (own.optimizer, own.lr, own.beta1, own.params, own.recipe) == ("adam", 2e-3, 0.0, "all", "reptile")
    assert adapt_tags(own) == {"fsx.adapt_recipe": "reptile", "fsx.adapt_optimizer": "adam lr 0.002 beta1 0"}

    common = wiring.adapt_settings(adapt_cfg(recipe="none"), checkpoint)
    assert (common.lr, common.beta1, common.recipe) == (1e-3, 0.9, "common")
    assert adapt_tags(common)["fsx.adapt_optimizer"] == "adam lr 0.001"

    monkeypatch.setattr(wiring, "explicit_keys", lambda: {"adapt.lr"})  # adapt.lr=0.01 on the command line
    mixed = wiring.adapt_settings(adapt_cfg(lr=0.01), checkpoint)
    assert (mixed.lr, mixed.beta1, mixed.recipe) == (0.01, 0.0, "reptile (command line: adapt.lr)")


def test_a_maml_checkpoint_adapts_with_sgd_at_its_inner_lr(monkeypatch):
    monkeypatch.setattr(wiring, "explicit_keys", lambda: set())
    settings = wiring.adapt_settings(adapt_cfg(), build_algorithm("anil", inner_params="heads").checkpoint_extras())
    assert (settings.optimizer, settings.lr, settings.momentum, settings.params) == ("sgd", 0.01, 0.0, "heads")
    assert adapt_tags(settings)["fsx.adapt_optimizer"] == "sgd lr 0.01, trains heads only"
    plain = wiring.adapt_settings(adapt_cfg(), {"adapt_head": "reset"})  # a standard checkpoint: no recipe
    assert plain == AdaptSettings(**{**vars(plain), "recipe": "common"}) and plain.optimizer == "adam"
