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

import os
import sys
from collections.abc import Hashable, Mapping, Sequence
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

__all__ = ["open_zarr", "to_zarr"]

StoreLike = Any
"""A path (``str`` / ``os.PathLike``), an fsspec URL, or a zarr store object."""

COUNTS_NAME = "_xfusion_valid"
"""Name of the per-tile valid-pixel count array that :func:`write_tiled` keeps in the store."""
COMPLETE_ATTR = "xfusion:complete"
"""Group attribute of a tile-by-tile store: False until the last tile is written, then True.
:func:`open_zarr` warns (:class:`~xfusion.errors.IncompleteStoreWarning`) on False."""
MARKER_NAME = "_xfusion_tiles"
"""Name of the uint8 done-marker array that :func:`write_tiled` keeps in the store."""

LAYOUT_ATTR = "xfusion:tiled_write"
"""Group attribute holding the layout of a :func:`write_tiled` store (JSON)."""

DEFAULT_SPATIAL_CHUNK = 1024
"""Zarr chunk size along each spatial dim for numpy-backed variables."""


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

# the published registrations (geozarr-toolkit, EOPF GeoZarr): names end with the colon of
# their attribute prefix, and readers key on the UUIDs
_PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
_SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial:",
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


def check_writable(store: StoreLike) -> None:
    """Raise :class:`OutputWriteError` when a local store path cannot be written."""
    from xfusion.errors import OutputWriteError

    if not isinstance(store, str | os.PathLike) or "://" in os.fspath(store):
        return  # a store object or an fsspec URL: its own errors name it
    path = os.path.abspath(os.fspath(store))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputWriteError(
            f"Cannot write the Zarr store {os.fspath(store)!r}: the folder {folder!r} does not "
            "exist. Create it first."
        )
    if not os.access(folder, os.W_OK):
        raise OutputWriteError(
            f"Cannot write the Zarr store {os.fspath(store)!r}: {folder!r} is not writable. "
            "Choose another output path."
        )


def _store_repr(store: StoreLike) -> str:
    if isinstance(store, str | os.PathLike):
        return os.fspath(store)
    return repr(store)


def _show_progress(progress: bool | None) -> bool:
    from xfusion._progress import enabled

    return enabled(progress)


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
    from xfusion._progress import Progress, dask_progress, interactive

    client = _active_client()
    if client is not None:
        fut = client.compute(delayed)
        if interactive():
            from distributed import progress as dprogress

            dprogress(fut)
        else:
            with Progress(1, desc=desc, unit="write"):
                fut.result()
        fut.result()
        return
    with dask_progress(desc, progress=True):
        dask.compute(delayed)


def _empty_planes(ds: xr.Dataset, store: StoreLike, group: str | None,
                  sdims: tuple[str, str] | None, zarr_format: int) -> dict[str, tuple[float, ...]]:
    """Per float (time, y, x) variable of a freshly written local store: 0.0 for each time
    plane without any stored chunk, else 1.0 (NaN-only chunks are never stored, so a plane
    without chunk files has no valid pixel; with several times per chunk only a whole absent
    chunk row is known empty). Found by listing the chunk keys of the Zarr
    format's default key encoding, without reading data; {} for non-local stores."""
    if sdims is None or "time" not in ds.dims or not isinstance(store, (str, os.PathLike)):
        return {}
    root = os.fspath(store)
    if "://" in root or not os.path.isdir(root):
        return {}
    if group:
        root = os.path.join(root, *str(group).strip("/").split("/"))
    nt = int(ds.sizes["time"])
    out: dict[str, tuple[float, ...]] = {}
    for name, var in ds.data_vars.items():
        if set(var.dims) != {"time", *sdims} or not np.issubdtype(var.dtype, np.floating):
            continue
        axis = var.dims.index("time")
        where = os.path.join(root, str(name))
        seen: set[int] = set()
        try:
            if zarr_format == 3:
                base = os.path.join(where, "c")
                if axis == 0:
                    seen = {int(e.name) for e in os.scandir(base) if e.name.isdigit()} \
                        if os.path.isdir(base) else set()
                else:
                    for dirpath, _, files in os.walk(base):
                        parts = os.path.relpath(dirpath, base).split(os.sep)
                        for f in files:
                            key = [*parts, f] if parts != ["."] else [f]
                            if len(key) == var.ndim and key[axis].isdigit():
                                seen.add(int(key[axis]))
            else:
                for e in os.scandir(where):
                    key = e.name.split(".")
                    if len(key) == var.ndim and key[axis].isdigit():
                        seen.add(int(key[axis]))
        except OSError:
            continue
        try:
            import zarr

            ct = int(zarr.open_array(where, mode="r").chunks[axis])
        except Exception:  # noqa: S112 - an unreadable array: say nothing rather than guess
            continue
        out[str(name)] = tuple(1.0 if k // ct in seen else 0.0 for k in range(nt))
    return out


def _time_label(t: Any) -> str:
    s = str(np.datetime64(t, "s"))
    return s[:10] if s.endswith("T00:00:00") else s


def warn_empty(fractions: Mapping[str, Sequence[float]] | None, labels: Sequence[str], *,
               where: str, pixels: int | None = None) -> None:
    """Warn (:class:`~xfusion.errors.EmptyPredictionWarning`) about variable/time planes with
    no valid pixel in a written result (``pixels``: the size of one plane)."""
    import warnings

    from xfusion.errors import EmptyPredictionWarning

    if not fractions:
        return
    of = f" (0 of {pixels} px)" if pixels else ""
    for name, frac in fractions.items():
        empty = [labels[k] for k, f in enumerate(frac) if f == 0.0]
        if empty:
            warnings.warn(
                EmptyPredictionWarning(
                    f"{where}: variable {name!r} has no valid pixel{of} at {len(empty)} of "
                    f"{len(frac)} time(s): {empty[:6]!r}{' ...' if len(empty) > 6 else ''}. "
                    "Check the inputs there (coarse image all NaN, fine pair outside the "
                    "method's data range or in another unit)."
                ),
                stacklevel=3,
            )


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
    stac: bool | Mapping[str, Any] = False,
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
        Report progress while computing: ``None`` (default) follows the session switch
        (:func:`xfusion.set_progress`, ``XFUSION_PROGRESS=0`` silences). A ``tqdm.auto`` bar in
        Jupyter and terminals (``distributed.progress`` when a Client is active), progress
        lines elsewhere.
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
    stac : bool or dict
        Also write a STAC Item describing the store next to it (``out.zarr`` ->
        ``out.stac.json``; see :func:`xfusion.io.stac_item.stac_item`): footprint, time
        range, the ``proj`` and ``datacube`` extensions, the method and parameters, links to
        the inputs. A dict is passed on (``id=``, ``derived_from=[...]``, ``properties=``).
        Local stores only.

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
    - A float variable with no valid pixel at some time (a target the method could not
      predict) raises an :class:`~xfusion.errors.EmptyPredictionWarning` naming the variable,
      the times and the counts (local stores; found from the stored chunk keys, as chunks
      holding only NaN are not stored, so nothing is read back).
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
    check_writable(store)
    ds = _check_or_fix_chunks(ds, rechunk=rechunk)
    if mode == "w-" and existing_group(store, group, storage_options) is not None:
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
    if region is None and mode in ("w-", "w"):
        sd = _try_spatial(ds)[0]
        planes = _empty_planes(ds, store, group, sd, zarr_format)
        for name, frac in list(planes.items()):  # dates a cube declares unobserved are no news
            flag = ds.coords.get(f"observed_{name}")
            if flag is not None and flag.dims == ("time",):
                seen = np.asarray(flag.values, dtype=bool)
                planes[name] = tuple(f if seen[k] else 1.0 for k, f in enumerate(frac))
        if planes and sd is not None:
            labels = tuple(_time_label(v) for v in np.asarray(ds["time"].values))
            warn_empty(planes, labels, where=_store_repr(store),
                       pixels=int(ds.sizes[sd[0]]) * int(ds.sizes[sd[1]]))
    if stac:
        if not isinstance(store, str | os.PathLike) or "://" in os.fspath(store):
            raise InvalidParameterError(
                f"to_zarr(stac=...) writes the item next to a local store; {_store_repr(store)!r}"
                " is not a local path. Build it with xfusion.io.stac_item.stac_item() instead."
            )
        from xfusion.io.stac_item import write_stac_item

        write_stac_item(ds, store, **(dict(stac) if isinstance(stac, Mapping) else {}))
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
        Lazy (dask-backed) dataset. The done-markers and counts of :func:`write_tiled` are
        hidden, and so is the store attribute ``"xfusion:complete"`` (False while a
        tile-by-tile write is unfinished: plain ``xr.open_zarr``/zarr readers can check it).

    Warns
    -----
    IncompleteStoreWarning
        When the store's tile-by-tile write was interrupted (``attrs["xfusion:complete"]``
        is False): the missing tiles read as NaN until the write is run again.
    """
    kwargs.setdefault("decode_coords", "all")
    drop = kwargs.pop("drop_variables", None)
    drop = [drop] if isinstance(drop, str) else list(drop or [])
    drop += [MARKER_NAME, COUNTS_NAME]
    ds = xr.open_zarr(store, group=group, consolidated=consolidated, drop_variables=drop, **kwargs)
    ds.attrs.pop(LAYOUT_ATTR, None)
    if ds.attrs.pop(COMPLETE_ATTR, None) is False:
        import warnings

        from xfusion.errors import IncompleteStoreWarning

        done = ""
        try:
            import zarr

            grp = zarr.open_group(store, path=group, mode="r")
            if MARKER_NAME in grp:
                m = np.asarray(grp[MARKER_NAME][...])
                done = f" ({int((m > 0).sum())} of {m.size} tiles written)"
        except Exception:  # the warning matters more than the count
            done = ""
        warnings.warn(
            IncompleteStoreWarning(
                f"The store {_store_repr(store)!r} is incomplete{done}: its write was "
                "interrupted, and the missing tiles read as NaN. Run the same command (or "
                "write_tiled with the same data) again to finish it."
            ),
            stacklevel=2,
        )
    return ds


open = open_zarr


# --------------------------------------------------------------------------------------------
# write_tiled
# --------------------------------------------------------------------------------------------


def open_group(store: StoreLike, group: str | None, mode: str, storage_options: Any) -> Any:
    import zarr

    kw: dict[str, Any] = {"mode": mode}
    if group:
        kw["path"] = group
    if storage_options:
        kw["storage_options"] = dict(storage_options)
    return zarr.open_group(store, **kw)


def existing_group(store: StoreLike, group: str | None, storage_options: Any) -> Any:
    import zarr.errors

    try:
        return open_group(store, group, "r", storage_options)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None
    except zarr.errors.ContainsArrayError as err:
        raise InvalidParameterError(
            f"The store {_store_repr(store)!r} holds a zarr array, not a group, at "
            f"{group or '/'!r}. Pass another path, or mode='w' to overwrite it."
        ) from err
