import pytest

from lucidml.distill.config import PRESETS_DIR, EvalConfig
from lucidml.errors import ConfigError


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_shipped_presets_load_and_round_trip(name, tmp_path):
    cfg = EvalConfig.preset(name)
    cfg.to_yaml(tmp_path / "copy.yaml")
    assert EvalConfig.from_yaml(tmp_path / "copy.yaml") == cfg
    quick = cfg.quick()
    assert quick.num_eval <= 2 and len(quick.lr_grid) <= 2
    assert quick.recipe.epochs < cfg.recipe.epochs


def test_paper_defaults():
    cfg = EvalConfig()
    assert (cfg.num_eval, cfg.lrs_lambda, cfg.ars_lambda) == (5, 0.5, 0.5)
    assert cfg.lr_grid == [0.001, 0.005, 0.01, 0.05, 0.1]
    assert (cfg.temperature, cfg.scale_loss, cfg.soft_label_mode) == (1.2, False, "M")
    assert cfg.selection == "val"  # the default; `test` reproduces the reference
    dsa = cfg.augment.dsa_strengths()
    assert dsa == {
        "scale": 1.2,
        "rotate": 15.0,
        "flip": 0.5,
        "brightness": 1.0,
        "saturation": 2.0,
        "contrast": 0.5,
        "crop": 0.125,
        "cutout": 0.5,
    }


def test_invalid_recipes_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="soft labels need a soft loss"):
        EvalConfig.from_dict({"labels": "soft", "loss": "ce"})
    with pytest.raises(ConfigError, match="lr_grid"):
        EvalConfig.from_dict({"lr_grid": []})
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_eval: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        EvalConfig.preset(str(bad))


def test_input_norm_parses_and_a_config_value_is_kept(tmp_path):
    from lucidml.distill.config import ScoreConfig

    assert ScoreConfig(images="a.pt", input_norm="0.5,0.25").input_norm == [0.5, 0.25]
    with pytest.raises(ConfigError, match="means then stds"):
        ScoreConfig.from_dict({"images": "a.pt", "input_norm": "0.5"})
    with pytest.raises(ConfigError, match="stds must be positive"):
        ScoreConfig.from_dict({"images": "a.pt", "input_norm": [0.5, 0.0]})
    ScoreConfig(images="a.pt", input_norm=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).to_yaml(
        tmp_path / "j.yaml"
    )
    kept = ScoreConfig.from_cli(tmp_path / "j.yaml", input_norm=None)  # the option not given
    assert kept.input_norm == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
