"""Progress bars that stay readable in a log file.

On a terminal this is tqdm. Elsewhere (CI logs, `nohup`, Hydra's job log) a carriage-return
bar turns into one unreadable line, so we print a plain line every ~10% or 30 seconds.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
QUIET_SECONDS = 3.0  # loops shorter than this print nothing in plain mode


def _interactive() -> bool:
    if os.environ.get("FSX_PROGRESS") == "plain":
        return False
    return sys.stderr.isatty()


class _LineProgress:
    """tqdm's small interface (update, set_postfix_str, close), printing whole lines."""

    def __init__(self, iterable, desc: str, total: int | None):
        self.iterable, self.desc, self.total = iterable, desc, total
        self.n, self.n_printed, self.postfix = 0, 0, ""
        self.start = self.last_print = time.monotonic()
        self.next_fraction = 0.1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due = self.total and self.n / self.total >= self.next_fraction and now - self.start >= QUIET_SECONDS
        if due or now - self.last_print >= 30:
            self._print(now)
            if self.total:
                self.next_fraction = (math.floor(self.n * 10 / self.total) + 1) / 10

    def _print(self, now: float) -> None:
        self.last_print, self.n_printed = now, self.n
        elapsed = now - self.start
        rate = elapsed / self.n if self.n else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:3.0f}%)" if self.total else ""
        eta = f", eta {rate * (self.total - self.n):.0f}s" if self.total else ""
        extra = f"  {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done}{pct} in {elapsed:.0f}s{eta}{extra}", file=sys.stderr, flush=True)

    def close(self) -> None:
        now = time.monotonic()
        printed = self.last_print != self.start
        if self.n and self.n_printed != self.n and (printed or now - self.start >= QUIET_SECONDS):
            self._print(now)


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Wrap `iterable` (or count to `total` with `.update()`) with a progress display."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled or os.environ.get("FSX_PROGRESS") == "off":
        return tqdm(iterable, desc=desc, total=total, disable=True)
    if _interactive():
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False)
    return _LineProgress(iterable if iterable is not None else range(0), desc, total)  # type: ignore[return-value]
