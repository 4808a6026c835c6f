"""Public verbs: parse a dump, build a benchmark, run a method through the lifelong loop, demo.

The torch-based modules (methods, the lifelong loop) and the report are imported by the
verbs that use them, so ``parse`` and ``build`` start without loading torch.
"""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path

from lucidml.core import distributed
from lucidml.core.config import resolve_device, seed_everything
from lucidml.core.progress import get_logger
from lucidml.core.runs import (
    Run,
    check_fresh,
    claim,
    environment,
    path_inputs,
    read_json,
    run_dir_path,
    write_json,
    write_yaml,
)
from lucidml.editing import build as B
from lucidml.editing import wikidata
from lucidml.editing.config import BuildConfig, EvalConfig, ParseConfig, RunConfig
from lucidml.editing.questions import Templates
from lucidml.errors import InputError, LucidError

log = get_logger("editing")
METRICS = ("rewrite", "rephrase", "personas", "mhop", "loc_gold", "loc_agree", "past")
# the probe kinds that also get first-token accuracy and greedy exact match
STRICT_KINDS = ("rewrite", "rephrase", "personas", "mhop", "loc_gold", "past")


def embedded_snapshots() -> list[Path]:
    """The bundled Wikidata-format snapshot files (2022-06, 2023-06, 2024-11)."""
    folder = resources.files("lucidml.editing").joinpath("data/snapshots")
    return sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith(".jsonl"))


def parse(
    cfg: ParseConfig, out: str | Path | None = None, resume: bool = False, overwrite: bool = False
):
    """Parse ``cfg.dump`` into a snapshot folder (triples and labels as Parquet).

    Runs as one process or sharded over many (``accelerate launch``); see
    ``wikidata.parse_dump``. The folder appears only once the whole dump has parsed, so a
    bad dump leaves nothing. With ``resume`` the parts of a killed parse are reused, and
    a folder that already holds this very parse is kept as it is; without it a non-empty
    folder is refused unless ``overwrite``. Returns (folder, stats); stats is None on
    processes other than the main one.
    """
    if cfg.dump is None:
        raise InputError("no dump to parse: pass --dump FILE (or dump: in the --config file)")
    if out is None and distributed.world_size() > 1:
        raise InputError(
            "pass --out when parsing with several processes, so they all write one folder"
        )
    folder = run_dir_path("editing", out)
    if not resume:
        check_fresh(folder, overwrite)
    return folder, _parse_into(cfg, folder, resume)


def _parse_into(cfg: ParseConfig, folder: Path, resume: bool) -> dict | None:
    """Parse into ``folder`` and write its config.yaml and results.json (main process)."""
    results = folder / "results.json"
    if resume and results.is_file() and Path(cfg.dump).is_file():
        stored = read_json(results)
        key = wikidata.parse_key(Path(cfg.dump), cfg.block_bytes, cfg.best_rank, cfg.on_error)
        if stored.get("key") == key:
            log.info("%s already holds this parse of %s", folder, cfg.dump)
            return stored if distributed.is_main_process() else None
    stats = wikidata.parse_dump(
        cfg.dump,
        folder,
        on_error=cfg.on_error,
        processes=cfg.processes,
        best_rank=cfg.best_rank,
        block_bytes=cfg.block_bytes,
        resume=resume,
    )
    if stats is None:  # not the main process: the main one merges and writes
        return None
    write_yaml(folder / "config.yaml", cfg)
    stats = {"dump": cfg.dump, **stats, "processes": distributed.world_size()}
    write_json(results, stats)
    return stats


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
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Timesteps from consecutive snapshots (dump files or parsed folders).

    Inputs and the device are checked before the output folder is made (``resume``: with
    the folder's stored config and snapshots; see ``core.runs.claim``). Dump files are
    parsed into ``<out>/snapshots/<name>``; if one fails, a folder this call made is
    removed again. ``llm`` is a QuestionLLM callable; without one, ``cfg.llm`` names a
    causal LM to load (on ``cfg.device``). Its answers are kept in ``llm_answers.jsonl``,
    so ``resume`` continues a killed build without asking again (greedy decoding gives
    the same text), and reuses the parsed snapshots.
    """
    from lucidml.editing.questions import CachedQuestionLLM

    cfg = cfg or BuildConfig()
    if len(snapshots) < 2:
        raise InputError("building a benchmark needs at least two snapshots (old and new)")
    paths = [_check_snapshot(s) for s in snapshots]
    Templates.load(cfg.templates)
    device = resolve_device(cfg.device)
    target = run_dir_path("editing", out)
    made = not target.exists()
    folder = claim(
        "editing",
        target,
        cfg,
        resume=resume,
        overwrite=overwrite,
        inputs=path_inputs(
            templates=cfg.templates, **{f"snapshot{i}": p for i, p in enumerate(paths)}
        ),
    )
    try:
        if llm is None and cfg.llm:
            llm = _question_llm(cfg.llm, device)
        folders = []
        for path in paths:
            if path.is_file():
                parsed = folder / "snapshots" / path.name.split(".")[0]
                _parse_into(ParseConfig(dump=str(path), best_rank=cfg.best_rank), parsed, resume)
                path = parsed
            folders.append(path)
        answers = folder / "llm_answers.jsonl"
        if not resume:
            answers.unlink(missing_ok=True)
        if llm is not None:
            llm = CachedQuestionLLM(llm, answers)
        manifest = B.build_benchmark(folders, folder, cfg, llm, device)
    except LucidError:
        # bad input: a folder this call made goes again (a killed build keeps its folder,
        # with the parsed snapshots and the LLM's answers, for --resume)
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, manifest


def import_wikibigedit(
    files: list[str | Path], out: str | Path | None = None, overwrite: bool = False
) -> tuple[Path, dict]:
    """A benchmark folder from the reference's released timestep files (oldest first),
    for ``run --benchmark``. Every file is read and checked before anything is written."""
    from lucidml.editing.released import read_release

    if not files:
        raise InputError("pass at least one --wikibigedit FILE (one per timestep, oldest first)")
    steps = [read_release(f, t) for t, f in enumerate(files)]
    folder = claim(
        "editing",
        out,
        {"wikibigedit": [str(f) for f in files]},
        overwrite=overwrite,
        resumable=False,
        inputs={f"timestep{t}": Path(f) for t, f in enumerate(files)},
    )
    counts = [
        {
            "timestep": t,
            "file": str(f),
            "kept": len(records),
            "with_locality": sum(r["loc"] is not None for r in records),
            "with_multihop": sum(r["mhop"] is not None for r in records),
        }
        for t, (f, records) in enumerate(zip(files, steps, strict=True))
    ]
    manifest = {"source": "wikibigedit release", "timesteps": counts}
    for t, records in enumerate(steps):
        B.save_timestep(folder, t, records)
    write_json(folder / "benchmark.json", manifest)
    return folder, manifest


def _question_llm(name: str, device: str):
    from lucidml.core.zoo import load_llm
    from lucidml.editing.questions import TransformersQuestionLLM

    log.info("loading the question LLM %s on %s", name, device)
    return TransformersQuestionLLM(*load_llm(name, device=device), name=name)


def embedded_benchmark(out: str | Path) -> Path:
    """Build the embedded benchmark (two timesteps) into ``out``, anew (it takes a second
    and is the same every time); returns the folder."""
    shutil.rmtree(out, ignore_errors=True)
    build(embedded_snapshots(), out)
    return Path(out)


def run(
    cfg: RunConfig,
    out: str | Path | None = None,
    model=None,
    tokenizer=None,
    editor=None,
    resume: bool = False,
    overwrite: bool = False,
    save_model: bool = False,
) -> dict:
    """Run one method through the lifelong loop, checkpointing after every timestep.

    Everything is checked before the run folder is written: the method and its
    hyperparameters, the benchmark, the device, and (with ``resume``) that the folder's
    stored config and inputs are these, the device aside. Without ``resume`` a non-empty
    folder is refused unless ``overwrite``. ``save_model`` writes what the method changed
    after the last timestep (``Editor.save``: the edited model as safetensors, LoRA's
    adapter as well, RAG's memory). The model stays float32 on every device (see
    docs/editing.md).
    """
    from lucidml.core.zoo import load_llm
    from lucidml.editing import methods
    from lucidml.editing.lifelong import run_lifelong

    editor = editor or methods.get(cfg.method, **cfg.hparams)
    bench_dir = Path(cfg.benchmark) if cfg.benchmark else None
    timesteps = B.load_benchmark(bench_dir) if bench_dir else None
    device = resolve_device(cfg.device)
    folder_checks = dict(
        resume=resume, overwrite=overwrite, inputs=path_inputs(model=cfg.model, benchmark=bench_dir)
    )
    if resume and out is not None:
        # first: an older version's config.yaml would otherwise be refused field by field
        from lucidml.editing.lifelong import STATE_KEY
        from lucidml.editing.state import refuse_pickled_state

        refuse_pickled_state(Path(out) / "checkpoints", STATE_KEY)
    target = claim("editing", out, cfg, **folder_checks, dry_run=True)  # before the model loads
    seed_everything(cfg.seed)
    if model is None:
        log.info("loading %s on %s", cfg.model, device)
        model, tokenizer = load_llm(cfg.model, device=device)
    editor.check(model)
    r = Run("editing", target, cfg, **folder_checks)
    if timesteps is None:
        timesteps = B.load_benchmark(embedded_benchmark(r / "benchmark"))
    if cfg.max_edits is not None:
        timesteps = [ts[: cfg.max_edits] for ts in timesteps]
    log.info("%s on %s: %d timesteps", cfg.method, cfg.model, len(timesteps))
    result = run_lifelong(
        model, tokenizer, editor, timesteps, cfg.eval, r, cfg.skip_known, cfg.seed
    )
    edited = result.pop("model")
    result.pop("probes")  # written by the loop as probes.parquet
    if save_model:
        saved = editor.save(r.path, edited, tokenizer)
        log.info("saved %s in %s", ", ".join(saved), r.path)
    results = {
        "method": cfg.method,
        "model": cfg.model,
        "editor": editor.config.model_dump(mode="json"),  # the effective hyperparameters
        # who wrote the rephrase and persona probes: an LLM's name or "template"
        "reworded_by": B.reworded_sources([r for ts in timesteps for r in ts]),
        **result,
        "env": environment(device, cfg.seed),
    }
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


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v, digits: int = 3):
    return round(v, digits) if isinstance(v, float) and not math.isnan(v) else "-"


def _with_ci(metrics: dict, key: str, digits: int = 2) -> str:
    """ "0.83 [0.71, 0.91] n=57": a mean, its 95% interval and the probes behind it."""
    v = metrics.get(key, math.nan)
    if _missing(v):
        return "-"
    text = f"{v:.{digits}f}"
    ci, n = metrics.get(f"{key}_ci"), metrics.get(f"{key}_n")
    if ci and not any(_missing(x) for x in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text + (f" n={n}" if n else "")


def _fmt_row(name: str, result: dict) -> dict:
    final, last = result["final"], (result["timesteps"] or [{}])[-1]
    row = {"method": name, **{k: _with_ci(final, k) for k in METRICS}}
    row["bwt"] = _fmt(result["bwt"])
    row["s/edit"] = _fmt(final.get("seconds_per_edit", math.nan), 2)
    row["canary ppl"] = _fmt(last.get("canary_ppl", math.nan), 2)  # after the last timestep
    return row


def _strict_row(name: str, metrics: dict, kinds=STRICT_KINDS, prefix: str = "") -> dict:
    """Per probe kind, "teacher-forced / first token / EM" in one cell, side by side,
    then the EM's 95% interval and n."""
    row = {"method": name}
    for kind in kinds:
        keys = [prefix + k for k in (kind, f"{kind}_first_token", f"{kind}_em")]
        values = [metrics.get(k, math.nan) for k in keys]
        cell = " / ".join("-" if _missing(v) else f"{v:.2f}" for v in values)
        ci, n = metrics.get(f"{keys[2]}_ci"), metrics.get(f"{keys[2]}_n")
        if ci and not any(_missing(x) for x in ci):
            cell += f" (EM [{ci[0]:.2f}, {ci[1]:.2f}] n={n})"
        row[kind] = cell
    return row


def _r_heatmap(ax, R: list[list[float]], title: str, first: bool):
    """R[t, t'] (rewrite accuracy on timestep t' edits after timestep t) as an image."""
    import numpy as np

    T = len(R)
    grid = np.full((T, T), np.nan)
    for t, row in enumerate(R):
        grid[t, : len(row)] = [math.nan if _missing(v) else v for v in row]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for (t, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, t, f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("edits of timestep")
    if first:  # the panels share their rows
        ax.set_ylabel("after timestep")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    return image


def _report(title: str, results: dict[str, dict]):
    import matplotlib.pyplot as plt

    from lucidml.core.report import Report

    rep = Report(title)
    rep.heading("Running means after the last timestep")
    first_result = next(iter(results.values()), {"timesteps": []})
    sources = first_result.get("reworded_by")
    written = f"this benchmark's: {B.describe_sources(sources)}" if sources is not None else ""
    written = written or "templated rephrasings and persona wrappers unless built with --llm"
    rep.text(
        "Teacher-forced token accuracy on 'Q: {question} A: {answer}'. rewrite: the "
        f"edited questions; rephrase/personas: reworded ones ({written}); mhop: chained "
        "through the new object; loc_gold/loc_agree: unchanged facts (gold answer / "
        "agreement with the pre-edit model); past: edits of earlier timesteps; canary "
        "ppl: perplexity of general prose after the last timestep (a collapse alarm). "
        "Each cell: the mean, its 95% interval (stratified bootstrap over each "
        "timestep's probes; over records for personas) and n, the probes (records, for "
        "personas) behind it; the unedited model's row below is the baseline."
    )
    rep.table([_fmt_row(m, r) for m, r in results.items()])
    rep.heading("Knowing or copying: teacher-forced, first token, greedy exact match")
    rep.text(
        "Teacher forcing credits the later tokens of a multi-token name once the model is "
        "shown its start. first token: the argmax at the first answer position is the "
        "answer's first token; EM: the greedy answer from the question alone (as many "
        "tokens as the gold one) equals it, case-folded, trailing punctuation stripped. "
        "Each cell: teacher-forced / first token / EM, running means after the last timestep."
    )
    rep.table([_strict_row(m, r["final"]) for m, r in results.items()])
    # every method starts from the same model on the same records: one row says it all
    first = first_result["timesteps"][0] if first_result["timesteps"] else {}
    pre = {k[len("pre_") :]: v for k, v in first.items() if k.startswith("pre_")}
    rep.heading("Before the first edits")
    rep.text(
        "The unedited model on timestep 0's records, the same for every method; each "
        "cell: teacher-forced / first token / EM."
    )
    row = _strict_row("unedited", first, [k for k in STRICT_KINDS if k != "past"], "pre_")
    rep.table([{**row, "canary ppl": _fmt(pre.get("canary_ppl", math.nan), 2)}])
    dropped = first_result.get("mhop_dropped") or {}
    if dropped:
        rep.text(
            f"Multi-hop probes dropped as measuring no edit: {dropped.get('answer_in_question', 0)} "
            "whose answer appears in the question, "
            f"{dropped.get('known_before_edits', 0)} the unedited model already answers "
            "by greedy exact match."
        )
    leaks = [m for m, r in results.items() if (r.get("editor") or {}).get("corpus_facts")]
    if leaks:
        rep.text(
            f"{', '.join(leaks)}: the key covariance was computed over prose plus the "
            "embedded snapshot's facts (corpus_facts), which overlap the embedded "
            "benchmark's subjects."
        )
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
    with_r = {m: r["R"] for m, r in results.items() if r.get("R")}
    if with_r:
        fig, axes = plt.subplots(1, len(with_r), figsize=(3.2 * len(with_r), 3.0), squeeze=False)
        for i, (ax, (m, R)) in enumerate(zip(axes[0], with_r.items(), strict=True)):
            image = _r_heatmap(ax, R, m, first=i == 0)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
        rep.figure(
            fig,
            "retention",
            "R[t, t']: rewrite accuracy on timestep t' edits after timestep t's edits",
        )
    return rep


# The quick demo (the tour's) fits 90 s on 2 idle cores: training (LoRA) against
# retrieval (RAG), the paper's main contrast, on fewer edits with shorter recipes.
# Locate-then-edit is left out: MEMIT alone took 69 s of the 135 s that LoRA, RAG and
# MEMIT needed at 4 edits per timestep (10 steps of a full forward and backward per edit).
QUICK_METHODS = ("lora", "rag")
QUICK_EDITS = 4  # per timestep
QUICK_CANARY_TOKENS = 512  # the canary costs as much as scoring the edits: a quarter of it
QUICK_HPARAMS = {"lora": {"epochs": 2}}


def demo(
    out_dir: Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """Build the embedded benchmark and run every method on SmolLM2 (``quick``: LoRA and
    RAG on 4 edits per timestep with short recipes); writes report.html."""
    from lucidml.core.zoo import load_llm
    from lucidml.editing import methods

    device = resolve_device(device)
    out_dir = claim("editing", out_dir, overwrite=overwrite, resumable=False)
    bench = embedded_benchmark(out_dir / "benchmark")
    model, tok = load_llm(device=device)
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    # The reference rate 5e-3 * bs/256 assumes thousands of edits per timestep; with a few
    # dozen there are only a handful of optimiser steps, so the demo uses the base 5e-3.
    demo_hp = {"lora": {"lr": 5e-3}, "lora_merge": {"lr": 5e-3}}
    names = QUICK_METHODS if quick else tuple(methods.METHODS)
    results = {}
    for name in names:
        model.load_state_dict(base)
        hp = {**demo_hp.get(name, {}), **(QUICK_HPARAMS.get(name, {}) if quick else {})}
        cfg = RunConfig(
            method=name,
            benchmark=str(bench),
            hparams=hp,
            max_edits=QUICK_EDITS if quick else None,
            eval=EvalConfig(past_max=QUICK_EDITS, canary_tokens=QUICK_CANARY_TOKENS)
            if quick
            else EvalConfig(),
            device=device,
        )
        results[name] = run(cfg, out_dir / "runs" / name, model=model, tokenizer=tok)
    summary = {m: {"final": r["final"], "bwt": r["bwt"], "R": r["R"]} for m, r in results.items()}
    write_json(
        out_dir / "results.json",
        json_safe({"quick": quick, "methods": summary, "env": environment(device, 0)}),
    )
    title = "every method" if not quick else "LoRA against RAG"
    rep = _report(f"WikiBigEdit demo: {title} on SmolLM2-135M", results)
    rep.text(
        f"Benchmark: {bench} (embedded snapshots 2022-06 -> 2023-06 -> 2024-11)."
        + (
            f" Quick mode: {', '.join(QUICK_METHODS)} only, {QUICK_EDITS} edits per timestep, "
            "shortened recipes; `lucid editing demo` runs all seven methods on every edit."
            if quick
            else ""
        )
    )
    return rep.save(out_dir)
