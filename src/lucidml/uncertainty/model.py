"""BayesVLM: a Kronecker-factored Laplace posterior over both projections of a CLIP/SigLIP.

bvlm = BayesVLM(vlm).fit((images, captions)).optimize_prior_precision()
logits = bvlm.predict(images, ["a photo of a cat.", "a photo of a dog."])
probs = logits.probs()            # probit-corrected; logits.var is the uncertainty
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lucidml.core.progress import get_logger, track
from lucidml.errors import ConfigError, InputError, ModelError, ShapeError
from lucidml.uncertainty import kfac
from lucidml.uncertainty.config import PosteriorConfig
from lucidml.uncertainty.hessians import ggn_sum
from lucidml.uncertainty.predictive import ProbabilisticLogits, SampledLogits
from lucidml.uncertainty.probcos import cosine_moments
from lucidml.uncertainty.towers import (
    TOWERS,
    TowerInputs,
    float64_device,
    image_inputs,
    projection_layer,
    text_inputs,
)

log = get_logger("uncertainty")
FACTORS_FILE, META_FILE = "factors.safetensors", "posterior.json"


@dataclass
class FactorSums:
    """Running sums of both towers' K-FAC factors. Plain sums, so checkpoints (and shards)
    add up exactly; the 1/sqrt(N) scaling is applied once at the end."""

    sum_aa: dict[str, torch.Tensor]
    sum_h: dict[str, torch.Tensor]
    n_data: int = 0
    n_batches: int = 0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The sums as flat CPU tensors ``sum_aa.image``, ``sum_h.text``, ... (safetensors)."""
        return {
            f"{kind}.{tower}": value.detach().cpu().contiguous()
            for kind, per_tower in (("sum_aa", self.sum_aa), ("sum_h", self.sum_h))
            for tower, value in per_tower.items()
        }

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], n_data: int, n_batches: int, device="cpu"
    ) -> FactorSums:
        per_kind: dict[str, dict[str, torch.Tensor]] = {"sum_aa": {}, "sum_h": {}}
        for name, value in tensors.items():
            kind, tower = name.split(".", 1)
            per_kind[kind][tower] = value.to(device, torch.float64)
        return cls(per_kind["sum_aa"], per_kind["sum_h"], n_data, n_batches)


@dataclass
class TowerPosterior:
    """The fitted factors of one projection, their eigenbases and its prior precision."""

    factors: kfac.KronFactors
    theta_sqnorm: float  # ||[W, b]||^2 of the pretrained projection
    prior_precision: float
    alpha: torch.Tensor = field(init=False)
    U: torch.Tensor = field(init=False)
    beta: torch.Tensor = field(init=False)
    V: torch.Tensor = field(init=False)

    _last_M: tuple = field(init=False, default=(None, None), repr=False, compare=False)

    def __post_init__(self):
        self.alpha, self.U = kfac.psd_eigh(self.factors.A)
        self.beta, self.V = kfac.psd_eigh(self.factors.B)

    def covariance_eigenvalues(self, n: float, damping: str) -> torch.Tensor:
        """M at (n, damping, the current prior precision), kept for the next call: the
        split scale's search costs ~7 ms, and sampling asks again for every chunk."""
        key = (n, damping, self.prior_precision)
        if self._last_M[0] != key:
            lam = self.prior_precision
            M = kfac.covariance_eigenvalues(self.alpha, self.beta, n, lam, damping)
            self._last_M = (key, M)
        return self._last_M[1]


class BayesVLM:
    """Post-hoc Laplace uncertainty for a ``VisionLanguageModel`` (CLIP or SigLIP).

    The encoders run where the model is (``device`` moves it there first; None leaves it
    where it is), in the model's dtype. The posterior (factors, eigenbases, variances) is
    float64 on the same device, or on the CPU for devices without float64 (Apple's MPS).
    """

    def __init__(self, vlm, config: PosteriorConfig | None = None, device: str | None = None):
        if device is not None:
            from lucidml.core.config import resolve_device

            vlm.to(resolve_device(device))
        self.vlm, self.config = vlm, config or PosteriorConfig()
        self.device = float64_device(vlm.device)
        self.layers = {t: projection_layer(vlm, t) for t in TOWERS}
        self.posteriors: dict[str, TowerPosterior] = {}
        self.weight_overrides: dict[str, torch.Tensor] = {}  # e.g. a few-shot tuned projection
        self.lambda_fitted = False

    # --- the layer ------------------------------------------------------------------------
    def _weight(self, tower: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        layer = self.layers[tower]
        bias = None if layer.bias is None else layer.bias.detach().to(self.device, torch.float64)
        weight = self.weight_overrides.get(tower)
        if weight is None:
            weight = layer.weight.detach().to(self.device, torch.float64)
        return weight, bias

    @property
    def image_weight(self) -> torch.Tensor:
        return self._weight("image")[0]

    def _design(self, tower: str, a: torch.Tensor) -> torch.Tensor:
        """The layer's input with the bias column appended where it has a bias."""
        return a if self.layers[tower].bias is None else kfac.with_bias_column(a)

    def embed(self, tower: str, x: TowerInputs, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised embeddings W a + b + r, optionally with another weight (q, p)."""
        w, b = self._weight(tower)
        e = x.a @ (w if weight is None else weight).to(x.a.dtype).T
        if b is not None:
            e = e + b.to(x.a.dtype)
        return e if x.r is None else e + x.r

    @property
    def logit_scale(self) -> float:
        return float(self.vlm.logit_scale.detach())

    @property
    def logit_bias(self) -> float:
        return float(self.vlm.logit_bias.detach()) if self.vlm.kind == "siglip" else 0.0

    # --- fitting --------------------------------------------------------------------------
    def fit(
        self,
        pairs,
        sums: FactorSums | None = None,
        on_batch: Callable[[FactorSums], None] | None = None,
    ) -> BayesVLM:
        """Accumulate K-FAC factors from image-caption pairs: one ``(images, captions)``
        tuple (split into class batches) or an iterable of such batches (a loader).

        ``on_batch`` sees the running sums after every class batch (to checkpoint them);
        passing saved ``sums`` back resumes, skipping the batches they already hold."""
        sums = sums or self._zero_sums()
        batches = self._class_batches(pairs)
        total = len(batches) - sums.n_batches if isinstance(batches, list) else None
        remaining = itertools.islice(batches, sums.n_batches, None)
        encoded = (
            (
                image_inputs(self.vlm, images, self.config.encode_batch),
                text_inputs(self.vlm, captions, self.config.encode_batch),
            )
            for images, captions in remaining
        )
        return self._fit_batches(encoded, sums, on_batch, total)

    def fit_inputs(self, img: TowerInputs, txt: TowerInputs) -> BayesVLM:
        """``fit`` on cached projection inputs of paired images and captions."""
        if len(img) != len(txt):
            raise ShapeError(f"got {len(img)} image inputs but {len(txt)} caption inputs")
        step = self.config.class_batch
        batches = ((img[i : i + step], txt[i : i + step]) for i in range(0, len(img), step))
        return self._fit_batches(batches, self._zero_sums(), total=math.ceil(len(img) / step))

    def _zero_sums(self) -> FactorSums:
        dims = {t: self.layers[t].in_features + (self.layers[t].bias is not None) for t in TOWERS}
        q = self.layers["image"].out_features
        zeros = dict(dtype=torch.float64, device=self.device)
        return FactorSums(
            {t: torch.zeros(dims[t], dims[t], **zeros) for t in TOWERS},
            {t: torch.zeros(q, q, **zeros) for t in TOWERS},
        )

    def _fit_batches(
        self,
        batches: Iterable[tuple[TowerInputs, TowerInputs]],
        sums: FactorSums,
        on_batch: Callable[[FactorSums], None] | None = None,
        total: int | None = None,
    ) -> BayesVLM:
        for img, txt in track(batches, "K-FAC class batches", total=total):
            self._accumulate(img, txt, sums.sum_aa, sums.sum_h)
            sums.n_data += len(img)
            sums.n_batches += 1
            if on_batch is not None:
                on_batch(sums)
        if sums.n_data == 0:
            raise InputError("no image-caption pairs to fit the posterior on")
        # Incomplete class batches are kept (the reference drops them silently).
        log.info("fitted K-FAC factors on %d image-caption pairs", sums.n_data)
        for t in TOWERS:
            factors = kfac.KronFactors.from_sums(sums.sum_aa[t], sums.sum_h[t], sums.n_data)
            self._set_posterior(t, factors, self._default_lambda(t))
        self.lambda_fitted = False
        return self

    def _class_batches(self, pairs) -> Iterable[tuple[torch.Tensor, Sequence[str]]]:
        if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], torch.Tensor):
            images, captions = pairs
            if len(images) != len(captions):
                raise ShapeError(
                    f"got {len(images)} images but {len(captions)} captions; "
                    "expected one caption per image"
                )
            step = self.config.class_batch
            return [
                (images[i : i + step], list(captions[i : i + step]))
                for i in range(0, len(images), step)
            ]
        return pairs

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """The dtype of each class batch's factor products: float32 on CUDA (float64 runs
        many times slower there), float64 elsewhere, unless the config names one. The
        running sums and everything after them stay float64."""
        name = self.config.accumulate_dtype
        if name == "auto":
            name = "float32" if self.device.type == "cuda" else "float64"
        return getattr(torch, name)

    def _accumulate(self, img: TowerInputs, txt: TowerInputs, sum_aa: dict, sum_h: dict) -> None:
        """Add one class batch: each image scores against the batch's captions and back."""
        dtype = self.accumulate_dtype
        inputs = {"image": _cast(img, dtype), "text": _cast(txt, dtype)}
        x = {t: self.embed(t, inputs[t]) for t in TOWERS}
        other = {"image": F.normalize(x["text"], dim=-1), "text": F.normalize(x["image"], dim=-1)}
        for t in TOWERS:
            design = self._design(t, inputs[t].a)
            sum_aa[t] += (design.T @ design).double()
            for start in range(0, len(design), self.config.data_batch):
                xs = x[t][start : start + self.config.data_batch]
                h = ggn_sum(self.vlm.kind, xs, other[t], self.logit_scale, self.logit_bias)
                sum_h[t] += h.double()

    def _default_lambda(self, tower: str) -> float:
        c = self.config
        return c.lambda_init_img if tower == "image" else c.lambda_init_txt

    def _set_posterior(self, tower: str, factors: kfac.KronFactors, lam: float) -> None:
        w, b = self._weight(tower)
        theta = w if b is None else torch.cat([w, b[:, None]], dim=1)
        self.posteriors[tower] = TowerPosterior(factors, float((theta**2).sum()), lam)

    def _require_fitted(self) -> None:
        if not self.posteriors:
            raise ModelError("the posterior is not fitted: call fit() or load() first")

    def optimize_prior_precision(self) -> BayesVLM:
        """Fit each tower's prior precision by maximising the Laplace marginal likelihood."""
        self._require_fitted()
        c = self.config
        for t, post in self.posteriors.items():
            post.prior_precision = kfac.optimize_prior_precision(
                post.alpha,
                post.beta,
                post.theta_sqnorm,
                n=c.fit_n,
                damping=c.damping,
                compat=c.compat_logdet,
                solver=c.solver,
                init=self._default_lambda(t),
            )
        self.lambda_fitted = True
        return self

    @property
    def prior_precision(self) -> dict[str, float]:
        return {t: p.prior_precision for t, p in self.posteriors.items()}

    # --- prediction -----------------------------------------------------------------------
    def embedding_moments(
        self, tower: str, x: TowerInputs, map_estimate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (N, q) and diagonal variance (N, q) of the tower's unnormalised embeddings."""
        mean = self.embed(tower, x)
        if map_estimate:
            return mean, torch.zeros_like(mean)
        self._require_fitted()
        post = self.posteriors[tower]
        M = post.covariance_eigenvalues(self.config.predict_n, self.config.damping)
        return mean, kfac.embedding_variance(self._design(tower, x.a), post.U, post.V, M)

    def embedding_spectrum(
        self, tower: str, x: TowerInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean (N, q) of the tower's unnormalised embeddings and their whole covariance,
        as eigenvalues (N, q) along the columns of one eigenbasis (q, q) shared by all N."""
        self._require_fitted()
        post = self.posteriors[tower]
        M = post.covariance_eigenvalues(self.config.predict_n, self.config.damping)
        w = kfac.embedding_spectrum(self._design(tower, x.a), post.U, M)
        return self.embed(tower, x), w, post.V

    def logits(
        self, img: TowerInputs, txt: TowerInputs, map_estimate: bool = False
    ) -> ProbabilisticLogits:
        """Gaussian logits (N, C) from cached inputs of N images and C texts, through the
        embeddings' full covariances (``embedding_covariance: diagonal`` keeps only their
        diagonals, as the reference does)."""
        if map_estimate or self.config.embedding_covariance == "diagonal":
            mu_i, var_i = self.embedding_moments("image", img, map_estimate)
            mu_t, var_t = self.embedding_moments("text", txt, map_estimate)
            mean, var = cosine_moments(mu_i, var_i, mu_t, var_t, self.config.cosine_var)
        else:
            mu_i, w_i, V_i = self.embedding_spectrum("image", img)
            mu_t, w_t, V_t = self.embedding_spectrum("text", txt)
            mean, var = cosine_moments(
                mu_i, w_i, mu_t, w_t, self.config.cosine_var, img_basis=V_i, txt_basis=V_t
            )
        s = self.logit_scale
        return ProbabilisticLogits(s * mean + self.logit_bias, s**2 * var)

    def predict(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        map_estimate: bool = False,
        predictive: str = "moments",
        n_samples: int = 400,
        seed: int = 0,
    ) -> ProbabilisticLogits | SampledLogits:
        """Logits of every image against every text: Gaussian (``moments``, the analytic
        mean and variance), or ``samples``, S joint weight draws through the cosine (the
        check on the moments). ``map_estimate`` gives the pretrained model's logits with
        zero variance."""
        if isinstance(texts, str) or len(texts) == 0:
            raise InputError("expected a non-empty list of texts")
        img = image_inputs(self.vlm, images, self.config.encode_batch)
        txt = text_inputs(self.vlm, texts, self.config.encode_batch)
        if predictive == "samples" and not map_estimate:
            draws = self.sample_logits(img, txt, n_samples, torch.Generator().manual_seed(seed))
            return SampledLogits(draws)
        if predictive not in ("moments", "samples"):
            raise ConfigError(f"unknown predictive '{predictive}', expected moments or samples")
        return self.logits(img, txt, map_estimate)

    def probs(
        self, img: TowerInputs, txt: TowerInputs, config, map_estimate: bool = False
    ) -> torch.Tensor:
        """Class probabilities under a ``PredictConfig``: probit or MC over the Gaussian
        logits, or ``samples`` (``mc_samples`` weight draws, seeded by ``seed``)."""
        if config.predictive == "samples" and not map_estimate:
            gen = torch.Generator().manual_seed(config.seed)
            return SampledLogits(self.sample_logits(img, txt, config.mc_samples, gen)).probs()
        method = "probit" if config.predictive == "samples" else config.predictive
        logits = self.logits(img, txt, map_estimate)
        return logits.probs(method, config.mc_samples, config.seed)

    def class_inputs(
        self, class_names: Sequence[str], templates: Sequence[str] | None = None
    ) -> TowerInputs:
        """One text input per class: the mean projection input over the templates."""
        if len(class_names) == 0:
            raise InputError("the list of class names is empty")
        templates = list(templates or self.vlm.templates)
        texts = [t.format(c) for c in class_names for t in templates]
        txt = text_inputs(self.vlm, texts, self.config.encode_batch)
        return TowerInputs(txt.a.view(len(class_names), len(templates), -1).mean(1))

    def sample_logits(
        self,
        img: TowerInputs,
        txt: TowerInputs,
        n_samples: int,
        generator: torch.Generator | None = None,
        chunk: int = 50,
    ) -> torch.Tensor:
        """Logits (S, N, C) under joint posterior draws of both projections; draws are
        shared across all N images, which acquisition functions like EPIG need."""
        self._require_fitted()
        out = []
        for start in range(0, n_samples, chunk):
            k = min(chunk, n_samples - start)
            emb = {}
            for t, x in (("image", img), ("text", txt)):
                post = self.posteriors[t]
                M = post.covariance_eigenvalues(self.config.predict_n, self.config.damping)
                noise = kfac.sample_weight_noise(post.U, post.V, M, k, generator)  # (k, q, p)
                delta = self._design(t, x.a) @ noise.transpose(1, 2)  # (k, N, q)
                emb[t] = F.normalize(self.embed(t, x) + delta, dim=-1)
            cos = emb["image"] @ emb["text"].transpose(1, 2)
            out.append(self.logit_scale * cos + self.logit_bias)
        return torch.cat(out)

    # --- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``factors.safetensors`` and ``posterior.json`` into ``folder``; the factors
        are stored as float64 CPU tensors, so they load on any device."""
        from safetensors.torch import save as st_save

        from lucidml.core.runs import atomic_write_bytes, write_json

        self._require_fitted()
        folder = Path(folder)
        tensors = {}
        for t, post in self.posteriors.items():
            tensors[f"{t}.A"] = post.factors.A.cpu().contiguous()
            tensors[f"{t}.B"] = post.factors.B.cpu().contiguous()
        atomic_write_bytes(folder / FACTORS_FILE, st_save(tensors))
        meta = {
            "model": self.vlm.name,
            "kind": self.vlm.kind,
            "n_pairs": self.posteriors["image"].factors.n_data,
            "shapes": {
                t: [self.layers[t].out_features, self.layers[t].in_features] for t in TOWERS
            },
            "theta_sqnorm": {t: p.theta_sqnorm for t, p in self.posteriors.items()},
            "prior_precision": self.prior_precision,
            "lambda_fitted": self.lambda_fitted,
            # the posterior's own fields only (a job config adds its inputs to them)
            "config": self.config.model_dump(
                mode="json", include=set(PosteriorConfig.model_fields)
            ),
            # "split" meant the reference's damping before the scale was fitted
            "split_scale": "marginal-likelihood",
        }
        write_json(folder / META_FILE, meta)
        return folder

    @classmethod
    def load(
        cls,
        vlm,
        folder: str | Path,
        config: PosteriorConfig | None = None,
        device: str | None = None,
    ) -> BayesVLM:
        """Rebuild a fitted BayesVLM for ``vlm`` from a folder written by ``save``, on
        ``device`` (None: where ``vlm`` is), whichever device the factors were fitted on."""
        folder = Path(folder)
        meta, tensors = _read_posterior_files(folder)
        stored = dict(meta.get("config", {}))
        if stored.get("damping", "split") == "split" and "split_scale" not in meta:
            log.warning(
                "%s was saved when 'split' damping meant the reference's: loading it as "
                "split-reference, the posterior it was fitted with",
                folder,
            )
            stored["damping"] = "split-reference"
        base = PosteriorConfig.from_dict(stored, source=str(folder / META_FILE))
        self = cls(vlm, config or base, device)
        fitted_on = f"'{meta.get('model')}'"
        if meta.get("kind") != vlm.kind:
            raise ModelError(
                f"the factors in {folder} were fitted on the {meta.get('kind')} model "
                f"{fitted_on}, which does not match {vlm.name} ({vlm.kind})"
            )
        for t in TOWERS:
            layer = self.layers[t]
            want = [layer.out_features, layer.in_features]
            if meta["shapes"].get(t) != want:
                raise ModelError(
                    f"the factors in {folder} were fitted on {fitted_on} ({t} projection "
                    f"{meta['shapes'].get(t)}), which does not match {vlm.name} ({t} "
                    f"projection {want})"
                )
            p, q = layer.in_features + (layer.bias is not None), layer.out_features
            A, B = tensors.get(f"{t}.A"), tensors.get(f"{t}.B")
            for name, factor, n in ((f"{t}.A", A, p), (f"{t}.B", B, q)):
                if factor is None or tuple(factor.shape) != (n, n):
                    got = "missing" if factor is None else f"of shape {tuple(factor.shape)}"
                    raise InputError(
                        f"{folder / FACTORS_FILE}: factor {name} is {got}; expected ({n}, {n}) "
                        f"for {vlm.name}"
                    )
                if not torch.isfinite(factor).all():
                    raise InputError(
                        f"{folder / FACTORS_FILE}: factor {name} holds NaN or infinite values"
                    )
                _check_psd(factor, f"{folder / FACTORS_FILE}: factor {name}")
            factors = kfac.KronFactors(
                A.to(self.device, torch.float64),
                B.to(self.device, torch.float64),
                meta["n_pairs"],
            )
            self._set_posterior(t, factors, meta["prior_precision"][t])
            saved = meta["theta_sqnorm"][t]
            if abs(saved - self.posteriors[t].theta_sqnorm) > 1e-6 * saved:
                raise ModelError(
                    f"the factors in {folder} were fitted on {fitted_on}, whose {t} "
                    f"projection weights differ from {vlm.name}'s"
                )
        self.lambda_fitted = bool(meta.get("lambda_fitted", False))
        return self


def _check_psd(factor: torch.Tensor, what: str) -> None:
    """A K-FAC factor is a sum of outer products: symmetric and positive semi-definite.
    Eigenvalues are clamped at 0 later (round-off), which would silently turn a damaged
    factor into another posterior, so a clearly negative one is refused here."""
    f = factor.double()
    scale = float(f.abs().max())
    if float((f - f.T).abs().max()) > 1e-8 * scale:
        raise InputError(f"{what} is not symmetric; it is not a K-FAC factor")
    smallest = float(torch.linalg.eigvalsh(f)[0])
    if smallest < -1e-6 * scale:
        raise InputError(
            f"{what} is not positive semi-definite (smallest eigenvalue {smallest:.3g}); "
            "it is not a K-FAC factor written by `lucid uncertainty fit`"
        )


def _cast(x: TowerInputs, dtype: torch.dtype) -> TowerInputs:
    return TowerInputs(x.a.to(dtype), None if x.r is None else x.r.to(dtype))


def _read_posterior_files(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """posterior.json and factors.safetensors of a saved posterior, checked for what load
    relies on; any problem is one sentence naming the file."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    factors_file, meta_file = folder / FACTORS_FILE, folder / META_FILE
    if not factors_file.is_file():
        raise InputError(
            f"{folder} holds no {FACTORS_FILE}; run `lucid uncertainty fit` to create it"
        )
    if not meta_file.is_file():
        raise InputError(f"{folder} holds no {META_FILE}; run `lucid uncertainty fit` to create it")
    try:
        meta = json.loads(meta_file.read_bytes())
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise InputError(f"{meta_file} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("shapes"), dict):
        raise InputError(f"{meta_file} is not a BayesVLM posterior description")
    n_pairs = meta.get("n_pairs")
    if not isinstance(n_pairs, int) or isinstance(n_pairs, bool) or n_pairs < 1:
        raise InputError(f"{meta_file}: n_pairs must be a positive integer, got {n_pairs!r}")
    for key, least in (("prior_precision", "positive"), ("theta_sqnorm", "non-negative")):
        values = meta.get(key)
        for t in TOWERS:
            v = values.get(t) if isinstance(values, dict) else None
            number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not number or v < 0 or (v == 0 and least == "positive"):
                raise InputError(
                    f"{meta_file}: {key}.{t} must be a finite {least} number, got {v!r}"
                )
    try:
        tensors = load_file(factors_file)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{factors_file} is not a readable safetensors file ({exc})") from None
    return meta, tensors
