"""AlphaEdit: MEMIT's targets and layers, with each update projected onto the null space
of the preserved-knowledge keys (Fang et al., "AlphaEdit: Null-Space Constrained
Knowledge Editing for Language Models", ICLR 2025).

C = E[k k^T] over general text stands for the keys of what the model already knows. P
projects onto the span of C's eigenvectors whose eigenvalues are below a threshold (the
directions those keys do not use), so an update Delta P leaves every preserved key's
output alone. Across timesteps, the keys of earlier edits are kept (their sum of outer
products, K_p K_p^T) and the update also keeps their outputs near where those edits put
them.
"""

from __future__ import annotations

import torch
from pydantic import Field

from lucidml.core.progress import get_logger
from lucidml.editing.methods.memit import MEMIT, MEMITConfig

log = get_logger("editing")


class AlphaEditConfig(MEMITConfig):
    # eigenvalues of C below this span the null space (the reference's
    # nullspace_threshold; an absolute value on E[k k^T], as there)
    nullspace_threshold: float = Field(1e-2, gt=0)
    l2: float = Field(10.0, gt=0)  # the reference's L2: ridge on the update


def null_space_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U0 U0^T for the eigenvectors U0 of the symmetric C with eigenvalue < threshold."""
    values, vectors = torch.linalg.eigh(C)
    null = vectors[:, values < threshold]
    return null @ null.T


def alphaedit_update(
    R: torch.Tensor, K: torch.Tensor, P: torch.Tensor, previous: torch.Tensor, l2: float
) -> torch.Tensor:
    """dW for residuals R (d_out, n) at keys K (d_in, n), solved as the reference does:
    dW^T = (P (K K^T + previous) + l2 I)^-1 P K R^T, with ``previous`` = K_p K_p^T of
    earlier edits. X = dW^T satisfies l2 X = P (K R^T - (K K^T + previous) X), so every
    row of dW lies in the range of P, and dW k = 0 for every key k with P k = 0."""
    eye = torch.eye(len(P), dtype=P.dtype, device=P.device)
    A = P @ (K @ K.T + previous) + l2 * eye
    return torch.linalg.solve(A, P @ K @ R.T).T


class AlphaEdit(MEMIT):
    """MEMIT with null-space-projected updates and a memory of earlier edits' keys."""

    name = "alphaedit"
    Config = AlphaEditConfig

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.edited_keys: dict[str, torch.Tensor] = {}  # module -> K_p K_p^T (float64)
        self._projectors: dict[str, torch.Tensor] = {}  # from cov; recomputed, not stored

    def layer_update(self, module, R, K):
        cfg = self.config
        if module not in self._projectors:
            P = null_space_projector(
                self.cov[module].to(K.device, K.dtype), cfg.nullspace_threshold
            )
            log.info(
                "AlphaEdit %s: null space of dimension %d of %d",
                module,
                round(float(P.trace())),
                len(P),
            )
            self._projectors[module] = P
        P = self._projectors[module]
        previous = self.edited_keys.get(module)
        previous = torch.zeros_like(P) if previous is None else previous.to(P.device, P.dtype)
        dw = alphaedit_update(R, K, P, previous, cfg.l2)
        self.edited_keys[module] = (previous + K @ K.T).cpu()
        return dw

    def state_dict(self):
        return {**super().state_dict(), "edited_keys": self.edited_keys}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.edited_keys = dict(state["edited_keys"])
        self._projectors = {}
