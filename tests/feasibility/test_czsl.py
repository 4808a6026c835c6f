"""Known answers for open-world CZSL: the evaluator, masks, ranking, data files, heads."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from lucidml.errors import InputError
from lucidml.feasibility import czsl as C

# Toy with 2 states x 2 objects: p0 = (s0, o0), p1 = (s0, o1), p2 = (s1, o0), p3 = (s1, o1);
# p0 and p3 are seen.
TOY_SEEN = np.array([True, False, False, True])
TOY_STATE = np.array([0, 0, 1, 1])
TOY_OBJECT = np.array([0, 1, 0, 1])
TOY_TRUE = np.array([0, 1, 2])
TOY_SCORES = np.array(
    [
        [3.0, 1.0, 0.0, 0.5],  # true p0 (seen): max seen 3 (p0), max unseen 1 (p1)
        [1.0, 0.5, 0.2, 0.0],  # true p1 (unseen): max seen 1 (p0), max unseen 0.5 (p1)
        [3.0, 0.3, 1.0, 0.0],  # true p2 (unseen): max seen 3 (p0), max unseen 1 (p2)
    ]
)


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_evaluator_hand_computed_toy():
    # Image 0 stays right while 1 + b <= 3 (a tie goes to the lower index, p0): b <= 2.
    # Image 1 turns right when 0.5 + b > 1: b > 0.5.  Image 2 when 1 + b > 3: b > 2.
    # At b = 1000 images 1 and 2 are right: d = 1 - 0.5 - 1e-4 = 0.4999 and 3 - 1 - 1e-4 =
    # 1.9999; n = 2, step max(1, 2 // 20) = 1, grid = [0.4999, 1.9999, 1000].
    # S = [1, 1, 0]; U = [0, 0.5, 1]; HM = [0, 2/3, 0].
    # AUC over U: 0.5 * (1 + 1) / 2 + 0.5 * (1 + 0) / 2 = 0.75.
    r = C.evaluate(TOY_SCORES, TOY_TRUE, TOY_SEEN, TOY_STATE, TOY_OBJECT)
    assert r["curve"]["bias"] == pytest.approx([0.4999, 1.9999, 1000.0])
    assert r["curve"]["seen"] == [1.0, 1.0, 0.0]
    assert r["curve"]["unseen"] == [0.0, 0.5, 1.0]
    assert r["auc"] == pytest.approx(0.75)
    assert r["best_hm"] == pytest.approx(2 / 3)
    assert r["best_hm_bias"] == pytest.approx(1.9999)
    assert (r["best_seen"], r["best_unseen"]) == (1.0, 1.0)
    assert r["best_hm"] <= max(r["best_seen"], r["best_unseen"])
    # b = 0 predicts p0, p0, p0: states right 1, 1, 0; objects right 1, 0, 1.
    assert (r["state_acc"], r["object_acc"]) == pytest.approx((2 / 3, 2 / 3))
    # b = 1.9999 predicts p0, p1, p0: states 1, 1, 0; objects 1, 1, 1.
    assert (r["state_acc_at_best_hm"], r["object_acc_at_best_hm"]) == pytest.approx((2 / 3, 1))
    # b = 1000 predicts p1, p1, p2: states 1, 1, 1; objects 0, 1, 1.
    assert (r["compat_state_acc"], r["compat_object_acc"]) == pytest.approx((1, 2 / 3))
    assert (r["n_seen_images"], r["n_unseen_images"]) == (1, 2)


def test_evaluator_at_a_given_bias():
    # b = 0.7: image 0 right (0.7 <= 2), image 1 right (0.7 > 0.5), image 2 wrong.
    r = C.evaluate(TOY_SCORES, TOY_TRUE, TOY_SEEN, TOY_STATE, TOY_OBJECT, bias=0.7)
    assert (r["seen_at_bias"], r["unseen_at_bias"]) == (1.0, 0.5)
    assert r["hm_at_bias"] == pytest.approx(2 / 3)


def test_evaluator_without_correct_unseen_images_uses_bias_end_only():
    # Image 2's true pair masked out: only image 1 is right at b = 1000, so grid has
    # d = 0.4999 and 1000. With both unseen masked nothing is right and the grid is [1000].
    masked = TOY_SCORES.copy()
    masked[:, 1:3] = -np.inf
    r = C.evaluate(masked, TOY_TRUE, TOY_SEEN, TOY_STATE, TOY_OBJECT)
    assert r["curve"]["bias"] == [1000.0]
    assert r["curve"]["unseen"] == [0.0]
    assert r["auc"] == 0.0


def random_scores(rng, n, p, ties: bool):
    scores = rng.integers(0, 4, size=(n, p)).astype(float) if ties else rng.normal(size=(n, p))
    scores[rng.random((n, p)) < 0.2] = -np.inf
    scores[0] = -np.inf  # an image with every pair masked
    return scores.astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
def test_streaming_equals_dense(ties):
    rng = np.random.default_rng(1)
    n_states, n_objects, n = 5, 4, 300
    p = n_states * n_objects
    seen = rng.random(p) < 0.4
    true = np.where(
        rng.random(n) < 0.5,
        rng.choice(np.flatnonzero(seen), n),
        rng.choice(np.flatnonzero(~seen), n),
    )
    scores = random_scores(rng, n, p, ties)
    args = (true, seen, np.arange(p) // n_objects, np.arange(p) % n_objects)
    dense = C.evaluate(scores, *args, bias=0.3)
    for chunk in (1, 7, 64, 1000):
        assert C.evaluate_streaming(scores, *args, bias=0.3, chunk=chunk) == dense

    def tensor_blocks():
        return (torch.from_numpy(scores[i : i + 50]) for i in range(0, n, 50))

    assert C.evaluate_streaming(tensor_blocks, *args, bias=0.3) == dense
    assert C.evaluate_streaming(tensor_blocks(), *args, bias=0.3) == dense


@pytest.mark.parametrize("ties", [False, True])
def test_threshold_sweep_equals_dense_masking(ties):
    rng = np.random.default_rng(2)
    n_states, n_objects, n = 4, 5, 200
    p = n_states * n_objects
    seen = rng.random(p) < 0.4
    true = np.where(
        rng.random(n) < 0.5,
        rng.choice(np.flatnonzero(seen), n),
        rng.choice(np.flatnonzero(~seen), n),
    )
    scores = random_scores(rng, n, p, ties)
    feasibility = np.round(rng.normal(size=p), 1)  # ties in f
    feasibility[seen] = np.inf
    args = (np.arange(p) // n_objects, np.arange(p) % n_objects)
    tau, sweep = C.choose_threshold(scores, true, seen, feasibility, *args, trials=12, chunk=33)
    assert len(sweep) == 12
    for row in sweep:
        masked = C.hard_mask(scores, feasibility, seen, row["tau"])
        assert row["auc"] == C.evaluate(masked, true, seen, *args)["auc"]
        assert row["n_kept_unseen"] == int((feasibility[~seen] >= row["tau"]).sum())
    assert tau == max(sweep, key=lambda row: row["auc"])["tau"]


def test_hard_mask_keeps_seen_pairs():
    scores = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    feasibility = np.array([-5.0, 0.2, 0.9, -1.0])  # seen p0 and p3 have f < tau
    masked = C.hard_mask(scores, feasibility, TOY_SEEN, tau=0.5)
    assert masked.tolist() == [[1.0, -np.inf, 3.0, 4.0]]
    assert masked.dtype == np.float32
    assert C.hard_mask(scores, feasibility.reshape(2, 2), TOY_SEEN, 0.5).tolist() == masked.tolist()


def test_ranking_metrics_known_answers():
    seen = np.array([True, False, False, False, False, True])
    feasible = np.array([True, True, False, True, False, True])
    perfect = np.array([9.0, 2.0, 0.0, 1.0, -1.0, 9.0])
    assert C.ranking_metrics(perfect, feasible, seen)["roc_auc"] == 1.0
    assert C.ranking_metrics(-perfect, feasible, seen)["roc_auc"] == 0.0
    constant = C.ranking_metrics(np.zeros(6), feasible, seen)
    assert constant["roc_auc"] == 0.5
    assert (constant["n_pos"], constant["n_neg"]) == (2, 2)
    rng = np.random.default_rng(0)
    f = rng.normal(size=6)
    expected = average_precision_score(feasible[~seen], f[~seen])
    assert C.ranking_metrics(f, feasible, seen)["average_precision"] == pytest.approx(expected)
    with pytest.raises(InputError, match="feasible and infeasible"):
        C.ranking_metrics(f, np.ones(6, dtype=bool), seen)


def test_synthetic_dataset_structure():
    data = C.synthetic_dataset(seed=3)
    assert data.feasible.sum() == round(0.4 * 192)
    assert data.seen.sum() == round(0.5 * data.feasible.sum())
    assert not (data.seen & ~data.feasible).any()
    seen_pairs = np.flatnonzero(data.seen)
    assert set(seen_pairs // 12) == set(range(16))
    assert set(seen_pairs % 12) == set(range(12))
    assert data.seen[data.train_pairs].all()
    for split_pairs in (data.val_pairs, data.test_pairs):
        assert data.feasible[split_pairs].all()
        assert data.seen[split_pairs].any() and not data.seen[split_pairs].all()
    again = C.synthetic_dataset(seed=3)
    assert np.array_equal(again.test_x, data.test_x)


def noisy_feasibility(data, target_auc=0.8, seed=0):
    """Ground truth + sigma * fixed Gaussian noise, sigma picked on a grid so the ranking
    AUC on unseen pairs is closest to ``target_auc``."""
    noise = np.random.default_rng(seed).normal(size=data.n_pairs)
    truth = data.feasible.astype(float)

    def miss(sigma):
        auc = C.ranking_metrics(truth + sigma * noise, data.feasible, data.seen)["roc_auc"]
        return abs(auc - target_auc)

    sigma = min(np.linspace(0.1, 3.0, 59), key=miss)
    return truth + sigma * noise


@pytest.fixture(scope="module")
def open_world_rows(one_thread):
    data = C.synthetic_dataset(seed=0)
    oracle = data.feasible.astype(float)
    noisy = noisy_feasibility(data)
    rows = C.open_world(data, {"none": None, "noisy": noisy, "oracle": oracle}, steps=300)
    return data, noisy, {(row["kind"], row["mask"]): row for row in rows}


def test_noisy_mask_ranks_at_about_0_8(open_world_rows):
    data, noisy, _ = open_world_rows
    assert 0.75 <= C.ranking_metrics(noisy, data.feasible, data.seen)["roc_auc"] <= 0.85


@pytest.mark.parametrize("kind", ["compcos", "kgsp"])
def test_better_masks_give_higher_auc(open_world_rows, kind):
    _, _, rows = open_world_rows
    auc = {mask: rows[(kind, mask)]["auc"] for mask in ("none", "noisy", "oracle")}
    assert auc["oracle"] >= auc["noisy"] >= auc["none"], auc
    assert rows[(kind, "none")]["tau"] is None
    assert rows[(kind, "none")]["n_test_images"] == 770


@pytest.mark.parametrize("kind", ["compcos", "kgsp"])
def test_val_chosen_tau_keeps_unseen_feasible_pairs(open_world_rows, kind):
    _, _, rows = open_world_rows
    assert rows[(kind, "oracle")]["kept_unseen_feasible_fraction"] >= 0.9


def test_heads_are_deterministic_and_score_all_pairs(one_thread):
    data = C.synthetic_dataset(n_states=6, n_objects=5, seed=1)
    f = np.where(data.feasible, 1.0, -1.0)
    first = C.train_head(data, "compcos", feasibility=f, steps=10, seed=4)
    second = C.train_head(data, "compcos", feasibility=f, steps=10, seed=4)
    scores = first.pair_scores(data.test_x, chunk=17)
    assert scores.shape == (len(data.test_pairs), 30) and scores.dtype == np.float32
    assert np.array_equal(scores, second.pair_scores(data.test_x, chunk=17))
    assert np.allclose(scores, first.pair_scores(data.test_x), atol=1e-5)
    kgsp = C.train_head(data, "kgsp", steps=10)
    probs = np.exp(kgsp.pair_scores(data.test_x)).sum(1)
    assert probs == pytest.approx(np.ones(len(data.test_pairs)), abs=1e-5)
    with pytest.raises(InputError, match="CompCos heads only"):
        C.train_head(data, "kgsp", feasibility=f, steps=1)
    with pytest.raises(InputError, match="unknown compcos hyper-parameter"):
        C.train_head(data, "compcos", steps=1, depth=3)


def test_dataset_files_round_trip(tmp_path):
    data = C.synthetic_dataset(n_states=5, n_objects=4, feasible_fraction=0.6, seed=2)
    features, pairs = tmp_path / "features.safetensors", tmp_path / "pairs.json"
    C.save_dataset(data, features, pairs)
    loaded = C.load_dataset(features, pairs)
    assert (loaded.states, loaded.objects) == (data.states, data.objects)
    for name in (
        "train_x",
        "train_pairs",
        "val_x",
        "val_pairs",
        "test_x",
        "test_pairs",
        "seen",
        "feasible",
    ):
        assert np.array_equal(getattr(loaded, name), getattr(data, name)), name


def write_dataset(tmp_path, edit_pairs=None, edit_tensors=None):
    data = C.synthetic_dataset(n_states=5, n_objects=4, feasible_fraction=0.6, seed=2)
    features, pairs = tmp_path / "features.safetensors", tmp_path / "pairs.json"
    C.save_dataset(data, features, pairs)
    if edit_pairs:
        doc = json.loads(pairs.read_text())
        edit_pairs(doc)
        pairs.write_text(json.dumps(doc))
    if edit_tensors:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(features))
        edit_tensors(tensors, data)
        save_file(tensors, str(features))
    return features, pairs


def unseen_train_pair(tensors, data):
    tensors["train_pair"][0] = np.flatnonzero(~data.seen)[0]


@pytest.mark.parametrize(
    ("edit_pairs", "edit_tensors", "match", "names"),
    [
        (lambda doc: doc.pop("seen"), None, "with states, objects and seen", "pairs"),
        (lambda doc: doc["states"].append("state0"), None, "'state0' is listed twice", "pairs"),
        (
            lambda doc: doc["seen"].append(["state0", "sky"]),
            None,
            "'sky', not in the objects",
            "pairs",
        ),
        (None, lambda t, _: t.pop("val_pair"), "lacks tensor 'val_pair'", "features"),
        (None, lambda t, _: t["test_x"].__setitem__((0, 0), np.nan), "NaN", "features"),
        (None, lambda t, _: t["val_pair"].__setitem__(0, 20), r"outside \[0, 20\)", "features"),
        (None, unseen_train_pair, "not list as seen", "features"),
        (None, lambda t, _: t.update(val_x=t["val_x"][:, :3].copy()), "dimension 3", "features"),
    ],
)
def test_bad_dataset_files(tmp_path, edit_pairs, edit_tensors, match, names):
    features, pairs = write_dataset(tmp_path, edit_pairs, edit_tensors)
    with pytest.raises(InputError, match=match) as err:
        C.load_dataset(features, pairs)
    assert str(features if names == "features" else pairs) in str(err.value)


def test_unreadable_dataset_files(tmp_path):
    features, pairs = write_dataset(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        C.load_dataset(tmp_path / "missing.safetensors", pairs)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON") as err:
        C.load_dataset(features, bad_json)
    assert str(bad_json) in str(err.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"garbage")
    with pytest.raises(InputError, match="safetensors") as err:
        C.load_dataset(garbage, pairs)
    assert str(garbage) in str(err.value)
