"""The image-level K-shot sampler, class choice and the task manifest."""

from __future__ import annotations

import pytest

from fsx.data.coco import CocoSet
from fsx.data.folds import letters_fold, split_by_fold
from fsx.data.shots import Task, choose_classes, sample_shots
from fsx.errors import UsageError


@pytest.fixture(scope="module")
def fold():
    return letters_fold(1)


@pytest.fixture(scope="module")
def pool(letters_source, fold) -> CocoSet:
    source = CocoSet.load(letters_source / "annotations.json", letters_source)
    return split_by_fold(source, fold, seed=0).test_adapt


@pytest.mark.parametrize("shots", [1, 2, 3])
def test_sample_holds_m_times_k_distinct_images(pool, fold, shots):
    classes = list(fold.novel)
    task = sample_shots(pool, classes, shots, seed=0)
    ids = task.support.image_ids
    assert len(ids) == len(classes) * shots
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert set(ids) <= set(pool.image_ids)
    class_ids = [pool.category_id(c) for c in classes]
    assert task.class_ids == class_ids and task.class_names == classes
    for cid in class_ids:
        assert sum(cid in task.support.image_categories(i) for i in ids) >= shots
    for a in task.support.coco["annotations"]:
        assert a["category_id"] in class_ids
    # every box of a task class in a chosen image is kept
    for i in ids:
        assert len(task.support.annotations(i)) == sum(a["category_id"] in class_ids for a in pool.annotations(i))


def test_sample_keeps_only_task_classes(pool, fold):
    classes = list(fold.novel[:2])
    task = sample_shots(pool, classes, 2, seed=3)
    keep = {pool.category_id(c) for c in classes}
    assert {a["category_id"] for a in task.support.coco["annotations"]} == keep
    assert {c["id"] for c in task.support.categories} == keep


def test_sample_is_seeded(pool, fold):
    classes = list(fold.novel)
    a = sample_shots(pool, classes, 2, seed=0)
    b = sample_shots(pool, classes, 2, seed=0)
    assert a.support.image_ids == b.support.image_ids
    assert a.manifest() == b.manifest()
    samples = {tuple(sample_shots(pool, classes, 2, seed=s).support.image_ids) for s in range(1, 6)}
    assert len(samples | {tuple(a.support.image_ids)}) >= 3
    assert tuple(sample_shots(pool, classes, 2, seed=1).support.image_ids) != tuple(a.support.image_ids)


def test_more_shots_than_the_pool_holds(pool, fold):
    classes = list(fold.novel)
    # the class with the fewest candidate images picks first, so it is the one named
    rarest = min(classes, key=lambda c: (len(pool.images_with(pool.category_id(c))), pool.category_id(c)))
    shots = len(pool) + 1
    with pytest.raises(UsageError, match="more than the pool holds") as info:
        sample_shots(pool, classes, shots, seed=0)
    message = str(info.value)
    assert f"shots={shots}" in message
    assert f"class '{rarest}'" in message
    assert f"in {len(pool.images_with(pool.category_id(rarest)))} images" in message


def _hand_pool(objects: dict[int, str]) -> CocoSet:
    cats = [{"id": i + 1, "name": n} for i, n in enumerate("AB")]
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in objects]
    anns = []
    for i, letters in objects.items():
        for n in letters:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": "AB".index(n) + 1, "bbox": [1, 1, 3, 3]})
    return CocoSet({"images": images, "annotations": anns, "categories": cats}, ".")


def test_images_taken_by_other_classes_do_not_count():
    pool = _hand_pool({1: "AB", 2: "A", 3: "B"})
    # A (id 1) picks first and takes images 1 and 2; B then has only image 3 left
    with pytest.raises(UsageError) as info:
        sample_shots(pool, ["A", "B"], 2, seed=0)
    assert "class 'B' is in 2 images of the adaptation pool (1 not already taken by other classes or the support set)" in str(info.value)
    task = sample_shots(pool, ["A", "B"], 1, seed=0)
    assert len(task.support) == 2


def test_rarest_class_picks_first():
    # B is in one image only; if A picked first it could take image 1 and leave B nothing
    pool = _hand_pool({1: "AB", 2: "A", 3: "A"})
    for seed in range(8):
        task = sample_shots(pool, ["A", "B"], 1, seed=seed)
        assert 1 in task.support.image_ids
        assert len(task.support) == 2


@pytest.mark.parametrize("shots", [0, -1])
def test_shots_must_be_positive(pool, fold, shots):
    with pytest.raises(UsageError, match=f"shots={shots}"):
        sample_shots(pool, list(fold.novel), shots, seed=0)


def test_unknown_class_is_a_usage_error(pool):
    with pytest.raises(UsageError, match="class 'U' is not in this dataset"):
        sample_shots(pool, ["U"], 1, seed=0)


def test_task_manifest(pool, fold):
    classes = list(fold.novel)
    task = sample_shots(pool, classes, 2, seed=7)
    assert isinstance(task, Task)
    m = task.manifest()
    assert m["kind"] == "task"
    assert m["sampler"] == "image_level"
    assert m["ways"] == 5
    assert m["shots"] == 2
    assert m["task_seed"] == 7
    assert m["classes"] == classes
    assert m["image_ids"] == task.support.image_ids
    assert m["file_names"] == [pool.image(i)["file_name"] for i in m["image_ids"]]
    assert set(m["images_per_class"]) == set(classes)
    for name, n in m["images_per_class"].items():
        cid = pool.category_id(name)
        assert n >= 2
        assert n == sum(cid in pool.image_categories(i) for i in m["image_ids"])
    assert m["boxes"] == len(task.support.coco["annotations"]) >= 10
    assert m["hash"] == task.support.content_hash()
    assert sample_shots(pool, classes, 2, seed=8).manifest()["hash"] != m["hash"]


# --- choose_classes ----------------------------------------------------------------------


def test_choose_all_classes_keeps_their_order():
    names = ["W", "B", "M"]
    assert choose_classes(names, 3, seed=0) == names
    assert choose_classes(names, 3, seed=9) == names


def test_choose_fewer_classes_is_a_seeded_ordered_subset():
    names = list("BHMRW")
    picks = {tuple(choose_classes(names, 3, seed=s)) for s in range(10)}
    for pick in picks:
        assert len(pick) == 3 and len(set(pick)) == 3
        assert set(pick) <= set(names)
        assert list(pick) == [n for n in names if n in pick]  # candidate order is kept
    assert len(picks) > 1
    assert choose_classes(names, 3, seed=4) == choose_classes(names, 3, seed=4)


def test_choose_too_many_classes():
    with pytest.raises(UsageError, match=r"ways=6 but only 5 novel classes exist \(B, H, M, R, W\)"):
        choose_classes(list("BHMRW"), 6, seed=0)
