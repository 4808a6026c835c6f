"""The fixture vocabulary of the feasibility tests (a module of its own: under pytest's
rootdir-less imports, ``from conftest import`` can reach another folder's conftest)."""

STATES = ["sliced", "wet", "ripe", "broken"]
OBJECTS = ["apple", "window", "river", "egg"]
SEEN = [
    ("sliced", "apple"),
    ("wet", "window"),
    ("ripe", "apple"),
    ("wet", "river"),
    ("broken", "egg"),
    ("broken", "window"),
]
