"""The sparse autoencoder: inference codes, reconstruction, and SAELens-layout folders.

With u = (x - b_dec) W_enc + b_enc, the codes f are ReLU(u) (``relu``), the top k of
ReLU(u) per row (``topk``), ReLU(u)·1[ReLU(u) > θ] with one scalar θ (``batchtopk``,
``matryoshka``: the inference form of BatchTopK) or u·1[u > θ_j] (``jumprelu``), and
x̂ = f W_dec + b_dec. A trained SAE works in input units: the training scale is folded
into b_enc, b_dec and θ (``training.fold_scale``).

A saved folder holds ``cfg.json`` and ``sae_weights.safetensors`` with SAELens's names and
shapes, so SAELens and Neuronpedia tools read ours and :meth:`SAE.load` reads theirs
(standard, topk, jumprelu); our own settings ride along under the ``lucidml`` key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lucidml.core.runs import read_json, to_json
from lucidml.errors import InputError, ShapeError
from lucidml.sae.config import SAEConfig

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
# our kinds and SAELens's architecture names
ARCHITECTURES = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "matryoshka": "matryoshka_batchtopk",
    "jumprelu": "jumprelu",
}
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
# dictionary_learning's tensor names (nn.Linear weights are stored (out, in))
LINEAR_NAMES = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight"}


def topk_per_row(a: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k largest entries of ``a`` (last dim), zeros elsewhere: TopK codes. The
    gradient reaches only the kept entries."""
    values, index = a.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(a).scatter(-1, index, values)


def batch_topk(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k·B largest entries of ``a`` over the whole batch of B rows (all leading dims),
    zeros elsewhere: BatchTopK's training codes, whose mean L0 is k while single rows may
    use more or fewer latents."""
    flat = a.reshape(-1)
    rows = flat.numel() // a.shape[-1]
    values, index = flat.topk(k * rows, sorted=False)
    return torch.zeros_like(flat).scatter(0, index, values).reshape(a.shape)


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` with each row scaled to norm 1 (the decoder constraint)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_width(t: torch.Tensor, width: int, what: str) -> None:
    if t.ndim == 0 or t.shape[-1] != width:
        raise ShapeError(
            f"the SAE takes {what} of width {width} in the last dimension, got shape "
            f"{tuple(t.shape)}"
        )


class SAE(torch.nn.Module):
    """A sparse autoencoder of kind ``cfg.kind`` with F = ``cfg.n_latents`` latents.

    A new SAE holds the spec's initialisation (deterministic in ``cfg.seed``): W_dec
    Kaiming-uniform with unit rows, W_enc = W_decᵀ, zero biases, so an untrained one is a
    random dictionary. ``threshold`` is the inference θ: a scalar for BatchTopK and
    Matryoshka, one per latent for JumpReLU, None for the others.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.d_in, self.n_latents = cfg.d_in, cfg.n_latents
        self.group_sizes = cfg.group_sizes() if cfg.kind == "matryoshka" else [self.n_latents]
        generator = torch.Generator().manual_seed(cfg.seed)
        w = torch.empty(self.n_latents, self.d_in)
        w_dec = unit_rows(torch.nn.init.kaiming_uniform_(w, generator=generator))
        self.W_enc = torch.nn.Parameter(w_dec.T.contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(self.n_latents))
        self.W_dec = torch.nn.Parameter(w_dec)
        self.b_dec = torch.nn.Parameter(torch.zeros(self.d_in))
        if cfg.kind == "jumprelu":
            threshold = torch.full((self.n_latents,), cfg.jumprelu_threshold)
        elif cfg.kind in ("batchtopk", "matryoshka"):
            # 0 keeps every positive activation until training sets θ (the reference's -1)
            threshold = torch.zeros(())
        else:
            threshold = None
        self.register_buffer("threshold", threshold)
        self.scale = 1.0  # the training scale s, already folded into the weights
        self.hook_name = ""
        self.history: list[dict] = []
        self.validation: dict = {}

    # --- the model ---------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """u = (x - b_dec) W_enc + b_enc, for x of shape (..., d_in)."""
        x = torch.as_tensor(x, dtype=self.W_enc.dtype, device=self.W_enc.device)
        _check_width(x, self.d_in, "inputs")
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes (..., F) of inputs (..., d_in)."""
        u = self.pre_activations(x)
        kind = self.cfg.kind
        if kind == "jumprelu":
            return u * (u > self.threshold)
        a = torch.relu(u)
        if kind == "relu":
            return a
        if kind == "topk":
            return topk_per_row(a, self.cfg.k)
        return a * (a > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """x̂ = f W_dec + b_dec, for codes of shape (..., F)."""
        _check_width(f, self.n_latents, "codes")
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # --- folders -----------------------------------------------------------------------------
    def save(self, folder: str | Path, hook_name: str = "", extra: dict | None = None) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (float32, CPU) into ``folder``,
        which appears whole or not at all. ``extra`` is stored under ``lucidml.extra``."""
        from safetensors.torch import save as safetensors_bytes

        hook_name = hook_name or self.hook_name
        cfg = {
            "architecture": ARCHITECTURES[self.cfg.kind],
            "d_in": self.d_in,
            "d_sae": self.n_latents,
            "dtype": "float32",
            "device": str(self.W_enc.device),
            "hook_name": hook_name,
            "metadata": {"hook_name": hook_name},  # where SAELens 6 looks for it
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",  # the scale is folded into the weights
            **({"k": self.cfg.k} if self.cfg.kind in TOPK_FAMILY else {}),
            "lucidml": {
                "config": self.cfg.model_dump(mode="json", include=set(SAEConfig.model_fields)),
                "scale": self.scale,
                "group_sizes": self.group_sizes,
                "extra": extra or {},
            },
        }
        tensors = {n: t.detach().float().cpu().contiguous() for n, t in self.state_dict().items()}
        files = {CFG_FILE: (to_json(cfg) + "\n").encode(), WEIGHTS_FILE: safetensors_bytes(tensors)}
        return write_folder(folder, files)

    @classmethod
    def load(cls, folder: str | Path) -> SAE:
        """An SAE from a folder written by :meth:`save` or by SAELens (standard, topk,
        jumprelu; also dictionary_learning's tensor names and a decoder stored (d_in, F))."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"SAE folder {folder} does not exist")
        meta = read_json(folder / CFG_FILE)
        if not isinstance(meta, dict):
            raise InputError(f"{folder / CFG_FILE} must hold a JSON object")
        cfg, scale = _config_from(meta, folder / CFG_FILE)
        sae = cls(cfg)
        tensors = _read_weights(folder / WEIGHTS_FILE, sae)
        if meta.get("apply_b_dec_to_input", True) is False:
            # u = x W_enc + b_enc = (x - b_dec) W_enc + (b_enc + b_dec W_enc)
            tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
        with torch.no_grad():
            for name, t in tensors.items():
                getattr(sae, name).copy_(t)
        sae.scale = scale
        sae.hook_name = str(
            meta.get("hook_name") or (meta.get("metadata") or {}).get("hook_name") or ""
        )
        return sae


def write_folder(folder: str | Path, files: dict[str, bytes]) -> Path:
    """Build ``folder`` from ``{name: bytes}`` in a temporary sibling and rename it into
    place (``publish_folder``), so readers see the old folder or the new one, never a mix."""
    from lucidml.core.runs import publish_folder

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; SAEs are for sharing
        publish_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _positive_int(meta: dict, key: str, path: Path) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def _architecture(meta: dict, path: Path) -> str:
    """Our kind for a SAELens ``architecture`` (older TopK folders say "standard" with a
    topk activation function)."""
    arch = meta.get("architecture", "standard")
    if arch == "standard" and "topk" in (meta.get("activation_fn_str"), meta.get("activation_fn")):
        arch = "topk"
    kinds = {a: kind for kind, a in ARCHITECTURES.items()}
    if arch not in kinds:
        raise InputError(
            f"{path}: architecture {arch!r} is not supported; lucidml loads {', '.join(kinds)}"
        )
    return kinds[arch]


def _config_from(meta: dict, path: Path) -> tuple[SAEConfig, float]:
    """The SAEConfig and folded scale a cfg.json describes: our own fields when present,
    else what a SAELens config implies."""
    ours = meta.get("lucidml")
    if isinstance(ours, dict):
        cfg = SAEConfig.from_dict(ours.get("config") or {}, source=str(path))
        return cfg, float(ours.get("scale", 1.0))
    kind = _architecture(meta, path)
    d_in, d_sae = _positive_int(meta, "d_in", path), _positive_int(meta, "d_sae", path)
    if meta.get("normalize_activations") not in (None, "none"):
        raise InputError(
            f"{path}: normalize_activations {meta['normalize_activations']!r} rescales inputs "
            "by a factor the folder does not hold; lucidml loads only 'none'"
        )
    if kind == "matryoshka":
        raise InputError(f"{path}: a Matryoshka SAE needs its group sizes (the lucidml key)")
    fields = {"kind": kind, "d_in": d_in, "expansion": max(1, d_sae // d_in), "device": "cpu"}
    if d_sae % d_in:
        fields["d_sae"] = d_sae
    if kind in TOPK_FAMILY:
        k = meta.get("k") or (meta.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise InputError(f"{path}: a {kind} SAE needs k (cfg.json's k)")
        fields["k"] = k
    return SAEConfig.from_dict(fields, source=str(path)), 1.0


def _read_weights(path: Path, sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors ``sae`` needs from a safetensors file, as float32 in our orientation;
    one sentence naming the file and tensor if any is missing or misshapen."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        stored = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path} is not a readable safetensors file ({exc})") from None
    d, F = sae.d_in, sae.n_latents
    want = {"W_enc": (d, F), "b_enc": (F,), "W_dec": (F, d), "b_dec": (d,)}
    if sae.threshold is not None:
        want["threshold"] = tuple(sae.threshold.shape)
    out = {}
    for name, shape in want.items():
        t = stored.get(name)
        if t is None and name in LINEAR_NAMES and LINEAR_NAMES[name] in stored:
            t = stored[LINEAR_NAMES[name]]
            t = t.T if t.ndim == 2 else t
        if t is None and name == "b_dec":
            t = stored.get("bias")
        if t is None:
            raise InputError(f"{path} holds no tensor {name} (expected shape {shape})")
        if name == "threshold" and shape == () and t.numel() == 1:
            t = t.reshape(())
        elif t.ndim == 2 and tuple(t.shape) == shape[::-1] and shape[0] != shape[1]:
            t = t.T  # a decoder stored (d_in, F), as dictionary_learning does
        if tuple(t.shape) != shape:
            raise InputError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        out[name] = t.float()
    return out
