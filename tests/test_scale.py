"""The data layer at scale (issue 7): `CocoSet.restrict` through the per-image index and
without copies, `content_hash` unchanged, the bounded pixel cache, and a medium synthetic
COCO-like set loaded, split and sampled. Speed itself is measured by `make bench`, not here."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fsx.data.coco import CocoSet, DetectionDataset
from fsx.data.folds import Fold, split_by_fold
from fsx.data.pixels import DEFAULT_MB, ENV_VAR, PixelCache, budget_bytes
from fsx.data.shots import choose_classes, sample_shots
from fsx.errors import UsageError

# --- the algorithms as they were before issue 7, to compare against -------------------------


def old_restrict(source: CocoSet, image_ids=None, category_ids=None) -> dict:
    keep_images = set(source.image_ids) if image_ids is None else set(image_ids)
    keep_cats = {c["id"] for c in source.categories} if category_ids is None else set(category_ids)
    order = source.image_ids if image_ids is None else list(image_ids)
    return {
        **{k: v for k, v in source.coco.items() if k not in ("images", "annotations", "categories")},
        "images": [copy.deepcopy(source.image(i)) for i in order if i in keep_images],
        "annotations": [copy.deepcopy(a) for a in source.coco["annotations"] if a["image_id"] in keep_images and a["category_id"] in keep_cats],
        "categories": [copy.deepcopy(c) for c in source.categories if c["id"] in keep_cats],
    }


def old_hash(coco: dict) -> str:
    """content_hash as it was, over the raw dict (manifests in existing MLflow stores hold it)."""
    digest = hashlib.sha256()
    for img in coco["images"]:
        digest.update(f"{img['id']}:{img['file_name']};".encode())
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                digest.update(f"{a['category_id']}:{','.join(f'{v:.2f}' for v in a['bbox'])};".encode())
    return digest.hexdigest()[:16]


def _by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        out.setdefault(a["image_id"], []).append(a)
    return out


@pytest.fixture()
def small() -> CocoSet:
    """Six images, three classes, annotations deliberately not in image order (as in COCO's
    own file), one image without boxes, an extra top-level key."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 24} for i in (10, 20, 30, 40, 50, 60)]
    boxes = [(30, 2), (10, 1), (20, 3), (10, 2), (30, 1), (50, 3), (10, 1), (20, 1), (30, 3), (50, 2)]
    annotations = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": [1.0 + k, 2.5, 3.25 + k / 3, 4.0], "area": 12.0, "iscrowd": 0}
        for k, (i, c) in enumerate(boxes)
    ]
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    return CocoSet({"info": {"year": 2017}, "images": images, "annotations": annotations, "categories": categories}, "/nowhere")


# --- restrict -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_ids, category_ids",
    [(None, None), ([10, 30, 50], None), ([50, 10, 30, 20], [1, 3]), ([60, 40], [2]), ([], [1]), (None, [3]), ([20, 20, 10], None)],
)
def test_restrict_keeps_the_old_semantics(small, image_ids, category_ids):
    new = small.restrict(image_ids, category_ids)
    old = old_restrict(small, image_ids, category_ids)
    assert new.coco["images"] == old["images"]  # the given order, duplicates and all
    assert new.image_ids == [img["id"] for img in old["images"]]
    assert new.coco["categories"] == old["categories"]  # classes not kept are dropped
    assert new.coco["info"] == old["info"]
    assert sorted(new.coco["annotations"], key=lambda a: a["id"]) == sorted(old["annotations"], key=lambda a: a["id"])
    assert _by_image(new.coco) == _by_image(old)  # and each image's boxes in the same order
    for i in set(new.image_ids):
        assert new.annotations(i) == _by_image(old).get(i, [])
        assert new.image_categories(i) == {a["category_id"] for a in _by_image(old).get(i, [])}
    for c in old["categories"]:
        assert new.images_with(c["id"]) == CocoSet(old, "/nowhere").images_with(c["id"])
    assert new.content_hash() == old_hash(old)


def test_restrict_in_source_order_gives_the_same_annotation_list(small):
    """When the annotations are listed image by image (letters, VOC, YOLO sources), the
    result's list is the old one exactly."""
    ordered = CocoSet({**small.coco, "annotations": sorted(small.coco["annotations"], key=lambda a: a["image_id"])}, "/nowhere")
    for image_ids, category_ids in ((None, None), ([10, 30, 60], [1, 2]), ([20, 50], [3])):
        assert ordered.restrict(image_ids, category_ids).coco["annotations"] == old_restrict(ordered, image_ids, category_ids)["annotations"]


def test_unknown_image_is_an_error_as_before(small):
    with pytest.raises(KeyError):
        small.restrict([10, 99])


def test_restrict_shares_dicts_but_not_lists(small):
    before = copy.deepcopy(small.coco)
    part = small.restrict([30, 10], [1, 2])
    # the same dicts, not copies
    assert part.image(30) is small.image(30)
    assert all(any(a is b for b in small.coco["annotations"]) for a in part.coco["annotations"])
    assert part.categories[0] is small.categories[0]
    # the lists are the result's own: changing them leaves the source alone
    part.coco["images"].append({"id": 99, "file_name": "x.png"})
    part.coco["annotations"].clear()
    part.coco["categories"].pop()
    part.annotations(10).clear()
    assert small.coco == before
    assert len(small.annotations(10)) == 3


def test_images_with_hands_out_a_new_list(small):
    first = small.images_with(1)
    assert first == [10, 20, 30]
    first.clear()
    assert small.images_with(1) == [10, 20, 30]
    assert small.images_with(99) == []


def test_category_lookups(small):
    assert small.category_id("dog") == 2 and small.category_name(3) == "bird"
    with pytest.raises(UsageError, match="class 'cow' is not in this dataset .*cat, dog, bird"):
        small.category_id("cow")
    part = small.restrict(category_ids=[1])
    with pytest.raises(UsageError, match="'dog'"):
        part.category_id("dog")


def test_content_hash_is_unchanged(small):
    assert small.content_hash() == old_hash(small.coco)
    for ids, cats in ((None, [1]), ([60, 50, 20], None), ([], None)):
        assert small.restrict(ids, cats).content_hash() == old_hash(old_restrict(small, ids, cats))


def test_pycocotools_gets_copies(small):
    before = copy.deepcopy(small.coco)
    gt = small.to_pycocotools()
    for ann in gt.dataset["annotations"]:
        ann["ignore"] = 1
        ann["bbox"][0] = -1.0
    for img in gt.dataset["images"]:
        img["extra"] = True
    assert small.coco == before
    assert len(gt.getAnnIds()) == 10 and gt.loadAnns(2)[0]["image_id"] == 10


# --- pixel cache ----------------------------------------------------------------------------


@pytest.fixture()
def tiny_images(tmp_path) -> CocoSet:
    """Five 4x4 RGB images (48 bytes decoded), each a single colour."""
    images = []
    for i in range(1, 6):
        Image.new("RGB", (4, 4), (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 4, "height": 4})
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2]} for i in range(1, 6)]
    return CocoSet({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}, tmp_path)


IMAGE_BYTES = 3 * 4 * 4


def test_pixel_cache_evicts_the_least_recently_used(tiny_images):
    cache = PixelCache(max_bytes=2 * IMAGE_BYTES + 10)
    data = DetectionDataset(tiny_images, [1], pixel_cache=cache)
    data.pixels(1), data.pixels(2)
    assert 1 in cache and 2 in cache and cache.nbytes == 2 * IMAGE_BYTES
    data.pixels(1)  # 1 is now the most recently used
    data.pixels(3)
    assert 1 in cache and 3 in cache and 2 not in cache
    for i in (4, 5, 2, 1):
        assert int(data.pixels(i)[0, 0, 0]) == 10 * i  # an evicted image is decoded again
        assert len(cache) <= 2 and cache.nbytes <= cache.max_bytes
    assert list(cache._items) == [2, 1]


def test_pixel_cache_keeps_nothing_larger_than_its_budget(tiny_images):
    cache = PixelCache(max_bytes=IMAGE_BYTES - 1)
    data = DetectionDataset(tiny_images, [1], pixel_cache=cache)
    image, target = data[0]
    assert image.shape == (3, 4, 4) and target["labels"].tolist() == [0]
    assert len(cache) == 0 and cache.nbytes == 0


def test_pixel_cache_shared_by_two_datasets(tiny_images):
    """Episodic pretraining shares one cache between the training set and every task's
    support set: an image decoded by one is not read from disk by the other."""
    cache = PixelCache(max_bytes=10 * IMAGE_BYTES)
    train = DetectionDataset(tiny_images, [1], pixel_cache=cache)
    support = DetectionDataset(tiny_images.restrict([3, 1]), [1], pixel_cache=cache)
    first = [train[k][0] for k in range(len(train))]
    for i in range(1, 6):
        (tiny_images.image_root / f"{i}.png").unlink()
    assert torch.equal(support[0][0], first[2]) and torch.equal(support[1][0], first[0])
    assert len(cache) == 5


def test_a_plain_dict_still_works_as_the_cache(tiny_images):
    kept: dict = {}
    data = DetectionDataset(tiny_images, [1], pixel_cache=kept)
    assert torch.equal(data[1][0], DetectionDataset(tiny_images, [1])[1][0])
    assert list(kept) == [2]


def test_pixel_cache_budget_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert budget_bytes() == DEFAULT_MB * 2**20 == PixelCache().max_bytes
    assert 2400 * 3 * 128 * 128 < budget_bytes()  # the letters benchmark fits whole
    monkeypatch.setenv(ENV_VAR, "0.5")
    assert PixelCache().max_bytes == 2**19
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(UsageError, match=ENV_VAR):
        PixelCache()


# --- a medium synthetic set -----------------------------------------------------------------


def test_medium_set_loads_splits_and_samples(tmp_path):
    """20k images and ~150k boxes over 30 classes, skewed like COCO (class 1 the most common),
    annotations in random order: the split follows the rule, and sampled tasks are valid."""
    rng = np.random.default_rng(0)
    n_images, n_classes = 20_000, 30
    counts = 1 + rng.binomial(12, 0.5, size=n_images)
    owner = np.repeat(np.arange(1, n_images + 1), counts)
    weights = 1.0 / np.arange(1, n_classes + 1)
    cats = 1 + rng.choice(n_classes, size=owner.size, p=weights / weights.sum())
    order = rng.permutation(owner.size)
    coco = {
        "images": [{"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": [1.0, 2.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0}
            for k, (i, c) in enumerate(zip(owner[order].tolist(), cats[order].tolist()))
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, n_classes + 1)],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    source = CocoSet.load(path)
    assert len(source) == n_images and len(source.coco["annotations"]) == owner.size > 140_000

    novel = tuple(f"class{c}" for c in (1, 4, 9, 16, 25))
    fold = Fold("synthetic", 1, tuple(f"class{c}" for c in range(1, n_classes + 1) if f"class{c}" not in novel), novel)
    split = split_by_fold(source, fold, seed=0)
    novel_ids = {source.category_id(n) for n in novel}
    with_novel = {i for i in source.image_ids if source.image_categories(i) & novel_ids}
    assert set(split.test_adapt.image_ids) | set(split.test_test.image_ids) == with_novel
    assert not set(split.test_adapt.image_ids) & set(split.test_test.image_ids)
    assert set(split.train.image_ids) == set(source.image_ids) - with_novel
    assert {a["category_id"] for a in split.train.coco["annotations"]}.isdisjoint(novel_ids)
    assert {a["category_id"] for a in split.test_adapt.coco["annotations"]} <= novel_ids
    kept = sum(len(s.coco["annotations"]) for s in (split.train, split.test_adapt, split.test_test))
    expected = sum(1 for a in coco["annotations"] if (a["image_id"] in with_novel) == (a["category_id"] in novel_ids))
    assert kept == expected

    pool = split.test_adapt
    for seed in range(5):
        names = choose_classes(list(novel), 3, seed)
        task = sample_shots(pool, names, 5, seed)
        ids = task.support.image_ids
        assert len(ids) == 15 == len(set(ids)) and set(ids) <= set(pool.image_ids)
        for name in names:
            assert sum(pool.category_id(name) in task.support.image_categories(i) for i in ids) >= 5
        assert {a["category_id"] for a in task.support.coco["annotations"]} <= set(task.class_ids)
        assert task.support.content_hash() == old_hash(old_restrict(pool, ids, task.class_ids))
        assert task.manifest()["images_per_class"] == sample_shots(pool, names, 5, seed).manifest()["images_per_class"]
