"""The cache of real-data models (teachers): keyed on everything that trains them."""

from distill_fixtures import tiny_config

from lucidml.distill.evaluate import Evaluator
from lucidml.distill.teachers import cache_dir


def test_two_augmentation_strategies_give_two_cached_teachers(digits):
    # issue 15, item 7: the DSA strategy ("one" op per batch or "all") trains another teacher
    base = tiny_config()
    cfgs = [
        base.updated(
            real=base.real.updated(epochs=2),
            augment=base.augment.updated(dsa_strategy=strategy),
        )
        for strategy in ("one", "all")
    ]
    evaluators = [Evaluator(digits, cfg).fit() for cfg in cfgs]
    folders = {cache_dir(digits.name, e.real_key()) for e in evaluators}
    assert len(folders) == 2 and all((f / "meta.json").is_file() for f in folders)
    first, second = (e.teachers[0].state_dict() for e in evaluators)
    assert any(not first[k].equal(second[k]) for k in first)  # two trainings, not one reused


def test_the_teacher_key_names_the_engine(digits):
    base = tiny_config()
    keys = [
        Evaluator(digits, base.updated(engine=e)).split().real_key()
        for e in ("batched", "sequential")
    ]
    assert keys[0]["engine"] != keys[1]["engine"]
    assert cache_dir(digits.name, keys[0]) != cache_dir(digits.name, keys[1])
