"""The audit end to end on the simulated model, in memory: the planted answer comes back."""

import numpy as np
import pandas as pd
import torch

from lucidml.bias import analyze, filter_records
from lucidml.bias.api import THEME_RATIOS, planted_ratios
from lucidml.bias.detect import detect_and_label
from lucidml.bias.prompts import default_prompts
from lucidml.bias.simulate import ComponentsDetector, ShapeLabeller, SimulatedT2I


def test_planted_ratios_and_the_stereotype_order_are_recovered():
    torch.set_num_threads(1)
    prompts = default_prompts()
    base = prompts[prompts["variation"] == 0]
    picked = base.groupby("theme").head(1)  # one prompt per theme, 7 themes
    planted = planted_ratios(picked, "simulated")
    model = SimulatedT2I(
        {t: planted[p] for p, t in zip(picked["prompt_id"], picked["text"], strict=True)}
    )
    rows, images = [], []
    for prompt_id, text in zip(picked["prompt_id"], picked["text"], strict=True):
        seeds = list(range(200))
        for seed, image in zip(seeds, model.generate([text] * 200, seeds), strict=True):
            rows.append({"image_id": f"{prompt_id}/{seed}", "model": "sim", "prompt_id": prompt_id})
            images.append(image)
    records = pd.DataFrame(
        detect_and_label(zip(rows, images, strict=True), ComponentsDetector(), ShapeLabeller())
    )
    stats = analyze.prompt_stats(filter_records(records)).set_index("prompt_id")
    error = (stats["female_ratio"] - planted.reindex(stats.index)).abs()
    assert error.mean() < 0.05, error  # the bar at 200 images per prompt
    themes = picked.set_index("prompt_id")["theme"]
    recovered = stats["female_ratio"].groupby(themes).mean()
    female_side = [t for t, r in THEME_RATIOS.items() if r > 0.6]
    male_side = [t for t, r in THEME_RATIOS.items() if r < 0.4]
    assert recovered[female_side].min() > 0.5 > recovered[male_side].max()
    assert np.corrcoef(recovered, [THEME_RATIOS[t] for t in recovered.index])[0, 1] > 0.9
