"""The data layer's named choices, importable without torch (the CLI checks them first)."""

SAMPLERS = ("image", "instance")  # sampler=: M*K images (Reptile thesis) | exactly K boxes per class (TFA)
RECORD_MODES = ("merged", "per_class")  # sample_records=: one entry per image | TFA's one per (class, image)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")  # image files, any case
