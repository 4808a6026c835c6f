"""Editing methods behind one registry: ``get(name, **hparams)`` gives an Editor.

Every editor has ``apply(model, tokenizer, records) -> model``; records are dicts with
at least ``update`` (the question) and ``ans`` (the answer).
"""

from __future__ import annotations

from lucidml.editing.methods.alphaedit import AlphaEdit
from lucidml.editing.methods.base import Editor
from lucidml.editing.methods.ft import FullFineTune
from lucidml.editing.methods.lora import LoRA, LoRAMerge
from lucidml.editing.methods.memit import MEMIT
from lucidml.editing.methods.rag import RAG
from lucidml.editing.methods.rome import ROME
from lucidml.errors import InputError

METHODS: dict[str, type[Editor]] = {
    cls.name: cls for cls in (FullFineTune, LoRA, LoRAMerge, RAG, ROME, MEMIT, AlphaEdit)
}


def register(cls: type[Editor]) -> type[Editor]:
    """Add an Editor subclass under its ``name`` (usable as a class decorator)."""
    METHODS[cls.name] = cls
    return cls


def get(name: str, **hparams) -> Editor:
    """A new editor of the named method with the given hyperparameters."""
    if name not in METHODS:
        raise InputError(f"unknown editing method '{name}': expected one of {', '.join(METHODS)}")
    return METHODS[name](**hparams)


__all__ = ["METHODS", "Editor", "get", "register"]
