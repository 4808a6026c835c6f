"""The options every ``lucid`` command shares, declared once so they mean one thing.

A command takes them as parameters with these types::

    def fit(..., out: Out = None, config: ConfigFile = None, seed: Seed = None,
            device: Device = None, quiet: Quiet = False, resume: Resume = False,
            overwrite: Overwrite = False): ...

Options that override a config field default to None, so a value from ``--config``
is never replaced by a default; ``--help`` shows the effective default instead.
``tests/test_run_contract.py`` walks every command and checks that it has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucidml.core.config import DEVICE_HELP

Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Run folder to write.",
        show_default="runs/<system>/<timestamp>-<suffix>",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of config fields (unknown keys are errors); options given on the "
        "command line override it. A run folder's config.yaml can be passed back.",
        show_default="none",
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Random seed; one seed gives one answer on one machine.",
        show_default="the config's, 0",
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        help=f"{DEVICE_HELP}; dtype follows the device.",
        show_default="auto",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars or stage messages; warnings still print."),
]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Continue the interrupted run in --out, reusing finished work."),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Empty --out first if it holds an earlier run (without it, a non-empty --out "
        "is refused unless --resume).",
    ),
]
Quick = Annotated[
    bool, typer.Option("--quick", help="Shorter settings (the tour's); numbers are rougher.")
]


def start(quiet: bool) -> None:
    """What every command does first: progress and stage messages unless ``--quiet``."""
    from lucidml.core.progress import set_verbosity

    set_verbosity(quiet)


def run_demo(
    system: str, out: Path | None, quick: bool, device: str | None, quiet: bool, overwrite: bool
) -> None:
    """What ``lucid <system> demo`` does: the device is resolved before the run folder is
    made (an unavailable one is refused first), the system's ``api.demo`` writes its
    report there, and the report's path is printed."""
    import importlib

    from lucidml.core.config import resolve_device
    from lucidml.core.runs import run_dir_path

    start(quiet)
    resolved = resolve_device(device)
    api = importlib.import_module(f"lucidml.{system}.api")
    path = api.demo(run_dir_path(system, out), quick=quick, device=resolved, overwrite=overwrite)
    typer.echo(f"report -> {path}")
