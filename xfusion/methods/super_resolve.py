"""Guided super-resolution: coarse LST (MODIS-like) onto a fine guide grid (NDVI, bands).

:func:`super_resolve` is the entry point (also ``da.fusion.super_resolve`` and
``ds.fusion.super_resolve``). Methods:

``"sif-sr1"`` / ``"sif-sr2"``
    SIF-CNN-SR (Ait-Bachir et al. 2025): a residual U-Net on ``[bicubic(LST), guide]`` trained
    self-supervised (scale-invariance-free): PSF-degraded output vs the observed coarse LST,
    plus a texture term tying output edges to ``gamma x`` guide edges (4 Sobels for SR1, a
    high-pass for SR2). Weights come from :func:`train_sif_sr` (an xfusion checkpoint holding
    the normalisation statistics with the weights).
``"dms"``
    Data-mining sharpener (Gao et al. 2012), regression trees; see :func:`xfusion.methods.dms.dms`.
``"bicubic"``
    Bicubic interpolation (Keys a = -0.75, half-pixel centres, edges replicated: OpenCV
    ``INTER_CUBIC`` / torch ``bicubic``).
``"harmonize"``
    Landsat-8 -> Sentinel-2 harmonization U-Net with uncertainty; see
    :func:`xfusion.methods.harmonize.harmonize`.

Grids: the coarse input and the guide must be *nested by* ``scale``: same CRS, axis-aligned,
pixel size ratio ``scale`` and coarse pixel edges on fine pixel edges; the guide must cover the
coarse input. The output lies on the guide's pixel grid, restricted to the coarse footprint
(the guide's own GeoBox when both cover the same area); its coordinates come from the GeoBox
(odc-geo). Everything is lazy on dask inputs and chunk-invariant: blocks carry a halo as large
as the receptive field (bicubic: 4 coarse px, the SIF U-Net: 72 fine px).

NaN means unobserved, in and out: an unobserved coarse pixel gives NaN over its whole fine
footprint, a NaN guide pixel gives a NaN output pixel. NaN never spreads further: the values
next to a hole are computed with the hole filled locally (the mean of the valid coarse pixels
within 2 pixels, or the training mean inside the network), so only outputs within the
receptive field of a hole can change, and they stay finite.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.config import EngineConfig
from xfusion.cube.validate import get_geobox, get_nodata, spatial_dims
from xfusion.engine.device import resolve_device
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    NotEnoughDataError,
    TimeAxisError,
    WeightsMismatchError,
)
from xfusion.models.registry import SIF_ARCH

if TYPE_CHECKING:
    import torch

__all__ = [
    "SR_METHODS",
    "NestedGrids",
    "SRMethod",
    "aggregate",
    "bicubic_upsample",
    "coarse_consistency",
    "evaluate_synthetic",
    "format_evaluation",
    "gradient_rmse",
    "nested_grids",
    "super_resolve",
    "train_sif_sr",
]

SRMethod: TypeAlias = Literal["sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize"]
SR_METHODS: tuple[str, ...] = ("sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize")
"""Methods of :func:`super_resolve`."""


_BICUBIC_A = -0.75
_BICUBIC_HALO = 4  # 2 px of cubic support + 2 px of local NaN filling (coarse px)

# Paper hyper-parameters (shipped *_train_params.json), per variant.
SIF_DEFAULTS: dict[str, dict[str, Any]] = {
    "sif-sr1": {"texture": "sobel", "lr": 1e-3, "alpha": 0.99, "gamma": -0.5, "patience": 30},
    "sif-sr2": {"texture": "highpass", "lr": 1e-4, "alpha": 0.5, "gamma": -0.25, "patience": 30},
}




# --------------------------------------------------------------------------------------------
# grids


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


# --------------------------------------------------------------------------------------------
# bicubic interpolation (numpy, block-wise)


def _keys(t: np.ndarray, a: float = _BICUBIC_A) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0),
    )


def _cubic_taps(scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Source offsets ``(scale, 4)`` (relative to the coarse pixel) and weights per phase."""
    p = np.arange(scale)
    u = (p + 0.5) / scale - 0.5
    fl = np.floor(u)
    t = u - fl
    offs = fl[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]
    w = _keys(np.stack([t + 1, t, 1 - t, 2 - t], axis=1))
    return offs, w


def _upsample_axis(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
    offs, w = _cubic_taps(scale)
    n = x.shape[axis]
    x = np.moveaxis(x, axis, -1)
    base = np.arange(n)
    out = np.zeros((*x.shape[:-1], n, scale), dtype=np.float64)
    for p in range(scale):
        for k in range(4):
            idx = np.clip(base + offs[p, k], 0, n - 1)
            out[..., p] += w[p, k] * x[..., idx]
    return np.moveaxis(out.reshape(*x.shape[:-1], n * scale), -1, axis)


def _fill_local(x: np.ndarray, radius: int = 2) -> np.ndarray:
    """NaN pixels take the mean of the finite pixels within ``radius`` (else stay NaN)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    v = np.where(bad, 0.0, x).astype(np.float64)
    m = (~bad).astype(np.float64)
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(radius, radius), (radius, radius)]
    vp, mp = np.pad(v, pad), np.pad(m, pad)
    s = np.zeros_like(v)
    c = np.zeros_like(v)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            s += vp[..., dy:dy + h, dx:dx + w]
            c += mp[..., dy:dy + h, dx:dx + w]
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = s / c
    return np.where(bad, fill, x)


def _bicubic_block(x: np.ndarray, *, scale: int, halo_sides: tuple[int, int, int, int],
                   fill: bool = True) -> np.ndarray:
    """Bicubic upsampling of a haloed block ``(..., H, W)``; returns the interior, float32.

    NaN pixels are filled locally first (:func:`_fill_local`) and their fine footprint is NaN
    again afterwards.
    """
    top, bottom, left, right = halo_sides
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    xf = _fill_local(x) if fill else x
    xf = np.where(np.isfinite(xf), xf, 0.0)
    up = _upsample_axis(_upsample_axis(xf, scale, -2), scale, -1)
    if bad.any():
        up[bad.repeat(scale, axis=-2).repeat(scale, axis=-1)] = np.nan
    h, w = x.shape[-2:]
    return up[..., top * scale:(h - bottom) * scale, left * scale:(w - right) * scale].astype(
        np.float32)


def bicubic_upsample(data: Any, scale: int, *, method: str = "bicubic") -> Any:
    """Bicubic ``scale``-times upsampling of a numpy or dask array (spatial dims last).

    Keys cubic convolution with ``a = -0.75`` on half-pixel centres, edges replicated (what
    OpenCV ``INTER_CUBIC`` and ``torch.nn.functional.interpolate(mode="bicubic")`` compute).
    NaN pixels give NaN over their fine footprint without spreading. Lazy and
    chunk-invariant on dask (halo of 4 coarse pixels).
    """
    from xfusion.engine.run import map_blocks_halo

    return map_blocks_halo(_bicubic_block, data, halo=_BICUBIC_HALO, dtype=np.float32,
                           scale=int(scale), method=method, token_parts=("bicubic", int(scale)),
                           kwargs={"scale": int(scale)})


# --------------------------------------------------------------------------------------------
# aggregation and evaluation helpers


def _block_reduce(x: np.ndarray, scale: int, how: str) -> np.ndarray:
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    v = np.asarray(x, dtype=np.float64)[..., :h * scale, :w * scale]
    v = v.reshape(*v.shape[:-2], h, scale, w, scale)
    if how == "power":
        return np.mean(v**4, axis=(-3, -1)) ** 0.25
    return np.mean(v, axis=(-3, -1))


def aggregate(fine: xr.DataArray, /, *, scale: int, how: Literal["mean", "power"] = "mean",
              like: xr.DataArray | None = None) -> xr.DataArray:
    """Aggregate a fine field to the coarse grid by ``scale x scale`` blocks (lazy).

    ``how="mean"`` is the block mean; ``"power"`` the radiance-consistent power mean
    ``(mean T^4)^(1/4)`` (temperatures in kelvin). A block with a NaN gives NaN. ``like``
    (the coarse input) supplies the output coordinates.
    """
    if how not in ("mean", "power"):
        raise InvalidParameterError(f"Unknown how={how!r}; choose one of ['mean', 'power'].")
    ydim, xdim = spatial_dims(fine, name="fine field")
    f = fine
    if how == "power":
        f = f.astype(np.float64) ** 4
    out = f.coarsen({ydim: scale, xdim: scale}, boundary="trim").reduce(np.mean)
    if how == "power":
        out = out ** 0.25
    if like is not None:
        cy, cx = spatial_dims(like, name="coarse input")
        out = out.rename({ydim: cy, xdim: cx}).assign_coords({cy: like[cy], cx: like[cx]})
        if "spatial_ref" in like.coords:
            out = out.assign_coords(spatial_ref=like.coords["spatial_ref"])
    return out.astype(np.float32)


def coarse_consistency(sr: xr.DataArray, coarse: xr.DataArray, /, *, scale: int,
                       how: Literal["mean", "power"] = "mean") -> xr.DataArray:
    """RMSE between the aggregated super-resolved field and the coarse input (lazy).

    Over the coarse pixels where both are finite; ``how`` as in :func:`aggregate`.
    """
    agg = aggregate(sr, scale=scale, how=how, like=coarse)
    diff = agg.astype(np.float64) - coarse.astype(np.float64).transpose(*agg.dims)
    return np.sqrt((diff**2).mean()).rename("coarse_consistency_rmse")


def _sobel_mag(x: np.ndarray) -> np.ndarray:
    k = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    kernels = [k, k.T, np.array([[0.0, 1, 2], [-1, 0, 1], [-2, -1, 0]]),
               np.array([[-2.0, -1, 0], [-1, 0, 1], [0, 1, 2]])]
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    mags = np.zeros((*x.shape[:-2], h, w))
    for kk in kernels:
        g = np.zeros_like(mags)
        for dy in range(3):
            for dx in range(3):
                g += kk[dy, dx] * x[..., dy:dy + h, dx:dx + w]
        mags += g**2
    return np.sqrt(mags)


def gradient_rmse(pred: Any, ref: Any) -> float:
    """RMSE of the 4-direction Sobel gradient magnitudes (valid pixels, 1-px border dropped)."""
    p = _sobel_mag(np.asarray(pred, dtype=np.float64))
    r = _sobel_mag(np.asarray(ref, dtype=np.float64))
    ok = np.isfinite(p) & np.isfinite(r)
    return float(np.sqrt(np.mean((p[ok] - r[ok]) ** 2)))


# --------------------------------------------------------------------------------------------
# inputs


def _as_float(var: xr.DataArray) -> xr.DataArray:
    if np.issubdtype(var.dtype, np.floating):
        return var.astype(np.float32) if var.dtype != np.float32 else var
    nd = get_nodata(var)
    out = var.astype(np.float32)
    return out.where(var != nd) if nd is not None else out


def _other_dims(obj: xr.DataArray, sdims: tuple[str, str]) -> list[Hashable]:
    return [d for d in obj.dims if d not in sdims]


def _guide_channels(guide: xr.DataArray | xr.Dataset | Sequence[xr.DataArray],
                    fdims: tuple[str, str]) -> tuple[xr.DataArray, list[str]]:
    """Return the guide as ``(time?, band, y, x)`` float32 and its channel names."""
    if isinstance(guide, xr.Dataset):
        names = [str(n) for n in guide.data_vars]
        if not names:
            raise InvalidParameterError("The guide Dataset has no data variables.")
        parts = [_as_float(guide[n]) for n in names]
        g = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
        g = g.assign_coords(band=names)
    elif isinstance(guide, xr.DataArray):
        g = _as_float(guide)
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
        return _guide_channels(xr.merge([v.rename(v.name or f"guide{k}") for k, v in
                                         enumerate(items)], compat="override"), fdims)
    order = [d for d in ("time", "band") if d in g.dims] + list(fdims)
    return g.transpose(*order), names


@dataclass
class _Inputs:
    coarse: Any  # (T, Hc, Wc) float32, numpy or dask
    guide: Any | None  # (T or 1, G, Hf, Wf) float32 on the output grid
    guide_names: list[str]
    grids: NestedGrids
    time: xr.DataArray | None  # time coordinate of the input (None: no time dim)
    template: xr.DataArray


def _coarse_3d(var: xr.DataArray, cdims: tuple[str, str]) -> tuple[Any, xr.DataArray | None]:
    others = _other_dims(var, cdims)
    if len(others) > 1 or (others and others[0] != "time"):
        raise MissingDimensionError(
            f"The coarse input {var.name!r} has dims {tuple(var.dims)!r}; super_resolve takes "
            "the spatial dims and optionally `time`. Select or stack the others first, e.g. "
            "`lst.isel(band=0)`."
        )
    v = _as_float(var).transpose(*others, *cdims)
    data = v.data if others else v.data[None]
    return data, (var["time"] if others else None)


def _prepare(var: xr.DataArray, guide: Any, scale: int | None, *,
             need_guide: bool) -> _Inputs:
    grids = nested_grids(var, guide if guide is not None else None, scale=scale)
    coarse, tcoord = _coarse_3d(var, grids.coarse_dims)
    g = None
    names: list[str] = []
    if guide is not None:
        gda, names = _guide_channels(guide, grids.fine_dims)
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
    return _Inputs(coarse, g, names, grids, tcoord, var)


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


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


def _rechunk_nested(coarse: Any, guide: Any | None, scale: int, multiple: int = 1
                    ) -> tuple[Any, Any | None]:
    """Rechunk coarse (T, Hc, Wc) so fine chunks are multiples of ``multiple``, and the guide
    (T', G, Hf, Wf) to ``scale x`` the coarse chunks."""
    if not (_is_dask(coarse) or (guide is not None and _is_dask(guide))):
        return coarse, guide
    import dask.array as da

    if not _is_dask(coarse):
        coarse = da.from_array(coarse, chunks=(1, 512, 512))
    m = multiple // math.gcd(multiple, scale)
    cy = _align_chunks(coarse.chunks[-2], m)
    cx = _align_chunks(coarse.chunks[-1], m)
    # bicubic needs chunks >= its halo: merge tiny trailing chunks now so both grids agree
    cy, cx = ((sum(c),) if sum(c) <= _BICUBIC_HALO else
              da.overlap.ensure_minimum_chunksize(_BICUBIC_HALO, c) if len(c) > 1 else c
              for c in (cy, cx))
    coarse = coarse.rechunk((coarse.chunks[0], cy, cx))
    if guide is not None:
        if not _is_dask(guide):
            guide = da.from_array(guide)
        guide = guide.rechunk((coarse.chunks[0] if guide.shape[0] == coarse.shape[0] else 1, -1,
                               tuple(c * scale for c in cy), tuple(c * scale for c in cx)))
    return coarse, guide


def _wrap(data: Any, inp: _Inputs, *, name: Hashable, attrs: Mapping[str, Any]) -> xr.DataArray:
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
    out = xr.DataArray(data, dims=dims, coords=coords, name=name, attrs=dict(attrs))
    out.encoding["grid_mapping"] = "spatial_ref"
    return out


# --------------------------------------------------------------------------------------------
# SIF-CNN-SR: inference


@dataclass(frozen=True)
class _SifWeights:
    path: str
    sha256: str
    meta: dict[str, Any]
    mean: np.ndarray
    std: np.ndarray
    halo: int
    width: int


def _load_sif_weights(weights: Any, *, method: str, guide_names: Sequence[str],
                      scale: int) -> _SifWeights:
    from xfusion.models.checkpoint import file_sha256, read_metadata
    from xfusion.models.registry import resolve_weights

    path, sha = resolve_weights(weights)
    meta = read_metadata(path)
    if meta.get("arch") != SIF_ARCH:
        raise WeightsMismatchError(
            f"The weights {path!r} are for architecture {meta.get('arch')!r}, not the SIF-CNN-SR "
            f"U-Net ({SIF_ARCH!r}) that method={method!r} runs. Train SIF weights with "
            "`xfusion.methods.super_resolve.train_sif_sr(...)`."
        )
    wmethod = meta.get("method")
    if wmethod != method:
        raise WeightsMismatchError(
            f"The weights {path!r} were trained for method {wmethod!r}, but method={method!r} "
            f"was asked for. Pass method={wmethod!r}, or train {method} weights."
        )
    inputs = list(meta.get("inputs", []))
    nb = int(meta.get("nbands", 0))
    if nb != 1 + len(guide_names):
        raise WeightsMismatchError(
            f"The weights {path!r} take {nb} input channels (the coarse LST plus the guide "
            f"bands {inputs[1:]!r}), but the guide has {len(guide_names)} band(s) "
            f"{list(guide_names)!r}. Pass a guide with the bands the weights were trained on, "
            "in that order, or train weights for this guide."
        )
    wscale = int(meta.get("scale", scale))
    if wscale != scale:
        raise WeightsMismatchError(
            f"The weights {path!r} were trained for scale={wscale}, but the grids are nested by "
            f"scale={scale}. Use a guide {wscale}x finer than the coarse input, or train "
            f"weights for scale={scale}."
        )
    norm = meta.get("normalization") or {}
    mean = np.asarray(norm.get("mean", []), dtype=np.float64)
    std = np.asarray(norm.get("std", []), dtype=np.float64)
    if mean.shape != (nb,) or std.shape != (nb,):
        raise WeightsMismatchError(
            f"The weights {path!r} carry no usable normalisation statistics (found "
            f"{norm!r}); SIF weights must be saved with their per-channel mean and std. "
            "Re-train with train_sif_sr()."
        )
    return _SifWeights(path, sha or file_sha256(path), meta, mean, std,
                       int(meta.get("halo", 72)), int(meta.get("arch_params", {}).get("width", 16)))


def _sif_engine_config(engine: EngineConfig | None, device: str) -> EngineConfig:
    if engine is not None:
        return engine
    return EngineConfig(tile=512, device=device)


def _sif_predict(inp: _Inputs, w: _SifWeights, *, method: str, engine: EngineConfig) -> Any:
    """Lazy SIF-CNN-SR prediction ``(T, Hf, Wf)`` in the coarse input's units."""
    import dask.array as da

    from xfusion.engine.model import ModelSpec
    from xfusion.engine.run import map_model

    s = inp.grids.scale
    coarse, guide = _rechunk_nested(inp.coarse, inp.guide, s, multiple=8)
    mean, std = w.mean.astype(np.float32), w.std.astype(np.float32)
    zc = (coarse - mean[0]) / std[0]
    up = bicubic_upsample(zc, s, method=f"{method}.bicubic")  # (T, Hf, Wf)
    assert guide is not None
    zg = (guide - mean[1:, None, None]) / std[1:, None, None]
    nt = up.shape[0]
    if zg.shape[0] != nt:
        zg = da.broadcast_to(zg, (nt, *zg.shape[1:]), chunks=(up.chunks[0], *zg.chunks[1:])) \
            if _is_dask(zg) else np.broadcast_to(zg, (nt, *zg.shape[1:]))
    if _is_dask(up):
        x = da.concatenate([up[:, None], zg.rechunk((up.chunks[0], -1, *up.chunks[1:]))], axis=1)
    else:
        x = np.concatenate([up[:, None], np.asarray(zg)], axis=1)
    spec = ModelSpec(name=method, builder="xfusion.models.checkpoint:build_from_checkpoint",
                     kwargs={"path": w.path, "net": "model", "sha256": w.sha256}, halo=w.halo,
                     out_channels=1)
    y = map_model(x, spec, config=engine, method=f"super_resolve.{method}")
    return y[:, 0] * std[0] + mean[0]


# --------------------------------------------------------------------------------------------
# training (self-supervised, on patches of the cube)


@dataclass
class _TrainResult:
    best_epoch: int
    best_loss: float
    epochs_run: int
    history: list[dict[str, float]]
    seconds: float


def _recalibrate_bn(model: torch.nn.Module, batches: Sequence[tuple[Any, ...]],
                    device: torch.device) -> None:
    """Re-estimate BatchNorm running statistics with the current weights (cumulative average
    over ``batches``), so evaluation-mode outputs match the trained weights."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b[0].to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


def _train_loop(model: torch.nn.Module, *,
                train_batches: Callable[[int], Sequence[tuple[Any, ...]]],
                val_batches: Sequence[tuple[Any, ...]], loss_fn: Callable[..., torch.Tensor],
                epochs: int, lr: float, patience: int, device: torch.device, seed: int,
                verbose: bool, time_limit: float | None = None,
                freeze_bn_after: int | None = None) -> _TrainResult:
    """Adam with early stopping on the validation loss (best weights restored), for losses
    that :func:`xfusion.training.fit` cannot express (the SIF loss compares the output with
    the coarse observation through the PSF, and its texture with the guide's).

    ``train_batches(epoch)`` returns the epoch's batches (tuples of CPU tensors, the model
    input first); ``loss_fn(model, *batch)`` the loss. BatchNorm statistics are re-estimated
    after each epoch and frozen after ``freeze_bn_after`` epochs.
    """
    import copy

    import torch

    torch.manual_seed(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, best_epoch, bad = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        frozen = freeze_bn_after is not None and epoch > freeze_bn_after
        if frozen:
            for m in bns:
                m.eval()
        batches = train_batches(epoch)
        tl = 0.0
        for batch in batches:
            b = [t.to(device) for t in batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, *b)
            loss.backward()
            opt.step()
            tl += float(loss.detach())
        tl /= max(len(batches), 1)
        if not frozen:
            _recalibrate_bn(model, batches[:4], device)
        model.eval()
        if val_batches:
            with torch.no_grad():
                vl = float(np.mean([float(loss_fn(model, *[t.to(device) for t in vb]))
                                    for vb in val_batches]))
        else:
            vl = tl
        history.append({"epoch": epoch, "train_loss": tl, "val_loss": vl})
        if verbose:
            print(f"epoch {epoch}: train {tl:.4f} val {vl:.4f}")
        if vl < best:
            best, best_epoch, bad = vl, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    model.load_state_dict(best_state)
    model.eval().cpu()
    return _TrainResult(best_epoch, best, epoch, history, time.perf_counter() - t0)


def _space_to_depth_block(x: np.ndarray, *, scale: int) -> np.ndarray:
    """``(T, C, h s, w s)`` -> ``(T, C s s, h, w)``: the ``s x s`` phases as channels."""
    t, c, hf, wf = x.shape
    s = scale
    v = x.reshape(t, c, hf // s, s, wf // s, s).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(v.reshape(t, c * s * s, hf // s, wf // s))


def _depth_to_space(x: np.ndarray, scale: int) -> np.ndarray:
    """Inverse of :func:`_space_to_depth_block` for ``(N, C s s, h, w)``."""
    n, cs, h, w = x.shape
    s = scale
    c = cs // (s * s)
    v = x.reshape(n, c, s, s, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(v.reshape(n, c, h * s, w * s))


def _coarse_stack(inp: _Inputs) -> Any:
    """Everything the SIF loss needs on the COARSE grid, lazily: ``(T, 1 + (1 + G) s^2, Hc,
    Wc)`` = the coarse LST, then the ``s x s`` phases of bicubic(LST) and of each guide band
    (raw values: bicubic interpolation and the local NaN fill commute with z-scoring)."""
    import dask.array as da

    s = inp.grids.scale
    coarse, guide = _rechunk_nested(inp.coarse, inp.guide, s)
    up = bicubic_upsample(coarse, s, method="train_sif_sr.bicubic")
    nt = coarse.shape[0]
    assert guide is not None
    if guide.shape[0] != nt:
        guide = (da.broadcast_to(guide, (nt, *guide.shape[1:]), chunks=(coarse.chunks[0],
                                                                          *guide.chunks[1:]))
                 if _is_dask(guide) else np.broadcast_to(guide, (nt, *guide.shape[1:])))
    if _is_dask(up):
        fine = da.concatenate(
            [up[:, None], guide.rechunk((up.chunks[0], -1, *up.chunks[1:]))], axis=1)
        fine = fine.rechunk({1: -1})
        c = fine.shape[1]
        s2d = da.map_blocks(_space_to_depth_block, fine, scale=s, dtype=np.float32,
                            chunks=(fine.chunks[0], (c * s * s,), coarse.chunks[1],
                                    coarse.chunks[2]),
                            meta=np.empty((0, 0, 0, 0), np.float32))
        return da.concatenate([coarse[:, None].astype(np.float32), s2d], axis=1)
    fine = np.concatenate([up[:, None], np.asarray(guide, dtype=np.float32)], axis=1)
    return np.concatenate([np.asarray(coarse, dtype=np.float32)[:, None],
                           _space_to_depth_block(fine, scale=s)], axis=1)


def train_sif_sr(
    coarse: xr.DataArray,
    /,
    *,
    guide: xr.DataArray | xr.Dataset,
    out: str | os.PathLike[str],
    scale: int | None = None,
    method: Literal["sif-sr1", "sif-sr2"] = "sif-sr1",
    width: int = 16,
    global_skip: bool = True,
    epochs: int = 100,
    steps_per_epoch: int = 20,
    batch_size: int = 16,
    patch: int = 64,
    lr: float | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
    patience: int | None = None,
    val_fraction: float = 0.2,
    min_valid: float = 0.5,
    mtf: float = 0.1,
    texture_mtf: float = 0.25,
    seed: int = 0,
    device: str = "auto",
    time_limit: float | None = None,
    freeze_bn_after: int | Literal["auto"] | None = "auto",
    verbose: bool = False,
) -> str:
    """Train SIF-CNN-SR weights self-supervised on cube patches (no fine LST needed).

    The cube is viewed on the coarse grid (the coarse LST plus the ``scale x scale`` phases of
    the bicubic LST and of the guide bands as channels, built lazily), so patches drawn by
    :class:`xfusion.training.RandomPatchSampler` are always aligned with coarse pixels and
    read only the chunks they touch. The loss compares the PSF-degraded output with the
    observed coarse LST (Huber, 1 coarse px border dropped) and the output's texture with
    ``gamma`` x the first guide band's (4 Sobels for ``sif-sr1``, a high-pass for
    ``sif-sr2``). Validation patches come from a strip of the scene held out by
    :func:`xfusion.training.spatial_split`; training stops early on the validation loss and
    keeps the best weights. Normalisation statistics (:func:`xfusion.training.channel_stats`
    on the training patches) are saved with the weights.

    Parameters
    ----------
    coarse : xarray.DataArray
        Coarse LST (kelvin) on its native grid, optionally with ``time`` (each date is a
        training sample). NaN = unobserved (masked out of the loss).
    guide : xarray.DataArray or xarray.Dataset
        Fine guide bands on a grid nested in the coarse one; the first band (NDVI) drives the
        texture term.
    out : path
        Output ``.safetensors`` checkpoint (weights + normalisation statistics + metadata).
    scale : int, optional
        Fine pixels per coarse pixel (default: from the grids).
    method : {"sif-sr1", "sif-sr2"}
        Texture term and the paper's default hyper-parameters (lr 1e-3 / 1e-4, alpha 0.99 /
        0.5, gamma -0.5 / -0.25, patience 30).
    width : int, default 16
        U-Net width (16 is the paper's, 282,705 parameters).
    global_skip : bool, default True
        Add the bicubic LST to the network output (not in the paper; see
        :class:`xfusion.models.sifsr.SIFUNet`). Trained from one scene, the paper's network
        (False) under-fits the absolute LST level and ends up worse than bicubic on xfusion's
        synthetic scenes; with the skip it only learns the fine-scale correction.
    epochs, steps_per_epoch, batch_size : int
        Training length (random patches are redrawn every epoch).
    patch : int, default 64
        Patch size in fine pixels, rounded up to a multiple of ``scale`` and 8.
    lr, alpha, gamma, patience : optional
        Override the paper's values.
    val_fraction : float, default 0.2
        Share of the scene (a strip along its longer axis) kept for validation; 0 disables it.
    min_valid : float, default 0.5
        Minimum share of observed coarse pixels in a patch.
    mtf, texture_mtf : float
        PSF MTF at the coarse Nyquist for the degradation (0.1) and the SR2 high-pass (0.25).
    seed : int
        Seed of initialisation and patch sampling.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    time_limit : float, optional
        Stop after this many seconds (at the end of an epoch).
    freeze_bn_after : int, "auto" or None, default "auto"
        Epoch after which the BatchNorm statistics are frozen (the layers then normalise with
        their running statistics during training too, exactly as at inference). With small
        batches of patches whose mean LST differs a lot, batch statistics make the training
        objective differ from what the evaluation-mode network computes; freezing removes that
        gap. ``"auto"``: a third of ``epochs``; None: never (the paper's setting). Before
        freezing, the running statistics are re-estimated after every epoch.
    verbose : bool
        Print the losses per epoch.

    Returns
    -------
    str
        The path of the checkpoint.

    Raises
    ------
    NotEnoughDataError
        Scene smaller than a patch or than the train/validation split, or too few observed
        patches.
    GridMismatchError, CRSMismatchError
        Grids not nested by ``scale`` (see :func:`nested_grids`).
    """
    import torch

    from xfusion.models.sifsr import SIFUNet, sif_loss
    from xfusion.training import (
        GridPatchSampler,
        PatchSource,
        RandomPatchSampler,
        channel_stats,
        save_checkpoint,
        spatial_split,
    )

    if method not in SIF_DEFAULTS:
        raise InvalidParameterError(
            f"Unknown method={method!r} for train_sif_sr(). Choose one of {list(SIF_DEFAULTS)!r}."
        )
    overrides = {"lr": lr, "alpha": alpha, "gamma": gamma, "patience": patience}
    hp = {**SIF_DEFAULTS[method], **{k: v for k, v in overrides.items() if v is not None}}
    inp = _prepare(coarse, guide, scale, need_guide=True)
    s = inp.grids.scale
    ng = len(inp.guide_names)
    source = PatchSource(_coarse_stack(inp))
    step = 8 // math.gcd(8, s)
    pc = max(step, math.ceil(patch / s / step) * step)
    hc, wc = inp.grids.coarse.shape
    if hc < pc or wc < pc:
        raise NotEnoughDataError(
            f"The scene ({hc} x {wc} coarse px) is smaller than one training patch ({pc} coarse "
            f"px = {pc * s} fine px). Use a smaller patch= or a larger scene."
        )
    if val_fraction > 0:
        split = spatial_split((hc, wc), fraction=val_fraction, size=pc)
        if split is None:
            raise NotEnoughDataError(
                f"The scene ({hc} x {wc} coarse px) is too small for a spatial train/validation "
                f"split with patches of {pc} coarse px (val_fraction={val_fraction}). Use a "
                "smaller patch=, val_fraction=0 (no validation), or a larger scene."
            )
        train_region, val_region = split
    else:
        train_region, val_region = [(slice(0, hc), slice(0, wc))], []
    ss = s * s
    groups = [[0]] + [list(range(1 + ss * (1 + k), 1 + ss * (2 + k))) for k in range(ng)]
    grid_train = GridPatchSampler(source, size=pc, region=train_region, inputs=[0],
                                  min_valid=min_valid)
    if not grid_train.patches:
        raise NotEnoughDataError(
            f"No training patch has at least {100 * min_valid:.0f}% observed coarse pixels. "
            "Use dates with fewer clouds, a smaller patch= or a lower min_valid=."
        )
    stats = channel_stats(source, grid_train.patches, groups)
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    chan_mean = np.concatenate([[mean[0]], np.full(ss, mean[0]), np.repeat(mean[1:], ss)])
    chan_std = np.concatenate([[std[0]], np.full(ss, std[0]), np.repeat(std[1:], ss)])
    cm = chan_mean[:, None, None].astype(np.float32)
    csd = chan_std[:, None, None].astype(np.float32)

    def tensors(patches: Sequence[Any], flips: np.ndarray | None = None
                ) -> tuple[torch.Tensor, ...]:
        blocks = (np.stack([source.read(p) for p in patches]) - cm) / csd
        c = blocks[:, :1]
        fine = _depth_to_space(blocks[:, 1:], s)  # (N, 1 + G, P, P)
        cmask = np.isfinite(c)
        fmask = np.isfinite(fine).all(axis=1, keepdims=True)
        if flips is not None:
            for k in range(len(patches)):
                for ax, f in ((-1, flips[k, 0]), (-2, flips[k, 1])):
                    if f:
                        for a in (c, fine, cmask, fmask):
                            a[k] = np.flip(a[k], ax).copy()
        c = np.where(cmask, c, 0.0)
        fine = np.where(np.isfinite(fine), fine, 0.0)
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if a.dtype !=
                                                           bool else bool))
                     for a in (fine, c, cmask, fmask))

    def train_batches(epoch: int) -> list[tuple[torch.Tensor, ...]]:
        sampler = RandomPatchSampler(source, size=pc, length=steps_per_epoch * batch_size,
                                     region=train_region, inputs=[0], min_valid=min_valid,
                                     seed=seed * 100_003 + epoch)
        rng = np.random.default_rng([seed, epoch])
        pats = sampler.patches
        flips = rng.integers(0, 2, size=(len(pats), 2)).astype(bool)
        return [tensors(pats[k:k + batch_size], flips[k:k + batch_size])
                for k in range(0, len(pats), batch_size)]

    val_pats = (GridPatchSampler(source, size=pc, region=val_region, inputs=[0],
                                 min_valid=min_valid).patches if val_region else [])
    val_batches = [tensors(val_pats[k:k + batch_size])
                   for k in range(0, len(val_pats), batch_size)]

    def loss_fn(model: torch.nn.Module, xb: torch.Tensor, cb: torch.Tensor, cmb: torch.Tensor,
                fmb: torch.Tensor) -> torch.Tensor:
        sr = model(xb)
        return sif_loss(sr, cb, xb[:, 1:2], scale=s, alpha=hp["alpha"], gamma=hp["gamma"],
                        texture=hp["texture"], mtf=mtf, mtf_texture=texture_mtf,
                        coarse_mask=cmb, fine_mask=fmb)

    torch.manual_seed(seed)
    model = SIFUNet(in_channels=1 + ng, width=width, global_skip=global_skip)
    res = _train_loop(model, train_batches=train_batches, val_batches=val_batches,
                      loss_fn=loss_fn, epochs=epochs, lr=hp["lr"], patience=hp["patience"],
                      device=resolve_device(device), seed=seed, verbose=verbose,
                      time_limit=time_limit,
                      freeze_bn_after=(max(1, epochs // 3) if freeze_bn_after == "auto"
                                       else freeze_bn_after))
    name = str(coarse.name) if coarse.name is not None else "lst"
    meta = {
        "arch": SIF_ARCH, "nbands": 1 + ng,
        "arch_params": {"width": int(width), "align_corners": False,
                        "global_skip": bool(global_skip)},
        "method": method, "scale": s, "halo": int(model.halo),
        "inputs": [name, *inp.guide_names], "outputs": [name],
        "units": str(coarse.attrs.get("units", "")),
        "normalization": {"mean": mean.tolist(), "std": std.tolist(), "count": list(stats.count),
                          "note": "z-score per input channel (LST from the coarse pixels of "
                                  "the training patches); channel 0 also de-normalises the "
                                  "output"},
        "training": {
            "loss": {"alpha": hp["alpha"], "gamma": hp["gamma"], "texture": hp["texture"],
                     "mtf": mtf, "texture_mtf": texture_mtf, "huber_delta": 1.0},
            "lr": hp["lr"], "batch_size": batch_size, "patch": pc * s, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "patience": hp["patience"], "seed": seed,
            "val_fraction": val_fraction, "min_valid": min_valid,
            "freeze_bn_after": freeze_bn_after, "best_epoch": res.best_epoch,
            "best_val_loss": res.best_loss, "epochs_run": res.epochs_run,
            "seconds": round(res.seconds, 2), "n_val_patches": len(val_pats),
            "history": res.history,
        },
    }
    save_checkpoint(out, {"model": model}, meta)
    return os.fspath(out)

# --------------------------------------------------------------------------------------------
# public entry point


_PARAMS: dict[str, tuple[str, ...]] = {
    "sif-sr1": ("train",),
    "sif-sr2": ("train",),
    "bicubic": (),
    "dms": ("window", "homogeneity", "std_features", "residual", "aggregation", "regressor",
            "n_estimators", "max_depth", "min_samples_leaf", "min_samples", "seed"),
    "harmonize": ("uncertainty", "passes", "dropout", "seed", "halo", "blend", "overlap",
                  "tile", "bands"),
}


def _check_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    p = dict(params or {})
    unknown = sorted(set(p) - set(_PARAMS[method]))
    if unknown:
        raise InvalidParameterError(
            f"Unknown params {unknown!r} for method={method!r}. Valid keys: "
            f"{sorted(_PARAMS[method])!r}."
        )
    return p


def _sr_one(var: xr.DataArray, *, guide: Any, scale: int | None, method: str, weights: Any,
            params: dict[str, Any], engine: EngineConfig | None, device: str,
            name: Hashable | None) -> xr.DataArray:
    attrs = dict(var.attrs)
    for k in ("nodata", "_FillValue", "missing_value"):
        attrs.pop(k, None)
    if method == "bicubic":
        inp = _prepare(var, guide, scale, need_guide=False)
        coarse, _ = _rechunk_nested(inp.coarse, None, inp.grids.scale)
        data = bicubic_upsample(coarse, inp.grids.scale, method="super_resolve.bicubic")
    elif method == "dms":
        from xfusion.methods.dms import _dms_predict

        inp = _prepare(var, guide, scale, need_guide=True)
        data = _dms_predict(inp, **params)
    else:
        inp = _prepare(var, guide, scale, need_guide=True)
        if weights is None:
            raise InvalidParameterError(
                f"method={method!r} needs weights=: the path of a checkpoint trained with "
                "`xfusion.methods.super_resolve.train_sif_sr(coarse, guide=..., out=...)` "
                "(upstream SIF weights cannot be used: their normalisation statistics were "
                "never published). Or pass weights='train' to train self-supervised on this "
                "scene first (reads the data; options via params={'train': {...}})."
            )
        if isinstance(weights, str) and weights == "train":
            import tempfile

            folder = tempfile.mkdtemp(prefix="xfusion-sif-")
            weights = train_sif_sr(var, guide=guide, scale=scale, method=method,  # type: ignore[arg-type]
                                   out=os.path.join(folder, f"{method}.safetensors"),
                                   device=device, **dict(params.get("train") or {}))
        w = _load_sif_weights(weights, method=method, guide_names=inp.guide_names,
                              scale=inp.grids.scale)
        data = _sif_predict(inp, w, method=method,
                            engine=_sif_engine_config(engine, device))
        attrs["weights"] = os.path.basename(w.path)
    attrs["super_resolve_method"] = method
    attrs["scale"] = inp.grids.scale
    return _wrap(data, inp, name=name if name is not None else var.name, attrs=attrs)


def super_resolve(
    obj: xr.DataArray | xr.Dataset,
    /,
    *,
    guide: xr.DataArray | xr.Dataset | None = None,
    scale: int | None = None,
    method: SRMethod = "sif-sr1",
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    params: Mapping[str, Any] | None = None,
    engine: EngineConfig | None = None,
    device: str = "auto",
    name: Hashable | None = None,
) -> xr.DataArray | xr.Dataset:
    """Super-resolve coarse data onto a fine guide grid (LST sharpening, L8 -> S2).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        Coarse input on its native grid, e.g. MODIS LST in kelvin, with the CRS's spatial
        dims and optionally ``time``. A Dataset is super-resolved variable by variable
        (``"harmonize"``: its variables are the Landsat bands, used together).
    guide : xarray.DataArray or xarray.Dataset, optional
        Fine bands on a grid nested in the coarse one by ``scale`` (NDVI at 250 m for MODIS
        LST at 1 km): a DataArray (one band, or with a band dim) or a Dataset (one variable per
        band), optionally with ``time`` (matched to the coarse dates). Required by
        ``"sif-sr*"`` and ``"dms"``; for ``"bicubic"`` and ``"harmonize"`` it only sets the
        output grid (``"harmonize"``: it is the pan band when the weights use one).
    scale : int, optional
        Fine pixels per coarse pixel; default: the pixel-size ratio of the grids (required
        without a guide).
    method : {"sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize"}, default "sif-sr1"
        See the module docstring.
    weights : path, registered name or list of paths, optional
        Checkpoint(s) of the learned methods. ``"sif-sr*"``: from :func:`train_sif_sr`, or
        ``"train"`` to train on this scene first (reads the data). ``"harmonize"``: from
        :func:`xfusion.methods.harmonize.train_harmonizer`; several files (or a file with
        several members) form a deep ensemble.
    params : mapping, optional
        Method options: ``"dms"``: see :func:`xfusion.methods.dms.dms`; ``"harmonize"``:
        ``uncertainty`` (None, ``"ensemble"``, ``"mc-dropout"``), ``passes``, ``dropout``,
        ``seed``, ``halo``, ``blend``, ``overlap``, ``tile``, ``bands``; ``"sif-sr*"``:
        ``train`` (keyword arguments of :func:`train_sif_sr` with ``weights="train"``).
    engine : xfusion.engine.EngineConfig, optional
        Tiling, batching and device of the neural methods (default: 512-px tiles).
    device : str, default "auto"
        Device of the neural methods when ``engine`` is not given.
    name : hashable, optional
        Name of the output DataArray (default: the input's).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Same type as ``obj``, on the output grid (the guide's grid over the coarse footprint;
        coordinates and ``spatial_ref`` from the GeoBox), dask-backed when the inputs are,
        float32, NaN where unobserved. ``"harmonize"`` returns the Sentinel-2-like bands (and
        ``<band>_std`` with uncertainty).

    Raises
    ------
    GridMismatchError, CRSMismatchError
        Grids not nested by ``scale``, or a guide that does not cover the coarse input.
    WeightsMismatchError
        Weights for another architecture, method, scale or number of guide bands.
    WeightsNotFoundError, CheckpointError
        Missing or damaged weights file.
    InvalidParameterError
        Unknown method or params, a missing guide or weights.

    See Also
    --------
    train_sif_sr : train SIF-CNN-SR weights (self-supervised).
    xfusion.methods.dms.dms : the data-mining sharpener.
    xfusion.methods.harmonize.harmonize : Landsat-8 -> Sentinel-2 harmonization.
    coarse_consistency : RMSE of the aggregated output against the coarse input.

    Notes
    -----
    Halo: bicubic 4 coarse px; SIF U-Net 72 fine px (receptive field 140 px); DMS 1 coarse
    px. Memory is O(chunk): every step is a block-wise map with that halo. The SIF U-Net
    pools three times, so its output depends on the 8-px phase of a tile; coarse chunks are
    rechunked so fine chunks are multiples of 8 px, which makes chunked and unchunked results
    agree to float rounding in the interior (tiles at the far image edge may differ by a few
    millikelvin).

    References
    ----------
    Ait-Bachir R. et al., "Land Surface Temperature Super-Resolution with a
    Scale-Invariance-Free Neural Approach: Application to MODIS", IEEE JSTARS (2025).
    Gao F., Kustas W.P., Anderson M.C., "A data mining approach for sharpening thermal
    satellite imagery over land", Remote Sensing 4:3287-3319 (2012).

    Examples
    --------
    >>> from xfusion.testing import synthetic_scene
    >>> scene, modis = synthetic_scene((64, 64), times=1, coarse_factor=4, ndvi=True,
    ...                                coarse_native=True)
    >>> lst = modis["coarse"].isel(time=0)
    >>> ndvi = scene["ndvi"].isel(time=0)
    >>> out = super_resolve(lst, guide=ndvi, method="bicubic")
    >>> out.shape, out.odc.geobox == ndvi.odc.geobox
    ((64, 64), True)
    """
    if method not in SR_METHODS:
        raise InvalidParameterError(
            f"Unknown method={method!r} for super_resolve(). Choose one of {list(SR_METHODS)!r}."
        )
    p = _check_params(method, params)
    if engine is not None and not isinstance(engine, EngineConfig):
        raise InvalidParameterError(
            f"engine= must be an xfusion.engine.EngineConfig, found {type(engine).__name__}."
        )
    if method == "harmonize":
        from xfusion.methods.harmonize import harmonize

        if weights is None:
            raise InvalidParameterError(
                "method='harmonize' needs weights=: checkpoint(s) from "
                "`xfusion.methods.harmonize.train_harmonizer(landsat, sentinel2, out=...)`."
            )
        ds = obj if isinstance(obj, xr.Dataset) else obj.to_dataset(
            dim=_other_dims(obj, spatial_dims(obj))[0]) if len(obj.dims) > 2 else \
            obj.to_dataset(name=obj.name or "band")
        return harmonize(ds, weights=weights, guide=guide, scale=scale, engine=engine,
                         device=device, **p)
    if isinstance(obj, xr.Dataset):
        if not obj.data_vars:
            raise InvalidParameterError("The input Dataset has no data variables.")
        outs = {n: _sr_one(obj[n], guide=guide, scale=scale, method=method, weights=weights,
                           params=p, engine=engine, device=device, name=n)
                for n in obj.data_vars}
        return xr.Dataset(outs, attrs=dict(obj.attrs))
    if not isinstance(obj, xr.DataArray):
        raise InvalidParameterError(
            f"super_resolve() takes an xarray DataArray or Dataset, found {type(obj).__name__}."
        )
    return _sr_one(obj, guide=guide, scale=scale, method=method, weights=weights, params=p,
                   engine=engine, device=device, name=name)


# --------------------------------------------------------------------------------------------
# evaluation on synthetic scenes with a known fine LST


def evaluate_synthetic(
    *,
    size: int = 256,
    scale: int = 4,
    seeds: Sequence[int] = (0,),
    date: str = "2021-07-15T10:30",
    methods: Sequence[str] = ("bicubic", "dms", "sif-sr1"),
    train: Mapping[str, Any] | None = None,
    noise: float = 0.2,
    device: str = "auto",
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Compare super-resolution methods on synthetic LST scenes with a known fine truth.

    Each seed gives a scene (:func:`xfusion.testing.synthetic_scene`, ``kind="lst"`` with
    NDVI): the coarse LST (PSF-blurred block means + Gaussian ``noise``, no bias, no clouds)
    is super-resolved with the NDVI as guide. SIF methods are first trained self-supervised
    on the scene itself (``train``: keyword arguments of :func:`train_sif_sr`; the truth is
    never used). Reads and computes everything (evaluation helper, not lazy).

    Returns
    -------
    dict
        ``{method: {"rmse", "gradient_rmse", "consistency_mean", "consistency_power",
        "seconds", "train_seconds"}}`` averaged over the seeds (RMSE and gradient RMSE
        against the truth in kelvin; consistency: RMSE of the aggregated output against
        the coarse input; ``seconds``: inference time).
    """
    import tempfile

    from xfusion.testing import synthetic_scene

    folder = os.fspath(workdir) if workdir is not None else tempfile.mkdtemp(prefix="xfusion-")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for seed in seeds:
        sc, modis = synthetic_scene((size, size), times=[date], coarse_factor=scale, ndvi=True,
                                    coarse_native=True, bias=0.0, noise=noise,
                                    coarse_cloud_fraction=0.0, seed=int(seed))
        lst = modis["coarse"].isel(time=0).rename("lst").load()
        ndvi = sc["ndvi"].isel(time=0).load()
        truth = sc["truth"].isel(time=0).values
        for m in methods:
            weights = None
            t_train = 0.0
            if m in SIF_DEFAULTS:
                t0 = time.perf_counter()
                weights = train_sif_sr(lst, guide=ndvi, method=m,  # type: ignore[arg-type]
                                       out=os.path.join(folder, f"{m}-{seed}.safetensors"),
                                       device=device, **dict(train or {}))
                t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = super_resolve(lst, guide=ndvi, method=m, weights=weights,  # type: ignore[arg-type]
                                device=device).compute()
            secs = time.perf_counter() - t0
            pred = out.values
            rows[m].append({
                "rmse": float(np.sqrt(np.nanmean((pred - truth) ** 2))),
                "gradient_rmse": gradient_rmse(pred, truth),
                "consistency_mean": float(coarse_consistency(out, lst, scale=scale)),
                "consistency_power": float(coarse_consistency(out, lst, scale=scale,
                                                              how="power")),
                "seconds": secs, "train_seconds": t_train,
            })
    return {m: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for m, rs in rows.items()}


def format_evaluation(res: Mapping[str, Mapping[str, float]]) -> str:
    """Plain-text table of :func:`evaluate_synthetic`'s result."""
    head = (f"{'method':<10} {'RMSE K':>8} {'grad RMSE':>10} {'consist. mean':>14} "
            f"{'consist. T^4':>13} {'infer s':>8} {'train s':>8}")
    lines = [head, "-" * len(head)]
    for m, r in res.items():
        lines.append(f"{m:<10} {r['rmse']:>8.3f} {r['gradient_rmse']:>10.3f} "
                     f"{r['consistency_mean']:>14.3f} {r['consistency_power']:>13.3f} "
                     f"{r['seconds']:>8.2f} {r['train_seconds']:>8.1f}")
    return "\n".join(lines)
