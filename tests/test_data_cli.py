"""`fsx data stats | folds | show` and the fold optimiser behind `folds` (PROTOCOLS 2.6).

The optimiser is checked on a synthetic presence matrix with a planted answer; the commands
run as a user types them (`python -m fsx data ...`) on a tiny VOC tree written here, whose
counts are known by hand, on a small letters set, and on ../shared/data when it is present.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import cli_env, ok, run_fsx
from PIL import Image

from fsx.data.fold_search import fold_sizes, objective, random_partition, search_folds
from fsx.errors import UsageError
from fsx.run.data import data_show, data_stats

SHARED = Path(os.environ.get("FSX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real-photo datasets are not at {SHARED} (set FSX_SHARED_DATA)")


# --------------------------------------------------------------------------- the optimiser


def planted(groups: int = 4, size: int = 4, images: int = 1200, noise: float = 0.05, seed: int = 1) -> np.ndarray:
    """Classes g*size .. g*size+size-1 co-occur: each image shows some classes of one group,
    and now and then one stray class of any group."""
    rng = np.random.default_rng(seed)
    h = np.zeros((images, groups * size), dtype=bool)
    for j in range(images):
        g = rng.integers(groups)
        chosen = rng.random(size) < 0.5
        chosen[rng.integers(size)] = True
        h[j, g * size : (g + 1) * size] = chosen
        if rng.random() < noise:
            h[j, rng.integers(groups * size)] = True
    return h


NAMES = [f"c{k:02d}" for k in range(16)]
PLANTED = [[NAMES[g * 4 + k] for k in range(4)] for g in range(4)]


@pytest.fixture(scope="module")
def presence() -> np.ndarray:
    return planted()


@pytest.fixture(scope="module")
def searched(presence):
    bests = []
    result = search_folds(presence, NAMES, folds=4, seed=0, on_move=lambda k, best: bests.append(best))
    return result, bests


def test_the_search_finds_the_planted_folds_and_beats_random_partitions(presence, searched):
    result, _ = searched
    randoms = [objective(presence, random_partition(16, 4, np.random.default_rng(s))) for s in range(50)]
    assert result.objective < min(randoms)
    assert result.objective < result.start_objective
    assert result.folds == PLANTED
    assert result.objective == pytest.approx(objective(presence, [[NAMES.index(c) for c in f] for f in PLANTED]))
    # each class's own test fold adds exactly 1: the rest is what the partition decides
    assert result.constant == pytest.approx(16.0)


def test_the_running_objective_agrees_with_a_fresh_evaluation(presence, searched):
    result, bests = searched
    assert len(bests) == result.iterations
    assert bests[-1] == pytest.approx(result.objective, abs=1e-9)  # the incremental sum did not drift
    assert all(b >= a - 1e-12 for a, b in zip(bests[1:], bests))  # the best never gets worse
    assert result.lost.shape == (4, 16)
    share = presence[presence[:, 4:8].any(axis=1), 0].sum() / presence[:, 0].sum()  # c00's images that hold c04..c07
    assert result.lost[1, 0] == pytest.approx(share)


def test_the_search_is_deterministic_for_a_seed_and_starts_from_the_seeded_partition(presence):
    one = search_folds(presence, NAMES, folds=4, seed=7, iterations=300, patience=100)
    two = search_folds(presence, NAMES, folds=4, seed=7, iterations=300, patience=100)
    assert (one.folds, one.objective, one.iterations, one.start_objective) == (two.folds, two.objective, two.iterations, two.start_objective)
    start = random_partition(16, 4, np.random.default_rng(7))
    assert one.start_objective == pytest.approx(objective(presence, start))
    assert search_folds(presence, NAMES, folds=4, seed=8, iterations=300, patience=100).start_objective != one.start_objective


@pytest.mark.parametrize("classes,folds", [(10, 4), (16, 3), (7, 7), (5, 2)])
def test_folds_have_equal_sizes_and_partition_the_classes(classes, folds):
    h = planted(groups=1, size=classes, images=200, seed=classes)
    names = [f"k{c}" for c in range(classes)]
    result = search_folds(h, names, folds=folds, seed=0, iterations=200, patience=50)
    sizes = sorted(len(f) for f in result.folds)
    assert sizes == sorted(fold_sizes(classes, folds)) and max(sizes) - min(sizes) <= (0 if classes % folds == 0 else 1)
    assert sorted(c for f in result.folds for c in f) == sorted(names)


@pytest.mark.parametrize("iterations,patience", [(0, 1), (50, 10), (200, 500), (1000, 20)])
def test_the_search_runs_at_least_iterations_then_stops_after_patience_without_improvement(presence, iterations, patience):
    result = search_folds(presence, NAMES, folds=4, seed=3, iterations=iterations, patience=patience)
    assert result.iterations == max(iterations, result.best_iteration + patience)


def test_impossible_fold_counts_are_refused():
    h = planted(groups=1, size=3, images=20)
    with pytest.raises(UsageError, match="folds=4: choose between 2 and the number of classes"):
        search_folds(h, ["a", "b", "c"], folds=4)
    with pytest.raises(UsageError, match="folds=1"):
        search_folds(h, ["a", "b", "c"], folds=1)


# --------------------------------------------------------------------------- the commands

# A tiny VOC tree: cat and dog show up together, bird and fish together, image i9 joins them.
# image: [classes of its boxes]
TREE = {
    "i1": ["cat", "dog"],
    "i2": ["cat", "dog"],
    "i3": ["cat"],
    "i4": ["dog", "dog"],
    "i5": ["bird", "fish"],
    "i6": ["bird", "fish", "fish"],
    "i7": ["bird"],
    "i8": ["fish"],
    "i9": ["cat", "bird"],
}


def write_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stem, names in TREE.items():
        Image.new("RGB", (96, 48), "gray").save(root / f"{stem}.jpg")
        objects = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{2 + 30 * k}</xmin><ymin>4</ymin><xmax>{28 + 30 * k}</xmax><ymax>40</ymax></bndbox></object>"
            for k, n in enumerate(names)
        )
        (root / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename><size><width>96</width><height>48</height></size>{objects}</annotation>")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> list[str]:
    return ["dataset=custom", f"dataset.path={write_tree(tmp_path_factory.mktemp('tree') / 'voc')}"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("cache"))


def fsx(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_fsx(["data", *args], cwd, env, 300)


def rows(stdout: str) -> dict[str, list[str]]:
    """The stats table's rows by class: [kind?, numbers...]."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and all(p.isdigit() for p in parts[-2:]):
            name = "all" if line.startswith("all classes") else parts[0]
            found[name] = parts[2:] if name == "all" else parts[1:]
    return found


def test_stats_counts_every_class_in_the_source_and_the_splits(tree, env, tmp_path):
    result = ok(fsx(["stats", *tree, "dataset.novel=[bird,fish]", "--csv", "stats.csv"], tmp_path, env))
    table = rows(result.stdout)
    # source images/boxes, train (images 1-4: base boxes), test-adapt and test-test (images 5-9 split 3/2)
    assert table["cat"][:5] == ["base", "4", "4", "3", "3"] and table["cat"][5:] == ["0"] * 4
    assert table["dog"] == ["base", "3", "4", "3", "4", "0", "0", "0", "0"]
    for novel, (images, boxes) in {"bird": (4, 4), "fish": (3, 4)}.items():
        kind, source_images, source_boxes, train_images, train_boxes, *test = table[novel]
        assert (kind, int(source_images), int(source_boxes), train_images, train_boxes) == ("novel", images, boxes, "0", "0")
        assert int(test[0]) + int(test[2]) == images and int(test[1]) + int(test[3]) == boxes
    assert table["all"][:4] == ["9", "16", "4", "7"] and (table["all"][4], table["all"][6]) == ("3", "2")
    with open(tmp_path / "stats.csv", newline="") as f:
        written = list(csv.reader(f))
    assert written[0][:4] == ["class", "kind", "source_images", "source_boxes"] and len(written[0]) == 10
    assert written[1:] == [[name, *table[name]] for name in ("bird", "cat", "dog", "fish")] + [["all classes", "", *table["all"]]]


def test_folds_finds_the_co_occurring_pairs_and_writes_folds_the_custom_dataset_accepts(tree, env, tmp_path):
    result = ok(fsx(["folds", *tree, "--folds", "2", "--iterations", "300", "--patience", "100", "--out", "folds.yaml"], tmp_path, env))
    written = yaml.safe_load((tmp_path / "folds.yaml").read_text())
    assert {frozenset(f) for f in written["folds"].values()} == {frozenset({"cat", "dog"}), frozenset({"bird", "fish"})}
    assert sorted(written["folds"]) == [1, 2] and sorted(c for f in written["folds"].values() for c in f) == ["bird", "cat", "dog", "fish"]
    # by hand: 4 own-fold terms + cat loses 1 of 4 images (i9) to fold {bird, fish}, bird 1 of 4 to {cat, dog}
    assert written["objective"] == pytest.approx(4 + 2 * (1 / 4) ** 2)
    assert written["start_objective"] >= written["objective"]
    assert re.search(r"objective 4\.1250, random start \d", result.stdout)
    override = re.search(r"fsx pretrain dataset=custom dataset\.path=\S+ (dataset\.novel=\[\S+\])", result.stdout).group(1)
    assert override == f"dataset.novel=[{','.join(written['folds'][1])}]"
    assert override in (tmp_path / "folds.yaml").read_text()  # the comment that says how to use it
    table = rows(data_stats([*tree, override]))  # in this process: the command line is tested above
    assert {c for c in ("bird", "cat", "dog", "fish") if table[c][0] == "novel"} == set(written["folds"][1])


@pytest.fixture(scope="module")
def letters(letters_source) -> list[str]:
    """The conftest's 200-image letters set, already generated."""
    return ["dataset.generator.num_images=200", f"dataset.cache_dir={letters_source.parent}"]


def test_show_draws_a_split_or_a_task_into_a_png(tree, letters, env, tmp_path):
    out = tmp_path / "test.png"
    assert data_show([*tree, "dataset.novel=[bird,fish]"], "test-test", 9, str(out)) == f"wrote {out} (2 of 2 images)"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (600, 340)  # 2 columns x 1 row of 300 px cells, and the title
    result = ok(fsx(["show", *letters, "--split", "task", "ways=2", "shots=2", "task_seed=3", "--out", "task.png"], tmp_path, env))
    assert result.stdout.strip() == "wrote task.png (4 of 4 images)"
    with Image.open(tmp_path / "task.png") as im:
        assert im.size == (600, 640)
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # images and coloured boxes, not a blank page


def test_sample_writes_the_manifests_eval_would_draw(letters, tmp_path):
    from fsx.run.data import data_sample

    out = tmp_path / "shots.json"
    text = data_sample([*letters, "sampler=instance", "shots=2", "ways=3", "task_seed=4"], str(out), repeats=2)
    assert text.endswith(f"wrote {out}") and "sampler instance_level, 2 shots" in text
    written = json.loads(out.read_text())
    assert written["kind"] == "shots" and written["split"]["kind"] == "split"
    assert [t["task_seed"] for t in written["tasks"]] == [4, 5]
    for task in written["tasks"]:
        assert set(task["boxes_per_class"].values()) == {2} and len(task["instances"]) == 6
    again = tmp_path / "again.json"
    data_sample([*letters, "sampler=instance", "shots=2", "ways=3", "task_seed=4"], str(again), repeats=2)
    assert again.read_text() == out.read_text()  # the same seeds, the same shots


@pytest.mark.parametrize("args,message", [
    (["sample", "--repeats", "0"], "--repeats 0: sample at least one task"),
    (["show", "--split", "validation"], "--split validation: choose one of train, test_adapt, test_test, task"),
    (["stats", "dataset=custom", "dataset.path=/nowhere/at/all", "dataset.novel=[cat]"], "dataset.path=/nowhere/at/all: no such folder"),
    (["folds", "dataset=custom", "dataset.pathh=x"], "fsx has no key dataset.pathh: did you mean dataset.path"),
])
def test_bad_input_exits_2_with_one_message(args, message, env, tmp_path):
    result = fsx(args, tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_data_command_explains_itself_with_an_example(env, tmp_path):
    text = ok(fsx(["--help"], tmp_path, env)).stdout
    assert all(command in text for command in ("stats", "folds", "sample", "show"))
    for command in ("stats", "folds", "sample", "show"):
        text = ok(fsx([command, "--help"], tmp_path, env)).stdout
        assert f"fsx data {command} " in text and "OVERRIDES" in text


@needs_shared
def test_stats_of_a_shared_dataset_matches_its_published_counts():
    data = ["dataset=custom", f"dataset.path={SHARED / 'microcontrollers'}", "dataset.novel=[ESP8266]"]
    table = rows(data_stats(data))  # in this process: the command line is tested on the tiny tree
    published = {"Arduino_Nano": (43, 43), "ESP8266": (46, 47), "Heltec_ESP32_Lora": (44, 44), "Raspberry_Pi_3": (43, 43)}
    assert {c: (int(table[c][1]), int(table[c][2])) for c in published} == published
    assert table["all"][:2] == ["149", "177"]
    assert table["ESP8266"][0] == "novel" and int(table["all"][2]) + int(table["all"][4]) + int(table["all"][6]) == 149
