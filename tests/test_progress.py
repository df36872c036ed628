"""Progress output in logs: whole lines in plain mode, nothing when off."""

from __future__ import annotations

import re

import pytest

from fsx import progress as progress_mod
from fsx.progress import QUIET_SECONDS, progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture()
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def _lines(err: str) -> list[str]:
    assert err == "" or err.endswith("\n")
    return err.splitlines()


def test_plain_mode_prints_whole_lines(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    bar = progress(total=10, desc="desc")
    for _ in range(10):
        clock.now += 1.0  # 10 s in all, more than QUIET_SECONDS
        bar.update()
    bar.set_postfix_str("loss 0.5")
    bar.close()
    out, err = capsys.readouterr()
    assert out == ""
    lines = _lines(err)
    assert lines, "a loop longer than QUIET_SECONDS prints progress"
    assert all("\r" not in line and line.startswith("desc: ") for line in lines)
    counts = [int(re.match(r"desc: (\d+)/10 ", line).group(1)) for line in lines]
    assert counts == sorted(set(counts))  # increasing, no line printed twice
    assert counts[-1] == 10
    assert min(counts) >= QUIET_SECONDS  # nothing in the quiet first seconds (one update per second)
    assert "desc: 10/10 (100%) in 10s, eta 0s" in lines[-1]


def test_plain_mode_close_prints_the_final_count(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    bar = progress(total=100, desc="train")
    clock.now += 5
    bar.update(50)  # due: 50% after 5 s
    clock.now += 1
    bar.update(5)  # not due: below 60%
    bar.set_postfix_str("loss 1.234")
    bar.close()
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert lines[0].startswith("train: 50/100 ( 50%) in 5s, eta 5s")
    assert lines[1] == "train: 55/100 ( 55%) in 6s, eta 5s  loss 1.234"


def test_plain_mode_iterable(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    seen = []
    for item in progress(range(4), desc="loop"):
        clock.now += 2.0
        seen.append(item)
    assert seen == [0, 1, 2, 3]
    lines = _lines(capsys.readouterr().err)
    assert lines and lines[-1].startswith("loop: 4/4 (100%)")


def test_plain_mode_short_loops_are_quiet(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    bar = progress(total=10, desc="desc")
    for _ in range(10):
        clock.now += 0.1  # 1 s in all
        bar.update()
    bar.close()
    assert capsys.readouterr().err == ""


def test_plain_mode_without_total_prints_every_30_seconds(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    bar = progress(desc="open")
    for _ in range(7):
        clock.now += 10
        bar.update()
    lines = _lines(capsys.readouterr().err)
    assert [line.split(" in ")[0] for line in lines] == ["open: 3", "open: 6"]


def test_off_prints_nothing(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "off")
    bar = progress(total=10, desc="desc")
    for _ in range(10):
        clock.now += 5.0
        bar.update()
    bar.close()
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_disabled_prints_nothing(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    for _ in progress(range(5), desc="hidden", enabled=False):
        clock.now += 10
    assert capsys.readouterr().err == ""


def test_plain_mode_prints_every_tenth(monkeypatch, capsys, clock):
    monkeypatch.setenv("FSX_PROGRESS", "plain")
    bar = progress(total=10, desc="desc")
    clock.now += QUIET_SECONDS  # past the quiet period from the first update on
    for _ in range(10):
        clock.now += 0.5
        bar.update()
    bar.close()
    lines = _lines(capsys.readouterr().err)
    assert [int(re.match(r"desc: (\d+)/10 ", line).group(1)) for line in lines] == list(range(1, 11))
