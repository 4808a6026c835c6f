"""Checkpoint reading, streaming merges and the merge config (ours and mergekit's)."""

import hashlib
import json
import textwrap
import weakref

import pytest
import torch

from lucidml.errors import InputError, ShapeError
from lucidml.merging import io
from lucidml.merging.config import MergeConfig, load_merge_config
from lucidml.merging.io import CheckpointReader, check_compatible, merge_checkpoints
from lucidml.merging.techniques import merge

SHAPES = {
    "embed.weight": (11, 6),
    "layers.0.attn.weight": (6, 6),
    "layers.0.norm.weight": (6,),
    "layers.1.mlp.weight": (12, 6),
    "layers.1.mlp.bias": (12,),
    "head.scale": (),
}
N_EXPERTS = 3

# Every method with parameters that exercise it; TIES global needs the first pass.
CASES = {
    "linear": ({"weights": [0.5, 0.3, 0.2]}, N_EXPERTS),
    "slerp": ({"t": 0.3}, 2),
    "task_arithmetic": ({"lam": 0.7}, N_EXPERTS),
    "ties": ({"density": 0.5, "scope": "global"}, N_EXPERTS),
    "ties_per_tensor": ({"density": 0.4, "scope": "tensor"}, N_EXPERTS),
    "dare_linear": ({"density": 0.7, "seed": 3}, N_EXPERTS),
    "dare_ties": ({"density": 0.6, "seed": 5}, N_EXPERTS),
    "breadcrumbs": ({"density": 0.8, "gamma": 0.05}, N_EXPERTS),
    "magmax": ({}, N_EXPERTS),
    "model_stock": ({}, N_EXPERTS),
    "random": ({"seed": 7}, N_EXPERTS),
}


def random_state(seed: int, base: dict | None = None) -> dict[str, torch.Tensor]:
    """A small fp32 state dict; with ``base``, the base plus a seeded task vector."""
    gen = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=gen) for key, shape in SHAPES.items()}
    if base is not None:
        state = {key: base[key] + 0.1 * state[key] for key in SHAPES}
    return state


@pytest.fixture(scope="module")
def states():
    base = random_state(0)
    return base, [random_state(i, base) for i in range(1, N_EXPERTS + 1)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, states):
    root = tmp_path_factory.mktemp("models")
    base, experts = states
    paths = [io.save_state_dict(base, root / "base")]
    paths += [io.save_state_dict(s, root / f"expert{i}") for i, s in enumerate(experts, 1)]
    return paths[0], paths[1:]


def sha256s(paths) -> dict:
    files = [f for p in paths for f in sorted(p.rglob("*")) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def read_all(path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(path)
    return {key: reader.get(key) for key in reader}


# --- reading and writing ---------------------------------------------------------------------


def test_reader_lists_names_shapes_and_dtypes_then_reads_one_tensor(tmp_path, states):
    state = {**states[0], "half": torch.ones(3, dtype=torch.bfloat16)}
    folder = io.save_state_dict(state, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    reader = CheckpointReader(folder)
    assert sorted(reader.keys()) == sorted(state)
    assert reader.shape("layers.1.mlp.weight") == (12, 6) and reader.shape("head.scale") == ()
    assert reader.dtype("half") == torch.bfloat16 and reader.dtype("embed.weight") == torch.float32
    assert torch.equal(reader.get("layers.0.attn.weight"), state["layers.0.attn.weight"])
    single = CheckpointReader(folder / "model.safetensors")  # a file reads like its folder
    assert single.keys() == reader.keys() and single.folder is None


def test_sharded_input_reads_like_the_single_file(tmp_path, states):
    base = states[0]
    sharded = io.save_state_dict(base, tmp_path / "sharded", shard_size=200)
    index = json.loads((sharded / io.INDEX_NAME).read_text())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in base.values())
    single = read_all(io.save_state_dict(base, tmp_path / "single"))
    assert single.keys() == read_all(sharded).keys() == base.keys()
    assert all(torch.equal(read_all(sharded)[key], single[key]) for key in base)


def test_an_oversized_tensor_gets_a_shard_of_its_own():
    specs = [
        io.TensorSpec(k, torch.float32, s) for k, s in [("a", (2,)), ("b", (100,)), ("c", (1,))]
    ]
    assert [[s.key for s in shard] for shard in io.shard_plan(specs, 16)] == [["a"], ["b"], ["c"]]
    assert io.parse_size("2GB") == 2 * 10**9 and io.parse_size("1GiB") == 2**30
    with pytest.raises(InputError, match="shard_size must be a size"):
        io.parse_size("lots")


def test_unreadable_models_get_one_sentence(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        CheckpointReader(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.ones(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*only safetensors, never pickle"):
        CheckpointReader(pickled)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no model.safetensors"):
        CheckpointReader(tmp_path / "empty")


def test_mismatched_models_name_the_first_bad_key(tmp_path, states):
    base = states[0]
    good = CheckpointReader(io.save_state_dict(base, tmp_path / "good"))
    fewer = {k: v for k, v in base.items() if k != "layers.0.norm.weight"}
    short = CheckpointReader(io.save_state_dict(fewer, tmp_path / "short"))
    with pytest.raises(InputError, match="short has no tensor 'layers.0.norm.weight'"):
        check_compatible({"good": good, "short": short})
    wide = CheckpointReader(
        io.save_state_dict({**base, "embed.weight": torch.ones(11, 7)}, tmp_path / "w")
    )
    with pytest.raises(
        ShapeError, match=r"'embed.weight' has shape \[11, 6\] in good but \[11, 7\]"
    ):
        check_compatible({"good": good, "wide": wide})


# --- streaming merges ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_streaming_merge_equals_the_in_memory_merge_bit_for_bit(case, tmp_path, states, folders):
    options, n = CASES[case]
    method = "ties" if case == "ties_per_tensor" else case
    params = {k: v for k, v in options.items() if k != "weights"}
    base, experts = states
    base_path, expert_paths = folders
    before = sha256s([base_path, *expert_paths])
    out = merge_checkpoints(
        method,
        base_path,
        expert_paths[:n],
        out=tmp_path / "out",
        weights=options.get("weights"),
        **params,
    )
    expected = merge(method, base, experts[:n], options.get("weights"), **params)
    got = read_all(out)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], expected[key]), key
    assert sha256s([base_path, *expert_paths]) == before
    record = json.loads((out / io.MERGE_RECORD).read_text())
    assert record["method"] == method and len(record["inputs"]["experts"]) == n
    assert record["inputs"]["base"]["files"]["model.safetensors"] == (
        (base_path / "model.safetensors").stat().st_size
    )


def test_sharded_output_round_trips_with_a_correct_index(tmp_path, states, folders):
    base_path, expert_paths = folders
    out = merge_checkpoints(
        "task_arithmetic", base_path, expert_paths, out=tmp_path / "out", shard_size=300, lam=0.5
    )
    index = json.loads((out / io.INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    assert len(set(index["weight_map"].values())) > 1
    expected = merge("task_arithmetic", states[0], states[1], None, lam=0.5)
    got = read_all(out)
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_a_merge_holds_at_most_n_plus_2_tensors(tmp_path, folders, monkeypatch):
    """Every tensor read and every tensor written is tracked; whenever one is read, at
    most the base, the N experts and one output are alive (a load-everything merge holds
    all of them, as the spy shows first)."""
    base_path, expert_paths = folders
    alive: list = []
    peak = [0]
    read, write = CheckpointReader.get, io.ShardedWriter.write

    def track(tensor):
        alive[:] = [ref for ref in alive if ref() is not None]
        alive.append(weakref.ref(tensor))
        peak[0] = max(peak[0], len(alive))
        return tensor

    monkeypatch.setattr(CheckpointReader, "get", lambda self, key: track(read(self, key)))
    monkeypatch.setattr(io.ShardedWriter, "write", lambda self, k, t: write(self, k, track(t)))
    everything = [read_all(p) for p in [base_path, *expert_paths]]
    assert peak[0] == len(everything) * len(SHAPES)
    del everything
    alive.clear()
    peak[0] = 0
    merge_checkpoints(
        "ties", base_path, expert_paths, out=tmp_path / "out", density=0.5, scope="global"
    )
    assert N_EXPERTS < peak[0] <= N_EXPERTS + 2


def test_a_failed_merge_leaves_nothing_behind(tmp_path, folders, monkeypatch):
    base_path, expert_paths = folders
    read, calls = CheckpointReader.get, []

    def failing(self, key):
        calls.append(key)
        if len(calls) > 6:
            raise RuntimeError("disk gone")
        return read(self, key)

    monkeypatch.setattr(CheckpointReader, "get", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        merge_checkpoints("task_arithmetic", base_path, expert_paths, out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_replaced_only_when_asked(tmp_path, folders):
    base_path, expert_paths = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists and is not empty"):
        merge_checkpoints("task_arithmetic", base_path, expert_paths, out=out)
    merge_checkpoints("task_arithmetic", base_path, expert_paths, out=out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InputError, match="would replace the input"):
        merge_checkpoints("linear", None, [out, base_path], out=out, overwrite=True)


# --- a transformers model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    from lucidml.testing import tiny_llama

    root = tmp_path_factory.mktemp("llamas")
    paths = []
    for seed in (0, 1):
        model, tok = tiny_llama(seed=seed)
        model.save_pretrained(root / f"llama{seed}")
        tok.save_pretrained(root / f"llama{seed}")
        paths.append(root / f"llama{seed}")
    return paths


def test_a_merged_llama_loads_with_transformers(tmp_path, llamas):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_checkpoints("linear", None, llamas, out=tmp_path / "out", weights=[0.5, 0.5])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out)("the cat").input_ids[0] == 2  # <bos>
    expected = merge("linear", None, [read_all(p) for p in llamas], [0.5, 0.5])
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    copied = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= copied
    assert "merge.json" in copied and "README.md" not in copied


def test_a_llama_merged_with_itself_is_unchanged_and_dtype_is_honoured(tmp_path, llamas):
    from transformers import AutoModelForCausalLM

    same = merge_checkpoints("linear", None, [llamas[0]] * 2, out=tmp_path / "same")
    original = read_all(llamas[0])
    assert all(torch.equal(t, original[key]) for key, t in read_all(same).items())
    half = merge_checkpoints("linear", None, llamas, out=tmp_path / "half", dtype="bfloat16")
    assert {t.dtype for t in read_all(half).values()} == {torch.bfloat16}
    config = json.loads((half / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(half).dtype == torch.bfloat16


def test_tied_weights_keep_exactly_the_base_files_keys(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=20,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(tmp_path / f"tied{seed}")
        paths.append(tmp_path / f"tied{seed}")
    stored = CheckpointReader(paths[0]).keys()
    assert "lm_head.weight" not in stored  # transformers leaves the tied copy out
    out = merge_checkpoints("linear", None, paths, out=tmp_path / "out")
    assert CheckpointReader(out).keys() == stored
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# --- the merge config --------------------------------------------------------------------------


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_our_yaml_and_mergekit_ties_yaml_give_one_config(tmp_path):
    ours = write(
        tmp_path,
        "ours.yaml",
        """
        method: ties
        base: models/base
        models:
          - {model: models/a, weight: 0.5}
          - {model: models/b, weight: 0.5}
        parameters: {density: 0.5, scope: tensor, merge: weighted_mean, lam: 0.9}
        dtype: bfloat16
        """,
    )
    mergekit = write(
        tmp_path,
        "mergekit.yaml",
        """
        models:
          - model: models/base
            # no parameters necessary for base model
          - model: models/a
            parameters:
              density: 0.5
              weight: 0.5
          - model: models/b
            parameters:
              density: 0.5
              weight: 0.5
        merge_method: ties
        base_model: models/base
        parameters:
          normalize: true
          int8_mask: true
          lambda: 0.9
        dtype: bfloat16
        """,
    )
    config = load_merge_config(ours)
    assert load_merge_config(mergekit) == config
    assert config.experts == ["models/a", "models/b"] and config.weights == [0.5, 0.5]
    assert config.shard_size == io.DEFAULT_SHARD_SIZE


def test_mergekit_dare_ties_gets_mergekit_defaults_written_out(tmp_path):
    mergekit = write(
        tmp_path,
        "dare.yaml",
        """
        models:
          - model: models/a
            parameters: {weight: 0.5, density: 0.53}
          - model: models/b
            parameters: {weight: 0.3, density: 0.53}
        merge_method: dare_ties
        base_model: models/base
        parameters:
          int8_mask: true
        dtype: float16
        """,
    )
    ours = write(
        tmp_path,
        "ours.yaml",
        """
        method: dare_ties
        base: models/base
        models: [{model: models/a, weight: 0.5}, {model: models/b, weight: 0.3}]
        parameters: {density: 0.53, merge: sum}
        dtype: float16
        """,
    )
    assert load_merge_config(mergekit) == load_merge_config(ours)


def test_mergekit_normalize_becomes_our_weights_or_merge_mode(tmp_path):
    arithmetic = write(
        tmp_path,
        "ta.yaml",
        """
        merge_method: task_arithmetic
        base_model: b
        models: [{model: x, parameters: {weight: 3}}, {model: y, parameters: {weight: 1}}]
        parameters: {normalize: true, lambda: 0.5}
        """,
    )
    config = load_merge_config(arithmetic)
    assert config.weights == [0.75, 0.25] and config.parameters == {"lam": 0.5}
    unequal = write(
        tmp_path,
        "ties.yaml",
        """
        merge_method: ties
        base_model: b
        models: [{model: x, parameters: {weight: 0.6}}, {model: y, parameters: {weight: 0.4}}]
        """,
    )
    # mergekit divides by the weights of the agreeing models: our weighted_mean
    config = load_merge_config(unequal)
    assert config.weights == [0.6, 0.4] and config.parameters["merge"] == "weighted_mean"
    crumbs = write(
        tmp_path,
        "crumbs.yaml",
        "merge_method: breadcrumbs_ties\nbase_model: b\nmodels: [x, y]\n",
    )
    # mergekit: density 1 keeps everything, so no outlier is pruned either
    expected = {"density": 1.0, "gamma": 0.0, "merge": "sum"}
    assert load_merge_config(crumbs).parameters == expected


def test_a_list_of_paths_and_file_settings_survive_the_command_line(tmp_path):
    path = write(
        tmp_path,
        "paths.yaml",
        """
        method: linear
        models: [models/a, models/b]
        dtype: float16
        shard_size: 500MB
        """,
    )
    config = MergeConfig.from_cli(path, dtype=None, out="merged")
    assert config.experts == ["models/a", "models/b"] and config.weights is None
    assert config.dtype == "float16" and config.shard_size == 5 * 10**8 and config.out == "merged"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "merge_method: slerp\nslices: []\ntokenizer_source: union\nbase_model: a\n",
            "mergekit keys lucidml does not support: slices, tokenizer_source",
        ),
        (
            "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n"
            "parameters: {t: [0, 0.5, 1]}\n",
            r"'t' as a per-layer gradient or tensor filter \(\[0, 0.5, 1\]\)",
        ),
        (
            "merge_method: ties\nbase_model: a\nmodels:\n"
            "  - {model: b, parameters: {weight: 1, density: 0.5}}\n"
            "  - {model: c, parameters: {weight: 1, density: 0.7}}\n",
            r"per-model density is not supported \(the models give b: 0.5, c: 0.7\)",
        ),
        ("merge_method: della\nmodels: [a]\n", "merge_method 'della' is not supported"),
        ("merge_method: breadcrumbs\nmodels: [a]\n", "merge_method 'breadcrumbs' is not"),
        (
            "merge_method: dare_linear\nbase_model: a\nmodels: [b]\nparameters: {rescale: false}\n",
            "settings lucidml does not support: rescale: False",
        ),
        ("method: ties\nmodels: [a]\nfilter: mlp\n", "filter"),
        ("method: ties\nmodels: [a, b]\n", "needs a base model"),
    ],
)
def test_what_we_do_not_support_is_named(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_merge_config(write(tmp_path, "bad.yaml", text))


def test_malformed_yaml_gives_the_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "method: ties\nmodels:\n  - a\n  b: [\n")
    with pytest.raises(InputError, match=r"broken.yaml is not valid YAML at line \d"):
        load_merge_config(path)


def test_a_config_runs_as_a_merge(tmp_path, states, folders):
    base_path, expert_paths = folders
    lines = [f"base_model: {base_path}", "merge_method: ties", "models:"]
    lines += [
        f"  - {{model: {p}, parameters: {{weight: 1.0, density: 0.5}}}}" for p in expert_paths
    ]
    config = load_merge_config(write(tmp_path, "run.yaml", "\n".join(lines) + "\n"))
    out = merge_checkpoints(
        config.method,
        config.base,
        config.experts,
        out=tmp_path / "out",
        weights=config.weights,
        dtype=config.dtype,
        **config.parameters,
    )
    expected = merge("ties", states[0], states[1], config.weights, **config.parameters)
    assert all(torch.equal(t, expected[key]) for key, t in read_all(out).items())
