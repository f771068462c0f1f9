"""An exclusive claim on a run directory: one process trains in it at a time.

The claim is an `flock` on `<run dir>/.lock`, which holds the owner's process id. The
kernel drops the lock when that process ends, however it ends, so a killed run never
leaves a stale claim behind; the file itself stays and is ignored by every reader.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import SpecError

LOCK_NAME = ".lock"


def _owner(handle: int) -> str:
    text = os.pread(handle, 64, 0).decode(errors="replace").strip()
    return f"process {text}" if text.isdigit() else "another process"


def lock_holder(run_dir: Path) -> str | None:
    """Who holds `run_dir` now ("process 1234"), or None when nobody does."""
    try:
        handle = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _owner(handle)
    finally:
        os.close(handle)  # closing drops a lock we took
    return None


class RunDirLock:
    """`with RunDirLock(run_dir):` creates the directory and holds it for this process."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._handle: int | None = None

    def __enter__(self) -> RunDirLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(handle)
            os.close(handle)
            raise SpecError(f"run directory {self.run_dir} is in use by {owner}") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
