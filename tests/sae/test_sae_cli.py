"""`lucid sae extract | train | score | steer` on digits-clip: the whole path, and bad input."""

import json

import numpy as np
import pytest
import torch

from lucidml.cli import main
from lucidml.sae import SAEConfig, train
from lucidml.sae.store import ActivationStore

pytestmark = pytest.mark.slow  # loads digits-clip (trained on first use)

TRAIN = ("--kind", "batchtopk", "--expansion", "2", "--k", "4", "--steps", "60")


def lucid(*args):
    try:
        main(["--threads", "1", *[str(a) for a in args]])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, digits_clip):
    out = tmp_path_factory.mktemp("sae") / "extract"
    code = lucid(
        "sae",
        "extract",
        "--images",
        "digits-test",
        "--layer",
        "0",
        "--tokens",
        "random_k",
        "--k",
        "2",
        "--out",
        out,
        "-q",
    )
    assert code == 0
    return out


def test_the_workflow_from_the_command_line(extracted, tmp_path):
    store = ActivationStore.open(extracted / "store")
    assert len(store) == 2 * 450 and store.d == 64
    assert store.meta["layer"] == "block.0" and store.meta["images"] == "digits-test"

    run = tmp_path / "train"
    assert (
        lucid(
            "sae", "train", "--store", extracted, *TRAIN, "--batch-size", "128", "--out", run, "-q"
        )
        == 0
    )
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 64 and cfg["d_sae"] == 128 and cfg["architecture"] == "batchtopk"
    results = json.loads((run / "results.json").read_text())
    assert results["validation"]["n"] > 0 and (run / "report.html").is_file()

    scored = tmp_path / "score"
    assert (
        lucid(
            "sae",
            "score",
            "--sae",
            run,
            "--store",
            extracted,
            "--hai-k",
            "4",
            "--out",
            scored,
            "-q",
        )
        == 0
    )
    s = json.loads((scored / "results.json").read_text())
    rows = {r["latents"]: r for r in s["monosemanticity"]["pixels"]}
    assert set(rows) == {"sae", "neurons", "random dictionary"}
    assert rows["neurons"]["n all"] + rows["neurons"]["NaN"] == 64
    assert [r["group"] for r in s["hierarchy"]][-1] == "random image sets"

    steered = tmp_path / "steer"
    assert (
        lucid(
            "sae",
            "steer",
            "--sae",
            run,
            "--store",
            extracted,
            "--alphas",
            "0,4",
            "--latents",
            "0,1",
            "--images",
            "digits-test",
            "--out",
            steered,
            "-q",
        )
        == 0
    )
    st = json.loads((steered / "results.json").read_text())
    assert st["latents"] == [0, 1]
    assert {r["arm"] for r in st["rows"]} == {"plain", "SAE only", "alpha 0", "alpha 4"}


def test_training_from_the_store_equals_training_from_the_tensor(extracted):
    store = ActivationStore.open(extracted / "store")
    cfg = SAEConfig(
        kind="topk", d_in=64, expansion=2, k=4, steps=30, batch_size=64, warmup=5, seed=3
    )
    from_store = train(store, cfg, progress=False)
    from_tensor = train(store.to_tensor(), cfg, progress=False)
    for a, b in zip(
        from_store.state_dict().values(), from_tensor.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_train_resume_refuses_a_changed_config(extracted, tmp_path):
    run = tmp_path / "train"
    assert lucid("sae", "train", "--store", extracted, *TRAIN, "--out", run, "-q") == 0
    before = (run / "sae" / "sae_weights.safetensors").read_bytes()
    assert lucid("sae", "train", "--store", extracted, *TRAIN, "--out", run, "--resume", "-q") == 0
    assert (run / "sae" / "sae_weights.safetensors").read_bytes() == before
    assert (
        lucid(
            "sae", "train", "--store", extracted, *TRAIN[:-1], "80", "--out", run, "--resume", "-q"
        )
        == 2
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("extract", "--layer", "7"), "out of range"),
        (("extract", "--images", "{empty}"), "holds no"),
        (("extract", "--tokens", "random_k", "--k", "99"), "k"),
        (("train", "--store", "{missing}"), "does not exist"),
        (("train", "--store", "{store}", "--expansion", "1", "--k", "65"), "larger than"),
        (("train", "--store", "{store}", "--group-fractions", "a,b"), "comma-separated"),
        (("score", "--sae", "{missing}", "--store", "{store}"), "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(extracted, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    fill = {"{empty}": tmp_path / "empty", "{missing}": tmp_path / "nope", "{store}": extracted}
    out = tmp_path / "run"
    code = lucid("sae", *[fill.get(a, a) for a in args], "--out", out, "-q")
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_store_with_mismatched_shards_is_refused(extracted, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(extracted / "store", broken)
    index = json.loads((broken / "index.json").read_text())
    index["d"] = 32
    (broken / "index.json").write_text(json.dumps(index))
    assert lucid("sae", "train", "--store", broken, *TRAIN, "--out", tmp_path / "r", "-q") == 2
    assert "32" in capsys.readouterr().err
    assert np.isfinite(ActivationStore.open(extracted / "store").to_tensor().numpy()).all()
