"""Fixtures the unit tests share: one small letters set per session, one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fsx.data.letters import LettersSpec, letters_cache
from fsx.engine.device import flush_denormals

flush_denormals()  # as the CLI does at process start
if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs two test processes: one thread each
    torch.set_num_threads(1)

SMALL_LETTERS = LettersSpec(num_images=200)


@pytest.fixture(scope="session")
def letters_source(tmp_path_factory) -> Path:
    """The 200-image letters set, generated once per session into a shared cache root."""
    return letters_cache(SMALL_LETTERS, tmp_path_factory.getbasetemp() / "letters-cache", show_progress=False)


@pytest.fixture(scope="module")
def letters_data(letters_source):
    """Letters fold 1's base-class training data, as pretraining gets it (PretrainData)."""
    from fsx.algorithms import PretrainData
    from fsx.data.coco import CocoSet, DetectionDataset
    from fsx.data.folds import letters_fold, split_by_fold

    source = CocoSet.load(letters_source / "annotations.json", letters_source)
    split = split_by_fold(source, letters_fold(1), 0)
    names = list(split.fold.base)
    ids = [split.train.category_id(n) for n in names]
    return PretrainData(split.train, ids, names, DetectionDataset(split.train, ids))


@pytest.fixture()
def one_thread():
    """On a loaded 2-core machine intra-op threads spin against each other; one is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
