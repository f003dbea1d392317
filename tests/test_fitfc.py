"""Tests of the public Fit-FC method (xfusion.methods.fitfc.fitfc).

(a) the public API against the brute-force transcription of the spec (both variants), and
    against the reference programs when they are installed (/work/refs, opt-in);
(b) chunk invariance: bit-identical output for any chunking (ragged chunks crossing coarse
    cells), numpy == dask, and a halo one pixel short breaks it;
(c) known answers: no change, global affine change, constant fields, integer I/O with fill,
    output types of each variant, multi-band sharing one candidate set;
(d) the coarse grid: explicit, declared in attrs, detected (with an offset), or absent;
(e) bad input: clear xfusion errors;
(f) laziness, graph keys, pair selection, parameters, presets, docstring examples.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import _ref_fitfc as R
import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox

from xfusion.cube import from_geotiffs, from_numpy
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    NoOverlapError,
    TimeAxisError,
    XFusionError,
)
from xfusion.methods import fitfc as F
from xfusion.methods.fitfc import FITFC_PRESETS, PARAMS, FitfcParams, fitfc, halo
from xfusion.testing import assert_lazy, raise_if_dask_computes, synthetic_scene

TIMES = ["2020-01-01", "2020-01-09", "2020-01-17", "2020-01-25"]
SHARED = os.environ.get("XFUSION_SHARED_DATA") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data"
)
REFS = os.environ.get("XFUSION_REFS", "/work/refs")


def gbox(ny, nx, crs="EPSG:32633", res=30.0):
    return GeoBox((ny, nx), Affine(res, 0, 500000, 0, -res, 4000000), crs)


def up(c, s, shape=None, phase=(0, 0)):
    u = np.repeat(np.repeat(c, s, -2), s, -1)
    ny, nx = shape if shape is not None else u.shape[-2:]
    return u[..., phase[0] : phase[0] + ny, phase[1] : phase[1] + nx]


def cube(fine, coarse, *, names=("red", "nir"), fine_obs=None, nodata=None):
    """(time, B, y, x) fine and coarse stacks -> a cube with fine_<name>/coarse_<name>."""
    nt, nb, ny, nx = fine.shape
    fine_obs = [True] + [False] * (nt - 1) if fine_obs is None else list(fine_obs)
    data, observed = {}, {}
    for b in range(nb):
        data[f"fine_{names[b]}"] = fine[:, b]
        data[f"coarse_{names[b]}"] = coarse[:, b]
        observed[f"fine_{names[b]}"] = fine_obs
        observed[f"coarse_{names[b]}"] = [True] * nt
    return from_numpy(data, geobox=gbox(ny, nx), times=TIMES[:nt], observed=observed,
                      nodata=nodata)  # fmt: skip


def roles(ds):
    fine = [v for v in ds.data_vars if str(v).startswith("fine")]
    return {"fine": fine, "coarse": ["coarse" + v[4:] for v in fine]}


def rechunk(ds, chunks):
    out = ds.copy()
    for v in ds.data_vars:
        out[v] = ds[v].copy(data=da.from_array(ds[v].values, chunks=chunks))
    return out


def wang_case(rng, *, nc=(9, 10), s=4, shape=None, phase=(0, 0), bands=2, holes=True):
    """A cube whose coarse data is block-constant on s x s cells (offset by phase)."""
    ny, nx = shape if shape is not None else (nc[0] * s, nc[1] * s)
    y, x = np.mgrid[:ny, :nx]
    f1 = np.stack([900 + 400 * np.sin(y / (4.0 + b)) * np.cos(x / 6.0) for b in range(bands)])
    f1 = f1 + rng.normal(0, 40, f1.shape)
    c1 = rng.normal(1000, 200, (bands, *nc))
    c2 = 1.15 * c1 + rng.normal(0, 60, c1.shape)
    if holes:
        f1[:, 5, 6] = np.nan
        c2[0, 3, 3] = np.nan
    fine = np.stack([f1, np.full_like(f1, np.nan)])
    coarse = np.stack([up(c1, s, (ny, nx), phase), up(c2, s, (ny, nx), phase)])
    return cube(fine.astype("float32"), coarse.astype("float32"), names=("red", "nir", "swir")
                [:bands]), f1.astype("float32").astype(float), c1.astype("float32").astype(
                float), c2.astype("float32").astype(float)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# (a) against the brute force and the reference programs


def test_wang_public_api_matches_brute_force(rng):
    ds, f1, c1, c2 = wang_case(rng)
    out = fitfc(ds, **roles(ds), scale_factor=4, sf_half_window=3, n_similar=5)
    want = R.fitfc_wang(f1, c1, c2, s=4, rm_radius=1, w0=3, n_sim=5)
    got = np.stack([out.fine_red.values[0], out.fine_nir.values[0]])
    assert out.fine_red.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert ok.mean() > 0.3 and np.abs(got[ok] - want[ok]).max() < 1e-9
    rec = json.loads(out.attrs["xfusion_fitfc"])
    assert rec["grid"] == "coarse" and rec["scale_factor"] == 4 and rec["variant"] == "wang"
    assert rec["similarity_bands"] == "fine_red,fine_nir"


def test_imagefusion_public_api_matches_brute_force(rng):
    f = rng.integers(1, 40, (2, 2, 23, 21)).astype("float32") * 50
    c = f + rng.integers(-30, 30, f.shape)
    c[1] = 1.2 * c[0] + rng.integers(-30, 30, c[0].shape)
    f[1] = np.nan
    ds = cube(f.astype("float32"), c.astype("float32"))
    kw = {"rm_window": 9, "sf_half_window": 4, "n_similar": 7, "resolution_factor": 6}
    out = fitfc(ds, **roles(ds), preset="imagefusion", **kw)
    assert out.fine_red.dtype == np.float32  # saturate_cast to the input type
    want = R.fitfc_imagefusion(f[0].astype(float), c[0].astype(float), c[1].astype(float),
                               win_rm=9, half_sf=4, n_sim=7, resolution_factor=6.0,
                               dtype="float32", diff_dtype="float32")  # fmt: skip
    got = np.stack([out.fine_red.values[0], out.fine_nir.values[0]])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # float32 outputs agree to one float32 unit (the window sums are added in another order)
    np.testing.assert_allclose(got, want.astype("float32"), rtol=2.5e-7)


def _refs_bin(name):
    path = os.path.join(REFS, "bin", name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"reference program {path} not installed (set XFUSION_REFS)")
    return path


def _shared(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data not found at {path} (set XFUSION_SHARED_DATA)")
    return path


def _read(path):
    import rasterio

    with rasterio.open(path) as src:
        a = src.read().astype(np.float64)
        nd = src.nodata
    return a, (a == nd) if nd is not None and not np.isnan(nd) else np.isnan(a)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_parity_with_imagefusion_on_synthetic600(tmp_path, dtype):
    """ImageFusion's C++ FitFCFusor (if_fuse) on synthetic600: +-1 on >= 99.9 %, same fills."""
    exe = _refs_bin("ref-fitfc-imagefusion")
    d = _shared("synthetic600")
    import rasterio

    paths = [os.path.join(d, f"{n}.tif") for n in ("fine_t1", "coarse_t1", "coarse_t2")]
    with rasterio.open(paths[0]) as src:
        profile = src.profile
    if dtype == "float32":  # the same data written as float32 (no nodata)
        conv = []
        for p in paths:
            with rasterio.open(p) as src:
                a = src.read(1).astype("float32")
            q = tmp_path / os.path.basename(p)
            prof = {**profile, "dtype": "float32", "nodata": None}
            with rasterio.open(q, "w", **prof) as dst:
                dst.write(a, 1)
            conv.append(str(q))
        paths = conv
    ref_path = tmp_path / "ref.tif"
    subprocess.run([exe, *paths, str(ref_path), "--threads", "2", "--quiet"], check=True,
                   capture_output=True)  # fmt: skip
    ref, ref_fill = _read(ref_path)
    ds = from_geotiffs(fine={"2001-01-01": paths[0]},
                       coarse={"2001-01-01": paths[1], "2001-01-17": paths[2]}, chunks=256)  # fmt: skip
    if dtype == "int16":  # integer cube, as the files (the CLI reads everything as float32)
        for v in ("fine", "coarse"):
            a = ds[v].values
            ds[v] = (
                ds[v].dims,
                np.where(np.isnan(a), -9999, a).astype(np.int16),
                {"nodata": -9999},
            )
    out = fitfc(ds, fine="fine", coarse="coarse", preset="imagefusion")
    got = out.fine.values.astype(np.float64)
    assert out.fine.dtype == np.dtype(dtype)
    got_fill = got == -9999 if dtype == "int16" else np.isnan(got)
    np.testing.assert_array_equal(got_fill, ref_fill)
    ok = ~got_fill
    diff = np.abs(got[ok] - ref[ok])
    assert (diff <= 1).mean() >= 0.999
    if dtype == "int16":
        assert (diff == 0).mean() >= 0.999


def _kranj_files(tmp_path, dtype):
    """Kranj 068 (pair) and 077 (target), Landsat x1e4 and MODIS x1e4, as ``dtype`` GeoTIFFs."""
    import rasterio

    d = _shared("kranj")
    lf = os.path.join(d, "landsat", "filled")
    land = os.path.join(lf, next(f for f in sorted(os.listdir(lf)) if f.startswith("2020068")))
    mod = [
        os.path.join(d, "modis", "filled", f"2020{doy}_18-04_kranj.tif") for doy in ("068", "077")
    ]
    out = []
    for p, scale in ((land, 1.0), (mod[0], 1e4), (mod[1], 1e4)):
        with rasterio.open(p) as src:
            a, prof = src.read().astype(np.float64) * scale, src.profile
        a = np.round(a).astype(dtype) if dtype == "int16" else a.astype(dtype)
        q = tmp_path / f"{len(out)}_{os.path.basename(p)}"
        with rasterio.open(q, "w", **{**prof, "dtype": dtype, "nodata": None}) as dst:
            dst.write(a)
        out.append(str(q))
    return out


def _kranj_cube(paths, dtype):
    ds = from_geotiffs(fine={"2020-03-08": paths[0]},
                       coarse={"2020-03-08": paths[1], "2020-03-17": paths[2]})  # fmt: skip
    if dtype == "int16":
        for v in ds.data_vars:
            a = ds[v].values  # NaN: the fine variable at the target date
            ds[v] = (ds[v].dims, np.where(np.isnan(a), -32768, a).astype(np.int16),
                     {"nodata": -32768})  # fmt: skip
    return ds


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_parity_with_imagefusion_on_kranj(tmp_path, dtype):
    """ImageFusion's C++ program on the real 44 x 45 Kranj scene (smaller than the 51 px
    windows): int16 identical, float32 within one float32 unit."""
    exe = _refs_bin("ref-fitfc-imagefusion")
    paths = _kranj_files(tmp_path, dtype)
    subprocess.run([exe, *paths, str(tmp_path / "ref.tif"), "--threads", "1", "--quiet"],
                   check=True, capture_output=True)  # fmt: skip
    ref, _ = _read(tmp_path / "ref.tif")
    ds = _kranj_cube(paths, dtype)
    out = fitfc(ds, **roles(ds), preset="imagefusion")
    got = np.stack([out[v].values[0] for v in roles(ds)["fine"]]).astype(np.float64)
    assert out[roles(ds)["fine"][0]].dtype == np.dtype(dtype)
    if dtype == "int16":
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=2.5e-7)


@pytest.mark.slow
def test_parity_with_wang_scripts_on_kranj(tmp_path):
    """Wang's MATLAB scripts under Octave (s = 4 on the 44 x 45 Kranj scene): |diff| < 1e-6."""
    exe = _refs_bin("ref-fitfc-wang-octave")
    if shutil.which("octave-cli") is None:
        pytest.skip("octave-cli not installed")
    paths = _kranj_files(tmp_path, "float32")
    subprocess.run([exe, *paths, str(tmp_path / "w.tif"), "--scale", "4"], check=True,
                   capture_output=True)  # fmt: skip
    ref, _ = _read(tmp_path / "w.tif")
    ds = _kranj_cube(paths, "float32")
    out = fitfc(ds, **roles(ds), scale_factor=4)
    got = np.stack([out[v].values[0] for v in roles(ds)["fine"]])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.abs(got[ok] - ref[ok]).max() < 1e-6


# ---------------------------------------------------------------------------------------------
# (b) chunk invariance


CHUNKS = [(1, 7, 9), (2, 13, 17), (1, 25, 11), (2, 40, 40)]


@pytest.mark.parametrize(
    "kw",
    [
        {"scale_factor": 4, "sf_half_window": 3, "n_similar": 5},
        {"scale_factor": 4, "rm_radius": 2, "sf_half_window": 6, "n_similar": 9,
         "residual": "after_filter", "diagnostics": True, "fill_residual": True},
        {"scale_factor": 4, "edge_cells": "partial", "border": "clip", "sf_half_window": 4},
        {"preset": "imagefusion", "rm_window": 9, "sf_half_window": 4, "resolution_factor": 5},
        {"preset": "imagefusion", "rm_window": 11, "sf_half_window": 3,
         "resolution_factor": 2.5, "residual": "after_filter", "border": "replicate"},
    ],
)  # fmt: skip
def test_chunk_invariance_bit_identical(rng, kw):
    ds, *_ = wang_case(rng, shape=(38, 41), nc=(10, 11))
    eager = fitfc(ds, **roles(ds), **kw)
    assert not any(dask.is_dask_collection(v.data) for v in eager.data_vars.values())
    assert all(np.isfinite(eager[v].values).mean() > 0.5 for v in roles(ds)["fine"])
    for chunks in CHUNKS:
        lazy = fitfc(rechunk(ds, chunks), **roles(ds), **kw)
        assert_lazy(lazy)
        xr.testing.assert_identical(lazy.compute(), eager)


def test_chunk_invariance_with_a_detected_cell_offset(rng):
    ds, *_ = wang_case(rng, shape=(37, 35), nc=(11, 10), phase=(3, 1), holes=False)
    eager = fitfc(ds, **roles(ds), sf_half_window=4, n_similar=6)
    rec = json.loads(eager.attrs["xfusion_fitfc"])
    assert rec["scale_factor"] == 4 and rec["phase"] == [3, 1]
    assert rec["region"] == [1, 37, 3, 35]  # whole cells only (edge_cells="drop")
    assert np.isnan(eager.fine_red.values[0, :1]).all()
    assert np.isfinite(eager.fine_red.values[0, 1:, 3:]).mean() > 0.9
    for chunks in CHUNKS[:3]:
        xr.testing.assert_identical(
            fitfc(rechunk(ds, chunks), **roles(ds), sf_half_window=4, n_similar=6).compute(),
            eager,
        )


def test_a_halo_one_pixel_short_breaks_invariance(rng, monkeypatch):
    """The halo rule is needed: the spec's w0 + s (W + 2) without the partial cell fails."""
    ds, *_ = wang_case(rng, shape=(40, 40), nc=(10, 10), holes=False)
    kw = {"scale_factor": 4, "sf_half_window": 3, "n_similar": 5}
    eager = fitfc(ds, **roles(ds), **kw)
    real = F._map_with_origin

    def short(*args, halo, **k):
        return real(*args, halo=3 + 4 * 3, **k)  # w0 + s (W + 2): s - 1 short

    monkeypatch.setattr(F, "_map_with_origin", short)
    differ = [
        not fitfc(rechunk(ds, (1, c, c)), **roles(ds), **kw).compute().identical(eager)
        for c in (10, 11, 13, 14)
    ]
    assert any(differ)


def test_numpy_equals_dask_multiple_targets(rng, backend):
    f = rng.normal(1000, 200, (4, 1, 24, 28)).astype("float32")
    c = up(rng.normal(1000, 150, (4, 1, 6, 7)), 4).astype("float32")
    f[[1, 3]] = np.nan
    ds = cube(f, c, names=("red",), fine_obs=(True, False, True, False))
    if backend == "dask":
        ds = rechunk(ds, (1, 10, 9))
    out = fitfc(ds, fine="fine_red", coarse="coarse_red", scale_factor=4, sf_half_window=3,
                n_similar=4, targets=["2020-01-25", "2020-01-09"])  # fmt: skip
    eager = fitfc(ds.compute(), fine="fine_red", coarse="coarse_red", scale_factor=4,
                  sf_half_window=3, n_similar=4, targets=["2020-01-25", "2020-01-09"])  # fmt: skip
    assert [str(t)[:10] for t in out.time.values] == ["2020-01-09", "2020-01-25"]
    assert [str(t)[:10] for t in out.pair_time.values] == ["2020-01-01", "2020-01-17"]
    xr.testing.assert_identical(out.compute(), eager)


# ---------------------------------------------------------------------------------------------
# (c) known answers


@pytest.mark.parametrize("preset", ["wang", "imagefusion"])
def test_no_change_gives_the_filtered_fine_image(rng, preset):
    ds, f1, _c1, _ = wang_case(rng, holes=False, bands=1)
    ds["coarse_red"].values[1] = ds["coarse_red"].values[0]
    kw = {"sf_half_window": 3, "n_similar": 5, "diagnostics": True}
    if preset == "wang":
        out = fitfc(ds, fine="fine_red", coarse="coarse_red", scale_factor=4, **kw)
        border = "replicate"
    else:
        out = fitfc(ds, fine="fine_red", coarse="coarse_red", preset="imagefusion",
                    rm_window=9, resolution_factor=4, **kw)  # fmt: skip
        border = "clip"
    np.testing.assert_allclose(out.fine_red_a.values, 1.0, atol=1e-6)
    np.testing.assert_allclose(out.fine_red_residual.values, 0.0, atol=1e-3)
    sf = R.spatial_filter_wang(f1, f1, w0=3, n_sim=5, scale_a=3.5, border=border)
    got = out.fine_red.values
    np.testing.assert_allclose(got, sf, rtol=1e-5)  # float32 FRM in "imagefusion"
    assert np.abs(got - f1).max() > 1  # a smoothing of F1, not F1


def test_global_affine_change(rng):
    ds, f1, _c1, _ = wang_case(rng, holes=False, bands=2)
    alpha, beta = 0.8, 120.0
    for v in ("coarse_red", "coarse_nir"):
        ds[v].values[1] = alpha * ds[v].values[0].astype(np.float64) + beta
    out = fitfc(ds, **roles(ds), scale_factor=4, sf_half_window=3, n_similar=5)
    sf = R.spatial_filter_wang(f1, f1, w0=3, n_sim=5, scale_a=3.5)
    got = np.stack([out.fine_red.values[0], out.fine_nir.values[0]])
    np.testing.assert_allclose(got, alpha * sf + beta, rtol=1e-5)


def test_constant_fields():
    """Constant C1 = C2 = c and F1 = f: a = 0, b = c, so Fit-FC gives c everywhere (wang), and
    f when C1 varies with C2 = C1 (a = 1, b = 0)."""
    f = np.full((2, 1, 16, 20), 500.0, "float32")
    f[1] = np.nan
    c = np.full((2, 1, 16, 20), 700.0, "float32")
    ds = cube(f, c, names=("red",))
    out = fitfc(ds, fine="fine_red", coarse="coarse_red", scale_factor=4, sf_half_window=2,
                n_similar=3)  # fmt: skip
    np.testing.assert_array_equal(out.fine_red.values, 700.0)
    c2 = up(np.arange(20.0).reshape(1, 4, 5) * 10 + 300, 4)
    ds2 = cube(f, np.stack([c2, c2]).astype("float32"), names=("red",))
    out2 = fitfc(ds2, fine="fine_red", coarse="coarse_red", scale_factor=4, sf_half_window=2,
                 n_similar=3)  # fmt: skip
    np.testing.assert_allclose(out2.fine_red.values, 500.0, rtol=1e-12)


@pytest.mark.parametrize("preset", ["wang", "imagefusion"])
def test_integer_io_with_fill(rng, preset, backend):
    ds, *_ = wang_case(rng, bands=1)
    ids = ds.copy()
    for v in ("fine_red", "coarse_red"):
        a = ds[v].values
        ids[v] = (ds[v].dims, np.where(np.isnan(a), -9999, np.round(a)).astype(np.int16),
                  {"nodata": -9999})  # fmt: skip
    fds = ids.copy()
    for v in ("fine_red", "coarse_red"):
        a = ids[v].values
        fds[v] = (ids[v].dims, np.where(a == -9999, np.nan, a).astype("float32"))
    if backend == "dask":
        ids, fds = rechunk(ids, (1, 9, 13)), rechunk(fds, (1, 9, 13))
    kw = {"preset": preset, "sf_half_window": 3, "n_similar": 5, "scale_factor": 4}
    if preset == "imagefusion":
        kw.update(rm_window=9, resolution_factor=4, scale_factor=None)
    out = fitfc(ids, fine="fine_red", coarse="coarse_red", **kw)
    ref = fitfc(fds, fine="fine_red", coarse="coarse_red", **kw).fine_red.values
    assert out.fine_red.dtype == np.int16 and out.fine_red.attrs["nodata"] == -9999
    got = out.fine_red.values
    np.testing.assert_array_equal(got == -9999, np.isnan(ref))
    assert (got == -9999).any() and (got != -9999).mean() > 0.5
    ok = ~np.isnan(ref)
    if preset == "wang":  # float64 prediction rounded half to even
        np.testing.assert_array_equal(got[ok], np.rint(ref[ok]))
    else:  # FRM rounded to int16 inside: within one unit of the float32 run
        assert np.abs(got[ok] - ref[ok]).max() <= 1


def test_multiband_shares_the_candidates(rng):
    ds, *_ = wang_case(rng, bands=3, holes=False)
    kw = {"scale_factor": 4, "sf_half_window": 3, "n_similar": 5,
          "similarity_bands": ("red", "nir")}  # fmt: skip
    three = fitfc(ds, fine=["fine_red", "fine_nir", "fine_swir"],
                  coarse=["coarse_red", "coarse_nir", "coarse_swir"], **kw)  # fmt: skip
    two = fitfc(ds, fine=["fine_red", "fine_nir"], coarse=["coarse_red", "coarse_nir"], **kw)
    for v in ("fine_red", "fine_nir"):
        np.testing.assert_array_equal(three[v].values, two[v].values)
    # another similarity band changes the candidates, hence the result
    other = fitfc(ds, fine=["fine_red", "fine_nir", "fine_swir"],
                  coarse=["coarse_red", "coarse_nir", "coarse_swir"],
                  **{**kw, "similarity_bands": ("swir",)})  # fmt: skip
    assert not np.array_equal(other.fine_red.values, two.fine_red.values)
    swapped = fitfc(ds, fine=["fine_nir", "fine_red"], coarse=["coarse_nir", "coarse_red"], **kw)
    xr.testing.assert_identical(swapped.fine_red, two.fine_red)


def test_missing_fine_pixels_are_not_predicted_nor_used(rng):
    ds, *_ = wang_case(rng, holes=False)
    ds["fine_red"].values[0, 10:14, 10:14] = np.nan
    out = fitfc(ds, **roles(ds), scale_factor=4, sf_half_window=3, n_similar=5)
    for v in ("fine_red", "fine_nir"):  # the pixel is missing in one band: no band there
        assert np.isnan(out[v].values[0, 10:14, 10:14]).all()
        assert np.isfinite(out[v].values[0, 15:, :]).all()


# ---------------------------------------------------------------------------------------------
# (d) the coarse grid


def test_coarse_grid_from_attrs_and_scene():
    scene = synthetic_scene((64, 64), kind="reflectance", bands=["red", "nir"], times=2,
                            fine_times=[0], coarse_factor=16, cloud_fraction=0.0,
                            coarse_cloud_fraction=0.0, seed=3)  # fmt: skip
    out = fitfc(rechunk(scene, (1, 20, 30)), fine=["fine_red", "fine_nir"],
                coarse=["coarse_red", "coarse_nir"])  # fmt: skip
    rec = json.loads(out.attrs["xfusion_fitfc"])
    assert rec["scale_factor"] == 16 and "coarse_factor" in rec["grid_source"]
    declared = scene.copy()
    declared.attrs = {"coarse_resolution": 480.0}  # 16 x 30 m
    rec = json.loads(fitfc(declared, fine="fine_red", coarse="coarse_red").attrs["xfusion_fitfc"])
    assert rec["scale_factor"] == 16 and "coarse_resolution" in rec["grid_source"]


def test_detection_and_the_fine_grid_fallback(rng):
    ds, *_ = wang_case(rng, holes=False)  # block-constant, no attrs
    rec = json.loads(fitfc(ds, **roles(ds)).attrs["xfusion_fitfc"])
    assert rec["grid"] == "coarse" and rec["scale_factor"] == 4 and rec["phase"] == [0, 0]
    smooth = ds.copy()
    for v in ("coarse_red", "coarse_nir"):  # not constant over cells (e.g. bilinear MODIS)
        smooth[v] = ds[v] + xr.DataArray(rng.normal(0, 1, ds[v].shape).astype("float32"),
                                         dims=ds[v].dims)  # fmt: skip
    out = fitfc(smooth, **roles(ds), rm_window=9, resolution_factor=4)
    rec = json.loads(out.attrs["xfusion_fitfc"])
    assert rec["grid"] == "fine" and rec["scale_factor"] is None
    assert np.isfinite(out.fine_red.values).mean() > 0.9
    # an explicit scale factor puts the bilinear data on a coarse grid of cell means
    rec = json.loads(fitfc(smooth, **roles(ds), scale_factor=4).attrs["xfusion_fitfc"])
    assert rec["grid"] == "coarse"


def test_detect_cells():
    a = up(np.arange(30.0).reshape(5, 6), 5, (23, 27), (2, 4))
    assert F._detect_cells(a) == (5, (2, 4))
    assert F._detect_cells(np.arange(100.0).reshape(10, 10)) is None
    assert F._detect_cells(np.ones((20, 20))) is None
    a[a == 7.0] = np.nan
    assert F._detect_cells(a) == (5, (2, 4))


def test_edge_cells_partial_predicts_every_pixel(rng):
    ds, *_ = wang_case(rng, shape=(38, 41), nc=(10, 11), holes=False)
    drop = fitfc(ds, **roles(ds), scale_factor=4, sf_half_window=3)
    part = fitfc(ds, **roles(ds), scale_factor=4, sf_half_window=3, edge_cells="partial")
    assert (
        np.isnan(drop.fine_red.values[0, 36:]).all()
        and np.isnan(drop.fine_red.values[0, :, 40:]).all()
    )
    assert np.isfinite(part.fine_red.values).all()


# ---------------------------------------------------------------------------------------------
# (e) bad input


def test_target_without_a_pair_lists_the_pair_dates(rng):
    ds, *_ = wang_case(rng)
    with pytest.raises(NoOverlapError, match=r"no pair.*2020-01-09.*Pair dates: \['2020-01-01'\]"):
        fitfc(ds, **roles(ds), targets="2020-01-09", pairs="after", scale_factor=4)
    with pytest.raises(TimeAxisError, match="not observed at the pair date"):
        fitfc(ds, **roles(ds), targets="2020-01-01", pairs="2020-01-09", scale_factor=4)


def test_window_smaller_than_the_coarse_pixel(rng):
    ds, *_ = wang_case(rng, s=8, nc=(5, 5))
    with pytest.raises(
        InvalidParameterError, match=r"rm_window=5 .*smaller than one coarse pixel \(8"
    ):
        fitfc(ds, **roles(ds), preset="imagefusion", rm_window=5, scale_factor=8)


def test_data_range_excluding_every_pixel(rng, backend):
    ds, *_ = wang_case(rng)
    if backend == "dask":
        ds = rechunk(ds, (1, 20, 20))
    with pytest.raises(InvalidParameterError, match=r"no pixel of the fine images at 2020-01-01 .*"
                       r"inside data_range=\(0, 1\).*span"):  # fmt: skip
        fitfc(ds, **roles(ds), scale_factor=4, data_range=(0, 1)).compute()
    with pytest.raises(InvalidParameterError, match=r"data_range must be \(lo, hi\) with lo < hi"):
        fitfc(ds, **roles(ds), scale_factor=4, data_range=(5, 5))


def test_scale_factor_inconsistent_with_the_grids(rng):
    ds, *_ = wang_case(rng)
    with pytest.raises(GridMismatchError, match=r"scale_factor=99 is inconsistent with the grid"):
        fitfc(ds, **roles(ds), scale_factor=99)
    declared = ds.copy()
    declared.attrs["coarse_factor"] = 8
    with pytest.raises(GridMismatchError, match=r"scale_factor=4 .*coarse_factor.* ratio of 8"):
        fitfc(declared, **roles(ds), scale_factor=4)
    with pytest.raises(InvalidParameterError, match=r"scale_factor must be an integer >= 1"):
        fitfc(ds, **roles(ds), scale_factor=2.5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rm_window": 50}, r"rm_window must be odd.*Use 51"),
        ({"n_similar": 0}, r"n_similar must be an integer >= 1"),
        ({"sf_half_window": -1}, r"sf_half_window must be an integer >= 0"),
        ({"distance_scale": 0}, r"distance_scale must be a finite number > 0"),
        ({"residual": "later"}, r"Unknown residual='later'.*before_filter"),
        ({"border": "wrap"}, r"Unknown border='wrap'"),
        ({"variant": "matlab"}, r"Unknown variant='matlab'"),
        ({"preset": "x"}, r"Unknown preset='x'"),
        ({"windw": 3}, r"unknown parameter\(s\) \['windw'\]"),
        ({"similarity_bands": ("red", "swir")}, r"similarity_bands \['swir'\] not found"),
        ({"similarity_bands": []}, r"non-empty list"),
        ({"fill_residual": "yes"}, r"fill_residual must be True or False"),
        ({"device": "cuda"}, r"CPU \(numba\) kernel only"),
        ({"resolution_factor": 100, "preset": "imagefusion"}, r"larger than the image"),
        ({"diagnostics": 1}, r"diagnostics must be True or False"),
    ],
)
def test_parameter_errors(rng, kw, match):
    ds, *_ = wang_case(rng)
    with pytest.raises(InvalidParameterError, match=match) as info:
        fitfc(ds, **roles(ds), **{"scale_factor": 4, **kw})
    assert isinstance(info.value, XFusionError) and isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------
# (f) laziness, keys, pairs, parameters


def test_lazy_keys_and_names(rng):
    ds, *_ = wang_case(rng)
    lz = rechunk(ds, (1, 13, 14))
    with raise_if_dask_computes():
        out = fitfc(lz, **roles(ds), scale_factor=4, diagnostics=True)
        again = fitfc(lz, **roles(ds), scale_factor=4, diagnostics=True)
        other = fitfc(lz, **roles(ds), scale_factor=4, n_similar=7)
        imf = fitfc(lz, **roles(ds), preset="imagefusion", rm_window=9, resolution_factor=4)
    assert_lazy(out)
    assert_lazy(imf)
    for v in out.data_vars.values():
        assert v.data.name.startswith("xfusion.fitfc-")
    assert out.fine_red.data.name == again.fine_red.data.name
    assert out.fine_red.data.name != other.fine_red.data.name
    assert out.fine_red.name == "fine_red"
    assert list(out.data_vars) == [f"fine_{b}{s}" for b in ("red", "nir")
                                   for s in ("", "_a", "_b", "_residual")]  # fmt: skip
    assert out.fine_red_a.dtype == np.float32


def test_pair_selection(rng):
    f = rng.normal(1000, 100, (4, 1, 16, 16)).astype("float32")
    c = up(rng.normal(1000, 100, (4, 1, 4, 4)), 4).astype("float32")
    f[[1, 3]] = np.nan
    ds = cube(f, c, names=("red",), fine_obs=(True, False, True, False))
    kw = {"fine": "fine_red", "coarse": "coarse_red", "scale_factor": 4, "sf_half_window": 2}
    day = lambda a: [str(t)[:10] for t in a.values]
    out = fitfc(ds, **kw)
    assert day(out.time) == ["2020-01-09", "2020-01-25"]
    assert day(out.pair_time) == ["2020-01-01", "2020-01-17"]
    assert day(fitfc(ds, **kw, targets="2020-01-09", pairs="after").pair_time) == ["2020-01-17"]
    out = fitfc(ds, **kw, pairs={"2020-01-09": "2020-01-17", "2020-01-25": "2020-01-01"})
    assert day(out.pair_time) == ["2020-01-17", "2020-01-01"]
    # validate a fine date: predict 2020-01-17 from 2020-01-01
    assert day(fitfc(ds, **kw, targets="2020-01-17").pair_time) == ["2020-01-01"]


def test_presets_params_and_halo():
    assert FITFC_PRESETS["wang"] == FitfcParams()
    w, imf = FITFC_PRESETS["wang"], FITFC_PRESETS["imagefusion"]
    assert (w.rm_radius, w.sf_half_window, w.n_similar, w.distance_scale) == (1, 20, 20, 20.5)
    assert w.eps == np.finfo(float).eps and w.border == "replicate" and w.variant == "wang"
    assert (imf.rm_window, imf.sf_half_window, imf.n_similar, imf.distance_scale) == (
        51,
        25,
        10,
        25.5,
    )
    assert imf.resolution_factor == 30 and imf.similarity_bands == "all" and imf.border == "clip"
    assert FITFC_PRESETS["lst"].data_range == (150.0, 400.0)
    names = {p.name for p in PARAMS}
    assert set(FitfcParams.__dataclass_fields__) <= names
    assert {"preset", "variant", "scale_factor", "pairs", "diagnostics", "device"} <= names
    p, _ = F._resolve_params("wang", None, {"sf_half_window": 10})
    assert p.distance_scale == 10.5  # A follows w0 when only w0 is given
    p, _ = F._resolve_params("wang", None, {"sf_half_window": 10, "distance_scale": 3})
    assert p.distance_scale == 3.0
    p, _ = F._resolve_params("wang", None, {"similarity_bands": "red, nir"})
    assert p.similarity_bands == ("red", "nir")
    assert dask.base.tokenize(p) == dask.base.tokenize(F._resolve_params(
        "wang", None, {"similarity_bands": ("red", "nir")})[0])  # fmt: skip
    assert halo(w, 16) == 20 + 16 * 3 + 15
    assert halo(imf, None, shape=(600, 600)) < halo(imf, None)


def test_lst_preset_on_a_scene():
    scene = synthetic_scene((64, 64), times=3, fine_times=[0], coarse_factor=8,
                            cloud_fraction=0.0, coarse_cloud_fraction=0.0, seed=2)  # fmt: skip
    out = fitfc(scene, fine="fine", coarse="coarse", preset="lst")
    truth = scene.truth.sel(time=out.time)
    err = float(np.sqrt(np.nanmean((out.fine - truth) ** 2)))
    base = float(np.sqrt(np.nanmean((scene.fine.isel(time=0) - truth) ** 2)))
    assert err < base


def test_docstring_examples_run():
    import doctest

    res = doctest.testmod(F, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted >= 6
    for section in ("Parameters", "Returns", "Raises", "Notes", "References", "Examples"):
        assert f"\n    {section}\n    ---" in F.fitfc.__doc__
