import json

import pandas as pd
import pytest

from lucidml.bias.prompts import (
    CATEGORIES,
    PROMPT_COLUMNS,
    THEMES,
    check_neutral,
    default_prompts,
    extend,
    gendered_words,
    lint,
    load_prompts,
)
from lucidml.errors import InputError

STEREOTYPE_THEMES = ("care", "household", "technical", "physical", "finance")


def _frame(rows):
    return pd.DataFrame(rows, columns=list(PROMPT_COLUMNS))


# --- the bundled set -------------------------------------------------------------------------


def test_default_set_shape_and_coverage():
    df = default_prompts()
    assert tuple(df.columns) == PROMPT_COLUMNS
    base = df.drop_duplicates("prompt_id")
    assert len(base) >= 180
    assert base["prompt_id"].is_unique
    per_category = base["category"].value_counts()
    assert set(per_category.index) == set(CATEGORIES)
    assert (per_category >= 40).all()
    assert set(base["theme"]) <= set(THEMES)
    per_theme = base["theme"].value_counts()
    for theme in STEREOTYPE_THEMES:
        assert per_theme.get(theme, 0) >= 15, theme
    # exactly three variants each, numbered 0..2, and distinct phrasings
    counts = df.groupby("prompt_id")["variation"].agg(lambda v: sorted(v))
    assert all(v == [0, 1, 2] for v in counts)
    assert df.groupby("prompt_id")["text"].nunique().eq(3).all()
    # ids are lowercase <category>-<slug>
    for pid, category in zip(base["prompt_id"], base["category"], strict=True):
        assert pid == pid.lower() and pid.startswith(category + "-"), pid
    assert df["text"].str.strip().ne("").all()


def test_default_set_is_neutral_and_a_fresh_copy():
    df = default_prompts()
    assert lint(df).empty
    check_neutral(df)
    df.loc[0, "text"] = "changed"
    assert default_prompts().loc[0, "text"] != "changed"


# --- the lexicon lint ------------------------------------------------------------------------


def test_gendered_words_matches():
    assert gendered_words("a woman cooking") == ["woman"]
    assert gendered_words("his laptop") == ["his"]
    assert gendered_words("a businessman") == ["businessman"]
    assert gendered_words("two actresses") == ["actresses"]
    assert gendered_words("the mother's car") == ["mother's"]
    assert gendered_words("the Women\u2019s team and the girls' bikes") == ["women's", "girls'"]
    assert gendered_words("Ladies, guys, Sir and Madam") == ["ladies", "guys", "sir", "madam"]
    assert gendered_words("a king, a boy, a girl and her girlfriend") == [
        "king",
        "boy",
        "girl",
        "her",
        "girlfriend",
    ]
    assert gendered_words("he and he again") == ["he"]


def test_gendered_words_whole_word_only():
    assert gendered_words("a person cooking") == []
    assert gendered_words("the manager's manual for humans") == []
    for text in ("management", "Germany", "hero", "history", "shepherd", "chairperson", "person"):
        assert gendered_words(text) == [], text
    assert gendered_words("a human in Germany reading history") == []


def test_lint_and_check_neutral():
    prompts = _frame(
        [
            ("a", 0, "a person cooking", "activity", "household"),
            ("a", 1, "a woman cooking", "activity", "household"),
            ("b", 0, "his laptop and a businessman", "object", "technical"),
        ]
    )
    found = lint(prompts)
    assert list(found.columns) == ["prompt_id", "variation", "text", "words"]
    assert found["prompt_id"].tolist() == ["a", "b"]
    assert found["variation"].tolist() == [1, 0]
    assert found["words"].tolist() == ["woman", "his, businessman"]
    with pytest.raises(InputError, match="prompt 'a' variation 1 uses the gendered word 'woman'"):
        check_neutral(prompts)
    check_neutral(prompts.iloc[:1])
    assert lint(prompts.iloc[:1]).empty


# --- loading ---------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path):
    rows = _frame(
        [
            ("x-one", 0, "a person cooking", "activity", "household"),
            ("x-one", 1, "someone cooking", "activity", "household"),
            ("x-two", 0, "a nurse", "occupation", "care"),
        ]
    )
    path = tmp_path / "p.csv"
    rows.to_csv(path, index=False)
    back = load_prompts(path)
    pd.testing.assert_frame_equal(back.astype(object), rows.astype(object))
    assert back["variation"].dtype == "int64"


def test_csv_defaults_variation_and_theme(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt_id,text,category\nq,a person,activity\nq,someone,activity\n")
    back = load_prompts(path)
    assert back["variation"].tolist() == [0, 1]
    assert back["theme"].tolist() == ["other", "other"]


def test_json_round_trip_both_layouts(tmp_path):
    ours = {
        "version": 1,
        "prompts": [
            {"id": "activity-a", "category": "activity", "theme": "care", "variants": ["p", "q"]},
            {"id": "object-b", "category": "object", "variants": ["r"]},
        ],
    }
    path = tmp_path / "ours.json"
    path.write_text(json.dumps(ours))
    df = load_prompts(path)
    assert df["prompt_id"].tolist() == ["activity-a", "activity-a", "object-b"]
    assert df["variation"].tolist() == [0, 1, 0]
    assert df["theme"].tolist() == ["care", "care", "other"]
    # the rows layout, written from the table, reads back the same
    rows = tmp_path / "rows.json"
    rows.write_text(df.to_json(orient="records"))
    pd.testing.assert_frame_equal(load_prompts(rows), df)
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([{"id": "z", "text": "a person", "category": "context"}]))
    assert load_prompts(ids)[["prompt_id", "variation", "theme"]].values.tolist() == [
        ["z", 0, "other"]
    ]


def test_default_file_layout_round_trips(tmp_path):
    df = default_prompts()
    path = tmp_path / "all.csv"
    df.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_prompts(path), df)


@pytest.mark.parametrize(
    "name, body, match",
    [
        ("miss.csv", "prompt_id,category\na,activity\n", "lacks the column 'text'"),
        ("cat.csv", "prompt_id,text,category\na,x,activity\nb,y,sport\n", "row 2.*'sport'"),
        ("dup.csv", "prompt_id,variation,text,category\na,0,x,object\na,0,y,object\n", "row 2"),
        ("empty.csv", "prompt_id,text,category\na,,object\n", "row 1.*empty text"),
        ("theme.csv", "prompt_id,text,category,theme\na,x,object,sports\n", "theme 'sports'"),
        ("var.csv", "prompt_id,variation,text,category\na,-1,x,object\n", "variation '-1'"),
        ("bad.csv", 'prompt_id,text,category\n"a,b\n', "not valid CSV"),
        ("bad.json", '{"prompts": [', "not valid JSON"),
        ("cat.json", '[{"id": "a", "text": "x", "category": "sport"}]', "entry 1.*'sport'"),
        (
            "dup.json",
            '[{"id": "a", "text": "x", "category": "object"}, '
            '{"id": "a", "variation": 0, "text": "y", "category": "object"}]',
            "entry 2",
        ),
        (
            "novar.json",
            '{"prompts": [{"id": "a", "category": "object", "variants": []}]}',
            "variants",
        ),
        ("prompts.txt", "a person", "extension '.txt'"),
    ],
)
def test_load_errors_name_the_file(tmp_path, name, body, match):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(InputError, match=match) as info:
        load_prompts(path)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.csv does not exist"):
        load_prompts(tmp_path / "nope.csv")


# --- extend ----------------------------------------------------------------------------------


def test_extend_concatenates_and_refuses_overlap():
    base = default_prompts()
    extra = _frame([("mine-1", 0, "a person knitting", "activity", "leisure")])
    both = extend(base, extra)
    assert len(both) == len(base) + 1
    assert both["prompt_id"].iloc[-1] == "mine-1"
    assert tuple(both.columns) == PROMPT_COLUMNS
    clash = _frame([(base["prompt_id"].iloc[0], 5, "a person", "activity", "other")])
    with pytest.raises(InputError, match=base["prompt_id"].iloc[0]):
        extend(base, clash)
