import json
import re

import pytest

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
    assert res["regime"] == "one_chunk" and res["sequence_length"] == 200
    assert (tmp_path / "report.html").is_file() and (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "one_chunk_states.png").is_file()
    code, _, err = run(
        ["chunking", "rnn", "--iters", "5", "--quiet", "--out", str(tmp_path / "q")], capsys
    )
    assert code == 0 and err == ""


def test_pa_graft_ucd_commands_on_a_local_model(tiny_model_dir, tmp_path, capsys):
    m = str(tiny_model_dir)
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
            "--positions",
            "-2,-1",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "graft"),
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "graft" / "results.json").read_text())
    assert res["n_prompts"] == 2 and 0.0 <= res["graft_rate"] <= 1.0
    saved = (tmp_path / "graft" / "config.yaml").read_text()
    assert "positions:\n- -2\n- -1" in saved

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
    assert res["layers"][0]["layer"] == 2 and res["layers"][0]["test_loss"] < 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["rnn", "--regime", "r9"], "regime"),
        (["pa", "--word", "zebra"], "'zebra' occurs 0 times"),
        (["pa", "--word", "coffee", "--layers", "0,7"], "layer 7 is out of range"),
        (["pa", "--word", "coffee", "--text", "SHORT"], "too short"),
        (["pa", "--word", "coffee", "--text", "MISSING"], "does not exist"),
        (["graft", "--word", "coffee", "--prompts", "MISSING"], "does not exist"),
        (["ucd", "--chunks", "100000"], "exceeds"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args, message, tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("I drink coffee. You drink coffee.")
    args = [
        str(short) if a == "SHORT" else str(tmp_path / "nope.txt") if a == "MISSING" else a
        for a in args
    ]
    if args[0] != "rnn":
        args += ["--model", str(tiny_model_dir)]
    out = tmp_path / "run"
    code, _, err = run(["chunking", *args, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


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
    assert code == 2 and "unknown model 'no-such-model-xyz'" in err
    assert not (tmp_path / "run").exists()


def test_ucd_resume_reuses_finished_layers_and_checks_the_config(tiny_model_dir, tmp_path, capsys):
    import torch

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
    ckpt = out / "checkpoints" / "ucd_layer1.pt"
    row = torch.load(ckpt, weights_only=False)
    torch.save({**row, "test_loss": -0.123}, ckpt)  # a marker only the checkpoint holds
    assert run([*args, "--resume"], capsys)[0] == 0
    assert json.loads((out / "results.json").read_text())["layers"][0]["test_loss"] == -0.123
    code, _, err = run([*args[:-2], "--chunks", "5", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "different config" in err
