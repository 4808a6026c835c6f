import bz2
import gzip
import json

import numpy as np
import pandas as pd
import pytest
from wikidata_fixtures import entity, prop_entity, snak, statement, write_dump

from lucidml.editing import wikidata
from lucidml.errors import InputError


def _rich_entity():
    """One item with every kind of statement that must NOT become a fact, plus two that must."""
    main = statement("P6", "Q2")
    main["qualifiers"] = {"P1365": [snak("P1365", "Q9")]}  # item-valued qualifier
    main["references"] = [{"snaks": {"P248": [snak("P248", "Q8")]}}]
    claims = {
        "P6": [main],
        "P35": [statement("P35", "Q3", rank="deprecated")],
        "P36": [
            statement("P36", None, snaktype="novalue"),
            statement("P36", None, snaktype="somevalue"),
        ],
        "P1082": [
            statement(
                "P1082",
                None,
                datatype="quantity",
                value={"type": "quantity", "value": {"amount": "+5"}},
            )
        ],
        "P17": [statement("P17", "Q4"), statement("P17", "Q5", rank="preferred")],
    }
    return entity("Q1", "Freedonia", claims)


def test_main_claims_only(tmp_path):
    dump = write_dump(
        tmp_path / "d.json",
        [_rich_entity(), entity("Q2", "Rufus"), prop_entity("P6", "head of government")],
    )
    stats = wikidata.parse_dump(dump, tmp_path / "snap")
    t = wikidata.read_triples(tmp_path / "snap")
    got = sorted(zip(t["subject"], t["property"], t["object"], t["rank"], strict=True))
    # preferred rank wins for P17; qualifiers, references, deprecated, novalue, quantity: nothing
    assert got == [("Q1", "P17", "Q5", "preferred"), ("Q1", "P6", "Q2", "normal")]
    assert wikidata.read_labels(tmp_path / "snap") == {
        "Q1": "Freedonia",
        "Q2": "Rufus",
        "P6": "head of government",
    }
    assert (stats["triples"], stats["labels"], stats["skipped_lines"]) == (2, 3, [])

    wikidata.parse_dump(dump, tmp_path / "all", best_rank=False)
    t = wikidata.read_triples(tmp_path / "all")
    assert sorted(t[t["property"] == "P17"]["object"]) == ["Q4", "Q5"]


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2")])
def test_compressed_dumps(tmp_path, opener, suffix):
    plain = write_dump(tmp_path / "d.json", [_rich_entity()])
    packed = tmp_path / f"d.json{suffix}"
    with opener(packed, "wt") as f:
        f.write(plain.read_text())
    wikidata.parse_dump(plain, tmp_path / "a")
    wikidata.parse_dump(packed, tmp_path / "b")
    pd.testing.assert_frame_equal(
        wikidata.read_triples(tmp_path / "a"), wikidata.read_triples(tmp_path / "b")
    )


def test_malformed_line_stop_or_skip(tmp_path):
    dump = tmp_path / "bad.json"
    dump.write_text('[\n{"id": "Q1", "claims": {}},\n{"id": "Q2", "cla\n{"id": "Q3"}\n]\n')
    with pytest.raises(InputError, match="line 3"):
        wikidata.parse_dump(dump, tmp_path / "stop")
    assert not (tmp_path / "stop").exists()  # nothing half-written
    stats = wikidata.parse_dump(dump, tmp_path / "skip", on_error="skip")
    assert stats["skipped_lines"] == [3]


@pytest.mark.parametrize("processes", [1, 2])
def test_bad_line_numbers_are_right_across_blocks(tmp_path, processes):
    lines = [json.dumps(entity(f"Q{i}", f"item {i}", {})) + "," for i in range(1, 30)]
    lines[16] = '{"id": "Q17", "cla,'  # line 18 of the file: "[" is line 1
    dump = tmp_path / "d.json"
    dump.write_bytes(("[\n" + "\n".join(lines) + "\n]\n").encode() + b"\xff\xfe{}\n")
    with pytest.raises(InputError, match="line 18"):
        wikidata.parse_dump(dump, tmp_path / "stop", processes=processes, block_bytes=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]  # nothing left behind
    stats = wikidata.parse_dump(
        dump, tmp_path / "skip", on_error="skip", processes=processes, block_bytes=64
    )
    assert stats["skipped_lines"] == [18, 32]  # the truncated entity and the non-UTF-8 line
    assert stats["labels"] == 28


def test_parse_streams_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(wikidata, "_ROW_GROUP", 5)
    ents = [
        entity(f"Q{i}", f"item {i}", {"P1": [statement("P1", f"Q{i + 1}")]}) for i in range(1, 40)
    ]
    dump = write_dump(tmp_path / "d.json", ents)
    stats = wikidata.parse_dump(dump, tmp_path / "snap", block_bytes=300)
    assert stats["triples"] == 39 and stats["labels"] == 39
    assert pq.ParquetFile(tmp_path / "snap" / wikidata.TRIPLES).metadata.num_row_groups > 3
    triples, labels, _ = wikidata.read_dump(dump)
    got = wikidata.read_triples(tmp_path / "snap")
    assert list(got.itertuples(index=False, name=None)) == triples
    assert wikidata.read_labels(tmp_path / "snap") == dict(labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "snap"]  # no staging left


def test_empty_dump_gives_empty_tables(tmp_path):
    dump = tmp_path / "empty.json"
    dump.write_text("[\n]\n")
    assert wikidata.parse_dump(dump, tmp_path / "snap")["triples"] == 0
    got = wikidata.read_triples(tmp_path / "snap")
    assert len(got) == 0 and list(got.columns)[:3] == ["subject", "property", "object"]


def _snap(tmp_path, name, triples):
    wikidata.write_snapshot(tmp_path / name, [(*t, "normal") for t in triples], [])
    return tmp_path / name


def test_diff_cases(tmp_path):
    old = _snap(
        tmp_path,
        "old",
        [
            ("S1", "P1", "A"),  # update A -> B
            ("S2", "P1", "A"),  # unchanged
            ("S3", "P1", "A"),
            ("S3", "P1", "B"),  # ambiguous: two removed, two added
            ("S4", "P1", "A"),  # added: A stays, C joins
            ("S5", "P2", "X"),  # S5 gains P1 -> new
        ],
    )
    new = _snap(
        tmp_path,
        "new",
        [
            ("S1", "P1", "B"),
            ("S2", "P1", "A"),
            ("S3", "P1", "C"),
            ("S3", "P1", "D"),
            ("S4", "P1", "A"),
            ("S4", "P1", "C"),
            ("S5", "P2", "X"),
            ("S5", "P1", "Y"),
            ("S6", "P1", "Z"),  # subject absent before: not a change
        ],
    )
    d = wikidata.diff(old, new, kinds=("new", "update", "added"))
    got = sorted(map(tuple, d.fillna("-").to_numpy().tolist()))
    assert got == [
        ("S1", "P1", "A", "B", "update"),
        ("S4", "P1", "-", "C", "added"),
        ("S5", "P1", "-", "Y", "new"),
    ]
    assert list(wikidata.diff(old, new).columns) == [
        "subject",
        "property",
        "old_object",
        "new_object",
        "kind",
    ]
    assert set(wikidata.diff(old, new)["kind"]) == {"new", "update"}
    same = wikidata.unchanged(old, new)
    assert sorted(map(tuple, same.to_numpy().tolist())) == [
        ("S2", "P1", "A"),
        ("S4", "P1", "A"),
        ("S5", "P2", "X"),
    ]


def test_duckdb_diff_equals_pandas_on_random_snapshots(tmp_path):
    rng = np.random.default_rng(0)
    n = 10_000
    old = pd.DataFrame(
        {
            "subject": [f"Q{i}" for i in rng.integers(0, 3000, n)],
            "property": [f"P{i}" for i in rng.integers(0, 5, n)],
            "object": [f"Q{i}" for i in rng.integers(0, 500, n)],
        }
    )
    new = old.copy()
    churn = rng.random(n) < 0.1
    new.loc[churn, "object"] = [f"Q{i}" for i in rng.integers(0, 500, churn.sum())]
    extra = old.sample(300, random_state=2)
    extra = extra.assign(object=[f"Q{i}" for i in rng.integers(500, 900, len(extra))])
    new = pd.concat([new, old.sample(300, random_state=1).assign(property="P9"), extra])
    for name, df in (("o", old), ("n", new)):
        _snap(tmp_path, name, list(df.itertuples(index=False, name=None)))
    kinds = ("new", "update", "added")
    fast = wikidata.diff(tmp_path / "o", tmp_path / "n", kinds)
    slow = wikidata.diff_pandas(old, new, kinds)
    assert len(fast) > 500 and set(fast["kind"]) == set(kinds)
    pd.testing.assert_frame_equal(fast.fillna("-"), slow.fillna("-"), check_dtype=False)


def test_snapshot_folder_checked(tmp_path):
    with pytest.raises(InputError, match="not a parsed snapshot"):
        wikidata.diff(tmp_path, tmp_path)
    with pytest.raises(InputError, match="unknown diff kind"):
        wikidata.diff_pandas(pd.DataFrame(), pd.DataFrame(), kinds=("removed",))


def test_a_preferred_no_value_overrides_the_normal_values():
    """Wikidata's truthy rule: a preferred "no value" (or "unknown value") statement says
    the normal-rank value beside it is stale, so the property keeps no item fact."""
    for snaktype in ("novalue", "somevalue"):
        claims = {
            "P6": [statement("P6", "Q2"), statement("P6", None, "preferred", snaktype=snaktype)],
            "P17": [statement("P17", "Q4")],
        }
        ent = entity("Q1", "Freedonia", claims)
        assert wikidata.main_claims(ent) == [("Q1", "P17", "Q4", "normal")]
        assert wikidata.main_claims(ent, best_rank=False) == [
            ("Q1", "P6", "Q2", "normal"),
            ("Q1", "P17", "Q4", "normal"),
        ]


def test_item_values_without_an_id_and_wrong_shapes_are_malformed_lines(tmp_path):
    no_id = statement("P6", "Q2")
    no_id["mainsnak"]["datavalue"]["value"] = {"entity-type": "item"}
    numeric_only = statement("P6", "Q7")
    del numeric_only["mainsnak"]["datavalue"]["value"]["id"]
    assert wikidata.main_claims(entity("Q1", "x", {"P6": [numeric_only]})) == [
        ("Q1", "P6", "Q7", "normal")
    ]
    bad_entities = [
        entity("Q1", "x", {"P6": [no_id]}),
        {**entity("Q1", "x"), "claims": {"P6": "x"}},
        {**entity("Q1", "x"), "claims": ["P6"]},
        {**entity("Q1", "x"), "labels": "x"},
    ]
    reasons = ["neither an id", "not a list of statement", "not an object", "labels"]
    for i, (bad, reason) in enumerate(zip(bad_entities, reasons, strict=True)):
        dump = write_dump(tmp_path / f"d{i}.json", [entity("Q9", "fine"), bad])
        with pytest.raises(InputError, match=f"line 3 .*{reason}"):
            wikidata.parse_dump(dump, tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists()
        stats = wikidata.parse_dump(dump, tmp_path / f"skip{i}", on_error="skip")
        assert stats["skipped_lines"] == [3] and stats["labels"] == 1


def test_mul_labels_are_the_fallback_for_missing_english_ones(tmp_path):
    mul_only = entity("Q2", "unused")
    mul_only["labels"] = {"mul": {"language": "mul", "value": "Rufus T. Firefly"}}
    both = entity("Q3", "Chicolini")
    both["labels"]["mul"] = {"language": "mul", "value": "Chico"}
    neither = entity("Q4", "unused")
    neither["labels"] = {"de": {"language": "de", "value": "Pinky"}}
    dump = write_dump(tmp_path / "d.json", [mul_only, both, neither])
    wikidata.parse_dump(dump, tmp_path / "snap")
    assert wikidata.read_labels(tmp_path / "snap") == {"Q2": "Rufus T. Firefly", "Q3": "Chicolini"}


def test_bz2_dumps_go_through_indexed_bzip2_when_it_is_installed(tmp_path, monkeypatch):
    """indexed_bzip2 is optional (not installed here): a stand-in module with its open()
    signature checks that .bz2 dumps are routed to it, with a parallelisation."""
    import sys
    import types

    plain = write_dump(tmp_path / "d.json", [_rich_entity()])
    packed = tmp_path / "d.json.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    calls = []

    def fake_open(path, parallelization=1):
        calls.append((path, parallelization))
        return bz2.open(path, "rb")

    monkeypatch.setitem(sys.modules, "indexed_bzip2", types.SimpleNamespace(open=fake_open))
    triples, _, _ = wikidata.read_dump(packed)
    assert calls and calls[0][0] == str(packed) and calls[0][1] >= 1
    assert triples == wikidata.read_dump(plain)[0]
