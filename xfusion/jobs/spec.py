"""A run job: what :func:`xfusion.run` processes, from Python or from a YAML file.

A job names an area of interest (a bounding box or a GeoJSON geometry, any size), a period, the
fine and coarse collections (searched on a STAC API), a fusion method with its parameters (or
trained weights), the output grid (CRS, pixel size, anchor) and its tiling, and the output Zarr
store. The YAML form groups the fields in sections; every field also has a flat keyword in
:class:`Job`::

    method: starfm
    params: {preset: lst}
    time: [2020-06-01, 2020-08-31]
    targets: [2020-07-14, 2020-07-30]    # optional: default every coarse day of the period
    aoi:
      bbox: [-120.2, 38.8, -119.8, 39.3] # west, south, east, north (degrees unless `crs`)
      # geojson: lake_tahoe.geojson      # or a GeoJSON file/geometry: tiles outside are skipped
    stac:
      url: https://planetarycomputer.microsoft.com/api/stac/v1
      fine: landsat-c2-l2
      coarse: modis-11A1-061
      bands: lst
      max_cloud: 60
      min_clear: 0.5                     # pairs need >= 50 % clear fine pixels in the tile
    grid:
      crs: EPSG:32611                    # default: the UTM zone of the AOI centre
      resolution: 30
      anchor: auto                       # the fine product's grid (Landsat: edges on odd 15 m)
      tile: 2048                         # pixels per tile side (one unit of work and of resume)
      margin: auto                       # pixels read around each tile (the method's window)
    output:
      store: tahoe.zarr
      chunk: 512                         # zarr chunk side; tile must be a multiple
      shards: true                       # one zarr shard per tile
    run:
      batch_size: 8                      # tiles searched, signed and submitted together
      retries: 2                         # attempts after the first, per tile

Relative paths in a YAML file (``output.store``, ``weights``, ``aoi.geojson``) are relative to
the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xfusion.errors import JobError, XFusionError

__all__ = ["Job", "load_job"]

SECTIONS: dict[str, tuple[str, ...]] = {
    "aoi": ("bbox", "crs", "geojson"),
    "stac": (
        "url",
        "fine",
        "coarse",
        "bands",
        "max_cloud",
        "fine_platform",
        "coarse_platform",
        "tolerance",
        "mask",
        "min_clear",
    ),
    "grid": ("crs", "resolution", "anchor", "tile", "margin"),
    "output": ("store", "chunk", "shards", "compression_level"),
    "run": ("batch_size", "retries", "max_in_flight"),
}
"""YAML sections and the :class:`Job` fields they hold (``aoi.crs`` is ``bbox_crs``)."""

_RENAME = {("aoi", "crs"): "bbox_crs", ("aoi", "geojson"): "geometry"}

ANCHORS = ("auto", "center", "edge")


def _fail(field_name: str, found: Any, fix: str) -> JobError:
    return JobError(f"Job field {field_name!r}: found {found!r}. {fix}")


def _date(value: Any, name: str) -> str:
    from xfusion._dates import parse_date
    from xfusion.errors import TimeAxisError

    try:
        return str(parse_date(value, what=f"date in {name!r}"))[:10]
    except TimeAxisError as err:
        raise _fail(name, value, str(err)) from None


@dataclass(frozen=True, kw_only=True)
class Job:
    """A continental (or any-size) fusion run; see the module docstring for the YAML form.

    Parameters
    ----------
    method : str
        A fusion method of ``xfusion fuse``: ``"starfm"``, ``"sttfn"`` or ``"baseline"``.
    store : str
        Output Zarr store (a path or an fsspec URL).
    time : (str, str) or str
        Period searched, ``(start, end)`` dates or ``"start/end"``.
    bbox : (float, float, float, float), optional
        AOI ``(west, south, east, north)`` in ``bbox_crs`` (degrees by default).
    bbox_crs : str, default "EPSG:4326"
        CRS of ``bbox``.
    geometry : dict or str, optional
        A GeoJSON geometry, Feature or FeatureCollection (lon/lat), or a path to a GeoJSON
        file. Tiles that do not intersect it are skipped. Gives the AOI when ``bbox`` is absent.
    targets : sequence of dates, optional
        Dates to predict. Default: every day of ``time`` with a coarse item over the AOI.
    params : mapping, optional
        Parameters of the method, as for ``xfusion fuse METHOD --param KEY=VALUE``.
    weights : str, optional
        Trained weights of a learned method (STTFN general regime). Without them STTFN trains
        a per-triplet pair of nets for every tile (slow; the paper's regime).
    fine, coarse : str
        Collections (or presets) searched: default ``"landsat-c2-l2"`` and
        ``"modis-11A1-061"``.
    bands : str, sequence or mapping, optional
        As for :func:`xfusion.load_pair` (default ``"lst"``).
    url : str, optional
        STAC API; default ``$XFUSION_STAC_URL`` if set, else the Planetary Computer (assets
        signed per batch).
    max_cloud : float, optional
        Scene cloud cover limit of the fine search, in percent.
    fine_platform, coarse_platform, tolerance, mask
        As for :func:`xfusion.load_pair`.
    min_clear : float or None, default 0.5
        A fine date serves as a pair in a tile only when at least this fraction of the tile's
        fine pixels is clear; ``None`` uses every fine acquisition.
    crs : str, default "utm"
        Output CRS: an EPSG code/WKT, or ``"utm"`` for the UTM zone of the AOI centre (for
        Landsat, the northern zone even south of the equator, as USGS delivers it, so its
        pixels are read as they are).
    resolution : float, default 30
        Output pixel size in CRS units.
    anchor : {"auto", "center", "edge"}, default "auto"
        Grid alignment: ``"center"`` puts pixel centres on multiples of ``resolution``
        (Landsat: edges on odd multiples of 15 m), ``"edge"`` puts pixel edges there
        (Sentinel-2, MODIS); ``"auto"`` takes the fine product's own (from its preset; "edge"
        for products without one).
    tile : int, default 2048
        Tile side in pixels: the unit of work, of retries and of resume.
    margin : int or "auto", default "auto"
        Pixels read around each tile so that windowed methods see their neighbours:
        ``"auto"`` uses the method's search window (STARFM) or receptive field (STTFN).
    chunk : int, optional
        Zarr chunk side (default: ``tile``); ``tile`` must be a multiple of it.
    shards : bool, default False
        Store each tile as one zarr v3 shard of ``chunk``-sized inner chunks.
    compression_level : int, default 3
        Zstd level of the output.
    batch_size : int, optional
        Tiles searched, signed and submitted together (default ``2 x`` the tiles in flight).
    retries : int, default 2
        Extra attempts of a failing tile before it is reported as failed.
    max_in_flight : int, optional
        Tiles computed at once (default: the cluster's worker threads; 1 without a cluster).
    name : str, optional
        A label for logs and provenance.
    """

    method: str
    store: str
    time: tuple[str, str]
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = "EPSG:4326"
    geometry: Any = None
    targets: tuple[str, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    fine: str = "landsat-c2-l2"
    coarse: str = "modis-11A1-061"
    bands: Any = None
    url: str | None = None
    max_cloud: float | None = None
    fine_platform: Any = None
    coarse_platform: Any = "auto"
    tolerance: str = "3h"
    mask: Any = "auto"
    min_clear: float | None = 0.5
    crs: str = "utm"
    resolution: float = 30.0
    anchor: str = "auto"
    tile: int = 2048
    margin: int | str = "auto"
    chunk: int | None = None
    shards: bool = False
    compression_level: int = 3
    batch_size: int | None = None
    retries: int = 2
    max_in_flight: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        from xfusion.methods import available, get

        set_ = object.__setattr__
        fusion = available(kind="fusion")
        if self.method not in fusion:
            raise _fail("method", self.method, f"Use one of {sorted(fusion)}.")
        method = get(self.method)
        if not isinstance(self.store, str | os.PathLike) or not str(self.store):
            raise _fail("store", self.store, "Give the output Zarr path, e.g. 'out.zarr'.")
        set_(self, "store", os.fspath(self.store))
        time = self.time
        if isinstance(time, str):
            time = tuple(time.split("/"))
        if not isinstance(time, Sequence) or len(time) != 2:
            raise _fail("time", self.time, "Give the period as [start, end] or 'start/end'.")
        start, end = _date(time[0], "time"), _date(time[1], "time")
        if start > end:
            raise _fail("time", self.time, "The start date must not be after the end date.")
        set_(self, "time", (start, end))
        if self.bbox is None and self.geometry is None:
            raise JobError(
                "A job needs an area of interest: give `bbox` ([west, south, east, north]) or "
                "`geometry` (a GeoJSON geometry or file), e.g. aoi: {bbox: [14.3, 46.1, 14.6, "
                "46.3]} in YAML."
            )
        if self.bbox is not None:
            try:
                bbox = tuple(float(v) for v in self.bbox)
            except (TypeError, ValueError):
                bbox = ()
            if len(bbox) != 4 or bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
                raise _fail(
                    "bbox",
                    self.bbox,
                    "Give [west, south, east, north] with west < east and south < north.",
                )
            set_(self, "bbox", bbox)
        if self.geometry is not None and not isinstance(self.geometry, str | os.PathLike | Mapping):
            raise _fail("geometry", self.geometry, "Give a GeoJSON mapping or a file path.")
        if isinstance(self.geometry, os.PathLike):
            set_(self, "geometry", os.fspath(self.geometry))
        if self.targets is not None:
            vals = [self.targets] if isinstance(self.targets, str) else list(self.targets)
            if not vals:
                raise _fail("targets", self.targets, "Give at least one date, or leave it out.")
            set_(self, "targets", tuple(sorted({_date(v, "targets") for v in vals})))
        if not isinstance(self.params, Mapping):
            raise _fail("params", self.params, "Give the method parameters as a mapping.")
        set_(self, "params", dict(self.params))
        for key in ("weights", "targets"):
            if key in self.params:
                raise _fail(
                    "params",
                    dict(self.params),
                    f"{key!r} is a job field, not a method parameter: move it out of `params`.",
                )
        if self.weights is not None:
            if not method.weights:
                learned = sorted(n for n in fusion if get(n).weights)
                raise _fail(
                    "weights",
                    self.weights,
                    f"Weights apply to learned methods ({learned}), not {self.method!r}.",
                )
            set_(self, "weights", os.fspath(self.weights))
        unknown = sorted(set(self.params) - set(method.param_names) - {"progress"})
        if unknown:
            raise _fail(
                "params",
                dict(self.params),
                f"Unknown parameter(s) {unknown} for "
                f"{self.method!r}; valid: {sorted(method.param_names)}.",
            )
        try:
            set_(self, "params", method.check_params(self.params, extra=("progress",)))
        except XFusionError as err:
            raise _fail("params", dict(self.params), str(err)) from None
        if self.anchor not in ANCHORS:
            raise _fail("anchor", self.anchor, f"Use one of {list(ANCHORS)}.")
        if not isinstance(self.resolution, int | float) or self.resolution <= 0:
            raise _fail("resolution", self.resolution, "Give a positive pixel size in CRS units.")
        set_(self, "resolution", float(self.resolution))
        for key, low in (("tile", 16), ("retries", 0)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise _fail(key, v, f"Give an integer >= {low}.")
        for key in ("batch_size", "max_in_flight", "chunk"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise _fail(key, v, "Give a positive integer, or leave it out for the default.")
        chunk = self.tile if self.chunk is None else self.chunk
        if self.tile % chunk:
            raise _fail(
                "chunk",
                self.chunk,
                f"The tile ({self.tile} px) must be a multiple of the zarr "
                f"chunk; use e.g. chunk: {max(d for d in range(1, chunk + 1) if self.tile % d == 0)}.",
            )
        set_(self, "chunk", chunk)
        if self.margin != "auto" and (
            not isinstance(self.margin, int) or isinstance(self.margin, bool) or self.margin < 0
        ):
            raise _fail("margin", self.margin, "Give 'auto' or a number of pixels >= 0.")
        if self.min_clear is not None and not 0.0 <= float(self.min_clear) <= 1.0:
            raise _fail("min_clear", self.min_clear, "Give a fraction in [0, 1], or null.")
        if self.max_cloud is not None and not 0.0 <= float(self.max_cloud) <= 100.0:
            raise _fail("max_cloud", self.max_cloud, "Give a percentage in [0, 100].")

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], /, *, base: str | os.PathLike[str] | None = None
    ) -> Job:
        """Build a job from the YAML form (sections) or flat field names.

        Parameters
        ----------
        data : mapping
            The job, e.g. ``yaml.safe_load`` of a job file.
        base : path-like, optional
            Folder that relative paths (store, weights, GeoJSON) are relative to.
        """
        if not isinstance(data, Mapping):
            raise JobError(
                f"A job must be a mapping of fields, found {type(data).__name__}: {data!r}."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        flat: dict[str, Any] = {}
        for key, value in data.items():
            key = str(key)
            if key in SECTIONS:
                if not isinstance(value, Mapping):
                    raise _fail(
                        key, value, f"Section {key!r} must be a mapping of {list(SECTIONS[key])}."
                    )
                for sub, v in value.items():
                    if sub not in SECTIONS[key]:
                        raise _fail(
                            f"{key}.{sub}",
                            v,
                            f"Unknown key in section {key!r}; valid keys: {list(SECTIONS[key])}.",
                        )
                    name = _RENAME.get((key, sub), sub)
                    if name in flat:
                        raise _fail(name, v, "Given twice; give it once.")
                    flat[name] = v
            elif key in fields:
                if key in flat:
                    raise _fail(key, value, "Given twice; give it once.")
                flat[key] = value
            else:
                raise _fail(
                    key,
                    value,
                    f"Unknown job key; valid sections {sorted(SECTIONS)} and fields "
                    f"{sorted(fields)}.",
                )
        if base is not None:
            for key in ("store", "weights", "geometry"):
                v = flat.get(key)
                relative = isinstance(v, str) and "://" not in v and not os.path.isabs(v)
                if relative and not (key == "geometry" and v.lstrip().startswith("{")):
                    flat[key] = os.path.join(os.fspath(base), v)
        missing = [k for k in ("method", "store", "time") if k not in flat]
        if missing:
            raise JobError(
                f"The job lacks {missing}: every job needs `method`, `time` and `output.store`."
            )
        try:
            return cls(**flat)
        except TypeError as err:
            raise JobError(f"Bad job fields: {err}.") from None

    def to_dict(self) -> dict[str, Any]:
        """The job as flat JSON-able fields (stored in the output's provenance)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return json.loads(json.dumps(out, default=str))

    def geometry_mapping(self) -> dict[str, Any] | None:
        """The AOI geometry as a GeoJSON mapping (a file is read), or None."""
        g = self.geometry
        if g is None:
            return None
        if isinstance(g, str):
            if g.lstrip().startswith("{"):
                g = json.loads(g)
            else:
                path = Path(g)
                if not path.is_file():
                    raise _fail("geometry", g, "No such GeoJSON file; check the path.")
                try:
                    g = json.loads(path.read_text())
                except json.JSONDecodeError as err:
                    raise _fail("geometry", g, f"Not valid JSON ({err}).") from None
        if g.get("type") == "FeatureCollection":
            geoms = [f.get("geometry") for f in g.get("features", [])]
            if not geoms:
                raise _fail("geometry", "FeatureCollection", "It has no features.")
            return {"type": "GeometryCollection", "geometries": geoms}
        if g.get("type") == "Feature":
            return dict(g["geometry"])
        return dict(g)


def load_job(path: str | os.PathLike[str], /) -> Job:
    """Read a job from a YAML (or JSON) file; relative paths are relative to the file.

    Raises
    ------
    JobError
        Unreadable file, bad YAML, unknown keys or invalid values (the message names them).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise JobError(f"Job file {os.fspath(path)!r} does not exist; check the path.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise JobError(f"Job file {os.fspath(path)!r} is not valid YAML: {err}") from None
    return Job.from_dict(data, base=p.resolve().parent)
