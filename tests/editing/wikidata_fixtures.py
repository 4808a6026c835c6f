"""Builders of small Wikidata-format dumps for the editing tests."""

import json


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
