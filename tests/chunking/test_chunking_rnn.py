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
