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


# A test text for PA written apart from the templates above: the demo words (coffee,
# dog, rain) in contexts the fitting corpus never uses, with a few look-alikes
# (coffeehouse, hotdog, grain, drain) that must not count as the words.
TEST_SENTENCES = (
    "The price of coffee rose sharply after the frost in Brazil.",
    "Spilled coffee ruined the first page of her thesis.",
    "He tried to quit coffee, but the headaches won.",
    "Our coffee machine broke during the quarterly review.",
    "Farmers in the highlands grow coffee on steep terraces.",
    "A coffee stain shaped like a map covered the table.",
    "The smell of roasting coffee drifted down the street.",
    "She wrote a poem about coffee and loneliness.",
    "Cold coffee tastes better than it sounds.",
    "The museum has an exhibit on the history of coffee.",
    "Without coffee, the night shift felt endless.",
    "The old coffeehouse on the corner closed last spring.",
    "Coffee prices are now higher than ever.",
    "Is coffee really bad for your heart?",
    "A stray dog followed the postman for three blocks.",
    "The police dog found the missing hiker near the river.",
    "Her novel is told from the point of view of a dog.",
    "The dog barked at its own reflection in the puddle.",
    "Every dog at the shelter was adopted before winter.",
    "A sheep dog can steer a whole flock with a glance.",
    "He sold a hotdog to every fan leaving the stadium.",
    "The dog buried a shoe in the neighbour's flower bed.",
    "Scientists studied how a dog reads human faces.",
    "The sled dog team crossed the frozen lake at dawn.",
    "Dog owners gathered to protest the new park rules.",
    "The blind man trusted his dog more than his maps.",
    "Why does a dog turn in circles before lying down?",
    "The painting shows a dog asleep beside a fireplace.",
    "Acid rain damaged the statues on the cathedral roof.",
    "The rain flooded the subway tunnels downtown.",
    "Farmers prayed for rain after the long drought.",
    "Heavy rain delayed the final match by two hours.",
    "The forecast promised rain, but the sky stayed clear.",
    "Tropical rain forests hold half of the world's species.",
    "The roof leaked whenever the rain came from the east.",
    "Rain washed the chalk drawings off the pavement.",
    "The grain silo stood empty after the poor harvest.",
    "A song about rain topped the charts that summer.",
    "Freezing rain turned the highway into a sheet of ice.",
    "The kitchen drain clogged again on Tuesday.",
    "The rain stopped just as the wedding began.",
    "Will the rain ever end this month?",
)


def pa_test_text() -> str:
    """The built-in PA test text (``TEST_SENTENCES``) as one string."""
    return " ".join(TEST_SENTENCES)
