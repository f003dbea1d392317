"""Write a synthetic scene as a local STAC catalog of Cloud-Optimized GeoTIFFs.

The items mimic the Planetary Computer ones (``landsat-c2-l2``, ``modis-11A1-061``,
``modis-43A4-061``): the same asset keys, data types, scale/offset, nodata conventions (the
MODIS items declare no nodata, as the real ones do), QA bands and item-level projection
metadata, so loaders can be tested offline on realistic metadata with known pixel values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InvalidParameterError, VariableNotFoundError

__all__ = [
    "MODIS_SINUSOIDAL_WKT",
    "StacCatalog",
    "item_template",
    "write_stac_catalog",
    "write_stac_items",
]

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_EXT = {
    "projection": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v1.0.0/schema.json",
}

# Landsat Collection 2 QA_PIXEL values: clear land (bits 6, 8, 10, 12, 14 = low confidences),
# high-confidence cloud (bits 3 and 8-9) and fill (bit 0).
QA_PIXEL_CLEAR = 21824
QA_PIXEL_CLOUD = 22280
QA_PIXEL_FILL = 1
# MOD11A1 QC_Day: bits 0-1 = 00 good quality, 10 not produced due to cloud.
QC_DAY_GOOD = 0
QC_DAY_CLOUD = 2
# MCD43A4 BRDF_Albedo_Band_Mandatory_Quality: 0 full inversion, 255 fill.
NBAR_QA_GOOD = 0
NBAR_QA_FILL = 255


@dataclass(frozen=True)
class _Asset:
    key: str
    title: str
    dtype: str
    fill: int  # value written where the scene has a gap (also the GeoTIFF nodata tag)
    nodata: int | None  # declared in raster:bands (None: not declared, like real MODIS)
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None
    eo: dict[str, Any] | None = None
    roles: tuple[str, ...] = ("data",)
    extra: dict[str, Any] = field(default_factory=dict)
    description: str | None = None


def _oli(
    key: str, name: str, common: str, centre: float, fwhm: float, title: str, what: str
) -> _Asset:
    band = f"SR_B{name[-1]}"
    return _Asset(
        key=key,
        title=title,
        dtype="uint16",
        fill=0,
        nodata=0,
        scale=2.75e-05,
        offset=-0.2,
        eo={
            "name": name,
            "common_name": common,
            "description": what,
            "center_wavelength": centre,
            "full_width_half_max": fwhm,
        },
        roles=("data", "reflectance"),
        description=f"Collection 2 Level-2 {title} ({band}) Surface Reflectance",
    )


def _nbar(n: int, common: str, centre: float, fwhm: float) -> _Asset:
    return _Asset(
        key=f"Nadir_Reflectance_Band{n}",
        title=f"NBAR at local solar noon for Band {n}",
        dtype="int16",
        fill=32767,
        nodata=None,
        scale=0.0001,
        eo={
            "name": f"Nadir_Reflectance_Band{n}",
            "common_name": common,
            "center_wavelength": centre,
            "full_width_half_max": fwhm,
        },
        roles=("data", "reflectance"),
    )


_BITFIELDS = [
    ("fill", 0, 1, ["not_fill", "fill"]),
    ("dilated_cloud", 1, 1, ["not_dilated", "dilated"]),
    ("cirrus", 2, 1, ["not_cirrus", "cirrus"]),
    ("cloud", 3, 1, ["not_cloud", "cloud"]),
    ("cloud_shadow", 4, 1, ["not_shadow", "shadow"]),
    ("snow", 5, 1, ["not_snow", "snow"]),
    ("clear", 6, 1, ["not_clear", "clear"]),
    ("water", 7, 1, ["not_water", "water"]),
    ("cloud_confidence", 8, 2, ["not_set", "low", "medium", "high"]),
    ("cloud_shadow_confidence", 10, 2, ["not_set", "low", "reserved", "high"]),
    ("snow_confidence", 12, 2, ["not_set", "low", "reserved", "high"]),
    ("cirrus_confidence", 14, 2, ["not_set", "low", "reserved", "high"]),
]

_LANDSAT_QA = _Asset(
    key="qa_pixel",
    title="Pixel Quality Assessment Band",
    description="Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
    dtype="uint16",
    fill=QA_PIXEL_FILL,
    nodata=1,
    unit="bit index",
    roles=("cloud", "cloud-shadow", "snow-ice", "water-mask"),
    extra={
        "classification:bitfields": [
            {
                "name": name,
                "offset": off,
                "length": length,
                "classes": [{"value": v, "name": c} for v, c in enumerate(classes)],
            }
            for name, off, length, classes in _BITFIELDS
        ]
    },
)

_QC_DAY = _Asset(
    key="QC_Day",
    title="Quality control for daytime LST and emissivity",
    dtype="uint8",
    fill=QC_DAY_CLOUD,
    nodata=None,
)


def _nbar_qa(n: str) -> _Asset:
    return _Asset(
        key=f"BRDF_Albedo_Band_Mandatory_Quality_Band{n}",
        title=f"BRDF Albedo Mandatory Quality for Band {n}",
        dtype="uint8",
        fill=NBAR_QA_FILL,
        nodata=None,
        extra={
            "classification:classes": [
                {"value": 0, "description": "Processed, good quality (full BRDF inversions)"},
                {"value": 1, "description": "Processed, see other QA (magnitude BRDF inversions)"},
            ]
        },
    )


# collection -> product description. "bands": scene band -> asset; "qa": (per, asset or
# factory, value where valid, value at gaps), per "item" (one QA band) or "band" (one per band).
_PRODUCTS: dict[str, dict[str, Any]] = {
    "landsat-c2-l2": {
        "title": "Landsat Collection 2 Level-2",
        "role": "fine",
        "platform": "landsat-8",
        "instruments": ["oli", "tirs"],
        "id": "LC08_L2SP_000000_{date:%Y%m%d}_02_T1",
        "kinds": ("lst", "reflectance"),
        "qa": ("item", _LANDSAT_QA, QA_PIXEL_CLEAR, QA_PIXEL_CLOUD),
        "bands": {
            "lst": _Asset(
                key="lwir11",
                title="Surface Temperature Band",
                dtype="uint16",
                fill=0,
                nodata=0,
                scale=0.00341802,
                offset=149.0,
                unit="kelvin",
                eo={
                    "name": "TIRS_B10",
                    "common_name": "lwir11",
                    "description": "Long-wave infrared",
                    "center_wavelength": 10.9,
                    "full_width_half_max": 0.59,
                },
                roles=("data", "temperature"),
                extra={"gsd": 100},
                description=(
                    "Collection 2 Level-2 Thermal Infrared Band (ST_B10) Surface Temperature"
                ),
            ),
            "blue": _oli("blue", "OLI_B2", "blue", 0.48, 0.06, "Blue Band", "Visible blue"),
            "green": _oli("green", "OLI_B3", "green", 0.56, 0.06, "Green Band", "Visible green"),
            "red": _oli("red", "OLI_B4", "red", 0.65, 0.04, "Red Band", "Visible red"),
            "nir": _oli(
                "nir08", "OLI_B5", "nir08", 0.87, 0.03, "Near Infrared Band 0.8", "Near infrared"
            ),
            "nir08": _oli(
                "nir08", "OLI_B5", "nir08", 0.87, 0.03, "Near Infrared Band 0.8", "Near infrared"
            ),
            "swir16": _oli(
                "swir16",
                "OLI_B6",
                "swir16",
                1.61,
                0.09,
                "Short-wave Infrared Band 1.6",
                "Short-wave infrared",
            ),
            "swir22": _oli(
                "swir22",
                "OLI_B7",
                "swir22",
                2.2,
                0.19,
                "Short-wave Infrared Band 2.2",
                "Short-wave infrared",
            ),
        },
    },
    "modis-11A1-061": {
        "title": "MODIS Land Surface Temperature/Emissivity Daily",
        "role": "coarse",
        "platform": "terra",
        "instruments": ["modis"],
        "id": "MOD11A1.A{date:%Y%j}.h00v00.061",
        "kinds": ("lst",),
        "qa": ("item", _QC_DAY, QC_DAY_GOOD, QC_DAY_CLOUD),
        "bands": {
            "lst": _Asset(
                key="LST_Day_1km",
                title="Daily daytime 1km grid Land-surface Temperature",
                dtype="uint16",
                fill=0,
                nodata=None,
                scale=0.02,
                unit="Kelvin",
                roles=("data", "temperature"),
            ),
        },
    },
    "modis-43A4-061": {
        "title": "MODIS Nadir BRDF-Adjusted Reflectance (NBAR) Daily",
        "role": "coarse",
        "platform": "terra,aqua",
        "instruments": ["modis"],
        "id": "MCD43A4.A{date:%Y%j}.h00v00.061",
        "kinds": ("reflectance",),
        "qa": ("band", _nbar_qa, NBAR_QA_GOOD, NBAR_QA_FILL),
        "bands": {
            "red": _nbar(1, "red", 0.645, 0.5),
            "nir": _nbar(2, "nir08", 0.8585, 0.35),
            "nir08": _nbar(2, "nir08", 0.8585, 0.35),
            "blue": _nbar(3, "blue", 0.469, 0.2),
            "green": _nbar(4, "green", 0.555, 0.2),
            "swir16": _nbar(6, "swir16", 1.64, 0.24),
            "swir22": _nbar(7, "swir22", 2.13, 0.5),
        },
    },
}

_DEFAULT_COARSE = {"lst": "modis-11A1-061", "reflectance": "modis-43A4-061"}


@dataclass(frozen=True)
class StacCatalog:
    """What :func:`write_stac_catalog` wrote.

    Load the fine items with ``load_cube(cat.fine_items, bands=list(cat.fine_bands.values()))``.
    """

    catalog_path: str
    """Local path of ``catalog.json``."""
    href_base: str | None
    """URL the directory is meant to be served at (asset hrefs start with it), or None."""
    fine_items: tuple[Any, ...]
    """``pystac.Item`` of each fine acquisition, sorted by time."""
    coarse_items: tuple[Any, ...]
    """``pystac.Item`` of each coarse acquisition, sorted by time."""
    fine_bands: dict[str, str]
    """Scene variable -> asset key in the fine items, e.g. ``{"fine": "lwir11"}``."""
    coarse_bands: dict[str, str]
    """Scene variable -> asset key in the coarse items, e.g. ``{"coarse": "LST_Day_1km"}``."""
    fine_collection: str
    """Collection id of the fine items."""
    coarse_collection: str
    """Collection id of the coarse items."""

    @property
    def items(self) -> list[Any]:
        """All items, fine then coarse."""
        return [*self.fine_items, *self.coarse_items]

    @property
    def catalog_url(self) -> str | None:
        """URL of ``catalog.json`` under :attr:`href_base`, or None."""
        return None if self.href_base is None else _join_url(self.href_base, "catalog.json")


def _join_url(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + rel.lstrip("/")


def _encode(values: np.ndarray, asset: _Asset) -> np.ndarray:
    """Physical values -> stored integers (NaN -> fill), clipped off the fill value."""
    info = np.iinfo(asset.dtype)
    scale = 1.0 if asset.scale is None else asset.scale
    offset = 0.0 if asset.offset is None else asset.offset
    gap = ~np.isfinite(values)
    dn = np.rint((np.where(gap, offset, values).astype(np.float64) - offset) / scale)
    lo, hi = float(info.min), float(info.max)
    if asset.fill == info.min:
        lo += 1
    elif asset.fill == info.max:
        hi -= 1
    dn = np.clip(dn, lo, hi).astype(asset.dtype)
    dn[gap] = asset.fill
    return dn


def _write_cog(path: Path, data: np.ndarray, gbox: Any, nodata: int | None) -> None:
    import rasterio

    crs = gbox.crs
    profile = {
        "driver": "COG",
        "width": int(data.shape[1]),
        "height": int(data.shape[0]),
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{crs.epsg}" if crs.epsg is not None else crs.to_wkt(),
        "transform": gbox.affine,
        "compress": "deflate",
        "blocksize": 256,
        "overview_resampling": "nearest",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _proj_props(gbox: Any) -> dict[str, Any]:
    crs = gbox.crs
    props: dict[str, Any] = {"proj:epsg": crs.epsg}
    if crs.epsg is None:
        props["proj:wkt2"] = crs.to_wkt()
    props["proj:shape"] = [int(s) for s in gbox.shape]
    props["proj:transform"] = [float(v) for v in tuple(gbox.affine)[:6]]
    return props


def _footprint(gbox: Any) -> tuple[dict[str, Any], list[float]]:
    geom = gbox.extent.to_crs("EPSG:4326", resolution="auto")
    bbox = [float(v) for v in geom.boundingbox]
    return json.loads(json.dumps(geom.json)), bbox


def _asset_dict(asset: _Asset, href: str, res: float) -> dict[str, Any]:
    band: dict[str, Any] = {}
    if asset.nodata is not None:
        band["nodata"] = asset.nodata
    band["data_type"] = asset.dtype
    band["spatial_resolution"] = res
    if asset.unit is not None:
        band["unit"] = asset.unit
    if asset.scale is not None:
        band["scale"] = asset.scale
    if asset.offset is not None:
        band["offset"] = asset.offset
    out: dict[str, Any] = {"href": href, "type": COG_TYPE, "title": asset.title}
    if asset.description is not None:
        out["description"] = asset.description
    if asset.eo is not None:
        out["eo:bands"] = [dict(asset.eo)]
    out["raster:bands"] = [band]
    out.update(asset.extra)
    out["roles"] = list(asset.roles)
    return out


def _percent(mask: np.ndarray) -> float:
    return round(100.0 * float(np.mean(mask)), 2) if mask.size else 0.0


def _scene_bands(scene: xr.Dataset, role: str) -> dict[str, str]:
    """Scene variables of a role -> band key ('lst' or the reflectance band)."""
    kind = scene.attrs.get("kind")
    if role in scene.data_vars and kind != "reflectance":
        return {role: "lst"}
    prefix = f"{role}_"
    found = {str(v): str(v)[len(prefix) :] for v in scene.data_vars if str(v).startswith(prefix)}
    return found


def write_stac_catalog(
    scene: xr.Dataset | tuple[xr.Dataset, xr.Dataset],
    /,
    directory: str | os.PathLike[str],
    *,
    coarse: xr.Dataset | None = None,
    href_base: str | None = None,
    fine_collection: str = "landsat-c2-l2",
    coarse_collection: str | None = None,
) -> StacCatalog:
    """Write a synthetic scene as COGs + STAC items, collections and a ``catalog.json``.

    Each fine acquisition (``observed_fine*`` True) becomes a Landsat-C2-L2-like item and each
    coarse acquisition a MODIS-like item on the coarse grid. Pixel values are stored as the
    real products store them (integers with scale/offset), gaps as the product's fill value and
    flagged in the QA band.

    Parameters
    ----------
    scene : xarray.Dataset or tuple of xarray.Dataset
        A scene from :func:`synthetic_scene` (``fine``/``coarse`` or ``fine_<band>``/
        ``coarse_<band>`` variables with ``observed_*`` coordinates), or the
        ``(scene, coarse_scene)`` tuple from ``synthetic_scene(..., coarse_native=True)``.
        Dask-backed scenes are computed one date at a time.
    directory : str or path-like
        Output folder (created). Layout: ``catalog.json``, ``<collection>/collection.json``,
        ``<collection>/<item id>/<item id>.json`` and ``<item id>_<asset>.tif`` beside it.
    coarse : xarray.Dataset, optional
        The coarse sensor on its own grid (the second element of
        ``synthetic_scene(..., coarse_native=True)``). When omitted, it is derived from the
        scene's fine-grid coarse variables by block averaging over ``scene.attrs
        ["coarse_factor"]``, which is exact for ``coarse_resampling="nearest"`` scenes.
    href_base : str, optional
        Base URL the directory will be served at (e.g. ``"http://127.0.0.1:8000/"`` from
        :func:`serve_directory`): asset hrefs become URLs under it. Default: absolute paths.
    fine_collection : str, default "landsat-c2-l2"
        Collection (product) of the fine items.
    coarse_collection : str, optional
        Collection of the coarse items: default ``"modis-11A1-061"`` (LST_Day_1km, QC_Day) for
        LST scenes and ``"modis-43A4-061"`` (Nadir_Reflectance_BandN) for reflectance scenes.

    Returns
    -------
    StacCatalog
        Items (``pystac.Item``, fine and coarse), the band -> asset mapping and paths.

    Raises
    ------
    InvalidParameterError
        For an unknown collection, a collection that does not fit the scene kind, or a scene
        whose coarse grid cannot be derived.
    VariableNotFoundError
        When the scene has no fine or coarse variables.

    Notes
    -----
    Stored encodings: Landsat ``lwir11`` uint16, K = DN x 0.00341802 + 149.0, nodata 0;
    reflectance uint16, DN x 2.75e-05 - 0.2, nodata 0; ``qa_pixel`` uint16 with 21824 (clear),
    22280 (high-confidence cloud, bit 3) where the scene has a gap. MODIS ``LST_Day_1km``
    uint16, K = DN x 0.02, fill 0 not declared in ``raster:bands``; ``QC_Day`` uint8, 0 good
    and 2 (not produced, cloud) at gaps. MCD43A4 ``Nadir_Reflectance_BandN`` int16 x 1e-4, fill
    32767 (not declared), with ``BRDF_Albedo_Band_Mandatory_Quality_BandN`` 0 / 255.
    Fine items carry ``datetime``; MODIS items ``datetime: null`` and the day's
    ``start_datetime``/``end_datetime``, like the Planetary Computer ones.

    Examples
    --------
    >>> from xfusion.testing import synthetic_scene, write_stac_catalog
    >>> scene, coarse = synthetic_scene((64, 64), times=3, coarse_factor=16, coarse_native=True)
    >>> cat = write_stac_catalog(scene, tmp_path, coarse=coarse)  # doctest: +SKIP
    """
    import pystac

    if isinstance(scene, tuple):
        scene, coarse_from_tuple = scene
        coarse = coarse if coarse is not None else coarse_from_tuple
    if not isinstance(scene, xr.Dataset):
        raise TypeError(
            f"scene must be an xarray.Dataset from synthetic_scene(), found {type(scene).__name__}."
        )
    kind = scene.attrs.get("kind", "lst")
    if coarse_collection is None:
        coarse_collection = _DEFAULT_COARSE.get(kind, "modis-11A1-061")
    for coll, role in ((fine_collection, "fine"), (coarse_collection, "coarse")):
        if coll not in _PRODUCTS:
            raise InvalidParameterError(
                f"{role}_collection={coll!r} is not a product this writer knows. Choose one of "
                f"{sorted(_PRODUCTS)!r}."
            )
        if kind not in _PRODUCTS[coll]["kinds"]:
            raise InvalidParameterError(
                f"{role}_collection={coll!r} holds {list(_PRODUCTS[coll]['kinds'])!r} data but the "
                f"scene kind is {kind!r}. Choose a collection for {kind!r}: "
                f"{sorted(c for c, p in _PRODUCTS.items() if kind in p['kinds'])!r}."
            )
    fine_vars = _scene_bands(scene, "fine")
    coarse_vars = _scene_bands(scene, "coarse")
    if not fine_vars and not coarse_vars:
        raise VariableNotFoundError(
            "The scene has no fine or coarse variables to write. Variables on the dataset "
            f"include {sorted(map(str, scene.data_vars))!r}; build it with "
            "xfusion.testing.synthetic_scene()."
        )
    for name, band in {**fine_vars, **coarse_vars}.items():
        for coll in (fine_collection, coarse_collection):
            if band not in _PRODUCTS[coll]["bands"]:
                raise InvalidParameterError(
                    f"Band {band!r} of variable {name!r} has no asset in {coll!r}; it has "
                    f"{sorted(_PRODUCTS[coll]['bands'])!r}."
                )

    from xfusion.cube.validate import get_geobox

    root = Path(directory).absolute()
    root.mkdir(parents=True, exist_ok=True)
    fine_gbox = get_geobox(scene, name="scene")

    if coarse_vars and coarse is None:
        coarse = _derive_coarse(scene, coarse_vars, fine_gbox)
    coarse_gbox = get_geobox(coarse, name="coarse scene") if coarse is not None else None

    def href(path: Path) -> str:
        if href_base is None:
            return str(path)
        return _join_url(href_base, path.relative_to(root).as_posix())

    catalog = pystac.Catalog(
        id="xfusion-synthetic",
        description="Synthetic fine/coarse scene written by xfusion.testing.write_stac_catalog",
        title="xfusion synthetic scene",
    )
    result_items: dict[str, list[Any]] = {"fine": [], "coarse": []}
    plans = [("fine", fine_collection, fine_vars, scene, fine_gbox)]
    if coarse_vars and coarse is not None:
        plans.append(("coarse", coarse_collection, coarse_vars, coarse, coarse_gbox))
    for role, coll, varmap, src, gbox in plans:
        product = _PRODUCTS[coll]
        items: list[Any] = []
        times = pd.DatetimeIndex(src["time"].values)
        first = next(iter(varmap))
        obs_key = f"observed_{first}"
        observed = (
            np.asarray(src[obs_key].values, dtype=bool)
            if obs_key in src.coords
            else np.ones(times.size, dtype=bool)
        )
        seen_ids: set[str] = set()
        for ti in np.nonzero(observed)[0]:
            item_id = product["id"].format(date=times[ti])
            if item_id in seen_ids:
                raise InvalidParameterError(
                    f"Two {role} acquisitions fall on {times[ti].date()} ({item_id!r}); one item "
                    "per day is written. Use scene dates on distinct days."
                )
            seen_ids.add(item_id)
            d = _write_item(
                role, coll, item_id, times[ti], src.isel(time=int(ti)), varmap, gbox, root, href
            )
            items.append(pystac.Item.from_dict(d, migrate=False))
        result_items[role] = items
        if items:
            extent = pystac.Extent(
                pystac.SpatialExtent([_footprint(gbox)[1]]),
                pystac.TemporalExtent(
                    [[times[observed].min().to_pydatetime(), times[observed].max().to_pydatetime()]]
                ),
            )
            collection = pystac.Collection(
                id=coll,
                description=f"Synthetic {product['title']} (xfusion.testing)",
                extent=extent,
                title=product["title"],
                license="proprietary",
            )
            collection.add_items(items)
            catalog.add_child(collection)

    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    written = [catalog.self_href, *(c.self_href for c in catalog.get_children())]
    written += [i.self_href for items in result_items.values() for i in items]
    _pin_stac_version([Path(p) for p in written if p])
    band_assets = {
        "fine": {n: _PRODUCTS[fine_collection]["bands"][b].key for n, b in fine_vars.items()},
        "coarse": {n: _PRODUCTS[coarse_collection]["bands"][b].key for n, b in coarse_vars.items()},
    }
    return StacCatalog(
        catalog_path=str(root / "catalog.json"),
        href_base=href_base,
        fine_items=tuple(result_items["fine"]),
        coarse_items=tuple(result_items["coarse"]),
        fine_bands=band_assets["fine"],
        coarse_bands=band_assets["coarse"],
        fine_collection=fine_collection,
        coarse_collection=coarse_collection,
    )


def _write_item(
    role: str,
    coll: str,
    item_id: str,
    ts: pd.Timestamp,
    src: xr.Dataset,
    varmap: Mapping[str, str],
    gbox: Any,
    root: Path,
    href: Any,
) -> dict[str, Any]:
    """Write the COGs of one acquisition (one date of ``src``) and return its item dict."""
    product = _PRODUCTS[coll]
    per, qa_def, qa_ok, qa_gap = product["qa"]
    res = abs(float(gbox.affine.a))
    folder = root / coll / item_id
    assets: dict[str, Any] = {}

    def put(asset: _Asset, data: np.ndarray, nodata_tag: int | None) -> None:
        path = folder / f"{item_id}_{asset.key}.tif"
        _write_cog(path, data, gbox, nodata_tag)
        assets[asset.key] = _asset_dict(asset, href(path), res)

    gap_any = np.zeros(gbox.shape, dtype=bool)
    for name, band in varmap.items():
        values = np.asarray(src[name].values, dtype=np.float64)
        asset = product["bands"][band]
        put(asset, _encode(values, asset), asset.fill)
        gap = ~np.isfinite(values)
        gap_any |= gap
        if per == "band":
            qa = qa_def(asset.key.rsplit("Band", 1)[1])
            put(qa, np.where(gap, qa_gap, qa_ok).astype(qa.dtype), qa.fill)
    if per == "item":
        put(qa_def, np.where(gap_any, qa_gap, qa_ok).astype(qa_def.dtype), qa_def.nodata)

    cloud = _percent(gap_any)
    props: dict[str, Any] = {}
    if role == "fine":
        props["datetime"] = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    else:  # MODIS: a day range, datetime null (set last, as in the real items)
        day = ts.normalize()
        props["start_datetime"] = day.strftime("%Y-%m-%dT%H:%M:%SZ")
        props["end_datetime"] = (day + pd.Timedelta(seconds=86399)).strftime("%Y-%m-%dT%H:%M:%SZ")
    props["platform"] = product["platform"]
    props["instruments"] = list(product["instruments"])
    if role == "fine":
        props["gsd"] = res
    props["eo:cloud_cover"] = cloud if role == "fine" else round(cloud)
    props.update(_proj_props(gbox))
    if role == "coarse":
        props["datetime"] = None
    extensions = [_EXT["projection"], _EXT["raster"], _EXT["eo"]]
    if any(k.startswith("classification:") for a in assets.values() for k in a):
        extensions.append(_EXT["classification"])
    geometry, bbox = _footprint(gbox)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": extensions,
        "id": item_id,
        "collection": coll,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def _derive_coarse(scene: xr.Dataset, coarse_vars: Mapping[str, str], fine_gbox: Any) -> xr.Dataset:
    """Block-average the fine-grid coarse variables back to the coarse grid."""
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    from xfusion.cube.validate import spatial_dims

    f = scene.attrs.get("coarse_factor")
    resampling = scene.attrs.get("coarse_resampling", "nearest")
    if f is None or resampling != "nearest":
        raise InvalidParameterError(
            "Cannot derive the coarse sensor's own grid from this scene (coarse_factor="
            f"{f!r}, coarse_resampling={resampling!r}). Pass it explicitly: "
            "`scene, coarse = synthetic_scene(..., coarse_native=True)` then "
            "`write_stac_catalog(scene, directory, coarse=coarse)`."
        )
    f = int(f)
    ydim, xdim = spatial_dims(scene, name="scene")
    ny, nx = fine_gbox.shape
    a = fine_gbox.affine
    cgbox = GeoBox(
        (-(-ny // f), -(-nx // f)), Affine(a.a * f, a.b, a.c, a.d, a.e * f, a.f), fine_gbox.crs
    )
    coarsened = {}
    for name in coarse_vars:
        da = scene[name].coarsen({ydim: f, xdim: f}, boundary="pad").mean()
        coarsened[name] = (("time", ydim, xdim), da.data, scene[name].attrs)
    coords = {
        "time": scene["time"],
        **xr_coords(cgbox),
        **{k: scene.coords[k] for k in scene.coords if str(k).startswith("observed_coarse")},
    }
    return xr.Dataset(coarsened, coords=coords)


def _pin_stac_version(paths: list[Path], version: str = "1.0.0") -> None:
    """pystac writes its own STAC version; the Planetary Computer items are STAC 1.0.0."""
    for path in paths:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "stac_version" in doc:
            doc["stac_version"] = version
            path.write_text(json.dumps(doc, indent=2))


# --------------------------------------------------------------------------------------------
# Items of any supported product, shaped like the real ones, with given stored values

MODIS_SINUSOIDAL_WKT = (
    'PROJCRS["unnamed",BASEGEOGCRS["Unknown datum based upon the custom spheroid",DATUM['
    '"Not specified (based on custom spheroid)",ELLIPSOID["Custom spheroid",6371007.181,0,'
    'LENGTHUNIT["metre",1,ID["EPSG",9001]]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",'
    '0.0174532925199433,ID["EPSG",9122]]]],CONVERSION["unnamed",METHOD["Sinusoidal"],'
    'PARAMETER["Longitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433],'
    'ID["EPSG",8802]],PARAMETER["False easting",0,LENGTHUNIT["metre",1],ID["EPSG",8806]],'
    'PARAMETER["False northing",0,LENGTHUNIT["metre",1],ID["EPSG",8807]]],CS[Cartesian,2],'
    'AXIS["easting",east,ORDER[1],LENGTHUNIT["metre",1,ID["EPSG",9001]]],AXIS["northing",'
    'north,ORDER[2],LENGTHUNIT["metre",1,ID["EPSG",9001]]]]'
)
"""The MODIS sinusoidal CRS as the Planetary Computer items declare it (``proj:wkt2``, no EPSG)."""

_EXT_V10 = {
    "projection": "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.0.0/schema.json",
}


def _rb(data_type: str, res: float, **kw: Any) -> list[dict[str, Any]]:
    return [{**({"nodata": kw.pop("nodata")} if "nodata" in kw else {}), "data_type": data_type,
             "spatial_resolution": res, **kw}]


def _cog(title: str, roles: tuple[str, ...] = ("data",), **kw: Any) -> dict[str, Any]:
    return {"href": "", "type": COG_TYPE, "title": title, **kw, "roles": list(roles)}


def _eo(name: str, common: str | None, centre: float, fwhm: float | None = None) -> list[dict]:
    band: dict[str, Any] = {"name": name}
    if common:
        band["common_name"] = common
    band["center_wavelength"] = centre
    if fwhm is not None:
        band["full_width_half_max"] = fwhm
    return [band]


_MODIS_SR = {1: ("red", 0.645, 0.5), 2: ("nir08", 0.8585, 0.35), 3: ("blue", 0.469, 0.2),
             4: ("green", 0.555, 0.2), 5: ("lwir12", 1.24, 0.2), 6: ("swir16", 1.64, 0.24),
             7: ("swir22", 2.13, 0.5)}


def _modis_props(platform: str = "terra") -> dict[str, Any]:
    return {
        "start_datetime": "", "end_datetime": "",
        "modis:horizontal-tile": 19, "modis:vertical-tile": 2, "modis:tile-id": "51019002",
        "instruments": ["modis"], "platform": platform, "proj:epsg": None,
        "proj:wkt2": MODIS_SINUSOIDAL_WKT, "proj:shape": [], "proj:transform": [],
        "eo:cloud_cover": 0, "datetime": None,
    }


def _template_landsat() -> dict[str, Any]:
    assets: dict[str, Any] = {}
    for key in ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22"):
        if key == "coastal":
            a = _cog("Coastal/Aerosol Band", ("data", "reflectance"),
                     **{"eo:bands": _eo("OLI_B1", "coastal", 0.44, 0.02)})
        else:
            src = _PRODUCTS["landsat-c2-l2"]["bands"][key]
            a = dict(_asset_dict(src, "", 30))
        a["raster:bands"] = _rb("uint16", 30, nodata=0, scale=2.75e-05, offset=-0.2)
        assets[key] = a
    lst = _PRODUCTS["landsat-c2-l2"]["bands"]["lst"]
    assets["lwir11"] = _asset_dict(lst, "", 30)
    assets["qa_pixel"] = _asset_dict(_LANDSAT_QA, "", 30)
    assets["qa"] = _cog("Surface Temperature Quality Assessment Band",
                        **{"raster:bands": _rb("int16", 30, nodata=-9999, unit="kelvin",
                                               scale=0.01)})
    return {
        "stac_extensions": [_EXT["raster"], _EXT["eo"], _EXT_V10["projection"],
                            _EXT["classification"]],
        "properties": {"platform": "landsat-8", "instruments": ["oli", "tirs"], "gsd": 30,
                       "eo:cloud_cover": 0.0, "proj:epsg": None, "proj:shape": [],
                       "proj:transform": [], "landsat:collection_category": "T1",
                       "landsat:correction": "L2SP", "datetime": ""},
        "assets": assets,
        "id": "LC08_L2SP_000000_{date:%Y%m%d}_02_T1",
    }


def _template_modis_11a1() -> dict[str, Any]:
    assets = {}
    for key, title in (("LST_Day_1km", "Daily daytime 1km grid Land-surface Temperature"),
                       ("LST_Night_1km", "Daily nighttime 1km grid Land-surface Temperature")):
        assets[key] = _cog(title, ("data", "temperature"),
                           **{"raster:bands": _rb("uint16", 1000, unit="Kelvin", scale=0.02)})
    for key in ("QC_Day", "QC_Night"):
        assets[key] = _cog(f"Quality control for {key[3:].lower()}time LST and emissivity",
                           **{"raster:bands": _rb("uint8", 1000)})
    assets["Day_view_time"] = _cog("Local time of day observation",
                                   **{"raster:bands": _rb("uint8", 1000, unit="Hours",
                                                          scale=0.1)})
    assets["Emis_31"] = _cog("Band 31 emissivity", **{"raster:bands": _rb("uint8", 1000,
                                                                           scale=0.002)})
    assets["hdf"] = {"href": "", "type": "application/x-hdf",
                     "title": "Source data containing all bands", "roles": ["data"]}
    return {
        "stac_extensions": [_EXT_V10["projection"], _EXT_V10["eo"], _EXT_V10["raster"]],
        "properties": _modis_props(), "assets": assets, "days": 1,
        "id": "MOD11A1.A{date:%Y%j}.h19v02.061.2022042095544",
    }


def _template_modis_43a4() -> dict[str, Any]:
    assets = {}
    for n in range(1, 8):
        common, centre, fwhm = _MODIS_SR[n]
        assets[f"Nadir_Reflectance_Band{n}"] = _cog(
            f"NBAR at local solar noon for Band {n}", ("data", "reflectance"),
            **{"raster:bands": _rb("int16", 500, scale=0.0001),
               "eo:bands": _eo(f"Nadir_Reflectance_Band{n}", common, centre, fwhm)})
        assets[f"BRDF_Albedo_Band_Mandatory_Quality_Band{n}"] = _cog(
            f"BRDF Albedo Mandatory Quality for Band {n}",
            **{"raster:bands": _rb("uint8", 500)})
    return {
        "stac_extensions": [_EXT_V10["projection"], _EXT_V10["eo"], _EXT_V10["raster"]],
        "properties": {**_modis_props("terra,aqua")}, "assets": assets, "days": 1,
        "id": "MCD43A4.A{date:%Y%j}.h19v02.061.2022042095544",
    }


def _template_modis_sr(res: str, nbands: int, qc_type: str, prefix: str) -> dict[str, Any]:
    r = 500 if res == "500m" else 250
    assets = {}
    for n in range(1, nbands + 1):
        common, centre, fwhm = _MODIS_SR[n]
        assets[f"sur_refl_b0{n}"] = _cog(
            f"Surface Reflectance Band {n}", ("data", "reflectance"),
            **{"raster:bands": _rb("int16", r, scale=0.0001),
               "eo:bands": _eo(f"sur_refl_b0{n}", common, centre, fwhm)})
    assets[f"sur_refl_state_{res}"] = _cog(f"Surface Reflectance {res} State flags",
                                           **{"raster:bands": _rb("uint16", r)})
    assets[f"sur_refl_qc_{res}"] = _cog(f"Surface Reflectance {res} Band Quality Control flags",
                                        **{"raster:bands": _rb(qc_type, r)})
    return {
        "stac_extensions": [_EXT_V10["raster"], _EXT_V10["eo"], _EXT_V10["projection"]],
        "properties": _modis_props(), "assets": assets, "days": 8,
        "id": prefix + ".A{date:%Y%j}.h10v10.061.2022042044048",
    }


def _template_modis_13q1() -> dict[str, Any]:
    vi = {"raster:bands": _rb("int16", 250, scale=0.0001)}
    assets = {
        "250m_16_days_NDVI": _cog("16 day NDVI", **{"raster:bands": _rb("int16", 250,
                                                                         unit="NDVI",
                                                                         scale=0.0001)}),
        "250m_16_days_EVI": _cog("16 day EVI", **{"raster:bands": _rb("int16", 250, unit="EVI",
                                                                       scale=0.0001)}),
        "250m_16_days_red_reflectance": _cog("Surface Reflectance Band 1", **vi),
        "250m_16_days_NIR_reflectance": _cog("Surface Reflectance Band 2", **vi),
        "250m_16_days_VI_Quality": _cog("VI quality indicators",
                                        **{"raster:bands": _rb("uint16", 250)}),
        "250m_16_days_pixel_reliability": _cog(
            "Quality reliability of VI pixel",
            **{"raster:bands": _rb("int8", 250, unit="Rank"),
               "file:values": [{"values": [0], "summary": "Good data, use with confidence"},
                               {"values": [1], "summary": "Marginal data"},
                               {"values": [2], "summary": "Snow/Ice Target covered"},
                               {"values": [3], "summary": "Cloudy data"}]}),
    }
    return {
        "stac_extensions": [_EXT_V10["raster"], _EXT_V10["projection"], _EXT_V10["file"]],
        "properties": _modis_props(), "assets": assets, "days": 16,
        "id": "MOD13Q1.A{date:%Y%j}.h12v11.061.2022034232400",
    }


_S2_PC = {  # asset: (common name, centre um, gsd)
    "B01": ("coastal", 0.443, 60), "B02": ("blue", 0.49, 10), "B03": ("green", 0.56, 10),
    "B04": ("red", 0.665, 10), "B05": ("rededge", 0.704, 20), "B06": ("rededge", 0.74, 20),
    "B07": ("rededge", 0.783, 20), "B08": ("nir", 0.842, 10), "B8A": ("nir08", 0.865, 20),
    "B09": ("nir09", 0.945, 60), "B11": ("swir16", 1.61, 20), "B12": ("swir22", 2.19, 20),
}


def _template_sentinel2() -> dict[str, Any]:
    assets = {}
    for key, (common, centre, gsd) in _S2_PC.items():
        assets[key] = _cog(f"Band {key[1:].lstrip('0')} - {common}", **{
            "gsd": gsd, "eo:bands": _eo(key, common, centre), "proj:shape": [],
            "proj:transform": []})
    assets["SCL"] = _cog("Scene classfication map (SCL)", **{"gsd": 20.0, "proj:shape": [],
                                                              "proj:transform": []})
    for key in ("AOT", "WVP"):
        assets[key] = _cog(f"{key} map", **{"gsd": 10.0, "proj:shape": [], "proj:transform": []})
    return {
        "stac_extensions": [_EXT_V10["eo"], _EXT_V10["sat"], _EXT_V10["projection"]],
        "properties": {"datetime": "", "platform": "Sentinel-2B", "proj:epsg": None,
                       "instruments": ["msi"], "constellation": "Sentinel 2",
                       "eo:cloud_cover": 0.0, "sat:orbit_state": "descending",
                       "s2:mgrs_tile": "33TVM", "s2:processing_baseline": "02.12"},
        "assets": assets, "asset_proj": True,
        "id": "S2B_MSIL2A_{date:%Y%m%dT%H%M%S}_R043_T33TVM",
    }


def _template_sentinel1() -> dict[str, Any]:
    assets = {}
    for pol, what in (("vv", "vertical transmit, vertical receive"),
                      ("vh", "vertical transmit, horizontal receive"),
                      ("hh", "horizontal transmit, horizontal receive"),
                      ("hv", "horizontal transmit, vertical receive")):
        assets[pol] = _cog(
            f"{pol.upper()}: {what}",
            description=f"Terrain-corrected gamma naught values of signal ({what}).",
            **{"raster:bands": _rb("float32", 10, nodata=-32768)})
    return {
        "stac_extensions": [_EXT_V10["sar"], _EXT_V10["sat"], _EXT_V10["projection"],
                            _EXT_V10["raster"]],
        "properties": {"datetime": "", "platform": "SENTINEL-1A", "constellation": "Sentinel-1",
                       "sar:instrument_mode": "IW", "sar:polarizations": ["VV", "VH"],
                       "sar:frequency_band": "C", "sar:product_type": "GRD",
                       "sat:orbit_state": "descending", "s1:resolution": "high",
                       "proj:epsg": None, "proj:shape": [], "proj:transform": []},
        "assets": assets,
        "id": "S1A_IW_GRDH_1SDV_{date:%Y%m%dT%H%M%S}_rtc",
    }


_TEMPLATES = {
    "landsat-c2-l2": _template_landsat,
    "modis-11A1-061": _template_modis_11a1,
    "modis-43A4-061": _template_modis_43a4,
    "modis-09A1-061": lambda: _template_modis_sr("500m", 7, "uint32", "MOD09A1"),
    "modis-09Q1-061": lambda: _template_modis_sr("250m", 2, "uint16", "MOD09Q1"),
    "modis-13Q1-061": _template_modis_13q1,
    "sentinel-2-l2a": _template_sentinel2,
    "sentinel-1-rtc": _template_sentinel1,
}


def _geobox_of(geobox: Any, key: str) -> Any:
    if isinstance(geobox, Mapping):
        if key not in geobox:
            raise InvalidParameterError(
                f"geobox= has no grid for asset {key!r}; give one per written asset, or a "
                "single GeoBox for all."
            )
        return geobox[key]
    return geobox


def _set_proj(target: dict[str, Any], gbox: Any, *, crs_too: bool) -> None:
    if crs_too:
        epsg = gbox.crs.epsg
        if "proj:code" in target and target.get("proj:code") is not None:
            target["proj:code"] = f"EPSG:{epsg}" if epsg else None
        target["proj:epsg"] = epsg
        if epsg is None:
            target["proj:wkt2"] = gbox.crs.to_wkt()
        else:
            target.pop("proj:wkt2", None)
    target["proj:shape"] = [int(s) for s in gbox.shape]
    target["proj:transform"] = [float(v) for v in tuple(gbox.affine)[:6]]
    if "proj:bbox" in target:
        target["proj:bbox"] = [float(v) for v in gbox.extent.boundingbox]


def _regrid(entry: Mapping[str, Any], gbox: Any) -> Any:
    """``gbox``'s extent at the asset's own pixel size (from its template transform or gsd).

    odc-stac takes an item's footprint from the first of its finest assets, so every asset
    with projection metadata must sit where the written ones are.
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    t = entry.get("proj:transform") or []
    res = abs(float(t[0])) if t else float(entry.get("gsd") or abs(gbox.affine.a))
    x0, y1 = gbox.affine.c, gbox.affine.f
    w = abs(gbox.affine.a) * gbox.shape[1]
    h = abs(gbox.affine.e) * gbox.shape[0]
    shape = (max(1, round(h / res)), max(1, round(w / res)))
    return GeoBox(shape, Affine(res, 0.0, x0, 0.0, -res, y1), gbox.crs)


def write_stac_items(
    directory: str | os.PathLike[str],
    /,
    *,
    collection: str,
    assets: Mapping[str, Any],
    times: Any,
    geobox: Any,
    href_base: str | None = None,
    properties: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
    template: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    nodata_tags: Mapping[str, float | None] | None = None,
    ids: Sequence[str] | None = None,
) -> list[Any]:
    """Write COGs of given stored values and STAC items shaped like a real product's items.

    Each item is a copy of ``template`` (a real item JSON: the files in
    ``../shared/data/stac_items`` work) or of a built-in template shaped after the Planetary
    Computer / stactools items of ``collection``: same extensions, properties, asset keys and
    ``raster:bands`` (or their absence, as on Planetary Computer Sentinel-2), item- or
    asset-level projection. Only the written assets get new hrefs; the others keep the
    template's and are never read. Id, datetime (MODIS: ``datetime`` null and a
    ``start_datetime``/``end_datetime`` day range of the template's length), geometry, bbox
    and projection are set from ``times`` and ``geobox``.

    Parameters
    ----------
    directory : str or path-like
        Output folder; items go to ``<directory>/<collection>/<id>/<id>.json``.
    collection : str
        Collection id (``"landsat-c2-l2"``, ``"modis-11A1-061"``, ``"modis-43A4-061"``,
        ``"modis-09A1-061"``, ``"modis-09Q1-061"``, ``"modis-13Q1-061"``,
        ``"sentinel-2-l2a"``, ``"sentinel-1-rtc"`` have built-in templates).
    assets : mapping of str to array
        Asset key -> stored values ``(time, y, x)`` (or ``(y, x)`` for every date), in the
        stored data type (e.g. uint16 DNs), written as they are.
    times : sequence of date-like
        One acquisition time per item.
    geobox : GeoBox or mapping of str to GeoBox
        Grid of the assets (one for all, or per asset for products with asset-level
        projection such as Sentinel-2's 10 m and 20 m bands).
    href_base : str, optional
        URL the directory is served at (asset hrefs start with it); default absolute paths.
    properties : mapping or list of mappings, optional
        Item properties to set (one mapping for all items or one per item), e.g.
        ``{"platform": "landsat-5"}`` or ``{"s2:processing_baseline": "04.00"}``.
    template : mapping or path, optional
        A real item JSON (dict or file) to copy the shape from.
    nodata_tags : mapping of str to number or None, optional
        GeoTIFF nodata tag per asset; default the declared or preset nodata.
    ids : sequence of str, optional
        Item ids, one per time (default: from the template's id and the time). Needed when
        several items share a time, e.g. two MODIS tiles of one day.

    Returns
    -------
    list of pystac.Item
        The items (with self hrefs), in time order of ``times``.

    Raises
    ------
    InvalidParameterError
        Unknown collection without a template, array shapes that do not fit the grid or
        the times, a per-asset geobox missing.
    """
    import pystac

    from xfusion.stac.presets import preset_for_collection

    if template is None:
        if collection not in _TEMPLATES:
            raise InvalidParameterError(
                f"No built-in item template for collection {collection!r}; pass template= (a "
                f"real item JSON). Built-in: {sorted(_TEMPLATES)!r}."
            )
        tpl = _TEMPLATES[collection]()
    elif isinstance(template, Mapping):
        tpl = json.loads(json.dumps(template))
    else:
        tpl = json.loads(Path(template).read_text())
    real = "type" in tpl  # a real item, not a built-in template
    stamps = pd.DatetimeIndex(pd.to_datetime(list(np.atleast_1d(np.asarray(times)))))
    nt = len(stamps)
    arrays = {}
    for key, arr in assets.items():
        a = np.asarray(arr)
        if a.ndim == 2:
            a = np.broadcast_to(a, (nt, *a.shape))
        gb = _geobox_of(geobox, key)
        if a.ndim != 3 or a.shape[0] != nt or tuple(a.shape[1:]) != tuple(gb.shape):
            raise InvalidParameterError(
                f"Asset {key!r}: array shape {a.shape!r} does not fit {nt} times on a "
                f"{tuple(gb.shape)!r} grid; expected (time, y, x) or (y, x)."
            )
        arrays[key] = a
    props_list: list[Mapping[str, Any]]
    if properties is None:
        props_list = [{}] * nt
    elif isinstance(properties, Mapping):
        props_list = [properties] * nt
    else:
        props_list = list(properties)
        if len(props_list) != nt:
            raise InvalidParameterError(
                f"properties= holds {len(props_list)} mappings for {nt} times; give one per time."
            )
    preset = preset_for_collection(collection)
    root = Path(directory).absolute()
    first_key = next(iter(arrays))
    main_gbox = _geobox_of(geobox, first_key)
    asset_proj = bool(tpl.get("asset_proj")) or (
        real and any("proj:transform" in a for a in tpl.get("assets", {}).values())
    )
    days = tpl.get("days", 1)
    if real and tpl["properties"].get("start_datetime") and tpl["properties"].get("end_datetime"):
        span = pd.Timestamp(tpl["properties"]["end_datetime"]) - pd.Timestamp(
            tpl["properties"]["start_datetime"]
        )
        days = max(1, round(span / pd.Timedelta(days=1)))
    interval = tpl["properties"].get("datetime", "") is None
    if ids is not None and len(ids) != nt:
        raise InvalidParameterError(f"ids= holds {len(ids)} ids for {nt} times; give one per time.")
    out = []
    for ti, ts in enumerate(stamps):
        doc = json.loads(json.dumps({k: v for k, v in tpl.items()
                                     if k not in ("days", "asset_proj", "id")}))
        pattern = tpl.get("id") if not real else None
        item_id = (pattern or "{collection}-{date:%Y%m%dT%H%M%S}").format(
            date=ts, collection=collection
        )
        if real:
            item_id = f"{tpl['id'].split('.')[0].split('_')[0]}_{ts:%Y%m%dT%H%M%S}"
        if ids is not None:
            item_id = str(ids[ti])
        props = doc.setdefault("properties", {})
        if interval:
            day = ts.normalize()
            props["start_datetime"] = day.strftime("%Y-%m-%dT%H:%M:%SZ")
            props["end_datetime"] = (
                day + pd.Timedelta(days=days) - pd.Timedelta(seconds=1)
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
            props["datetime"] = None
        else:
            props["datetime"] = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        props.pop("proj:geometry", None)
        props.update(props_list[ti])
        if not asset_proj:
            _set_proj(props, main_gbox, crs_too=True)
        else:
            props["proj:epsg"] = main_gbox.crs.epsg
        geometry, bbox = _footprint(main_gbox)
        folder = root / collection / item_id
        doc_assets = doc.setdefault("assets", {})
        for key, a in arrays.items():
            gb = _geobox_of(geobox, key)
            entry = doc_assets.get(key)
            spec = preset.spec(key) if preset is not None else None
            if entry is None:
                entry = _cog(key, **({"raster:bands": _rb(
                    spec.data_type or a.dtype.name, abs(gb.affine.a),
                    **({"nodata": spec.nodata} if spec.nodata is not None else {}),
                    **({"scale": spec.scale} if spec.scale is not None else {}),
                    **({"offset": spec.offset} if spec.offset is not None else {}),
                )} if spec is not None else {}))
            rb = (entry.get("raster:bands") or [{}])[0]
            tag = rb.get("nodata", spec.nodata if spec is not None else None)
            if nodata_tags is not None and key in nodata_tags:
                tag = nodata_tags[key]
            path = folder / f"{item_id}_{key}.tif"
            _write_cog(path, np.ascontiguousarray(a[ti]), gb, tag)
            entry["href"] = str(path) if href_base is None else _join_url(
                href_base, path.relative_to(root).as_posix()
            )
            entry.setdefault("type", COG_TYPE)
            if asset_proj:
                _set_proj(entry, gb, crs_too=False)
            doc_assets[key] = entry
        if asset_proj:  # the template's other assets: its resolution on this extent
            for key, entry in doc_assets.items():
                if key not in arrays and "proj:transform" in entry:
                    _set_proj(entry, _regrid(entry, main_gbox), crs_too=False)
        doc.update({
            "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
            "geometry": geometry, "bbox": bbox, "links": [],
        })
        for k, v in list(doc.items()):
            if k == "stac_extensions" and not v:
                doc[k] = [_EXT_V10["projection"]]
        path = folder / f"{item_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        item = pystac.Item.from_dict(doc, migrate=False)
        item.set_self_href(str(path))
        out.append(item)
    return out


def item_template(collection: str, /) -> dict[str, Any]:
    """The built-in item template of a collection (what :func:`write_stac_items` copies)."""
    if collection not in _TEMPLATES:
        raise InvalidParameterError(
            f"No built-in item template for {collection!r}; built-in: {sorted(_TEMPLATES)!r}."
        )
    return _TEMPLATES[collection]()
