"""ESTARFM's tables, pointwise terms and statistics (used by :mod:`._estarfm_kernel`).

F critical values and the F(1, nu) CDF, the distance table, the validity mask, the spectral
correlation of each pixel, the exact moments behind the global similarity thresholds
(Shewchuk expansions: the same result whatever the blocks) and the window sums over the valid
pixels (separable, in a fixed order, so a pixel's sums do not depend on its block).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError

__all__ = [
    "MOMENT_SIZE",
    "distance_table",
    "f1_cdf",
    "f_critical_table",
    "spectral_correlation",
    "threshold_from_moments",
    "threshold_moments",
    "thresholds_numpy",
    "validity_mask",
]


def _as_bands(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InvalidParameterError(
            f"ESTARFM inputs must be (nb, H, W) or (H, W) arrays; got shape {a.shape!r}."
        )
    return a



# ----------------------------------------------------------------------------------------------
# small tables and pointwise terms
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def f_critical_table(p_value: float, nu_max: int) -> np.ndarray:
    """Critical values ``F_(1 - p_value)(1, nu)`` for ``nu = 0 ... nu_max`` (entry 0 is +inf).

    A regression of ``N`` points is significant at level ``p_value`` when its F statistic
    (``N - 2`` degrees of freedom) is ``>= table[N - 2]``: that is ``p <= p_value`` (Zhu) and
    ``Fcdf >= 1 - p_value`` (ImageFusion), both inclusive.
    """
    from scipy import stats

    nu = np.arange(1, int(nu_max) + 1, dtype=np.float64)
    table = np.empty(int(nu_max) + 1, dtype=np.float64)
    table[0] = np.inf
    table[1:] = stats.f.isf(float(p_value), 1.0, nu)
    table.setflags(write=False)
    return table


@njit(cache=True, nogil=True, error_model="numpy")
def f1_cdf(f: float, nu: int) -> float:
    """CDF of the F(1, nu) distribution at ``f`` (exact finite series, nu >= 1).

    ``F(1, nu)`` is the square of a Student t with ``nu`` degrees of freedom, so
    ``Fcdf(f) = P(|T| <= sqrt(f))`` (Abramowitz & Stegun 26.7.3 for odd, 26.7.4 for even nu).
    """
    if not (f > 0.0):
        return 0.0 if f <= 0.0 else math.nan
    if f == math.inf:
        return 1.0
    theta = math.atan(math.sqrt(f / nu))
    s = math.sin(theta)
    c = math.cos(theta)
    c2 = c * c
    if nu % 2 == 1:
        total = 0.0
        if nu > 1:
            term = c
            total = term
            for k in range(1, (nu - 3) // 2 + 1):
                term *= c2 * (2.0 * k) / (2.0 * k + 1.0)
                total += term
                if term < 1e-18 * total:
                    break
        return min(1.0, 2.0 / math.pi * (theta + s * total))
    term = 1.0
    total = 1.0
    for k in range(1, (nu - 2) // 2 + 1):
        term *= c2 * (2.0 * k - 1.0) / (2.0 * k)
        total += term
        if term < 1e-18 * total:
            break
    return min(1.0, s * total)


def distance_table(half_window: int, variant: str) -> np.ndarray:
    """``D`` over the window offsets, shape ``(2w + 1, 2w + 1)``.

    "zhu": ``1 + d / w``; "imagefusion": ``1 + 2 d / (2w + 1)`` (``d`` the Euclidean pixel
    distance), written in the reference programs' operation order.
    """
    w = int(half_window)
    off = np.arange(-w, w + 1, dtype=np.float64)
    d = np.sqrt(off[:, None] ** 2 + off[None, :] ** 2)
    if variant == "zhu":
        return 1.0 + d / float(w)
    return d * 2.0 / (2 * w + 1) + 1.0


def validity_mask(
    arrays: tuple[np.ndarray, ...], *, fill: float | None, first_band_only: bool = False
) -> np.ndarray:
    """``(H, W)`` bool: the pixel is finite (and not ``fill``) in all five inputs.

    Every band is tested, or band 0 only with ``first_band_only`` (Zhu's programs).
    """
    ok = np.ones(arrays[0].shape[1:], dtype=bool)
    use_fill = fill is not None and not math.isnan(fill)
    for a in arrays:
        x = a[:1] if first_band_only else a
        bad = ~np.isfinite(x)
        if use_fill:
            bad |= x == fill
        ok &= ~bad.any(axis=0)
    return ok


@njit(cache=True, nogil=True, error_model="numpy")
def _correlation_rows(f1, c1, f2, c2, valid, zhu, out):
    nb, ny, nx = f1.shape
    m = 2 * nb
    hv = np.empty(m)
    lv = np.empty(m)
    for i in range(ny):
        for j in range(nx):
            if not valid[i, j]:
                out[i, j] = 0.0
                continue
            if zhu and nb == 1:
                a1 = np.float64(f1[0, i, j])
                b1 = np.float64(c1[0, i, j])
                a2 = np.float64(f2[0, i, j])
                b2 = np.float64(c2[0, i, j])
                r = 1.0 - 0.5 * (abs((a1 - b1) / (a1 + b1)) + abs((a2 - b2) / (a2 + b2)))
                out[i, j] = 0.5 if math.isnan(r) else r
                continue
            for b in range(nb):
                hv[b] = f1[b, i, j]
                hv[nb + b] = f2[b, i, j]
                lv[b] = c1[b, i, j]
                lv[nb + b] = c2[b, i, j]
            if not zhu:
                same_h = True
                same_l = True
                for q in range(1, m):
                    same_h &= hv[q] == hv[0]
                    same_l &= lv[q] == lv[0]
                if same_h or same_l:
                    out[i, j] = 1.0
                    continue
            mh = 0.0
            ml = 0.0
            for q in range(m):
                mh += hv[q]
                ml += lv[q]
            mh /= m
            ml /= m
            sxy = 0.0
            sxx = 0.0
            syy = 0.0
            for q in range(m):
                dh = hv[q] - mh
                dl = lv[q] - ml
                sxy += dh * dl
                sxx += dh * dh
                syy += dl * dl
            r = sxy / math.sqrt(sxx * syy)
            out[i, j] = 0.5 if (zhu and math.isnan(r)) else r


def spectral_correlation(
    f1: np.ndarray, c1: np.ndarray, f2: np.ndarray, c2: np.ndarray, valid: np.ndarray, variant: str
) -> np.ndarray:
    """Spectral correlation ``R`` of every pixel, ``(H, W)`` float64 (0 where invalid).

    "zhu": one band ``1 - (|(F1 - C1)/(F1 + C1)| + |(F2 - C2)/(F2 + C2)|) / 2``, several bands
    the Pearson r of ``(F1, F2)`` and ``(C1, C2)`` over all bands; NaN becomes 0.5.
    "imagefusion": the Pearson r (1 when all fine or all coarse values are equal).
    """
    out = np.empty(f1.shape[1:], dtype=np.float64)
    with np.errstate(all="ignore"):
        _correlation_rows(f1, c1, f2, c2, valid, variant == "zhu", out)
    return out


# ----------------------------------------------------------------------------------------------
# global similarity thresholds: exact moments, so they do not depend on the chunking
# ----------------------------------------------------------------------------------------------
NPART = 64  # room for the partials of an exact float64 sum (at most ~40 for finite doubles)
#: per (image, band): [pixels counted, valid pixels, valid in data_range, min, max, overflow,
#: partials of sum(v) (NPART), partials of sum(v*v) (NPART)]
MOMENT_SIZE = 6 + 2 * NPART


@njit(cache=True, nogil=True, error_model="numpy")
def _grow(parts, q, nparts, x):
    # Shewchuk's grow-expansion (Python's msum): add x to the non-overlapping partials of row q
    i = 0
    for j in range(nparts[q]):
        y = parts[q, j]
        if abs(x) < abs(y):
            x, y = y, x
        h = x + y
        r = y - (h - x)
        if r != 0.0:
            parts[q, i] = r
            i += 1
        x = h
    parts[q, i] = x
    nparts[q] = i + 1


@njit(cache=True, nogil=True, error_model="numpy")
def _moments_impl(vals, use, subst, use_subst, lo, hi, out):
    parts = out[6:].reshape(2, NPART)
    nparts = np.zeros(2, np.int64)
    count = 0
    nvalid = 0
    ninr = 0
    vmin = np.inf
    vmax = -np.inf
    ny, nx = vals.shape
    for i in range(ny):
        for j in range(nx):
            if use[i, j]:
                v = np.float64(vals[i, j])
                nvalid += 1
                if v >= lo and v <= hi:
                    ninr += 1
                vmin = min(vmin, v)
                vmax = max(vmax, v)
            elif use_subst:
                v = subst
            else:
                continue
            sq = v * v
            if not (abs(sq) < np.inf):
                out[5] = 1.0
                continue
            count += 1
            _grow(parts, 0, nparts, v)
            _grow(parts, 1, nparts, sq)
    out[0] = count
    out[1] = nvalid
    out[2] = ninr
    out[3] = vmin
    out[4] = vmax
    for q in range(2):  # slots past the final number of partials hold stale values
        parts[q, nparts[q] :] = 0.0


def threshold_moments(
    f1: np.ndarray,
    c1: np.ndarray,
    f2: np.ndarray,
    c2: np.ndarray,
    c0: np.ndarray,
    /,
    *,
    variant: str,
    fill: float | None,
    data_range: tuple[float, float],
    first_band_only: bool = False,
) -> np.ndarray:
    """Exact moments of the two fine images of one target, shape ``(2, nb, MOMENT_SIZE)``.

    Which pixels count (spec sections 1.3 and 2): "zhu" every pixel of ``F_k``, a pixel that
    is invalid in any band of ``F_k`` counted as the value ``fill`` (left out when ``fill`` is
    None); "imagefusion" the pixels valid in all five inputs. The sums are Shewchuk
    expansions, exact whatever the block, so the combined statistic (:func:`threshold_from_moments`)
    does not depend on how the image is cut. Also recorded: the number of valid pixels of
    ``F_k`` and how many lie inside ``data_range`` (inclusive), with their min and max.
    """
    arrays = [_as_bands(a) for a in (f1, c1, f2, c2, c0)]
    nb = arrays[0].shape[0]
    out = np.zeros((2, nb, MOMENT_SIZE), dtype=np.float64)
    use_fill = fill is not None and not math.isnan(fill)
    valid5 = None
    if variant != "zhu":
        valid5 = validity_mask(tuple(arrays), fill=fill, first_band_only=False)
    lo, hi = (float(x) for x in data_range)
    for k, img in enumerate((arrays[0], arrays[2])):
        ok = np.isfinite(img)
        if use_fill:
            ok &= img != fill
        own = ok.all(axis=0)
        use = own if valid5 is None else valid5
        subst = float(fill) if (variant == "zhu" and use_fill) else 0.0
        for b in range(nb):
            _moments_impl(np.ascontiguousarray(img[b]), use, subst,
                          variant == "zhu" and use_fill, lo, hi, out[k, b])
    return out


def threshold_from_moments(
    moments: np.ndarray, *, num_class: float, threshold_std: str, drop_fill: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Combine moments ``(2, nb, ..., MOMENT_SIZE)`` (blocks along the middle axes).

    Returns ``(thresholds (2, nb), summary (2, nb, 5))``: ``std * 2 / num_class`` with the
    sample (n - 1) or population (n) standard deviation from the exact sums (0 when
    undefined), and per image and band ``[valid pixels, valid pixels inside data_range, min,
    max, overflow flag]``. ``drop_fill``: the ``fill`` the moments substituted for invalid
    pixels ("zhu"), taken out again, so the thresholds are those of ``fill=None``.
    """
    from fractions import Fraction

    two, nb = moments.shape[:2]
    flat = moments.reshape(two, nb, -1, MOMENT_SIZE)
    thr = np.zeros((two, nb), dtype=np.float64)
    summary = np.zeros((two, nb, 5), dtype=np.float64)
    ddof = 1 if threshold_std == "sample" else 0
    for k in range(two):
        for b in range(nb):
            p = flat[k, b]
            n = int(p[:, 0].sum())
            summary[k, b] = (p[:, 1].sum(), p[:, 2].sum(), p[:, 3].min(), p[:, 4].max(),
                             float(p[:, 5].any()))
            if n - ddof <= 0 or p[:, 5].any():
                continue
            s = sum((Fraction(x) for x in p[:, 6 : 6 + NPART].ravel() if x), Fraction(0))
            ss = sum((Fraction(x) for x in p[:, 6 + NPART :].ravel() if x), Fraction(0))
            if drop_fill is not None:
                gaps = n - int(p[:, 1].sum())
                s -= gaps * Fraction(drop_fill)
                ss -= gaps * Fraction(drop_fill) ** 2
                n -= gaps
                if n - ddof <= 0:
                    continue
            var = max((ss - s * s / n) / (n - ddof), Fraction(0))
            thr[k, b] = math.sqrt(float(var)) * 2.0 / float(num_class)
    return thr, summary


def thresholds_numpy(
    f1: np.ndarray, c1: np.ndarray, f2: np.ndarray, c2: np.ndarray, c0: np.ndarray, /, *,
    variant: str, fill: float | None, num_class: float, threshold_std: str,
    first_band_only: bool = False,
) -> np.ndarray:
    """Similarity thresholds ``(2, nb)`` of whole in-memory images (see :func:`threshold_moments`)."""
    mom = threshold_moments(f1, c1, f2, c2, c0, variant=variant, fill=fill,
                            data_range=(-np.inf, np.inf), first_band_only=first_band_only)
    return threshold_from_moments(mom, num_class=num_class, threshold_std=threshold_std)[0]


# ----------------------------------------------------------------------------------------------
# window sums over the valid pixels (separable, fixed order)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _box_sums(q, w, r0, r1, c0, c1, out):
    # out[i - r0, j - c0] = sum of q over rows i-w..i+w, cols j-w..j+w clipped to the array;
    # column sums first (each over its rows in order), then row sums of those (in order)
    ny, nx = q.shape
    col = np.empty(nx)
    for i in range(r0, r1):
        ra = max(0, i - w)
        rb = min(ny, i + w + 1)
        for j in range(nx):
            col[j] = 0.0
        for r in range(ra, rb):
            qr = q[r]
            for j in range(nx):
                col[j] += qr[j]
        for j in range(c0, c1):
            ca = max(0, j - w)
            cb = min(nx, j + w + 1)
            s = 0.0
            for c in range(ca, cb):
                s += col[c]
            out[i - r0, j - c0] = s


def _window_sums(q: np.ndarray, w: int, interior: tuple[int, int, int, int]) -> np.ndarray:
    r0, r1, c0, c1 = interior
    out = np.empty((r1 - r0, c1 - c0), dtype=np.float64)
    _box_sums(np.ascontiguousarray(q, dtype=np.float64), w, r0, r1, c0, c1, out)
    return out


