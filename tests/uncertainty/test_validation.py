"""Bad inputs through the CLI that test_cli_contract does not already cover (issue 18,
defect 4): each is one sentence, exit code 2, and no run folder."""

import json

import numpy as np
import pytest
from test_cli_contract import _edited_posterior, _fails

from lucidml.uncertainty import BayesVLM, data
from lucidml.uncertainty.towers import image_inputs, text_inputs


@pytest.fixture(scope="module")
def posterior(digits, digits_clip, tmp_path_factory):
    captions = data.digits_captions(digits.train_y[:150], digits.class_names)
    bvlm = BayesVLM(digits_clip).fit_inputs(
        image_inputs(digits_clip, digits.train_x[:150]), text_inputs(digits_clip, captions)
    )
    return bvlm.optimize_prior_precision().save(tmp_path_factory.mktemp("posterior"))


@pytest.mark.parametrize(
    ("meta", "tensors", "match"),
    [
        (lambda m: m.pop("prior_precision"), None, "prior_precision.image must be a finite"),
        (lambda m: m["prior_precision"].update(image=0.0), None, "positive number, got 0.0"),
        (lambda m: m["prior_precision"].update(image=float("nan")), None, "got nan"),
        (lambda m: m.update(n_pairs=0), None, "n_pairs must be a positive integer, got 0"),
        (lambda m: m["shapes"].update(image=[16, 64]), None, "image projection [16, 64]"),
        (lambda m: m.clear(), None, "is not a BayesVLM posterior description"),
        (None, lambda f: f["image.B"].fill_(float("inf")), "image.B holds NaN or infinite"),
        (None, lambda f: f.update({"image.A": f["image.A"][:, :-1].clone()}), "(64, 63)"),
        (None, lambda f: f["image.A"].neg_(), "image.A is not positive semi-definite"),
        (None, lambda f: f["text.B"][0].add_(1.0), "text.B is not symmetric"),
    ],
)
def test_damaged_posterior_files_are_refused(tmp_path, capsys, posterior, meta, tensors, match):
    folder = _edited_posterior(posterior, tmp_path, meta=meta, tensors=tensors)
    _fails(["uncertainty", "zeroshot", "--hessian", str(folder)], capsys, match, tmp_path / "o")


def test_active_refuses_nan_factors_too(tmp_path, capsys, posterior):
    folder = _edited_posterior(
        posterior, tmp_path, tensors=lambda f: f["text.B"].view(-1).__setitem__(3, float("nan"))
    )
    active = ["uncertainty", "active", "--hessian", str(folder), "--budget", "5"]
    _fails(active, capsys, "text.B holds NaN or infinite values", tmp_path / "o")


def test_nan_images_are_refused_in_every_command(tmp_path, capsys, posterior, digits):
    x = digits.train_x[:6].numpy().copy()
    x[4, 0, 1, 1] = np.inf
    folder = tmp_path / "nan"
    folder.mkdir()
    np.save(folder / "images.npy", x)
    np.save(folder / "labels.npy", digits.train_y[:6].numpy())
    captions = data.digits_captions(digits.train_y[:6], digits.class_names)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    match = "NaN or infinite values in 1 of 6 images"
    _fails(["uncertainty", "fit", "--pairs", str(folder)], capsys, match, tmp_path / "o")
    active = ["uncertainty", "active", "--hessian", str(posterior), "--budget", "2"]
    _fails([*active, "--pool", str(folder)], capsys, match, tmp_path / "o")
    _fails([*active, "--targets", str(folder)], capsys, match, tmp_path / "o")


def test_a_fit_on_one_pair_is_refused(tmp_path, capsys, digits):
    folder = tmp_path / "one"
    folder.mkdir()
    np.save(folder / "images.npy", digits.train_x[:1].numpy())
    (folder / "captions.txt").write_text("a photo of the digit one.\n")
    argv = ["uncertainty", "fit", "--pairs", str(folder)]
    _fails(
        argv, capsys, "hold 1 image-caption pair; the posterior needs at least 2", tmp_path / "o"
    )


def test_two_pairs_fit_with_a_warning_about_unseen_directions(tmp_path, capsys, digits):
    from lucidml.cli import main

    folder = tmp_path / "two"
    folder.mkdir()
    np.save(folder / "images.npy", digits.train_x[:2].numpy())
    captions = data.digits_captions(digits.train_y[:2], digits.class_names)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["uncertainty", "fit", "--pairs", str(folder), "--out", str(tmp_path / "fit")])
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    assert "span at most 2 of the 64 input directions of the image projection" in err
    assert json.loads((tmp_path / "fit" / "results.json").read_text())["n_pairs"] == 2
