"""``lucid bias``: check prompts, generate images, detect and label persons, analyze, demo.

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

app = typer.Typer(no_args_is_help=True, help="Perceived-gender audit of text-to-image models.")

PromptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--prompts", help="CSV/JSON prompt file.", show_default="the project's neutral set"
    ),
]


@app.command()
def prompts(
    prompt_file: PromptsOpt = None,
    out: Out = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Check a prompt set for gendered words (exit 2 if any); write prompts.csv and lint.csv."""
    start(quiet)
    from lucidml.bias import api

    table, folder = api.prompts_job(str(prompt_file) if prompt_file else None, out, overwrite)
    n_base = table["prompt_id"].nunique()
    typer.echo(f"{n_base} base prompts, {len(table)} phrasings, all neutral -> {folder}")


@app.command()
def generate(
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: simulated, simulated-amplified, or diffusers ids/folders.",
            show_default="simulated",
        ),
    ] = None,
    prompt_file: PromptsOpt = None,
    per_prompt: Annotated[
        int | None, typer.Option(help="Images per base prompt and model.", show_default="200")
    ] = None,
    n_prompts: Annotated[
        int | None,
        typer.Option(help="Only this many base prompts (spread over themes).", show_default="all"),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Sampler steps.", show_default="the model card's")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option(help="Guidance scale.", show_default="the model card's")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per pipeline call.", show_default="8")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Generate images per prompt and model; images/, parts/ and metadata.parquet.

    --resume regenerates only unfinished units (same seeds, same bytes); under
    `accelerate launch -m lucidml bias generate ...` units are sharded by process."""
    start(quiet)
    from lucidml.bias import api
    from lucidml.bias.config import GenerateConfig

    cfg = GenerateConfig.from_cli(
        config,
        models=models.split(",") if models else None,
        prompts=str(prompt_file) if prompt_file else None,
        per_prompt=per_prompt,
        n_prompts=n_prompts,
        steps=steps,
        guidance=guidance,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    manifest, folder = api.generate_job(cfg, out, resume=resume, overwrite=overwrite)
    if manifest is not None:
        typer.echo(f"{len(manifest)} images -> {folder}")


@app.command()
def detect(
    images: Annotated[
        Path | None, typer.Option(help="A generate run folder.", show_default="none")
    ] = None,
    detector: Annotated[
        str | None,
        typer.Option(help="components | torchvision:<arch>.", show_default="components"),
    ] = None,
    detector_weights: Annotated[
        Path | None,
        typer.Option(help="torchvision detector weights (offline).", show_default="none"),
    ] = None,
    labeller: Annotated[
        str | None,
        typer.Option(
            help="glyph-cnn | shape | clip:<vlm> | mllm:<model id>.", show_default="glyph-cnn"
        ),
    ] = None,
    conf: Annotated[
        float | None, typer.Option(help="Keep boxes above this confidence.", show_default="0.35")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Find persons and label their perceived gender: records.parquet, one row per image."""
    start(quiet)
    from lucidml.bias import api
    from lucidml.bias.config import DetectConfig

    cfg = DetectConfig.from_cli(
        config,
        images=str(images) if images else None,
        detector=detector,
        detector_weights=str(detector_weights) if detector_weights else None,
        labeller=labeller,
        conf=conf,
        seed=seed,
        device=device,
    )
    records, folder = api.detect_job(cfg, out, resume=resume, overwrite=overwrite)
    typer.echo(f"{len(records)} images, {int(records['n_persons'].sum())} persons -> {folder}")


@app.command()
def analyze(
    records: Annotated[
        Path | None, typer.Option(help="A detect run folder.", show_default="none")
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option(help="same_gender | single_person_only.", show_default="same_gender"),
    ] = None,
    n_min: Annotated[
        int | None,
        typer.Option(help="Kept images a prompt needs for concept means.", show_default="100"),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="minilm-l6, tfidf or a sentence-transformers model.", show_default="minilm-l6"
        ),
    ] = None,
    clusterer: Annotated[
        str | None, typer.Option(help="agglomerative | hdbscan.", show_default="agglomerative")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="CSV/Parquet prompt_id, female_ratio: amplification.", show_default="none"
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Filter, per-prompt ratios with Wilson intervals and binomial tests (BH), concepts
    with cluster-bootstrap intervals, categories, model comparison; writes the report."""
    start(quiet)
    from lucidml.bias import api
    from lucidml.bias.config import AnalyzeConfig

    cfg = AnalyzeConfig.from_cli(
        config,
        records=str(records) if records else None,
        rule=rule,
        n_min=n_min,
        embedder=embedder,
        clusterer=clusterer,
        reference=str(reference) if reference else None,
        seed=seed,
        device=device,
    )
    results, folder = api.analyze_job(cfg, out, overwrite=overwrite)
    for row in results["overall"]:
        typer.echo(f"{row['model']}: mean R_f {row['mean R_f']:.3f} {row['95% CI']}")
    typer.echo(f"-> {folder}")


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """The whole audit on two simulated models with planted ratios; writes report.html.
    --quick uses 40 prompts x 60 images."""
    run_demo("bias", out, quick, device, quiet, overwrite)
