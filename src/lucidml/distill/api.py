"""Public verbs: ``rank`` a set of distillers, ``score`` a user's distilled set, ``demo``.

``rank`` and ``score`` run as one process or sharded over many (``accelerate launch -m
lucidml distill rank ...``); their work is stored item by item in the run folder
(``cells.py``), so ``resume=True`` reuses what is finished and unchanged.
"""

from __future__ import annotations

from pathlib import Path

from lucidml.core.config import resolve_device
from lucidml.core.distributed import world_size
from lucidml.core.progress import get_logger
from lucidml.core.report import Report
from lucidml.core.runs import Run, claim, digest, environment, path_inputs, write_json
from lucidml.distill.cells import CellJob, Workspace, distilled_sets, set_key
from lucidml.distill.config import EvalConfig, RankConfig, ScoreConfig
from lucidml.distill.data import class_counts, load_dataset, load_distilled
from lucidml.distill.evaluate import Evaluator
from lucidml.distill.plots import soft_vs_hard_figure
from lucidml.distill.report import RUNS_FILE, add_section, recipe_summary, runs_table, write_runs
from lucidml.errors import InputError

LOG = get_logger("distill")


def leaderboard(methods: dict[str, dict]) -> list[dict]:
    """Rows sorted by LRS, with the scores as mean +- std."""
    rows = []
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["lrs_mean"]):
        rows.append(
            {
                "method": name,
                "LRS": f"{r['lrs_mean']:.4f} ± {r['lrs_std']:.4f}",
                "ARS": f"{r['ars_mean']:.4f} ± {r['ars_std']:.4f}",
                "HLR": r["hlr_mean"],
                "IOR": r["ior_mean"],
                "acc syn (hard)": r["acc_syn_hard_mean"],
                "acc syn": r["acc_syn_mean"],
                "acc random": r["acc_rdm_mean"],
                "acc real": r["acc_real_hard_mean"],
            }
        )
    return rows


def _run_folder(out: str | Path | None, cfg, resume: bool, overwrite: bool, **inputs) -> Run:
    """The run folder. Stored sets and cells are keyed on everything that determines
    them, so a resume with a changed setting recomputes what it changes and reuses the
    rest; changed input files are refused."""
    if world_size() > 1 and out is None:
        raise InputError("a multi-process run needs --out: all processes share one run folder")
    return Run(
        "distill",
        out,
        cfg,
        resume=resume,
        overwrite=overwrite,
        inputs=path_inputs(dataset=cfg.dataset, data_root=cfg.data_root, **inputs),
        per_item=True,
    )


def _items(reused: int, total: int) -> dict:
    LOG.info("%d of %d stored items reused, %d to compute", reused, total, total - reused)
    return {"reused": reused, "computed": total - reused}


def rank(
    cfg: RankConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
):
    """Distil with each method, score every set, write a leaderboard run folder.

    Returns the results (as in ``results.json``, plus ``out``) on the main process, and
    None on the other processes of a multi-process launch.
    """
    cfg = cfg or RankConfig()
    device = resolve_device(cfg.eval.device)
    data = load_dataset(cfg.dataset, cfg.data_root)
    evaluator = Evaluator(data, cfg.effective_eval(), device=device).split()
    smallest = min(class_counts(evaluator.train_y).values())  # after the validation split
    if cfg.ipc > smallest:
        raise InputError(
            f"IPC {cfg.ipc} is larger than the smallest class of {cfg.dataset} "
            f"({smallest} training images)"
        )
    run = _run_folder(out, cfg, resume, overwrite)
    results = _rank(cfg, evaluator, Workspace(run.path, resume))
    if results is None:
        return None
    results["env"] = environment(device, evaluator.cfg.seed)
    write_runs(run / RUNS_FILE, _runs(results, cfg.dataset))
    run.write_results(results)
    rep = Report(f"DD-Ranking leaderboard: {cfg.dataset}, IPC {cfg.ipc}, {cfg.labels} labels")
    _leaderboard_section(rep, results, evaluator.cfg)
    rep.save(run.path)
    results["out"] = str(run.path)
    return results


def _rank(cfg: RankConfig, evaluator: Evaluator, work: Workspace) -> dict | None:
    """Distil, evaluate and gather one leaderboard in ``work`` (None off the main process)."""
    dcfg = cfg.effective_distill()
    keys = {m: set_key(m, cfg.ipc, dcfg, evaluator) for m in cfg.methods}
    counts = {c: cfg.ipc for c in class_counts(evaluator.train_y)}
    job = CellJob(evaluator, keys, counts, work.cells)
    set_paths = [work.sets.path(k) for k in keys.values()]
    items = _items(work.stored(set_paths + job.paths()), len(set_paths) + len(job.paths()))
    evaluator.fit()
    job.compute(distilled_sets(work.sets, keys, evaluator, cfg.ipc, dcfg))
    scored = job.gather()
    if scored is None:
        return None
    return {
        "dataset": cfg.dataset,
        "ipc": cfg.ipc,
        "labels": cfg.labels,
        # the same keys as score's results.json, so both read alike
        "label_regime": evaluator.cfg.labels,
        "soft_label_mode": evaluator.cfg.soft_label_mode
        if evaluator.cfg.labels == "soft"
        else None,
        "quick": cfg.quick,
        "recipe": recipe_summary(evaluator.cfg, evaluator.acc_real_hard),
        "acc_real_hard": evaluator.acc_real_hard,
        "methods": scored,
        "leaderboard": leaderboard(scored),
        "sets": {m: f"sets/{work.sets.path(k).name}" for m, k in keys.items()},
        "items": items,
    }


def _leaderboard_section(rep: Report, results: dict, cfg: EvalConfig) -> None:
    ipc, labels = results["ipc"], results["labels"]
    title = f"IPC {ipc}, {labels} labels"
    add_section(rep, results["methods"], cfg, results["recipe"], title, f"ipc{ipc}_{labels}")


def _runs(results: dict, dataset: str) -> list[dict]:
    """A leaderboard's per-run rows for ``runs.parquet``."""
    return runs_table(results["methods"], dataset=dataset, ipc=results["ipc"])


def score(
    cfg: ScoreConfig, out: str | Path | None = None, resume: bool = False, overwrite: bool = False
):
    """LRS and ARS of a user's distilled set (tensor file or image folder).

    Returns the results on the main process and None on the others of a multi-process
    launch; ``resume=True`` reuses the stored cells whose inputs did not change.
    """
    device = resolve_device(cfg.eval.device)
    data = load_dataset(cfg.dataset, cfg.data_root)
    # Loading checks shapes, labels and the pixel range: all before the run folder exists.
    x, y, soft, input_scaling = load_distilled(
        cfg.images, data, cfg.labels, cfg.soft_labels, cfg.input_norm
    )
    if input_scaling != "none":
        LOG.info("distilled images brought to [0, 1] pixels by %s", input_scaling)
    if soft is not None and cfg.soft_labels is None and cfg.regime == "hard":
        LOG.warning("%s holds soft labels; --regime hard scores it without them", cfg.images)
        soft = None
    elif soft is not None and cfg.soft_labels is None:
        # the images file holds its own soft labels: score them as stored logits (mode S)
        LOG.info("%s holds soft labels: scoring with soft labels, mode S", cfg.images)
        cfg = cfg.with_stored_soft_labels()
    evaluator = Evaluator(data, cfg.effective_eval(), cfg.teachers or None, device=device)
    evaluator.check({"syn": (x, y, soft)})  # fail before writing anything
    teachers = {f"teacher{i}": t for i, t in enumerate(cfg.teachers)}
    run = _run_folder(
        out,
        cfg,
        resume,
        overwrite,
        images=cfg.images,
        labels=cfg.labels,
        soft_labels=cfg.soft_labels,
        **teachers,
    )
    work = Workspace(run.path, resume)
    job = CellJob(evaluator, {"syn": digest(x, y, soft)}, class_counts(y), work.cells)
    items = _items(work.stored(job.paths()), len(job.paths()))
    evaluator.fit()
    job.compute({"syn": (x, y, soft)})
    scored = job.gather()
    if scored is None:
        return None
    result = scored["syn"] | {
        "images": cfg.images,
        "input_scaling": input_scaling,
        # the regime actually used (stored soft labels switch a hard-label job to mode S)
        "label_regime": evaluator.cfg.labels,
        "soft_label_mode": evaluator.cfg.soft_label_mode
        if evaluator.cfg.labels == "soft"
        else None,
        "items": items,
    }
    result["recipe"] = recipe_summary(
        evaluator.cfg, evaluator.acc_real_hard, teacher_files=len(cfg.teachers)
    )
    result["env"] = environment(device, evaluator.cfg.seed)
    name = Path(cfg.images).name
    write_runs(run / RUNS_FILE, runs_table({name: scored["syn"]}, dataset=cfg.dataset))
    run.write_results(result)
    rep = Report(f"DD-Ranking score: {name} on {cfg.dataset}")
    mode = f", mode {result['soft_label_mode']}" if result["soft_label_mode"] else ""
    rep.text(
        f"{result['label_regime'].capitalize()} labels{mode}; distilled pixels "
        + (
            "used as stored ([0, 1])."
            if input_scaling == "none"
            else f"brought to [0, 1] by {input_scaling}."
        )
    )
    add_section(rep, {name: scored["syn"]}, evaluator.cfg, result["recipe"], "Scores", "score")
    rep.save(run.path)
    result["out"] = str(run.path)
    return result


def demo(
    out_dir: Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """Rank every baseline on digits at IPC 1 and 10 with hard and soft labels (one
    process). ``quick`` shortens every recipe (``EvalConfig.quick``, ``DistillConfig.quick``)
    and scores soft labels at IPC 10 only."""
    device = resolve_device(device)
    out_dir = claim("distill", out_dir, overwrite=overwrite, resumable=False)
    data = load_dataset("digits")
    settings = [("hard", 1), ("hard", 10), *([] if quick else [("soft", 1)]), ("soft", 10)]
    rep = Report("DD-Ranking on digits: which distilled sets beat random real images?")
    rep.text(
        "Each distiller's set is scored against random real subsets with the same images "
        "per class, under a hard-label recipe (DSA) and a soft-label recipe (the teacher "
        "relabels every augmented batch, KL loss, CutMix). LRS and ARS lie in [0, 1]; "
        "the dashed lines in each score figure are the scores of the random method itself, "
        "the level a distilled set must beat (1/(1+e) ≈ 0.269 only when the set also matches "
        "full-data accuracy). Each leaderboard opens with its recipe; `runs.parquet` holds "
        "every run of every leaderboard."
    )
    if quick:
        rep.text(
            "Quick run: 2 seeded runs instead of 5, the two largest learning rates, a quarter "
            "of the epochs, DM and DC at a quarter of their iterations, and soft labels at "
            "IPC 10 only; the numbers are rougher than a full `lucid distill rank`."
        )
    work = Workspace(out_dir, resume=False)  # sets are keyed, so both regimes share them
    boards = {}
    for labels, ipc in settings:
        cfg = RankConfig(ipc=ipc, labels=labels, quick=quick)
        evaluator = Evaluator(data, cfg.effective_eval(), device=device).split()
        boards[f"ipc{ipc}_{labels}"] = _rank(cfg, evaluator, work)
        _leaderboard_section(rep, boards[f"ipc{ipc}_{labels}"], evaluator.cfg)
    rep.heading("Soft labels close the gap")
    rep.figure(
        soft_vs_hard_figure(
            boards["ipc10_hard"]["methods"], boards["ipc10_soft"]["methods"], "IPC 10 on digits"
        ),
        "soft_vs_hard",
        "Student accuracy on each distilled set under the hard-label recipe and the "
        "soft-label recipe at IPC 10; the dashed line is the full-data accuracy.",
    )
    rep.text(_gap_sentence(boards))
    write_runs(
        out_dir / RUNS_FILE,
        [row for board in boards.values() for row in _runs(board, "digits")],
    )
    write_json(
        out_dir / "results.json",
        {"quick": quick, "settings": boards, "env": environment(device, cfg.eval.seed)},
    )
    return rep.save(out_dir)


def _gap_sentence(boards: dict) -> str:
    parts = []
    for method in ("random", "noise"):
        hard = boards["ipc10_hard"]["methods"][method]
        soft = boards["ipc10_soft"]["methods"][method]
        parts.append(
            f"{method} images reach {hard['acc_syn_hard_mean']:.3f} with hard labels "
            f"and {soft['acc_syn_mean']:.3f} with soft labels"
        )
    spreads = []
    for labels, key in (("hard", "acc_syn_hard_mean"), ("soft", "acc_syn_mean")):
        methods = boards[f"ipc10_{labels}"]["methods"]
        best = max(m[key] for name, m in methods.items() if name not in ("random", "noise"))
        spreads.append(f"{best - methods['random'][key]:+.3f} ({labels})")
    real = boards["ipc10_hard"]["acc_real_hard"]
    return (
        f"At IPC 10 (full data {real:.3f}), " + "; ".join(parts) + ". The best distilled "
        "set's lead over random images is " + " and ".join(spreads) + "."
    )
