"""Offline twin of the README's Planetary Computer quickstart.

A synthetic Landsat/MODIS LST scene is written as a STAC catalog of COGs shaped like the
Planetary Computer items and served over HTTP on loopback, so odc-stac does real range reads.
The code between the markers is the README quickstart, unchanged but for the item source.

Run: ``python examples/quickstart_stac_offline.py [OUT_DIR]``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import xfusion
from xfusion.testing import serve_directory, synthetic_scene, write_stac_catalog


def main(out: Path) -> None:
    scene, coarse_native = synthetic_scene((256, 256), times=6, coarse_native=True, seed=1)
    with serve_directory(out) as url:
        cat = write_stac_catalog(scene, out / "catalog", coarse=coarse_native,
                                 href_base=url + "catalog/")
        landsat, modis = cat.fine_items, cat.coarse_items
        grid = scene.odc.geobox

        # --- README quickstart ---------------------------------------------------------
        chunks = {"time": 1, "y": 128, "x": 128}
        fine = xfusion.load_cube(landsat, bands="lwir11", geobox=grid, chunks=chunks)
        coarse = xfusion.load_cube(modis, bands="LST_Day_1km", geobox=grid, chunks=chunks)
        cube = xfusion.combine(fine, coarse, fine_name="fine", coarse_name="coarse")

        pred = cube.fusion.baseline(fine="fine", coarse="coarse")  # lazy: nothing read yet
        xfusion.io.to_zarr(pred, out / "lst_fused.zarr", mode="w")  # computes chunk by chunk
        # --------------------------------------------------------------------------------

    back = xfusion.io.open_zarr(out / "lst_fused.zarr")
    truth = scene["truth"].assign_coords(time=scene.time.dt.floor("D").values)
    truth = truth.sel(time=back.time).rename("fine")
    scores = xfusion.metrics.evaluate(back["fine"], truth, metrics=("rmse", "bias", "r"))
    print(f"cube: {dict(cube.sizes)}; predicted {back.sizes['time']} dates, CRS EPSG:{back.odc.crs.epsg}")
    print(xfusion.metrics.format_table({"fine-plus-change": scores}))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
