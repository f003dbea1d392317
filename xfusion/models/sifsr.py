"""SIF-CNN-SR: the residual U-Net and the scale-invariance-free losses (imports torch).

The network of Ait-Bachir et al. (2025) ("ModelB_2"): a 3-level residual U-Net that maps
``[bicubic-upsampled LST, guide bands]`` (z-scored, on the fine grid) to the fine LST
(z-scored). With ``width=16`` and two input channels it has 282,705 parameters, as the paper's.
Training is self-supervised (no fine LST needed): the output is degraded back to the coarse
grid by the sensor PSF and compared with the observed coarse LST (:func:`reconstruction_loss`),
and its texture is tied to the guide's (:func:`texture_loss`, with a negative gain: LST edges
are anti-correlated with vegetation edges).

References
----------
Ait-Bachir R., Granero-Belinchon C., Michel A., Michel J., Briottet X., Drumetz L., "Land
Surface Temperature Super-Resolution with a Scale-Invariance-Free Neural Approach: Application
to MODIS", IEEE JSTARS (2025), arXiv:2502.01204.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SIFResidualMLP",
    "SIFUNet",
    "conserve_cells",
    "degrade",
    "gaussian_kernel",
    "highpass",
    "huber",
    "receptive_field",
    "reconstruction_loss",
    "sif_loss",
    "sif_unet",
    "sigma_from_mtf",
    "sobel",
    "texture_loss",
]


def _cbr(cin: int, cout: int) -> nn.Sequential:
    """Conv 3x3 (no bias, replicate padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False, padding_mode="replicate"),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Down(nn.Module):
    """AvgPool 2x2 -> x + [CBR, CBR](x) -> CBR(cin -> cout)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.res = nn.Sequential(_cbr(cin, cin), _cbr(cin, cin))
        self.out = _cbr(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        return self.out(x + self.res(x))


class _Up(nn.Module):
    """Bilinear x2, zero-pad to the skip's size, concat, CBR, CBR."""

    def __init__(self, cin: int, cmid: int, cout: int, align_corners: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(_cbr(cin, cmid), _cbr(cmid, cout))
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
        return self.conv(torch.cat([x, skip], dim=1))


def receptive_field(levels: int = 3) -> int:
    """Theoretical receptive-field diameter (fine pixels) of :class:`SIFUNet`.

    Counted layer by layer: a 3x3 convolution adds 2 pixels of the current level (a level-``k``
    pixel spans ``2**k`` fine pixels), a 2x2 pooling one, a bilinear x2 upsampling one of the
    coarser level. 140 px for the paper's 3 levels (the paper quotes 136).
    """
    r, j = 1, 1
    r += 2 * 2 * j  # inbloc: 2 convs
    for _ in range(levels):
        r += j  # pool
        j *= 2
        r += 3 * 2 * j  # residual pair + output CBR
    for _ in range(levels):
        r += j  # bilinear x2 of the coarser level
        j //= 2
        r += 2 * 2 * j
    return r + 2  # output conv


class SIFUNet(nn.Module):
    """Residual U-Net of SIF-CNN-SR ("ModelB_2"), generalised in width.

    Parameters
    ----------
    in_channels : int, default 2
        Input channels: the bicubic-upsampled LST followed by the guide bands (NDVI...).
    width : int, default 16
        Channels of the first level; the levels have ``width, 2 width, 4 width, 4 width``.
    align_corners : bool, default False
        Bilinear upsampling mode of the decoder. The paper uses ``True``, which maps output
        pixels to input positions that depend on the input *size*, so a tile's result would
        depend on the tile size (not translation-equivariant). xfusion defaults to ``False``
        (half-pixel centres), so tiled inference with a halo equals the untiled result; the
        parameter count is unchanged. Set ``True`` to reproduce the paper's layer exactly.
    global_skip : bool, default False
        Add the bicubic LST (input channel 0) to the output, so the network predicts only the
        fine-scale correction (the output layer starts at zero: an untrained network returns
        the bicubic input). Not in the paper (which has no global skip); no parameters.

    Notes
    -----
    The engine contract: ``scale = 1`` (the model runs on the fine grid, after bicubic
    upsampling), ``out_channels = 1`` and ``halo`` = half the receptive field rounded up to a
    multiple of 8 (72 px), so halo-cropped tiles equal the untiled result. Inputs of any size
    work; the pooling grid phase matters, so tiles should start at multiples of 8.
    """

    scale = 1
    out_channels = 1
    levels = 3

    def __init__(self, in_channels: int = 2, width: int = 16, align_corners: bool = False,
                 global_skip: bool = False) -> None:
        super().__init__()
        w = int(width)
        self.in_channels = int(in_channels)
        self.width = w
        self.align_corners = bool(align_corners)
        self.global_skip = bool(global_skip)
        self.inbloc = nn.Sequential(_cbr(self.in_channels, w), _cbr(w, w))
        self.down1 = _Down(w, 2 * w)
        self.down2 = _Down(2 * w, 4 * w)
        self.down3 = _Down(4 * w, 4 * w)
        self.up1 = _Up(8 * w, 4 * w, 2 * w, self.align_corners)
        self.up2 = _Up(4 * w, 2 * w, w, self.align_corners)
        self.up3 = _Up(2 * w, w, w, self.align_corners)
        self.outc = nn.Conv2d(w, 1, 3, padding=1, padding_mode="replicate")
        if self.global_skip:  # start from the bicubic input: training only adds detail
            nn.init.zeros_(self.outc.weight)
            nn.init.zeros_(self.outc.bias)
        rf = receptive_field(self.levels)
        align = 2**self.levels
        self.halo = int(math.ceil(rf / 2 / align) * align)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` z-scored inputs to ``(N, 1, H, W)`` z-scored LST."""
        s0 = self.inbloc(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        b = self.down3(s2)
        y = self.up1(b, s2)
        y = self.up2(y, s1)
        y = self.up3(y, s0)
        out = self.outc(y)
        if self.global_skip:
            out = out + x[:, :1]
        return out  # type: ignore[no-any-return]


class SIFResidualMLP(nn.Module):
    """Per-pixel correction network of xfusion's default SIF variant (``variant="residual"``).

    Input channels (z-scored with the LST statistics, guide bands with their own):
    ``[bicubic LST, DMS LST - bicubic LST, guide bands...]``; output: the bicubic LST (channel
    0) plus ``mix`` (a learned scalar, started at 0 or 1: from bicubic or from DMS) times
    channel 1 plus a learned correction, computed pixel by pixel (1x1 convolutions, ReLU). Being
    pointwise it has no spatial scale of its own, so weights fitted one scale coarser (the
    coarse LST against its own 4x-aggregated version, see
    :func:`xfusion.training.sifsr.train_sif_sr`) apply unchanged on the fine grid: the
    spatial detail comes from the two classic predictions and the guide. The output layer
    starts at zero (an untrained network returns bicubic or DMS). ``halo = 0``.

    Parameters
    ----------
    in_channels : int
        ``2 + number of guide bands``.
    width : int, default 32
        Hidden channels.
    depth : int, default 4
        Layers (``depth - 1`` hidden ones).
    """

    scale = 1
    out_channels = 1
    halo = 0

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = int(in_channels)
        for _ in range(int(depth) - 1):
            layers += [nn.Conv2d(c, int(width), 1), nn.ReLU()]
            c = int(width)
        layers.append(nn.Conv2d(c, 1, 1))
        self.net = nn.Sequential(*layers)
        self.mix = nn.Parameter(torch.zeros(()))
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        self.in_channels = int(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 1, H, W)`` (z-scored LST)."""
        n, c, h, w = x.shape
        # the 1x1 convolutions as matrix products over the pixels (far faster on CPU)
        z = x.permute(0, 2, 3, 1).reshape(-1, c)
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                z = F.linear(z, layer.weight[:, :, 0, 0], layer.bias)
            else:
                z = layer(z)
        return x[:, :1] + self.mix * x[:, 1:2] + z.reshape(n, h, w, 1).permute(0, 3, 1, 2)


def conserve_cells(y: torch.Tensor, coarse: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Shift each ``s x s`` cell of ``y`` ``(N, 1, s, s)`` so its mean (over ``mask``) equals
    ``coarse`` ``(N, 1, 1, 1)``: the coarse-cell conservation of the DMS residual correction."""
    if mask is None:
        mean = y.mean(dim=(-2, -1), keepdim=True)
    else:
        m = mask.to(y.dtype)
        mean = (y * m).sum(dim=(-2, -1), keepdim=True) / m.sum(dim=(-2, -1),
                                                                keepdim=True).clamp_min(1.0)
    return y - (mean - coarse)


def sif_unet(in_channels: int = 2, width: int = 16, align_corners: bool = False,
             global_skip: bool = False, kind: str = "unet", depth: int = 4
             ) -> nn.Module:
    """Builder of the SIF networks (registry: ``builder(bands, **params)``):
    ``kind="unet"``: :class:`SIFUNet` (the paper's); ``kind="residual-mlp"``:
    :class:`SIFResidualMLP` (xfusion's default variant; ``width``, ``depth``)."""
    if kind == "residual-mlp":
        return SIFResidualMLP(in_channels=in_channels, width=width, depth=depth)
    return SIFUNet(in_channels=in_channels, width=width, align_corners=align_corners,
                   global_skip=global_skip)


# --------------------------------------------------------------------------------------------
# losses


def sigma_from_mtf(mtf: float, scale: int) -> float:
    """Gaussian PSF sigma (fine px) whose MTF equals ``mtf`` at the coarse Nyquist frequency.

    ``exp(-2 pi^2 sigma^2 f^2) = mtf`` at ``f = 1 / (2 scale)`` cycles per fine pixel:
    2.73 px for ``mtf=0.1, scale=4`` and 2.12 px for ``mtf=0.25, scale=4``.
    """
    if not 0.0 < mtf < 1.0:
        raise ValueError(f"mtf must be in (0, 1), found {mtf!r}")
    return math.sqrt(-math.log(mtf) / 2.0) / (math.pi / (2.0 * scale))


def gaussian_kernel(sigma: float, size: int = 9) -> torch.Tensor:
    """Normalised ``(size, size)`` Gaussian kernel (float32)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    k = torch.outer(g, g)
    return (k / k.sum()).float()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = kernel.to(x)[None, None].expand(c, 1, *kernel.shape)
    p = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k, groups=c)


def degrade(x: torch.Tensor, *, scale: int, sigma: float, size: int = 9) -> torch.Tensor:
    """Fine -> coarse sensor model: Gaussian PSF (reflect padding) then bicubic ``1/scale``.

    Affine-equivariant (kernel and bicubic weights sum to 1), so it may be applied to z-scored
    values directly.
    """
    y = _blur(x, gaussian_kernel(sigma, size))
    return F.interpolate(y, scale_factor=1.0 / scale, mode="bicubic", align_corners=False)


def huber(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
          delta: float = 1.0) -> torch.Tensor:
    """Mean Huber loss (delta 1), over ``mask`` when given (NaN-free inputs)."""
    loss = F.huber_loss(a, b, reduction="none", delta=delta)
    if mask is None:
        return loss.mean()
    m = mask.to(loss.dtype).expand_as(loss)
    return (loss * m).sum() / m.sum().clamp_min(1.0)


def reconstruction_loss(sr: torch.Tensor, coarse: torch.Tensor, *, scale: int, sigma: float,
                        crop: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale-invariance-free reconstruction term: Huber(degrade(SR), observed coarse).

    ``sr`` is ``(N, 1, H, W)`` on the fine grid, ``coarse`` ``(N, 1, H/scale, W/scale)``; both
    z-scored alike. ``crop`` coarse pixels are dropped on each side (PSF border effects).
    ``mask`` (coarse grid, bool) excludes unobserved coarse pixels.
    """
    d = degrade(sr, scale=scale, sigma=sigma)
    sl = (..., slice(crop, d.shape[-2] - crop), slice(crop, d.shape[-1] - crop))
    return huber(d[sl], coarse[sl], None if mask is None else mask[sl])


_SOBEL = torch.tensor(
    [
        [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],  # vertical gradient
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],  # horizontal gradient
        [[0.0, 1.0, 2.0], [-1.0, 0.0, 1.0], [-2.0, -1.0, 0.0]],  # diagonal
        [[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]],  # anti-diagonal
    ]
)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Four fixed 3x3 gradient filters (vertical, horizontal, two diagonal Sobels), zero 'same'
    padding: ``(N, 1, H, W) -> (N, 4, H, W)``."""
    return F.conv2d(x, _SOBEL.to(x)[:, None], padding=1)


def highpass(x: torch.Tensor, *, sigma: float, size: int = 9) -> torch.Tensor:
    """``x - PSF_blur(x)`` (reflect padding): the SIF-CNN-SR2 texture operator."""
    return x - _blur(x, gaussian_kernel(sigma, size))


def texture_loss(sr: torch.Tensor, guide: torch.Tensor, *, gamma: float, kind: str = "sobel",
                 sigma: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Texture term Huber(G(SR), gamma G(guide)) with G = 4 Sobels or a high-pass.

    Parameters
    ----------
    sr, guide : torch.Tensor
        ``(N, 1, H, W)`` z-scored SR output and guide band (NDVI).
    gamma : float
        Gain; negative because LST edges oppose vegetation edges (-0.5 / -0.25 in the paper).
    kind : {"sobel", "highpass"}
        SIF-CNN-SR1 or SIF-CNN-SR2.
    sigma : float, optional
        High-pass PSF sigma (fine px), needed for ``"highpass"``.
    mask : torch.Tensor, optional
        Fine-grid bool mask of pixels to count.
    """
    if kind == "sobel":
        return huber(sobel(sr), gamma * sobel(guide), mask)
    if sigma is None:
        raise ValueError("texture_loss(kind='highpass') needs sigma")
    return huber(highpass(sr, sigma=sigma), gamma * highpass(guide, sigma=sigma), mask)


def sif_loss(sr: torch.Tensor, coarse: torch.Tensor, guide: torch.Tensor, *, scale: int,
             alpha: float, gamma: float, texture: str = "sobel", mtf: float = 0.1,
             mtf_texture: float = 0.25, crop: int = 1,
             coarse_mask: torch.Tensor | None = None,
             fine_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total SIF loss ``alpha L_rec + (1 - alpha) L_tex`` (all inputs z-scored)."""
    sigma = sigma_from_mtf(mtf, scale)
    rec = reconstruction_loss(sr, coarse, scale=scale, sigma=sigma, crop=crop, mask=coarse_mask)
    tex = texture_loss(sr, guide, gamma=gamma, kind=texture,
                       sigma=sigma_from_mtf(mtf_texture, scale), mask=fine_mask)
    return alpha * rec + (1.0 - alpha) * tex
