"""Does the digits-clip posterior depend on how a scalar is shared between its K-FAC factors?

A and B are only defined up to A -> cA, B -> B/c. The script fits the posterior once on
the digits train pairs, then moves the scalar N^(1/2) between the factors the three ways
the field uses (both sums / sqrt(N), ours; A = mean and B = sum, laplace-torch's; A = sum
and B = mean), refits lambda by marginal likelihood each time, and prints zero-shot NLPD and
ECE on clean and noisy digits for each damping. A convention-free damping prints one
number per column whatever the convention.

    .venv/bin/python benchmarks/uncertainty_split_convention.py
"""

from __future__ import annotations

import copy
import math

import torch

from lucidml.core.digits_clip import TEMPLATES
from lucidml.core.zoo import load_digits, load_vlm
from lucidml.uncertainty import data, evaluation
from lucidml.uncertainty.config import PosteriorConfig, PredictConfig
from lucidml.uncertainty.model import BayesVLM, TowerPosterior, image_inputs, text_inputs

CONVENTIONS = {  # c multiplies A (and 1/c multiplies B) of the stored sums / sqrt(N)
    "sums / sqrt(N)": lambda n: 1.0,
    "A mean, B sum": lambda n: 1 / math.sqrt(n),
    "A sum, B mean": lambda n: math.sqrt(n),
}


def rescaled(bvlm: BayesVLM, damping: str, c_of_n) -> BayesVLM:
    out = copy.copy(bvlm)
    out.config = bvlm.config.updated(damping=damping)
    out.posteriors = {}
    for tower, post in bvlm.posteriors.items():
        f = copy.copy(post.factors)
        c = c_of_n(f.n_data)
        f.A, f.B = post.factors.A * c, post.factors.B / c
        out.posteriors[tower] = TowerPosterior(f, post.theta_sqnorm, post.prior_precision)
    return out.optimize_prior_precision()


def main() -> None:
    torch.set_num_threads(1)
    d, vlm = load_digits(), load_vlm("digits-clip")
    captions = data.digits_captions(d.train_y, d.class_names)
    fitted = BayesVLM(vlm, PosteriorConfig()).fit_inputs(
        image_inputs(vlm, d.train_x), text_inputs(vlm, captions)
    )
    cls = fitted.class_inputs(d.class_names, TEMPLATES)
    sets = {"clean": image_inputs(vlm, d.test_x)}
    sets["noise"] = image_inputs(vlm, data.read_images("digits-noise")[0])
    print(
        f"{'damping':<16} {'convention':<16} "
        + " ".join(f"{s + ' ' + m:>12}" for s in sets for m in ("NLPD", "ECE"))
    )
    for damping in ("split-reference", "split", "eig"):
        for name, c_of_n in CONVENTIONS.items():
            bvlm = rescaled(fitted, damping, c_of_n)
            cells = []
            for x in sets.values():
                m = evaluation.score(bvlm, x, d.test_y, cls, PredictConfig())["bayesvlm"]
                cells += [m["nlpd"], m["ece"]]
            print(f"{damping:<16} {name:<16} " + " ".join(f"{v:>12.3f}" for v in cells))
    m = evaluation.score(fitted, sets["noise"], d.test_y, cls, PredictConfig())["map"]
    print(f"MAP (no posterior): noisy NLPD {m['nlpd']:.3f}, ECE {m['ece']:.3f}")


if __name__ == "__main__":
    main()
