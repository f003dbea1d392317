"""Public testing helpers: synthetic scenes with known truth, local STAC catalogs, laziness checks.

Import explicitly (``import xfusion.testing``); ``import xfusion`` does not load it.
"""

from __future__ import annotations

from xfusion.testing._dask import assert_lazy, raise_if_dask_computes
from xfusion.testing._scenes import (
    LANDCOVER_CLASSES,
    REFLECTANCE_BANDS,
    synthetic_cube,
    synthetic_scene,
)
from xfusion.testing._server import serve_directory
from xfusion.testing._stac import StacCatalog, write_stac_catalog

__all__ = [
    "LANDCOVER_CLASSES",
    "REFLECTANCE_BANDS",
    "StacCatalog",
    "assert_lazy",
    "raise_if_dask_computes",
    "serve_directory",
    "synthetic_cube",
    "synthetic_scene",
    "write_stac_catalog",
]
