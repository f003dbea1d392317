"""``xfusion.run(job)``: tile-batched, resumable processing of an area of any size into Zarr.

How a run works
---------------
1. The output grid (an odc-geo ``GeoBox`` over the AOI in the job's CRS, pixel size and anchor)
   is cut into square tiles of ``job.tile`` pixels. The output time axis is ``job.targets`` or
   every day of the period with a coarse item over the AOI (one metadata search).
2. The Zarr v3 store is written once as a *template* (coordinates, CRS, GeoZarr and provenance
   attributes, optional shards of one tile; no data) with a done-marker array (one chunk per
   tile). An existing store is resumed when it was written by the same job.
3. Tiles not marked done are processed in batches: per batch the fine and coarse collections
   are searched over the batch's footprint, the items signed (Planetary Computer tokens are
   fresh for every batch), and one task per tile is submitted. The task runs on a Dask worker
   (or a local thread without a cluster): it loads the tile plus a margin (the method's
   window) with :func:`xfusion.load_pair`, builds the method's lazy graph, computes it with the
   worker's threads and writes the tile's region. The driver marks the tile done only after the
   task returns, so a crash or a kill at any point loses at most the tiles in flight.
4. A failing tile is retried (re-searched and re-signed) up to ``job.retries`` times, then
   reported; the other tiles go on. Progress (tiles, pixel/s, ETA) is logged on the
   ``"xfusion.run"`` logger and shown as a bar on a terminal.

Only the graphs of the tiles in flight exist at any time, whatever the AOI size.

Tiles are computed independently: results that depend on a whole image (the global similarity
threshold of STARFM's USDA rule, STTFN's per-run normalisation when it trains per tile) are
computed over each tile plus its margin. The output is identical for any cluster layout and for
interrupted-and-resumed runs.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import sys
import time as _time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from xfusion._progress import emit
from xfusion.errors import (
    EmptySearchError,
    InvalidParameterError,
    JobError,
    XFusionError,
)
from xfusion.jobs._store import (
    DONE,
    EMPTY,
    _add_items,
    _open_or_create,
    describe_store,
    finished_markers,
)
from xfusion.jobs._tile import run_tile
from xfusion.jobs.spec import Job, load_job

__all__ = ["RunReport", "TileFailure", "plan", "run"]

log = logging.getLogger("xfusion.run")




# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileFailure:
    """A tile that still failed after its retries."""

    tile: tuple[int, int]
    """Tile index along the ``(y, x)``-like dims."""
    bounds: tuple[float, float, float, float]
    """Tile footprint ``(left, bottom, right, top)`` in the output CRS."""
    attempts: int
    """How many times it was tried."""
    error: str
    """The last error (type and message)."""


@dataclass
class RunReport:
    """What :func:`run` did (also printed by ``xfusion run``)."""

    store: str
    grid: tuple[int, int]
    tile: int
    tiles_total: int
    tiles_skipped: int = 0
    """Tiles already done by an earlier run (not recomputed)."""
    tiles_written: int = 0
    """Tiles computed and written by this run."""
    tiles_empty: int = 0
    """Tiles with nothing to compute in this run (no items, no usable pair)."""
    tiles_outside: int = 0
    """Tiles of the grid outside the AOI geometry (never computed)."""
    failed: list[TileFailure] = field(default_factory=list)
    computed: list[tuple[int, int]] = field(default_factory=list)
    """Tiles whose task ran in this run (written or empty), in completion order."""
    pixels: int = 0
    """Output pixels written by this run (tile area x predicted dates)."""
    elapsed_s: float = 0.0
    empty_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def tiles_done(self) -> int:
        """Tiles marked done in the store after this run."""
        return self.tiles_skipped + self.tiles_written + self.tiles_empty + self.tiles_outside

    @property
    def ok(self) -> bool:
        """True when every tile is done (none failed)."""
        return not self.failed and self.tiles_done == self.tiles_total

    @property
    def pixels_per_s(self) -> float:
        """Output pixels per second of this run."""
        return self.pixels / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        head = (
            f"{self.tiles_done}/{self.tiles_total} tiles done in {self.store} (grid "
            f"{self.grid[0]}x{self.grid[1]} of {self.tile} px): {self.tiles_written} written, "
            f"{self.tiles_empty} empty, {self.tiles_outside} outside the AOI, "
            f"{self.tiles_skipped} skipped as already done, "
            f"{len(self.failed)} failed; {_fmt_px(self.pixels)} in {self.elapsed_s:.1f} s "
            f"({_fmt_px(self.pixels_per_s)}/s)"
        )
        lines = [head]
        lines += [f"  empty ({n}): {r}" for r, n in sorted(self.empty_reasons.items())]
        lines += [
            f"  FAILED tile {f.tile} after {f.attempts} attempt(s): {f.error}" for f in self.failed
        ]
        return "\n".join(lines)


def _fmt_px(n: float) -> str:
    """Pixels (or pixels per second) with a readable unit: 850 px, 12.3 kpx, 1.20 Mpx, 3.4 Gpx."""
    for unit, scale in (("Gpx", 1e9), ("Mpx", 1e6), ("kpx", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} px"


# --------------------------------------------------------------------------------------------
# planning: grid, tiles, margin, variables
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The output grid and its tiling (see :func:`plan`)."""

    geobox: Any
    """Output ``odc.geo.geobox.GeoBox``."""
    dims: tuple[str, str]
    """Spatial dimension names of the output."""
    tile: int
    grid: tuple[int, int]
    margin: int
    aoi: Any
    """The AOI as an ``odc.geo.geom.Geometry`` (output CRS)."""
    variables: tuple[str, ...]
    """Output variable names."""

    def tile_slices(self, iy: int, ix: int) -> tuple[slice, slice]:
        """Pixel slices of a tile along the spatial dims."""
        h, w = self.geobox.shape
        t = self.tile
        return slice(iy * t, min((iy + 1) * t, h)), slice(ix * t, min((ix + 1) * t, w))

    def tile_geobox(self, iy: int, ix: int) -> Any:
        """GeoBox of a tile (without margin)."""
        ys, xs = self.tile_slices(iy, ix)
        return self.geobox[ys, xs]

    def load_geobox(self, iy: int, ix: int) -> Any:
        """GeoBox read for a tile: the tile plus ``margin`` pixels on every side."""
        g = self.tile_geobox(iy, ix)
        return g.pad(self.margin) if self.margin else g

    def tiles(self) -> list[tuple[int, int]]:
        """Every tile index, row by row."""
        return [(iy, ix) for iy in range(self.grid[0]) for ix in range(self.grid[1])]

    def outside(self) -> set[tuple[int, int]]:
        """Tiles that do not intersect the AOI (a GeoJSON AOI need not fill its bounding box)."""
        return {t for t in self.tiles() if not self.tile_geobox(*t).extent.intersects(self.aoi)}


def _aoi(job: Job) -> Any:
    from odc.geo.geom import Geometry, box

    gj = job.geometry_mapping()
    if gj is not None:
        try:
            geom = Geometry(gj, "EPSG:4326")
        except Exception as err:
            raise JobError(
                f"Job field 'geometry' is not a valid GeoJSON geometry: {err}."
            ) from None
        if job.bbox is not None:
            geom = geom & box(*job.bbox, job.bbox_crs).to_crs("EPSG:4326")
        if geom.is_empty:
            raise JobError("The job's AOI is empty (geometry and bbox do not intersect).")
        return geom
    try:
        return box(*job.bbox, job.bbox_crs)
    except Exception as err:
        raise JobError(f"Job field 'bbox_crs' {job.bbox_crs!r} is not a CRS: {err}.") from None


def _fine_preset(job: Job) -> Any:
    from xfusion.stac.presets import get_preset, preset_for_collection

    try:
        return get_preset(job.fine)
    except XFusionError:
        return preset_for_collection(job.fine)


def _output_crs(job: Job, aoi: Any) -> Any:
    from odc.geo.crs import CRS

    if job.crs == "utm":
        crs = CRS.utm(aoi.to_crs("EPSG:4326"))
        p = _fine_preset(job)
        if p is not None and p.utm_north_only and crs.epsg is not None and crs.epsg > 32700:
            crs = CRS(f"EPSG:{crs.epsg - 100}")  # Landsat: northern zone, negative northings
        return crs
    try:
        return CRS(job.crs)
    except Exception as err:
        raise JobError(
            f"Job field 'crs': {job.crs!r} is not a CRS ({err}). Give e.g. 'EPSG:32633', "
            "'EPSG:5070' or 'utm'."
        ) from None


def _margin(job: Job, resolution: float) -> int:
    """The job's margin, or (``"auto"``) the method's halo rule from the registry."""
    if job.margin != "auto":
        return int(job.margin)
    from xfusion.methods import get

    try:
        return get(job.method).job_halo(job.params, resolution=resolution, weights=job.weights)
    except InvalidParameterError as err:
        raise JobError(f"Job params: {err}") from None


def _variables(job: Job) -> tuple[str, ...]:
    from xfusion.stac import band_pairs
    from xfusion.stac.presets import get_preset, preset_for_collection

    def preset(name: str) -> Any:
        try:
            return get_preset(name)
        except XFusionError:
            return preset_for_collection(name)

    try:
        pairs = band_pairs(job.bands, preset(job.fine), preset(job.coarse))
    except InvalidParameterError as err:
        raise JobError(f"Job field 'bands': {err}") from None
    if len(pairs) == 1:
        return ("fine",)
    return tuple(f"fine_{f}" for f, _ in pairs)


def plan(job: Job | Mapping[str, Any] | str | os.PathLike[str], /) -> Plan:
    """Lay out a job: its output grid, tiles, margin and variables (no search, no I/O).

    Parameters
    ----------
    job : Job, mapping or path
        The job (a :class:`Job`, its YAML mapping, or a YAML file).

    Returns
    -------
    Plan
        ``geobox``, ``dims``, ``tile``, ``grid`` (tiles along y, x), ``margin`` (pixels read
        around each tile), ``aoi`` and ``variables``.
    """
    from odc.geo import xy_
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    job = _as_job(job)
    aoi = _aoi(job)
    crs = _output_crs(job, aoi)
    try:
        aoi_out = aoi.to_crs(crs)
    except Exception as err:
        raise JobError(f"The AOI cannot be projected to {crs}: {err}.") from None
    how = job.anchor
    if how == "auto":
        p = _fine_preset(job)
        how = p.grid_anchor if p is not None and p.grid_anchor is not None else "edge"
    anchor = xy_(0.5, 0.5) if how == "center" else xy_(0.0, 0.0)
    gbox = GeoBox.from_bbox(aoi_out.boundingbox, crs, resolution=job.resolution, anchor=anchor)
    h, w = gbox.shape
    grid = (math.ceil(h / job.tile), math.ceil(w / job.tile))
    dims = tuple(str(d) for d in xr_coords(gbox) if d != "spatial_ref")
    return Plan(
        geobox=gbox,
        dims=dims,
        tile=job.tile,
        grid=grid,
        margin=_margin(job, job.resolution),
        aoi=aoi_out,
        variables=_variables(job),
    )


def _as_job(job: Any) -> Job:
    if isinstance(job, Job):
        return job
    if isinstance(job, str | os.PathLike):
        return load_job(job)
    if isinstance(job, Mapping):
        return Job.from_dict(job)
    raise JobError(
        f"job must be an xfusion.Job, a mapping (the YAML form) or a YAML file path, found "
        f"{type(job).__name__}."
    )


# --------------------------------------------------------------------------------------------
# searching
# --------------------------------------------------------------------------------------------
def _lonlat_bbox(geom: Any) -> list[float]:
    bb = geom.to_crs("EPSG:4326").boundingbox
    return [float(bb.left), float(bb.bottom), float(bb.right), float(bb.top)]


def _search(job: Job, role: str, bbox: Sequence[float], keep: Any = None) -> list[Any]:
    """Items of one role over ``bbox`` (lon/lat) in the job's period; [] when none.

    ``keep`` filters the items' JSON before they are parsed (see :func:`_needed_coarse`).
    """
    from xfusion.stac import items_and_preset

    source = job.fine if role == "fine" else job.coarse
    try:
        items, _ = items_and_preset(
            source,
            None,
            role=role,
            bbox=list(bbox),
            time=list(job.time),
            max_cloud=job.max_cloud if role == "fine" else None,
            platform=job.fine_platform if role == "fine" else None,
            url=job.url,
            sign="auto",
            keep=keep,
        )
    except EmptySearchError:
        return []
    return items


def _one_platform(job: Job, items: list[Any]) -> list[Any]:
    """The coarse items of the platform ``load_pair(coarse_platform="auto")`` would keep.

    Done before the items are shipped to the tile, so the tile parses only those.
    """
    if job.coarse_platform != "auto" or not items:
        return items
    from xfusion.stac.presets import get_preset, preset_for_collection

    try:
        p = get_preset(job.coarse)
    except XFusionError:
        p = preset_for_collection(job.coarse)
    if p is None or not p.platforms:
        return items
    plats = {str(it.properties.get("platform", "")).lower() for it in items}
    if len(plats) < 2:
        return items
    first = next((q for q in p.platforms if q in plats), None)
    return [it for it in items if str(it.properties.get("platform", "")).lower() == first]


def _json_span(doc: Mapping[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(start, end) of an item's JSON as naive UTC timestamps; None when it has no date."""
    props = doc.get("properties") or {}

    def ts(v: Any) -> pd.Timestamp | None:
        if not v:
            return None
        try:
            t = pd.Timestamp(v)
        except (TypeError, ValueError):
            return None
        return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t

    dt = ts(props.get("datetime"))
    start = ts(props.get("start_datetime")) or dt
    end = ts(props.get("end_datetime")) or dt
    if start is None or end is None:
        return None
    return start, end


def _needed_coarse(
    job: Job, targets: Sequence[str], fine_items: Sequence[Any]
) -> Callable[[Mapping[str, Any]], bool]:
    """A JSON predicate keeping the coarse items a batch can use.

    Those are the items of a target day and those within the job's tolerance of a fine
    acquisition (the pairs); a long period holds many more coarse items (every day, Terra and
    Aqua, several tiles) that would otherwise all be parsed, shipped to the tiles and parsed
    again. Items without a date are kept.
    """
    from xfusion.stac import item_times

    tol = pd.Timedelta(job.tolerance)
    windows = [(pd.Timestamp(d), pd.Timestamp(d) + pd.Timedelta(days=1)) for d in targets]
    for it in fine_items:
        _, s, e = item_times(it)
        windows.append((s - tol, e + tol))
    plats = job.coarse_platform
    wanted = None
    if plats is not None and plats != "auto":
        wanted = {str(p).lower() for p in ([plats] if isinstance(plats, str) else plats)}

    def keep(doc: Mapping[str, Any]) -> bool:
        if wanted is not None:
            plat = str((doc.get("properties") or {}).get("platform", "")).lower()
            if plat not in wanted:
                return False
        span = _json_span(doc)
        if span is None:
            return True
        s, e = span
        return any(s <= b and e >= a for a, b in windows)

    return keep


def _days(items: Sequence[Any]) -> list[str]:
    from xfusion.stac import item_times

    out = set()
    for it in items:
        start, _, _ = item_times(it)
        out.add(start.strftime("%Y-%m-%d"))
    return sorted(out)


def _target_times(job: Job, pl: Plan) -> np.ndarray:
    if job.targets is not None:
        days = list(job.targets)
    else:
        items = _search(job, "coarse", _lonlat_bbox(pl.aoi))
        days = [d for d in _days(items) if job.time[0] <= d <= job.time[1]]
        if not days:
            raise JobError(
                f"No {job.coarse!r} item over the AOI {_lonlat_bbox(pl.aoi)} in {job.time}: "
                "nothing to predict. Widen `time`, check the collection, or give `targets`."
            )
    return np.array(days, dtype="datetime64[D]").astype("datetime64[ns]")


def _intersects(item: Any, footprint_ll: Any, gbox: Any = None) -> bool:
    """Whether an item's footprint (or, for too coarse footprints, its grid) meets a tile."""
    from odc.geo.geom import Geometry

    geom = getattr(item, "geometry", None)
    if not geom:
        return True
    try:
        if Geometry(geom, "EPSG:4326").intersects(footprint_ll):
            return True
    except Exception:
        return True
    if gbox is None:
        return False
    from xfusion.stac import grid_footprint

    return grid_footprint(item, gbox, list(item.assets)) is not None


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------










# --------------------------------------------------------------------------------------------
# the tile task (runs on a worker)
# --------------------------------------------------------------------------------------------














# --------------------------------------------------------------------------------------------
# executors: a distributed Client, or local threads
# --------------------------------------------------------------------------------------------
class _LocalExecutor:
    def __init__(self, max_in_flight: int) -> None:
        self.pool = cf.ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix="xfusion-run"
        )
        self.threads = max(1, (os.cpu_count() or 1) // max_in_flight)

    def submit(self, payload: dict[str, Any], key: str) -> Any:
        return self.pool.submit(run_tile, payload)

    def wait(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done)

    @staticmethod
    def outcome(fut: Any) -> tuple[Any, BaseException | None]:
        err = fut.exception()
        return (None, err) if err is not None else (fut.result(), None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _ClientExecutor:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.threads = 1

    def submit(self, payload: dict[str, Any], key: str) -> Any:
        return self.client.submit(run_tile, payload, key=key, pure=False)

    def wait(self, futures: Sequence[Any], timeout: float) -> set[Any]:
        from distributed import wait
        from distributed.utils import TimeoutError as DTimeout

        try:
            with self.client.as_current():
                done, _ = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except (TimeoutError, DTimeout):
            return {f for f in futures if f.done()}
        return set(done)

    @staticmethod
    def outcome(fut: Any) -> tuple[Any, BaseException | None]:
        if fut.status == "error":
            return None, fut.exception()
        if fut.status == "cancelled":
            return None, RuntimeError("the tile task was cancelled (a worker was lost?)")
        try:
            return fut.result(), None
        except Exception as err:
            return None, err

    def close(self) -> None:
        pass


def _default_client() -> Any:
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(
    job: Job | Mapping[str, Any] | str | os.PathLike[str],
    /,
    *,
    client: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
    log_every: float = 30.0,
) -> RunReport:
    """Run a fusion job over an area of any size, tile by tile, into a resumable Zarr store.

    Parameters
    ----------
    job : Job, mapping or path
        The job: a :class:`xfusion.Job`, its YAML form as a mapping, or a YAML file (see
        :mod:`xfusion.jobs.spec` for every field).
    client : distributed.Client or False, optional
        Where tiles run. Default: the current default client (e.g. one from
        :func:`xfusion.cluster` or your own ``Client``) when there is one, else local threads
        (one tile at a time, all cores). ``False``: local threads in this process even when a
        default client exists.
    overwrite : bool, default False
        Delete an existing store and start afresh. Without it an existing store of the same
        job is resumed: tiles already done are skipped.
    progress : bool, optional
        Report progress (default: on, unless switched off for the session, see
        :func:`xfusion.set_progress`): a ``tqdm.auto`` bar in Jupyter and terminals, else
        progress lines.
    log_every : float, default 30
        Seconds between progress lines (tiles done, pixel/s, ETA) on the ``"xfusion.run"``
        logger when logging shows its INFO lines, else on stderr.

    Returns
    -------
    RunReport
        Tiles written, empty, skipped and failed (with their errors), pixels and pixel/s.
        Failed tiles do not raise: check ``report.ok``; re-running the job retries them.

    Raises
    ------
    JobError
        A malformed job, an AOI without coarse data, or an existing store written by another
        job.
    StacApiError, SigningError
        When the STAC API cannot be searched at all (before any tile runs).

    Examples
    --------
    >>> with xfusion.cluster() as client:  # doctest: +SKIP
    ...     report = xfusion.run("conus-2020-07-14.yaml")
    >>> print(report)  # doctest: +SKIP
    """
    from xfusion._progress import Progress, enabled
    from xfusion.io.zarr import MARKER_NAME

    t0 = _time.perf_counter()
    job = _as_job(job)
    pl = plan(job)
    done = None if overwrite else finished_markers(job, pl)
    if done is not None:  # every tile done: nothing to search, sign or compute
        outside = pl.outside()
        report = RunReport(store=job.store, grid=pl.grid, tile=pl.tile,
                           tiles_total=pl.grid[0] * pl.grid[1],
                           tiles_skipped=int((done > 0).sum()) - len(outside),
                           tiles_outside=len(outside))
        report.elapsed_s = _time.perf_counter() - t0
        log.info("xfusion.run %s: every tile is already done in %s", job.name or job.store,
                 job.store)
        return report
    times = _target_times(job, pl)
    zgroup, _ = _open_or_create(job, pl, times, overwrite)
    markers = zgroup[MARKER_NAME]
    status = np.asarray(markers[...])
    todo = [t for t in pl.tiles() if status[t] == 0]
    outside = pl.outside()
    report = RunReport(
        store=job.store,
        grid=pl.grid,
        tile=pl.tile,
        tiles_total=pl.grid[0] * pl.grid[1],
        tiles_skipped=int((status > 0).sum()) - len(outside),
        tiles_outside=len(outside),
    )
    if client is None:
        client = _default_client()
    elif client is False:
        client = None
    if client is not None:
        ex: Any = _ClientExecutor(client)
        in_flight = job.max_in_flight or max(1, sum(client.nthreads().values()))
    else:
        in_flight = job.max_in_flight or 1
        ex = _LocalExecutor(in_flight)
    batch_size = job.batch_size or 2 * in_flight
    log.info(
        "xfusion.run %s: %s over %dx%d px in %dx%d tiles of %d px (%d to do, %d done), %d "
        "date(s), %d tile(s) in flight",
        job.name or job.store,
        job.method,
        *pl.geobox.shape,
        *pl.grid,
        pl.tile,
        len(todo),
        report.tiles_skipped,
        len(times),
        in_flight,
    )
    jobdict = job.to_dict()
    jobdict["time"] = tuple(jobdict["time"])
    auto_margin = _margin(dataclasses.replace(job, margin="auto"), job.resolution)
    times_s = [str(t) for t in times.astype("datetime64[D]")]
    write_block = pl.tile if job.shards else job.chunk
    pending = collections.deque(todo)
    ready: collections.deque[tuple[tuple[int, int], dict[str, Any]]] = collections.deque()
    attempts: collections.Counter[tuple[int, int]] = collections.Counter()
    last_error: dict[tuple[int, int], str] = {}
    running: dict[Any, tuple[int, int]] = {}
    item_ids: set[str] = set()
    show = enabled(progress)
    bar = Progress(report.tiles_total, initial=report.tiles_skipped, unit="tile",
                   desc="xfusion.run", progress=show, lines=False)  # lines: _log_progress
    last_log = _time.perf_counter()

    def fail_or_retry(tile: tuple[int, int], err: BaseException | str) -> None:
        attempts[tile] += 1
        msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        last_error[tile] = msg
        if attempts[tile] <= job.retries:
            log.warning(
                "xfusion.run: tile %s failed (attempt %d of %d), retrying: %s",
                tile,
                attempts[tile],
                job.retries + 1,
                msg,
            )
            pending.appendleft(tile)  # re-searched and re-signed with the next batch
        else:
            bb = pl.tile_geobox(*tile).extent.boundingbox
            report.failed.append(
                TileFailure(
                    tile=tile,
                    bounds=(bb.left, bb.bottom, bb.right, bb.top),
                    attempts=attempts[tile],
                    error=msg,
                )
            )
            log.error(
                "xfusion.run: tile %s FAILED after %d attempt(s): %s", tile, attempts[tile], msg
            )
            bar.update(0)

    def prepare_batch() -> None:
        batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
        footprints = {t: pl.load_geobox(*t).extent.to_crs("EPSG:4326", resolution="auto") for t in batch}
        union = footprints[batch[0]]
        for t in batch[1:]:
            union = union | footprints[t]
        bbox = _lonlat_bbox(union)
        try:
            fine_found = _search(job, "fine", bbox)
            found = {
                "fine": fine_found,
                "coarse": _search(
                    job, "coarse", bbox, keep=_needed_coarse(job, times_s, fine_found)
                ) if fine_found else [],
            }
        except XFusionError as err:
            for t in batch:
                fail_or_retry(t, err)
            return
        from xfusion.stac import sign_items

        for t in batch:
            fp = footprints[t]
            lgb = pl.load_geobox(*t)
            sel = {r: [it for it in found[r] if _intersects(it, fp, lgb)] for r in found}
            sel["coarse"] = _one_platform(job, sel["coarse"])
            try:
                signed = {r: sign_items(v) for r, v in sel.items()}
            except XFusionError as err:
                fail_or_retry(t, err)
                continue
            lg = pl.load_geobox(*t)
            ys, xs = pl.tile_slices(*t)
            ready.append(
                (
                    t,
                    {
                        "job": jobdict,
                        "fine_items": [it.to_dict() for it in signed["fine"]],
                        "coarse_items": [it.to_dict() for it in signed["coarse"]],
                        "shape": tuple(int(s) for s in lg.shape),
                        "affine": lg.affine,
                        "crs": str(lg.crs.to_wkt()),
                        "margin": pl.margin,
                        "tile_shape": (ys.stop - ys.start, xs.stop - xs.start),
                        "dims": pl.dims,
                        "variables": list(pl.variables),
                        "times": times_s,
                        "region": ((ys.start, ys.stop), (xs.start, xs.stop)),
                        "write_block": write_block,
                        "store": job.store,
                        "threads": getattr(ex, "threads", 1),
                        "on_worker": isinstance(ex, _ClientExecutor),
                        # a margin thinner than the method's window cannot be a chunk of its own
                        "margin_chunks": pl.margin >= auto_margin,
                    },
                )
            )

    # a fresh token per call: a Dask scheduler must never answer a tile from an earlier run's
    # result held under the same key (the store may have been overwritten since)
    token = uuid.uuid4().hex[:12]
    try:
        while pending or ready or running:
            while len(running) < in_flight and (ready or pending):
                if not ready:
                    prepare_batch()
                    continue
                tile, payload = ready.popleft()
                key = f"xfusion-run-{token}-tile-{tile[0]}-{tile[1]}-try{attempts[tile]}"
                running[ex.submit(payload, key)] = tile
            if not running:
                continue
            for fut in ex.wait(list(running), timeout=min(5.0, log_every)):
                tile = running.pop(fut)
                result, err = ex.outcome(fut)
                if err is None and result["status"] == "error":
                    err = result["reason"]
                if err is not None:
                    fail_or_retry(tile, err)
                    continue
                # data is in the store: now, and only now, the tile is done
                markers[tile] = DONE if result["status"] == "written" else EMPTY
                report.computed.append(tile)
                if result["status"] == "written":
                    report.tiles_written += 1
                    report.pixels += int(result["pixels"])
                    item_ids.update(result["items"])
                else:
                    report.tiles_empty += 1
                    reason = result["reason"]
                    report.empty_reasons[reason] = report.empty_reasons.get(reason, 0) + 1
                bar.update(1)
            now = _time.perf_counter()
            if now - last_log >= log_every:
                last_log = now
                if show:
                    _log_progress(report, now - t0, len(pending) + len(ready) + len(running))
                if item_ids:
                    _add_items(zgroup, item_ids)
    finally:
        bar.close()
        ex.close()
        if item_ids:
            _add_items(zgroup, item_ids)
    from xfusion.io.zarr import COMPLETE_ATTR

    zgroup.attrs[COMPLETE_ATTR] = bool(report.ok)  # readers warn about an unfinished store
    if report.ok:
        described = describe_store(job)
        if described is not None:
            log.info("xfusion.run %s: described in %s and %s", job.name or job.store, *described)
    report.elapsed_s = _time.perf_counter() - t0
    _log_progress(report, report.elapsed_s, 0)
    return report


def _log_progress(report: RunReport, elapsed: float, left: int) -> None:
    done = report.tiles_written + report.tiles_empty
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = left / rate if rate > 0 else float("inf")
    emit(
        f"xfusion.run: {report.tiles_done}/{report.tiles_total} tiles done "
        f"({len(report.failed)} failed), {_fmt_px(report.pixels / elapsed if elapsed > 0 else 0.0)}"
        f"/s, ETA {_fmt_eta(eta if left else 0.0)}",
        logger=log,
    )
