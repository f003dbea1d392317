"""Tests of the ESTARFM numba kernel (xfusion.methods._estarfm_kernel) on raw numpy arrays.

(a) the kernel against the brute-force transcription of specs/estarfm.md (tests/_ref_estarfm.py)
    on small random images with NaNs, 1-3 bands, several windows, both variants and every
    option, with every branch of the algorithm taken (max |diff| < 1e-9);
(b) the exact global statistics (thresholds do not depend on how the image is cut), the F
    tables, the F(1, nu) CDF series;
(c) halos, threads and Zhu's block mode: bit-identical results.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _ref_estarfm import estarfm_ref, estarfm_ref_blocks, thresholds, validity
from scipy import stats

from xfusion.errors import InvalidParameterError
from xfusion.methods import _estarfm_kernel as K

TOL = 1e-9


def scene(rng, nb, ny, nx, *, nan=0.05, change=600.0, outliers=0.0, noise=250.0):
    """Five inputs (F1, C1, F2, C2, C0) with land-cover classes, change, noise and gaps."""
    cls = rng.choice([900.0, 1600.0, 2900.0, 4200.0], size=(ny, nx))
    gain = rng.uniform(0.9, 1.3, size=(nb, 1, 1))
    f1 = cls[None] + rng.uniform(0, 300, (nb, ny, nx))
    f2 = f1 * gain + change + rng.uniform(0, 200, (nb, ny, nx))
    c1 = f1 + rng.normal(0, noise, (nb, ny, nx))
    c2 = f2 + rng.normal(0, noise, (nb, ny, nx))
    c0 = 0.5 * (c1 + c2) + rng.normal(0, noise, (nb, ny, nx))
    if outliers:
        c0 += 6000.0 * (rng.random((nb, ny, nx)) < outliers)
    arrs = [f1, c1, f2, c2, c0]
    for a in arrs:
        a[rng.random(a.shape) < nan] = np.nan
    return arrs


def run_both(arrs, *, events=None, threads=1, **kw):
    """(kernel prediction, kernel count, reference prediction, reference count)."""
    variant = kw.get("variant", "zhu")
    std = kw.pop("threshold_std", "sample" if variant == "zhu" else "population")
    fill = kw.get("fill", -9999.0)
    first = kw.get("zhu_first_band_only", False) and variant == "zhu"
    th = K.thresholds_numpy(*arrs, variant=variant, fill=fill, num_class=kw.get("num_class", 4.0),
                            threshold_std=std, first_band_only=first)  # fmt: skip
    res = K.estarfm_block(*arrs, thresholds=th, diagnostics=True, threads=threads, **kw)
    ref, cnt = estarfm_ref(*arrs, threshold_std=std, events=events, **kw)
    return res.prediction, res.n_candidates, ref, cnt


def assert_matches(pred, cnt, ref, rcnt):
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(pred), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert ok.any()
    assert np.max(np.abs(pred[ok] - ref[ok])) < TOL
    valid = ~np.isnan(ref).all(axis=0)
    np.testing.assert_array_equal(cnt[valid], rcnt[valid])
    assert np.all(cnt[~valid] == 0)


# ---------------------------------------------------------------------------------------------
# (a) brute force


def test_spec_case_12x12_two_bands_w3(rng):
    """specs/estarfm.md section 7: 12 x 12, 2 bands, w = 3, NaNs, max |diff| < 1e-9."""
    events: dict[str, int] = {}
    arrs = scene(rng, 2, 12, 12)
    pred, cnt, ref, rcnt = run_both(arrs, half_window=3, events=events)
    assert_matches(pred, cnt, ref, rcnt)
    assert np.isnan(pred).any() and events.get("v_accepted", 0) > 0


VARIANT_KW = [
    {"variant": "zhu"},
    {"variant": "zhu", "threshold_std": "population"},
    {"variant": "imagefusion"},
    {"variant": "imagefusion", "use_local_tol": True},
    {"variant": "imagefusion", "use_quality_weighted_regression": True},
    {"variant": "imagefusion", "use_local_tol": True, "use_quality_weighted_regression": True},
]


@pytest.mark.parametrize("kw", VARIANT_KW, ids=lambda d: "-".join(f"{v}" for v in d.values()))
@pytest.mark.parametrize(("nb", "w", "shape"), [(1, 1, (9, 11)), (1, 3, (13, 12)),
                                                (2, 2, (12, 12)), (3, 3, (11, 13))])  # fmt: skip
def test_kernel_matches_brute_force(rng, kw, nb, w, shape):
    arrs = scene(rng, nb, *shape)
    pred, cnt, ref, rcnt = run_both(arrs, half_window=w, **kw)
    assert_matches(pred, cnt, ref, rcnt)


def test_every_branch_is_exercised_and_matches(rng):
    """Random cases that together take every branch: few candidates, regression skipped,
    accepted and rejected, range fallback; truncation in both variants."""
    totals: dict[str, dict[str, int]] = {"zhu": {}, "imagefusion": {}}
    for k in range(6):
        for variant in ("zhu", "imagefusion"):
            events = totals[variant]
            arrs = scene(rng, 1 + k % 3, 12, 13, change=(0.0, 600.0, 300.0)[k % 3],
                         outliers=0.08 if k % 2 else 0.0, noise=(40.0, 300.0, 2500.0)[k % 3])  # fmt: skip
            kw = {"half_window": 2 + k % 2, "variant": variant, "data_range": (0.0, 7000.0),
                  "truncate": bool(k % 2)}  # fmt: skip
            pred, cnt, ref, rcnt = run_both(arrs, events=events, **kw)
            assert_matches(pred, cnt, ref, rcnt)
    for variant, events in totals.items():
        for name in ("few_candidates", "regression_skipped", "v_accepted", "v_rejected",
                     "fallback"):  # fmt: skip
            assert events.get(name, 0) > 0, (variant, name, events)


def test_first_band_only_uses_the_fill_value_like_zhu(rng):
    arrs = scene(rng, 2, 12, 12, nan=0.0)
    arrs[0][1, 3:6, 4:8] = np.nan  # band 1 only: valid for Zhu, computed with -9999
    arrs[4][0, 8, 8] = -9999.0  # band 0: invalid
    pred, cnt, ref, rcnt = run_both(arrs, half_window=3, zhu_first_band_only=True)
    assert_matches(pred, cnt, ref, rcnt)
    assert np.isfinite(pred[:, 4, 5]).all() and np.isnan(pred[:, 8, 8]).all()
    full, *_ = run_both(arrs, half_window=3)
    assert np.isnan(full[:, 4, 5]).all()


def test_fill_value_and_nan_mark_invalid_pixels(rng):
    arrs = scene(rng, 2, 10, 10, nan=0.0)
    arrs[2][0, 2, 3] = -9999.0
    arrs[1][1, 5, 5] = np.nan
    pred, cnt, ref, rcnt = run_both(arrs, half_window=2)
    assert_matches(pred, cnt, ref, rcnt)
    assert np.isnan(pred[:, 2, 3]).all() and np.isnan(pred[:, 5, 5]).all()
    assert cnt[2, 3] == 0 and np.isfinite(pred[:, 0, 0]).all()


def test_image_smaller_than_the_window(rng):
    arrs = scene(rng, 2, 7, 9)
    pred, cnt, ref, rcnt = run_both(arrs, half_window=25)
    assert_matches(pred, cnt, ref, rcnt)


# ---------------------------------------------------------------------------------------------
# (b) statistics and tables


def test_thresholds_equal_the_plain_definition(rng):
    arrs = scene(rng, 3, 15, 17)
    arrs[0][:, 2, 2] = -9999.0
    for variant in ("zhu", "imagefusion"):
        for std in ("sample", "population"):
            got = K.thresholds_numpy(*arrs, variant=variant, fill=-9999.0, num_class=4.0,
                                     threshold_std=std)  # fmt: skip
            valid = validity(*arrs, fill=-9999.0)
            want = thresholds(arrs[0], arrs[2], valid=valid, variant=variant, num_class=4.0,
                              threshold_std=std, fill=-9999.0)  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-13)


def test_zhu_threshold_counts_gaps_as_the_fill_value(rng):
    """Zhu's programs take the std over every pixel, background included."""
    arrs = scene(rng, 1, 10, 10, nan=0.0)
    arrs[0][0, :2, :] = np.nan
    got = K.thresholds_numpy(*arrs, variant="zhu", fill=-9999.0, num_class=4.0,
                             threshold_std="population")  # fmt: skip
    vals = np.where(np.isnan(arrs[0][0]), -9999.0, arrs[0][0])
    assert got[0, 0] == pytest.approx(np.std(vals) * 2 / 4, rel=1e-13)
    none = K.thresholds_numpy(*arrs, variant="zhu", fill=None, num_class=4.0,
                              threshold_std="population")  # fmt: skip
    assert none[0, 0] == pytest.approx(np.nanstd(arrs[0][0]) * 2 / 4, rel=1e-13)


def test_moments_do_not_depend_on_the_blocks(rng):
    arrs = [a * 1.000123 for a in scene(rng, 2, 37, 29)]
    whole = K.threshold_moments(*arrs, variant="zhu", fill=-9999.0, data_range=(0, 1e4))
    parts = [
        K.threshold_moments(*(a[:, ys, xs] for a in arrs), variant="zhu", fill=-9999.0,
                            data_range=(0, 1e4))
        for ys in (slice(0, 5), slice(5, 21), slice(21, 37))
        for xs in (slice(0, 13), slice(13, 29))
    ]  # fmt: skip
    blocks = np.stack(parts, axis=2)
    for std in ("sample", "population"):
        a, sa = K.threshold_from_moments(whole, num_class=4.0, threshold_std=std)
        b, sb = K.threshold_from_moments(blocks, num_class=4.0, threshold_std=std)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("nu", [1, 2, 3, 4, 7, 10, 51, 200, 1001, 5200])
def test_f1_cdf_series_equals_scipy(nu):
    for f in (0.0, 1e-6, 0.3, 1.0, 3.84, 4.2, 10.0, 250.0, 1e6, math.inf):
        assert K.f1_cdf(f, nu) == pytest.approx(stats.f.cdf(f, 1, nu), abs=1e-12)


def test_critical_table_and_inclusive_test():
    table = K.f_critical_table(0.05, 100)
    assert table[0] == math.inf and table.shape == (101,)
    np.testing.assert_allclose(table[1:], stats.f.isf(0.05, 1, np.arange(1, 101)), rtol=1e-12)
    for nu in (4, 30, 99):
        assert stats.f.sf(table[nu] * (1 + 1e-9), 1, nu) <= 0.05 < stats.f.sf(
            table[nu] * (1 - 1e-6), 1, nu
        )


# ---------------------------------------------------------------------------------------------
# (c) halos, threads, blocks


@pytest.mark.parametrize("variant", ["zhu", "imagefusion"])
def test_halo_blocks_are_bit_identical_to_the_whole_image(rng, variant):
    arrs = scene(rng, 2, 30, 34)
    w = 4
    th = K.thresholds_numpy(*arrs, variant=variant, fill=-9999.0, num_class=4.0,
                            threshold_std="sample")  # fmt: skip
    whole = K.estarfm_block(*arrs, thresholds=th, half_window=w, variant=variant, threads=1)
    # interior block rows 8..20, cols 0..15 with its halo (left side is the image edge)
    sub = [a[:, 8 - w : 20 + w, 0 : 15 + w] for a in arrs]
    part = K.estarfm_block(*sub, thresholds=th, half_window=w, variant=variant,
                           halo=(w, w, 0, w), threads=1)  # fmt: skip
    np.testing.assert_array_equal(part, whole[:, 8:20, 0:15])


def test_threads_do_not_change_the_result(rng):
    arrs = scene(rng, 1, 40, 31)
    th = K.thresholds_numpy(*arrs, variant="zhu", fill=-9999.0, num_class=4.0,
                            threshold_std="sample")  # fmt: skip
    one = K.estarfm_block(*arrs, thresholds=th, half_window=5, threads=1)
    three = K.estarfm_block(*arrs, thresholds=th, half_window=5, threads=3)
    np.testing.assert_array_equal(one, three)


def test_zhu_blocks_match_the_brute_force_blocks(rng):
    arrs = scene(rng, 2, 23, 19)
    got = K.estarfm_blockwise(*arrs, block=10, half_window=3, threshold_std="population",
                              diagnostics=True)  # fmt: skip
    ref, cnt = estarfm_ref_blocks(*arrs, block=10, half_window=3, threshold_std="population")
    assert_matches(got.prediction, got.n_candidates, ref, cnt)
    # windows stop at block edges: the result differs from the unblocked one
    th = K.thresholds_numpy(*arrs, variant="zhu", fill=-9999.0, num_class=4.0,
                            threshold_std="population")  # fmt: skip
    plain = K.estarfm_block(*arrs, thresholds=th, half_window=3)
    assert not np.array_equal(plain, got.prediction, equal_nan=True)


def test_bad_inputs_are_clear_errors(rng):
    arrs = scene(rng, 1, 6, 6)
    with pytest.raises(InvalidParameterError, match="one shape"):
        K.estarfm_block(*arrs[:4], arrs[4][:, :5], thresholds=[[1.0], [1.0]])
    with pytest.raises(InvalidParameterError, match="variant"):
        K.estarfm_block(*arrs, thresholds=[[1.0], [1.0]], variant="starfm")
    with pytest.raises(InvalidParameterError, match="halo"):
        K.estarfm_block(*arrs, thresholds=[[1.0], [1.0]], halo=(4, 4, 0, 0))
    with pytest.raises(InvalidParameterError, match="threads"):
        K.estarfm_block(*arrs, thresholds=[[1.0], [1.0]], threads=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_change_ties_are_decided_from_the_two_means(rng, dtype):
    """A coarse change of exactly change_min_fraction * DN_max: Zhu compares the difference of
    the two means (rounded each), not the mean of the differences; so does the kernel."""
    arrs = [np.round(a) for a in scene(rng, 1, 14, 13, nan=0.0)]
    arrs[3] = arrs[1] - 200.0  # C2 = C1 - 200 everywhere: a tie for every centre
    arrs[2] = arrs[0] + 211.0
    th = K.thresholds_numpy(*arrs, variant="zhu", fill=-9999.0, num_class=4.0,
                            threshold_std="sample")  # fmt: skip
    events: dict[str, int] = {}
    ref, _ = estarfm_ref(*arrs, half_window=3, events=events)
    got = K.estarfm_block(*arrs, thresholds=th, half_window=3, dtype=dtype)
    assert events.get("v_accepted", 0) > 0 and events.get("regression_skipped", 0) > 0
    np.testing.assert_allclose(got, ref, atol=1e-9 if dtype == "float64" else 0.05, rtol=0)
