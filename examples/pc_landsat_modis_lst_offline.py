"""Offline twin of ``pc_landsat_modis_lst.ipynb``: Landsat + MODIS LST from a STAC API.

The notebook searches the Planetary Computer for Landsat Collection 2 Level-2 and MODIS
MOD11A1 items over a small area, loads them as one fusion cube with ``xfusion.load_pair``
(scale/offset, QA masks, MODIS resampled onto the Landsat grid, days aligned), picks clear
pairs and target dates, and runs the fusion methods. This script runs the same code, unchanged
but for the API URL, against a local STAC API on loopback: a synthetic Landsat/MODIS LST scene
with known truth, written as Cloud-Optimized GeoTIFFs with the real items' encodings, so the
predictions can be scored.

Run: ``python examples/pc_landsat_modis_lst_offline.py [OUT_DIR]``
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rasterio.errors import NotGeoreferencedWarning

import xfusion
from xfusion.testing import synthetic_scene, write_stac_catalog
from xfusion.testing._server import serve_stac_api  # public in xfusion.testing soon


def main(out: Path) -> None:
    t0 = time.perf_counter()
    # rasterio warns while warping in-memory blocks (MODIS onto the Landsat grid): benign
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    # A 7.7 x 7.7 km area (256 x 256 Landsat pixels), eight dates 16 days apart, Landsat on
    # four of them with clouds, MODIS every date with its own clouds.
    scene, modis_native = synthetic_scene(
        (256, 256), times=8, coarse_native=True, seed=5,
        fine_times=[0, 2, 5, 7], cloud_fraction=[0.0, 0.0, 0.05, 0.0, 0.0, 0.6, 0.0, 0.02],
        coarse_cloud_fraction=0.05,
    )
    with serve_stac_api(out) as server:
        write_stac_catalog(scene, out / "catalog", coarse=modis_native,
                           href_base=server.url + "catalog/")
        api = server.stac_url  # the notebook uses the Planetary Computer (the default)
        bbox = tuple(scene.odc.geobox.geographic_extent.boundingbox)
        period = ("2021-04-01", "2021-08-01")

        # --- as in the notebook ----------------------------------------------------------
        landsat = xfusion.stac.search("landsat-c2-l2", bbox=bbox, time=period, url=api)
        modis = xfusion.stac.search("modis-11A1-061", bbox=bbox, time=period, url=api)
        print(f"found {len(landsat)} Landsat and {len(modis)} MODIS items")

        cube = xfusion.load_pair(
            fine=landsat, coarse=modis, geobox=scene.odc.geobox,
            chunks={"time": 1, "y": 128, "x": 128},
        )
        pairs = xfusion.stac.clear_pairs(cube, min_clear=0.9)
        targets = xfusion.stac.clear_targets(cube, min_clear=0.9, include_pairs=True)
        targets = targets[~np.isin(targets, pairs[:1])]  # predict every date but the first pair
        print(f"cube {dict(cube.sizes)}; clear pairs {[str(t)[:10] for t in pairs]}; "
              f"{len(targets)} targets")

        preds = {
            "baseline": cube.fusion.baseline(fine="fine", coarse="coarse", targets=targets,
                                             pairs=pairs[0]),
            "starfm": xfusion.starfm(cube, fine="fine", coarse="coarse", targets=targets,
                                     pairs=pairs[0], preset="lst"),
        }
        xfusion.io.to_zarr(preds["starfm"], out / "lst_starfm.zarr", mode="w")
        # ------------------------------------------------------------------------------------

    truth = scene["truth"].assign_coords(time=scene.time.dt.floor("D").values)
    scores = {}
    for name, pred in preds.items():
        ref = truth.sel(time=pred.time).rename("fine")
        scores[name] = xfusion.metrics.evaluate(pred["fine"], ref, metrics=("rmse", "bias", "r"))
    print(xfusion.metrics.format_table(scores))
    back = xfusion.io.open_zarr(out / "lst_starfm.zarr")
    print(f"wrote {back.sizes['time']} STARFM dates to lst_starfm.zarr "
          f"(CRS EPSG:{back.odc.crs.epsg}) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
