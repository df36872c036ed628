"""Base/novel folds and the thesis's image-assignment rule."""

from __future__ import annotations

from itertools import combinations

import pytest

from fsx.data.coco import CocoSet
from fsx.data.folds import LETTERS_FOLDS, letters_fold, split_by_fold
from fsx.data.letters import LETTERS
from fsx.errors import UsageError


@pytest.fixture(scope="module")
def source(letters_source) -> CocoSet:
    return CocoSet.load(letters_source / "annotations.json", letters_source)


@pytest.fixture(scope="module", params=sorted(LETTERS_FOLDS))
def fold_index(request) -> int:
    return request.param


# --- folds -------------------------------------------------------------------------------


def test_novel_sets_are_disjoint_fives():
    assert len(LETTERS_FOLDS) >= 4
    for novel in LETTERS_FOLDS.values():
        assert len(novel) == 5
        assert len(set(novel)) == 5
        assert set(novel) <= set(LETTERS)
    for a, b in combinations(LETTERS_FOLDS.values(), 2):
        assert not set(a) & set(b), (a, b)


def test_fold_partitions_the_alphabet(fold_index):
    fold = letters_fold(fold_index)
    assert fold.dataset == "letters" and fold.index == fold_index
    assert set(fold.base) | set(fold.novel) == set(LETTERS)
    assert not set(fold.base) & set(fold.novel)
    assert len(fold.base) == 21 and len(fold.novel) == 5
    assert "".join(fold.novel) == LETTERS_FOLDS[fold_index]
    assert list(fold.base) == sorted(fold.base)  # alphabetical label order


@pytest.mark.parametrize("bad", [0, 6, 99, -1])
def test_unknown_fold_is_a_usage_error(bad):
    with pytest.raises(UsageError, match=f"dataset.fold={bad}") as info:
        letters_fold(bad)
    for i in LETTERS_FOLDS:
        assert str(i) in str(info.value)


# --- split rule --------------------------------------------------------------------------


def _cats(coco_set: CocoSet) -> set[int]:
    return {a["category_id"] for a in coco_set.coco["annotations"]}


def test_split_follows_the_rule(source, fold_index):
    fold = letters_fold(fold_index)
    split = split_by_fold(source, fold, seed=0)
    novel = {source.category_id(c) for c in fold.novel}
    base = {source.category_id(c) for c in fold.base}

    # annotations: train keeps base boxes only, test keeps novel boxes only
    assert _cats(split.train) <= base
    assert _cats(split.test_adapt) <= novel
    assert _cats(split.test_test) <= novel
    assert _cats(split.test_adapt) == novel  # 200 images: every novel letter shows up
    assert {c["id"] for c in split.train.categories} == base
    assert {c["id"] for c in split.test_adapt.categories} == novel

    train_ids, adapt_ids, test_ids = split.train.image_ids, split.test_adapt.image_ids, split.test_test.image_ids
    # images: train iff no novel object in the source
    for i in train_ids:
        assert not source.image_categories(i) & novel
    for i in adapt_ids + test_ids:
        assert source.image_categories(i) & novel
    assert not set(adapt_ids) & set(test_ids)
    assert not set(train_ids) & (set(adapt_ids) | set(test_ids))
    assert abs(len(adapt_ids) - len(test_ids)) <= 1
    assert len(adapt_ids) >= len(test_ids)
    assert sorted(train_ids + adapt_ids + test_ids) == sorted(source.image_ids)
    expected_test = {i for i in source.image_ids if source.image_categories(i) & novel}
    assert set(adapt_ids) | set(test_ids) == expected_test
    assert 0 < len(expected_test) < len(source)

    # no box of a kept class is dropped
    for i in train_ids:
        assert len(split.train.annotations(i)) == sum(a["category_id"] in base for a in source.annotations(i))
    for part in (split.test_adapt, split.test_test):
        for i in part.image_ids:
            assert len(part.annotations(i)) == sum(a["category_id"] in novel for a in source.annotations(i))


def test_split_is_seeded(source):
    fold = letters_fold(1)
    a = split_by_fold(source, fold, seed=0)
    b = split_by_fold(source, fold, seed=0)
    c = split_by_fold(source, fold, seed=1)
    assert a.test_adapt.image_ids == b.test_adapt.image_ids
    assert a.test_test.image_ids == b.test_test.image_ids
    assert a.manifest() == b.manifest()
    assert a.test_adapt.image_ids != c.test_adapt.image_ids
    assert set(a.test_adapt.image_ids) | set(a.test_test.image_ids) == set(c.test_adapt.image_ids) | set(c.test_test.image_ids)
    assert a.train.image_ids == c.train.image_ids  # the seed only splits test


def test_split_does_not_touch_the_source(source):
    before = source.content_hash(), len(source.coco["annotations"])
    split_by_fold(source, letters_fold(2), seed=5)
    assert (source.content_hash(), len(source.coco["annotations"])) == before


def test_split_manifest(source):
    fold = letters_fold(3)
    split = split_by_fold(source, fold, seed=4)
    m = split.manifest()
    assert m["kind"] == "split" and m["dataset"] == "letters" and m["fold"] == 3
    assert m["novel_classes"] == list("CJNSX")
    assert m["base_classes"] == list(fold.base)
    assert m["split_seed"] == 4
    assert m["train"]["images"] == len(split.train)
    assert m["test_adapt"]["image_ids"] == split.test_adapt.image_ids
    assert m["test_test"]["image_ids"] == split.test_test.image_ids
    assert m["test_adapt"]["hash"] != m["test_test"]["hash"]
