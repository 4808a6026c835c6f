"""``digits-diffusion``: a small text-conditioned pixel-space diffusion model for digits.

A diffusers ``UNet2DConditionModel`` (1 channel, 8x8) cross-attends to the frozen text
tower of ``digits-clip``, so captions like "a handwritten seven" steer it. It is trained
with the epsilon objective and 10 % caption dropout, so classifier-free guidance works,
and samples with DDIM. LoRA adapters from peft attach to the UNet attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``) through ``unet.add_adapter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from lucidml.errors import InputError

TRAIN_STEPS = 1000


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        cross_attention_dim=64,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=TRAIN_STEPS, beta_schedule="squaredcos_cap_v2", clip_sample=True
    )


class DigitsDiffusion:
    """Text-to-image sampler: ``pipe(prompts) -> images (N, 1, 8, 8)`` in [0, 1]."""

    def __init__(self, unet: UNet2DConditionModel, vlm):
        self.unet, self.vlm = unet.eval(), vlm
        self.noise_scheduler = build_scheduler()

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Cross-attention context: digits-clip's final text hidden states (B, L, 64)."""
        enc = self.vlm.tokenize(list(prompts))
        return self.vlm.model.text_model(**enc).last_hidden_state

    def __call__(
        self,
        prompts: Sequence[str],
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise InputError("the list of prompts is empty")
        sched = DDIMScheduler.from_config(self.noise_scheduler.config)
        sched.set_timesteps(num_inference_steps)
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([""] * len(prompts))
        uncond = F.pad(uncond, (0, 0, 0, cond.shape[1] - uncond.shape[1]))
        x = (
            latents
            if latents is not None
            else torch.randn(len(prompts), 1, 8, 8, generator=generator)
        )
        x = x.to(self.device)
        context = torch.cat([uncond, cond])
        for t in sched.timesteps:
            with torch.no_grad():
                eps = self.unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
            eps_u, eps_c = eps.chunk(2)
            x = sched.step(eps_u + guidance_scale * (eps_c - eps_u), t, x).prev_sample
        return ((x.clamp(-1, 1) + 1) / 2).cpu()

    def save(self, folder: str | Path) -> None:
        self.unet.save_pretrained(folder)


def diffusion_loss(
    unet, noise_scheduler, x0: torch.Tensor, context: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The epsilon-prediction objective ||eps - eps_theta(x_t, t, c)||^2."""
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, TRAIN_STEPS, (len(x0),), generator=generator)
    xt = noise_scheduler.add_noise(x0, noise, t)
    return F.mse_loss(unet(xt, t, encoder_hidden_states=context).sample, noise)


def train_digits_diffusion(
    data,
    vlm,
    seed: int = 0,
    epochs: int = 60,
    batch_size: int = 128,
    lr: float = 2e-3,
    drop_caption: float = 0.1,
    progress=None,
) -> DigitsDiffusion:
    """Train the UNet on digits with captions from digits-clip's templates."""
    from lucidml.core.digits_clip import CLASS_NAMES, TEMPLATES

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = build_unet()
    pipe = DigitsDiffusion(unet, vlm)
    captions = [[t.format(c) for t in TEMPLATES] for c in CLASS_NAMES]
    # every caption's context is fixed (the text tower is frozen), so encode them once
    flat = [c for per_class in captions for c in per_class] + [""]
    ctx = pipe.encode_prompts(flat)
    n_t = len(TEMPLATES)
    x = data.train_x * 2 - 1
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    unet.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            pick = data.train_y[idx] * n_t + torch.randint(0, n_t, (len(idx),), generator=gen)
            drop = torch.rand(len(idx), generator=gen) < drop_caption
            pick[drop] = len(flat) - 1
            loss = diffusion_loss(unet, pipe.noise_scheduler, x[idx], ctx[pick], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs, loss.item())
    unet.eval()
    return pipe
