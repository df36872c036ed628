"""`fsx data`: look at a dataset before training on it. `stats` counts images and boxes
per class in the source and in each split, `folds` runs the fold optimiser (PROTOCOLS 2.6)
and writes the folds it found, `show` draws a split's images with their boxes.

The dataset is chosen by the same Hydra overrides as every verb (composed with Hydra's
compose API: no Hydra job, no output directory, no MLflow run).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fsx.data.folds import RT_RULE
from fsx.errors import UsageError

if TYPE_CHECKING:
    from fsx.data.coco import CocoSet

CONFIG_MODULE = "fsx.conf"
CONFIG_NAME = "adapt"  # the verb whose config holds the dataset and the task keys (ways, shots, task_seed)
SPLITS = ("train", "test_adapt", "test_test")
SHOWABLE = (*SPLITS, "task")


# --------------------------------------------------------------------------- config and data


def data_config(overrides: list[str]) -> DictConfig:
    """The config `fsx adapt OVERRIDES` would run with (only its dataset and task keys are read)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    options = [o for o in overrides if o.startswith("-")]
    if options:
        raise UsageError(f"unknown option {options[0]} (dataset keys are overrides such as dataset.path=<folder>; see --help)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).split())
        message = re.sub(r"\s*Config search path:.*$", "", message)
        message = re.sub(r"\s*full_key: \S+( reference_type=\S+)? object_type=\S+", "", message)
        unknown = re.search(r"Could not (?:override|append to) '([^']+)'", message)
        if unknown:  # never Hydra's advice to append it with +: the key would be read by nothing
            message = f"fsx has no key {unknown.group(1)}{_nearest(unknown.group(1), overrides)}"
        raise UsageError(f"bad configuration {' '.join(overrides)}: {message} (`fsx adapt --cfg job` lists every key)") from None
    return cfg


def _nearest(key: str, overrides: list[str]) -> str:
    """Up to three keys of the chosen groups' config that look like `key`."""
    import difflib

    from hydra import compose, initialize_config_module

    groups = [o for o in overrides if "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        tree = OmegaConf.to_container(compose(config_name=CONFIG_NAME, overrides=groups), resolve=False)

    def walk(node: dict, prefix: str = "") -> list[str]:
        return [k for key, value in node.items() for k in [prefix + str(key), *(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [])]]

    near = difflib.get_close_matches(key, walk(tree), n=3, cutoff=0.6)
    return f": did you mean {' or '.join(near)}?" if near else ""


def dataset_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg.dataset, resolve=True)


def load_source(dataset: dict) -> CocoSet:
    """The whole dataset before any split, as every verb reads it."""
    from fsx.run.wiring import dataset_source

    if dataset["name"] not in ("letters", "custom"):
        raise UsageError(f"dataset={dataset['name']}: `fsx data` reads the whole source of letters and custom datasets only (stats shows this one's splits)")
    return dataset_source(dataset)


def load_split(dataset: dict):
    from fsx.run.wiring import benchmark_split  # the split every verb trains and scores on

    return benchmark_split(dataset)


def describe(dataset: dict) -> str:
    if dataset["name"] == "letters":
        return f"letters ({dataset['generator']['num_images']} generated images)"
    if dataset["name"] != "custom":
        return f"{dataset['name']} ({dataset.get('root')})"
    where = dataset.get("path") or dataset.get("annotations")
    where = ", ".join(map(str, where)) if isinstance(where, (list, tuple)) else where
    return f"custom ({dataset['format']}: {where})"


def dataset_overrides(overrides: list[str]) -> list[str]:
    """The command line's dataset choice (group and keys), without its novel classes."""
    keys = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == "dataset"]
    return [o for o in keys if o.lstrip("+~").split("=", 1)[0] != "dataset.novel"]


def novel_override(classes: list[str]) -> str:
    """`dataset.novel=[...]` as Hydra parses it back to these names, safe to paste into a shell."""

    def item(name: str) -> str:
        plain = re.fullmatch(r"[A-Za-z_][\w\-./]*", name) and name.lower() not in ("true", "false", "null", "nan", "inf")
        return name if plain else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = f"dataset.novel=[{','.join(item(c) for c in classes)}]"
    return text if re.fullmatch(r"[\w\-./=\[\],]+", text) else "'" + text.replace("'", "'\\''") + "'"


def per_class(source: CocoSet) -> dict[int, tuple[int, int]]:
    """category id -> (images holding it, boxes)."""
    images: dict[int, set[int]] = {}
    boxes: dict[int, int] = {}
    for ann in source.coco["annotations"]:
        images.setdefault(ann["category_id"], set()).add(ann["image_id"])
        boxes[ann["category_id"]] = boxes.get(ann["category_id"], 0) + 1
    return {c: (len(images[c]), boxes[c]) for c in boxes}


def table(header: list[list[str]], rows: list[list[str]], left: int = 2) -> str:
    """Aligned text: the first `left` columns left-aligned, the rest right-aligned; of two
    header lines, the first (group names over their columns) is left-aligned."""
    widths = [max(len(r[k]) for r in [*header, *rows]) for k in range(len(rows[0] if rows else header[0]))]
    lines = []
    for n, r in enumerate([*header, *rows]):
        flush_left = n == 0 and len(header) > 1
        cells = [c.ljust(w) if k < left or flush_left else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- fsx data stats


def data_stats(overrides: list[str], csv_path: str | None = None) -> str:
    """Images and boxes per class in the source and in each split, with totals."""
    cfg = data_config(overrides)
    dataset = dataset_dict(cfg)
    whole = dataset["name"] in ("letters", "custom")  # the published benchmarks: their splits only
    source = load_source(dataset) if whole else None
    split = None
    if not (dataset["name"] == "custom" and not dataset.get("novel")):
        split = load_split(dataset)
    parts = [] if split is None else [("train", split.train), ("test-adapt", split.test_adapt), ("test-test", split.test_test)]
    sets = ([("source", source)] if source is not None else []) + parts
    counts = [per_class(s) for _, s in sets]
    novel = set(split.fold.novel) if split else set()
    columns = ["class", "kind"] + [f"{name} {what}" for name, _ in sets for what in ("images", "boxes")]
    rows = []
    categories = source.categories if source is not None else {c["id"]: c for s in (split.train, split.test_adapt) for c in s.categories}.values()
    for cat in categories:
        kind = "" if split is None else ("novel" if cat["name"] in novel else "base")
        rows.append([cat["name"], kind] + [str(v) for c in counts for v in c.get(cat["id"], (0, 0))])
    rows.append(["all classes", ""] + [str(v) for _, s in sets for v in (len(s), len(s.coco["annotations"]))])

    lines = []
    if source is not None:
        lines.append(f"{describe(dataset)}: {len(source.categories)} classes, {len(source)} images, {len(source.coco['annotations'])} boxes")
        empty = sum(1 for i in source.image_ids if not source.annotations(i))
        if empty:
            lines.append(f"{empty} images hold no box (they go to train in every fold)")
    else:
        lines.append(describe(dataset))
    if split is None:
        lines.append("no split: add dataset.novel=[...] (the novel classes) to see train / test-adapt / test-test")
    else:
        fold = split.fold
        lines.append(f"{fold.dataset} fold {fold.index}: {len(fold.base)} base, {len(fold.novel)} novel classes ({', '.join(fold.novel)}), split_seed {split.seed}")
        lines.append(f"rule: {split.rule}")
    groups = [""] * 2 + [name if k == 0 else "" for name, _ in sets for k in range(2)]
    lines += ["", table([groups, ["class", "kind"] + ["images", "boxes"] * len(sets)], rows)]
    if csv_path:
        path = Path(csv_path).expanduser()
        try:
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([c.replace(" ", "_").replace("-", "_") for c in columns])
                writer.writerows(rows)
        except OSError as e:
            raise UsageError(f"--csv {csv_path}: cannot write it: {e.strerror}") from None
        lines.append(f"\nwrote {path}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- fsx data folds


def data_folds(overrides: list[str], folds: int = 4, seed: int = 0, iterations: int = 10_000, patience: int = 5_000, out: str | None = "folds.yaml") -> str:
    """PROTOCOLS 2.6's fold search over the whole source; writes the folds as YAML."""
    import yaml

    from fsx.data.fold_search import fold_sizes, presence_matrix, search_folds
    from fsx.progress import progress

    cfg = data_config(overrides)
    dataset = dataset_dict(cfg)
    source = load_source(dataset)
    h, names = presence_matrix(source)
    if not 2 <= folds <= len(names):
        raise UsageError(f"--folds {folds}: choose between 2 and the number of classes ({len(names)}: {', '.join(names)})")
    if iterations < 0 or patience < 1:
        raise UsageError(f"--iterations {iterations} --patience {patience}: need iterations >= 0 and patience >= 1")
    sizes = fold_sizes(len(names), folds)
    head = f"fold search over the {len(names)} classes of {describe(dataset)} in {len(source)} images: {folds} folds of {', '.join(map(str, sizes))} classes, seed {seed}"
    print(head, flush=True)
    bar = progress(total=iterations, desc="fold search")

    def moved(k: int, best: float) -> None:
        bar.update(1)
        if k % 500 == 0:
            bar.set_postfix_str(f"best {best:.4f}")

    result = search_folds(h, names, folds, seed, iterations, patience, on_move=moved)
    bar.close()

    test_images = [int(h[:, [names.index(c) for c in fold]].any(axis=1).sum()) for fold in result.folds]
    lines = [
        f"objective {result.objective:.4f}, random start {result.start_objective:.4f} ({result.constant:.0f} of each is the classes' own test folds, which no partition changes)",
        f"{result.iterations} moves, the best found at move {result.best_iteration}; initial temperature {result.initial_temperature:.3g}",
        "",
    ]
    rows = []
    for i, fold in enumerate(result.folds):
        worst, share = result.worst_kept(i)
        worst_text = f"{worst} {share:.0%}" if worst else "-"
        rows.append([str(i + 1), ", ".join(fold), f"{test_images[i]} ({test_images[i] / max(len(source), 1):.0%})", worst_text])
    lines.append(table([["fold", "novel (test) classes", "test images", "worst kept class: share lost"]], rows, left=4))
    lines += ["", "share of each class's images lost to test, per fold (test: the fold's own novel class)"]
    own = {c: i for i, fold in enumerate(result.folds) for c in fold}
    matrix = [[c] + ["test" if own[c] == i else f"{result.lost[i, k]:.0%}" for i in range(folds)] for k, c in enumerate(names)]
    lines.append(table([["class"] + [f"fold {i + 1}" for i in range(folds)]], matrix, left=1))

    base_command = " ".join(["fsx pretrain", *dataset_overrides(overrides)])
    example = f"{base_command} {novel_override(result.folds[0])}"
    if dataset["name"] == "custom":
        usage = f"pretrain on fold 1 with:\n  {example}"
    else:
        usage = f"{dataset['name']} has fixed folds (dataset.fold); these are for comparison (PROTOCOLS 2.6: the published folds are canonical)"
    if out:
        path = Path(out).expanduser()
        record = {
            "dataset": describe(dataset),
            "overrides": dataset_overrides(overrides),
            "classes": names,
            "seed": seed,
            "iterations": result.iterations,
            "objective": round(result.objective, 6),
            "start_objective": round(result.start_objective, 6),
            "folds": {i + 1: list(fold) for i, fold in enumerate(result.folds)},
        }
        command = " ".join(["fsx data folds", *overrides, f"--folds {folds} --seed {seed} --iterations {iterations} --patience {patience}"])
        comment = f"# {command}\n# PROTOCOLS 2.6's fold search. "
        if dataset["name"] == "custom":
            comment += f"Pretrain on fold i with its classes as the novel set, dataset.novel=[...]; fold 1:\n#   {example}\n"
        else:
            comment += f"{usage}.\n"
        try:
            path.write_text(comment + yaml.safe_dump(record, sort_keys=False, allow_unicode=True, default_flow_style=None, width=1000))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write it: {e.strerror}") from None
        lines += ["", f"wrote {path}; {usage}"]
    else:
        lines += ["", usage]
    return "\n".join(lines)


# --------------------------------------------------------------------------- fsx data sample


def data_sample(overrides: list[str], out: str = "shots.json", repeats: int = 1) -> str:
    """Sample the K-shot tasks `fsx eval` would (task seeds task_seed .. task_seed + repeats - 1,
    the same sampler keys) and write their manifests with the split's, as JSON."""
    import json

    from fsx.run import fewshot

    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: sample at least one task")
    cfg = data_config(overrides)
    split = load_split(dataset_dict(cfg))
    seeds = range(int(cfg.task_seed), int(cfg.task_seed) + repeats)
    tasks = [fewshot.sample_task(split, int(cfg.ways), int(cfg.shots), seed, **fewshot.task_options(cfg)) for seed in seeds]
    manifests = [task.manifest() for task in tasks]
    path = Path(out).expanduser()
    path.write_text(json.dumps({"kind": "shots", "split": split.manifest(), "tasks": manifests}, indent=1))
    rows = [
        [str(m["task_seed"]), ", ".join(m["classes"]), str(len(m["image_ids"])), " ".join(f"{c}:{n}" for c, n in m["boxes_per_class"].items()), m["hash"]]
        for m in manifests
    ]
    head = f"{describe(dataset_dict(cfg))}, fold {split.fold.index}: {len(tasks)} task(s), sampler {manifests[0]['sampler']}, {cfg.shots} shots"
    return "\n".join([head, table([["seed", "classes", "images", "boxes per class", "hash"]], rows, left=5), f"wrote {path}"])


# --------------------------------------------------------------------------- fsx data show


def data_show(overrides: list[str], split_name: str = "train", count: int = 16, out: str | None = None) -> str:
    """Draw the first `count` images of a split (or a sampled task's support set) with their boxes."""
    chosen = split_name.replace("-", "_")
    if chosen not in SHOWABLE:
        raise UsageError(f"--split {split_name}: choose one of {', '.join(SHOWABLE)}")
    if count < 1:
        raise UsageError(f"--count {count}: show at least one image")
    cfg = data_config(overrides)
    dataset = dataset_dict(cfg)
    split = load_split(dataset)
    classes = [*split.fold.base, *split.fold.novel]
    if chosen == "task":
        from fsx.run import fewshot

        task = fewshot.sample_task(split, int(cfg.ways), int(cfg.shots), int(cfg.task_seed), **fewshot.task_options(cfg))
        images = task.support
        title = f"{describe(dataset)}: task_seed {cfg.task_seed}, {cfg.ways}-way {cfg.shots}-shot support set ({', '.join(task.class_names)}: their boxes only)"
    else:
        images = getattr(split, chosen)
        kept = (", base boxes only" if chosen == "train" else ", novel boxes only") if split.rule == RT_RULE else ""
        title = f"{describe(dataset)}, fold {split.fold.index}: {chosen.replace('_', '-')} ({len(images)} images{kept})"
    if not len(images):
        raise UsageError(f"--split {split_name}: the split has no images")
    ids = images.image_ids[:count]
    path = Path(out or f"data-{chosen}.png").expanduser()
    draw_grid(images, ids, classes, title, path)
    return f"wrote {path} ({len(ids)} of {len(images)} images)"


def draw_grid(images: CocoSet, ids: list[int], classes: list[str], title: str, path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from PIL import Image

    columns = math.ceil(math.sqrt(len(ids)))
    rows = math.ceil(len(ids) / columns)
    fig = Figure(figsize=(3 * columns, 3 * rows + 0.4), dpi=100)
    palette = colormaps["tab20"]
    color = {name: palette(k % 20) for k, name in enumerate(classes)}
    for n, image_id in enumerate(ids):
        ax = fig.add_subplot(rows, columns, n + 1)
        info = images.image(image_id)
        file = images.image_root / info["file_name"]
        try:
            with Image.open(file) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
        except OSError as e:
            raise UsageError(f"image {file} (image id {image_id}) cannot be read: {e}") from None
        for ann in images.annotations(image_id):
            name = images.category_name(ann["category_id"])
            x, y, w, h = ann["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color.get(name, "red"), linewidth=1.5))
            ax.text(x, y, name, fontsize=7, color="white", va="bottom", bbox={"facecolor": color.get(name, "red"), "pad": 1, "linewidth": 0})
        boxes = len(images.annotations(image_id))
        ax.set_title(f"{Path(info['file_name']).name[-28:]} ({boxes} box{'es' if boxes != 1 else ''})", fontsize=7)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write it: {e.strerror}") from None
    return path
