"""The leaderboard figure's reference lines are the random method's own scores."""

import math

import matplotlib

matplotlib.use("Agg")

from lucidml.distill.plots import leaderboard_caption, leaderboard_figure  # noqa: E402


def _row(lrs, ars):
    return {"lrs_mean": lrs, "lrs_std": 0.01, "ars_mean": ars, "ars_std": 0.01}


def test_the_dashed_lines_are_randoms_scores_not_one_over_one_plus_e():
    # issue 15, item 5: with HLR > 0 random's LRS lies below 1/(1+e)
    methods = {"random": _row(0.21, 0.27), "dm": _row(0.30, 0.33)}
    fig = leaderboard_figure(methods, "IPC 1")
    levels = sorted(
        line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"
    )
    assert levels == [0.21, 0.27]
    assert all(abs(level - 1 / (1 + math.e)) > 1e-3 for level in levels)
    assert "random method" in leaderboard_caption(methods)
    no_random = {"dm": _row(0.30, 0.33)}
    fig = leaderboard_figure(no_random, "IPC 1")
    assert not [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert "no random baseline" in leaderboard_caption(no_random)
