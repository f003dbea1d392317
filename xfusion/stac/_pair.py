"""Fine/coarse STAC collections as one fusion cube on the fine grid, and clear-date pickers."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import (
    InvalidParameterError,
    NoOverlapError,
    TimeAxisError,
    VariableNotFoundError,
)
from xfusion.io.stac_item import INPUT_ITEMS_ATTR
from xfusion.stac.presets import Preset, get_preset, preset_for_collection

if TYPE_CHECKING:
    from xfusion.stac._read import LoadReport

__all__ = ["clear_fractions", "clear_pairs", "clear_targets", "load_pair"]

TIME = "time"


def items_and_preset(
    source: Any,
    preset: str | Preset | None,
    *,
    role: str,
    bbox: Any,
    time: Any,
    max_cloud: float | None,
    platform: Any,
    url: str | None,
    sign: Any,
    keep: Any = None,
) -> tuple[list[Any], Preset | None]:
    """The items of one role and their preset: searched (``source`` a collection id, over
    ``bbox``/``time``, JSON filtered by ``keep``) or given (filtered by ``time``)."""
    from xfusion.stac._items import _as_items
    from xfusion.stac._search import search

    if isinstance(source, str):
        if bbox is None:
            raise InvalidParameterError(
                f"{role}={source!r} is a collection to search, which needs bbox= (west, south, "
                "east, north in degrees); or pass the items themselves."
            )
        p = get_preset(preset) if preset is not None else preset_for_collection(source)
        coll = p.collections[0] if (p is not None and source == p.name) else source
        search_sign = None if sign in ("auto", True) else False
        items = list(
            search(coll, bbox=bbox, time=time, max_cloud=max_cloud, platform=platform, url=url,
                   sign=search_sign, keep=keep)
        )
        return items, p
    items = _as_items(source)
    if not items:
        raise InvalidParameterError(
            f"{role}= holds no items. Pass a collection id to search, or a non-empty list of items."
        )
    if time is not None:
        items = _filter_time(items, time, role)
    if preset is not None:
        return items, get_preset(preset)
    cols = sorted({str(it.collection_id) for it in items})
    p = preset_for_collection(cols[0]) if len(cols) == 1 else None
    return items, p


def item_times(item: Any) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """(nominal, start, end) as naive UTC timestamps (nominal as odc-stac dates the item)."""
    props = item.properties

    def ts(v: Any) -> pd.Timestamp | None:
        if not v:
            return None
        t = pd.Timestamp(v)
        return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t

    dt = ts(props.get("datetime"))
    start = ts(props.get("start_datetime")) or dt
    end = ts(props.get("end_datetime")) or dt
    nominal = dt if dt is not None else start
    if nominal is None:
        raise TimeAxisError(f"Item {item.id!r} has no datetime nor start_datetime.")
    return nominal, start or nominal, end or nominal


def _filter_time(items: list[Any], time: Any, role: str) -> list[Any]:
    from xfusion.stac._search import normalize_time

    spec = normalize_time(time)
    if spec is None:
        return items
    a, _, b = spec.partition("/") if "/" in spec else (spec, "/", spec)
    lo = None if a in ("", "..") else pd.Timestamp(a.rstrip("Z"))
    hi = None if b in ("", "..") else pd.Timestamp(b.rstrip("Z"))
    if hi is not None and len(b) == 10:
        hi = hi + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    kept = []
    for it in items:
        _, s, e = item_times(it)
        if (hi is None or s <= hi) and (lo is None or e >= lo):
            kept.append(it)
    if not kept:
        raise InvalidParameterError(
            f"None of the {len(items)} {role} items falls within time={time!r}."
        )
    return kept


def band_pairs(bands: Any, fine_p: Preset | None, coarse_p: Preset | None) -> list[tuple[str, str]]:
    """``[(fine band, coarse band)]`` from ``bands=`` (a name, names, or a mapping)."""
    if bands is None:
        if fine_p is not None and coarse_p is not None:
            if "lst" in fine_p.bands and "lst" in coarse_p.bands:
                return [("lst", "lst")]
            common = sorted(set(fine_p.bands) & set(coarse_p.bands))
            raise InvalidParameterError(
                f"bands= is required: {fine_p.name!r} and {coarse_p.name!r} share the band "
                f"names {common!r}; pass e.g. bands={common[:2]!r}, or a mapping "
                "{fine_band: coarse_band}."
            )
        raise InvalidParameterError(
            "bands= is required (e.g. bands='lst', bands=['red', 'nir'] or "
            "{'lwir11': 'LST_Day_1km'})."
        )
    if isinstance(bands, str):
        return [(bands, bands)]
    if isinstance(bands, Mapping):
        return [(str(k), str(v)) for k, v in bands.items()]
    out = [(str(b), str(b)) for b in bands]
    if not out:
        raise InvalidParameterError("bands= is empty; name at least one band.")
    return out


def _native_crop(items: Sequence[Any], assets: Sequence[str], gbox: Any, pad: int = 2) -> Any:
    """The coarse items' own pixel grid cropped to cover ``gbox`` (plus ``pad`` pixels)."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.stac._items import _item_crs, apply_affine, shift_affine

    first = None
    for it in items:
        key = next((a for a in assets if a in it.assets), None)
        if key is None:
            continue
        fields = {**it.properties, **it.assets[key].extra_fields}
        if "proj:transform" not in fields or "proj:shape" not in fields:
            return None
        crs = _item_crs(it, key)
        aff = Affine(*fields["proj:transform"][:6])
        if first is None:
            first = (crs, aff)
        elif crs != first[0] or not np.allclose(
            [aff.a, aff.e], [first[1].a, first[1].e], rtol=1e-9
        ):
            return None  # several native grids: let odc-stac reproject directly
    if first is None or first[0] is None:
        return None
    crs, aff = first
    ext = gbox.extent.to_crs(crs, resolution="auto")
    inv = ~aff
    x0, y0, x1, y1 = ext.boundingbox
    corners = ((x0, y0), (x1, y0), (x0, y1), (x1, y1))
    cols, rows = zip(*(apply_affine(inv, x, y) for x, y in corners), strict=True)
    c0, c1 = int(np.floor(min(cols))) - pad, int(np.ceil(max(cols))) + pad
    r0, r1 = int(np.floor(min(rows))) - pad, int(np.ceil(max(rows))) + pad
    return GeoBox((r1 - r0, c1 - c0), shift_affine(aff, c0, r0), crs)


def _coarse_intervals(
    items: Sequence[Any], times: np.ndarray
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    spans = [item_times(it) for it in items]
    out = []
    for t in pd.DatetimeIndex(times):
        same = [(s, e) for n, s, e in spans if n == t]
        if not same:
            same = [(s, e) for n, s, e in spans if n.normalize() == t.normalize()]
        if same:
            out.append((min(s for s, _ in same), max(e for _, e in same)))
        else:
            out.append((t, t))
    return out


def _match_times(
    fine_times: np.ndarray,
    intervals: list[tuple[pd.Timestamp, pd.Timestamp]],
    tolerance: pd.Timedelta,
) -> list[int | None]:
    """Index of the coarse slice of each fine time (inside its interval, or within tolerance)."""
    out: list[int | None] = []
    for tf in pd.DatetimeIndex(fine_times):
        best, key = None, None
        for i, (s, e) in enumerate(intervals):
            d = pd.Timedelta(0) if s <= tf <= e else min(abs(tf - s), abs(tf - e))
            k = (d, abs(tf - (s + (e - s) / 2)))
            if d <= tolerance and (key is None or k < key):
                best, key = i, k
        out.append(best)
    return out


def _reproject(native: xr.Dataset, names: Sequence[str], gbox: Any, chunks: Any) -> xr.Dataset:
    """Native coarse values onto the fine grid: bilinear values where the nearest is valid.

    Chunk- and tile-invariant (:func:`xfusion.cube.resample.resample_onto`): a fine pixel's
    value depends on its position only, so a tiled job equals a whole-area load.
    """
    from xfusion.cube.resample import resample_onto

    kw: dict[str, Any] = {}
    if chunks is not None:
        ydim, xdim = gbox.dims
        ny, nx = gbox.shape
        cy = chunks.get(ydim, chunks.get("y", ny)) if chunks else ny
        cx = chunks.get(xdim, chunks.get("x", nx)) if chunks else nx
        cy, cx = (ny if v in (-1, None, "auto") else int(v) for v in (cy, cx))
        kw["chunks"] = (min(cy, ny), min(cx, nx))
    out = {}
    for n in names:
        src = native[n]
        attrs = dict(src.attrs)
        src = src.drop_vars([c for c in src.coords if c not in src.dims and c != "spatial_ref"])
        var = resample_onto(src, gbox, method="bilinear", dtype=src.dtype, **kw)
        var.attrs = attrs
        var.encoding = {"grid_mapping": "spatial_ref"}
        out[n] = var
    ds = xr.Dataset(out)
    # per-time coordinates of the native load (acquisition properties...): their values
    # only, so that the native grid's spatial_ref never replaces the fine grid's
    keep = [
        c for c in native.coords
        if c not in (TIME, "clear_fraction") and native[c].dims == (TIME,)
    ]
    return ds.assign_coords({c: (TIME, native[c].data, native[c].attrs) for c in keep})


def _coverage(native_gbox: Any, gbox: Any, *, samples: int = 4) -> np.ndarray:
    """Share of each native pixel covered by the fine grid's footprint (samples² points)."""
    import shapely

    ny, nx = native_gbox.shape
    poly = gbox.extent.to_crs(native_gbox.crs, resolution="auto").geom
    off = (np.arange(samples) + 0.5) / samples
    cols = (np.arange(nx)[:, None] + off[None, :]).ravel()
    rows = (np.arange(ny)[:, None] + off[None, :]).ravel()
    a = native_gbox.affine
    cc, rr = np.meshgrid(cols, rows)
    xs = a.a * cc + a.b * rr + a.c
    ys = a.d * cc + a.e * rr + a.f
    inside = shapely.contains_xy(poly, xs, ys)
    cover = inside.reshape(ny, samples, nx, samples).mean(axis=(1, 3))
    if cover.sum() == 0:  # an area smaller than the sampling: the pixel holding its centre
        from xfusion.stac._items import apply_affine

        cx, cy = poly.centroid.x, poly.centroid.y
        col, row = apply_affine(~a, cx, cy)
        cover[min(max(int(row), 0), ny - 1), min(max(int(col), 0), nx - 1)] = 1.0
    return cover


def _native_clear(native: xr.Dataset, names: Sequence[str], gbox: Any) -> xr.DataArray:
    """Clear fraction of the coarse data over the fine area, on the coarse sensor's grid.

    Each native pixel counts with the share of it that the fine grid covers, so this is the
    fraction of the fine area whose coarse pixel is observed and clear, computed on the
    (coarse) native grid: no resampling of every date just to decide which ones are clear.
    """
    from xfusion.cube.validate import spatial_dims

    dims = spatial_dims(native, name="coarse")
    w = xr.DataArray(_coverage(native.odc.geobox, gbox), dims=dims)
    valid = None
    for n in names:
        ok = native[n].notnull()
        valid = ok if valid is None else (valid & ok)
    assert valid is not None
    frac = ((valid * w).sum(dims) / float(w.sum())).astype(np.float32)
    frac = frac.drop_vars([c for c in frac.coords if c != TIME])
    frac.attrs = {
        "long_name": "Fraction of the area whose coarse pixel is observed, valid and clear "
        "(on the coarse sensor's own grid)",
        "units": "1",
    }
    return frac


def load_pair(
    *,
    fine: str | Iterable[Any],
    coarse: str | Iterable[Any],
    bbox: Sequence[float] | None = None,
    time: Any = None,
    bands: str | Sequence[str] | Mapping[str, str] | None = None,
    geobox: Any = None,
    crs: Any = None,
    resolution: float | None = None,
    anchor: str | tuple[float, float] = "auto",
    chunks: Mapping[str, int | str] | None = None,
    fine_name: str = "fine",
    coarse_name: str = "coarse",
    fine_preset: str | Preset | None = None,
    coarse_preset: str | Preset | None = None,
    mask: Any = "auto",
    tolerance: str | pd.Timedelta = "3h",
    max_cloud: float | None = None,
    fine_platform: str | Sequence[str] | None = None,
    coarse_platform: str | Sequence[str] | None = "auto",
    coarse_native: bool = False,
    url: str | None = None,
    sign: Any = "auto",
    fail_on_error: bool = True,
    report: LoadReport | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> xr.Dataset | tuple[xr.Dataset, xr.Dataset]:
    """Load a fine and a coarse STAC collection as one fusion cube on the fine grid.

    The fine sensor (e.g. Landsat LST) is loaded on its own grid (``geobox``, or its native
    CRS and pixel size cropped to ``bbox``); the coarse sensor (e.g. MODIS LST) is read on its
    native grid around that area, masked there, and resampled onto the fine grid: bilinear for
    values, nearest for validity (a fine pixel is NaN when its nearest coarse pixel is). Times
    are aligned by acquisition: a fine image is paired with the coarse slice whose time range
    (MODIS daily items span their UTC day) contains it, or lies within ``tolerance`` of it,
    and takes that slice's day as its time label; other coarse days stay as they are.

    Parameters
    ----------
    fine, coarse : str or iterable of pystac.Item
        A collection id/preset name to search (``"landsat-c2-l2"``, ``"modis-11A1-061"``;
        needs ``bbox``) or the items themselves.
    bbox : sequence of 4 floats, optional
        Area of interest ``(west, south, east, north)`` in degrees.
    time : str, date-like or (start, end), optional
        Period to search (or to keep from given items), as for :func:`xfusion.stac.search`.
    bands : str, sequence of str or mapping, optional
        Band names in both presets (``"lst"``, ``["red", "nir"]``), or ``{fine_band:
        coarse_band}``. Default ``"lst"`` when both presets have it.
    geobox : odc.geo.geobox.GeoBox, optional
        Exact fine grid. Default: the fine items' native grid cropped to ``bbox``.
    crs, resolution : optional
        Fine grid CRS and pixel size instead of the native ones (with ``bbox``).
    anchor : {"auto", "center", "edge", "floating"} or (float, float), default "auto"
        Alignment of the fine grid, as for :func:`xfusion.load_cube`: ``"auto"`` keeps the
        fine product's own pixel grid even with ``crs=``/``resolution=`` (Landsat: pixel
        centres on multiples of 30 m, i.e. edges on odd multiples of 15 m; Sentinel-2: edges
        on multiples of 10/20/60 m), so the fine values are read, not resampled. Pass
        ``"edge"``, ``"center"``, ``"floating"``, an ``(x, y)`` pixel fraction, or an exact
        ``geobox`` for another grid.
    chunks : mapping, optional
        Dask chunks of the fine grid, e.g. ``{"time": 1, "y": 2048, "x": 2048}``; ``None``
        loads eagerly.
    fine_name, coarse_name : str, default "fine", "coarse"
        Variable names; with several bands ``f"{fine_name}_{band}"`` and
        ``f"{coarse_name}_{band}"`` (paired by position).
    fine_preset, coarse_preset : str or Preset, optional
        Presets; default: the ones registered for the collections.
    mask : "auto", sequence of str or None, default "auto"
        QA flags to mask, as for :func:`xfusion.load_cube`; ``"auto"`` uses each preset's
        default mask (cloud, shadow, snow, fill...).
    tolerance : str or pandas.Timedelta, default "3h"
        Largest gap between a fine acquisition and a coarse slice's time range to pair them.
    max_cloud : float, optional
        Search only fine items with scene cloud cover ``<= max_cloud`` percent.
    fine_platform, coarse_platform : str or sequence of str, optional
        Platforms to keep. ``coarse_platform="auto"``: for presets that must not mix
        platforms (MODIS), the first one of the preset (Terra, ~10:30, closest to the
        Landsat and Sentinel-2 overpasses).
    coarse_native : bool, default False
        Also return the coarse data on its native grid (masked physical values).
    url : str, optional
        STAC API to search; default ``$XFUSION_STAC_URL`` if set, else the Planetary Computer.
    sign, fail_on_error, report, retries, retry_delay
        As for :func:`xfusion.load_cube`.

    Returns
    -------
    xarray.Dataset or tuple of xarray.Dataset
        The fusion cube (the contract of :mod:`xfusion.cube.validate`): variables ``fine`` and
        ``coarse`` (or per band) on the fine grid, daily ``time`` labels, boolean
        ``observed_<var>`` coordinates, ``fine_time``/``coarse_time`` (acquisition times, NaT
        where absent) and lazy ``clear_fraction_<fine_name>``/``clear_fraction_<coarse_name>``
        coordinates. With ``coarse_native=True``, ``(cube, native)`` where ``native`` holds
        the coarse variables on their own grid with the same time labels.

    Raises
    ------
    InvalidParameterError
        Missing ``bbox`` for a search, bad bands, presets or grid arguments.
    NoOverlapError
        The area does not intersect the fine or the coarse items.
    TimeAxisError
        Two fine acquisitions paired with one coarse slice (lower ``tolerance``).
    EmptySearchError, UnknownCollectionError, SigningError, StacApiError
        From the searches.

    See Also
    --------
    clear_pairs, clear_targets : pick dates from the cube.
    xfusion.load_cube, xfusion.combine

    Examples
    --------
    >>> cube = xfusion.load_pair(fine="landsat-c2-l2", coarse="modis-11A1-061",
    ...                          bbox=(146.0, -34.9, 146.2, -34.7),
    ...                          time=("2016-02-01", "2016-03-31"),
    ...                          chunks={"time": 1, "y": 1024, "x": 1024})  # doctest: +SKIP
    >>> pairs = xfusion.stac.clear_pairs(cube, min_clear=0.9)  # doctest: +SKIP
    """
    from xfusion.cube.build import combine
    from xfusion.stac._grid import check_overlap
    from xfusion.stac._items import _check_bbox
    from xfusion.stac.load import load_cube

    if bbox is not None:
        bbox = _check_bbox(bbox)
    if geobox is not None and bbox is not None:
        raise InvalidParameterError(
            "Pass either geobox= or bbox=, not both: the geobox fixes the fine grid and its "
            "area (searches then use its lon/lat bounds)."
        )
    search_bbox = bbox
    if geobox is not None:
        search_bbox = tuple(geobox.geographic_extent.boundingbox)
    if fine_name == coarse_name:
        raise InvalidParameterError(
            f"fine_name and coarse_name must differ, both are {fine_name!r}."
        )
    try:
        tol = pd.Timedelta(tolerance)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"tolerance={tolerance!r} is not a duration; use e.g. '3h' or pd.Timedelta(hours=3)."
        ) from None
    if tol < pd.Timedelta(0):
        raise InvalidParameterError(f"tolerance={tolerance!r} must not be negative.")

    fine_items, fine_p = items_and_preset(
        fine, fine_preset, role="fine", bbox=search_bbox, time=time, max_cloud=max_cloud,
        platform=fine_platform, url=url, sign=sign,
    )
    c_plat = None if coarse_platform == "auto" else coarse_platform
    coarse_items, coarse_p = items_and_preset(
        coarse, coarse_preset, role="coarse", bbox=search_bbox, time=time, max_cloud=None,
        platform=c_plat, url=url, sign=sign,
    )
    if c_plat is not None:  # given items are not filtered by a search
        from xfusion.stac._items import _filter_platform

        coarse_items = _filter_platform(coarse_items, [coarse_p] * len(coarse_items), c_plat)
    if coarse_platform == "auto" and coarse_p is not None and coarse_p.platforms:
        plats = {str(it.properties.get("platform", "")).lower() for it in coarse_items}
        if len(plats) > 1:
            first = next((p for p in coarse_p.platforms if p in plats), None)
            coarse_items = [
                it for it in coarse_items
                if str(it.properties.get("platform", "")).lower() == first
            ]
    pairs = band_pairs(bands, fine_p, coarse_p)
    fine_bands = [f for f, _ in pairs]
    coarse_bands = list(dict.fromkeys(c for _, c in pairs))
    if len(pairs) == 1:
        fine_names = {fine_bands[0]: fine_name}
        coarse_names = {coarse_bands[0]: coarse_name}
    else:
        fine_names = {f: f"{fine_name}_{f}" for f in fine_bands}
        coarse_names = {c: f"{coarse_name}_{f}" for f, c in pairs}
    common = {
        "mask": mask, "sign": sign, "fail_on_error": fail_on_error, "report": report,
        "retries": retries, "retry_delay": retry_delay,
    }

    # fine: on its grid
    fine_ds = load_cube(
        fine_items,
        bands=fine_bands,
        preset=fine_p,
        geobox=geobox,
        crs=crs,
        resolution=resolution,
        bbox=bbox if geobox is None else None,
        anchor=anchor,
        chunks=chunks,
        platform=fine_platform,
        **common,
    )
    gbox = fine_ds.odc.geobox

    # coarse: native grid around the AOI, masked there, then onto the fine grid
    from xfusion.stac._items import _locate

    assets = []
    for it in coarse_items:
        for b in coarse_bands:
            key, _ = _locate(it, b, coarse_p if coarse_p is not None else
                             preset_for_collection(it.collection_id))
            if key is not None and key not in assets:
                assets.append(key)
    coarse_items = check_overlap(coarse_items, gbox, what="coarse items", bbox=bbox,
                                 grid_assets=assets)
    native_gbox = _native_crop(coarse_items, assets, gbox)
    if native_gbox is not None:
        native = load_cube(
            coarse_items, bands=coarse_bands, preset=coarse_p, geobox=native_gbox,
            chunks=None if chunks is None else {TIME: 1},
            resampling="nearest", **common,
        )
        coarse_ds = _reproject(native, coarse_bands, gbox, chunks)
        coarse_ds = coarse_ds.assign_coords(
            clear_fraction=_native_clear(native, coarse_bands, gbox)
        )
    else:
        if coarse_native:
            raise InvalidParameterError(
                "coarse_native=True needs coarse items on one native grid; these items use "
                "several CRSs or pixel sizes."
            )
        native = None
        coarse_ds = load_cube(
            coarse_items, bands=coarse_bands, preset=coarse_p, geobox=gbox, chunks=chunks,
            **common,
        )

    # time alignment
    f_times = fine_ds[TIME].values
    c_times = coarse_ds[TIME].values
    intervals = _coarse_intervals(coarse_items, c_times)
    match = _match_times(f_times, intervals, tol)
    c_labels = pd.DatetimeIndex(c_times).floor("D").values
    f_labels = np.array(
        [c_labels[m] if m is not None else pd.Timestamp(t).floor("D").to_datetime64()
         for t, m in zip(f_times, match, strict=True)],
        dtype="datetime64[ns]",
    )
    if len(np.unique(f_labels)) != len(f_labels):
        vals, counts = np.unique(f_labels, return_counts=True)
        dup = [str(v)[:10] for v in vals[counts > 1]]
        raise TimeAxisError(
            f"Several fine acquisitions fall on the same coarse date(s) {dup!r} (coarse time "
            f"ranges {[(str(s), str(e)) for s, e in intervals[:3]]}...). Lower tolerance= "
            f"(now {tolerance!r}), or load the fine items with fewer dates (time=, max_cloud=)."
        )

    def relabel(ds: xr.Dataset, labels: np.ndarray, names: Mapping[str, str], role: str,
                times: np.ndarray) -> xr.Dataset:
        ds = ds[list(names)].rename(names)
        ds = ds.assign_coords({f"{role}_time": (TIME, np.asarray(times, "datetime64[ns]"))})
        if "clear_fraction" in ds.coords:
            ds = ds.rename({"clear_fraction": f"clear_fraction_{role}"})
        return ds.assign_coords({TIME: labels})

    fpart = relabel(fine_ds, f_labels, fine_names, fine_name, f_times)
    cpart = relabel(coarse_ds, c_labels, coarse_names, coarse_name, c_times)
    cube = combine(fpart, cpart, align="day")
    for role in (fine_name, coarse_name):
        c = f"{role}_time"
        cube[c].attrs = {"long_name": f"Acquisition time of the {role} sensor (UTC)"}
    inputs = {d["id"]: d for part in (fine_ds, coarse_ds)
              for d in json.loads(part.attrs.get(INPUT_ITEMS_ATTR, "[]"))}
    cube.attrs = {
        "title": "xfusion fusion cube from STAC",
        "fine_preset": "" if fine_p is None else fine_p.name,
        "coarse_preset": "" if coarse_p is None else coarse_p.name,
        "time_tolerance": str(tol),
        INPUT_ITEMS_ATTR: json.dumps(sorted(inputs.values(), key=lambda d: d["id"])),
    }
    if not coarse_native:
        return cube
    assert native is not None
    nat = relabel(native, c_labels, coarse_names, coarse_name, c_times)
    nat.attrs = {"title": f"{coarse_name} on its native grid", **cube.attrs}
    return cube, nat


def _clear(ds: xr.Dataset, names: Sequence[str]) -> xr.DataArray:
    from xfusion.stac.load import clear_fraction

    return clear_fraction(ds, names)


# --------------------------------------------------------------------------------------------
# picking dates


def _role_vars(cube: xr.Dataset, role: str | Sequence[str]) -> list[Hashable]:
    names = [role] if isinstance(role, str) else list(role)
    out: list[Hashable] = []
    for n in names:
        if n in cube.data_vars:
            out.append(n)
        else:
            pref = [v for v in cube.data_vars if str(v).startswith(f"{n}_")]
            if not pref:
                raise VariableNotFoundError(
                    f"No variable {n!r} (nor {n!r}_<band>) on the cube. Variables on the dataset "
                    f"include {sorted(map(str, cube.data_vars))!r}."
                )
            out += pref
    return out


def _fraction_expr(cube: xr.Dataset, role: str | Sequence[str]) -> xr.DataArray:
    from xfusion.stac.load import clear_fraction

    if isinstance(role, str) and f"clear_fraction_{role}" in cube.coords:
        frac = cube.coords[f"clear_fraction_{role}"]
    else:
        frac = clear_fraction(cube, _role_vars(cube, role))
    return frac.fillna(0.0)


def clear_fractions(
    cube: xr.Dataset, /, roles: Sequence[str] = ("fine", "coarse")
) -> pd.DataFrame:
    """Compute the clear fraction of each role per time (eager: one dask compute).

    Uses the ``clear_fraction_<role>`` coordinates of :func:`load_pair`, or computes the
    fraction of pixels where every variable of the role (``role`` or ``role_<band>``) is
    valid. Unobserved dates count as 0.

    Returns
    -------
    pandas.DataFrame
        One column per role, indexed by time.
    """
    import dask

    exprs = [_fraction_expr(cube, r) for r in roles]
    (values,) = dask.compute(exprs)
    return pd.DataFrame(
        {r: np.asarray(v.values, dtype=float) for r, v in zip(roles, values, strict=True)},
        index=pd.DatetimeIndex(cube[TIME].values, name=TIME),
    )


def _check_threshold(value: float, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise InvalidParameterError(f"{name}={value!r} must be a fraction in [0, 1].")
    return v


def clear_pairs(
    cube: xr.Dataset,
    /,
    *,
    fine: str = "fine",
    coarse: str = "coarse",
    min_clear: float = 0.8,
    min_coarse_clear: float | None = None,
) -> np.ndarray:
    """Dates where both sensors saw the area clearly enough to serve as fusion pairs.

    Eager: computes the clear fractions (one dask compute of the clear-fraction coordinates,
    i.e. one read of the data).

    Parameters
    ----------
    cube : xarray.Dataset
        A fusion cube, e.g. from :func:`load_pair`.
    fine, coarse : str, default "fine", "coarse"
        Variable names (or the role prefix of multi-band cubes).
    min_clear : float, default 0.8
        Smallest clear fraction of the fine image.
    min_coarse_clear : float, optional
        Smallest clear fraction of the coarse image; default ``min_clear``.

    Returns
    -------
    numpy.ndarray of datetime64[ns]
        Sorted pair dates, usable as ``pairs=`` of the fusion methods.

    Raises
    ------
    NoOverlapError
        When no date qualifies (the message gives the best fractions found).
    """
    lo = _check_threshold(min_clear, "min_clear")
    lc = lo if min_coarse_clear is None else _check_threshold(min_coarse_clear, "min_coarse_clear")
    df = clear_fractions(cube, (fine, coarse))
    ok = (df[fine] >= lo) & (df[coarse] >= lc)
    if not ok.any():
        best = df.assign(both=df.min(axis=1)).sort_values("both", ascending=False).head(3)
        raise NoOverlapError(
            f"No date has both {fine!r} clear >= {lo} and {coarse!r} clear >= {lc}. Best dates: "
            f"{[(str(t)[:10], round(r[fine], 3), round(r[coarse], 3)) for t, r in best.iterrows()]}"
            ". Lower min_clear=, widen the time range, or search with a lower max_cloud."
        )
    return df.index[ok.values].values.astype("datetime64[ns]")


def clear_targets(
    cube: xr.Dataset,
    /,
    *,
    fine: str = "fine",
    coarse: str = "coarse",
    min_clear: float = 0.8,
    include_pairs: bool = False,
) -> np.ndarray:
    """Dates worth predicting: the coarse image is clear, the fine one missing or cloudy.

    Eager, like :func:`clear_pairs`.

    Parameters
    ----------
    cube : xarray.Dataset
        A fusion cube.
    fine, coarse : str
        Variable names (or role prefixes).
    min_clear : float, default 0.8
        Smallest clear fraction of the coarse image; dates whose fine image is at least
        this clear are pairs, not targets (unless ``include_pairs``).
    include_pairs : bool, default False
        Also return clear pair dates (to predict them for validation).

    Returns
    -------
    numpy.ndarray of datetime64[ns]
        Sorted target dates, usable as ``targets=`` of the fusion methods.
    """
    lo = _check_threshold(min_clear, "min_clear")
    df = clear_fractions(cube, (fine, coarse))
    ok = df[coarse] >= lo
    if not include_pairs:
        ok &= df[fine] < lo
    return df.index[ok.values].values.astype("datetime64[ns]")
