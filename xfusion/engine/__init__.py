"""Model-agnostic, lazy tiled inference over Dask chunks (halos, scale, batching, devices)."""

from __future__ import annotations

from xfusion.config import EngineConfig
from xfusion.engine.model import ModelSpec
from xfusion.engine.run import apply_model, map_blocks_halo, map_model

__all__ = ["EngineConfig", "ModelSpec", "apply_model", "map_blocks_halo", "map_model"]
