"""Lazy GeoTIFF reads whose failures name the file.

``rioxarray.open_rasterio(..., chunks=...)`` reads each block inside a dask task; a truncated
or corrupt file then fails at compute time deep inside dask with a GDAL message
(``CPLE_AppDefinedError: TIFFFillStrip``) that names neither the file nor what to do.
:func:`open_guarded` builds the same lazy array from a dask graph whose every block read is
wrapped: a failure becomes a :class:`~xfusion.errors.RasterReadError` naming the file, the
block and the likely cause.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import RasterReadError

__all__ = ["open_guarded"]


class _GuardedBlocks:
    """Array-like over a lazily opened raster: each ``[key]`` reads one window, and read
    errors name the file (dask's ``from_array`` calls it once per block)."""

    def __init__(self, lazy: xr.DataArray, path: str, what: str) -> None:
        self.lazy = lazy
        self.path = path
        self.what = what
        self.shape = tuple(int(s) for s in lazy.shape)
        self.dtype = np.dtype(lazy.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.lazy[key].values)
        except Exception as err:  # rasterio/GDAL errors come in several classes
            where = ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s)
                              for s in (key if isinstance(key, tuple) else (key,)))
            raise RasterReadError(
                f"Cannot read the {self.what} {self.path!r} (block [{where}]): "
                f"{type(err).__name__}: {str(err).rstrip('.')}. The file is probably "
                "truncated or corrupt (e.g. an interrupted download): check it with "
                "`gdalinfo -checksum` and download or write it again."
            ) from None


def open_guarded(path: str, *, chunks: dict[str, int], what: str,
                 **open_kwargs: Any) -> xr.DataArray:
    """``rioxarray.open_rasterio(path, chunks=chunks, **open_kwargs)`` with block reads that
    raise :class:`~xfusion.errors.RasterReadError` naming ``path`` (``what``: e.g. "fine
    GeoTIFF for 2020-03-08")."""
    import dask.array as da
    import rioxarray
    from dask.base import tokenize

    open_kwargs = {**open_kwargs}
    open_kwargs.pop("lock", None)
    open_kwargs.pop("cache", None)
    lazy = rioxarray.open_rasterio(path, cache=False, **open_kwargs)  # metadata only
    assert isinstance(lazy, xr.DataArray)
    sizes = [int(chunks.get(str(d), -1)) for d in lazy.dims]
    blocks = tuple(n if n > 0 else int(s) for n, s in zip(sizes, lazy.shape, strict=True))
    import os

    stat = os.stat(path)  # a rewritten file gets new keys
    name = f"xfusion-read-{tokenize(path, stat.st_mtime_ns, stat.st_size, open_kwargs, blocks)}"
    data = da.from_array(_GuardedBlocks(lazy, path, what), chunks=blocks, name=name,
                         asarray=True, fancy=False, meta=np.empty((0,) * lazy.ndim, lazy.dtype))
    out = lazy.copy(data=data)
    out.encoding = dict(lazy.encoding)
    return out
