"""Training utilities shared by xfusion's learned methods.

* Patch sampling over (Dask-backed) cubes: :class:`PatchSource`, :class:`RandomPatchSampler`,
  :class:`GridPatchSampler`, :func:`spatial_split` (no torch needed).
* A torch ``Dataset`` over the patches, augmentation and normalisation statistics:
  :class:`PatchDataset`, :func:`make_loader`, :func:`channel_stats`, :class:`NormStats`.
* The training loop :func:`fit` (Adam, masked losses, spatial validation, early stopping,
  autocast, progress bar, seeded, resumable) and its :class:`FitResult`.
* Checkpoints: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`read_metadata`
  (safetensors + JSON; never unpickled).

The torch-based names are imported on first access, so ``import xfusion.training`` works
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from xfusion.models.checkpoint import (
    Checkpoint,
    file_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from xfusion.training.sampling import (
    GridPatchSampler,
    Patch,
    PatchSource,
    RandomPatchSampler,
    spatial_split,
)

_LAZY = {
    "PatchDataset": "xfusion.training.datasets",
    "NormStats": "xfusion.training.datasets",
    "augment": "xfusion.training.datasets",
    "channel_stats": "xfusion.training.datasets",
    "make_loader": "xfusion.training.datasets",
    "FitResult": "xfusion.training.loop",
    "LOSSES": "xfusion.training.loop",
    "fit": "xfusion.training.loop",
    "masked_loss": "xfusion.training.loop",
}

__all__ = [
    "LOSSES",
    "Checkpoint",
    "FitResult",
    "GridPatchSampler",
    "NormStats",
    "Patch",
    "PatchDataset",
    "PatchSource",
    "RandomPatchSampler",
    "augment",
    "channel_stats",
    "file_sha256",
    "fit",
    "load_checkpoint",
    "make_loader",
    "masked_loss",
    "read_metadata",
    "save_checkpoint",
    "spatial_split",
]


def __getattr__(name: str) -> Any:
    """Import the torch-based helpers on first access (with an install hint without torch)."""
    if name in _LAZY:
        from xfusion._compat import lazy_import

        lazy_import("torch", purpose=f"xfusion.training.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xfusion.training' has no attribute {name!r}")
