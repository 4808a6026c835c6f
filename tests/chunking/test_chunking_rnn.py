import numpy as np
import pytest
import torch

from lucidml.chunking import dsc, perturb, rnn, sequences
from lucidml.chunking.api import rnn_experiment
from lucidml.chunking.config import RNNConfig


def test_linear_cell_matches_the_recurrence_by_hand():
    torch.manual_seed(0)
    m = rnn.ElmanRNN(n_symbols=3, hidden_size=2)
    W, b = m.update.weight.detach(), m.update.bias.detach()
    Wo, bo = m.readout.weight.detach(), m.readout.bias.detach()
    ids = torch.tensor([2, 0, 1])
    logp, H = m(ids)
    h = torch.zeros(2)
    for t, s in enumerate(ids):
        z = torch.cat([torch.eye(3)[s], h])
        torch.testing.assert_close(logp[t], torch.log_softmax(Wo @ z + bo, -1))
        h = W @ z + b  # no nonlinearity
        torch.testing.assert_close(H[t], h)


def test_override_replaces_the_state_read_at_that_step():
    torch.manual_seed(0)
    m = rnn.ElmanRNN(n_symbols=3, hidden_size=4, nonlinearity="tanh")
    ids = torch.tensor([0, 1, 2])
    h_new = torch.ones(4)
    logp, H = m(ids, overrides={2: h_new})
    _, H_plain = m(ids)
    torch.testing.assert_close(H[:2], H_plain[:2])
    assert m.step_from(h_new, 2) == int(logp[2].argmax())


@pytest.fixture(scope="module")
def one_chunk():
    return rnn_experiment(RNNConfig(regime="one_chunk"))


def test_one_chunk_rnn_learns_and_its_states_chunk(one_chunk):
    r = one_chunk.results
    assert r["accuracy"] >= 0.85
    assert r["decode_accuracy"] >= 0.85
    assert r["parse_length"] < r["sequence_length"]
    assert r["n_states_untrained"] < r["n_states"]
    assert r["untrained_accuracy"] < 0.5


def test_transport_of_state_a_then_b_predicts_c(one_chunk):
    assert one_chunk.results["transport"]["predicted"] == "C"
    assert perturb.transport_prediction(one_chunk.trained, one_chunk.disc, "A", "B") == "C"


def test_graft_borrows_a_learnt_transition_and_a_disabled_graft_changes_nothing():
    seq = sequences.several_chunks(n_words=300, seed=0)
    base = rnn.train_rnn(seq.symbols, iters=120, window=400, seed=0)
    disc = dsc.discretize(base.hidden)
    transfer = sequences.several_chunks(n_words=100, chunks=sequences.TRANSFER_CHUNKS, seed=1)
    kw = dict(iters=20, window=100, repeats=2, seed=0)
    off = perturb.graft_learning_curves(base, disc, transfer.symbols, enabled=False, **kw)
    np.testing.assert_array_equal(off.control, off.graft)
    on = perturb.graft_learning_curves(base, disc, transfer.symbols, **kw)
    np.testing.assert_array_equal(on.control, off.control)  # paired windows, same control
    # at D the graft arm reads state(J) + K, so it already predicts L, M, N: a lower start
    assert on.graft[:, :5].mean() < on.control[:, :5].mean()


def _torch_loop(drive, w_h, h0, overrides, tanh):
    """The recurrence as plain torch operations, for autograd to differentiate."""
    h, prev, states = h0, [], []
    for t in range(len(drive)):
        h = overrides.get(t, h)
        prev.append(h)
        h = drive[t] + w_h @ h
        h = torch.tanh(h) if tanh else h
        states.append(h)
    return torch.stack(states), torch.stack(prev)


@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("overrides", [{}, {3: 0.5}, {0: -1.0, 5: 2.0}])
def test_hand_written_backprop_through_time_matches_autograd(tanh, overrides):
    g = torch.Generator().manual_seed(0)
    drive = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w_h = (0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    h0 = torch.randn(4, generator=g, dtype=torch.float64)
    values = {t: torch.full((4,), v, dtype=torch.float64) for t, v in overrides.items()}
    # random weights on both outputs, so every gradient path is exercised
    a, b = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g)

    def loss(fn):
        states, prev = fn(drive, w_h, h0, values, tanh)
        return (a * states).sum() + (b.double() * prev**2).sum(), states, prev

    mine, s1, p1 = loss(rnn._Recurrence.apply)
    ref, s2, p2 = loss(_torch_loop)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(p1, p2)
    got = torch.autograd.grad(mine, [drive, w_h])
    want = torch.autograd.grad(ref, [drive, w_h])
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda d, w: rnn._Recurrence.apply(d, w, h0, values, tanh), (drive, w_h)
    )


def test_one_thread_holds_inside_the_block_and_restores_the_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with rnn.one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
