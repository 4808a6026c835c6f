"""``lucid uncertainty``: fit a BayesVLM posterior, predict zero-shot, select support sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucidml.core.runs import make_run_dir

app = typer.Typer(
    no_args_is_help=True,
    help="BayesVLM: post-hoc Laplace uncertainty for CLIP/SigLIP and active support-set selection.",
)

Model = Annotated[
    str,
    typer.Option("--model", help="digits-clip, a Hugging Face id or a local CLIP/SigLIP folder."),
]
Out = Annotated[
    Path | None, typer.Option("--out", help="Run folder (default runs/uncertainty/<timestamp>).")
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="YAML with config fields; command-line options override it."),
]
Hessian = Annotated[
    Path,
    typer.Option(
        "--hessian",
        help="Folder written by `lucid uncertainty fit` (factors.safetensors, posterior.json).",
    ),
]
Classes = Annotated[
    str, typer.Option("--classes", help="Text file with one class name per line, or 'digits'.")
]


def _config(cls, path: Path | None, **overrides):
    base = cls.from_yaml(path) if path is not None else cls()
    return base.updated(**overrides)


@app.command()
def fit(
    model: Model = "digits-clip",
    pairs: Annotated[
        str,
        typer.Option(
            "--pairs",
            help="Folder with images.npy and captions.txt, or 'digits' (the digits train split).",
        ),
    ] = "digits",
    out: Out = None,
    config: ConfigFile = None,
    damping: Annotated[str | None, typer.Option(help="split (reference) or eig.")] = None,
    compat_logdet: Annotated[
        bool | None,
        typer.Option(
            "--compat-logdet/--no-compat-logdet", help="Reproduce the reference's logdet term."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted fit in --out from its last batch."),
    ] = False,
) -> None:
    """Fit K-FAC factors on image-caption pairs and the prior precision by marginal likelihood."""
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import PosteriorConfig

    cfg = _config(PosteriorConfig, config, damping=damping, compat_logdet=compat_logdet)
    bvlm, path = api.fit(model, pairs, out, cfg, resume=resume)
    lam = bvlm.prior_precision
    typer.echo(f"prior precision: image {lam['image']:.4g}, text {lam['text']:.4g}")
    typer.echo(f"posterior: {path.resolve()}")


@app.command()
def zeroshot(
    hessian: Hessian,
    model: Model = "digits-clip",
    images: Annotated[
        str,
        typer.Option(
            "--images",
            help="Folder with images.npy (and optional "
            "labels.npy), or digits / digits-noise / digits-rotate / "
            "digits-invert.",
        ),
    ] = "digits",
    classes: Classes = "digits",
    out: Out = None,
    config: ConfigFile = None,
    predictive: Annotated[str | None, typer.Option(help="probit (default) or mc.")] = None,
) -> None:
    """Zero-shot class probabilities with BayesVLM uncertainty (metrics when labelled)."""
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import PredictConfig

    cfg = _config(PredictConfig, config, predictive=predictive)
    report = api.zeroshot(model, hessian, images, classes, out, cfg)
    typer.echo(f"report: {report.resolve()}")


@app.command()
def active(
    hessian: Hessian,
    model: Model = "digits-clip",
    pool: Annotated[
        str,
        typer.Option(
            "--pool",
            help="Labelled pool: folder with images.npy and "
            "labels.npy, or a digits name (train split).",
        ),
    ] = "digits",
    targets: Annotated[
        str,
        typer.Option(
            "--targets",
            help="Target images: folder or digits name (test split); labels enable the curves.",
        ),
    ] = "digits",
    classes: Classes = "digits",
    strategy: Annotated[str | None, typer.Option(help="random, entropy, bald or epig.")] = None,
    budget: Annotated[int | None, typer.Option(help="Support-set size.")] = None,
    select_on: Annotated[
        str | None,
        typer.Option(help="test (rank targets, map to the pool) or train (rank the pool)."),
    ] = None,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated budgets for the curve, e.g. 10,20,50 (default: --budget)."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Selection seeds to average.")] = 1,
    out: Out = None,
    config: ConfigFile = None,
) -> None:
    """Pick a support set from the pool for the targets, tune on it, report the curves."""
    from lucidml.errors import InputError
    from lucidml.uncertainty import api
    from lucidml.uncertainty.config import ActiveConfig

    cfg = _config(ActiveConfig, config, strategy=strategy, budget=budget, select_on=select_on)
    try:
        budget_list = [int(b) for b in budgets.split(",")] if budgets else None
    except ValueError:
        raise InputError(f"--budgets '{budgets}' must be comma-separated integers") from None
    if budget_list and (min(budget_list) <= 0 or max(budget_list) > cfg.budget):
        raise InputError(f"--budgets must lie in 1..{cfg.budget} (the --budget)")
    report = api.active(model, hessian, pool, targets, classes, out, cfg, budget_list, seeds)
    typer.echo(f"report: {report.resolve()}")


@app.command()
def demo(
    out: Out = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer budgets and epochs.")] = False,
) -> None:
    """digits-clip: MAP vs BayesVLM on clean and shifted digits, active-learning curves."""
    from lucidml.uncertainty import api

    report = api.demo(make_run_dir("uncertainty", out), quick=quick)
    typer.echo(f"report: {report.resolve()}")
