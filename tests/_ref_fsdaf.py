"""Brute-force FSDAF: a plain Python transcription of the spec (§1 with xfusion's rules), float64.

Written for clarity, not speed: explicit loops over blocks, cells, pixels and window
candidates; the thin-plate spline solved in fine-pixel coordinates with a dense solve and
evaluated point by point; the bounded least squares by enumerating every active set (exact for
the handful of classes of a test). Class maps are supplied (0 = background). Used by
tests/test_fsdaf_kernel.py to check the fast kernels of xfusion.methods._fsdaf_kernel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _vl(n, p):
    """IDL value_locate(findgen(n+1)/n, p), clipped to index n values."""
    k = -1
    for i in range(n + 1):
        if i / n <= p:
            k = i
    return min(max(k, 0), n - 1)


def ref_clamp(vals, quantiles, data_range):
    v = [float(x) for x in vals]
    n = len(v)
    if n == 0:
        return np.array(v)
    srt = sorted(v)
    qlo, qhi = srt[_vl(n, quantiles[0])], srt[_vl(n, quantiles[1])]
    lo, hi = data_range
    rest = [x for x in v if x > qlo and x >= lo]
    if rest:
        m = min(rest)
        v = [m if (x <= qlo or x < lo) else x for x in v]
    rest = [x for x in v if x < qhi and x <= hi]
    if rest:
        m = max(rest)
        v = [m if (x >= qhi or x > hi) else x for x in v]
    return np.array(v)


def ref_bvls(x, y, lo, hi):
    """Exact bounded least squares by enumerating the active sets (free / at lo / at hi)."""
    k = x.shape[1]
    if not hi > lo:
        return np.full(k, lo)
    best, best_cost = None, math.inf
    for state in itertools.product((0, 1, 2), repeat=k):
        d = np.zeros(k)
        free = [i for i in range(k) if state[i] == 0]
        for i in range(k):
            if state[i] == 1:
                d[i] = lo
            elif state[i] == 2:
                d[i] = hi
        if free:
            r = y - x @ d
            sol = np.linalg.lstsq(x[:, free], r, rcond=None)[0]
            if np.any(sol < lo - 1e-12) or np.any(sol > hi + 1e-12):
                continue
            d[free] = sol
        cost = float(np.sum((x @ d - y) ** 2))
        if cost < best_cost - 1e-12 * max(1.0, abs(best_cost) if best_cost < math.inf else 1.0):
            best, best_cost = d, cost
    return best


def ref_phi(r):
    return 0.0 if r == 0 else r * r * math.log(r)


def ref_tps(points, values, query):
    """Exact TPS through points (n,2) → values (n,) evaluated at query (m,2), pixel units."""
    n = len(points)
    a = np.zeros((n + 3, n + 3))
    for i in range(n):
        for j in range(n):
            a[i, j] = ref_phi(math.dist(points[i], points[j]))
        a[i, n:] = (1.0, points[i][0], points[i][1])
        a[n:, i] = (1.0, points[i][0], points[i][1])
    rhs = np.zeros(n + 3)
    rhs[:n] = values
    sol = np.linalg.solve(a, rhs)
    out = np.empty(len(query))
    for m, q in enumerate(query):
        v = sol[n] + sol[n + 1] * q[0] + sol[n + 2] * q[1]
        for i in range(n):
            v += sol[i] * ref_phi(math.dist(q, points[i]))
        out[m] = v
    return out


def ref_block(f1, c1, c2, labels, *, s, w, n_pure, data_range, change_quantiles,
              outlier_quantiles, max_weight):  # fmt: skip
    """Steps 3-12 on one padded block → delta21 of the whole padded block."""
    nb, h, wd = f1.shape
    ok = np.all(np.isfinite(f1), axis=0)
    present = sorted({int(labels[i, j]) for i in range(h) for j in range(wd)
                      if ok[i, j] and labels[i, j] > 0})  # fmt: skip
    kcls = len(present)
    blab = np.zeros((h, wd), int)
    for i in range(h):
        for j in range(wd):
            if ok[i, j] and labels[i, j] > 0:
                blab[i, j] = present.index(int(labels[i, j])) + 1
    d21 = np.full((nb, h, wd), np.nan)
    if kcls == 0:
        d21[:, ok] = 0.0
        return d21, np.ones((h, wd))
    # step 3
    f1k = f1.copy()
    for b in range(nb):
        f1k[b][ok] = ref_clamp(f1[b][ok], outlier_quantiles, data_range)
    # step 4-5: cells
    ncy, ncx = math.ceil(h / s), math.ceil(wd / s)
    # pixel lists (row-major inside the cell), cells in row-major order
    cells = [[(i, j) for i in range(ci * s, min(h, ci * s + s))
              for j in range(cj * s, min(wd, cj * s + s))]
             for ci in range(ncy) for cj in range(ncx)]  # fmt: skip
    ncell = len(cells)
    frac = np.zeros((kcls, ncell))
    frac_raw = np.zeros((kcls, ncell))
    cvalid = np.zeros(ncell, bool)
    m1 = np.zeros((nb, ncell))
    m2 = np.zeros((nb, ncell))
    for c, px in enumerate(cells):
        for k in range(kcls):
            frac_raw[k, c] = sum(1 for (i, j) in px if blab[i, j] == k + 1) / len(px)
        frac[:, c] = frac_raw[:, c] if frac_raw[:, c].sum() > 0.999 else 0.0
        cvalid[c] = all(np.isfinite(c1[b, i, j]) and np.isfinite(c2[b, i, j])
                        for b in range(nb) for (i, j) in px)  # fmt: skip
        for b in range(nb):
            m1[b, c] = np.mean(np.array([c1[b, i, j] for (i, j) in px]))
            m2[b, c] = np.mean(np.array([c2[b, i, j] for (i, j) in px]))
    dc = m2 - m1
    vc = [c for c in range(ncell) if cvalid[c]]
    # step 7: unmixing
    delta = np.zeros((nb, kcls))
    for b in range(nb):
        if not vc:
            continue
        dv = np.array([dc[b, c] for c in vc])
        sd = float(np.std(dv, ddof=1)) if len(vc) > 1 else 0.0
        lo, hi = dv.min() - sd, dv.max() + sd
        rows_x, rows_y = [], []
        for k in range(kcls):
            order = sorted(vc, key=lambda c, k=k: (-frac[k, c], -c))
            nf = sum(1 for c in vc if frac[k, c] > 0.01)
            if nf == 0:
                nf = sum(1 for c in vc if frac[k, c] > 0)
            sel = order[: min(nf, n_pure)]
            if not sel:
                continue
            ch = [dc[b, c] for c in sel]
            srt = sorted(ch)
            a = srt[_vl(len(sel), change_quantiles[0])]
            z = srt[_vl(len(sel), change_quantiles[1])]
            for c, v in zip(sel, ch, strict=True):
                if a <= v <= z:
                    rows_x.append(frac[:, c])
                    rows_y.append(v)
        delta[b] = float(np.mean(dv))
        if rows_x:
            x = np.array(rows_x)
            y = np.array(rows_y)
            cols = [k for k in range(kcls) if np.any(x[:, k] != 0)]
            if cols:
                delta[b, cols] = ref_bvls(x[:, cols], y, lo, hi)
    # step 8
    l21 = f1k.copy()
    for i in range(h):
        for j in range(wd):
            if blab[i, j] > 0:
                l21[:, i, j] = f1k[:, i, j] + delta[:, blab[i, j] - 1]
    # step 9
    lo_dr, hi_dr = data_range
    min_allow, max_allow = np.zeros(nb), np.zeros(nb)
    for b in range(nb):
        vals = [c2[b, i, j] for i in range(h) for j in range(wd) if np.isfinite(c2[b, i, j])]
        vals += [l21[b, i, j] for i in range(h) for j in range(wd) if ok[i, j]]
        min_allow[b] = max(min(vals), lo_dr)
        max_allow[b] = min(max(vals), hi_dr)
    # step 10: TPS through valid cell centres (pixel units), or the mean
    centres = [((c // ncx) * s + (s - 1) / 2.0, (c % ncx) * s + (s - 1) / 2.0) for c in vc]
    query = [(i, j) for i in range(h) for j in range(wd)]
    l2tps = np.zeros((nb, h, wd))
    aff_rank = np.linalg.matrix_rank(np.array([[1.0, p, q] for p, q in centres])) if centres else 0
    for b in range(nb):
        if len(centres) >= 3 and aff_rank == 3:
            l2tps[b] = ref_tps(centres, [m2[b, c] for c in vc], query).reshape(h, wd)
        else:
            l2tps[b] = np.mean([m2[b, c] for c in vc]) if vc else 0.0
    # step 6: homogeneity index (clipped window)
    hi_map = np.zeros((h, wd))
    for i in range(h):
        for j in range(wd):
            i0, i1 = max(0, i - w), min(h - 1, i + w)
            j0, j1 = max(0, j - w), min(wd - 1, j + w)
            same = np.count_nonzero(blab[i0 : i1 + 1, j0 : j1 + 1] == blab[i, j])
            hi_map[i, j] = same / ((i1 - i0 + 1) * (j1 - j0 + 1))
    # step 11: residuals
    r = np.zeros((nb, h, wd))
    for c, px in enumerate(cells):
        if not cvalid[c]:
            continue
        for b in range(nb):
            pp = [(i, j) for (i, j) in px if ok[i, j]]
            if not pp:
                continue
            # mean class change over the observed pixels (label 0: unchanged)
            pred = np.mean(np.array([l21[b, i, j] - f1k[b, i, j] if blab[i, j] > 0 else 0.0
                                     for (i, j) in pp]))  # fmt: skip
            big_r = dc[b, c] - pred
            e = np.array([l2tps[b, i, j] - l21[b, i, j] for (i, j) in pp])
            if big_r <= 0:
                e[e > 0] = 0
            else:
                e[e < 0] = 0
            e = np.abs(e)
            hv = np.array([hi_map[i, j] for (i, j) in pp])
            wt = e * hv + abs(big_r) * (1.0 - hv) + 1e-6
            wt = wt / np.mean(wt)
            m = np.mean(wt)
            wt[wt > max_weight] = m
            wt = wt / np.mean(wt)
            for (i, j), v in zip(pp, wt, strict=True):
                r[b, i, j] = v * big_r
    # step 12
    for b in range(nb):
        for i in range(h):
            for j in range(wd):
                if ok[i, j]:
                    v = min(max(l21[b, i, j] + r[b, i, j], min_allow[b]), max_allow[b])
                    d21[b, i, j] = v - f1k[b, i, j]
    return d21, hi_map


def ref_fsdaf(f1, c1, c2, classes, *, s, w, n_similar=20, n_pure=100,
              data_range=(0.0, 10000.0), block_cells=30, change_quantiles=(0.1, 0.9),
              outlier_quantiles=(1e-4, 0.9999), max_weight=10.0):  # fmt: skip
    """FSDAF prediction (bands, y, x) from F1, C1, C2 (bands, y, x) and a class map (y, x).

    Returns ``(prediction, delta21, hi)``.
    """
    f1 = np.asarray(f1, np.float64)
    c1 = np.asarray(c1, np.float64)
    c2 = np.asarray(c2, np.float64)
    nb, ny, nx = f1.shape
    ok = np.all(np.isfinite(f1), axis=0)
    f1 = np.where(ok, f1, np.nan)
    lab = np.where(ok, classes, 0)
    d21 = np.full((nb, ny, nx), np.nan)
    hi_map = np.zeros((ny, nx))
    bs = block_cells * s
    for y0 in range(0, ny, bs):
        for x0 in range(0, nx, bs):
            y1, x1 = min(ny, y0 + bs), min(nx, x0 + bs)
            ya, yb = max(0, y0 - s), min(ny, y1 + s)
            xa, xb = max(0, x0 - s), min(nx, x1 + s)
            res = ref_block(f1[:, ya:yb, xa:xb], c1[:, ya:yb, xa:xb], c2[:, ya:yb, xa:xb],
                            lab[ya:yb, xa:xb], s=s, w=w, n_pure=n_pure, data_range=data_range,
                            change_quantiles=change_quantiles,
                            outlier_quantiles=outlier_quantiles, max_weight=max_weight)  # fmt: skip
            blk, hib = res
            d21[:, y0:y1, x0:x1] = blk[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
            hi_map[y0:y1, x0:x1] = hib[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    # global statistics
    std = np.array([np.std(f1[b][ok], ddof=1) for b in range(nb)])
    kcls = len({int(v) for v in lab[ok] if v > 0})
    th = 2.0 * std / kcls if kcls else np.zeros(nb)
    # step 13
    lo, hi = data_range
    out = np.full((nb, ny, nx), np.nan)
    full = (2 * w + 1) ** 2
    for i in range(ny):
        for j in range(nx):
            if not ok[i, j]:
                continue
            fc = f1[:, i, j]
            if lab[i, j] == 0:
                out[:, i, j] = fc
                continue
            i0, i1 = max(0, i - w), min(ny - 1, i + w)
            j0, j1 = max(0, j - w), min(nx - 1, j + w)
            clipped = (i1 - i0 + 1) * (j1 - j0 + 1) < full
            cands = []
            for r in range(i0, i1 + 1):
                for c in range(j0, j1 + 1):
                    if not ok[r, c]:
                        continue
                    sim = 0.0
                    good = True
                    for b in range(nb):
                        df = abs(f1[b, r, c] - fc[b])
                        sim = sim + df / (fc[b] + 1e-8)
                        if not df < th[b]:
                            good = False
                    if not good:
                        continue
                    d = math.sqrt((r - i) ** 2 + (c - j) ** 2) + (1e-5 if clipped else 0.0)
                    key = (sim + 1e-5) * (10.0 + d / w)
                    pos = (r - i + w) * (2 * w + 1) + (c - j + w)
                    cands.append((key, d, pos, sim, r, c))
            cands.sort(key=lambda t: (t[0], t[1], t[2]))
            sel = cands[:n_similar]
            if not sel:
                out[:, i, j] = fc + d21[:, i, j]
            else:
                cd = [1.0 / ((1.0 + d / w) * (sim + 1.0)) for (_, d, _, sim, _, _) in sel]
                tot = sum(cd)
                for b in range(nb):
                    out[b, i, j] = fc[b] + sum((wt / tot) * d21[b, r, c]
                                               for wt, (_, _, _, _, r, c) in zip(cd, sel, strict=True))  # fmt: skip
            for b in range(nb):
                if out[b, i, j] < lo:
                    out[b, i, j] = min(hi, max(lo, fc[b] + (c2[b, i, j] - c1[b, i, j])))
                elif out[b, i, j] > hi:
                    out[b, i, j] = max(lo, min(hi, fc[b] + (c2[b, i, j] - c1[b, i, j])))
    return out, d21, hi_map


def make_scene(rng, *, nb=2, shape=(64, 64), s=8, ncls=3, nan_px=0, coarse_noise=5.0,
               blocky=True):  # fmt: skip
    """Random fine/coarse test stack with spatially coherent classes and class-wise change.

    Returns ``(f1, c1, c2, classes, f2)``: (nb, ny, nx) float64 arrays and the (ny, nx) class
    map (1..ncls). Coarse images are s x s cell means (cut cells at the edges included) put
    back on the fine grid, plus noise per fine pixel (so they are not block-constant unless
    ``coarse_noise`` is 0).
    """
    ny, nx = shape
    base = rng.integers(1, ncls + 1, size=(-(-ny // 4), -(-nx // 4)))
    cls = np.kron(base, np.ones((4, 4), int))[:ny, :nx] if blocky else base
    flip = rng.random((ny, nx)) < 0.1
    cls = np.where(flip, rng.integers(1, ncls + 1, size=(ny, nx)), cls)
    mean = rng.uniform(500, 4000, size=(ncls + 1, nb))
    chg = rng.uniform(-300, 300, size=(ncls + 1, nb))
    f1 = np.stack([mean[cls, b] + rng.normal(0, 80, (ny, nx)) for b in range(nb)])
    f2 = np.stack([f1[b] + chg[cls, b] + rng.normal(0, 30, (ny, nx)) for b in range(nb)])

    def coarse(a):
        out = np.empty_like(a)
        for i in range(0, ny, s):
            for j in range(0, nx, s):
                out[:, i : i + s, j : j + s] = a[:, i : i + s, j : j + s].mean(axis=(1, 2))[:, None, None]
        return out + (rng.normal(0, coarse_noise, a.shape) if coarse_noise else 0.0)

    c1, c2 = coarse(f1), coarse(f2)
    for _ in range(nan_px):
        i, j = rng.integers(ny), rng.integers(nx)
        f1[rng.integers(nb), i, j] = np.nan
    return f1, c1, c2, cls, f2
