"""xfusion.stac.search against a minimal STAC API on loopback, and Planetary Computer signing.

The API (``xfusion.testing._server.serve_stac_api``) serves item JSON written by the
synthetic-scene writer; pystac-client talks to it over HTTP. Signing is tested with a fake
token service (``planetary_computer.sas.get_token`` replaced), so no test touches the
network or signs a real blob URL.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse

import numpy as np
import pystac
import pytest

import xfusion
from xfusion.errors import (
    EmptySearchError,
    InvalidParameterError,
    SigningError,
    StacApiError,
    UnknownCollectionError,
)
from xfusion.stac import is_blob_href, search, sign_href, sign_items, token_expiry
from xfusion.testing import synthetic_scene, write_stac_catalog
from xfusion.testing._server import Fault, serve_stac_api

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore:Support for class-based `config`:DeprecationWarning"),
]

BLOB = "https://landsateuwest.blob.core.windows.net/landsat-c2/level-2/LC08_ST_B10.TIF"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Six Landsat dates (cloud cover 0..) and six MODIS days behind a loopback STAC API."""
    root = tmp_path_factory.mktemp("api")
    scene = synthetic_scene((32, 32), times=6, coarse_factor=16, cloud_fraction=0.25, seed=4)
    with serve_stac_api(root, page_size=2) as server:
        cat = write_stac_catalog(scene, root, href_base=server.url)
        yield server, cat, scene


@pytest.fixture
def fake_tokens(monkeypatch):
    """A fake SAS token service: counts calls, tokens valid for one hour (or `ttl`)."""
    from planetary_computer import sas

    calls = []
    state = {"ttl": 3600.0}

    def get_token(account, container, **kwargs):
        calls.append((account, container))
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=state["ttl"])
        se = urllib.parse.quote(expiry.strftime("%Y-%m-%dT%H:%M:%SZ"))
        token = sas.SASToken(token=f"st=x&se={se}&sp=rl&sig=fake{len(calls)}",
                             **{"msft:expiry": expiry})
        from planetary_computer.settings import Settings

        sas.TOKEN_CACHE[f"{Settings.get().sas_url}/{account}/{container}"] = token
        return token

    monkeypatch.setattr(sas, "get_token", get_token)
    monkeypatch.setattr(sas, "TOKEN_CACHE", {})
    return calls, state


def _ids(items):
    return [it.id for it in items]


def test_search_filters_and_paging(api):
    server, cat, scene = api
    fine_ids = _ids(cat.fine_items)
    n0 = server.hits("/stac/search", method="POST")
    items = search("landsat-c2-l2", url=server.stac_url)
    assert isinstance(items, pystac.ItemCollection)
    assert _ids(items) == fine_ids  # sorted by time
    pages = -(-len(fine_ids) // 2)  # page_size=2: every page fetched through `next` links
    assert len(fine_ids) > 2 and server.hits("/stac/search", method="POST") - n0 == pages
    assert all(it.assets["lwir11"].href.startswith(server.url) for it in items)
    both = search(["landsat-c2-l2", "modis-11A1-061"], url=server.stac_url)
    assert len(both) == len(cat.fine_items) + len(cat.coarse_items)
    # time: range strings, tuples with open ends, one day
    t = [str(it.datetime.date()) for it in cat.fine_items]
    assert _ids(search("landsat-c2-l2", url=server.stac_url, time=f"{t[1]}/{t[2]}")) == \
        fine_ids[1:3]
    assert _ids(search("landsat-c2-l2", url=server.stac_url, time=(t[-1], None))) == \
        fine_ids[-1:]
    assert _ids(search("landsat-c2-l2", url=server.stac_url,
                       time=np.datetime64(t[0]))) == fine_ids[:1]
    # MODIS items: datetime null, day ranges
    day = str(scene.time.values[2])[:10]
    assert len(search("modis-11A1-061", url=server.stac_url, time=day)) == 1
    # bbox and intersects
    bb = scene.odc.geobox.geographic_extent.boundingbox
    assert len(search("landsat-c2-l2", url=server.stac_url, bbox=tuple(bb))) == len(fine_ids)
    geom = scene.odc.geobox.geographic_extent.geom  # shapely
    assert len(search("landsat-c2-l2", url=server.stac_url, intersects=geom)) == len(fine_ids)
    # max_cloud and query
    cover = {it.id: it.properties["eo:cloud_cover"] for it in cat.fine_items}
    clear = search("landsat-c2-l2", url=server.stac_url, max_cloud=1)
    assert _ids(clear) == [i for i in fine_ids if cover[i] <= 1]
    assert 0 < len(clear) < len(fine_ids)
    q = search("landsat-c2-l2", url=server.stac_url, query={"eo:cloud_cover": {"gt": 1}})
    assert _ids(q) == [i for i in fine_ids if cover[i] > 1]
    assert len(search("landsat-c2-l2", url=server.stac_url, platform="landsat-8")) == len(fine_ids)
    assert len(search("landsat-c2-l2", url=server.stac_url, max_items=3)) == 3
    assert _ids(search("landsat-c2-l2", url=server.stac_url, ids=fine_ids[:2])) == fine_ids[:2]


def test_loopback_api_get_paging_and_bad_requests(api):
    server, cat, _ = api
    import json
    import urllib.error
    import urllib.request

    from pystac_client import Client

    client = Client.open(server.stac_url)
    assert {c.id for c in client.get_collections()} == {"landsat-c2-l2", "modis-11A1-061"}
    got = list(client.search(collections=["landsat-c2-l2"], method="GET", limit=1).items())
    assert _ids(got) == _ids(cat.fine_items)
    assert server.hits("/stac/search", method="GET") == len(got)  # one page per item
    for query, what in (("bbox=1,2,3", "Invalid bbox"), ("datetime=yesterday", "Invalid datetime"),
                        ("query=%7B", "Invalid JSON"), ("limit=0", "limit must be")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.stac_url}/search?{query}", timeout=10)
        assert err.value.code == 400 and what in json.load(err.value)["description"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.stac_url}/collections/nope", timeout=10)
    assert err.value.code == 404


def test_search_errors(api):
    server, _, scene = api
    bb = tuple(scene.odc.geobox.geographic_extent.boundingbox)
    with pytest.raises(UnknownCollectionError,
                       match=r"Unknown collection 'landsat-c2-l3'.*Did you mean 'landsat-c2-l2'"
                             r".*offers 2 collections: \['landsat-c2-l2', 'modis-11A1-061'\]"):
        search("landsat-c2-l3", url=server.stac_url)
    with pytest.raises(EmptySearchError,
                       match=r"found no items: collections \['landsat-c2-l2'\].*time "
                             r"'1999-01-01/1999-12-31'.*widen the time range"):
        search("landsat-c2-l2", url=server.stac_url, time=("1999-01-01", "1999-12-31"))
    with pytest.raises(EmptySearchError, match=r"raise max_cloud \(now 0\)"):
        search("landsat-c2-l2", url=server.stac_url, max_cloud=0, bbox=(0, 0, 0.1, 0.1))
    with pytest.raises(InvalidParameterError, match="not in degrees"):
        search("landsat-c2-l2", url=server.stac_url, bbox=(500000, 5000000, 510000, 5010000))
    with pytest.raises(InvalidParameterError, match="empty or inverted"):
        search("landsat-c2-l2", url=server.stac_url, bbox=(bb[2], bb[1], bb[0], bb[3]))
    with pytest.raises(InvalidParameterError, match="either bbox= or intersects="):
        search("landsat-c2-l2", url=server.stac_url, bbox=bb, intersects={"type": "Point"})
    with pytest.raises(InvalidParameterError, match="ends before it starts"):
        search("landsat-c2-l2", url=server.stac_url, time=("2021-05-01", "2021-04-01"))
    with pytest.raises(InvalidParameterError, match=r"max_cloud=150 must be"):
        search("landsat-c2-l2", url=server.stac_url, max_cloud=150)
    with pytest.raises(InvalidParameterError, match="radar product"):
        search("sentinel-1-rtc", url=server.stac_url, max_cloud=10)
    server.faults.append(Fault("/stac/search", status=503, times=2))  # transient: retried
    try:
        n = server.hits("/stac/search")
        assert len(search("landsat-c2-l2", url=server.stac_url)) > 0
        assert server.hits("/stac/search") - n >= 3
        server.faults[:] = [Fault("/stac/search", status=503)]
        n = server.hits("/stac/search")
        with pytest.raises(StacApiError, match=r"answered HTTP 503 to the search"):
            search("landsat-c2-l2", url=server.stac_url, retries=2, retry_delay=0.01)
        assert server.hits("/stac/search") - n == 3  # first try + 2 retries
    finally:
        server.faults.clear()
    with pytest.raises(StacApiError, match="Could not open the STAC API"):
        search("landsat-c2-l2", url=server.url + "nowhere/api", timeout=5)


def test_search_defaults_to_the_planetary_computer_signed(monkeypatch):
    """The default URL and the sign_inplace modifier, without touching the network."""
    import planetary_computer
    from pystac_client import Client

    seen = {}

    class Stop(Exception):
        pass

    def fake_open(url, **kwargs):
        seen.update(url=url, **kwargs)
        raise Stop

    monkeypatch.setattr(Client, "open", staticmethod(fake_open))
    with pytest.raises(Stop):
        search("landsat-c2-l2", bbox=(146.0, -34.9, 146.2, -34.7), time="2016-02")
    assert seen["url"] == xfusion.stac.PC_STAC_URL
    assert seen["modifier"] is planetary_computer.sign_inplace
    with pytest.raises(Stop):
        search("landsat-c2-l2", sign=False)
    assert seen["modifier"] is None
    with pytest.raises(Stop):
        search("landsat-c2-l2", url="https://earth-search.aws.element84.com/v1")
    assert seen["modifier"] is None  # other APIs are not signed by default


def test_sentinel1_search_needs_a_key(monkeypatch):
    from planetary_computer.settings import Settings

    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    monkeypatch.setattr(Settings.get(), "subscription_key", None)
    with pytest.raises(SigningError, match=r"'sentinel-1-rtc' requires an account.*"
                                           r"planetarycomputer.microsoft.com/account/request"):
        search("sentinel-1-rtc", bbox=(14.2, 46.2, 14.4, 46.3))
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "not-a-real-key")
    assert xfusion.stac.has_subscription_key()


def test_sign_href_and_items(fake_tokens):
    calls, state = fake_tokens
    assert is_blob_href(BLOB) and not is_blob_href("http://127.0.0.1:8000/a.tif")
    assert not is_blob_href("https://ai4edatasetspublicassets.blob.core.windows.net/t.png")
    assert sign_href("/data/local.tif") == "/data/local.tif" and not calls
    signed = sign_href(BLOB)
    assert signed.startswith(BLOB + "?st=x&se=") and calls == [("landsateuwest", "landsat-c2")]
    assert token_expiry(signed) > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=50)
    assert sign_href(signed) == signed and len(calls) == 1  # still valid: untouched
    # a token about to expire is renewed (cache dropped too), never stacked
    state["ttl"] = 120.0
    short = sign_href(BLOB, force=True)
    assert len(calls) == 2 and short.count("?") == 1 and short.count("sig=") == 1
    state["ttl"] = 3600.0
    renewed = sign_href(short)  # expires within min_ttl=600 s -> renewed
    assert len(calls) == 3 and renewed != short and token_expiry(renewed) > token_expiry(short)
    item = pystac.Item("a", None, None, dt.datetime(2021, 1, 1), {}, collection="landsat-c2-l2")
    item.add_asset("lwir11", pystac.Asset(BLOB))
    item.add_asset("thumb", pystac.Asset("http://127.0.0.1:1/thumb.png"))
    (out,) = sign_items([item])
    assert out is not item and item.assets["lwir11"].href == BLOB  # copies
    assert out.assets["lwir11"].href.startswith(BLOB + "?") and "thumb.png" in out.assets[
        "thumb"].href
    (custom,) = sign_items([item], signer=lambda h: h + "#signed")
    assert custom.assets["lwir11"].href == BLOB + "#signed"


def test_load_cube_resigns_just_before_loading(api, fake_tokens, monkeypatch):
    """sign='auto': expired tokens are renewed when the graph is built (per batch)."""
    calls, _ = fake_tokens
    _server, cat, scene = api
    item = cat.fine_items[0].clone()
    local = {k: a.href for k, a in item.assets.items()}
    expired = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for k, a in item.assets.items():
        a.href = f"https://landsateuwest.blob.core.windows.net/c/{k}.tif?st=x&se={expired}&sig=old"
    used = []

    def to_local(href):  # read the loopback copy of whatever signed URL load_cube built
        used.append(href)
        key = urllib.parse.urlsplit(href).path.rsplit("/", 1)[1][:-4]
        return local[key]

    ds = xfusion.load_cube([item], preset="landsat-c2-l2", bands="lst", patch_url=to_local,
                           geobox=scene.odc.geobox)
    assert calls and all("sig=fake" in u and "sig=old" not in u for u in used)
    assert np.isfinite(ds.lst.values).any()
    n = len(calls)
    from planetary_computer.settings import Settings

    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    monkeypatch.setattr(Settings.get(), "subscription_key", None)
    s1 = item.clone()
    s1.collection_id = "sentinel-1-rtc"
    with pytest.raises(SigningError, match="requires an account"):
        sign_items([s1])
    assert len(calls) == n  # refused before asking for a token
    unsigned = xfusion.load_cube([item], preset="landsat-c2-l2", bands="lst", sign=False,
                                 patch_url=lambda h: used.append(h) or to_local(h),
                                 geobox=scene.odc.geobox)
    assert "sig=old" in used[-1] and unsigned.sizes["time"] == 1


def test_load_cube_accepts_an_item_search(api):
    """A pystac-client ItemSearch (not yet run) is a valid `items` argument."""
    server, cat, scene = api
    from pystac_client import Client

    pending = Client.open(server.stac_url).search(collections=["landsat-c2-l2"], limit=2)
    ds = xfusion.load_cube(pending, preset="landsat-c2-l2", geobox=scene.odc.geobox)
    assert ds.sizes["time"] == len(cat.fine_items) and list(ds.data_vars) == ["lst"]
    assert ds.attrs["preset"] == "landsat-c2-l2" and ds.clear_fraction.shape == (len(cat.fine_items),)
