"""Errors that the CLI turns into one clear message and a non-zero exit."""

from __future__ import annotations

import errno

#: errno values of a write that ran out of room: disk full, quota, file size limit.
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class PonderlabError(Exception):
    """Base class for errors reported to the user without a traceback."""

    exit_code = 1


class SpecError(PonderlabError):
    """Bad experiment input: YAML, unknown key, wrong type, unknown plugin, bad override."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None):
        self.message = message  # without the location
        self.path = path
        self.where = where
        super().__init__("".join(f"{part}: " for part in (where, path) if part) + message)


class PluginError(PonderlabError):
    """A plugin could not be loaded or two plugins claim the same name."""

    exit_code = 2


class CheckpointError(PonderlabError):
    """A checkpoint is missing, corrupt or does not match the spec."""

    exit_code = 2


class NonFiniteLossError(PonderlabError):
    """Training produced a NaN or infinite loss."""

    exit_code = 3


class StorageError(PonderlabError):
    """A file could not be written for lack of room (disk full, quota, file size limit)."""


def storage_full(exc: BaseException) -> bool:
    """True when `exc` is an OSError for a write that ran out of room."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_FULL
