"""Read and write activations of named modules of any torch model.

A *site* is a module name plus whether we mean its input (``pre=True``) or its
output. Plain strings name a module's output. ``resid_module`` gives the site of the
residual stream entering a decoder block, aligned with ``output_hidden_states``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from lucidml.errors import ModelError

_BLOCK_LISTS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "layers",
)
_FINAL_NORMS = (
    "model.norm",
    "model.decoder.final_layer_norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "norm",
)


class Site(NamedTuple):
    """A place to read or write: the input (``pre=True``) or output of a module."""

    module: str
    pre: bool = False

    def __str__(self) -> str:
        return f"{self.module}:{'in' if self.pre else 'out'}"


def _as_site(site: str | Site, pre: bool = False) -> Site:
    return site if isinstance(site, Site) else Site(site, pre)


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"{type(model).__name__} has no module named '{name}'") from None


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of a decoder's transformer blocks."""
    for name in _BLOCK_LISTS:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return name, mod
    raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}")


def n_layers(model: nn.Module) -> int:
    return len(decoder_blocks(model)[1])


def resid_module(model: nn.Module, layer: int) -> Site:
    """The residual stream entering decoder block ``layer`` (== ``hidden_states[layer]``).

    ``layer == n_layers`` names the final hidden state, which Hugging Face decoders
    return after the final norm, so it is that norm's output.
    """
    prefix, blocks = decoder_blocks(model)
    n = len(blocks)
    if not 0 <= layer <= n:
        raise ModelError(f"layer {layer} is out of range: this model has layers 0..{n}")
    if layer < n:
        return Site(f"{prefix}.{layer}", pre=True)
    for name in _FINAL_NORMS:
        try:
            model.get_submodule(name)
            return Site(name, pre=False)
        except AttributeError:
            continue
    raise ModelError(f"cannot find the final norm of {type(model).__name__}")


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class Activations(dict):
    """Captured tensors keyed by the sites passed to ``capture``.

    With ``keep_all`` each value is the list of tensors of every forward call;
    otherwise it is the tensor of the most recent call.
    """


@contextmanager
def capture(
    model: nn.Module,
    module_names: Iterable[str | Site],
    *,
    detach: bool = True,
    keep_all: bool = False,
) -> Iterator[Activations]:
    """Record the output (or input, for ``Site(..., pre=True)``) of named modules."""
    acts = Activations()
    handles = []

    def store(key, tensor):
        t = tensor.detach() if detach else tensor
        if keep_all:
            acts.setdefault(key, []).append(t)
        else:
            acts[key] = t

    try:
        for key in module_names:
            site = _as_site(key)
            mod = get_module(model, site.module)
            if site.pre:

                def hook(_m, args, kwargs, key=key):
                    store(key, _first_tensor(args, kwargs))

                handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
            else:

                def hook(_m, _args, output, key=key):
                    store(key, _output_tensor(output))

                handles.append(mod.register_forward_hook(hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch(
    model: nn.Module,
    module_name: str | Site,
    fn: Callable[[torch.Tensor], torch.Tensor],
    pre: bool = False,
) -> Iterator[None]:
    """Replace a module's input (``pre=True``) or output by ``fn(tensor)`` inside the block.

    For modules returning tuples the first element is edited. A Site carries its own
    ``pre`` flag, so ``patch(model, resid_module(model, 3), fn)`` edits block 3's input.
    """
    site = _as_site(module_name, pre)
    mod = get_module(model, site.module)
    if site.pre:

        def hook(_m, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
            raise ModelError(f"cannot find the input tensor of module '{site.module}'")

        handle = mod.register_forward_pre_hook(hook, with_kwargs=True)
    else:

        def hook(_m, _args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        handle = mod.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
