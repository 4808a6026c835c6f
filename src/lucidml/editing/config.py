"""Configs for building the benchmark, evaluating, and running the lifelong loop.

Defaults follow WikiBigEdit (ExplainableML/WikiBigEdit); where ours differ the
comment says why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lucidml.core.config import Config

# Relations that are bookkeeping rather than world knowledge.
PROPERTY_BLOCKLIST = ("P31", "P279", "P910", "P1343", "P373", "P1424", "P5008", "P361")
# Second hops that make unnatural multi-hop questions (reference: instance of, publisher, ...).
MHOP_BLOCKLIST = ("P31", "P279", "P123", "P17", "P361", "P1343", "P910")


BLOCK_BYTES = 1 << 22  # a parse work item: the dump lines that start in 4 MiB


class ParseConfig(Config):
    dump: str | None = None  # the dump file (required; --dump)
    on_error: Literal["stop", "skip"] = "stop"  # a malformed line stops the parse, or is skipped
    processes: int = Field(1, ge=1)  # worker processes of each launched process
    best_rank: bool = True  # a property with preferred statements keeps only those
    block_bytes: int = Field(BLOCK_BYTES, ge=1)


class BuildConfig(Config):
    max_object_words: int = 5
    min_label_chars: int = 2
    property_blocklist: list[str] = Field(default_factory=lambda: list(PROPERTY_BLOCKLIST))
    mhop_blocklist: list[str] = Field(default_factory=lambda: list(MHOP_BLOCKLIST))
    kinds: list[Literal["new", "update", "added"]] = Field(
        default_factory=lambda: ["new", "update"]
    )
    # The reference turns "an extra value of a multi-valued property" into an update with
    # no old object; we keep those as kind "added" and only relabel them on request.
    compat_added_as_update: bool = False
    best_rank: bool = True
    templates: str | None = None  # JSON file of per-relation templates; None = bundled
    # LLM rewrites must stay this close (cosine) to the template question; 0 turns it off
    llm_min_similarity: float = 0.75
    similarity_encoder: str = "minilm-l6"
    llm: str | None = None  # causal LM proposing rephrasings and personas; None = templates
    device: str = "auto"  # where the question LLM and the similarity encoder run
    seed: int = 0


class EvalConfig(Config):
    few_shot: bool = True  # reference fs_example: one "Q: ... A: ..." shot before the question
    batch_size: int = 16
    past_max: int = 1000  # edits of each earlier timestep scored for retention
    exact_match: bool = False  # also greedy exact match (<= |answer| + 8 new tokens)
    # perplexity of general prose before and after each timestep: a collapse alarm
    canary: bool = True
    canary_tokens: int = Field(2048, ge=2)  # of the prose, scored in windows of 256


class RunConfig(Config):
    method: str = "lora"
    model: str = "smollm2-135m-instruct"
    benchmark: str | None = None  # None = the embedded benchmark
    hparams: dict = Field(default_factory=dict)
    max_edits: int | None = None  # per timestep; None = all
    skip_known: bool = False  # one policy for every editor (the reference: RAG only)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    device: str = "auto"
    seed: int = 0
