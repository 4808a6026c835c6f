"""The default additive graft of "coffee" on the real SmolLM2-135M-Instruct."""

import json
import re

import pytest

from lucidml.chunking import api, graft
from lucidml.chunking.config import GraftConfig


def test_builtin_prompts_are_48_distinct_and_name_no_drink():
    prompts = api.read_prompts(None)
    assert len(prompts) == len(set(prompts)) == 48
    drinks = re.compile(r"coffee|caf[eé]|tea\b|espresso|latte|drink|cup\b|mug\b", re.I)
    assert not [p for p in prompts if drinks.search(p)]
    assert prompts == graft.builtin_prompts()


@pytest.mark.slow
def test_default_coffee_graft_raises_the_word_rate_and_stays_fluent(tmp_path):
    # The path of `lucid chunking graft --word coffee --max-new-tokens 80`: templates fitted
    # on the built-in corpus, the 48 built-in prompts, every other setting the default.
    cfg = GraftConfig(word="coffee", max_new_tokens=80, device="cpu")
    api.graft_job(cfg, out=tmp_path / "graft")
    res = json.loads((tmp_path / "graft" / "results.json").read_text())
    assert res["n"] == res["n_prompts"] == 48
    assert res["word_rate"] > res["word_rate_control"]
    assert res["mcnemar_p"] < 0.05
    assert res["perplexity"] <= 2 * res["perplexity_control"]
