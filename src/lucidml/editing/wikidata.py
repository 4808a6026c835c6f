"""Wikidata snapshots: a streaming dump parser and a DuckDB diff of two snapshots.

A parsed snapshot is a folder with ``triples.parquet`` (subject, property, object, rank)
and ``labels.parquet`` (id, label: English labels of items and properties).
Only *main* claims count: item-valued value snaks whose rank is not deprecated.
Qualifiers and references are never read.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from lucidml.errors import InputError

TRIPLES = "triples.parquet"
LABELS = "labels.parquet"
KINDS = ("new", "update", "added")
_BLOCK_BYTES = 1 << 22  # 4 MiB of dump lines per parse task


def _open_binary(path: Path):
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    return opener(path, "rb")


def main_claims(entity: dict, best_rank: bool = True) -> list[tuple[str, str, str, str]]:
    """(subject, property, object, rank) for each item-valued main claim of one entity.

    Deprecated statements and somevalue/novalue snaks are dropped. With ``best_rank``
    a property that has preferred statements keeps only those (Wikidata's "truthy" rule).
    """
    subject = entity.get("id", "")
    out = []
    for prop, statements in (entity.get("claims") or {}).items():
        kept = []
        for st in statements:
            snak = st.get("mainsnak") or {}
            rank = st.get("rank", "normal")
            if rank == "deprecated" or snak.get("snaktype") != "value":
                continue
            value = (snak.get("datavalue") or {}).get("value")
            if not isinstance(value, dict) or value.get("entity-type") != "item":
                continue
            obj = value.get("id") or f"Q{value.get('numeric-id')}"
            kept.append((subject, prop, obj, rank))
        if best_rank and any(r == "preferred" for *_, r in kept):
            kept = [t for t in kept if t[3] == "preferred"]
        out += kept
    return out


def english_label(entity: dict) -> str | None:
    return ((entity.get("labels") or {}).get("en") or {}).get("value")


def _parse_block(args: tuple[int, bytes, bool, bool]):
    """Parse one block of whole dump lines; returns triples, labels and (line number, error)
    pairs. Decoding happens here, in the worker, so the reader only moves bytes."""
    first_line, block, best_rank, skip_errors = args
    triples, labels, errors = [], [], []
    for offset, raw in enumerate(block.split(b"\n")):
        try:
            line = raw.decode("utf-8").strip().rstrip(",")
            if line in ("", "[", "]"):
                continue
            entity = json.loads(line)
            if not isinstance(entity, dict) or "id" not in entity:
                raise ValueError("not an entity object with an 'id'")
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            errors.append((first_line + offset, str(exc).split(":")[0]))
            if not skip_errors:
                break
            continue
        triples += main_claims(entity, best_rank)
        label = english_label(entity)
        if label is not None:
            labels.append((entity["id"], label))
    return triples, labels, errors


def _blocks(path: Path, best_rank: bool, skip_errors: bool) -> Iterator[tuple]:
    """Blocks of about ``_BLOCK_BYTES`` that end at a line break, with their first line number.

    Counting line breaks in bytes is far cheaper than splitting text into lines, which
    keeps the reading process from becoming the bottleneck when workers parse.
    """
    with _open_binary(path) as f:
        line_no, rest = 1, b""
        while True:
            data = f.read(_BLOCK_BYTES)
            if not data:
                if rest:
                    yield line_no, rest, best_rank, skip_errors
                return
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            yield line_no, block, best_rank, skip_errors
            line_no += block.count(b"\n")


def _parsed_blocks(path: Path, best_rank: bool, skip: bool, processes: int) -> Iterator[tuple]:
    """Parsed blocks in file order; with workers, at most 2 blocks per worker are in flight
    (``Executor.map`` would read the whole dump into memory first)."""
    blocks = _blocks(path, best_rank, skip)
    if processes <= 1:
        yield from map(_parse_block, blocks)
        return
    with ProcessPoolExecutor(processes) as pool:
        pending: deque = deque()
        for block in blocks:
            pending.append(pool.submit(_parse_block, block))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _parsed(
    path: str | Path, on_error: str, processes: int, best_rank: bool
) -> Iterator[tuple[list, list, list[int]]]:
    """(triples, labels, skipped line numbers) per block; InputError on a bad line in
    "stop" mode, on a missing or unreadable file, or on an unknown ``on_error``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dump file {path} does not exist")
    if on_error not in ("stop", "skip"):
        raise InputError(f"on_error must be 'stop' or 'skip', got '{on_error}'")
    skip = on_error == "skip"
    try:
        for triples, labels, errors in _parsed_blocks(path, best_rank, skip, processes):
            if errors and not skip:
                line, why = errors[0]
                raise InputError(
                    f"dump file {path} line {line} is not a valid entity JSON object "
                    f"({why}); pass on_error='skip' (--skip-bad-lines) to skip such lines"
                )
            yield triples, labels, [line for line, _ in errors]
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read dump file {path}: {exc}") from None


def read_dump(
    path: str | Path, *, on_error: str = "stop", processes: int = 1, best_rank: bool = True
) -> tuple[list[tuple], list[tuple], list[int]]:
    """Triples, labels and skipped line numbers of a small dump, in memory.

    ``parse_dump`` streams to Parquet instead and suits dumps of any size.
    """
    triples, labels, skipped = [], [], []
    for t, lab, err in _parsed(path, on_error, processes, best_rank):
        triples += t
        labels += lab
        skipped += err
    return triples, labels, skipped


_TRIPLE_COLUMNS = ("subject", "property", "object", "rank")
_ROW_GROUP = 1 << 20  # rows per Parquet row group when streaming
_LABEL_COLUMNS = ("id", "label")


class _ParquetRows:
    """Rows appended in batches to one Parquet file, a row group per ``rows`` rows."""

    def __init__(self, path: Path, columns: tuple[str, ...], rows: int | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.columns, self.rows, self.count = columns, rows or _ROW_GROUP, 0
        self.schema = pa.schema([(c, pa.string()) for c in columns])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.pending: list[tuple] = []

    def add(self, rows: list[tuple]) -> None:
        self.pending += rows
        self.count += len(rows)
        if len(self.pending) >= self.rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        cols = list(zip(*self.pending, strict=True)) or [()] * len(self.columns)
        self.writer.write_table(
            pa.table([pa.array(c, pa.string()) for c in cols], schema=self.schema)
        )
        self.pending = []

    def close(self) -> None:
        if self.pending or self.count == 0:
            self.flush()
        self.writer.close()


def _write_snapshot(out: Path, parts: Iterable[tuple[list, list]]) -> tuple[int, int]:
    """Stream (triples, labels) parts into ``out``'s Parquet files; returns their row counts.

    The files are written in a staging folder beside ``out`` and moved in at the end, so
    an error while ``parts`` is consumed leaves nothing behind.
    """
    staging = out.parent / f".{out.name}.parsing"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"cannot write beside {out}: {(exc.strerror or '').lower()}") from None
    try:
        triples = _ParquetRows(staging / TRIPLES, _TRIPLE_COLUMNS)
        labels = _ParquetRows(staging / LABELS, _LABEL_COLUMNS)
        for t, lab in parts:
            triples.add(t)
            labels.add(lab)
        triples.close()
        labels.close()
        out.mkdir(parents=True, exist_ok=True)
        for name in (TRIPLES, LABELS):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return triples.count, labels.count


def parse_dump(
    path: str | Path,
    out_dir: str | Path,
    *,
    on_error: str = "stop",
    processes: int = 1,
    best_rank: bool = True,
) -> dict:
    """Parse a Wikidata JSON dump (plain, .gz or .bz2; one entity per line) into Parquet.

    Streams: parsed blocks go to Parquet row groups as they arrive, so memory stays
    bounded whatever the dump's size, and a failed parse leaves nothing behind.
    ``on_error="stop"`` raises on the first malformed line (naming its number);
    ``"skip"`` skips such lines and reports them. ``processes > 1`` parses blocks of
    lines in worker processes. Returns counts and the skipped line numbers.
    """
    skipped: list[int] = []

    def parts():
        for t, lab, err in _parsed(path, on_error, processes, best_rank):
            skipped.extend(err)
            yield t, lab

    n_triples, n_labels = _write_snapshot(Path(out_dir), parts())
    return {"triples": n_triples, "labels": n_labels, "skipped_lines": skipped}


def write_snapshot(out_dir: str | Path, triples: list[tuple], labels: list[tuple]) -> Path:
    """Write in-memory triples and labels as a snapshot folder, as ``parse_dump`` does.

    A label id given twice keeps its first label.
    """
    first_label = dict(reversed(labels))
    _write_snapshot(Path(out_dir), [(triples, list(first_label.items()))])
    return Path(out_dir)


def _snapshot_file(folder: str | Path, name: str) -> str:
    p = Path(folder) / name
    if not p.is_file():
        raise InputError(
            f"{folder} is not a parsed snapshot: {name} is missing "
            "(run `lucid editing parse` first)"
        )
    return str(p)


def read_labels(*folders: str | Path) -> dict[str, str]:
    """Labels of one or more snapshots; later folders win."""
    out: dict[str, str] = {}
    for folder in folders:
        df = pd.read_parquet(_snapshot_file(folder, LABELS))
        out.update(zip(df["id"], df["label"], strict=True))
    return out


_DIFF_SQL = """
WITH o AS (SELECT DISTINCT subject, property, object FROM read_parquet($old)),
     n AS (SELECT DISTINCT subject, property, object FROM read_parquet($new)),
     both_subjects AS (SELECT subject FROM o INTERSECT SELECT subject FROM n),
     old_props AS (SELECT DISTINCT subject, property FROM o),
     removed AS (SELECT * FROM o EXCEPT SELECT * FROM n),
     added AS (SELECT * FROM (SELECT * FROM n EXCEPT SELECT * FROM o)
               SEMI JOIN both_subjects USING (subject)),
     removed_sp AS (SELECT subject, property, count(*) AS k, min(object) AS object
                    FROM removed GROUP BY ALL),
     added_sp AS (SELECT subject, property, count(*) AS k, min(object) AS object
                  FROM added GROUP BY ALL)
SELECT a.subject, a.property, NULL::VARCHAR AS old_object, a.object AS new_object,
       'new' AS kind
FROM added a ANTI JOIN old_props p USING (subject, property)
UNION ALL
SELECT a.subject, a.property, r.object, a.object, 'update'
FROM added_sp a JOIN removed_sp r USING (subject, property)
WHERE a.k = 1 AND r.k = 1
UNION ALL
SELECT a.subject, a.property, NULL, a.object, 'added'
FROM added a SEMI JOIN old_props USING (subject, property)
ANTI JOIN removed_sp r USING (subject, property)
"""


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError(f"unknown diff kind '{bad[0]}': expected one of {', '.join(KINDS)}")
    return kinds


def diff(
    old_dir: str | Path, new_dir: str | Path, kinds: tuple[str, ...] = ("new", "update")
) -> pd.DataFrame:
    """Changed facts between two parsed snapshots, computed with DuckDB.

    For subjects present in both: ``new`` (the property was absent before), ``update``
    (exactly one object removed and one added for the (subject, property)), ``added``
    (objects only added to an existing property). Larger changes are ambiguous and left
    out. Columns: subject, property, old_object, new_object, kind.
    """
    import duckdb

    kinds = _check_kinds(kinds)
    params = {"old": _snapshot_file(old_dir, TRIPLES), "new": _snapshot_file(new_dir, TRIPLES)}
    with duckdb.connect() as con:
        df = con.execute(_DIFF_SQL, params).df()
    df = df[df["kind"].isin(kinds)]
    return df.sort_values(["subject", "property", "new_object"]).reset_index(drop=True)


def diff_pandas(
    old: pd.DataFrame, new: pd.DataFrame, kinds: tuple[str, ...] = ("new", "update")
) -> pd.DataFrame:
    """The same diff with pandas merges (the reference for tests and the benchmark baseline)."""
    kinds = _check_kinds(kinds)
    cols = ["subject", "property", "object"]
    o, n = old[cols].drop_duplicates(), new[cols].drop_duplicates()
    both = set(o["subject"]) & set(n["subject"])
    m = o.merge(n, on=cols, how="outer", indicator=True)
    removed = m[m["_merge"] == "left_only"][cols]
    added = m[(m["_merge"] == "right_only") & m["subject"].isin(both)][cols]
    old_sp = o[["subject", "property"]].drop_duplicates()
    added = added.merge(old_sp, on=["subject", "property"], how="left", indicator="had")
    sp = ["subject", "property"]
    rem_n = removed.groupby(sp)["object"].agg(["size", "min"]).reset_index()
    add_n = added.groupby(sp)["object"].agg(["size", "min"]).reset_index()
    new = added[added["had"] == "left_only"][cols].rename(columns={"object": "new_object"})
    new = new.assign(old_object=None, kind="new")
    upd = add_n.merge(rem_n, on=sp, suffixes=("_a", "_r"))
    upd = upd[(upd["size_a"] == 1) & (upd["size_r"] == 1)]
    upd = upd.rename(columns={"min_r": "old_object", "min_a": "new_object"}).assign(kind="update")
    add = added[added["had"] == "both"]
    add = add[~add.set_index(sp).index.isin(rem_n.set_index(sp).index)]
    add = add[cols].rename(columns={"object": "new_object"}).assign(old_object=None, kind="added")
    out_cols = ["subject", "property", "old_object", "new_object", "kind"]
    df = pd.concat([new[out_cols], upd[out_cols], add[out_cols]], ignore_index=True)
    df = df[df["kind"].isin(kinds)]
    return df.sort_values(["subject", "property", "new_object"]).reset_index(drop=True)


def unchanged(old_dir: str | Path, new_dir: str | Path) -> pd.DataFrame:
    """Triples (subject, property, object) present in both snapshots."""
    import duckdb

    sql = """SELECT DISTINCT subject, property, object FROM read_parquet($old)
             INTERSECT SELECT DISTINCT subject, property, object FROM read_parquet($new)
             ORDER BY ALL"""
    params = {"old": _snapshot_file(old_dir, TRIPLES), "new": _snapshot_file(new_dir, TRIPLES)}
    with duckdb.connect() as con:
        return con.execute(sql, params).df()


def read_triples(folder: str | Path) -> pd.DataFrame:
    return pd.read_parquet(_snapshot_file(folder, TRIPLES))
