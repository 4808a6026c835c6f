"""``lucid sae``: extract activations, train an SAE, score it, steer with it, demo.

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

app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders for vision-language models.")

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        help="Activation store (or the run folder of lucid sae extract).", show_default="none"
    ),
]
SaeOpt = Annotated[
    Path | None,
    typer.Option(
        "--sae",
        help="SAE folder, ours or SAELens layout (or a train run folder).",
        show_default="none",
    ),
]
ImagesOpt = Annotated[
    str | None,
    typer.Option(
        help="Image folder, or digits-train / digits-test.", show_default="the store's images"
    ),
]


def _path(p: Path | None) -> str | None:
    return str(p) if p is not None else None


def _parse_layer(layer: str | None) -> int | str | None:
    if layer is None:
        return None
    return int(layer) if layer.lstrip("-").isdigit() else layer


@app.command()
def extract(
    model: Annotated[
        str | None,
        typer.Option(
            help="CLIP/SigLIP: embedded name, folder or hub id.", show_default="digits-clip"
        ),
    ] = None,
    images: Annotated[
        str | None,
        typer.Option(
            help="Image folder, or digits-train / digits-test.", show_default="digits-train"
        ),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            help="Vision block (0-based; its output), or -1 / proj for the projected embedding.",
            show_default="1",
        ),
    ] = None,
    tokens: Annotated[
        str | None, typer.Option(help="cls | random_k | mean | all.", show_default="cls")
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(help="random_k: distinct patch tokens per image.", show_default="2"),
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32 | float16 | bfloat16.", show_default="float32")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per forward.", show_default="256")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Store one layer's activations of an image set as memory-mapped safetensors shards.

    Under `accelerate launch -m lucidml sae extract ...` images are sharded by process."""
    start(quiet)
    from lucidml.sae import api
    from lucidml.sae.config import ExtractConfig

    cfg = ExtractConfig.from_cli(
        config,
        model=model,
        images=images,
        layer=_parse_layer(layer),
        tokens=tokens,
        k=k,
        dtype=dtype,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    store, folder = api.extract_job(cfg, out, overwrite=overwrite)
    typer.echo(f"{len(store)} rows of width {store.d} -> {folder / 'store'}")


@app.command()
def train(
    store: StoreOpt = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="relu | topk | batchtopk | matryoshka | jumprelu.", show_default="batchtopk"
        ),
    ] = None,
    expansion: Annotated[
        int | None, typer.Option(help="Latents per input dimension.", show_default="8")
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="Active latents per row.", show_default="20")
    ] = None,
    group_fractions: Annotated[
        str | None,
        typer.Option(
            help="Matryoshka group fractions, comma-separated, summing to 1.",
            show_default="0.0625,0.125,0.25,0.5625",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps.", show_default="110000")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per step.", show_default="4096")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate.", show_default="2e-4/sqrt(F/2^14)")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Train an SAE on a store; writes the SAE (SAELens layout) to <out>/sae.

    Checkpoints every checkpoint_every steps, so --resume continues a killed run."""
    start(quiet)
    from lucidml.sae import api
    from lucidml.sae.config import TrainJobConfig

    fractions = None
    if group_fractions is not None:
        try:
            fractions = [float(f) for f in group_fractions.split(",")]
        except ValueError:
            from lucidml.errors import InputError

            raise InputError(
                f"--group-fractions must be comma-separated numbers, got '{group_fractions}'"
            ) from None
    cfg = TrainJobConfig.from_cli(
        config,
        store=_path(store),
        kind=kind,
        expansion=expansion,
        k=k,
        group_fractions=fractions,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
    )
    sae, folder = api.train_job(cfg, out, resume=resume, overwrite=overwrite)
    v = sae.validation
    typer.echo(f"FVE {v['fve']:.3f}, L0 {v['l0']:.2f} on held-out rows -> {folder / 'sae'}")


@app.command()
def score(
    sae: SaeOpt = None,
    store: StoreOpt = None,
    images: ImagesOpt = None,
    embed_model: Annotated[
        str | None,
        typer.Option(
            help="Encoder MS compares images with: pixels, or a CLIP/SigLIP.",
            show_default="pixels for digits, else openai/clip-vit-base-patch32",
        ),
    ] = None,
    taxonomy: Annotated[
        Path | None,
        typer.Option(
            help="JSON {image id: 'a/b/c'} for hierarchy depth.",
            show_default="the image folders (digits: parity/shape/digit)",
        ),
    ] = None,
    hai_k: Annotated[
        int | None, typer.Option(help="Top images per latent.", show_default="16")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Reconstruction, MS of SAE latents vs raw neurons vs a random dictionary, top
    images, uniqueness and hierarchy depth per Matryoshka group."""
    start(quiet)
    from lucidml.sae import api
    from lucidml.sae.config import ScoreConfig

    cfg = ScoreConfig.from_cli(
        config,
        sae=_path(sae),
        store=_path(store),
        images=images,
        embed_model=embed_model,
        taxonomy=_path(taxonomy),
        hai_k=hai_k,
        seed=seed,
        device=device,
    )
    results, folder = api.score_job(cfg, out, overwrite=overwrite)
    for encoder, rows in results["monosemanticity"].items():
        live = ", ".join(
            f"{r['latents']} {r['MS live']:.3f}" for r in rows if r["MS live"] is not None
        )
        typer.echo(f"MS of live latents ({encoder}): {live}")
    typer.echo(f"-> {folder}")


@app.command()
def steer(
    sae: SaeOpt = None,
    store: StoreOpt = None,
    images: Annotated[
        str | None,
        typer.Option(
            help="Images to steer: folder, or digits-train / digits-test.",
            show_default="digits-test for digits stores",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="The VLM to steer.", show_default="the store's model")
    ] = None,
    latents: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated latent indices.", show_default="the 4 purest live latents"
        ),
    ] = None,
    alphas: Annotated[
        str | None,
        typer.Option(help="Comma-separated clamp values.", show_default="0,1,2,4,8"),
    ] = None,
    alpha_scale: Annotated[
        str | None,
        typer.Option(
            help="max (alphas multiply the latent's largest activation) | absolute.",
            show_default="max",
        ),
    ] = None,
    keep_error: Annotated[
        bool | None,
        typer.Option(
            "--keep-error/--no-error",
            help="Add the SAE's reconstruction error back.",
            show_default="keep-error",
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Clamp SAE latents in the vision tower; score where the steered images move."""
    start(quiet)
    from lucidml.sae import api
    from lucidml.sae.config import SteerConfig

    cfg = SteerConfig.from_cli(
        config,
        sae=_path(sae),
        store=_path(store),
        images=images,
        model=model,
        latents=_numbers(latents, int, "--latents"),
        alphas=_numbers(alphas, float, "--alphas"),
        alpha_scale=alpha_scale,
        keep_error=keep_error,
        seed=seed,
        device=device,
    )
    results, folder = api.steer_job(cfg, out, overwrite=overwrite)
    typer.echo(f"steered latents {results['latents']} -> {folder}")


def _numbers(text: str | None, kind, option: str):
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        from lucidml.errors import InputError

        raise InputError(f"{option} must be comma-separated numbers, got '{text}'") from None


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """digits-clip on digits: a Matryoshka SAE, MS vs neurons, group depth in a digit
    taxonomy, steering; writes report.html. --quick trains fewer steps."""
    run_demo("sae", out, quick, device, quiet, overwrite)
