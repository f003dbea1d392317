"""Outputs that describe themselves: a STAC Item next to each product, a Collection for jobs,
and a PNG quicklook.

The Item is built with pystac and its extensions (no hand-written JSON): the footprint and
time range of the product, the ``proj`` extension (CRS code, shape, transform, bbox), the
``datacube`` extension (dimensions and variables with their units), the ``processing``
fields (xfusion's version, the method and its parameters), ``derived_from`` links to the
inputs (STAC items or files) and the product itself as the ``data`` asset.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import InvalidParameterError, OutputWriteError

__all__ = ["item_path", "quicklook", "stac_collection", "stac_item", "write_stac_item"]

_MEDIA = {
    "zarr": "application/vnd.zarr",
    "tif": "image/tiff; application=geotiff",
}
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: the dataset attribute holding the ids (and hrefs) of the STAC items a cube was loaded from
INPUT_ITEMS_ATTR = "xfusion:input_items"


def item_path(product: str | os.PathLike[str]) -> str:
    """Where the Item of a product is written: ``pred.zarr`` -> ``pred.stac.json`` (next to
    it, also for ``.tif``)."""
    p = os.fspath(product).rstrip("/\\")
    base, ext = os.path.splitext(p)
    return f"{base if ext.lower() in ('.zarr', '.tif', '.tiff') else p}.stac.json"


def _fmt(path: str) -> str:
    low = path.lower().rstrip("/\\")
    return "zarr" if low.endswith(".zarr") else "tif"


def _utc(t: Any) -> _dt.datetime:
    ns = np.datetime64(t, "ns").astype("int64")
    return _dt.datetime.fromtimestamp(int(ns) / 1e9, tz=_dt.UTC)


def _method_record(ds: xr.Dataset) -> tuple[str | None, dict[str, Any]]:
    """The method and parameters recorded by xfusion in ``attrs["xfusion_<method>"]``."""
    for key, value in ds.attrs.items():
        if str(key).startswith("xfusion_") and isinstance(value, str):
            try:
                return str(key)[len("xfusion_"):], dict(json.loads(value))
            except (ValueError, TypeError):
                continue
    for var in ds.data_vars.values():
        method = var.attrs.get("super_resolve_method") or var.attrs.get("method")
        if method:
            return str(method), {}
    return None, {}


def _inputs(ds: xr.Dataset) -> list[dict[str, str]]:
    raw = ds.attrs.get(INPUT_ITEMS_ATTR)
    if raw is None:
        return []
    try:
        vals = json.loads(raw) if isinstance(raw, str) else list(raw)
    except ValueError:
        return []
    out = []
    for v in vals:
        if isinstance(v, Mapping) and v.get("id"):
            out.append({k: str(x) for k, x in v.items() if x is not None})
        elif isinstance(v, str):
            out.append({"id": v})
    return out


def stac_item(
    obj: xr.Dataset | xr.DataArray,
    href: str | os.PathLike[str],
    /,
    *,
    id: str | None = None,
    derived_from: Sequence[str | os.PathLike[str]] = (),
    properties: Mapping[str, Any] | None = None,
    quicklook_href: str | None = None,
    method: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """A STAC Item (pystac) describing a product.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The product as written (a method's result): georeferenced, with ``time`` when dated.
    href : str or path
        The product (``.zarr`` store or ``.tif``): the ``data`` asset. Relative to the Item's
        folder when written with :func:`write_stac_item`.
    id : str, optional
        Item id; default the product's file name without extension.
    derived_from : sequence of str
        Hrefs of the inputs (files or STAC items) for ``derived_from`` links; the STAC items
        a cube was loaded from (``attrs["xfusion:input_items"]``) are added.
    properties : mapping, optional
        Extra Item properties.
    quicklook_href : str, optional
        A PNG quicklook to list as the ``thumbnail`` asset.
    method, parameters : optional
        The method that made the product and its parameters; default: what the method
        recorded in the product's attributes (``attrs["xfusion_<method>"]``).

    Returns
    -------
    pystac.Item
        With the ``proj`` and ``datacube`` extensions and the ``processing`` fields.
    """
    import pystac
    from pystac.extensions.datacube import (
        DatacubeExtension,
        Dimension,
        DimensionType,
        HorizontalSpatialDimension,
        HorizontalSpatialDimensionAxis,
        TemporalDimension,
        Variable,
        VariableType,
    )
    from pystac.extensions.projection import ProjectionExtension

    from xfusion._version import __version__
    from xfusion.cube.validate import get_geobox, spatial_dims

    ds = obj.to_dataset(name=obj.name or "data") if isinstance(obj, xr.DataArray) else obj
    href = os.fspath(href)
    ydim, xdim = spatial_dims(ds, name="the product")
    gbox = get_geobox(ds)
    if gbox is None or gbox.crs is None:
        raise InvalidParameterError(
            "stac_item() needs a georeferenced product (a CRS and a grid), found none. Write "
            "the result of an xfusion method, or set the CRS with `ds.rio.write_crs(...)`."
        )
    footprint = gbox.footprint("EPSG:4326", npoints=5)  # corners and 4 points per side
    geometry = footprint.json
    bbox = [float(v) for v in footprint.boundingbox]
    times = np.asarray(ds["time"].values) if "time" in ds.coords else np.array([])
    times = np.sort(times[~np.isnat(times)]) if times.size else times
    now = _dt.datetime.now(tz=_dt.UTC).replace(microsecond=0)
    found, params = _method_record(ds)
    method = method or found
    if parameters is not None:
        params = {**params, **{str(k): v for k, v in parameters.items()}}
    item_id = id or os.path.splitext(os.path.basename(href.rstrip("/\\")))[0]
    props: dict[str, Any] = {}
    if times.size > 1:
        start, end, when = _utc(times[0]), _utc(times[-1]), None
    elif times.size == 1:
        start = end = None
        when = _utc(times[0])
    else:
        start = end = None
        when = now
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=when,
                       start_datetime=start, end_datetime=end, properties=props)
    item.common_metadata.created = now
    # processing: what made it
    item.stac_extensions.append(PROCESSING_SCHEMA)
    item.properties["processing:software"] = {"xfusion": __version__}
    item.properties["processing:datetime"] = now.isoformat().replace("+00:00", "Z")
    if method:
        lineage = f"xfusion {method}"
        if params:
            lineage += " with " + json.dumps(params, sort_keys=True, default=str)
        item.properties["processing:lineage"] = lineage
        item.properties["xfusion:method"] = method
    if params:
        item.properties["xfusion:parameters"] = params
    # proj
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = gbox.crs.epsg
    if epsg is not None:
        proj.code = f"EPSG:{int(epsg)}"
    else:
        proj.code = None
        proj.wkt2 = gbox.crs.to_wkt(version="WKT2_2019")
    proj.shape = [int(s) for s in gbox.shape]
    proj.transform = [float(v) for v in tuple(gbox.affine)[:6]]
    proj.bbox = [float(v) for v in gbox.extent.boundingbox]
    # datacube
    cube = DatacubeExtension.ext(item, add_if_missing=True)
    res = gbox.resolution
    bb = gbox.extent.boundingbox
    ref = int(epsg) if epsg is not None else gbox.crs.to_wkt()
    dims: dict[str, Dimension] = {
        str(xdim): HorizontalSpatialDimension({
            "type": DimensionType.SPATIAL, "axis": HorizontalSpatialDimensionAxis.X,
            "extent": [float(bb.left), float(bb.right)], "step": float(res.x),
            "reference_system": ref}),
        str(ydim): HorizontalSpatialDimension({
            "type": DimensionType.SPATIAL, "axis": HorizontalSpatialDimensionAxis.Y,
            "extent": [float(bb.bottom), float(bb.top)], "step": float(res.y),
            "reference_system": ref}),
    }
    if times.size:
        iso = [_utc(t).isoformat().replace("+00:00", "Z") for t in times]
        dims["time"] = TemporalDimension({"type": DimensionType.TEMPORAL,
                                          "extent": [iso[0], iso[-1]], "values": iso})
    variables: dict[str, Variable] = {}
    for name, var in ds.data_vars.items():
        vdims = [str(d) for d in var.dims]
        if not set(vdims) >= {str(ydim), str(xdim)}:
            continue
        spec: dict[str, Any] = {"dimensions": vdims, "type": VariableType.DATA}
        if var.attrs.get("long_name"):
            spec["description"] = str(var.attrs["long_name"])
        if var.attrs.get("units"):
            spec["unit"] = str(var.attrs["units"])
        variables[str(name)] = Variable(spec)
    cube.apply(dimensions=dims, variables=variables)
    if properties:
        item.properties.update(dict(properties))
    # assets and links
    fmt = _fmt(href)
    item.add_asset("data", pystac.Asset(href=href, media_type=_MEDIA[fmt], roles=["data"],
                                        title=f"{method or 'xfusion'} product ({fmt})"))
    if quicklook_href is not None:
        item.add_asset("thumbnail", pystac.Asset(href=quicklook_href,
                                                 media_type=pystac.MediaType.PNG,
                                                 roles=["thumbnail", "overview"],
                                                 title="quicklook"))
    seen: set[str] = set()
    for src in _inputs(ds):
        if src.get("href") and src["href"] not in seen:
            seen.add(src["href"])
            item.add_link(pystac.Link("derived_from", src["href"],
                                      media_type=pystac.MediaType.JSON, title=src["id"]))
    ids = [s["id"] for s in _inputs(ds)]
    if ids:
        item.properties["xfusion:input_items"] = sorted(set(ids))
    for src_path in derived_from:
        p = os.fspath(src_path)
        if p not in seen:
            seen.add(p)
            media = pystac.MediaType.JSON if p.endswith(".json") else pystac.MediaType.GEOTIFF
            item.add_link(pystac.Link("derived_from", p, media_type=media))
    return item


def write_stac_item(
    obj: xr.Dataset | xr.DataArray,
    product: str | os.PathLike[str],
    /,
    *,
    path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> str:
    """Write the STAC Item of a product next to it (:func:`item_path`); return its path.

    The ``data`` asset and the ``derived_from`` links to local files are written relative to
    the Item's folder, so the pair can be moved together. ``kwargs`` go to :func:`stac_item`.
    """
    import pystac

    product = os.fspath(product)
    out = os.fspath(path) if path is not None else item_path(product)
    folder = os.path.dirname(os.path.abspath(out))

    def rel(p: str) -> str:
        if "://" in p:
            return p
        return os.path.relpath(os.path.abspath(p), folder)

    derived = [rel(os.fspath(p)) for p in kwargs.pop("derived_from", ())]
    ql = kwargs.pop("quicklook_href", None)
    item = stac_item(obj, rel(product), derived_from=derived,
                     quicklook_href=rel(ql) if ql else None, **kwargs)
    item.set_self_href(None)
    try:
        with open(out, "w") as fh:
            json.dump(item.to_dict(include_self_link=False, transform_hrefs=False), fh, indent=1)
    except OSError as err:
        raise OutputWriteError(
            f"Cannot write the STAC item {out!r}: {err.strerror or err}. Check that the folder "
            "exists and is writable."
        ) from None
    _ = pystac  # pystac builds the object; the JSON is its own serialisation
    return out


def stac_collection(
    items: Sequence[Any],
    *,
    id: str,
    description: str,
    title: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Any:
    """A STAC Collection (pystac) over ``items`` (e.g. the Items of a job's products), its
    extent the union of theirs; the items are added to it. With ``root`` (a folder) the
    hrefs are laid out there (``collection.json``, ``<id>/<id>.json``) as pystac's
    ``normalize_hrefs`` does, ready for ``collection.save()``."""
    import pystac

    if not items:
        raise InvalidParameterError("stac_collection() needs at least one item.")
    boxes = np.array([it.bbox for it in items], dtype=float)
    bbox = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
            float(boxes[:, 3].max())]
    starts = [it.common_metadata.start_datetime or it.datetime for it in items]
    ends = [it.common_metadata.end_datetime or it.datetime for it in items]
    starts = [t for t in starts if t is not None]
    ends = [t for t in ends if t is not None]
    interval = [[min(starts) if starts else None, max(ends) if ends else None]]
    col = pystac.Collection(
        id=id, description=description, title=title,
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent(interval)),
        license="other",
    )
    for it in items:
        col.add_item(it)
    if root is not None:
        col.normalize_hrefs(os.fspath(root))
    return col


def quicklook(obj: xr.Dataset | xr.DataArray, path: str | os.PathLike[str], /, *,
              variable: Hashable | None = None, time: int = 0, max_size: int = 1024) -> str:
    """Write a PNG quicklook of a product: red/green/blue variables as colour when present,
    else one variable in grey; 2-98 % stretch, unobserved pixels transparent; at most
    ``max_size`` pixels a side (strided). Reads the data it shows."""
    from matplotlib import image as mpimg

    ds = obj.to_dataset(name=obj.name or "data") if isinstance(obj, xr.DataArray) else obj
    names = [str(n) for n in ds.data_vars if ds[n].ndim >= 2]
    if not names:
        raise InvalidParameterError("quicklook() found no 2-D variable to show.")
    rgb = []
    for band in ("red", "green", "blue"):
        match = [n for n in names if n == band or n.endswith(f"_{band}")]
        rgb.append(match[0] if match else None)
    chosen = [str(variable)] if variable is not None else (
        rgb if all(rgb) else [names[0]])  # type: ignore[list-item]
    planes = []
    for name in chosen:
        var = ds[name]
        if "time" in var.dims:
            var = var.isel(time=min(time, var.sizes["time"] - 1))
        var = var.squeeze(drop=True)
        step = max(1, int(np.ceil(max(var.shape) / max_size)))
        planes.append(np.asarray(var[::step, ::step].values, dtype=float))
    stack = np.stack(planes, axis=-1)
    ok = np.isfinite(stack).all(axis=-1)
    out = np.zeros((*stack.shape[:2], 4), dtype=float)
    if ok.any():
        lo, hi = np.percentile(stack[ok], [2, 98])
        scaled = np.clip((stack - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        scaled = np.where(np.isfinite(scaled), scaled, 0)
        out[..., :3] = scaled if stack.shape[-1] == 3 else np.repeat(scaled, 3, axis=-1)
    out[..., 3] = ok
    p = os.fspath(path)
    try:
        mpimg.imsave(p, out)
    except OSError as err:
        raise OutputWriteError(f"Cannot write the quicklook {p!r}: {err.strerror or err}.") \
            from None
    return p
