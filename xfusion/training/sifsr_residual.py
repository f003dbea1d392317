"""xfusion's default SIF variant: a learned per-pixel correction of bicubic + DMS.

:func:`train_sif_residual` (called by :func:`xfusion.training.sifsr.train_sif_sr` with
``variant="residual"``, the default) fits :class:`xfusion.models.sifsr.SIFResidualMLP`
self-supervised one scale coarser than the target scale:

1. the observed coarse LST ``T1`` (``Hc x Wc``) is the *target*; aggregating it by ``scale``
   gives a coarser LST ``T2``, and aggregating the guide by ``scale`` gives a guide ``G1`` on
   ``T1``'s grid;
2. the two classic predictions of ``T1`` from ``(T2, G1)`` are computed: bicubic
   interpolation and DMS (regression trees, :func:`xfusion.methods.dms.dms`);
3. the network maps ``[bicubic, DMS - bicubic, G1]`` to ``T1``, pixel by pixel, and every
   ``scale x scale`` cell of its output is shifted so that its mean equals ``T2`` (the
   coarse-cell conservation of the DMS residual correction); the loss is the mean squared
   error against ``T1``;
4. the cells of a strip of the scene (``val_fraction`` of it, along its longer axis) are held
   out: training stops early on their RMSE and keeps the best weights; when the network does
   not beat both conserved classic predictions on them, its correction is switched off (the
   prediction falls back to the better of bicubic and DMS, each with the conservation) and
   the checkpoint says so (``training.fallback``).

At inference the same network runs on ``[bicubic, DMS - bicubic, guide]`` at the fine scale,
followed by the same conservation against the observed coarse LST. The network is
pointwise, so nothing in it depends on the pixel size.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Any

import dask
import numpy as np
import xarray as xr

from xfusion.cube.grids import prepare_guided
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.engine.device import resolve_device
from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.models.registry import SIF_ARCH

__all__ = ["RESIDUAL_DEFAULTS", "cell_detail", "features", "train_sif_residual"]

RESIDUAL_DEFAULTS: dict[str, Any] = {
    "epochs": 40, "steps_per_epoch": 10, "batch_size": 2048, "lr": 3e-3, "patience": 8,
    "width": 32, "depth": 4,
}
"""Defaults of ``variant="residual"``: at most 400 optimizer steps of at most 2048 cells."""

MAX_VAL_CELLS = 16384


def _block_mean(a: np.ndarray, s: int) -> np.ndarray:
    """Mean of ``s x s`` blocks over the last two axes (NaN if any pixel is NaN)."""
    h, w = a.shape[-2] // s, a.shape[-1] // s
    v = a[..., : h * s, : w * s].reshape(*a.shape[:-2], h, s, w, s)
    return v.mean(axis=(-3, -1))


def _cells(a: np.ndarray, s: int) -> np.ndarray:
    """``(T, C, h s, w s)`` -> ``(T, h, w, C, s, s)``."""
    t, c, hf, wf = a.shape
    return a.reshape(t, c, hf // s, s, wf // s, s).transpose(0, 2, 4, 1, 3, 5)


def _cell_detail_block(g: np.ndarray, *, scale: int) -> np.ndarray:
    """``g`` minus the mean of the finite pixels of each ``scale x scale`` cell (last two
    axes); NaN stays NaN and does not spread."""
    s = scale
    *lead, h, w = g.shape
    v = g.reshape(*lead, h // s, s, w // s, s)
    fin = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (np.where(fin, v, 0).sum(axis=(-3, -1), keepdims=True)
             / fin.sum(axis=(-3, -1), keepdims=True))
    return (v - m).astype(g.dtype, copy=False).reshape(g.shape)


def cell_detail(g: Any, scale: int) -> Any:
    """:func:`_cell_detail_block` on a numpy array or (block-wise, cells never cut by the
    chunks) a dask array whose spatial chunks are multiples of ``scale``."""
    if dask.is_dask_collection(g):
        return g.map_blocks(_cell_detail_block, scale=scale, dtype=g.dtype)
    return _cell_detail_block(np.asarray(g), scale=scale)


def features(bic: Any, dms: Any, guide: Any, mean: np.ndarray, std: np.ndarray,
             scale: int) -> list[Any]:
    """Network input channels from raw arrays (``bic``, ``dms``: ``(T, H, W)``, ``guide``:
    ``(T, G, H, W)``): ``bicubic, DMS - bicubic``, then per guide band the band and its
    detail within the cell of ``scale x scale`` px. The LST channels are z-scored with
    ``mean[0], std[0]``, the guide bands with their own."""
    m, sd = np.float32(mean[0]), np.float32(std[0])
    out = [(bic - m) / sd, (dms - bic) / sd]
    for k in range(guide.shape[1]):
        gz = (guide[:, k] - np.float32(mean[1 + k])) / np.float32(std[1 + k])
        out += [gz, cell_detail(gz, scale)]
    return out


def _fit_trees(c: np.ndarray, gmean: np.ndarray, gstd: np.ndarray, *,
               homogeneity: float = 0.8, min_samples: int = 20) -> Any:
    """DMS's global model with its defaults (:func:`xfusion.methods.dms.dms`): 10 bagged
    regression trees (at least 5 cells per leaf) from the guide's cell means to the coarse
    LST, fitted on the observed cells whose guide is most homogeneous (``homogeneity``
    share, by coefficient of variation)."""
    from sklearn.ensemble import BaggingRegressor
    from sklearn.tree import DecisionTreeRegressor

    ok = np.isfinite(c) & np.isfinite(gmean).all(axis=0)
    n_ok = int(ok.sum())
    if n_ok < min_samples:
        raise NotEnoughDataError(
            f"{n_ok} observed coarse pixels with a complete guide, fewer than {min_samples}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.mean(gstd / np.maximum(np.abs(gmean), 1e-6), axis=0)
    use = ok & (cv <= np.quantile(cv[ok], homogeneity))
    if use.sum() < min_samples:
        use = ok
    tree = DecisionTreeRegressor(min_samples_leaf=5, random_state=0)
    model = BaggingRegressor(estimator=tree, n_estimators=10, random_state=0)
    model.fit(gmean.reshape(gmean.shape[0], -1).T[use.ravel()], c[use])
    return model


def _dms_cross_fitted(c: np.ndarray, g: np.ndarray, t2: np.ndarray, g1: np.ndarray,
                      s: int) -> np.ndarray:
    """DMS prediction of the coarse LST ``c`` ``(T, Hc, Wc)`` from its aggregate ``t2`` and
    the aggregated guide ``g1``, with trees fitted as DMS fits them (coarse LST against the
    guide aggregated to the coarse pixels, :func:`_fit_trees`), but cross-fitted: the cells of ``s x s`` coarse pixels form a
    checkerboard, and each half is predicted by trees fitted on the other half. So the
    trees see about as many samples as at the target scale (a DMS fitted on ``t2`` alone
    sees ``s^2`` times fewer) and never the pixels they predict. The tree output is then
    corrected per cell to ``t2`` (radiance-consistent power mean, as DMS)."""
    nt, hc, wc = c.shape
    h2, w2 = t2.shape[-2:]
    h1, w1 = h2 * s, w2 * s
    ng = g.shape[1]
    cell = (np.arange(hc)[:, None] // s + np.arange(wc)[None, :] // s) % 2
    cell1 = cell[:h1, :w1]
    out = np.empty((nt, h1, w1), dtype=np.float64)
    for t in range(nt):
        gt = np.asarray(g[t if g.shape[0] == nt else 0], dtype=np.float64)
        v = gt.reshape(ng, hc, s, wc, s)
        gmean, gstd = v.mean(axis=(2, 4)), v.std(axis=(2, 4))  # the guide per coarse px
        xs = np.asarray(g1[t], dtype=np.float64).reshape(ng, -1).T  # level-1 pixels
        pred = np.full(h1 * w1, np.nan)
        ok = np.isfinite(xs).all(axis=1)
        for fold in (0, 1):
            model = _fit_trees(np.where(cell == fold, np.nan, c[t]), gmean, gstd)
            sel = ok & (cell1.ravel() == fold)
            if sel.any():
                pred[sel] = model.predict(xs[sel])
        pred = pred.reshape(h1, w1)
        v = pred.reshape(h2, s, w2, s)
        with np.errstate(invalid="ignore"):
            agg4 = np.nanmean(v**4, axis=(1, 3))
            out4 = v**4 + (np.asarray(t2[t], dtype=np.float64) ** 4 - agg4)[:, None, :, None]
            out[t] = (np.sign(out4) * np.abs(out4) ** 0.25).reshape(h1, w1)
    return out.astype(np.float32)


def train_sif_residual(
    coarse: xr.DataArray,
    *,
    guide: Any,
    out: str | os.PathLike[str],
    scale: int | None,
    method: str,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int | None = None,
    width: int | None = None,
    depth: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    time_limit: float | None = None,
    verbose: bool | None = None,
) -> str:
    """Train the default SIF variant (see the module docstring); returns the checkpoint path.

    Reads the data (training needs it): the coarse LST and the guide are computed once.
    """
    import torch

    from xfusion._progress import Progress, emit
    from xfusion.models.sifsr import SIFResidualMLP, conserve_cells
    from xfusion.training import save_checkpoint

    d = RESIDUAL_DEFAULTS
    epochs = int(d["epochs"] if epochs is None else epochs)
    steps_per_epoch = int(d["steps_per_epoch"] if steps_per_epoch is None else steps_per_epoch)
    batch_size = int(d["batch_size"] if batch_size is None else batch_size)
    lr = float(d["lr"] if lr is None else lr)
    patience = d["patience"] if patience is None else patience
    width = int(d["width"] if width is None else width)
    depth = int(os.environ.get("XSIF_DEPTH", d["depth"]) if depth is None else depth)
    for key, val in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch),
                     ("batch_size", batch_size), ("width", width), ("depth", depth)):
        if val < 1:
            raise InvalidParameterError(f"{key}={val!r} must be a positive integer.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InvalidParameterError(f"val_fraction={val_fraction!r} must be in [0, 1).")

    inp = prepare_guided(coarse, guide, scale, need_guide=True)
    s = inp.grids.scale
    c_arr, g_arr = dask.compute(inp.coarse, inp.guide)
    c = np.asarray(c_arr, dtype=np.float32)  # (T, Hc, Wc)
    g = np.asarray(g_arr, dtype=np.float32)  # (T or 1, G, Hf, Wf)
    nt, hc, wc = c.shape
    ng = g.shape[1]
    h2, w2 = hc // s, wc // s
    if h2 < 2 or w2 < 2:
        raise NotEnoughDataError(
            f"The coarse input {coarse.name!r} ({hc} x {wc} px) is too small to train "
            f"sif-sr's default variant at scale {s}: it learns on the coarse image aggregated "
            f"{s}x once more, which needs at least {2 * s} x {2 * s} coarse px. Use a larger "
            "scene, weights= from a larger one, or method='bicubic'."
        )
    h1, w1 = h2 * s, w2 * s
    t1 = c[:, :h1, :w1]
    t2 = _block_mean(t1, s)  # (T, h2, w2)
    g1 = _block_mean(g, s)[..., :h1, :w1]  # (T|1, G, h1, w1)
    g1 = np.broadcast_to(g1, (nt, *g1.shape[1:]))
    fin_t1 = np.isfinite(t1)
    if not fin_t1.any():
        raise NotEnoughDataError(
            f"The coarse input {coarse.name!r} has no observed pixel; nothing to train on.")
    mean = np.concatenate([[np.nanmean(t1, dtype=np.float64)],
                           [np.nanmean(g[:, k], dtype=np.float64) for k in range(ng)]])
    std = np.concatenate([[np.nanstd(t1, dtype=np.float64)],
                          [np.nanstd(g[:, k], dtype=np.float64) for k in range(ng)]])
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)

    bic1 = np.asarray(bicubic_upsample(t2, s, method="train_sif_sr.bicubic"))
    try:
        dms1 = _dms_cross_fitted(c, g, t2, g1, s)
    except NotEnoughDataError as err:
        raise NotEnoughDataError(
            f"sif-sr's default variant fits DMS on the coarse input {coarse.name!r} aggregated "
            f"{s}x once more ({h2} x {w2} px), and that failed: {err} Use a larger scene, "
            "variant='paper', or method='bicubic'."
        ) from None
    x = np.stack(features(bic1, dms1, g1, mean, std, s), axis=1).astype(np.float32)
    y = ((t1 - mean[0]) / std[0]).astype(np.float32)[:, None]
    z = ((t2 - mean[0]) / std[0]).astype(np.float32)
    xc = _cells(x, s).reshape(-1, x.shape[1], s, s)
    yc = _cells(y, s).reshape(-1, 1, s, s)
    zc = z.reshape(-1, 1, 1, 1)
    ok = (np.isfinite(xc).all(axis=(1, 2, 3)) & np.isfinite(yc).all(axis=(1, 2, 3))
          & np.isfinite(zc[:, 0, 0, 0]))
    rows = np.broadcast_to(np.arange(h2)[None, :, None], (nt, h2, w2)).ravel()
    cols = np.broadcast_to(np.arange(w2)[None, None, :], (nt, h2, w2)).ravel()
    along, n_along = (rows, h2) if h2 >= w2 else (cols, w2)
    cut = n_along - max(1, round(val_fraction * n_along)) if val_fraction > 0 else n_along
    tr_idx = np.flatnonzero(ok & (along < cut))
    va_idx = np.flatnonzero(ok & (along >= cut))
    if tr_idx.size < 4 or (val_fraction > 0 and va_idx.size < 1):
        raise NotEnoughDataError(
            f"Too few observed cells in the coarse input {coarse.name!r} to train sif-sr's "
            f"default variant ({tr_idx.size} for training, {va_idx.size} for validation, "
            f"cells of {s} x {s} coarse px). Use a larger or less cloudy scene, or "
            "val_fraction=0."
        )
    rng = np.random.default_rng(seed)
    if va_idx.size > MAX_VAL_CELLS:
        va_idx = np.sort(rng.choice(va_idx, MAX_VAL_CELLS, replace=False))
    tt = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in
          (("x", xc), ("y", yc), ("z", zc))}

    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = SIFResidualMLP(in_channels=2 + 2 * ng, width=width, depth=depth).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))

    def batch(idx: Any) -> tuple[Any, ...]:
        i = torch.as_tensor(idx)
        return tuple(tt[k][i].to(dev) for k in ("x", "y", "z"))

    def mse(xb: Any, yb: Any, zb: Any) -> Any:
        return torch.mean((conserve_cells(model(xb), zb) - yb) ** 2)

    def evaluate(idx: np.ndarray) -> tuple[float, float, float]:
        """(network, conserved bicubic, conserved DMS) MSE on cells ``idx`` (z-units)."""
        model.eval()
        tot = bic = dms = 0.0
        with torch.no_grad():
            for k in range(0, idx.size, 8192):
                xb, yb, zb = batch(idx[k:k + 8192])
                tot += float(torch.sum((conserve_cells(model(xb), zb) - yb) ** 2))
                bic += float(torch.sum((conserve_cells(xb[:, :1], zb) - yb) ** 2))
                dms += float(torch.sum((conserve_cells(xb[:, :1] + xb[:, 1:2], zb) - yb) ** 2))
        n = max(idx.size, 1) * s * s
        return tot / n, bic / n, dms / n

    # start from the better classic prediction on the training cells
    _, bic_tr, dms_tr = evaluate(tr_idx[:MAX_VAL_CELLS])
    with torch.no_grad():
        model.mix.fill_(1.0 if dms_tr < bic_tr else 0.0)
    eval_idx = va_idx if va_idx.size else tr_idx[:MAX_VAL_CELLS]
    best_loss, bic_loss, dms_loss = evaluate(eval_idx)
    base_loss = min(bic_loss, dms_loss)
    best = {"loss": best_loss, "state": copy.deepcopy(model.state_dict()), "epoch": 0}
    history: list[dict[str, float]] = []
    sd = float(std[0])
    t0 = time.perf_counter()
    bar = Progress(epochs, desc=f"{method} training", unit="epoch", progress=verbose,
                   leave=False)
    stopped = "completed"
    epoch = 0
    bad = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            tl = 0.0
            for _ in range(steps_per_epoch):
                if tr_idx.size <= batch_size:
                    idx = tr_idx
                else:
                    pick = torch.randperm(tr_idx.size, generator=gen)[:batch_size].numpy()
                    idx = tr_idx[np.sort(pick)]
                xb, yb, zb = batch(idx)
                opt.zero_grad(set_to_none=True)
                loss = mse(xb, yb, zb)
                loss.backward()
                opt.step()
                tl += float(loss.detach())
            tl /= steps_per_epoch
            vl, _, _ = evaluate(eval_idx)
            history.append({"epoch": epoch, "train_loss": tl, "val_loss": vl,
                            "val_rmse": math.sqrt(vl) * sd})
            bar.set_postfix_str(f"loss={tl:.4g}, val RMSE={math.sqrt(vl) * sd:.3f} "
                                f"(bicubic {math.sqrt(bic_loss) * sd:.3f}, DMS "
                                f"{math.sqrt(dms_loss) * sd:.3f})", refresh=False)
            bar.update(1)
            if vl < best["loss"]:
                best.update(loss=vl, state=copy.deepcopy(model.state_dict()), epoch=epoch)
                bad = 0
            else:
                bad += 1
                if patience is not None and bad >= patience:
                    stopped = "early stopping"
                    break
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                stopped = "time limit"
                break
    except KeyboardInterrupt:
        bar.close()
        emit(f"{method} training: interrupted after {epoch} of {epochs} epoch(s); nothing "
             "saved")
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    # on the held-out cells the network must beat both classic predictions; otherwise the
    # better of them is kept (the correction switched off)
    fallback = None if best["loss"] < base_loss else ("dms" if dms_loss < bic_loss
                                                       else "bicubic")
    if fallback is not None:
        last = model.net[-1]
        with torch.no_grad():
            last.weight.zero_()  # type: ignore[operator]
            last.bias.zero_()  # type: ignore[operator, union-attr]
            model.mix.fill_(1.0 if fallback == "dms" else 0.0)
    model.eval().cpu()
    name = str(coarse.name) if coarse.name is not None else "lst"
    meta = {
        "arch": SIF_ARCH, "nbands": 2 + 2 * ng,
        "arch_params": {"kind": "residual-mlp", "width": width, "depth": depth},
        "method": method, "variant": "residual", "scale": s, "halo": 0,
        "inputs": [name, *inp.guide_names], "outputs": [name],
        "units": str(coarse.attrs.get("units", "")),
        "normalization": {"mean": mean.tolist(), "std": std.tolist(),
                          "note": "LST (channel 0; also the DMS - bicubic channel, without "
                                  "the mean, and the output) then the guide bands"},
        "dms": {},
        "training": {
            "self_supervision": f"coarse input vs its {s}x aggregate", "lr": lr,
            "batch_size": batch_size, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "patience": patience, "seed": seed, "val_fraction": val_fraction,
            "best_epoch": best["epoch"], "epochs_run": epoch, "stopped": stopped,
            "val_rmse": math.sqrt(min(best["loss"], base_loss)) * sd,
            "bicubic_val_rmse": math.sqrt(bic_loss) * sd,
            "dms_val_rmse": math.sqrt(dms_loss) * sd,
            "fallback": fallback, "seconds": round(seconds, 2),
            "n_train_cells": int(tr_idx.size), "n_val_cells": int(va_idx.size),
            "history": history,
        },
    }
    save_checkpoint(out, {"model": model}, meta)
    return os.fspath(out)
