"""The SAE model: inference codes against their formulas, and SAELens-layout folders."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from lucidml.errors import InputError, ShapeError
from lucidml.sae.config import SAEConfig
from lucidml.sae.model import SAE, batch_topk, topk_per_row

KINDS = ["relu", "topk", "batchtopk", "matryoshka", "jumprelu"]


def _random_sae(kind: str, d_in: int = 6, expansion: int = 3, k: int = 2) -> SAE:
    extra = {"group_fractions": [1 / 3, 2 / 3]} if kind == "matryoshka" else {}
    sae = SAE(SAEConfig(kind=kind, d_in=d_in, expansion=expansion, k=k, **extra))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_()
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
    return sae


def _codes(kind: str, u: np.ndarray, theta, k: int) -> np.ndarray:
    """The inference codes of each kind, written out in numpy."""
    a = np.maximum(u, 0)
    if kind == "relu":
        return a
    if kind == "topk":
        keep = np.argsort(-a, axis=-1)[..., :k]
        out = np.zeros_like(a)
        np.put_along_axis(out, keep, np.take_along_axis(a, keep, -1), -1)
        return out
    if kind == "jumprelu":
        return u * (u > theta)
    return a * (a > theta)


def test_fresh_sae_has_unit_decoder_rows_and_tied_encoder():
    sae = SAE(SAEConfig(kind="topk", d_in=8, expansion=4, k=3, seed=5))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.equal(SAE(sae.cfg).W_dec, sae.W_dec)  # deterministic in cfg.seed


@pytest.mark.parametrize("kind", KINDS)
def test_inference_codes_match_their_formulas_for_any_leading_dims(kind):
    sae = _random_sae(kind)
    x = torch.randn(2, 5, 6)
    f = sae.encode(x)
    assert f.shape == (2, 5, 18)
    p = {n: t.detach().double().numpy() for n, t in sae.named_parameters()}
    u = (x.double().numpy() - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    theta = None if sae.threshold is None else sae.threshold.double().numpy()
    want = _codes(kind, u, theta, sae.cfg.k)
    np.testing.assert_allclose(f.detach().numpy(), want, atol=1e-5)
    np.testing.assert_allclose(sae(x).detach().numpy(), want @ p["W_dec"] + p["b_dec"], atol=1e-5)


def test_width_mismatch_is_a_one_sentence_shape_error():
    sae = _random_sae("relu")
    with pytest.raises(ShapeError, match="width 6"):
        sae.encode(torch.randn(3, 7))
    with pytest.raises(ShapeError, match="width 18"):
        sae.decode(torch.randn(3, 6))


def test_topk_helpers_keep_k_per_row_and_k_times_rows_per_batch():
    a = torch.rand(8, 20)
    assert ((topk_per_row(a, 3) > 0).sum(1) == 3).all()
    f = batch_topk(a, 3)
    assert int((f > 0).sum()) == 24
    assert f[f > 0].min() >= a.flatten().sort().values[-24]


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip(kind, tmp_path):
    sae = _random_sae(kind)
    sae.scale = 2.5
    folder = sae.save(tmp_path / "sae", hook_name="block.3", extra={"note": 1})
    meta = json.loads((folder / "cfg.json").read_text())
    assert meta["architecture"] == {"relu": "standard", "matryoshka": "matryoshka_batchtopk"}.get(
        kind, kind
    )
    assert (meta["d_in"], meta["d_sae"], meta["hook_name"]) == (6, 18, "block.3")
    assert meta["normalize_activations"] == "none"
    assert meta["lucidml"]["scale"] == 2.5
    assert meta["lucidml"]["group_sizes"] == sae.group_sizes
    assert meta["lucidml"]["extra"] == {"note": 1}
    assert ("k" in meta) == (kind in ("topk", "batchtopk", "matryoshka"))
    loaded = SAE.load(folder)
    x = torch.randn(4, 6)
    assert torch.allclose(loaded(x), sae(x), atol=1e-6)
    assert loaded.cfg == sae.cfg and loaded.scale == 2.5 and loaded.hook_name == "block.3"
    assert loaded.group_sizes == sae.group_sizes
    sae.save(folder)  # saving over an SAE replaces it whole
    assert not list(tmp_path.glob(".sae.*"))


def _hand_built_folder(folder, arch, d_in, d_sae, rng, cfg_extra=None, names=None):
    """A SAELens-style folder written with plain json and safetensors (no lucidml code)."""
    folder.mkdir()
    t = {
        "W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
        "b_enc": (0.3 * rng.standard_normal(d_sae)).astype(np.float32),
        "W_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
        "b_dec": rng.standard_normal(d_in).astype(np.float32),
    }
    if arch == "jumprelu":
        t["threshold"] = rng.uniform(0, 0.8, d_sae).astype(np.float32)
    stored = {(names or {}).get(n, n): v for n, v in t.items()}
    if "encoder.weight" in stored:  # nn.Linear layout: (out, in)
        stored["encoder.weight"] = np.ascontiguousarray(stored["encoder.weight"].T)
    if "decoder.weight" in stored:
        stored["decoder.weight"] = np.ascontiguousarray(stored["decoder.weight"].T)
    save_file(stored, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32"}
    cfg.update({"device": "cpu", "hook_name": "blocks.2.hook_resid_post", **(cfg_extra or {})})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


@pytest.mark.parametrize(
    "arch, d_sae, cfg_extra",
    [
        ("standard", 24, {"apply_b_dec_to_input": True}),
        ("standard", 10, {"apply_b_dec_to_input": False}),  # d_sae no multiple of d_in
        ("topk", 24, {"k": 3}),
        ("standard", 24, {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}),
        ("jumprelu", 24, {"normalize_activations": "none"}),
    ],
)
def test_loads_hand_built_saelens_folders(tmp_path, arch, d_sae, cfg_extra):
    rng = np.random.default_rng(0)
    t = _hand_built_folder(tmp_path / "sae", arch, 6, d_sae, rng, cfg_extra)
    sae = SAE.load(tmp_path / "sae")
    kind = {"standard": "topk" if "activation_fn_str" in cfg_extra else "relu"}.get(arch, arch)
    assert sae.cfg.kind == kind and sae.n_latents == d_sae
    assert sae.hook_name == "blocks.2.hook_resid_post"
    x = rng.standard_normal((5, 6)).astype(np.float32)
    b_dec = t["b_dec"] if cfg_extra.get("apply_b_dec_to_input", True) else 0
    u = (x - b_dec) @ t["W_enc"] + t["b_enc"]
    want = _codes(kind, u, t.get("threshold"), 3)
    f = sae.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(f, want, atol=1e-5)
    np.testing.assert_allclose(
        sae.decode(torch.from_numpy(want)).detach().numpy(),
        want @ t["W_dec"] + t["b_dec"],
        atol=1e-5,
    )


def test_loads_dictionary_learning_names_and_a_transposed_decoder(tmp_path):
    rng = np.random.default_rng(1)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight"}
    names["b_dec"] = "bias"
    t = _hand_built_folder(tmp_path / "dl", "standard", 6, 24, rng, names=names)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    u = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    want = np.maximum(u, 0) @ t["W_dec"] + t["b_dec"]
    out = SAE.load(tmp_path / "dl")(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, want, atol=1e-5)

    t = _hand_built_folder(tmp_path / "transposed", "standard", 6, 24, rng)
    weights = dict(t, W_dec=np.ascontiguousarray(t["W_dec"].T))  # (d_in, d_sae)
    save_file(weights, str(tmp_path / "transposed" / "sae_weights.safetensors"))
    sae = SAE.load(tmp_path / "transposed")
    np.testing.assert_allclose(sae.W_dec.detach().numpy(), t["W_dec"])


def test_load_problems_are_input_errors_naming_file_and_tensor(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(InputError, match="does not exist"):
        SAE.load(tmp_path / "nothing")
    t = _hand_built_folder(tmp_path / "a", "jumprelu", 6, 24, rng)
    save_file(
        {n: v for n, v in t.items() if n != "threshold"},
        str(tmp_path / "a/sae_weights.safetensors"),
    )
    with pytest.raises(InputError, match=r"sae_weights.safetensors holds no tensor threshold"):
        SAE.load(tmp_path / "a")
    save_file(dict(t, b_enc=t["b_enc"][:5]), str(tmp_path / "a/sae_weights.safetensors"))
    with pytest.raises(InputError, match=r"tensor b_enc has shape \(5,\), expected \(24,\)"):
        SAE.load(tmp_path / "a")
    (tmp_path / "a/sae_weights.safetensors").unlink()
    with pytest.raises(InputError, match="sae_weights.safetensors does not exist"):
        SAE.load(tmp_path / "a")
    _hand_built_folder(tmp_path / "b", "gated", 6, 24, rng)
    with pytest.raises(InputError, match="architecture 'gated' is not supported"):
        SAE.load(tmp_path / "b")
    _hand_built_folder(tmp_path / "c", "topk", 6, 24, rng)
    with pytest.raises(InputError, match="needs k"):
        SAE.load(tmp_path / "c")
