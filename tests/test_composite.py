"""Composite helpers: periods, N-day composites, S2/S1 preparation, time gaps (known answers)."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from xfusion import composite, gapfill_inputs, mask_s2, s1_features, s2_ndvi, time_gaps
from xfusion.cube import from_numpy
from xfusion.errors import GridMismatchError, InvalidParameterError, TimeAxisError
from xfusion.methods.composite import REDUCERS, SCL_INVALID, composite_periods
from xfusion.testing import raise_if_dask_computes, synthetic_series

GBOX = GeoBox((5, 7), Affine(10, 0, 500000, 0, -10, 5000000), "EPSG:32633")


def series_cube(rng, nt=17, step=3, start="2021-02-20", nan_frac=0.35):
    t = np.datetime64(start, "ns") + np.arange(nt) * np.timedelta64(step, "D")
    a = rng.random((nt, 5, 7)).astype("float32")
    a[rng.random(a.shape) < nan_frac] = np.nan
    return from_numpy({"v": a, "w": a[::-1].copy()}, geobox=GBOX, times=t)


def test_periods_46_per_year_and_leap_years():
    b, e = composite_periods("2021-01-01", "2021-12-31")
    assert len(b) == 46
    assert str(b[1])[:10] == "2021-01-09" and str(e[-1])[:10] == "2022-01-01"
    assert (e[-1] - b[-1]) / np.timedelta64(1, "D") == 5  # 365 = 45 * 8 + 5
    b, e = composite_periods("2020-01-01", "2020-12-31")
    assert len(b) == 46 and (e[-1] - b[-1]) / np.timedelta64(1, "D") == 6  # leap year
    b, e = composite_periods("2020-12-20", "2021-01-05")  # spans a year boundary
    assert [str(v)[:10] for v in b] == ["2020-12-18", "2020-12-26", "2021-01-01"]
    b, e = composite_periods("2021-03-05", "2021-03-20", days=5, anchor="start")
    assert [str(v)[:10] for v in b] == ["2021-03-05", "2021-03-10", "2021-03-15", "2021-03-20"]


@pytest.mark.parametrize("reducer", REDUCERS)
def test_composite_matches_brute_force(rng, reducer):
    ds = series_cube(rng)
    out = composite(ds, days=8, reducer=reducer, count=True)
    times = ds.time.values
    ends = out.period_end.values
    for k, (b, e) in enumerate(zip(out.time.values, ends, strict=True)):
        sel = (times >= b) & (times < e)
        assert out.n_dates.values[k] == sel.sum()
        x = ds.v.values[sel]
        valid = ~np.isnan(x)
        exp = np.full((5, 7), np.nan, "float32")
        for i in range(5):
            for j in range(7):
                vals = x[valid[:, i, j], i, j]
                if vals.size:
                    exp[i, j] = {"mean": np.mean, "median": np.median, "max": np.max,
                                 "min": np.min, "first": lambda v: v[0],
                                 "last": lambda v: v[-1]}[reducer](vals)
        np.testing.assert_allclose(out.v.values[k], exp, rtol=1e-6)
        np.testing.assert_array_equal(out.v_count.values[k], valid.sum(0))


def test_composite_numpy_equals_dask_ragged_chunks_and_is_lazy(rng):
    ds = series_cube(rng)
    ref = composite(ds, days=8, count=True)
    lazy = ds.chunk({"time": 2, "y": 3, "x": 4})
    with raise_if_dask_computes():
        out = composite(lazy, days=8, count=True)
    assert dask.is_dask_collection(out.v.data)
    assert any(k.startswith("xfusion.composite-") for k in out.v.data.dask.layers)
    xr.testing.assert_identical(out.compute(), ref)


def test_composite_empty_period_is_nan_and_attrs():
    t = np.array(["2021-01-02", "2021-01-03", "2021-01-20"], dtype="datetime64[ns]")
    a = np.stack([np.full((5, 7), 1.0), np.full((5, 7), 3.0), np.full((5, 7), 5.0)]).astype("f4")
    ds = from_numpy({"v": a}, geobox=GBOX, times=t)
    out = composite(ds, days=8)
    assert out.sizes["time"] == 3
    np.testing.assert_array_equal(out.v.values[0], 2.0)
    assert np.isnan(out.v.values[1]).all() and out.n_dates.values[1] == 0
    np.testing.assert_array_equal(out.v.values[2], 5.0)
    assert out.attrs["composite_days"] == 8 and "spatial_ref" in out.coords


def test_mask_s2_and_ndvi():
    t = np.array(["2021-06-01", "2022-06-01"], dtype="datetime64[ns]")
    scl = np.zeros((2, 5, 7), "f4") + 4
    scl[:, 0, :] = 9  # clouds on the first row
    scl[:, 1, 0] = 3  # a shadow
    red = np.full((2, 5, 7), 2000.0, "f4")
    nir = np.full((2, 5, 7), 5000.0, "f4")
    ds = from_numpy({"B04": red, "B08": nir, "SCL": scl}, geobox=GBOX, times=t)
    m = mask_s2(ds)
    assert sorted(m.data_vars) == ["B04", "B08"]
    assert np.isnan(m.B04.values[:, 0]).all() and np.isnan(m.B04.values[:, 1, 0]).all()
    assert np.isfinite(m.B04.values[:, 2:]).all()
    nd = s2_ndvi(ds)
    np.testing.assert_allclose(nd.values[:, 2:], 3000 / 7000, rtol=1e-6)
    auto = s2_ndvi(ds, boa_offset="auto")  # -1000 DN from 2022-01-25 (baseline 04.00)
    np.testing.assert_allclose(auto.values[0, 2:], 3000 / 7000, rtol=1e-6)
    np.testing.assert_allclose(auto.values[1, 2:], 3000 / 5000, rtol=1e-6)
    fixed = s2_ndvi(ds, boa_offset=-1000)
    np.testing.assert_allclose(fixed.values[:, 2:], 3000 / 5000, rtol=1e-6)
    assert set(SCL_INVALID) == {0, 1, 3, 8, 9, 10, 11}


def test_s1_features_known_values():
    t = np.array(["2021-06-01"], dtype="datetime64[ns]")
    vv = np.full((1, 5, 7), 0.1, "f4")
    vh = np.full((1, 5, 7), 0.01, "f4")
    vh[0, 0, 0] = 0.0  # not positive -> NaN
    ds = from_numpy({"vv": vv, "vh": vh}, geobox=GBOX, times=t)
    f = s1_features(ds, features=("vh_db", "vv_db", "rvi", "vh_vv_db"))
    np.testing.assert_allclose(f.vh_db.values[0, 1:], -20.0, rtol=1e-6)
    np.testing.assert_allclose(f.vv_db.values[0, 1:], -10.0, rtol=1e-6)
    np.testing.assert_allclose(f.rvi.values[0, 1:], 4 * 0.01 / 0.11, rtol=1e-6)
    np.testing.assert_allclose(f.vh_vv_db.values[0, 1:], -10.0, rtol=1e-5)
    assert np.isnan(f.vh_db.values[0, 0, 0]) and np.isnan(f.rvi.values[0, 0, 0])
    with pytest.raises(InvalidParameterError, match="Unknown feature='vh'"):
        s1_features(ds, features=("vh",))


def brits_deltas(mask, pos):
    """The BRITS recursion, literally."""
    d = np.zeros(mask.shape)
    for t in range(1, mask.shape[0]):
        step = pos[t] - pos[t - 1]
        d[t] = np.where(mask[t - 1], step, step + d[t - 1])
    return d


def test_time_gaps_brute_force_and_dask(rng):
    ds = series_cube(rng, nt=13, nan_frac=0.5)
    obs = ds.v.notnull().values
    pos = np.arange(13.0)
    np.testing.assert_array_equal(time_gaps(ds.v).values, brits_deltas(obs, pos))
    rev = brits_deltas(obs[::-1], pos)[::-1]
    np.testing.assert_array_equal(time_gaps(ds.v, reverse=True).values, rev)
    days = (ds.time.values - ds.time.values[0]) / np.timedelta64(1, "D")
    np.testing.assert_array_equal(time_gaps(ds.v, units="days").values, brits_deltas(obs, days))
    lazy = ds.v.chunk({"time": 4, "y": 2})  # the scan crosses time chunks
    with raise_if_dask_computes():
        g = time_gaps(lazy, reverse=True)
    xr.testing.assert_identical(g.compute(), time_gaps(ds.v, reverse=True))


def test_gapfill_inputs_on_raw_synthetic_acquisitions():
    s2, s1 = synthetic_series((10, 12), seed=3, raw=True)
    out = gapfill_inputs(s2, s1, days=8)
    assert out.sizes["time"] == 46 and out.odc.geobox == s2.odc.geobox
    assert {"ndvi", "ndvi_count", "vh_db", "rvi"} <= set(out.data_vars)
    # the composite NDVI is the mean of the clear acquisitions' NDVI
    nd = s2_ndvi(s2)
    sel = (nd.time >= out.time[10]) & (nd.time < out.period_end[10])
    exp = nd.sel(time=sel).mean("time").values
    np.testing.assert_allclose(out.ndvi.values[10], exp, rtol=1e-5, equal_nan=True)
    # SAR on a coarser grid is resampled onto the optical grid, or refused
    coarse = s1.coarsen(x=2, y=2).mean()
    out2 = gapfill_inputs(s2, coarse, days=8)
    assert out2.odc.geobox == s2.odc.geobox and np.isfinite(out2.vh_db.values).all()
    with pytest.raises(GridMismatchError, match="different pixel grids"):
        gapfill_inputs(s2, coarse, resampling=None)


def test_period_errors():
    with pytest.raises(InvalidParameterError, match="days=0 must be a positive integer"):
        composite_periods("2021-01-01", "2021-02-01", days=0)
    with pytest.raises(TimeAxisError, match="is before start"):
        composite_periods("2021-02-01", "2021-01-01")
    with pytest.raises(InvalidParameterError, match="Unknown anchor='month'"):
        composite_periods("2021-01-01", "2021-02-01", anchor="month")
