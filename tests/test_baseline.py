"""Naive baselines: known answers, pair selection, numpy == dask, laziness."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

import xfusion
from xfusion.cube import from_geotiffs, from_numpy, get_geobox
from xfusion.cube.roles import (
    float_data,
    resolve_roles,
    select_bracket,
    select_pairs,
    select_targets,
    stack_vars,
)
from xfusion.methods.baseline import baseline
from xfusion.testing import raise_if_dask_computes

GBOX = GeoBox((12, 12), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
DATES = ["2020-01-01", "2020-01-05", "2020-01-09", "2020-01-13", "2020-01-17"]
#                    pair          target        pair          target        target
FINE_OBS = [True, False, True, False, False]
COARSE_OBS = [True, True, True, True, True]


def make_cube(
    backend,
    fine,
    coarse,
    *,
    chunks=(5, 7),
    fine_obs=FINE_OBS,
    coarse_obs=COARSE_OBS,
    times=DATES,
    gbox=GBOX,
    **extra,
):
    data = {"fine": fine, "coarse": coarse, **extra}
    if backend == "dask":
        data = {k: da.from_array(v, chunks=(1, *chunks)) for k, v in data.items()}
    observed = {"fine": fine_obs, "coarse": coarse_obs}
    return from_numpy(data, geobox=gbox, times=times, observed=observed)


def constant_cube(backend, a, b, c):
    n = len(DATES)
    fine = np.full((n, 12, 12), np.nan, "float32")
    fine[[0, 2]] = a
    coarse = np.full((n, 12, 12), c, "float32")
    coarse[[0, 2]] = b
    return make_cube(backend, fine, coarse)


@pytest.mark.parametrize(
    ("a", "b", "c"), [(0.2, 0.25, 0.3), (1500.0, 1000.0, 1000.0), (3.0, 5.0, -2.0)]
)
def test_constant_fields_give_a_plus_c_minus_b(backend, a, b, c):
    ds = constant_cube(backend, a, b, c)
    out = baseline(ds, fine="fine", coarse="coarse")
    expected = np.float32(a) + (np.float32(c) - np.float32(b))
    np.testing.assert_array_equal(out.fine.values, np.full((3, 12, 12), expected, "float32"))
    persist = baseline(ds, fine="fine", coarse="coarse", method="fine-at-pair")
    np.testing.assert_array_equal(persist.fine.values, np.float32(a))


def test_no_coarse_change_gives_fine_back(backend, rng):
    n = len(DATES)
    fine = np.full((n, 12, 12), np.nan, "float32")
    fine[0] = rng.random((12, 12))
    coarse = np.repeat(rng.random((1, 12, 12)).astype("float32"), n, axis=0)
    ds = make_cube(backend, fine, coarse, fine_obs=[True, False, False, False, False])
    out = baseline(ds, fine="fine", coarse="coarse")
    for k in range(out.sizes["time"]):
        np.testing.assert_array_equal(out.fine.values[k], fine[0])


def test_brute_force_reference_and_pair_rules(backend, rng):
    n = len(DATES)
    fine = rng.random((n, 12, 12)).astype("float32")
    fine[[1, 3, 4]] = np.nan
    coarse = rng.random((n, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, coarse)
    t = np.array(DATES, "datetime64[ns]")
    # nearest: before when there is one; before: same; after: 01-13 and 01-17 have none
    cases = {"nearest": [0, 2, 2], "before": [0, 2, 2]}
    for rule, pairs in cases.items():
        out = baseline(ds, fine="fine", coarse="coarse", pairs=rule)
        np.testing.assert_array_equal(out.time.values, t[[1, 3, 4]])
        np.testing.assert_array_equal(out.pair_time.values, t[pairs])
        for k, (ti, pi) in enumerate(zip([1, 3, 4], pairs, strict=True)):
            ref = fine[pi] + (coarse[ti] - coarse[pi])
            np.testing.assert_array_equal(out.fine.values[k], ref)
    out = baseline(ds, fine="fine", coarse="coarse", targets=["2020-01-05"], pairs="after")
    np.testing.assert_array_equal(out.pair_time.values, t[[2]])
    np.testing.assert_array_equal(out.fine.values[0], fine[2] + (coarse[1] - coarse[2]))


def test_nearest_falls_back_to_after(backend, rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, fine, fine_obs=[False, False, True, False, True])
    out = baseline(ds, fine="fine", coarse="coarse")
    t = np.array(DATES, "datetime64[ns]")
    np.testing.assert_array_equal(out.time.values, t[[0, 1, 3]])
    np.testing.assert_array_equal(out.pair_time.values, t[[2, 2, 2]])


def test_target_never_its_own_pair(backend, rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    coarse = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, coarse)
    # 01-09 has a fine image: predicting it (validation) uses the pair 01-01, not itself
    out = baseline(ds, fine="fine", coarse="coarse", targets="2020-01-09")
    assert str(out.pair_time.values[0])[:10] == "2020-01-01"
    np.testing.assert_array_equal(out.fine.values[0], fine[0] + (coarse[2] - coarse[0]))


def test_explicit_pairs(backend, rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    coarse = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, coarse)
    t = np.array(DATES, "datetime64[ns]")
    one = baseline(
        ds, fine="fine", coarse="coarse", targets=["2020-01-05", "2020-01-13"], pairs="2020-01-09"
    )
    np.testing.assert_array_equal(one.pair_time.values, t[[2, 2]])
    per = baseline(
        ds,
        fine="fine",
        coarse="coarse",
        targets=["2020-01-05", "2020-01-13"],
        pairs=["2020-01-09", "2020-01-01"],
    )
    np.testing.assert_array_equal(per.pair_time.values, t[[2, 0]])
    np.testing.assert_array_equal(per.fine.values[1], fine[0] + (coarse[3] - coarse[0]))
    unsorted = baseline(
        ds,
        fine="fine",
        coarse="coarse",
        targets=["2020-01-13", "2020-01-05"],
        pairs=["2020-01-01", "2020-01-09"],
    )
    xr.testing.assert_identical(unsorted, per)  # output time sorted, pairs carried along
    mapped = baseline(
        ds,
        fine="fine",
        coarse="coarse",
        targets=["2020-01-05", "2020-01-13"],
        pairs={"2020-01-13": "2020-01-01", "2020-01-05": "2020-01-09"},
    )
    xr.testing.assert_identical(mapped, per)


def test_explicit_arguments_work_without_observed_coords(backend, rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, fine).drop_vars(["observed_fine", "observed_coarse"])
    out = baseline(ds, fine="fine", coarse="coarse", targets="2020-01-13", pairs="2020-01-01")
    np.testing.assert_array_equal(out.fine.values[0], fine[0] + (fine[3] - fine[0]))


def test_numpy_equals_dask_with_ragged_and_different_chunks(rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    fine[rng.random(fine.shape) < 0.1] = np.nan
    coarse = rng.random((5, 12, 12)).astype("float32")
    ds_np = make_cube("numpy", fine, coarse)
    ds_dk = make_cube("dask", fine, coarse)
    ds_dk["coarse"] = ds_dk.coarse.chunk({"time": 2, "y": 4, "x": 12})  # unlike fine's
    for method in ("fine-plus-change", "fine-at-pair"):
        a = baseline(ds_np, fine="fine", coarse="coarse", method=method)
        b = baseline(ds_dk, fine="fine", coarse="coarse", method=method)
        assert dask.is_dask_collection(b.fine.data)
        xr.testing.assert_identical(a, b.compute())


def test_lazy_named_and_distinct_keys(rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube("dask", fine, fine * 2)
    ds2 = make_cube("dask", fine + 1, fine * 2)
    with raise_if_dask_computes():
        out = baseline(ds, fine="fine", coarse="coarse")
        out2 = baseline(ds2, fine="fine", coarse="coarse")
        persist = baseline(ds, fine="fine", coarse="coarse", method="fine-at-pair")
    for o in (out, out2, persist):
        assert dask.is_dask_collection(o.fine.data)
        assert o.fine.data.name.startswith("xfusion.baseline-")
    assert out.fine.data.name != out2.fine.data.name
    assert out.fine.data.name != persist.fine.data.name
    assert out.fine.name == "fine"
    np_out = baseline(make_cube("numpy", fine, fine * 2), fine="fine", coarse="coarse")
    assert np_out.fine.name == out.fine.name == "fine"
    assert isinstance(np_out.fine.data, np.ndarray)


def test_output_keeps_grid_crs_and_attrs(backend, rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, fine)
    ds.attrs["title"] = "test cube"
    ds["fine"].attrs["units"] = "1"
    out = baseline(ds, fine="fine", coarse="coarse")
    assert out.fine.dims == ("time", "y", "x")
    assert out.attrs["title"] == "test cube"
    assert out.fine.attrs["units"] == "1"
    assert get_geobox(out) == GBOX
    assert "spatial_ref" in out.coords
    assert out.pair_time.dims == ("time",)
    assert not any(str(c).startswith("observed_") for c in out.coords)
    xr.testing.assert_identical(out.x, ds.x)
    assert list(out.data_vars) == ["fine"]


def test_multiband_lists_paired_by_position(backend, rng):
    n = len(DATES)
    red, nir = rng.random((n, 12, 12)).astype("float32"), rng.random((n, 12, 12)).astype("float32")
    data = {"fine_red": red, "fine_nir": nir, "coarse_red": red * 2, "coarse_nir": nir * 3}
    if backend == "dask":
        data = {k: da.from_array(v, chunks=(1, 6, 6)) for k, v in data.items()}
    obs = {
        "fine_red": FINE_OBS,
        "fine_nir": FINE_OBS,
        "coarse_red": COARSE_OBS,
        "coarse_nir": COARSE_OBS,
    }
    ds = from_numpy(data, geobox=GBOX, times=DATES, observed=obs)
    out = baseline(ds, fine=["fine_red", "fine_nir"], coarse=["coarse_red", "coarse_nir"])
    assert list(out.data_vars) == ["fine_red", "fine_nir"]
    cr, cn = red * 2, nir * 3
    np.testing.assert_array_equal(out.fine_red.values[0], red[0] + (cr[1] - cr[0]))
    np.testing.assert_array_equal(out.fine_nir.values[0], nir[0] + (cn[1] - cn[0]))


def test_nan_in_means_nan_out(backend):
    ds = constant_cube(backend, 1.0, 2.0, 3.0)
    ds["fine"] = ds.fine.where(~((ds.y == ds.y[0]) & (ds.x == ds.x[0])))
    ds["coarse"] = ds.coarse.where(~((ds.y == ds.y[5]) & (ds.x == ds.x[5])))
    out = baseline(ds, fine="fine", coarse="coarse").fine.values
    assert np.isnan(out[:, 0, 0]).all() and np.isnan(out[:, 5, 5]).all()
    assert np.count_nonzero(np.isnan(out)) == 2 * out.shape[0]
    assert np.nanmax(out) == np.nanmin(out) == 2.0


def test_integer_fine_with_nodata(backend):
    fine = np.full((5, 12, 12), -9999, "int16")
    fine[[0, 2]] = 100
    fine[0, 0, 0] = -9999
    coarse = np.full((5, 12, 12), 7, "float32")
    ds = make_cube(backend, fine.astype("float32"), coarse)
    ds["fine"] = ds.fine.astype("int16")
    ds["fine"].attrs["nodata"] = -9999
    out = baseline(ds, fine="fine", coarse="coarse")
    assert out.fine.dtype == np.float32
    assert "nodata" not in out.fine.attrs
    assert np.isnan(out.fine.values[0, 0, 0])  # target 01-05 uses the pair 01-01
    assert out.fine.values[0, 1, 1] == 100.0


def test_date_only_targets_match_acquisition_times(rng):
    times = [f"{d}T10:{i}5:00" for i, d in enumerate(DATES)]
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube("numpy", fine, fine, times=times)
    out = baseline(ds, fine="fine", coarse="coarse", targets="2020-01-13", pairs="2020-01-09")
    assert str(out.time.values[0]).startswith("2020-01-13T10:35")


def test_geographic_cube(backend, rng):
    g = GeoBox((12, 12), Affine(0.001, 0, 146, 0, -0.001, -34.8), "EPSG:4326")
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube(backend, fine, fine + 1, gbox=g)
    out = baseline(ds, fine="fine", coarse="coarse")
    assert out.fine.dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(out.fine.values[0], fine[0] + ((fine[1] + 1) - (fine[0] + 1)))


def test_bracket_selection(rng):
    fine = rng.random((5, 12, 12)).astype("float32")
    ds = make_cube("numpy", fine, fine, fine_obs=[True, False, True, False, True])
    roles = resolve_roles(ds, "fine", "coarse", method="test")
    tidx = select_targets(ds, roles, None, method="test")
    assert tidx.tolist() == [1, 3]
    before, after = select_bracket(ds, roles, tidx, method="test")
    assert before.tolist() == [0, 2] and after.tolist() == [2, 4]
    b2, a2 = select_bracket(ds, roles, tidx, ("2020-01-01", "2020-01-17"), method="test")
    assert b2.tolist() == [0, 0] and a2.tolist() == [4, 4]
    assert select_pairs(ds, roles, tidx, "after", method="test").tolist() == [2, 4]


def test_stack_vars_and_float_data(backend):
    n = len(DATES)
    red = np.arange(n * 144, dtype="int16").reshape(n, 12, 12)
    nir = red * 2
    data = {"red": red, "nir": nir}
    if backend == "dask":
        data = {k: da.from_array(v, chunks=(1, 5, 7)) for k, v in data.items()}
    ds = from_numpy(data, geobox=GBOX, times=DATES, nodata=-1)  # int -> float32 with NaN
    ds["raw"] = ds.red.astype("int16")
    ds["raw"].attrs["nodata"] = 0
    with raise_if_dask_computes():
        st = stack_vars(ds, ["red", "nir"])
        f = float_data(ds, "raw")
    assert st.dims == ("time", "band", "y", "x")
    assert st.band.values.tolist() == ["red", "nir"]
    np.testing.assert_array_equal(st.values[:, 1], nir)
    assert f.dtype == np.float32 and f.name == "raw" and "nodata" not in f.attrs
    assert np.isnan(f.values[0, 0, 0]) and f.values[0, 0, 1] == 1.0
    assert dask.is_dask_collection(st.data) == (backend == "dask")


def test_real_yanco_lst_known_rmse(shared_data):
    """Naive baselines on real LST: Landsat 02-05 vs truth 03-08 has RMSE about 8.9 K."""
    d = os.path.join(shared_data, "yanco_lst", "1_test_data")
    ds = from_geotiffs(
        fine={
            "2016-02-05": os.path.join(d, "Landsat_LST_cloudrm_20160205.tif"),
            "2016-03-08": os.path.join(d, "Landsat_LST_cloudrm_20160308.tif"),
        },
        coarse={
            day: os.path.join(d, f"MOD11A1_LST_cloudrm_{day.replace('-', '')}.tif")
            for day in ("2016-02-05", "2016-02-18", "2016-03-08")
        },
        chunks=200,
    )
    truth = ds.fine.sel(time="2016-03-08").values

    def rmse(method):
        with raise_if_dask_computes():
            out = baseline(ds, fine="fine", coarse="coarse", targets="2016-03-08", method=method)
        assert str(out.pair_time.values[0])[:10] == "2016-02-05"
        err = out.fine.values[0] - truth
        return float(np.sqrt(np.nanmean(err**2)))

    assert rmse("fine-at-pair") == pytest.approx(8.85, abs=0.05)
    assert rmse("fine-plus-change") == pytest.approx(4.98, abs=0.05)  # better than MODIS (5.2 K)


@pytest.mark.skipif(
    not hasattr(xfusion.accessor.FusionDatasetAccessor, "baseline"),
    reason="accessor line for baseline not added yet",
)
def test_accessor_equals_function(backend):
    ds = constant_cube(backend, 1.0, 2.0, 4.0)
    kw = {"fine": "fine", "coarse": "coarse", "pairs": "before"}
    xr.testing.assert_identical(ds.fusion.baseline(**kw), baseline(ds, **kw))
    assert ds.fusion.baseline.__doc__ == baseline.__doc__
