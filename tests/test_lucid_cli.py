import subprocess
import sys
from pathlib import Path

import pytest

from lucidml.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_version_and_help(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("lucidml ")
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "tour" in out and "info" in out


def test_info_lists_embedded_defaults_and_systems(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0
    for name in ("smollm2-135m-instruct", "minilm-l6", "digits-clip", "uncertainty"):
        assert name in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--bogus"], "No such option: --bogus"),
        (["tour", "--out", "/proc/nope"], "cannot write the output folder /proc/nope"),
        (["tour", "--only", "nosuch"], "unknown system 'nosuch'"),
        (["nosuch"], "No such command"),
        (["--threads", "0", "info"], "threads must be at least 1, got 0"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, args, message):
    code, _, err = run(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_console_entry_point_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "lucidml", "info", "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tour_core_writes_index(tmp_path, capsys):
    code, out, _ = run(["tour", "--quick", "--only", "core", "--out", str(tmp_path)], capsys)
    assert code == 0
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "core" / "report.html").is_file()
    assert str(tmp_path / "index.html") in out


def test_threads_option_sets_torch_threads(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        code, _, _ = run(["--threads", "1", "info"], capsys)
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_an_unexpected_error_is_an_internal_error_with_a_traceback_file(
    capsys, monkeypatch, tmp_path
):
    from lucidml.core import zoo

    monkeypatch.setenv("LUCID_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(zoo, "available", _boom)
    code, _, err = run(["info"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: internal error: RuntimeError: boom second line (traceback: ")
    path = err.split("(traceback: ")[1].rstrip(")\n")
    assert path.startswith(str(tmp_path / "home" / "errors"))
    text = Path(path).read_text()
    assert "Traceback (most recent call last)" in text and "_boom" in text


def test_the_traceback_goes_into_the_run_folder_when_there_is_one(capsys, monkeypatch, tmp_path):
    import lucidml.tour
    from lucidml.core.runs import make_run_dir

    def failing_tour(out, **kwargs):
        make_run_dir("tour", out)
        raise KeyError("missing")

    monkeypatch.setattr(lucidml.tour, "run_tour", failing_tour)
    code, _, err = run(["tour", "--out", str(tmp_path / "t")], capsys)
    assert code == 1 and "internal error: KeyError: 'missing'" in err
    assert (tmp_path / "t" / "traceback.txt").is_file()
    assert f"(traceback: {tmp_path / 't' / 'traceback.txt'})" in err


def test_lucid_debug_lets_the_exception_through(capsys, monkeypatch):
    from lucidml.core import zoo

    monkeypatch.setenv("LUCID_DEBUG", "1")
    monkeypatch.setattr(zoo, "available", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        main(["info"])


def test_tour_rejects_an_unavailable_device_before_writing(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run(["tour", "--device", "cuda", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and err.count("\n") == 1 and "device 'cuda' is not available" in err
    assert not (tmp_path / "t").exists()
