"""Speed of LoFT's generation and fitting against the plain ways, measured in the same run.

(a) Generation with a fused pair of adapters: the weighted update folded into the
    weights once per pair (``lora.fused``) vs the two adapters kept as separate peft
    adapters weighted by ``set_adapters`` (every forward runs both A and B). Target:
    folded >= 1.3x faster with the same images (max difference <= 1e-4).
(b) Fitting per-shot LoRAs: all of them in one batched pass (``fit_adapters`` with
    per-sample routing) vs one at a time, seconds per LoRA, and the largest difference
    between the two results.

Runs on the embedded digits-diffusion (trained on first use); ``--model`` takes a
Stable Diffusion pipeline folder instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from lucidml.datagen.api import load_backbone
from lucidml.datagen.config import AdapterConfig
from lucidml.datagen.lora import Adapter, fit_adapters, fused, runtime_adapters, target_modules


def random_adapter(unet, seed: int, rank: int = 2, scale: float = 0.1) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    layers = dict(unet.named_modules())
    factors = {
        m: (
            scale * torch.randn(rank, layers[m].in_features, generator=g),
            scale * torch.randn(layers[m].out_features, rank, generator=g),
        )
        for m in target_modules(unet, ("to_q", "to_k", "to_v", "to_out.0"))
    }
    return Adapter(factors, rank, float(rank))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_generation(backbone, images: int, steps: int, pairs: int) -> None:
    prompts = ["a photo of a seven"] * images
    t_fold = t_peft = 0.0
    worst = 0.0
    for p in range(pairs):
        adapters = [random_adapter(backbone.unet, 2 * p), random_adapter(backbone.unet, 2 * p + 1)]
        seeds = list(range(p * images, (p + 1) * images))

        def folded(adapters=adapters, seeds=seeds):
            with fused(backbone.unet, adapters, [0.5, 0.5]):
                return backbone.sample(prompts, seeds, steps=steps)

        def unfused(adapters=adapters, seeds=seeds):
            with runtime_adapters(backbone.unet, adapters, [0.5, 0.5]) as adapted:
                return dataclasses.replace(backbone, unet=adapted).sample(prompts, seeds, steps)

        dt, a = timed(folded)
        t_fold += dt
        dt, b = timed(unfused)
        t_peft += dt
        worst = max(worst, float((a - b).abs().max()))
    print(
        f"(a) {pairs} pairs x {images} images x {steps} DDIM steps: folded {t_fold:.2f} s, "
        f"peft set_adapters {t_peft:.2f} s -> folded is {t_peft / t_fold:.2f}x faster "
        f"(target >= 1.3x); max image difference {worst:.2e} (target <= 1e-4)"
    )


def bench_fitting(backbone, n: int, steps: int) -> None:
    from lucidml.core.zoo import load_digits

    data = load_digits()
    groups = [
        (data.train_x[i : i + 1], [f"a photo of a {data.class_names[int(data.train_y[i])]}"])
        for i in range(n)
    ]
    cfg = AdapterConfig(steps=steps)
    t_batched, together = timed(lambda: fit_adapters(backbone, groups, cfg, list(range(n))))
    t_alone, alone = timed(
        lambda: [fit_adapters(backbone, [g], cfg, [i])[0] for i, g in enumerate(groups)]
    )
    diff = max(
        float((x.factors[m][1] - y.factors[m][1]).abs().max())
        for x, y in zip(together, alone, strict=True)
        for m in x.factors
    )
    print(
        f"(b) {n} LoRAs x {steps} steps: batched {t_batched / n:.3f} s per LoRA, one at a time "
        f"{t_alone / n:.3f} s per LoRA -> batched is {t_alone / t_batched:.2f}x faster; "
        f"max |B| difference {diff:.1e}; 600 steps would take {600 / steps * t_batched / n:.1f} s "
        "per LoRA batched"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits-diffusion")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--loras", type=int, default=8)
    parser.add_argument("--fit-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model)
    bench_generation(backbone, args.images, args.steps, args.pairs)
    if args.model == "digits-diffusion":
        bench_fitting(backbone, args.loras, args.fit_steps)


if __name__ == "__main__":
    main()
