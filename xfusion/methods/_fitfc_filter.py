"""Fit-FC's spatial filter (SF): the ``n`` most similar pixels of each window, weighted.

For every centre the ``n`` most similar candidates of the window by ``(score, key)`` where key
is the column-major window index ("wang": ``Mins_matrix`` order) or the squared distance
("imagefusion"), chosen with the heap select of libstdc++'s ``std::partial_sort`` so that
equivalent candidates resolve as in the C++ program (:func:`spatial_filter`, hot loop
:func:`_sf_rows`). The loop runs over window offsets (outer) and a run of centres (inner): for
one offset every centre reads one contiguous row, so scores and the "could it enter?" test
vectorise; only the few candidates that can enter a centre's list take the scalar heap path.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError

__all__ = ["spatial_filter"]

_RUN = 256  # centres per run of the spatial filter (keeps its working set in L2)
_GUESS = 6.0  # first filter of a centre's scores: this times the row above's n-th smallest


@njit(cache=True, inline="always")
def _less(d1, k1, d2, k2):  # pragma: no cover
    return d1 < d2 or (d1 == d2 and k1 < k2)


@njit(cache=True, inline="always")
def _push_heap(hd, hk, ho, b, hole, top, d, k, o):  # pragma: no cover
    # heaps are flat arrays: the heap of a centre starts at index b
    parent = (hole - 1) // 2
    while hole > top and _less(hd[b + parent], hk[b + parent], d, k):
        hd[b + hole] = hd[b + parent]
        hk[b + hole] = hk[b + parent]
        ho[b + hole] = ho[b + parent]
        hole = parent
        parent = (hole - 1) // 2
    hd[b + hole] = d
    hk[b + hole] = k
    ho[b + hole] = o


@njit(cache=True, inline="always")
def _adjust_heap(hd, hk, ho, b, hole, length, d, k, o):  # pragma: no cover
    # libstdc++ __adjust_heap: move the hole to a leaf by the larger child, then push up
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _less(hd[b + child], hk[b + child], hd[b + child - 1], hk[b + child - 1]):
            child -= 1
        hd[b + hole] = hd[b + child]
        hk[b + hole] = hk[b + child]
        ho[b + hole] = ho[b + child]
        hole = child
    if (length & 1) == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        hd[b + hole] = hd[b + child - 1]
        hk[b + hole] = hk[b + child - 1]
        ho[b + hole] = ho[b + child - 1]
        hole = child - 1
    _push_heap(hd, hk, ho, b, hole, top, d, k, o)


@njit(cache=True, inline="always")
def _make_heap(hd, hk, ho, b, nsel):  # pragma: no cover
    if nsel >= 2:
        parent = (nsel - 2) // 2
        while True:
            _adjust_heap(hd, hk, ho, b, parent, nsel, hd[b + parent], hk[b + parent],
                         ho[b + parent])  # fmt: skip
            if parent == 0:
                break
            parent -= 1


@njit(cache=True, inline="always")
def _offer_exact(hd, hk, ho, cnt, t, d, k, o, nsel):  # pragma: no cover
    # libstdc++ heap select (std::partial_sort), element by element in sequence order
    b = t * nsel
    c = cnt[t]
    if c < nsel:
        hd[b + c] = d
        hk[b + c] = k
        ho[b + c] = o
        c += 1
        cnt[t] = c
        if c == nsel:
            _make_heap(hd, hk, ho, b, nsel)
        return
    if _less(d, k, hd[b], hk[b]):
        _adjust_heap(hd, hk, ho, b, 0, nsel, d, k, o)


@njit(cache=True)
def _sort_list(hd, hk, ho, b, m):  # pragma: no cover
    # ascending (d, k), then visiting index: the summation order (rounding only)
    for e in range(1, m):
        d = hd[b + e]
        k = hk[b + e]
        o = ho[b + e]
        f = e - 1
        while f >= 0 and (
            _less(d, k, hd[b + f], hk[b + f])
            or (d == hd[b + f] and k == hk[b + f] and o < ho[b + f])
        ):
            hd[b + f + 1] = hd[b + f]
            hk[b + f + 1] = hk[b + f]
            ho[b + f + 1] = ho[b + f]
            f -= 1
        hd[b + f + 1] = d
        hk[b + f + 1] = k
        ho[b + f + 1] = o


@njit(cache=True)
def _select_exact(
    sim, cen, t, i, jc, h, sdi, sdj, skey, sidx, hd, hk, ho, cnt, nsel
):  # pragma: no cover
    # the exact sequence semantics for centre t: the window row by row (the C++ row-major
    # loops; ``sdi, sdj`` row-major), keys skey, visiting-order index sidx; scores of a
    # window row computed at once on contiguous slices
    nk = sim.shape[0]
    width = 2 * h + 1
    drow = np.empty(width)
    cnt[t] = 0
    for r in range(width):
        rr = i + h + sdi[r * width]
        cc = jc + h + t - h
        for e in range(width):
            drow[e] = 0.0
        for q in range(nk):
            x = sim[q, rr, cc : cc + width]
            c = cen[q, t]
            for e in range(width):
                a = np.float64(x[e] - c)
                drow[e] += a * a
        for e in range(width):
            d = drow[e]
            if not np.isnan(d):
                f = r * width + e
                _offer_exact(hd, hk, ho, cnt, t, d, skey[f], sidx[f], nsel)


@njit(cache=True, nogil=True)
def _sf_rows(
    sim, val, after, odi, odj, okey, ow, sdi, sdj, skey, sidx, r0, c0, c1, h, nsel, ii0, ii1,
    out, nused, nexact,
):  # pragma: no cover  # fmt: skip
    """Spatial filter of interior rows ``r0 + ii0 .. r0 + ii1 - 1``.

    ``sim`` ``(K, Yp, Xp)`` and ``val`` ``(B, Yp, Xp)`` are padded by ``h`` on every side (NaN
    similarity = never a candidate); ``after`` ``(B, Y, X)`` (or empty) is added to the
    filtered value. Offsets ``(odi, odj)`` with key ``okey`` and weight ``ow`` are visited
    in their order (any order gives the same set when it is unique); where the kept set is
    not unique (equivalent candidates at the boundary), the centre is redone in the
    sequence ``(sdi, sdj, skey)`` with the heap select of ``std::partial_sort``.
    ``out`` is ``(B, ni, nj)`` for the interior, ``nused`` ``(ni, nj)``; ``nexact[0]``
    counts the redone centres.
    """
    nk = sim.shape[0]
    nb = val.shape[0]
    m_off = odi.size
    n_all = c1 - c0
    run = min(_RUN, max(n_all, 1))
    hd = np.empty(run * nsel)
    hk = np.empty(run * nsel)
    ho = np.empty(run * nsel, np.int32)
    cnt = np.empty(run, np.int32)
    # the n-th smallest score of each centre of the previous row: three times the largest
    # of the three above is a first filter (a centre left with fewer than n candidates under
    # it is redone without), which saves most list updates
    tau_prev = np.full(n_all + 2, np.inf)
    tau_cur = np.full(n_all + 2, np.inf)
    guess = np.empty(run)
    thr = np.empty(run)
    amb_d = np.empty(run)
    amb_k = np.empty(run)
    dbuf = np.empty(run)
    nword = (run + 7) // 8
    hit = np.zeros(nword * 8, np.uint8)  # flags, read 8 at a time as uint64 words
    hword = hit.view(np.uint64)
    cen = np.empty((nk, run), sim.dtype)
    has_after = after.shape[1] > 0
    for ii in range(ii0, ii1):
        i = r0 + ii
        for t0 in range(0, n_all, run):
            n = min(run, n_all - t0)
            jc = c0 + t0
            for q in range(nk):
                for t in range(n):
                    cen[q, t] = sim[q, i + h, jc + h + t]
            for t in range(n):
                j = t0 + t + 1
                g = max(tau_prev[j - 1], max(tau_prev[j], tau_prev[j + 1])) * _GUESS
                guess[t] = g
                cnt[t] = 0
                thr[t] = g
                amb_d[t] = np.inf
                amb_k[t] = np.inf
            for t in range(n, nword * 8):
                hit[t] = 0
            for o in range(m_off):
                rr = i + h + odi[o]
                cc = jc + h + odj[o]
                # contiguous slices indexed from 0: the loops vectorise (no wraparound checks)
                if nk == 1:
                    x0 = sim[0, rr, cc : cc + n]
                    e0 = cen[0, :n]
                    for t in range(n):
                        a = np.float64(x0[t] - e0[t])
                        d = a * a
                        dbuf[t] = d
                        hit[t] = d <= thr[t]
                elif nk == 2:
                    x0 = sim[0, rr, cc : cc + n]
                    x1 = sim[1, rr, cc : cc + n]
                    e0 = cen[0, :n]
                    e1 = cen[1, :n]
                    for t in range(n):
                        a = np.float64(x0[t] - e0[t])
                        b = np.float64(x1[t] - e1[t])
                        d = a * a + b * b
                        dbuf[t] = d
                        hit[t] = d <= thr[t]
                else:
                    for t in range(n):
                        dbuf[t] = 0.0
                    for q in range(nk):
                        xq = sim[q, rr, cc : cc + n]
                        eq = cen[q, :n]
                        for t in range(n):
                            a = np.float64(xq[t] - eq[t])
                            dbuf[t] += a * a
                    for t in range(n):
                        hit[t] = dbuf[t] <= thr[t]
                # few candidates can enter a list: skip words of 8 flags that are all zero
                kk = okey[o]
                for w in range(nword):
                    if hword[w] == 0:
                        continue
                    for t in range(8 * w, min(8 * w + 8, n)):
                        if not hit[t]:
                            continue
                        # a sorted list per centre (ascending (d, k)), written out here:
                        # calls with array arguments cost more than the update itself
                        d = dbuf[t]
                        b = t * nsel
                        c = cnt[t]
                        if c < nsel:
                            p = c
                            cnt[t] = c + 1
                        else:
                            last = b + nsel - 1
                            ld = hd[last]
                            lk = hk[last]
                            if d < ld or (d == ld and kk < lk):
                                # the last one leaves the list
                                if ld < amb_d[t] or (ld == amb_d[t] and lk < amb_k[t]):
                                    amb_d[t] = ld
                                    amb_k[t] = lk
                                p = nsel - 1
                            else:  # left out (equal to the last in d): remember it
                                if d < amb_d[t] or (d == amb_d[t] and kk < amb_k[t]):
                                    amb_d[t] = d
                                    amb_k[t] = kk
                                continue
                        while p > 0:
                            qd = hd[b + p - 1]
                            if qd < d or (qd == d and hk[b + p - 1] <= kk):
                                break
                            hd[b + p] = qd
                            hk[b + p] = hk[b + p - 1]
                            ho[b + p] = ho[b + p - 1]
                            p -= 1
                        hd[b + p] = d
                        hk[b + p] = kk
                        ho[b + p] = o
                        if cnt[t] >= nsel:
                            thr[t] = hd[b + nsel - 1]
            # weighted means over the chosen candidates, in ascending (score, key) order
            for t in range(n):
                b = t * nsel
                redo = False
                centre_ok = True
                for q in range(nk):
                    if np.isnan(cen[q, t]):
                        centre_ok = False
                if cnt[t] < nsel and guess[t] < np.inf and centre_ok:  # filter too tight
                    redo = True
                    nexact[1] += 1
                elif (cnt[t] >= nsel and amb_d[t] == hd[b + nsel - 1]
                      and amb_k[t] == hk[b + nsel - 1]):  # fmt: skip
                    redo = True  # equivalent candidates at the boundary
                    nexact[0] += 1
                if redo:
                    _select_exact(sim, cen, t, i, jc, h, sdi, sdj, skey, sidx, hd, hk, ho,
                                  cnt, nsel)  # fmt: skip
                    _sort_list(hd, hk, ho, b, min(cnt[t], nsel))
                m = min(cnt[t], nsel)
                tau_cur[t0 + t + 1] = hd[b + nsel - 1] if cnt[t] >= nsel else np.inf
                j = t0 + t
                nused[ii, j] = m
                if m == 0:
                    for bnd in range(nb):
                        out[bnd, ii, j] = np.nan
                    continue
                wsum = 0.0
                for e in range(m):
                    wsum += ow[ho[b + e]]
                for bnd in range(nb):
                    acc = 0.0
                    for e in range(m):
                        o = ho[b + e]
                        acc += ow[o] * val[bnd, i + h + odi[o], jc + h + t + odj[o]]
                    v = acc / wsum
                    if has_after:
                        v += after[bnd, i, jc + t]
                    out[bnd, ii, j] = v
        tau_prev, tau_cur = tau_cur, tau_prev


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise InvalidParameterError(
            f"threads must be a positive integer or None (all available CPUs); got {threads!r}."
        )
    return int(threads)


def _offsets(h: int, order: str, scale_a: float) -> tuple[np.ndarray, ...]:
    """Window offsets in visiting order, their tie keys and distance weights, and the
    sequence order of the reference program (for centres whose kept set is not unique).

    Visiting order: window rows by distance from the centre row, and in each row columns by
    distance (near candidates first, so that the lists fill with good ones early; one row at
    a time, so that reads stay in cache). Keys: "wang" the column-major window index
    (``Mins_matrix``, a total order), "imagefusion" the squared distance (ties then resolved
    by the heap in the C++ row-major sequence).
    """
    di, dj = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
    di, dj = di.ravel(), dj.ravel()
    dist2 = (di * di + dj * dj).astype(np.float64)
    key = ((dj + h) * (2 * h + 1) + (di + h)).astype(np.float64) if order == "wang" else dist2
    visit = np.lexsort((dj, np.abs(dj), di, np.abs(di)))
    w = 1.0 / (1.0 + np.sqrt(dist2) / scale_a)
    pos = np.empty(di.size, np.int64)
    pos[visit] = np.arange(di.size)
    seq = np.arange(di.size)  # row-major: the C++ window loops
    return (
        di[visit].astype(np.int64), dj[visit].astype(np.int64), key[visit], w[visit],
        di[seq].astype(np.int64), dj[seq].astype(np.int64), key[seq], pos[seq],
    )  # fmt: skip


def _pad(
    a: np.ndarray, h: int, sides: tuple[bool, bool, bool, bool], replicate: bool
) -> np.ndarray:
    """Pad the last two axes by ``h``: replicate (or NaN) at image edges, NaN elsewhere."""
    if replicate:
        p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(h, h), (h, h)], mode="edge")
    else:
        p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(h, h), (h, h)], mode="constant",
                   constant_values=np.nan)  # fmt: skip
    top, bottom, left, right = sides
    if replicate and h > 0:
        if not top:
            p[..., :h, :] = np.nan
        if not bottom:
            p[..., -h:, :] = np.nan
        if not left:
            p[..., :, :h] = np.nan
        if not right:
            p[..., :, -h:] = np.nan
    return p


def _fill_margins(p: np.ndarray, h: int, sides: tuple[bool, bool, bool, bool],
                  replicate: bool) -> None:  # fmt: skip
    """Fill the ``h``-wide margins of an array padded in place (its interior already set):
    edge replication on image-edge sides when ``replicate``, NaN everywhere else."""
    if h == 0:
        return
    top, bottom, left, right = sides
    p[..., :h, :] = np.nan
    p[..., -h:, :] = np.nan
    p[..., :, :h] = np.nan
    p[..., :, -h:] = np.nan
    if not replicate:
        return
    if left:
        p[..., h:-h, :h] = p[..., h:-h, h : h + 1]
    if right:
        p[..., h:-h, -h:] = p[..., h:-h, -h - 1 : -h]
    if top:
        p[..., :h, :] = p[..., h : h + 1, :]
        if not left:
            p[..., :h, :h] = np.nan
        if not right:
            p[..., :h, -h:] = np.nan
    if bottom:
        p[..., -h:, :] = p[..., -h - 1 : -h, :]
        if not left:
            p[..., -h:, :h] = np.nan
        if not right:
            p[..., -h:, -h:] = np.nan


def spatial_filter(
    sim: np.ndarray,
    val: np.ndarray,
    *,
    interior: tuple[int, int, int, int],
    edges: tuple[bool, bool, bool, bool],
    half_window: int,
    n_similar: int,
    distance_scale: float,
    order: str,
    border: str,
    after: np.ndarray | None = None,
    threads: int | None = 1,
    padded: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Similar-pixel filter of ``val`` ``(B, Y, X)`` guided by ``sim`` ``(K, Y, X)``.

    With ``padded=True`` both already carry ``half_window`` margins filled as
    :func:`_fill_margins` does (no copies are made); ``interior`` is then in unpadded pixels.

    ``interior`` is ``(r0, r1, c0, c1)``: the pixels to predict (their windows must lie in the
    block, or reach an image edge: ``edges`` says which block sides are image edges). NaN in
    ``sim`` marks a pixel that is never a candidate (and a centre that is not predicted).
    Returns ``(B, r1 - r0, c1 - c0)`` float64 and the count of candidates used.
    """
    r0, r1, c0, c1 = interior
    h = int(half_window)
    replicate = border == "replicate"
    if padded:
        simp, valp = sim, val
    else:
        simp = np.ascontiguousarray(_pad(sim, h, edges, replicate))
        valp = np.ascontiguousarray(_pad(val, h, edges, replicate))
    odi, odj, okey, ow, sdi, sdj, skey, sidx = _offsets(h, order, distance_scale)
    nb = val.shape[0]
    out = np.empty((nb, r1 - r0, c1 - c0), np.float64)
    nused = np.zeros((r1 - r0, c1 - c0), np.int32)
    nexact = np.zeros(2, np.int64)
    aft = np.ascontiguousarray(after, dtype=np.float64) if after is not None else np.empty(
        (nb, 0, 0), np.float64)  # fmt: skip
    ni = r1 - r0
    if ni == 0 or c1 == c0:
        return out, nused
    args = (simp, valp, aft, odi, odj, okey, ow, sdi, sdj, skey, sidx, r0, c0, c1, h,
            int(n_similar))  # fmt: skip
    nthreads = _resolve_threads(threads)
    if nthreads <= 1 or ni < 2:
        _sf_rows(*args, 0, ni, out, nused, nexact)
    else:
        nband = min(ni, 4 * nthreads)
        cuts = np.linspace(0, ni, nband + 1).astype(np.int64)
        with ThreadPoolExecutor(nthreads) as pool:
            jobs = [pool.submit(_sf_rows, *args, int(x), int(y), out, nused, np.zeros(2, np.int64))
                    for x, y in itertools.pairwise(cuts)]  # fmt: skip
            for job in jobs:
                job.result()
    return out, nused
