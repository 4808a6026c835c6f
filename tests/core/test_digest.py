"""Content digests and derived seeds (``core.runs.digest``, ``derive_seed``, ``folder_digest``):
the one scheme every system's cache keys and item names are made of."""

import numpy as np
import pytest
import torch

from lucidml.core.runs import derive_seed, digest, folder_digest


def test_order_and_separation_matter():
    assert digest("a", "b") != digest("b", "a")
    assert digest("ab", "c") != digest("a", "bc")
    assert digest(b"ab", b"c") != digest(b"a", b"bc")
    assert digest(b"a\0", b"") != digest(b"a", b"\0")  # no separator byte to confuse
    assert digest(["a", "b"]) != digest("a", "b")


def test_kinds_do_not_collide():
    assert len({digest(1), digest("1"), digest(1.0), digest(True), digest([1])}) == 5
    assert digest(b"1") != digest("1")
    t = torch.tensor([1, 2], dtype=torch.int64)
    assert digest(t) != digest(t.numpy()) != digest(t.numpy().tobytes())


def test_json_values_ignore_key_order():
    assert digest({"a": 1, "b": [2, 3]}) == digest({"b": [2, 3], "a": 1})


def test_tensors_by_dtype_shape_and_values():
    t = torch.arange(6, dtype=torch.float32)
    assert digest(t) == digest(t.clone())
    assert digest(t) != digest(t.double())
    assert digest(t) != digest(t.reshape(2, 3))
    changed = t.clone()
    changed[3] += 1
    assert digest(t) != digest(changed)
    # a strided view is hashed by its values, like the copy it equals
    m = torch.arange(6).reshape(2, 3)
    assert digest(m.T) == digest(m.T.contiguous())
    # dtypes numpy cannot view, and parameters that require grad
    b = torch.ones(3, dtype=torch.bfloat16)
    assert digest(b) != digest(b.float()) != digest(b.half())
    assert digest(torch.nn.Parameter(t.clone())) == digest(t)


def test_numpy_arrays_by_dtype_shape_and_values():
    a = np.arange(6, dtype=np.float32)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.astype(np.float64))
    assert digest(a) != digest(a.reshape(2, 3))
    assert digest(a[::2]) == digest(np.ascontiguousarray(a[::2]))
    # object arrays hold pointers: they are hashed by their values
    assert digest(np.array(["a", 1], dtype=object)) == digest(np.array(["a", 1], dtype=object))


def test_none_is_a_marker_not_an_absence():
    x = torch.zeros(2)
    assert digest(None) != digest()
    assert digest(x, None) != digest(x)
    assert digest(x, None, x) != digest(x, x)


def test_the_scheme_is_pinned():
    # Cache keys and item names in every system (distill cells, uncertainty rows, chunking
    # items, feasibility parts, editing covariances, the teacher cache) are these digests.
    # If this value changes, every stored cache misses once: change the scheme only on
    # purpose, then update the value here (computed once with the scheme as written).
    parts = (
        "lucid",
        1,
        2.5,
        True,
        None,
        [1, "a"],
        {"b": 2, "a": 1},
        b"raw\x00",
        torch.arange(6, dtype=torch.int64).reshape(2, 3),
        np.arange(3, dtype=np.float32),
    )
    assert digest(*parts) == "5939a4b1c1e1d6607af0496afb4627ab"


def test_derive_seed_is_a_stable_31_bit_seed():
    assert derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(0, 2)
    assert derive_seed(0, 1) != derive_seed(1, 0)
    seeds = [derive_seed("x", i) for i in range(200)]
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == 200
    # pinned: distill's documented runs drew their subsets and inits from these seeds
    assert derive_seed(0, "teacher", 1) == 547923461


def test_folder_digest_is_names_and_bytes(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"bee")
    (tmp_path / "a.txt").write_bytes(b"ay")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.txt").write_bytes(b"not read")
    whole = folder_digest(tmp_path)
    assert whole == digest("a.txt", b"ay", "b.txt", b"bee")  # name order, subfolders aside
    assert folder_digest(tmp_path, ["b.txt", "a.txt"]) == whole  # any order of names
    assert folder_digest(tmp_path, ["a.txt"]) == digest("a.txt", b"ay")
    (tmp_path / "a.txt").rename(tmp_path / "c.txt")
    assert folder_digest(tmp_path) != whole  # a renamed file is a change
    with pytest.raises(FileNotFoundError):
        folder_digest(tmp_path, ["a.txt"])
