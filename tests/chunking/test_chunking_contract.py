"""The names and shapes the acceptance checks call, with torch and numpy inputs."""

import numpy as np
import torch

from lucidml.chunking import dsc, pa, ucd


def test_contract_shapes_with_torch_inputs():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(300, 8, generator=g)
    pos = torch.arange(0, 300, 10)
    H[pos] = torch.linspace(-1, 1, 8) + 0.01 * torch.randn(len(pos), 8, generator=g)

    disc = dsc.discretize(H, n_bins=5)
    assert disc.codes.shape == (300,) and np.issubdtype(disc.codes.dtype, np.integer)
    assert disc.centers.shape == (8, 5)

    symbols = ["a", "b", "c"] * 40
    d = dsc.learn_dictionary(symbols, n_rounds=6, merges_per_round=5, min_freq=10)
    assert ("a", "b") in d.chunks and all(isinstance(c, tuple) for c in d.chunks)
    parse = d.parse(symbols)
    assert [s for c in parse for s in c] == symbols and len(parse) < len(symbols)

    t = pa.fit(H, pos, n_train=5, seed=0)
    det = t.detect(H)
    assert det.shape == (300,) and det.dtype == bool
    assert det[t.train_positions].all()  # theta is the largest training deviation
    assert not np.delete(det, pos.numpy()).any()  # no unplanted row comes near the template

    m = ucd.fit(H, 3, seed=0, reseed_dead=True, epochs=3)
    assert m.assignments.shape == (300,) and m.centers.shape == (3, 8)
