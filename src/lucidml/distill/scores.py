"""The two DD-Ranking scores, on accuracies given as fractions in [0, 1].

Both map a difference of accuracies d in [-1, 1] through
``(e^d - e^-1) / (e - e^-1)``, a monotone map onto [0, 1] with 1/(1+e) at d = 0.
``paired_difference`` gives the mean of per-run differences with its Student-t interval.
"""

from __future__ import annotations

import math

import numpy as np

from lucidml.errors import InputError

_E = math.e
_LOW = math.exp(-1.0)


def score_map(d: float) -> float:
    """(e^d - e^-1) / (e - e^-1): 0 at d = -1, 1/(1+e) at d = 0, 1 at d = 1."""
    return (math.exp(d) - _LOW) / (_E - _LOW)


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(
            f"{name} = {value:g} is not an accuracy in [0, 1]; pass fractions, not percentages"
        )
    return value


def _weight(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{name} = {value:g} must lie in [0, 1]")
    return float(value)


def label_robust_score(
    acc_real_hard: float,
    acc_syn_hard: float,
    acc_syn: float,
    acc_rdm: float,
    lam: float = 0.5,
) -> dict[str, float]:
    """LRS from the hard-label recovery (HLR) and the improvement over random (IOR).

    HLR = acc_real_hard - acc_syn_hard, IOR = acc_syn - acc_rdm (both under the method's
    own label regime for IOR), alpha = lam * IOR - (1 - lam) * HLR.
    """
    real_h = _fraction("acc_real_hard", acc_real_hard)
    syn_h = _fraction("acc_syn_hard", acc_syn_hard)
    syn = _fraction("acc_syn", acc_syn)
    rdm = _fraction("acc_rdm", acc_rdm)
    lam = _weight("lam", lam)
    hlr = real_h - syn_h
    ior = syn - rdm
    alpha = lam * ior - (1.0 - lam) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": score_map(alpha)}


def augmentation_robust_score(
    acc_syn_aug: float,
    acc_rdm_aug: float,
    acc_syn_noaug: float,
    acc_rdm_noaug: float,
    gamma: float = 0.5,
) -> dict[str, float]:
    """ARS from the synthetic-minus-random gap with and without augmentation."""
    syn_a = _fraction("acc_syn_aug", acc_syn_aug)
    rdm_a = _fraction("acc_rdm_aug", acc_rdm_aug)
    syn_n = _fraction("acc_syn_noaug", acc_syn_noaug)
    rdm_n = _fraction("acc_rdm_noaug", acc_rdm_noaug)
    gamma = _weight("gamma", gamma)
    gap_aug, gap_noaug = syn_a - rdm_a, syn_n - rdm_n
    beta = gamma * gap_aug + (1.0 - gamma) * gap_noaug
    return {"gap_aug": gap_aug, "gap_noaug": gap_noaug, "beta": beta, "ars": score_map(beta)}


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """Mean of the paired differences d_r = a_r - b_r over runs, with a Student-t interval.

    Run r of ``a`` and of ``b`` share a seed (the same initialisation, batch order and
    augmentation draws), so the runs pair and the interval is
    mean(d) +- t_{(1+confidence)/2, n-1} * s_d / sqrt(n), with s_d the sample std of d.
    A single run has no spread to estimate: ``low`` and ``high`` are then None.
    """
    from lucidml.core.metrics import t_interval

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise InputError(
            f"paired differences need two non-empty lists of equal length, got {a.shape} and {b.shape}"
        )
    d = a - b
    low, high = t_interval(d, confidence) or (None, None)
    return {"mean": float(d.mean()), "low": low, "high": high, "n": int(d.size)}
