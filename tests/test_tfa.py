"""TFA: the cosine box predictor, stage 1 (SGD with the linear LR scaling rule, Faster R-CNN
only) and stage 2 (a fresh predictor trained alone, everything else frozen; ft-full)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fsx.algorithms import PretrainData, build_algorithm
from fsx.data.coco import CocoSet, DetectionDataset
from fsx.data.folds import letters_fold, split_by_fold
from fsx.engine.finetune import AdaptSettings, adapt
from fsx.errors import UsageError
from fsx.models.cosine import CosinePredictor
from fsx.models.detectors import build_detector
from fsx.models.heads import num_classes, predictor_spec, reset_class_head

CPU = torch.device("cpu")
FRCNN = {"name": "fasterrcnn", "anchor_scale": 3.0, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100}


def small_frcnn(num_classes: int, **detector) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"detector": {**FRCNN, **detector}, "backbone": {"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]}, "num_classes": num_classes, "image_size": 128, "image_mean": [0.92] * 3, "image_std": [0.25] * 3}
    return build_detector(spec)


# --------------------------------------------------------------------------- the cosine classifier


def test_cosine_scores_are_the_scaled_cosine_without_bias():
    torch.manual_seed(0)
    head = CosinePredictor(8, 4, scale=20.0)
    with torch.no_grad():
        head.cls_score.weight.normal_()  # unit-scale rows: the 1e-5 in the norms is negligible
    x = torch.randn(5, 8, 1, 1)
    scores, boxes = head(x)
    expected = 20.0 * F.cosine_similarity(x.flatten(1)[:, None, :], head.cls_score.weight[None, :, :], dim=-1, eps=1e-12)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert head.cls_score.bias is None and scores.abs().max() <= 20.0 + 1e-4
    assert torch.allclose(boxes, head.bbox_pred(x.flatten(1)))  # raw features for the boxes
    assert torch.allclose(head(3 * x)[0], scores, atol=1e-4)  # the feature's norm does not matter
    assert "scale" not in dict(head.named_parameters())


def test_a_learnable_scale_is_a_parameter_that_learns():
    head = CosinePredictor(8, 3, scale=20.0, learn_scale=True)
    assert dict(head.named_parameters())["scale"].item() == 20.0
    scores, _ = head(torch.randn(4, 8))
    F.cross_entropy(scores, torch.tensor([0, 1, 2, 0])).backward()
    assert head.scale.grad is not None and head.scale.grad.abs() > 0


def test_faster_rcnn_builds_with_either_classifier_and_reloads():
    cos = small_frcnn(5, classifier="cos", cosine_scale=10.0)
    assert isinstance(cos.roi_heads.box_predictor, CosinePredictor) and num_classes(cos) == 5
    assert predictor_spec(cos) == {"classifier": "cos", "cosine_scale": 10.0, "learn_scale": False}
    again = small_frcnn(5, classifier="cos", cosine_scale=10.0)
    again.load_state_dict(cos.state_dict())
    assert predictor_spec(small_frcnn(5)) == {"classifier": "fc"}
    with pytest.raises(UsageError, match="detector.classifier=svm"):
        small_frcnn(5, classifier="svm")


def test_a_reset_head_keeps_its_kind_or_takes_the_one_asked_for():
    model = small_frcnn(21)
    reset_class_head(model, 5, torch.Generator().manual_seed(0))
    assert predictor_spec(model) == {"classifier": "fc"} and num_classes(model) == 5
    reset_class_head(model, 3, torch.Generator().manual_seed(0), classifier={"classifier": "cos", "cosine_scale": 20.0, "learn_scale": True})
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, CosinePredictor) and num_classes(model) == 3
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.3)  # TFA's N(0, 0.01)
    reset_class_head(model, 4, torch.Generator().manual_seed(0))
    assert isinstance(model.roi_heads.box_predictor, CosinePredictor)


# --------------------------------------------------------------------------- stage 1


def test_stage_one_is_sgd_with_the_linear_scaling_rule_and_records_its_recipe():
    tfa = build_algorithm("tfa", lr=0.02, batch_size=4, reference_batch=16)
    assert tfa.effective_lr == pytest.approx(0.005)
    optimizer = tfa.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == pytest.approx(0.005) and optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4
    recipe = tfa.checkpoint_extras()["adapt_recipe"]
    assert recipe["params"] == "class_head" and recipe["optimizer"] == "sgd" and recipe["momentum"] == 0.9
    assert recipe["lr"] == pytest.approx(0.005 / 20) and recipe["classifier"]["classifier"] == "cos"
    described = tfa.describe()
    assert "0.005" in described["effective_lr"] and described["effective_batch"] == "4"
    with pytest.raises(UsageError, match="algorithm.classifier=svm"):
        build_algorithm("tfa", classifier="svm")


@pytest.fixture(scope="module")
def letters_data(letters_source) -> PretrainData:
    source = CocoSet.load(letters_source / "annotations.json", letters_source)
    split = split_by_fold(source, letters_fold(1), 0)
    ids = [split.train.category_id(n) for n in split.fold.base]
    return PretrainData(split.train, ids, list(split.fold.base), DetectionDataset(split.train, ids))


def test_stage_one_trains_a_faster_rcnn(letters_data, one_thread):
    model = small_frcnn(len(letters_data.class_ids))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tfa = build_algorithm("tfa", batch_size=4, warmup=1)
    assert tfa.pretrain(model, letters_data, 3, CPU, seed=0, amp=False) == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("backbone."))
    assert tfa.state_dict()["optimizer"]["param_groups"][0]["momentum"] == 0.9


# --------------------------------------------------------------------------- stage 2


def changed(before: dict, model) -> set[str]:
    return {k.split(".")[0] if not k.startswith("roi_heads.") else ".".join(k.split(".")[:2]) for k, v in model.state_dict().items() if k in before and not torch.equal(before[k], v)}


@pytest.mark.parametrize("params, trained", [("class_head", {"roi_heads.box_predictor"}), ("all", {"backbone", "rpn", "roi_heads.box_head", "roi_heads.box_predictor"})])
def test_stage_two_trains_only_the_predictor_and_ft_full_everything(params, trained, letters_data, one_thread):
    model = small_frcnn(len(letters_data.class_ids))
    reset_class_head(model, len(letters_data.class_ids), torch.Generator().manual_seed(0), classifier={"classifier": "cos", "cosine_scale": 20.0, "learn_scale": False})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = AdaptSettings(steps=3, lr=0.01, batch_size=4, params=params, optimizer="sgd", momentum=0.9, early_stopping=False, clip_norm=None)
    adapt(model, letters_data.dataset, settings, CPU, seed=0, amp=False)
    assert changed(before, model) == trained


# --------------------------------------------------------------------------- from the command line


def fsx(args, cwd, env):
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tfa_from_the_command_line(tmp_path):
    from mlflow.tracking import MlflowClient

    from fsx.engine.checkpoint import read_checkpoint

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "MLFLOW_"))}, "FSX_CACHE": str(tmp_path / "cache"), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}
    small = ["dataset.generator.num_images=200", "dataset.image_size=64", "dataset.generator.min_font=12", "dataset.generator.max_font=32", "algorithm.batch_size=4", "train.val_images=0"]
    refused = fsx(["pretrain", "algorithm=tfa", *small, "train.steps=2"], tmp_path, env)
    assert refused.returncode == 2 and "add detector=fasterrcnn" in refused.stderr, refused.stderr
    pretrained = fsx(["pretrain", "algorithm=tfa", "detector=fasterrcnn", *small, "train.steps=4"], tmp_path, env)
    assert pretrained.returncode == 0, pretrained.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fsx").experiment_id])
    assert run.data.params["algorithm.effective_lr"].startswith("0.005 ")
    assert run.data.params["algorithm.effective_batch"] == "4"

    stage2 = fsx(["adapt", "checkpoint=latest", "adapt.steps=3", "shots=2"], tmp_path, env)
    assert stage2.returncode == 0, stage2.stderr
    full = fsx(["adapt", "checkpoint=latest:pretrain", "adapt.steps=3", "shots=2", "adapt.params=all"], tmp_path, env)
    assert full.returncode == 0, full.stderr
    fc = fsx(["adapt", "checkpoint=latest:pretrain", "adapt.steps=3", "shots=2", "adapt.classifier=fc"], tmp_path, env)
    assert fc.returncode == 0, fc.stderr
    adapted = client.search_runs([run.info.experiment_id], filter_string="tags.`fsx.command` = 'adapt'", order_by=["attributes.start_time ASC"])
    tags = [r.data.tags["fsx.adapt_optimizer"] for r in adapted]
    assert tags == ["sgd lr 0.00025 momentum 0.9, trains class_head only", "sgd lr 0.00025 momentum 0.9", "sgd lr 0.00025 momentum 0.9, trains class_head only"]
    final = read_checkpoint(client.download_artifacts(adapted[0].info.run_id, "checkpoints/model.pt", str(tmp_path / "dl")))
    assert final["model_spec"]["detector"]["classifier"] == "cos" and final["model_spec"]["num_classes"] == 5
    with_fc = read_checkpoint(client.download_artifacts(adapted[2].info.run_id, "checkpoints/model.pt", str(tmp_path / "dl2")))
    assert with_fc["model_spec"]["detector"]["classifier"] == "fc"  # adapt.classifier=fc: TFA w/fc
    assert math.isfinite(adapted[0].data.metrics["AP50"])
