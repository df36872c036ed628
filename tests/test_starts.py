"""Where a pretraining starts, end to end as a user types it (`python -m fsx ...`, no network):
ImageNet backbones by name from a cache the test fills, the Lite0 that ships as a package, a
timm model, a COCO detector with the leakage rule, and `init=` chains with their lineage, all
read back from a real MLflow store."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision
from cli_helpers import KEEP_LOW_SCORES, LETTERS_SMALL, cli_env, explain, ok, run_fsx
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

SMALL = [*LETTERS_SMALL, "algorithm.batch_size=4", "train.val_images=8"]
REPTILE = ["algorithm=reptile", "algorithm.shots=2", "algorithm.inner_batch=4", "algorithm.inner_steps=2", "algorithm.meta_batch=1"]


def fsx(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return run_fsx(args, cwd, env)


def usage_error(result: subprocess.CompletedProcess, *culprits: str) -> str:
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    message = result.stderr[result.stderr.index("fsx: error:") :]
    for culprit in culprits:
        assert culprit in message, f"{culprit!r} not in: {message}"
    return message


def runs(uri: str, command: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("fsx").experiment_id], f"tags.`fsx.command` = '{command}'", order_by=["attributes.start_time DESC"])
    return found


def checkpoint(uri: str, run_id: str, into: Path) -> dict:
    from mlflow.tracking import MlflowClient

    path = MlflowClient(uri).download_artifacts(run_id, "checkpoints/model.pt", str(into))
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A working folder with its own store, letters cache and empty, offline library caches."""
    root = tmp_path_factory.mktemp("starts")
    env = {**cli_env(root / "cache"), "TORCH_HOME": str(root / "torch"), "HF_HUB_CACHE": str(root / "hf"), "FSX_OFFLINE": "1"}
    return root, env, f"sqlite:///{root / 'mlflow.db'}"


def test_an_imagenet_resnet18_from_the_torch_hub_cache_offline(home):
    root, env, uri = home
    args = ["pretrain", "backbone=resnet18", "backbone.weights=imagenet", "backbone.out_channels=32", *SMALL, "train.steps=2"]
    missing = fsx(args, root, env)
    usage_error(missing, "resnet18-f37072fd.pth", str(root / "torch" / "hub" / "checkpoints"))
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    path = root / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    ok(fsx(args, root, env))
    run = runs(uri, "pretrain")[0]
    import hashlib

    assert run.data.params["backbone.weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run.data.params["backbone.weights_source"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert run.data.params["normalization.mean"] == "[0.485, 0.456, 0.406]"  # ImageNet's, not the letters' grey
    assert run.data.tags["fsx.weights"] == "imagenet" and run.data.params["backbone.norm"] == "auto"
    payload = checkpoint(uri, run.info.run_id, root / "ckpt-r18")
    assert payload["model_spec"]["backbone"]["norm"] == "frozen_bn" and payload["start"] == {"weights": "imagenet"}
    # frozen batch norm and the stem (trainable_layers 5 keeps it trainable) ... the untouched running statistics are the file's
    state = payload["state_dict"]
    assert torch.equal(state["backbone.body.bn1.running_mean"], saved["bn1.running_mean"])
    assert not any(k.startswith("backbone.body.fc.") for k in state)


def test_lite0_from_the_package_pretrains_and_evaluates_tagged_with_its_start(home):
    root, env, uri = home
    ok(fsx(["pretrain", "backbone=efficientnet_lite0", "backbone.weights=imagenet", "backbone.out_channels=32", *SMALL, "train.steps=2"], root, env))
    pre = runs(uri, "pretrain")[0]
    assert pre.data.tags["fsx.backbone"] == "efficientnet_lite0" and pre.data.params["backbone.weights_sha256"].startswith("57934424")
    assert pre.data.params["normalization.mean"].startswith("[0.498")
    ok(fsx(["eval", f"checkpoint=runs:/{pre.info.run_id}", "shots=1", "eval.repeats=1", "eval.milestones=[0,1]"], root, env))
    ev = runs(uri, "eval")[0]
    assert (ev.data.tags["fsx.weights"], ev.data.tags["fsx.lineage"], ev.data.tags["fsx.passes"], ev.data.tags["fsx.protocol"]) == ("imagenet", "standard", "2", "clean")


def test_any_timm_model_pretrains_and_bad_timm_names_answer_fast(home):
    root, env, uri = home
    ok(fsx(["pretrain", "backbone=timm", "backbone.model=mobilenetv3_small_050", "backbone.out_channels=32", *SMALL, "train.steps=2"], root, env))
    run = runs(uri, "pretrain")[0]
    assert run.data.params["backbone.model"] == "mobilenetv3_small_050" and run.data.tags["fsx.weights"] == "scratch"
    usage_error(fsx(["pretrain", "backbone=timm", "backbone.model=mobilenetv3_smal_050", *SMALL], root, env), "is not a timm model", "mobilenetv3_small_050")
    usage_error(fsx(["pretrain", "backbone=timm", "backbone.model=resnet18", "backbone.weights=imagenet", *SMALL], root, env), "timm/resnet18.a1_in1k", "models--timm--resnet18.a1_in1k")
    usage_error(fsx(["pretrain", "backbone=resnet18", "backbone.weights=imagenett", *SMALL], root, env), "did you mean imagenet?")


# --------------------------------------------------------------------------- COCO detectors and the leakage rule


def animals(root: Path) -> Path:
    """A VOC folder of 24 drawn images of cats, dogs and zebras (COCO classes) on 64 px canvases."""
    folder = root / "animals"
    folder.mkdir()
    names = ["cat", "dog", "zebra"]
    for i in range(24):
        image = Image.new("RGB", (64, 64), (200, 200, 200))
        draw = ImageDraw.Draw(image)
        objects = []
        for j, name in enumerate([names[i % 3], names[(i + 1) % 3]]):
            x0, y0 = 4 + 30 * j, 8 + (i % 5) * 3
            draw.rectangle([x0, y0, x0 + 24, y0 + 28], fill=(60 * (names.index(name) + 1), 40, 20))
            objects.append(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x0 + 24}</xmax><ymax>{y0 + 28}</ymax></bndbox></object>")
        image.save(folder / f"{i:02d}.jpg")
        (folder / f"{i:02d}.xml").write_text(f"<annotation><filename>{i:02d}.jpg</filename>{''.join(objects)}</annotation>")
    return folder


def test_a_coco_detector_pretrains_and_is_refused_on_coco_classes_unless_allowed(home):
    root, env, uri = home
    torch.manual_seed(0)
    reference = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = root / "torch" / "hub" / "checkpoints" / "fcos_resnet50_fpn_coco-99b0c9b7.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), path)
    data = ["dataset=custom", f"dataset.path={animals(root)}", "dataset.novel=[cat]", "dataset.image_size=64"]
    usage_error(fsx(["pretrain", "detector.weights=coco", *data], root, env), "backbone=resnet50")
    ok(fsx(["pretrain", "detector.weights=coco", "backbone=resnet50", *data, "algorithm.batch_size=2", "train.steps=1", "train.val_images=0"], root, env))
    pre = runs(uri, "pretrain")[0]
    assert pre.data.params["backbone.out_channels"] == "256" and pre.data.params["backbone.extra_from"] == "p5"  # torchvision's architecture, recorded
    assert pre.data.params["detector.weights_source"].endswith("fcos_resnet50_fpn_coco-99b0c9b7.pth") and pre.data.tags["fsx.weights"] == "coco"
    evaluate = ["eval", f"checkpoint=runs:/{pre.info.run_id}", "ways=1", "shots=2", "eval.repeats=1", "eval.milestones=[0]"]
    usage_error(fsx(evaluate, root, env), "cat", "COCO-trained detector", "allow_seen_classes=true")
    ok(fsx([*evaluate, "allow_seen_classes=true"], root, env))
    assert runs(uri, "eval")[0].data.tags["fsx.protocol"] == "seen_classes"
    state = checkpoint(uri, pre.info.run_id, root / "ckpt-coco")
    assert "cat" in state["pretrained_classes"] and "zebra" in state["pretrained_classes"] and len(state["pretrained_classes"]) == 80  # dog and zebra, the base classes, are COCO's too


# --------------------------------------------------------------------------- init=


def test_reptile_from_a_standard_checkpoint_starts_from_its_weights_outside_the_head(home):
    root, env, uri = home
    here = root / "init"
    store = f"sqlite:///{here / 'mlflow.db'}"
    ok(fsx(["pretrain", *SMALL, *KEEP_LOW_SCORES, "train.steps=3"], here, env))
    standard = runs(store, "pretrain")[0]
    # beta 0: Reptile's outer update leaves θ (weights and BN statistics) where it started, so its
    # checkpoint shows the first weights
    still = [*REPTILE, "algorithm.beta=0.0", "algorithm.beta_final=0.0", "train.steps=1"]
    ok(fsx(["pretrain", *still, f"init=runs:/{standard.info.run_id}", *LETTERS_SMALL], here, env))
    reptile = runs(store, "pretrain")[0]
    before, after = checkpoint(store, standard.info.run_id, here / "a"), checkpoint(store, reptile.info.run_id, here / "b")
    head = "head.classification_head.cls_logits."
    body = [k for k in before["state_dict"] if not k.startswith(head) and not k.endswith("num_batches_tracked")]  # a counter, not a weight
    assert len(body) > 50 and all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in body)
    assert after["state_dict"][head + "weight"].shape[0] == 5 and before["state_dict"][head + "weight"].shape[0] == 21  # a task-sized head, fresh
    tags, params = reptile.data.tags, reptile.data.params
    assert tags["fsx.lineage"] == "standard → reptile" and tags["fsx.init"] == f"runs:/{standard.info.run_id}"
    assert standard.info.run_id in tags["mlflow.note.content"] and params["init.parent_passes"] == "3"
    assert [p["algorithm"] for p in after["lineage"]] == ["standard", "reptile"] and after["lineage"][0]["passes"] == 3
    # the lineage reaches eval and the report, with the passes of both stages
    ok(fsx(["eval", "checkpoint=latest:pretrain:reptile", "shots=2", "eval.repeats=1", "eval.milestones=[0,1]"], here, env))
    ev = runs(store, "eval")[0]
    assert ev.data.tags["fsx.lineage"] == "standard → reptile" and int(ev.data.tags["fsx.passes"]) == 3 + int(params["train.passes_run"])
    report = ok(fsx(["report", "--out", str(here / "report")], here, env)).stdout
    assert f"| standard → reptile | fcos | tiny | scratch | letters | 1 | 5 | 2 | {ev.data.tags['fsx.passes']} |" in report, report


def test_init_that_cannot_fit_is_refused_before_training(home):
    root, env, uri = home
    here = root / "init-bad"
    ok(fsx(["pretrain", *SMALL, "train.steps=1", "backbone.widths=[8,16,32,32,32]"], here, env))
    store_run = runs(f"sqlite:///{here / 'mlflow.db'}", "pretrain")[0].info.run_id
    with ThreadPoolExecutor(max_workers=2) as pool:
        other_backbone = pool.submit(fsx, ["pretrain", f"init=runs:/{store_run}", "backbone=resnet18", *SMALL], here, env)
        with_weights = pool.submit(fsx, ["pretrain", "init=latest", "backbone=resnet18", "backbone.weights=imagenet", *SMALL], here, env)
        other_widths = pool.submit(fsx, ["pretrain", "init=latest", "backbone.widths=[16,32,64,128,128]", *SMALL], here, env)
        nothing = pool.submit(fsx, ["pretrain", f"init={here / 'nope.pt'}", *SMALL], here, env)
    usage_error(other_backbone.result(), "is a fcos on tiny, not backbone=resnet18")
    usage_error(with_weights.result(), "starts from that checkpoint's weights: drop backbone.weights=imagenet")
    usage_error(other_widths.result(), "does not fit this fcos on tiny", "of another shape")
    usage_error(nothing.result(), "init=", "nope.pt: no such file")
