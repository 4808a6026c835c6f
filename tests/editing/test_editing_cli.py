import json

import pytest
import torch
from cli_runner import lucid

from lucidml.editing import api


def test_parse_and_build_in_two_commands(tmp_path, capsys):
    snaps = api.embedded_snapshots()
    assert lucid("editing", "parse", "--dump", str(snaps[0]), "--out", str(tmp_path / "a")) == 0
    assert (tmp_path / "a" / "triples.parquet").is_file()
    code = lucid(
        "editing",
        "build",
        "--old",
        str(tmp_path / "a"),
        "--new",
        str(snaps[1]),
        "--new",
        str(snaps[2]),
        "--out",
        str(tmp_path / "bench"),
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "timestep 0:" in out and "timestep 1:" in out
    manifest = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert len(manifest["timesteps"]) == 2


def test_bad_inputs_exit_2_with_one_sentence(tmp_path, capsys, tiny_lm):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "Q1"}\n{"id": \n')
    cases = [
        (
            (
                "editing",
                "parse",
                "--dump",
                str(tmp_path / "missing.json"),
                "--out",
                str(tmp_path / "o1"),
            ),
            "does not exist",
        ),
        (("editing", "parse", "--dump", str(bad), "--out", str(tmp_path / "o2")), "line 2"),
        (
            (
                "editing",
                "build",
                "--old",
                str(tmp_path),
                "--new",
                str(tmp_path),
                "--out",
                str(tmp_path / "o3"),
            ),
            "not a parsed snapshot",
        ),
        (
            ("editing", "run", "--method", "wise", "--out", str(tmp_path / "o4")),
            "unknown editing method 'wise'",
        ),
        (
            ("editing", "run", "--benchmark", str(tmp_path), "--out", str(tmp_path / "o5")),
            "not a benchmark folder",
        ),
        (("editing", "run", "--hparam", "rank", "--out", str(tmp_path / "o6")), "key=value"),
    ]
    for args, message in cases:
        assert lucid(*args) == 2, args
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # stage messages may come first
        assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not any((tmp_path / f"o{i}").exists() for i in (2, 3, 4, 5, 6))
    assert (
        lucid(
            "editing",
            "parse",
            "--dump",
            str(bad),
            "--skip-bad-lines",
            "--out",
            str(tmp_path / "ok"),
        )
        == 0
    )
    assert "1 malformed lines skipped" in capsys.readouterr().out

    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    assert (
        lucid(
            "editing",
            "run",
            "--method",
            "rome",
            "--hparam",
            "layer=40",
            "--model",
            str(tmp_path / "tiny"),
            "--out",
            str(tmp_path / "o7"),
        )
        == 2
    )
    assert "no layer 40" in capsys.readouterr().err
    assert not (tmp_path / "o7").exists()


def test_run_on_tiny_model_then_resume(tmp_path, capsys, tiny_lm):
    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    args = (
        "editing",
        "run",
        "--method",
        "lora_merge",
        "--model",
        str(tmp_path / "tiny"),
        "--max-edits",
        "3",
        "--hparam",
        "epochs=1",
        "--out",
        str(tmp_path / "run"),
    )
    assert lucid(*args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["timesteps"]) == 2 and len(results["R"][1]) == 2
    for row in results["timesteps"]:  # the contract: strict metrics beside teacher-forced
        for kind in ("rewrite", "rephrase", "personas", "loc_gold", "pre_rewrite"):
            assert {kind, f"{kind}_em", f"{kind}_first_token"} <= set(row)
    assert {"past_em", "past_first_token"} <= set(results["timesteps"][1])
    assert (tmp_path / "run" / "report.html").is_file()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "first token" in report and report.count("Before the first edits") == 1
    assert "retention" in report and "n=6" in report  # the R heatmap; 2 x 3 rewrites
    final = results["final"]
    assert final["rewrite_n"] == 6 and len(final["rewrite_ci"]) == 2
    assert final["rewrite_ci"][0] <= final["rewrite"] <= final["rewrite_ci"][1]
    import pandas as pd

    probes = pd.read_parquet(tmp_path / "run" / "probes.parquet")
    rewrites = probes[(probes["kind"] == "rewrite") & (probes["phase"] == "after")]
    assert len(rewrites) == 6 and rewrites["greedy"].notna().all()
    assert lucid(*args) == 2
    assert "--resume" in capsys.readouterr().err
    assert lucid(*args, "--resume") == 0


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag, capsys):
    assert lucid("editing", flag) == 0
    assert "demo" in capsys.readouterr().out


def _tiny_folder(tiny_lm, path):
    model, tok = tiny_lm
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_config_file_settings_survive_the_command_line_defaults(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(api, "run", lambda cfg, out, **options: seen.append(cfg) or {"final": {}})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "method: rag\nmodel: some/model\ndevice: cpu\nseed: 7\nskip_known: true\n"
        "hparams: {top_k: 3}\nbenchmark: some/bench\nmax_edits: 5\n"
        "eval: {few_shot: false, past_max: 9}\n"
    )
    assert lucid("editing", "run", "--config", str(cfg)) == 0
    got = seen[-1]
    assert (got.method, got.model, got.device, got.seed, got.skip_known) == (
        "rag",
        "some/model",
        "cpu",
        7,
        True,
    )
    assert (got.benchmark, got.max_edits, got.eval.few_shot, got.eval.past_max) == (
        "some/bench",
        5,
        False,
        9,
    )
    assert got.hparams == {"top_k": 3}
    # options given on the command line win, and --hparam adds to the file's hparams
    args = ("--config", str(cfg), "--seed", "3", "--edit-known", "--hparam", "encoder=x")
    assert lucid("editing", "run", *args) == 0
    got = seen[-1]
    assert (got.method, got.seed, got.skip_known, got.max_edits) == ("rag", 3, False, 5)
    assert got.hparams == {"top_k": 3, "encoder": "x"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_unavailable_device_is_one_line_and_writes_nothing(tmp_path, capsys, tiny_lm):
    tiny = str(_tiny_folder(tiny_lm, tmp_path / "tiny"))
    snaps = [str(s) for s in api.embedded_snapshots()]
    commands = [
        ("editing", "run", "--method", "ft", "--model", tiny, "--device", "cuda"),
        ("editing", "build", "--old", snaps[0], "--new", snaps[1], "--device", "cuda"),
        ("editing", "demo", "--quick", "--device", "cuda"),
    ]
    for i, args in enumerate(commands):
        assert lucid(*args, "--out", str(tmp_path / f"o{i}")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: device 'cuda' is not available")
        assert not (tmp_path / f"o{i}").exists()


def test_resume_with_another_config_is_refused_before_writing(tmp_path, capsys, tiny_lm):
    tiny = str(_tiny_folder(tiny_lm, tmp_path / "tiny"))
    run = ("editing", "run", "--model", tiny, "--max-edits", "2", "--seed", "5")
    run += ("--out", str(tmp_path / "run"))
    args = (*run, "--method", "lora_merge", "--hparam", "epochs=1")
    assert lucid(*args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["env"]["device"] == "cpu" and results["env"]["seed"] == 5
    stored = (tmp_path / "run" / "config.yaml").read_bytes()
    capsys.readouterr()
    assert lucid(*run, "--resume", "--method", "rag") == 2  # as a reviewer tried
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method" in err[0] and '"lora_merge"' in err[0]
    assert (tmp_path / "run" / "config.yaml").read_bytes() == stored
    assert lucid(*args, "--resume", "--hparam", "epochs=2") == 2
    assert "hparams.epochs" in capsys.readouterr().err
    assert lucid(*args, "--resume", "--device", "cpu") == 0  # the device may change


def test_build_config_file_seed_and_device_survive(tmp_path, monkeypatch):
    seen = []

    def fake_build(snapshots, out, cfg, resume=False, **options):
        seen.append((cfg, resume))
        return out, {"timesteps": []}

    monkeypatch.setattr(api, "build", fake_build)
    cfg = tmp_path / "build.yaml"
    cfg.write_text("seed: 5\ndevice: cpu\nllm_min_similarity: 0.5\n")
    snaps = [str(s) for s in api.embedded_snapshots()]
    args = ("editing", "build", "--old", snaps[0], "--new", snaps[1], "--config", str(cfg))
    assert lucid(*args, "--resume") == 0
    got, resume = seen[-1]
    assert (got.seed, got.device, got.llm_min_similarity, resume) == (5, "cpu", 0.5, True)
    assert lucid(*args, "--seed", "2") == 0
    assert (seen[-1][0].seed, seen[-1][0].device) == (2, "cpu")


def test_save_model_writes_what_the_method_changed(tmp_path, capsys, tiny_lm):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    tiny = str(_tiny_folder(tiny_lm, tmp_path / "tiny"))
    run = ("editing", "run", "--model", tiny, "--max-edits", "2", "--hparam", "epochs=1")
    assert lucid(*run, "--method", "lora", "--save-model", "--out", str(tmp_path / "l")) == 0
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "l" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny)
    changed = [n for n, p in saved.state_dict().items() if not p.equal(base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA's targets, merged in
    with safe_open(str(tmp_path / "l" / "adapter.safetensors"), "pt") as f:
        assert any("lora_A" in k for k in f.keys()) and f.metadata()["r"]  # noqa: SIM118
    assert lucid(*run, "--method", "lora", "--out", str(tmp_path / "plain")) == 0
    assert not (tmp_path / "plain" / "model").exists()  # only when asked


def test_rag_saves_its_memory_not_the_unchanged_weights(tmp_path, tiny_lm):
    from lucidml.editing import methods
    from lucidml.editing.config import RunConfig

    editor = methods.get("rag", embedder=lambda xs: [[float(len(x)), 1.0] for x in xs])
    model, tok = tiny_lm
    cfg = RunConfig(method="rag", max_edits=2)
    api.run(cfg, tmp_path / "r", model=model, tokenizer=tok, editor=editor, save_model=True)
    memory = json.loads((tmp_path / "r" / "memory.json").read_text())
    assert len(memory) == 4 and all(len(pair) == 2 for pair in memory)  # 2 timesteps x 2
    assert not (tmp_path / "r" / "model").exists()


def test_report_shows_strict_metrics_and_the_unedited_model_once():
    from lucidml.editing import api

    row = {"timestep": 0, "rewrite": 0.5, "rewrite_first_token": 0.25, "rewrite_em": 0.0}
    row |= {"pre_rewrite": 0.2, "pre_rewrite_first_token": 0.0, "pre_rewrite_em": 0.0}
    result = {"timesteps": [row], "final": row, "bwt": float("nan")}
    report = api._report("t", {"lora": result, "rag": result}).to_markdown()
    assert report.count("| lora | 0.50 / 0.25 / 0.00 |") == 1
    assert report.count("| unedited | 0.20 / 0.00 / 0.00 |") == 1  # not once per method
    assert "| lora | 0.20" not in report


def test_bad_benchmarks_and_outputs_fail_before_the_model_loads(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "benchmark.json").write_text("{not json")
    run = ("editing", "run", "--method", "rag", "--benchmark", str(bench))
    assert lucid(*run, "--out", str(tmp_path / "o")) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    (bench / "benchmark.json").write_text(json.dumps({"timesteps": [{}]}))
    (bench / "timestep_000.jsonl").write_text(json.dumps({"update": "Q?"}) + "\n")
    assert lucid(*run, "--out", str(tmp_path / "o")) == 2
    assert "timestep_000.jsonl, record 1: no ans" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "afile").write_text("")
    assert lucid("editing", "run", "--method", "rag", "--out", str(tmp_path / "afile")) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "loading" not in err


# two timesteps in the layout of the released WikiBigEdit files, written by hand
RELEASED = [
    [
        {
            "tag": "update",
            "subject": "Freedonia",
            "update": "Who is the head of government of Freedonia?",
            "rephrase": "Who leads the government of Freedonia?",
            "personas": {"pirate": "Arr, who be runnin' Freedonia's government?"},
            "ans": "Rufus T. Firefly",
            "loc": "What is the capital of Sylvania?",
            "loc_ans": "Trentino",
            "mhop": "Who is the spouse of the head of government of Freedonia?",
            "mhop_ans": "Mrs. Teasdale",
        },
        {
            "tag": "new",
            "subject": "Sylvania",
            "update": "Who is the ambassador of Sylvania?",
            "rephrase": "Who serves as Sylvania's ambassador?",
            "personas": ["Pray tell, who is Sylvania's ambassador?"],
            "ans": "Chicolini",
            "loc": "",
            "loc_ans": "",
            "mhop": None,
            "mhop_ans": None,
        },
    ],
    [
        {
            "tag": "update",
            "subject": "Freedonia",
            "update": "Who is the head of government of Freedonia?",
            "rephrase": "Who leads the government of Freedonia?",
            "personas": "Who runs Freedonia these days?",
            "ans": "Pinky",
            "loc": "What is the capital of Sylvania?",
            "loc_ans": "Trentino",
        }
    ],
]


def test_import_reads_the_released_wikibigedit_layout(tmp_path, capsys):
    from lucidml.editing.build import load_benchmark

    files = []
    for t, records in enumerate(RELEASED):
        files += ["--wikibigedit", str(tmp_path / f"t{t}.json")]
        (tmp_path / f"t{t}.json").write_text(json.dumps(records))
    assert lucid("editing", "import", *files, "--out", str(tmp_path / "bench")) == 0
    assert "timestep 1: 1 records" in capsys.readouterr().out
    steps = load_benchmark(tmp_path / "bench")
    first, second = steps[0]
    assert (first["update"], first["ans"], first["mhop_ans"]) == (
        RELEASED[0][0]["update"],
        "Rufus T. Firefly",
        "Mrs. Teasdale",
    )
    assert first["personas"] == {"pirate": "Arr, who be runnin' Freedonia's government?"}
    assert second["personas"] == {"persona_0": "Pray tell, who is Sylvania's ambassador?"}
    assert second["loc"] is None and second["mhop"] is None  # empty fields are no probe
    assert steps[1][0]["personas"] == {"persona_0": "Who runs Freedonia these days?"}
    assert [r["timestep"] for s in steps for r in s] == [0, 0, 1]

    # a record without its answer: one sentence, exit 2, nothing written
    broken = [dict(RELEASED[0][0])]
    del broken[0]["ans"]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    args = ("editing", "import", "--wikibigedit", str(tmp_path / "bad.json"))
    assert lucid(*args, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json, record 1 has no 'ans' text" in err[0]
    (tmp_path / "bad.json").write_text("{")
    assert lucid(*args, "--out", str(tmp_path / "o")) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_of_a_folder_with_only_the_old_pickled_state_is_refused(
    tmp_path, capsys, tiny_lm, monkeypatch
):
    """Versions before the JSON/safetensors checkpoints left checkpoints/state.pt (a
    pickle): --resume must say so, never unpickle it, and never silently start over."""
    tiny = str(_tiny_folder(tiny_lm, tmp_path / "tiny"))
    run = tmp_path / "run"
    args = ("editing", "run", "--method", "rag", "--model", tiny, "--max-edits", "1")
    args += ("--out", str(run))
    assert lucid(*args) == 0
    # the folder as the older version left it: its other files, a pickled state, and a
    # config.yaml that this version's config no longer equals
    for new in (run / "checkpoints").iterdir():
        new.unlink()
    (run / "checkpoints" / "state.pt").write_bytes(b"\x80\x04not a real pickle.")
    (run / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("method: rag", "method: rag\nold_field: 1")
    )
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}

    def no_unpickling(*a, **k):
        raise AssertionError("the old state.pt was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    capsys.readouterr()
    assert lucid(*args, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "written by an older version of lucidml" in err[0]
    assert "checkpoints/state.pt" in err[0] and "rerun without --resume" in err[0]
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten, nothing added
    # once the run has this version's checkpoint beside it, the pickle is ignored
    assert lucid(*args, "--overwrite") == 0
    (run / "checkpoints" / "state.pt").write_bytes(b"\x80\x04not a real pickle.")
    assert lucid(*args, "--resume") == 0
