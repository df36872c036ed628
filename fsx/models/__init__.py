"""Detectors over torchvision: backbones, the detector factory, head surgery."""
