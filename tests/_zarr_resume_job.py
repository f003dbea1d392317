"""Helper of tests/test_io_zarr.py: a slow, logged dask cube written tile by tile.

Run as ``python _zarr_resume_job.py STORE LOG DELAY`` it calls ``xfusion.io.write_tiled`` on
:func:`build` and prints the report; the test kills it with SIGKILL mid-way and runs it again.
Every computed block appends ``"<pid> <t> <by> <bx>"`` to LOG before sleeping DELAY seconds.
The values depend only on the pixel position, so every run gives the same data.
"""

from __future__ import annotations

import os
import sys
import time

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

SHAPE = (2, 32, 32)  # time, y, x
CHUNKS = (1, 8, 8)
TILE = 8  # one dask chunk per tile: a 4 x 4 tile grid
NAN_BLOCK = (1, 2)  # (by, bx) of the all-NaN tile


def _values(t: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.sin(0.3 * y) + np.cos(0.2 * x) + 10.0 * t
    out = np.where((3 * y + 5 * x + t) % 11 == 0, np.nan, out)  # scattered gaps
    return out.astype("float32")


def expected() -> np.ndarray:
    """The cube's values computed in one numpy pass."""
    t, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    out = _values(t, y, x)
    by, bx = NAN_BLOCK
    out[:, by * CHUNKS[1] : (by + 1) * CHUNKS[1], bx * CHUNKS[2] : (bx + 1) * CHUNKS[2]] = np.nan
    return out


def _block(template: np.ndarray, *, log: str | None, delay: float, block_info=None) -> np.ndarray:
    loc = block_info[0]["array-location"]
    cid = block_info[0]["chunk-location"]
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {cid[0]} {cid[1]} {cid[2]}\n")
    if delay:
        time.sleep(delay)
    if (cid[1], cid[2]) == NAN_BLOCK:
        return np.full(template.shape, np.nan, dtype="float32")
    t, y, x = np.meshgrid(*(np.arange(a, b) for a, b in loc), indexing="ij")
    return _values(t, y, x)


def build(log: str | None = None, delay: float = 0.0) -> xr.Dataset:
    """A dask-backed cube (time, y, x) in EPSG:32633 whose blocks are slow and logged."""
    gbox = GeoBox(SHAPE[1:], Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0), "EPSG:32633")
    data = da.zeros(SHAPE, chunks=CHUNKS, dtype="float32").map_blocks(
        _block, log=log, delay=delay, dtype="float32", meta=np.array((), dtype="float32")
    )
    times = np.array(["2020-01-01", "2020-01-09"], dtype="datetime64[ns]")
    coords = {"time": times, **xr_coords(gbox, crs_coord_name="spatial_ref")}
    fused = xr.DataArray(data, dims=("time", *gbox.dimensions), coords=coords, name="fused")
    fused.encoding["grid_mapping"] = "spatial_ref"
    return fused.to_dataset()


if __name__ == "__main__":
    import xfusion.io

    store, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    report = xfusion.io.write_tiled(build(log, delay), store, tile=TILE, progress=False)
    print(report, flush=True)
