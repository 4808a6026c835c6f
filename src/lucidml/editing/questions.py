"""Questions for a fact: per-relation templates, rephrasings, personas, acceptance filters.

Templates are deterministic. An optional ``QuestionLLM`` (any callable from a prompt to
text) may propose rephrasings and persona questions; a proposal is kept only when it
passes the same acceptance filter as the templates, otherwise the template stands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from lucidml.errors import InputError

QuestionLLM = Callable[[str], str]

PERSONAS = {
    "detective": "As a detective piecing the facts together, I need to know: {q}",
    "casual": "Hey, quick question: {q}",
    "pirate": "Arr, matey! Tell this old sea dog: {q}",
    "philosopher": "Pondering the order of the world, one must ask: {q}",
    "caveman": "Me want know thing. {q}",
}
_FALLBACK = {
    "question": "What is the {relation} of {subject}?",
    "rephrase": "Tell me the {relation} of {subject}.",
    "bridge": "the {relation} of {subject}",
}
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def acceptable(question: str, subject: str, answer: str, obj: str | None = None) -> bool:
    """The reference acceptance filter for a generated question.

    Non-empty; contains every word of the subject; the answer's words come from the
    object label (``obj``, default the answer itself); the answer is not in the question.
    """
    q = question.strip()
    if not q or not answer.strip():
        return False
    qwords = set(words(q))
    if not set(words(subject)) <= qwords:
        return False
    if not set(words(answer)) <= set(words(obj if obj is not None else answer)):
        return False
    return answer.casefold() not in q.casefold()


class Templates:
    """Per-relation question templates with a generic fallback built from the relation label."""

    def __init__(self, table: dict[str, dict[str, str]]):
        self.table = table

    @classmethod
    def load(cls, path: str | Path | None = None) -> Templates:
        """The bundled table, or a JSON file mapping relation ids to template fields."""
        if path is None:
            text = resources.files("lucidml.editing").joinpath("data/templates.json").read_text()
            source = "bundled templates"
        else:
            p = Path(path)
            if not p.is_file():
                raise InputError(f"template file {p} does not exist")
            text, source = p.read_text(), f"template file {p}"
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} is not valid JSON (line {exc.lineno})") from None
        if not isinstance(table, dict):
            raise InputError(f"{source} must map relation ids to template objects")
        for pid, entry in table.items():
            if not re.fullmatch(r"P\d+", pid):
                raise InputError(f"{source}: '{pid}' is not a relation id like P6")
            if not isinstance(entry, dict) or "{subject}" not in entry.get("question", ""):
                raise InputError(
                    f"{source}: relation {pid} needs a 'question' containing '{{subject}}'"
                )
        return cls(table)

    def _field(self, relation_id: str, field: str, relation: str | None) -> str:
        entry = self.table.get(relation_id)
        if entry is not None and field in entry:
            return entry[field]
        if entry is not None and field == "rephrase":
            return entry["question"]
        if not relation:
            raise InputError(
                f"no question template for relation {relation_id} and no "
                "relation label to build one from"
            )
        return _FALLBACK[field].replace("{relation}", relation)

    def question(self, relation_id: str, subject: str, relation: str | None = None) -> str:
        return self._field(relation_id, "question", relation).format(subject=subject)

    def rephrase(self, relation_id: str, subject: str, relation: str | None = None) -> str:
        return self._field(relation_id, "rephrase", relation).format(subject=subject)

    def bridge(self, relation_id: str, subject: str, relation: str | None = None) -> str:
        return self._field(relation_id, "bridge", relation).format(subject=subject)


def personas(question: str) -> dict[str, str]:
    return {style: wrap.format(q=question) for style, wrap in PERSONAS.items()}


Similarity = Callable[[str, str], float]


def propose(
    llm: QuestionLLM | None,
    instruction: str,
    fallback: str,
    subject: str,
    answer: str,
    source: str | None = None,
    similarity: Similarity | None = None,
    min_similarity: float = 0.75,
) -> tuple[str, bool]:
    """The LLM's question if it passes the acceptance filter, else the fallback.

    Beyond the reference filter, a proposal must read as one question (end with "?") and
    differ from ``source``, the question it rewrites: SmolLM2 often answers instead
    ("The capital of Indonesia is Jakarta.") or copies the question, and both passed the
    reference filter. With ``similarity`` it must also stay near the source's meaning
    (>= ``min_similarity``). Returns (question, came_from_llm).
    """
    if llm is not None:
        text = llm(instruction).strip().splitlines()
        candidate = text[0].strip() if text else ""
        if (
            candidate.endswith("?")
            and (source is None or words(candidate) != words(source))
            and acceptable(candidate, subject, answer)
            and (
                similarity is None
                or source is None
                or similarity(source, candidate) >= min_similarity
            )
        ):
            return candidate, True
    return fallback, False


def encoder_similarity(encoder) -> Similarity:
    """Cosine similarity of two texts under a sentence-transformers encoder.

    With MiniLM, SmolLM2's drifting rewrites score lower ("Who is the most famous musician
    of Kylian Mbappé?" for "Which club does Kylian Mbappé play for?": 0.70) than faithful
    ones ("Which team does ...": 0.94; persona rewrites 0.86-0.99).
    """

    def similarity(a: str, b: str) -> float:
        x, y = encoder.encode([a, b], normalize_embeddings=True)
        return float((x * y).sum())

    return similarity


# Completion-style prompts with two worked examples: small instruct models (SmolLM2-135M)
# answer a chat request to rewrite a question, but continue this pattern faithfully.
_EXAMPLES = (
    ("Who is the mayor of Paris?", "What is the currency of Japan?"),
    {
        "rephrase": (
            "Which person serves as the mayor of Paris?",
            "Which currency is used in Japan?",
        ),
        "detective": (
            "My investigation needs one fact: who is the mayor of Paris?",
            "A clue points to Japan's money: what is its currency?",
        ),
        "casual": (
            "Hey, who's the mayor of Paris these days?",
            "So what money do they use in Japan?",
        ),
        "pirate": (
            "Arr, who be the mayor o' Paris, matey?",
            "Arr, what coin do they trade in Japan, matey?",
        ),
        "philosopher": (
            "In the order of civic life, who holds the office of mayor of Paris?",
            "What medium of exchange, in essence, serves Japan as its currency?",
        ),
        "caveman": ("Who big chief of Paris town, mayor?", "What shiny money Japan use?"),
    },
)


def _pattern(header: str, label: str, style: str, question: str) -> str:
    sources, rewrites = _EXAMPLES
    shots = "".join(
        f"Question: {q}\n{label}: {r}\n" for q, r in zip(sources, rewrites[style], strict=True)
    )
    return f"{header}\n{shots}Question: {question}\n{label}:"


def rephrase_instruction(question: str) -> str:
    return _pattern(
        "Each question is said again in other words, keeping every name.",
        "Same question in other words",
        "rephrase",
        question,
    )


def persona_instruction(question: str, style: str) -> str:
    return _pattern(
        f"Each question is asked again the way a {style} would ask it, keeping every name.",
        f"As a {style}",
        style,
        question,
    )


class CachedQuestionLLM:
    """A QuestionLLM whose answers are appended to a JSON-lines file and replayed from it.

    A killed build resumes without asking the LLM again: answers are keyed by the LLM's
    name and the prompt (decoding is greedy, so a prompt always gets the same answer).
    Each answer is one line, written and flushed at once; a line torn by a kill is ignored.
    """

    def __init__(self, llm: QuestionLLM, path: str | Path):
        self.llm, self.path = llm, Path(path)
        self.name = getattr(llm, "name", "llm")
        self.answers: dict[str, str] = {}
        text = self.path.read_text() if self.path.is_file() else ""
        if text and not text.endswith("\n"):  # end a torn last line before appending
            with open(self.path, "a") as f:
                f.write("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.answers[entry["key"]] = entry["text"]

    def _key(self, prompt: str) -> str:
        import hashlib

        return hashlib.sha256(f"{self.name}\0{prompt}".encode()).hexdigest()

    def __call__(self, prompt: str) -> str:
        key = self._key(prompt)
        if key not in self.answers:
            self.answers[key] = self.llm(prompt)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": key, "text": self.answers[key]}) + "\n")
                f.flush()
        return self.answers[key]


class TransformersQuestionLLM:
    """A QuestionLLM over any transformers causal LM: greedy decoding of one line.

    ``chat=True`` wraps the prompt in the tokenizer's chat template; the default
    continues the prompt as plain text, which the bundled prompts are written for.
    """

    def __init__(
        self, model, tokenizer, max_new_tokens: int = 40, name: str = "llm", chat: bool = False
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.name, self.chat = max_new_tokens, name, chat

    def __call__(self, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        text = prompt
        if self.chat and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(
                **{k: v.to(device) for k, v in enc.items()},
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                stopping_criteria=[_LineDone(tok, enc["input_ids"].shape[1])],
            )
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


class _LineDone:
    """A generate() stopping criterion: stop once the new text holds a line break after
    some content, since propose() reads one line. (transformers' ``stop_strings`` fails
    on word-level tokenizers; generate() takes any callable here.)"""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [
            "\n" in self.tokenizer.decode(row[self.start :], skip_special_tokens=True).lstrip()
            for row in input_ids
        ]
        return torch.tensor(done, device=input_ids.device)
