"""Exactness tests of the numba STARFM kernel (xfusion.methods._starfm_kernel).

(a) a brute-force, loop-per-candidate reference written straight from specs/starfm.md against
    the fast kernel on small random blocks (exact equality, diagnostics included);
(b) parity with the USDA STARFM v1.2.1 output on synthetic600;
(c) known answers: constant fields, no coarse change, window 1, constant fine image;
(d) 2x2 blocks with halos == the whole image, bit for bit.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

from xfusion.errors import InvalidParameterError
from xfusion.methods._starfm_kernel import (
    StarfmDiagnostics,
    halo_size,
    similarity_threshold,
    slice_from_std,
    starfm_block,
    uncertainty_terms,
    window_offsets,
)

FILL = -9999


# ----------------------------------------------------------------------------------------------
# brute-force reference, straight from the spec (one centre, one candidate at a time)
# ----------------------------------------------------------------------------------------------
def brute_starfm(
    fine,
    coarse_pair,
    coarse_target,
    *,
    window,
    thresholds,
    halo=(0, 0, 0, 0),
    u_fine=50.0,
    u_coarse=50.0,
    A=None,
    off=1.0,
    data_range=(0.0, 10000.0),
    reference=True,
    fill=FILL,
    temporal=None,
    dtype="float32",
):
    """Return (prediction, n_kept, weight_sum, branches) of the interior, the slow way.

    Arithmetic contract shared with the kernel: inputs are cast to ``dtype`` first and every
    per-candidate operation happens in that dtype; a kept candidate with ``t_dis >= sigma_comb``
    weighs ``(1 / t_dis) * (1 / (1 + d / A))`` (the distance factor rounded once from float64);
    the sums run over pair, window row, window column in that order; P = sum_wv / sum_w in
    float64. ``branches`` counts how often each rule decided a candidate.
    """
    T = np.dtype(dtype).type
    L = np.asarray(fine, dtype)
    M1 = np.asarray(coarse_pair, dtype)
    if L.ndim == 2:
        L, M1 = L[None], M1[None]
    M2 = np.asarray(coarse_target, dtype)
    npairs, H, W = L.shape
    temporal = npairs > 1 if temporal is None else temporal
    if isinstance(window, tuple):
        before, after = window
    else:
        before = window // 2  # window rows i - win/2 ... i + win/2 - 1 for an even window
        after = window - 1 - before
    A = (before + after + 1) / 2 if A is None else A
    # integer uncertainties of the C program (int truncation) in reference mode
    s_msr = math.sqrt(u_coarse**2 + u_coarse**2)
    s_lsr = math.sqrt(u_coarse**2 + u_fine**2)
    if reference:
        s_msr, s_lsr = int(s_msr), int(s_lsr)
    s_comb = math.sqrt(s_msr**2 + s_lsr**2)
    if reference:
        s_comb = int(s_comb)
    k = 2 if temporal else 1
    thr = [float(x) for x in np.broadcast_to(thresholds, (npairs,))]
    unit_lim = s_comb * off ** (k - 1)  # the "perfect" candidate: weight 1 / off**k below it
    if not reference:
        # float mode: every limit halfway between two steps of off (off**k for t_dis), on the
        # side that keeps the exact answer for data quantised in steps of off
        def up(x, q):  # (ceil(x / q) - 1/2) q, for "value < x"
            n = math.ceil(x / q - 1e-7 * max(1.0, abs(x / q)))
            return max(0.0, (n - 0.5) * q)

        def down(x, q):  # (floor(x / q) + 1/2) q, for "value <= centre + x"
            return (math.floor(x / q + 1e-7 * max(1.0, abs(x / q))) + 0.5) * q

        s_lsr, s_msr = down(s_lsr, off), down(s_msr, off)
        thr = [up(x, off) for x in thr]
        unit_lim = up(unit_lim, off**k)
    thr = [T(x) for x in thr]

    def ok(v):
        if not np.isfinite(v):
            return False
        return data_range is None or (T(data_range[0]) <= v <= T(data_range[1]))

    def valid(p, y, x):
        return ok(L[p, y, x]) and ok(M1[p, y, x]) and ok(M2[y, x])

    top, bottom, left, right = halo
    shape = (H - top - bottom, W - left - right)
    pred = np.full(shape, np.nan)
    count = np.zeros(shape, np.int32)
    wsum = np.zeros(shape, dtype)
    branches = dict.fromkeys(("invalid", "dissimilar", "rejected", "unit", "weighted"), 0)
    for i in range(top, H - bottom):
        for j in range(left, W - right):
            pairs = [p for p in range(npairs) if valid(p, i, j)]
            sw, swv, n = T(0), T(0), 0
            if pairs:
                # filter minima over the pairs at the centre
                min_lsr = min(abs(M1[p, i, j] - L[p, i, j]) for p in pairs)
                min_msr = min(abs(M1[p, i, j] - M2[i, j]) for p in pairs)
                for p in pairs:
                    for y in range(i - before, i + after + 1):
                        for x in range(j - before, j + after + 1):
                            if not (0 <= y < H and 0 <= x < W):  # outside the image
                                continue
                            if not valid(p, y, x):
                                branches["invalid"] += 1
                                continue
                            if not abs(L[p, y, x] - L[p, i, j]) < thr[p]:  # similar (strict)
                                branches["dissimilar"] += 1
                                continue
                            r_lsr = abs(M1[p, y, x] - L[p, y, x])
                            r_msr = abs(M1[p, y, x] - M2[y, x])
                            if r_lsr > min_lsr + T(s_lsr) and r_msr > min_msr + T(s_msr):
                                branches["rejected"] += 1  # by both residual tests
                                continue
                            if temporal:
                                t_dis = (r_msr + T(off)) * (r_lsr + T(off))
                            else:
                                t_dis = r_lsr + T(off)
                            if t_dis < T(unit_lim):
                                w = T(1.0 / off**k)
                                branches["unit"] += 1
                            else:
                                branches["weighted"] += 1
                                d = math.sqrt((y - i) ** 2 + (x - j) ** 2)
                                w = (T(1) / t_dis) * T(1.0 / (1.0 + d / A))
                            sw = sw + w
                            swv = swv + w * (L[p, y, x] + M2[y, x] - M1[p, y, x])
                            n += 1
            count[i - top, j - left] = n
            wsum[i - top, j - left] = sw
            if n:
                pred[i - top, j - left] = np.float64(swv) / np.float64(sw)
    if reference:
        good = np.isfinite(pred)
        if data_range is not None:
            good &= (pred > data_range[0]) & (pred < data_range[1])
        out = np.where(good, np.floor(np.where(good, pred, 0) + 0.5), fill).astype(np.int32)
    else:
        out = pred.astype(dtype)
    return out, count, wsum, branches


def random_block(rng, shape, npairs, *, integer, holes=True):
    """Small random stack with classes, similar and dissimilar neighbours, NaNs, out-of-range."""
    H, W = shape
    base = rng.choice([800.0, 850.0, 2000.0, 5000.0], size=(npairs, H, W))
    L = base + rng.uniform(0, 60, size=(npairs, H, W))
    M1 = L + rng.uniform(-150, 150, size=(npairs, H, W))
    M2 = M1[0] + rng.uniform(-120, 120, size=(H, W))
    if integer:
        L, M1, M2 = np.round(L), np.round(M1), np.round(M2)
    if holes:
        for a in (L, M1, M2):
            a[rng.random(a.shape) < 0.04] = np.nan
            a[rng.random(a.shape) < 0.02] = -5.0  # below the data range
            a[rng.random(a.shape) < 0.02] = 10000.0  # on the range edge: valid
            a[rng.random(a.shape) < 0.02] = 10001.0  # above the data range
    return L, M1, M2


CASES = [
    # window, npairs, reference, halo
    (1, 1, True, (0, 0, 0, 0)),
    (4, 1, True, (0, 0, 0, 0)),
    (5, 1, True, (1, 2, 2, 0)),
    (6, 2, True, (3, 2, 0, 3)),
    (7, 1, False, (0, 0, 0, 0)),
    (8, 2, False, (4, 3, 4, 3)),
    (5, 3, True, (0, 0, 0, 0)),
    (9, 1, True, (4, 4, 4, 4)),
    ((3, 1), 2, True, (3, 1, 3, 1)),  # explicit reach, e.g. the literal C formula for win = 7
    ((0, 5), 1, False, (0, 0, 0, 0)),
    (30, 1, True, (0, 0, 0, 0)),  # windows larger than the image: clipped to it (USDA)
    (25, 2, False, (0, 0, 0, 0)),
]


@pytest.mark.parametrize(("window", "npairs", "reference", "halo"), CASES)
def test_kernel_equals_brute_force(window, npairs, reference, halo):
    rng = np.random.default_rng(np.sum(window) * 10 + npairs)
    shape = (11 + halo[0] + halo[1], 12 + halo[2] + halo[3])
    L, M1, M2 = random_block(rng, shape, npairs, integer=reference)
    thr = [45.0 + 5 * p for p in range(npairs)] if reference else [47.3 + p for p in range(npairs)]
    kw = {"window": window, "thresholds": thr, "halo": halo, "reference": reference}
    got = starfm_block(L, M1, M2, **kw, threads=1, diagnostics=True)
    want, count, wsum, branches = brute_starfm(L, M1, M2, **kw)
    assert isinstance(got, StarfmDiagnostics)
    assert got.prediction.dtype == (np.int32 if reference else np.float32)
    np.testing.assert_array_equal(got.n_candidates, count)
    np.testing.assert_array_equal(got.weight_sum, wsum)
    np.testing.assert_array_equal(got.prediction, want)
    # the test data exercise every branch: fills, weights of 1, weighted candidates...
    assert (count == 0).any()
    if window != 1:
        assert (count > 1).any() and min(branches.values()) > 0, branches
    # plain call returns the same prediction
    np.testing.assert_array_equal(starfm_block(L, M1, M2, **kw, threads=1), want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_equals_brute_force_options(dtype):
    """Non-default options: dtype, temporal distance with one pair, +off, A, uncertainties."""
    rng = np.random.default_rng(7)
    L, M1, M2 = random_block(rng, (13, 10), 1, integer=False)
    # small residuals on part of the block, so that some t_dis fall below the unit limit
    close = rng.random(M2.shape) < 0.4
    M1[0] = np.where(close, L[0] + rng.uniform(-3, 3, M2.shape), M1[0])
    M2 = np.where(close, M1[0] + rng.uniform(-3, 3, M2.shape), M2)
    kw = {"window": 6, "thresholds": 52.5, "reference": False, "dtype": dtype}
    opts = {
        "temporal": True,
        "off": 0.25,
        "A": 4.0,
        "u_fine": 30.0,
        "u_coarse": 20.0,
        "data_range": None,
    }
    want, count, _, branches = brute_starfm(L, M1, M2, **kw, **opts)
    assert min(branches.values()) > 0, branches
    got = starfm_block(
        L, M1, M2, **kw, temporal_distance=True, distance_offset=0.25, distance_scale=4.0,
        fine_uncertainty=30.0, coarse_uncertainty=20.0, data_range=None, threads=1,
        diagnostics=True,
    )  # fmt: skip
    np.testing.assert_array_equal(got.prediction, want)
    np.testing.assert_array_equal(got.n_candidates, count)
    assert got.prediction.dtype == np.dtype(dtype)


@pytest.mark.parametrize("npairs", [1, 2])
def test_float_mode_decides_integer_data_as_reference_mode(npairs):
    """Float mode's limits sit half a step of distance_offset off the exact ones: on integer
    data (steps of 1) every test is decided as in reference mode. With uncertainties whose
    combinations need no integer truncation (u_coarse = 0: sigma_lsr = sigma_comb = u_fine,
    sigma_msr = 0) the two modes then keep the same candidates with the same weights."""
    rng = np.random.default_rng(11 + npairs)
    L, M1, M2 = random_block(rng, (19, 21), npairs, integer=True)
    kw = {"window": 7, "thresholds": [47.0, 52.0][:npairs], "fine_uncertainty": 60.0,
          "coarse_uncertainty": 0.0, "threads": 1, "diagnostics": True}  # fmt: skip
    ref = starfm_block(L, M1, M2, **kw, reference=True)
    flt = starfm_block(L, M1, M2, **kw, reference=False)
    np.testing.assert_array_equal(flt.n_candidates, ref.n_candidates)
    np.testing.assert_array_equal(flt.weight_sum, ref.weight_sum)
    ok = ref.prediction != FILL
    assert ok.mean() > 0.5
    np.testing.assert_array_equal(np.floor(flt.prediction[ok] + 0.5), ref.prediction[ok])
    # and the same data / 1e4 with every unit-bearing parameter / 1e4 decides alike in float mode
    s = 1e-4
    small = starfm_block(L * s, M1 * s, M2 * s, **{**kw, "thresholds": [47 * s, 52 * s][:npairs],
                         "fine_uncertainty": 60 * s}, distance_offset=s, reference=False,
                         data_range=(0.0, 1.0))  # fmt: skip
    np.testing.assert_array_equal(small.n_candidates, flt.n_candidates)
    np.testing.assert_allclose(small.prediction / s, flt.prediction, rtol=1e-4)  # float32 sums


def test_threads_equal_serial(rng):
    L, M1, M2 = random_block(rng, (37, 41), 2, integer=True)
    kw = {"window": 10, "thresholds": [50.0, 60.0], "halo": (5, 4, 0, 4)}
    np.testing.assert_array_equal(
        starfm_block(L, M1, M2, **kw, threads=3), starfm_block(L, M1, M2, **kw, threads=1)
    )


# ----------------------------------------------------------------------------------------------
# (b) parity with the USDA C program
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic600():
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "synthetic600")
    if not os.path.isdir(folder):
        pytest.skip(f"shared data folder not found at {folder}")
    rasterio = pytest.importorskip("rasterio")
    out = {}
    for name in ("fine_t1", "coarse_t1", "coarse_t2", "reference_starfm_usda_v121"):
        with rasterio.open(os.path.join(folder, f"{name}.tif")) as src:
            a = src.read(1).astype(np.float64)
            assert src.nodata == FILL
        out[name] = a
    return out


def _usda_inputs(data):
    nan = lambda a: np.where(a == FILL, np.nan, a)
    return nan(data["fine_t1"]), nan(data["coarse_t1"]), nan(data["coarse_t2"])


def test_parity_with_usda_v121(synthetic600):
    L, M1, M2 = _usda_inputs(synthetic600)
    ref = synthetic600["reference_starfm_usda_v121"].astype(np.int32)
    thr = similarity_threshold(L)  # sigma 1263.49 -> int(63.17 + 0.5)
    assert thr == 63.0
    out = starfm_block(L, M1, M2, window=50, thresholds=thr, distance_scale=750 / 30)
    assert out.shape == ref.shape and out.dtype == np.int32
    np.testing.assert_array_equal(out == FILL, ref == FILL)  # same fill pattern (392 pixels)
    both = (out != FILL) & (ref != FILL)
    diff = np.abs(out[both] - ref[both])
    within1 = (diff <= 1).mean()
    exact = (diff == 0).mean()
    print(f"USDA parity: exact {exact:.4%}, within +-1 {within1:.4%}, max |diff| {diff.max()}")
    assert within1 >= 0.999
    assert exact >= 0.999  # measured 99.95 %; the rest are +-1 (float vs double rounding)


def test_chunked_equals_whole_synthetic600(synthetic600):
    """(d) on the real window: 2x2 blocks of the 600x600 image with minimal halos."""
    L, M1, M2 = _usda_inputs(synthetic600)
    L, M1, M2 = L[:300, :280], M1[:300, :280], M2[:300, :280]
    kw = {"window": 50, "thresholds": 63.0}
    whole = starfm_block(L, M1, M2, **kw)
    np.testing.assert_array_equal(_blockwise(L, M1, M2, (170,), (100,), halo_size(50), **kw), whole)


# ----------------------------------------------------------------------------------------------
# (c) known answers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("npairs", [1, 2])
@pytest.mark.parametrize("window", [5, 8])
def test_constant_fields(npairs, window):
    a, b, c = 1200.0, 1500.0, 1420.0  # t_dis >= sigma_comb: every weight is distance-weighted
    shape = (npairs, 14, 13)
    L, M1, M2 = np.full(shape, a), np.full(shape, b), np.full(shape[1:], c)
    out = starfm_block(L, M1, M2, window=window, thresholds=10.0, threads=1)
    np.testing.assert_array_equal(out, np.full(shape[1:], a + c - b, np.int32))
    out = starfm_block(L, M1, M2, window=window, thresholds=10.0, reference=False, threads=1)
    np.testing.assert_allclose(out, a + c - b, rtol=1e-6)


def test_no_coarse_change_returns_fine(rng):
    # fine classes further apart than the threshold: the similar pixels are the centre's class
    L = rng.choice([300.0, 900.0, 1500.0, 4000.0], size=(2, 30, 31))
    M1 = L + rng.integers(-200, 200, size=L.shape)
    M2 = M1[0]  # the target coarse image equals the first pair's coarse image
    for window in (6, 11):
        out = starfm_block(L[:1], M1[:1], M2, window=window, thresholds=100.0, threads=1)
        np.testing.assert_array_equal(out, L[0].astype(np.int32))
        out = starfm_block(L[:1], M1[:1], M2, window=window, thresholds=100.0, reference=False)
        np.testing.assert_allclose(out, L[0], rtol=1e-6)


def test_window_one_is_l_plus_coarse_change(rng):
    L, M1, M2 = random_block(rng, (9, 8), 1, integer=True, holes=False)
    out = starfm_block(L, M1, M2, window=1, thresholds=1.0, threads=1)
    np.testing.assert_array_equal(out, (L[0] + M2 - M1[0]).astype(np.int32))


def test_constant_fine_image_gives_zero_threshold_and_fill():
    # USDA quirk kept in reference mode: sigma = 0 -> slice 0 -> strict test admits nothing
    L = np.full((10, 10), 700.0)
    thr = similarity_threshold(L)
    assert thr == 0.0
    out = starfm_block(L, L + 5, L, window=4, thresholds=thr, threads=1)
    assert (out == FILL).all()
    out = starfm_block(L, L + 5, L, window=4, thresholds=thr, reference=False, threads=1)
    assert np.isnan(out).all()


def test_reference_fill_outside_range():
    # P <= lo or P >= hi is filled in reference mode, kept in float mode
    L = np.full((6, 6), 100.0)
    M1 = np.full((6, 6), 400.0)
    M2 = np.full((6, 6), 250.0)  # P = 100 + 250 - 400 = -50
    out = starfm_block(L, M1, M2, window=3, thresholds=5.0, threads=1)
    assert (out == FILL).all()
    out = starfm_block(L, M1, M2, window=3, thresholds=5.0, reference=False, threads=1)
    np.testing.assert_allclose(out, -50.0)
    out = starfm_block(L, M1, M2, window=3, thresholds=5.0, fill_value=np.nan, threads=1)
    assert out.dtype == np.float64 and np.isnan(out).all()


def test_helpers():
    assert window_offsets(50) == (25, 24)
    assert window_offsets(51) == (25, 25)
    assert window_offsets((3, 1)) == (3, 1)
    assert halo_size(4) == (2, 1, 2, 1)
    assert uncertainty_terms(50, 50, reference=True) == (70.0, 70.0, 98.0)
    s_lsr, _s_msr, s_comb = uncertainty_terms(50, 50, reference=False)
    assert s_lsr == pytest.approx(70.7107, abs=1e-4) and s_comb == pytest.approx(100.0)
    assert slice_from_std(1263.49) == 63.0
    assert slice_from_std(1263.49, reference=False) == pytest.approx(63.1745)
    v = np.array([[0.0, 10.0, 20.0], [10000.0, np.nan, 30.0]])  # 0 and 10000 excluded
    assert similarity_threshold(v, num_slice=2, reference=False) == pytest.approx(
        np.std([10, 20, 30])
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be a positive integer"),
        ({"window": (2, -1)}, "window must be a positive integer"),
        ({"window": 4, "halo": (1, 1, 1)}, "halo must be"),
        ({"window": 4, "halo": 9}, "larger than the block"),
        ({"window": 4, "thresholds": -1.0}, "thresholds must be finite"),
        ({"window": 4, "dtype": "int16"}, "dtype must be"),
        ({"window": 4, "distance_scale": 0.0}, "distance_scale"),
        ({"window": 4, "fine_uncertainty": -1.0}, "fine_uncertainty"),
        ({"window": 4, "threads": 0}, "threads must be a positive integer"),
        ({"window": 4, "distance_offset": 0.0}, "distance_offset"),
    ],
)
def test_errors(kwargs, match):
    L = np.ones((8, 8))
    kwargs = {"thresholds": 1.0, **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        starfm_block(L, L, L, **kwargs)


def test_empty_interior():
    L = np.ones((6, 5)) * 100
    out = starfm_block(L, L, L, window=4, thresholds=1.0, halo=(3, 3, 2, 1), threads=2)
    assert out.shape == (0, 2) and out.dtype == np.int32


def test_shape_error():
    L = np.ones((8, 8))
    with pytest.raises(InvalidParameterError, match="Shapes do not match"):
        starfm_block(L, L[:4], L, window=3, thresholds=1.0)


# ----------------------------------------------------------------------------------------------
# (d) blocks with halos == whole image
# ----------------------------------------------------------------------------------------------
def _blockwise(L, M1, M2, row_cuts, col_cuts, halo, **kw):
    """Run the kernel on the blocks of a grid, each with halos clipped at the image edge."""
    if L.ndim == 2:
        L, M1 = L[None], M1[None]
    H, W = M2.shape
    top, bottom, left, right = halo
    rows = [0, *row_cuts, H]
    cols = [0, *col_cuts, W]
    out = None
    for r0, r1 in itertools.pairwise(rows):
        for c0, c1 in itertools.pairwise(cols):
            # boundary="none": no halo on the outer side of edge blocks
            R0, R1 = max(0, r0 - top), min(H, r1 + bottom)
            C0, C1 = max(0, c0 - left), min(W, c1 + right)
            blk = starfm_block(
                L[:, R0:R1, C0:C1], M1[:, R0:R1, C0:C1], M2[R0:R1, C0:C1],
                halo=(r0 - R0, R1 - r1, c0 - C0, C1 - c1), **kw,
            )  # fmt: skip
            if out is None:
                out = np.empty((H, W), blk.dtype)
            out[r0:r1, c0:c1] = blk
    return out


@pytest.mark.parametrize("window", [6, 7])
@pytest.mark.parametrize("reference", [True, False])
def test_chunked_equals_whole(window, reference, rng):
    L, M1, M2 = random_block(rng, (40, 37), 2, integer=reference)
    kw = {"window": window, "thresholds": [50.0, 55.0], "reference": reference, "threads": 1}
    whole = starfm_block(L, M1, M2, **kw)
    before, after = window_offsets(window)
    for halo in (halo_size(window), (before,) * 4):  # minimal halo; symmetric map_overlap depth
        np.testing.assert_array_equal(_blockwise(L, M1, M2, (17,), (20,), halo, **kw), whole)
    # a too-small halo changes the result near the seams: the test can fail
    bad = _blockwise(L, M1, M2, (17,), (20,), (before - 1, after, before, after), **kw)
    assert not np.array_equal(bad, whole, equal_nan=True)
