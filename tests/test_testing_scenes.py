"""Synthetic scenes: known answers, laziness, chunk invariance, grids."""

from __future__ import annotations

import time

import dask
import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter, map_coordinates

from xfusion.cube import observed_times, spatial_dims, validate_cube
from xfusion.errors import InvalidParameterError, TimeAxisError
from xfusion.testing import (
    LANDCOVER_CLASSES,
    raise_if_dask_computes,
    synthetic_cube,
    synthetic_scene,
)

SMALL = {"times": 5, "coarse_factor": 16}


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    ny, nx = a.shape[-2:]
    return a.reshape(*a.shape[:-2], ny // f, f, nx // f, f).mean(axis=(-3, -1))


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene()


def test_default_scene_contract(scene):
    ds = scene
    assert list(ds.data_vars) == ["fine", "coarse", "truth"]
    assert dict(ds.sizes) == {"time": 8, "y": 256, "x": 256}
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.indexes["time"].is_monotonic_increasing
    for name, var in ds.data_vars.items():
        assert var.dims == ("time", "y", "x")
        assert var.dtype == np.float32
        assert var.attrs["units"] == "K"
        assert var.attrs["long_name"]
        assert var.encoding["grid_mapping"] == "spatial_ref", name
    assert "spatial_ref" in ds.coords
    gbox = ds.odc.geobox
    assert gbox.crs.epsg == 32633
    assert gbox.shape == (256, 256)
    assert gbox.resolution.x == 30.0 and gbox.resolution.y == -30.0
    assert ds.attrs["coarse_factor"] == 32
    # fine: first, middle, last; coarse: every date
    assert ds.observed_fine.values.tolist() == [True, False, False, False, True, False, False, True]
    assert ds.observed_coarse.values.all()
    info = validate_cube(ds, fine="fine", coarse="coarse")
    assert info.dims == ("y", "x")
    np.testing.assert_array_equal(observed_times(ds, "fine"), ds.observed_fine.values)


def test_values_are_realistic(scene):
    truth = scene.truth.values
    assert np.isfinite(truth).all()
    assert truth.min() > 270 and truth.max() < 330
    # temperature changes over time, and differently per place
    assert truth[-1].mean() - truth[0].mean() > 2
    change = truth[-1] - truth[0]
    assert change.std() > 0.5


def test_fine_equals_truth_where_observed_and_nan_elsewhere(scene):
    fine, truth = scene.fine.values, scene.truth.values
    obs = scene.observed_fine.values
    valid = np.isfinite(fine)
    np.testing.assert_array_equal(fine[valid], truth[valid])
    assert not valid[~obs].any()  # no fine data where the sensor did not acquire
    first, *others = np.nonzero(obs)[0]
    assert valid[first].all()  # the first fine acquisition is clear
    for t in others:
        frac = 1 - valid[t].mean()
        assert 0.01 < frac < 0.6, (t, frac)  # about cloud_fraction=0.2


def test_cloud_fraction_extremes_and_per_date():
    clear = synthetic_scene((64, 64), cloud_fraction=0.0, coarse_cloud_fraction=0.0, **SMALL)
    assert np.isfinite(clear.fine.sel(time=clear.observed_fine)).all()
    assert np.isfinite(clear.coarse).all()
    per_date = synthetic_scene(
        (64, 64), cloud_fraction=[0, 0, 1, 0, 0], coarse_cloud_fraction=[1, 0, 0, 0, 0], **SMALL
    )
    assert per_date.observed_fine.values.tolist() == [True, False, True, False, True]
    assert np.isnan(per_date.fine[2]).all()
    assert np.isfinite(per_date.fine[4]).all()
    assert np.isnan(per_date.coarse[0]).all()
    assert np.isfinite(per_date.coarse[1:]).all()
    # an acquisition fully under cloud is still an acquisition
    assert per_date.observed_coarse.values.all()


def test_coarse_is_exact_block_mean_plus_bias_without_psf_and_noise():
    ds, cds = synthetic_scene(
        (96, 64),
        psf_sigma=0,
        noise=0,
        bias=1.5,
        coarse_cloud_fraction=0,
        coarse_native=True,
        **SMALL,
    )
    expected = block_mean(ds.truth.values.astype(np.float64), 16) + 1.5
    np.testing.assert_allclose(cds.coarse.values, expected, rtol=0, atol=1e-4)
    assert cds.odc.geobox.shape == (6, 4)
    assert cds.odc.geobox.resolution.x == 16 * 30.0
    assert cds.odc.geobox.affine.c == ds.odc.geobox.affine.c
    assert cds.coarse.attrs["bias"] == 1.5


def test_coarse_is_blurred_block_mean_plus_bias_within_noise():
    f, sigma = 16, 3.0
    ds, cds = synthetic_scene(
        (128, 128),
        times=4,
        coarse_factor=f,
        psf_sigma=sigma,
        noise=0.5,
        bias=1.0,
        coarse_cloud_fraction=0,
        seed=3,
        coarse_native=True,
    )
    blurred = np.stack(
        [gaussian_filter(t.astype(np.float64), sigma, truncate=4.0) for t in ds.truth.values]
    )
    expected = block_mean(blurred, f) + 1.0
    resid = cds.coarse.values - expected
    interior = resid[:, 1:-1, 1:-1]  # edge coarse pixels see beyond the scene
    assert abs(interior.mean()) < 0.15
    assert 0.4 < interior.std() < 0.6  # the noise, and nothing else
    # without noise, the interior matches the scipy reference to float precision
    _, clean = synthetic_scene(
        (128, 128),
        times=4,
        coarse_factor=f,
        psf_sigma=sigma,
        noise=0,
        bias=1.0,
        coarse_cloud_fraction=0,
        seed=3,
        coarse_native=True,
    )
    np.testing.assert_allclose((clean.coarse.values - expected)[:, 1:-1, 1:-1], 0, atol=1e-3)


def test_fine_grid_coarse_is_upsampled_native_coarse():
    kw = {"coarse_cloud_fraction": 0.3, **SMALL}
    near, native = synthetic_scene((80, 72), coarse_native=True, **kw)
    up = np.repeat(np.repeat(native.coarse.values, 16, axis=1), 16, axis=2)[:, :80, :72]
    np.testing.assert_array_equal(near.coarse.values, up)
    assert np.isnan(near.coarse.values).any()  # coarse clouds are NaN blocks

    bil = synthetic_scene((80, 72), coarse_resampling="bilinear", **kw)
    r = (np.arange(80) + 0.5) / 16 - 0.5
    c = (np.arange(72) + 0.5) / 16 - 0.5
    rr, cc = np.meshgrid(r, c, indexing="ij")
    for t in range(bil.sizes["time"]):
        ref = map_coordinates(
            native.coarse.values[t].astype(np.float64), [rr, cc], order=1, mode="nearest"
        )
        got = bil.coarse.values[t]
        ok = np.isfinite(got)
        np.testing.assert_allclose(got[ok], ref[ok], atol=1e-3)


def test_observed_coords_are_consistent(scene):
    for name in ("fine", "coarse"):
        obs = scene[f"observed_{name}"]
        assert obs.dims == ("time",) and obs.dtype == bool
        has_data = np.isfinite(scene[name].values).any(axis=(1, 2))
        np.testing.assert_array_equal(has_data, obs.values)


@pytest.mark.parametrize(
    "chunks",
    [{"time": 2, "y": 50, "x": 37}, {"time": 3, "y": 128, "x": 100}, (4, 64, 64), 56],
)
def test_lazy_scene_equals_eager_and_is_chunk_invariant(chunks):
    kw = {
        "times": 4,
        "kind": "reflectance",
        "bands": ("red", "nir"),
        "coarse_factor": 16,
        "ndvi": True,
        "sar": True,
        "landcover": True,
        "coarse_cloud_fraction": 0.3,
    }
    eager = synthetic_scene((128, 112), **kw)
    with raise_if_dask_computes():
        lazy = synthetic_scene((128, 112), chunks=chunks, **kw)
    for name, var in lazy.data_vars.items():
        assert dask.is_dask_collection(var.data), name
        assert var.data.name.startswith("xfusion.synthetic_scene."), var.data.name
    assert dask.is_dask_collection(lazy.landcover.data)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_bilinear_lazy_equals_eager():
    kw = {
        "coarse_resampling": "bilinear",
        "coarse_cloud_fraction": 0.3,
        "times": 3,
        "coarse_factor": 16,
    }
    eager = synthetic_scene((70, 90), **kw)
    lazy = synthetic_scene((70, 90), chunks={"time": 3, "y": 23, "x": 31}, **kw)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_coarse_native_lazy_equals_eager():
    _, eager = synthetic_scene((96, 64), coarse_native=True, **SMALL)
    _, lazy = synthetic_scene((96, 64), coarse_native=True, chunks={"y": 32, "x": 32}, **SMALL)
    assert dask.is_dask_collection(lazy.coarse.data)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_values_depend_on_global_index_only():
    """A bigger scene with the same seed and origin contains the smaller one."""
    small = synthetic_scene((64, 48), **SMALL)
    big = synthetic_scene((160, 128), **SMALL)
    crop = big.isel(y=slice(0, 64), x=slice(0, 48))
    for name in small.data_vars:
        np.testing.assert_array_equal(small[name].values, crop[name].values)
    other = synthetic_scene((64, 48), seed=1, **SMALL)
    assert not np.allclose(other.truth.values, small.truth.values)
    again = synthetic_scene((64, 48), **SMALL)
    xr.testing.assert_identical(again, small)


def test_large_lazy_scene_builds_instantly_and_computes_by_block(monkeypatch):
    import xfusion.testing._scenes as scenes

    ran = []
    real = scenes._block_func

    def counting(spec, what, block_info=None):
        ran.append((what[0], tuple(block_info[None]["chunk-location"])))
        return real(spec, what, block_info=block_info)

    monkeypatch.setattr(scenes, "_block_func", counting)
    start = time.perf_counter()
    with raise_if_dask_computes():
        ds = synthetic_scene((16384, 16384), times=1, chunks={"y": 2048, "x": 2048})
    assert time.perf_counter() - start < 5.0
    for name in ("fine", "coarse", "truth"):
        arr = ds[name].data
        assert arr.numblocks == (1, 8, 8)
        assert len(arr.__dask_graph__()) == 64  # one task per block, no inputs
    # a small window computes only the one block that holds it, per variable
    window = ds.isel(y=slice(2048, 2112), x=slice(4096, 4160)).compute()
    assert sorted(ran) == [(r, (0, 1, 2)) for r in ("coarse", "fine", "truth")]
    assert np.isfinite(window.truth.values).all()
    assert np.isfinite(window.coarse.values).all()


def test_geographic_crs_gives_latitude_longitude():
    for chunks in (None, {"latitude": 16, "longitude": 20}):
        ds = synthetic_scene((40, 50), crs="EPSG:4326", chunks=chunks, **SMALL)
        assert ds.fine.dims == ("time", "latitude", "longitude")
        assert spatial_dims(ds) == ("latitude", "longitude")
        gbox = ds.odc.geobox
        assert gbox.crs.epsg == 4326 and gbox.crs.geographic
        assert gbox.resolution.x == pytest.approx(0.00025)
        assert 14.0 < float(ds.longitude[0]) < 14.5 and 46.0 < float(ds.latitude[0]) < 46.5
    xr.testing.assert_identical(ds.compute(), synthetic_scene((40, 50), crs="EPSG:4326", **SMALL))


def test_reflectance_scene_bands_ndvi_and_phenology():
    ds = synthetic_scene(
        (256, 256),
        kind="reflectance",
        bands=("blue", "red", "nir08", "swir16"),
        ndvi=True,
        landcover=True,
        times=["2021-04-03T10:00", "2021-06-10T10:00", "2021-07-20T10:00"],
    )
    for band in ("blue", "red", "nir08", "swir16"):
        for role in ("fine", "coarse", "truth"):
            assert f"{role}_{band}" in ds.data_vars
            assert ds[f"{role}_{band}"].attrs["units"] == "1"
        assert f"observed_fine_{band}" in ds.coords and f"observed_coarse_{band}" in ds.coords
        truth = ds[f"truth_{band}"].values
        assert truth.min() >= 0 and truth.max() <= 1
    red, nir = ds.truth_red.values, ds.truth_nir08.values
    np.testing.assert_allclose(ds.ndvi.values, (nir - red) / (nir + red), rtol=1e-6)
    lc = ds.landcover.values
    assert set(np.unique(lc)) == set(range(len(LANDCOVER_CLASSES)))
    crop = lc == LANDCOVER_CLASSES.index("cropland")
    water = lc == LANDCOVER_CLASSES.index("water")
    ndvi = ds.ndvi.values
    assert ndvi[1][crop].mean() > ndvi[0][crop].mean() + 0.3  # crops green up
    assert ndvi[1][water].mean() < 0
    validate_cube(ds, fine=["fine_red", "fine_nir08"], coarse=["coarse_red", "coarse_nir08"])


def test_lst_classes_behave_differently():
    ds = synthetic_scene((256, 256), landcover=True, times=["2021-04-03T10:00", "2021-07-15T10:00"])
    lc = ds.landcover.values
    summer = ds.truth.values[1]
    cls = {name: lc == i for i, name in enumerate(LANDCOVER_CLASSES)}
    assert summer[cls["water"]].mean() < summer[cls["forest"]].mean() < summer[cls["urban"]].mean()
    assert ds.landcover.attrs["flag_meanings"].split() == list(LANDCOVER_CLASSES)


def test_sar_backscatter():
    ds = synthetic_scene((128, 128), sar=True, landcover=True, **SMALL)
    vv, vh = ds.vv.values, ds.vh.values
    assert (vv > 0).all() and (vh > 0).all()
    assert np.median(vv) > np.median(vh)
    assert ds.observed_vv.values.all() and ds.observed_vh.values.all()
    # 4-look speckle: relative std of a ratio of two dates' linear power is large
    assert np.std(vv[1] / vv[0]) > 0.3


def test_scene_parameter_errors():
    with pytest.raises(InvalidParameterError, match=r"kind='ndvi'.*'lst', 'reflectance'"):
        synthetic_scene((8, 8), kind="ndvi")
    with pytest.raises(InvalidParameterError, match="only applies to kind='reflectance'"):
        synthetic_scene((8, 8), bands=("red",))
    with pytest.raises(InvalidParameterError, match="unknown or repeated bands \\['cyan'\\]"):
        synthetic_scene((8, 8), kind="reflectance", bands=("red", "cyan"))
    with pytest.raises(InvalidParameterError, match="not one of the scene dates"):
        synthetic_scene((8, 8), times=3, fine_times=["2030-01-01"])
    with pytest.raises(TimeAxisError, match="sorted"):
        synthetic_scene((8, 8), times=["2021-05-01", "2021-04-01"])
    with pytest.raises(InvalidParameterError, match="cloud fractions are in \\[0, 1\\]"):
        synthetic_scene((8, 8), cloud_fraction=1.5)
    with pytest.raises(InvalidParameterError, match="coarse_resampling='cubic'"):
        synthetic_scene((8, 8), coarse_resampling="cubic")
    with pytest.raises(InvalidParameterError, match="chunks has an unknown dimension 'band'"):
        synthetic_scene((8, 8), chunks={"band": 1})
    with pytest.raises(InvalidParameterError, match="crs='EPSG:999999' is not a CRS"):
        synthetic_scene((8, 8), crs="EPSG:999999")
    with pytest.raises(InvalidParameterError, match="must be positive"):
        synthetic_scene((0, 8))


def test_fine_times_by_index_and_date():
    a = synthetic_scene((16, 16), times=6, fine_times=[1, 4], coarse_factor=8)
    b = synthetic_scene(
        (16, 16), times=6, coarse_factor=8, fine_times=[a.time.values[1], str(a.time.values[4])]
    )
    assert a.observed_fine.values.tolist() == [False, True, False, False, True, False]
    xr.testing.assert_identical(a, b)


def test_eager_small_scene_is_fast():
    synthetic_scene((64, 64), times=2)  # warm imports
    start = time.perf_counter()
    synthetic_scene((256, 256), times=8)
    assert time.perf_counter() - start < 3.0  # ~0.05 s on an idle core


def test_synthetic_cube(backend):
    chunks = {"y": 5, "x": 7} if backend == "dask" else None
    ds = synthetic_cube((12, 12), times=3, bands=("red", "nir"), chunks=chunks)
    assert list(ds.data_vars) == ["red", "nir"]
    assert dict(ds.sizes) == {"time": 3, "y": 12, "x": 12}
    assert ds.odc.geobox.crs.epsg == 32633
    assert dask.is_dask_collection(ds.red.data) == (backend == "dask")
    ref = synthetic_cube((12, 12), times=3, bands=("red", "nir"))
    xr.testing.assert_identical(ds.compute(), ref)
    v = ref.to_array().values
    assert v.dtype == np.float32 and v.min() >= 0 and v.max() < 1
    assert not np.allclose(ref.red.values, ref.nir.values)
    geo = synthetic_cube((6, 4), bands=2, crs="EPSG:4326")
    assert list(geo.data_vars) == ["band0", "band1"]
    assert geo.band0.dims == ("time", "latitude", "longitude")
