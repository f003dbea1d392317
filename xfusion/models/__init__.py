"""Model architectures, known weights and checkpoints of xfusion's learned methods.

``import xfusion.models`` does not import torch; building a model does.

Examples
--------
>>> import xfusion.models
>>> [a.name for a in xfusion.models.list_architectures(method="sttfn")]
['xfusion-v1', 'xfusion-v2']
"""

from __future__ import annotations

from xfusion.models.checkpoint import (
    Checkpoint,
    build_from_checkpoint,
    file_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from xfusion.models.registry import (
    Architecture,
    KnownWeights,
    build_model,
    get_architecture,
    list_architectures,
    list_weights,
    register_architecture,
    register_weights,
    resolve_weights,
)

__all__ = [
    "Architecture",
    "Checkpoint",
    "KnownWeights",
    "build_from_checkpoint",
    "build_model",
    "file_sha256",
    "get_architecture",
    "list_architectures",
    "list_weights",
    "load_checkpoint",
    "read_metadata",
    "register_architecture",
    "register_weights",
    "resolve_weights",
    "save_checkpoint",
]
