"""DMS (data-mining sharpener): known answers, coarse consistency, laziness, NaN, errors."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

pytest.importorskip("sklearn")

import xfusion
from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.methods.dms import dms
from xfusion.methods.super_resolve import aggregate, super_resolve
from xfusion.testing import raise_if_dask_computes, synthetic_scene


def _da(data, res, name):
    h, w = data.shape
    gbox = GeoBox((h, w), Affine(res, 0, 500000.0, 0, -res, 4000000.0), "EPSG:32633")
    return xr.DataArray(data.astype("float32"), dims=("y", "x"), coords=xr_coords(gbox),
                        name=name)


@pytest.fixture(scope="module")
def summer():
    sc, modis = synthetic_scene((96, 96), times=["2021-07-15T10:30"], coarse_factor=4,
                                ndvi=True, coarse_native=True, bias=0.0, noise=0.2,
                                coarse_cloud_fraction=0.0, seed=0)
    return (modis["coarse"].isel(time=0).rename("lst"), sc["ndvi"].isel(time=0),
            sc["truth"].isel(time=0))


@pytest.mark.parametrize(("aggregation", "residual"), [("power", "cell"), ("mean", "cell")])
def test_result_aggregates_back_to_the_observation(summer, aggregation, residual):
    lst, ndvi, _ = summer
    out = dms(lst, guide=ndvi, aggregation=aggregation, residual=residual)
    agg = aggregate(out, scale=4, how=aggregation, like=lst)
    np.testing.assert_allclose(agg.values, lst.values, atol=2e-3)


def test_cell_constant_guide_gives_the_coarse_pixels_back(rng):
    coarse = rng.uniform(290, 310, (6, 7))
    guide = np.repeat(np.repeat(rng.uniform(0, 1, (6, 7)), 4, 0), 4, 1)
    out = dms(_da(coarse, 120.0, "lst"), guide=_da(guide, 30.0, "ndvi"), min_samples=5,
              min_samples_leaf=2)
    np.testing.assert_allclose(out.values, np.repeat(np.repeat(coarse, 4, 0), 4, 1), atol=1e-3)


def test_sharpens_better_than_bicubic(summer):
    lst, ndvi, truth = summer

    def rmse(a):
        return float(np.sqrt(np.nanmean((a.values - truth.values) ** 2)))

    bic = rmse(super_resolve(lst, guide=ndvi, method="bicubic"))
    assert rmse(dms(lst, guide=ndvi)) < 0.8 * bic
    assert rmse(dms(lst, guide=ndvi, window=8, regressor="tree")) < bic
    assert rmse(dms(lst, guide=ndvi, residual="bilinear", std_features=True)) < bic


@pytest.mark.parametrize("kw", [{}, {"window": 8}, {"residual": "bilinear",
                                                    "std_features": True}])
def test_lazy_and_chunk_invariant(summer, kw):
    lst, ndvi, _ = summer
    ref = dms(lst, guide=ndvi, **kw)
    with raise_if_dask_computes():
        out = dms(lst.chunk({"y": 7, "x": 10}), guide=ndvi.chunk(40), **kw)
    assert dask.is_dask_collection(out.data)
    layers = out.data.__dask_graph__().layers
    assert any(str(k).startswith("xfusion.dms-") for k in layers)
    assert any(str(k).startswith("xfusion.dms.fit-") for k in layers)
    xr.testing.assert_allclose(out.compute(), ref, atol=1e-5)
    assert out.name == "lst" and out.odc.geobox == ndvi.odc.geobox


def test_time_dim_fits_one_model_per_date(summer):
    lst, ndvi, _ = summer
    t = np.asarray(["2021-07-15", "2021-07-31"], "datetime64[ns]")
    two = xr.concat([lst, lst + 5.0], dim="time").assign_coords(time=t)
    out = dms(two.chunk({"time": 1, "y": 12, "x": 12}), guide=ndvi).compute()
    assert out.dims == ("time", "y", "x")
    # +5 K everywhere at the coarse scale: the power-mean correction keeps the +5 K in the
    # aggregate; in the fine field it differs only slightly from pixel to pixel
    d = out.isel(time=1) - out.isel(time=0)
    assert abs(float(d.mean()) - 5.0) < 0.05


def test_nan_stays_local(summer):
    lst, ndvi, _ = summer
    holed = lst.copy()
    holed[3, 4] = np.nan
    g = ndvi.copy()
    g[50, 60] = np.nan
    out = dms(holed, guide=g).values
    nan = np.zeros(out.shape, bool)
    nan[12:16, 16:20] = True
    nan[50, 60] = True
    assert np.isnan(out[nan]).all() and np.isfinite(out[~nan]).all()


def test_function_equals_super_resolve_and_accessor(summer):
    lst, ndvi, _ = summer
    a = xfusion.dms(lst, guide=ndvi, window=8)
    b = super_resolve(lst, guide=ndvi, method="dms", params={"window": 8})
    c = lst.fusion.super_resolve(guide=ndvi, method="dms", params={"window": 8})
    xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(a, c)


def test_too_few_cells_and_bad_options(summer):
    lst, ndvi, _ = summer
    empty = lst.where(lst < 0)
    with pytest.raises(NotEnoughDataError, match="fewer than min_samples=20"):
        dms(empty, guide=ndvi).compute()
    with pytest.raises(InvalidParameterError, match=r"Unknown residual='block'.*'cell'"):
        dms(lst, guide=ndvi, residual="block")
    with pytest.raises(InvalidParameterError, match=r"homogeneity=1\.5"):
        dms(lst, guide=ndvi, homogeneity=1.5)
    with pytest.raises(InvalidParameterError, match="window=-1"):
        dms(lst, guide=ndvi, window=-1)
