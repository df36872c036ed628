"""Permissions for files and folders made with `tempfile` and then renamed into place.

`mkstemp`/`mkdtemp` create 0600/0700 entries; a shared results folder or cache needs the mode
the user's umask would have given a normally created one.
"""

from __future__ import annotations

import os
from pathlib import Path


def give_usual_mode(path: Path | str) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)
