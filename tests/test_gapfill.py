"""gapfill(): baselines with known answers, observed values kept bit for bit, laziness, parity.

STORI itself (torch) is tested in test_gapfill_stori.py; everything here runs without torch.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import dask
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

import xfusion
from xfusion import gapfill
from xfusion.cube import from_numpy
from xfusion.errors import ChunkingError, EmptySeriesWarning, InvalidParameterError
from xfusion.testing import raise_if_dask_computes, simulate_gaps, synthetic_series

GBOX = GeoBox((6, 7), Affine(10, 0, 500000, 0, -10, 5000000), "EPSG:32633")
NT = 20
TIMES = np.datetime64("2021-01-01", "ns") + np.arange(NT) * np.timedelta64(8, "D")
T_DAYS = np.arange(NT) * 8.0


def cube(values, **kw):
    return from_numpy({"ndvi": values, **kw}, geobox=GBOX, times=TIMES)


def gappy(rng, field, frac=0.4):
    v = field.astype("float32").copy()
    hole = rng.random(v.shape) < frac
    hole[0] &= False  # keep both ends observed so interpolation is two-sided
    hole[-1] &= False
    v[hole] = np.nan
    return v


def linear_field():
    a = np.linspace(0.1, 0.5, 42).reshape(1, 6, 7)
    b = np.linspace(-0.01, 0.01, 42).reshape(1, 6, 7)
    return a + b * np.arange(NT)[:, None, None]


@pytest.mark.parametrize("method", ["linear", "savgol"])
def test_linear_signal_is_reconstructed_exactly(rng, method):
    truth = linear_field()
    ds = cube(gappy(rng, truth))
    out = gapfill(ds, method=method, window=5)
    np.testing.assert_allclose(out.ndvi.values, truth, atol=2e-6)


def test_harmonic_signal_is_reconstructed_exactly(rng):
    w = 2 * np.pi * T_DAYS / 365.25
    t = T_DAYS - T_DAYS.mean()
    wc = 2 * np.pi * t / 365.25
    base = np.linspace(0.2, 0.6, 42).reshape(1, 6, 7)
    truth = base + 0.2 * np.cos(wc)[:, None, None] - 0.1 * np.sin(2 * wc)[:, None, None]
    assert w.shape == (NT,)
    ds = cube(gappy(rng, truth, frac=0.3))
    out = gapfill(ds, method="harmonic", harmonics=2)
    np.testing.assert_allclose(out.ndvi.values, truth, atol=1e-5)
    np.testing.assert_allclose(out.ndvi_uncertainty.values, 0.0, atol=1e-5)


def brute_linear(series, days):
    obs = ~np.isnan(series)
    return np.interp(days, days[obs], series[obs])


def test_linear_matches_numpy_interp_per_pixel(rng):
    v = rng.random((NT, 6, 7)).astype("float32")
    v[rng.random(v.shape) < 0.5] = np.nan
    v[:, 0, 0] = np.nan
    v[3, 0, 0] = 0.7  # a single observation: constant series
    out = gapfill(cube(v), method="linear")
    for i in range(6):
        for j in range(7):
            np.testing.assert_allclose(out.ndvi.values[:, i, j], brute_linear(v[:, i, j], T_DAYS),
                                       rtol=1e-6)


@pytest.mark.parametrize("method", ["linear", "savgol", "harmonic"])
def test_observed_bit_identical_and_outputs(rng, method):
    v = rng.random((NT, 6, 7)).astype("float32") * 0.8
    v[rng.random(v.shape) < 0.45] = np.nan
    out = gapfill(cube(v), method=method)
    obs = ~np.isnan(v)
    assert out.ndvi.dtype == np.float32
    assert np.array_equal(out.ndvi.values[obs].view(np.uint32), v[obs].view(np.uint32))
    np.testing.assert_array_equal(out.ndvi_filled.values, ~obs)
    assert np.isfinite(out.ndvi.values).all()
    assert (out.ndvi_uncertainty.values[obs] == 0).all()
    unc = out.ndvi_uncertainty.values[~obs]
    assert (unc[np.isfinite(unc)] >= 0).all()
    assert out.attrs["gapfill_method"] == method and "spatial_ref" in out.coords


def test_linear_uncertainty_is_forward_backward_disagreement():
    v = np.full((NT, 6, 7), np.nan, "float32")
    v[2], v[6] = 0.2, 0.5
    out = gapfill(cube(v), method="linear")
    u = out.ndvi_uncertainty.values[:, 0, 0]
    np.testing.assert_allclose(u[3:6], 0.3, rtol=1e-6)
    assert np.isnan(u[:2]).all() and np.isnan(u[7:]).all()  # one-sided: undefined
    assert u[2] == 0 and u[6] == 0


def test_float64_input_stays_float64(rng):
    v = gappy(rng, linear_field()).astype("float64")
    out = gapfill(cube(v), method="linear")
    assert out.ndvi.dtype == np.float64 and out.ndvi_uncertainty.dtype == np.float64
    obs = ~np.isnan(v)
    assert np.array_equal(out.ndvi.values[obs], v[obs])


@pytest.mark.parametrize("method", ["linear", "savgol", "harmonic"])
def test_numpy_equals_dask_ragged_chunks_lazy(rng, method):
    v = rng.random((NT, 6, 7)).astype("float32")
    v[rng.random(v.shape) < 0.4] = np.nan
    ds = cube(v)
    ref = gapfill(ds, method=method)
    lazy = ds.chunk({"time": -1, "y": 4, "x": 3})
    with raise_if_dask_computes():
        out = gapfill(lazy, method=method)
        out2 = lazy.fusion.gapfill(method=method, window=5)
    for var in out.data_vars.values():
        assert dask.is_dask_collection(var.data)
    assert any(str(k).startswith("xfusion.gapfill-") for k in out.ndvi.data.dask.layers)
    assert out.ndvi.data.name != out2.ndvi.data.name  # different parameters, different keys
    assert out.ndvi.name == ref.ndvi.name == "ndvi"
    xr.testing.assert_identical(out.compute(), ref)
    other = gapfill(ds.chunk({"time": -1, "y": 2, "x": 5}), method=method).compute()
    xr.testing.assert_identical(other, ref)  # chunk invariance


def test_accessor_equals_function_and_docstring(rng):
    ds = cube(gappy(rng, linear_field()))
    xr.testing.assert_identical(ds.fusion.gapfill(method="savgol"), gapfill(ds, method="savgol"))
    assert xr.Dataset.fusion.gapfill.__doc__ == gapfill.__doc__
    assert xfusion.gapfill is gapfill


def test_series_without_observation_is_nan_with_warning_count(rng):
    v = rng.random((NT, 6, 7)).astype("float32")
    v[:, 1, :3] = np.nan  # three empty series
    ds = cube(v)
    with pytest.warns(EmptySeriesWarning, match=r"3 of 42 pixel series of 'ndvi' .* no observ"):
        out = gapfill(ds, method="linear")
    assert np.isnan(out.ndvi.values[:, 1, :3]).all()
    assert not out.ndvi_filled.values[:, 1, :3].any()
    lazy = gapfill(ds.chunk({"time": -1, "y": 3, "x": 7}), method="linear")
    with pytest.warns(EmptySeriesWarning, match=r"3 of 21 pixel series"):
        lazy.compute(scheduler="sync")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptySeriesWarning)
        gapfill(cube(np.ones((NT, 6, 7), "float32")), method="linear")  # nothing to warn about


def test_time_axis_split_across_chunks(rng):
    ds = cube(gappy(rng, linear_field())).chunk({"time": 5})
    with pytest.raises(ChunkingError, match=r"split into 4 chunks along 'time'"):
        gapfill(ds, method="linear")
    out = gapfill(ds, method="linear", rechunk=True)
    xr.testing.assert_identical(out.compute(), gapfill(ds.compute(), method="linear"))


def test_geographic_crs_dims(rng):
    gb = GeoBox((6, 7), Affine(0.001, 0, 14.0, 0, -0.001, 46.0), "EPSG:4326")
    ds = from_numpy({"ndvi": gappy(rng, linear_field())}, geobox=gb, times=TIMES)
    out = gapfill(ds, method="linear")
    assert out.ndvi.dims == ("time", "latitude", "longitude")
    np.testing.assert_allclose(out.ndvi.values, linear_field(), atol=2e-6)


def test_baselines_ignore_sar_and_multiple_optical(rng):
    v = gappy(rng, linear_field())
    ds = cube(v, red=v * 2)
    out = gapfill(ds, optical=["ndvi", "red"], sar=None, method="linear")
    assert sorted(out.data_vars) == ["ndvi", "ndvi_filled", "ndvi_uncertainty", "red",
                                     "red_filled", "red_uncertainty"]
    np.testing.assert_allclose(out.red.values, 2 * linear_field(), atol=4e-6)


def test_bad_parameters():
    ds = cube(np.ones((NT, 6, 7), "float32"))
    with pytest.raises(InvalidParameterError, match=r"Unknown method='kriging' for gapfill"):
        gapfill(ds, method="kriging")
    with pytest.raises(InvalidParameterError, match="polyorder=5 must be smaller than window=5"):
        gapfill(ds, method="savgol", window=5, polyorder=5)
    with pytest.raises(InvalidParameterError, match="harmonics=-1 must be an integer >= 0"):
        gapfill(ds, method="harmonic", harmonics=-1)


def test_synthetic_series_and_simulate_gaps():
    ds = synthetic_series((12, 12), seed=2)
    assert ds.sizes["time"] == 46 and ds.ndvi.dtype == np.float32
    obs = ds.ndvi.notnull().values
    assert 0.3 < obs.mean() < 0.9  # clouds
    assert np.isfinite(ds.ndvi_true.values).all()
    assert np.abs(ds.ndvi.values - ds.ndvi_true.values)[obs].mean() < 0.03  # noise only
    runs = []  # the composites have long gaps (40+ days = 5+ steps)
    for p in obs.reshape(46, -1).T:
        r = 0
        for o in p:
            r = 0 if o else r + 1
            runs.append(r)
    assert max(runs) >= 5
    g, hid = simulate_gaps(ds.ndvi, fraction=0.2, seed=0)
    assert hid.values.any() and not (hid.values & ~obs).any()
    assert np.isnan(g.values[hid.values]).all()
    assert np.array_equal(g.values[~hid.values], ds.ndvi.values[~hid.values], equal_nan=True)
    again = synthetic_series((12, 12), seed=2)
    xr.testing.assert_identical(ds, again)


def test_import_without_torch_and_baselines_work():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, xfusion\n"
        "from xfusion.testing import synthetic_series\n"
        "from xfusion.methods.gapfill import StoriConfig\n"
        "ds = synthetic_series((6, 6))\n"
        "out = xfusion.gapfill(ds, method='linear')\n"
        "assert np.isfinite(out.ndvi.values).all()\n"
        "res = xfusion.gapfill(ds, method='stori', config=StoriConfig(rounds=20))\n"
        "assert np.isfinite(res.ndvi.values).all()  # the default variant needs no torch\n"
        "try:\n"
        "    xfusion.gapfill(ds, method='stori', variant='faithful')\n"
        "except xfusion.errors.MissingOptionalDependency as e:\n"
        "    assert \"pip install 'xfusion[torch]'\" in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def test_stori_config_variants_and_overrides():
    from xfusion.training.stori import StoriConfig
    from xfusion.training.stori import resolve_config as _resolve_config

    faithful = StoriConfig(variant="faithful")
    assert (faithful.decay, faithful.sar_first, faithful.sar_scaling, faithful.sar_window,
            faithful.epochs, faithful.lr_step, faithful.patience, faithful.val_fraction,
            faithful.augment, faithful.optical_scaling) == (
        "sar", False, "sample", 19, 250, None, None, 0.0, 0.0, "none")
    fixed = StoriConfig(variant="fixed")
    assert (fixed.decay, fixed.sar_first, fixed.sar_scaling, fixed.patience) == (
        "optical", True, "scene", 10)
    assert fixed.hidden == faithful.hidden == 96 and fixed.consistency == 0.1
    default = StoriConfig()
    assert default.variant == "residual" and not default.recurrent
    assert (default.rounds, default.lr, default.patience, default.val_fraction,
            default.hidden, default.epochs) == (500, 0.1, 60, 0.2, None, None)
    # None is a value of its own: no early stopping, a constant learning rate
    assert StoriConfig(variant="fixed", patience=None).patience is None
    assert StoriConfig(variant="fixed", lr_step=None).lr_step is None
    assert StoriConfig(patience=None).patience is None
    with pytest.raises(InvalidParameterError, match=r"does not use \['hidden'\].*variant='fixed'"):
        StoriConfig(hidden=8)
    with pytest.raises(InvalidParameterError, match=r"does not use \['rounds'\]"):
        StoriConfig(variant="faithful", rounds=8)
    assert _resolve_config(default, {"variant": "fixed"}) == fixed
    assert _resolve_config(fixed, {"variant": "residual"}) == default
    # switching the variant keeps explicit choices and re-derives the rest
    mine = StoriConfig(variant="fixed", epochs=3, sar_window=5)
    switched = _resolve_config(mine, {"variant": "faithful", "seed": 4})
    assert (switched.epochs, switched.sar_window, switched.decay, switched.seed) == (
        3, 5, "sar", 4)
    assert switched.patience is None and switched.sar_scaling == "sample"
    with pytest.raises(InvalidParameterError, match=r"StoriConfig.val_fraction must be in"):
        StoriConfig(val_fraction=0.7)
    with pytest.raises(InvalidParameterError, match=r"Unknown variant='paper'"):
        StoriConfig(variant="paper")
