"""Box-aware augmentation on (image float CHW, target) pairs, and task-level rotation.

Each transform draws from its own `torch.Generator` when given one, so a seeded run
augments the same way twice.
"""

from __future__ import annotations

import torch


class Compose:
    def __init__(self, transforms, generator: torch.Generator | None = None, seed: int | None = None):
        self.transforms = list(transforms)
        self.generator = generator  # the random state all the parts draw from
        self.seed = seed

    def reseed(self, draw: int) -> None:
        """Set the random state for the stream's item number `draw` (a function of the seed and
        the draw alone, so an item augments the same in any process and after a resume)."""
        if self.generator is not None:
            self.generator.manual_seed((int(self.seed or 0) * 1_000_003 + int(draw)) % (2**63))

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """Mirror image and boxes. Off for letters: a mirrored letter is not the same letter."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, image, target):
        if torch.rand((), generator=self.generator) >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes}


class PhotometricJitter:
    """Random brightness and contrast factors in [1 - s, 1 + s]; boxes unchanged."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, generator: torch.Generator | None = None):
        self.brightness, self.contrast, self.generator = brightness, contrast, generator

    def _factor(self, strength: float) -> float:
        return float(1 + (torch.rand((), generator=self.generator) * 2 - 1) * strength)

    def __call__(self, image, target):
        mean = image.mean()
        image = (image - mean) * self._factor(self.contrast) + mean
        image = image * self._factor(self.brightness)
        return image.clamp_(0, 1), target


def rotate90(image: torch.Tensor, target: dict, k: int) -> tuple[torch.Tensor, dict]:
    """Rotate image and boxes by k * 90 degrees counter-clockwise (task augmentation, PROTOCOLS 4.3)."""
    k %= 4
    if k == 0:
        return image, target
    boxes = target["boxes"]
    for _ in range(k):
        h, w = image.shape[-2:]
        image = image.rot90(1, dims=(-2, -1))
        # (x, y) -> (y, w - x) for a counter-clockwise quarter turn
        x0, y0, x1, y1 = boxes.unbind(-1)
        boxes = torch.stack([y0, w - x1, y1, w - x0], dim=-1)
    return image, {**target, "boxes": boxes}


class Rotate90:
    """The same rotation for every image of a task."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, image, target):
        return rotate90(image, target, self.k)


def build_transform(hflip: float = 0.0, brightness: float = 0.0, contrast: float = 0.0, seed: int | None = None):
    """The training augmentation a dataset config asks for (None when it asks for none)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    parts = []
    if hflip > 0:
        parts.append(RandomHorizontalFlip(hflip, generator))
    if brightness > 0 or contrast > 0:
        parts.append(PhotometricJitter(brightness, contrast, generator))
    return Compose(parts, generator, seed) if parts else None
