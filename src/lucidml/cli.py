"""The root ``lucid`` command: mounts each built system's sub-app, plus ``info`` and ``tour``.

User mistakes (``LucidError`` and command-line usage errors) print one line,
``error: <sentence>``, on stderr and exit with code 2. Anything else is a bug: it prints
``error: internal error: <Type>: <message>`` and the path of a file holding the full
traceback (in the run folder when the job had made one), and exits with 1;
``LUCID_DEBUG=1`` lets the exception through with its traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import Abort

try:  # recent typer vendors its own copy of click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as _click_exc

from lucidml import __version__
from lucidml.core.options import Device, Overwrite, Quick, Quiet
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
    quick: Quick = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder.", show_default="runs/tour/<timestamp>-<suffix>"),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated systems to run, e.g. core,distill,uncertainty.",
            show_default="every built system",
        ),
    ] = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Run every built system's demo on the embedded defaults; write one index.html.

    Prints each demo's time as it finishes and the total; index.html is rewritten after
    each demo, so it shows progress while the tour runs.
    """
    from lucidml.core.options import start
    from lucidml.tour import run_tour

    start(quiet)
    index, failed = run_tour(
        out=out,
        quick=quick,
        only=only,
        device=device,
        echo=lambda line: typer.echo(line),
        overwrite=overwrite,
    )
    typer.echo(f"report: {index.resolve()}")
    if failed:
        raise typer.Exit(1)


for _system in SYSTEMS:
    _sub = _system.cli_app()
    if _sub is not None:
        app.add_typer(_sub, name=_system.name, help=_system.title)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _save_traceback(exc: BaseException) -> Path | None:
    """Write the traceback into the current run folder, else under $LUCID_HOME/errors."""
    from lucidml.core import runs
    from lucidml.core.distributed import process_index
    from lucidml.core.zoo import lucid_home

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    rank = process_index()
    name = f"traceback-{rank}.txt" if rank else "traceback.txt"
    folder = runs.current_run_dir()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    targets = [folder / name] if folder is not None else []
    targets.append(lucid_home() / "errors" / f"{stamp}-{name}")
    for path in targets:
        try:
            return runs.atomic_write_text(path, text)
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user mistakes into one line and exit code 2."""
    from lucidml.core.runs import forget_current_run

    forget_current_run()
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
    except Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user mistake: say so and keep the traceback
        if os.environ.get("LUCID_DEBUG", "") not in ("", "0"):
            raise
        path = _save_traceback(exc)
        where = f" (traceback: {path})" if path else ""
        message = _one_line(str(exc)) or "(no message)"
        print(f"error: internal error: {type(exc).__name__}: {message}{where}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
