"""LoRA (one adapter continued through time, or fresh per timestep) and LoRA-Merge (EMA).

The model handed back is always a plain model with the adapter merged into its
weights, so evaluation, checkpoints and the next editor see ordinary parameters.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import Field

from lucidml.editing.methods.base import Editor, TrainConfig, train_on_answers
from lucidml.errors import ModelError


class LoRAConfig(TrainConfig):
    r: int = 4
    alpha: int = 8
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    mode: Literal["continue", "fresh_merge"] = "continue"


class LoRAMergeConfig(LoRAConfig):
    beta: float = Field(0.25, ge=0.0, le=1.0)  # weight of the new timestep in the EMA
    mode: Literal["fresh_merge"] = "fresh_merge"


def target_weights(model, target_modules: list[str]) -> dict[str, torch.Tensor]:
    """The weight tensors of every linear layer a LoRA adapter would wrap."""
    out = {
        name: mod.weight
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in target_modules
    }
    if not out:
        raise ModelError(
            f"{type(model).__name__} has no linear layers named "
            f"{', '.join(target_modules)} to put a LoRA adapter on"
        )
    return out


def ema_merge(
    previous: dict[str, torch.Tensor], updated: dict[str, torch.Tensor], beta: float
) -> dict[str, torch.Tensor]:
    """W_t = (1 - beta) W_{t-1} + beta W_lora; exact at beta 0 and 1 (torch.lerp)."""
    return {k: torch.lerp(previous[k], updated[k], beta) for k in previous}


def train_merged_lora(
    model, tokenizer, records, cfg: LoRAConfig, adapter: dict | None = None
) -> tuple[torch.nn.Module, dict]:
    """Train a LoRA adapter (optionally starting from ``adapter``) and merge it into the model.

    Returns (plain model with merged weights, adapter state for continuing later).
    """
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    target_weights(model, cfg.target_modules)
    torch.manual_seed(cfg.seed)
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        target_modules=cfg.target_modules,
        lora_dropout=0.0,
        bias="none",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated is_gradient_checkpointing; not ours to fix
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        wrapped = get_peft_model(model, peft_cfg)
    if adapter is not None:
        set_peft_model_state_dict(wrapped, adapter)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    train_on_answers(wrapped, tokenizer, records, params, cfg)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(wrapped).items()}
    return wrapped.merge_and_unload(), state


class LoRA(Editor):
    """``continue``: one adapter trained on through all timesteps (the reference);
    ``fresh_merge``: a new adapter each timestep, merged into the weights."""

    name = "lora"
    Config = LoRAConfig

    def check(self, model):
        target_weights(model, self.config.target_modules)

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.adapter: dict | None = None
        self.base: dict[str, torch.Tensor] | None = None

    def apply(self, model, tokenizer, records):
        cfg = self.config
        if cfg.mode == "continue":
            weights = target_weights(model, cfg.target_modules)
            if self.base is None:
                self.base = {k: w.detach().clone() for k, w in weights.items()}
            with torch.no_grad():  # take the previous merge out; the adapter carries it
                for k, w in weights.items():
                    w.copy_(self.base[k])
        model, adapter = train_merged_lora(
            model, tokenizer, records, cfg, self.adapter if cfg.mode == "continue" else None
        )
        if cfg.mode == "continue":
            self.adapter = adapter
        return model

    def state_dict(self):
        return {"adapter": self.adapter, "base": self.base}

    def save(self, folder, model, tokenizer):
        """The merged model, and in ``continue`` mode the adapter (``adapter.safetensors``,
        peft's state-dict keys, its r/alpha/targets in the metadata) for
        ``set_peft_model_state_dict`` on a peft-wrapped base model."""
        from safetensors.torch import save

        from lucidml.core.runs import atomic_write_bytes

        written = super().save(folder, model, tokenizer)
        if self.adapter:
            cfg = self.config
            meta = {
                "r": str(cfg.r),
                "alpha": str(cfg.alpha),
                "targets": ",".join(cfg.target_modules),
            }
            tensors = {k: v.contiguous() for k, v in self.adapter.items()}
            atomic_write_bytes(folder / "adapter.safetensors", save(tensors, metadata=meta))
            written.append("adapter.safetensors")
        return written

    def load_state_dict(self, state):
        self.adapter, self.base = state["adapter"], state["base"]


class LoRAMerge(Editor):
    """A fresh adapter per timestep, folded into the weights as an EMA with weight beta."""

    name = "lora_merge"
    Config = LoRAMergeConfig

    def check(self, model):
        target_weights(model, self.config.target_modules)

    def apply(self, model, tokenizer, records):
        cfg = self.config
        # clone: on CPU the weights would otherwise alias the merge and the EMA is a no-op
        previous = {
            k: w.detach().clone() for k, w in target_weights(model, cfg.target_modules).items()
        }
        model, _ = train_merged_lora(model, tokenizer, records, cfg)
        weights = target_weights(model, cfg.target_modules)
        merged = ema_merge(previous, {k: w.detach() for k, w in weights.items()}, cfg.beta)
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(merged[k])
        return model
