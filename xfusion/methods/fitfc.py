"""Fit-FC (Wang & Atkinson 2018) on fusion cubes: lazy, chunk-invariant, two reference variants.

Fit-FC predicts a fine image at a target date from one fine/coarse pair in three steps:
regression model fitting (RM) between the coarse images of the pair date and the target,
spatial filtering (SF) of the regression prediction over spectrally similar fine pixels, and
residual compensation (RC) with the interpolated coarse residual. The per-pixel work is the
numba kernel of :mod:`xfusion.methods._fitfc_kernel`, mapped over the spatial chunks with a
halo derived from the parameters (:func:`halo`). Fit-FC has no global statistic, so each block
only needs its halo and the output is bit-identical for any chunking.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from functools import reduce
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
    select_pairs,
    select_targets,
    sort_targets,
)
from xfusion.cube.validate import TIME, get_geobox
from xfusion.engine.device import kernel_threads as _kernel_threads
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    XFusionError,
)
from xfusion.methods._output import integer_layout, pick_plane, to_integer

__all__ = [
    "FITFC_PRESETS",
    "FITFC_VARIANTS",
    "PARAMS",
    "FitfcParams",
    "fitfc",
    "halo",
]

NAME = "fitfc"

FitfcVariant: TypeAlias = Literal["wang", "imagefusion"]
"""``"wang"``: the author's MATLAB scripts; ``"imagefusion"``: ImageFusion's C++ ``FitFCFusor``."""

FITFC_VARIANTS: tuple[str, ...] = ("wang", "imagefusion")
_RESIDUALS = ("before_filter", "after_filter")
_BORDERS = ("replicate", "clip")
_EDGE_CELLS = ("drop", "partial")
_SAMPLE = 512  # side of the corner sample read to detect block-constant coarse data
_MAX_DETECT = 256  # largest coarse cell size the detection reports


# --------------------------------------------------------------------------------------------
# parameters and presets


@dataclass(frozen=True, kw_only=True)
class FitfcParams:
    """A complete set of Fit-FC parameters (a preset, or a preset with overrides)."""

    variant: str = "wang"
    """``"wang"`` (RM on the coarse grid, MATLAB bicubic residual, column-major ties) or
    ``"imagefusion"`` (everything on the fine grid, OpenCV residual smoothing, C++ rounding)."""
    rm_radius: int = 1
    """``W`` of "wang": the RM window is ``(2 W + 1)^2`` COARSE pixels (the script's example)."""
    rm_window: int = 51
    """RM window in FINE pixels (odd) of "imagefusion" (``winSize``) and of "wang" on a cube
    without a coarse grid."""
    sf_half_window: int = 20
    """SF window half size ``w0`` in fine pixels: the window is ``2 w0 + 1`` wide."""
    n_similar: int = 20
    """``N_S``: number of similar pixels averaged (``n_neighbors`` of "imagefusion")."""
    distance_scale: float = 20.5
    """``A`` of the distance weight ``1 / (1 + d / A)`` (d in fine pixels). Follows
    ``(2 w0 + 1) / 2`` when only ``sf_half_window`` is overridden."""
    eps: float = 2.220446049250313e-16
    """Regulariser of ``a = cov / (var + eps)`` ("wang": MATLAB's ``eps``, the scripts define
    none). In the data's unit squared; negligible against any real variance."""
    residual: str = "before_filter"
    """``"before_filter"``: SF smooths ``Z1 + residual`` (both codes); ``"after_filter"``: the
    paper's order, the centre's residual added after filtering."""
    resolution_factor: float = 30.0
    """``f`` of the residual smoothing ``cubic_filter`` (INTER_AREA by ``1 / f`` then
    INTER_CUBIC back; 1 disables) of "imagefusion" (and of "wang" without a coarse grid)."""
    similarity_bands: tuple[str | int, ...] | str = ("red", "nir")
    """Fine bands whose squared differences rank the candidates: names (a fine variable, or
    the part after ``_``, or its ``long_name``), positions in ``fine=`` (0-based), or
    ``"all"``. When the preset's ``("red", "nir")`` are not found by name, the 3rd and 4th
    fine bands are used (red and NIR of a TM/ETM+ 6-band stack, the scripts' example),
    clipped to the number of bands (one band: that band)."""
    border: str = "replicate"
    """SF at the image edge: ``"replicate"`` (padded by edge replication, "wang") or
    ``"clip"`` (window clipped, "imagefusion")."""
    fill_residual: bool = False
    """Fill an interpolated residual with a missing tap from the valid taps only (0 where
    they carry less than a quarter of the weight) instead of letting NaN propagate."""
    edge_cells: str = "drop"
    """Variant "wang" on the coarse grid: ``"drop"`` predicts whole coarse cells only (the
    scripts need ``s x`` the coarse size; the image is cut to whole cells from the cell grid's
    origin, as the reference run crops it, and the rest is NaN); ``"partial"`` averages edge
    cells over the pixels they have and predicts every pixel."""
    data_range: tuple[float, float] | None = None
    """Valid input range ``(lo, hi)`` (inclusive); values outside are unobserved. ``None``:
    every finite value (not part of the references, which have no nodata handling)."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *astuple(self))


FITFC_PRESETS: dict[str, FitfcParams] = {
    "wang": FitfcParams(),
    "imagefusion": FitfcParams(
        variant="imagefusion",
        sf_half_window=25,
        n_similar=10,
        distance_scale=25.5,
        similarity_bands="all",
        border="clip",
    ),
    "lst": FitfcParams(similarity_bands="all", data_range=(150.0, 400.0)),
}
"""Parameter presets by name (see :func:`fitfc`, Notes)."""


def _registry_params() -> tuple[Any, ...]:
    from xfusion.methods.registry import get

    return get("fitfc").params


PARAMS: tuple[Any, ...] = _registry_params()
"""Every keyword of :func:`fitfc` with its type, default, choices and help: the method
registry's table (:func:`xfusion.methods.get`), the one the CLI and jobs read."""

_PARAM_NAMES = tuple(f.name for f in fields(FitfcParams))


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: str | None = None) -> int:
    """Pixels a job tile reads around itself (the registry's halo rule for Fit-FC).

    Job tiles hold the coarse data resampled onto the fine grid (bilinear), so Fit-FC runs its
    fine-grid path unless ``scale_factor`` is given; the bound holds for any tile size.
    """
    keys = {k: v for k, v in params.items() if k in _PARAM_NAMES}
    p, _ = _resolve_params(params.get("preset", "wang"), params.get("variant"), keys)
    s = params.get("scale_factor")
    return halo(p, None if s is None else int(s)) + 1


def _err(msg: str) -> InvalidParameterError:
    return InvalidParameterError(f"fitfc() {msg}")


def _int_param(name: str, value: Any, *, minimum: int, hint: str = "") -> int:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if ok:
        ok = math.isfinite(float(value)) and float(value).is_integer() and value >= minimum
    if not ok:
        raise _err(f"parameter {name} must be an integer >= {minimum}; got {value!r}.{hint}")
    return int(value)


def _float_param(name: str, value: Any, *, positive: bool = True, hint: str = "") -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        raise _err(f"parameter {name} must be {kind}; got {value!r}.{hint}")
    return float(value)


def _resolve_params(
    preset: str, variant: str | None, overrides: Mapping[str, Any]
) -> tuple[FitfcParams, bool]:
    """The preset with overrides, validated. Also whether ``similarity_bands`` was given."""
    require_choice(preset, tuple(FITFC_PRESETS), name="preset", method=NAME)
    unknown = [k for k in overrides if k not in _PARAM_NAMES]
    if unknown:
        raise _err(
            f"got unknown parameter(s) {unknown!r}. Fit-FC parameters: {list(_PARAM_NAMES)!r} "
            "(plus fine, coarse, targets, pairs, preset, variant, scale_factor, diagnostics, "
            "device)."
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    if variant is not None:
        given["variant"] = variant
    base = FITFC_PRESETS[preset]
    if "sf_half_window" in given and "distance_scale" not in given:
        w0 = _int_param("sf_half_window", given["sf_half_window"], minimum=0)
        given["distance_scale"] = (2 * w0 + 1) / 2
    p = replace(base, **given)
    require_choice(p.variant, FITFC_VARIANTS, name="variant", method=NAME)
    require_choice(p.residual, _RESIDUALS, name="residual", method=NAME)
    require_choice(p.border, _BORDERS, name="border", method=NAME)
    require_choice(p.edge_cells, _EDGE_CELLS, name="edge_cells", method=NAME)
    rm_window = _int_param("rm_window", p.rm_window, minimum=1,
                           hint=" ImageFusion uses 51 (fine pixels).")  # fmt: skip
    if rm_window % 2 == 0:
        raise _err(
            f"parameter rm_window must be odd (the window is centred on the pixel, as "
            f"ImageFusion's winSize); got {rm_window}. Use {rm_window + 1}."
        )
    if not isinstance(p.fill_residual, bool | np.bool_):
        raise _err(f"parameter fill_residual must be True or False; got {p.fill_residual!r}.")
    bands = p.similarity_bands
    if isinstance(bands, str):
        parts = [b.strip() for b in bands.split(",") if b.strip()]
        if bands.strip().lower() == "all":
            bands = "all"
        else:  # "red,nir" or "2,3" (the CLI's text)
            bands = tuple(int(b) if b.lstrip("-").isdigit() else b for b in parts) or (bands,)
    else:
        try:
            bands = tuple(bands)
        except TypeError:
            raise _err(
                f"parameter similarity_bands must be 'all' or a list of band names/positions; "
                f"got {p.similarity_bands!r}."
            ) from None
        if not bands or not all(isinstance(b, str | int | np.integer) and not isinstance(
                b, bool) for b in bands):  # fmt: skip
            raise _err(
                f"parameter similarity_bands must be 'all' or a non-empty list of band names "
                f"or positions; got {p.similarity_bands!r}. E.g. ('red', 'nir')."
            )
        bands = tuple(b if isinstance(b, str) else int(b) for b in bands)
    dr = p.data_range
    if dr is not None:
        try:
            lo, hi = (float(x) for x in dr)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not (lo < hi):
            raise _err(
                f"parameter data_range must be (lo, hi) with lo < hi, or None; got {dr!r}. "
                "E.g. (0, 10000) for reflectance x1e4, (150, 400) for LST in kelvin."
            )
        dr = (lo, hi)
    params = replace(
        p,
        rm_radius=_int_param("rm_radius", p.rm_radius, minimum=0,
                             hint=" W is in coarse pixels; the scripts' example is 1 (3 x 3)."),
        rm_window=rm_window,
        sf_half_window=_int_param("sf_half_window", p.sf_half_window, minimum=0,
                                  hint=" Wang uses 20 (a 41 x 41 window)."),
        n_similar=_int_param("n_similar", p.n_similar, minimum=1,
                             hint=" Wang uses 20, ImageFusion 10."),
        distance_scale=_float_param("distance_scale", p.distance_scale,
                                    hint=" Wang uses (2 * w0 + 1) / 2 = 20.5."),
        eps=_float_param("eps", p.eps, positive=False),
        resolution_factor=_float_param("resolution_factor", p.resolution_factor,
                                       hint=" ImageFusion uses 30; 1 disables the smoothing."),
        similarity_bands=bands,
        fill_residual=bool(p.fill_residual),
        data_range=dr,
    )  # fmt: skip
    return params, "similarity_bands" in given


def halo(params: FitfcParams, scale_factor: int | None, *, shape: tuple[int, int] | None = None
         ) -> int:  # fmt: skip
    """Fine pixels of context each chunk needs (the ``map_overlap`` depth).

    Parameters
    ----------
    params : FitfcParams
        The parameters (``FITFC_PRESETS[...]`` or with overrides).
    scale_factor : int or None
        Coarse pixel size in fine pixels for variant "wang" on the coarse grid; ``None``
        (or variant "imagefusion") for the fine-grid computation.
    shape : (int, int), optional
        Image shape; the fine-grid residual smoothing reaches ``n / round(n / f)`` pixels per
        coarse pixel, so the exact halo depends on it (without it: a bound for any size).

    Returns
    -------
    int
        "wang" on the coarse grid: ``w0 + s (W + 2) + s - 1``: the spec's ``w0 + s (W + 2)``
        (SF window, 2 cells of bicubic taps, ``W`` cells of RM window) plus ``s - 1`` pixels
        so that the outermost cell is whole at any chunk alignment (a cell mean needs all its
        pixels). Fine grid: ``w0 + rm_window // 2 + reach`` of the ``INTER_AREA``/
        ``INTER_CUBIC`` smoothing (about ``2.5 f``).
    """
    from xfusion.methods._fitfc_kernel import halo_imagefusion, halo_wang

    if params.variant == "wang" and scale_factor is not None:
        return halo_wang(params.sf_half_window, params.rm_radius, int(scale_factor))
    return halo_imagefusion(params.sf_half_window, params.rm_window, params.resolution_factor,
                            shape)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the coarse grid: explicit, from attributes, or detected


def _detect_cells(sample: np.ndarray) -> tuple[int, tuple[int, int]] | None:
    """``(s, (phase_y, phase_x))`` when ``sample`` is constant over ``s x s`` cells, else None.

    Cell edges are where a row (column) differs from the previous one anywhere (NaN equals
    NaN); ``s`` is the gcd of the gaps between edges, the same along both axes, and the
    phase puts the first edge on a cell boundary. Needs two edges per axis.
    """
    a = np.asarray(sample, dtype=np.float64)
    out = []
    for axis in (0, 1):
        x = np.moveaxis(a, axis, 0)
        if x.shape[0] < 3:
            return None
        same = (x[1:] == x[:-1]) | (np.isnan(x[1:]) & np.isnan(x[:-1]))
        edges = np.flatnonzero(~same.all(axis=1)) + 1
        if edges.size < 2:
            return None
        s = int(reduce(math.gcd, np.diff(edges).tolist()))
        out.append((s, int((-edges[0]) % s)))
    (sy, py), (sx, px) = out
    if sy != sx or sy < 2 or sy > _MAX_DETECT:
        return None
    return sy, (py, px)


def _attr_factor(ds: xr.Dataset, names: Sequence[str]) -> tuple[float, str] | None:
    """Coarse/fine ratio declared on the cube: ``coarse_factor`` or ``coarse_resolution``."""
    for where, attrs in [("the dataset", ds.attrs)] + [(repr(n), ds[n].attrs) for n in names]:
        if "coarse_factor" in attrs:
            return float(attrs["coarse_factor"]), f"attrs['coarse_factor'] of {where}"
        if "coarse_resolution" in attrs:
            try:
                gbox = get_geobox(ds, name="cube")
                fine = (abs(float(gbox.resolution.x)) + abs(float(gbox.resolution.y))) / 2
            except XFusionError:  # no geobox: the two resolutions cannot be related
                return None
            res = attrs["coarse_resolution"]
            res = float(np.mean(np.abs(np.asarray(res, dtype=float))))
            return res / fine, f"attrs['coarse_resolution'] = {res:g} of {where} / {fine:g}"
    return None


class _Grid:
    """How the coarse data is read: on a coarse grid of ``s`` px (phase) or on the fine grid."""

    def __init__(self, s: int | None, phase: tuple[int, int], source: str) -> None:
        self.s, self.phase, self.source = s, phase, source


def _coarse_grid(
    ds: xr.Dataset, coarse_names: Sequence[str], scale_factor: Any, *, shape: tuple[int, int],
    dims: tuple[str, str], params: FitfcParams, sample_pos: int,
) -> _Grid:  # fmt: skip
    ny, nx = shape
    declared = _attr_factor(ds, coarse_names)
    if scale_factor is not None:
        s = _int_param("scale_factor", scale_factor, minimum=1,
                       hint=" It is the coarse pixel size in fine pixels (16 for 480 m over "
                       "30 m).")  # fmt: skip
        if s > min(ny, nx):
            raise GridMismatchError(
                f"fitfc() scale_factor={s} is inconsistent with the grid: a coarse pixel would "
                f"be larger than the whole image ({ny} x {nx} fine pixels). Pass the coarse "
                "pixel size in FINE pixels (e.g. 16 for MODIS 480 m over Landsat 30 m)."
            )
        if declared is not None and abs(declared[0] - s) > 1e-6 * s:
            raise GridMismatchError(
                f"fitfc() scale_factor={s} is inconsistent with the cube: {declared[1]} gives "
                f"a coarse/fine ratio of {declared[0]:g}. Drop scale_factor= to use the "
                "declared one, or fix the attribute."
            )
        return _Grid(s, (0, 0), "scale_factor")
    if params.variant != "wang":
        return _Grid(None, (0, 0), "fine grid (variant 'imagefusion')")
    if declared is not None:
        ratio, source = declared
        if ratio >= 1 and abs(ratio - round(ratio)) <= 1e-6 * ratio and round(ratio) <= min(ny, nx):
            return _Grid(round(ratio), (0, 0), source)
        return _Grid(None, (0, 0), f"fine grid ({source}: {ratio:g} is not a whole number of "
                                   "pixels within the image)")  # fmt: skip
    # detection: one corner sample of the first coarse variable at the first pair date
    ydim, xdim = dims
    sample = float_data(ds, coarse_names[0], dims=dims).isel({TIME: sample_pos})
    sample = sample.isel({ydim: slice(0, min(ny, _SAMPLE)), xdim: slice(0, min(nx, _SAMPLE))})
    found = _detect_cells(np.asarray(sample.data))  # reads the sample (see fitfc() Notes)
    if found is None:
        return _Grid(None, (0, 0), "fine grid (the coarse data is not constant over square "
                                   "cells; pass scale_factor= for a coarse grid)")  # fmt: skip
    return _Grid(found[0], found[1], "detected block-constant coarse data")


# --------------------------------------------------------------------------------------------
# bands


def _band_index(name: str | int, fine: Sequence[str], ds: xr.Dataset) -> int | None:
    if isinstance(name, int):
        return name if 0 <= name < len(fine) else None
    low = name.lower()
    for i, f in enumerate(fine):
        lname = str(ds[f].attrs.get("long_name", "")).lower()
        if f.lower() == low or f.lower().endswith(f"_{low}") or lname == low:
            return i
    return None


def _similarity(params: FitfcParams, explicit: bool, fine: Sequence[str], ds: xr.Dataset
                ) -> tuple[tuple[int, ...], str]:  # fmt: skip
    bands = params.similarity_bands
    if bands == "all":
        return tuple(range(len(fine))), "all"
    idx = [_band_index(b, fine, ds) for b in bands]
    if all(i is not None for i in idx):
        return tuple(int(i) for i in idx), ",".join(fine[int(i)] for i in idx)  # type: ignore[arg-type]
    if not explicit:  # the scripts' example: bands 3 and 4 (TM/ETM+ red, NIR), clipped
        pos = (min(2, len(fine) - 1), min(3, len(fine) - 1))
        return pos, ",".join(fine[i] for i in pos) + " (positions 3, 4 clipped)"
    bad = [b for b, i in zip(bands, idx, strict=True) if i is None]
    raise InvalidParameterError(
        f"fitfc() similarity_bands {bad!r} not found among the fine variables {list(fine)!r} "
        f"(matched by name, by the part after '_', by long_name, or by position 0..{len(fine) - 1}"
        "). Add the bands to fine=[...], or pass similarity_bands='all'."
    )


# --------------------------------------------------------------------------------------------
# the block function (runs in the worker)


def _check_range(arr: np.ndarray, lo: float, hi: float, label: str) -> None:
    """Raise when a block has finite, varied values but none inside [lo, hi] (wrong scale)."""
    fin = np.isfinite(arr)
    if not fin.any():
        return
    v = arr[fin]
    if ((v >= lo) & (v <= hi)).any():
        return
    vmin, vmax = float(v.min()), float(v.max())
    if vmin == vmax:
        return  # a constant fill value, not a scale problem
    raise InvalidParameterError(
        f"fitfc(): no pixel of {label} lies inside data_range=({lo:g}, {hi:g}); its values span "
        f"[{vmin:g}, {vmax:g}] (in this chunk). Check the data's scale (reflectance x1e4 vs "
        "0..1, kelvin vs Celsius) and pass a matching data_range=..., or data_range=None."
    )


def _fitfc_task(
    f1: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    *,
    origin: tuple[int, int],
    halo_sides: tuple[int, int, int, int],
    image_shape: tuple[int, int],
    region: tuple[int, int, int, int],
    grid_s: int | None,
    phase: tuple[int, int],
    params: FitfcParams,
    sim_idx: tuple[int, ...],
    kernel_dtype: str,
    out_dtypes: tuple[str, ...],
    out_fills: tuple[float | None, ...],
    labels: tuple[tuple[str, str, str], ...],
    diagnostics: bool,
    threads: int | None,
) -> np.ndarray:
    """Predict the block interior of every target in the block.

    ``f1``/``c1``/``c2`` are ``(T, B, y, x)``; the result is ``(T, B * K, y', x')`` float64
    with K = 1 (prediction, already rounded/filled for integer outputs) or 4 (+ a, b,
    residual).
    """
    from xfusion.methods._fitfc_kernel import imagefusion_block, wang_block

    top, bottom, left, right = halo_sides
    ntar, nband, ny, nx = f1.shape
    k = 4 if diagnostics else 1
    out = np.empty((ntar, nband * k, ny - top - bottom, nx - left - right), np.float64)
    if out.size == 0:
        return out
    # the kernel sees the region (whole coarse cells, or the image) as the image
    ylo, yhi, xlo, xhi = region
    g0y, g0x = origin
    iy0, iy1, ix0, ix1 = g0y + top, g0y + ny - bottom, g0x + left, g0x + nx - right
    sy0, sy1, sx0, sx1 = max(g0y, ylo), min(g0y + ny, yhi), max(g0x, xlo), min(g0x + nx, xhi)
    jy0, jy1, jx0, jx1 = max(iy0, ylo), min(iy1, yhi), max(ix0, xlo), min(ix1, xhi)
    inside = jy0 < jy1 and jx0 < jx1
    sub = (slice(sy0 - g0y, sy1 - g0y), slice(sx0 - g0x, sx1 - g0x))
    dst = (slice(jy0 - iy0, jy1 - iy0), slice(jx0 - ix0, jx1 - ix0))
    p = params
    common = {
        "sim_bands": sim_idx, "origin": (sy0 - ylo, sx0 - xlo),
        "image_shape": (yhi - ylo, xhi - xlo),
        "halo_sides": (jy0 - sy0, sy1 - jy1, jx0 - sx0, sx1 - jx1),
        "sf_half_window": p.sf_half_window,
        "n_similar": p.n_similar, "distance_scale": p.distance_scale, "residual": p.residual,
        "border": p.border, "fill_residual": p.fill_residual, "threads": threads,
    }  # fmt: skip
    del image_shape
    for t in range(ntar):
        arrays = [a[t] for a in (f1, c1, c2)]  # views: the kernel reads any float type
        if p.data_range is not None:
            lo, hi = p.data_range
            for q, lab in enumerate(labels[t]):
                a = arrays[q]
                _check_range(a, lo, hi, lab)
                with np.errstate(invalid="ignore"):
                    arrays[q] = np.where((a < lo) | (a > hi), np.nan, a)
        for b in range(nband):
            out[t, b * k] = _to_output(np.full(out.shape[-2:], np.nan),
                                       np.dtype(out_dtypes[b]), out_fills[b])  # fmt: skip
            out[t, b * k + 1 : b * k + k] = np.nan
        if not inside:
            continue
        arrays = [a[(slice(None), *sub)] for a in arrays]
        if p.variant == "wang" and grid_s is not None:
            res = wang_block(*arrays, s=grid_s, phase=phase if p.edge_cells == "partial" else
                             (0, 0), rm_radius=p.rm_radius, eps=p.eps,
                             intermediates=diagnostics, **common)  # fmt: skip
        else:
            res = imagefusion_block(
                *arrays, rm_window=p.rm_window, resolution_factor=p.resolution_factor,
                dtype=kernel_dtype if p.variant == "imagefusion" else "float64",
                order="imagefusion" if p.variant == "imagefusion" else "wang", **common,
            )  # fmt: skip
        for b in range(nband):
            o = out[t, b * k]
            o[dst] = _to_output(res.prediction[b], np.dtype(out_dtypes[b]), out_fills[b])
            if diagnostics:
                out[t, b * k + 1][dst] = res.a[b]
                out[t, b * k + 2][dst] = res.b[b]
                out[t, b * k + 3][dst] = res.residual[b]
    return out


def _to_output(pred: np.ndarray, dtype: np.dtype, fill: float | None) -> np.ndarray:
    """Float: as is (NaN gaps). Integer: round half to even, saturate, ``fill`` where NaN."""
    if dtype.kind == "f":
        return pred
    assert fill is not None
    return to_integer(pred, dtype, fill, rounding="rint", saturate=True)


def _origin_block(*blocks: np.ndarray, block_func: Any, offsets: tuple[tuple[int, ...], ...],
                  depth: tuple[int, int], kwargs: dict[str, Any],
                  block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    if not block_info or None not in block_info:  # meta probing
        return np.empty((0,) * blocks[0].ndim, np.float64)
    (iy, ix) = block_info[None]["chunk-location"][-2:]
    (ny, nx) = block_info[None]["num-chunks"][-2:]
    top = depth[0] if iy > 0 else 0
    bottom = depth[0] if iy < ny - 1 else 0
    left = depth[1] if ix > 0 else 0
    right = depth[1] if ix < nx - 1 else 0
    origin = (offsets[0][iy] - top, offsets[1][ix] - left)
    return block_func(*blocks, origin=origin, halo_sides=(top, bottom, left, right), **kwargs)


def _map_with_origin(func: Any, *arrays: Any, halo: int, nplanes: int, token_parts: Any,
                     kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """``map_overlap`` of ``func`` over ``(T, B, y, x)`` arrays, telling each block where it is.

    Like :func:`xfusion.engine.run.map_blocks_halo` (``boundary="none"``, a chunk no longer
    than the halo merged), but the block function also gets ``origin``: the global index of
    its first pixel, needed to anchor coarse cells and residual-smoothing cells to the image
    and not to the chunk. Output ``(T, nplanes, y, x)`` float64, one chunk per target.
    """
    import dask
    import dask.array as da
    from dask.base import tokenize

    if not any(dask.is_dask_collection(a) for a in arrays):
        return func(*arrays, origin=(0, 0), halo_sides=(0, 0, 0, 0), **kwargs)
    ref = next(a for a in arrays if dask.is_dask_collection(a))
    spatial = []
    for c in ref.chunks[-2:]:
        if sum(c) <= halo or len(c) == 1:
            spatial.append((sum(c),) if sum(c) <= halo else tuple(c))
        else:
            spatial.append(tuple(da.overlap.ensure_minimum_chunksize(halo, c)))
    ntar = ref.shape[0]
    chunks = ((1,) * ntar, (ref.shape[1],), spatial[0], spatial[1])
    darrs = [(a if dask.is_dask_collection(a) else da.asarray(a)).rechunk(chunks) for a in arrays]
    depth = tuple(halo if len(spatial[k]) > 1 else 0 for k in range(2))
    if any(depth):
        darrs = [da.overlap.overlap(a, depth={2: depth[0], 3: depth[1]}, boundary="none")
                 for a in darrs]  # fmt: skip
    offsets = tuple(tuple(int(v) for v in np.cumsum((0, *c))[:-1]) for c in spatial)
    out_chunks = ((1,) * ntar, (nplanes,), spatial[0], spatial[1])
    token = tokenize(NAME, halo, nplanes, list(token_parts), [a.name for a in darrs], kwargs)
    return da.map_blocks(
        _origin_block, *darrs, block_func=func, offsets=offsets, depth=depth, kwargs=kwargs,
        chunks=out_chunks, dtype=np.float64, meta=np.empty((0, 0, 0, 0), np.float64),
        name=f"xfusion.{NAME}-{token}",
    )  # fmt: skip



def _output_dtype(
    ds: xr.Dataset, name: str, variant: str
) -> tuple[np.dtype, np.dtype, float | None]:
    """(output dtype, kernel dtype for saturate_cast, fill) of fine variable ``name`` (see
    :mod:`xfusion.methods._output`); "wang" predicts float64 for float inputs."""
    layout = integer_layout(ds, name, fill=None, method=NAME)
    if layout is not None:
        return layout[0], layout[0], layout[1]
    if variant == "wang":
        return np.dtype(np.float64), np.dtype(np.float64), None
    raw = np.dtype(ds[name].dtype)
    return raw, raw, None


# --------------------------------------------------------------------------------------------
# the public function


def fitfc(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: Literal["nearest", "before", "after"] | Any = "nearest",
    preset: Literal["wang", "imagefusion", "lst"] = "wang",
    variant: FitfcVariant | None = None,
    scale_factor: int | None = None,
    diagnostics: bool = False,
    device: str = "auto",
    **params: Any,
) -> xr.Dataset:
    """Predict fine images at target dates with Fit-FC (Wang & Atkinson 2018).

    For each target date, Fit-FC fits a local linear regression of the coarse image at the
    target ``C2`` on the coarse image of a pair date ``C1`` (RM), applies it to the fine image
    of the pair date ``F1``, smooths that prediction over the spectrally most similar fine
    pixels of a window (SF), and adds the interpolated coarse residual (RC). Two variants
    reproduce the two reference programs: ``"wang"`` (the author's MATLAB scripts) and
    ``"imagefusion"`` (ImageFusion's C++ ``FitFCFusor``). The result is lazy on dask input and
    does not depend on the chunking, bit for bit.

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`): ``time`` plus the spatial dims,
        fine and coarse variables on ONE grid (coarse resampled onto the fine grid), NaN (or
        a declared nodata value) where unobserved.
    fine, coarse : str or list of str
        Fine and coarse variable names, paired by position. All bands are predicted in one
        pass and share one set of similar pixels per target pixel.
    targets : date-like or sequence of date-like, optional
        Dates to predict. Default: every date where the coarse variables are observed and the
        fine ones are not (``observed_<name>`` coordinates).
    pairs : {"nearest", "before", "after"}, date-like, sequence or mapping
        The pair date of each target: ``"nearest"`` (default): the nearest pair strictly
        before the target, else the nearest after; ``"before"``/``"after"``: that side only;
        or explicit dates (one for all targets, one per target, or a mapping target → date).
    preset : {"wang", "imagefusion", "lst"}, default "wang"
        Defaults for every parameter below (see Notes); keyword overrides win.
    variant : {"wang", "imagefusion"}, optional
        Override the preset's variant only (``preset="imagefusion"`` gives all of
        ImageFusion's defaults).
    scale_factor : int, optional
        Coarse pixel size in fine pixels for variant "wang", whose RM runs on the coarse grid.
        Default, in this order: the cube's ``attrs["coarse_factor"]`` (dataset or coarse
        variable; :func:`xfusion.testing.synthetic_scene` sets it) or
        ``attrs["coarse_resolution"]`` (in CRS units, divided by the fine pixel size); else
        it is detected from the data: a corner sample (up to 512 x 512 px) of the first
        coarse variable at the first pair date is read and, when it is constant over square
        cells (coarse data put on the fine grid by nearest neighbour), its cell size and
        offset are used. Otherwise (e.g. bilinearly resampled MODIS) "wang" runs with the
        fine-grid RM and residual smoothing of "imagefusion" (``rm_window``,
        ``resolution_factor``) and keeps its own filter. Pass ``scale_factor`` (or set the
        attribute) to choose, and to keep the call free of any read.
    diagnostics : bool, default False
        Also return ``<fine>_a``, ``<fine>_b`` (regression coefficients at each fine pixel)
        and ``<fine>_residual`` (the interpolated residual), float32.
    device : {"auto", "cpu"}, default "auto"
        Fit-FC runs on the numba CPU kernel; ``"cuda"`` is refused with an error.
    **params
        Overrides of :class:`FitfcParams`: ``rm_radius``, ``rm_window``, ``sf_half_window``,
        ``n_similar``, ``distance_scale``, ``eps``, ``residual`` (``"before_filter"`` |
        ``"after_filter"``), ``resolution_factor``, ``similarity_bands``, ``border``
        (``"replicate"`` | ``"clip"``), ``fill_residual``, ``edge_cells`` (``"drop"`` |
        ``"partial"``), ``data_range`` (see the class for each).

    Returns
    -------
    xarray.Dataset
        One variable per fine name (same name and attrs), dims ``(time, y, x)``, ``time`` =
        the targets (sorted), a ``pair_time`` coordinate (the pair date used), the cube's
        spatial coords, ``spatial_ref`` and attrs, plus ``attrs["xfusion_fitfc"]`` (JSON: the
        parameters, the coarse grid used and how it was found). Types follow the reference
        programs: "wang" float64 (no rounding), "imagefusion" the input type
        (``saturate_cast``: float32 stays float32); integer inputs give the same integer type
        (rounded half to even, saturated) with the variable's nodata value where no
        prediction is made (``attrs["nodata"]``). NaN elsewhere. Dask-backed when the input is.

    Raises
    ------
    InvalidParameterError
        Unknown preset/variant/parameter, values out of range, an even ``rm_window``,
        ``rm_window`` smaller than one coarse pixel, ``resolution_factor`` larger than the
        image, similarity bands not among the fine variables, a ``data_range`` no input pixel
        falls in (when the data is read), ``device="cuda"``.
    GridMismatchError
        ``scale_factor`` inconsistent with the grid (larger than the image, or contradicting
        the cube's declared coarse resolution).
    NoOverlapError
        A target without a pair date (the message lists the pair dates).
    TimeAxisError, MissingNodataError, VariableNotFoundError, MissingDimensionError
        As :func:`xfusion.starfm`.

    See Also
    --------
    xfusion.starfm : the weighting method Fit-FC is compared with.
    xfusion.baseline : naive baselines.

    Notes
    -----
    **Variant "wang"** (default). ``C1``, ``C2`` are averaged over each coarse cell (exactly the
    coarse values when they are constant over the cell). RM: for every cell, over the
    ``(2 W + 1)^2`` cells around it (clipped at the image edge; cells with NaN left out),
    ``a = cov / (var + eps)`` and ``b = mean(C2) - a mean(C1)`` with population, centred
    moments (exactly ``a = 0``, ``b = mean(C2)`` when ``C1`` is constant: the scripts'
    uncentred moments leave ``var ~ 1e-13`` there and ``a`` explodes, the one place where
    results differ); residual ``RB = C2 - (a C1 + b)`` per cell. ``Z1 = A F1 + B`` with ``A``,
    ``B`` the cell's ``a``, ``b``; ``Z2 = Z1 + imresize(RB, s, 'bicubic')`` (MATLAB's
    bicubic: Keys a = -0.5, mirrored border). SF: for every fine pixel the ``N_S`` smallest
    ``(R(x) - R(c))^2 + (NIR(x) - NIR(c))^2`` of F1 over the ``2 w0 + 1`` window (padded by
    edge replication; ties to the first in column-major window order, as ``Mins_matrix``),
    and ``Z = sum w Z2 / sum w`` with ``w = 1 / (1 + d / A)``. Cells are anchored at the image
    origin (pixel (0, 0) is a cell corner) whatever the chunking; when detection finds the
    cube starting inside a cell (cell edges not at multiples of ``s``), the cells are
    anchored at that offset instead (``"phase"`` in ``attrs["xfusion_fitfc"]``), so that no
    cell mixes two coarse pixels; with an explicit ``scale_factor``, crop the cube to a cell
    edge first. As the scripts need whole cells, only whole cells are predicted by default
    (``edge_cells="drop"``: the image is cut to whole cells from the cell grid's origin, the
    rest is NaN, exactly as the reference run crops it); ``edge_cells="partial"`` averages the
    edge cells over the pixels they have and predicts every pixel.

    **Variant "imagefusion"**. On the fine grid: per pixel, OLS of ``C2`` on ``C1`` over the
    ``rm_window`` window (clipped, valid pixels; ``a = 1, b = 0`` when ``|det| < 1e-14``),
    ``FRM = saturate_cast(a F1 + b)`` in the input type; residual ``r = C2 - (a C1 + b)``,
    smoothed by OpenCV ``INTER_AREA`` by ``1 / resolution_factor`` then ``INTER_CUBIC`` back
    (cells anchored at the image origin); SF over all bands with ``n_similar = 10`` in a
    clipped 51 x 51 window, ties by squared distance then as ``std::partial_sort`` leaves
    them (reproduced exactly), ``w = 1 / (1 + 2 d / 51)``; output ``saturate_cast`` to the
    input type. A pixel is valid where every band of ``F1``, ``C1``, ``C2`` is.

    **Nodata.** NaN in ``C1``/``C2`` is left out of the RM sums (a window with one valid cell
    or a constant ``C1`` gives ``a = 0``, ``b = mean(C2)``; none: NaN); a NaN residual tap
    propagates unless ``fill_residual=True``. A fine pixel missing in any band of ``F1`` is
    never a similar pixel, and is not predicted.

    **Presets.** ``"wang"``: the scripts (``W = 1``, ``w0 = 20``, ``N_S = 20``, ``A = 20.5``,
    eps = MATLAB's eps, red/NIR similarity, replicated border). ``"imagefusion"``: the C++/R
    defaults (``winSize = 51`` for RM and SF, ``n_neighbors = 10``, ``resolution_factor =
    30``, all bands, clipped border). ``"lst"``: "wang" for one-band land-surface temperature
    in kelvin: similarity on the band itself and ``data_range=(150, 400)`` K (drops fill
    values such as 0 or -3.4e38). The spec's other defaults carry no unit: windows are in
    pixels, and ``eps`` is far below any LST variance.

    **Chunks and memory.** Each chunk gets a halo of :func:`halo` pixels (``boundary="none"``)
    and is computed from global positions in a fixed order, so any chunking gives
    bit-identical output; a task holds one target's bands of a chunk plus halo, about
    ``B + K + 2`` float64 planes in the kernel ("wang"; K similarity bands). No statistic
    spans the image, so nothing is kept between tasks. Streaming a 10000 x 10000 band to Zarr
    peaks at about 1.1 GB with 1024 px chunks (2.3 GB with 2048 px: each chunk's 3 x 3
    neighbours are held for its halo), see ``benchmarks/fitfc_results.md``.

    **Speed.** The SF dominates: ``(2 w0 + 1)^2`` candidate scores per pixel, shared by all
    bands; only candidates that can enter a pixel's list of ``N_S`` take the scalar path.

    .. versionadded:: 0.2

    References
    ----------
    .. [1] Wang, Q., Atkinson, P. M. (2018). Spatio-temporal fusion for daily Sentinel-2
       images. Remote Sensing of Environment 204, 31-42.
    .. [2] Mast, J. et al. ImageFusion (C++/R), ``FitFCFusor``, University of Würzburg.

    Examples
    --------
    >>> import xfusion
    >>> from xfusion.methods.fitfc import fitfc
    >>> from xfusion.testing import synthetic_scene
    >>> scene = synthetic_scene((96, 96), kind="reflectance", bands=["red", "nir"], times=3,
    ...                         fine_times=[0], coarse_factor=16, coarse_cloud_fraction=0.0,
    ...                         cloud_fraction=0.0, seed=1)
    >>> pred = fitfc(scene, fine=["fine_red", "fine_nir"], coarse=["coarse_red", "coarse_nir"])
    >>> pred.fine_red.dims, pred.sizes["time"], str(pred.fine_red.dtype)
    (('time', 'y', 'x'), 2, 'float64')
    >>> import json
    >>> json.loads(pred.attrs["xfusion_fitfc"])["scale_factor"]
    16
    >>> truth = scene.truth_red.sel(time=pred.time)
    >>> bool(abs(pred.fine_red - truth).mean() < abs(scene.fine_red.isel(time=0) - truth).mean())
    True
    """
    check_device(device)
    if device.startswith("cuda"):
        raise InvalidParameterError(
            f"fitfc(device={device!r}): Fit-FC has a CPU (numba) kernel only. Use "
            "device='auto' or 'cpu'."
        )
    if not isinstance(diagnostics, bool):
        raise InvalidParameterError(
            f"fitfc() parameter diagnostics must be True or False; got {diagnostics!r}."
        )
    p, explicit_bands = _resolve_params(preset, variant, params)
    roles = resolve_roles(ds, fine, coarse, method=NAME)
    ydim, xdim = roles.dims
    require_band_pairs(ds, roles, method=NAME)
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]

    tidx = select_targets(ds, roles, targets, method=NAME)
    pidx = select_pairs(ds, roles, tidx, pairs, method=NAME)
    tidx, pidx = sort_targets(tidx, pidx)

    grid = _coarse_grid(ds, roles.coarse, scale_factor, shape=(ny, nx), dims=roles.dims,
                        params=p, sample_pos=int(pidx[0]))  # fmt: skip
    on_coarse = p.variant == "wang" and grid.s is not None
    if not on_coarse and grid.s is not None and p.rm_window < grid.s:
        raise InvalidParameterError(
            f"fitfc() rm_window={p.rm_window} fine pixels is smaller than one coarse pixel "
            f"({grid.s} fine pixels, {grid.source}): every regression window would hold one "
            f"coarse value, and the fit is degenerate. Use rm_window >= {2 * grid.s + 1}."
        )
    if not on_coarse and p.resolution_factor > min(ny, nx):
        raise InvalidParameterError(
            f"fitfc() resolution_factor={p.resolution_factor:g} is larger than the image "
            f"({ny} x {nx} px): the residual would be averaged to an empty image (ImageFusion "
            f"refuses it too). Use resolution_factor <= {min(ny, nx)}, or 1 to disable."
        )
    region = (0, ny, 0, nx)
    if on_coarse and p.edge_cells == "drop":
        s_ = int(grid.s)  # type: ignore[arg-type]
        ylo, xlo = (s_ - grid.phase[0]) % s_, (s_ - grid.phase[1]) % s_
        yhi, xhi = ylo + (ny - ylo) // s_ * s_, xlo + (nx - xlo) // s_ * s_
        if yhi <= ylo or xhi <= xlo:
            raise GridMismatchError(
                f"fitfc() scale_factor={s_} leaves no whole coarse cell in the {ny} x {nx} "
                f"image (cells offset by {grid.phase}, {grid.source}). Use "
                "edge_cells='partial' to predict from partial cells, or a smaller scale_factor."
            )
        region = (ylo, yhi, xlo, xhi)
    sim_idx, sim_label = _similarity(p, explicit_bands, roles.fine, ds)
    depth = halo(p, grid.s if on_coarse else None, shape=(ny, nx))

    like: dict[str, xr.DataArray] = {}
    fine_data, coarse_data, out_dtypes, kernel_dtypes, out_fills = [], [], [], [], []
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        f = float_data(ds, fname, dims=roles.dims).transpose(TIME, ydim, xdim)
        c = float_data(ds, cname, dims=roles.dims).transpose(TIME, ydim, xdim)
        like[fname] = f
        fine_data.append(f.data)
        coarse_data.append(c.data)
        odt, kdt, ofill = _output_dtype(ds, fname, p.variant)
        out_dtypes.append(odt)
        kernel_dtypes.append(kdt)
        out_fills.append(ofill)
    kernel_dtype = np.result_type(*kernel_dtypes)
    import dask

    lazy = any(dask.is_dask_collection(a) for a in (*fine_data, *coarse_data))
    if lazy:
        import dask.array as da

        xp: Any = da
        fine_data = [a if dask.is_dask_collection(a) else da.asarray(a) for a in fine_data]
        coarse_data = [a if dask.is_dask_collection(a) else da.asarray(a) for a in coarse_data]
    else:
        xp = np

    def stack(arrays: list[Any], pos: np.ndarray) -> Any:  # (T, B, y, x)
        return xp.stack([xp.stack([a[int(q)] for a in arrays]) for q in pos])

    f1 = stack(fine_data, pidx)
    c1 = stack(coarse_data, pidx)
    c2 = stack(coarse_data, tidx)
    times = np.asarray(ds.indexes[TIME].values, dtype="datetime64[D]")
    labels = tuple(
        (f"the fine images at {times[q]}", f"the coarse images at {times[q]}",
         f"the coarse images at {times[t]}")
        for q, t in zip(pidx, tidx, strict=True)
    )  # fmt: skip
    k = 4 if diagnostics else 1
    nblocks = 1
    if lazy:
        nblocks = len(f1.chunks[2]) * len(f1.chunks[3]) * len(tidx)
    kwargs = {
        "image_shape": (ny, nx), "region": region, "grid_s": grid.s if on_coarse else None,
        "phase": grid.phase, "params": p, "sim_idx": sim_idx,
        "kernel_dtype": np.dtype(kernel_dtype).str,
        "out_dtypes": tuple(d.str for d in out_dtypes), "out_fills": tuple(out_fills),
        "labels": labels, "diagnostics": diagnostics,
        "threads": _kernel_threads(ntasks=nblocks) if lazy else None,
    }  # fmt: skip
    out = _map_with_origin(_fitfc_task, f1, c1, c2, halo=depth, nplanes=len(roles.fine) * k,
                           token_parts=(p, grid.s, grid.phase, sim_idx), kwargs=kwargs)  # fmt: skip

    data: dict[str, Any] = {}
    for b, fname in enumerate(roles.fine):
        data[fname] = pick_plane(out, (b * k,), out_dtypes[b], lazy=lazy, method=NAME)
        if diagnostics:
            for j, (suffix, long_name) in enumerate(
                (("a", "Fit-FC regression slope"), ("b", "Fit-FC regression intercept"),
                 ("residual", "Fit-FC interpolated residual")), start=1,
            ):  # fmt: skip
                dname = f"{fname}_{suffix}"
                data[dname] = pick_plane(out, (b * k + j,), np.dtype(np.float32), lazy=lazy, method=NAME)
                tmpl = like[fname].copy(deep=False)
                tmpl.attrs = {"long_name": long_name}
                like[dname] = tmpl
    res = assemble_result(ds, data, like=like, target_idx=tidx, time_coords={"pair_time": pidx})
    for b, fname in enumerate(roles.fine):
        if out_fills[b] is not None:
            res[fname].attrs["nodata"] = out_fills[b]
    record = dict(asdict(p))
    record["similarity_bands"] = sim_label
    record["data_range"] = list(p.data_range) if p.data_range is not None else None
    record.update({
        "preset": preset, "grid": "coarse" if on_coarse else "fine",
        "scale_factor": grid.s, "phase": list(grid.phase), "grid_source": grid.source,
        "halo": depth, "region": list(region), "device": device,
    })  # fmt: skip
    res.attrs["xfusion_fitfc"] = json.dumps(record)
    return res
