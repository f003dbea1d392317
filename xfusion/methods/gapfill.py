"""Gap filling of optical series: STORI (SAR-guided, trained on the scene) and three baselines.

``gapfill(ds, optical="ndvi", sar=["vh_db", "rvi"], method=...)`` fills the missing (NaN) steps
of every pixel's series on a regular composite time axis (see
:mod:`xfusion.methods.composite`). Observed values are copied bit for bit; the filled steps
come from

``"stori"``
    SAR-guided gap filling trained on the scene's own observations (or given ``weights=``).
    The default variant, ``"residual"``, adds to the linear fill a correction predicted from
    SAR and the temporal context by boosted trees fitted by hiding observed steps like real
    gaps (:mod:`xfusion.training.stori_residual`); ``variant="faithful"`` is the paper's
    bidirectional recurrent imputer (:mod:`xfusion.models.stori`), ``"fixed"`` the same net
    with the public code's bugs fixed;
``"linear"``
    linear interpolation in time between the neighbouring observations;
``"savgol"``
    a Savitzky-Golay smoothing of the linearly interpolated series;
``"harmonic"``
    a per-pixel least-squares harmonic regression (annual period).

The computation is per pixel, so it is mapped over the spatial chunks with the whole time axis
in one chunk (:func:`xfusion.engine.map_blocks_halo`, halo 0; the residual variant first
averages SAR over a small window, ``xfusion.gapfill-sar-…``, halo 1); graph layers are named
``xfusion.gapfill-…``. With ``method="stori"`` and no ``weights``, training is ONE task of the
graph (``xfusion.gapfill-train-…``) that reads a regular subsample of the pixels and runs when
the result is computed; numpy input trains and fills immediately.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import dask
import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import require_choice
from xfusion.cube.validate import (
    TIME,
)
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    EmptySeriesWarning,
    InvalidParameterError,
    WeightsMismatchError,
)
from xfusion.training.series import (
    linear_fill,
    odd_window,
    prep_optical,
    prep_sar,
    series_inputs,
    series_positions,
)
from xfusion.training.stori import (
    StoriConfig,
    StoriWeights,
    Variant,
    as_weights,
    day_of_year,
    fit_stori,
    prepared_sar,
    resolve_config,
    train_graph,
)

__all__ = [
    "GAPFILL_METHODS",
    "GapfillMethod",
    "StoriConfig",
    "StoriWeights",
    "fit_stori",
    "gapfill",
    "job_halo",
]

NAME = "gapfill"

GapfillMethod: TypeAlias = Literal["stori", "linear", "savgol", "harmonic"]
"""The gap-filling methods of :func:`gapfill`."""

GAPFILL_METHODS: tuple[str, ...] = ("stori", "linear", "savgol", "harmonic")






# --------------------------------------------------------------------------------------------
# configuration




# --------------------------------------------------------------------------------------------
# numpy kernels: neighbours, baselines, preprocessing






def _rms_at_obs(fit: np.ndarray, x: np.ndarray) -> np.ndarray:
    obs = ~np.isnan(x)
    n = obs.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(np.where(obs, (fit - np.nan_to_num(x)) ** 2, 0.0).sum(axis=0) / n)
    return np.broadcast_to(np.where(n > 0, r, np.nan), x.shape)




def _savgol(x: np.ndarray, pos: np.ndarray, window: int, order: int,
            mode: str = "interp") -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import savgol_filter

    lin, _ = linear_fill(x, pos)
    w = odd_window(window, x.shape[0])
    sm = savgol_filter(lin, w, order, axis=0, mode=mode) if w > order and w >= 3 else lin
    return sm, _rms_at_obs(sm, x)


def _harmonic(x: np.ndarray, pos_days: np.ndarray, harmonics: int, period: float,
              trend: bool) -> tuple[np.ndarray, np.ndarray]:
    nt, npx = x.shape
    obs = ~np.isnan(x)
    nobs = obs.sum(axis=0)
    t = pos_days - pos_days.mean()
    cols = [np.ones(nt)] + ([t / max(period, 1e-9)] if trend else [])
    base = len(cols)
    for k in range(1, harmonics + 1):
        ang = 2 * np.pi * k * t / period
        cols += [np.cos(ang), np.sin(ang)]
    a_full = np.stack(cols, axis=1)  # (T, p)
    x0 = np.where(obs, x, 0.0)
    fit = np.full(x.shape, np.nan)
    done = np.zeros(npx, bool)
    for k in range(harmonics, -1, -1):
        p = base + 2 * k
        sel = ~done & (nobs >= p)
        if not sel.any():
            continue
        a = a_full[:, :p]
        w = obs[:, sel].astype(np.float64)
        g = np.einsum("tp,tq,tn->npq", a, a, w)
        rhs = np.einsum("tp,tn->np", a, x0[:, sel])
        g += 1e-9 * np.eye(p)[None] * np.maximum(np.trace(g, axis1=1, axis2=2), 1.0)[:, None, None]
        coef = np.linalg.solve(g, rhs[..., None])[..., 0]  # (n, p)
        fit[:, sel] = a @ coef.T
        done |= sel
    return fit, _rms_at_obs(fit, x)










# --------------------------------------------------------------------------------------------
# STORI weights








# --------------------------------------------------------------------------------------------
# training
























# --------------------------------------------------------------------------------------------
# the block function


def _gapfill_block(opt: np.ndarray, *rest: Any, halo_sides: tuple[int, int, int, int],
                   method: str, pos: np.ndarray, pos_days: np.ndarray, times: np.ndarray,
                   params: Mapping[str, Any], name: str, device: str) -> np.ndarray:
    """Fill one block: ``opt`` (1, T, y, x) [, ``sar`` (F, T, y, x), weights] → (2, T, y, x)."""
    x = opt[0]
    nt = x.shape[0]
    out_dtype = x.dtype
    flat = x.reshape(nt, -1).astype(np.float64)
    obs = ~np.isnan(flat)
    has = obs.any(axis=0)
    n_empty = int((~has).sum())
    if n_empty and flat.shape[1]:
        warnings.warn(
            f"gapfill(): {n_empty} of {flat.shape[1]} pixel series of {name!r} in this block "
            "have no observation at all; they are left NaN (filled=False). Mask them out or "
            "use a longer time range.",
            EmptySeriesWarning,
            stacklevel=2,
        )
    fill = np.full(flat.shape, np.nan)
    unc = np.full(flat.shape, np.nan)
    sel = np.flatnonzero(has)
    if sel.size and method == "linear":
        fill[:, sel], unc[:, sel] = linear_fill(flat[:, sel], pos)
    elif sel.size and method == "savgol":
        fill[:, sel], unc[:, sel] = _savgol(flat[:, sel], pos, params["window"], params["order"])
    elif sel.size and method == "harmonic":
        fill[:, sel], unc[:, sel] = _harmonic(flat[:, sel], pos_days, params["harmonics"],
                                              params["period"], params["trend"])
    elif sel.size and method == "stori" and not rest[1].recurrent:
        from xfusion.training.stori_residual import fill_residual

        sar, weights = rest
        nf = sar.shape[0]
        s = sar.reshape(nf, nt, -1)[:, :, sel].astype(np.float64)
        fill[:, sel], unc[:, sel] = fill_residual(flat[:, sel], s, pos, day_of_year(times),
                                                  weights.trees(), weights.meta["stori"])
    elif sel.size and method == "stori":
        from xfusion.engine.device import resolve_device
        from xfusion.models.stori import impute

        sar, weights = rest
        meta = weights.meta["stori"]
        nf = sar.shape[0]
        s = sar.reshape(nf, nt, -1)[:, :, sel].astype(np.float64)
        xs = flat[:, sel]
        dev = resolve_device(device)
        imp, u = impute(weights.model(dev), prep_optical(xs, meta).T,
                        (~np.isnan(xs)).T.astype(np.float32), prep_sar(s, pos, meta), pos,
                        device=dev)
        fill[:, sel] = imp.T.astype(np.float64) * meta["opt_std"] + meta["opt_mean"]
        unc[:, sel] = u.T.astype(np.float64) * meta["opt_std"]
    flat_in = x.reshape(nt, -1)
    val = np.where(obs, flat_in, fill.astype(out_dtype))
    unc = np.where(obs & has[None], 0.0, unc).astype(out_dtype)
    return np.stack([val, unc]).reshape((2, *x.shape))


# --------------------------------------------------------------------------------------------
# public functions










def gapfill(
    ds: xr.Dataset,
    /,
    *,
    optical: str | Sequence[str] = "ndvi",
    sar: str | Sequence[str] | xr.Dataset | xr.DataArray | None = ("vh_db", "rvi"),
    method: GapfillMethod = "stori",
    weights: str | os.PathLike[str] | StoriWeights | None = None,
    config: StoriConfig | None = None,
    variant: Variant | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    window: int = 7,
    polyorder: int = 2,
    harmonics: int = 2,
    period: float = 365.25,
    trend: bool = False,
    device: str = "auto",
    rechunk: bool = False,
    progress: bool | None = None,
) -> xr.Dataset:
    """Fill the gaps of optical time series, per pixel, optionally guided by SAR (STORI).

    Every missing (NaN) step of every pixel's series is filled; observed values are copied
    unchanged (bit for bit). Lazy on dask input: the work is mapped over the spatial chunks
    with the whole time axis in one chunk, and nothing is computed here (with STORI and no
    ``weights``, training is one task of the graph).

    Parameters
    ----------
    ds : xarray.Dataset
        Series on a regular composite time axis (e.g. from :func:`xfusion.gapfill_inputs`),
        dims ``time`` and the spatial dims (``y, x`` or ``latitude, longitude``).
    optical : str or sequence of str, default "ndvi"
        Optical variable(s) to fill (each independently; STORI trains one net per variable).
    sar : str, sequence of str, xarray.Dataset, xarray.DataArray or None
        SAR features guiding STORI, default ``("vh_db", "rvi")``: names on ``ds``, or objects
        on the same grid and time axis. SAR gaps are interpolated in time. Ignored by the
        baselines.
    method : {"stori", "linear", "savgol", "harmonic"}, default "stori"
        ``"stori"``: SAR-guided, trained on this scene (see ``variant``; by default the
        linear fill plus a correction by boosted trees, more accurate than the baselines on
        realistic series, with the paper's recurrent net one keyword away);
        ``"linear"``: linear interpolation in time (nearest observation at the ends);
        ``"savgol"``: Savitzky-Golay (``window``, ``polyorder``) of the linear interpolation;
        ``"harmonic"``: least-squares fit of ``harmonics`` harmonics of ``period`` days
        (fewer when a pixel has few observations).
    weights : path or StoriWeights, optional
        Trained STORI weights (:func:`fit_stori`); default: train on this scene.
    config : StoriConfig, optional
        STORI settings; ``variant``, ``epochs`` and ``seed`` override its fields.
    variant : {"residual", "fixed", "faithful"}, optional
        ``"residual"`` (default): the linear fill plus a SAR-guided correction by boosted
        trees fitted on this scene (no torch needed; about 10-30 s of one core for 64 x 64 x
        73); ``"faithful"``: the paper's recurrent net as its public code;
        ``"fixed"``: that net with the code's bugs fixed (see :class:`StoriConfig`).
    epochs, seed : int, optional
        Shortcuts for the config fields (``epochs``: recurrent variants only).
    window, polyorder : int, default 7, 2
        Savitzky-Golay window (steps, odd; capped by the series length) and order.
    harmonics : int, default 2
        Harmonic regression: number of harmonics.
    period : float, default 365.25
        Harmonic regression: base period in days.
    trend : bool, default False
        Harmonic regression: add a linear trend.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        STORI's device, resolved in the worker (CUDA when it has one).
    rechunk : bool, default False
        Rechunk a time axis split over several chunks into one instead of raising.
    progress : bool or None, default None
        STORI training progress (epochs or rounds, loss, validation MAE, ETA): a
        ``tqdm.auto`` bar in a terminal or Jupyter, progress lines elsewhere; ``False``:
        silent; ``None``: the session's switch (:func:`xfusion.set_progress`,
        ``XFUSION_PROGRESS=0``). Does not change the result or the graph's keys.

    Returns
    -------
    xarray.Dataset
        Per optical variable ``v``: ``v`` (the filled series, same dtype; NaN only for pixels
        with no observation at all), ``v_filled`` (bool, True where a value was filled) and
        ``v_uncertainty`` (0 where observed; STORI: ``|x̂_forward - x̂_backward|``, the
        disagreement of the two directions; linear: ``|next - previous observation|``, NaN
        beyond the first/last observation; savgol and harmonic: the RMS residual of the fit
        at the pixel's observations; STORI residual: the mean absolute error measured on
        held-out pixels for gaps of the same length). Coordinates, ``spatial_ref`` and attrs
        of the input; attr ``gapfill_method``.

    Raises
    ------
    VariableNotFoundError
        An optical or SAR name is not on the dataset.
    MissingDimensionError
        No time or spatial dims, or extra dims on a variable.
    GridMismatchError
        SAR given as objects on another grid.
    TimeAxisError
        SAR and optical on different time axes.
    ChunkingError
        The time axis is split over several chunks (and ``rechunk=False``).
    InvalidParameterError
        Unknown method or bad parameters; STORI without SAR.
    WeightsMismatchError, WeightsNotFoundError, CheckpointError
        Weights that do not fit (number of SAR features, time step) or cannot be read.
    NotEnoughDataError
        Too few observed pixels to train STORI (raised when computing for dask input).
    TrainingInterrupted
        Ctrl-C before STORI's first epoch or validation stage completed (later, training
        stops, keeps the best model so far, logs a warning and the gaps are filled with it).
        In a dask graph the training task runs in a worker: an interrupt stops the
        computation, and the task stops when the interpreter exits.

    Warns
    -----
    EmptySeriesWarning
        Pixel series without any observation (left NaN), with their count (per chunk when
        computing lazily).

    See Also
    --------
    gapfill_inputs, composite, time_gaps, fit_stori, StoriConfig

    Notes
    -----
    Memory per task: one spatial chunk of every input over the whole time axis. The residual
    variant reads a 1-pixel SAR halo around each chunk (``sar_spatial=3``) and evaluates at
    most ``rounds`` trees per filled step; the recurrent variants cost about 7 MMAC per 46-step
    pixel (both directions, H = 96).

    Accuracy (``benchmarks/bench_gapfill.py``, realistic 5-day NDVI + SAR series with a
    winter overcast and cloud spells, held-out scenes): see ``benchmarks/README.md``.

    References
    ----------
    Cao W. et al., BRITS: Bidirectional Recurrent Imputation for Time Series, NeurIPS 2018.

    Examples
    --------
    >>> from xfusion.testing import synthetic_series
    >>> ds = synthetic_series((8, 8), seed=0)
    >>> out = gapfill(ds, optical="ndvi", method="linear")
    >>> sorted(out.data_vars)
    ['ndvi', 'ndvi_filled', 'ndvi_uncertainty']
    >>> bool(out.ndvi.notnull().all())
    True
    """
    require_choice(method, GAPFILL_METHODS, name="method", method=NAME)
    check_device(device)
    for pname, v, lo in (("window", window, 1), ("polyorder", polyorder, 0),
                         ("harmonics", harmonics, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise InvalidParameterError(
                f"{pname}={v!r} must be an integer >= {lo} for gapfill(method={method!r}).")
    if method == "savgol" and polyorder >= odd_window(window, 10**9):
        raise InvalidParameterError(
            f"polyorder={polyorder} must be smaller than window={window} (odd windows are "
            "used; an even window is reduced by one).")
    if not (isinstance(period, (int, float)) and period > 0):
        raise InvalidParameterError(f"period={period!r} must be a positive number of days.")
    stori = method == "stori"
    cfg = resolve_config(config, {"variant": variant, "epochs": epochs, "seed": seed}) if (
        stori) else None
    wobj: Any = None
    if stori and weights is not None:
        wobj = as_weights(weights)
    if stori and (wobj.recurrent if wobj is not None else cfg.recurrent):  # type: ignore[union-attr]
        from xfusion._compat import lazy_import

        lazy_import("torch", purpose="gapfill(method='stori') with a recurrent variant")
    dims, opts, sars = series_inputs(ds, optical, sar, need_sar=stori, rechunk=rechunk)
    if stori and weights is not None and len(opts) > 1:
        raise InvalidParameterError(
            f"weights= holds one STORI net, but {len(opts)} optical variables were given "
            f"({[str(o.name) for o in opts]!r}); fill them one call at a time.")
    times = np.asarray(opts[0].indexes[TIME].values, dtype="datetime64[ns]")
    pos, step = series_positions(times)
    pos_days = (times - times[0]) / np.timedelta64(1, "D")
    params = {"window": int(window), "order": int(polyorder), "harmonics": int(harmonics),
              "period": float(period), "trend": bool(trend)}
    if wobj is not None:
        _check_weights(wobj, sars, step)
    out_vars: dict[Hashable, xr.DataArray] = {}
    for opt in opts:
        arr = opt.data[None]
        arrays: list[Any] = [arr]
        extra: tuple[Any, ...] = ()
        if stori:
            window = (1 if wobj.recurrent else int(wobj.meta["stori"].get("sar_spatial", 1))
                      ) if wobj is not None else cfg  # type: ignore[union-attr]
            sar_arr = prepared_sar(sars, window)
            arrays.append(sar_arr)
            w = wobj if wobj is not None else train_graph(
                opt, sar_arr, [str(v.name) for v in sars], dims, cfg, device,  # type: ignore[arg-type]
                progress=progress)
            if isinstance(w, StoriWeights) and any(dask.is_dask_collection(a) for a in arrays):
                # one graph node shared by every block task (not copied into each task)
                w = dask.delayed(w, pure=True, name=f"xfusion.gapfill-weights-{w.token}")
            extra = (w,)
        dtype = opt.dtype
        lead = ((2,), (len(times),))
        res = map_blocks_halo(
            _gapfill_block, *arrays, halo=0, dtype=dtype,
            leading_chunks=lead if any(dask.is_dask_collection(a) for a in arrays) else None,
            method=NAME, token_parts=(method, params, cfg, str(opt.name)), extra=extra,
            kwargs={"method": method, "pos": pos, "pos_days": pos_days, "times": times,
                    "params": params, "name": str(opt.name), "device": device},
        )
        filled_vals = res[0]
        unc = res[1]
        coords = dict(opt.coords)
        attrs = dict(opt.attrs)
        vname = str(opt.name)
        missing = opt.isnull()
        out_vars[vname] = xr.DataArray(filled_vals, dims=opt.dims, coords=coords, attrs=attrs,
                                       name=vname)
        out_vars[f"{vname}_filled"] = (missing & out_vars[vname].notnull()).rename(
            f"{vname}_filled").assign_attrs(long_name=f"{vname} value filled by gapfill")
        out_vars[f"{vname}_uncertainty"] = xr.DataArray(
            unc, dims=opt.dims, coords=coords, name=f"{vname}_uncertainty",
            attrs={"long_name": f"uncertainty of the filled {vname} ({method})",
                   **({"units": attrs["units"]} if "units" in attrs else {})})
    res_ds = xr.Dataset(out_vars, attrs={**ds.attrs, "gapfill_method": method})
    for v in res_ds.data_vars.values():
        if "spatial_ref" in res_ds.coords:
            v.encoding["grid_mapping"] = "spatial_ref"
    return res_ds


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: Any = None) -> int:
    """Pixels a tile reads around itself: the residual variant's SAR window (1 by default)."""
    variant = params.get("variant", "residual")
    if weights is not None:
        try:
            w = as_weights(weights)
        except Exception:  # unreadable weights are reported by the method itself
            return 1
        return int(w.meta["stori"].get("sar_spatial", 1)) // 2 if not w.recurrent else 0
    if variant != "residual":
        return 0
    return int(params.get("sar_spatial") or 3) // 2


def _check_weights(w: StoriWeights, sars: list[xr.DataArray], step: float) -> None:
    if w.n_sar != len(sars):
        raise WeightsMismatchError(
            f"The STORI weights were trained with {w.n_sar} SAR feature(s) "
            f"{w.meta['stori'].get('sar')!r}, but {len(sars)} were given "
            f"({[str(v.name) for v in sars]!r}). Pass the same features in the same order."
        )
    wstep = float(w.meta["stori"].get("step_days", step))
    if abs(wstep - step) > 0.25 * wstep:
        raise WeightsMismatchError(
            f"The STORI weights were trained on {wstep:g}-day composites, but this series has "
            f"{step:g}-day steps. Composite with xfusion.composite(..., days={round(wstep)}) or "
            "train on this series (weights=None)."
        )

