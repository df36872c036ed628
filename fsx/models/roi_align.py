"""RoIAlign built from indexing and arithmetic: a differentiable path through a two-stage detector.

torchvision's compiled `roi_align` has no double backward, so second-order MAML cannot
pass through Faster R-CNN's RoI pooling. `GridRoIAlign` computes the same numbers as
torchvision's `MultiScaleRoIAlign` (aligned=False, a fixed sampling ratio; equal within
float error) from differentiable torch ops, so gradients of gradients flow through it. Its
bilinear sampling reads the four neighbours by indexing rather than through `grid_sample`,
whose double backward torch has only had since 2.12 (fsx supports torch from 2.4). It
costs a little more than the compiled op (a Faster R-CNN training step on a CPU, make
bench), so it is the choice for second-order meta-learning, not the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def grid_roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int) -> Tensor:
    """torchvision's `roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned=False)` for sampling_ratio > 0. rois: [K, 5] rows (image index, x1, y1, x2, y2)."""
    ph, pw = output_size
    sr = sampling_ratio
    height, width = features.shape[-2:]
    out = features.new_zeros((rois.shape[0], features.shape[1], ph, pw))
    for n in rois[:, 0].unique().tolist():
        index = torch.nonzero(rois[:, 0] == n).flatten()
        boxes = rois[index, 1:] * spatial_scale
        x1, y1 = boxes[:, 0], boxes[:, 1]
        bin_w = (boxes[:, 2] - x1).clamp(min=1.0) / pw
        bin_h = (boxes[:, 3] - y1).clamp(min=1.0) / ph
        # sample j of a roi sits at x1 + (j + 0.5) * bin / sr, sr samples per bin, as in roi_align
        xs = x1[:, None] + (torch.arange(pw * sr, device=rois.device) + 0.5)[None] * (bin_w / sr)[:, None]
        ys = y1[:, None] + (torch.arange(ph * sr, device=rois.device) + 0.5)[None] * (bin_h / sr)[:, None]
        # roi_align reads 0 beyond one pixel outside the map and clamps to the border inside it
        valid = ((ys >= -1) & (ys <= height))[:, :, None] & ((xs >= -1) & (xs <= width))[:, None, :]
        sampled = _bilinear(features[int(n)], ys, xs)  # [k, C, ph*sr, pw*sr]
        sampled = sampled * valid[:, None].to(sampled.dtype)
        out = out.index_copy(0, index, F.avg_pool2d(sampled, sr).to(out.dtype))
    return out


def _bilinear(feature: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """feature [C, H, W] read at every (ys[k, i], xs[k, j]) pixel coordinate, interpolated
    bilinearly as roi_align does (coordinates clamped to the map): [k, C, I, J]. The four
    neighbours are rows of the map laid out as [H*W, C], read with one index_select each."""
    channels, height, width = feature.shape
    ys = ys.clamp(0, height - 1)  # the coordinates stay in the boxes' precision; the weights take the map's
    xs = xs.clamp(0, width - 1)
    y0 = ys.floor().long()
    x0 = xs.floor().long()
    y1 = (y0 + 1).clamp(max=height - 1)
    x1 = (x0 + 1).clamp(max=width - 1)
    ly = (ys - y0).to(feature.dtype)[:, :, None, None]  # [k, I, 1, 1]
    lx = (xs - x0).to(feature.dtype)[:, None, :, None]  # [k, 1, J, 1]
    rows = feature.flatten(1).t()  # [H*W, C]
    k, size_i, size_j = ys.shape[0], ys.shape[1], xs.shape[1]

    def at(yi: Tensor, xi: Tensor) -> Tensor:  # [k, I, J, C]
        index = (yi[:, :, None] * width + xi[:, None, :]).reshape(-1)
        return rows.index_select(0, index).view(k, size_i, size_j, channels)

    top = at(y0, x0) * (1 - lx) + at(y0, x1) * lx
    bottom = at(y1, x0) * (1 - lx) + at(y1, x1) * lx
    return (top * (1 - ly) + bottom * ly).permute(0, 3, 1, 2)


class GridRoIAlign(MultiScaleRoIAlign):
    """`MultiScaleRoIAlign` (the same levels, scales and outputs) through `grid_roi_align`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return grid_roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.nonzero(levels == level).flatten()
            if len(index):
                pooled = grid_roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio)
                result = result.index_copy(0, index, pooled.to(result.dtype))
        return result
