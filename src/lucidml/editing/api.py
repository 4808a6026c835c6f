"""Public verbs: parse a dump, build a benchmark, run a method through the lifelong loop, demo."""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path

from lucidml.core.config import seed_everything
from lucidml.core.report import Report
from lucidml.core.runs import Run, make_run_dir, run_dir_path, write_json
from lucidml.editing import build as B
from lucidml.editing import methods, wikidata
from lucidml.editing.config import BuildConfig, EvalConfig, RunConfig
from lucidml.editing.lifelong import run_lifelong
from lucidml.editing.questions import Templates
from lucidml.errors import InputError, LucidError

METRICS = ("rewrite", "rephrase", "personas", "mhop", "loc_gold", "loc_agree", "past")


def embedded_snapshots() -> list[Path]:
    """The bundled Wikidata-format snapshot files (2022-06, 2023-06, 2024-11)."""
    folder = resources.files("lucidml.editing").joinpath("data/snapshots")
    return sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith(".jsonl"))


def parse(
    dump: str | Path,
    out: str | Path | None = None,
    on_error: str = "stop",
    processes: int = 1,
    best_rank: bool = True,
) -> tuple[Path, dict]:
    """Parse one dump into a snapshot folder (triples and labels as Parquet), streaming.

    The folder appears only once the whole dump has parsed, so a bad dump leaves nothing.
    """
    folder = run_dir_path("editing", out)
    stats = wikidata.parse_dump(
        dump, folder, on_error=on_error, processes=processes, best_rank=best_rank
    )
    write_json(folder / "results.json", {"dump": str(dump), **stats})
    return folder, stats


def _check_snapshot(path: str | Path) -> Path:
    """A parsed folder (its labels readable) or an existing dump file."""
    path = Path(path)
    if path.is_dir():
        wikidata.read_labels(path)
    elif not path.is_file():
        raise InputError(f"snapshot {path} is neither a dump file nor a parsed snapshot folder")
    return path


def build(
    snapshots: list[str | Path],
    out: str | Path | None = None,
    cfg: BuildConfig | None = None,
    llm=None,
) -> tuple[Path, dict]:
    """Timesteps from consecutive snapshots (dump files or parsed folders).

    Inputs are checked before the output folder is made. Dump files are parsed
    (streaming) into ``<out>/snapshots/<name>``; if one fails, a folder this call made
    is removed again.
    """
    cfg = cfg or BuildConfig()
    if len(snapshots) < 2:
        raise InputError("building a benchmark needs at least two snapshots (old and new)")
    paths = [_check_snapshot(s) for s in snapshots]
    Templates.load(cfg.templates)
    target = run_dir_path("editing", out)
    made = not target.exists()
    folder = make_run_dir("editing", target)
    try:
        folders = []
        for path in paths:
            if path.is_file():
                parsed = folder / "snapshots" / path.name.split(".")[0]
                wikidata.parse_dump(path, parsed, best_rank=cfg.best_rank)
                path = parsed
            folders.append(path)
    except LucidError:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, B.build_benchmark(folders, folder, cfg, llm)


def embedded_benchmark(out: str | Path) -> Path:
    """Build the embedded benchmark (two timesteps) into ``out``; returns the folder."""
    build(embedded_snapshots(), out)
    return Path(out)


def run(
    cfg: RunConfig,
    out: str | Path | None = None,
    model=None,
    tokenizer=None,
    editor=None,
    progress=None,
) -> dict:
    """Run one method through the lifelong loop; resumes if ``out`` holds a checkpoint."""
    from lucidml.core.zoo import load_llm

    editor = editor or methods.get(cfg.method, **cfg.hparams)
    bench_dir = Path(cfg.benchmark) if cfg.benchmark else None
    timesteps = B.load_benchmark(bench_dir) if bench_dir else None
    seed_everything(cfg.seed)
    if model is None:
        model, tokenizer = load_llm(cfg.model, device=cfg.device)
    editor.check(model)
    r = Run("editing", out, cfg)
    if timesteps is None:
        timesteps = B.load_benchmark(embedded_benchmark(r / "benchmark"))
    if cfg.max_edits is not None:
        timesteps = [ts[: cfg.max_edits] for ts in timesteps]
    result = run_lifelong(
        model, tokenizer, editor, timesteps, cfg.eval, r, cfg.skip_known, cfg.seed, progress
    )
    result.pop("model")
    results = {"method": cfg.method, "model": cfg.model, **result}
    r.write_results(json_safe(results))
    _report(f"WikiBigEdit: {cfg.method} on {cfg.model}", {cfg.method: results}).save(r.path)
    return results


def json_safe(obj):
    """NaN (a metric with nothing to score) becomes null, so results.json is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(v, digits: int = 3):
    return round(v, digits) if isinstance(v, float) and not math.isnan(v) else "-"


def _fmt_row(name: str, result: dict) -> dict:
    final, last = result["final"], (result["timesteps"] or [{}])[-1]
    row = {"method": name, **{k: _fmt(final.get(k, math.nan)) for k in METRICS}}
    row["bwt"] = _fmt(result["bwt"])
    row["s/edit"] = _fmt(final.get("seconds_per_edit", math.nan), 2)
    row["canary ppl"] = _fmt(last.get("canary_ppl", math.nan), 2)  # after the last timestep
    return row


def _report(title: str, results: dict[str, dict]) -> Report:
    import matplotlib.pyplot as plt

    rep = Report(title)
    rep.heading("Running means after the last timestep")
    rep.text(
        "Teacher-forced token accuracy on 'Q: {question} A: {answer}'. rewrite: the "
        "edited questions; rephrase/personas: reworded ones; mhop: chained through the "
        "new object; loc_gold/loc_agree: unchanged facts (gold answer / agreement with "
        "the pre-edit model); past: edits of earlier timesteps; canary ppl: perplexity of "
        "general prose after the last timestep (a collapse alarm)."
    )
    rep.table([_fmt_row(m, r) for m, r in results.items()])
    pre_rows = []
    for m, r in results.items():
        first = r["timesteps"][0] if r["timesteps"] else {}
        pre_rows.append(
            {
                "method": m,
                **{
                    f"pre_{k}": round(first.get(f"pre_{k}", math.nan), 3)
                    for k in ("rewrite", "rephrase", "loc_gold")
                },
                "pre canary ppl": _fmt(first.get("pre_canary_ppl", math.nan), 2),
            }
        )
    rep.heading("Before the first edits")
    rep.table(pre_rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key in zip(axes, ("rewrite", "loc_gold", "past"), strict=True):
        for m, r in results.items():
            ts = [row["timestep"] for row in r["timesteps"]]
            ax.plot(ts, [row.get(key, math.nan) for row in r["timesteps"]], marker="o", label=m)
        ax.set_title(key)
        ax.set_xticks(range(max((len(r["timesteps"]) for r in results.values()), default=0)))
        ax.set_xlabel("timestep")
        ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7)
    rep.figure(fig, "timesteps", "Per-timestep metrics after each timestep's edits")
    return rep


def demo(out_dir: Path, quick: bool = False) -> Path:
    """Build the embedded benchmark and run every method on SmolLM2; writes report.html."""
    from lucidml.core.zoo import load_llm

    out_dir = Path(out_dir)
    bench = embedded_benchmark(out_dir / "benchmark")
    model, tok = load_llm()
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    # quick: a few edits per timestep and short recipes, to stay within minutes on 2 cores
    max_edits = 4 if quick else None
    quick_hp = {
        "ft": {"epochs": 2},
        "lora": {"epochs": 2},
        "lora_merge": {"epochs": 2},
        "rome": {"v_steps": 10},
        "memit": {"v_steps": 10},
    }
    # The reference rate 5e-3 * bs/256 assumes thousands of edits per timestep; with a few
    # dozen there are only a handful of optimiser steps, so the demo uses the base 5e-3.
    demo_hp = {"lora": {"lr": 5e-3}, "lora_merge": {"lr": 5e-3}}
    results = {}
    for name in methods.METHODS:
        model.load_state_dict(base)
        hp = {**demo_hp.get(name, {}), **(quick_hp.get(name, {}) if quick else {})}
        cfg = RunConfig(
            method=name,
            benchmark=str(bench),
            hparams=hp,
            max_edits=max_edits,
            eval=EvalConfig(past_max=4 if quick else 1000),
        )
        results[name] = run(cfg, out_dir / "runs" / name, model=model, tokenizer=tok)
    summary = {m: {"final": r["final"], "bwt": r["bwt"], "R": r["R"]} for m, r in results.items()}
    write_json(out_dir / "results.json", json_safe({"quick": quick, "methods": summary}))
    rep = _report("WikiBigEdit demo: every method on SmolLM2-135M", results)
    rep.text(
        f"Benchmark: {bench} (embedded snapshots 2022-06 -> 2023-06 -> 2024-11)."
        + (" Quick mode: 4 edits per timestep, shortened recipes." if quick else "")
    )
    return rep.save(out_dir)
