"""`lucid merging merge | timeline`: real folders in, loadable models and metrics out."""

import json

import pytest
import torch

from lucidml.cli import main
from lucidml.merging import merge
from lucidml.merging.api import shared_trainer
from lucidml.testing import tiny_llama


def lucid(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture
def model_folders(tmp_path):
    """A tiny Llama and two experts: the base plus seeded noise."""
    model, tok = tiny_llama()
    folders = {}
    for i, name in enumerate(("base", "a", "b")):
        if i:
            torch.manual_seed(i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        tok.save_pretrained(folders[name])
        model, tok = tiny_llama()  # each expert is the base plus its own noise
    return folders


def _state(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_merge_from_our_yaml_and_mergekits_gives_one_loadable_model(model_folders, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    f = model_folders
    ours = tmp_path / "ours.yaml"
    ours.write_text(
        f"method: ties\nbase: {f['base']}\n"
        f"models: [{{model: {f['a']}, weight: 0.5}}, {{model: {f['b']}, weight: 0.5}}]\n"
        "parameters: {density: 0.5, merge: weighted_mean}\n"
    )
    mergekit = tmp_path / "mergekit.yaml"
    mergekit.write_text(
        f"merge_method: ties\nbase_model: {f['base']}\nmodels:\n"
        f"  - model: {f['a']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        f"  - model: {f['b']}\n    parameters: {{weight: 0.5, density: 0.5}}\n"
        "parameters: {normalize: true}\ndtype: float32\n"
    )
    assert lucid("merging", "merge", ours, "--out", tmp_path / "m1", "-q") == 0
    assert lucid("merging", "merge", "--config", mergekit, "--out", tmp_path / "m2", "-q") == 0
    one, two = _state(tmp_path / "m1"), _state(tmp_path / "m2")
    assert all(torch.equal(one[k], two[k]) for k in one)
    # the same numbers as the in-memory operator
    expected = merge(
        "ties",
        _state(f["base"]),
        [_state(f["a"]), _state(f["b"])],
        [0.5, 0.5],
        density=0.5,
        merge="weighted_mean",
    )
    assert all(torch.equal(one[k], expected[k]) for k in one)
    AutoModelForCausalLM.from_pretrained(tmp_path / "m1")
    AutoTokenizer.from_pretrained(tmp_path / "m1")
    assert json.loads((tmp_path / "m1" / "merge.json").read_text())["method"] == "ties"


@pytest.mark.parametrize(
    "body, message",
    [
        ("method: nosuch\nmodels: [{a}]\n", "unknown merge method 'nosuch'"),
        ("method: ties\nbase: {base}\nmodels: [{a}]\nparameters: {{density: 1.5}}\n", "density"),
        (
            "merge_method: ties\nbase_model: {base}\nmodels: [{{model: {a}}}]\nslices: []\n",
            "slices",
        ),
        ("method: linear\nmodels: [{a}, {a}]\nweights: [1]\n", "weights"),
        ("method: ties\nbase: {base}\nmodels: [{a}\n", "not valid YAML"),
    ],
)
def test_bad_merge_configs_exit_2_naming_the_problem(
    body, message, model_folders, tmp_path, capsys
):
    f = model_folders
    path = tmp_path / "bad.yaml"
    path.write_text(body.format(base=f["base"], a=f["a"]))
    assert lucid("merging", "merge", path, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_mismatched_experts_and_a_pointless_seed_exit_2(model_folders, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    f = model_folders
    other = tmp_path / "other"
    LlamaForCausalLM(
        LlamaConfig(**{**json.loads((f["a"] / "config.json").read_text()), "hidden_size": 64})
    ).save_pretrained(other)
    path = tmp_path / "c.yaml"
    path.write_text(f"method: task_arithmetic\nbase: {f['base']}\nmodels: [{f['a']}, {other}]\n")
    assert lucid("merging", "merge", path, "--out", tmp_path / "o1") == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: ") and "but [91, 64] in model 2" in err
    path.write_text(f"method: ties\nbase: {f['base']}\nmodels: [{f['a']}, {f['b']}]\n")
    assert lucid("merging", "merge", path, "--seed", 3, "--out", tmp_path / "o2") == 2
    assert "draws nothing" in capsys.readouterr().err


def test_recipes_that_share_an_init_train_each_expert_once():
    calls = []

    def train(init_state, task):
        calls.append(task.name)
        return {k: v + 1 for k, v in init_state.items()}

    class Task:
        def __init__(self, name):
            self.name = name

    shared = shared_trainer(train)
    state = {"w": torch.zeros(2)}
    a = shared(state, Task("t1"))
    b = shared({"w": torch.zeros(2)}, Task("t1"))  # equal weights, another dict
    shared(state, Task("t2"))
    assert calls == ["t1", "t2"] and a is b and shared.n_trained() == 2


@pytest.mark.slow
def test_timeline_writes_metrics_and_resumes(tmp_path):
    cfg = tmp_path / "time.yaml"
    cfg.write_text(
        "adaptation: [invert, rotate90]\nheldout: [zoom_in]\nsteps: 3\nbatch_size: 16\n"
        "recipes:\n  - {init: latest, deploy: latest}\n  - {init: ema0, deploy: ema0}\n"
    )
    out = tmp_path / "run"
    assert lucid("merging", "timeline", "--config", cfg, "--out", out, "-q", "--device", "cpu") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3  # two recipes, t = 0, 1, 2
    results = json.loads((out / "results.json").read_text())["recipes"]
    assert set(results) == {"latest/latest (linear)", "ema0/ema0 (linear)"}
    assert all(0 <= r["final_gm"] <= 1 for r in results.values())
    first = (out / "results.json").read_text()
    # a resumed run restores every step from its checkpoints and gives the same answer
    assert lucid("merging", "timeline", "--config", cfg, "--out", out, "-q", "--resume") == 0
    assert json.loads((out / "results.json").read_text())["recipes"] == json.loads(first)["recipes"]
    assert (
        lucid("merging", "timeline", "--config", cfg, "--out", out, "--resume", "--steps", 4) == 2
    )
