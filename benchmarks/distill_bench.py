"""Batched vs sequential student training for the DD-Ranking protocol on digits.

One condition of the protocol trains the learning-rate grid x ``num_eval`` runs (each run
on its own random IPC-10 subset, with DSA). The sequential baseline trains them one by
one with ``lucidml.core.train.fit_classifier``; the batched engine trains all of them as
one grouped ConvNet. Prints wall and CPU time of both, their ratio, and checks that both
give the same accuracies for the same seeds.

    python benchmarks/distill_bench.py           # 30 epochs, about a minute on 2 cores
    python benchmarks/distill_bench.py --full    # the digits preset's 200 epochs
    python benchmarks/distill_bench.py --norm batch  # the same with ConvNet-BN students
    python benchmarks/distill_bench.py --groups  # is a student the same in another group?

    python benchmarks/distill_bench.py --students    # ConvNet-BN and ResNet-18, 32x32
    python benchmarks/distill_bench.py --distillers  # DM and DC seconds per iteration

``--groups`` trains 5 students (one run's learning-rate grid) as a group of 5 and inside
groups of 35 (the same 5 at the start, middle and end), and compares their histories
and weights bit for bit: it is why ``rank`` shards whole runs (docs/distill.md).

``--students`` trains BatchNorm students on random 32x32 RGB data (10 classes) at a fixed
small budget, sequentially and batched: ConvNet-3-BN (width 128) and ResNet-18. It prints
their time ratio, the largest logit difference of the two engines' final models, and the
peak memory of the batched engine in one group and capped at ``--cap`` members (each
measured in a fresh subprocess, as its peak resident set), with the group sizes used.

``--distillers`` times DM and DC iterations on digits (the CPU defaults' model) and on
random 32x32 data with ConvNet-3 w128 (the reference's CIFAR setting).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lucidml.core.runs import derive_seed
from lucidml.core.zoo import load_digits
from lucidml.distill.augment import DSA, Augmenter
from lucidml.distill.config import EvalConfig
from lucidml.distill.data import random_subset
from lucidml.distill.losses import cross_entropy
from lucidml.distill.models import build_model
from lucidml.distill.trainer import (
    Member,
    default_max_group,
    group_sizes,
    train_batched,
    train_sequential,
)

# Student benchmarks: (model name, build_model kwargs, images per class, epochs, members)
STUDENTS = {
    "convnet-bn": ("convnet", {"depth": 3, "width": 128, "norm": "batch"}, 10, 2, 5),
    "resnet18": ("resnet18", {}, 1, 1, 2),
}


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


def _student_job(kind: str, max_group: int | None = None):
    """Members, model and recipe of one student benchmark on random 32x32 data (seeded)."""
    name, kwargs, ipc, epochs, n_members = STUDENTS[kind]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10 * ipc, 3, 32, 32, generator=gen)
    targets = F.one_hot(torch.arange(10 * ipc) % 10, 10).float()
    test = (torch.rand(100, 3, 32, 32, generator=gen), torch.arange(100) % 10)
    lrs = (0.001, 0.005, 0.01, 0.05, 0.1)
    members = [
        Member(x, targets, lrs[i % len(lrs)], derive_seed(0, i // len(lrs)))
        for i in range(n_members)
    ]

    def model_fn():
        return build_model(name, 3, 10, 32, **kwargs)

    recipe = EvalConfig().recipe.updated(
        epochs=epochs, batch_size=256, eval_every=epochs, max_group=max_group
    )
    return members, model_fn, recipe, (lambda s, t: cross_entropy(s, t, None)), test


def _final_logits(model_fn, state, x):
    model = model_fn()
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x)


def students() -> None:
    """Sequential vs batched BatchNorm students, and the batched engine's peak memory."""
    print(f"random 32x32 RGB data, 10 classes, threads {torch.get_num_threads()}")
    for kind, (_, _, ipc, epochs, n_members) in STUDENTS.items():
        members, model_fn, recipe, loss, test = _student_job(kind)
        job = (members, model_fn, recipe, loss, None, None, test)
        times, fitted = {}, {}
        for engine_name, engine in (("sequential", train_sequential), ("batched", train_batched)):
            wall = time.perf_counter()
            fitted[engine_name] = engine(*job)
            times[engine_name] = time.perf_counter() - wall
        diff = max(
            (_final_logits(model_fn, b.state, test[0]) - _final_logits(model_fn, s.state, test[0]))
            .abs()
            .max()
            .item()
            for b, s in zip(fitted["batched"], fitted["sequential"], strict=True)
        )
        print(
            f"{kind}: {n_members} students, IPC {ipc}, {epochs} epochs: sequential "
            f"{times['sequential']:.1f}s, batched {times['batched']:.1f}s, ratio "
            f"{times['sequential'] / times['batched']:.2f}x; max logit difference {diff:.1e}"
        )


def peak_memory(cap: int) -> None:
    """Peak resident memory of the batched engine in one group and capped at ``cap``."""
    for kind in STUDENTS:
        members, model_fn, recipe, *_ = _student_job(kind)
        auto = default_max_group(model_fn(), (3, 32, 32), min(len(members[0].x), 256))
        cifar = default_max_group(model_fn(), (3, 32, 32), 256)
        print(f"{kind}: default cap {auto} members here, {cifar} at CIFAR-10 IPC >= 26 (batch 256)")
        for max_group in (None, cap):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", kind, str(max_group or 0)],
                capture_output=True,
                text=True,
                check=True,
            )
            child = json.loads(out.stdout.strip().splitlines()[-1])
            sizes = group_sizes(len(members), max_group or auto)
            print(
                f"  groups {sizes}: peak resident memory {child['peak_mib']:.0f} MiB "
                f"({child['before_mib']:.0f} MiB before training)"
            )


def _peak_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss
    would include the parent's resident memory, inherited at fork."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(kind: str, max_group: int) -> None:
    members, model_fn, recipe, loss, test = _student_job(kind, max_group or None)
    before = _peak_mib()
    train_batched(members, model_fn, recipe, loss, None, None, test)
    print(json.dumps({"peak_mib": _peak_mib(), "before_mib": before}))


def distillers() -> None:
    """Seconds per DM and DC iteration at the CPU default model and the CIFAR setting."""
    from lucidml.distill.baselines import distill
    from lucidml.distill.config import DistillConfig, ModelConfig

    digits = load_digits()
    gen = torch.Generator().manual_seed(0)
    cifar_x = torch.rand(10 * 300, 3, 32, 32, generator=gen)
    cifar_y = torch.arange(10 * 300) % 10
    settings = {
        "digits, ConvNet-2 w32, CPU defaults": (digits.train_x, digits.train_y, DistillConfig()),
        # the reference's batch_real 256, at its IPC-1 DC loops (1, 1): its IPC-10 loops
        # (10, 50) cost about ten times as much per iteration
        "32x32 RGB, ConvNet-3 w128, reference batches": (
            cifar_x,
            cifar_y,
            DistillConfig(model=ModelConfig(depth=3, width=128)).with_iterations("reference", 1),
        ),
    }
    print(f"threads {torch.get_num_threads()}")
    for label, (x, y, cfg) in settings.items():
        ipc = 10 if x is digits.train_x else 1
        for method, iterations in (("dm", 2), ("dc", 1)):
            run = cfg.with_iterations(f"{iterations},{iterations}", ipc)
            wall = time.perf_counter()
            distill(method, x, y, ipc, seed=0, cfg=run)
            per = (time.perf_counter() - wall) / iterations
            loops = run.dc_outer_inner or ((1, 1) if ipc == 1 else (2, 5))
            extra = f", (outer, inner) = {loops}" if method == "dc" else ""
            print(f"{label}, IPC {ipc}: {method} {per:.2f}s per iteration{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="200 epochs (the digits preset)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument(
        "--norm", default="instance", help="the digits ConvNet's norm: instance, batch, none"
    )
    parser.add_argument("--groups", action="store_true", help="group-composition check")
    parser.add_argument("--students", action="store_true", help="ConvNet-BN and ResNet-18")
    parser.add_argument("--cap", type=int, default=1, help="--students: the capped group size")
    parser.add_argument("--distillers", action="store_true", help="DM/DC time per iteration")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.groups:
        group_composition(args.ipc)
        return
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    if args.students:
        students()
        peak_memory(args.cap)
        return
    if args.distillers:
        distillers()
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
        return build_model("convnet", 1, 10, 8, **(cfg.model.kwargs() | {"norm": args.norm}))

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
        f"IPC {args.ipc}, {recipe.epochs} epochs, ConvNet norm {args.norm}, "
        f"threads {torch.get_num_threads()}"
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
