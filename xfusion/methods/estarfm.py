"""ESTARFM (Zhu et al. 2010) on fusion cubes: lazy, chunk-invariant, two reference variants.

The per-pixel work is the numba kernel of :mod:`xfusion.methods._estarfm_kernel`, mapped over
the spatial chunks of the cube with a halo of ``half_window`` pixels by
:func:`xfusion.engine.run.map_blocks_halo`. The similarity thresholds are GLOBAL statistics
(the standard deviation of each whole fine image): they are computed first, lazily, by an exact
reduction over the chunks (Shewchuk expansions, see
:func:`xfusion.methods._estarfm_kernel.threshold_moments`) and fed to the block tasks as a
small dask array, so the output does not depend on the chunking, bit for bit. With
``block=500`` the image is instead cut into Zhu's 500 x 500 tiles (anchored at the origin,
whatever the Dask chunks), each predicted on its own as the reference programs do.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from functools import cache
from typing import Any, Literal

import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import (
    assemble_result,
    float_data,
    match_times,
    require_band_pairs,
    resolve_roles,
    select_bracket,
    select_targets,
    sort_targets,
)
from xfusion.cube.validate import TIME, observed_times
from xfusion.engine.device import kernel_threads as _kernel_threads
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    EmptyPredictionWarning,
    InvalidParameterError,
    NoOverlapError,
    TimeAxisError,
)
from xfusion.methods._estarfm_params import (
    ESTARFM_PRESETS,
    ESTARFM_VARIANTS,
    NAME,
    PARAMS,
    EstarfmParams,
    EstarfmVariant,
    _number,
    _resolve_params,
    halo,
    job_halo,
)
from xfusion.methods._output import integer_layout, pick_plane, to_integer

__all__ = [
    "ESTARFM_PRESETS",
    "ESTARFM_VARIANTS",
    "PARAMS",
    "EstarfmParams",
    "EstarfmVariant",
    "estarfm",
    "halo",
    "job_halo",
]

# --------------------------------------------------------------------------------------------
# helpers of the public function


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _times(ds: xr.Dataset) -> np.ndarray:
    return np.asarray(ds.indexes[TIME].values, dtype="datetime64[ns]")


def _fmt_dates(ds: xr.Dataset, idx: Any) -> list[str]:
    times = _times(ds)
    return [str(np.datetime64(t, "D")) for t in times[np.asarray(idx, dtype=np.intp)]]


def _pair_positions(ds: xr.Dataset, roles: Any) -> np.ndarray:
    ok = np.ones(ds.sizes[TIME], dtype=bool)
    for n in (*roles.fine, *roles.coarse):
        obs = observed_times(ds, n)
        if obs is not None:
            ok &= obs
    return np.flatnonzero(ok)


def _is_date_pair(value: Any) -> bool:
    return isinstance(value, tuple | list) and len(value) == 2 and not any(
        isinstance(v, tuple | list) for v in value
    )


def _choose_pairs(
    ds: xr.Dataset, roles: Any, tidx: np.ndarray, pairs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(before, after)`` pair positions per target (nearest bracket or explicit dates)."""
    if pairs is None or (isinstance(pairs, str) and pairs == "bracket"):
        pos = _pair_positions(ds, roles)
        bad = [t for t in tidx if not (np.any(pos < t) and np.any(pos > t))]
        if bad:
            have = _fmt_dates(ds, pos)
            raise NoOverlapError(
                f"estarfm() predicts each target from a pair (a date with both fine and coarse "
                f"observed) BEFORE and a pair AFTER it, but the target(s) "
                f"{_fmt_dates(ds, bad)!r} have no pair on one side. Pair dates on the cube: "
                f"{have!r}. Predict only dates between two pair dates (targets=[...]), or add "
                "a fine image before/after those targets."
            )
        return select_bracket(ds, roles, tidx, "bracket", method=NAME)
    if isinstance(pairs, str):
        parts = [p.strip() for p in pairs.split(",")]
        if len(parts) != 2:
            raise InvalidParameterError(
                f"Unknown pairs={pairs!r} for estarfm(). Use 'bracket' (default) or "
                "(before, after) pair dates, e.g. pairs=('2020-03-08', '2020-04-02')."
            )
        pairs = tuple(parts)
    if isinstance(pairs, Mapping):
        if not all(_is_date_pair(v) for v in pairs.values()):
            raise InvalidParameterError(
                "estarfm() pairs= as a mapping must map each target to a (before, after) "
                f"tuple of pair dates; got {pairs!r}."
            )
        lookup = {int(match_times(ds, k, what="target in pairs=")[0]): v for k, v in pairs.items()}
        missing = [t for t in tidx if int(t) not in lookup]
        if missing:
            raise TimeAxisError(
                f"pairs= maps targets to (before, after) pairs but has no entry for target(s) "
                f"{_fmt_dates(ds, missing)!r}."
            )
        pairs = [tuple(lookup[int(t)]) for t in tidx]
    elif isinstance(pairs, list) and pairs and all(_is_date_pair(p) for p in pairs):
        pairs = [tuple(p) for p in pairs]
    elif _is_date_pair(pairs):
        pairs = tuple(pairs)
    else:
        raise InvalidParameterError(
            f"estarfm() pairs= must be 'bracket' (default), one (before, after) tuple of pair "
            f"dates, one tuple per target, or a mapping target -> tuple; got {pairs!r}."
        )
    before, after = select_bracket(ds, roles, tidx, pairs, method=NAME)
    bad = [k for k in range(len(tidx)) if not before[k] < tidx[k] < after[k]]
    if bad:
        k = bad[0]
        raise InvalidParameterError(
            f"estarfm() needs pair dates t1 < target < t2, but target "
            f"{_fmt_dates(ds, [tidx[k]])[0]!r} got the pairs "
            f"({_fmt_dates(ds, [before[k]])[0]!r}, {_fmt_dates(ds, [after[k]])[0]!r}). Give "
            "(before, after) dates around each target."
        )
    return before, after


def _output_dtype(ds: xr.Dataset, name: str, work: xr.DataArray, fill: float | None) -> tuple[
    np.dtype, float | None
]:  # fmt: skip
    """Output dtype and fill of fine variable ``name`` (see :mod:`xfusion.methods._output`)."""
    layout = integer_layout(ds, name, fill=fill, method=NAME)
    return (np.dtype(work.dtype), None) if layout is None else layout


def _to_output(pred: np.ndarray, dtype: np.dtype, fill: float | None) -> np.ndarray:
    """Kernel prediction (float64, NaN gaps) -> output dtype: floats keep NaN, integers are
    truncated (Zhu's programs) with the fill value in the gaps and out of range."""
    if np.issubdtype(dtype, np.floating):
        return pred.astype(dtype, copy=False)
    assert fill is not None
    return to_integer(pred, dtype, fill, rounding="trunc")


# --------------------------------------------------------------------------------------------
# global thresholds (exact, chunk-invariant) and the block tasks


def _moments_block(x: np.ndarray, *, params: EstarfmParams) -> np.ndarray:
    """``(T, Q, nb, y, x)`` block -> exact moments ``(T, 2, nb, 1, MOMENT_SIZE)``.

    ``Q = 5`` (F1, C1, F2, C2, C0) or, for "zhu" whose thresholds only see the fine images,
    ``Q = 2`` (F1, F2).
    """
    from xfusion.methods._estarfm_kernel import MOMENT_SIZE, threshold_moments

    nt, q, nb = x.shape[:3]
    out = np.zeros((nt, 2, nb, 1, MOMENT_SIZE), dtype=np.float64)
    for t in range(nt):
        five = x[t] if q == 5 else (x[t, 0], x[t, 0], x[t, 1], x[t, 1], x[t, 1])
        out[t, :, :, 0] = threshold_moments(
            *five, variant=params.variant, fill=params.fill, data_range=params.data_range,
            first_band_only=params.zhu_first_band_only and params.variant == "zhu",
        )
    return out


def _combine_moments(
    parts: np.ndarray, *, params: EstarfmParams, labels: Sequence[Sequence[str]]
) -> np.ndarray:
    """Moments of all blocks ``(T, 2, nb, ..., MOMENT_SIZE)`` -> thresholds ``(T, 2, nb)``.

    Raises InvalidParameterError when ``data_range`` excludes every valid pixel of a fine
    image (a unit mismatch); warns when a fine image has no valid pixel at all.
    """
    from xfusion.methods._estarfm_kernel import MOMENT_SIZE, threshold_from_moments
    from xfusion.methods._estarfm_params import AUTO_REFLECTANCE_MAX, AUTO_SCALE

    nt, two, nb = parts.shape[:3]
    flat = parts.reshape(nt, two, nb, -1, MOMENT_SIZE)
    out = np.zeros((nt, two + 1, nb), dtype=np.float64)
    out[:, two] = 1.0  # the unit scale of data_range (preset "auto": 1e-4 on 0..1 data)
    lo, hi = params.data_range
    for t in range(nt):
        thr, summary = threshold_from_moments(flat[t], num_class=params.num_class,
                                              threshold_std=params.threshold_std)
        for k in range(two):
            for b in range(nb):
                nvalid, ninr, vmin, vmax, overflow = summary[k, b]
                label = labels[t][2 * b + k] if labels else "the fine image"
                if overflow:
                    raise InvalidParameterError(
                        f"estarfm(): {label} has values too large to square in float64 "
                        "(|v| > 1e154), so its standard deviation overflows. Check its scale "
                        "and declare fill values such as -3.4e38 as nodata (or fill=...)."
                    )
                if nvalid == 0:
                    warnings.warn(
                        EmptyPredictionWarning(
                            f"estarfm(): {label} has no valid pixel (0 of its pixels), so every "
                            "prediction from that pair is NaN (or the fill value)."
                        ),
                        stacklevel=2,
                    )
                elif ninr == 0:
                    raise InvalidParameterError(
                        f"estarfm() data_range=({lo:g}, {hi:g}) excludes every valid pixel of "
                        f"{label}: its values lie in [{vmin:g}, {vmax:g}]. Pass a data_range in "
                        "the data's unit, e.g. data_range=(0, 10000) (preset='zhu') for "
                        "reflectance x1e4 or (0, 1) (preset='reflectance') for 0..1 reflectance, "
                        "or rescale the data."
                    )
        out[t, :two] = thr
        if params.auto_unit:
            valid = summary[..., 0] > 0
            big = np.maximum(np.abs(summary[..., 2]), np.abs(summary[..., 3]))
            if valid.any() and float(big[valid].max()) <= AUTO_REFLECTANCE_MAX:
                out[t, two] = AUTO_SCALE
                if params.variant == "zhu" and params.fill is not None:
                    # 0..1 data have no fill value: gaps leave the std (preset "reflectance")
                    out[t, :two] = threshold_from_moments(
                        flat[t], num_class=params.num_class,
                        threshold_std=params.threshold_std, drop_fill=params.fill)[0]
    return out


def _thresholds(x: Any, *, params: EstarfmParams, labels: list[list[str]], token: str) -> Any:
    """Thresholds ``(T, 3, nb, 1, 1)`` of the stacked inputs ``(T, 5, nb, y, x)``: the
    similarity thresholds of the two pairs, then the unit scale of ``data_range`` (1, or 1e-4
    where the "auto" preset found 0..1 data).

    numpy in -> numpy out (computed now); dask in -> a lazy dask array: one exact reduction
    over the chunks (no compute here).
    """
    from xfusion.methods._estarfm_kernel import MOMENT_SIZE

    if not _is_dask(x):
        thr = _combine_moments(_moments_block(x, params=params), params=params, labels=labels)
        return thr[..., None, None]
    import dask.array as da

    nb = x.shape[2]
    ny, nx = (len(c) for c in x.chunks[3:])
    parts = da.map_blocks(
        _moments_block,
        x,
        params=params,
        chunks=(x.chunks[0], (2,), (nb,), (1,) * ny, (MOMENT_SIZE,) * nx),
        dtype=np.float64,
        meta=np.empty((0,) * 5, np.float64),
        name=f"xfusion.{NAME}-moments-{token}",
    )
    parts = parts.rechunk({3: -1, 4: -1})
    return da.map_blocks(
        _combine_block,
        parts,
        params=params,
        labels=labels,
        chunks=(parts.chunks[0], (3,), (nb,), (1,), (1,)),
        dtype=np.float64,
        meta=np.empty((0,) * 5, np.float64),
        name=f"xfusion.{NAME}-threshold-{token}",
    )


def _combine_block(
    parts: np.ndarray, *, params: EstarfmParams, labels: Any,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    nt, _, nb = parts.shape[:3]
    if block_info is None or None not in block_info:  # meta probing
        return np.zeros((nt, 3, nb, 1, 1), np.float64)
    t0 = block_info[None]["array-location"][0][0]
    thr = _combine_moments(parts, params=params, labels=labels[t0 : t0 + nt])
    return thr[..., None, None]


def _kernel_kwargs(params: EstarfmParams, truncate: bool) -> dict[str, Any]:
    return {
        "half_window": params.half_window,
        "variant": params.variant,
        "num_class": params.num_class,
        "data_range": params.data_range,
        "fill": params.fill,
        "change_min_fraction": params.change_min_fraction,
        "p_value": params.p_value,
        "v_max": params.v_max,
        "min_candidates": params.min_candidates,
        "eps_distance": params.eps_distance,
        "eps_time": params.eps_time,
        "zhu_first_band_only": params.zhu_first_band_only and params.variant == "zhu",
        "use_local_tol": params.use_local_tol,
        "use_quality_weighted_regression": params.use_quality_weighted_regression,
        "truncate": truncate,
        "dtype": params.dtype,
    }


def _estarfm_tasks(
    x: np.ndarray,
    thr: np.ndarray,
    *,
    halo_sides: tuple[int, int, int, int],
    params: EstarfmParams,
    truncate: bool,
    out_dtypes: tuple[str, ...],
    out_fills: tuple[float | None, ...],
    stack_dtype: str,
    diagnostics: bool,
    threads: int | None,
) -> np.ndarray:
    """Predict the block interior of every target in the block.

    ``x`` is ``(T, 5, nb, y, x)`` (F1, C1, F2, C2, C0), ``thr`` is ``(T, 3, nb, 1, 1)``; the
    result is ``(T, K, nb, y', x')`` with K = 1 (prediction) or 2 (and the candidate count).
    """
    from xfusion.methods._estarfm_kernel import (
        EstarfmDiagnostics,
        estarfm_block,
        estarfm_blockwise,
    )

    top, bottom, left, right = halo_sides
    nt, _, nb, ny, nx = x.shape
    k = 2 if diagnostics else 1
    out = np.empty((nt, k, nb, ny - top - bottom, nx - left - right), stack_dtype)
    if out.size == 0:
        return out
    ints = any(not np.issubdtype(np.dtype(d), np.floating) for d in out_dtypes)
    for t in range(nt):
        # preset "auto": truncated (as Zhu's programs) only where the output is integer, so
        # that float data in other units (kelvin, 0..1) keep their decimals
        kw = _kernel_kwargs(params, ints if params.auto_unit else truncate)
        scale = float(thr[t, 2, 0, 0, 0])
        if scale != 1.0:  # preset "auto" on 0..1 data: the "reflectance" unit
            lo, hi = params.data_range
            kw.update(data_range=(lo * scale, hi * scale), truncate=ints, fill=None)
        arrays = tuple(x[t, q] for q in range(5))
        if params.block is not None:
            res = estarfm_blockwise(
                *arrays, block=params.block, threshold_std=params.threshold_std,
                diagnostics=True, threads=threads, **{n: v for n, v in kw.items() if n != "variant"},
            )
        else:
            res = estarfm_block(*arrays, thresholds=thr[t, :2, :, 0, 0], halo=halo_sides,
                                diagnostics=True, threads=threads, **kw)
        assert isinstance(res, EstarfmDiagnostics)
        for b in range(nb):
            out[t, 0, b] = _to_output(res.prediction[b], np.dtype(out_dtypes[b]), out_fills[b])
        if diagnostics:
            out[t, 1] = res.n_candidates[None]
        del res
    _release_memory()
    return out


@cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None


def _release_memory() -> None:
    """Give the block's freed temporaries back to the OS.

    A task allocates a few dozen arrays of several MB; with several threads, glibc keeps the
    freed memory in per-thread arenas, so a long run's RSS creeps up without any live data
    (the same reason ``distributed`` trims worker memory).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _gated(block: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """``block`` itself; ``gate`` (the thresholds) only orders the graph."""
    return block


def _block_chunks(chunks: tuple[int, ...], block: int) -> tuple[int, ...]:
    """Chunks along one axis whose edges fall on multiples of ``block`` (about as large as the
    current ones), so that no Zhu tile is split between chunks."""
    size = sum(chunks)
    step = max(block, round(max(chunks) / block) * block)
    out = [step] * (size // step)
    if size % step:
        out.append(size % step)
    return tuple(out) if out else (size,)


# --------------------------------------------------------------------------------------------
# the public function


def estarfm(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: Any = None,
    preset: Literal["auto", "zhu", "imagefusion", "reflectance"] = "auto",
    variant: EstarfmVariant | None = None,
    diagnostics: bool = False,
    device: str = "auto",
    coarse_factor: int | None = None,
    **params: Any,
) -> xr.Dataset:
    """Predict fine images at target dates with ESTARFM (Zhu et al. 2010), two pairs.

    For each target date ESTARFM takes a pair (fine ``F1``, coarse ``C1``) before it, a pair
    (``F2``, ``C2``) after it and the coarse image ``C0`` at the target, all on the fine grid.
    For every fine pixel it selects, in a window around it, the pixels similar to it in every
    band at both pair dates, weights them by their spectral correlation with the coarse data
    and their distance, converts the weighted coarse change into a fine change with a
    conversion coefficient V (the regression of the candidates' fine on coarse values), and
    blends the predictions from both pairs with temporal weights from the window's coarse
    change. The result is lazy on dask input (nothing is computed here) and does not depend
    on the chunking, bit for bit (default mode).

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`): ``time`` plus the spatial
        dims, fine and coarse variables on ONE grid (coarse resampled onto the fine grid), NaN
        (or a declared nodata value) where unobserved.
    fine, coarse : str or list of str
        Fine and coarse variable names; lists are paired by position. All bands are
        predicted in one pass: a candidate must be similar in every band.
    targets : date-like or sequence of date-like, optional
        Dates to predict. Default: every date where the coarse variables are observed and
        the fine ones are not (``observed_<name>`` coordinates).
    pairs : "bracket", (date, date), list of (date, date) or mapping, optional
        The pair dates ``(t1, t2)`` of each target, ``t1 < target < t2``. Default
        (``None``/``"bracket"``): the nearest pair strictly before and the nearest strictly
        after each target. A tuple applies to all targets; a list gives one tuple per target;
        a mapping maps target -> tuple. A string ``"T1,T2"`` is read as a tuple (CLI).
    preset : {"auto", "zhu", "imagefusion", "reflectance"}, default "auto"
        Defaults for the parameters (see Notes): ``"zhu"`` and ``"imagefusion"`` reproduce
        the reference programs on reflectance x1e4; ``"reflectance"`` is "zhu" for 0..1
        reflectance (range (0, 1), float output, not truncated). ``"auto"`` is "zhu" without
        its truncation toward zero unless the output is integer (float x1e4 data: within 1 of
        Zhu's programs; kelvin keeps its decimals), except for targets whose pair fine
        images lie within [-2, 2] (0..1 reflectance, as odc-stac loads scaled
        Landsat/Sentinel-2), which get the range (0, 1): the unit is found with the global
        thresholds, lazily. Passing ``data_range`` or ``truncate`` turns the detection off.
    variant : {"zhu", "imagefusion"}, optional
        The reference program to follow; default: the preset's. Switching the variant also
        switches ``threshold_std`` and ``change_min_fraction`` to that variant's defaults
        unless they are given.
    diagnostics : bool, default False
        Also return ``<fine>_n_candidates`` (int32): the number of similar pixels of each
        target pixel (the same for every band).
    device : {"auto", "cpu"}, default "auto"
        ESTARFM runs on the CPU (numba kernel); ``"auto"`` and ``"cpu"`` are accepted.
    coarse_factor : int, optional
        Coarse pixel size in fine pixels (default: ``ds.attrs["coarse_factor"]`` when
        present), used to check that the window covers at least one coarse pixel.
    **params
        Any field of :class:`EstarfmParams`, overriding the preset: ``half_window``,
        ``num_class``, ``data_range``, ``fill``, ``change_min_fraction``, ``p_value``,
        ``v_max``, ``min_candidates``, ``eps_distance``, ``eps_time``, ``threshold_std``,
        ``block``, ``variant``, ``zhu_first_band_only``, ``use_local_tol``,
        ``use_quality_weighted_regression``, ``truncate``, ``dtype``.

    Returns
    -------
    xarray.Dataset
        One variable per fine name (same name and attrs) with dims ``(time, y, x)``,
        ``time`` = the targets (sorted), coordinates ``pair_time`` and ``pair_time_after``
        along ``time`` (the pair dates used), the cube's spatial coords, ``spatial_ref`` and
        attrs (plus ``xfusion_estarfm``, the parameters used, as JSON). Float inputs give
        float output with NaN where no prediction is made (a pixel unobserved in any of the
        five inputs); integer inputs give the same integer dtype with the fill value there
        (``attrs["nodata"]``). Dask-backed when the input is.

    Raises
    ------
    InvalidParameterError
        Unknown preset/variant/parameter, values out of range, a window smaller than the
        coarse pixel, ImageFusion options with the "zhu" variant (or ``block`` with
        "imagefusion"), ``data_range`` excluding every valid pixel of a fine image (raised at
        compute time on dask input), an integer fill value that does not fit the output.
    NoOverlapError
        A target without a pair before and after it (the message lists the pair dates).
    TimeAxisError
        Targets or pair dates not on the time axis or not observed.
    GridMismatchError, MissingDimensionError, VariableNotFoundError, MissingNodataError
        From :func:`xfusion.cube.validate_cube`.

    Warns
    -----
    RuntimeWarning
        A fine pair image without any valid pixel (its predictions are NaN/fill).

    See Also
    --------
    xfusion.starfm : STARFM, one or two pairs.
    xfusion.baseline : the naive baselines ESTARFM must beat.

    Notes
    -----
    **Algorithm** (specs/estarfm.md). A pixel is valid when all five inputs are observed in
    every band (``zhu_first_band_only``: band 0). Candidate ``x`` of centre ``c`` is valid and
    ``|F_k,b(x) - F_k,b(c)| < th_k,b`` for both pairs ``k`` and every band ``b`` ("zhu";
    ``<=`` in "imagefusion"), with ``th_k,b = std(F_k,b) * 2 / num_class``. With at least
    ``min_candidates`` candidates: weights ``W ∝ 1 / ((1 - R) D + eps_distance)`` (``R`` the
    spectral correlation of the candidate's fine and coarse values, ``D = 1 + d / w``; "imagefusion"
    ``1 + 2 d / (2w + 1)``), the conversion coefficient V per band (slope of the OLS of the
    candidates' ``[F1, F2]`` on ``[C1, C2]`` when the F test is significant at ``p_value`` and
    ``0 < V <= v_max``, else 1), temporal weights ``T_k ∝ 1 / |mean C0 - mean C_k|`` over
    the window's valid pixels ("imagefusion": sums), and
    ``P = sum_k T_k (F_k(c) + V sum W (C0 - C_k))``, replaced by ``sum_k T_k sum W F_k``
    when outside ``data_range``. With fewer candidates "zhu" adds the window's mean coarse
    change to each fine value, "imagefusion" blends ``F1(c)`` and ``F2(c)``.

    **Variants.** "zhu" follows Zhu's ``ESTARFM.pro``/``ESTARFM.py``: threshold from EVERY
    pixel of the fine image, a pixel unobserved in it counted as the ``fill`` value (as the
    programs include the background value; left out when ``fill`` is None), sample std
    (IDL) by default; strict similarity; regression only when the candidates' mean coarse
    change between the pairs is at least ``change_min_fraction * DN_max``. "imagefusion"
    follows ImageFusion's ``EstarfmFusor``: thresholds from the pixels valid in all five
    inputs (population std), inclusive similarity, regression when the candidates' coarse
    spread exceeds ``DN_max * change_min_fraction * sqrt(2)``; ImageFusion's R wrapper uses
    ``num_class = 64 ** (1 / nbands)`` and the data type's range, pass them to match it.

    **Presets.** "zhu": ``half_window=25, num_class=4, data_range=(0, 10000), fill=-9999,
    change_min_fraction=0.02, p_value=0.05, v_max=5, min_candidates=6, eps_distance=1e-7,
    eps_time=1e-10, threshold_std="sample", block=None, truncate=True, dtype="float32"``. "imagefusion": the
    same with ``variant="imagefusion", threshold_std="population",
    change_min_fraction=0.002``. "reflectance": "zhu" with ``data_range=(0, 1), fill=None,
    truncate=False``.

    **Blocks.** Zhu's programs cut the image into 500 x 500 blocks without halo (windows
    and thresholds stop at block edges, so the result depends on the tiling); ``block=500``
    reproduces that, with blocks anchored at the image origin whatever the Dask chunks
    (chunks are aligned to multiples of the block). The default (``block=None``) clips
    windows at the image border only and takes the thresholds from the whole image; images
    no larger than one block give the same result either way. Images smaller than the
    window are fine (windows are clipped).

    **Chunks and memory.** Blocks get a halo of ``half_window`` pixels
    (``boundary="none"``); each task holds the five inputs of one target for a chunk plus
    halo and about 12 float64 planes per band. The thresholds wait for a reduction over
    every chunk of the pair-date fine images, which dask keeps in memory meanwhile.

    **Parity and precision.** With ``dtype="float64"`` the kernel reproduces Zhu's Python
    twin (``threshold_std="population"``, ``block=500``) and ImageFusion's ``if_fuse`` to the
    last float32 bit of their outputs on synthetic600 and Kranj; the default
    ``dtype="float32"`` (first pass over each window in float32, about 1.5x faster) changes
    the truncated output by 1 on about 0.01 % of the pixels. Known differences from the
    programs: ImageFusion masks nodata per band (xfusion: a pixel is invalid when any band
    is), and writes nothing where the centre is masked (xfusion: NaN / the fill value).

    **Speed.** About ``(2w + 1)^2`` candidate tests per pixel and band pair, plus the
    regression sums where V is needed; see ``benchmarks/estarfm_results.md``.

    .. versionadded:: 0.2

    References
    ----------
    .. [1] Zhu, X., Chen, J., Gao, F., Chen, X., Masek, J.G. (2010). An enhanced spatial and
       temporal adaptive reflectance fusion model for complex heterogeneous regions. Remote
       Sensing of Environment 114(11), 2610-2623.
    .. [2] Mast, J. et al. ImageFusion (C++/R), ``EstarfmFusor``, Hochschule Bochum / Univ.
       Würzburg (BSD-3).

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.methods.estarfm import estarfm
    >>> from xfusion.testing import synthetic_scene
    >>> scene = synthetic_scene((48, 48), kind="reflectance", coarse_factor=8, times=3,
    ...                         fine_times=[0, 2], cloud_fraction=0.0,
    ...                         coarse_cloud_fraction=0.0, seed=1)
    >>> pred = estarfm(scene, fine=["fine_red", "fine_nir"], coarse=["coarse_red", "coarse_nir"],
    ...                preset="reflectance", half_window=6)
    >>> pred.fine_nir.dims, pred.sizes["time"]
    (('time', 'y', 'x'), 1)
    >>> [str(t)[:10] for t in (pred.pair_time.values[0], pred.pair_time_after.values[0])]
    ['2021-04-03', '2021-05-05']
    >>> truth = scene.truth_nir.sel(time=pred.time).values
    >>> err = lambda a: float(np.abs(a - truth).mean())
    >>> err(pred.fine_nir.values) < err(scene.fine_nir.values[:1])
    True
    """
    check_device(device)
    if device != "auto" and device != "cpu":
        raise InvalidParameterError(
            f"estarfm(device={device!r}): ESTARFM runs on the CPU (numba kernel); there is no "
            "CUDA kernel yet. Use device='auto' or 'cpu'."
        )
    if not isinstance(diagnostics, bool):
        raise InvalidParameterError(
            f"estarfm() parameter diagnostics must be True or False; got {diagnostics!r}."
        )
    prm = _resolve_params(preset, variant, params)
    roles = resolve_roles(ds, fine, coarse, method=NAME)
    require_band_pairs(ds, roles, method=NAME)
    factor = coarse_factor if coarse_factor is not None else ds.attrs.get("coarse_factor")
    if factor is not None:
        _number("coarse_factor", factor, minimum=0,
                hint=" It is the coarse pixel size in fine pixels (e.g. 16 for 480 m on 30 m).")
        if 2 * prm.half_window + 1 < float(factor):
            raise InvalidParameterError(
                f"estarfm() window of {2 * prm.half_window + 1} fine pixels (half_window="
                f"{prm.half_window}) is smaller than one coarse pixel ({float(factor):g} fine "
                f"pixels): a window must span at least one coarse pixel for its candidates to "
                f"see more than one coarse value. Use half_window >= "
                f"{math.ceil((float(factor) - 1) / 2)} (Zhu uses 25 for 30 m / 500 m)."
            )
    ydim, xdim = roles.dims

    tidx = select_targets(ds, roles, targets, method=NAME)
    before, after = _choose_pairs(ds, roles, tidx, pairs)
    tidx, before, after = sort_targets(tidx, before, after)

    like: dict[str, xr.DataArray] = {}
    fine_data, coarse_data, out_dtypes, out_fills = [], [], [], []
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        f = float_data(ds, fname, dims=roles.dims).transpose(TIME, ydim, xdim)
        c = float_data(ds, cname, dims=roles.dims).transpose(TIME, ydim, xdim)
        like[fname] = f
        fine_data.append(f.data)
        coarse_data.append(c.data)
        dtype, ofill = _output_dtype(ds, fname, f, prm.fill)
        out_dtypes.append(dtype)
        out_fills.append(ofill)
    truncate = prm.truncate or any(not np.issubdtype(d, np.floating) for d in out_dtypes)

    lazy = any(_is_dask(a) for a in (*fine_data, *coarse_data))
    if lazy:
        import dask.array as da
        from dask.base import tokenize

        xp: Any = da
        fine_data = [a if _is_dask(a) else da.asarray(a) for a in fine_data]
        coarse_data = [a if _is_dask(a) else da.asarray(a) for a in coarse_data]
        names = [a.name for a in (*fine_data, *coarse_data)]
        token = tokenize(prm, names, tidx, before, after)
    else:
        xp = np
        token = ""

    def bands(arrays: list[Any], pos: int) -> Any:
        return xp.stack([a[int(pos)] for a in arrays])

    x = xp.stack([
        xp.stack([bands(fine_data, b), bands(coarse_data, b), bands(fine_data, a),
                  bands(coarse_data, a), bands(coarse_data, t)])
        for t, b, a in zip(tidx, before, after, strict=True)
    ])
    dates = {k: _fmt_dates(ds, v) for k, v in (("b", before), ("a", after))}
    labels = [
        [f"the fine variable {fname!r} at {dates[side][k]}"
         for fname in roles.fine for side in ("b", "a")]
        for k in range(len(tidx))
    ]
    nt, nb = len(tidx), len(roles.fine)
    if lazy:
        x = x.rechunk({0: 1, 1: -1, 2: -1})
        if prm.block is not None:
            x = x.rechunk({3: _block_chunks(x.chunks[3], prm.block),
                           4: _block_chunks(x.chunks[4], prm.block)})
    # the thresholds' inputs: the fine images ("zhu") or all five ("imagefusion", which counts
    # the pixels valid in all of them). On dask, they come from a CLONE of the input graph:
    # every prediction waits for the thresholds, so inputs shared with the reduction would all
    # be held in memory until it ends; cloned, each chunk is freed once its moments are taken
    # (the inputs are read or generated twice instead).
    sfine, scoarse = fine_data, coarse_data
    if lazy:
        from xfusion.engine.graph import independent_copy

        cloned = independent_copy(*fine_data, *(coarse_data if prm.variant != "zhu" else ()),
                                  seed=token)
        sfine, scoarse = cloned[:nb], cloned[nb:] or coarse_data
    if prm.variant == "zhu":
        stats = xp.stack([xp.stack([bands(sfine, b), bands(sfine, a)])
                          for b, a in zip(before, after, strict=True)])
    else:
        stats = xp.stack([
            xp.stack([bands(sfine, b), bands(scoarse, b), bands(sfine, a), bands(scoarse, a),
                      bands(scoarse, t)])
            for t, b, a in zip(tidx, before, after, strict=True)
        ])
    if lazy:
        stats = stats.rechunk({0: 1, 1: -1, 2: -1, 3: x.chunks[3], 4: x.chunks[4]})
    thr = _thresholds(stats, params=prm, labels=labels, token=token)
    if lazy:
        # gate the inputs of the predictions on the thresholds: no input chunk is read (and
        # held) before the global reduction is done, whatever order dask picks
        import dask.array as da

        gate = thr.sum().reshape((1,) * x.ndim)
        x = da.map_blocks(_gated, x, gate, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype),
                          name=f"xfusion.{NAME}-inputs-{token}")

    kdim = 2 if diagnostics else 1
    stack_dtype = np.result_type(*out_dtypes, *((np.int32,) if diagnostics else ()))
    if lazy:
        leading = (x.chunks[0], (kdim,), (nb,))
        ntasks = nt * len(x.chunks[3]) * len(x.chunks[4])
        threads = _kernel_threads(ntasks=ntasks)
    else:
        leading = None
        threads = None
    out = map_blocks_halo(
        _estarfm_tasks,
        x,
        halo=halo(prm),
        dtype=stack_dtype,
        leading_chunks=leading,
        method=NAME,
        token_parts=(prm, diagnostics, token),
        extra=(thr,),
        kwargs={
            "params": prm,
            "truncate": truncate,
            "out_dtypes": tuple(d.str for d in out_dtypes),
            "out_fills": tuple(out_fills),
            "stack_dtype": stack_dtype.str,
            "diagnostics": diagnostics,
            "threads": threads,
        },
    )

    data: dict[str, Any] = {}
    for b, fname in enumerate(roles.fine):
        data[fname] = pick_plane(out, (0, b), out_dtypes[b], lazy=lazy, method=NAME)
    if diagnostics:
        for b, fname in enumerate(roles.fine):
            dname = f"{fname}_n_candidates"
            data[dname] = pick_plane(out, (1, b), np.dtype(np.int32), lazy=lazy, method=NAME)
            tmpl = like[fname].copy(deep=False)
            tmpl.attrs = {"long_name": "ESTARFM similar pixels (candidates), all bands"}
            like[dname] = tmpl
    res = assemble_result(ds, data, like=like, target_idx=tidx,
                          time_coords={"pair_time": before, "pair_time_after": after})
    for b, fname in enumerate(roles.fine):
        if out_fills[b] is not None:
            res[fname].attrs["nodata"] = out_fills[b]
    record = {**asdict(prm), "device": "cpu",
              "truncate_effective": "per target (auto unit)" if prm.auto_unit else truncate}
    record["data_range"] = list(prm.data_range)
    res.attrs["xfusion_estarfm"] = json.dumps(record, allow_nan=False)
    return res
