"""The synthetic letters benchmark: determinism, the cache, tight non-overlapping boxes."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_LETTERS as SPEC
from PIL import Image

from fsx.data import letters as letters_mod
from fsx.data.letters import INK_THRESHOLD, LETTERS, LettersSpec, generate, letters_cache


@pytest.fixture(scope="module")
def coco(letters_source) -> dict:
    return json.loads((letters_source / "annotations.json").read_text())


def _pixels(root: Path, file_name: str) -> np.ndarray:
    with Image.open(root / file_name) as im:
        assert im.mode == "L"
        return np.asarray(im).copy()


# --- determinism -------------------------------------------------------------------------


def test_generation_is_a_pure_function_of_the_spec(tmp_path):
    spec = LettersSpec(num_images=12, seed=3)
    a = generate(spec, tmp_path / "a", show_progress=False)
    b = generate(spec, tmp_path / "b", show_progress=False)
    assert a.read_text() == b.read_text()
    files = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert files == [f"{i:06d}.png" for i in range(1, 13)]
    for name in files:
        pa = _pixels(tmp_path / "a", f"images/{name}")
        pb = _pixels(tmp_path / "b", f"images/{name}")
        assert np.array_equal(pa, pb), name


def test_a_different_seed_gives_a_different_set(tmp_path):
    a = json.loads(generate(LettersSpec(num_images=12, seed=3), tmp_path / "a", show_progress=False).read_text())
    b = json.loads(generate(LettersSpec(num_images=12, seed=4), tmp_path / "b", show_progress=False).read_text())
    assert a["annotations"] != b["annotations"]
    differing = [
        i
        for i in range(1, 13)
        if not np.array_equal(_pixels(tmp_path / "a", f"images/{i:06d}.png"), _pixels(tmp_path / "b", f"images/{i:06d}.png"))
    ]
    assert len(differing) >= 6


def test_spec_key_depends_on_every_field():
    base = LettersSpec()
    assert base.key() == LettersSpec().key()
    keys = {
        base.key(),
        LettersSpec(num_images=201).key(),
        LettersSpec(seed=1).key(),
        LettersSpec(image_size=96).key(),
        LettersSpec(max_letters=5).key(),
        LettersSpec(max_rotation=10.0).key(),
    }
    assert len(keys) == 6


# --- the cache ---------------------------------------------------------------------------


def test_cache_is_reused_without_regenerating(tmp_path, monkeypatch):
    spec = LettersSpec(num_images=4, seed=7)
    first = letters_cache(spec, tmp_path, show_progress=False)
    assert first == tmp_path / f"letters-{spec.key()}"
    assert (first / "annotations.json").is_file()
    assert json.loads((first / "spec.json").read_text()) == {**spec.__dict__}
    mtime = (first / "annotations.json").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("generate must not run when the cache holds the set")

    monkeypatch.setattr(letters_mod, "generate", boom)
    second = letters_cache(spec, tmp_path, show_progress=False)
    assert second == first
    assert (second / "annotations.json").stat().st_mtime_ns == mtime
    # no temporary directories are left next to the cached set
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".letters-tmp-")]


def test_cache_separates_specs(tmp_path):
    a = letters_cache(LettersSpec(num_images=3, seed=1), tmp_path, show_progress=False)
    b = letters_cache(LettersSpec(num_images=3, seed=2), tmp_path, show_progress=False)
    assert a != b
    assert (a / "annotations.json").read_text() != (b / "annotations.json").read_text()


def test_failed_generation_leaves_no_cache_entry(tmp_path, monkeypatch):
    spec = LettersSpec(num_images=3, seed=11)

    def half_then_crash(spec, out_dir, show_progress=True):
        (out_dir / "images").mkdir(parents=True)
        (out_dir / "annotations.json").write_text("{")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(letters_mod, "generate", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        letters_cache(spec, tmp_path, show_progress=False)
    assert not (tmp_path / f"letters-{spec.key()}").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".letters-tmp-")]
    monkeypatch.undo()
    root = letters_cache(spec, tmp_path, show_progress=False)
    assert len(json.loads((root / "annotations.json").read_text())["images"]) == 3


# --- content -----------------------------------------------------------------------------


def test_categories_are_the_26_letters(coco):
    assert coco["categories"] == [{"id": i + 1, "name": c, "supercategory": "letter"} for i, c in enumerate(string.ascii_uppercase)]
    assert LETTERS == tuple(string.ascii_uppercase)


def test_images_and_object_counts(coco, letters_source):
    assert [img["id"] for img in coco["images"]] == list(range(1, SPEC.num_images + 1))
    per_image = {img["id"]: 0 for img in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] += 1
    counts = set(per_image.values())
    assert min(counts) >= SPEC.min_letters
    assert max(counts) <= SPEC.max_letters
    assert len(counts) > 1  # the number of letters per image varies
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    for img in coco["images"]:
        assert (img["width"], img["height"]) == (SPEC.image_size, SPEC.image_size)
        assert (letters_source / img["file_name"]).is_file()


def test_every_letter_occurs(coco):
    seen = {a["category_id"] for a in coco["annotations"]}
    assert seen == set(range(1, 27))


def test_annotation_fields_are_consistent(coco):
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= SPEC.image_size and y + h <= SPEC.image_size
        assert a["area"] == w * h
        assert a["iscrowd"] == 0
        assert SPEC.min_font // 4 <= max(w, h) <= SPEC.image_size


def test_boxes_are_tight_and_cover_all_ink(coco, letters_source):
    anns_by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    ink_level = 255 - INK_THRESHOLD  # the image is 255 - coverage: ink <=> value <= 127
    for img in coco["images"]:
        pixels = _pixels(letters_source, img["file_name"])
        ink = pixels <= ink_level
        covered = np.zeros_like(ink)
        for a in anns_by_image[img["id"]]:
            x, y, w, h = a["bbox"]
            inside = ink[y : y + h, x : x + w]
            where = f"image {img['id']} annotation {a['id']}"
            assert inside[0, :].any(), f"{where}: no ink on the top row"
            assert inside[-1, :].any(), f"{where}: no ink on the bottom row"
            assert inside[:, 0].any(), f"{where}: no ink on the left column"
            assert inside[:, -1].any(), f"{where}: no ink on the right column"
            covered[y : y + h, x : x + w] = True
        assert not (ink & ~covered).any(), f"image {img['id']}: ink outside every box"
        # background is white
        assert (pixels[~covered] > ink_level).all()
        assert pixels.max() == 255


def test_boxes_of_one_image_do_not_overlap(coco):
    anns_by_image: dict[int, list[tuple]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        anns_by_image.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    pairs = 0
    for boxes in anns_by_image.values():
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                assert not overlap, (a, b)
                pairs += 1
    assert pairs > 0


def test_render_letter_is_cropped_to_its_ink():
    mask = letters_mod.render_letter("W", size=40, rotation=10.0, shear=0.1)
    assert mask.dtype == np.uint8
    ink = mask >= INK_THRESHOLD
    assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
    assert 10 < mask.shape[0] < 80 and 10 < mask.shape[1] < 80
