"""Model architectures and known weights of xfusion's learned methods.

``import xfusion.models`` does not import torch; building a model does.

Examples
--------
>>> import xfusion.models
>>> [a.name for a in xfusion.models.list_architectures(method="sttfn")]
['xfusion-v1', 'xfusion-v2']
"""

from __future__ import annotations

from xfusion.models.registry import (
    Architecture,
    KnownWeights,
    build_from_checkpoint,
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
    "KnownWeights",
    "build_from_checkpoint",
    "build_model",
    "get_architecture",
    "list_architectures",
    "list_weights",
    "register_architecture",
    "register_weights",
    "resolve_weights",
]
