"""Small evaluation recipes and helpers shared by the distill tests."""

import pytest

from lucidml.cli import main
from lucidml.distill.config import EvalConfig, RankConfig


def tiny_config(**changes) -> EvalConfig:
    """A digits recipe small enough for unit tests (ConvNet-2, width 16, few epochs)."""
    base = EvalConfig.preset("digits-hard").model_copy(deep=True)
    cfg = base.updated(
        num_eval=3,
        lr_grid=[0.05],
        model=base.model.updated(width=16),
        recipe=base.recipe.updated(epochs=40, eval_every=10),
        real=base.real.updated(epochs=30, lr=0.05),
    )
    return cfg.updated(**changes)


def tiny_rank(num_eval: int = 2, epochs: int = 10, **changes) -> RankConfig:
    """A leaderboard of three cheap methods at IPC 1 that trains in seconds."""
    ev = tiny_config(
        num_eval=num_eval,
        lr_grid=[0.05, 0.1],
        recipe=tiny_config().recipe.updated(epochs=epochs, eval_every=5),
        real=tiny_config().real.updated(epochs=10),
    )
    return RankConfig(ipc=1, methods=["random", "noise", "classmean"], eval=ev, **changes)


def run_cli(args, capsys):
    """Run ``lucid`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err
