"""``lucid distill rank | score | demo``: a thin Typer layer over ``lucidml.distill.api``.

Options that set a config field default to None, so a value from ``--config`` is never
replaced by a default; ``--help`` shows the effective default.
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
    start,
)
from lucidml.distill.config import DEFAULT_METHODS

app = typer.Typer(no_args_is_help=True, help="DD-Ranking: fair evaluation of distilled datasets.")

Dataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="digits, cifar10, cifar100, or a folder with train/ and test/ class folders.",
        show_default="digits",
    ),
]
DataRoot = Annotated[
    str | None,
    typer.Option("--data-root", help="Where a local dataset lives.", show_default="none"),
]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Evaluation preset name (digits-hard, digits-soft, hard, soft) or a YAML file; "
        "sets the config's eval block.",
        show_default="the dataset's preset for the label regime",
    ),
]
JobQuick = Annotated[
    bool | None,
    typer.Option(
        "--quick/--no-quick",
        help="Fewer runs and epochs, shorter LR grid, fewer DM/DC iterations.",
        show_default="the config's, off",
    ),
]
NumEval = Annotated[
    int | None,
    typer.Option("--num-eval", help="Seeded runs.", show_default="the preset's, 5"),
]
Selection = Annotated[
    str | None,
    typer.Option(
        "--selection",
        help="val or test (the reference's optimistic choice).",
        show_default="the preset's, val",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Student/teacher model: convnet, mlp, or a timm/torchvision "
        "name with lucidml[vision].",
        show_default="the preset's",
    ),
]


def _regime(option: str, value: str | None) -> None:
    from lucidml.errors import InputError

    if value not in (None, "hard", "soft"):
        raise InputError(f"{option} must be 'hard' or 'soft', got '{value}'")


def _preset(preset: str | None):
    from lucidml.distill.config import EvalConfig

    return EvalConfig.preset(preset) if preset else None


@app.command()
def rank(
    dataset: Dataset = None,
    ipc: Annotated[
        int | None, typer.Option("--ipc", help="Images per class.", show_default="10")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods", help="Comma-separated distillers.", show_default=",".join(DEFAULT_METHODS)
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="hard or soft.", show_default="hard")
    ] = None,
    num_eval: NumEval = None,
    selection: Selection = None,
    preset: Preset = None,
    model: Model = None,
    data_root: DataRoot = None,
    iterations: Annotated[
        str | None,
        typer.Option(
            "--iterations",
            help="DM and DC budgets: 'DM,DC' counts, 'reference' (20000 and 1000) or 'cpu'.",
            show_default="cpu (200, 40)",
        ),
    ] = None,
    quick: JobQuick = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Distil with each method, score every set (LRS, ARS), write a leaderboard."""
    start(quiet)
    from lucidml.distill import api
    from lucidml.distill.config import RankConfig

    _regime("--labels", labels)
    ev = _preset(preset)
    cfg = RankConfig.from_cli(
        config,
        dataset=dataset,
        ipc=ipc,
        methods=methods,
        labels=labels if labels or ev is None else ev.labels,
        quick=quick,
        data_root=data_root,
        eval=ev,
    )
    cfg = cfg.with_eval(
        model=model, num_eval=num_eval, selection=selection, seed=seed, device=device
    )
    if iterations is not None:
        cfg = cfg.updated(distill=cfg.distill.with_iterations(iterations, cfg.ipc))
    result = api.rank(cfg, out=out, resume=resume, overwrite=overwrite)
    if result is None:  # another process of a multi-process launch: the main one reports
        return
    for row in result["leaderboard"]:
        typer.echo(f"{row['method']:10s} LRS {row['LRS']}  ARS {row['ARS']}")
    _report(result)


def _report(result: dict) -> None:
    items = result["items"]
    typer.echo(f"items: {items['reused']} reused, {items['computed']} computed")
    typer.echo(f"per-run rows: {Path(result['out']) / 'runs.parquet'}")
    typer.echo(f"report: {Path(result['out']) / 'report.html'}")


@app.command()
def score(
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="A .pt/.safetensors tensor file or an image folder with one sub-folder per class.",
            show_default="the config's (required)",
        ),
    ] = None,
    dataset: Dataset = None,
    labels_file: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Labels tensor file (if the images file has none).",
            show_default="none",
        ),
    ] = None,
    soft_labels: Annotated[
        Path | None,
        typer.Option(
            "--soft-labels",
            help="Stored teacher logits (N, K): soft labels, mode S.",
            show_default="none",
        ),
    ] = None,
    teacher: Annotated[
        list[Path] | None,
        typer.Option(
            "--teacher",
            help="Teacher checkpoint (state dict); repeat for several.",
            show_default="the cached real-data models",
        ),
    ] = None,
    regime: Annotated[
        str | None,
        typer.Option(
            "--regime",
            help="hard or soft labels; hard ignores soft labels stored in the images file.",
            show_default="soft (mode S) if the images file holds soft labels, else the recipe's",
        ),
    ] = None,
    input_norm: Annotated[
        str | None,
        typer.Option(
            "--input-norm",
            help="MEAN,STD of mean/std-normalised images (or per channel: M1,M2,M3,S1,S2,S3); "
            "they are un-normalised as x*std+mean. uint8 images are divided by 255 without it.",
            show_default="none: float images must lie in [0, 1]",
        ),
    ] = None,
    num_eval: NumEval = None,
    selection: Selection = None,
    preset: Preset = None,
    model: Model = None,
    data_root: DataRoot = None,
    quick: JobQuick = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Score your own distilled set against random real subsets."""
    start(quiet)
    from lucidml.distill import api
    from lucidml.distill.config import ScoreConfig
    from lucidml.errors import InputError

    _regime("--regime", regime)
    if images is None and config is None:
        raise InputError("--images is required (or a --config file that names images)")
    ev = _preset(preset)
    cfg = ScoreConfig.from_cli(
        config,
        images=str(images) if images else None,
        dataset=dataset,
        labels=str(labels_file) if labels_file else None,
        soft_labels=str(soft_labels) if soft_labels else None,
        teachers=[str(t) for t in teacher] if teacher else None,
        regime=regime,
        input_norm=input_norm,
        quick=quick,
        data_root=data_root,
        eval=ev,
    )
    cfg = cfg.with_eval(
        model=model, num_eval=num_eval, selection=selection, seed=seed, device=device
    )
    result = api.score(cfg, out=out, resume=resume, overwrite=overwrite)
    if result is None:
        return
    typer.echo(
        f"LRS {result['lrs_mean']:.4f} ± {result['lrs_std']:.4f}  "
        f"ARS {result['ars_mean']:.4f} ± {result['ars_std']:.4f}"
    )
    _report(result)


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
):
    """Rank every shipped distiller on digits with hard and soft labels (the tour's demo)."""
    start(quiet)
    from lucidml.core.runs import run_dir_path
    from lucidml.distill import api

    report = api.demo(run_dir_path("distill", out), quick=quick, device=device, overwrite=overwrite)
    typer.echo(f"report: {report}")
