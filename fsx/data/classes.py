"""The class lists of the published benchmarks (PROTOCOLS.md sections 2.2-2.9), as data.

Every list here was checked against PROTOCOLS.md and the source it cites; tests compare them
again. Order matters where a head is built from it: TFA's VOC head is base order then novel
order, its COCO head is sorted COCO id order.
"""

from __future__ import annotations

# Pascal VOC, alphabetical (VOC's own 1-based ids are positions in this list).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# COCO 2014/2017 instance categories: id -> name (80 of ids 1..90).
COCO_CLASSES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana",
    53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table",
    70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone",
    78: "microwave", 79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock",
    86: "vase", 87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

# COCO name -> VOC name where they differ (PROTOCOLS 2.4); the other 14 VOC classes share names.
COCO_TO_VOC: dict[str, str] = {
    "airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "tv": "tvmonitor",
    "dining table": "diningtable", "potted plant": "pottedplant",
}
VOC_TO_COCO: dict[str, str] = {v: k for k, v in COCO_TO_VOC.items()}
# The 20 COCO classes that are VOC classes, in COCO names.
COCO_VOC_CLASSES: tuple[str, ...] = tuple(VOC_TO_COCO.get(c, c) for c in VOC_CLASSES)

# FS-VOC (RT Table 6.1): the five test (novel) classes of each fold.
FS_VOC_FOLDS: dict[int, tuple[str, ...]] = {
    1: ("aeroplane", "bus", "car", "cat", "train"),  # urban without person
    2: ("bicycle", "bottle", "horse", "motorbike", "person"),  # urban with person
    3: ("bird", "boat", "cow", "dog", "sheep"),  # rural
    4: ("chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),  # indoor
}

# FS-COCO (RT Table A.1): the twenty test classes of each fold, in COCO names.
FS_COCO_FOLDS: dict[int, tuple[str, ...]] = {
    1: ("person", "bicycle", "motorcycle", "boat", "bench", "backpack", "umbrella", "handbag", "tie", "suitcase",
        "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
        "surfboard", "tennis racket"),  # people
    2: ("car", "airplane", "bus", "train", "truck", "traffic light", "fire hydrant", "stop sign", "parking meter",
        "bird", "horse", "sheep", "cow", "elephant", "zebra", "giraffe", "banana", "apple", "orange", "donut"),  # outdoor
    3: ("cat", "dog", "bear", "chair", "couch", "potted plant", "bed", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"),  # indoor
    4: ("bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "sandwich", "broccoli", "carrot", "hot dog",
        "pizza", "cake", "dining table", "toilet", "microwave", "oven", "toaster", "sink", "refrigerator"),  # food
}

# FS-COCO2VOC (RT 6.1.2): which COCO training images each variant keeps.
COCO2VOC_VARIANTS: dict[int, str] = {1: "strict", 2: "strict_except_person", 3: "background_allowed"}

# TFA's VOC splits (FSRW data/voc_novels.txt lines 1-3): (base in head order, novel in head order).
VOC_TFA_SPLITS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    1: (("aeroplane", "bicycle", "boat", "bottle", "car", "cat", "chair", "diningtable", "dog", "horse", "person",
         "pottedplant", "sheep", "train", "tvmonitor"), ("bird", "bus", "cow", "motorbike", "sofa")),
    2: (("bicycle", "bird", "boat", "bus", "car", "cat", "chair", "diningtable", "dog", "motorbike", "person",
         "pottedplant", "sheep", "train", "tvmonitor"), ("aeroplane", "bottle", "cow", "horse", "sofa")),
    3: (("aeroplane", "bicycle", "bird", "bottle", "bus", "car", "chair", "cow", "diningtable", "dog", "horse",
         "person", "pottedplant", "train", "tvmonitor"), ("boat", "cat", "motorbike", "sheep", "sofa")),
}

# TFA's COCO split: the 20 VOC classes are novel, the other 60 base; both in COCO id order.
COCO_TFA_NOVEL: tuple[str, ...] = tuple(n for i, n in sorted(COCO_CLASSES.items()) if n in COCO_VOC_CLASSES)
COCO_TFA_BASE: tuple[str, ...] = tuple(n for i, n in sorted(COCO_CLASSES.items()) if n not in COCO_VOC_CLASSES)


def same_class_names(name: str) -> set[str]:
    """A class's names across VOC and COCO (a VOC 'sofa' is a COCO 'couch'), for leakage checks."""
    return {name, COCO_TO_VOC.get(name, name), VOC_TO_COCO.get(name, name)}
