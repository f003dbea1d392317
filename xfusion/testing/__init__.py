"""Public testing helpers: synthetic scenes with known truth, local STAC catalogs, laziness checks.

Import explicitly (``import xfusion.testing``); ``import xfusion`` does not load it.
"""

from __future__ import annotations

from xfusion.testing._dask import assert_lazy, raise_if_dask_computes
from xfusion.testing._pc import PCCatalog, PCScene, write_pc_catalog
from xfusion.testing._scenes import (
    LANDCOVER_CLASSES,
    REFLECTANCE_BANDS,
    synthetic_cube,
    synthetic_scene,
)
from xfusion.testing._series import (
    LANDSCAPES,
    SERIES_CLASSES,
    realistic_series,
    simulate_gaps,
    synthetic_series,
)
from xfusion.testing._server import Fault, LoopbackServer, serve_directory, serve_stac_api
from xfusion.testing._stac import StacCatalog, item_template, write_stac_catalog, write_stac_items

__all__ = [
    "Fault",
    "LANDCOVER_CLASSES",
    "LANDSCAPES",
    "LoopbackServer",
    "PCCatalog",
    "PCScene",
    "REFLECTANCE_BANDS",
    "SERIES_CLASSES",
    "StacCatalog",
    "assert_lazy",
    "item_template",
    "raise_if_dask_computes",
    "realistic_series",
    "serve_directory",
    "serve_stac_api",
    "simulate_gaps",
    "synthetic_cube",
    "synthetic_scene",
    "synthetic_series",
    "write_pc_catalog",
    "write_stac_catalog",
    "write_stac_items",
]
