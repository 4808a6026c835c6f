import json

import matplotlib.pyplot as plt
import pytest
import torch

from lucidml.core.config import Config, seed_everything
from lucidml.core.report import Report
from lucidml.core.runs import Run, atomic_write_text, make_run_dir, read_json, write_json
from lucidml.errors import ConfigError, InputError


class Job(Config):
    lr: float = 0.1
    epochs: int = 3
    name: str = "job"


def test_yaml_round_trip_and_updates(tmp_path):
    cfg = Job(lr=0.5)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Job.from_yaml(tmp_path / "c.yaml") == cfg
    assert cfg.updated(epochs=9, lr=None) == Job(lr=0.5, epochs=9)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lr: [1, 2", "not valid YAML at line"),
        ("- 1\n- 2\n", "mapping"),
        ("lr: fast\n", "field 'lr'"),
        ("bogus: 1\n", "field 'bogus'"),
    ],
)
def test_bad_yaml_is_one_sentence(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        Job.from_yaml(path)
    with pytest.raises(InputError, match="does not exist"):
        Job.from_yaml(tmp_path / "missing.yaml")


def test_seed_everything_repeats_draws():
    seed_everything(7)
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"x": Boom()})
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_run_folder_results_and_metrics(tmp_path):
    run = Run("demo", tmp_path / "run", config=Job())
    assert (run / "config.yaml").is_file()
    Run("demo", tmp_path / "run", config=Job(), resume=True)  # the same config resumes
    run.log_metrics({"step": 1, "loss": 0.5})
    run.write_results({"acc": float("nan")})
    assert json.loads((run / "results.json").read_text()) == {"acc": None}
    assert (run / "metrics.jsonl").read_text().count("\n") == 1


def test_unwritable_output_folder_is_a_user_error():
    with pytest.raises(InputError, match="cannot write the output folder /proc/nope"):
        make_run_dir("x", "/proc/nope")


def test_report_writes_markdown_and_self_contained_html(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    rep = Report("Demo").heading("Numbers").table([{"a": 1, "b": 0.123456}]).figure(fig, "line")
    html = rep.save(tmp_path)
    text = html.read_text()
    assert "data:image/png;base64," in text and "0.1235" in text
    md = (tmp_path / "report.md").read_text()
    assert "| a | b |" in md and "![line.png](line.png)" in md
    assert (tmp_path / "line.png").read_bytes()[:4] == b"\x89PNG"


def test_resolve_device():
    from lucidml.core.config import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
