"""STTFN's multiscale fusion CNN, architecture ``"xfusion-v1"`` (imports torch).

A reconstruction of the network of Yin et al. (2021) from the structure the paper and the
STTFN-OSU README describe (a Super-Resolution Net, an Integration Net and an Extraction Net);
the paper's layer table was not available, so the layer sizes below are xfusion's choice and
the architecture is labelled ``"xfusion-v1"`` (see ``specs/sttfn.md`` section 2):

* Super-Resolution Net on ``[M_ref, M_tgt]``: Conv 9x9 → ``sr_width``, ReLU; Conv 1x1 →
  ``feat``, ReLU; Conv 5x5 → ``feat``, ReLU (the SRCNN 9-1-5 pattern) → ``F_M``.
* Fine branch on ``L_ref``: two Conv 3x3 → ``feat``, ReLU → ``F_L``.
* Integration Net: ``concat[F_M, F_L]`` → Conv 1x1 → ``width``, ReLU.
* Extraction Net: ``blocks`` multiscale residual blocks, each parallel Conv 3x3/5x5/7x7 →
  ``feat`` each, ReLU, concat → Conv 1x1 → ``width``, plus the block input.
* Head: Conv 3x3 → ``bands``: the residual ``R``. Output
  ``L_tgt = L_ref + (M_tgt - M_ref) + R`` (a global residual connection: the network learns
  the correction to the "fine plus coarse change" guess).

All convolutions use zero 'same' padding and a bias. With the defaults and one band the net
has 405,025 parameters, about 404 kMAC per pixel, and a receptive-field radius of 13 px.

The module takes raw values (kelvin, reflectance...) and normalises them itself with the
per-band ``mean``/``std`` buffers, which are part of its weights: a saved net carries the
normalisation of its training data. NaN inputs are replaced by the band mean after
normalisation (so the net stays finite next to gaps; outputs at NaN inputs are masked by the
engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["MultiscaleFusionNet", "build_xfusion_v1"]

_INITS = ("zero-head", "default")


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _MultiscaleBlock(nn.Module):
    def __init__(self, width: int, feat: int, kernels: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_conv(width, feat, k) for k in kernels)
        self.fuse = _conv(feat * len(kernels), width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(b(x)) for b in self.branches], dim=1)
        return x + self.fuse(y)


class MultiscaleFusionNet(nn.Module):
    """STTFN's multiscale fusion CNN ``f(L_ref, M_ref, M_tgt) -> L_tgt`` ("xfusion-v1").

    Parameters
    ----------
    bands : int
        Bands per image. The input has ``3 * bands`` channels, ordered
        ``[L_ref (bands), M_ref (bands), M_tgt (bands)]``; the output has ``bands``.
    sr_width, feat, width : int
        Widths: first Super-Resolution conv, feature maps (``F_M``, ``F_L``, block branches),
        Integration/Extraction width.
    blocks : int
        Multiscale residual blocks in the Extraction Net.
    sr_kernels : (int, int, int)
        Kernel sizes of the Super-Resolution Net (SRCNN's 9-1-5 by default).
    fine_kernels : sequence of int
        Kernel sizes of the convolutions of the fine branch.
    block_kernels : sequence of int
        Kernel sizes of the parallel convolutions of each multiscale block.
    head_kernel : int
        Kernel size of the head.
    init : {"zero-head", "default"}
        ``"zero-head"`` starts the head at zero, so the untrained net returns exactly
        ``L_ref + M_tgt - M_ref``; ``"default"`` keeps PyTorch's initialisation.
    mean, std : sequence of float, optional
        Per-band normalisation (default 0 and 1); stored as buffers, hence in the weights.

    Attributes
    ----------
    halo : int
        Receptive-field radius in pixels (what the engine reads around every tile).
    out_channels : int
        ``bands``.
    scale : int
        1 (same grid in and out).
    """

    scale = 1

    def __init__(
        self,
        bands: int = 1,
        *,
        sr_width: int = 64,
        feat: int = 32,
        width: int = 64,
        blocks: int = 2,
        sr_kernels: Sequence[int] = (9, 1, 5),
        fine_kernels: Sequence[int] = (3, 3),
        block_kernels: Sequence[int] = (3, 5, 7),
        head_kernel: int = 3,
        init: str = "zero-head",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {list(_INITS)}, found {init!r}")
        sr_kernels = tuple(int(k) for k in sr_kernels)
        if len(sr_kernels) != 3:
            raise ValueError(f"sr_kernels must hold 3 kernel sizes, found {sr_kernels!r}")
        for k in (*sr_kernels, *fine_kernels, *block_kernels, head_kernel):
            if int(k) < 1 or int(k) % 2 == 0:
                raise ValueError(f"kernel sizes must be odd and positive, found {k!r}")
        self.bands = int(bands)
        self.out_channels = self.bands
        self.sr = nn.Sequential(
            _conv(2 * bands, sr_width, sr_kernels[0]), nn.ReLU(),
            _conv(sr_width, feat, sr_kernels[1]), nn.ReLU(),
            _conv(feat, feat, sr_kernels[2]), nn.ReLU(),
        )  # fmt: skip
        fine: list[nn.Module] = []
        cin = bands
        for k in fine_kernels:
            fine += [_conv(cin, feat, int(k)), nn.ReLU()]
            cin = feat
        self.fine = nn.Sequential(*fine)
        self.integrate = nn.Sequential(_conv(feat + cin, width, 1), nn.ReLU())
        self.extract = nn.Sequential(
            *[_MultiscaleBlock(width, feat, [int(k) for k in block_kernels]) for _ in range(blocks)]
        )
        self.head = _conv(width, bands, int(head_kernel))
        if init == "zero-head":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        m = torch.zeros(bands) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        s = torch.ones(bands) if std is None else torch.as_tensor(std, dtype=torch.float32)
        if m.shape != (bands,) or s.shape != (bands,):
            raise ValueError(f"mean and std need {bands} values (one per band)")
        self.register_buffer("mean", m.clone().float())
        self.register_buffer("std", s.clone().float())
        r_sr = sum(k // 2 for k in sr_kernels)
        r_fine = sum(int(k) // 2 for k in fine_kernels)
        r_blocks = blocks * (max(int(k) for k in block_kernels) // 2 if block_kernels else 0)
        self.halo = max(r_sr, r_fine) + r_blocks + int(head_kernel) // 2

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-band normalisation buffers."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict ``L_tgt`` (``(N, bands, H, W)``) from ``[L_ref, M_ref, M_tgt]`` (raw units)."""
        b = self.bands
        mean = self.mean.view(1, 1, b, 1, 1).to(x.dtype)
        std = self.std.view(1, 1, b, 1, 1).to(x.dtype)
        n, _, h, w = x.shape
        z = (x.view(n, 3, b, h, w) - mean) / std
        z = torch.where(torch.isfinite(z), z, torch.zeros((), dtype=z.dtype, device=z.device))
        l_ref, m_ref, m_tgt = z[:, 0], z[:, 1], z[:, 2]
        f_m = self.sr(torch.cat([m_ref, m_tgt], dim=1))
        f_l = self.fine(l_ref)
        feats = self.extract(self.integrate(torch.cat([f_m, f_l], dim=1)))
        r = self.head(feats)
        out = l_ref + (m_tgt - m_ref) + r.to(l_ref.dtype)
        return out * std[:, 0] + mean[:, 0]


def build_xfusion_v1(bands: int = 1, **params: Any) -> MultiscaleFusionNet:
    """Build ``"xfusion-v1"`` (see :class:`MultiscaleFusionNet`; unknown keys are an error)."""
    from xfusion.models.registry import get_architecture

    valid = set(get_architecture("xfusion-v1").defaults)
    unknown = sorted(set(params) - valid - {"mean", "std"})
    if unknown:
        raise TypeError(f"unknown xfusion-v1 parameter(s) {unknown}; valid: {sorted(valid)}")
    return MultiscaleFusionNet(bands, **params)
