"""Perceived-gender bias audit of text-to-image models: prompts, generation, detection,
labelling, filtering and statistics (``analyze``), with a simulated model as ground truth."""

from lucidml.bias import analyze, detect, generate
from lucidml.bias.filtering import filter_records
from lucidml.bias.prompts import default_prompts, load_prompts
from lucidml.bias.simulate import SimulatedT2I

__all__ = [
    "SimulatedT2I",
    "analyze",
    "default_prompts",
    "detect",
    "filter_records",
    "generate",
    "load_prompts",
]
