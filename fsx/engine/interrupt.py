"""Stopping cleanly on Ctrl-C and SIGTERM (what `timeout`, `docker stop` and SLURM send).

Inside a training loop the first signal is deferred to the end of the current step, so the
weights, the optimiser and the step count that get saved belong together; a second signal
stops at once. Outside a loop a signal stops at once. Either way the stop is an
`Interrupted` (a KeyboardInterrupt, so every `except KeyboardInterrupt` handles it) that
carries the shell's exit code, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


_pending: int | None = None
_deferring = False


def _handler(signum: int, frame) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (send it again to stop at once)", file=sys.stderr, flush=True)
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through fsx (the main thread of a process only)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave the defaults
            signal.signal(signum, _handler)


@contextlib.contextmanager
def at_step_boundaries() -> Iterator[None]:
    """Defer the first signal until `check()` is called (at the end of a step)."""
    global _deferring
    before, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = before


def check() -> None:
    """Raise the deferred stop, if a signal arrived during the step that just ended."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)
