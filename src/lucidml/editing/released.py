"""The reference's released benchmark (WikiBigEdit on the Hugging Face hub) as our records.

The release is one JSON file per timestep, each a list of objects with the fields
``tag`` (new or update), ``subject``, ``update`` (the edit question), ``rephrase``,
``personas`` (persona-styled rewordings of the question), ``ans``, ``loc`` / ``loc_ans``
(a locality question and its answer) and ``mhop`` / ``mhop_ans`` (a multi-hop question
and its answer). It carries no Wikidata ids, so the id fields of our records stay empty.
"""

from __future__ import annotations

import json
from pathlib import Path

from lucidml.errors import InputError

REQUIRED = ("update", "ans")
OPTIONAL_TEXT = ("subject", "rephrase", "loc", "loc_ans", "mhop", "mhop_ans")


def _personas(value, where: str) -> dict[str, str]:
    """The persona questions as {style: question}: the release's object as it is; a list
    (or a single string) gets the styles persona_0, persona_1, ..."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        value = {f"persona_{i}": q for i, q in enumerate(value)}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(q, str) for k, q in value.items()
    ):
        raise InputError(f"{where}: personas must be a question, a list or an object of questions")
    return {k: q for k, q in value.items() if q.strip()}


def convert_record(raw, timestep: int, where: str) -> dict:
    """One released record as our record (``build.make_record``'s fields)."""
    if not isinstance(raw, dict):
        raise InputError(f"{where} is not an object")
    for key in REQUIRED:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise InputError(f"{where} has no '{key}' text")
    for key in OPTIONAL_TEXT:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise InputError(f"{where}: '{key}' must be text, got {type(raw[key]).__name__}")
    text = {key: raw.get(key) or None for key in OPTIONAL_TEXT}
    for question, answer in (("loc", "loc_ans"), ("mhop", "mhop_ans")):
        if bool(text[question]) != bool(text[answer]):
            raise InputError(f"{where} has '{question}' or '{answer}' without the other")
    return {
        "tag": raw.get("tag") or "update",
        "subject": text["subject"],
        "subject_id": None,
        "relation": None,
        "relation_id": None,
        "object": raw["ans"],
        "object_id": None,
        "old_object": None,
        "old_object_id": None,
        "update": raw["update"],
        "rephrase": text["rephrase"],
        "ans": raw["ans"],
        "personas": _personas(raw.get("personas"), where),
        "loc": text["loc"],
        "loc_ans": text["loc_ans"],
        "loc_subject_id": None,
        "loc_relation_id": None,
        "mhop": text["mhop"],
        "mhop_ans": text["mhop_ans"],
        "timestep": timestep,
        "seed": None,
        "generator": "wikibigedit release",
    }


def read_release(path: str | Path, timestep: int) -> list[dict]:
    """Every record of one released timestep file, checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"WikiBigEdit file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"WikiBigEdit file {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"WikiBigEdit file {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from None
    if not isinstance(data, list):
        raise InputError(f"WikiBigEdit file {path} must hold a list of records")
    return [convert_record(r, timestep, f"{path}, record {i + 1}") for i, r in enumerate(data)]
