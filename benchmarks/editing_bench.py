"""editing benchmark: dump parsing throughput (processes, launches), bz2 decompression
(standard library against indexed_bzip2 when installed) and DuckDB vs pandas diff.

    python benchmarks/editing_bench.py          # 50k entities, 1M-triple snapshots
    python benchmarks/editing_bench.py --full   # the issue's sizes: 200k entities, 10M triples
    python benchmarks/editing_bench.py --launch # also 2 processes under accelerate launch

Parsing is timed against an in-memory single pass over the same blocks (``read_dump``: no
part files, no merge), so the cost of sharding shows. Targets: parsing scales with
processes; DuckDB diff at least 3x faster than a pandas merge.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lucidml.editing import wikidata


def synthetic_dump(path: Path, n_entities: int, seed: int = 0) -> Path:
    """Entities with 1-4 item claims, a qualifier and a reference each, like real dumps."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("[\n")
        for i in range(n_entities):
            claims = {}
            for p in rng.choice(50, size=rng.integers(1, 5), replace=False):
                o = int(rng.integers(1, n_entities))
                snak = {
                    "snaktype": "value",
                    "property": f"P{p}",
                    "datatype": "wikibase-item",
                    "datavalue": {
                        "type": "wikibase-entityid",
                        "value": {"entity-type": "item", "id": f"Q{o}", "numeric-id": o},
                    },
                }
                claims[f"P{p}"] = [
                    {
                        "mainsnak": snak,
                        "rank": "normal",
                        "type": "statement",
                        "qualifiers": {"P580": [dict(snak, property="P580")]},
                        "references": [{"snaks": {"P248": [snak]}}],
                    }
                ]
            ent = {
                "id": f"Q{i + 1}",
                "type": "item",
                "labels": {"en": {"language": "en", "value": f"entity {i + 1}"}},
                "descriptions": {"en": {"language": "en", "value": "synthetic"}},
                "claims": claims,
            }
            f.write(json.dumps(ent) + (",\n" if i < n_entities - 1 else "\n"))
        f.write("]\n")
    return path


def time_parse(dump: Path, processes: int) -> float:
    """Seconds to parse the dump into Parquet, the way `lucid editing parse` does."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        wikidata.parse_dump(dump, Path(out) / "snap", processes=processes)
        return time.perf_counter() - start


def time_in_memory(dump: Path) -> float:
    """Seconds for one in-memory pass over the same blocks (no parts, no merge)."""
    start = time.perf_counter()
    triples, labels, _ = wikidata.read_dump(dump)
    with tempfile.TemporaryDirectory() as out:
        wikidata.write_snapshot(Path(out) / "snap", triples, labels)
    return time.perf_counter() - start


def time_launched(dump: Path, processes: int) -> float:
    """Seconds for `accelerate launch` of ``processes`` parse processes on CPU, less the
    seconds the same launch takes for a two-entity dump (start-up, imports, process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu"]
    launch += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision"]
    launch += ["no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m"]
    launch += ["lucidml", "editing", "parse", "-q"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # two CPU processes joined on gloo

    def seconds(args: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([*launch, *args], check=True, env=env, capture_output=True)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as out:
        tiny = synthetic_dump(Path(out) / "tiny.json", 2)
        start_up = seconds(["--dump", str(tiny), "--out", f"{out}/tiny"])
        return seconds(["--dump", str(dump), "--out", f"{out}/snap"]) - start_up


def time_bz2(dump: Path) -> str:
    """Decompression throughput of the dump as .bz2: the standard library (one core)
    against the reader parse uses (indexed_bzip2 on every core when it is installed)."""
    import bz2

    packed = dump.with_suffix(".json.bz2")
    packed.write_bytes(bz2.compress(dump.read_bytes(), 9))
    mib = dump.stat().st_size / 2**20

    def seconds(opener) -> float:
        start = time.perf_counter()
        with opener(packed) as f:
            while f.read(1 << 22):
                pass
        return time.perf_counter() - start

    plain = seconds(bz2.open)
    try:
        import indexed_bzip2  # noqa: F401
    except ImportError:
        return (
            f"bz2 decompression: standard library {mib / plain:.1f} MiB/s of output; "
            "indexed_bzip2 is not installed, so parse uses the standard library (not measured)"
        )
    parallel = seconds(wikidata.open_bz2)
    return (
        f"bz2 decompression: standard library {mib / plain:.1f} MiB/s, indexed_bzip2 on "
        f"{os.cpu_count()} cores {mib / parallel:.0f} MiB/s (speed-up {plain / parallel:.2f}x)"
    )


def snapshot_pair(folder: Path, n_triples: int, churn: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    old = pd.DataFrame(
        {
            "subject": pd.Series(rng.integers(0, n_triples // 3, n_triples)).map("Q{}".format),
            "property": pd.Series(rng.integers(0, 200, n_triples)).map("P{}".format),
            "object": pd.Series(rng.integers(0, 1_000_000, n_triples)).map("Q{}".format),
        }
    )
    new = old.copy()
    changed = rng.random(n_triples) < churn
    new.loc[changed, "object"] = (
        pd.Series(rng.integers(0, 1_000_000, int(changed.sum()))).map("Q{}".format).to_numpy()
    )
    for name, df in (("old", old), ("new", new)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        df.assign(rank="normal").to_parquet(folder / name / wikidata.TRIPLES, index=False)
    return old, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="200k entities and 10M triples")
    ap.add_argument("--launch", action="store_true", help="also 2 processes under accelerate")
    args = ap.parse_args()
    n_entities = 200_000 if args.full else 50_000
    n_triples = 10_000_000 if args.full else 1_000_000
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dump = synthetic_dump(tmp / "dump.json", n_entities)
        base = time_in_memory(dump)
        one = time_parse(dump, 1)
        many = time_parse(dump, cores)
        print(
            f"parse {n_entities:,} entities: in-memory single pass {n_entities / base:,.0f} "
            f"entities/s; parse_dump 1 process {n_entities / one:,.0f} entities/s "
            f"({base / one:.2f}x the single pass); --processes {cores} "
            f"{n_entities / many:,.0f} entities/s (speed-up {one / many:.2f}x)"
        )
        if args.launch:
            launched = time_launched(dump, 2)
            print(
                f"  accelerate launch, 2 processes: {n_entities / launched:,.0f} entities/s "
                f"(speed-up {one / launched:.2f}x, launch start-up excluded)"
            )

        print(time_bz2(dump))

        old, new = snapshot_pair(tmp, n_triples)
        start = time.perf_counter()
        fast = wikidata.diff(tmp / "old", tmp / "new", ("new", "update", "added"))
        t_duck = time.perf_counter() - start
        start = time.perf_counter()
        slow = wikidata.diff_pandas(old, new, ("new", "update", "added"))
        t_pandas = time.perf_counter() - start
        assert len(fast) == len(slow)
        print(
            f"diff two {n_triples:,}-triple snapshots: duckdb {t_duck:.2f}s (from Parquet), "
            f"pandas merge {t_pandas:.2f}s (from memory); ratio {t_pandas / t_duck:.1f}x "
            f"(target >= 3); {len(fast):,} changes"
        )


if __name__ == "__main__":
    main()
