"""Print two tours' numbers side by side: ``compare_results.py CPU_TOUR CUDA_TOUR``.

For each demo of the first tour: its time in both, then every numeric leaf of its
results.json (lists of more than 12 entries are summarised by their length) with the
absolute difference, so a device-dependent bug shows as a large gap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def leaves(obj, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "env":
                yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if len(obj) > 12:
            yield f"{prefix}[len]", len(obj)
        else:
            for i, v in enumerate(obj):
                yield from leaves(v, f"{prefix}[{i}]")
    elif isinstance(obj, bool):
        yield prefix, int(obj)
    elif isinstance(obj, int | float):
        yield prefix, obj


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(a: str, b: str) -> None:
    a_root, b_root = Path(a), Path(b)
    a_tour, b_tour = read(a_root / "tour.json"), read(b_root / "tour.json")
    b_demos = {d["name"]: d for d in b_tour.get("demos", [])}
    print(f"{'demo':12s} {a_root.name:>10s} {b_root.name:>10s}   (seconds, status)")
    for demo in a_tour.get("demos", []):
        other = b_demos.get(demo["name"], {})
        print(
            f"{demo['name']:12s} {demo['seconds']:10.1f} {other.get('seconds', float('nan')):10.1f}"
            f"   {demo['status'][:30]} | {other.get('status', '-')[:30]}"
        )
    for demo in a_tour.get("demos", []):
        name = demo["name"]
        left = dict(leaves(read(a_root / name / "results.json")))
        right = dict(leaves(read(b_root / name / "results.json")))
        if not left and not right:
            continue
        print(f"\n== {name}: {len(left)} numbers")
        print(f"{'key':60s} {a_root.name:>12s} {b_root.name:>12s} {'|diff|':>10s}")
        for key in sorted(set(left) | set(right)):
            x, y = left.get(key), right.get(key)
            diff = abs(x - y) if x is not None and y is not None else float("nan")
            fx = f"{x:12.5g}" if x is not None else f"{'-':>12s}"
            fy = f"{y:12.5g}" if y is not None else f"{'-':>12s}"
            print(f"{key[-60:]:60s} {fx} {fy} {diff:10.3g}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare_results.py CPU_TOUR_DIR CUDA_TOUR_DIR")
    main(sys.argv[1], sys.argv[2])
