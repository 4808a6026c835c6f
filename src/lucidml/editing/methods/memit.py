"""MEMIT: batched edits spread over several MLP layers by least squares."""

from __future__ import annotations

import torch
from pydantic import Field

from lucidml.core.hooks import get_module
from lucidml.editing.methods.locate import (
    CovarianceEditor,
    LocateConfig,
    cached_covariance,
    edit_batch,
    edit_module,
    keys_at,
    optimize_delta,
    outputs_at,
)


class MEMITConfig(LocateConfig):
    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8])  # reference
    mom2_weight: float = 15000.0  # lambda
    block: str = "model.layers.{}"  # residual stream after this block holds z


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """dW = R K^T (lam C + K K^T)^-1 for residuals R (d_out, n) and keys K (d_in, n)."""
    A = lam * C + K @ K.T
    return torch.linalg.solve(A, K @ R.T).T  # A is symmetric, so solve(A, K R^T)^T


class MEMIT(CovarianceEditor):
    """One batch per timestep: targets z_i at the top layer, then each layer takes its share."""

    name = "memit"
    Config = MEMITConfig

    def check(self, model):
        for layer in self.config.layers:
            edit_module(model, self.config, layer)

    def apply(self, model, tokenizer, records):
        cfg = self.config
        if not records:
            return model
        modules = [edit_module(model, cfg, layer) for layer in sorted(cfg.layers)]
        top = cfg.block.format(max(cfg.layers))
        if self.cov is None:
            self.cov = cached_covariance(model, tokenizer, modules, cfg)
        device = next(model.parameters()).device
        batches = [edit_batch(tokenizer, r, cfg.prefixes, device) for r in records]
        z = torch.stack(
            [h + d for h, d in (optimize_delta(model, tokenizer, r, top, cfg) for r in records)]
        ).double()
        for i, module in enumerate(modules):
            K = torch.stack([keys_at(model, module, b) for b in batches]).double().T
            h = torch.stack([outputs_at(model, top, b) for b in batches]).double()
            R = (z - h).T / (len(modules) - i)
            weight = get_module(model, module).weight
            dw = memit_update(R, K, self.cov[module].to(K.device), cfg.mom2_weight)
            with torch.no_grad():
                weight += dw.to(weight.dtype)
        return model
