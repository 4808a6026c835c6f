import math

import numpy as np
import pandas as pd
import pytest
import torch

from lucidml.editing.state import join_state, load_state, save_state, split_state
from lucidml.editing.summary import (
    interval,
    metric_values,
    probe_table,
    running_intervals,
    stratified_interval,
)


def test_state_round_trips_through_json_and_safetensors(tmp_path):
    state = {
        "rows": [{"rewrite": 0.5, "past": math.nan, "n": 3}],
        "R": [[0.5], [0.25, 1.0]],
        "model": {"w": torch.arange(6.0).reshape(2, 3), "empty": torch.zeros(0, 4)},
        "editor": {"memory": [("q?", "a")], "adapter": None, "cov": {"m": torch.eye(2)}},
    }
    save_state(tmp_path, "state", 0, state)
    save_state(tmp_path, "state", 1, state)  # the earlier tensor file goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-0001.safetensors", "state.json"]
    back = load_state(tmp_path, "state")
    assert back["editor"]["memory"] == [("q?", "a")] and back["editor"]["adapter"] is None
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["model"]["empty"].shape == (0, 4)
    assert math.isnan(back["rows"][0]["past"]) and back["R"] == state["R"]
    assert load_state(tmp_path, "other") is None
    with pytest.raises(TypeError, match="ndarray"):
        split_state({"keys": np.zeros(2)})
    tree, tensors = split_state({"a": (1, torch.ones(1))})
    assert join_state(tree, tensors)["a"][0] == 1


def test_intervals_known_answers():
    # Wilson, 3 of 10: centre (0.3 + 1.96^2/20) / (1 + 1.96^2/10), by hand 0.1078 .. 0.6032
    assert interval([1, 1, 1] + [0] * 7) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(x) for x in interval([]))
    assert all(math.isnan(x) for x in interval([0.14]))  # one graded probe: no spread
    assert interval([1.0]) == pytest.approx((0.2065, 1.0), abs=1e-4)  # Wilson, 1 of 1
    lo, hi = interval([0.0, 0.5, 1.0, 0.25], seed=1)
    assert 0.0 <= lo < 0.4375 < hi <= 1.0


def test_stratified_interval_matches_the_normal_approximation():
    """Mean of two group means: standard error sqrt(s1^2/n1 + s2^2/n2) / 2 in closed form."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, 400), rng.beta(2, 5, 300)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) / 2
    centre = (a.mean() + b.mean()) / 2
    lo, hi = stratified_interval([(a, None), (b, None)])
    assert lo == pytest.approx(centre - 1.96 * se, abs=0.15 * se)
    assert hi == pytest.approx(centre + 1.96 * se, abs=0.15 * se)


def test_metric_values_group_probes_by_kind_phase_and_weights():
    def row(phase, kind, tf, ft, em, same=math.nan, total=math.nan, source=0):
        return dict(
            timestep=0, phase=phase, source_timestep=source, record=0, kind=kind,
            question="q", gold="a", greedy="a", teacher_forced=tf, first_token=ft,
            exact_match=em, loc_same=same, loc_total=total,
        )  # fmt: skip

    table = probe_table(
        [
            row("after", "rewrite", 1.0, 1.0, 1.0),
            row("after", "rewrite", 0.5, 0.0, 0.0),
            row("after", "personas_pirate", 0.5, 1.0, 0.0),
            row("after", "personas_caveman", 0.0, 0.0, math.nan),
            row("after", "loc_gold", 1.0, 1.0, 1.0, same=3, total=4),
            row("after", "loc_gold", 0.0, 0.0, 0.0, same=1, total=1),
            row("before", "rewrite", 0.0, 0.0, 0.0),
            row("past", "rewrite", 1.0, 1.0, 1.0, source=1),
        ]
    )
    values = metric_values(table)
    assert values["rewrite"][0].tolist() == [1.0, 0.5]
    assert values["personas"][0].tolist() == [0.5, 0.0]
    assert values["personas_em"][0].tolist() == [0.0]  # the NaN is no probe
    v, w = values["loc_agree"]
    assert (v * w).sum() / w.sum() == pytest.approx(4 / 5)  # pooled over positions
    assert values["pre_rewrite"][0].tolist() == [0.0] and values["past_em"][0].tolist() == [1.0]
    assert "rewrite_em" in values and "past_rephrase" not in values
    both = running_intervals([values, values])
    assert both["rewrite_n"] == 4 and len(both["rewrite_ci"]) == 2
    assert isinstance(pd.DataFrame(table), pd.DataFrame)
