"""DM and DC budgets: the reference's iteration counts, the CPU defaults, or given counts."""

import pytest

from lucidml.distill import baselines
from lucidml.distill.config import DistillConfig
from lucidml.errors import ConfigError


def test_reference_and_cpu_budgets():
    ref = DistillConfig().with_iterations("reference", ipc=10)
    assert (ref.dm_iterations, ref.dc_iterations, ref.dc_batch_real) == (20_000, 1_000, 256)
    assert ref.dc_outer_inner == (10, 50)
    assert DistillConfig().with_iterations("reference", ipc=50).dc_outer_inner == (50, 10)
    assert DistillConfig().with_iterations("reference", ipc=1).dc_outer_inner == (1, 1)
    # an IPC the reference script has no loops for keeps the configured ones
    assert DistillConfig(dc_outer_inner=(3, 4)).with_iterations("reference", 7).dc_outer_inner == (
        3,
        4,
    )
    assert ref.with_iterations("cpu", ipc=10) == DistillConfig()
    # other settings of the config are kept
    mine = DistillConfig(dm_lr_img=0.5).with_iterations("30,7", ipc=10)
    assert (mine.dm_iterations, mine.dc_iterations, mine.dm_lr_img) == (30, 7, 0.5)


@pytest.mark.parametrize("budget", ["20000", "a,b", "0,5", "1,2,3", ""])
def test_bad_budgets_are_one_sentence(budget):
    with pytest.raises(ConfigError, match="iterations must be 'reference', 'cpu' or two"):
        DistillConfig().with_iterations(budget, ipc=1)


@pytest.mark.parametrize("method,expected", [("dm", 3), ("dc", 2)])
def test_dm_and_dc_run_their_budget(digits, monkeypatch, method, expected):
    nets = []
    init = baselines.init_model
    monkeypatch.setattr(
        baselines, "init_model", lambda fn, seed: nets.append(seed) or init(fn, seed)
    )
    cfg = DistillConfig(dc_batch_real=8, dm_batch_real=8).with_iterations("3,2", ipc=1)
    x, y = baselines.distill(method, digits.train_x, digits.train_y, 1, seed=0, cfg=cfg)
    assert len(nets) == expected  # one fresh network per iteration
    assert x.shape == (10, 1, 8, 8) and sorted(y.tolist()) == list(range(10))


def test_rank_takes_iterations_from_the_command_line(monkeypatch, tmp_path):
    from lucidml.cli import main
    from lucidml.distill import api

    seen = {}
    monkeypatch.setattr(api, "rank", lambda cfg, **kw: seen.setdefault("cfg", cfg) and None)
    with pytest.raises(SystemExit) as exc:
        main(["distill", "rank", "--iterations", "30,7", "--out", str(tmp_path / "r")])
    assert exc.value.code in (0, None)
    assert (seen["cfg"].distill.dm_iterations, seen["cfg"].distill.dc_iterations) == (30, 7)
