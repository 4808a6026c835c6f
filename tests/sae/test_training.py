"""SAE training: the spec's checks with known answers (section 5) and the loop's contracts.

Training runs use one thread: these models are tiny, and on a shared 2-core machine two
threads ran several times slower than one.
"""

import numpy as np
import pytest
import torch

from lucidml.errors import ConfigError, InputError, ShapeError
from lucidml.sae import training
from lucidml.sae.config import SAEConfig
from lucidml.sae.model import SAE
from lucidml.sae.training import (
    _JumpReLU,
    _Step,
    _Trainer,
    auxk_loss,
    fold_scale,
    geometric_median,
    lr_factor,
    matryoshka_loss,
    remove_parallel_grad,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def atoms_data(n=20_000, d=32, n_atoms=64, active=3, seed=0):
    """Rows that are sums of 3 of 64 random unit atoms with magnitudes U[0.5, 2.5]."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    chosen = np.argsort(rng.random((n, n_atoms)), axis=1)[:, :active]
    x = np.einsum("na,nad->nd", rng.uniform(0.5, 2.5, (n, active)), atoms[chosen])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(atoms, dtype=torch.float32)


def hierarchy_data(n=20_000, d=32, seed=0):
    """One of 8 parents (scale U[1, 2]) plus, with p = 0.7, one of its 4 children (scale
    U[0.5, 1.5]). Parents are orthonormal and children lie in their orthogonal complement,
    so a pure parent latent has cosine 0 to every child (random directions in d = 32 put
    the chance level of a max over 32 children near 0.35)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].T
    parents = basis[:8]
    children = rng.standard_normal((32, d - 8)) @ basis[8:]
    children /= np.linalg.norm(children, axis=1, keepdims=True)
    p, c = rng.integers(0, 8, n), rng.integers(0, 4, n)
    child = (rng.random(n) < 0.7) * rng.uniform(0.5, 1.5, n)
    x = rng.uniform(1, 2, (n, 1)) * parents[p] + child[:, None] * children[p * 4 + c]
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_tensor(x), as_tensor(parents), as_tensor(children)


def max_cos(directions: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Each direction's best cosine with a decoder row."""
    W = W_dec.detach()
    return (directions @ (W / W.norm(dim=1, keepdim=True)).T).max(1).values


@pytest.fixture(scope="module")
def atoms():
    return atoms_data()


@pytest.fixture(scope="module")
def batchtopk_run(atoms):
    """The spec's atom-recovery run, with 800 steps instead of 3000 (measured: 98.4% of
    atoms above 0.9, mean 0.987, inference L0 4.00, FVE 0.934; 700 steps: 96.9%)."""
    x, _ = atoms
    cfg = SAEConfig(
        kind="batchtopk",
        d_in=32,
        expansion=4,
        k=4,
        batch_size=512,
        steps=800,
        lr=3e-3,
        warmup=50,
        theta_beta=0.99,
        theta_start=0,
        device="cpu",
    )
    return train(x, cfg, progress=False)


def test_atom_recovery_batchtopk(atoms, batchtopk_run):
    _, dictionary = atoms
    sae = batchtopk_run
    assert (max_cos(dictionary, sae.W_dec) > 0.9).float().mean() >= 0.95
    assert abs(sae.validation["l0"] - 4) <= 0.5
    assert sae.validation["fve"] >= 0.85


# measured: relu 100% of atoms (mean 0.989, L0 7.5), topk 100% (0.998), matryoshka
# 96.9% (0.980, L0 4.0), jumprelu 100% (0.991, L0 3.5). The default ImageNet groups
# recover only about half on flat data (53%, the spec's 56%), so the first group gets 96
# of the 128 latents. JumpReLU's θ starts at 0.05, not 0.001: in log θ, Adam needs
# about a thousand steps at lr 5e-3 just to climb from 0.001.
@pytest.mark.parametrize(
    "settings",
    [
        dict(kind="relu", steps=400, l1_coefficient=0.2, l1_warmup=100),
        dict(kind="topk", k=3, steps=300),
        dict(kind="matryoshka", k=4, steps=600, group_fractions=[0.75, 0.25]),
        dict(
            kind="jumprelu",
            k=4,
            steps=300,
            lr=1e-2,
            jumprelu_threshold=0.05,
            jumprelu_bandwidth=0.05,
        ),
    ],
    ids=lambda s: s["kind"],
)
def test_atom_recovery_of_each_kind(atoms, settings):
    x, dictionary = atoms
    settings = {"lr": 5e-3, **settings}
    cfg = SAEConfig(
        d_in=32,
        expansion=4,
        batch_size=256,
        warmup=20,
        theta_beta=0.99,
        theta_start=0,
        device="cpu",
        **settings,
    )
    sae = train(x, cfg, progress=False)
    assert (max_cos(dictionary, sae.W_dec) > 0.9).float().mean() >= 0.9
    if cfg.kind != "relu":
        assert abs(sae.validation["l0"] - cfg.k) <= 1
    if cfg.kind == "jumprelu":
        assert sae.history[0]["l0"] > 2 * sae.validation["l0"]  # θ rose from its start
        assert (sae.threshold > 0.05).float().mean() > 0.5


def test_matryoshka_first_group_learns_parents():
    """Measured: first group 0.70 to parents, 0.21 to children (the spec's 0.70 and 0.22;
    gap 0.50, 0.44-0.60 over seeds 0-4; at lr 5e-3 seed 0 fell to 0.33). The first group
    alone reconstructs with MSE 0.68, all groups with 0.09."""
    x, parents, children = hierarchy_data()
    cfg = SAEConfig(
        kind="matryoshka",
        d_in=32,
        expansion=2,
        k=2,
        group_fractions=[8 / 64, 56 / 64],
        batch_size=256,
        steps=800,
        lr=3e-3,
        warmup=20,
        theta_beta=0.99,
        theta_start=0,
        device="cpu",
    )
    sae = train(x, cfg, progress=False)
    assert sae.group_sizes == [8, 56]
    first = sae.W_dec[:8]
    gap = (first @ parents.T).max(1).values.mean() - (first @ children.T).max(1).values.mean()
    assert gap >= 0.3
    with torch.no_grad():
        f = sae.encode(x[:2000])
        first_only = sae.b_dec + f[:, :8] @ sae.W_dec[:8]
        mse = lambda x_hat: float((x[:2000] - x_hat).pow(2).sum(1).mean())  # noqa: E731
        assert mse(first_only) > 2 * mse(sae.decode(f))


def test_matryoshka_loss_is_the_formula_by_hand():
    rng = np.random.default_rng(0)
    x, f = rng.standard_normal((2, 3)), np.abs(rng.standard_normal((2, 4)))
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    first = ((x - (b + f[:, :1] @ W[:1])) ** 2).sum(1).mean()
    full = ((x - (b + f @ W)) ** 2).sum(1).mean()
    t = [torch.tensor(a) for a in (x, f, W, b)]
    loss, x_hat = matryoshka_loss(*t, group_sizes=[1, 3])
    assert float(loss) == pytest.approx((first + full) / 2)
    np.testing.assert_allclose(x_hat.numpy(), b + f @ W)
    legacy, _ = matryoshka_loss(*t, group_sizes=[1, 3], legacy_scale=True)
    assert float(legacy) == pytest.approx((first + full) / 4)


def test_short_run_is_calibrated_and_the_reference_keeps_every_activation(atoms):
    x, _ = atoms
    cfg = SAEConfig(
        kind="batchtopk",
        d_in=32,
        expansion=4,
        k=4,
        batch_size=256,
        steps=100,
        lr=5e-3,
        warmup=20,
        device="cpu",
    )
    assert cfg.steps < cfg.theta_start  # the θ EMA never starts
    calibrated = train(x, cfg, progress=False)
    reference = train(x, cfg.updated(calibrate_threshold=False), progress=False)
    assert calibrated.validation["l0"] <= 1.5 * cfg.k
    assert float(reference.threshold) == 0
    assert reference.validation["l0"] > 3 * cfg.k  # measured: 4.0 calibrated, 39.6 not


def test_decoder_rows_stay_unit_and_get_no_parallel_gradient(atoms, batchtopk_run):
    norms = batchtopk_run.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)

    W, G = torch.nn.functional.normalize(torch.randn(10, 5), dim=1), torch.randn(10, 5)
    kept = remove_parallel_grad(W, G)
    assert (kept * W).sum(1).abs().max() < 1e-6
    removed = G - kept  # all of it along the rows
    assert torch.allclose(removed, (removed * W).sum(1, keepdim=True) * W, atol=1e-6)

    x, _ = atoms
    cfg = SAEConfig(kind="topk", d_in=32, expansion=2, k=3, steps=10, warmup=0, device="cpu")
    trainer = _Trainer(SAE(cfg), cfg)
    before = trainer.sae.W_dec.detach().clone()
    trainer.step(x[:64], 0)
    assert (trainer.sae.W_dec.grad * before).sum(1).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_folded_scale_reproduces_the_scaled_model_on_raw_inputs(kind):
    sae = SAE(SAEConfig(kind=kind, d_in=8, expansion=4, k=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_dec.normal_()
        if sae.threshold is not None:
            sae.threshold.fill_(0.1)
    x, s = 5 * torch.randn(50, 8), 3.7
    with torch.no_grad():
        expected = s * sae(x / s)
        folded = fold_scale(sae, s)
        assert torch.allclose(folded(x), expected, atol=1e-5)
    assert folded.scale == s


def test_training_folds_the_scale_and_saves_it(atoms, tmp_path):
    x, _ = atoms
    x = 10 * x[:3000]
    cfg = SAEConfig(kind="topk", d_in=32, expansion=2, k=3, steps=50, batch_size=256, device="cpu")
    sae = train(x, cfg, progress=False)
    batches = training._Batches(training.split_rows(3000, 0.05, 0)[0], 256, 0)
    first = x[np.concatenate([batches(i) for i in range(batches.per_epoch)])]  # < 100 batches
    s = float(first.pow(2).sum(1).mean().sqrt())
    assert sae.scale == pytest.approx(s, rel=1e-5)
    # held-out MSE on raw rows is the training MSE (in units of x / s) times s²
    assert 0.5 < sae.validation["mse"] / (sae.history[-1]["mse"] * s**2) < 2
    assert SAE.load(sae.save(tmp_path / "sae")).scale == sae.scale


def test_geometric_median_ignores_far_outliers():
    x = torch.cat([torch.zeros(95, 4), torch.full((5, 4), 100.0)])
    assert x.mean(0)[0] == 5
    assert geometric_median(x).norm() < 1e-3


def test_auxk_sends_no_gradient_to_live_latents():
    sae = SAE(SAEConfig(kind="topk", d_in=8, expansion=4, k=2))
    x = torch.randn(16, 8)
    u = sae.pre_activations(x)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::3] = True
    e = (x - sae(x)).detach()
    loss = auxk_loss(e, torch.relu(u), sae.W_dec, dead, k_max=4)
    assert loss > 0
    loss.backward()
    assert sae.W_enc.grad[:, ~dead].abs().max() == 0
    assert sae.b_enc.grad[~dead].abs().max() == 0
    assert sae.W_dec.grad[~dead].abs().max() == 0
    assert sae.W_enc.grad[:, dead].abs().max() > 0
    assert auxk_loss(e, torch.relu(u), sae.W_dec, torch.zeros(32, dtype=torch.bool), 4) == 0
    assert auxk_loss(e[:1], torch.relu(u[:1]), sae.W_dec, dead, 4) == 0  # no spread: NaN -> 0


def test_latents_count_rows_since_they_last_fired():
    cfg = SAEConfig(kind="topk", d_in=8, expansion=4, k=2, dead_tokens=100, device="cpu")
    trainer = _Trainer(SAE(cfg), cfg)
    trainer.since_fired.fill_(90)
    x = torch.randn(16, 8)
    _, _, f = trainer.loss(x, 0)
    fired = (f > 0).any(0)
    assert (trainer.since_fired[fired] == 0).all()
    assert (trainer.since_fired[~fired] == 106).all()  # dead from now on: AuxK applies


def test_jumprelu_pseudo_gradients_are_the_rectangle_kernel():
    u = torch.tensor([[0.10, 0.52, 0.49, 0.90], [0.505, 0.2, 0.7, 0.51]])
    theta = torch.full((4,), 0.5, requires_grad=True)
    eps = 0.05  # u within eps/2 of θ gets the kernel
    near = ((u - 0.5).abs() < eps / 2).double()
    _Step.apply(u, theta, eps).sum().backward()
    assert torch.allclose(theta.grad.double(), -near.sum(0) / eps)
    theta.grad = None
    f = _JumpReLU.apply(u, theta, eps)
    assert torch.equal(f, u * (u > 0.5))
    f.sum().backward()
    assert torch.allclose(theta.grad.double(), -(0.5 / eps) * near.sum(0))


def test_history_and_validation(batchtopk_run):
    sae = batchtopk_run
    assert len(sae.history) == 100 and sae.history[-1]["step"] == 800
    assert set(sae.history[0]) == {"step", "loss", "mse", "l0", "dead_fraction", "lr"}
    assert sae.history[-1]["l0"] == pytest.approx(4, abs=1e-6)  # BatchTopK: k per row on average
    assert set(sae.validation) == {"mse", "fve", "l0", "dead_fraction", "n"}
    assert sae.validation["n"] == 1000  # round(0.05 * 20000) held-out rows


def _stop_after(n_steps):
    """A ``track`` that kills the run (KeyboardInterrupt) after ``n_steps`` steps."""

    def track(items, description, total=None):
        for i, item in enumerate(items):
            if i == n_steps:
                raise KeyboardInterrupt
            yield item

    return track


@pytest.mark.parametrize("kind", ["batchtopk", "jumprelu"])
def test_resume_gives_the_uninterrupted_weights(kind, tmp_path, monkeypatch):
    x, _ = atoms_data(n=2000, d=8, n_atoms=16, active=2)
    cfg = SAEConfig(
        kind=kind,
        d_in=8,
        expansion=4,
        k=2,
        steps=60,
        batch_size=64,
        checkpoint_every=20,
        warmup=10,
        decay_start=30,
        theta_start=10,
        dead_tokens=500,
        lr=3e-3,
        device="cpu",
    )
    whole = train(x, cfg, progress=False)
    folder = tmp_path / "checkpoint"
    with monkeypatch.context() as m:
        m.setattr(training, "track", _stop_after(45))
        with pytest.raises(KeyboardInterrupt):
            train(x, cfg, checkpoint_dir=folder)
    assert training.read_json(folder / "state.json")["step"] == 40
    resumed = train(x, cfg, checkpoint_dir=folder, resume=True, progress=False)
    for name, t in whole.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], t, atol=1e-6), name
    assert resumed.history == whole.history
    assert resumed.validation == whole.validation

    with pytest.raises(ConfigError, match="config changed.*lr"):
        train(x, cfg.updated(lr=1e-3), checkpoint_dir=folder, resume=True)
    with pytest.raises(ConfigError, match="training data changed"):
        train(x + 1, cfg, checkpoint_dir=folder, resume=True)
    with pytest.raises(InputError, match="resume needs checkpoint_dir"):
        train(x, cfg, resume=True)


def test_schedule_is_validated_and_linear():
    with pytest.raises(ConfigError, match="decay_start"):
        SAEConfig.from_dict({"d_in": 8, "steps": 100, "decay_start": 100})
    assert lr_factor(0, 10, None, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, None, 100) == lr_factor(50, 10, None, 100) == 1
    assert lr_factor(60, 10, 60, 100) == 1
    assert lr_factor(80, 10, 60, 100) == pytest.approx(0.5)
    assert lr_factor(99, 10, 60, 100) == pytest.approx(1 / 40)
    assert lr_factor(0, 0, None, 100) == 1


class _Store:
    """What the activation store offers training: len, d and rows(indices) in order."""

    def __init__(self, x):
        self._x = x.numpy().copy()
        self.d = x.shape[1]

    def __len__(self):
        return len(self._x)

    def rows(self, indices):
        return torch.from_numpy(self._x[np.asarray(indices)])


def test_a_store_trains_like_the_tensor(atoms):
    x, _ = atoms
    cfg = SAEConfig(
        kind="matryoshka",
        d_in=32,
        expansion=2,
        k=3,
        steps=30,
        batch_size=128,
        group_fractions=[0.25, 0.75],
        theta_start=10,
        device="cpu",
    )
    a = train(x[:4000], cfg, progress=False)
    b = train(_Store(x[:4000]), cfg, progress=False)
    for name, t in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], t), name


def test_bad_data_is_one_sentence(atoms):
    x, _ = atoms
    cfg = SAEConfig(kind="topk", d_in=32, expansion=2, k=3, steps=5, device="cpu")
    with pytest.raises(ShapeError, match="width 16 but the config says d_in = 32"):
        train(x[:100, :16], cfg, progress=False)
    bad = x[:100].clone()
    bad[7, 3] = float("nan")
    with pytest.raises(InputError, match="row 7 holds NaN"):
        train(bad, cfg.updated(val_fraction=0.0), progress=False)
    small = train(x[:10], cfg, progress=False)  # fewer rows than one batch: batch = rows
    assert small.validation["n"] == round(0.05 * 10)
