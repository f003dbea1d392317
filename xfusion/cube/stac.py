"""Load STAC items into a fusion cube: a thin, lazy wrapper on :func:`odc.stac.load`.

odc-stac reads the pixels, places them on the output grid and groups items into time slices;
it does *not* apply ``scale``/``offset`` from ``raster:bands`` (opendatacube/odc-stac#55), and
products such as MODIS declare no ``nodata`` in their items. :func:`load_cube` adds exactly
that: physical values in a float dtype with NaN for nodata, ``units`` attributes, sorted time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import InvalidParameterError, VariableNotFoundError

__all__ = ["BandInfo", "band_info", "load_cube"]

#: Per-collection, per-asset defaults for what the items do not declare (nodata only for now;
#: a later preset table adds QA masks). Values from the product user guides.
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


@dataclass(frozen=True)
class BandInfo:
    """How to turn the stored values of one band into physical values."""

    asset: str
    """Asset key in the items (the band may have been requested by an alias)."""
    scale: float = 1.0
    """Multiplier from ``raster:bands`` (1 when absent)."""
    offset: float = 0.0
    """Offset from ``raster:bands`` (0 when absent)."""
    nodata: float | None = None
    """Stored value meaning "no data": ``raster:bands`` or :data:`COLLECTION_DEFAULTS`."""
    unit: str | None = None
    """Unit of the physical values, normalised (``"kelvin"`` -> ``"K"``)."""
    data_type: str | None = None
    """Stored data type from ``raster:bands``."""
    title: str | None = None
    """Asset title, used as ``long_name``."""
    is_qa: bool = False
    """Whether the asset is a QA/classification band (loaded with nearest resampling)."""


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


def band_info(item: Any, band: str, /) -> BandInfo:
    """Return the scale, offset, nodata and unit of ``band`` in one STAC item.

    Parameters
    ----------
    item : pystac.Item
        The item.
    band : str
        Asset key, or an alias (``eo:bands`` ``common_name`` or ``name``) as odc-stac accepts.

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
    key = _resolve_asset(item, band)
    if key is None:
        raise VariableNotFoundError(
            f"Band {band!r} is not an asset of item {item.id!r} (collection "
            f"{item.collection_id!r}). Its assets are {_data_assets(item)!r}; pass one of them "
            "(or an eo:bands common_name) in `bands=`."
        )
    asset = item.assets[key]
    rb = _raster_band(asset)
    nodata = rb.get("nodata")
    if nodata is None:
        nodata = COLLECTION_DEFAULTS.get(item.collection_id or "", {}).get(key, {}).get("nodata")
    unit = rb.get("unit")
    if unit is not None:
        unit = _UNITS.get(str(unit).lower(), str(unit))
    elif "reflectance" in (asset.roles or []):
        unit = "1"
    extra = asset.extra_fields
    is_qa = (
        "classification:bitfields" in extra
        or "classification:classes" in extra
        or bool(_QA_NAME.search(key))
    )
    return BandInfo(
        asset=key,
        scale=float(rb.get("scale", 1.0) if rb.get("scale") is not None else 1.0),
        offset=float(rb.get("offset", 0.0) if rb.get("offset") is not None else 0.0),
        nodata=nodata,
        unit=unit,
        data_type=rb.get("data_type"),
        title=asset.title,
        is_qa=is_qa,
    )


def _data_assets(item: Any) -> list[str]:
    out = []
    for key, asset in item.assets.items():
        roles = asset.roles or []
        mtype = asset.media_type or ""
        if "data" in roles or "image/tiff" in mtype or "raster:bands" in asset.extra_fields:
            out.append(str(key))
    return sorted(out) or sorted(map(str, item.assets))


def _has_projection(item: Any, key: str) -> bool:
    asset = item.assets[key]
    fields = {**item.properties, **asset.extra_fields}
    declared = any("projection" in ext for ext in item.stac_extensions or [])
    has_crs = any(fields.get(k) is not None for k in _PROJ_CRS_KEYS)
    return declared and has_crs and "proj:shape" in fields and "proj:transform" in fields


def _consistent(infos: list[tuple[str, BandInfo]], band: str) -> BandInfo:
    first_id, first = infos[0]
    for item_id, info in infos[1:]:
        if (info.scale, info.offset, info.nodata) != (first.scale, first.offset, first.nodata):
            raise InvalidParameterError(
                f"Band {band!r} is stored differently across items: {first_id!r} has scale="
                f"{first.scale!r}, offset={first.offset!r}, nodata={first.nodata!r} but "
                f"{item_id!r} has scale={info.scale!r}, offset={info.offset!r}, "
                f"nodata={info.nodata!r}. Load such items in separate load_cube() calls and "
                "concatenate the results along time."
            )
    return first


def load_cube(
    items: Iterable[Any],
    /,
    *,
    bands: str | Sequence[str],
    geobox: Any = None,
    crs: Any = None,
    resolution: float | None = None,
    chunks: Mapping[str, int | str] | None = None,
    groupby: str | Callable[..., Any] | None = "solar_day",
    resampling: str | Mapping[str, str] = "bilinear",
    patch_url: Callable[[str], str] | None = None,
    dtype: Any = "float32",
    with_properties: Sequence[str | Mapping[str, Any]] | None = None,
) -> xr.Dataset:
    """Load STAC items as a cube of physical values with NaN gaps (lazy with ``chunks=``).

    Wraps :func:`odc.stac.load` and then, per band, applies ``value = DN * scale + offset``
    from the assets' ``raster:bands`` and turns ``nodata`` into NaN (``raster:bands`` nodata,
    or the per-collection default of :data:`COLLECTION_DEFAULTS`, e.g. MODIS LST fill 0).

    Parameters
    ----------
    items : iterable of pystac.Item
        The items (or item dicts), e.g. from ``pystac_client`` ``search.items()``.
    bands : str or sequence of str
        Asset keys, or ``eo:bands`` common names, to load; one data variable each.
    geobox : odc.geo.geobox.GeoBox, optional
        Exact output grid (recommended: deterministic shape and alignment). When omitted,
        odc-stac picks the grid from the items, or from ``crs``/``resolution``.
    crs : str or CRS, optional
        Output CRS (``"utm"`` allowed), with ``resolution``. Not with ``geobox``.
    resolution : float, optional
        Output pixel size in CRS units. Not with ``geobox``.
    chunks : mapping, optional
        Dask chunks, e.g. ``{"time": 1, "x": 2048, "y": 2048}``; ``{}`` gives one chunk per
        date. ``None`` loads eagerly.
    groupby : str or callable, default "solar_day"
        How items become time slices (odc-stac): ``"solar_day"`` mosaics the items of one
        overpass; ``"time"``, ``"id"``, a property name or a callable also work. The time
        coordinate is the (first) item's timestamp, as datetime64.
    resampling : str or mapping, default "bilinear"
        Resampling for data bands. QA/classification bands (``qa_pixel``, ``QC_Day``, ``SCL``,
        ``*Quality*``, or assets with ``classification:*`` fields) always use ``"nearest"``
        unless a mapping names them; a mapping (``{"*": ..., "<band>": ...}``) is passed on.
    patch_url : callable, optional
        Applied to every asset URL once at graph-build time, e.g. ``planetary_computer.sign``.
    dtype : str or numpy dtype, default "float32"
        Floating dtype of the output variables.
    with_properties : sequence, optional
        Item properties to load as extra variables along time (odc-stac ``with_properties``);
        they are returned as odc-stac loads them (no scaling).

    Returns
    -------
    xarray.Dataset
        One variable per band, dims ``(time, y, x)`` (``latitude, longitude`` for geographic
        CRSs), dtype ``dtype``, NaN where nodata, ``units``/``long_name`` attributes, a
        ``spatial_ref`` coordinate, sorted datetime64 time.

    Raises
    ------
    InvalidParameterError
        For an empty item list, items without projection metadata for a requested band,
        ``geobox`` given together with ``crs``/``resolution``, a non-float ``dtype``, or a band
        stored with different scale/offset/nodata across items.
    VariableNotFoundError
        For a band that no item has (the message lists the assets that exist).

    See Also
    --------
    band_info : the per-band scale/offset/nodata lookup.
    odc.stac.load : the loader underneath.

    Notes
    -----
    Resampling happens on the stored integers (odc-stac), with the GeoTIFF's own nodata
    excluded by GDAL; scaling happens afterwards, lazily. If a product's files carry no nodata
    tag, bilinear resampling mixes fill values into their neighbours: prefer
    ``resampling="nearest"`` for such data.

    Examples
    --------
    >>> from odc.geo.geobox import GeoBox
    >>> ds = load_cube(items, bands=["lwir11"], geobox=gbox, chunks={})  # doctest: +SKIP
    >>> ds.lwir11.attrs["units"]  # doctest: +SKIP
    'K'
    """
    import odc.stac

    item_list = [_item_dict(it) for it in items]
    if not item_list:
        raise InvalidParameterError(
            "No STAC items to load (the item list is empty). Check the search (collections, "
            "bbox, datetime) that produced them, e.g. `len(list(search.items()))`."
        )
    band_list = [bands] if isinstance(bands, str) else list(bands)
    if not band_list:
        raise InvalidParameterError(
            f"bands={bands!r} is empty. Name the assets to load, e.g. "
            f"{_data_assets(item_list[0])[:4]!r}."
        )
    if geobox is not None and (crs is not None or resolution is not None):
        raise InvalidParameterError(
            f"Pass either geobox= or crs=/resolution=, not both (got crs={crs!r}, "
            f"resolution={resolution!r} with a geobox). The geobox already fixes CRS and pixel size."
        )
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != "f":
        raise InvalidParameterError(
            f"dtype={dtype!r} is not a floating dtype; load_cube returns physical values with NaN "
            "gaps. Use 'float32' (default) or 'float64'."
        )

    infos: dict[str, BandInfo] = {}
    for band in band_list:
        found: list[tuple[str, BandInfo]] = []
        for it in item_list:
            key = _resolve_asset(it, band)
            if key is None:
                continue
            if not _has_projection(it, key):
                raise InvalidParameterError(
                    f"Item {it.id!r} has no projection metadata for asset {key!r}: odc-stac needs "
                    "the projection extension in `stac_extensions` plus `proj:shape`, "
                    "`proj:transform` and one of `proj:code`/`proj:epsg`/`proj:wkt2` (on the item "
                    "or the asset). Add them, e.g. with "
                    "`pystac.extensions.projection.ProjectionExtension.ext(item, "
                    "add_if_missing=True).apply(epsg=..., shape=..., transform=...)`."
                )
            found.append((it.id, band_info(it, band)))
        if not found:
            assets = sorted({a for it in item_list for a in _data_assets(it)})
            raise VariableNotFoundError(
                f"Band {band!r} is not an asset of any of the {len(item_list)} items. The items "
                f"have the assets {assets!r}; pass some of them in `bands=`."
            )
        infos[band] = _consistent(found, band)

    if isinstance(resampling, str):
        resampling_arg: str | dict[str, str] = {
            "*": resampling,
            **{b: "nearest" for b, info in infos.items() if info.is_qa},
        }
    else:
        resampling_arg = dict(resampling)

    stac_cfg = _stac_cfg(item_list, infos)
    kwargs: dict[str, Any] = {}
    if geobox is not None:
        kwargs["geobox"] = geobox
    if crs is not None:
        kwargs["crs"] = crs
    if resolution is not None:
        kwargs["resolution"] = resolution
    raw = odc.stac.load(
        item_list,
        bands=band_list,
        groupby=groupby,
        resampling=resampling_arg,
        chunks=dict(chunks) if chunks is not None else None,
        patch_url=patch_url,
        stac_cfg=stac_cfg or None,
        with_properties=with_properties,
        **kwargs,
    )

    out = raw.copy()
    for band, info in infos.items():
        out[band] = _to_physical(raw[band], info, out_dtype)
    if "time" in out.dims:
        index = out.indexes["time"]
        if index.dtype != np.dtype("datetime64[ns]"):  # odc-stac may give [us]; cubes use [ns]
            out = out.assign_coords(time=np.asarray(index, dtype="datetime64[ns]"))
        if not out.indexes["time"].is_monotonic_increasing:
            out = out.sortby("time")
    return out


def _stac_cfg(items: list[Any], infos: Mapping[str, BandInfo]) -> dict[str, Any]:
    """odc-stac config declaring the default nodata of assets whose items do not declare it.

    The asset's own ``data_type`` and ``unit`` are repeated: an asset entry in ``stac_cfg``
    replaces the item metadata (odc-stac would otherwise load it as float32).
    """
    cfg: dict[str, Any] = {}
    for it in items:
        defaults = COLLECTION_DEFAULTS.get(it.collection_id or "", {})
        for info in infos.values():
            if info.asset not in defaults or info.asset not in it.assets:
                continue
            rb = _raster_band(it.assets[info.asset])
            if rb.get("nodata") is not None:
                continue
            entry = {"nodata": defaults[info.asset]["nodata"]}
            if rb.get("data_type"):
                entry["data_type"] = rb["data_type"]
            if rb.get("unit"):
                entry["unit"] = rb["unit"]
            cfg.setdefault(it.collection_id, {"assets": {}})["assets"][info.asset] = entry
    return cfg


def _to_physical(var: xr.DataArray, info: BandInfo, dtype: np.dtype) -> xr.DataArray:
    """Stored values -> physical values in ``dtype`` with NaN for nodata (lazy)."""
    values = var.astype(dtype)
    if info.scale != 1.0:
        values = values * dtype.type(info.scale)
    if info.offset != 0.0:
        values = values + dtype.type(info.offset)
    valid = None
    nodata = info.nodata
    if nodata is None:
        nodata = var.attrs.get("nodata")
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        valid = var != nodata
    if var.dtype.kind == "f":
        finite = np.isfinite(var)
        valid = finite if valid is None else (valid & finite)
    if valid is not None:
        values = values.where(valid)
    attrs = {k: v for k, v in var.attrs.items() if k not in ("nodata", "_FillValue", "units")}
    if info.unit is not None:
        attrs["units"] = info.unit
    elif "units" in var.attrs:
        attrs["units"] = var.attrs["units"]
    if info.title:
        attrs["long_name"] = info.title
    values.attrs = attrs
    values.encoding = {"grid_mapping": "spatial_ref"} if "spatial_ref" in var.coords else {}
    values.name = var.name
    return values
