"""Brute-force ESTARFM: plain Python loops transcribing specs/estarfm.md sections 1 and 2 (float64).

Slow on purpose (one pixel, one candidate, one band at a time, no precomputed tables, no box
sums, the F test through scipy's F distribution instead of a table of critical values): it is
the yardstick of the numba kernel in ``tests/test_estarfm_kernel.py`` on small random images.

Conventions (xfusion, spec section 3): a pixel is valid when all five inputs are finite and not
equal to ``fill`` in every band (``zhu_first_band_only``: band 0 only); invalid centres give NaN.
The similarity thresholds are the global statistics of the spec unless given.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _bad(a, fill):
    bad = ~np.isfinite(a)
    if fill is not None:
        bad |= a == fill
    return bad


def validity(f1, c1, f2, c2, c0, *, fill, first_band_only=False):
    """(H, W) bool: the pixels usable as centre and candidate."""
    ok = np.ones(f1.shape[1:], dtype=bool)
    for a in (f1, c1, f2, c2, c0):
        bad = _bad(a, fill)
        ok &= ~(bad[0] if first_band_only else bad.any(axis=0))
    return ok


def thresholds(f1, f2, *, valid, variant, num_class, threshold_std, fill):
    """(2, nb) similarity thresholds: std of each whole fine image * 2 / num_class.

    "zhu": every pixel of the image, an invalid one (any band of that image) counted as the
    value ``fill`` (Zhu's programs include the background value); without ``fill`` invalid
    pixels are left out. "imagefusion": the pixels valid in all five inputs.
    """
    nb = f1.shape[0]
    out = np.zeros((2, nb))
    ddof = 1 if threshold_std == "sample" else 0
    for k, img in enumerate((f1, f2)):
        img_bad = _bad(img, fill).any(axis=0)
        for b in range(nb):
            vals = []
            for i in range(img.shape[1]):
                for j in range(img.shape[2]):
                    if variant == "zhu":
                        if not img_bad[i, j]:
                            vals.append(float(img[b, i, j]))
                        elif fill is not None:
                            vals.append(float(fill))
                    elif valid[i, j]:
                        vals.append(float(img[b, i, j]))
            n = len(vals)
            if n - ddof <= 0:
                continue
            mean = math.fsum(vals) / n
            var = math.fsum((v - mean) ** 2 for v in vals) / (n - ddof)
            out[k, b] = math.sqrt(var) * 2.0 / num_class
    return out


def _pearson(x, y):
    n = len(x)
    mx = sum(x) / n
    my = sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(sxy) / np.sqrt(np.float64(sxx) * np.float64(syy)))


def correlation(f1, c1, f2, c2, i, j, variant):
    """Spectral correlation R of pixel (i, j) (sections 1.4 and 2)."""
    nb = f1.shape[0]
    hi = [float(f1[b, i, j]) for b in range(nb)] + [float(f2[b, i, j]) for b in range(nb)]
    lo = [float(c1[b, i, j]) for b in range(nb)] + [float(c2[b, i, j]) for b in range(nb)]
    if variant == "zhu":
        with np.errstate(invalid="ignore", divide="ignore"):
            if nb == 1:
                r = 1.0 - 0.5 * (
                    abs(np.float64(hi[0] - lo[0]) / np.float64(hi[0] + lo[0]))
                    + abs(np.float64(hi[1] - lo[1]) / np.float64(hi[1] + lo[1]))
                )
            else:
                r = _pearson(hi, lo)
        return 0.5 if math.isnan(r) else float(r)
    if all(v == hi[0] for v in hi) or all(v == lo[0] for v in lo):
        return 1.0
    return _pearson(hi, lo)


def _regression(xs, ys):
    """Centred OLS sums of y on x: (N, Sxx, Sxy, Syy)."""
    n = len(xs)
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = math.fsum((y - my) ** 2 for y in ys)
    return n, sxx, sxy, syy


def _f_statistic(n, sxx, sxy, syy):
    """F of the regression, (n - 2) R^2 / (1 - R^2); NaN when y is constant."""
    if syy == 0:
        return math.nan
    denom = sxx * syy - sxy * sxy
    if denom <= 0:
        return math.inf
    return (n - 2) * sxy * sxy / denom


def conversion_zhu(xs, ys, *, p_value, v_max):
    n, sxx, sxy, syy = _regression(xs, ys)
    if sxx == 0:
        return 1.0
    slope = sxy / sxx
    f = _f_statistic(n, sxx, sxy, syy)
    p = math.nan if math.isnan(f) else 1.0 - stats.f.cdf(f, 1, n - 2)
    return slope if (p <= p_value and 0 < slope <= v_max) else 1.0


def conversion_imagefusion(xs, ys, *, p_value, v_max, quality):
    n, sxx, sxy, syy = _regression(xs, ys)
    if abs(n * sxx) < 1e-14:
        return 1.0
    slope = sxy / sxx
    if slope < 0 or slope > v_max or n - 2 <= 0:
        return 1.0
    f = _f_statistic(n, sxx, sxy, syy)
    if f < 0 or not math.isfinite(f):
        return slope
    q = stats.f.cdf(f, 1, n - 2)
    if quality:
        return slope * q + (1 - q)
    return 1.0 if q < 1 - p_value else slope


def estarfm_ref(
    f1, c1, f2, c2, c0, *, variant="zhu", half_window=25, num_class=4.0,
    data_range=(0.0, 10000.0), fill=-9999.0, change_min_fraction=0.02, p_value=0.05,
    v_max=5.0, min_candidates=6, eps_distance=1e-7, eps_time=1e-10, threshold_std="sample",
    zhu_first_band_only=False, use_local_tol=False, use_quality_weighted_regression=False,
    truncate=False, thresholds_=None, events=None,
):  # fmt: skip
    """Predict every pixel; returns ``(prediction (nb, H, W) float64, n_candidates (H, W))``.

    ``events``, a dict, counts the branches taken (for tests that must exercise them all).
    """
    events = {} if events is None else events

    def note(name):
        events[name] = events.get(name, 0) + 1

    arrs = [np.asarray(a, dtype=np.float64) for a in (f1, c1, f2, c2, c0)]
    arrs = [a if a.ndim == 3 else a[None] for a in arrs]
    first = zhu_first_band_only and variant == "zhu"
    valid = validity(*arrs, fill=fill, first_band_only=first)
    if first and fill is not None:  # Zhu computes with the background value itself
        arrs = [np.where(np.isfinite(a), a, fill) for a in arrs]
    f1, c1, f2, c2, c0 = arrs
    nb, ny, nx = f1.shape
    w = half_window
    lo, hi = data_range
    if thresholds_ is None:
        thresholds_ = thresholds(f1, f2, valid=valid, variant=variant, num_class=num_class,
                                 threshold_std=threshold_std, fill=fill)  # fmt: skip
    th = np.asarray(thresholds_, dtype=np.float64).reshape(2, nb)
    pred = np.full((nb, ny, nx), np.nan)
    count = np.zeros((ny, nx), dtype=np.int64)
    for i in range(ny):
        for j in range(nx):
            if not valid[i, j]:
                continue
            rows = range(max(0, i - w), min(ny - 1, i + w) + 1)
            cols = range(max(0, j - w), min(nx - 1, j + w) + 1)
            window = [(r, c) for r in rows for c in cols if valid[r, c]]
            # similarity thresholds (global, or local population std for use_local_tol)
            tol = th.copy()
            if variant == "imagefusion" and use_local_tol:
                for k, img in enumerate((f1, f2)):
                    for b in range(nb):
                        vals = [img[b, r, c] for r, c in window]
                        m = sum(vals) / len(vals)
                        m2 = sum(v * v for v in vals) / len(vals)
                        with np.errstate(invalid="ignore"):
                            tol[k, b] = np.sqrt(np.float64(m2 - m * m)) * (2.0 / num_class)
            cands = []
            for r, c in window:
                similar = True
                for b in range(nb):
                    d1 = abs(f1[b, r, c] - f1[b, i, j])
                    d2 = abs(f2[b, r, c] - f2[b, i, j])
                    if variant == "zhu":
                        similar &= bool(d1 < tol[0, b] and d2 < tol[1, b])
                    else:
                        similar &= not (d1 > tol[0, b] or d2 > tol[1, b])
                if similar:
                    cands.append((r, c))
            n = len(cands)
            count[i, j] = n
            weights = []
            if n >= min_candidates:
                for r, c in cands:
                    rr = correlation(f1, c1, f2, c2, r, c, variant)
                    dist = math.sqrt((r - i) ** 2 + (c - j) ** 2)
                    if variant == "zhu":
                        d = 1.0 + dist / float(w)
                    else:
                        d = dist * 2.0 / (2 * w + 1) + 1.0
                    with np.errstate(divide="ignore"):
                        weights.append(float(1.0 / np.float64((1.0 - rr) * d + eps_distance)))
            sw = math.fsum(weights)
            for b in range(nb):
                s1 = sum(c0[b, r, c] - c1[b, r, c] for r, c in window)
                s2 = sum(c0[b, r, c] - c2[b, r, c] for r, c in window)
                if variant == "zhu":
                    if n < min_candidates:  # signed mean differences (section 1.5)
                        m1 = s1 / len(window) + eps_time
                        m2 = s2 / len(window) + eps_time
                        d1, d2 = abs(m1), abs(m2)
                    else:
                        d1 = abs(s1 / len(window)) + eps_time
                        d2 = abs(s2 / len(window)) + eps_time
                    t1 = (1.0 / d1) / (1.0 / d1 + 1.0 / d2)
                    t2 = (1.0 / d2) / (1.0 / d1 + 1.0 / d2)
                else:
                    a1 = 1.0 / (abs(s1) + eps_time)
                    a2 = 1.0 / (abs(s2) + eps_time)
                    t1, t2 = a1 / (a1 + a2), a2 / (a1 + a2)
                if n < min_candidates:
                    note("few_candidates")
                    if variant == "zhu":
                        p = t1 * (f1[b, i, j] + m1) + t2 * (f2[b, i, j] + m2)
                        pred[b, i, j] = np.trunc(p) if truncate else p
                    else:
                        p = t1 * f1[b, i, j] + t2 * f2[b, i, j]
                        pred[b, i, j] = np.trunc(p) if truncate else p
                    continue
                xs = [c1[b, r, c] for r, c in cands] + [c2[b, r, c] for r, c in cands]
                ys = [f1[b, r, c] for r, c in cands] + [f2[b, r, c] for r, c in cands]
                if variant == "zhu":
                    change = abs(sum(xs[:n]) / n - sum(xs[n:]) / n)
                    v = 1.0
                    if change >= change_min_fraction * hi:
                        v = conversion_zhu(xs, ys, p_value=p_value, v_max=v_max)
                        note("v_accepted" if v != 1.0 else "v_rejected")
                    else:
                        note("regression_skipped")
                else:
                    mean = math.fsum(xs) / len(xs)
                    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
                    v = 1.0
                    if sd > hi * change_min_fraction * math.sqrt(2):
                        v = conversion_imagefusion(
                            xs, ys, p_value=p_value, v_max=v_max,
                            quality=use_quality_weighted_regression,
                        )  # fmt: skip
                        note("v_accepted" if v != 1.0 else "v_rejected")
                    else:
                        note("regression_skipped")
                ch1 = sum(wt * (c0[b, r, c] - c1[b, r, c]) for wt, (r, c) in zip(weights, cands, strict=True))
                ch2 = sum(wt * (c0[b, r, c] - c2[b, r, c]) for wt, (r, c) in zip(weights, cands, strict=True))
                p = t1 * (f1[b, i, j] + v * ch1 / sw) + t2 * (f2[b, i, j] + v * ch2 / sw)
                if variant == "imagefusion" and truncate:
                    p = np.trunc(p)
                out_of_range = (p <= lo or p >= hi) if variant == "zhu" else (p < lo or p > hi)
                if out_of_range:
                    note("fallback")
                    m1f = sum(wt * f1[b, r, c] for wt, (r, c) in zip(weights, cands, strict=True)) / sw
                    m2f = sum(wt * f2[b, r, c] for wt, (r, c) in zip(weights, cands, strict=True)) / sw
                    p = t1 * m1f + t2 * m2f
                pred[b, i, j] = np.trunc(p) if truncate else p
    return pred, count


def estarfm_ref_blocks(f1, c1, f2, c2, c0, *, block, **kwargs):
    """Zhu's block-wise processing: each ``block`` x ``block`` tile (anchored at the origin) on
    its own (windows and thresholds stop at the tile's edges)."""
    arrs = [np.asarray(a, np.float64) for a in (f1, c1, f2, c2, c0)]
    arrs = [a if a.ndim == 3 else a[None] for a in arrs]
    nb, ny, nx = arrs[0].shape
    pred = np.full((nb, ny, nx), np.nan)
    count = np.zeros((ny, nx), dtype=np.int64)
    for y0 in range(0, ny, block):
        for x0 in range(0, nx, block):
            sl = (slice(None), slice(y0, y0 + block), slice(x0, x0 + block))
            p, n = estarfm_ref(*(a[sl] for a in arrs), **kwargs)
            pred[sl] = p
            count[sl[1:]] = n
    return pred, count
