"""Per-chunk work: a haloed numpy block → tiles → batches → model → stitched, cropped block.

Works on numpy arrays (and torch tensors inside); never sees xarray or dask.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from xfusion.engine.device import autocast_context, resolve_device
from xfusion.engine.model import ModelSpec, get_model
from xfusion.engine.tiling import Tile, tiles_2d
from xfusion.errors import InvalidParameterError

if TYPE_CHECKING:
    from xfusion.config import EngineConfig

__all__ = ["batch_size_for", "blend_weights", "run_model_block"]

_MIN_CHANNELS_FOR_MEMORY = 64  # a conv net's hidden width dominates activation memory


def batch_size_for(read_shape: tuple[int, int], channels: int, out_channels: int, scale: int,
                   config: EngineConfig) -> int:
    """Tiles per model call so one batch of activations stays within ``memory_budget``."""
    if config.batch_size is not None:
        return config.batch_size
    width = max(channels, out_channels * scale * scale, _MIN_CHANNELS_FOR_MEMORY)
    per_tile = read_shape[0] * read_shape[1] * width * 4 * 4  # float32, ~4 live activations
    return max(1, config.memory_budget // max(per_tile, 1))


def _ramp(n: int, lead: int, trail: int, kind: str) -> np.ndarray:
    w = np.ones(n, dtype=np.float64)
    for length, sl, rev in ((lead, slice(0, lead), False), (trail, slice(n - trail, n), True)):
        if length <= 0:
            continue
        t = (np.arange(length) + 0.5) / length
        r = t if kind == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)
        w[sl] = r[::-1] if rev else r
    return w


def blend_weights(tiles: list[Tile], scale: int, kind: str) -> list[np.ndarray]:
    """Separable ramp weights (output resolution) for overlapping tiles of one block."""
    def overlaps(spans: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[int, int]]:
        uniq = sorted(set(spans))
        res = {}
        for i, (s, e) in enumerate(uniq):
            lead = uniq[i - 1][1] - s if i > 0 else 0
            trail = e - uniq[i + 1][0] if i + 1 < len(uniq) else 0
            res[(s, e)] = (max(lead, 0) * scale, max(trail, 0) * scale)
        return res

    rows = overlaps([(t.core[0].start, t.core[0].stop) for t in tiles])
    cols = overlaps([(t.core[1].start, t.core[1].stop) for t in tiles])
    out = []
    for t in tiles:
        r = (t.core[0].start, t.core[0].stop)
        c = (t.core[1].start, t.core[1].stop)
        wr = _ramp((r[1] - r[0]) * scale, *rows[r], kind)
        wc = _ramp((c[1] - c[0]) * scale, *cols[c], kind)
        out.append(np.outer(wr, wc))
    return out


def _check_output(y: Any, n: int, out_channels: int, shape: tuple[int, int], scale: int,
                  name: str) -> None:
    expected = (n, out_channels, shape[0] * scale, shape[1] * scale)
    if tuple(y.shape) != expected:
        raise InvalidParameterError(
            f"Model {name!r} returned shape {tuple(y.shape)} for an input tile of shape "
            f"{(n, '...', *shape)}; the engine expected {expected} (out_channels={out_channels}, "
            f"scale={scale}). Fix the model's declared out_channels/scale, or make it keep the "
            "spatial size (padding='same' convolutions)."
        )


def run_model_block(
    x: np.ndarray,
    model_ref: ModelSpec | Any,
    *,
    halo_sides: tuple[int, int, int, int],
    halo: int,
    scale: int,
    out_channels: int,
    config: EngineConfig,
    name: str = "model",
) -> np.ndarray:
    """Run a model over one haloed block of shape ``(B, C, H, W)``.

    Returns the block interior at output resolution, ``(B, out_channels, h*scale, w*scale)``,
    float32, NaN wherever any input channel is NaN at the pixel (nearest-upsampled for
    ``scale > 1``).
    """
    import torch

    dev = resolve_device(config.device)
    if isinstance(model_ref, ModelSpec):
        model = get_model(model_ref, dev)
    else:  # an in-memory module shipped as one graph node
        model = model_ref.to(dev).eval()

    nb, nc, nh, nw = x.shape
    top, bottom, left, right = halo_sides
    ih, iw = nh - top - bottom, nw - left - right
    finite = np.isfinite(x)
    valid = finite.all(axis=1)
    xin = np.where(finite, x, np.float32(config.nan_fill)).astype(np.float32, copy=False)

    blending = config.blend != "none"
    # With blending, the tiles cover the interior extended by up to `overlap` pixels into the
    # chunk's halo (map_model gives chunks halo + overlap of context), so pixels at a chunk
    # border lie inside a tile with `overlap` + `halo` of context instead of at a tile's edge:
    # chunk borders then show no seam, like tile borders. The extension is cropped below.
    ext = tuple(min(config.overlap, h) if blending else 0 for h in halo_sides)
    ih, iw = ih + ext[0] + ext[1], iw + ext[2] + ext[3]
    tiles = tiles_2d((ih, iw), tuple(h - e for h, e in zip(halo_sides, ext, strict=True)),
                     tile=config.tile, halo=halo, overlap=config.overlap)
    out = np.zeros((nb, out_channels, ih * scale, iw * scale), dtype=np.float32)
    if blending:
        acc = np.zeros((nb, out_channels, ih * scale, iw * scale), dtype=np.float64)
        wsum = np.zeros((ih * scale, iw * scale), dtype=np.float64)
        weights = blend_weights(tiles, scale, config.blend)
        for t, w in zip(tiles, weights, strict=True):
            wsum[t.core[0].start * scale:t.core[0].stop * scale,
                 t.core[1].start * scale:t.core[1].stop * scale] += w
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, t in enumerate(tiles):
        groups[(t.read[0].stop - t.read[0].start, t.read[1].stop - t.read[1].start)].append(i)

    with torch.inference_mode(), autocast_context(dev, config.precision):
        for shape, idx in groups.items():
            items = [(b, i) for b in range(nb) for i in idx]
            bs = batch_size_for(shape, nc, out_channels, scale, config)
            for k in range(0, len(items), bs):
                batch = items[k:k + bs]
                arr = np.stack([xin[b, :, tiles[i].read[0], tiles[i].read[1]] for b, i in batch])
                y = model(torch.from_numpy(arr).to(dev, non_blocking=True))
                _check_output(y, len(batch), out_channels, shape, scale, name)
                y = y.float().cpu().numpy()
                for (b, i), yi in zip(batch, y, strict=True):
                    t = tiles[i]
                    r0 = t.offset[0] * scale
                    c0 = t.offset[1] * scale
                    ch = (t.core[0].stop - t.core[0].start) * scale
                    cw = (t.core[1].stop - t.core[1].start) * scale
                    core = yi[:, r0:r0 + ch, c0:c0 + cw]
                    if blending:
                        acc[b, :, t.core[0].start * scale:t.core[0].stop * scale,
                            t.core[1].start * scale:t.core[1].stop * scale] += core * weights[i]
                    else:
                        o0 = (t.owned[0].start - t.core[0].start) * scale
                        o1 = (t.owned[1].start - t.core[1].start) * scale
                        oh = (t.owned[0].stop - t.owned[0].start) * scale
                        ow = (t.owned[1].stop - t.owned[1].start) * scale
                        out[b, :, t.owned[0].start * scale:t.owned[0].stop * scale,
                            t.owned[1].start * scale:t.owned[1].stop * scale] = (
                            core[:, o0:o0 + oh, o1:o1 + ow]
                        )
    if blending:
        out[:] = acc / wsum
    if any(ext):
        out = np.ascontiguousarray(out[:, :, ext[0] * scale:(ih - ext[1]) * scale,
                                       ext[2] * scale:(iw - ext[3]) * scale])
    if config.nan_policy == "keep":
        return out
    interior = valid[:, top:nh - bottom, left:nw - right]
    if scale > 1:
        interior = interior.repeat(scale, axis=1).repeat(scale, axis=2)
    out[np.broadcast_to(~interior[:, None], out.shape)] = np.nan
    return out
