"""Base/novel class partitions and the image-assignment rule of the Reptile thesis (PROTOCOLS 2.5).

An image goes to *test* if it holds any novel-class object, else to *train*; train keeps only
base annotations, test only novel ones; test is split 50/50 into test-adapt (where support
sets are sampled) and test-test (always scored in full), with a seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fsx.data.classes import same_class_names
from fsx.data.coco import CocoSet
from fsx.errors import UsageError

# Five disjoint novel sets of five letters; U is always a base letter. Fold 1 is the
# prototype's partition (FINDINGS.md).
LETTERS_FOLDS: dict[int, str] = {1: "BHMRW", 2: "AFKPV", 3: "CJNSX", 4: "DGLTY", 5: "EIOQZ"}


@dataclasses.dataclass(frozen=True)
class Fold:
    dataset: str
    index: int
    base: tuple[str, ...]
    novel: tuple[str, ...]


def letters_fold(index: int) -> Fold:
    from fsx.data.letters import LETTERS

    if index not in LETTERS_FOLDS:
        raise UsageError(
            f"dataset.fold={index} is not a letters fold: choose one of {', '.join(map(str, LETTERS_FOLDS))}"
        )
    novel = tuple(LETTERS_FOLDS[index])
    return Fold("letters", index, tuple(c for c in LETTERS if c not in novel), novel)


RT_RULE = "test iff the image holds a novel object; train keeps base boxes, test novel boxes; test 50/50"


@dataclasses.dataclass
class Split:
    fold: Fold
    seed: int | None  # the 50/50 split's seed; None where the protocol splits by fixed lists
    train: CocoSet
    test_adapt: CocoSet
    test_test: CocoSet
    rule: str = RT_RULE

    def manifest(self) -> dict:
        return {
            "kind": "split",
            "dataset": self.fold.dataset,
            "fold": self.fold.index,
            "base_classes": list(self.fold.base),
            "novel_classes": list(self.fold.novel),
            "split_seed": self.seed,
            "rule": self.rule,
            "train": {"images": len(self.train), "hash": self.train.content_hash()},
            "test_adapt": {"image_ids": self.test_adapt.image_ids, "hash": self.test_adapt.content_hash()},
            "test_test": {"image_ids": self.test_test.image_ids, "hash": self.test_test.content_hash()},
        }


def split_by_fold(source: CocoSet, fold: Fold, seed: int) -> Split:
    """The Reptile thesis's rule (PROTOCOLS 2.5) on one pooled source."""
    base_ids = [source.category_id(c) for c in fold.base]
    novel_ids = [source.category_id(c) for c in fold.novel]
    novel = set(novel_ids)
    test_ids = [i for i in source.image_ids if source.image_categories(i) & novel]
    test_set = set(test_ids)
    train_ids = [i for i in source.image_ids if i not in test_set]
    adapt_ids, test_test_ids = halves(test_ids, seed)
    split = Split(
        fold=fold,
        seed=seed,
        train=source.restrict(train_ids, base_ids),
        test_adapt=source.restrict(adapt_ids, novel_ids),
        test_test=source.restrict(test_test_ids, novel_ids),
    )
    return checked(split, source, novel)


def halves(image_ids: list[int], seed: int) -> tuple[list[int], list[int]]:
    """A seeded 50/50 split (the first half gets the odd one), each half in id order."""
    order = np.random.default_rng(seed).permutation(len(image_ids))
    half = (len(image_ids) + 1) // 2
    return sorted(image_ids[i] for i in order[:half]), sorted(image_ids[i] for i in order[half:])


def split_across(train_source: CocoSet, train_ids: list[int], test_source: CocoSet, fold: Fold, seed: int, rule: str) -> Split:
    """Base training on one dataset, novel classes from another (FS-COCO2VOC): `train_ids`
    of `train_source` keep their base boxes; all of `test_source` is split 50/50."""
    base_ids = [train_source.category_id(c) for c in fold.base]
    novel_ids = [test_source.category_id(c) for c in fold.novel]
    test_ids = [i for i in test_source.image_ids if test_source.image_categories(i) & set(novel_ids)]
    adapt_ids, test_test_ids = halves(test_ids, seed)
    split = Split(fold, seed, train_source.restrict(train_ids, base_ids), test_source.restrict(adapt_ids, novel_ids), test_source.restrict(test_test_ids, novel_ids), rule)
    novel_names = set().union(*(same_class_names(c) for c in fold.novel))
    return checked(split, train_source, {c["id"] for c in train_source.categories if c["name"] in novel_names})


def split_generalized(train_source: CocoSet, test_source: CocoSet, fold: Fold) -> Split:
    """TFA's protocol (PROTOCOLS 2.1, 2.10): base training on the train source's images with
    only base boxes (novel objects stay as unannotated background; images left with no box
    are dropped); K-shot sets are sampled from the whole train source, all classes kept; the
    official test set, all classes, is scored."""
    base_ids = [train_source.category_id(c) for c in fold.base]
    all_ids = base_ids + [train_source.category_id(c) for c in fold.novel]
    kept = [i for i in train_source.image_ids if train_source.image_categories(i) & set(base_ids)]
    test_ids = [test_source.category_id(c) for c in fold.base + fold.novel]
    rule = "train: the train source's base boxes (images without one dropped); shots: sampled from the train source, all classes; test: the official test set, all classes"
    split = Split(fold, None, train_source.restrict(kept, base_ids), train_source.restrict(None, all_ids), test_source.restrict(None, test_ids), rule)
    return checked(split, train_source, {train_source.category_id(c) for c in fold.novel})


def split_own(source: CocoSet, fold: Fold) -> Split:
    """Every class novel (cross-dataset adaptation): shots come from the dataset's own
    training split and scoring uses its test split (valid when it has none), as the readers
    marked them (an image's "split"). A dataset without marked splits is halved by the
    50/50 rule instead, with the split seed."""
    novel_ids = [source.category_id(c) for c in fold.novel]
    by_split: dict[str, list[int]] = {}
    for i in source.image_ids:
        by_split.setdefault(str(source.image(i).get("split", "")), []).append(i)
    scored = next((s for s in ("test", "valid", "val") if by_split.get(s)), None)
    if scored is None or not by_split.get("train"):
        return split_by_fold(source, fold, 0)
    rule = f"every class novel: shots from the dataset's train split, scored on its {scored} split"
    return Split(fold, None, source.restrict([]), source.restrict(by_split["train"], novel_ids), source.restrict(by_split[scored], novel_ids), rule)


def checked(split: Split, source: CocoSet, novel_ids: set[int]) -> Split:
    """Leakage guard, asserted rather than assumed: base training holds no novel box, and
    (under the thesis's rule) no image of the source where a novel object appears."""
    train_categories = {a["category_id"] for i in split.train.image_ids for a in split.train.annotations(i)}
    novel_names = {source.category_name(c) for c in novel_ids} & {source.category_name(c) for c in train_categories}
    if novel_names:
        raise AssertionError(f"base training would see novel boxes ({', '.join(sorted(novel_names))}): a bug in the split")
    if split.rule == RT_RULE:
        leaked = [i for i in split.train.image_ids if source.image_categories(i) & novel_ids]
        if leaked:
            raise AssertionError(f"{len(leaked)} training images show novel objects under the thesis's rule: a bug in the split")
    return split


def validation_split(split: Split, val_images: int, seed: int) -> Split:
    """Tasks for tuning that never touch the novel classes: the base-class images pretraining
    held out (`hold_out(split.train, val_images, seed)`, the same ones), halved into a shot
    pool and a scored set, with the base classes as the tasks' classes."""
    _, held = hold_out(split.train, val_images, seed)
    if not len(held):
        raise UsageError(
            f"eval.tasks=validation draws tasks from the base-class images pretraining held out, and this checkpoint's pretraining "
            f"held out none (train.val_images={val_images} on {len(split.train)} training images): pretrain with train.val_images > 0"
        )
    adapt_ids, test_ids = halves(held.image_ids, seed)
    fold = Fold(split.fold.dataset, split.fold.index, (), split.fold.base)
    return Split(fold, seed, held.restrict([]), held.restrict(adapt_ids), held.restrict(test_ids), rule=f"validation: the {len(held)} held-out base-class images of pretraining, 50/50")


def hold_out(source: CocoSet, count: int, seed: int) -> tuple[CocoSet, CocoSet]:
    """(the rest, up to `count` randomly chosen images): a base-class validation set carved
    from the training split, so that pretraining can report base AP on images it never saw.
    It takes at most a fifth of the split, so a small dataset keeps most of its images."""
    ids = source.image_ids
    count = min(count, len(ids) // 5)
    if count <= 0:
        return source, source.restrict([])
    held = set(np.random.default_rng(seed).choice(len(ids), size=count, replace=False).tolist())
    return source.restrict([i for k, i in enumerate(ids) if k not in held]), source.restrict([i for k, i in enumerate(ids) if k in held])
