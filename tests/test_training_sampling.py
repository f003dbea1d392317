"""Patch samplers: inside ROI/TOI, exact sizes, seeded, validity rule, edge coverage, chunk reads."""

from __future__ import annotations

import math
import threading
from collections import Counter

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from xfusion.cube import from_numpy
from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.training import (
    GridPatchSampler,
    Patch,
    PatchSource,
    RandomPatchSampler,
    spatial_split,
)

GBOX = GeoBox((60, 50), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
TIMES = ["2020-01-01", "2020-01-05", "2020-01-09", "2020-01-13"]


def _cube(chunks=None, nan_left=False):
    rng = np.random.default_rng(0)
    a = rng.normal(300, 5, (4, 60, 50)).astype("float32")
    b = a + 1
    if nan_left:
        b[:, :, :25] = np.nan
    ds = from_numpy({"fine": a, "coarse": b}, geobox=GBOX, times=TIMES)
    return ds.chunk({"time": 1, **chunks}) if chunks else ds


def _counting_array(shape, chunks):
    """A dask array whose chunk computations are counted per block location."""
    counts: Counter = Counter()
    lock = threading.Lock()

    def make(block_info=None):
        info = block_info[None]
        loc = tuple(info["chunk-location"])
        with lock:
            counts[loc] += 1
        (s0, s1), (c0, c1), (r0, r1), (q0, q1) = info["array-location"]
        grid = np.arange(shape[2] * shape[3], dtype="float32").reshape(shape[2:])
        out = np.broadcast_to(grid[r0:r1, q0:q1], (s1 - s0, c1 - c0, r1 - r0, q1 - q0))
        return out + np.arange(s0, s1, dtype="float32")[:, None, None, None] * 1e6

    arr = da.map_blocks(make, chunks=chunks, dtype="float32", meta=np.empty((0,) * 4, "float32"))
    return arr, counts


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_random_patches_inside_region_and_times(backend):
    ds = _cube(chunks=None if backend == "numpy" else {"y": 20, "x": 20})
    src = PatchSource(ds, variables=["fine", "coarse"], times=["2020-01-05", "2020-01-13"])
    region = (slice(5, 45), slice(10, 48))
    s = RandomPatchSampler(src, size=(12, 10), length=40, region=region, seed=1)
    assert len(s) == 40
    for p in s:
        assert (p.height, p.width) == (12, 10)
        assert p.row >= 5 and p.row + 12 <= 45 and p.col >= 10 and p.col + 10 <= 48
        assert p.index in (0, 1)
        block = src.read(p)
        assert block.shape == (2, 12, 10)
        times = [1, 3]
        np.testing.assert_array_equal(block[0], ds.fine.values[times[p.index], p.rows, p.cols])
    assert {p.index for p in s} == {0, 1}
    assert list(src.sample_labels[0].astype("datetime64[D]").astype(str)) == ["2020-01-05",
                                                                               "2020-01-13"]


def test_region_as_bounding_box_in_crs_units():
    ds = _cube()
    # x from 500300 to 501200 (cols 10..40), y from 3999100 down to 3998500 (rows 30..50)
    bbox = (500300.0, 3998500.0, 501200.0, 3999100.0)
    s = RandomPatchSampler(ds[["fine"]], size=8, length=30, region=bbox, seed=0)
    for p in s:
        assert 30 <= p.row <= 50 - 8 and 10 <= p.col <= 40 - 8
    g = GridPatchSampler(ds[["fine"]], size=8, region=bbox, times=[0])
    rows = sorted({p.row for p in g})
    cols = sorted({p.col for p in g})
    assert rows[0] == 30 and rows[-1] == 42 and cols[0] == 10 and cols[-1] == 32


def test_same_seed_same_patches_other_seed_differs():
    ds = _cube(chunks={"y": 16, "x": 16})
    a = RandomPatchSampler(ds, size=10, length=25, seed=7).patches
    b = RandomPatchSampler(ds, size=10, length=25, seed=7).patches
    c = RandomPatchSampler(ds, size=10, length=25, seed=8).patches
    assert a == b
    assert a != c


def test_validity_rule_every_input_channel():
    ds = _cube(nan_left=True)  # coarse is NaN on columns 0..24
    src = PatchSource(ds, variables=["fine", "coarse"])
    s = RandomPatchSampler(src, size=10, length=30, min_valid=0.6, seed=3, chunk_aligned=False)
    for p in s:
        frac = np.isfinite(src.read(p)).mean(axis=(1, 2))
        assert np.all(frac >= 0.6)
        assert p.col >= 25 - 4  # at most 4 of 10 columns in the NaN half
    # the rule only looks at the listed inputs
    s_fine = RandomPatchSampler(src, size=10, length=30, min_valid=1.0, inputs=[0], seed=3,
                                chunk_aligned=False)
    assert min(p.col for p in s_fine) < 15


def test_not_enough_valid_patches_is_a_clear_error():
    ds = _cube(nan_left=True)
    s = RandomPatchSampler(ds, size=30, length=5, min_valid=0.9, seed=0, max_tries=50)
    with pytest.raises(NotEnoughDataError, match=r"Found only 0 of 5 patches of 30x30 px with at "
                       r"least 90% observed.*after 50 random candidates.*coarse: \d"):
        _ = s.patches


@pytest.mark.parametrize(("n", "size", "stride"), [(50, 16, 16), (37, 16, 16), (60, 12, 5),
                                                   (16, 16, 16), (33, 8, 8)])
def test_grid_covers_edges_with_exact_sizes(n, size, stride):
    arr = np.zeros((1, 1, n, n + 3), "float32")
    g = GridPatchSampler(arr, size=size, stride=stride)
    cover = np.zeros((n, n + 3), bool)
    for p in g:
        assert (p.height, p.width) == (size, size)
        assert 0 <= p.row <= n - size and 0 <= p.col <= n + 3 - size
        cover[p.rows, p.cols] = True
    assert cover.all()
    per_axis = [math.ceil((m - size) / stride) + 1 for m in (n, n + 3)]
    assert len(g) == per_axis[0] * per_axis[1]
    assert max(p.row for p in g) == n - size and max(p.col for p in g) == n + 3 - size


def test_grid_validity_drops_invalid_and_rejects_gaps():
    ds = _cube(nan_left=True)
    g = GridPatchSampler(ds, size=10, min_valid=1.0)
    assert len(g) > 0 and all(p.col >= 25 for p in g)
    with pytest.raises(InvalidParameterError, match="would leave gaps"):
        GridPatchSampler(ds, size=10, stride=12)
    with pytest.raises(InvalidParameterError, match="No region is large enough for a 70x70"):
        GridPatchSampler(ds, size=70)


def test_random_patches_read_one_chunk_each_and_never_the_whole_cube():
    shape, chunks = (3, 2, 96, 80), ((1, 1, 1), (1, 1), (32, 32, 32), (40, 40))
    arr, counts = _counting_array(shape, chunks)
    src = PatchSource(arr, cache_chunks=2)
    s = RandomPatchSampler(src, size=16, length=30, seed=5)
    assert all(src.chunks_touched(p) == 1 for p in s)
    assert not counts  # min_valid=0: sampling reads nothing
    for p in s:
        got = src.read(p)
        grid = np.arange(96 * 80, dtype="float32").reshape(96, 80)
        np.testing.assert_array_equal(got[0], grid[p.rows, p.cols] + p.index * 1e6)
    # each read touched one spatial chunk, i.e. one task per channel chunk (2 channels)
    assert sum(counts.values()) == 2 * src.reads
    assert src.reads <= len(s)
    total_blocks = 3 * 2 * 3 * 2
    assert len(counts) < total_blocks or src.reads < total_blocks


def test_chunk_smaller_than_patch_reads_the_fewest_chunks():
    shape, chunks = (1, 1, 64, 64), ((1,), (1,), (10,) * 6 + (4,), (64,))
    arr, _ = _counting_array(shape, chunks)
    src = PatchSource(arr)
    s = RandomPatchSampler(src, size=(16, 16), length=40, seed=2)
    # a 16-row patch spans at least 2 row chunks of 10, never more than 3
    assert all(2 <= src.chunks_touched(p) <= 3 for p in s)
    assert sum(src.chunks_touched(p) == 2 for p in s) > 10


def test_cache_reuses_chunks():
    shape, chunks = (1, 1, 40, 40), ((1,), (1,), (40,), (40,))
    arr, counts = _counting_array(shape, chunks)
    src = PatchSource(arr)
    for p in RandomPatchSampler(src, size=8, length=20, seed=0):
        src.read(p)
    assert counts[(0, 0, 0, 0)] == 1 and src.reads == 1


def test_dataarray_with_channel_dim_and_multiple_sources():
    a = xr.DataArray(np.ones((2, 3, 20, 30), "float32"), dims=("sample", "band", "y", "x"),
                     coords={"band": ["r", "g", "b"]})
    b = xr.DataArray(np.zeros((1, 3, 25, 25), "float32"), dims=("sample", "band", "y", "x"),
                     coords={"band": ["r", "g", "b"]})
    src = PatchSource([a, b], sample_dim="sample", channel_dim="band")
    assert src.channel_names == ["r", "g", "b"] and src.nchannels == 3
    s = RandomPatchSampler(src, size=10, length=60, seed=0)
    assert {p.source for p in s} == {0, 1}
    for p in s:
        assert float(src.read(p).mean()) == (1.0 if p.source == 0 else 0.0)
    only_b = RandomPatchSampler(src, size=10, length=5, region={1: None}, seed=0)
    assert {p.source for p in only_b} == {1}


def test_spatial_split_is_disjoint_and_covers_the_window():
    train, val = spatial_split((100, 60), fraction=0.2, size=16)
    (tr_r, tr_c), (va_r, va_c) = train[0], val[0]
    assert (tr_r, va_r) == (slice(0, 80), slice(80, 100)) and tr_c == va_c == slice(0, 60)
    train, val = spatial_split((slice(10, 50), slice(0, 100)), fraction=0.1, size=16)
    assert train[0][1] == slice(0, 84) and val[0][1] == slice(84, 100)
    assert spatial_split((40, 40), fraction=0.1, size=24) is None  # too small for both parts
    with pytest.raises(InvalidParameterError, match=r"fraction must be in \(0, 1\)"):
        spatial_split((40, 40), fraction=1.5, size=8)


def test_patch_record_slices():
    p = Patch(0, 2, 5, 7, 3, 4)
    assert p.rows == slice(5, 8) and p.cols == slice(7, 11)


def test_bad_inputs():
    with pytest.raises(InvalidParameterError, match="min_valid is a fraction"):
        RandomPatchSampler(np.zeros((1, 1, 8, 8)), size=4, length=1, min_valid=2)
    with pytest.raises(InvalidParameterError, match="Patch size must be positive"):
        RandomPatchSampler(np.zeros((1, 1, 8, 8)), size=0, length=1)
    with pytest.raises(InvalidParameterError, match="ndim=3"):
        PatchSource(np.zeros((1, 8, 8)))
    with pytest.raises(InvalidParameterError, match="not on the 'time' axis"):
        PatchSource(_cube(), times=["1999-01-01"])
