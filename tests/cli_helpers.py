"""What the end-to-end tests share: the overrides of a small, quick letters set, a clean
environment for the commands, and `python -m fsx` run as a user types it, with its output
shown when it fails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# A 300-image letters set at 64 px. Adapt and eval take the dataset from the checkpoint, so
# only pretrain needs these.
LETTERS_SMALL = [
    "dataset.generator.num_images=300",
    "dataset.image_size=64",
    "dataset.generator.min_font=12",
    "dataset.generator.max_font=32",
]
# Keep low-confidence boxes (score >= 0.001, 20 per image): a barely trained model then
# scores above zero.
KEEP_LOW_SCORES = ["detector.score_thresh=0.001", "detector.detections_per_img=20"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(cache: Path) -> dict[str, str]:
    """This environment without fsx's, Hydra's and MLflow's settings, with its own letters
    cache, plain progress lines, and one OpenMP thread: commands run a few at a time on a small
    CPU, and spinning threads would slow every one of them down many times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSX_", "HYDRA_", "MLFLOW_"))}
    return {**env, "FSX_CACHE": str(cache), "FSX_PROGRESS": "plain", "OMP_NUM_THREADS": "1"}


def run_fsx(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m fsx *args` in `cwd` (made if missing)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "fsx", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"command: {' '.join(map(str, result.args))}\nexit code {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, explain(result)
    return result
