"""The run contract on `lucid uncertainty`: devices, seeds, configs, resume, bad inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from lucidml.cli import main
from lucidml.errors import InputError
from lucidml.uncertainty import data
from lucidml.uncertainty.towers import float64_device


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def _fails(argv, capsys, match, out):
    code, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not out.exists()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("pairs")
    np.save(folder / "images.npy", digits.train_x[:120].numpy())
    captions = data.digits_captions(digits.train_y[:120], digits.class_names)
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    return folder


@pytest.fixture(scope="module")
def posterior(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "post"
    with pytest.raises(SystemExit) as exc:
        main(["uncertainty", "fit", "--pairs", str(pairs), "--out", str(out), "--quiet"])
    assert exc.value.code == 0
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check needs a machine without CUDA")
def test_fit_on_a_missing_gpu_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    _fails(["uncertainty", "fit", "--device", "cuda"], capsys, "device 'cuda'", tmp_path / "o")
    _fails(["uncertainty", "demo", "--device", "cuda"], capsys, "device 'cuda'", tmp_path / "d")
    _fails(["uncertainty", "fit", "--device", "tpu"], capsys, "unknown device", tmp_path / "o")


def test_config_values_survive_cli_defaults_and_round_trip(tmp_path, capsys, pairs):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(f"damping: eig\npairs: {pairs}\nclass_batch: 50\n")
    out = tmp_path / "a"
    code, err = _run(
        ["uncertainty", "fit", "--config", str(cfg), "--seed", "3", "--out", str(out)], capsys
    )
    assert code == 0, err
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["damping"] == "eig" and written["class_batch"] == 50  # not the defaults
    assert written["pairs"] == str(pairs) and written["seed"] == 3
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["device"] == "cpu" and results["env"]["seed"] == 3
    assert json.loads((out / "posterior.json").read_text())["config"]["damping"] == "eig"

    # the run's config.yaml, passed back, runs the same job; an option still overrides it
    again = tmp_path / "b"
    code, err = _run(
        ["uncertainty", "fit", "--config", str(out / "config.yaml"), "--out", str(again), "-q"],
        capsys,
    )
    assert code == 0 and err == "", err
    assert (again / "config.yaml").read_text() == (out / "config.yaml").read_text()
    assert json.loads((again / "results.json").read_text())["prior_precision"] == pytest.approx(
        results["prior_precision"], rel=1e-9
    )
    code, _ = _run(
        [
            "uncertainty",
            "fit",
            "--config",
            str(cfg),
            "--damping",
            "split",
            "--out",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert code == 0
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["damping"] == "split"


def test_stage_messages_unless_quiet(tmp_path, capsys, pairs):
    fit = ["uncertainty", "fit", "--pairs", str(pairs), "--out"]
    code, err = _run([*fit, str(tmp_path / "loud")], capsys)
    assert code == 0 and "fitting the posterior of digits-clip on 120" in err, err
    code, err = _run([*fit, str(tmp_path / "quiet"), "--quiet"], capsys)
    assert code == 0 and err == "", err


def test_fit_resume_with_other_pairs_is_refused(tmp_path, capsys, pairs, posterior, digits):
    out = tmp_path / "run"
    shutil.copytree(posterior, out)
    before = (out / "config.yaml").read_text()
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "images.npy", digits.train_x[200:260].numpy())
    (other / "captions.txt").write_text("a photo of the digit one.\n" * 60)
    code, err = _run(
        ["uncertainty", "fit", "--pairs", str(other), "--out", str(out), "--resume"], capsys
    )
    assert code == 2 and "it was run with pairs = " in err and err.count("\n") == 1, err
    assert (out / "config.yaml").read_text() == before
    # the same folder with other contents: caught by the stored input fingerprint
    fit = ["uncertainty", "fit", "--pairs", str(other), "--out", str(tmp_path / "b")]
    assert _run(fit, capsys)[0] == 0
    (other / "captions.txt").write_text("a photo of the digit two.\n" * 60)
    code, err = _run([*fit, "--resume"], capsys)
    assert code == 2 and "its input pairs differs (captions.txt has changed" in err, err
    code, err = _run(["uncertainty", "fit", "--pairs", str(other), "--resume"], capsys)
    assert code == 2 and "--resume needs --out" in err


def _active(posterior, out, *extra):
    return [
        "uncertainty",
        "active",
        "--hessian",
        str(posterior),
        "--pool",
        "digits-noise",
        "--targets",
        "digits-noise",
        "--strategy",
        "random",
        "--budget",
        "10",
        "--budgets",
        "5,10",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_active_resume_reuses_exactly_the_unchanged_rows(tmp_path, capsys, posterior):
    cfg = tmp_path / "al.yaml"
    cfg.write_text("finetune:\n  epochs: 3\n  val_size: 50\n")
    out = tmp_path / "al"
    code, err = _run(_active(posterior, out, "--config", str(cfg)), capsys)
    assert code == 0, err
    first = json.loads((out / "results.json").read_text())
    assert [(r["budget"], r["seed"]) for r in first["curve"]] == [
        (0, 0),
        (5, 0),
        (10, 0),
        (5, 1),
        (10, 1),
    ]
    rows = sorted((out / "checkpoints" / "rows").glob("*.json"))
    assert len(rows) == 4 and first["rows_reused"] == 0
    rows[0].unlink()  # as if killed before that row finished
    code, err = _run(_active(posterior, out, "--config", str(cfg), "--resume"), capsys)
    resumed = json.loads((out / "results.json").read_text())
    assert code == 0 and resumed["rows_reused"] == 3, err
    assert resumed["curve"] == first["curve"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5

    cfg.write_text("finetune:\n  epochs: 4\n  val_size: 50\n")  # another setting: all rows anew
    code, err = _run(_active(posterior, out, "--config", str(cfg), "--resume"), capsys)
    assert code == 0 and json.loads((out / "results.json").read_text())["rows_reused"] == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["epochs"] == 4


def test_bad_inputs_are_one_sentence(tmp_path, capsys, posterior, digits):
    zs = ["uncertainty", "zeroshot", "--hessian", str(posterior)]
    out = tmp_path / "never"

    latin = tmp_path / "classes.txt"
    latin.write_bytes("zéro\nun\n".encode("latin-1"))
    _fails([*zs, "--classes", str(latin)], capsys, "is not UTF-8 text", out)

    truncated = tmp_path / "truncated"
    shutil.copytree(posterior, truncated)
    blob = (truncated / "factors.safetensors").read_bytes()
    (truncated / "factors.safetensors").write_bytes(blob[: len(blob) // 2])
    _fails(["uncertainty", "zeroshot", "--hessian", str(truncated)], capsys, "safetensors", out)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((8, 8)), np.zeros((12, 10))
    np.save(mixed / "images.npy", ragged, allow_pickle=True)
    np.save(mixed / "labels.npy", np.array([0, 1]))
    _fails([*zs, "--images", str(mixed)], capsys, "different sizes", out)
    active = ["uncertainty", "active", "--hessian", str(posterior)]
    _fails([*active, "--pool", str(mixed)], capsys, "different sizes", out)

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "a.png").write_bytes(b"\x89PNG")
    _fails([*zs, "--images", str(pngs)], capsys, "holds image files but no images.npy", out)

    bad = tmp_path / "bad"
    bad.mkdir()
    x = digits.test_x[:4].numpy().copy()
    x[1, 0, 2, 2] = np.nan
    np.save(bad / "images.npy", x)
    _fails([*zs, "--images", str(bad)], capsys, "NaN or infinite values in 1 of 4", out)
    np.save(bad / "images.npy", (digits.test_x[:4].numpy() * 255).astype(np.uint8))
    _fails([*zs, "--images", str(bad)], capsys, "divide by 255", out)
    np.save(bad / "images.npy", digits.test_x[:4].numpy())
    np.save(bad / "labels.npy", np.array([0, 1, 2, 10]))
    _fails([*zs, "--images", str(bad)], capsys, "labels must lie in 0..9", out)
    _fails([*active, "--budget", "10", "--budgets", "5,20"], capsys, "must lie in 1..10", out)
    _fails(["uncertainty", "zeroshot"], capsys, "no posterior given", out)


def _edited_posterior(posterior, tmp_path, *, meta=None, tensors=None):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "edited"
    shutil.copytree(posterior, folder)
    if meta is not None:
        saved = json.loads((folder / "posterior.json").read_text())
        meta(saved)
        (folder / "posterior.json").write_text(json.dumps(saved))
    if tensors is not None:
        factors = load_file(folder / "factors.safetensors")
        tensors(factors)
        save_file(factors, folder / "factors.safetensors")
    return folder


@pytest.mark.parametrize(
    ("meta", "tensors", "match"),
    [
        (None, lambda f: f["image.A"].fill_(float("nan")), "image.A holds NaN"),
        (None, lambda f: f.update({"text.B": f["text.B"][:-1, :-1].clone()}), "text.B is of shape"),
        (None, lambda f: f.pop("image.B"), "image.B is missing"),
        (lambda m: m.pop("n_pairs"), None, "n_pairs must be a positive integer"),
        (lambda m: m["prior_precision"].update(text=-1.0), None, "prior_precision.text"),
    ],
)
def test_damaged_posteriors_are_refused(tmp_path, capsys, posterior, meta, tensors, match):
    folder = _edited_posterior(posterior, tmp_path, meta=meta, tensors=tensors)
    argv = ["uncertainty", "zeroshot", "--hessian", str(folder)]
    _fails(argv, capsys, match, tmp_path / "never")


def test_posteriors_load_in_float64_on_the_model_device(tmp_path, posterior, digits_clip):
    from lucidml.uncertainty import BayesVLM

    folder = _edited_posterior(  # as if written by a float32 tool
        posterior, tmp_path, tensors=lambda f: f.update({k: v.float() for k, v in f.items()})
    )
    bvlm = BayesVLM.load(digits_clip, folder, device="cpu")
    for post in bvlm.posteriors.values():
        assert post.factors.A.dtype == torch.float64 and post.factors.A.device.type == "cpu"
    assert float64_device("mps") == torch.device("cpu")  # MPS has no float64
    assert float64_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="unknown device"):
        BayesVLM(digits_clip, device="gpu")
