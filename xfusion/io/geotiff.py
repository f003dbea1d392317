"""GeoTIFF input and output of the command line: method results as GeoTIFFs.

* :func:`write_geotiff`: a fusion/gap-filling result Dataset as one GeoTIFF, one band per
  (target, variable): float32 with NaN nodata, or the results' integer dtype and fill when
  they are all integers with one fill; written chunk by chunk from Dask;
* :func:`write_bands`: a super-resolution result (one band per variable, or per date and
  variable);
* :func:`read_geotiff` / :func:`bands_dataset`: a (multi-band) GeoTIFF opened lazily, and as a
  Dataset of one variable per band named by the band descriptions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.cube.validate import get_geobox, spatial_dims

__all__ = ["bands_dataset", "read_geotiff", "write_bands", "write_geotiff"]


def _integer_layout(out: Any, names: Sequence[Any]) -> tuple[np.dtype, Any] | None:
    """``(dtype, fill)`` when every variable is integer with one dtype and one nodata value."""
    from xfusion.cube.validate import get_nodata

    dtypes = {np.dtype(out[n].dtype) for n in names}
    fills = {get_nodata(out[n]) for n in names}
    if len(dtypes) != 1 or len(fills) != 1:
        return None
    dtype, fill = dtypes.pop(), fills.pop()
    if not np.issubdtype(dtype, np.integer) or fill is None:
        return None
    return dtype, dtype.type(fill)


def _as_float32(var: xr.DataArray) -> xr.DataArray:
    """float32 with NaN where an integer variable holds its nodata value."""
    from xfusion.cube.validate import get_nodata

    fill = get_nodata(var) if np.issubdtype(var.dtype, np.integer) else None
    out = var.astype(np.float32)
    return out if fill is None else out.where(var != fill)


def write_geotiff(out: Any, path: str) -> None:
    """Write a method's result Dataset as one GeoTIFF, one band per (target, variable).

    Bands are ordered target-major; descriptions are ``YYYY-MM-DD`` (one variable) or
    ``YYYY-MM-DD/<variable>``. When every variable is integer with one dtype and one nodata
    value (``attrs["nodata"]``, e.g. STARFM on int16 inputs), the file has that dtype and
    nodata value, as the USDA STARFM program writes it; otherwise it is float32 with NaN as
    the nodata value (integer nodata pixels become NaN). Dask inputs are written chunk by
    chunk.
    """
    import dask
    import rioxarray  # noqa: F401  (registers .rio)

    ydim, xdim = spatial_dims(out, name="result")
    gbox = get_geobox(out, name="result")
    names = list(out.data_vars)
    layout = _integer_layout(out, names)
    dates = [str(np.datetime64(t, "D")) for t in out.indexes["time"].values]
    layers, descriptions = [], []
    for k, date in enumerate(dates):
        for n in names:
            var = out[n].isel(time=k).transpose(ydim, xdim)
            layers.append(var.data if layout is not None else _as_float32(var).data)
            descriptions.append(date if len(names) == 1 else f"{date}/{n}")
    if any(dask.is_dask_collection(a) for a in layers):
        import dask.array as da

        data = da.stack([a if dask.is_dask_collection(a) else da.asarray(a) for a in layers])
    else:
        data = np.stack(layers)
    arr = xr.DataArray(
        data,
        dims=("band", ydim, xdim),
        coords={"band": np.arange(1, len(layers) + 1), ydim: out[ydim], xdim: out[xdim]},
        attrs={"long_name": tuple(descriptions)},
    )
    arr = arr.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim, inplace=False)
    arr = arr.rio.write_crs(gbox.crs.to_wkt(), inplace=False)
    arr = arr.rio.write_transform(gbox.affine, inplace=False)
    dtype, fill = layout if layout is not None else (np.dtype(np.float32), np.nan)
    arr = arr.rio.write_nodata(fill, encoded=False, inplace=False)
    lock = threading.Lock() if dask.is_dask_collection(data) else None
    _to_raster(arr, path, lock=lock, dtype=dtype.name)


def _to_raster(arr: xr.DataArray, path: str, *, lock: Any, dtype: str = "float32") -> None:
    """``rio.to_raster`` with write failures as :class:`OutputWriteError` naming the file
    (read failures of lazy inputs surface as the readers' own xfusion errors)."""
    import rasterio.errors

    from xfusion.errors import OutputWriteError, XFusionError

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputWriteError(
            f"Cannot write {path!r}: the folder {folder!r} does not exist. Create it first."
        )
    if not os.access(folder, os.W_OK):
        raise OutputWriteError(
            f"Cannot write {path!r}: the folder {folder!r} is not writable. Choose another "
            "output path."
        )
    try:
        arr.rio.to_raster(path, dtype=dtype, tiled=True, lock=lock, compute=True)
    except XFusionError:
        raise
    except (OSError, rasterio.errors.RasterioError) as err:
        raise OutputWriteError(f"Could not write the GeoTIFF {path!r}: {err}") from err


def write_bands(out: xr.DataArray | xr.Dataset, path: str) -> None:
    """Write a super-resolution result as a float32 GeoTIFF (one band per variable/date)."""
    import dask
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)

    ds = out if isinstance(out, xr.Dataset) else out.to_dataset(name=out.name or "sr")
    ydim, xdim = spatial_dims(ds, name="result")
    gbox = get_geobox(ds, name="result")
    layers, desc = [], []
    for n in ds.data_vars:
        v = ds[n]
        if "time" in v.dims:
            for k in range(v.sizes["time"]):
                layers.append(v.isel(time=k).transpose(ydim, xdim).data)
                desc.append(f"{str(v['time'].values[k])[:10]}/{n}")
        else:
            layers.append(v.transpose(ydim, xdim).data)
            desc.append(str(n))
    lazy = any(dask.is_dask_collection(a) for a in layers)
    data = da.stack([da.asarray(a) for a in layers]) if lazy else np.stack(layers)
    arr = xr.DataArray(data.astype(np.float32), dims=("band", ydim, xdim),
                       coords={"band": np.arange(1, len(layers) + 1), ydim: ds[ydim],
                               xdim: ds[xdim]},
                       attrs={"long_name": tuple(desc)})
    arr = arr.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim, inplace=False)
    arr = arr.rio.write_crs(gbox.crs.to_wkt(), inplace=False)
    arr = arr.rio.write_transform(gbox.affine, inplace=False)
    arr = arr.rio.write_nodata(np.nan, encoded=False, inplace=False)
    _to_raster(arr, path, lock=threading.Lock() if lazy else None)


def read_geotiff(path: str, *, chunks: int, role: str) -> xr.DataArray:
    from xfusion.cube.raster import open_guarded
    from xfusion.errors import RasterReadError

    try:
        arr = open_guarded(path, chunks={"band": -1, "y": chunks, "x": chunks},
                           what=f"{role} GeoTIFF", masked=True)
    except RasterReadError:
        raise
    except Exception as err:
        raise RasterReadError(f"Cannot read the {role} GeoTIFF {path!r}: {err}") from None
    assert isinstance(arr, xr.DataArray)
    return arr


def bands_dataset(arr: xr.DataArray, default: Sequence[str] | None = None) -> xr.Dataset:
    """A multi-band raster as a Dataset, one variable per band (named by the descriptions)."""
    desc = arr.attrs.get("long_name")
    n = arr.sizes["band"]
    if isinstance(desc, (list, tuple)) and len(desc) == n and len(set(desc)) == n:
        names = [str(d) for d in desc]
    elif default is not None and len(default) == n:
        names = list(default)
    else:
        names = [f"b{k + 1}" for k in range(n)]
    attrs = {k: v for k, v in arr.attrs.items() if k not in ("long_name",)}
    return xr.Dataset({nm: arr.isel(band=k, drop=True).assign_attrs(attrs)
                       for k, nm in enumerate(names)})
