"""FLM scoring speed: one full forward per pair vs batching with the shared-prefix cache.

Both score the same pairs of the project's vocabulary with SmolLM2-135M on this machine's
CPU threads; the naive scorer is what a script would write (``model(ids).logits[0, -1]``,
every position's logits), ours batches left-padded suffixes over each object's cached
prefix and computes logits at the last position only. Prints pairs per second and the
ratio, and the largest difference between the two scorers' Yes logits.

    python benchmarks/feasibility_bench.py [--pairs 500] [--threads 2] [--n-examples 8 --n-negatives 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lucidml.core.zoo import load_llm
from lucidml.feasibility.prompts import ContextBuilder, PromptSettings
from lucidml.feasibility.scorer import YesNoScorer
from lucidml.feasibility.vocab import Vocabulary, demo_vocabulary


def bench_vocabulary(n_pairs: int) -> Vocabulary:
    """The demo vocabulary, its objects repeated under new names until it holds
    ``n_pairs`` unseen pairs (C-GQA-like groups of ~17 unseen states per object)."""
    v = demo_vocabulary()
    objects, seen = list(v.objects), v.seen.copy()
    k = 0
    while (~seen).sum() < n_pairs:
        objects.append(f"{v.objects[k % len(v.objects)]}{k // len(v.objects) + 2}")
        seen = np.concatenate([seen, v.seen[:, k % len(v.objects), None]], 1)
        k += 1
    return Vocabulary(v.states, objects, seen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-examples", type=int, default=8)
    ap.add_argument("--n-negatives", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_llm()
    vocab = bench_vocabulary(args.pairs)
    settings = PromptSettings(n_examples=args.n_examples, n_negatives=args.n_negatives)
    builder = ContextBuilder(vocab.states, vocab.objects, vocab.seen, settings)
    prompts = [
        builder.build(s, o)
        for o in range(len(vocab.objects))
        for s in np.flatnonzero(~vocab.seen[:, o])
    ]
    prompts = prompts[: args.pairs]
    scorer = YesNoScorer(model, tok, batch_size=args.batch_size)
    yes = scorer.yes_ids

    start = time.perf_counter()
    naive = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p.text, return_tensors="pt")["input_ids"]
            naive.append(model(input_ids=ids).logits[0, -1, yes].max().item())
    naive_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = scorer.score([p.text for p in prompts], [p.prefix for p in prompts])
    ours_s = time.perf_counter() - start

    n = len(prompts)
    print(
        f"pairs: {n}, objects: {len({p.obj for p in prompts})}, threads: {args.threads}, "
        f"{args.n_examples} examples + {args.n_negatives} No per prompt"
    )
    print(f"naive (one forward per pair): {n / naive_s:.2f} pairs/s ({naive_s:.1f} s)")
    print(f"batched + prefix cache:       {n / ours_s:.2f} pairs/s ({ours_s:.1f} s)")
    print(f"ratio: {naive_s / ours_s:.2f}x (target >= 3x)")
    print(f"max |yes logit difference|: {np.abs(np.array(naive) - ours.z_yes).max():.2e}")


if __name__ == "__main__":
    main()
