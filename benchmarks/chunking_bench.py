"""Speed of PA detection and DSC parsing against naive baselines measured in the same run.

PA: one vectorised pass (``Template.detect``) vs a Python loop over positions, on 100k
positions of a 576-wide layer (SmolLM2's width). DSC: trie-based greedy longest match vs
trying every dictionary chunk at every position, and the time per 1e5 steps at 1e5 and
1e6 steps (linear scaling means the two agree). Runs single-threaded.

    python benchmarks/chunking_bench.py          # the issue's sizes, about a minute
    python benchmarks/chunking_bench.py --quick  # smaller, a few seconds
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lucidml.chunking import dsc, pa, sequences


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def naive_detect(template: pa.Template, H: np.ndarray) -> np.ndarray:
    mask, mu = template.mask.numpy(), template.mean.numpy()
    return np.array([((H[t, mask] - mu) ** 2).mean() <= template.theta for t in range(len(H))])


def naive_parse(chunks: list[tuple], symbols: list) -> list[tuple]:
    by_length = sorted(chunks, key=len, reverse=True)
    out, i = [], 0
    while i < len(symbols):
        hit = next((c for c in by_length if tuple(symbols[i : i + len(c)]) == c), (symbols[i],))
        out.append(hit)
        i += len(hit)
    return out


def bench_pa(T: int, d: int = 576) -> None:
    rng = np.random.default_rng(0)
    H = rng.normal(size=(T, d)).astype(np.float32)
    pos = np.sort(rng.choice(T, T // 100, replace=False))
    H[pos, :50] = 1.0 + rng.normal(scale=0.05, size=(len(pos), 50))
    template = pa.fit(H, pos, seed=0)
    fast, t_fast = timed(template.detect, H)
    slow, t_slow = timed(naive_detect, template, H)
    assert np.array_equal(fast, slow)
    print(
        f"PA detection, {T} positions x {d}: vectorised {t_fast:.3f} s, loop {t_slow:.3f} s, "
        f"ratio {t_slow / t_fast:.1f}x (target >= 20x)"
    )


def bench_dsc(n_steps: int, naive_steps: int) -> None:
    seq = sequences.several_chunks(n_words=n_steps // 7 + 10, seed=0).symbols[:n_steps]
    # population states are tuples of 12 neuron levels: hash those, not characters
    rng = np.random.default_rng(0)
    state_of = {c: tuple(rng.integers(0, 5, 12).tolist()) for c in set(seq)}
    symbols = [state_of[c] for c in seq]
    d = dsc.learn_dictionary(symbols[:100_000])
    small = symbols[:naive_steps]
    fast, t_fast = timed(d.parse, small)
    slow, t_slow = timed(naive_parse, d.chunks, small)
    assert fast == slow
    print(
        f"DSC parse, {naive_steps} steps, {len(d.chunks)} chunks: trie {t_fast:.3f} s, "
        f"try-every-chunk {t_slow:.3f} s, ratio {t_slow / t_fast:.1f}x"
    )
    for n in sorted({min(100_000, n_steps), n_steps}):
        _, t = timed(d.parse, symbols[:n])
        print(f"DSC parse of {n:>9,} steps: {t:.3f} s, {t / (n / 1e5):.3f} s per 1e5 steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    args = ap.parse_args()
    # one thread: on a shared 2-core machine, two contended torch threads run ~10x slower
    torch.set_num_threads(1)
    bench_pa(20_000 if args.quick else 100_000)
    bench_dsc(200_000 if args.quick else 1_000_000, 20_000 if args.quick else 100_000)


if __name__ == "__main__":
    main()
