"""Input/output: Zarr writes that keep the CRS, and resumable tile-by-tile writes."""

from __future__ import annotations

from xfusion.io.zarr import TiledWriteReport, open_zarr, tile_status, to_zarr, write_tiled

__all__ = ["TiledWriteReport", "open_zarr", "tile_status", "to_zarr", "write_tiled"]
