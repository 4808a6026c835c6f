"""Merging three SmolLM2-135M-sized checkpoints: the lazy tensor-by-tensor path against
loading every state dict first, for TIES and DARE.

The base is the embedded SmolLM2-135M (float32 safetensors); each expert is the base plus
seeded noise. Every (path, method) runs in its own process, which reports its wall time
and peak resident memory; the script prints both and the ratios. mergekit is compared
when ``mergekit-yaml`` is on PATH (it needs transformers 4.x: a separate venv).

    python benchmarks/merging_bench.py [--methods ties dare_ties] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARAMS = {"ties": {"density": 0.8}, "dare_ties": {"density": 0.8, "seed": 0}}


def make_checkpoints(root: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file

    from lucidml.core.zoo import LLM_DEFAULT, load_llm, lucid_home
    from lucidml.merging.io import copy_model_files, save_state_dict

    load_llm()  # converts the GGUF once
    base = lucid_home() / "models" / LLM_DEFAULT
    state = load_file(base / "model.safetensors")
    folders = {"base": base}
    for i in (1, 2, 3):
        gen = torch.Generator().manual_seed(i)
        expert = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        folders[f"expert{i}"] = root / f"expert{i}"
        save_state_dict(expert, folders[f"expert{i}"])
        copy_model_files(base, folders[f"expert{i}"])
    return folders


def child(path: str, method: str, folders: dict[str, str], out: str) -> None:
    import torch

    torch.set_num_threads(2)
    start = time.perf_counter()
    experts = [folders[f"expert{i}"] for i in (1, 2, 3)]
    if path == "lazy":
        from lucidml.merging.io import merge_checkpoints

        merge_checkpoints(method, folders["base"], experts, out=out, **PARAMS[method])
    else:
        from safetensors.torch import load_file

        from lucidml.merging.io import save_state_dict
        from lucidml.merging.techniques import merge

        base = load_file(Path(folders["base"]) / "model.safetensors")
        states = [load_file(Path(e) / "model.safetensors") for e in experts]
        save_state_dict(merge(method, base, states, **PARAMS[method]), out)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def run_child(path: str, method: str, folders: dict[str, Path], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    arg = json.dumps({k: str(v) for k, v in folders.items()})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", path, method, arg, str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_mergekit(method: str, folders: dict[str, Path], out: Path) -> float | None:
    exe = shutil.which("mergekit-yaml")
    if exe is None:
        return None
    models = "\n".join(
        f"  - model: {folders[f'expert{i}']}\n    parameters: {{weight: 1.0, density: 0.8}}"
        for i in (1, 2, 3)
    )
    cfg = out.parent / f"mergekit-{method}.yaml"
    cfg.write_text(
        f"merge_method: {method}\nbase_model: {folders['base']}\nmodels:\n{models}\n"
        "parameters: {normalize: false}\ndtype: float32\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([exe, str(cfg), str(out), "--lazy-unpickle"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=list(PARAMS))
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        path, method, folders, out = args.child
        child(path, method, json.loads(folders), out)
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="merging-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        folders = make_checkpoints(root)
        for method in args.methods:
            lazy = run_child("lazy", method, folders, root / "out-lazy")
            full = run_child("load_all", method, folders, root / "out-full")
            print(
                f"{method}: lazy {lazy['seconds']:.1f} s, peak {lazy['peak_mb']:.0f} MB | "
                f"load-all {full['seconds']:.1f} s, peak {full['peak_mb']:.0f} MB | "
                f"memory ratio {lazy['peak_mb'] / full['peak_mb']:.2f} (target <= 0.5), "
                f"time ratio {lazy['seconds'] / full['seconds']:.2f}"
            )
            mk = run_mergekit(method, folders, root / "out-mergekit")
            if mk is None:
                print(f"{method}: mergekit-yaml not on PATH, no mergekit comparison")
            else:
                print(f"{method}: mergekit {mk:.1f} s, ours/mergekit {lazy['seconds'] / mk:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
