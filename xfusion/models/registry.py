"""A small registry of model architectures and known weights (no torch at import).

Architectures are named builders (``"package.module:function"``) with default parameters;
weights are named safetensors checkpoints with their SHA-256. Methods resolve
``arch="xfusion-v1"`` and ``weights="<name or path>"`` through here, and the engine builds
the nets from :func:`xfusion.models.checkpoint.build_from_checkpoint` once per worker (the
graph carries only the path and the file's hash). The built-in architectures are one explicit
table, :data:`BUILTIN_ARCHITECTURES`.

Examples
--------
>>> import xfusion.models
>>> [a.name for a in xfusion.models.list_architectures(method="sttfn")]
['xfusion-v1', 'xfusion-v2']
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xfusion.errors import InvalidParameterError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_ARCHITECTURES",
    "HARMONIZE_ARCH",
    "SIF_ARCH",
    "STORI_ARCH",
    "Architecture",
    "KnownWeights",
    "build_model",
    "get_architecture",
    "list_architectures",
    "list_weights",
    "register_architecture",
    "register_weights",
    "resolve_weights",
]


@dataclass(frozen=True)
class Architecture:
    """A registered architecture."""

    name: str
    """Registry name, e.g. ``"xfusion-v1"``."""
    builder: str
    """``"package.module:function"`` called as ``builder(bands, **params)``."""
    method: str
    """The method it serves (``"sttfn"``...)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Default parameters (what ``params`` may override)."""
    description: str = ""
    """One line: what it is and how faithful it is."""
    verified: bool = False
    """True when checked layer by layer against the paper."""


@dataclass(frozen=True)
class KnownWeights:
    """A named checkpoint file."""

    name: str
    """Registry name."""
    path: str
    """Local path of the ``.safetensors`` file."""
    sha256: str | None
    """SHA-256 of the whole file (checked on use when given)."""
    arch: str
    """Architecture the weights are for."""
    description: str = ""
    """What they were trained on."""


_ARCHS: dict[str, Architecture] = {}
_WEIGHTS: dict[str, KnownWeights] = {}


def register_architecture(arch: Architecture, *, overwrite: bool = False) -> None:
    """Add an architecture to the registry (``overwrite=True`` to replace one)."""
    if arch.name in _ARCHS and not overwrite:
        raise InvalidParameterError(
            f"An architecture named {arch.name!r} is already registered; pass overwrite=True "
            "to replace it."
        )
    _ARCHS[arch.name] = arch


def register_weights(weights: KnownWeights, *, overwrite: bool = False) -> None:
    """Add a named checkpoint to the registry (``overwrite=True`` to replace one)."""
    if weights.name in _WEIGHTS and not overwrite:
        raise InvalidParameterError(
            f"Weights named {weights.name!r} are already registered; pass overwrite=True to "
            "replace them."
        )
    if weights.arch not in _ARCHS:
        raise InvalidParameterError(
            f"Weights {weights.name!r} are for the unknown architecture {weights.arch!r}; "
            f"registered architectures: {sorted(_ARCHS)!r}."
        )
    _WEIGHTS[weights.name] = weights


def list_architectures(method: str | None = None) -> list[Architecture]:
    """Registered architectures (of one ``method`` when given), sorted by name."""
    return [a for _, a in sorted(_ARCHS.items()) if method is None or a.method == method]


def list_weights(arch: str | None = None) -> list[KnownWeights]:
    """Registered weights (for one ``arch`` when given), sorted by name."""
    return [w for _, w in sorted(_WEIGHTS.items()) if arch is None or w.arch == arch]


def get_architecture(name: str) -> Architecture:
    """Return the registered architecture ``name`` or raise listing the choices."""
    try:
        return _ARCHS[name]
    except (KeyError, TypeError):
        raise InvalidParameterError(
            f"Unknown architecture {name!r}. Registered architectures: {sorted(_ARCHS)!r} "
            "(add one with xfusion.models.register_architecture)."
        ) from None


def arch_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults of architecture ``name`` updated with ``params`` (unknown keys → error)."""
    arch = get_architecture(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(arch.defaults))
    if unknown:
        raise InvalidParameterError(
            f"Unknown parameter(s) {unknown!r} for architecture {name!r}. Valid parameters: "
            f"{sorted(arch.defaults)!r}."
        )
    out = dict(arch.defaults)
    out.update(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def build_model(name: str, bands: int = 1, **params: Any) -> torch.nn.Module:
    """Build architecture ``name`` for ``bands`` bands (imports torch)."""
    arch = get_architecture(name)
    full = arch_params(name, {k: v for k, v in params.items() if k not in ("mean", "std")})
    full.update({k: v for k, v in params.items() if k in ("mean", "std")})
    module, _, attr = arch.builder.partition(":")
    func = getattr(importlib.import_module(module), attr)
    return func(bands, **full)  # type: ignore[no-any-return]


def resolve_weights(weights: str | Path) -> tuple[str, str | None]:
    """Return ``(path, expected_sha256)`` for a registered name or a file path."""
    if isinstance(weights, str) and weights in _WEIGHTS:
        w = _WEIGHTS[weights]
        return w.path, w.sha256
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights {str(weights)!r} are neither a file nor a registered name. Registered "
            f"weights: {sorted(_WEIGHTS)!r}. Pass the path of a .safetensors checkpoint saved "
            "by xfusion (e.g. by train_sttfn(..., out=...))."
        )
    return str(path.resolve()), None


# --------------------------------------------------------------------------------------------
# the built-in architectures: one explicit table (nothing registers itself on import, so a worker
# that imports only xfusion.models can rebuild every architecture from a checkpoint)

STTFN_V1, STTFN_V2 = "xfusion-v1", "xfusion-v2"
SIF_ARCH = "sif-sr"
"""Registry name of the SIF-CNN-SR U-Net."""
HARMONIZE_ARCH = "harmonize-unet"
"""Registry name of the Landsat-8 -> Sentinel-2 harmonization U-Net."""
STORI_ARCH = "stori"
"""Registry name of the STORI architecture."""

BUILTIN_ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name=STTFN_V1,
        builder="xfusion.models.sttfn:build_xfusion_v1",
        method="sttfn",
        defaults={
            "sr_width": 64, "feat": 32, "width": 64, "blocks": 2, "sr_kernels": (9, 1, 5),
            "fine_kernels": (3, 3), "block_kernels": (3, 5, 7), "head_kernel": 3,
            "offset": True, "init": "zero-head",
        },
        description="STTFN multiscale fusion CNN reconstructed from the paper's structure "
        "(Super-Resolution, Integration and Extraction nets, global residual); layer sizes "
        "are xfusion's choice (405,025 parameters per net for one band), not the paper's table",
        verified=False,
    ),
    Architecture(
        name=STTFN_V2,
        builder="xfusion.models.sttfn:build_xfusion_v2",
        method="sttfn",
        defaults={
            "sr_width": 32, "feat": 16, "width": 32, "blocks": 2, "sr_kernels": (9, 1, 5),
            "fine_kernels": (3, 3), "block_kernels": (3, 5, 7), "head_kernel": 3,
            "ctx_width": 16, "ctx_box": 65, "ctx_dilations": (8, 16, 32),
            "guess": "gain", "target_features": False, "offset": True, "init": "zero-head",
        },
        description="xfusion-v1 plus a coarse-context branch (box-smoothed inputs, dilated "
        "convolutions) wider than a coarse pixel, and a smoothed coarse change as the global "
        "residual guess; an xfusion design, not the paper's",
        verified=False,
    ),
    Architecture(
        name=SIF_ARCH, builder="xfusion.models.sifsr:sif_unet", method="super_resolve",
        defaults={"width": 16, "align_corners": False, "global_skip": False, "kind": "unet",
                  "depth": 4},
        description="SIF-CNN-SR residual U-Net (ModelB_2, 3 levels); 282,705 parameters "
        "with width 16 and 2 input channels, as the paper's (kind='unet'); kind="
        "'residual-mlp': xfusion's default per-pixel correction of bicubic + DMS",
        verified=True,
    ),
    Architecture(
        name=HARMONIZE_ARCH, builder="xfusion.models.harmonize_unet:harmonize_unet",
        method="harmonize",
        defaults={"out_channels": 6, "depth": 3, "width": 16, "upsample": "upsample",
                  "residual": False},
        description="Landsat-8 -> Sentinel-2 AUNet without attention (Sambandham et al. "
        "2024); depth 5/6 x width 64 reproduce the published 28.9 M / 116.0 M parameters",
        verified=True,
    ),
    Architecture(
        name=STORI_ARCH,
        builder="xfusion.models.stori:build_stori",
        method="gapfill",
        defaults={"n_sar": 2, "hidden": 96, "decay": "optical", "sar_first": True},
        description="STORI bidirectional SAR-guided recurrent imputer (BRITS-style RITS_H "
        "pair, 77,089 parameters per direction at H=96); decay='sar', sar_first=False "
        "is the public code's cell",
        verified=False,
    ),
)
"""The architectures xfusion ships; users add theirs with :func:`register_architecture`."""

for _arch in BUILTIN_ARCHITECTURES:
    _ARCHS[_arch.name] = _arch
del _arch
