"""Run folders, atomic writes, checkpoints and resume.

A run folder holds ``config.yaml``, ``results.json``, ``metrics.jsonl``, figures and
reports. Every file appears whole or not at all: writes go to a temporary file in the
same folder and are renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lucidml.errors import InputError


def _to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON readers reject them."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def to_json(obj: Any, indent: int | None = 2) -> str:
    plain = json.loads(json.dumps(obj, default=_to_jsonable))
    return json.dumps(_finite(plain), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    obj = json.loads(json.dumps(obj, default=_to_jsonable))
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def default_root() -> Path:
    return Path(os.environ.get("LUCID_RUNS", "runs"))


def run_dir_path(system: str, out: str | Path | None = None) -> Path:
    """The run folder's path, not created: ``out`` if given, else
    ``runs/<system>/<timestamp>-<random suffix>``, so two runs started in the same second
    get two folders, while the processes of one launch all take the main process's."""
    if out is not None:
        return Path(out)
    from lucidml.core.distributed import broadcast

    name = broadcast(f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    return default_root() / system / name


_current_run: Path | None = None


def current_run_dir() -> Path | None:
    """The run folder this process made last (where an internal error's traceback goes)."""
    return _current_run


def forget_current_run() -> None:
    """Start a new command: no run folder is current until it makes one."""
    global _current_run
    _current_run = None


def make_run_dir(system: str, out: str | Path | None = None) -> Path:
    """Create (or reuse) the run folder: ``out`` if given, else ``runs/<system>/<timestamp>``."""
    global _current_run
    path = run_dir_path(system, out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a probe of its own: processes of one launch open the same folder at once
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lucid-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot write the output folder {path}: {reason.lower()}") from None
    _current_run = path
    return path


def environment(device: str | None = None, seed: int | None = None) -> dict:
    """What a result depends on beyond its config: versions, device, threads, processes."""
    import platform

    import torch

    from lucidml import __version__
    from lucidml.core.distributed import world_size

    return {
        "lucidml": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "processes": world_size(),
        "seed": seed,
    }


class Run:
    """A run folder with helpers for the files every job writes."""

    def __init__(self, system: str, out: str | Path | None = None, config: Any = None):
        self.path = make_run_dir(system, out)
        if config is not None:
            write_yaml(self.path / "config.yaml", config)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_results(self, results: dict) -> Path:
        return write_json(self.path / "results.json", results)

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line to ``metrics.jsonl`` (a line is written whole, then flushed)."""
        line = to_json(record, indent=None) + "\n"
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(line)
            f.flush()

    def checkpoint(self, key: str, state: Any) -> Path:
        return save_torch(self.path / "checkpoints" / f"{key}.pt", state)

    def resume(self, key: str) -> Any | None:
        """The state saved under ``key`` (tensors, numbers, strings, lists, dicts), or None."""
        import torch

        path = self.path / "checkpoints" / f"{key}.pt"
        # weights_only: a run folder may come from elsewhere; never unpickle code from it
        return torch.load(path, weights_only=True) if path.is_file() else None

    def done(self, key: str) -> bool:
        return (self.path / "checkpoints" / f"{key}.pt").is_file()
