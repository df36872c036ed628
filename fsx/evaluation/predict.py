"""Run a detector over a dataset and return COCO-format results."""

from __future__ import annotations

import torch
from torch import nn

from fsx.data.coco import DetectionDataset, collate
from fsx.engine.device import autocast
from fsx.progress import progress


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 32, amp: bool = True, desc: str = "predict", workers: int = 0) -> list[dict]:
    """COCO results [{image_id, category_id, bbox: xywh, score}] with dataset category ids.
    `workers` > 0 decodes the next batches in that many DataLoader processes while the model
    runs on this one (the same batches, in order)."""
    model.eval()
    results: list[dict] = []
    batches = [list(range(start, min(start + batch_size, len(dataset)))) for start in range(0, len(dataset), batch_size)]
    if workers > 0 and len(batches) > 1:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=min(workers, len(batches)), collate_fn=collate, pin_memory=device.type == "cuda")
    else:
        loader = (collate([dataset[i] for i in batch]) for batch in batches)
    for images, targets in progress(loader, desc=desc, total=len(batches)):
        with autocast(device, amp):
            outputs = model([im.to(device, non_blocking=True) for im in images])
        for target, out in zip(targets, outputs):
            boxes = out["boxes"].float().cpu()
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
            for box, label, score in zip(xywh, out["labels"].tolist(), out["scores"].float().cpu().tolist()):
                results.append({"image_id": target["image_id"], "category_id": dataset.class_ids[label], "bbox": box, "score": score})
    return results
