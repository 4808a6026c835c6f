"""``lucid merging``: merge checkpoints from YAML, run TIME recipes, demo.

Options that set a config field default to None, so a ``--config`` file's value is
never replaced by a default; ``--help`` shows the effective default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucidml.core.options import (
    ConfigFile,
    Device,
    Out,
    Overwrite,
    Quick,
    Quiet,
    Resume,
    Seed,
    run_demo,
    start,
)
from lucidml.errors import InputError

app = typer.Typer(no_args_is_help=True, help="TIME: temporal model merging and a merge library.")


@app.command()
def merge(
    merge_config: Annotated[
        Path | None,
        typer.Argument(
            help="Merge YAML: ours (method, base, models, parameters) or mergekit's.",
            show_default="none: give it here or as --config",
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Merge safetensors checkpoints tensor by tensor into a loadable model folder.

    The YAML may be given as the argument or as --config. --seed sets the draws of
    dare_linear, dare_ties and random; --device is where tensors are merged.
    """
    start(quiet)
    from lucidml.merging import api
    from lucidml.merging.config import load_merge_config

    if merge_config is not None and config is not None:
        raise InputError("give the merge YAML once: as the argument or as --config")
    path = merge_config or config
    if path is None:
        raise InputError("no merge config: pass a YAML file (ours or mergekit's)")
    folder = api.merge_models(
        load_merge_config(path), out, device=device, seed=seed, overwrite=overwrite
    )
    typer.echo(f"merged model -> {folder}")


@app.command()
def timeline(
    out: Out = None,
    config: ConfigFile = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps per expert.", show_default="50")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Vision-language model.", show_default="digits-clip")
    ] = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Run TIME recipes (init x deploy x technique, from --config) over the digits task
    stream; each step is checkpointed, so --resume continues a killed run."""
    start(quiet)
    from lucidml.merging import api
    from lucidml.merging.config import TimelineConfig

    cfg = TimelineConfig.from_cli(config, steps=steps, model=model, seed=seed, device=device)
    results, folder = api.run_timeline_job(cfg, out, resume=resume, overwrite=overwrite)
    for name, r in results.items():
        typer.echo(
            f"{name:40s} KA {r['final_ka']:.3f}  ZS {r['final_zs']:.3f}  GM {r['final_gm']:.3f}"
        )
    typer.echo(f"-> {folder}")


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """TIME on digits-clip: an init x deploy grid and merge techniques; writes report.html.

    --quick trains 30 steps per expert instead of 60.
    """
    run_demo("merging", out, quick, device, quiet, overwrite)
