"""fsx's lock files: mutual exclusion across processes, and nothing left behind afterwards
(beside the store, in the letters cache, or in the temp folder)."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import pytest

from fsx.locking import file_lock


def _count(lock: str, counter: str, times: int) -> None:
    for _ in range(times):
        with file_lock(lock):
            value = int(Path(counter).read_text())
            time.sleep(0.001)  # widen the window in which a second holder would lose an update
            Path(counter).write_text(str(value + 1))


def test_one_holder_at_a_time_across_processes_and_no_file_left(tmp_path):
    lock, counter = tmp_path / ".counter.lock", tmp_path / "counter"
    counter.write_text("0")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_count, args=(str(lock), str(counter), 40)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert counter.read_text() == "160"  # every increment survived: never two holders at once
    assert not lock.exists()


def test_the_lock_is_released_and_removed_when_the_block_raises(tmp_path):
    lock = tmp_path / ".x.lock"
    with pytest.raises(RuntimeError), file_lock(lock):
        assert lock.exists()
        raise RuntimeError("boom")
    assert not lock.exists()
    with file_lock(lock):  # and can be taken again at once
        pass


def test_a_waiter_whose_file_was_removed_takes_the_new_one(tmp_path):
    """The race that makes other libraries keep their files: A holds, B waits on A's file, A
    removes it on release, C creates a new one. B must notice and lock the new file."""
    lock = tmp_path / ".race.lock"
    log = tmp_path / "log"
    log.write_text("")
    context = multiprocessing.get_context("fork")

    def hold(name: str, seconds: float) -> None:
        with file_lock(lock):
            with open(log, "a") as f:
                f.write(f"{name}+\n")
            time.sleep(seconds)
            with open(log, "a") as f:
                f.write(f"{name}-\n")

    holders = []
    for name in "ABC":
        holders.append(context.Process(target=hold, args=(name, 0.2)))
        holders[-1].start()
        time.sleep(0.05)
    for holder in holders:
        holder.join(timeout=60)
        assert holder.exitcode == 0
    events = log.read_text().split()
    assert len(events) == 6
    for i in range(0, 6, 2):  # strictly nested: each holder leaves before the next enters
        assert events[i][0] == events[i + 1][0] and events[i].endswith("+") and events[i + 1].endswith("-")
    assert not lock.exists()


def test_the_store_and_the_letters_cache_leave_no_lock_files(tmp_path, monkeypatch):
    from fsx import tracking
    from fsx.data.letters import LettersSpec, letters_cache

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with tracking.open_run(uri, "locks", "run", {}) as run:
        run.log_params({"a": 1})
    cache = tmp_path / "cache"
    letters_cache(LettersSpec(num_images=4), cache, show_progress=False)
    left = [p for folder in (temp, store, cache) for p in folder.rglob("*") if p.name.endswith(".lock")]
    assert left == []
    assert (store / "mlflow.db").is_file() and os.listdir(cache)
