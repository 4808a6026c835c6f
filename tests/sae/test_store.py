import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lucidml.errors import InputError, ShapeError
from lucidml.sae.store import ActivationStore, StoreWriter, merge

D = 6


def write_store(folder, x, dtype=torch.float32, shard_rows=4, pieces=(3, 5, 2)):
    """x written in uneven pieces (so shards and adds do not line up), image i for row i // 2."""
    image_index = torch.arange(len(x)) // 2
    token = torch.arange(len(x)) % 2
    with StoreWriter(folder, D, dtype=dtype, shard_rows=shard_rows, meta={"layer": "block.0"}) as w:
        w.image_ids = [f"img{i}" for i in range((len(x) + 1) // 2)]
        start = 0
        for size in pieces:
            w.add(
                x[start : start + size],
                image_index[start : start + size],
                token[start : start + size],
            )
            start += size
    return w.close()


@pytest.fixture
def x():
    return torch.randn(10, D)


def test_round_trip_over_uneven_shards(tmp_path, x):
    store = write_store(tmp_path / "store", x)
    shards = sorted(p.name for p in (tmp_path / "store").glob("shard-*"))
    assert shards == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    reopened = ActivationStore.open(tmp_path / "store")
    assert isinstance(reopened._shards[0].activations, np.memmap)
    assert len(reopened) == 10 and reopened.d == D and reopened.dtype == torch.float32
    assert torch.equal(reopened.to_tensor(), x)
    np.testing.assert_array_equal(reopened.image_index, np.arange(10) // 2)
    np.testing.assert_array_equal(reopened.token, np.arange(10) % 2)
    assert reopened.image_ids == [f"img{i}" for i in range(5)]
    assert reopened.meta == {"layer": "block.0"} and reopened.folder == tmp_path / "store"
    assert reopened.fingerprint() == store.fingerprint()

    indices = np.random.default_rng(0).permutation(10)[:7]
    assert torch.equal(reopened.rows(indices), x[indices])
    assert torch.equal(reopened.rows(np.array([9, 0, 9, 4])), x[[9, 0, 9, 4]])
    chunks = list(reopened.iter_chunks(chunk_rows=3))
    assert [start for start, _ in chunks] == [0, 3, 6, 9]
    assert torch.equal(torch.cat([c for _, c in chunks]), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_reads_back_as_float32(tmp_path, x, dtype):
    store = ActivationStore.open(write_store(tmp_path / "store", x, dtype=dtype).folder)
    assert store.dtype == dtype
    expected = x.to(dtype).float()
    assert torch.equal(store.to_tensor(), expected)
    assert torch.equal(store.rows(np.array([7, 1, 5])), expected[[7, 1, 5]])


def test_from_tensor_answers_like_a_folder_store(tmp_path, x):
    on_disk = write_store(tmp_path / "store", x)
    in_memory = ActivationStore.from_tensor(
        x, on_disk.image_ids, on_disk.image_index, on_disk.token, meta={"layer": "block.0"}
    )
    assert in_memory.folder is None and len(in_memory) == 10 and in_memory.d == D
    assert in_memory.image_ids == on_disk.image_ids and in_memory.meta == on_disk.meta
    np.testing.assert_array_equal(in_memory.image_index, on_disk.image_index)
    np.testing.assert_array_equal(in_memory.token, on_disk.token)
    indices = np.array([8, 2, 3])
    assert torch.equal(in_memory.rows(indices), on_disk.rows(indices))
    assert torch.equal(torch.cat([c for _, c in in_memory.iter_chunks(4)]), x)
    assert in_memory.fingerprint() != ActivationStore.from_tensor(x + 1).fingerprint()

    plain = ActivationStore.from_tensor(x)
    assert plain.image_ids == [str(i) for i in range(10)] and (plain.token == -1).all()
    with pytest.raises(ShapeError, match="2-D"):
        ActivationStore.from_tensor(torch.zeros(2, 3, 4))
    with pytest.raises(InputError, match="NaN"):
        ActivationStore.from_tensor(torch.tensor([[1.0, float("nan")]]))


def test_a_corrupt_shard_or_index_is_named(tmp_path, x):
    folder = write_store(tmp_path / "store", x).folder
    save_file(
        {
            "activations": torch.zeros(3, D),
            "image_index": torch.zeros(3, dtype=torch.long),
            "token": torch.zeros(3, dtype=torch.long),
        },
        str(folder / "shard-00001.safetensors"),
    )
    with pytest.raises(ShapeError, match=r"shard-00001\.safetensors.*\(3, 6\).*\(4, 6\)"):
        ActivationStore.open(folder)
    (folder / "shard-00001.safetensors").unlink()
    with pytest.raises(InputError, match=r"shard-00001\.safetensors .*missing"):
        ActivationStore.open(folder)
    (folder / "index.json").write_text('{"format": ')
    with pytest.raises(InputError, match=r"index\.json"):
        ActivationStore.open(folder)
    with pytest.raises(InputError, match="does not exist"):
        ActivationStore.open(tmp_path / "nowhere")


def test_index_disagreeing_on_dtype_is_refused(tmp_path, x):
    folder = write_store(tmp_path / "store", x).folder
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, "dtype": "float16"}))
    with pytest.raises(InputError, match="shard-00000.*F32.*float16"):
        ActivationStore.open(folder)


def test_a_failed_writer_leaves_nothing(tmp_path, x):
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "store", D, shard_rows=2) as w:
        w.image_ids = ["a"]
        w.add(x[:5], torch.zeros(5), torch.zeros(5))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(InputError, match="no activation rows"), StoreWriter(tmp_path / "s", D):
        pass
    with pytest.raises(InputError, match="NaN"), StoreWriter(tmp_path / "s", D) as w:
        w.add(torch.full((1, D), float("inf")), [0], [0])
    with pytest.raises(ShapeError, match=r"\(n, 6\)"), StoreWriter(tmp_path / "s", D) as w:
        w.add(torch.zeros(1, D + 1), [0], [0])
    half = StoreWriter(tmp_path / "s", D, dtype=torch.float16)
    with pytest.raises(InputError, match="range of float16"), half:
        half.add(torch.full((1, D), 1e6), [0], [0])
    with pytest.raises(InputError, match="image ids"), StoreWriter(tmp_path / "s", D) as w:
        w.add(torch.zeros(2, D), [0, 1], [0, 0])
        w.image_ids = ["only-one"]
    assert list(tmp_path.iterdir()) == []


def test_merge_joins_parts_in_order(tmp_path, x):
    parts = []
    for rank, rows in enumerate((slice(0, 6), slice(6, 10))):
        with StoreWriter(tmp_path / "out" / f"rank-{rank}", D, shard_rows=4) as w:
            w.image_ids = ["a", "b"]
            w.add(x[rows], torch.full((len(x[rows]),), rank), torch.zeros(len(x[rows])))
        parts.append(w.folder)
    merged = merge(parts, tmp_path / "out")
    assert torch.equal(merged.to_tensor(), x)
    np.testing.assert_array_equal(merged.image_index, [0] * 6 + [1] * 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "index.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
