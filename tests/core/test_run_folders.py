"""Run folders: who may write where, and what a resume must match (``core.runs.claim``)."""

import logging
import os
import stat
import subprocess
import sys
import time

import pytest
import yaml

from lucidml.core import runs, zoo
from lucidml.core.config import Config
from lucidml.errors import InputError


class Job(Config):
    lr: float = 0.1
    steps: int = 3
    device: str = "cpu"
    nested: dict = {"a": 1}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_two_runs_in_one_second_get_two_folders_readable_by_everyone(
    monkeypatch, tmp_path, umask_022
):
    monkeypatch.setenv("LUCID_RUNS", str(tmp_path))
    first, second = runs.Run("core", config=Job()), runs.Run("core", config=Job())
    assert first.path != second.path
    assert first.path.name[:15] == second.path.name[:15]  # the same second, another suffix
    written = first.write_results({"ok": 1})
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((first / "config.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o755
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o755


def test_a_new_run_needs_an_empty_folder_and_overwrite_empties_only_runs(tmp_path):
    out = tmp_path / "run"
    runs.Run("core", out, Job()).write_results({"old": True})
    with pytest.raises(InputError, match="is not empty; pass --resume .* or --overwrite"):
        runs.Run("core", out, Job())
    runs.Run("core", out, Job(steps=5), overwrite=True)
    assert not (out / "results.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 5
    # a folder of someone's files is never emptied
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="holds files but no run"):
        runs.Run("core", mine, Job(), overwrite=True)
    assert (mine / "thesis.tex").read_text() == "precious"
    # an empty or missing folder is fine
    (tmp_path / "empty").mkdir()
    runs.Run("core", tmp_path / "empty", Job())
    runs.Run("core", tmp_path / "new" / "deep", Job())


def test_resume_names_the_first_differing_field_and_rewrites_nothing(tmp_path):
    out = tmp_path / "run"
    runs.Run("core", out, Job())
    stored = (out / "config.yaml").read_bytes()
    with pytest.raises(InputError, match="it was run with steps = 3, this command has steps = 4"):
        runs.Run("core", out, Job(steps=4), resume=True)
    with pytest.raises(InputError, match=r"nested\.a = 1, this command has nested\.a = 2"):
        runs.Run("core", out, Job(nested={"a": 2}), resume=True)
    assert (out / "config.yaml").read_bytes() == stored
    runs.Run("core", out, Job(device="cuda"), resume=True)  # the device may change
    runs.Run("core", out, Job(), resume=True)
    with pytest.raises(InputError, match="--resume needs --out"):
        runs.Run("core", None, Job(), resume=True)


def test_resume_checks_the_inputs_by_content_or_by_size_and_time(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "small.txt").write_text("one")
    (data / "big.bin").write_bytes(b"x" * 64)
    monkeypatch.setattr(runs, "SMALL_FILE_BYTES", 16)  # big.bin is identified by size and time
    out = tmp_path / "run"

    def again():
        return runs.Run("core", out, Job(), resume=True, inputs={"data": data})

    runs.Run("core", out, Job(), inputs={"data": data})
    os.utime(data / "small.txt", ns=(1, 1))  # touched, same bytes: the same input
    again()
    (data / "small.txt").write_text("two")
    with pytest.raises(InputError, match=r"input data differs \(small.txt has changed since\)"):
        again()
    (data / "small.txt").write_text("one")
    again()
    before = (data / "big.bin").stat().st_mtime_ns
    (data / "big.bin").write_bytes(b"y" * 64)  # same size; only the time tells
    os.utime(data / "big.bin", ns=(before + 10**9, before + 10**9))
    with pytest.raises(InputError, match="big.bin has changed since"):
        again()
    os.utime(data / "big.bin", ns=(before, before))
    again()
    (data / "new.txt").write_text("n")
    with pytest.raises(InputError, match="new.txt is new"):
        again()
    (data / "new.txt").unlink()
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(InputError, match=f"it was {data}, now it is {other}"):
        runs.Run("core", out, Job(), resume=True, inputs={"data": other})
    with pytest.raises(InputError, match=r"other inputs \(data\)"):
        runs.Run("core", out, Job(), resume=True)


def test_keyed_jobs_may_resume_with_changes_and_say_so(tmp_path, caplog):
    out = tmp_path / "run"
    text = tmp_path / "t.txt"
    text.write_text("a")
    runs.Run("core", out, Job(), inputs={"text": text})
    text.write_text("b")
    with caplog.at_level(logging.INFO, logger="lucidml.runs"):
        runs.Run("core", out, Job(steps=9), resume=True, inputs={"text": text}, per_item=True)
    assert "with steps = 9 (was 3)" in caplog.text and "changed input text" in caplog.text
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 9


def test_a_dry_run_checks_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    assert runs.claim("core", out, Job(), dry_run=True) == out and not out.exists()
    runs.Run("core", out, Job()).write_results({})
    runs.claim("core", out, Job(), overwrite=True, dry_run=True)
    assert (out / "results.json").exists()  # checked, not emptied
    with pytest.raises(InputError, match="steps = 3"):
        runs.claim("core", out, Job(steps=1), resume=True, dry_run=True)


def test_path_inputs_keep_only_local_paths(tmp_path):
    (tmp_path / "f").write_text("x")
    got = runs.path_inputs(a=str(tmp_path / "f"), b="digits", c=None, d="org/model")
    assert got == {"a": tmp_path / "f"}


def test_a_wait_on_another_process_lock_is_announced(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("LUCID_HOME", str(tmp_path))
    (tmp_path / "locks").mkdir()
    hold = (
        "import sys, time; from filelock import FileLock; "
        "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(1)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "locks" / "thing.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout.readline().strip() == "held"
    start = time.monotonic()
    with caplog.at_level(logging.INFO), zoo._lock("thing"):
        waited = time.monotonic() - start
    other.wait()
    assert waited >= 0.3
    assert "waiting for another process that is preparing thing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO), zoo._lock("thing"):
        pass
    assert "waiting" not in caplog.text


def test_a_command_without_resume_does_not_offer_it(tmp_path):
    runs.Run("core", tmp_path, Job(), resumable=False)
    with pytest.raises(InputError) as refused:
        runs.Run("core", tmp_path, Job(), resumable=False)
    assert "--resume" not in str(refused.value) and "--overwrite" in str(refused.value)


def test_folder_names_keep_names_apart_and_refuse_a_clash():
    from lucidml.core.runs import folder_name, folder_names
    from lucidml.errors import InputError

    assert folder_name("stabilityai/sd-2.1") == "stabilityai--sd-2.1"
    assert folder_name("hot dog") == "hot_dog"
    assert folder_names(["a/b", "a_b", "a-b"]) == {"a/b": "a--b", "a_b": "a_b", "a-b": "a-b"}
    with pytest.raises(InputError, match="'hot dog' and 'hot_dog' would share the folder"):
        folder_names(["hot dog", "hot_dog"], "classes")
