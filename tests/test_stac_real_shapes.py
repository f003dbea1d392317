"""The Planetary Computer path on items shaped like the real ones, served on loopback.

The catalogs come from ``xfusion.testing.write_pc_catalog``: Landsat C2 L2 items copied from the
real item JSON (``../shared/data/stac_items``) on the real USGS grid (northern UTM zone, edges
on odd multiples of 15 m), MODIS MOD11A1/MYD11A1 as WHOLE 1200 x 1200 sinusoidal tiles with
``proj:wkt2``, ``datetime: null`` and no nodata tag in the files, Terra and Aqua, areas across
MODIS tile boundaries; Sentinel-2 with the baseline-04.00 offset; a coarse product on a
lon/lat grid. Expected values come from the scene's analytic truth, never from xfusion's own
loader: Landsat exact to float32 on its grid, MODIS within the bilinear-interpolation bound
the scene derives from the field's curvature in sinusoidal pixel coordinates.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (registers .rio)
from rasterio.errors import NotGeoreferencedWarning

import xfusion
from xfusion.errors import AssetReadError
from xfusion.testing import Fault, serve_stac_api
from xfusion.testing._pc import PCScene, modis_tiles, s2_dn, write_pc_catalog

ROOT = Path(__file__).resolve().parents[1]

# Colorado, across the MODIS v04/v05 boundary (40 deg N): tiles h09v04 and h09v05
COLORADO = PCScene(
    bbox=(-105.10, 39.95, -104.98, 40.05),
    days=("2021-06-02", "2021-06-10", "2021-06-18"),
    landsat_days=("2021-06-02", "2021-06-18"),
    sentinel2_days=("2021-06-10", "2022-06-10"),
    cloud_cover={"2021-06-10": 0.3},
    seed=3,
)
# Yanco (the README's area), across the MODIS h29/h30 boundary; Landsat in EPSG:32655
YANCO = PCScene(
    bbox=(145.95, -34.75, 146.10, -34.62),
    days=("2016-02-05", "2016-02-13", "2016-02-21", "2016-02-27", "2016-03-08"),
    landsat_days=("2016-02-05", "2016-02-21", "2016-03-08"),
    cloud_cover={"2016-02-13": 0.25, "2016-03-08": 0.4},
    seed=11,
)


@pytest.fixture(autouse=True)
def _quiet_warp():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@pytest.fixture(scope="module")
def colorado(tmp_path_factory):
    root = tmp_path_factory.mktemp("colorado")
    with serve_stac_api(root) as server:
        cat = write_pc_catalog(COLORADO, root, href_base=server.url, sentinel2=True,
                               geographic=True)
        yield server, cat


@pytest.fixture(scope="module")
def yanco(tmp_path_factory):
    root = tmp_path_factory.mktemp("yanco")
    with serve_stac_api(root) as server:
        cat = write_pc_catalog(YANCO, root, href_base=server.url)
        yield server, cat


def _load(cat, **kw):
    kw.setdefault("chunks", {"time": 1, "y": 256, "x": 256})
    return xfusion.load_pair(fine=cat["landsat-c2-l2"], coarse=cat["modis-11A1-061"],
                             bbox=cat.scene.bbox, **kw)


def _check_modis(scene, cube, *, platform="terra"):
    """Coarse values within the derived bound (away from cloud edges), NaN under cloud."""
    g = cube.odc.geobox
    for t in cube.time.values:
        day = str(t)[:10]
        if not bool(cube[f"observed_{'coarse'}"].sel(time=t)):
            continue
        got = cube.coarse.sel(time=t).values
        truth = scene.modis_truth(g, day, platform=platform, cloud_margin_km=2.0)
        tol = scene.modis_tolerance(g, day, platform=platform)
        ok = np.isfinite(truth)
        assert ok.any()
        err = np.abs(got[ok] - truth[ok])
        assert np.isfinite(got[ok]).all(), day
        assert err.max() <= tol, (day, float(err.max()), tol)
        # the bound is tight enough to catch a grid shifted by a quarter of a MODIS pixel
        assert tol < 0.6
        cloudy = scene.cloudy(*_lonlat(g), day, shift=0.02 if platform == "aqua" else 0.0,
                              grow_km=-1.5)
        assert np.isnan(got[cloudy]).all(), day


def _lonlat(gbox):
    from xfusion.testing._pc import _centres, _to_lonlat

    return _to_lonlat(gbox, *_centres(gbox))


def _check_landsat(scene, cube):
    g = cube.odc.geobox
    n = 0
    for t in cube.time.values:
        day = str(t)[:10]
        if day not in scene.landsat_days:
            assert not bool(cube.observed_fine.sel(time=t))
            continue
        want = scene.expected_landsat(g, day)
        got = cube.fine.sel(time=t).values
        np.testing.assert_array_equal(got, want)  # exact, NaN at fill and cloud
        n += 1
    assert n == len(scene.landsat_days)


# --------------------------------------------------------------------------------------------
# the README quickstart, verbatim


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(title)
    m = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert m is not None
    return m.group(1)


def test_readme_quickstart_on_real_shapes(yanco, tmp_path, monkeypatch):
    server, _ = yanco
    monkeypatch.setenv("XFUSION_STAC_URL", server.stac_url)
    monkeypatch.chdir(tmp_path)
    code = _readme_block("## Quickstart: a real cube from the Planetary Computer")
    assert "bbox = (145.95, -34.75, 146.10, -34.62)" in code  # the scene is the README's area
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102  (the README's own code)
    cube, pairs, pred = ns["cube"], ns["pairs"], ns["pred"]
    g = cube.odc.geobox
    # the README asks for EPSG:32755 at 30 m; Landsat is delivered in EPSG:32655: the same
    # pixels, read exactly (no resampling) on a grid whose edges lie where Landsat's do
    assert g.crs.epsg == 32755 and cube.fine.rio.crs.to_epsg() == 32755
    assert (g.affine.c - 15) % 30 == 0 and (g.affine.f - 10_000_000 - 15) % 30 == 0
    assert len(modis_tiles(YANCO.bbox)) == 2  # the area crosses a MODIS tile boundary
    cube = cube.compute()
    _check_landsat(YANCO, cube)
    _check_modis(YANCO, cube)  # Terra (Aqua is 2.5 K warmer: outside the bound)
    assert [str(p)[:10] for p in pairs] == ["2016-02-05", "2016-02-21"]
    back = xfusion.io.open_zarr(tmp_path / "yanco_lst_starfm.zarr")
    assert back.odc.crs.epsg == 32755
    assert set(np.asarray(back.time.values).astype("datetime64[D]").astype(str)) == {
        str(t)[:10] for t in pred.time.values
    }
    assert np.isfinite(back.fine.values).mean() > 0.5


# --------------------------------------------------------------------------------------------
# load_pair on every grid form


@pytest.mark.parametrize(
    "grid",
    [{}, {"crs": "EPSG:32613", "resolution": 30}, {"crs": "EPSG:32613"},
     {"crs": "EPSG:32713", "resolution": 30}],
    ids=["native", "crs+resolution", "crs", "utm-twin"],
)
def test_load_pair_on_the_landsat_grid(colorado, grid):
    _, cat = colorado
    cube = _load(cat, **grid)
    g = cube.odc.geobox
    native = COLORADO.landsat_geobox()
    assert g.crs.epsg == int(grid.get("crs", "EPSG:32613").split(":")[1])
    assert cube.coarse.odc.crs == g.crs and cube.spatial_ref.attrs["crs_wkt"] == g.crs.to_wkt()
    assert abs(g.affine.a) == 30.0
    shift = 10_000_000 if g.crs.epsg == 32713 else 0
    assert ((g.affine.c - native.affine.c) / 30) % 1 == 0
    assert ((g.affine.f - shift - native.affine.f) / 30) % 1 == 0
    cube = cube.compute()
    _check_landsat(COLORADO, cube)
    _check_modis(COLORADO, cube)


def test_explicit_anchor_resamples_and_is_documented(colorado):
    _, cat = colorado

    def off_grid(values):  # distance of the values to the nearest stored DN
        dn = (values.astype(np.float64) - 149.0) / 0.00341802
        return np.abs(dn - np.rint(dn))[np.isfinite(dn)]

    native = _load(cat).fine.isel(time=0).values
    assert off_grid(native).max() < 0.02  # stored values (float32 rounding only)
    cube = _load(cat, crs="EPSG:32613", resolution=30, anchor="edge")
    g = cube.odc.geobox
    assert g.affine.c % 30 == 0 and g.affine.f % 30 == 0  # pixel edges on multiples of 30 m
    assert np.median(off_grid(cube.fine.isel(time=0).values)) > 0.1  # bilinear: resampled
    with pytest.raises(xfusion.errors.InvalidParameterError, match="anchor='middle'"):
        _load(cat, crs="EPSG:32613", resolution=30, anchor="middle")
    assert "odd multiples of 15 m" in xfusion.load_pair.__doc__


def test_modis_across_a_tile_boundary(colorado):
    _, cat = colorado
    assert modis_tiles(COLORADO.bbox) == [(9, 4), (9, 5)]
    cube = _load(cat).compute()
    lat = _lonlat(cube.odc.geobox)[1]
    both = cube.coarse.isel(time=0).values
    assert np.isfinite(both[lat > 40.0]).all() and np.isfinite(both[lat < 40.0]).all()
    _check_modis(COLORADO, cube)
    # the per-time coordinates of the native load carried over without their CRS
    assert cube.coarse_time.dims == ("time",) and cube.clear_fraction_coarse.dims == ("time",)
    assert cube.odc.crs.epsg == 32613 and "UTM zone 13N" in cube.spatial_ref.attrs["crs_wkt"]


def test_aqua_on_request(colorado):
    _, cat = colorado
    cube = _load(cat, coarse_platform="aqua").compute()
    _check_modis(COLORADO, cube, platform="aqua")


def test_clear_fraction_on_the_coarse_grid(colorado):
    _, cat = colorado
    cube = _load(cat)
    frac = cube.clear_fraction_coarse
    assert frac.dims == ("time",) and frac.chunks is not None  # lazy
    resampled = cube.coarse.notnull().mean(("y", "x")).values
    np.testing.assert_allclose(frac.values, resampled, atol=0.03)
    cloudy = dict(zip(cube.time.values.astype("datetime64[D]").astype(str), frac.values,
                      strict=True))
    assert cloudy["2021-06-02"] == 1.0 and 0.5 < cloudy["2021-06-10"] < 0.85
    pairs = xfusion.stac.clear_pairs(cube, min_clear=0.9)
    assert [str(p)[:10] for p in pairs] == ["2021-06-02", "2021-06-18"]
    targets = xfusion.stac.clear_targets(cube, min_clear=0.5)
    assert [str(p)[:10] for p in targets] == ["2021-06-10"]


def test_coarse_native_keeps_its_crs(colorado):
    _, cat = colorado
    cube, native = _load(cat, coarse_native=True)
    assert native.odc.crs.epsg is None and "Sinusoidal" in native.odc.crs.to_wkt()
    assert native.odc.geobox.resolution.x == pytest.approx(926.625433, rel=1e-6)
    assert cube.odc.crs.epsg == 32613


def test_geographic_coarse_product(colorado):
    _, cat = colorado
    cube = xfusion.load_pair(fine=cat["landsat-c2-l2"], coarse=cat["xfusion-lst-geographic"],
                             bbox=COLORADO.bbox, bands={"lst": "LST"},
                             chunks={"time": 1, "y": 256, "x": 256})
    g = cube.odc.geobox
    assert g.crs.epsg == 32613
    cube = cube.compute()
    for t in cube.time.values:
        day = str(t)[:10]
        truth = COLORADO.modis_truth(g, day, cloud_margin_km=2.0)
        tol = COLORADO.geographic_tolerance(g, day)
        got = cube.coarse.sel(time=t).values
        ok = np.isfinite(truth)
        assert np.abs(got[ok] - truth[ok]).max() <= tol


def test_sentinel2_grid_and_offset(colorado):
    _, cat = colorado
    items = cat["sentinel-2-l2a"]
    epsg = COLORADO.sentinel2_geobox().crs.epsg
    for res in (10, 20):
        ds = xfusion.load_cube(items, bands=["red", "swir16"], crs=f"EPSG:{epsg}",
                               resolution=res, bbox=COLORADO.bbox, mask=None).compute()
        g = ds.odc.geobox
        assert g.affine.c % res == 0 and g.affine.f % res == 0  # edges on multiples
        band, asset = ("red", "B04") if res == 10 else ("swir16", "B11")
        native = COLORADO.sentinel2_geobox(res)
        r0 = round((native.affine.f - g.affine.f) / res)
        c0 = round((g.affine.c - native.affine.c) / res)
        for i, day in enumerate(COLORADO.sentinel2_days):
            dn = s2_dn(COLORADO, day, asset)[r0 : r0 + g.shape[0], c0 : c0 + g.shape[1]]
            want = dn.astype(np.float32) * np.float32(1e-4)
            if pd.Timestamp(day) >= pd.Timestamp("2022-01-25"):  # baseline 04.00: -1000 DN
                want = want + np.float32(-0.1)
            np.testing.assert_array_equal(ds[band].isel(time=i).values, want)


# --------------------------------------------------------------------------------------------
# errors reported once, xfusion run


def test_failed_asset_reported_once(colorado, caplog):
    server, cat = colorado
    from xfusion.stac._read import _clear_gdal_cache

    server.faults.append(Fault("*MOD11A1*h09v05*LST_Day_1km.tif", status=404))
    for it in cat["modis-11A1-061"]:  # earlier tests read these files: GDAL caches them
        _clear_gdal_cache(it.assets["LST_Day_1km"].href)
    try:
        cube = _load(cat)
        with caplog.at_level(logging.DEBUG), pytest.raises(AssetReadError, match="404"):
            cube.coarse.isel(time=1).compute()
    finally:
        server.faults.clear()
    odc = [r for r in caplog.records if r.name.startswith("odc.")]
    assert odc == [], [r.getMessage() for r in odc]


def _job(server, store, **kw):
    return {
        "method": "starfm", "params": {"preset": "lst"}, "store": str(store),
        "time": ["2016-02-01", "2016-03-31"], "bbox": list(YANCO.bbox), "url": server.stac_url,
        "tile": 192, "targets": ["2016-02-13"], **kw,
    }


def test_job_across_modis_tiles_completes_and_resumes(yanco, tmp_path):
    server, cat = yanco
    job = _job(server, tmp_path / "out.zarr", method="baseline", params={})
    report = xfusion.run(job, client=False, progress=False)
    assert report.ok and not report.failed and report.tiles_written == report.tiles_total > 3
    again = xfusion.run(job, client=False, progress=False)
    assert again.tiles_skipped == report.tiles_total and again.tiles_written == 0
    out = xfusion.io.open_zarr(tmp_path / "out.zarr").fine.compute()
    # Landsat grid in its own (northern) zone, as USGS delivers it
    assert out.odc.crs.epsg == 32655
    assert (out.odc.geobox.affine.c - 15) % 30 == 0 and (out.odc.geobox.affine.f - 15) % 30 == 0
    # same answer as one whole-area load + the same method
    whole = xfusion.load_pair(fine=cat["landsat-c2-l2"], coarse=cat["modis-11A1-061"],
                              geobox=out.odc.geobox, chunks={"time": 1, "y": 512, "x": 512})
    ref = whole.fusion.baseline(fine="fine", coarse="coarse", targets=["2016-02-13"],
                                pairs="nearest")
    # bit for bit: the coarse resampling depends on pixel positions only, not on the tiling
    np.testing.assert_array_equal(out.isel(time=0).values, ref.fine.isel(time=0).values)


def test_starfm_job_on_real_shapes(yanco, tmp_path):
    server, _ = yanco
    report = xfusion.run(_job(server, tmp_path / "s.zarr"), client=False, progress=False)
    assert report.ok and report.tiles_written == report.tiles_total
    out = xfusion.io.open_zarr(tmp_path / "s.zarr").fine
    truth = YANCO.lst(*_lonlat(out.odc.geobox), "2016-02-13") + YANCO.texture(
        *_lonlat(out.odc.geobox))
    got = out.isel(time=0).values
    ok = np.isfinite(got)
    assert ok.mean() > 0.6  # 25 % cloud on the target day
    assert np.sqrt(np.mean((got[ok] - truth[ok]) ** 2)) < 3.0


def test_tiles_get_only_the_coarse_items_they_need(yanco, tmp_path, monkeypatch):
    from xfusion.jobs import runner

    server, _ = yanco
    seen: list[dict] = []
    real = runner.run_tile

    def spy(payload):
        seen.append(payload)
        return real(payload)

    monkeypatch.setattr(runner, "run_tile", spy)
    report = xfusion.run(_job(server, tmp_path / "n.zarr", method="baseline", params={}),
                         client=False, progress=False)
    assert report.ok and seen
    fine_days = set(YANCO.landsat_days)
    for p in seen:
        days = {d["properties"]["start_datetime"][:10] for d in p["coarse_items"]}
        plats = {d["properties"]["platform"] for d in p["coarse_items"]}
        assert plats == {"terra"}
        assert days <= fine_days | {"2016-02-13"}  # 2016-02-27 is neither a pair nor a target
    # 20 MODIS items exist in the period (5 days x 2 tiles x Terra/Aqua): a tile gets at most
    # the tiles of the 4 days it needs, of one platform
    assert max(len(p["coarse_items"]) for p in seen) <= 4 * 2


def test_tiles_with_four_corner_footprints(yanco):
    """Footprints drawn through the four tile corners miss the curved sinusoidal edges."""
    _, cat = yanco
    coarse = []
    for it in cat["modis-11A1-061"]:
        new = it.clone()
        t = it.properties["proj:transform"]
        n = it.properties["proj:shape"][0]
        corners = [(t[2], t[5]), (t[2] + n * t[0], t[5]), (t[2] + n * t[0], t[5] + n * t[4]),
                   (t[2], t[5] + n * t[4])]
        lonlat = [tuple(float(v) for v in _sinu(x, y)) for x, y in corners]
        new.geometry = {"type": "Polygon", "coordinates": [[*lonlat, lonlat[0]]]}
        coarse.append(new)
    cube = xfusion.load_pair(fine=cat["landsat-c2-l2"], coarse=coarse, bbox=YANCO.bbox,
                             chunks={"time": 1, "y": 256, "x": 256})
    assert float(cube.clear_fraction_coarse.sel(time="2016-02-05")) == 1.0
    assert np.isfinite(cube.coarse.sel(time="2016-02-05").values).all()


def _sinu(x, y):
    from xfusion.testing._pc import _sinusoidal_to_lonlat

    return _sinusoidal_to_lonlat(x, y)
