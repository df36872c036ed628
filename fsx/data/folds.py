"""Base/novel class partitions and the image-assignment rule of the Reptile thesis (PROTOCOLS 2.5).

An image goes to *test* if it holds any novel-class object, else to *train*; train keeps only
base annotations, test only novel ones; test is split 50/50 into test-adapt (where support
sets are sampled) and test-test (always scored in full), with a seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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


@dataclasses.dataclass
class Split:
    fold: Fold
    seed: int
    train: CocoSet
    test_adapt: CocoSet
    test_test: CocoSet

    def manifest(self) -> dict:
        return {
            "kind": "split",
            "dataset": self.fold.dataset,
            "fold": self.fold.index,
            "base_classes": list(self.fold.base),
            "novel_classes": list(self.fold.novel),
            "split_seed": self.seed,
            "rule": "test iff the image holds a novel object; train keeps base boxes, test novel boxes; test 50/50",
            "train": {"images": len(self.train), "hash": self.train.content_hash()},
            "test_adapt": {"image_ids": self.test_adapt.image_ids, "hash": self.test_adapt.content_hash()},
            "test_test": {"image_ids": self.test_test.image_ids, "hash": self.test_test.content_hash()},
        }


def split_by_fold(source: CocoSet, fold: Fold, seed: int) -> Split:
    base_ids = [source.category_id(c) for c in fold.base]
    novel_ids = [source.category_id(c) for c in fold.novel]
    novel = set(novel_ids)
    test_ids = [i for i in source.image_ids if source.image_categories(i) & novel]
    test_set = set(test_ids)
    train_ids = [i for i in source.image_ids if i not in test_set]
    order = np.random.default_rng(seed).permutation(len(test_ids))
    half = (len(test_ids) + 1) // 2
    adapt_ids = sorted(test_ids[i] for i in order[:half])
    test_test_ids = sorted(test_ids[i] for i in order[half:])
    return Split(
        fold=fold,
        seed=seed,
        train=source.restrict(train_ids, base_ids),
        test_adapt=source.restrict(adapt_ids, novel_ids),
        test_test=source.restrict(test_test_ids, novel_ids),
    )


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
