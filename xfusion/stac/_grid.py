"""Output grids of STAC loads: anchors (the products' own pixel grids), UTM twins, overlap.

A grid derived from ``crs=``/``resolution=``/``bbox=`` is anchored as the product is
(:func:`resolve_anchor`: Landsat pixel centres on multiples of the resolution, Sentinel-2 and
MODIS pixel edges; the items' own alignment when they share one); a grid in the other-hemisphere
twin of the items' UTM zone is read on the translated grid (:func:`twin_geobox`);
:func:`check_overlap` keeps the items whose footprint (or, for tiles whose lon/lat footprint is
too coarse, whose declared pixel grid) meets the area.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    NoOverlapError,
)
from xfusion.stac._items import (
    _crs_label,
    _footprint,
    _Group,
    _item_crs,
    _md_parser,
    _stac_cfg,
    apply_affine,
    shift_affine,
)
from xfusion.stac.presets import Preset

__all__ = ["ANCHORS", "check_overlap", "resolve_anchor"]


def _check_one_crs(plans: Sequence[tuple[_Group, list[Any]]]) -> None:
    """Mixed CRSs need an explicit target grid (odc-stac would pick one silently)."""
    seen: dict[Any, list[str]] = {}
    for group, items in plans:
        keys = [o.info.asset for o in group.outs if not o.info.is_qa] or [
            o.info.asset for o in group.outs
        ]
        for it in items:
            crs = _item_crs(it, keys[0]) if keys else None
            if crs is not None:
                seen.setdefault(crs, []).append(it.id)
    if len(seen) > 1:
        listing = "; ".join(
            f"{_crs_label(c)}: {ids[:3]!r}{' ...' if len(ids) > 3 else ''}" for c, ids in seen.items()
        )
        raise CRSMismatchError(
            f"The items are in {len(seen)} different CRSs ({listing}) and no target grid was "
            "given. Pass geobox=GeoBox(...) (exact grid), or crs= and resolution= (e.g. "
            "crs='EPSG:32633', resolution=30), or load each CRS separately."
        )


def _union_geobox(gboxes: list[Any]) -> Any:
    """The smallest geobox on the grid of the first one covering all of them."""
    from odc.geo.geobox import GeoBox

    first = gboxes[0]
    if all(g == first for g in gboxes[1:]):
        return first
    a = first.affine
    inv = ~a
    r0 = c0 = 0.0
    r1, c1 = (float(s) for s in first.shape)
    for g in gboxes[1:]:
        if g.crs != first.crs or not np.allclose(
            [abs(g.affine.a), abs(g.affine.e)], [abs(a.a), abs(a.e)], rtol=1e-9
        ):
            raise GridMismatchError(
                "The items need different output grids (CRS or pixel size differ between "
                f"items: {first.crs} {first.resolution} vs {g.crs} {g.resolution}). Pass "
                "geobox=GeoBox(...) or crs= and resolution= to choose one."
            )
        ny, nx = g.shape
        for x, y in ((0, 0), (nx, 0), (0, ny), (nx, ny)):
            c, r = apply_affine(inv, *apply_affine(g.affine, x, y))
            r0, r1, c0, c1 = min(r0, r), max(r1, r), min(c0, c), max(c1, c)
    r0i, c0i = int(np.floor(r0 + 1e-6)), int(np.floor(c0 + 1e-6))
    r1i, c1i = int(np.ceil(r1 - 1e-6)), int(np.ceil(c1 - 1e-6))
    return GeoBox((r1i - r0i, c1i - c0i), shift_affine(a, c0i, r0i), first.crs)


ANCHORS = ("auto", "center", "edge", "floating")


def resolve_anchor(
    anchor: Any, presets: Sequence[Preset | None], *, derived: bool
) -> Any:
    """The odc-geo anchor of a derived output grid (None: odc-stac's own choice).

    ``"auto"`` uses the presets' ``grid_anchor`` (Landsat ``"center"``, Sentinel-2 and MODIS
    ``"edge"``) when the grid is derived from ``crs=``/``resolution=`` (``derived``), and the
    items' own alignment otherwise.
    """
    if isinstance(anchor, str):
        if anchor not in ANCHORS:
            raise InvalidParameterError(
                f"anchor={anchor!r} is not understood. Use 'auto' (the product's own pixel "
                "grid: Landsat pixel centres on multiples of the resolution, Sentinel-2 and "
                "MODIS pixel edges), 'center', 'edge', 'floating' (no snapping), or an (x, y) "
                "fraction of a pixel such as (0.5, 0.5)."
            )
        if anchor != "auto":
            return anchor
        if not derived:
            return None
        found = {p.grid_anchor for p in presets if p is not None and p.grid_anchor is not None}
        return found.pop() if len(found) == 1 else None
    try:
        ax, ay = (float(v) for v in anchor)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"anchor={anchor!r} must be 'auto', 'center', 'edge', 'floating' or an (x, y) pair "
            "of pixel fractions in [0, 1), e.g. (0.5, 0.5)."
        ) from None
    if not (0.0 <= ax < 1.0 and 0.0 <= ay < 1.0):
        raise InvalidParameterError(
            f"anchor={anchor!r}: the (x, y) pixel fractions must lie in [0, 1)."
        )
    from odc.geo import xy_

    return xy_(ax, ay)


def _native_anchor(plans: Sequence[tuple[_Group, list[Any]]], crs: Any, resolution: Any) -> Any:
    """The anchor that puts a derived grid on the items' own pixel grid, or None.

    Applies when the items share one pixel grid alignment, the requested CRS is theirs (or its
    other-hemisphere UTM twin, 10,000,000 m of false northing away: not a multiple of 30 m, so
    Landsat's grid has edges on 30 k + 25 m there) and the requested pixel size is theirs.
    """
    from odc.geo import CRS, xy_

    if isinstance(crs, str) and crs.lower() == "utm":
        return None
    found: set[tuple[Any, float, float, float, float]] = set()
    for group, items in plans:
        keys = [o.info.asset for o in group.outs if not o.info.is_qa]
        for it in items:
            key = next((k for k in keys if k in it.assets), None)
            if key is None:
                continue
            fields = {**it.properties, **it.assets[key].extra_fields}
            t = fields.get("proj:transform")
            native = _item_crs(it, key)
            if not t or native is None or t[1] != 0 or t[3] != 0:
                return None
            found.add((native, abs(float(t[0])), abs(float(t[4])), float(t[2]), float(t[5])))
    natives = {f[0] for f in found}
    if len(natives) != 1:
        return None
    (native,) = natives
    try:
        target = native if crs is None else CRS(crs)
    except Exception:
        return None
    shift = 0.0
    if target != native:
        a, b = _utm_zone(native), _utm_zone(target)
        if a is None or b is None or a[0] != b[0] or a[1] == b[1]:
            return None
        shift = _UTM_SOUTH_FALSE_NORTHING if a[1] else -_UTM_SOUTH_FALSE_NORTHING
    fracs = set()
    for _, rx, ry, x0, y0 in found:
        res = rx if resolution is None else abs(float(resolution))
        if not (np.isclose(rx, res, rtol=1e-9) and np.isclose(ry, res, rtol=1e-9)):
            return None
        fx, fy = (x0 / res) % 1.0, ((y0 + shift) / res) % 1.0
        fx, fy = (0.0 if f > 1 - 1e-9 else f for f in (fx, fy))
        fracs.add((round(fx, 9), round(fy, 9)))
    if len(fracs) != 1:
        return None
    fx, fy = fracs.pop()
    return xy_(fx, fy)


def _output_geobox(
    plans: Sequence[tuple[_Group, list[Any]]],
    *,
    crs: Any,
    resolution: Any,
    bbox: Any,
    anchor: Any = None,
) -> Any:
    import odc.stac

    gboxes = []
    for group, items in plans:
        parsed = list(odc.stac.parse_items(items, md_plugin=_md_parser(_stac_cfg(group), None)))
        data = [o.info.asset for o in group.outs if not o.info.is_qa]
        bands = list(dict.fromkeys(data or [o.info.asset for o in group.outs]))
        kw: dict[str, Any] = {}
        if crs is not None:
            kw["crs"] = crs
        if resolution is not None:
            kw["resolution"] = resolution
        if bbox is not None:
            kw["bbox"] = tuple(bbox)
        if anchor is not None:
            kw["anchor"] = anchor
        gb = odc.stac.output_geobox(parsed, bands=bands, **kw)
        if gb is None:
            raise InvalidParameterError(
                "Could not work out an output grid from the items (no CRS/resolution in their "
                "projection metadata). Pass geobox=GeoBox(...) or crs= and resolution=."
            )
        gboxes.append(_tidy(gb))
    return _union_geobox(gboxes)


def _tidy(gbox: Any) -> Any:
    """A projected grid's origin rounded to the micrometre (anchors computed in floats)."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    if gbox.crs is None or gbox.crs.geographic:
        return gbox
    a = gbox.affine
    c, f = round(a.c, 6), round(a.f, 6)
    if (c, f) == (a.c, a.f):
        return gbox
    return GeoBox(gbox.shape, Affine(a.a, a.b, c, a.d, a.e, f), gbox.crs)


def _utm_zone(crs: Any) -> tuple[int, bool] | None:
    """(zone, north) of a WGS 84 UTM CRS (EPSG:326zz / 327zz), else None."""
    epsg = getattr(crs, "epsg", None)
    if epsg is None:
        return None
    if 32601 <= epsg <= 32660:
        return epsg - 32600, True
    if 32701 <= epsg <= 32760:
        return epsg - 32700, False
    return None


_UTM_SOUTH_FALSE_NORTHING = 10_000_000.0


def _twin_geobox(gbox: Any, items: Sequence[Any], assets: Sequence[str]) -> Any:
    """``gbox`` in the items' own UTM zone when they use its other-hemisphere twin, else None.

    Landsat delivers southern scenes in the northern UTM zone (negative northings) while users
    often ask for the southern one (EPSG:327zz): the two differ by a false northing of
    10,000,000 m, so the same pixels lie on a translated grid. Reading them on that grid and
    relabelling the coordinates keeps every value exact, where a warp through GDAL would
    resample them.
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    target = _utm_zone(gbox.crs)
    if target is None:
        return None
    crss = set()
    for it in items:
        key = next((a for a in assets if a in it.assets), None)
        crs = _item_crs(it, key) if key is not None else None
        if crs is None:
            return None
        crss.add(crs)
    if len(crss) != 1:
        return None
    (native,) = crss
    zone = _utm_zone(native)
    if zone is None or zone[0] != target[0] or zone[1] == target[1]:
        return None
    shift = _UTM_SOUTH_FALSE_NORTHING if zone[1] else -_UTM_SOUTH_FALSE_NORTHING
    a = gbox.affine
    return GeoBox(gbox.shape, Affine(a.a, a.b, a.c, a.d, a.e, round(a.f - shift, 6)), native)


def grid_footprint(item: Any, gbox: Any, assets: Sequence[str]) -> Any:
    """The lon/lat outline of the pixel grid an item declares when it intersects ``gbox``.

    None when the item declares no grid (``proj:*``) for these assets or the grid misses
    ``gbox`` (tested in the item's own CRS).
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    key = next((a for a in assets if a in item.assets), None)
    if key is None:
        return None
    fields = {**item.properties, **item.assets[key].extra_fields}
    crs = _item_crs(item, key)
    if crs is None or not fields.get("proj:transform") or not fields.get("proj:shape"):
        return None
    try:
        grid = GeoBox(tuple(fields["proj:shape"][:2]), Affine(*fields["proj:transform"][:6]), crs)
        area = gbox.extent.to_crs(crs, resolution="auto")
        if not (grid.extent.intersects(area) and grid.extent.intersection(area).area > 0):
            return None
        return grid.extent.to_crs("EPSG:4326", resolution="auto")
    except Exception:
        return None


def check_overlap(
    items: Sequence[Any],
    gbox: Any,
    *,
    what: str = "items",
    bbox: Any = None,
    grid_assets: Sequence[str] = (),
) -> list[Any]:
    """Items whose footprint intersects ``gbox``; raise :class:`NoOverlapError` if none does.

    ``bbox`` (the user's lon/lat box the grid came from) is quoted in the message if given.
    With ``grid_assets``, an item also counts when the pixel grid it declares for one of
    these assets (``proj:shape``/``proj:transform`` in its CRS) intersects ``gbox``: lon/lat
    footprints of large tiles (MODIS sinusoidal tiles, 10 degrees tall) drawn with few
    vertices miss their curved edges, and an area near such an edge would lose its tile. Such
    items are returned as copies whose footprint is the outline of their grid (odc-stac
    reads an item only where its footprint says it has data).
    """
    try:
        aoi = gbox.extent.to_crs("EPSG:4326", resolution="auto")
    except Exception:
        return list(items)
    hits, unknown = [], False
    for it in items:
        fp = _footprint(it)
        if fp is None:
            unknown = True
            hits.append(it)
            continue
        try:
            if fp.intersects(aoi) and fp.intersection(aoi).area > 0:
                hits.append(it)
            elif grid_assets:
                outline = grid_footprint(it, gbox, grid_assets)
                if outline is not None:  # a footprint too coarse: use the declared grid
                    fixed = it.clone()
                    fixed.geometry = outline.json
                    fixed.bbox = list(outline.boundingbox)
                    hits.append(fixed)
        except Exception:
            hits.append(it)
    if not hits and not unknown:
        if bbox is not None:
            where = f"bbox={tuple(bbox)!r}"
        else:
            where = f"grid with lon/lat bounds {[round(v, 4) for v in aoi.boundingbox]!r}"
        boxes = [tuple(round(v, 4) for v in (it.bbox or ())) for it in list(items)[:3]]
        raise NoOverlapError(
            f"The area of interest ({where}) does not intersect any of the "
            f"{len(items)} {what} (their bboxes include {boxes!r}). Check the bbox order "
            "(west, south, east, north in degrees), the geobox CRS, or search again for "
            "this area."
        )
    return hits
