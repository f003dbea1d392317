"""Fusion-cube builders for users with local files or in-memory arrays.

* :func:`from_geotiffs` reads dated GeoTIFFs (fine, coarse, optional guides) into one cube on
  the fine pixel grid, reprojecting coarse files onto it lazily with odc-geo.
* :func:`from_numpy` wraps numpy or dask arrays onto an odc-geo ``GeoBox``.
* :func:`mark_observed` computes the ``observed_<name>`` coordinates (an explicit, eager pass)
  for cubes built elsewhere.

Every builder returns the cube contract of :mod:`xfusion.cube.validate`: a ``time`` dimension,
the spatial dims of the CRS (``y, x`` or ``latitude, longitude``), a ``spatial_ref``
coordinate, float variables where NaN means unobserved, and boolean ``observed_<name>``
coordinates along ``time``.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import xarray as xr

from xfusion.cube.validate import TIME, get_nodata, require_vars, spatial_dims
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    MissingNodataError,
    NoOverlapError,
    RasterReadError,
    TimeAxisError,
)

__all__ = ["RasterReadError", "combine", "from_geotiffs", "from_numpy", "mark_observed"]

DateLike: TypeAlias = str | _dt.date | np.datetime64
"""A date: ``"YYYY-MM-DD"`` (any ISO 8601 string), :class:`datetime.date`/``datetime`` or
:class:`numpy.datetime64`."""

PathLike: TypeAlias = str | os.PathLike[str]
DatedPaths: TypeAlias = Mapping[Any, PathLike] | Sequence[tuple[Any, PathLike]]
"""Date → GeoTIFF path, as a mapping or a sequence of ``(date, path)`` pairs."""

Chunks: TypeAlias = int | tuple[int, int] | Mapping[str, int] | str | None

_DEFAULT_AUTO_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# small helpers


def to_datetime64(value: Any, *, what: str = "date") -> np.datetime64:
    """Return ``value`` as ``numpy.datetime64[ns]`` with :func:`xfusion._dates.parse_date`
    (ISO, ``YYYYMMDD``, ``YYYY-DDD``, date/datetime objects; 1972-2100); raise
    :class:`TimeAxisError` otherwise."""
    from xfusion._dates import parse_date

    return parse_date(value, what=what)


def _fmt_date(t: np.datetime64) -> str:
    s = str(np.datetime64(t, "s"))
    return s[:10] if s.endswith("T00:00:00") else s


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _dated_items(spec: Any, role: str) -> list[tuple[np.datetime64, str]]:
    """Normalise a date → path mapping (or sequence of pairs) into sorted ``(date, path)``."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        raw = list(spec.items())
    elif isinstance(spec, (str, os.PathLike)):
        raise InvalidParameterError(
            f"`{role}=` must map dates to GeoTIFF paths, found the single path {str(spec)!r}. "
            f"Pass e.g. `{role}={{'2020-03-08': {str(spec)!r}}}`."
        )
    else:
        try:
            raw = [tuple(p) for p in spec]
        except TypeError:
            raise InvalidParameterError(
                f"`{role}=` must be a mapping date -> path or a sequence of (date, path) pairs, "
                f"found {type(spec).__name__}."
            ) from None
        bad = [p for p in raw if len(p) != 2]
        if bad:
            raise InvalidParameterError(
                f"`{role}=` must hold (date, path) pairs, found {bad[0]!r}. "
                f"Pass e.g. `{role}=[('2020-03-08', 'a.tif'), ('2020-03-17', 'b.tif')]`."
            )
    items: list[tuple[np.datetime64, str]] = []
    seen: dict[np.datetime64, str] = {}
    for date, path in raw:
        t = to_datetime64(date, what=f"{role} date")
        p = os.fspath(path)
        if t in seen:
            raise TimeAxisError(
                f"Duplicate {role} date {_fmt_date(t)!r}: both {seen[t]!r} and {p!r} are given "
                "for it. Keep one file per date (mosaic same-day scenes first, e.g. with "
                "`gdalbuildvrt`)."
            )
        seen[t] = p
        items.append((t, p))
    items.sort(key=lambda tp: tp[0])
    return items


class _RasterMeta:
    """What a GeoTIFF header says (read once with rasterio; no pixels)."""

    def __init__(self, path: str, role: str, date: np.datetime64) -> None:
        import rasterio
        from odc.geo.geobox import GeoBox

        self.path, self.role, self.date = path, role, date
        try:
            with rasterio.open(path) as src:
                self.count = int(src.count)
                self.dtype = np.dtype(src.dtypes[0])
                self.nodata = src.nodata
                self.descriptions = tuple(src.descriptions)
                self.scales = tuple(float(s) for s in src.scales)
                self.offsets = tuple(float(o) for o in src.offsets)
                if src.crs is None:
                    raise RasterReadError(
                        f"The {role} GeoTIFF for {_fmt_date(date)} has no CRS: {path!r}. "
                        "Set one with `gdal_edit.py -a_srs EPSG:XXXX FILE` or "
                        "`rio edit-info --crs EPSG:XXXX FILE`."
                    )
                self.geobox = GeoBox(src.shape, src.transform, src.crs)
        except RasterReadError:
            raise
        except (OSError, rasterio.errors.RasterioError) as err:
            raise RasterReadError(
                f"Cannot read the {role} GeoTIFF for {_fmt_date(date)}: {path!r} ({err}). "
                "Check that the path exists and is a raster GDAL can open."
            ) from err


def _band_names(name: str, meta: _RasterMeta) -> list[str]:
    if meta.count == 1:
        return [name]
    descs = [re.sub(r"\W+", "_", d.strip()).strip("_") if d else "" for d in meta.descriptions]
    if all(descs) and len(set(descs)) == len(descs):
        return [f"{name}_{d}" for d in descs]
    return [f"{name}_b{i}" for i in range(1, meta.count + 1)]


def _resolve_chunks(chunks: Chunks, gbox: Any) -> tuple[int, int] | None:
    """Spatial chunk sizes ``(cy, cx)`` from the user's ``chunks=``, or None for numpy."""
    if chunks is None:
        return None
    ydim, xdim = gbox.dims
    ny, nx = gbox.shape
    if isinstance(chunks, str):
        if chunks != "auto":
            raise InvalidParameterError(
                f"Unknown chunks={chunks!r}; pass an int (pixels per side), a (y, x) tuple, a "
                f"mapping such as {{{ydim!r}: 1024, {xdim!r}: 1024}}, 'auto' or None."
            )
        return min(_DEFAULT_AUTO_CHUNK, ny), min(_DEFAULT_AUTO_CHUNK, nx)
    if isinstance(chunks, bool):
        raise InvalidParameterError(f"chunks must be an int, a tuple or a mapping, not {chunks!r}.")
    if isinstance(chunks, int):
        cy = cx = chunks
    elif isinstance(chunks, Mapping):
        aliases = {ydim: 0, xdim: 1, "y": 0, "x": 1, "latitude": 0, "longitude": 1}
        sizes: list[int] = [ny, nx]
        for key, val in chunks.items():
            if key == TIME or key == "band":
                continue
            if key not in aliases:
                raise InvalidParameterError(
                    f"Unknown dimension {key!r} in chunks={dict(chunks)!r}; the cube's spatial "
                    f"dims are {(ydim, xdim)!r} (time is chunked one date per chunk)."
                )
            sizes[aliases[key]] = ny if val in (-1, None) else int(val)
        cy, cx = sizes
    else:
        try:
            cy, cx = (int(v) for v in chunks)
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"chunks={chunks!r} is not understood; pass an int, a (y, x) tuple or a mapping."
            ) from None
    if cy < 1 or cx < 1:
        raise InvalidParameterError(f"Chunk sizes must be positive, found {(cy, cx)!r}.")
    return min(cy, ny), min(cx, nx)


def _crs_str(crs: Any) -> str:
    epsg = getattr(crs, "epsg", None)
    return f"EPSG:{epsg}" if epsg else str(crs)


def _same_geobox(a: Any, b: Any) -> bool:
    if a.crs != b.crs or tuple(a.shape) != tuple(b.shape):
        return False
    tol = 1e-6 * max(abs(a.affine.a), abs(a.affine.e), 1e-12)
    return bool(np.allclose(tuple(a.affine)[:6], tuple(b.affine)[:6], rtol=0, atol=tol))


def _check_overlap(fine: _RasterMeta, other: _RasterMeta) -> None:
    fg, og = fine.geobox, other.geobox
    try:
        area = fg.geographic_extent.intersection(og.geographic_extent).area
    except Exception:
        return
    if area > 0:
        return
    fb, ob = fg.boundingbox, og.boundingbox
    raise NoOverlapError(
        f"The {other.role} GeoTIFF for {_fmt_date(other.date)} ({other.path!r}) does not overlap "
        f"the fine grid. Fine bounds {tuple(round(v, 6) for v in fb)!r} in {_crs_str(fg.crs)}; "
        f"{other.role} bounds {tuple(round(v, 6) for v in ob)!r} in {_crs_str(og.crs)}. "
        "Check that both "
        "files cover the same area and that their CRS is declared correctly."
    )


def _masked_float(raw: Any, meta: _RasterMeta, nodata: Any) -> Any:
    """Nodata → NaN, declared scale/offset applied, float32 (numpy or dask, stays lazy)."""
    xp: Any
    if _is_dask(raw):
        import dask.array as xp
    else:
        xp = np
    out = raw.astype(np.float32)
    nd = meta.nodata if nodata is None else nodata
    if nd is not None and not np.isnan(nd):
        nd_raw = np.asarray(nd).astype(raw.dtype)
        if nd_raw == nd:  # a nodata value the dtype cannot hold marks no pixel
            out = xp.where(raw == nd_raw, np.float32(np.nan), out)
    scales = np.array(meta.scales, dtype=np.float32).reshape(-1, 1, 1)
    offsets = np.array(meta.offsets, dtype=np.float32).reshape(-1, 1, 1)
    if np.any(scales != 1) or np.any(offsets != 0):
        out = out * scales + offsets
    return out


def _open(meta: _RasterMeta, chunks: tuple[int, int] | None) -> xr.DataArray:
    import rioxarray

    try:
        if chunks is None:
            da_ = rioxarray.open_rasterio(meta.path, masked=False, mask_and_scale=False)
            return da_.load()
        from xfusion.cube.raster import open_guarded

        return open_guarded(
            meta.path,
            chunks={"band": 1, "y": chunks[0], "x": chunks[1]},
            what=f"{meta.role} GeoTIFF for {_fmt_date(meta.date)}",
            masked=False,
            mask_and_scale=False,
        )
    except OSError as err:
        raise RasterReadError(
            f"Cannot read the {meta.role} GeoTIFF for {_fmt_date(meta.date)}: {meta.path!r} "
            f"({err})."
        ) from err


def _read_on_grid(
    meta: _RasterMeta,
    gbox: Any,
    chunks: tuple[int, int] | None,
    resampling: str,
    nodata: Any,
) -> list[Any]:
    """One float32 2-D array per band on ``gbox`` (reprojected when the file's grid differs)."""
    raw = _open(meta, chunks)
    data = _masked_float(raw.data, meta, nodata)
    if _same_geobox(meta.geobox, gbox):
        return [data[b] for b in range(meta.count)]
    from odc.geo.xr import xr_reproject

    src = raw.copy(data=data)
    src.attrs = {}
    src.encoding = {}
    kw: dict[str, Any] = {}
    if chunks is not None:
        kw["chunks"] = chunks
    out = xr_reproject(
        src,
        gbox,
        resampling=resampling,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        dtype="float32",
        **kw,
    )
    return [out.data[b] for b in range(meta.count)]


def _stack_time(
    arrays: Mapping[np.datetime64, Any],
    times: np.ndarray,
    shape: tuple[int, int],
    chunks: tuple[int, int] | None,
) -> Any:
    if chunks is None:
        empty = np.full(shape, np.nan, dtype=np.float32)
        return np.stack([arrays.get(t, empty) for t in times])
    import dask.array as da

    parts = [
        arrays[t] if t in arrays else da.full(shape, np.nan, dtype=np.float32, chunks=chunks)
        for t in times
    ]
    return da.stack(parts).rechunk((1, *chunks))


def _grid_coords(gbox: Any, times: np.ndarray | None) -> dict[Hashable, Any]:
    from odc.geo.xr import xr_coords

    coords: dict[Hashable, Any] = dict(xr_coords(gbox))
    if times is not None:
        coords[TIME] = times
    return coords


def _variable(data: Any, gbox: Any, *, time: bool, attrs: Mapping[str, Any],
              encoding: Mapping[str, Any] | None = None) -> xr.Variable:  # fmt: skip
    dims = (TIME, *gbox.dims) if time else tuple(gbox.dims)
    var = xr.Variable(dims, data, attrs=dict(attrs))
    var.encoding.update(encoding or {})
    var.encoding["grid_mapping"] = "spatial_ref"
    return var


def _integer_encoding(metas: list[_RasterMeta], gbox: Any, nodata: Any) -> dict[str, Any]:
    """``{"dtype", "_FillValue"}`` of integer files read as they are, else ``{}``.

    Like xarray's CF decoding (and ``rioxarray.open_rasterio(masked=True)``), the values become
    float32 with NaN gaps and the encoding records how the files stored them, so that writers
    and methods whose output follows the input (``starfm``) can give the integers back. Only
    when every file of the role has one integer dtype and one nodata value that dtype holds,
    no scale/offset, and sits on the cube's grid (resampled values are no longer integers).
    """
    dtypes = {m.dtype for m in metas}
    fills = {m.nodata if nodata is None else nodata for m in metas}
    if len(dtypes) != 1 or len(fills) != 1:
        return {}
    dtype, fill = dtypes.pop(), fills.pop()
    if not np.issubdtype(dtype, np.integer) or fill is None:
        return {}
    info = np.iinfo(dtype)
    fill = float(fill)
    if not (np.isfinite(fill) and fill.is_integer() and info.min <= fill <= info.max):
        return {}
    for m in metas:
        if any(s != 1 for s in m.scales) or any(o != 0 for o in m.offsets):
            return {}
        if not _same_geobox(m.geobox, gbox):
            return {}
    return {"dtype": np.dtype(dtype), "_FillValue": dtype.type(fill)}


# --------------------------------------------------------------------------------------------
# public builders


def from_geotiffs(
    *,
    fine: DatedPaths,
    coarse: DatedPaths,
    guides: Mapping[str, DatedPaths | PathLike] | None = None,
    fine_name: str = "fine",
    coarse_name: str = "coarse",
    chunks: Chunks = None,
    resampling: str = "bilinear",
    nodata: float | None = None,
) -> xr.Dataset:
    """Build a fusion cube from dated fine and coarse GeoTIFFs.

    The cube lives on the pixel grid of the fine files. Coarse (and guide) files may use their
    own grid and CRS; they are reprojected onto the fine ``GeoBox`` with odc-geo
    (:func:`odc.geo.xr.xr_reproject`), lazily when ``chunks`` is given. Files already on the
    fine grid are used as they are, without resampling.

    Parameters
    ----------
    fine, coarse : mapping or sequence of (date, path)
        Date → GeoTIFF path, e.g. ``{"2020-03-08": "landsat_068.tif"}``. Dates may be
        ``"YYYY-MM-DD"`` strings, ``datetime.date``/``datetime`` or ``numpy.datetime64``.
        All fine files must share one grid. Fine and coarse files must have the same number
        of bands (paired by position).
    guides : mapping of str to (mapping or sequence of (date, path)) or path, optional
        Extra variables, e.g. ``{"ndvi": {"2020-03-08": "ndvi.tif"}}``. A dated guide is
        stacked along ``time`` like ``fine``; a single path is a static guide with no time
        dimension. Guides are reprojected onto the fine grid when needed.
    fine_name, coarse_name : str
        Variable names of the fine and coarse data (see Notes for multi-band files).
    chunks : int, tuple of int, mapping, "auto" or None
        Spatial dask chunks: ``N`` (``N`` by ``N`` pixels), ``(ny, nx)``, a mapping of spatial dim
        names to sizes, or ``"auto"`` (2048 pixels, capped by the image). Time is always one
        date per chunk. ``None`` (default) reads every pixel now and returns a numpy-backed
        cube; give ``chunks`` for a lazy dask-backed cube.
    resampling : str
        Resampling used to bring coarse and guide files onto the fine grid (any GDAL/rasterio
        name: ``"bilinear"``, ``"nearest"``, ``"cubic"``, ``"average"``...).
    nodata : float, optional
        Nodata value of every file, overriding the one the files declare. Pixels equal to it
        (and NaN pixels) become NaN.

    Returns
    -------
    xarray.Dataset
        Dims ``time`` (the sorted union of all dates) and the spatial dims of the fine CRS
        (``y, x``, or ``latitude, longitude`` for a geographic CRS); a ``spatial_ref``
        coordinate; float32 variables, NaN where unobserved and at dates without a file; a
        boolean coordinate ``observed_<var>`` along ``time`` per dated variable, True where a
        file was given for that date. Variables read from integer files with a nodata value
        (on the fine grid, no scale/offset) keep how they were stored in their ``encoding``
        (``{"dtype": int16, "_FillValue": -9999}``, as xarray's CF decoding does): methods
        whose output follows the input's dtype (:func:`xfusion.starfm`) give such integers
        back, and :func:`xfusion.io.to_zarr` stores them so.

        .. versionchanged:: 0.1
           The ``encoding`` of integer files.

    Raises
    ------
    RasterReadError
        A path cannot be opened as a raster, or has no CRS (the message names the path).
    GridMismatchError
        The fine files are not on one grid (:class:`CRSMismatchError` for different CRSs).
    NoOverlapError
        A coarse or guide file does not overlap the fine grid (both bounds in the message).
    TimeAxisError
        A date cannot be parsed, or two files of one role share a date.
    InvalidParameterError
        Empty ``fine``/``coarse``, different band counts, bad ``chunks``.

    See Also
    --------
    from_numpy : the same cube from in-memory arrays.
    mark_observed : compute ``observed_<var>`` on cubes built elsewhere.

    Notes
    -----
    A single-band file gives one variable named ``fine_name`` (``coarse_name``). A multi-band
    file gives one variable per band, named ``<name>_<description>`` when every band has a
    distinct description (non-word characters replaced by ``_``), else ``<name>_b1``,
    ``<name>_b2``... Band scale/offset declared in the file are applied. Coarse bands are
    paired with fine bands by position, whatever their names.

    Examples
    --------
    >>> ds = from_geotiffs(  # doctest: +SKIP
    ...     fine={"2020-03-08": "L_068.tif", "2020-04-02": "L_093.tif"},
    ...     coarse={"2020-03-08": "M_068.tif", "2020-03-17": "M_077.tif"},
    ...     chunks=1024,
    ... )
    >>> pred = ds.fusion.baseline(fine="fine", coarse="coarse")  # doctest: +SKIP
    """
    from rasterio.enums import Resampling

    if resampling not in Resampling.__members__:
        raise InvalidParameterError(
            f"Unknown resampling={resampling!r}. Choose one of "
            f"{sorted(Resampling.__members__)!r} (e.g. 'bilinear', 'average', 'nearest')."
        )
    fine_items = _dated_items(fine, "fine")
    coarse_items = _dated_items(coarse, "coarse")
    for role, items in (("fine", fine_items), ("coarse", coarse_items)):
        if not items:
            raise InvalidParameterError(
                f"No {role} GeoTIFF given: `{role}=` is empty. Pass at least one, e.g. "
                f"`{role}={{'2020-03-08': 'path.tif'}}`."
            )
    if fine_name == coarse_name:
        raise InvalidParameterError(
            f"fine_name and coarse_name are both {fine_name!r}; give them different names."
        )

    fine_meta = [_RasterMeta(p, "fine", t) for t, p in fine_items]
    ref = fine_meta[0]
    gbox = ref.geobox
    for m in fine_meta[1:]:
        if m.geobox.crs != gbox.crs:
            raise CRSMismatchError(
                f"The fine GeoTIFFs are in different CRSs: {ref.path!r} is in "
                f"{_crs_str(gbox.crs)} but {m.path!r} is in {_crs_str(m.geobox.crs)}. All fine files must share one grid; "
                "reproject them first, e.g. `gdalwarp -t_srs EPSG:XXXX -tr RES RES -tap`."
            )
        if not _same_geobox(m.geobox, gbox):
            raise GridMismatchError(
                f"The fine GeoTIFFs are on different pixel grids: {ref.path!r} has shape "
                f"{tuple(gbox.shape)} and transform {tuple(gbox.affine)[:6]}, {m.path!r} has "
                f"shape {tuple(m.geobox.shape)} and transform {tuple(m.geobox.affine)[:6]}. "
                "All fine files must share one grid; align them first, e.g. with "
                "`gdalwarp -te XMIN YMIN XMAX YMAX -tr RES RES`."
            )
    coarse_meta = [_RasterMeta(p, "coarse", t) for t, p in coarse_items]
    for role, metas in (("fine", fine_meta), ("coarse", coarse_meta)):
        counts = {m.count for m in metas}
        if len(counts) > 1:
            first = metas[0]
            odd = next(m for m in metas if m.count != first.count)
            raise InvalidParameterError(
                f"The {role} GeoTIFFs have different band counts: {first.path!r} has "
                f"{first.count}, {odd.path!r} has {odd.count}. Give files with the same bands."
            )
    if coarse_meta[0].count != ref.count:
        raise InvalidParameterError(
            f"Fine files have {ref.count} band(s) but coarse files have {coarse_meta[0].count} "
            f"({ref.path!r} vs {coarse_meta[0].path!r}). Fine and coarse bands are paired by "
            "position, so give the same number of bands (select them with `gdal_translate -b`)."
        )
    for m in coarse_meta:
        _check_overlap(ref, m)

    guide_specs: dict[str, tuple[list[_RasterMeta], bool]] = {}
    for gname, spec in (guides or {}).items():
        if isinstance(spec, (str, os.PathLike)):
            metas = [_RasterMeta(os.fspath(spec), f"guide {gname!r}", np.datetime64("NaT"))]
            static = True
        else:
            items = _dated_items(spec, f"guide {gname!r}")
            metas = [_RasterMeta(p, f"guide {gname!r}", t) for t, p in items]
            static = False
        if not metas:
            continue
        for m in metas:
            _check_overlap(ref, m)
        guide_specs[str(gname)] = (metas, static)

    chunk_yx = _resolve_chunks(chunks, gbox)
    all_dates = {t for t, _ in fine_items} | {t for t, _ in coarse_items}
    for metas, static in guide_specs.values():
        if not static:
            all_dates |= {m.date for m in metas}
    times = np.array(sorted(all_dates), dtype="datetime64[ns]")

    variables: dict[str, Any] = {}
    coords = _grid_coords(gbox, times)

    def add_role(name: str, metas: list[_RasterMeta], static: bool) -> None:
        names = _band_names(name, metas[0])
        clash = [n for n in names if n in variables]
        if clash:
            raise InvalidParameterError(
                f"Variable name {clash[0]!r} is produced twice; choose other names "
                "(fine_name=, coarse_name=, guide keys)."
            )
        per_band: list[dict[np.datetime64, Any]] = [{} for _ in names]
        for m in metas:
            for b, arr in enumerate(_read_on_grid(m, gbox, chunk_yx, resampling, nodata)):
                per_band[b][m.date] = arr
        descs = metas[0].descriptions
        enc = _integer_encoding(metas, gbox, nodata)
        for b, vname in enumerate(names):
            attrs = {"long_name": descs[b]} if len(names) > 1 and descs[b] else {}
            if static:
                data = per_band[b][metas[0].date]
                if chunk_yx is not None:
                    data = data.rechunk(chunk_yx)
                variables[vname] = _variable(data, gbox, time=False, attrs=attrs, encoding=enc)
            else:
                data = _stack_time(per_band[b], times, tuple(gbox.shape), chunk_yx)
                variables[vname] = _variable(data, gbox, time=True, attrs=attrs, encoding=enc)
                observed = np.isin(times, np.array([m.date for m in metas], "datetime64[ns]"))
                coords[f"observed_{vname}"] = (TIME, observed)

    add_role(fine_name, fine_meta, False)
    add_role(coarse_name, coarse_meta, False)
    for gname, (metas, static) in guide_specs.items():
        add_role(gname, metas, static)
    return xr.Dataset(variables, coords=coords)


def _as_geobox(geobox: Any) -> Any:
    from odc.geo.geobox import GeoBox

    if isinstance(geobox, GeoBox):
        return geobox
    if isinstance(geobox, (xr.Dataset, xr.DataArray)):
        from xfusion.cube.validate import get_geobox

        return get_geobox(geobox, name="geobox= argument")
    raise InvalidParameterError(
        f"geobox= must be an odc.geo GeoBox, found {type(geobox).__name__}. Build one with "
        "`odc.geo.geobox.GeoBox((ny, nx), Affine(res, 0, x0, 0, -res, y0), 'EPSG:32633')` or "
        "`GeoBox.from_bbox(bbox, crs, resolution=30)`."
    )


def from_numpy(
    data: Mapping[str, Any],
    /,
    *,
    geobox: Any,
    times: Iterable[DateLike] | None = None,
    observed: Mapping[str, Iterable[bool]] | None = None,
    nodata: float | Mapping[str, float] | None = None,
) -> xr.Dataset:
    """Wrap numpy or dask arrays onto an odc-geo ``GeoBox`` as a fusion cube.

    Parameters
    ----------
    data : mapping of str to array
        Variable name → array of shape ``(time, ny, nx)`` or ``(ny, nx)`` (a static variable
        with no time dimension). numpy and dask arrays are accepted; dask arrays stay lazy.
    geobox : odc.geo.geobox.GeoBox
        The pixel grid; its CRS decides the spatial dim names (``y, x`` or
        ``latitude, longitude``). An xarray object with a CRS is accepted too (its geobox).
    times : sequence of date-like, optional
        The time coordinate, required when any array has a time axis. Must be sorted and
        without duplicates.
    observed : mapping of str to sequence of bool, optional
        Per-variable availability along time; stored as the ``observed_<name>`` coordinate.
        Variables not listed get none (compute them with :func:`mark_observed`).
    nodata : float or mapping of str to float, optional
        Value marking missing pixels (one for all variables, or per variable). Those pixels
        become NaN and the variable float32 (float64 data stays float64). Integer arrays need
        a nodata value.

    Returns
    -------
    xarray.Dataset
        The cube, with a ``spatial_ref`` coordinate and coordinates built by odc-geo.

    Raises
    ------
    GridMismatchError
        An array's spatial shape differs from the geobox's.
    TimeAxisError
        Missing, unsorted or duplicate ``times``, or a length that differs from an array's.
    MissingNodataError
        An integer array without a nodata value.
    InvalidParameterError
        Bad ``data``/``observed``/``geobox`` arguments.

    See Also
    --------
    from_geotiffs, mark_observed

    Examples
    --------
    >>> import numpy as np
    >>> from affine import Affine
    >>> from odc.geo.geobox import GeoBox
    >>> gbox = GeoBox((4, 5), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    >>> ds = from_numpy(
    ...     {"fine": np.ones((2, 4, 5), "float32")},
    ...     geobox=gbox,
    ...     times=["2020-01-01", "2020-01-09"],
    ...     observed={"fine": [True, False]},
    ... )
    >>> dict(ds.sizes)
    {'time': 2, 'y': 4, 'x': 5}
    """
    if not isinstance(data, Mapping) or not data:
        raise InvalidParameterError(
            "from_numpy() needs a non-empty mapping of variable name -> array, found "
            f"{type(data).__name__} {'(empty)' if isinstance(data, Mapping) else ''}. Pass e.g. "
            "`from_numpy({'fine': arr}, geobox=gbox, times=[...])`."
        )
    gbox = _as_geobox(geobox)
    ny, nx = gbox.shape
    arrays: dict[str, Any] = {}
    for name, arr in data.items():
        a = arr if _is_dask(arr) or isinstance(arr, np.ndarray) else np.asarray(arr)
        if a.ndim not in (2, 3) or tuple(a.shape[-2:]) != (ny, nx):
            raise GridMismatchError(
                f"Array {name!r} has shape {tuple(a.shape)!r} but the geobox is {(ny, nx)!r} "
                "pixels; expected (time, ny, nx) or (ny, nx). Check the array orientation "
                "(rows are the first spatial axis) or build the geobox from the array's grid."
            )
        arrays[str(name)] = a

    time_index: np.ndarray | None = None
    if times is not None:
        if isinstance(times, (str, np.datetime64, _dt.date)):
            times = [times]
        time_index = np.array([to_datetime64(t, what="time") for t in times], "datetime64[ns]")
        if len(np.unique(time_index)) != len(time_index):
            vals, counts = np.unique(time_index, return_counts=True)
            dup = [_fmt_date(v) for v in vals[counts > 1]]
            raise TimeAxisError(f"Duplicate times {dup!r} in times=. Give each date once.")
        if np.any(np.diff(time_index) < np.timedelta64(0)):
            raise TimeAxisError(
                f"times= is not sorted (first values {[_fmt_date(t) for t in time_index[:4]]!r}). "
                "Sort the dates and the arrays' first axis together."
            )
    for name, a in arrays.items():
        if a.ndim == 3:
            if time_index is None:
                raise TimeAxisError(
                    f"Array {name!r} has a time axis ({a.shape[0]} steps) but no times= were "
                    "given. Pass `times=[...]` with one date per step."
                )
            if a.shape[0] != len(time_index):
                raise TimeAxisError(
                    f"Array {name!r} has {a.shape[0]} time steps but times= has "
                    f"{len(time_index)} dates. Give one date per step."
                )

    def nodata_for(name: str) -> Any:
        if isinstance(nodata, Mapping):
            return nodata.get(name)
        return nodata

    variables: dict[str, Any] = {}
    for name, a in arrays.items():
        nd = nodata_for(name)
        if np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_):
            if nd is None:
                raise MissingNodataError(
                    f"Array {name!r} holds integers ({a.dtype}) but no nodata value was given, "
                    "so gaps cannot be told from data. Pass `nodata={" + repr(name) + ": FILL}` "
                    "(your fill value) or convert to float with NaN gaps first."
                )
            out_dtype: Any = np.float32
        elif np.issubdtype(a.dtype, np.floating):
            out_dtype = a.dtype
        else:
            raise InvalidParameterError(
                f"Array {name!r} has dtype {a.dtype}; expected a numeric array."
            )
        if nd is not None or out_dtype != a.dtype:
            xp: Any
            if _is_dask(a):
                import dask.array as xp
            else:
                xp = np
            f = a.astype(out_dtype)
            if nd is not None and not (isinstance(nd, float) and np.isnan(nd)):
                f = xp.where(a == nd, np.array(np.nan, out_dtype), f)
            a = f
        variables[name] = _variable(a, gbox, time=a.ndim == 3, attrs={})

    coords = _grid_coords(gbox, time_index)
    for name, flags in (observed or {}).items():
        if name not in arrays:
            raise InvalidParameterError(
                f"observed= names {name!r}, which is not in data (variables: {sorted(arrays)!r})."
            )
        obs = np.asarray(list(flags), dtype=bool)
        if arrays[name].ndim != 3 or time_index is None or len(obs) != len(time_index):
            raise InvalidParameterError(
                f"observed[{name!r}] must hold one bool per time step "
                f"({0 if time_index is None else len(time_index)}), found {len(obs)}."
            )
        coords[f"observed_{name}"] = (TIME, obs)
    return xr.Dataset(variables, coords=coords)


_SCANNED: dict[tuple[str, str], np.ndarray] = {}
"""Observation flags scanned on first use, by (variable name, dask token)."""


def observed_flags(ds: xr.Dataset, names: Sequence[str], /) -> dict[str, np.ndarray]:
    """Per-time "any valid pixel" flags of ``names``: the ``observed_<name>`` coordinates when
    the cube declares them, else scanned from the data once (one dask compute over the
    variables that need it; remembered for the same lazy variables).

    Pixels equal to a declared nodata value (``attrs["nodata"]``/``_FillValue``) count as
    missing. Cubes built with :func:`from_geotiffs`, :func:`from_numpy` or
    :func:`xfusion.load_pair` declare the flags; cubes built the Pangeo way (rioxarray +
    ``xr.concat``, ``xr.open_zarr``) are scanned the first time a method needs to choose dates.
    """
    import logging

    import dask
    from dask.base import tokenize

    from xfusion.cube.validate import observed_times
    from xfusion.errors import MissingDimensionError

    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, tuple[str, str], Any]] = []
    for n in names:
        declared = observed_times(ds, n)
        if declared is not None:
            out[n] = declared
            continue
        var = ds[n]
        if TIME not in var.dims:
            raise MissingDimensionError(
                f"Variable {n!r} has no time dimension (dims {tuple(var.dims)!r}), so it has no "
                "per-time availability to mark. Leave it out of names=."
            )
        key = (str(n), tokenize(var.variable, var.attrs.get("nodata"), var.encoding.get(
            "_FillValue")))
        if key in _SCANNED:
            out[n] = _SCANNED[key]
            continue
        valid = var.notnull()
        nd = get_nodata(var)
        if nd is not None:
            valid = valid & (var != nd)
        todo.append((n, key, valid.any(dim=[d for d in var.dims if d != TIME])))
    if todo:
        logging.getLogger("xfusion").info(
            "xfusion: scanning %s for the dates with observations (once; declare "
            "observed_<name> coordinates, e.g. with xfusion.mark_observed, to skip this)",
            [n for n, _, _ in todo],
        )
        (computed,) = dask.compute([f for _, _, f in todo])
        for (n, key, _), f in zip(todo, computed, strict=True):
            flags = np.asarray(f.values, dtype=bool)
            if len(_SCANNED) > 256:
                _SCANNED.clear()
            _SCANNED[key] = flags
            out[n] = flags
    return out


def mark_observed(ds: xr.Dataset, /, names: Iterable[str] | str | None = None) -> xr.Dataset:
    """Compute the ``observed_<name>`` coordinates: True at times with any finite pixel.

    This function is **eager on purpose**: it reads every pixel of the named variables once
    (one dask compute for all of them). Builders such as :func:`from_geotiffs` set these
    coordinates for free; the methods scan cubes built elsewhere (``xr.open_zarr``,
    rioxarray + ``xr.concat``, ``odc.stac.load`` without ``observed_*``...) on first use with
    :func:`observed_flags`, so calling this is optional: it only makes the flags part of the
    cube. Pixels equal to a declared nodata value (``attrs["nodata"]``/``_FillValue``) count
    as missing.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    names : str or sequence of str, optional
        Variables to mark; default: every data variable with a ``time`` dimension.

    Returns
    -------
    xarray.Dataset
        A copy of ``ds`` with a boolean ``observed_<name>`` coordinate along ``time`` per
        variable (existing ones are replaced).

    Raises
    ------
    VariableNotFoundError
        A name is not a variable of ``ds``.
    MissingDimensionError
        A named variable lacks ``time`` or the spatial dims.
    """
    if names is None:
        names = [str(n) for n, v in ds.data_vars.items() if TIME in v.dims]
    elif isinstance(names, str):
        names = [names]
    names = list(names)
    require_vars(ds, names)
    spatial_dims(ds, name="cube")
    bare = ds.drop_vars([f"observed_{n}" for n in names if f"observed_{n}" in ds.coords])
    flags = observed_flags(bare, names)
    out = ds.copy()
    for n in names:
        out.coords[f"observed_{n}"] = (TIME, flags[n])
    return out


def _role_dataset(obj: xr.Dataset | xr.DataArray, name: str | None, role: str) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        return obj.to_dataset(name=name or (str(obj.name) if obj.name is not None else role))
    if not isinstance(obj, xr.Dataset):
        raise TypeError(
            f"{role}= must be an xarray Dataset or DataArray (e.g. from xfusion.load_cube), "
            f"found {type(obj).__name__}."
        )
    if name is not None:
        if len(obj.data_vars) != 1:
            raise InvalidParameterError(
                f"{role}_name={name!r} renames a single variable, but {role}= has "
                f"{sorted(map(str, obj.data_vars))!r}. Select one first, e.g. {role}[['lwir11']]."
            )
        obj = obj.rename({next(iter(obj.data_vars)): name})
    return obj


def combine(
    fine: xr.Dataset | xr.DataArray,
    coarse: xr.Dataset | xr.DataArray,
    /,
    *guides: xr.Dataset | xr.DataArray,
    fine_name: str | None = None,
    coarse_name: str | None = None,
    align: str | None = "day",
) -> xr.Dataset:
    """Combine fine and coarse observations already on one grid into a fusion cube, lazily.

    Sensors overpass at different hours, so by default times are aligned to the calendar day
    (UTC) before the union of dates is taken; each variable is NaN at dates it did not
    observe, and ``observed_<var>`` coordinates record which dates each sensor has.

    Parameters
    ----------
    fine, coarse : xarray.Dataset or xarray.DataArray
        Fine and coarse observations on the SAME GeoBox (e.g. two :func:`xfusion.load_cube`
        calls with one ``geobox=``), each with a ``time`` dimension.
    *guides : xarray.Dataset or xarray.DataArray
        Extra variables on the same grid (NDVI, SAR...), with or without ``time``.
    fine_name, coarse_name : str, optional
        Rename the single variable of ``fine``/``coarse`` (e.g. ``"fine"``, ``"coarse"``).
    align : {"day", None}
        ``"day"`` floors every time to its UTC day; ``None`` keeps exact timestamps.

    Returns
    -------
    xarray.Dataset
        The fusion cube (lazy when the inputs are).

    Raises
    ------
    GridMismatchError
        When the inputs are not on one grid (resample first, e.g. load with one geobox).
    TimeAxisError
        When one input has two acquisitions on the same day (mosaic them first:
        ``load_cube(..., groupby="solar_day")``).
    """
    from xfusion.cube.validate import require_same_grid, require_time

    if align not in ("day", None):
        raise InvalidParameterError(f"align must be 'day' or None, found {align!r}.")
    parts = [_role_dataset(fine, fine_name, "fine"), _role_dataset(coarse, coarse_name, "coarse")]
    parts += [_role_dataset(g, None, "guide") for g in guides]
    names = ["fine", "coarse"] + [f"guide {i}" for i in range(len(guides))]
    for part, role in zip(parts[1:], names[1:], strict=True):
        require_same_grid(parts[0], part, names=("fine", role))
    aligned = []
    for part, role in zip(parts, names, strict=True):
        if TIME in part.dims:
            require_time(part, name=role)
            if align == "day":
                days = part[TIME].dt.floor("D")
                if days.to_index().has_duplicates:
                    raise TimeAxisError(
                        f"The {role} input has several acquisitions on one day "
                        f"({sorted({str(d)[:10] for d in days.values})[:5]}...). Mosaic them per day "
                        "first, e.g. load with groupby='solar_day', or pass align=None."
                    )
                part = part.assign_coords({TIME: days.values})
            part = part.assign_coords(
                {f"observed_{v}": (TIME, np.ones(part.sizes[TIME], bool)) for v in part.data_vars
                 if TIME in part[v].dims}
            )
        aligned.append(part)
    # per-time coordinates that several inputs carry (e.g. clear_fraction) get the role as suffix
    counts: dict[Hashable, int] = {}
    for part in aligned:
        for c in part.coords:
            if c not in part.dims and c != "spatial_ref" and not str(c).startswith("observed_"):
                counts[c] = counts.get(c, 0) + 1
    aligned = [
        part.rename({c: f"{c}_{role.replace(' ', '_')}" for c in part.coords if counts.get(c, 0) > 1})
        for part, role in zip(aligned, names, strict=True)
    ]
    cube = xr.merge(aligned, join="outer", compat="override", combine_attrs="drop_conflicts")
    for c in [c for c in cube.coords if str(c).startswith("observed_")]:
        cube = cube.assign_coords({c: cube[c].fillna(False).astype(bool)})
    return cube
