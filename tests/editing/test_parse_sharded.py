"""The sharded, resumable dump parser: blocks, parts, merging, resume, multi-process runs."""

import contextlib
import gzip
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import lucid
from wikidata_fixtures import entity, statement, write_dump

from lucidml.editing import api, wikidata
from lucidml.editing.config import ParseConfig
from lucidml.errors import InputError


def _dump(path: Path, n: int = 60) -> Path:
    """Entities of varied length: two claims each (one with a preferred statement)."""
    ents = [
        entity(
            f"Q{i}",
            f"item {i}" + " long" * (i % 7),
            {
                "P1": [statement("P1", f"Q{i + 1}")],
                "P2": [statement("P2", f"Q{i + 2}", rank="preferred"), statement("P2", "Q9")],
            },
        )
        for i in range(1, n + 1)
    ]
    return write_dump(path, ents)


def _files(folder: Path) -> tuple[bytes, bytes]:
    return (folder / wikidata.TRIPLES).read_bytes(), (folder / wikidata.LABELS).read_bytes()


def test_block_readers_agree_and_split_at_line_starts():
    rng = random.Random(0)
    for _ in range(500):
        data = b"".join(b"x" * rng.randint(0, 12) + b"\n" for _ in range(rng.randint(0, 9)))
        data += b"y" * rng.randint(0, 4)  # a last line without a line break, sometimes
        size = rng.randint(1, 15)
        streamed = list(wikidata.stream_blocks(io.BytesIO(data), size))
        f = io.BytesIO(data)
        count = -(-len(data) // size)
        assert streamed == [(i, wikidata.read_block(f, i, size)) for i in range(count)]
        assert b"".join(block for _, block in streamed) == data
        at = 0
        for i, block in streamed:  # every line starts inside its block's span
            line_starts = [at] + [at + k + 1 for k, c in enumerate(block[:-1]) if c == 10]
            assert not block or all(i * size <= s < (i + 1) * size for s in line_starts)
            at += len(block)
    # a hand-made case: lines start at 0, 2 and 5; blocks of 4 bytes
    assert list(wikidata.stream_blocks(io.BytesIO(b"a\nbb\nccc\n"), 4)) == [
        (0, b"a\nbb\n"),
        (1, b"ccc\n"),
        (2, b""),
    ]


def test_output_is_identical_for_any_block_size_and_process_count(tmp_path):
    dump = _dump(tmp_path / "d.json", 25)
    packed = tmp_path / "d.json.gz"
    packed.write_bytes(gzip.compress(dump.read_bytes()))
    wikidata.parse_dump(dump, tmp_path / "ref")
    reference = _files(tmp_path / "ref")
    triples, labels, _ = wikidata.read_dump(dump)
    rows = wikidata.read_triples(tmp_path / "ref")
    assert list(rows.itertuples(index=False, name=None)) == triples and len(triples) == 50
    assert wikidata.read_labels(tmp_path / "ref") == dict(labels)
    for source in (dump, packed):
        for block_bytes in (150, 1000, 1 << 22):  # 150: less than a line, some blocks empty
            for processes in (1, 2):
                out = tmp_path / f"{source.suffix}-{block_bytes}-{processes}"
                stats = wikidata.parse_dump(
                    source, out, processes=processes, block_bytes=block_bytes
                )
                assert _files(out) == reference, (source.name, block_bytes, processes)
                assert stats["blocks"] == -(-len(dump.read_bytes()) // block_bytes)
    assert not list(tmp_path.glob(".*parsing"))


def test_skipped_line_numbers_do_not_depend_on_blocks(tmp_path):
    lines = _dump(tmp_path / "d.json", 30).read_text().splitlines()
    lines[5], lines[20] = '{"id": "Q5", "cla,', "not json"
    dump = tmp_path / "bad.json"
    dump.write_text("\n".join(lines) + "\n")
    found = {
        (b, p): wikidata.parse_dump(
            dump, tmp_path / f"o{b}-{p}", on_error="skip", block_bytes=b, processes=p
        )["skipped_lines"]
        for b in (200, 1 << 22)
        for p in (1, 2)
    }
    assert set(map(tuple, found.values())) == {(6, 21)}


def _interrupt_after(monkeypatch, n: int):
    """Make the parse stop (as a kill would) after ``n`` blocks have been written."""
    calls = {"n": 0}
    real = wikidata._parse_to_part

    def parse_some(job):
        if calls["n"] == n:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(job)

    monkeypatch.setattr(wikidata, "_parse_to_part", parse_some)


def test_resume_reuses_finished_blocks_and_a_new_parse_clears_them(tmp_path, monkeypatch):
    dump = _dump(tmp_path / "d.json")
    wikidata.parse_dump(dump, tmp_path / "ref", block_bytes=500)
    staging = tmp_path / ".snap.parsing"
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)
        with pytest.raises(KeyboardInterrupt):
            wikidata.parse_dump(dump, tmp_path / "snap", block_bytes=500)
    assert len(list(staging.glob("parts-*/*.parquet"))) == 5 and not (tmp_path / "snap").exists()
    # other options are another key: none of these parts is theirs
    stats = wikidata.parse_dump(dump, tmp_path / "other", block_bytes=700, resume=True)
    assert stats["reused_blocks"] == 0
    stats = wikidata.parse_dump(dump, tmp_path / "snap", block_bytes=500, resume=True)
    assert stats["reused_blocks"] == 5 and stats["blocks"] > 5
    assert _files(tmp_path / "snap") == _files(tmp_path / "ref")  # no block twice, none lost
    assert not staging.exists()
    # without --resume a leftover staging folder is cleared, even a corrupt part in it
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            wikidata.parse_dump(dump, tmp_path / "snap", block_bytes=500)
    next(staging.glob("parts-*/*.parquet")).write_bytes(b"not parquet")
    stats = wikidata.parse_dump(dump, tmp_path / "snap", block_bytes=500)
    assert stats["reused_blocks"] == 0 and _files(tmp_path / "snap") == _files(tmp_path / "ref")


def test_unreadable_dump_is_one_sentence_and_leaves_nothing(tmp_path):
    packed = tmp_path / "d.json.gz"
    packed.write_bytes(gzip.compress(_dump(tmp_path / "d.json").read_bytes())[:-40])
    for processes in (1, 2):
        with pytest.raises(InputError, match="cannot read dump file"):
            wikidata.parse_dump(packed, tmp_path / "snap", processes=processes, block_bytes=256)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.json.gz"]
    with pytest.raises(InputError, match="cannot read dump file"):
        wikidata.read_dump(packed)


def test_parse_command_takes_a_config_file_and_options_override_it(tmp_path, capsys):
    lines = _dump(tmp_path / "d.json", 10).read_text().splitlines()
    lines[3] = "oops"
    dump = tmp_path / "bad.json"
    dump.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "parse.yaml"
    cfg.write_text(f"dump: {dump}\non_error: skip\nblock_bytes: 128\nbest_rank: false\n")
    assert lucid("editing", "parse", "--config", str(cfg), "--out", str(tmp_path / "a")) == 0
    assert "1 malformed lines skipped" in capsys.readouterr().out
    stored = ParseConfig.from_yaml(tmp_path / "a" / "config.yaml")
    assert (stored.on_error, stored.block_bytes, stored.best_rank) == ("skip", 128, False)
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["skipped_lines"] == [4] and results["triples"] == 27  # P2 keeps both
    args = ("editing", "parse", "--config", str(cfg), "--stop-at-bad-lines")
    assert lucid(*args, "--out", str(tmp_path / "b")) == 2
    assert "line 4" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert lucid("editing", "parse", "--out", str(tmp_path / "c")) == 2
    assert "pass --dump" in capsys.readouterr().err


def test_resume_keeps_a_finished_parse(tmp_path):
    cfg = ParseConfig(dump=str(_dump(tmp_path / "d.json", 10)))
    folder, first = api.parse(cfg, tmp_path / "snap")
    before = (folder / wikidata.TRIPLES).stat().st_mtime_ns
    _, again = api.parse(cfg, tmp_path / "snap", resume=True)
    assert again["key"] == first["key"]
    assert (folder / wikidata.TRIPLES).stat().st_mtime_ns == before
    _, other = api.parse(cfg.updated(best_rank=False), tmp_path / "snap", resume=True)
    assert other["triples"] == 30 and other["key"] != first["key"]


# --- several processes under accelerate --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str]) -> list[str]:
    """`accelerate launch` of two processes on CPU. (`--cpu --num_processes 2` starts only
    one process in accelerate 1.x; `--multi_gpu` without visible GPUs joins two on gloo.)"""
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        pytest.skip("accelerate's launcher is not installed")
    return [
        str(launcher),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "lucidml",
        *args,
    ]


ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LUCID_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_launched_processes_write_the_same_files_as_one(tmp_path):
    dump = _dump(tmp_path / "d.json", 150)  # about 230 blocks
    parse = ["editing", "parse", "--dump", str(dump), "--block-bytes", "512"]
    one = subprocess.run(
        [sys.executable, "-m", "lucidml", *parse, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        _launch([*parse, "--out", str(tmp_path / "two")]),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["processes"] == 2
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


@pytest.mark.slow
def test_a_killed_two_process_parse_resumes_without_duplicates(tmp_path):
    dump = _dump(tmp_path / "d.json", 500)  # about 390 blocks, a second or two of work
    parse = ["editing", "parse", "--dump", str(dump), "--block-bytes", "1024"]
    wikidata.parse_dump(dump, tmp_path / "ref", block_bytes=1024)
    proc = subprocess.Popen(
        _launch([*parse, "--out", str(tmp_path / "snap")]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    parts = tmp_path / ".snap.parsing"
    deadline = time.monotonic() + 240
    while not list(parts.glob("parts-*/*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no part appeared"
        time.sleep(0.02)
    # torch's launcher starts each worker in a session of its own: kill every process of
    # the launch (launcher, workers, their pools) at once, as a machine failure would
    import psutil

    launched = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in launched:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(launched, timeout=30)
    proc.wait()
    done = len(list(parts.glob("parts-*/*.parquet")))
    blocks = -(-dump.stat().st_size // 1024)
    assert 0 < done < blocks, "the parse was not killed in the middle"
    resumed = subprocess.run(
        [sys.executable, "-m", "lucidml", *parse, "--out", str(tmp_path / "snap"), "--resume"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((tmp_path / "snap" / "results.json").read_text())
    assert results["reused_blocks"] == done
    assert _files(tmp_path / "snap") == _files(tmp_path / "ref")
    assert not parts.exists()
    shutil.rmtree(tmp_path / "snap")
