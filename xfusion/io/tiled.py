"""Resumable tile-by-tile Zarr writes: a template written once, regions, done-markers.

:func:`write_tiled` computes and writes a lazy Dataset one spatial tile at a time into a Zarr
store whose template (every array, coordinates and CRS attributes, no chunk data) is written
first; a uint8 done-marker per tile is set only after the tile's data is stored, so a killed
write resumes where it stopped (:func:`tile_status`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion.cube.validate import spatial_dims
from xfusion.errors import (
    ChunkingError,
    InvalidParameterError,
    MissingDimensionError,
)
from xfusion.io.zarr import (
    COMPLETE_ATTR,
    COUNTS_NAME,
    DEFAULT_SPATIAL_CHUNK,
    LAYOUT_ATTR,
    MARKER_NAME,
    StoreLike,
    _as_dataset,
    _check_or_fix_chunks,
    _is_dask,
    _show_progress,
    _store_repr,
    _time_label,
    _try_spatial,
    existing_group,
    open_group,
    to_zarr,
    warn_empty,
)

__all__ = ["TiledWriteReport", "resume_problem", "tile_status", "write_tiled"]

_LAYOUT_VERSION = 1


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
    valid_fraction: Mapping[str, tuple[float, ...]] | None = None
    """Per variable with a ``time`` dim, the share of its pixels that hold a value at each
    time, over every tile written so far (None while tiles are missing)."""
    times: tuple[str, ...] = ()
    """The time labels of :attr:`valid_fraction` (``YYYY-MM-DD`` or full timestamps)."""

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


def tiled_layout(
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


def create_counts(zgroup: Any, sdims: tuple[str, str], grid: list[int], nvar: int, ntime: int,
                  zarr_format: int) -> Any:
    """The per-tile valid-pixel counts ``(tile_y, tile_x, variable, time)`` of a tiled write."""
    dims = [f"_xfusion_tile_{d}" for d in sdims] + ["_xfusion_var", "_xfusion_time"]
    kw: dict[str, Any] = {
        "name": COUNTS_NAME,
        "shape": (*grid, max(nvar, 1), max(ntime, 1)),
        "chunks": (1, 1, max(nvar, 1), max(ntime, 1)),
        "dtype": "int64",
        "fill_value": -1,
        "compressors": None,
        "overwrite": True,
        "attributes": {"description": "xfusion.io.write_tiled: valid pixels per tile, variable "
                       "and time (-1: tile not written)"},
    }
    if zarr_format == 3:
        kw["dimension_names"] = dims
    else:
        kw["attributes"]["_ARRAY_DIMENSIONS"] = dims
    return zgroup.create_array(**kw)


def create_markers(zgroup: Any, sdims: tuple[str, str], grid: list[int], zarr_format: int) -> Any:
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
    zgroup = existing_group(store, group, storage_options)
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
        Report progress per tile: ``None`` (default) follows the session switch
        (:func:`xfusion.set_progress`, ``XFUSION_PROGRESS=0`` silences); a ``tqdm.auto`` bar in
        Jupyter and terminals, progress lines elsewhere.

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
    layout = json.loads(json.dumps(tiled_layout(ds, sdims, tiled, tile_px)))
    grid = (int(layout["grid"][0]), int(layout["grid"][1]))
    where = _store_repr(store)
    timed = [n for n in tiled if "time" in ds[n].dims]

    existing = None if mode == "w" else existing_group(store, group, storage_options)
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
        zgroup = open_group(store, group, "r+", storage_options)
        markers = zgroup[MARKER_NAME]
        counts = zgroup.get(COUNTS_NAME, None)
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
        zgroup = open_group(store, group, "r+", storage_options)
        markers = create_markers(zgroup, sdims, layout["grid"], zarr_format)
        counts = create_counts(zgroup, sdims, layout["grid"], len(timed),
                               int(ds.sizes.get("time", 1)), zarr_format)
        zgroup.attrs[COMPLETE_ATTR] = False  # until the last tile lands
        # the layout attribute goes last: a store that has it always has its markers
        zgroup.attrs[LAYOUT_ATTR] = json.dumps(layout)

    done = np.asarray(markers[...]) > 0
    skipped = int(done.sum())
    todo = [(iy, ix) for iy in range(grid[0]) for ix in range(grid[1]) if not done[iy, ix]]
    if todo and zgroup.attrs.get(COMPLETE_ATTR) is not False:
        zgroup.attrs[COMPLETE_ATTR] = False
    written = _run_tiles(
        ds[tiled],
        todo,
        store=store,
        group=group,
        markers=markers,
        counts=counts,
        timed=timed,
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
    zgroup.attrs[COMPLETE_ATTR] = True
    fractions, labels = _valid_fractions(ds, counts, timed, sdims)
    report = TiledWriteReport(
        store=where,
        grid=grid,
        tile_shape=tile_px,
        tiles_total=grid[0] * grid[1],
        tiles_skipped=skipped,
        tiles_written=written,
        elapsed_s=time.perf_counter() - t0,
        valid_fraction=fractions,
        times=labels,
    )
    warn_empty(fractions, labels, where=where, pixels=int(shape[0]) * int(shape[1]))
    return report


def _valid_fractions(ds: xr.Dataset, counts: Any, timed: Sequence[Hashable],
                     sdims: tuple[str, str]) -> tuple[dict[str, tuple[float, ...]] | None,
                                                      tuple[str, ...]]:
    """Share of valid pixels per variable and time from the per-tile counts (all tiles)."""
    if counts is None or not timed:
        return None, ()
    c = np.asarray(counts[...])
    if (c < 0).any():
        return None, ()
    npix = int(ds.sizes[sdims[0]]) * int(ds.sizes[sdims[1]])
    total = c.sum(axis=(0, 1))
    labels = tuple(_time_label(t) for t in np.asarray(ds["time"].values))
    return {str(n): tuple(float(v) / npix for v in total[i]) for i, n in enumerate(timed)}, labels


def _run_tiles(
    ds: xr.Dataset,
    todo: list[tuple[int, int]],
    *,
    store: StoreLike,
    group: str | None,
    markers: Any,
    counts: Any = None,
    timed: Sequence[Hashable] = (),
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
    from xfusion._progress import Progress

    data = ds.drop_vars(list(ds.coords))  # coordinates were written with the template
    lock = threading.Lock()
    # the caller's scheduler (a Client made current with `as_current()` is thread-local)
    scheduler = dask.base.get_scheduler()

    def job(iy: int, ix: int) -> tuple[int, int]:
        region = _tile_slices(iy, ix, tile, shape, sdims)
        for attempt in range(retries + 1):
            try:
                # the tile in memory once: written, and its valid pixels counted
                (part,) = dask.compute(data.isel(region), scheduler=scheduler)
                part.to_zarr(
                    store,
                    group=group,
                    mode="r+",
                    region=region,
                    consolidated=False,
                    zarr_format=zarr_format,
                    storage_options=dict(storage_options) if storage_options else None,
                )
                valid = [part[n].notnull().sum([d for d in part[n].dims if d != "time"]).values
                         for n in timed]
                break
            except Exception:
                if attempt == retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 10.0))
        with lock:  # data is on the store: now, and only now, mark the tile done
            if counts is not None and timed:
                counts[iy, ix] = np.stack([np.asarray(v, dtype=np.int64) for v in valid])
            markers[iy, ix] = 1
        return iy, ix

    written = 0
    failure: tuple[tuple[int, int], BaseException] | None = None
    bar = Progress(n_total, initial=n_done, progress=progress, unit="tile",
                   desc="xfusion.write_tiled")
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
