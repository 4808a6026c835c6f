import json

import pytest
from wikidata_fixtures import facts_dump

from lucidml.editing import api, build, questions, wikidata
from lucidml.editing.config import BuildConfig
from lucidml.errors import InputError

PROPS = {
    "P6": "head of government",
    "P286": "head coach",
    "P54": "member of sports team",
    "P31": "instance of",
    "P36": "capital",
}
LABELS = {
    "Q1": "Freedonia",
    "Q2": "Rufus Firefly",
    "Q3": "Chicolini",
    "Q4": "Sylvania",
    "Q5": "Trentino",
    "Q6": "Harry Kane",
    "Q7": "Tottenham Hotspur",
    "Q8": "FC Bayern Munich",
    "Q9": "Thomas Tuchel",
    "Q10": "Vincent Kompany",
    "Q11": "Category:Rulers",
    "Q12": "Freedonia Republic",  # circular with Freedonia
    "Q13": "The Very Long Name Of Some Person",  # six words
    "Q14": "Marxonia",
    "Q15": "Groucho",
    "Q16": "Harpo",
    "Q17": "Zeppo",
    "Q18": "Gummo",
    "Q19": "Freedonia City",
    "Q20": "Freedonial",
    "Q21": "Anna",
    "Q22": "Lucia",
    "Q23": "Grand Fenwick",
    "Q24": "Duchess Gloriana",
    "Q25": "Tully Bascombe",
    "Q26": "country",
    "Q27": "human",
}
OLD = {
    ("Q1", "P6"): ["Q2"],
    ("Q4", "P6"): ["Q5"],
    ("Q6", "P54"): ["Q7"],
    ("Q8", "P286"): ["Q9"],
    ("Q14", "P6"): ["Q15"],
    ("Q19", "P6"): ["Q16"],
    ("Q20", "P6"): ["Q21"],
    ("Q23", "P6"): ["Q24"],
    ("Q2", "P31"): ["Q27"],
    ("Q26", "P36"): ["Q22"],
    ("Q17", "P31"): ["Q27"],
    ("Q18", "P31"): ["Q27"],
    ("Q3", "P31"): ["Q27"],
}
NEW = {
    ("Q1", "P6"): ["Q3"],  # update, kept
    ("Q4", "P6"): ["Q11"],  # Category: object -> dropped
    ("Q6", "P54"): ["Q8"],  # update; chains through Q8's update -> multi-hop
    ("Q8", "P286"): ["Q10"],  # update
    ("Q14", "P6"): ["Q12"],  # object "Freedonia Republic" fine for Marxonia (not circular)
    ("Q19", "P6"): ["Q16"],  # unchanged: locality candidate, near-duplicate of Freedonia
    ("Q20", "P6"): ["Q21"],  # unchanged: another candidate
    ("Q23", "P6"): ["Q13"],  # six-word object -> dropped
    ("Q2", "P31"): ["Q27"],
    ("Q26", "P36"): ["Q22"],
    ("Q17", "P31"): ["Q27"],
    ("Q18", "P31"): ["Q27"],
    ("Q3", "P31"): ["Q27"],
    ("Q17", "P6"): ["Q1", "Q4"],  # new property with two objects: ambiguous
    ("Q18", "P6"): ["Q19"],  # new, kept
    ("Q3", "P6"): ["Q12"],  # not circular: Chicolini / Freedonia Republic
}


@pytest.fixture
def snapshots(tmp_path):
    old = facts_dump(tmp_path / "old.json", OLD, LABELS, PROPS)
    new = facts_dump(tmp_path / "new.json", NEW, LABELS, PROPS)
    for d in ("old", "new"):
        wikidata.parse_dump(tmp_path / f"{d}.json", tmp_path / d)
    del old, new
    return tmp_path / "old", tmp_path / "new"


def by_subject(records):
    return {r["subject"]: r for r in records}


def test_filters_and_probes(snapshots):
    records, stats = build.build_timestep(*snapshots, timestep=3)
    recs = by_subject(records)
    assert stats["dropped"] == {"category_or_template": 1, "long_label": 1, "ambiguous": 2}
    assert set(recs) == {
        "Freedonia",
        "Harry Kane",
        "FC Bayern Munich",
        "Marxonia",
        "Gummo",
        "Chicolini",
    }
    r = recs["Freedonia"]
    assert (r["tag"], r["ans"], r["old_object"], r["timestep"]) == (
        "update",
        "Chicolini",
        "Rufus Firefly",
        3,
    )
    assert r["update"] == "Who is the head of government of Freedonia?"
    # the nearest unchanged same-relation subject by name (rapidfuzz WRatio, pinned)
    assert r["loc"] == "Who is the head of government of Freedonial?"
    assert r["loc_ans"] == "Anna"
    assert recs["Harry Kane"]["mhop"] == "Who is the head coach of the club Harry Kane plays for?"
    assert recs["Harry Kane"]["mhop_ans"] == "Vincent Kompany"
    assert recs["FC Bayern Munich"]["mhop"] is None  # Vincent Kompany has no changed fact
    # no locality probe asks about an edited (subject, relation)
    assert all(r["loc"] is not None for r in records)
    assert not {r["loc"] for r in records} & {r["update"] for r in records}


def test_locality_ranking_is_pinned():
    import pandas as pd

    pool = pd.DataFrame(
        {
            "subject": ["A", "B", "C", "D"],
            "property": ["P6", "P6", "P6", "P9"],
            "object": ["x", "y", "o", "z"],
        }
    )
    labels = {
        "S": "Harry Kane",
        "A": "Harry Kanes",
        "B": "Barry Cane",
        "C": "Harry Kane Jr",
        "D": "Harry Kane",
    }
    cand = build.locality_candidates("S", "P6", "o", pool, labels)
    assert list(cand["subject"]) == ["A", "B"]  # same relation first; C has the edit's object
    assert cand["score"].iloc[0] > cand["score"].iloc[1]


def test_multihop_rejects_blocklisted_and_return_hops(snapshots, tmp_path):
    cfg = BuildConfig(mhop_blocklist=["P286"])
    records, _ = build.build_timestep(*snapshots, cfg=cfg)
    assert by_subject(records)["Harry Kane"]["mhop"] is None


def test_label_filters():
    cfg = BuildConfig()
    assert build.label_problem("Category:Rulers", cfg, True) == "category_or_template"
    assert build.label_problem("Template:Infobox", cfg, False) == "category_or_template"
    assert build.label_problem("東京", cfg, True) == "non_latin"
    assert build.label_problem("X", cfg, True) == "short_label"
    assert build.label_problem("a b c d e f", cfg, True) == "long_label"
    assert build.label_problem("a b c d e f", cfg, False) is None  # subjects may be long
    assert build.label_problem("Élisabeth Borne", cfg, True) is None
    assert build.is_circular("Freedonia", "President of freedonia")
    assert not build.is_circular("Freedonia", "Chicolini")


def test_questions_are_deterministic_and_filtered():
    t = questions.Templates.load()
    assert t.question("P6", "Japan") == "Who is the head of government of Japan?"
    assert t.question("P999", "Japan", "mascot") == "What is the mascot of Japan?"
    with pytest.raises(InputError, match="P999"):
        t.question("P999", "Japan")
    canned = iter(
        [
            "Who leads the government?",  # misses the subject
            "Is Shigeru Ishiba the leader of Japan?",  # leaks the answer
            "The head of government of Japan is the Emperor.",  # answers instead of asking
            "Who is the head of government of Japan?",  # the source question again
            "Who runs the cabinet of Japan?",  # valid
        ]
    )
    source = "Who is the head of government of Japan?"
    kept = [
        questions.propose(
            lambda _: next(canned), "", "fallback", "Japan", "Shigeru Ishiba", source=source
        )
        for _ in range(5)
    ]
    assert kept == [("fallback", False)] * 4 + [("Who runs the cabinet of Japan?", True)]
    valid = "Who runs the cabinet of Japan?"
    for score, expected in ((0.7, ("fallback", False)), (0.8, (valid, True))):
        got = questions.propose(
            lambda _: valid,
            "",
            "fallback",
            "Japan",
            "Shigeru Ishiba",
            source,
            lambda a, b, s=score: s,
        )
        assert got == expected
    assert not questions.acceptable("Who leads Japan?", "Japan", "Shigeru Ishiba", obj="Ishiba")


def test_llm_questions_recorded(snapshots):
    def llm(prompt):
        return "Who, in truth, runs " + prompt.split("of ")[-1].split("?")[0] + "?"

    llm.name = "mock"
    records, _ = build.build_timestep(*snapshots, llm=llm)
    r = by_subject(records)["Freedonia"]
    assert r["rephrase"] == "Who, in truth, runs Freedonia?"
    assert r["generator"] == "mock"
    # the MiniLM meaning check is live: demanding near-identity brings the templates back
    strict = BuildConfig(llm_min_similarity=0.99)
    records, _ = build.build_timestep(*snapshots, cfg=strict, llm=llm)
    assert by_subject(records)["Freedonia"]["generator"] == "template"


def test_template_file_validated(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"P6": {"question": "Who leads?"}}')
    with pytest.raises(InputError, match="P6 needs a 'question'"):
        questions.Templates.load(bad)
    bad.write_text('{"head": {"question": "{subject}?"}}')
    with pytest.raises(InputError, match="not a relation id"):
        questions.Templates.load(bad)


def test_embedded_benchmark(tmp_path):
    _, manifest = api.build(api.embedded_snapshots(), tmp_path / "bench")
    steps = build.load_benchmark(tmp_path / "bench")
    assert [s["kept"] for s in manifest["timesteps"]] == [len(s) for s in steps]
    assert len(steps) == 2 and min(len(s) for s in steps) >= 20
    t1 = by_subject(steps[1])
    assert t1["United Kingdom"]["ans"] == "Keir Starmer"
    assert t1["United Kingdom"]["old_object"] == "Rishi Sunak"
    assert t1["Harry Kane"]["mhop_ans"] == "Vincent Kompany"
    assert t1["Linda Yaccarino"]["mhop"] is None  # Twitter's new CEO is her: a return hop
    t0 = by_subject(steps[0])
    assert t0["Twitter"]["tag"] == "update" and t0["Twitter"]["ans"] == "Elon Musk"
    # the deprecated 2022 "owned by Elon Musk" statement never counted: 2023's is new
    owned = [r for r in steps[0] if r["relation_id"] == "P127"]
    assert [(r["tag"], r["ans"]) for r in owned] == [("new", "Elon Musk")]
    for r in steps[0] + steps[1]:
        assert set(r) >= {
            "subject",
            "relation",
            "object",
            "update",
            "rephrase",
            "ans",
            "loc",
            "loc_ans",
            "mhop",
            "mhop_ans",
            "personas",
            "timestep",
        }
        assert questions.acceptable(r["update"], r["subject"], r["ans"])
        assert len(r["personas"]) == 5
    assert (tmp_path / "bench" / "timestep_001.parquet").is_file()


def test_prompts_cover_every_persona():
    q = "Who is the head coach of Liverpool F.C.?"
    assert questions.rephrase_instruction(q).endswith(
        f"Question: {q}\nSame question in other words:"
    )
    for style in questions.PERSONAS:
        assert questions.persona_instruction(q, style).endswith(f"Question: {q}\nAs a {style}:")


def test_transformers_llm_decodes_one_line(tiny_lm):
    model, tok = tiny_lm
    llm = questions.TransformersQuestionLLM(model, tok, max_new_tokens=6)
    out = llm(questions.rephrase_instruction("what is the capital of peru ?"))
    assert isinstance(out, str) and 0 < len(out.split()) <= 6
    # a random model's words are no question about peru: the template stands
    assert questions.propose(llm, "what is the capital of peru ?", "fb", "peru", "lima") == (
        "fb",
        False,
    )


def test_build_from_dumps_removes_its_folder_when_a_dump_is_bad(tmp_path):
    good = facts_dump(tmp_path / "old.json", OLD, LABELS, PROPS)
    bad = tmp_path / "new.json"
    bad.write_text(good.read_text().replace('"id": "Q5"', '"id": "Q5", oops', 1))
    with pytest.raises(InputError, match="line"):
        api.build([good, bad], tmp_path / "bench")
    assert not (tmp_path / "bench").exists()
    folder, manifest = api.build(
        [good, facts_dump(tmp_path / "n.json", NEW, LABELS, PROPS)], tmp_path / "bench"
    )
    assert (folder / "snapshots" / "old" / wikidata.TRIPLES).is_file()
    assert manifest


def test_a_killed_build_resumes_without_asking_the_llm_again(tmp_path):
    dumps = [
        facts_dump(tmp_path / "old.json", OLD, LABELS, PROPS),
        facts_dump(tmp_path / "new.json", NEW, LABELS, PROPS),
    ]
    asked = []

    def llm(prompt):
        if len(asked) == 7 and not llm.resumed:
            raise RuntimeError("killed")
        asked.append(prompt)
        return "Who, in truth, runs " + prompt.split("of ")[-1].split("?")[0] + "?"

    llm.name, llm.resumed = "mock", False
    cfg = BuildConfig(llm_min_similarity=0)  # no MiniLM here
    with pytest.raises(RuntimeError, match="killed"):
        api.build(dumps, tmp_path / "bench", cfg, llm=llm)
    answers = tmp_path / "bench" / "llm_answers.jsonl"
    assert answers.read_text().count("\n") == 7
    llm.resumed = True
    with pytest.raises(InputError, match="seed"):  # another config: refused, nothing written
        api.build(dumps, tmp_path / "bench", cfg.updated(seed=1), llm=llm, resume=True)
    assert BuildConfig.from_yaml(tmp_path / "bench" / "config.yaml").seed == 0
    folder, _ = api.build(dumps, tmp_path / "bench", cfg, llm=llm, resume=True)
    total = len(asked)  # 7 before the kill, the rest after it: none asked twice
    assert len(set(asked)) == total > 7
    records = (folder / "timestep_000.jsonl").read_text()
    assert "Who, in truth, runs Freedonia?" in records
    asked.clear()
    again, _ = api.build(dumps, tmp_path / "fresh", cfg, llm=llm)
    assert len(asked) == total and (again / "timestep_000.jsonl").read_text() == records


def test_no_locality_probe_asks_about_a_fact_edited_at_any_timestep(tmp_path):
    # issue 17 found 8 of t0's locality probes edited at t1, and 6 of t1's at t0
    api.build(api.embedded_snapshots(), tmp_path / "bench")
    steps = build.load_benchmark(tmp_path / "bench")
    edited = {(r["subject_id"], r["relation_id"]) for s in steps for r in s}
    probed = [(r["loc_subject_id"], r["loc_relation_id"]) for s in steps for r in s if r["loc"]]
    assert len(probed) >= 40  # most records still get a locality probe
    assert all(s and p for s, p in probed)
    assert [sp for sp in probed if sp in edited] == []
    # the ids are the probe's own: the question names that subject
    parsed = sorted((tmp_path / "bench" / "snapshots").iterdir())
    labels = wikidata.read_labels(*parsed)
    assert all(labels[r["loc_subject_id"]] in r["loc"] for s in steps for r in s if r["loc"])


def test_an_unlabelled_property_in_the_locality_pool_is_skipped_not_fatal(tmp_path):
    # issue 17: a property without a label among the unchanged facts aborted the build
    # and left <out>/snapshots behind; Harry Kane's P99 fact is his best locality match
    with_p99 = {k: {**d, ("Q6", "P99"): ["Q16"]} for k, d in (("old", OLD), ("new", NEW))}
    dumps = [facts_dump(tmp_path / f"{k}.json", d, LABELS, PROPS) for k, d in with_p99.items()]
    folder, _ = api.build(dumps, tmp_path / "bench")
    records = build.load_benchmark(folder)[0]
    assert by_subject(records)["Harry Kane"]["loc"]  # a probe from the labelled facts
    assert all(r["loc_relation_id"] != "P99" for r in records)


def test_a_build_failing_after_parsing_leaves_nothing(tmp_path, monkeypatch):
    dumps = [
        facts_dump(tmp_path / "old.json", OLD, LABELS, PROPS),
        facts_dump(tmp_path / "new.json", NEW, LABELS, PROPS),
    ]

    def fail(*args, **kwargs):
        raise InputError("planted failure")

    monkeypatch.setattr(build, "build_benchmark", fail)
    with pytest.raises(InputError, match="planted"):
        api.build(dumps, tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


def _fake_question_llm(prompt: str) -> str:
    """A QuestionLLM that rewrites the rephrase and the pirate persona acceptably and
    answers the other persona prompts with a non-question (which the filter rejects)."""
    q = prompt.rsplit("Question: ", 1)[1].split("\n")[0]
    if "Same question in other words" in prompt:
        return f"Tell me truly: {q}\n"
    if "the way a pirate would" in prompt:
        return f"Arr, {q}\n"
    return "I do not know.\n"


def test_llm_rewrites_are_the_default_with_llm_and_every_probe_names_its_writer(
    tmp_path, monkeypatch, capsys, tiny_lm
):
    from cli_runner import lucid

    dumps = [
        str(facts_dump(tmp_path / "old.json", OLD, LABELS, PROPS)),
        str(facts_dump(tmp_path / "new.json", NEW, LABELS, PROPS)),
    ]
    _fake_question_llm.name = "fake-llm"
    asked = []
    monkeypatch.setattr(
        api, "_question_llm", lambda name, device: asked.append(name) or _fake_question_llm
    )
    args = ("editing", "build", "--old", dumps[0], "--new", dumps[1], "--llm-min-similarity", "0")
    assert lucid(*args, "--out", str(tmp_path / "llm"), "--llm", "fake-llm") == 0
    llm_out = capsys.readouterr().out
    assert asked == ["fake-llm"]
    assert lucid(*args, "--out", str(tmp_path / "offline")) == 0  # no --llm: templates
    offline_out = capsys.readouterr().out
    assert asked == ["fake-llm"]  # not loaded again
    (llm_records,), (offline_records,) = (
        build.load_benchmark(tmp_path / "llm"),
        build.load_benchmark(tmp_path / "offline"),
    )
    n = len(llm_records)
    assert n == len(offline_records) > 0
    for r, plain in zip(llm_records, offline_records, strict=True):
        assert r["update"] == plain["update"]  # the edited question stays templated
        assert r["rephrase"] == f"Tell me truly: {r['update']}" != plain["rephrase"]
        assert r["personas"]["pirate"] == f"Arr, {r['update']}"
        wrapped = questions.personas(r["update"])
        for style in ("detective", "casual", "philosopher", "caveman"):  # fell back
            assert r["personas"][style] == wrapped[style] == plain["personas"][style]
        expected = {style: "template" for style in questions.PERSONAS} | {"pirate": "fake-llm"}
        assert r["generators"] == {"rephrase": "fake-llm", "personas": expected}
        assert r["generator"] == "fake-llm"  # record level: the LLM wrote some of it
        assert plain["generator"] == "template"
        assert plain["generators"] == {
            "rephrase": "template",
            "personas": dict.fromkeys(questions.PERSONAS, "template"),
        }
    manifest = json.loads((tmp_path / "llm" / "benchmark.json").read_text())
    assert manifest["timesteps"][0]["reworded_by"] == {"template": 4 * n, "fake-llm": 2 * n}
    assert f"reworded probes: {4 * n} templated, {2 * n} by fake-llm" in llm_out
    assert f"reworded probes: {6 * n} templated" in offline_out
    # a run's results and report name who wrote its reworded probes
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    run = ("editing", "run", "--method", "rag", "--model", str(tmp_path / "tiny"))
    run += ("--max-edits", "2")
    assert lucid(*run, "--benchmark", str(tmp_path / "llm"), "--out", str(tmp_path / "r")) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["reworded_by"] == {"template": 8, "fake-llm": 4}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "this benchmark's: 8 templated, 4 by fake-llm" in report
