"""Run folders, atomic writes, checkpoints and resume.

A run folder holds ``config.yaml``, ``results.json``, ``metrics.jsonl``, figures and
reports. Every file appears whole or not at all: writes go to a temporary file in the
same folder and are renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from lucidml.errors import InputError

log = logging.getLogger("lucidml.runs")


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


def publish_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move a fully built folder ``tmp`` to ``final`` (a sibling, same file system). A
    folder already at ``final`` moves aside first and is removed after, so ``final``
    holds the old folder or the new one at every moment, never a mix."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir() and any(final.iterdir()):
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if final.is_dir():
            final.rmdir()
        os.replace(tmp, final)
    return final


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
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def folder_name(name: str) -> str:
    """A model, class or encoder name as one path component: "/" becomes "--" and any
    other character outside letters, digits and "-_." becomes "_"
    ("stabilityai/sd-2" -> "stabilityai--sd-2", "hot dog" -> "hot_dog")."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "--"))


def folder_names(names: Iterable[str], what: str = "names") -> dict[str, str]:
    """{name: folder_name(name)}, refusing two names that would share one folder (the
    second would silently overwrite the first's files)."""
    out, owner = {}, {}
    for name in names:
        folder = folder_name(name)
        if folder in owner and owner[folder] != name:
            raise InputError(
                f"{what} '{owner[folder]}' and '{name}' would share the folder '{folder}'; "
                "rename one of them"
            )
        owner[folder], out[name] = name, folder
    return out


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
    """Create (or reuse) the run folder: ``out`` if given, else a new default folder.
    It checks nothing about what the folder holds; commands go through ``claim`` first."""
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


# --- what a run folder was made from: refusing a resume that would mix two runs ---------

SMALL_FILE_BYTES = 4 * 2**20  # files up to this size are identified by their content
CONFIG_FILE, INPUTS_FILE = "config.yaml", "inputs.json"


def input_fingerprint(path: str | Path) -> dict:
    """What identifies an input file or folder without reading large files: its resolved
    path and, for each file (a folder's files recursively, hidden ones aside), its size,
    modification time and, up to 4 MiB, a SHA-256 of its bytes."""
    path = Path(path)
    if path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = {
            f.relative_to(path).as_posix(): f
            for f in sorted(path.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
        }
    else:
        raise InputError(f"input {path} does not exist")
    listing = {}
    for name, f in files.items():
        stat = f.stat()
        small = stat.st_size <= SMALL_FILE_BYTES
        listing[name] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest() if small else None,
        }
    return {"path": str(path.resolve()), "files": listing}


# --- content digests: the one scheme behind every cache key and derived seed -----------


def _feed(h, part: Any) -> None:
    """Add one part to the hash ``h``: a kind tag, a length-prefixed header (dtype and
    shape) and a length-prefixed payload, so the encoding is unambiguous: parts never run
    into each other, and a tensor, an array, bytes and a JSON value never collide."""
    # torch and numpy are looked up, not imported: a part cannot be a tensor or an array
    # unless its library is loaded, and a digest of plain values should not load torch
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None and isinstance(part, torch.Tensor):
        t = part.detach().cpu().resolve_conj().resolve_neg().contiguous()
        kind, header = b"T", f"{t.dtype}{tuple(t.shape)}"
        # as bytes through torch: numpy has no view of bfloat16 and some other dtypes
        payload = t.reshape(-1).view(torch.uint8).numpy()
    elif np is not None and isinstance(part, np.ndarray) and not part.dtype.hasobject:
        a = np.ascontiguousarray(part)
        kind, header, payload = b"A", f"{a.dtype.str}{a.shape}", a.reshape(-1).view(np.uint8)
    elif isinstance(part, bytes | bytearray | memoryview):
        kind, header, payload = b"B", "", part
    elif part is None:
        kind, header, payload = b"N", "", b""
    else:  # an object array's bytes are pointers, so it is hashed by its values
        value = part.tolist() if np is not None and isinstance(part, np.ndarray) else part
        kind, header = b"J", ""
        payload = json.dumps(value, sort_keys=True, default=str).encode()
    head = header.encode()
    size = memoryview(payload).nbytes
    h.update(kind + len(head).to_bytes(8, "little") + head + size.to_bytes(8, "little"))
    h.update(payload)


def digest(*parts: Any) -> str:
    """A hex digest (BLAKE2b, 16 bytes) of ``parts`` in order: what cache keys and item
    names are made of, in every system, so that two keys agree exactly when their inputs do.

    Each part is a torch tensor (its dtype, shape and bytes; moved to CPU first), a numpy
    array (dtype, shape and bytes), bytes, None (a marker of its own: ``digest(None)`` is
    not ``digest()``), or a JSON-able value (``json.dumps`` with sorted keys; what JSON
    cannot write becomes ``str``). Every part is tagged and length-prefixed, so
    ``("ab", "c")`` and ``("a", "bc")`` differ, as do ``1`` and ``"1"``.

    The scheme is pinned by a test: stored caches are found by these digests, so changing
    it makes every cache miss once (recomputed, never wrong)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (``derive_seed(seed, "teacher", i)``): one
    independent, reproducible random stream per purpose from a single user seed, the same
    in every run, process and machine (unlike Python's salted ``hash``). The parts' text
    forms are joined with ':' (so 0 and "0" give one seed): the scheme distill's measured
    numbers were drawn with, kept so they reproduce."""
    raw = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(raw[:4], "little") & 0x7FFFFFFF


def folder_digest(folder: str | Path, names: Iterable[str] | None = None) -> str:
    """The digest of files' names and bytes: the files ``names`` in ``folder``, or every
    file directly in it (not its subfolders), in name order. It identifies what a cache
    was made from when that is a folder (saved factors, templates), read one file at a
    time (the same as ``digest(name, bytes, ...)`` over those files); a missing named
    file raises ``FileNotFoundError``."""
    folder = Path(folder)
    if names is None:
        files = [p for p in folder.iterdir() if p.is_file()]
    else:
        files = [folder / name for name in names]
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(files, key=lambda p: p.name):
        _feed(h, f.name)
        _feed(h, f.read_bytes())
    return h.hexdigest()


def path_inputs(**candidates: Any) -> dict[str, Path]:
    """The candidates that name local files or folders (others are names such as
    ``digits`` or hub ids), as inputs for ``claim`` to fingerprint."""
    return {
        name: Path(value)
        for name, value in candidates.items()
        if isinstance(value, str | Path) and str(value) and Path(value).exists()
    }


def input_change(stored: dict, new: dict) -> str | None:
    """How an input differs from its stored fingerprint, in words (None if it does not).
    A file identified by its content may be touched or copied; a large one may not."""
    if stored.get("path") != new["path"]:
        return f"it was {stored.get('path')}, now it is {new['path']}"
    old_files, new_files = stored.get("files", {}), new["files"]
    for name in dict.fromkeys([*old_files, *new_files]):
        a, b = old_files.get(name), new_files.get(name)
        if a is None:
            return f"{name} is new"
        if b is None:
            return f"{name} is gone"
        same = (
            a["sha256"] == b["sha256"] and a["size"] == b["size"]
            if a.get("sha256") and b["sha256"]
            else (a["size"], a["mtime_ns"]) == (b["size"], b["mtime_ns"])
        )
        if not same:
            return f"{name} has changed since"
    return None


def first_difference(stored: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any]:
    """The first (dotted field, stored value, new value) where two config dicts differ;
    ("", None, None) if they agree."""
    for key in dict.fromkeys([*stored, *new]):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found[0]:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return "", None, None


def _plain(config: Any) -> dict:
    """A config as ``config.yaml`` stores it (so stored and new compare like for like)."""
    return yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(config, default=_to_jsonable))))


def _is_run(path: Path) -> bool:
    """Whether ``path`` is a run folder: ``claim`` wrote its config or inputs there."""
    return (path / CONFIG_FILE).is_file() or (path / INPUTS_FILE).is_file()


def _holds_anything(path: Path) -> bool:
    return path.is_dir() and any(not p.name.startswith(".lucid-") for p in path.iterdir())


def _fresh_refusal(
    path: Path, overwrite: bool, empty: bool = True, resumable: bool = True
) -> str | None:
    """Why a new run may not start in ``path`` (None: it may); on ``overwrite`` the
    folder of an earlier run is emptied (if ``empty``; else only checked)."""
    if path.exists() and not path.is_dir():
        return f"--out {path} is a file, not a folder"
    if not _holds_anything(path):
        return None
    if not overwrite:
        if resumable:
            return f"{path} is not empty; pass --resume to continue its run, or --overwrite to replace it"
        return f"{path} is not empty; pass --overwrite to replace its run, or choose another --out"
    if not _is_run(path):
        return (
            f"{path} holds files but no run (no {CONFIG_FILE}); --overwrite empties only run "
            "folders"
        )
    if empty:
        shutil.rmtree(path)
    return None


def _resume_refusal(
    path: Path, config: Any, inputs: dict[str, dict], may_change: tuple[str, ...], per_item: bool
) -> str | None:
    """Why the run in ``path`` may not be resumed with ``config`` and ``inputs`` (None: it
    may, or there is nothing to resume)."""
    if not _is_run(path):
        if _holds_anything(path):
            return f"cannot resume {path}: it holds no {CONFIG_FILE}, so it is not a run folder"
        log.info("nothing to resume in %s: starting the run there", path)
        return None
    if config is not None and (path / CONFIG_FILE).is_file():
        try:
            stored = yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return f"cannot resume {path}: its {CONFIG_FILE} is unreadable"
        new = _plain(config)
        for name in may_change:
            stored.pop(name, None)
            new.pop(name, None)
        field, old, now = first_difference(stored, new)
        if field and not per_item:
            return (
                f"cannot resume {path}: it was run with {field} = {json.dumps(old)}, this "
                f"command has {field} = {json.dumps(now)} (leave out --resume, or use another --out)"
            )
        if field:
            log.info(
                "resuming %s with %s = %s (was %s): the stored items that depend on it are "
                "recomputed, the others reused",
                path,
                field,
                json.dumps(now),
                json.dumps(old),
            )
    stored_inputs = read_json(path / INPUTS_FILE) if (path / INPUTS_FILE).is_file() else {}
    for name in dict.fromkeys([*stored_inputs, *inputs]):
        if (name not in stored_inputs or name not in inputs) and not per_item:
            return f"cannot resume {path}: it was run with other inputs ({name})"
        if name not in stored_inputs or name not in inputs:
            continue
        change = input_change(stored_inputs[name], inputs[name])
        if change and not per_item:
            return f"cannot resume {path}: its input {name} differs ({change})"
        if change:
            log.info(
                "resuming %s with a changed input %s (%s): its items are recomputed",
                path,
                name,
                change,
            )
    return None


def _decided_by_main(decide) -> None:
    """Run the check ``decide`` (returning a refusal or None) on the main process; every
    process of a launch raises the same refusal."""
    from lucidml.core.distributed import broadcast, is_main_process

    problem = broadcast(decide() if is_main_process() else None)
    if problem:
        raise InputError(problem)


def check_fresh(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to start a new run in a non-empty ``path`` unless ``overwrite`` (which empties
    a folder that holds an earlier run, and only such a folder)."""
    _decided_by_main(lambda: _fresh_refusal(Path(path), overwrite))


def claim(
    system: str,
    out: str | Path | None = None,
    config: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    inputs: dict[str, str | Path] | None = None,
    may_change: tuple[str, ...] = ("device",),
    per_item: bool = False,
    dry_run: bool = False,
    resumable: bool = True,
) -> Path:
    """Make the run folder of a command, after checking that it may write there.

    - A new run needs an empty (or missing) folder; ``overwrite`` empties a folder that
      holds an earlier run first.
    - ``resume`` needs the folder's stored config to equal ``config`` (fields in
      ``may_change`` aside) and its stored inputs (``inputs``: name -> file or folder,
      fingerprinted by ``input_fingerprint``) to be unchanged. A job whose stored items
      are keyed on everything that determines them passes ``per_item``: a changed config
      or input is then allowed and logged, and the job recomputes the items it changes.

    Nothing is written before the checks pass; a refusal is an InputError naming the
    first difference. ``dry_run`` only checks (and changes nothing), so a command can
    refuse before loading a model and claim the folder once its own checks pass; a
    command without ``--resume`` passes ``resumable=False``, so a refusal does not offer
    it. The
    main process decides; with several processes the others take its answer, and
    ``config.yaml`` and ``inputs.json`` are written once, by it.
    """
    from lucidml.core.distributed import is_main_process

    if resume and out is None:
        raise InputError("--resume needs --out, the folder of the run to continue")
    path = run_dir_path(system, out)
    prints = {name: input_fingerprint(p) for name, p in (inputs or {}).items()}
    if resume:
        _decided_by_main(lambda: _resume_refusal(path, config, prints, may_change, per_item))
    else:
        _decided_by_main(
            lambda: _fresh_refusal(path, overwrite, empty=not dry_run, resumable=resumable)
        )
    if dry_run:
        return path
    path = make_run_dir(system, path)
    if is_main_process():
        if config is not None:
            write_yaml(path / CONFIG_FILE, config)
        write_json(path / INPUTS_FILE, prints)
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

    def __init__(self, system: str, out: str | Path | None = None, config: Any = None, **checks):
        """The folder ``claim(system, out, config, **checks)`` gives (see there)."""
        self.path = claim(system, out, config, **checks)

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
