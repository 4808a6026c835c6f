"""``lucid uncertainty``: fit a BayesVLM posterior, predict zero-shot, select support sets.

Options that set a config field default to None, so a value from ``--config`` is never
replaced by a default; ``--help`` shows the effective default.
"""

from __future__ import annotations

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

app = typer.Typer(
    no_args_is_help=True,
    help="BayesVLM: post-hoc Laplace uncertainty for CLIP/SigLIP and active support-set selection.",
)

Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="digits-clip, a Hugging Face id or a local CLIP/SigLIP folder.",
        show_default="digits-clip",
    ),
]
Hessian = Annotated[
    str | None,
    typer.Option(
        "--hessian",
        help="Folder written by `lucid uncertainty fit` (factors.safetensors, posterior.json).",
        show_default="required, unless --config names it",
    ),
]
Classes = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="UTF-8 text file with one class name per line, or 'digits'.",
        show_default="digits",
    ),
]


@app.command()
def fit(
    model: Model = None,
    pairs: Annotated[
        str | None,
        typer.Option(
            "--pairs",
            help="Folder with images.npy and captions.txt, or 'digits' (the digits train split).",
            show_default="digits",
        ),
    ] = None,
    damping: Annotated[
        str | None,
        typer.Option(
            help="split (scale split by marginal likelihood), split-reference (the "
            "reference's, convention-dependent) or eig (exact).",
            show_default="split",
        ),
    ] = None,
    compat_logdet: Annotated[
        bool | None,
        typer.Option(
            "--compat-logdet/--no-compat-logdet",
            help="Reproduce the reference's logdet term.",
            show_default="no-compat-logdet",
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Fit K-FAC factors on image-caption pairs and the prior precision by marginal likelihood."""
    start(quiet)
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import FitJobConfig

    cfg = FitJobConfig.from_cli(
        config, model=model, pairs=pairs, damping=damping, compat_logdet=compat_logdet, seed=seed
    )
    bvlm, path = api.fit(cfg, out, resume=resume, device=device, overwrite=overwrite)
    lam = bvlm.prior_precision
    typer.echo(f"prior precision: image {lam['image']:.4g}, text {lam['text']:.4g}")
    typer.echo(f"posterior: {path.resolve()}")


@app.command()
def zeroshot(
    hessian: Hessian = None,
    model: Model = None,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="Folder with images.npy (and optional labels.npy), or digits / digits-noise / "
            "digits-rotate / digits-invert (test split).",
            show_default="digits",
        ),
    ] = None,
    classes: Classes = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Labelled held-out images from the model's own distribution (folder with "
            "images.npy and labels.npy, or a digits name: train split); adds a "
            "temperature-scaling baseline fitted on them.",
            show_default="none",
        ),
    ] = None,
    predictive: Annotated[
        str | None,
        typer.Option(
            help="probit, mc (logit draws) or samples (weight draws through the cosine).",
            show_default="probit",
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Zero-shot class probabilities with BayesVLM uncertainty (metrics when labelled).
    One pass over the images, so there is nothing to --resume."""
    start(quiet)
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import ZeroshotJobConfig

    cfg = ZeroshotJobConfig.from_cli(
        config,
        hessian=hessian,
        model=model,
        images=images,
        classes=classes,
        calibration=calibration,
        predictive=predictive,
        seed=seed,
    )
    report = api.zeroshot(cfg, out, device=device, overwrite=overwrite)
    typer.echo(f"report: {report.resolve()}")


def _budget_list(budgets: str | None) -> list[int] | None:
    from lucidml.errors import InputError

    if budgets is None:
        return None
    try:
        return [int(b) for b in budgets.split(",")]
    except ValueError:
        raise InputError(f"--budgets '{budgets}' must be comma-separated integers") from None


@app.command()
def active(
    hessian: Hessian = None,
    model: Model = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Labelled pool: folder with images.npy and labels.npy, or a digits name "
            "(train split).",
            show_default="digits",
        ),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="Target images: folder or digits name (test split); labels enable the curves.",
            show_default="digits",
        ),
    ] = None,
    classes: Classes = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="random, entropy, bald or epig.", show_default="epig"),
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Support-set size.", show_default="50")] = None,
    select_on: Annotated[
        str | None,
        typer.Option(
            help="test (rank targets, map to the pool) or train (rank the pool).",
            show_default="test",
        ),
    ] = None,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated budgets for the curve, e.g. 10,20,50.",
            show_default="the --budget",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            help="Selection seeds to average (--seed, --seed + 1, ...).", show_default="1"
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Pick a support set from the pool for the targets, tune on it, report the curves.
    Each finished (budget, seed) row is checkpointed; --resume reuses unchanged ones."""
    start(quiet)
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import ActiveJobConfig

    cfg = ActiveJobConfig.from_cli(
        config,
        hessian=hessian,
        model=model,
        pool=pool,
        targets=targets,
        classes=classes,
        strategy=strategy,
        budget=budget,
        select_on=select_on,
        budgets=_budget_list(budgets),
        seeds=seeds,
        seed=seed,
    )
    report = api.active(cfg, out, resume=resume, device=device, overwrite=overwrite)
    typer.echo(f"report: {report.resolve()}")


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """digits-clip: MAP vs BayesVLM on clean and shifted digits, active-learning curves."""
    start(quiet)
    from lucidml.core.runs import run_dir_path
    from lucidml.uncertainty import api

    report = api.demo(
        run_dir_path("uncertainty", out), quick=quick, device=device, overwrite=overwrite
    )
    typer.echo(f"report: {report.resolve()}")
