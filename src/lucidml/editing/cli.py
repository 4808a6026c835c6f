"""``lucid editing``: parse dumps, build a benchmark, run a method, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lucidml.errors import InputError

app = typer.Typer(no_args_is_help=True, help="WikiBigEdit: lifelong knowledge editing.")

Out = Annotated[Path | None, typer.Option("--out", help="Output folder.")]


@app.command()
def parse(
    dump: Annotated[Path, typer.Option("--dump", help="Wikidata JSON dump (.json, .gz, .bz2).")],
    out: Out = None,
    skip_bad_lines: Annotated[bool, typer.Option(help="Skip malformed lines, else stop.")] = False,
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    best_rank: Annotated[
        bool, typer.Option(help="Keep only preferred statements when a property has any.")
    ] = True,
) -> None:
    """Parse a dump into a snapshot folder (triples.parquet, labels.parquet)."""
    from lucidml.editing import api

    folder, stats = api.parse(dump, out, "skip" if skip_bad_lines else "stop", processes, best_rank)
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
    templates: Annotated[Path | None, typer.Option(help="JSON question templates.")] = None,
    seed: int = 0,
    llm: Annotated[
        str | None,
        typer.Option(help="Causal LM for rephrasings and personas (e.g. smollm2-135m-instruct)."),
    ] = None,
    llm_min_similarity: Annotated[
        float,
        typer.Option(help="LLM rewrites need this MiniLM cosine to the template (0: off)."),
    ] = 0.75,
) -> None:
    """Build benchmark timesteps from consecutive snapshots."""
    from lucidml.editing import api
    from lucidml.editing.config import BuildConfig
    from lucidml.editing.questions import Templates, TransformersQuestionLLM

    cfg = BuildConfig(
        templates=str(templates) if templates else None,
        seed=seed,
        llm_min_similarity=llm_min_similarity,
    )
    Templates.load(cfg.templates)
    question_llm = None
    if llm:
        from lucidml.core.zoo import load_llm

        question_llm = TransformersQuestionLLM(*load_llm(llm), name=llm)
    folder, manifest = api.build([old, *new], out, cfg, question_llm)
    for step in manifest["timesteps"]:
        typer.echo(
            f"timestep {step['timestep']}: {step['kept']} records of "
            f"{step['changes']} changes (dropped {json.dumps(step['dropped'])})"
        )
    typer.echo(f"benchmark -> {folder}")


@app.command()
def run(
    method: Annotated[
        str, typer.Option("--method", help="ft, lora, lora_merge, rag, rome, memit.")
    ] = "lora",
    model: Annotated[str, typer.Option("--model", help="Embedded name, folder or hub id.")] = (
        "smollm2-135m-instruct"
    ),
    benchmark: Annotated[
        Path | None, typer.Option(help="Benchmark folder; default: the embedded one.")
    ] = None,
    out: Out = None,
    config: Annotated[Path | None, typer.Option(help="YAML RunConfig.")] = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option(help="Method hyperparameter key=value (JSON value), repeatable."),
    ] = None,
    max_edits: Annotated[int | None, typer.Option(help="Edits per timestep.")] = None,
    skip_known: bool = False,
    resume: Annotated[bool, typer.Option(help="Continue a run in --out.")] = False,
    device: str = "cpu",
) -> None:
    """Apply the timesteps in order with one method, evaluating after each."""
    from lucidml.editing import api, methods
    from lucidml.editing.config import RunConfig

    cfg = RunConfig.from_yaml(config) if config else RunConfig()
    hp = dict(cfg.hparams)
    for item in hparam or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--hparam '{item}' must look like key=value")
        try:
            hp[key] = json.loads(value)
        except json.JSONDecodeError:
            hp[key] = value
    cfg = cfg.updated(
        method=method,
        model=model,
        hparams=hp,
        max_edits=max_edits,
        benchmark=str(benchmark) if benchmark else None,
        device=device,
        skip_known=skip_known or cfg.skip_known,
    )
    methods.get(cfg.method, **cfg.hparams)  # validate before anything is written
    if benchmark is not None:
        from lucidml.editing.build import load_benchmark

        load_benchmark(benchmark)
    if out is not None and (out / "checkpoints").is_dir() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it")

    def progress(t, row):
        typer.echo(
            f"timestep {t}: rewrite {row['rewrite']:.3f}  "
            f"loc {row.get('loc_gold', float('nan')):.3f}  past {row['past']:.3f}"
        )

    results = api.run(cfg, out, progress=progress)
    typer.echo(f"final: {json.dumps({k: round(v, 3) for k, v in results['final'].items()})}")


@app.command()
def demo(
    out: Out = None,
    quick: Annotated[bool, typer.Option(help="A few edits per timestep (minutes).")] = False,
) -> None:
    """Every method on the embedded benchmark with SmolLM2; writes report.html."""
    from lucidml.core.runs import make_run_dir
    from lucidml.editing import api

    path = api.demo(make_run_dir("editing", out), quick=quick)
    typer.echo(f"report -> {path}")
