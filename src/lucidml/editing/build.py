"""Build WikiBigEdit-style records from two parsed snapshots.

Changed facts (``new`` / ``update``) pass the reference filters, get a locality probe
(an unchanged fact, same relation, nearest subject name) and, where the new object is
itself edited, a multi-hop probe; questions come from templates (optionally an LLM).
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from lucidml.core.progress import get_logger, track
from lucidml.core.runs import atomic_write_text, read_json, write_json
from lucidml.editing import questions as Q
from lucidml.editing import wikidata
from lucidml.editing.config import BuildConfig
from lucidml.errors import InputError

log = get_logger("editing")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")
_META_PREFIXES = ("category:", "template:")


def label_problem(label: str | None, cfg: BuildConfig, is_object: bool) -> str | None:
    """Why a label disqualifies a fact (None when it is fine)."""
    if not label:
        return "missing_label"
    if len(label) < cfg.min_label_chars:
        return "short_label"
    if label.casefold().startswith(_META_PREFIXES):
        return "category_or_template"
    if not _LATIN.search(label):
        return "non_latin"
    if is_object and len(label.split()) > cfg.max_object_words:
        return "long_label"
    return None


def is_circular(subject: str, obj: str) -> bool:
    s, o = subject.casefold(), obj.casefold()
    return s in o or o in s


def filter_changes(
    changes: pd.DataFrame, labels: dict[str, str], new_triples: pd.DataFrame, cfg: BuildConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the reference filters; returns the kept rows and a count per dropped reason."""
    n_objects = new_triples.groupby(["subject", "property"])["object"].nunique()
    kept, dropped = [], {}
    for row in changes.itertuples(index=False):
        reason = _change_problem(row, labels, n_objects, cfg)
        if reason is None:
            kept.append(row)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    return pd.DataFrame(kept, columns=changes.columns), dropped


def _change_problem(row, labels, n_objects, cfg: BuildConfig) -> str | None:
    if row.property in cfg.property_blocklist:
        return "blocklisted_relation"
    if not labels.get(row.property):
        return "missing_relation_label"
    s, o = labels.get(row.subject), labels.get(row.new_object)
    reason = label_problem(s, cfg, is_object=False) or label_problem(o, cfg, is_object=True)
    if reason:
        return reason
    if is_circular(s, o):
        return "circular"
    if n_objects.get((row.subject, row.property), 0) != 1:
        return "ambiguous"
    if row.kind == "update" and labels.get(row.old_object, "").casefold() == o.casefold():
        return "same_label"
    return None


def locality_candidates(
    subject: str, prop: str, obj: str, pool: pd.DataFrame, labels: dict[str, str]
) -> pd.DataFrame:
    """Unchanged facts ranked as locality probes: same relation, same subject, name similarity.

    ``pool`` holds unchanged facts whose (subject, property) no edit touches.
    Returns the candidates sorted best first, with a ``score`` column (rapidfuzz WRatio).
    """
    from rapidfuzz import fuzz, process

    cand = pool[pool["object"] != obj]
    same_p = cand[cand["property"] == prop]
    if len(same_p):
        cand = same_p
    if cand.empty:
        return cand.assign(score=[])
    names = [labels.get(s, "") for s in cand["subject"]]
    scores = process.cdist([labels.get(subject, "")], names, scorer=fuzz.WRatio)[0]
    cand = cand.assign(
        same_p=cand["property"] == prop, same_s=cand["subject"] == subject, score=scores
    )
    return cand.sort_values(["same_p", "same_s", "score"], ascending=False, kind="stable")


def _pick_locality(edit, pool, labels, templates, cfg, rng) -> dict | None:
    """The probe's question, answer and the (subject, property) ids it asks about."""
    cand = locality_candidates(edit.subject, edit.property, edit.new_object, pool, labels)
    if cand.empty:
        return None
    best = cand.iloc[0]
    top = cand[
        (cand["same_p"] == best["same_p"])
        & (cand["same_s"] == best["same_s"])
        & (cand["score"] == best["score"])
    ]
    order = list(top.index[rng.permutation(len(top))]) + list(cand.index[len(top) :])
    for idx in order:
        row = cand.loc[idx]
        s, o = labels.get(row["subject"]), labels.get(row["object"])
        if label_problem(s, cfg, False) or label_problem(o, cfg, True):
            continue
        q = templates.question(row["property"], s, labels.get(row["property"]))
        if Q.acceptable(q, s, o):
            return {
                "loc": q,
                "loc_ans": o,
                "loc_subject_id": row["subject"],
                "loc_relation_id": row["property"],
            }
    return None


def _pick_multihop(edit, by_subject, labels, templates, cfg, rng) -> tuple[str, str] | None:
    hops = [
        h
        for h in by_subject.get(edit.new_object, [])
        if h.property not in cfg.mhop_blocklist
        and h.new_object != edit.subject
        and "wiki" not in labels[h.new_object].casefold()
    ]
    if not hops:
        return None
    hop = hops[rng.integers(len(hops))]
    s, bridge_label, answer = labels[edit.subject], labels[edit.new_object], labels[hop.new_object]
    bridge = templates.bridge(edit.property, s, labels.get(edit.property))
    q = templates.question(hop.property, bridge, labels.get(hop.property))
    leaks = answer.casefold() in q.casefold() or bridge_label.casefold() in q.casefold()
    return (q, answer) if Q.acceptable(q, s, answer) and not leaks else None


TEMPLATE = "template"  # the generator label of a templated question


def make_record(edit, labels, templates, cfg, timestep, llm=None, similarity=None) -> dict | None:
    """One record for a kept edit (without probes), or None if its question fails the filter."""
    s, o, rel = labels[edit.subject], labels[edit.new_object], labels[edit.property]
    question = templates.question(edit.property, s, rel)
    if not Q.acceptable(question, s, o):
        return None
    ask = partial(
        Q.propose,
        llm,
        subject=s,
        answer=o,
        source=question,
        similarity=similarity,
        min_similarity=cfg.llm_min_similarity,
    )
    name = getattr(llm, "name", "llm")
    rephrase, from_llm = ask(
        Q.rephrase_instruction(question), templates.rephrase(edit.property, s, rel)
    )
    generators = {"rephrase": name if from_llm else TEMPLATE, "personas": {}}
    personas = {}
    for style, wrapped in Q.personas(question).items():
        personas[style], used = ask(Q.persona_instruction(question, style), wrapped)
        generators["personas"][style] = name if used else TEMPLATE
        from_llm |= used
    tag = "update" if edit.kind == "added" and cfg.compat_added_as_update else edit.kind
    old = edit.old_object if isinstance(edit.old_object, str) else None
    return {
        "tag": tag,
        "subject": s,
        "subject_id": edit.subject,
        "relation": rel,
        "relation_id": edit.property,
        "object": o,
        "object_id": edit.new_object,
        "old_object": labels.get(old) if old else None,
        "old_object_id": old,
        "update": question,
        "rephrase": rephrase,
        "ans": o,
        "personas": personas,
        "loc": None,
        "loc_ans": None,
        "loc_subject_id": None,
        "loc_relation_id": None,
        "mhop": None,
        "mhop_ans": None,
        "timestep": timestep,
        "seed": cfg.seed,
        # the LLM's name if it wrote any reworded probe; ``generators`` says which
        "generator": name if from_llm else TEMPLATE,
        "generators": generators,
    }


def reworded_sources(records: list[dict]) -> dict[str, int]:
    """How many reworded probes (rephrase, each persona) each generator wrote: the LLM's
    name, ``template``, or, for records without per-probe labels (imported ones), the
    record's ``generator``; most first."""
    counts: dict[str, int] = {}
    for r in records:
        per_probe = r.get("generators")
        if isinstance(per_probe, dict):
            names = [per_probe.get("rephrase"), *(per_probe.get("personas") or {}).values()]
        else:
            n = (r.get("rephrase") is not None) + len(r.get("personas") or {})
            names = [r.get("generator") or "unknown"] * n
        for g in names:
            if g is not None:
                counts[g] = counts.get(g, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_sources(counts: dict[str, int]) -> str:
    """ "12 by smollm2-135m-instruct, 48 templated": who wrote the reworded probes."""
    if not counts:
        return "no reworded probes"
    return ", ".join(
        f"{n} templated" if g == TEMPLATE else f"{n} by {g}" for g, n in counts.items()
    )


def edited_pairs(changes: pd.DataFrame) -> set[tuple[str, str]]:
    """The (subject, property) pairs that a timestep's changes touch."""
    return set(zip(changes["subject"], changes["property"], strict=True))


def build_timestep(
    old_dir: str | Path,
    new_dir: str | Path,
    timestep: int = 0,
    cfg: BuildConfig | None = None,
    llm: Q.QuestionLLM | None = None,
    device: str = "cpu",
    changes: pd.DataFrame | None = None,
    edited_elsewhere: set[tuple[str, str]] = frozenset(),
) -> tuple[list[dict], dict]:
    """Records for the changes between two parsed snapshots, and build statistics.

    ``device`` is where the similarity encoder runs that checks LLM rewrites.
    ``changes`` is this pair's ``wikidata.diff`` when the caller has it already.
    ``edited_elsewhere`` holds the (subject, property) pairs that other timesteps of the
    stream edit: a locality probe about one would measure retention, not locality.
    """
    cfg = cfg or BuildConfig()
    templates = Q.Templates.load(cfg.templates)
    labels = wikidata.read_labels(old_dir, new_dir)
    if changes is None:
        changes = wikidata.diff(old_dir, new_dir, kinds=tuple(cfg.kinds))
    new_triples = wikidata.read_triples(new_dir)
    kept, dropped = filter_changes(changes, labels, new_triples, cfg)
    touched = edited_pairs(changes) | set(edited_elsewhere)
    same = wikidata.unchanged(old_dir, new_dir)
    # a probe needs a question: a template for its property, or a label to build one from
    keep = [
        sp not in touched
        and sp[1] not in cfg.property_blocklist
        and (sp[1] in templates.table or bool(labels.get(sp[1])))
        for sp in zip(same["subject"], same["property"], strict=True)
    ]
    pool = same[keep]
    rng = np.random.default_rng(cfg.seed + timestep)
    by_subject: dict[str, list] = {}
    for edit in kept.itertuples(index=False):
        by_subject.setdefault(edit.subject, []).append(edit)
    similarity = None
    if llm is not None and cfg.llm_min_similarity > 0:
        from lucidml.core.zoo import load_sentence_encoder

        encoder = load_sentence_encoder(cfg.similarity_encoder, device=device)
        similarity = Q.encoder_similarity(encoder)
    log.info("timestep %d: %d changes, %d pass the filters", timestep, len(changes), len(kept))
    records = []
    edits = kept.itertuples(index=False)
    for edit in track(edits, f"timestep {timestep} records", total=len(kept)):
        rec = make_record(edit, labels, templates, cfg, timestep, llm, similarity)
        if rec is None:
            dropped["question_filter"] = dropped.get("question_filter", 0) + 1
            continue
        loc = _pick_locality(edit, pool, labels, templates, cfg, rng)
        if loc:
            rec.update(loc)
        mhop = _pick_multihop(edit, by_subject, labels, templates, cfg, rng)
        if mhop:
            rec["mhop"], rec["mhop_ans"] = mhop
        records.append(rec)
    stats = {
        "changes": len(changes),
        "kept": len(records),
        "dropped": dropped,
        "with_locality": sum(r["loc"] is not None for r in records),
        "with_multihop": sum(r["mhop"] is not None for r in records),
        "reworded_by": reworded_sources(records),  # rephrase and persona probes per writer
    }
    return records, stats


def timestep_file(out_dir: str | Path, t: int) -> Path:
    return Path(out_dir) / f"timestep_{t:03d}.jsonl"


def save_timestep(out_dir: str | Path, t: int, records: list[dict]) -> Path:
    """JSONL (the canonical form) and Parquet beside it."""
    path = timestep_file(out_dir, t)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    frame = pd.DataFrame(records)
    for column in ("personas", "generators"):  # nested: JSON text in the Parquet copy
        if column in frame:
            frame[column] = [json.dumps(p, ensure_ascii=False) for p in frame[column]]
    frame.to_parquet(path.with_suffix(".parquet"), index=False)
    return path


def build_benchmark(
    snapshots: list[str | Path],
    out_dir: str | Path,
    cfg: BuildConfig | None = None,
    llm: Q.QuestionLLM | None = None,
    device: str = "cpu",
) -> dict:
    """One timestep per consecutive pair of parsed snapshots; writes ``benchmark.json``.

    ``device`` is where the similarity encoder runs (the LLM runs where it was loaded).
    """
    cfg = cfg or BuildConfig()
    if len(snapshots) < 2:
        raise InputError("building a benchmark needs at least two snapshots (old and new)")
    for folder in snapshots:
        wikidata.read_labels(folder)  # fails early, before anything is written
    Q.Templates.load(cfg.templates)
    out = Path(out_dir)
    steps = []
    pairs = list(zip(snapshots[:-1], snapshots[1:], strict=True))
    changes = [wikidata.diff(a, b, kinds=tuple(cfg.kinds)) for a, b in pairs]
    # locality probes avoid what any timestep edits, not only their own timestep
    edited = set().union(*(edited_pairs(c) for c in changes))
    built = [
        build_timestep(a, b, t, cfg, llm, device, changes[t], edited)
        for t, (a, b) in enumerate(pairs)
    ]
    for t, (records, stats) in enumerate(built):
        save_timestep(out, t, records)
        steps.append(
            {"timestep": t, "old": str(snapshots[t]), "new": str(snapshots[t + 1]), **stats}
        )
    manifest = {"timesteps": steps, "config": cfg.model_dump(mode="json")}
    write_json(out / "benchmark.json", manifest)
    return manifest


REQUIRED_FIELDS = ("update", "ans")  # the question and answer every editor and metric reads


def load_benchmark(folder: str | Path) -> list[list[dict]]:
    """The records of each timestep, in order."""
    folder = Path(folder)
    if not (folder / "benchmark.json").is_file():
        raise InputError(
            f"{folder} is not a benchmark folder: benchmark.json is missing "
            "(run `lucid editing build` first)"
        )
    manifest = read_json(folder / "benchmark.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("timesteps"), list):
        raise InputError(f"{folder / 'benchmark.json'} has no list of timesteps")
    steps = []
    for t in range(len(manifest["timesteps"])):
        path = timestep_file(folder, t)
        try:
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"benchmark file {path} cannot be read: {exc}") from None
        for line, record in enumerate(records, 1):
            missing = [
                k for k in REQUIRED_FIELDS if not isinstance(record, dict) or k not in record
            ]
            if missing:
                raise InputError(f"{path}, record {line}: no {', '.join(missing)}")
        steps.append(records)
    return steps
