"""Zarr write throughput: xfusion.io.to_zarr and write_tiled vs plain xarray ``to_zarr``.

Same in-memory, dask-chunked data for all three, written side by side in one process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import xarray as xr


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(size: int = 4096, chunk: int = 1024, times: int = 2, repeats: int = 3) -> dict:
    from xfusion.io import to_zarr, write_tiled
    from xfusion.testing import synthetic_scene

    scene = synthetic_scene((size, size), times=times, chunks={"time": 1, "y": chunk, "x": chunk})
    ds = scene[["truth"]].persist()  # in memory: measure writing, not generating
    nbytes = ds["truth"].nbytes
    tmp = Path(tempfile.mkdtemp())
    try:
        def plain():
            ds.to_zarr(tmp / "plain.zarr", mode="w", consolidated=False)

        def ours():
            to_zarr(ds, tmp / "ours.zarr", mode="w", progress=False)

        def tiled():
            write_tiled(ds, tmp / "tiled.zarr", mode="w", progress=False)

        t_plain, t_ours, t_tiled = (_best(f, repeats) for f in (plain, ours, tiled))
        back = xr.open_zarr(tmp / "ours.zarr", decode_coords="all", consolidated=False)
        xr.testing.assert_equal(back["truth"], ds["truth"])
        size_ours = sum(f.stat().st_size for f in (tmp / "ours.zarr").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = nbytes / 1e6
    return {
        "benchmark": "zarr_write",
        "size": size, "chunk": chunk, "times": times, "data_mb": mb,
        "xarray_mb_s": mb / t_plain, "to_zarr_mb_s": mb / t_ours, "write_tiled_mb_s": mb / t_tiled,
        "ratio_to_zarr_over_xarray_time": t_ours / t_plain,
        "ratio_write_tiled_over_xarray_time": t_tiled / t_plain,
        "compression_ratio": nbytes / size_ours,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
