"""``lucid editing``: parse dumps, build or import a benchmark, run a method, demo.

Options that set a config field default to None, so a ``--config`` file's value is
never replaced by a default; ``--help`` shows the effective default.
"""

from __future__ import annotations

import json
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

app = typer.Typer(no_args_is_help=True, help="WikiBigEdit: lifelong knowledge editing.")


@app.command()
def parse(
    dump: Annotated[
        Path | None,
        typer.Option(
            "--dump", help="Wikidata JSON dump (.json, .gz, .bz2).", show_default="the config's"
        ),
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    skip_bad_lines: Annotated[
        bool | None,
        typer.Option(
            "--skip-bad-lines/--stop-at-bad-lines",
            help="Skip malformed lines, or stop at the first.",
            show_default="stop",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(help="Worker processes per launched process.", show_default="1"),
    ] = None,
    best_rank: Annotated[
        bool | None,
        typer.Option(
            "--best-rank/--all-ranks",
            help="Keep only preferred statements when a property has any.",
            show_default="best-rank",
        ),
    ] = None,
    block_bytes: Annotated[
        int | None,
        typer.Option(help="Bytes of dump per work item.", show_default="4194304, 4 MiB"),
    ] = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Parse a dump into a snapshot folder (triples.parquet, labels.parquet).

    Shards over processes under `accelerate launch --num_processes N -m lucidml editing
    parse ... --out DIR`; the output does not depend on the number of processes.
    """
    start(quiet)
    from lucidml.editing import api
    from lucidml.editing.config import ParseConfig

    on_error = None if skip_bad_lines is None else ("skip" if skip_bad_lines else "stop")
    cfg = ParseConfig.from_cli(
        config,
        dump=str(dump) if dump else None,
        on_error=on_error,
        processes=processes,
        best_rank=best_rank,
        block_bytes=block_bytes,
    )
    folder, stats = api.parse(cfg, out, resume, overwrite)
    if stats is None:  # not the main process
        return
    skipped = stats["skipped_lines"]
    typer.echo(
        f"{stats['triples']} triples, {stats['labels']} labels -> {folder}"
        + (f" ({len(skipped)} malformed lines skipped)" if skipped else "")
    )


@app.command()
def build(
    old: Annotated[Path, typer.Option("--old", help="Old snapshot: dump file or parsed folder.")],
    new: Annotated[
        list[Path],
        typer.Option("--new", help="Newer snapshot(s), oldest first; repeat for more timesteps."),
    ],
    out: Out = None,
    config: ConfigFile = None,
    templates: Annotated[
        Path | None, typer.Option(help="JSON question templates.", show_default="bundled")
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            help="Causal LM for rephrasings and personas (e.g. smollm2-135m-instruct).",
            show_default="none: templates only",
        ),
    ] = None,
    llm_min_similarity: Annotated[
        float | None,
        typer.Option(
            help="LLM rewrites need this MiniLM cosine to the template (0: off).",
            show_default="0.75",
        ),
    ] = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Build benchmark timesteps from consecutive snapshots.

    --resume continues a killed build in --out: parsed snapshots and the question LLM's
    answers so far are reused.
    """
    start(quiet)
    from lucidml.editing import api
    from lucidml.editing.config import BuildConfig

    cfg = BuildConfig.from_cli(
        config,
        templates=str(templates) if templates else None,
        llm=llm,
        llm_min_similarity=llm_min_similarity,
        seed=seed,
        device=device,
    )
    folder, manifest = api.build([old, *new], out, cfg, resume=resume, overwrite=overwrite)
    from lucidml.editing.build import describe_sources

    for step in manifest["timesteps"]:
        typer.echo(
            f"timestep {step['timestep']}: {step['kept']} records of "
            f"{step['changes']} changes (dropped {json.dumps(step['dropped'])}); "
            f"reworded probes: {describe_sources(step.get('reworded_by', {}))}"
        )
    typer.echo(f"benchmark -> {folder}")


@app.command("import")
def import_(
    wikibigedit: Annotated[
        list[Path],
        typer.Option(
            "--wikibigedit",
            help="A timestep file of the released WikiBigEdit benchmark (JSON list of "
            "records); repeat, oldest first.",
        ),
    ],
    out: Out = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Turn the released WikiBigEdit files into a benchmark folder for `run --benchmark`."""
    start(quiet)
    from lucidml.editing import api

    folder, manifest = api.import_wikibigedit(wikibigedit, out, overwrite=overwrite)
    for step in manifest["timesteps"]:
        typer.echo(f"timestep {step['timestep']}: {step['kept']} records from {step['file']}")
    typer.echo(f"benchmark -> {folder}")


def _hparams(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--hparam '{item}' must look like key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def run(
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="ft, lora, lora_merge, rag, rome, memit, alphaedit.",
            show_default="lora",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Embedded name, folder or hub id.", show_default="smollm2-135m-instruct"
        ),
    ] = None,
    benchmark: Annotated[
        Path | None, typer.Option(help="Benchmark folder.", show_default="the embedded one")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option(
            help="Method hyperparameter key=value (JSON value), repeatable; added to the "
            "config's hparams.",
            show_default="the method's",
        ),
    ] = None,
    max_edits: Annotated[
        int | None, typer.Option(help="Edits per timestep.", show_default="all")
    ] = None,
    skip_known: Annotated[
        bool | None,
        typer.Option(
            "--skip-known/--edit-known",
            help="Skip edits the model already knows before their timestep.",
            show_default="edit-known",
        ),
    ] = None,
    save_model: Annotated[
        bool,
        typer.Option(
            "--save-model",
            help="Write what the method changed: model/ (safetensors), LoRA's "
            "adapter.safetensors, RAG's memory.json.",
        ),
    ] = False,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Apply the timesteps in order with one method, evaluating after each."""
    start(quiet)
    from lucidml.editing import api
    from lucidml.editing.config import RunConfig

    cli_hparams = _hparams(hparam or [])
    cfg = RunConfig.from_cli(
        config,
        method=method,
        model=model,
        benchmark=str(benchmark) if benchmark else None,
        max_edits=max_edits,
        skip_known=skip_known,
        seed=seed,
        device=device,
    )
    if cli_hparams:
        cfg = cfg.updated(hparams={**cfg.hparams, **cli_hparams})
    # checks everything before it writes
    results = api.run(cfg, out, resume=resume, overwrite=overwrite, save_model=save_model)
    means = {k: round(v, 3) for k, v in results["final"].items() if isinstance(v, float)}
    typer.echo(f"final: {json.dumps(means)}")  # the intervals and n are in results.json


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Every method on the embedded benchmark with SmolLM2; writes report.html.

    --quick runs LoRA against RAG on 4 edits per timestep.
    """
    run_demo("editing", out, quick, device, quiet, overwrite)
