"""Speed of PA detection, DSC parsing and RNN training against baselines measured in the
same run, and the quick demo against its time budget.

PA: one vectorised pass (``Template.detect``) vs a Python loop over positions, on 100k
positions of a 576-wide layer (SmolLM2's width). DSC: trie-based greedy longest match vs
trying every dictionary chunk at every position, and the time per 1e5 steps at 1e5 and
1e6 steps (linear scaling means the two agree). RNN: one training iteration (forward and
backward through a window) with the NumPy recurrence and hand-written BPTT vs autograd
through a loop of torch operations. Runs single-threaded.

``--demo`` times ``lucidml.chunking.api.demo(quick=True)`` (the tour's) with the default
threads, next to a fixed reference computation timed just before it, so a run on a busy
machine can be told from a slow demo. The budget is 90 s on 2 idle cores.

    python benchmarks/chunking_bench.py          # the issue's sizes, about a minute
    python benchmarks/chunking_bench.py --quick  # smaller, a few seconds
    python benchmarks/chunking_bench.py --demo   # the quick demo, about a minute
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from lucidml.chunking import dsc, pa, rnn, sequences


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


def autograd_loop_iteration(model: rnn.ElmanRNN, ids: torch.Tensor) -> None:
    """The baseline: the same step as ``ElmanRNN.forward``, as torch operations under autograd."""
    x = torch.nn.functional.one_hot(ids[:-1], model.n_symbols).float()
    w_x, w_h = model.update.weight.split([model.n_symbols, model.hidden_size], dim=1)
    drive = x @ w_x.T + model.update.bias
    h, prev = torch.zeros(model.hidden_size), []
    for t in range(len(drive)):
        prev.append(h)
        h = drive[t] + w_h @ h
    logits = model.readout(torch.cat([x, torch.stack(prev)], dim=1))
    loss = -torch.log_softmax(logits, -1).gather(1, ids[1:, None]).sum()
    model.zero_grad()
    loss.backward()


def numpy_iteration(model: rnn.ElmanRNN, ids: torch.Tensor) -> None:
    logp, _ = model(ids[:-1])
    loss = -logp.gather(1, ids[1:, None]).sum()
    model.zero_grad()
    loss.backward()


def bench_rnn(window: int, repeats: int = 5) -> None:
    torch.manual_seed(0)
    model = rnn.ElmanRNN(n_symbols=6, hidden_size=12)
    ids = torch.randint(0, 6, (window + 1,), generator=torch.Generator().manual_seed(0))
    t_fast = min(timed(numpy_iteration, model, ids)[1] for _ in range(repeats))
    t_slow = min(timed(autograd_loop_iteration, model, ids)[1] for _ in range(repeats))
    print(
        f"RNN training iteration, window {window}: NumPy recurrence + hand-written BPTT "
        f"{t_fast * 1e3:.1f} ms, autograd through a torch loop {t_slow * 1e3:.1f} ms, "
        f"ratio {t_slow / t_fast:.1f}x"
    )


def reference_seconds() -> float:
    """A fixed computation (matrix products and a Python loop): how busy the machine is."""
    start = time.perf_counter()
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        a = torch.tanh(a @ a.T / 512)
    total = 0
    for i in range(3_000_000):
        total += i
    return time.perf_counter() - start


def bench_demo() -> None:
    from lucidml.chunking import api

    reference = reference_seconds()
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        api.demo(out, quick=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"quick demo: {wall:.1f} s wall, {cpu:.1f} s CPU on {torch.get_num_threads()} threads "
        f"(budget 90 s on 2 idle cores); reference computation {reference:.2f} s just before "
        "(compare runs on their reference times)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a few seconds")
    ap.add_argument("--demo", action="store_true", help="time the quick demo instead")
    args = ap.parse_args()
    if args.demo:
        bench_demo()  # with the default threads, as the tour runs it
        return
    # one thread: on a shared 2-core machine, two contended torch threads run ~10x slower
    torch.set_num_threads(1)
    bench_pa(20_000 if args.quick else 100_000)
    bench_dsc(200_000 if args.quick else 1_000_000, 20_000 if args.quick else 100_000)
    bench_rnn(1000 if args.quick else 5000)


if __name__ == "__main__":
    main()
