"""Wikidata snapshots: a sharded, resumable dump parser and a DuckDB diff of two snapshots.

A parsed snapshot is a folder with ``triples.parquet`` (subject, property, object, rank)
and ``labels.parquet`` (id, label: English labels of items and properties).
Only *main* claims count: item-valued value snaks whose rank is not deprecated.
Qualifiers and references are never read.

Parsing cuts the (decompressed) dump into blocks: block i holds the lines that start in
bytes [i * B, (i + 1) * B). Blocks are the work items of ``lucidml.core.distributed``:
each process parses its shard (optionally with a local pool of workers) and writes each
block's triples, labels, line count and bad lines as one Parquet part file, atomically,
into a staging folder beside the output. Part files are keyed by the dump's identity and
the options, so a killed parse resumes without redoing finished blocks. The main process
merges the parts in block order into the two Parquet files, so the output does not depend
on the number of processes, and line numbers are counted from the parts' line counts.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import shutil
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from lucidml.core import distributed
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import atomic_write_bytes, write_json
from lucidml.editing.config import BLOCK_BYTES
from lucidml.errors import InputError, LucidError

TRIPLES = "triples.parquet"
LABELS = "labels.parquet"
KINDS = ("new", "update", "added")
_PART_FORMAT = 2  # bumped when the parts' layout or the parsing rules change: never reused
_POLL = 0.1  # seconds between looks for the parts other processes write
_READ_ERRORS = (OSError, EOFError, zlib.error)  # truncated or corrupt files, failing disks
_TRIPLE_COLUMNS = ("subject", "property", "object", "rank")
_LABEL_COLUMNS = ("id", "label")
_ROW_GROUP = 1 << 20  # rows per Parquet row group of the merged files
log = get_logger("editing")


def _open_binary(path: Path):
    if path.suffix == ".bz2":
        return open_bz2(path)
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rb")


def open_bz2(path: Path):
    """A .bz2 dump as a binary stream: decompressed on every core by ``indexed_bzip2``
    when it is installed (an optional dependency), else by the standard library on one
    core (about 50 MiB of output per CPU-second, whatever the number of parsing processes).
    """
    try:
        import indexed_bzip2
    except ImportError:
        return bz2.open(path, "rb")
    return indexed_bzip2.open(str(path), parallelization=os.cpu_count() or 1)


def _seekable(path: Path) -> bool:
    """Plain dumps: each process reads only its own blocks. Compressed dumps are streams,
    which every process decompresses to find its blocks."""
    return path.suffix not in (".gz", ".bz2")


def main_claims(entity: dict, best_rank: bool = True) -> list[tuple[str, str, str, str]]:
    """(subject, property, object, rank) for each item-valued main claim of one entity.

    Deprecated statements and somevalue/novalue snaks are dropped. With ``best_rank``
    a property that has preferred statements keeps only those (Wikidata's "truthy"
    rule), even when a preferred one says "no value" or "unknown value": then the
    property has no item fact, and its normal-rank values, which the preferred one
    overrides, are stale. A wrong-shaped entity or an item value without an id raises
    ValueError (a malformed line).
    """
    subject = entity.get("id", "")
    claims = entity.get("claims") or {}
    if not isinstance(claims, dict):
        raise ValueError("its claims are not an object")
    out = []
    for prop, statements in claims.items():
        if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
            raise ValueError(f"the claims of {prop} are not a list of statement objects")
        live = [st for st in statements if st.get("rank", "normal") != "deprecated"]
        if best_rank and any(st.get("rank") == "preferred" for st in live):
            live = [st for st in live if st.get("rank") == "preferred"]
        for st in live:
            obj = _item_value(st, prop)
            if obj is not None:
                out.append((subject, prop, obj, st.get("rank", "normal")))
    return out


def _item_value(statement: dict, prop: str) -> str | None:
    """The item id a statement's main snak names; None for other values and no-values."""
    snak = statement.get("mainsnak") or {}
    if not isinstance(snak, dict):
        raise ValueError(f"a mainsnak of {prop} is not an object")
    if snak.get("snaktype") != "value":
        return None
    value = (snak.get("datavalue") or {}).get("value")
    if not isinstance(value, dict) or value.get("entity-type") != "item":
        return None
    if isinstance(value.get("id"), str) and value["id"]:
        return value["id"]
    numeric = value.get("numeric-id")
    if isinstance(numeric, int) and not isinstance(numeric, bool):
        return f"Q{numeric}"
    raise ValueError(f"an item value of {prop} has neither an id nor a numeric-id")


def english_label(entity: dict) -> str | None:
    """The English label, else the multilingual ("mul") one: Wikidata moves labels that
    are the same in every language (most names) to "mul" and drops the English copy."""
    labels = entity.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError("its labels are not an object")
    for language in ("en", "mul"):
        label = labels.get(language)
        if isinstance(label, dict) and isinstance(label.get("value"), str):
            return label["value"]
    return None


# --- blocks ---------------------------------------------------------------------------


def read_block(f, index: int, size: int) -> bytes:
    """Block ``index`` of a seekable binary file: the lines that start in bytes
    [index * size, (index + 1) * size), the last one read to its end."""
    start, end = index * size, (index + 1) * size
    f.seek(max(start - 1, 0))
    if start:
        start += len(f.readline()) - 1  # skip the end of the line that began before
    if start >= end:  # a line longer than the span began before it: nothing starts here
        return b""
    data = f.read(end - start)
    if data and not data.endswith(b"\n"):
        data += f.readline()
    return data


def stream_blocks(f, size: int) -> Iterator[tuple[int, bytes]]:
    """Every (index, block) of a binary stream, by the rule of :func:`read_block`; there
    are ceil(stream length / size) of them, some possibly empty."""
    index, base, buf, eof = 0, 0, b"", False  # buf starts at a line start, at byte base
    while True:
        end = (index + 1) * size
        block = b""
        if base < end:
            cut = buf.find(b"\n", end - 1 - base)
            while cut < 0 and not eof:
                chunk = f.read(size)
                eof, buf = not chunk, buf + chunk
                cut = buf.find(b"\n", end - 1 - base)
            if cut < 0:  # the stream's last line has no line break
                cut = len(buf) - 1
            block, buf = buf[: cut + 1], buf[cut + 1 :]
            base += len(block)
        if eof and not block and index * size >= base:
            return
        yield index, block
        index += 1


class _Unreadable(Exception):
    """The dump could not be read at block ``index`` (a truncated or corrupt file)."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index, self.reason = index, reason


def _dump_blocks(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """:func:`stream_blocks` of the decompressed dump; a failing read raises _Unreadable."""
    index = 0
    try:
        with _open_binary(path) as f:
            for index, block in stream_blocks(f, size):
                yield index, block
                index += 1
    except _READ_ERRORS as exc:
        raise _Unreadable(index, str(exc) or type(exc).__name__) from None


class Block(NamedTuple):
    """What one block of dump lines holds."""

    triples: list[tuple[str, str, str, str]]
    labels: list[tuple[str, str]]
    errors: list[tuple[int, str]]  # (line offset within the block, reason)
    lines: int  # line breaks in the block: the next block's first line is this many later


def parse_block(block: bytes, best_rank: bool = True, skip_errors: bool = False) -> Block:
    """Triples, labels and malformed lines of one block of whole dump lines.

    Without ``skip_errors`` parsing ends at the first malformed line, as nothing after it
    is used. The array lines ``[`` and ``]`` of real dumps are skipped.
    """
    triples, labels, errors = [], [], []
    for offset, raw in enumerate(block.split(b"\n")):
        try:
            line = raw.decode("utf-8").strip().rstrip(",")
            if line in ("", "[", "]"):
                continue
            entity = json.loads(line)
            if not isinstance(entity, dict) or not isinstance(entity.get("id"), str):
                raise ValueError("not an entity object with an 'id'")
            claims = main_claims(entity, best_rank)
            label = english_label(entity)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            errors.append((offset, str(exc).split(":")[0]))
            if not skip_errors:
                break
            continue
        triples += claims
        if label is not None:
            labels.append((entity["id"], label))
    return Block(triples, labels, errors, block.count(b"\n"))


def _check_dump(path: str | Path, on_error: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dump file {path} does not exist")
    if on_error not in ("stop", "skip"):
        raise InputError(f"on_error must be 'stop' or 'skip', got '{on_error}'")
    return path


def _bad_line(path: Path, line: int, why: str) -> InputError:
    return InputError(
        f"dump file {path} line {line} is not a valid entity JSON object ({why}); "
        "pass on_error='skip' (--skip-bad-lines) to skip such lines"
    )


def read_dump(
    path: str | Path, *, on_error: str = "stop", best_rank: bool = True
) -> tuple[list[tuple], list[tuple], list[int]]:
    """Triples, labels and skipped line numbers of a small dump, in memory, in one process.

    ``parse_dump`` writes Parquet instead and suits dumps of any size.
    """
    path, skip = _check_dump(path, on_error), on_error == "skip"
    triples, labels, skipped, line = [], [], [], 1
    try:
        for _, data in _dump_blocks(path, BLOCK_BYTES):
            block = parse_block(data, best_rank, skip)
            if block.errors and not skip:
                raise _bad_line(path, line + block.errors[0][0], block.errors[0][1])
            triples += block.triples
            labels += block.labels
            skipped += [line + offset for offset, _ in block.errors]
            line += block.lines
    except _Unreadable as exc:
        raise InputError(f"cannot read dump file {path}: {exc.reason}") from None
    return triples, labels, skipped


# --- Parquet ----------------------------------------------------------------------------


def _columns(rows: list[tuple], n: int) -> list:
    import pyarrow as pa

    return [pa.array(c, pa.string()) for c in (list(zip(*rows, strict=True)) or [()] * n)]


def _table(rows: list[tuple], columns: tuple[str, ...]):
    import pyarrow as pa

    return pa.Table.from_arrays(_columns(rows, len(columns)), names=list(columns))


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_part(path: Path, block: Block) -> None:
    """One block as a one-row Parquet file: lists of triples, labels and bad lines, and
    the block's line count. Written whole (temporary file and rename)."""
    import pyarrow as pa

    def one_list(values: list, names: list[str]):
        struct = pa.StructArray.from_arrays(values, names=names)
        return pa.ListArray.from_arrays(pa.array([0, len(struct)], pa.int32()), struct)

    errors = [
        pa.array([o for o, _ in block.errors], pa.int64()),
        pa.array([w for _, w in block.errors], pa.string()),
    ]
    table = pa.Table.from_arrays(
        [
            one_list(_columns(block.triples, 4), list(_TRIPLE_COLUMNS)),
            one_list(_columns(block.labels, 2), list(_LABEL_COLUMNS)),
            one_list(errors, ["offset", "reason"]),
            pa.array([block.lines], pa.int64()),
        ],
        names=["triples", "labels", "errors", "lines"],
    )
    atomic_write_bytes(path, _parquet_bytes(table))


def _read_part(path: Path):
    """(triples table, labels table, bad lines [(offset, reason)], line count) of a part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = pq.read_table(path)

    def rows(name: str, columns: tuple[str, ...]):
        values = part.column(name).combine_chunks().flatten()  # the struct of each element
        return pa.Table.from_arrays(values.flatten(), names=list(columns))

    errors = rows("errors", ("offset", "reason")).to_pylist()
    return (
        rows("triples", _TRIPLE_COLUMNS),
        rows("labels", _LABEL_COLUMNS),
        [(e["offset"], e["reason"]) for e in errors],
        part.column("lines")[0].as_py(),
    )


class _ParquetRows:
    """Arrow tables appended to one Parquet file, a row group per ``rows`` rows or more."""

    def __init__(self, path: Path, columns: tuple[str, ...], rows: int | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = pa.schema([(c, pa.string()) for c in columns])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows, self.count = rows or _ROW_GROUP, 0
        self.pending: list = []
        self.pending_rows = 0

    def add(self, table) -> None:
        self.pending.append(table)
        self.pending_rows += len(table)
        self.count += len(table)
        if self.pending_rows >= self.rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending) if self.pending else self.schema.empty_table()
        self.writer.write_table(table, row_group_size=max(len(table), 1))
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        if self.pending_rows or self.count == 0:
            self.flush()
        self.writer.close()


# --- the sharded parse ------------------------------------------------------------------


def parse_key(path: Path, block_bytes: int, best_rank: bool, on_error: str) -> str:
    """Everything a part depends on: the dump's identity and the parse options."""
    stat = path.resolve().stat()
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    options = (block_bytes, best_rank, on_error, _PART_FORMAT)
    return hashlib.sha256(json.dumps([*identity, *options]).encode()).hexdigest()[:16]


class _Staging:
    """The folder beside the output where processes leave part files and markers.

    ``stop-<i>.json`` says block i ends the parse (a bad line in stop mode, or a read
    error); ``done-<rank>.json`` says a process has finished writing here.
    """

    def __init__(self, out: Path, key: str):
        self.folder = out.parent / f".{out.name}.parsing"
        self.parts = self.folder / f"parts-{key}"

    def part(self, index: int) -> Path:
        return self.parts / f"{index:09d}.parquet"

    def prepare(self, resume: bool) -> int:
        """On the main process, before any process writes: clear the folder (or, on resume,
        only the markers of the last run); returns how many parts are reused."""
        try:
            if not resume:
                shutil.rmtree(self.folder, ignore_errors=True)
            for marker in [*self.folder.glob("stop-*.json"), *self.folder.glob("done-*.json")]:
                marker.unlink()
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot write the staging folder {self.folder}: {(exc.strerror or '').lower()}"
            ) from None
        return sum(1 for _ in self.parts.glob("*.parquet"))

    def stop(self, index: int, read_error: str | None = None) -> None:
        write_json(self.folder / f"stop-{index:09d}.json", {"read_error": read_error})

    def first_stop(self) -> int | None:
        found = [int(p.stem.split("-")[1]) for p in self.folder.glob("stop-*.json")]
        return min(found, default=None)

    def read_error(self, index: int) -> str | None:
        path = self.folder / f"stop-{index:09d}.json"
        return json.loads(path.read_text())["read_error"] if path.is_file() else None

    def done(self, rank: int) -> Path:
        return self.folder / f"done-{rank}.json"


class _Job(NamedTuple):
    index: int
    data: bytes | None  # None: the worker reads the block from the (seekable) dump
    path: Path
    block_bytes: int
    best_rank: bool
    skip_errors: bool
    part: Path


def _parse_to_part(job: _Job) -> tuple[int, bool, str | None]:
    """Parse one block into its part file (inline or in a pool worker); returns (index,
    whether it has malformed lines, read error)."""
    data = job.data
    if data is None:
        try:
            with open(job.path, "rb") as f:
                data = read_block(f, job.index, job.block_bytes)
        except OSError as exc:
            return job.index, False, exc.strerror or str(exc)
    block = parse_block(data, job.best_rank, job.skip_errors)
    _write_part(job.part, block)
    return job.index, bool(block.errors), None


def _parse_shard(
    path: Path, staging: _Staging, block_bytes: int, best_rank: bool, skip: bool, processes: int
) -> int:
    """Write the missing parts of this process's shard; returns how many blocks the dump
    has, as far as this process read it (a stop ends reading early)."""
    seen = 0

    def ended(index: int) -> bool:  # a block before this one ends the parse
        stop = staging.first_stop()
        return stop is not None and index > stop

    def job(index: int, data: bytes | None) -> _Job:
        return _Job(index, data, path, block_bytes, best_rank, skip, staging.part(index))

    if _seekable(path):
        seen = -(-path.stat().st_size // block_bytes)
        mine = [i for i in distributed.shard(range(seen)) if not staging.part(i).is_file()]

        def jobs() -> Iterator[_Job]:
            for i in mine:
                if ended(i):
                    return
                yield job(i, None)

        total = len(mine)
    else:
        rank, size = distributed.process_index(), distributed.world_size()

        def jobs() -> Iterator[_Job]:
            nonlocal seen
            try:
                for i, data in _dump_blocks(path, block_bytes):
                    seen = i + 1
                    if ended(i):
                        return
                    # shard()'s rule, applied to a stream whose length is not known yet
                    if i % size == rank and not staging.part(i).is_file():
                        yield job(i, data)
            except _Unreadable as exc:
                seen = exc.index + 1
                staging.stop(exc.index, exc.reason)

        total = None

    def finished(result: tuple[int, bool, str | None]) -> bool:
        index, bad, read_error = result
        if read_error is not None or (bad and not skip):
            staging.stop(index, read_error)
            return True
        return False

    blocks = track(jobs(), "parsing dump blocks", total=total)
    if processes <= 1:
        for j in blocks:
            if finished(_parse_to_part(j)):
                break
        return seen
    with ProcessPoolExecutor(processes) as pool:
        pending: deque = deque()  # at most 2 blocks per worker in flight: memory stays bounded
        for j in blocks:
            pending.append(pool.submit(_parse_to_part, j))
            if len(pending) >= 2 * processes and finished(pending.popleft().result()):
                break
        for future in pending:
            finished(future.result())
    return seen


def _merge(path: Path, staging: _Staging, n_blocks: int, skip: bool) -> dict:
    """On the main process: the parts in block order, streamed into the staging folder's
    triples and labels files; raises on a bad line (stop mode) or an unreadable block."""
    triples = _ParquetRows(staging.folder / TRIPLES, _TRIPLE_COLUMNS)
    labels = _ParquetRows(staging.folder / LABELS, _LABEL_COLUMNS)
    line, skipped = 1, []
    try:
        for i in track(range(n_blocks), "merging parts"):
            part = staging.part(i)
            while not part.is_file():  # another process is still on it
                why = staging.read_error(i)
                if why is not None:
                    raise InputError(f"cannot read dump file {path}: {why}")
                time.sleep(_POLL)
            block_triples, block_labels, errors, lines = _read_part(part)
            if errors and not skip:
                raise _bad_line(path, line + errors[0][0], errors[0][1])
            skipped += [line + offset for offset, _ in errors]
            triples.add(block_triples)
            labels.add(block_labels)
            line += lines
    finally:
        triples.close()
        labels.close()
    return {"triples": triples.count, "labels": labels.count, "skipped_lines": skipped}


def parse_dump(
    path: str | Path,
    out_dir: str | Path,
    *,
    on_error: str = "stop",
    processes: int = 1,
    best_rank: bool = True,
    block_bytes: int = BLOCK_BYTES,
    resume: bool = False,
) -> dict | None:
    """Parse a Wikidata JSON dump (plain, .gz or .bz2; one entity per line) into Parquet.

    Runs as one process or as many (``accelerate launch``): each parses its shard of
    blocks, ``processes`` workers each, into part files; the main process merges them in
    block order, so the output is the same for any number of processes. Memory stays
    bounded (one block per worker, one row group while merging). ``on_error="stop"``
    raises on the first malformed line, naming its number, and leaves nothing behind;
    ``"skip"`` skips such lines and reports them. ``resume`` reuses the parts a killed
    parse left; otherwise they are cleared first. Returns counts, skipped line numbers,
    blocks and reused blocks on the main process, None on the others.
    """
    path, out = _check_dump(path, on_error), Path(out_dir)
    if block_bytes < 1 or processes < 1:
        raise InputError("block_bytes and processes must be at least 1")
    key = parse_key(path, block_bytes, best_rank, on_error)
    staging = _Staging(out, key)
    main = distributed.is_main_process()
    reused = staging.prepare(resume) if main else 0
    if main:
        log.info(
            "parsing %s in blocks of %d bytes on %d process(es)%s",
            path,
            block_bytes,
            distributed.world_size(),
            f", reusing {reused} finished blocks" if reused else "",
        )
    distributed.barrier()  # nobody writes into the staging folder while it is cleared
    skip = on_error == "skip"
    n_blocks = _parse_shard(path, staging, block_bytes, best_rank, skip, processes)
    write_json(staging.done(distributed.process_index()), {"blocks": n_blocks})
    if not main:
        return None
    everyone = [staging.done(rank) for rank in range(distributed.world_size())]
    try:
        stats = _merge(path, staging, n_blocks, skip)
        distributed.wait_for(everyone, _POLL)
        out.mkdir(parents=True, exist_ok=True)
        for name in (TRIPLES, LABELS):
            os.replace(staging.folder / name, out / name)
    except LucidError:  # a bad dump: once the others have stopped, leave nothing behind
        distributed.wait_for(everyone, _POLL)
        shutil.rmtree(staging.folder, ignore_errors=True)
        raise
    shutil.rmtree(staging.folder, ignore_errors=True)
    return {**stats, "blocks": n_blocks, "reused_blocks": reused, "key": key}


def write_snapshot(out_dir: str | Path, triples: list[tuple], labels: list[tuple]) -> Path:
    """Write in-memory triples and labels as a snapshot folder (the layout of ``parse_dump``).

    A label id given twice keeps its first label.
    """
    out = Path(out_dir)
    first_label = dict(reversed(labels))
    atomic_write_bytes(out / TRIPLES, _parquet_bytes(_table(triples, _TRIPLE_COLUMNS)))
    atomic_write_bytes(
        out / LABELS, _parquet_bytes(_table(list(first_label.items()), _LABEL_COLUMNS))
    )
    return out


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
