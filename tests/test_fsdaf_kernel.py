"""Exactness tests of the FSDAF kernels (xfusion.methods._fsdaf_kernel).

(a) the fast path (block loop + numba similar-pixel kernel) against the brute-force
    transcription of the spec in tests/_ref_fsdaf.py, on small random stacks with NaNs,
    several windows, 1-3 bands, one or several blocks, cells cut by the image edge;
(b) the spec's test cases (§6): zero change, uniform change with one class, constant fine
    image (the N = 0 guard), two-class unmixing recovery, TPS through control values and on
    affine fields;
(c) pieces: IDL quantile rule and outlier clamp, homogeneity index, BVLS, ISODATA
    determinism, chunk-style halos of the similar-pixel kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from _ref_fsdaf import make_scene, ref_bvls, ref_clamp, ref_fsdaf, ref_tps

from xfusion.methods import _fsdaf_graph as G
from xfusion.methods import _fsdaf_kernel as K
from xfusion.methods import _fsdaf_similar as KS
from xfusion.methods import fsdaf as F


def fast_fsdaf(f1, c1, c2, classes, *, s, w, n_similar=20, n_pure=100,
               data_range=(0.0, 10000.0), block_cells=30, interpolator="tps", threads=1):  # fmt: skip
    """The method's numpy path on raw arrays: blocks (steps 3-12), then step 13."""
    params = F.replace(F.FSDAF_PRESETS["zhu"], half_window=w, n_similar=n_similar,
                       n_pure=n_pure, data_range=data_range, block_cells=block_cells,
                       scale_factor=s, interpolator=interpolator)  # fmt: skip
    ok = np.all(np.isfinite(f1), axis=0)
    f1m = np.where(ok, f1, np.nan)
    lab = G._mask_labels(np.asarray(classes)[None], f1m)
    ch = G._change_numpy(f1m, c1, c2, lab, params=params, s=s, class_change=None)
    nb = f1.shape[0]
    std = G._global_std(f1m, "")
    k = G._n_classes(lab, "")
    pred = G._predict_task(f1m, ch[:nb], c1, c2, lab, std, k, halo_sides=(0, 0, 0, 0),
                           params=params, threads=threads)  # fmt: skip
    return pred, ch[:nb], ch[nb]


# ---------------------------------------------------------------------------------------------
# (a) brute force


def test_brute_force_64x64_two_bands():
    """The spec's case: 64 x 64 x 2 bands, s = 8, w = 4, supplied classes: max |diff| < 1e-6."""
    rng = np.random.default_rng(0)
    f1, c1, c2, cls, _ = make_scene(rng, nb=2, shape=(64, 64), s=8)
    ref, rd21, rhi = ref_fsdaf(f1, c1, c2, cls, s=8, w=4)
    pred, d21, hi = fast_fsdaf(f1, c1, c2, cls, s=8, w=4)
    assert np.abs(d21 - rd21).max() < 1e-6
    np.testing.assert_array_equal(hi, rhi)
    assert np.abs(pred - ref).max() < 1e-6
    assert not np.isnan(pred).any()


@pytest.mark.parametrize(
    ("nb", "shape", "s", "w", "block_cells", "nan_px", "seed"),
    [
        (1, (48, 40), 8, 3, 30, 5, 1),  # one band, one block
        (3, (40, 48), 4, 5, 4, 8, 2),  # three bands, 3 x 3 blocks with halos
        (2, (44, 37), 8, 2, 2, 4, 3),  # cells cut by the image edge, several blocks
        (2, (32, 32), 8, 6, 2, 0, 4),  # window wider than a block's halo
    ],
)
def test_brute_force_random(nb, shape, s, w, block_cells, nan_px, seed):
    rng = np.random.default_rng(seed)
    f1, c1, c2, cls, _ = make_scene(rng, nb=nb, shape=shape, s=s, nan_px=nan_px)
    c2[:, :s, :s] = np.nan  # one cell without coarse data
    ref, rd21, rhi = ref_fsdaf(f1, c1, c2, cls, s=s, w=w, block_cells=block_cells)
    pred, d21, hi = fast_fsdaf(f1, c1, c2, cls, s=s, w=w, block_cells=block_cells)
    np.testing.assert_array_equal(np.isnan(d21), np.isnan(rd21))
    assert np.nanmax(np.abs(d21 - rd21)) < 1e-6
    np.testing.assert_array_equal(hi, rhi)
    np.testing.assert_array_equal(np.isnan(pred), np.isnan(ref))
    assert np.nanmax(np.abs(pred - ref)) < 1e-6


def test_brute_force_background_label_and_few_similar():
    """Label-0 pixels keep F1 but serve as candidates; n_similar smaller than the window."""
    rng = np.random.default_rng(5)
    f1, c1, c2, cls, _ = make_scene(rng, nb=2, shape=(40, 40), s=8, nan_px=3)
    cls[5:9, 20:30] = 0
    ref, _, _ = ref_fsdaf(f1, c1, c2, cls, s=8, w=3, n_similar=5, block_cells=3)
    pred, _, _ = fast_fsdaf(f1, c1, c2, cls, s=8, w=3, n_similar=5, block_cells=3)
    assert np.nanmax(np.abs(pred - ref)) < 1e-6
    ok = np.all(np.isfinite(f1), axis=0)
    bg = ok & (cls == 0)
    np.testing.assert_array_equal(pred[:, bg], f1[:, bg])


def test_threads_and_halo_blocks_bit_identical():
    """Step 13 on 2 x 2 blocks with w-pixel halos == the whole image, any thread count."""
    rng = np.random.default_rng(6)
    f1, c1, c2, cls, _ = make_scene(rng, nb=2, shape=(50, 46), s=8, nan_px=4)
    w = 4
    d21 = rng.normal(0, 50, f1.shape)
    th = np.array([300.0, 250.0])
    target = cls > 1
    whole = KS.predict_block(f1, d21, c1, c2, target, thresholds=th, half_window=w, threads=1)
    three = KS.predict_block(f1, d21, c1, c2, target, thresholds=th, half_window=w, threads=3)
    np.testing.assert_array_equal(whole.prediction, three.prediction)
    out = np.empty_like(whole.prediction)
    for (ya, yb), (xa, xb) in [((0, 20), (0, 25)), ((0, 20), (25, 46)), ((20, 50), (0, 25)),
                               ((20, 50), (25, 46))]:  # fmt: skip
        y0, y1 = max(0, ya - w), min(50, yb + w)
        x0, x1 = max(0, xa - w), min(46, xb + w)
        sl = (slice(None), slice(y0, y1), slice(x0, x1))
        res = KS.predict_block(f1[sl], d21[sl], c1[sl], c2[sl], target[sl[1:]], thresholds=th,
                              half_window=w, halo=(ya - y0, y1 - yb, xa - x0, x1 - xb))  # fmt: skip
        out[:, ya:yb, xa:xb] = res.prediction
    np.testing.assert_array_equal(out, whole.prediction)


# ---------------------------------------------------------------------------------------------
# (b) the spec's test cases


def test_zero_change_gives_f1():
    rng = np.random.default_rng(7)
    f1, c1, _, cls, _ = make_scene(rng, nb=2, shape=(48, 48), s=8)
    pred, d21, _ = fast_fsdaf(f1, c1, c1.copy(), cls, s=8, w=4, block_cells=3)
    np.testing.assert_array_equal(d21, 0.0)
    np.testing.assert_array_equal(pred, f1)


def test_uniform_change_one_class():
    rng = np.random.default_rng(8)
    f1, c1, _, _, _ = make_scene(rng, nb=2, shape=(48, 48), s=8)
    delta = np.array([123.0, -57.5])
    c2 = c1 + delta[:, None, None]
    cls = np.ones((48, 48), int)
    pred, d21, _ = fast_fsdaf(f1, c1, c2, cls, s=8, w=4, block_cells=3)
    np.testing.assert_allclose(d21, np.broadcast_to(delta[:, None, None], d21.shape), atol=1e-9)
    np.testing.assert_allclose(pred, f1 + delta[:, None, None], atol=1e-9)


def test_constant_f1_uses_the_guard():
    """Constant F1: threshold 0, no candidate (IDL fails): F2 = F1 + delta21(c)."""
    rng = np.random.default_rng(9)
    nb, n, s = 2, 32, 8
    f1 = np.full((nb, n, n), 1500.0)
    c1 = np.full((nb, n, n), 1500.0)
    cells = rng.normal(0, 40, (nb, n // s, n // s))
    c2 = c1 + 100.0 + np.repeat(np.repeat(cells, s, 1), s, 2)
    cls = np.ones((n, n), int)
    pred, d21, hi = fast_fsdaf(f1, c1, c2, cls, s=s, w=4, block_cells=2)
    np.testing.assert_array_equal(hi, 1.0)
    np.testing.assert_allclose(pred, f1 + d21, rtol=0, atol=1e-9)
    assert np.ptp(d21) > 1.0  # the residuals really vary
    ref, _, _ = ref_fsdaf(f1, c1, c2, cls, s=s, w=4, block_cells=2)
    assert np.abs(pred - ref).max() < 1e-6
    res = KS.predict_block(f1, d21, c1, c2, cls > 0, thresholds=[0.0, 0.0], half_window=4)
    np.testing.assert_array_equal(res.n_similar, 0)


def test_two_class_unmixing_recovers_changes():
    rng = np.random.default_rng(10)
    ncell = 60
    frac1 = np.concatenate([np.ones(20), np.zeros(20), rng.uniform(0.05, 0.95, 20)])
    fractions = np.stack([frac1, 1.0 - frac1])
    truth = np.array([[250.0, -120.0], [-40.0, 310.0]])  # (bands, classes)
    dc = truth @ fractions
    un = K.unmix_changes(fractions, dc, np.ones(ncell, bool), n_pure=100,
                         change_quantiles=(0.1, 0.9))  # fmt: skip
    np.testing.assert_allclose(un.delta, truth, rtol=0, atol=1e-9)
    assert un.identified.all()


def test_tps_reproduces_control_values_and_affine_fields():
    rng = np.random.default_rng(11)
    pts = np.array([(i, j) for i in range(7) for j in range(6)], np.float64)
    keep = rng.random(len(pts)) > 0.15
    pts = pts[keep]
    vals = rng.normal(1000, 200, (len(pts), 2))
    w, a = K.tps_fit(pts, vals)
    np.testing.assert_allclose(K.tps_evaluate(pts, w, a, pts), vals, rtol=0, atol=1e-8)
    # the independent dense reference (pixel units: the spline is scale invariant)
    q = rng.uniform(-1, 7, (25, 2))
    np.testing.assert_allclose(K.tps_evaluate(pts, w, a, q)[:, 0],
                               ref_tps([tuple(p * 8) for p in pts], vals[:, 0],
                                       [tuple(x * 8) for x in q]), atol=1e-8)  # fmt: skip
    # affine field: exact everywhere, no bending
    aff = 3.0 + 2.5 * pts[:, 0] - 1.25 * pts[:, 1]
    w2, a2 = K.tps_fit(pts, aff)
    assert np.abs(w2).max() < 1e-8
    qa = 3.0 + 2.5 * q[:, 0] - 1.25 * q[:, 1]
    np.testing.assert_allclose(K.tps_evaluate(pts, w2, a2, q)[:, 0], qa, atol=1e-8)
    # lattice evaluation (FFT) == direct evaluation at every fine pixel
    s, ncy, ncx = 4, 7, 6
    coef = np.zeros((2, ncy, ncx))
    ii = pts.astype(int)
    coef[:, ii[:, 0], ii[:, 1]] = w.T
    grid = K.tps_grid(coef, a, s=s, shape=(ncy * s - 2, ncx * s - 3))
    rr, cc = np.meshgrid(np.arange(ncy * s - 2), np.arange(ncx * s - 3), indexing="ij")
    qpx = np.column_stack([(rr.ravel() - (s - 1) / 2) / s, (cc.ravel() - (s - 1) / 2) / s])
    direct = K.tps_evaluate(pts, w, a, qpx).T.reshape(grid.shape)
    np.testing.assert_allclose(grid, direct, rtol=0, atol=1e-8)
    assert K.tps_fit(pts[:2], vals[:2]) is None  # under-determined affine part
    assert K.tps_fit(np.array([[0.0, 0], [1, 1], [2, 2], [3, 3]]), np.ones(4)) is None


@pytest.mark.parametrize("interpolator", ["idw", "bicubic"])
def test_other_interpolators_run_and_stay_close(interpolator):
    rng = np.random.default_rng(12)
    f1, c1, c2, cls, f2 = make_scene(rng, nb=2, shape=(48, 48), s=8)
    tps, _, _ = fast_fsdaf(f1, c1, c2, cls, s=8, w=4, block_cells=3)
    other, _, _ = fast_fsdaf(f1, c1, c2, cls, s=8, w=4, block_cells=3, interpolator=interpolator)
    assert not np.array_equal(tps, other)
    def rmse(p):
        return np.sqrt(np.mean((p - f2) ** 2))

    assert rmse(other) < 1.5 * rmse(tps) + 5.0


def test_idw_and_bicubic_known_values():
    vals = np.arange(12, dtype=np.float64).reshape(1, 3, 4) * 10.0
    ok = np.ones((3, 4), bool)
    s = 3  # odd: pixel (1, 1) is the centre of cell (0, 0)
    idw = K.idw_grid(vals, ok, s=s, shape=(9, 12))
    assert idw[0, 1, 1] == 0.0 and idw[0, 4, 7] == 60.0
    bic = K.bicubic_grid(vals, ok, s=s, shape=(9, 12))
    np.testing.assert_allclose(bic[0, 1::3, 1::3], vals[0])  # interpolating at the centres
    # a linear ramp is reproduced between the centres of the inner cells (edges replicated)
    np.testing.assert_allclose(bic[0, 4, 4:8], 40 + (np.arange(4, 8) - 1) * 10 / 3)


# ---------------------------------------------------------------------------------------------
# (c) pieces


@pytest.mark.parametrize("n", [1, 2, 7, 100, 10001])
def test_quantile_index_and_clamp(n):
    rng = np.random.default_rng(n)
    v = rng.normal(5000, 3000, n)
    v[: max(1, n // 50)] = -20.0
    for p in (1e-4, 0.1, 0.5, 0.9, 0.9999):
        k = K.quantile_index(n, p)
        assert k == max(i for i in range(n + 1) if i / n <= p) or k == n - 1
    np.testing.assert_array_equal(
        K.clamp_outliers(v, quantiles=(1e-4, 0.9999), data_range=(0.0, 10000.0)),
        ref_clamp(v, (1e-4, 0.9999), (0.0, 10000.0)),
    )
    clamped = K.clamp_outliers(v, quantiles=(1e-4, 0.9999), data_range=(0.0, 10000.0))
    if n > 1:  # below the range: replaced by the smallest valid value
        assert clamped.min() >= 0
    else:  # nothing else to take: left as it is (IDL would fail)
        assert clamped[0] == -20.0


def test_heterogeneity_index_against_loops():
    rng = np.random.default_rng(13)
    lab = rng.integers(0, 4, (23, 17))
    hi = K.heterogeneity_index(lab, 3)
    for i in range(23):
        for j in range(17):
            win = lab[max(0, i - 3) : i + 4, max(0, j - 3) : j + 4]
            assert hi[i, j] == np.count_nonzero(win == lab[i, j]) / win.size


def test_bvls_matches_active_set_enumeration():
    rng = np.random.default_rng(14)
    for _ in range(20):
        x = rng.uniform(0, 1, (30, 4))
        y = rng.normal(0, 100, 30)
        lo, hi = -60.0, 45.0
        np.testing.assert_allclose(K.solve_bvls(x, y, lo, hi), ref_bvls(x, y, lo, hi),
                                   atol=1e-8)  # fmt: skip
    np.testing.assert_array_equal(K.solve_bvls(x, y, 2.0, 2.0), 2.0)


def test_isodata_is_deterministic_and_bounded():
    rng = np.random.default_rng(15)
    centres = np.array([[500, 3000], [2500, 2500], [4000, 800], [1200, 1200], [3000, 4500]])
    x = np.concatenate([c + rng.normal(0, 120, (400, 2)) for c in centres])
    x[::97] = np.nan
    kw = {"min_classes": 3, "max_classes": 6, "merge_distance": 500.0, "split_std": 500.0,
          "min_pixels": 20}  # fmt: skip
    a = K.isodata_fit(x, **kw)
    b = K.isodata_fit(x[rng.permutation(len(x))], **kw)
    assert 3 <= len(a) <= 6 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, K.isodata_fit(x, **kw))
    # each true cluster is found (to within its spread), whatever the sample order
    for c in centres:
        assert np.min(np.linalg.norm(a - c, axis=1)) < 200
        assert np.min(np.linalg.norm(b - c, axis=1)) < 200
    img = x[:400].T.reshape(2, 20, 20)
    lab = K.classify(img, a)
    assert lab.min() >= 0 and lab.max() <= len(a)
    assert np.all((lab == 0) == np.isnan(img).any(0))


def test_unidentified_class_takes_the_block_mean_change():
    """A class only in cells with background gets the mean coarse change (IDL fails)."""
    fractions = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    dc = np.array([[10.0, 12.0, 30.0, 40.0]])
    un = K.unmix_changes(fractions, dc, np.ones(4, bool), n_pure=100,
                         change_quantiles=(0.1, 0.9))  # fmt: skip
    assert un.identified[0].tolist() == [True, False]
    assert un.delta[0, 1] == pytest.approx(23.0)
    assert 10.0 <= un.delta[0, 0] <= 12.0


@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_admission_bound_never_changes_the_result(monkeypatch, margin):
    """Centres first admit keys up to margin x the n-th key of the centres above; a bound
    that is too low is detected (the list does not fill) and the centre is rescanned."""
    rng = np.random.default_rng(16)
    f1, c1, c2, cls, _ = make_scene(rng, nb=2, shape=(40, 44), s=8, nan_px=4)
    d21 = rng.normal(0, 50, f1.shape)
    th = np.array([400.0, 350.0])
    kw = {"thresholds": th, "half_window": 5, "n_similar": 12}
    monkeypatch.setattr(KS, "_MARGIN", 1e300)  # effectively no bound
    free = KS.predict_block(f1, d21, c1, c2, cls > 0, **kw)
    monkeypatch.setattr(KS, "_MARGIN", margin)
    bounded = KS.predict_block(f1, d21, c1, c2, cls > 0, **kw)
    np.testing.assert_array_equal(bounded.prediction, free.prediction)
    np.testing.assert_array_equal(bounded.n_similar, free.n_similar)


def test_block_stage_is_thread_safe():
    """Blocks of one lattice share a cached spline LU; blocks on 1 or 3 threads agree.

    (scipy's lu_solve corrupts results when threads solve with the SAME LU arrays at once;
    the cache hands out copies.)"""
    rng = np.random.default_rng(17)
    f1, c1, c2, cls, _ = make_scene(rng, nb=2, shape=(64, 64), s=8)
    params = F.replace(F.FSDAF_PRESETS["zhu"], half_window=4, block_cells=2, scale_factor=8)
    lab = G._mask_labels(cls[None], f1)
    kw = {"params": params, "s": 8, "class_change": None}
    one = G._change_numpy(f1, c1, c2, lab, **kw, threads=1)
    for _ in range(3):
        np.testing.assert_array_equal(G._change_numpy(f1, c1, c2, lab, **kw, threads=3), one)
