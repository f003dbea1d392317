"""Input/output: Zarr writes that keep the CRS, resumable tile-by-tile writes, GeoTIFFs."""

from __future__ import annotations

from xfusion.io.geotiff import bands_dataset, read_geotiff, write_bands, write_geotiff
from xfusion.io.stac_item import quicklook, stac_collection, stac_item, write_stac_item
from xfusion.io.tiled import TiledWriteReport, tile_status, write_tiled
from xfusion.io.zarr import open, open_zarr, to_zarr

__all__ = [
    "TiledWriteReport",
    "bands_dataset",
    "open",
    "open_zarr",
    "quicklook",
    "read_geotiff",
    "stac_collection",
    "stac_item",
    "tile_status",
    "to_zarr",
    "write_bands",
    "write_geotiff",
    "write_stac_item",
    "write_tiled",
]
