"""Pickled numpy arrays read by walking the opcodes: the same arrays for every protocol, nothing executed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from peftkit.core.errors import DataError
from peftkit.data.points.dat_cache import read_array_pickle


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(protocol)
    pts = [rng.normal(size=(16, 6)).astype(np.float32) for _ in range(3)]
    pts.append(pts[0])                                     # a shared object (memo reference)
    pts.append(np.asfortranarray(rng.normal(size=(3, 4))))  # float64, Fortran order
    labels = [np.array([2], dtype=np.int32), np.array([0], dtype=np.int64), np.array([1], dtype=">i4")]
    obj = [pts, labels, (7, 2.5, "name", None, True)]
    got = read_array_pickle(pickle.dumps(obj, protocol=protocol), "x.dat")
    for mine, ref in zip(got[0] + got[1], pts + labels, strict=True):
        assert mine.dtype == ref.dtype and mine.shape == ref.shape and np.array_equal(mine, ref)
    assert got[2] == (7, 2.5, "name", None, True)


@pytest.mark.parametrize("obj,msg", [
    ([[Path("x")], [1]], r"x.dat: refusing to unpickle pathlib\..*Path"),
    ({"a": 1}, "refusing pickle opcode EMPTY_DICT"),
    ([np.array([object()])], "refusing to unpickle builtins.object"),
])
def test_anything_but_arrays_is_refused(obj: object, msg: str) -> None:
    with pytest.raises(DataError, match=msg):
        read_array_pickle(pickle.dumps(obj), "x.dat")


def test_garbage_and_truncation() -> None:
    with pytest.raises(DataError, match="x.dat: malformed pickle"):
        read_array_pickle(b"not a pickle", "x.dat")
    with pytest.raises(DataError, match="x.dat: (malformed|truncated) pickle"):
        read_array_pickle(pickle.dumps([np.zeros(4)])[:-5], "x.dat")
