"""Tests of the public ESTARFM method (xfusion.methods.estarfm.estarfm).

(a) known answers of specs/estarfm.md section 7 through the public API: constant fields, zero
    change, identity pair; the brute-force reference on a cube; images smaller than the window;
(b) chunk invariance (random ragged chunkings, bit-identical), numpy == dask, Zhu's block mode
    independent of the Dask chunks;
(c) integer I/O with a fill value, diagnostics, laziness and graph keys, pair selection;
(d) clear errors for bad input, presets and the parameter description;
(e) a smoke run on the real Kranj scene (skipped without ../shared/data).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from _ref_estarfm import estarfm_ref, estarfm_ref_blocks
from affine import Affine
from odc.geo.geobox import GeoBox

from xfusion.cube import from_numpy
from xfusion.errors import InvalidParameterError, NoOverlapError, TimeAxisError
from xfusion.methods import estarfm as E
from xfusion.methods.estarfm import ESTARFM_PRESETS, PARAMS, EstarfmParams, estarfm, halo
from xfusion.testing import assert_lazy, raise_if_dask_computes

TIMES = ["2020-01-01", "2020-01-09", "2020-01-17", "2020-01-25", "2020-02-02"]


def gbox(ny, nx, res=30.0):
    return GeoBox((ny, nx), Affine(res, 0, 500000, 0, -res, 4000000), "EPSG:32633")


def layers(rng, nb, ny, nx, *, nan=0.03):
    """(time=5, nb, y, x) fine and coarse stacks: classes, change between the dates, gaps."""
    cls = rng.choice([900.0, 1600.0, 2900.0, 4200.0], size=(ny, nx))
    t = np.arange(5, dtype=np.float64)[:, None, None, None]
    gain = rng.uniform(0.9, 1.2, size=(1, nb, 1, 1))
    fine = cls[None, None] * gain ** t + 120.0 * t + rng.uniform(0, 250, (5, nb, ny, nx))
    coarse = fine + rng.normal(0, 150, (5, nb, ny, nx))
    for a in (fine, coarse):
        a[rng.random(a.shape) < nan] = np.nan
    return fine, coarse


def make_cube(fine, coarse, *, fine_obs=(True, False, True, False, True), chunks=None):
    nt, nb, ny, nx = fine.shape
    data, observed = {}, {}
    for b in range(nb):
        sfx = "" if nb == 1 else f"_{b}"
        f = fine[:, b].astype("float32")
        f[~np.asarray(fine_obs)] = np.nan
        data[f"fine{sfx}"] = f
        data[f"coarse{sfx}"] = coarse[:, b].astype("float32")
        observed[f"fine{sfx}"] = list(fine_obs)
        observed[f"coarse{sfx}"] = [True] * nt
    if chunks is not None:
        data = {k: da.from_array(v, chunks=chunks) for k, v in data.items()}
    return from_numpy(data, geobox=gbox(ny, nx), times=TIMES[:nt], observed=observed)


def names(ds):
    return {"fine": [v for v in ds.data_vars if v.startswith("fine")],
            "coarse": [v for v in ds.data_vars if v.startswith("coarse")]}  # fmt: skip


def rechunk(ds, chunks):
    out = ds.copy()
    for v in ds.data_vars:
        out[v] = ds[v].copy(data=da.from_array(ds[v].values, chunks=chunks))
    return out


def ref_inputs(ds, t, before, after):
    """(F1, C1, F2, C2, C0) of a cube as (nb, y, x) float64."""
    nm = names(ds)
    get = lambda role, k: np.stack([ds[v].values[k] for v in nm[role]]).astype(np.float64)
    return get("fine", before), get("coarse", before), get("fine", after), get("coarse", after), \
        get("coarse", t)  # fmt: skip


def prediction(out):
    return np.stack([out[v].values for v in out.data_vars if not v.endswith("_n_candidates")], 1)


@pytest.fixture
def cube(rng):
    return make_cube(*layers(rng, 2, 26, 23))


# ---------------------------------------------------------------------------------------------
# (a) known answers


@pytest.mark.parametrize("variant", ["zhu", "imagefusion"])
def test_constant_fields_give_fine_plus_coarse_change(backend, variant):
    """Section 7: F = C = const, C0 = const' -> P = F + (C0 - C)."""
    fine = np.full((5, 1, 12, 14), 1500.0)
    coarse = np.full((5, 1, 12, 14), 1500.0)
    coarse[1] = 1820.0
    coarse[3] = 1210.0
    ds = make_cube(fine, coarse, chunks=(1, 5, 6) if backend == "dask" else None)
    out = estarfm(ds, **names(ds), variant=variant, half_window=4, diagnostics=True,
                  truncate=False, dtype="float64")  # fmt: skip
    np.testing.assert_allclose(out.fine.values[0], 1820.0, atol=1e-6)
    np.testing.assert_allclose(out.fine.values[1], 1210.0, atol=1e-6)
    # zhu: threshold 0 and a strict test, no candidate; imagefusion: every pixel similar
    want = 0 if variant == "zhu" else 81
    assert out.fine_n_candidates.values[0, 6, 7] == want


@pytest.mark.parametrize("variant", ["zhu", "imagefusion"])
def test_zero_change_blends_the_two_fine_images(rng, backend, variant):
    """Section 7: C0 = C1 = C2 -> P = (F1 + F2) / 2 (T = 1/2 each)."""
    fine, _ = layers(rng, 2, 15, 13, nan=0.0)
    coarse = np.broadcast_to(fine[0] + rng.normal(0, 90, fine.shape[1:]), fine.shape).copy()
    ds = make_cube(fine, coarse, chunks=(1, 7, 6) if backend == "dask" else None)
    out = estarfm(ds, **names(ds), targets=TIMES[1], variant=variant, half_window=3,
                  truncate=False)  # fmt: skip
    want = (fine[0] + fine[2]).astype(np.float32).astype(np.float64) / 2
    np.testing.assert_allclose(prediction(out)[0], want, atol=2e-3)


def test_identity_pair_with_uniform_coarse_change(rng, backend):
    """Section 7: F1 = F2, C1 = C2 -> P = F1 + sum W V (C0 - C1); with C0 - C1 = delta
    everywhere and V = 1 (zhu: no coarse change between the pairs; imagefusion: a coarse
    spread below its uncertainty) P = F1 + delta."""
    fine, coarse = layers(rng, 2, 14, 16, nan=0.0)
    coarse[0] = 2000.0 + rng.normal(0, 5.0, coarse[0].shape)
    fine[2], coarse[2] = fine[0], coarse[0]
    coarse[1] = coarse[0] + 137.0
    ds = make_cube(fine, coarse, chunks=(1, 5, 7) if backend == "dask" else None)
    f1 = fine[0].astype(np.float32).astype(np.float64)
    for variant in ("zhu", "imagefusion"):
        out = estarfm(ds, **names(ds), targets=TIMES[1], variant=variant, half_window=3,
                      truncate=False, diagnostics=True)  # fmt: skip
        want = f1 + 137.0
        if variant == "imagefusion":  # too few candidates: no coarse change added
            few = out.fine_0_n_candidates.values[0] < 6
            assert few.any() and not few.all()
            want = np.where(few, f1, want)
        np.testing.assert_allclose(prediction(out)[0], want, atol=1e-2)


@pytest.mark.parametrize("kw", [{"variant": "zhu"}, {"variant": "imagefusion"},
                                {"variant": "imagefusion", "use_local_tol": True},
                                {"variant": "zhu", "threshold_std": "population"}])  # fmt: skip
def test_public_api_equals_the_brute_force(rng, kw):
    ds = make_cube(*layers(rng, 2, 14, 15))
    out = estarfm(ds, **names(ds), targets=TIMES[1], half_window=3, truncate=False,
                  diagnostics=True, dtype="float64", **kw)  # fmt: skip
    used = json.loads(out.attrs["xfusion_estarfm"])  # the parameters after the preset
    ref_kw = {k: used[k] for k in ("variant", "threshold_std", "change_min_fraction",
                                   "use_local_tol", "num_class", "fill", "min_candidates")}  # fmt: skip
    ref, cnt = estarfm_ref(*ref_inputs(ds, 1, 0, 2), half_window=3, **ref_kw)
    pred = prediction(out)[0]
    np.testing.assert_array_equal(np.isnan(pred), np.isnan(ref))
    np.testing.assert_allclose(pred, ref.astype(np.float32), rtol=1e-6, atol=1e-3)
    valid = ~np.isnan(ref[0])
    np.testing.assert_array_equal(out.fine_0_n_candidates.values[0][valid], cnt[valid])


def test_float32_first_pass_is_close_to_float64(cube):
    kw = {**names(cube), "half_window": 4, "truncate": False}
    f32 = estarfm(cube, **kw)
    f64 = estarfm(cube, **kw, dtype="float64")
    assert json.loads(f32.attrs["xfusion_estarfm"])["dtype"] == "float32"
    for v in f32.data_vars:
        np.testing.assert_array_equal(np.isnan(f32[v]), np.isnan(f64[v]))
        np.testing.assert_allclose(f32[v], f64[v], atol=0.05, rtol=0)
        assert not np.array_equal(f32[v], f64[v], equal_nan=True)  # not the same code path
    t32 = estarfm(cube, **{**kw, "truncate": True})
    t64 = estarfm(cube, **{**kw, "truncate": True}, dtype="float64")
    diff = np.abs(prediction(t32) - prediction(t64))
    assert np.nanmax(diff) <= 1 and np.nanmean(diff) < 0.01


def test_zhu_truncates_toward_zero_like_the_reference_programs(cube):
    exact = estarfm(cube, **names(cube), half_window=3, truncate=False)
    trunc = estarfm(cube, **names(cube), half_window=3, preset="zhu")
    for v in exact.data_vars:
        np.testing.assert_array_equal(trunc[v].values, np.trunc(exact[v].values))
    assert json.loads(trunc.attrs["xfusion_estarfm"])["truncate"] is True
    # the default ("auto") truncates integer outputs only: float data keep their decimals
    auto = estarfm(cube, **names(cube), half_window=3)
    for v in exact.data_vars:
        np.testing.assert_array_equal(auto[v].values, exact[v].values)


def test_image_smaller_than_the_window(rng):
    ds = make_cube(*layers(rng, 1, 9, 11))
    out = estarfm(ds, fine="fine", coarse="coarse", targets=TIMES[1], truncate=False,
                  dtype="float64")
    ref, _ = estarfm_ref(*ref_inputs(ds, 1, 0, 2), half_window=25)
    np.testing.assert_allclose(out.fine.values[0], ref[0].astype(np.float32), rtol=1e-6)
    assert np.isfinite(out.fine.values).any()


# ---------------------------------------------------------------------------------------------
# (b) chunk invariance, numpy == dask, blocks


@pytest.mark.parametrize("variant", ["zhu", "imagefusion"])
def test_chunk_invariance_bit_identical(rng, variant):
    ds = make_cube(*layers(rng, 2, 33, 31))
    kw = {**names(ds), "variant": variant, "half_window": 5, "diagnostics": True}
    want = estarfm(ds, **kw)
    for chunks in [(1, 33, 31), (1, 33, 9), (1, 13, 11), (1, 7, 8)]:
        got = estarfm(rechunk(ds, chunks), **kw)
        assert_lazy(got)
        xr.testing.assert_identical(got.compute(), want)
    for _ in range(2):  # random ragged chunkings
        ys = np.diff(np.r_[0, np.sort(rng.choice(np.arange(1, 33), 3, replace=False)), 33])
        xs = np.diff(np.r_[0, np.sort(rng.choice(np.arange(1, 31), 2, replace=False)), 31])
        got = estarfm(rechunk(ds, (1, tuple(ys), tuple(xs))), **kw)
        xr.testing.assert_identical(got.compute(), want)


def test_chunk_invariance_detects_a_too_small_halo(rng, monkeypatch):
    """The test above can fail: with a halo smaller than the window the result changes."""
    ds = make_cube(*layers(rng, 1, 30, 28))
    kw = {**names(ds), "half_window": 5}
    want = estarfm(ds, **kw)
    monkeypatch.setattr(E, "halo", lambda params: 2)
    got = estarfm(rechunk(ds, (1, 10, 9)), **kw).compute()
    assert not got.fine.equals(want.fine)


def test_block_mode_matches_zhu_blocks_whatever_the_chunks(rng):
    ds = make_cube(*layers(rng, 2, 27, 22))
    kw = {**names(ds), "targets": TIMES[1], "half_window": 3, "block": 10, "truncate": False,
          "threshold_std": "population", "dtype": "float64"}  # fmt: skip
    want = estarfm(ds, **kw)
    ref, _ = estarfm_ref_blocks(*ref_inputs(ds, 1, 0, 2), block=10, half_window=3,
                                threshold_std="population")  # fmt: skip
    np.testing.assert_allclose(prediction(want)[0], ref.astype(np.float32), rtol=1e-6)
    for chunks in [(1, 7, 9), (1, 13, 22), (1, 27, 4)]:
        got = estarfm(rechunk(ds, chunks), **kw)
        xr.testing.assert_identical(got.compute(), want)
    assert halo(EstarfmParams(**{**vars(ESTARFM_PRESETS["zhu"]), "block": 10})) == 0


def test_one_block_equals_the_default_mode(rng):
    ds = make_cube(*layers(rng, 1, 20, 18))
    kw = {**names(ds), "half_window": 4}
    xr.testing.assert_identical(
        estarfm(ds, **kw, block=500).drop_attrs(), estarfm(ds, **kw).drop_attrs()
    )


# ---------------------------------------------------------------------------------------------
# (c) I/O, diagnostics, laziness, pairs


def test_integer_io_with_fill(rng, backend):
    fine, coarse = layers(rng, 1, 17, 19)
    fine, coarse = np.round(fine), np.round(coarse)
    ds = make_cube(fine, coarse)
    ids = ds.copy()
    fi = np.where(np.isnan(ds.fine.values), -9999, ds.fine.values).astype(np.int16)
    ids["fine"] = (ds.fine.dims, fi, {"nodata": -9999})
    if backend == "dask":
        ds, ids = rechunk(ds, (1, 8, 9)), rechunk(ids, (1, 8, 9))
    # float input: float output (truncated by preset "zhu"; "auto" keeps the decimals), NaN
    # gaps; integer input: truncated integer output with the fill value
    ref = estarfm(ds, fine="fine", coarse="coarse", half_window=4, preset="zhu").fine.values
    np.testing.assert_array_equal(ref, np.trunc(ref))
    out = estarfm(ids, fine="fine", coarse="coarse", half_window=4)
    assert out.fine.dtype == np.int16 and out.fine.attrs["nodata"] == -9999
    want = np.where(np.isnan(ref), -9999, np.nan_to_num(ref)).astype(np.int16)
    np.testing.assert_array_equal(out.fine.values, want)
    assert (out.fine.values == -9999).any()
    # an explicit fill overrides the declared nodata for the output (and, as in Zhu's programs,
    # is the value the gaps take in the similarity threshold)
    out = estarfm(ids, fine="fine", coarse="coarse", half_window=4, fill=-32768)
    ref = estarfm(ds, fine="fine", coarse="coarse", half_window=4, fill=-32768,
                  preset="zhu").fine.values  # fmt: skip
    np.testing.assert_array_equal(out.fine.values, np.where(np.isnan(ref), -32768, ref))
    assert not np.array_equal(out.fine.values, np.where(want == -9999, -32768, want))


def test_fill_value_marks_float_inputs_invalid(rng):
    fine, coarse = layers(rng, 1, 12, 12, nan=0.0)
    fine[0, 0, 3, 4] = -9999.0
    ds = make_cube(fine, coarse)
    out = estarfm(ds, fine="fine", coarse="coarse", targets=TIMES[1], half_window=3)
    assert np.isnan(out.fine.values[0, 3, 4]) and np.isfinite(out.fine.values[0, 3, 5])
    out = estarfm(ds, fine="fine", coarse="coarse", targets=TIMES[1], half_window=3, fill=None)
    assert np.isfinite(out.fine.values[0, 3, 4])


def test_lazy_keys_names_and_accessor_free_call(cube):
    ds = rechunk(cube, (1, 11, 12))
    with raise_if_dask_computes():
        out = estarfm(ds, **names(ds), half_window=4, diagnostics=True)
        again = estarfm(ds, **names(ds), half_window=4, diagnostics=True)
        other = estarfm(ds, **names(ds), half_window=3)
    assert_lazy(out)
    for v in out.data_vars.values():
        assert v.data.name.startswith("xfusion.estarfm-")
    keys = list(out.fine_0.data.dask.layers)
    assert any(k.startswith("xfusion.estarfm-threshold-") for k in keys)
    assert any(k.startswith("xfusion.estarfm-moments-") for k in keys)
    assert out.fine_0.data.name == again.fine_0.data.name
    assert out.fine_0.data.name != other.fine_0.data.name
    assert out.fine_0.name == "fine_0"
    eager = estarfm(cube, **names(cube), half_window=4, diagnostics=True)
    assert list(eager.data_vars) == list(out.data_vars)
    xr.testing.assert_identical(out.compute(), eager)


def test_output_layout_and_pairs(cube):
    out = estarfm(cube, **names(cube), half_window=3, diagnostics=True)
    assert [str(t)[:10] for t in out.time.values] == [TIMES[1], TIMES[3]]
    assert [str(t)[:10] for t in out.pair_time.values] == [TIMES[0], TIMES[2]]
    assert [str(t)[:10] for t in out.pair_time_after.values] == [TIMES[2], TIMES[4]]
    assert out.fine_0_n_candidates.dtype == np.int32
    np.testing.assert_array_equal(out.fine_0_n_candidates, out.fine_1_n_candidates)
    assert "spatial_ref" in out.coords and out.fine_0.dims == ("time", "y", "x")
    # explicit (before, after) pairs: one for all targets, per target, a mapping, a string
    one = estarfm(cube, **names(cube), targets=TIMES[1], pairs=(TIMES[0], TIMES[4]),
                  half_window=3)  # fmt: skip
    assert str(one.pair_time_after.values[0])[:10] == TIMES[4]
    text = estarfm(cube, **names(cube), targets=TIMES[1], pairs=f"{TIMES[0]},{TIMES[4]}",
                   half_window=3)  # fmt: skip
    xr.testing.assert_identical(one, text)
    per = estarfm(cube, **names(cube), targets=[TIMES[3], TIMES[1]],
                  pairs=[(TIMES[2], TIMES[4]), (TIMES[0], TIMES[2])], half_window=3)  # fmt: skip
    mapped = estarfm(cube, **names(cube), targets=[TIMES[1], TIMES[3]], half_window=3,
                     pairs={TIMES[1]: (TIMES[0], TIMES[2]), TIMES[3]: (TIMES[2], TIMES[4])})  # fmt: skip
    xr.testing.assert_identical(per, mapped)
    xr.testing.assert_identical(per, estarfm(cube, **names(cube), half_window=3))


def test_docstring_example_runs():
    import doctest

    res = doctest.run_docstring_examples(E.estarfm, {}, optionflags=doctest.ELLIPSIS)
    assert res is None
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(E.estarfm, "estarfm", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


# ---------------------------------------------------------------------------------------------
# (d) errors, presets, parameters


def test_target_without_a_bracketing_pair_lists_the_pair_dates(cube):
    with pytest.raises(NoOverlapError, match=r"2020-01-25.*Pair dates on the cube: "
                       r"\['2020-01-01', '2020-01-17'\]"):  # fmt: skip
        estarfm(cube.isel(time=slice(0, 4)), **names(cube), targets=[TIMES[1], TIMES[3]])
    with pytest.raises(InvalidParameterError, match="t1 < target < t2"):
        estarfm(cube, **names(cube), targets=TIMES[1], pairs=(TIMES[2], TIMES[4]))
    with pytest.raises(TimeAxisError, match="not observed at the pair"):
        estarfm(cube, **names(cube), targets=TIMES[1], pairs=(TIMES[0], TIMES[3]))


def test_window_smaller_than_the_coarse_pixel(cube):
    with pytest.raises(InvalidParameterError, match=r"smaller than one coarse pixel \(16 fine"):
        estarfm(cube, **names(cube), half_window=5, coarse_factor=16)
    with pytest.raises(InvalidParameterError, match="half_window >= 8"):
        estarfm(cube.assign_attrs(coarse_factor=16), **names(cube), half_window=5)
    estarfm(cube, **names(cube), half_window=8, coarse_factor=16)  # 17 px >= 16: fine


def test_data_range_excluding_every_pixel(cube, backend):
    ds = rechunk(cube, (1, 9, 9)) if backend == "dask" else cube
    out = None
    with pytest.raises(InvalidParameterError, match=r"data_range=\(0, 1\) excludes every valid "
                       r"pixel of the fine variable 'fine_0' at 2020-01-\d\d: its values lie in \[\d+"):  # fmt: skip
        out = estarfm(ds, **names(ds), preset="reflectance", half_window=3)
        out.compute()
    assert out is None or backend == "dask"


def test_a_fine_image_without_valid_pixels_warns(rng):
    fine, coarse = layers(rng, 1, 10, 10)
    fine[2] = np.nan
    ds = make_cube(fine, coarse)
    from xfusion.errors import EmptyPredictionWarning

    with pytest.warns(EmptyPredictionWarning, match="fine' at 2020-01-17 has no valid pixel"):
        out = estarfm(ds, fine="fine", coarse="coarse", targets=TIMES[1], half_window=2)
    assert np.isnan(out.fine.values).all()


@pytest.mark.parametrize(("kw", "match"), [
    ({"preset": "usda"}, "Unknown preset"),
    ({"variant": "starfm"}, "Unknown variant"),
    ({"window": 5}, r"Unknown estarfm\(\) parameter\(s\) \['window'\]"),
    ({"half_window": 0}, "half_window must be an integer >= 1"),
    ({"half_window": 2.5}, "half_window"),
    ({"num_class": -1}, "num_class"),
    ({"data_range": (10, 0)}, "data_range"),
    ({"p_value": 1.5}, "p_value"),
    ({"min_candidates": 1}, "min_candidates"),
    ({"threshold_std": "robust"}, "threshold_std"),
    ({"fill": "none"}, "fill"),
    ({"block": -3}, "block"),
    ({"use_local_tol": True}, "variant='imagefusion'"),
    ({"variant": "imagefusion", "block": 500}, "only exists for variant='zhu'"),
    ({"truncate": "yes"}, "truncate must be True or False"),
    ({"dtype": "float16"}, "Unknown dtype"),
    ({"device": "cuda"}, "runs on the CPU"),
    ({"device": "tpu"}, "Unknown device"),
    ({"diagnostics": 1}, "diagnostics"),
    ({"pairs": "nearest"}, "Unknown pairs"),
])  # fmt: skip
def test_bad_parameters_are_clear_errors(cube, kw, match):
    with pytest.raises(InvalidParameterError, match=match):
        estarfm(cube, **names(cube), **kw)


def test_presets_variants_and_param_description():
    zhu, imf, refl = (ESTARFM_PRESETS[k] for k in ("zhu", "imagefusion", "reflectance"))
    assert (zhu.half_window, zhu.num_class, zhu.data_range, zhu.fill) == (25, 4.0, (0, 10000),
                                                                          -9999)  # fmt: skip
    assert (zhu.threshold_std, zhu.change_min_fraction, zhu.block) == ("sample", 0.02, None)
    assert (imf.variant, imf.threshold_std, imf.change_min_fraction) == ("imagefusion",
                                                                         "population", 0.002)  # fmt: skip
    assert refl.data_range == (0.0, 1.0) and refl.fill is None and not refl.truncate
    # switching the variant brings its defaults unless given
    p = E._resolve_params("zhu", "imagefusion", {})
    assert p == imf
    p = E._resolve_params("zhu", "imagefusion", {"threshold_std": "sample"})
    assert p.threshold_std == "sample" and p.change_min_fraction == 0.002
    assert halo() == 25 and halo({"half_window": 7}) == 7 and halo(imf) == 25
    # every field of EstarfmParams is described, with a parser for the CLI
    described = {s.name: s for s in PARAMS}
    for f in EstarfmParams.__dataclass_fields__:
        assert f in described or f == "auto_unit", f  # auto_unit: the "auto" preset
    assert described["data_range"].parse("0,10000") == (0.0, 10000.0)
    assert described["block"].parse("500") == 500 and described["block"].default == 0
    assert described["fill"].parse("-9999") == -9999
    assert described["use_local_tol"].parse("true") is True
    assert described["variant"].choices == ("zhu", "imagefusion")
    assert all(p.help for p in PARAMS)
    with pytest.raises(ValueError):
        described["truncate"].parse("maybe")
    # the command line's "no blocks" (0) and "no fill value" (nan)
    assert E._resolve_params("zhu", None, {"block": 0}).block is None
    assert E._resolve_params("zhu", None, {"fill": float("nan")}).fill is None
    # the registry's halo rule for continental jobs
    assert E.job_halo({}, resolution=30.0) == 25
    assert E.job_halo({"half_window": 12, "block": 500}, resolution=30.0) == 12
    # tokenization: equal parameters, equal token
    from dask.base import tokenize

    assert tokenize(zhu) == tokenize(E._resolve_params("zhu", None, {}))
    assert tokenize(zhu) != tokenize(imf)


def test_import_does_not_compile_the_kernel():
    import subprocess

    code = ("import sys, xfusion.methods.estarfm; "
            "print('xfusion.methods._estarfm_kernel' in sys.modules, 'torch' in sys.modules)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# (e) real data


def test_kranj_beats_the_naive_baselines(shared_data):
    from xfusion.cube import from_geotiffs

    k = os.path.join(shared_data, "kranj")
    land = sorted(os.listdir(os.path.join(k, "landsat", "filled")))
    pick = {d: next(f for f in land if f.startswith(f"2020{d}")) for d in ("068", "077", "093")}
    fine = {f"2020-{d}": os.path.join(k, "landsat", "filled", pick[d]) for d in ("068", "093")}
    coarse = {f"2020-{d}": os.path.join(k, "modis", "filled", f"2020{d}_18-04_kranj.tif")
              for d in ("068", "077", "093")}  # fmt: skip
    fine = {str(np.datetime64("2020-01-01") + int(d[5:]) - 1): p for d, p in fine.items()}
    coarse = {str(np.datetime64("2020-01-01") + int(d[5:]) - 1): p for d, p in coarse.items()}
    ds = from_geotiffs(fine=fine, coarse=coarse)
    for v in [v for v in ds.data_vars if v.startswith("coarse")]:
        ds[v] = ds[v] * 1e4  # MODIS is 0..1, Landsat x1e4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = estarfm(ds, **names(ds), targets="2020-03-17", truncate=False)
    truth_path = os.path.join(k, "landsat", "filled", pick["077"])
    import rasterio

    with rasterio.open(truth_path) as src:
        truth = src.read().astype(np.float64)
    pred = prediction(out)[0]
    f1 = np.stack([ds[v].values[0] for v in names(ds)["fine"]])
    rmse = lambda a: np.sqrt(np.nanmean((a - truth) ** 2, axis=(1, 2)))
    assert np.isfinite(pred).all()
    assert (rmse(pred) < rmse(f1)).sum() >= 4  # better than the fine image of the pair before


# ---------------------------------------------------------------------------------------------
# the default preset finds the data's unit (0..1 reflectance, as odc-stac loads it)


@pytest.mark.parametrize("chunks", [None, (1, 9, 7)])
def test_auto_preset_on_0_1_reflectance_is_the_reflectance_preset(rng, chunks):
    fine, coarse = layers(rng, 2, 26, 23)
    ds = make_cube(fine * 1e-4, coarse * 1e-4, chunks=chunks)
    auto = estarfm(ds, **names(ds), half_window=4)
    refl = estarfm(ds, **names(ds), half_window=4, preset="reflectance")
    np.testing.assert_array_equal(prediction(auto), prediction(refl))
    got = prediction(auto)
    assert np.isfinite(got).mean() > 0.5 and np.nanmean(got) > 0.1  # not truncated to 0
    # the same data x1e4: "auto" is Zhu's preset (truncated only for integer outputs)
    big = make_cube(fine, coarse, chunks=chunks)
    zhu = prediction(estarfm(big, **names(big), half_window=4, preset="zhu", truncate=False))
    np.testing.assert_array_equal(prediction(estarfm(big, **names(big), half_window=4)), zhu)


def test_auto_preset_is_off_when_the_unit_is_given(rng):
    fine, coarse = layers(rng, 1, 20, 20)
    ds = make_cube(fine * 1e-4, coarse * 1e-4)
    # an explicit truncate keeps the x1e4 settings: 0..1 data truncate to 0
    out = prediction(estarfm(ds, **names(ds), half_window=4, truncate=True))
    assert np.nanmax(np.abs(out)) == 0.0
    assert not E._resolve_params(None, None, {"data_range": (0, 1)}).auto_unit
    assert E._resolve_params(None, None, {}).auto_unit


def test_registry_table_is_the_auto_preset():
    from xfusion.methods import get

    auto = ESTARFM_PRESETS["auto"]
    for p in get("estarfm").params:
        if p.name in EstarfmParams.__dataclass_fields__ and p.name not in ("block", "variant"):
            assert p.default == getattr(auto, p.name), p.name
    assert get("estarfm").params == PARAMS
