"""Cube builders: from_geotiffs, from_numpy, mark_observed."""

from __future__ import annotations

import datetime as dt
import os

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.transform import from_origin

from xfusion.cube import (
    from_geotiffs,
    from_numpy,
    get_geobox,
    mark_observed,
    spatial_dims,
    validate_cube,
)
from xfusion.testing import assert_lazy, raise_if_dask_computes

UTM = "EPSG:32633"
FINE_T = from_origin(500000, 4000000, 30, 30)  # 30 m pixels
COARSE_T = from_origin(499880, 4000120, 120, 120)  # 120 m pixels, covers the fine grid


def write_tif(
    path, data, *, crs=UTM, transform=FINE_T, nodata=None, descriptions=None, scales=None
):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if scales is not None:
            dst.scales = scales
    return str(path)


@pytest.fixture
def fine_values():
    v = np.arange(12 * 10, dtype="int16").reshape(12, 10)
    v[0, 0] = -9999
    return v


@pytest.fixture
def files(tmp_path, fine_values):
    return {
        "f1": write_tif(tmp_path / "f1.tif", fine_values, nodata=-9999),
        "f3": write_tif(
            tmp_path / "f3.tif",
            np.where(fine_values == -9999, -9999, fine_values + 100),
            nodata=-9999,
        ),
        "c1": write_tif(tmp_path / "c1.tif", np.full((5, 5), 7.0, "float32"), transform=COARSE_T),
        "c2": write_tif(tmp_path / "c2.tif", np.full((5, 5), 9.0, "float32"), transform=COARSE_T),
    }


def build(files, **kw):
    return from_geotiffs(
        fine={"2020-03-08": files["f1"], "2020-04-02": files["f3"]},
        coarse={"2020-03-08": files["c1"], "2020-03-17": files["c2"]},
        **kw,
    )


def test_round_trip_known_values(files, fine_values):
    ds = build(files)
    assert list(ds.data_vars) == ["fine", "coarse"]
    assert ds.fine.dims == ("time", "y", "x")
    assert ds.fine.dtype == np.float32 and ds.coarse.dtype == np.float32
    np.testing.assert_array_equal(
        ds.time.values, np.array(["2020-03-08", "2020-03-17", "2020-04-02"], "datetime64[ns]")
    )
    expected = fine_values.astype("float32")
    expected[0, 0] = np.nan  # the nodata pixel
    np.testing.assert_array_equal(ds.fine.values[0], expected)
    np.testing.assert_array_equal(ds.fine.values[2], expected + 100)
    assert np.isnan(ds.fine.values[1]).all()  # no fine file on 03-17
    assert ds.observed_fine.values.tolist() == [True, False, True]
    assert ds.observed_coarse.values.tolist() == [True, True, False]
    assert ds.observed_fine.dims == ("time",)
    # same grid as the fine GeoTIFF, CRS attached
    gbox = get_geobox(ds)
    assert gbox.crs.epsg == 32633
    assert tuple(gbox.shape) == (12, 10)
    assert tuple(gbox.affine)[:6] == tuple(FINE_T)[:6]
    assert "spatial_ref" in ds.coords
    validate_cube(ds, fine="fine", coarse="coarse")


def test_coarse_constant_field_reprojected_is_constant(files):
    ds = build(files)
    np.testing.assert_allclose(ds.coarse.values[0], 7.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.coarse.values[1], 9.0, rtol=0, atol=1e-6)
    assert np.isnan(ds.coarse.values[2]).all()


def test_coarse_in_other_crs_constant_field(tmp_path, files):
    # a lon/lat coarse file around the fine grid (UTM 33N, lon 15 E near the equator + 36 N)
    fine_gbox = GeoBox((12, 10), Affine(*tuple(FINE_T)[:6]), UTM)
    left, bottom, right, top = fine_gbox.geographic_extent.boundingbox
    pad = 0.01
    transform = from_origin(left - pad, top + pad, 0.005, 0.005)
    ny = int(np.ceil((top - bottom + 2 * pad) / 0.005))
    nx = int(np.ceil((right - left + 2 * pad) / 0.005))
    c = write_tif(
        tmp_path / "c_ll.tif",
        np.full((ny, nx), 3.5, "float32"),
        crs="EPSG:4326",
        transform=transform,
    )
    ds = from_geotiffs(fine={"2020-03-08": files["f1"]}, coarse={"2020-03-08": c})
    np.testing.assert_allclose(ds.coarse.values, 3.5, rtol=0, atol=1e-6)
    assert ds.coarse.dims == ("time", "y", "x")


def test_partial_coarse_coverage_is_nan_outside(tmp_path, files):
    # a coarse file covering only the left half of the fine grid (columns 0..4)
    c = write_tif(tmp_path / "half.tif", np.full((12, 5), 2.0, "float32"), transform=FINE_T)
    ds = from_geotiffs(fine={"2020-03-08": files["f1"]}, coarse={"2020-03-08": c})
    vals = ds.coarse.values[0]
    assert np.all(vals[:, :5] == 2.0)
    assert np.isnan(vals[:, 5:]).all()


def test_chunks_lazy_and_equal_to_numpy(files):
    eager = build(files)
    with raise_if_dask_computes():
        lazy = build(files, chunks=5)
    assert_lazy(lazy)
    assert lazy.fine.data.chunks == ((1, 1, 1), (5, 5, 2), (5, 5))
    assert lazy.coarse.data.chunks == lazy.fine.data.chunks
    xr.testing.assert_identical(lazy.compute(), eager)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [((4, 6), ((4, 4, 4), (6, 4))), ({"y": 6, "x": -1}, ((6, 6), (10,))), ("auto", ((12,), (10,)))],
)
def test_chunk_specs(files, chunks, expected):
    ds = build(files, chunks=chunks)
    assert ds.fine.data.chunks[1:] == expected
    assert ds.coarse.data.chunks[1:] == expected


def test_dates_of_every_kind_and_pair_sequences(files):
    ds = from_geotiffs(
        fine=[(dt.date(2020, 3, 8), files["f1"])],
        coarse=[
            (np.datetime64("2020-03-08"), files["c1"]),
            (dt.datetime(2020, 3, 17), files["c2"]),
        ],
    )
    assert ds.time.values.tolist() == (
        np.array(["2020-03-08", "2020-03-17"], "datetime64[ns]").tolist()
    )


def test_nodata_override(tmp_path):
    arr = np.array([[0, 1], [2, 0]], dtype="uint16")
    f = write_tif(tmp_path / "f.tif", arr)  # no nodata declared in the file
    c = write_tif(tmp_path / "c.tif", arr)
    ds = from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-01": c}, nodata=0)
    np.testing.assert_array_equal(ds.fine.values[0], [[np.nan, 1], [2, np.nan]])


def test_scale_and_offset_from_file_applied(tmp_path):
    arr = np.array([[100, 200]], dtype="int16")
    f = write_tif(tmp_path / "f.tif", arr, nodata=-1, scales=[0.01])
    ds = from_geotiffs(fine={"2020-01-01": f}, coarse={"2020-01-01": f})
    np.testing.assert_allclose(ds.fine.values[0], [[1.0, 2.0]], rtol=1e-6)


def test_multiband_names_from_descriptions(tmp_path):
    f = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 2.0)]).astype("float32")
    ffile = write_tif(tmp_path / "f.tif", f, descriptions=["red", "NIR band"])
    cfile = write_tif(tmp_path / "c.tif", f * 10)  # no descriptions
    ds = from_geotiffs(fine={"2020-01-01": ffile}, coarse={"2020-01-01": cfile})
    assert list(ds.data_vars) == ["fine_red", "fine_NIR_band", "coarse_b1", "coarse_b2"]
    assert ds.fine_red.attrs["long_name"] == "red"
    np.testing.assert_array_equal(ds.fine_NIR_band.values, 2.0)
    np.testing.assert_array_equal(ds.coarse_b2.values, 20.0)
    assert ds.observed_fine_red.values.tolist() == [True]
    assert ds.observed_coarse_b2.values.tolist() == [True]


def test_single_band_names(files):
    ds = from_geotiffs(
        fine={"2020-03-08": files["f1"]},
        coarse={"2020-03-08": files["c1"]},
        fine_name="landsat",
        coarse_name="modis",
    )
    assert set(ds.data_vars) == {"landsat", "modis"}
    assert {"observed_landsat", "observed_modis"} <= set(ds.coords)


def test_guides_dated_and_static(tmp_path, files):
    g = write_tif(tmp_path / "g.tif", np.full((5, 5), 0.5, "float32"), transform=COARSE_T)
    dem = write_tif(tmp_path / "dem.tif", np.full((12, 10), 100.0, "float32"))
    ds = from_geotiffs(
        fine={"2020-03-08": files["f1"]},
        coarse={"2020-03-08": files["c1"]},
        guides={"ndvi": {"2020-03-20": g}, "dem": dem},
        chunks=6,
    )
    assert ds.time.size == 2
    assert ds.ndvi.dims == ("time", "y", "x")
    assert ds.observed_ndvi.values.tolist() == [False, True]
    np.testing.assert_allclose(ds.ndvi.values[1], 0.5, atol=1e-6)
    assert ds.dem.dims == ("y", "x")
    np.testing.assert_array_equal(ds.dem.values, 100.0)
    assert_lazy(ds)


def test_geographic_fine_grid_gives_latitude_longitude(tmp_path):
    t = from_origin(146.0, -34.8, 0.001, 0.001)
    f = write_tif(
        tmp_path / "f.tif", np.full((6, 8), 300.0, "float32"), crs="EPSG:4326", transform=t
    )
    ds = from_geotiffs(fine={"2016-02-05": f}, coarse={"2016-02-05": f}, chunks=4)
    assert spatial_dims(ds) == ("latitude", "longitude")
    assert ds.fine.dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(ds.fine.values, 300.0)


def test_real_yanco_cube(shared_data):
    d = os.path.join(shared_data, "yanco_lst", "1_test_data")
    ds = from_geotiffs(
        fine={"2016-02-05": os.path.join(d, "Landsat_LST_cloudrm_20160205.tif")},
        coarse={
            day: os.path.join(d, f"MOD11A1_LST_cloudrm_{day.replace('-', '')}.tif")
            for day in ("2016-02-05", "2016-02-18", "2016-03-08")
        },
        chunks=200,
    )
    assert dict(ds.sizes) == {"time": 3, "latitude": 400, "longitude": 400}
    assert ds.observed_fine.values.tolist() == [True, False, False]
    # the -3.4e38 nodata became NaN; LST in kelvin is within a sane range
    vals = ds.fine.isel(time=0).values
    assert np.nanmin(vals) > 250 and np.nanmax(vals) < 350


# ---------------------------------------------------------------------------------------------
# from_numpy


GBOX = GeoBox((6, 7), Affine(30, 0, 500000, 0, -30, 4000000), UTM)
TIMES = ["2020-01-01", "2020-01-09", "2020-01-17"]


def test_from_numpy_coords_and_crs(rng):
    a = rng.random((3, 6, 7)).astype("float32")
    ds = from_numpy({"fine": a, "dem": a[0]}, geobox=GBOX, times=TIMES)
    assert ds.fine.dims == ("time", "y", "x") and ds.dem.dims == ("y", "x")
    assert get_geobox(ds) == GBOX
    assert ds.spatial_ref.attrs["crs_wkt"]
    np.testing.assert_array_equal(ds.fine.values, a)
    np.testing.assert_allclose(ds.x.values, 500015 + 30 * np.arange(7))
    np.testing.assert_allclose(ds.y.values, 4000000 - 15 - 30 * np.arange(6))
    assert "observed_fine" not in ds.coords


def test_from_numpy_dask_stays_lazy(rng):
    a = da.from_array(rng.random((3, 6, 7)), chunks=(1, 4, 4))
    with raise_if_dask_computes():
        ds = from_numpy({"fine": a}, geobox=GBOX, times=TIMES, observed={"fine": [1, 0, 1]})
        ds_int = from_numpy({"n": (a * 10).astype("int16")}, geobox=GBOX, times=TIMES, nodata=0)
    assert_lazy(ds)
    assert_lazy(ds_int)
    assert ds.fine.data.chunks == a.chunks
    assert ds.observed_fine.values.tolist() == [True, False, True]
    assert ds_int.n.dtype == np.float32


def test_from_numpy_integer_nodata_becomes_nan():
    a = np.array([[[1, -9999], [3, 4]]], dtype="int16")
    g = GeoBox((2, 2), Affine(30, 0, 0, 0, -30, 0), UTM)
    ds = from_numpy({"fine": a}, geobox=g, times=["2020-01-01"], nodata={"fine": -9999})
    assert ds.fine.dtype == np.float32
    np.testing.assert_array_equal(ds.fine.values, [[[1, np.nan], [3, 4]]])


def test_from_numpy_geographic_geobox():
    g = GeoBox((3, 4), Affine(0.01, 0, 14, 0, -0.01, 46), "EPSG:4326")
    ds = from_numpy({"fine": np.zeros((3, 4))}, geobox=g)
    assert ds.fine.dims == ("latitude", "longitude")


# ---------------------------------------------------------------------------------------------
# mark_observed


def test_mark_observed(backend):
    a = np.full((3, 6, 7), np.nan, "float32")
    a[0, 2, 3] = 1.0  # one pixel observed at t0
    a[2] = 5.0
    b = np.where(np.isnan(a), 0, a).astype("int16")  # ints with nodata 0
    if backend == "dask":
        a, b = da.from_array(a, chunks=(1, 4, 4)), da.from_array(b, chunks=(1, 4, 4))
    ds = from_numpy({"a": a}, geobox=GBOX, times=TIMES)
    ds["b"] = ds.a.copy(data=b)
    ds["b"].attrs["nodata"] = 0
    with raise_if_dask_computes(max_computes=1):
        out = mark_observed(ds)
    assert out.observed_a.values.tolist() == [True, False, True]
    assert out.observed_b.values.tolist() == [True, False, True]
    assert out.observed_a.dtype == bool
    assert "observed_a" not in ds.coords  # input untouched
    if backend == "dask":
        assert dask.is_dask_collection(out.a.data)


def test_mark_observed_selected_names():
    ds = from_numpy({"a": np.ones((3, 6, 7)), "b": np.ones((3, 6, 7))}, geobox=GBOX, times=TIMES)
    out = mark_observed(ds, "b")
    assert "observed_b" in out.coords and "observed_a" not in out.coords


# --------------------------------------------------------------------------------------------
# combine()


def test_combine_aligns_by_day_and_marks_observed():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube import combine, validate_cube

    gbox = GeoBox((6, 5), Affine(30, 0, 500000, 0, -30, 4100000), "EPSG:32633")
    fine = xr.DataArray(np.ones((2, 6, 5), "float32"), dims=("time", "y", "x"),
                        coords={"time": np.array(["2021-01-01T10:10", "2021-01-05T10:12"],
                                                 dtype="datetime64[ns]"),
                                **dict(_grid(gbox).items())}, name="lwir11")
    coarse = xr.DataArray(np.full((3, 6, 5), 2, "float32"), dims=("time", "y", "x"),
                          coords={"time": np.array(["2021-01-01", "2021-01-03", "2021-01-05"],
                                                   dtype="datetime64[ns]"),
                                  **dict(_grid(gbox).items())}, name="lst")
    cube = combine(fine.chunk({"x": 2}), coarse.chunk({"x": 2}), fine_name="fine",
                   coarse_name="coarse")
    assert list(cube.time.dt.day.values) == [1, 3, 5]
    assert list(cube.observed_fine.values) == [True, False, True]
    assert list(cube.observed_coarse.values) == [True, True, True]
    assert np.isnan(cube.fine.isel(time=1)).all() and (cube.coarse == 2).all()
    assert cube.fine.chunks is not None  # stays lazy
    validate_cube(cube, fine="fine", coarse="coarse")


def test_combine_refuses_other_grids():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube import combine
    from xfusion.errors import GridMismatchError

    g1 = GeoBox((6, 5), Affine(30, 0, 500000, 0, -30, 4100000), "EPSG:32633")
    g2 = GeoBox((6, 5), Affine(60, 0, 500000, 0, -60, 4100000), "EPSG:32633")
    t = np.array(["2021-01-01"], dtype="datetime64[ns]")
    a = xr.DataArray(np.ones((1, 6, 5)), dims=("time", "y", "x"), coords={"time": t, **_grid(g1)})
    b = xr.DataArray(np.ones((1, 6, 5)), dims=("time", "y", "x"), coords={"time": t, **_grid(g2)})
    with pytest.raises(GridMismatchError, match="different pixel grids"):
        combine(a.rename("f"), b.rename("c"))


def _grid(gbox):
    from odc.geo.xr import xr_coords

    return xr_coords(gbox)


def test_combine_keeps_each_inputs_time_coords():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube import combine

    gbox = GeoBox((4, 3), Affine(30, 0, 500000, 0, -30, 4100000), "EPSG:32633")
    t = np.array(["2021-01-01", "2021-01-02"], dtype="datetime64[ns]")
    a = xr.DataArray(np.ones((2, 4, 3)), dims=("time", "y", "x"),
                     coords={"time": t, **_grid(gbox), "clear_fraction": ("time", [1.0, 0.5])})
    b = a.assign_coords(clear_fraction=("time", [0.2, 0.3]))
    cube = combine(a.rename("f"), b.rename("c"))
    assert list(cube.clear_fraction_fine.values) == [1.0, 0.5]
    assert list(cube.clear_fraction_coarse.values) == [0.2, 0.3]
