import math

import pytest
import torch

from lucidml.core.runs import Run
from lucidml.editing.config import EvalConfig
from lucidml.editing.evaluate import FEW_SHOT
from lucidml.editing.lifelong import backward_transfer, run_lifelong, running_means
from lucidml.editing.methods import Editor


class LookupLM(torch.nn.Module):
    """Predicts the next token of a known token sequence wherever the tokens so far are
    one's start (so greedy decoding from a known question gives its answer), else token 0."""

    def __init__(self, vocab, known=()):
        super().__init__()
        self.vocab = vocab
        self.known = set(known)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids=None):
        following = {}
        for seq in sorted(self.known):
            for k in range(len(seq) - 1):
                following.setdefault(seq[: k + 1], seq[k + 1])
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for i, (row, m) in enumerate(zip(input_ids, attention_mask, strict=True)):
            where = m.bool().nonzero().squeeze(-1).tolist()
            real = tuple(row[m.bool()].tolist())
            for k, position in enumerate(where):
                logits[i, position, following.get(real[: k + 1], 0)] = 1.0

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def ids(tok, q, a):
    return tuple(tok(f"{FEW_SHOT}Q: {q} A: {a}")["input_ids"])


class Memorise(Editor):
    name = "memorise"

    def __init__(self, tok, forget=False):
        super().__init__()
        self.tok, self.forget, self.calls = tok, forget, 0

    def apply(self, model, tokenizer, records):
        self.calls += 1
        if self.forget:  # keep only the locality facts and this timestep's edits
            model.known = {k for k in model.known if k in model.loc}
        model.known |= {ids(self.tok, r["update"], r["ans"]) for r in records}
        return model


def stream(n_t=3, n=20):
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
    countries = [
        "france",
        "italy",
        "spain",
        "germany",
        "peru",
        "norway",
        "egypt",
        "ireland",
        "austria",
        "greece",
    ]
    out = []
    for t in range(n_t):
        recs = []
        for i in range(n):
            c = countries[(i + t) % 10]
            recs.append(
                {
                    "update": f"who leads {c} {names[i % 10]} {t} ?",
                    "ans": names[(i + t) % 10],
                    "loc": f"what is the capital of {c} ?",
                    "loc_ans": "paris",
                }
            )
        out.append(recs)
    return out


def lookup_model(tok, timesteps):
    loc = {ids(tok, r["loc"], r["loc_ans"]) for ts in timesteps for r in ts}
    model = LookupLM(len(tok), loc)
    model.loc = loc
    return model


@pytest.mark.parametrize("forget", [False, True])
def test_memorising_and_forgetting_editors(tiny_lm, forget):
    tok = tiny_lm[1]
    timesteps = stream()
    model = lookup_model(tok, timesteps)
    out = run_lifelong(model, tok, Memorise(tok, forget), timesteps, EvalConfig(past_max=7))
    rows = out["timesteps"]
    assert [r["rewrite"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["pre_rewrite"] for r in rows] == [0.0, 0.0, 0.0]
    assert all(r["loc_gold"] == 1.0 and r["loc_agree"] == 1.0 for r in rows)
    assert math.isnan(rows[0]["past"])
    expected_past = 0.0 if forget else 1.0
    assert rows[1]["past"] == rows[2]["past"] == expected_past
    assert out["R"] == [[1.0], [expected_past, 1.0], [expected_past, expected_past, 1.0]]
    assert out["bwt"] == (-1.0 if forget else 0.0)
    # the lookup editor leaves the weights alone, so the prose canary does not move
    assert all(r["canary_ppl"] == r["pre_canary_ppl"] > 1 for r in rows)


def test_bwt_and_running_means_by_hand():
    R = [[0.8], [0.5, 0.9], [0.4, 0.6, 1.0]]
    assert backward_transfer(R) == pytest.approx(((0.4 - 0.8) + (0.6 - 0.9)) / 2)
    rows = [{"a": 1.0}, {"a": 0.0}, {"a": float("nan")}]
    assert [r["a"] for r in running_means(rows, ["a"])] == [1.0, 0.5, 0.5]


class Crash(Memorise):
    def apply(self, model, tokenizer, records):
        if self.calls == 1 and not getattr(self, "resumed", False):
            raise RuntimeError("stopped")
        return super().apply(model, tokenizer, records)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls, self.resumed = state["calls"], True


def test_checkpoint_and_resume(tiny_lm, tmp_path):
    tok = tiny_lm[1]
    timesteps = stream(n=5)
    model = lookup_model(tok, timesteps)
    run = Run("editing", tmp_path / "run")
    with pytest.raises(RuntimeError, match="stopped"):
        run_lifelong(model, tok, Crash(tok), timesteps, run=run)
    # JSON and safetensors, no pickle
    stored = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert stored == ["state-0000.safetensors", "state.json"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    # a fresh process: a new model that knows only the locality facts, and a new editor
    fresh = lookup_model(tok, timesteps)
    editor = Crash(tok)
    out = run_lifelong(
        fresh, tok, editor, timesteps, run=Run("editing", tmp_path / "run", resume=True)
    )
    assert editor.resumed and editor.calls == 3
    assert [r["timestep"] for r in out["timesteps"]] == [0, 1, 2]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3


def test_skip_known_filters_edits(tiny_lm):
    tok = tiny_lm[1]
    timesteps = stream(n_t=1, n=4)
    model = lookup_model(tok, timesteps)
    model.known.add(ids(tok, timesteps[0][0]["update"], timesteps[0][0]["ans"]))
    out = run_lifelong(model, tok, Memorise(tok), timesteps, skip_known=True)
    assert out["timesteps"][0]["n_edits"] == 3
    assert out["timesteps"][0]["pre_rewrite"] == 0.25


def test_degenerate_multihop_probes_are_dropped_with_a_count(tiny_lm):
    tok = tiny_lm[1]
    timesteps = stream(n_t=1, n=3)
    recs = timesteps[0]
    # copied: the answer is in the question; known: the unedited model answers it; kept
    recs[0] |= {"mhop": "who leads the club of alice ?", "mhop_ans": "alice"}
    recs[1] |= {"mhop": "who leads the club of bob ?", "mhop_ans": "grace"}
    recs[2] |= {"mhop": "who leads the club of carol ?", "mhop_ans": "heidi"}
    model = lookup_model(tok, timesteps)
    model.known.add(ids(tok, recs[1]["mhop"], "grace"))
    out = run_lifelong(model, tok, Memorise(tok), timesteps, EvalConfig(canary=False))
    assert out["mhop_dropped"] == {"answer_in_question": 1, "known_before_edits": 1}
    probes = out["probes"]
    mhop = probes[(probes["kind"] == "mhop") & (probes["phase"] == "after")]
    assert list(mhop["record"]) == [2] and out["timesteps"][0]["mhop_n"] == 1
    assert out["timesteps"][0]["mhop"] == 0.0  # the lookup model never learnt heidi


def test_probe_table_and_intervals_of_every_mean(tiny_lm, tmp_path):
    from lucidml.editing.summary import PROBE_COLUMNS

    tok = tiny_lm[1]
    timesteps = stream(n_t=2, n=4)
    model = lookup_model(tok, timesteps)
    run = Run("editing", tmp_path / "run")
    out = run_lifelong(model, tok, Memorise(tok), timesteps, EvalConfig(canary=False), run=run)
    import pandas as pd

    table = pd.read_parquet(tmp_path / "run" / "probes.parquet")
    assert tuple(table.columns) == PROBE_COLUMNS
    # 2 timesteps x 4 records x (rewrite + loc) before and after, and 4 past probes at t=1
    assert len(table) == 2 * 4 * 2 * 2 + 4
    after = table[(table["phase"] == "after") & (table["kind"] == "rewrite")]
    assert (after["greedy"] == after["gold"]).all() and (after["exact_match"] == 1).all()
    row = out["timesteps"][1]
    assert row["rewrite_n"] == 4 and row["past_n"] == 4 and row["loc_agree_n"] == 4
    # all four rewrites right: the Wilson interval of 4/4 is [0.510, 1]
    assert row["rewrite_em_ci"] == pytest.approx([0.5101, 1.0], abs=1e-4)
    assert row["pre_rewrite_em_ci"] == pytest.approx([0.0, 0.4899], abs=1e-4)
    final = out["final"]
    # 8 of 8 over two timesteps: the pooled Wilson interval, as for one timestep's 4 of 4
    assert final["rewrite_n"] == 8
    assert final["rewrite_ci"] == pytest.approx([8 / (8 + 1.96**2), 1.0], abs=1e-4)
    assert all(f"{k}_ci" in final for k in ("rewrite", "loc_gold", "loc_agree", "past"))
