"""Real-model checks on SmolLM2-135M (slow: they load the embedded LLM)."""

import copy

import numpy as np
import pytest
import torch

from lucidml.editing import methods
from lucidml.editing.evaluate import agreement, score

# Counterfactual edits (subject, question, new answer) and unrelated facts for locality.
COUNTERFACTS = [
    ("France", "What is the capital of France?", "Rome"),
    ("Japan", "What is the capital of Japan?", "Berlin"),
    ("Apple", "Who is the chief executive officer of Apple?", "Satya Nadella"),
    ("Germany", "What is the currency of Germany?", "Japanese yen"),
    ("Canada", "Who is the head of government of Canada?", "Angela Merkel"),
    ("Lionel Messi", "Which club does Lionel Messi play for?", "Chelsea F.C."),
    ("Italy", "What is the capital of Italy?", "Madrid"),
    ("Microsoft", "Who is the chief executive officer of Microsoft?", "Tim Cook"),
    ("Spain", "What is the official language of Spain?", "German"),
    ("Egypt", "What is the capital of Egypt?", "Lisbon"),
]
# Unrelated facts; agreement is over their 54 answer tokens (five probes gave six tokens,
# where one flip of a low-margin guess moved locality by 0.17).
LOCALITY = [
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Poland?", "Warsaw"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the largest planet in the Solar System?", "Jupiter"),
    ("What is the chemical symbol of gold?", "Au"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the capital of Australia?", "Canberra"),
    ("Who developed the theory of relativity?", "Albert Einstein"),
    ("What is the largest ocean on Earth?", "Pacific Ocean"),
    ("What is the capital of Russia?", "Moscow"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("Who was the first president of the United States?", "George Washington"),
    ("What is the capital of China?", "Beijing"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("What is the currency of the United Kingdom?", "Pound sterling"),
    ("Who wrote Pride and Prejudice?", "Jane Austen"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the boiling point of water in Celsius?", "100 degrees"),
    ("Who discovered penicillin?", "Alexander Fleming"),
    ("What is the capital of Argentina?", "Buenos Aires"),
    ("What is the tallest mountain in the world?", "Mount Everest"),
    ("Who composed the Fifth Symphony?", "Ludwig van Beethoven"),
    ("What is the capital of Turkey?", "Ankara"),
    ("Which company makes the iPhone?", "Apple"),
    ("What is the longest river in Africa?", "Nile"),
    ("Who founded Microsoft?", "Bill Gates"),
    ("What is the capital of India?", "New Delhi"),
    ("What is the official language of Mexico?", "Spanish"),
    ("Which club does Cristiano Ronaldo play for?", "Al Nassr"),
]


CORES = torch.get_num_threads()  # read at import, before the editing conftest pins one


@pytest.fixture(autouse=True)
def _all_threads(_one_thread):
    """A 135M model, unlike the tiny ones, runs ~1.7x faster on two threads than on one."""
    torch.set_num_threads(CORES)


RECORDS = [{"subject": s, "update": q, "ans": a} for s, q, a in COUNTERFACTS]


def rewrite_and_locality(smollm2, edit) -> tuple[float, float]:
    """Rewrite accuracy of the counterfactuals and locality agreement after ``edit(model)``."""
    model, tok = smollm2
    loc_q, loc_a = (list(x) for x in zip(*LOCALITY, strict=True))
    before = score(model, tok, loc_q, loc_a, greedy=False)
    edited = edit(copy.deepcopy(model))
    questions, answers = [r["update"] for r in RECORDS], [r["ans"] for r in RECORDS]
    rewrite = float(np.mean(score(edited, tok, questions, answers, greedy=False).accuracy))
    return rewrite, agreement(
        before.predictions, score(edited, tok, loc_q, loc_a, greedy=False).predictions
    )


@pytest.mark.slow
def test_rome_ten_counterfactuals_one_at_a_time(smollm2):
    editor = methods.get("rome")

    def edit(model):
        for r in RECORDS:  # sequential: each edit sees the previous ones
            model = editor.apply(model, smollm2[1], [r])
        return model

    rewrite, locality = rewrite_and_locality(smollm2, edit)
    # with the default prose covariance corpus (issue 17: 0.97 when it held the facts)
    assert rewrite >= 0.8  # measured 0.833
    assert locality >= 0.7  # measured 0.85


@pytest.mark.slow
def test_memit_ten_counterfactuals_in_one_batch(smollm2):
    """The key-width-scaled lambda edits SmolLM2; the reference's unscaled 15,000 gave 0.36."""
    editor = methods.get("memit")
    rewrite, locality = rewrite_and_locality(
        smollm2, lambda model: editor.apply(model, smollm2[1], RECORDS)
    )
    assert rewrite >= 0.9  # measured 0.967 (with the prose corpus; 0.97 with the facts)
    assert locality >= 0.7  # measured 0.85 (0.89 with the facts)


@pytest.mark.slow
def test_smollm2_rewrites_questions(smollm2):
    """SmolLM2 as the question LLM: how many of 30 rewrites pass the filters."""
    from lucidml.core.zoo import load_sentence_encoder
    from lucidml.editing import questions as Q

    llm = Q.TransformersQuestionLLM(*smollm2)
    similarity = Q.encoder_similarity(load_sentence_encoder())
    cases = [
        ("Who is the head of government of France?", "France", "Michel Barnier"),
        ("Which club does Kylian Mbappé play for?", "Kylian Mbappé", "Real Madrid CF"),
        ("Who is the chief executive officer of Starbucks?", "Starbucks", "Brian Niccol"),
        ("What is the capital of Indonesia?", "Indonesia", "Nusantara"),
        ("Who is the head coach of Liverpool F.C.?", "Liverpool F.C.", "Arne Slot"),
    ]
    kept, near = [], []
    for q, s, a in cases:
        prompts = [Q.rephrase_instruction(q)] + [Q.persona_instruction(q, p) for p in Q.PERSONAS]
        for prompt in prompts:
            text, from_llm = Q.propose(llm, prompt, "", s, a, source=q)
            if from_llm:
                kept.append(text)
                assert text.endswith("?") and s in text and a not in text
                if similarity(q, text) >= 0.75:
                    near.append(text)
    assert len(kept) >= 10  # measured 17 of 30 pass the form filter
    assert "Which team does Kylian Mbappé play for?" in near
    assert "Who is the most famous musician of Kylian Mbappé?" not in near
    assert len(near) >= 10  # measured 15: the meaning check drops the two drifted ones
