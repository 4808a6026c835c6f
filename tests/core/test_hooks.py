import pytest
import torch

from lucidml.core.hooks import Site, capture, n_layers, patch, resid_module
from lucidml.errors import ModelError
from lucidml.testing import tiny_llama


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def _inputs(tok):
    return tok(["the cat eats cake .", "my dog likes milk"], return_tensors="pt", padding=True)


def test_resid_module_matches_hidden_states_at_every_layer(llama):
    model, tok = llama
    enc = _inputs(tok)
    sites = [resid_module(model, layer) for layer in range(n_layers(model) + 1)]
    with torch.no_grad(), capture(model, sites) as acts:
        out = model(**enc, output_hidden_states=True)
    assert len(out.hidden_states) == n_layers(model) + 1
    for layer, site in enumerate(sites):
        torch.testing.assert_close(acts[site], out.hidden_states[layer], rtol=0, atol=0)


def test_resid_module_names_block_inputs(llama):
    model, _ = llama
    assert resid_module(model, 2) == Site("model.layers.2", pre=True)
    assert resid_module(model, n_layers(model)) == Site("model.norm", pre=False)
    with pytest.raises(ModelError, match="out of range"):
        resid_module(model, n_layers(model) + 1)


def test_patch_changes_logits_and_leaving_restores_exactly(llama):
    model, tok = llama
    enc = _inputs(tok)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    hooks_before = n_hooks()
    with torch.no_grad():
        before = model(**enc).logits
        with patch(model, "model.layers.1.mlp", torch.zeros_like):
            zeroed = model(**enc).logits
        with patch(model, resid_module(model, 2), lambda h: h * 0):
            zeroed_resid = model(**enc).logits
        after = model(**enc).logits
    assert not torch.allclose(before, zeroed)
    assert not torch.allclose(before, zeroed_resid)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert n_hooks() == hooks_before


def test_patch_of_resid_is_what_the_next_block_reads(llama):
    model, tok = llama
    enc = _inputs(tok)
    site = resid_module(model, 3)
    with torch.no_grad(), patch(model, site, lambda h: h + 1.0), capture(model, [site]) as acts:
        out = model(**enc, output_hidden_states=True)
    # the capture hook was registered after the patch, so it sees the edited input
    torch.testing.assert_close(acts[site], out.hidden_states[3] + 1.0)


def test_capture_keep_all_and_unknown_module(llama):
    model, tok = llama
    enc = _inputs(tok)
    with torch.no_grad(), capture(model, ["model.layers.0"], keep_all=True) as acts:
        model(**enc)
        model(**enc)
    assert len(acts["model.layers.0"]) == 2
    with pytest.raises(ModelError, match="no module named"), capture(model, ["nope"]):
        pass
