"""Detectors out of fsx: a whole detector (resize, normalise, the network, box decoding, NMS,
boxes back in the input's pixels) written as ONNX or TorchScript, run back with onnxruntime
or `torch.jit.load`, and compared with the PyTorch model it came from.

The exported function takes one RGB image, float32 [3, H, W] in [0, 1], any H and W, and
returns boxes float32 [N, 4] (x1, y1, x2, y2 in the input's pixels), scores float32 [N] and
labels int64 [N] (0-based indices into the class names the file carries). One image per call:
torchvision's detectors post-process each image of a batch in a Python loop, which a traced
graph would fix to the batch size it was traced with.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
EXPORTED_SUFFIXES = tuple(FORMATS.values())
METADATA_KEY = "fsx"  # ONNX metadata_props key / TorchScript extra file "fsx.json": classes, spec, source
ONNX_OPSET = 17


class OneImage(nn.Module):
    """The detector as a function of one image: (boxes, scores, labels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # the exporters put a module back in the mode they found it in

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """Trace the detector on `example` into an ONNX graph whose image height and width, and
    number of detections, are dynamic; the metadata goes into the model's metadata_props."""
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            OneImage(model), (example,), buffer, opset_version=ONNX_OPSET, dynamo=False,
            input_names=["image"], output_names=["boxes", "scores", "labels"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """Trace the detector on `example` into TorchScript (loads with `torch.jit.load`, no fsx
    needed); the metadata travels as the extra file fsx.json."""
    with torch.no_grad():
        traced = torch.jit.trace(OneImage(model), (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def export_file(model: nn.Module, fmt: str, example: torch.Tensor, path: Path, metadata: dict) -> None:
    """Write `model` (left in eval mode) as `fmt` to `path`. The tracers' warnings about
    torchvision's shape arithmetic (traced on purpose, checked afterwards) are not shown."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            {"onnx": export_onnx, "torchscript": export_torchscript}[fmt](model, example, path, metadata)
    finally:
        model.eval()


class OnnxDetector:
    """An exported ONNX detector run by onnxruntime on the CPU."""

    def __init__(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # no warnings about unused initialisers
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = json.loads(meta.get(METADATA_KEY, "{}"))

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        boxes, scores, labels = self.session.run(None, {"image": image.detach().cpu().numpy().astype(np.float32)})
        return {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels).long()}


class TracedDetector:
    """An exported TorchScript detector run by `torch.jit.load`."""

    def __init__(self, path: Path):
        import warnings

        extra = {f"{METADATA_KEY}.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still what loads a TorchScript file
            self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        self.metadata = json.loads(extra[f"{METADATA_KEY}.json"] or "{}")

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            boxes, scores, labels = self.module(image.detach().cpu())
        return {"boxes": boxes, "scores": scores, "labels": labels.long()}


class ExportedModel(nn.Module):
    """An exported detector where fsx runs a torchvision detector (`predict`): a list of
    images in, a list of {boxes, scores, labels} out, one image at a time."""

    def __init__(self, runner: OnnxDetector | TracedDetector):
        super().__init__()
        self.runner = runner

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.runner(image.float()) for image in images]


def load_exported(path: Path) -> OnnxDetector | TracedDetector:
    """An exported file, by its suffix."""
    return OnnxDetector(path) if Path(path).suffix == FORMATS["onnx"] else TracedDetector(path)


@dataclasses.dataclass
class Agreement:
    """How closely an exported detector reproduces its PyTorch model on some images."""

    images: int = 0
    compared: int = 0  # reference detections far enough above the cut-offs to be compared
    unmatched: int = 0  # compared detections with no counterpart within tolerance, both ways
    max_box_diff: float = 0.0  # pixels, largest |coordinate difference| over matched pairs
    max_score_diff: float = 0.0
    box_tolerance: float = 0.1
    score_tolerance: float = 1e-3

    @property
    def ok(self) -> bool:
        return self.unmatched == 0

    def metrics(self) -> dict[str, float]:
        return {"export/images": self.images, "export/compared": self.compared, "export/unmatched": self.unmatched, "export/max_box_diff": self.max_box_diff, "export/max_score_diff": self.max_score_diff}


def agreement(pairs, score_floor: float, cap: int, margin: float = 1e-3, box_tolerance: float = 0.1, score_tolerance: float = 1e-3) -> Agreement:
    """Compare (reference, exported) detection dicts image by image. A detection is compared
    when its score is at least `margin` above the cut-offs, where float noise cannot decide
    whether it is kept: the score threshold (`score_floor`) and, when the reference kept
    `cap` detections, the lowest score it kept. Each compared detection must have one of the
    same label within `box_tolerance` pixels on every coordinate and `score_tolerance` in
    score, in both directions."""
    result = Agreement(box_tolerance=box_tolerance, score_tolerance=score_tolerance)
    for reference, exported in pairs:
        result.images += 1
        floor = score_floor
        if len(reference["scores"]) >= cap > 0:
            floor = max(floor, float(reference["scores"].min()))
        for mine, theirs in ((reference, exported), (exported, reference)):
            keep = mine["scores"] > floor + margin
            for box, score, label in zip(mine["boxes"][keep], mine["scores"][keep], mine["labels"][keep]):
                if mine is reference:
                    result.compared += 1
                same = theirs["labels"] == label
                if not bool(same.any()):
                    result.unmatched += 1
                    continue
                # the nearest counterpart in box and score together (a random or degenerate model
                # can return the same box several times with other scores)
                box_diffs = (theirs["boxes"][same] - box).abs().amax(dim=1)
                score_diffs = (theirs["scores"][same] - score).abs()
                best = int(torch.maximum(box_diffs / box_tolerance, score_diffs / score_tolerance).argmin())
                box_diff, score_diff = float(box_diffs[best]), float(score_diffs[best])
                if box_diff > box_tolerance or score_diff > score_tolerance:
                    result.unmatched += 1
                elif mine is reference:
                    result.max_box_diff = max(result.max_box_diff, box_diff)
                    result.max_score_diff = max(result.max_score_diff, score_diff)
    return result
