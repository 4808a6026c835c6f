"""Pydantic configs with YAML round-trips, and seeding."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lucidml.errors import ConfigError, InputError

C = TypeVar("C", bound="Config")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"field '{field}': {err['msg']}"


class Config(BaseModel):
    """Base of every job config: unknown keys are rejected, YAML in and out."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {_first_error(exc)}") from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        return cls.from_dict(data, source=f"config file {path}")

    def to_yaml(self, path: str | Path) -> Path:
        from lucidml.core.runs import atomic_write_text

        return atomic_write_text(path, self.to_yaml_str())

    def to_yaml_str(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def updated(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed (None values are ignored)."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return type(self).from_dict(data)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so two runs with one seed give one answer."""
    import torch

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch (None leaves torch's choice, one per core).

    On a machine busy with other jobs, tiny models ran 10-40x slower with two threads
    than with one (the threads wait on each other); larger models gain from every core.
    """
    if n is None:
        return
    from lucidml.errors import InputError

    if n < 1:
        raise InputError(f"threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)


def resolve_device(name: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    from lucidml.errors import InputError

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = name.split(":")[0]
    ok = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
    }
    if kind not in ok:
        raise InputError(f"unknown device '{name}': use auto, cpu, cuda or mps")
    if not ok[kind]:
        raise InputError(f"device '{name}' is not available on this machine")
    return name
