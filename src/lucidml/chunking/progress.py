"""Progress bars for the slow loops, shown when the ``lucidml.chunking`` logger is at INFO.

The CLI turns them on (and off with ``--quiet``); library calls stay silent by default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOGGER = logging.getLogger("lucidml.chunking")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    from rich.progress import track as rich_track

    enabled = LOGGER.isEnabledFor(logging.INFO)
    return iter(
        rich_track(items, description=description, total=total, disable=not enabled, transient=True)
    )


class _EchoHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    def emit(self, record: logging.LogRecord) -> None:
        import typer

        typer.echo(self.format(record), err=True)


def set_verbosity(quiet: bool) -> None:
    """INFO (stage messages and progress bars) on stderr, or only warnings when ``quiet``."""
    if not any(isinstance(h, _EchoHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(_EchoHandler())
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
