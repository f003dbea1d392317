"""Synthetic Sentinel-2 NDVI + Sentinel-1 series with phenology, clouds, speckle and truth.

A landscape of fields (Voronoi cells) of six land-cover classes (:data:`SERIES_CLASSES`), each
with its own NDVI phenology and a SAR backscatter that follows the vegetation *structure*
(biomass), not NDVI itself: crops keep their backscatter until harvest while NDVI already
drops at senescence, grassland is mown (NDVI and backscatter drop and recover), rain events
raise the backscatter of bare soils, water backscatter varies with the wind, every field has
its own soil roughness. Sentinel-2 acquires every ``s2_revisit`` days under clouds that come
in spatially coherent patches and persistent spells (cloudier in winter), so the composites
have long gaps; Sentinel-1 acquires every ``s1_revisit`` days with multiplicative gamma
speckle of ``looks`` looks. The cloud-free, noise-free NDVI is returned as the truth.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same
scene.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import xarray as xr

from xfusion.errors import InvalidParameterError

__all__ = ["LANDSCAPES", "SERIES_CLASSES", "realistic_series", "simulate_gaps", "synthetic_series"]

SERIES_CLASSES: tuple[str, ...] = (
    "water", "urban", "forest", "grassland", "summer_crop", "winter_crop",
)
"""Land-cover classes of :func:`synthetic_series`, indexed by its ``landcover`` coordinate."""

_WATER, _URBAN, _FOREST, _GRASS, _SUMMER, _WINTER = range(6)
_CLASS_P = np.array([0.05, 0.05, 0.15, 0.20, 0.30, 0.25])
# SAR per class: VH at zero biomass, VH gain per unit biomass, VV at zero biomass, VV gain,
# soil-moisture sensitivity of VH and VV (dB per unit wetness, on bare soil).
_VH0 = np.array([-26.0, -12.0, -14.5, -21.0, -24.0, -23.0])
_VHG = np.array([0.0, 0.0, 1.5, 5.0, 9.0, 7.0])
_VV0 = np.array([-20.0, -5.0, -8.5, -12.0, -14.0, -13.0])
_VVG = np.array([0.0, 0.0, 1.0, 2.5, 4.0, 2.5])
_SMH = np.array([0.0, 0.5, 0.5, 2.0, 2.0, 2.0])
_SMV = np.array([0.0, 0.5, 0.8, 3.0, 3.5, 3.5])


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _fields(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    ny, nx = shape
    n = max(2, round(ny * nx / size**2))
    seeds = rng.random((n, 2)) * [ny, nx]
    yy, xx = np.mgrid[0:ny, 0:nx]
    _, lab = cKDTree(seeds).query(np.c_[yy.ravel() + 0.5, xx.ravel() + 0.5])
    return lab.reshape(shape)


class _Params:
    """Per-pixel phenology parameters for one year (field values + small pixel jitter)."""

    def __init__(self, rng: np.random.Generator, field: np.ndarray, nf: int) -> None:
        def per_field(mean: float, sd: float, lo: float | None = None,
                      hi: float | None = None) -> np.ndarray:
            v = rng.normal(mean, sd, nf)
            return np.clip(v, lo, hi)[field]

        def jit(sd: float) -> np.ndarray:
            return rng.normal(0, sd, field.shape)

        self.sos = per_field(135, 12) + jit(2.0)
        self.eos = per_field(255, 10) + jit(2.0)
        self.rs = per_field(8, 1.5, 4, 14)
        self.re = per_field(9, 2, 4, 16)
        self.vmin = per_field(0.16, 0.03, 0.05, 0.3) + jit(0.01)
        self.vmax = per_field(0.84, 0.05, 0.6, 0.95) + jit(0.015)
        self.harvest = self.eos + per_field(15, 6, 3, 35)
        self.w_sos = per_field(85, 10) + jit(2.0)
        self.w_eos = per_field(178, 8) + jit(2.0)
        self.w_harvest = self.w_eos + per_field(10, 4, 2, 25)
        self.w0 = per_field(0.35, 0.05, 0.2, 0.5)
        self.cover = (rng.random(nf) < 0.5)[field] * per_field(0.35, 0.08, 0.1, 0.55)
        self.cover_sos = per_field(240, 12)
        self.g_base = per_field(0.35, 0.05, 0.2, 0.5)
        self.g_amp = per_field(0.35, 0.05, 0.2, 0.5)
        mows = np.sort(rng.normal([150, 200, 250], 8, (nf, 3)), axis=1)
        keep = rng.random((nf, 3)) < np.array([1.0, 0.9, 0.5])
        self.mow = np.where(keep, mows, np.inf)[field]
        self.mow_drop = per_field(0.3, 0.05, 0.15, 0.45)
        self.mow_tau = per_field(18, 4, 8, 30)
        self.f_base = per_field(0.55, 0.05, 0.4, 0.7)
        self.f_amp = per_field(0.25, 0.05, 0.1, 0.35)


def _vegetation(cls: np.ndarray, p: _Params, doy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NDVI and biomass (0..1) of every pixel at day-of-year ``doy``: arrays (T, ny, nx)."""
    d = doy[:, None, None]
    ndvi = np.zeros(d.shape[:1] + cls.shape)
    bio = np.zeros_like(ndvi)
    # summer crop: double logistic; biomass lags green-up and stays until harvest
    s = p.vmin + (p.vmax - p.vmin) * (_sig((d - p.sos) / p.rs) - _sig((d - p.eos) / p.re))
    sb = _sig((d - p.sos - 15) / 10) * _sig(-(d - p.harvest) / 2)
    # winter crop: overwintering canopy, spring green-up, summer harvest, optional cover crop
    w = (0.15 + (p.w0 - 0.15) * (1 - _sig((d - p.w_sos) / 8))
         + (p.vmax - 0.15) * (_sig((d - p.w_sos) / 9) - _sig((d - p.w_eos) / 7))
         + p.cover * _sig((d - p.cover_sos) / 10))
    wb = (0.3 * (1 - _sig((d - p.w_sos) / 8))
          + _sig((d - p.w_sos - 12) / 10) * _sig(-(d - p.w_harvest) / 2)
          + 0.8 * p.cover * _sig((d - p.cover_sos - 12) / 10))
    # grassland: seasonal bump minus mowing events recovering exponentially
    bump = _sig((d - 95) / 10) - _sig((d - 290) / 15)
    cut = np.zeros_like(ndvi)
    cutb = np.zeros_like(ndvi)
    for k in range(3):
        dt = d - p.mow[None, :, :, k]
        on = dt >= 0
        cut += np.where(on, p.mow_drop * np.exp(-np.where(on, dt, 0) / p.mow_tau), 0.0)
        cutb += np.where(on, 1.6 * p.mow_drop * np.exp(-np.where(on, dt, 0) / (1.5 * p.mow_tau)),
                         0.0)
    g = p.g_base + p.g_amp * bump - cut
    gb = np.clip(0.2 + 0.8 * bump - cutb, 0.0, 1.0)
    # forest, urban, water
    fb = _sig((d - 115) / 8) - _sig((d - 285) / 10)
    f = p.f_base + p.f_amp * fb
    for c, nd, b in (
        (_SUMMER, s, sb), (_WINTER, w, wb), (_GRASS, g, gb), (_FOREST, f, 0.8 + 0.2 * fb),
        (_URBAN, 0.12 + 0.06 * bump, 0.0 * bump), (_WATER, -0.05 + 0.0 * bump, 0.0 * bump),
    ):
        m = cls == c
        ndvi = np.where(m, nd, ndvi)
        bio = np.where(m, b, bio)
    return np.clip(ndvi, -0.2, 0.95), np.clip(bio, 0.0, 1.2)


def _acquisitions(t0: np.datetime64, t1: np.datetime64, revisit: int, offset: int) -> np.ndarray:
    first = t0 + np.timedelta64(int(offset), "D")
    n = int((t1 - first) / np.timedelta64(revisit, "D")) + 1
    t = first + np.arange(max(n, 0)) * np.timedelta64(revisit, "D")
    return (t[t <= t1] + np.timedelta64(10, "h")).astype("datetime64[ns]")


def _doy_year(t: np.ndarray, year0: int) -> tuple[np.ndarray, np.ndarray]:
    years = t.astype("datetime64[Y]").astype(int) + 1970
    jan1 = years.astype(str).astype("datetime64[Y]").astype("datetime64[ns]")
    doy = (t - jan1) / np.timedelta64(1, "D")
    return doy, years - year0


def _truth(t: np.ndarray, year0: int, cls: np.ndarray, params: list[_Params],
           static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    doy, yi = _doy_year(t, year0)
    ndvi = np.empty((t.size, *cls.shape))
    bio = np.empty_like(ndvi)
    for y in np.unique(yi):
        sel = yi == y
        nd, b = _vegetation(cls, params[int(y)], doy[sel])
        ndvi[sel] = nd
        bio[sel] = b
    land = cls != _WATER
    ndvi = np.where(land, np.clip(ndvi + 0.03 * static, -0.2, 0.95), ndvi)
    return ndvi, bio


@overload
def synthetic_series(shape: tuple[int, int] = ..., *, raw: Literal[False] = ...,
                     **kwargs: Any) -> xr.Dataset: ...
@overload
def synthetic_series(shape: tuple[int, int] = ..., *, raw: Literal[True],
                     **kwargs: Any) -> tuple[xr.Dataset, xr.Dataset]: ...


def synthetic_series(
    shape: tuple[int, int] = (48, 48),
    *,
    years: int = 1,
    start_year: int = 2020,
    days: int = 8,
    s2_revisit: int = 5,
    s1_revisit: int = 6,
    cloud_cover: float = 0.5,
    noise: float = 0.015,
    looks: float = 4.4,
    field_size: float = 12.0,
    crs: Any = "EPSG:32633",
    resolution: float = 10.0,
    seed: int = 0,
    raw: bool = False,
    chunks: Any = None,
) -> xr.Dataset | tuple[xr.Dataset, xr.Dataset]:
    """Build Sentinel-2 NDVI + Sentinel-1 series with known cloud-free truth.

    Parameters
    ----------
    shape : tuple of int, default (48, 48)
        Spatial shape ``(ny, nx)`` (10 m pixels by default).
    years : int, default 1
        Number of calendar years, from January 1 of ``start_year``.
    start_year : int, default 2020
        First year.
    days : int, default 8
        Composite period (46 periods per year for 8 days).
    s2_revisit, s1_revisit : int, default 5, 6
        Days between Sentinel-2 and Sentinel-1 acquisitions (6: S1A+S1B; 12: one satellite,
        which leaves about a third of the 8-day SAR composites empty).
    cloud_cover : float, default 0.5
        Mean cloud cover of the Sentinel-2 acquisitions (seasonal: +-0.2, cloudier in
        winter), in persistent spells; 0 gives clear skies.
    noise : float, default 0.015
        Standard deviation of the NDVI observation noise of each clear acquisition.
    looks : float, default 4.4
        Equivalent number of looks of one Sentinel-1 acquisition (GRD IW at 10 m: about 4.4;
        larger = less speckle).
    field_size : float, default 12.0
        Mean field size in pixels.
    crs : str or CRS, default "EPSG:32633"
        CRS of the grid.
    resolution : float, default 10.0
        Pixel size in CRS units.
    seed : int, default 0
        Seed of every random draw.
    raw : bool, default False
        Return the acquisitions instead of the composites: a tuple ``(s2, s1)`` where ``s2``
        has ``B04``, ``B08`` (reflectance), ``SCL`` (float32, NaN = no data) and
        ``ndvi_true`` per Sentinel-2 date, and ``s1`` has ``vv``, ``vh`` (linear gamma0) per
        Sentinel-1 date; feed them to :func:`xfusion.methods.composite.gapfill_inputs`.
    chunks : tuple of int, optional
        Spatial chunks ``(cy, cx)``: return dask-backed variables (time in one chunk). The
        data are generated eagerly; chunking only wraps them.

    Returns
    -------
    xarray.Dataset or tuple of xarray.Dataset
        Composites (default): ``ndvi`` (NaN where no clear acquisition fell in the period),
        ``ndvi_true`` (composite of the cloud-free, noise-free NDVI of every acquisition),
        ``vh_db`` and ``rvi`` (from mean linear VV/VH), ``ndvi_count``; time = period starts;
        a ``landcover`` coordinate (indices into :data:`SERIES_CLASSES`) and ``spatial_ref``.

    Raises
    ------
    InvalidParameterError
        Out-of-range arguments.

    See Also
    --------
    simulate_gaps : hide observed steps to score a gap filler.
    xfusion.gapfill : the gap filler.

    Examples
    --------
    >>> from xfusion.testing import synthetic_series
    >>> ds = synthetic_series((16, 16), seed=1)
    >>> ds.sizes["time"], sorted(ds.data_vars)
    (46, ['ndvi', 'ndvi_count', 'ndvi_true', 'rvi', 'vh_db'])
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube.build import from_numpy
    from xfusion.methods.composite import composite, gapfill_inputs

    ny, nx = (int(v) for v in shape)
    checks = [
        (ny >= 1 and nx >= 1, f"shape={shape!r} must hold two positive sizes"),
        (int(years) >= 1, f"years={years!r} must be >= 1"),
        (0.0 <= cloud_cover < 1.0, f"cloud_cover={cloud_cover!r} must be in [0, 1)"),
        (noise >= 0, f"noise={noise!r} must be >= 0"),
        (looks > 0, f"looks={looks!r} must be > 0"),
        (s2_revisit >= 1 and s1_revisit >= 1, "revisits must be >= 1 day"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InvalidParameterError(f"synthetic_series(): {msg}.")
    rng = np.random.default_rng(seed)
    t0 = np.datetime64(f"{int(start_year):04d}-01-01", "ns")
    t1 = np.datetime64(f"{int(start_year) + int(years):04d}-01-01", "ns") - np.timedelta64(1, "D")
    field = _fields(rng, (ny, nx), field_size)
    nf = int(field.max()) + 1
    cls = rng.choice(6, size=nf, p=_CLASS_P)[field]
    params = [_Params(rng, field, nf) for _ in range(int(years))]
    static = _smooth_field(rng, (ny, nx), 2.0)
    sar_tex = 0.3 * rng.standard_normal((ny, nx)) + rng.normal(0, 0.7, nf)[field]

    # ---- Sentinel-2 acquisitions, clouds and shadows
    t2 = _acquisitions(t0, t1, s2_revisit, int(rng.integers(0, s2_revisit)))
    ndvi_t, _ = _truth(t2, int(start_year), cls, params, static)
    doy2, _ = _doy_year(t2, int(start_year))
    season = np.clip(cloud_cover + 0.2 * np.cos(2 * np.pi * (doy2 - 15) / 365.25), 0.02, 0.97)
    if cloud_cover == 0:
        season[:] = 0.0
    z = np.empty(t2.size)
    z[0] = rng.standard_normal()
    phi = 0.75
    for i in range(1, t2.size):
        z[i] = phi * z[i - 1] + np.sqrt(1 - phi**2) * rng.standard_normal()
    logit = np.log(np.maximum(season, 1e-6) / np.maximum(1 - season, 1e-6))
    frac = np.where(season > 0, _sig(logit + 1.5 * z), 0.0)
    scl = np.where(cls == _WATER, 6.0, 4.0)[None].repeat(t2.size, 0)
    scl = np.where((cls != _WATER) & (ndvi_t < 0.3), 5.0, scl)
    cloud = np.zeros((t2.size, ny, nx), dtype=bool)
    for i in range(t2.size):
        if frac[i] <= 0:
            continue
        f = _smooth_field(rng, (ny, nx), 6.0)
        thr = np.quantile(f, 1 - frac[i]) if frac[i] < 1 else -np.inf
        cloud[i] = f > thr
        shadow = np.roll(cloud[i], (3, 4), axis=(0, 1)) & ~cloud[i]
        scl[i] = np.where(shadow, 3.0, scl[i])
        scl[i] = np.where(cloud[i], np.where(f > thr + 0.6, 9.0, 8.0), scl[i])
    obs = ndvi_t + noise * rng.standard_normal(ndvi_t.shape)
    obs = np.where(scl[:, :, :] == 3.0, 0.7 * obs, obs)
    obs = np.where(cloud, 0.02 * rng.standard_normal(ndvi_t.shape), obs)
    bright = np.where(cls == _WATER, 0.06, 0.3 + 0.2 * np.maximum(obs, 0))
    bright = np.where(cloud, 0.9, bright)
    red = bright * (1 - obs) / 2
    nir = bright * (1 + obs) / 2

    # ---- Sentinel-1 acquisitions: biomass, soil moisture, wind, speckle
    ts1 = _acquisitions(t0, t1, s1_revisit, int(rng.integers(0, s1_revisit)))
    _, bio = _truth(ts1, int(start_year), cls, params, static)
    ndays = int((t1 - t0) / np.timedelta64(1, "D")) + 1
    rain = np.where(rng.random(ndays) < 0.12, rng.uniform(0.3, 1.0, ndays), 0.0)
    wet = np.zeros(ndays)
    for d in range(ndays):
        wet[d] = min(1.5, (wet[d - 1] * np.exp(-1 / 4) if d else 0.0) + rain[d])
    day1 = ((ts1 - t0) / np.timedelta64(1, "D")).astype(int)
    soil = wet[day1][:, None, None] * (1 - 0.7 * np.minimum(bio, 1.0))
    wind = rng.normal(0, 1, ts1.size)[:, None, None]
    water = cls == _WATER
    vh_db = _VH0[cls] + _VHG[cls] * bio + _SMH[cls] * soil + sar_tex + np.where(water, wind, 0)
    vv_db = _VV0[cls] + _VVG[cls] * bio + _SMV[cls] * soil + sar_tex + np.where(water, 2 * wind,
                                                                                  0)
    speck = rng.gamma(looks, 1.0 / looks, (2, *vh_db.shape))
    vh = 10 ** (vh_db / 10) * speck[0]
    vv = 10 ** (vv_db / 10) * speck[1]

    gbox = GeoBox((ny, nx), Affine(resolution, 0.0, 500000.0, 0.0, -resolution, 5100000.0), crs)
    f32 = np.float32
    s2 = from_numpy({"B04": red.astype(f32), "B08": nir.astype(f32), "SCL": scl.astype(f32),
                     "ndvi_true": ndvi_t.astype(f32)}, geobox=gbox, times=t2)
    s1 = from_numpy({"vv": vv.astype(f32), "vh": vh.astype(f32)}, geobox=gbox, times=ts1)
    lc = xr.DataArray(cls.astype(np.int8), dims=s2.odc.spatial_dims, attrs={
        "long_name": "land-cover class", "flag_values": list(range(len(SERIES_CLASSES))),
        "flag_meanings": " ".join(SERIES_CLASSES)})
    s2 = s2.assign_coords(landcover=lc)
    s1 = s1.assign_coords(landcover=lc)
    for v, u in (("B04", "1"), ("B08", "1"), ("ndvi_true", "1"), ("vv", "1"), ("vh", "1")):
        (s2 if v in s2 else s1)[v].attrs["units"] = u
    s2.attrs = s1.attrs = {"generator": "xfusion.testing.synthetic_series", "seed": int(seed)}
    if raw:
        if chunks is not None:
            s2 = s2.chunk({"time": 1, **dict(zip(s2.odc.spatial_dims, chunks, strict=True))})
            s1 = s1.chunk({"time": 1, **dict(zip(s1.odc.spatial_dims, chunks, strict=True))})
        return s2, s1
    out = gapfill_inputs(s2, s1, days=days, start=t0, end=t1)
    truth = composite(s2[["ndvi_true"]], days=days, start=t0, end=t1)
    out["ndvi_true"] = truth["ndvi_true"]
    out["ndvi"].attrs.update(long_name="8-day NDVI composite (clear acquisitions)")
    out["ndvi_true"].attrs.update(long_name="cloud-free, noise-free NDVI composite")
    out = out.assign_coords(landcover=lc)
    out.attrs.update(generator="xfusion.testing.synthetic_series", seed=int(seed))
    if chunks is not None:
        out = out.chunk({"time": -1, **dict(zip(out.odc.spatial_dims, chunks, strict=True))})
    return out


def simulate_gaps(
    values: xr.DataArray,
    /,
    *,
    fraction: float = 0.2,
    max_run: int = 8,
    min_run: int = 1,
    seed: int = 0,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Hide observed steps of every pixel's series, in runs, to score a gap filler.

    Runs of ``min_run..max_run`` consecutive steps (uniform lengths; with 8-day composites the
    default reaches 64 days) are placed at random until about ``fraction`` of all steps are
    covered; the observed values under them are hidden.

    Parameters
    ----------
    values : xarray.DataArray
        Series with ``time`` and NaN gaps (numpy-backed or small dask arrays; computed).
    fraction : float, default 0.2
        Approximate fraction of steps covered by the runs.
    max_run, min_run : int, default 8, 1
        Run lengths in steps.
    seed : int, default 0
        Random seed.

    Returns
    -------
    gappy : xarray.DataArray
        ``values`` with the hidden steps set to NaN.
    hidden : xarray.DataArray
        Boolean, True where an observed value was hidden (score the filler there).

    Raises
    ------
    InvalidParameterError
        Bad ``fraction`` or run lengths.
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidParameterError(f"fraction={fraction!r} must be in (0, 1).")
    if not 1 <= min_run <= max_run:
        raise InvalidParameterError(
            f"Run lengths must satisfy 1 <= min_run <= max_run; found {min_run}, {max_run}.")
    v = values.transpose("time", ...)
    arr = np.asarray(v.values)
    nt = arr.shape[0]
    flat = arr.reshape(nt, -1)
    npx = flat.shape[1]
    rng = np.random.default_rng(seed)
    mean_len = (min_run + max_run) / 2
    nruns = max(1, int(np.ceil(fraction * nt / mean_len)))
    starts = rng.integers(-max_run + 1, nt, (npx, nruns))
    lens = rng.integers(min_run, max_run + 1, (npx, nruns))
    t = np.arange(nt)[None, None, :]
    cover = ((t >= starts[..., None]) & (t < (starts + lens)[..., None])).any(axis=1).T
    hidden = cover & ~np.isnan(flat)
    gappy = np.where(hidden, np.nan, flat).reshape(arr.shape).astype(arr.dtype)
    g = v.copy(data=gappy).transpose(*values.dims)
    h = v.copy(data=hidden.reshape(arr.shape)).transpose(*values.dims)
    h.name = f"{values.name}_hidden" if values.name is not None else "hidden"
    h.attrs = {"long_name": "observed values hidden by simulate_gaps"}
    return g, h


# --------------------------------------------------------------------------------------------
# a realistic gap-filling benchmark scene

LANDSCAPES: dict[str, tuple[float, ...]] = {
    "mixed": (0.03, 0.04, 0.18, 0.25, 0.28, 0.22),
    "crops": (0.0, 0.02, 0.05, 0.13, 0.45, 0.35),
    "grass": (0.0, 0.02, 0.10, 0.70, 0.10, 0.08),
    "forest": (0.02, 0.02, 0.70, 0.16, 0.05, 0.05),
    "flat": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}
"""Class shares (in :data:`SERIES_CLASSES` order) of :func:`realistic_series` landscapes;
``"flat"``: constant NDVI per field (no phenology) with noise, SAR changing only with soil
moisture and speckle."""


def _cloud_mask(rng: np.random.Generator, doy: np.ndarray, shape: tuple[int, int], *,
                missing: float, overcast: tuple[float, float], overcast_start: tuple[float, float],
                spell_max: int) -> np.ndarray:
    """Clouds (T, ny, nx): one winter overcast plus spatially patchy spells of 1..spell_max
    steps, added until about ``missing`` of the pixel-steps are covered."""
    nt = doy.size
    ny, nx = shape
    cloud = np.zeros((nt, ny, nx), dtype=bool)
    start = rng.uniform(*overcast_start)
    length = rng.uniform(*overcast)
    cloud[(doy >= start) & (doy < start + length)] = True
    # spells: a smooth field thresholded to a coverage, for 1..spell_max steps (geometric
    # lengths, mean about 3); more often in the cold half of the year
    for _ in range(10 * nt):
        if cloud.mean() >= missing:
            break
        w = 1.0 + 0.6 * np.cos(2 * np.pi * (doy - 15) / 365.25)
        t = int(rng.choice(nt, p=w / w.sum()))
        dur = min(int(rng.geometric(0.3)), spell_max)
        cover = rng.uniform(0.15, 1.0)
        f = _smooth_field(rng, (ny, nx), rng.uniform(3.0, 10.0))
        patch = f > np.quantile(f, 1 - cover) if cover < 1 else np.ones((ny, nx), bool)
        cloud[t:t + dur] |= patch[None]
    return cloud


def realistic_series(
    shape: tuple[int, int] = (64, 64),
    *,
    landscape: str = "mixed",
    start_year: int = 2021,
    days: int = 5,
    missing: float = 1 / 3,
    overcast: tuple[float, float] = (45.0, 55.0),
    overcast_start: tuple[float, float] = (8.0, 40.0),
    spell_max: int = 12,
    noise: float = 0.012,
    contamination: float = 0.01,
    s1_revisit: int = 6,
    looks: float = 4.4,
    field_size: float = 10.0,
    crs: Any = "EPSG:32633",
    resolution: float = 10.0,
    seed: int = 0,
    chunks: Any = None,
) -> xr.Dataset:
    """A realistic one-year NDVI + SAR composite series to benchmark gap filling.

    Fields (Voronoi cells) of the :data:`SERIES_CLASSES` in the shares of ``landscape``: crops
    with sowing, green-up, senescence and harvest (summer and winter crops, cover crops),
    grassland mown two or three times (NDVI and biomass drop and regrow), forest with a
    seasonal canopy; the vegetation model of :func:`synthetic_series`. One Sentinel-2
    acquisition per ``days``-day composite (so the composite is the acquisition), with
    Gaussian noise ``noise`` and a share ``contamination`` of observations darkened by
    undetected thin clouds or shadows. Clouds: one winter overcast of ``overcast`` days
    starting between the days of year ``overcast_start`` (the whole scene), plus spatially
    patchy spells of 1..``spell_max`` composites, until about ``missing`` of all pixel-steps
    are missing. Sentinel-1 every ``s1_revisit`` days: VH and VV in dB tied to the biomass,
    soil moisture after rain and a per-field roughness, with gamma speckle of ``looks`` looks;
    composites are means of the linear backscatter (NaN where no acquisition fell in a
    period), features ``vh_db`` and ``rvi = 4 VH / (VV + VH)``.

    Parameters
    ----------
    shape : tuple of int, default (64, 64)
        ``(ny, nx)``.
    landscape : {"mixed", "crops", "grass", "forest", "flat"}, default "mixed"
        Land-cover shares (:data:`LANDSCAPES`); ``"flat"``: constant NDVI per field plus noise.
    start_year : int, default 2021
        The calendar year simulated (a non-leap year gives 73 five-day composites).
    days : int, default 5
        Composite period (and Sentinel-2 revisit).
    missing : float, default 1/3
        Target share of missing pixel-steps (overcast included).
    overcast, overcast_start : tuple of float
        Length range (days) and start range (day of year) of the winter overcast.
    spell_max : int, default 12
        Longest cloud spell in composites.
    noise, contamination : float
        NDVI noise standard deviation; share of contaminated observations.
    s1_revisit, looks : int, float
        Sentinel-1 revisit (days) and equivalent number of looks.
    field_size : float, default 10.0
        Mean field size in pixels.
    crs, resolution
        Grid.
    seed : int, default 0
        Seed of every random draw.
    chunks : tuple of int, optional
        Spatial chunks: dask-backed output (time in one chunk).

    Returns
    -------
    xarray.Dataset
        ``ndvi`` (NaN = cloudy), ``ndvi_true`` (noise-free NDVI of the acquisition),
        ``vh_db``, ``rvi``; coordinates ``landcover`` and ``spatial_ref``.

    Raises
    ------
    InvalidParameterError
        Unknown landscape or out-of-range arguments.

    Examples
    --------
    >>> from xfusion.testing import realistic_series
    >>> ds = realistic_series((16, 16), seed=1)
    >>> ds.sizes["time"], round(float(ds.ndvi.isnull().mean()), 1)
    (73, 0.3)
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube.build import from_numpy

    if landscape not in LANDSCAPES:
        raise InvalidParameterError(
            f"realistic_series(): landscape={landscape!r} is not one of {list(LANDSCAPES)}.")
    ny, nx = (int(v) for v in shape)
    checks = [
        (ny >= 1 and nx >= 1, f"shape={shape!r} must hold two positive sizes"),
        (0.0 <= missing < 0.9, f"missing={missing!r} must be in [0, 0.9)"),
        (int(days) >= 1 and int(s1_revisit) >= 1, "days and s1_revisit must be >= 1"),
        (noise >= 0 and 0 <= contamination < 1, "noise >= 0 and contamination in [0, 1)"),
        (looks > 0 and int(spell_max) >= 1, "looks > 0 and spell_max >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InvalidParameterError(f"realistic_series(): {msg}.")
    rng = np.random.default_rng(seed)
    t0 = np.datetime64(f"{int(start_year):04d}-01-01", "ns")
    t1 = np.datetime64(f"{int(start_year) + 1:04d}-01-01", "ns")
    step = np.timedelta64(int(days), "D")
    periods = t0 + np.arange(int((t1 - t0) / step)) * step
    nt = periods.size
    field = _fields(rng, (ny, nx), field_size)
    nf = int(field.max()) + 1
    flat = landscape == "flat"
    share = np.asarray(LANDSCAPES["mixed" if flat else landscape])
    cls = rng.choice(6, size=nf, p=share / share.sum())[field]
    params = _Params(rng, field, nf)
    static = _smooth_field(rng, (ny, nx), 2.0)
    sar_tex = 0.3 * rng.standard_normal((ny, nx)) + rng.normal(0, 0.7, nf)[field]

    # ---- optical: one acquisition per period
    t_acq = periods + np.timedelta64(int(rng.integers(0, int(days))), "D") + np.timedelta64(10, "h")
    doy2, _ = _doy_year(t_acq, int(start_year))
    if flat:
        level = rng.uniform(0.25, 0.85, nf)[field] + 0.02 * static
        ndvi_t = np.broadcast_to(level, (nt, ny, nx)).copy()
        cls = np.full((ny, nx), _GRASS)
    else:
        ndvi_t, _ = _vegetation(cls, params, doy2)
        ndvi_t = np.where(cls != _WATER, np.clip(ndvi_t + 0.03 * static, -0.2, 0.95), ndvi_t)

    def bio_of(d: np.ndarray) -> np.ndarray:
        if flat:
            return np.broadcast_to(0.8 * level, (d.size, ny, nx))
        return _vegetation(cls, params, d)[1]
    cloud = _cloud_mask(rng, doy2, (ny, nx), missing=float(missing), overcast=overcast,
                        overcast_start=overcast_start, spell_max=int(spell_max))
    obs = ndvi_t + noise * rng.standard_normal(ndvi_t.shape)
    dirty = rng.random(ndvi_t.shape) < contamination
    obs = np.where(dirty, obs - rng.uniform(0.03, 0.15, ndvi_t.shape), obs)
    ndvi = np.where(cloud, np.nan, obs)

    # ---- SAR acquisitions, composited as means of linear backscatter
    off = np.timedelta64(int(rng.integers(0, int(s1_revisit))), "D")
    ts1 = np.arange(t0 + off, t1, np.timedelta64(int(s1_revisit), "D")) + np.timedelta64(17, "h")
    doy1, _ = _doy_year(ts1, int(start_year))
    bio = np.asarray(bio_of(doy1))
    ndays = int((t1 - t0) / np.timedelta64(1, "D"))
    rain = np.where(rng.random(ndays) < 0.12, rng.uniform(0.3, 1.0, ndays), 0.0)
    wet = np.zeros(ndays)
    for d in range(ndays):
        wet[d] = min(1.5, (wet[d - 1] * np.exp(-1 / 4) if d else 0.0) + rain[d])
    day1 = ((ts1 - t0) / np.timedelta64(1, "D")).astype(int)
    soil = wet[day1][:, None, None] * (1 - 0.7 * np.minimum(bio, 1.0))
    water = cls == _WATER
    wind = rng.normal(0, 1, ts1.size)[:, None, None]
    vh_db = _VH0[cls] + _VHG[cls] * bio + _SMH[cls] * soil + sar_tex + np.where(water, wind, 0)
    vv_db = (_VV0[cls] + _VVG[cls] * bio + _SMV[cls] * soil + sar_tex
             + np.where(water, 2 * wind, 0))
    speck = rng.gamma(looks, 1.0 / looks, (2, *vh_db.shape))
    vh = 10 ** (vh_db / 10) * speck[0]
    vv = 10 ** (vv_db / 10) * speck[1]
    k = ((ts1 - t0) // step).astype(int)
    vh_c = np.full((nt, ny, nx), np.nan)
    vv_c = np.full((nt, ny, nx), np.nan)
    for i in range(nt):
        sel = k == i
        if sel.any():
            vh_c[i] = vh[sel].mean(axis=0)
            vv_c[i] = vv[sel].mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        vhdb_c = 10 * np.log10(vh_c)
        rvi_c = 4 * vh_c / (vv_c + vh_c)

    gbox = GeoBox((ny, nx), Affine(resolution, 0.0, 500000.0, 0.0, -resolution, 5100000.0), crs)
    f32 = np.float32
    out = from_numpy({"ndvi": ndvi.astype(f32), "ndvi_true": ndvi_t.astype(f32),
                      "vh_db": vhdb_c.astype(f32), "rvi": rvi_c.astype(f32)},
                     geobox=gbox, times=periods)
    lc = xr.DataArray(cls.astype(np.int8), dims=out.odc.spatial_dims, attrs={
        "long_name": "land-cover class", "flag_values": list(range(len(SERIES_CLASSES))),
        "flag_meanings": " ".join(SERIES_CLASSES)})
    out = out.assign_coords(landcover=lc)
    for v in out.data_vars.values():
        v.attrs.pop("units", None)
    out["ndvi"].attrs.update(long_name=f"{days}-day NDVI composite (NaN = cloudy)")
    out["ndvi_true"].attrs.update(long_name="noise-free NDVI")
    out["vh_db"].attrs.update(long_name="VH backscatter", units="dB")
    out["rvi"].attrs.update(long_name="radar vegetation index 4 VH / (VV + VH)")
    out.attrs = {"generator": "xfusion.testing.realistic_series", "seed": int(seed),
                 "landscape": landscape}
    if chunks is not None:
        out = out.chunk({"time": -1, **dict(zip(out.odc.spatial_dims, chunks, strict=True))})
    return out
