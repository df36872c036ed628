"""The synthetic letters benchmark (after LettersOD in the Reptile thesis).

Black uppercase letters A-Z on white, drawn with Pillow's built-in scalable font, each
with a random size, rotation and shear, placed without overlap, 1 to several per image,
boxed tightly around their ink. The set is a pure function of its `LettersSpec`: it is
written once, in COCO format, to a cache directory named by the spec's hash and read
from there afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import string
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fsx.errors import UsageError
from fsx.filemodes import give_usual_mode
from fsx.locking import file_lock
from fsx.progress import progress

LETTERS = tuple(string.ascii_uppercase)
GENERATOR_VERSION = 1  # bump when the drawing code changes, so old caches are not reused
INK_THRESHOLD = 128  # a pixel is ink when the letter covers it at least half


@dataclasses.dataclass(frozen=True)
class LettersSpec:
    num_images: int = 2400
    image_size: int = 128
    min_letters: int = 1
    max_letters: int = 4
    min_font: int = 16
    max_font: int = 64
    max_rotation: float = 15.0  # degrees, uniform in [-max, max]
    max_shear: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.num_images < 1:
            problems.append(f"num_images={self.num_images} must be at least 1")
        if not 1 <= self.min_letters <= self.max_letters:
            problems.append(f"min_letters={self.min_letters}, max_letters={self.max_letters}: need 1 <= min <= max")
        if not 4 <= self.min_font <= self.max_font:
            problems.append(f"min_font={self.min_font}, max_font={self.max_font}: need 4 <= min <= max")
        if self.max_font > self.image_size:
            problems.append(f"max_font={self.max_font} is larger than image_size={self.image_size}")
        if problems:
            raise UsageError("dataset.generator: " + "; ".join(problems))

    def key(self) -> str:
        payload = json.dumps({"v": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow built without FreeType
        raise RuntimeError("Pillow has no FreeType support: the letters benchmark needs its scalable default font")
    return font


def render_letter(letter: str, size: int, rotation: float, shear: float) -> np.ndarray:
    """The letter's coverage mask (uint8, 255 = full ink), cropped to its ink box."""
    font = _font(size)
    side = 3 * size
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), letter, fill=255, font=font, anchor="mm")
    # Inverse affine map about the centre: rotate by `rotation`, shear along x.
    a = math.radians(rotation)
    cos, sin = math.cos(a), math.sin(a)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inv = np.linalg.inv(forward)
    c = side / 2
    offset = np.array([c, c]) - inv @ np.array([c, c])
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    warped = np.asarray(canvas.transform((side, side), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR))
    ys, xs = np.nonzero(warped >= INK_THRESHOLD)
    return warped[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _overlaps(box, boxes, margin: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes)


def draw_image(rng: np.random.Generator, spec: LettersSpec) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image with at least one letter (an image whose draws all failed to fit is redrawn)."""
    for _ in range(100):
        image, objects = _draw_once(rng, spec)
        if objects:
            return image, objects
    raise UsageError(f"dataset.generator: no letter fits a {spec.image_size}px image at font sizes {spec.min_font}-{spec.max_font}")


def _draw_once(rng: np.random.Generator, spec: LettersSpec) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image (H x W uint8, white background) and its (letter, (x0, y0, x1, y1)) objects."""
    n = spec.image_size
    image = np.full((n, n), 255, dtype=np.uint8)
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(spec.min_letters, spec.max_letters + 1))):
        letter = LETTERS[int(rng.integers(len(LETTERS)))]
        mask = render_letter(
            letter,
            size=int(rng.integers(spec.min_font, spec.max_font + 1)),
            rotation=float(rng.uniform(-spec.max_rotation, spec.max_rotation)),
            shear=float(rng.uniform(-spec.max_shear, spec.max_shear)),
        )
        h, w = mask.shape
        if h >= n or w >= n:
            continue
        for _attempt in range(30):
            x0, y0 = int(rng.integers(0, n - w + 1)), int(rng.integers(0, n - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, [b for _, b in objects]):
                region = image[y0 : y0 + h, x0 : x0 + w]
                np.minimum(region, 255 - mask, out=region)
                objects.append((letter, box))
                break
    return image, objects


def generate(spec: LettersSpec, out_dir: Path, show_progress: bool = True) -> Path:
    """Write the whole set (PNG images + `annotations.json`) into `out_dir`; return the JSON path."""
    rng = np.random.default_rng(spec.seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in progress(range(1, spec.num_images + 1), desc="letters: drawing", total=spec.num_images, enabled=show_progress):
        pixels, objects = draw_image(rng, spec)
        file_name = f"images/{image_id:06d}.png"
        Image.fromarray(pixels).save(out_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size})
        for letter, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": LETTERS.index(letter) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": "fsx letters", "spec": dataclasses.asdict(spec), "generator_version": GENERATOR_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "letter"} for i, c in enumerate(LETTERS)],
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def letters_cache(spec: LettersSpec, cache_root: Path, show_progress: bool = True) -> Path:
    """The cached set's directory, generating it first if needed (safe across processes)."""
    cache_root = Path(cache_root).expanduser()
    final = cache_root / f"letters-{spec.key()}"
    if (final / "annotations.json").is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_root / f".letters-{spec.key()}.lock"):
        if (final / "annotations.json").is_file():  # another process made it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".letters-tmp-", dir=cache_root))
        try:
            generate(spec, tmp, show_progress=show_progress)
            (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
            give_usual_mode(tmp)
            if final.exists():  # a half-written set from a crash before the rename existed
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
