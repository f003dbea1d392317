"""Synthetic fusion scenes with known truth, eager or lazily generated block by block.

Every pixel value is a deterministic function of ``(seed, date, global pixel index)``:
smooth fields are sums of random sinusoids (random Fourier features, whose parameters are
drawn once from the seed) and per-pixel noise is a counter-based hash of the pixel index.
Nothing is drawn from a stateful per-block RNG, so a scene generated with ``chunks=`` equals
the eager one whatever the chunking, and any block can be computed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from xfusion.errors import InvalidParameterError, TimeAxisError

__all__ = ["LANDCOVER_CLASSES", "REFLECTANCE_BANDS", "synthetic_cube", "synthetic_scene"]

LANDCOVER_CLASSES: tuple[str, ...] = ("water", "urban", "forest", "cropland", "grassland")
"""Land-cover class names, indexed by the values of the ``landcover`` coordinate."""

_WATER, _URBAN, _FOREST, _CROP, _GRASS = range(5)

# Reflectance endmembers per band: (water, bare soil, green vegetation, impervious/urban).
_ENDMEMBERS: dict[str, tuple[float, float, float, float]] = {
    "blue": (0.060, 0.080, 0.030, 0.100),
    "green": (0.070, 0.110, 0.080, 0.120),
    "red": (0.045, 0.150, 0.035, 0.140),
    "nir": (0.020, 0.230, 0.450, 0.180),
    "swir16": (0.010, 0.310, 0.220, 0.220),
    "swir22": (0.005, 0.260, 0.110, 0.200),
}
_BAND_ALIASES = {"nir08": "nir"}

REFLECTANCE_BANDS: tuple[str, ...] = (*_ENDMEMBERS, *_BAND_ALIASES)
"""Band names accepted by ``synthetic_scene(kind="reflectance", bands=...)``."""

# Per-class LST model (kelvin): base, seasonal amplitude, diurnal amplitude, vegetation cooling,
# amplitude of the within-class texture.
_LST_BASE = np.array([284.0, 294.0, 289.0, 295.0, 292.0])
_LST_SEASON = np.array([8.0, 13.0, 11.0, 12.0, 11.0])
_LST_DIURNAL = np.array([2.0, 10.0, 6.0, 9.0, 8.0])
_LST_COOLING = np.array([0.0, 4.0, 6.0, 10.0, 6.0])
_LST_TEXTURE = np.array([0.3, 1.5, 0.6, 1.0, 0.8])
# Per-class C-band backscatter (dB) at zero greenness and its sensitivity to greenness.
_VV = np.array([-22.0, -5.0, -8.5, -15.0, -13.0])
_VV_G = np.array([0.0, 0.0, 0.5, 6.0, 3.0])
_VH = np.array([-28.0, -13.0, -13.5, -23.0, -20.0])
_VH_G = np.array([0.0, 0.0, 1.0, 7.0, 3.0])

_DEFAULT_LONLAT = (14.30, 46.25)  # near Kranj, Slovenia (UTM zone 33N)
_DEFAULT_START = np.datetime64("2021-04-03T10:00:00", "ns")
_DEFAULT_STEP = np.timedelta64(16, "D")
_NWAVES = 32  # sinusoids per smooth random field
_FIELD = 16  # mean field (Voronoi cell) size in fine pixels
_FINE_CLOUD_SCALE = 24.0  # cloud length scale in fine pixels
_SAR_LOOKS = 4

# Streams: independent random fields / noises derived from the seed.
(
    _S_ZONE,
    _S_TREND,
    _S_TEX,
    _S_URBAN,
    _S_CELL_Y,
    _S_CELL_X,
    _S_CELL_V,
    _S_CELL_C,
    _S_WEATHER,
    _S_FCLOUD,
    _S_CCLOUD,
    _S_CNOISE,
    _S_SPECKLE,
    _S_CUBE,
) = range(1, 15)

Kind = Literal["lst", "reflectance"]
CoarseResampling = Literal["nearest", "bilinear"]


# --------------------------------------------------------------------------------------------
# Deterministic noise
# --------------------------------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G1 = np.uint64(0x9E3779B97F4A7C15)
_G2 = np.uint64(0xD1B54A32D192ED03)
_U30, _U27, _U31, _U11 = (np.uint64(v) for v in (30, 27, 31, 11))


def _key(*parts: int) -> int:
    """A 64-bit key from integers (negative ones allowed)."""
    entropy = [int(p) % (1 << 64) for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _U30)
    x = x * _M1
    x = x ^ (x >> _U27)
    x = x * _M2
    return x ^ (x >> _U31)


def _as_u64(v: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(v, dtype=np.int64)).view(np.uint64)


def _hash_uniform(key: int, i: Any, j: Any) -> np.ndarray:
    """Uniform (0, 1) float64 values, a pure function of ``(key, i, j)`` (broadcast)."""
    with np.errstate(over="ignore"):
        x = _mix(_as_u64(i) * _G1 + np.uint64(key))
        x = _mix(x ^ (_as_u64(j) * _G2))
    return ((x >> _U11).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _hash_normal(key: int, i: Any, j: Any) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(_hash_uniform(key, i, j))


def _waves(key: int, length: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(key)
    k = rng.normal(size=(_NWAVES, 2)) / length
    phi = rng.uniform(0.0, 2.0 * np.pi, size=_NWAVES)
    return k, phi


def _field_grid(key: int, length: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Smooth, unit-variance random field on the grid ``rows x cols`` (float32).

    A sum of ``_NWAVES`` sinusoids with Gaussian-distributed wave vectors (squared-exponential
    covariance with the given length scale, in pixels), evaluated as one small matrix product
    thanks to ``cos(a + b) = cos a cos b - sin a sin b``.
    """
    k, phi = _waves(key, length)
    a = np.outer(rows, k[:, 0]) + phi
    b = np.outer(cols, k[:, 1])
    u = np.concatenate([np.cos(a), -np.sin(a)], axis=1)
    v = np.concatenate([np.cos(b), np.sin(b)], axis=1)
    # float64 product then rounding: float32 values do not depend on the window (chunking)
    return ((u @ v.T) * math.sqrt(2.0 / _NWAVES)).astype(np.float32)


def _field_points(key: int, length: float, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """The same field as :func:`_field_grid` at scattered points (float64, shape of ``py``)."""
    k, phi = _waves(key, length)
    arg = py[..., None] * k[:, 0] + px[..., None] * k[:, 1] + phi
    return np.cos(arg).sum(axis=-1) * math.sqrt(2.0 / _NWAVES)


def _date_parts(t_ns: int) -> tuple[float, float, int]:
    """Fractional day of year, UTC hour and day number (since 1970) of a timestamp."""
    t = np.datetime64(int(t_ns), "ns")
    year = t.astype("datetime64[Y]")
    secs = (t - year.astype("datetime64[ns]")) / np.timedelta64(1, "s")
    doy = 1.0 + secs / 86400.0
    hour = (secs % 86400.0) / 3600.0
    day = int(t.astype("datetime64[D]").astype(np.int64))
    return float(doy), float(hour), day


# --------------------------------------------------------------------------------------------
# Scene specification and the block renderer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    kind: str
    bands: tuple[str, ...]  # ("lst",) for kind="lst"
    times_ns: tuple[int, ...]
    fine_obs: tuple[bool, ...]
    fine_cloud: tuple[float, ...]
    coarse_cloud: tuple[float, ...]
    factor: int
    psf_sigma: float
    noise: tuple[float, ...]
    bias: tuple[float, ...]
    seed: int
    coarse_shape: tuple[int, int]
    coarse_resampling: str

    def band_index(self, band: str) -> int:
        return self.bands.index(band)


Window = tuple[int, int, int, int]  # r0, r1, c0, c1 (global fine pixel indices, half-open)


def _contains(outer: Window, inner: Window) -> bool:
    return (
        outer[0] <= inner[0]
        and inner[1] <= outer[1]
        and outer[2] <= inner[2]
        and inner[3] <= outer[3]
    )


def _crop(arr: np.ndarray, outer: Window, inner: Window) -> np.ndarray:
    return arr[
        ..., inner[0] - outer[0] : inner[1] - outer[0], inner[2] - outer[2] : inner[3] - outer[2]
    ]


class _Renderer:
    """Computes any variable of a scene on any window; caches fields within one call."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self._static: list[tuple[Window, dict[str, np.ndarray]]] = []
        self._cache: dict[tuple[Any, ...], list[tuple[Window, np.ndarray]]] = {}

    # -- caching helpers -------------------------------------------------------------------
    def _lookup(self, key: tuple[Any, ...], win: Window) -> np.ndarray | None:
        for outer, arr in self._cache.get(key, ()):
            if _contains(outer, win):
                return _crop(arr, outer, win)
        return None

    def _store(self, key: tuple[Any, ...], win: Window, arr: np.ndarray) -> np.ndarray:
        self._cache.setdefault(key, []).append((win, arr))
        return arr

    def forget(self, ti: int) -> None:
        """Drop the cached fields of date ``ti`` (keys are ``(what, ti, ...)``)."""
        for key in [k for k in self._cache if k[1] == ti]:
            del self._cache[key]

    # -- static fields (land cover, texture, per-field values) ------------------------------
    def static(self, win: Window) -> dict[str, np.ndarray]:
        for outer, fields in self._static:
            if _contains(outer, win):
                return {k: _crop(v, outer, win) for k, v in fields.items()}
        fields = self._compute_static(win)
        self._static.append((win, fields))
        return fields

    def _compute_static(self, win: Window) -> dict[str, np.ndarray]:
        seed = self.spec.seed
        r0, r1, c0, c1 = win
        rows = np.arange(r0, r1, dtype=np.float64)
        cols = np.arange(c0, c1, dtype=np.float64)
        zone = _field_grid(_key(seed, _S_ZONE), 4.0 * _FIELD, rows, cols)
        trend = _field_grid(_key(seed, _S_TREND), 12.0 * _FIELD, rows, cols)
        tex = _field_grid(_key(seed, _S_TEX), 2.5, rows, cols)

        # Fields/parcels: Voronoi cells of one jittered point per _FIELD x _FIELD cell, on the
        # window padded to whole cells and viewed as (cell row, row in cell, cell col, col in
        # cell), so the 3 x 3 candidate search is pure broadcasting. Offsets are relative to each
        # pixel's own cell: the float32 arithmetic does not depend on the window.
        S = _FIELD
        a_lo, a_hi = r0 // S, -(-r1 // S)
        b_lo, b_hi = c0 // S, -(-c1 // S)
        na, nb = a_hi - a_lo, b_hi - b_lo
        A = np.arange(a_lo - 1, a_hi + 1, dtype=np.int64)[:, None]
        B = np.arange(b_lo - 1, b_hi + 1, dtype=np.int64)[None, :]
        jy = ((0.1 + 0.8 * _hash_uniform(_key(seed, _S_CELL_Y), A, B)) * S).astype(np.float32)
        jx = ((0.1 + 0.8 * _hash_uniform(_key(seed, _S_CELL_X), A, B)) * S).astype(np.float32)
        local = np.arange(S, dtype=np.float32)
        ly, lx = local[None, :, None, None], local[None, None, None, :]
        best = np.full((na, S, nb, S), np.inf, dtype=np.float32)
        pick = np.zeros((na, S, nb, S), dtype=np.int8)
        mask = np.empty(best.shape, dtype=bool)
        for k, (da, db) in enumerate((da, db) for da in (-1, 0, 1) for db in (-1, 0, 1)):
            oy = np.float32(da * S) + jy[1 + da : 1 + da + na, 1 + db : 1 + db + nb]
            ox = np.float32(db * S) + jx[1 + da : 1 + da + na, 1 + db : 1 + db + nb]
            dy = ly - oy[:, None, :, None]
            dx = lx - ox[:, None, :, None]
            d = dy * dy + dx * dx
            np.less(d, best, out=mask)
            np.copyto(best, d, where=mask)
            np.copyto(pick, np.int8(k), where=mask)
        del best, mask
        win_r = slice(r0 - a_lo * S, r1 - a_lo * S)
        win_c = slice(c0 - b_lo * S, c1 - b_lo * S)
        pick2 = pick.reshape(na * S, nb * S)[win_r, win_c]
        arow = np.repeat(np.arange(na, dtype=np.int32), S)[win_r][:, None]
        bcol = np.repeat(np.arange(nb, dtype=np.int32), S)[win_c][None, :]
        # flat index into the (na + 2, nb + 2) cell grid of the chosen candidate
        cell = (arow + 1 + pick2 // 3 - 1) * np.int32(nb + 2) + (bcol + 1 + pick2 % 3 - 1)
        py = (A + jy / S) * S
        px = (B + jx / S) * S
        cell_v = (2.0 * _hash_uniform(_key(seed, _S_CELL_V), A, B) - 1.0).astype(np.float32)
        cell_u = _field_points(_key(seed, _S_URBAN), 6.0 * _FIELD, py, px)
        cell_h = _hash_uniform(_key(seed, _S_CELL_C), A, B)
        cell_cls = np.where(cell_u > 1.1, _URBAN, np.where(cell_h < 0.6, _CROP, _GRASS))
        cls = cell_cls.astype(np.int8).ravel()[cell]
        cls[zone < -1.4] = _WATER
        cls[zone > 0.8] = _FOREST
        v = cell_v.ravel()[cell]
        return {
            "cls": cls,
            "v": v,
            "tex": tex,
            "trend": trend,
        }

    # -- truth -------------------------------------------------------------------------------
    def greenness(self, ti: int, win: Window) -> np.ndarray:
        hit = self._lookup(("g", ti), win)
        if hit is not None:
            return hit
        st = self.static(win)
        doy, _, _ = _date_parts(self.spec.times_ns[ti])
        cls, v, tex = st["cls"], st["v"], st["tex"]
        pos = 0.5 - 0.5 * math.cos(2.0 * math.pi * (doy - 15.0) / 365.25)
        onset = 125.0 + 20.0 * v
        end = 225.0 + 15.0 * v
        crop = 0.08 + 0.82 * (_sigmoid((doy - onset) / 7.0) - _sigmoid((doy - end) / 9.0))
        table = np.array([0.0, 0.12 + 0.06 * pos, 0.45 + 0.35 * pos, 0.0, 0.30 + 0.40 * pos])
        g = np.where(cls == _CROP, crop, table[cls].astype(np.float32))
        g = np.where(cls == _WATER, 0.0, np.clip(g + 0.03 * tex, 0.0, 1.0)).astype(np.float32)
        return self._store(("g", ti), win, g)

    def reflectance(self, ti: int, band: str, win: Window) -> np.ndarray:
        band = _BAND_ALIASES.get(band, band)
        hit = self._lookup(("rho", ti, band), win)
        if hit is not None:
            return hit
        st = self.static(win)
        cls, v, tex = st["cls"], st["v"], st["tex"]
        g = self.greenness(ti, win)
        w_b, soil_b, veg_b, urb_b = _ENDMEMBERS[band]
        soil = soil_b * (1.0 + 0.08 * v + 0.04 * tex)
        land = (1.0 - g) * np.where(cls == _URBAN, urb_b * (1.0 + 0.05 * tex), soil) + g * veg_b
        water = w_b * (1.0 + 0.1 * tex)
        rho = np.where(cls == _WATER, water, land).astype(np.float32)
        return self._store(("rho", ti, band), win, rho)

    def lst(self, ti: int, win: Window) -> np.ndarray:
        hit = self._lookup(("lst", ti), win)
        if hit is not None:
            return hit
        st = self.static(win)
        cls, tex, trend = st["cls"], st["tex"], st["trend"]
        doy, hour, day = _date_parts(self.spec.times_ns[ti])
        season = -math.cos(2.0 * math.pi * (doy - 15.0) / 365.25)
        diurnal = math.cos(2.0 * math.pi * (hour - 13.5) / 24.0)
        weather = 2.0 * float(_hash_normal(_key(self.spec.seed, _S_WEATHER), day, 0)[0])
        per_class = (_LST_BASE + _LST_SEASON * season + _LST_DIURNAL * diurnal).astype(np.float32)
        cooling = _LST_COOLING.astype(np.float32)
        texture = _LST_TEXTURE.astype(np.float32)
        g = self.greenness(ti, win)
        t = (
            per_class[cls]
            - cooling[cls] * g
            + texture[cls] * tex
            + np.float32(1.5) * trend
            + np.float32(weather)
        )
        return self._store(("lst", ti), win, t.astype(np.float32))

    def truth(self, ti: int, band: str, win: Window) -> np.ndarray:
        if self.spec.kind == "lst":
            return self.lst(ti, win)
        return self.reflectance(ti, band, win)

    # -- sensors -----------------------------------------------------------------------------
    def fine(self, ti: int, band: str, win: Window) -> np.ndarray:
        shape = (win[1] - win[0], win[3] - win[2])
        if not self.spec.fine_obs[ti]:
            return np.full(shape, np.nan, dtype=np.float32)
        out = self.truth(ti, band, win).copy()
        cloud = self.fine_cloud(ti, win)
        if cloud is not None:
            out[cloud] = np.nan
        return out

    def fine_cloud(self, ti: int, win: Window) -> np.ndarray | None:
        frac = self.spec.fine_cloud[ti]
        if frac <= 0.0:
            return None
        hit = self._lookup(("fcloud", ti), win)
        if hit is not None:
            return hit
        _, _, day = _date_parts(self.spec.times_ns[ti])
        rows = np.arange(win[0], win[1], dtype=np.float64)
        cols = np.arange(win[2], win[3], dtype=np.float64)
        key = _key(self.spec.seed, _S_FCLOUD, day)
        mask = _field_grid(key, _FINE_CLOUD_SCALE, rows, cols) > _threshold(frac)
        return self._store(("fcloud", ti), win, mask)

    def coarse_native(self, ti: int, band: str, cwin: Window) -> np.ndarray:
        """Coarse pixels ``cwin`` (coarse indices): PSF blur + block mean + bias + noise."""
        spec = self.spec
        hit = self._lookup(("cn", ti, band), cwin)
        if hit is not None:
            return hit
        f = spec.factor
        kern, h = _psf_kernel(f, spec.psf_sigma)
        i0, i1, j0, j1 = cwin
        fwin = (i0 * f - h, i1 * f + h, j0 * f - h, j1 * f + h)
        t = self.truth(ti, band, fwin)
        # separable weighted sums over each coarse pixel's footprint (+ halo): no BLAS, so the
        # summation order and the result do not depend on the window
        rows_w = sliding_window_view(t, kern.size, axis=0)[::f]
        r = np.einsum("axm,m->ax", rows_w, kern)
        c = np.einsum("abm,m->ab", sliding_window_view(r, kern.size, axis=1)[:, ::f], kern)
        b = spec.band_index(band)
        c += spec.bias[b]
        _, _, day = _date_parts(spec.times_ns[ti])
        if spec.noise[b] > 0:
            key = _key(spec.seed, _S_CNOISE, _band_code(band), day)
            ii = np.arange(i0, i1, dtype=np.int64)[:, None]
            jj = np.arange(j0, j1, dtype=np.int64)[None, :]
            c += spec.noise[b] * _hash_normal(key, ii, jj)
        frac = spec.coarse_cloud[ti]
        if frac > 0.0:
            centre_r = np.arange(i0, i1, dtype=np.float64) * f + 0.5 * (f - 1)
            centre_c = np.arange(j0, j1, dtype=np.float64) * f + 0.5 * (f - 1)
            key = _key(spec.seed, _S_CCLOUD, day)
            scale = max(_FINE_CLOUD_SCALE, 1.5 * f)
            c[_field_grid(key, scale, centre_r, centre_c) > _threshold(frac)] = np.nan
        return self._store(("cn", ti, band), cwin, c)

    def coarse(self, ti: int, band: str, win: Window) -> np.ndarray:
        """The coarse sensor put back on the fine grid (nearest or bilinear)."""
        spec = self.spec
        f = spec.factor
        ni, nj = spec.coarse_shape
        rows = np.arange(win[0], win[1])
        cols = np.arange(win[2], win[3])
        if spec.coarse_resampling == "nearest":
            ri, ci = rows // f, cols // f
            cwin = (int(ri[0]), int(ri[-1]) + 1, int(ci[0]), int(ci[-1]) + 1)
            c = self.coarse_native(ti, band, cwin)
            return c[(ri - cwin[0])[:, None], (ci - cwin[2])[None, :]].astype(np.float32)
        # bilinear between coarse pixel centres, edges clamped (as GDAL does)
        ur = (rows + 0.5) / f - 0.5
        uc = (cols + 0.5) / f - 0.5
        r_lo = np.clip(np.floor(ur).astype(np.int64), 0, ni - 1)
        c_lo = np.clip(np.floor(uc).astype(np.int64), 0, nj - 1)
        r_hi = np.clip(np.floor(ur).astype(np.int64) + 1, 0, ni - 1)
        c_hi = np.clip(np.floor(uc).astype(np.int64) + 1, 0, nj - 1)
        wr = np.clip(ur - np.floor(ur), 0.0, 1.0)
        wc = np.clip(uc - np.floor(uc), 0.0, 1.0)
        wr = np.where(r_lo == r_hi, 0.0, wr)[:, None]
        wc = np.where(c_lo == c_hi, 0.0, wc)[None, :]
        cwin = (int(r_lo.min()), int(r_hi.max()) + 1, int(c_lo.min()), int(c_hi.max()) + 1)
        c = self.coarse_native(ti, band, cwin)
        rl, rh = (r_lo - cwin[0])[:, None], (r_hi - cwin[0])[:, None]
        cl, ch = (c_lo - cwin[2])[None, :], (c_hi - cwin[2])[None, :]
        top = c[rl, cl] * (1.0 - wc) + c[rl, ch] * wc
        bot = c[rh, cl] * (1.0 - wc) + c[rh, ch] * wc
        return (top * (1.0 - wr) + bot * wr).astype(np.float32)

    def ndvi(self, ti: int, win: Window) -> np.ndarray:
        red = self.reflectance(ti, "red", win)
        nir = self.reflectance(ti, "nir", win)
        return ((nir - red) / (nir + red)).astype(np.float32)

    def sar(self, ti: int, pol: str, win: Window) -> np.ndarray:
        st = self.static(win)
        cls, tex = st["cls"], st["tex"]
        g = self.greenness(ti, win)
        if pol == "vv":
            db = _VV[cls] + _VV_G[cls] * g + 0.5 * tex
        else:
            db = _VH[cls] + _VH_G[cls] * g + 0.5 * tex
        _, _, day = _date_parts(self.spec.times_ns[ti])
        ii = np.arange(win[0], win[1], dtype=np.int64)[:, None]
        jj = np.arange(win[2], win[3], dtype=np.int64)[None, :]
        speckle = np.zeros(db.shape, dtype=np.float64)
        for look in range(_SAR_LOOKS):
            key = _key(self.spec.seed, _S_SPECKLE, 0 if pol == "vv" else 1, look, day)
            speckle -= np.log(_hash_uniform(key, ii, jj))
        speckle /= _SAR_LOOKS
        return (10.0 ** (db / 10.0) * speckle).astype(np.float32)

    def landcover(self, win: Window) -> np.ndarray:
        return self.static(win)["cls"]

    # -- dispatch ----------------------------------------------------------------------------
    def render(self, what: tuple[str, str], ti: int, win: Window) -> np.ndarray:
        role, band = what
        if role == "truth":
            return self.truth(ti, band, win)
        if role == "fine":
            return self.fine(ti, band, win)
        if role == "coarse":
            return self.coarse(ti, band, win)
        if role == "coarse_native":
            return self.coarse_native(ti, band, win).astype(np.float32)
        if role == "ndvi":
            return self.ndvi(ti, win)
        if role in ("vv", "vh"):
            return self.sar(ti, role, win)
        raise AssertionError(role)  # pragma: no cover


def _band_code(band: str) -> int:
    """A stable integer per band (noise streams do not depend on the order of `bands`)."""
    return ("lst", *_ENDMEMBERS).index(_BAND_ALIASES.get(band, band))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _threshold(frac: float) -> float:
    from scipy.special import ndtri

    if frac >= 1.0:
        return -np.inf
    return float(ndtri(1.0 - frac))


def _psf_kernel(factor: int, sigma: float) -> tuple[np.ndarray, int]:
    """1-D weights of 'Gaussian PSF then mean over a block of ``factor`` pixels', and its halo."""
    if sigma > 0:
        h = int(4.0 * sigma + 0.5)
        x = np.arange(-h, h + 1, dtype=np.float64)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        g /= g.sum()
    else:
        h, g = 0, np.ones(1)
    return np.convolve(np.full(factor, 1.0 / factor), g), h


# --------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------
def _parse_times(times: Any, name: str = "times") -> np.ndarray:
    if times is None:
        times = 8
    if isinstance(times, (int, np.integer)) and not isinstance(times, bool):
        if times < 1:
            raise InvalidParameterError(
                f"{name}={times!r} asks for no dates. Pass a positive number of dates (e.g. "
                f"{name}=8, 16 days apart from 2021-04-03) or a list of dates."
            )
        return _DEFAULT_START + _DEFAULT_STEP * np.arange(int(times))
    if isinstance(times, (str, np.datetime64, pd.Timestamp)):
        times = [times]
    idx = pd.DatetimeIndex(pd.to_datetime(list(times)))
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    out = idx.values.astype("datetime64[ns]")
    if out.size == 0:
        raise InvalidParameterError(f"{name} is empty. Pass at least one date, or an int count.")
    if np.unique(out).size != out.size or np.any(np.diff(out) <= np.timedelta64(0, "ns")):
        raise TimeAxisError(
            f"{name} must be sorted and free of duplicates; found {[str(t)[:19] for t in out]!r}. "
            "Sort them and drop repeats, e.g. `sorted(set(times))`."
        )
    return out


def _resolve_fine_times(fine_times: Any, times: np.ndarray) -> np.ndarray:
    n = times.size
    if fine_times is None:
        return np.isin(np.arange(n), sorted({0, n // 2, n - 1}))
    if isinstance(fine_times, (str, np.datetime64, pd.Timestamp, int, np.integer)):
        fine_times = [fine_times]
    obs = np.zeros(n, dtype=bool)
    for ft in fine_times:
        if isinstance(ft, (int, np.integer)) and not isinstance(ft, bool):
            if not -n <= ft < n:
                raise InvalidParameterError(
                    f"fine_times index {ft!r} is out of range for {n} dates. Use indices "
                    f"0..{n - 1} or dates from `times`."
                )
            obs[ft] = True
            continue
        t = _parse_times([ft], name="fine_times")[0]
        hit = np.nonzero(times == t)[0]
        if hit.size == 0:
            raise InvalidParameterError(
                f"fine_times date {str(t)[:19]!r} is not one of the scene dates "
                f"{[str(x)[:19] for x in times]!r}. Pass dates from `times` or integer indices."
            )
        obs[hit[0]] = True
    return obs


def _per_date(value: Any, n: int, name: str, default_mask: np.ndarray) -> tuple[float, ...]:
    """A float per date: a scalar applies where ``default_mask``, a sequence gives each date."""
    if np.ndim(value) == 0:
        v = float(value)
        vals = np.where(default_mask, v, 0.0)
    else:
        vals = np.asarray(value, dtype=np.float64)
        if vals.shape != (n,):
            raise InvalidParameterError(
                f"{name} has {vals.size} values but there are {n} dates for it. Pass one float "
                "(applied to every date but the first fine acquisition) or one value per date."
            )
    if np.any((vals < 0) | (vals > 1)) or np.any(~np.isfinite(vals)):
        raise InvalidParameterError(
            f"{name}={value!r} is out of range: cloud fractions are in [0, 1]."
        )
    return tuple(float(v) for v in vals)


def _per_band(value: Any, bands: tuple[str, ...], name: str, default: float) -> tuple[float, ...]:
    if value is None:
        return tuple(default for _ in bands)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(bands))
        if unknown:
            raise InvalidParameterError(
                f"{name} names bands {unknown!r} that the scene does not have; its bands are "
                f"{list(bands)!r}."
            )
        return tuple(float(value.get(b, default)) for b in bands)
    return tuple(float(value) for _ in bands)


def _default_grid(crs: Any, resolution: float | None, origin: Any, factor: int) -> tuple:
    from odc.geo import CRS
    from odc.geo.geom import point

    try:
        crs_obj = CRS(crs)
    except Exception as err:  # pyproj raises CRSError (a RuntimeError) with its own text
        raise InvalidParameterError(
            f"crs={crs!r} is not a CRS odc-geo understands ({err}). Pass an EPSG code such as "
            "'EPSG:32633' (UTM 33N) or 'EPSG:4326' (geographic), or a WKT string."
        ) from err
    if resolution is None:
        resolution = 0.00025 if crs_obj.geographic else 30.0
    resolution = float(resolution)
    if not resolution > 0:
        raise InvalidParameterError(
            f"resolution={resolution!r} must be a positive pixel size in CRS units "
            "(e.g. 30.0 metres, or 0.00025 degrees for a geographic CRS)."
        )
    if origin is None:
        x, y = point(*_DEFAULT_LONLAT, "EPSG:4326").to_crs(crs_obj).coords[0]
        step = resolution * factor
        origin = (math.floor(x / step) * step, math.ceil(y / step) * step)
    x0, y0 = (float(v) for v in origin)
    return crs_obj, resolution, (x0, y0)


def _normalize_chunks(
    chunks: Any, shape: tuple[int, int, int], dims: tuple[str, str, str]
) -> tuple[tuple[int, ...], ...] | None:
    import dask.array as da

    if chunks is None:
        return None
    aliases = {dims[1]: 1, dims[2]: 2, "y": 1, "x": 2, "time": 0}
    spec: list[Any] = [1, -1, -1]
    if isinstance(chunks, Mapping):
        for k, v in chunks.items():
            if k not in aliases:
                raise InvalidParameterError(
                    f"chunks has an unknown dimension {k!r}; use {list(dims)!r} (or 'y'/'x')."
                )
            spec[aliases[k]] = -1 if v is None else v
    elif isinstance(chunks, (int, str)):
        spec[1] = spec[2] = chunks
    else:
        seq = list(chunks)
        if len(seq) == 2:
            spec[1:] = seq
        elif len(seq) == 3:
            spec = seq
        else:
            raise InvalidParameterError(
                f"chunks={chunks!r} is not understood. Pass a dict such as "
                "{'time': 1, 'y': 2048, 'x': 2048}, a (time, y, x) tuple, or an int."
            )
    return da.core.normalize_chunks(tuple(spec), shape=shape, dtype=np.float32)


def _block_func(spec: _Spec, what: tuple[str, str], block_info: Any = None) -> np.ndarray:
    info = block_info[None]
    (t0, t1), (r0, r1), (c0, c1) = info["array-location"]
    rend = _Renderer(spec)
    out = np.empty((t1 - t0, r1 - r0, c1 - c0), dtype=np.float32)
    for k, ti in enumerate(range(t0, t1)):
        out[k] = rend.render(what, ti, (r0, r1, c0, c1))
    return out


def _landcover_block(spec: _Spec, block_info: Any = None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return _Renderer(spec).landcover((r0, r1, c0, c1))


def _lazy_array(spec: _Spec, what: tuple[str, str], chunks: tuple[tuple[int, ...], ...]) -> Any:
    import dask.array as da
    from dask.base import tokenize

    label = "_".join(p for p in what if p and p != "lst")
    name = f"xfusion.synthetic_scene.{label}-{tokenize(spec, what, chunks)}"
    return da.map_blocks(
        _block_func,
        spec,
        what,
        chunks=chunks,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=name,
    )


def _eager_arrays(
    spec: _Spec, plan: Sequence[tuple[str, tuple[str, str], tuple[int, int, int]]]
) -> tuple[dict[str, np.ndarray], _Renderer]:
    """Render every planned variable, one date at a time (fields cached within a date)."""
    rend = _Renderer(spec)
    out = {name: np.empty(shape, dtype=np.float32) for name, _, shape in plan}
    nt = plan[0][2][0] if plan else 0
    for ti in range(nt):
        for name, what, shape in plan:
            out[name][ti] = rend.render(what, ti, (0, shape[1], 0, shape[2]))
        rend.forget(ti)
    return out, rend


_UNITS = {"lst": "K", "reflectance": "1"}


def _long_name(role: str, kind: str, band: str, factor: int) -> str:
    what = "land surface temperature" if kind == "lst" else f"{band} surface reflectance"
    if role == "truth":
        return f"True {what} (noise-free, cloud-free, fine grid)"
    if role == "fine":
        return f"Fine-resolution {what} (Landsat-like, NaN = cloud or no acquisition)"
    if role == "coarse":
        return (
            f"Coarse-resolution {what} (MODIS-like, {factor}x coarser, shown on the fine grid, "
            "NaN = cloud)"
        )
    return f"Coarse-resolution {what} on its native grid (NaN = cloud)"


@overload
def synthetic_scene(
    shape: tuple[int, int] = ..., *, coarse_native: Literal[False] = ..., **kwargs: Any
) -> xr.Dataset: ...
@overload
def synthetic_scene(
    shape: tuple[int, int] = ..., *, coarse_native: Literal[True], **kwargs: Any
) -> tuple[xr.Dataset, xr.Dataset]: ...


def synthetic_scene(
    shape: tuple[int, int] = (256, 256),
    *,
    times: int | Sequence[Any] | None = None,
    kind: Kind = "lst",
    bands: Sequence[str] | None = None,
    coarse_factor: int = 32,
    crs: Any = "EPSG:32633",
    resolution: float | None = None,
    origin: tuple[float, float] | None = None,
    seed: int = 0,
    fine_times: Sequence[Any] | None = None,
    cloud_fraction: float | Sequence[float] = 0.2,
    coarse_cloud_fraction: float | Sequence[float] = 0.1,
    noise: float | Mapping[str, float] | None = None,
    bias: float | Mapping[str, float] | None = None,
    psf_sigma: float | None = None,
    coarse_resampling: CoarseResampling = "nearest",
    ndvi: bool = False,
    sar: bool = False,
    landcover: bool = False,
    coarse_native: bool = False,
    chunks: Any = None,
) -> xr.Dataset | tuple[xr.Dataset, xr.Dataset]:
    """Build a realistic synthetic fine/coarse fusion scene with known truth.

    The landscape is a mosaic of land-cover classes (see :data:`LANDCOVER_CLASSES`): lakes and
    forests with natural boundaries (a thresholded smooth random field) and, between them,
    agricultural parcels and towns (Voronoi cells of about 16 x 16 fine pixels). Each class has
    its own temporal behaviour over the scene dates; each crop parcel has its own green-up and
    senescence dates. A *fine* sensor (Landsat-like) observes the truth exactly at
    ``fine_times`` only, with cloud gaps; a *coarse* sensor (MODIS-like) observes at every date
    the truth blurred by a Gaussian PSF, averaged over ``coarse_factor`` x ``coarse_factor``
    blocks, plus ``bias`` and Gaussian ``noise``, with its own cloud gaps; the coarse pixels
    are then put back on the fine grid.

    Parameters
    ----------
    shape : tuple of int, default (256, 256)
        Fine-grid shape ``(ny, nx)``. Need not be a multiple of ``coarse_factor``.
    times : int or sequence of datetime-like, optional
        Scene dates. An int ``n`` gives ``n`` dates 16 days apart from 2021-04-03 10:00 UTC
        (a Landsat-like revisit through the growing season); the default is 8 such dates.
        Dates must be sorted and unique. The hour matters for LST (diurnal cycle).
    kind : {"lst", "reflectance"}, default "lst"
        ``"lst"``: land surface temperature in kelvin (about 275-320 K), variables ``fine``,
        ``coarse`` and ``truth``. ``"reflectance"``: surface reflectance (0..1) with per-class
        phenology, variables ``fine_<band>``, ``coarse_<band>`` and ``truth_<band>``.
    bands : sequence of str, optional
        Reflectance bands, from :data:`REFLECTANCE_BANDS` (``"nir08"`` is an alias of
        ``"nir"``); default ``("red", "nir")``. Not allowed with ``kind="lst"``.
    coarse_factor : int, default 32
        Coarse pixel size in fine pixels (30 m x 32 = 960 m, MODIS-like).
    crs : str or CRS, default "EPSG:32633"
        Any CRS odc-geo understands. A geographic CRS gives ``latitude``/``longitude`` dims.
    resolution : float, optional
        Fine pixel size in CRS units; default 30.0 for projected CRSs and 0.00025 degrees for
        geographic ones.
    origin : tuple of float, optional
        ``(x, y)`` of the top-left corner of the fine grid in CRS units. Default: near Kranj,
        Slovenia (14.30 E, 46.25 N) snapped to the coarse pixel grid.
    seed : int, default 0
        Seed of everything random. Values are a function of ``(seed, date, global pixel
        index)``, so a larger scene with the same seed and origin contains a smaller one.
    fine_times : sequence of datetime-like or int, optional
        Dates (from ``times``) or indices at which the fine sensor acquires. Default: the first,
        middle and last date.
    cloud_fraction : float or sequence of float, default 0.2
        Approximate cloud cover of each fine acquisition. A float applies to every fine
        acquisition except the first one, which is kept clear; a sequence gives one value
        per scene date (values at dates without a fine acquisition are ignored).
    coarse_cloud_fraction : float or sequence of float, default 0.1
        Approximate cloud cover of the coarse sensor. A float applies to every date except
        the first fine acquisition date (so there is always one complete fine-coarse pair);
        a sequence gives one value per date. Coarse clouds cover whole coarse pixels.
    noise : float or mapping of band to float, optional
        Standard deviation of the coarse sensor's Gaussian noise, per coarse pixel. Default
        0.5 K for LST and 0.005 for reflectance.
    bias : float or mapping of band to float, optional
        Additive bias of the coarse sensor. Default 1.0 K for LST and 0.01 for reflectance.
    psf_sigma : float, optional
        Standard deviation of the coarse sensor's Gaussian PSF in fine pixels (truncated at 4
        sigma). Default ``0.5 * coarse_factor`` (a PSF FWHM of about 1.2 coarse pixels);
        0 disables the blur, so coarse = block mean + bias + noise.
    coarse_resampling : {"nearest", "bilinear"}, default "nearest"
        How coarse pixels are put back on the fine grid: ``"nearest"`` repeats each coarse
        pixel over its block; ``"bilinear"`` interpolates between coarse pixel centres
        (edges clamped).
    ndvi : bool, default False
        Add ``ndvi``: the true fine-grid NDVI from the red/NIR truth, at every date, gap-free.
    sar : bool, default False
        Add ``vv`` and ``vh``: Sentinel-1-like backscatter on the fine grid at every date
        (linear power, per-class dB levels that follow crop growth, 4-look gamma speckle,
        no cloud gaps).
    landcover : bool, default False
        Add the ``landcover`` coordinate (spatial dims only, int8 indices into
        :data:`LANDCOVER_CLASSES`).
    coarse_native : bool, default False
        Also return the coarse sensor on its own coarse GeoBox (the grid a MODIS COG would
        have): the result is then a tuple ``(scene, coarse_scene)``. ``coarse_scene`` holds
        ``coarse`` (or ``coarse_<band>``) with its ``observed_*`` coordinates and the same
        dates; the fine-grid ``coarse`` is exactly its nearest (or bilinear) upsampling.
    chunks : dict, tuple or int, optional
        Generate lazily as dask arrays, block by block. A dict such as
        ``{"time": 1, "y": 2048, "x": 2048}`` (dims missing from the dict: one date per chunk
        in time, whole extent in space), a ``(time, y, x)`` or ``(y, x)`` tuple, or an int for
        both spatial dims. Values do not depend on the chunking.

    Returns
    -------
    xarray.Dataset or tuple of xarray.Dataset
        Variables ``(time, y, x)`` float32 with NaN for gaps; a ``spatial_ref`` coordinate and
        a real CRS/transform (``ds.odc.geobox``); boolean coordinates ``observed_<var>`` along
        ``time`` for each sensor variable (``fine*``, ``coarse*``, ``ndvi``, ``vv``, ``vh``),
        True where that sensor acquired at that date; ``units`` and ``long_name`` attributes.
        Dataset attributes record ``kind``, ``coarse_factor``, ``psf_sigma``, ``seed`` and
        ``coarse_resampling``; coarse variables carry their ``bias`` and ``noise_std``.

    Raises
    ------
    InvalidParameterError
        For an unknown ``kind``, band, resampling, out-of-range cloud fraction or size.
    TimeAxisError
        When ``times`` is unsorted or has duplicates.

    See Also
    --------
    synthetic_cube : a plain random georeferenced cube.
    xfusion.testing.write_stac_catalog : write a scene as local COGs + STAC items.

    Notes
    -----
    The truth is LST ``T = T0_c + S_c s(doy) + A_c d(hour) - C_c g + texture + trend +
    weather(date)`` (per-class constants, seasonal cycle peaking mid-July, diurnal cycle
    peaking at 13:30 UTC, greenness ``g`` cooling, a scene-wide daily anomaly) or reflectance
    from linear mixing of water/soil/vegetation/urban endmembers with the per-class greenness.
    The coarse value of coarse pixel ``(I, J)`` is exactly
    ``sum_mn K[m] K[n] T[I f - h + m, J f - h + n] + bias + noise`` with ``K`` the 1-D
    Gaussian kernel convolved with a box of ``f`` pixels and ``h`` its halo; the truth is
    defined beyond the scene edge, so edge coarse pixels see the outside, like a real sensor.

    With ``chunks=``, each block is computed independently (the coarse sensor of a block
    reads the truth on the coarse pixels it overlaps plus the PSF halo). A 16384 x 16384
    one-date scene with 2048 chunks builds instantly and computes with memory of the order
    of a few blocks.

    Examples
    --------
    >>> from xfusion.testing import synthetic_scene
    >>> ds = synthetic_scene((64, 64), times=4, coarse_factor=16)
    >>> sorted(ds.data_vars)
    ['coarse', 'fine', 'truth']
    >>> ds.observed_fine.values.tolist()
    [True, False, True, True]
    """
    kind_s = str(kind)
    if kind_s not in ("lst", "reflectance"):
        raise InvalidParameterError(
            f"kind={kind!r} is not a scene kind. Choose one of ['lst', 'reflectance']."
        )
    if kind_s == "lst":
        if bands is not None:
            raise InvalidParameterError(
                f"bands={bands!r} only applies to kind='reflectance'; an LST scene has one "
                "variable per role ('fine', 'coarse', 'truth'). Drop `bands` or pass "
                "kind='reflectance'."
            )
        band_t: tuple[str, ...] = ("lst",)
    else:
        band_t = (
            ("red", "nir")
            if bands is None
            else ((bands,) if isinstance(bands, str) else tuple(bands))
        )
        bad = [b for b in band_t if b not in REFLECTANCE_BANDS]
        if bad or not band_t or len(set(band_t)) != len(band_t):
            raise InvalidParameterError(
                f"bands={bands!r} is not valid: unknown or repeated bands {bad!r}. Choose "
                f"distinct bands from {list(REFLECTANCE_BANDS)!r}."
            )
    if str(coarse_resampling) not in ("nearest", "bilinear"):
        raise InvalidParameterError(
            f"coarse_resampling={coarse_resampling!r} is not supported. Choose one of "
            "['nearest', 'bilinear']."
        )
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"shape={shape!r} must be a (ny, nx) pair of positive ints, e.g. (256, 256)."
        ) from None
    f = int(coarse_factor)
    if ny < 1 or nx < 1 or f < 1:
        raise InvalidParameterError(
            f"shape={shape!r} and coarse_factor={coarse_factor!r} must be positive."
        )
    t = _parse_times(times)
    nt = t.size
    fine_obs = _resolve_fine_times(fine_times, t)
    first_fine = int(np.argmax(fine_obs)) if fine_obs.any() else -1
    not_first = np.arange(nt) != first_fine
    fine_cloud = _per_date(cloud_fraction, nt, "cloud_fraction", not_first)
    fine_cloud = tuple(c if o else 0.0 for c, o in zip(fine_cloud, fine_obs, strict=True))
    coarse_cloud = _per_date(coarse_cloud_fraction, nt, "coarse_cloud_fraction", not_first)
    default_noise, default_bias = (0.5, 1.0) if kind_s == "lst" else (0.005, 0.01)
    noise_t = _per_band(noise, band_t, "noise", default_noise)
    bias_t = _per_band(bias, band_t, "bias", default_bias)
    sigma = 0.5 * f if psf_sigma is None else float(psf_sigma)
    if sigma < 0 or any(n < 0 for n in noise_t):
        raise InvalidParameterError(
            f"psf_sigma={psf_sigma!r} and noise={noise!r} must be >= 0 (0 turns them off)."
        )

    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    crs_obj, res, (x0, y0) = _default_grid(crs, resolution, origin, f)
    gbox = GeoBox((ny, nx), Affine(res, 0.0, x0, 0.0, -res, y0), crs_obj)
    cshape = (-(-ny // f), -(-nx // f))
    cgbox = GeoBox(cshape, Affine(res * f, 0.0, x0, 0.0, -res * f, y0), crs_obj)

    spec = _Spec(
        kind=kind_s,
        bands=band_t,
        times_ns=tuple(int(v) for v in t.astype(np.int64)),
        fine_obs=tuple(bool(v) for v in fine_obs),
        fine_cloud=fine_cloud,
        coarse_cloud=coarse_cloud,
        factor=f,
        psf_sigma=sigma,
        noise=noise_t,
        bias=bias_t,
        seed=int(seed),
        coarse_shape=cshape,
        coarse_resampling=str(coarse_resampling),
    )

    coords = xr_coords(gbox)
    ydim, xdim = (str(d) for d in list(coords)[:2])
    dims = ("time", ydim, xdim)
    shape3 = (nt, ny, nx)
    nchunks = _normalize_chunks(chunks, shape3, dims)
    units = _UNITS[kind_s]
    cshape3 = (nt, *cshape)
    all_true = np.ones(nt, dtype=bool)

    def suffix(band: str) -> str:
        return "" if kind_s == "lst" else f"_{band}"

    # plan: (name, what, shape, attrs, observed); coarse first so that, when eager, its wider
    # window (footprint + PSF halo) fills the cache that fine/truth then crop from
    plan: list[tuple[str, tuple[str, str], tuple[int, int, int], dict[str, Any], Any]] = []
    for role in ("coarse", "fine", "truth"):
        for bi, band in enumerate(band_t):
            attrs = {"units": units, "long_name": _long_name(role, kind_s, band, f)}
            if role == "coarse":
                attrs.update(bias=bias_t[bi], noise_std=noise_t[bi])
            observed = {"fine": fine_obs, "coarse": all_true}.get(role)
            plan.append((f"{role}{suffix(band)}", (role, band), shape3, attrs, observed))
    if ndvi:
        attrs = {"units": "1", "long_name": "True NDVI on the fine grid"}
        plan.append(("ndvi", ("ndvi", ""), shape3, attrs, all_true))
    if sar:
        for pol in ("vv", "vh"):
            attrs = {
                "units": "1",
                "long_name": f"{pol.upper()} backscatter (linear power, speckled, fine grid)",
            }
            plan.append((pol, (pol, ""), shape3, attrs, all_true))
    cplan = []
    if coarse_native:
        for bi, band in enumerate(band_t):
            attrs = {
                "units": units,
                "long_name": _long_name("coarse_native", kind_s, band, f),
                "bias": bias_t[bi],
                "noise_std": noise_t[bi],
            }
            cplan.append(
                (f"coarse{suffix(band)}", ("coarse_native", band), cshape3, attrs, all_true)
            )

    renderer = None
    if nchunks is None:
        arrays, renderer = _eager_arrays(
            spec, [(f"{p[0]}@{p[1][0]}", p[1], p[2]) for p in (*plan, *cplan)]
        )
        fine_data = {p[0]: arrays[f"{p[0]}@{p[1][0]}"] for p in plan}
        coarse_data = {p[0]: arrays[f"{p[0]}@{p[1][0]}"] for p in cplan}
    else:
        fine_data = {p[0]: _lazy_array(spec, p[1], nchunks) for p in plan}
        cchunks = _normalize_chunks(
            (nchunks[0][0], max(1, nchunks[1][0] // f), max(1, nchunks[2][0] // f)),
            cshape3,
            dims,
        )
        assert cchunks is not None
        coarse_data = {p[0]: _lazy_array(spec, p[1], cchunks) for p in cplan}

    # variables in the order fine, coarse, truth, then guides (stable sort)
    rank = {"fine": 0, "coarse": 1, "truth": 2}
    order = sorted(range(len(plan)), key=lambda k: rank.get(plan[k][1][0], 3))
    data_vars = {}
    obs_coords: dict[Hashable, Any] = {}
    for k in order:
        name, _, _, attrs, observed = plan[k]
        data_vars[name] = xr.DataArray(fine_data[name], dims=dims, attrs=attrs)
        if observed is not None:
            obs_coords[f"observed_{name}"] = ("time", observed)
    all_coords: dict[Hashable, Any] = {"time": ("time", t), **coords, **obs_coords}
    if landcover:
        all_coords["landcover"] = _landcover_coord(spec, gbox, nchunks, renderer, (ydim, xdim))
    ds_attrs = {
        "title": f"xfusion synthetic {kind_s} scene",
        "kind": kind_s,
        "coarse_factor": f,
        "psf_sigma": sigma,
        "seed": int(seed),
        "coarse_resampling": str(coarse_resampling),
    }
    ds = xr.Dataset(data_vars, coords=all_coords, attrs=ds_attrs)
    for v in ds.data_vars.values():
        v.encoding["grid_mapping"] = "spatial_ref"
    if not coarse_native:
        return ds

    cvars = {
        name: xr.DataArray(coarse_data[name], dims=dims, attrs=attrs)
        for name, _, _, attrs, _ in cplan
    }
    cobs = {f"observed_{name}": ("time", all_true) for name, *_ in cplan}
    cds = xr.Dataset(
        cvars, coords={"time": ("time", t), **xr_coords(cgbox), **cobs}, attrs=dict(ds_attrs)
    )
    for v in cds.data_vars.values():
        v.encoding["grid_mapping"] = "spatial_ref"
    return ds, cds


def _landcover_coord(
    spec: _Spec,
    gbox: Any,
    nchunks: tuple[tuple[int, ...], ...] | None,
    renderer: _Renderer | None,
    sdims: tuple[str, str],
) -> xr.DataArray:
    ny, nx = gbox.shape
    if nchunks is None:
        assert renderer is not None
        data: Any = renderer.landcover((0, ny, 0, nx))
    else:
        import dask.array as da
        from dask.base import tokenize

        data = da.map_blocks(
            _landcover_block,
            spec,
            chunks=nchunks[1:],
            dtype=np.int8,
            meta=np.empty((0, 0), dtype=np.int8),
            name=f"xfusion.synthetic_scene.landcover-{tokenize(spec, nchunks[1:])}",
        )
    return xr.DataArray(
        data,
        dims=sdims,
        attrs={
            "long_name": "Land-cover class",
            "flag_values": list(range(len(LANDCOVER_CLASSES))),
            "flag_meanings": " ".join(LANDCOVER_CLASSES),
        },
    )


def _cube_block(
    seed: int, band_index: int, times_ns: tuple[int, ...], block_info: Any = None
) -> np.ndarray:
    (t0, t1), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    ii = np.arange(r0, r1, dtype=np.int64)[:, None]
    jj = np.arange(c0, c1, dtype=np.int64)[None, :]
    out = np.empty((t1 - t0, r1 - r0, c1 - c0), dtype=np.float32)
    for k, ti in enumerate(range(t0, t1)):
        key = _key(seed, _S_CUBE, band_index, times_ns[ti])
        out[k] = _hash_uniform(key, ii, jj)
    return out


def synthetic_cube(
    shape: tuple[int, int] = (64, 64),
    *,
    times: int | Sequence[Any] = 3,
    bands: int | Sequence[str] = ("red", "nir"),
    chunks: Any = None,
    crs: Any = "EPSG:32633",
    seed: int = 0,
) -> xr.Dataset:
    """Build a plain random georeferenced cube: one uniform [0, 1) float32 variable per band.

    Parameters
    ----------
    shape : tuple of int, default (64, 64)
        Spatial shape ``(ny, nx)``.
    times : int or sequence of datetime-like, default 3
        Number of dates (16 days apart from 2021-04-03 10:00 UTC) or the dates themselves.
    bands : int or sequence of str, default ("red", "nir")
        Variable names, or a count ``n`` for ``band0 ... band{n-1}``.
    chunks : dict, tuple or int, optional
        Generate lazily with these chunks (see :func:`synthetic_scene`); values do not depend
        on the chunking.
    crs : str or CRS, default "EPSG:32633"
        CRS of the grid (30 m pixels, or 0.00025 degrees for geographic CRSs).
    seed : int, default 0
        Random seed.

    Returns
    -------
    xarray.Dataset
        Variables ``(time, y, x)`` (``latitude, longitude`` for geographic CRSs) with a
        ``spatial_ref`` coordinate.

    Examples
    --------
    >>> from xfusion.testing import synthetic_cube
    >>> ds = synthetic_cube()
    >>> ds.red.dims, ds.red.shape
    (('time', 'y', 'x'), (3, 64, 64))
    """
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_coords

    if isinstance(bands, (int, np.integer)):
        names = tuple(f"band{i}" for i in range(int(bands)))
    else:
        names = (bands,) if isinstance(bands, str) else tuple(bands)
    if not names or len(set(names)) != len(names):
        raise InvalidParameterError(f"bands={bands!r} must name at least one distinct band.")
    ny, nx = (int(s) for s in shape)
    t = _parse_times(times)
    crs_obj, res, (x0, y0) = _default_grid(crs, None, None, 1)
    gbox = GeoBox((ny, nx), Affine(res, 0.0, x0, 0.0, -res, y0), crs_obj)
    coords = xr_coords(gbox)
    dims = ("time", *(str(d) for d in list(coords)[:2]))
    shape3 = (t.size, ny, nx)
    nchunks = _normalize_chunks(chunks, shape3, dims)  # type: ignore[arg-type]
    times_ns = tuple(int(v) for v in t.astype(np.int64))
    data_vars = {}
    for bi, name in enumerate(names):
        if nchunks is None:
            info = {None: {"array-location": [(0, t.size), (0, ny), (0, nx)]}}
            arr: Any = _cube_block(int(seed), bi, times_ns, block_info=info)
        else:
            import dask.array as da
            from dask.base import tokenize

            arr = da.map_blocks(
                _cube_block,
                int(seed),
                bi,
                times_ns,
                chunks=nchunks,
                dtype=np.float32,
                meta=np.empty((0, 0, 0), dtype=np.float32),
                name=f"xfusion.synthetic_cube.{name}-{tokenize(seed, bi, times_ns, nchunks)}",
            )
        data_vars[name] = xr.DataArray(arr, dims=dims, attrs={"units": "1", "long_name": name})
    ds = xr.Dataset(data_vars, coords={"time": ("time", t), **coords})
    for v in ds.data_vars.values():
        v.encoding["grid_mapping"] = "spatial_ref"
    return ds
