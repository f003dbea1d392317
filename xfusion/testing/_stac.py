"""Write a synthetic scene as a local STAC catalog of Cloud-Optimized GeoTIFFs.

The items mimic the Planetary Computer ones (``landsat-c2-l2``, ``modis-11A1-061``,
``modis-43A4-061``): the same asset keys, data types, scale/offset, nodata conventions (the
MODIS items declare no nodata, as the real ones do), QA bands and item-level projection
metadata, so loaders can be tested offline on realistic metadata with known pixel values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InvalidParameterError, VariableNotFoundError

__all__ = ["StacCatalog", "write_stac_catalog"]

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
    geom = gbox.extent.to_crs("EPSG:4326")
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
