"""BayesVLM on tiny random CLIP and SigLIP towers: MAP parity, fitting, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F

from lucidml.errors import InputError, ModelError
from lucidml.testing import tiny_clip, word_tokenizer
from lucidml.uncertainty import BayesVLM, PosteriorConfig
from lucidml.uncertainty.hessians import ggn_sum
from lucidml.uncertainty.towers import image_inputs, text_inputs

WORDS = ["a", "photo", "of", "the", "cat", "dog", "bird", "fish", "red", "blue", "big", "small"]
CAPTIONS = [
    "a photo of the cat",
    "a red dog",
    "the big bird",
    "a small fish",
    "a blue cat",
    "the red bird",
    "a photo of a dog",
    "big fish",
    "small cat",
    "a blue bird",
    "the dog",
    "a fish",
]


def tiny_siglip(seed: int = 0):
    from transformers import SiglipConfig, SiglipModel

    from lucidml.core.vlm import VisionLanguageModel

    tok = word_tokenizer(WORDS, max_length=16)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=30,
            patch_size=6,
            num_channels=3,
        ),
    )
    torch.manual_seed(seed)
    model = SiglipModel(cfg).eval()
    return VisionLanguageModel(
        model,
        tok,
        kind="siglip",
        name="tiny-siglip",
        image_size=30,
        channels=3,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        text_padding="max_length",
        max_text_length=16,
    )


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def siglip():
    return tiny_siglip()


def _images(vlm, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, vlm.channels, vlm.image_size, vlm.image_size, generator=g)


def _reference_logits(vlm, images, texts):
    enc = vlm.tokenize(texts)
    kw = {} if vlm.kind == "siglip" else {"attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        out = vlm.model(input_ids=enc["input_ids"], pixel_values=vlm.preprocess(images), **kw)
    return out.logits_per_image.double()


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_map_logits_equal_the_models_own_and_have_no_variance(name, request):
    vlm = request.getfixturevalue(name)
    images, texts = _images(vlm, 5), CAPTIONS[:4]
    bvlm = BayesVLM(vlm)
    logits = bvlm.predict(images, texts, map_estimate=True)
    torch.testing.assert_close(
        logits.mean, _reference_logits(vlm, images, texts), rtol=0, atol=1e-5
    )
    assert torch.equal(logits.var, torch.zeros_like(logits.var))


def test_siglip_residual_and_bias_reproduce_the_image_embedding(siglip):
    images = _images(siglip, 4)
    bvlm = BayesVLM(siglip)
    emb = bvlm.embed("image", image_inputs(siglip, images))
    with torch.no_grad():
        expected = siglip.image_embeddings(images).double()
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)
    assert bvlm.layers["image"].bias is not None


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_fit_accumulates_factors_over_class_batches(name, request):
    vlm = request.getfixturevalue(name)
    images = _images(vlm)
    bvlm = BayesVLM(vlm, PosteriorConfig(class_batch=5, data_batch=2))
    img, txt = image_inputs(vlm, images), text_inputs(vlm, CAPTIONS)
    bvlm.fit_inputs(img, txt)
    # by hand: batches of 5, 5 and the remaining 2; each image against its batch's texts
    sum_aa = torch.zeros_like(bvlm.posteriors["image"].factors.A)
    sum_h = torch.zeros_like(bvlm.posteriors["image"].factors.B)
    for sl in (slice(0, 5), slice(5, 10), slice(10, 12)):
        x = bvlm.embed("image", img[sl])
        texts = F.normalize(bvlm.embed("text", txt[sl]), dim=-1)
        a = bvlm._design("image", img[sl].a)
        sum_aa += a.T @ a
        for xi in x:
            sum_h += ggn_sum(vlm.kind, xi[None], texts, bvlm.logit_scale, bvlm.logit_bias)
    post = bvlm.posteriors["image"]
    torch.testing.assert_close(post.factors.A, sum_aa / math.sqrt(12))
    torch.testing.assert_close(post.factors.B, sum_h / math.sqrt(12))
    assert post.factors.n_data == 12


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_float32_batch_products_give_the_float64_posterior_within_1e_4(name, request):
    """What a CUDA fit does (float32 products, float64 sums), checked on the CPU."""
    vlm = request.getfixturevalue(name)
    images = _images(vlm)
    fits = {
        dtype: BayesVLM(vlm, PosteriorConfig(class_batch=5, accumulate_dtype=dtype))
        .fit((images, CAPTIONS))
        .optimize_prior_precision()
        for dtype in ("float32", "float64")
    }
    assert BayesVLM(vlm).accumulate_dtype == torch.float64  # auto on the CPU
    for t in ("image", "text"):
        f32, f64 = (fits[d].posteriors[t].factors for d in ("float32", "float64"))
        assert f32.A.dtype == torch.float64
        for got, want in ((f32.A, f64.A), (f32.B, f64.B)):
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
            assert not torch.equal(got, want)  # the products really ran in float32
    p32, p64 = (fits[d].predict(images[:4], CAPTIONS[:5]).probs() for d in fits)
    torch.testing.assert_close(p32, p64, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_fitted_model_has_positive_variance_and_roundtrips(name, request, tmp_path):
    vlm = request.getfixturevalue(name)
    images = _images(vlm)
    bvlm = BayesVLM(vlm).fit((images, CAPTIONS)).optimize_prior_precision()
    lam = bvlm.prior_precision
    assert all(math.exp(-5) <= v <= math.exp(15) for v in lam.values())
    logits = bvlm.predict(images[:3], CAPTIONS[:4])
    assert (logits.var > 0).all()
    bvlm.save(tmp_path)
    again = BayesVLM.load(vlm, tmp_path).predict(images[:3], CAPTIONS[:4])
    torch.testing.assert_close(again.mean, logits.mean)
    torch.testing.assert_close(again.var, logits.var)


@pytest.mark.parametrize("damping", ["split", "eig"])
def test_a_scalar_moved_between_the_stored_factors_changes_no_prediction(clip, tmp_path, damping):
    """The contract: A * c and B / c in factors.safetensors leave the probabilities alone
    (the factors are defined only up to that); the reference's split damping does not."""
    from safetensors.torch import load_file, save_file

    images = _images(clip)

    def probs_after_moving(c: float, damping: str) -> torch.Tensor:
        cfg = PosteriorConfig(damping=damping)
        BayesVLM(clip, cfg).fit((images, CAPTIONS)).optimize_prior_precision().save(tmp_path)
        factors = load_file(tmp_path / "factors.safetensors")
        for name in factors:
            factors[name] = factors[name] * (c if name.endswith(".A") else 1 / c)
        save_file(factors, tmp_path / "factors.safetensors")
        return BayesVLM.load(clip, tmp_path).predict(images[:4], CAPTIONS[:5]).probs()

    base = probs_after_moving(1.0, damping)
    for c in (0.05, 30.0):
        torch.testing.assert_close(probs_after_moving(c, damping), base, atol=1e-6, rtol=0)
    moved = probs_after_moving(30.0, "split-reference")
    assert (moved - probs_after_moving(1.0, "split-reference")).abs().max() > 1e-4


def test_more_pseudo_data_shrinks_the_variance(clip):
    images = _images(clip)
    bvlm = BayesVLM(clip).fit((images, CAPTIONS)).optimize_prior_precision()
    small = bvlm.predict(images[:3], CAPTIONS[:4]).var
    bvlm.config = bvlm.config.updated(predict_n=1000.0)
    assert (bvlm.predict(images[:3], CAPTIONS[:4]).var < small).all()


def test_factors_from_another_model_are_refused(clip, tmp_path):
    BayesVLM(clip).fit((_images(clip), CAPTIONS)).save(tmp_path)
    with pytest.raises(ModelError, match="fitted on"):
        BayesVLM.load(tiny_clip(seed=1), tmp_path)
    with pytest.raises(ModelError, match="does not match"):
        BayesVLM.load(tiny_siglip(), tmp_path)
    with pytest.raises(InputError, match="factors.safetensors"):
        BayesVLM.load(clip, tmp_path / "missing")


def test_model_without_a_projection_of_the_expected_shape_is_refused():
    vlm = tiny_clip()
    vlm.model.visual_projection = torch.nn.Linear(64, 7, bias=False)
    with pytest.raises(ModelError, match="not a linear map"):
        BayesVLM(vlm)
    vlm.model.visual_projection = torch.nn.Identity()
    with pytest.raises(ModelError, match="not a linear map"):
        BayesVLM(vlm)


def test_predict_before_fit_and_empty_inputs_are_refused(clip):
    bvlm = BayesVLM(clip)
    with pytest.raises(ModelError, match="not fitted"):
        bvlm.predict(_images(clip, 2), CAPTIONS[:2])
    with pytest.raises(InputError):
        bvlm.predict(_images(clip, 2), [])
    with pytest.raises(InputError, match="class names"):
        bvlm.class_inputs([])


@pytest.mark.parametrize("damping", ["split", "eig"])
@pytest.mark.parametrize("cosine_var", ["reference", "projected"])
def test_every_damping_and_cosine_variance_predicts(clip, damping, cosine_var):
    images = _images(clip)
    cfg = PosteriorConfig(damping=damping, cosine_var=cosine_var)
    bvlm = BayesVLM(clip, cfg).fit((images, CAPTIONS)).optimize_prior_precision()
    logits = bvlm.predict(images[:3], CAPTIONS[:4])
    assert (logits.var > 0).all() and torch.isfinite(logits.var).all()


def test_interrupted_fit_resumes_to_the_same_factors(clip, tmp_path):
    from lucidml.uncertainty import checkpoints

    images, cfg = _images(clip), PosteriorConfig(class_batch=5)
    full = BayesVLM(clip, cfg).fit((images, CAPTIONS))
    identity = {"pairs": "the twelve captions"}

    class Stop(Exception):
        pass

    def checkpoint_then_stop_after_two(sums):
        checkpoints.save_sums(tmp_path, sums, identity)
        if sums.n_batches == 2:
            raise Stop

    with pytest.raises(Stop):
        BayesVLM(clip, cfg).fit((images, CAPTIONS), on_batch=checkpoint_then_stop_after_two)
    sums = checkpoints.load_sums(tmp_path, identity, "cpu")
    assert (sums.n_batches, sums.n_data) == (2, 10)
    resumed = BayesVLM(clip, cfg).fit((images, CAPTIONS), sums=sums)
    for t in ("image", "text"):
        torch.testing.assert_close(resumed.posteriors[t].factors.A, full.posteriors[t].factors.A)
        torch.testing.assert_close(resumed.posteriors[t].factors.B, full.posteriors[t].factors.B)
        assert resumed.posteriors[t].factors.n_data == 12
    with pytest.raises(InputError, match="another 'pairs'"):
        checkpoints.load_sums(tmp_path, {"pairs": "other captions"}, "cpu")


def test_sampled_predictions_agree_with_the_moments_where_variance_is_small(clip):
    images = _images(clip)
    bvlm = BayesVLM(clip, PosteriorConfig(predict_n=1e4)).fit((images, CAPTIONS))
    bvlm.optimize_prior_precision()
    moments = bvlm.predict(images[:3], CAPTIONS[:4])
    sampled = bvlm.predict(images[:3], CAPTIONS[:4], predictive="samples", n_samples=4000)
    assert sampled.samples.shape == (4000, 3, 4)
    torch.testing.assert_close(sampled.mean, moments.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(sampled.var.sqrt(), moments.var.sqrt(), atol=0.02, rtol=0.2)
    torch.testing.assert_close(sampled.probs(), moments.probs(), atol=0.01, rtol=0)
    again = bvlm.predict(images[:3], CAPTIONS[:4], predictive="samples", n_samples=4000)
    torch.testing.assert_close(again.samples, sampled.samples)  # seeded
    with pytest.raises(Exception, match="unknown predictive"):
        bvlm.predict(images[:3], CAPTIONS[:4], predictive="bogus")


def test_a_posterior_saved_before_the_fitted_split_loads_as_the_reference_split(clip, tmp_path):
    import json

    images = _images(clip)
    cfg = PosteriorConfig(damping="split-reference")
    old = BayesVLM(clip, cfg).fit((images, CAPTIONS)).optimize_prior_precision()
    old.save(tmp_path)
    meta = json.loads((tmp_path / "posterior.json").read_text())
    meta["config"]["damping"] = "split"  # what the earlier code wrote for this posterior
    del meta["split_scale"]
    (tmp_path / "posterior.json").write_text(json.dumps(meta))
    loaded = BayesVLM.load(clip, tmp_path)
    assert loaded.config.damping == "split-reference"
    torch.testing.assert_close(
        loaded.predict(images[:3], CAPTIONS[:4]).var, old.predict(images[:3], CAPTIONS[:4]).var
    )
    old.config = old.config.updated(damping="split")
    old.save(tmp_path / "new")  # written now: "split" is read as written
    assert BayesVLM.load(clip, tmp_path / "new").config.damping == "split"
