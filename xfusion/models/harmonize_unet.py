"""Landsat-8 -> Sentinel-2 harmonization U-Net ("AUNet" without attention) and its
uncertainty wrappers (imports torch).

The network of Sambandham et al. (2024): ``depth`` encoder blocks of widths
``width * 2**k`` (two 3x3 convolutions with a shared-slope PReLU each), 2x2 average pooling
between them, a decoder that upsamples (bilinear x2 + 1x1 conv, or a pixel-shuffle stage),
resizes to the skip, concatenates and applies a conv block, and a 1x1 head. No output
activation and no global residual: the input is the bicubic-upsampled Landsat reflectance on
the 10 m grid (6 bands, + the optional pan), the output the 6 Sentinel-2-like bands.

Configurations (``in_channels=7, out_channels=6``): ``depth=5, width=64`` has 28,945,432
parameters and ``depth=6, width=64`` 115,984,412 (the released "100M" model); the default
``depth=3, width=16`` (about 0.1 M) trains on a CPU.

Uncertainty: :class:`Ensemble` (deep ensemble of members: mean and unbiased std across
members) and :class:`MCDropout` (dropout ``p`` after every conv block, active at inference,
``passes`` stochastic passes: mean and std). Both return ``2 * out_channels`` channels:
the means, then the standard deviations.

References
----------
Sambandham V.T., Kirchheim K., Ortmeier F., Mukhopadhaya S., "Deep learning-based
harmonization and super-resolution of Landsat-8 and Sentinel-2 images", ISPRS J. Photogramm.
Remote Sens. 212:274-288 (2024), doi:10.1016/j.isprsjprs.2024.04.026.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CONFIGURATIONS",
    "Ensemble",
    "HarmonizeUNet",
    "MCDropout",
    "ensemble_from_checkpoints",
    "harmonize_ensemble",
    "harmonize_unet",
    "mc_dropout",
    "mc_dropout_from_checkpoint",
    "receptive_field",
]

CONFIGURATIONS: dict[str, dict[str, object]] = {
    "small": {"depth": 3, "width": 16, "upsample": "upsample"},
    "d5-up": {"depth": 5, "width": 64, "upsample": "upsample"},  # 28.9 M parameters
    "d5-shuffle": {"depth": 5, "width": 64, "upsample": "shuffle"},  # 56.5 M
    "d6-up": {"depth": 6, "width": 64, "upsample": "upsample"},  # 116.0 M (released "100M")
    "d6-shuffle": {"depth": 6, "width": 64, "upsample": "shuffle"},  # 226.3 M
}
"""Named configurations: the CPU default and the published ones (7 input channels)."""


class _Block(nn.Module):
    """Conv 3x3 -> PReLU -> Conv 3x3 -> PReLU (-> dropout, active in MC mode only)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.a1 = nn.PReLU()
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.a2 = nn.PReLU()
        self.p = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a2(self.c2(self.a1(self.c1(x))))
        if self.p > 0.0:
            x = F.dropout(x, self.p, training=True)
        return x


class _UpStage(nn.Module):
    def __init__(self, c: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "upsample":
            self.proj = nn.Conv2d(c, c // 2, 1)
        else:
            self.pre = nn.Conv2d(c, 4 * (c // 2), 3, padding=1)
            self.act = nn.PReLU()
            self.post = nn.Conv2d(c // 2, c // 2, 3, padding=1)
        self.block = _Block(c, c // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "upsample":
            x = self.proj(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        else:
            x = self.post(F.pixel_shuffle(self.act(self.pre(x)), 2))
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))  # type: ignore[no-any-return]


def receptive_field(depth: int, upsample: str = "upsample") -> int:
    """Theoretical receptive-field diameter (px) of :class:`HarmonizeUNet`.

    230 px for ``depth=5`` upsample (the paper's figure: 220), 50 px for the small default.
    """
    r, j = 1, 1
    for k in range(depth):
        if k:
            r += j  # 2x2 pooling
            j *= 2
        r += 4 * j  # two 3x3 convolutions
    for _ in range(depth - 1):
        if upsample == "shuffle":
            r += 2 * j  # 3x3 conv before the shuffle
            j //= 2
            r += 2 * j  # 3x3 conv after it
        else:
            r += j  # bilinear x2
            j //= 2
        r += 4 * j
    return r


class HarmonizeUNet(nn.Module):
    """U-Net mapping bicubic-upsampled Landsat bands to Sentinel-2-like bands on one grid.

    Parameters
    ----------
    in_channels : int, default 6
        Input bands (6 Landsat-8 OLI bands, 7 with the pan).
    out_channels : int, default 6
        Output bands (Sentinel-2 B02, B03, B04, B8A, B11, B12).
    depth : int, default 3
        Encoder blocks (5 or 6 in the published models).
    width : int, default 16
        Channels of the first block (64 in the published models); block ``k`` has
        ``width * 2**k``.
    upsample : {"upsample", "shuffle"}, default "upsample"
        Decoder stage: bilinear x2 + 1x1 conv, or 3x3 conv + PReLU + PixelShuffle + 3x3 conv.
    residual : bool, default False
        Add the first ``out_channels`` input channels (the bicubic Landsat bands, in the
        output band order) to the output, with the head initialised at zero: an untrained
        network returns bicubic Landsat and training learns the correction. Not in the paper
        (no global residual there); :func:`xfusion.methods.harmonize.train_harmonizer` uses it
        for its small CPU default, which would otherwise need far longer training to even
        reproduce its input.

    Notes
    -----
    Engine contract: ``scale = 1`` (runs on the output grid after bicubic upsampling),
    ``halo`` = half the theoretical receptive field rounded up to a multiple of
    ``2**(depth-1)``. For the deep configurations use a smaller halo with overlap blending.
    """

    scale = 1

    def __init__(self, in_channels: int = 6, out_channels: int = 6, depth: int = 3,
                 width: int = 16, upsample: str = "upsample", residual: bool = False) -> None:
        super().__init__()
        if residual and in_channels < out_channels:
            raise ValueError(
                f"residual=True needs in_channels >= out_channels, found {in_channels} < "
                f"{out_channels}"
            )
        self.residual = bool(residual)
        if upsample not in ("upsample", "shuffle"):
            raise ValueError(f"upsample must be 'upsample' or 'shuffle', found {upsample!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, found {depth!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.depth, self.width, self.upsample = int(depth), int(width), upsample
        widths = [self.width * 2**k for k in range(self.depth)]
        self.enc = nn.ModuleList(
            _Block(cin, cout) for cin, cout in zip([self.in_channels, *widths[:-1]], widths,
                                                   strict=True)
        )
        self.dec = nn.ModuleList(_UpStage(c, upsample) for c in reversed(widths[1:]))
        self.head = nn.Conv2d(widths[0], self.out_channels, 1)
        if self.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        align = 2 ** (self.depth - 1)
        self.halo = int(math.ceil(receptive_field(self.depth, upsample) / 2 / align) * align)

    def set_dropout(self, p: float) -> None:
        """Dropout probability after every conv block (0 disables; active even in eval mode)."""
        for m in self.modules():
            if isinstance(m, _Block):
                m.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        inp = x
        skips = []
        for k, block in enumerate(self.enc):
            if k:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for stage, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            x = stage(x, skip)
        out = self.head(x)
        if self.residual:
            out = out + inp[:, :self.out_channels]
        return out  # type: ignore[no-any-return]


def harmonize_unet(in_channels: int = 6, out_channels: int = 6, depth: int = 3, width: int = 16,
                   upsample: str = "upsample", residual: bool = False) -> HarmonizeUNet:
    """Builder of :class:`HarmonizeUNet` (registry: ``builder(bands, **params)``)."""
    return HarmonizeUNet(in_channels, out_channels, depth, width, upsample, residual)


def _mean_std(stack: torch.Tensor) -> torch.Tensor:
    mean = stack.mean(0)
    std = stack.std(0, unbiased=True) if stack.shape[0] > 1 else torch.zeros_like(mean)
    return torch.cat([mean, std], dim=1)


class Ensemble(nn.Module):
    """Deep ensemble: per-pixel mean and unbiased (``n - 1``) std across the members.

    Returns ``2 * out_channels`` channels: the member mean, then the member std.
    """

    scale = 1

    def __init__(self, members: Sequence[HarmonizeUNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.out_channels = 2 * members[0].out_channels
        self.halo = max(m.halo for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every member; return ``[mean, std]`` along channels."""
        return _mean_std(torch.stack([m(x) for m in self.members]))


class MCDropout(nn.Module):
    """Monte-Carlo dropout: ``passes`` stochastic passes with dropout ``p`` after every block.

    The model is trained without dropout (as in the paper); dropout is switched on at
    inference only. Returns ``[mean, std]`` along channels. The dropout masks are drawn from
    a generator seeded with ``seed`` at every call, so a given input tile always gives the same
    result (but tiles of different sizes or positions draw different masks).
    """

    scale = 1

    def __init__(self, model: HarmonizeUNet, passes: int = 20, p: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.passes, self.p, self.seed = int(passes), float(p), int(seed)
        self.out_channels = 2 * model.out_channels
        self.halo = model.halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``passes`` stochastic passes; return ``[mean, std]`` along channels."""
        self.model.set_dropout(self.p)
        state = torch.random.get_rng_state()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                outs = torch.stack([self.model(x) for _ in range(self.passes)])
        finally:
            self.model.set_dropout(0.0)
            torch.random.set_rng_state(state)
        return _mean_std(outs)


def harmonize_ensemble(members: int = 4, in_channels: int = 6, out_channels: int = 6,
                       depth: int = 3, width: int = 16, upsample: str = "upsample") -> Ensemble:
    """Builder of an :class:`Ensemble` of ``members`` identical architectures (weights loaded
    afterwards from one file holding ``members.<k>.*``)."""
    return Ensemble([HarmonizeUNet(in_channels, out_channels, depth, width, upsample)
                     for _ in range(members)])


def mc_dropout(passes: int = 20, p: float = 0.1, seed: int = 0, in_channels: int = 6,
               out_channels: int = 6, depth: int = 3, width: int = 16,
               upsample: str = "upsample") -> MCDropout:
    """Builder of :class:`MCDropout` around one :class:`HarmonizeUNet` (weights ``model.*``)."""
    return MCDropout(HarmonizeUNet(in_channels, out_channels, depth, width, upsample), passes,
                     p, seed)


DETAIL_WINDOWS = (3, 7, 15)
"""Box windows of the local-detail terms of the calibrated uncertainty."""


def local_detail(mean: torch.Tensor, window: int = 3) -> torch.Tensor:
    """``|mean - box mean(mean)|`` over ``window x window`` px per channel (edges
    replicated): where the prediction has detail, which is where super-resolution errors
    concentrate."""
    r = window // 2
    pad = F.pad(mean, (r, r, r, r), mode="replicate")
    return (mean - F.avg_pool2d(pad, window, stride=1)).abs()


def calibrated_std(std: torch.Tensor, details: Sequence[torch.Tensor], a: torch.Tensor,
                   cs: Sequence[torch.Tensor], s0: torch.Tensor) -> torch.Tensor:
    """``sqrt((a std)^2 + sum_k (c_k detail_k)^2 + s0^2)`` with per-band parameters (shape
    ``(B,)``)."""
    v = lambda t: t.view(1, -1, 1, 1)
    var = (v(a) * std) ** 2 + v(s0) ** 2
    for d, c in zip(details, cs, strict=True):
        var = var + (v(c) * d) ** 2
    return torch.sqrt(var)


class Calibrated(nn.Module):
    """Recalibrated uncertainty around an :class:`Ensemble` or :class:`MCDropout`: the raw
    spread (epistemic) scaled by ``a``, plus an aleatoric part ``c_k x`` :func:`local_detail`
    of the mean prediction over 3x3, 7x7 and 15x15 windows and a floor ``s0``, per band; fitted on
    the training run's validation strip (Gaussian likelihood, see
    :func:`xfusion.training.harmonize.fit_calibration`). Same output layout ``[mean, std]``;
    the halo grows by 7 px."""

    scale = 1

    def __init__(self, inner: nn.Module, a: Sequence[float], c: Sequence[Sequence[float]],
                 s0: Sequence[float]) -> None:
        super().__init__()
        self.inner = inner
        self.out_channels = int(inner.out_channels)  # type: ignore[arg-type]
        self.halo = int(inner.halo) + max(DETAIL_WINDOWS) // 2  # type: ignore[arg-type]
        self.register_buffer("a", torch.tensor(list(a), dtype=torch.float32))
        self.register_buffer("c", torch.tensor([list(x) for x in c], dtype=torch.float32))
        self.register_buffer("s0", torch.tensor(list(s0), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.inner(x)
        n = o.shape[1] // 2
        mean, std = o[:, :n], o[:, n:]
        details = [local_detail(mean, w) for w in DETAIL_WINDOWS]
        cal = calibrated_std(std, details, self.a, list(self.c), self.s0)  # type: ignore[arg-type]
        return torch.cat([mean, cal], dim=1)


def _calibrate(module: nn.Module, calibration: Any) -> nn.Module:
    if not calibration:
        return module
    cal = dict(calibration)
    return Calibrated(module, cal["a"], cal["c"], cal["s0"])


def ensemble_from_checkpoints(paths: Sequence[str], nets: Sequence[str],
                              sha256s: Sequence[str | None], calibration: Any = None
                              ) -> nn.Module:
    """Build an :class:`Ensemble` from checkpoint members ``(path, net)`` (engine builder),
    wrapped in :class:`Calibrated` when ``calibration`` (``{"a", "c", "s0"}``) is given."""
    from xfusion.models.checkpoint import build_from_checkpoint

    return _calibrate(Ensemble([build_from_checkpoint(p, n, s)  # type: ignore[misc]
                                for p, n, s in zip(paths, nets, sha256s, strict=True)]),
                      calibration)


def mc_dropout_from_checkpoint(path: str, net: str, sha256: str | None, passes: int = 20,
                               p: float = 0.1, seed: int = 0, calibration: Any = None
                               ) -> nn.Module:
    """Build :class:`MCDropout` around a checkpoint member (engine builder), wrapped in
    :class:`Calibrated` when ``calibration`` is given."""
    from xfusion.models.checkpoint import build_from_checkpoint

    model = build_from_checkpoint(path, net, sha256)
    return _calibrate(MCDropout(model, passes=passes, p=p, seed=seed),  # type: ignore[arg-type]
                      calibration)
