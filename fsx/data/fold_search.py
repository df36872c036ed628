"""The Reptile thesis's fold optimiser (PROTOCOLS 2.6): partition a dataset's classes into
F disjoint test sets so that the image-assignment rule (PROTOCOLS 2.5) takes as few of
each class's images away from training as it can.

With h[j, c] = "image j holds class c" and t_i[j] = "image j holds a class of fold i's test
set" (so image j goes to test in fold i), the objective is

    sum_i sum_c ( |{j : h[j, c] and t_i[j]}| / |{j : h[j, c]}| )**2

the squared share of class c's images lost to test in fold i. Normalising by the class's
image count stops common classes from dominating; squaring favours rare classes. The sum
runs over all classes, as PROTOCOLS 2.6 writes it: for a class in fold i's own test set the
share is 1 whatever the partition, so those terms add the constant C (the number of classes
with at least one image) and change nothing about which partition is best. A class with no
image loses nothing and adds 0.

The thesis solved it with simulated annealing (an integer program was too large); so do we,
in numpy, with the objective updated incrementally: a swap changes two folds' test masks,
and only on the images holding one of the two swapped classes.

Needs numpy only: the presence matrix comes from `presence_matrix` (any `CocoSet`) or from
the caller.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from fsx.errors import UsageError

ITERATIONS = 10_000  # PROTOCOLS 2.6: at least 10,000 moves ...
PATIENCE = 5_000  # ... and stop after 5,000 without improving the best partition
INITIAL_ACCEPTANCE = 0.5  # a typical uphill move from the start is accepted with this probability
FINAL_TEMPERATURE_RATIO = 1e-3  # the temperature after `iterations` moves, relative to the initial one
PROBE_MOVES = 100  # random moves from the start whose deltas set the initial temperature


@dataclasses.dataclass(frozen=True)
class FoldSearch:
    """The best partition found, as class names (folds ordered by their first class in the
    dataset's class order, classes in that order within a fold)."""

    classes: list[str]
    folds: list[list[str]]
    objective: float
    start_objective: float  # the seeded random partition the search started from
    lost: np.ndarray  # (folds, classes): share of class c's images that go to test in fold i
    iterations: int  # moves tried
    best_iteration: int  # the move that reached the best partition (0: the start)
    initial_temperature: float

    @property
    def constant(self) -> float:
        """The part of the objective no partition changes: each class's own test fold (share 1)."""
        return float(sum(self.lost[i, self.classes.index(c)] for i, fold in enumerate(self.folds) for c in fold))

    def worst_kept(self, fold: int) -> tuple[str | None, float]:
        """The training class of `fold` (0-based) that loses the largest share of its images to test."""
        own = set(self.folds[fold])
        shares = [(self.lost[fold, k], c) for k, c in enumerate(self.classes) if c not in own]
        if not shares:
            return None, 0.0
        share, name = max(shares, key=lambda s: s[0])
        return name, float(share)


def presence_matrix(source) -> tuple[np.ndarray, list[str]]:
    """(h, class names): h[j, c] is True when image j of a `CocoSet` holds a box of class c
    (categories in the set's order)."""
    names = [c["name"] for c in source.categories]
    column = {c["id"]: k for k, c in enumerate(source.categories)}
    h = np.zeros((len(source), len(names)), dtype=bool)
    for j, image_id in enumerate(source.image_ids):
        for category in source.image_categories(image_id):
            h[j, column[category]] = True
    return h, names


def fold_sizes(classes: int, folds: int) -> list[int]:
    """C/F classes per fold; when F does not divide C the first C mod F folds take one more."""
    return [classes // folds + (1 if i < classes % folds else 0) for i in range(folds)]


def random_partition(classes: int, folds: int, rng: np.random.Generator) -> list[list[int]]:
    """A uniformly random partition of class indices into folds of `fold_sizes`."""
    order = rng.permutation(classes).tolist()
    groups, start = [], 0
    for size in fold_sizes(classes, folds):
        groups.append(sorted(order[start : start + size]))
        start += size
    return groups


def lost_shares(presence: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(folds, classes): the share of each class's images that go to test in each fold."""
    h = np.asarray(presence, dtype=bool)
    counts = h.sum(axis=0).astype(float)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    masks = np.stack([h[:, list(g)].any(axis=1) for g in groups]).astype(float)
    return (masks @ h.astype(float)) * inverse


def objective(presence: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """PROTOCOLS 2.6's objective of a partition (lists of class indices), from scratch."""
    return float((lost_shares(presence, groups) ** 2).sum())


def search_folds(
    presence: np.ndarray,
    classes: Sequence[str],
    folds: int = 4,
    seed: int = 0,
    iterations: int = ITERATIONS,
    patience: int = PATIENCE,
    on_move: Callable[[int, float], None] | None = None,
) -> FoldSearch:
    """Simulated annealing over partitions of the classes into `folds` folds of equal size
    (sizes differ by at most one when `folds` does not divide the class count).

    Starts from a random partition drawn with `seed`; a move swaps one class between two
    folds (so sizes never change) and is accepted if it does not raise the objective, or
    else with probability exp(-delta / T). The temperature decays exponentially,
    T_k = T0 * FINAL_TEMPERATURE_RATIO ** (k / iterations), from T0 = the mean uphill delta
    of PROBE_MOVES random moves from the start (their mean size when none goes uphill)
    divided by ln(1 / INITIAL_ACCEPTANCE), so a typical uphill move is first accepted half the
    time and almost never by the end.

    Runs at least `iterations` moves, then goes on until `patience` moves in a row have not
    improved the best partition; so it stops after max(iterations, best move + patience)
    moves (the best strictly improves each time, over finitely many partitions: it ends).
    Deterministic given the seed. `on_move(k, best objective)` is called after every move.
    """
    h = np.asarray(presence, dtype=bool)
    if h.ndim != 2 or h.shape[1] != len(classes):
        raise ValueError(f"presence is {h.shape}, expected (images, {len(classes)})")
    n_classes = len(classes)
    if not 2 <= folds <= n_classes:
        raise UsageError(f"folds={folds}: choose between 2 and the number of classes ({n_classes}: {', '.join(classes)})")
    if iterations < 0 or patience < 1:
        raise UsageError(f"iterations={iterations}, patience={patience}: need iterations >= 0 and patience >= 1")
    h = h[h.any(axis=1)]  # an image without any class goes to train in every fold
    columns = np.ascontiguousarray(h.T)  # (classes, images): one class's images, contiguous
    # each image's classes, CSR-style: a move touches only the images whose test mask flips
    per_image = h.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(per_image)])
    held = np.nonzero(h)[1]
    counts = h.sum(axis=0).astype(float)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)

    rng = np.random.default_rng(seed)
    groups = random_partition(n_classes, folds, rng)
    fold_of = np.empty(n_classes, dtype=int)
    for i, g in enumerate(groups):
        fold_of[g] = i
    # per fold and image: how many of the fold's test classes the image holds (> 0: test)
    inside = np.stack([columns[g].sum(axis=0) for g in groups]).astype(np.int32)
    lost = (inside > 0).astype(float) @ h.astype(float)  # (folds, classes): images lost, not yet shares
    terms = ((lost * inverse) ** 2).sum(axis=1)
    current = start = float(terms.sum())

    def propose() -> tuple[int, int, int, int]:
        p = int(rng.integers(folds))
        q = (p + 1 + int(rng.integers(folds - 1))) % folds
        members = np.flatnonzero(fold_of == p), np.flatnonzero(fold_of == q)
        return int(p), int(q), int(members[0][rng.integers(len(members[0]))]), int(members[1][rng.integers(len(members[1]))])

    def evaluate(p: int, q: int, a: int, b: int):
        """The two folds' new counts, lost images and objective terms if a (in p) and b (in q) swap."""
        touched = np.flatnonzero(columns[a] | columns[b])
        change = columns[b, touched].astype(np.int32) - columns[a, touched]
        new_p, new_q = inside[p, touched] + change, inside[q, touched] - change
        flip_p = (new_p > 0).astype(np.int8) - (inside[p, touched] > 0)
        flip_q = (new_q > 0).astype(np.int8) - (inside[q, touched] > 0)
        moved = np.flatnonzero(flip_p | flip_q)
        first, count = starts[touched[moved]], per_image[touched[moved]]
        at = np.repeat(first - np.cumsum(count) + count, count) + np.arange(count.sum())  # their classes' positions in `held`
        new_lost = lost[[p, q]] + np.stack([np.bincount(held[at], weights=np.repeat(f[moved], count), minlength=n_classes) for f in (flip_p, flip_q)])
        new_terms = ((new_lost * inverse) ** 2).sum(axis=1)
        return touched, new_p, new_q, new_lost, new_terms, float(new_terms.sum() - terms[p] - terms[q])

    probes = np.array([evaluate(*propose())[-1] for _ in range(PROBE_MOVES)])
    uphill = probes[probes > 1e-12]
    if not len(uphill):  # a start every probed move improves on: their size instead
        uphill = np.abs(probes[np.abs(probes) > 1e-12])
    t0 = (float(uphill.mean()) if len(uphill) else 1e-6 * max(start, 1.0)) / math.log(1 / INITIAL_ACCEPTANCE)
    decay = FINAL_TEMPERATURE_RATIO ** (1 / max(iterations, 1))

    best, best_fold_of, best_move, k = current, fold_of.copy(), 0, 0
    while k < iterations or k - best_move < patience:
        k += 1
        p, q, a, b = propose()
        touched, new_p, new_q, new_lost, new_terms, delta = evaluate(p, q, a, b)
        temperature = t0 * decay**k
        if delta <= 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):  # T underflows in very long runs
            inside[p, touched], inside[q, touched] = new_p, new_q
            lost[[p, q]] = new_lost
            terms[[p, q]] = new_terms
            fold_of[a], fold_of[b] = q, p
            current += delta
            if current < best - 1e-9:
                best, best_fold_of, best_move = current, fold_of.copy(), k
        if on_move is not None:
            on_move(k, best)

    best_groups = sorted((sorted(np.flatnonzero(best_fold_of == i).tolist()) for i in range(folds)), key=lambda g: g[0])
    shares = lost_shares(h, best_groups)
    return FoldSearch(
        classes=list(classes),
        folds=[[classes[c] for c in g] for g in best_groups],
        objective=float((shares**2).sum()),  # from scratch: no drift from the running sum
        start_objective=start,
        lost=shares,
        iterations=k,
        best_iteration=best_move,
        initial_temperature=t0,
    )
