"""The wheel carries the whole config tree and works outside the clone.

conf/ lives at the repository's top level and is mapped into the package `fsx.conf` at
build time (pyproject.toml): a built wheel must hold every YAML file and every package,
and an install of it must compose configs from anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (found,) = out.glob("fsx-*.whl")
    return found


def test_wheel_holds_every_yaml_file_and_package(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml_files = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert len(yaml_files) > 10
    missing = [f for f in yaml_files if f"fsx/conf/{f}" not in names]
    assert not missing, f"YAML files missing from the wheel: {missing}"
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "fsx").rglob("*.py"))
    missing = [m for m in modules if m not in names]
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {missing}"


def test_installed_wheel_composes_configs_outside_the_clone(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import fsx, fsx.conf; print(fsx.__file__); print(fsx.conf.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), f"imported from the clone, not the wheel:\n{where.stdout}"
    for verb in ("pretrain", "adapt", "eval"):
        job = subprocess.run([sys.executable, "-m", "fsx", verb, "--cfg", "job", "algorithm=reptile", "detector=fcos"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stdout + job.stderr
        assert f"command: {verb}" in job.stdout
        assert "name: reptile" in job.stdout and "name: fcos" in job.stdout
