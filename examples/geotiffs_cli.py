"""Fusion from your own GeoTIFFs, in Python and with the ``xfusion fuse`` command.

The GeoTIFFs are made here from a synthetic scene: fine (30 m, UTM) images at two dates and
coarse images on their own ~1 km grid at three dates, as a user would have them on disk.

Run: ``python examples/geotiffs_cli.py [OUT_DIR]``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)

import xfusion
from xfusion.testing import synthetic_scene


def write_inputs(out: Path) -> tuple[dict[str, str], dict[str, str], str]:
    scene, coarse = synthetic_scene((192, 192), times=3, fine_times=[0, 2], seed=3,
                                    coarse_native=True, cloud_fraction=0.0)
    days = [str(t)[:10] for t in scene.time.values]
    fine, crs = {}, scene.odc.crs
    for i in (0, 2):
        path = out / f"landsat_{days[i]}.tif"
        scene["fine"].isel(time=i).rio.write_crs(crs).rio.to_raster(path)
        fine[days[i]] = str(path)
    coarse_files = {}
    for i, day in enumerate(days):
        path = out / f"modis_{day}.tif"
        coarse["coarse"].isel(time=i).rio.write_crs(coarse.odc.crs).rio.to_raster(path)
        coarse_files[day] = str(path)
    truth = out / f"truth_{days[1]}.tif"
    scene["truth"].isel(time=1).rio.write_crs(crs).rio.to_raster(truth)
    return fine, coarse_files, days[1]


def main(out: Path) -> None:
    fine, coarse, target = write_inputs(out)
    # 1. Python: build a lazy cube (coarse reprojected onto the fine grid), predict, write
    cube = xfusion.from_geotiffs(fine={d: p for d, p in fine.items() if d < target},
                                 coarse=coarse, chunks=64)
    pred = cube.fusion.baseline(fine="fine", coarse="coarse", targets=[target])
    pred["fine"].sel(time=target).rio.to_raster(out / "pred_python.tif")

    # 2. the same from the shell
    first = min(fine)
    cmd = [sys.executable, "-m", "xfusion", "fuse", "baseline", "--fine", f"{first}={fine[first]}",
           *[a for d, p in coarse.items() for a in ("--coarse", f"{d}={p}")],
           "--target", target, "--out", str(out / "pred_cli.tif"), "--overwrite"]
    subprocess.run(cmd, check=True)

    import rioxarray as rxr

    a = rxr.open_rasterio(out / "pred_python.tif").values[0]
    b = rxr.open_rasterio(out / "pred_cli.tif").values[0]
    t = rxr.open_rasterio(out / f"truth_{target}.tif").values[0]
    assert np.allclose(a, b, equal_nan=True), "Python and CLI results differ"
    print(f"predicted {target} from the pair {first}: RMSE "
          f"{float(np.sqrt(np.nanmean((a - t) ** 2))):.2f} K against the truth "
          f"(fine at pair alone: {float(np.sqrt(np.nanmean((rxr.open_rasterio(fine[first]).values[0] - t) ** 2))):.2f} K)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
