import json

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread; on a busy machine OpenMP threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def snak(prop, qid=None, snaktype="value", datatype="wikibase-item", value=None):
    s = {"snaktype": snaktype, "property": prop, "datatype": datatype}
    if snaktype == "value":
        s["datavalue"] = value or {
            "type": "wikibase-entityid",
            "value": {"entity-type": "item", "id": qid, "numeric-id": int(qid[1:])},
        }
    return s


def statement(prop, qid, rank="normal", **snak_kw):
    return {"mainsnak": snak(prop, qid, **snak_kw), "rank": rank, "type": "statement"}


def entity(qid, label, claims=None):
    return {
        "id": qid,
        "type": "item",
        "labels": {"en": {"language": "en", "value": label}},
        "claims": claims or {},
    }


def prop_entity(pid, label):
    return {"id": pid, "type": "property", "labels": {"en": {"language": "en", "value": label}}}


def write_dump(path, entities, wrap=True):
    lines = [json.dumps(e) for e in entities]
    text = "[\n" + ",\n".join(lines) + "\n]\n" if wrap else "\n".join(lines) + "\n"
    path.write_text(text)
    return path


def facts_dump(path, facts, labels, props):
    """A dump from {(s, p): [objects]} with the given labels and property labels."""
    claims = {}
    for (s, p), objs in facts.items():
        claims.setdefault(s, {}).setdefault(p, []).extend(statement(p, o) for o in objs)
    ents = [prop_entity(p, lab) for p, lab in props.items()]
    ents += [entity(q, lab, claims.get(q)) for q, lab in labels.items()]
    return write_dump(path, ents)


WORDS = (
    "q a : ? . , the what is capital of who head coach club leads plays for "
    "france paris rome italy spain madrid berlin germany bern switzerland lima peru "
    "oslo norway quito ecuador cairo egypt dublin ireland vienna austria athens greece "
    "tokyo japan kenya nairobi chile santiago cuba havana nepal kathmandu iran tehran "
    "fiji suva mali bamako laos vientiane oman muscat chad ndjamena "
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj "
    "red blue green gold black white pink grey jade teal one two three four five six "
    "seven eight nine ten"
)


@pytest.fixture
def tiny_lm():
    """A tiny Llama over the words of the tests' facts."""
    from lucidml.testing import tiny_llama, word_tokenizer

    words = WORDS.split()
    tok = word_tokenizer(words, max_length=128)
    return tiny_llama(tokenizer=tok, hidden_size=32, num_layers=3, num_heads=4)
