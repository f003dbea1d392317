"""DMS kernels: regression trees fitted on the homogeneous coarse cells, predicted per block.

The numpy side of :func:`xfusion.methods.dms.dms` (called through
:func:`xfusion.super_resolve` with ``method="dms"``): features aggregated to the coarse grid,
the global and moving-window tree models (scikit-learn), the block prediction with the
residual correction, lazily over Dask blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask
import numpy as np

from xfusion.errors import InvalidParameterError, NotEnoughDataError

if TYPE_CHECKING:
    from xfusion.cube.grids import GuidedInputs

__all__ = ["dms_predict"]

RESIDUALS = ("cell", "bilinear", "none")
AGGREGATIONS = ("power", "mean")
REGRESSORS = ("tree", "bagging")


def _check(window: int, homogeneity: float, residual: str, aggregation: str, regressor: str,
           n_estimators: int, min_samples_leaf: int, min_samples: int) -> None:
    for key, val, choices in (("residual", residual, RESIDUALS),
                              ("aggregation", aggregation, AGGREGATIONS),
                              ("regressor", regressor, REGRESSORS)):
        if val not in choices:
            raise InvalidParameterError(
                f"Unknown {key}={val!r} for dms(). Choose one of {list(choices)!r}."
            )
    if not isinstance(window, (int, np.integer)) or window < 0:
        raise InvalidParameterError(
            f"window={window!r} must be a non-negative integer (coarse pixels; 0 = global only)."
        )
    if not 0.0 < float(homogeneity) <= 1.0:
        raise InvalidParameterError(
            f"homogeneity={homogeneity!r} must be in (0, 1]: the share of coarse cells kept."
        )
    for key, val in (("n_estimators", n_estimators), ("min_samples_leaf", min_samples_leaf),
                     ("min_samples", min_samples)):
        if not isinstance(val, (int, np.integer)) or val < 1:
            raise InvalidParameterError(f"{key}={val!r} must be a positive integer.")


def _cell_features(g: np.ndarray, scale: int) -> np.ndarray:
    """``(G, Hf, Wf)`` -> ``(2G, Hc, Wc)``: block means, then block standard deviations."""
    gc, hf, wf = g.shape
    v = g.astype(np.float64).reshape(gc, hf // scale, scale, wf // scale, scale)
    mean = v.mean(axis=(2, 4))
    std = np.sqrt(np.maximum((v**2).mean(axis=(2, 4)) - mean**2, 0.0))
    return np.concatenate([mean, std])


def _agg_block(g: np.ndarray, *, scale: int) -> np.ndarray:
    """Block function: ``(T, G, h s, w s)`` -> ``(T, 2G, h, w)`` means then stds."""
    return np.stack([_cell_features(gt, scale) for gt in g]).astype(np.float32)


def _make_regressor(regressor: str, n_estimators: int, max_depth: int | None,
                    min_samples_leaf: int, seed: int) -> Any:
    from sklearn.ensemble import BaggingRegressor
    from sklearn.tree import DecisionTreeRegressor

    tree = DecisionTreeRegressor(max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                 random_state=seed)
    if regressor == "tree":
        return tree
    return BaggingRegressor(estimator=tree, n_estimators=n_estimators, random_state=seed)


def _fit(coarse: np.ndarray, feats: np.ndarray, *, nguide: int, window: int, homogeneity: float,
         std_features: bool, regressor: str, n_estimators: int, max_depth: int | None,
         min_samples_leaf: int, min_samples: int, seed: int, date: str) -> dict[str, Any]:
    """Fit the global (and local) models for one date on the coarse grid."""
    coarse = np.asarray(coarse, dtype=np.float64).reshape(coarse.shape[-2:])
    feats = np.asarray(feats, dtype=np.float64).reshape(-1, *coarse.shape)
    mean, std = feats[:nguide], feats[nguide:]
    x = np.concatenate([mean, std]) if std_features else mean
    ok = np.isfinite(coarse) & np.isfinite(x).all(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.mean(std / np.maximum(np.abs(mean), 1e-6), axis=0)
    n_ok = int(ok.sum())
    if n_ok < min_samples:
        raise NotEnoughDataError(
            f"dms(): the date {date} has {n_ok} observed coarse cells with complete predictors, "
            f"fewer than min_samples={min_samples}. Lower min_samples=, or drop that date."
        )
    thresh = np.quantile(cv[ok], homogeneity) if homogeneity < 1 else np.inf
    use = ok & (cv <= thresh)
    if use.sum() < min_samples:
        use = ok
    xs = x.reshape(x.shape[0], -1).T
    y = coarse.ravel()
    glob = _make_regressor(regressor, n_estimators, max_depth, min_samples_leaf, seed)
    glob.fit(xs[use.ravel()], y[use.ravel()])
    model: dict[str, Any] = {"global": glob, "window": int(window), "local": {}}
    if window > 0:
        hc, wc = coarse.shape
        pred_g = np.full(y.shape, np.nan)
        pred_g[ok.ravel()] = glob.predict(xs[ok.ravel()])
        ext = window // 2
        for a in range(0, hc, window):
            for b in range(0, wc, window):
                sub = np.zeros_like(use)
                sub[max(0, a - ext):a + window + ext, max(0, b - ext):b + window + ext] = True
                train = (use & sub).ravel()
                own = np.zeros_like(ok)
                own[a:a + window, b:b + window] = True
                own &= ok
                if train.sum() < min_samples or not own.any():
                    continue
                loc = _make_regressor(regressor, n_estimators, max_depth, min_samples_leaf,
                                      seed)
                loc.fit(xs[train], y[train])
                o = own.ravel()
                res_l = float(np.mean((loc.predict(xs[o]) - y[o]) ** 2))
                res_g = float(np.mean((pred_g[o] - y[o]) ** 2))
                model["local"][(a // window, b // window)] = (loc, max(res_g, 1e-12),
                                                              max(res_l, 1e-12))
    return model


def _local_std(g: np.ndarray, scale: int) -> np.ndarray:
    """Standard deviation of each ``(G, H, W)`` band in a ``scale x scale`` window (clipped)."""
    lo = scale // 2
    hi = scale - lo
    _, h, w = g.shape
    pad = ((0, 0), (lo, hi), (lo, hi))
    v = np.pad(np.nan_to_num(g.astype(np.float64)), pad)
    m = np.pad(np.isfinite(g).astype(np.float64), pad)
    s1 = np.zeros(g.shape)
    s2 = np.zeros(g.shape)
    c = np.zeros(g.shape)
    for dy in range(scale):
        for dx in range(scale):
            sl = (slice(None), slice(dy, dy + h), slice(dx, dx + w))
            s1 += v[sl]
            s2 += v[sl] ** 2
            c += m[sl]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / c
        return np.sqrt(np.maximum(s2 / c - mean**2, 0.0))


def _bilinear_cells(r: np.ndarray, scale: int) -> np.ndarray:
    """Bilinear interpolation of a coarse field between cell centres (edges clamped)."""
    def axis(a: np.ndarray, ax: int) -> np.ndarray:
        n = a.shape[ax]
        u = (np.arange(n * scale) + 0.5) / scale - 0.5
        lo = np.floor(u).astype(np.int64)
        t = u - lo
        i0, i1 = np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1)
        a0, a1 = np.take(a, i0, axis=ax), np.take(a, i1, axis=ax)
        shape = [1] * a.ndim
        shape[ax] = -1
        t = t.reshape(shape)
        return a0 * (1 - t) + a1 * t

    return axis(axis(r, -2), -1)


def _predict_block(c: np.ndarray, g: np.ndarray, models: Sequence[dict[str, Any]], *,
                   scale: int, halo_sides: tuple[int, int, int, int], t: int, row0: int,
                   col0: int, std_features: bool, residual: str, aggregation: str) -> np.ndarray:
    """One date, one haloed block: coarse ``(hc, wc)``, guide ``(G, hc s, wc s)``; returns the
    interior ``(hi s, wi s)``. ``row0/col0``: global coarse index of the block's first row/col
    (halo included), for the local-model windows."""
    s = scale
    model = models[t]
    c = np.asarray(c, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    _nguide, hf, wf = g.shape
    feats = np.concatenate([g, _local_std(g, s)]) if std_features else g
    valid = np.isfinite(feats).all(axis=0)
    xs = feats.reshape(feats.shape[0], -1).T
    pred = np.full(hf * wf, np.nan)
    vi = valid.ravel()
    if vi.any():
        pred[vi] = model["global"].predict(xs[vi])
        if model["window"] > 0 and model["local"]:
            win = model["window"]
            rows = (row0 + np.arange(hf) // s) // win
            cols = (col0 + np.arange(wf) // s) // win
            key = (rows[:, None] * 1_000_003 + cols[None, :]).ravel()
            for (a, b), (loc, rg, rl) in model["local"].items():
                sel = vi & (key == a * 1_000_003 + b)
                if sel.any():
                    wg, wl = 1.0 / rg, 1.0 / rl
                    pred[sel] = (wg * pred[sel] + wl * loc.predict(xs[sel])) / (wg + wl)
    pred = pred.reshape(hf, wf)
    hc, wc = c.shape
    cell_ok = np.isfinite(c)
    if residual != "none":
        blocks = pred.reshape(hc, s, wc, s)
        fin = np.isfinite(blocks)
        count = fin.sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            if aggregation == "power":
                agg4 = np.where(fin, blocks**4, 0.0).sum(axis=(1, 3)) / count
            else:
                aggm = np.where(fin, blocks, 0.0).sum(axis=(1, 3)) / count
        rep = (lambda a: a.repeat(s, axis=0).repeat(s, axis=1))
        if residual == "cell":
            if aggregation == "power":
                with np.errstate(invalid="ignore"):
                    out4 = pred**4 + rep(c**4 - agg4)
                    pred = np.sign(out4) * np.abs(out4) ** 0.25
            else:
                pred = pred + rep(c - aggm)
        else:
            agg = agg4**0.25 if aggregation == "power" else aggm
            r = c - agg
            r = np.where(np.isfinite(r), r, 0.0)
            pred = pred + _bilinear_cells(r, s)
    rep_ok = cell_ok.repeat(s, axis=0).repeat(s, axis=1)
    pred = np.where(rep_ok, pred, np.nan)
    top, bottom, left, right = halo_sides
    return pred[top * s:hf - bottom * s, left * s:wf - right * s].astype(np.float32)


def _nested_block(c: np.ndarray, g: np.ndarray, models: Sequence[dict[str, Any]], *,
                  scale: int, halo: int, kw: dict[str, Any],
                  block_info: dict[Any, Any] | None = None) -> np.ndarray:
    from xfusion.engine.tiling import block_halos

    if block_info is None or None not in block_info:  # meta probing
        return np.zeros((0, 0, 0, 0), dtype=np.float32)
    info = block_info[None]
    loc, nb = info["chunk-location"], info["num-chunks"]
    sides = block_halos(tuple(loc[2:]), tuple(nb[2:]), halo)
    t = int(info["array-location"][0][0])
    row0 = int(info["array-location"][2][0]) // scale - sides[0]
    col0 = int(info["array-location"][3][0]) // scale - sides[2]
    out = _predict_block(c[0, 0], g[0], models, scale=scale, halo_sides=sides, t=t, row0=row0,
                         col0=col0, **kw)
    return out[None, None]


def dms_predict(inp: GuidedInputs, *, window: int = 0, homogeneity: float = 0.8,
                 std_features: bool = False, residual: str = "cell",
                 aggregation: str = "power", regressor: str = "bagging", n_estimators: int = 10,
                 max_depth: int | None = None, min_samples_leaf: int = 5,
                 min_samples: int = 20, seed: int = 0) -> Any:
    """Lazy DMS prediction ``(T, Hf, Wf)`` for prepared inputs."""

    from xfusion.cube.grids import rechunk_nested

    _check(window, homogeneity, residual, aggregation, regressor, n_estimators,
           min_samples_leaf, min_samples)
    s = inp.grids.scale
    fit_kw = {"nguide": len(inp.guide_names), "window": int(window),
              "homogeneity": float(homogeneity), "std_features": bool(std_features),
              "regressor": regressor, "n_estimators": int(n_estimators), "max_depth": max_depth,
              "min_samples_leaf": int(min_samples_leaf), "min_samples": int(min_samples),
              "seed": int(seed)}
    kw = {"std_features": bool(std_features), "residual": residual, "aggregation": aggregation}
    times = ([str(t)[:19] for t in inp.time.values] if inp.time is not None
             else ["(no time)"])
    coarse, guide = inp.coarse, inp.guide
    nt = coarse.shape[0]
    if not (dask.is_dask_collection(coarse) or dask.is_dask_collection(guide)):
        c = np.asarray(coarse)
        g = np.asarray(guide)
        outs = []
        models = []
        for t in range(nt):
            gt = g[t if g.shape[0] == nt else 0]
            feats = _agg_block(gt[None], scale=s)[0]
            models.append(_fit(c[t], feats, date=times[t], **fit_kw))
        for t in range(nt):
            gt = g[t if g.shape[0] == nt else 0]
            outs.append(_predict_block(c[t], gt, models, scale=s, halo_sides=(0, 0, 0, 0), t=t,
                                       row0=0, col0=0, **kw))
        return np.stack(outs)

    import dask.array as da
    from dask.base import tokenize

    coarse, guide = rechunk_nested(coarse, guide, s)
    coarse = coarse.rechunk((1, *coarse.chunks[1:]))
    if guide.shape[0] != nt:
        guide = da.broadcast_to(guide, (nt, *guide.shape[1:]))
    guide = guide.rechunk((1, -1, tuple(c * s for c in coarse.chunks[1]),
                           tuple(c * s for c in coarse.chunks[2])))
    token = tokenize(coarse.name, guide.name, fit_kw, kw, s)
    feats = da.map_blocks(
        _agg_block, guide, scale=s, dtype=np.float32,
        chunks=(guide.chunks[0], (2 * guide.shape[1],), coarse.chunks[1], coarse.chunks[2]),
        meta=np.empty((0, 0, 0, 0), np.float32), name=f"xfusion.dms.features-{token}",
    )
    fit = dask.delayed(_fit, pure=True)
    models = [fit(coarse[t], feats[t], date=times[t], dask_key_name=f"xfusion.dms.fit-{token}-{t}",
                  **fit_kw) for t in range(nt)]
    models_d = dask.delayed(list, pure=True)(models, dask_key_name=f"xfusion.dms.models-{token}")
    # 1 coarse px: the bilinear residual reads the neighbour cells; with std features those
    # cells' fine pixels need their own half-window of context: 1 more
    halo = 2 if std_features else 1
    coarse = coarse.rechunk((1, *(da.overlap.ensure_minimum_chunksize(halo, c) if len(c) > 1
                                  else c for c in coarse.chunks[1:])))
    guide = guide.rechunk((1, -1, tuple(c * s for c in coarse.chunks[1]),
                           tuple(c * s for c in coarse.chunks[2])))
    c4 = coarse[:, None]
    co = da.overlap.overlap(c4, depth={2: halo, 3: halo}, boundary="none")
    go = da.overlap.overlap(guide, depth={2: halo * s, 3: halo * s}, boundary="none")
    out = da.map_blocks(
        _nested_block, co, go, models_d, scale=s, halo=halo, kw=kw,
        chunks=(coarse.chunks[0], (1,), tuple(c * s for c in coarse.chunks[1]),
                tuple(c * s for c in coarse.chunks[2])),
        dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32),
        name=f"xfusion.dms-{token}",
    )
    return out[:, 0]
