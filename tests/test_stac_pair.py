"""load_pair on a loopback STAC API of synthetic Landsat + MODIS LST: the acceptance test.

The synthetic scene's fine (Landsat) and native coarse (MODIS) LST are written as COGs with the
real encodings (uint16 DN, scale/offset, fill values, QA bits), served over HTTP with a
minimal STAC API, searched and loaded back. Expected values are computed here independently:
the DN encoding of the generator's values, decoded in float32, and a plain numpy bilinear
interpolation of the native coarse grid at the fine pixel centres.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

import xfusion
from xfusion.cube import from_numpy
from xfusion.errors import (
    CRSMismatchError,
    EmptySearchError,
    InvalidParameterError,
    NoOverlapError,
    TimeAxisError,
)
from xfusion.stac import clear_fractions, clear_pairs, clear_targets, load_pair
from xfusion.stac._items import apply_affine
from xfusion.testing import raise_if_dask_computes, synthetic_scene, write_stac_catalog
from xfusion.testing._server import serve_stac_api
from xfusion.testing._stac import write_stac_items

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Support for class-based `config`:DeprecationWarning"),
]

F32 = np.float32
ST_SCALE, ST_OFFSET, MODIS_SCALE = 0.00341802, 149.0, 0.02


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Landsat/MODIS LST scene with clouds on both sensors, behind a loopback STAC API."""
    root = tmp_path_factory.mktemp("pair")
    scene, native = synthetic_scene(
        (96, 80), times=5, coarse_factor=16, coarse_native=True, seed=11,
        fine_times=[0, 2, 3], cloud_fraction=[0.0, 0.0, 0.3, 0.05, 0.0],
        coarse_cloud_fraction=0.25,
    )
    with serve_stac_api(root) as server:
        write_stac_catalog(scene, root, coarse=native, href_base=server.url)
        yield server, scene, native


def encode(values, scale, offset):
    """The DN a product stores for physical values (fill 0 kept free), NaN -> 0."""
    dn = np.rint((np.nan_to_num(values.astype(np.float64), nan=offset) - offset) / scale)
    dn = np.clip(dn, 1, 65535).astype(np.uint16)
    dn[~np.isfinite(values)] = 0
    return dn


def decode(dn, scale, offset=0.0):
    out = dn.astype(F32) * F32(scale)
    if offset:
        out = out + F32(offset)
    out[dn == 0] = np.nan
    return out


def bilinear(native, ngbox, fgbox):
    """Bilinear interpolation of ``native`` (t, Y, X) at the fine pixel centres, in numpy.

    Missing neighbours are left out and the weights renormalised (as GDAL does with nodata);
    NaN where the nearest native pixel is missing (nearest-neighbour validity).
    """
    t, ny, nx = native.shape
    fy, fx = fgbox.shape
    inv = ~ngbox.affine
    xs = fgbox.affine.c + (np.arange(fx) + 0.5) * fgbox.affine.a
    ys = fgbox.affine.f + (np.arange(fy) + 0.5) * fgbox.affine.e
    col = np.array([apply_affine(inv, x, ys[0])[0] for x in xs]) - 0.5
    row = np.array([apply_affine(inv, xs[0], y)[1] for y in ys]) - 0.5
    out = np.full((t, fy, fx), np.nan)
    for k in range(t):
        v = native[k].astype(np.float64)
        for i, r in enumerate(row):
            for j, c in enumerate(col):
                ni, nj = int(np.floor(r + 0.5)), int(np.floor(c + 0.5))
                if not (0 <= ni < ny and 0 <= nj < nx) or np.isnan(v[ni, nj]):
                    continue
                i0, j0 = int(np.floor(r)), int(np.floor(c))
                wy, wx = r - i0, c - j0
                acc = wsum = 0.0
                for di, dj, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                                  (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
                    ii, jj = i0 + di, j0 + dj
                    if 0 <= ii < ny and 0 <= jj < nx and np.isfinite(v[ii, jj]) and w > 0:
                        acc += w * v[ii, jj]
                        wsum += w
                out[k, i, j] = acc / wsum
    return out


def test_load_pair_reproduces_the_generator(served):
    server, scene, native = served
    gbox = scene.odc.geobox
    with raise_if_dask_computes():
        cube, nat = load_pair(
            fine="landsat-c2-l2", coarse="modis-11A1-061", geobox=gbox, url=server.stac_url,
            chunks={"time": 1, "y": 48, "x": 40}, coarse_native=True,
        )
    # the exact expected grid, lazily, with the fusion-cube contract
    assert cube.odc.geobox == gbox and cube.fine.dims == ("time", "y", "x")
    assert cube.fine.data.chunksize == (1, 48, 40) and cube.coarse.data.chunksize == (1, 48, 40)
    xfusion.validate_cube(cube, fine="fine", coarse="coarse")
    days = scene.time.dt.floor("D").values
    np.testing.assert_array_equal(cube.time.values, days)
    np.testing.assert_array_equal(cube.observed_fine.values, scene.observed_fine.values)
    assert cube.observed_coarse.values.all()
    fine_t = np.where(scene.observed_fine.values, scene.time.values, np.datetime64("NaT"))
    np.testing.assert_array_equal(cube.fine_time.values, fine_t.astype("datetime64[ns]"))
    np.testing.assert_array_equal(cube.coarse_time.values, days)
    assert cube.fine.attrs["units"] == "K" and cube.coarse.attrs["units"] == "K"
    cube = cube.compute()

    # fine: the generator's values through the Landsat ST encoding, to float32 precision
    obs = scene.observed_fine.values
    truth = scene.fine.values[obs]
    want = decode(encode(truth, ST_SCALE, ST_OFFSET), ST_SCALE, ST_OFFSET)
    got = cube.fine.values[obs]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))  # clouds: QA + fill
    assert np.isnan(truth).any()
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
    assert np.nanmax(np.abs(got - truth)) <= ST_SCALE / 2 + 1e-4
    assert np.isnan(cube.fine.values[~obs]).all()

    # coarse on its native grid: exact
    nat_truth = native.coarse.values
    nat_want = decode(encode(nat_truth, MODIS_SCALE, 0.0), MODIS_SCALE)
    native_part = nat.coarse.values
    # the native crop covers the scene's coarse grid plus a 2-pixel margin (no data there)
    off_c, off_r = np.rint(apply_affine(~nat.odc.geobox.affine, native.odc.geobox.affine.c,
                                        native.odc.geobox.affine.f)).astype(int)
    inner = native_part[:, off_r:off_r + nat_truth.shape[1], off_c:off_c + nat_truth.shape[2]]
    np.testing.assert_array_equal(inner, nat_want)
    assert np.isnan(native_part).sum() == np.isnan(nat_want).sum() + (
        native_part.size - nat_want.size
    )

    # coarse on the fine grid: bilinear values, nearest validity
    ref = bilinear(nat_want, native.odc.geobox, gbox)
    got_c = cube.coarse.values
    np.testing.assert_array_equal(np.isnan(got_c), np.isnan(ref))
    np.testing.assert_allclose(got_c, ref, rtol=0, atol=4e-5)  # float32 rounding (1 ulp)
    assert np.isnan(ref).any() and np.isfinite(ref).mean() > 0.5

    # clear fractions (lazy coordinates, computed with the data)
    frac = clear_fractions(cube)
    np.testing.assert_allclose(frac["fine"].values[obs], np.isfinite(truth).mean(axis=(1, 2)),
                               rtol=1e-6)
    np.testing.assert_allclose(frac["coarse"].values, np.isfinite(ref).mean(axis=(1, 2)),
                               rtol=1e-6)
    assert (frac["fine"].values[~obs] == 0).all()


def test_pair_grid_from_bbox_is_the_native_grid(served):
    server, scene, _ = served
    g = scene.odc.geobox
    sub = g[20:60, 10:50]  # a window of the scene; its lon/lat box as the AOI
    bbox = tuple(sub.geographic_extent.boundingbox)
    cube = load_pair(fine="landsat-c2-l2", coarse="modis-11A1-061", bbox=bbox,
                     url=server.stac_url, time=("2021-04-01", "2021-05-01"))
    got = cube.odc.geobox
    assert got.crs == g.crs and got.resolution == g.resolution
    dx = (got.affine.c - g.affine.c) / g.affine.a
    dy = (got.affine.f - g.affine.f) / g.affine.e
    assert dx == int(dx) and dy == int(dy)  # on the Landsat pixel grid, no resampling
    assert got.extent.contains(sub.extent.buffer(-1.0))
    r0, c0 = int(dy), int(dx)
    obs = scene.observed_fine.values & (scene.time.values < np.datetime64("2021-05-02"))
    truth = scene.fine.values[obs][:, r0:r0 + got.shape[0], c0:c0 + got.shape[1]]
    vals = cube.fine.values[cube.observed_fine.values]
    np.testing.assert_allclose(vals, decode(encode(truth, ST_SCALE, ST_OFFSET), ST_SCALE,
                                            ST_OFFSET), rtol=2e-7)
    assert cube.sizes["time"] == int((scene.time.values < np.datetime64("2021-05-02")).sum())


def test_time_alignment_with_overpass_tolerance(tmp_path):
    g = GeoBox((16, 16), Affine(30, 0, 499980, 0, -30, 5000040), "EPSG:32633")
    gc = GeoBox((2, 2), Affine(240, 0, 499980, 0, -240, 5000040), "EPSG:32633")
    lst = np.full((16, 16), encode(np.array([300.0]), ST_SCALE, ST_OFFSET)[0], "uint16")
    qa = np.full((16, 16), 21824, "uint16")
    modis = np.full((2, 2), 15000, "uint16")
    fine_times = ["2021-04-03T23:30", "2021-04-05T01:00"]
    fine = write_stac_items(tmp_path, collection="landsat-c2-l2", times=fine_times,
                            assets={"lwir11": lst, "qa_pixel": qa}, geobox=g)
    coarse = write_stac_items(tmp_path, collection="modis-11A1-061",
                              times=["2021-04-03", "2021-04-04", "2021-04-06"],
                              assets={"LST_Day_1km": modis, "QC_Day": np.zeros((2, 2), "uint8")},
                              geobox=gc)
    # 23:30 lies inside the 04-03 MODIS day; 01:00 on 04-05 is 1 h after the 04-04 day
    cube = load_pair(fine=fine, coarse=coarse, geobox=g, tolerance="3h")
    assert [str(t)[:10] for t in cube.time.values] == ["2021-04-03", "2021-04-04", "2021-04-06"]
    assert cube.observed_fine.values.tolist() == [True, True, False]
    assert str(cube.fine_time.values[1]) == "2021-04-05T01:00:00.000000000"
    np.testing.assert_allclose(cube.coarse.values, F32(15000) * F32(0.02))
    strict = load_pair(fine=fine, coarse=coarse, geobox=g, tolerance="30min")
    assert [str(t)[:10] for t in strict.time.values] == [
        "2021-04-03", "2021-04-04", "2021-04-05", "2021-04-06"]
    assert strict.observed_fine.values.tolist() == [True, False, True, False]
    assert strict.observed_coarse.values.tolist() == [True, True, False, True]
    # another solar day (lon 15 E: UTC+1 h) whose image also pairs with the 04-04 MODIS day
    more = write_stac_items(tmp_path / "b", collection="landsat-c2-l2",
                            times=["2021-04-04T12:00"], assets={"lwir11": lst, "qa_pixel": qa},
                            geobox=g)
    with pytest.raises(TimeAxisError, match=r"same coarse date\(s\) \['2021-04-04'\].*Lower "
                                            r"tolerance="):
        load_pair(fine=[fine[1], *more], coarse=coarse, geobox=g, tolerance="3h")


def test_reflectance_pair_names_and_bands(tmp_path):
    scene, native = synthetic_scene((32, 32), kind="reflectance", bands=("red", "nir"),
                                    times=2, coarse_factor=16, coarse_native=True, seed=2)
    cat = write_stac_catalog((scene, native), tmp_path)
    cube = load_pair(fine=cat.fine_items, coarse=cat.coarse_items, bands=["red", "nir"],
                     geobox=scene.odc.geobox)
    assert sorted(cube.data_vars) == ["coarse_nir", "coarse_red", "fine_nir", "fine_red"]
    assert "clear_fraction_fine" in cube.coords and "clear_fraction_coarse" in cube.coords
    obs = scene.observed_fine_red.values
    np.testing.assert_allclose(cube.fine_red.values[obs], scene.fine_red.values[obs],
                               atol=2.75e-5 / 2 + 1e-6)
    with pytest.raises(InvalidParameterError, match=r"bands= is required.*share the band names"):
        load_pair(fine=cat.fine_items, coarse=cat.coarse_items, geobox=scene.odc.geobox)


def test_clear_pairs_and_targets_known_answers():
    g = GeoBox((4, 5), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    times = pd.date_range("2021-01-01", periods=5, freq="D")
    fine = np.ones((5, 4, 5), "float32")
    coarse = np.ones((5, 4, 5), "float32")
    fine[1] = np.nan  # no fine image
    fine[2, :2] = np.nan  # 50 % clear
    fine[3, 0, 0] = np.nan  # 95 % clear
    coarse[4, :, :3] = np.nan  # coarse 40 % clear
    cube = from_numpy({"fine": fine, "coarse": coarse}, geobox=g, times=times)
    fr = clear_fractions(cube)
    np.testing.assert_allclose(fr["fine"].values, [1, 0, 0.5, 0.95, 1])
    np.testing.assert_allclose(fr["coarse"].values, [1, 1, 1, 1, 0.4])
    days = [str(t)[:10] for t in clear_pairs(cube, min_clear=0.9)]
    assert days == ["2021-01-01", "2021-01-04"]
    assert [str(t)[:10] for t in clear_pairs(cube, min_clear=0.4)] == [
        "2021-01-01", "2021-01-03", "2021-01-04", "2021-01-05"]
    assert [str(t)[:10] for t in clear_targets(cube, min_clear=0.9)] == ["2021-01-02",
                                                                        "2021-01-03"]
    assert len(clear_targets(cube, min_clear=0.9, include_pairs=True)) == 4
    with pytest.raises(NoOverlapError, match=r"No date has both 'fine' clear >= 0.99.*Best dates"):
        clear_pairs(cube.isel(time=[1, 2, 4]), min_clear=0.99)
    with pytest.raises(InvalidParameterError, match=r"min_clear=1.5 must be a fraction"):
        clear_targets(cube, min_clear=1.5)
    # the dates feed the fusion methods directly
    pred = cube.fusion.baseline(fine="fine", coarse="coarse",
                                targets=clear_targets(cube, min_clear=0.9),
                                pairs=clear_pairs(cube, min_clear=0.9)[0])
    assert pred.sizes["time"] == 2


def test_pair_errors(served, tmp_path):
    server, scene, _ = served
    far = (100.0, 10.0, 100.1, 10.1)
    with pytest.raises(EmptySearchError, match=r"found no items: collections \['landsat-c2-l2'\], "
                                               r"bbox \(100.0, 10.0, 100.1, 10.1\)"):
        load_pair(fine="landsat-c2-l2", coarse="modis-11A1-061", bbox=far, url=server.stac_url)
    fine = xfusion.stac.search("landsat-c2-l2", url=server.stac_url)
    coarse = xfusion.stac.search("modis-11A1-061", url=server.stac_url)
    with pytest.raises(NoOverlapError, match=r"\(bbox=\(100.0, 10.0, 100.1, 10.1\)\) does not "
                                             r"intersect any of the 3 items.*bboxes include"):
        load_pair(fine=fine, coarse=coarse, bbox=far)
    elsewhere = GeoBox((8, 8), Affine(30, 0, 300000, 0, -30, 4000000), "EPSG:32633")
    with pytest.raises(NoOverlapError, match="does not intersect any of the 3 items"):
        xfusion.load_cube(fine, bands="lst", geobox=elsewhere)
    with pytest.raises(InvalidParameterError, match=r"needs bbox="):
        load_pair(fine="landsat-c2-l2", coarse="modis-11A1-061", url=server.stac_url)
    with pytest.raises(InvalidParameterError, match="either geobox= or bbox="):
        load_pair(fine="landsat-c2-l2", coarse="modis-11A1-061", geobox=scene.odc.geobox,
                  bbox=(1, 1, 2, 2))
    # fine items in two UTM zones and no target grid
    a = synthetic_scene((16, 16), times=1, coarse_factor=16, crs="EPSG:32633", seed=1)
    b = synthetic_scene((16, 16), times=["2021-04-19T10:00"], coarse_factor=16,
                        crs="EPSG:32634", seed=1)
    ca = write_stac_catalog(a, tmp_path / "a")
    cb = write_stac_catalog(b, tmp_path / "b")
    with pytest.raises(CRSMismatchError, match=r"2 different CRSs \(EPSG:32633: .*EPSG:32634"):
        xfusion.load_cube([*ca.fine_items, *cb.fine_items], bands="lst")
    mixed = xfusion.load_cube([*ca.fine_items, *cb.fine_items], bands="lst",
                              geobox=a.odc.geobox)
    assert mixed.sizes["time"] == 2
