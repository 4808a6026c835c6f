"""Public jobs: merge checkpoints from a YAML config, run TIME recipes, the demo.

from lucidml.merging import merge
merged = merge("ties", base, [expert_a, expert_b], density=0.5, lam=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lucidml.core import metrics
from lucidml.core.config import resolve_device, seed_everything
from lucidml.core.progress import get_logger
from lucidml.core.report import Report
from lucidml.core.runs import Run, claim, digest, environment, run_dir_path, write_json
from lucidml.errors import InputError
from lucidml.merging import plots, tasks, timeline
from lucidml.merging.config import MergeConfig, RecipeSpec, TimelineConfig
from lucidml.merging.io import merge_checkpoints

SYSTEM = "merging"
log = get_logger(SYSTEM)
SEEDED_METHODS = ("dare_linear", "dare_ties", "random")


# --- merge ----------------------------------------------------------------------------------


def merge_models(
    config: MergeConfig,
    out: str | Path | None = None,
    device: str | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> Path:
    """`lucid merging merge`: the config's models merged tensor by tensor into a loadable
    model folder (``out``, else the config's ``out``, else a new run folder). Relative
    model paths are relative to the current directory, as in mergekit."""
    params = dict(config.parameters)
    if seed is not None:
        if config.method not in SEEDED_METHODS:
            raise InputError(
                f"--seed sets the random draws of {', '.join(SEEDED_METHODS)}; "
                f"method '{config.method}' draws nothing"
            )
        params["seed"] = seed
    target = Path(out) if out is not None else config.out or run_dir_path(SYSTEM, None)
    return merge_checkpoints(
        config.method,
        config.base,
        config.experts,
        out=target,
        weights=config.weights,
        dtype=config.dtype,
        shard_size=config.shard_size,
        device=resolve_device(device),
        overwrite=overwrite,
        **params,
    )


# --- TIME -----------------------------------------------------------------------------------


def shared_trainer(train_fn):
    """``train_fn`` with its experts remembered by (init weights, task): recipes that
    differ only in their deploy strategy train the same experts, so each is trained once."""
    experts: dict[str, Any] = {}

    def train(init_state, task):
        key = digest(task.name, *(init_state[k] for k in sorted(init_state)))
        if key not in experts:
            experts[key] = train_fn(init_state, task)
        return experts[key]

    train.n_trained = lambda: len(experts)
    return train


def recipe_name(spec: RecipeSpec) -> str:
    extra = "" if spec.weighting == "uniform" else f", {spec.weighting}"
    return f"{spec.init}/{spec.deploy} ({spec.method}{extra})"


def summarize(rows: Sequence[dict], n_test: dict[str, int]) -> dict:
    """Final and mean-over-t KA, ZS and GM of one recipe, with 95% Wilson intervals of
    the final KA and ZS over the pooled test images (sampling of test images only: one
    training seed)."""
    last = rows[-1]
    seen = [name for name in last["adaptation"]][: last["t"]]

    def pooled(accs: dict[str, float], names: Sequence[str]) -> list[float]:
        k = sum(round(accs[n] * n_test[n]) for n in names)
        return list(metrics.wilson_interval(k, sum(n_test[n] for n in names)))

    return {
        "final_ka": last["ka"],
        "final_ka_ci95": pooled(last["adaptation"], seen),
        "final_zs": last["zs"],
        "final_zs_ci95": pooled(last["heldout"], list(last["heldout"])),
        "final_gm": last["gm"],
        "mean_ka": float(np.mean([r["ka"] for r in rows[1:]])),
        "mean_zs": float(np.mean([r["zs"] for r in rows[1:]])),
        "mean_gm": float(np.mean([r["gm"] for r in rows[1:]])),
        "ka_after_task_1": rows[1]["ka"],
        "zero_shot_ka": rows[0]["ka"],
        "zero_shot_zs": rows[0]["zs"],
    }


def run_recipes(
    cfg: TimelineConfig, run: Run | None, device: str, recipes: Sequence[RecipeSpec]
) -> dict[str, dict]:
    """Every recipe over the config's stream; experts are shared between recipes with
    equal inits, and (with a run folder) checkpointed per step for ``--resume``."""
    from lucidml.core.zoo import load_vlm

    vlm = load_vlm(cfg.model, device=device)
    stream = tasks.digits_stream(adaptation=cfg.adaptation, heldout=cfg.heldout, seed=cfg.seed)
    train = shared_trainer(
        tasks.make_trainer(
            vlm,
            steps=cfg.steps,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            loss=cfg.loss,
            finetune=cfg.finetune,
            lora_rank=cfg.lora_rank,
        )
    )
    evaluate = tasks.make_evaluator(vlm, stream.adaptation, stream.heldout)
    base = tasks.model_state(vlm)
    n_test = {d.name: len(d.test_y) for d in (*stream.adaptation, *stream.heldout)}
    out: dict[str, dict] = {}
    for spec in recipes:
        name = recipe_name(spec)
        log.info("TIME recipe %s over %d tasks", name, len(stream.adaptation))

        def record(row, name=name):
            if run is not None:
                run.log_metrics({"recipe": name, **row})

        rows = timeline.run_timeline(
            base,
            stream.adaptation,
            train,
            evaluate,
            init=spec.init,
            deploy=spec.deploy,
            method=spec.method,
            weights=spec.weights,
            params=spec.params,
            weighting=spec.weighting,
            include_base=spec.include_base,
            on_task=record,
            checkpoint_dir=None if run is None else run / "steps",
        )
        out[name] = {"spec": spec.model_dump(), "rows": rows, **summarize(rows, n_test)}
    log.info("%d experts trained for %d recipes", train.n_trained(), len(recipes))
    return out


def _report(
    report: Report, results: dict[str, dict], heatmap: bool = True, prefix: str = ""
) -> None:
    table = [
        {
            "recipe": name,
            "final KA": r["final_ka"],
            "KA 95% CI": _interval(r["final_ka_ci95"]),
            "final ZS": r["final_zs"],
            "ZS 95% CI": _interval(r["final_zs_ci95"]),
            "final GM": r["final_gm"],
            "mean GM over t": r["mean_gm"],
            "KA after task 1": r["ka_after_task_1"],
        }
        for name, r in results.items()
    ]
    report.table(table)
    report.figure(plots.curves_figure(results), f"{prefix}curves", "KA, ZS and GM after each task.")
    report.figure(plots.plane_figure(results), f"{prefix}ka_zs_plane", "Final KA against final ZS.")
    if heatmap:
        report.figure(
            plots.heatmap_figure(results), f"{prefix}init_deploy_gm", "Final GM, init x deploy."
        )


def _interval(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def run_timeline_job(
    config: TimelineConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[dict[str, dict], Path]:
    """`lucid merging timeline`: the config's recipes over the digits task stream; each
    step's expert and metrics are checkpointed, so ``resume`` continues a killed run."""
    cfg = config or TimelineConfig()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    tasks.check_stream(cfg.adaptation, cfg.heldout)  # before any model loads
    run = Run(SYSTEM, out, cfg, resume=resume, overwrite=overwrite)
    (run / "metrics.jsonl").unlink(missing_ok=True)  # rows are re-emitted on resume
    results = run_recipes(cfg, run, device, cfg.recipes)
    write_json(
        run / "results.json",
        {
            "recipes": {n: {k: v for k, v in r.items() if k != "rows"} for n, r in results.items()},
            "environment": environment(device, cfg.seed),
        },
    )
    report = Report("TIME: temporal model merging")
    report.text(_stream_text(cfg))
    _report(report, results, heatmap=_is_grid(cfg.recipes))
    report.save(run.path)
    return results, run.path


def _is_grid(recipes: Sequence[RecipeSpec]) -> bool:
    return len({r.init for r in recipes}) > 1 and len({r.deploy for r in recipes}) > 1


def _stream_text(cfg: TimelineConfig) -> str:
    return (
        f"Base model {cfg.model}; adaptation tasks in order: {', '.join(cfg.adaptation)}; "
        f"held out: {', '.join(cfg.heldout)}. Each expert trains {cfg.steps} AdamW steps of "
        f"{cfg.batch_size} images (lr {cfg.lr}), the same budget for every recipe. KA_t is the "
        "mean zero-shot accuracy over the tasks seen so far (over all tasks at t = 0), ZS_t "
        "over the held-out sets, GM_t = sqrt(KA_t ZS_t). One training seed: intervals cover "
        "the sampling of test images only."
    )


# --- demo -----------------------------------------------------------------------------------

GRID_INITS = ("base", "latest", "ema0")
GRID_DEPLOYS = ("latest", "merge_all", "ema0")
TECHNIQUES = {
    "linear": {},
    "task_arithmetic": {"lam": 0.8},  # TIME's offline lambda
    "ties": {"lam": 0.8, "density": 0.8},
    "magmax": {"lam": 0.8},
}


def demo(
    out_dir: str | Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """TIME on digits-clip over six digit transformations with two held out: an init x
    deploy grid with linear merging, then merge techniques for offline merging
    (base/merge_all). ``quick`` trains 30 steps per expert instead of 60."""
    device = resolve_device(device)
    seed_everything(0)
    out_dir = claim(SYSTEM, out_dir, overwrite=overwrite, resumable=False)
    cfg = TimelineConfig(steps=30 if quick else 60, device=device)
    grid = [RecipeSpec(init=i, deploy=d) for i in GRID_INITS for d in GRID_DEPLOYS]
    techniques = [
        RecipeSpec(init="base", deploy="merge_all", method=m, params=p)
        for m, p in TECHNIQUES.items()
        if m != "linear"
    ]
    results = run_recipes(cfg, None, device, grid + techniques)
    grid_results = {recipe_name(s): results[recipe_name(s)] for s in grid}
    tech_results = {
        recipe_name(s): results[recipe_name(s)]
        for s in [RecipeSpec(init="base", deploy="merge_all"), *techniques]
    }
    report = Report("TIME: temporal model merging on digits-clip")
    report.text(_stream_text(cfg))
    report.heading("Init x deploy (linear merging, weights [0.5, 0.5] for EMA)")
    _report(report, grid_results)
    report.heading("Merge technique for offline merging (base/merge_all)")
    report.text(
        "Parameters are the TIME reference's offline values (task arithmetic lambda 0.8, TIES "
        "drop 0.2 = density 0.8), not tuned: this stream has no validation split to tune on."
    )
    _report(report, tech_results, heatmap=False, prefix="techniques_")
    report.heading("What wins here")
    report.text(_findings(grid_results, tech_results))
    write_json(
        out_dir / "results.json",
        {
            "grid": {
                n: {k: v for k, v in r.items() if k != "rows"} for n, r in grid_results.items()
            },
            "techniques": {
                n: {k: v for k, v in r.items() if k != "rows"} for n, r in tech_results.items()
            },
            "rows": {n: r["rows"] for n, r in results.items()},
            "environment": environment(device, 0),
        },
    )
    return report.save(out_dir)


def _findings(grid: dict[str, dict], techniques: dict[str, dict]) -> str:
    """The small-scale checks of spec 2.9, stated as what happened (not asserted)."""

    def named(init, deploy):
        return grid[f"{init}/{deploy} (linear)"]

    best = max(grid, key=lambda n: grid[n]["final_gm"])
    gms = [r["final_gm"] for r in grid.values()]
    tgms = [r["final_gm"] for r in techniques.values()]
    cft, offline, bit = named("latest", "latest"), named("base", "merge_all"), named("ema0", "ema0")
    lowest_zs = min(grid, key=lambda n: grid[n]["final_zs"])
    lines = [
        f"Best final GM: {best} ({grid[best]['final_gm']:.3f}); Best-in-TIME (ema0/ema0) "
        f"{bit['final_gm']:.3f}, continual fine-tuning (latest/latest) {cft['final_gm']:.3f}, "
        f"offline merging (base/merge_all) {offline['final_gm']:.3f}; the zero-shot model "
        f"{math.sqrt(cft['zero_shot_ka'] * cft['zero_shot_zs']):.3f}.",
        f"Offline merging's final KA is {offline['final_ka']:.3f} against the zero-shot "
        f"{offline['zero_shot_ka']:.3f} (the paper: barely accumulates).",
        f"latest/latest has KA {cft['ka_after_task_1']:.3f} after task 1; the lowest final ZS "
        f"is {lowest_zs} ({grid[lowest_zs]['final_zs']:.3f}).",
        f"Spread of final GM over init x deploy: {max(gms) - min(gms):.3f}; over merge "
        f"techniques (offline merging): {max(tgms) - min(tgms):.3f} (the paper: init and "
        "deploy matter more than the technique).",
        "One seed and one small model: differences smaller than the intervals are not findings.",
    ]
    return " ".join(lines)
