"""STTFN's multiscale fusion CNN, architectures ``"xfusion-v1"`` and ``"xfusion-v2"`` (imports torch).

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

``"xfusion-v2"`` (an xfusion design, not the paper's) is the same class with three options
switched on, because v1's receptive field (27 px) is smaller than one MODIS pixel on a 30 m
grid (about 33 px), so it cannot average out the coarse sensor's noise and PSF:

* a coarse-context branch (``ctx_width``, ``ctx_box``, ``ctx_dilations``): box means over
  ``ctx_box`` px of the observed ``[L_ref, M_ref]`` (and ``M_tgt - M_ref`` when
  ``target_features``), then a 1x1 conv and dilated 3x3 convs, concatenated into the
  Integration Net;
* a smoothed coarse change ``S = box mean of (M_tgt - M_ref)`` over ``ctx_box`` px (a
  normalised convolution: gaps and the image edge are left out of the means) in the global
  residual, ``guess="smooth-change"``: ``L_tgt = L_ref + S + R``, or ``guess="gain"``: the
  head gives a per-pixel gain ``g`` and offset ``o``, ``L_tgt = L_ref + (1 + g) S + o``;
* ``target_features=False``: the features (hence ``g``, ``o``) see the reference pair only,
  so the prediction is exactly affine in the target coarse image, the way the temporal-mix
  training interpolates between the reference dates.

v2 defaults: half v1's widths, ``ctx_box=65`` (about two MODIS pixels), dilations 8, 16, 32,
``guess="gain"``, ``target_features=False``: 109,426 parameters, about 110 kMAC per pixel,
a receptive-field radius of 95 px. Untrained (zero head) it returns ``L_ref + S``.
Measured (``benchmarks/bench_sttfn.py``) it is more accurate than v1 on synthetic LST and on
Kranj; with ``sttfn(combine="time")`` it is the configuration that beats STARFM by the widest
margin on synthetic LST (mean RMSE 0.75 of STARFM's over six seeds). Per-triplet training
(with the default ``target_offset``) no longer diverges on those scenes, but the trained net
is there no better than its untrained guess ``L_ref + S``; on Kranj training helps. With
``offset=False`` (the correction is ``g S`` only, so it vanishes where the coarse image does not
change) it is the net of ``sttfn(variant="xfusion")``, the default; ``variant="paper"`` uses
``"xfusion-v1"``, the spec's reconstruction.

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

__all__ = ["MultiscaleFusionNet", "build_xfusion_v1", "build_xfusion_v2"]

_INITS = ("zero-head", "default")
_GUESSES = ("change", "smooth-change", "gain")


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sum over a ``k x k`` box around every pixel (stride 1, zeros outside), separably."""
    if k == 1:
        return x
    import torch.nn.functional as F

    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=True)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, k // 2), count_include_pad=True)


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
    """STTFN's multiscale fusion CNN ``f(L_ref, M_ref, M_tgt) -> L_tgt`` (v1 and v2).

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
    ctx_width : int
        Channels of the coarse-context branch (0: none, as in v1).
    ctx_box : int
        Odd width in pixels of the box means feeding the context branch and giving the
        smoothed coarse change (1: no smoothing).
    ctx_dilations : sequence of int
        Dilations of the context branch's 3x3 convolutions (each adds its value to the
        receptive radius).
    guess : {"change", "smooth-change", "gain"}
        Global residual: ``L_ref + (M_tgt - M_ref) + R`` (v1), ``L_ref + S + R`` or
        ``L_ref + (1 + g) S + o`` with ``S`` the smoothed coarse change.
    target_features : bool
        Whether the learned features see ``M_tgt`` (v1: yes); without, ``M_tgt`` enters only
        through ``S``.
    offset : bool
        With ``guess="gain"``, whether the head also gives an offset ``o`` (default); without
        it the learned correction is ``g S``, proportional to the smoothed coarse change, so
        it vanishes where the coarse image does not change (a date close to the reference).
    init : {"zero-head", "default"}
        ``"zero-head"`` starts the head at zero, so the untrained net returns exactly
        its global residual guess (``L_ref + M_tgt - M_ref`` for v1); ``"default"`` keeps PyTorch's initialisation.
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
        ctx_width: int = 0,
        ctx_box: int = 1,
        ctx_dilations: Sequence[int] = (),
        guess: str = "change",
        target_features: bool = True,
        offset: bool = True,
        init: str = "zero-head",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {list(_INITS)}, found {init!r}")
        if guess not in _GUESSES:
            raise ValueError(f"guess must be one of {list(_GUESSES)}, found {guess!r}")
        ctx_dilations = tuple(int(d) for d in ctx_dilations)
        if int(ctx_width) < 0 or int(ctx_box) < 1 or int(ctx_box) % 2 == 0:
            raise ValueError(
                f"ctx_width must be >= 0 and ctx_box odd and positive, found "
                f"ctx_width={ctx_width!r}, ctx_box={ctx_box!r}"
            )
        if any(d < 1 for d in ctx_dilations) or (ctx_dilations and not ctx_width):
            raise ValueError(
                f"ctx_dilations must be positive and need ctx_width > 0, found "
                f"ctx_dilations={ctx_dilations!r}, ctx_width={ctx_width!r}"
            )
        sr_kernels = tuple(int(k) for k in sr_kernels)
        if len(sr_kernels) != 3:
            raise ValueError(f"sr_kernels must hold 3 kernel sizes, found {sr_kernels!r}")
        for k in (*sr_kernels, *fine_kernels, *block_kernels, head_kernel):
            if int(k) < 1 or int(k) % 2 == 0:
                raise ValueError(f"kernel sizes must be odd and positive, found {k!r}")
        self.bands = int(bands)
        self.out_channels = self.bands
        self.target_features = bool(target_features)
        n_sr = 2 if self.target_features else 1
        self.sr = nn.Sequential(
            _conv(n_sr * bands, sr_width, sr_kernels[0]), nn.ReLU(),
            _conv(sr_width, feat, sr_kernels[1]), nn.ReLU(),
            _conv(feat, feat, sr_kernels[2]), nn.ReLU(),
        )  # fmt: skip
        fine: list[nn.Module] = []
        cin = bands
        for k in fine_kernels:
            fine += [_conv(cin, feat, int(k)), nn.ReLU()]
            cin = feat
        self.fine = nn.Sequential(*fine)
        self.box = int(ctx_box)
        self.guess = guess
        self.ctx: nn.Sequential | None = None
        if ctx_width:
            n_ctx = 3 if self.target_features else 2
            ctx: list[nn.Module] = [_conv(n_ctx * bands, ctx_width, 1), nn.ReLU()]
            for d in ctx_dilations:
                ctx += [nn.Conv2d(ctx_width, ctx_width, 3, padding=d, dilation=d), nn.ReLU()]
            self.ctx = nn.Sequential(*ctx)
        self.integrate = nn.Sequential(_conv(feat + cin + int(ctx_width), width, 1), nn.ReLU())
        self.extract = nn.Sequential(
            *[_MultiscaleBlock(width, feat, [int(k) for k in block_kernels]) for _ in range(blocks)]
        )
        self.offset = bool(offset)
        n_head = 2 if guess == "gain" and self.offset else 1
        self.head = _conv(width, n_head * bands, int(head_kernel))
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
        r_ctx = (self.box // 2 + sum(ctx_dilations)) if ctx_width else 0
        r_guess = self.box // 2 if guess != "change" else 0
        self.halo = max(max(r_sr, r_fine, r_ctx) + r_blocks + int(head_kernel) // 2, r_guess)

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
        finite = torch.isfinite(z)
        z = torch.where(finite, z, torch.zeros((), dtype=z.dtype, device=z.device))
        l_ref, m_ref, m_tgt = z[:, 0], z[:, 1], z[:, 2]
        change = m_tgt - m_ref
        smooth = None
        if self.ctx is not None or self.guess != "change":
            # box means over the observed pixels only (a normalised convolution): gaps and
            # the image edge do not pull the coarse change towards zero
            ok = finite.to(z.dtype)
            ok_m = ok[:, 1] * ok[:, 2]
            stack = torch.cat([l_ref * ok[:, 0], m_ref * ok[:, 1], change * ok_m,
                               ok[:, 0], ok[:, 1], ok_m], dim=1)
            sm = _box(stack, self.box)
            smooth = sm[:, :3 * b] / sm[:, 3 * b:].clamp_min(1e-6)
        f_m = self.sr(torch.cat([m_ref, m_tgt], dim=1) if self.target_features else m_ref)
        f_l = self.fine(l_ref)
        parts = [f_m, f_l]
        if self.ctx is not None and smooth is not None:
            parts.append(self.ctx(smooth if self.target_features else smooth[:, :2 * b]))
        feats = self.extract(self.integrate(torch.cat(parts, dim=1)))
        r = self.head(feats).to(l_ref.dtype)
        if self.guess != "change" and smooth is not None:
            change = smooth[:, 2 * b:3 * b]
        if self.guess == "gain":
            # a per-pixel gain and offset on the smoothed coarse change
            out = l_ref + (1.0 + r[:, :b]) * change
            if self.offset:
                out = out + r[:, b:]
        else:
            out = l_ref + change + r
        return out * std[:, 0] + mean[:, 0]


def _build(name: str, bands: int, params: dict[str, Any]) -> MultiscaleFusionNet:
    from xfusion.models.registry import get_architecture

    defaults = dict(get_architecture(name).defaults)
    unknown = sorted(set(params) - set(defaults) - {"mean", "std"})
    if unknown:
        raise TypeError(f"unknown {name} parameter(s) {unknown}; valid: {sorted(defaults)}")
    defaults.update(params)
    return MultiscaleFusionNet(bands, **defaults)


def build_xfusion_v1(bands: int = 1, **params: Any) -> MultiscaleFusionNet:
    """Build ``"xfusion-v1"`` (see :class:`MultiscaleFusionNet`; unknown keys are an error)."""
    return _build("xfusion-v1", bands, params)


def build_xfusion_v2(bands: int = 1, **params: Any) -> MultiscaleFusionNet:
    """Build ``"xfusion-v2"`` (see :class:`MultiscaleFusionNet`; unknown keys are an error)."""
    return _build("xfusion-v2", bands, params)
