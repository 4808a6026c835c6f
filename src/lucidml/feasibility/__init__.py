"""FLM: language-model feasibility of state-object pairs for open-world CZSL."""

from lucidml.feasibility.api import baseline_scores, combine, ranking, score_pairs
from lucidml.feasibility.scores import FeasibilityScores

__all__ = ["FeasibilityScores", "baseline_scores", "combine", "ranking", "score_pairs"]
