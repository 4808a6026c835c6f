"""`lucid datagen` end to end on the tiny Stable Diffusion pipeline (VAE latents), resume,
and bad input: one sentence, exit code 2, nothing written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lucidml.cli import main
from lucidml.datagen.lora import Adapter
from lucidml.testing import tiny_sd_pipeline


def _run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def _ok(argv, capsys) -> None:
    code, err = _run(argv, capsys)
    assert code in (0, None), err


def _fails(argv, capsys, match, out):
    code, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not out.exists()


def _image_folder(root, classes=("cat", "dog"), per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fitted(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    shots = _image_folder(root / "shots")
    out = root / "fit"
    main_args = ["--threads", "1", "datagen", "fit-loras", "--images", str(shots)]
    with pytest.raises(SystemExit) as exc:
        main([*main_args, "--model", str(model), "--steps", "2", "--out", str(out)])
    assert exc.value.code in (0, None)
    return out, shots


def test_fit_generate_evaluate_on_a_latent_pipeline(fitted, model, tmp_path, capsys):
    fit, shots = fitted
    manifest = json.loads((fit / "loras.json").read_text())
    assert manifest["method"] == "loft" and manifest["model"] == str(model)
    assert [len(c["adapters"]) for c in manifest["classes"]] == [2, 2]
    adapter = Adapter.load(fit / manifest["classes"][0]["adapters"][0])
    assert adapter.rank == 2 and adapter.meta["method"] == "loft"
    assert adapter.meta["prompts"] == ["a photo of a cat"]

    gen = tmp_path / "gen"
    _ok(["datagen", "generate", "--loras", str(fit), "--per-class", "3", "--steps", "2",
         "--out", str(gen)], capsys)  # fmt: skip
    rows = [json.loads(line) for line in (gen / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["class"] for r in rows} == {"cat", "dog"}
    assert all(len(r["adapters"]) == 2 and r["weights"] == [0.5, 0.5] for r in rows)
    assert all((gen / r["file"]).is_file() for r in rows)
    with Image.open(gen / rows[0]["file"]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    before = {r["file"]: (gen / r["file"]).read_bytes() for r in rows}
    (gen / rows[4]["file"]).unlink()  # an interrupted run
    _ok(["datagen", "generate", "--loras", str(fit), "--per-class", "3", "--steps", "2",
         "--out", str(gen), "--resume"], capsys)  # fmt: skip
    assert json.loads((gen / "results.json").read_text())["drawn_now"] == 1
    assert all((gen / f).read_bytes() == data for f, data in before.items())
    assert len((gen / "metadata.jsonl").read_text().splitlines()) == 6

    ev = tmp_path / "ev"
    test = _image_folder(tmp_path / "test", per_class=3, seed=1)
    _ok(["datagen", "evaluate", "--synthetic", str(gen), "--real-test", str(test), "--seeds",
         "2", "--epochs", "1", "--encoder", "pixels", "--out", str(ev)], capsys)  # fmt: skip
    results = json.loads((ev / "results.json").read_text())
    acc = results["accuracy"]
    assert set(acc) == {"synthetic", "real_shots_only"}
    assert acc["synthetic"]["n_seeds"] == 2 and acc["synthetic"]["n_test"] == 6
    assert results["n_shots"] == 4
    assert 0 <= results["fidelity"]["pooled"]["precision"] <= 1
    assert (ev / "report.html").is_file()


def test_generate_with_plain_prompts_needs_no_adapters(fitted, tmp_path, capsys):
    fit, _ = fitted
    out = tmp_path / "plain"
    _ok(["datagen", "generate", "--loras", str(fit), "--method", "plain", "--per-class", "2",
         "--steps", "2", "--out", str(out)], capsys)  # fmt: skip
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["adapters"] == [] for r in rows)


def test_bad_inputs_exit_2_with_one_sentence(fitted, model, tmp_path, capsys):
    fit, shots = fitted
    fit_args = ["datagen", "fit-loras", "--model", str(model), "--steps", "1"]
    empty = _image_folder(tmp_path / "empty")
    for f in (empty / "dog").iterdir():
        f.unlink()
    _fails([*fit_args, "--images", str(empty)], capsys, "holds no images", tmp_path / "o1")
    broken = _image_folder(tmp_path / "broken")
    (broken / "cat" / "0.png").write_bytes(b"not a png")
    _fails([*fit_args, "--images", str(broken)], capsys, "cannot read the image", tmp_path / "o2")
    # two shots whose adapters would share one file name
    clash = _image_folder(tmp_path / "clash")
    Image.open(clash / "cat" / "0.png").save(clash / "cat" / "0.jpg")
    _fails([*fit_args, "--images", str(clash)], capsys, "would share one adapter", tmp_path / "o2b")
    _fails(
        ["datagen", "fit-loras", "--model", "nobody/no-such-pipeline", "--images", str(shots)],
        capsys,
        "no-such-pipeline",
        tmp_path / "o3",
    )
    _fails(
        ["datagen", "generate", "--loras", str(fit), "--method", "datadream-cls"],
        capsys,
        "holds loft adapters",
        tmp_path / "o4",
    )
    # an adapter of another rank dropped into the folder
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(fit, mixed)
    first = json.loads((mixed / "loras.json").read_text())["classes"][0]["adapters"][0]
    a = Adapter.load(mixed / first)
    wider = {m: (torch.cat([A, A]), torch.cat([B, B], 1)) for m, (A, B) in a.factors.items()}
    Adapter(wider, 4, 4.0, a.meta).save(mixed / first)
    _fails(
        ["datagen", "generate", "--loras", str(mixed)], capsys, "mixes LoRA ranks", tmp_path / "o5"
    )
    _fails(
        ["datagen", "generate", "--loras", str(tmp_path)],
        capsys,
        "holds no loras.json",
        tmp_path / "o6",
    )
