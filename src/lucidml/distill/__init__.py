"""DD-Ranking: label- and augmentation-robust evaluation of distilled datasets.

``Evaluator(data, cfg).score(x_syn, y_syn)`` trains fresh students on a distilled set,
on equal-size random real subsets and on the full data under one recipe, and returns
the Label-Robust Score (LRS) and the Augmentation-Robust Score (ARS) over seeded runs.
"""

from lucidml.distill.config import EvalConfig
from lucidml.distill.evaluate import Evaluator, evaluate
from lucidml.distill.scores import augmentation_robust_score, label_robust_score

__all__ = [
    "EvalConfig",
    "Evaluator",
    "augmentation_robust_score",
    "evaluate",
    "label_robust_score",
]
