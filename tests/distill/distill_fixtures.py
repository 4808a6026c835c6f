"""Small evaluation recipes shared by the distill tests."""

from lucidml.distill.config import EvalConfig


def tiny_config(**changes) -> EvalConfig:
    """A digits recipe small enough for unit tests (ConvNet-2, width 16, few epochs)."""
    base = EvalConfig.preset("digits-hard").model_copy(deep=True)
    cfg = base.updated(
        num_eval=3,
        lr_grid=[0.05],
        model=base.model.updated(width=16),
        recipe=base.recipe.updated(epochs=40, eval_every=10),
        real=base.real.updated(epochs=30, lr=0.05),
    )
    return cfg.updated(**changes)
