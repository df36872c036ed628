"""Where a pretraining starts: random weights, pretrained weights by name (an ImageNet
backbone, a COCO detector), or another fsx checkpoint (`init=`), and what the run records
about it.

- The weight files are resolved by fsx.models.weights (the one place that knows caches and
  downloads); here their consequences are applied to the config: a COCO detector's
  architecture, the input normalisation of the weights (`normalize=auto`), the leakage
  bookkeeping (the classes the weights have seen), and the lineage of `init=` chains.
- Resolution happens before the data is read, so a typo or a missing file answers in seconds.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from fsx import tracking
from fsx.engine.checkpoint import read_checkpoint
from fsx.errors import UsageError
from fsx.models.detectors import CLASS_OUTPUTS, WEIGHT_KEYS, build_detector, model_spec
from fsx.models.weights import Weights, backbone_weights, detector_weights, sha256_of
from fsx.run.wiring import command_line_overrides, explicit_keys, plain

NORMALIZE = ("auto", "dataset")
ARROW = " → "


@dataclasses.dataclass
class Init:
    """The checkpoint `init=` names."""

    reference: str
    payload: dict
    run_id: str | None
    path: str
    sha256: str


@dataclasses.dataclass
class Start:
    detector: dict  # the detector config in force (a COCO detector's architecture applied)
    backbone: dict
    backbone_weights: Weights | None = None
    detector_weights: Weights | None = None
    init: Init | None = None
    mean: list[float] | None = None  # the input normalisation the weights were trained with (None: the dataset's)
    std: list[float] | None = None
    normalization: str = "dataset"  # where mean/std come from, in words

    # -- the model -----------------------------------------------------------------------

    def spec(self, cfg, num_classes: int) -> dict:
        """The model spec of the new run: the resolved weight files ride along (they are
        loaded at build time and stripped from every checkpoint)."""
        backbone = dict(self.backbone)
        detector = dict(self.detector)
        if self.backbone_weights:
            backbone.update(self.backbone_weights.record())
        if self.detector_weights:
            detector.update(self.detector_weights.record())
        mean = self.mean if self.mean is not None else list(cfg.dataset.image_mean)
        std = self.std if self.std is not None else list(cfg.dataset.image_std)
        return model_spec(detector, backbone, num_classes, cfg.dataset.image_size, mean, std)

    def model(self, spec: dict, classes: list[str], task_sized_head: bool):
        """The first weights: built from the spec (loading named weights), then, for `init=`,
        the checkpoint's weights, its class head only where it fits this run's head."""
        model = build_detector(spec)
        if self.init is not None:
            load_init(model, spec, self.init, classes, task_sized_head)
        return model

    # -- the record ------------------------------------------------------------------------

    def root_weights(self) -> str:
        """What pretrained weights the whole lineage began from: scratch, imagenet, coco, ..."""
        if self.init is not None:
            return str(self.init.payload.get("start", {}).get("weights", "scratch"))
        chosen = self.detector_weights or self.backbone_weights
        if chosen is None:
            return "scratch"
        return "file" if chosen.layout in ("file", "detector") else chosen.name

    def lineage(self, algorithm: str, run_id: str | None, passes: int, dataset: dict) -> list[dict]:
        parents = list(self.init.payload.get("lineage") or [_unrecorded_parent(self.init.payload)]) if self.init else []
        return parents + [{"run_id": run_id, "algorithm": algorithm, "passes": int(passes), "dataset": dataset["name"], "fold": str(dataset.get("fold"))}]

    def tags(self, algorithm: str) -> dict[str, str]:
        tags = {"fsx.weights": self.root_weights(), "fsx.normalization": self.normalization}
        if self.init is not None:
            parents = self.init.payload.get("lineage") or [_unrecorded_parent(self.init.payload)]
            tags["fsx.lineage"] = ARROW.join([*(p["algorithm"] for p in parents), algorithm])
            tags["fsx.init"] = f"runs:/{self.init.run_id}" if self.init.run_id else self.init.path
            tags["fsx.init_sha256"] = self.init.sha256
            tags["mlflow.note.content"] = _init_note(self.init, parents)
        else:
            tags["fsx.lineage"] = algorithm
        return tags

    def params(self) -> dict:
        out: dict = {}
        for part, weights in (("backbone", self.backbone_weights), ("detector", self.detector_weights)):
            if weights is not None:
                out[f"{part}.weights_source"] = weights.source
                out[f"{part}.weights_sha256"] = weights.sha256
        if self.mean is not None:
            out["normalization"] = {"mean": self.mean, "std": self.std}
        if self.init is not None:
            out["init.parent_passes"] = sum(int(p.get("passes", 0)) for p in self.init.payload.get("lineage") or [])
        return out

    def seen_classes(self, base: list[str]) -> list[str]:
        """Every class whose boxes the new checkpoint's weights have seen: this run's base
        classes, a COCO detector's categories, and what an `init=` parent had seen."""
        seen = list(base)
        if self.detector_weights:
            seen += list(self.detector_weights.seen_classes)
        if self.init is not None:
            from fsx.run.fewshot import pretrained_classes

            seen += pretrained_classes(self.init.payload)
        return list(dict.fromkeys(seen))


def _unrecorded_parent(payload: dict) -> dict:
    """A checkpoint written before lineages were recorded: one stage, its passes unknown (0)."""
    config = payload.get("config") or {}
    return {"run_id": payload.get("source_run"), "algorithm": str((config.get("algorithm") or {}).get("name", "?")), "passes": 0}


def _init_note(init: Init, parents: list[dict]) -> str:
    """The run's description in the MLflow UI: where its first weights came from, linked."""
    links = ", ".join(f"[{p['algorithm']} {str(p['run_id'])[:8]}](#/runs/{p['run_id']})" if p.get("run_id") else p["algorithm"] for p in parents)
    return f"Starts from the weights of `{init.reference}` (sha256 {init.sha256[:12]}...). Lineage: {links}."


def new_model_spec(cfg, num_classes: int) -> dict:
    """The spec of the config's model as it stands (weight names resolved at build time)."""
    return Start(plain(cfg.detector), plain(cfg.backbone)).spec(cfg, num_classes)


# ----------------------------------------------------------------------------- resolution


def resolve_start(cfg) -> tuple[DictConfig, Start]:
    """The config with the start applied (a COCO detector's architecture; `init=`'s model
    groups) and the Start. Raises UsageError for any bad weight name, file or combination."""
    normalize = str(cfg.get("normalize", "auto"))
    if normalize not in NORMALIZE:
        raise UsageError(f"normalize={normalize}: choose auto (the pretrained weights' own mean/std when there are weights) or dataset (dataset.image_mean/std)")
    explicit = explicit_keys()
    reference = cfg.get("init")
    if reference not in (None, "", "None"):
        return _from_checkpoint(cfg, str(reference), explicit, normalize)
    detector, backbone = plain(cfg.detector), plain(cfg.backbone)
    det_weights = detector_weights(detector, backbone)
    if det_weights is not None and det_weights.architecture:
        detector, backbone = _coco_architecture(det_weights, detector, backbone, explicit, cfg)
    bb_weights = backbone_weights(backbone)
    start = Start(detector, backbone, bb_weights, det_weights)
    chosen = det_weights or bb_weights
    if normalize == "auto" and chosen is not None and chosen.mean is not None:
        start.mean, start.std = [float(v) for v in chosen.mean], [float(v) for v in chosen.std]
        start.normalization = f"the weights' ({chosen.name}: mean {_short(chosen.mean)}, std {_short(chosen.std)})"
    return _with_model(cfg, detector, backbone), start


def _with_model(cfg, detector: dict, backbone: dict) -> DictConfig:
    """The config with these detector and backbone groups in place of its own (whole groups:
    another backbone's keys are not the config's)."""
    config = plain(cfg)
    config["detector"], config["backbone"] = detector, backbone
    return OmegaConf.create(config)


def _short(values) -> str:
    return "/".join(f"{v:.3g}" for v in values)


def _coco_architecture(weights: Weights, detector: dict, backbone: dict, explicit: set[str], cfg) -> tuple[dict, dict]:
    """torchvision's architecture for its COCO detector: the keys that decide the weights'
    shapes always, its other choices unless the command line set them."""
    arch = weights.architecture
    shape, defaults = arch["shape_keys"], arch["defaults"]
    detector, backbone = dict(detector), dict(backbone)
    for part, target in (("detector", detector), ("backbone", backbone)):
        for key, value in defaults[part].items():
            if f"{part}.{key}" not in explicit:
                target[key] = value
        for key, value in shape[part].items():
            if f"{part}.{key}" in explicit and target.get(key) != value:
                raise UsageError(f"{part}.{key}={target.get(key)}: detector.weights={weights.name} ({arch['builder']}) needs {part}.{key}={value}; drop the override")
            target[key] = value
    if arch.get("image_size") and int(cfg.dataset.image_size) != int(arch["image_size"]):
        raise UsageError(f"detector.weights={weights.name} is torchvision's {arch['builder']}, which works at {arch['image_size']} px: add dataset.image_size={arch['image_size']}")
    return detector, backbone


def _from_checkpoint(cfg, reference: str, explicit: set[str], normalize: str) -> tuple[DictConfig, Start]:
    for part in ("backbone", "detector"):
        if cfg[part].get("weights") not in (None, "", "None"):
            raise UsageError(f"init={reference} starts from that checkpoint's weights: drop {part}.weights={cfg[part].weights}")
    path, run_id = tracking.resolve_checkpoint(reference, str(cfg.mlflow.tracking_uri), str(cfg.mlflow.experiment), key="init")
    payload = read_checkpoint(path)
    if "train_state" in payload:
        raise UsageError(f"init={reference} is an interrupted run's last.pt: continue it with resume={reference}, or start from a finished run's checkpoint")
    spec = payload["model_spec"]
    stored = {part: {k: v for k, v in spec[part].items() if k not in WEIGHT_KEYS} for part in ("detector", "backbone")}
    for part in ("detector", "backbone"):
        if part in explicit and cfg[part].name != stored[part]["name"]:
            raise UsageError(
                f"init={reference} is a {stored['detector']['name']} on {stored['backbone']['name']}, not {part}={cfg[part].name}: "
                f"its weights only fit its own architecture; drop {part}={cfg[part].name}"
            )
    # the command line's detector.*/backbone.* keys on top of the checkpoint's (thresholds, trainable layers)
    dotted = {k: v for k, v in ((o.lstrip("+").split("=", 1) + [""])[:2] for o in command_line_overrides()) if k.split(".")[0] in ("detector", "backbone") and "." in k}
    merged = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotted.items()]))
    detector, backbone = OmegaConf.to_container(merged.detector), OmegaConf.to_container(merged.backbone)
    init = Init(reference, payload, run_id, str(path), sha256_of(path))
    start = Start(detector, backbone, init=init)
    if normalize == "auto":
        start.mean, start.std = list(spec["image_mean"]), list(spec["image_std"])
        start.normalization = f"the init checkpoint's (mean {_short(start.mean)}, std {_short(start.std)})"
    return _with_model(cfg, detector, backbone), start


def load_init(model, spec: dict, init: Init, classes: list[str], task_sized_head: bool) -> None:
    """The init checkpoint's weights, BN statistics included: every tensor outside the class
    outputs must fit; the class outputs are carried only when they fit and mean the same
    (the same class list, or task slots into task slots), else they stay fresh."""
    family = spec["detector"]["name"]
    head = CLASS_OUTPUTS[family]
    mine = model.state_dict()
    theirs = init.payload["state_dict"]
    body_mine = {k for k in mine if not k.startswith(head)}
    missing = [k for k in body_mine if k not in theirs and not k.endswith("num_batches_tracked")]
    wrong = [k for k in body_mine if k in theirs and theirs[k].shape != mine[k].shape]
    if missing or wrong:
        raise UsageError(
            f"init={init.reference} does not fit this {family} on {spec['backbone']['name']}: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]}); start from a checkpoint of the same detector and backbone"
        )
    state = {k: theirs[k] for k in body_mine if k in theirs}
    head_keys = [k for k in mine if k.startswith(head)]
    fits = all(k in theirs and theirs[k].shape == mine[k].shape for k in head_keys)
    parent_slots = init.payload.get("adapt_head") == "keep"
    same_meaning = (task_sized_head and parent_slots) or (not task_sized_head and not parent_slots and list(init.payload.get("classes", [])) == list(classes))
    if fits and same_meaning:
        state.update({k: theirs[k] for k in head_keys})
    model.load_state_dict(state, strict=False)
