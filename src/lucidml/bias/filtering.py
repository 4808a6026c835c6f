"""The image rule: which labelled images count, and as which gender.

An image counts only when its people are unambiguous: at least one person, nobody
unclear, and everyone labelled the same. The paper keeps such same-gender groups; the
sibling repository keeps single-person images only, so both are named rules, and every
dropped image carries its reason so the funnel from generated to kept can be reported
rather than hidden.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lucidml.bias.types import GENDERS
from lucidml.errors import InputError

RULES = ("same_gender", "single_person_only")
REASONS = ("no person", "unclear", "mixed", "several persons")


def image_decision(
    labels: Sequence[str], rule: str = "same_gender"
) -> tuple[str | None, str | None]:
    """(gender, None) for a kept image, (None, reason) for a dropped one."""
    _check_rule(rule)
    unknown = set(labels) - set(GENDERS)
    if unknown:
        raise InputError(f"unknown gender labels {sorted(unknown)}: expected one of {GENDERS}")
    if len(labels) == 0:
        return None, "no person"
    if "unclear" in labels:
        return None, "unclear"
    if len(set(labels)) > 1:
        return None, "mixed"
    if rule == "single_person_only" and len(labels) > 1:
        return None, "several persons"
    return str(labels[0]), None


def filter_records(records: pd.DataFrame, rule: str = "same_gender") -> pd.DataFrame:
    """A copy of ``records`` with columns gender (female/male/None), kept and reason.

    The ``labels`` column holds one sequence of genders per image: lists as
    :func:`~lucidml.bias.detect.detect_and_label` writes them, or numpy arrays as they
    come back from Parquet.
    """
    _check_rule(rule)
    if "labels" not in records.columns:
        raise InputError("the records have no 'labels' column: run detection and labelling first")
    decisions = [image_decision(_as_list(v, i), rule) for i, v in records["labels"].items()]
    out = records.copy()
    out["gender"] = pd.Series([g for g, _ in decisions], index=records.index, dtype=object)
    out["kept"] = [g is not None for g, _ in decisions]
    out["reason"] = pd.Series([r for _, r in decisions], index=records.index, dtype=object)
    return out


def funnel(records: pd.DataFrame) -> pd.DataFrame:
    """Rows (stage, n): generated, each drop reason that occurs, then kept.

    Per model (a leading ``model`` column) when the records have one; every model lists
    the same stages, zeros included, so the tables line up.
    """
    missing = [c for c in ("kept", "reason") if c not in records.columns]
    if missing:
        raise InputError(f"the records have no {missing} columns: run filter_records first")
    reasons = [r for r in REASONS if (records["reason"] == r).any()]
    if "model" not in records.columns:
        return _stages(records, reasons)
    parts = [
        _stages(group, reasons).assign(model=model)
        for model, group in records.groupby("model", sort=False)
    ]
    if not parts:
        return pd.DataFrame(columns=["model", "stage", "n"])
    return pd.concat(parts, ignore_index=True)[["model", "stage", "n"]]


def _stages(records: pd.DataFrame, reasons: Sequence[str]) -> pd.DataFrame:
    counts = records["reason"].value_counts()
    rows = [("generated", len(records))]
    rows += [(reason, int(counts.get(reason, 0))) for reason in reasons]
    rows.append(("kept", int(records["kept"].sum())))
    return pd.DataFrame(rows, columns=["stage", "n"])


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputError(f"unknown image rule '{rule}': choose one of {', '.join(RULES)}")


def _as_list(value, row) -> list[str]:
    """A row's labels as a list; anything but a list, tuple or array is malformed."""
    if isinstance(value, str) or not hasattr(value, "__len__"):
        raise InputError(f"row {row}: labels must be a list of genders, got {value!r}")
    return [str(v) for v in value]
