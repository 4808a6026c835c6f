"""``lucid datagen``: fit per-shot LoRAs, generate with fused pairs, evaluate, demo.

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

app = typer.Typer(
    no_args_is_help=True, help="LoFT: LoRA-fused training-data generation from few shots."
)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="digits-diffusion, or a diffusers Stable Diffusion pipeline id or folder.",
        show_default="digits-diffusion",
    ),
]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        help="Prompt template with {class} and {domain}.",
        show_default="a {domain}photo of a {class}",
    ),
]
DomainOpt = Annotated[
    str | None,
    typer.Option(help="Domain word with its trailing space, e.g. 'pet '.", show_default="''"),
]


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    from lucidml.errors import InputError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--weights takes comma-separated numbers, got '{text}'") from None


@app.command("fit-loras")
def fit_loras(
    images: Annotated[
        str | None,
        typer.Option(
            help="Folder with one sub-folder per class, or 'digits'.", show_default="digits"
        ),
    ] = None,
    model: ModelOpt = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="loft (one LoRA per shot) | datadream-cls (per class) | datadream-dset (one).",
            show_default="loft",
        ),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(
            help="Shots per class (sorted ids; digits: a seeded choice).", show_default="4"
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Steps per LoRA.", show_default="600 (loft), 200 epochs (datadream)"),
    ] = None,
    rank: Annotated[
        int | None, typer.Option(help="LoRA rank (alpha = rank).", show_default="2 (loft), 16")
    ] = None,
    template: TemplateOpt = None,
    domain: DomainOpt = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Fit one LoRA per real image (LoFT) or DataDream's per-class / per-dataset LoRA.

    Adapters already written are kept, so --resume continues a killed run; under
    `accelerate launch -m lucidml datagen fit-loras ...` the adapters are sharded by process."""
    start(quiet)
    from lucidml.datagen import api
    from lucidml.datagen.config import FitConfig

    cfg = FitConfig.from_cli(
        config,
        images=images,
        model=model,
        method=method,
        shots=shots,
        template=template,
        domain=domain,
        seed=seed,
        device=device,
    )
    if steps is not None or rank is not None:
        base = cfg.adapter_config(1) if cfg.adapter is None else cfg.adapter
        changes = {"steps": steps} if steps is not None else {}
        if rank is not None:
            changes.update(rank=rank, alpha=float(rank))
        cfg = cfg.updated(adapter=base.updated(**changes))
    folder = api.fit_job(cfg, out, resume=resume, overwrite=overwrite)
    typer.echo(f"adapters -> {folder / 'loras'}")


@app.command()
def generate(
    loras: Annotated[
        Path | None,
        typer.Option(help="The run folder of lucid datagen fit-loras.", show_default="none"),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="loft | datadream-cls | datadream-dset (the folder's adapters) | plain.",
            show_default="loft",
        ),
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Images per class.", show_default="100")
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="Adapters fused per image.", show_default="2")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Fusion weights, comma-separated, k of them.", show_default="1/k each"),
    ] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale.", show_default="2.0")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps.", show_default="50")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Base model.", show_default="the model the adapters were fitted on"),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Generate images per class, each from a fused subset of that class's adapters.

    Every image has its own seed, so --resume draws exactly the missing ones; under
    `accelerate launch -m lucidml datagen generate ...` the images are sharded by process."""
    start(quiet)
    from lucidml.datagen import api
    from lucidml.datagen.config import GenerateConfig

    cfg = GenerateConfig.from_cli(
        config,
        loras=str(loras) if loras is not None else None,
        method=method,
        per_class=per_class,
        k=k,
        weights=_floats(weights),
        guidance=guidance,
        steps=steps,
        model=model,
        seed=seed,
        device=device,
    )
    folder = api.generate_job(cfg, out, resume=resume, overwrite=overwrite)
    typer.echo(f"images -> {folder / 'images'}, manifest -> {folder / api.METADATA}")


@app.command()
def evaluate(
    synthetic: Annotated[
        Path | None,
        typer.Option(help="The run folder of lucid datagen generate.", show_default="none"),
    ] = None,
    real_test: Annotated[
        str | None,
        typer.Option(
            help="Real test images: a folder per class, or 'digits'.", show_default="digits"
        ),
    ] = None,
    shots: Annotated[
        Path | None,
        typer.Option(
            help="The fit-loras run folder: its shots give the real-shots baseline and the "
            "near-duplicate rate.",
            show_default="the one the images were generated from",
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Classifier seeds to average.", show_default="3")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Classifier epochs.", show_default="30")
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Image features for FD/PRDC: a CLIP model, or pixels.", show_default="digits-clip"
        ),
    ] = None,
    classifier_model: Annotated[
        str | None,
        typer.Option(
            "--classifier",
            help="convnet (from scratch) | clip (the encoder with LoRA on q/v, cosine logits).",
            show_default="convnet",
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
    """Train a classifier on the synthetic images, test it on real ones; FD, PRDC and the
    near-duplicate rate on digits-clip image features."""
    start(quiet)
    from lucidml.datagen import api
    from lucidml.datagen.config import EvaluateJobConfig

    cfg = EvaluateJobConfig.from_cli(
        config,
        synthetic=str(synthetic) if synthetic is not None else None,
        real_test=real_test,
        shots=str(shots) if shots is not None else None,
        seeds=seeds,
        encoder=encoder,
        classifier_model=classifier_model,
        seed=seed,
        device=device,
    )
    if epochs is not None:  # a classifier field: set it on the (possibly file-given) classifier
        cfg = cfg.updated(classifier=cfg.classifier.updated(epochs=epochs))
    folder = api.evaluate_job(cfg, out, resume=resume, overwrite=overwrite)
    typer.echo(f"report -> {folder / 'report.html'}")


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Digits end to end: 4 shots per class, LoFT vs DataDream vs plain prompts."""
    run_demo("datagen", out, quick, device, quiet, overwrite)
