"""Load STAC items into a fusion cube: odc-stac underneath, physical values and masks on top.

odc-stac reads the pixels, places them on the output grid and groups items into time slices;
it does *not* apply ``scale``/``offset`` from ``raster:bands`` (opendatacube/odc-stac#55), and
products such as MODIS declare no ``nodata`` in their items, Planetary Computer Sentinel-2
items no data type at all. :func:`load_cube` adds exactly that, per item: physical values in a
float dtype with NaN for nodata, QA-based masks (cloud, shadow, snow, fill...) from a sensor
preset (:mod:`xfusion.cube.presets`), a per-time clear fraction, ``units`` attributes, sorted
time, retries and errors naming the item and asset that could not be read.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from xfusion.cube.presets import BandSpec, Preset, QAFlag, get_preset, preset_for_collection
from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    InvalidParameterError,
    NoOverlapError,
    VariableNotFoundError,
)

if TYPE_CHECKING:
    from xfusion.stac._read import LoadReport

__all__ = ["COLLECTION_DEFAULTS", "BandInfo", "band_info", "load_cube"]

#: Per-collection, per-asset defaults for what the items do not declare (nodata). Kept for
#: compatibility; the presets of :mod:`xfusion.cube.presets` hold the full tables.
COLLECTION_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "modis-11A1-061": {  # MOD11A1/MYD11A1: LST fill 0 (valid DN 7500-65535)
        "LST_Day_1km": {"nodata": 0},
        "LST_Night_1km": {"nodata": 0},
    },
    "modis-43A4-061": {  # MCD43A4: NBAR fill 32767, mandatory QA fill 255
        **{f"Nadir_Reflectance_Band{n}": {"nodata": 32767} for n in range(1, 8)},
        **{f"BRDF_Albedo_Band_Mandatory_Quality_Band{n}": {"nodata": 255} for n in range(1, 8)},
    },
    "modis-13Q1-061": {  # MOD13Q1: VI fill -3000
        "250m_16_days_NDVI": {"nodata": -3000},
        "250m_16_days_EVI": {"nodata": -3000},
    },
}

_UNITS = {"kelvin": "K", "k": "K", "degree_kelvin": "K", "celsius": "degC"}
_QA_NAME = re.compile(r"(^|_)(qa|qc|scl)(_|$)|quality", re.IGNORECASE)
_PROJ_CRS_KEYS = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson")
_INT_KINDS = ("i", "u")

Mask = Literal["auto"] | Sequence[str] | None
Sign = Literal["auto"] | bool | Callable[[str], str]


@dataclass(frozen=True)
class BandInfo:
    """How to turn the stored values of one band into physical values."""

    asset: str
    """Asset key in the items (the band may have been requested by an alias)."""
    scale: float = 1.0
    """Multiplier: item ``raster:bands``, else the preset (1 when neither says)."""
    offset: float = 0.0
    """Offset: item ``raster:bands``, else the preset, then preset rules (0 when unknown)."""
    nodata: float | None = None
    """Stored value meaning "no data": ``raster:bands``, else the preset/collection table."""
    unit: str | None = None
    """Unit of the physical values, normalised (``"kelvin"`` -> ``"K"``)."""
    data_type: str | None = None
    """Stored data type (``raster:bands``, else the preset)."""
    title: str | None = None
    """Asset title, used as ``long_name``."""
    is_qa: bool = False
    """Whether the asset is a QA/classification band (loaded with nearest resampling)."""
    valid_range: tuple[float, float] | None = None
    """Valid stored values (preset); others become NaN."""
    transform: str | None = None
    """Derived-band transform (``"db"``)."""


def _item_dict(item: Any) -> Any:
    import pystac

    if isinstance(item, pystac.Item):
        return item
    if isinstance(item, Mapping):
        return pystac.Item.from_dict(dict(item))
    raise TypeError(
        f"Expected pystac.Item objects (or item dicts), found {type(item).__name__}. Pass "
        "`search.items()` from pystac-client or `[pystac.Item.from_file(p) for p in paths]`."
    )


def _as_items(items: Any) -> list[Any]:
    """Items from a list, an ItemCollection, a pystac-client ItemSearch or a single item."""
    import pystac

    if isinstance(items, pystac.Item | Mapping):
        return [_item_dict(items)]
    if hasattr(items, "items") and callable(items.items) and hasattr(items, "url"):
        items = items.items()  # pystac_client.ItemSearch
    return [_item_dict(it) for it in items]


def _resolve_asset(item: Any, band: str) -> str | None:
    """Asset key of ``band`` in ``item``: the key itself or an ``eo:bands`` name/common_name."""
    if band in item.assets:
        return band
    for key, asset in item.assets.items():
        for eo in asset.extra_fields.get("eo:bands", []) or []:
            if band in (eo.get("common_name"), eo.get("name")):
                return str(key)
    return None


def _raster_band(asset: Any) -> dict[str, Any]:
    bands = asset.extra_fields.get("raster:bands") or asset.extra_fields.get("bands") or [{}]
    return dict(bands[0]) if bands else {}


def _norm_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    return _UNITS.get(str(unit).lower(), str(unit))


def _data_assets(item: Any) -> list[str]:
    out = []
    for key, asset in item.assets.items():
        roles = asset.roles or []
        mtype = asset.media_type or ""
        if "data" in roles or "image/tiff" in mtype or "raster:bands" in asset.extra_fields:
            out.append(str(key))
    return sorted(out) or sorted(map(str, item.assets))


def _item_preset(item: Any, preset: Preset | None) -> Preset | None:
    return preset if preset is not None else preset_for_collection(item.collection_id)


def _locate(item: Any, band: str, preset: Preset | None) -> tuple[str | None, BandSpec | None]:
    """(asset key, spec) of a requested band in one item; asset None when absent."""
    spec = preset.spec(band) if preset is not None else None
    if preset is not None and band in preset.bands:
        for key in spec.assets:  # type: ignore[union-attr]
            if key in item.assets:
                return key, spec
        key = _resolve_asset(item, band)
        return key, spec if key is not None else None
    key = _resolve_asset(item, band)
    if key is not None and spec is None and preset is not None:
        spec = preset.spec(key)
    return key, spec


def _info(item: Any, key: str, spec: BandSpec | None) -> BandInfo:
    asset = item.assets[key]
    rb = _raster_band(asset)

    def pick(name: str) -> Any:
        value = rb.get(name)
        if value is None and spec is not None:
            value = getattr(spec, name)
        return value

    nodata = pick("nodata")
    if nodata is None:
        nodata = COLLECTION_DEFAULTS.get(item.collection_id or "", {}).get(key, {}).get("nodata")
    scale, offset = pick("scale"), pick("offset")
    unit = _norm_unit(rb.get("unit")) if spec is None or spec.unit is None else spec.unit
    if unit is None and "reflectance" in (asset.roles or []):
        unit = "1"
    if spec is not None:
        for rule in spec.rules:
            if rule.matches(item.properties):
                scale = rule.scale if rule.scale is not None else scale
                offset = rule.offset if rule.offset is not None else offset
    extra = asset.extra_fields
    if spec is not None and key in spec.assets:
        is_qa = spec.qa
    else:
        is_qa = (
            "classification:bitfields" in extra
            or "classification:classes" in extra
            or any("classification:classes" in b for b in (extra.get("raster:bands") or []))
            or bool(_QA_NAME.search(key))
        )
    title = asset.title or (spec.long_name if spec is not None else None)
    if spec is not None and spec.long_name and spec.transform is not None:
        title = spec.long_name
    return BandInfo(
        asset=key,
        scale=1.0 if scale is None else float(scale),
        offset=0.0 if offset is None else float(offset),
        nodata=nodata,
        unit=unit,
        data_type=pick("data_type"),
        title=title,
        is_qa=bool(is_qa),
        valid_range=None if spec is None else spec.valid_range,
        transform=None if spec is None else spec.transform,
    )


def band_info(item: Any, band: str, /, *, preset: str | Preset | None = None) -> BandInfo:
    """Return the scale, offset, nodata and unit of ``band`` in one STAC item.

    Item metadata (``raster:bands``) is completed by the preset of the item's collection
    (or ``preset``): e.g. the MODIS LST fill value 0 the items do not declare, the data type
    of Planetary Computer Sentinel-2 bands, the ``-0.1`` offset of Sentinel-2 items with
    processing baseline ``>= 04.00``.

    Parameters
    ----------
    item : pystac.Item
        The item.
    band : str
        Asset key, preset band name (``"lst"``, ``"red"``...), or an alias (``eo:bands``
        ``common_name`` or ``name``) as odc-stac accepts.
    preset : str or Preset, optional
        Preset to complete the metadata with; default: the one registered for the item's
        collection, if any.

    Returns
    -------
    BandInfo

    Raises
    ------
    VariableNotFoundError
        When the item has no such asset or alias (the message lists its assets).

    Examples
    --------
    >>> band_info(item, "lwir11")  # doctest: +SKIP
    BandInfo(asset='lwir11', scale=0.00341802, offset=149.0, nodata=0, unit='K', ...)
    """
    item = _item_dict(item)
    p = _item_preset(item, None if preset is None else get_preset(preset))
    key, spec = _locate(item, band, p)
    if key is None:
        extra = "" if p is None else f" The preset {p.name!r} also knows {sorted(p.bands)!r}."
        raise VariableNotFoundError(
            f"Band {band!r} is not an asset of item {item.id!r} (collection "
            f"{item.collection_id!r}). Its assets are {_data_assets(item)!r}; pass one of them "
            f"(or an eo:bands common_name) in `bands=`.{extra}"
        )
    return _info(item, key, spec)


def _has_projection(item: Any, key: str) -> bool:
    asset = item.assets[key]
    fields = {**item.properties, **asset.extra_fields}
    declared = any("projection" in ext for ext in item.stac_extensions or [])
    has_crs = any(fields.get(k) is not None for k in _PROJ_CRS_KEYS)
    return declared and has_crs and "proj:shape" in fields and "proj:transform" in fields


# --------------------------------------------------------------------------------------------
# load plans


@dataclass(frozen=True)
class _Out:
    """One output variable of one item: which asset and how to convert it."""

    name: str
    info: BandInfo
    spec_qa: bool


@dataclass(frozen=True)
class _Group:
    """Items read the same way (same assets, scales, offsets, QA), loaded in one odc call."""

    outs: tuple[_Out, ...]
    flags: tuple[QAFlag, ...]
    qa_types: tuple[tuple[str, str], ...]
    collections: tuple[str, ...]


def _qa_dtype(item: Any, key: str, preset: Preset | None) -> str:
    spec = preset.spec(key) if preset is not None else None
    rb = _raster_band(item.assets[key])
    dt = rb.get("data_type") or (spec.data_type if spec is not None else None) or "int32"
    kind = np.dtype(dt).kind
    if kind not in _INT_KINDS:
        raise InvalidParameterError(
            f"QA asset {key!r} of item {item.id!r} has data type {dt!r}; QA flags need an "
            "integer band. Fix the preset's BandSpec(data_type=...) for it."
        )
    return str(np.dtype(dt))


def _resolve_mask(mask: Mask, presets: Sequence[Preset | None], explicit: bool) -> tuple[str, ...]:
    if mask is None or mask is False:
        return ()
    if isinstance(mask, str):
        if mask != "auto":
            mask = (mask,)
        else:
            if not explicit:
                return ()
            names: list[str] = []
            for p in presets:
                if p is not None:
                    names += [m for m in p.default_mask if m not in names]
            return tuple(names)
    names = list(dict.fromkeys(mask))
    known = sorted({f for p in presets if p is not None for f in p.flags})
    bad = [m for m in names if m not in known]
    if bad:
        where = "the preset" if known else "no preset (pass preset=...)"
        raise InvalidParameterError(
            f"Unknown mask flag(s) {bad!r}: {where} defines {known!r}. Pass some of them, "
            "mask='auto' for the preset's default, or mask=None for no masking."
        )
    return tuple(names)


def _plan(
    items: list[Any],
    band_list: list[str],
    presets: list[Preset | None],
    flags_wanted: tuple[str, ...],
) -> list[tuple[_Group, list[Any]]]:
    """Group the items by how they are read (asset keys, scales, offsets, QA assets)."""
    groups: dict[_Group, list[Any]] = {}
    for item, p in zip(items, presets, strict=True):
        outs = []
        for band in band_list:
            key, spec = _locate(item, band, p)
            if key is None:
                continue
            if not _has_projection(item, key):
                raise InvalidParameterError(
                    f"Item {item.id!r} has no projection metadata for asset {key!r}: odc-stac "
                    "needs the projection extension in `stac_extensions` plus `proj:shape`, "
                    "`proj:transform` and one of `proj:code`/`proj:epsg`/`proj:wkt2` (on the "
                    "item or the asset). Add them, e.g. with "
                    "`pystac.extensions.projection.ProjectionExtension.ext(item, "
                    "add_if_missing=True).apply(epsg=..., shape=..., transform=...)`."
                )
            info = _info(item, key, spec)
            outs.append(_Out(band, info, bool(spec is not None and spec.qa)))
        data_assets = {o.info.asset for o in outs if not o.info.is_qa}
        flags: list[QAFlag] = []
        qa_types: dict[str, str] = {}
        if p is not None and flags_wanted:
            for flag in p.qa:
                if flag.name not in flags_wanted or flag.asset not in item.assets:
                    continue
                if not any(flag.masks(a) for a in data_assets):
                    continue
                flags.append(flag)
                qa_types[flag.asset] = _qa_dtype(item, flag.asset, p)
        for o in outs:
            if o.info.is_qa:
                qa_types.setdefault(o.info.asset, _qa_dtype(item, o.info.asset, p))
        key_ = _Group(
            outs=tuple(outs),
            flags=tuple(flags),
            qa_types=tuple(sorted(qa_types.items())),
            collections=(item.collection_id or "*",),
        )
        groups.setdefault(key_, []).append(item)
    return list(groups.items())


def _stac_cfg(group: _Group, load_dtype: str | None = None) -> dict[str, Any]:
    """odc-stac config stating data type and nodata of every asset loaded for a group.

    An asset entry in ``stac_cfg`` replaces the item metadata, so everything known is given.
    With ``load_dtype`` the data (non-QA) assets are declared in that type, which makes
    odc-stac read them as floats (its per-band ``dtype=`` mapping breaks its chunking code).
    """
    assets: dict[str, dict[str, Any]] = {}
    qa_types = dict(group.qa_types)
    for o in group.outs:
        entry: dict[str, Any] = {}
        dt = qa_types.get(o.info.asset) or load_dtype or o.info.data_type
        if dt:
            entry["data_type"] = dt
        if o.info.nodata is not None:
            entry["nodata"] = o.info.nodata
        if o.info.unit:
            entry["unit"] = o.info.unit
        assets[o.info.asset] = entry
    for key, dt in qa_types.items():
        assets.setdefault(key, {"data_type": dt})
    return {c: {"assets": dict(assets)} for c in group.collections}


# --------------------------------------------------------------------------------------------
# grids


def _item_crs(item: Any, key: str) -> Any:
    from odc.geo import CRS

    fields = {**item.properties, **item.assets[key].extra_fields}
    if fields.get("proj:code"):
        return CRS(fields["proj:code"])
    if fields.get("proj:epsg") is not None:
        return CRS(f"EPSG:{int(fields['proj:epsg'])}")
    if fields.get("proj:wkt2"):
        return CRS(fields["proj:wkt2"])
    if fields.get("proj:projjson"):
        return CRS(fields["proj:projjson"])
    return None


def _crs_label(crs: Any) -> str:
    epsg = getattr(crs, "epsg", None)
    if epsg:
        return f"EPSG:{epsg}"
    wkt = str(getattr(crs, "wkt", crs))
    m = re.search(r'METHOD\["([^"]+)"|PROJECTION\["([^"]+)"', wkt)
    return f"{m.group(1) or m.group(2)} (WKT)" if m else wkt[:60]


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


def apply_affine(aff: Any, x: float, y: float) -> tuple[float, float]:
    """``aff`` applied to the point ``(x, y)`` (no ``*``: deprecated in affine 3)."""
    return aff.a * x + aff.b * y + aff.c, aff.d * x + aff.e * y + aff.f


def shift_affine(aff: Any, col: float, row: float) -> Any:
    """The transform of the pixel grid of ``aff`` starting at pixel ``(col, row)``."""
    from affine import Affine

    x, y = apply_affine(aff, col, row)
    return Affine(aff.a, aff.b, x, aff.d, aff.e, y)


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


def _md_parser(cfg: Mapping[str, Any], with_properties: Any) -> Any:
    from odc.stac._mdtools import StacMDParser

    cfg = dict(cfg)
    if with_properties is not None:
        cfg["with_properties"] = with_properties
    return StacMDParser(cfg)


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


def _footprint(item: Any) -> Any:
    from odc.geo.geom import Geometry, box

    if item.geometry is not None:
        with contextlib.suppress(Exception):  # invalid geometry: fall back to the bbox
            return Geometry(item.geometry, "EPSG:4326")
    if item.bbox is not None:
        return box(*item.bbox, "EPSG:4326")
    return None


def _grid_footprint(item: Any, gbox: Any, assets: Sequence[str]) -> Any:
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
                outline = _grid_footprint(it, gbox, grid_assets)
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


# --------------------------------------------------------------------------------------------
# signing and item preparation


def _prepare_items(
    items: list[Any],
    *,
    sign: Sign,
    patch_url: Callable[[str], str] | None,
    assets: set[str],
) -> list[Any]:
    """Signed/patched copies with absolute hrefs for the assets to read."""
    from xfusion.stac._sign import is_blob_href, sign_items

    if sign is True or sign == "auto":
        todo = [it for it in items if any(
            is_blob_href(it.assets[k].href) for k in assets if k in it.assets
        )]
        if todo:
            signed = iter(sign_items(todo, force=sign is True, assets=assets))
            ids = {id(it) for it in todo}
            items = [next(signed) if id(it) in ids else it for it in items]
    elif callable(sign):
        items = sign_items(items, signer=sign, assets=assets)
    elif sign is not False:
        raise InvalidParameterError(
            f"sign={sign!r} is not understood. Use 'auto' (sign Planetary Computer URLs that "
            "need it), True (always re-sign), False (never), or a callable href -> href."
        )
    if patch_url is not None:
        out = []
        for it in items:
            new = it.clone()
            for k in assets:
                if k in new.assets:
                    new.assets[k].href = patch_url(new.assets[k].get_absolute_href() or
                                                   new.assets[k].href)
            out.append(new)
        items = out
    return items


def _filter_platform(items: list[Any], presets: list[Preset | None], platform: Any) -> list[Any]:
    if platform is not None:
        wanted = {platform} if isinstance(platform, str) else set(platform)
        wanted = {str(w).lower() for w in wanted}
        kept = [it for it in items if str(it.properties.get("platform", "")).lower() in wanted]
        if not kept:
            found = sorted({str(it.properties.get("platform")) for it in items})
            raise InvalidParameterError(
                f"platform={platform!r} matches none of the {len(items)} items; their platforms "
                f"are {found!r}."
            )
        return kept
    seen: dict[str, set[str]] = {}
    for it, p in zip(items, presets, strict=True):
        if p is not None and p.platforms:
            seen.setdefault(p.name, set()).add(str(it.properties.get("platform", "")).lower())
    for name, plats in seen.items():
        if len(plats) > 1:
            raise InvalidParameterError(
                f"The {name!r} items mix platforms {sorted(plats)!r}, which overpass at "
                "different times of day (Terra ~10:30, Aqua ~13:30 local solar time); one "
                "cube would mosaic them into one date. Pass platform='terra' (or 'aqua'), or "
                "search with platform=..."
            )
    return items


# --------------------------------------------------------------------------------------------
# pixels -> physical values


def _flagged(qa: xr.DataArray, flag: QAFlag) -> xr.DataArray:
    field = qa
    if flag.bits is not None:
        first, length = flag.bits
        field = np.bitwise_and(np.right_shift(qa, first), (1 << length) - 1)
    return field.isin(list(flag.values))


def _to_physical(
    raw: xr.DataArray,
    info: BandInfo,
    dtype: np.dtype,
    invalid: xr.DataArray | None,
    name: str,
) -> xr.DataArray:
    """Stored values -> physical values in ``dtype`` with NaN for nodata/flags (lazy)."""
    values = raw.astype(dtype)
    valid = None
    if raw.dtype.kind == "f":
        valid = np.isfinite(raw)
    nodata = info.nodata
    if nodata is None:
        nodata = raw.attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        ok = raw != raw.dtype.type(nodata) if raw.dtype.kind == "f" else raw != nodata
        valid = ok if valid is None else (valid & ok)
    if info.valid_range is not None:
        lo, hi = info.valid_range
        ok = (raw >= lo) & (raw <= hi)
        valid = ok if valid is None else (valid & ok)
    if invalid is not None:
        valid = ~invalid if valid is None else (valid & ~invalid)
    if info.scale != 1.0:
        values = values * dtype.type(info.scale)
    if info.offset != 0.0:
        values = values + dtype.type(info.offset)
    if info.transform == "db":
        positive = values > 0
        valid = positive if valid is None else (valid & positive)
        values = dtype.type(10.0) * np.log10(values.where(positive))
    if valid is not None:
        values = values.where(valid)
    attrs = {k: v for k, v in raw.attrs.items() if k not in ("nodata", "_FillValue", "units")}
    if info.unit is not None:
        attrs["units"] = info.unit
    elif "units" in raw.attrs:
        attrs["units"] = raw.attrs["units"]
    if info.title:
        attrs["long_name"] = info.title
    values.attrs = attrs
    values.encoding = {"grid_mapping": "spatial_ref"} if "spatial_ref" in raw.coords else {}
    values.name = name
    return values.astype(dtype, copy=False)


def _convert_group(
    raw: xr.Dataset, group: _Group, dtype: np.dtype, mask_names: tuple[str, ...]
) -> xr.Dataset:
    out = xr.Dataset(coords=raw.coords)
    for o in group.outs:
        invalid = None
        if not o.info.is_qa:
            for flag in group.flags:
                if flag.masks(o.info.asset):
                    hit = _flagged(raw[flag.asset], flag)
                    invalid = hit if invalid is None else (invalid | hit)
        var = _to_physical(raw[o.info.asset], o.info, dtype, invalid, o.name)
        if invalid is not None:
            var.attrs["masked_flags"] = " ".join(
                sorted({f.name for f in group.flags if f.masks(o.info.asset)})
            )
        out[o.name] = var
    for name in raw.data_vars:  # with_properties variables
        if name not in {o.info.asset for o in group.outs} and name not in dict(group.qa_types):
            out[name] = raw[name]
    out.attrs = dict(raw.attrs)
    return out


def clear_fraction(ds: xr.Dataset, names: Iterable[Hashable], /) -> xr.DataArray:
    """Per-time fraction of pixels where every named variable is valid (lazy, float32)."""
    from xfusion.cube.validate import spatial_dims

    valid = None
    for n in names:
        ok = ds[n].notnull()
        valid = ok if valid is None else (valid & ok)
    if valid is None:
        raise InvalidParameterError("clear_fraction() needs at least one variable name.")
    frac = valid.mean(dim=list(spatial_dims(ds, name="cube"))).astype(np.float32)
    frac.attrs = {
        "long_name": "Fraction of the grid that is observed, valid and clear",
        "units": "1",
    }
    return frac


# --------------------------------------------------------------------------------------------
# the public loader


def load_cube(
    items: Iterable[Any] | Any,
    /,
    *,
    bands: str | Sequence[str] | None = None,
    preset: str | Preset | None = None,
    geobox: Any = None,
    crs: Any = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    anchor: str | tuple[float, float] = "auto",
    chunks: Mapping[str, int | str] | None = None,
    groupby: str | Callable[..., Any] | None = "solar_day",
    resampling: str | Mapping[str, str] = "bilinear",
    mask: Mask = "auto",
    platform: str | Sequence[str] | None = None,
    sign: Sign = "auto",
    patch_url: Callable[[str], str] | None = None,
    dtype: Any = "float32",
    with_properties: Sequence[str | Mapping[str, Any]] | None = None,
    fail_on_error: bool = True,
    report: LoadReport | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
    http_timeout: float | None = None,
) -> xr.Dataset:
    """Load STAC items as a cube of physical values with NaN gaps (lazy with ``chunks=``).

    Wraps :func:`odc.stac.load` and then, per item and band, applies ``value = DN * scale +
    offset`` (item ``raster:bands``, completed by the sensor preset: MODIS LST fill 0, Planetary
    Computer Sentinel-2 data types, the Sentinel-2 ``-0.1`` offset of processing baseline
    ``>= 04.00``...), turns nodata and out-of-range values into NaN, masks pixels whose QA
    flags are set (cloud, shadow, snow, fill...) and adds the per-time clear fraction.

    Parameters
    ----------
    items : iterable of pystac.Item, pystac.ItemCollection or pystac_client.ItemSearch
        The items (or item dicts), e.g. from :func:`xfusion.stac.search`.
    bands : str or sequence of str, optional
        Bands to load, one data variable each: preset band names (``"lst"``, ``"red"``,
        ``"nir"``, ``"vv_db"``...), asset keys (``"lwir11"``, ``"B04"``) or ``eo:bands``
        common names. Default: the preset's default bands.
    preset : str or Preset, optional
        Sensor preset (:func:`xfusion.cube.presets.list_presets`), e.g. ``"landsat-c2-l2"``.
        Default: the preset registered for the items' collection is used for metadata and
        band names, but no QA mask is applied unless ``mask=`` names flags.
    geobox : odc.geo.geobox.GeoBox, optional
        Exact output grid (recommended: deterministic shape and alignment).
    crs : str or CRS, optional
        Output CRS (``"utm"`` allowed), with ``resolution``. Not with ``geobox``.
    resolution : float, optional
        Output pixel size in CRS units. Not with ``geobox``.
    bbox : sequence of 4 floats, optional
        Area of interest ``(west, south, east, north)`` in degrees; the grid is the items'
        native grid (or ``crs``/``resolution``) cropped to it. Not with ``geobox``.
    anchor : {"auto", "center", "edge", "floating"} or (float, float), default "auto"
        Alignment of a grid derived from ``crs``/``resolution``/``bbox``. ``"auto"``: the
        product's own pixel grid, from the preset: Landsat pixel *centres* on multiples of
        the resolution (30 m pixels with edges on odd multiples of 15 m, as USGS delivers
        them), Sentinel-2 and MODIS pixel *edges* on multiples of it; without ``crs`` and
        ``resolution`` the items' own alignment. So ``crs="EPSG:326zz", resolution=30``
        reads Landsat values as they are, without resampling. Choose another alignment with
        ``"center"``, ``"edge"``, ``"floating"`` (no snapping: the grid starts at the bbox
        corner) or an ``(x, y)`` fraction of a pixel; or pass an exact ``geobox``. When
        ``crs`` is the other-hemisphere twin of the items' UTM zone (EPSG:327zz for Landsat
        delivered in 326zz), the items are read on the translated grid and relabelled, so
        their values stay exact too.
    chunks : mapping, optional
        Dask chunks, e.g. ``{"time": 1, "x": 2048, "y": 2048}``; ``{}`` gives one chunk per
        date. ``None`` loads eagerly.
    groupby : str or callable, default "solar_day"
        How items become time slices (odc-stac): ``"solar_day"`` mosaics the items of one
        overpass; ``"time"``, ``"id"``, a property name or a callable also work.
    resampling : str or mapping, default "bilinear"
        Resampling of data bands; QA bands always use ``"nearest"`` unless a mapping
        (``{"*": ..., "<asset>": ...}``) names them.
    mask : "auto", sequence of str or None, default "auto"
        QA flags that make a pixel NaN in every data band they apply to (names from
        ``get_preset(name).flags``: ``"fill"``, ``"cloud"``, ``"shadow"``, ``"snow"``,
        ``"cirrus"``...). ``"auto"``: the preset's ``default_mask`` when ``preset=`` is
        given, nothing otherwise. ``None``: no QA masking. The QA assets are read for this
        (nearest resampling) even when not in ``bands``.
    platform : str or sequence of str, optional
        Keep only items of these platforms (``"terra"``, ``"aqua"``, ``"landsat-9"``...).
        Presets that must not mix platforms (MODIS Terra/Aqua) require it when items mix.
    sign : "auto", bool or callable, default "auto"
        Planetary Computer signing, done now, just before the graph is built: ``"auto"``
        signs blob URLs without a token or whose token expires within 10 minutes; ``True``
        re-signs every blob URL; ``False`` leaves URLs alone; a callable ``href -> href``
        is applied to every loaded asset URL. Other URLs are never touched.
    patch_url : callable, optional
        Applied to every loaded asset URL after signing (like odc-stac's ``patch_url``).
    dtype : str or numpy dtype, default "float32"
        Floating dtype of the output variables.
    with_properties : sequence, optional
        Item properties to load as extra variables along time (odc-stac ``with_properties``).
    fail_on_error : bool, default True
        Raise :class:`~xfusion.errors.AssetReadError` (naming the item and the asset) when an
        asset cannot be read after the retries. ``False``: skip it (its pixels are NaN),
        log it, and record it in ``report``.
    report : LoadReport, optional
        Filled with the failed reads while the cube is computed (``fail_on_error=False``).
    retries : int, default 3
        Retries of a failed read: HTTP 429/5xx answers and timeouts are retried by GDAL with
        exponential backoff from ``retry_delay``; truncated transfers and dropped connections
        by xfusion after clearing GDAL's cache of that URL. Client errors (404, 403) are not.
    retry_delay : float, default 1.0
        First delay between retries in seconds (doubling).
    http_timeout : float, optional
        Seconds before an HTTP request times out (GDAL ``GDAL_HTTP_TIMEOUT``).

    Returns
    -------
    xarray.Dataset
        One variable per band, dims ``(time, y, x)`` (``latitude, longitude`` for geographic
        CRSs), dtype ``dtype``, NaN where nodata or flagged; ``units``/``long_name`` (and
        ``masked_flags``) attributes; a ``spatial_ref`` coordinate; sorted datetime64[ns]
        ``time``; with a preset, a lazy ``clear_fraction`` coordinate along time (fraction of
        the grid where every data band is valid) and ``attrs["preset"]``.

    Raises
    ------
    InvalidParameterError
        Empty item list, unknown preset or mask flag, items without projection metadata,
        conflicting grid arguments, non-float ``dtype``, mixed MODIS platforms.
    VariableNotFoundError
        A band that no item has (the message lists the assets and preset bands that exist).
    CRSMismatchError
        Items in several CRSs and no ``geobox``/``crs`` to reproject them to.
    NoOverlapError
        The ``geobox``/``bbox`` does not intersect any item.
    SigningError
        A collection that needs a Planetary Computer key (``sentinel-1-rtc``) without one.
    AssetReadError
        At compute time, an asset that cannot be read (``fail_on_error=True``).

    See Also
    --------
    xfusion.load_pair : fine and coarse collections as one fusion cube.
    xfusion.stac.search : find the items.
    xfusion.cube.presets : the sensor presets.
    band_info : the per-band scale/offset/nodata lookup.

    Notes
    -----
    Data bands are read as floats, so resampling (bilinear by default) never rounds to the
    stored integers; GDAL skips nodata pixels (the file's nodata tag, else the declared one).
    Items that need different conversions (Landsat 4-7 ``lwir`` vs 8/9 ``lwir11``, Sentinel-2
    before and after baseline 04.00, items declaring other scales) are loaded in separate
    odc-stac calls on one grid and merged along time (first valid value wins on shared
    dates). Signing happens here, at graph-build time: for long runs build and compute one
    batch at a time (see :func:`xfusion.stac.sign_items`).

    Examples
    --------
    >>> ds = load_cube(items, preset="landsat-c2-l2", bands="lst", geobox=gbox,
    ...                chunks={})  # doctest: +SKIP
    >>> ds.lst.attrs["units"], ds.clear_fraction.values  # doctest: +SKIP
    ('K', array([0.93, 0.41], dtype=float32))
    """
    import odc.stac

    item_list = _as_items(items)
    if not item_list:
        raise InvalidParameterError(
            "No STAC items to load (the item list is empty). Check the search (collections, "
            "bbox, datetime) that produced them, e.g. `len(list(search.items()))`."
        )
    if geobox is not None and (crs is not None or resolution is not None or bbox is not None):
        raise InvalidParameterError(
            f"Pass either geobox= or crs=/resolution=/bbox=, not both (got crs={crs!r}, "
            f"resolution={resolution!r}, bbox={bbox!r} with a geobox). The geobox already "
            "fixes CRS, pixel size and extent."
        )
    if bbox is not None:
        bbox = _check_bbox(bbox)
    if geobox is not None and not (isinstance(anchor, str) and anchor == "auto"):
        raise InvalidParameterError(
            f"anchor={anchor!r} aligns a grid derived from crs=/resolution=/bbox=; the geobox "
            "already fixes the alignment. Drop anchor= or build the geobox with that anchor "
            "(odc.geo.geobox.GeoBox.from_bbox(..., anchor=...))."
        )
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != "f":
        raise InvalidParameterError(
            f"dtype={dtype!r} is not a floating dtype; load_cube returns physical values with NaN "
            "gaps. Use 'float32' (default) or 'float64'."
        )
    if int(retries) < 0 or float(retry_delay) < 0:
        raise InvalidParameterError(
            f"retries={retries!r} and retry_delay={retry_delay!r} must be >= 0."
        )

    explicit = preset is not None
    the_preset = get_preset(preset) if preset is not None else None
    if the_preset is not None:
        cols = sorted({str(it.collection_id) for it in item_list})
        foreign = [c for c in cols if c != "None" and c not in the_preset.collections]
        if foreign:
            raise InvalidParameterError(
                f"preset={the_preset.name!r} reads the collections "
                f"{list(the_preset.collections)!r}, but the items belong to {cols!r}. Pass "
                "the matching preset (or none), or items of that collection."
            )
    presets = [_item_preset(it, the_preset) for it in item_list]
    item_list = _filter_platform(item_list, presets, platform)
    presets = [_item_preset(it, the_preset) for it in item_list]

    if bands is None:
        defaults = [b for p in dict.fromkeys(presets) if p is not None for b in p.default_bands]
        if not defaults:
            raise InvalidParameterError(
                "bands= is required when the items have no preset. Name the assets to load, "
                f"e.g. {_data_assets(item_list[0])[:4]!r}."
            )
        band_list = list(dict.fromkeys(defaults))
    else:
        band_list = [bands] if isinstance(bands, str) else list(bands)
    if not band_list:
        raise InvalidParameterError(
            f"bands={bands!r} is empty. Name the assets to load, e.g. "
            f"{_data_assets(item_list[0])[:4]!r}."
        )
    mask_names = _resolve_mask(mask, list(dict.fromkeys(presets)), explicit)

    plans = _plan(item_list, band_list, presets, mask_names)
    for band in band_list:
        if not any(o.name == band for g, _ in plans for o in g.outs):
            assets = sorted({a for it in item_list for a in _data_assets(it)})
            known = sorted({b for p in dict.fromkeys(presets) if p is not None for b in p.bands})
            extra = f" Preset band names: {known!r}." if known else ""
            raise VariableNotFoundError(
                f"Band {band!r} is not an asset of any of the {len(item_list)} items. The items "
                f"have the assets {assets!r}; pass some of them in `bands=`.{extra}"
            )
    plans = [(g, its) for g, its in plans if g.outs]

    # grid: one for all groups
    if geobox is None:
        if crs is None:
            _check_one_crs(plans)
        derived = crs is not None or resolution is not None
        odc_anchor = resolve_anchor(anchor, presets, derived=derived)
        if derived and isinstance(anchor, str) and anchor == "auto":
            own = _native_anchor(plans, crs, resolution)
            odc_anchor = own if own is not None else odc_anchor
        gbox = _output_geobox(plans, crs=crs, resolution=resolution, bbox=bbox,
                              anchor=odc_anchor)
    else:
        gbox = geobox
    if geobox is not None or bbox is not None:
        kept = check_overlap([it for _, its in plans for it in its], gbox, bbox=bbox)
        keep_ids = {id(it) for it in kept}
        plans = [(g, [it for it in its if id(it) in keep_ids]) for g, its in plans]
        plans = [(g, its) for g, its in plans if its]

    try:  # odc-stac >= 0.5 (odc-loader): reader drivers; private modules, so guarded
        from odc.stac._mdtools import StacAuxReader

        from xfusion.stac._read import ReportingDriver, SourceInfo
    except ImportError:  # pragma: no cover - older odc-stac: plain reads, odc-stac's errors
        ReportingDriver = None  # type: ignore[assignment,misc]

    parts = []
    for group, group_items in plans:
        qa_types = dict(group.qa_types)
        assets = list(dict.fromkeys([o.info.asset for o in group.outs] + list(qa_types)))
        prepared = _prepare_items(group_items, sign=sign, patch_url=patch_url, assets=set(assets))
        nodata = {o.info.asset: o.info.nodata for o in group.outs if not o.info.is_qa}
        sources: dict[str, Any] = {}
        for it in prepared if ReportingDriver is not None else ():
            for k in assets:
                if k in it.assets:
                    info = SourceInfo(it.id, k, it.collection_id, nodata.get(k))
                    sources[it.assets[k].href] = info
                    sources[it.assets[k].get_absolute_href() or it.assets[k].href] = info
        if isinstance(resampling, str):
            res_arg: dict[str, str] = {"*": resampling, **dict.fromkeys(qa_types, "nearest")}
        else:
            res_arg = {**dict.fromkeys(qa_types, "nearest"), **dict(resampling)}
            for o in group.outs:  # a mapping may name bands by their requested name
                if o.name in resampling and o.info.asset not in resampling:
                    res_arg[o.info.asset] = resampling[o.name]
        cfg = _stac_cfg(group, out_dtype.name)
        kw: dict[str, Any] = {}
        if ReportingDriver is not None:
            kw["driver"] = ReportingDriver(
                _md_parser(cfg, with_properties),
                StacAuxReader(),
                sources=sources,
                fail_on_error=fail_on_error,
                report=report,
                retries=int(retries),
                retry_delay=float(retry_delay),
                http_timeout=http_timeout,
            )
        else:  # pragma: no cover
            kw.update(stac_cfg=cfg, with_properties=with_properties)
        data_keys = [o.info.asset for o in group.outs if not o.info.is_qa] or assets
        twin = _twin_geobox(gbox, prepared, data_keys)
        raw = odc.stac.load(
            prepared,
            bands=assets,
            groupby=groupby,
            resampling=res_arg,
            chunks=dict(chunks) if chunks is not None else None,
            geobox=gbox if twin is None else twin,
            fail_on_error=fail_on_error,
            **kw,
        )
        if twin is not None:  # same pixels, coordinates of the asked-for CRS
            from odc.geo.xr import xr_coords

            raw = raw.assign_coords(xr_coords(gbox, crs_coord_name="spatial_ref"))
        parts.append(_convert_group(raw, group, out_dtype, mask_names))

    out = parts[0]
    for other in parts[1:]:
        out = out.combine_first(other)
    data_names = [n for n in band_list if n in out.data_vars and not _is_qa_out(plans, n)]
    if "time" in out.dims:
        index = out.indexes["time"]
        if index.dtype != np.dtype("datetime64[ns]"):  # odc-stac may give [us]; cubes use [ns]
            out = out.assign_coords(time=np.asarray(index, dtype="datetime64[ns]"))
        if not out.indexes["time"].is_monotonic_increasing:
            out = out.sortby("time")
    out = out[[*band_list, *[v for v in out.data_vars if v not in band_list]]]
    used = [p for p in dict.fromkeys(presets) if p is not None]
    if explicit or mask_names:
        if data_names and "time" in out.dims:
            out = out.assign_coords(clear_fraction=clear_fraction(out, data_names))
        if used:
            out.attrs["preset"] = ",".join(p.name for p in used)
        if mask_names:
            out.attrs["masked_flags"] = " ".join(mask_names)
    return out


def _is_qa_out(plans: Sequence[tuple[_Group, list[Any]]], name: str) -> bool:
    return any(o.name == name and o.info.is_qa for g, _ in plans for o in g.outs)


def _check_bbox(bbox: Any) -> tuple[float, float, float, float]:
    """Validate a lon/lat ``(west, south, east, north)`` box."""
    try:
        vals = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"bbox={bbox!r} must be 4 numbers (west, south, east, north) in degrees."
        ) from None
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise InvalidParameterError(
            f"bbox={bbox!r} must be 4 finite numbers (west, south, east, north) in degrees."
        )
    w, s, e, n = vals
    if any(abs(v) > 180 for v in (w, e)) or any(abs(v) > 90 for v in (s, n)):
        raise InvalidParameterError(
            f"bbox={bbox!r} is not in degrees: longitudes must be within [-180, 180] and "
            "latitudes within [-90, 90] (west, south, east, north). Projected coordinates? "
            "Convert them, e.g. with odc.geo.geom.box(x0, y0, x1, y1, crs).to_crs(4326)"
            ".boundingbox, or pass geobox=."
        )
    if s >= n or w >= e:
        raise InvalidParameterError(
            f"bbox={bbox!r} is empty or inverted: expected (west, south, east, north) with "
            "west < east and south < north."
        )
    return vals
