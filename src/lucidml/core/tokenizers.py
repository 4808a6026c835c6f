"""Small tokenizers built in memory, for embedded models and tests; no downloads."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<unk>", "<bos>")
EOS = "<eos>"


def _wrap(
    tok: Tokenizer, vocab: dict[str, int], max_length: int, add_bos: bool, add_eos: bool
) -> PreTrainedTokenizerFast:
    single = " ".join(s for s, on in (("<bos>", add_bos), ("$A", True), (EOS, add_eos)) if on)
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in ("<bos>", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token=EOS,
        model_max_length=max_length,
    )


def word_tokenizer(
    words: Iterable[str],
    max_length: int = 64,
    add_bos: bool = True,
    add_eos: bool = False,
    lowercase: bool = True,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words``; punctuation splits off as its own token.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, the words in order, then ``<eos>`` last.
    EOS is deliberately *not* id 2: transformers' CLIP text model pools at the
    highest token id whenever ``eos_token_id == 2`` (a legacy rule).
    """
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w in words:
        w = w.lower() if lowercase else w
        vocab.setdefault(w, len(vocab))
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return _wrap(tok, vocab, max_length, add_bos, add_eos)


def char_tokenizer(
    chars: str | None = None, max_length: int = 77, add_bos: bool = True, add_eos: bool = True
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (lowercase letters, digits, punctuation by default)."""
    chars = chars or "abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'-()"
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.BPEDecoder()
    return _wrap(tok, vocab, max_length, add_bos, add_eos)
