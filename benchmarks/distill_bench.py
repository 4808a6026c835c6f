"""Batched vs sequential student training for the DD-Ranking protocol on digits.

One condition of the protocol trains the learning-rate grid x ``num_eval`` runs (each run
on its own random IPC-10 subset, with DSA). The sequential baseline trains them one by
one with ``lucidml.core.train.fit_classifier``; the batched engine trains all of them as
one grouped ConvNet. Prints wall and CPU time of both, their ratio, and checks that both
give the same accuracies for the same seeds.

    python benchmarks/distill_bench.py           # 30 epochs, about a minute on 2 cores
    python benchmarks/distill_bench.py --full    # the digits preset's 200 epochs
    python benchmarks/distill_bench.py --groups  # is a student the same in another group?

``--groups`` trains 5 students (one run's learning-rate grid) as a group of 5 and inside
groups of 35 (the same 5 at the start, middle and end), and compares their histories
and weights bit for bit: it is why ``rank`` shards whole runs (docs/distill.md).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lucidml.core.runs import derive_seed
from lucidml.core.zoo import load_digits
from lucidml.distill.augment import DSA, Augmenter
from lucidml.distill.config import EvalConfig
from lucidml.distill.data import random_subset
from lucidml.distill.losses import cross_entropy
from lucidml.distill.models import build_model
from lucidml.distill.trainer import Member, train_batched, train_sequential


def group_composition(ipc: int) -> None:
    """Train 5 students alone and inside larger groups; print whether they are identical."""
    cfg = EvalConfig.preset("digits-hard")
    data = load_digits()

    def member(seed: int, lr: float) -> Member:
        idx = random_subset(data.train_y, {c: ipc for c in range(10)}, seed)
        return Member(data.train_x[idx], F.one_hot(data.train_y[idx], 10).float(), lr, seed)

    def model_fn():
        return build_model("convnet", 1, 10, 8, **cfg.model.kwargs())

    job = (
        model_fn,
        cfg.recipe.updated(epochs=20, eval_every=5),
        lambda s, t: cross_entropy(s, t, None),
        Augmenter(DSA(cfg.augment.dsa_strengths())),
        None,
        (data.test_x, data.test_y),
        (data.train_x[-120:], data.train_y[-120:]),
    )
    five = [member(derive_seed(1, 0), lr) for lr in cfg.lr_grid]
    others = [member(derive_seed(9, i), lr) for i in range(6) for lr in cfg.lr_grid]
    alone = train_batched(five, *job)
    print(
        f"5 students (one run's LR grid), IPC {ipc}, 20 epochs, threads {torch.get_num_threads()}"
    )
    for where, at in (("start", 0), ("middle", 15), ("end", 30)):
        group = others[:at] + five + others[at:]
        inside = train_batched(group, *job)[at : at + 5]
        same = all(a.history == b.history for a, b in zip(alone, inside, strict=True))
        diff = max(
            (a.state[k] - b.state[k]).abs().max().item()
            for a, b in zip(alone, inside, strict=True)
            for k in a.state
        )
        print(f"in a group of 35 ({where}): histories identical {same}, max weight diff {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="200 epochs (the digits preset)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--groups", action="store_true", help="group-composition check")
    args = parser.parse_args()
    if args.groups:
        group_composition(args.ipc)
        return

    cfg = EvalConfig.preset("digits-hard")
    recipe = cfg.recipe if args.full else cfg.recipe.updated(epochs=30, eval_every=10)
    data = load_digits()
    members = []
    for r in range(cfg.num_eval):
        seed = derive_seed(cfg.seed, r)
        idx = random_subset(data.train_y, {c: args.ipc for c in range(10)}, seed)
        targets = F.one_hot(data.train_y[idx], 10).float()
        members += [Member(data.train_x[idx], targets, lr, seed) for lr in cfg.lr_grid]

    def model_fn():
        return build_model("convnet", 1, 10, 8, **cfg.model.kwargs())

    augment = Augmenter(DSA(cfg.augment.dsa_strengths()))
    job = (
        members,
        model_fn,
        recipe,
        lambda s, t: cross_entropy(s, t, None),
        augment,
        None,
        (data.test_x, data.test_y),
    )
    print(
        f"{len(cfg.lr_grid)} learning rates x {cfg.num_eval} runs = {len(members)} students, "
        f"IPC {args.ipc}, {recipe.epochs} epochs, threads {torch.get_num_threads()}"
    )
    timings = {}
    results = {}
    for name, engine in (("sequential", train_sequential), ("batched", train_batched)):
        wall, cpu = time.perf_counter(), time.process_time()
        results[name] = engine(*job)
        timings[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        print(f"{name:10s} wall {timings[name][0]:7.1f}s  cpu {timings[name][1]:7.1f}s")
    wall_ratio = timings["sequential"][0] / timings["batched"][0]
    cpu_ratio = timings["sequential"][1] / timings["batched"][1]
    print(
        f"ratio sequential / batched: wall {wall_ratio:.2f}x  cpu {cpu_ratio:.2f}x  (target >= 2)"
    )
    diffs = [
        abs(b.history[i]["test_acc"] - s.history[i]["test_acc"])
        for b, s in zip(results["batched"], results["sequential"], strict=True)
        for i in range(len(b.history))
    ]
    same = sum(d < 1e-6 for d in diffs)
    print(
        f"accuracies equal at {same}/{len(diffs)} checkpoints; max difference "
        f"{max(diffs):.4f} ({max(diffs) * len(data.test_y):.0f} of {len(data.test_y)} test "
        "images)"
    )


if __name__ == "__main__":
    main()
