"""rank and score as jobs: configs from the command line, devices, keyed resume, sharding."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from distill_fixtures import run_cli, tiny_rank
from safetensors.torch import save_file

from lucidml.distill import api
from lucidml.distill.config import RankConfig, ScoreConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _capture(monkeypatch, verb: str) -> dict:
    """Replace api.<verb> by a stub that records the config the command built."""
    seen = {}

    def stub(cfg, out=None, resume=False, overwrite=False):
        seen["cfg"] = cfg  # returning None: the command prints nothing more

    monkeypatch.setattr(api, verb, stub)
    return seen


def test_a_config_file_value_is_never_replaced_by_a_default(tmp_path, monkeypatch, capsys):
    seen = _capture(monkeypatch, "rank")
    ev = tiny_rank().eval.updated(num_eval=4, selection="test", seed=7, device="cpu")
    written = RankConfig(
        ipc=3, methods=["random", "dm"], labels="soft", quick=True, eval=ev
    ).updated(distill={"dm_iterations": 5})
    written.to_yaml(tmp_path / "job.yaml")
    assert run_cli(["distill", "rank", "--config", str(tmp_path / "job.yaml")], capsys)[0] == 0
    assert seen["cfg"] == written
    assert seen["cfg"].eval.labels == "soft" and seen["cfg"].eval.loss == "kl"
    # options given on the command line override the file, and only those
    args = ["--config", str(tmp_path / "job.yaml"), "--ipc", "2", "--seed", "9", "--num-eval", "3"]
    assert run_cli(["distill", "rank", *args], capsys)[0] == 0
    assert seen["cfg"] == written.updated(ipc=2).with_eval(seed=9, num_eval=3)


def test_score_config_file_and_preset(tmp_path, monkeypatch, capsys):
    seen = _capture(monkeypatch, "score")
    written = ScoreConfig(images="set.pt", regime="soft", quick=True)
    written.to_yaml(tmp_path / "job.yaml")
    assert run_cli(["distill", "score", "--config", str(tmp_path / "job.yaml")], capsys)[0] == 0
    assert seen["cfg"] == written and seen["cfg"].eval.augment.mix == "cutmix"  # digits-soft
    args = ["--images", "set.pt", "--preset", "digits-hard", "--soft-labels", "z.pt"]
    assert run_cli(["distill", "score", *args], capsys)[0] == 0
    cfg = seen["cfg"]  # stored logits: soft labels in mode S, on the hard preset's recipe
    assert (cfg.regime, cfg.eval.labels, cfg.eval.soft_label_mode) == ("soft", "soft", "S")
    assert cfg.eval.augment.mix == "none"


def test_preset_sets_the_eval_block_and_its_regime(monkeypatch, capsys):
    seen = _capture(monkeypatch, "rank")
    assert run_cli(["distill", "rank", "--preset", "digits-soft"], capsys)[0] == 0
    assert seen["cfg"].labels == "soft" and seen["cfg"].eval.loss == "kl"
    assert run_cli(["distill", "rank", "--labels", "soft"], capsys)[0] == 0
    assert seen["cfg"].eval.augment.mix == "cutmix"  # the digits-soft preset


@NO_CUDA
@pytest.mark.parametrize("command", ["rank", "score", "demo"])
def test_an_unavailable_device_is_one_line_and_writes_nothing(command, digits, tmp_path, capsys):
    images = tmp_path / "set.pt"
    torch.save({"images": digits.train_x[:10], "labels": digits.train_y[:10]}, images)
    extra = {"rank": [], "score": ["--images", str(images)], "demo": ["--quick"]}[command]
    out = tmp_path / "run"
    args = ["distill", command, *extra, "--device", "cuda", "--out", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("error: device 'cuda' is not available") and err.count("\n") == 1
    assert not out.exists()


@NO_CUDA
def test_api_entries_resolve_the_device_first(tmp_path):
    from lucidml.distill.evaluate import Evaluator
    from lucidml.errors import InputError

    with pytest.raises(InputError, match="not available"):
        api.demo(tmp_path / "demo", quick=True, device="cuda")
    with pytest.raises(InputError, match="not available"):
        api.rank(RankConfig().with_eval(device="cuda"), out=tmp_path / "rank")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        Evaluator(None, tiny_rank().eval, device="tpu")
    assert not any(tmp_path.iterdir())


def test_resume_reuses_exactly_the_unchanged_items(tmp_path, capsys):
    tiny_rank().to_yaml(tmp_path / "job.yaml")
    base = ["distill", "rank", "--config", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "r")]

    def rank(*extra):
        code, stdout, err = run_cli([*base, "-q", *extra], capsys)
        assert code == 0, err
        reused, computed = stdout.split("items: ")[1].split(" computed")[0].split(" reused, ")
        results = json.loads((tmp_path / "r" / "results.json").read_text())
        return results, (int(reused), int(computed))

    first, items = rank()
    assert items == (0, 11)  # 3 sets; per run, one cell per set and one random cell
    again, items = rank("--resume")
    assert items == (11, 0) and again["methods"] == first["methods"]
    # other methods: the sets are kept; the groups differ, so the set cells are recomputed
    fewer, items = rank("--resume", "--methods", "random,noise")
    assert sorted(fewer["methods"]) == ["noise", "random"] and items == (4, 4)
    # the contract: rows for exactly the new methods, in every output
    assert sorted(row["method"] for row in fewer["leaderboard"]) == ["noise", "random"]
    runs = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    assert sorted(set(runs["method"])) == ["noise", "random"] and len(runs) == 4
    # one more run: the first two runs' cells are reused (their keys omit num_eval)
    more, items = rank("--resume", "--num-eval", "3")
    assert items == (11, 4)
    for name, result in first["methods"].items():
        assert more["methods"][name]["runs"][:2] == result["runs"]
    # another seed changes every set and every cell
    assert rank("--resume", "--seed", "1")[1] == (0, 11)
    # without --resume a non-empty folder is refused; --overwrite starts it fresh
    code, _, err = run_cli([*base, "-q"], capsys)
    assert code == 2 and "is not empty; pass --resume" in err
    assert rank("--overwrite")[1] == (0, 11)


@pytest.mark.parametrize(
    "make,args,message",
    [
        ("truncated", ["score", "--images", "{path}"], "cannot read tensor file"),
        ("mixed", ["rank", "--dataset", "{path}"], "images of different sizes"),
        ("broken_png", ["rank", "--dataset", "{path}"], "cannot read image"),
    ],
)
def test_damaged_inputs_are_one_sentence(make, args, message, digits, tmp_path, capsys):
    from PIL import Image

    if make == "truncated":
        path = tmp_path / "set.safetensors"
        save_file({"images": digits.train_x[:10].contiguous(), "labels": digits.train_y[:10]}, path)
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path = tmp_path / "folder"
        for split in ("train", "test"):
            for i, size in enumerate((8, 16)):
                (path / split / "zero").mkdir(parents=True, exist_ok=True)
                Image.new("L", (size, size)).save(path / split / "zero" / f"{i}.png")
        if make == "broken_png":  # equal sizes, but one file cut short
            Image.new("L", (8, 8)).save(path / "train" / "zero" / "1.png")
            png = path / "train" / "zero" / "1.png"
            png.write_bytes(png.read_bytes()[:20])
    out = tmp_path / "run"
    argv = ["distill", *(a.format(path=path) for a in args), "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


# --- subprocesses: several processes, and a kill in the middle of a run -------------------


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "lucidml", "distill", "rank", *map(str, args), "-q"]


def _env() -> dict:
    # CPU only, one thread per process: the numbers must not depend on the process count
    return os.environ | {"CUDA_VISIBLE_DEVICES": "", "LUCID_THREADS": "1"}


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tmp_path):
    tiny_rank().to_yaml(tmp_path / "job.yaml")
    sharded, single = tmp_path / "two", tmp_path / "one"
    # accelerate's --cpu flag starts one process; --multi_gpu without GPUs runs gloo on CPUs
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "-m", "lucidml", "distill", "rank"]
    subprocess.run(
        [*launch, "--config", str(tmp_path / "job.yaml"), "--out", str(sharded), "-q"],
        env=_env(),
        check=True,
        timeout=300,
    )
    # the sharded run's own config.yaml reproduces it in one process
    subprocess.run(
        _cli("--config", sharded / "config.yaml", "--out", single), env=_env(), check=True
    )
    two, one = (json.loads((p / "results.json").read_text()) for p in (sharded, single))
    assert two["env"]["processes"] == 2 and one["env"]["processes"] == 1
    assert two["leaderboard"] == one["leaderboard"] and two["methods"] == one["methods"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_leaderboard(tmp_path, capsys):
    cfg = tiny_rank(num_eval=4, epochs=20)
    cfg.to_yaml(tmp_path / "job.yaml")
    out = tmp_path / "killed"
    job = subprocess.Popen(
        _cli("--config", tmp_path / "job.yaml", "--out", out), env=_env(), start_new_session=True
    )
    deadline = time.time() + 120
    while not list((out / "cells").glob("*.json")) and job.poll() is None:
        assert time.time() < deadline, "no cell was written in 120 s"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (out / "results.json").exists(), "the run ended before it could be killed"
    code, stdout, _ = run_cli(
        ["distill", "rank", "--config", str(tmp_path / "job.yaml"), "--out", str(out)]
        + ["--resume", "-q"],
        capsys,
    )
    assert code == 0 and "items: 0 reused" not in stdout
    resumed = json.loads((out / "results.json").read_text())
    api.rank(cfg, out=tmp_path / "whole")
    uninterrupted = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["leaderboard"] == uninterrupted["leaderboard"]
    assert resumed["methods"] == uninterrupted["methods"]
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(cells) == 4 * (3 + 1) and not [c for c in cells if c.startswith(".")]
    assert len({c.rsplit("-", 1)[0] for c in cells}) == len(cells)  # one file per item
    assert sorted(Path(p).name for p in (out / "sets").iterdir()) == sorted(
        Path(p).name for p in resumed["sets"].values()
    )
