"""``lucid chunking``: rnn | pa | graft | ucd (thin wrappers over ``lucidml.chunking.api``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucidml.chunking.config import GraftConfig, PAConfig, RNNConfig, UCDConfig
from lucidml.core.progress import set_verbosity

app = typer.Typer(no_args_is_help=True, help="Neural population chunking: DSC, PA, grafting, UCD.")

Out = Annotated[
    Path | None, typer.Option("--out", help="Run folder (default runs/chunking/<timestamp>).")
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config; flags given on the command line override it."),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Embedded name, local folder or hub id of a causal LM [smollm2-135m-instruct].",
    ),
]
Text = Annotated[
    Path | None,
    typer.Option("--text", help="UTF-8 text file (default: the built-in everyday corpus)."),
]
Layers = Annotated[
    str | None,
    typer.Option(
        "--layers", help="Comma-separated layer indices (hidden_states convention), e.g. 2,3,4."
    ),
]
Seed = Annotated[int | None, typer.Option("--seed")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or stage messages.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")]
Device = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | mps [cpu]")]


def _ints(text: str | None, what: str) -> list[int] | None:
    from lucidml.errors import InputError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got '{text}'") from None


def _base(cls, path: Path | None, **required):
    if path is not None:
        return cls.from_yaml(path)
    return cls.from_dict({k: v for k, v in required.items() if v is not None})


def _done(report: Path) -> None:
    typer.echo(f"report: {report.resolve()}")


@app.command()
def rnn(
    regime: Annotated[
        str | None,
        typer.Option(
            "--regime", help="one_chunk | several_chunks | probabilistic_chunks | hierarchy"
        ),
    ] = None,
    iters: Annotated[int | None, typer.Option("--iters", help="Training iterations.")] = None,
    window: Annotated[int | None, typer.Option("--window", help="Training window.")] = None,
    bins: Annotated[int | None, typer.Option("--bins", help="k-means levels per neuron.")] = None,
    nonlinearity: Annotated[
        str | None, typer.Option("--nonlinearity", help="linear | tanh")
    ] = None,
    graft_repeats: Annotated[int | None, typer.Option("--graft-repeats")] = None,
    seed: Seed = None,
    quiet: Quiet = False,
    config: ConfigFile = None,
    out: Out = None,
) -> None:
    """Train the Elman RNN on a planted-chunk regime and chunk its states (DSC)."""
    set_verbosity(quiet)
    from lucidml.chunking.api import rnn_job

    cfg = _base(RNNConfig, config).updated(
        regime=regime,
        n_iters=iters,
        window=window,
        bins=bins,
        nonlinearity=nonlinearity,
        graft_repeats=graft_repeats,
        seed=seed,
    )
    _done(rnn_job(cfg, out))


@app.command()
def pa(
    word: Annotated[str | None, typer.Option("--word", help="The word to template.")] = None,
    model: Model = None,
    text: Text = None,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Comma-separated steps (-2..2) [-2,-1,0,1,2].")
    ] = None,
    layers: Layers = None,
    n_train: Annotated[int | None, typer.Option("--n-train")] = None,
    select: Annotated[str | None, typer.Option("--select", help="accuracy | balanced")] = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    config: ConfigFile = None,
    out: Out = None,
) -> None:
    """Fit PA templates for a word per step and layer; score them on held-out sentences."""
    set_verbosity(quiet)
    from lucidml.chunking.api import pa_job

    cfg = _base(PAConfig, config, word=word).updated(
        model=model,
        device=device,
        steps=_ints(steps, "--steps"),
        layers=_ints(layers, "--layers"),
        n_train=n_train,
        select=select,
        seed=seed,
    )
    _done(pa_job(cfg, text, out))


@app.command()
def graft(
    word: Annotated[str | None, typer.Option("--word", help="The word to graft.")] = None,
    model: Model = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="One prompt per line (default: built-in prompts)."),
    ] = None,
    text: Text = None,
    templates: Annotated[
        Path | None,
        typer.Option("--templates", help="A templates folder written by `lucid chunking pa`."),
    ] = None,
    layers: Layers = None,
    positions: Annotated[
        str | None,
        typer.Option("--positions", help="Prompt positions to graft, e.g. -3,-2,-1 [-1]."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    config: ConfigFile = None,
    out: Out = None,
    resume: Resume = False,
) -> None:
    """Graft a word's templates into the prompt pass; compare word rates with a control."""
    set_verbosity(quiet)
    from lucidml.chunking.api import graft_job

    cfg = _base(GraftConfig, config, word=word).updated(
        model=model,
        device=device,
        layers=_ints(layers, "--layers"),
        positions=_ints(positions, "--positions"),
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    _done(graft_job(cfg, prompts, text, templates, out, resume))


@app.command()
def ucd(
    model: Model = None,
    text: Text = None,
    layers: Layers = None,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Number of chunks K.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    config: ConfigFile = None,
    out: Out = None,
    resume: Resume = False,
) -> None:
    """Learn unsupervised chunk embeddings (spherical k-means) per layer."""
    set_verbosity(quiet)
    from lucidml.chunking.api import ucd_job

    cfg = _base(UCDConfig, config).updated(
        model=model,
        device=device,
        layers=_ints(layers, "--layers"),
        n_chunks=chunks,
        epochs=epochs,
        seed=seed,
    )
    _done(ucd_job(cfg, text, out, resume))
