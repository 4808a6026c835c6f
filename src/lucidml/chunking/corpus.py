"""A small corpus of templated everyday sentences and prompts, written for lucidml.

Sentences are drawn from hand-written templates and word lists with a seeded
generator, so the text is reproducible and the demo words occur often enough for PA.
"""

from __future__ import annotations

import numpy as np

SUBJECTS = (
    "My sister",
    "Our neighbour",
    "The teacher",
    "My friend",
    "Grandpa",
    "The old man",
    "A young woman",
    "My brother",
    "The doctor",
    "Our boss",
    "She",
    "He",
    "They",
    "We",
)
DRINKS = ("coffee", "tea", "water", "juice", "milk")
PETS = ("dog", "cat", "bird")
WEATHER = ("rain", "snow", "wind", "sun")
PLACES = (
    "in the kitchen",
    "at the office",
    "in the garden",
    "at the station",
    "near the park",
    "by the window",
    "on the bus",
    "at home",
)
TIMES = (
    "every morning",
    "after lunch",
    "in the evening",
    "on Sundays",
    "before work",
    "late at night",
    "at noon",
    "on weekends",
)
FOODS = ("bread", "soup", "pasta", "apples", "rice", "cake")
ADJECTIVES = ("warm", "quiet", "busy", "long", "lovely", "cold", "short", "strange")

TEMPLATES = (
    "{subj} drinks {drink} {place} {time}.",
    "{subj} made a cup of {drink} {time}.",
    "{subj} walks the {pet} {time}.",
    "The {pet} sleeps {place} {time}.",
    "{subj} fed the {pet} some {food}.",
    "The {weather} kept {obj} {place} all day.",
    "{subj} did not expect the {weather} {time}.",
    "It was a {adj} day, and the {weather} did not stop.",
    "{subj} cooked {food} {place} {time}.",
    "{subj} read a {adj} book {place}.",
    "Did {obj} like the {drink} {place}?",
    "{subj} bought {food} and {drink} {time}.",
)
OBJECTS = ("us", "them", "her", "him", "everyone", "the children")

PROMPTS = (
    "What do you usually do in the morning?",
    "Describe a relaxing afternoon.",
    "What should I bring to a picnic?",
    "Tell me about your favourite place in town.",
    "How can I make my kitchen feel cosy?",
    "What is a good way to spend a Sunday?",
    "Write a short story about a small village.",
    "What do people do when they visit a friend?",
    "Give me ideas for a quiet evening at home.",
    "What makes a good breakfast?",
    "Describe a walk through the park.",
    "How do you get ready for a long day at work?",
    "What would you pack for a weekend trip?",
    "Tell me about a busy train station.",
    "What are some simple pleasures in life?",
    "Describe an ordinary day in a city.",
)


def everyday_sentences(n: int = 600, seed: int = 0) -> list[str]:
    """``n`` sentences from the templates, filled at random with a seeded generator."""
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    out = []
    for _ in range(n):
        template = pick(TEMPLATES)
        out.append(
            template.format(
                subj=pick(SUBJECTS),
                drink=pick(DRINKS),
                pet=pick(PETS),
                weather=pick(WEATHER),
                place=pick(PLACES),
                time=pick(TIMES),
                food=pick(FOODS),
                adj=pick(ADJECTIVES),
                obj=pick(OBJECTS),
            )
        )
    return out


def everyday_text(n: int = 600, seed: int = 0) -> str:
    return " ".join(everyday_sentences(n, seed))
