"""Training every SAE kind of the spec (sections 2.2-2.4) in one loop.

``data`` is an (N, d) tensor or anything with ``len``, ``.d`` and ``.rows(indices)`` (the
activation store). A tensor is wrapped in the same API, so both read the same rows in the
same order and, with one seed, train to the same weights.

Everything random is a pure function of ``cfg.seed``: the held-out rows, the initial
weights, and the batch of each step (epoch e reads a permutation drawn from
``default_rng([seed, e])``). A checkpoint therefore needs no RNG state, only the step, and
a resumed run repeats the uninterrupted one exactly.

Training runs on x / s with s = sqrt(mean ||x||²); at the end s is folded into the biases
and thresholds, so the returned SAE takes raw inputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from lucidml.core.config import resolve_device
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import digest, first_difference, read_json, to_json
from lucidml.errors import ConfigError, InputError, ShapeError
from lucidml.sae.config import SAEConfig
from lucidml.sae.model import SAE, batch_topk, topk_per_row, unit_rows, write_folder

log = get_logger("sae")
STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
HASH_ROWS = 65_536  # rows read at a time to fingerprint data that has no fingerprint()


# --- data --------------------------------------------------------------------------------


class _TensorRows:
    """An (N, d) tensor with the activation store's read API."""

    def __init__(self, x: torch.Tensor):
        if x.ndim != 2:
            raise ShapeError(f"training data must be a 2-D (rows, d) tensor, got {tuple(x.shape)}")
        self.x = x.detach().float()
        self.d = x.shape[1]

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(indices, device=self.x.device)]


def data_fingerprint(data) -> str:
    """What identifies the training rows for a resume: ``data.fingerprint()`` where there
    is one (the store's), else a digest of N, d and the bytes of every row."""
    if hasattr(data, "fingerprint"):
        return data.fingerprint()
    n = len(data)
    chunks = [
        digest(data.rows(np.arange(i, min(i + HASH_ROWS, n))).float())
        for i in range(0, n, HASH_ROWS)
    ]
    return digest(n, data.d, chunks)


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) row indices, sorted: a seeded choice of round(val_fraction·n)
    held-out rows, the rest for training."""
    held_out = np.sort(
        np.random.default_rng(seed).choice(n, round(val_fraction * n), replace=False)
    )
    return np.setdiff1d(np.arange(n), held_out), held_out


class _Batches:
    """The rows of each step's batch: epoch e is a permutation of the training rows from
    ``default_rng([seed, e])`` cut into consecutive batches (a last partial one dropped)."""

    def __init__(self, train_rows: np.ndarray, batch: int, seed: int):
        self.rows, self.batch, self.seed = train_rows, batch, seed
        self.per_epoch = len(train_rows) // batch
        self._epoch, self._order = -1, train_rows

    def __call__(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._epoch, self._order = epoch, self.rows[permutation]
        return self._order[position * self.batch : (position + 1) * self.batch]


def _load(data, indices: np.ndarray, device: str) -> torch.Tensor:
    x = data.rows(indices).to(device, torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    if not finite.all():
        bad = indices[int(torch.nonzero(~finite)[0, 0])]
        raise InputError(f"training data row {bad} holds NaN or infinite values")
    return x


def _chunks(data, indices: np.ndarray, size: int, device: str) -> Iterator[torch.Tensor]:
    for i in range(0, len(indices), size):
        yield _load(data, indices[i : i + size], device)


# --- the math ------------------------------------------------------------------------------


def geometric_median(x: torch.Tensor, iters: int = 100, eps: float = 1e-8) -> torch.Tensor:
    """The point minimising the summed distance to the rows of ``x`` (Weiszfeld's
    iteration from the mean). It initialises b_dec: unlike the mean, a few far-away rows
    cannot pull it off the bulk of the data."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(eps)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() <= eps:
            return y_next
        y = y_next
    return y


def input_scale(batches: Iterable[torch.Tensor]) -> float:
    """s = sqrt(mean ||x||²) over the rows of ``batches`` (1 for all-zero data): training
    on x / s makes the loss scale and learning rate independent of the layer's norm."""
    total, n = 0.0, 0
    for x in batches:
        total += float(x.double().pow(2).sum())
        n += len(x)
    s = math.sqrt(total / n)
    return s if s > 0 else 1.0


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """mean_n ||x - x̂||² (summed over dimensions, averaged over the batch)."""
    return (x - x_hat).pow(2).sum(-1).mean()


def matryoshka_loss(
    x: torch.Tensor,
    f: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    group_sizes: list[int],
    legacy_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_rec, full x̂): L_rec = Σ_g (1/G) mean_n ||x - x̂_{≤g}||² with x̂_{≤g} = b_dec +
    Σ_{h≤g} f_h W_dec,h, so every prefix of groups must reconstruct x on its own.
    ``legacy_scale`` adds the reference's extra 1/G (it averaged after weighting)."""
    x_hat, total, start = b_dec, 0.0, 0
    for size in group_sizes:
        x_hat = x_hat + f[..., start : start + size] @ W_dec[start : start + size]
        total = total + squared_error(x, x_hat)
        start += size
    G = len(group_sizes)
    loss = total / G
    return (loss / G if legacy_scale else loss), x_hat


def auxk_loss(
    e: torch.Tensor, a: torch.Tensor, W_dec: torch.Tensor, dead: torch.Tensor, k_max: int
) -> torch.Tensor:
    """AuxK: let the dead latents reconstruct the residual e = x - x̂ (detached). Each row
    keeps its top k_aux = min(k_max, #dead) activations ``a`` = ReLU(u) among dead latents,
    ê = f_aux W_dec (no bias), L = mean||e - ê||² / mean||e - ē||². Live latents enter as
    constants, so they get no gradient; 0 without dead latents or with a constant e."""
    k_aux = min(k_max, int(dead.sum()))
    baseline = (e - e.mean(0)).pow(2).sum(-1).mean()
    if k_aux == 0 or not baseline > 0:
        return e.new_zeros(())
    f_aux = topk_per_row(torch.where(dead, a, torch.zeros_like(a)), k_aux)
    return squared_error(e, f_aux @ W_dec) / baseline


def _rectangle(z: torch.Tensor) -> torch.Tensor:
    return (z.abs() < 0.5).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = u·H(u - θ). Backward: ∂f/∂u = H(u - θ) and the straight-through pseudo-gradient
    ∂f/∂θ = -(θ/ε)·K((u - θ)/ε) with K the rectangle kernel (Rajamanoharan et al., 2024)."""

    @staticmethod
    def forward(ctx, u, theta, eps):
        ctx.save_for_backward(u, theta)
        ctx.eps = eps
        return u * (u > theta)

    @staticmethod
    def backward(ctx, grad):
        u, theta = ctx.saved_tensors
        kernel = _rectangle((u - theta) / ctx.eps)
        return grad * (u > theta), (grad * -(theta / ctx.eps) * kernel).sum(0), None


class _Step(torch.autograd.Function):
    """H(u - θ), the L0 count. Backward: no gradient to u, ∂H/∂θ = -(1/ε)·K((u - θ)/ε)."""

    @staticmethod
    def forward(ctx, u, theta, eps):
        ctx.save_for_backward(u, theta)
        ctx.eps = eps
        return (u > theta).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, theta = ctx.saved_tensors
        kernel = _rectangle((u - theta) / ctx.eps)
        return None, (grad * -kernel / ctx.eps).sum(0), None


def remove_parallel_grad(W: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` minus, per row, its component along that row of W: a step then moves rows
    (to first order) along the unit sphere, and the renormalisation after it only
    corrects the second-order drift."""
    along = (grad * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True)
    return grad - along * W


def lr_factor(step: int, warmup: int, decay_start: int | None, steps: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warm-up over ``warmup``
    steps, then, from ``decay_start``, linear decay to 0 at ``steps``. A pure function of
    the step (what LambdaLR would compute), so a resume needs no scheduler state."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay_start is not None and step >= decay_start:
        factor *= (steps - step) / (steps - decay_start)
    return factor


def calibrated_threshold(activations: Iterable[torch.Tensor], keep: int) -> float:
    """The smallest of the ``keep`` largest values over all chunks of ReLU(u): with keep =
    k·n for n rows, the θ at which inference keeps about k latents per row. A running top
    list, so the rows stream."""
    top = None
    for a in activations:
        values = a.reshape(-1)
        if top is not None:
            values = torch.cat([top, values])
        top = values.topk(min(keep, values.numel())).values
    return float(top.min())


def fold_scale(sae: SAE, s: float) -> SAE:
    """Make an SAE trained on x / s take raw x: b_enc, b_dec and θ times s (latents then
    scale by s and x̂ by s; W_enc and W_dec are unchanged)."""
    with torch.no_grad():
        sae.b_enc.mul_(s)
        sae.b_dec.mul_(s)
        if sae.threshold is not None:
            sae.threshold.mul_(s)
    sae.scale = s
    return sae


@torch.no_grad()
def held_out_metrics(sae: SAE, chunks: Iterable[torch.Tensor]) -> dict:
    """MSE = mean_n||x - x̂||², FVE = 1 - Σ_j Var(x_j - x̂_j) / Σ_j Var(x_j), inference L0,
    the share of latents that never fire, and n (NaN metrics without rows)."""
    n, sq, l0 = 0, 0.0, 0.0
    sums = torch.zeros(4, sae.d_in, dtype=torch.float64, device=sae.W_dec.device)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=sae.W_dec.device)
    for x in chunks:
        f = sae.encode(x)
        r = (x - sae.decode(f)).double()
        x = x.double()
        sums += torch.stack([x.sum(0), x.pow(2).sum(0), r.sum(0), r.pow(2).sum(0)])
        sq += float(r.pow(2).sum())
        l0 += float((f > 0).sum())
        fired |= (f > 0).any(0)
        n += len(x)
    if n == 0:
        nan = float("nan")
        return {"mse": nan, "fve": nan, "l0": nan, "dead_fraction": nan, "n": 0}
    var_x = (sums[1] / n - (sums[0] / n).pow(2)).sum()
    var_r = (sums[3] / n - (sums[2] / n).pow(2)).sum()
    fve = float(1 - var_r / var_x) if var_x > 0 else float("nan")
    return {
        "mse": sq / n,
        "fve": fve,
        "l0": l0 / n,
        "dead_fraction": float((~fired).float().mean()),
        "n": n,
    }


# --- the training run ----------------------------------------------------------------------


class _Trainer:
    """The optimiser and the running state of one run: the rows since each latent last
    fired (AuxK, dead fraction), whether the θ EMA has started, and the history."""

    def __init__(self, sae: SAE, cfg: SAEConfig):
        self.sae, self.cfg = sae, cfg
        jumprelu = cfg.kind == "jumprelu"
        # JumpReLU learns log θ (so θ stays positive); sae.threshold mirrors exp(log θ)
        self.log_theta = torch.nn.Parameter(sae.threshold.log()) if jumprelu else None
        self.params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
        self.params += [self.log_theta] if jumprelu else []
        betas = (0.0, 0.999) if jumprelu else (0.9, 0.999)
        self.base_lr = cfg.default_lr()
        fused = sae.W_dec.device.type in ("cpu", "cuda")  # one kernel: twice as fast on CPU
        self.opt = torch.optim.Adam(self.params, lr=self.base_lr, betas=betas, fused=fused)
        self.since_fired = torch.zeros(sae.n_latents, dtype=torch.int64, device=sae.W_dec.device)
        self.theta_started = False
        self.history: list[dict] = []

    def codes(self, u: torch.Tensor) -> torch.Tensor:
        """Training codes: BatchTopK over the batch, JumpReLU with pseudo-gradients."""
        kind, k = self.cfg.kind, self.cfg.k
        if kind == "jumprelu":
            return _JumpReLU.apply(u, self.log_theta.exp(), self.cfg.jumprelu_bandwidth)
        a = torch.relu(u)
        if kind == "topk":
            return topk_per_row(a, k)
        if kind in ("batchtopk", "matryoshka"):
            return batch_topk(a, k)
        return a

    def loss(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, reconstruction MSE, codes) of one batch; counts which latents fired."""
        cfg, sae = self.cfg, self.sae
        u = sae.pre_activations(x)
        f = self.codes(u)
        fired = (f.detach() > 0).any(0)
        self.since_fired = torch.where(fired, 0, self.since_fired + len(x))
        if cfg.kind == "matryoshka":
            rec, x_hat = matryoshka_loss(
                x, f, sae.W_dec, sae.b_dec, sae.group_sizes, cfg.legacy_scale
            )
        else:
            x_hat = sae.decode(f)
            rec = squared_error(x, x_hat)
        if cfg.kind == "relu":
            warm = min(1.0, step / cfg.l1_warmup) if cfg.l1_warmup else 1.0
            penalty = cfg.l1_coefficient * warm * f.sum(-1).mean()
        elif cfg.kind == "jumprelu":
            theta = self.log_theta.exp()
            l0 = _Step.apply(u, theta, cfg.jumprelu_bandwidth).sum(-1).mean()
            penalty = cfg.jumprelu_sparsity * (l0 / cfg.k - 1) ** 2
        else:
            dead = self.since_fired >= cfg.dead_tokens
            aux = auxk_loss((x - x_hat).detach(), torch.relu(u), sae.W_dec, dead, sae.d_in // 2)
            penalty = cfg.auxk_alpha * aux
        return rec + penalty, rec, f

    def step(self, x: torch.Tensor, step: int) -> None:
        cfg, sae = self.cfg, self.sae
        lr = self.base_lr * lr_factor(step, cfg.warmup, cfg.decay_start, cfg.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss, rec, f = self.loss(x, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.W_dec.grad.copy_(remove_parallel_grad(sae.W_dec.detach(), sae.W_dec.grad))
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            sae.W_dec.copy_(unit_rows(sae.W_dec))
            if self.log_theta is not None:
                sae.threshold.copy_(self.log_theta.exp())
            if cfg.kind in ("batchtopk", "matryoshka") and step >= cfg.theta_start:
                self._update_theta(f.detach())
        if (step + 1) % max(1, cfg.steps // 100) == 0:
            self.history.append(
                {
                    "step": step + 1,
                    "loss": float(loss.detach()),
                    "mse": float(rec.detach()),
                    "l0": float((f > 0).sum(-1).float().mean()),
                    "dead_fraction": float((self.since_fired >= cfg.dead_tokens).float().mean()),
                    "lr": lr,
                }
            )

    def _update_theta(self, f: torch.Tensor) -> None:
        """θ ← EMA of the smallest kept positive activation (the first update sets it)."""
        smallest = torch.where(f > 0, f, torch.inf).min()
        if smallest.isinf():
            return
        if self.theta_started:
            beta = self.cfg.theta_beta
            smallest = beta * self.sae.threshold + (1 - beta) * smallest
        self.sae.threshold.copy_(smallest)
        self.theta_started = True

    # --- checkpoints -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"sae.{name}": t for name, t in self.sae.state_dict().items()}
        tensors["since_fired"] = self.since_fired
        if self.log_theta is not None:
            tensors["log_threshold"] = self.log_theta
        for i, state in self.opt.state_dict()["state"].items():
            tensors.update({f"adam.{i}.{name}": t for name, t in state.items()})
        return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        needed = [f"sae.{name}" for name in self.sae.state_dict()] + ["since_fired"]
        needed += ["log_threshold"] if self.log_theta is not None else []
        missing = [name for name in needed if name not in tensors]
        if missing:
            raise InputError(f"the checkpoint {path} holds no tensor {missing[0]}")
        self.sae.load_state_dict({n[4:]: t for n, t in tensors.items() if n.startswith("sae.")})
        with torch.no_grad():
            self.since_fired.copy_(tensors["since_fired"])
            if self.log_theta is not None:
                self.log_theta.copy_(tensors["log_threshold"])
        state: dict[int, dict] = defaultdict(dict)
        for name, t in tensors.items():
            if name.startswith("adam."):
                _, i, key = name.split(".", 2)
                state[int(i)][key] = t
        groups = self.opt.state_dict()["param_groups"]
        self.opt.load_state_dict({"state": dict(state), "param_groups": groups})


def _run_identity(cfg: SAEConfig, data) -> dict:
    """What a checkpoint must match to be resumed: the config (its device and checkpoint
    interval aside, which do not change the result) and the data."""
    config = cfg.model_dump(mode="json", exclude={"device", "checkpoint_every"})
    fingerprint = data_fingerprint(data)
    return {"key": digest(config, fingerprint), "config": config, "data": fingerprint}


def _save_checkpoint(folder: Path, trainer: _Trainer, step: int, scale: float, identity: dict):
    from safetensors.torch import save as safetensors_bytes

    meta = {
        "step": step,
        "scale": scale,
        "theta_started": trainer.theta_started,
        "history": trainer.history,
        **identity,
    }
    files = {
        STATE_TENSORS: safetensors_bytes(trainer.state_tensors()),
        STATE_JSON: (to_json(meta) + "\n").encode(),
    }
    write_folder(folder, files)


def _restore(folder: Path, trainer: _Trainer, identity: dict) -> tuple[int, float]:
    """Load a checkpoint into ``trainer``: (step to continue from, scale). Refused with one
    sentence if it was made with another config or other data."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_json(folder / STATE_JSON)
    if meta.get("key") != identity["key"]:
        stored = meta.get("config") or {}
        if stored != identity["config"]:
            field, old, new = first_difference(stored, identity["config"])
            raise ConfigError(
                f"cannot resume from {folder}: the config changed since its checkpoint "
                f"({field} was {old!r}, now {new!r}); train without resume to start over"
            )
        raise ConfigError(
            f"cannot resume from {folder}: the training data changed since its checkpoint; "
            "train without resume to start over"
        )
    try:
        tensors = load_file(folder / STATE_TENSORS)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"the checkpoint {folder / STATE_TENSORS} is unreadable ({exc})") from None
    trainer.load_state_tensors(tensors, folder / STATE_TENSORS)
    trainer.theta_started = bool(meta["theta_started"])
    trainer.history = list(meta["history"])
    return int(meta["step"]), float(meta["scale"])


@torch.no_grad()
def _set_inference_threshold(
    trainer: _Trainer, chunks: Iterable[torch.Tensor], n_rows: int, scale: float
) -> None:
    """BatchTopK's inference θ, in units of x / s: calibrated on the ``n_rows`` rows of
    ``chunks`` (held-out rows, else the last batch) so that inference keeps k latents per
    row, or else the EMA. An EMA that never started leaves θ = 0, which keeps every
    positive activation: what the reference does (θ = -1) when a run stops before
    theta_start."""
    sae, cfg = trainer.sae, trainer.cfg
    if cfg.calibrate_threshold:
        acts = (torch.relu(sae.pre_activations(x / scale)) for x in chunks)
        sae.threshold.fill_(calibrated_threshold(acts, cfg.k * n_rows))
    elif not trainer.theta_started:
        log.warning(
            "the threshold EMA never started (steps %d <= theta_start %d): inference keeps "
            "every positive activation, the reference's failure mode",
            cfg.steps,
            cfg.theta_start,
        )


@torch.no_grad()
def _initialise(sae: SAE, data, batches: _Batches, device: str) -> float:
    """Start a run: the scale s from the first batches of epoch 0 (1 without
    ``normalize``), and b_dec at the geometric median of the first batch, in units of x / s."""
    cfg, scale = sae.cfg, 1.0
    if cfg.normalize:
        n_scale = min(cfg.scale_batches, batches.per_epoch)
        scale = input_scale(_load(data, batches(i), device) for i in range(n_scale))
    sae.b_dec.copy_(geometric_median(_load(data, batches(0), device) / scale))
    return scale


def as_sae_config(cfg: SAEConfig, d: int) -> SAEConfig:
    """``cfg`` as a plain SAEConfig (a job config's extra fields dropped) with d_in = d."""
    fields = cfg.model_dump(include=set(SAEConfig.model_fields))
    if fields["d_in"] is None:
        fields["d_in"] = d
    elif fields["d_in"] != d:
        raise ShapeError(f"the training rows have width {d} but the config says d_in = {cfg.d_in}")
    return SAEConfig.from_dict(fields)


def train(
    data,
    cfg: SAEConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SAE:
    """Train an SAE of kind ``cfg.kind`` on ``data`` and return it in input units, with
    ``history`` (every steps // 100 steps) and ``validation`` (held-out rows).

    With ``checkpoint_dir`` (a folder of its own, replaced whole at each save) the state
    is saved every ``cfg.checkpoint_every`` steps and at the end; ``resume`` continues
    from it and ends with the weights an uninterrupted run would have."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        data = _TensorRows(data)
    if not all(hasattr(data, a) for a in ("__len__", "d", "rows")):
        raise InputError("training data must be an (N, d) tensor or have len(), .d and .rows()")
    if resume and checkpoint_dir is None:
        raise InputError("resume needs checkpoint_dir, the folder of the run's checkpoints")
    cfg = as_sae_config(cfg, data.d)
    train_rows, held_out = split_rows(len(data), cfg.val_fraction, cfg.seed)
    if len(train_rows) == 0:
        raise InputError(
            f"{len(data)} rows leave none for training at val_fraction {cfg.val_fraction}"
        )
    batches = _Batches(train_rows, min(cfg.batch_size, len(train_rows)), cfg.seed)
    device = resolve_device(cfg.device)
    trainer = _Trainer(SAE(cfg).to(device), cfg)
    sae = trainer.sae
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    identity = _run_identity(cfg, data) if folder is not None else {}
    if resume and folder is not None and (folder / STATE_JSON).is_file():
        start, scale = _restore(folder, trainer, identity)
        log.info("resuming from step %d of %d (%s)", start, cfg.steps, folder)
    else:
        if resume:
            log.info("no checkpoint in %s: training from the start", folder)
        start, scale = 0, _initialise(sae, data, batches, device)
    what = f"{cfg.kind} SAE with {sae.n_latents} latents"
    log.info(
        "training a %s: %d steps of %d rows, scale %.4g", what, cfg.steps, batches.batch, scale
    )
    steps = range(start, cfg.steps)
    for step in track(steps, "training SAE", total=len(steps)) if progress else steps:
        trainer.step(_load(data, batches(step), device) / scale, step)
        done = step + 1
        if folder is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save_checkpoint(folder, trainer, done, scale, identity)

    if cfg.kind in ("batchtopk", "matryoshka"):
        rows = held_out if len(held_out) else batches(cfg.steps - 1)
        chunks = _chunks(data, rows, batches.batch, device)
        _set_inference_threshold(trainer, chunks, len(rows), scale)
    fold_scale(sae, scale)
    sae.history = trainer.history
    sae.validation = held_out_metrics(sae, _chunks(data, held_out, batches.batch, device))
    v = sae.validation
    log.info(
        "held-out rows (n = %d): MSE %.4g, FVE %.3f, L0 %.2f", v["n"], v["mse"], v["fve"], v["l0"]
    )
    return sae
