"""--resume is keyed on everything that determines each stored result (issue 15, item 2).

The old key was ``rank-{dataset}-ipc{ipc}-{labels}``: a resume with other methods,
``--quick``, another seed or another recipe returned the stored rows. Here each distilled
set and each cell has its own key, so a changed setting recomputes and an unchanged one is
reused.
"""

import dataclasses

import pytest
from distill_fixtures import tiny_rank

from lucidml.core.distributed import ItemStore
from lucidml.distill import api
from lucidml.distill.cells import CellJob, set_key
from lucidml.distill.evaluate import Evaluator


def _keys(cfg, data, methods=("random", "noise")) -> tuple[dict, list]:
    """The set keys and cell keys a rank job with ``cfg`` would store (nothing trained)."""
    ev = Evaluator(data, cfg.effective_eval(), device="cpu").split()
    sets = {m: set_key(m, cfg.ipc, cfg.effective_distill(), ev) for m in methods}
    job = CellJob(ev, sets, {c: cfg.ipc for c in range(10)}, ItemStore("unused"))
    return sets, [job.key(item) for item in job.items()]


def _changed_pixel(data):
    train_x = data.train_x.clone()
    train_x[0, 0, 0, 0] += 0.5
    return dataclasses.replace(data, train_x=train_x)


@pytest.mark.parametrize(
    "change,changes",
    [
        (lambda c: c.updated(quick=True), True),  # shorter recipe and fewer DM/DC steps
        (lambda c: c.with_eval(seed=1), True),
        (lambda c: c.updated(ipc=2), True),
        # the distiller config changes the sets, so their cells; not the random subsets
        (lambda c: c.updated(distill=c.distill.updated(dm_iterations=7)), "sets"),
        (lambda c: c.with_eval(val_fraction=0.2), True),  # another training split
        (lambda c: c.with_eval(recipe=c.eval.recipe.updated(epochs=11)), False),
        (lambda c: c.with_eval(lr_grid=[0.01]), False),
        (lambda c: c.with_eval(selection="test"), True),  # no hold-out: another split
        (lambda c: c.with_eval(augment=c.eval.augment.updated(mix="cutmix")), False),
        (lambda c: c.with_eval(labels="soft", loss="kl"), False),
        (lambda c: c.with_eval(labels="soft", loss="kl", temperature=4.0), False),
    ],
)
def test_every_setting_that_changes_a_result_changes_its_key(change, changes, digits):
    """``changes``: True (every set and cell key), False (every cell key, no set key), or
    "sets" (the sets and their cells, not the random subsets' cells)."""
    base = tiny_rank()
    sets, cells = _keys(base, digits)
    sets2, cells2 = _keys(change(base), digits)
    assert (sets2 != sets) == bool(changes)
    if changes == "sets":
        assert not set(sets.values()) & set(sets2.values())
        assert set(cells) & set(cells2) == {c for c in cells if c.startswith("random-")}
    else:
        assert not set(cells) & set(cells2)  # every cell is recomputed


def test_another_dataset_content_changes_every_key(digits):
    sets, cells = _keys(tiny_rank(), digits)
    sets2, cells2 = _keys(tiny_rank(), _changed_pixel(digits))
    assert not set(sets.values()) & set(sets2.values()) and not set(cells) & set(cells2)


def test_settings_that_only_combine_accuracies_keep_every_key(digits):
    base = tiny_rank()
    sets, cells = _keys(base, digits)
    for same in (
        base.with_eval(lrs_lambda=0.3, ars_lambda=0.7),
        base.with_eval(device="cpu"),
    ):
        assert _keys(same, digits) == (sets, cells)
    # two more runs: the first runs' cells keep their keys
    sets3, cells3 = _keys(base.with_eval(num_eval=4), digits)
    assert sets3 == sets and set(cells) < set(cells3)
    # other methods in the group: the same sets, the random cells kept, the set cells new
    # (a student's float rounding depends on its group)
    sets4, cells4 = _keys(base, digits, methods=("random",))
    assert sets4 == {"random": sets["random"]}
    assert {c for c in cells if c.startswith("random-")} == set(cells4) & set(cells)


def test_resume_recomputes_changed_settings_and_reuses_the_rest(tmp_path):
    out = tmp_path / "r"

    def rank(cfg, resume=True):
        results = api.rank(cfg, out=out, resume=resume)
        return results, (results["items"]["reused"], results["items"]["computed"])

    base = tiny_rank()
    first, items = rank(base, resume=False)
    assert items == (0, 11)  # 3 sets, 2 runs x (3 set cells + 1 random cell)
    # another recipe: the sets are reused, every cell recomputed
    longer = base.with_eval(recipe=base.eval.recipe.updated(epochs=5))
    assert rank(longer)[1] == (3, 8)
    # another distiller config: new sets, so new set cells; the random cells are kept
    changed = base.updated(distill=base.distill.updated(dm_iterations=7))
    assert rank(changed)[1] == (2, 9)
    # back to the first settings: everything is stored, and the rows are the first ones
    again, items = rank(base)
    assert items == (11, 0) and again["methods"] == first["methods"]
