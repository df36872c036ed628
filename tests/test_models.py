"""Detector factory, backbones, anchors, class-head surgery and parameter sets."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torchvision.models.detection import RetinaNet

from fsx.errors import UsageError
from fsx.models.backbones import build_backbone
from fsx.models.detectors import anchor_sizes, build_detector, model_spec
from fsx.models.heads import PRIOR_PROBABILITY, num_classes, reset_class_head, trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_spec(**detector) -> dict:
    return {
        "detector": {"name": "retinanet", "anchor_scale": 1.5, **detector},
        "backbone": {"name": "tiny", "out_channels": 64},
        "num_classes": 21,
        "image_size": 128,
        "image_mean": [0.9] * 3,
        "image_std": [0.25] * 3,
    }


def _batch(n: int = 2, label: int = 1):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([label])} for _ in range(n)]
    return images, targets


@pytest.fixture(scope="module")
def detector() -> RetinaNet:
    torch.manual_seed(0)
    return build_detector(tiny_spec(score_thresh=0.0))


def test_build_detector_is_a_retinanet_with_the_spec(detector):
    assert isinstance(detector, RetinaNet)
    assert num_classes(detector) == 21
    head = detector.head.classification_head
    assert head.num_anchors == 9  # 3 octaves x 3 aspect ratios
    assert head.cls_logits.out_channels == 9 * 21
    assert detector.head.regression_head.bbox_reg.out_channels == 9 * 4
    assert detector.backbone.out_channels == 64
    assert detector.backbone.strides == [8, 16, 32]
    assert detector.transform.min_size == (128,) and detector.transform.max_size == 128
    assert detector.transform.image_mean == [0.9] * 3 and detector.transform.image_std == [0.25] * 3
    assert detector.anchor_generator.sizes == anchor_sizes([8, 16, 32], 1.5)
    assert detector.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 3
    assert detector.score_thresh == 0.0 and detector.nms_thresh == 0.5


def test_train_forward_returns_the_two_losses(detector):
    detector.train()
    images, targets = _batch()
    losses = detector(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    for v in losses.values():
        assert v.ndim == 0 and torch.isfinite(v) and v.item() > 0
        assert v.requires_grad


def test_backbone_feature_maps(detector):
    feats = detector.backbone(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]


def test_extra_levels_add_p6_p7_or_a_pooled_level():
    bb = build_backbone("tiny", out_channels=32, extra_levels=2)
    assert bb.strides == [8, 16, 32, 64, 128]
    assert len(bb(torch.zeros(1, 3, 128, 128))) == 5
    assert bb.fpn.extra_blocks.use_P5 is False  # from C5 (128 channels), as in the RetinaNet paper
    from_p5 = build_backbone("tiny", out_channels=32, extra_levels=2, extra_from="p5")
    assert from_p5.fpn.extra_blocks.use_P5 is True  # torchvision's FCOS and RetinaNet v1
    pooled = build_backbone("tiny", out_channels=32, extra_levels=1)
    maps = pooled(torch.zeros(1, 3, 128, 128))
    assert list(maps) == ["0", "1", "2", "pool"] and pooled.strides == [8, 16, 32, 64] and pooled.roi_levels == ["0", "1", "2"]
    with pytest.raises(UsageError, match="backbone.extra_levels=3"):
        build_backbone("tiny", extra_levels=3)
    with pytest.raises(UsageError, match="backbone.extra_from=p4"):
        build_backbone("tiny", extra_levels=2, extra_from="p4")


def test_unknown_names_are_usage_errors():
    with pytest.raises(UsageError, match="detector=yolo: choose one of retinanet, fcos, fasterrcnn"):
        build_detector({**tiny_spec(), "detector": {"name": "yolo", "anchor_scale": 4}})
    with pytest.raises(UsageError, match="backbone.name=vgg"):
        build_detector({**tiny_spec(), "backbone": {"name": "vgg"}})
    with pytest.raises(UsageError, match="backbone.norm=gn"):
        build_backbone("resnet18", norm="gn")
    with pytest.raises(UsageError, match="backbone.trainable_layers=6"):
        build_backbone("resnet18", trainable_layers=6)


def test_model_spec_is_plain_and_detached():
    det = {"name": "retinanet", "anchor_scale": 2}
    spec = model_spec(det, {"name": "tiny"}, 5.0, 96.0, (0.5, 0.5, 0.5), [1, 1, 1])
    assert spec == {
        "detector": {"name": "retinanet", "anchor_scale": 2},
        "backbone": {"name": "tiny"},
        "num_classes": 5,
        "image_size": 96,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [1.0, 1.0, 1.0],
    }
    assert isinstance(spec["num_classes"], int) and isinstance(spec["image_std"][0], float)
    det["anchor_scale"] = 9
    assert spec["detector"]["anchor_scale"] == 2


# --- anchors -----------------------------------------------------------------------------


def test_anchor_sizes():
    sizes = anchor_sizes([8, 16, 32], 1.5)
    assert len(sizes) == 3
    for level, stride in zip(sizes, [8, 16, 32]):
        assert level == pytest.approx((1.5 * stride, 1.5 * stride * 2 ** (1 / 3), 1.5 * stride * 2 ** (2 / 3)))
    # scale 4 on strides 8..128 is torchvision's RetinaNet default (32..512, 3 octaves)
    paper = anchor_sizes([8, 16, 32, 64, 128], 4)
    default = tuple((x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)) for x in [32, 64, 128, 256, 512])
    for got, want in zip(paper, default):
        assert got == pytest.approx(want)
    assert anchor_sizes([8], 2.0, octaves=2) == ((16.0, 16.0 * math.sqrt(2)),)


# --- class-head surgery ------------------------------------------------------------------


def test_reset_class_head_changes_only_the_class_output():
    torch.manual_seed(1)
    model = build_detector(tiny_spec(score_thresh=0.0))
    before = copy.deepcopy(model.state_dict())
    head = model.head.classification_head
    reset_class_head(model, 5, generator=torch.Generator().manual_seed(0))
    assert head.cls_logits.out_channels == head.num_anchors * 5 == 45
    assert head.cls_logits.in_channels == 64
    assert num_classes(model) == 5 and head.num_classes == 5
    assert torch.allclose(head.cls_logits.bias, torch.full((45,), -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)))
    assert head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.2)
    after = model.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # only the replaced layer is new: towers, box regression and backbone keep their weights
    assert changed == {"head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"}
    assert {k for k in after if "cls_logits" in k} == {"head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"}
    for k, v in after.items():
        if k.startswith("head.regression_head") or k.startswith("backbone"):
            assert torch.equal(v, before[k]), k

    model.eval()
    with torch.no_grad():
        images, _ = _batch()
        outputs = model(images)
    labels = torch.cat([o["labels"] for o in outputs])
    assert labels.numel() > 0
    assert labels.min() >= 0 and labels.max() < 5
    model.train()
    images, targets = _batch(label=4)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_reset_class_head_changed_the_output_range(detector):
    """Control for the test above: before surgery the same model emits labels >= 5."""
    detector.eval()
    with torch.no_grad():
        outputs = detector(_batch()[0])
    assert torch.cat([o["labels"] for o in outputs]).max() >= 5


def test_reset_class_head_is_seeded():
    model = build_detector(tiny_spec())
    reset_class_head(model, 3, generator=torch.Generator().manual_seed(5))
    w1 = model.head.classification_head.cls_logits.weight.clone()
    reset_class_head(model, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(w1, model.head.classification_head.cls_logits.weight)
    reset_class_head(model, 3, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(w1, model.head.classification_head.cls_logits.weight)


# --- parameter sets ----------------------------------------------------------------------


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_trainable_parameter_sets(detector):
    every = _ids(detector.parameters())
    all_ = _ids(trainable_parameters(detector, "all"))
    heads = _ids(trainable_parameters(detector, "heads"))
    cls = _ids(trainable_parameters(detector, "class_head"))
    assert all_ == every  # the tiny backbone freezes nothing
    assert heads == _ids(detector.head.parameters())
    assert cls == _ids(detector.head.classification_head.parameters())
    assert cls < heads < all_
    assert not heads & _ids(detector.backbone.parameters())
    assert _ids(detector.head.regression_head.parameters()) == heads - cls
    assert id(detector.head.classification_head.cls_logits.weight) in cls
    with pytest.raises(ValueError, match="unknown parameter set 'backbone'"):
        trainable_parameters(detector, "backbone")


def test_all_excludes_frozen_resnet_layers():
    spec = {**tiny_spec(), "backbone": {"name": "resnet18", "out_channels": 64, "trainable_layers": 3}}
    model = build_detector(spec)
    names = {id(p): n for n, p in model.named_parameters()}
    trained = {names[i] for i in _ids(trainable_parameters(model, "all"))}
    assert not any(n.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")) for n in trained)
    assert any(n.startswith("backbone.body.layer2") for n in trained)
    assert any(n.startswith("backbone.fpn") for n in trained)
    assert all(n in trained for n in names.values() if n.startswith("head."))


# --- backbone weights --------------------------------------------------------------------


def test_missing_weights_file_is_a_usage_error(tmp_path):
    missing = tmp_path / "nope.pth"
    spec = {**tiny_spec(), "backbone": {"name": "resnet18", "out_channels": 64, "weights": str(missing)}}
    with pytest.raises(UsageError, match="backbone.weights=.*nope.pth: no such file"):
        build_detector(spec)


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_resnet18_weights_are_loaded(tmp_path, norm):
    torch.manual_seed(123)
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        for m in reference.modules():  # non-default BN statistics, so loading them is visible
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    saved = reference.state_dict()
    path = tmp_path / "r18.pth"
    torch.save(saved, path)
    spec = {**tiny_spec(), "backbone": {"name": "resnet18", "out_channels": 64, "norm": norm, "weights": str(path)}}
    model = build_detector(spec)
    body = model.backbone.body.state_dict()
    compared = 0
    for k, v in saved.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(body[k], v), k
        compared += 1
    assert compared == len([k for k in body if not k.endswith("num_batches_tracked")])
    fresh = build_detector({**spec, "backbone": {"name": "resnet18", "out_channels": 64, "norm": norm}})
    assert not torch.equal(fresh.backbone.body.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_weights_in_a_state_dict_wrapper_are_loaded(tmp_path):
    saved = torchvision.models.resnet18().state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": saved, "epoch": 3}, path)
    model = build_detector({**tiny_spec(), "backbone": {"name": "resnet18", "out_channels": 64, "weights": str(path)}})
    assert torch.equal(model.backbone.body.state_dict()["layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "stem.weight": torch.zeros(3)}, path)
    with pytest.raises(UsageError, match="does not fit this backbone") as info:
        build_backbone("resnet18", weights=str(path))
    assert "1 unexpected keys" in str(info.value)


def test_garbage_weights_file_is_a_usage_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(UsageError, match="not a readable PyTorch state dict"):
        build_backbone("resnet18", weights=str(path))


def test_weights_file_that_is_not_a_dict_is_a_usage_error(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UsageError, match="backbone.weights="):
        build_backbone("resnet18", weights=str(path))


def test_bf16_autocast_keeps_anchors_boxes_scores_and_losses_in_fp32():
    model = build_detector(tiny_spec()).eval()
    model.score_thresh = 0.0
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)[0]
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_select_trainable_freezes_everything_else():
    from fsx.models.heads import select_trainable

    model = build_detector(tiny_spec())
    params = select_trainable(model, "class_head")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} == {id(p) for p in model.head.classification_head.parameters()}


# --- every family ----------------------------------------------------------------------------

FAMILIES = {
    "retinanet": {"name": "retinanet", "anchor_scale": 1.5, "head_norm": "group", "box_loss": "giou"},
    "fcos": {"name": "fcos"},
    "fasterrcnn": {"name": "fasterrcnn", "anchor_scale": 2.0, "anchor_octaves": 2, "representation_size": 64, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100},
    "ssd": {"name": "ssd"},
}


@pytest.mark.parametrize("backbone", [{"name": "tiny", "out_channels": 32, "widths": [8, 16, 32, 32, 32]}, {"name": "resnet18", "out_channels": 32}], ids=["tiny", "resnet18"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_detector_and_backbone_trains_two_steps_and_predicts(family, backbone, one_thread):
    torch.manual_seed(0)
    spec = {**tiny_spec(), "detector": {**FAMILIES[family], "score_thresh": 0.0}, "backbone": backbone, "num_classes": 3, "image_size": 64}
    model = build_detector(spec).train()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0], [34.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([0, 2])} for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(set(o) >= {"boxes", "labels", "scores"} for o in out)
    labels = torch.cat([o["labels"] for o in out])
    assert len(labels) > 0 and labels.min() >= 0 and labels.max() <= 2  # fsx labels 0..M-1 for every family
    assert num_classes(model) == 3
    reset_class_head(model, 5)
    assert num_classes(model) == 5
    with torch.no_grad():
        assert torch.cat([o["labels"] for o in model(images)]).max() <= 4


@pytest.mark.parametrize("name", ["resnet34", "mobilenet_v3"])
def test_imagenet_weights_of_other_backbones_load_from_a_local_file(name, tmp_path):
    from torchvision.models import mobilenet_v3_large, resnet34

    torch.manual_seed(1)
    network = {"resnet34": resnet34, "mobilenet_v3": mobilenet_v3_large}[name]()
    torch.save(network.state_dict(), tmp_path / "weights.pth")
    backbone = build_backbone(name, weights=str(tmp_path / "weights.pth"), norm="bn")  # BN affine terms as parameters, to compare
    mine = dict(backbone.body.named_parameters())
    theirs = {k.removeprefix("features."): v for k, v in network.named_parameters() if not k.startswith(("fc.", "classifier."))}
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_trainable_layers_freeze_mobilenet_from_the_stem_up():
    backbone = build_backbone("mobilenet_v3", trainable_layers=2)
    frozen = {k.split(".")[0] for k, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {str(i) for i in range(7)}  # blocks of strides 2, 4 and 8
    assert all(p.requires_grad for p in backbone.fpn.parameters())


def test_norm_auto_freezes_batch_norm_over_loaded_weights_and_the_spec_says_so(tmp_path):
    from torchvision.ops.misc import FrozenBatchNorm2d

    from fsx.models.detectors import model_spec

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    frozen = model_spec({"name": "fcos"}, {"name": "resnet18", "out_channels": 64, "norm": "auto", "weights": str(path)}, 5, 64, [0.5] * 3, [0.25] * 3)
    plain = model_spec({"name": "fcos"}, {"name": "resnet18", "out_channels": 64, "norm": "auto"}, 5, 64, [0.5] * 3, [0.25] * 3)
    assert frozen["backbone"]["norm"] == "frozen_bn" and plain["backbone"]["norm"] == "bn"
    assert isinstance(build_detector(frozen).backbone.body.bn1, FrozenBatchNorm2d)
    assert isinstance(build_detector(plain).backbone.body.bn1, torch.nn.BatchNorm2d)
    # a checkpoint rebuilds without the weights file: the resolved norm keeps its layers the same
    rebuilt = build_detector({**frozen, "backbone": {k: v for k, v in frozen["backbone"].items() if k != "weights"}})
    assert isinstance(rebuilt.backbone.body.bn1, FrozenBatchNorm2d)


def test_the_reptile_thesis_retinanet_preset():
    from hydra import compose, initialize_config_module
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from fsx.run.start import new_model_spec

    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["experiment=rt_retinanet_r34"])
    model = build_detector(new_model_spec(cfg, 21))
    assert len(model.backbone.body.layer3) == 6 and model.backbone.body.layer4[0].conv1.in_channels == 256  # ResNet-34 (3-4-6-3 basic blocks)
    extra = model.backbone.fpn.extra_blocks
    assert isinstance(extra, LastLevelP6P7) and extra.p6.in_channels == 512  # P6 from C5, not P5
    sizes = model.anchor_generator.sizes
    assert len(sizes) == 5 and all(len(s) == 3 for s in sizes)  # P3-P7, 3 octaves
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    assert sizes[0][0] == pytest.approx(2.5 * 8) and sizes[-1][0] == pytest.approx(2.5 * 128)  # 32..512 x 500/800
    assert model.transform.min_size == (500,) and model.transform.max_size == 500
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules())  # the original head
    assert model.head.regression_head._loss_type == "smooth_l1"
    assert (model.proposal_matcher.high_threshold, model.proposal_matcher.low_threshold) == (0.5, 0.4)



def test_ssd300_on_vgg16_and_what_vgg16_refuses(tmp_path):
    import torchvision

    spec = {"detector": {"name": "ssd"}, "backbone": {"name": "vgg16"}, "num_classes": 4, "image_size": 300, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    model = build_detector(spec)
    assert model.anchor_generator.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]  # the paper's table
    assert num_classes(model) == 4 and model.transform.fixed_size == (300, 300)
    torch.save(torchvision.models.vgg16().state_dict(), tmp_path / "vgg16.pth")
    weighted = build_detector({**spec, "backbone": {"name": "vgg16", "weights": str(tmp_path / "vgg16.pth")}})
    reference = torch.load(tmp_path / "vgg16.pth", weights_only=True)
    assert torch.equal(weighted.backbone.body.features[0].weight, reference["features.0.weight"])
    with pytest.raises(UsageError, match="needs dataset.image_size=300"):
        build_detector({**spec, "image_size": 128})
    with pytest.raises(UsageError, match="use it with detector=ssd, not fcos"):
        build_detector({**spec, "detector": {"name": "fcos"}})


def test_ssdlite_heads_train_and_their_class_head_resets():
    from hydra import compose, initialize_config_module
    from torchvision.models.detection.ssdlite import SSDLiteHead

    from fsx.run.start import new_model_spec

    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["experiment=ssdlite_mobilenet_v3", "backbone.out_channels=32"])
    model = build_detector(new_model_spec(cfg, 3))
    assert isinstance(model.head, SSDLiteHead) and len(model.anchor_generator.aspect_ratios) == 5  # P3-P7
    images = [torch.rand(3, 320, 320) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 140.0]]), "labels": torch.tensor([i])} for i in (0, 2)]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())
    reset_class_head(model, 5, torch.Generator().manual_seed(0))
    assert num_classes(model) == 5
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert all(o["labels"].max() <= 4 for o in out if len(o["labels"]))
