"""Zarr output: chunk-aligned, CRS-preserving writes and resumable tile-by-tile writes.

Three entry points:

- :func:`to_zarr` writes a Dataset (or a named DataArray) as Zarr v3 with zarr chunks equal to the
  dask chunks, zstd compression, NaN fill for floats, the CF ``spatial_ref``/``grid_mapping`` pair
  (read by rioxarray, odc-geo and GDAL) and GeoZarr ``proj:``/``spatial:`` group attributes.
- :func:`write_tiled` writes a large lazy result tile by tile into a template store, records a
  done-marker per tile *after* the tile's data is written, and on a re-run skips finished tiles.
- :func:`open_zarr` reopens either kind with ``decode_coords="all"`` (so ``.rio.crs`` works) and
  hides the done-marker array.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import os
import sys
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion.cube.validate import get_geobox, spatial_dims
from xfusion.errors import (
    ChunkingError,
    InvalidParameterError,
    MissingDimensionError,
    XFusionError,
)

__all__ = ["TiledWriteReport", "open_zarr", "tile_status", "to_zarr", "write_tiled"]

StoreLike = Any
"""A path (``str`` / ``os.PathLike``), an fsspec URL, or a zarr store object."""

MARKER_NAME = "_xfusion_tiles"
"""Name of the uint8 done-marker array that :func:`write_tiled` keeps in the store."""

LAYOUT_ATTR = "xfusion:tiled_write"
"""Group attribute holding the layout of a :func:`write_tiled` store (JSON)."""

DEFAULT_SPATIAL_CHUNK = 1024
"""Zarr chunk size along each spatial dim for numpy-backed variables."""

_LAYOUT_VERSION = 1

# CF/xarray encoding keys that describe *values* (kept from an input's .encoding); storage keys
# from an earlier read (chunks, compressors, shards, ...) are dropped because they may not fit.
_KEEP_ENCODING = frozenset(
    {
        "dtype",
        "scale_factor",
        "add_offset",
        "_FillValue",
        "missing_value",
        "units",
        "calendar",
        "grid_mapping",
        "coordinates",
    }
)

_PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
_SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

Mode = Literal["w-", "w", "a", "r+"]
_MODES = ("w-", "w", "a", "r+")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.Dataset):
        return obj
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            raise InvalidParameterError(
                "Cannot write an unnamed DataArray to Zarr: the name becomes the variable name "
                "in the store. Found name None. Name it first, e.g. "
                "`xfusion.io.to_zarr(da.rename('fused'), store)`."
            )
        return obj.to_dataset()
    raise TypeError(
        f"Expected an xarray.Dataset or xarray.DataArray, found {type(obj).__name__}. "
        "Wrap numpy arrays with `xfusion.cube.from_numpy(...)` or `xr.DataArray(...)` first."
    )


def _store_repr(store: StoreLike) -> str:
    if isinstance(store, str | os.PathLike):
        return os.fspath(store)
    return repr(store)


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        stream = sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(progress)


def _is_dask(var: xr.Variable | xr.DataArray) -> bool:
    return dask.is_dask_collection(var.data)


def _try_spatial(ds: xr.Dataset) -> tuple[tuple[str, str] | None, Any]:
    """Spatial dims and geobox of ``ds`` when it has them, else ``(None, None)``."""
    try:
        dims = spatial_dims(ds, name="dataset")
    except MissingDimensionError:
        return None, None
    try:
        gbox = get_geobox(ds, name="dataset")
    except XFusionError:
        gbox = None
    return dims, gbox


def _is_regular(chunks: tuple[int, ...]) -> bool:
    """Zarr-compatible dask chunks: all equal except a smaller (or equal) last one."""
    if len(chunks) <= 1:
        return True
    first = chunks[0]
    return all(c == first for c in chunks[:-1]) and chunks[-1] <= first


def _check_or_fix_chunks(ds: xr.Dataset, *, rechunk: bool) -> xr.Dataset:
    """Raise (or, with ``rechunk=True``, fix) dask chunks that no zarr chunk grid can match."""
    fixes: dict[Hashable, int] = {}
    for name, var in ds.variables.items():
        if not _is_dask(var):
            continue
        for dim, chunks in zip(var.dims, var.chunks, strict=True):
            if _is_regular(tuple(chunks)):
                continue
            if not rechunk:
                shown = tuple(chunks[:6]) + (("...",) if len(chunks) > 6 else ())
                raise ChunkingError(
                    f"Variable {name!r} has irregular dask chunks along {dim!r}: {shown}. Zarr "
                    "stores one chunk size per dimension (only the last chunk may be smaller), "
                    "and every dask chunk must map onto whole zarr chunks. Rechunk first with "
                    f"`ds = ds.chunk({{{dim!r}: {max(chunks)}}})`, or pass `rechunk=True` to "
                    "let xfusion do it."
                )
            fixes[dim] = max(fixes.get(dim, 0), max(chunks))
    if fixes:
        ds = ds.chunk(fixes)
    return ds


def _grid_mapping_name(ds: xr.Dataset) -> str | None:
    for var in ds.variables.values():
        gm = var.encoding.get("grid_mapping") or var.attrs.get("grid_mapping")
        if isinstance(gm, str) and gm in ds.variables:
            return gm
    for name, coord in ds.coords.items():
        if coord.ndim == 0 and ("crs_wkt" in coord.attrs or "spatial_ref" in coord.attrs):
            return str(name)
    return None


def _with_crs_coord(ds: xr.Dataset, gbox: Any) -> tuple[xr.Dataset, str | None]:
    """Make sure the CRS travels as a CF grid-mapping coordinate; return its name."""
    gm = _grid_mapping_name(ds)
    if gm is None and gbox is not None and gbox.crs is not None:
        ds = ds.odc.assign_crs(gbox.crs)
        gm = _grid_mapping_name(ds)
    return ds, gm


def geozarr_attrs(gbox: Any, dims: tuple[str, str]) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` convention attributes for a group.

    Parameters
    ----------
    gbox : odc.geo.geobox.GeoBox
        The grid.
    dims : tuple of str
        The ``(y, x)``-like spatial dimension names.

    Returns
    -------
    dict
        ``zarr_conventions``, ``proj:code`` (when the CRS has an EPSG code), ``proj:wkt2``,
        ``spatial:dimensions``, ``spatial:shape``, ``spatial:transform`` (``[a, b, c, d, e, f]``,
        affine order), ``spatial:bbox`` and ``spatial:registration``.
    """
    attrs: dict[str, Any] = {"zarr_conventions": [dict(_SPATIAL_CONVENTION)]}
    crs = gbox.crs
    if crs is not None:
        attrs["zarr_conventions"].insert(0, dict(_PROJ_CONVENTION))
        epsg = crs.epsg
        if epsg is not None:
            attrs["proj:code"] = f"EPSG:{int(epsg)}"
        attrs["proj:wkt2"] = crs.to_wkt(version="WKT2_2019")
    bbox = gbox.extent.boundingbox if crs is not None else gbox.boundingbox
    attrs.update(
        {
            "spatial:dimensions": [str(d) for d in dims],
            "spatial:shape": [int(s) for s in gbox.shape],
            "spatial:transform": [float(v) for v in tuple(gbox.affine)[:6]],
            "spatial:bbox": [
                float(bbox.left),
                float(bbox.bottom),
                float(bbox.right),
                float(bbox.top),
            ],
            "spatial:registration": "pixel",
        }
    )
    return attrs


def _compressors(level: int | None, zarr_format: int) -> Any:
    if level is None:
        return None
    if zarr_format == 2:
        import numcodecs

        return (numcodecs.Zstd(level=int(level)),)
    import zarr.codecs

    return (zarr.codecs.ZstdCodec(level=int(level)),)


def _default_chunks(var: xr.Variable, sdims: tuple[str, str] | None) -> tuple[int, ...] | None:
    """Zarr chunks for a numpy-backed variable: 1 per non-spatial index, tiles of 1024 px."""
    if sdims is None or not all(d in var.dims for d in sdims):
        return None
    return tuple(
        max(1, min(n, DEFAULT_SPATIAL_CHUNK)) if d in sdims else 1
        for d, n in zip(var.dims, var.shape, strict=True)
    )


def _build_encoding(
    ds: xr.Dataset,
    *,
    sdims: tuple[str, str] | None,
    grid_mapping: str | None,
    compression_level: int | None,
    zarr_format: int,
    user: Mapping[Hashable, Mapping[str, Any]] | None,
) -> dict[Hashable, dict[str, Any]]:
    """Encoding for every variable: chunk-aligned, compressed, NaN fill for floats."""
    user = dict(user or {})
    unknown = [k for k in user if k not in ds.variables]
    if unknown:
        raise InvalidParameterError(
            f"encoding= names variables that are not on the dataset: {unknown!r}. Variables "
            f"on the dataset include {sorted(map(str, ds.variables))!r}."
        )
    compressors = _compressors(compression_level, zarr_format)
    encoding: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        enc = {k: v for k, v in var.encoding.items() if k in _KEEP_ENCODING}
        is_data = name in ds.data_vars
        if is_data and var.ndim > 0:
            if _is_dask(var):
                enc["chunks"] = tuple(int(c[0]) for c in var.chunks)
            else:
                chunks = _default_chunks(var, sdims)
                if chunks is not None:
                    enc["chunks"] = chunks
            enc["compressors"] = compressors
            if np.issubdtype(var.dtype, np.floating):
                if enc.get("_FillValue") is None:
                    enc["_FillValue"] = np.nan
            elif np.issubdtype(var.dtype, np.integer) and "_FillValue" not in enc:
                nodata = var.attrs.get("nodata")
                if nodata is not None and np.can_cast(np.min_scalar_type(nodata), var.dtype):
                    enc["fill_value"] = np.asarray(nodata).astype(var.dtype).item()
            if grid_mapping is not None and sdims is not None and all(d in var.dims for d in sdims):
                enc["grid_mapping"] = grid_mapping
        enc.update(user.get(name, {}))
        encoding[name] = enc
    return encoding


_ENCODING_ATTRS = ("grid_mapping", "_FillValue", "missing_value")


def _move_encoding_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Move ``grid_mapping``/``_FillValue``/``missing_value`` from attrs to encoding.

    rioxarray (``write_crs``, ``write_nodata(encoded=False)``) may leave them in ``attrs``;
    xarray refuses to write a key that is in both attrs and encoding.
    """
    out = ds.copy()
    for var in out.variables.values():
        moved = {k: var.attrs[k] for k in _ENCODING_ATTRS if k in var.attrs}
        if moved:
            var.attrs = {k: v for k, v in var.attrs.items() if k not in moved}
            var.encoding = {**var.encoding, **moved}
    return out


def _active_client() -> Any:
    """The distributed Client behind the current dask scheduler, if any."""
    if "distributed" not in sys.modules:
        return None
    from distributed import Client

    sched = dask.base.get_scheduler()
    owner = getattr(sched, "__self__", None)
    return owner if isinstance(owner, Client) else None


def _compute(delayed: Any, *, progress: bool, desc: str) -> None:
    """Compute with the current scheduler, with a progress bar when asked."""
    if not progress:
        dask.compute(delayed)
        return
    client = _active_client()
    if client is not None:
        from distributed import progress as dprogress

        fut = client.compute(delayed)
        dprogress(fut)
        fut.result()
        return
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc=desc):
        dask.compute(delayed)


# --------------------------------------------------------------------------------------------
# to_zarr / open_zarr
# --------------------------------------------------------------------------------------------
def to_zarr(
    obj: xr.Dataset | xr.DataArray,
    store: StoreLike,
    /,
    *,
    mode: Mode = "w-",
    group: str | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    compression_level: int | None = 3,
    progress: bool | None = None,
    zarr_format: Literal[2, 3] = 3,
    compute: bool = True,
    rechunk: bool = False,
    region: Mapping[str, slice] | Literal["auto"] | None = None,
    append_dim: str | None = None,
    consolidated: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Write a datacube to Zarr (v3 by default) with chunk-aligned encoding and its CRS.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        What to write. A DataArray is written as a Dataset holding one variable named after it
        (it must have a name). Dask-backed variables are computed chunk by chunk while writing.
    store : str, os.PathLike or zarr store
        Where to write (a local path, an fsspec URL or a zarr store object).
    mode : {"w-", "w", "a", "r+"}
        ``"w-"`` (default) creates the store and fails if it exists; ``"w"`` overwrites;
        ``"a"`` appends (with ``append_dim``) or adds variables; ``"r+"`` writes into an
        existing store (with ``region``).
    group : str, optional
        Zarr group path inside the store.
    encoding : dict, optional
        Per-variable encoding merged over the one xfusion builds (e.g.
        ``{"ndvi": {"dtype": "int16", "scale_factor": 1e-4, "_FillValue": -32768}}``).
    compression_level : int or None
        zstd level (default 3); ``None`` writes uncompressed chunks.
    progress : bool, optional
        Show a progress bar while computing. ``None`` (default) shows one only when stderr is
        a terminal. Uses ``tqdm`` on the local schedulers and ``distributed.progress`` when a
        distributed Client is active.
    zarr_format : {3, 2}
        Zarr format; 2 for readers that do not know v3 yet.
    compute : bool
        When False, write metadata and in-memory arrays only and return a ``dask.delayed``
        object that writes the dask-backed data when computed (a *template* write).
    rechunk : bool
        When True, irregular dask chunks are rechunked to the largest chunk along each dim
        instead of raising :class:`~xfusion.errors.ChunkingError`.
    region : dict or "auto", optional
        Write into this region of an existing store (``mode="r+"``). Variables that do not
        span a region dimension (the scalar ``spatial_ref``, ``time`` when it is not a region
        dim, ...) are dropped automatically, as xarray requires.
    append_dim : str, optional
        Dimension to append along (``mode="a"``).
    consolidated : bool
        Write consolidated metadata (default False: it is not part of the Zarr v3 spec and
        zarr warns about it; consider True for ``zarr_format=2`` stores read over HTTP).
    storage_options : dict, optional
        fsspec options for URL stores.

    Returns
    -------
    dask.delayed.Delayed or None
        The pending write when ``compute=False``, else None.

    Raises
    ------
    ChunkingError
        Irregular dask chunks (and ``rechunk=False``).
    InvalidParameterError
        Unknown ``mode``, an unnamed DataArray, or ``encoding`` for unknown variables.

    See Also
    --------
    write_tiled : resumable tile-by-tile writes for large outputs.
    open_zarr : reopen with the CRS decoded.

    Notes
    -----
    - zarr chunks equal the dask chunks (the first chunk along each dim), so every dask task
      writes whole zarr chunks and parallel writes are safe. Numpy-backed variables with both
      spatial dims get chunks of 1 along other dims and up to 1024 px along the spatial dims.
    - Floats are written with a NaN fill value (NaN means unobserved). Integers keep their
      dtype; a declared ``attrs["nodata"]`` becomes the zarr fill value (no CF masking, so they
      read back as integers).
    - The CRS is kept twice: as the CF ``spatial_ref`` coordinate referenced by each
      variable's ``grid_mapping`` (rioxarray, odc-geo, GDAL) and as GeoZarr ``proj:`` /
      ``spatial:`` group attributes (see :func:`geozarr_attrs`). Read it back with
      :func:`open_zarr` (``decode_coords="all"``) so that ``.rio.crs`` works.
    - zarr 3 does not store chunks that are entirely fill value (``write_empty_chunks=False``);
      they read back as fill value (NaN), which is the same data.

    Examples
    --------
    >>> xfusion.io.to_zarr(fused, "out.zarr", mode="w")  # doctest: +SKIP
    >>> ds = xfusion.io.open_zarr("out.zarr")  # doctest: +SKIP
    """
    if mode not in _MODES:
        raise InvalidParameterError(
            f"Unknown mode={mode!r}. Valid choices: {list(_MODES)!r} ('w-' creates and fails "
            "if the store exists, 'w' overwrites, 'a' appends, 'r+' writes a region)."
        )
    if zarr_format not in (2, 3):
        raise InvalidParameterError(
            f"zarr_format must be 2 or 3, found {zarr_format!r}. Use 3 (the default) unless a "
            "reader needs Zarr v2."
        )
    ds = _as_dataset(obj)
    ds = _check_or_fix_chunks(ds, rechunk=rechunk)
    if mode == "w-" and _existing_group(store, group, storage_options) is not None:
        raise InvalidParameterError(
            f"The store {_store_repr(store)!r} already exists (group {group or '/'!r}) and "
            "mode='w-' never overwrites. Pass mode='w' to replace it, mode='a' to add "
            "variables, or write to another path."
        )
    kwargs: dict[str, Any] = {
        "mode": mode,
        "group": group,
        "consolidated": consolidated,
        "zarr_format": zarr_format,
        "storage_options": dict(storage_options) if storage_options else None,
    }
    if region is not None or mode in ("a", "r+"):
        # writing into an existing store: its encoding and attributes win
        if region is not None:
            rdims = set(spatial_dims(ds, name="region data")) if region == "auto" else set(region)
            drop = [n for n, v in ds.variables.items() if not rdims.intersection(v.dims)]
            ds = ds.drop_vars(drop)
            kwargs["region"] = region
        if append_dim is not None:
            kwargs["append_dim"] = append_dim
        if encoding:
            kwargs["encoding"] = dict(encoding)
    else:
        sdims, gbox = _try_spatial(ds)
        ds, gm = _with_crs_coord(ds, gbox)
        ds = _move_encoding_attrs(ds)
        kwargs["encoding"] = _build_encoding(
            ds,
            sdims=sdims,
            grid_mapping=gm,
            compression_level=compression_level,
            zarr_format=zarr_format,
            user=encoding,
        )
        if sdims is not None and gbox is not None:
            ds = ds.copy()
            ds.attrs = {**ds.attrs, **geozarr_attrs(gbox, sdims)}
    # metadata and in-memory arrays are written now; the dask-backed data when computed
    delayed = ds.to_zarr(store, **{**kwargs, "compute": False})
    if not compute:
        return delayed
    _compute(delayed, progress=_show_progress(progress), desc="xfusion.to_zarr")
    return None


def open_zarr(
    store: StoreLike,
    /,
    *,
    group: str | None = None,
    consolidated: bool | None = False,
    **kwargs: Any,
) -> xr.Dataset:
    """Open a Zarr store written by xfusion (or anyone) with its CRS decoded.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        The store.
    group : str, optional
        Group path inside the store.
    consolidated : bool or None
        Passed to :func:`xarray.open_zarr`; False by default (xfusion writes no consolidated
        metadata, and False avoids xarray's fallback warning).
    **kwargs
        Passed to :func:`xarray.open_zarr` (``chunks=``, ``decode_times=``, ...).
        ``decode_coords`` defaults to ``"all"``, so ``spatial_ref`` comes back as a coordinate
        and ``ds["var"].rio.crs`` / ``ds.odc.geobox`` work.

    Returns
    -------
    xarray.Dataset
        Lazy (dask-backed) dataset. The done-marker array of :func:`write_tiled` is hidden.
    """
    kwargs.setdefault("decode_coords", "all")
    drop = kwargs.pop("drop_variables", None)
    drop = [drop] if isinstance(drop, str) else list(drop or [])
    drop.append(MARKER_NAME)
    ds = xr.open_zarr(store, group=group, consolidated=consolidated, drop_variables=drop, **kwargs)
    ds.attrs.pop(LAYOUT_ATTR, None)
    return ds


# --------------------------------------------------------------------------------------------
# write_tiled
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TiledWriteReport:
    """What :func:`write_tiled` did."""

    store: str
    """The store written (its path, or the repr of a store object)."""
    grid: tuple[int, int]
    """Number of tiles along the ``(y, x)``-like spatial dims."""
    tile_shape: tuple[int, int]
    """Tile size in pixels along the ``(y, x)``-like spatial dims (edge tiles may be smaller)."""
    tiles_total: int
    """Number of tiles in the store."""
    tiles_skipped: int
    """Tiles already marked done by an earlier run, not recomputed."""
    tiles_written: int
    """Tiles computed and written (and marked done) by this call."""
    elapsed_s: float
    """Wall time of this call, in seconds."""

    @property
    def tiles_done(self) -> int:
        """Tiles marked done in the store after this call."""
        return self.tiles_skipped + self.tiles_written

    @property
    def complete(self) -> bool:
        """True when every tile is done."""
        return self.tiles_done == self.tiles_total

    def __str__(self) -> str:
        return (
            f"{self.tiles_done}/{self.tiles_total} tiles done in {self.store} "
            f"({self.tiles_written} written, {self.tiles_skipped} skipped as already done; "
            f"grid {self.grid[0]}x{self.grid[1]} of {self.tile_shape[0]}x{self.tile_shape[1]} "
            f"px) in {self.elapsed_s:.1f} s"
        )


def _tile_size(
    tile: int | tuple[int, int] | Mapping[str, int] | None,
    sdims: tuple[str, str],
    chunks: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[int, int]:
    if tile is None:
        return chunks
    if isinstance(tile, Mapping):
        missing = [d for d in sdims if d not in tile]
        if missing or set(tile) - set(sdims):
            raise InvalidParameterError(
                f"tile={dict(tile)!r} must give a size for each spatial dim {list(sdims)!r}. "
                f"Use e.g. tile={{{sdims[0]!r}: {chunks[0]}, {sdims[1]!r}: {chunks[1]}}}."
            )
        size = (tile[sdims[0]], tile[sdims[1]])
    elif isinstance(tile, int | np.integer):
        size = (int(tile), int(tile))
    else:
        size = tuple(tile)  # type: ignore[assignment]
        if len(size) != 2:
            raise InvalidParameterError(
                f"tile={tile!r} must be an int or a pair of ints (pixels along {list(sdims)!r})."
            )
    out = []
    for dim, t, c, n in zip(sdims, size, chunks, shape, strict=True):
        if not isinstance(t, int | np.integer) or t <= 0:
            raise InvalidParameterError(
                f"The tile size along {dim!r} must be a positive number of pixels, found {t!r}."
            )
        t = int(t)
        if t >= n:
            out.append(max(n, 1))
            continue
        if t % c:
            lo = max(c, (t // c) * c)
            raise ChunkingError(
                f"A tile must hold whole dask chunks: tile size {t} along {dim!r} is not a "
                f"multiple of the chunk size {c}. Use tile size {lo} or {lo + c} along {dim!r}, "
                f"or rechunk with `ds.chunk({{{dim!r}: {t}}})`."
            )
        out.append(t)
    return out[0], out[1]


def _prepare_tiled(
    ds: xr.Dataset, *, rechunk: bool
) -> tuple[xr.Dataset, tuple[str, str], list[Hashable]]:
    """Split variables, make the tiled ones dask-backed with one spatial chunking."""
    sdims = spatial_dims(ds, name="dataset to write")
    tiled = [n for n, v in ds.data_vars.items() if all(d in v.dims for d in sdims)]
    if not tiled:
        raise MissingDimensionError(
            f"write_tiled() found no data variable with both spatial dims {list(sdims)!r}. "
            f"Variables: { {str(n): tuple(map(str, v.dims)) for n, v in ds.data_vars.items()}!r}. "
            "Use xfusion.io.to_zarr() for data without a spatial grid."
        )
    # small things (non-spatial variables, lazy coordinates) are loaded and go with the template
    small = [n for n in ds.variables if n not in tiled and _is_dask(ds.variables[n])]
    if small:
        ds = ds.assign({n: ds[n].compute() for n in small if n in ds.data_vars})
        ds = ds.assign_coords({n: ds[n].compute() for n in small if n in ds.coords})
    numpy_tiled = [n for n in tiled if not _is_dask(ds[n])]
    if numpy_tiled:
        ds = ds.assign(
            {
                n: ds[n].chunk(
                    {
                        d: (max(1, min(s, DEFAULT_SPATIAL_CHUNK)) if d in sdims else 1)
                        for d, s in ds[n].sizes.items()
                    }
                )
                for n in numpy_tiled
            }
        )
    ds = _check_or_fix_chunks(ds, rechunk=rechunk)
    for dim in sdims:
        seen = {n: ds[n].chunksizes[dim] for n in tiled}
        if len(set(seen.values())) > 1:
            raise ChunkingError(
                f"The data variables are chunked differently along {dim!r}: "
                f"{ {str(n): c[:4] for n, c in seen.items()}!r}. Tiles are groups of whole "
                "dask chunks, so all variables need the same spatial chunks. Unify them with "
                f"`ds = ds.chunk({{{dim!r}: {max(c[0] for c in seen.values())}}})`."
            )
    return ds, sdims, tiled


def _layout(
    ds: xr.Dataset, sdims: tuple[str, str], tiled: list[Hashable], tile: tuple[int, int]
) -> dict[str, Any]:
    shape = (ds.sizes[sdims[0]], ds.sizes[sdims[1]])
    grid = [math.ceil(shape[i] / tile[i]) if shape[i] else 0 for i in range(2)]
    variables = {
        str(n): {
            "dims": [str(d) for d in ds[n].dims],
            "shape": [int(s) for s in ds[n].shape],
            "dtype": str(ds[n].dtype),
            "chunks": [int(c[0]) for c in ds[n].chunks],
        }
        for n in sorted(tiled, key=str)
    }
    index_token = dask.base.tokenize(
        *[(str(n), np.asarray(idx.values)) for n, idx in sorted(ds.indexes.items(), key=str)]
    )
    _, gbox = _try_spatial(ds)
    return {
        "version": _LAYOUT_VERSION,
        "spatial_dims": list(sdims),
        "shape": list(shape),
        "tile": list(tile),
        "grid": grid,
        "variables": variables,
        "crs": _crs_id(gbox),
        "index_token": index_token,
    }


def _crs_id(gbox: Any) -> str | None:
    """A CRS identifier that does not depend on how the CRS was spelt (EPSG code or WKT2)."""
    if gbox is None or gbox.crs is None:
        return None
    epsg = gbox.crs.epsg
    return f"EPSG:{int(epsg)}" if epsg is not None else gbox.crs.to_wkt(version="WKT2_2019")


def _layout_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "index_token":
                out.append("coordinate values (time/y/x labels) differ")
            else:
                out.append(f"{key}: store has {old.get(key)!r}, data has {new.get(key)!r}")
    return out


def _open_group(store: StoreLike, group: str | None, mode: str, storage_options: Any) -> Any:
    import zarr

    kw: dict[str, Any] = {"mode": mode}
    if group:
        kw["path"] = group
    if storage_options:
        kw["storage_options"] = dict(storage_options)
    return zarr.open_group(store, **kw)


def _existing_group(store: StoreLike, group: str | None, storage_options: Any) -> Any:
    import zarr.errors

    try:
        return _open_group(store, group, "r", storage_options)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    except zarr.errors.ContainsArrayError as err:
        raise InvalidParameterError(
            f"The store {_store_repr(store)!r} holds a zarr array, not a group, at "
            f"{group or '/'!r}. Pass another path, or mode='w' to overwrite it."
        ) from err


def resume_problem(existing: Any, layout: Mapping[str, Any]) -> str | None:
    """Why an existing tiled store cannot be resumed with ``layout`` (None: it can).

    Shared by :func:`write_tiled` and :func:`xfusion.run`: the store must have the layout
    attribute and the done-markers, and its layout must equal ``layout``.
    """
    old = existing.attrs.get(LAYOUT_ATTR)
    if old is None or MARKER_NAME not in existing:
        return (
            f"it was not written tile by tile by xfusion (no {LAYOUT_ATTR!r} attribute or "
            "done-markers)"
        )
    old = json.loads(old) if isinstance(old, str) else old
    diff = _layout_diff(old, layout)
    return f"it was written with a different layout: {'; '.join(diff)}" if diff else None


def _create_markers(zgroup: Any, sdims: tuple[str, str], grid: list[int], zarr_format: int) -> Any:
    dims = [f"_xfusion_tile_{d}" for d in sdims]
    kw: dict[str, Any] = {
        "name": MARKER_NAME,
        "shape": tuple(grid),
        "chunks": (1, 1),
        "dtype": "uint8",
        "fill_value": 0,
        "compressors": None,
        "overwrite": True,
        "attributes": {"description": "xfusion.io.write_tiled done-marker: 1 = tile written"},
    }
    if zarr_format == 3:
        kw["dimension_names"] = dims
    else:
        kw["attributes"]["_ARRAY_DIMENSIONS"] = dims
    return zgroup.create_array(**kw)


def tile_status(
    store: StoreLike,
    /,
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Return the done-markers of a :func:`write_tiled` store as a boolean array.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        A store written by :func:`write_tiled`.
    group : str, optional
        Group path inside the store.
    storage_options : dict, optional
        fsspec options for URL stores.

    Returns
    -------
    numpy.ndarray
        Boolean array of shape ``grid`` (tiles along the spatial dims); True = tile done.
    """
    zgroup = _existing_group(store, group, storage_options)
    if zgroup is None or MARKER_NAME not in zgroup:
        raise InvalidParameterError(
            f"No write_tiled() done-markers in {_store_repr(store)!r} (group {group or '/'!r}): "
            "it does not exist or was not written by xfusion.io.write_tiled()."
        )
    return np.asarray(zgroup[MARKER_NAME][...]) > 0


def _tile_slices(
    iy: int, ix: int, tile: tuple[int, int], shape: tuple[int, int], sdims: tuple[str, str]
) -> dict[str, slice]:
    return {
        sdims[0]: slice(iy * tile[0], min((iy + 1) * tile[0], shape[0])),
        sdims[1]: slice(ix * tile[1], min((ix + 1) * tile[1], shape[1])),
    }


def write_tiled(
    obj: xr.Dataset | xr.DataArray,
    store: StoreLike,
    /,
    *,
    tile: int | tuple[int, int] | Mapping[str, int] | None = None,
    resume: bool = True,
    mode: Literal["w-", "w"] = "w-",
    group: str | None = None,
    encoding: Mapping[Hashable, Mapping[str, Any]] | None = None,
    compression_level: int | None = 3,
    zarr_format: Literal[2, 3] = 3,
    max_in_flight: int = 2,
    retries: int = 2,
    progress: bool | None = None,
    rechunk: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> TiledWriteReport:
    """Write a large lazy datacube to Zarr tile by tile, resumably.

    The store is created once as a *template* (metadata, coordinates, CRS; no data chunks),
    then each tile (a block of whole dask chunks over the spatial dims, all times) is
    computed and written into its region, and a done-marker for the tile is written *after*
    its data. If the process dies, calling ``write_tiled`` again with the same data and
    ``resume=True`` reopens the store and computes only the tiles not marked done.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The (usually dask-backed) cube. Numpy-backed variables are chunked by 1024 px.
        Variables without both spatial dims are computed and written with the template.
    store : str, os.PathLike or zarr store
        Where to write.
    tile : int, (int, int) or dict, optional
        Tile size in pixels along the ``(y, x)``-like spatial dims (an int for both, a pair,
        or ``{dim: size}``); each must be a multiple of the dask chunk size along that dim
        (or cover the dim). Default: one dask chunk per tile.
    resume : bool
        When the store exists (and ``mode="w-"``): True (default) continues it if its layout
        matches the data; False raises.
    mode : {"w-", "w"}
        ``"w-"`` (default) creates the store or, with ``resume=True``, continues it; ``"w"``
        deletes an existing store and starts afresh.
    group : str, optional
        Zarr group path inside the store.
    encoding, compression_level, zarr_format, rechunk, storage_options
        As for :func:`to_zarr` (used when the template is created; a resumed store keeps its
        own encoding).
    max_in_flight : int
        Most tiles computed at the same time (default 2). Memory use is about this many
        tiles' worth of intermediate data, whatever the size of the cube.
    retries : int
        How many times a failing tile is retried (with a short back-off) before giving up.
    progress : bool, optional
        Show a tile progress bar; ``None`` (default) shows it only when stderr is a terminal.

    Returns
    -------
    TiledWriteReport
        Tiles total, skipped (already done) and written; see :class:`TiledWriteReport`.

    Raises
    ------
    InvalidParameterError
        The store exists with another layout (or was not written by ``write_tiled``), or
        exists and ``resume=False``. The message says to use ``mode="w"`` or another path.
    ChunkingError
        Irregular chunks, spatial chunks that differ between variables, or a tile size that is
        not a multiple of the chunk size.
    Exception
        The error of a tile that still fails after ``retries`` retries, with a note saying how
        many tiles are done. Tiles finished before the failure stay marked done.

    See Also
    --------
    to_zarr, open_zarr, tile_status

    Notes
    -----
    - The done-markers live in the same store, in a uint8 array ``_xfusion_tiles`` with one
      chunk (one object/file) per tile; :func:`open_zarr` hides it. Chunk presence cannot be
      used instead, because zarr 3 does not store all-NaN chunks.
    - The store layout (spatial dims, shape, tile size, variables with their dims, dtypes and
      chunks, CRS and a hash of the coordinate labels) is saved as the group attribute
      ``"xfusion:tiled_write"`` and compared on resume.
    - Tiles are computed with the current dask scheduler: the threaded scheduler by default,
      or a ``distributed.Client`` when one is active. At most ``max_in_flight`` tile graphs
      exist at once, which keeps both memory and graph size flat.
    - A tile killed between its data write and its marker write is simply recomputed on
      resume; tile writes are idempotent.

    Examples
    --------
    >>> report = xfusion.io.write_tiled(fused, "out.zarr", tile=4096)  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    64/64 tiles done in out.zarr (64 written, 0 skipped as already done; ...)
    """
    t0 = time.perf_counter()
    if mode not in ("w-", "w"):
        raise InvalidParameterError(
            f"write_tiled() mode must be 'w-' (create, or resume with resume=True) or 'w' "
            f"(overwrite), found {mode!r}."
        )
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise InvalidParameterError(
            f"max_in_flight must be a positive int, found {max_in_flight!r}. Use 1 to compute "
            "one tile at a time."
        )
    if not isinstance(retries, int) or retries < 0:
        raise InvalidParameterError(f"retries must be an int >= 0, found {retries!r}.")

    ds, sdims, tiled = _prepare_tiled(_as_dataset(obj), rechunk=rechunk)
    shape = (int(ds.sizes[sdims[0]]), int(ds.sizes[sdims[1]]))
    chunks = (int(ds[tiled[0]].chunksizes[sdims[0]][0]), int(ds[tiled[0]].chunksizes[sdims[1]][0]))
    tile_px = _tile_size(tile, sdims, chunks, shape)
    layout = json.loads(json.dumps(_layout(ds, sdims, tiled, tile_px)))
    grid = (int(layout["grid"][0]), int(layout["grid"][1]))
    where = _store_repr(store)

    existing = None if mode == "w" else _existing_group(store, group, storage_options)
    if existing is not None:
        fix = f"Pass mode='w' to overwrite {where!r}, or write to another path."
        if not resume:
            raise InvalidParameterError(
                f"The store {where!r} already exists and resume=False. Pass resume=True to "
                f"finish its missing tiles. {fix}"
            )
        problem = resume_problem(existing, layout)
        if problem:
            raise InvalidParameterError(
                f"The store {where!r} cannot be resumed with this data: {problem}. {fix}"
            )
        zgroup = _open_group(store, group, "r+", storage_options)
        markers = zgroup[MARKER_NAME]
    else:
        # template: metadata, coordinates and small variables; no data chunks
        to_zarr(
            ds,
            store,
            mode="w" if mode == "w" else "w-",
            group=group,
            encoding=encoding,
            compression_level=compression_level,
            zarr_format=zarr_format,
            compute=False,
            storage_options=storage_options,
        )
        zgroup = _open_group(store, group, "r+", storage_options)
        markers = _create_markers(zgroup, sdims, layout["grid"], zarr_format)
        # the layout attribute goes last: a store that has it always has its markers
        zgroup.attrs[LAYOUT_ATTR] = json.dumps(layout)

    done = np.asarray(markers[...]) > 0
    skipped = int(done.sum())
    todo = [(iy, ix) for iy in range(grid[0]) for ix in range(grid[1]) if not done[iy, ix]]
    written = _run_tiles(
        ds[tiled],
        todo,
        store=store,
        group=group,
        markers=markers,
        sdims=sdims,
        tile=tile_px,
        shape=shape,
        zarr_format=zarr_format,
        storage_options=storage_options,
        max_in_flight=max_in_flight,
        retries=retries,
        progress=_show_progress(progress),
        n_total=grid[0] * grid[1],
        n_done=skipped,
        where=where,
    )
    return TiledWriteReport(
        store=where,
        grid=grid,
        tile_shape=tile_px,
        tiles_total=grid[0] * grid[1],
        tiles_skipped=skipped,
        tiles_written=written,
        elapsed_s=time.perf_counter() - t0,
    )


def _run_tiles(
    ds: xr.Dataset,
    todo: list[tuple[int, int]],
    *,
    store: StoreLike,
    group: str | None,
    markers: Any,
    sdims: tuple[str, str],
    tile: tuple[int, int],
    shape: tuple[int, int],
    zarr_format: int,
    storage_options: Mapping[str, Any] | None,
    max_in_flight: int,
    retries: int,
    progress: bool,
    n_total: int,
    n_done: int,
    where: str,
) -> int:
    """Compute and write the tiles in ``todo``; return how many were written."""
    from tqdm.auto import tqdm

    data = ds.drop_vars(list(ds.coords))  # coordinates were written with the template
    lock = threading.Lock()
    # the caller's scheduler (a Client made current with `as_current()` is thread-local)
    scheduler = dask.base.get_scheduler()

    def job(iy: int, ix: int) -> tuple[int, int]:
        region = _tile_slices(iy, ix, tile, shape, sdims)
        for attempt in range(retries + 1):
            try:
                pending = data.isel(region).to_zarr(
                    store,
                    group=group,
                    mode="r+",
                    region=region,
                    compute=False,
                    consolidated=False,
                    zarr_format=zarr_format,
                    storage_options=dict(storage_options) if storage_options else None,
                )
                dask.compute(pending, scheduler=scheduler)
                break
            except Exception:
                if attempt == retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10.0))
        with lock:  # data is on the store: now, and only now, mark the tile done
            markers[iy, ix] = 1
        return iy, ix

    written = 0
    failure: tuple[tuple[int, int], BaseException] | None = None
    bar = tqdm(
        total=n_total,
        initial=n_done,
        disable=not progress,
        unit="tile",
        desc="xfusion.write_tiled",
    )
    tiles: Iterator[tuple[int, int]] = iter(todo)
    with (
        bar,
        cf.ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="xfusion-tile") as pool,
    ):
        running: dict[cf.Future[tuple[int, int]], tuple[int, int]] = {}

        def submit_next() -> None:
            nxt = next(tiles, None)
            if nxt is not None:
                running[pool.submit(job, *nxt)] = nxt

        for _ in range(max_in_flight):
            submit_next()
        while running:
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                ij = running.pop(fut)
                err = fut.exception()
                if err is None:
                    written += 1
                    bar.update(1)
                    if failure is None:
                        submit_next()
                elif failure is None:
                    failure = (ij, err)
    if failure is not None:
        (iy, ix), err = failure
        region = _tile_slices(iy, ix, tile, shape, sdims)
        span = ", ".join(f"{d}[{s.start}:{s.stop}]" for d, s in region.items())
        err.add_note(
            f"xfusion.io.write_tiled: tile ({iy}, {ix}) ({span}) failed after {retries + 1} "
            f"attempt(s); {n_done + written}/{n_total} tiles are done and recorded in {where!r}. "
            "Fix the cause and call write_tiled(..., resume=True) again to finish the rest."
        )
        raise err
    return written
