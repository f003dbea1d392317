"""Compute kernel of STARFM on raw numpy blocks (one band), exact to USDA STARFM v1.2.1.

This module holds no xarray/dask code: :func:`starfm_block` takes numpy arrays of one band for a
block of the fine grid (with halos) and returns the prediction for the block interior. The lazy
method (``xfusion.methods.starfm``) runs it through ``dask.array.map_overlap`` with
``boundary="none"`` and computes the global similarity threshold first with
:func:`similarity_threshold` (or :func:`slice_from_std` on a dask-computed standard deviation).

The hot loop is compiled with numba. For each interior row it walks the window offsets
``(di, dj)`` and, for a fixed offset, sweeps all centres of the row at once: the candidate of
centre ``j`` is then pixel ``j + dj`` of a single row, so the innermost loop is a branch-free,
contiguous, vectorisable loop over centres, and the sums of each centre are accumulated in the
fixed order (pair, window row, window column). Per-candidate terms (validity, residuals,
``1 / t_dis``, ``L1 + M2 - M1``) are computed once per block, not once per window, and the
distance factor ``1 / (1 + d / A)`` comes from a table of the window offsets.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from xfusion.errors import InvalidParameterError

__all__ = [
    "StarfmDiagnostics",
    "distance_weights",
    "halo_size",
    "slice_from_std",
    "similarity_threshold",
    "starfm_block",
    "uncertainty_terms",
    "decision_terms",
    "window_offsets",
]

#: USDA STARFM v1.2.1 defaults (x1e4 reflectance units).
USDA_DATA_RANGE: tuple[float, float] = (0.0, 10000.0)
USDA_FILL: int = -9999
USDA_NUM_SLICE: int = 40
USDA_UNCERTAINTY: float = 50.0


# ----------------------------------------------------------------------------------------------
# Parameters derived once (Python level)
# ----------------------------------------------------------------------------------------------
def window_offsets(window: int | tuple[int, int]) -> tuple[int, int]:
    """Return how far the STARFM window reaches before and after its centre.

    Parameters
    ----------
    window : int or (int, int)
        Window size in pixels (``int(2 * max_search_distance / resolution)`` in USDA STARFM);
        may be even. Or the reach ``(before, after)`` itself, for any other layout.

    Returns
    -------
    tuple of int
        ``(before, after)``: the window of centre ``i`` spans rows ``i - before ... i + after``
        (same for columns), with ``before = window // 2`` and
        ``after = window - 1 - window // 2``. For the USDA window of 50 that is 25 before and
        24 after (asymmetric); an odd window is symmetric (``window`` rows). Note that the
        spec's literal formula ``i - win/2 ... i + win/2 - 1`` with C integer division would
        span only ``win - 1`` rows for an odd ``win``; pass ``(win // 2, win // 2 - 1)`` to
        get that.

    Raises
    ------
    InvalidParameterError
        If ``window`` is not a positive integer or a pair of integers >= 0.
    """
    if isinstance(window, tuple | list) and len(window) == 2:
        if all(
            isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 0 for x in window
        ):
            return int(window[0]), int(window[1])
    elif not isinstance(window, bool) and isinstance(window, int | np.integer) and window >= 1:
        before = int(window) // 2
        return before, int(window) - 1 - before
    raise InvalidParameterError(
        f"STARFM window must be a positive integer number of pixels or a (before, after) pair "
        f"of integers >= 0; got {window!r}. Pass e.g. "
        "window=int(2 * max_search_distance / resolution) (50 for 750 m at 30 m)."
    )


def halo_size(window: int | tuple[int, int]) -> tuple[int, int, int, int]:
    """Return the minimal halo ``(top, bottom, left, right)`` a block needs for ``window``.

    Parameters
    ----------
    window : int or (int, int)
        Window size in pixels, or its reach ``(before, after)`` (see :func:`window_offsets`).

    Returns
    -------
    tuple of int
        ``(before, after, before, after)`` from :func:`window_offsets`. A larger halo is fine
        (``map_overlap`` with a symmetric ``depth = before`` is enough): the kernel never
        reads further than the window reaches.
    """
    before, after = window_offsets(window)
    return before, after, before, after


def uncertainty_terms(
    fine_uncertainty: float, coarse_uncertainty: float, *, reference: bool = True
) -> tuple[float, float, float]:
    """Return the combined uncertainties ``(sigma_lsr, sigma_msr, sigma_comb)``.

    Parameters
    ----------
    fine_uncertainty, coarse_uncertainty : float
        Uncertainty of one fine (``LANDSAT_UNCERTAINTY``) and one coarse
        (``MODIS_UNCERTAINTY``) observation, in the data's unit.
    reference : bool, default True
        Truncate each term to an integer like the USDA C program (``int`` casts).

    Returns
    -------
    tuple of float
        ``sigma_lsr = sqrt(u_M**2 + u_L**2)`` (spectral), ``sigma_msr = sqrt(2 u_M**2)``
        (temporal) and ``sigma_comb = sqrt(sigma_lsr**2 + sigma_msr**2)``; 70, 70 and 98 for the
        USDA defaults of 50 and 50.

    Raises
    ------
    InvalidParameterError
        If an uncertainty is negative or not finite.
    """
    for name, u in (
        ("fine_uncertainty", fine_uncertainty),
        ("coarse_uncertainty", coarse_uncertainty),
    ):
        if not (math.isfinite(u) and u >= 0):
            raise InvalidParameterError(
                f"{name} must be a finite number >= 0 in the data's unit; got {u!r}. "
                "USDA STARFM uses 50 for reflectance x1e4; use about 0.5-1 for LST in kelvin."
            )
    s_msr = math.sqrt(coarse_uncertainty**2 + coarse_uncertainty**2)
    s_lsr = math.sqrt(coarse_uncertainty**2 + fine_uncertainty**2)
    if reference:
        s_msr, s_lsr = float(int(s_msr)), float(int(s_lsr))
    s_comb = math.sqrt(s_msr**2 + s_lsr**2)
    if reference:
        s_comb = float(int(s_comb))
    return s_lsr, s_msr, s_comb


class DecisionTerms(NamedTuple):
    """The limits of STARFM's tests and the "perfect candidate" weight (working dtype)."""

    lsr: Any
    """Added to ``min_pairs |M1_c - L1_c|`` at a centre: the spectral filter's limit."""
    msr: Any
    """Added to ``min_pairs |M1_c - M2_c|`` at a centre: the temporal filter's limit."""
    similarity: np.ndarray
    """Per pair: a candidate is similar when ``|L1_k - L1_c|`` is below it (strict)."""
    unit_limit: Any
    """A kept candidate with ``t_dis`` below it gets the constant weight :attr:`unit_weight`."""
    unit_weight: Any
    """The constant weight of those "perfect" candidates."""


def _grid_floor(x: float) -> float:
    # floor of a ratio that may sit a rounding error below an integer (0.01 / 1e-4 etc.)
    return float(math.floor(x + 1e-7 * max(1.0, abs(x))))


def _grid_ceil(x: float) -> float:
    return float(math.ceil(x - 1e-7 * max(1.0, abs(x))))


def decision_terms(
    fine_uncertainty: float,
    coarse_uncertainty: float,
    thresholds: Any,
    *,
    distance_offset: float,
    temporal_distance: bool,
    reference: bool,
    dtype: Any = np.float32,
) -> DecisionTerms:
    """Return the limits of the similarity, filter and weight tests, in the working ``dtype``.

    **Weights that follow the data's unit.** USDA v1.2.1 gives a kept candidate the weight 1
    when ``t_dis < sigma_comb`` and else ``1 / (t_dis (1 + d / A))``, in x1e4 reflectance
    units where its ``+1`` (``off = distance_offset``) is one unit. Written in units of
    ``off``, the perfect weight is ``1 / off**k`` and the limit ``sigma_comb * off**(k - 1)``,
    with ``k`` the power of the data's unit in ``t_dis`` (1 for ``|r_lsr| + off``, 2 for
    ``(|r_msr| + off)(|r_lsr| + off)`` with two pairs): both then change with the unit exactly
    as ``1 / t_dis`` and ``t_dis`` do, so rescaling the data and every parameter in the data's
    unit by ``s`` multiplies the prediction by ``s``. With ``off = 1`` they are USDA's 1 and
    ``sigma_comb``.

    **Float mode compares on the grid of ``off``.** Data quantised in steps of ``off`` (x1e4
    integers, or the same values / 1e4 as floats) put residuals exactly on USDA's limits
    (``|r_lsr| + 1 = 100 = sigma_comb``); after rescaling, float rounding would decide those
    ties at random, and the weight rule jumps by a factor of about 100 there. Float mode
    therefore moves each limit to the middle between two steps of ``off`` (``off**k`` for
    ``t_dis``), on the side that gives the exact comparison's answer for quantised data:
    ``x < L`` becomes ``x < (ceil(L / q) - 1/2) q`` and ``x <= c + L`` becomes
    ``x <= c + (floor(L / q) + 1/2) q`` (``q`` the step). For quantised data nothing changes;
    for continuous data a limit moves by at most half a step, below the data's precision.
    Reference mode keeps the exact comparisons (and USDA's integer truncations).

    Parameters
    ----------
    fine_uncertainty, coarse_uncertainty : float
        ``LANDSAT_UNCERTAINTY`` and ``MODIS_UNCERTAINTY`` in the data's unit.
    thresholds : array-like of float
        Similarity threshold of each pair (:func:`similarity_threshold`).
    distance_offset : float
        The ``+1`` of ``t_dis`` in the data's unit (one step of its precision).
    temporal_distance : bool
        Whether ``t_dis`` has the temporal factor (two or more pairs).
    reference : bool
        USDA's integer truncations and exact comparisons; otherwise float mode.
    dtype : numpy.dtype, default float32
        Working dtype of the kernel; each term is computed in float64 and rounded once.

    Returns
    -------
    DecisionTerms
    """
    wt = np.dtype(dtype).type
    s_lsr, s_msr, s_comb = uncertainty_terms(
        fine_uncertainty, coarse_uncertainty, reference=reference
    )
    k = 2 if temporal_distance else 1
    off = float(distance_offset)
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    limit = s_comb * off ** (k - 1)
    if not reference:
        q = off**k
        s_lsr = (_grid_floor(s_lsr / off) + 0.5) * off
        s_msr = (_grid_floor(s_msr / off) + 0.5) * off
        thr = np.array([max(0.0, (_grid_ceil(x / off) - 0.5) * off) for x in thr])
        limit = max(0.0, (_grid_ceil(limit / q) - 0.5) * q)
    return DecisionTerms(wt(s_lsr), wt(s_msr), thr.astype(wt), wt(limit), wt(1.0 / off**k))


def slice_from_std(std: float, *, num_slice: int = USDA_NUM_SLICE, reference: bool = True) -> float:
    """Turn the global standard deviation of the fine image into the similarity threshold.

    Parameters
    ----------
    std : float
        Population standard deviation of the fine image over pixels strictly inside the data
        range (see :func:`similarity_threshold`); the lazy wrapper computes it with dask.
    num_slice : int, default 40
        ``NUM_SLICE_PURE_TEST`` of USDA STARFM.
    reference : bool, default True
        USDA rounding ``int(std * 2 / num_slice + 0.5)``; otherwise ``std * 2 / num_slice``.

    Returns
    -------
    float
        The threshold: candidate ``k`` is similar to centre ``c`` when
        ``|L1_k - L1_c| < threshold`` (strict). A threshold of 0 (constant fine image) admits
        no candidate, not even the centre, as in the USDA program.

    Raises
    ------
    InvalidParameterError
        If ``num_slice`` is not a positive integer or ``std`` is negative or not finite.
    """
    if isinstance(num_slice, bool) or not isinstance(num_slice, int | np.integer) or num_slice < 1:
        raise InvalidParameterError(
            f"num_slice must be a positive integer (USDA NUM_SLICE_PURE_TEST); got {num_slice!r}. "
            "The USDA default is 40."
        )
    if not (math.isfinite(std) and std >= 0):
        raise InvalidParameterError(
            f"The standard deviation of the fine image must be finite and >= 0; got {std!r}. "
            "Check that the fine image has valid pixels strictly inside data_range."
        )
    s = std * 2.0 / num_slice
    return float(int(s + 0.5)) if reference else float(s)


def similarity_threshold(
    fine: np.ndarray,
    /,
    *,
    num_slice: int = USDA_NUM_SLICE,
    data_range: tuple[float, float] | None = USDA_DATA_RANGE,
    reference: bool = True,
) -> float:
    """Compute the global STARFM similarity threshold of one fine image (numpy).

    Parameters
    ----------
    fine : numpy.ndarray
        The WHOLE fine image of one band at the pair date (never one block: the threshold is a
        global statistic). NaN marks invalid pixels.
    num_slice : int, default 40
        ``NUM_SLICE_PURE_TEST`` of USDA STARFM.
    data_range : tuple of float or None, default (0, 10000)
        Only pixels with ``lo < value < hi`` (strict) enter the standard deviation; ``None``
        uses every finite pixel.
    reference : bool, default True
        USDA rounding of the threshold (see :func:`slice_from_std`).

    Returns
    -------
    float
        ``slice_from_std(std, num_slice=num_slice, reference=reference)`` where ``std`` is the
        population standard deviation (``ddof=0``) computed in float64.

    Raises
    ------
    InvalidParameterError
        If no pixel lies strictly inside ``data_range``.
    """
    v = np.asarray(fine, dtype=np.float64)
    ok = np.isfinite(v)
    if data_range is not None:
        lo, hi = data_range
        ok &= (v > lo) & (v < hi)
    if not ok.any():
        raise InvalidParameterError(
            f"No fine pixel lies strictly inside data_range={data_range!r} (found {v.size} "
            "pixels, none usable), so the STARFM similarity threshold is undefined. Check the "
            "data's scale (reflectance x1e4 vs 0..1) and pass a matching data_range."
        )
    return slice_from_std(float(np.std(v[ok])), num_slice=num_slice, reference=reference)


def distance_weights(
    window: int | tuple[int, int], distance_scale: float, dtype: np.dtype
) -> np.ndarray:
    """Return the table ``1 / (1 + d / A)`` over the window offsets.

    Parameters
    ----------
    window : int or (int, int)
        Window size in pixels, or its reach ``(before, after)``.
    distance_scale : float
        ``A = max_search_distance / resolution`` (25 for the USDA defaults).
    dtype : numpy.dtype
        Working dtype of the kernel; the table is computed in float64 and rounded once to it.

    Returns
    -------
    numpy.ndarray
        Shape ``(before + after + 1,) * 2``; entry ``[di + before, dj + before]`` belongs to offset
        ``(di, dj)`` with ``d = sqrt(di**2 + dj**2)`` in pixels.
    """
    before, after = window_offsets(window)
    off = np.arange(-before, after + 1, dtype=np.float64)
    d = np.sqrt(off[:, None] ** 2 + off[None, :] ** 2)
    return (1.0 / (1.0 + d / float(distance_scale))).astype(dtype)


# ----------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _sweep1(lk, ak, bk, ek, vk, lc, ta, tb, sw, swv, cnt, thr, d0, one, zero, n, count):
    # One window offset for a run of n centres. Candidate views (lk..vk) and centre views
    # (lc, ta, tb, sw, swv, cnt) are aligned, so the loop is contiguous and branch-free.
    for t in range(n):
        keep = (abs(lk[t] - lc[t]) < thr) & ((ak[t] <= ta[t]) | (bk[t] <= tb[t]))
        w = one if ek[t] < zero else ek[t] * d0
        w = w if keep else zero
        sw[t] += w
        swv[t] += w * vk[t]
        if count:
            cnt[t] += keep


@njit(cache=True, inline="always")
def _sweep4(lk, ak, bk, ek, vk, lc, ta, tb, sw, swv, cnt, thr, d0, d1, d2, d3, one, zero, n,
            count):  # fmt: skip
    # Four consecutive window columns for a run of n centres: candidate views start at the
    # first offset and hold n + 3 pixels. Centre terms and sums are loaded once per four
    # candidates; each centre still adds its candidates in column order.
    for t in range(n):
        c = lc[t]
        x = ta[t]
        y = tb[t]
        s = sw[t]
        sv = swv[t]
        k = (abs(lk[t] - c) < thr) & ((ak[t] <= x) | (bk[t] <= y))
        w = one if ek[t] < zero else ek[t] * d0
        w = w if k else zero
        s += w
        sv += w * vk[t]
        nk = np.int32(k)
        u = t + 1
        k = (abs(lk[u] - c) < thr) & ((ak[u] <= x) | (bk[u] <= y))
        w = one if ek[u] < zero else ek[u] * d1
        w = w if k else zero
        s += w
        sv += w * vk[u]
        nk += k
        u = t + 2
        k = (abs(lk[u] - c) < thr) & ((ak[u] <= x) | (bk[u] <= y))
        w = one if ek[u] < zero else ek[u] * d2
        w = w if k else zero
        s += w
        sv += w * vk[u]
        nk += k
        u = t + 3
        k = (abs(lk[u] - c) < thr) & ((ak[u] <= x) | (bk[u] <= y))
        w = one if ek[u] < zero else ek[u] * d3
        w = w if k else zero
        s += w
        sv += w * vk[u]
        nk += k
        sw[t] = s
        swv[t] = sv
        if count:
            cnt[t] += nk


@njit(cache=True)
def _row(ii, lm, aa, bb, ee, vv, lcen, tacen, tbcen, thr, dtab, r0, c0, c1, before, after,
         sw, swv, cnt, one, zero, count):  # fmt: skip
    npairs, nrow, ncol = lm.shape
    i = r0 + ii
    swr = sw[ii]
    swvr = swv[ii]
    cntr = cnt[ii]
    tar = tacen[ii]
    tbr = tbcen[ii]
    rlo = max(0, i - before)
    rhi = min(nrow, i + after + 1)
    for p in range(npairs):
        lcr = lcen[p, ii]
        th = thr[p]
        for r in range(rlo, rhi):
            di = r - i
            lrow = lm[p, r]
            arow = aa[p, r]
            brow = bb[p, r]
            erow = ee[p, r]
            vrow = vv[p, r]
            drow = dtab[di + before]
            dj = -before
            while dj <= after:
                # main run: centres whose four candidates dj..dj+3 all lie inside the block
                m0 = max(c0, -dj)
                m1 = min(c1, ncol - dj - 3)
                if dj + 3 <= after and m1 > m0:
                    n = m1 - m0
                    k0 = m0 + dj
                    a0 = m0 - c0
                    e = dj + before
                    _sweep4(lrow[k0:k0 + n + 3], arow[k0:k0 + n + 3], brow[k0:k0 + n + 3],
                            erow[k0:k0 + n + 3], vrow[k0:k0 + n + 3], lcr[a0:a0 + n],
                            tar[a0:a0 + n], tbr[a0:a0 + n], swr[a0:a0 + n], swvr[a0:a0 + n],
                            cntr[a0:a0 + n], th, drow[e], drow[e + 1], drow[e + 2],
                            drow[e + 3], one, zero, n, count)  # fmt: skip
                    ngroup = 4
                else:
                    m0 = m1 = c1  # no main run: the single-offset passes cover every centre
                    ngroup = min(4, after + 1 - dj)
                # the other centres (near the block edges), offset by offset
                for q in range(dj, dj + ngroup):
                    lo = max(c0, -q)
                    hi = min(c1, ncol - q)
                    for a, b in ((lo, min(hi, m0)), (max(lo, m1), hi)):
                        n = b - a
                        if n <= 0:
                            continue
                        k0 = a + q
                        a0 = a - c0
                        _sweep1(lrow[k0:k0 + n], arow[k0:k0 + n], brow[k0:k0 + n],
                                erow[k0:k0 + n], vrow[k0:k0 + n], lcr[a0:a0 + n],
                                tar[a0:a0 + n], tbr[a0:a0 + n], swr[a0:a0 + n],
                                swvr[a0:a0 + n], cntr[a0:a0 + n], th, drow[q + before], one,
                                zero, n, count)  # fmt: skip
                dj += ngroup


@njit(cache=True, nogil=True)
def _accumulate(lm, aa, bb, ee, vv, lcen, tacen, tbcen, thr, dtab, r0, c0, c1, before, after,
                sw, swv, cnt, one, zero, count, ii0, ii1):  # fmt: skip
    # interior rows ii0 <= ii < ii1; releases the GIL so threads can share one block
    for ii in range(ii0, ii1):
        _row(ii, lm, aa, bb, ee, vv, lcen, tacen, tbcen, thr, dtab, r0, c0, c1, before,
             after, sw, swv, cnt, one, zero, count)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Public block function
# ----------------------------------------------------------------------------------------------
class StarfmDiagnostics(NamedTuple):
    """Prediction of :func:`starfm_block` with its per-pixel diagnostics."""

    prediction: np.ndarray
    """Prediction for the block interior (as returned without diagnostics)."""
    n_candidates: np.ndarray
    """int32 number of kept candidates (over all pairs) of each interior pixel."""
    weight_sum: np.ndarray
    """Sum of the weights of the kept candidates (working dtype); 0 where there is none."""


def _as_stack(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InvalidParameterError(
            f"{name} must be (npairs, H, W) or (H, W) for one band; got shape {a.shape!r}. "
            "Call the kernel once per band."
        )
    return a


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


def _normalise_halo(halo: int | Sequence[int]) -> tuple[int, int, int, int]:
    h = (halo,) * 4 if isinstance(halo, int | np.integer) else tuple(halo)
    if len(h) != 4 or any(int(x) != x or x < 0 for x in h):
        raise InvalidParameterError(
            f"halo must be an int >= 0 or (top, bottom, left, right) ints >= 0; got {halo!r}. "
            "Pass the rows/columns of the block that are halo on each side (0 at an image edge)."
        )
    return int(h[0]), int(h[1]), int(h[2]), int(h[3])


class _BlockInputs(NamedTuple):
    l1: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    interior: tuple[int, int, int, int]
    thresholds: np.ndarray
    distance_scale: float
    before: int
    after: int


def _check_block_inputs(fine: Any, coarse_pair: Any, coarse_target: Any, *, window: Any,
                        halo: Any, thresholds: Any, distance_scale: float | None,
                        distance_offset: float) -> _BlockInputs:
    """Validate the inputs shared by the numba and torch STARFM kernels."""
    before, after = window_offsets(window)
    top, bottom, left, right = _normalise_halo(halo)

    l1 = _as_stack(fine, "fine")
    m1 = _as_stack(coarse_pair, "coarse_pair")
    m2 = np.asarray(coarse_target)
    if m1.shape != l1.shape or m2.shape != l1.shape[1:]:
        raise InvalidParameterError(
            f"Shapes do not match: fine {l1.shape!r}, coarse_pair {m1.shape!r}, coarse_target "
            f"{m2.shape!r}. fine and coarse_pair must be (npairs, H, W), coarse_target (H, W), "
            "all on the fine grid."
        )
    npairs, nrow, ncol = l1.shape
    if npairs < 1:
        raise InvalidParameterError("STARFM needs at least one fine/coarse pair; got npairs=0.")
    r0, r1, c0, c1 = top, nrow - bottom, left, ncol - right
    if r1 < r0 or c1 < c0:
        raise InvalidParameterError(
            f"halo {halo!r} is larger than the block {l1.shape[1:]!r}; the interior would be "
            "empty. Use smaller halos or larger chunks."
        )
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (npairs,))
    if not np.all(np.isfinite(thr)) or np.any(thr < 0):
        raise InvalidParameterError(
            f"thresholds must be finite and >= 0, one per pair ({npairs}); got {thresholds!r}. "
            "Compute them with similarity_threshold(fine_of_that_pair)."
        )
    if distance_scale is None:
        distance_scale = (before + after + 1) / 2.0
    if not (math.isfinite(distance_scale) and distance_scale > 0):
        raise InvalidParameterError(
            f"distance_scale (max_search_distance / resolution) must be > 0; got "
            f"{distance_scale!r}. USDA uses 750 m / 30 m = 25."
        )
    if not (math.isfinite(distance_offset) and distance_offset > 0):
        raise InvalidParameterError(
            f"distance_offset (the +1 of t_dis) must be finite and > 0, else t_dis can be 0 and "
            f"its inverse infinite; got {distance_offset!r}. USDA uses 1 (one x1e4 reflectance "
            "unit); use one unit of the data's precision, e.g. 0.01 for LST in kelvin."
        )
    return _BlockInputs(l1, m1, m2, (r0, r1, c0, c1), thr, float(distance_scale), before, after)


def starfm_block(
    fine: np.ndarray,
    coarse_pair: np.ndarray,
    coarse_target: np.ndarray,
    /,
    *,
    window: int | tuple[int, int],
    thresholds: float | Sequence[float],
    halo: int | Sequence[int] = 0,
    fine_uncertainty: float = USDA_UNCERTAINTY,
    coarse_uncertainty: float = USDA_UNCERTAINTY,
    distance_scale: float | None = None,
    distance_offset: float = 1.0,
    data_range: tuple[float, float] | None = USDA_DATA_RANGE,
    reference: bool = True,
    fill_value: float = USDA_FILL,
    temporal_distance: bool | None = None,
    dtype: str | np.dtype = "float32",
    threads: int | None = None,
    diagnostics: bool = False,
) -> np.ndarray | StarfmDiagnostics:
    """Predict one band of one target date with STARFM on a block of the fine grid.

    Parameters
    ----------
    fine : numpy.ndarray
        ``L1``: fine image(s) at the pair date(s), shape ``(npairs, H, W)`` or ``(H, W)``.
    coarse_pair : numpy.ndarray
        ``M1``: coarse image(s) at the pair date(s) on the fine grid, same shape as ``fine``.
    coarse_target : numpy.ndarray
        ``M2``: coarse image at the prediction date on the fine grid, shape ``(H, W)``.
    window : int or (int, int)
        Window size in pixels, may be even: the window of centre ``i`` spans rows
        ``i - window//2 ... i + window - 1 - window//2`` (USDA), same for columns. A pair
        ``(before, after)`` gives the reach directly (see :func:`window_offsets`).
    thresholds : float or sequence of float
        Similarity threshold of each pair, computed GLOBALLY by :func:`similarity_threshold`
        from the whole fine image of that pair (never from the block).
    halo : int or (top, bottom, left, right), default 0
        Rows/columns of the block that are halo on each side. Only the interior is predicted;
        windows read into the halo. Where a side has no halo the block edge is treated as the
        image edge (positions outside the block are never candidates), which is what
        ``map_overlap(boundary="none")`` needs. Each halo must be 0 (image edge) or at least
        :func:`halo_size` on that side; the kernel cannot check this.
    fine_uncertainty, coarse_uncertainty : float, default 50
        ``LANDSAT_UNCERTAINTY`` and ``MODIS_UNCERTAINTY`` in the data's unit.
    distance_scale : float, optional
        ``A = max_search_distance / resolution`` in pixels; default
        ``(before + after + 1) / 2`` (``window / 2``).
    distance_offset : float, default 1
        The ``+1`` of ``t_dis = |r_lsr| + 1`` (one x1e4 reflectance unit); scale it with the
        data's unit (e.g. 0.01 K for LST).
    data_range : tuple of float or None, default (0, 10000)
        A value is valid when finite and ``lo <= v <= hi``; ``None`` checks finiteness only.
        In reference mode the output is also filled where ``P`` is not strictly inside it.
    reference : bool, default True
        USDA integer behaviour: uncertainties int-truncated (:func:`uncertainty_terms`), output
        ``floor(P + 0.5)`` as int32 with ``fill_value`` where no candidate is kept or ``P`` is
        not strictly inside ``data_range``. ``False`` ("float" mode): no truncations, output
        ``P`` in the working dtype, NaN where no candidate is kept.
    fill_value : float, default -9999
        Output fill of reference mode (int32 output when integral, else float64).
    temporal_distance : bool, optional
        Use ``t_dis = (|r_msr| + off)(|r_lsr| + off)``; default: only with two or more pairs
        (USDA drops the temporal term for a single pair).
    dtype : {"float32", "float64"}, default "float32"
        Working dtype of per-candidate terms, weights and sums. float32 keeps the USDA parity
        (see Notes) and is about twice as fast.
    threads : int, optional
        Threads over bands of rows (the compiled loop releases the GIL). Default: the CPUs
        available to this process. Pass 1 inside an already threaded scheduler (dask).
    diagnostics : bool, default False
        Also return the number of kept candidates and the weight sum.

    Returns
    -------
    numpy.ndarray or StarfmDiagnostics
        Prediction of shape ``(H - top - bottom, W - left - right)``; with ``diagnostics`` a
        :class:`StarfmDiagnostics` ``(prediction, n_candidates, weight_sum)``.

    Raises
    ------
    InvalidParameterError
        On inconsistent shapes or invalid parameter values.

    Notes
    -----
    Per pair ``p`` and valid candidate ``k`` (``L1``, ``M1`` and ``M2`` valid; USDA checks
    only ``L1`` and ``M1``, a fill ``M2`` would give garbage there), all in the working dtype
    after casting the inputs: ``a = |M1 - L1|``, ``b = |M1 - M2|``, ``v = L1 + M2 - M1``,
    ``t = a + off`` (single pair) or ``(b + off) * (a + off)``. At centre ``c`` with pairs
    ``q`` valid at ``c``: ``ta = min_q a_c + sigma_lsr``, ``tb = min_q b_c + sigma_msr``.
    Candidate ``k`` of pair ``p`` is kept when ``|L1_k - L1_c| < threshold_p`` (``L1_c`` of
    pair ``p``) and (``a_k <= ta`` or ``b_k <= tb``). Its weight is ``1 / off**k`` when
    ``t < sigma_comb * off**(k - 1)`` (``k`` = 1 for one pair, 2 with the temporal term; 1 and
    ``sigma_comb`` for USDA's ``off = 1``) and else ``w = (1 / t) * D(di, dj)`` with the table
    ``D = 1 / (1 + d / A)`` of :func:`distance_weights`; this equals
    ``1 / (t (1 + d / A))`` up to one rounding. In float mode the limits of the three tests
    sit half a step of ``off`` from the exact ones (:func:`decision_terms`), so that data
    quantised in steps of ``off`` are decided as in USDA whatever their scale. ``sum w`` and
    ``sum w v`` are accumulated in the order pair, window row, window column;
    ``P = sum w v / sum w`` in float64.

    On ``synthetic600`` (window 50) the float32 kernel matches the USDA v1.2.1 output within
    +-1 on every pixel with the same fill pattern.

    The cost is about ``npairs * window**2`` candidate tests per interior pixel; no
    per-window copy is made and memory is ``~8 npairs`` arrays of the block.

    References
    ----------
    Gao, F., Masek, J., Schwaller, M., Hall, F. (2006). On the blending of the Landsat and
    MODIS surface reflectance: predicting daily Landsat surface reflectance. IEEE TGRS 44(8),
    2207-2218.
    """
    wt = np.dtype(dtype)
    if wt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InvalidParameterError(
            f"dtype must be 'float32' or 'float64'; got {dtype!r}. float32 is the default."
        )
    chk = _check_block_inputs(fine, coarse_pair, coarse_target, window=window, halo=halo,
                              thresholds=thresholds, distance_scale=distance_scale,
                              distance_offset=distance_offset)
    l1, m1, m2, thr, distance_scale = chk.l1, chk.m1, chk.m2, chk.thresholds, chk.distance_scale
    before, after = chk.before, chk.after
    r0, r1, c0, c1 = chk.interior
    npairs = l1.shape[0]
    if temporal_distance is None:
        temporal_distance = npairs > 1
    terms = decision_terms(fine_uncertainty, coarse_uncertainty, thr,
                           distance_offset=distance_offset,
                           temporal_distance=bool(temporal_distance), reference=reference,
                           dtype=wt)  # fmt: skip

    # ---- per-candidate terms, once per block (working dtype) -----------------------------
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        L = l1.astype(wt)
        M1 = m1.astype(wt)
        M2 = np.broadcast_to(m2.astype(wt), L.shape)
        valid = np.isfinite(L) & np.isfinite(M1) & np.isfinite(M2)
        if data_range is not None:
            lo, hi = (wt.type(x) for x in data_range)
            for x in (L, M1, M2):
                valid &= (x >= lo) & (x <= hi)
        off = wt.type(distance_offset)
        a = np.abs(M1 - L)
        b = np.abs(M1 - M2)
        t = (b + off) * (a + off) if temporal_distance else a + off
        unit = t < terms.unit_limit
        # e = 1 / t, or -1 where the weight is 1 (t < sigma_comb), 0 where invalid
        e = np.where(unit, wt.type(-1), wt.type(1) / t)
        e = np.where(valid, e, wt.type(0)).astype(wt)
        v = np.where(valid, L + M2 - M1, wt.type(0)).astype(wt)
        lm = np.where(valid, L, wt.type(np.nan)).astype(wt)
        a = np.where(valid, a, wt.type(0)).astype(wt)
        b = np.where(valid, b, wt.type(0)).astype(wt)
        # centre terms over the interior
        vc = valid[:, r0:r1, c0:c1]
        any_c = vc.any(axis=0)
        ta = np.where(vc, a[:, r0:r1, c0:c1], wt.type(np.inf)).min(axis=0) + terms.lsr
        tb = np.where(vc, b[:, r0:r1, c0:c1], wt.type(np.inf)).min(axis=0) + terms.msr
        ta = np.where(any_c, ta, wt.type(np.nan)).astype(wt)
        tb = np.where(any_c, tb, wt.type(np.nan)).astype(wt)
        lcen = np.ascontiguousarray(lm[:, r0:r1, c0:c1])
    dtab = distance_weights(window, distance_scale, wt)
    thr_w = terms.similarity

    sw = np.zeros((r1 - r0, c1 - c0), wt)
    swv = np.zeros_like(sw)
    cnt = np.zeros((r1 - r0, c1 - c0) if diagnostics else (r1 - r0, 0), np.int32)
    args = (lm, a, b, e, v, lcen, ta, tb, thr_w, dtab, r0, c0, c1, before, after, sw, swv, cnt,
            terms.unit_weight, wt.type(0), bool(diagnostics))  # fmt: skip
    nthreads = _resolve_threads(threads)
    ni = r1 - r0
    if nthreads <= 1 or ni < 2:
        _accumulate(*args, 0, ni)
    else:
        # row bands, several per thread for load balance (edge rows have shorter windows);
        # every pixel is computed by exactly one thread, so results do not depend on threads
        nband = min(ni, 4 * nthreads)
        cuts = np.linspace(0, ni, nband + 1).astype(np.int64)
        with ThreadPoolExecutor(nthreads) as pool:
            jobs = [
                pool.submit(_accumulate, *args, int(x), int(y)) for x, y in itertools.pairwise(cuts)
            ]
            for job in jobs:
                job.result()

    with np.errstate(invalid="ignore", divide="ignore"):
        p = swv.astype(np.float64) / sw.astype(np.float64)
    has = sw > 0
    if reference:
        ok = has
        if data_range is not None:
            ok = ok & (p > data_range[0]) & (p < data_range[1])
        rounded = np.floor(p + 0.5)
        if math.isfinite(fill_value) and float(fill_value).is_integer():
            out = np.where(ok, rounded, fill_value).astype(np.int32)
        else:
            out = np.where(ok, rounded, fill_value)
    else:
        out = np.where(has, p, np.nan).astype(wt)
    if diagnostics:
        return StarfmDiagnostics(out, cnt, sw)
    return out
