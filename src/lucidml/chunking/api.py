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
from lucidml.chunking import graft as graft_mod
from lucidml.chunking.collect import Collection, collect, encode_sentences, split_sentences
from lucidml.chunking.config import GraftConfig, PAConfig, RNNConfig, UCDConfig
from lucidml.chunking.graft import generate
from lucidml.chunking.rnn import TrainedRNN, one_thread, train_rnn
from lucidml.core.config import resolve_device, resolve_dtype, seed_everything
from lucidml.core.distributed import ItemStore
from lucidml.core.metrics import bootstrap_ci
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


def _learn(cfg: RNNConfig, states: list) -> dsc.ChunkDictionary:
    return dsc.learn_dictionary(
        states,
        cfg.merge_rounds,
        cfg.merges_per_round,
        cfg.min_pair_count,
        rule=cfg.merge_rule,
        min_ratio=cfg.merge_min_ratio,
        alpha=cfg.merge_alpha,
    )


def _chunk_recovery(dictionary, states, inputs, spans, true_chunks) -> dict:
    """Which planted words the dictionary holds, read through the lookup decoder.

    ``exact``: a learnt chunk reads as the word; ``recovered``: one contains it;
    ``parsed``: the share of the word's planted occurrences that the parse carries as
    exactly one chunk (same start and end).
    """
    table = dsc.LookupDecoder.fit(states, inputs).table
    learnt = {_decoded(c, table) for c in dictionary.chunks if len(c) > 1}
    ends, pos = set(), 0
    for c in dictionary.parse(states):
        ends.add((pos, pos + len(c)))
        pos += len(c)
    text = "".join(inputs)
    parsed = {}
    for w in true_chunks:
        occurrences = [(a, b) for a, b in spans if text[a:b] == w]
        hits = sum(1 for span in occurrences if span in ends)
        parsed[w] = hits / len(occurrences) if occurrences else 0.0
    return {
        "exact": [w for w in true_chunks if w in learnt],
        "recovered": [w for w in true_chunks if any(w in c for c in learnt)],
        "parsed": parsed,
    }


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
    dictionary = _learn(cfg, states)
    parse = dictionary.parse(states)
    counts = Counter(parse)
    # every state read as the symbol it co-occurs with most, over the whole window
    table = dsc.LookupDecoder.fit(states, inputs).table
    T = len(states)
    window_spans = [(a, b) for a, b in seq.spans if b <= T]
    true_chunks = [w for w in seq.vocabulary if len(w) > 1]
    found = _chunk_recovery(dictionary, states, inputs, window_spans, true_chunks)
    # yardsticks: the untrained RNN's states, and the trained states in shuffled order
    states_control = disc_control.state_tuples()
    found_control = _chunk_recovery(
        _learn(cfg, states_control), states_control, inputs, window_spans, true_chunks
    )
    order = np.random.default_rng(cfg.seed).permutation(T)
    shuffled = [states[i] for i in order]
    shuffled_inputs = [inputs[i] for i in order]
    found_shuffled = _chunk_recovery(
        _learn(cfg, shuffled), shuffled, shuffled_inputs, [], true_chunks
    )
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
        "merge_rule": cfg.merge_rule,
        "true_chunks_exact": found["exact"],
        # a planted word inside a longer learnt chunk (filler absorbed on either side)
        "true_chunks_recovered": found["recovered"],
        # share of the planted occurrences that the parse carries as exactly that word
        "true_chunks_parsed": found["parsed"],
        "untrained_true_chunks_exact": found_control["exact"],
        "untrained_true_chunks_parsed": found_control["parsed"],
        "shuffled_true_chunks_exact": found_shuffled["exact"],
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
        f"as a chunk of its own: {', '.join(r['true_chunks_exact']) or 'none'} "
        f"(merge rule: {r['merge_rule']})."
    )

    def share(parsed: dict) -> str:
        return ", ".join(f"{w} {v:.2f}" for w, v in parsed.items()) or "none"

    report.text(
        f"Share of the planted occurrences parsed as exactly that word: "
        f"{share(r['true_chunks_parsed'])}. Yardsticks: the untrained RNN's states give "
        f"{', '.join(r['untrained_true_chunks_exact']) or 'none'} as chunks of their own "
        f"(parsed: {share(r['untrained_true_chunks_parsed'])}); the trained states in "
        f"shuffled order give {', '.join(r['shuffled_true_chunks_exact']) or 'none'}."
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


def _special_rows(col: Collection, tok) -> np.ndarray:
    return np.flatnonzero(np.isin(col.token_ids, tok.all_special_ids))


def fit_word_templates(
    col_fit: Collection, col_val: Collection, tokenizer, word: str, steps, layers, n_train, seed
) -> dict[tuple[int, int], pa.Template]:
    """Templates per (step, layer) for one word: fit on ``col_fit``, tau and theta chosen
    on ``col_val``, each with its contrastive direction (word mean minus the mean of
    the other tokens of the fitting text) for additive grafting."""
    special = _special_rows(col_fit, tokenizer)
    out = {}
    for step in steps:
        pos = pa.word_positions(tokenizer, col_fit.token_ids, col_fit.sentence_ids, word, step)
        val = pa.word_positions(tokenizer, col_val.token_ids, col_val.sentence_ids, word, step)
        for ell in layers:
            t = pa.fit_validated(
                col_fit.hidden[ell], pos, col_val.hidden[ell], val, n_train=n_train, seed=seed
            )
            t.contrast = pa.mean_difference(col_fit.hidden[ell], pos, exclude=special)
            t.meta.update(word=word, step=step, layer=ell)
            out[(step, ell)] = t
    return out


Collections = tuple[Collection, Collection]  # (fitting text, held-out text)
PACollections = tuple[Collection, Collection, Collection]  # (fitting, validation, test)


def collect_split(model, tok, fit_sents, held_sents, layers, batch_size: int = 32) -> Collections:
    return (
        collect(model, tok, fit_sents, layers, batch_size),
        collect(model, tok, held_sents, layers, batch_size),
    )


def _rates(detected: np.ndarray, positions) -> dict:
    """TPR and FPR with counts and 95% Wilson intervals."""
    return pa.rate_intervals(pa.detection_metrics(detected, positions))


def _thresholded(val_scores, val_pos, test_scores, test_pos) -> dict:
    """Test rates of "detect when score >= t", with t chosen on the validation text."""
    threshold, _ = pa.youden_threshold(val_scores, val_pos)
    return _rates(np.asarray(test_scores) >= threshold, test_pos)


def _linear_baselines(tok, cfg: PAConfig, ell: int, step: int, cols: PACollections) -> dict:
    """Difference of means and a logistic probe at one (step, layer): fit on the fitting
    text with every occurrence (PA uses n_train of them), threshold on validation."""
    col_fit, col_val, col_test = cols
    pos = [pa.word_positions(tok, c.token_ids, c.sentence_ids, cfg.word, step) for c in cols]
    special = _special_rows(col_fit, tok)
    H = [c.hidden[ell] for c in cols]
    direction = pa.mean_difference(H[0], pos[0], exclude=special)
    diff = [(h.float() @ direction).numpy() for h in H[1:]]
    probe = pa.logistic_probe(H[0], pos[0], exclude=special, seed=cfg.seed)
    logit = [probe.decision_function(h.float().numpy()) for h in H[1:]]
    return {
        "mean_difference": _thresholded(diff[0], pos[1], diff[1], pos[2]),
        "logistic_probe": _thresholded(logit[0], pos[1], logit[1], pos[2]),
    }


def pa_layer(tok, cfg: PAConfig, ell: int, collections: PACollections) -> dict:
    """One layer: the word's template at every step (fit on the fitting text, tau and
    theta chosen on validation), its validation and test rows, and the linear baselines;
    JSON-able (``{"templates": [...], "rows": [...]}``)."""
    col_fit, col_val, col_test = collections
    templates = fit_word_templates(
        col_fit, col_val, tok, cfg.word, cfg.steps, [ell], cfg.n_train, cfg.seed
    )
    rows = []
    for (step, _), t in templates.items():
        val_pos = pa.word_positions(tok, col_val.token_ids, col_val.sentence_ids, cfg.word, step)
        pos = pa.word_positions(tok, col_test.token_ids, col_test.sentence_ids, cfg.word, step)
        val = pa.detection_metrics(t.detect(col_val.hidden[ell]), val_pos)
        scores = t.score(col_test.hidden[ell])
        row = {
            "word": cfg.word,
            "step": step,
            "layer": ell,
            "tau": t.tau,
            "n_dims": t.n_dims,
            "theta": t.theta,
            **_rates(scores <= t.theta, pos),
            "auroc": pa.auroc(scores, pos),
            "val_tpr": val["tpr"],
            "val_fpr": val["fpr"],
            "n_val_pos": val["n_pos"],
            "n_fit": t.n_occurrences,
        }
        if cfg.baselines:
            row["baselines"] = _linear_baselines(tok, cfg, ell, step, collections)
        rows.append(row)
    return {"templates": [t.to_json() for t in templates.values()], "rows": rows}


def token_identity_rows(tok, cfg: PAConfig, collections: PACollections) -> list[dict]:
    """Per step: the token-identity detector's test rates (no activations involved)."""
    col_fit, _, col_test = collections
    out = []
    for step in cfg.steps:
        fit_pos = pa.word_positions(tok, col_fit.token_ids, col_fit.sentence_ids, cfg.word, step)
        pos = pa.word_positions(tok, col_test.token_ids, col_test.sentence_ids, cfg.word, step)
        detected = pa.token_identity(col_fit.token_ids, fit_pos, col_test.token_ids)
        out.append({"step": step, **_rates(detected, pos)})
    return out


def pa_analysis(
    model,
    tok,
    cfg: PAConfig,
    fit_sents,
    val_sents,
    test_sents,
    collections: PACollections | None = None,
    store: ItemStore | None = None,
    key: str = "",
) -> tuple[pa.TemplateBank, list, dict]:
    """Fit every (step, layer) template on the fitting sentences, choose tau and theta on
    the validation sentences, and score templates and baselines on the test sentences.

    Returns (bank, rows, baselines). ``collections`` reuses activations already collected
    for these three texts. With ``store``, each finished layer is saved under
    ``pa-layer<l>-<key>`` and read back instead of recomputed; only the layers still
    missing are collected.
    """
    layers = _check_layers(cfg.layers, model.config.num_hidden_layers)
    name = {ell: f"pa-layer{ell}-{key}" for ell in layers}
    todo = [ell for ell in layers if store is None or not store.has(name[ell])]
    if collections is None:
        log.info(
            "collecting %d layers on %d + %d + %d sentences",
            len(todo),
            len(fit_sents),
            len(val_sents),
            len(test_sents),
        )
        collections = tuple(
            collect(model, tok, s, todo or layers[:1], cfg.batch_size)
            for s in (fit_sents, val_sents, test_sents)
        )
    bank = pa.TemplateBank(
        info={
            "model": cfg.model,
            "index": "hidden_states",
            "n_layers": model.config.num_hidden_layers,
            "width": model.config.hidden_size,
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
    baselines = {"token_identity": token_identity_rows(tok, cfg, collections)}
    if cfg.baselines:  # moved out of the rows: one list per baseline
        per_row = [r.pop("baselines") for r in rows]
        for name_ in ("mean_difference", "logistic_probe"):
            baselines[name_] = [
                {"step": r["step"], "layer": r["layer"], **b[name_]}
                for r, b in zip(rows, per_row, strict=True)
            ]
    return bank, rows, baselines


def best_layer(rows: list[dict], step: int = 0) -> dict:
    """The row of ``step`` with the highest validation TPR - FPR among contextual layers;
    its test numbers are what a report quotes.

    Index 0 (the token embeddings) is left out when other layers were scored: a word's
    own token embedding is identical at every occurrence, so it is exact by construction.
    """
    at_step = [r for r in rows if r["step"] == step]
    contextual = [r for r in at_step if r["layer"] > 0] or at_step
    return max(contextual, key=lambda r: (r["val_tpr"] - r["val_fpr"], -r["layer"]))


def read_test_text(path: str | Path | None) -> tuple[str, str]:
    """(text, name): the ``--test-text`` file, or the built-in PA test text."""
    if path is None:
        from lucidml.chunking.corpus import pa_test_text

        return pa_test_text(), "the built-in test text"
    return read_text(path), str(path)


def pa_job(
    cfg: PAConfig,
    text_path: str | Path | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    test_path: str | Path | None = None,
) -> Path:
    device = resolve_device(cfg.device)
    text = read_text(text_path)
    test_text, test_name = read_test_text(test_path)
    source = str(text_path or "the corpus")
    fit_sents, val_sents = split_text(text, cfg.validation_fraction, source)
    test_sents = split_sentences(test_text)
    model, tok = _load(cfg.model, device)
    _check_layers(cfg.layers, model.config.num_hidden_layers)
    needed = max(cfg.min_occurrences, cfg.n_train + 1)
    _require_occurrences(tok, fit_sents, cfg.word, needed, "the fitting part of the text")
    _require_occurrences(tok, val_sents, cfg.word, 1, "the validation part of the text")
    _require_occurrences(tok, test_sents, cfg.word, 1, f"{test_name} (give one with --test-text)")
    run = open_run(cfg, out, resume, overwrite, text=text_path, test_text=test_path)
    log.info(
        "PA for '%s' on %d fitting, %d validation and %d test sentences",
        cfg.word,
        len(fit_sents),
        len(val_sents),
        len(test_sents),
    )
    store, key = ItemStore(run / "items"), job_key(cfg, device, model, text, test_text)
    bank, rows, baselines = pa_analysis(
        model, tok, cfg, fit_sents, val_sents, test_sents, store=store, key=key
    )
    bank.save(run / "templates")
    results = {
        "word": cfg.word,
        "model": cfg.model,
        "rows": rows,
        "best": best_layer(rows, 0 if 0 in cfg.steps else cfg.steps[0]),
        "baselines": baselines,
        "n_fit_sentences": len(fit_sents),
        "n_validation_sentences": len(val_sents),
        "n_test_sentences": len(test_sents),
        "test_text": test_name,
        "env": environment(device, cfg.seed),
    }
    run.write_results(results)
    report = Report(f"Population averaging: '{cfg.word}' in {cfg.model}")
    _pa_section(report, cfg.word, rows, baselines)
    return report.save(run.path)


def _interval(r: dict, rate: str) -> str:
    return f"{r[rate]:.2f} [{r[rate + '_low']:.2f}, {r[rate + '_high']:.2f}]"


def _pa_section(report: Report, word: str, rows: list[dict], baselines: dict) -> None:
    from lucidml.chunking import plots

    step = 0 if any(r["step"] == 0 for r in rows) else rows[0]["step"]
    b = best_layer(rows, step)
    report.heading(f"PA templates for '{word}'")
    report.text(
        f"Layer, tau and theta are chosen on the validation sentences; rates are on the test "
        f"text with 95% Wilson intervals. Best contextual layer at step {step}: index "
        f"{b['layer']}, TPR {_interval(b, 'tpr')} of {b['n_pos']} occurrences, FPR "
        f"{_interval(b, 'fpr')} of {b['n_neg']} other tokens (tau {b['tau']:.3g}, "
        f"{b['n_dims']} neurons, fit on {b['n_fit']} occurrences). Index 0, the token "
        "embeddings, is exact by construction and left out of the choice."
    )
    ident = next(r for r in baselines["token_identity"] if r["step"] == step)
    table = [
        {
            "detector": f"PA, index {b['layer']}",
            "TPR": _interval(b, "tpr"),
            "FPR": _interval(b, "fpr"),
        },
        {
            "detector": "token identity",
            "TPR": _interval(ident, "tpr"),
            "FPR": _interval(ident, "fpr"),
        },
    ]
    for name in ("mean_difference", "logistic_probe"):
        if name in baselines:
            r = next(x for x in baselines[name] if (x["step"], x["layer"]) == (step, b["layer"]))
            label = f"{name.replace('_', ' ')}, index {b['layer']}"
            table.append(
                {"detector": label, "TPR": _interval(r, "tpr"), "FPR": _interval(r, "fpr")}
            )
    report.table(table)
    report.figure(
        plots.pa_layers(rows, word),
        f"pa_{word}",
        "Test-text TPR and FPR per layer index (hidden_states convention), per step.",
    )
    report.table(
        [
            {k: r[k] for k in ("step", "layer", "tau", "n_dims", "tpr", "fpr", "n_pos", "auroc")}
            for r in rows
            if r["step"] == step
        ]
    )


def _templates_for(cfg: GraftConfig, model, tok, text_path, templates_dir):
    """Check where the templates come from now: (a function that makes them later, a
    digest of their source: the templates folder's files or the text)."""
    width = model.config.hidden_size
    if templates_dir is not None:
        bank = pa.TemplateBank.load(templates_dir)
        found = bank.for_word(cfg.word, cfg.step)
        missing = [ell for ell in cfg.layers if ell not in found]
        if missing:
            raise InputError(
                f"{templates_dir} has no step-{cfg.step} template of '{cfg.word}' at layer "
                f"{missing[0]}"
            )
        for ell in cfg.layers:
            if found[ell].mask.numel() != width:
                raise InputError(
                    f"the templates in {templates_dir} have width {found[ell].mask.numel()}, "
                    f"the model's residual stream {width}: they come from another model"
                )
        picked = {ell: found[ell] for ell in cfg.layers}
        graft_mod.injections_for(picked, cfg.mode, cfg.direction, cfg.strength)  # checked now
        return (lambda: picked), folder_digest(templates_dir)
    text = read_text(text_path)
    source = str(text_path or "the corpus")
    fit_sents, val_sents = split_text(text, cfg.validation_fraction, source)
    needed = max(cfg.min_occurrences, cfg.n_train + 1)
    _require_occurrences(tok, fit_sents, cfg.word, needed, f"the fitting part of {source}")
    _require_occurrences(tok, val_sents, cfg.word, 1, f"the validation part of {source}")

    def fit_now():
        col_fit, col_val = collect_split(model, tok, fit_sents, val_sents, cfg.layers)
        fitted = fit_word_templates(
            col_fit, col_val, tok, cfg.word, [cfg.step], cfg.layers, cfg.n_train, cfg.seed
        )
        return {ell: t for (_, ell), t in fitted.items()}

    return fit_now, digest(text)


def read_prompts(path: str | Path | None) -> list[str]:
    """One prompt per non-empty line of ``path``; the 48 built-in prompts when None."""
    if path is None:
        return graft_mod.builtin_prompts()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file {p} does not exist")
    try:
        lines = p.read_text().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"prompt file {p} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"prompt file {p} holds no prompts (one per line expected)")
    return prompts


def _sampling(cfg: GraftConfig) -> dict:
    return dict(
        top_p=cfg.top_p,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        chat=cfg.chat,
        batch_size=cfg.batch_size,
    )


def graft_arms(
    model,
    tok,
    cfg: GraftConfig,
    prompts,
    templates,
    store: ItemStore | None = None,
    key: str = "",
    control: dict | None = None,
) -> tuple[list[dict], dict]:
    """The control arm and one grafted arm per strength of the sweep, each scored against
    the control: (rows, control). An arm is {"texts", "perplexity"}; perplexity is taken
    under the unmodified model. ``control`` reuses a control arm of the same prompts,
    seed and sampling settings (it does not depend on the word)."""
    sampling = _sampling(cfg)

    def arm(injections=None) -> dict:
        if injections is None:
            texts = generate(model, tok, prompts, cfg.seed, **sampling)
        else:
            with graft_mod.inject(model, injections, cfg.positions, cfg.every_step):
                texts = generate(model, tok, prompts, cfg.seed, **sampling)
        ppl = graft_mod.continuation_perplexity(model, tok, prompts, texts, cfg.chat)
        return {"texts": texts, "perplexity": [None if np.isnan(v) else v for v in ppl]}

    if control is None:
        control = cached(store, f"control-{key}", arm)
    strengths = cfg.strength_sweep() if cfg.mode == "add" else [cfg.strength]
    concepts = cfg.concepts
    if concepts is None:
        concepts = graft_mod.associated_words(model, tok, cfg.word)
    rows = []
    for s in strengths:
        injections = graft_mod.injections_for(templates, cfg.mode, cfg.direction, s)
        if cfg.mode == "add" and s == 0:  # adding 0 * ||h|| * d is the identity: the control
            grafted = control
        else:
            grafted = cached(store, f"graft-s{s:g}-{key}", partial(arm, injections))
        as_float = [np.nan if v is None else v for v in grafted["perplexity"]]
        ctrl_ppl = [np.nan if v is None else v for v in control["perplexity"]]
        row = graft_mod.compare_arms(
            control["texts"], grafted["texts"], cfg.word, concepts, ctrl_ppl, as_float, cfg.seed
        )
        rows.append({"strength": s, **row, "concepts": concepts, "texts": grafted["texts"]})
    return rows, control


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
    if cfg.mode == "replace" and cfg.strengths:
        raise InputError("--strengths sweeps an additive graft: use it with --mode add")
    cfg.strength_sweep()
    model, tok = _load(cfg.model, device)
    _check_layers(cfg.layers, model.config.num_hidden_layers)
    graft_mod.check_positions(cfg.positions, graft_mod.prompt_lengths(tok, prompts, cfg.chat))
    make_templates, source = _templates_for(cfg, model, tok, text_path, templates_dir)
    run = open_run(
        cfg, out, resume, overwrite, prompts=prompts_path, text=text_path, templates=templates_dir
    )
    store, key = ItemStore(run / "items"), job_key(cfg, device, model, prompts, source)
    log.info("control and %s arms on %d prompts", cfg.mode, len(prompts))
    rows, control = graft_arms(model, tok, cfg, prompts, make_templates(), store, key)
    results = {
        **graft_summary(cfg, prompts, rows, control),
        "model": cfg.model,
        "env": environment(device, cfg.seed),
    }
    run.write_results(results)
    report = Report(f"Grafting '{cfg.word}' into {cfg.model}")
    _graft_section(report, [results])
    return report.save(run.path)


def graft_summary(cfg: GraftConfig, prompts, rows: list[dict], control: dict) -> dict:
    """The results entry of one word's grafting: the setting, the row at ``cfg.strength``
    at the top level, every strength under ``sweep``, and a few example pairs."""
    main = next(r for r in rows if r["strength"] == cfg.strength)
    return {
        "word": cfg.word,
        "mode": cfg.mode,
        "direction": cfg.direction if cfg.mode == "add" else None,
        "layers": cfg.layers,
        "positions": cfg.positions,
        "every_step": cfg.every_step,
        "step": cfg.step,
        "n_prompts": len(prompts),
        **{k: v for k, v in main.items() if k != "texts"},
        "sweep": [{k: v for k, v in r.items() if k not in ("texts", "concepts")} for r in rows],
        "examples": [
            {"prompt": p, "control": c, "graft": g}
            for p, c, g in zip(prompts[:5], control["texts"], main["texts"], strict=False)
        ],
    }


def _graft_section(report: Report, effects: list[dict]) -> None:
    from lucidml.chunking import plots

    report.heading("Grafting effect")
    report.text(
        "Share of sampled continuations (prompt excluded) that contain the word or one of "
        "its concepts, with identical prompts, sampling settings and seeds in both arms; "
        "95% Wilson intervals, exact McNemar p against the control, and mean perplexity "
        "of the continuations under the unmodified model (fluency)."
    )
    for e in effects:
        report.text(
            f"'{e['word']}': {e['mode']} at layers {e['layers']}, positions {e['positions']}, "
            f"{'every decode step' if e['every_step'] else 'prompt pass only'}; concepts: "
            f"{', '.join(e.get('concepts') or []) or 'none'}."
        )
        report.table(
            [
                {
                    "strength": r["strength"],
                    "n": r["n"],
                    "word rate": f"{r['word_rate']:.2f} [{r['word_rate_low']:.2f}, "
                    f"{r['word_rate_high']:.2f}]",
                    "control": f"{r['word_rate_control']:.2f}",
                    "McNemar p": f"{r['mcnemar_p']:.3g}",
                    "concept rate": f"{r.get('concept_rate', float('nan')):.2f} "
                    f"(control {r.get('concept_rate_control', float('nan')):.2f})",
                    "perplexity": f"{r['perplexity']:.1f} (control {r['perplexity_control']:.1f})",
                }
                for r in e["sweep"]
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
    losses = {
        "test_loss": ucd.state_losses(H_held, m.centers),
        "one_chunk_test_loss": ucd.state_losses(H_held, ucd.one_chunk(H)),
        "kmeans_test_loss": ucd.state_losses(H_held, ucd.kmeans_chunks(H, cfg.n_chunks, cfg.seed)),
    }
    return {
        "layer": ell,
        "train_loss": m.losses[-1],
        **{name: float(v.mean()) for name, v in losses.items()},
        **{f"{name}_ci": list(bootstrap_ci(v, seed=cfg.seed)) for name, v in losses.items()},
        "n_test_states": len(H_held),
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
    report.text(
        "Test loss is -mean max cosine over held-out states (lower is better), next to two "
        "baselines: one chunk (the mean direction of the fitting states) and sklearn "
        "k-means with the same K on the unit states; 95% bootstrap intervals over states "
        "in results.json."
    )
    report.table(
        [
            {
                k: r[k]
                for k in (
                    "layer",
                    "train_loss",
                    "test_loss",
                    "one_chunk_test_loss",
                    "kmeans_test_loss",
                    "n_test_states",
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


# the paper's training lengths; one_chunk and probabilistic_chunks record the default
# 10 000 steps, on which DSC recovers their planted chunks; the other two record 1000
# steps, and the hierarchy regime trains on 1000-symbol windows (paper 5000)
FULL = DemoPlan(
    regimes={
        "one_chunk": {},
        "several_chunks": dict(record_length=1000, graft_repeats=30),
        "probabilistic_chunks": {},
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
        "one_chunk": {},
        "several_chunks": dict(record_length=1000, graft_repeats=5),
        "probabilistic_chunks": {},
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
    from lucidml.chunking.corpus import PROMPTS, TEST_SENTENCES, everyday_sentences

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
    pa_collections = (*collections, collect(model, tok, list(TEST_SENTENCES), layers))
    results["pa"], results["graft"] = {}, []
    banks = {}
    for word in plan.pa_words:
        cfg = PAConfig(model=plan.model, word=word, steps=[0], layers=layers)
        bank, rows, baselines = pa_analysis(
            model, tok, cfg, fit_sents, held_sents, TEST_SENTENCES, pa_collections
        )
        results["pa"][word] = {"rows": rows, "best": best_layer(rows), "baselines": baselines}
        banks[word] = bank
        _pa_section(report, word, rows, baselines)
    gcfg = GraftConfig(
        model=plan.model,
        word=plan.graft_words[0],
        layers=list(plan.graft_layers),
        max_new_tokens=plan.max_new_tokens,
    )
    control = None
    for word in plan.graft_words:
        log.info("demo: grafting '%s'", word)
        wcfg = gcfg.updated(word=word)
        templates = {ell: banks[word][(word, 0, ell)] for ell in wcfg.layers}
        rows, control = graft_arms(model, tok, wcfg, PROMPTS, templates, control=control)
        results["graft"].append(graft_summary(wcfg, PROMPTS, rows, control))
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
