"""Continental runs: jobs over areas of any size, tile-batched and resumable, on any cluster.

* :class:`Job` / :func:`load_job`: what to run (AOI, period, collections, method, output grid,
  tiling, Zarr store), from Python or a YAML file.
* :func:`run`: process a job tile by tile into a Zarr v3 store (template written once,
  finished tiles skipped on re-runs, failing tiles retried then reported, progress logged).
* :func:`cluster`: a ``LocalCUDACluster`` when GPUs and dask-cuda are present, else a
  ``LocalCluster``, or a connection to a running scheduler.
"""

from __future__ import annotations

from xfusion.jobs.cluster import cluster, gpu_count
from xfusion.jobs.runner import Plan, RunReport, TileFailure, plan, run, run_tile
from xfusion.jobs.spec import Job, load_job

__all__ = [
    "Job",
    "Plan",
    "RunReport",
    "TileFailure",
    "cluster",
    "gpu_count",
    "load_job",
    "plan",
    "run",
    "run_tile",
]
