"""RoIAlign from grid_sample equals torchvision's compiled op, and has a double backward."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from fsx.models.roi_align import GridRoIAlign, grid_roi_align

# boxes inside, across the border, beyond it, tiny (below one feature pixel) and whole-image
BOXES = [
    torch.tensor([[-6.0, -3, 20, 30], [10, 10, 100, 120], [60, 70, 127, 127], [1, 1, 3, 3], [120, 5, 140, 40]]),
    torch.tensor([[30.0, 40, 90, 50], [0, 0, 128, 128]]),
]


def features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {str(i): torch.randn(2, 8, 16 >> i, 16 >> i, generator=g, dtype=torch.float64) for i in range(3)}


@pytest.mark.parametrize("levels", [["0"], ["0", "1", "2"]])
def test_grid_pooling_equals_torchvision_multiscale_roi_align(levels):
    x, shapes = features(), [(128, 128)] * 2
    boxes = [b.double() for b in BOXES]
    expected = MultiScaleRoIAlign(levels, 7, 2)(x, boxes, shapes)
    got = GridRoIAlign(levels, 7, 2)(x, boxes, shapes)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10)


def test_grid_roi_align_gradient_equals_torchvision():
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, -5.0, -5, 40, 60], [1, 3, 4, 100, 90], [0, 120, 120, 140, 150]], dtype=torch.float64)
    (expected,) = torch.autograd.grad((roi_align(x, rois, 7, 1 / 8, 2) ** 2).sum(), x)
    (got,) = torch.autograd.grad((grid_roi_align(x, rois, (7, 7), 1 / 8, 2) ** 2).sum(), x)
    assert torch.allclose(got, expected, atol=1e-10)


def test_grid_roi_align_has_a_double_backward_where_torchvision_has_none():
    rois = torch.tensor([[0, 8.0, 8, 90, 70]], dtype=torch.float64)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 8, 16, 16, dtype=torch.float64)

    def second(pool):
        (g,) = torch.autograd.grad((pool(x * w.view(1, -1, 1, 1)) ** 3).sum(), w, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), w)
        return h

    h = second(lambda f: grid_roi_align(f, rois, (7, 7), 1 / 8, 2))
    assert torch.isfinite(h).all() and h.abs().sum() > 0
    with pytest.raises(RuntimeError):
        second(lambda f: roi_align(f, rois, 7, 1 / 8, 2))
