"""Public entry points: RNN chunking experiments, PA, grafting, UCD, and the demo.

Each ``*_job`` resolves the device, validates its inputs and loads the model before
creating the run folder, so a user mistake leaves nothing half-written. With
``resume``, finished pieces (PA and UCD layers, grafting arms) are read back from the run's
``items/`` folder; each is keyed on everything that determines it (see ``job_key``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from lucidml.chunking import dsc, pa, perturb, sequences, ucd
from lucidml.chunking.collect import Collection, collect, encode_sentences, split_sentences
from lucidml.chunking.config import GraftConfig, PAConfig, RNNConfig, UCDConfig
from lucidml.chunking.graft import generate, graft, occurrence_effect, score_arms
from lucidml.chunking.rnn import TrainedRNN, one_thread, train_rnn
from lucidml.core.config import resolve_device, resolve_dtype, seed_everything
from lucidml.core.distributed import ItemStore
from lucidml.core.progress import get_logger, track
from lucidml.core.report import Report
from lucidml.core.runs import (
    Run,
    claim,
    digest,
    environment,
    folder_digest,
    path_inputs,
    write_json,
    write_yaml,
)
from lucidml.errors import InputError

log = get_logger("chunking")

MIN_SENTENCES = 4  # at least this many sentences, so both the fit and held-out parts have text

# --- RNN + DSC ----------------------------------------------------------------------------


@dataclass
class RNNExperiment:
    config: RNNConfig
    sequence: sequences.PlantedSequence
    trained: TrainedRNN
    control: TrainedRNN
    disc: dsc.Discretization
    dictionary: dsc.ChunkDictionary
    results: dict
    graft: perturb.GraftCurves | None = None


def _regime_sequence(cfg: RNNConfig) -> sequences.PlantedSequence:
    if cfg.regime == "hierarchy":
        return sequences.hierarchy(
            n_symbols=max(100_000, 4 * cfg.window), n_hierarchy=cfg.n_hierarchy, seed=cfg.seed
        )
    return sequences.generate(cfg.regime, seed=cfg.seed)


def _decoded(chunk: tuple, table: dict) -> str:
    return "".join(str(table.get(s, "?")) for s in chunk)


@one_thread()
def rnn_experiment(cfg: RNNConfig) -> RNNExperiment:
    """Train, record, discretise, decode, build the dictionary, and probe one regime."""
    cfg = cfg.resolved()
    seed_everything(cfg.seed)
    seq = _regime_sequence(cfg)
    kw = dict(
        hidden=cfg.hidden_size,
        window=cfg.window,
        lr=cfg.lr,
        seed=cfg.seed,
        nonlinearity=cfg.nonlinearity,
        alphabet=seq.alphabet,
        record_length=cfg.record_length,
    )
    trained = train_rnn(seq.symbols, iters=cfg.n_iters, **kw)
    control = train_rnn(seq.symbols, iters=0, **kw)
    disc = dsc.discretize(trained.hidden, cfg.bins, cfg.seed)
    disc_control = dsc.discretize(control.hidden, cfg.bins, cfg.seed)
    states, inputs = disc.state_tuples(), trained.input_symbols
    decode = dsc.decode_accuracy(states, inputs, min(cfg.decoder_train_steps, len(states) - 1))
    dictionary = dsc.learn_dictionary(
        states, cfg.merge_rounds, cfg.merges_per_round, cfg.min_pair_count
    )
    parse = dictionary.parse(states)
    counts = Counter(parse)
    # every state read as the symbol it co-occurs with most, over the whole window
    table = dsc.LookupDecoder.fit(states, inputs).table
    T = len(states)
    window_spans = [(a, b) for a, b in seq.spans if b <= T]
    recovered = sorted({_decoded(c, table) for c in dictionary.chunks if len(c) > 1})
    true_chunks = [w for w in seq.vocabulary if len(w) > 1]
    results = {
        "regime": cfg.regime,
        "sequence_length": T,
        "accuracy": trained.accuracy,
        "untrained_accuracy": control.accuracy,
        "decode_accuracy": decode["accuracy"],
        "decode_coverage": decode["coverage"],
        "n_states": disc.n_states,
        "n_states_untrained": disc_control.n_states,
        "parse_length": len(parse),
        "true_parse_length": sequences.true_parse_length(seq.symbols[:T], seq.vocabulary),
        "dictionary_size": len(dictionary.chunks),
        "dictionary_size_count_gt5": sum(1 for c in dictionary.chunks if counts[c] > 5),
        **{f"boundary_{k}": v for k, v in dsc.boundary_scores(parse, window_spans).items()},
        "true_chunks": true_chunks,
        "true_chunks_exact": [w for w in true_chunks if w in recovered],
        # a planted word inside a longer learnt chunk (filler absorbed on either side)
        "true_chunks_recovered": [w for w in true_chunks if any(w in c for c in recovered)],
        "top_chunks": [
            {"chunk": _decoded(c, table), "length": len(c), "count": n}
            for c, n in [(c, n) for c, n in counts.most_common() if len(c) > 1][:12]
        ],
        "rounds": [
            {"round": h["round"], "parse_length": h["parse_length"]} for h in dictionary.history
        ],
    }
    probe = next((w for w in true_chunks if len(w) >= 3), None)
    if probe is not None:
        predicted = perturb.transport_prediction(trained, disc, probe[0], probe[1])
        results["transport"] = {
            "state_of": probe[0],
            "then": probe[1],
            "predicted": predicted,
            "expected": probe[2],
        }
    exp = RNNExperiment(cfg, seq, trained, control, disc, dictionary, results)
    if cfg.regime == "several_chunks" and cfg.graft_repeats > 0:
        transfer = sequences.several_chunks(chunks=sequences.TRANSFER_CHUNKS, seed=cfg.seed + 1)
        exp.graft = perturb.graft_learning_curves(
            trained,
            disc,
            transfer.symbols,
            iters=cfg.transfer_iters,
            window=cfg.transfer_window,
            lr=cfg.lr,
            repeats=cfg.graft_repeats,
            seed=cfg.seed,
        )
        s = exp.graft.summary()
        head = max(1, cfg.transfer_iters // 10)
        results["graft"] = {
            "repeats": cfg.graft_repeats,
            "control_loss_first10pct": float(s["control_mean"][:head].mean()),
            "graft_loss_first10pct": float(s["graft_mean"][:head].mean()),
            "control_loss_final": float(s["control_mean"][-1]),
            "graft_loss_final": float(s["graft_mean"][-1]),
        }
    return exp


def _rnn_figures(exp: RNNExperiment, report: Report) -> None:
    from lucidml.chunking import plots

    name = exp.config.regime
    report.figure(
        plots.state_trajectory(exp.trained, exp.disc),
        f"{name}_states",
        "Hidden states (top) and discrete population state ids (bottom) over the "
        "recorded window; x-axis labels are the inputs.",
    )
    report.figure(
        plots.chunk_counts(exp.results["top_chunks"], exp.results["true_chunks"]),
        f"{name}_dictionary",
        "Most frequent multi-state chunks, read as symbols through the lookup decoder; "
        "chunks holding a planted word are orange. Distinct state chunks can read as the "
        "same symbols.",
    )
    if exp.graft is not None:
        report.figure(
            plots.graft_curves(exp.graft.summary()),
            f"{name}_graft",
            "Transfer learning on ABCDLMN: control vs graft (state(J)+K at every D), "
            "mean and 1.96 SEM over repeats.",
        )


def _rnn_section(exp: RNNExperiment, report: Report) -> None:
    r = exp.results
    report.heading(f"RNN regime: {r['regime']}")
    report.table(
        [
            {
                k: r[k]
                for k in (
                    "accuracy",
                    "untrained_accuracy",
                    "decode_accuracy",
                    "n_states",
                    "n_states_untrained",
                    "parse_length",
                    "true_parse_length",
                    "sequence_length",
                    "dictionary_size",
                    "boundary_precision",
                    "boundary_recall",
                )
            }
        ]
    )
    report.text(
        f"Planted chunks: {', '.join(r['true_chunks'])}. Found inside a learnt state chunk "
        f"(read through the decoder): {', '.join(r['true_chunks_recovered']) or 'none'}; "
        f"as a chunk of its own: {', '.join(r['true_chunks_exact']) or 'none'}."
    )
    if "transport" in r:
        t = r["transport"]
        report.text(
            f"Transport: state({t['state_of']}) then input {t['then']} predicts "
            f"{t['predicted']} (the planted chunk continues with {t['expected']})."
        )
    _rnn_figures(exp, report)


def rnn_job(cfg: RNNConfig, out: str | Path | None = None, overwrite: bool = False) -> Path:
    device = resolve_device(cfg.device)  # checked like everywhere, though the RNN uses the CPU
    if device != "cpu":
        log.info("the RNN and DSC run on the CPU: 12 units step by step gain nothing on %s", device)
    cfg = cfg.resolved()
    run = Run("chunking", out, cfg, overwrite=overwrite, resumable=False)
    log.info("training the RNN on %s", cfg.regime)
    exp = rnn_experiment(cfg)
    report = Report(f"Neural chunking: RNN on {cfg.regime}")
    _rnn_section(exp, report)
    with one_thread():  # what the RNN ran with
        env = environment("cpu", cfg.seed)
    run.write_results({**exp.results, "env": env})
    return report.save(run.path)


# --- LLM jobs: PA, grafting, UCD ----------------------------------------------------------


def open_run(cfg, out: str | Path | None, resume: bool, overwrite: bool, **inputs) -> Run:
    """The run folder; ``resume`` needs ``out`` to hold a run of the same config (the
    device aside) from unchanged input files (``inputs``, and the model if a folder)."""
    return Run(
        "chunking",
        out,
        cfg,
        resume=resume,
        overwrite=overwrite,
        inputs=path_inputs(model=cfg.model, **inputs),
    )


def model_fingerprint(model) -> str:
    """A hash of the weights (each parameter's sum, in its own dtype: MPS has no float64),
    so a model folder whose weights changed between a run and its resume is noticed."""
    import torch

    with torch.no_grad():
        sums = [float(p.sum()) for p in model.parameters()]
    return digest(type(model).__name__, sums)


def job_key(cfg, device: str, model, *inputs) -> str:
    """What every cached item of a job depends on besides its own name: the config, the
    device and dtype the numbers come from, the model's weights and the inputs' content
    (text, prompts, templates)."""
    dtype = str(next(model.parameters()).dtype)
    return digest(
        type(cfg).__name__,
        cfg.model_dump(mode="json"),
        device,
        dtype,
        model_fingerprint(model),
        *inputs,
    )


def cached(store: ItemStore | None, key: str, compute):
    """``compute()``, or the value an earlier (interrupted) run saved under ``key``.

    The value is always read back from its file, so a fresh and a resumed run return
    the same thing (JSON turns tuples into lists and NaN into None).
    """
    if store is None:
        return compute()
    if not store.has(key):
        store.save(key, compute())
    return store.load(key)


def _load(model_name: str, device: str):
    """The model in float32 on ``device`` (already resolved): PA thresholds and masks are
    statistics of hidden states at tolerances down to 0.8^34, finer than bf16 resolves."""
    from lucidml.core.zoo import load_llm

    return load_llm(model_name, device=device, dtype=resolve_dtype(device, half=False))


def read_text(path: str | Path | None) -> str:
    """The text of ``path``, or the built-in everyday corpus when ``path`` is None."""
    if path is None:
        from lucidml.chunking.corpus import everyday_text

        return everyday_text()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {p} does not exist")
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise InputError(f"text file {p} is not UTF-8 text") from None


def split_text(text: str, heldout_fraction: float, source: str = "the text"):
    """(fit sentences, held-out sentences), splitting by sentence."""
    sents = split_sentences(text)
    if len(sents) < MIN_SENTENCES:
        raise InputError(
            f"{source} is too short: it has {len(sents)} sentences and at least "
            f"{MIN_SENTENCES} are needed (ending in '.', '?' or '!')"
        )
    n_held = min(len(sents) - 2, max(1, round(heldout_fraction * len(sents))))
    return sents[:-n_held], sents[-n_held:]


def _check_layers(layers, n: int) -> list[int]:
    layers = list(range(n + 1)) if layers is None else list(layers)
    for ell in layers:
        if not 0 <= ell <= n:
            raise InputError(f"layer {ell} is out of range: this model has indices 0..{n}")
    return layers


def count_word(tokenizer, sentences, word: str, step: int = 0) -> int:
    enc = encode_sentences(tokenizer, sentences)
    ids = np.concatenate([np.array(e) for e in enc])
    sid = np.concatenate([np.full(len(e), i) for i, e in enumerate(enc)])
    return len(pa.word_positions(tokenizer, ids, sid, word, step))


def _require_occurrences(tokenizer, sentences, word: str, needed: int, where: str) -> int:
    n = count_word(tokenizer, sentences, word)
    if n < needed:
        raise InputError(
            f"the word '{word}' occurs {n} times in {where}; PA needs at least {needed} occurrences"
        )
    return n


def fit_word_templates(
    col: Collection, tokenizer, word: str, steps, layers, n_train: int, select: str, seed: int
) -> dict[tuple[int, int], pa.Template]:
    """Templates per (step, layer) for one word on a collection."""
    out = {}
    for step in steps:
        pos = pa.word_positions(tokenizer, col.token_ids, col.sentence_ids, word, step)
        for ell in layers:
            t = pa.fit(col.hidden[ell], pos, n_train=n_train, seed=seed, select=select)
            t.meta.update(word=word, step=step, layer=ell)
            out[(step, ell)] = t
    return out


Collections = tuple[Collection, Collection]  # (fitting text, held-out text)


def collect_split(model, tok, fit_sents, held_sents, layers, batch_size: int = 32) -> Collections:
    return (
        collect(model, tok, fit_sents, layers, batch_size),
        collect(model, tok, held_sents, layers, batch_size),
    )


def pa_layer(tok, cfg: PAConfig, ell: int, collections: Collections) -> dict:
    """One layer: the word's template at every step, fit on the fitting text, and its
    held-out row; JSON-able (``{"templates": [...], "rows": [...]}``)."""
    col_fit, col_held = collections
    templates = fit_word_templates(
        col_fit, tok, cfg.word, cfg.steps, [ell], cfg.n_train, cfg.select, cfg.seed
    )
    rows = []
    for (step, _), t in templates.items():
        pos = pa.word_positions(tok, col_held.token_ids, col_held.sentence_ids, cfg.word, step)
        scores = t.score(col_held.hidden[ell])
        m = pa.detection_metrics(scores <= t.theta, pos)
        rows.append(
            {
                "word": cfg.word,
                "step": step,
                "layer": ell,
                "tau": t.tau,
                "n_dims": t.n_dims,
                "theta": t.theta,
                "tpr": m["tpr"],
                "fpr": m["fpr"],
                "accuracy": m["accuracy"],
                "auroc": pa.auroc(scores, pos),
                "sweep_auc": t.meta["sweep_auc"],
                "n_fit": t.n_occurrences,
                "n_heldout": m["n_pos"],
            }
        )
    return {"templates": [t.to_json() for t in templates.values()], "rows": rows}


def pa_analysis(
    model,
    tok,
    cfg: PAConfig,
    fit_sents,
    held_sents,
    collections: Collections | None = None,
    store: ItemStore | None = None,
    key: str = "",
) -> tuple[pa.TemplateBank, list]:
    """Fit every (step, layer) template on the fit sentences; score them on held-out ones.

    ``collections`` reuses activations already collected for these sentences. With
    ``store``, each finished layer is saved under ``pa-layer<l>-<key>`` and read back
    instead of recomputed; only the layers still missing are collected.
    """
    layers = _check_layers(cfg.layers, model.config.num_hidden_layers)
    name = {ell: f"pa-layer{ell}-{key}" for ell in layers}
    todo = [ell for ell in layers if store is None or not store.has(name[ell])]
    if todo and collections is None:
        log.info(
            "collecting %d layers on %d + %d sentences", len(todo), len(fit_sents), len(held_sents)
        )
        collections = collect_split(model, tok, fit_sents, held_sents, todo, cfg.batch_size)
    bank = pa.TemplateBank(
        info={
            "model": cfg.model,
            "index": "hidden_states",
            "n_layers": model.config.num_hidden_layers,
        }
    )
    rows = []
    for ell in track(layers, f"PA templates of '{cfg.word}'"):
        item = cached(store, name[ell], partial(pa_layer, tok, cfg, ell, collections))
        for t in item["templates"]:
            template = pa.Template.from_json(t)
            bank[(cfg.word, template.meta["step"], ell)] = template
        rows += item["rows"]
    rows.sort(key=lambda r: (cfg.steps.index(r["step"]), layers.index(r["layer"])))
    return bank, rows


def best_layer(rows: list[dict], step: int = 0) -> dict:
    """The held-out row of ``step`` with the highest TPR - FPR among contextual layers.

    Index 0 (the token embeddings) is left out when other layers were scored: a word's
    own token embedding is identical at every occurrence, so it is exact by construction.
    """
    at_step = [r for r in rows if r["step"] == step]
    contextual = [r for r in at_step if r["layer"] > 0] or at_step
    return max(contextual, key=lambda r: r["tpr"] - r["fpr"])


def pa_job(
    cfg: PAConfig,
    text_path: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    device = resolve_device(cfg.device)
    text = read_text(text_path)
    fit_sents, held_sents = split_text(text, cfg.heldout_fraction, str(text_path or "the corpus"))
    model, tok = _load(cfg.model, device)
    _check_layers(cfg.layers, model.config.num_hidden_layers)
    _require_occurrences(
        tok,
        fit_sents,
        cfg.word,
        max(cfg.min_occurrences, cfg.n_train + 1),
        "the fitting part of the text",
    )
    _require_occurrences(tok, held_sents, cfg.word, 1, "the held-out part of the text")
    run = open_run(cfg, out, resume, overwrite, text=text_path)
    log.info("PA for '%s' on %d + %d sentences", cfg.word, len(fit_sents), len(held_sents))
    store, key = ItemStore(run / "items"), job_key(cfg, device, model, text)
    bank, rows = pa_analysis(model, tok, cfg, fit_sents, held_sents, store=store, key=key)
    bank.save(run / "templates")
    results = {
        "word": cfg.word,
        "model": cfg.model,
        "rows": rows,
        "best": best_layer(rows, cfg.steps[0] if 0 not in cfg.steps else 0),
        "n_fit_sentences": len(fit_sents),
        "n_heldout_sentences": len(held_sents),
        "env": environment(device, cfg.seed),
    }
    run.write_results(results)
    report = Report(f"Population averaging: '{cfg.word}' in {cfg.model}")
    _pa_section(report, cfg.word, rows)
    return report.save(run.path)


def _pa_section(report: Report, word: str, rows: list[dict]) -> None:
    from lucidml.chunking import plots

    b = best_layer(rows, 0 if any(r["step"] == 0 for r in rows) else rows[0]["step"])
    report.heading(f"PA templates for '{word}'")
    report.text(
        f"Best contextual layer at step {b['step']} on held-out text: index {b['layer']} with TPR "
        f"{b['tpr']:.3f}, FPR {b['fpr']:.4f} (tau {b['tau']:.3g}, {b['n_dims']} neurons; "
        f"{b['n_fit']} fitting and {b['n_heldout']} held-out occurrences). Index 0, the "
        "token embeddings, is exact by construction and left out of the choice."
    )
    report.figure(
        plots.pa_layers(rows, word),
        f"pa_{word}",
        "Held-out TPR and FPR per layer index (hidden_states convention), per step.",
    )
    report.table(
        [
            {k: r[k] for k in ("step", "layer", "tau", "n_dims", "tpr", "fpr", "auroc")}
            for r in rows
            if r["step"] == b["step"]
        ]
    )


def _templates_for(cfg: GraftConfig, model, tok, text_path, templates_dir):
    """Check where the templates come from now: (a function that makes them later, a
    digest of their source: the templates folder's files or the text)."""
    if templates_dir is not None:
        bank = pa.TemplateBank.load(templates_dir)
        found = bank.for_word(cfg.word, 0)
        missing = [ell for ell in cfg.layers if ell not in found]
        if missing:
            raise InputError(
                f"{templates_dir} has no step-0 template of '{cfg.word}' at layer {missing[0]}"
            )
        return (lambda: {ell: found[ell] for ell in cfg.layers}), folder_digest(templates_dir)
    text = read_text(text_path)
    sents = split_sentences(text)
    if len(sents) < MIN_SENTENCES:
        raise InputError(
            f"{text_path or 'the corpus'} is too short: it has {len(sents)} "
            f"sentences and at least {MIN_SENTENCES} are needed"
        )
    _require_occurrences(
        tok,
        sents,
        cfg.word,
        max(cfg.min_occurrences, cfg.n_train + 1),
        str(text_path or "the corpus"),
    )

    def fit_now():
        col = collect(model, tok, sents, cfg.layers)
        fitted = fit_word_templates(
            col, tok, cfg.word, [0], cfg.layers, cfg.n_train, cfg.select, cfg.seed
        )
        return {ell: t for (_, ell), t in fitted.items()}

    return fit_now, digest(text)


def read_prompts(path: str | Path | None) -> list[str]:
    """One prompt per non-empty line of ``path``; the built-in prompts when None."""
    if path is None:
        from lucidml.chunking.corpus import PROMPTS

        return list(PROMPTS)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file {p} does not exist")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"prompt file {p} holds no prompts (one per line expected)")
    return prompts


def graft_job(
    cfg: GraftConfig,
    prompts_path: str | Path | None = None,
    text_path: str | Path | None = None,
    templates_dir: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    device = resolve_device(cfg.device)
    prompts = read_prompts(prompts_path)
    model, tok = _load(cfg.model, device)
    _check_layers(cfg.layers, model.config.num_hidden_layers)
    make_templates, source = _templates_for(cfg, model, tok, text_path, templates_dir)
    run = open_run(
        cfg, out, resume, overwrite, prompts=prompts_path, text=text_path, templates=templates_dir
    )
    store, key = ItemStore(run / "items"), job_key(cfg, device, model, prompts, source)
    sampling = dict(
        top_p=cfg.top_p,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        chat=cfg.chat,
        batch_size=cfg.batch_size,
    )

    def grafted_texts():
        with graft(model, make_templates(), cfg.positions):
            return generate(model, tok, prompts, cfg.seed, **sampling)

    log.info("control and grafted arms on %d prompts", len(prompts))
    control = cached(
        store, f"control-{key}", lambda: generate(model, tok, prompts, cfg.seed, **sampling)
    )
    grafted = cached(store, f"graft-{key}", grafted_texts)
    effect = score_arms(control, grafted, cfg.word, cfg.seed)
    results = {
        "word": cfg.word,
        "model": cfg.model,
        "layers": cfg.layers,
        "n_prompts": len(prompts),
        **effect.summary(),
        "examples": [
            {"prompt": p, "control": c, "graft": g}
            for p, c, g in zip(prompts[:5], effect.control_texts, effect.graft_texts, strict=False)
        ],
        "env": environment(device, cfg.seed),
    }
    run.write_results(results)
    report = Report(f"Grafting '{cfg.word}' into {cfg.model}")
    _graft_section(report, [results])
    return report.save(run.path)


def _graft_section(report: Report, effects: list[dict]) -> None:
    from lucidml.chunking import plots

    report.heading("Grafting effect")
    report.text(
        "Share of sampled continuations (prompt excluded) that contain the word, "
        "with identical prompts, sampling settings and seeds in both arms."
    )
    report.table(
        [
            {
                k: e[k]
                for k in ("word", "control_rate", "graft_rate", "mcnemar_p", "ci_low", "ci_high")
            }
            for e in effects
        ]
    )
    report.figure(
        plots.graft_effect(effects),
        "graft_effect",
        "Occurrence rate of the word: control vs grafted.",
    )
    ex = effects[0].get("examples") or []
    if ex:
        report.text(
            f"Example ('{effects[0]['word']}'): prompt '{ex[0]['prompt']}' -> control: "
            f"'{ex[0]['control'][:200]}' | grafted: '{ex[0]['graft'][:200]}'"
        )


def _content_rows(col: Collection, tok, ell: int):
    """The activations of a layer without special-token rows (BOS, padding)."""
    special = np.isin(col.token_ids, tok.all_special_ids)
    return col.hidden[ell][~special], col.token_ids[~special]


def ucd_analysis(
    model,
    tok,
    cfg: UCDConfig,
    fit_sents,
    held_sents,
    collections: Collections | None = None,
    store: ItemStore | None = None,
    key: str = "",
) -> list[dict]:
    """One chunk model per layer, trained on the model's device. With ``store``, each
    finished layer is saved under ``ucd-layer<l>-<key>``; only missing layers are collected."""
    n = model.config.num_hidden_layers
    layers = [n // 2] if cfg.layers is None else _check_layers(cfg.layers, n)
    name = {ell: f"ucd-layer{ell}-{key}" for ell in layers}
    todo = [ell for ell in layers if store is None or not store.has(name[ell])]
    if todo and collections is None:
        collections = collect_split(model, tok, fit_sents, held_sents, todo)
    device = str(next(model.parameters()).device)
    rows = []
    for ell in layers:
        fit_layer = partial(_ucd_layer, cfg, tok, ell, collections, device)
        rows.append(cached(store, name[ell], fit_layer))
    return rows


def _ucd_layer(cfg: UCDConfig, tok, ell: int, collections: Collections, device: str) -> dict:
    col_fit, col_held = collections
    H, ids = _content_rows(col_fit, tok, ell)
    H_held, _ = _content_rows(col_held, tok, ell)
    if cfg.n_chunks > len(H):
        raise InputError(
            f"n_chunks {cfg.n_chunks} exceeds the {len(H)} tokens of the "
            "fitting text; lower --chunks or give more text"
        )
    log.info("UCD at index %d: %d chunks on %d states", ell, cfg.n_chunks, len(H))
    m = ucd.fit(
        H,
        cfg.n_chunks,
        seed=cfg.seed,
        reseed_dead=cfg.reseed_dead,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        device=device,
    )
    top = Counter(m.assignments.tolist()).most_common(8)
    return {
        "layer": ell,
        "train_loss": m.losses[-1],
        "test_loss": m.loss(H_held),
        "live_chunks": len(m.live),
        "dead_last_epoch": m.dead_per_epoch[-1],
        "reseeded": m.reseeded,
        "losses": m.losses,
        "dead_per_epoch": m.dead_per_epoch,
        "top_chunks": [
            {
                "chunk": int(k),
                "size": n_k,
                "tokens": _top_tokens(tok, ids[m.assignments == k]),
            }
            for k, n_k in top
        ],
    }


def _top_tokens(tok, ids: np.ndarray, k: int = 5) -> str:
    return ", ".join(repr(tok.decode([int(t)])) for t, _ in Counter(ids.tolist()).most_common(k))


def ucd_job(
    cfg: UCDConfig,
    text_path: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    device = resolve_device(cfg.device)
    text = read_text(text_path)
    fit_sents, held_sents = split_text(text, cfg.heldout_fraction, str(text_path or "the corpus"))
    model, tok = _load(cfg.model, device)
    if cfg.layers is not None:
        _check_layers(cfg.layers, model.config.num_hidden_layers)
    n_tokens = sum(len(e) - 1 for e in encode_sentences(tok, fit_sents))
    if cfg.n_chunks > n_tokens:
        raise InputError(
            f"n_chunks {cfg.n_chunks} exceeds the {n_tokens} tokens of the fitting "
            "text; lower --chunks or give more text"
        )
    run = open_run(cfg, out, resume, overwrite, text=text_path)
    log.info(
        "UCD with %d chunks on %d + %d sentences", cfg.n_chunks, len(fit_sents), len(held_sents)
    )
    store, key = ItemStore(run / "items"), job_key(cfg, device, model, text)
    rows = ucd_analysis(model, tok, cfg, fit_sents, held_sents, store=store, key=key)
    run.write_results(
        {
            "model": cfg.model,
            "n_chunks": cfg.n_chunks,
            "layers": rows,
            "env": environment(device, cfg.seed),
        }
    )
    report = Report(f"Unsupervised chunk discovery in {cfg.model}")
    _ucd_section(report, rows)
    return report.save(run.path)


def _ucd_section(report: Report, rows: list[dict]) -> None:
    from lucidml.chunking import plots

    report.heading("Unsupervised chunk discovery")
    report.table(
        [
            {
                k: r[k]
                for k in (
                    "layer",
                    "train_loss",
                    "test_loss",
                    "live_chunks",
                    "dead_last_epoch",
                    "reseeded",
                )
            }
            for r in rows
        ]
    )
    report.figure(
        plots.ucd_curves(rows),
        "ucd_loss",
        "Training loss (-mean max cosine) and dead chunks per epoch.",
    )
    r = rows[0]
    report.table(
        [
            {"chunk": c["chunk"], "states": c["size"], "most common tokens": c["tokens"]}
            for c in r["top_chunks"]
        ]
    )


# --- demo ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPlan:
    """How much work each section of the demo does (docs/chunking.md compares the two)."""

    regimes: dict[str, dict]  # regime -> RNNConfig changes, in report order
    n_sentences: int  # corpus sentences for PA and UCD (70 % fitting, 30 % held out)
    layer_stride: int  # PA at every stride-th index, plus the graft layers and the middle
    pa_words: tuple[str, ...]
    graft_words: tuple[str, ...]
    max_new_tokens: int  # per continuation, in both arms
    ucd_chunks: int
    ucd_epochs: int
    graft_layers: tuple[int, ...] = tuple(GraftConfig.model_fields["layers"].default)
    model: str = PAConfig.model_fields["model"].default


# the paper's training lengths; a 1000-step recording gives the dictionary enough repeats
# to show the chunks, and the hierarchy regime trains on 1000-symbol windows (paper 5000)
FULL = DemoPlan(
    regimes={
        "one_chunk": dict(record_length=1000),
        "several_chunks": dict(record_length=1000, graft_repeats=30),
        "probabilistic_chunks": dict(record_length=1000),
        "hierarchy": dict(record_length=1000, window=1000, n_iters=300),
    },
    n_sentences=1200,
    layer_stride=1,
    pa_words=("coffee", "dog", "rain"),
    graft_words=("coffee", "dog", "rain"),
    max_new_tokens=120,
    ucd_chunks=100,
    ucd_epochs=40,
)
QUICK = DemoPlan(
    regimes={
        "one_chunk": dict(record_length=1000),
        "several_chunks": dict(record_length=1000, graft_repeats=5),
        "probabilistic_chunks": dict(record_length=1000),
        "hierarchy": dict(record_length=1000, window=1000, n_iters=100),
    },
    n_sentences=500,
    layer_stride=3,
    pa_words=("coffee", "dog", "rain"),
    graft_words=("coffee",),
    max_new_tokens=40,
    ucd_chunks=20,
    ucd_epochs=10,
)


def demo(
    out_dir: Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """RNN regimes with recovered vs true chunks; PA, grafting and UCD on SmolLM2.

    ``quick`` runs the smaller plan (``QUICK``); ``device`` (None: auto) places SmolLM2.
    """
    return run_demo(out_dir, QUICK if quick else FULL, device, quick, overwrite)


def run_demo(
    out_dir: Path,
    plan: DemoPlan,
    device: str | None = None,
    quick: bool = False,
    overwrite: bool = False,
):
    """The demo's sections under ``plan``; returns the path of report.html."""
    from lucidml.chunking.corpus import PROMPTS, everyday_sentences

    device = resolve_device(device)
    out_dir = claim("chunking", out_dir, overwrite=overwrite, resumable=False)
    report = Report("Neural population chunking (lucidml.chunking)")
    results: dict = {"quick": quick, "rnn": {}}
    for regime, changes in plan.regimes.items():
        log.info("demo: RNN regime %s", regime)
        exp = rnn_experiment(RNNConfig(regime=regime, **changes))
        results["rnn"][regime] = exp.results
        _rnn_section(exp, report)

    model, tok = _load(plan.model, device)
    sents = everyday_sentences(plan.n_sentences, seed=0)
    fit_sents, held_sents = split_text(" ".join(sents), 0.3)
    n = model.config.num_hidden_layers
    layers = sorted(set(range(0, n + 1, plan.layer_stride)) | set(plan.graft_layers) | {n // 2})
    log.info(
        "demo: collecting %d layers of %s on %d sentences", len(layers), plan.model, len(sents)
    )
    collections = collect_split(model, tok, fit_sents, held_sents, layers)
    results["pa"], results["graft"] = {}, []
    banks = {}
    for word in plan.pa_words:
        cfg = PAConfig(model=plan.model, word=word, steps=[0], layers=layers)
        bank, rows = pa_analysis(model, tok, cfg, fit_sents, held_sents, collections)
        results["pa"][word] = {"rows": rows, "best": best_layer(rows)}
        banks[word] = bank
        _pa_section(report, word, rows)
    gcfg = GraftConfig(
        model=plan.model,
        word=plan.graft_words[0],
        layers=list(plan.graft_layers),
        max_new_tokens=plan.max_new_tokens,
    )
    sampling = dict(
        top_p=gcfg.top_p, temperature=gcfg.temperature, max_new_tokens=gcfg.max_new_tokens
    )
    log.info("demo: sampling the control arm")
    control = generate(model, tok, PROMPTS, gcfg.seed, **sampling)
    for word in plan.graft_words:
        log.info("demo: grafting '%s'", word)
        templates = {ell: banks[word][(word, 0, ell)] for ell in gcfg.layers}
        effect = occurrence_effect(
            model,
            tok,
            PROMPTS,
            word,
            templates,
            gcfg.positions,
            gcfg.seed,
            control_texts=control,
            **sampling,
        )
        results["graft"].append(
            {
                "word": word,
                **effect.summary(),
                "examples": [
                    {
                        "prompt": PROMPTS[0],
                        "control": effect.control_texts[0],
                        "graft": effect.graft_texts[0],
                    }
                ],
            }
        )
    _graft_section(report, results["graft"])
    ucfg = UCDConfig(
        model=plan.model, n_chunks=plan.ucd_chunks, epochs=plan.ucd_epochs, batch_size=256
    )
    log.info("demo: unsupervised chunk discovery")
    results["ucd"] = ucd_analysis(model, tok, ucfg, fit_sents, held_sents, collections=collections)
    _ucd_section(report, results["ucd"])
    results["env"] = environment(device, 0)
    write_json(out_dir / "results.json", results)
    write_yaml(
        out_dir / "config.yaml",
        {"quick": quick, "device": device, "plan": dataclasses.asdict(plan)},
    )
    return report.save(out_dir)
