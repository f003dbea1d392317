"""STAC item metadata: asset lookup, scale/offset/nodata per band, grids and footprints, plans.

What :func:`xfusion.stac.load_cube` needs to know about each item before reading it: which
asset holds a requested band (:func:`band_info`), how its stored values become physical values
(:class:`BandInfo`, completed by the sensor presets of :mod:`xfusion.stac.presets`), its CRS and
footprint, and how items that are read the same way are grouped into one odc-stac call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from xfusion.errors import InvalidParameterError, VariableNotFoundError
from xfusion.stac.presets import BandSpec, Preset, QAFlag, get_preset, preset_for_collection

__all__ = ["COLLECTION_DEFAULTS", "BandInfo", "band_info"]

Mask = Literal["auto"] | Sequence[str] | None


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


def apply_affine(aff: Any, x: float, y: float) -> tuple[float, float]:
    """``aff`` applied to the point ``(x, y)`` (no ``*``: deprecated in affine 3)."""
    return aff.a * x + aff.b * y + aff.c, aff.d * x + aff.e * y + aff.f


def shift_affine(aff: Any, col: float, row: float) -> Any:
    """The transform of the pixel grid of ``aff`` starting at pixel ``(col, row)``."""
    from affine import Affine

    x, y = apply_affine(aff, col, row)
    return Affine(aff.a, aff.b, x, aff.d, aff.e, y)


def _md_parser(cfg: Mapping[str, Any], with_properties: Any) -> Any:
    from odc.stac._mdtools import StacMDParser

    cfg = dict(cfg)
    if with_properties is not None:
        cfg["with_properties"] = with_properties
    return StacMDParser(cfg)


def _footprint(item: Any) -> Any:
    from odc.geo.geom import Geometry, box

    if item.geometry is not None:
        with contextlib.suppress(Exception):  # invalid geometry: fall back to the bbox
            return Geometry(item.geometry, "EPSG:4326")
    if item.bbox is not None:
        return box(*item.bbox, "EPSG:4326")
    return None


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
