import json

import pytest

from lucidml.cli import main
from lucidml.editing import api


def lucid(*args):
    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0


def test_parse_and_build_in_two_commands(tmp_path, capsys):
    snaps = api.embedded_snapshots()
    assert lucid("editing", "parse", "--dump", str(snaps[0]), "--out", str(tmp_path / "a")) == 0
    assert (tmp_path / "a" / "triples.parquet").is_file()
    code = lucid(
        "editing",
        "build",
        "--old",
        str(tmp_path / "a"),
        "--new",
        str(snaps[1]),
        "--new",
        str(snaps[2]),
        "--out",
        str(tmp_path / "bench"),
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "timestep 0:" in out and "timestep 1:" in out
    manifest = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert len(manifest["timesteps"]) == 2


def test_bad_inputs_exit_2_with_one_sentence(tmp_path, capsys, tiny_lm):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "Q1"}\n{"id": \n')
    cases = [
        (
            (
                "editing",
                "parse",
                "--dump",
                str(tmp_path / "missing.json"),
                "--out",
                str(tmp_path / "o1"),
            ),
            "does not exist",
        ),
        (("editing", "parse", "--dump", str(bad), "--out", str(tmp_path / "o2")), "line 2"),
        (
            (
                "editing",
                "build",
                "--old",
                str(tmp_path),
                "--new",
                str(tmp_path),
                "--out",
                str(tmp_path / "o3"),
            ),
            "not a parsed snapshot",
        ),
        (
            ("editing", "run", "--method", "wise", "--out", str(tmp_path / "o4")),
            "unknown editing method 'wise'",
        ),
        (
            ("editing", "run", "--benchmark", str(tmp_path), "--out", str(tmp_path / "o5")),
            "not a benchmark folder",
        ),
        (("editing", "run", "--hparam", "rank", "--out", str(tmp_path / "o6")), "key=value"),
    ]
    for args, message in cases:
        assert lucid(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not any((tmp_path / f"o{i}").exists() for i in (2, 3, 4, 5, 6))
    assert (
        lucid(
            "editing",
            "parse",
            "--dump",
            str(bad),
            "--skip-bad-lines",
            "--out",
            str(tmp_path / "ok"),
        )
        == 0
    )
    assert "1 malformed lines skipped" in capsys.readouterr().out

    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    assert (
        lucid(
            "editing",
            "run",
            "--method",
            "rome",
            "--hparam",
            "layer=40",
            "--model",
            str(tmp_path / "tiny"),
            "--out",
            str(tmp_path / "o7"),
        )
        == 2
    )
    assert "no layer 40" in capsys.readouterr().err
    assert not (tmp_path / "o7").exists()


def test_run_on_tiny_model_then_resume(tmp_path, capsys, tiny_lm):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    args = (
        "editing",
        "run",
        "--method",
        "lora_merge",
        "--model",
        str(tmp_path / "tiny"),
        "--max-edits",
        "3",
        "--hparam",
        "epochs=1",
        "--out",
        str(tmp_path / "run"),
    )
    assert lucid(*args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["timesteps"]) == 2 and len(results["R"][1]) == 2
    assert (tmp_path / "run" / "report.html").is_file()
    assert lucid(*args) == 2
    assert "--resume" in capsys.readouterr().err
    assert lucid(*args, "--resume") == 0


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag, capsys):
    assert lucid("editing", flag) == 0
    assert "demo" in capsys.readouterr().out
