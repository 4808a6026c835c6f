"""The YAML merge config: ours, and mergekit's layout for the methods both tools have.

Ours::

    method: ties
    base: models/base            # or null for linear and slerp
    models:                      # or simply a list of paths
      - {model: models/a, weight: 0.6}
      - {model: models/b, weight: 0.4}
    parameters: {density: 0.5, lam: 1.0, scope: global}  # the method's (see techniques)
    dtype: bfloat16              # float32 | bfloat16 | float16 | null (the base's)
    shard_size: 2GB
    out: merged                  # optional; the command line may give it

mergekit's (``merge_method``, ``base_model``, ``models[].parameters.weight/density``,
global ``parameters``, ``dtype``) is read by :func:`load_merge_config` and translated into
ours so that the file means what it means to mergekit: its defaults are written out where
ours differ (no trim, per tensor) and its ``normalize`` becomes normalised weights or the
TIES weighted mean/sum. What has no counterpart here (``slices``, ``tokenizer_source``,
per-layer gradients, tensor filters, per-model densities that differ) is refused in one sentence naming it, never silently dropped. Settings
that cannot change the result here (``int8_mask``; ``rescale`` and ``filter_wise`` at
our fixed behaviour) are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lucidml.core.config import Config
from lucidml.errors import ConfigError, InputError
from lucidml.merging.io import DEFAULT_SHARD_SIZE, parse_size


class ModelEntry(Config):
    """One expert model: a local folder or .safetensors file, and its weight."""

    model: str
    weight: float | None = None  # None: the method's default (equal weights)


class MergeConfig(Config):
    """A merge job: the method, its models and parameters, and how the output is written."""

    method: str
    base: str | None = None
    models: list[ModelEntry] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)  # checked by the method
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: the base's dtype
    shard_size: int = DEFAULT_SHARD_SIZE  # bytes per output shard; "2GB" and "500MB" work
    out: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _paths_are_models(cls, value):
        """A plain path in ``models`` is a model with the default weight."""
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("shard_size", mode="before")
    @classmethod
    def _size(cls, value):
        try:
            return parse_size(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from lucidml.merging.techniques import METHODS

        if name not in METHODS:
            raise ValueError(f"unknown merge method '{name}': choose from {', '.join(METHODS)}")
        return name

    @model_validator(mode="after")
    def _method_accepts(self):
        """Weights for all models or none, a base where the method needs one, and
        parameters the method accepts: a config that loads can run."""
        from lucidml.merging.techniques import METHODS

        given = [m.weight is not None for m in self.models]
        if any(given) and not all(given):
            missing = self.models[given.index(False)].model
            raise ValueError(f"model {missing} has no weight while others have one")
        technique = METHODS[self.method]
        if technique.needs_base and self.base is None:
            raise ValueError(f"method '{self.method}' needs a base model (base: PATH)")
        try:
            technique.check(len(self.models), self.weights, dict(self.parameters))
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return self

    @staticmethod
    def _yaml_mapping(path: Path) -> dict[str, Any]:
        """The file's mapping, translated into our layout when it is mergekit's, so
        ``from_yaml`` and ``from_cli`` read both."""
        data = Config._yaml_mapping(path)
        return from_mergekit(data, f"config file {path}") if "merge_method" in data else data

    @property
    def experts(self) -> list[str]:
        return [m.model for m in self.models]

    @property
    def weights(self) -> list[float] | None:
        """The per-model weights, or None when no model gives one."""
        if self.models[0].weight is None:
            return None
        return [m.weight for m in self.models]


def load_merge_config(path: str | Path) -> MergeConfig:
    """A merge config from YAML in our layout (``method``) or mergekit's (``merge_method``)."""
    return MergeConfig.from_yaml(path)


# --- mergekit's layout -----------------------------------------------------------------------

# mergekit's method names for the methods both tools have. Its `breadcrumbs` prunes
# without TIES sign election, ours elects: only `breadcrumbs_ties` means the same.
MERGEKIT_METHODS = {
    "linear": "linear",
    "slerp": "slerp",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
    "breadcrumbs_ties": "breadcrumbs",
    "model_stock": "model_stock",
}
MERGEKIT_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype")
# mergekit parameter names that are ours under another name.
MERGEKIT_PARAMETERS = {"lambda": "lam", "density": "density", "gamma": "gamma", "t": "t"}
# mergekit's defaults where ours differ, written out when a file leaves them out, so the
# config merges as mergekit would: mergekit trims nothing by default, per tensor.
MERGEKIT_DEFAULTS = {
    "ties": {"density": 1.0, "scope": "tensor"},
    "dare_linear": {"density": 1.0},
    "dare_ties": {"density": 1.0},
    "breadcrumbs_ties": {"density": 1.0, "gamma": 0.01},
}
# mergekit's `normalize` default per method: whether the weighted sum of task vectors is
# divided by the summed weights (of the models agreeing in sign, for the TIES family).
MERGEKIT_NORMALIZE = {
    "task_arithmetic": False,
    "ties": True,
    "dare_linear": False,
    "dare_ties": False,
    "breadcrumbs_ties": False,
}
SIGN_ELECTING = ("ties", "dare_ties", "breadcrumbs_ties")
# mergekit's `rescale` default: DARE rescales kept entries, as ours always does; the other
# methods do not, as ours never do.
MERGEKIT_RESCALES = ("dare_linear", "dare_ties")
SLERP_ENDPOINTS = 2


def _no_op(method: str, key: str, value: Any) -> bool:
    """Whether a mergekit setting merges exactly as lucidml does without it: int8_mask
    only picks the dtype of mergekit's sign masks, rescale and filter_wise at our fixed
    behaviour (DARE rescales, Model Stock weighs per tensor)."""
    if key == "int8_mask":
        return isinstance(value, bool)
    if key == "rescale":
        return value is (method in MERGEKIT_RESCALES)
    return key == "filter_wise" and value is False


def from_mergekit(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Our config's fields from a mergekit config mapping, or ConfigError naming what
    mergekit has and we do not."""
    unknown = [key for key in data if key not in MERGEKIT_KEYS]
    if unknown:
        raise ConfigError(
            f"{source} uses mergekit keys lucidml does not support: {_names(unknown)}"
        )
    name = data["merge_method"]
    if name not in MERGEKIT_METHODS:
        raise ConfigError(
            f"{source}: mergekit merge_method '{name}' is not supported; lucidml reads "
            f"{_names(MERGEKIT_METHODS)}"
        )
    base = data.get("base_model")
    models = [_mergekit_model(entry, name, source) for entry in _model_list(data, source)]
    params = _mergekit_params(_mapping(data.get("parameters"), "parameters", source), name, source)
    default_weight = params.pop("weight", None)
    if name != "linear" and base is not None:  # a listed base has no task vector
        models = [(model, own) for model, own in models if model != base]
    if name == "slerp":
        models = _slerp_endpoints(base, models, source)
        base = None
    params = {**MERGEKIT_DEFAULTS.get(name, {}), **params, **_shared(models, params, source)}
    weights = _weights(models, default_weight, source)
    if name in MERGEKIT_NORMALIZE:
        weights = _normalized(name, weights, params, len(models), source)
    if name == "breadcrumbs_ties" and all(_is_number(params[k]) for k in ("gamma", "density")):
        params["gamma"] = min(params["gamma"], 1 - params["density"])  # as mergekit prunes
    entries = [
        {"model": model} if weights is None else {"model": model, "weight": weight}
        for (model, _), weight in zip(models, weights or [None] * len(models), strict=True)
    ]
    config = {"method": MERGEKIT_METHODS[name], "base": base, "models": entries}
    config["parameters"] = params
    dtype = data.get("out_dtype", data.get("dtype"))  # mergekit writes out_dtype, else dtype
    return config if dtype is None else {**config, "dtype": dtype}


def _normalized(name: str, weights, params: dict, n_models: int, source: str):
    """mergekit's ``normalize`` for a task-vector method, in our terms (it is consumed
    from ``params``): the weights divided by their sum, or for the TIES family the mean
    weighted by the agreeing models' weights (normalised) or their sum (not)."""
    normalize = params.pop("normalize", MERGEKIT_NORMALIZE[name])
    if not isinstance(normalize, bool):
        raise ConfigError(f"{source}: normalize must be true or false, got {normalize!r}")
    if name in SIGN_ELECTING:
        params["merge"] = "weighted_mean" if normalize else "sum"
        return weights
    if normalize:
        weights = weights or [1.0] * n_models
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ConfigError(f"{source}: the weights {weights} sum to 0 and cannot normalize")
        weights = [w / total for w in weights]
    return weights


def _weights(models: list[tuple[str, dict]], default, source: str) -> list | None:
    """Each model's weight (its own, else the global one), or None when none has one."""
    weights = [own.get("weight", default) for _, own in models]
    if all(w is None for w in weights):
        return None
    for (model, _), weight in zip(models, weights, strict=True):
        if weight is None:
            raise ConfigError(f"{source}: model {model} has no weight while others have one")
        if not _is_number(weight):
            raise ConfigError(f"{source}: the weight of model {model} must be a number")
    return weights


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _names(keys) -> str:
    return ", ".join(str(k) for k in keys)


def _model_list(data: dict, source: str) -> list:
    value = data.get("models")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: 'models' must be a non-empty list of models")
    return value


def _mapping(value, where: str, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where} must be a mapping of name: value")
    return value


def _slerp_endpoints(base, models: list, source: str) -> list:
    """mergekit's slerp goes from base_model (t = 0) to the one other model (t = 1)."""
    if base is None or len(models) != SLERP_ENDPOINTS - 1:
        raise ConfigError(
            f"{source}: mergekit slerp needs base_model and exactly one other model, "
            f"got base_model {base} and {len(models)} others"
        )
    return [(base, {}), *models]


def _mergekit_model(entry, method: str, source: str) -> tuple[str, dict[str, Any]]:
    """(path, parameters in our names) of one mergekit ``models`` entry."""
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict) or "model" not in entry:
        raise ConfigError(f"{source}: each entry of 'models' needs a 'model' path")
    unknown = [key for key in entry if key not in ("model", "parameters")]
    if unknown:
        raise ConfigError(
            f"{source}: model {entry['model']} uses keys lucidml does not support: "
            f"{_names(unknown)}"
        )
    where = f"the parameters of model {entry['model']}"
    own = _mapping(entry.get("parameters"), where, source)
    return str(entry["model"]), _mergekit_params(own, method, source, where)


def _mergekit_params(
    params: dict, method: str, source: str, where: str = "parameters"
) -> dict[str, Any]:
    """mergekit parameters in our names; scalars only (gradients and filters refused)."""
    out, unsupported = {}, []
    for key, value in params.items():
        if isinstance(value, list | dict):
            raise ConfigError(
                f"{source}: {where} give '{key}' as a per-layer gradient or tensor filter "
                f"({value}), which lucidml does not support: give one number"
            )
        if _no_op(method, key, value):
            continue
        if key in ("weight", "normalize"):
            out[key] = value
        elif key in MERGEKIT_PARAMETERS:
            out[MERGEKIT_PARAMETERS[key]] = value
        else:
            unsupported.append(f"{key}: {value}" if key in ("rescale", "filter_wise") else key)
    if unsupported:
        raise ConfigError(
            f"{source}: {where} use settings lucidml does not support: {_names(unsupported)}"
        )
    return out


def _shared(models: list[tuple[str, dict]], defaults: dict, source: str) -> dict[str, Any]:
    """Per-model parameters other than weight, which must come out the same for every
    model (its own value, else the global one): the methods here take one density (or
    gamma, ...) for all the models."""
    shared = {}
    for key in dict.fromkeys(key for _, own in models for key in own if key != "weight"):
        values = [own.get(key, defaults.get(key)) for _, own in models]
        if any(value != values[0] for value in values):
            listed = ", ".join(
                f"{model}: {value}" for (model, _), value in zip(models, values, strict=True)
            )
            raise ConfigError(
                f"{source}: per-model {key} is not supported (the models give {listed}); "
                f"give one {key} under the global parameters"
            )
        shared[key] = values[0]
    return shared


# --- TIME runs -------------------------------------------------------------------------------

from lucidml.merging.tasks import ADAPTATION, HELDOUT  # noqa: E402  (tasks imports torch)


class RecipeSpec(Config):
    """One TIME recipe: where each expert starts (init), what is served (deploy), and the
    merge operator both use. ``weights`` is the [new, old] pair of EMA merges (None: the
    method's default, equal halves for linear) or ``running_mean``."""

    init: str = "ema0"
    deploy: str = "ema0"
    method: str = "linear"
    weights: list[float] | str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    weighting: str = "uniform"  # offline merge_all weighting (linear only)
    include_base: bool = False

    @model_validator(mode="after")
    def _known(self):
        from lucidml.merging.techniques import get_method
        from lucidml.merging.timeline import Operator, resolve_strategy

        try:
            resolve_strategy(self.init)
            resolve_strategy(self.deploy)
            Operator(
                self.method, self.weights, dict(self.params), self.weighting, self.include_base
            )
            get_method(self.method).check(2, None, dict(self.params))  # names and ranges
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return self


def _default_recipes() -> list[RecipeSpec]:
    """TIME's three named recipes: continual fine-tuning, offline merging, Best-in-TIME."""
    return [
        RecipeSpec(init="latest", deploy="latest"),
        RecipeSpec(init="base", deploy="merge_all"),
        RecipeSpec(init="ema0", deploy="ema0"),
    ]


class TimelineConfig(Config):
    """A TIME run on the embedded digits stream (``lucid merging timeline``)."""

    model: str = "digits-clip"
    adaptation: list[str] = Field(default_factory=lambda: list(ADAPTATION))
    heldout: list[str] = Field(default_factory=lambda: list(HELDOUT))
    recipes: list[RecipeSpec] = Field(default_factory=_default_recipes, min_length=1)
    steps: int = Field(50, ge=1)  # per expert; the same budget for every recipe
    lr: float = Field(5e-4, gt=0)  # TIME: 1e-5 on ViT-B/32; digits-clip needs more in 50 steps
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.2, ge=0)  # TIME's
    loss: Literal["ce", "contrastive"] = "ce"  # TIME trains contrastively; see docs
    finetune: Literal["full", "lora"] = "full"
    lora_rank: int = Field(8, ge=1)
    device: str = "auto"
    seed: int = 0
