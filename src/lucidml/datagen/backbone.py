"""What LoFT needs of a text-to-image model, for the embedded digits model and for any
diffusers Stable Diffusion pipeline alike.

A ``Backbone`` holds the UNet (the only part adapters go on), a prompt encoder, the map
between images in [0, 1] and the UNet's input space (pixels in [-1, 1] for
``digits-diffusion``; VAE latents times the VAE's scaling factor for Stable Diffusion),
the training noise schedule with its prediction target (epsilon, or v for
``v_prediction`` schedulers such as SD 2.1's 768 model), and one seeded sampler with
classifier-free guidance that both share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from lucidml.errors import InputError, ModelError


@dataclass
class Backbone:
    name: str
    unet: torch.nn.Module
    encode_prompts: Callable[[Sequence[str]], torch.Tensor]  # (B, L, D) cross-attention context
    to_latents: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # images -> z0
    decode: Callable[[torch.Tensor], torch.Tensor]  # z0 -> images in [0, 1]
    latent_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]  # (channels, height, width) the backbone is fitted on
    train_scheduler: DDPMScheduler
    sample_scheduler: DDIMScheduler

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def prediction_type(self) -> str:
        return self.train_scheduler.config.prediction_type

    def training_target(self, z0, noise, t) -> torch.Tensor:
        """What the UNet is trained to output: the noise, or v = sqrt(a) eps - sqrt(1-a) z0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(z0, noise, t)
        raise ModelError(f"{self.name}: prediction type '{self.prediction_type}' is not supported")

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One latent per seed, each drawn from its own CPU generator: an image depends on
        its seed only, never on its batch or on the order of generation."""
        return torch.stack(
            [
                torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(s))
                for s in seeds
            ]
        )

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int = 50,
        guidance: float = 2.0,
    ) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] by DDIM with classifier-free guidance
        eps = eps_u + g (eps_c - eps_u); one seed per prompt."""
        if len(prompts) != len(seeds):
            raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        sched = DDIMScheduler.from_config(self.sample_scheduler.config)
        sched.set_timesteps(steps)
        context = self.encode_prompts([""] * len(prompts) + list(prompts))
        x = self.initial_noise(seeds).to(self.device) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            out = self.unet(inp, t, encoder_hidden_states=context).sample
            out_u, out_c = out.chunk(2)
            x = sched.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
        return self.decode(x).clamp(0, 1).float().cpu()


def from_digits_diffusion(pipe, name: str = "digits-diffusion") -> Backbone:
    """The embedded pixel-space model: 8x8 grey digits, prompts through digits-clip's
    text tower, padded to the length its training captions had (so a prompt's context
    does not depend on the other prompts of its batch)."""
    from lucidml.core.digits_clip import CLASS_NAMES, TEMPLATES

    vlm = pipe.vlm
    captions = [t.format(c) for c in CLASS_NAMES for t in TEMPLATES]
    length = vlm.tokenize(captions)["input_ids"].shape[1]

    @torch.no_grad()
    def encode(prompts):
        enc = vlm.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        return vlm.model.text_model(
            input_ids=enc["input_ids"].to(vlm.device),
            attention_mask=enc["attention_mask"].to(vlm.device),
        ).last_hidden_state

    return Backbone(
        name=name,
        unet=pipe.unet,
        encode_prompts=encode,
        to_latents=lambda x, generator: x.to(pipe.device) * 2 - 1,
        decode=lambda z: (z.clamp(-1, 1) + 1) / 2,
        latent_shape=(1, 8, 8),
        image_shape=(1, 8, 8),
        train_scheduler=pipe.noise_scheduler,
        sample_scheduler=DDIMScheduler.from_config(pipe.noise_scheduler.config),
    )


def from_stable_diffusion(pipe, name: str) -> Backbone:
    """A diffusers ``StableDiffusionPipeline`` (SD 2.1-base layout): VAE latents scaled by
    ``vae.config.scaling_factor``, prompts padded to the tokenizer's maximum length."""
    vae, tok, text = pipe.vae, pipe.tokenizer, pipe.text_encoder
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    channels = vae.config.in_channels
    factor = vae.config.scaling_factor

    @torch.no_grad()
    def encode(prompts):
        ids = tok(
            list(prompts),
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return text(ids.to(text.device))[0]

    @torch.no_grad()
    def to_latents(x, generator):
        x = x.to(vae.device, vae.dtype)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return vae.encode(x * 2 - 1).latent_dist.sample(generator) * factor

    @torch.no_grad()
    def decode(z):
        return (vae.decode(z / factor).sample + 1) / 2

    latent = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    return Backbone(
        name=name,
        unet=pipe.unet,
        encode_prompts=encode,
        to_latents=to_latents,
        decode=decode,
        latent_shape=(latent[0], latent[1], latent[1]),
        image_shape=(channels, size, size),
        train_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        sample_scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
    )
