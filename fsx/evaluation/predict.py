"""Run a detector over a dataset and return COCO-format results."""

from __future__ import annotations

import torch
from torch import nn

from fsx.data.coco import DetectionDataset, collate
from fsx.engine.device import autocast
from fsx.progress import progress


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 32, amp: bool = True, desc: str = "predict") -> list[dict]:
    """COCO results [{image_id, category_id, bbox: xywh, score}] with dataset category ids."""
    model.eval()
    results: list[dict] = []
    starts = range(0, len(dataset), batch_size)
    for start in progress(starts, desc=desc):
        images, targets = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        with autocast(device, amp):
            outputs = model([im.to(device) for im in images])
        for target, out in zip(targets, outputs):
            boxes = out["boxes"].float().cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            for box, label, score in zip(xywh, out["labels"].tolist(), out["scores"].float().cpu().tolist()):
                results.append({"image_id": target["image_id"], "category_id": dataset.class_ids[label], "bbox": box, "score": score})
    return results
