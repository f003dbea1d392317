"""Frozen, dask-tokenizable configuration objects."""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass
from typing import Any

from xfusion.errors import InvalidParameterError

__all__ = ["EngineConfig", "check_device", "check_precision"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_PRECISIONS = ("float32", "bf16", "fp16")


def check_device(device: str) -> str:
    """Validate a device string without importing torch (so errors come before compute)."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise InvalidParameterError(
            f"Unknown device {device!r}. Use 'auto' (CUDA when the worker has a GPU, else CPU), "
            "'cpu', 'cuda' or 'cuda:N'."
        )
    return device


def check_precision(precision: str) -> str:
    """Validate a precision string."""
    if precision not in _PRECISIONS:
        raise InvalidParameterError(
            f"Unknown precision {precision!r}. Choose one of {list(_PRECISIONS)!r} "
            "(bf16/fp16 autocast applies on CUDA only; CPU runs float32)."
        )
    return precision

_BLENDS = ("none", "linear", "cosine")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How the engine maps a model over Dask chunks.

    The defaults fit CPU and GPU alike; methods accept ``engine=EngineConfig(...)`` for power
    users and flat keyword arguments for the common case.
    """

    halo: int | None = None
    """Halo (input pixels) read around every chunk and tile. ``None`` uses the model's receptive
    field; a user value may only increase it (a smaller one would change the result)."""

    tile: int | None = 512
    """Tile size (input pixels) the chunk is cut into for the model; ``None`` runs whole chunks."""

    batch_size: int | None = None
    """Tiles per model call; ``None`` derives it from ``memory_budget``."""

    memory_budget: int = 256 << 20
    """Bytes one batch of activations may take (used when ``batch_size`` is None)."""

    blend: str = "none"
    """Overlap blending between tiles: ``"none"`` (halo + crop, exact), ``"linear"`` or
    ``"cosine"`` ramps over ``overlap`` pixels, for models whose receptive field exceeds a sane
    halo."""

    overlap: int = 0
    """Tile overlap (input pixels) used with ``blend``."""

    device: str = "auto"
    """``"auto"`` (resolved in each worker: CUDA if it has one, else CPU), ``"cpu"``,
    ``"cuda"``, ``"cuda:N"``."""

    precision: str = "float32"
    """``"float32"``, or ``"bf16"``/``"fp16"`` autocast on CUDA."""

    nan_fill: float = 0.0
    """Value put in place of NaN inputs before the model sees them."""

    nan_policy: str = "mask"
    """``"mask"``: outputs are NaN wherever any input channel is NaN (NaN in, NaN out).
    ``"keep"``: outputs are not masked (for models that fill gaps themselves)."""

    def __post_init__(self) -> None:
        for field in ("halo", "tile", "batch_size"):
            val = getattr(self, field)
            if val is not None and (not isinstance(val, int) or val < (0 if field == "halo" else 1)):
                raise InvalidParameterError(
                    f"EngineConfig.{field} must be a {'non-negative' if field == 'halo' else 'positive'}"
                    f" integer or None, found {val!r}."
                )
        if self.blend not in _BLENDS:
            raise InvalidParameterError(
                f"Unknown blend {self.blend!r}. Choose one of {list(_BLENDS)!r}."
            )
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise InvalidParameterError(
                f"EngineConfig.overlap must be a non-negative integer, found {self.overlap!r}."
            )
        if self.blend != "none" and self.overlap == 0:
            raise InvalidParameterError(
                f"blend={self.blend!r} needs overlap > 0 (pixels shared by neighbouring tiles), "
                "e.g. EngineConfig(blend='cosine', overlap=64)."
            )
        if self.tile is not None and self.overlap >= self.tile:
            raise InvalidParameterError(
                f"overlap ({self.overlap}) must be smaller than tile ({self.tile})."
            )
        if self.memory_budget <= 0:
            raise InvalidParameterError(
                f"memory_budget must be positive (bytes), found {self.memory_budget!r}."
            )
        if self.nan_policy not in ("mask", "keep"):
            raise InvalidParameterError(
                f"Unknown nan_policy {self.nan_policy!r}. Choose 'mask' or 'keep'."
            )
        check_device(self.device)
        check_precision(self.precision)

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.EngineConfig", *astuple(self))
