"""Progress bars and stage messages for every system, on stderr.

Everything goes through the ``lucidml`` logger: a system logs stage messages on
``logging.getLogger("lucidml.<system>")`` and wraps its slow loops in :func:`track`.
Library calls stay silent (the logger has no handler and sits at WARNING) until a
command, or a user, calls :func:`set_verbosity`; ``--quiet`` keeps only warnings.

Bars are drawn only when stderr is a terminal. Bars nest: a ``track`` inside another adds a line to the same live display instead of
starting a second one (rich allows only one live display at a time). Under a
multi-process launch only the main process draws bars, so N processes do not fight
over one terminal; every process still logs its stage messages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOGGER = logging.getLogger("lucidml")

_live = None  # the shared rich Progress while at least one track() is running
_open = 0


def enabled() -> bool:
    """Whether progress is shown: INFO is on for the ``lucidml`` logger."""
    return LOGGER.isEnabledFor(logging.INFO)


def _bars_here() -> bool:
    """Bars only on a terminal (in logs and pipes rich would leave blank lines behind,
    and stage messages say enough), and only on the main process."""
    import sys

    from lucidml.core.distributed import is_main_process

    return enabled() and sys.stderr.isatty() and is_main_process()


def _start():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    live = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    live.start()
    return live


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing a progress bar while verbosity is on (nothing otherwise)."""
    global _live, _open
    if not _bars_here():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    if _live is None:
        _live = _start()
    task = _live.add_task(description, total=total)
    _open += 1
    try:
        for item in items:
            yield item
            _live.advance(task)
    finally:
        _live.remove_task(task)
        _open -= 1
        if _open == 0:
            _live.stop()
            _live = None


class _EchoHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (pytest swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a logging handler must never raise into the job
            self.handleError(record)


def set_verbosity(quiet: bool) -> None:
    """Stage messages and progress bars on stderr, or only warnings when ``quiet``."""
    if not any(isinstance(h, _EchoHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(_EchoHandler())
        LOGGER.propagate = False  # one copy of each line, not one more per root handler
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)


def get_logger(system: str) -> logging.Logger:
    """The logger a system writes stage messages to (``lucidml.<system>``)."""
    return logging.getLogger(f"lucidml.{system}")
