"""Box-aware augmentation: flips and quarter turns keep boxes on their objects."""

from __future__ import annotations

import pytest
import torch

from fsx.data.transforms import Compose, PhotometricJitter, RandomHorizontalFlip, Rotate90, build_transform, rotate90


def drawn(h: int, w: int, rects: list[tuple[int, int, int, int]]):
    """A 3 x h x w zero image with filled rectangles (x0, y0, x1, y1; x1/y1 exclusive) and their boxes."""
    image = torch.zeros(3, h, w)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        image[:, y0:y1, x0:x1] = i + 1
    target = {"boxes": torch.tensor(rects, dtype=torch.float32), "labels": torch.arange(len(rects)), "image_id": 7}
    return image, target


def ink_box(image: torch.Tensor, value: float | None = None) -> list[float]:
    """The box (x0, y0, x1 exclusive, y1 exclusive) of the nonzero (or == value) pixels."""
    plane = image[0]
    mask = plane != 0 if value is None else plane == value
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


RECTS = [(3, 5, 11, 9), (20, 2, 24, 17)]


def test_hflip_mirrors_boxes():
    image, target = drawn(20, 30, RECTS)
    out, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert out.shape == image.shape
    assert torch.equal(out, image.flip(-1))
    for i, box in enumerate(t["boxes"].tolist()):
        assert box == ink_box(out, i + 1)
    assert t["boxes"].tolist() == [[19.0, 5.0, 27.0, 9.0], [6.0, 2.0, 10.0, 17.0]]
    assert torch.equal(t["labels"], target["labels"]) and t["image_id"] == 7
    assert target["boxes"].tolist() == [list(map(float, r)) for r in RECTS]  # the input is not modified


def test_hflip_probability_zero_is_identity():
    image, target = drawn(20, 30, RECTS)
    out, t = RandomHorizontalFlip(p=0.0)(image, target)
    assert out is image and t is target


def test_hflip_is_seeded():
    image, target = drawn(20, 30, RECTS)

    def flips(seed):
        flip = RandomHorizontalFlip(0.5, torch.Generator().manual_seed(seed))
        return [bool(flip(image, target)[1]["boxes"][0, 0] != 3) for _ in range(20)]

    assert flips(1) == flips(1)
    assert 0 < sum(flips(1)) < 20


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (24, 24)])
def test_rotate90_keeps_drawn_rectangles_in_their_boxes(k, shape):
    h, w = shape
    rects = [(3, 5, 11, 9), (12, 10, 17, 19)]
    image, target = drawn(h, w, rects)
    out, t = rotate90(image, target, k)
    assert out.shape[-2:] == ((w, h) if k % 2 else (h, w))
    assert torch.equal(out, torch.rot90(image, k, dims=(-2, -1)))
    for i, box in enumerate(t["boxes"].tolist()):
        assert box == ink_box(out, i + 1), (k, i)
    assert torch.equal(t["labels"], target["labels"]) and t["image_id"] == 7


def test_rotate90_is_counter_clockwise():
    image, target = drawn(10, 10, [(0, 0, 2, 2)])  # top-left corner
    out, t = rotate90(image, target, 1)
    assert ink_box(out) == [0.0, 8.0, 2.0, 10.0]  # ends bottom-left
    assert t["boxes"].tolist() == [[0.0, 8.0, 2.0, 10.0]]


@pytest.mark.parametrize("k", [0, 4, 8, -4])
def test_rotate90_full_turns_are_identity(k):
    image, target = drawn(20, 30, RECTS)
    out, t = rotate90(image, target, k)
    assert torch.equal(out, image)
    assert torch.equal(t["boxes"], target["boxes"])


def test_rotate90_negative_k_is_clockwise():
    image, target = drawn(20, 30, RECTS)
    a = rotate90(image, target, -1)
    b = rotate90(image, target, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])


def test_four_quarter_turns_compose_to_identity():
    image, target = drawn(20, 30, RECTS)
    out, t = Compose([Rotate90(1)] * 4)(image, target)
    assert torch.equal(out, image)
    assert torch.equal(t["boxes"], target["boxes"])


def test_empty_boxes_survive_transforms():
    image = torch.zeros(3, 8, 12)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, t = rotate90(image, target, 1)
    assert t["boxes"].shape == (0, 4)
    _, t = RandomHorizontalFlip(1.0)(image, target)
    assert t["boxes"].shape == (0, 4)


def test_photometric_jitter_keeps_boxes_and_range():
    image, target = drawn(20, 30, RECTS)
    image = image / 2
    out, t = PhotometricJitter(0.5, 0.5, torch.Generator().manual_seed(0))(image.clone(), target)
    assert t is target
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, image)


def test_build_transform():
    assert build_transform() is None
    t = build_transform(hflip=0.5, brightness=0.2, seed=3)
    assert isinstance(t, Compose)
    assert [type(p) for p in t.transforms] == [RandomHorizontalFlip, PhotometricJitter]
    image, target = drawn(20, 30, RECTS)
    image = image / 4
    a = [build_transform(hflip=0.5, brightness=0.2, seed=3)(image, target) for _ in range(2)]
    assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][1]["boxes"], a[1][1]["boxes"])
    assert [type(p) for p in build_transform(contrast=0.1).transforms] == [PhotometricJitter]
