"""Continual full fine-tuning on the answer tokens of each timestep's edits."""

from __future__ import annotations

from lucidml.editing.methods.base import Editor, TrainConfig, train_on_answers


class FTConfig(TrainConfig):
    lr: float | None = 1e-4  # not in the spec's table; full FT needs far less than LoRA's rate


class FullFineTune(Editor):
    name = "ft"
    Config = FTConfig

    def apply(self, model, tokenizer, records):
        params = [p for p in model.parameters() if p.requires_grad]
        self.losses = train_on_answers(model, tokenizer, records, params, self.config)
        return model
