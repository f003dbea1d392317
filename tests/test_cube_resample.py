"""resample_onto: exact positions, bilinear over valid neighbours, chunk invariance."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import wrap_xr
from pyproj import Transformer

from xfusion.cube.resample import resample_onto
from xfusion.errors import InvalidParameterError
from xfusion.testing import raise_if_dask_computes
from xfusion.testing._pc import modis_tile_geobox


@pytest.fixture
def coarse(rng):
    g = modis_tile_geobox(9, 4)[1100:1124, 400:428]  # 24 x 28 sinusoidal pixels near 40 N
    vals = 280 + 20 * rng.random((2, *g.shape))
    vals[0, 5, 7] = np.nan
    vals[1, 10:12, 3:6] = np.nan
    return wrap_xr(vals.astype("float32"), g, time=np.array(["2021-06-01", "2021-06-02"], "datetime64[ns]"))


@pytest.fixture
def fine_grid(coarse):
    ext = coarse.odc.geobox.extent.to_crs("EPSG:32613", resolution="auto").boundingbox
    return GeoBox.from_bbox(ext, "EPSG:32613", resolution=120, anchor="center")[10:-10, 10:-10]


def _brute(src, gbox, method):
    """Per-pixel reference: exact PROJ transform of every centre, plain loops."""
    g = src.odc.geobox
    t = Transformer.from_crs(gbox.crs.to_wkt(), g.crs.to_wkt(), always_xy=True)
    inv = ~g.affine
    vals = src.values.astype(np.float64)
    ny, nx = vals.shape[-2:]
    out = np.full((vals.shape[0], *gbox.shape), np.nan)
    a = gbox.affine
    for r in range(gbox.shape[0]):
        for c in range(gbox.shape[1]):
            x, y = t.transform(a.c + (c + 0.5) * a.a, a.f + (r + 0.5) * a.e)
            u, v = inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f
            jn, i_n = int(np.floor(u)), int(np.floor(v))
            if not (0 <= jn < nx and 0 <= i_n < ny):
                continue
            for k in range(vals.shape[0]):
                if np.isnan(vals[k, i_n, jn]):
                    continue
                if method == "nearest":
                    out[k, r, c] = vals[k, i_n, jn]
                    continue
                j0, i0 = int(np.floor(u - 0.5)), int(np.floor(v - 0.5))
                wx, wy = u - 0.5 - j0, v - 0.5 - i0
                acc = wsum = 0.0
                for di, wi in ((0, 1 - wy), (1, wy)):
                    for dj, wj in ((0, 1 - wx), (1, wx)):
                        ii, jj = i0 + di, j0 + dj
                        if 0 <= ii < ny and 0 <= jj < nx and np.isfinite(vals[k, ii, jj]):
                            acc += wi * wj * vals[k, ii, jj]
                            wsum += wi * wj
                if wsum > 0:
                    out[k, r, c] = acc / wsum
    return out


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_matches_a_per_pixel_reference(coarse, fine_grid, method):
    got = resample_onto(coarse, fine_grid, method=method, dtype="float64")
    want = _brute(coarse, fine_grid, method)
    # lattice positions: within ~3e-5 of a source pixel here (120 m pixels, so lattice
    # points 960 m apart); values change by up to ~20 K per source pixel. A centre closer
    # than that to a source pixel edge may pick the other nearest pixel: a handful of pixels
    bad = ~np.isclose(got.values, want, rtol=0, atol=1e-3, equal_nan=True)
    assert bad.sum() <= 4, np.argwhere(bad)[:5]
    assert got.odc.crs.epsg == 32613 and got.dims == ("time", "y", "x")
    assert np.isnan(got.values).any() and np.isfinite(got.values).mean() > 0.3


def test_chunk_invariant_and_lazy(coarse, fine_grid):
    ref = resample_onto(coarse, fine_grid).values
    for chunks in ((7, 11), (64, 5), fine_grid.shape):
        with raise_if_dask_computes():
            lazy = resample_onto(coarse.chunk({"time": 1}), fine_grid, chunks=chunks)
        assert dask.is_dask_collection(lazy.data)
        assert lazy.data.name.startswith("xfusion.resample-")
        np.testing.assert_array_equal(lazy.values, ref)  # bit for bit
    # a sub-grid (a tile) gives the same pixels as the whole grid
    tile = fine_grid[13:40, 20:51]
    np.testing.assert_array_equal(resample_onto(coarse, tile).values, ref[:, 13:40, 20:51])


def test_constant_field_and_errors(coarse, fine_grid):
    flat = coarse.fillna(0) * 0 + 300.0
    out = resample_onto(flat, fine_grid)
    assert np.nanmax(np.abs(out.values - 300.0)) == 0.0
    with pytest.raises(InvalidParameterError, match="method='cubic'"):
        resample_onto(coarse, fine_grid, method="cubic")


def test_outside_the_source_is_nan(coarse):
    g = coarse.odc.geobox
    a = g.affine
    shifted = GeoBox(g.shape, Affine(a.a, 0, a.c + 10 * a.a, 0, a.e, a.f), g.crs)
    out = resample_onto(coarse, shifted, method="nearest")
    assert np.isnan(out.values[:, :, -10:]).all()
    np.testing.assert_array_equal(out.values[:, :, :-10], coarse.values[:, :, 10:])
