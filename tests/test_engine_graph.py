"""xfusion.engine.graph.independent_copy: a copy of a dask graph that shares no key."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from xfusion.engine.graph import independent_copy


def _keys(a):
    return set(dict(a.__dask_graph__()))


def test_copy_of_sliced_and_stacked_graphs_computes_the_same_values():
    x = da.from_array(np.arange(400.0).reshape(20, 20), chunks=7)
    y = (x[1:19, 2:] * 2)[::2]  # slices (getitem), which dask's clone cannot copy
    z = da.stack([y, y + 1])
    cy, cz = independent_copy(y, z, seed="s")
    assert not (_keys(cy) | _keys(cz)) & (_keys(y) | _keys(z))
    assert cy.chunks == y.chunks and cz.dtype == z.dtype
    got = dask.compute(cy, cz, y.sum(), cz.sum())
    np.testing.assert_array_equal(got[0], y.compute())
    np.testing.assert_array_equal(got[1], z.compute())


def test_copy_is_deterministic_and_recomputes_its_inputs():
    calls = []

    def block(b):
        calls.append(1)
        return b + 1

    x = da.from_array(np.zeros((8, 8)), chunks=4).map_blocks(block)
    (c1,) = independent_copy(x, seed=1)
    (c2,) = independent_copy(x, seed=1)
    (c3,) = independent_copy(x, seed=2)
    assert c1.name == c2.name != c3.name
    calls.clear()
    dask.compute(x, c1, scheduler="sync")
    assert len(calls) == 8  # 4 blocks of the original, 4 of the copy
