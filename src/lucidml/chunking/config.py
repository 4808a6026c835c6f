"""Job configs; defaults are the paper's (see docs/chunking.md for where ours differ)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lucidml.core.config import Config
from lucidml.core.zoo import LLM_DEFAULT

Regime = Literal["one_chunk", "several_chunks", "probabilistic_chunks", "hierarchy"]

# per regime: (window, n_iters, bins, decoder_train_steps), from the paper's table
REGIME_DEFAULTS: dict[str, tuple[int, int, int, int]] = {
    "one_chunk": (200, 400, 5, 100),
    "several_chunks": (400, 160, 5, 300),
    "probabilistic_chunks": (200, 500, 5, 100),
    "hierarchy": (5000, 300, 3, 100),
}


class RNNConfig(Config):
    """Train the Elman RNN on one regime, chunk its states (DSC), probe them causally."""

    regime: Regime = "one_chunk"
    seed: int = 0
    # auto | cpu | cuda | cuda:N | mps, checked by resolve_device; the 12-unit RNN and DSC
    # run on the CPU whatever it names (docs/chunking.md, "Devices and dtypes")
    device: str = "auto"
    hidden_size: int = 12
    lr: float = 0.005
    nonlinearity: Literal["linear", "tanh"] = "linear"
    window: int | None = Field(None, gt=1, description="None: the regime's default")
    n_iters: int | None = Field(None, ge=0, description="None: the regime's default")
    bins: int | None = Field(None, ge=1, description="None: the regime's default")
    decoder_train_steps: int | None = Field(None, ge=1, description="None: the regime's default")
    # recorded steps, clamped to the sequence (None: the training window, as in the paper):
    # the states split each symbol into many context-specific states, so a planted chunk's
    # pairs need thousands of steps to pass min_pair_count (docs/chunking.md, DSC)
    record_length: int | None = Field(10_000, gt=1, description="recorded steps; None: the window")
    merge_rounds: int = Field(6, ge=1)
    # association: merge only pairs seen >= merge_min_ratio times their count under
    # independence with a Bonferroni-corrected one-sided binomial p <= merge_alpha; the
    # paper's frequency rule (BPE) glues the filler's context-specific states into chunks
    merge_rule: Literal["association", "frequency"] = "association"  # paper: frequency
    merges_per_round: int = Field(100, ge=1)  # paper: 5 (association stops by itself)
    min_pair_count: int = Field(10, ge=1)
    merge_min_ratio: float = Field(2.0, ge=1.0)
    merge_alpha: float = Field(0.01, gt=0, le=1)
    n_hierarchy: int = Field(10, ge=0, description="hierarchy regime: words built by concatenation")
    graft_repeats: int = Field(30, ge=0, description="several_chunks: repeats of the graft test")
    transfer_window: int = 100
    transfer_iters: int = 100

    def resolved(self) -> RNNConfig:
        """A copy with every regime-dependent field filled in."""
        window, iters, bins, dec = REGIME_DEFAULTS[self.regime]
        return self.updated(
            window=self.window or window,
            n_iters=iters if self.n_iters is None else self.n_iters,
            bins=self.bins or bins,
            decoder_train_steps=self.decoder_train_steps or dec,
        )


class PAConfig(Config):
    """Fit PA templates for one word on a text and score them on held-out sentences."""

    model: str = LLM_DEFAULT
    device: str = "auto"
    word: str
    steps: list[int] = [-2, -1, 0, 1, 2]
    layers: list[int] | None = None  # None: every index 0..n_layers
    n_train: int = Field(5, ge=1)  # the paper uses 10 for punctuation
    min_occurrences: int = Field(10, ge=2)
    # the fitting text's last sentences, on which tau, theta and the layer are chosen
    # (the paper chooses tau on the fitting text, sets theta to the largest training
    # deviation and reports the held-out tail of the same text)
    validation_fraction: float = Field(0.3, gt=0, lt=1)
    baselines: bool = True  # token identity, logistic probe, difference of means
    seed: int = 0
    batch_size: int = Field(32, ge=1)


class GraftConfig(Config):
    """Inject a word's templates or direction while sampling; count the word in generations.

    The paper's graft is ``mode="replace"`` at layers 2-9, ``positions=[-1]``, prompt pass
    only. Ours, chosen from a measured sweep on SmolLM2 (docs/chunking.md), adds the
    contrastive direction at layer 12 at 0.05 of the residual norm, on every position and
    every decode step.
    """

    model: str = LLM_DEFAULT
    device: str = "auto"
    word: str
    mode: Literal["replace", "add"] = "add"  # paper: replace
    direction: Literal["contrast", "template"] = "contrast"  # add: what is added
    strength: float = Field(0.05, ge=0, le=10)  # add: fraction of the residual norm
    strengths: list[float] | None = None  # add: a dose-response sweep (strength included)
    layers: list[int] = [12]  # paper: 2..9
    positions: Literal["last", "all"] | list[int] = "all"  # paper: [-1]
    every_step: bool = True  # paper: prompt pass only
    step: int = Field(0, ge=-2, le=2)  # templates of this step (+1: the word about to come)
    concepts: list[str] | None = None  # None: the word's nearest unembedding neighbours
    n_train: int = Field(5, ge=1)
    min_occurrences: int = Field(10, ge=2)
    validation_fraction: float = Field(0.3, gt=0, lt=1)
    top_p: float = Field(0.9, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(180, ge=1)  # the reference: 200 tokens with the prompt
    chat: bool = True
    seed: int = 0
    # one batch holds the 48 built-in prompts; the samples depend on it (seeded per batch)
    batch_size: int = Field(64, ge=1)

    def strength_sweep(self) -> list[float]:
        """The strengths to sample at: ``strengths`` with ``strength`` included, sorted."""
        values = {self.strength, *(self.strengths or [])}
        bad = [s for s in values if not 0 <= s <= 10]
        if bad:
            from lucidml.errors import InputError

            raise InputError(f"strength {bad[0]} is outside 0..10 (a fraction of the norm)")
        return sorted(values)


class UCDConfig(Config):
    """Learn unsupervised chunk embeddings per layer; test loss on held-out sentences."""

    model: str = LLM_DEFAULT
    device: str = "auto"
    layers: list[int] | None = None  # None: the middle index
    n_chunks: int = Field(2000, ge=1)
    lr: float = 1e-2
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(100, ge=1)
    reseed_dead: bool = True  # the reference has no re-seeding
    heldout_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = 0
