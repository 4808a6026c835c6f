"""``lucid chunking``: rnn | pa | graft | ucd | demo (thin wrappers over ``lucidml.chunking.api``).

Options that set a config field default to None, so a value from ``--config`` is never
replaced by a default; ``--help`` shows the config's default instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucidml.chunking.config import REGIME_DEFAULTS, GraftConfig, PAConfig, RNNConfig, UCDConfig
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

app = typer.Typer(no_args_is_help=True, help="Neural population chunking: DSC, PA, grafting, UCD.")


def _default(cls, field: str) -> str:
    """A config field's default as ``--help`` shows it (lists comma-separated)."""
    value = cls.model_fields[field].default
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _per_regime(column: int) -> str:
    return "the regime's: " + ", ".join(f"{v[column]} {k}" for k, v in REGIME_DEFAULTS.items())


Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Embedded name, local folder or hub id of a causal LM.",
        show_default=_default(PAConfig, "model"),
    ),
]
Text = Annotated[
    Path | None,
    typer.Option(
        "--text",
        help="UTF-8 text file, split into sentences after . ? !",
        show_default="the built-in everyday corpus",
    ),
]
Word = Annotated[
    str | None,
    typer.Option("--word", help="The word (needed here or in --config).", show_default="none"),
]


def _layers(default: str) -> object:
    return typer.Option(
        "--layers",
        help="Comma-separated layer indices (hidden_states convention), e.g. 2,3,4.",
        show_default=default,
    )


def _ints(text: str | None, what: str) -> list[int] | None:
    from lucidml.errors import InputError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got '{text}'") from None


def _floats(text: str | None, what: str) -> list[float] | None:
    from lucidml.errors import InputError

    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _words(text: str | None) -> list[str] | None:
    return None if text is None else [w.strip() for w in text.split(",") if w.strip()]


def _positions(text: str | None):
    """'last', 'all' or comma-separated prompt indices."""
    if text is None or text.strip() in ("last", "all"):
        return None if text is None else text.strip()
    return _ints(text, "--positions (last, all or comma-separated integers)")


def _needs_word(word: str | None, config: Path | None) -> None:
    from lucidml.errors import InputError

    if word is None and config is None:
        raise InputError("--word is required (or give 'word' in a --config file)")


def _done(report: Path) -> None:
    typer.echo(f"report: {report.resolve()}")


@app.command()
def rnn(
    regime: Annotated[
        str | None,
        typer.Option(
            "--regime",
            help="one_chunk | several_chunks | probabilistic_chunks | hierarchy",
            show_default=_default(RNNConfig, "regime"),
        ),
    ] = None,
    iters: Annotated[
        int | None,
        typer.Option("--iters", help="Training iterations.", show_default=_per_regime(1)),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option("--window", help="Training window.", show_default=_per_regime(0)),
    ] = None,
    bins: Annotated[
        int | None,
        typer.Option("--bins", help="k-means levels per neuron.", show_default=_per_regime(2)),
    ] = None,
    nonlinearity: Annotated[
        str | None,
        typer.Option(
            "--nonlinearity",
            help="linear | tanh",
            show_default=_default(RNNConfig, "nonlinearity"),
        ),
    ] = None,
    graft_repeats: Annotated[
        int | None,
        typer.Option(
            "--graft-repeats",
            help="several_chunks: repeats of the graft test.",
            show_default=_default(RNNConfig, "graft_repeats"),
        ),
    ] = None,
    record_length: Annotated[
        int | None,
        typer.Option(
            "--record-length",
            help="Recorded steps that DSC chunks (clamped to the sequence).",
            show_default=_default(RNNConfig, "record_length"),
        ),
    ] = None,
    merge_rule: Annotated[
        str | None,
        typer.Option(
            "--merge-rule",
            help="DSC dictionary: association (pairs that co-occur above chance) | "
            "frequency (the paper's most frequent pairs).",
            show_default=_default(RNNConfig, "merge_rule"),
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Train the Elman RNN on a planted-chunk regime and chunk its states (DSC)."""
    start(quiet)
    from lucidml.chunking.api import rnn_job

    cfg = RNNConfig.from_cli(
        config,
        regime=regime,
        n_iters=iters,
        window=window,
        bins=bins,
        nonlinearity=nonlinearity,
        graft_repeats=graft_repeats,
        record_length=record_length,
        merge_rule=merge_rule,
        seed=seed,
        device=device,
    )
    _done(rnn_job(cfg, out, overwrite))


@app.command()
def pa(
    word: Word = None,
    model: Model = None,
    text: Text = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="Comma-separated steps (-2..2).",
            show_default=_default(PAConfig, "steps"),
        ),
    ] = None,
    layers: Annotated[str | None, _layers("every index 0..n")] = None,
    n_train: Annotated[
        int | None,
        typer.Option(
            "--n-train",
            help="Occurrences the template is fit on.",
            show_default=_default(PAConfig, "n_train"),
        ),
    ] = None,
    test_text: Annotated[
        Path | None,
        typer.Option(
            "--test-text",
            help="UTF-8 text the detectors are reported on (layer, tau and theta are "
            "chosen on the last sentences of --text).",
            show_default="the built-in test text (new contexts)",
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
    """Fit PA templates per step and layer; report them and baselines on a test text."""
    start(quiet)
    _needs_word(word, config)
    from lucidml.chunking.api import pa_job

    cfg = PAConfig.from_cli(
        config,
        word=word,
        model=model,
        device=device,
        steps=_ints(steps, "--steps"),
        layers=_ints(layers, "--layers"),
        n_train=n_train,
        seed=seed,
    )
    _done(pa_job(cfg, text, out, resume, overwrite, test_text))


@app.command()
def graft(
    word: Word = None,
    model: Model = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="One prompt per line.", show_default="the 48 built-in prompts"
        ),
    ] = None,
    text: Text = None,
    templates: Annotated[
        Path | None,
        typer.Option(
            "--templates",
            help="A templates folder written by `lucid chunking pa`.",
            show_default="fit templates of --step on --text",
        ),
    ] = None,
    layers: Annotated[str | None, _layers(_default(GraftConfig, "layers"))] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="replace: set the template's neurons to its mean (the paper); add: add a "
            "direction scaled to --strength of the residual norm.",
            show_default=_default(GraftConfig, "mode"),
        ),
    ] = None,
    direction: Annotated[
        str | None,
        typer.Option(
            "--direction",
            help="add: contrast (word mean minus the mean of other tokens) | template",
            show_default=_default(GraftConfig, "direction"),
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            "--strength",
            help="add: the fraction of the residual norm added at each position.",
            show_default=_default(GraftConfig, "strength"),
        ),
    ] = None,
    strengths: Annotated[
        str | None,
        typer.Option(
            "--strengths",
            help="add: a dose-response sweep, e.g. 0,0.1,0.2,0.3 (--strength included).",
            show_default="none",
        ),
    ] = None,
    positions: Annotated[
        str | None,
        typer.Option(
            "--positions",
            help="last | all | prompt indices, e.g. -3,-2,-1.",
            show_default=_default(GraftConfig, "positions"),
        ),
    ] = None,
    every_step: Annotated[
        bool | None,
        typer.Option(
            "--every-step/--prompt-only",
            help="Also inject on every generated token, or on the prompt pass only.",
            show_default="--every-step",
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            help="Templates of this step; +1 is the word about to be produced.",
            show_default=_default(GraftConfig, "step"),
        ),
    ] = None,
    concepts: Annotated[
        str | None,
        typer.Option(
            "--concepts",
            help="Comma-separated associated words to count.",
            show_default="the 10 words nearest to the word's unembedding row",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-new-tokens",
            help="Tokens sampled per continuation, in both arms.",
            show_default=_default(GraftConfig, "max_new_tokens"),
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
    """Inject a word's templates or direction while sampling; compare with a control."""
    start(quiet)
    _needs_word(word, config)
    from lucidml.chunking.api import graft_job

    cfg = GraftConfig.from_cli(
        config,
        word=word,
        model=model,
        device=device,
        layers=_ints(layers, "--layers"),
        mode=mode,
        direction=direction,
        strength=strength,
        strengths=_floats(strengths, "--strengths"),
        positions=_positions(positions),
        every_step=every_step,
        step=step,
        concepts=_words(concepts),
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    _done(graft_job(cfg, prompts, text, templates, out, resume, overwrite))


@app.command()
def ucd(
    model: Model = None,
    text: Text = None,
    layers: Annotated[str | None, _layers("the middle index, n // 2")] = None,
    chunks: Annotated[
        int | None,
        typer.Option(
            "--chunks", help="Number of chunks K.", show_default=_default(UCDConfig, "n_chunks")
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs", help="Training epochs.", show_default=_default(UCDConfig, "epochs")
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
    """Learn unsupervised chunk embeddings (spherical k-means) per layer."""
    start(quiet)
    from lucidml.chunking.api import ucd_job

    cfg = UCDConfig.from_cli(
        config,
        model=model,
        device=device,
        layers=_ints(layers, "--layers"),
        n_chunks=chunks,
        epochs=epochs,
        seed=seed,
    )
    _done(ucd_job(cfg, text, out, resume, overwrite))


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """RNN regimes, PA, grafting and UCD on the embedded SmolLM2; writes report.html."""
    start(quiet)
    from lucidml.chunking.api import demo as run
    from lucidml.core.runs import run_dir_path

    _done(run(run_dir_path("chunking", out), quick=quick, device=device, overwrite=overwrite))
