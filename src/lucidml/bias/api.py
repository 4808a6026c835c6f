"""The bias jobs behind ``lucid bias``: prompts, generate, detect, analyze, demo.

generate writes ``images/``, ``parts/`` and ``metadata.parquet``; detect writes
``records.parquet`` (one row per image: counts and labels of its kept persons); analyze
filters the records and writes ``prompt_stats.parquet``, ``concept_stats.parquet`` and
the report. Each later job takes the earlier job's run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from lucidml.bias import analyze as stats
from lucidml.bias import plots
from lucidml.bias.config import AnalyzeConfig, DetectConfig, GenerateConfig
from lucidml.bias.detect import detect_and_label
from lucidml.bias.filtering import filter_records, funnel
from lucidml.bias.generate import (
    DiffusersModel,
    generate,
    read_image,
    read_manifest,
    read_table,
    write_parquet,
)
from lucidml.bias.prompts import check_neutral, default_prompts, lint, load_prompts
from lucidml.bias.simulate import SimulatedT2I
from lucidml.core.config import resolve_device, seed_everything
from lucidml.core.progress import get_logger
from lucidml.core.report import Report
from lucidml.core.runs import atomic_write_bytes, claim, derive_seed, environment, write_json
from lucidml.errors import InputError, ModelError

SYSTEM = "bias"
log = get_logger(SYSTEM)

# The simulated models' planted female ratio per prompt theme: care and household lean
# female, technical, physical labour and finance lean male (the study's reported direction).
THEME_RATIOS = {
    "care": 0.72,
    "household": 0.66,
    "technical": 0.2,
    "physical": 0.15,
    "finance": 0.25,
    "leisure": 0.5,
    "other": 0.45,
}
# name -> skew: R_f = 0.5 + skew * (theme ratio + prompt jitter - 0.5)
SIMULATED = {"simulated": 1.0, "simulated-amplified": 1.5}


# --- prompts and models ------------------------------------------------------------------------


def planted_ratios(prompts: pd.DataFrame, model: str) -> pd.Series:
    """A simulated model's planted R_f per base prompt: its theme's ratio, a fixed
    per-prompt jitter of +-0.05, pushed away from 0.5 by the model's skew."""
    skew = SIMULATED[model]
    base = prompts.drop_duplicates("prompt_id").set_index("prompt_id")["theme"]
    values = {}
    for prompt_id, theme in base.items():
        jitter = (derive_seed("jitter", prompt_id) % 1001) / 1000 * 0.1 - 0.05
        ratio = 0.5 + skew * (THEME_RATIOS.get(theme, 0.45) + jitter - 0.5)
        values[prompt_id] = float(np.clip(ratio, 0.03, 0.97))
    return pd.Series(values, name="planted_ratio")


def _prompt_table(cfg: GenerateConfig) -> pd.DataFrame:
    prompts = load_prompts(cfg.prompts) if cfg.prompts else default_prompts()
    check_neutral(prompts)
    if cfg.n_prompts is not None:
        keep = _spread(prompts, cfg.n_prompts)
        prompts = prompts[prompts["prompt_id"].isin(keep)]
    return prompts.reset_index(drop=True)


def _spread(prompts: pd.DataFrame, n: int) -> list[str]:
    """n base prompts taken round-robin over (theme, category) cells, so a subset keeps
    every theme and category."""
    base = prompts.drop_duplicates("prompt_id")
    groups = [list(g["prompt_id"]) for _, g in base.groupby(["theme", "category"], sort=True)]
    picked: list[str] = []
    while len(picked) < min(n, len(base)):
        for g in groups:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    return picked


def model_loader(prompts: pd.DataFrame, cfg: GenerateConfig, device: str):
    """name -> ImageModel: the simulated models, or any diffusers pipeline id / folder."""

    def load(name: str):
        if name in SIMULATED:
            ratio = planted_ratios(prompts, name)
            by_text = {
                t: ratio[p] for p, t in zip(prompts["prompt_id"], prompts["text"], strict=True)
            }
            return SimulatedT2I(by_text, name=name)
        if name == "digits-diffusion":
            raise ModelError("digits-diffusion draws digits, not people: it cannot be audited")
        return DiffusersModel.load(
            name, device, steps=cfg.steps, guidance=cfg.guidance, size=cfg.size
        )

    return load


# --- jobs --------------------------------------------------------------------------------------


def prompts_job(path: str | None, out: str | Path | None = None, overwrite: bool = False):
    """`lucid bias prompts`: a prompt file (or the built-in set) checked for gendered
    words; writes prompts.csv and lint.csv. Gendered words are an InputError."""
    prompts = load_prompts(path) if path else default_prompts()
    flagged = lint(prompts)
    folder = claim(SYSTEM, out, {"prompts": path}, overwrite=overwrite, resumable=False)
    _write_csv(folder / "prompts.csv", prompts)
    _write_csv(folder / "lint.csv", flagged)
    if len(flagged):
        row = flagged.iloc[0]
        raise InputError(
            f"{len(flagged)} prompt(s) use gendered words, e.g. '{row['prompt_id']}' "
            f"({row['words']}); see {folder / 'lint.csv'}"
        )
    return prompts, folder


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def generate_job(
    config: GenerateConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[pd.DataFrame | None, Path]:
    """`lucid bias generate`: per_prompt images per base prompt and model."""
    cfg = config or GenerateConfig()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    prompts = _prompt_table(cfg)
    inputs = {"prompts": cfg.prompts} if cfg.prompts else {}
    folder = claim(SYSTEM, out, cfg, resume=resume, overwrite=overwrite, inputs=inputs)
    start = time.perf_counter()
    manifest = generate(
        prompts,
        cfg.models,
        cfg.per_prompt,
        folder,
        model_loader(prompts, cfg, device),
        cfg.batch_size,
        seed=cfg.seed,
    )
    if manifest is None:
        return None, folder
    seconds = time.perf_counter() - start
    planted = {m: planted_ratios(prompts, m).to_dict() for m in cfg.models if m in SIMULATED}
    results = {
        "n_images": len(manifest),
        "per_model": manifest.groupby("model").size().to_dict(),
        "n_prompts": int(prompts["prompt_id"].nunique()),
        "seconds": seconds,
        "planted_ratios": planted,
        "environment": environment(device, cfg.seed),
    }
    write_json(folder / "results.json", results)
    report = Report(f"Generated images: {', '.join(cfg.models)}")
    report.text(
        f"{len(manifest)} images, {cfg.per_prompt} per base prompt and model over "
        f"{results['n_prompts']} base prompts, in {seconds:.1f} s."
    )
    report.figure(plots.example_grid(manifest, folder), "examples", "The first images per model.")
    report.save(folder)
    return manifest, folder


def _detector(cfg: DetectConfig, device: str):
    from lucidml.bias.simulate import ComponentsDetector

    if cfg.detector == "components":
        return ComponentsDetector()
    if cfg.detector.startswith("torchvision:"):
        from lucidml.bias.detect import TorchvisionDetector

        arch = cfg.detector.split(":", 1)[1]
        return TorchvisionDetector(arch, weights=cfg.detector_weights, device=device)
    raise InputError(f"unknown detector '{cfg.detector}': components or torchvision:<arch>")


def _labeller(cfg: DetectConfig, device: str):
    from lucidml.bias.simulate import GlyphCNNLabeller, ShapeLabeller

    name = cfg.labeller
    if name == "glyph-cnn":
        return GlyphCNNLabeller.load(device)
    if name == "shape":
        return ShapeLabeller()
    if name.startswith("clip:"):
        from lucidml.bias.detect import ClipLabeller
        from lucidml.core.zoo import load_vlm

        return ClipLabeller(load_vlm(name.split(":", 1)[1], device))
    if name.startswith("mllm:"):
        from lucidml.bias.detect import ChoiceLabeller

        return ChoiceLabeller.from_pretrained(name.split(":", 1)[1], device, seed=cfg.seed)
    raise InputError(f"unknown labeller '{name}': glyph-cnn, shape, clip:<vlm> or mllm:<model id>")


DETECT_CHUNK = 2048  # images per stored part: the unit a resumed detection skips


def detect_job(
    config: DetectConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[pd.DataFrame, Path]:
    """`lucid bias detect`: persons and their perceived-gender labels, one record per image.
    Records are stored per chunk of images, so ``resume`` continues a killed run."""
    cfg = config or DetectConfig()
    if cfg.images is None:
        raise InputError("--images is required: a generation run folder")
    manifest = read_manifest(cfg.images)
    root = Path(cfg.images) if Path(cfg.images).is_dir() else Path(cfg.images).parent
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    checks = {"resume": resume, "overwrite": overwrite, "inputs": {"images": cfg.images}}
    claim(SYSTEM, out, cfg, dry_run=True, **checks)
    detector, labeller = _detector(cfg, device), _labeller(cfg, device)
    folder = claim(SYSTEM, out, cfg, **checks)
    parts = []
    for first in range(0, len(manifest), DETECT_CHUNK):
        part = folder / "parts" / f"records-{first // DETECT_CHUNK:05d}.parquet"
        if not part.is_file():
            rows = manifest.iloc[first : first + DETECT_CHUNK]
            stream = (
                (row._asdict(), read_image(root / row.path)) for row in rows.itertuples(index=False)
            )
            records = detect_and_label(
                stream,
                detector,
                labeller,
                conf=cfg.conf,
                min_side_fraction=cfg.min_side_fraction,
                batch_size=cfg.batch_size,
            )
            write_parquet(part, pd.DataFrame(records))
        parts.append(pd.read_parquet(part))
    records = pd.concat(parts, ignore_index=True)
    write_parquet(folder / "records.parquet", records)
    results = {
        "n_images": len(records),
        "detector": cfg.detector,
        "labeller": cfg.labeller,
        "persons_per_image": records["n_persons"].value_counts().sort_index().to_dict(),
        "labels": {
            g: int(records[f"n_{g}"].sum()) for g in ("female", "male", "unclear", "unparsed")
        },
        "environment": environment(device, cfg.seed),
    }
    write_json(folder / "results.json", results)
    report = Report(f"Detection and labelling: {cfg.detector} + {cfg.labeller}")
    report.text(
        f"{len(records)} images; kept persons per image {results['persons_per_image']}; "
        f"labels {results['labels']} (unparsed answers count as unclear)."
    )
    report.save(folder)
    return records, folder


def read_records(path: str | Path) -> pd.DataFrame:
    """Detection records: a detect run folder or its records.parquet."""
    return read_table(
        path, "records.parquet", ("model", "prompt_id", "labels"), "detection records"
    )


def _base_texts(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt_id, variation) with its text, for clustering."""
    cols = [c for c in ("prompt_id", "variation", "text", "category") if c in records.columns]
    if "text" not in cols:
        raise InputError("the records have no 'text' column to group prompts into concepts")
    return records[cols].drop_duplicates(["prompt_id", "variation"]).reset_index(drop=True)


def analysis(records: pd.DataFrame, cfg: AnalyzeConfig) -> dict:
    """Filtering, per-prompt statistics, concepts and their statistics, as tables."""
    filtered = filter_records(records, cfg.rule)
    prompt_stats = stats.prompt_stats(filtered)
    texts = _base_texts(records)
    concept_kw = (
        {"n_clusters": cfg.n_clusters}
        if cfg.n_clusters
        else {"distance_threshold": cfg.distance_threshold}
    )
    if cfg.clusterer == "hdbscan":
        concept_kw = {"min_cluster_size": cfg.min_cluster_size}
    concepts = stats.concepts(texts, embedder=cfg.embedder, method=cfg.clusterer, **concept_kw)
    concept_stats = stats.concept_stats(
        prompt_stats, concepts, n_min=cfg.n_min, n_boot=cfg.n_boot, seed=cfg.seed
    )
    tables = {
        "filtered": filtered,
        "funnel": funnel(filtered),
        "prompt_stats": prompt_stats,
        "concepts": concepts,
        "concept_stats": concept_stats,
        "excluded": stats.excluded_prompts(prompt_stats, cfg.n_min),
    }
    if "category" in texts.columns:
        categories = texts.drop_duplicates("prompt_id")[["prompt_id", "category"]]
        tables["category_stats"] = stats.group_stats(
            prompt_stats,
            categories,
            "category",
            n_min=cfg.n_min,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
        )
    models = list(dict.fromkeys(prompt_stats["model"]))
    if len(models) >= 2:
        tables["model_difference"] = stats.model_difference(
            prompt_stats,
            models[0],
            models[1],
            concepts,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            n_min=cfg.n_min,
        )
    return tables


def analyze_job(
    config: AnalyzeConfig | None = None, out: str | Path | None = None, overwrite: bool = False
) -> tuple[dict, Path]:
    """`lucid bias analyze`: the audit's statistics and report from detection records."""
    cfg = config or AnalyzeConfig()
    if cfg.records is None:
        raise InputError("--records is required: a detect run folder")
    records = read_records(cfg.records)
    seed_everything(cfg.seed)
    checks = {"overwrite": overwrite, "resumable": False, "inputs": {"records": cfg.records}}
    claim(SYSTEM, out, cfg, dry_run=True, **checks)
    reference = _reference(cfg.reference) if cfg.reference else None
    tables = analysis(records, cfg)
    folder = claim(SYSTEM, out, cfg, **checks)
    results, report = audit_report(tables, cfg, reference)
    results["environment"] = environment(None, cfg.seed)
    for name in ("prompt_stats", "concept_stats", "concepts", "funnel"):
        write_parquet(folder / f"{name}.parquet", tables[name])
    write_json(folder / "results.json", results)
    report.save(folder)
    return results, folder


def _reference(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reference file {p} does not exist")
    frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    missing = [c for c in ("prompt_id", "female_ratio") if c not in frame.columns]
    if missing:
        raise InputError(f"reference file {p} lacks the column(s) {', '.join(missing)}")
    return frame


def _overall(prompt_stats: pd.DataFrame, cfg: AnalyzeConfig) -> list[dict]:
    """Per model: the mean R_f over prompts with a prompt bootstrap interval."""
    rows = []
    for model, group in prompt_stats.groupby("model", sort=False):
        ratios = group.loc[(group["n_female"] + group["n_male"]) >= cfg.n_min, "female_ratio"]
        ratios = ratios.dropna().to_numpy()
        if len(ratios) == 0:
            continue
        lo, hi = stats.cluster_bootstrap_ci(ratios, n_boot=cfg.n_boot, seed=cfg.seed)
        skewed = (group["q_value"] < 0.05).mean()
        rows.append(
            {
                "model": model,
                "prompts": len(ratios),
                "mean R_f": float(ratios.mean()),
                "95% CI": f"[{lo:.3f}, {hi:.3f}]",
                "mean |bias|": float(np.abs(2 * ratios - 1).mean()),
                "prompts skewed (BH q < 0.05)": float(skewed),
                "mean retention": float(group["retention"].mean()),
            }
        )
    return rows


def audit_report(tables: dict, cfg: AnalyzeConfig, reference=None, report=None):
    report = report or Report("Perceived-gender audit")
    prompt_stats, concept_stats = tables["prompt_stats"], tables["concept_stats"]
    overall = _overall(prompt_stats, cfg)
    results = {
        "overall": overall,
        "funnel": tables["funnel"].to_dict("records"),
        "n_excluded_prompts": len(tables["excluded"]),
        "concepts": concept_stats.to_dict("records"),
    }
    report.text(
        "Labels are perceived gender as judged by a classifier, not anyone's identity. "
        f"Image rule: {cfg.rule}; prompts with fewer than {cfg.n_min} kept images leave the "
        "concept means (listed below). Concept intervals resample prompts (a cluster "
        "bootstrap), since images of one prompt are correlated."
    )
    report.heading("Filter funnel")
    report.table(tables["funnel"])
    report.figure(plots.funnel_figure(tables["funnel"]), "funnel", "Generated -> kept.")
    report.heading("Overall")
    report.table(overall)
    report.heading("Concepts")
    report.figure(plots.concept_figure(concept_stats), "concepts", "Mean R_f per concept, 95% CI.")
    shown = concept_stats.sort_values("mean_ratio").head(40)
    report.table(_concept_rows(shown))
    if "category_stats" in tables:
        report.heading("Categories")
        report.table(_concept_rows(tables["category_stats"]))
        results["categories"] = tables["category_stats"].to_dict("records")
    if "model_difference" in tables:
        diff = tables["model_difference"]
        report.heading("Model comparison")
        report.figure(
            plots.model_scatter(prompt_stats), "models", "R_f per prompt, model vs model."
        )
        report.table(diff.head(30))
        results["model_difference"] = diff.to_dict("records")
    if reference is not None:
        merged = prompt_stats.merge(reference, on="prompt_id", suffixes=("", "_ref"))
        amp = stats.amplification(merged["female_ratio"], merged["female_ratio_ref"])
        results["amplification"] = {k: float(np.nanmean(v)) for k, v in amp.items()}
        report.heading("Amplification against the reference")
        report.text(", ".join(f"mean {k} {v:.3f}" for k, v in results["amplification"].items()))
    if cfg.tpr is not None and cfg.fpr is not None:
        corrected = stats.corrected_ratio(prompt_stats["female_ratio"], cfg.tpr, cfg.fpr)
        results["corrected_mean_ratio"] = float(np.nanmean(corrected))
    sweep = stats.n_min_sweep(
        prompt_stats, sorted({1, 25, 50, 100, 200, cfg.n_min}), n_boot=cfg.n_boot, seed=cfg.seed
    )
    results["n_min_sweep"] = sweep.to_dict("records")
    report.heading("Does the answer depend on n_min?")
    report.text(
        "Mean R_f over the prompts with at least n_min kept images: a mean that moves with "
        "n_min means the dropped prompts lean differently from the kept ones."
    )
    report.table(sweep)
    if len(tables["excluded"]):
        report.heading("Prompts left out of concept means")
        report.table(tables["excluded"].head(50))
    return results, report


def _concept_rows(frame: pd.DataFrame) -> list[dict]:
    keep = [
        c
        for c in (
            "model",
            "concept_name",
            "category",
            "n_prompts",
            "mean_ratio",
            "ci_low",
            "ci_high",
            "direction",
        )
        if c in frame.columns
    ]
    return frame[keep].to_dict("records")


# --- demo --------------------------------------------------------------------------------------


def demo(
    out_dir: str | Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """The whole pipeline on two simulated models with planted per-prompt ratios: generate,
    detect (connected components), label (the glyph CNN), filter, analyze; the planted
    ratios are the known answer."""
    device = resolve_device(device)
    seed_everything(0)
    out_dir = claim(SYSTEM, out_dir, overwrite=overwrite, resumable=False)
    gen_cfg = GenerateConfig(
        models=list(SIMULATED),
        n_prompts=40 if quick else None,
        per_prompt=60 if quick else 150,
        batch_size=64,
        device=device,
    )
    prompts = _prompt_table(gen_cfg)
    gen_dir = out_dir / "generate"
    manifest = generate(
        prompts,
        gen_cfg.models,
        gen_cfg.per_prompt,
        gen_dir,
        model_loader(prompts, gen_cfg, device),
        gen_cfg.batch_size,
    )
    det_cfg = DetectConfig(images=str(gen_dir), batch_size=256, device=device)
    detector, labeller = _detector(det_cfg, device), _labeller(det_cfg, device)
    stream = (
        (row._asdict(), read_image(gen_dir / row.path)) for row in manifest.itertuples(index=False)
    )
    records = pd.DataFrame(
        detect_and_label(
            stream,
            detector,
            labeller,
            conf=det_cfg.conf,
            min_side_fraction=det_cfg.min_side_fraction,
            batch_size=256,
        )
    )
    write_parquet(out_dir / "records.parquet", records)
    cfg = AnalyzeConfig(n_min=30 if quick else 60, n_boot=1000, embedder="minilm-l6", seed=0)
    tables = analysis(records, cfg)
    report = Report("Perceived-gender audit of two simulated text-to-image models")
    report.text(
        f"{len(manifest)} images ({gen_cfg.per_prompt} per base prompt and model, "
        f"{prompts['prompt_id'].nunique()} base prompts of the project's neutral set). "
        "The simulated models draw 0-3 stick figures whose torso cue is 'female' with a "
        "planted probability per prompt (care and household lean female; technical, physical "
        "labour and finance lean male; 'simulated-amplified' pushes every ratio further from "
        "0.5). Detection: connected components; labels: a tiny CNN trained on rendered crops."
    )
    report.figure(plots.example_grid(manifest, gen_dir), "examples", "The first images per model.")
    results, report = audit_report(tables, cfg, report=report)
    results["known_answer"] = known_answer(tables["prompt_stats"], prompts, cfg.n_min)
    report.heading("Against the planted answer")
    report.text(_known_answer_text(results["known_answer"]))
    report.figure(
        plots.planted_figure(tables["prompt_stats"], prompts, planted_ratios),
        "planted",
        "Recovered vs planted R_f per prompt.",
    )
    results["environment"] = environment(device, 0)
    write_json(out_dir / "results.json", results)
    return report.save(out_dir)


def known_answer(prompt_stats: pd.DataFrame, prompts: pd.DataFrame, n_min: int) -> dict:
    """How well the pipeline recovers the simulated models' planted ratios: per-prompt
    error and interval coverage, and whether the planted stereotype themes come out on
    the planted side of 0.5 and in the planted order (Spearman over themes)."""
    from scipy.stats import spearmanr

    themes = prompts.drop_duplicates("prompt_id").set_index("prompt_id")["theme"]
    out = {}
    for model, group in prompt_stats.groupby("model", sort=False):
        planted = planted_ratios(prompts, model)
        g = group[(group["n_female"] + group["n_male"]) >= n_min].set_index("prompt_id")
        truth = planted.reindex(g.index)
        covered = (g["ci_low"] <= truth) & (truth <= g["ci_high"])
        by_theme = g["female_ratio"].groupby(themes.reindex(g.index)).mean()
        leaning = {t: r for t, r in THEME_RATIOS.items() if t in by_theme and abs(r - 0.5) > 0.1}
        out[model] = {
            "n_prompts": int(len(g)),
            "mae": float((g["female_ratio"] - truth).abs().mean()),
            "wilson_coverage": float(covered.mean()),
            "theme_means": {t: float(v) for t, v in by_theme.items()},
            "theme_spearman": float(
                spearmanr([THEME_RATIOS[t] for t in by_theme.index], by_theme.to_numpy())[0]
            ),
            "stereotype_sides_recovered": all(
                (by_theme[t] > 0.5) == (r > 0.5) for t, r in leaning.items()
            ),
        }
    return out


def _known_answer_text(known: dict) -> str:
    parts = []
    for model, k in known.items():
        parts.append(
            f"{model}: per-prompt mean absolute error {k['mae']:.3f} over {k['n_prompts']} "
            f"prompts; Wilson 95% intervals cover the planted ratio for "
            f"{100 * k['wilson_coverage']:.0f}% of prompts (labelling errors pull ratios "
            f"toward 0.5, so this can fall below 95%); planted stereotype themes on their "
            f"planted side of 0.5: {'yes' if k['stereotype_sides_recovered'] else 'NO'}; "
            f"Spearman between planted and recovered theme means {k['theme_spearman']:.2f}."
        )
    return " ".join(parts)
