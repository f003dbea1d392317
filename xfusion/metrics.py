"""Accuracy metrics for fused images: RMSE, MAE, bias, Pearson r, SSIM, PSNR, ERGAS, SAM.

Every metric compares a prediction with a reference on the same grid and is **masked by
NaN**: a pixel counts only where both the prediction and the reference are finite (for SAM,
where every band of both is finite). Inputs are xarray objects:

- a :class:`xarray.Dataset` whose data variables are the bands (what ``odc.stac.load`` and the
  fusion methods return), or
- a :class:`xarray.DataArray`, either one band or with a ``band`` dimension (``band_dim=``).

Per-band metrics return the input's type (a Dataset with one value per band variable, or a
DataArray). ERGAS and SAM combine the bands and return one DataArray. :func:`evaluate` gathers
several metrics into one Dataset with a ``band`` dimension that ends with an ``"overall"``
entry, and :func:`format_table` prints it (or a ``{method: result}`` mapping) as plain text.

Everything is lazy on dask-backed inputs: the metrics are built from xarray reductions, and SSIM
runs one task per 2-D image. Computation happens on ``.compute()`` (or in
:func:`format_table`). Arithmetic is done in float64.

The reduction ``dims`` default to every dimension of a band (time and space), giving one number
per band; ``dims=("y", "x")`` (the spatial dims of your cube) keeps ``time`` and gives one
number per band and date.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from xfusion.cube.validate import get_nodata, spatial_dims
from xfusion.errors import (
    GridMismatchError,
    InvalidParameterError,
    MissingDimensionError,
    VariableNotFoundError,
)

__all__ = [
    "METRICS",
    "bias",
    "ergas",
    "evaluate",
    "format_table",
    "mae",
    "pearson_r",
    "psnr",
    "rmse",
    "sam",
    "ssim",
]

METRICS: tuple[str, ...] = ("rmse", "mae", "bias", "r", "ssim", "psnr", "ergas", "sam")
"""Names accepted by :func:`evaluate`, in table order."""

OVERALL = "overall"
"""Label of the all-bands entry along the ``band`` dimension of :func:`evaluate`'s result."""

Obj = xr.Dataset | xr.DataArray
DataRange = float | Mapping[Hashable, float] | None
SamUnits = Literal["degrees", "radians"]

_ATTRS: dict[str, dict[str, str]] = {
    "rmse": {"long_name": "root-mean-square error", "units": "data units"},
    "mae": {"long_name": "mean absolute error", "units": "data units"},
    "bias": {"long_name": "mean error (prediction - reference)", "units": "data units"},
    "r": {"long_name": "Pearson correlation coefficient", "units": "1"},
    "ssim": {"long_name": "structural similarity index", "units": "1"},
    "psnr": {"long_name": "peak signal-to-noise ratio", "units": "dB"},
    "ergas": {"long_name": "ERGAS relative dimensionless global error", "units": "1"},
    "sam": {"long_name": "mean spectral angle", "units": "deg"},
}


# --------------------------------------------------------------------------------------------
# band handling
# --------------------------------------------------------------------------------------------
def as_float(var: xr.DataArray) -> xr.DataArray:
    """float64 copy with NaN gaps (a declared integer nodata becomes NaN)."""
    if np.issubdtype(var.dtype, np.integer) or np.issubdtype(var.dtype, np.bool_):
        nodata = get_nodata(var)
        out = var.astype("float64")
        return out.where(var != nodata) if nodata is not None else out
    return var.astype("float64")


def _bands(
    pred: Obj, ref: Obj, band_dim: str
) -> tuple[list[str], list[tuple[xr.DataArray, xr.DataArray]], str]:
    """Pair up the bands of ``pred`` and ``ref``; return names, (p, r) pairs and the kind."""
    if isinstance(pred, xr.Dataset) != isinstance(ref, xr.Dataset) or not isinstance(
        pred, xr.Dataset | xr.DataArray
    ):
        raise TypeError(
            "pred and ref must both be xarray.Datasets (bands as variables) or both "
            f"xarray.DataArrays; found {type(pred).__name__} and {type(ref).__name__}. Convert "
            "with `da.to_dataset(name='red')` or select one band with `ds['red']`."
        )
    try:
        pred, ref = xr.align(pred, ref, join="exact")
    except ValueError as err:
        raise GridMismatchError(
            "pred and ref are not on the same coordinates (time, spatial grid or bands): "
            f"{err}. Select the common part first, e.g. `ref = ref.sel(time=pred.time)`, or "
            "resample pred onto the reference grid with `pred.odc.reproject(ref.odc.geobox)`."
        ) from None
    if isinstance(ref, xr.Dataset):
        assert isinstance(pred, xr.Dataset)
        missing = [n for n in ref.data_vars if n not in pred.data_vars]
        extra = [n for n in pred.data_vars if n not in ref.data_vars]
        if missing or extra:
            raise VariableNotFoundError(
                f"pred and ref must hold the same band variables. Only in ref: "
                f"{sorted(map(str, missing))!r}; only in pred: {sorted(map(str, extra))!r}. "
                "Rename or select bands first, e.g. `pred = pred.rename({'fused': 'red'})` or "
                "`ref = ref[list(pred.data_vars)]`."
            )
        names = [str(n) for n in ref.data_vars]
        pairs = [(as_float(pred[n]), as_float(ref[n])) for n in ref.data_vars]
        return names, pairs, "dataset"
    assert isinstance(pred, xr.DataArray)
    if band_dim in ref.dims:
        labels = ref[band_dim].values if band_dim in ref.coords else range(ref.sizes[band_dim])
        names = [str(v) for v in labels]
        pairs = [
            (
                as_float(pred.isel({band_dim: i}, drop=True)),
                as_float(ref.isel({band_dim: i}, drop=True)),
            )
            for i in range(ref.sizes[band_dim])
        ]
        return names, pairs, "banded"
    name = ref.name if ref.name is not None else pred.name
    return (
        [str(name) if name is not None else "band"],
        [(as_float(pred), as_float(ref))],
        "single",
    )


def _masked(p: xr.DataArray, r: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    valid = np.isfinite(p) & np.isfinite(r)
    return p.where(valid), r.where(valid)


def _reduce_dims(arr: xr.DataArray, dims: str | Iterable[Hashable] | None) -> list[Hashable]:
    if dims is None:
        return list(arr.dims)
    out = [dims] if isinstance(dims, str) else list(dims)
    missing = [d for d in out if d not in arr.dims]
    if missing:
        raise MissingDimensionError(
            f"dims={out!r} names dimensions that the bands do not have: {missing!r}. The "
            f"bands have dims {tuple(map(str, arr.dims))!r}; leave dims=None to reduce over all."
        )
    return out


def _pack(values: list[xr.DataArray], names: list[str], kind: str, band_dim: str, name: str) -> Obj:
    """Per-band results back in the input's type."""
    if kind == "dataset":
        return xr.Dataset({n: v.rename(n) for n, v in zip(names, values, strict=True)})
    if kind == "banded":
        out = xr.concat([v.drop_vars(band_dim, errors="ignore") for v in values], dim=band_dim)
        return out.assign_coords({band_dim: names}).rename(name)
    return values[0].rename(name)


def _per_band(
    pred: Obj,
    ref: Obj,
    fn: Callable[[xr.DataArray, xr.DataArray, list[Hashable], str], xr.DataArray],
    *,
    dims: str | Iterable[Hashable] | None,
    band_dim: str,
    name: str,
) -> Obj:
    names, pairs, kind = _bands(pred, ref, band_dim)
    values = []
    for n, (p, r) in zip(names, pairs, strict=True):
        pm, rm = _masked(p, r)
        values.append(fn(pm, rm, _reduce_dims(rm, dims), n))
    return _pack(values, names, kind, band_dim, name)


# --------------------------------------------------------------------------------------------
# kernels on masked float64 bands
# --------------------------------------------------------------------------------------------
def _safe_div(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
    """num / den, NaN where den <= 0 (no division warnings, lazy-friendly)."""
    return num / den.where(den > 0)


def _rmse(p: xr.DataArray, r: xr.DataArray, dims: list[Hashable], _n: str = "") -> xr.DataArray:
    return np.sqrt(((p - r) ** 2).mean(dims))


def _mse(p: xr.DataArray, r: xr.DataArray, dims: list[Hashable]) -> xr.DataArray:
    return ((p - r) ** 2).mean(dims)


def _mae(p: xr.DataArray, r: xr.DataArray, dims: list[Hashable], _n: str = "") -> xr.DataArray:
    return np.abs(p - r).mean(dims)


def _bias(p: xr.DataArray, r: xr.DataArray, dims: list[Hashable], _n: str = "") -> xr.DataArray:
    return (p - r).mean(dims)


def _pearson(p: xr.DataArray, r: xr.DataArray, dims: list[Hashable], _n: str = "") -> xr.DataArray:
    dp = p - p.mean(dims)
    dr = r - r.mean(dims)
    cov = (dp * dr).mean(dims)
    den = np.sqrt((dp**2).mean(dims) * (dr**2).mean(dims))
    return _safe_div(cov, den)


def _data_range(
    r: xr.DataArray, dims: list[Hashable], data_range: DataRange, band: str
) -> xr.DataArray | float:
    if data_range is None:
        return r.max(dims) - r.min(dims)
    if isinstance(data_range, Mapping):
        if band not in data_range:
            raise InvalidParameterError(
                f"data_range has no entry for band {band!r}; it has {sorted(map(str, data_range))!r}. "
                "Give one value per band, a single float, or None (range of the reference)."
            )
        value = data_range[band]
    else:
        value = data_range
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise InvalidParameterError(
            f"data_range must be a positive finite number, found {value!r} (band {band!r}). "
            "Use the span of valid values, e.g. 1.0 for reflectance in [0, 1]."
        )
    return value


def _psnr_kernel(
    p: xr.DataArray, r: xr.DataArray, dims: list[Hashable], data_range: DataRange, band: str
) -> xr.DataArray:
    rng = _data_range(r, dims, data_range, band)
    mse = _mse(p, r, dims)
    rng_da = xr.zeros_like(mse) + rng
    val = 10.0 * np.log10(_safe_div(rng_da**2, mse))
    # identical images: infinite PSNR (as scikit-image); zero range: undefined (NaN)
    return xr.where((mse == 0) & (rng_da > 0), np.inf, val)


def _ssim_image(p: np.ndarray, r: np.ndarray, rng: float, win_size: int) -> tuple[float, float]:
    """Sum of the SSIM map over windows that hold only valid pixels, and their count."""
    from scipy.ndimage import minimum_filter
    from skimage.metrics import structural_similarity

    valid = np.isfinite(p) & np.isfinite(r)
    if not np.isfinite(rng) or rng <= 0 or not valid.any():
        return 0.0, 0.0
    ok = minimum_filter(valid, size=win_size, mode="constant", cval=False)
    if not ok.any():
        return 0.0, 0.0
    _, smap = structural_similarity(
        np.where(valid, p, 0.0),
        np.where(valid, r, 0.0),
        data_range=rng,
        win_size=win_size,
        full=True,
    )
    return float(smap[ok].sum(dtype=np.float64)), float(ok.sum())


def _ssim_sums(p: np.ndarray, r: np.ndarray, rng: np.ndarray, *, win_size: int) -> np.ndarray:
    """Vectorised over leading dims: (..., ny, nx) -> (..., 2) [sum, count]."""
    lead = p.shape[:-2]
    rng = np.broadcast_to(rng, lead)
    out = np.zeros((*lead, 2), dtype="float64")
    for idx in np.ndindex(*lead):
        out[idx] = _ssim_image(p[idx], r[idx], float(rng[idx]), win_size)
    return out


def _ssim_dims(r: xr.DataArray) -> tuple[Hashable, Hashable]:
    try:
        return spatial_dims(r, name="reference")
    except MissingDimensionError:
        if r.ndim < 2:
            raise
        return r.dims[-2], r.dims[-1]


def _ssim_kernel(
    p: xr.DataArray,
    r: xr.DataArray,
    dims: list[Hashable],
    data_range: DataRange,
    band: str,
    win_size: int,
) -> xr.DataArray:
    ydim, xdim = _ssim_dims(r)
    if ydim not in dims or xdim not in dims:
        raise InvalidParameterError(
            f"SSIM is computed on 2-D images, so dims must include both spatial dims "
            f"{(str(ydim), str(xdim))!r}; found dims={tuple(map(str, dims))!r}."
        )
    small = {str(d): r.sizes[d] for d in (ydim, xdim) if r.sizes[d] < win_size}
    if small:
        raise InvalidParameterError(
            f"The images are smaller than the SSIM window ({win_size} px): sizes {small!r}. "
            "Pass a smaller odd win_size (>= 3), or evaluate on a larger area."
        )
    rng = _data_range(r, dims, data_range, band)
    rng_da = rng if isinstance(rng, xr.DataArray) else xr.DataArray(rng)
    sums = xr.apply_ufunc(
        _ssim_sums,
        p,
        r,
        rng_da,
        input_core_dims=[[ydim, xdim], [ydim, xdim], []],
        output_core_dims=[["_ssim_stat"]],
        kwargs={"win_size": win_size},
        dask="parallelized",
        output_dtypes=["float64"],
        dask_gufunc_kwargs={"allow_rechunk": True, "output_sizes": {"_ssim_stat": 2}},
    )
    rest = [d for d in dims if d not in (ydim, xdim)]
    total = sums.sum(rest) if rest else sums
    return _safe_div(total.isel(_ssim_stat=0), total.isel(_ssim_stat=1))


def _check_win_size(win_size: int) -> None:
    if not isinstance(win_size, int | np.integer) or win_size < 3 or win_size % 2 == 0:
        raise InvalidParameterError(
            f"win_size must be an odd int >= 3, found {win_size!r}. The default is 7 "
            "(scikit-image's default)."
        )


def _check_ratio(ratio: Any) -> float:
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise InvalidParameterError(
            f"ratio must be a positive number (fine pixel size / coarse pixel size), found "
            f"{ratio!r}. For 30 m Landsat fused from 500 m MODIS use ratio=30/500."
        )
    if value > 1:
        raise InvalidParameterError(
            f"ratio is the fine pixel size divided by the coarse pixel size, so it is <= 1; "
            f"found {ratio!r}. Did you mean ratio=1/{ratio!r}?"
        )
    return value


# --------------------------------------------------------------------------------------------
# public per-band metrics
# --------------------------------------------------------------------------------------------
def _simple_metric(fname: str, kernel: Any, name: str, summary: str, returns: str) -> Any:
    """Build a public per-band metric ``fname`` from a masked reduction ``kernel``."""

    def metric(
        pred: Obj, ref: Obj, /, *, dims: str | Sequence[Hashable] | None = None,
        band_dim: str = "band",
    ) -> Obj:
        return _per_band(pred, ref, kernel, dims=dims, band_dim=band_dim, name=name)

    metric.__name__ = metric.__qualname__ = fname
    metric.__doc__ = f"""{summary}

{_SIMPLE_DOC}        {returns}
    """
    return metric


_SIMPLE_DOC = """    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    dims : str or sequence of str, optional
        Dimensions to reduce over; default all dims of a band.
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``); ignored for Datasets.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
"""

rmse = _simple_metric("rmse", _rmse, "rmse",
                      "Root-mean-square error per band, over pixels where both inputs are finite.",
                      "Same kind as the input; lazy when the input is dask-backed.")
mae = _simple_metric("mae", _mae, "mae",
                     "Mean absolute error per band, over pixels where both inputs are finite.",
                     "Same kind as the input; lazy when the input is dask-backed.")
bias = _simple_metric("bias", _bias, "bias",
                      "Mean error ``pred - ref`` per band (positive: the prediction is too high).",
                      "Same kind as the input; lazy when the input is dask-backed.")
pearson_r = _simple_metric(
    "pearson_r", _pearson, "r",
    "Pearson correlation coefficient per band, over pixels where both inputs are finite.",
    "Same kind as the input; NaN where either input is constant.",
)


def psnr(
    pred: Obj,
    ref: Obj,
    /,
    *,
    data_range: DataRange = None,
    dims: str | Sequence[Hashable] | None = None,
    band_dim: str = "band",
) -> Obj:
    """Peak signal-to-noise ratio per band, in dB: ``10 log10(data_range**2 / MSE)``.

    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    data_range : float or dict, optional
        The span of possible values (a float for all bands, or ``{band: float}``). Default:
        the range of the reference, ``max - min`` over the valid pixels of each band (over
        ``dims``, so per date when ``dims`` keeps ``time``).
    dims : str or sequence of str, optional
        Dimensions to reduce over; default all dims of a band.
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``); ignored for Datasets.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        Same kind as the input. ``inf`` for identical inputs (as scikit-image), NaN when the
        data range is 0.

    Notes
    -----
    Equals ``skimage.metrics.peak_signal_noise_ratio(ref, pred, data_range=...)`` on NaN-free
    2-D images. PSNR values depend on the data range: state it when reporting.
    """
    names, pairs, kind = _bands(pred, ref, band_dim)
    values = []
    for n, (p, r) in zip(names, pairs, strict=True):
        pm, rm = _masked(p, r)
        values.append(_psnr_kernel(pm, rm, _reduce_dims(rm, dims), data_range, n))
    return _pack(values, names, kind, band_dim, "psnr")


def ssim(
    pred: Obj,
    ref: Obj,
    /,
    *,
    data_range: DataRange = None,
    dims: str | Sequence[Hashable] | None = None,
    win_size: int = 7,
    band_dim: str = "band",
) -> Obj:
    """Structural similarity index (SSIM) per band, masked by NaN.

    Uses :func:`skimage.metrics.structural_similarity` (uniform ``win_size`` window, sample
    covariance, K1=0.01, K2=0.03) on each 2-D image and averages the SSIM map over the windows
    whose pixels are all valid in both inputs, pooled over the images (dates) reduced.

    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    data_range : float or dict, optional
        The span of possible values (a float for all bands, or ``{band: float}``). Default:
        the range of the reference, ``max - min`` over the valid pixels of each band (over
        ``dims``).
    dims : str or sequence of str, optional
        Dimensions to reduce over; must include both spatial dims. Default: all dims.
    win_size : int
        Side of the square window, odd (default 7, as scikit-image).
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``); ignored for Datasets.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        Same kind as the input; NaN where no full window of valid pixels exists.

    Notes
    -----
    On NaN-free images this equals scikit-image's mean SSIM (which crops
    ``(win_size - 1) // 2`` pixels at the borders). With NaN, a window touching a NaN
    pixel is left out. On dask, each 2-D image is one task (the image is loaded whole).
    """
    _check_win_size(win_size)
    names, pairs, kind = _bands(pred, ref, band_dim)
    values = []
    for n, (p, r) in zip(names, pairs, strict=True):
        pm, rm = _masked(p, r)
        values.append(_ssim_kernel(pm, rm, _reduce_dims(rm, dims), data_range, n, win_size))
    return _pack(values, names, kind, band_dim, "ssim")


# --------------------------------------------------------------------------------------------
# multi-band metrics
# --------------------------------------------------------------------------------------------
def _ergas_terms(
    pairs: list[tuple[xr.DataArray, xr.DataArray]], dims: str | Sequence[Hashable] | None
) -> list[xr.DataArray]:
    """(RMSE_b / mean(ref_b))**2 per band."""
    terms = []
    for p, r in pairs:
        pm, rm = _masked(p, r)
        d = _reduce_dims(rm, dims)
        mean = rm.mean(d)
        terms.append(_safe_div(_rmse(pm, rm, d), np.abs(mean)) ** 2)
    return terms


def ergas(
    pred: Obj,
    ref: Obj,
    /,
    *,
    ratio: float,
    dims: str | Sequence[Hashable] | None = None,
    band_dim: str = "band",
) -> xr.DataArray:
    """ERGAS, the relative dimensionless global error of synthesis (Wald 2000).

    ``ERGAS = 100 * ratio * sqrt(mean_b (RMSE_b / mean(ref_b))**2)``, lower is better.

    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    ratio : float
        Fine pixel size divided by coarse pixel size (``h / l`` in Wald's notation), e.g.
        ``30 / 500`` for Landsat fused from MODIS. Must be in (0, 1].
    dims : str or sequence of str, optional
        Dimensions to reduce over; default all dims of a band.
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``); ignored for Datasets.

    Returns
    -------
    xarray.DataArray
        Named ``"ergas"``; RMSE and mean per band use the pixels valid in both inputs.

    References
    ----------
    Wald, L. (2000). Quality of high resolution synthesised images: is there a simple
    criterion? Proc. Fusion of Earth Data, 99-103.
    """
    value = _check_ratio(ratio)
    _names, pairs, _kind = _bands(pred, ref, band_dim)
    terms = _ergas_terms(pairs, dims)
    mean_term = sum(terms[1:], terms[0]) / len(terms)
    return (100.0 * value * np.sqrt(mean_term)).rename("ergas")


def _sam_map(pairs: list[tuple[xr.DataArray, xr.DataArray]], units: SamUnits) -> xr.DataArray:
    """Per-pixel spectral angle, NaN where a band is missing or a vector is zero."""
    valid = None
    for p, r in pairs:
        ok = np.isfinite(p) & np.isfinite(r)
        valid = ok if valid is None else valid & ok
    assert valid is not None
    ps = [p.where(valid) for p, _ in pairs]
    rs = [r.where(valid) for _, r in pairs]
    norm_p = np.sqrt(sum(x**2 for x in ps))
    norm_r = np.sqrt(sum(x**2 for x in rs))
    up = [x / norm_p.where(norm_p > 0) for x in ps]
    ur = [x / norm_r.where(norm_r > 0) for x in rs]
    # Kahan's formula: exact 0 for identical directions, accurate near 0 and pi
    diff = np.sqrt(sum((a - b) ** 2 for a, b in zip(up, ur, strict=True)))
    summ = np.sqrt(sum((a + b) ** 2 for a, b in zip(up, ur, strict=True)))
    angle = 2.0 * np.arctan2(diff, summ)
    return np.degrees(angle) if units == "degrees" else angle


def sam(
    pred: Obj,
    ref: Obj,
    /,
    *,
    units: SamUnits = "degrees",
    dims: str | Sequence[Hashable] | None = None,
    band_dim: str = "band",
) -> xr.DataArray:
    """Mean spectral angle (SAM) between the prediction and reference spectra.

    For each pixel, the angle between the vector of band values of ``pred`` and that of
    ``ref``; 0 means the same spectral shape (a per-pixel scale factor is ignored).

    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray with ``band_dim``).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    units : {"degrees", "radians"}
        Units of the result (default degrees, as most fusion papers report).
    dims : str or sequence of str, optional
        Dimensions to average the per-pixel angle over; default all dims of a band.
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``); ignored for Datasets.

    Returns
    -------
    xarray.DataArray
        Named ``"sam"``. Pixels where any band is NaN in either input, or where a spectrum is
        all zeros, are left out.

    Raises
    ------
    InvalidParameterError
        Fewer than two bands, or unknown ``units``.
    """
    if units not in ("degrees", "radians"):
        raise InvalidParameterError(
            f"Unknown units={units!r} for sam(). Valid choices: ['degrees', 'radians']."
        )
    names, pairs, _kind = _bands(pred, ref, band_dim)
    if len(pairs) < 2:
        raise InvalidParameterError(
            f"The spectral angle needs at least two bands; found {names!r}. Pass a Dataset "
            f"with several band variables, or a DataArray with a {band_dim!r} dimension."
        )
    angle = _sam_map(pairs, units)
    return angle.mean(_reduce_dims(angle, dims)).rename("sam")


# --------------------------------------------------------------------------------------------
# evaluate / format_table
# --------------------------------------------------------------------------------------------
def evaluate(
    pred: Obj,
    ref: Obj,
    /,
    *,
    metrics: Sequence[str] | None = None,
    data_range: DataRange = None,
    ratio: float | None = None,
    dims: str | Sequence[Hashable] | None = None,
    sam_units: SamUnits = "degrees",
    win_size: int = 7,
    band_dim: str = "band",
) -> xr.Dataset:
    """Compute several accuracy metrics at once, per band and overall.

    Parameters
    ----------
    pred : xarray.Dataset or xarray.DataArray
        The prediction (bands as data variables, or a DataArray).
    ref : xarray.Dataset or xarray.DataArray
        The reference, of the same kind, bands and coordinates.
    metrics : sequence of str, optional
        Any of ``"rmse", "mae", "bias", "r", "ssim", "psnr", "ergas", "sam"``. Default: all of
        them, except ``"ergas"`` when ``ratio`` is not given.
    data_range : float or dict, optional
        Data range for SSIM and PSNR; default the range of the reference per band.
    ratio : float, optional
        Fine / coarse pixel size for ERGAS (see :func:`ergas`).
    dims : str or sequence of str, optional
        Dimensions to reduce over; default all dims of a band. Keep ``time`` out of ``dims``
        to get metrics per date.
    sam_units : {"degrees", "radians"}
        Units of SAM.
    win_size : int
        SSIM window (odd, default 7).
    band_dim : str
        Band dimension of a DataArray input (default ``"band"``).

    Returns
    -------
    xarray.Dataset
        One variable per metric along a ``band`` dimension holding the band names and then
        ``"overall"``. Overall values: the mean over bands for RMSE, MAE, bias, r, SSIM and
        PSNR; ERGAS and SAM combine the bands by definition (their per-band entries are the
        band's own ``100 * ratio * RMSE_b / mean_b`` term and NaN, respectively). Lazy on dask
        inputs; print it with :func:`format_table`.

    Examples
    --------
    >>> res = xfusion.metrics.evaluate(pred, ref, ratio=30 / 500)  # doctest: +SKIP
    >>> print(xfusion.metrics.format_table({"starfm": res, "sttfn": res2}))  # doctest: +SKIP
    """
    if metrics is None:
        chosen = [m for m in METRICS if m != "ergas" or ratio is not None]
    else:
        chosen = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in chosen if m not in METRICS]
        if unknown:
            raise InvalidParameterError(
                f"Unknown metrics {unknown!r}. Valid choices: {list(METRICS)!r}."
            )
        if "ergas" in chosen and ratio is None:
            raise InvalidParameterError(
                "ERGAS needs the resolution ratio (fine pixel size / coarse pixel size); found "
                "ratio=None. Pass e.g. `ratio=30/500`, or drop 'ergas' from metrics."
            )
    if sam_units not in ("degrees", "radians"):
        raise InvalidParameterError(
            f"Unknown sam_units={sam_units!r}. Valid choices: ['degrees', 'radians']."
        )
    _check_win_size(win_size)
    ratio_value = _check_ratio(ratio) if "ergas" in chosen else None

    names, pairs, _kind = _bands(pred, ref, band_dim)
    masked = [_masked(p, r) for p, r in pairs]
    rdims = [_reduce_dims(r, dims) for _, r in masked]
    kernels: dict[
        str, Callable[[xr.DataArray, xr.DataArray, list[Hashable], str], xr.DataArray]
    ] = {
        "rmse": _rmse,
        "mae": _mae,
        "bias": _bias,
        "r": _pearson,
        "psnr": lambda p, r, d, n: _psnr_kernel(p, r, d, data_range, n),
        "ssim": lambda p, r, d, n: _ssim_kernel(p, r, d, data_range, n, win_size),
    }
    band_index = xr.DataArray(np.array([*names, OVERALL]), dims="band", name="band")
    out: dict[str, xr.DataArray] = {}
    for m in chosen:
        if m in kernels:
            per = [
                kernels[m](p, r, d, n) for (p, r), d, n in zip(masked, rdims, names, strict=True)
            ]
            stacked = xr.concat(per, dim="band", coords="minimal", compat="override")
            overall = stacked.mean("band", skipna=False)
            out[m] = xr.concat([stacked, overall], dim="band", coords="minimal", compat="override")
        elif m == "ergas":
            assert ratio_value is not None
            terms = _ergas_terms(pairs, dims)
            stacked = xr.concat(terms, dim="band", coords="minimal", compat="override")
            per_band = 100.0 * ratio_value * np.sqrt(stacked)
            overall = 100.0 * ratio_value * np.sqrt(stacked.mean("band", skipna=False))
            out[m] = xr.concat([per_band, overall], dim="band", coords="minimal", compat="override")
        elif m == "sam":
            if len(pairs) >= 2:
                angle = _sam_map(pairs, sam_units)
                overall = angle.mean(_reduce_dims(angle, dims))
            else:
                overall = xr.full_like(_rmse(*masked[0], rdims[0]), np.nan)
            nan = xr.full_like(overall, np.nan)
            out[m] = xr.concat(
                [nan] * len(names) + [overall], dim="band", coords="minimal", compat="override"
            )
    result = xr.Dataset({m: v.drop_vars("band", errors="ignore") for m, v in out.items()})
    result = result.assign_coords(band=band_index)
    for m in result.data_vars:
        attrs = dict(_ATTRS[str(m)])
        if m == "sam":
            attrs["units"] = "deg" if sam_units == "degrees" else "rad"
        if m == "ssim":
            attrs["long_name"] = f"structural similarity index ({win_size}x{win_size} window)"
        if m in ("ssim", "psnr"):
            attrs["data_range"] = (
                "range (max - min) of the reference per band"
                if data_range is None
                else str(data_range)
            )
        if m == "ergas":
            attrs["ratio"] = ratio_value
        result[m].attrs = attrs
    result.attrs = {
        "description": "xfusion.metrics.evaluate: pixels count where both inputs are finite",
        "overall": "mean over bands (rmse, mae, bias, r, ssim, psnr); all bands (ergas, sam)",
    }
    return result


def _fmt(value: float, digits: int) -> str:
    if value is None or not np.isfinite(value):
        return "inf" if value is not None and np.isposinf(value) else "-"
    return f"{value:#.{digits}g}"


def format_table(
    results: xr.Dataset | Mapping[str, xr.Dataset],
    /,
    *,
    band: str = OVERALL,
    metrics: Sequence[str] | None = None,
    digits: int = 4,
) -> str:
    """Format :func:`evaluate` results as a plain-text table.

    Parameters
    ----------
    results : xarray.Dataset or mapping of str to xarray.Dataset
        One :func:`evaluate` result (rows = bands and ``"overall"``), or ``{method: result}``
        (rows = methods, values taken at ``band``).
    band : str
        Which band entry to show for a mapping (default ``"overall"``).
    metrics : sequence of str, optional
        Columns to show, in order; default every metric present.
    digits : int
        Significant digits (default 4).

    Returns
    -------
    str
        The table; columns are metrics with their units (``psnr [dB]``, ``sam [deg]``).

    Raises
    ------
    InvalidParameterError
        Results that keep other dimensions (e.g. ``time``), or an unknown band or metric.

    Notes
    -----
    This computes dask-backed results.
    """
    if isinstance(results, xr.Dataset):
        table = results.compute()
        row_names = [str(b) for b in table["band"].values]
        rows = {n: table.isel(band=i) for i, n in enumerate(row_names)}
        first = "band"
    elif isinstance(results, Mapping) and results:
        rows = {}
        for name, res in results.items():
            if band not in res["band"].values:
                raise InvalidParameterError(
                    f"Band {band!r} is not in the result of {name!r}; its bands are "
                    f"{[str(b) for b in res['band'].values]!r}."
                )
            rows[str(name)] = res.sel(band=band).compute()
        first = "method"
    else:
        raise TypeError(
            "format_table() takes an evaluate() result (xarray.Dataset) or a non-empty mapping "
            f"{{method name: evaluate() result}}; found {type(results).__name__}."
        )
    sample = next(iter(rows.values()))
    extra = [d for d in sample.dims if d != "band"]
    if extra:
        raise InvalidParameterError(
            f"The results keep the dims {extra!r}, so they do not fit one table. Select or "
            f"average first, e.g. `res.isel({extra[0]}=0)` or `res.mean({extra[0]!r})`."
        )
    present = [m for m in METRICS if m in sample.data_vars]
    cols = present if metrics is None else list(metrics)
    missing = [m for m in cols if m not in sample.data_vars]
    if missing:
        raise InvalidParameterError(
            f"Metrics {missing!r} are not in the results; they hold {present!r}."
        )

    def header(m: str) -> str:
        units = sample[m].attrs.get("units")
        return f"{m} [{units}]" if units in ("dB", "deg", "rad") else m

    head = [first, *(header(m) for m in cols)]
    body = [[n, *(_fmt(float(r[m].values), digits) for m in cols)] for n, r in rows.items()]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in body)])


def _block_reduce(x: np.ndarray, scale: int, how: str) -> np.ndarray:
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    v = np.asarray(x, dtype=np.float64)[..., :h * scale, :w * scale]
    v = v.reshape(*v.shape[:-2], h, scale, w, scale)
    if how == "power":
        return np.mean(v**4, axis=(-3, -1)) ** 0.25
    return np.mean(v, axis=(-3, -1))


def aggregate(fine: xr.DataArray, /, *, scale: int, how: Literal["mean", "power"] = "mean",
              like: xr.DataArray | None = None) -> xr.DataArray:
    """Aggregate a fine field to the coarse grid by ``scale x scale`` blocks (lazy).

    ``how="mean"`` is the block mean; ``"power"`` the radiance-consistent power mean
    ``(mean T^4)^(1/4)`` (temperatures in kelvin). A block with a NaN gives NaN. ``like``
    (the coarse input) supplies the output coordinates.
    """
    if how not in ("mean", "power"):
        raise InvalidParameterError(f"Unknown how={how!r}; choose one of ['mean', 'power'].")
    ydim, xdim = spatial_dims(fine, name="fine field")
    f = fine
    if how == "power":
        f = f.astype(np.float64) ** 4
    out = f.coarsen({ydim: scale, xdim: scale}, boundary="trim").reduce(np.mean)
    if how == "power":
        out = out ** 0.25
    if like is not None:
        cy, cx = spatial_dims(like, name="coarse input")
        out = out.rename({ydim: cy, xdim: cx}).assign_coords({cy: like[cy], cx: like[cx]})
        if "spatial_ref" in like.coords:
            out = out.assign_coords(spatial_ref=like.coords["spatial_ref"])
    return out.astype(np.float32)


def coarse_consistency(sr: xr.DataArray, coarse: xr.DataArray, /, *, scale: int,
                       how: Literal["mean", "power"] = "mean") -> xr.DataArray:
    """RMSE between the aggregated super-resolved field and the coarse input (lazy).

    Over the coarse pixels where both are finite; ``how`` as in :func:`aggregate`.
    """
    agg = aggregate(sr, scale=scale, how=how, like=coarse)
    diff = agg.astype(np.float64) - coarse.astype(np.float64).transpose(*agg.dims)
    return np.sqrt((diff**2).mean()).rename("coarse_consistency_rmse")


def _sobel_mag(x: np.ndarray) -> np.ndarray:
    k = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    kernels = [k, k.T, np.array([[0.0, 1, 2], [-1, 0, 1], [-2, -1, 0]]),
               np.array([[-2.0, -1, 0], [-1, 0, 1], [0, 1, 2]])]
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    mags = np.zeros((*x.shape[:-2], h, w))
    for kk in kernels:
        g = np.zeros_like(mags)
        for dy in range(3):
            for dx in range(3):
                g += kk[dy, dx] * x[..., dy:dy + h, dx:dx + w]
        mags += g**2
    return np.sqrt(mags)


def gradient_rmse(pred: Any, ref: Any) -> float:
    """RMSE of the 4-direction Sobel gradient magnitudes (valid pixels, 1-px border dropped)."""
    p = _sobel_mag(np.asarray(pred, dtype=np.float64))
    r = _sobel_mag(np.asarray(ref, dtype=np.float64))
    ok = np.isfinite(p) & np.isfinite(r)
    return float(np.sqrt(np.mean((p[ok] - r[ok]) ** 2)))
