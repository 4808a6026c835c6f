"""Generation at scale: N images per prompt and model, resumable, sharded, with a manifest.

The work is cut into units, one per (model, prompt, variation): the N images of a prompt
are spread over its V variations (N // V each, the first N % V variations one more).
Image j of a unit has seed ``derive_seed(run seed, model, prompt_id, variation, j)``, so
any image can be regenerated alone. A unit writes its PNGs, then its manifest part
(``parts/<model>/<prompt>-v<variation>.parquet``) last, atomically: a unit whose part
exists is done, and a killed run rewrites only its unfinished units (same seeds, same
bytes), so nothing is lost or duplicated. Under ``accelerate launch`` the units are
dealt to processes in model order, so each process loads one pipeline at a time.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lucidml.bias.types import ImageModel
from lucidml.core import distributed
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import atomic_write_bytes, derive_seed, folder_name, folder_names
from lucidml.errors import InputError

log = get_logger("bias")
MANIFEST_COLUMNS = (
    "image_id",
    "model",
    "prompt_id",
    "variation",
    "index",
    "seed",
    "path",
    "text",
    "category",
    "theme",
)


@dataclass(frozen=True)
class Unit:
    """The images of one (model, prompt, variation): indices ``first`` .. ``first+count-1``."""

    model: str
    prompt_id: str
    variation: int
    text: str
    category: str
    theme: str
    first: int
    count: int

    @property
    def key(self) -> str:
        return f"{folder_name(self.model)}/{self.prompt_id}-v{self.variation}"


def image_seed(model: str, prompt_id: str, variation: int, index: int, seed: int = 0) -> int:
    return derive_seed(seed, model, prompt_id, variation, index)


def plan_units(prompts: pd.DataFrame, models: Sequence[str], per_prompt: int) -> list[Unit]:
    """Every unit, in model order, then prompt and variation order."""
    if per_prompt < 1:
        raise InputError(f"images per prompt must be at least 1, got {per_prompt}")
    if not models:
        raise InputError("no model to generate with")
    folder_names(models, "models")
    units = []
    for model in models:
        for prompt_id, rows in prompts.groupby("prompt_id", sort=False):
            rows = rows.sort_values("variation")
            n_var = len(rows)
            first = 0
            for v, row in enumerate(rows.itertuples(index=False)):
                count = per_prompt // n_var + (v < per_prompt % n_var)
                if count:
                    units.append(
                        Unit(
                            model,
                            str(prompt_id),
                            int(row.variation),
                            row.text,
                            row.category,
                            getattr(row, "theme", "other"),
                            first,
                            count,
                        )
                    )
                first += count
    return units


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    if image.ndim != 3 or image.shape[0] not in (1, 3) or not torch.isfinite(image).all():
        raise InputError(f"a model returned an image of shape {tuple(image.shape)}, not (3, H, W)")
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, "PNG")
    return buffer.getvalue()


def _run_unit(unit: Unit, model: ImageModel, out: Path, batch_size: int, seed: int) -> pd.DataFrame:
    rows = []
    indices = list(range(unit.first, unit.first + unit.count))
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        seeds = [image_seed(unit.model, unit.prompt_id, unit.variation, j, seed) for j in batch]
        images = model.generate([unit.text] * len(batch), seeds)
        for j, seed, image in zip(batch, seeds, images, strict=True):
            rel = Path("images") / f"{unit.key}-{j:04d}.png"
            atomic_write_bytes(out / rel, _png(image))
            rows.append(
                {
                    "image_id": f"{unit.key}-{j:04d}",
                    "model": unit.model,
                    "prompt_id": unit.prompt_id,
                    "variation": unit.variation,
                    "index": j,
                    "seed": seed,
                    "path": rel.as_posix(),
                    "text": unit.text,
                    "category": unit.category,
                    "theme": unit.theme,
                }
            )
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _part(out: Path, unit: Unit) -> Path:
    return out / "parts" / f"{unit.key}.parquet"


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """A Parquet table written whole (temporary file and rename)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def generate(
    prompts: pd.DataFrame,
    models: Sequence[str],
    per_prompt: int,
    out: str | Path,
    load_model: Callable[[str], ImageModel],
    batch_size: int = 8,
    seed: int = 0,
) -> pd.DataFrame | None:
    """Generate every pending unit of this process; on the main process, once every
    process's parts exist, write and return ``metadata.parquet`` (other processes: None)."""
    out = Path(out)
    units = plan_units(prompts, models, per_prompt)
    share = distributed.shard(units)
    mine = [u for u in share if not _part(out, u).is_file()]
    done = len(share) - len(mine)
    if done:
        log.info("resuming: %d of this process's units are already generated", done)
    loaded: tuple[str, ImageModel] | None = None
    for unit in track(mine, "generating images", total=len(mine)):
        if loaded is None or loaded[0] != unit.model:
            loaded = (unit.model, load_model(unit.model))  # one pipeline at a time
        write_parquet(_part(out, unit), _run_unit(unit, loaded[1], out, batch_size, seed))
    if not distributed.is_main_process():
        return None
    distributed.wait_for([_part(out, u) for u in units])
    manifest = pd.concat([pd.read_parquet(_part(out, u)) for u in units], ignore_index=True)
    write_parquet(out / "metadata.parquet", manifest)
    return manifest


def read_table(path: str | Path, name: str, required: Sequence[str], what: str) -> pd.DataFrame:
    """A job's Parquet table (a run folder holding ``name``, or the file), columns checked."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise InputError(f"no {what} at {p}")
    try:
        frame = pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"{p} is not a readable Parquet file ({type(exc).__name__})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{p} lacks the column(s) {', '.join(missing)}")
    return frame


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A generation manifest: a generate run folder or its metadata.parquet."""
    return read_table(
        path, "metadata.parquet", ("image_id", "model", "prompt_id", "path"), "generation manifest"
    )


class DiffusersModel:
    """Any diffusers text-to-image pipeline as an ImageModel, with the card's sampler
    defaults unless ``steps`` / ``guidance`` / ``size`` are given (recorded in ``call``)."""

    def __init__(self, pipeline, name: str, steps=None, guidance=None, size=None):
        self.pipeline, self.name = pipeline, name
        self.call = {
            k: v
            for k, v in {
                "num_inference_steps": steps,
                "guidance_scale": guidance,
                "height": size,
                "width": size,
            }.items()
            if v is not None
        }

    @classmethod
    def load(cls, name: str, device: str = "cpu", **call) -> DiffusersModel:
        from lucidml.core.zoo import load_diffusion

        pipe = load_diffusion(name, device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        return cls(pipe, name, **call)

    def generate(self, prompts, seeds) -> list[torch.Tensor]:
        device = getattr(self.pipeline, "device", torch.device("cpu"))
        generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        with torch.no_grad():
            images = self.pipeline(
                prompt=list(prompts), generator=generators, output_type="pt", **self.call
            ).images
        return [img.float().cpu() for img in images]


def read_image(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG as a (3, H, W) float tensor in [0, 1]; an unreadable file is one sentence."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError):
        raise InputError(f"image {path} cannot be read") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
