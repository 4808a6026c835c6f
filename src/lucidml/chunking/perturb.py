"""Causal tests on the RNN: transport a population state, and compositional grafting.

Transport writes a state's level centres into the hidden vector and reads the next
prediction. Grafting trains two copies of a network on a transfer sequence with the
same windows; at every ``at`` symbol the graft arm replaces the hidden state by a
learnt state (say, after J) and the input by ``feed`` (say K), so the new word can
borrow an old transition (JK -> L).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.chunking import dsc
from lucidml.chunking.rnn import Encoding, TrainedRNN, fit_windows
from lucidml.core.progress import track
from lucidml.errors import InputError


def transport_prediction(
    trained: TrainedRNN, disc: dsc.Discretization, state_of: str, then: str
) -> str:
    """Set h to the centres of the most frequent state seen with input ``state_of``, feed
    ``then`` and return the predicted next symbol."""
    states = disc.state_tuples()
    sigma = dsc.most_frequent_state(states, trained.input_symbols, state_of)
    h = torch.as_tensor(disc.transport(sigma), dtype=torch.float32)
    if then not in trained.alphabet:
        raise InputError(f"symbol {then!r} is not in the alphabet {trained.alphabet}")
    return trained.alphabet[trained.model.step_from(h, trained.alphabet.index(then))]


@dataclass
class GraftCurves:
    """Per-iteration training loss of each arm, one row per repeat."""

    control: np.ndarray  # (repeats, iters)
    graft: np.ndarray

    @staticmethod
    def _band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sem = x.std(0, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.zeros(x.shape[1])
        return x.mean(0), 1.96 * sem

    def summary(self) -> dict:
        (mc, bc), (mg, bg) = self._band(self.control), self._band(self.graft)
        return {"control_mean": mc, "control_ci": bc, "graft_mean": mg, "graft_ci": bg}


def graft_learning_curves(
    base: TrainedRNN,
    disc: dsc.Discretization,
    transfer: str,
    at: str = "D",
    state_of: str = "J",
    feed: str = "K",
    iters: int = 100,
    window: int = 100,
    lr: float = 0.005,
    repeats: int = 30,
    seed: int = 0,
    enabled: bool = True,
) -> GraftCurves:
    """Train a control and a graft copy of ``base`` on ``transfer`` with paired windows."""
    enc = Encoding.of(transfer, base.alphabet)
    states = disc.state_tuples()
    sigma = dsc.most_frequent_state(states, base.input_symbols, state_of)
    h_graft = torch.as_tensor(disc.transport(sigma), dtype=torch.float32)
    at_id, feed_id = base.alphabet.index(at), base.alphabet.index(feed)

    def perturb(inputs: torch.Tensor):
        where = (inputs == at_id).nonzero().flatten().tolist()
        return inputs.masked_fill(inputs == at_id, feed_id), {t: h_graft for t in where}

    curves = {"control": [], "graft": []}
    for r in track(range(repeats), "graft repeats"):
        for arm in curves:
            model = copy.deepcopy(base.model)
            rng = np.random.default_rng(seed + r)  # both arms see the same windows
            edit = perturb if arm == "graft" and enabled else None
            curves[arm].append(fit_windows(model, enc.ids, iters, window, lr, rng, edit))
    return GraftCurves(np.array(curves["control"]), np.array(curves["graft"]))
