"""``lucid feasibility``: FLM scores, the embedding baseline, open-world CZSL, demo.

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

app = typer.Typer(no_args_is_help=True, help="FLM: LLM feasibility for open-world CZSL.")

VocabOpt = Annotated[
    Path | None,
    typer.Option(
        "--vocab",
        help="One JSON with states, objects, seen (and feasible) pairs.",
        show_default="none",
    ),
]
StatesOpt = Annotated[
    Path | None,
    typer.Option("--states", help="States, one per line (or a JSON list).", show_default="none"),
]
ObjectsOpt = Annotated[
    Path | None,
    typer.Option("--objects", help="Objects, one per line (or a JSON list).", show_default="none"),
]
SeenOpt = Annotated[
    Path | None,
    typer.Option(
        "--seen",
        help="Seen (training) pairs: 'state object' lines, CSV state,object, or JSON.",
        show_default="none",
    ),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="Feasible pairs (same formats as --seen): adds ROC-AUC and a ROC figure.",
        show_default="none",
    ),
]


def _vocab_fields(vocab, states, objects, seen, labels) -> dict:
    return {
        k: str(v) if v is not None else None
        for k, v in {
            "vocab": vocab,
            "states": states,
            "objects": objects,
            "seen": seen,
            "labels": labels,
        }.items()
    }


@app.command()
def score(
    vocab: VocabOpt = None,
    states: StatesOpt = None,
    objects: ObjectsOpt = None,
    seen: SeenOpt = None,
    labels: LabelsOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Causal LM: embedded name, folder or hub id.", show_default="smollm2-135m-instruct"
        ),
    ] = None,
    n_examples: Annotated[
        int | None, typer.Option(help="In-context seen pairs per query.", show_default="8")
    ] = None,
    n_negatives: Annotated[
        int | None,
        typer.Option(help="Known-infeasible 'No' examples per query.", show_default="2"),
    ] = None,
    score_type: Annotated[
        str | None,
        typer.Option(
            "--score", help="yes_logit | log_odds | yes_prob | log_p_yes.", show_default="yes_logit"
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Sentence encoder ranking the examples by name similarity.",
            show_default="none: seeded order",
        ),
    ] = None,
    chat: Annotated[
        bool | None,
        typer.Option("--chat/--plain", help="Use the model's chat template.", show_default="plain"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Prompts per forward.", show_default="32")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Score every unseen pair of a vocabulary; write the table and its KG-SP, CSP,
    czsl and CSV exports.

    Answer logits are stored per object, so --resume continues a killed run; under
    `accelerate launch -m lucidml feasibility score ...` objects are sharded.
    """
    start(quiet)
    from lucidml.feasibility import api
    from lucidml.feasibility.config import ScoreConfig

    cfg = ScoreConfig.from_cli(
        config,
        **_vocab_fields(vocab, states, objects, seen, labels),
        model=model,
        n_examples=n_examples,
        n_negatives=n_negatives,
        score=score_type,
        encoder=encoder,
        chat=chat,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    table, folder = api.score(cfg, out, resume=resume, overwrite=overwrite)
    if table is not None:
        typer.echo(f"{int((~table.seen).sum())} pairs scored -> {folder}")


@app.command()
def baseline(
    vocab: VocabOpt = None,
    states: StatesOpt = None,
    objects: ObjectsOpt = None,
    seen: SeenOpt = None,
    labels: LabelsOpt = None,
    encoder: Annotated[
        str | None, typer.Option(help="Sentence encoder.", show_default="minilm-l6")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """CompCos word-embedding feasibility for a vocabulary, in the same files as score."""
    start(quiet)
    from lucidml.feasibility import api
    from lucidml.feasibility.config import BaselineConfig

    cfg = BaselineConfig.from_cli(
        config,
        **_vocab_fields(vocab, states, objects, seen, labels),
        encoder=encoder,
        seed=seed,
        device=device,
    )
    _, folder = api.baseline(cfg, out, overwrite=overwrite)
    typer.echo(f"baseline scores -> {folder}")


@app.command()
def czsl(
    features: Annotated[
        Path | None,
        typer.Option(
            help="safetensors: train_x/val_x/test_x features and train_pair/val_pair/test_pair.",
            show_default="none",
        ),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="JSON: states, objects, seen (and feasible, for an oracle mask).",
            show_default="none",
        ),
    ] = None,
    feasibility: Annotated[
        list[Path] | None,
        typer.Option(
            help="A feasibility run folder (score or baseline) to mask with; repeat for more.",
            show_default="none: no mask only",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps per head.", show_default="300")
    ] = None,
    out: Out = None,
    config: ConfigFile = None,
    seed: Seed = None,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """Open-world CZSL on precomputed features: CompCos and KG-SP heads, hard masks with
    the threshold chosen on validation AUC, czsl's evaluator on the test split."""
    start(quiet)
    from lucidml.feasibility import api
    from lucidml.feasibility.config import CzslConfig

    cfg = CzslConfig.from_cli(
        config,
        features=str(features) if features else None,
        pairs=str(pairs) if pairs else None,
        feasibility=[str(p) for p in feasibility] if feasibility else None,
        steps=steps,
        seed=seed,
        device=device,
    )
    rows, folder = api.czsl(cfg, out, overwrite=overwrite)
    for r in rows:
        typer.echo(f"{r['kind']:8s} {r['mask']:12s} AUC {r['auc']:.3f}  best HM {r['best_hm']:.3f}")
    typer.echo(f"-> {folder}")


@app.command()
def demo(
    out: Out = None,
    quick: Quick = False,
    device: Device = None,
    quiet: Quiet = False,
    overwrite: Overwrite = False,
) -> None:
    """FLM with SmolLM2 vs the MiniLM baseline on the project's labelled vocabulary, and
    the open-world benchmark with no, baseline, FLM and oracle masks; writes report.html.

    --quick trains the open-world heads for fewer steps.
    """
    run_demo("feasibility", out, quick, device, quiet, overwrite)
