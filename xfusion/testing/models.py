"""Tiny torch models with known behaviour, for engine tests and benchmarks (imports torch).

Each declares ``halo`` (receptive-field radius in input pixels), ``scale`` and
``out_channels`` as the engine requires. Builders are module-level functions so that
:class:`xfusion.engine.ModelSpec` can name them (``"xfusion.testing.models:conv_model"``).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["ConvModel", "IdentityModel", "UpsampleModel", "conv_model", "identity_model",
           "upsample_model"]


class IdentityModel(nn.Module):
    """Returns its input (or its first ``out_channels`` channels)."""

    halo = 0
    scale = 1

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.out_channels]


class ConvModel(nn.Module):
    """``layers`` 3×3 convolutions (zero 'same' padding) with tanh between: receptive field
    radius = ``layers``. Seeded random weights unless ``seed`` is None."""

    scale = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 1, layers: int = 2,
                 width: int = 8, seed: int | None = 0, declared_halo: int | None = None) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        chans = [in_channels] + [width] * (layers - 1) + [out_channels]
        convs = []
        for cin, cout in itertools.pairwise(chans):
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            if gen is not None:
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3)
                    conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        self.out_channels = out_channels
        self.halo = layers if declared_halo is None else declared_halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i + 1 < len(self.convs):
                x = torch.tanh(x)
        return x


class UpsampleModel(nn.Module):
    """Nearest-neighbour upsampling by ``scale`` (optionally after a 3×3 conv)."""

    def __init__(self, scale: int = 2, conv: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.scale = scale
        self.out_channels = 1
        self.halo = 1 if conv else 0
        self.conv = None
        if conv:
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        return nn.functional.interpolate(x[:, :1], scale_factor=self.scale, mode="nearest")


def identity_model(out_channels: int = 1) -> IdentityModel:
    """Builder for :class:`IdentityModel`."""
    return IdentityModel(out_channels)


def conv_model(**kwargs: object) -> ConvModel:
    """Builder for :class:`ConvModel`."""
    return ConvModel(**kwargs)  # type: ignore[arg-type]


def upsample_model(scale: int = 2, conv: bool = False) -> UpsampleModel:
    """Builder for :class:`UpsampleModel`."""
    return UpsampleModel(scale, conv)
