"""``lucid distill rank | score``: a thin Typer layer over ``lucidml.distill.api``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="DD-Ranking: fair evaluation of distilled datasets.")

Out = Annotated[
    Path | None, typer.Option("--out", help="Run folder (default runs/distill/<timestamp>).")
]
Dataset = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="digits, cifar10, cifar100, or a folder with train/ and test/ class folders.",
    ),
]
DataRoot = Annotated[str | None, typer.Option("--data-root", help="Where a local dataset lives.")]
Preset = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Evaluation preset name (digits-hard, digits-soft, hard, soft) or a YAML file.",
    ),
]
Quick = Annotated[bool, typer.Option("--quick", help="Fewer runs and epochs, shorter LR grid.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress lines.")]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Student/teacher model: convnet, mlp, or a timm/torchvision "
        "name with lucidml[vision] (default: the preset's).",
    ),
]


def _resolve(dataset: str, labels: str, preset, num_eval, selection, seed, model=None):
    from lucidml.distill.api import default_config
    from lucidml.distill.config import EvalConfig

    cfg = EvalConfig.preset(preset) if preset else default_config(dataset, labels)
    if labels != cfg.labels:
        cfg = cfg.updated(
            labels=labels, loss="kl" if labels == "soft" and cfg.loss == "ce" else cfg.loss
        )
    if model is not None:
        cfg = cfg.updated(model=cfg.model.updated(name=model))
    return cfg.updated(num_eval=num_eval, selection=selection, seed=seed)


def _log(quiet: bool):
    return None if quiet else (lambda msg: typer.echo(msg, err=True))


@app.command()
def rank(
    dataset: Dataset = "digits",
    ipc: Annotated[int, typer.Option("--ipc", help="Images per class.")] = 10,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated distillers.")] = (
        "random,herding,kcenter,classmean,dm,dc,noise"
    ),
    labels: Annotated[str, typer.Option("--labels", help="hard or soft.")] = "hard",
    num_eval: Annotated[int | None, typer.Option("--num-eval", help="Seeded runs.")] = None,
    selection: Annotated[
        str | None,
        typer.Option(
            "--selection", help="val (default) or test (the reference's optimistic choice)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    preset: Preset = None,
    model: Model = None,
    data_root: DataRoot = None,
    quick: Quick = False,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse finished work in --out.")] = False,
    out: Out = None,
    quiet: Quiet = False,
) -> None:
    """Distil with each method, score every set (LRS, ARS), write a leaderboard."""
    from lucidml.distill import api
    from lucidml.errors import InputError

    if labels not in ("hard", "soft"):
        raise InputError(f"--labels must be 'hard' or 'soft', got '{labels}'")
    api.parse_methods(methods)
    cfg = _resolve(dataset, labels, preset, num_eval, selection, seed, model)
    result = api.rank(
        dataset,
        ipc,
        methods,
        labels,
        cfg=cfg,
        data_root=data_root,
        quick=quick,
        out=out,
        resume=resume,
        log=_log(quiet),
    )
    for row in result["leaderboard"]:
        typer.echo(f"{row['method']:10s} LRS {row['LRS']}  ARS {row['ARS']}")
    typer.echo(f"report: {Path(result['out']) / 'report.html'}")


@app.command()
def score(
    images: Annotated[
        Path,
        typer.Option(
            "--images",
            help="A .pt/.safetensors tensor file or an image folder with one sub-folder per class.",
        ),
    ],
    dataset: Dataset = "digits",
    labels_file: Annotated[
        Path | None,
        typer.Option("--labels", help="Labels tensor file (if the images file has none)."),
    ] = None,
    soft_labels: Annotated[
        Path | None,
        typer.Option("--soft-labels", help="Stored teacher logits (N, K): soft-label mode S."),
    ] = None,
    teacher: Annotated[
        list[Path] | None,
        typer.Option("--teacher", help="Teacher checkpoint (state dict); repeat for several."),
    ] = None,
    label_regime: Annotated[str, typer.Option("--regime", help="hard or soft labels.")] = "hard",
    num_eval: Annotated[int | None, typer.Option("--num-eval", help="Seeded runs.")] = None,
    selection: Annotated[str | None, typer.Option("--selection", help="val or test.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    preset: Preset = None,
    model: Model = None,
    data_root: DataRoot = None,
    quick: Quick = False,
    out: Out = None,
    quiet: Quiet = False,
) -> None:
    """Score your own distilled set against random real subsets."""
    from lucidml.distill import api
    from lucidml.errors import InputError

    if label_regime not in ("hard", "soft"):
        raise InputError(f"--regime must be 'hard' or 'soft', got '{label_regime}'")
    if soft_labels is not None:
        label_regime = "soft"
    cfg = _resolve(dataset, label_regime, preset, num_eval, selection, seed, model)
    result = api.score(
        images,
        dataset,
        labels_file,
        soft_labels,
        [str(t) for t in teacher] if teacher else None,
        label_regime,
        cfg=cfg,
        data_root=data_root,
        quick=quick,
        out=out,
        log=_log(quiet),
    )
    typer.echo(
        f"LRS {result['lrs_mean']:.4f} ± {result['lrs_std']:.4f}  "
        f"ARS {result['ars_mean']:.4f} ± {result['ars_std']:.4f}"
    )
    typer.echo(f"report: {Path(result['out']) / 'report.html'}")
