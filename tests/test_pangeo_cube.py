"""A cube built the Pangeo way (rioxarray + xr.concat) works as it is, without mark_observed."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine

import xfusion
from xfusion.testing import raise_if_dask_computes

T = Affine(30, 0, 500000, 0, -30, 5000000)
DATES = ["2021-06-01", "2021-06-09", "2021-06-17", "2021-06-25"]


def _tif(path, data):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype="float32", crs="EPSG:32633", transform=T,
                       nodata=-9999.0) as f:
        f.write(data.astype("float32"), 1)
    return path


@pytest.fixture
def files(tmp_path, rng):
    base = 290 + 5 * rng.random((24, 20))
    fine, coarse = {}, {}
    for k, d in enumerate(DATES):
        c = np.full((24, 20), 290.0 + k)
        coarse[d] = _tif(tmp_path / f"modis_{d}.tif", c)
        if k in (0, 3):  # Landsat on the first and last dates
            fine[d] = _tif(tmp_path / f"landsat_{d}.tif", base + k)
    # an all-nodata Landsat file on date 2: a scene that was fully cloudy
    fine[DATES[2]] = _tif(tmp_path / f"landsat_{DATES[2]}.tif", np.full((24, 20), -9999.0))
    return fine, coarse


def _pangeo(files: dict, name: str) -> xr.DataArray:
    arrays = [rioxarray.open_rasterio(p, chunks={"x": 8, "y": 8}, masked=True)
              .squeeze("band", drop=True) for p in files.values()]
    da = xr.concat(arrays, dim=pd.DatetimeIndex(list(files), name="time"))
    return da.rename(name)


def test_pangeo_cube_default_targets(files, caplog):
    fine, coarse = files
    ds = xr.merge([_pangeo(fine, "fine"), _pangeo(coarse, "coarse")], join="outer",
                  compat="no_conflicts")
    assert "observed_fine" not in ds.coords
    with caplog.at_level(logging.INFO, logger="xfusion"):
        pred = ds.fusion.baseline(fine="fine", coarse="coarse")
    assert any("scanning" in r.getMessage() for r in caplog.records)
    # the fully cloudy Landsat date is not a pair; targets are the coarse-only dates
    assert [str(t)[:10] for t in pred.time.values] == [DATES[1], DATES[2]]
    ref = xfusion.from_geotiffs(fine={d: str(p) for d, p in fine.items()},
                                coarse={d: str(p) for d, p in coarse.items()}, chunks=8)
    # from_geotiffs marks a date observed when its file exists; the scan reads the pixels
    want = ref.fusion.baseline(fine="fine", coarse="coarse", targets=[DATES[1]])
    np.testing.assert_array_equal(pred.fine.sel(time=DATES[1]).values, want.fine.values[0])
    # scanned once: a second call reads nothing to choose its dates
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xfusion"):
        ds.fusion.baseline(fine="fine", coarse="coarse")
    assert not any("scanning" in r.getMessage() for r in caplog.records)


def test_pangeo_cube_explicit_dates_stay_lazy(files):
    fine, coarse = files
    ds = xr.merge([_pangeo(fine, "fine"), _pangeo(coarse, "coarse")], join="outer",
                  compat="no_conflicts")
    with raise_if_dask_computes():
        pred = xfusion.starfm(ds, fine="fine", coarse="coarse", targets=[DATES[1]],
                              pairs=DATES[0], preset="lst", max_search_distance=150)
    assert np.isfinite(pred.fine.values).all()
