"""Local STAC catalogs of synthetic scenes, served on loopback, loaded with load_cube."""

from __future__ import annotations

import copy
import json
import os
import urllib.error
import urllib.request

import dask
import numpy as np
import odc.stac
import pystac
import pytest

from xfusion.errors import InvalidParameterError, VariableNotFoundError
from xfusion.stac import band_info, load_cube
from xfusion.testing import (
    StacCatalog,
    raise_if_dask_computes,
    serve_directory,
    synthetic_scene,
    write_stac_catalog,
)

# rasterio logs a benign warning when odc-stac warps (documented in specs/ecosystem.md)
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

LST_STEP = 0.00341802  # Landsat C2 ST scale: one DN
MODIS_STEP = 0.02
SR_STEP = 2.75e-05
KW = {"times": 4, "coarse_factor": 16, "coarse_cloud_fraction": 0.3}


@pytest.fixture(scope="module")
def lst_scene():
    return synthetic_scene((96, 80), coarse_native=True, **KW)


@pytest.fixture(scope="module")
def served(tmp_path_factory, lst_scene):
    """The LST scene written as a catalog and served over HTTP for the whole module."""
    root = tmp_path_factory.mktemp("catalog")
    with serve_directory(root) as url:
        cat = write_stac_catalog(lst_scene, root, href_base=url)
        yield url, cat


def _items_over_http(url: str) -> list[pystac.Item]:
    catalog = pystac.Catalog.from_file(url + "catalog.json")
    return sorted(catalog.get_items(recursive=True), key=lambda i: (i.collection_id, i.id))


def test_catalog_layout_and_result(served, lst_scene):
    url, cat = served
    scene, _ = lst_scene
    assert isinstance(cat, StacCatalog)
    assert cat.fine_bands == {"fine": "lwir11"}
    assert cat.coarse_bands == {"coarse": "LST_Day_1km"}
    assert len(cat.fine_items) == int(scene.observed_fine.sum()) == 3
    assert len(cat.coarse_items) == scene.sizes["time"] == 4
    assert cat.catalog_url == url + "catalog.json"
    root = os.path.dirname(cat.catalog_path)
    for rel in ("catalog.json", "landsat-c2-l2/collection.json", "modis-11A1-061/collection.json"):
        assert os.path.isfile(os.path.join(root, rel)), rel
    items = _items_over_http(url)
    assert [i.id for i in items if i.collection_id == "landsat-c2-l2"] == [
        i.id for i in cat.fine_items
    ]
    for item in items:
        for asset in item.assets.values():
            assert asset.href.startswith(url)
            assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"


def test_item_json_is_shaped_like_the_real_items(served, shared_data):
    _, cat = served
    real = {}
    for name in ("landsat-c2-l2", "modis-11A1-061"):
        with open(os.path.join(shared_data, "stac_items", f"{name}_example.json")) as fh:
            real[name] = json.load(fh)
    with open(cat.fine_items[1].self_href) as fh:
        fine = json.load(fh)
    with open(cat.coarse_items[1].self_href) as fh:
        coarse = json.load(fh)
    for ours, ref in ((fine, real["landsat-c2-l2"]), (coarse, real["modis-11A1-061"])):
        assert ours["stac_version"] == ref["stac_version"] == "1.0.0"
        assert ours["type"] == "Feature" and ours["collection"] == ref["collection"]
        for ext in ("projection", "raster", "eo"):
            assert any(ext in e for e in ours["stac_extensions"])
        for key in ("proj:epsg", "proj:shape", "proj:transform", "platform", "eo:cloud_cover"):
            assert key in ours["properties"], key
            assert key in ref["properties"], key
        assert len(ours["properties"]["proj:transform"]) == 6
        assert ours["geometry"]["type"] == "Polygon" and len(ours["bbox"]) == 4
    # Landsat: same datetime form, assets like the real ones
    assert fine["properties"]["datetime"].endswith("Z")
    for key in ("lwir11", "qa_pixel"):
        ours, ref = fine["assets"][key], real["landsat-c2-l2"]["assets"][key]
        assert ours["type"] == ref["type"] and ours["roles"] == ref["roles"]
        rb_ours = {k: v for k, v in ours["raster:bands"][0].items() if k != "spatial_resolution"}
        rb_ref = {k: v for k, v in ref["raster:bands"][0].items() if k != "spatial_resolution"}
        assert rb_ours == rb_ref
    assert (
        fine["assets"]["lwir11"]["eo:bands"]
        == real["landsat-c2-l2"]["assets"]["lwir11"]["eo:bands"]
    )
    bitfields = fine["assets"]["qa_pixel"]["classification:bitfields"]
    assert [(b["name"], b["offset"]) for b in bitfields][:4] == [
        ("fill", 0),
        ("dilated_cloud", 1),
        ("cirrus", 2),
        ("cloud", 3),
    ]
    # MODIS: datetime null with a day range; LST without nodata, like the real items
    props = coarse["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"].endswith("T00:00:00Z")
    assert props["end_datetime"].endswith("T23:59:59Z")
    ref_assets = real["modis-11A1-061"]["assets"]
    for key in ("LST_Day_1km", "QC_Day"):
        ours, ref = coarse["assets"][key], ref_assets[key]
        assert ours["roles"] == ref["roles"] and ours["type"] == ref["type"]
        rb_ours = {k: v for k, v in ours["raster:bands"][0].items() if k != "spatial_resolution"}
        rb_ref = {k: v for k, v in ref["raster:bands"][0].items() if k != "spatial_resolution"}
        assert rb_ours == rb_ref
    assert "nodata" not in coarse["assets"]["LST_Day_1km"]["raster:bands"][0]


def test_serve_directory_range_requests(tmp_path):
    payload = bytes(range(256)) * 40  # 10240 bytes
    (tmp_path / "blob.bin").write_bytes(payload)

    def get(url, rng=None, method="GET"):
        req = urllib.request.Request(url, method=method)
        if rng:
            req.add_header("Range", rng)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    with serve_directory(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        status, headers, body = get(url + "blob.bin")
        assert status == 200 and body == payload
        assert headers["Accept-Ranges"] == "bytes" and headers["Content-Length"] == "10240"
        status, headers, body = get(url + "blob.bin", "bytes=100-199")
        assert status == 206 and body == payload[100:200]
        assert headers["Content-Range"] == "bytes 100-199/10240"
        assert headers["Content-Length"] == "100"
        status, headers, body = get(url + "blob.bin", "bytes=10000-")
        assert status == 206 and body == payload[10000:]
        status, headers, body = get(url + "blob.bin", "bytes=-16")
        assert status == 206 and body == payload[-16:]
        assert headers["Content-Range"] == "bytes 10224-10239/10240"
        status, headers, body = get(url + "blob.bin", "bytes=0-99999")  # clamped to the size
        assert status == 206 and body == payload
        status, headers, _ = get(url + "blob.bin", "bytes=20000-")
        assert status == 416 and headers["Content-Range"] == "bytes */10240"
        status, headers, body = get(url + "blob.bin", "bytes=0-1", method="HEAD")
        assert status == 206 and body == b"" and headers["Content-Length"] == "2"
        status, _, _ = get(url + "missing.bin")
        assert status == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "blob.bin", timeout=2)
    with (
        pytest.raises(InvalidParameterError, match="needs an existing folder"),
        serve_directory(tmp_path / "nope"),
    ):
        pass


def test_load_fine_over_http_onto_fine_geobox(served, lst_scene):
    url, _ = served
    scene, _ = lst_scene
    items = [i for i in _items_over_http(url) if i.collection_id == "landsat-c2-l2"]
    with raise_if_dask_computes():
        ds = load_cube(
            items,
            bands=["lwir11", "qa_pixel"],
            geobox=scene.odc.geobox,
            chunks={"x": 48, "y": 40},
        )
    assert dask.is_dask_collection(ds.lwir11.data)
    assert ds.lwir11.data.chunksize == (1, 40, 48)
    assert ds.lwir11.dims == ("time", "y", "x") and ds.lwir11.dtype == np.float32
    assert ds.lwir11.attrs["units"] == "K"
    assert "spatial_ref" in ds.coords and ds.odc.geobox == scene.odc.geobox
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    ref = scene.fine.sel(time=scene.observed_fine)
    np.testing.assert_array_equal(ds.time.values, ref.time.values)
    ds = ds.compute()
    got, want = ds.lwir11.values, ref.values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any()  # the scene has cloud gaps
    assert np.nanmax(np.abs(got - want)) <= LST_STEP / 2 + 1e-4
    qa = ds.qa_pixel.values
    np.testing.assert_array_equal(qa[np.isnan(want)], 22280)  # high-confidence cloud, bit 3
    np.testing.assert_array_equal(qa[~np.isnan(want)], 21824)  # clear
    assert (qa.astype(np.uint16)[np.isnan(want)] & (1 << 3)).all()


def test_load_coarse_onto_fine_grid(served, lst_scene):
    url, _ = served
    scene, _ = lst_scene
    items = [i for i in _items_over_http(url) if i.collection_id == "modis-11A1-061"]
    near = load_cube(
        items, bands="LST_Day_1km", geobox=scene.odc.geobox, resampling="nearest", chunks={}
    ).compute()
    # MODIS items are stamped at 00:00 of the day; the scene at 10:00
    np.testing.assert_array_equal(
        near.time.values.astype("datetime64[D]"), scene.time.values.astype("datetime64[D]")
    )
    got, want = near.LST_Day_1km.values, scene.coarse.values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # fill 0 -> NaN (table)
    assert np.isnan(want).any()
    assert np.nanmax(np.abs(got - want)) <= MODIS_STEP / 2 + 1e-3
    assert near.LST_Day_1km.attrs["units"] == "K"
    # bilinear: close to the scene's own bilinear upsampling where both have data
    bil_scene = synthetic_scene((96, 80), coarse_resampling="bilinear", **KW)
    bil = load_cube(items, bands="LST_Day_1km", geobox=scene.odc.geobox).LST_Day_1km.values
    want = bil_scene.coarse.values
    both = np.isfinite(bil) & np.isfinite(want)
    assert both.mean() > 0.5
    assert np.abs(bil - want)[both].max() < 0.05
    assert np.isfinite(bil[np.isfinite(want)]).all()  # GDAL skips the nodata neighbours


def test_scale_offset_and_band_info(served):
    _, cat = served
    raw = odc.stac.load(cat.fine_items, bands=["lwir11"], groupby="solar_day").lwir11.values
    phys = load_cube(cat.fine_items, bands=["lwir11"]).lwir11.values
    assert raw.dtype == np.uint16
    valid = raw != 0
    np.testing.assert_allclose(phys[valid], raw[valid] * 0.00341802 + 149.0, rtol=1e-6)
    assert np.isnan(phys[~valid]).all()
    info = band_info(cat.fine_items[0], "lwir11")
    assert (info.scale, info.offset, info.nodata, info.unit) == (0.00341802, 149.0, 0, "K")
    qa = band_info(cat.fine_items[0], "qa_pixel")
    assert qa.is_qa and qa.nodata == 1 and qa.scale == 1.0
    modis = band_info(cat.coarse_items[0], "LST_Day_1km")
    assert (modis.scale, modis.offset, modis.nodata) == (0.02, 0.0, 0)  # nodata from the table
    assert not modis.is_qa and band_info(cat.coarse_items[0], "QC_Day").is_qa


def test_reflectance_catalog_roundtrip(tmp_path):
    scene, coarse = synthetic_scene(
        (64, 64), kind="reflectance", bands=("red", "nir"), coarse_native=True, **KW
    )
    cat = write_stac_catalog((scene, coarse), tmp_path)
    assert cat.fine_bands == {"fine_red": "red", "fine_nir": "nir08"}
    assert cat.coarse_collection == "modis-43A4-061"
    assert cat.coarse_bands == {
        "coarse_red": "Nadir_Reflectance_Band1",
        "coarse_nir": "Nadir_Reflectance_Band2",
    }
    fine = load_cube(cat.fine_items, bands=["red", "nir08"], geobox=scene.odc.geobox)
    for var, band in (("fine_red", "red"), ("fine_nir", "nir08")):
        want = scene[var].sel(time=scene.observed_fine_red).values
        got = fine[band].values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.nanmax(np.abs(got - want)) <= SR_STEP / 2 + 1e-6
        assert fine[band].attrs["units"] == "1"
    nbar = load_cube(
        cat.coarse_items,
        bands=["Nadir_Reflectance_Band2"],
        resampling="nearest",
        geobox=scene.odc.geobox,
    )
    got, want = nbar.Nadir_Reflectance_Band2.values, scene.coarse_nir.values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # fill 32767 via the table
    assert np.nanmax(np.abs(got - want)) <= 0.5e-4 + 1e-6
    # an eo:bands common_name works as an alias, as in odc-stac
    alias = load_cube(
        cat.coarse_items, bands="nir08", resampling="nearest", geobox=scene.odc.geobox
    )
    np.testing.assert_array_equal(alias.nir08.values, got)


def test_geographic_catalog(tmp_path):
    scene = synthetic_scene((40, 48), crs="EPSG:4326", **KW)
    cat = write_stac_catalog(scene, tmp_path)  # coarse grid derived from the scene
    assert cat.fine_items[0].properties["proj:epsg"] == 4326
    ds = load_cube(cat.fine_items, bands="lwir11", geobox=scene.odc.geobox, chunks={})
    assert ds.lwir11.dims == ("time", "latitude", "longitude")
    want = scene.fine.sel(time=scene.observed_fine).values
    assert np.nanmax(np.abs(ds.lwir11.values - want)) <= LST_STEP / 2 + 1e-4
    coarse = load_cube(
        cat.coarse_items, bands="LST_Day_1km", geobox=scene.odc.geobox, resampling="nearest"
    )
    assert np.nanmax(np.abs(coarse.LST_Day_1km.values - scene.coarse.values)) < 0.011


def test_derived_coarse_grid_matches_native(tmp_path, lst_scene):
    scene, native = lst_scene
    a = write_stac_catalog(scene, tmp_path / "a")
    b = write_stac_catalog(scene, tmp_path / "b", coarse=native)
    for ia, ib in zip(a.coarse_items, b.coarse_items, strict=True):
        assert ia.properties["proj:transform"] == ib.properties["proj:transform"]
        assert ia.properties["proj:shape"] == ib.properties["proj:shape"] == [6, 5]
    la = odc.stac.load(a.coarse_items, bands=["LST_Day_1km"]).LST_Day_1km.values
    lb = odc.stac.load(b.coarse_items, bands=["LST_Day_1km"]).LST_Day_1km.values
    np.testing.assert_array_equal(la, lb)
    bil = synthetic_scene((32, 32), coarse_resampling="bilinear", **KW)
    with pytest.raises(InvalidParameterError, match="coarse_native=True"):
        write_stac_catalog(bil, tmp_path / "c")


def test_writer_errors(tmp_path, lst_scene):
    scene, _ = lst_scene
    with pytest.raises(InvalidParameterError, match="fine_collection='sentinel-2-l2a'"):
        write_stac_catalog(scene, tmp_path, fine_collection="sentinel-2-l2a")
    with pytest.raises(InvalidParameterError, match="scene kind is 'lst'"):
        write_stac_catalog(scene, tmp_path, coarse_collection="modis-43A4-061")


def test_load_cube_errors(served):
    _, cat = served
    items = list(cat.fine_items)
    with pytest.raises(InvalidParameterError, match="No STAC items to load"):
        load_cube([], bands="lwir11")
    with pytest.raises(VariableNotFoundError, match=r"'red'.*'lwir11', 'qa_pixel'"):
        load_cube(items, bands=["lwir11", "red"])
    with pytest.raises(VariableNotFoundError, match="assets are"):
        band_info(items[0], "B04")
    stripped = []
    for item in items:
        d = copy.deepcopy(item.to_dict())  # to_dict shares the properties dict
        for key in ("proj:epsg", "proj:code", "proj:shape", "proj:transform"):
            d["properties"].pop(key, None)
        stripped.append(pystac.Item.from_dict(d))
    with pytest.raises(InvalidParameterError, match="no projection metadata for asset 'lwir11'"):
        load_cube(stripped, bands="lwir11")
    with pytest.raises(InvalidParameterError, match="either geobox= or crs="):
        load_cube(items, bands="lwir11", geobox=object(), crs="EPSG:4326")
    with pytest.raises(InvalidParameterError, match="not a floating dtype"):
        load_cube(items, bands="lwir11", dtype="uint16")
    d = copy.deepcopy(items[0].to_dict())
    d["assets"]["lwir11"]["raster:bands"][0]["scale"] = 0.01
    changed = pystac.Item.from_dict(d)
    # items declaring another scale are converted with their own (per-item plans, one grid)
    mixed = load_cube([changed, *items[1:]], bands="lwir11").lwir11.values
    raw = odc.stac.load(items, bands=["lwir11"], groupby="solar_day").lwir11.values
    valid = raw != 0
    np.testing.assert_allclose(mixed[0][valid[0]], raw[0][valid[0]] * 0.01 + 149.0, rtol=1e-6)
    np.testing.assert_allclose(
        mixed[1:][valid[1:]], raw[1:][valid[1:]] * 0.00341802 + 149.0, rtol=1e-6
    )


def test_load_cube_on_recorded_real_items(shared_data):
    """Lazy load of the real Planetary Computer item JSON: metadata only, no pixel read."""
    folder = os.path.join(shared_data, "stac_items")
    landsat = pystac.Item.from_file(os.path.join(folder, "landsat-c2-l2_example.json"))
    modis = pystac.Item.from_file(os.path.join(folder, "modis-11A1-061_example.json"))
    with raise_if_dask_computes():
        ls = load_cube([landsat], bands=["lwir11", "qa_pixel"], chunks={})
        md = load_cube([modis], bands=["LST_Day_1km", "QC_Day"], chunks={})
    assert dict(ls.sizes) == {"time": 1, "y": 7971, "x": 7861}
    assert ls.odc.geobox.crs.epsg == 32610
    assert ls.lwir11.dtype == np.float32 and ls.lwir11.attrs["units"] == "K"
    assert str(ls.time.values[0]).startswith("2020-12-04T19:02:11")
    # MODIS: sinusoidal proj:wkt2 without EPSG, datetime null -> start_datetime
    assert dict(md.sizes) == {"time": 1, "y": 1200, "x": 1200}
    assert md.odc.geobox.crs.epsg is None
    assert md.time.values[0] == np.datetime64("2022-02-10T00:00:00", "ns")
    assert md.LST_Day_1km.attrs["units"] == "K"
    info = band_info(modis, "LST_Day_1km")
    assert (info.scale, info.nodata) == (0.02, 0)  # fill 0 from the per-collection table
