"""Pretraining algorithms. Each is a small object with one verb, `pretrain`, usable from
Python without the CLI. Register new ones in `ALGORITHMS`; the verbs never change."""

from __future__ import annotations

from fsx.algorithms.base import Algorithm, PretrainData
from fsx.algorithms.standard import Standard
from fsx.errors import UsageError

ALGORITHMS: dict[str, type[Algorithm]] = {"standard": Standard}


def build_algorithm(name: str, **params) -> Algorithm:
    if name not in ALGORITHMS:
        raise UsageError(f"algorithm={name} is not available; choose one of {', '.join(ALGORITHMS)}")
    try:
        return ALGORITHMS[name](**params)
    except TypeError as e:
        raise UsageError(f"algorithm={name}: bad hyperparameters ({e})") from None


__all__ = ["ALGORITHMS", "Algorithm", "PretrainData", "build_algorithm"]
