"""Decoded images kept in memory within a budget, so that a dataset read again (every epoch,
every sampled task of episodic pretraining) is not decoded again, and COCO's 118k images do
not all end up in RAM.

The budget is 2048 MB per cache unless the environment variable `FSX_PIXEL_CACHE_MB` says
otherwise (0 keeps nothing). The letters benchmark (2400 images of 128x128, 118 MB) fits
whole; a COCO image of 640x480 is 0.9 MB, so the default keeps about 2200 of them.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

from fsx.errors import UsageError

DEFAULT_MB = 2048
ENV_VAR = "FSX_PIXEL_CACHE_MB"


def budget_bytes() -> int:
    """The budget of a cache made without one: $FSX_PIXEL_CACHE_MB, else 2048 MB."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return DEFAULT_MB * 2**20
    try:
        mb = float(value)
    except ValueError:
        raise UsageError(f"{ENV_VAR}={value!r} should be a number of megabytes") from None
    if mb < 0:
        raise UsageError(f"{ENV_VAR}={value!r} should not be negative")
    return int(mb * 2**20)


class PixelCache:
    """image id -> decoded uint8 tensor, evicting the least recently used images once their
    bytes pass `max_bytes`. An image larger than the whole budget is not kept.

    It answers `get(image_id)` (None when absent, and marks it recently used) and
    `cache[image_id] = tensor`, the same calls as a dict, so a plain dict still works where a
    caller wants every image kept."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = budget_bytes() if max_bytes is None else int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, image_id: int, default=None):
        pixels = self._items.get(image_id)
        if pixels is None:
            return default
        self._items.move_to_end(image_id)
        return pixels

    def __setitem__(self, image_id: int, pixels: torch.Tensor) -> None:
        size = _size(pixels)
        if image_id in self._items:
            self.nbytes -= _size(self._items.pop(image_id))
        if size > self.max_bytes:
            return
        while self._items and self.nbytes + size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= _size(old)
        self._items[image_id] = pixels
        self.nbytes += size

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"PixelCache({len(self)} images, {self.nbytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MB)"


def _size(pixels: torch.Tensor) -> int:
    return pixels.numel() * pixels.element_size()
