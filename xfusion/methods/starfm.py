"""STARFM (Gao et al. 2006) on fusion cubes: lazy, chunk-invariant, exact to USDA STARFM v1.2.1.

The per-pixel work is the numba kernel of :mod:`xfusion.methods._starfm_kernel` (or its torch
twin :mod:`xfusion.methods._starfm_torch` on CUDA), mapped over the spatial chunks of the cube
with a halo of half the window by :func:`xfusion.engine.run.map_blocks_halo`. The similarity
threshold of each pair date and band is a GLOBAL statistic (the standard deviation of the whole
fine image): it is computed first, lazily, by an exact reduction over the chunks (see
:func:`moment_parts`), and fed to the block tasks as a small dask array, so the output does not
depend on the chunking, bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, replace
from typing import Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import (
    assemble_result,
    float_data,
    require_band_pairs,
    require_choice,
    resolve_roles,
    select_targets,
    sort_targets,
)
from xfusion.cube.validate import TIME, get_geobox
from xfusion.engine.device import kernel_threads
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    InvalidParameterError,
    NoOverlapError,
    TimeAxisError,
)
from xfusion.methods._output import integer_layout, pick_plane, to_integer
from xfusion.methods._starfm_pairs import _choose_pairs, _fmt_dates, _pair_positions
from xfusion.methods._starfm_stats import (
    gated_blocks,
    thresholds,
    throttle_rows,
    unit_params,
)

__all__ = ["STARFM_MODES", "STARFM_PRESETS", "StarfmMode", "StarfmParams", "starfm"]

NAME = "starfm"

StarfmMode: TypeAlias = Literal["reference", "float"]
"""``"reference"``: USDA v1.2.1 integer behaviour. ``"float"``: the same algorithm in floats."""

STARFM_MODES: tuple[str, ...] = ("reference", "float")

StarfmPairs: TypeAlias = Literal["nearest", "before", "after", "bracket"]
"""How the pair(s) of each target are chosen (see :func:`starfm`)."""



# --------------------------------------------------------------------------------------------
# parameters and presets


@dataclass(frozen=True, kw_only=True)
class StarfmParams:
    """A complete set of STARFM parameters (a preset, or a preset with overrides)."""

    max_search_distance: float
    """USDA ``MAX_SEARCH_DISTANCE`` in metres: the window is ``int(2 * d / resolution)`` px."""
    num_slice: int
    """USDA ``NUM_SLICE_PURE_TEST``: similarity threshold ``2 * std(fine) / num_slice``."""
    uncertainty_fine: float
    """USDA ``LANDSAT_UNCERTAINTY``, in the data's unit."""
    uncertainty_coarse: float
    """USDA ``MODIS_UNCERTAINTY``, in the data's unit."""
    data_range: tuple[float, float]
    """USDA ``DATA_RANGE``: valid inputs lie in ``[lo, hi]``; the threshold uses ``lo < v < hi``."""
    distance_offset: float
    """The ``+1`` of ``t_dis = |M1 - L1| + 1`` (one unit of the data's precision)."""
    fill: float | None
    """USDA ``FILL``: inputs equal to it are unobserved (``None``: only NaN/declared nodata)."""
    mode: str
    """``"reference"`` or ``"float"``."""
    auto_unit: bool = False
    """Preset ``"auto"``: images whose valid values all lie within [-2, 2] (0..1
    reflectance) use these parameters x 1e-4 in float mode, without fill (see :func:`starfm`)."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *astuple(self))


STARFM_PRESETS: dict[str, StarfmParams] = {
    "usda": StarfmParams(
        max_search_distance=750.0,
        num_slice=40,
        uncertainty_fine=50.0,
        uncertainty_coarse=50.0,
        data_range=(0.0, 10000.0),
        distance_offset=1.0,
        fill=-9999.0,
        mode="reference",
    ),
    "reflectance": StarfmParams(
        max_search_distance=750.0,
        num_slice=40,
        uncertainty_fine=0.005,
        uncertainty_coarse=0.005,
        data_range=(0.0, 1.0),
        distance_offset=1e-4,
        fill=None,
        mode="float",
    ),
    "lst": StarfmParams(
        max_search_distance=1500.0,
        num_slice=40,
        uncertainty_fine=1.0,
        uncertainty_coarse=0.5,
        data_range=(150.0, 400.0),
        distance_offset=0.01,
        fill=None,
        mode="float",
    ),
}
STARFM_PRESETS = {"auto": replace(STARFM_PRESETS["usda"], auto_unit=True), **STARFM_PRESETS}
"""Parameter presets by name (see :func:`starfm`, Notes, for the reasoning behind each value)."""

#: Parameters in the data's unit: giving one turns the "auto" unit detection off.
_UNIT_PARAMS = ("mode", "uncertainty_fine", "uncertainty_coarse", "data_range",
                "distance_offset", "fill")


def _positive(name: str, value: Any, *, integer: bool = False, hint: str = "") -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        kind = "a positive integer" if integer else "a finite number > 0"
        raise InvalidParameterError(
            f"starfm() parameter {name} must be {kind}; got {value!r}.{hint}"
        )


def _resolve_params(preset: str | None, overrides: Mapping[str, Any]) -> StarfmParams:
    if preset is None:
        base = STARFM_PRESETS["auto"]
    else:
        require_choice(preset, tuple(STARFM_PRESETS), name="preset", method=NAME)
        base = STARFM_PRESETS[preset]
    given = {k: v for k, v in overrides.items() if v is not None}
    params = replace(base, **given)
    if params.auto_unit and any(k in given for k in _UNIT_PARAMS):
        params = replace(params, auto_unit=False)
    if params.mode not in STARFM_MODES:
        require_choice(params.mode, STARFM_MODES, name="mode", method=NAME)
    _positive(
        "max_search_distance", params.max_search_distance,
        hint=" It is in metres: USDA uses 750 (a 50 px window at 30 m).",
    )  # fmt: skip
    _positive("num_slice", params.num_slice, integer=True, hint=" The USDA default is 40.")
    for name in ("uncertainty_fine", "uncertainty_coarse"):
        _positive(
            name, getattr(params, name),
            hint=" It is in the data's unit: 50 for reflectance x1e4 (USDA), 0.005 for 0..1 "
            "reflectance, about 0.5-1 for LST in kelvin.",
        )  # fmt: skip
    _positive(
        "distance_offset", params.distance_offset,
        hint=" It is the +1 of t_dis in the data's unit: 1 for reflectance x1e4, 1e-4 for 0..1 "
        "reflectance, 0.01 for LST in kelvin.",
    )  # fmt: skip
    dr = params.data_range
    try:
        lo, hi = (float(x) for x in dr)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (lo < hi) or math.isnan(lo) or math.isnan(hi):
        raise InvalidParameterError(
            f"starfm() parameter data_range must be (lo, hi) with lo < hi; got {dr!r}. USDA "
            "uses (0, 10000) for reflectance x1e4; pass (-inf, inf) to accept every finite value."
        )
    fill = params.fill
    if fill is not None:
        try:
            fill = float(fill)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"starfm() parameter fill must be a number (the USDA FILL value, e.g. -9999) or "
                f"None; got {params.fill!r}."
            ) from None
    return replace(
        params,
        max_search_distance=float(params.max_search_distance),
        num_slice=int(params.num_slice),
        uncertainty_fine=float(params.uncertainty_fine),
        uncertainty_coarse=float(params.uncertainty_coarse),
        data_range=(lo, hi),
        distance_offset=float(params.distance_offset),
        fill=fill,
    )


def _pixel_size(ds: xr.Dataset, resolution: float | None) -> float:
    """Pixel size in metres: ``resolution`` when given, else from the cube's GeoBox."""
    if resolution is not None:
        _positive(
            "resolution", resolution,
            hint=" It is the pixel size in metres (30 for Landsat).",
        )  # fmt: skip
        return float(resolution)
    gbox = get_geobox(ds, name="cube")
    rx, ry = abs(float(gbox.resolution.x)), abs(float(gbox.resolution.y))
    crs = gbox.crs
    units = tuple(str(u).lower() for u in (getattr(crs, "units", None) or ()))
    if getattr(crs, "geographic", False) or not units or not all(
        u in ("metre", "meter", "m", "metres", "meters") for u in units
    ):
        epsg = getattr(crs, "epsg", None)
        label = f"EPSG:{epsg}" if epsg else str(crs)
        deg = "degrees" if getattr(crs, "geographic", False) else f"{units or 'unknown'} units"
        approx = f" (about {rx * 111_320:.0f} m for {rx:g} degrees)" if deg == "degrees" else ""
        raise InvalidParameterError(
            f"starfm() turns max_search_distance (metres) into a window in pixels, but the "
            f"cube's CRS {label} is not in metres (pixel size {rx:g} x {ry:g} {deg}). Pass the "
            f"pixel size in metres as resolution=...{approx}, or reproject the cube to a "
            "projected CRS."
        )
    return (rx + ry) / 2.0


# --------------------------------------------------------------------------------------------
# the global statistic: exact sums, so the threshold does not depend on the chunking















# --------------------------------------------------------------------------------------------
# the block function (runs in the worker)


def _cuda_available() -> bool:
    from xfusion.engine.device import cuda_available

    return cuda_available()


def _torch_device(device: str) -> str | None:
    """The torch device to run on, or None for the numba CPU kernel (resolved in the worker)."""
    from xfusion.engine.device import kernel_device

    return kernel_device(device, who="starfm")


def _to_output(
    pred: np.ndarray, dtype: np.dtype, fill: float | None, *, reference: bool
) -> np.ndarray:
    """Kernel prediction → output dtype: NaN gaps for floats, ``fill`` for integers (reference
    mode: the kernel already rounded; float mode: rounded half up, as USDA)."""
    if np.issubdtype(dtype, np.floating):
        return pred.astype(dtype, copy=False)
    assert fill is not None
    return to_integer(pred, dtype, fill, rounding="exact" if reference else "half_up")


def _starfm_tasks(
    inputs: np.ndarray,
    thr: np.ndarray,
    *,
    halo_sides: tuple[int, int, int, int],
    window: int,
    distance_scale: float,
    params: StarfmParams,
    out_dtypes: tuple[str, ...],
    out_fills: tuple[float | None, ...],
    stack_dtype: str,
    diagnostics: bool,
    device: str,
    threads: int | None,
) -> np.ndarray:
    """Predict the block interior of every (target, band) in the block.

    ``inputs`` is ``(T, B, 2P + 1, y, x)``: ``L1`` of the P pairs, ``M1`` of the P pairs, then
    ``M2`` (one array, so that each block has one overlap task to wait for); ``thr`` is
    ``(T, B, P, 2, 1)``: the threshold of each pair, then the unit scale of the parameters
    (1, or 1e-4 where preset ``"auto"`` found 0..1 data: one scale per variable); the result is ``(T, B, K, y', x')`` with K = 1 (prediction) or 3
    (prediction, candidate count, weight sum).
    """
    from xfusion.methods._starfm_kernel import starfm_block

    npair = thr.shape[2]
    l1, m1, m2 = inputs[:, :, :npair], inputs[:, :, npair:-1], inputs[:, :, -1:]
    top, bottom, left, right = halo_sides
    ntar, nband, _, ny, nx = l1.shape
    k = 3 if diagnostics else 1
    out = np.empty((ntar, nband, k, ny - top - bottom, nx - left - right), stack_dtype)
    if out.size == 0:
        return out
    tdev = _torch_device(device)
    if tdev is None:
        run = starfm_block
        extra: dict[str, Any] = {"threads": threads}
    else:
        from xfusion.methods._starfm_torch import starfm_block_torch

        run = starfm_block_torch
        extra = {"device": tdev}
    for t in range(ntar):
        for b in range(nband):
            prm = params
            scale = float(thr[t, b, 0, 1, 0])
            if prm.auto_unit and scale != 1.0:
                prm = unit_params(prm, scale)  # preset "auto" on 0..1 data
            reference = prm.mode == "reference"
            dtype = np.dtype(out_dtypes[b])
            ofill = out_fills[b]
            arrays = [l1[t, b], m1[t, b], m2[t, b, 0]]
            if prm.fill is not None and not math.isnan(prm.fill):
                arrays = [np.where(a == prm.fill, np.float32(np.nan), a) for a in arrays]
            integer_fill = reference and ofill is not None and not np.issubdtype(
                dtype, np.floating
            )
            res = run(
                *arrays,
                thresholds=thr[t, b, :, 0, 0],
                fill_value=float(ofill) if integer_fill else math.nan,
                window=window,
                halo=halo_sides,
                fine_uncertainty=prm.uncertainty_fine,
                coarse_uncertainty=prm.uncertainty_coarse,
                distance_scale=distance_scale,
                distance_offset=prm.distance_offset,
                data_range=prm.data_range,
                reference=reference,
                diagnostics=diagnostics,
                **extra,
            )
            pred = res.prediction if diagnostics else res
            out[t, b, 0] = _to_output(pred, dtype, ofill, reference=reference)
            if diagnostics:
                out[t, b, 1] = res.n_candidates
                out[t, b, 2] = res.weight_sum
    return out
    tdev = _torch_device(device)
    reference = params.mode == "reference"
    fill = params.fill
    common = {
        "window": window,
        "halo": halo_sides,
        "fine_uncertainty": params.uncertainty_fine,
        "coarse_uncertainty": params.uncertainty_coarse,
        "distance_scale": distance_scale,
        "distance_offset": params.distance_offset,
        "data_range": params.data_range,
        "reference": reference,
        "diagnostics": diagnostics,
    }
    if tdev is None:
        run = starfm_block
        common["threads"] = threads
    else:
        from xfusion.methods._starfm_torch import starfm_block_torch

        run = starfm_block_torch
        common["device"] = tdev
    for t in range(ntar):
        for b in range(nband):
            dtype = np.dtype(out_dtypes[b])
            ofill = out_fills[b]
            arrays = [l1[t, b], m1[t, b], m2[t, b, 0]]
            if fill is not None and not math.isnan(fill):
                arrays = [np.where(a == fill, np.float32(np.nan), a) for a in arrays]
            integer_fill = reference and ofill is not None and not np.issubdtype(
                dtype, np.floating
            )
            res = run(
                *arrays,
                thresholds=thr[t, b, :, 0, 0],
                fill_value=float(ofill) if integer_fill else math.nan,
                **common,
            )
            pred = res.prediction if diagnostics else res
            out[t, b, 0] = _to_output(pred, dtype, ofill, reference=reference)
            if diagnostics:
                out[t, b, 1] = res.n_candidates
                out[t, b, 2] = res.weight_sum
    return out


# --------------------------------------------------------------------------------------------
# helpers of the public function


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))












def _output_dtype(ds: xr.Dataset, name: str, work: xr.DataArray, fill: float | None) -> tuple[
    np.dtype, float | None
]:  # fmt: skip
    """Output dtype and fill of fine variable ``name`` (see :mod:`xfusion.methods._output`)."""
    layout = integer_layout(ds, name, fill=fill, method=NAME)
    return (np.dtype(work.dtype), None) if layout is None else layout


# --------------------------------------------------------------------------------------------
# the public function


def starfm(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: StarfmPairs | Any = "nearest",
    preset: Literal["auto", "usda", "reflectance", "lst"] | None = None,
    mode: StarfmMode | None = None,
    max_search_distance: float | None = None,
    resolution: float | None = None,
    num_slice: int | None = None,
    uncertainty_fine: float | None = None,
    uncertainty_coarse: float | None = None,
    data_range: tuple[float, float] | None = None,
    distance_offset: float | None = None,
    fill: float | None = None,
    diagnostics: bool = False,
    device: str = "auto",
    threads: int | None = None,
) -> xr.Dataset:
    """Predict fine images at target dates with STARFM (Gao et al. 2006, USDA v1.2.1).

    For every target date ``t2`` STARFM takes the fine image ``L1`` and the coarse image ``M1``
    (resampled onto the fine grid) of a pair date ``t1``, and the coarse image ``M2`` at
    ``t2``, and predicts each fine pixel as a weighted mean of ``L1 + M2 - M1`` over the
    spectrally similar pixels of a window around it, weighted by their spectral and temporal
    residuals and their distance. In two-pair mode, pairs before AND after the target are
    blended in one normalisation. The result is lazy on dask input (nothing is computed
    here) and does not depend on the chunking, bit for bit.

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`): ``time`` plus the spatial dims,
        fine and coarse variables on ONE grid (coarse resampled onto the fine grid), NaN (or
        a declared nodata value) where unobserved.
    fine, coarse : str or list of str
        Fine and coarse variable names; lists are paired by position (multi-band: every band
        is predicted independently, in one pass over the data).
    targets : date-like or sequence of date-like, optional
        Dates to predict, on the cube's time axis. Default: every date where the coarse
        variables are observed and the fine ones are not (``observed_<name>`` coordinates).
    pairs : {"nearest", "before", "after", "bracket"}, date-like, sequence or mapping
        The pair(s) of each target. ``"nearest"`` (default, same as ``"before"``): the
        nearest pair date strictly before the target (STARFM predicts forward from the
        latest clear pair); ``"after"``: the nearest strictly after. ``"bracket"``:
        two-pair mode with the nearest pair before AND the nearest after. Explicit dates:
        one date for all targets, a list with one date per target, or a mapping target →
        date; a ``(before, after)`` tuple (or a list of them, one per target, or a mapping
        target → tuple) selects two-pair mode with those dates.
    preset : {"auto", "usda", "reflectance", "lst"}, optional
        Defaults for every parameter below (see Notes); ``None`` means ``"auto"``: ``"usda"``,
        except for fine variables whose valid values at the pair dates all lie within
        [-2, 2] (0..1 reflectance, as odc-stac and :func:`xfusion.load_cube` scale Landsat and
        Sentinel-2), which get ``"reflectance"`` (the same physics x 1e-4, float mode). The
        unit is found with the global thresholds, lazily, per variable. Giving ``mode``,
        ``uncertainty_fine``, ``uncertainty_coarse``, ``data_range``, ``distance_offset`` or
        ``fill`` turns the detection off. Parameters given explicitly override the preset.

        .. versionchanged:: 0.1
           The default is ``"auto"`` (it was ``"usda"``, which left 0..1 data unpredicted).
    mode : {"reference", "float"}, optional
        ``"reference"``: the USDA v1.2.1 program exactly (integer-truncated uncertainties,
        threshold ``int(2 std / num_slice + 0.5)``, predictions rounded half up, filled
        where not strictly inside ``data_range``). ``"float"``: the same algorithm without
        those roundings, predictions as floats. Default: the preset's (``"reference"`` for
        ``"usda"``, ``"float"`` otherwise).
    max_search_distance : float, optional
        USDA ``MAX_SEARCH_DISTANCE`` in metres. The window is
        ``int(2 * max_search_distance / resolution)`` pixels (even windows reach one pixel
        further before the centre than after, as in USDA) and the distance term is
        ``1 + d / (max_search_distance / resolution)``. A window larger than the image is
        clipped to it, as in USDA (positions outside the image are not candidates).

        .. versionchanged:: 0.1
           Windows larger than the image are accepted.
    resolution : float, optional
        Pixel size in metres (USDA ``RESOLUTION``). Default: from the cube's GeoBox (mean of
        the x and y pixel sizes). Required for a geographic CRS (degrees).
    num_slice : int, optional
        USDA ``NUM_SLICE_PURE_TEST``: a candidate is similar to the centre when their fine
        values differ by less than ``2 * std / num_slice``, with ``std`` the standard
        deviation of the WHOLE fine image at the pair date (per band).
    uncertainty_fine, uncertainty_coarse : float, optional
        USDA ``LANDSAT_UNCERTAINTY`` and ``MODIS_UNCERTAINTY``, in the data's unit.
    data_range : (float, float), optional
        USDA ``DATA_RANGE``: inputs outside ``[lo, hi]`` are invalid; the threshold's ``std``
        uses values strictly inside. Pass ``(-inf, inf)`` to accept every finite value.
    distance_offset : float, optional
        The ``+1`` of ``t_dis = |M1 - L1| + 1`` (``(|M1 - M2| + 1)(|M1 - L1| + 1)`` with two
        pairs), in the data's unit.
    fill : float, optional
        USDA ``FILL``: input pixels equal to it are unobserved (on top of NaN and declared
        nodata values); integer outputs use it where no prediction can be made (default for
        those: the fine variable's declared nodata).
    diagnostics : bool, default False
        Also return ``<fine>_n_candidates`` (int32: candidates kept, over all pairs) and
        ``<fine>_weight_sum`` (float32: sum of their weights, 0 where there is none).
    device : {"auto", "cpu", "cuda"} or "cuda:N", default "auto"
        Where each block runs, resolved in the worker that runs it: ``"auto"`` uses CUDA
        (the torch kernel) when that worker has a GPU, else the numba CPU kernel.
    threads : int, optional
        CPU threads of the numba kernel, shared by the blocks that dask may run at once (each
        gets ``max(1, threads // blocks)``). Default: the dask config value
        ``"xfusion.kernel-threads"``, else the environment variable
        ``XFUSION_KERNEL_THREADS``, else every CPU available to the process (see
        :func:`xfusion.engine.device.kernel_threads`). The result does not depend on it.

        .. versionadded:: 0.1

    Returns
    -------
    xarray.Dataset
        One variable per fine name (same name and attrs) with dims ``(time, y, x)`` (the
        cube's spatial dims), ``time`` = the targets (sorted), a ``pair_time`` coordinate
        along ``time`` (the pair date used; with two pairs the one before, and
        ``pair_time_after`` the one after), the cube's spatial coords, ``spatial_ref`` and
        attrs (plus ``xfusion_starfm``, the parameters used, as JSON). Float inputs give
        float output with NaN where no prediction can be made (no valid similar candidate,
        invalid centre, or in reference mode a prediction outside ``data_range``); integer
        inputs give the same integer dtype with the fill value there (``attrs["nodata"]``).
        Dask-backed when the input is.

    Raises
    ------
    InvalidParameterError
        Unknown preset/mode/pairs, parameters that are zero, negative or not finite, a window
        smaller than one pixel, a geographic CRS without
        ``resolution``, fine/coarse lists of different lengths, an integer fill value that
        does not fit the output dtype.
    NoOverlapError
        No pair before the target (``"nearest"``), or not on both sides (``"bracket"``).
    TimeAxisError
        Targets or pair dates not on the time axis or not observed, no date to predict.
    MissingNodataError
        An integer variable without a declared nodata value.
    GridMismatchError, MissingDimensionError, VariableNotFoundError
        Fine and coarse not on one grid, missing (or extra) dims, unknown variables
        (:func:`xfusion.cube.validate_cube`).

    Warns
    -----
    RuntimeWarning
        When a pair's fine image has no pixel inside ``data_range`` or is so uniform that the
        similarity threshold is 0: its predictions are all NaN/fill (USDA behaviour). On dask
        input this is raised when the result is computed.

    See Also
    --------
    xfusion.baseline : the naive baselines STARFM must beat.
    xfusion.cube.from_geotiffs : build a cube from dated GeoTIFFs.

    Notes
    -----
    **Algorithm** (USDA v1.2.1). For centre ``c`` and each pair, candidate ``k`` in the window
    is kept when it is valid (``L1``, ``M1``, ``M2`` inside ``data_range``), similar
    (``|L1_k - L1_c| < 2 std / num_slice``) and passes either residual test
    (``|M1_k - L1_k| <= min_pairs |M1_c - L1_c| + sigma_lsr`` or
    ``|M1_k - M2_k| <= min_pairs |M1_c - M2_c| + sigma_msr``) with
    ``sigma_lsr = sqrt(u_c^2 + u_f^2)``, ``sigma_msr = sqrt(2) u_c``. Its weight is
    ``1 / (t_dis (1 + d / A))``, or, for a "perfect" candidate whose
    ``t_dis < sigma_comb = sqrt(sigma_lsr^2 + sigma_msr^2)``, USDA's constant 1. The
    prediction is ``sum w (L1 + M2 - M1) / sum w``. Reference mode reproduces the program's
    integer truncations and rounding; on ``synthetic600`` it matches the USDA output within
    +-1 on every pixel (99.95 % exactly) with the same fill pattern.

    **Units.** USDA's constant 1 and ``+1`` are one x1e4 reflectance unit; in general the
    perfect weight is ``1 / distance_offset**k`` below ``sigma_comb * distance_offset**(k-1)``
    (``k`` = 1 with one pair, 2 with two, whose ``t_dis`` is a product), so that every weight
    changes with the data's unit like ``1 / t_dis``: multiplying the data and every parameter in
    the data's unit by ``s`` multiplies the prediction by ``s``. Float mode also compares on
    the grid of ``distance_offset`` steps (each limit halfway between two steps, see
    :func:`xfusion.methods._starfm_kernel.decision_terms`), so data quantised in those steps
    (x1e4 integers, or the same values / 1e4) are decided exactly alike at any scale: on
    ``synthetic600`` / 1e4 the ``"reflectance"`` preset x 1e4 is within 1 DN of ``"usda"`` in
    float mode on every pixel (same RMSE to the truth, 327.0).

    .. versionchanged:: 0.1
       The perfect weight follows the unit (it was 1 in every unit, so in 0..1 reflectance the
       closest candidates weighed least); float mode compares on the offset's grid.

    **Presets.** ``"usda"``: the reference defaults for scaled-integer reflectance (x1e4):
    750 m, 40 slices, uncertainties 50, range [0, 10000], offset 1, fill -9999, reference
    mode. ``"reflectance"``: the same physics for 0..1 reflectance (every value / 1e4:
    uncertainties 0.005, offset 1e-4, range [0, 1]), float mode: its prediction x 1e4 is
    ``"usda"``'s in float mode on the data x 1e4. ``"lst"``: land-surface
    temperature in kelvin, float mode: ``uncertainty_fine=1.0`` K (Landsat single-channel LST
    retrievals validate at about 1 K), ``uncertainty_coarse=0.5`` K (MOD11A1 is within 0.5 K
    at homogeneous validation sites, Wan 2014); ``distance_offset=0.01`` K (the ``+1`` is one
    quantisation step of x1e4 reflectance, 1/50 of its uncertainty; 0.01 K is of the order
    of the LST products' steps, 0.02 K for MOD11A1 and 0.0034 K for Landsat C2, and 1/50-1/100
    of the LST uncertainties, so it keeps its role of avoiding division by zero without
    dominating ``t_dis``, as a literal 1 K would); ``data_range=(150, 400)`` K (all Earth
    surface temperatures, excluding fill values such as 0 or -3.4e38);
    ``max_search_distance=1500`` m (1.5 coarse pixels of 1 km MODIS LST on each side of the
    centre, as USDA's 750 m is 1.5 pixels of 500 m MODIS reflectance; at 30 m that is a
    100 px window, 4x the work of the USDA window, so lower it for speed).

    **Chunks and memory.** Blocks get a halo of ``window // 2`` pixels
    (``boundary="none"``: image edges are edges, never padding) and the similarity threshold
    comes from exact sums over all chunks (Shewchuk expansions, so the sums do not depend on
    how the image is cut), so any chunking gives bit-identical output. Each task holds one
    target and one band of a chunk plus halo (~10 float32 planes per pair). Every prediction
    waits for the global threshold; so that dask holds no chunk across that wait, the
    predictions read their inputs again once it is known (the pair-date fine images are read
    twice) and the input blocks of a row start when the predictions two rows above are done
    (:mod:`xfusion.methods._starfm_stats`): memory is a few rows of chunks, not the image
    (streamed from Zarr to Zarr, one band, 1024 px chunks: peak RSS 0.72 GB at 5000 x 5000
    and 0.98 GB at 10000 x 10000, see ``benchmarks/README.md``).

    .. versionchanged:: 0.1
       The statistics pass no longer keeps the chunks for the predictions (2.04 GB before at
       10000 x 10000).

    **Speed.** About ``npairs * window**2`` candidate tests per pixel: ~4 M px/s on two CPU
    cores at the USDA window of 50 on a quiet machine; measured side by side with the USDA
    C program (2 threads each, loaded machine) the kernel is 30-43x its whole run and the
    ``xfusion fuse starfm`` command line 4.6-7.6x (``benchmarks/bench_starfm_usda.py``).

    .. versionadded:: 0.1

    References
    ----------
    .. [1] Gao, F., Masek, J., Schwaller, M., Hall, F. (2006). On the blending of the Landsat
       and MODIS surface reflectance: predicting daily Landsat surface reflectance. IEEE
       Transactions on Geoscience and Remote Sensing 44(8), 2207-2218.
    .. [2] Gao, F. (2014). STARFM v1.2.1, the USDA-ARS reference C implementation.
    .. [3] Wan, Z. (2014). New refinements and validation of the collection-6 MODIS
       land-surface temperature/emissivity product. Remote Sensing of Environment 140, 36-45.

    Examples
    --------
    >>> import xfusion
    >>> from xfusion.testing import synthetic_scene
    >>> scene = synthetic_scene((96, 96), kind="lst", times=3, fine_times=[0],
    ...                         coarse_cloud_fraction=0.0, seed=1)
    >>> pred = xfusion.starfm(scene, fine="fine", coarse="coarse", preset="lst",
    ...                       max_search_distance=900)
    >>> pred.fine.dims, pred.sizes["time"]
    (('time', 'y', 'x'), 2)
    >>> [str(t)[:10] for t in pred.pair_time.values]
    ['2021-04-03', '2021-04-03']
    >>> truth = scene.truth.sel(time=pred.time)
    >>> bool(abs(pred.fine - truth).mean() < abs(scene.fine.isel(time=0) - truth).mean())
    True

    The accessor is the same function:

    >>> same = scene.fusion.starfm(fine="fine", coarse="coarse", preset="lst",
    ...                            max_search_distance=900)
    >>> bool(same.fine.equals(pred.fine))
    True
    """
    check_device(device)
    if not isinstance(diagnostics, bool):
        raise InvalidParameterError(
            f"starfm() parameter diagnostics must be True or False; got {diagnostics!r}."
        )
    params = _resolve_params(
        preset,
        {
            "mode": mode,
            "max_search_distance": max_search_distance,
            "num_slice": num_slice,
            "uncertainty_fine": uncertainty_fine,
            "uncertainty_coarse": uncertainty_coarse,
            "data_range": data_range,
            "distance_offset": distance_offset,
            "fill": fill,
        },
    )
    roles = resolve_roles(ds, fine, coarse, method=NAME)
    require_band_pairs(ds, roles, method=NAME)
    pixel = _pixel_size(ds, resolution)
    window = int(params.max_search_distance * 2.0 / pixel)
    ydim, xdim = roles.dims
    if window < 1:
        raise InvalidParameterError(
            f"starfm() window int(2 * max_search_distance / resolution) = int(2 * "
            f"{params.max_search_distance:g} / {pixel:g}) is 0 pixels. Use max_search_distance "
            f">= {pixel / 2:g} m (half a pixel)."
        )
    distance_scale = params.max_search_distance / pixel

    tidx = select_targets(ds, roles, targets, method=NAME)
    first, second = _choose_pairs(ds, roles, tidx, pairs)
    if second is None:
        tidx, first = sort_targets(tidx, first)
        pair_lists = [first]
    else:
        tidx, first, second = sort_targets(tidx, first, second)
        pair_lists = [first, second]

    like: dict[str, xr.DataArray] = {}
    fine_data, coarse_data, out_dtypes, out_fills = [], [], [], []
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        f = float_data(ds, fname, dims=roles.dims).transpose(TIME, ydim, xdim)
        c = float_data(ds, cname, dims=roles.dims).transpose(TIME, ydim, xdim)
        like[fname] = f
        fine_data.append(f.data)
        coarse_data.append(c.data)
        dtype, ofill = _output_dtype(ds, fname, f, fill)
        out_dtypes.append(dtype)
        out_fills.append(ofill)

    lazy = any(_is_dask(a) for a in (*fine_data, *coarse_data))
    if lazy:
        import dask.array as da

        xp: Any = da
        fine_data = [a if _is_dask(a) else da.asarray(a) for a in fine_data]
        coarse_data = [a if _is_dask(a) else da.asarray(a) for a in coarse_data]
    else:
        xp = np
    token = ""
    if lazy:
        from dask.base import tokenize

        names = [a.name for a in (*fine_data, *coarse_data)]
        token = tokenize(params, window, distance_scale, names, tidx, pair_lists)

    # fine images of the pair dates (U, B, y, x) and their global thresholds (U, B)
    upos = sorted({int(p) for pl in pair_lists for p in pl})
    pair_imgs = xp.stack([xp.stack([fd[u] for fd in fine_data]) for u in upos])
    labels = [
        [f"{fname!r} at {_fmt_dates(ds, [u])[0]}" for fname in roles.fine] for u in upos
    ]
    pair_coarse = xp.stack([xp.stack([cd[u] for cd in coarse_data]) for u in upos])
    thr_ub = thresholds(pair_imgs, params=params, labels=labels, token=token,
                        coarse=pair_coarse, names=(roles.fine, roles.coarse))  # fmt: skip
    where = {u: i for i, u in enumerate(upos)}

    def per_target(k: int, arrays: list[Any], pos: list[np.ndarray]) -> Any:
        # (B, P, y, x) for target k
        return xp.stack([xp.stack([a[int(pl[k])] for pl in pos]) for a in arrays])

    ntar, nband, npair = len(tidx), len(roles.fine), len(pair_lists)
    l1 = xp.stack([per_target(k, fine_data, pair_lists) for k in range(ntar)])
    m1 = xp.stack([per_target(k, coarse_data, pair_lists) for k in range(ntar)])
    m2 = xp.stack([per_target(k, coarse_data, [tidx]) for k in range(ntar)])
    thr = xp.stack([
        xp.stack([xp.stack([thr_ub[where[int(pl[k])], b] for pl in pair_lists])
                  for b in range(nband)])
        for k in range(ntar)
    ])[..., None]  # fmt: skip  (T, B, P, 2, 1): thresholds and unit scales
    inputs = xp.concatenate([l1, m1, m2], axis=2)  # (T, B, 2P + 1, y, x): one overlap/block

    kdim = 3 if diagnostics else 1
    all_dtypes = [*out_dtypes, *((np.dtype(np.int32), np.dtype(np.float32)) if diagnostics
                                 else ())]  # fmt: skip
    stack_dtype = np.result_type(*all_dtypes)
    before = window // 2
    ntasks = ntar * nband
    if lazy:
        import dask.array as da

        # the spatial chunks map_blocks_halo would use (none shorter than the halo), so that
        # the input blocks line up with the output blocks for throttle_rows
        space = tuple(
            (sum(c),) if sum(c) <= before else
            da.overlap.ensure_minimum_chunksize(before, c) if len(c) > 1 else c
            for c in inputs.chunks[3:]
        )  # fmt: skip
        inputs = inputs.rechunk(((1,) * ntar, (1,) * nband, (2 * npair + 1,), *space))
        # the predictions read their inputs again, once the thresholds are known (see
        # xfusion.methods._starfm_stats)
        inputs, gated = gated_blocks(inputs, thr_ub, token=token)
        thr = thr.rechunk((1, 1, npair, 2, 1))
        ntasks *= len(inputs.chunks[3]) * len(inputs.chunks[4])
        leading = ((1,) * ntar, (1,) * nband, (kdim,))
    else:
        leading = None
    threads = kernel_threads(threads, ntasks=ntasks if lazy else 1)
    out = map_blocks_halo(
        _starfm_tasks,
        inputs,
        halo=before,
        dtype=stack_dtype,
        leading_chunks=leading,
        method=NAME,
        token_parts=(params, window, distance_scale, diagnostics, device, token),
        extra=(thr,),
        kwargs={
            "window": window,
            "distance_scale": distance_scale,
            "params": params,
            "out_dtypes": tuple(d.str for d in out_dtypes),
            "out_fills": tuple(out_fills),
            "stack_dtype": stack_dtype.str,
            "diagnostics": diagnostics,
            "device": device,
            "threads": threads,
        },
    )
    if lazy:
        out = throttle_rows(out, inputs, gated)

    data: dict[str, Any] = {}
    for b, fname in enumerate(roles.fine):
        data[fname] = pick_plane(out, (b, 0), out_dtypes[b], lazy=lazy, method=NAME)
        if diagnostics:
            for k, (suffix, dt, long_name) in enumerate(
                (("n_candidates", np.int32, "STARFM candidates kept (all pairs)"),
                 ("weight_sum", np.float32, "STARFM sum of candidate weights")), start=1
            ):  # fmt: skip
                dname = f"{fname}_{suffix}"
                data[dname] = pick_plane(out, (b, k), np.dtype(dt), lazy=lazy, method=NAME)
                tmpl = like[fname].copy(deep=False)
                tmpl.attrs = {"long_name": long_name}
                like[dname] = tmpl
    time_coords = {"pair_time": first}
    if second is not None:
        time_coords["pair_time_after"] = second
    res = assemble_result(ds, data, like=like, target_idx=tidx, time_coords=time_coords)
    for b, fname in enumerate(roles.fine):
        if out_fills[b] is not None:
            res[fname].attrs["nodata"] = int(out_fills[b])
    record = {**asdict(params), "window": window, "resolution": pixel,
              "npairs": npair, "device": device}  # fmt: skip
    record["data_range"] = [x if math.isfinite(x) else str(x) for x in params.data_range]
    res.attrs["xfusion_starfm"] = json.dumps(record, allow_nan=False)
    return res


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: str | None = None) -> int:
    """Pixels a job tile reads around itself: the search distance of the preset (or
    ``max_search_distance``), plus one pixel (the registry's halo rule for STARFM)."""
    preset = params.get("preset") or "usda"
    if preset not in STARFM_PRESETS:
        raise InvalidParameterError(
            f"STARFM preset {preset!r} is unknown; use one of {sorted(STARFM_PRESETS)}."
        )
    dist = params.get("max_search_distance") or STARFM_PRESETS[preset].max_search_distance
    return math.ceil(float(dist) / resolution) + 1


def _starfm_cli(ds: xr.Dataset, /, *, pairs: Any = None, **kwargs: Any) -> xr.Dataset:
    """CLI entry: like :func:`starfm`, but with two-pair mode when the pairs allow it.

    The USDA program uses every pair it is given; likewise ``xfusion fuse starfm`` with fine
    dates on both sides of every target uses both (``pairs="bracket"``), else the nearest
    pair before (``"nearest"``), unless ``--param pairs=...`` says otherwise.
    """
    if pairs is None:
        pairs = "nearest"
        roles = resolve_roles(ds, kwargs["fine"], kwargs["coarse"], method=NAME)
        try:
            tidx = select_targets(ds, roles, kwargs.get("targets"), method=NAME)
            pos = _pair_positions(ds, roles)
            if all(any(p < t for p in pos) and any(p > t for p in pos) for t in tidx):
                pairs = "bracket"
        except (TimeAxisError, NoOverlapError):
            pass  # starfm() reports it
    return starfm(ds, pairs=pairs, **kwargs)

