"""Model-agnostic, lazy tiled inference over Dask chunks (halos, scale, batching, devices).

The engine works on arrays (numpy, Dask, torch); :func:`xfusion.apply_model` is its xarray
front end. One device resolver (:func:`xfusion.engine.device.resolve_device`) serves
training, inference and STARFM."""

from __future__ import annotations

from xfusion.config import EngineConfig
from xfusion.engine.device import resolve_device
from xfusion.engine.model import ModelSpec
from xfusion.engine.run import map_blocks_halo, map_model

__all__ = ["EngineConfig", "ModelSpec", "map_blocks_halo", "map_model", "resolve_device"]


def __getattr__(name: str) -> object:
    """``xfusion.engine.apply_model``: moved to :func:`xfusion.apply_model` (kept as an alias)."""
    if name == "apply_model":
        import importlib
        import warnings

        warnings.warn(
            "xfusion.engine.apply_model moved to xfusion.apply_model (the engine works on "
            "arrays; apply_model is its xarray front end); the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("xfusion.apply").apply_model
    raise AttributeError(f"module 'xfusion.engine' has no attribute {name!r}")
