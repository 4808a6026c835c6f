import json
import re

import pytest
import yaml

from lucidml.chunking.corpus import everyday_sentences
from lucidml.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama over the corpus words, saved like any local Hugging Face model folder."""
    from lucidml.testing import tiny_llama

    words = sorted({w for s in everyday_sentences(400) for w in re.findall(r"\w+", s.lower())})
    model, tok = tiny_llama(words=[*words, ".", "?", ","], hidden_size=32, num_layers=3)
    path = tmp_path_factory.mktemp("tiny-llm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_rnn_command_writes_results_and_report(tmp_path, capsys):
    code, out, err = run(
        ["chunking", "rnn", "--regime", "one_chunk", "--iters", "60", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 0 and "report:" in out and "training the RNN" in err
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["regime"] == "one_chunk" and res["sequence_length"] == 10_000  # record_length
    assert (tmp_path / "report.html").is_file() and (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "one_chunk_states.png").is_file()
    code, _, err = run(
        ["chunking", "rnn", "--iters", "5", "--quiet", "--out", str(tmp_path / "q")], capsys
    )
    assert code == 0 and err == ""


def test_pa_graft_ucd_commands_on_a_local_model(tiny_model_dir, tmp_path, capsys):
    m = str(tiny_model_dir)
    test_sents = [s.replace(",", "") for s in everyday_sentences(60, seed=7)]
    test_text = tmp_path / "test.txt"
    test_text.write_text(" ".join(test_sents))
    code, _, err = run(
        [
            "chunking",
            "pa",
            "--model",
            m,
            "--word",
            "coffee",
            "--layers",
            "0,1,3",
            "--steps",
            "0,1",
            "--test-text",
            str(test_text),
            "--out",
            str(tmp_path / "pa"),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "pa" / "results.json").read_text())
    assert {(r["step"], r["layer"]) for r in res["rows"]} == {
        (s, ell) for s in (0, 1) for ell in (0, 1, 3)
    }
    # the embedding of the word's token is the same everywhere: index 0 detects it exactly
    row0 = next(r for r in res["rows"] if (r["step"], r["layer"]) == (0, 0))
    assert row0["tpr"] == 1.0 and row0["fpr"] == 0.0
    n_test = sum(s.lower().split().count("coffee") for s in test_sents)  # one token each
    assert row0["n_pos"] == n_test and row0["tpr_low"] < 1.0 == row0["tpr_high"]
    ident = next(r for r in res["baselines"]["token_identity"] if r["step"] == 0)
    assert (ident["tpr"], ident["fpr"], ident["n_pos"]) == (1.0, 0.0, n_test)
    assert {"mean_difference", "logistic_probe"} <= set(res["baselines"])
    assert res["n_test_sentences"] == len(test_sents)
    assert (tmp_path / "pa" / "templates" / "templates.safetensors").is_file()

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("my sister drinks\nthe dog sleeps in the\n")
    code, _, err = run(
        [
            "chunking",
            "graft",
            "--model",
            m,
            "--word",
            "coffee",
            "--prompts",
            str(prompts),
            "--templates",
            str(tmp_path / "pa" / "templates"),
            "--layers",
            "1",
            "--mode",
            "add",
            "--strength",
            "0.25",
            "--strengths",
            "0,0.5",
            "--positions",
            "all",
            "--every-step",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "graft"),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "graft" / "results.json").read_text())
    assert res["n_prompts"] == 2 and res["env"]["device"] == "cpu"
    for key in ("word_rate", "word_rate_control", "mcnemar_p", "perplexity", "perplexity_control"):
        assert key in res
    assert [r["strength"] for r in res["sweep"]] == [0.0, 0.25, 0.5]
    zero = res["sweep"][0]  # strength 0 is the identity: the control's texts and numbers
    assert zero["word_rate"] == zero["word_rate_control"] and zero["mcnemar_p"] == 1.0
    assert zero["perplexity"] == pytest.approx(zero["perplexity_control"])
    assert (res["mode"], res["positions"], res["every_step"]) == ("add", "all", True)
    code, _, err = run(
        ["chunking", "graft", "--model", m, "--word", "coffee", "--prompts", str(prompts)]
        + ["--templates", str(tmp_path / "pa" / "templates"), "--layers", "1", "--mode"]
        + ["replace", "--positions", "-2,-1", "--prompt-only", "--max-new-tokens", "2"]
        + ["--out", str(tmp_path / "replace")],
        capsys,
    )
    assert code == 0, err
    saved = (tmp_path / "replace" / "config.yaml").read_text()
    assert "positions:\n- -2\n- -1" in saved and "every_step: false" in saved

    code, _, err = run(
        [
            "chunking",
            "ucd",
            "--model",
            m,
            "--chunks",
            "8",
            "--epochs",
            "2",
            "--layers",
            "2",
            "--out",
            str(tmp_path / "ucd"),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "ucd" / "results.json").read_text())
    row = res["layers"][0]
    assert row["layer"] == 2 and row["test_loss"] < 0
    # k-means with the same K and the single mean direction, on the same held-out states
    assert row["kmeans_test_loss"] < 0 and row["one_chunk_test_loss"] < 0
    assert row["one_chunk_test_loss"] >= row["kmeans_test_loss"] - 1e-6
    assert row["n_test_states"] > 0 and len(row["test_loss_ci"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["rnn", "--regime", "r9"], "regime"),
        (["pa", "--word", "zebra"], "'zebra' occurs 0 times"),
        (["pa", "--word", "coffee", "--layers", "0,7"], "layer 7 is out of range"),
        (["pa", "--word", "coffee", "--text", "SHORT"], "too short"),
        (["pa", "--word", "coffee", "--text", "MISSING"], "does not exist"),
        (["graft", "--word", "coffee", "--prompts", "MISSING"], "does not exist"),
        (["graft", "--word", "coffee", "--prompts", "LATIN1"], "is not UTF-8 text"),
        (["pa", "--word", "coffee", "--test-text", "LATIN1"], "is not UTF-8 text"),
        (["graft", "--word", "coffee", "--templates", "TRUNCATED"], "not a readable safetensors"),
        (["graft", "--word", "coffee", "--templates", "NO_LIST"], "has no 'templates' list"),
        (["graft", "--word", "coffee", "--templates", "WIDE"], "come from another model"),
        (["graft", "--word", "coffee", "--positions", "-500"], "beyond the shortest prompt"),
        (["graft", "--word", "coffee", "--positions", "first"], "--positions"),
        (["graft", "--word", "coffee", "--strength", "-1"], "strength"),
        (["ucd", "--chunks", "100000"], "exceeds"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args, message, tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("I drink coffee. You drink coffee.")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 au lait.\n".encode("latin-1"))
    folders = {
        name: _bank(tmp_path / name.lower(), 16 if name == "WIDE" else 32)
        for name in ("TRUNCATED", "NO_LIST", "WIDE")
    }
    data = folders["TRUNCATED"] / "templates.safetensors"
    data.write_bytes(data.read_bytes()[:20])
    (folders["NO_LIST"] / "templates.json").write_text('{"info": {}}')
    named = {"SHORT": short, "MISSING": tmp_path / "nope.txt", "LATIN1": latin1, **folders}
    args = [str(named[a]) if a in named else a for a in args]
    if args[0] == "graft":
        args += ["--layers", "1"]
    if args[0] != "rnn":
        args += ["--model", str(tiny_model_dir)]
    out = tmp_path / "run"
    code, _, err = run(["chunking", *args, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def _bank(folder, width: int):
    """A template bank of 'coffee' at (step 0, layer 1) with the given width."""
    import numpy as np
    import torch

    from lucidml.chunking import pa

    t = pa.Template(
        mask=torch.ones(width, dtype=torch.bool),
        mean=torch.zeros(width),
        theta=1.0,
        tau=1.0,
        train_positions=np.array([0]),
        n_occurrences=10,
        contrast=torch.ones(width),
    )
    bank = pa.TemplateBank(info={})
    bank[("coffee", 0, 1)] = t
    return bank.save(folder)


def test_unknown_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        [
            "chunking",
            "pa",
            "--model",
            "no-such-model-xyz",
            "--word",
            "coffee",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "model 'no-such-model-xyz' is not" in err
    assert not (tmp_path / "run").exists()


def _item(folder, prefix):
    (path,) = (folder / "items").glob(f"{prefix}-*.json")
    return path


def test_ucd_resume_reuses_finished_layers_and_checks_the_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ucd"
    args = [
        "chunking",
        "ucd",
        "--model",
        str(tiny_model_dir),
        "--chunks",
        "4",
        "--epochs",
        "1",
        "--layers",
        "1",
        "--out",
        str(out),
    ]
    assert run(args, capsys)[0] == 0
    item = _item(out, "ucd-layer1")
    row = json.loads(item.read_text())
    item.write_text(json.dumps({**row, "test_loss": -0.123}))  # a marker only the item holds
    assert run([*args, "--resume"], capsys)[0] == 0
    assert json.loads((out / "results.json").read_text())["layers"][0]["test_loss"] == -0.123
    stored = (out / "config.yaml").read_text()
    code, _, err = run([*args[:-2], "--chunks", "5", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "it was run with n_chunks = 4, this command has n_chunks = 5" in err
    # another corpus is refused too, and refusals rewrite nothing
    text = tmp_path / "other.txt"
    text.write_text(" ".join(everyday_sentences(300, seed=1)))
    code, _, err = run([*args, "--resume", "--text", str(text)], capsys)
    assert code == 2 and "other inputs (text)" in err, err
    assert (out / "config.yaml").read_text() == stored
    # a text file edited between the run and its resume is caught by its fingerprint
    on_file = [*args[:-1], str(tmp_path / "ucd2"), "--text", str(text)]
    assert run(on_file, capsys)[0] == 0
    text.write_text(" ".join(everyday_sentences(300, seed=2)))
    code, _, err = run([*on_file, "--resume"], capsys)
    assert code == 2 and "its input text differs (other.txt has changed since)" in err, err


def test_pa_resume_recomputes_only_missing_layers(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pa"
    args = ["chunking", "pa", "--model", str(tiny_model_dir), "--word", "coffee"]
    args += ["--layers", "1,2", "--steps", "0,1", "--out", str(out)]
    assert run(args, capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())
    bank_before = (out / "templates" / "templates.json").read_text()
    done = _item(out, "pa-layer2")
    marked = json.loads(done.read_text())
    marked["rows"][0]["tpr"] = 0.123  # a marker only the finished item holds
    done.write_text(json.dumps(marked))
    _item(out, "pa-layer1").unlink()  # as if the run was killed before layer 1 finished
    assert run([*args, "--resume"], capsys)[0] == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["step"], r["layer"]) for r in res["rows"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert next(r for r in res["rows"] if (r["step"], r["layer"]) == (0, 2))["tpr"] == 0.123
    again = [r for r in res["rows"] if r["layer"] == 1]
    assert again == [r for r in first["rows"] if r["layer"] == 1]  # recomputed, same numbers
    assert (out / "templates" / "templates.json").read_text() == bank_before


def test_graft_resume_reuses_the_arms(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "graft"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("my sister drinks\nthe dog sleeps in the\n")
    args = ["chunking", "graft", "--model", str(tiny_model_dir), "--word", "coffee"]
    args += ["--prompts", str(prompts), "--layers", "1", "--max-new-tokens", "3"]
    args += ["--strength", "0.25", "--out", str(out)]
    assert run(args, capsys)[0] == 0
    arm = {"texts": ["coffee", "coffee"], "perplexity": [2.0, 2.0]}  # only the item says so
    _item(out, "graft-s0.25").write_text(json.dumps(arm))
    assert run([*args, "--resume"], capsys)[0] == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["word_rate"], res["perplexity"]) == (1.0, 2.0)


@pytest.mark.parametrize("command", ["rnn", "pa", "graft", "ucd", "demo"])
def test_an_unavailable_device_is_one_line_and_writes_nothing(command, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "run"
    extra = ["--word", "coffee"] if command in ("pa", "graft") else []
    code, _, err = run(["chunking", command, *extra, "--device", "cuda", "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: device 'cuda' is not available")
    assert err.count("\n") == 1 and not out.exists()
    code, _, err = run(["chunking", command, *extra, "--device", "gpu0", "--out", str(out)], capsys)
    assert code == 2 and "unknown device 'gpu0'" in err and not out.exists()


def test_a_config_file_value_is_never_replaced_by_a_default(tmp_path, capsys):
    cfg = tmp_path / "rnn.yaml"
    cfg.write_text(
        "regime: one_chunk\nn_iters: 7\nwindow: 30\nrecord_length: null\nseed: 3\ndevice: cpu\n"
    )
    assert (
        run(["chunking", "rnn", "--config", str(cfg), "--out", str(tmp_path / "a")], capsys)[0] == 0
    )
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert (saved["n_iters"], saved["window"], saved["seed"], saved["device"]) == (7, 30, 3, "cpu")
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["sequence_length"] == 30 and res["env"]["seed"] == 3
    assert (res["env"]["device"], res["env"]["threads"]) == ("cpu", 1)
    # an option given on the command line overrides the file
    args = ["chunking", "rnn", "--config", str(cfg), "--iters", "2", "--seed", "4"]
    assert run([*args, "--out", str(tmp_path / "b")], capsys)[0] == 0
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert (saved["n_iters"], saved["window"], saved["seed"]) == (2, 30, 4)


def test_pa_takes_its_word_and_fields_from_a_config_file(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "pa.yaml"
    cfg.write_text(
        f"word: coffee\nmodel: {tiny_model_dir}\nlayers: [1]\nsteps: [0]\nn_train: 3\n"
        "validation_fraction: 0.25\n"
    )
    out = tmp_path / "pa"
    assert run(["chunking", "pa", "--config", str(cfg), "--out", str(out)], capsys)[0] == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["n_train"], saved["validation_fraction"], saved["device"]) == (3, 0.25, "auto")
    assert json.loads((out / "results.json").read_text())["env"]["device"] == "cpu"
    code, _, err = run(["chunking", "pa", "--out", str(tmp_path / "no")], capsys)
    assert code == 2 and "--word is required" in err


def test_the_demo_runs_every_section_on_a_small_plan(tiny_model_dir, tmp_path):
    from lucidml.chunking import api

    plan = api.DemoPlan(
        regimes={"one_chunk": dict(n_iters=20, record_length=300)},
        n_sentences=300,
        layer_stride=2,
        pa_words=("coffee", "dog"),
        graft_words=("coffee",),
        max_new_tokens=3,
        ucd_chunks=4,
        ucd_epochs=2,
        graft_layers=(1, 2),
        model=str(tiny_model_dir),
    )
    report = api.run_demo(tmp_path / "demo", plan, device="cpu", quick=True)
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert list(res["rnn"]) == ["one_chunk"] and set(res["pa"]) == {"coffee", "dog"}
    assert {r["layer"] for r in res["pa"]["dog"]["rows"]} == {
        0,
        1,
        2,
    }  # 0, 2 by stride; 1, 2 grafted
    assert [g["word"] for g in res["graft"]] == ["coffee"]
    assert res["ucd"][0]["layer"] == 1 and res["env"]["device"] == "cpu"
    assert report.is_file()
    text = (tmp_path / "demo" / "report.md").read_text()
    for heading in ("RNN regime: one_chunk", "PA templates for 'dog'", "Grafting effect"):
        assert heading in text
    assert "Unsupervised chunk discovery" in text
    # the quick plan is a subset of the full one, section by section
    assert set(api.QUICK.regimes) <= set(api.FULL.regimes)
    assert api.QUICK.n_sentences <= api.FULL.n_sentences
    assert set(api.QUICK.graft_words) <= set(api.FULL.graft_words)
