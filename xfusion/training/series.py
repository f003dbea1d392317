"""Optical/SAR time series of a cube, prepared for gap filling and for training STORI.

The variables of a series (:func:`series_inputs`: the optical variable and the SAR features,
their time axis in one chunk), the linear fill of the observed steps (:func:`linear_fill`) and
the normalisation of optical and SAR values (:func:`prep_optical`, :func:`prep_sar`), shared by
:func:`xfusion.gapfill` and :func:`xfusion.training.stori.fit_stori`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from xfusion.cube.roles import as_names, float_data
from xfusion.cube.validate import (
    TIME,
    get_geobox,
    require_same_grid,
    require_time,
    require_vars,
    spatial_dims,
)
from xfusion.errors import (
    ChunkingError,
    InvalidParameterError,
    MissingDimensionError,
    TimeAxisError,
    VariableNotFoundError,
)

__all__ = ["linear_fill", "prep_optical", "prep_sar", "series_inputs", "series_positions"]


def neighbours(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the last observed step <= t and of the next observed step >= t, along axis 0
    (-1 / T when there is none)."""
    nt = obs.shape[0]
    idx = np.arange(nt).reshape((-1,) + (1,) * (obs.ndim - 1))
    prev = np.maximum.accumulate(np.where(obs, idx, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(obs, idx, nt)[::-1], axis=0)[::-1]
    return prev, nxt


def linear_fill(x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along axis 0 of ``x`` (T, P) at positions ``pos``; edges take the
    nearest observation. Returns ``(filled, |next - previous|)`` (NaN where one-sided)."""
    nt = x.shape[0]
    obs = ~np.isnan(x)
    prev, nxt = neighbours(obs)
    pi = np.clip(prev, 0, nt - 1)
    ni = np.clip(nxt, 0, nt - 1)
    xp = np.take_along_axis(x, pi, axis=0)
    xn = np.take_along_axis(x, ni, axis=0)
    tp = pos[pi]
    tn = pos[ni]
    both = (prev >= 0) & (nxt < nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(both & (tn > tp), (pos[:, None] - tp) / (tn - tp), 0.0)
        out = np.where(both, xp + w * (xn - xp), np.where(prev >= 0, xp, xn))
    out = np.where((prev < 0) & (nxt >= nt), np.nan, out)
    unc = np.where(both, np.abs(xn - xp), np.nan)
    return out, unc


def fill_nan_series(s: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 (T, ...) with nearest values at the edges."""
    shp = s.shape
    out, _ = linear_fill(s.reshape(shp[0], -1), pos)
    return out.reshape(shp)


def prep_optical(x: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    return ((x - meta["opt_mean"]) / meta["opt_std"]).astype(np.float32)


def prep_sar(s: np.ndarray, pos: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """SAR (F, T, P) → model input (P, T, F): gaps interpolated, scaled, smoothed, NaN → 0."""
    from scipy.signal import savgol_filter

    nf, nt, npx = s.shape
    s = fill_nan_series(np.moveaxis(s, 1, 0).reshape(nt, nf * npx).astype(np.float64), pos)
    s = s.reshape(nt, nf, npx)
    if meta["sar_scaling"] == "scene":
        mean = np.asarray(meta["sar_mean"], np.float64)[None, :, None]
        std = np.asarray(meta["sar_std"], np.float64)[None, :, None]
        s = (s - mean) / std
    else:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(s, axis=0, keepdims=True)
            hi = np.nanmax(s, axis=0, keepdims=True)
        rng = hi - lo
        s = np.where(rng > 0, (s - lo) / np.where(rng > 0, rng, 1.0) * 2 - 1, 0.0)
    s = np.nan_to_num(s, nan=0.0)  # pixels without any SAR value: the scene mean / 0
    w = odd_window(int(meta["sar_window"]), nt)
    order = int(meta["sar_order"])
    if w > order and w >= 3:
        mode = "wrap" if meta["sar_scaling"] == "sample" else "interp"
        s = savgol_filter(s, w, order, axis=0, mode=mode)
    return np.ascontiguousarray(np.transpose(s, (2, 0, 1))).astype(np.float32)


def series_positions(times: np.ndarray) -> tuple[np.ndarray, float]:
    """Step positions (in median steps) and the median step in days."""
    days = (times - times[0]) / np.timedelta64(1, "D")
    step = float(np.median(np.diff(days))) if days.size > 1 else 1.0
    step = step if step > 0 else 1.0
    return (days / step).astype(np.float64), step


def odd_window(window: int, nt: int) -> int:
    w = min(int(window), nt if nt % 2 else nt - 1)
    return w if w % 2 else w - 1


def fmt_times(t: np.ndarray, limit: int = 6) -> list[str]:
    out = [str(np.datetime64(v, "D")) for v in t]
    return out if len(out) <= limit else [*out[: limit // 2], "...", *out[-limit // 2:]]


def series_var(obj: xr.Dataset, name: str, dims: tuple[str, str], role: str) -> xr.DataArray:
    var = float_data(obj, name, dims=dims)
    extra = [d for d in var.dims if d not in (TIME, *dims)]
    if TIME not in var.dims:
        raise MissingDimensionError(
            f"The {role} variable {name!r} has no time dimension (dims {tuple(var.dims)!r}); "
            f"gapfill() fills series along time. Give a (time, {dims[0]}, {dims[1]}) variable."
        )
    if extra:
        raise MissingDimensionError(
            f"The {role} variable {name!r} has extra dims {extra!r} besides time and "
            f"{list(dims)!r}. Select or split them first, e.g. `ds[{name!r}].isel({extra[0]}=0)` "
            f"or `ds.to_dataset(dim={extra[0]!r})`."
        )
    return var.transpose(TIME, *dims)


def sar_vars(ds: xr.Dataset, sar: Any, dims: tuple[str, str]) -> list[xr.DataArray]:
    """Resolve ``sar=`` (names on ds, a Dataset, a DataArray or DataArrays) to variables."""
    if sar is None:
        raise InvalidParameterError(
            "method='stori' needs SAR features: pass sar=['vh_db', 'rvi'] (variables on the "
            "dataset) or a Dataset of them. Make them with xfusion.gapfill_inputs(s2, s1) or "
            "xfusion.s1_features(s1), or use a method without SAR ('linear', 'savgol', "
            "'harmonic')."
        )
    if isinstance(sar, str) or (isinstance(sar, Sequence) and all(isinstance(v, str) for v in sar)):
        names = as_names(sar, role="sar")
        if not names:
            return sar_vars(ds, None, dims)
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"SAR variable {missing[0]!r} not found on the dataset. Variables on the dataset "
                f"include {sorted(map(str, ds.data_vars))!r}. Derive SAR features from VV/VH "
                "with xfusion.s1_features(s1) or xfusion.gapfill_inputs(s2, s1)."
            )
        return [series_var(ds, n, dims, "SAR") for n in names]
    if isinstance(sar, xr.DataArray):
        items = [sar]
    elif isinstance(sar, xr.Dataset):
        items = [sar[v] for v in sar.data_vars if TIME in sar[v].dims]
        if not items:
            raise InvalidParameterError(
                f"The SAR dataset has no variable with a time dimension (variables "
                f"{sorted(map(str, sar.data_vars))!r}).")
    elif isinstance(sar, Sequence) and all(isinstance(v, xr.DataArray) for v in sar):
        items = list(sar)
    else:
        raise InvalidParameterError(
            f"sar= must be variable name(s) on the dataset, an xarray Dataset/DataArray or a "
            f"list of DataArrays; found {type(sar).__name__}."
        )
    out = []
    for k, da_ in enumerate(items):
        name = str(da_.name) if da_.name is not None else f"sar_{k}"
        sds = da_.to_dataset(name=name)
        require_same_grid(ds, sds, names=("optical", "sar"))
        require_time(sds, name="SAR input")
        sd = spatial_dims(sds, name="SAR input")
        var = series_var(sds, name, sd, "SAR")
        out.append(var.rename({sd[0]: dims[0], sd[1]: dims[1]}) if sd != dims else var)
    return out


def check_times(opt: xr.DataArray, sar: xr.DataArray) -> None:
    to = np.asarray(opt.indexes[TIME].values, dtype="datetime64[ns]")
    ts = np.asarray(sar.indexes[TIME].values, dtype="datetime64[ns]")
    if to.shape == ts.shape and np.array_equal(to, ts):
        return
    only_o = np.setdiff1d(to, ts)
    only_s = np.setdiff1d(ts, to)
    raise TimeAxisError(
        f"The SAR variable {sar.name!r} and the optical variable {opt.name!r} are on different "
        f"time axes: optical has {to.size} steps ({fmt_times(to[[0, -1]] if to.size else to)}), "
        f"SAR has {ts.size} ({fmt_times(ts[[0, -1]] if ts.size else ts)}); dates only in the "
        f"optical series: {fmt_times(only_o)!r}, only in the SAR series: {fmt_times(only_s)!r}. "
        "Composite both onto the same periods, e.g. `xfusion.gapfill_inputs(s2, s1, days=8)`, or "
        "`xfusion.composite(sar, days=8, start=..., end=...)` with the optical start and end."
    )


def time_in_one_chunk(var: xr.DataArray, *, rechunk: bool, role: str) -> xr.DataArray:
    data = var.data
    if not dask.is_dask_collection(data):
        return var
    tchunks = data.chunks[0]
    if len(tchunks) == 1:
        return var
    if rechunk:
        return var.chunk({TIME: -1})
    dims = list(var.dims[1:])
    raise ChunkingError(
        f"gapfill() needs the whole time axis of every pixel in one chunk, but the {role} "
        f"variable {var.name!r} is split into {len(tchunks)} chunks along 'time' "
        f"({tchunks[:4]}{'...' if len(tchunks) > 4 else ''}). Rechunk first: "
        f"`ds = ds.chunk({{'time': -1}})` (smaller spatial chunks keep memory down, e.g. "
        f"`ds.chunk({{'time': -1, {dims[0]!r}: 256, {dims[1]!r}: 256}})`), or pass rechunk=True."
    )


def series_inputs(ds: xr.Dataset, optical: Any, sar: Any, *, need_sar: bool,
            rechunk: bool) -> tuple[tuple[str, str], list[xr.DataArray], list[xr.DataArray]]:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"gapfill() expects an xarray.Dataset holding the series, found "
            f"{type(ds).__name__}. Convert a DataArray with `da.to_dataset(name='ndvi')`."
        )
    names = as_names(optical, role="optical")
    if not names:
        raise InvalidParameterError(
            "gapfill() needs an optical variable: optical= is empty. Pass e.g. optical='ndvi'.")
    require_vars(ds, names, role="optical variable")
    dims = spatial_dims(ds, name="input")
    get_geobox(ds, name="input")
    require_time(ds, name="input")
    opts = [time_in_one_chunk(series_var(ds, n, dims, "optical"), rechunk=rechunk,
                               role="optical") for n in names]
    sars: list[xr.DataArray] = []
    if need_sar:
        sars = [time_in_one_chunk(v, rechunk=rechunk, role="SAR")
                for v in sar_vars(ds, sar, dims)]
        for v in sars:
            check_times(opts[0], v)
    return dims, opts, sars


def stack_sar(sars: list[xr.DataArray]) -> Any:
    datas = [v.data for v in sars]
    if any(dask.is_dask_collection(d) for d in datas):
        import dask.array as da

        return da.stack([d if dask.is_dask_collection(d) else da.asarray(d) for d in datas]).rechunk({0: -1})
    return np.stack([np.asarray(d) for d in datas])
