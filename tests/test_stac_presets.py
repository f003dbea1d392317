"""Sensor presets: parsing of the real item JSON, and every preset on COGs of known values.

The items are written by ``xfusion.testing.write_stac_items`` from the real Planetary Computer
item JSON in ``../shared/data/stac_items`` (Landsat C2 L2, MODIS 11A1, Sentinel-2 L2A in both
namings) or from built-in templates shaped like the stactools/Planetary Computer items
(MODIS 43A4, 09A1, 09Q1, 13Q1, Sentinel-1 RTC). Every stored value is chosen, so the physical
values, masks and clear fractions are known exactly. Local files: no server, no network.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import numpy as np
import pystac
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

import xfusion
from xfusion.errors import InvalidParameterError, SigningError, VariableNotFoundError
from xfusion.stac import band_info, load_cube
from xfusion.stac.presets import (
    BandSpec,
    Preset,
    PropertyRule,
    QAFlag,
    get_preset,
    list_presets,
    register_preset,
)
from xfusion.testing import raise_if_dask_computes
from xfusion.testing._stac import MODIS_SINUSOIDAL_WKT, write_stac_items

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Support for class-based `config`:DeprecationWarning"),
]

F32 = np.float32
UTM = GeoBox((8, 10), Affine(30, 0, 499995, 0, -30, 5000025), "EPSG:32633")
SIN_RES = 926.6254331383333


@pytest.fixture(autouse=True)
def _no_signing_network(monkeypatch):
    """Any attempt to fetch a Planetary Computer token fails at once (never the network)."""
    from planetary_computer import sas

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to fetch a Planetary Computer SAS token")

    monkeypatch.setattr(sas, "get_token", refuse)


def real(shared_data, name):
    with open(os.path.join(shared_data, "stac_items", f"{name}_example.json")) as fh:
        return json.load(fh)


def real_item(shared_data, name, **props):
    """The real item (self href at its file, so relative hrefs resolve), properties changed."""
    item = pystac.Item.from_file(os.path.join(shared_data, "stac_items", f"{name}_example.json"))
    item.properties.update(props)
    return item


def sinusoidal(shape=(6, 5), res=SIN_RES):
    return GeoBox(shape, Affine(res, 0, 1111950.519767, 0, -res, 6671703.118599 + 40 * res),
                  MODIS_SINUSOIDAL_WKT)


# --------------------------------------------------------------------------------------------
# parsing the real item JSON (metadata only)


def test_registered_presets():
    names = list_presets()
    for name in ("landsat-c2-l2", "modis-11A1-061", "modis-43A4-061", "modis-09A1-061",
                 "modis-09Q1-061", "modis-13Q1-061", "sentinel-2-l2a", "sentinel-1-rtc"):
        assert name in names
        p = get_preset(name)
        assert p.collections == (name,) and p.default_bands
        assert set(p.default_mask) <= set(p.flags)
    assert get_preset("sentinel-1-rtc").requires_account
    assert get_preset("modis-11A1-061").platforms == ("terra", "aqua")


def test_landsat_real_item_metadata(shared_data):
    item = real_item(shared_data, "landsat-c2-l2")
    for band in ("blue", "green", "red", "nir08", "swir16", "swir22", "coastal"):
        info = band_info(item, band)
        assert (info.asset, info.scale, info.offset, info.nodata) == (band, 2.75e-05, -0.2, 0)
        assert info.unit == "1" and info.data_type == "uint16" and not info.is_qa
    lst = band_info(item, "lst")  # preset band name -> lwir11 on Landsat 8
    assert (lst.asset, lst.scale, lst.offset, lst.nodata, lst.unit) == (
        "lwir11", 0.00341802, 149.0, 0, "K"
    )
    assert band_info(item, "nir").asset == "nir08"
    qa = band_info(item, "qa_pixel")
    assert qa.is_qa and qa.nodata == 1 and qa.scale == 1.0
    st_qa = band_info(item, "qa")  # ST_QA is data (uncertainty in K), not a QA band
    assert not st_qa.is_qa and (st_qa.scale, st_qa.nodata, st_qa.unit) == (0.01, -9999, "K")
    with pytest.raises(VariableNotFoundError, match=r"'vv'.*assets are.*'lwir11'"):
        band_info(item, "vv")


def test_modis_lst_real_item_metadata_and_sinusoidal_grid(shared_data):
    d = real(shared_data, "modis-11A1-061")
    assert d["properties"]["proj:epsg"] is None and "Sinusoidal" in d["properties"]["proj:wkt2"]
    item = real_item(shared_data, "modis-11A1-061")
    lst = band_info(item, "lst")
    # the item declares scale 0.02 and no nodata; the preset adds fill 0 and the valid range
    assert (lst.asset, lst.scale, lst.nodata, lst.unit) == ("LST_Day_1km", 0.02, 0, "K")
    assert lst.valid_range == (7500.0, 65535.0)
    assert band_info(item, "lst_night").asset == "LST_Night_1km"
    assert band_info(item, "QC_Day").is_qa
    emis = band_info(item, "Emis_31")
    assert (emis.scale, emis.offset) == (0.002, 0.49)  # offset from the MOD11 user guide
    with raise_if_dask_computes():
        ds = load_cube([item], preset="modis-11A1-061", bands=["lst", "qc_day"], chunks={},
                       sign=False)
    gbox = ds.odc.geobox
    assert gbox.crs.epsg is None and "Sinusoidal" in gbox.crs.to_wkt()
    assert tuple(gbox.shape) == (1200, 1200)
    assert gbox.affine.a == pytest.approx(926.6254331383333)
    assert ds.time.values[0] == np.datetime64("2022-02-10T00:00:00", "ns")
    assert ds.lst.dtype == np.float32 and ds.lst.attrs["units"] == "K"
    assert ds.attrs["masked_flags"] == "cloud fill"
    assert ds.clear_fraction.dims == ("time",)


def test_sentinel2_real_pc_item_metadata(shared_data):
    d = real(shared_data, "sentinel-2-l2a_planetary-computer")
    assert all("raster:bands" not in a for a in d["assets"].values())  # PC S2: no raster ext
    item = real_item(shared_data, "sentinel-2-l2a_planetary-computer")
    red = band_info(item, "red")
    assert (red.asset, red.scale, red.offset, red.nodata, red.data_type) == (
        "B04", 0.0001, 0.0, 0, "uint16"
    )  # all from the preset; baseline 02.12 -> no offset
    assert band_info(item, "nir08").asset == "B8A" and band_info(item, "nir").asset == "B08"
    assert band_info(item, "scl").is_qa and band_info(item, "SCL").data_type == "uint8"
    name = "sentinel-2-l2a_planetary-computer"
    item4 = real_item(shared_data, name, **{"s2:processing_baseline": "04.00"})
    assert band_info(item4, "red").offset == -0.1
    item5 = real_item(shared_data, name, **{"s2:processing_baseline": "05.10"})
    assert band_info(item5, "B12").offset == -0.1
    # lazy load of the real item (blob hrefs, so no signing: sign=False): asset-level grids
    with raise_if_dask_computes():
        ds = load_cube([item], preset="sentinel-2-l2a", bands=["red", "swir16", "scl"],
                       chunks={}, sign=False)
    assert tuple(ds.odc.geobox.shape) == (10980, 10980) and ds.odc.geobox.crs.epsg == 32606
    assert ds.red.dtype == np.float32 and ds.red.attrs["units"] == "1"
    assert ds.attrs["masked_flags"] == "fill saturated shadow cloud cirrus snow"


def test_sentinel2_stactools_naming_metadata(shared_data):
    d = real(shared_data, "sentinel-2-l2a_stactools-naming")
    d["collection"] = "sentinel-2-l2a"
    item = pystac.Item.from_dict(d)
    red = band_info(item, "red")
    assert (red.asset, red.scale, red.offset, red.nodata) == ("red", 0.0001, 0.0, 0)
    assert band_info(item, "scl").asset == "scl" and band_info(item, "scl").is_qa
    assert band_info(item, "B04").asset == "red"  # PC band names resolve on this naming too


# --------------------------------------------------------------------------------------------
# every preset on written COGs


def test_landsat_preset_lwir11_and_lwir_qa_mask(shared_data, tmp_path):
    tpl8 = real(shared_data, "landsat-c2-l2")
    tpl5 = copy.deepcopy(tpl8)
    tpl5["assets"]["lwir"] = tpl5["assets"].pop("lwir11")  # Landsat 4-7: ST_B6 is `lwir`
    tpl5["assets"]["lwir"]["eo:bands"][0]["name"] = "TM_B6"
    rng = np.random.default_rng(1)
    dn8 = rng.integers(40000, 50000, (2, *UTM.shape)).astype("uint16")
    dn5 = rng.integers(40000, 50000, UTM.shape).astype("uint16")
    qa = np.full((2, *UTM.shape), 21824, "uint16")  # clear, low confidences
    qa[0, 0, :] |= 1 << 3  # cloud
    qa[0, 1, :3] |= 1 << 4  # shadow
    qa[1, 2, :2] |= 1 << 5  # snow
    qa[1, 3, 0] = 1  # fill
    qa[1, 4, :] |= 1 << 7  # water: not masked by default
    qa[1, 5, 5] |= 1 << 1  # dilated cloud
    dn8[1, 6, 6] = 0  # nodata in the data band
    l8 = write_stac_items(tmp_path, collection="landsat-c2-l2", template=tpl8,
                          assets={"lwir11": dn8, "qa_pixel": qa}, geobox=UTM,
                          times=["2021-06-01T10:00", "2021-06-17T10:00"])
    l5 = write_stac_items(tmp_path, collection="landsat-c2-l2", template=tpl5,
                          assets={"lwir": dn5, "qa_pixel": np.full(UTM.shape, 21824, "uint16")},
                          geobox=UTM, times=["2021-06-09T10:00"],
                          properties={"platform": "landsat-5"})
    assert "lwir11" not in l5[0].assets and "lwir" in l5[0].assets
    ds = load_cube([*l8, *l5], preset="landsat-c2-l2", bands="lst", geobox=UTM)
    assert list(ds.data_vars) == ["lst"] and ds.lst.attrs["units"] == "K"
    want = np.stack([dn8[0], dn5, dn8[1]]).astype(F32) * F32(0.00341802) + F32(149.0)
    masked = np.zeros(want.shape, bool)
    masked[0, 0, :] = masked[0, 1, :3] = True
    masked[2, 2, :2] = masked[2, 3, 0] = masked[2, 5, 5] = masked[2, 6, 6] = True
    want[masked] = np.nan
    np.testing.assert_array_equal(ds.lst.values, want)
    np.testing.assert_allclose(ds.clear_fraction.values, 1 - masked.mean(axis=(1, 2)), rtol=1e-6)
    assert ds.lst.attrs["masked_flags"] == "cirrus cloud fill shadow snow"
    # mask=None keeps the cloudy pixels (only nodata is NaN); water can be masked on demand
    raw = load_cube([*l8, *l5], preset="landsat-c2-l2", bands="lst", geobox=UTM, mask=None)
    assert np.isnan(raw.lst.values).sum() == 1
    water = load_cube(l8, preset="landsat-c2-l2", bands=["lst"], geobox=UTM, mask=["water"])
    assert np.isnan(water.lst.values[1, 4]).all() and not np.isnan(water.lst.values[0]).any()


def test_modis_lst_preset_qc_bits_platforms(shared_data, tmp_path):
    gb = sinusoidal()
    tpl = real(shared_data, "modis-11A1-061")
    dn = np.full((2, *gb.shape), 14500, "uint16")  # 290 K
    dn[0, 0, 0] = 0  # fill
    dn[0, 0, 1] = 7000  # below the valid range
    qc = np.zeros((2, *gb.shape), "uint8")
    qc[0, 1, :] = 0b10  # not produced, cloud
    qc[0, 2, 0] = 0b11  # not produced, other
    qc[1, 3, :] = 0b01  # other quality: kept by default
    qc[1, 4, 0] = 0b11000000  # LST error > 3 K
    terra = write_stac_items(tmp_path, collection="modis-11A1-061", template=tpl,
                             assets={"LST_Day_1km": dn, "QC_Day": qc}, geobox=gb,
                             times=["2022-02-10", "2022-02-11"])
    assert terra[0].properties["datetime"] is None
    assert terra[0].properties["end_datetime"] == "2022-02-10T23:59:59Z"
    ds = load_cube(terra, preset="modis-11A1-061", geobox=gb)  # default band "lst"
    v = ds.lst.values
    assert ds.odc.geobox.crs.epsg is None
    exp = np.full(v.shape, F32(14500) * F32(0.02))
    exp[0, 0, :2] = np.nan
    exp[0, 1, :] = exp[0, 2, 0] = np.nan
    np.testing.assert_array_equal(v, exp)
    strict = load_cube(terra, preset="modis-11A1-061", geobox=gb,
                       mask=["cloud", "fill", "low_quality", "error_gt_2k"])
    assert np.isnan(strict.lst.values[1, 3]).all() and np.isnan(strict.lst.values[1, 4, 0])
    aqua = write_stac_items(tmp_path / "aqua", collection="modis-11A1-061", template=tpl,
                            assets={"LST_Day_1km": dn[:1], "QC_Day": qc[:1]}, geobox=gb,
                            times=["2022-02-12"], properties={"platform": "aqua"})
    with pytest.raises(InvalidParameterError, match=r"mix platforms \['aqua', 'terra'\]"):
        load_cube([*terra, *aqua], preset="modis-11A1-061", geobox=gb)
    only = load_cube([*terra, *aqua], preset="modis-11A1-061", geobox=gb, platform="aqua")
    assert only.sizes["time"] == 1 and str(only.time.values[0])[:10] == "2022-02-12"


def test_modis_nbar_preset_per_band_quality(tmp_path):
    gb = sinusoidal(res=SIN_RES / 2)
    b1 = np.full((1, *gb.shape), 1200, "int16")
    b2 = np.full((1, *gb.shape), 3000, "int16")
    b1[0, 0, 0] = 32767  # fill
    q1 = np.zeros((1, *gb.shape), "uint8")
    q2 = np.zeros((1, *gb.shape), "uint8")
    q1[0, 1, :] = 255  # band-1 QA fill: masks band 1 only
    q2[0, 2, :] = 1  # magnitude inversion: kept by default
    items = write_stac_items(tmp_path, collection="modis-43A4-061", geobox=gb, times=["2021-07-01"],
                             assets={"Nadir_Reflectance_Band1": b1, "Nadir_Reflectance_Band2": b2,
                                     "BRDF_Albedo_Band_Mandatory_Quality_Band1": q1,
                                     "BRDF_Albedo_Band_Mandatory_Quality_Band2": q2})
    ds = load_cube(items, preset="modis-43A4-061", geobox=gb)  # default red, nir
    assert list(ds.data_vars) == ["red", "nir"] and ds.red.attrs["units"] == "1"
    red, nir = ds.red.values[0], ds.nir.values[0]
    assert np.isnan(red[0, 0]) and np.isnan(red[1]).all() and not np.isnan(red[2]).any()
    assert not np.isnan(nir).any() and nir[0, 0] == F32(3000) * F32(1e-4)
    assert red[3, 3] == F32(1200) * F32(1e-4)
    both = load_cube(items, preset="modis-43A4-061", geobox=gb, mask=["fill", "low_quality"])
    assert np.isnan(both.nir.values[0, 2]).all() and not np.isnan(both.red.values[0, 2]).any()


@pytest.mark.parametrize("collection,res,qc", [("modis-09A1-061", "500m", "uint32"),
                                               ("modis-09Q1-061", "250m", "uint16")])
def test_modis_surface_reflectance_presets(tmp_path, collection, res, qc):
    gb = sinusoidal(res=SIN_RES / (2 if res == "500m" else 4))
    b1 = np.full((1, *gb.shape), 500, "int16")
    b1[0, 0, 0] = -28672  # fill
    b1[0, 0, 1] = 20000  # out of the valid range (-100..16000)
    state = np.full((1, *gb.shape), 0b1000, "uint16")  # clear land
    state[0, 1, 0] |= 0b01  # cloudy
    state[0, 1, 1] |= 0b10  # mixed
    state[0, 2, 0] |= 1 << 2  # shadow
    state[0, 3, 0] |= 1 << 15  # snow
    state[0, 4, 0] |= 0b11 << 8  # high cirrus
    state[0, 4, 1] |= 0b01 << 8  # small cirrus: kept
    quality = np.zeros((1, *gb.shape), qc)
    quality[0, 5, 0] = 0b10  # MODLAND: not produced (not in the default mask)
    items = write_stac_items(
        tmp_path, collection=collection, geobox=gb, times=["2022-02-02"],
        assets={"sur_refl_b01": b1, "sur_refl_b02": b1 + 1000,
                f"sur_refl_state_{res}": state, f"sur_refl_qc_{res}": quality},
    )
    assert items[0].properties["end_datetime"] == "2022-02-09T23:59:59Z"  # 8-day composite
    ds = load_cube(items, preset=collection, geobox=gb)
    red = ds.red.values[0]
    nan = np.zeros(gb.shape, bool)
    nan[0, :2] = nan[1, :2] = nan[2, 0] = nan[3, 0] = nan[4, 0] = True
    np.testing.assert_array_equal(np.isnan(red), nan)
    assert red[5, 0] == F32(500) * F32(1e-4) and ds.nir.values[0, 5, 0] == F32(1500) * F32(1e-4)
    strict = load_cube(items, preset=collection, geobox=gb, mask=["fill"], bands="nir")
    # b02 = b01 + 1000 is out of range where b01 is fill or 20000; "fill" is the QC flag
    assert np.isnan(strict.nir.values[0, 5, 0]) and np.isnan(strict.nir.values[0, 0, :2]).all()
    assert np.isnan(strict.nir.values).sum() == 3


def test_modis_vegetation_index_preset(tmp_path):
    gb = sinusoidal(res=SIN_RES / 4)
    ndvi = np.full((1, *gb.shape), 6500, "int16")
    ndvi[0, 0, 0] = -3000  # fill
    rel = np.zeros((1, *gb.shape), "int8")
    rel[0, 1, 0], rel[0, 1, 1], rel[0, 1, 2], rel[0, 1, 3] = -1, 1, 2, 3  # fill marg. snow cloud
    viq = np.zeros((1, *gb.shape), "uint16")
    viq[0, 2, 0] = 1 << 15  # possible shadow
    items = write_stac_items(tmp_path, collection="modis-13Q1-061", geobox=gb,
                             times=["2022-01-17"], assets={
                                 "250m_16_days_NDVI": ndvi,
                                 "250m_16_days_pixel_reliability": rel,
                                 "250m_16_days_VI_Quality": viq})
    assert items[0].properties["end_datetime"] == "2022-02-01T23:59:59Z"  # 16 days
    ds = load_cube(items, preset="modis-13Q1-061", geobox=gb)
    v = ds.ndvi.values[0]
    nan = np.zeros(gb.shape, bool)
    nan[0, 0] = nan[1, 0] = nan[1, 2] = nan[1, 3] = nan[2, 0] = True  # marginal (1,1) kept
    np.testing.assert_array_equal(np.isnan(v), nan)
    assert v[1, 1] == F32(6500) * F32(1e-4) and ds.ndvi.attrs["units"] == "1"


@pytest.mark.parametrize("naming", ["planetary-computer", "stactools-naming"])
def test_sentinel2_preset_baseline_offset_and_scl(shared_data, tmp_path, naming):
    tpl = real(shared_data, f"sentinel-2-l2a_{naming}")
    red_key, scl_key = ("B04", "SCL") if naming == "planetary-computer" else ("red", "scl")
    g10 = GeoBox((20, 20), Affine(10, 0, 399960, 0, -10, 5000040), "EPSG:32633")
    g20 = GeoBox((10, 10), Affine(20, 0, 399960, 0, -20, 5000040), "EPSG:32633")
    rng = np.random.default_rng(2)
    dn = rng.integers(1100, 5000, (2, 20, 20)).astype("uint16")
    dn[1, 0, 0] = 0  # nodata
    scl = np.full((2, 10, 10), 4, "uint8")  # vegetation
    scl[0, 0, :] = 9  # cloud high probability
    scl[0, 1, 0] = 3  # cloud shadow
    scl[1, 2, 0] = 11  # snow
    scl[1, 3, 0] = 10  # cirrus
    scl[1, 4, 0] = 6  # water: kept
    items = write_stac_items(
        tmp_path, collection="sentinel-2-l2a", template=tpl, assets={red_key: dn, scl_key: scl},
        geobox={red_key: g10, scl_key: g20}, times=["2021-06-01T10:00", "2022-06-01T10:00"],
        properties=[{"s2:processing_baseline": "03.01"}, {"s2:processing_baseline": "04.00"}],
    )
    ds = load_cube(items, preset="sentinel-2-l2a", bands="red", geobox=g10, sign=False)
    v = ds.red.values
    want = dn.astype(F32) * F32(1e-4)
    want[1] = want[1] + F32(-0.1)  # BOA_ADD_OFFSET = -1000 DN from baseline 04.00
    nan = np.zeros(v.shape, bool)
    nan[0, 0:2, :] = True  # 20 m cloud row -> two 10 m rows
    nan[0, 2:4, 0:2] = True  # 20 m shadow pixel
    nan[1, 4:6, 0:2] = nan[1, 6:8, 0:2] = True  # snow, cirrus
    nan[1, 0, 0] = True  # nodata
    want[nan] = np.nan
    np.testing.assert_array_equal(v, want)
    np.testing.assert_allclose(ds.clear_fraction.values, 1 - nan.mean(axis=(1, 2)), rtol=1e-6)


def test_sentinel1_rtc_linear_db_and_key(monkeypatch, tmp_path):
    g = GeoBox((6, 7), Affine(10, 0, 500000, 0, -10, 5000000), "EPSG:32633")
    vv = np.full((1, *g.shape), 0.1, "float32")
    vv[0, 0, 0] = -32768  # nodata
    vv[0, 0, 1] = 0.0  # no backscatter: linear 0, dB undefined
    vh = np.full((1, *g.shape), 0.01, "float32")
    items = write_stac_items(tmp_path, collection="sentinel-1-rtc", geobox=g,
                             times=["2021-06-01T05:30"], assets={"vv": vv, "vh": vh})
    ds = load_cube(items, preset="sentinel-1-rtc", bands=["vv", "vh", "vv_db", "vh_db"],
                   geobox=g, sign=False)
    assert ds.vv.attrs["units"] == "1" and ds.vv_db.attrs["units"] == "dB"
    assert np.isnan(ds.vv.values[0, 0, 0]) and ds.vv.values[0, 0, 1] == 0
    np.testing.assert_allclose(ds.vv_db.values[0, 1:], -10.0, rtol=1e-6)
    np.testing.assert_allclose(ds.vh_db.values, -20.0, rtol=1e-6)
    assert np.isnan(ds.vv_db.values[0, 0, :2]).all()
    # blob hrefs need a token, and this collection needs a key: a clear error, no network
    blob = [it.clone() for it in items]
    for it in blob:
        for a in it.assets.values():
            a.href = "https://sentinel1euwestrtc.blob.core.windows.net/sentinel1-grd-rtc/x.tif"
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    from planetary_computer.settings import Settings

    monkeypatch.setattr(Settings.get(), "subscription_key", None)
    with pytest.raises(SigningError, match=r"'sentinel-1-rtc' requires an account.*"
                                           r"PC_SDK_SUBSCRIPTION_KEY"):
        load_cube(blob, preset="sentinel-1-rtc", geobox=g)


# --------------------------------------------------------------------------------------------
# user presets


def test_user_preset_from_dict_and_replace(tmp_path):
    doc = {
        "name": "my-lst-test",
        "collections": ["my-lst"],
        "default_bands": ["lst"],
        "bands": {"lst": {"assets": ["LST"], "scale": 0.5, "offset": 100.0, "nodata": 0,
                          "data_type": "uint8", "unit": "K",
                          "rules": [{"property": "version", "op": ">=", "value": "2.0",
                                     "offset": 110.0}]},
                  "qc": {"assets": ["QC"], "data_type": "uint8", "qa": True}},
        "qa": [{"name": "cloud", "asset": "QC", "bits": [0, 1], "values": [1]}],
        "default_mask": ["cloud"],
    }
    p = register_preset(Preset.from_dict(doc), overwrite=True)
    assert get_preset("my-lst-test") is p and p.flags == ("cloud",)
    g = GeoBox((3, 4), Affine(30, 0, 500000, 0, -30, 5000000), "EPSG:32633")
    dn = np.full((2, 3, 4), 20, "uint8")
    qc = np.zeros((2, 3, 4), "uint8")
    qc[0, 0, 0] = 1
    items = write_stac_items(tmp_path, collection="my-lst", template={
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "properties": {"datetime": "", "version": "1.0"}, "assets": {}},
        assets={"LST": dn, "QC": qc}, geobox=g, times=["2021-01-01", "2021-01-02"],
        properties=[{"version": "1.0"}, {"version": "2.1"}])
    ds = load_cube(items, preset="my-lst-test", geobox=g)
    assert np.isnan(ds.lst.values[0, 0, 0])
    assert ds.lst.values[0, 1, 1] == 110.0 and ds.lst.values[1, 0, 0] == 120.0
    # a changed built-in preset, registered under a new name
    strict = dataclasses.replace(get_preset("landsat-c2-l2"), name="landsat-strict-test",
                                 default_mask=("fill", "cloud", "cloud_medium"))
    register_preset(strict, overwrite=True)
    assert get_preset("landsat-strict-test").default_mask[-1] == "cloud_medium"
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_preset(strict)


def test_preset_validation_errors():
    with pytest.raises(InvalidParameterError, match=r"Unknown preset 'landsat'.*Did you mean"):
        get_preset("landsat")
    with pytest.raises(InvalidParameterError, match="default_mask"):
        Preset(name="x", collections=("x",), bands={"a": BandSpec(assets=("a",))},
               default_bands=("a",), default_mask=("cloud",))
    with pytest.raises(InvalidParameterError, match="op="):
        PropertyRule(property="p", op="~", value=1)
    with pytest.raises(InvalidParameterError, match="non-empty tuple"):
        BandSpec(assets="lwir11")
    with pytest.raises(InvalidParameterError, match="bits="):
        QAFlag(name="x", asset="q", values=(1,), bits=(0, 0))
    with pytest.raises(InvalidParameterError, match=r"Unknown preset keys \['colour'\]"):
        Preset.from_dict({"name": "x", "colour": 1})
    assert xfusion.stac.presets.PropertyRule(
        property="b", op=">=", value="04.00").matches({"b": "10.01"})  # numeric, not string
