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
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, fields, replace
from fractions import Fraction
from functools import reduce
from typing import Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.validate import TIME, get_nodata, require_same_grid
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    NotEnoughDataError,
)
from xfusion.methods._common import (
    assemble_result,
    float_data,
    require_choice,
    resolve_roles,
    select_pairs,
    select_targets,
    sort_targets,
)

__all__ = [
    "FSDAF_INTERPOLATORS",
    "FSDAF_PRESETS",
    "PARAMS",
    "FsdafParam",
    "FsdafParams",
    "fsdaf",
    "halo",
]

NAME = "fsdaf"

FsdafInterpolator: TypeAlias = Literal["tps", "idw", "bicubic"]
"""How the coarse image of the target date is interpolated to the fine grid (step 10)."""

FSDAF_INTERPOLATORS: tuple[str, ...] = ("tps", "idw", "bicubic")

_CLASS_VAR = "fsdaf_class"
_HI_VAR = "fsdaf_hi"


# --------------------------------------------------------------------------------------------
# parameters and presets


@dataclass(frozen=True, kw_only=True)
class FsdafParams:
    """A complete set of FSDAF parameters (a preset, or a preset with overrides)."""

    half_window: int
    """``w``: the similar-pixel window is ``2 w + 1`` pixels wide (IDL ``w = 20``); also the
    window of the homogeneity index."""
    n_similar: int
    """Number of similar pixels kept per target (IDL ``num_similar_pixel = 20``)."""
    min_classes: int
    """Fewest ISODATA classes (IDL ``min_class = 4``)."""
    max_classes: int
    """Most ISODATA classes (IDL ``max_class = 6``)."""
    n_pure: int
    """Purest coarse cells per class used by the unmixing (IDL ``num_pure = 100``)."""
    data_range: tuple[float, float]
    """``(DN_min, DN_max)``: valid data range of the images (IDL ``0, 10000``)."""
    scale_factor: int | None
    """Coarse/fine ratio ``s`` (fine pixels per coarse cell side); None: from the cube (see
    :func:`fsdaf`)."""
    block_cells: int
    """Block side in coarse cells (IDL ``block_size = 30``)."""
    change_quantiles: tuple[float, float]
    """Quantiles of the coarse change kept per class in the unmixing (IDL 0.1, 0.9)."""
    outlier_quantiles: tuple[float, float]
    """Quantiles of the fine image clamped per block before steps 4-12 (IDL 1e-4, 0.9999)."""
    max_weight: float
    """Residual weights above it are replaced by the mean weight (IDL 10)."""
    interpolator: str
    """``"tps"`` (IDL, exact thin-plate spline), ``"idw"`` (cuFSDAF) or ``"bicubic"``."""
    blocks: bool
    """True: the unmixing per block (IDL); False: one global unmixing (the TPS and the
    residual distribution stay per block)."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *astuple(self))


_ZHU = FsdafParams(
    half_window=20,
    n_similar=20,
    min_classes=4,
    max_classes=6,
    n_pure=100,
    data_range=(0.0, 10000.0),
    scale_factor=None,
    block_cells=30,
    change_quantiles=(0.1, 0.9),
    outlier_quantiles=(1e-4, 0.9999),
    max_weight=10.0,
    interpolator="tps",
    blocks=True,
)

FSDAF_PRESETS: dict[str, FsdafParams] = {
    "zhu": _ZHU,
    "reflectance": replace(_ZHU, data_range=(0.0, 1.0)),
    "lst": replace(_ZHU, data_range=(150.0, 400.0)),
}
"""Parameter presets: ``"zhu"`` (the IDL defaults, reflectance x1e4), ``"reflectance"``
(0..1 reflectance), ``"lst"`` (land-surface temperature in kelvin)."""


@dataclass(frozen=True)
class FsdafParam:
    """How a registry or CLI can present one parameter of :func:`fsdaf`."""

    name: str
    type: str
    """``"int"``, ``"float"``, ``"range"`` (two floats), ``"bool"``, ``"str"`` or ``"map"``."""
    default: Any
    choices: tuple[str, ...] | None
    help: str


PARAMS: tuple[FsdafParam, ...] = (
    FsdafParam("preset", "str", "zhu", tuple(FSDAF_PRESETS),
               "zhu (IDL defaults, x1e4 reflectance), reflectance (0..1), lst (kelvin)"),
    FsdafParam("half_window", "int", 20, None, "w: window of 2w+1 pixels (similar pixels, HI)"),
    FsdafParam("n_similar", "int", 20, None, "similar pixels per target"),
    FsdafParam("min_classes", "int", 4, None, "fewest ISODATA classes"),
    FsdafParam("max_classes", "int", 6, None, "most ISODATA classes"),
    FsdafParam("n_pure", "int", 100, None, "purest coarse cells per class in the unmixing"),
    FsdafParam("data_range", "range", (0.0, 10000.0), None, "LO,HI valid data range"),
    FsdafParam("scale_factor", "int", None, None,
               "coarse/fine ratio (default: the cube's coarse_factor attribute, or detected "
               "from block-constant coarse data)"),
    FsdafParam("block_cells", "int", 30, None, "block side in coarse cells"),
    FsdafParam("change_quantiles", "range", (0.1, 0.9), None,
               "quantiles of the coarse change kept per class"),
    FsdafParam("outlier_quantiles", "range", (1e-4, 0.9999), None,
               "quantiles of the fine image clamped per block"),
    FsdafParam("max_weight", "float", 10.0, None, "cap of the residual weights"),
    FsdafParam("classes", "map", None, None,
               "class map (variable name or array, 0 = background); default ISODATA"),
    FsdafParam("interpolator", "str", "tps", FSDAF_INTERPOLATORS,
               "tps (IDL), idw (cuFSDAF) or bicubic"),
    FsdafParam("blocks", "bool", True, None, "unmixing per block (True) or global (False)"),
    FsdafParam("pairs", "str", "nearest", None, "nearest, before, after, or a pair date"),
    FsdafParam("diagnostics", "bool", False, None, "also return the class map and HI"),
    FsdafParam("device", "str", "auto", None, "auto, cpu, cuda or cuda:N (CPU kernels)"),
)  # fmt: skip
"""Every parameter of :func:`fsdaf` with its type, default, choices and a one-line help."""


def halo(params: FsdafParams, scale_factor: int) -> int:
    """Fine pixels of context a tile needs around it for an exact FSDAF prediction.

    ``half_window`` (the similar-pixel window reads the change image that far) plus the
    FSDAF block reach: the change image of a pixel depends on its whole block
    (``block_cells * scale_factor`` pixels) and the block's halo of one coarse cell. A tile
    also has to start on the block grid (a multiple of ``block_cells * scale_factor`` pixels
    from the image origin) to reproduce the blocks of the full image; the global statistics
    (classes, K, thresholds) of a tile are its own.
    """
    s = int(scale_factor)
    return int(params.half_window) + s + int(params.block_cells) * s


def _bad(name: str, want: str, value: Any, hint: str = "") -> InvalidParameterError:
    return InvalidParameterError(f"fsdaf() parameter {name} must be {want}; got {value!r}.{hint}")


def _as_int(name: str, value: Any, *, minimum: int, hint: str = "") -> int:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not ok or not math.isfinite(float(value)) or not float(value).is_integer():
        raise _bad(name, f"an integer >= {minimum}", value, hint)
    if int(value) < minimum:
        raise _bad(name, f"an integer >= {minimum}", value, hint)
    return int(value)


def _as_pair(name: str, value: Any, *, unit: bool, hint: str = "") -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value)
    except (TypeError, ValueError):
        raise _bad(name, "a pair (lo, hi) of numbers with lo < hi", value, hint) from None
    if not (a < b) or math.isnan(a) or math.isnan(b) or (unit and not (a >= 0.0 and b <= 1.0)):
        want = "a pair (lo, hi) with 0 <= lo < hi <= 1" if unit else "a pair (lo, hi) with lo < hi"
        raise _bad(name, want, value, hint)
    return a, b


def _resolve_params(preset: str | None, overrides: Mapping[str, Any]) -> FsdafParams:
    base = FSDAF_PRESETS["zhu" if preset is None else
                         require_choice(preset, tuple(FSDAF_PRESETS), name="preset", method=NAME)]  # fmt: skip
    p = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    hw = _as_int("half_window", p.half_window, minimum=1, hint=" The IDL default is 20.")
    ns = _as_int("n_similar", p.n_similar, minimum=1, hint=" The IDL default is 20.")
    mn = _as_int("min_classes", p.min_classes, minimum=1, hint=" The IDL default is 4.")
    mx = _as_int("max_classes", p.max_classes, minimum=1, hint=" The IDL default is 6.")
    if mx < mn:
        raise InvalidParameterError(
            f"fsdaf() needs min_classes <= max_classes; got min_classes={mn}, max_classes={mx}."
        )
    npure = _as_int("n_pure", p.n_pure, minimum=1, hint=" The IDL default is 100.")
    bc = _as_int("block_cells", p.block_cells, minimum=1, hint=" The IDL default is 30.")
    sf = None if p.scale_factor is None else _as_int(
        "scale_factor", p.scale_factor, minimum=1,
        hint=" It is the coarse/fine pixel-size ratio, e.g. 16 for 480 m MODIS on 30 m Landsat.",
    )  # fmt: skip
    dr = _as_pair("data_range", p.data_range, unit=False,
                  hint=" The IDL default is (0, 10000) for reflectance x1e4.")  # fmt: skip
    cq = _as_pair("change_quantiles", p.change_quantiles, unit=True, hint=" IDL: (0.1, 0.9).")
    oq = _as_pair("outlier_quantiles", p.outlier_quantiles, unit=True,
                  hint=" IDL: (0.0001, 0.9999).")  # fmt: skip
    ok = not isinstance(p.max_weight, bool) and isinstance(
        p.max_weight, int | float | np.integer | np.floating)
    if not ok or not math.isfinite(float(p.max_weight)) or float(p.max_weight) <= 0:
        raise _bad("max_weight", "a finite number > 0", p.max_weight, " The IDL default is 10.")
    require_choice(p.interpolator, FSDAF_INTERPOLATORS, name="interpolator", method=NAME)
    if not isinstance(p.blocks, bool | np.bool_):
        raise _bad("blocks", "True or False", p.blocks)
    return replace(p, half_window=hw, n_similar=ns, min_classes=mn, max_classes=mx,
                   n_pure=npure, block_cells=bc, scale_factor=sf, data_range=dr,
                   change_quantiles=cq, outlier_quantiles=oq, max_weight=float(p.max_weight),
                   blocks=bool(p.blocks))  # fmt: skip


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


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _std_parts(block: np.ndarray) -> np.ndarray:
    """Exact moment partials of each band of a (B, y, x) block: (B, 1, _PARTS)."""
    from xfusion.methods.starfm import _moment_parts

    return _moment_parts(block[None], lo=-math.inf, hi=math.inf, fill=None)[0]


def _std_from_parts(parts: np.ndarray) -> np.ndarray:
    """Sample standard deviation (IDL STDDEV, ddof=1) of each band from exact partials."""
    from xfusion.methods.starfm import _NPART, _PARTS

    nb = parts.shape[0]
    flat = parts.reshape(nb, -1, _PARTS)
    out = np.zeros(nb)
    for b in range(nb):
        p = flat[b]
        n = int(p[:, 0].sum())
        if p[:, 1].any():
            raise InvalidParameterError(
                "The fine image has values too large to square in float64 (|v| > 1e154), so "
                "its standard deviation overflows. Check its scale and the nodata values."
            )
        if n < 2:
            continue
        s = sum((Fraction(x) for x in p[:, 2 : 2 + _NPART].ravel() if x), Fraction(0))
        ss = sum((Fraction(x) for x in p[:, 2 + _NPART :].ravel() if x), Fraction(0))
        var = max((ss - s * s / n) / (n - 1), Fraction(0))
        out[b] = math.sqrt(float(var))
    return out


def _global_std(f1: Any, token: str) -> Any:
    if not _is_dask(f1):
        return _std_from_parts(_std_parts(f1))
    import dask.array as da

    from xfusion.methods.starfm import _PARTS

    ny, nx = (len(c) for c in f1.chunks[1:])
    parts = da.map_blocks(
        _std_parts, f1.rechunk({0: -1}), chunks=(f1.shape[0], (1,) * ny, (_PARTS,) * nx),
        dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
        name=f"xfusion.{NAME}-moments-{token}",
    )  # fmt: skip
    return da.map_blocks(
        _std_from_parts, parts.rechunk(-1), drop_axis=(1, 2), chunks=((f1.shape[0],),),
        dtype=np.float64, meta=np.empty((0,), np.float64), name=f"xfusion.{NAME}-std-{token}",
    )  # fmt: skip


def _count_classes(labels: np.ndarray) -> np.ndarray:
    u = np.unique(np.asarray(labels))
    return np.array([int(np.count_nonzero(u > 0))], np.int64)


def _n_classes(labels: Any, token: str) -> Any:
    """Number of distinct labels > 0 (labels are 0 where the fine image is background)."""
    if not _is_dask(labels):
        return _count_classes(labels)
    import dask.array as da

    uniq = da.unique(labels)  # one chunk
    return uniq.map_blocks(_count_classes, chunks=((1,),), dtype=np.int64,
                           meta=np.empty((0,), np.int64), name=f"xfusion.{NAME}-K-{token}")


def _masked_fine(f1: Any) -> Any:
    """The fine image with every band NaN where any band is (background)."""
    if _is_dask(f1):
        import dask.array as da

        return da.map_blocks(_mask_block, f1, dtype=f1.dtype)
    return _mask_block(f1)


def _mask_block(f1: np.ndarray) -> np.ndarray:
    ok = np.all(np.isfinite(f1), axis=0)
    return np.where(ok[None], f1, np.nan).astype(f1.dtype, copy=False)


def _isodata_sample(f1: Any, limit: int) -> tuple[Any, int]:
    """A regular grid sample of at most ``limit`` pixels (B, n): chunk-independent values."""
    ny, nx = f1.shape[1:]
    step = max(1, math.ceil(math.sqrt(ny * nx / limit)))
    sub = f1[:, ::step, ::step]
    return sub.reshape(f1.shape[0], -1), step


def _fit_centers(sample: np.ndarray, *, params: FsdafParams, n_total: int) -> np.ndarray:
    from xfusion.methods._fsdaf_kernel import isodata_fit

    x = np.asarray(sample, np.float64).T
    lo, hi = params.data_range
    frac = x.shape[0] / max(n_total, 1)
    return isodata_fit(
        x, min_classes=params.min_classes, max_classes=params.max_classes, iterations=20,
        change_threshold=0.05, merge_distance=0.05 * (hi - lo), merge_pairs=2,
        min_pixels=max(1, math.ceil(200 * frac)), split_std=0.05 * (hi - lo), split_mult=1.0,
        seed=0,
    )  # fmt: skip


def _classify_block(f1: np.ndarray, centers: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    from xfusion.methods._fsdaf_kernel import classify

    return classify(f1, centers)[None].astype(dtype)


def _mask_labels(lab: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """Supplied labels (1, y, x) → int32 (1, y, x), 0 where the fine image (B, y, x) is
    background; checks the values."""
    a = np.asarray(lab)
    if a.size and (np.issubdtype(a.dtype, np.floating) and not np.all(
            np.isnan(a) | (a == np.round(a)))):  # fmt: skip
        raise InvalidParameterError(
            "fsdaf() classes= must hold integer class labels (0 = background); found "
            "non-integer values. Round or relabel the class map."
        )
    with np.errstate(invalid="ignore"):
        out = np.where(np.isfinite(a), a, 0).astype(np.int64) if np.issubdtype(
            a.dtype, np.floating) else a.astype(np.int64)  # fmt: skip
    if out.size and out.min() < 0:
        raise InvalidParameterError(
            f"fsdaf() classes= must hold labels >= 0 (0 = background); found {int(out.min())}."
        )
    ok = np.all(np.isfinite(f1), axis=0)
    return np.where(ok, out, 0).astype(np.int32).reshape((1, *ok.shape))


# --------------------------------------------------------------------------------------------
# blocks


def _block_bounds(n: int, bs: int, s: int) -> list[tuple[int, int, int, int]]:
    """(core start, core end, halo before, halo after) of the FSDAF blocks along one axis."""
    out = []
    for a in range(0, n, bs):
        b = min(n, a + bs)
        out.append((a, b, min(s, a), min(s, n - b)))
    return out


def _change_task(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, gate: Any,
                 class_change: Any = None, *, halos: tuple[tuple[int, int], ...] | None = None,
                 halos_x: tuple[tuple[int, int], ...] | None = None, halo: Any = None,
                 params: FsdafParams, s: int, with_hi: bool = True,
                 block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    """Steps 3-12 on one padded block → (B [+ 1], core): delta21 bands [and HI].

    ``gate`` is unused: on dask it is the row's gate (see :func:`_wave_dask`), a
    dependency that keeps the block from running too early.
    """
    from xfusion.methods._fsdaf_kernel import change_block

    if halo is None:
        if block_info is None or None not in block_info:  # meta probing
            return np.zeros((f1.shape[0] + with_hi, 0, 0))
        iy, ix = block_info[None]["chunk-location"][-2:]
        assert halos is not None and halos_x is not None
        halo = (*halos[iy], *halos_x[ix])
    res = change_block(
        f1, c1, c2, lab[0], s=s, halo=halo, half_window=params.half_window,
        n_pure=params.n_pure, data_range=params.data_range,
        change_quantiles=params.change_quantiles, outlier_quantiles=params.outlier_quantiles,
        max_weight=params.max_weight, interpolator=params.interpolator,
        class_change=class_change,
    )  # fmt: skip
    if not with_hi:
        return res.delta21
    return np.concatenate([res.delta21, res.hi[None]], axis=0)


def _delayed_chunks(arr: Any) -> list[Any]:
    """The chunks of a dask array as Delayed objects that keep the array's own keys.

    (``dask.delayed(f)(array)`` or ``to_delayed()`` would embed an optimised, re-keyed copy
    of the array's graph: every such use recomputes everything upstream.)
    """
    return list(arr.to_delayed(optimize_graph=False).ravel())


def _gate(*_: Any) -> None:
    """Dependency only (see :func:`_wave_dask`)."""


def _pass_gate(block: np.ndarray, _: Any) -> np.ndarray:
    return block


def _gated(arr: Any, gate: Any) -> Any:
    import dask.array as da

    return da.map_blocks(_pass_gate, arr, gate, dtype=arr.dtype, meta=arr._meta)


def _tiny(block: np.ndarray) -> np.ndarray:
    return np.zeros((1, 1, 1), np.int8)


def _stats(std: np.ndarray, kcls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(std), np.asarray(kcls)


def _predict_strip(f1: np.ndarray, d21: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                   lab: np.ndarray, stats: tuple[np.ndarray, np.ndarray], *, top: int,
                   bottom: int, w: int, nxb: int, params: FsdafParams, threads: int | None,
                   block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    """Step 13 on one chunk of a block row: rows ``top:-bottom`` of the strip are the core,
    columns carry an x-halo of ``w`` on their inner sides."""
    if block_info is None or None not in block_info:  # meta probing
        return np.zeros((f1.shape[0], 0, 0))
    j = block_info[None]["chunk-location"][-1]
    halo = (top, bottom, w if j > 0 else 0, w if j < nxb - 1 else 0)
    return _predict_task(f1, d21, c1, c2, lab, stats[0], stats[1], halo_sides=halo,
                         params=params, threads=threads)  # fmt: skip


def _wave_dask(f1: Any, c1: Any, c2: Any, lab: Any, std: Any, kcls: Any, *,
               params: FsdafParams, s: int, class_change: Any, token: str, diagnostics: bool,
               threads: int | None) -> tuple[Any, Any]:  # fmt: skip
    """Steps 3-13 on dask arrays, one FSDAF block row after the other.

    Every block and pixel task waits for the global statistics; the blocks of row ``j``
    also wait for the predictions of the last row that does not need them. Without these
    edges dask's ordering computes every block as soon as its inputs exist (their outputs,
    float64 changes of the whole image, then wait in memory for the last statistics) and
    a 10000^2 image needs several GB; with them a few block rows are alive at a time.
    """
    import dask
    import dask.array as da

    nb, ny, nx = f1.shape
    w = params.half_window
    bsz = params.block_cells * s
    ybs, xbs = _block_bounds(ny, bsz, s), _block_bounds(nx, bsz, s)
    gridx = tuple(b - a for a, b, _, _ in xbs)
    std_d = _delayed_chunks(std.rechunk(-1))[0]
    k_d = _delayed_chunks(kcls.rechunk(-1))[0]
    gate0 = dask.delayed(_gate, pure=True)(std_d, k_d, dask_key_name=f"xfusion.{NAME}-gate-{token}")
    stats = dask.delayed(_stats, pure=True)(std_d, k_d,
                                            dask_key_name=f"xfusion.{NAME}-stats-{token}")
    g = [da.map_blocks(_pass_gate, a, gate0, dtype=a.dtype,
                       name=f"xfusion.{NAME}-gated{k}-{token}")
         for k, a in enumerate((f1, c1, c2, lab))]  # fmt: skip
    xhalos = tuple((xl, xr) for _, _, xl, xr in xbs)
    changes: list[Any] = []
    preds: list[Any] = []
    gates: list[Any] = []
    out_ch = nb + diagnostics

    def change_row(j: int, gate: Any) -> Any:
        ya, yb, yt, ybt = ybs[j]
        # the block row with its halo rows (behind the row's gate: no copy of the inputs is
        # made before the row may start); _pad_blocks adds the column halos
        padded = [_pad_blocks(_gated(a[:, ya - yt : yb + ybt], gate),
                              [(yt, yt + yb - ya, yt, ybt)], xbs) for a in g]  # fmt: skip
        return da.map_blocks(
            _change_task, *padded, gate, class_change, halos=((yt, ybt),), halos_x=xhalos,
            params=params, s=s, with_hi=diagnostics,
            chunks=((out_ch,), (yb - ya,), gridx), dtype=np.float64,
            meta=np.empty((0, 0, 0), np.float64), name=f"xfusion.{NAME}-change{j}-{token}",
        )  # fmt: skip

    def need(i: int) -> int:
        """Last block row whose change the predictions of row i read."""
        yb = ybs[i][1]
        return max(k for k, (a, _, _, _) in enumerate(ybs) if a < min(ny, yb + w))

    # x chunks of the pixel step: the block grid, a last chunk narrower than w merged
    px = tuple(gridx) if sum(gridx) <= w or len(gridx) == 1 else tuple(
        da.overlap.ensure_minimum_chunksize(w, gridx))  # fmt: skip
    if sum(px) <= w:
        px = (nx,)

    def pred_row(i: int) -> Any:
        ya, yb, _, _ = ybs[i]
        r0, r1 = max(0, ya - w), min(ny, yb + w)
        d21 = da.concatenate([c[:nb] for c in changes], axis=1)
        gate = gates[need(i)]
        strips = [_gated(a[:, r0:r1], gate).rechunk((-1, -1, px))
                  for a in (g[0], d21, g[1], g[2], g[3])]  # fmt: skip
        if len(px) > 1:
            strips = [da.overlap.overlap(a, depth={0: 0, 1: 0, 2: w}, boundary="none")
                      for a in strips]  # fmt: skip
        return da.map_blocks(
            _predict_strip, *strips, stats, top=ya - r0, bottom=r1 - yb, w=w, nxb=len(px),
            params=params, threads=threads, chunks=((nb,), (yb - ya,), px),
            dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
            name=f"xfusion.{NAME}-predict{i}-{token}",
        )  # fmt: skip

    for j in range(len(ybs)):
        # the latest prediction row that does not read row j's change
        done = [i for i in range(len(preds)) if need(i) < j]
        if done:
            tiny = preds[done[-1]].map_blocks(_tiny, chunks=((1,), (1,), (1,) * len(px)),
                                              dtype=np.int8)  # fmt: skip
            gate = dask.delayed(_gate, pure=True)(gate0, *_delayed_chunks(tiny))
        else:
            gate = gate0
        gates.append(gate)
        changes.append(change_row(j, gate))
        while len(preds) < len(ybs) and need(len(preds)) <= j:
            preds.append(pred_row(len(preds)))
    pred = da.concatenate(preds, axis=1)
    hi = da.concatenate([c[nb] for c in changes], axis=0) if diagnostics else None
    return pred, hi


def _cell_stats(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, s: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per-cell statistics of one block core for the global unmixing (blocks=False).

    Returns (labels present, counts (L, ncells), coarse change (B, ncells), valid (ncells)).
    """
    from xfusion.methods._fsdaf_kernel import _cells

    okf = np.all(np.isfinite(f1), axis=0)
    glob = np.where(okf, lab[0], 0)
    nb, h, w = f1.shape
    ncy, ncx = -(-h // s), -(-w // s)
    exist = _cells(np.ones((1, h, w)), s, ncy, ncx, 0.0)[0]
    n_c = exist.sum(-1).ravel()
    cl = _cells(glob[None].astype(np.float64), s, ncy, ncx, 0.0)[0].reshape(ncy * ncx, -1)
    present = np.unique(glob[glob > 0])
    counts = np.stack([(cl == k).sum(-1) for k in present]) if present.size else np.zeros(
        (0, ncy * ncx))  # fmt: skip
    c1c = _cells(np.asarray(c1, np.float64), s, ncy, ncx, 0.0)
    c2c = _cells(np.asarray(c2, np.float64), s, ncy, ncx, 0.0)
    valid = np.all(np.isfinite(c1c) & np.isfinite(c2c), axis=(0, 3)).ravel()
    cnt = exist.sum(-1)
    with np.errstate(invalid="ignore"):
        dc = (c2c.sum(-1) / cnt - c1c.sum(-1) / cnt).reshape(nb, -1)
    return present, counts / n_c, dc, valid


def _global_unmix(stats: list[Any], params: FsdafParams) -> np.ndarray:
    """One unmixing over every cell of the image (blocks=False): change per global label."""
    from xfusion.methods._fsdaf_kernel import FULL_FRACTION, unmix_changes

    labels = np.unique(np.concatenate([st[0] for st in stats] + [np.zeros(0, np.int64)]))
    nb = stats[0][2].shape[0]
    fr, dcs, vs = [], [], []
    for present, frac, dc, valid in stats:
        full = np.zeros((labels.size, valid.size))
        full[np.searchsorted(labels, present)] = frac
        full[:, full.sum(0) <= FULL_FRACTION] = 0.0
        fr.append(full)
        dcs.append(dc)
        vs.append(valid)
    out = np.zeros((nb, int(labels.max()) + 1 if labels.size else 1))
    if labels.size == 0:
        return out
    frac = np.concatenate(fr, axis=1)
    un = unmix_changes(frac, np.concatenate(dcs, axis=1), np.concatenate(vs),
                       n_pure=params.n_pure, change_quantiles=params.change_quantiles)  # fmt: skip
    missing = np.flatnonzero(~un.identified.any(0))
    if missing.size:
        k = labels[missing[0]]
        npx = frac.shape[1]
        raise NotEnoughDataError(
            f"fsdaf(blocks=False) cannot estimate the change of class {int(k)}: it has no "
            f"coarse cell (of {npx}) free of background with valid coarse data at both dates. "
            "Give it more pixels or merge it into another class (classes=...), use fewer "
            "classes (max_classes=...), or use blocks=True (its change then falls back to the "
            "block's mean coarse change)."
        )
    out[:, labels] = un.delta
    return out


def _change_numpy(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, *,
                  params: FsdafParams, s: int, class_change: np.ndarray | None,
                  with_hi: bool = True, threads: int | None = None) -> np.ndarray:  # fmt: skip
    """Steps 3-12 over every FSDAF block of in-memory arrays (blocks run on threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from xfusion.methods._fsdaf_kernel import _resolve_threads

    nb, ny, nx = f1.shape
    bs = params.block_cells * s
    out = np.empty((nb + with_hi, ny, nx))
    def one(yb_: tuple[int, int, int, int], xb_: tuple[int, int, int, int]) -> None:
        ya, yb, yt, ybt = yb_
        xa, xb, xl, xrt = xb_
        sl = (slice(None), slice(ya - yt, yb + ybt), slice(xa - xl, xb + xrt))
        out[:, ya:yb, xa:xb] = _change_task(
            f1[sl], c1[sl], c2[sl], lab[sl], None, class_change, halo=(yt, ybt, xl, xrt), params=params,
            s=s, with_hi=with_hi,
        )  # fmt: skip

    jobs = [(a, b) for a in _block_bounds(ny, bs, s) for b in _block_bounds(nx, bs, s)]
    nthreads = min(_resolve_threads(threads), len(jobs))
    if nthreads <= 1:
        for a, b in jobs:
            one(a, b)
    else:
        with ThreadPoolExecutor(nthreads) as pool:
            for fut in [pool.submit(one, a, b) for a, b in jobs]:
                fut.result()
    return out


def _pad_blocks(a: Any, ybs: list[Any], xbs: list[Any]) -> Any:
    import dask.array as da

    a = da.concatenate([a[:, ya - yt : yb + ybt, :] for ya, yb, yt, ybt in ybs], axis=1)
    a = da.concatenate([a[:, :, xa - xl : xb + xr] for xa, xb, xl, xr in xbs], axis=2)
    return a.rechunk((-1, tuple(yb - ya + yt + ybt for ya, yb, yt, ybt in ybs),
                      tuple(xb - xa + xl + xr for xa, xb, xl, xr in xbs)))  # fmt: skip


def _class_change_dask(f1: Any, c1: Any, c2: Any, lab: Any, *, params: FsdafParams, s: int,
                       token: str) -> Any:  # fmt: skip
    import dask

    bs = params.block_cells * s
    arrs = [a.rechunk((-1, bs, bs)).to_delayed(optimize_graph=False) for a in (f1, c1, c2, lab)]
    stats = [
        dask.delayed(_cell_stats, pure=True)(arrs[0][0, i, j], arrs[1][0, i, j],
                                             arrs[2][0, i, j], arrs[3][0, i, j], s)
        for i in range(arrs[0].shape[1]) for j in range(arrs[0].shape[2])
    ]  # fmt: skip
    return dask.delayed(_global_unmix, pure=True)(stats, params,
                                                  dask_key_name=f"xfusion.{NAME}-unmix-{token}")


# --------------------------------------------------------------------------------------------
# step 13


def _predict_task(f1: np.ndarray, d21: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                  lab: np.ndarray, std: np.ndarray, kcls: np.ndarray, *,
                  halo_sides: tuple[int, int, int, int], params: FsdafParams,
                  threads: int | None) -> np.ndarray:  # fmt: skip
    from xfusion.methods._fsdaf_kernel import predict_block

    k = int(np.asarray(kcls).ravel()[0])
    th = 2.0 * np.asarray(std, np.float64) / k if k > 0 else np.zeros(f1.shape[0])
    res = predict_block(
        f1, d21, c1, c2, lab[0] > 0, thresholds=th, half_window=params.half_window,
        n_similar=params.n_similar, data_range=params.data_range, halo=halo_sides,
        threads=threads,
    )  # fmt: skip
    return res.prediction


def _to_output(block: np.ndarray, *, dtype: str, fill: float | None) -> np.ndarray:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.floating):
        return block.astype(dt)
    info = np.iinfo(dt)
    with np.errstate(invalid="ignore"):
        t = np.trunc(block)  # IDL FIX
        ok = np.isfinite(t) & (t >= info.min) & (t <= info.max)
        return np.where(ok, t, fill).astype(dt)


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
    raw = ds[name].dtype
    if not np.issubdtype(raw, np.integer):
        return np.dtype(work.dtype), None
    fill = get_nodata(ds[name])
    info = np.iinfo(raw)
    if fill is None or not (float(fill).is_integer() and info.min <= float(fill) <= info.max):
        raise InvalidParameterError(
            f"The fine variable {name!r} holds integers ({raw}), so fsdaf() writes integer "
            f"predictions with its nodata value where none can be made, but the nodata value "
            f"{fill!r} is not an integer within {raw}'s range. Set ds[{name!r}].attrs['nodata'] "
            "or convert the variable to float (NaN gaps)."
        )
    return np.dtype(raw), float(fill)


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
    10000 x 10000 one-band run streamed to Zarr peaks at about 2.2 GB (see
    ``benchmarks/fsdaf_results.md``).

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
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        require_same_grid(ds[fname], ds[cname], names=(fname, cname))
        for name in (fname, cname):
            extra = [d for d in ds[name].dims if d not in (TIME, *roles.dims)]
            if extra:
                raise MissingDimensionError(
                    f"fsdaf() predicts (time, {roles.dims[0]}, {roles.dims[1]}) variables, but "
                    f"{name!r} also has the dim(s) {extra!r} (dims {tuple(ds[name].dims)!r}). "
                    f"Make one variable per band, e.g. `ds[{name!r}].to_dataset({extra[0]!r})`, "
                    "and pass the lists of names as fine=[...] and coarse=[...]."
                )
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
        from xfusion.methods.starfm import _worker_threads

        assert spatial is not None
        # step 13 runs on the FSDAF block grid: each task needs the change of its block and
        # of the neighbours within w pixels, so dask can proceed block row by block row
        bsz = params.block_cells * s
        grid = tuple(tuple(b - a for a, b, _, _ in _block_bounds(n, bsz, s)) for n in (ny, nx))
        threads = _worker_threads(len(grid[0]) * len(grid[1]))
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

