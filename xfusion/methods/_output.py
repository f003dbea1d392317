"""How the fusion methods write their predictions: float results keep NaN gaps, integer inputs
give integer results with a fill value (as the reference programs write them).

One rule for STARFM, ESTARFM, Fit-FC and FSDAF: a fine variable is integer when its dtype is,
or when its ``encoding`` says it was stored as integers (``from_geotiffs`` and Zarr decode
integer files to float32 with NaN and keep ``dtype``/``_FillValue`` there).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr

from xfusion.cube.validate import get_nodata
from xfusion.errors import InvalidParameterError

__all__ = ["integer_layout", "pick_plane", "to_integer"]

Rounding = Literal["trunc", "rint", "half_up", "exact"]


def integer_layout(ds: xr.Dataset, name: str, *, fill: float | None, method: str
                   ) -> tuple[np.dtype, float] | None:  # fmt: skip
    """``(integer dtype, fill)`` of the output of fine variable ``name``, or None for a float
    output. ``fill``: the method's fill parameter (None: the variable's nodata or
    ``_FillValue``). Raises :class:`InvalidParameterError` when no usable fill exists."""
    var = ds[name]
    raw = np.dtype(var.dtype)
    stored = var.encoding.get("dtype")
    if (
        raw.kind == "f"
        and stored is not None
        and np.dtype(stored).kind in "iu"
        and (fill is not None or var.encoding.get("_FillValue") is not None)
    ):
        raw = np.dtype(stored)
        if fill is None:
            fill = float(var.encoding["_FillValue"])
    if raw.kind not in "iu":
        return None
    out_fill = fill if fill is not None else get_nodata(var)
    info = np.iinfo(raw)
    if out_fill is None or not (
        float(out_fill).is_integer() and info.min <= float(out_fill) <= info.max
    ):
        raise InvalidParameterError(
            f"The fine variable {name!r} holds integers ({raw}), so {method}() writes integer "
            f"predictions with a fill value where none can be made, but the fill value "
            f"{out_fill!r} is not an integer within {raw}'s range [{info.min}, {info.max}]. "
            + (f"Pass fill=... (e.g. fill={info.min})" if method in ("starfm", "estarfm")
               else f"Declare one (`ds[{name!r}].attrs['nodata'] = {info.min}`)")
            + ", or convert the variable to float (NaN gaps)."
        )
    return raw, float(out_fill)


def to_integer(pred: np.ndarray, dtype: np.dtype, fill: float, *, rounding: Rounding,
               saturate: bool = False) -> np.ndarray:  # fmt: skip
    """Float predictions (NaN gaps) -> ``dtype`` with ``fill`` in the gaps.

    ``rounding``: ``"trunc"`` toward zero (IDL FIX), ``"rint"`` half to even, ``"half_up"``
    ``floor(p + 0.5)`` (USDA), ``"exact"`` (already whole numbers). Values outside the type's
    range become ``fill``, or with ``saturate`` its nearest bound (OpenCV ``saturate_cast``).
    """
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        p = pred.astype(np.float64, copy=False)
        if rounding == "trunc":
            p = np.trunc(p)
        elif rounding == "rint":
            p = np.rint(p)
        elif rounding == "half_up":
            p = np.floor(p + 0.5)
        if saturate:
            p = np.clip(p, info.min, info.max)
        ok = np.isfinite(p) & (p >= info.min) & (p <= info.max)
        return np.where(ok, p, fill).astype(dtype)


def pick_plane(out: Any, index: tuple[int, ...], dtype: np.dtype, *, lazy: bool,
               method: str) -> Any:  # fmt: skip
    """``out[:, *index]`` of a stacked block output as ``dtype`` (a lazy cast on dask)."""
    sel = out[(slice(None), *index)]
    if not lazy:
        return np.ascontiguousarray(sel).astype(dtype, copy=False)
    import dask.array as da
    from dask.base import tokenize

    target = np.dtype(dtype).str
    return da.map_blocks(
        _astype, sel, dtype=dtype, target=target,
        name=f"xfusion.{method}-{tokenize(out.name, index, target)}",
    )  # fmt: skip


def _astype(block: np.ndarray, *, target: str) -> np.ndarray:
    return block.astype(target, copy=False)
