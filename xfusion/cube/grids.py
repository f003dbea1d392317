"""Nested grids of guided super-resolution: a coarse raster and a fine guide nested in it.

:func:`nested_grids` checks that a coarse input and a fine guide are *nested by* ``scale``
(same CRS, axis-aligned, pixel size ratio ``scale``, coarse pixel edges on fine pixel edges,
the guide covering the coarse input); :func:`prepare_guided` lays out the arrays of a
coarse variable and its guide for the super-resolution methods and trainers
(:class:`GuidedInputs`), and :func:`wrap_fine` turns a fine-grid array back into a DataArray
with coordinates from the fine GeoBox.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from xfusion.cube.attrs import output_attrs
from xfusion.cube.validate import get_geobox, get_nodata, spatial_dims
from xfusion.engine.bicubic import BICUBIC_HALO
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    TimeAxisError,
)

__all__ = ["GuidedInputs", "NestedGrids", "nested_grids", "prepare_guided", "wrap_fine"]


@dataclass(frozen=True)
class NestedGrids:
    """A coarse grid and the fine output grid nested in it by ``scale``."""

    scale: int
    """Fine pixels per coarse pixel along each axis."""
    coarse: Any
    """GeoBox of the coarse input."""
    fine: Any
    """GeoBox of the output: the guide's grid over the coarse footprint."""
    offset: tuple[int, int]
    """Row and column of the output's first pixel in the guide grid (0, 0 without a guide)."""
    coarse_dims: tuple[str, str]
    """Spatial dims of the coarse input."""
    fine_dims: tuple[str, str]
    """Spatial dims of the output (the guide's)."""


def _res(gbox: Any) -> tuple[float, float]:
    a = gbox.affine
    return float(a.e), float(a.a)


def _near_int(v: float, tol: float = 1e-6) -> int | None:
    r = round(v)
    return int(r) if abs(v - r) <= tol * max(1.0, abs(v)) else None


def nested_grids(coarse: xr.DataArray | xr.Dataset, guide: xr.DataArray | xr.Dataset | None = None,
                 *, scale: int | None = None) -> NestedGrids:
    """Check that ``guide``'s grid nests ``coarse``'s by ``scale`` and return the output grid.

    Parameters
    ----------
    coarse : xarray.DataArray or xarray.Dataset
        The coarse input on its native grid.
    guide : xarray.DataArray or xarray.Dataset, optional
        The fine guide (its grid is the output grid). Without it the output grid is the coarse
        grid refined by ``scale``.
    scale : int, optional
        Fine pixels per coarse pixel; default: the ratio of the pixel sizes.

    Returns
    -------
    NestedGrids

    Raises
    ------
    CRSMismatchError
        Different CRSs.
    GridMismatchError
        Rotated grids, a pixel-size ratio that is not ``scale`` (or not an integer), coarse
        pixel edges that do not fall on fine pixel edges, or a guide not covering the coarse
        input.
    InvalidParameterError
        ``scale`` not a positive integer, or missing without a guide.
    """
    cdims = spatial_dims(coarse, name="coarse input")
    gc = get_geobox(coarse, name="coarse input")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, np.integer))
                              or scale < 1):
        raise InvalidParameterError(
            f"scale={scale!r} must be a positive integer (fine pixels per coarse pixel), e.g. "
            "scale=4 for 1 km LST on a 250 m guide."
        )
    if gc.affine.b != 0 or gc.affine.d != 0:
        raise GridMismatchError(
            f"The coarse grid is rotated or sheared (transform {tuple(gc.affine)[:6]}); "
            "super_resolve needs north-up grids. Reproject it first with "
            "`coarse.odc.reproject(crs)`."
        )
    if guide is None:
        if scale is None:
            raise InvalidParameterError(
                "super_resolve() without a guide needs scale= (fine pixels per coarse pixel) to "
                "define the output grid, e.g. scale=4."
            )
        fine = gc.zoom_out(1.0 / int(scale))
        return NestedGrids(int(scale), gc, fine, (0, 0), cdims, cdims)
    fdims = spatial_dims(guide, name="guide")
    gg = get_geobox(guide, name="guide")
    if gc.crs != gg.crs:
        raise CRSMismatchError(
            f"The coarse input ({gc.crs}) and the guide ({gg.crs}) are in different CRSs. "
            "Reproject the guide onto a grid nested in the coarse one, e.g. "
            "`guide.odc.reproject(coarse.odc.geobox.zoom_out(1 / scale))`."
        )
    if gg.affine.b != 0 or gg.affine.d != 0:
        raise GridMismatchError(
            f"The guide grid is rotated or sheared (transform {tuple(gg.affine)[:6]}); "
            "super_resolve needs north-up grids."
        )
    (cy, cx), (fy, fx) = _res(gc), _res(gg)
    rx, ry = cx / fx, cy / fy
    ratio_txt = (f"coarse pixels {abs(cx):g} x {abs(cy):g}, guide pixels {abs(fx):g} x "
                 f"{abs(fy):g} (ratio {rx:g} x {ry:g})")
    if scale is None:
        sx = _near_int(rx)
        if sx is None or sx < 1 or abs(rx - ry) > 1e-6 * abs(rx):
            raise GridMismatchError(
                f"The guide grid is not nested in the coarse grid: {ratio_txt}; the ratio must "
                "be the same positive integer on both axes. Resample the guide to "
                "`coarse.odc.geobox.zoom_out(1 / scale)`."
            )
        scale = sx
    s = int(scale)
    if abs(rx - s) > 1e-6 * s or abs(ry - s) > 1e-6 * s:
        raise GridMismatchError(
            f"The grids are not nested by scale={s}: {ratio_txt}. Pass the scale the grids "
            f"have (scale={round(rx)!r} here if that is what you meant), or resample the guide "
            f"to `coarse.odc.geobox.zoom_out(1 / {s})`."
        )
    ox = (gc.affine.c - gg.affine.c) / fx
    oy = (gc.affine.f - gg.affine.f) / fy
    ix, iy = _near_int(ox, 1e-4), _near_int(oy, 1e-4)
    if ix is None or iy is None:
        raise GridMismatchError(
            f"The coarse pixel edges do not fall on guide pixel edges: the coarse origin is "
            f"{ox + 0.0:.4g} x {oy + 0.0:.4g} guide pixels from the guide origin (must be whole "
            "numbers). "
            "Snap the guide to the coarse grid: "
            f"`guide.odc.reproject(coarse.odc.geobox.zoom_out(1 / {s}))`."
        )
    hc, wc = gc.shape
    hg, wg = gg.shape
    if iy < 0 or ix < 0 or iy + s * hc > hg or ix + s * wc > wg:
        raise GridMismatchError(
            f"The guide does not cover the coarse input: the coarse footprint spans guide rows "
            f"{iy}..{iy + s * hc} and columns {ix}..{ix + s * wc}, but the guide has {hg} rows "
            f"and {wg} columns. Crop the coarse input to the guide's extent "
            "(`coarse.odc.crop(guide.odc.geobox.extent)` or `.isel(...)`), or load a guide "
            "that covers it."
        )
    fine = gg[iy:iy + s * hc, ix:ix + s * wc]
    return NestedGrids(s, gc, fine, (iy, ix), cdims, fdims)


def as_float(var: xr.DataArray) -> xr.DataArray:
    if np.issubdtype(var.dtype, np.floating):
        return var.astype(np.float32) if var.dtype != np.float32 else var
    nd = get_nodata(var)
    out = var.astype(np.float32)
    return out.where(var != nd) if nd is not None else out


def other_dims(obj: xr.DataArray, sdims: tuple[str, str]) -> list[Hashable]:
    return [d for d in obj.dims if d not in sdims]


def guide_channels(guide: xr.DataArray | xr.Dataset | Sequence[xr.DataArray],
                    fdims: tuple[str, str]) -> tuple[xr.DataArray, list[str]]:
    """Return the guide as ``(time?, band, y, x)`` float32 and its channel names."""
    if isinstance(guide, xr.Dataset):
        names = [str(n) for n in guide.data_vars]
        if not names:
            raise InvalidParameterError("The guide Dataset has no data variables.")
        parts = [as_float(guide[n]) for n in names]
        g = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
        g = g.assign_coords(band=names)
    elif isinstance(guide, xr.DataArray):
        g = as_float(guide)
        extra = [d for d in g.dims if d not in (*fdims, "time")]
        if len(extra) > 1:
            raise MissingDimensionError(
                f"The guide has dims {tuple(g.dims)!r}: besides time and the spatial dims it may "
                f"have one band dim, found {extra!r}. Select or stack them first."
            )
        if extra:
            g = g.rename({extra[0]: "band"}) if extra[0] != "band" else g
            names = [str(v) for v in (g["band"].values if "band" in g.coords
                                      else range(g.sizes["band"]))]
        else:
            names = [str(g.name) if g.name is not None else "guide"]
            g = g.expand_dims(band=names)
    else:
        try:
            items = list(guide)
        except TypeError:
            raise InvalidParameterError(
                f"guide must be an xarray DataArray, a Dataset (one variable per band) or a list "
                f"of DataArrays; found {type(guide).__name__}."
            ) from None
        return guide_channels(xr.merge([v.rename(v.name or f"guide{k}") for k, v in
                                         enumerate(items)], compat="override"), fdims)
    order = [d for d in ("time", "band") if d in g.dims] + list(fdims)
    return g.transpose(*order), names


@dataclass
class GuidedInputs:
    coarse: Any  # (T, Hc, Wc) float32, numpy or dask
    guide: Any | None  # (T or 1, G, Hf, Wf) float32 on the output grid
    guide_names: list[str]
    grids: NestedGrids
    time: xr.DataArray | None  # time coordinate of the input (None: no time dim)
    template: xr.DataArray


def coarse_3d(var: xr.DataArray, cdims: tuple[str, str]) -> tuple[Any, xr.DataArray | None]:
    others = other_dims(var, cdims)
    if len(others) > 1 or (others and others[0] != "time"):
        raise MissingDimensionError(
            f"The coarse input {var.name!r} has dims {tuple(var.dims)!r}; super_resolve takes "
            "the spatial dims and optionally `time`. Select or stack the others first, e.g. "
            "`lst.isel(band=0)`."
        )
    v = as_float(var).transpose(*others, *cdims)
    data = v.data if others else v.data[None]
    return data, (var["time"] if others else None)


def prepare_guided(var: xr.DataArray, guide: Any, scale: int | None, *,
             need_guide: bool) -> GuidedInputs:
    grids = nested_grids(var, guide if guide is not None else None, scale=scale)
    coarse, tcoord = coarse_3d(var, grids.coarse_dims)
    g = None
    names: list[str] = []
    if guide is not None:
        gda, names = guide_channels(guide, grids.fine_dims)
        (iy, ix), s = grids.offset, grids.scale
        hc, wc = grids.coarse.shape
        fy, fx = grids.fine_dims
        gda = gda.isel({fy: slice(iy, iy + s * hc), fx: slice(ix, ix + s * wc)})
        if "time" in gda.dims:
            if tcoord is None:
                if gda.sizes["time"] != 1:
                    raise TimeAxisError(
                        f"The guide has {gda.sizes['time']} dates but the coarse input has no "
                        "time dim; select one guide date (`guide.sel(time=...)`)."
                    )
                gda = gda.isel(time=0)
            else:
                want = np.asarray(tcoord.values)
                have = np.asarray(gda["time"].values)
                missing = [str(t)[:19] for t in want if t not in have]
                if missing:
                    raise TimeAxisError(
                        f"The guide has no date(s) {missing!r} of the coarse input (guide dates: "
                        f"{[str(t)[:19] for t in have]!r}). Give a guide per coarse date, or a "
                        "static guide without a time dim."
                    )
                gda = gda.sel(time=want)
        data = gda.data
        g = data if "time" in gda.dims else data[None]
    elif need_guide:
        raise InvalidParameterError(
            "This method needs guide= (fine bands on the output grid: NDVI, reflectance...)."
        )
    return GuidedInputs(coarse, g, names, grids, tcoord, var)


def _align_chunks(chunks: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Regular chunks, each a multiple of ``multiple`` (except the last) of about the same size."""
    if all(c % multiple == 0 for c in chunks[:-1]):
        return chunks
    n = sum(chunks)
    size = max(multiple, round(max(chunks) / multiple) * multiple)
    out = [size] * (n // size)
    if n % size:
        out.append(n % size)
    return tuple(out)


def rechunk_nested(coarse: Any, guide: Any | None, scale: int, multiple: int = 1
                    ) -> tuple[Any, Any | None]:
    """Rechunk coarse (T, Hc, Wc) so fine chunks are multiples of ``multiple``, and the guide
    (T', G, Hf, Wf) to ``scale x`` the coarse chunks."""
    if not (dask.is_dask_collection(coarse) or (guide is not None and dask.is_dask_collection(guide))):
        return coarse, guide
    import dask.array as da

    if not dask.is_dask_collection(coarse):
        coarse = da.from_array(coarse, chunks=(1, 512, 512))
    m = multiple // math.gcd(multiple, scale)
    cy = _align_chunks(coarse.chunks[-2], m)
    cx = _align_chunks(coarse.chunks[-1], m)
    # bicubic needs chunks >= its halo: merge tiny trailing chunks now so both grids agree
    cy, cx = ((sum(c),) if sum(c) <= BICUBIC_HALO else
              da.overlap.ensure_minimum_chunksize(BICUBIC_HALO, c) if len(c) > 1 else c
              for c in (cy, cx))
    coarse = coarse.rechunk((coarse.chunks[0], cy, cx))
    if guide is not None:
        if not dask.is_dask_collection(guide):
            guide = da.from_array(guide)
        guide = guide.rechunk((coarse.chunks[0] if guide.shape[0] == coarse.shape[0] else 1, -1,
                               tuple(c * scale for c in cy), tuple(c * scale for c in cx)))
    return coarse, guide


def wrap_fine(data: Any, inp: GuidedInputs, *, name: Hashable, attrs: Mapping[str, Any]) -> xr.DataArray:
    """Wrap ``(T, Hf, Wf)`` output as a DataArray on the output GeoBox."""
    from odc.geo.xr import xr_coords

    fy, fx = inp.grids.fine_dims
    coords: dict[Hashable, Any] = dict(xr_coords(inp.grids.fine, dims=(fy, fx)))
    tmpl = inp.template
    if inp.time is None:
        dims: tuple[Hashable, ...] = (fy, fx)
        data = data[0]
    else:
        dims = ("time", fy, fx)
        coords.update({cname: c for cname, c in tmpl.coords.items()
                       if c.dims and all(d == "time" for d in c.dims)})
    out = xr.DataArray(data, dims=dims, coords=coords, name=name,
                       attrs=output_attrs(attrs, data.dtype, name=name))
    out.name = name  # xarray would otherwise name an unnamed result after the dask array
    out.encoding["grid_mapping"] = "spatial_ref"
    return out
