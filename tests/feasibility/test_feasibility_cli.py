"""`lucid feasibility score | baseline | czsl`: files, exports, resume and bad input."""

import json

import numpy as np
import pytest
import torch
from feasibility_fixtures import OBJECTS, SEEN, STATES

from lucidml.cli import main
from lucidml.feasibility import FeasibilityScores
from lucidml.feasibility import czsl as C


def lucid(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model_dir(tiny_lm, tmp_path):
    model, tok = tiny_lm
    folder = tmp_path / "lm"
    model.float().save_pretrained(folder)
    model.double()
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def vocab_file(tmp_path):
    feasible = SEEN + [("sliced", "egg"), ("wet", "apple"), ("wet", "egg"), ("broken", "apple")]
    path = tmp_path / "vocab.json"
    path.write_text(
        json.dumps({"states": STATES, "objects": OBJECTS, "seen": SEEN, "feasible": feasible})
    )
    return path


def test_score_writes_the_table_exports_and_a_ranking(model_dir, vocab_file, tmp_path):
    out = tmp_path / "run"
    assert (
        lucid(
            "feasibility", "score", "--vocab", vocab_file, "--model", model_dir, "--out", out, "-q"
        )
        == 0
    )
    for name in (
        "scores.safetensors",
        "scores.csv",
        "kgsp_feasibility.npy",
        "csp_feasibility.pt",
        "czsl_feasibility.npy",
        "results.json",
        "report.html",
        "roc.png",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["n_scored"] == 16 - len(SEEN)
    assert 0 <= results["ranking"]["roc_auc"] <= 1
    table = FeasibilityScores.load(out)
    assert table.states == STATES and np.isposinf(table.matrix[table.seen]).all()


def test_score_resumes_from_the_objects_it_stored(model_dir, vocab_file, tmp_path):
    out = tmp_path / "run"
    args = ("feasibility", "score", "--vocab", vocab_file, "--model", model_dir, "--out", out, "-q")
    assert lucid(*args) == 0
    first = FeasibilityScores.load(out).matrix
    parts = sorted((out / "parts").rglob("object-*.safetensors"))
    parts[-1].unlink()
    assert lucid(*args, "--resume") == 0
    np.testing.assert_array_equal(FeasibilityScores.load(out).matrix, first)
    # another setting on resume is refused, naming it
    assert lucid(*args, "--resume", "--n-examples", "2") == 2


def test_score_from_three_files_equals_score_from_one_json(model_dir, tmp_path):
    (tmp_path / "s.txt").write_text("\n".join(STATES))
    (tmp_path / "o.txt").write_text("\n".join(OBJECTS))
    (tmp_path / "seen.txt").write_text("\n".join(f"{s} {o}" for s, o in SEEN))
    (tmp_path / "v.json").write_text(
        json.dumps({"states": STATES, "objects": OBJECTS, "seen": SEEN})
    )
    common = ("--model", model_dir, "-q")
    files = (
        "--states",
        tmp_path / "s.txt",
        "--objects",
        tmp_path / "o.txt",
        "--seen",
        tmp_path / "seen.txt",
    )
    assert lucid("feasibility", "score", *files, *common, "--out", tmp_path / "a") == 0
    assert (
        lucid(
            "feasibility", "score", "--vocab", tmp_path / "v.json", *common, "--out", tmp_path / "b"
        )
        == 0
    )
    a, b = FeasibilityScores.load(tmp_path / "a"), FeasibilityScores.load(tmp_path / "b")
    np.testing.assert_array_equal(a.matrix, b.matrix)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("{not json"), "is not valid JSON"),
        (
            lambda p: p.write_text(json.dumps({"states": [], "objects": ["egg"], "seen": []})),
            "state vocabulary is empty",
        ),
        (
            lambda p: p.write_text(
                json.dumps({"states": ["wet", "wet"], "objects": ["egg"], "seen": []})
            ),
            "state 'wet' is listed twice",
        ),
        (
            lambda p: p.write_text(
                json.dumps({"states": ["wet"], "objects": ["egg"], "seen": [["dry", "egg"]]})
            ),
            "state 'dry', not in the states",
        ),
    ],
)
def test_bad_vocabularies_exit_2_before_anything_is_written(write, message, tmp_path, capsys):
    vocab = tmp_path / "v.json"
    write(vocab)
    out = tmp_path / "run"
    assert lucid("feasibility", "score", "--vocab", vocab, "--out", out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_a_missing_file_and_an_unknown_model_exit_2(vocab_file, tmp_path, capsys):
    assert (
        lucid(
            "feasibility",
            "score",
            "--states",
            tmp_path / "nope.txt",
            "--objects",
            tmp_path / "x",
            "--seen",
            tmp_path / "y",
            "--out",
            tmp_path / "a",
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        lucid(
            "feasibility",
            "score",
            "--vocab",
            vocab_file,
            "--model",
            "no-such/model-xyz",
            "--out",
            tmp_path / "b",
        )
        == 2
    )
    assert not (tmp_path / "b").exists()


def test_czsl_masks_with_a_score_folder_and_the_oracle(model_dir, tmp_path):
    data = C.synthetic_dataset(n_states=4, n_objects=4, feasible_fraction=0.6, per_pair=(8, 4, 4))
    features, pairs = tmp_path / "f.safetensors", tmp_path / "p.json"
    C.save_dataset(data, features, pairs)
    scores = tmp_path / "flm"
    assert (
        lucid("feasibility", "score", "--vocab", pairs, "--model", model_dir, "--out", scores, "-q")
        == 0
    )
    out = tmp_path / "ow"
    assert (
        lucid(
            "feasibility",
            "czsl",
            "--features",
            features,
            "--pairs",
            pairs,
            "--feasibility",
            scores,
            "--steps",
            20,
            "--out",
            out,
            "-q",
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["kind"], r["mask"]) for r in rows} == {
        (k, m) for k in ("compcos", "kgsp") for m in ("none", "flm", "oracle")
    }
    assert (out / "open_world.png").is_file()


def test_czsl_refuses_a_table_of_another_vocabulary(model_dir, vocab_file, tmp_path, capsys):
    data = C.synthetic_dataset(n_states=4, n_objects=4, feasible_fraction=0.6, per_pair=(8, 4, 4))
    features, pairs = tmp_path / "f.safetensors", tmp_path / "p.json"
    C.save_dataset(data, features, pairs)
    scores = tmp_path / "flm"
    assert (
        lucid(
            "feasibility",
            "score",
            "--vocab",
            vocab_file,
            "--model",
            model_dir,
            "--out",
            scores,
            "-q",
        )
        == 0
    )
    assert (
        lucid(
            "feasibility",
            "czsl",
            "--features",
            features,
            "--pairs",
            pairs,
            "--feasibility",
            scores,
            "--out",
            tmp_path / "ow",
        )
        == 2
    )
    assert "other states or objects" in capsys.readouterr().err
