"""Products describe themselves: a STAC Item next to each output (pystac, with the proj and
datacube extensions, provenance and links to the inputs), a PNG quicklook on request, and
GeoZarr attribute names as published."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pystac
import pytest
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation import validate_dict

import xfusion
from xfusion.cli import main
from xfusion.io.stac_item import INPUT_ITEMS_ATTR, item_path, stac_collection
from xfusion.testing import synthetic_scene

sys.path.insert(0, os.path.dirname(__file__))
from test_cli_fuse import _textured_tifs


def _load(path):
    with open(path) as fh:
        d = json.load(fh)
    validate_dict(d, extensions=[])  # the core Item schema, shipped with pystac (offline)
    item = pystac.Item.from_dict(d)
    return d, item


@pytest.fixture(scope="module")
def rgb():
    ds = synthetic_scene((40, 40), kind="reflectance", bands=("red", "green", "blue"),
                         coarse_factor=8, times=3, cloud_fraction=0.0, coarse_cloud_fraction=0.0,
                         seed=4)
    ds.attrs[INPUT_ITEMS_ATTR] = json.dumps([
        {"id": "LC08_X", "collection": "landsat-c2-l2", "href": "https://x/items/LC08_X"},
        {"id": "MOD09GA_Y", "collection": "modis-09GA-061"}])
    return ds


def test_to_zarr_writes_an_item_that_validates(rgb, tmp_path):
    names = {"fine": [f"fine_{b}" for b in ("red", "green", "blue")],
             "coarse": [f"coarse_{b}" for b in ("red", "green", "blue")]}
    out = rgb.fusion.estarfm(**names, targets=[rgb.time.values[1]], half_window=4,
                             pairs=(rgb.time.values[0], rgb.time.values[2]))
    store = tmp_path / "pred.zarr"
    xfusion.io.to_zarr(out, store, stac=True)
    d, item = _load(item_path(store))
    assert item.id == "pred" and d["assets"]["data"]["href"] == "pred.zarr"
    assert item.datetime is not None and str(item.datetime)[:10] == str(rgb.time.values[1])[:10]
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32633" and proj.shape == [40, 40]
    assert proj.transform[:3] == [30.0, 0.0, float(rgb.x.values[0] - 15)]
    cube = DatacubeExtension.ext(item)
    assert set(cube.variables) == set(names["fine"])
    assert cube.variables["fine_red"].unit == "1"
    assert cube.dimensions["time"].values == [str(rgb.time.values[1])[:19] + "Z"]
    assert d["properties"]["xfusion:method"] == "estarfm"
    assert d["properties"]["xfusion:parameters"]["half_window"] == 4
    assert d["properties"]["processing:software"]["xfusion"] == xfusion.__version__
    # provenance: the STAC items the cube came from
    assert d["properties"]["xfusion:input_items"] == ["LC08_X", "MOD09GA_Y"]
    links = [ln for ln in d["links"] if ln["rel"] == "derived_from"]
    assert [ln["href"] for ln in links] == ["https://x/items/LC08_X"]
    lon, lat = np.mean(item.geometry["coordinates"][0], axis=0)
    assert 13 < lon < 16 and 45 < lat < 47  # the scene is in UTM 33N near Ljubljana


def test_cli_products_get_an_item_and_a_quicklook(tmp_path):
    p = _textured_tifs(tmp_path, n=48)
    out = tmp_path / "pred.tif"
    argv = ["fuse", "baseline", "--fine", f"2020-03-08={p['fine']}", "--coarse",
            f"2020-03-08={p['0308']}", "--coarse", f"2020-03-17={p['0317']}", "--out", str(out),
            "--quicklook", "--param", "method=fine-plus-change"]
    assert main(argv) == 0
    d, _ = _load(tmp_path / "pred.stac.json")
    assert d["assets"]["data"]["href"] == "pred.tif"
    assert d["assets"]["thumbnail"]["href"] == "pred.png"
    hrefs = sorted(ln["href"] for ln in d["links"] if ln["rel"] == "derived_from")
    assert hrefs == sorted(os.path.basename(p[k]) for k in ("fine", "0308", "0317"))
    assert d["properties"]["xfusion:method"] == "baseline"
    assert d["properties"]["xfusion:parameters"] == {"method": "fine-plus-change"}
    from matplotlib import image as mpimg

    png = mpimg.imread(tmp_path / "pred.png")
    assert png.shape == (48, 48, 4) and png[..., 3].min() == 1.0  # every pixel predicted
    assert png[..., 0].std() > 0.05  # the texture is visible
    # --no-stac: no item
    assert main([*argv[:-5], "--out", str(tmp_path / "b.tif"), "--no-stac"]) == 0
    assert not (tmp_path / "b.stac.json").exists()


def test_collection_over_items(rgb, tmp_path):
    items = []
    for k in (1, 2):
        out = rgb.fusion.baseline(fine="fine_red", coarse="coarse_red",
                                  targets=[rgb.time.values[k]])
        xfusion.io.to_zarr(out, tmp_path / f"p{k}.zarr", stac=True)
        items.append(_load(tmp_path / f"p{k}.stac.json")[1])
    col = stac_collection(items, id="job", description="two products", root=tmp_path / "cat")
    d = col.to_dict()
    validate_dict(d, extensions=[])
    t0, t1 = d["extent"]["temporal"]["interval"][0]
    assert t0.startswith(str(rgb.time.values[1])[:10])
    assert t1.startswith(str(rgb.time.values[2])[:10])
    assert len(list(col.get_items())) == 2
