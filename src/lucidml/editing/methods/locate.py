"""What ROME and MEMIT share: edit prompts, MLP keys, key covariance, target optimisation.

The edit site of layer ``l`` is the MLP output projection (``down_proj`` in Llama):
its input at the subject's last token is the key k, its output the value W k.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lucidml.core.config import Config
from lucidml.core.hooks import Site, capture, decoder_blocks, get_module, n_layers, patch
from lucidml.core.progress import track
from lucidml.editing.evaluate import FEW_SHOT, encode_texts, format_example, keeps_logits
from lucidml.editing.methods.base import Editor
from lucidml.errors import ModelError


class LocateConfig(Config):
    module: str = "model.layers.{}.mlp.down_proj"
    v_steps: int = 25
    v_lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    # Prefixes the edit must hold under; the reference samples ten short model generations.
    prefixes: list[str] = [FEW_SHOT, ""]
    corpus: str | None = None  # text file for the key covariance; None = bundled prose
    # Add the first embedded snapshot's facts as sentences to the bundled prose. They are
    # the embedded benchmark's own subjects, so this helps edits on it (issue 17: ROME's
    # rewrite over ten SmolLM2 counterfactuals 0.833 with prose, 0.967 with the facts);
    # off by default, and reports name it when on.
    corpus_facts: bool = False
    corpus_tokens: int = 8000  # reference: 100k Wikipedia samples
    stats_dir: str | None = None  # None = $LUCID_HOME/editing/stats
    seed: int = 0


def float64_device(device) -> torch.device:
    """Where the float64 statistics and solves run: the model's device, except on Apple
    GPUs, which have no float64 (there the CPU)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def edit_module(model, cfg: LocateConfig, layer: int) -> str:
    """The name of layer ``layer``'s edit module, checked to exist."""
    n = n_layers(model)
    if not 0 <= layer < n:
        raise ModelError(
            f"{type(model).__name__} has no layer {layer} to edit (it has layers 0..{n - 1})"
        )
    name = cfg.module.format(layer)
    if not isinstance(get_module(model, name), torch.nn.Linear):
        raise ModelError(f"module '{name}' of {type(model).__name__} is not a linear layer")
    return name


def subject_char_end(question: str, subject: str | None) -> int:
    """Character end of the subject in the question, or the question's end if absent."""
    if subject:
        at = question.casefold().rfind(subject.casefold())
        if at >= 0:
            return at + len(subject)
    return len(question.rstrip(" ?"))


@dataclass
class EditBatch:
    """Right-padded rows of several records, with the subject's last token per row.

    Each record has one edit row "prefix Q: question A: answer" per prefix (answer tokens
    marked); with ``kl_rows`` it also has a row "{subject} is a" for the locality (KL) term.
    """

    inputs: object  # evaluate.Batch
    labels: torch.Tensor  # (B, T) answer token ids, -100 elsewhere
    subject_pos: torch.Tensor  # (B,)
    record: torch.Tensor  # (B,) which record each row belongs to
    kl_row: torch.Tensor  # (B,) True on KL rows
    last: torch.Tensor  # (B,) last real token of each row

    @property
    def n_records(self) -> int:
        return int(self.record.max()) + 1

    def rows(self, keep: torch.Tensor) -> EditBatch:
        """The rows where ``keep`` is True, trimmed to their longest (right padding)."""
        t = int(self.inputs.attention_mask[keep].sum(-1).max())
        b = self.inputs
        return EditBatch(
            type(b)(
                *(
                    x[keep, :t]
                    for x in (b.input_ids, b.attention_mask, b.position_ids, b.answer_mask)
                )
            ),
            self.labels[keep, :t],
            self.subject_pos[keep],
            self.record[keep],
            self.kl_row[keep],
            self.last[keep],
        )

    def record_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean of per-row vectors (B, d) over each record's edit rows -> (n_records, d)."""
        edit = ~self.kl_row
        out = torch.zeros(self.n_records, rows.shape[-1], dtype=rows.dtype, device=rows.device)
        out.index_add_(0, self.record[edit], rows[edit])
        counts = torch.bincount(self.record[edit], minlength=self.n_records)
        return out / counts.unsqueeze(-1).to(rows.dtype)


def _last_token_before(offsets, end: int) -> int:
    return [i for i, (s, e) in enumerate(offsets) if e > s and s < end][-1]


def edit_batch(
    tokenizer, records: list[dict], prefixes: list[str], device="cpu", kl_rows: bool = False
) -> EditBatch:
    texts, starts, ends, owner, is_kl = [], [], [], [], []
    for i, record in enumerate(records):
        q, a = record["update"], record["ans"]
        subject_end = subject_char_end(q, record.get("subject"))
        for p in prefixes:
            text, start = format_example(q, a, p)
            texts.append(text)
            starts.append(start)
            ends.append(len(p) + 3 + subject_end)
            owner.append(i)
            is_kl.append(False)
        if kl_rows:
            subject = record.get("subject") or q[:subject_end]
            texts.append(f"{subject} is a")
            starts.append(len(texts[-1]))
            ends.append(len(subject))
            owner.append(i)
            is_kl.append(True)
    b = encode_texts(tokenizer, texts, starts, "right")
    # unpadded offsets index the right-padded rows directly
    offsets = tokenizer(texts, return_offsets_mapping=True)["offset_mapping"]
    pos = [_last_token_before(o, e) for o, e in zip(offsets, ends, strict=True)]
    labels = b.input_ids.masked_fill(~b.answer_mask, -100)
    return EditBatch(
        b.to(device),
        labels.to(device),
        torch.tensor(pos, device=device),
        torch.tensor(owner, device=device),
        torch.tensor(is_kl, device=device),
        b.attention_mask.sum(-1).to(device) - 1,
    )


def _forward(model, b):
    return model(
        input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids
    )


def selected_logits(model, b, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the True positions of ``keep`` (B, T), flattened row by row to (K, V).
    The LM head runs only there where the model takes a ``logits_to_keep`` mask: on
    SmolLM2 the head over every position is a fifth of a forward pass, and an edit's
    losses read a few positions per row."""
    if keeps_logits(model):
        logits = model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            position_ids=b.position_ids,
            logits_to_keep=keep,
        ).logits
        return logits.reshape(-1, logits.shape[-1])
    return _forward(model, b).logits[keep]


def _at_subject(x: torch.Tensor, eb: EditBatch) -> torch.Tensor:
    return x[torch.arange(len(x), device=x.device), eb.subject_pos]


class _Stop(Exception):
    pass


def _last_module(model, names: list[str]) -> str | None:
    """The module after whose forward every named module has run: the deepest one, or its
    decoder block when several share that block (None: the whole model has to run)."""
    try:
        prefix, _ = decoder_blocks(model)
    except ModelError:
        return None
    layer = {}
    for name in names:
        m = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)(\..+)?", name)
        if m is None:
            return None
        layer[name] = int(m.group(1))
    deepest = max(layer.values())
    last = [name for name, i in layer.items() if i == deepest]
    return last[0] if len(last) == 1 else f"{prefix}.{deepest}"


@contextlib.contextmanager
def _forward_until(model, sites: list):
    """Stop a forward pass inside this block once every site has been seen: the layers
    above would compute what nobody reads (on SmolLM2, MEMIT's top layer 8 is 9 of 30)."""
    last = _last_module(model, [s.module if isinstance(s, Site) else s for s in sites])
    if last is None:
        yield
        return

    def stop(*_):
        raise _Stop

    handle = get_module(model, last).register_forward_hook(stop)
    try:
        with contextlib.suppress(_Stop):
            yield
    finally:
        handle.remove()


def subject_acts(model, sites: list, eb: EditBatch) -> list[torch.Tensor]:
    """Each site's activation at the subject's last token, averaged per record over the
    edit rows (n_records, d), all from one forward pass that stops after the last site."""
    with torch.no_grad(), capture(model, sites) as acts, _forward_until(model, sites):
        _forward(model, eb.inputs)
    return [eb.record_mean(_at_subject(acts[site], eb)) for site in sites]


def keys_at(model, module: str, eb: EditBatch) -> torch.Tensor:
    """Mean input of ``module`` at the subject's last token, per record (n_records, d_in)."""
    return subject_acts(model, [Site(module, pre=True)], eb)[0]


def optimize_deltas(
    model, tokenizer, records: list[dict], module: str, cfg: LocateConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per record, delta added to ``module``'s output at the subject token so the model
    says the record's answer. Records share forward passes.

    Loss per record: answer NLL over the prefixed prompts + kl_factor * KL to the
    unedited next-token distribution after "{subject} is a" + weight_decay *
    |delta|^2/|h|^2, with |delta| clamped to clamp_norm_factor * |h|. The records' losses
    are summed, so each delta gets exactly the gradient it would get alone (Adam is
    elementwise). A record whose NLL falls below 0.05 keeps its delta and leaves the
    batch, as a lone run would stop there. Returns (h, delta), both (n_records, d): h is
    the unedited output at the subject token (mean over the prefixed prompts).
    """
    device = next(model.parameters()).device
    full = edit_batch(tokenizer, records, cfg.prefixes, device, kl_rows=True)
    n = len(records)
    kl_rows = full.kl_row.nonzero().squeeze(-1)  # one per record, in record order
    at_kl = torch.zeros_like(full.labels, dtype=torch.bool)
    at_kl[kl_rows, full.last[kl_rows]] = True
    with torch.no_grad(), capture(model, [module]) as acts:
        base_logits = selected_logits(model, full.inputs, at_kl)
    h = full.record_mean(_at_subject(acts[module], full))
    base_logp = torch.log_softmax(base_logits.float(), -1)
    del base_logits, acts
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.v_lr)
    max_norm = cfg.clamp_norm_factor * h.norm(dim=-1, keepdim=True)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    kept = torch.zeros_like(h)
    eb = full

    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(cfg.v_steps):
            nll, kl = _edit_losses(model, module, eb, delta, base_logp, n)
            with torch.no_grad():
                newly = (nll < 5e-2) & ~done
                kept[newly] = delta[newly]
                done |= newly
            if bool(done.all()):
                break
            decay = (delta.norm(dim=-1) / h.norm(dim=-1)) ** 2
            loss = (nll + cfg.kl_factor * kl + cfg.weight_decay * decay)[~done].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                norm = delta.norm(dim=-1, keepdim=True)
                delta.mul_(torch.where(norm > max_norm, max_norm / norm, 1.0))
                delta[done] = kept[done]
            if bool(newly.any()):
                eb = full.rows(~done[full.record])
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return h, delta.detach()


def _edit_losses(model, module, eb: EditBatch, delta, base_logp, n: int):
    """Answer NLL and KL term per record (n,), for the records with rows in ``eb``."""
    rows = torch.arange(len(eb.record), device=delta.device)

    def add_delta(x):
        x = x.clone()
        x[rows, eb.subject_pos] += delta[eb.record]
        return x

    # the positions read: those predicting an answer token (edit rows), the last (KL rows)
    predicts_answer = torch.zeros_like(eb.labels, dtype=torch.bool)
    predicts_answer[:, :-1] = (eb.labels[:, 1:] != -100) & ~eb.kl_row[:, None]
    keep = predicts_answer.clone()
    kl_rows = eb.kl_row.nonzero().squeeze(-1)
    keep[kl_rows, eb.last[kl_rows]] = True
    with patch(model, module, add_delta):
        logits = selected_logits(model, eb.inputs, keep)
    row, pos = keep.nonzero(as_tuple=True)  # the order of the flattened logits
    on_answer = predicts_answer[row, pos]
    # each record's answer tokens, over all its prefixed rows, weigh equally in its NLL
    answer_logits = logits[on_answer].float()
    targets = eb.labels[row[on_answer], pos[on_answer] + 1]
    tok_lp = answer_logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    tok_lp = tok_lp - answer_logits.logsumexp(-1)
    answer_record = eb.record[row[on_answer]]
    total = torch.zeros(n, device=delta.device).index_add(0, answer_record, tok_lp)
    nll = -total / torch.bincount(answer_record, minlength=n).clamp(min=1)
    kl_record = eb.record[row[~on_answer]]
    kl_logp = torch.log_softmax(logits[~on_answer].float(), -1)
    kl_each = torch.nn.functional.kl_div(
        kl_logp, base_logp[kl_record], log_target=True, reduction="none"
    ).sum(-1)
    kl = torch.zeros(n, device=delta.device).index_add(0, kl_record, kl_each)
    return nll, kl


def bundled_prose() -> list[str]:
    """General English prose available offline: the paragraphs of scikit-learn's dataset
    descriptions (about 5 000 words; no Wikidata facts)."""
    from importlib import resources

    folder = resources.files("sklearn.datasets").joinpath("descr")
    texts = [
        f.read_text()
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".rst")
    ]
    return [p.strip() for t in texts for p in t.split("\n\n") if len(p.split()) > 8]


def snapshot_facts() -> list[str]:
    """The first embedded snapshot's facts as sentences ("The capital of France is Paris.")."""
    from importlib import resources

    from lucidml.editing import wikidata

    snapshots = resources.files("lucidml.editing").joinpath("data/snapshots")
    first = sorted(f for f in snapshots.iterdir() if f.name.endswith(".jsonl"))[0]
    triples, labels, _ = wikidata.read_dump(Path(str(first)))
    name = dict(labels)
    return [
        f"The {name[p]} of {name[s]} is {name[o]}."
        for s, p, o, _ in triples
        if s in name and p in name and o in name
    ]


def bundled_corpus(with_facts: bool = False) -> list[str]:
    """The bundled prose; ``with_facts`` interleaves the embedded snapshot's facts with it,
    so any token budget sees both kinds of text."""
    prose = bundled_prose()
    if not with_facts:
        return prose
    facts = snapshot_facts()
    chunks = [" ".join(facts[i :: len(prose)]) for i in range(len(prose))]
    return [x for pair in zip(prose, chunks, strict=True) for x in pair]


def read_corpus(path: str | None, with_facts: bool = False) -> list[str]:
    if path is None:
        return bundled_corpus(with_facts)
    from lucidml.errors import require_file

    text = require_file(path, "corpus file").read_text()
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@torch.no_grad()
def key_covariance(
    model, tokenizer, modules: list[str], texts: list[str], max_tokens: int, window: int = 128
) -> dict[str, torch.Tensor]:
    """C = E[k k^T] of each module's input over the corpus tokens (float64).

    The forward pass stops after the deepest requested module, so early layers are cheap.
    """
    device = next(model.parameters()).device
    exact = float64_device(device)
    sums = {m: None for m in modules}
    count = 0
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:max_tokens]
    sites = [Site(m, pre=True) for m in modules]
    for i in track(range(0, len(ids), window), "key covariance"):
        chunk = torch.tensor([ids[i : i + window]], device=device)
        with capture(model, sites) as acts, _forward_until(model, sites):
            model(input_ids=chunk)
        for m in modules:
            k = acts[Site(m, pre=True)][0].to(exact).double()
            s = k.T @ k
            sums[m] = s if sums[m] is None else sums[m] + s
        count += chunk.shape[1]
    return {m: (s / count).cpu() for m, s in sums.items()}


def cached_covariance(
    model, tokenizer, modules: list[str], cfg: LocateConfig
) -> dict[str, torch.Tensor]:
    """key_covariance, cached as safetensors by model fingerprint, modules and corpus."""
    from safetensors.torch import load_file, save

    from lucidml.core.runs import atomic_write_bytes, digest
    from lucidml.core.zoo import lucid_home

    corpus = read_corpus(cfg.corpus, cfg.corpus_facts)
    folder = Path(cfg.stats_dir) if cfg.stats_dir else lucid_home() / "editing" / "stats"
    # the model by its class, config and first parameters (cheap, and enough to tell
    # checkpoints apart), with what the statistics are computed over
    first = [x for name, p in sorted(model.named_parameters())[:4] for x in (name, p)]
    key = digest(
        type(model).__name__,
        model.config.to_json_string(),
        modules,
        cfg.corpus_tokens,
        corpus,
        *first,
    )
    path = folder / f"cov-{key}.safetensors"
    if path.is_file():
        return load_file(path)
    cov = key_covariance(model, tokenizer, modules, corpus, cfg.corpus_tokens)
    atomic_write_bytes(path, save({m: c.contiguous() for m, c in cov.items()}))
    return cov


class CovarianceEditor(Editor):
    """A locate-then-edit method whose state across timesteps is its key covariance."""

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.cov = None  # computed on the first apply, then reused and checkpointed

    def state_dict(self):
        return {"cov": self.cov}

    def load_state_dict(self, state):
        self.cov = state["cov"]
