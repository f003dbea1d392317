"""Fusion cubes: the contract (validation) and builders from local files or arrays.

Cubes from STAC items are loaded by :mod:`xfusion.stac` (:func:`xfusion.load_cube`,
:func:`xfusion.load_pair`)."""

from __future__ import annotations

from xfusion.cube.build import RasterReadError, combine, from_geotiffs, from_numpy, mark_observed
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
