"""fsx.engine.utilisation: the union of busy intervals, and the busy fraction read from the
profiler's trace (on the CPU here; on CUDA where a GPU is visible)."""

from __future__ import annotations

import time

import pytest
import torch

from fsx.engine.utilisation import busy_fraction, busy_seconds, covered


def test_covered_counts_overlaps_once_and_clips_to_the_window():
    assert covered([], 0, 10) == 0
    assert covered([(1, 3), (2, 5), (7, 8)], 0, 10) == 5  # [1, 5) and [7, 8)
    assert covered([(2, 9), (3, 4), (4, 6)], 0, 10) == 7  # nested spans add nothing
    assert covered([(-5, 2), (8, 20)], 0, 10) == 4  # clipped at both ends
    assert covered([(11, 12), (-3, -1)], 0, 10) == 0
    assert covered([(6, 7), (0, 10)], 0, 10) == 10  # unsorted input


def _matmuls(n: int = 20):
    x = torch.randn(200, 200)
    for _ in range(n):
        x = torch.tanh(x @ x)


def test_idle_work_is_not_busy_and_busy_work_is():
    cpu = torch.device("cpu")
    assert busy_fraction(lambda: time.sleep(0.05), cpu) == 0.0
    mixed = busy_fraction(lambda: (time.sleep(0.05), _matmuls()), cpu)
    assert 0.0 < mixed < 1.0


def test_busy_seconds_are_within_the_wall_time():
    busy, wall = busy_seconds(lambda: (time.sleep(0.05), _matmuls()), torch.device("cpu"))
    assert 0 < busy < wall
    assert wall >= 0.05  # the sleep is inside the window


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_kernels_count_and_the_window_is_the_hosts():
    cuda = torch.device("cuda")
    assert busy_fraction(lambda: time.sleep(0.05), cuda) == 0.0  # the GPU saw a kernel, but not in the window
    x = torch.randn(4096, 4096, device=cuda)

    def kernels():
        for _ in range(50):
            torch.mm(x, x)

    kernels()  # cuBLAS set up outside the window
    torch.cuda.synchronize()
    start = time.perf_counter()
    kernels()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start  # as long as this GPU takes, fast or slow
    assert 0.5 < busy_fraction(kernels, cuda) <= 1.0
    # Idle host time three times as long as the kernels, before them: the window is the
    # host's whole span, not the GPU's own annotation of it (which starts at the first kernel).
    assert busy_fraction(lambda: (time.sleep(3 * seconds), kernels()), cuda) < 0.5
