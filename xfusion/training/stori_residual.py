"""STORI ``"residual"`` variant: SAR-guided boosting of the linear fill's residual.

The filled value of a missing step is the linear interpolation between the pixel's bracketing
observations plus a correction ``α_g · r̂``: ``r̂`` is predicted by gradient-boosted regression
trees from the gap's geometry (days to the previous and next observation, position in the
gap, day of year), the optical context (the linear value, the bracketing observations, the
slopes before and after the gap, the pixel's mean and spread) and the SAR features (their
value at the step, their deviation from their own linear interpolation across the same gap,
their change since either end of the gap, the pixel's annual mean). SAR is averaged over a
small spatial window (speckle), its gaps interpolated in time and smoothed over three steps,
then standardised with the scene's statistics.

The trees are fitted on the scene itself by masked self-supervision: runs of observed steps
are hidden (lengths 1..``max_run`` steps, shorter runs more often, so every gap length is
about equally represented) and the model learns the observed value minus the linear fill
across the hidden run. Rounds are added in stages and scored on the hidden steps of held-out
pixels (a strip of the scene): training stops when the score stops improving and the trees of
the best round are kept. On the same held-out steps a factor ``α_g ∈ [0, 1]`` per gap-length
class shrinks the correction toward the linear fill where the model does not help, and the
mean absolute error left per class is the reported uncertainty.

Everything here is per pixel, on raw numpy arrays; the trees are plain arrays
(:mod:`xfusion.training.boosting`), stored as tensors in checkpoints, never pickled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xfusion.errors import NotEnoughDataError
from xfusion.training.boosting import (
    Booster,
    concat_trees,
    empty_trees,
    predict_trees,
    truncate_trees,
)
from xfusion.training.progress import TrainingInterrupted, TrainingProgress, interpreter_exiting
from xfusion.training.series import linear_fill, neighbours

__all__ = [
    "FEATURES",
    "GAP_CLASSES",
    "box_mean_block",
    "fill_residual",
    "fit_residual",
    "gap_features",
    "hide_runs_np",
    "sar_context",
]

SAR_FEATURES: tuple[str, ...] = ("value", "dev_linear", "change_prev", "change_next", "mean")
FEATURES: tuple[str, ...] = (
    "days_prev", "days_next", "gap_days", "position", "doy_sin", "doy_cos", "linear", "x_prev",
    "x_next", "slope_before", "slope_after", "extrap_prev", "extrap_next", "pixel_mean",
    "pixel_std",
)
"""Optical and gap features (then ``len(SAR_FEATURES)`` per SAR feature)."""

GAP_CLASSES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 4), (5, 7), (8, 11), (12, 10**9))
"""Gap-length classes (in steps, inclusive) of the shrinkage and the uncertainty; gaps open at
one end of the series form a class of their own (the last)."""



# --------------------------------------------------------------------------------------------
# SAR preparation


def box_mean_block(s: np.ndarray, *, halo_sides: tuple[int, int, int, int],
                   window: int, dtype: Any = np.float64) -> np.ndarray:
    """NaN-aware spatial box mean of ``s`` (..., y, x) over ``window`` x ``window`` pixels.

    ``halo_sides`` (top, bottom, left, right) are the halo pixels on the block (cropped from
    the result); outside the image the window is truncated. Sums run in a fixed order, so the
    result does not depend on the chunking.
    """
    r = window // 2
    s = np.asarray(s, dtype=np.float64)
    top, bottom, left, right = halo_sides
    ny, nx = s.shape[-2:]
    if r == 0:
        return s[..., top:ny - bottom, left:nx - right].astype(dtype)
    pad = [(0, 0)] * (s.ndim - 2) + [(r, r), (r, r)]
    v = np.pad(s, pad, constant_values=np.nan)
    ok = ~np.isnan(v)
    v = np.where(ok, v, 0.0)
    oy, ox = ny - top - bottom, nx - left - right
    tot = np.zeros((*s.shape[:-2], oy, ox))
    cnt = np.zeros((*s.shape[:-2], oy, ox))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ys = slice(r + top + dy, r + top + dy + oy)
            xs = slice(r + left + dx, r + left + dx + ox)
            tot += v[..., ys, xs]
            cnt += ok[..., ys, xs]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan).astype(dtype)


def sar_context(s: np.ndarray, pos: np.ndarray, *, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> tuple[np.ndarray, list[float], list[float]]:
    """SAR (F, T, P) → gaps interpolated in time, 3-step mean, standardised; NaN → 0.

    Returns the prepared array and the per-feature mean and standard deviation used (computed
    here when not given).
    """
    from xfusion.training.series import fill_nan_series

    nf, nt, npx = s.shape
    out = np.empty((nf, nt, npx))
    for f in range(nf):
        a = fill_nan_series(np.asarray(s[f], np.float64), pos)
        if nt >= 3:
            b = a.copy()
            b[1:-1] = (a[:-2] + a[1:-1] + a[2:]) / 3.0
            b[0] = (a[0] + a[1]) / 2.0
            b[-1] = (a[-2] + a[-1]) / 2.0
            a = b
        out[f] = a
    if mean is None or std is None:
        mean, std = [], []
        for f in range(nf):
            v = out[f][np.isfinite(out[f])]
            m = float(v.mean()) if v.size else 0.0
            sd = float(v.std()) if v.size else 1.0
            mean.append(m)
            std.append(sd if sd > 0 else 1.0)
    mu = np.asarray(mean, np.float64)[:, None, None]
    sd_ = np.asarray(std, np.float64)[:, None, None]
    out = np.nan_to_num((out - mu) / sd_, nan=0.0)
    return out, list(map(float, mean)), list(map(float, std))


# --------------------------------------------------------------------------------------------
# features


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, np.clip(idx, 0, a.shape[0] - 1), axis=0)


def gap_features(x: np.ndarray, s: np.ndarray, pos: np.ndarray, doy: np.ndarray,
                 step_days: float, sel: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of the steps ``sel`` (default: the missing ones) of series ``x`` (T, P).

    Parameters
    ----------
    x : numpy.ndarray
        Optical values (T, P), NaN where missing.
    s : numpy.ndarray
        Prepared SAR (F, T, P) (:func:`sar_context`).
    pos, doy : numpy.ndarray
        Step positions (in steps) and day of year of each step (T,).
    step_days : float
        Days per step.
    sel : numpy.ndarray of bool, optional
        (T, P) steps to describe.

    Returns
    -------
    linear : numpy.ndarray
        The linear fill (T, P) (nearest observation beyond the ends).
    features : numpy.ndarray
        float32 (n, len(FEATURES) + 5 F), NaN where undefined (one-sided gaps).
    gap_class : numpy.ndarray
        int8 (n,) index into :data:`GAP_CLASSES` (``len(GAP_CLASSES)`` for one-sided gaps).
    """
    nt, npx = x.shape
    obs = ~np.isnan(x)
    if sel is None:
        sel = ~obs
    lin, _ = linear_fill(x, pos)
    prev, nxt = neighbours(obs)
    idx = np.arange(nt)[:, None]
    pm = np.maximum.accumulate(np.where(obs, idx, -1), axis=0)
    nm = np.minimum.accumulate(np.where(obs, idx, nt)[::-1], axis=0)[::-1]
    p2 = np.where(prev >= 1, _take(pm, prev - 1), -1)
    n2 = np.where(nxt <= nt - 2, _take(nm, nxt + 1), nt)
    hp, hn = prev >= 0, nxt < nt
    hp2, hn2 = hp & (p2 >= 0), hn & (n2 < nt)
    days = pos * step_days
    tday = days[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        dp_ = np.where(hp, tday - days[np.clip(prev, 0, nt - 1)], np.nan)
        dn_ = np.where(hn, days[np.clip(nxt, 0, nt - 1)] - tday, np.nan)
        gap = dp_ + dn_
        w = dp_ / gap
        xp = np.where(hp, _take(x, prev), np.nan)
        xn = np.where(hn, _take(x, nxt), np.nan)
        dp2 = np.where(hp2, days[np.clip(prev, 0, nt - 1)] - days[np.clip(p2, 0, nt - 1)], np.nan)
        dn2 = np.where(hn2, days[np.clip(n2, 0, nt - 1)] - days[np.clip(nxt, 0, nt - 1)], np.nan)
        sb = (xp - np.where(hp2, _take(x, p2), np.nan)) / dp2
        sa = (np.where(hn2, _take(x, n2), np.nan) - xn) / dn2
        cnt = obs.sum(axis=0)
        x0 = np.where(obs, x, 0.0)
        mu = np.where(cnt > 0, x0.sum(axis=0) / np.maximum(cnt, 1), np.nan)
        var = np.where(obs, (x0 - mu) ** 2, 0.0).sum(axis=0) / np.maximum(cnt, 1)
        sd = np.where(cnt > 0, np.sqrt(var), np.nan)
    ang = 2 * np.pi * doy / 365.25
    cols: list[np.ndarray] = [
        dp_, dn_, gap, w,
        np.broadcast_to(np.sin(ang)[:, None], (nt, npx)),
        np.broadcast_to(np.cos(ang)[:, None], (nt, npx)),
        lin, xp, xn, sb, sa, xp + sb * dp_ - lin, xn - sa * dn_ - lin,
        np.broadcast_to(mu, (nt, npx)), np.broadcast_to(sd, (nt, npx)),
    ]
    for f in range(s.shape[0]):
        sf = s[f]
        sp = np.where(hp, _take(sf, prev), np.nan)
        sn = np.where(hn, _take(sf, nxt), np.nan)
        with np.errstate(invalid="ignore"):
            slin = np.where(hp & hn, sp + w * (sn - sp), np.where(hp, sp, sn))
        cols += [sf, sf - slin, sf - sp, sf - sn, np.broadcast_to(sf.mean(axis=0), (nt, npx))]
    feats = np.empty((int(sel.sum()), len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        feats[:, j] = np.asarray(c)[sel]
    steps = np.where(hp & hn, nxt - prev - 1, -1)[sel]
    cls = np.full(steps.shape, len(GAP_CLASSES), dtype=np.int8)
    for k, (lo, hi) in enumerate(GAP_CLASSES):
        cls[(steps >= lo) & (steps <= hi)] = k
    return lin, feats, cls


def hide_runs_np(obs: np.ndarray, rng: np.random.Generator, *, fraction: float,
                 max_run: int) -> np.ndarray:
    """Boolean (T, P): runs of 1..``max_run`` steps (probability ∝ 1/length, so each length
    hides about as many steps) covering about ``fraction`` of the steps, on observed steps."""
    nt, npx = obs.shape
    max_run = max(1, min(int(max_run), nt))
    lens = np.arange(1, max_run + 1)
    pr = (1.0 / lens) / (1.0 / lens).sum()
    nruns = max(1, math.ceil(fraction * nt / float((lens * pr).sum())))
    starts = rng.integers(-max_run + 1, nt, (npx, nruns))
    ln = rng.choice(lens, size=(npx, nruns), p=pr)
    cover = np.zeros((nt, npx), dtype=bool)
    t = np.arange(nt)[:, None]
    for k in range(nruns):
        cover |= (t >= starts[:, k]) & (t < starts[:, k] + ln[:, k])
    return cover & obs


# --------------------------------------------------------------------------------------------
# training


def _samples(x: np.ndarray, s: np.ndarray, pos: np.ndarray, doy: np.ndarray, step_days: float,
             rng: np.random.Generator, *, reps: int, fraction: float, max_run: int,
             limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets, gap classes and step indices of hidden observed steps."""
    obs = ~np.isnan(x)
    xs, ys, cs, ts = [], [], [], []
    for _ in range(reps):
        h = hide_runs_np(obs, rng, fraction=fraction, max_run=max_run)
        xm = np.where(h, np.nan, x)
        lin, f, c = gap_features(xm, s, pos, doy, step_days, sel=h)
        y = (x - lin)[h]
        ok = np.isfinite(y)  # a pixel whose every observation was hidden has no linear fill
        xs.append(f[ok])
        ys.append(y[ok])
        cs.append(c[ok])
        ts.append(np.nonzero(h)[0][ok])  # same (time-major) order as boolean indexing
    feats, y = np.concatenate(xs), np.concatenate(ys)
    cls, tix = np.concatenate(cs), np.concatenate(ts)
    if limit is not None and y.size > limit:
        keep = np.sort(rng.choice(y.size, limit, replace=False))
        feats, y, cls, tix = feats[keep], y[keep], cls[keep], tix[keep]
    return feats, y, cls, tix


def season_bins(doy: np.ndarray, step_days: float) -> np.ndarray:
    """Index of the ``step_days``-wide day-of-year bin of each step."""
    n = math.ceil(366.0 / step_days)
    return np.clip((np.asarray(doy) // step_days).astype(np.int64), 0, n - 1)


def support_factors(tix: np.ndarray, doy: np.ndarray, step_days: float,
                    support: float) -> np.ndarray:
    """Per day-of-year bin: min(1, n / (support × median n)), ``n`` the training examples whose
    step falls in the bin (the median over bins with any); 1 everywhere when ``support`` is 0.

    Steps of the season the scene never shows (a winter overcast: nothing to hide there) get
    0: the correction is learnt elsewhere in the year, so they keep the linear fill.
    """
    nbin = math.ceil(366.0 / step_days)
    if support <= 0 or tix.size == 0:
        return np.ones(nbin)
    counts = np.bincount(season_bins(doy, step_days)[tix], minlength=nbin).astype(np.float64)
    ref = float(np.median(counts[counts > 0])) * support
    return np.minimum(1.0, counts / ref)


def _shrinkage(pred: np.ndarray, y: np.ndarray, cls: np.ndarray, *, min_count: int = 30
               ) -> tuple[list[float], list[float]]:
    """Per gap class: the factor in {0, 0.1, ..., 1} minimising the MAE of ``α·pred`` against
    ``y``, and the MAE left (classes with too few samples take the pooled values)."""
    grid = np.linspace(0.0, 1.0, 11)

    def best(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
        maes = [float(np.abs(t - a * p).mean()) for a in grid]
        k = int(np.argmin(maes))
        return float(grid[k]), maes[k]

    if y.size == 0:
        return [1.0] * (len(GAP_CLASSES) + 1), [math.nan] * (len(GAP_CLASSES) + 1)
    pooled = best(pred, y)
    alphas, maes = [], []
    for k in range(len(GAP_CLASSES) + 1):
        sel = cls == k
        a, m = best(pred[sel], y[sel]) if sel.sum() >= min_count else pooled
        alphas.append(a)
        maes.append(m)
    return alphas, maes


def fit_residual(
    x: np.ndarray,
    s: np.ndarray,
    pos: np.ndarray,
    doy: np.ndarray,
    *,
    step_days: float,
    val: np.ndarray | None,
    rounds: int,
    learning_rate: float,
    max_leaf_nodes: int,
    min_samples_leaf: int,
    l2: float,
    fraction: float,
    max_run: int,
    samples: int,
    patience: int | None,
    support: float = 0.0,
    stage: int = 10,
    seed: int = 0,
    time_budget: float | None = None,
    progress: bool | None = False,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the residual trees on series ``x`` (T, P) and prepared SAR ``s`` (F, T, P).

    Parameters
    ----------
    val : numpy.ndarray of bool, optional
        (P,) held-out pixels for early stopping and the shrinkage (None: none; all rounds are
        kept and the correction is not shrunk).
    rounds, learning_rate, max_leaf_nodes, min_samples_leaf, l2
        Boosting (:class:`~xfusion.training.boosting.Booster`): at most ``rounds`` trees.
    fraction, max_run
        Share of the observed steps hidden per replica, and the longest hidden run (steps).
    samples : int
        At most this many training samples (hidden steps).
    patience : int or None
        Stop after this many rounds without a better validation MAE (None: never early).
    support : float
        Seasons with fewer training examples than this share of the typical season's are
        corrected in proportion (:func:`support_factors`; 0: everywhere fully).
    stage : int
        Rounds added between two validations (and progress updates).
    seed : int
        Seeds the hidden runs, the sampling and the trees.
    time_budget : float, optional
        Stop after the stage during which this many seconds have passed.
    progress : bool or None
        See :class:`~xfusion.training.progress.TrainingProgress`.
    callback : callable, optional
        Called with each stage's record (``round``, ``train_mae``, ``val_mae``, ``seconds``).

    Returns
    -------
    trees : dict of str to numpy.ndarray
        The exported trees of the best round.
    info : dict
        ``base`` (the initial prediction), ``alphas`` and ``class_mae`` per gap class,
        ``support`` per day-of-year bin,
        ``history``, ``best_round``, ``best_val_mae``, ``stopped``, ``seconds``, sample counts.
    """
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    is_val = np.zeros(x.shape[1], bool) if val is None else np.asarray(val, bool)
    tr = ~is_val
    xt, yt, _, tt = _samples(x[:, tr], s[:, :, tr], pos, doy, step_days, rng, reps=3,
                             fraction=fraction, max_run=max_run, limit=samples)
    factors = support_factors(tt, doy, step_days, support)
    has_val = bool(is_val.any())
    xv = np.zeros((0, xt.shape[1]), np.float32)
    yv = np.zeros(0)
    cv = np.zeros(0, np.int8)
    tv = np.zeros(0, np.int64)
    if has_val:
        xv, yv, cv, tv = _samples(x[:, is_val], s[:, :, is_val], pos, doy, step_days, rng, reps=2,
                              fraction=fraction, max_run=max_run, limit=max(samples // 2, 1))
        has_val = yv.size > 0
    if yt.size == 0:
        raise NotEnoughDataError(
            "STORI found no observed step to learn from (no pixel has observations that can "
            "be hidden). Use a longer or less cloudy series, or method='linear'.")
    booster = Booster(xt, yt, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                      min_samples_leaf=min_samples_leaf, l2=l2, seed=seed)
    base = booster.base
    trees = empty_trees()
    pred_v = np.full(yv.size, base)
    history: list[dict[str, float]] = []
    best, best_round, since = math.inf, 0, 0
    stopped = "completed"
    bar = TrainingProgress(rounds, desc="stori", unit="round", progress=progress)
    done = 0
    t0 = time.perf_counter()
    try:
        while done < rounds:
            tree = booster.step()
            trees = concat_trees(trees, tree)
            done += 1
            if has_val:
                pred_v += predict_trees(tree, 0.0, xv)
            if done % stage and done < rounds:
                continue
            rec = {"round": done, "train_mae": float(np.abs(yt - booster.pred).mean()),
                   "val_mae": float(np.abs(yv - pred_v).mean()) if has_val else math.nan,
                   "seconds": time.perf_counter() - t0}
            t0 = time.perf_counter()
            if has_val:
                if rec["val_mae"] < best:
                    best, best_round, since = rec["val_mae"], done, 0
                else:
                    since = done - best_round
            history.append(rec)
            bar.update(done - bar.done, train=rec["train_mae"], val=rec["val_mae"])
            if callback is not None:
                callback(rec)
            if patience is not None and has_val and since >= patience:
                stopped = "early-stopping"
                break
            if time_budget is not None and time.perf_counter() - t_start >= time_budget:
                stopped = "time-budget"
                break
            if interpreter_exiting():
                stopped = "interpreter-exit"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        if not history:
            bar.interrupted(None)
            raise TrainingInterrupted(
                "STORI training was interrupted before its first validation; there is no "
                "model to keep. Run again (StoriConfig(rounds=..., train_samples=...) smaller "
                "trains faster), or use method='linear'.") from None
        bar.interrupted(f"round {best_round}, validation MAE {best:.4g}" if has_val
                        else f"round {history[-1]['round']}")
    if stopped != "interrupted":
        bar.close(stopped, {"best_round": best_round, "best_val": best})
    if has_val:
        trees = truncate_trees(trees, best_round)
    else:
        best_round = int(history[-1]["round"]) if history else 0
        trees = truncate_trees(trees, best_round)
    alphas = [1.0] * (len(GAP_CLASSES) + 1)
    class_mae = [math.nan] * (len(GAP_CLASSES) + 1)
    if has_val:
        pv = predict_trees(trees, base, xv) * factors[season_bins(doy, step_days)[tv]]
        alphas, class_mae = _shrinkage(pv, yv, cv)
    info = {"base": base, "alphas": alphas, "class_mae": class_mae,
            "support": [float(v) for v in factors], "history": history,
            "best_round": best_round, "best_val_mae": best if math.isfinite(best) else None,
            "stopped": stopped, "seconds": time.perf_counter() - t_start,
            "n_train_samples": int(yt.size), "n_val_samples": int(yv.size) if has_val else 0,
            "n_train": int(tr.sum()), "n_val": int(is_val.sum())}
    return trees, info


# --------------------------------------------------------------------------------------------
# filling


def fill_residual(x: np.ndarray, s: np.ndarray, pos: np.ndarray, doy: np.ndarray,
                  trees: Mapping[str, np.ndarray], meta: Mapping[str, Any], *,
                  batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Fill the missing steps of ``x`` (T, P) with the trained trees.

    ``s`` is the spatially averaged SAR (F, T, P) (before :func:`sar_context`); ``meta`` the
    ``stori`` metadata of the weights (SAR statistics, base, alphas, class MAE, support).
    Returns the filled series (observed steps unchanged) and the uncertainty (0 at observed
    steps, the held-out MAE of the step's gap class at filled ones; NaN when unknown). Works
    on ``batch`` pixels at a time (memory: about 400 bytes per pixel and step).
    """
    out = np.empty(x.shape)
    unc = np.empty(x.shape)
    for i in range(0, x.shape[1], batch):
        sl = slice(i, i + batch)
        out[:, sl], unc[:, sl] = _fill_batch(x[:, sl], s[:, :, sl], pos, doy, trees, meta)
    return out, unc


def _fill_batch(x: np.ndarray, s: np.ndarray, pos: np.ndarray, doy: np.ndarray,
                trees: Mapping[str, np.ndarray], meta: Mapping[str, Any]
                ) -> tuple[np.ndarray, np.ndarray]:
    sp, _, _ = sar_context(s, pos, mean=meta["sar_mean"], std=meta["sar_std"])
    miss = np.isnan(x)
    lin, feats, cls = gap_features(x, sp, pos, doy, float(meta["step_days"]))
    r = predict_trees(trees, float(meta["base"]), feats)
    alpha = np.asarray(meta["alphas"], np.float64)[cls]
    if "support" in meta:
        sb = season_bins(doy, float(meta["step_days"]))
        alpha = alpha * np.asarray(meta["support"], np.float64)[
            np.broadcast_to(sb[:, None], x.shape)[miss]]
    out = lin.copy()
    out[miss] = lin[miss] + alpha * r
    unc = np.zeros(x.shape)
    unc[miss] = np.asarray([math.nan if v is None else v for v in meta["class_mae"]],
                           np.float64)[cls]
    return out, unc
