"""Compute kernel of ESTARFM on raw numpy blocks (all bands of one target at once).

No xarray/dask code lives here: :func:`estarfm_block` takes the five inputs of one target
(``F1, C1`` at the pair before, ``F2, C2`` at the pair after, ``C0`` at the target, all on the
fine grid, shape ``(nb, H, W)``) for a block with its halo, plus the similarity thresholds
(global statistics computed beforehand, see :func:`threshold_moments`), and returns the
prediction of the block interior. The lazy method (:mod:`xfusion.methods.estarfm`) maps it over
Dask chunks with a halo of ``half_window`` pixels.

Implementation (specs/estarfm.md section 5): per target pixel, one fused pass over its window
builds the candidate mask (all bands, both pairs), the weights ``1 / ((1 - R) D + eps)`` (``R``
precomputed per pixel, ``D`` from a table of the window offsets) and accumulates the candidate
count, the weight sum and, per band, the weighted coarse changes and the coarse change between
the pairs. The regression sums (centred on the target pixel's values) are a second pass that
runs only where the conversion coefficient is needed, and the weighted fine means a third pass
that runs only where the prediction falls outside the data range; both reuse the window's mask
and weights kept from the first pass. The temporal weights come from window sums over the valid
pixels, computed by separable (column, then row) sums in a fixed order, so every target pixel
gets the same float result whatever block it is computed in. The F test compares the F
statistic with a table of critical values ``F_(1-p)(1, nu)`` (scipy, once per ``p_value`` and
window size), so the compiled code needs no special function; the quality-weighted variant of
ImageFusion evaluates the F(1, nu) CDF with the exact finite series of the Student t
distribution (Abramowitz & Stegun 26.7.3-4).

Compiled loops use ``fastmath={"reassoc", "contract"}`` only (vectorised reductions, fused
multiply-add); NaN and infinity semantics are kept. The summation order of every sum depends
only on the window, never on the block or the thread, so results are bit-identical for any
chunking and thread count.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError
from xfusion.methods._estarfm_stats import (
    MOMENT_SIZE,
    _as_bands,
    _window_sums,
    distance_table,
    f1_cdf,
    f_critical_table,
    spectral_correlation,
    threshold_from_moments,
    threshold_moments,
    thresholds_numpy,
    validity_mask,
)

__all__ = [
    "MOMENT_SIZE",
    "EstarfmDiagnostics",
    "VARIANTS",
    "distance_table",
    "estarfm_block",
    "estarfm_blockwise",
    "f1_cdf",
    "f_critical_table",
    "spectral_correlation",
    "threshold_from_moments",
    "threshold_moments",
    "thresholds_numpy",
    "validity_mask",
]

VARIANTS: tuple[str, ...] = ("zhu", "imagefusion")



# ----------------------------------------------------------------------------------------------
# the per-pixel kernel
# ----------------------------------------------------------------------------------------------
# Row sweep: for one row of centres and one window offset (di, dj), the candidate of centre j
# is pixel j + dj of row i + di, so a loop over the centres reads contiguous memory and
# vectorises; each centre's sums are its own accumulators (arrays over the row), added in the
# window order (di, dj): no reduction across vector lanes, no reassociation, no FMA. A rarely
# needed sum is computed per centre instead (_centre_sums), in the same order with the same
# operations (a non-candidate adds an exact 0), so every path gives the same bits.
#
# Per-pixel planes (precomputed per block, working dtype): ch = (C0 - C1, C0 - C2, C1 - C2)
# and rp = (C1, C2). The regression sums over the candidates, in float64, are sums of
# C1 + C2, F1 + F2, C1^2 + C2^2, C1 F1 + C2 F2 and F1^2 + F2^2 (the OLS of the 2n points
# x = C1, C2; y = F1, F2), formed from rp and the fine planes as they are read.

_CH, _RQ = 3, 5  # planes of ch, regression sums


@njit(cache=True, nogil=True, error_model="numpy")
def _sweep_mask(i, r, dj, ja, jb, c0i, f1, f2, validf, t1r, t2r, local, strict, m, zero):
    # m[t] = 1.0 when pixel (r, ja + t + dj) is a similar, valid candidate of centre (i, ja + t)
    nb = f1.shape[0]
    ln = jb - ja
    ka = ja + dj
    vv = validf[r, ka : ka + ln]
    for t in range(ln):
        m[t] = vv[t]
    for b in range(nb):
        fk1 = f1[b, r, ka : ka + ln]
        fk2 = f2[b, r, ka : ka + ln]
        fc1 = f1[b, i, ja:jb]
        fc2 = f2[b, i, ja:jb]
        if local:
            a1 = t1r[b, ja - c0i : jb - c0i]
            a2 = t2r[b, ja - c0i : jb - c0i]
            if strict:
                for t in range(ln):
                    ok = (abs(fk1[t] - fc1[t]) < a1[t]) & (abs(fk2[t] - fc2[t]) < a2[t])
                    m[t] = m[t] if ok else zero
            else:
                for t in range(ln):
                    bad = (abs(fk1[t] - fc1[t]) > a1[t]) | (abs(fk2[t] - fc2[t]) > a2[t])
                    m[t] = zero if bad else m[t]
        else:
            s1 = t1r[b, 0]
            s2 = t2r[b, 0]
            if strict:
                for t in range(ln):
                    ok = (abs(fk1[t] - fc1[t]) < s1) & (abs(fk2[t] - fc2[t]) < s2)
                    m[t] = m[t] if ok else zero
            else:
                for t in range(ln):
                    bad = (abs(fk1[t] - fc1[t]) > s1) | (abs(fk2[t] - fc2[t]) > s2)
                    m[t] = zero if bad else m[t]


@njit(cache=True, nogil=True, error_model="numpy")
def _sweep_row(i, f1, f2, ch, rp, validf, om, dtab, t1r, t2r, local, w, c0i, c1i, strict, eps_d,
               zero, first, need, acc_n, acc_w, acc, reg, m, wv):
    # the windows of row i, offset by offset. first: candidate count, weight sum and per band
    # the weighted sums of C0 - C1, C0 - C2 and the sum of C1 - C2 (acc[0..2]); need[b]: the
    # regression sums of band b (reg[b, 0..4]).
    nb, ny, nx = f1.shape
    fast1 = nb == 1 and not local
    anyreg = False
    for b in range(nb):
        anyreg |= need[b]
    if first:
        acc_n[:] = zero
        acc_w[:] = zero
        acc[:] = zero
    for b in range(nb):
        if need[b]:
            reg[b] = 0.0
    for r in range(max(0, i - w), min(ny, i + w + 1)):
        for dj in range(-w, w + 1):
            ja = max(c0i, -dj)
            jb = min(c1i, nx - dj)
            if jb <= ja:
                continue
            ln = jb - ja
            ka = ja + dj
            lo = ja - c0i
            hi = jb - c0i
            if first and fast1:
                # one band, global thresholds: mask, weights and sums in one loop
                d = dtab[r - i + w, dj + w]
                vv = validf[r, ka : ka + ln]
                fk1 = f1[0, r, ka : ka + ln]
                fk2 = f2[0, r, ka : ka + ln]
                fc1 = f1[0, i, ja:jb]
                fc2 = f2[0, i, ja:jb]
                omk = om[r, ka : ka + ln]
                k1 = ch[0, 0, r, ka : ka + ln]
                k2 = ch[1, 0, r, ka : ka + ln]
                kd = ch[2, 0, r, ka : ka + ln]
                an = acc_n[lo:hi]
                aw = acc_w[lo:hi]
                s1 = acc[0, 0, lo:hi]
                s2 = acc[1, 0, lo:hi]
                sd = acc[2, 0, lo:hi]
                g1 = t1r[0, 0]
                g2 = t2r[0, 0]
                if strict:
                    for t in range(ln):
                        ok = (abs(fk1[t] - fc1[t]) < g1) & (abs(fk2[t] - fc2[t]) < g2)
                        mt = vv[t] if ok else zero
                        v = mt / (omk[t] * d + eps_d)
                        m[t] = mt
                        an[t] += mt
                        aw[t] += v
                        s1[t] += v * k1[t]
                        s2[t] += v * k2[t]
                        sd[t] += mt * kd[t]
                else:
                    for t in range(ln):
                        bad = (abs(fk1[t] - fc1[t]) > g1) | (abs(fk2[t] - fc2[t]) > g2)
                        mt = zero if bad else vv[t]
                        v = mt / (omk[t] * d + eps_d)
                        m[t] = mt
                        an[t] += mt
                        aw[t] += v
                        s1[t] += v * k1[t]
                        s2[t] += v * k2[t]
                        sd[t] += mt * kd[t]
            else:
                _sweep_mask(i, r, dj, ja, jb, c0i, f1, f2, validf, t1r, t2r, local, strict, m, zero)
            if first and not fast1:
                d = dtab[r - i + w, dj + w]
                omk = om[r, ka : ka + ln]
                an = acc_n[lo:hi]
                aw = acc_w[lo:hi]
                for t in range(ln):
                    v = m[t] / (omk[t] * d + eps_d)
                    wv[t] = v
                    an[t] += m[t]
                    aw[t] += v
                for b in range(nb):
                    k1 = ch[0, b, r, ka : ka + ln]
                    k2 = ch[1, b, r, ka : ka + ln]
                    kd = ch[2, b, r, ka : ka + ln]
                    s1 = acc[0, b, lo:hi]
                    s2 = acc[1, b, lo:hi]
                    sd = acc[2, b, lo:hi]
                    for t in range(ln):
                        v = wv[t]
                        s1[t] += v * k1[t]
                        s2[t] += v * k2[t]
                        sd[t] += m[t] * kd[t]
            if anyreg:
                for b in range(nb):
                    if not need[b]:
                        continue
                    x1k = rp[0, b, r, ka : ka + ln]
                    x2k = rp[1, b, r, ka : ka + ln]
                    y1k = f1[b, r, ka : ka + ln]
                    y2k = f2[b, r, ka : ka + ln]
                    a0 = reg[b, 0, lo:hi]
                    a1 = reg[b, 1, lo:hi]
                    a2 = reg[b, 2, lo:hi]
                    a3 = reg[b, 3, lo:hi]
                    a4 = reg[b, 4, lo:hi]
                    for t in range(ln):
                        mt = np.float64(m[t])
                        x1 = np.float64(x1k[t])
                        x2 = np.float64(x2k[t])
                        y1 = np.float64(y1k[t])
                        y2 = np.float64(y2k[t])
                        a0[t] += mt * (x1 + x2)
                        a1[t] += mt * (y1 + y2)
                        a2[t] += mt * (x1 * x1 + x2 * x2)
                        a3[t] += mt * (x1 * y1 + x2 * y2)
                        a4[t] += mt * (y1 * y1 + y2 * y2)


@njit(cache=True, nogil=True, error_model="numpy")
def _centre_sums(i, j, jj, b, f1, f2, rp, validf, om, dtab, t1r, t2r, local, w, strict, eps_d,
                 what, out):
    # one centre, one band, in the window order, float64: what=0 the regression sums (out[0..4],
    # the same as _sweep_row), 1 the weighted sums of F1 - F1(c), F2 - F2(c), 2 the sums of
    # C1 and C2 (out[0..1])
    nb, ny, nx = f1.shape
    out[:] = 0.0
    for r in range(max(0, i - w), min(ny, i + w + 1)):
        for k in range(max(0, j - w), min(nx, j + w + 1)):
            if validf[r, k] == 0.0:
                continue
            ok = True
            for q in range(nb):
                e1 = abs(f1[q, r, k] - f1[q, i, j])
                e2 = abs(f2[q, r, k] - f2[q, i, j])
                a1 = t1r[q, jj] if local else t1r[q, 0]
                a2 = t2r[q, jj] if local else t2r[q, 0]
                if strict:
                    ok &= (e1 < a1) & (e2 < a2)
                else:
                    ok &= not ((e1 > a1) | (e2 > a2))
            if not ok:
                continue
            if what == 1:
                v = 1.0 / (om[r, k] * dtab[r - i + w, k - j + w] + eps_d)
                out[0] += v * (f1[b, r, k] - f1[b, i, j])
                out[1] += v * (f2[b, r, k] - f2[b, i, j])
            elif what == 2:
                out[0] += np.float64(rp[0, b, r, k])
                out[1] += np.float64(rp[1, b, r, k])
            else:
                x1 = np.float64(rp[0, b, r, k])
                x2 = np.float64(rp[1, b, r, k])
                y1 = np.float64(f1[b, r, k])
                y2 = np.float64(f2[b, r, k])
                out[0] += x1 + x2
                out[1] += y1 + y2
                out[2] += x1 * x1 + x2 * x2
                out[3] += x1 * y1 + x2 * y2
                out[4] += y1 * y1 + y2 * y2
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _conversion(zhu, n2, sx, sy, sxx, sxy, syy, fcrit, v_max, quality):
    # conversion coefficient V from the regression sums of n2 points (x coarse, y fine)
    cxx = sxx - sx * sx / n2
    cxy = sxy - sx * sy / n2
    cyy = syy - sy * sy / n2
    nu = int(n2) - 2
    if zhu:
        if not (cxx > 0.0):
            return 1.0
        slope = cxy / cxx
        if not (slope > 0.0 and slope <= v_max):
            return 1.0
        if not (cyy > 0.0):  # F = 0/0: no p-value, not significant
            return 1.0
        den = cxx * cyy - cxy * cxy
        if den > 0.0 and (nu * cxy * cxy / den) < fcrit[nu]:
            return 1.0
        return slope
    det = n2 * sxx - sx * sx
    if abs(det) < 1e-14:
        return 1.0
    slope = (n2 * sxy - sx * sy) / det
    if slope < 0.0 or slope > v_max or nu <= 0:
        return 1.0
    if not (cyy > 0.0):  # R^2 = 0/0: F not finite, ImageFusion keeps the slope
        return slope
    den = cxx * cyy - cxy * cxy
    if not (den > 0.0):  # R^2 >= 1: F infinite or negative, slope kept
        return slope
    fval = nu * cxy * cxy / den
    if not (fval < np.inf):
        return slope
    if quality:
        q = f1_cdf(fval, nu)
        return slope * q + (1.0 - q)
    return 1.0 if fval < fcrit[nu] else slope


@njit(cache=True, nogil=True, error_model="numpy")
def _rows(ia, ib, f1, f2, ch, rp, validf, om, dtab, th, ltol, local, cntv, s1w, s2w, fcrit, w,
          r0, c0i, c1i, zhu, min_cand, eps_d, eps_t, lo, hi, chg_thr, tie, v_max, quality,
          truncate, out, ncand):
    nb = f1.shape[0]
    nc = c1i - c0i
    strict = zhu
    wt = f1.dtype  # working dtype of the first pass (the regression sums are float64)
    zero = f1[0, 0, 0] - f1[0, 0, 0]  # +0 in the working dtype (inputs are finite)
    acc_n = np.empty(nc, wt)
    acc_w = np.empty(nc, wt)
    acc = np.empty((_CH, nb, nc), wt)
    reg = np.empty((nb, _RQ, nc))
    t1r = np.empty((nb, nc if local else 1), wt)
    t2r = np.empty((nb, nc if local else 1), wt)
    m = np.empty(nc, wt)
    wv = np.empty(nc, wt)
    cs = np.empty(_RQ)
    have = np.zeros(nb, np.bool_)
    need = np.zeros(nb, np.bool_)
    merge = np.zeros(nb, np.bool_)
    needpx = np.zeros((nb, nc), np.bool_)
    for b in range(nb):
        merge[b] = not zhu  # imagefusion tests the coarse spread of every candidate set
        if not local:
            t1r[b, 0] = th[0, b]
            t2r[b, 0] = th[1, b]
    for ii in range(ia, ib):
        i = r0 + ii
        if local:
            for b in range(nb):
                for jj in range(nc):
                    t1r[b, jj] = ltol[0, b, ii, jj]
                    t2r[b, jj] = ltol[1, b, ii, jj]
        for b in range(nb):
            have[b] = merge[b]
        _sweep_row(i, f1, f2, ch, rp, validf, om, dtab, t1r, t2r, local, w, c0i, c1i, strict, eps_d,
                   zero, True, have, acc_n, acc_w, acc, reg, m, wv)
        # the centres that need the regression sums: zhu, enough coarse change between the
        # pairs; imagefusion, all (computed in the first pass above)
        fresh = False
        for b in range(nb):
            nneed = 0
            for jj in range(nc):
                n = acc_n[jj]
                ok = validf[i, c0i + jj] != 0.0 and n >= min_cand
                if zhu and ok:
                    change = abs(acc[2, b, jj]) / n
                    if abs(change - chg_thr) <= tie * chg_thr:
                        # (nearly) a tie: decide as Zhu's programs do, from the two means
                        # (exact sums in float64 for integer-valued data)
                        _centre_sums(i, c0i + jj, jj, b, f1, f2, rp, validf, om, dtab, t1r, t2r,
                                     local, w, strict, eps_d, 2, cs)
                        change = abs(cs[0] / n - cs[1] / n)
                    ok = change >= chg_thr
                needpx[b, jj] = ok
                nneed += ok
            # zhu: a second sweep for a band needed often in this row, merged into the first
            # pass of the next row of this thread; a few centres are summed one by one
            often = nneed * 8 > nc
            need[b] = zhu and often and not have[b]
            fresh |= need[b]
            if zhu:
                merge[b] = often
        if fresh:
            _sweep_row(i, f1, f2, ch, rp, validf, om, dtab, t1r, t2r, local, w, c0i, c1i, strict,
                       eps_d, zero, False, need, acc_n, acc_w, acc, reg, m, wv)
            for b in range(nb):
                have[b] |= need[b]
        for jj in range(nc):
            j = c0i + jj
            n = acc_n[jj]
            if validf[i, j] == 0.0:
                for b in range(nb):
                    out[b, ii, jj] = np.nan
                ncand[ii, jj] = 0.0
                continue
            ncand[ii, jj] = n
            sw = acc_w[jj]
            cv = cntv[ii, jj]
            for b in range(nb):
                y1c = f1[b, i, j]
                y2c = f2[b, i, j]
                d1 = s1w[b, ii, jj]
                d2 = s2w[b, ii, jj]
                if zhu:
                    if n < min_cand:
                        m1 = d1 / cv + eps_t
                        m2 = d2 / cv + eps_t
                        e1 = abs(m1)
                        e2 = abs(m2)
                    else:
                        e1 = abs(d1 / cv) + eps_t
                        e2 = abs(d2 / cv) + eps_t
                    tw1 = (1.0 / e1) / (1.0 / e1 + 1.0 / e2)
                    tw2 = (1.0 / e2) / (1.0 / e1 + 1.0 / e2)
                    if n < min_cand:
                        p = tw1 * (y1c + m1) + tw2 * (y2c + m2)
                        out[b, ii, jj] = np.trunc(p) if truncate else p
                        continue
                else:
                    g1 = 1.0 / (abs(d1) + eps_t)
                    g2 = 1.0 / (abs(d2) + eps_t)
                    tw1 = g1 / (g1 + g2)
                    tw2 = g2 / (g1 + g2)
                    if n < min_cand:
                        p = tw1 * y1c + tw2 * y2c
                        out[b, ii, jj] = np.trunc(p) if truncate else p
                        continue
                vconv = 1.0
                if needpx[b, jj]:
                    if have[b]:
                        for q in range(_RQ):
                            cs[q] = reg[b, q, jj]
                    else:
                        _centre_sums(i, j, jj, b, f1, f2, rp, validf, om, dtab, t1r, t2r,
                                     local, w, strict, eps_d, 0, cs)
                    n2 = 2.0 * n
                    if zhu:
                        vconv = _conversion(True, n2, cs[0], cs[1], cs[2], cs[3], cs[4], fcrit,
                                            v_max, quality)
                    else:
                        var = (cs[2] - cs[0] * cs[0] / n2) / (n2 - 1.0)
                        if math.sqrt(max(var, 0.0)) > chg_thr:
                            vconv = _conversion(False, n2, cs[0], cs[1], cs[2], cs[3], cs[4],
                                                fcrit, v_max, quality)
                p = tw1 * (y1c + vconv * acc[0, b, jj] / sw) + tw2 * (
                    y2c + vconv * acc[1, b, jj] / sw
                )
                if zhu:
                    outside = p <= lo or p >= hi
                else:
                    if truncate:
                        p = np.trunc(p)
                    outside = p < lo or p > hi
                if outside:
                    _centre_sums(i, j, jj, b, f1, f2, rp, validf, om, dtab, t1r, t2r, local, w,
                                 strict, eps_d, 1, cs)
                    p = tw1 * (y1c + cs[0] / sw) + tw2 * (y2c + cs[1] / sw)
                out[b, ii, jj] = np.trunc(p) if truncate else p


# ----------------------------------------------------------------------------------------------
# public block function
# ----------------------------------------------------------------------------------------------
class EstarfmDiagnostics(NamedTuple):
    """Prediction of :func:`estarfm_block` with the number of similar pixels."""

    prediction: np.ndarray
    """``(nb, H', W')`` float64 prediction of the block interior (NaN where invalid)."""
    n_candidates: np.ndarray
    """``(H', W')`` int32 number of similar pixels (candidates) of each interior pixel."""


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise InvalidParameterError(
            f"threads must be a positive integer or None (all available CPUs); got {threads!r}. "
            "Use threads=1 when the caller (e.g. dask) already runs blocks in parallel."
        )
    return int(threads)


def _halo_sides(halo: int | tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    h = (halo,) * 4 if isinstance(halo, int | np.integer) else tuple(halo)
    if len(h) != 4 or any(int(x) != x or x < 0 for x in h):
        raise InvalidParameterError(
            f"halo must be an int >= 0 or (top, bottom, left, right) ints >= 0; got {halo!r}."
        )
    return int(h[0]), int(h[1]), int(h[2]), int(h[3])


def _round_thresholds(th: np.ndarray, wt: np.dtype, *, strict: bool) -> np.ndarray:
    """Thresholds in ``wt`` that give, on values of ``wt``, the same tests as in float64:
    ``x < th`` keeps its meaning with ``th`` rounded up, ``x <= th`` with ``th`` rounded down."""
    low = th.astype(wt)
    toward = np.inf if strict else -np.inf
    off = (low < th) if strict else (low > th)
    return np.ascontiguousarray(np.where(off, np.nextafter(low, wt.type(toward)), low), dtype=wt)


def estarfm_block(
    f1: np.ndarray,
    c1: np.ndarray,
    f2: np.ndarray,
    c2: np.ndarray,
    c0: np.ndarray,
    /,
    *,
    thresholds: Any,
    half_window: int = 25,
    halo: int | tuple[int, int, int, int] = 0,
    variant: str = "zhu",
    num_class: float = 4.0,
    data_range: tuple[float, float] = (0.0, 10000.0),
    fill: float | None = -9999.0,
    change_min_fraction: float = 0.02,
    p_value: float = 0.05,
    v_max: float = 5.0,
    min_candidates: int = 6,
    eps_distance: float = 1e-7,
    eps_time: float = 1e-10,
    zhu_first_band_only: bool = False,
    use_local_tol: bool = False,
    use_quality_weighted_regression: bool = False,
    truncate: bool = False,
    dtype: str | np.dtype = "float64",
    threads: int | None = None,
    diagnostics: bool = False,
) -> np.ndarray | EstarfmDiagnostics:
    """Predict all bands of one target date with ESTARFM on a block of the fine grid.

    Parameters
    ----------
    f1, c1, f2, c2, c0 : numpy.ndarray
        Fine and coarse at the pair before (``f1, c1``) and after (``f2, c2``) and coarse at
        the target (``c0``), all on the fine grid, ``(nb, H, W)`` or ``(H, W)``. NaN (or
        ``fill``) marks unobserved pixels.
    thresholds : array_like
        ``(2, nb)`` similarity thresholds (``std * 2 / num_class`` of each whole fine image),
        computed globally (:func:`threshold_moments` / :func:`threshold_from_moments`).
        Ignored by "imagefusion" with ``use_local_tol``.
    half_window : int, default 25
        ``w``: windows are ``2w + 1`` pixels wide, clipped at the block edges where the block
        has no halo (the image edge under ``map_overlap(boundary="none")``).
    halo : int or (top, bottom, left, right), default 0
        Rows/columns of halo on each side; only the interior is predicted. Each must be 0
        (image edge) or at least ``half_window``.
    variant : {"zhu", "imagefusion"}
        The reference program to follow (specs/estarfm.md sections 1 and 2).
    num_class, data_range, fill, change_min_fraction, p_value, v_max, min_candidates, \
eps_distance, eps_time, zhu_first_band_only, use_local_tol, use_quality_weighted_regression
        As in :class:`xfusion.methods.estarfm.EstarfmParams`.
    truncate : bool, default False
        Truncate predictions toward zero (the reference programs' integer output); in
        "imagefusion" the data-range test then sees the truncated value, as in ImageFusion.
    dtype : {"float64", "float32"}, default "float64"
        Working dtype of the first pass over each window (similarity tests, weights, weighted
        coarse changes). "float32" is faster and keeps the thresholds' meaning on float32 data
        (they are rounded up for strict, down for inclusive tests), but its sums carry about
        1e-6 relative error; the regression sums, the temporal weights and the prediction are
        float64 either way.
    threads : int, optional
        Threads over bands of rows (default: the CPUs of this process).
    diagnostics : bool, default False
        Also return the number of similar pixels.

    Returns
    -------
    numpy.ndarray or EstarfmDiagnostics
        ``(nb, H', W')`` float64 prediction of the interior, NaN where the centre is invalid.
    """
    if variant not in VARIANTS:
        raise InvalidParameterError(f"Unknown variant={variant!r}. Choose one of {list(VARIANTS)!r}.")
    wt = np.dtype(dtype)
    if wt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidParameterError(f"dtype must be 'float64' or 'float32'; got {dtype!r}.")
    w = int(half_window)
    arrays = [_as_bands(a) for a in (f1, c1, f2, c2, c0)]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise InvalidParameterError(
            f"The five ESTARFM inputs must have one shape; got {[a.shape for a in arrays]!r}."
        )
    nb, ny, nx = shape
    top, bottom, left, right = _halo_sides(halo)
    r0, r1, c0i, c1i = top, ny - bottom, left, nx - right
    if r1 < r0 or c1i < c0i:
        raise InvalidParameterError(f"halo {halo!r} is larger than the block {shape[1:]!r}.")
    zhu = variant == "zhu"
    first = bool(zhu_first_band_only) and zhu
    valid = validity_mask(tuple(arrays), fill=fill, first_band_only=first)
    use_fill = fill is not None and not math.isnan(fill)
    subst = float(fill) if (first and use_fill) else 0.0
    # the inputs as they are (no float64 copies: each plane is converted as it is used), gaps
    # replaced (by the fill value when Zhu's first-band test lets them into the computation)
    F1, C1, F2, C2, C0 = (a if np.isfinite(a).all() else np.where(np.isfinite(a), a, subst)
                          for a in arrays)
    th = np.ascontiguousarray(np.broadcast_to(np.asarray(thresholds, np.float64), (2, nb)))
    dtab = np.ascontiguousarray(distance_table(w, variant), dtype=wt)
    om = np.empty((ny, nx), dtype=wt)
    r = spectral_correlation(F1, C1, F2, C2, valid, variant)
    np.subtract(1.0, r, out=om, casting="same_kind")
    del r
    interior = (r0, r1, c0i, c1i)
    vf64 = valid.astype(np.float64)
    cntv = _window_sums(vf64, w, interior)
    s1w = np.empty((nb, r1 - r0, c1i - c0i))
    s2w = np.empty((nb, r1 - r0, c1i - c0i))
    ch = np.empty((_CH, nb, ny, nx), dtype=wt)
    for b in range(nb):
        d01 = np.subtract(C0[b], C1[b], dtype=np.float64)
        s1w[b] = _window_sums(d01 * vf64, w, interior)
        ch[0, b] = d01
        d02 = np.subtract(C0[b], C2[b], dtype=np.float64)
        s2w[b] = _window_sums(d02 * vf64, w, interior)
        ch[1, b] = d02
        del d01, d02
        ch[2, b] = np.subtract(C1[b], C2[b], dtype=np.float64)
    use_ltol = bool(use_local_tol) and not zhu
    if use_ltol:
        ltol = np.empty((2, nb, r1 - r0, c1i - c0i))
        with np.errstate(invalid="ignore"):
            for k, img in enumerate((F1, F2)):
                for b in range(nb):
                    v = img[b].astype(np.float64)
                    s1 = _window_sums(vf64 * v, w, interior) / cntv
                    s2 = _window_sums(vf64 * v * v, w, interior) / cntv
                    ltol[k, b] = np.sqrt(s2 - s1 * s1) * (2.0 / float(num_class))
        ltol = ltol.astype(wt)
    else:
        ltol = np.zeros((2, nb, 1, 1), dtype=wt)
    del vf64, C0
    lo, hi = (float(x) for x in data_range)
    if zhu:
        chg_thr = float(change_min_fraction) * hi
    else:
        chg_thr = hi * float(change_min_fraction) * math.sqrt(2.0)
    fcrit = f_critical_table(float(p_value), max(1, 2 * (2 * w + 1) ** 2 - 2))
    out = np.empty((nb, r1 - r0, c1i - c0i), dtype=np.float64)
    ncand = np.zeros((r1 - r0, c1i - c0i), dtype=np.float32)
    vf = valid.astype(wt)
    F1, F2 = (np.ascontiguousarray(a, dtype=wt) for a in (F1, F2))
    rp = np.empty((2, nb, ny, nx), dtype=wt)
    rp[0] = C1
    rp[1] = C2
    del C1, C2
    if wt != np.float64:
        th = _round_thresholds(th, wt, strict=zhu)
    args = (F1, F2, ch, rp, vf, om, dtab, th, ltol, use_ltol, cntv, s1w, s2w, fcrit, w, r0, c0i,
            c1i, zhu, float(min_candidates), wt.type(eps_distance), float(eps_time), lo, hi,
            chg_thr, 1e-9 if wt == np.float64 else 2e-3, float(v_max),
            bool(use_quality_weighted_regression), bool(truncate), out, ncand)
    nrows = r1 - r0
    nthreads = _resolve_threads(threads)
    if nrows > 0 and out.shape[2] > 0:
        if nthreads <= 1 or nrows < 2:
            _rows(0, nrows, *args)
        else:
            nband = min(nrows, 4 * nthreads)
            cuts = np.linspace(0, nrows, nband + 1).astype(np.int64)
            with ThreadPoolExecutor(nthreads) as pool:
                jobs = [pool.submit(_rows, int(a), int(b), *args)
                        for a, b in itertools.pairwise(cuts)]
                for job in jobs:
                    job.result()
    if diagnostics:
        return EstarfmDiagnostics(out, ncand.astype(np.int32))
    return out


def estarfm_blockwise(
    f1: np.ndarray,
    c1: np.ndarray,
    f2: np.ndarray,
    c2: np.ndarray,
    c0: np.ndarray,
    /,
    *,
    block: int,
    num_class: float = 4.0,
    threshold_std: str = "sample",
    fill: float | None = -9999.0,
    diagnostics: bool = False,
    **kwargs: Any,
) -> np.ndarray | EstarfmDiagnostics:
    """Zhu's block-wise processing: every ``block`` x ``block`` tile, anchored at the array's
    origin, is predicted on its own, with its own thresholds and windows that stop at its
    edges (no halo). The array's origin must be a multiple of ``block`` in the image."""
    arrays = [_as_bands(a) for a in (f1, c1, f2, c2, c0)]
    nb, ny, nx = arrays[0].shape
    out = np.empty((nb, ny, nx), dtype=np.float64)
    cnt = np.zeros((ny, nx), dtype=np.int32)
    first = bool(kwargs.get("zhu_first_band_only", False))
    for y0 in range(0, ny, block):
        for x0 in range(0, nx, block):
            sl = (slice(None), slice(y0, y0 + block), slice(x0, x0 + block))
            parts = [a[sl] for a in arrays]
            th = thresholds_numpy(*parts, variant="zhu", fill=fill,
                                  num_class=num_class, threshold_std=threshold_std,
                                  first_band_only=first)
            res = estarfm_block(*parts, thresholds=th, halo=0, variant="zhu", fill=fill,
                                num_class=num_class, diagnostics=True, **kwargs)
            assert isinstance(res, EstarfmDiagnostics)
            out[sl] = res.prediction
            cnt[sl[1:]] = res.n_candidates
    if diagnostics:
        return EstarfmDiagnostics(out, cnt)
    return out
