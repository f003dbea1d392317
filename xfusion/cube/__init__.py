"""Fusion cubes: the contract (validation) and builders from local files or arrays."""

from __future__ import annotations

from xfusion.cube.build import RasterReadError, combine, from_geotiffs, from_numpy, mark_observed
from xfusion.cube.stac import load_cube
from xfusion.cube.validate import (
    CubeInfo,
    get_geobox,
    get_nodata,
    observed_times,
    require_same_grid,
    require_time,
    require_vars,
    spatial_dims,
    validate_cube,
)

__all__ = [
    "CubeInfo",
    "RasterReadError",
    "combine",
    "from_geotiffs",
    "from_numpy",
    "load_cube",
    "mark_observed",
    "get_geobox",
    "get_nodata",
    "observed_times",
    "require_same_grid",
    "require_time",
    "require_vars",
    "spatial_dims",
    "validate_cube",
]
