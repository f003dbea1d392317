"""Tests of the public FSDAF method (xfusion.methods.fsdaf.fsdaf).

(a) the public function against the brute-force transcription (tests/_ref_fsdaf.py);
(b) numpy == dask, chunk invariance with ragged chunks (ISODATA, K and the thresholds are
    global, the blocks are on the coarse grid), laziness and graph keys;
(c) known answers through the API: zero change, uniform change, blocks=False on one block;
(d) the scale factor (given, cube attribute, detected, refused), integer I/O, diagnostics,
    pairs and targets, parameters and errors;
(e) accuracy: better than the naive baselines on a synthetic scene and on Kranj.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from _ref_fsdaf import make_scene, ref_fsdaf
from affine import Affine
from odc.geo.geobox import GeoBox

from xfusion.cube import from_numpy
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    NotEnoughDataError,
    XFusionError,
)
from xfusion.methods import fsdaf as F
from xfusion.methods.fsdaf import FSDAF_PRESETS, PARAMS, FsdafParams, fsdaf, halo
from xfusion.testing import assert_lazy, raise_if_dask_computes

TIMES = ["2020-01-01", "2020-01-09", "2020-01-17", "2020-01-25"]


def shared_data_dir():
    for p in Path(__file__).resolve().parents:
        cand = p / "shared" / "data"
        if cand.is_dir():
            return cand
    pytest.skip("shared data folder not found (../shared/data)")


def cube_from(f1, c1, c2, *, f2=None, dtype="float64", chunks=None, extra_targets=0):
    """(time, y, x) cube: pair at TIMES[0], target(s) after; bands fine{b}/coarse{b}."""
    nb, ny, nx = f1.shape
    nt = 2 + extra_targets
    data, obs = {}, {}
    for b in range(nb):
        fine = np.full((nt, ny, nx), np.nan)
        fine[0] = f1[b]
        coarse = np.stack([c1[b]] + [c2[b] + 10.0 * k for k in range(nt - 1)])
        data[f"fine{b}"] = fine.astype(dtype)
        data[f"coarse{b}"] = coarse.astype(dtype)
        obs[f"fine{b}"] = [True] + [False] * (nt - 1)
        obs[f"coarse{b}"] = [True] * nt
    if chunks is not None:
        data = {k: da.from_array(v, chunks=chunks) for k, v in data.items()}
    gbox = GeoBox((ny, nx), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    return from_numpy(data, geobox=gbox, times=TIMES[:nt], observed=obs)


def names(nb):
    return [f"fine{b}" for b in range(nb)], [f"coarse{b}" for b in range(nb)]


def rechunk(ds, chunks):
    out = ds.copy()
    for v in ds.data_vars:
        out[v] = ds[v].copy(data=da.from_array(ds[v].values, chunks=chunks))
    return out


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(21)
    return make_scene(rng, nb=2, shape=(56, 50), s=8, nan_px=6)


# ---------------------------------------------------------------------------------------------
# (a) brute force through the API


def test_public_function_matches_brute_force(scene):
    f1, c1, c2, cls, _ = scene
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    out = fsdaf(ds, fine=fine, coarse=coarse, classes=cls, scale_factor=8, half_window=4,
                block_cells=3)  # fmt: skip
    ref, _, _ = ref_fsdaf(f1, c1, c2, cls, s=8, w=4, block_cells=3)
    got = np.stack([out[f].values[0] for f in fine])
    assert out[fine[0]].dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.nanmax(np.abs(got - ref)) < 1e-6
    assert str(out.pair_time.values[0])[:10] == TIMES[0]
    assert str(out.time.values[0])[:10] == TIMES[1]


# ---------------------------------------------------------------------------------------------
# (b) numpy == dask, chunk invariance, laziness


@pytest.mark.parametrize("classes", ["isodata", "supplied"])
@pytest.mark.parametrize("blocks", [True, False])
def test_numpy_equals_dask_ragged_chunks(scene, classes, blocks):
    f1, c1, c2, cls, _ = scene
    ds = cube_from(f1, c1, c2, extra_targets=1)
    fine, coarse = names(2)
    kw = {"fine": fine, "coarse": coarse, "scale_factor": 8, "half_window": 4,
          "block_cells": 2, "blocks": blocks, "diagnostics": True,
          "classes": cls if classes == "supplied" else None}  # fmt: skip
    eager = fsdaf(ds, **kw)
    outs = []
    for chunks in ((1, 13, 17), (2, 31, 9), (1, 56, 50)):
        lazy_ds = rechunk(ds, chunks)
        if classes == "supplied":
            kw["classes"] = xr.DataArray(da.from_array(cls, chunks=(11, 21)), dims=("y", "x"))
        with raise_if_dask_computes():
            lazy = fsdaf(lazy_ds, **kw)
        assert_lazy(lazy)
        outs.append(lazy.compute())
    for o in outs:
        xr.testing.assert_identical(o, eager)
    assert eager.sizes["time"] == 2
    assert set(eager.data_vars) == {*fine, "fsdaf_class", "fsdaf_hi"}


def test_graph_keys_and_names(scene):
    f1, c1, c2, _, _ = scene
    ds = rechunk(cube_from(f1, c1, c2), (1, 20, 20))
    fine, coarse = names(2)
    a = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4)
    b = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=5)
    ka, kb = a[fine[0]].data.name, b[fine[0]].data.name
    assert ka.startswith("xfusion.fsdaf") and kb.startswith("xfusion.fsdaf") and ka != kb
    layers = a[fine[0]].data.__dask_graph__().layers
    assert any(str(k).startswith("xfusion.fsdaf-change") for k in layers)
    assert any(str(k).startswith("xfusion.fsdaf-isodata") for k in a[fine[0]].data.dask)
    assert a[fine[0]].name == fine[0]
    with dask.config.set(scheduler="synchronous"):
        assert np.isfinite(a[fine[0]].values).sum() > 0.95 * a[fine[0]].size


def test_chunk_invariance_with_isodata_on_a_real_scale_scene():
    """ISODATA on the grid sample, K and std are global: any chunking, same bits."""
    from xfusion.testing import synthetic_scene

    sc = synthetic_scene((96, 80), kind="reflectance", times=3, fine_times=[0],
                         coarse_factor=16, coarse_cloud_fraction=0.0, seed=2)  # fmt: skip
    kw = {"fine": ["fine_red", "fine_nir"], "coarse": ["coarse_red", "coarse_nir"],
          "preset": "reflectance", "half_window": 6, "block_cells": 3}  # fmt: skip
    ref = fsdaf(sc, **kw).compute()
    assert json.loads(ref.attrs["xfusion_fsdaf"])["scale_factor"] == 16
    for chunks in ((1, 33, 29), (3, 47, 80)):
        lz = fsdaf(rechunk(sc, chunks), **kw)
        xr.testing.assert_identical(lz.compute(), ref)


# ---------------------------------------------------------------------------------------------
# (c) known answers


def test_zero_change_gives_the_fine_image(scene):
    f1, c1, _, _, _ = scene
    ds = cube_from(f1, c1, c1.copy())
    fine, coarse = names(2)
    out = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4, block_cells=3)
    for b, f in enumerate(fine):
        ok = np.all(np.isfinite(f1), axis=0)
        np.testing.assert_array_equal(out[f].values[0][ok], f1[b][ok])
        assert np.isnan(out[f].values[0][~ok]).all()


def test_uniform_change_one_class_through_the_api(scene):
    f1, c1, _, _, _ = scene
    delta = np.array([80.0, -35.0])
    ds = cube_from(f1, c1, c1 + delta[:, None, None])
    fine, coarse = names(2)
    out = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4,
                classes=np.ones(f1.shape[1:], int))  # fmt: skip
    ok = np.all(np.isfinite(f1), axis=0)  # a NaN in any band is background
    for b, f in enumerate(fine):
        np.testing.assert_allclose(out[f].values[0], np.where(ok, f1[b] + delta[b], np.nan),
                                   atol=1e-8)  # fmt: skip


def test_blocks_false_equals_blocks_true_on_one_block(scene):
    f1, c1, c2, cls, _ = scene
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    kw = {"fine": fine, "coarse": coarse, "scale_factor": 8, "half_window": 4, "classes": cls}
    a = fsdaf(ds, **kw, blocks=True)
    b = fsdaf(ds, **kw, blocks=False)
    for f in fine:
        np.testing.assert_allclose(a[f].values, b[f].values, rtol=0, atol=1e-9)
    c = fsdaf(ds, **kw, blocks=False, block_cells=2)  # global unmixing, local TPS
    assert not np.array_equal(c[fine[0]].values, a[fine[0]].values, equal_nan=True)


def test_blocks_false_refuses_a_class_without_cells(scene):
    f1, c1, c2, cls, _ = scene
    cls = cls.copy()
    cls[3, 3] = 9  # one pixel: never a fraction > 0 in a cell free of background...
    f1 = f1.copy()
    f1[:, 3, 4] = np.nan  # ...because its only cell holds background
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    with pytest.raises(NotEnoughDataError, match="class 9"):
        fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4, classes=cls,
              blocks=False)  # fmt: skip
    # per block, the class falls back to the block's mean coarse change
    out = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4, classes=cls)
    assert np.isfinite(out[fine[0]].values[0, 3, 3])


# ---------------------------------------------------------------------------------------------
# (d) scale factor, I/O, options, errors


def blocky_scene(s=8, shape=(48, 40), offset=0):
    rng = np.random.default_rng(3)
    f1, _, _, _, _ = make_scene(rng, nb=1, shape=shape, s=s)
    cells = rng.uniform(500, 4000, (1, shape[0] // s + 2, shape[1] // s + 2))
    c = np.repeat(np.repeat(cells, s, 1), s, 2)[:, offset : offset + shape[0],
                                                 offset : offset + shape[1]]  # fmt: skip
    return f1, c, c + 50.0


def test_scale_factor_detected_from_block_constant_coarse():
    f1, c1, c2 = blocky_scene()
    out = fsdaf(cube_from(f1, c1, c2), fine="fine0", coarse="coarse0", half_window=4)
    rec = json.loads(out.attrs["xfusion_fsdaf"])
    assert rec["scale_factor"] == 8 and rec["scale_factor_source"] == "detected"
    same = fsdaf(cube_from(f1, c1, c2), fine="fine0", coarse="coarse0", half_window=4,
                 scale_factor=8)  # fmt: skip
    xr.testing.assert_equal(out.drop_attrs(), same.drop_attrs())


def test_scale_factor_errors():
    f1, c1, c2 = blocky_scene(offset=3)
    with pytest.raises(GridMismatchError, match="origin"):
        fsdaf(cube_from(f1, c1, c2), fine="fine0", coarse="coarse0", half_window=4)
    rng = np.random.default_rng(4)
    g1, d1, d2, _, _ = make_scene(rng, nb=1, shape=(40, 40), s=8)  # noisy: not block-constant
    with pytest.raises(InvalidParameterError, match="scale_factor=16"):
        fsdaf(cube_from(g1, d1, d2), fine="fine0", coarse="coarse0")
    f1, c1, c2 = blocky_scene()
    lazy = cube_from(f1, c1, c2, chunks=(1, 20, 20))
    with raise_if_dask_computes(), pytest.raises(InvalidParameterError, match="dask-backed"):
        fsdaf(lazy, fine="fine0", coarse="coarse0")
    lazy.attrs["coarse_factor"] = 8
    with raise_if_dask_computes():
        out = fsdaf(lazy, fine="fine0", coarse="coarse0", half_window=4)
    assert json.loads(out.attrs["xfusion_fsdaf"])["scale_factor_source"] == (
        "coarse_factor attribute")
    with pytest.raises(InvalidParameterError, match="larger than the image"):
        fsdaf(cube_from(f1, c1, c2), fine="fine0", coarse="coarse0", scale_factor=64)


def test_integer_io_truncates_and_fills(scene):
    f1, c1, c2, cls, _ = scene
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    ref = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=8, half_window=4, classes=cls)
    ids = ds.copy()
    for v in ds.data_vars:
        a = ds[v].values
        ids[v] = (ds[v].dims, np.where(np.isnan(a), -9999, np.trunc(a)).astype(np.int16),
                  {"nodata": -9999})  # fmt: skip
    out = fsdaf(ids, fine=fine, coarse=coarse, scale_factor=8, half_window=4, classes=cls)
    assert out[fine[0]].dtype == np.int16 and out[fine[0]].attrs["nodata"] == -9999
    v = out[fine[0]].values[0]
    r = ref[fine[0]].values[0]
    assert np.array_equal(v == -9999, np.isnan(r))
    assert np.abs(v[v != -9999] - r[v != -9999]).max() < 25  # integer inputs, truncation


def test_targets_pairs_and_presets(scene):
    f1, c1, c2, _, _ = scene
    ds = cube_from(f1, c1, c2, extra_targets=2)
    fine, coarse = names(2)
    kw = {"fine": fine, "coarse": coarse, "scale_factor": 8, "half_window": 4}
    out = fsdaf(ds, **kw, targets=[TIMES[3], TIMES[1]], pairs=TIMES[0])
    assert [str(t)[:10] for t in out.time.values] == [TIMES[1], TIMES[3]]
    assert all(str(t)[:10] == TIMES[0] for t in out.pair_time.values)
    one = fsdaf(ds, **kw, targets=TIMES[3])
    np.testing.assert_array_equal(one[fine[0]].values[0], out[fine[0]].values[1])
    refl = FSDAF_PRESETS["reflectance"]
    assert refl.data_range == (0.0, 1.0) and FSDAF_PRESETS["lst"].data_range == (150.0, 400.0)
    rec = json.loads(fsdaf(ds, **kw, preset="lst", data_range=(0, 9000)).attrs["xfusion_fsdaf"])
    assert rec["data_range"] == [0.0, 9000.0] and rec["classes"] == "isodata"


def test_params_description_and_halo():
    described = {p.name for p in PARAMS}
    spec = {f.name for f in F.fields(FsdafParams)}
    assert spec | {"classes", "preset"} <= described
    for p in PARAMS:
        assert p.help and (p.choices is None or p.default in p.choices)
    z = FSDAF_PRESETS["zhu"]
    assert (z.half_window, z.n_similar, z.min_classes, z.max_classes, z.n_pure,
            z.block_cells, z.max_weight) == (20, 20, 4, 6, 100, 30, 10.0)  # fmt: skip
    assert halo(z, 16) == 20 + 16 + 30 * 16
    assert dask.base.tokenize(z) == dask.base.tokenize(F.replace(z))
    assert dask.base.tokenize(z) != dask.base.tokenize(F.replace(z, half_window=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"half_window": 0}, "half_window"),
        ({"n_similar": 2.5}, "n_similar"),
        ({"min_classes": 5, "max_classes": 3}, "min_classes <= max_classes"),
        ({"interpolator": "spline"}, "interpolator"),
        ({"preset": "usda"}, "preset"),
        ({"data_range": (10, 0)}, "data_range"),
        ({"change_quantiles": (0.2, 1.5)}, "change_quantiles"),
        ({"max_weight": -1}, "max_weight"),
        ({"blocks": "yes"}, "blocks"),
        ({"diagnostics": 1}, "diagnostics"),
        ({"scale_factor": 0}, "scale_factor"),
    ],
)
def test_bad_parameters(scene, kwargs, match):
    f1, c1, c2, _, _ = scene
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    kw = {"scale_factor": 8, **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        fsdaf(ds, fine=fine, coarse=coarse, **kw)


def test_bad_class_maps(scene):
    f1, c1, c2, cls, _ = scene
    ds = cube_from(f1, c1, c2)
    fine, coarse = names(2)
    kw = {"fine": fine, "coarse": coarse, "scale_factor": 8, "half_window": 4}
    with pytest.raises(GridMismatchError, match="shape"):
        fsdaf(ds, **kw, classes=cls[:-1])
    with pytest.raises(InvalidParameterError, match=">= 0"):
        fsdaf(ds, **kw, classes=cls - 2)
    with pytest.raises(InvalidParameterError, match="integer"):
        fsdaf(ds, **kw, classes=cls + 0.5)
    with pytest.raises(InvalidParameterError, match="not a variable"):
        fsdaf(ds, **kw, classes="landcover")
    with pytest.raises(MissingDimensionError, match="spatial dims"):
        fsdaf(ds, **kw, classes=xr.DataArray(cls[None], dims=("time", "y", "x")))
    ds2 = ds.assign_coords(landcover=(("y", "x"), cls))
    a = fsdaf(ds2, **kw, classes="landcover")
    b = fsdaf(ds, **kw, classes=cls)
    xr.testing.assert_identical(a[fine], b[fine].assign_coords(landcover=ds2.landcover))
    lazy = rechunk(ds, (1, 20, 20))
    bad = fsdaf(lazy, **kw, classes=da.from_array(cls - 2, chunks=20))
    with pytest.raises(XFusionError, match=">= 0"):
        bad.compute()


# ---------------------------------------------------------------------------------------------
# (e) accuracy


def rmse(a, b):
    return float(np.sqrt(np.nanmean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_beats_the_naive_baselines_on_a_synthetic_scene():
    from xfusion.testing import synthetic_scene

    sc = synthetic_scene((128, 128), kind="reflectance", times=3, fine_times=[0, 2],
                         coarse_factor=16, coarse_cloud_fraction=0.0, cloud_fraction=0.0,
                         psf_sigma=0, seed=4)  # fmt: skip
    fine = ["fine_red", "fine_nir"]
    coarse = ["coarse_red", "coarse_nir"]
    out = fsdaf(sc, fine=fine, coarse=coarse, preset="reflectance", targets=sc.time[2].values,
                pairs=sc.time[0].values, half_window=10)  # fmt: skip
    for f, c, t in zip(fine, coarse, ["truth_red", "truth_nir"], strict=True):
        truth = sc[t].values[2]
        pred = out[f].values[0]
        at_pair = sc[f].values[0]
        plus_change = at_pair + sc[c].values[2] - sc[c].values[0]
        assert rmse(pred, truth) < rmse(at_pair, truth)
        assert rmse(pred, truth) < rmse(plus_change, truth)


def test_kranj_beats_persistence_and_coarse():
    from xfusion.cube import from_geotiffs

    k = shared_data_dir() / "kranj"
    if not k.is_dir():
        pytest.skip("kranj data not found")

    def landsat(doy):
        return next((k / "landsat" / "unfilled").glob(f"2020{doy}_*.tif"))

    def modis(doy):
        return next((k / "modis" / "filled").glob(f"2020{doy}_*.tif"))

    day = {d: str(np.datetime64("2020-01-01") + np.timedelta64(int(d) - 1, "D"))
           for d in ("068", "077", "093")}  # fmt: skip
    ds = from_geotiffs(fine={day["068"]: landsat("068")},
                       coarse={day[d]: modis(d) for d in ("068", "077", "093")})  # fmt: skip
    fine = sorted(str(v) for v in ds.data_vars if str(v).startswith("fine"))
    coarse = sorted(str(v) for v in ds.data_vars if str(v).startswith("coarse"))
    for c in coarse:
        ds[c] = ds[c] * 1e4
    truth = from_geotiffs(fine={day[d]: landsat(d) for d in ("077", "093")},
                          coarse={day[d]: modis(d) for d in ("077", "093")})  # fmt: skip
    out = fsdaf(ds, fine=fine, coarse=coarse, scale_factor=4, block_cells=30, half_window=10)
    for t in range(2):
        errs = {"fsdaf": [], "pair": [], "coarse": []}
        for f, c in zip(fine, coarse, strict=True):
            tr = truth[f].values[t]
            errs["fsdaf"].append(rmse(out[f].values[t], tr))
            errs["pair"].append(rmse(ds[f].values[0], tr))
            errs["coarse"].append(rmse(ds[c].values[t + 1], tr))
        mean = {m: float(np.mean(v)) for m, v in errs.items()}
        assert mean["fsdaf"] < 0.9 * mean["pair"], mean
        assert mean["fsdaf"] < 0.7 * mean["coarse"], mean


def test_registry_entry_and_job_halo():
    """`xfusion fuse fsdaf`, jobs and the accessor read the registry's table."""
    import xfusion
    from xfusion.methods import get

    m = get("fsdaf")
    assert m.pairs == "one" and m.kind == "fusion" and m.params == PARAMS
    assert xfusion.fsdaf is fsdaf
    assert m.job_halo({"scale_factor": 16}, resolution=30.0) == 20 + 16 + 30 * 16
    assert m.job_halo({"scale_factor": 4, "half_window": 5, "block_cells": 3},
                      resolution=30.0) == 5 + 4 + 12  # fmt: skip
    with pytest.raises(InvalidParameterError, match="scale_factor"):
        m.job_halo({}, resolution=30.0)
