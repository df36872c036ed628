"""RoIAlign built from `grid_sample`: a differentiable path through a two-stage detector.

torchvision's compiled `roi_align` has no double backward, so second-order MAML cannot
pass through Faster R-CNN's RoI pooling. `GridRoIAlign` computes the same numbers as
torchvision's `MultiScaleRoIAlign` (aligned=False, a fixed sampling ratio; equal within
float error) from differentiable torch ops, so gradients of gradients flow through it. It
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
        gx = xs.clamp(0, width - 1) * (2 / max(width - 1, 1)) - 1
        gy = ys.clamp(0, height - 1) * (2 / max(height - 1, 1)) - 1
        k = len(index)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [k, ph*sr, pw*sr, 2]
        grid = grid.reshape(1, k * ph * sr, pw * sr, 2).to(features.dtype)
        sampled = F.grid_sample(features[int(n)].unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled.reshape(features.shape[1], k, ph * sr, pw * sr).transpose(0, 1) * valid[:, None].to(sampled.dtype)
        out = out.index_copy(0, index, F.avg_pool2d(sampled, sr).to(out.dtype))
    return out


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
