"""What the reports and results.json of `lucid uncertainty` say (issue 18, defect 7): the
posterior's settings, intervals with n, the temperature-scaling baseline, seed means."""

import json

import numpy as np
import pytest
from test_cli_contract import _fails, _run
from test_validation import posterior  # noqa: F401  (the fixture)

from lucidml.uncertainty.evaluation import METRICS


def _check_posterior_block(block, n_pairs):
    assert block["damping"] == "split" and block["n_pairs"] == n_pairs
    assert block["fit_n"] == 1.0 and block["predict_n"] == 10.0
    assert set(block["prior_precision"]) == {"image", "text"}
    assert all(v > 0 for v in block["prior_precision"].values())


def test_zeroshot_reports_the_posterior_and_a_held_out_temperature(tmp_path, capsys, posterior):  # noqa: F811
    out = tmp_path / "zs"
    argv = ["uncertainty", "zeroshot", "--hessian", str(posterior), "--images", "digits-noise"]
    code, err = _run([*argv, "--calibration", "digits", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    _check_posterior_block(results["posterior"], 150)
    assert results["temperature"]["n"] == 1347 and results["temperature"]["value"] > 0
    per = results["metrics"]
    assert list(per) == ["map", "temperature", "bayesvlm"]
    for v in per.values():
        assert v["n"] == 450
        for m in METRICS:
            assert v["ci95"][m][0] <= v[m] <= v["ci95"][m][1]
    # a temperature rescales every row alike: the arg-max, so the accuracy, is the MAP's
    assert per["temperature"]["acc"] == per["map"]["acc"]
    assert per["temperature"]["nlpd"] != per["map"]["nlpd"]
    report = (out / "report.md").read_text()
    assert "split damping, factors from 150 image-caption pairs" in report
    assert "predictions with n = 10" in report and "MAP + temperature" in report

    plain = tmp_path / "plain"
    assert _run([*argv, "--out", str(plain), "-q"], capsys)[0] == 0
    assert "temperature" not in json.loads((plain / "results.json").read_text())
    assert "No temperature-scaling baseline" in (plain / "report.md").read_text()


def test_calibration_images_need_labels(tmp_path, capsys, posterior, digits):  # noqa: F811
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    np.save(folder / "images.npy", digits.test_x[:5].numpy())
    argv = ["uncertainty", "zeroshot", "--hessian", str(posterior), "--calibration", str(folder)]
    _fails(argv, capsys, "has no labels.npy; temperature scaling", tmp_path / "o")


def test_active_reports_seed_means_with_intervals(tmp_path, capsys, posterior):  # noqa: F811
    cfg = tmp_path / "active.yaml"
    cfg.write_text("finetune: {epochs: 2, lr: 0.001}\n")
    out = tmp_path / "al"
    argv = ["uncertainty", "active", "--hessian", str(posterior), "--config", str(cfg)]
    argv += ["--pool", "digits-noise", "--targets", "digits-noise", "--strategy", "random"]
    argv += ["--budget", "6", "--budgets", "3,6", "--seeds", "3", "--out", str(out), "-q"]
    code, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    _check_posterior_block(results["posterior"], 150)
    summary = {r["budget"]: r for r in results["summary"]}
    assert sorted(summary) == [0, 3, 6]
    for budget in (3, 6):
        row = summary[budget]
        assert row["seeds"] == 3 and row["val_items"] == 200
        values = [r["map_nlpd"] for r in results["curve"] if r["budget"] == budget]
        assert row["map_nlpd"] == pytest.approx(np.mean(values))
        low, high = row["map_nlpd_ci95"]
        assert low <= row["map_nlpd"] <= high and high - low > 0
    assert "not counted in the budget" in (out / "report.md").read_text()
