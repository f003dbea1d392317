"""Planetary Computer-shaped catalogs of a known land-surface-temperature world.

:class:`PCScene` is a world with an analytic truth (a smooth LST field in lon/lat plus a
Landsat-scale texture, seasonal and spatially varying change, clouds as discs) and
:func:`write_pc_catalog` samples it the way the real products do and writes the result as
Cloud-Optimized GeoTIFFs with STAC items copied from the real Planetary Computer item JSON
(``../shared/data/stac_items`` when present, built-in copies of their shape otherwise):

* Landsat Collection 2 Level-2 (``landsat-c2-l2``): a scene cut on the real USGS grid, the
  *northern* UTM zone of the area even south of the equator (negative northings), pixel edges
  on odd multiples of 15 m, ``lwir11`` uint16 with K = DN x 0.00341802 + 149, ``qa_pixel``
  bits (clear 21824, cloud 22280, fill 1 with ``lwir11`` = 0 in a corner outside the footprint),
  item-level ``proj:epsg``, Landsat 8 and 9 alternating;
* MODIS MOD11A1 / MYD11A1 (``modis-11A1-061``): WHOLE 1200 x 1200 sinusoidal tiles (926.625 m
  pixels, the real tile transforms, ``proj:wkt2`` and ``proj:epsg: null``), Terra and Aqua
  items every day with ``datetime: null`` and the UTC day as ``start_datetime`` /
  ``end_datetime``, ``LST_Day_1km`` uint16 x 0.02 K with fill 0 and no nodata tag in the
  files (as on the Planetary Computer), ``QC_Day`` bits 0-1 = 10 under clouds; every tile
  the area touches is written, so areas across tile boundaries read several tiles;
* Sentinel-2 L2A (``sentinel-2-l2a``), optional: the Planetary Computer item shape (no
  ``raster:bands``, asset-level projection), the MGRS grid of the area's UTM zone (southern
  zones south of the equator) with edges on multiples of 60 m, 10 m ``B04``/``B08``, 20 m
  ``B11``/``SCL``, processing baseline 04.00 (+1000 DN offset) from 2022-01-25;
* a coarse LST product on a geographic (lon/lat) grid, optional, standing for Sentinel-3 /
  VIIRS style products whose grid is neither UTM nor sinusoidal.

The scene also answers what a correct loader must return (:meth:`PCScene.expected_landsat`,
:meth:`PCScene.modis_truth` with its interpolation tolerance :meth:`PCScene.modis_tolerance`),
computed from the truth, not from xfusion's own reading code.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xfusion.errors import InvalidParameterError

__all__ = [
    "MODIS_TILE_SIZE",
    "PCCatalog",
    "PCScene",
    "modis_tile_geobox",
    "modis_tiles",
    "write_pc_catalog",
]

# MODIS sinusoidal grid (MODLAND): sphere radius, tile side, grid origin, 1 km pixels per tile
MODIS_RADIUS = 6371007.181
MODIS_TILE_SIZE = 1111950.5197665233
MODIS_X0 = -20015109.354
MODIS_Y0 = 10007554.677
MODIS_PIXELS = 1200

LANDSAT_SCALE, LANDSAT_OFFSET = 0.00341802, 149.0
MODIS_SCALE = 0.02
QA_CLEAR, QA_CLOUD, QA_FILL = 21824, 22280, 1
QC_GOOD, QC_CLOUD, QC_OTHER = 0, 2, 3
S2_BASELINE_04 = pd.Timestamp("2022-01-25")
AQUA_OFFSET = 2.5
"""Aqua (13:30) sees the surface this much warmer than Terra (10:30), in kelvin."""

_SHARED_ITEMS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stac_items"


def _template(name: str, fallback: str) -> dict[str, Any]:
    """A real Planetary Computer item JSON from ``../shared/data/stac_items``, else built-in."""
    path = Path(os.environ.get("XFUSION_STAC_ITEMS", _SHARED_ITEMS)) / name
    if path.is_file():
        return json.loads(path.read_text())
    from xfusion.testing._stac import item_template

    return item_template(fallback)


# --------------------------------------------------------------------------------------------
# grids


def _sinusoidal_crs() -> Any:
    from odc.geo import CRS

    from xfusion.testing._stac import MODIS_SINUSOIDAL_WKT

    return CRS(MODIS_SINUSOIDAL_WKT)


def modis_tile_geobox(h: int, v: int, /) -> Any:
    """The 1 km (1200 x 1200) sinusoidal grid of MODIS tile ``h``, ``v`` (real transform)."""
    from affine import Affine
    from odc.geo.geobox import GeoBox

    res = MODIS_TILE_SIZE / MODIS_PIXELS
    x0 = MODIS_X0 + h * MODIS_TILE_SIZE
    y0 = MODIS_Y0 - v * MODIS_TILE_SIZE
    return GeoBox((MODIS_PIXELS, MODIS_PIXELS), Affine(res, 0.0, x0, 0.0, -res, y0),
                  _sinusoidal_crs())


def _lonlat_to_sinusoidal(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
    lat_r = np.radians(lat)
    return MODIS_RADIUS * np.radians(lon) * np.cos(lat_r), MODIS_RADIUS * lat_r


def _sinusoidal_to_lonlat(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    lat_r = np.asarray(y, dtype=np.float64) / MODIS_RADIUS
    with np.errstate(divide="ignore", invalid="ignore"):
        lon = np.degrees(np.asarray(x, dtype=np.float64) / (MODIS_RADIUS * np.cos(lat_r)))
    return lon, np.degrees(lat_r)


def modis_tiles(bbox: Sequence[float], /) -> list[tuple[int, int]]:
    """The MODIS tiles ``(h, v)`` that a lon/lat box touches."""
    w, s, e, n = (float(v) for v in bbox)
    lons = np.linspace(w, e, 41)
    lats = np.linspace(s, n, 41)
    lon, lat = np.meshgrid(lons, lats)
    x, y = _lonlat_to_sinusoidal(lon, lat)
    h = np.floor((x - MODIS_X0) / MODIS_TILE_SIZE).astype(int)
    v = np.floor((MODIS_Y0 - y) / MODIS_TILE_SIZE).astype(int)
    return sorted({(int(a), int(b)) for a, b in zip(h.ravel(), v.ravel(), strict=True)})


def _centres(gbox: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a north-up geobox, as 2-D arrays."""
    a = gbox.affine
    ny, nx = gbox.shape
    xs = a.c + a.a * (np.arange(nx) + 0.5)
    ys = a.f + a.e * (np.arange(ny) + 0.5)
    return np.meshgrid(xs, ys)


def _to_lonlat(gbox: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    if gbox.crs.geographic:
        return x, y
    t = Transformer.from_crs(gbox.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = t.transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def _utm_epsg(lon: float, lat: float, *, north_only: bool) -> int:
    zone = math.floor((lon + 180.0) / 6.0) % 60 + 1
    return (32600 if (lat >= 0 or north_only) else 32700) + zone


def _snapped_grid(bbox: Sequence[float], epsg: int, *, res: float, anchor: float,
                  margin: float) -> Any:
    """A UTM grid covering ``bbox`` + ``margin`` m with edges on ``k * res + anchor``."""
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.geom import box

    ext = box(*bbox, "EPSG:4326").to_crs(f"EPSG:{epsg}").boundingbox
    x0 = math.floor((ext.left - margin - anchor) / res) * res + anchor
    x1 = math.ceil((ext.right + margin - anchor) / res) * res + anchor
    y0 = math.floor((ext.bottom - margin - anchor) / res) * res + anchor
    y1 = math.ceil((ext.top + margin - anchor) / res) * res + anchor
    shape = (round((y1 - y0) / res), round((x1 - x0) / res))
    return GeoBox(shape, Affine(res, 0.0, x0, 0.0, -res, y1), f"EPSG:{epsg}")


# --------------------------------------------------------------------------------------------
# the world


@dataclass(frozen=True, kw_only=True)
class PCScene:
    """A land-surface-temperature world with known truth over a lon/lat area.

    Parameters
    ----------
    bbox : (float, float, float, float)
        Area of interest ``(west, south, east, north)`` in degrees.
    days : sequence of str
        UTC days with MODIS Terra and Aqua items (every tile the area touches).
    landsat_days : sequence of str
        Days with a Landsat acquisition (about 10:12 local solar time).
    sentinel2_days : sequence of str, optional
        Days with a Sentinel-2 acquisition (reflectance; ``write_pc_catalog(sentinel2=True)``).
    cloud_cover : mapping of str to float, optional
        Share of the area covered by cloud discs on a day (default 0: clear).
    margin : float, default 3000
        Metres of Landsat/Sentinel-2 scene written beyond the area.
    seed : int, default 0
        Phases of the truth field and placement of the clouds.
    """

    bbox: tuple[float, float, float, float]
    days: tuple[str, ...]
    landsat_days: tuple[str, ...]
    sentinel2_days: tuple[str, ...] = ()
    cloud_cover: Mapping[str, float] = field(default_factory=dict)
    margin: float = 3000.0
    seed: int = 0

    def __post_init__(self) -> None:
        w, s, e, n = (float(v) for v in self.bbox)
        if not (-180 <= w < e <= 180 and -80 <= s < n <= 80):
            raise InvalidParameterError(
                f"bbox={self.bbox!r} must be (west, south, east, north) in degrees with "
                "west < east, south < north, within +-80 degrees of latitude."
            )
        object.__setattr__(self, "bbox", (w, s, e, n))
        for name in ("days", "landsat_days", "sentinel2_days"):
            vals = tuple(pd.Timestamp(d).strftime("%Y-%m-%d") for d in getattr(self, name))
            object.__setattr__(self, name, vals)
        object.__setattr__(
            self, "cloud_cover",
            {pd.Timestamp(k).strftime("%Y-%m-%d"): float(v) for k, v in self.cloud_cover.items()},
        )
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_phase", tuple(rng.uniform(0, 2 * np.pi, 8)))

    # -- truth -------------------------------------------------------------------------------
    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the area (lon, lat)."""
        w, s, e, n = self.bbox
        return (w + e) / 2.0, (s + n) / 2.0

    def _day(self, day: Any) -> float:
        return float((pd.Timestamp(day) - pd.Timestamp("2000-01-01")).days)

    def lst(self, lon: Any, lat: Any, day: Any) -> np.ndarray:
        """Smooth LST (K) at ``lon``/``lat``: what a 1 km sensor samples at a pixel centre.

        Wavelengths of 0.13-0.23 degree (10-25 km), so it varies within a MODIS pixel only
        smoothly; a seasonal term and a spatially varying change between days.
        """
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        lon0, lat0 = self.centre
        p = self._phase
        d = self._day(day)
        base = (
            295.0
            + 6.0 * np.sin(2 * np.pi * (lon - lon0) / 0.23 + p[0])
            * np.cos(2 * np.pi * (lat - lat0) / 0.19 + p[1])
            + 3.0 * (lat - lat0) / 0.1
        )
        season = 4.0 * np.sin(2 * np.pi * d / 365.25 + p[2])
        change = 2.5 * np.sin(2 * np.pi * d / 47.0 + p[3]) * np.sin(
            2 * np.pi * (lon - lon0) / 0.13 + p[4]
        )
        return base + season + change

    def texture(self, lon: Any, lat: Any) -> np.ndarray:
        """Landsat-scale LST texture (K): 120-230 m wavelengths that 1 km pixels average out."""
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        p = self._phase
        return 1.8 * np.sin(2 * np.pi * lon / 0.0023 + p[5]) * np.sin(
            2 * np.pi * lat / 0.0019 + p[6]
        ) + 0.8 * np.sin(2 * np.pi * (lon + lat) / 0.0011 + p[7])

    def _discs(self, day: Any) -> list[tuple[float, float, float]]:
        """Cloud discs ``(lon, lat, radius km)`` of a day covering about its cloud_cover."""
        key = pd.Timestamp(day).strftime("%Y-%m-%d")
        frac = self.cloud_cover.get(key, 0.0)
        if frac <= 0:
            return []
        w, s, e, n = self.bbox
        rng = np.random.default_rng([self.seed, int(self._day(day))])
        lon, lat = np.meshgrid(np.linspace(w, e, 60), np.linspace(s, n, 60))
        discs: list[tuple[float, float, float]] = []
        covered = np.zeros(lon.shape, dtype=bool)
        span_km = max((e - w) * 111.3 * math.cos(math.radians((s + n) / 2)), (n - s) * 111.3)
        for _ in range(200):
            if covered.mean() >= frac:
                break
            r = float(rng.uniform(0.08, 0.25) * span_km)
            c = (float(rng.uniform(w, e)), float(rng.uniform(s, n)), r)
            discs.append(c)
            covered |= self._in_discs(lon, lat, [c], 0.0)
        return discs

    @staticmethod
    def _in_discs(lon: np.ndarray, lat: np.ndarray, discs: Sequence[tuple[float, float, float]],
                  grow_km: float) -> np.ndarray:
        out = np.zeros(np.shape(lon), dtype=bool)
        for clon, clat, r in discs:
            if r + grow_km <= 0:
                continue
            dx = (lon - clon) * 111.32 * math.cos(math.radians(clat))
            dy = (lat - clat) * 110.57
            out |= dx * dx + dy * dy <= (r + grow_km) ** 2
        return out

    def cloudy(self, lon: Any, lat: Any, day: Any, *, shift: float = 0.0,
               grow_km: float = 0.0) -> np.ndarray:
        """Whether a point is under cloud on ``day`` (discs moved ``shift`` degree east)."""
        lon = np.asarray(lon, dtype=np.float64) - shift
        return self._in_discs(lon, np.asarray(lat, dtype=np.float64), self._discs(day), grow_km)

    # -- grids -------------------------------------------------------------------------------
    def landsat_geobox(self) -> Any:
        """The Landsat scene grid: northern UTM zone, 30 m, edges on odd multiples of 15 m."""
        lon, lat = self.centre
        epsg = _utm_epsg(lon, lat, north_only=True)
        return _snapped_grid(self.bbox, epsg, res=30.0, anchor=15.0, margin=self.margin)

    def sentinel2_geobox(self, res: float = 10.0) -> Any:
        """The Sentinel-2 grid: the area's UTM zone (south zones south of the equator)."""
        lon, lat = self.centre
        epsg = _utm_epsg(lon, lat, north_only=False)
        g10 = _snapped_grid(self.bbox, epsg, res=60.0, anchor=0.0, margin=self.margin)
        if res == 60.0:
            return g10
        from affine import Affine
        from odc.geo.geobox import GeoBox

        f = round(60.0 / res)
        a = g10.affine
        return GeoBox((g10.shape[0] * f, g10.shape[1] * f),
                      Affine(res, 0.0, a.c, 0.0, -res, a.f), g10.crs)

    def modis_tiles(self) -> list[tuple[int, int]]:
        """MODIS tiles ``(h, v)`` of the area (plus a 2 km margin)."""
        w, s, e, n = self.bbox
        m = 0.02
        return modis_tiles((w - m, s - m, e + m, n + m))

    def geographic_geobox(self, res: float = 0.01) -> Any:
        """The grid of the geographic coarse product: ``res`` degree, edges on multiples."""
        from affine import Affine
        from odc.geo.geobox import GeoBox

        w, s, e, n = self.bbox
        m = 3 * res
        x0, x1 = math.floor((w - m) / res) * res, math.ceil((e + m) / res) * res
        y0, y1 = math.floor((s - m) / res) * res, math.ceil((n + m) / res) * res
        shape = (round((y1 - y0) / res), round((x1 - x0) / res))
        return GeoBox(shape, Affine(res, 0.0, x0, 0.0, -res, y1), "EPSG:4326")

    # -- sampled products ----------------------------------------------------------------------
    def landsat_time(self, day: Any) -> pd.Timestamp:
        """Landsat acquisition (UTC) on ``day``: 10:12 local solar time, kept on that day."""
        hours = (10.2 - self.centre[0] / 15.0) % 24.0
        hours = min(max(hours, 0.05), 23.9)
        return pd.Timestamp(day).normalize() + pd.Timedelta(hours=hours)

    def _landsat_fill(self, shape: tuple[int, int]) -> np.ndarray:
        """Fill outside the (rotated) scene footprint: a triangle in the north-west corner."""
        ny, nx = shape
        r, c = np.meshgrid(np.arange(ny) / ny, np.arange(nx) / nx, indexing="ij")
        return r + c < 0.45

    def landsat_dn(self, day: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(lwir11, qa_pixel)`` stored values of the Landsat scene on ``day``."""
        gbox = self.landsat_geobox()
        lon, lat = _to_lonlat(gbox, *_centres(gbox))
        kelvin = self.lst(lon, lat, day) + self.texture(lon, lat)
        cloud = self.cloudy(lon, lat, day)
        kelvin = np.where(cloud, 265.0, kelvin)  # cold cloud tops, flagged in qa_pixel
        dn = np.rint((kelvin - LANDSAT_OFFSET) / LANDSAT_SCALE)
        dn = np.clip(dn, 1, 65535).astype(np.uint16)
        qa = np.where(cloud, QA_CLOUD, QA_CLEAR).astype(np.uint16)
        fill = self._landsat_fill(gbox.shape)
        dn[fill] = 0
        qa[fill] = QA_FILL
        return dn, qa

    def modis_dn(self, h: int, v: int, day: Any, platform: str) -> tuple[np.ndarray, np.ndarray]:
        """``(LST_Day_1km, QC_Day)`` stored values of a whole MODIS tile."""
        gbox = modis_tile_geobox(h, v)
        lon, lat = _sinusoidal_to_lonlat(*_centres(gbox))
        outside = ~np.isfinite(lon) | (np.abs(lon) > 180.0)
        lon = np.where(outside, 0.0, lon)
        kelvin = self.lst(lon, lat, day) + (AQUA_OFFSET if platform == "aqua" else 0.0)
        cloud = self.cloudy(lon, lat, day, shift=self._modis_shift(platform))
        dn = np.clip(np.rint(kelvin / MODIS_SCALE), 7500, 65535).astype(np.uint16)
        qc = np.full(gbox.shape, QC_GOOD, dtype=np.uint8)
        dn[cloud] = 0
        qc[cloud] = QC_CLOUD
        dn[outside] = 0
        qc[outside] = QC_OTHER
        return dn, qc

    @staticmethod
    def _modis_shift(platform: str) -> float:
        return 0.02 if platform == "aqua" else 0.0

    # -- what a correct loader returns -----------------------------------------------------------
    def expected_landsat(self, gbox: Any, day: Any) -> np.ndarray:
        """Landsat kelvin on ``gbox`` exactly as stored (float32, NaN at cloud/fill).

        ``gbox`` must lie on the Landsat pixel grid (same CRS or its other-hemisphere UTM twin,
        whole-pixel offset); values are decoded in float32 as DN x scale + offset.
        """
        scene = self.landsat_geobox()
        a, b = scene.affine, gbox.affine
        dy = 0.0
        if gbox.crs != scene.crs:
            e1, e2 = scene.crs.epsg, gbox.crs.epsg
            if e1 is None or e2 is None or abs(e1 - e2) != 100:
                raise InvalidParameterError(
                    f"gbox is in {gbox.crs}, not on the Landsat grid ({scene.crs})."
                )
            dy = 10_000_000.0 if e2 > e1 else -10_000_000.0
        col = (b.c - a.c) / a.a
        row = (b.f - dy - a.f) / a.e
        if (abs(b.a - a.a) > 1e-9 or abs(b.e - a.e) > 1e-9
                or abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6):
            raise InvalidParameterError(
                f"gbox {b} is not on the Landsat pixel grid {a}: pixels would be resampled."
            )
        r0, c0 = round(row), round(col)
        ny, nx = gbox.shape
        dn, qa = self.landsat_dn(day)
        out = np.full((ny, nx), np.nan, dtype=np.float32)
        rs = slice(max(r0, 0), min(r0 + ny, dn.shape[0]))
        cs = slice(max(c0, 0), min(c0 + nx, dn.shape[1]))
        sub_dn, sub_qa = dn[rs, cs], qa[rs, cs]
        vals = sub_dn.astype(np.float32) * np.float32(LANDSAT_SCALE) + np.float32(LANDSAT_OFFSET)
        vals[(sub_dn == 0) | (sub_qa != QA_CLEAR)] = np.nan
        out[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = vals
        return out

    def modis_truth(self, gbox: Any, day: Any, *, platform: str = "terra",
                    cloud_margin_km: float = 0.0) -> np.ndarray:
        """The smooth LST a MODIS platform saw, at the pixel centres of ``gbox`` (float64).

        NaN under cloud (discs grown by ``cloud_margin_km``: bilinear interpolation next to a
        masked MODIS pixel uses fewer neighbours, so compare away from cloud edges).
        """
        lon, lat = _to_lonlat(gbox, *_centres(gbox))
        out = self.lst(lon, lat, day) + (AQUA_OFFSET if platform == "aqua" else 0.0)
        cloud = self.cloudy(lon, lat, day, shift=self._modis_shift(platform),
                            grow_km=cloud_margin_km)
        return np.where(cloud, np.nan, out)

    def modis_tolerance(self, gbox: Any, day: Any, *, platform: str = "terra") -> float:
        """Largest error of MODIS values bilinearly resampled onto ``gbox``, in kelvin.

        The sum of: the bilinear step's interpolation error, bounded by
        ``(|g_cc| + |g_rr|) / 8`` where ``g`` is the truth as a function of the *sinusoidal*
        pixel coordinates (its second derivatives carry the field's curvature and that of the
        sinusoidal -> lon/lat (-> UTM) transform), maximised over the area; the 0.02 K
        quantisation (half of it, interpolated); and float32 rounding. The pixel positions
        themselves are exact (xfusion transforms them with PROJ; a GDAL warp would add its
        approximate transformer's error, up to 1/8 of a destination pixel times the gradient).
        """
        px = MODIS_TILE_SIZE / MODIS_PIXELS
        off = AQUA_OFFSET if platform == "aqua" else 0.0

        def grid(lon: np.ndarray, lat: np.ndarray) -> Any:
            x, y = _lonlat_to_sinusoidal(lon, lat)
            return lambda dc, dr: _sinusoidal_to_lonlat(x + dc * px, y - dr * px)

        return self._bilinear_tolerance(gbox, day, grid, px, off, MODIS_SCALE / 2)

    def geographic_tolerance(self, gbox: Any, day: Any, *, res: float = 0.01) -> float:
        """As :meth:`modis_tolerance` for the geographic product (float32, no quantisation)."""

        def grid(lon: np.ndarray, lat: np.ndarray) -> Any:
            return lambda dc, dr: (lon + dc * res, lat - dr * res)

        return self._bilinear_tolerance(gbox, day, grid, res * 111_320.0 * math.cos(
            math.radians(abs(self.centre[1]))), 0.0, 0.0)

    def _bilinear_tolerance(self, gbox: Any, day: Any, grid: Any, px_m: float, off: float,
                            quant: float) -> float:
        ext = gbox.extent.to_crs("EPSG:4326", resolution="auto").boundingbox
        n = 48
        lon, lat = np.meshgrid(np.linspace(ext.left, ext.right, n),
                               np.linspace(ext.bottom, ext.top, n))
        at = grid(lon, lat)

        def g(dc: float, dr: float) -> np.ndarray:
            return self.lst(*at(dc, dr), day) + off

        h = 0.01  # source pixel
        g0 = g(0.0, 0.0)
        gcc = (g(h, 0.0) - 2 * g0 + g(-h, 0.0)) / h**2
        grr = (g(0.0, h) - 2 * g0 + g(0.0, -h)) / h**2
        grad = np.hypot(g(h, 0.0) - g(-h, 0.0), g(0.0, h) - g(0.0, -h)) / (2 * h)  # K/pixel
        bilinear = float(np.max(np.abs(gcc)) + np.max(np.abs(grr))) / 8.0
        # positions: the 8-pixel coordinate lattice is exact to well under a millimetre
        position = 1e-3 / px_m * float(np.max(grad))
        return bilinear + quant + position + 1e-3


# --------------------------------------------------------------------------------------------
# the catalog


@dataclass(frozen=True)
class PCCatalog:
    """Items written by :func:`write_pc_catalog`, by collection, and the scene behind them."""

    scene: PCScene
    root: str
    href_base: str | None
    items: Mapping[str, tuple[Any, ...]]
    """Collection id -> items (pystac), in time order."""

    def __getitem__(self, collection: str) -> list[Any]:
        return list(self.items[collection])


GEOGRAPHIC_COLLECTION = "xfusion-lst-geographic"
"""Collection id of the optional geographic-grid coarse LST product."""


def _modis_id(platform: str, day: pd.Timestamp, h: int, v: int) -> str:
    prefix = "MOD11A1" if platform == "terra" else "MYD11A1"
    return f"{prefix}.A{day:%Y%j}.h{h:02d}v{v:02d}.061"


def _modis_template(platform: str, h: int, v: int) -> dict[str, Any]:
    tpl = _template("modis-11A1-061_example.json", "modis-11A1-061")
    if "type" not in tpl:  # built-in shape: make it look like a real item
        tpl = {**tpl, "type": "Feature", "id": "MOD11A1.A2022041.h19v02.061"}
    tpl = json.loads(json.dumps(tpl))
    props = tpl.setdefault("properties", {})
    props.update({
        "platform": platform,
        "modis:horizontal-tile": h,
        "modis:vertical-tile": v,
        "modis:tile-id": f"51{h:03d}{v:03d}",
        "start_datetime": "2022-02-10T00:00:00Z",
        "end_datetime": "2022-02-10T23:59:59Z",
        "datetime": None,
    })
    return tpl


def _geographic_template() -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": "LST-GEO",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "properties": {"datetime": "2020-01-01T10:00:00Z", "platform": "sentinel-3a",
                       "proj:epsg": 4326},
        "assets": {
            "LST": {
                "href": "", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": "Land surface temperature", "roles": ["data", "temperature"],
                "raster:bands": [{"data_type": "float32", "nodata": "nan", "unit": "kelvin"}],
            },
        },
    }


def write_pc_catalog(
    scene: PCScene,
    directory: str | os.PathLike[str],
    /,
    *,
    href_base: str | None = None,
    platforms: Sequence[str] = ("terra", "aqua"),
    sentinel2: bool = False,
    geographic: bool = False,
) -> PCCatalog:
    """Write ``scene`` as Planetary Computer-shaped items and COGs under ``directory``.

    Parameters
    ----------
    scene : PCScene
        The world to sample.
    directory : str or path-like
        Output folder (``<collection>/<item id>/`` with the item JSON and its COGs).
    href_base : str, optional
        URL ``directory`` is served at (``serve_stac_api(directory).url``): asset hrefs
        become URLs under it. Default: absolute paths.
    platforms : sequence of str, default ("terra", "aqua")
        MODIS platforms written every day.
    sentinel2 : bool, default False
        Also write Sentinel-2 L2A items on ``scene.sentinel2_days``.
    geographic : bool, default False
        Also write a coarse LST product on a 0.01 degree lon/lat grid (collection
        ``"xfusion-lst-geographic"``, asset ``"LST"`` float32 K, NaN nodata; no preset).

    Returns
    -------
    PCCatalog
    """
    from xfusion.testing._stac import write_stac_items

    root = Path(directory).absolute()
    root.mkdir(parents=True, exist_ok=True)
    items: dict[str, list[Any]] = {}

    # Landsat
    lg = scene.landsat_geobox()
    tpl = _template("landsat-c2-l2_example.json", "landsat-c2-l2")
    out = []
    for i, day in enumerate(scene.landsat_days):
        ts = scene.landsat_time(day)
        dn, qa = scene.landsat_dn(day)
        sat = "landsat-9" if i % 2 else "landsat-8"
        item_id = f"LC0{sat[-1]}_L2SP_047027_{ts:%Y%m%d}_02_T1"
        props = {"platform": sat, "eo:cloud_cover": round(100.0 * float(np.mean(qa != QA_CLEAR)),
                                                          2)}
        out += write_stac_items(
            root, collection="landsat-c2-l2", assets={"lwir11": dn, "qa_pixel": qa},
            times=[ts], geobox=lg, href_base=href_base, template=tpl, properties=props,
            ids=[item_id],
        )
    items["landsat-c2-l2"] = out

    # MODIS: whole tiles, Terra and Aqua
    out = []
    tiles = scene.modis_tiles()
    for day in scene.days:
        d = pd.Timestamp(day)
        for platform in platforms:
            for h, v in tiles:
                dn, qc = scene.modis_dn(h, v, day, platform)
                out += write_stac_items(
                    root, collection="modis-11A1-061",
                    assets={"LST_Day_1km": dn, "QC_Day": qc}, times=[d],
                    geobox=modis_tile_geobox(h, v), href_base=href_base,
                    template=_modis_template(platform, h, v),
                    properties={"eo:cloud_cover": round(100 * float(np.mean(qc != 0)))},
                    nodata_tags={"LST_Day_1km": None, "QC_Day": None}, ids=[
                        _modis_id(platform, d, h, v)],
                )
    items["modis-11A1-061"] = out

    if sentinel2:
        items["sentinel-2-l2a"] = _write_sentinel2(scene, root, href_base)
    if geographic:
        items[GEOGRAPHIC_COLLECTION] = _write_geographic(scene, root, href_base)
    return PCCatalog(scene=scene, root=str(root), href_base=href_base,
                     items={k: tuple(v) for k, v in items.items()})


def s2_reflectance(scene: PCScene, lon: Any, lat: Any, band: str) -> np.ndarray:
    """Surface reflectance of the scene's Sentinel-2 bands (``B04``, ``B08``, ``B11``)."""
    base = {"B04": 0.06, "B08": 0.32, "B11": 0.21}[band]
    amp = {"B04": 0.02, "B08": 0.08, "B11": 0.05}[band]
    t = scene.texture(lon, lat) / 2.6
    return base + amp * t + 0.01 * np.sin(2 * np.pi * np.asarray(lon) / 0.05)


def s2_dn(scene: PCScene, day: Any, band: str) -> np.ndarray:
    """Stored values of a Sentinel-2 band on ``day`` (baseline offset included)."""
    res = 20.0 if band in ("B11", "SCL") else 10.0
    gbox = scene.sentinel2_geobox(res)
    lon, lat = _to_lonlat(gbox, *_centres(gbox))
    cloud = scene.cloudy(lon, lat, day)
    if band == "SCL":
        return np.where(cloud, 9, 4).astype(np.uint8)
    rho = np.where(cloud, 0.45, s2_reflectance(scene, lon, lat, band))
    offset = 1000 if pd.Timestamp(day) >= S2_BASELINE_04 else 0
    return np.clip(np.rint(rho * 10000) + offset, 1, 65535).astype(np.uint16)


def _write_sentinel2(scene: PCScene, root: Path, href_base: str | None) -> list[Any]:
    from xfusion.testing._stac import write_stac_items

    tpl = _template("sentinel-2-l2a_planetary-computer_example.json", "sentinel-2-l2a")
    g10, g20 = scene.sentinel2_geobox(10.0), scene.sentinel2_geobox(20.0)
    out = []
    for day in scene.sentinel2_days:
        ts = pd.Timestamp(day) + pd.Timedelta(hours=(10.5 - scene.centre[0] / 15.0) % 24)
        base = "04.00" if pd.Timestamp(day) >= S2_BASELINE_04 else "02.12"
        assets = {b: s2_dn(scene, day, b) for b in ("B04", "B08", "B11", "SCL")}
        epsg = g10.crs.epsg
        tile = f"{epsg % 100:02d}{'N' if epsg < 32700 else 'S'}XX"
        out += write_stac_items(
            root, collection="sentinel-2-l2a", assets=assets, times=[ts],
            geobox={"B04": g10, "B08": g10, "B11": g20, "SCL": g20}, href_base=href_base,
            template=tpl, properties={"s2:processing_baseline": base, "s2:mgrs_tile": tile},
            ids=[f"S2B_MSIL2A_{ts:%Y%m%dT%H%M%S}_R043_T{tile}"],
        )
    return out


def _write_geographic(scene: PCScene, root: Path, href_base: str | None) -> list[Any]:
    from xfusion.testing._stac import write_stac_items

    gbox = scene.geographic_geobox()
    lon, lat = _centres(gbox)
    out = []
    for day in scene.days:
        ts = pd.Timestamp(day) + pd.Timedelta(hours=(10.0 - scene.centre[0] / 15.0) % 24)
        vals = scene.lst(lon, lat, day).astype(np.float32)
        vals[scene.cloudy(lon, lat, day)] = np.nan
        out += write_stac_items(
            root, collection=GEOGRAPHIC_COLLECTION, assets={"LST": vals}, times=[ts],
            geobox=gbox, href_base=href_base, template=_geographic_template(),
            nodata_tags={"LST": float("nan")}, ids=[f"LST-GEO_{ts:%Y%m%dT%H%M%S}"],
        )
    return out
