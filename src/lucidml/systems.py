"""The one place where systems are registered.

A system is built when its package exists. Its ``cli.py`` holds a Typer ``app`` that
the root command mounts as ``lucid <name>``, and its ``api.py`` holds
``demo(out_dir, quick=False, device=None) -> Path`` (the path of the report.html it
wrote), which ``lucid tour`` runs; ``device=None`` means ``auto``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class System:
    name: str
    title: str
    paper: str

    @property
    def module(self) -> str:
        return f"lucidml.{self.name}"

    def _has(self, submodule: str) -> bool:
        if importlib.util.find_spec(self.module) is None:
            return False
        return importlib.util.find_spec(f"{self.module}.{submodule}") is not None

    @property
    def built(self) -> bool:
        return self._has("api")

    def cli_app(self):
        if not self._has("cli"):
            return None
        return importlib.import_module(f"{self.module}.cli").app

    def demo(self, out_dir: Path, quick: bool = False, device: str | None = None) -> Path:
        api = importlib.import_module(f"{self.module}.api")
        return api.demo(out_dir, quick=quick, device=device)


SYSTEMS: tuple[System, ...] = (
    System("distill", "Fair evaluation of dataset distillation (LRS, ARS)", "DD-Ranking"),
    System(
        "chunking",
        "Neural chunking of population activity (DSC, PA, UCD, grafting)",
        "Neural chunking",
    ),
    System("datagen", "LoRA-fused training-data generation with few-shot guidance", "LoFT"),
    System("feasibility", "LLM feasibility scores for open-world compositional zero-shot", "FLM"),
    System("sae", "Sparse autoencoders for vision-language models", "SAEs for VLMs"),
    System("bias", "Perceived-gender bias audit of text-to-image models", "T2I gender audit"),
    System("editing", "Lifelong knowledge editing on real Wikidata changes", "WikiBigEdit"),
    System("merging", "Temporal model merging (init, deploy, merge technique)", "TIME"),
    System(
        "uncertainty", "Post-hoc Laplace uncertainty for CLIP/SigLIP, active learning", "BayesVLM"
    ),
)


def get(name: str) -> System:
    from lucidml.errors import InputError

    for s in SYSTEMS:
        if s.name == name:
            return s
    raise InputError(f"unknown system '{name}': choose from {', '.join(s.name for s in SYSTEMS)}")
