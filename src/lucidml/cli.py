"""The root ``lucid`` command: mounts each built system's sub-app, plus ``info`` and ``tour``.

User mistakes (``LucidError`` and command-line usage errors) print one line,
``error: <sentence>``, on stderr and exit with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # recent typer vendors its own copy of click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as _click_exc

from lucidml import __version__
from lucidml.errors import LucidError
from lucidml.systems import SYSTEMS

app = typer.Typer(
    name="lucid",
    help="lucidml: nine research systems for understanding, evaluating and updating models "
    "and data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lucidml {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            envvar="LUCID_THREADS",
            help="CPU threads for torch (default: one per core). 1 is often faster for "
            "small models on a busy machine.",
        ),
    ] = None,
) -> None:
    """lucidml command line."""
    from lucidml.core.config import set_threads

    set_threads(threads)


@app.command()
def info() -> None:
    """Versions, device, and which embedded defaults are installed."""
    import platform

    import torch

    from lucidml.core import zoo

    typer.echo(
        f"lucidml {__version__}  python {platform.python_version()}  torch {torch.__version__}"
    )
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    typer.echo(f"device: {dev}  cache: {zoo.lucid_home()}")
    typer.echo("embedded defaults:")
    for name, item in zoo.available().items():
        if item["installed"]:
            typer.echo(f"  {name:24s} available   {item['where']}")
        else:
            typer.echo(f"  {name:24s} missing     install with: {item['how']}")
    typer.echo("systems:")
    for s in SYSTEMS:
        typer.echo(f"  {s.name:12s} {'built' if s.built else 'not built yet':14s} {s.title}")


@app.command()
def tour(
    quick: Annotated[
        bool, typer.Option("--quick", help="Shorter demos (fewer epochs, smaller grids).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default runs/tour/<timestamp>).")
    ] = None,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Comma-separated systems to run, e.g. distill,uncertainty."),
    ] = None,
) -> None:
    """Run every built system's demo on the embedded defaults; write one index.html."""
    from lucidml.tour import run_tour

    index, failed = run_tour(out=out, quick=quick, only=only)
    typer.echo(f"report: {index.resolve()}")
    if failed:
        raise typer.Exit(1)


for _system in SYSTEMS:
    _sub = _system.cli_app()
    if _sub is not None:
        app.add_typer(_sub, name=_system.name, help=_system.title)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user mistakes into one line and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="lucid", standalone_mode=False)
    except LucidError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except _click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `lucid`: show help, not an error
            print(exc.format_message())
            sys.exit(0)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"error: {_one_line(exc.format_message())}{hint}", file=sys.stderr)
        sys.exit(2)
    except _click_exc.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(2)
    except _click_exc.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
