"""``digits-clip``: a small CLIP trained contrastively on the digits train split.

The text side sees several caption templates per class; each step pairs a batch of
images with the ten class captions (one random template per class) and minimises the
image-to-text cross-entropy, so zero-shot classification is exactly the training task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from lucidml.core.tokenizers import word_tokenizer
from lucidml.core.vlm import VisionLanguageModel

TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "an image of a handwritten digit {}.",
    "a drawing of the number {}.",
    "a blurry photo of the digit {}.",
    "a scan of a {}.",
    "{}",
)
EXTRA_WORDS = (
    "a an the of photo image picture drawing scan handwritten digit number blurry "
    "small large dark bright rotated noisy inverted this is shows . ,"
)
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MEAN, STD = (0.5,), (0.5,)


def build_tokenizer():
    return word_tokenizer(
        list(CLASS_NAMES) + EXTRA_WORDS.split() + [str(i) for i in range(10)],
        max_length=16,
        add_bos=True,
        add_eos=True,
    )


def build_config(vocab_size: int, eos_id: int) -> CLIPConfig:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=eos_id,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=8,
        patch_size=2,
        num_channels=1,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def wrap(model: CLIPModel, tokenizer) -> VisionLanguageModel:
    return VisionLanguageModel(
        model,
        tokenizer,
        kind="clip",
        name="digits-clip",
        image_size=8,
        channels=1,
        mean=MEAN,
        std=STD,
        templates=TEMPLATES[:1],
        resize=False,
    )


def train_digits_clip(
    data, seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 1e-3, progress=None
) -> VisionLanguageModel:
    """Train digits-clip from scratch on ``data.train_x/train_y``; deterministic per seed."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = CLIPModel(build_config(len(tok), tok.eos_token_id))
    vlm = wrap(model, tok)
    captions = [[t.format(c) for t in TEMPLATES] for c in CLASS_NAMES]
    enc = tok([c for per_class in captions for c in per_class], padding=True, return_tensors="pt")
    n_t = len(TEMPLATES)
    ids = enc["input_ids"].view(len(CLASS_NAMES), n_t, -1)
    mask = enc["attention_mask"].view(len(CLASS_NAMES), n_t, -1)

    gen = torch.Generator().manual_seed(seed)
    x, y = data.train_x, data.train_y
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb = x[idx]
            # one-pixel random shifts keep the image tower from memorising positions
            sx, sy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(sx, sy), dims=(2, 3))
            pick = torch.randint(0, n_t, (len(CLASS_NAMES),), generator=gen)
            rows = torch.arange(len(CLASS_NAMES))
            txt = model.get_text_features(
                input_ids=ids[rows, pick], attention_mask=mask[rows, pick]
            )
            img = model.get_image_features(pixel_values=vlm.preprocess(xb))
            txt, img = _pooled(txt), _pooled(img)
            logits = model.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
        if progress is not None:
            progress(epoch + 1, epochs, loss.item())
    model.eval()
    return vlm


def _pooled(out) -> torch.Tensor:
    # transformers >= 5 returns a model output object from get_*_features
    return out if isinstance(out, torch.Tensor) else out.pooler_output
