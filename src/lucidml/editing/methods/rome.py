"""ROME: a rank-one update of one MLP output matrix per edit, applied sequentially."""

from __future__ import annotations

import torch

from lucidml.core.hooks import get_module
from lucidml.core.progress import track
from lucidml.editing.methods.locate import (
    CovarianceEditor,
    LocateConfig,
    cached_covariance,
    edit_batch,
    edit_module,
    float64_device,
    keys_at,
    optimize_deltas,
)


class ROMEConfig(LocateConfig):
    layer: int = 5  # reference: layer 5 down_proj of Llama-3-8B
    ridge: float = 1e-4  # relative to mean(diag C); keeps C invertible on a small corpus


def rome_update(W: torch.Tensor, C: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """dW = (v - W k)(C^-1 k)^T / ((C^-1 k)^T k), so (W + dW) k = v with a rank-one change.

    Keys orthogonal to C^-1 k (in the plain inner product) are left unchanged.
    """
    u = torch.linalg.solve(C, k)
    return torch.outer(v - W @ k, u) / (u @ k)


def regularised(C: torch.Tensor, ridge: float) -> torch.Tensor:
    return C + ridge * C.diagonal().mean() * torch.eye(len(C), dtype=C.dtype, device=C.device)


class ROME(CovarianceEditor):
    name = "rome"
    Config = ROMEConfig

    def check(self, model):
        edit_module(model, self.config, self.config.layer)

    def apply(self, model, tokenizer, records):
        cfg = self.config
        module = edit_module(model, cfg, cfg.layer)
        weight = get_module(model, module).weight
        exact = float64_device(weight.device)
        if self.cov is None:
            self.cov = regularised(
                cached_covariance(model, tokenizer, [module], cfg)[module], cfg.ridge
            )
        self.cov = self.cov.to(exact)  # once per timestep (a resumed C comes on the CPU)
        for record in track(records, "ROME edits"):
            _, delta = optimize_deltas(model, tokenizer, [record], module, cfg)
            eb = edit_batch(tokenizer, [record], cfg.prefixes, weight.device)
            k = keys_at(model, module, eb)[0].to(exact).double()
            W = weight.detach().to(exact).double()
            v = W @ k + delta[0].to(exact).double()
            dw = rome_update(W, self.cov, k, v)
            with torch.no_grad():
                weight += dw.to(weight.device, weight.dtype)
        return model
