"""Remote reads through a fault-injecting loopback server: retries, clear errors, reports.

Each test writes its own catalog under a fresh folder (GDAL caches what it read by URL, so
URLs are never reused) and injects faults with ``xfusion.testing._server.Fault``: HTTP 503
(transient and persistent), 404, truncated bodies and slow answers.
"""

from __future__ import annotations

import itertools
import logging
import time

import dask
import numpy as np
import pytest

import xfusion
from xfusion.errors import AssetReadError
from xfusion.stac import LoadReport
from xfusion.testing import raise_if_dask_computes, synthetic_scene, write_stac_catalog
from xfusion.testing._server import Fault, serve_stac_api

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

FAST = {"retries": 2, "retry_delay": 0.01}
_count = itertools.count()


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene((32, 40), times=3, coarse_factor=16, cloud_fraction=0.0, seed=7)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_stac_api(tmp_path_factory.mktemp("faults")) as srv:
        yield srv


@pytest.fixture
def catalog(server, scene):
    """A fresh catalog (new URLs) on the module's server; faults cleared afterwards."""
    sub = f"c{next(_count)}"
    cat = write_stac_catalog(scene, server.root / sub, href_base=f"{server.url}{sub}/")
    yield sub, cat
    server.faults.clear()


def expected(scene):
    return scene.fine.sel(time=scene.observed_fine).values


def load(cat, scene, **kw):
    return xfusion.load_cube(cat.fine_items, preset="landsat-c2-l2", bands="lst",
                             geobox=scene.odc.geobox, chunks={}, **{**FAST, **kw})


def path_of(cat, i, asset="lwir11"):
    from urllib.parse import urlsplit

    return urlsplit(cat.fine_items[i].assets[asset].href).path


def test_transient_503_is_retried(server, catalog, scene):
    _sub, cat = catalog
    target = path_of(cat, 1)
    server.faults.append(Fault(target, status=503, times=2))
    ds = load(cat, scene).compute()
    assert np.nanmax(np.abs(ds.lst.values - expected(scene))) < 0.002
    statuses = [s for _, p, s in server.requests if p == target]
    assert statuses[:2] == [503, 503] and statuses[2] in (200, 206)


def test_persistent_503_names_item_and_asset(server, catalog, scene):
    _sub, cat = catalog
    target = path_of(cat, 1)
    server.faults.append(Fault(target, status=503))
    with raise_if_dask_computes():
        lazy = load(cat, scene)  # nothing is read yet
    item = cat.fine_items[1].id
    with pytest.raises(AssetReadError, match=rf"asset 'lwir11' of item '{item}' \(collection "
                                             r"'landsat-c2-l2'\).*503.*after 2 retries"):
        lazy.compute()
    assert sum(p == target for _, p, _ in server.requests) == 1 + FAST["retries"]


def test_404_is_not_retried(server, catalog, scene):
    _sub, cat = catalog
    target = path_of(cat, 0, "qa_pixel")
    server.faults.append(Fault(target, status=404))
    item = cat.fine_items[0].id
    with pytest.raises(AssetReadError, match=rf"asset 'qa_pixel' of item '{item}'.*404.*not at "
                                             r"this URL"):
        load(cat, scene).compute()
    assert sum(p == target for _, p, _ in server.requests) == 1


def test_truncated_body_is_retried_after_clearing_gdal_cache(server, catalog, scene):
    _sub, cat = catalog
    target = path_of(cat, 2)
    server.faults.append(Fault(target, truncate=0.3, times=1, methods=("GET",)))
    ds = load(cat, scene).compute()
    np.testing.assert_allclose(ds.lst.values, expected(scene), atol=0.002)
    gets = [s for m, p, s in server.requests if p == target and m == "GET"]
    assert len(gets) == 2  # the truncated answer, then a fresh read


def test_truncated_every_time_fails(server, catalog, scene):
    _sub, cat = catalog
    target = path_of(cat, 2)
    server.faults.append(Fault(target, truncate=0.3, methods=("GET",)))
    with pytest.raises(AssetReadError, match=rf"item '{cat.fine_items[2].id}'.*after 2 retries"):
        load(cat, scene).compute()
    assert sum(p == target and m == "GET" for m, p, _ in server.requests) == 3


def test_slow_answers_and_timeouts(server, catalog, scene):
    sub, cat = catalog
    target = path_of(cat, 0)
    server.faults.append(Fault(target, delay=2.5, times=1))  # the first request times out
    server.faults.append(Fault(f"/{sub}/*lwir11.tif", delay=0.1))  # every answer is slow
    t0 = time.perf_counter()
    ds = load(cat, scene, http_timeout=1).compute()
    assert time.perf_counter() - t0 >= 1.0  # waited for the timeout, then retried
    np.testing.assert_allclose(ds.lst.values, expected(scene), atol=0.002)
    assert sum(p == target for _, p, _ in server.requests) >= 2  # retried after the timeout


def test_fail_on_error_false_reports_failed_items(server, catalog, scene, caplog):
    _sub, cat = catalog
    server.faults.append(Fault(path_of(cat, 1), status=404))
    report = LoadReport()
    ds = load(cat, scene, fail_on_error=False, report=report)
    assert not report  # reads are lazy: nothing failed yet
    with caplog.at_level(logging.WARNING, logger="xfusion.stac"):
        (values,) = dask.compute(ds.lst.values)
    bad = cat.fine_items[1].id
    assert report.items == [bad]
    assert {(f.item, f.asset, f.collection) for f in report} == {(bad, "lwir11", "landsat-c2-l2")}
    assert all("404" in f.error and f.href.endswith("_lwir11.tif") for f in report)
    assert f"item '{bad}'" in caplog.text and "pixels are NaN" in caplog.text
    assert "LoadReport(" in repr(report)
    want = expected(scene)
    assert np.isnan(values[1]).all()  # the failed item, not silently filled
    np.testing.assert_allclose(values[[0, 2]], want[[0, 2]], atol=0.002)
