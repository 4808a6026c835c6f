"""Gender-neutral prompt sets for the bias audit, and the lexicon lint that keeps them neutral.

A prompt set is a table with one row per (base prompt, phrasing variant):

    prompt_id   variation   text                          category   theme
    activity-cooking-dinner  0  a person cooking dinner   activity   household

``category`` is one of :data:`CATEGORIES`; ``theme`` is one of :data:`THEMES`, a coarse label
(care, household, technical, physical, finance, ...) that demos use to plant stereotypes and
that reports may use to sort concepts. The bundled set (:func:`default_prompts`) was written
for lucidml: the study being reproduced published no prompts.

The lint (:func:`gendered_words`, :func:`lint`, :func:`check_neutral`) matches whole words
against a lexicon of pronouns, gendered nouns, gendered occupation names (-man/-woman
compounds, -ess forms), kin terms and honorifics, with their plurals and possessives, so
"manager", "human", "manual", "history" or "hero" never match.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from lucidml.errors import InputError

CATEGORIES = ("activity", "context", "object", "occupation")
THEMES = ("care", "household", "technical", "physical", "finance", "leisure", "other")
PROMPT_COLUMNS = ("prompt_id", "variation", "text", "category", "theme")
LINT_COLUMNS = ("prompt_id", "variation", "text", "words")

# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

# Words that take no plural (pronouns, honorifics, adjectives, irregular plurals given as is).
_FIXED = """
he him his himself she her hers herself
mr mrs ms sir madam madame ma'am
masculine feminine manly womanly boyish girlish ladylike
brethren
"""

# Nouns; their plurals are derived by :func:`_plurals` (man -> men, actress -> actresses,
# lady -> ladies, wife -> wives, boy -> boys).
_NOUNS = """
man woman male female boy girl gentleman lady guy gal dude bloke lad lass
boyfriend girlfriend husband wife fiancee bride bridegroom widow widower
mother father mom mum mommy mama dad daddy papa son daughter brother sister bro sis
aunt auntie uncle niece nephew grandmother grandfather grandma grandpa granny
grandson granddaughter stepmother stepfather stepson stepdaughter godmother godfather
matriarch patriarch maiden maid housemaid bridesmaid housewife househusband
king queen prince princess duke duchess emperor empress lord baron baroness countess earl
monk nun heroine
actress waitress stewardess hostess seamstress mistress headmistress governess priestess
heiress goddess sorceress usherette majorette comedienne masseuse bachelorette
schoolboy schoolgirl cowboy cowgirl tomboy paperboy busboy bellboy showgirl playboy
businessman businesswoman chairman chairwoman policeman policewoman fireman firewoman
postman postwoman mailman salesman saleswoman spokesman spokeswoman congressman
congresswoman sportsman sportswoman craftsman craftswoman fisherman fisherwoman
handyman repairman workman foreman cameraman camerawoman doorman milkman garbageman
deliveryman weatherman anchorman anchorwoman lineman serviceman servicewoman
tradesman statesman horseman horsewoman frontman middleman nobleman noblewoman
gentlewoman countryman countrywoman
"""


def _plurals(noun: str) -> list[str]:
    if noun.endswith("man"):
        return [noun[:-3] + "men"]
    if noun.endswith("ife"):
        return [noun[:-3] + "ives"]
    if noun.endswith(("s", "x", "ch", "sh")):
        return [noun + "es"]
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return [noun[:-1] + "ies"]
    return [noun + "s"]


def _lexicon() -> frozenset[str]:
    fixed = _FIXED.split()
    nouns = _NOUNS.split()
    forms = set(fixed) | set(nouns)
    for noun in nouns:
        forms.update(_plurals(noun))
    forms.add("fiancée")
    forms.add("fiancées")
    return frozenset(forms)


GENDERED_WORDS: frozenset[str] = _lexicon()

# A word: letters, optionally followed by an apostrophe and letters ("women's", "he's") or a
# bare trailing apostrophe ("girls'").
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]*)?")


def gendered_words(text: str) -> list[str]:
    """The gendered words in ``text``, lowercased, in order of first appearance, no repeats.

    Matching is on whole words, so "manager", "human", "manual", "germany", "hero" and
    "history" do not match. A word is reported as written (lowercased, curly apostrophes
    made straight): "the mother's car" gives ``["mother's"]``, "two actresses" gives
    ``["actresses"]``. Possessives and contractions match through their stem
    ("women's", "girls'", "he's").
    """
    found: list[str] = []
    normal = str(text).lower().replace("\u2019", "'").replace("\u2018", "'")
    for match in _WORD.finditer(normal):
        token = match.group(0)
        stem = token if token == "ma'am" else token.split("'", 1)[0]
        if (stem in GENDERED_WORDS or token in GENDERED_WORDS) and token not in found:
            found.append(token)
    return found


def lint(prompts: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``prompts`` whose text has gendered words, with those words comma-joined.

    Columns are ``prompt_id, variation, text, words``; the frame is empty when the set is
    clean.
    """
    frame = _as_frame(prompts, "prompt table")
    rows = []
    for pid, var, text in zip(frame["prompt_id"], frame["variation"], frame["text"], strict=True):
        words = gendered_words(text)
        if words:
            rows.append((pid, int(var), text, ", ".join(words)))
    out = pd.DataFrame(rows, columns=list(LINT_COLUMNS))
    out["variation"] = out["variation"].astype("int64")
    return out


def check_neutral(prompts: pd.DataFrame) -> None:
    """Raise :class:`InputError` naming the first prompt that uses a gendered word."""
    frame = _as_frame(prompts, "prompt table")
    for pid, var, text in zip(frame["prompt_id"], frame["variation"], frame["text"], strict=True):
        words = gendered_words(text)
        if words:
            raise InputError(
                f"prompt '{pid}' variation {int(var)} uses the gendered word '{words[0]}': "
                f'"{text}"; rephrase it with a neutral subject such as "a person"'
            )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def default_prompts() -> pd.DataFrame:
    """The bundled prompt set: one row per (base prompt, variation), in file order."""
    return _default_prompts().copy()


@functools.lru_cache(maxsize=1)
def _default_prompts() -> pd.DataFrame:
    text: str | None = None
    try:
        from importlib import resources

        resource = resources.files("lucidml.bias") / "data" / "prompts.json"
        if resource.is_file():
            text = resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, TypeError, FileNotFoundError, NotADirectoryError):
        text = None
    path = Path(__file__).resolve().parent / "data" / "prompts.json"
    if text is None:
        if not path.is_file():
            raise InputError(f"the bundled prompt file {path} is missing; reinstall lucidml")
        text = path.read_text(encoding="utf-8")
    return _parse_json(text, "bundled prompt file prompts.json")


def load_prompts(path: str | Path) -> pd.DataFrame:
    """Read a prompt set from a ``.json`` or ``.csv`` file.

    JSON is either lucidml's layout, ``{"version": 1, "prompts": [{"id", "category",
    "theme", "variants": [...]}, ...]}``, or a list of rows ``{"prompt_id" (or "id"), "text",
    "category", "variation"?, "theme"?}`` (also accepted under a "prompts" key). CSV has
    columns ``prompt_id, text, category`` and optionally ``variation`` and ``theme``.
    ``variation`` defaults to the row's position among its prompt id's rows and ``theme`` to
    "other". Anything malformed raises :class:`InputError` naming the file and the first bad
    row or column.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompt file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise InputError(
            f"prompt file {p} has extension '{p.suffix or '(none)'}'; use .json or .csv"
        )
    source = f"prompt file {p}"
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{source} is not UTF-8 text") from None
    if suffix == ".json":
        return _parse_json(raw, source)
    return _parse_csv(p, source)


def extend(base: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``base`` followed by ``extra``; a prompt id present in both raises :class:`InputError`."""
    a = _as_frame(base, "base prompt table", labels=True)
    b = _as_frame(extra, "extra prompt table", labels=True)
    known = set(a["prompt_id"])
    overlap = [pid for pid in dict.fromkeys(b["prompt_id"]) if pid in known]
    if overlap:
        more = f" (and {len(overlap) - 1} more)" if len(overlap) > 1 else ""
        raise InputError(
            f"prompt id '{overlap[0]}'{more} is in both prompt sets; rename the extra prompts"
        )
    return pd.concat([a, b], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _parse_json(text: str, source: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict):
        if "prompts" not in data:
            raise InputError(f"{source} must hold a 'prompts' list or be a list of rows")
        entries = data["prompts"]
    else:
        entries = data
    if not isinstance(entries, list):
        raise InputError(f"{source}: 'prompts' must be a list, not {type(entries).__name__}")
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise InputError(f"{source}: entry {i} must be an object, not {type(entry).__name__}")
        pid = entry.get("prompt_id", entry.get("id"))
        where = f"entry {i}" + (f" ('{pid}')" if isinstance(pid, str) and pid else "")
        if "variants" in entry:
            variants = entry["variants"]
            if not isinstance(variants, list) or not variants:
                raise InputError(f"{source}: {where} needs a non-empty 'variants' list")
            for j, variant in enumerate(variants):
                rows.append(
                    {
                        "prompt_id": pid,
                        "variation": j,
                        "text": variant,
                        "category": entry.get("category"),
                        "theme": entry.get("theme"),
                        "_where": f"{where} variant {j}",
                    }
                )
        else:
            if "text" not in entry:
                raise InputError(f"{source}: {where} needs a 'text' (or a 'variants' list)")
            rows.append(
                {
                    "prompt_id": pid,
                    "variation": entry.get("variation"),
                    "text": entry.get("text"),
                    "category": entry.get("category"),
                    "theme": entry.get("theme"),
                    "_where": where,
                }
            )
    return _validate(rows, source)


def _parse_csv(path: Path, source: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{source} is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise InputError(f"{source} is not valid CSV ({first.rstrip('.')})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("prompt_id", "text", "category"):
        if column not in table.columns:
            raise InputError(
                f"{source} lacks the column '{column}' (it needs prompt_id, text, category)"
            )
    has_var = "variation" in table.columns
    has_theme = "theme" in table.columns
    rows = []
    for i, rec in enumerate(table.to_dict("records"), start=1):
        rows.append(
            {
                "prompt_id": rec["prompt_id"],
                "variation": rec["variation"] if has_var and rec["variation"] != "" else None,
                "text": rec["text"],
                "category": rec["category"],
                "theme": rec["theme"] if has_theme else None,
                "_where": f"row {i}",
            }
        )
    return _validate(rows, source)


def _validate(rows: list[dict[str, Any]], source: str) -> pd.DataFrame:
    """Check parsed rows and build the table; the first bad row raises InputError."""
    if not rows:
        raise InputError(f"{source} holds no prompts")
    out: dict[str, list[Any]] = {c: [] for c in PROMPT_COLUMNS}
    seen: set[tuple[str, int]] = set()
    position: dict[str, int] = {}
    labels: dict[str, tuple[str, str, str]] = {}
    for row in rows:
        where = row["_where"]
        pid = row["prompt_id"]
        if not isinstance(pid, str) or not pid.strip():
            raise InputError(f"{source}: {where} has no prompt_id")
        pid = pid.strip()
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{source}: {where} (prompt '{pid}') has an empty text")
        category = row["category"]
        if not isinstance(category, str) or category.strip().lower() not in CATEGORIES:
            shown = "no category" if category in (None, "") else f"unknown category '{category}'"
            raise InputError(
                f"{source}: {where} (prompt '{pid}') has {shown}; "
                f"use one of {', '.join(CATEGORIES)}"
            )
        category = category.strip().lower()
        theme = row["theme"]
        if theme is None or (isinstance(theme, str) and not theme.strip()):
            theme = "other"
        if not isinstance(theme, str) or theme.strip().lower() not in THEMES:
            raise InputError(
                f"{source}: {where} (prompt '{pid}') has unknown theme '{theme}'; "
                f"use one of {', '.join(THEMES)}"
            )
        theme = theme.strip().lower()
        variation = row["variation"]
        if variation is None:
            variation = position.get(pid, 0)
        else:
            variation = _as_variation(variation)
            if variation is None:
                raise InputError(
                    f"{source}: {where} (prompt '{pid}') has variation '{row['variation']}', "
                    "which is not a whole number of 0 or more"
                )
        position[pid] = position.get(pid, 0) + 1
        if (pid, variation) in seen:
            raise InputError(
                f"{source}: {where} repeats prompt '{pid}' variation {variation}; "
                "each (prompt_id, variation) may appear once"
            )
        seen.add((pid, variation))
        if pid in labels and labels[pid][:2] != (category, theme):
            first_cat, first_theme, first_where = labels[pid]
            raise InputError(
                f"{source}: {where} gives prompt '{pid}' category '{category}' and theme "
                f"'{theme}', but {first_where} gave '{first_cat}' and '{first_theme}'"
            )
        labels.setdefault(pid, (category, theme, where))
        out["prompt_id"].append(pid)
        out["variation"].append(variation)
        out["text"].append(text.strip())
        out["category"].append(category)
        out["theme"].append(theme)
    frame = pd.DataFrame(out, columns=list(PROMPT_COLUMNS))
    frame["variation"] = frame["variation"].astype("int64")
    return frame


def _as_variation(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        return int(value)
    return None


def _as_frame(prompts: pd.DataFrame, what: str, labels: bool = False) -> pd.DataFrame:
    """A copy of ``prompts`` with the PROMPT_COLUMNS, filling theme and variation if absent."""
    if not isinstance(prompts, pd.DataFrame):
        raise InputError(f"the {what} must be a pandas DataFrame, not {type(prompts).__name__}")
    missing = [c for c in ("prompt_id", "text") if c not in prompts.columns]
    if missing:
        raise InputError(f"the {what} lacks the column '{missing[0]}'")
    frame = prompts.reset_index(drop=True).copy()
    if "variation" not in frame.columns:
        frame["variation"] = frame.groupby("prompt_id", sort=False).cumcount()
    if "category" not in frame.columns:
        if labels:
            raise InputError(f"the {what} lacks the column 'category'")
        frame["category"] = ""
    if "theme" not in frame.columns:
        frame["theme"] = "other"
    extra = [c for c in frame.columns if c not in PROMPT_COLUMNS]
    return frame[list(PROMPT_COLUMNS) + extra]
