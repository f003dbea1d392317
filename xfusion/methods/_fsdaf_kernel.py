"""Compute kernels of FSDAF (Zhu et al. 2016) on raw numpy blocks.

This module holds no xarray/dask code. The lazy method (:mod:`xfusion.methods.fsdaf`) calls:

* :func:`isodata_fit` once per pair date on a chunk-independent sample of the fine image, and
  :func:`classify` on every chunk (nearest class centre);
* :func:`change_block` on every FSDAF block (``block_cells`` x ``block_cells`` coarse cells
  anchored at the image origin, read with a halo of one coarse cell): steps 3-12 of the IDL
  program (outlier clamp, class fractions, homogeneity index, bounded unmixing of the class
  changes, thin-plate-spline prediction, residual distribution), giving the change image
  ``delta21`` of the block core;
* :func:`xfusion.methods._fsdaf_similar.predict_block` on every chunk of the fine grid with a halo of ``half_window`` pixels:
  step 13 (similar pixels in the window of every target, weighted mean of their change).

Conventions: arrays are ``(band, y, x)`` float64, NaN marks unobserved pixels; a fine pixel
with a NaN in any band is background. Class maps are integers, 0 = background. Every function
is deterministic and depends only on its block (never on how dask cut the image), so the
method's output is bit-identical for any chunking.

The brute-force transcription of the same algorithm (plain Python loops, float64) lives in
``tests/_ref_fsdaf.py``; the tests hold these kernels to it within 1e-6.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError

__all__ = [
    "ChangeResult",
    "ISODATA_SAMPLE",
    "change_block",
    "classify",
    "clamp_outliers",
    "heterogeneity_index",
    "idw_grid",
    "bicubic_grid",
    "isodata_fit",
    "quantile_index",
    "solve_bvls",
    "tps_evaluate",
    "tps_fit",
    "tps_grid",
    "unmix_changes",
]

#: Constants of the IDL program (FSDAF.pro, 02/15/2019), in the units it uses them.
S_EPS = 1e-8  # S += |F1(x) - F1(c)| / (F1(c) + 1e-8)
KEY_EPS = 1e-5  # rank key (S + 1e-5) * (10 + d / w)
KEY_BASE = 10.0
DIST_CLIP = 1e-5  # distance + 1e-5 when the window is clipped by the image edge
W_EPS = 1e-6  # residual weights e*HI + |R|(1 - HI) + 1e-6
PURE_FRACTION = 0.01  # a cell "contains" a class when its fraction is > 0.01
FULL_FRACTION = 0.999  # fractions are zeroed when they sum to <= 0.999 (background inside)

#: Pixels of the fine image used to fit ISODATA (a regular grid of at most this many).
ISODATA_SAMPLE = 50_000



# --------------------------------------------------------------------------------------------
# small shared pieces


def quantile_index(n: int, p: float) -> int:
    """Index into ``sort(values)`` of the IDL quantile rule used by FSDAF.

    IDL: ``value_locate(findgen(n + 1) / n, p)``: the largest ``k`` in ``0..n`` with
    ``k / n <= p`` (clipped to ``n - 1`` so that it indexes ``n`` values).
    """
    if n <= 0:
        raise ValueError("quantile_index of an empty set")
    grid = np.arange(n + 1, dtype=np.float64) / float(n)
    k = int(np.searchsorted(grid, p, side="right")) - 1
    return min(max(k, 0), n - 1)


def clamp_outliers(
    values: np.ndarray, *, quantiles: tuple[float, float], data_range: tuple[float, float]
) -> np.ndarray:
    """Step 3: the IDL outlier clamp of one band's finite values (a new array).

    Values ``<=`` the low quantile or below ``data_range[0]`` become the minimum of the
    others; then values ``>=`` the high quantile (of the original values) or above
    ``data_range[1]`` become the maximum of the others. Where no "other" value exists
    (a constant band) nothing is replaced.
    """
    v = np.array(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return v
    klo, khi = quantile_index(n, quantiles[0]), quantile_index(n, quantiles[1])
    part = np.partition(v, sorted({klo, khi}))  # the two order statistics, O(n)
    qlo, qhi = part[klo], part[khi]
    lo, hi = data_range
    small = (v <= qlo) | (v < lo)
    rest = v[(v > qlo) & (v >= lo)]
    if small.any() and rest.size:
        v[small] = rest.min()
    large = (v >= qhi) | (v > hi)
    rest = v[(v < qhi) & (v <= hi)]
    if large.any() and rest.size:
        v[large] = rest.max()
    return v


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise InvalidParameterError(
            f"threads must be a positive integer or None (all available CPUs); got {threads!r}. "
            "Use threads=1 when the caller (e.g. dask) already runs blocks in parallel."
        )
    return int(threads)


def _run_rows(func: Any, nrows: int, threads: int, *args: Any) -> None:
    """Run ``func(*args, i0, i1)`` over row bands, on ``threads`` threads (nogil kernels)."""
    if threads <= 1 or nrows < 2:
        func(*args, 0, nrows)
        return
    nband = min(nrows, 4 * threads)
    cuts = np.linspace(0, nrows, nband + 1).astype(np.int64)
    with ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(func, *args, int(a), int(b)) for a, b in itertools.pairwise(cuts)]
        for job in jobs:
            job.result()


# --------------------------------------------------------------------------------------------
# step 1: ISODATA (deterministic, k-means++ seeding with a fixed seed)


def _assign(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean distance, ties to the lower index)."""
    d = np.zeros((x.shape[0], centers.shape[0]), np.float64)
    for b in range(x.shape[1]):
        d += (x[:, b : b + 1] - centers[None, :, b]) ** 2
    return np.argmin(d, axis=1)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centers = [x[int(rng.integers(n))]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if not total > 0:
            break  # fewer distinct values than classes
        i = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
        centers.append(x[min(i, n - 1)])
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
    return np.array(centers, np.float64)


def isodata_fit(
    samples: np.ndarray,
    *,
    min_classes: int = 4,
    max_classes: int = 6,
    iterations: int = 20,
    change_threshold: float = 0.05,
    merge_distance: float = 500.0,
    merge_pairs: int = 2,
    min_pixels: int = 200,
    split_std: float = 500.0,
    split_mult: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Fit ISODATA class centres to ``samples`` (n, bands); returns ``(k, bands)`` centres.

    A deterministic ISODATA in the spirit of ENVI's ``class_doit`` method 4 (which is not
    reproducible outside ENVI): ``max_classes`` centres seeded by k-means++ with a fixed
    ``seed``; each iteration assigns every sample to its nearest centre, drops classes with
    fewer than ``min_pixels`` samples (never below ``min_classes``), moves the centres to
    their class means, stops when fewer than ``change_threshold`` of the samples changed
    class, and otherwise alternates a split step (even iterations: a class whose largest
    per-band standard deviation exceeds ``split_std`` is split into ``c +- split_mult * std``
    along that band, up to ``max_classes``) and a merge step (odd iterations: up to
    ``merge_pairs`` pairs of centres closer than ``merge_distance`` are merged, never below
    ``min_classes``). The centres are returned sorted lexicographically, so class labels
    ``1..k`` do not depend on the seeding order.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.all(np.isfinite(x), axis=1)]
    if x.shape[0] == 0:
        return np.zeros((0, samples.shape[1]), np.float64)
    rng = np.random.default_rng(seed)
    centers = _kmeanspp(x, min(max_classes, x.shape[0]), rng)
    labels = _assign(x, centers)
    for it in range(iterations):
        counts = np.bincount(labels, minlength=len(centers))
        # drop the smallest classes below min_pixels (never below min_classes, never all)
        order = np.argsort(counts, kind="stable")
        keep = np.ones(len(centers), bool)
        for j in order:
            if counts[j] >= min_pixels or keep.sum() <= max(min_classes, 1):
                break
            keep[j] = False
        keep &= counts > 0
        if not keep.any():
            keep[np.argmax(counts)] = True
        centers = centers[keep]
        labels = _assign(x, centers)
        centers = np.array([x[labels == j].mean(0) for j in range(len(centers))])
        new = _assign(x, centers)
        changed = float(np.mean(new != labels))
        labels = new
        if changed < change_threshold and it > 0:
            break
        if it == iterations - 1:
            break
        counts = np.bincount(labels, minlength=len(centers))
        if it % 2 == 0:  # split
            stds = np.array([x[labels == j].std(0) if counts[j] else np.zeros(x.shape[1])
                             for j in range(len(centers))])  # fmt: skip
            smax = stds.max(1)
            cand = [j for j in np.argsort(-smax, kind="stable")
                    if smax[j] > split_std and counts[j] > 2 * (min_pixels + 1)]  # fmt: skip
            add = []
            for j in cand:
                if len(centers) + len(add) >= max_classes:
                    break
                band = int(np.argmax(stds[j]))
                step = np.zeros(x.shape[1])
                step[band] = split_mult * stds[j, band]
                add.append(centers[j] + step)
                centers[j] = centers[j] - step
            if add:
                centers = np.vstack([centers, np.array(add)])
                labels = _assign(x, centers)
        elif len(centers) > min_classes:  # merge
            k = len(centers)
            pairs = []
            for a in range(k):
                for b in range(a + 1, k):
                    dist = float(np.sqrt(((centers[a] - centers[b]) ** 2).sum()))
                    if dist < merge_distance:
                        pairs.append((dist, a, b))
            pairs.sort()
            used: set[int] = set()
            merged = []
            for _, a, b in pairs:
                if len(merged) >= merge_pairs or k - len(merged) <= min_classes:
                    break
                if a in used or b in used:
                    continue
                used |= {a, b}
                merged.append((a, b))
            if merged:
                drop = set()
                for a, b in merged:
                    na, nb = counts[a], counts[b]
                    tot = max(na + nb, 1)
                    centers[a] = (na * centers[a] + nb * centers[b]) / tot
                    drop.add(b)
                centers = centers[[j for j in range(k) if j not in drop]]
                labels = _assign(x, centers)
    labels = _assign(x, centers)
    used_classes = np.unique(labels)
    centers = centers[used_classes]
    order = np.lexsort(centers.T[::-1])
    return np.ascontiguousarray(centers[order])


@njit(cache=True, nogil=True)
def _classify_kernel(f, centers, out):  # type: ignore[no-untyped-def]
    nb, h, w = f.shape
    k = centers.shape[0]
    for i in range(h):
        for j in range(w):
            ok = True
            for b in range(nb):
                if not (abs(f[b, i, j]) < np.inf):
                    ok = False
            if not ok:
                out[i, j] = 0
                continue
            best = np.inf
            arg = 0
            for c in range(k):
                d = 0.0
                for b in range(nb):
                    x = f[b, i, j] - centers[c, b]
                    d += x * x
                if d < best:
                    best = d
                    arg = c
            out[i, j] = arg + 1


def classify(fine: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Label every pixel of ``fine`` (bands, y, x) with its nearest centre (squared
    Euclidean distance, ties to the lower index), 1-based; 0 where any band is NaN
    (background) or when there is no centre."""
    f = np.ascontiguousarray(fine, dtype=np.float64)
    out = np.zeros(f.shape[1:], np.int32)
    if centers.shape[0] == 0:
        return out
    _classify_kernel(f, np.ascontiguousarray(centers, np.float64), out)
    return out


# --------------------------------------------------------------------------------------------
# step 6: homogeneity index (box sums of one-hot class maps)


@njit(cache=True, nogil=True)
def _hi_kernel(lab, ncls, w, out):  # type: ignore[no-untyped-def]
    h, wd = lab.shape
    # per class: column counts over the window rows (slid down the image), then running
    # sums of them along the row, so each pixel reads its window count in O(1)
    colsum = np.zeros((ncls, wd), np.int64)
    run = np.zeros((ncls, wd + 1), np.int64)
    for r in range(min(w, h - 1) + 1):
        for c in range(wd):
            colsum[lab[r, c], c] += 1
    for i in range(h):
        if i > 0:
            top = i - w - 1
            bot = i + w
            if top >= 0:
                for c in range(wd):
                    colsum[lab[top, c], c] -= 1
            if bot < h:
                for c in range(wd):
                    colsum[lab[bot, c], c] += 1
        for k in range(ncls):
            acc = 0
            for c in range(wd):
                acc += colsum[k, c]
                run[k, c + 1] = acc
        nrow = min(h - 1, i + w) - max(0, i - w) + 1
        for j in range(wd):
            c0 = max(0, j - w)
            c1 = min(wd - 1, j + w) + 1
            out[i, j] = (run[lab[i, j], c1] - run[lab[i, j], c0]) / (nrow * (c1 - c0))


def heterogeneity_index(labels: np.ndarray, half_window: int) -> np.ndarray:
    """HI(x): share of the pixels of the window (clipped to the array) with the class of x.

    ``labels`` is an integer map >= 0 (0 included: background is a class of its own here, as
    in the IDL program). Exact integer counts (window column sums slid down the rows).
    """
    lab = np.asarray(labels)
    if lab.size and lab.min() >= 0 and lab.max() <= 4 * lab.size:
        dense = np.ascontiguousarray(lab, np.int64)
    else:
        _, inv = np.unique(lab, return_inverse=True)
        dense = np.ascontiguousarray(inv.reshape(lab.shape), np.int64)
    out = np.empty(lab.shape, np.float64)
    if lab.size:
        _hi_kernel(dense, int(dense.max()) + 1, int(half_window), out)
    return out


# --------------------------------------------------------------------------------------------
# step 7: bounded least squares


def solve_bvls(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``argmin ||x d - y||^2`` subject to ``lo <= d <= hi`` (exact BVLS, scipy)."""
    from scipy.optimize import lsq_linear

    k = x.shape[1]
    if k == 0:
        return np.zeros(0)
    if not hi > lo:
        return np.full(k, lo, np.float64)
    res = lsq_linear(x, y, bounds=(lo, hi), method="bvls", tol=1e-13, lsmr_tol=None)
    return np.clip(res.x, lo, hi)


class UnmixResult(NamedTuple):
    """Per-band class changes of one block and what they came from."""

    delta: np.ndarray
    """``(bands, K)`` change of each class."""
    rows: np.ndarray
    """``(bands,)`` number of unmixing rows (cells) used."""
    identified: np.ndarray
    """``(bands, K)`` True where the class had rows of its own (else the block's mean
    coarse change was used)."""


def unmix_changes(
    fractions: np.ndarray,
    dc: np.ndarray,
    valid: np.ndarray,
    *,
    n_pure: int,
    change_quantiles: tuple[float, float],
) -> UnmixResult:
    """Step 7: the class changes of every band from the cells' fractions and coarse change.

    Parameters
    ----------
    fractions : (K, ncells) fractions (zeroed for cells with background).
    dc : (bands, ncells) coarse change ``C2c - C1c``.
    valid : (ncells,) cells with finite coarse data at both dates.
    """
    kcls = fractions.shape[0]
    nb = dc.shape[0]
    delta = np.zeros((nb, kcls))
    rows_used = np.zeros(nb, np.int64)
    ident = np.zeros((nb, kcls), bool)
    vidx = np.flatnonzero(valid)
    if vidx.size == 0 or kcls == 0:
        return UnmixResult(delta, rows_used, ident)
    # cells of each class by fraction, descending (ties: the higher cell index first, as the
    # reversed stable sort of the Python port; IDL's SORT is not stable)
    picks = []
    for k in range(kcls):
        f = fractions[k, vidx]
        order = vidx[np.argsort(f, kind="stable")[::-1]]
        n_f = int(np.count_nonzero(f > PURE_FRACTION))
        if n_f == 0:  # xfusion: the cells that contain the class at all
            n_f = int(np.count_nonzero(f > 0))
        picks.append(order[: min(n_f, n_pure)])
    for b in range(nb):
        d = dc[b]
        dv = d[vidx]
        sd = float(np.std(dv, ddof=1)) if dv.size > 1 else 0.0
        lo = float(dv.min()) - sd
        hi = float(dv.max()) + sd
        xs, ys = [], []
        for k in range(kcls):
            sel = picks[k]
            if sel.size == 0:
                continue
            ch = d[sel]
            srt = np.sort(ch)
            a = srt[quantile_index(sel.size, change_quantiles[0])]
            z = srt[quantile_index(sel.size, change_quantiles[1])]
            keep = (ch >= a) & (ch <= z)
            xs.append(fractions[:, sel[keep]].T)
            ys.append(ch[keep])
        fallback = float(np.mean(dv))
        delta[b] = fallback
        if not xs:
            continue
        x = np.vstack(xs)
        y = np.concatenate(ys)
        rows_used[b] = y.size
        cols = np.flatnonzero(np.any(x != 0, axis=0))
        ident[b, cols] = True
        if cols.size:
            delta[b, cols] = solve_bvls(x[:, cols], y, lo, hi)
    return UnmixResult(delta, rows_used, ident)


# --------------------------------------------------------------------------------------------
# step 10: thin-plate spline (exact, r^2 log r, affine term, no smoothing)


def _phi(r: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = r * r * np.log(r)
    return np.where(r > 0, out, 0.0)


# LU factorisations of recent spline systems: interior blocks share one control lattice
_LU_CACHE: dict[bytes, Any] = {}
_LU_LOCK = threading.Lock()


def tps_fit(points: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Coefficients of the exact thin-plate spline through ``points`` (n, 2) → ``values``.

    ``values`` is ``(n,)`` or ``(n, m)`` (several right-hand sides share one LU
    factorisation). Returns ``(w, a)``: kernel weights ``(n, m)`` and affine coefficients
    ``(3, m)`` (``a0 + a1 * p0 + a2 * p1``), or None when the points do not determine an
    affine function (fewer than 3, or all on one line). The LU factorisation of the system
    is kept for the last few point sets (blocks of one size share their control lattice).
    """
    from scipy.linalg import lu_factor, lu_solve

    p = np.asarray(points, np.float64)
    v = np.asarray(values, np.float64)
    vv = v[:, None] if v.ndim == 1 else v
    n = p.shape[0]
    if n < 3:
        return None
    aff = np.column_stack([np.ones(n), p])
    if np.linalg.matrix_rank(aff) < 3:
        return None
    key = p.tobytes()
    with _LU_LOCK:
        lu = _LU_CACHE.get(key)
    if lu is None:
        r = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        a = np.zeros((n + 3, n + 3))
        a[:n, :n] = _phi(r)
        a[:n, n:] = aff
        a[n:, :n] = aff.T
        lu = lu_factor(a, overwrite_a=True, check_finite=False)
        with _LU_LOCK:
            _LU_CACHE[key] = lu
            while len(_LU_CACHE) > 4:
                _LU_CACHE.pop(next(iter(_LU_CACHE)))
    rhs = np.zeros((n + 3, vv.shape[1]))
    rhs[:n] = vv
    # a private copy: scipy's lu_solve is not safe on LU arrays shared by threads solving at
    # the same time (wrong results, heap corruption with scipy 1.17 / OpenBLAS)
    sol = lu_solve((lu[0].copy(), lu[1].copy()), rhs, check_finite=False)
    return sol[:n], sol[n:]


def tps_evaluate(points: np.ndarray, w: np.ndarray, a: np.ndarray, query: np.ndarray,
                 *, strip: int = 4096) -> np.ndarray:  # fmt: skip
    """Evaluate a thin-plate spline at ``query`` (m, 2) as GEMMs over strips of rows."""
    p = np.asarray(points, np.float64)
    q = np.asarray(query, np.float64)
    out = np.empty((q.shape[0], w.shape[1]))
    for s0 in range(0, q.shape[0], strip):
        qq = q[s0 : s0 + strip]
        r = np.sqrt(((qq[:, None, :] - p[None, :, :]) ** 2).sum(-1))
        out[s0 : s0 + strip] = _phi(r) @ w + a[0] + qq[:, 0:1] * a[1] + qq[:, 1:2] * a[2]
    return out


@lru_cache(maxsize=8)
def _tps_kernel_fft(ncy: int, ncx: int, s: int) -> tuple[np.ndarray, int, int]:
    """FFT of the r^2 log r kernel at every sub-cell phase, for lattice evaluation."""
    import scipy.fft

    ny = scipy.fft.next_fast_len(2 * ncy - 1, real=True)
    nx = scipy.fft.next_fast_len(2 * ncx - 1, real=True)
    delta = (np.arange(s) - (s - 1) / 2.0) / s
    mi = np.arange(-(ncy - 1), ncy)
    mj = np.arange(-(ncx - 1), ncx)
    kern = np.zeros((s, s, ny, nx))
    for pr in range(s):
        dy = (mi + delta[pr])[:, None]
        for pc in range(s):
            dx = (mj + delta[pc])[None, :]
            k = _phi(np.sqrt(dy * dy + dx * dx))
            kern[pr, pc][np.ix_(mi % ny, mj % nx)] = k
    return scipy.fft.rfft2(kern, axes=(-2, -1)), ny, nx


def tps_grid(coef: np.ndarray, affine: np.ndarray, *, s: int, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate a thin-plate spline with control points on the coarse lattice at every fine
    pixel of a block.

    Coordinates are in coarse cells: cell ``(i, j)`` has its centre at ``(i, j)`` and fine
    pixel ``(r, c)`` sits at ``((r - (s - 1) / 2) / s, (c - (s - 1) / 2) / s)``. ``coef`` is
    ``(m, ncy, ncx)`` (0 for cells that are not control points), ``affine`` ``(3, m)``.
    Because every pixel-to-centre offset is an integer number of cells plus one of ``s``
    phases, the sum over control points is ``s * s`` discrete convolutions of the coefficient
    grid, done with FFTs (exact up to rounding, ~1e-12 relative). Returns ``(m, *shape)``.
    """
    import scipy.fft

    m, ncy, ncx = coef.shape
    kf, ny, nx = _tps_kernel_fft(ncy, ncx, s)
    h, w = shape
    out = np.empty((m, h, w))
    rr = (np.arange(h) - (s - 1) / 2.0) / s
    cc = (np.arange(w) - (s - 1) / 2.0) / s
    for b in range(m):
        af = scipy.fft.rfft2(coef[b], s=(ny, nx))
        full = scipy.fft.irfft2(kf * af, s=(ny, nx), axes=(-2, -1))[:, :, :ncy, :ncx]
        grid = full.transpose(2, 0, 3, 1).reshape(ncy * s, ncx * s)[:h, :w]
        out[b] = grid + affine[0, b] + rr[:, None] * affine[1, b] + cc[None, :] * affine[2, b]
    return out


@njit(cache=True, nogil=True)
def _idw_rows(vals, ok, s, radius, power, out, i0, i1):  # type: ignore[no-untyped-def]
    nb, ncy, ncx = vals.shape
    w = out.shape[2]
    half = (s - 1) / 2.0
    reach = math.ceil(radius / s) + 1
    for r in range(i0, i1):
        ci = r // s
        for c in range(w):
            cj = c // s
            sw = 0.0
            exact = -1
            for b in range(nb):
                out[b, r, c] = 0.0
            for i in range(max(0, ci - reach), min(ncy, ci + reach + 1)):
                for j in range(max(0, cj - reach), min(ncx, cj + reach + 1)):
                    if not ok[i, j]:
                        continue
                    dy = r - (i * s + half)
                    dx = c - (j * s + half)
                    d = math.sqrt(dy * dy + dx * dx)
                    if d > radius:
                        continue
                    if d == 0.0:
                        exact = i * ncx + j
                        continue
                    wt = 1.0 / d**power
                    sw += wt
                    for b in range(nb):
                        out[b, r, c] += wt * vals[b, i, j]
            if exact >= 0:
                for b in range(nb):
                    out[b, r, c] = vals[b, exact // ncx, exact % ncx]
            elif sw > 0:
                for b in range(nb):
                    out[b, r, c] /= sw
            else:  # nothing within the radius: the nearest control point
                best = np.inf
                bi = -1
                for i in range(ncy):
                    for j in range(ncx):
                        if ok[i, j]:
                            dy = r - (i * s + half)
                            dx = c - (j * s + half)
                            d = dy * dy + dx * dx
                            if d < best:
                                best = d
                                bi = i * ncx + j
                for b in range(nb):
                    out[b, r, c] = vals[b, bi // ncx, bi % ncx] if bi >= 0 else np.nan


def idw_grid(values: np.ndarray, ok: np.ndarray, *, s: int, shape: tuple[int, int],
             radius: float | None = None, power: float = 2.0) -> np.ndarray:  # fmt: skip
    """cuFSDAF's interpolator: inverse-distance weighting of the cell values (m, ncy, ncx)
    within ``radius`` fine pixels (default ``2 s``) of each fine pixel, power 2; a pixel with
    no control point within the radius takes the nearest one."""
    out = np.empty((values.shape[0], *shape))
    _idw_rows(np.ascontiguousarray(values, np.float64), np.ascontiguousarray(ok), int(s),
              float(2 * s if radius is None else radius), float(power), out, 0, shape[0])  # fmt: skip
    return out


def _keys_weights(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cubic convolution (Keys, a = -0.5) weights and clamped indices of 4 taps."""
    base = np.floor(pos).astype(np.int64)
    t = pos - base
    a = -0.5

    def k(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))  # fmt: skip

    idx = np.stack([base - 1, base, base + 1, base + 2], axis=1)
    wts = np.stack([k(t + 1), k(t), k(t - 1), k(t - 2)], axis=1)
    return np.clip(idx, 0, n - 1), wts


def bicubic_grid(values: np.ndarray, ok: np.ndarray, *, s: int, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic (Keys cubic convolution) interpolation of the cell values (m, ncy, ncx) at the
    fine pixels, edges replicated; cells without coarse data take the mean of the others."""
    m, ncy, ncx = values.shape
    g = np.array(values, np.float64)
    for b in range(m):
        g[b][~ok] = g[b][ok].mean() if ok.any() else np.nan
    h, w = shape
    iy, wy = _keys_weights((np.arange(h) - (s - 1) / 2.0) / s, ncy)
    ix, wx = _keys_weights((np.arange(w) - (s - 1) / 2.0) / s, ncx)
    ry = np.zeros((h, ncy))
    rx = np.zeros((w, ncx))
    for t in range(4):
        np.add.at(ry, (np.arange(h), iy[:, t]), wy[:, t])
        np.add.at(rx, (np.arange(w), ix[:, t]), wx[:, t])
    return np.einsum("hi,bij,wj->bhw", ry, g, rx)


# --------------------------------------------------------------------------------------------
# steps 3-12 on one FSDAF block


class ChangeResult(NamedTuple):
    """Output of :func:`change_block` for the block core."""

    delta21: np.ndarray
    """``(bands, h, w)`` change ``F2_2 - F1`` (clamped F1), NaN where F1 is NaN."""
    hi: np.ndarray
    """``(h, w)`` homogeneity index."""


def _cells(a: np.ndarray, s: int, ncy: int, ncx: int, fill: float) -> np.ndarray:
    """``(m, h, w)`` → ``(m, ncy, ncx, s*s)`` cell layout, pixels beyond the array = fill."""
    m, h, w = a.shape
    if h != ncy * s or w != ncx * s:
        p = np.full((m, ncy * s, ncx * s), fill, dtype=a.dtype)
        p[:, :h, :w] = a
        a = p
    return np.ascontiguousarray(
        a.reshape(m, ncy, s, ncx, s).transpose(0, 1, 3, 2, 4).reshape(m, ncy, ncx, s * s)
    )


def _uncells(a: np.ndarray, s: int, h: int, w: int) -> np.ndarray:
    m, ncy, ncx, _ = a.shape
    return a.reshape(m, ncy, ncx, s, s).transpose(0, 1, 3, 2, 4).reshape(m, ncy * s, ncx * s)[
        :, :h, :w
    ]


def change_block(
    fine: np.ndarray,
    coarse1: np.ndarray,
    coarse2: np.ndarray,
    labels: np.ndarray,
    *,
    s: int,
    halo: Sequence[int] = (0, 0, 0, 0),
    half_window: int = 20,
    n_pure: int = 100,
    data_range: tuple[float, float] = (0.0, 10000.0),
    change_quantiles: tuple[float, float] = (0.1, 0.9),
    outlier_quantiles: tuple[float, float] = (1e-4, 0.9999),
    max_weight: float = 10.0,
    interpolator: str = "tps",
    class_change: np.ndarray | None = None,
) -> ChangeResult:
    """Steps 3-12 of FSDAF on one block (with its halo): the change image of the block core.

    Parameters
    ----------
    fine, coarse1, coarse2 : numpy.ndarray
        ``(bands, H, W)``: F1, C1 and C2 on the fine grid over the block and its halo. The
        block's top-left pixel must be a coarse-cell corner.
    labels : numpy.ndarray
        ``(H, W)`` integer class map (global labels, 0 = background).
    s : int
        Coarse/fine ratio (fine pixels per coarse cell side).
    halo : (top, bottom, left, right)
        Rows/columns of the arrays that are halo; the result covers the rest (the core).
    class_change : numpy.ndarray, optional
        ``(bands, L + 1)`` change of every GLOBAL label (``blocks=False``: one global
        unmixing); default: the block's own unmixing.

    Notes
    -----
    See :func:`xfusion.methods.fsdaf.fsdaf` for the algorithm; this function follows the
    spec step by step with these xfusion rules: pixels with a NaN in any band of F1 are
    background; cells with a NaN coarse pixel (any band, either date) give no unmixing row,
    no TPS control point and no residual; a cell cut by the image edge is a cell of its own
    (its TPS control point stays on the coarse lattice; IDL pools such pixels into cell 0).
    """
    f1 = np.asarray(fine, np.float64)
    c1 = np.asarray(coarse1, np.float64)
    c2 = np.asarray(coarse2, np.float64)
    nb, h, w = f1.shape
    top, bottom, left, right = (int(x) for x in halo)
    core = (slice(top, h - bottom), slice(left, w - right))
    okf = np.all(np.isfinite(f1), axis=0)
    lab = np.asarray(labels)
    glob = np.where(okf, lab, 0)
    present = np.unique(glob[glob > 0])
    kcls = present.size
    blab = np.zeros((h, w), np.int64)
    if kcls:
        blab[glob > 0] = np.searchsorted(present, glob[glob > 0]) + 1
    hi_map = heterogeneity_index(blab, half_window)
    f1 = np.where(okf, f1, np.nan)
    if kcls == 0:
        d21 = np.where(okf, 0.0, np.nan)
        return ChangeResult(np.broadcast_to(d21, (nb, h, w))[:, core[0], core[1]].copy(),
                            hi_map[core])  # fmt: skip

    # step 3: outlier clamp (per band, finite pixels of the block)
    f1k = f1.copy()
    for b in range(nb):
        f1k[b][okf] = clamp_outliers(f1[b][okf], quantiles=outlier_quantiles,
                                     data_range=data_range)  # fmt: skip

    # step 4-5: cells, fractions
    ncy, ncx = -(-h // s), -(-w // s)
    exist = _cells(np.ones((1, h, w)), s, ncy, ncx, 0.0)[0] > 0  # (ncy, ncx, s*s)
    n_c = exist.sum(-1)
    cl = _cells(blab[None].astype(np.float64), s, ncy, ncx, 0.0)[0]
    frac = np.stack([(cl == k + 1).sum(-1) / n_c for k in range(kcls)])  # (K, ncy, ncx)
    frac_raw = frac.copy()
    frac[:, frac.sum(0) <= FULL_FRACTION] = 0.0
    c1c = _cells(c1, s, ncy, ncx, 0.0)
    c2c = _cells(c2, s, ncy, ncx, 0.0)
    cvalid = np.all(np.isfinite(c1c) & np.isfinite(c2c), axis=(0, 3))
    with np.errstate(invalid="ignore"):
        m1 = c1c.sum(-1) / n_c
        m2 = c2c.sum(-1) / n_c
    dc = m2 - m1  # (nb, ncy, ncx)

    # step 7: class changes
    if class_change is None:
        un = unmix_changes(frac.reshape(kcls, -1), dc.reshape(nb, -1), cvalid.ravel(),
                           n_pure=n_pure, change_quantiles=change_quantiles)  # fmt: skip
        delta = un.delta
    else:
        delta = np.asarray(class_change, np.float64)[:, present]

    # step 8: L2_1 = F1 + class change; its cell mean minus F1's = mean class change
    add = np.zeros((nb, h, w))
    for k in range(kcls):
        add[:, blab == k + 1] = delta[:, k : k + 1]
    l21 = f1k + add
    # C2p_c - F1c: the mean class change over the cell's observed pixels (label-0 pixels
    # count as unchanged, as IDL's background; NaN pixels are unobserved and left out)
    n_obs = _cells(okf[None].astype(np.float64), s, ncy, ncx, 0.0)[0].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pred_change = np.einsum("bk,kyx->byx", delta, frac_raw * (n_c / n_obs))

    # step 9: bounds of the t2 prediction
    lo_dr, hi_dr = data_range
    min_allow = np.empty(nb)
    max_allow = np.empty(nb)
    for b in range(nb):
        c2f = c2[b][np.isfinite(c2[b])]
        lv = l21[b][okf]
        mn = min(c2f.min() if c2f.size else np.inf, lv.min())
        mx = max(c2f.max() if c2f.size else -np.inf, lv.max())
        min_allow[b] = max(mn, lo_dr)
        max_allow[b] = min(mx, hi_dr)

    # step 10: interpolation of C2 from the valid cells
    vals = np.where(cvalid, m2, 0.0)
    if interpolator == "tps":
        yy, xx = np.nonzero(cvalid)
        fit = tps_fit(np.column_stack([yy, xx]).astype(np.float64), m2[:, yy, xx].T)
        if fit is None:  # < 3 control points or all on a line: their mean
            mean = np.array([m2[b][cvalid].mean() if cvalid.any() else 0.0 for b in range(nb)])
            l2tps = np.broadcast_to(mean[:, None, None], (nb, h, w))
        else:
            coef = np.zeros((nb, ncy, ncx))
            coef[:, yy, xx] = fit[0].T
            l2tps = tps_grid(coef, fit[1], s=s, shape=(h, w))
    elif interpolator == "idw":
        l2tps = idw_grid(vals, cvalid, s=s, shape=(h, w))
    else:
        l2tps = bicubic_grid(vals, cvalid, s=s, shape=(h, w))

    # step 11: residual distribution
    resid = dc - pred_change  # (nb, ncy, ncx)
    e = _cells(l2tps - l21, s, ncy, ncx, np.nan)
    hic = _cells(hi_map[None], s, ncy, ncx, np.nan)[0]
    okc = _cells(okf[None].astype(np.float64), s, ncy, ncx, 0.0)[0] > 0
    rr = resid[..., None]
    e = np.where(rr <= 0, np.minimum(e, 0.0), np.maximum(e, 0.0))
    e = np.abs(e)
    wts = e * hic + np.abs(rr) * (1.0 - hic) + W_EPS
    wts = np.where(okc, wts, 0.0)
    cnt = okc.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wts.sum(-1, keepdims=True) / cnt[..., None]
        wts = wts / mean
        mean = wts.sum(-1, keepdims=True) / cnt[..., None]
        wts = np.where(wts > max_weight, mean, wts)
        wts = np.where(okc, wts, 0.0)
        wts = wts / (wts.sum(-1, keepdims=True) / cnt[..., None])
        r = wts * rr
    r = np.where(okc & cvalid[None, :, :, None], r, 0.0)
    r = _uncells(r, s, h, w)

    # step 12: F2_2 clamped; change against the clamped F1
    f22 = np.clip(l21 + r, min_allow[:, None, None], max_allow[:, None, None])
    d21 = np.where(okf, f22 - f1k, np.nan)
    return ChangeResult(d21[:, core[0], core[1]], hi_map[core])
