"""LoFT: LoRA-fused training-data generation with few-shot guidance."""
