"""`lucid bias prompts | generate | detect | analyze`: the pipeline on the simulated model,
resume after a crash, two tiny diffusion pipelines as two models, and bad input."""

import json

import pandas as pd
import pytest
import torch

from lucidml.bias.generate import DiffusersModel, generate, plan_units
from lucidml.bias.prompts import default_prompts
from lucidml.cli import main
from lucidml.errors import InputError
from lucidml.testing import tiny_sd_pipeline

GEN = ("--models", "simulated,simulated-amplified", "--n-prompts", "6", "--per-prompt", "12")


def lucid(*args):
    try:
        main(["--threads", "1", *[str(a) for a in args]])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias") / "gen"
    assert lucid("bias", "generate", *GEN, "--out", out, "-q") == 0
    return out


def test_the_pipeline_from_the_command_line(generated, tmp_path):
    manifest = pd.read_parquet(generated / "metadata.parquet")
    assert len(manifest) == 2 * 6 * 12 and manifest["image_id"].is_unique
    assert manifest["seed"].is_unique
    assert (manifest.groupby(["model", "prompt_id"]).size() == 12).all()

    det = tmp_path / "det"
    assert (
        lucid("bias", "detect", "--images", generated, "--labeller", "shape", "--out", det, "-q")
        == 0
    )
    records = pd.read_parquet(det / "records.parquet")
    assert len(records) == len(manifest) and {"labels", "n_female", "n_male"} <= set(records)

    ana = tmp_path / "ana"
    assert (
        lucid(
            "bias",
            "analyze",
            "--records",
            det,
            "--embedder",
            "tfidf",
            "--n-min",
            "3",
            "--out",
            ana,
            "-q",
        )
        == 0
    )
    results = json.loads((ana / "results.json").read_text())
    assert {r["model"] for r in results["overall"]} == {"simulated", "simulated-amplified"}
    stats = pd.read_parquet(ana / "prompt_stats.parquet")
    assert list(stats.columns[:8]) == [
        "model",
        "prompt_id",
        "n_female",
        "n_male",
        "female_ratio",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    assert (ana / "report.html").is_file()


def test_a_killed_generation_resumes_with_the_same_bytes_and_no_duplicates(generated, tmp_path):
    import shutil

    run = tmp_path / "gen"
    shutil.copytree(generated, run)
    manifest = pd.read_parquet(run / "metadata.parquet")
    victim = manifest.iloc[40]
    before = (run / victim["path"]).read_bytes()
    # a kill mid-unit: the unit's part file and some of its images are missing
    parts = sorted((run / "parts").rglob("*.parquet"))
    unit_part = next(
        p
        for p in parts
        if victim["prompt_id"] in p.name
        and p.name.endswith(f"-v{victim['variation']}.parquet")
        and victim["model"].replace("/", "--") in str(p)
    )
    unit_part.unlink()
    (run / victim["path"]).unlink()
    (run / "metadata.parquet").unlink()
    assert lucid("bias", "generate", *GEN, "--out", run, "--resume", "-q") == 0
    again = pd.read_parquet(run / "metadata.parquet")
    pd.testing.assert_frame_equal(again, manifest)
    assert (run / victim["path"]).read_bytes() == before
    assert len(list((run / "images").rglob("*.png"))) == len(manifest)


def test_two_tiny_diffusion_pipelines_act_as_two_models(tmp_path):
    torch.set_num_threads(1)
    prompts = default_prompts()
    prompts = prompts[prompts["prompt_id"].isin(prompts["prompt_id"].unique()[:2])]
    pipes = {"tiny-a": tiny_sd_pipeline(seed=0), "tiny-b": tiny_sd_pipeline(seed=1)}

    def load(name):
        return DiffusersModel(pipes[name], name, steps=2, size=32)

    manifest = generate(prompts, list(pipes), 4, tmp_path, load, batch_size=4)
    units = plan_units(prompts, list(pipes), 4)
    counts = manifest.groupby(["model", "prompt_id", "variation"]).size()
    assert sum(u.count for u in units) == len(manifest) == 2 * 2 * 4
    for u in units:
        assert counts[(u.model, u.prompt_id, u.variation)] == u.count
    assert manifest["seed"].is_unique
    # two model names that one image folder would hold would mix their images
    with pytest.raises(InputError, match="'org/model' and 'org--model' would share"):
        plan_units(prompts, ["org/model", "org--model"], 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (("generate", "--prompts", "{gendered}"), "gendered"),
        (
            ("generate", "--models", "no-such/model", "--n-prompts", "1", "--per-prompt", "1"),
            "no-such/model",
        ),
        (("detect", "--images", "{nometa}"), "no generation manifest"),
        (("detect", "--images", "{badcols}"), "lacks the column"),
        (("analyze", "--records", "{nometa}"), "no detection records"),
        (("prompts", "--prompts", "{gendered}"), "gendered"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, args, message):
    gendered = tmp_path / "p.csv"
    gendered.write_text("prompt_id,text,category\nx,a woman cooking,activity\n")
    (tmp_path / "nometa").mkdir()
    badcols = tmp_path / "badcols"
    badcols.mkdir()
    pd.DataFrame({"model": ["m"]}).to_parquet(badcols / "metadata.parquet")
    fill = {"{gendered}": gendered, "{nometa}": tmp_path / "nometa", "{badcols}": badcols}
    out = tmp_path / "run"
    code = lucid("bias", *[fill.get(a, a) for a in args], "--out", out, "-q")
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_an_unreadable_image_is_one_sentence(generated, tmp_path, capsys):
    import shutil

    run = tmp_path / "gen"
    shutil.copytree(generated, run)
    first = pd.read_parquet(run / "metadata.parquet").iloc[0]["path"]
    (run / first).write_bytes(b"not a png")
    assert (
        lucid(
            "bias", "detect", "--images", run, "--labeller", "shape", "--out", tmp_path / "d", "-q"
        )
        == 2
    )
    assert "cannot be read" in capsys.readouterr().err
