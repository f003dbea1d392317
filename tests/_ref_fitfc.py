"""Brute-force Fit-FC in plain Python loops, transcribed from /work/shared/specs/fitfc.md.

Slow on purpose (one pixel, one window, one tap at a time, float64): it is the yardstick of
the numba kernel of :mod:`xfusion.methods._fitfc_kernel` on small random inputs. Nothing
here is shared with the kernel: every step is written again from the spec.

* :func:`fitfc_wang`: variant "wang" (section 1): RM on the coarse grid with centred window
  moments, coarse residual, nearest upsampling of a and b, MATLAB ``imresize(.., s,
  'bicubic')`` of the residual (:func:`imresize_bicubic`), then the spatial filter of
  ``STARFM_fast_2016_v2`` with edge replication and the column-major tie order of
  ``Mins_matrix`` (repeated ``min``).
* :func:`fitfc_imagefusion`: variant "imagefusion" (section 2): OLS over clipped fine windows
  from raw sums, ``saturate_cast`` of the regression image, residual smoothing by OpenCV
  ``INTER_AREA`` down then ``INTER_CUBIC`` up (:func:`cubic_filter`), and the filter of
  ``FilterStep`` with the candidate selection of libstdc++'s ``std::partial_sort``
  (:func:`partial_sort_select`, a heap select written out step by step).

NaN marks unobserved pixels (section 4 of the spec).
"""

from __future__ import annotations

import math

import numpy as np

MATLAB_EPS = 2.220446049250313e-16


# ---------------------------------------------------------------------------------------------
# MATLAB imresize(X, s, 'bicubic') for an integer enlargement s (no antialiasing when enlarging)


def matlab_cubic(x: float) -> float:
    """Keys' cubic with a = -0.5, as MATLAB's ``imresize`` defines it."""
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def matlab_contributions(in_len: int, out_len: int, scale: float) -> list[list[tuple[int, float]]]:
    """Taps ``(0-based input index, weight)`` of every output index (MATLAB ``contributions``).

    ``u = x / scale + 0.5 * (1 - 1 / scale)`` (1-based x), ``left = floor(u - 2)``, six taps
    ``left .. left + 5`` weighted by the cubic of ``u - index`` and normalised by their sum;
    indices outside ``1..in_len`` mirrored through ``[1..n, n..1]``; taps whose weight is zero
    for every output are dropped.
    """
    rows = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - 4 / 2)
        idx = [left + p for p in range(6)]
        w = [matlab_cubic(u - j) for j in idx]
        tot = sum(w)
        w = [v / tot for v in w]
        aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
        idx = [aux[(j - 1) % len(aux)] - 1 for j in idx]
        rows.append(list(zip(idx, w, strict=True)))
    keep = [p for p in range(6) if any(r[p][1] != 0 for r in rows)]
    return [[r[p] for p in keep] for r in rows]


def imresize_bicubic(x: np.ndarray, s: int) -> np.ndarray:
    """MATLAB ``imresize(x, s, 'bicubic')``: dim 1 (rows) first, then dim 2."""
    ny, nx = x.shape
    tab_y = matlab_contributions(ny, ny * s, float(s))
    tab_x = matlab_contributions(nx, nx * s, float(s))
    mid = np.zeros((ny * s, nx))
    for i in range(ny * s):
        for j in range(nx):
            acc = 0.0
            for k, w in tab_y[i]:
                if w != 0:  # a zero tap adds nothing (and no NaN)
                    acc += w * x[k, j]
            mid[i, j] = acc
    out = np.zeros((ny * s, nx * s))
    for i in range(ny * s):
        for j in range(nx * s):
            acc = 0.0
            for k, w in tab_x[j]:
                if w != 0:
                    acc += w * mid[i, k]
            out[i, j] = acc
    return out


def imresize_bicubic_fill(x: np.ndarray, s: int) -> np.ndarray:
    """Like :func:`imresize_bicubic`, but outputs with a NaN tap use the valid taps only.

    There the output is ``sum w_ij x_ij / sum w_ij`` over the valid taps (``w_ij = wy_i *
    wx_j``), or 0 where they carry a total weight below 0.25 (``fill_residual=True`` of
    xfusion); outputs whose taps are all valid are those of :func:`imresize_bicubic`.
    """
    plain = imresize_bicubic(x, s)
    ny, nx = x.shape
    tab_y = matlab_contributions(ny, ny * s, float(s))
    tab_x = matlab_contributions(nx, nx * s, float(s))
    out = np.zeros((ny * s, nx * s))
    for i in range(ny * s):
        for j in range(nx * s):
            num = den = 0.0
            for ky, wy in tab_y[i]:
                for kx, wx in tab_x[j]:
                    v = x[ky, kx]
                    if wy * wx != 0 and not math.isnan(v):
                        num += wy * wx * v
                        den += wy * wx
            out[i, j] = num / den if den >= 0.25 else 0.0
    return np.where(np.isnan(plain), out, plain)


# ---------------------------------------------------------------------------------------------
# variant "wang"


def guided_regression(c1: np.ndarray, c2: np.ndarray, radius: int, eps: float = MATLAB_EPS):
    """``guidedfilter_MS_low(I=c1, p=c2, r)`` with centred moments and NaN-aware counts.

    Returns ``a, b`` on the coarse grid: over the ``(2r+1)^2`` window clipped at the border,
    pixels where both c1 and c2 are finite; ``a = cov / (var + eps)``, ``b = mean_p - a
    mean_I``; NaN where the window holds no valid pixel.
    """
    ny, nx = c1.shape
    a = np.full((ny, nx), np.nan)
    b = np.full((ny, nx), np.nan)
    for i in range(ny):
        for j in range(nx):
            pts = []
            for y in range(max(0, i - radius), min(ny, i + radius + 1)):
                for x in range(max(0, j - radius), min(nx, j + radius + 1)):
                    if math.isfinite(c1[y, x]) and math.isfinite(c2[y, x]):
                        pts.append((c1[y, x], c2[y, x]))  # noqa: PERF401 - plain loops on purpose
            if not pts:
                continue
            n = len(pts)
            mi = sum(p[0] for p in pts) / n
            mp = sum(p[1] for p in pts) / n
            var = sum((p[0] - mi) ** 2 for p in pts) / n
            cov = sum((p[0] - mi) * (p[1] - mp) for p in pts) / n
            a[i, j] = cov / (var + eps)
            b[i, j] = mp - a[i, j] * mi
    return a, b


def mins_matrix(dif: np.ndarray, n: int) -> list[tuple[int, int]]:
    """``Mins_matrix``: the n smallest entries by repeated ``min`` over the column-major order.

    NaN entries are never chosen; fewer than n positions come back when fewer are finite.
    """
    a = dif.copy()
    a[np.isnan(a)] = np.inf
    out = []
    rows, cols = a.shape
    for _ in range(n):
        best = None
        for c in range(cols):  # column-major: column first, then row
            for r in range(rows):
                if a[r, c] < np.inf and (best is None or a[r, c] < a[best]):
                    best = (r, c)
        if best is None:
            break
        out.append(best)
        a[best] = np.inf
    return out


def spatial_filter_wang(z, sim, *, w0, n_sim, scale_a, border="replicate", after=None):
    """``STARFM_fast_2016_v2(0, 0, Z, R, NIR, w0, N_S, A)`` with zero M/L cubes, all bands.

    ``z`` is ``(B, ny, nx)``: the images to average (Z2); ``sim`` ``(K, ny, nx)``: the
    similarity bands of F1. Padding by edge replication (``Extend_plane``) or, with
    ``border="clip"``, by NaN (never a candidate). Candidates with a NaN similarity value are
    never chosen; the output is NaN where the centre's is. ``after`` ``(B, ny, nx)`` is added
    to the filtered value (paper order, residual after filtering).
    """
    nb, ny, nx = z.shape
    mode = "edge" if border == "replicate" else "constant"
    kw = {} if mode == "edge" else {"constant_values": np.nan}
    zp = np.pad(z, ((0, 0), (w0, w0), (w0, w0)), mode=mode, **kw)
    sp = np.pad(sim, ((0, 0), (w0, w0), (w0, w0)), mode=mode, **kw)
    dist = np.zeros((2 * w0 + 1, 2 * w0 + 1))
    for i in range(2 * w0 + 1):
        for j in range(2 * w0 + 1):
            dist[i, j] = 1 + math.hypot(i - w0, j - w0) / scale_a
    out = np.full((nb, ny, nx), np.nan)
    for i in range(ny):
        for j in range(nx):
            centre = sp[:, i + w0, j + w0]
            if np.isnan(centre).any():
                continue
            win = sp[:, i : i + 2 * w0 + 1, j : j + 2 * w0 + 1]
            dif = np.zeros((2 * w0 + 1, 2 * w0 + 1))
            for k in range(sim.shape[0]):
                dif += np.abs(win[k] - centre[k]) ** 2
            chosen = mins_matrix(dif, n_sim)
            wsum = sum(1 / dist[r, c] for r, c in chosen)
            for band in range(nb):
                acc = 0.0
                for r, c in chosen:
                    acc += (1 / dist[r, c]) * zp[band, i + r, j + c]
                out[band, i, j] = acc / wsum
                if after is not None:
                    out[band, i, j] += after[band, i, j]
    return out


def coarse_means(img: np.ndarray, s: int, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Mean of the finite fine pixels of each coarse cell (cells anchored at ``-phase``)."""
    ny, nx = img.shape
    py, px = phase
    ncy, ncx = -(-(ny + py) // s), -(-(nx + px) // s)
    out = np.full((ncy, ncx), np.nan)
    for cy in range(ncy):
        for cx in range(ncx):
            vals = [
                img[y, x]
                for y in range(max(0, cy * s - py), min(ny, cy * s + s - py))
                for x in range(max(0, cx * s - px), min(nx, cx * s + s - px))
                if math.isfinite(img[y, x])
            ]
            if vals:
                out[cy, cx] = sum(vals) / len(vals)
    return out


def fitfc_wang(
    f1, c1, c2, *, s, rm_radius=1, w0=20, n_sim=20, scale_a=None, eps=MATLAB_EPS,
    sim_bands=None, residual="before_filter", border="replicate", fill_residual=False,
    phase=(0, 0),
):  # fmt: skip
    """Fit-FC, variant "wang", on whole images.

    ``f1`` is ``(B, ny, nx)`` on the fine grid; ``c1``, ``c2`` are ``(B, ncy, ncx)`` on the
    coarse grid, cell ``(cy, cx)`` covering fine rows ``cy*s - phase[0] ...`` (so the fine
    image is a window of the virtual grid of ``ncy*s`` rows). Returns ``(B, ny, nx)`` float64.
    """
    nb, ny, nx = f1.shape
    py, px = phase
    scale_a = (2 * w0 + 1) / 2 if scale_a is None else scale_a
    sim_bands = list(range(nb)) if sim_bands is None else list(sim_bands)
    z_fine = np.zeros((nb, ny, nx))
    z1 = np.zeros((nb, ny, nx))
    res = np.zeros((nb, ny, nx))
    for band in range(nb):
        a, b = guided_regression(c1[band], c2[band], rm_radius, eps)
        rb = c2[band] - (a * c1[band] + b)
        up = imresize_bicubic_fill(rb, s) if fill_residual else imresize_bicubic(rb, s)
        # nearest upsampling (each coarse cell -> s x s block), cropped to the fine image
        for i in range(ny):
            for j in range(nx):
                cy, cx = (i + py) // s, (j + px) // s
                z1[band, i, j] = a[cy, cx] * f1[band, i, j] + b[cy, cx]
                res[band, i, j] = up[i + py, j + px]
    if residual == "before_filter":
        z_fine = z1 + res
        after = None
    else:
        z_fine = z1
        after = res
    sim = f1[sim_bands].copy()
    # a candidate (and a centre) needs every band of F1 observed
    bad = np.isnan(f1).any(axis=0)
    sim[:, bad] = np.nan
    return spatial_filter_wang(z_fine, sim, w0=w0, n_sim=n_sim, scale_a=scale_a, border=border,
                               after=after)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# variant "imagefusion": OpenCV resize pieces


def saturate_cast(v: float, dtype) -> float:
    """OpenCV ``saturate_cast<T>(double)``: round half to even and clamp for integers."""
    dt = np.dtype(dtype)
    if math.isnan(v):
        return v
    if dt.kind == "f":
        return float(dt.type(v))
    info = np.iinfo(dt)
    return float(min(max(round(v), info.min), info.max))  # Python round: half to even


def area_tab(n_src: int, n_dst: int, scale: float) -> list[list[tuple[int, float]]]:
    """OpenCV ``INTER_AREA`` weights (``computeResizeAreaTab``), in float64.

    Destination pixel ``d`` covers ``[d * scale, (d + 1) * scale)`` of the source, clipped to
    the image; partial source pixels count with their covered fraction; the weights are
    normalised by the covered width.
    """
    out = []
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
        out.append(taps)
    return out


def area_tab_fast(n_src: int, n_dst: int, iscale: int) -> list[list[tuple[int, float]]]:
    """``INTER_AREA`` with an integer scale: the mean of each ``iscale`` block (clipped)."""
    out = []
    for d in range(n_dst):
        idx = [x for x in range(d * iscale, d * iscale + iscale) if x < n_src]
        out.append([(x, 1.0 / len(idx)) for x in idx])
    return out


def cubic_coeffs_f32(fx: np.float32) -> list[np.float32]:
    """OpenCV ``interpolateCubic`` (A = -0.75) in float32."""
    f = np.float32
    A = f(-0.75)
    x = f(fx)
    c0 = ((A * (x + f(1)) - f(5) * A) * (x + f(1)) + f(8) * A) * (x + f(1)) - f(4) * A
    c1 = ((A + f(2)) * x - (A + f(3))) * x * x + f(1)
    c2 = ((A + f(2)) * (f(1) - x) - (A + f(3))) * (f(1) - x) * (f(1) - x) + f(1)
    c3 = f(1) - c0 - c1 - c2
    return [c0, c1, c2, c3]


def cubic_tab(n_src: int, n_dst: int) -> list[list[tuple[int, float]]]:
    """OpenCV ``INTER_CUBIC`` taps from ``n_src`` to ``n_dst`` pixels, replicated border."""
    scale = n_src / n_dst
    out = []
    for d in range(n_dst):
        fx = np.float32((d + 0.5) * scale - 0.5)
        sx = math.floor(fx)
        fx = np.float32(fx - np.float32(sx))
        c = cubic_coeffs_f32(fx)
        out.append([(min(max(sx - 1 + k, 0), n_src - 1), float(c[k])) for k in range(4)])
    return out


def cubic_filter(r: np.ndarray, f: float) -> np.ndarray:
    """``cubic_filter(r, f)``: ``INTER_AREA`` by ``1 / f``, then ``INTER_CUBIC`` back.

    NaN source pixels are left out of the area means (mean of the valid part, NaN when none);
    a NaN tap of the cubic step makes NaN.
    """
    if f == 1:
        return r.copy()
    ny, nx = r.shape
    inv = 1.0 / f
    my, mx = int(np.rint(ny * inv)), int(np.rint(nx * inv))
    scale = 1.0 / inv
    if abs(scale - round(scale)) < np.finfo(float).eps:
        ty, tx = area_tab_fast(ny, my, round(scale)), area_tab_fast(nx, mx, round(scale))
    else:
        ty, tx = area_tab(ny, my, scale), area_tab(nx, mx, scale)
    small = np.full((my, mx), np.nan)
    for i in range(my):
        for j in range(mx):
            num = den = 0.0
            for ky, wy in ty[i]:
                for kx, wx in tx[j]:
                    if math.isfinite(r[ky, kx]):
                        num += wy * wx * r[ky, kx]
                        den += wy * wx
            if den > 0:
                small[i, j] = num / den
    cy, cx = cubic_tab(my, ny), cubic_tab(mx, nx)
    mid = np.zeros((my, nx))  # horizontal pass first (OpenCV's row buffers)
    for i in range(my):
        for j in range(nx):
            mid[i, j] = sum(w * small[i, k] for k, w in cx[j])
    out = np.zeros((ny, nx))
    for i in range(ny):
        for j in range(nx):
            out[i, j] = sum(w * mid[k, j] for k, w in cy[i])
    return out


# ---------------------------------------------------------------------------------------------
# variant "imagefusion": libstdc++ partial_sort (heap select), written out


def _less(a, b) -> bool:
    return a[0] < b[0] or (a[0] == b[0] and a[1] < b[1])


def _push_heap(v: list, hole: int, top: int, value) -> None:
    parent = (hole - 1) // 2
    while hole > top and _less(v[parent], value):
        v[hole] = v[parent]
        hole = parent
        parent = (hole - 1) // 2
    v[hole] = value


def _adjust_heap(v: list, hole: int, length: int, value) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _less(v[child], v[child - 1]):
            child -= 1
        v[hole] = v[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        v[hole] = v[child - 1]
        hole = child - 1
    _push_heap(v, hole, top, value)


def partial_sort_select(seq: list, n: int) -> list:
    """The first ``n`` elements after ``std::partial_sort(seq, seq + n, end)`` (libstdc++).

    Elements are ``(score, dist2, payload)`` compared on ``(score, dist2)`` only; which of
    several equivalent elements survive depends on the heap, as in the C++ program.
    """
    v = list(seq)
    n = min(n, len(v))
    if n == 0:
        return []
    if n >= 2:  # make_heap
        parent = (n - 2) // 2
        while True:
            _adjust_heap(v, parent, n, v[parent])
            if parent == 0:
                break
            parent -= 1
    for i in range(n, len(v)):  # heap select
        if _less(v[i], v[0]):
            value = v[i]
            v[i] = v[0]
            _adjust_heap(v, 0, n, value)
    return sorted(v[:n], key=lambda e: (e[0], e[1]))


def ols_regression(h1, l1, l2, valid, win):
    """``RegressionMapper``: OLS of l2 on l1 over the clipped ``win`` window (valid pixels)."""
    ny, nx = l1.shape
    half = win // 2
    a = np.ones((ny, nx))
    b = np.zeros((ny, nx))
    for i in range(ny):
        for j in range(nx):
            n = sx = sy = sxx = sxy = 0.0
            for y in range(max(0, i - half), min(ny, i - half + win)):
                for x in range(max(0, j - half), min(nx, j - half + win)):
                    if valid[y, x]:
                        n += 1
                        sx += l1[y, x]
                        sy += l2[y, x]
                        sxx += l1[y, x] * l1[y, x]
                        sxy += l1[y, x] * l2[y, x]
            det = n * sxx - sx * sx
            if abs(det) >= 1e-14:
                a[i, j] = (n * sxy - sx * sy) / det
                b[i, j] = (sxx * sy - sx * sxy) / det
    return a, b


def fitfc_imagefusion(
    f1, c1, c2, *, win_rm=51, half_sf=25, n_sim=10, scale_a=None, resolution_factor=30.0,
    dtype="float64", residual="before_filter", border="clip", sim_bands=None,
    diff_dtype="float64",
):  # fmt: skip
    """Fit-FC, variant "imagefusion", on whole fine-grid images ``(B, ny, nx)``.

    ``dtype`` is the input type for ``saturate_cast`` (of FRM and of the output);
    ``diff_dtype`` the type in which ``h1(x) - h1(c)`` is computed (float32 for float32
    images, as the C++ ``imgval_t`` subtraction). A pixel is valid where every band of f1, c1
    and c2 is finite. Returns float64 with NaN where not predicted.
    """
    nb, ny, nx = f1.shape
    scale_a = (2 * half_sf + 1) / 2 if scale_a is None else scale_a
    sim_bands = list(range(nb)) if sim_bands is None else list(sim_bands)
    valid = np.isfinite(f1).all(0) & np.isfinite(c1).all(0) & np.isfinite(c2).all(0)
    frm = np.full((nb, ny, nx), np.nan)
    rs = np.full((nb, ny, nx), np.nan)
    for band in range(nb):
        a, b = ols_regression(f1[band], c1[band], c2[band], valid, win_rm)
        r = np.full((ny, nx), np.nan)
        for i in range(ny):
            for j in range(nx):
                if valid[i, j]:
                    frm[band, i, j] = saturate_cast(a[i, j] * f1[band, i, j] + b[i, j], dtype)
                    r[i, j] = c2[band, i, j] - (a[i, j] * c1[band, i, j] + b[i, j])
        rs[band] = cubic_filter(r, resolution_factor)
    out = np.full((nb, ny, nx), np.nan)
    ddt = np.dtype(diff_dtype).type
    for i in range(ny):
        for j in range(nx):
            if not valid[i, j]:
                continue
            seq = []
            for y in range(i - half_sf, i + half_sf + 1):  # row-major, as the C++ loops
                for x in range(j - half_sf, j + half_sf + 1):
                    yy, xx = y, x
                    if border == "replicate":
                        yy, xx = min(max(y, 0), ny - 1), min(max(x, 0), nx - 1)
                    elif not (0 <= y < ny and 0 <= x < nx):
                        continue
                    if not valid[yy, xx]:
                        continue
                    score = 0.0
                    for k in sim_bands:
                        d = float(ddt(f1[k, yy, xx]) - ddt(f1[k, i, j]))
                        score += d * d
                    seq.append((score, (y - i) ** 2 + (x - j) ** 2, (y - i, x - j, yy, xx)))
            chosen = partial_sort_select(seq, n_sim)
            for band in range(nb):
                num = wsum = 0.0
                for _, _, (di, dj, yy, xx) in chosen:
                    w = 1 / (1 + math.hypot(di, dj) / scale_a)
                    wsum += w
                    extra = 0.0 if residual == "after_filter" else rs[band, yy, xx]
                    num += w * (frm[band, yy, xx] + extra)
                v = num / wsum
                if residual == "after_filter":
                    v += rs[band, i, j]
                out[band, i, j] = saturate_cast(v, dtype)
    return out
