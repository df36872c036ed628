"""fsx: an experiment runner for few-shot object detection."""

__version__ = "0.1.0"
