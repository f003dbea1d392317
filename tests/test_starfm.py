"""Tests of the public STARFM method (xfusion.starfm / ds.fusion.starfm).

(a) parity with the USDA STARFM v1.2.1 output on synthetic600 through the public API and the
    CLI (float and integer I/O, numpy and dask in ragged chunks);
(b) chunk invariance: bit-identical output for any chunking (the halo and the exact global
    similarity statistic), numpy == dask;
(c) known answers: per-class constant fields give fine + coarse change, no coarse change gives
    the fine image back, multi-band == band by band, integer I/O with fill, NaN neighbourhoods;
(d) laziness, graph-key prefix, accessor == function, pair selection, window from the grid;
(e) the torch kernel against the numba kernel on CPU, and on CUDA (``-m gpu --run-gpu``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from fractions import Fraction

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from conftest import requires_torch
from odc.geo.geobox import GeoBox

import xfusion
from xfusion.cube import from_geotiffs, from_numpy
from xfusion.errors import EmptyPredictionWarning, InvalidParameterError
from xfusion.methods import _starfm_stats as ST
from xfusion.methods import starfm as S
from xfusion.methods._starfm_kernel import starfm_block
from xfusion.testing import assert_lazy, raise_if_dask_computes

FILL = -9999
TIMES = ["2020-01-01", "2020-01-09", "2020-01-17", "2020-01-25"]


def gbox(ny, nx, crs="EPSG:32633", res=30.0):
    return GeoBox((ny, nx), Affine(res, 0, 500000, 0, -res, 4000000), crs)


def random_stack(rng, shape, *, holes=True, integer=False):
    """(time, y, x) fine and coarse stacks with land-cover classes, change, NaNs, out-of-range."""
    nt, ny, nx = shape
    classes = rng.choice([800.0, 850.0, 2000.0, 5000.0], size=(ny, nx))
    fine = classes[None] + 80.0 * np.arange(nt)[:, None, None] + rng.uniform(0, 60, shape)
    coarse = fine + rng.uniform(-150, 150, shape)
    if integer:
        fine, coarse = np.round(fine), np.round(coarse)
    if holes:
        for a in (fine, coarse):
            a[rng.random(shape) < 0.03] = np.nan
            a[rng.random(shape) < 0.01] = -5.0  # outside the USDA data range: invalid
    return fine.astype("float32"), coarse.astype("float32")


def small_cube(rng, shape=(4, 30, 33), *, bands=1, fine_obs=(True, False, False, True),
               chunks=None, holes=True):  # fmt: skip
    data, observed = {}, {}
    for b in range(bands):
        f, c = random_stack(rng, shape, holes=holes)
        f[~np.asarray(fine_obs)] = np.nan
        sfx = "" if bands == 1 else f"_{b}"
        data[f"fine{sfx}"], data[f"coarse{sfx}"] = f, c
        observed[f"fine{sfx}"] = list(fine_obs)
        observed[f"coarse{sfx}"] = [True] * shape[0]
    if chunks is not None:
        data = {k: da.from_array(v, chunks=chunks) for k, v in data.items()}
    return from_numpy(data, geobox=gbox(*shape[1:]), times=TIMES[: shape[0]], observed=observed)


def rechunk_cube(ds, chunks):
    """The same cube, its data variables dask-backed with ``chunks`` (coords stay numpy)."""
    out = ds.copy()
    for v in ds.data_vars:
        out[v] = ds[v].copy(data=da.from_array(ds[v].values, chunks=chunks))
    return out


# ---------------------------------------------------------------------------------------------
# (a) USDA parity on synthetic600


@pytest.fixture(scope="module")
def s600():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "synthetic600")
    if not os.path.isdir(folder):
        pytest.skip(f"shared data folder not found at {folder}")
    import rasterio

    paths = {n: os.path.join(folder, f"{n}.tif") for n in
             ("fine_t1", "coarse_t1", "coarse_t2", "fine_t2_truth", "reference_starfm_usda_v121")}  # fmt: skip
    with rasterio.open(paths["reference_starfm_usda_v121"]) as src:
        ref = src.read(1)
    spec = {
        "fine": {"2001-01-01": paths["fine_t1"]},
        "coarse": {"2001-01-01": paths["coarse_t1"], "2001-01-17": paths["coarse_t2"]},
    }
    cube = from_geotiffs(**spec)  # int16 files: float32 values, int16 encoding
    fcube = cube.copy()
    for v in fcube.data_vars:  # the same values as a plain float cube (no integer encoding)
        fcube[v].encoding = {}
    out = xfusion.starfm(fcube, fine="fine", coarse="coarse")  # the USDA defaults
    return {"paths": paths, "spec": spec, "ref": ref, "cube": cube, "fcube": fcube, "out": out}


def parity(pred, ref, *, fill_is):
    """Fraction of valid pixels exactly equal and within +-1, and whether fills coincide."""
    pred = np.asarray(pred, dtype=np.float64)
    same_fill = np.array_equal(fill_is(pred), ref == FILL)
    both = ~fill_is(pred) & (ref != FILL)
    diff = np.abs(pred[both] - ref[both])
    return (diff == 0).mean(), (diff <= 1).mean(), same_fill


def test_usda_parity_public_api(s600):
    out, ref = s600["out"], s600["ref"]
    assert out.fine.dtype == np.float32 and out.fine.shape == (1, 600, 600)
    assert str(out.time.values[0])[:10] == "2001-01-17"
    assert str(out.pair_time.values[0])[:10] == "2001-01-01"
    record = json.loads(out.attrs["xfusion_starfm"])
    assert record["window"] == 50 and record["mode"] == "reference"
    exact, within1, same_fill = parity(out.fine.values[0], ref, fill_is=np.isnan)
    assert same_fill  # NaN exactly where USDA wrote -9999 (392 pixels)
    assert within1 >= 0.999 and exact >= 0.999, (exact, within1)


def test_usda_parity_from_integer_geotiffs(s600):
    """int16 GeoTIFFs through from_geotiffs give int16 output with their fill, as USDA writes."""
    cube = s600["cube"]
    assert cube.fine.dtype == np.float32 and cube.fine.encoding["dtype"] == np.int16
    assert cube.fine.encoding["_FillValue"] == FILL
    out = xfusion.starfm(cube, fine="fine", coarse="coarse")
    assert out.fine.dtype == np.int16 and out.fine.attrs["nodata"] == FILL
    float_pred = s600["out"].fine.values[0]
    np.testing.assert_array_equal(
        out.fine.values[0], np.where(np.isnan(float_pred), FILL, float_pred)
    )
    # dask input too, and arithmetic on the cube (a float cube) gives floats back
    lazy = xfusion.starfm(from_geotiffs(**s600["spec"], chunks=256), fine="fine", coarse="coarse")
    assert lazy.fine.dtype == np.int16
    np.testing.assert_array_equal(lazy.fine.values, out.fine.values)
    scaled = xfusion.starfm(cube / 1e4, fine="fine", coarse="coarse", preset="reflectance")
    assert scaled.fine.dtype == np.float32


def test_usda_parity_integer_io(s600):
    """int16 input with nodata -9999 gives int16 output with -9999 fill, as the C program."""
    import rasterio

    cube = s600["fcube"].copy()
    for name, key, t in (("fine", "fine_t1", 0), ("coarse", "coarse_t1", 0)):
        with rasterio.open(s600["paths"][key]) as src:
            raw = np.full((2, 600, 600), FILL, np.int16)
            raw[t] = src.read(1)
        cube[name] = (cube[name].dims, raw, {"nodata": FILL})
    with rasterio.open(s600["paths"]["coarse_t2"]) as src:
        cube["coarse"].values[1] = src.read(1)
    out = xfusion.starfm(cube, fine="fine", coarse="coarse")
    pred = out.fine.values[0]
    assert out.fine.dtype == np.int16 and out.fine.attrs["nodata"] == FILL
    float_pred = s600["out"].fine.values[0]
    np.testing.assert_array_equal(pred, np.where(np.isnan(float_pred), FILL, float_pred))
    exact, within1, same_fill = parity(pred, s600["ref"], fill_is=lambda a: a == FILL)
    assert same_fill and within1 >= 0.999 and exact >= 0.999


def test_synthetic600_dask_ragged_chunks_bit_identical(s600):
    cube = from_geotiffs(**s600["spec"], chunks=(170, 233))
    for v in cube.data_vars:
        cube[v].encoding = {}
    with raise_if_dask_computes():
        lazy = xfusion.starfm(cube, fine="fine", coarse="coarse")
    assert lazy.fine.data.chunks[1:] == ((170, 170, 170, 90), (233, 233, 134))
    xr.testing.assert_identical(lazy.compute(), s600["out"])


def test_cli_parity_and_two_pairs(s600, tmp_path):
    import rasterio

    from xfusion.cli import main

    p = s600["paths"]
    out = tmp_path / "p.tif"
    argv = ["fuse", "starfm", "--fine", f"2001-01-01={p['fine_t1']}",
            "--coarse", f"2001-01-01={p['coarse_t1']}", "--coarse", f"2001-01-17={p['coarse_t2']}",
            "--target", "2001-01-17", "--out", str(out), "--chunks", "256",
            "--param", "max_search_distance=750", "--param", "num_slice=40",
            "--param", "uncertainty_fine=50", "--param", "uncertainty_coarse=50",
            "--param", "data_range=0,10000", "--param", "fill=-9999",
            "--param", "mode=reference", "--param", "resolution=30", "--param", "preset=usda"]  # fmt: skip
    assert main(argv) == 0
    with rasterio.open(out) as src:
        got = src.read(1)
        assert src.dtypes[0] == "int16" and src.nodata == FILL  # as the USDA program writes
    exact, within1, same_fill = parity(got, s600["ref"], fill_is=lambda a: a == FILL)
    assert same_fill and within1 >= 0.999 and exact >= 0.999

    # two --fine dates around the target: both pairs are used (two-pair mode)
    out2 = tmp_path / "p2.tif"
    argv2 = ["fuse", "starfm", "--fine", f"2001-01-01={p['fine_t1']}",
             "--fine", f"2001-02-02={p['fine_t2_truth']}",
             "--coarse", f"2001-01-01={p['coarse_t1']}", "--coarse", f"2001-01-17={p['coarse_t2']}",
             "--coarse", f"2001-02-02={p['coarse_t2']}", "--target", "2001-01-17",
             "--out", str(out2), "--chunks", "300"]  # fmt: skip
    assert main(argv2) == 0
    with rasterio.open(out2) as src:
        two = src.read(1)
        assert src.count == 1
    cube = from_geotiffs(fine={"2001-01-01": p["fine_t1"], "2001-02-02": p["fine_t2_truth"]},
                         coarse={"2001-01-01": p["coarse_t1"], "2001-01-17": p["coarse_t2"],
                                 "2001-02-02": p["coarse_t2"]})  # fmt: skip
    api = xfusion.starfm(cube, fine="fine", coarse="coarse", pairs="bracket")
    assert str(api.pair_time_after.values[0])[:10] == "2001-02-02"
    np.testing.assert_array_equal(two, api.fine.values[0])
    assert not np.array_equal(two, got, equal_nan=True)


def test_cli_registry_and_bad_params(tmp_path, capsys):
    from xfusion.cli import main
    from xfusion.methods import get

    starfm_entry = get("starfm")
    issue_keys = {"max_search_distance", "resolution", "num_slice", "uncertainty_fine",
                  "uncertainty_coarse", "data_range", "fill", "preset", "mode"}  # fmt: skip
    assert issue_keys <= set(starfm_entry.param_names)
    assert starfm_entry.param("data_range").parse("0,10000") == (0.0, 10000.0)
    assert starfm_entry.param("data_range").parse("-inf,inf") == (-math.inf, math.inf)
    assert callable(starfm_entry.load())
    argv = ["fuse", "starfm", "--fine", "2001-01-01=a.tif", "--coarse", "2001-01-01=b.tif",
            "--out", str(tmp_path / "o.tif")]  # fmt: skip
    assert main([*argv, "--param", "data_range=5"]) == 2
    assert "invalid value '5' for data_range" in capsys.readouterr().err
    assert main([*argv, "--param", "mode=exact"]) == 2
    assert "choose one of ['reference', 'float']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# (b) chunk invariance


CHUNKINGS = [(1, 5, 7), (4, 11, 4), (2, 13, 17), (4, 30, 33)]


@pytest.mark.parametrize(
    ("kwargs", "bands"),
    [
        ({"max_search_distance": 150}, 1),  # window 10 (even, asymmetric), reference mode
        ({"max_search_distance": 105, "mode": "float"}, 2),  # window 7, float, two bands
        ({"max_search_distance": 120, "pairs": "bracket", "diagnostics": True}, 1),
        ({"max_search_distance": 90, "pairs": "after", "mode": "float", "diagnostics": True}, 1),
    ],
)
def test_chunk_invariance_bit_identical(rng, kwargs, bands):
    ds = small_cube(rng, bands=bands)
    fine = [v for v in ds.data_vars if v.startswith("fine")]
    coarse = [v for v in ds.data_vars if v.startswith("coarse")]
    eager = xfusion.starfm(ds, fine=fine, coarse=coarse, **kwargs)
    assert all(np.isfinite(eager[v].values).mean() > 0.5 for v in fine)
    assert not any(dask.is_dask_collection(v.data) for v in eager.data_vars.values())
    for chunks in CHUNKINGS:
        lazy = xfusion.starfm(rechunk_cube(ds, chunks), fine=fine, coarse=coarse, **kwargs)
        assert_lazy(lazy)
        xr.testing.assert_identical(lazy.compute(), eager)


def test_chunk_invariance_detects_a_too_small_halo(rng, monkeypatch):
    """The invariance test can fail: with a halo one pixel short the seams change."""
    ds = small_cube(rng)
    eager = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150)
    real = S.map_blocks_halo

    def short_halo(*args, halo, **kw):
        return real(*args, halo=halo - 1, **kw)

    monkeypatch.setattr(S, "map_blocks_halo", short_halo)
    lazy = xfusion.starfm(rechunk_cube(ds, (1, 13, 17)), fine="fine", coarse="coarse",
                          max_search_distance=150)  # fmt: skip
    assert not lazy.fine.compute().equals(eager.fine)


def test_exact_moments_do_not_depend_on_the_blocks(rng):
    v = (rng.normal(1500, 700, (1, 1, 57, 61)) * rng.choice([1, 1e-3, 1e3], (1, 1, 57, 61)))
    v[rng.random(v.shape) < 0.05] = np.nan
    kw = {"lo": -math.inf, "hi": math.inf, "fill": None}
    whole = ST.moment_parts(v, **kw)
    ok = np.isfinite(v)
    exact_s = sum(Fraction(float(x)) for x in v[ok])
    assert sum(Fraction(float(x)) for x in whole[0, 0, 0, 2 : 2 + ST._NPART]) == exact_s
    thr = ST.threshold_from_parts(whole, num_slice=40, reference=False)
    assert thr[0, 0] == pytest.approx(np.nanstd(v) * 2 / 40, rel=1e-12)
    for rows, cols in (((10, 30), (7,)), ((1, 2, 3, 50), (20, 40, 60)), ((), (1,))):
        parts = [
            ST.moment_parts(v[..., r0:r1, c0:c1], **kw)
            for r0, r1 in zip((0, *rows), (*rows, 57), strict=True)
            for c0, c1 in zip((0, *cols), (*cols, 61), strict=True)
        ]
        split = ST.threshold_from_parts(np.concatenate(parts, axis=2), num_slice=40,
                                        reference=False)  # fmt: skip
        assert split[0, 0] == thr[0, 0]  # bit-identical, not just close


# ---------------------------------------------------------------------------------------------
# (c) known answers


def class_cube(fine_values, coarse_pair, coarse_target, *, dtype="float32", nodata=None):
    """Pair at TIMES[0], target at TIMES[1]; fine given per pixel, coarse as full images."""
    ny, nx = fine_values.shape
    f = np.stack([fine_values, np.full((ny, nx), np.nan)]).astype("float32")
    c = np.stack([coarse_pair, coarse_target]).astype("float32")
    return from_numpy({"fine": f, "coarse": c}, geobox=gbox(ny, nx), times=TIMES[:2],
                      observed={"fine": [True, False], "coarse": [True, True]})  # fmt: skip


def two_classes(ny=24, nx=26, a=(1200.0, 3400.0)):
    yy, xx = np.mgrid[:ny, :nx]
    return np.where((yy // 6 + xx // 5) % 2 == 0, a[0], a[1])


@pytest.mark.parametrize("mode", ["reference", "float"])
def test_constant_classes_give_fine_plus_coarse_change(backend, mode):
    L = two_classes()
    M1 = np.full(L.shape, 1500.0)
    M2 = np.full(L.shape, 1420.0)
    ds = class_cube(L, M1, M2)
    if backend == "dask":
        ds = rechunk_cube(ds, (1, 7, 9))
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150, mode=mode)
    got = out.fine.values[0]
    if mode == "reference":
        np.testing.assert_array_equal(got, L + M2 - M1)  # exactly, whatever the weights
    else:
        np.testing.assert_allclose(got, L + M2 - M1, rtol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "float"])
def test_no_coarse_change_gives_the_fine_image_back(rng, backend, mode):
    L = rng.choice([300.0, 900.0, 1500.0, 4000.0], size=(25, 27))  # classes > threshold apart
    M1 = L + rng.integers(-200, 200, size=L.shape)
    ds = class_cube(L, M1, M1)
    if backend == "dask":
        ds = rechunk_cube(ds, (2, 8, 10))
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=180, mode=mode)
    if mode == "reference":
        np.testing.assert_array_equal(out.fine.values[0], L)
    else:
        np.testing.assert_allclose(out.fine.values[0], L, rtol=1e-6)


def test_constant_fine_image_warns_and_gives_nan(backend):
    L = np.full((12, 13), 700.0)
    ds = class_cube(L, L + 5, L + 9)
    if backend == "dask":
        ds = rechunk_cube(ds, (1, 5, 5))
    with pytest.warns(EmptyPredictionWarning, match=r"is \(nearly\) constant.*threshold.*is 0"):
        out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=60).compute()
    assert np.isnan(out.fine.values).all()


def test_multiband_equals_band_by_band(rng, backend):
    ds = small_cube(rng, bands=3)
    if backend == "dask":
        ds = rechunk_cube(ds, (1, 9, 14))
    kw = {"max_search_distance": 120, "mode": "float", "diagnostics": True}
    together = xfusion.starfm(ds, fine=["fine_0", "fine_1", "fine_2"],
                              coarse=["coarse_0", "coarse_1", "coarse_2"], **kw).compute()  # fmt: skip
    assert list(together.data_vars) == [
        f"fine_{b}{s}" for b in range(3) for s in ("", "_n_candidates", "_weight_sum")
    ]
    for b in range(3):
        alone = xfusion.starfm(ds, fine=f"fine_{b}", coarse=f"coarse_{b}", **kw).compute()
        for v in alone.data_vars:
            xr.testing.assert_identical(together[v].drop_attrs(), alone[v].drop_attrs())
    # bands are paired by position: swapping the lists swaps nothing else
    swapped = xfusion.starfm(ds, fine=["fine_2", "fine_0"], coarse=["coarse_2", "coarse_0"],
                             **kw).compute()  # fmt: skip
    xr.testing.assert_identical(swapped["fine_0"], together["fine_0"])


def test_diagnostics(rng):
    ds = small_cube(rng)
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150,
                         diagnostics=True)  # fmt: skip
    n, w, p = out.fine_n_candidates.values, out.fine_weight_sum.values, out.fine.values
    assert out.fine_n_candidates.dtype == np.int32 and out.fine_weight_sum.dtype == np.float32
    assert ((n == 0) == (w == 0)).all()
    assert np.isnan(p[n == 0]).all() and (n <= 100).all() and n.max() > 20
    assert np.isfinite(p[n > 0]).mean() > 0.99  # the rest: predictions outside data_range


@pytest.mark.parametrize("mode", ["reference", "float"])
def test_integer_io_with_fill(rng, backend, mode):
    f, c = random_stack(rng, (2, 21, 23), integer=True)
    f[1] = np.nan
    fi = np.where(np.isnan(f), -1, f).astype(np.int16)
    ds = from_numpy({"fine": f, "coarse": c}, geobox=gbox(21, 23), times=TIMES[:2],
                    observed={"fine": [True, False], "coarse": [True, True]})  # fmt: skip
    ids = ds.copy()
    ids["fine"] = (ds.fine.dims, fi, {"nodata": -1})
    if backend == "dask":
        ds, ids = rechunk_cube(ds, (1, 8, 9)), rechunk_cube(ids, (1, 8, 9))
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 120, "mode": mode}
    ref = xfusion.starfm(ds, **kw).fine.values
    out = xfusion.starfm(ids, **kw)
    assert out.fine.dtype == np.int16 and out.fine.attrs["nodata"] == -1
    want = np.where(np.isnan(ref), -1, np.floor(np.nan_to_num(ref) + 0.5)).astype(np.int16)
    np.testing.assert_array_equal(out.fine.values, want)
    assert (out.fine.values == -1).any()
    # an explicit fill overrides the declared nodata for the output
    out = xfusion.starfm(ids, **kw, fill=-32768)
    np.testing.assert_array_equal(out.fine.values, np.where(want == -1, -32768, want))


def test_fill_value_marks_float_inputs_invalid(rng):
    f, c = random_stack(rng, (2, 20, 20), holes=False)
    f[1] = np.nan
    f[0, 5:8, 5:8] = -7.0
    ds = from_numpy({"fine": f, "coarse": c}, geobox=gbox(20, 20), times=TIMES[:2],
                    observed={"fine": [True, False], "coarse": [True, True]})  # fmt: skip
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 90, "mode": "float",
          "data_range": (-math.inf, math.inf)}  # fmt: skip
    assert np.isfinite(xfusion.starfm(ds, **kw).fine.values[0, 5:8, 5:8]).all()
    out = xfusion.starfm(ds, **kw, fill=-7.0).fine.values[0]
    assert np.isnan(out[5:8, 5:8]).all() and np.isfinite(out[:4]).all()


def test_nan_neighbourhoods_give_nan_without_crash(rng, backend):
    f, c = random_stack(rng, (3, 30, 30), holes=False)
    f[1:] = np.nan
    f[0, 4:20, 6:22] = np.nan  # a hole larger than the window
    c[2] = np.nan  # the whole coarse target missing
    ds = from_numpy({"fine": f, "coarse": c}, geobox=gbox(30, 30), times=TIMES[:3],
                    observed={"fine": [True, False, False], "coarse": [True, True, True]})  # fmt: skip
    if backend == "dask":
        ds = rechunk_cube(ds, (1, 7, 11))
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=90,
                         diagnostics=True).compute()  # fmt: skip
    p, n = out.fine.values, out.fine_n_candidates.values
    assert np.isnan(p[0, 4:20, 6:22]).all() and (n[0, 4:20, 6:22] == 0).all()
    assert np.isfinite(p[0, 22:, :]).mean() > 0.99
    assert np.isnan(p[1]).all() and (n[1] == 0).all()


def test_all_nan_pair_image_warns(backend):
    f = np.full((2, 10, 10), np.nan, "float32")
    c = np.full((2, 10, 10), 500.0, "float32")
    ds = from_numpy({"fine": f, "coarse": c}, geobox=gbox(10, 10), times=TIMES[:2],
                    observed={"fine": [True, False], "coarse": [True, True]})  # fmt: skip
    if backend == "dask":
        ds = rechunk_cube(ds, (1, 4, 4))
    with pytest.warns(EmptyPredictionWarning, match=r"\('fine' at 2020-01-01\) has no pixel strictly inside"):
        out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=60).compute()
    assert np.isnan(out.fine.values).all()


# ---------------------------------------------------------------------------------------------
# (d) laziness, keys, accessor, pairs, window


def test_lazy_keys_and_names(rng):
    ds = rechunk_cube(small_cube(rng), (1, 11, 12))
    with raise_if_dask_computes():
        out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150,
                             diagnostics=True)  # fmt: skip
        again = ds.fusion.starfm(fine="fine", coarse="coarse", max_search_distance=150,
                                 diagnostics=True)  # fmt: skip
        other = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=120)
    assert_lazy(out)
    for v in out.data_vars.values():
        assert v.data.name.startswith("xfusion.starfm-")
    layers = list(out.fine.data.dask.layers)
    assert any(k.startswith("xfusion.starfm-threshold-") for k in layers)
    assert any(k.startswith("xfusion.starfm-moments-") for k in layers)
    assert out.fine.data.name == again.fine.data.name  # deterministic
    assert out.fine.data.name != other.fine.data.name
    assert out.fine.data.name != out.fine_weight_sum.data.name
    assert out.fine.name == "fine"
    eager = xfusion.starfm(small_cube(np.random.default_rng(1234)), fine="fine", coarse="coarse",
                           max_search_distance=150, diagnostics=True)  # fmt: skip
    assert list(eager.data_vars) == list(out.data_vars)


def _held_peak_and_order(lazy, store):
    """Peak bytes held by the scheduler while streaming ``lazy`` to Zarr, and the task order."""
    from dask.callbacks import Callback

    from xfusion.io import to_zarr

    peak, order = [0], []

    class Held(Callback):
        def _pretask(self, key, dsk, state):
            order.append(str(key[0] if isinstance(key, tuple) else key))

        def _posttask(self, key, result, dsk, state, worker_id):
            held = sum(getattr(v, "nbytes", 0) for v in state["cache"].values())
            peak[0] = max(peak[0], held)

    with Held(), dask.config.set(scheduler="sync"):
        to_zarr(lazy, store, progress=False)
    return peak[0], order


def test_streaming_memory_does_not_hold_the_image(rng, tmp_path):
    """The global threshold must not make the scheduler hold the image: the predictions read
    their inputs again after it (the statistics pass keeps no chunk), and the input blocks of a
    row wait for the predictions two rows above (no read-ahead)."""
    from xfusion.io import open_zarr, to_zarr

    ds = small_cube(rng, shape=(2, 480, 120), fine_obs=(True, False), holes=False)
    to_zarr(ds.chunk({"time": 1, "y": 40, "x": 40}), tmp_path / "in.zarr", progress=False)
    cube = open_zarr(tmp_path / "in.zarr")
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 150}
    lazy = xfusion.starfm(cube, **kw)
    peak, order = _held_peak_and_order(lazy, tmp_path / "out.zarr")
    inputs = 3 * 480 * 120 * 4  # L1, M1, M2 in float32
    assert peak < 0.45 * inputs, peak / inputs  # 0.6-0.75 before (12 rows of 3 blocks)
    # every input block of the predictions is read after the threshold
    thr_at = max(i for i, k in enumerate(order) if k.startswith("xfusion.starfm-threshold-"))
    reads = [i for i, k in enumerate(order) if k.startswith("xfusion.starfm-inputs-")]
    assert len(reads) == 12 * 3 and min(reads) > thr_at
    # and the result is the eager one
    xr.testing.assert_identical(open_zarr(tmp_path / "out.zarr").fine.load(),
                                xfusion.starfm(ds, **kw).fine)  # fmt: skip


def test_accessor_is_the_function(rng):
    ds = small_cube(rng)
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 120}
    xr.testing.assert_identical(ds.fusion.starfm(**kw), xfusion.starfm(ds, **kw))
    assert xr.Dataset.fusion.starfm.__doc__ == xfusion.starfm.__doc__
    assert xfusion.starfm is S.starfm
    for section in ("Parameters", "Returns", "Raises", "Notes", "References", "Examples"):
        assert f"\n    {section}\n    ---" in S.starfm.__doc__


def test_pair_selection(rng):
    ds = small_cube(rng, fine_obs=(True, False, True, False))
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 120}
    day = lambda a: [str(t)[:10] for t in a.values]
    out = xfusion.starfm(ds, **kw)
    assert day(out.time) == ["2020-01-09", "2020-01-25"]
    assert day(out.pair_time) == ["2020-01-01", "2020-01-17"]
    out = xfusion.starfm(ds, **kw, targets=["2020-01-09"], pairs="after")
    assert day(out.pair_time) == ["2020-01-17"]
    out = xfusion.starfm(ds, **kw, targets=["2020-01-25", "2020-01-09"], pairs="2020-01-01")
    assert day(out.time) == ["2020-01-09", "2020-01-25"] and day(out.pair_time) == ["2020-01-01"] * 2
    out = xfusion.starfm(ds, **kw, targets="2020-01-09", pairs="bracket")
    assert day(out.pair_time) == ["2020-01-01"] and day(out.pair_time_after) == ["2020-01-17"]
    explicit = xfusion.starfm(ds, **kw, targets="2020-01-09", pairs=("2020-01-01", "2020-01-17"))
    xr.testing.assert_identical(explicit, out)
    mapped = xfusion.starfm(ds, **kw, targets="2020-01-09",
                            pairs={"2020-01-09": ("2020-01-01", "2020-01-17")})  # fmt: skip
    xr.testing.assert_identical(mapped, out)


def test_two_pairs_equal_the_kernel_on_stacked_pairs(rng):
    ds = small_cube(rng, fine_obs=(True, False, True, False))
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", targets="2020-01-09", pairs="bracket",
                         max_search_distance=120)  # fmt: skip
    f, c = ds.fine.values, ds.coarse.values
    thr = [ST.threshold_from_parts(ST.moment_parts(f[[i]][:, None], lo=0, hi=10000, fill=-9999),
                                   num_slice=40, reference=True)[0, 0] for i in (0, 2)]  # fmt: skip
    want = starfm_block(f[[0, 2]], c[[0, 2]], c[1], window=8, thresholds=thr, distance_scale=4.0,
                        fill_value=np.nan)  # fmt: skip
    np.testing.assert_array_equal(out.fine.values[0], want.astype(np.float32))


def test_window_from_grid_and_resolution(rng):
    ds = small_cube(rng, shape=(2, 20, 24), fine_obs=(True, False))
    rec = lambda o: json.loads(o.attrs["xfusion_starfm"])
    assert rec(xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150))[
        "window"] == 10  # fmt: skip
    out = xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150, resolution=50)
    assert rec(out)["window"] == 6 and rec(out)["resolution"] == 50
    # geographic CRS: the pixel size in metres must be given
    f, c = ds.fine.values, ds.coarse.values
    geo = from_numpy({"fine": f, "coarse": c}, geobox=gbox(20, 24, "EPSG:4326", 0.001),
                     times=TIMES[:2], observed={"fine": [True, False], "coarse": [True, True]})  # fmt: skip
    assert geo.fine.dims == ("time", "latitude", "longitude")
    out_geo = xfusion.starfm(geo, fine="fine", coarse="coarse", max_search_distance=150,
                             resolution=30)  # fmt: skip
    np.testing.assert_array_equal(
        out_geo.fine.values,
        xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=150).fine.values,
    )


def test_docstring_examples_run():
    import doctest

    res = doctest.testmod(S, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted >= 8


def test_presets_and_overrides():
    auto = S._resolve_params(None, {})
    assert auto == S.STARFM_PRESETS["auto"] and auto.auto_unit and auto.mode == "reference"
    assert S._resolve_params(None, {"data_range": (0, 1)}).auto_unit is False
    usda = S._resolve_params("usda", {})
    assert usda == dataclasses.replace(auto, auto_unit=False)
    lst = S._resolve_params("lst", {"uncertainty_fine": 0.7})
    assert lst.mode == "float" and lst.uncertainty_fine == 0.7 and lst.uncertainty_coarse == 0.5
    refl = S._resolve_params("reflectance", {"mode": "reference", "data_range": [0, 2]})
    assert refl.mode == "reference" and refl.data_range == (0.0, 2.0)
    assert dask.base.tokenize(lst) == dask.base.tokenize(S._resolve_params("lst", {
        "uncertainty_fine": 0.7}))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# presets are the same physics at another scale


def _unit_cube(rng, preset, *, quantised, shape=(3, 40, 44)):
    """Classes with change in the preset's unit (quantised in steps of distance_offset)."""
    p = S.STARFM_PRESETS[preset]
    lo, hi = p.data_range
    unit = (p.uncertainty_fine + p.uncertainty_coarse) / 2  # ~ one uncertainty
    nt, ny, nx = shape
    centre = lo + (hi - lo) * rng.choice([0.2, 0.35, 0.5, 0.7], size=(ny, nx))
    fine = centre[None] + unit * (1.5 * np.arange(nt)[:, None, None] + rng.uniform(0, 1.2, shape))
    coarse = fine + unit * rng.uniform(-3, 3, shape)
    if quantised:
        off = p.distance_offset
        fine, coarse = np.round(fine / off) * off, np.round(coarse / off) * off
    fine[1] = np.nan  # the target date (nearest pair before: 0; bracket: 0 and 2)
    fine[0][rng.random((ny, nx)) < 0.03] = np.nan
    return from_numpy({"fine": fine.astype("float64"), "coarse": coarse.astype("float64")},
                      geobox=gbox(ny, nx), times=TIMES[:nt],
                      observed={"fine": [True, False, True], "coarse": [True] * nt})  # fmt: skip


def _usda_units(preset, scale):
    """The preset's parameters in units scale times smaller, float mode, no fill value."""
    p = S.STARFM_PRESETS[preset]
    return {"preset": "usda", "mode": "float", "fill": None,
            "max_search_distance": p.max_search_distance, "num_slice": p.num_slice,
            "uncertainty_fine": p.uncertainty_fine * scale,
            "uncertainty_coarse": p.uncertainty_coarse * scale,
            "data_range": tuple(x * scale for x in p.data_range),
            "distance_offset": p.distance_offset * scale}  # fmt: skip


def _agree(a, b, *, tol):
    """Fraction of pixels within tol, and whether the NaN patterns coincide."""
    same_nan = np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a) & ~np.isnan(b)
    return float((np.abs(a[ok] - b[ok]) <= tol).mean()), same_nan


@pytest.mark.parametrize("preset", sorted(S.STARFM_PRESETS))
@pytest.mark.parametrize("pairs", ["nearest", "bracket"])
@pytest.mark.parametrize("quantised", [True, False])
def test_every_preset_equals_usda_on_the_data_rescaled(rng, preset, pairs, quantised):
    """preset(data) x s == usda(data x s) with every unit-bearing parameter x s, in float mode,
    where s makes the preset's distance_offset USDA's 1 (1e4 for reflectance, 100 for LST)."""
    ds = _unit_cube(rng, preset, quantised=quantised)
    p = S.STARFM_PRESETS[preset]
    scale = 1.0 / p.distance_offset
    kw = {"fine": "fine", "coarse": "coarse", "pairs": pairs, "diagnostics": True}
    got = xfusion.starfm(ds, **kw, preset=preset, mode="float")
    want = xfusion.starfm(ds * scale, **kw, **_usda_units(preset, scale))
    g, w = got.fine.values * scale, want.fine.values
    within1, same_nan = _agree(g, w, tol=1.0)
    assert same_nan and within1 >= 0.999, (within1, same_nan)
    assert np.isfinite(w).mean() > 0.9
    # the weights change with the unit exactly like 1 / t_dis (1 / t_dis**2 with two pairs)
    k = 2 if pairs == "bracket" else 1
    n_got, n_want = got.fine_n_candidates.values, want.fine_n_candidates.values
    same = n_got == n_want
    if quantised:  # every test decided alike; continuous data may flip a rare near-tie
        assert same.all()
    assert same.mean() >= 0.99
    np.testing.assert_allclose(got.fine_weight_sum.values[same] / scale**k,
                               want.fine_weight_sum.values[same], rtol=2e-5)  # fmt: skip


@pytest.mark.parametrize("lazy", [False, True])
def test_default_preset_finds_the_unit_per_variable(rng, lazy):
    """preset "auto" (the default): x1e4 data get "usda" exactly, 0..1 data "reflectance"
    (before: the usda default left 0..1 reflectance all NaN); one decision per variable."""
    ds = _unit_cube(rng, "usda", quantised=True)
    f, c = ds.fine.values, ds.coarse.values
    both = from_numpy({"fine": f, "coarse": c, "refl": f / 1e4, "refl_c": c / 1e4},
                      geobox=gbox(*f.shape[1:]), times=TIMES[:3],
                      observed={"fine": [True, False, True], "coarse": [True] * 3,
                                "refl": [True, False, True], "refl_c": [True] * 3})  # fmt: skip
    if lazy:
        both = both.chunk({"y": 17, "x": 23})
    kw = {"fine": ["fine", "refl"], "coarse": ["coarse", "refl_c"]}
    got = xfusion.starfm(both, **kw)
    usda = xfusion.starfm(ds, fine="fine", coarse="coarse", preset="usda")
    refl = xfusion.starfm(ds / 1e4, fine="fine", coarse="coarse", preset="reflectance")
    np.testing.assert_array_equal(got.fine.values, usda.fine.values)
    np.testing.assert_array_equal(got.refl.values, refl.fine.values)
    assert np.isfinite(got.refl.values).mean() > 0.9
    # the same as usda in float mode on the data x 1e4, within 1 DN
    flt = xfusion.starfm(ds, fine="fine", coarse="coarse", preset="usda", mode="float")
    within1, same_nan = _agree(got.refl.values * 1e4, flt.fine.values, tol=1.0)
    assert same_nan and within1 >= 0.999
    # a unit-bearing parameter turns the detection off (the usda range on 0..1 data: NaN)
    with pytest.warns(EmptyPredictionWarning, match="constant|data_range"):
        off = xfusion.starfm(ds / 1e4, fine="fine", coarse="coarse", uncertainty_fine=50.0)
    assert np.isnan(off.fine.values).all()


def test_reflectance_preset_equals_usda_float_on_synthetic600(s600):
    """The issue's case: synthetic600 / 1e4 with "reflectance" is USDA float mode x 1e-4."""
    usda = xfusion.starfm(s600["fcube"], fine="fine", coarse="coarse", mode="float")
    refl = xfusion.starfm(s600["fcube"] / 1e4, fine="fine", coarse="coarse",
                          preset="reflectance")  # fmt: skip
    u, r = usda.fine.values[0], refl.fine.values[0] * 1e4
    within1, same_nan = _agree(r, u, tol=1.0)
    assert same_nan and within1 >= 0.999, within1
    # the same accuracy against the truth (before the fix: RMSE 419.5 against 327.0)
    import rasterio

    with rasterio.open(s600["paths"]["fine_t2_truth"]) as src:
        truth = src.read(1).astype(np.float64)
    rmse = [np.sqrt(np.nanmean((p - truth) ** 2)) for p in (u, r)]
    assert rmse[1] == pytest.approx(rmse[0], rel=1e-3)


@pytest.fixture
def seen_threads(monkeypatch):
    """The threads= each numba kernel call receives (and the call still runs)."""
    from xfusion.methods import _starfm_kernel as K

    seen, real = [], K.starfm_block

    def spy(*args, threads=None, **kw):
        seen.append(threads)
        return real(*args, threads=threads, **kw)

    monkeypatch.setattr(K, "starfm_block", spy)
    monkeypatch.delenv("XFUSION_KERNEL_THREADS", raising=False)
    return seen


def test_kernel_threads_are_public(rng, seen_threads, monkeypatch):
    ds = small_cube(rng)
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 150, "device": "cpu"}
    base = xfusion.starfm(ds, **kw, threads=1)
    assert seen_threads == [1, 1]  # two targets, one band: numpy calls the kernel per target
    seen_threads.clear()
    xr.testing.assert_identical(xfusion.starfm(ds, **kw, threads=3), base)
    assert seen_threads == [3, 3]
    # dask: the budget is shared by the blocks (2 targets x 4 blocks = 8 tasks)
    seen_threads.clear()
    lazy = xfusion.starfm(rechunk_cube(ds, (1, 15, 17)), **kw, threads=16).compute()
    xr.testing.assert_identical(lazy, base)
    assert seen_threads and set(seen_threads) == {2}
    # the environment variable, and the dask config key (it wins over the variable)
    seen_threads.clear()
    monkeypatch.setenv("XFUSION_KERNEL_THREADS", "2")
    xfusion.starfm(ds, **kw)
    assert seen_threads == [2, 2]
    seen_threads.clear()
    with dask.config.set({"xfusion.kernel-threads": 5}):
        xfusion.starfm(ds, **kw)
    assert seen_threads == [5, 5]
    seen_threads.clear()
    xfusion.starfm(ds, **kw, threads=4)  # the argument wins over both
    assert seen_threads == [4, 4]


@pytest.mark.parametrize(("setting", "match"), [
    ({"threads": 0}, r"threads must be a positive integer.*got 0"),
    ({"threads": 2.5}, r"threads must be a positive integer.*got 2\.5"),
    ({"env": "many"}, r"environment variable XFUSION_KERNEL_THREADS must be a positive.*'many'"),
    ({"config": -1}, r"dask config value 'xfusion.kernel-threads' must be a positive.*-1"),
])  # fmt: skip
def test_bad_thread_settings_are_clear_errors(rng, monkeypatch, setting, match):
    ds = small_cube(rng, shape=(2, 12, 13), fine_obs=(True, False))
    monkeypatch.delenv("XFUSION_KERNEL_THREADS", raising=False)
    if "env" in setting:
        monkeypatch.setenv("XFUSION_KERNEL_THREADS", setting["env"])
    cfg = {"xfusion.kernel-threads": setting["config"]} if "config" in setting else {}
    with dask.config.set(cfg), pytest.raises(InvalidParameterError, match=match):
        xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=90,
                       threads=setting.get("threads"))  # fmt: skip


def test_device_cuda_without_gpu_is_a_clear_error(rng):
    if S._cuda_available():
        pytest.skip("this machine has CUDA")
    ds = small_cube(rng, shape=(2, 12, 12), fine_obs=(True, False))
    with pytest.raises(InvalidParameterError, match=r"device='cuda'.*no CUDA device"):
        xfusion.starfm(ds, fine="fine", coarse="coarse", max_search_distance=60, device="cuda")


# ---------------------------------------------------------------------------------------------
# (e) the torch kernel


@requires_torch
@pytest.mark.parametrize(("reference", "npairs", "window", "halo"),
                         [(True, 1, 6, (0, 0, 0, 0)), (False, 2, 7, (3, 3, 0, 3)),
                          (True, 2, 5, (2, 2, 2, 2)), (False, 1, 8, (4, 3, 4, 3))])  # fmt: skip
def test_torch_kernel_matches_numba_on_cpu(rng, reference, npairs, window, halo):
    from xfusion.methods._starfm_torch import starfm_block_torch

    ny, nx = 17 + halo[0] + halo[1], 19 + halo[2] + halo[3]
    f, c = random_stack(rng, (npairs + 1, ny, nx), integer=reference)
    kw = {"window": window, "thresholds": [45.0 + p for p in range(npairs)], "halo": halo,
          "reference": reference, "diagnostics": True}  # fmt: skip
    want = starfm_block(f[:npairs], c[:npairs], c[npairs], threads=1, **kw)
    got = starfm_block_torch(f[:npairs], c[:npairs], c[npairs], device="cpu", **kw)
    np.testing.assert_array_equal(got.n_candidates, want.n_candidates)
    if reference:
        assert np.abs(got.prediction - want.prediction).max() <= 1
        np.testing.assert_array_equal(got.prediction == FILL, want.prediction == FILL)
    else:
        np.testing.assert_allclose(got.prediction, want.prediction, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(got.weight_sum, want.weight_sum, rtol=1e-6)
    assert (want.n_candidates > 1).any() and (want.n_candidates == 0).any()


@requires_torch
def test_worker_dispatch_to_torch(rng, monkeypatch):
    """When the worker resolves the device to torch, the public API runs the torch kernel."""
    ds = small_cube(rng)
    kw = {"fine": "fine", "coarse": "coarse", "max_search_distance": 90, "mode": "float"}
    numba_out = xfusion.starfm(ds, **kw)
    monkeypatch.setattr(S, "_torch_device", lambda device: "cpu")
    torch_out = xfusion.starfm(rechunk_cube(ds, (1, 11, 13)), **kw).compute()
    xr.testing.assert_allclose(torch_out, numba_out, rtol=1e-6)


@requires_torch
@pytest.mark.gpu
def test_cuda_matches_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    scene = xfusion.testing.synthetic_scene(
        (300, 280), kind="reflectance", bands=["red", "nir"], times=3, fine_times=[0],
        coarse_cloud_fraction=0.0, seed=3, chunks={"time": 1, "y": 128, "x": 128},
    )  # fmt: skip
    kw = {"fine": ["fine_red", "fine_nir"], "coarse": ["coarse_red", "coarse_nir"],
          "preset": "reflectance", "diagnostics": True}  # fmt: skip
    cpu = xfusion.starfm(scene, **kw, device="cpu").compute()
    gpu = xfusion.starfm(scene, **kw, device="cuda").compute()
    auto = xfusion.starfm(scene, **kw, device="auto").compute()
    xr.testing.assert_allclose(gpu, cpu, rtol=1e-5)
    xr.testing.assert_equal(auto, gpu)  # attrs differ only in the recorded device string
    scaled = scene.copy()
    for v in kw["fine"] + kw["coarse"]:
        scaled[v] = scene[v] * 1e4
    ref_cpu = xfusion.starfm(scaled, fine=kw["fine"], coarse=kw["coarse"], device="cpu").compute()
    ref_gpu = xfusion.starfm(scaled, fine=kw["fine"], coarse=kw["coarse"], device="cuda").compute()
    for v in kw["fine"]:
        a, b = ref_cpu[v].values, ref_gpu[v].values
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        ok = np.isfinite(a)
        assert np.abs(a[ok] - b[ok]).max() <= 1 and (a[ok] == b[ok]).mean() >= 0.999


def test_import_does_not_compile_or_import_torch():
    import subprocess
    import sys

    code = ("import sys, xfusion; xfusion.starfm; "
            "print('torch' in sys.modules, 'numba' in sys.modules)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S._torch_device("cpu") is None


@pytest.mark.parametrize("lazy", [False, True])
def test_fine_and_coarse_in_different_units_is_an_error(rng, lazy):
    """Fine reflectance x1e4 with 0..1 coarse reflectance: the coarse change would be 1e4
    times too small and the prediction the fine image, silently. It is an error naming both."""
    ds = _unit_cube(rng, "usda", quantised=True)
    mixed = ds.assign(coarse=ds.coarse / 1e4)
    if lazy:
        mixed = mixed.chunk({"y": 20, "x": 22})
    with pytest.raises(InvalidParameterError, match=r"'fine'.*'coarse'.*different units"):
        xfusion.starfm(mixed, fine="fine", coarse="coarse").compute()
