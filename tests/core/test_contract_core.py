"""Core pieces of the run contract: progress, sharding, devices, configs, errors, the hub."""

import logging
import os
import stat
import threading
import time

import pytest
import torch

from lucidml.core import distributed, progress, runs
from lucidml.core.config import Config, resolve_device, resolve_dtype
from lucidml.errors import ConfigError, InputError, ModelError


@pytest.fixture
def verbose():
    progress.set_verbosity(False)
    yield
    progress.set_verbosity(True)


# --- progress -------------------------------------------------------------------------


def test_track_yields_every_item_silently_by_default(capsys):
    progress.set_verbosity(True)
    assert list(progress.track(range(5), "work")) == [0, 1, 2, 3, 4]
    progress.get_logger("distill").info("a stage message")
    assert capsys.readouterr().err == ""


def test_tracks_nest_in_one_display(verbose, monkeypatch):
    monkeypatch.setattr(progress, "_bars_here", lambda: True)  # as on a terminal
    seen, shown = [], []
    for i in progress.track(range(3), "outer"):
        for j in progress.track(iter(range(2)), "inner"):  # no len(): an open-ended bar
            seen.append((i, j))
            shown.append(len(progress._live.tasks))
    assert seen == [(i, j) for i in range(3) for j in range(2)]
    assert shown == [2] * 6  # both bars in the one live display
    assert progress._live is None  # which closed with the last bar


def test_a_track_left_early_closes_its_bar(verbose, monkeypatch):
    monkeypatch.setattr(progress, "_bars_here", lambda: True)
    for i in progress.track(range(10), "outer"):
        if i == 2:
            break
    assert progress._live is None and progress._open == 0


def test_off_a_terminal_only_messages_reach_stderr(verbose, capsys):
    assert list(progress.track(range(3), "work")) == [0, 1, 2]
    progress.get_logger("editing").info("timestep %d done", 1)
    assert capsys.readouterr().err == "timestep 1 done\n"  # no blank lines from bars


def test_quiet_keeps_warnings(capsys):
    progress.set_verbosity(True)
    log = progress.get_logger("core")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err
    assert logging.getLogger("lucidml").level == logging.WARNING


# --- distributed ----------------------------------------------------------------------


def _as_process(monkeypatch, rank: int, size: int) -> None:
    monkeypatch.setattr(distributed, "process_index", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: size)
    monkeypatch.setattr(distributed, "is_main_process", lambda: rank == 0)


def test_without_a_launcher_one_process_does_everything():
    assert (distributed.process_index(), distributed.world_size()) == (0, 1)
    assert distributed.is_main_process()
    assert distributed.shard(list("abcde")) == list("abcde")
    distributed.barrier()  # a no-op, not a hang


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shards_partition_the_items(monkeypatch, size):
    items = list(range(20))
    shards = []
    for rank in range(size):
        _as_process(monkeypatch, rank, size)
        shards.append(distributed.shard(items))
    assert sorted(x for s in shards for x in s) == items
    assert all(abs(len(a) - len(b)) <= 1 for a in shards for b in shards)
    assert shards[1 % size][0] == 1 % size  # round robin: process k starts at item k


def test_item_store_round_trips_json_and_safetensors(tmp_path):
    js = distributed.ItemStore(tmp_path / "j")
    js.save("a", {"x": [1, 2.5], "nan": float("nan")})
    assert js.has("a") and js.load("a") == {"x": [1, 2.5], "nan": None}
    ts = distributed.ItemStore(tmp_path / "t", fmt="safetensors")
    ts.save("b", {"w": torch.arange(6.0).view(2, 3)})
    assert torch.equal(ts.load("b")["w"], torch.arange(6.0).view(2, 3))
    with pytest.raises(ValueError):
        distributed.ItemStore(tmp_path, fmt="pickle")


def test_processes_skip_finished_items_and_main_gathers_in_item_order(monkeypatch, tmp_path):
    store = distributed.ItemStore(tmp_path)
    items = [f"item{i}" for i in range(7)]
    store.save("item3", "done before the kill")  # resumed: item 3 is not recomputed
    computed = []
    for rank in (1, 0):  # the other process finishes first; order must not matter
        _as_process(monkeypatch, rank, 2)
        for item in distributed.pending(items, store, str):
            computed.append(item)
            store.save(item, item.upper())
        merged = distributed.gather(items, store, str)
        assert (merged is None) == (rank != 0)
    assert sorted(computed) == sorted(set(items) - {"item3"})
    assert merged == [i.upper() if i != "item3" else "done before the kill" for i in items]


def test_gather_waits_for_items_another_process_is_still_writing(monkeypatch, tmp_path):
    store = distributed.ItemStore(tmp_path)
    store.save("a", 1)

    def late_writer():
        time.sleep(0.3)
        store.save("b", 2)

    thread = threading.Thread(target=late_writer)
    thread.start()
    assert distributed.gather(["a", "b"], store, str, poll=0.05) == [1, 2]
    thread.join()


# --- devices and configs --------------------------------------------------------------


def test_resolve_device_names_and_availability():
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == "cpu"
    for bad in ("tpu", "cuda:x", "cpu:1", "mps:0"):
        with pytest.raises(InputError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(InputError, match="is not available") as exc:
                resolve_device(name)
            assert "\n" not in str(exc.value)
    assert resolve_dtype("cpu", half=True) == torch.float32
    assert resolve_dtype("cuda", half=False) == torch.float32


class JobConfig(Config):
    method: str = "lora"
    lr: float = 0.1
    layers: list[int] = [1, 2]


def test_a_config_file_value_is_never_replaced_by_an_unset_option(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("method: rome\nlr: 0.5\n")
    cfg = JobConfig.from_cli(path, method=None, lr=None, layers=None)
    assert (cfg.method, cfg.lr, cfg.layers) == ("rome", 0.5, [1, 2])
    cfg = JobConfig.from_cli(path, lr=0.01, layers=[3])
    assert (cfg.method, cfg.lr, cfg.layers) == ("rome", 0.01, [3])
    assert JobConfig.from_cli(None, method="ft").method == "ft"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("methd: rome\n", "field 'methd': Extra inputs are not permitted"),
        ("lr: [1\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping"),
        (b"method: \xff\xfe\n", "is not UTF-8 text"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        JobConfig.from_cli(path)
    with pytest.raises(InputError, match="does not exist"):
        JobConfig.from_cli(tmp_path / "missing.yaml")


# --- run folders ----------------------------------------------------------------------


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = runs.write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_two_runs_started_at_once_get_two_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("LUCID_RUNS", str(tmp_path))
    first, second = runs.Run("core"), runs.Run("core")
    assert (
        first.path != second.path and first.path.parent == second.path.parent == tmp_path / "core"
    )


def test_environment_block_and_current_run(tmp_path):
    env = runs.environment("cpu", 3)
    assert env["device"] == "cpu" and env["seed"] == 3 and env["processes"] == 1
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    path = runs.make_run_dir("core", tmp_path / "run")
    assert runs.current_run_dir() == path


# --- the hub --------------------------------------------------------------------------


def test_an_unreachable_hub_switches_to_offline_and_says_so(monkeypatch):
    from huggingface_hub import constants

    from lucidml.core import zoo

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(zoo, "_hub_reachable", lambda: False)
    assert zoo.hub_offline("someone/no-such-model")
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelError, match="not in the local Hugging Face cache") as exc:
        zoo.load_llm("someone/no-such-model")
    assert "\n" not in str(exc.value)


SHARDED_SCRIPT = """
import json, sys
from lucidml.core import distributed as d
store = d.ItemStore(sys.argv[1])
items = [f"item{k}" for k in range(9)]
for item in d.pending(items, store, str):
    store.save(item, {"by": d.process_index(), "value": item.upper()})
merged = d.gather(items, store, str)
from lucidml.core.runs import run_dir_path
from pathlib import Path
# one file per process: two processes printing to one pipe can interleave their lines
report = {"rank": d.process_index(), "default_folder": str(run_dir_path("core"))}
if merged is not None:
    report.update(world=d.world_size(), merged=merged)
Path(sys.argv[2], f"rank{d.process_index()}.json").write_text(json.dumps(report))
"""


@pytest.mark.slow
def test_two_launched_processes_split_the_items_and_the_main_one_merges(tmp_path):
    """Under `accelerate launch --multi_gpu` on a machine without GPUs the processes
    join on CPU (gloo). (`accelerate launch --cpu --num_processes 2` starts only one
    process in accelerate 1.x, so it cannot test sharding.)"""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate's launcher is not installed")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(tmp_path / "s"),
        str(tmp_path),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    out = next(line for line in lines if "merged" in line)
    folders = {line["rank"]: line["default_folder"] for line in lines if "rank" in line}
    assert len(folders) == 2 and folders[0] == folders[1]  # one launch, one run folder
    assert out["world"] == 2
    assert [m["value"] for m in out["merged"]] == [f"ITEM{k}" for k in range(9)]
    assert [m["by"] for m in out["merged"]] == [k % 2 for k in range(9)]


def test_a_worker_stops_waiting_when_its_launcher_is_gone(monkeypatch, tmp_path):
    from lucidml.errors import LucidError

    monkeypatch.setattr(distributed, "_launcher_pid", os.getppid() + 1)  # not our parent
    with pytest.raises(LucidError, match="launcher of this process is gone"):
        distributed.wait_for([tmp_path / "never"], poll=0.01)
