"""editing benchmark: dump parsing throughput (1 process vs all cores) and DuckDB vs pandas diff.

    python benchmarks/editing_bench.py          # 50k entities, 1M-triple snapshots
    python benchmarks/editing_bench.py --full   # the issue's sizes: 200k entities, 10M triples

Targets: parsing scales with processes; DuckDB diff at least 3x faster than a pandas merge.
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = ap.parse_args()
    n_entities = 200_000 if args.full else 50_000
    n_triples = 10_000_000 if args.full else 1_000_000
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dump = synthetic_dump(tmp / "dump.json", n_entities)
        one = time_parse(dump, 1)
        many = time_parse(dump, cores)
        print(
            f"parse {n_entities:,} entities: 1 process {n_entities / one:,.0f} entities/s; "
            f"{cores} processes {n_entities / many:,.0f} entities/s; "
            f"speed-up {one / many:.2f}x"
        )

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
