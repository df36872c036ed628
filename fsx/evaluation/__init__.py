"""Detections -> COCO results, COCO metrics, aggregation over repeats with confidence intervals."""
