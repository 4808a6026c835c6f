"""LoRA adapters on a diffusion UNet's attention projections: fit, save, load, fuse.

A LoRA changes a linear layer W (d_out, d_in) to W + (alpha / r) B A with A (r, d_in)
Gaussian-initialised and B (d_out, r) zero-initialised; only A and B train (peft
injects them). An ``Adapter`` keeps the trained (A, B) of every adapted layer, keyed by
the layer's module name, and is stored as safetensors with peft's state-dict names
(``<module>.lora_A.weight``, ``<module>.lora_B.weight``) and its settings as metadata.

Fusing adapters S with weights w_i means every adapted layer computes
W x + sum_i w_i (alpha_i / r_i) B_i A_i x. ``fused`` folds that sum into the weights for
the duration of a block (one matmul per layer at sampling time) and restores the exact
original tensors afterwards; ``runtime_adapters`` keeps them as separate peft adapters
weighted by ``set_adapters`` (the slower path the benchmark compares against). A baked
merge concatenates, A = [A_i], B = [w_i s_i B_i], which is exact; peft's "linear" merge
(sum w B)(sum w A) adds cross terms B_i A_j and is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lucidml.core.progress import track
from lucidml.core.runs import derive_seed
from lucidml.errors import ConfigError, InputError, ShapeError

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FIT_ADAPTER = "lucid_fit"


@dataclass
class Adapter:
    """Trained LoRA factors {module name: (A (r, d_in), B (d_out, r))} and settings."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float
    meta: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(self.factors)

    def delta(self, module: str) -> torch.Tensor:
        """(alpha / r) B A, the change this adapter makes to one layer's weight."""
        A, B = self.factors[module]
        return self.scale * (B @ A)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """peft's state-dict names (no adapter name), contiguous CPU tensors."""
        out = {}
        for module, (A, B) in self.factors.items():
            out[f"{module}.lora_A.weight"] = A.detach().cpu().contiguous()
            out[f"{module}.lora_B.weight"] = B.detach().cpu().contiguous()
        return out

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        from lucidml.core.runs import atomic_write_bytes

        header = {"rank": str(self.rank), "alpha": repr(float(self.alpha))}
        header["meta"] = json.dumps(self.meta, sort_keys=True)
        return atomic_write_bytes(path, save(self.state_dict(), metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> Adapter:
        """An adapter file, checked: paired A/B per module, shapes that multiply, rank and
        alpha in the metadata, finite values. Any problem is one sentence naming the file."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"adapter file {path} does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path} is not a readable safetensors file ({exc})") from None
        try:
            rank, alpha = int(header["rank"]), float(header["alpha"])
            meta = json.loads(header.get("meta", "{}"))
        except (KeyError, ValueError):
            raise InputError(f"{path} lacks the LoRA rank/alpha metadata lucid writes") from None
        factors = {}
        for key in sorted(tensors):
            if not key.endswith(".lora_A.weight"):
                if not key.endswith(".lora_B.weight"):
                    raise InputError(f"{path}: '{key}' is not a LoRA A or B weight")
                continue
            module = key[: -len(".lora_A.weight")]
            B = tensors.get(f"{module}.lora_B.weight")
            A = tensors[key]
            if B is None:
                raise InputError(f"{path}: layer {module} has lora_A but no lora_B")
            if A.ndim != 2 or B.ndim != 2 or A.shape[0] != rank or B.shape[1] != rank:
                raise ShapeError(
                    f"{path}: layer {module} has A {tuple(A.shape)} and B {tuple(B.shape)}, "
                    f"which do not make a rank-{rank} update"
                )
            if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                raise InputError(f"{path}: layer {module} holds NaN or infinite values")
            factors[module] = (A, B)
        if not factors or len(factors) * 2 != len(tensors):
            raise InputError(f"{path} holds no complete LoRA (A, B) pairs")
        return cls(factors, rank, alpha, meta)


def target_modules(unet: nn.Module, targets: Sequence[str]) -> list[str]:
    """The linear layers ``targets`` name (a module whose name is, or ends in '.' +, a
    target). A target that matches nothing is refused: the reference's list names
    ``add_k_proj``/``add_v_proj``, which SD 2.1's UNet does not have, and silently
    adapts fewer layers than it says."""
    names = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear)]
    found = []
    for target in targets:
        hits = [n for n in names if n == target or n.endswith("." + target)]
        if not hits:
            raise ConfigError(
                f"LoRA target '{target}' matches no linear layer of the UNet "
                f"(its attention projections are named like '{_example(names)}')"
            )
        found.extend(hits)
    return sorted(set(found))


def _example(names: Sequence[str]) -> str:
    attn = [n for n in names if ".to_" in n]
    return (attn or list(names) or ["none"])[0]


def check_adapters(unet: nn.Module, adapters: Sequence[Adapter], where: str) -> None:
    """Adapters to fuse must agree on rank and adapted layers, and fit this UNet."""
    if not adapters:
        raise InputError(f"{where} holds no adapters")
    first = adapters[0]
    modules = dict(unet.named_modules())
    for a in adapters[1:]:
        if a.rank != first.rank:
            raise InputError(
                f"{where} mixes LoRA ranks {first.rank} and {a.rank} "
                f"({first.meta.get('file')}, {a.meta.get('file')})"
            )
        if a.modules != first.modules:
            raise InputError(
                f"{where} mixes adapters on different target layers "
                f"({first.meta.get('file')}, {a.meta.get('file')})"
            )
    for module, (A, B) in first.factors.items():
        layer = modules.get(module)
        if not isinstance(layer, nn.Linear):
            raise InputError(f"{where}: the UNet has no linear layer '{module}' to adapt")
        if (B.shape[0], A.shape[1]) != tuple(layer.weight.shape):
            raise ShapeError(
                f"{where}: layer {module} is {tuple(layer.weight.shape)} in the UNet but the "
                f"adapter's update is {(B.shape[0], A.shape[1])}"
            )


@contextmanager
def fused(unet: nn.Module, adapters: Sequence[Adapter], weights: Sequence[float]) -> Iterator[None]:
    """Inside the block every adapted layer's weight is W + sum_i w_i s_i B_i A_i;
    afterwards the original tensors are back bit for bit."""
    if len(adapters) != len(weights):
        raise ConfigError(f"{len(adapters)} adapters but {len(weights)} weights")
    modules = dict(unet.named_modules())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name in sorted({m for a in adapters for m in a.factors}):
                weight = modules[name].weight
                delta = sum(
                    w * a.delta(name).to(weight.device, torch.float32)
                    for a, w in zip(adapters, weights, strict=True)
                    if name in a.factors
                )
                saved[name] = weight.detach().clone()
                weight.copy_((weight.float() + delta).to(weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                modules[name].weight.copy_(original)


@contextmanager
def runtime_adapters(
    unet: nn.Module, adapters: Sequence[Adapter], weights: Sequence[float]
) -> Iterator[nn.Module]:
    """A copy of ``unet`` with the adapters as separate peft adapters weighted by
    diffusers' ``set_adapters``: every forward pass runs each adapter's A and B beside the
    base layer. The slower path the benchmark times, and the oracle the tests compare
    ``fused`` and ``StackedLoRA`` with. (A copy, because peft leaves its wrapper layers
    in a model even after its adapters are deleted.)"""
    import copy

    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    adapted = copy.deepcopy(unet)
    names = [f"lucid_{i}" for i in range(len(adapters))]
    for name, a in zip(names, adapters, strict=True):
        adapted.add_adapter(
            LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=a.modules), adapter_name=name
        )
        set_peft_model_state_dict(adapted, a.state_dict(), adapter_name=name)
    adapted.set_adapters(names, weights=list(weights))
    yield adapted


def bake(adapters: Sequence[Adapter], weights: Sequence[float], method: str = "cat") -> Adapter:
    """One adapter equal to the weighted fusion: A = [A_i] stacked, B = [w_i s_i B_i] side
    by side, rank sum r_i, scale 1. Exact, unlike peft's 'linear' merge."""
    if method != "cat":
        raise ConfigError(
            f"merge '{method}' is not exact: (sum w B)(sum w A) adds cross terms B_i A_j; "
            "use 'cat', or fuse at sampling time"
        )
    modules = adapters[0].modules
    factors = {}
    for m in modules:
        A = torch.cat([a.factors[m][0] for a in adapters], 0)
        B = torch.cat(
            [w * a.scale * a.factors[m][1] for a, w in zip(adapters, weights, strict=True)], 1
        )
        factors[m] = (A, B)
    rank = sum(a.rank for a in adapters)
    return Adapter(
        factors, rank, float(rank), {"baked_from": [a.meta.get("file") for a in adapters]}
    )


# --- fitting ---------------------------------------------------------------------------------


class StackedLoRA(nn.Module):
    """A linear layer with n independent LoRAs stacked, A (n, r, d_in) and B (n, d_out, r);
    ``route`` (batch,) says which LoRA each sample of the batch goes through. Samples of a
    UNet never interact (GroupNorm and attention are per sample), so n LoRAs train in one
    forward pass exactly as they would one by one, each on its own samples."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generators):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        d_out, d_in = base.weight.shape
        # peft's "gaussian" init: A ~ N(0, 1/r^2), B = 0, so training starts at the base;
        # each LoRA draws from its own generator, so its init does not depend on the others
        A = torch.stack([torch.randn(rank, d_in, generator=g) for g in generators]) / rank
        self.A = nn.Parameter(A.to(base.weight.device))
        self.B = nn.Parameter(torch.zeros(len(A), d_out, rank, device=base.weight.device))
        self.route: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.A[self.route], self.B[self.route]  # (batch, r, d_in), (batch, d_out, r)
        low = torch.einsum("b...i,bri->b...r", x, A)
        return self.base(x) + self.scale * torch.einsum("b...r,bor->b...o", low, B)


@contextmanager
def stacked_loras(
    unet: nn.Module, modules: Sequence[str], rank: int, alpha: float, generators
) -> Iterator[dict[str, StackedLoRA]]:
    """Swap each named linear layer for a ``StackedLoRA`` with one LoRA per generator
    (each draws its inits in layer-name order); the original layers come back afterwards."""
    layers = dict(unet.named_modules())
    stacked = {}
    try:
        for name in modules:
            parent, _, child = name.rpartition(".")
            wrapper = StackedLoRA(layers[name], rank, alpha, generators)
            setattr(layers[parent] if parent else unet, child, wrapper)
            stacked[name] = wrapper
        yield stacked
    finally:
        for name, wrapper in stacked.items():
            parent, _, child = name.rpartition(".")
            setattr(layers[parent] if parent else unet, child, wrapper.base)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _clip_each(params: Sequence[nn.Parameter], max_norm: float = 1.0) -> None:
    """clip_grad_norm_ for every stacked LoRA on its own: one norm per LoRA over all of
    its layers, the same coefficient torch would use for it alone."""
    sq = sum(p.grad.flatten(1).pow(2).sum(1) for p in params)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *([1] * (p.grad.ndim - 1))))


def fit_adapters(
    backbone,
    groups: Sequence[tuple[torch.Tensor, Sequence[str]]],
    config,
    seeds: Sequence[int],
    label: str = "fitting LoRAs",
) -> list[Adapter]:
    """Fit one LoRA per group of (images (N, C, H, W) in [0, 1], their prompts), all in
    one batched pass: per step each LoRA draws ``batch_size`` of its own images, noise and
    timesteps from its own seeded generator, the losses are summed (each LoRA's is the
    mean over its own samples), AdamW with warm-up then cosine, gradients clipped at 1.0
    per LoRA. Equal, up to float round-off, to fitting each group alone; the UNet's own
    weights are frozen and come back unchanged."""
    if len(groups) != len(seeds):
        raise ShapeError(f"{len(groups)} groups of images but {len(seeds)} seeds")
    for images, prompts in groups:
        if len(images) != len(prompts) or len(images) == 0:
            raise ShapeError(f"{len(images)} images but {len(prompts)} prompts in a LoRA group")
    unet = backbone.unet
    modules = target_modules(unet, config.targets)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latents = [backbone.to_latents(x, g) for (x, _), g in zip(groups, gens, strict=True)]
    contexts = [backbone.encode_prompts(list(p)).detach() for _, p in groups]
    inits = [torch.Generator().manual_seed(derive_seed(s, "lora-init")) for s in seeds]
    unet.requires_grad_(False)
    with stacked_loras(unet, modules, config.rank, config.alpha, inits) as stacked:
        params = [p for layer in stacked.values() for p in (layer.A, layer.B)]
        opt = torch.optim.AdamW(
            params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, eps=1e-8
        )
        steps = config.steps
        n_t = backbone.train_scheduler.config.num_train_timesteps
        for step in track(range(steps), label):
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_factor(step, config.warmup_steps, steps)
            z0, ctx, noise, t, route = [], [], [], [], []
            for i, (z, c, g) in enumerate(zip(latents, contexts, gens, strict=True)):
                size = min(config.batch_size, len(z))
                idx = torch.randint(0, len(z), (size,), generator=g)
                z0.append(z[idx])
                ctx.append(c[idx])
                noise.append(torch.randn(z[idx].shape, generator=g))
                t.append(torch.randint(0, n_t, (size,), generator=g))
                route.append(torch.full((size,), i))
            loss = _stacked_loss(backbone, z0, ctx, noise, t, torch.cat(route), stacked)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _clip_each(params)
            opt.step()
        return [
            Adapter(
                {
                    m: (layer.A[i].detach().cpu(), layer.B[i].detach().cpu())
                    for m, layer in stacked.items()
                },
                config.rank,
                float(config.alpha),
            )
            for i in range(len(groups))
        ]


def _stacked_loss(backbone, z0, ctx, noise, t, route, stacked) -> torch.Tensor:
    """Sum over LoRAs of each one's mean denoising loss, in one UNet pass."""
    device = backbone.device
    for layer in stacked.values():
        layer.route = route.to(device)
    sizes = [len(z) for z in z0]
    z0, noise, t = torch.cat(z0).to(device), torch.cat(noise).to(device), torch.cat(t).to(device)
    ctx = torch.cat(ctx).to(device)  # one padded length: the backbones pad to a fixed one
    zt = backbone.train_scheduler.add_noise(z0, noise, t)
    out = backbone.unet(zt, t, encoder_hidden_states=ctx).sample
    target = backbone.training_target(z0, noise, t)
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    return sum(part.mean() for part in per_sample.split(sizes))
