import math

import numpy as np
import pandas as pd
import pytest
import torch

from lucidml.editing.state import (
    join_state,
    load_state,
    refuse_pickled_state,
    save_state,
    split_state,
)
from lucidml.editing.summary import (
    interval,
    metric_values,
    probe_table,
    running_intervals,
    stratified_interval,
    with_intervals,
)
from lucidml.errors import InputError


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
    assert values["personas"][0].tolist() == [0.25]  # one record: its two probes' mean
    assert values["personas_em"][0].tolist() == [0.0]  # the NaN is no probe
    v, w = values["loc_agree"]
    assert (v * w).sum() / w.sum() == pytest.approx(4 / 5)  # pooled over positions
    assert values["pre_rewrite"][0].tolist() == [0.0] and values["past_em"][0].tolist() == [1.0]
    assert "rewrite_em" in values and "past_rephrase" not in values
    both = running_intervals([values, values])
    assert both["rewrite_n"] == 4 and len(both["rewrite_ci"]) == 2
    assert isinstance(pd.DataFrame(table), pd.DataFrame)


def _persona_table(scores: list[list[float]]) -> pd.DataFrame:
    """One timestep's after-edit persona probes: ``scores[i]`` are record i's, one per style."""
    styles = ["pirate", "caveman", "child", "poet", "lawyer"]
    return probe_table(
        [
            dict(
                timestep=0,
                phase="after",
                source_timestep=0,
                record=i,
                kind=f"personas_{styles[j]}",
                question="q",
                gold="a",
                greedy="a",
                teacher_forced=s,
                first_token=s,
                exact_match=s,
                loc_same=math.nan,
                loc_total=math.nan,
            )
            for i, record in enumerate(scores)
            for j, s in enumerate(record)
        ]
    )


def test_personas_interval_resamples_records_not_probes():
    # perfectly correlated probes: a record's five answers are all right or all wrong, so
    # the five say no more than one; the clustered interval is the record-level one
    # (Wilson, 3 of 10: 0.1078 .. 0.6032 by hand), the pooled one (15 of 50) is narrower
    table = _persona_table([[1.0] * 5] * 3 + [[0.0] * 5] * 7)
    got = with_intervals({}, metric_values(table))
    record_level = interval([1.0] * 3 + [0.0] * 7)
    assert got["personas_em_ci"] == pytest.approx(list(record_level), abs=1e-12)
    assert got["personas_em_ci"] == pytest.approx([0.1078, 0.6032], abs=1e-4)
    assert got["personas_em_n"] == 10  # records, not the 50 probes
    pooled = interval([1.0] * 15 + [0.0] * 35)
    assert record_level[0] < pooled[0] and pooled[1] < record_level[1]
    # the other direction: every record gets 3 of its 5 right, so records do not vary
    # and the clustered interval collapses to the mean, while the pooled one (30 of 50) does not
    table = _persona_table([[1.0, 1.0, 1.0, 0.0, 0.0]] * 10)
    got = with_intervals({}, metric_values(table))
    assert got["personas_ci"] == [0.6, 0.6]
    lo, hi = interval([1.0] * 30 + [0.0] * 20)
    assert lo < 0.5 and hi > 0.7
    # each style alone is one probe per record: still probe-level
    assert metric_values(table)["personas_pirate"][0].tolist() == [1.0] * 10


def test_personas_record_means_weigh_unequal_probe_counts():
    # a NaN exact match is no probe: record 0 has 2 scored probes, record 1 has 4
    table = _persona_table([[1.0, 1.0, math.nan, math.nan], [0.0, 0.0, 0.0, 1.0]])
    v, w = metric_values(table)["personas_em"]
    assert v.tolist() == [1.0, 0.25] and w.tolist() == [2.0, 4.0]
    assert (v * w).sum() / w.sum() == pytest.approx(3 / 6)  # the pooled mean
    both = running_intervals([metric_values(table), metric_values(table)])
    assert both["personas_em_n"] == 4  # two records in each of two timesteps


def test_only_an_old_pickled_state_is_refused_and_never_read(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    refuse_pickled_state(folder, "state")  # nothing stored: a fresh run, no refusal
    (folder / "state.pt").write_bytes(b"\x80\x04not a real pickle.")
    with pytest.raises(InputError, match="older version of lucidml.*checkpoints/state.pt"):
        refuse_pickled_state(folder, "state")
    save_state(folder, "state", 0, {"rows": []})  # this version's checkpoint wins
    refuse_pickled_state(folder, "state")
    assert load_state(folder, "state") == {"rows": []}


def test_a_running_mean_of_all_zero_scores_keeps_the_wilson_interval():
    # 0 of 57 exact matches over two timesteps: the bootstrap resamples only zeros and gave
    # [0, 0]; the pooled Wilson interval is the honest one (0 of 57: upper bound 0.063)
    groups = [(np.zeros(22), None), (np.zeros(35), None)]
    lo, hi = stratified_interval(groups)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / (57 + 3.8415), rel=1e-3)
    ones = [(np.ones(22), None), (np.ones(35), None)]
    assert stratified_interval(ones)[0] == pytest.approx(57 / (57 + 3.8415), rel=1e-3)
