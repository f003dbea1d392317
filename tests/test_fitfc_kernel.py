"""The Fit-FC numba kernel against the brute-force transcription of the spec (tests/_ref_fitfc.py).

(a) variant "wang": the spec's case (6 x 6 coarse cells, s = 4, W = 1, w0 = 3, N_S = 5, NaNs)
    and variations (windows, bands, residual order, border, filled residuals, cell offsets,
    partial cells); max |diff| < 1e-9 and the same NaN pixels;
(b) variant "imagefusion": OLS windows, saturate_cast, OpenCV INTER_AREA/INTER_CUBIC, the
    libstdc++ heap select on data full of ties;
(c) the spec's section 8 cases through the kernel (no change, affine change, constant C1,
    constant F1 tie order), and the pieces (MATLAB bicubic taps, OpenCV taps, halos);
(d) blocks with halos equal the whole image (the kernel side of chunk invariance).
"""

from __future__ import annotations

import itertools
import math

import _ref_fitfc as R
import numpy as np
import pytest

from xfusion.methods import _fitfc_kernel as K


def up(c, s, phase=(0, 0), shape=None):
    """Coarse cells onto the fine grid (each cell -> s x s pixels), window of the virtual grid."""
    u = np.repeat(np.repeat(c, s, -2), s, -1)
    ny, nx = shape if shape is not None else u.shape[-2:]
    return u[..., phase[0] : phase[0] + ny, phase[1] : phase[1] + nx]


def wang_inputs(rng, *, bands=2, nc=(6, 6), s=4, shape=None, phase=(0, 0), holes=True):
    ny, nx = shape if shape is not None else (nc[0] * s, nc[1] * s)
    f1 = rng.normal(1000, 300, (bands, ny, nx))
    c1 = rng.normal(1000, 200, (bands, *nc))
    c2 = 1.1 * c1 + rng.normal(0, 50, (bands, *nc))
    if holes:
        f1[:, 3, 5] = np.nan
        f1[0, ny - 2, 1] = np.nan  # one band only: the pixel is no candidate for any band
        c2[0, 2, 2] = np.nan
        c1[-1, nc[0] - 1, 0] = np.nan
    return f1, c1, c2, up(c1, s, phase, (ny, nx)), up(c2, s, phase, (ny, nx))


def assert_close_nan(got, want, tol=1e-9):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert ok.any()
    assert np.abs(got[ok] - want[ok]).max() < tol


# ---------------------------------------------------------------------------------------------
# (a) wang


def test_wang_spec_case_matches_brute_force(rng):
    """Spec section 8: 6 x 6 coarse, s = 4, W = 1, w0 = 3, N_S = 5, with NaNs."""
    f1, c1, c2, c1f, c2f = wang_inputs(rng)
    want = R.fitfc_wang(f1, c1, c2, s=4, rm_radius=1, w0=3, n_sim=5)
    got = K.wang_block(f1, c1f, c2f, s=4, rm_radius=1, sf_half_window=3, n_similar=5)
    assert got.prediction.shape == f1.shape
    assert_close_nan(got.prediction, want)
    # NaN comes from the missing pixels and from residual taps on the NaN cells, not everywhere
    assert 0.05 < np.isnan(want).mean() < 0.6


@pytest.mark.parametrize(
    "kw",
    [
        {"rm_radius": 0, "w0": 2, "n_sim": 3},
        {"rm_radius": 2, "w0": 4, "n_sim": 9},
        {"residual": "after_filter"},
        {"border": "clip"},
        {"fill_residual": True},
        {"bands": 1},
        {"bands": 3, "sim_bands": (2, 0)},
        {"bands": 3, "sim_bands": (1,)},
        {"phase": (1, 3), "shape": (21, 19)},
        {"phase": (3, 0), "shape": (18, 23), "nc": (6, 6)},
        {"s": 3, "nc": (5, 7)},
        {"scale_a": 2.0, "eps": 1e-3},
    ],
)
def test_wang_variations_match_brute_force(rng, kw):
    kw = dict(kw)
    s = kw.pop("s", 4)
    phase = kw.pop("phase", (0, 0))
    shape = kw.pop("shape", None)
    nc = kw.pop("nc", (6, 6))
    bands = kw.pop("bands", 2)
    f1, c1, c2, c1f, c2f = wang_inputs(rng, bands=bands, nc=nc, s=s, shape=shape, phase=phase)
    ref_kw = {"rm_radius": 1, "w0": 3, "n_sim": 5, **kw}
    want = R.fitfc_wang(f1, c1, c2, s=s, phase=phase, **ref_kw)
    got = K.wang_block(
        f1, c1f, c2f, s=s, phase=phase, rm_radius=ref_kw["rm_radius"],
        sf_half_window=ref_kw["w0"], n_similar=ref_kw["n_sim"],
        distance_scale=ref_kw.get("scale_a"), eps=ref_kw.get("eps", R.MATLAB_EPS),
        residual=ref_kw.get("residual", "before_filter"), border=ref_kw.get("border", "replicate"),
        fill_residual=ref_kw.get("fill_residual", False), sim_bands=ref_kw.get("sim_bands"),
    )  # fmt: skip
    assert_close_nan(got.prediction, want)


def test_wang_fill_residual_fills_only_where_taps_are_missing(rng):
    f1, _, c2, c1f, _ = wang_inputs(rng, holes=False)
    c2[0, 2, 2] = np.nan
    plain = K.wang_block(f1, c1f, up(c2, 4), s=4, sf_half_window=3, n_similar=5)
    filled = K.wang_block(f1, c1f, up(c2, 4), s=4, sf_half_window=3, n_similar=5,
                          fill_residual=True)  # fmt: skip
    gap = np.isnan(plain.residual[0])
    assert gap.sum() > 16 and not np.isnan(filled.residual).any()
    np.testing.assert_array_equal(filled.residual[0][~gap], plain.residual[0][~gap])
    np.testing.assert_array_equal(filled.residual[1], plain.residual[1])


# ---------------------------------------------------------------------------------------------
# (b) imagefusion


def if_inputs(rng, *, bands=2, shape=(17, 19), dtype="float64", ties=True):
    ny, nx = shape
    if ties:  # few distinct values: many equal scores, resolved by distance and the heap
        f = rng.integers(0, 40, (bands, ny, nx)).astype(float) * 50
        c1 = f + rng.integers(-30, 30, (bands, ny, nx))
        c2 = c1 * 1.2 + rng.integers(-30, 30, (bands, ny, nx))
    else:
        f = rng.normal(0.2, 0.05, (bands, ny, nx))
        c1 = f + rng.normal(0, 0.01, f.shape)
        c2 = 1.1 * c1 + rng.normal(0, 0.01, f.shape)
    if dtype == "float32":
        f, c1, c2 = ((a / 1e4).astype(np.float32).astype(float) for a in (f, c1, c2))
    f[0, 4, 4] = np.nan
    c2[-1, 10, 2] = np.nan
    return f, c1, c2


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"dtype": "int16"},
        {"dtype": "uint8", "scale": 0.05},
        {"dtype": "float32"},
        {"resolution_factor": 3.0},
        {"resolution_factor": 2.5},
        {"resolution_factor": 1.0},
        {"border": "replicate"},
        {"residual": "after_filter", "dtype": "int16"},
        {"bands": 1, "n_sim": 40},
        {"bands": 3, "sim_bands": (2,)},
        {"ties": False, "win_rm": 5, "half_sf": 4, "n_sim": 1},
    ],
)
def test_imagefusion_matches_brute_force(rng, kw):
    kw = dict(kw)
    dtype = kw.pop("dtype", "float64")
    f, c1, c2 = if_inputs(rng, bands=kw.pop("bands", 2), dtype=dtype, ties=kw.pop("ties", True))
    scale = kw.pop("scale", 1.0)
    f, c1, c2 = f * scale, c1 * scale, c2 * scale
    ref_kw = {"win_rm": 7, "half_sf": 3, "n_sim": 6, "resolution_factor": 5.0, **kw}
    want = R.fitfc_imagefusion(
        f, c1, c2, dtype=dtype, diff_dtype="float32" if dtype == "float32" else "float64",
        **ref_kw,
    )  # fmt: skip
    got = K.imagefusion_block(
        f, c1, c2, dtype=dtype, rm_window=ref_kw["win_rm"], sf_half_window=ref_kw["half_sf"],
        n_similar=ref_kw["n_sim"], resolution_factor=ref_kw["resolution_factor"],
        border=ref_kw.get("border", "clip"), residual=ref_kw.get("residual", "before_filter"),
        sim_bands=ref_kw.get("sim_bands"),
    )  # fmt: skip
    tol = 1e-9 if dtype == "float64" else 0.0  # rounded types: bit-identical
    np.testing.assert_array_equal(np.isnan(got.prediction), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.abs(got.prediction[ok] - want[ok]).max() <= tol


def test_partial_sort_select_keeps_heap_order_among_equivalents():
    """Equivalent elements (same score and distance) are not chosen by input order."""
    seq = [(0.0, 1, "a"), (0.0, 1, "b"), (0.0, 1, "c"), (0.0, 1, "d"), (0.0, 0, "e")]
    chosen = [e[2] for e in R.partial_sort_select(seq, 4)]
    assert chosen[0] == "e" and len(chosen) == 4
    # make_heap leaves "c" on top, so "e" evicts "c" (a stable order would evict "d")
    assert set(chosen) == {"a", "b", "d", "e"}
    # the kernel's selection on the same sequence (one centre, five candidates in a row)
    sim = np.array([[[0.0, 0.0, 0.0, 0.0, 0.0]]])
    val = np.arange(5.0)[None, None, :]
    # candidates at offsets -2..2 around the centre pixel 2 all have score 0; key = dist^2
    got, used = K.spatial_filter(
        sim, val, interior=(0, 1, 2, 3), edges=(True, True, True, True), half_window=2,
        n_similar=3, distance_scale=1e9, order="imagefusion", border="clip",
    )  # fmt: skip
    assert used[0, 0] == 3
    # the same heap run on (score, dist2) in row-major order: offsets -2, -1, 0, 1, 2
    seq2 = [(0.0, dj * dj, 2 + dj) for dj in (-2, -1, 0, 1, 2)]
    want = np.mean([e[2] for e in R.partial_sort_select(seq2, 3)])
    assert got[0, 0, 0] == pytest.approx(want)


# ---------------------------------------------------------------------------------------------
# (c) the spec's section 8 cases


def smooth_field(rng, shape):
    y, x = np.mgrid[: shape[0], : shape[1]]
    return 800 + 300 * np.sin(y / 5.0) * np.cos(x / 7.0) + rng.normal(0, 30, shape)


def test_no_change_gives_the_filtered_fine_image(rng):
    """C2 = C1: a = 1, b = 0, residual 0, output = SF(F1): a smoothing of F1, not F1."""
    f1 = smooth_field(rng, (24, 24))[None]
    c = rng.normal(1000, 200, (1, 6, 6))
    res = K.wang_block(f1, up(c, 4), up(c, 4), s=4, sf_half_window=3, n_similar=5)
    np.testing.assert_allclose(res.a, 1.0, atol=1e-12)
    np.testing.assert_allclose(res.b, 0.0, atol=1e-8)
    np.testing.assert_allclose(res.residual, 0.0, atol=1e-8)
    sf = R.spatial_filter_wang(f1, f1, w0=3, n_sim=5, scale_a=3.5)
    np.testing.assert_allclose(res.prediction, sf, atol=1e-8)
    assert np.abs(res.prediction - f1).max() > 1  # a smoothing, not the identity


def test_global_affine_change(rng):
    """C2 = alpha C1 + beta: a = alpha, b = beta, residual 0, output = alpha SF(F1) + beta."""
    f1 = smooth_field(rng, (24, 28))[None]
    c1 = rng.normal(1000, 200, (1, 6, 7))
    alpha, beta = 1.3, -250.0
    res = K.wang_block(f1, up(c1, 4), up(alpha * c1 + beta, 4), s=4, sf_half_window=3,
                       n_similar=5)  # fmt: skip
    np.testing.assert_allclose(res.a, alpha, rtol=1e-12)
    np.testing.assert_allclose(res.b, beta, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.residual, 0.0, atol=1e-8)
    sf = R.spatial_filter_wang(f1, f1, w0=3, n_sim=5, scale_a=3.5)
    np.testing.assert_allclose(res.prediction, alpha * sf + beta, rtol=1e-12, atol=1e-8)


def test_constant_c1_gives_mean_of_c2_and_the_residual(rng):
    """var = 0: a = 0 exactly (centred moments), b = mean(C2) over the window."""
    f1 = smooth_field(rng, (24, 24))[None]
    c1 = np.full((1, 6, 6), 700.0)
    c2 = rng.normal(900, 100, (1, 6, 6))
    res = K.wang_block(f1, up(c1, 4), up(c2, 4), s=4, sf_half_window=3, n_similar=5)
    assert (res.a == 0).all()
    # b of the interior cell (2, 3): mean of C2 over its 3 x 3 window
    assert res.b[0, 2 * 4, 3 * 4] == pytest.approx(c2[0, 1:4, 2:5].mean(), rel=1e-13)
    # output = SF(block field of b) + bicubic(RB), with RB = C2 - b
    rb = c2[0] - np.array([[c2[0, max(0, i - 1) : i + 2, max(0, j - 1) : j + 2].mean()
                            for j in range(6)] for i in range(6)])  # fmt: skip
    z2 = (res.b[0] + R.imresize_bicubic(rb, 4))[None]
    want = R.spatial_filter_wang(z2, f1, w0=3, n_sim=5, scale_a=3.5)
    np.testing.assert_allclose(res.prediction, want, rtol=1e-12)


def test_constant_f1_takes_the_first_positions_in_column_major_order():
    """All scores 0: the N_S chosen are the first window positions in column-major order,
    replicated padding included at the border."""
    w0, n = 2, 4
    f1 = np.full((1, 12, 12), 500.0)
    z = np.arange(144.0).reshape(1, 12, 12) * 7.0  # Z2 marks which pixels were averaged
    out, used = K.spatial_filter(
        f1, z, interior=(0, 12, 0, 12), edges=(True,) * 4, half_window=w0, n_similar=n,
        distance_scale=2.5, order="wang", border="replicate",
    )  # fmt: skip
    assert (used == n).all()
    zp = np.pad(z[0], w0, mode="edge")
    for i, j in [(0, 0), (5, 6), (11, 3), (3, 11)]:
        # column-major: the first column of the window (dj = -w0) top to bottom
        picks = [(di, -w0) for di in range(-w0, -w0 + n)]
        w = [1 / (1 + math.hypot(di, dj) / 2.5) for di, dj in picks]
        v = [zp[i + w0 + di, j + w0 + dj] for di, dj in picks]
        assert out[0, i, j] == pytest.approx(np.dot(w, v) / sum(w), rel=1e-14)
    # and the brute force agrees everywhere
    ref = R.spatial_filter_wang(z, f1, w0=w0, n_sim=n, scale_a=2.5)
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def test_matlab_bicubic_taps_match_the_contributions():
    for n_cells, s, phase in ((6, 4, 0), (5, 3, 2), (1, 4, 0), (2, 16, 5)):
        idx, w = K.matlab_bicubic_taps(0, n_cells * s - phase, s, phase, n_cells)
        tab = R.matlab_contributions(n_cells, n_cells * s, float(s))
        for r in range(n_cells * s - phase):
            got = {}
            for k in range(6):
                if w[r, k] != 0:
                    got[idx[r, k]] = got.get(idx[r, k], 0.0) + w[r, k]
            want = {}
            for k, v in tab[r + phase]:
                if v != 0:
                    want[k] = want.get(k, 0.0) + v
            assert got.keys() == want.keys()
            for k, v in got.items():
                assert v == pytest.approx(want[k], abs=1e-15)
    # MATLAB imresize of a constant is the constant; of a linear ramp, a ramp inside
    np.testing.assert_allclose(R.imresize_bicubic(np.full((4, 5), 3.0), 4), 3.0, rtol=1e-14)


def test_opencv_taps():
    idx, w = K.opencv_cubic_taps(3, 10)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert idx.min() == 0 and idx.max() == 2
    for n, f in ((45, 30.0), (100, 30.0), (17, 5.0), (17, 2.5)):
        m = K.small_size(n, f)
        ai, aw = K.opencv_area_taps(n, m, f)
        ref = (R.area_tab_fast(n, m, round(f)) if float(f).is_integer()
               else R.area_tab(n, m, f))  # fmt: skip
        for d in range(m):
            taps = [(int(i), float(v)) for i, v in zip(ai[d], aw[d], strict=True) if i >= 0]
            assert [i for i, _ in taps] == [i for i, _ in ref[d]]
            np.testing.assert_allclose([v for _, v in taps], [v for _, v in ref[d]], rtol=1e-15)
    assert K.small_size(45, 30.0) == 2 and K.small_size(75, 30.0) == 2  # round half to even


# ---------------------------------------------------------------------------------------------
# (d) blocks with halos == the whole image


def _split(n, cuts):
    edges = [0, *cuts, n]
    return list(itertools.pairwise(edges))


@pytest.mark.parametrize("variant", ["wang", "imagefusion"])
def test_blocks_with_halo_equal_the_whole_image(rng, variant):
    if variant == "wang":
        f1, _, _, c1f, c2f = wang_inputs(rng, nc=(9, 8), s=4, shape=(34, 31), phase=(2, 1))
        kw = {"s": 4, "phase": (2, 1), "rm_radius": 1, "sf_half_window": 3, "n_similar": 5}
        run = K.wang_block
        depth = K.halo_wang(3, 1, 4)
    else:
        f1, c1f, c2f = if_inputs(rng, shape=(34, 31), dtype="int16")
        kw = {"rm_window": 7, "sf_half_window": 3, "n_similar": 6, "resolution_factor": 4.0,
              "dtype": "int16"}  # fmt: skip
        run = K.imagefusion_block
        depth = K.halo_imagefusion(3, 7, 4.0, (34, 31))
    whole = run(f1, c1f, c2f, **kw).prediction
    ny, nx = f1.shape[1:]
    for (y0, y1), (x0, x1) in [(r, c) for r in _split(ny, [9, 21]) for c in _split(nx, [13])]:
        a0, a1 = max(0, y0 - depth), min(ny, y1 + depth)
        b0, b1 = max(0, x0 - depth), min(nx, x1 + depth)
        sl = (slice(None), slice(a0, a1), slice(b0, b1))
        part = run(
            f1[sl], c1f[sl], c2f[sl], origin=(a0, b0), image_shape=(ny, nx),
            halo_sides=(y0 - a0, a1 - y1, x0 - b0, b1 - x1), **kw,
        ).prediction  # fmt: skip
        np.testing.assert_array_equal(part, whole[:, y0:y1, x0:x1])


def test_halo_rules():
    assert K.halo_wang(20, 1, 16) == 20 + 16 * 3 + 15
    # imagefusion: exact per size <= the size-free bound
    for n in (45, 75, 100, 600, 1000):
        assert K.halo_imagefusion(25, 51, 30.0, (n, n)) <= K.halo_imagefusion(25, 51, 30.0, None)
    assert K.halo_imagefusion(25, 51, 1.0, (100, 100)) == 25 + 25
    assert K.halo_imagefusion(25, 51, 30.0, (600, 600)) > 25 + 25 + 60


def test_spatial_filter_threads_do_not_change_the_result(rng):
    f1, _, _, c1f, c2f = wang_inputs(rng, nc=(8, 8), s=4)
    one = K.wang_block(f1, c1f, c2f, s=4, sf_half_window=3, n_similar=5, threads=1)
    two = K.wang_block(f1, c1f, c2f, s=4, sf_half_window=3, n_similar=5, threads=3)
    np.testing.assert_array_equal(one.prediction, two.prediction)
