"""FSDAF (Zhu et al. 2016) on fusion cubes: lazy, chunk-invariant, close to the author's program.

FSDAF predicts a fine image at a target date from one fine/coarse pair and the coarse image of
the target date, in three kinds of steps:

GLOBAL (computed first, lazily, by exact reductions that do not depend on the chunking):
    the classification of the pair's fine image (a deterministic ISODATA fitted on a regular,
    chunk-independent grid sample of the image, then every pixel labelled with its nearest
    class centre, chunk by chunk; or a user class map), the number of classes K and the
    standard deviation of each band of the fine image (the similarity thresholds
    ``2 std / K``), and with ``blocks=False`` the unmixing of the class changes.
PER FSDAF BLOCK (``block_cells`` x ``block_cells`` coarse cells anchored at the image origin,
    read with a halo of one coarse cell; the blocks are defined on the coarse grid, never by
    the dask chunks): outlier clamp, class fractions, homogeneity index, bounded unmixing of
    the class changes, thin-plate-spline prediction of the coarse image, residual
    distribution; the result is the change image ``delta21``.
PER PIXEL (chunks of the fine grid with a halo of ``half_window`` pixels of ``delta21``):
    the similar pixels of every target in its window and the weighted mean of their change.

The compute kernels are in :mod:`xfusion.methods._fsdaf_kernel`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import fields, replace
from functools import reduce
from typing import Any, Literal

import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import (
    assemble_result,
    float_data,
    require_band_pairs,
    resolve_roles,
    select_pairs,
    select_targets,
    sort_targets,
)
from xfusion.cube.validate import TIME
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
)

__all__ = [
    "FSDAF_INTERPOLATORS",
    "FSDAF_PRESETS",
    "PARAMS",
    "FsdafInterpolator",
    "FsdafParams",
    "fsdaf",
    "halo",
    "job_halo",
]

from xfusion.methods._fsdaf_graph import (
    _block_bounds,
    _cell_stats,
    _change_numpy,
    _class_change_dask,
    _classify_block,
    _delayed_chunks,
    _fit_centers,
    _global_std,
    _global_unmix,
    _is_dask,
    _isodata_sample,
    _mask_labels,
    _masked_fine,
    _n_classes,
    _predict_task,
    _to_output,
    _wave_dask,
)
from xfusion.methods._fsdaf_params import (
    FSDAF_INTERPOLATORS,
    FSDAF_PRESETS,
    NAME,
    PARAMS,
    FsdafInterpolator,
    FsdafParams,
    _as_int,
    _resolve_params,
    halo,
    job_halo,
)
from xfusion.methods._output import integer_layout

_CLASS_VAR = "fsdaf_class"
_HI_VAR = "fsdaf_hi"


# --------------------------------------------------------------------------------------------
# parameters and presets



















# --------------------------------------------------------------------------------------------
# scale factor


def _runs_scale(a: np.ndarray, axis: int) -> tuple[int, int] | None:
    """(period, offset) of the value changes of ``a`` along ``axis``; None if no change."""
    x = np.moveaxis(a, axis, -1)
    prev, cur = x[..., :-1], x[..., 1:]
    changed = ~((prev == cur) | (np.isnan(prev) & np.isnan(cur)))
    pos = np.flatnonzero(changed.reshape(-1, changed.shape[-1]).any(0)) + 1
    if pos.size == 0:
        return None
    g = reduce(math.gcd, (int(p - pos[0]) for p in pos[1:]), 0)
    if g == 0:  # a single change position: the period is at least its distance to both edges
        g = int(pos[0])
    return g, int(pos[0] % g) if g else 0


def _detect_scale(images: list[np.ndarray], names: Sequence[str]) -> int:
    """Coarse/fine ratio of block-constant coarse images on the fine grid (numpy only)."""
    periods: list[tuple[int, int]] = []
    for img in images:
        for axis in (-2, -1):
            r = _runs_scale(img, axis)
            if r is not None:
                periods.append(r)
    if not periods:
        raise InvalidParameterError(
            f"fsdaf() cannot detect the coarse/fine ratio: the coarse variable(s) {list(names)!r} "
            "are constant. Pass scale_factor=... (e.g. 16 for 480 m MODIS on 30 m Landsat)."
        )
    s = reduce(math.gcd, (p for p, _ in periods), 0)
    offsets = {o % s for _, o in periods} if s else {0}
    if s < 2:
        raise InvalidParameterError(
            f"fsdaf() cannot detect the coarse/fine ratio: the coarse variable(s) "
            f"{list(names)!r} are not constant over square blocks of pixels (e.g. they were "
            "resampled bilinearly onto the fine grid). Pass scale_factor=round(coarse pixel "
            "size / fine pixel size), e.g. scale_factor=16 for 480 m MODIS on 30 m Landsat."
        )
    if offsets != {0}:
        off = max(offsets)
        raise GridMismatchError(
            f"fsdaf() found coarse pixels of {s} x {s} fine pixels whose edges lie {off} px "
            "from the image origin: FSDAF needs the image origin on a coarse-pixel corner. "
            f"Crop the cube, e.g. ds.isel(y=slice({off}, None), x=slice({off}, None)) for the "
            "affected axes, or pass scale_factor=... to use cells of your choice."
        )
    return s


def _resolve_scale(ds: xr.Dataset, roles: Any, given: int | None, coarse: list[Any],
                   lazy: bool) -> tuple[int, str]:  # fmt: skip
    if given is not None:
        return given, "given"
    for src in (ds.attrs, *(ds[c].attrs for c in roles.coarse)):
        v = src.get("coarse_factor")
        if v is not None:
            return _as_int("scale_factor (the cube's coarse_factor attribute)", v,
                           minimum=1), "coarse_factor attribute"  # fmt: skip
    if lazy:
        raise InvalidParameterError(
            "fsdaf() needs the coarse/fine ratio scale_factor=... for a dask-backed cube "
            "without a 'coarse_factor' attribute (detecting it would read the data). Pass "
            "scale_factor=round(coarse pixel size / fine pixel size), e.g. 16 for 480 m MODIS "
            "on 30 m Landsat, or set ds.attrs['coarse_factor']."
        )
    return _detect_scale([np.asarray(c, np.float64) for c in coarse], roles.coarse), "detected"


# --------------------------------------------------------------------------------------------
# global statistics (exact, chunk-independent)


























# --------------------------------------------------------------------------------------------
# blocks
































# --------------------------------------------------------------------------------------------
# step 13






# --------------------------------------------------------------------------------------------
# inputs


def _classes_input(ds: xr.Dataset, classes: Any, dims: tuple[str, str]) -> Any:
    """The user's class map as a (y, x) numpy/dask integer-like array."""
    if classes is None:
        return None
    ny, nx = ds.sizes[dims[0]], ds.sizes[dims[1]]
    if isinstance(classes, str):
        if classes not in ds.variables:
            raise InvalidParameterError(
                f"fsdaf() classes={classes!r} is not a variable of the cube; variables: "
                f"{sorted(map(str, ds.variables))!r}. Pass the name of a (y, x) class map or "
                "an array."
            )
        classes = ds[classes]
    if isinstance(classes, xr.DataArray):
        extra = [d for d in classes.dims if d not in dims]
        if extra or set(classes.dims) != set(dims):
            raise MissingDimensionError(
                f"fsdaf() classes= must have exactly the cube's spatial dims {dims!r}; found "
                f"{tuple(classes.dims)!r}. Select one map, e.g. classes.isel(time=0)."
            )
        arr = classes.transpose(*dims).data
    else:
        arr = classes
    shape = getattr(arr, "shape", None)
    dtype = getattr(arr, "dtype", None)
    if shape is None or dtype is None:
        arr = np.asarray(arr)
        shape, dtype = arr.shape, arr.dtype
    if tuple(shape) != (ny, nx):
        raise GridMismatchError(
            f"fsdaf() classes= has shape {tuple(shape)!r} but the cube's grid is {(ny, nx)!r} "
            f"({dims[0]}, {dims[1]}). Give one label per fine pixel."
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or \
            np.issubdtype(dtype, np.bool_):  # fmt: skip
        raise InvalidParameterError(
            f"fsdaf() classes= must hold integer class labels (0 = background); found dtype "
            f"{dtype}."
        )
    return arr


def _output_dtype(ds: xr.Dataset, name: str, work: xr.DataArray) -> tuple[np.dtype, float | None]:
    """Output dtype and fill of fine variable ``name`` (see :mod:`xfusion.methods._output`)."""
    layout = integer_layout(ds, name, fill=None, method=NAME)
    return (np.dtype(work.dtype), None) if layout is None else layout


# --------------------------------------------------------------------------------------------
# the public function


def fsdaf(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: Any = "nearest",
    preset: Literal["zhu", "reflectance", "lst"] | None = "zhu",
    classes: Any = None,
    scale_factor: int | None = None,
    diagnostics: bool = False,
    device: str = "auto",
    half_window: int | None = None,
    n_similar: int | None = None,
    min_classes: int | None = None,
    max_classes: int | None = None,
    n_pure: int | None = None,
    data_range: tuple[float, float] | None = None,
    block_cells: int | None = None,
    change_quantiles: tuple[float, float] | None = None,
    outlier_quantiles: tuple[float, float] | None = None,
    max_weight: float | None = None,
    interpolator: FsdafInterpolator | None = None,
    blocks: bool | None = None,
) -> xr.Dataset:
    """Predict fine images at target dates with FSDAF (Zhu et al. 2016).

    FSDAF (Flexible Spatiotemporal DAta Fusion) takes the fine image ``F1`` and the coarse
    image ``C1`` of a pair date and the coarse image ``C2`` of the target date. It classifies
    ``F1``, unmixes the coarse change into one change per class (bounded least squares over
    the purest coarse cells), predicts ``F1 + class change``, interpolates ``C2`` to the fine
    grid with a thin-plate spline, distributes the coarse residual to the fine pixels with
    weights from the spline and the homogeneity of the neighbourhood, and finally smooths the
    change with the similar pixels of a window. The result is lazy on dask input (nothing is
    computed here) and does not depend on the chunking, bit for bit.

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`): ``time`` plus the spatial dims,
        fine and coarse variables on ONE grid (the coarse image resampled onto the fine
        grid), NaN (or a declared nodata value) where unobserved.
    fine, coarse : str or list of str
        Fine and coarse variable names, paired by position (one per band). FSDAF uses all
        bands together (classification, similar pixels), so give every band in one call.
    targets : date-like or sequence of date-like, optional
        Dates to predict. Default: every date where the coarse variables are observed and
        the fine ones are not (``observed_<name>`` coordinates).
    pairs : {"nearest", "before", "after"}, date-like, sequence or mapping
        The pair of each target: the nearest pair date before it (else after), strictly
        before/after, or explicit dates (one for all targets, one per target, or a mapping
        target → pair date), as :func:`xfusion.starfm` in one-pair mode.
    preset : {"zhu", "reflectance", "lst"}, default "zhu"
        Defaults of every parameter below. ``"zhu"``: the IDL program's (reflectance x1e4,
        data range 0..10000); ``"reflectance"``: the same for 0..1 reflectance;
        ``"lst"``: land-surface temperature in kelvin (data range 150..400 K). Parameters
        given explicitly override the preset.
    classes : str, array or xarray.DataArray, optional
        A class map with the cube's spatial dims (or the name of such a variable): integer
        labels, 0 = background. Default: a deterministic ISODATA classification of the
        pair's fine image (see Notes). The IDL program uses ENVI's ISODATA, which cannot be
        reproduced outside ENVI: pass its class map here for parity.
    scale_factor : int, optional
        The coarse/fine ratio ``s``: fine pixels per coarse pixel side (16 for 480 m MODIS
        on 30 m Landsat). xfusion cubes hold the coarse images already resampled onto the
        fine grid, so ``s`` is not in the grid; it is taken, in this order, from this
        argument, from a ``coarse_factor`` attribute of the cube or of the coarse variables
        (set by :func:`xfusion.testing.synthetic_scene`), or, for numpy-backed cubes only, by
        detecting coarse images that are constant over ``s x s`` blocks (nearest-neighbour
        resampled coarse pixels; the blocks must start at the image origin). For
        bilinearly resampled coarse data or dask-backed cubes without the attribute, pass it.
    diagnostics : bool, default False
        Also return ``fsdaf_class`` (int32 class map of the pair's fine image, 0 =
        background) and ``fsdaf_hi`` (float32 homogeneity index) per target.
    device : {"auto", "cpu", "cuda"} or "cuda:N", default "auto"
        Accepted for API symmetry; FSDAF runs its numba/numpy kernels on the CPU.
    half_window, n_similar, min_classes, max_classes, n_pure, data_range, block_cells, \
change_quantiles, outlier_quantiles, max_weight
        The IDL parameters ``w``, ``num_similar_pixel``, ``min_class``, ``max_class``,
        ``num_pure``, ``(DN_min, DN_max)``, ``block_size``, the unmixing's change quantiles,
        the outlier-clamp quantiles and the residual weight cap (see :class:`FsdafParams`).
    interpolator : {"tps", "idw", "bicubic"}, optional
        Interpolation of ``C2`` to the fine grid: the exact thin-plate spline through the
        cell centres (IDL ``MIN_CURVE_SURF, /TPS``), cuFSDAF's inverse-distance weighting
        (radius ``2 s``, power 2), or bicubic convolution of the cell grid.
    blocks : bool, optional
        True (default): the unmixing per FSDAF block, as the IDL program; False: one global
        unmixing of the whole image (the spline and the residuals stay per block).

    Returns
    -------
    xarray.Dataset
        One variable per fine name with dims ``(time, y, x)``, ``time`` = the targets
        (sorted), a ``pair_time`` coordinate (the pair used), the cube's spatial coords,
        ``spatial_ref`` and attrs plus ``xfusion_fsdaf`` (the parameters used, JSON). Float
        inputs give float output with NaN where the fine image is background; integer inputs
        give the same integer dtype (truncated, as IDL ``FIX``) with the nodata value there.
        Dask-backed when the input is.

    Raises
    ------
    InvalidParameterError
        Unknown preset/interpolator, parameters out of range, no ``scale_factor`` where it
        cannot be found, an image smaller than one coarse cell, a bad class map.
    GridMismatchError
        Fine and coarse on different grids, a class map of another shape, coarse pixels
        that do not start at the image origin.
    NotEnoughDataError
        ``blocks=False`` and a class without any coarse cell to estimate its change.
    NoOverlapError, TimeAxisError, MissingDimensionError, VariableNotFoundError
        From the target/pair selection and the cube checks.

    See Also
    --------
    xfusion.starfm : STARFM, the classic one-pair method.
    xfusion.baseline : the naive baselines FSDAF must beat.

    Notes
    -----
    **Algorithm** (the IDL ``FSDAF.pro`` of 02/15/2019, step by step; spec in the project).
    1. Classes of ``F1`` (ISODATA or ``classes=``); background = NaN in any fine band or label 0.
    2. FSDAF blocks of ``block_cells`` coarse cells anchored at the image origin, each read
    with a halo of ``s`` pixels; per block the classes present are renumbered ``1..K``.
    3. ``F1`` outliers clamped per band (values beyond the ``outlier_quantiles`` or outside
    ``data_range`` → the extreme remaining values). 4-5. Coarse cells of ``s x s`` pixels:
    means of ``F1``, ``C1``, ``C2`` and the class fractions (zeroed when background is inside).
    6. Homogeneity ``HI`` = share of the ``(2w+1)^2`` window with the pixel's class.
    7. Per band, the class changes: per class the ``n_pure`` purest cells with fraction > 0.01,
    their coarse changes within the ``change_quantiles``; bounded least squares (exact BVLS)
    within ``[min dC - std dC, max dC + std dC]``. 8. ``L2_1 = F1 + change of its class``.
    9. Bounds of the prediction from ``C2`` and ``L2_1`` within ``data_range``. 10. ``C2`` by
    thin-plate spline through the cell centres. 11. Residual ``R = dC - mean(L2_1 - F1)`` per
    cell, distributed with weights ``e HI + |R| (1 - HI)`` (``e`` the spline's change of the
    residual's sign). 12. ``delta21 = clamp(L2_1 + r) - F1``. 13. Per target pixel, the
    ``n_similar`` most similar pixels of the window (all bands within ``2 std / K``; ranked by
    relative spectral distance with a small distance term), weighted by spectral and spatial
    distance: ``F2 = F1 + sum W delta21``, with the IDL range fix.

    **xfusion choices where the IDL program cannot be followed or is buggy**: the
    classification is a deterministic ISODATA (k-means++ seeding with a fixed seed, ENVI's
    parameters: at most ``max_classes`` and at least ``min_classes`` classes, 20 iterations,
    change threshold 5 %, merge distance and split standard deviation 5 % of the data range,
    2 merge pairs, 200 pixels per class) fitted on a regular sample of at most 50 000
    pixels of the image, so it is approximate to ENVI's. The similarity threshold uses the
    standard deviation of the whole image and the global K (IDL: the block's standard
    deviation and the K of the last block processed). The window of step 13 is clipped by
    the image, not by the block. Cells cut by the image edge are cells of their own (IDL
    pools them into the block's first cell; their spline control point stays on the
    coarse lattice). A cell with missing coarse data gives no unmixing row, no spline
    control point and no residual. NaN fine pixels are unobserved: the predicted cell change
    ``mean(L2_1 - F1)`` and the residual weights use the observed pixels only (IDL counts
    background pixels as unchanged; pixels labelled 0 in ``classes=`` still are). A class with no cell of
    fraction > 0.01 is unmixed from the cells that contain it at all; a class with no usable
    cell in a block takes the block's mean coarse change (IDL fails). With no similar pixel
    (a constant image) ``F2 = F1 + delta21``. Ties of the similar-pixel ranking go to the
    nearer, then the first pixel in row-major order.

    **Global and local steps, chunks and memory.** Global, computed first by exact lazy
    reductions: the class centres (one task on the grid sample), K, the standard deviation
    of each band (exact sums), and with ``blocks=False`` the unmixing. Per FSDAF block (the
    block and its one-cell halo are gathered into one task, whatever the chunks): steps
    3-12. Per block of the same grid with a halo of ``half_window`` pixels: step 13; the
    result is rechunked to the input's chunks. Any chunking gives bit-identical results.
    On dask, the block and pixel tasks wait for the global statistics and run block row by
    block row (a row of blocks waits for the predictions that no longer need the rows
    above), so besides a few block rows (about 50 bytes per pixel of a row of
    ``block_cells * s`` pixels) only the fine image and the class map of the pair date
    (input dtype and 1 byte per pixel) are held between the statistics and the end; a
    10000 x 10000 one-band run streamed to Zarr peaks at 1.96 GB with 512 px chunks and
    2.30 GB with 1024 px chunks (measured on a 2-core machine, see
    ``benchmarks/fsdaf_results.md``): use chunks of about 512 px for large images.

    **Speed.** The thin-plate spline is solved once per block (LU shared by all bands,
    reused by blocks with the same control lattice) and evaluated on the fine grid as
    ``s^2`` FFT convolutions of the coefficient lattice; step 13 is a numba kernel over rows
    (``(2w+1)^2`` candidates per pixel in vectorised passes over runs of centres, a sorted
    list of the ``n_similar`` best per centre, the selection shared by all bands), threaded
    like STARFM's kernel. In-memory cubes run the blocks on threads too. See
    ``benchmarks/fsdaf_results.md`` for measured times next to STARFM.

    .. versionadded:: 0.2

    References
    ----------
    .. [1] Zhu, X., Helmer, E.H., Gao, F., Liu, D., Chen, J., Lefsky, M.A. (2016). A flexible
       spatiotemporal method for fusing satellite images with different resolutions.
       Remote Sensing of Environment 172, 165-177.
    .. [2] Gao, H., Zhu, X., Guan, Q., Yang, X., Yao, Y., Zeng, W., Peng, X. (2021). cuFSDAF:
       an enhanced flexible spatiotemporal data fusion algorithm parallelized using
       graphics processing units. IEEE TGRS 60, 4403016.

    Examples
    --------
    >>> from xfusion.methods.fsdaf import fsdaf
    >>> from xfusion.testing import synthetic_scene
    >>> scene = synthetic_scene((64, 64), kind="reflectance", times=3, fine_times=[0],
    ...                         coarse_factor=8, coarse_cloud_fraction=0.0, seed=1)
    >>> pred = fsdaf(scene, fine=["fine_red", "fine_nir"],
    ...              coarse=["coarse_red", "coarse_nir"], preset="reflectance",
    ...              half_window=8)
    >>> pred.fine_red.dims, pred.sizes["time"]
    (('time', 'y', 'x'), 2)
    >>> truth = scene.truth_nir.sel(time=pred.time)
    >>> err = float(abs(pred.fine_nir - truth).mean())
    >>> base = float(abs(scene.fine_nir.isel(time=0) - truth).mean())
    >>> err < base
    True
    """
    check_device(device)
    if not isinstance(diagnostics, bool):
        raise InvalidParameterError(
            f"fsdaf() parameter diagnostics must be True or False; got {diagnostics!r}."
        )
    params = _resolve_params(
        preset,
        {"half_window": half_window, "n_similar": n_similar, "min_classes": min_classes,
         "max_classes": max_classes, "n_pure": n_pure, "data_range": data_range,
         "scale_factor": scale_factor, "block_cells": block_cells,
         "change_quantiles": change_quantiles, "outlier_quantiles": outlier_quantiles,
         "max_weight": max_weight, "interpolator": interpolator, "blocks": blocks},
    )  # fmt: skip
    roles = resolve_roles(ds, fine, coarse, method=NAME)
    require_band_pairs(ds, roles, method=NAME)
    ydim, xdim = roles.dims
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]

    tidx = select_targets(ds, roles, targets, method=NAME)
    pidx = select_pairs(ds, roles, tidx, pairs, method=NAME)
    tidx, pidx = sort_targets(tidx, pidx)

    like: dict[str, xr.DataArray] = {}
    fine_data, coarse_data, out_dtypes, out_fills = [], [], [], []
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        f = float_data(ds, fname, dims=roles.dims).transpose(TIME, ydim, xdim)
        c = float_data(ds, cname, dims=roles.dims).transpose(TIME, ydim, xdim)
        like[fname] = f
        fine_data.append(f.data)
        coarse_data.append(c.data)
        dtype, ofill = _output_dtype(ds, fname, f)
        out_dtypes.append(dtype)
        out_fills.append(ofill)
    cmap = _classes_input(ds, classes, roles.dims)

    lazy = any(_is_dask(a) for a in (*fine_data, *coarse_data)) or _is_dask(cmap)
    used = sorted({int(t) for t in tidx} | {int(p) for p in pidx})
    s, s_source = _resolve_scale(
        ds, roles, params.scale_factor, [cd[u] for cd in coarse_data for u in used], lazy
    )
    if s > min(ny, nx):
        raise InvalidParameterError(
            f"fsdaf() scale_factor={s} is larger than the image ({ny} x {nx} px): FSDAF needs "
            "at least one coarse cell. Use a larger area or a smaller scale_factor."
        )
    params = replace(params, scale_factor=s)

    if lazy:
        import dask.array as da
        from dask.base import tokenize

        xp: Any = da
        fine_data = [a if _is_dask(a) else da.asarray(a) for a in fine_data]
        coarse_data = [a if _is_dask(a) else da.asarray(a) for a in coarse_data]
        if cmap is not None and not _is_dask(cmap):
            cmap = da.asarray(cmap)
        token = tokenize(params, [a.name for a in (*fine_data, *coarse_data)],
                         None if cmap is None else cmap.name, tidx, pidx)  # fmt: skip
    else:
        xp = np
        token = ""
    spatial = fine_data[0].chunks[1:] if lazy else None

    def bands(arrays: list[Any], t: int) -> Any:
        out = xp.stack([a[t] for a in arrays])
        # dask: the input dtype (the kernels compute in float64; held chunks stay small)
        return out.rechunk({0: -1}) if lazy else np.asarray(out, np.float64)

    # ---- global statistics per pair date ------------------------------------------------
    lab_dtype = np.dtype(np.uint8 if params.max_classes <= 255 else np.int32)
    per_pair: dict[int, dict[str, Any]] = {}
    for u in sorted({int(p) for p in pidx}):
        ptok = f"{token}-{u}"
        f1 = _masked_fine(bands(fine_data, u))
        cm = None
        if cmap is not None:
            cm = cmap.rechunk(f1.chunks[1:])[None] if lazy else np.asarray(cmap)[None]
        if cmap is None:
            sample, _ = _isodata_sample(f1, _isodata_limit())
            if lazy:
                import dask

                centers = dask.delayed(_fit_centers, pure=True)(
                    _delayed_chunks(sample.rechunk(-1))[0], params=params, n_total=ny * nx,
                    dask_key_name=f"xfusion.{NAME}-isodata-{ptok}")  # fmt: skip
                lab = da.map_blocks(_classify_block, f1, centers, lab_dtype.str,
                                    dtype=lab_dtype, chunks=((1,), *f1.chunks[1:]),
                                    meta=np.empty((0, 0, 0), lab_dtype),
                                    name=f"xfusion.{NAME}-classes-{ptok}")  # fmt: skip
            else:
                centers = _fit_centers(sample, params=params, n_total=ny * nx)
                lab = _classify_block(f1, centers, lab_dtype.str)
        elif lazy:
            lab = da.map_blocks(_mask_labels, cm, f1, dtype=np.int32,
                                chunks=((1,), *f1.chunks[1:]),
                                meta=np.empty((0, 0, 0), np.int32),
                                name=f"xfusion.{NAME}-classes-{ptok}")  # fmt: skip
        else:
            lab = _mask_labels(cm, f1)
        std = _global_std(f1, ptok)
        kcls = _n_classes(lab, ptok)
        per_pair[u] = {"f1": f1, "lab": lab, "std": std, "k": kcls}

    # ---- per target: steps 3-12 on blocks, then step 13 ------------------------------------
    nb = len(roles.fine)
    threads = None
    if lazy:
        from xfusion.engine.device import kernel_threads

        assert spatial is not None
        # step 13 runs on the FSDAF block grid: each task needs the change of its block and
        # of the neighbours within w pixels, so dask can proceed block row by block row
        bsz = params.block_cells * s
        grid = tuple(tuple(b - a for a, b, _, _ in _block_bounds(n, bsz, s)) for n in (ny, nx))
        threads = kernel_threads(ntasks=len(grid[0]) * len(grid[1]))
    preds, his = [], []
    for t, u in zip(tidx, pidx, strict=True):
        st = per_pair[int(u)]
        f1, lab = st["f1"], st["lab"]
        c1 = bands(coarse_data, int(u))
        c2 = bands(coarse_data, int(t))
        ttok = f"{token}-{int(t)}-{int(u)}"
        class_change = None
        if not params.blocks:
            class_change = (_class_change_dask(f1, c1, c2, lab, params=params, s=s, token=ttok)
                            if lazy else _global_unmix(_numpy_cell_stats(f1, c1, c2, lab, params, s),
                                                       params))  # fmt: skip
        if lazy:
            pred, hi_t = _wave_dask(f1, c1, c2, lab, st["std"], st["k"], params=params, s=s,
                                    class_change=class_change, token=ttok,
                                    diagnostics=diagnostics, threads=threads)  # fmt: skip
        else:
            ch = _change_numpy(f1, c1, c2, lab, params=params, s=s, class_change=class_change,
                               with_hi=diagnostics)  # fmt: skip
            pred = map_blocks_halo(
                _predict_task, f1, ch[:nb], c1, c2, lab, halo=params.half_window,
                dtype=np.float64, method=NAME, extra=(st["std"], st["k"]),
                kwargs={"params": params, "threads": threads},
            )  # fmt: skip
            hi_t = ch[nb] if diagnostics else None
        preds.append(pred)
        if diagnostics:
            his.append(hi_t)

    data: dict[str, Any] = {}
    stacked = xp.stack(preds)  # (T, B, y, x)
    for b, fname in enumerate(roles.fine):
        sel = stacked[:, b]
        if lazy:
            sel = sel.rechunk(((1,) * len(tidx), *spatial))  # back to the input's chunks
            data[fname] = da.map_blocks(
                _out_block, sel, dtype=out_dtypes[b], target=out_dtypes[b].str,
                fill=out_fills[b], name=f"xfusion.{NAME}-out{b}-{token}",
            )  # fmt: skip
        else:
            data[fname] = _to_output(sel, dtype=out_dtypes[b].str, fill=out_fills[b])
    if diagnostics:
        labs = xp.stack([per_pair[int(u)]["lab"][0] for u in pidx])
        hi_arr = xp.stack(his).astype(np.float32)
        if lazy:
            hi_arr = hi_arr.rechunk(((1,) * len(tidx), *spatial))
        data[_CLASS_VAR] = labs.astype(np.int32)
        data[_HI_VAR] = hi_arr
        for vname, long_name in (
            (_CLASS_VAR, "FSDAF class of the pair's fine image (0 = background)"),
            (_HI_VAR, "FSDAF homogeneity index"),
        ):
            tmpl = like[roles.fine[0]].copy(deep=False)
            tmpl.attrs = {"long_name": long_name}
            tmpl.name = vname
            like[vname] = tmpl
    res = assemble_result(ds, data, like=like, target_idx=tidx, time_coords={"pair_time": pidx})
    for b, fname in enumerate(roles.fine):
        if out_fills[b] is not None:
            res[fname].attrs["nodata"] = out_fills[b]
    record = {f.name: getattr(params, f.name) for f in fields(params)}
    record["scale_factor_source"] = s_source
    record["classes"] = "supplied" if classes is not None else "isodata"
    res.attrs["xfusion_fsdaf"] = json.dumps(record)
    return res


def _out_block(block: np.ndarray, *, target: str, fill: float | None) -> np.ndarray:
    return _to_output(block, dtype=target, fill=fill)


def _numpy_cell_stats(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray,
                      params: FsdafParams, s: int) -> list[Any]:  # fmt: skip
    ny, nx = f1.shape[1:]
    bs = params.block_cells * s
    out = []
    for ya in range(0, ny, bs):
        for xa in range(0, nx, bs):
            sl = (slice(None), slice(ya, ya + bs), slice(xa, xa + bs))
            out.append(_cell_stats(f1[sl], c1[sl], c2[sl], lab[sl], s))
    return out


def _isodata_limit() -> int:
    from xfusion.methods._fsdaf_kernel import ISODATA_SAMPLE

    return ISODATA_SAMPLE


def _fsdaf_cli(ds: xr.Dataset, /, **kwargs: Any) -> xr.Dataset:
    """CLI entry (``xfusion fuse fsdaf``): :func:`fsdaf` with the CLI's keyword names."""
    return fsdaf(ds, **kwargs)

