"""xfusion: lazy, scalable satellite image fusion on xarray/Dask datacubes.

Importing the package registers the ``.fusion`` accessor on xarray objects. It never imports
torch: neural methods import it when they are called.
"""

from __future__ import annotations

from xfusion import accessor as _accessor  # noqa: F401  (registers .fusion)
from xfusion import errors
from xfusion._progress import set_progress
from xfusion._version import __version__
from xfusion.apply import apply_model
from xfusion.cube import combine, from_geotiffs, from_numpy, mark_observed, validate_cube
from xfusion.jobs import Job, cluster, load_job, run
from xfusion.methods.baseline import baseline
from xfusion.methods.composite import (
    composite,
    gapfill_inputs,
    mask_s2,
    s1_features,
    s2_ndvi,
    time_gaps,
)
from xfusion.methods.dms import dms
from xfusion.methods.estarfm import estarfm
from xfusion.methods.fitfc import fitfc
from xfusion.methods.fsdaf import fsdaf
from xfusion.methods.gapfill import gapfill
from xfusion.methods.harmonize import harmonize, train_harmonizer
from xfusion.methods.starfm import starfm
from xfusion.methods.sttfn import sttfn, train_sttfn
from xfusion.methods.super_resolve import super_resolve, train_sif_sr
from xfusion.stac import load_cube, load_pair

_SUBMODULES = ("config", "cube", "engine", "io", "metrics", "models", "stac", "testing", "training")


def __getattr__(name: str) -> object:
    """Import the public submodules on first access (``xfusion.io.to_zarr(...)``)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"xfusion.{name}")
    raise AttributeError(f"module 'xfusion' has no attribute {name!r}")



__all__ = [
    "Job",
    "__version__",
    "apply_model",
    "baseline",
    "cluster",
    "combine",
    "composite",
    "dms",
    "errors",
    "estarfm",
    "fitfc",
    "fsdaf",
    "from_geotiffs",
    "from_numpy",
    "gapfill",
    "gapfill_inputs",
    "harmonize",
    "load_cube",
    "load_job",
    "load_pair",
    "mark_observed",
    "mask_s2",
    "run",
    "s1_features",
    "s2_ndvi",
    "set_progress",
    "starfm",
    "sttfn",
    "super_resolve",
    "time_gaps",
    "train_harmonizer",
    "train_sif_sr",
    "train_sttfn",
    "validate_cube",
]
