"""gpu/wheels.py: the wheels a lent GPU machine's image lacks, computed from fsx's requirements.

The download itself needs the package registry and is not run here; the set it downloads is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "gpu" / "wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_set_is_what_fsx_needs_less_what_the_image_has(wheels):
    pins = wheels.closure("3.12")
    # fsx's own requirements that the image lacks, and what they bring
    for name in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pycocotools", "mlflow-skinny", "sqlalchemy", "alembic"):
        assert name in pins, name
    # the image's torch stays; mlflow travels as its client, not with its server and UI
    for name in ("torch", "torchvision", "triton", "numpy", "timm", "typer", "matplotlib", "scipy", "mlflow", "flask", "gunicorn"):
        assert name not in pins, name
    assert not any(name.startswith("nvidia-") for name in pins)
    # at the versions this environment runs, which the test suite ran against
    from importlib import metadata

    assert pins["hydra-core"] == metadata.version("hydra-core")


def test_markers_are_read_for_the_target_python(wheels):
    """alembic asks for tomli on Python < 3.11 only: not carried to 3.12 (nor asked of this environment)."""
    assert "tomli" not in wheels.closure("3.12")
