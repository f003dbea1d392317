"""Inference of sif-sr's default variant (``variant="residual"``): the per-pixel network on
``[bicubic, DMS - bicubic, guide, guide cell detail]``, then the coarse-cell conservation.
Training: :mod:`xfusion.training.sifsr_residual`."""

from __future__ import annotations

from typing import Any

import dask
import numpy as np

from xfusion.engine.bicubic import bicubic_upsample
from xfusion.training.sifsr_residual import features

__all__ = ["predict_residual"]


def predict_residual(inp: Any, w: Any, *, method: str, engine: Any) -> Any:
    """Lazy prediction ``(T, Hf, Wf)`` of the default variant: the network on
    ``[bicubic, DMS - bicubic, guide]``, then each coarse cell shifted to the observed value."""
    import dask.array as da

    from xfusion.cube.grids import rechunk_nested
    from xfusion.engine.model import ModelSpec
    from xfusion.engine.run import map_model
    from xfusion.methods._dms_kernel import dms_predict

    s = inp.grids.scale
    coarse, guide = rechunk_nested(inp.coarse, inp.guide, s)
    bic = bicubic_upsample(coarse, s, method=f"{method}.bicubic")
    dms = dms_predict(inp, **dict(w.meta.get("dms") or {}))
    nt = bic.shape[0]
    lazy = dask.is_dask_collection(bic) or dask.is_dask_collection(dms)
    if lazy:
        bic = da.asarray(bic)
        dms = da.asarray(dms).rechunk(bic.chunks)
        guide = da.asarray(guide)
        if guide.shape[0] != nt:
            guide = da.broadcast_to(guide, (nt, *guide.shape[1:]))
        guide = guide.rechunk((bic.chunks[0], -1, *bic.chunks[1:]))
        x = da.stack(features(bic, dms, guide, w.mean, w.std, s), axis=1).rechunk({1: -1})
    else:
        guide = np.broadcast_to(guide, (nt, *guide.shape[1:]))
        x = np.stack(features(np.asarray(bic), np.asarray(dms), guide, w.mean, w.std, s),
                     axis=1)
    spec = ModelSpec(name=method, builder="xfusion.models.checkpoint:build_from_checkpoint",
                     kwargs={"path": w.path, "net": "model", "sha256": w.sha256}, halo=0,
                     out_channels=1)
    y = map_model(x, spec, config=engine, method=f"super_resolve.{method}")
    y = y[:, 0] * np.float32(w.std[0]) + np.float32(w.mean[0])
    if not lazy:
        return _conserve_block(np.asarray(y), np.asarray(coarse), scale=s)
    coarse = da.asarray(coarse)
    y = y.rechunk((coarse.chunks[0], *(tuple(k * s for k in ch) for ch in coarse.chunks[1:])))
    return da.map_blocks(_conserve_block, y, coarse, scale=s, dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32),
                         name=f"xfusion.{method}.conserve-{dask.base.tokenize(y, coarse, s)}")


def _conserve_block(y: np.ndarray, c: np.ndarray, *, scale: int) -> np.ndarray:
    """Shift each ``scale x scale`` cell of ``y`` ``(T, h s, w s)`` so that the mean of its
    finite pixels equals ``c`` ``(T, h, w)``; NaN where ``c`` is NaN."""
    s = scale
    t, hf, wf = y.shape
    v = y.astype(np.float64).reshape(t, hf // s, s, wf // s, s)
    fin = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(fin, v, 0.0).sum(axis=(2, 4)) / fin.sum(axis=(2, 4))
    shift = mean - np.asarray(c, dtype=np.float64)
    out = v - shift[:, :, None, :, None]
    out = np.where(np.isfinite(shift)[:, :, None, :, None], out, np.nan)
    return out.reshape(t, hf, wf).astype(np.float32)
