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
        return cls.from_dict(cls._yaml_mapping(path), source=f"config file {path}")

    @classmethod
    def from_cli(cls: type[C], path: str | Path | None = None, **options: Any) -> C:
        """The ``--config`` file's fields (if any), then each command-line option that was
        given (not None) on top: a file's setting is never replaced by a default."""
        data = cls._yaml_mapping(Path(path)) if path is not None else {}
        data.update({k: v for k, v in options.items() if v is not None})
        return cls.from_dict(data, source=f"config file {path}" if path else "the options")

    @staticmethod
    def _yaml_mapping(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        return data

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


DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"


def resolve_device(name: str | None = "auto") -> str:
    """The torch device a job runs on; fails with one sentence if it is not available.

    ``auto`` (or None) picks cuda, then mps, then cpu. Under a multi-process launch,
    ``auto`` and ``cuda`` mean this process's own GPU (``cuda:<local index>``).
    """
    import torch

    from lucidml.core.distributed import local_process_index, world_size
    from lucidml.errors import InputError

    name = (name or "auto").strip().lower()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"unknown device '{name}': use {DEVICE_HELP}")
    if kind == "mps" and not mps:
        raise InputError("device 'mps' is not available: this machine has no Apple GPU")
    if kind != "cuda":
        return kind
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise InputError(
            f"device '{name}' is not available: torch ({build}) sees no CUDA GPU on this "
            "machine; use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if not index:
        return f"cuda:{local_process_index() % count}" if world_size() > 1 else "cuda"
    if int(index) >= count:
        raise InputError(
            f"device '{name}' is not available: this machine has {count} CUDA "
            f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})"
        )
    return name


def resolve_dtype(device: str, half: bool = False):
    """The dtype a model runs in on ``device``: float32, or with ``half`` (where the
    method tolerates it) bfloat16 on GPUs that have it, else float16; CPUs stay float32."""
    import torch

    if not half or device == "cpu":
        return torch.float32
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16
