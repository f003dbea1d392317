"""Compute kernels of Fit-FC (Wang & Atkinson 2018) on raw numpy blocks.

No xarray/dask code here. :func:`wang_block` and :func:`imagefusion_block` take the fine image
of the pair date ``F1`` and the coarse images ``C1`` (pair date) and ``C2`` (target) of every
band of one target, as ``(B, Y, X)`` blocks of the FINE grid (coarse data resampled onto it),
with the block's position in the whole image, and return the prediction for the block
interior. The lazy method (:mod:`xfusion.methods.fitfc`) maps them over the Dask chunks with
a halo from :func:`halo_wang` / :func:`halo_imagefusion`; everything is computed from global
pixel positions in a fixed order, so the result does not depend on the chunking, bit for bit.

Steps (see the module docstring of :mod:`xfusion.methods.fitfc` for the algorithm):

* regression model (RM): variant "wang" on the coarse grid (cell means of the fine-grid coarse
  data, window ``(2 W + 1)^2`` cells, centred moments); variant "imagefusion" on the fine grid
  (window sums over a clipped ``rm_window``, OLS from raw sums as the C++ program);
* residual interpolation: MATLAB ``imresize(.., s, 'bicubic')`` of the coarse residual, or
  OpenCV ``INTER_AREA`` down by ``resolution_factor`` then ``INTER_CUBIC`` back;
* spatial filter (SF, the hot loop, :func:`_sf_rows`): for every centre the ``n`` most similar
  candidates of the window by ``(score, key)`` where key is the column-major window index
  ("wang": ``Mins_matrix`` order) or the squared distance ("imagefusion"), chosen with the
  heap select of libstdc++'s ``std::partial_sort`` so that equivalent candidates resolve as in
  the C++ program. The loop runs over window offsets (outer) and a run of centres (inner): for
  one offset every centre reads one contiguous row, so scores and the "could it enter?" test
  vectorise; only the few candidates that can enter a centre's list take the scalar heap path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError
from xfusion.methods._fitfc_filter import _fill_margins, spatial_filter

__all__ = [
    "FitfcBlockResult",
    "halo_imagefusion",
    "halo_wang",
    "imagefusion_block",
    "matlab_bicubic_taps",
    "opencv_area_taps",
    "opencv_cubic_taps",
    "small_size",
    "wang_block",
]

MATLAB_EPS = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# halo rules


def halo_wang(sf_half_window: int, rm_radius: int, s: int) -> int:
    """Fine pixels of context a block needs for the "wang" variant at any chunk alignment.

    The filter reads ``w0`` pixels; their cells' bicubic residual reads 2 cells on each side,
    whose regressions read ``W`` more cells, and every one of those cells must lie WHOLE in
    the block (its mean is taken over its ``s x s`` pixels): ``w0 + s (W + 2) + s - 1``. The
    spec's ``w0 + s (W + 2)`` holds when chunk edges fall on cell edges and ``w0`` is a
    multiple of ``s``; the extra ``s - 1`` covers the partial cell at the halo's edge.
    """
    return int(sf_half_window) + int(s) * (int(rm_radius) + 2) + int(s) - 1


def small_size(n: int, factor: float) -> int:
    """Size of the ``INTER_AREA`` image: OpenCV ``saturate_cast<int>(n * (1 / f))``."""
    return int(np.rint(n * (1.0 / factor)))


def _area_is_fast(factor: float) -> tuple[bool, float]:
    scale = 1.0 / (1.0 / factor)
    return abs(scale - round(scale)) < np.finfo(np.float64).eps, scale


def opencv_area_taps(n_src: int, n_dst: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``INTER_AREA`` taps from ``n_src`` to ``n_dst`` pixels (scale ``1 / factor``).

    Returns ``(idx, w)`` of shape ``(n_dst, T)``: source indices (-1 for unused slots) and
    float64 weights. An integer factor (OpenCV's fast path) averages blocks of ``factor``
    pixels clipped to the image; otherwise the fractional-area weights of
    ``computeResizeAreaTab``.
    """
    fast, scale = _area_is_fast(factor)
    rows: list[list[tuple[int, float]]] = []
    if fast:
        k = round(scale)
        for d in range(n_dst):
            idx = [x for x in range(d * k, d * k + k) if x < n_src]
            rows.append([(x, 1.0 / len(idx)) for x in idx])
    else:
        for d in range(n_dst):
            fs1 = d * scale
            fs2 = fs1 + scale
            cell = min(scale, n_src - fs1)
            s1 = math.ceil(fs1)
            s2 = min(math.floor(fs2), n_src - 1)
            s1 = min(s1, s2)
            taps = []
            if s1 - fs1 > 1e-3:
                taps.append((s1 - 1, (s1 - fs1) / cell))
            taps.extend((sx, 1.0 / cell) for sx in range(s1, s2))
            if fs2 - s2 > 1e-3:
                taps.append((s2, min(min(fs2 - s2, 1.0), cell) / cell))
            rows.append(taps)
    width = max((len(r) for r in rows), default=1)
    idx = np.full((n_dst, width), -1, np.int64)
    w = np.zeros((n_dst, width), np.float64)
    for d, r in enumerate(rows):
        for t, (x, v) in enumerate(r):
            idx[d, t] = x
            w[d, t] = v
    return idx, w


def opencv_cubic_taps(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """``INTER_CUBIC`` taps from ``n_src`` to ``n_dst`` pixels (A = -0.75, replicated border).

    ``fx = (float)((d + 0.5) * n_src / n_dst - 0.5)`` and the four coefficients are computed in
    float32, as OpenCV does; returns ``(idx, w)`` of shape ``(n_dst, 4)``.
    """
    f = np.float32
    scale = n_src / n_dst
    d = np.arange(n_dst, dtype=np.float64)
    fx = ((d + 0.5) * scale - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    x = (fx - sx.astype(np.float32)).astype(np.float32)
    a = f(-0.75)
    x1 = x + f(1)
    c0 = ((a * x1 - f(5) * a) * x1 + f(8) * a) * x1 - f(4) * a
    c1 = ((a + f(2)) * x - (a + f(3))) * x * x + f(1)
    y = f(1) - x
    c2 = ((a + f(2)) * y - (a + f(3))) * y * y + f(1)
    c3 = f(1) - c0 - c1 - c2
    w = np.stack([c0, c1, c2, c3], axis=1).astype(np.float64)
    idx = np.clip(sx[:, None] - 1 + np.arange(4)[None, :], 0, n_src - 1)
    return idx, w


def _reach(idx_lo: np.ndarray, idx_hi: np.ndarray) -> tuple[int, int]:
    n = idx_lo.size
    pos = np.arange(n)
    return int(np.max(pos - idx_lo, initial=0)), int(np.max(idx_hi - pos, initial=0))


def halo_imagefusion(
    sf_half_window: int, rm_window: int, resolution_factor: float, shape: tuple[int, int] | None
) -> int:
    """Fine pixels of context a block needs for the "imagefusion" variant.

    ``sf_half_window + rm_window // 2 + reach`` where ``reach`` is how far the smoothed
    residual at a pixel looks: the source span of the ``INTER_AREA`` pixels under its four
    ``INTER_CUBIC`` taps. It depends on the image size (``n / round(n / f)``), so with
    ``shape`` the exact value is computed; without it, a bound for any size (``4.5 f + 1``).
    """
    base = int(sf_half_window) + int(rm_window) // 2
    f = float(resolution_factor)
    if f == 1:
        return base
    if shape is None:
        return base + math.ceil(4.5 * f) + 1
    reach = 0
    for n in shape:
        m = small_size(n, f)
        if m < 1 or m == n:
            continue
        aidx, _ = opencv_area_taps(n, m, f)
        lo_src = np.where(aidx >= 0, aidx, n).min(axis=1)
        hi_src = aidx.max(axis=1)
        cidx, _ = opencv_cubic_taps(m, n)
        lo = lo_src[cidx.min(axis=1)]
        hi = hi_src[cidx.max(axis=1)]
        reach = max(reach, *_reach(lo, hi))
    return base + reach


# ---------------------------------------------------------------------------------------------
# MATLAB imresize bicubic taps


def matlab_bicubic_taps(
    start: int, n: int, s: int, phase: int, n_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Taps of MATLAB ``imresize(RB, s, 'bicubic')`` for fine pixels ``start .. start + n - 1``.

    The fine pixel ``g`` is pixel ``g + phase`` of the virtual grid of ``n_cells * s`` pixels
    (``phase``: where the image origin lies inside its coarse cell). Returns the (mirrored,
    0-based) cell indices and the weights, shape ``(n, 6)``: ``u = x / s + 0.5 (1 - 1 / s)``
    for the 1-based ``x``, six taps from ``floor(u - 2)`` weighted by Keys' cubic (a = -0.5),
    normalised by their sum, indices mirrored through ``[1..n, n..1]``.
    """
    x = (np.arange(start, start + n, dtype=np.float64) + phase) + 1.0
    u = x / s + 0.5 * (1 - 1 / s)
    left = np.floor(u - 2.0)
    idx = left[:, None] + np.arange(6, dtype=np.float64)[None, :]
    ax = np.abs(u[:, None] - idx)
    ax2 = ax * ax
    ax3 = ax2 * ax
    w = np.where(ax <= 1, 1.5 * ax3 - 2.5 * ax2 + 1, 0.0) + np.where(
        (ax > 1) & (ax <= 2), -0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2, 0.0
    )
    w = w / w.sum(axis=1, keepdims=True)
    q = np.mod(idx.astype(np.int64) - 1, 2 * n_cells)
    q = np.where(q < n_cells, q, 2 * n_cells - 1 - q)
    return q, w


# ---------------------------------------------------------------------------------------------
# numba: coarse-grid pieces of "wang"


@njit(cache=True, nogil=True)
def _cell_means(img, s, py, px, g0y, g0x, ny_img, nx_img, cy0, cx0, out):  # pragma: no cover
    # mean of the finite pixels of each cell; NaN when the cell is not whole in the block
    # (its pixels cut off by the block edge) or has no finite pixel
    ny, nx = img.shape
    ncy, ncx = out.shape
    for a in range(ncy):
        cy = cy0 + a
        ya = max(cy * s - py, 0) - g0y
        yb = min(cy * s + s - py, ny_img) - g0y
        for b in range(ncx):
            cx = cx0 + b
            xa = max(cx * s - px, 0) - g0x
            xb = min(cx * s + s - px, nx_img) - g0x
            if ya < 0 or yb > ny or xa < 0 or xb > nx:
                out[a, b] = np.nan
                continue
            acc = 0.0
            cnt = 0
            for y in range(ya, yb):
                for x in range(xa, xb):
                    v = np.float64(img[y, x])
                    if not np.isnan(v):
                        acc += v
                        cnt += 1
            out[a, b] = acc / cnt if cnt > 0 else np.nan


@njit(cache=True, nogil=True)
def _guided_ab(
    c1, c2, whole, radius, eps, cy0, cx0, ncy_img, ncx_img, a_out, b_out
):  # pragma: no cover
    # a, b of guidedfilter_MS_low with centred window moments over valid cells; NaN where
    # the window reaches a cell that is not whole in the block (never used then)
    ncy, ncx = c1.shape
    for i in range(ncy):
        gy = cy0 + i
        ylo = max(gy - radius, 0) - cy0
        yhi = min(gy + radius + 1, ncy_img) - cy0
        for j in range(ncx):
            gx = cx0 + j
            xlo = max(gx - radius, 0) - cx0
            xhi = min(gx + radius + 1, ncx_img) - cx0
            a_out[i, j] = np.nan
            b_out[i, j] = np.nan
            if ylo < 0 or xlo < 0 or yhi > ncy or xhi > ncx:
                continue
            ok = True
            n = 0
            si = 0.0
            sp = 0.0
            for y in range(ylo, yhi):
                for x in range(xlo, xhi):
                    if not whole[y, x]:
                        ok = False
                    u = c1[y, x]
                    v = c2[y, x]
                    if not (np.isnan(u) or np.isnan(v)):
                        n += 1
                        si += u
                        sp += v
            if not ok or n == 0:
                continue
            mi = si / n
            mp = sp / n
            sv = 0.0
            sc = 0.0
            for y in range(ylo, yhi):
                for x in range(xlo, xhi):
                    u = c1[y, x]
                    v = c2[y, x]
                    if not (np.isnan(u) or np.isnan(v)):
                        sv += (u - mi) ** 2
                        sc += (u - mi) * (v - mp)
            var = sv / n
            cov = sc / n
            aa = cov / (var + eps)
            a_out[i, j] = aa
            b_out[i, j] = mp - aa * mi


@njit(cache=True, nogil=True)
def _separable(src, iy, wy, ix, wx, skip_zero, out):  # pragma: no cover
    # out[r, c] = sum_l wx[c, l] * (sum_k wy[r, k] * src[iy[r, k], :])[ix[c, l]]
    # indices < 0 (outside the block) give NaN; with skip_zero, zero weights add nothing
    nx_s = src.shape[1]
    nr, nc = out.shape
    mid = np.empty((nr, nx_s))
    for r in range(nr):
        for x in range(nx_s):
            acc = 0.0
            for k in range(iy.shape[1]):
                w = wy[r, k]
                if skip_zero and w == 0:
                    continue
                q = iy[r, k]
                acc += w * (src[q, x] if q >= 0 else np.nan)
            mid[r, x] = acc
    for r in range(nr):
        for c in range(nc):
            acc = 0.0
            for k in range(ix.shape[1]):
                w = wx[c, k]
                if skip_zero and w == 0:
                    continue
                q = ix[c, k]
                acc += w * (mid[r, q] if q >= 0 else np.nan)
            out[r, c] = acc


@njit(cache=True, nogil=True)
def _fill_normalised(src, iy, wy, ix, wx, out, min_weight):  # pragma: no cover
    # where out is NaN: sum w_ij src_ij / sum w_ij over the valid nonzero taps, 0 below
    # min_weight of valid taps
    nr, nc = out.shape
    for r in range(nr):
        for c in range(nc):
            if not np.isnan(out[r, c]):
                continue
            num = 0.0
            den = 0.0
            for k in range(iy.shape[1]):
                for m in range(ix.shape[1]):
                    w = wy[r, k] * wx[c, m]
                    q = iy[r, k]
                    p = ix[c, m]
                    if w == 0 or q < 0 or p < 0:
                        continue
                    v = src[q, p]
                    if not np.isnan(v):
                        num += w * v
                        den += w
            out[r, c] = num / den if den >= min_weight else 0.0


@njit(cache=True, nogil=True)
def _apply_cells(f1, a, b, cell_y, cell_x, res, add_res, out, oy, ox):  # pragma: no cover
    # out[oy + y, ox + x] = a[cell] * f1[y, x] + b[cell] (+ res[y, x])
    ny, nx = f1.shape
    for y in range(ny):
        cy = cell_y[y]
        for x in range(nx):
            cx = cell_x[x]
            v = a[cy, cx] * np.float64(f1[y, x]) + b[cy, cx]
            if add_res:
                v += res[y, x]
            out[oy + y, ox + x] = v


# ---------------------------------------------------------------------------------------------
# numba: fine-grid regression of "imagefusion"


@njit(cache=True, nogil=True)
def _ols_fine(
    h1, l1, l2, valid, win, g0y, g0x, ny_img, nx_img, frm, res, a_out, b_out
):  # pragma: no cover
    # window sums over valid pixels of a win x win window clipped at the image edge: per row,
    # the column sums over the window rows, then their sum over the window columns, each in
    # ascending order (a fixed order per pixel, whatever the block); OLS a, b from the raw
    # sums (a = 1, b = 0 when |det| < 1e-14), as ImageFusion's RegressionMapper
    ny, nx = l1.shape
    half = win // 2
    cs = np.empty((5, nx))
    for i in range(ny):
        g = g0y + i
        ya = max(max(g - half, 0) - g0y, 0)
        yb = min(min(g - half + win, ny_img) - g0y, ny)
        cs[:] = 0.0
        for y in range(ya, yb):
            for j in range(nx):
                if valid[y, j]:
                    u = l1[y, j]
                    v = l2[y, j]
                    cs[0, j] += 1.0
                    cs[1, j] += u
                    cs[2, j] += v
                    cs[3, j] += u * u
                    cs[4, j] += u * v
        for j in range(nx):
            gx = g0x + j
            xa = max(max(gx - half, 0) - g0x, 0)
            xb = min(min(gx - half + win, nx_img) - g0x, nx)
            n = 0.0
            sx = 0.0
            sy = 0.0
            sxx = 0.0
            sxy = 0.0
            for x in range(xa, xb):
                n += cs[0, x]
                sx += cs[1, x]
                sy += cs[2, x]
                sxx += cs[3, x]
                sxy += cs[4, x]
            det = n * sxx - sx * sx
            if abs(det) < 1e-14:
                aa = 1.0
                bb = 0.0
            else:
                aa = (n * sxy - sx * sy) / det
                bb = (sxx * sy - sx * sxy) / det
            a_out[i, j] = aa
            b_out[i, j] = bb
            if valid[i, j]:
                frm[i, j] = aa * h1[i, j] + bb
                res[i, j] = l2[i, j] - (aa * l1[i, j] + bb)
            else:
                frm[i, j] = np.nan
                res[i, j] = np.nan


@njit(cache=True, nogil=True)
def _area_small(r, iy, wy, ix, wx, out):  # pragma: no cover
    # INTER_AREA pixels: sum w r / sum w over finite r (NaN when none, or when a tap is
    # outside the block: index -2)
    nr, nc = out.shape
    for a in range(nr):
        for b in range(nc):
            num = 0.0
            den = 0.0
            bad = False
            for k in range(iy.shape[1]):
                q = iy[a, k]
                if q == -1:
                    continue
                for m in range(ix.shape[1]):
                    p = ix[b, m]
                    if p == -1:
                        continue
                    if q == -2 or p == -2:
                        bad = True
                        continue
                    v = r[q, p]
                    if not np.isnan(v):
                        w = wy[a, k] * wx[b, m]
                        num += w * v
                        den += w
            out[a, b] = num / den if (den > 0 and not bad) else np.nan


# ---------------------------------------------------------------------------------------------
# numba: the spatial filter


















# ---------------------------------------------------------------------------------------------
# Python orchestration


class FitfcBlockResult(NamedTuple):
    """Prediction of one target on a block interior, with the per-band intermediate images."""

    prediction: np.ndarray
    """``(B, ni, nj)`` float64, NaN where no prediction (before any output rounding)."""
    a: np.ndarray
    """``(B, ni, nj)`` regression slope at each fine pixel (its cell's for "wang")."""
    b: np.ndarray
    """``(B, ni, nj)`` regression intercept."""
    residual: np.ndarray
    """``(B, ni, nj)`` the interpolated residual added to the regression prediction."""
    n_used: np.ndarray
    """``(ni, nj)`` int32 number of candidates averaged (0 where no prediction)."""












def _check_block(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, ...]:
    f1, c1, c2 = (np.asarray(a) for a in (f1, c1, c2))
    if f1.ndim == 2:
        f1, c1, c2 = f1[None], c1[None], c2[None]
    if f1.ndim != 3 or c1.shape != f1.shape or c2.shape != f1.shape:
        raise InvalidParameterError(
            f"f1, c1 and c2 must be (bands, y, x) blocks of the fine grid of one shape; got "
            f"{f1.shape!r}, {c1.shape!r}, {c2.shape!r}."
        )
    return f1, c1, c2


def _interior(shape: tuple[int, ...], halo_sides: tuple[int, int, int, int]) -> tuple[int, ...]:
    top, bottom, left, right = (int(v) for v in halo_sides)
    ny, nx = shape[-2:]
    return top, ny - bottom, left, nx - right


def wang_block(
    f1: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    /,
    *,
    s: int,
    sim_bands: tuple[int, ...] | None = None,
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
    halo_sides: tuple[int, int, int, int] = (0, 0, 0, 0),
    phase: tuple[int, int] = (0, 0),
    rm_radius: int = 1,
    sf_half_window: int = 20,
    n_similar: int = 20,
    distance_scale: float | None = None,
    eps: float = MATLAB_EPS,
    residual: str = "before_filter",
    border: str = "replicate",
    fill_residual: bool = False,
    threads: int | None = 1,
    intermediates: bool = True,
) -> FitfcBlockResult:
    """Fit-FC, variant "wang", for one target on a block of the fine grid.

    Parameters
    ----------
    f1, c1, c2 : numpy.ndarray
        ``(B, Y, X)`` (or ``(Y, X)``): fine at the pair date, coarse at the pair date and at
        the target, all on the fine grid (coarse: each cell's pixels hold its value, or any
        resampling of it; the cell means are used). NaN = unobserved.
    s : int
        Coarse cell size in fine pixels.
    sim_bands : tuple of int, optional
        Bands of ``f1`` whose squared differences rank the candidates (default: all).
    origin : (int, int)
        Global index of the block's first pixel; ``image_shape``: the whole image's shape
        (default: the block's). Cells are anchored at ``-phase`` in global pixels.
    halo_sides : (top, bottom, left, right)
        Halo pixels on each block side (0 on image edges); at least :func:`halo_wang` where
        nonzero, so that only whole cells are used for the interior.
    rm_radius, sf_half_window, n_similar, distance_scale, eps, residual, border, fill_residual
        See :class:`xfusion.methods.fitfc.FitfcParams`.
    threads : int, optional
        Threads of the spatial filter (row bands).
    intermediates : bool, default True
        Also return ``a``, ``b`` and the residual on the interior (else empty arrays, and
        less memory: about ``(B + K + 2)`` float64 planes of the block).

    Returns
    -------
    FitfcBlockResult
    """
    f1, c1, c2 = _check_block(f1, c1, c2)
    nb, ny, nx = f1.shape
    s = int(s)
    g0y, g0x = (int(v) for v in origin)
    ny_img, nx_img = image_shape if image_shape is not None else (ny, nx)
    py, px = (int(v) for v in phase)
    r0, r1, col0, col1 = _interior(f1.shape, halo_sides)
    ncy_img = -(-(ny_img + py) // s)
    ncx_img = -(-(nx_img + px) // s)
    cy0, cy1 = (g0y + py) // s, (g0y + ny - 1 + py) // s + 1
    cx0, cx1 = (g0x + px) // s, (g0x + nx - 1 + px) // s + 1
    scale_a = (2 * sf_half_window + 1) / 2 if distance_scale is None else float(distance_scale)

    # which cells are whole in the block
    probe = np.zeros((cy1 - cy0, cx1 - cx0))
    _cell_means(np.zeros((ny, nx)), s, py, px, g0y, g0x, ny_img, nx_img, cy0, cx0, probe)
    whole = ~np.isnan(probe)
    # bicubic taps of the fine rows/columns of the block, as local cell indices (-1: outside)
    iy, wy = matlab_bicubic_taps(g0y, ny, s, py, ncy_img)
    ix, wx = matlab_bicubic_taps(g0x, nx, s, px, ncx_img)
    iy = np.where((iy >= cy0) & (iy < cy1), iy - cy0, -1)
    ix = np.where((ix >= cx0) & (ix < cx1), ix - cx0, -1)
    cell_y = (np.arange(g0y, g0y + ny) + py) // s - cy0
    cell_x = (np.arange(g0x, g0x + nx) + px) // s - cx0

    h = int(sf_half_window)
    after_mode = residual != "before_filter"
    # Z (and the similarity bands) are written straight into arrays padded for the filter
    zp = np.empty((nb, ny + 2 * h, nx + 2 * h))
    nkeep = nb if (intermediates or after_mode) else 1
    res = np.empty((nkeep, ny, nx))
    ni, nj = r1 - r0, col1 - col0
    a_i = np.empty((nb if intermediates else 0, ni, nj))
    b_i = np.empty_like(a_i)
    cm1 = np.empty((cy1 - cy0, cx1 - cx0))
    cm2 = np.empty_like(cm1)
    a = np.empty_like(cm1)
    b = np.empty_like(cm1)
    for band in range(nb):
        rband = res[band if nkeep > 1 else 0]
        _cell_means(c1[band], s, py, px, g0y, g0x, ny_img, nx_img, cy0, cx0, cm1)
        _cell_means(c2[band], s, py, px, g0y, g0x, ny_img, nx_img, cy0, cx0, cm2)
        _guided_ab(cm1, cm2, whole, int(rm_radius), float(eps), cy0, cx0, ncy_img, ncx_img, a, b)
        rb = cm2 - (a * cm1 + b)
        _separable(rb, iy, wy, ix, wx, True, rband)
        if fill_residual:
            _fill_normalised(rb, iy, wy, ix, wx, rband, 0.25)
        _apply_cells(f1[band], a, b, cell_y, cell_x, rband, not after_mode, zp[band], h, h)
        if intermediates:
            a_i[band] = a[cell_y[r0:r1]][:, cell_x[col0:col1]]
            b_i[band] = b[cell_y[r0:r1]][:, cell_x[col0:col1]]
    # candidates need every band of F1 observed
    bad = np.zeros((ny, nx), np.bool_)
    for band in range(nb):
        bad |= np.isnan(f1[band])
    idx = list(range(nb)) if sim_bands is None else list(sim_bands)
    simp = np.empty((len(idx), ny + 2 * h, nx + 2 * h))
    for q, band in enumerate(idx):
        inner = simp[q, h : h + ny, h : h + nx]
        inner[...] = f1[band]
        inner[bad] = np.nan
    edges = (g0y == 0, g0y + ny == ny_img, g0x == 0, g0x + nx == nx_img)
    replicate = border == "replicate"
    _fill_margins(zp, h, edges, replicate)
    _fill_margins(simp, h, edges, replicate)
    pred, nused = spatial_filter(
        simp, zp, interior=(r0, r1, col0, col1), edges=edges, half_window=h,
        n_similar=n_similar, distance_scale=scale_a, order="wang", border=border,
        after=res if after_mode else None, threads=threads, padded=True,
    )  # fmt: skip
    del zp, simp
    sl = (slice(None), slice(r0, r1), slice(col0, col1))
    res_i = res[sl] if intermediates else np.empty((0, ni, nj))
    return FitfcBlockResult(pred, a_i, b_i, res_i, nused)


def _saturate(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """OpenCV ``saturate_cast``: float types round to their precision, integers half-to-even
    and clamp. NaN stays NaN (returned as float64)."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return v.astype(dt).astype(np.float64)
    info = np.iinfo(dt)
    with np.errstate(invalid="ignore"):
        return np.clip(np.rint(v), info.min, info.max)


def imagefusion_block(
    f1: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    /,
    *,
    sim_bands: tuple[int, ...] | None = None,
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
    halo_sides: tuple[int, int, int, int] = (0, 0, 0, 0),
    rm_window: int = 51,
    sf_half_window: int = 25,
    n_similar: int = 10,
    distance_scale: float | None = None,
    resolution_factor: float = 30.0,
    residual: str = "before_filter",
    border: str = "clip",
    fill_residual: bool = False,
    dtype: str | np.dtype = "float64",
    order: str = "imagefusion",
    threads: int | None = 1,
) -> FitfcBlockResult:
    """Fit-FC, variant "imagefusion" (ImageFusion's ``FitFCFusor``), on a fine-grid block.

    ``dtype`` is the type of the input images in the C++ program: the regression image
    ``a h1 + b`` is ``saturate_cast`` to it, similarity differences are taken in it (float32
    for float32), and the caller casts the prediction to it. A pixel is valid where every
    band of ``f1``, ``c1`` and ``c2`` is finite. ``order="wang"`` uses the column-major tie
    order instead of the heap (used by variant "wang" when the cube has no coarse grid).
    Other parameters as :func:`wang_block`; ``halo_sides`` at least :func:`halo_imagefusion`.
    """
    f1, c1, c2 = _check_block(f1, c1, c2)
    nb, ny, nx = f1.shape
    g0y, g0x = (int(v) for v in origin)
    ny_img, nx_img = image_shape if image_shape is not None else (ny, nx)
    r0, r1, col0, col1 = _interior(f1.shape, halo_sides)
    scale_a = (2 * sf_half_window + 1) / 2 if distance_scale is None else float(distance_scale)
    dt = np.dtype(dtype)
    f64 = [np.ascontiguousarray(a, dtype=np.float64) for a in (f1, c1, c2)]
    valid = np.isfinite(f64[0]).all(0) & np.isfinite(f64[1]).all(0) & np.isfinite(f64[2]).all(0)

    factor = float(resolution_factor)
    smooth = factor != 1
    if smooth:
        my, mx = small_size(ny_img, factor), small_size(nx_img, factor)
        if my < 1 or mx < 1:
            raise InvalidParameterError(
                f"resolution_factor={factor:g} is larger than the image ({ny_img} x {nx_img} "
                f"px): the residual would be averaged to an empty image. Use "
                f"resolution_factor <= {min(ny_img, nx_img)}."
            )
        ay, way = opencv_area_taps(ny_img, my, factor)
        ax, wax = opencv_area_taps(nx_img, mx, factor)
        cyi, cyw = opencv_cubic_taps(my, ny_img)
        cxi, cxw = opencv_cubic_taps(mx, nx_img)
        # small pixels under the block's cubic taps, and their area taps in block coordinates
        sy0, sy1 = int(cyi[g0y : g0y + ny].min()), int(cyi[g0y : g0y + ny].max()) + 1
        sx0, sx1 = int(cxi[g0x : g0x + nx].min()), int(cxi[g0x : g0x + nx].max()) + 1
        ly = np.where(ay[sy0:sy1] >= 0, ay[sy0:sy1] - g0y, -1)
        ly = np.where((ay[sy0:sy1] >= 0) & ((ly < 0) | (ly >= ny)), -2, ly)
        lx = np.where(ax[sx0:sx1] >= 0, ax[sx0:sx1] - g0x, -1)
        lx = np.where((ax[sx0:sx1] >= 0) & ((lx < 0) | (lx >= nx)), -2, lx)
        ciy = cyi[g0y : g0y + ny] - sy0
        cix = cxi[g0x : g0x + nx] - sx0
        small = np.empty((sy1 - sy0, sx1 - sx0))

    frm = np.empty((nb, ny, nx))
    res = np.empty((nb, ny, nx))
    rs = np.empty((nb, ny, nx))
    a_f = np.empty((nb, ny, nx))
    b_f = np.empty((nb, ny, nx))
    for band in range(nb):
        _ols_fine(f64[0][band], f64[1][band], f64[2][band], valid, int(rm_window), g0y, g0x,
                  ny_img, nx_img, frm[band], res[band], a_f[band], b_f[band])  # fmt: skip
        frm[band] = _saturate(frm[band], dt)
        if smooth:
            _area_small(res[band], ly, way[sy0:sy1], lx, wax[sx0:sx1], small)
            _separable(small, ciy, cyw[g0y : g0y + ny], cix, cxw[g0x : g0x + nx], False,
                       rs[band])  # fmt: skip
            if fill_residual:
                _fill_normalised(small, ciy, cyw[g0y : g0y + ny], cix, cxw[g0x : g0x + nx],
                                 rs[band], 0.25)  # fmt: skip
        else:
            rs[band] = res[band]
            if fill_residual:
                rs[band] = np.where(np.isnan(rs[band]) & valid, 0.0, rs[band])
    idx = list(range(nb)) if sim_bands is None else list(sim_bands)
    diff_dt = np.float32 if dt == np.float32 else np.float64
    sim = f64[0][idx].astype(diff_dt)
    sim[:, ~valid] = np.nan
    after = None
    if residual == "before_filter":
        val = frm + rs
    else:
        val = frm
        after = rs
    edges = (g0y == 0, g0y + ny == ny_img, g0x == 0, g0x + nx == nx_img)
    pred, nused = spatial_filter(
        sim, val, interior=(r0, r1, col0, col1), edges=edges, half_window=sf_half_window,
        n_similar=n_similar, distance_scale=scale_a, order=order, border=border, after=after,
        threads=threads,
    )  # fmt: skip
    pred = _saturate(pred, dt)
    sl = (slice(None), slice(r0, r1), slice(col0, col1))
    return FitfcBlockResult(pred, a_f[sl], b_f[sl], rs[sl], nused)
