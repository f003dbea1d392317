"""Outputs describe themselves: no stale statistics or packing attributes on float results,
units and long_name kept, a CF standard_name where the quantity is known, and names that
follow the input or the method."""

from __future__ import annotations

import numpy as np
import pytest

import xfusion
from xfusion.cube.attrs import output_attrs, standard_name
from xfusion.testing import synthetic_scene

STALE = {"STATISTICS_MEAN": 0.2, "STATISTICS_MAXIMUM": 0.9, "scale_factor": 2.75e-05,
         "add_offset": -0.2, "_FillValue": 0, "valid_range": [1, 65535], "nodata": 0}


@pytest.fixture(scope="module")
def refl():
    ds = synthetic_scene((48, 48), kind="reflectance", bands=("red",), coarse_factor=8,
                         times=3, cloud_fraction=0.0, coarse_cloud_fraction=0.0, seed=2)
    obs = [True, False, True]
    ds["fine_red"] = ds["fine_red"].where(ds["time"] != ds["time"][1])
    ds = ds.assign_coords(observed_fine_red=("time", obs))
    for v in ("fine_red", "coarse_red"):
        ds[v].attrs.update(STALE, units="1", long_name="Red surface reflectance")
    return ds


@pytest.mark.parametrize("method", ["baseline", "starfm", "estarfm", "fitfc"])
def test_fusion_outputs_drop_stale_attrs_and_keep_meaning(refl, method):
    kw = {"max_search_distance": 300, "preset": "reflectance"} if method == "starfm" else {}
    if method == "estarfm":
        kw = {"half_window": 6}
    if method == "fitfc":
        kw = {"sf_half_window": 4, "n_similar": 6}
    out = getattr(refl.fusion, method)(fine="fine_red", coarse="coarse_red", **kw)
    attrs = out["fine_red"].attrs
    assert not set(attrs) & set(STALE), attrs
    assert attrs["units"] == "1" and attrs["long_name"] == "Red surface reflectance"
    assert attrs["standard_name"] == "surface_bidirectional_reflectance"
    assert out["fine_red"].name == "fine_red"


def test_super_resolve_names_and_attrs():
    ds = synthetic_scene((64, 64), kind="lst", coarse_factor=8, times=2, ndvi=True, seed=1)
    lst = ds["coarse"].isel(time=0).coarsen(y=8, x=8).mean().chunk(4)
    lst.attrs = {"units": "K", "long_name": "Daytime land surface temperature",
                 "STATISTICS_MEAN": 300.0, "scale_factor": 0.02}
    guide = ds["ndvi"].isel(time=0) if "time" in ds["ndvi"].dims else ds["ndvi"]
    named = lst.rename("lst").fusion.super_resolve(guide=guide, scale=8, method="bicubic")
    assert named.name == "lst"
    assert named.attrs["standard_name"] == "surface_temperature"
    assert named.attrs["units"] == "K" and "scale_factor" not in named.attrs
    assert not any(k.startswith("STATISTICS_") for k in named.attrs)
    unnamed = lst.rename(None).fusion.super_resolve(guide=guide, scale=8, method="bicubic")
    assert unnamed.name == "bicubic"  # not the dask array's getitem-<hash>
    assert lst.rename(None).fusion.dms(guide=guide, scale=8).name == "dms"


def test_integer_outputs_keep_their_packing():
    a = output_attrs({"scale_factor": 1e-4, "nodata": -9999, "STATISTICS_MEAN": 1}, "int16",
                     name="fine_red")
    assert a == {"scale_factor": 1e-4, "nodata": -9999,
                 "standard_name": "surface_bidirectional_reflectance"}


@pytest.mark.parametrize(("name", "attrs", "want"), [
    ("lst", {"units": "K"}, "surface_temperature"),
    ("fine", {"units": "kelvin", "long_name": "Land surface temperature"},
     "surface_temperature"),
    ("fine", {"units": "K"}, None),  # a temperature of what?
    ("fine_nir08", {}, "surface_bidirectional_reflectance"),
    ("B04", {"long_name": "Red surface reflectance", "units": "1"},
     "surface_bidirectional_reflectance"),
    ("fine_red_uncertainty", {"long_name": "reflectance uncertainty"}, None),
    ("ndvi", {"units": "1"}, None),
    ("x", {"standard_name": "air_temperature"}, "air_temperature"),
])
def test_standard_name_only_when_unambiguous(name, attrs, want):
    assert standard_name(name, attrs) == want


def test_api_arrays_read_back_without_rescaling(refl, tmp_path):
    out = refl.fusion.baseline(fine="fine_red", coarse="coarse_red")
    xfusion.io.to_zarr(out, tmp_path / "o.zarr")
    back = xfusion.io.open_zarr(tmp_path / "o.zarr")
    np.testing.assert_array_equal(back["fine_red"].values, out["fine_red"].values)
