"""Errors that reach the user as one sentence and exit code 2.

Library code raises these for anything the user can fix (a missing file, a wrong
shape, an unknown name); the CLI prints ``error: <message>`` and exits with 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LucidError(Exception):
    """A user-facing problem, described in one sentence."""

    exit_code = 2


class InputError(LucidError):
    """A file, folder or value given by the user is missing or malformed."""


class ShapeError(InputError):
    """A tensor or array has the wrong shape, channel count or size."""


class ConfigError(InputError):
    """A config file or option does not validate."""


class ModelError(LucidError):
    """A model name cannot be resolved, or the model lacks a required part."""


class NotInstalledError(LucidError):
    """An optional dependency or embedded default is not installed."""


def require_file(path, what: str = "file"):
    """Return ``path`` as a Path if it exists, else raise InputError naming it."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    return p
