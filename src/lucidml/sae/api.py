"""The SAE jobs behind ``lucid sae``: extract, train, score, steer, demo.

Each job writes a run folder (config.yaml, results.json, report.md/.html, figures).
``extract`` puts the activation store in ``<run>/store`` and ``train`` the SAE (SAELens
layout) in ``<run>/sae``; later jobs accept either the run folder or that subfolder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lucidml.core.config import resolve_device, seed_everything
from lucidml.core.progress import get_logger
from lucidml.core.report import Report
from lucidml.core.runs import claim, environment, folder_name, write_json
from lucidml.core.zoo import load_vlm
from lucidml.errors import InputError
from lucidml.sae import plots
from lucidml.sae.config import ExtractConfig, ScoreConfig, SteerConfig, TrainJobConfig
from lucidml.sae.extraction import check_request, extract
from lucidml.sae.images import DIGIT_SETS, ImageSet, load_images, read_taxonomy
from lucidml.sae.metrics import hierarchy_depth, reconstruction, uniqueness
from lucidml.sae.model import SAE
from lucidml.sae.scoring import LatentScores, random_set_depth, score_latents, summary
from lucidml.sae.steer import concept_embeddings, steered_predictions, steering_scores
from lucidml.sae.store import ActivationStore
from lucidml.sae.training import as_sae_config, train

SYSTEM = "sae"
log = get_logger(SYSTEM)


# --- folders --------------------------------------------------------------------------------


def open_store(path: str | Path) -> ActivationStore:
    """A store folder, or the run folder of ``lucid sae extract`` holding one."""
    p = Path(path)
    if not (p / "index.json").is_file() and (p / "store" / "index.json").is_file():
        p = p / "store"
    return ActivationStore.open(p)


def open_sae(path: str | Path) -> SAE:
    """An SAE folder (ours or SAELens layout), or the run folder of ``lucid sae train``."""
    p = Path(path)
    if not (p / "cfg.json").is_file() and (p / "sae" / "cfg.json").is_file():
        p = p / "sae"
    return SAE.load(p)


def _required(value, option: str) -> str:
    if value is None:
        raise InputError(f"{option} is required")
    return value


def _store_images(store: ActivationStore, override: str | None, vlm=None) -> ImageSet:
    """The images a store indexes, in the store's image-id order."""
    source = override or store.meta.get("images")
    if source is None:
        raise InputError("the store does not record its images; pass --images")
    channels = vlm.channels if vlm is not None else store.meta.get("channels", 1)
    size = vlm.image_size if vlm is not None else store.meta.get("image_size", 8)
    images = load_images(source, channels, size)
    where = images.index()
    missing = [i for i in store.image_ids if i not in where]
    if missing:
        raise InputError(
            f"images '{source}' lack {len(missing)} of the store's image ids, e.g. '{missing[0]}'"
        )
    order = np.array([where[i] for i in store.image_ids])
    return ImageSet(
        images=images.images[order],
        ids=list(store.image_ids),
        labels=None if images.labels is None else images.labels[order],
        class_names=images.class_names,
        paths=None if images.paths is None else [images.paths[i] for i in order],
    )


# --- extract --------------------------------------------------------------------------------


def extract_job(
    config: ExtractConfig | None = None, out: str | Path | None = None, overwrite: bool = False
) -> tuple[ActivationStore, Path]:
    """`lucid sae extract`: one layer's activations of an image set, as a store."""
    cfg = config or ExtractConfig()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    checks = {"overwrite": overwrite, "resumable": False}
    claim(SYSTEM, out, cfg, dry_run=True, **checks)
    vlm = load_vlm(cfg.model, device)
    check_request(vlm, cfg.layer, cfg.tokens, cfg.k)
    images = load_images(cfg.images, vlm.channels, vlm.image_size)
    folder = claim(SYSTEM, out, cfg, **checks)
    start = time.perf_counter()
    store = extract(
        vlm,
        images.images,
        cfg.layer,
        cfg.tokens,
        cfg.k,
        image_ids=images.ids,
        out=folder / "store",
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shard_rows=cfg.shard_rows,
        dtype=getattr(torch, cfg.dtype),
        meta={"images": cfg.images, "channels": vlm.channels, "image_size": vlm.image_size},
    )
    results = {
        "rows": len(store),
        "d": store.d,
        "n_images": len(images.ids),
        "layer": store.meta.get("layer"),
        "tokens": cfg.tokens,
        "seconds": time.perf_counter() - start,
        "store": str(folder / "store"),
        "environment": environment(device, cfg.seed),
    }
    write_json(folder / "results.json", results)
    report = Report(f"Activations: {cfg.model} {results['layer']} on {cfg.images}")
    report.text(
        f"{len(store)} rows of width {store.d} from {len(images.ids)} images "
        f"(tokens: {cfg.tokens}), stored as {cfg.dtype} shards in `store/`."
    )
    report.save(folder)
    return store, folder


# --- train ----------------------------------------------------------------------------------


def train_job(
    config: TrainJobConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[SAE | None, Path]:
    """`lucid sae train`: an SAE on a store; checkpoints in ``<run>/checkpoints`` so
    ``resume`` continues a killed run; the SAE in ``<run>/sae`` (SAELens layout)."""
    cfg = config or TrainJobConfig()
    store = open_store(_required(cfg.store, "--store"))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    sae_cfg = as_sae_config(cfg.updated(device=device), store.d)  # refuse before writing
    checks = {"resume": resume, "overwrite": overwrite, "inputs": {"store": store.folder}}
    folder = claim(SYSTEM, out, cfg, **checks)
    start = time.perf_counter()
    sae = train(store, sae_cfg, checkpoint_dir=folder / "checkpoints", resume=resume)
    seconds = time.perf_counter() - start
    hook = f"{store.meta.get('model', '')}:{store.meta.get('layer', '')}"
    sae.save(folder / "sae", hook_name=hook, extra={"store": store.meta})
    results = {
        "kind": sae_cfg.kind,
        "d_in": store.d,
        "n_latents": sae.n_latents,
        "k": sae_cfg.k,
        "steps": sae_cfg.steps,
        "rows": len(store),
        "seconds": seconds,
        "rows_per_second": sae_cfg.steps * min(sae_cfg.batch_size, len(store)) / seconds,
        "validation": sae.validation,
        "sae": str(folder / "sae"),
        "environment": environment(device, cfg.seed),
    }
    write_json(folder / "results.json", results)
    report = Report(f"SAE training: {sae_cfg.kind}, {sae.n_latents} latents on {hook}")
    report.text(_validation_text(sae.validation, sae_cfg.k))
    report.figure(plots.training_figure(sae.history), "training", "Loss, MSE and L0 over steps.")
    report.save(folder)
    return sae, folder


def _validation_text(v: dict, k: int) -> str:
    return (
        f"Held-out rows (n = {v['n']}): MSE {v['mse']:.4g}, FVE {v['fve']:.3f}, "
        f"L0 {v['l0']:.2f} (k = {k}), dead fraction {v['dead_fraction']:.3f}."
    )


# --- score ----------------------------------------------------------------------------------


def image_embeddings(images: ImageSet, encoder: str, device: str) -> np.ndarray:
    """Embeddings MS compares images with: ``pixels`` (centred pixels, an encoder of
    another family than any CLIP) or the image embeddings of a VLM."""
    if encoder == "pixels":
        x = images.images.flatten(1).double()
        return (x - x.mean(0)).numpy()
    vlm = load_vlm(encoder, device)
    return vlm.encode_images(images.images).double().cpu().numpy()


def _default_encoder(store: ActivationStore) -> str:
    return "pixels" if store.meta.get("images") in DIGIT_SETS else "openai/clip-vit-base-patch32"


def random_dictionary(sae: SAE, seed: int = 0) -> SAE:
    """An untrained TopK SAE of the same size and k: the sparsity-alone yardstick."""
    from lucidml.sae.config import SAEConfig

    cfg = SAEConfig(kind="topk", d_in=sae.d_in, d_sae=sae.n_latents, k=sae.cfg.k, seed=seed + 1)
    return SAE(cfg)


def score_sets(
    sae: SAE,
    store: ActivationStore,
    embeddings: dict[str, np.ndarray],
    hai_k: int,
    batch_size: int,
    seed: int = 0,
) -> dict[str, LatentScores]:
    """SAE latents, raw neurons and a random dictionary, scored the same way."""
    rand = random_dictionary(sae, seed)
    return {
        "sae": score_latents(store, sae.encode, embeddings, hai_k, batch_size),
        "neurons": score_latents(store, lambda x: x, embeddings, hai_k, batch_size),
        "random dictionary": score_latents(store, rand.encode, embeddings, hai_k, batch_size),
    }


def _ci_text(ci) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def ms_rows(sets: dict[str, LatentScores], encoder: str, hai_k: int, seed: int) -> list[dict]:
    """MS per latent set: over live latents (>= hai_k images; the headline) and over all
    scored ones, where latents firing on a handful of images can score anything."""
    rows = []
    for name, s in sets.items():
        ms = s.ms[encoder]
        live = s.live(hai_k)
        on_live, on_all = summary(ms[live], seed), summary(ms, seed)
        rows.append(
            {
                "latents": name,
                "MS live": on_live["mean"],
                "MS live 95% CI": on_live["ci"],
                "n live": on_live["n"],
                "MS all": on_all["mean"],
                "MS all 95% CI": on_all["ci"],
                "n all": on_all["n"],
                "NaN": on_all["n_nan"],
                "dead": int((s.firing == 0).sum()),
                "sparse": int(((s.firing > 0) & ~live).sum()),
            }
        )
    return rows


def _readable(rows: list[dict]) -> list[dict]:
    """Report rows with intervals as short text (results.json keeps the numbers)."""
    return [{k: _ci_text(v) if k.endswith("CI") else v for k, v in row.items()} for row in rows]


def hierarchy_rows(
    sae: SAE, sets: dict[str, LatentScores], paths: list[str], hai_k: int, seed: int = 0
) -> list[dict]:
    """Mean taxonomy depth of each Matryoshka group's live latents, with yardsticks:
    neurons, the random dictionary and image sets drawn at random."""

    def depth(scores: LatentScores) -> np.ndarray:
        return hierarchy_depth(scores.top_images, paths, valid=scores.live(hai_k))

    def row(name, latents, values) -> dict:
        r = summary(values, seed)
        return {
            "group": name,
            "latents": latents,
            "depth mean": r["mean"],
            "95% CI": r["ci"],
            "live latents": r["n"],
        }

    sae_depth = depth(sets["sae"])
    rows, first = [], 0
    for g, size in enumerate(sae.group_sizes):
        rows.append(row(g, f"{first}-{first + size - 1}", sae_depth[first : first + size]))
        first += size
    for name in ("neurons", "random dictionary"):
        scores = sets[name]
        rows.append(row(name, f"all {len(scores.firing)}", depth(scores)))
    baseline = random_set_depth(paths, hai_k, seed=seed)
    rows.append(
        {
            "group": "random image sets",
            "latents": f"{hai_k} images drawn at random",
            "depth mean": baseline["mean"],
            "95% CI": baseline["ci"],
            "live latents": baseline["n"],
        }
    )
    return rows


def score_job(
    config: ScoreConfig | None = None, out: str | Path | None = None, overwrite: bool = False
) -> tuple[dict, Path]:
    """`lucid sae score`: reconstruction, MS (SAE vs neurons vs a random dictionary),
    top images, uniqueness and, with a taxonomy, hierarchy depth per group."""
    cfg = config or ScoreConfig()
    sae = open_sae(_required(cfg.sae, "--sae"))
    store = open_store(_required(cfg.store, "--store"))
    if store.d != sae.d_in:
        raise InputError(f"the store's rows have width {store.d} but the SAE takes {sae.d_in}")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    encoder = cfg.embed_model or _default_encoder(store)
    checks = {"overwrite": overwrite, "resumable": False}
    claim(SYSTEM, out, cfg, dry_run=True, **checks)
    images = _store_images(store, cfg.images)
    embeddings = {encoder: image_embeddings(images, encoder, device)}
    paths = read_taxonomy(cfg.taxonomy, images.ids) if cfg.taxonomy else images.paths
    folder = claim(SYSTEM, out, cfg, **checks)
    results, report = score_report(sae, store, images, embeddings, paths, cfg)
    results["environment"] = environment(device, cfg.seed)
    write_json(folder / "results.json", results)
    report.save(folder)
    return results, folder


def score_report(
    sae: SAE,
    store: ActivationStore,
    images: ImageSet,
    embeddings: dict[str, np.ndarray],
    paths: list[str] | None,
    cfg: ScoreConfig,
    report: Report | None = None,
) -> tuple[dict, Report]:
    """The score job's numbers and report sections (the demo reuses them)."""
    report = report or Report(f"SAE scores: {sae.cfg.kind}, {sae.n_latents} latents")
    rec = reconstruction(sae, store, cfg.batch_size)
    sets = score_sets(sae, store, embeddings, cfg.hai_k, cfg.batch_size, cfg.seed)
    live = sets["sae"].live(cfg.hai_k)
    uniq = uniqueness(sets["sae"].top_images, valid=live)
    results = {
        "n_rows": len(store),
        "n_images": len(images.ids),
        "reconstruction": rec,
        "monosemanticity": {},
        "uniqueness": {str(t): v for t, v in uniq.items()},
    }
    report.heading("Reconstruction")
    report.text(
        f"On {rec['n']} rows: MSE {rec['mse']:.4g}, FVE {rec['fve']:.3f}, L0 {rec['l0']:.2f}, "
        f"dead fraction {rec['dead_fraction']:.3f}."
    )
    for encoder in embeddings:
        rows = ms_rows(sets, encoder, cfg.hai_k, cfg.seed)
        results["monosemanticity"][encoder] = rows
        report.heading(f"Monosemanticity against {encoder} embeddings")
        report.text(
            f"Per-image activations on {len(images.ids)} images, min-max normalised per latent. "
            "Raw neurons are the paper's baseline; an untrained TopK dictionary of the same "
            f"size and k shows what sparsity alone gives. Live = fires on >= {cfg.hai_k} "
            "images; sparse = on fewer; intervals are 95% bootstraps over latents."
        )
        report.table(_readable(rows))
        report.figure(
            plots.ms_histogram(sets, encoder, cfg.hai_k),
            f"ms_histogram_{folder_name(encoder)}",
            f"MS ({encoder} embeddings) of live SAE latents, neurons and random latents.",
        )
    first = next(iter(embeddings))
    top = _best_latents(sets["sae"], first, cfg.hai_k, 8)
    if len(top):
        report.figure(
            plots.top_image_grid(images.images, sets["sae"].top_images[top], top),
            "top_images",
            f"Top-activating images of the 8 live latents with the highest MS ({first}).",
        )
    report.heading("Uniqueness")
    report.text(
        "Share of pairs of live latents whose top-image sets have Jaccard index above t: "
        + ", ".join(f"t={t:g}: {v:.3f}" for t, v in uniq.items() if t in (0.0, 0.5, 0.9))
        + "."
    )
    if paths is not None:
        rows = hierarchy_rows(sae, sets, paths, cfg.hai_k, cfg.seed)
        results["hierarchy"] = rows
        report.heading("Hierarchy depth of top images per group")
        report.text(
            "Depth of a pair of images = the length of their taxonomy paths' common prefix; "
            "a latent's depth is the rounded mean over its top-image pairs (higher = finer). "
            "Random image sets are the yardstick."
        )
        report.table(_readable(rows))
    return results, report


def _best_latents(scores: LatentScores, encoder: str, hai_k: int, n: int) -> np.ndarray:
    ms = scores.ms[encoder]
    ms = np.where(scores.live(hai_k) & np.isfinite(ms), ms, -np.inf)
    order = np.argsort(-ms, kind="stable")[:n]
    return order[np.isfinite(ms[order])]


# --- steer ----------------------------------------------------------------------------------


def _latent_classes(scores: LatentScores, labels: np.ndarray | None) -> np.ndarray | None:
    """Modal class of each latent's top images and its share (purity), (K, 2)."""
    if labels is None:
        return None
    tops = labels[scores.top_images]
    modal = np.array([np.bincount(t).argmax() for t in tops])
    purity = (tops == modal[:, None]).mean(1)
    return np.stack([modal, purity], 1)


def choose_latents(scores: LatentScores, labels, n: int, hai_k: int) -> list[int]:
    """The n live latents with the purest top images (or the largest peaks, unlabelled)."""
    live = scores.live(hai_k)
    classes = _latent_classes(scores, labels)
    key = classes[:, 1] + 1e-6 * scores.row_max if classes is not None else scores.row_max
    key = np.where(live, key, -np.inf)
    order = np.argsort(-key, kind="stable")[:n]
    return [int(j) for j in order if np.isfinite(key[j])]


def steer_job(
    config: SteerConfig | None = None, out: str | Path | None = None, overwrite: bool = False
) -> tuple[dict, Path]:
    """`lucid sae steer`: clamp latents in the vision tower and score where images move."""
    cfg = config or SteerConfig()
    sae = open_sae(_required(cfg.sae, "--sae"))
    store = open_store(_required(cfg.store, "--store"))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    checks = {"overwrite": overwrite, "resumable": False}
    claim(SYSTEM, out, cfg, dry_run=True, **checks)
    vlm = load_vlm(cfg.model or store.meta.get("model", "digits-clip"), device)
    concept_set = _store_images(store, None, vlm)
    targets = _steer_images(cfg, store, vlm)
    folder = claim(SYSTEM, out, cfg, **checks)
    results, report = steer_report(vlm, sae, store, concept_set, targets, cfg)
    results["environment"] = environment(device, cfg.seed)
    write_json(folder / "results.json", results)
    report.save(folder)
    return results, folder


def _steer_images(cfg: SteerConfig, store: ActivationStore, vlm) -> ImageSet:
    source = cfg.images
    if source is None:
        source = "digits-test" if store.meta.get("images") in DIGIT_SETS else store.meta["images"]
    images = load_images(source, vlm.channels, vlm.image_size)
    if len(images.ids) > cfg.n_images:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(images.ids), cfg.n_images, False))
        images = ImageSet(
            images.images[pick],
            [images.ids[i] for i in pick],
            None if images.labels is None else images.labels[pick],
            images.class_names,
            None if images.paths is None else [images.paths[i] for i in pick],
        )
    return images


def steer_report(
    vlm, sae: SAE, store, concept_set: ImageSet, targets: ImageSet, cfg: SteerConfig, report=None
) -> tuple[dict, Report]:
    """Steering arms per latent: plain, SAE-only, each alpha; scores with a shuffled band."""
    layer = store.meta.get("layer", "block.0")
    report = report or Report(f"SAE steering of {vlm.name} at {layer}")
    scores = score_latents(store, sae.encode, {}, cfg.hai_k)  # top images only, no MS
    latents = cfg.latents or choose_latents(scores, concept_set.labels, cfg.n_latents, cfg.hai_k)
    if not latents:
        raise InputError(f"no latent fires on {cfg.hai_k} or more images; nothing to steer")
    class_names = targets.class_names or concept_set.class_names
    if not class_names:
        raise InputError("steering needs class names: an image folder with class subfolders")
    text = vlm.class_embeddings(list(class_names))
    concepts = concept_embeddings(vlm, concept_set.images, scores.top_images[latents])
    classes = _latent_classes(scores, concept_set.labels)
    rows, curves = [], {}
    plain = (vlm.encode_images(targets.images) @ text.T).argmax(-1)
    recon = _sae_only(vlm, sae, layer, targets.images, text)
    for i, j in enumerate(latents):
        shuffled = concepts[(i + 1) % len(latents)] if len(latents) > 1 else None
        unit = float(scores.row_max[j]) if cfg.alpha_scale == "max" else 1.0
        arms = [("plain", None, plain), ("SAE only", None, recon)]
        for a in cfg.alphas:
            pred = steered_predictions(
                vlm,
                sae,
                layer,
                j,
                a * unit,
                targets.images,
                text,
                keep_error=cfg.keep_error,
                pre_zero=cfg.pre_zero,
            )
            arms.append((f"alpha {a:g}", a, pred))
        target = int(classes[j, 0]) if classes is not None else None
        for arm, a, pred in arms:
            row = _steer_row(j, arm, a, pred, text, concepts[i], shuffled, targets, target)
            rows.append(row)
            if a is not None:
                curves.setdefault(j, []).append(row)
    results = {"layer": layer, "latents": latents, "rows": rows}
    report.heading("Steering")
    report.text(
        f"Latents {latents} (chosen by the purity of their top images on the store's images) "
        f"clamped at {layer} on every token, {len(targets.ids)} images; alpha in units of "
        f"{'each latent’s largest activation' if cfg.alpha_scale == 'max' else 'activation'}; "
        f"keep_error={cfg.keep_error}. Score = cos(text embedding of the zero-shot class an "
        "image moves to, mean embedding of the latent's top images); the shuffled column "
        "scores the same predictions against another latent's top images."
    )
    report.table(_readable(rows))
    report.figure(plots.steering_figure(curves), "steering", "Steering score and moved share.")
    return results, report


def _sae_only(vlm, sae: SAE, layer, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Predictions with the layer replaced by the SAE's reconstruction (no error term):
    the steering hook with no latent changed (latent 0 keeps its own value)."""
    return steered_predictions(vlm, sae, layer, 0, None, images, text, keep_error=False)


def _steer_row(j, arm, alpha, pred, text, concept, shuffled, targets: ImageSet, target) -> dict:
    score = steering_scores(pred, text, concept).numpy()
    row = {"latent": j, "arm": arm, "score": float(score.mean())}
    row["score CI"] = summary(score)["ci"]
    if shuffled is not None:
        row["shuffled score"] = float(steering_scores(pred, text, shuffled).mean())
    if target is not None and targets.labels is not None:
        other = targets.labels != target
        moved = (pred.numpy()[other] == target).mean() if other.any() else float("nan")
        row["latent class"] = target
        row["moved to it"] = float(moved)
        row["n other-class images"] = int(other.sum())
    return row


# --- demo -----------------------------------------------------------------------------------


def demo(
    out_dir: str | Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """digits-clip's vision tower on digits: a Matryoshka SAE on block-1 tokens of the
    train images, scored on the test images (MS vs neurons vs a random dictionary, with
    pixel and digits-clip embeddings), group depth in the digit taxonomy, steering."""
    device = resolve_device(device)
    seed_everything(0)
    out_dir = claim(SYSTEM, out_dir, overwrite=overwrite, resumable=False)
    vlm = load_vlm("digits-clip", device)
    stores = {}
    for split in DIGIT_SETS:
        images = load_images(split)
        stores[split] = extract(
            vlm,
            images.images,
            DEMO_LAYER,
            "all",
            image_ids=images.ids,
            out=out_dir / f"store-{split}",
            meta={"images": split, "channels": 1, "image_size": 8},
        )
    train_store = stores["digits-train"]
    cfg = _demo_sae_config(train_store.d, quick, device)
    sae = train(train_store, cfg, checkpoint_dir=out_dir / "checkpoints")
    sae.save(out_dir / "sae", hook_name=f"digits-clip:block.{DEMO_LAYER}")
    report = Report("SAEs for VLMs on digits-clip")
    report.text(
        f"digits-clip vision block {DEMO_LAYER} (the last), every token (CLS + 16 patches): "
        f"{len(train_store)} rows from the {len(train_store.image_ids)} train images train a "
        f"Matryoshka BatchTopK SAE ({sae.n_latents} latents, k = {cfg.k}, groups "
        f"{sae.group_sizes}, {cfg.steps} steps). Everything below is measured on the "
        f"{len(stores['digits-test'].image_ids)} held-out test images; settings were fixed "
        "before looking at test numbers."
    )
    report.text(_validation_text(sae.validation, cfg.k))
    report.figure(plots.training_figure(sae.history), "training", "Training curves.")
    test_store = stores["digits-test"]
    test_images = _store_images(test_store, None, vlm)
    score_cfg = ScoreConfig(hai_k=16)
    results = {"sae": {"n_latents": sae.n_latents, "groups": sae.group_sizes, "k": cfg.k}}
    embeddings = {e: image_embeddings(test_images, e, device) for e in ("pixels", "digits-clip")}
    section, report = score_report(
        sae, test_store, test_images, embeddings, test_images.paths, score_cfg, report
    )
    results["scores"] = section
    report.text(
        "digits-clip embeddings come from the model the SAE explains (the same family), so "
        "they can flatter MS; pixel space is an independent encoder."
    )
    steer_cfg = SteerConfig(n_latents=3 if quick else 4, n_images=100 if quick else 200)
    targets = _steer_images(steer_cfg, test_store, vlm)
    train_images = _store_images(train_store, None, vlm)
    results["steering"], report = steer_report(
        vlm, sae, train_store, train_images, targets, steer_cfg, report
    )
    report.heading("What the demo shows")
    report.text(findings(results))
    results["environment"] = environment(device, 0)
    write_json(out_dir / "results.json", results)
    return report.save(out_dir)


DEMO_LAYER = 1


def _above(a: dict, b: dict, key: str) -> str:
    """'above' when a's 95% interval lies wholly above b's, 'not clearly above' otherwise."""
    return "above" if a[f"{key} 95% CI"][0] > b[f"{key} 95% CI"][1] else "not clearly above"


def findings(results: dict) -> str:
    """The paper's three claims, stated as what happened on this run (not asserted)."""
    parts = []
    for encoder, rows in results["scores"]["monosemanticity"].items():
        r = {row["latents"]: row for row in rows}
        sae, neurons, rand = r["sae"], r["neurons"], r["random dictionary"]
        parts.append(
            f"MS ({encoder}): live SAE latents {sae['MS live']:.3f} (n = {sae['n live']}) are "
            f"{_above(sae, neurons, 'MS live')} neurons ({neurons['MS live']:.3f}) and "
            f"{_above(sae, rand, 'MS live')} an untrained sparse dictionary "
            f"({rand['MS live']:.3f})"
            + (
                ", which is itself above neurons: part of the gain is sparsity alone."
                if _above(rand, neurons, "MS live") == "above"
                else "."
            )
        )
    hierarchy = results["scores"].get("hierarchy")
    if hierarchy:
        groups = [h for h in hierarchy if isinstance(h["group"], int)]
        depths = [g["depth mean"] for g in groups if g["depth mean"] is not None]
        trend = (
            "rises"
            if all(b >= a for a, b in zip(depths, depths[1:], strict=False))
            else ("does not rise monotonically")
        )
        parts.append(
            "Matryoshka groups, coarse to fine: mean depth "
            + " -> ".join(f"{d:.2f}" for d in depths)
            + f" {trend} with the group index (random image sets: {hierarchy[-1]['depth mean']:.2f})."
        )
    steering = results.get("steering", {}).get("rows", [])
    moved = {}
    for row in steering:
        if row["arm"].startswith("alpha") and "moved to it" in row:
            moved[row["latent"]] = max(moved.get(row["latent"], 0.0), row["moved to it"])
    if moved:
        strong = [j for j, m in moved.items() if m >= 0.5]
        parts.append(
            f"Steering: {len(strong)} of {len(moved)} latents move at least half of the "
            "other-class test images to the latent's digit at some alpha (best share per "
            "latent: " + ", ".join(f"{j}: {m:.2f}" for j, m in moved.items()) + ")."
        )
    return " ".join(parts)


def _demo_sae_config(d_in: int, quick: bool, device: str):
    from lucidml.sae.config import SAEConfig

    return SAEConfig(
        kind="matryoshka",
        d_in=d_in,
        expansion=8,
        k=8,
        group_fractions=[1 / 16, 3 / 16, 12 / 16],
        steps=800 if quick else 3000,
        batch_size=1024,
        lr=1e-3,
        warmup=100,
        theta_start=0,
        theta_beta=0.99,
        dead_tokens=200_000,
        device=device,
    )


__all__ = [
    "demo",
    "extract_job",
    "open_sae",
    "open_store",
    "score_job",
    "steer_job",
    "train_job",
]
