import numpy as np
import pandas as pd
import pytest

from lucidml.bias.filtering import RULES, filter_records, funnel, image_decision
from lucidml.errors import InputError

F, M, U = "female", "male", "unclear"

# The spec's filter table (section 5), plus the branches around it.
TABLE = [
    ([], "same_gender", (None, "no person")),
    ([F], "same_gender", (F, None)),
    ([M, M, M], "same_gender", (M, None)),
    ([F, M], "same_gender", (None, "mixed")),
    ([F, U], "same_gender", (None, "unclear")),
    ([F, F], "single_person_only", (None, "several persons")),
    ([F], "single_person_only", (F, None)),
    ([U], "single_person_only", (None, "unclear")),
    ([F, M], "single_person_only", (None, "mixed")),
]


@pytest.mark.parametrize(("labels", "rule", "expected"), TABLE)
def test_image_decision_table(labels, rule, expected):
    assert image_decision(labels, rule) == expected


def test_rules_are_named():
    assert RULES == ("same_gender", "single_person_only")


@pytest.mark.parametrize(
    "bad", [lambda: image_decision([F], "majority"), lambda: image_decision(["woman"])]
)
def test_image_decision_rejects_unknown_rule_and_labels(bad):
    with pytest.raises(InputError):
        bad()


def _records():
    # Labels as Parquet returns them: numpy arrays, the empty one included.
    labels = [[], [F], [M, M, M], [F, M], [F, U], [F, F]]
    return pd.DataFrame(
        {
            "model": ["a", "a", "a", "b", "b", "b"],
            "labels": [np.array(x, dtype=object) for x in labels],
        }
    )


def test_filter_records_with_numpy_labels():
    out = filter_records(_records())
    assert out["gender"].tolist() == [None, F, M, None, None, F]
    assert out["kept"].tolist() == [False, True, True, False, False, True]
    assert out["reason"].tolist() == ["no person", None, None, "mixed", "unclear", None]


def test_filter_records_single_person_only_and_lists():
    records = pd.DataFrame({"labels": [[F, F], [M]]})
    out = filter_records(records, rule="single_person_only")
    assert out["reason"].tolist() == ["several persons", None]
    assert "gender" not in records.columns  # the input is left as it was


@pytest.mark.parametrize(
    ("records", "rule"),
    [
        (pd.DataFrame({"n_persons": [1]}), "same_gender"),
        (pd.DataFrame({"labels": [[F]]}), "nope"),
        (pd.DataFrame({"labels": ["female"]}), "same_gender"),
    ],
)
def test_filter_records_errors(records, rule):
    with pytest.raises(InputError):
        filter_records(records, rule)


def test_funnel_per_model():
    table = funnel(filter_records(_records()))
    assert list(table.columns) == ["model", "stage", "n"]
    got = {(m, s): n for m, s, n in table.itertuples(index=False)}
    stages = ["generated", "no person", "unclear", "mixed", "kept"]
    assert table[table.model == "a"].stage.tolist() == stages
    assert [got["a", s] for s in stages] == [3, 1, 0, 0, 2]
    assert [got["b", s] for s in stages] == [3, 0, 1, 1, 1]


def test_funnel_without_model_column():
    records = filter_records(pd.DataFrame({"labels": [[F], [F, F], []]}), "single_person_only")
    table = funnel(records)
    assert table.values.tolist() == [
        ["generated", 3],
        ["no person", 1],
        ["several persons", 1],
        ["kept", 1],
    ]


def test_funnel_needs_filtered_records():
    with pytest.raises(InputError):
        funnel(pd.DataFrame({"labels": [[F]]}))
