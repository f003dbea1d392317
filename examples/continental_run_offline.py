"""A tiled, resumable run (`xfusion.run`) on a local cluster, fully offline.

The offline twin of ``examples/tahoe_starfm_job.yaml``: a synthetic Landsat/MODIS LST area is
written as real-shaped STAC items and COGs, served by a STAC API on loopback, and processed by a
job YAML tile by tile on a 2-worker ``LocalCluster``. Running the job again resumes it (nothing
is recomputed). Usage: ``python continental_run_offline.py OUT_DIR``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

import xfusion
from xfusion.testing import serve_stac_api, synthetic_scene, write_stac_catalog

JOB = """\
name: offline-demo
method: starfm
params: {{preset: lst}}
time: [2021-04-01, 2021-07-31]
aoi: {{bbox: {bbox}, crs: EPSG:32633}}
stac: {{url: "{url}", bands: lst}}
grid: {{crs: EPSG:32633, resolution: 30, anchor: edge, tile: 128}}
output: {{store: fused.zarr, chunk: 64, shards: true}}
"""


def main(out: Path) -> None:
    scene, coarse = synthetic_scene(
        (384, 384), times=5, fine_times=[0, 4], coarse_factor=16, kind="lst", seed=0,
        cloud_fraction=0.1, coarse_cloud_fraction=0.0, coarse_native=True,
    )  # fmt: skip
    bb = scene.odc.geobox.extent.boundingbox
    (out / "stac").mkdir(parents=True, exist_ok=True)
    with serve_stac_api(out / "stac") as server:
        write_stac_catalog(scene, out / "stac", coarse=coarse, href_base=server.url)
        job_file = out / "job.yaml"
        job_file.write_text(
            JOB.format(bbox=[bb.left, bb.bottom, bb.right, bb.top], url=server.stac_url)
        )
        with xfusion.cluster("local", n_workers=2, threads_per_worker=1) as client:
            first = xfusion.run(job_file, client=client)
            print(first)
            again = xfusion.run(job_file, client=client)  # resumes: every tile is done
            print(again)
    fused = xfusion.io.open_zarr(out / "fused.zarr")
    truth = scene["truth"].values
    err = np.abs(fused["fine"].values - truth)[1:4]  # the dates between the Landsat pairs
    print(
        f"{fused.sizes['time']} dates x {fused.sizes['y']}x{fused.sizes['x']} px in "
        f"{out / 'fused.zarr'}; MAE vs truth between the pairs {np.nanmean(err):.2f} K"
    )


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "continental_run_out").resolve())
