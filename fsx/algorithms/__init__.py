"""Pretraining algorithms. Each is a small object with one verb, `pretrain`, usable from
Python without the CLI:

    from fsx.algorithms import build_algorithm
    reptile = build_algorithm("reptile", inner_steps=5, inner_lr=1e-3)
    reptile.pretrain(model, data, steps=100, device=torch.device("cpu"), seed=0)

`joint` is Reptile with one inner step; `fomaml`, `metasgd` and `anil` are presets of the
MAML implementation (conf/algorithm/*.yaml hold their defaults)."""

from __future__ import annotations

from fsx.algorithms.base import Algorithm, PretrainData
from fsx.algorithms.maml import MAML
from fsx.algorithms.reptile import Reptile
from fsx.algorithms.standard import Standard
from fsx.algorithms.tfa import TFA
from fsx.errors import UsageError

ALGORITHMS: dict[str, type[Algorithm]] = {
    "standard": Standard,
    "reptile": Reptile,
    "joint": Reptile,
    "maml": MAML,
    "fomaml": MAML,
    "metasgd": MAML,
    "anil": MAML,
    "tfa": TFA,
}


def build_algorithm(name: str, **params) -> Algorithm:
    if name not in ALGORITHMS:
        raise UsageError(f"algorithm={name} is not available; choose one of {', '.join(ALGORITHMS)}")
    try:
        return ALGORITHMS[name](name=name, **params)
    except TypeError as e:
        raise UsageError(f"algorithm={name}: bad hyperparameters ({e}); conf/algorithm/{name}.yaml lists its keys (a key another algorithm has, set by an experiment config, goes with ~algorithm.<key>)") from None


__all__ = ["ALGORITHMS", "Algorithm", "PretrainData", "build_algorithm"]
