"""The paper's Elman RNN (linear by default), its training loop and state recording.

z_t = [x_t; h_{t-1}], h_t = W_h z_t + b_h (optionally tanh), and the read-out
log softmax(W_o z_t + b_o) predicts x_{t+1}. Training draws a random window of L+1
symbols per iteration and back-propagates through the whole window (Adam).

The network has 12 units, so a step costs a 12 x 12 product and its time is per-step
overhead. The recurrence therefore runs as a NumPy loop (forward, and backward through
time by hand in ``_Recurrence``), several times faster than a loop of torch operations
under autograd (benchmarks/chunking_bench.py); everything that is not sequential stays
in torch. It runs on the CPU:
a GPU would only add kernel-launch latency to each of the thousands of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lucidml.core.progress import track
from lucidml.errors import InputError

NONLINEARITIES = ("linear", "tanh")


@contextmanager
def one_thread():
    """Inside the block torch, and the OpenMP pool scikit-learn's k-means shares with it,
    use one thread. The RNN's operations are tiny: on the shared 2-core machine, 200
    training iterations took 0.9 s on one thread and 31 s on two (they wait on each other),
    and DSC's k-means levels 0.2 s against 2.9 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def recur(
    drive: np.ndarray, w_h: np.ndarray, h0: np.ndarray, overrides: dict, tanh: bool
) -> tuple[np.ndarray, np.ndarray]:
    """h_t = act(drive_t + W_h h_{t-1}) for every step: (states h_t, states read h_{t-1}).

    ``overrides[t]`` replaces h_{t-1} before step t reads it.
    """
    states, prev = np.empty_like(drive), np.empty_like(drive)
    h = h0
    for t in range(len(drive)):
        if t in overrides:
            h = overrides[t]
        prev[t] = h
        h = drive[t] + w_h @ h
        if tanh:
            h = np.tanh(h)
        states[t] = h
    return states, prev


def recur_backward(
    w_h: np.ndarray,
    states: np.ndarray,
    grad_states: np.ndarray,
    grad_prev: np.ndarray,
    overridden: set,
    tanh: bool,
) -> np.ndarray:
    """Backpropagation through time: dLoss/d(pre-activation) of every step, (T, H).

    delta_t, the gradient reaching h_t, is the loss's gradient at h_t plus what step t+1
    sends back through its read of h_t: the read-out's gradient there and W_h^T times
    step t+1's pre-activation gradient. An overridden read is a constant: nothing is sent.
    """
    T = len(states)
    pre = np.empty_like(states)
    w_t = np.ascontiguousarray(w_h.T)
    delta = grad_states[T - 1].copy()
    for t in range(T - 1, -1, -1):
        pre[t] = delta * (1.0 - states[t] ** 2) if tanh else delta
        if t == 0:
            break
        delta = grad_states[t - 1].copy()
        if t not in overridden:
            delta += grad_prev[t] + w_t @ pre[t]
    return pre


class _Recurrence(torch.autograd.Function):
    """(drive (T, H), W_h (H, H)) -> (states h_t, states read h_{t-1}), both (T, H).

    h0 and the override values are constants (no gradient reaches them).
    """

    @staticmethod
    def forward(ctx, drive, w_h, h0, overrides, tanh):
        values = {t: v.detach().cpu().numpy() for t, v in overrides.items()}
        states, prev = recur(
            drive.detach().cpu().numpy(), w_h.detach().cpu().numpy(), h0.cpu().numpy(), values, tanh
        )
        states, prev = torch.from_numpy(states), torch.from_numpy(prev)
        ctx.save_for_backward(w_h, states, prev)
        ctx.overridden, ctx.tanh = set(overrides), tanh
        return states, prev

    @staticmethod
    def backward(ctx, grad_states, grad_prev):
        w_h, states, prev = ctx.saved_tensors
        pre = recur_backward(
            w_h.detach().numpy(),
            states.numpy(),
            grad_states.contiguous().numpy(),
            grad_prev.contiguous().numpy(),
            ctx.overridden,
            ctx.tanh,
        )
        pre = torch.from_numpy(pre)
        return pre, pre.T @ prev, None, None, None


class ElmanRNN(nn.Module):
    """An Elman cell whose read-out sees the same [x_t; h_{t-1}] as the update."""

    def __init__(self, n_symbols: int, hidden_size: int = 12, nonlinearity: str = "linear"):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise InputError(
                f"unknown nonlinearity '{nonlinearity}': choose from {', '.join(NONLINEARITIES)}"
            )
        self.n_symbols, self.hidden_size, self.nonlinearity = n_symbols, hidden_size, nonlinearity
        self.update = nn.Linear(n_symbols + hidden_size, hidden_size)
        self.readout = nn.Linear(n_symbols + hidden_size, n_symbols)

    def forward(
        self,
        inputs: torch.Tensor,
        h0: torch.Tensor | None = None,
        overrides: dict[int, torch.Tensor] | None = None,
    ):
        """Run over ``inputs`` (T,) symbol ids.

        Returns (log-probabilities (T, n_symbols) of the next symbol, hidden states (T, H)).
        ``overrides`` maps a step t to a hidden vector that replaces h_{t-1} before step t
        reads it (used to transport or graft a population state).
        """
        x = nn.functional.one_hot(inputs, self.n_symbols).float()
        w_x, w_h = self.update.weight.split([self.n_symbols, self.hidden_size], dim=1)
        drive = x @ w_x.T + self.update.bias  # the input part of every step, in one matmul
        h0 = torch.zeros(self.hidden_size) if h0 is None else h0
        states, h_prev = _Recurrence.apply(
            drive, w_h, h0.detach(), dict(overrides or {}), self.nonlinearity == "tanh"
        )
        logits = self.readout(torch.cat([x, h_prev], dim=1))
        return torch.log_softmax(logits, dim=-1), states

    @torch.no_grad()
    def step_from(self, h: torch.Tensor, symbol: int) -> int:
        """argmax of the next-symbol prediction when ``h`` is the state and ``symbol`` the input."""
        x = nn.functional.one_hot(torch.tensor(symbol), self.n_symbols).float()
        return int(self.readout(torch.cat([x, h])).argmax())


@dataclass
class Encoding:
    """A symbol alphabet and the sequence as integer ids."""

    alphabet: list[str]
    ids: np.ndarray

    @classmethod
    def of(cls, symbols: Sequence[str], alphabet: Sequence[str] | None = None) -> Encoding:
        alphabet = list(alphabet) if alphabet is not None else sorted(set(symbols))
        index = {s: i for i, s in enumerate(alphabet)}
        unknown = set(symbols) - set(index)
        if unknown:
            raise InputError(f"symbols {sorted(unknown)} are not in the alphabet {alphabet}")
        return cls(
            alphabet, np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))
        )


@dataclass
class TrainedRNN:
    """A trained (or untrained control) RNN with a recorded pass over a fixed window."""

    model: ElmanRNN
    alphabet: list[str]
    hidden: np.ndarray  # (T, H) h_t after reading input t
    inputs: np.ndarray  # (T,) symbol ids x_t
    accuracy: float  # next-symbol accuracy on the recorded window
    losses: list[float]

    @property
    def input_symbols(self) -> list[str]:
        return [self.alphabet[i] for i in self.inputs]


def record(model: ElmanRNN, ids: np.ndarray, start: int, length: int):
    """One no-grad pass over ``ids[start:start+length+1]``: (hidden, inputs, accuracy)."""
    window = torch.as_tensor(ids[start : start + length + 1])
    with torch.no_grad():
        logp, states = model(window[:-1])
    acc = float((logp.argmax(-1) == window[1:]).float().mean())
    return states.numpy(), window[:-1].numpy(), acc


Perturbation = Callable[[torch.Tensor], tuple[torch.Tensor, dict[int, torch.Tensor]]]


@one_thread()
def fit_windows(
    model: ElmanRNN,
    ids: np.ndarray,
    iters: int,
    window: int,
    lr: float,
    rng: np.random.Generator,
    perturb: Perturbation | None = None,
    progress: str | None = None,
) -> list[float]:
    """Adam on ``iters`` random windows of L+1 symbols (full BPTT); the per-symbol losses.

    ``perturb(window_inputs) -> (inputs, hidden_overrides)`` edits what the network reads;
    the targets stay the true next symbols. ``progress`` names a progress bar.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    steps = range(iters)
    for _ in track(steps, progress) if progress else steps:
        start = int(rng.integers(0, len(ids) - window - 1))
        chunk = torch.as_tensor(ids[start : start + window + 1])
        inputs, overrides = perturb(chunk[:-1]) if perturb else (chunk[:-1], None)
        logp, _ = model(inputs, overrides=overrides)
        loss = -logp.gather(1, chunk[1:, None]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() / window)
    return losses


def train_rnn(
    symbols: Sequence[str],
    hidden: int = 12,
    iters: int = 400,
    window: int = 200,
    lr: float = 0.005,
    seed: int = 0,
    nonlinearity: str = "linear",
    record_start: int = 0,
    record_length: int | None = None,
    alphabet: Sequence[str] | None = None,
) -> TrainedRNN:
    """Train on random windows of ``symbols`` and record states on a fixed window.

    ``iters=0`` gives the untrained control (same seed, same initial weights).
    """
    enc = Encoding.of(symbols, alphabet)
    if len(enc.ids) < window + 2:
        raise InputError(
            f"the sequence has {len(enc.ids)} symbols; training windows of "
            f"{window} need at least {window + 2}"
        )
    torch.manual_seed(seed)
    model = ElmanRNN(len(enc.alphabet), hidden, nonlinearity)
    rng = np.random.default_rng(seed)
    losses = fit_windows(model, enc.ids, iters, window, lr, rng, progress="training the RNN")
    length = min(record_length or window, len(enc.ids) - record_start - 1)
    h, x, acc = record(model, enc.ids, record_start, length)
    return TrainedRNN(model, enc.alphabet, h, x, acc, losses)
