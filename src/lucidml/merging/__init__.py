"""TIME: temporal model merging, and a merge library for any torch / Hugging Face checkpoints.

``techniques`` holds the merge operators (``merge(method, base, experts, weights, **params)``),
``io`` merges safetensors checkpoints tensor by tensor, ``config`` reads merge YAML (ours
and mergekit's layout), ``timeline`` runs init x deploy x technique over a task stream and
``tasks`` builds the embedded digits stream and trainer.
"""

from lucidml.merging.techniques import METHODS, available, merge

__all__ = ["METHODS", "available", "merge"]
