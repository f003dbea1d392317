"""Continental runs: xfusion.run / `xfusion run` over a loopback STAC API, on a real cluster.

The AOI is a synthetic LST scene (192 x 192 px, 30 m, MODIS-like coarse at 480 m) written as
two side-by-side Landsat/MODIS "scenes" (west and east halves: real-shaped STAC items and COGs)
and served by a loopback STAC API. Jobs tile it in 3 x 3 tiles of 64 px.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xfusion
from xfusion.errors import ClusterError, InvalidParameterError, JobError
from xfusion.testing import Fault, serve_stac_api, synthetic_scene, write_stac_catalog

HERE = Path(__file__).resolve().parent
try:
    import torch  # noqa: F401

    _has_torch = True
except ImportError:
    _has_torch = False
SIZE, TILE, FACTOR = 192, 64, 16


def _write_halves(root: Path, href_base: str) -> xr.Dataset:
    scene, coarse = synthetic_scene(
        (SIZE, SIZE), times=5, fine_times=[0, 4], coarse_factor=FACTOR, kind="lst", seed=3,
        cloud_fraction=0.1, coarse_cloud_fraction=0.0, coarse_native=True,
    )  # fmt: skip
    half = SIZE // 2
    for name, xs in (("west", slice(0, half)), ("east", slice(half, SIZE))):
        sub = scene.isel(x=xs)
        csub = coarse.isel(x=slice(xs.start // FACTOR, xs.stop // FACTOR))
        write_stac_catalog(sub, root / name, coarse=csub, href_base=f"{href_base}{name}/")
        if name == "east":  # distinct scene ids (another WRS path/row, MODIS tile)
            for path in (root / name).rglob("*.json"):
                doc = json.loads(path.read_text())
                if doc.get("type") == "Feature":
                    doc["id"] = (
                        doc["id"].replace("_000000_", "_000001_").replace("h00v00", "h01v00")
                    )
                    path.write_text(json.dumps(doc))
    return scene


@pytest.fixture(scope="module")
def aoi(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    with serve_stac_api(root) as server:
        scene = _write_halves(root, server.url)
        yield server, scene


@pytest.fixture(scope="module")
def client():
    c = xfusion.cluster("local", n_workers=2, threads_per_worker=1)
    yield c
    c.close()


def _job(server, scene, store, **kw) -> xfusion.Job:
    bb = scene.odc.geobox.extent.boundingbox
    opts = {
        "method": "starfm", "params": {"preset": "lst"}, "store": str(store),
        "time": ("2021-04-01", "2021-07-31"), "bbox": (bb.left, bb.bottom, bb.right, bb.top),
        "bbox_crs": "EPSG:32633", "crs": "EPSG:32633", "anchor": "edge", "tile": TILE,
        "url": server.stac_url,
    }  # fmt: skip
    opts.update(kw)
    return xfusion.Job(**opts)


def _values(store) -> np.ndarray:
    with xfusion.io.open_zarr(store) as ds:
        return ds["fine"].values


# --------------------------------------------------------------------------------------------
# jobs and plans
def test_job_from_yaml_sections_and_relative_paths(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "method: starfm\n"
        "params: {preset: lst}\n"
        "time: 2021-04-01/2021-07-31\n"
        "targets: [2021-05-05, 2021-04-19]\n"
        "aoi: {bbox: [14.3, 46.1, 14.6, 46.3]}\n"
        "stac: {url: 'http://127.0.0.1:1/stac', bands: lst, min_clear: 0.3}\n"
        "grid: {crs: EPSG:32633, resolution: 30, tile: 512}\n"
        "output: {store: out.zarr, chunk: 256, shards: true}\n"
        "run: {batch_size: 4, retries: 1}\n"
    )
    job = xfusion.load_job(tmp_path / "job.yaml")
    assert job.store == str(tmp_path / "out.zarr")
    assert job.time == ("2021-04-01", "2021-07-31")
    assert job.targets == ("2021-04-19", "2021-05-05")
    assert (job.tile, job.chunk, job.shards, job.min_clear, job.retries) == (512, 256, True, 0.3, 1)
    pl = xfusion.jobs.plan(job)
    h, w = pl.geobox.shape
    assert pl.grid == (-(-h // 512), -(-w // 512))
    assert pl.margin == 1500 // 30 + 1  # the "lst" preset's 1500 m search distance
    assert pl.variables == ("fine",)
    # Landsat-aligned: pixel edges on odd multiples of 15 m
    assert (pl.geobox.affine.c / 15) % 2 == 1 and (pl.geobox.affine.f / 15) % 2 == 1
    # the union of the tiles is the grid, without overlap
    cover = np.zeros(pl.geobox.shape, int)
    for t in pl.tiles():
        ys, xs = pl.tile_slices(*t)
        cover[ys, xs] += 1
    assert (cover == 1).all()


def test_example_job_file_plans_offline():
    job = xfusion.load_job(HERE.parent / "examples" / "tahoe_starfm_job.yaml")
    pl = xfusion.jobs.plan(job)  # no search: the grid and the tiling only
    assert job.store == str(HERE.parent / "examples" / "tahoe_starfm.zarr")
    assert pl.geobox.crs.epsg == 32610 and pl.geobox.resolution.x == 30
    assert pl.grid == tuple(-(-n // 2048) for n in pl.geobox.shape)
    assert job.shards and job.chunk == 512


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"method": "magic"}, "'method'"),
        ({"grid": {"tile": 500}, "output": {"store": "o.zarr", "chunk": 128}}, "'chunk'"),
        ({"aoi": {"bbox": [1, 2, 0, 3]}}, "'bbox'"),
        ({"aoi": {"box": [0, 0, 1, 1]}}, "aoi.box"),
        ({"params": {"preset": "lst", "windw": 3}}, "windw"),
        ({"weights": "w.safetensors"}, "learned methods"),
        ({"grid": {"anchor": "corner"}}, "'anchor'"),
        ({"colour": "blue"}, "Unknown job key"),
    ],
)
def test_bad_jobs_name_the_field(change, needle):
    base = {
        "method": "starfm",
        "params": {"preset": "lst"},
        "time": ["2021-04-01", "2021-05-01"],
        "aoi": {"bbox": [14.3, 46.1, 14.6, 46.3]},
        "output": {"store": "o.zarr"},
    }
    base.update(change)
    with pytest.raises(JobError, match=needle):
        xfusion.Job.from_dict(base)


def test_job_without_aoi_or_store():
    with pytest.raises(JobError, match="area of interest"):
        xfusion.Job(method="starfm", store="o.zarr", time="2021-01-01/2021-02-01")
    with pytest.raises(JobError, match=r"output\.store"):
        xfusion.Job.from_dict({"method": "starfm", "time": "2021-01-01/2021-02-01"})


# --------------------------------------------------------------------------------------------
# results
def test_tiled_run_equals_whole_aoi_for_a_local_method(aoi, tmp_path):
    """fine-plus-change is pixel-local: tiles (with bilinear MODIS) equal one whole-AOI load."""
    server, scene = aoi
    job = _job(server, scene, tmp_path / "b.zarr", method="baseline", params={}, min_clear=None)
    report = xfusion.run(job, client=False)
    assert report.ok and report.tiles_written == 9, str(report)
    cube = xfusion.load_pair(
        fine="landsat-c2-l2", coarse="modis-11A1-061", time=job.time, geobox=scene.odc.geobox, url=server.stac_url,
        chunks={"time": 1, "y": SIZE, "x": SIZE},
    )  # fmt: skip
    days = cube.time.values.astype("datetime64[D]").astype("datetime64[ns]")
    cube = cube.assign_coords(time=days)
    ref = xfusion.baseline(cube, fine="fine", coarse="coarse", targets=list(days))
    got = _values(job.store)
    assert got.shape == (5, SIZE, SIZE)
    np.testing.assert_array_equal(got, ref["fine"].values.astype("float32"))
    assert np.isfinite(got).mean() > 0.5
    # the finished job re-run offline (STAC API unreachable) ends at once, exit 0
    offline = dataclasses.replace(job, url="http://127.0.0.1:9/stac")
    hits = server.hits("/stac*")
    again = xfusion.run(offline, client=False, progress=False)
    assert again.ok and again.tiles_skipped == 9 and again.tiles_written == 0
    assert server.hits("/stac*") == hits
    assert re.search(r"\(\d[\d.]* [kMG]?px/s\)", str(report)), str(report)  # readable rate
    # the finished store is described: a STAC Item next to it and a Collection holding it
    from pystac.validation import validate_dict

    item = json.loads((tmp_path / "b.stac.json").read_text())
    validate_dict(item, extensions=[])
    assert item["assets"]["data"]["href"] == "b.zarr"
    assert item["properties"]["xfusion:method"] == "baseline"
    assert item["properties"]["xfusion:input_items"]  # the STAC items the tiles read
    assert item["properties"]["proj:shape"] == list(got.shape[1:])
    col = json.loads((tmp_path / "b.collection.json").read_text())
    validate_dict(col, extensions=[])
    assert [ln["href"] for ln in col["links"] if ln["rel"] == "item"] == ["b.stac.json"]


@pytest.mark.parametrize(("method", "params"), [
    ("estarfm", {"half_window": 6}),
    ("fitfc", {"sf_half_window": 6, "n_similar": 10, "preset": "lst"}),
    ("fsdaf", {"scale_factor": FACTOR, "half_window": 6, "block_cells": 4, "preset": "lst"}),
])
def test_jobs_run_the_classic_methods_with_the_registry_halo(aoi, tmp_path, method, params):
    """ESTARFM, Fit-FC and FSDAF jobs: the runner takes each one's margin from the registry
    and the tiles hold predictions at the targets between the fine dates."""
    from xfusion.methods import get

    server, scene = aoi
    job = _job(server, scene, tmp_path / f"{method}.zarr", method=method, params=params,
               min_clear=None)  # fmt: skip
    assert get(method).job_halo(params, resolution=30.0) > 0
    report = xfusion.run(job, client=False, progress=False)
    assert report.ok and report.tiles_written == 9, str(report)
    got = _values(job.store)
    assert got.shape[1:] == (SIZE, SIZE)
    # the targets between the pairs, away from the AOI's edge (the synthetic scene ends there:
    # the margin beyond it holds no data, which Fit-FC's 51 px regression window needs)
    inner = got[1:-1, 48:-48, 48:-48]
    assert np.isfinite(inner).mean() > 0.8, np.isfinite(inner).mean()  # clouds at a pair: NaN
    ok = np.isfinite(got[1:-1])
    assert np.all((got[1:-1][ok] > 200) & (got[1:-1][ok] < 400))  # kelvin, as the inputs


def test_cluster_run_equals_single_process_and_store_is_geo(aoi, client, tmp_path):
    server, scene = aoi
    params = {"preset": "lst", "max_search_distance": 600.0}  # a 41 px window: 21 px margin
    single = _job(server, scene, tmp_path / "single.zarr", params=params)
    r1 = xfusion.run(single, client=False)  # this process, local threads, one tile at a time
    sharded = _job(server, scene, tmp_path / "cluster.zarr", shards=True, chunk=32, params=params)
    r2 = xfusion.run(sharded, client=client)
    assert r1.ok and r2.ok, (str(r1), str(r2))
    assert r2.tiles_written == 9 and r2.pixels > 0
    a, b = _values(single.store), _values(sharded.store)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).mean() > 0.5
    # a plausible prediction: close to the truth
    err = np.nanmean(np.abs(a[1:4] - scene["truth"].values[1:4]))
    assert err < 3.0

    import rioxarray  # noqa: F401  (registers .rio)
    import zarr

    ds = xfusion.io.open_zarr(sharded.store)
    assert ds["fine"].rio.crs.to_epsg() == 32633
    assert ds.odc.geobox == scene.odc.geobox
    assert ds.attrs["proj:code"] == "EPSG:32633"
    prov = json.loads(ds.attrs["xfusion:provenance"])
    assert prov["method"] == "starfm" and prov["params"] == params
    assert prov["xfusion_version"] == xfusion.__version__
    assert any(i.startswith("LC08_L2SP_000001_") for i in prov["input_items"])
    assert any(i.startswith("MOD11A1") for i in prov["input_items"])
    arr = zarr.open_group(sharded.store)["fine"]
    assert arr.shards == (1, TILE, TILE) and arr.chunks == (1, 32, 32)

    # a margin thinner than the window (the user's choice) still runs; the tiles then see
    # fewer neighbours (and STARFM's threshold another area), so results differ a little
    thin = _job(server, scene, tmp_path / "thin.zarr", params=params, margin=4)
    assert xfusion.run(thin, client=client).ok
    c = _values(thin.store)
    assert np.isfinite(c).mean() > 0.5 and np.nanmean(np.abs(c - a)) < 0.5

    # resuming a finished store recomputes nothing (the default client is used implicitly)
    r3 = xfusion.run(sharded)
    assert r3.tiles_skipped == 9 and r3.computed == [] and r3.ok


def test_kill_mid_run_then_resume_is_identical(aoi, client, tmp_path):
    server, scene = aoi
    ref = _job(server, scene, tmp_path / "ref.zarr", method="baseline", params={})
    assert xfusion.run(ref).ok
    job = _job(server, scene, tmp_path / "killed.zarr", method="baseline", params={}, batch_size=1)
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.to_dict()))
    server.faults.append(Fault("*.tif", delay=0.05))  # slow reads: the kill lands mid-run
    try:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_run_job.py"), str(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        markers = Path(job.store) / "_xfusion_tiles"
        deadline = time.monotonic() + 120
        done_at_kill: set[tuple[int, int]] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            if markers.exists():
                try:
                    done_at_kill = set(_done(job.store))
                except Exception:
                    done_at_kill = set()
                if len(done_at_kill) >= 2:
                    break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        server.faults.clear()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    done_at_kill = set(_done(job.store))  # markers written before the kill
    assert 2 <= len(done_at_kill) < 9
    stamps = {
        p: p.stat().st_mtime_ns for p in Path(job.store, "fine", "c").rglob("*") if p.is_file()
    }

    report = xfusion.run(job, client=client)
    assert report.ok, str(report)
    assert report.tiles_skipped == len(done_at_kill)
    assert not set(report.computed) & done_at_kill  # no finished tile recomputed
    assert sorted(set(report.computed) | done_at_kill) == sorted(
        (i, j) for i in range(3) for j in range(3)
    )
    np.testing.assert_array_equal(_values(job.store), _values(ref.store))
    # the chunks of tiles finished before the kill were not rewritten
    for path, stamp in stamps.items():
        iy, ix = (int(path.parts[-2]), int(path.parts[-1]))
        if (iy, ix) in done_at_kill:
            assert path.stat().st_mtime_ns == stamp


def _done(store) -> list[tuple[int, int]]:
    status = xfusion.io.tile_status(store)
    return [tuple(map(int, ij)) for ij in np.argwhere(status)]


def test_failing_tiles_are_retried_then_reported(aoi, tmp_path):
    server, scene = aoi
    job = _job(server, scene, tmp_path / "f.zarr", method="baseline", params={}, retries=1)
    server.faults.append(Fault("*/east/*lwir11.tif", status=503))
    # fresh workers: GDAL caches what other tests' workers already read over HTTP
    client = xfusion.cluster("local", n_workers=2, set_as_default=False)
    try:
        report = xfusion.run(job, client=client)
    finally:
        server.faults.clear()
    assert not report.ok
    failed = sorted(f.tile for f in report.failed)
    assert failed == [(i, j) for i in range(3) for j in (1, 2)]  # tiles reading the east half
    assert all(f.attempts == 2 for f in report.failed)
    assert all("lwir11" in f.error or "503" in f.error for f in report.failed), report.failed
    assert report.tiles_written == 3
    assert "FAILED tile" in str(report)
    status = xfusion.io.tile_status(job.store)
    assert status[:, 0].all() and not status[:, 1:].any()
    # the next run does only the failed tiles
    try:
        again = xfusion.run(job, client=client)
    finally:
        client.close()
    assert again.ok and sorted(again.computed) == failed


def test_geojson_aoi_skips_tiles_outside(aoi, tmp_path):
    server, scene = aoi
    gb = scene.odc.geobox
    # a triangle over the north-west corner: only the tiles it touches are computed
    x0, y0 = gb.affine @ (0, 0)
    x1, y1 = gb.affine @ (100, 100)
    tri = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x0, y1], [x0, y0]]]}
    from odc.geo.geom import Geometry

    geom = Geometry(tri, "EPSG:32633").to_crs("EPSG:4326").json
    (tmp_path / "aoi.geojson").write_text(json.dumps({"type": "Feature", "geometry": geom}))
    job = _job(server, scene, tmp_path / "g.zarr", method="baseline", params={}, bbox=None,
               geometry=str(tmp_path / "aoi.geojson"))  # fmt: skip
    pl = xfusion.jobs.plan(job)
    report = xfusion.run(job)
    assert report.ok, str(report)
    assert sorted(report.computed) == sorted(set(pl.tiles()) - pl.outside())
    assert report.tiles_outside == len(pl.outside()) > 0
    assert (0, 0) in report.computed and (pl.grid[0] - 1, pl.grid[1] - 1) in pl.outside()


@pytest.mark.skipif(not _has_torch, reason="needs torch")
def test_sttfn_with_weights_equals_whole_aoi_inference(aoi, tmp_path):
    """General-regime STTFN is local (receptive field < margin): tiles equal one whole pass."""
    server, scene = aoi
    weights = tmp_path / "sttfn.safetensors"
    train, _ = synthetic_scene((96, 96), times=3, fine_times=[0, 1, 2], coarse_factor=FACTOR,
                               seed=7, cloud_fraction=0.0, coarse_native=True)  # fmt: skip
    xfusion.train_sttfn(train, fine="fine", coarse="coarse", out=weights, epochs=1, patches=8,
                        patch_size=24, batch_size=4, arch_params={"sr_width": 4, "feat": 4,
                        "width": 4})  # fmt: skip
    job = _job(server, scene, tmp_path / "s.zarr", method="sttfn", params={},
               weights=str(weights), min_clear=None)  # fmt: skip
    report = xfusion.run(job, client=False)
    assert report.ok and report.tiles_written == 9, str(report)
    cube = xfusion.load_pair(
        fine="landsat-c2-l2", coarse="modis-11A1-061", time=job.time, geobox=scene.odc.geobox,
        url=server.stac_url, chunks={"time": 1, "y": SIZE, "x": SIZE},
    )  # fmt: skip
    days = cube.time.values.astype("datetime64[D]").astype("datetime64[ns]")
    cube = cube.assign_coords(time=days)
    targets = list(days[1:4])  # between the two Landsat dates
    ref = xfusion.sttfn(cube, fine="fine", coarse="coarse", targets=targets, weights=weights)
    got = _values(job.store)[1:4]
    assert np.isfinite(got).mean() > 0.5
    # away from the AOI's outer edge (where a tile reads NaN beyond the data and the whole
    # pass zero-pads the image), the tiles equal the whole pass
    r = xfusion.jobs.plan(job).margin
    inner = (slice(None), slice(r, -r), slice(r, -r))
    np.testing.assert_allclose(got[inner], ref["fine"].values[inner], rtol=0, atol=2e-3)


def test_cli_run_resumes_and_reports(aoi, tmp_path, capsys):
    from xfusion.cli import main

    server, scene = aoi
    job = _job(server, scene, tmp_path / "cli.zarr", method="baseline", params={})
    spec = tmp_path / "job.yaml"
    import yaml

    d = job.to_dict()
    spec.write_text(yaml.safe_dump(d))
    assert main(["run", str(spec), "--quiet"]) == 0
    assert "9/9 tiles done" in capsys.readouterr().out
    assert main(["run", str(spec), "--quiet"]) == 0
    assert "9 skipped as already done" in capsys.readouterr().out
    other = dict(d, params={"method": "fine-at-pair"})
    spec.write_text(yaml.safe_dump(other))
    assert main(["run", str(spec), "--quiet"]) == 1
    assert "different job" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 1
    assert main(["run", str(spec), "--workers", "2"]) == 2


# --------------------------------------------------------------------------------------------
# clusters
def test_cluster_local_and_address(client):
    assert len(client.scheduler_info()["workers"]) == 2
    other = xfusion.cluster(client.scheduler.address, set_as_default=False)
    try:
        assert other.submit(sum, [1, 2]).result() == 3
    finally:
        other.close()


def test_cluster_cuda_without_gpu_is_a_clear_error():
    if xfusion.jobs.gpu_count():
        pytest.skip("a GPU is present")
    with pytest.raises(ClusterError, match="kind='local'"):
        xfusion.cluster("cuda")


def test_cluster_bad_arguments():
    with pytest.raises(InvalidParameterError, match="kind"):
        xfusion.cluster("gpu-please")
    with pytest.raises(InvalidParameterError, match="n_workers"):
        xfusion.cluster("local", n_workers=0)


@pytest.mark.gpu
def test_cluster_cuda_one_worker_per_gpu():
    n = xfusion.jobs.gpu_count()
    assert n > 0
    with xfusion.cluster("cuda", set_as_default=False) as c:
        workers = c.scheduler_info()["workers"].values()
        assert len(workers) == n and all(w["nthreads"] == 1 for w in workers)
