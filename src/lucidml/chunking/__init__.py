"""Neural population chunking: DSC on RNNs, PA templates, grafting and UCD on causal LMs.

Reference: "Concept-Guided Interpretability via Neural Chunking" (NeurIPS 2025).
"""
