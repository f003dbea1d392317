"""Inputs for time-series gap filling: Sentinel-2/Sentinel-1 preparation and N-day composites.

The STORI-style pipeline (:func:`xfusion.gapfill`) works on a regular time axis of N-day
composites (8 days, 46 per year, by default) with the optical variable and the SAR features on
one grid:

* :func:`mask_s2` / :func:`s2_ndvi`: Sentinel-2 L2A bands masked by the scene classification
  (SCL classes ``0, 1, 3, 8, 9, 10, 11`` = nodata, saturated, cloud shadow, cloud medium/high,
  cirrus, snow), with the BOA offset of processing baseline 04.00 handled;
* :func:`s1_features`: Sentinel-1 VV/VH (linear gamma0/sigma0) into VH in dB and the radar
  vegetation index RVI = 4 VH / (VV + VH);
* :func:`composite`: N-day composites (mean, median, max...) of any time series, anchored on
  January 1 of each year (46 periods per year for 8 days) or on a start date;
* :func:`gapfill_inputs`: all of the above at once, SAR resampled onto the optical grid and
  both on one composite time axis;
* :func:`time_gaps`: the per-pixel time gap δ since the last observation (BRITS convention).

Everything is lazy on dask input: compositing reads, per period, only the dates that fall in
it (one task per period and spatial chunk), so memory stays at a few dates per chunk.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.cube.build import to_datetime64
from xfusion.cube.roles import require_choice
from xfusion.cube.validate import TIME, get_nodata, require_time, require_vars, spatial_dims
from xfusion.errors import InvalidParameterError, TimeAxisError

__all__ = [
    "ANCHORS",
    "REDUCERS",
    "SCL_INVALID",
    "Anchor",
    "Reducer",
    "composite",
    "composite_periods",
    "gapfill_inputs",
    "mask_s2",
    "s1_features",
    "s2_ndvi",
    "time_gaps",
]

SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
"""Sentinel-2 SCL classes treated as unusable: no data, saturated/defective, cloud shadow,
cloud medium and high probability, thin cirrus, snow/ice."""

Anchor: TypeAlias = Literal["year", "start"]
"""``"year"``: periods restart on January 1 of each year (MODIS-style, 46 x 8 days per year, the
last period of a year is shorter); ``"start"``: periods follow each other from the start date."""

ANCHORS: tuple[str, ...] = ("year", "start")

Reducer: TypeAlias = Literal["mean", "median", "max", "min", "first", "last"]
"""How the valid values of one pixel within one period are combined."""

REDUCERS: tuple[str, ...] = ("mean", "median", "max", "min", "first", "last")

SAR_FEATURES: tuple[str, ...] = ("vh_db", "vv_db", "rvi", "vh_vv_db")
"""Features :func:`s1_features` can derive from VV and VH."""

_BASELINE4_DATE = np.datetime64("2022-01-25", "ns")


# --------------------------------------------------------------------------------------------
# composite periods


def _year_start(t: np.datetime64) -> np.datetime64:
    return np.datetime64(str(np.datetime64(t, "Y")) + "-01-01", "ns")


def composite_periods(
    start: Any,
    end: Any,
    /,
    *,
    days: int = 8,
    anchor: Anchor = "year",
) -> tuple[np.ndarray, np.ndarray]:
    """Return the composite periods ``[begin, end)`` covering the dates ``start..end``.

    Parameters
    ----------
    start, end : date-like
        First and last date to cover (inclusive).
    days : int, default 8
        Period length in days.
    anchor : {"year", "start"}, default "year"
        ``"year"``: periods start on January 1 + k x ``days`` of each year and the last period
        of a year ends on the next January 1 (46 periods per year for 8 days, the STORI and
        MODIS convention); ``"start"``: consecutive periods from ``start`` (floored to the day).

    Returns
    -------
    begins, ends : numpy.ndarray of datetime64[ns]
        Period starts (the composite time coordinate) and exclusive ends.

    Raises
    ------
    InvalidParameterError
        ``days`` not a positive integer, unknown ``anchor``.
    TimeAxisError
        ``end`` before ``start``.

    Examples
    --------
    >>> b, e = composite_periods("2021-01-01", "2021-12-31")
    >>> len(b), str(b[-1])[:10], str(e[-1])[:10]
    (46, '2021-12-27', '2022-01-01')
    """
    if not isinstance(days, (int, np.integer)) or isinstance(days, bool) or days < 1:
        raise InvalidParameterError(
            f"days={days!r} must be a positive integer (the composite period in days), e.g. 8."
        )
    require_choice(anchor, ANCHORS, name="anchor", method="composite")
    t0 = to_datetime64(start, what="start").astype("datetime64[D]").astype("datetime64[ns]")
    t1 = to_datetime64(end, what="end")
    if t1 < t0:
        raise TimeAxisError(
            f"end={str(t1)[:10]!r} is before start={str(t0)[:10]!r}; give end >= start."
        )
    step = np.timedelta64(int(days), "D")
    begins: list[np.datetime64] = []
    ends: list[np.datetime64] = []
    if anchor == "start":
        b = t0
        while b <= t1:
            begins.append(b)
            ends.append(b + step)
            b = b + step
    else:
        year = _year_start(t0)
        while year <= t1:
            nxt = _year_start(year + np.timedelta64(366, "D"))
            b = year
            while b < nxt:
                e = min(b + step, nxt)
                if e > t0 and b <= t1:
                    begins.append(b)
                    ends.append(e)
                b = b + step
            year = nxt
    return (np.array(begins, dtype="datetime64[ns]"), np.array(ends, dtype="datetime64[ns]"))


# --------------------------------------------------------------------------------------------
# per-period reduction kernels (numpy, warning-free on all-NaN pixels)


def _reduce_block(x: np.ndarray, *, reducer: str) -> np.ndarray:
    """Reduce axis 0 of ``x`` ignoring NaN; all-NaN pixels give NaN, never a warning."""
    valid = ~np.isnan(x)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if reducer == "mean":
            out = np.where(valid, x, 0).sum(axis=0) / n
        elif reducer == "median":
            out = np.nanmedian(x, axis=0) if x.shape[0] else np.full(x.shape[1:], np.nan)
        elif reducer == "max":
            out = np.fmax.reduce(x, axis=0)
        elif reducer == "min":
            out = np.fmin.reduce(x, axis=0)
        else:  # first / last valid value
            idx = np.argmax(valid, axis=0) if reducer == "first" else (
                x.shape[0] - 1 - np.argmax(valid[::-1], axis=0)
            )
            out = np.take_along_axis(x, idx[None], axis=0)[0]
    out = np.where(n > 0, out, np.nan)
    return out.astype(x.dtype, copy=False)


def _count_block(x: np.ndarray) -> np.ndarray:
    return (~np.isnan(x)).sum(axis=0).astype(np.int16)


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _composite_array(data: Any, groups: list[np.ndarray], *, reducer: str, count: bool,
                     token: str) -> tuple[Any, Any]:
    """Composite a time-first numpy/dask array; return (values, counts or None)."""
    shape = data.shape[1:]
    if not _is_dask(data):
        vals, cnts = [], []
        for idx in groups:
            x = data[idx]
            vals.append(_reduce_block(x, reducer=reducer) if idx.size else
                        np.full(shape, np.nan, dtype=data.dtype))
            if count:
                cnts.append(_count_block(x) if idx.size else np.zeros(shape, np.int16))
        return np.stack(vals), (np.stack(cnts) if count else None)
    import dask.array as da
    from dask.base import tokenize

    vals, cnts = [], []
    for k, idx in enumerate(groups):
        if idx.size == 0:
            vals.append(da.full(shape, np.nan, dtype=data.dtype, chunks=data.chunks[1:]))
            if count:
                cnts.append(da.zeros(shape, dtype=np.int16, chunks=data.chunks[1:]))
            continue
        x = data[idx].rechunk({0: -1})
        tok = tokenize(token, x.name, reducer, k)
        vals.append(da.map_blocks(_reduce_block, x, reducer=reducer, drop_axis=0,
                                  dtype=data.dtype, name=f"xfusion.composite-{tok}"))
        if count:
            cnts.append(da.map_blocks(_count_block, x, drop_axis=0, dtype=np.int16,
                                      name=f"xfusion.composite-count-{tok}"))
    return da.stack(vals), (da.stack(cnts) if count else None)


def composite(
    obj: xr.Dataset | xr.DataArray,
    /,
    *,
    days: int = 8,
    anchor: Anchor = "year",
    start: Any = None,
    end: Any = None,
    reducer: Reducer = "mean",
    count: bool = False,
) -> xr.Dataset | xr.DataArray:
    """Composite a time series into regular N-day periods (lazy on dask input).

    Every time-dependent variable is reduced, pixel by pixel, over the valid (non-NaN) values
    of the dates falling in each period; a pixel with no valid value in a period is NaN
    (a gap to fill), and a period with no date at all is an all-NaN step, so the output time
    axis is regular whatever the acquisitions were. Variables without ``time`` and coordinates
    that do not depend on time are kept as they are.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        Input with a sorted ``time`` dimension; NaN means unobserved (mask clouds first, e.g.
        with :func:`mask_s2`). Integer variables with a declared nodata become float32.
    days : int, default 8
        Period length in days.
    anchor : {"year", "start"}, default "year"
        Periods restart every January 1 (46 x 8-day periods per year) or run from ``start``.
        See :func:`composite_periods`.
    start, end : date-like, optional
        Dates to cover (default: the first and last date of ``obj``). Periods without data
        are all NaN.
    reducer : {"mean", "median", "max", "min", "first", "last"}, default "mean"
        How the valid values of a period are combined. Composite SAR in linear power (mean)
        and convert to dB afterwards (:func:`s1_features`).
    count : bool, default False
        Also return ``<name>_count`` (int16): the number of valid values per pixel and period.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        Same type as ``obj``; ``time`` = period starts, a ``period_end`` coordinate (exclusive
        end) and ``n_dates`` (number of input dates in the period) along ``time``; spatial
        coords, ``spatial_ref`` and attrs kept; attrs ``composite_days``, ``composite_anchor``,
        ``composite_reducer`` added. Other coordinates along ``time`` (``observed_*``) are
        dropped. On dask input each period is one chunk along ``time``.

    Raises
    ------
    MissingDimensionError, TimeAxisError
        No, unsorted or duplicated ``time``; ``end`` before ``start``.
    InvalidParameterError
        Bad ``days``, ``anchor`` or ``reducer``.

    See Also
    --------
    gapfill_inputs : S2 + S1 composites on one grid and time axis.
    xfusion.gapfill : fill the gaps of the composites.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = np.array(["2021-01-02", "2021-01-05", "2021-01-12"], dtype="datetime64[ns]")
    >>> da = xr.DataArray([1.0, np.nan, 3.0], dims="time", coords={"time": t}, name="v")
    >>> c = composite(da, days=8)
    >>> c.values.tolist(), [str(v)[:10] for v in c.time.values]
    ([1.0, 3.0], ['2021-01-01', '2021-01-09'])
    """
    require_choice(reducer, REDUCERS, name="reducer", method="composite")
    require_time(obj, name="input")
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else "values"
        out = composite(obj.to_dataset(name=name), days=days, anchor=anchor, start=start,
                        end=end, reducer=reducer, count=False)
        res = out[name]
        res.name = obj.name
        return res
    times = np.asarray(obj.indexes[TIME].values, dtype="datetime64[ns]")
    if times.size == 0:
        raise TimeAxisError("The input has an empty time axis; nothing to composite.")
    begins, ends = composite_periods(times[0] if start is None else start,
                                     times[-1] if end is None else end, days=days, anchor=anchor)
    pos = np.searchsorted(ends, times, side="right")
    inside = (pos < begins.size) & (times >= begins[0])
    groups = [np.flatnonzero(inside & (pos == k)) for k in range(begins.size)]
    from dask.base import tokenize

    token = tokenize(days, anchor, reducer, begins.tolist())
    out_vars: dict[Hashable, xr.DataArray] = {}
    for vname, var in obj.data_vars.items():
        if TIME not in var.dims:
            out_vars[vname] = var
            continue
        fv = _float(obj, str(vname)).transpose(TIME, ...)
        vals, cnts = _composite_array(fv.data, groups, reducer=reducer, count=count,
                                      token=(token, str(vname)))
        coords = {c: v for c, v in fv.coords.items() if TIME not in v.dims}
        out_vars[vname] = xr.DataArray(vals, dims=fv.dims, coords=coords, attrs=dict(var.attrs))
        if count:
            out_vars[f"{vname}_count"] = xr.DataArray(
                cnts, dims=fv.dims, coords=coords,
                attrs={"long_name": f"number of valid {vname} values in the period"})
    res = xr.Dataset(out_vars, attrs=dict(obj.attrs))
    res = res.assign_coords({
        TIME: begins,
        "period_end": (TIME, ends),
        "n_dates": (TIME, np.array([g.size for g in groups], dtype=np.int32)),
    })
    for c, v in obj.coords.items():
        if c not in res.coords and TIME not in v.dims:
            res = res.assign_coords({c: v})
    res.attrs.update(composite_days=int(days), composite_anchor=anchor,
                     composite_reducer=reducer)
    return res


def _float(ds: xr.Dataset, name: str) -> xr.DataArray:
    """Variable ``name`` as floats with NaN gaps (time first when present); works without
    spatial dims (plain series) too."""
    var = ds[name]
    if TIME in var.dims:
        var = var.transpose(TIME, ...)
    nd = get_nodata(var)
    out = var if np.issubdtype(var.dtype, np.floating) else var.astype(np.float32)
    if nd is not None and not (isinstance(nd, float) and np.isnan(nd)):
        out = out.where(var != nd)
    out = out.copy(deep=False)
    out.attrs = {k: v for k, v in var.attrs.items()
                 if k not in ("nodata", "_FillValue", "missing_value")}
    out.encoding = {}
    out.name = name
    return out


# --------------------------------------------------------------------------------------------
# Sentinel-2 and Sentinel-1 preparation


def _require(ds: Any, names: Sequence[str], role: str, func: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"{func}() expects an xarray.Dataset holding the {role} bands, found "
            f"{type(ds).__name__}. Load one with xfusion.load_cube(items, bands=[...])."
        )
    require_vars(ds, names, role=f"{role} band")


def mask_s2(
    ds: xr.Dataset,
    /,
    *,
    scl: str = "SCL",
    invalid: Sequence[int] = SCL_INVALID,
    bands: Sequence[str] | None = None,
) -> xr.Dataset:
    """Mask Sentinel-2 L2A bands with the scene classification layer (lazy).

    Parameters
    ----------
    ds : xarray.Dataset
        Sentinel-2 bands and the SCL band, e.g. from
        ``xfusion.load_cube(items, bands=["B04", "B08", "SCL"])``.
    scl : str, default "SCL"
        Name of the scene classification variable. Pixels where it is NaN are masked too.
    invalid : sequence of int, default :data:`SCL_INVALID`
        SCL classes to mask (default: 0 no data, 1 saturated, 3 cloud shadow, 8/9 cloud
        medium/high probability, 10 cirrus, 11 snow).
    bands : sequence of str, optional
        Bands to keep and mask (default: every time-dependent variable except ``scl``).

    Returns
    -------
    xarray.Dataset
        The bands as floats with NaN where the SCL class is invalid; ``scl`` dropped.

    Raises
    ------
    VariableNotFoundError
        ``scl`` or a band is not on the dataset.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"B04": ("time", [0.1, 0.2]), "SCL": ("time", [4, 9])},
    ...                 coords={"time": np.array(["2021-01-01", "2021-01-06"], "M8[ns]")})
    >>> mask_s2(ds).B04.values.tolist()
    [0.1, nan]
    """
    _require(ds, [scl], "Sentinel-2", "mask_s2")
    names = list(bands) if bands is not None else [
        str(v) for v in ds.data_vars if v != scl and TIME in ds[v].dims]
    _require(ds, names, "Sentinel-2", "mask_s2")
    cls = ds[scl]
    bad = cls.isnull() | cls.isin(list(invalid))
    out = {n: _float(ds, n).where(~bad) for n in names}
    return xr.Dataset(out, attrs=dict(ds.attrs))


def _boa_offset(ds: xr.Dataset, var: xr.DataArray, boa_offset: Any) -> Any:
    """The offset (DN) to add per time: a number, or "auto" from baseline/date."""
    if boa_offset is None:
        return 0.0
    if isinstance(boa_offset, str):
        if boa_offset != "auto":
            raise InvalidParameterError(
                f"boa_offset={boa_offset!r} is not valid; give None (values already are "
                "reflectance), a number of DN (e.g. -1000), or 'auto' (-1000 DN for "
                "processing baseline >= 04.00, from `s2:processing_baseline` or the date)."
            )
        times = np.asarray(ds.indexes[TIME].values, dtype="datetime64[ns]")
        key = "s2:processing_baseline"
        if key in ds.variables and ds[key].dims == (TIME,):
            base = np.array([float(str(v)) if str(v) not in ("", "nan", "None") else np.nan
                             for v in np.asarray(ds[key].values)])
            new = np.where(np.isnan(base), times >= _BASELINE4_DATE, base >= 4.0)
        else:
            new = times >= _BASELINE4_DATE
        return xr.DataArray(np.where(new, -1000.0, 0.0), dims=TIME, coords={TIME: ds[TIME]})
    try:
        return float(boa_offset)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"boa_offset={boa_offset!r} must be None, a number or 'auto'."
        ) from None


def s2_ndvi(
    ds: xr.Dataset,
    /,
    *,
    red: str = "B04",
    nir: str = "B08",
    scl: str | None = "SCL",
    invalid: Sequence[int] = SCL_INVALID,
    boa_offset: float | Literal["auto"] | None = None,
) -> xr.DataArray:
    """NDVI = (NIR - red) / (NIR + red) of Sentinel-2 L2A, masked by SCL (lazy).

    Parameters
    ----------
    ds : xarray.Dataset
        Red, NIR and (optionally) SCL variables with ``time`` and spatial dims.
    red, nir : str, default "B04", "B08"
        Band names (``"B8A"`` for the 20 m narrow NIR).
    scl : str or None, default "SCL"
        Scene classification band; ``None`` uses the bands as they are (already masked).
    invalid : sequence of int
        SCL classes to mask (see :func:`mask_s2`).
    boa_offset : float, "auto" or None
        Offset in DN added to both bands before the ratio. ``None`` (default): the bands are
        already reflectance (or DN without offset). ``"auto"``: -1000 DN for processing
        baseline >= 04.00 (from an ``s2:processing_baseline`` variable along ``time``, e.g.
        ``load_cube(..., with_properties=["s2:processing_baseline"])``, else from the date:
        acquisitions from 2022-01-25 on), 0 before. The bands must then be raw DN.

    Returns
    -------
    xarray.DataArray
        ``ndvi`` (float32), NaN where masked, where NIR + red <= 0, or outside [-1, 1].

    Raises
    ------
    VariableNotFoundError
        A band is missing (the message lists the variables).
    InvalidParameterError
        Bad ``boa_offset``.
    """
    names = [red, nir] + ([scl] if scl is not None else [])
    _require(ds, names, "Sentinel-2", "s2_ndvi")
    bands = mask_s2(ds, scl=scl, invalid=invalid, bands=[red, nir]) if scl is not None else (
        xr.Dataset({n: _float(ds, n) for n in (red, nir)}))
    off = _boa_offset(ds, bands[red], boa_offset)
    r = bands[red] + off
    n = bands[nir] + off
    den = n + r
    ndvi = ((n - r) / den.where(den > 0)).astype(np.float32)
    ndvi = ndvi.where((ndvi >= -1) & (ndvi <= 1))
    ndvi.name = "ndvi"
    ndvi.attrs = {"long_name": "normalised difference vegetation index", "units": "1"}
    return ndvi


def s1_features(
    ds: xr.Dataset,
    /,
    *,
    vv: str = "vv",
    vh: str = "vh",
    features: Sequence[str] = ("vh_db", "rvi"),
) -> xr.Dataset:
    """Sentinel-1 features from VV and VH backscatter in linear power (lazy).

    Parameters
    ----------
    ds : xarray.Dataset
        VV and VH as linear power (``sentinel-1-rtc`` gamma0, or sigma0), e.g. 8-day mean
        composites (composite in linear power, then derive the features).
    vv, vh : str, default "vv", "vh"
        Variable names.
    features : sequence of str, default ("vh_db", "rvi")
        Any of ``"vh_db"`` (10 log10 VH), ``"vv_db"``, ``"rvi"`` (4 VH / (VV + VH)) and
        ``"vh_vv_db"`` (the cross ratio VH/VV in dB).

    Returns
    -------
    xarray.Dataset
        One float32 variable per feature; NaN where VV or VH is NaN or not positive.

    Raises
    ------
    VariableNotFoundError
        ``vv`` or ``vh`` missing.
    InvalidParameterError
        An unknown feature name.
    """
    _require(ds, [vv, vh], "Sentinel-1", "s1_features")
    for f in features:
        require_choice(f, SAR_FEATURES, name="feature", method="s1_features")
    v = _float(ds, vv)
    h = _float(ds, vh)
    v = v.where(v > 0)
    h = h.where(h > 0)
    make = {
        "vh_db": lambda: 10 * np.log10(h),
        "vv_db": lambda: 10 * np.log10(v),
        "rvi": lambda: 4 * h / (v + h),
        "vh_vv_db": lambda: 10 * np.log10(h / v),
    }
    units = {"vh_db": "dB", "vv_db": "dB", "rvi": "1", "vh_vv_db": "dB"}
    out = {}
    for f in features:
        arr = make[f]().astype(np.float32)
        arr.attrs = {"units": units[f]}
        arr.name = f
        out[f] = arr
    return xr.Dataset(out, attrs=dict(ds.attrs))


def gapfill_inputs(
    optical: xr.Dataset,
    sar: xr.Dataset,
    /,
    *,
    band: str = "ndvi",
    red: str = "B04",
    nir: str = "B08",
    scl: str | None = "SCL",
    invalid: Sequence[int] = SCL_INVALID,
    boa_offset: float | Literal["auto"] | None = None,
    vv: str = "vv",
    vh: str = "vh",
    sar_features: Sequence[str] = ("vh_db", "rvi"),
    days: int = 8,
    anchor: Anchor = "year",
    start: Any = None,
    end: Any = None,
    reducer: Reducer = "mean",
    resampling: str | None = "average",
) -> xr.Dataset:
    """Sentinel-2 and Sentinel-1 acquisitions → composites on one grid and time axis (lazy).

    The optical variable is NDVI computed per acquisition from ``red``/``nir`` (``band="ndvi"``)
    or any optical band, masked by SCL; VV/VH are resampled onto the optical grid (when their
    grid differs), composited as linear power and turned into ``sar_features``. Both get the
    same N-day periods (from the earliest to the latest date of either input, unless
    ``start``/``end`` are given), so the result is ready for :func:`xfusion.gapfill`.

    Parameters
    ----------
    optical : xarray.Dataset
        Sentinel-2 L2A bands (and SCL), dims ``time`` and spatial.
    sar : xarray.Dataset
        Sentinel-1 VV and VH in linear power, dims ``time`` and spatial (any grid/CRS).
    band : str, default "ndvi"
        ``"ndvi"`` or the name of an optical band to composite as it is.
    red, nir, scl, invalid, boa_offset
        See :func:`s2_ndvi`.
    vv, vh, sar_features
        See :func:`s1_features`.
    days, anchor, start, end, reducer
        See :func:`composite` (SAR always uses the mean of linear power).
    resampling : str or None, default "average"
        Resampling of SAR onto the optical grid when the grids differ (odc-geo/GDAL names);
        ``None`` raises :class:`~xfusion.errors.GridMismatchError` instead.

    Returns
    -------
    xarray.Dataset
        ``band`` (e.g. ``ndvi``) and the SAR features on the optical grid, time = composite
        period starts, with ``period_end``; plus ``<band>_count`` (valid acquisitions per
        composite) for quality control.

    Raises
    ------
    VariableNotFoundError, GridMismatchError, TimeAxisError, InvalidParameterError

    See Also
    --------
    composite, s2_ndvi, s1_features, time_gaps, xfusion.gapfill
    """
    from xfusion.cube.validate import get_geobox, require_same_grid

    require_time(optical, name="optical input")
    require_time(sar, name="SAR input")
    if band == "ndvi":
        opt = s2_ndvi(optical, red=red, nir=nir, scl=scl, invalid=invalid,
                      boa_offset=boa_offset).to_dataset()
    else:
        if scl is not None:
            opt = mask_s2(optical, scl=scl, invalid=invalid, bands=[band])
        else:
            _require(optical, [band], "optical", "gapfill_inputs")
            opt = xr.Dataset({band: _float(optical, band)})
    _require(sar, [vv, vh], "Sentinel-1", "gapfill_inputs")
    sar_lin = xr.Dataset({vv: _float(sar, vv), vh: _float(sar, vh)})
    gopt = get_geobox(optical, name="optical input")
    try:
        require_same_grid(optical, sar, names=("optical", "sar"))
    except Exception:
        if resampling is None:
            raise
        from odc.geo.xr import xr_reproject

        get_geobox(sar, name="SAR input")
        sar_lin = xr_reproject(sar_lin, gopt, resampling=resampling, dst_nodata=np.nan)
    t_all = np.concatenate([np.asarray(optical.indexes[TIME].values, "datetime64[ns]"),
                            np.asarray(sar.indexes[TIME].values, "datetime64[ns]")])
    t0 = t_all.min() if start is None else start
    t1 = t_all.max() if end is None else end
    copt = composite(opt, days=days, anchor=anchor, start=t0, end=t1, reducer=reducer,
                     count=True)
    csar = composite(sar_lin, days=days, anchor=anchor, start=t0, end=t1, reducer="mean")
    feats = s1_features(csar, vv=vv, vh=vh, features=sar_features)
    ydim, xdim = spatial_dims(copt)
    feats = feats.assign_coords({ydim: copt[ydim], xdim: copt[xdim]})
    out = xr.merge([copt, feats], compat="override", join="override")
    out.attrs = {k: v for k, v in copt.attrs.items() if str(k).startswith("composite_")}
    return out


# --------------------------------------------------------------------------------------------
# time gaps


def _gaps_numpy(obs: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Forward BRITS gaps along axis 0: ``pos[t] - pos[last observed before t]``."""
    shape = (-1,) + (1,) * (obs.ndim - 1)
    p = np.where(obs, pos.reshape(shape), -np.inf)
    last = np.maximum.accumulate(p, axis=0)
    prev = np.concatenate([np.full((1, *obs.shape[1:]), -np.inf), last[:-1]], axis=0)
    prev = np.where(np.isfinite(prev), prev, pos[0])
    return (pos.reshape(shape) - prev).astype(np.float32)


def _gaps_dask(obs: Any, pos: np.ndarray) -> Any:
    import dask.array as da

    shape = (-1,) + (1,) * (obs.ndim - 1)
    posa = da.from_array(pos.reshape(shape), chunks=(obs.chunks[0],) + (1,) * (obs.ndim - 1))
    p = da.where(obs, posa, -np.inf)
    last = da.reductions.cumreduction(np.maximum.accumulate, np.maximum, -np.inf, p, axis=0,
                                      dtype=np.float64)
    head = da.full((1, *obs.shape[1:]), -np.inf, chunks=((1,), *obs.chunks[1:]))
    prev = da.concatenate([head, last[:-1]], axis=0).rechunk(obs.chunks)
    prev = da.where(da.isfinite(prev), prev, pos[0])
    return (posa - prev).astype(np.float32)


def time_gaps(
    obj: xr.DataArray,
    /,
    *,
    units: Literal["steps", "days"] = "steps",
    reverse: bool = False,
) -> xr.DataArray:
    """Per-pixel time gap δ since the previous observation (BRITS convention, lazy).

    ``δ_0 = 0`` and ``δ_t = s_t - s_{t-1} + δ_{t-1}`` when step ``t-1`` is missing, else
    ``s_t - s_{t-1}``: the distance from step ``t`` back to the last observation before it
    (or to the first step when there is none). With ``reverse=True``, the distance forward
    to the next observation (the gaps of the time-reversed series, in forward order).

    Parameters
    ----------
    obj : xarray.DataArray
        Values with NaN where unobserved, or a boolean mask (True = observed), with ``time``.
    units : {"steps", "days"}, default "steps"
        ``s_t = t`` (composite steps, as STORI) or days since the first time.
    reverse : bool, default False
        Gaps to the next observation instead of from the previous one.

    Returns
    -------
    xarray.DataArray
        float32 ``δ`` with ``obj``'s dims and coords, named ``<name>_delta``.

    Raises
    ------
    MissingDimensionError, TimeAxisError
        No valid ``time`` axis.
    InvalidParameterError
        Unknown ``units``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = np.arange(5).astype("M8[D]").astype("M8[ns]")
    >>> x = xr.DataArray([1.0, np.nan, np.nan, 4.0, 5.0], dims="time", coords={"time": t})
    >>> time_gaps(x).values.tolist(), time_gaps(x, reverse=True).values.tolist()
    ([0.0, 1.0, 2.0, 3.0, 1.0], [3.0, 2.0, 1.0, 1.0, 0.0])
    """
    require_choice(units, ("steps", "days"), name="units", method="time_gaps")
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"time_gaps() expects an xarray.DataArray, found {type(obj).__name__}.")
    require_time(obj, name="input")
    obs = obj if obj.dtype == bool else obj.notnull()
    obs = obs.transpose(TIME, ...)
    t = np.asarray(obj.indexes[TIME].values, dtype="datetime64[ns]")
    if units == "steps":
        pos = np.arange(t.size, dtype=np.float64)
    else:
        pos = (t - t[0]) / np.timedelta64(1, "D")
    data = obs.data
    if reverse:
        data = data[::-1]
        pos = -pos[::-1]
    out = _gaps_dask(data, pos) if _is_dask(data) else _gaps_numpy(np.asarray(data), pos)
    if reverse:
        out = out[::-1]
    res = xr.DataArray(out, dims=obs.dims, coords=obs.coords, name=f"{obj.name or 'values'}_delta",
                       attrs={"units": units, "long_name": "time since the "
                              + ("next" if reverse else "previous") + " observation"})
    return res.transpose(*obj.dims)

