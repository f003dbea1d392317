"""FSDAF step 13 on raw numpy blocks: the similar pixels of every target in its window and the
weighted mean of their change (numba), for :mod:`xfusion.methods.fsdaf`.

Same conventions as :mod:`xfusion.methods._fsdaf_kernel` (steps 1-12): ``(band, y, x)``
float64 arrays, NaN = unobserved, deterministic per block. The brute-force transcription lives
in ``tests/_ref_fsdaf.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit

from xfusion.methods._fsdaf_kernel import _resolve_threads, _run_rows

__all__ = ["PredictResult", "predict_block"]

_FMAX = float(np.finfo(np.float64).max)

#: Centres processed together by the similar-pixel kernel (one vectorised pass per offset).
_SEGMENT = 128
#: A centre first admits keys up to this factor times the n-th key of the centre above it.
_MARGIN = 2.0


# --------------------------------------------------------------------------------------------
# step 13: similar pixels and the final prediction (numba)


@njit(cache=True, nogil=True, inline="always")
def _before(k1, p1, k2, p2, dflat):  # type: ignore[no-untyped-def]
    # rank order of two candidates of one centre: key, then distance, then row-major position
    if k1 != k2:
        return k1 < k2
    d1 = dflat[p1]
    d2 = dflat[p2]
    if d1 != d2:
        return d1 < d2
    return p1 < p2


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _band_pass(fr, fc, den, sb, th, n, first):  # type: ignore[no-untyped-def]
    # one band, one window offset, n centres: S += |df| / den, or +inf when |df| >= th
    if first:
        for t in range(n):
            df = abs(fr[t] - fc[t])
            sb[t] = 0.0 + (df / den[t] if df < th else np.inf)
    else:
        for t in range(n):
            df = abs(fr[t] - fc[t])
            sb[t] = sb[t] + (df / den[t] if df < th else np.inf)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _key_pass(fr, fc, den, sb, th, clip, kmax, kb, flag, fac0, fac1, n, first):  # type: ignore[no-untyped-def]  # fmt: skip
    # the last band's pass fused with the rank keys; flags (one byte per centre) and counts
    # the keys that may enter their centre's list.
    # fac0 = 10 + d / w and fac1 = 10 + (d + 1e-5) / w (clipped windows), per offset.
    hits = 0
    if first:
        for t in range(n):
            df = abs(fr[t] - fc[t])
            s = 0.0 + (df / den[t] if df < th else np.inf)
            sb[t] = s
            key = (s + 1e-5) * (fac1 if clip[t] else fac0)
            kb[t] = key
            hit = key <= kmax[t]
            flag[t] = hit
            hits += hit
    else:
        for t in range(n):
            df = abs(fr[t] - fc[t])
            s = sb[t] + (df / den[t] if df < th else np.inf)
            sb[t] = s
            key = (s + 1e-5) * (fac1 if clip[t] else fac0)
            kb[t] = key
            hit = key <= kmax[t]
            flag[t] = hit
            hits += hit
    return hits


@njit(cache=True, nogil=True, inline="always")
def _insert(keys, pos, cnt, kmax, t, key, p, nsim, dflat):  # type: ignore[no-untyped-def]
    # offer candidate (key, p) to the sorted list of centre t (the nsim best so far)
    kr = keys[t]
    pr = pos[t]
    q = cnt[t]
    if q == nsim:
        last = kr[nsim - 1]
        if key > last or (key == last and not _before(key, p, last, pr[nsim - 1], dflat)):
            return
        z = nsim - 1
    else:
        z = q
        cnt[t] = q + 1
    while z > 0:
        kz = kr[z - 1]
        if key < kz or (key == kz and _before(key, p, kz, pr[z - 1], dflat)):
            kr[z] = kz
            pr[z] = pr[z - 1]
            z -= 1
        else:
            break
    kr[z] = key
    pr[z] = p
    if q >= nsim - 1:
        kmax[t] = min(kmax[t], kr[nsim - 1])


@njit(cache=True, nogil=True, inline="always")
def _sort_list(keys, pos, t, q, dflat):  # type: ignore[no-untyped-def]
    for a in range(1, q):
        ka = keys[t, a]
        pa = pos[t, a]
        z = a
        while z > 0 and _before(ka, pa, keys[t, z - 1], pos[t, z - 1], dflat):
            keys[t, z] = keys[t, z - 1]
            pos[t, z] = pos[t, z - 1]
            z -= 1
        keys[t, z] = ka
        pos[t, z] = pa


@njit(cache=True, nogil=True, error_model="numpy")
def _scan_centre(f, i, j, t, fc, den, th, extra, w, nsim, keys, pos, cnt, kmax, dflat):  # type: ignore[no-untyped-def]  # fmt: skip
    # every candidate of one centre, one at a time (the same arithmetic as the passes)
    nb, h, wd = f.shape
    side = 2 * w + 1
    cnt[t] = 0
    kmax[t] = _FMAX
    for r in range(max(0, i - w), min(h - 1, i + w) + 1):
        for c in range(max(0, j - w), min(wd - 1, j + w) + 1):
            s = 0.0
            for b in range(nb):
                df = abs(f[b, r, c] - fc[b, t])
                s = s + (df / den[b, t] if df < th[b] else np.inf)
            p = (r - i + w) * side + (c - j + w)
            key = (s + 1e-5) * (10.0 + (dflat[p] + extra[t]) / w)
            if key <= kmax[t]:
                _insert(keys, pos, cnt, kmax, t, key, p, nsim, dflat)


@njit(cache=True, nogil=True, error_model="numpy")
def _predict_rows(f, d21, c1, c2, target, th, odi, odj, od, dflat, w, nsim, lo, hi, r0, c0,
                  nri, nci, seg, margin, out, ncand, i0, i1):  # type: ignore[no-untyped-def]  # fmt: skip
    # Rows i0..i1 of the interior. Centres are taken in segments of `seg` pixels of a row;
    # for each window offset (nearest first) the candidate of centre t is pixel t + dj of
    # one row, so the band and key passes are contiguous, vectorised loops; the few keys
    # that can enter a centre's sorted list of the nsim best are then inserted one by one.
    # A centre only admits keys <= margin * (the nsim-th key of the centre above it): when
    # its list still fills up, that bound was above its true nsim-th key and the list is
    # exact; otherwise the centre is scanned again without a bound.
    nb, h, wd = f.shape
    side = 2 * w + 1
    noff = odi.size
    keys = np.empty((seg, nsim))
    pos = np.empty((seg, nsim), np.int64)
    cnt = np.zeros(seg, np.int64)
    kmax = np.empty(seg)
    guess = np.zeros(seg, np.bool_)
    fc = np.empty((nb, seg))
    den = np.empty((nb, seg))
    extra = np.empty(seg)
    clipped = np.zeros(seg, np.bool_)
    flag = np.zeros(((seg + 7) // 8) * 8, np.uint8)
    flag64 = flag.view(np.uint64)
    sb = np.empty(seg)
    kb = np.empty(seg)
    wts = np.empty(nsim)
    above = np.full(nci, _FMAX)  # nsim-th key of the centres in the row above
    below = np.full(nci, _FMAX)  # ... of this row (the next row's `above`)
    for ii in range(i0, i1):
        i = r0 + ii
        above, below = below, above
        rowclip = (i - w < 0) or (i + w > h - 1)
        for s0 in range(0, nci, seg):
            n = min(seg, nci - s0)
            j0 = c0 + s0
            for t in range(n):
                j = j0 + t
                ok = target[i, j]
                for b in range(nb):
                    v = f[b, i, j]
                    fc[b, t] = v
                    den[b, t] = v + 1e-8
                    if not (abs(v) < np.inf):
                        ok = False
                cnt[t] = 0
                g = above[s0 + t]
                if s0 + t > 0:
                    g = max(g, above[s0 + t - 1])
                if s0 + t + 1 < nci:
                    g = max(g, above[s0 + t + 1])
                g = g * margin
                guess[t] = ok and g < _FMAX
                # failed candidates have key +inf: never admitted
                kmax[t] = min(_FMAX, g) if ok else -np.inf
                clip = rowclip or (j - w < 0) or (j + w > wd - 1)
                clipped[t] = clip
                extra[t] = 1e-5 if clip else 0.0
            for o in range(noff):
                di = odi[o]
                dj = odj[o]
                r = i + di
                if r < 0 or r >= h:
                    continue
                tlo = max(0, -dj - j0)
                thi = min(n, wd - dj - j0)
                m = thi - tlo
                if m <= 0:
                    continue
                x0 = j0 + dj + tlo
                sbv = sb[tlo:thi]
                flag[:tlo] = 0
                flag[thi:] = 0
                for b in range(nb - 1):
                    _band_pass(f[b, r, x0 : x0 + m], fc[b, tlo:thi], den[b, tlo:thi], sbv,
                               th[b], m, b == 0)  # fmt: skip
                b = nb - 1
                d = od[o]
                if _key_pass(f[b, r, x0 : x0 + m], fc[b, tlo:thi], den[b, tlo:thi], sbv, th[b],
                             clipped[tlo:thi], kmax[tlo:thi], kb[tlo:thi], flag[tlo:thi],
                             10.0 + (d + 0.0) / w, 10.0 + (d + 1e-5) / w, m,
                             nb == 1) == 0:  # fmt: skip
                    continue
                p = (di + w) * side + (dj + w)
                # the flagged centres, eight flag bytes at a time (most words are zero)
                for u in range(tlo >> 3, ((thi + 7) >> 3)):
                    if flag64[u] == 0:
                        continue
                    for t in range(max(u << 3, tlo), min((u << 3) + 8, thi)):
                        if flag[t]:
                            _insert(keys, pos, cnt, kmax, t, kb[t], p, nsim, dflat)
            for t in range(n):
                jj = s0 + t
                j = j0 + t
                if guess[t] and cnt[t] < nsim:  # the bound was too low: scan again
                    _scan_centre(f, i, j, t, fc, den, th, extra, w, nsim, keys, pos, cnt, kmax,
                                 dflat)  # fmt: skip
                ok = True
                for b in range(nb):
                    if not (abs(fc[b, t]) < np.inf):
                        ok = False
                if not ok:
                    for b in range(nb):
                        out[b, ii, jj] = np.nan
                    ncand[ii, jj] = 0
                    below[jj] = _FMAX
                    continue
                if not target[i, j]:
                    for b in range(nb):
                        out[b, ii, jj] = fc[b, t]
                    ncand[ii, jj] = 0
                    below[jj] = _FMAX
                    continue
                q = cnt[t]
                ncand[ii, jj] = q
                below[jj] = keys[t, nsim - 1] if q == nsim else _FMAX
                if q == 0:  # xfusion guard (IDL fails on an empty index): F1 + own change
                    for b in range(nb):
                        out[b, ii, jj] = fc[b, t] + d21[b, i, j]
                else:
                    if q < nsim:  # fewer candidates than slots: sort them now
                        _sort_list(keys, pos, t, q, dflat)
                    tot = 0.0
                    for a in range(q):
                        pa = pos[t, a]
                        rr = i - w + pa // side
                        cc = j - w + pa % side
                        s = 0.0  # S again, as in the band passes
                        for b in range(nb):
                            s = s + abs(f[b, rr, cc] - fc[b, t]) / den[b, t]
                        wts[a] = 1.0 / ((1.0 + (dflat[pa] + extra[t]) / w) * (s + 1.0))
                        tot += wts[a]
                    for b in range(nb):
                        acc = 0.0
                        for a in range(q):
                            pa = pos[t, a]
                            rr = i - w + pa // side
                            cc = j - w + pa % side
                            acc += (wts[a] / tot) * d21[b, rr, cc]
                        out[b, ii, jj] = fc[b, t] + acc
                for b in range(nb):
                    v = out[b, ii, jj]
                    if v < lo:
                        alt = max(lo, fc[b, t] + (c2[b, i, j] - c1[b, i, j]))
                        out[b, ii, jj] = min(hi, alt)
                    elif v > hi:
                        alt = min(hi, fc[b, t] + (c2[b, i, j] - c1[b, i, j]))
                        out[b, ii, jj] = max(lo, alt)


def _window_offsets(w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window offsets (di, dj) and their distances, nearest first (the order only affects
    speed: the nearest pixels tend to be the most similar, so the lists fill early)."""
    side = 2 * w + 1
    di, dj = np.meshgrid(np.arange(-w, w + 1), np.arange(-w, w + 1), indexing="ij")
    d = np.sqrt(di.astype(np.float64) ** 2 + dj.astype(np.float64) ** 2)
    order = np.lexsort((((di + w) * side + (dj + w)).ravel(), d.ravel()))
    return (np.ascontiguousarray(di.ravel()[order], np.int64),
            np.ascontiguousarray(dj.ravel()[order], np.int64),
            np.ascontiguousarray(d.ravel()[order]))  # fmt: skip


class PredictResult(NamedTuple):
    """Output of :func:`predict_block`."""

    prediction: np.ndarray
    """``(bands, h, w)`` float64 prediction of the block interior."""
    n_similar: np.ndarray
    """``(h, w)`` int32 number of similar pixels used (0: background or the N = 0 guard)."""


def predict_block(
    fine: np.ndarray,
    delta21: np.ndarray,
    coarse1: np.ndarray,
    coarse2: np.ndarray,
    target: np.ndarray,
    *,
    thresholds: Sequence[float] | np.ndarray,
    half_window: int,
    n_similar: int = 20,
    data_range: tuple[float, float] = (0.0, 10000.0),
    halo: Sequence[int] = (0, 0, 0, 0),
    threads: int | None = None,
) -> PredictResult:
    """Step 13 of FSDAF on one block of the fine grid (with halos).

    Parameters
    ----------
    fine : (bands, H, W) the ORIGINAL F1 (NaN = background).
    delta21 : (bands, H, W) change image of steps 3-12.
    coarse1, coarse2 : (bands, H, W) C1 and C2 on the fine grid (only the interior is read).
    target : (H, W) bool, pixels to predict (non-background class); other finite pixels keep F1.
    thresholds : (bands,) similarity thresholds ``2 std(F1_b) / K`` (global).
    halo : (top, bottom, left, right): rows/columns of halo (each 0 at an image edge or at
        least ``half_window``); windows are clipped where a side has no halo.

    Notes
    -----
    Candidates: pixels of the window with ``|F1_b(x) - F1_b(c)| < th_b`` for every band.
    Rank key ``(S + 1e-5) (10 + d / w)`` with ``S = sum_b |F1_b(x) - F1_b(c)| / (F1_b(c) +
    1e-8)`` and ``d`` the distance in pixels (+1e-5 when the window is clipped); the
    ``n_similar`` smallest keys are kept (ties: smaller distance, then row-major position),
    weighted by ``1 / ((1 + d / w) (S + 1))`` (normalised). ``F2 = F1(c) + sum W delta21(x)``
    then the IDL range fix. With no candidate (a constant image) ``F2 = F1(c) + delta21(c)``.
    """
    f = np.ascontiguousarray(fine, np.float64)
    d = np.ascontiguousarray(delta21, np.float64)
    a1 = np.ascontiguousarray(coarse1, np.float64)
    a2 = np.ascontiguousarray(coarse2, np.float64)
    tg = np.ascontiguousarray(target, np.bool_)
    nb, h, wd = f.shape
    top, bottom, left, right = (int(x) for x in halo)
    nri, nci = h - top - bottom, wd - left - right
    th = np.ascontiguousarray(np.broadcast_to(np.asarray(thresholds, np.float64), (nb,)))
    w = int(half_window)
    odi, odj, od = _window_offsets(w)
    side = 2 * w + 1
    dflat = np.sqrt(((np.arange(side * side) // side - w) ** 2
                     + (np.arange(side * side) % side - w) ** 2).astype(np.float64))
    out = np.empty((nb, max(nri, 0), max(nci, 0)))
    ncand = np.zeros((max(nri, 0), max(nci, 0)), np.int32)
    if out.size == 0:
        return PredictResult(out, ncand)
    _run_rows(_predict_rows, nri, _resolve_threads(threads), f, d, a1, a2, tg, th, odi, odj, od,
              dflat, w, int(n_similar), float(data_range[0]), float(data_range[1]), top, left, nri,
              nci, _SEGMENT, _MARGIN, out, ncand)  # fmt: skip
    return PredictResult(out, ncand)
