"""Continental runs (``xfusion.run``): scaling, pipeline efficiency and memory, side by side.

Everything runs in one process on the same data: a synthetic LST scene
(``xfusion.testing.synthetic_scene``, 30 m, MODIS-like coarse at 960 m, fine pairs at the first
and last of 3 dates, one target date between them, no clouds) written as Landsat/MODIS-like
COGs + STAC items (``write_stac_catalog``) and served by a loopback STAC API
(``serve_stac_api``). The AOI is the scene minus a border, so every tile's margin reads real
pixels, as it would inside a continent. Jobs predict the one target date.

Measured:

* **Scaling**: throughput (output pixel/s, end to end: search, COG reads over HTTP, method,
  Zarr writes) of the same STARFM job (preset ``"lst"``: 100 px window, 51 px margin) with no
  cluster (local threads, one tile at a time with all cores), and on fresh
  ``xfusion.cluster("local", n_workers=N, threads_per_worker=1)`` clusters with N = 1 and 2;
  the 2-vs-1 ratio; CPU seconds used by each worker over its wall time (how many cores a
  worker really used).
* **Pipeline efficiency** = end-to-end pixel/s / kernel-only pixel/s, where kernel-only is the
  same method on the same AOI from in-memory inputs (the AOI cube loaded once with
  ``load_pair`` and ``.load()``-ed; the best of eager numpy and in-memory dask chunks; no
  reading, no writing), for STARFM and for STTFN (general regime: a half-width net trained once
  with ``xfusion.train_sttfn`` on a small separate scene, the job's ``weights:``). The margin
  overhead ``(tile + 2 margin)^2 / tile^2`` is reported with it.
* **Where a tile's time goes**: one tile task's phases (search of its footprint, payload,
  ``load_pair`` graph build, COG reads, clear-fraction pass, method, Zarr write), timed by
  repeating the steps of ``xfusion.jobs.runner._run_tile``, next to ``run_tile(payload)``
  itself; and the method on the same tile with the margin culled from the computation (the
  cube chunked as ``margin | tile | margin``, so that the crop computes only the interior).
* **Memory**: peak RSS (``ru_maxrss``) of each worker of a fresh 2-worker cluster as the AOI
  grows 1x, 4x, 16x in area at a fixed tile size (it should stay flat), with the workers'
  RSS before the run.

The machine is shared: absolute figures are noisy (the load average is recorded in every
row); ratios are taken side by side, best of ``repeats``.

Usage: ``python benchmarks/bench_run.py [--quick] [--json PATH]`` (prints a table, writes
``bench_out/bench_run.json``); ``run()`` returns the rows for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

HALF = {"sr_width": 32, "feat": 16, "width": 32}
"""Half-width STTFN net (104,209 parameters), as in bench_sttfn.py: fast enough on CPU."""

SEED = 3
BORDER = 64
"""Pixels of scene around the AOI (> the largest margin), so margins read real data."""
PERIOD = ("2021-04-01", "2021-05-31")
TARGET = "2021-04-19"
"""The one predicted date (fine pairs on 2021-04-03 and 2021-05-05)."""


# --------------------------------------------------------------------------------------------
# helpers
def _load() -> float:
    return os.getloadavg()[0]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _stats() -> tuple[float, float]:
    """(peak RSS in GB since the last :func:`_reset_peak`, CPU seconds) of this process.

    The peak is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` is no use in a Dask worker,
    which is spawned (fork + exec) from the driver and inherits the driver's ``ru_maxrss``
    across ``execve``.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2, cpu
    except OSError:
        pass
    return ru.ru_maxrss / 1024**2, cpu


def _reset_peak() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _warm(method: str, weights: str | None) -> None:
    """Import and compile the method (numba cache, torch, weights) in this process."""
    from xfusion.testing import synthetic_scene

    s = synthetic_scene((160, 160), times=3, fine_times=[0, 2], seed=1, cloud_fraction=0.0,
                        coarse_cloud_fraction=0.0, coarse_factor=16).drop_vars("truth")  # fmt: skip
    _method(s, method, weights).compute()


def _worker_stats(client: Any) -> dict[str, tuple[float, float]]:
    return client.run(_stats)  # type: ignore[no-any-return]


def _write_catalog(root: Path, size: int, server: Any) -> Any:
    """A (size + 2 BORDER)^2 scene as COGs + STAC items under ``root``; returns its GeoBox."""
    from xfusion.testing import synthetic_scene, write_stac_catalog

    n = size + 2 * BORDER
    scene, coarse = synthetic_scene(
        (n, n), times=3, fine_times=[0, 2], kind="lst", seed=SEED, cloud_fraction=0.0,
        coarse_cloud_fraction=0.0, coarse_native=True, chunks={"time": 1, "y": 2048, "x": 2048},
    )  # fmt: skip
    assert str(scene.time.values[1])[:10] == TARGET
    write_stac_catalog((scene, coarse), root, href_base=server.url)
    return scene.odc.geobox


def _aoi(scene_gbox: Any, size: int) -> Any:
    """The AOI: ``size`` x ``size`` pixels inside the scene, BORDER pixels from its corner."""
    return scene_gbox[BORDER : BORDER + size, BORDER : BORDER + size]


def _job(server: Any, gbox: Any, store: Path, *, method: str, tile: int,
         weights: str | None = None) -> Any:  # fmt: skip
    import xfusion

    bb = gbox.extent.boundingbox
    params = {"preset": "lst"} if method == "starfm" else {}
    return xfusion.Job(
        method=method, params=params, weights=weights, store=str(store), time=PERIOD,
        targets=[TARGET], bbox=(bb.left, bb.bottom, bb.right, bb.top), bbox_crs="EPSG:32633",
        crs="EPSG:32633", anchor="edge", tile=tile, url=server.stac_url, retries=0,
    )  # fmt: skip


def _margin(job: Any) -> int:
    import xfusion

    return int(xfusion.jobs.plan(job).margin)


def _run_once(job: Any, client: Any) -> tuple[float, Any]:
    import xfusion

    t0 = time.perf_counter()
    report = xfusion.run(job, client=client, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    if not report.ok or report.tiles_written == 0:
        raise RuntimeError(f"benchmark run failed: {report}")
    return wall, report


def _cluster(n: int) -> Any:
    import xfusion

    return xfusion.cluster("local", n_workers=n, threads_per_worker=1, set_as_default=False,
                           dashboard_address=None)  # fmt: skip


def pipeline(server: Any, gbox: Any, tmp: Path, *, method: str, tile: int, layout: str,
             weights: str | None = None, repeats: int = 2) -> dict[str, Any]:  # fmt: skip
    """End-to-end px/s of ``xfusion.run`` on the AOI ``gbox``: ``layout`` "local", "1w" or "2w".

    A fresh cluster per layout; a warm-up job (one small tile) first, so that numba/torch
    start-up is not timed (it is paid once per worker, not per tile).
    """
    # one store per repeat: xfusion.run's task keys derive from the job, and a key still
    # held by the scheduler from the previous identical run would return that run's result
    jobs = [_job(server, gbox, tmp / f"{method}-{layout}-{i}.zarr", method=method, tile=tile,
                 weights=weights) for i in range(repeats)]  # fmt: skip
    job = jobs[0]
    warm = _job(server, gbox[:128, :128], tmp / f"warm-{method}-{layout}.zarr", method=method,
                tile=128, weights=weights)  # fmt: skip
    client = None if layout == "local" else _cluster(int(layout[0]))
    try:
        if client is not None:
            client.run(_warm, method, weights)  # every worker, not only the one a task hits
        else:
            _warm(method, weights)
        _run_once(warm, client)
        if client is not None:
            client.run(_reset_peak)
        before = _worker_stats(client) if client is not None else {}
        drv0 = _stats()[1]
        walls, load = [], []
        for i in range(repeats):
            load.append(_load())
            wall, report = _run_once(jobs[i], client)
            walls.append(wall)
        drv = _stats()[1] - drv0
        after = _worker_stats(client) if client is not None else {}
    finally:
        if client is not None:
            client.close()
    best = min(walls)
    cpu = {k: after[k][1] - before[k][1] for k in after}
    cpu_all = sum(cpu.values()) + drv
    row = {
        "benchmark": f"run_{method}_{layout}",
        "method": method, "layout": layout, "aoi_px": int(np.prod(gbox.shape)), "tile": tile,
        "tiles": int(report.tiles_written), "margin": _margin(job),
        "margin_overhead": ((tile + 2 * _margin(job)) / tile) ** 2,
        "output_px": int(report.pixels), "best_s": best, "all_s": [round(w, 2) for w in walls],
        "px_s": report.pixels / best,
        "cores_used": cpu_all / sum(walls),
        "driver_cores_used": drv / sum(walls),
        "load_avg_1min": float(np.mean(load)),
    }  # fmt: skip
    if client is not None:
        row["peak_rss_gb_per_worker"] = [round(after[k][0], 3) for k in sorted(after)]
        row["cores_used_per_worker"] = [round(cpu[k] / sum(walls), 2) for k in sorted(cpu)]
    return row


def _aoi_cube(server: Any, gbox: Any) -> Any:
    """The AOI cube, read once from the loopback STAC API and loaded into memory."""
    import xfusion

    cube = xfusion.load_pair(
        fine="landsat-c2-l2", coarse="modis-11A1-061", time=list(PERIOD), geobox=gbox,
        url=server.stac_url, chunks={"time": 1, "y": 2048, "x": 2048},
    )  # fmt: skip
    cube = cube.load()
    days = cube.time.values.astype("datetime64[D]").astype("datetime64[ns]")
    return cube.assign_coords(time=days)


def _method(cube: Any, method: str, weights: str | None) -> Any:
    import xfusion

    kw = {"fine": "fine", "coarse": "coarse", "targets": [TARGET]}
    if method == "starfm":
        return xfusion.starfm(cube, preset="lst", pairs="bracket", **kw)
    return xfusion.sttfn(cube, weights=weights, **kw)


def kernel(cube: Any, *, method: str, weights: str | None = None, chunk: int = 1024,
           repeats: int = 2) -> dict[str, Any]:  # fmt: skip
    """The method alone on the in-memory AOI cube: eager numpy and in-memory dask chunks."""
    px = int(cube.sizes["y"] * cube.sizes["x"])
    out: dict[str, Any] = {"benchmark": f"kernel_{method}", "method": method, "aoi_px": px}
    for name, c in (("numpy", cube), (f"dask{chunk}", cube.chunk({"y": chunk, "x": chunk}))):
        _method(c, method, weights).compute()  # warm-up (numba cache, torch)
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = _method(c, method, weights).compute()
            walls.append(time.perf_counter() - t0)
        assert float(np.isfinite(res["fine"].values).mean()) > 0.99
        out[f"px_s_{name}"] = px / min(walls)
    out["px_s"] = max(v for k, v in out.items() if k.startswith("px_s_"))
    out["load_avg_1min"] = _load()
    return out


def train_weights(path: Path, *, epochs: int = 2) -> str:
    """Half-width STTFN nets trained once (general regime) on a small separate scene."""
    import xfusion
    from xfusion.testing import synthetic_scene

    train = synthetic_scene((128, 128), seed=100, times=3, fine_times=[0, 1, 2],
                            cloud_fraction=0.0, coarse_cloud_fraction=0.0)  # fmt: skip
    xfusion.train_sttfn(train, fine="fine", coarse="coarse", out=path, arch_params=HALF,
                        epochs=epochs, patches=32, patch_size=32, device="cpu", seed=0)  # fmt: skip
    return str(path)


# --------------------------------------------------------------------------------------------
# one tile, phase by phase
def profile_tile(server: Any, gbox: Any, tmp: Path, *, method: str, tile: int,
                 weights: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Time the phases of one tile task (as in ``runner._run_tile``), local threads.

    The tile is the AOI's (0, 0) tile (its margin reads real pixels: the AOI lies inside the
    scene). Every phase is run after one warm-up of the whole task.
    """
    import dask
    import pystac

    from xfusion.jobs import runner as R
    from xfusion.stac import load_pair, sign_items

    job = _job(server, gbox, tmp / f"profile-{method}.zarr", method=method, tile=tile,
               weights=weights)  # fmt: skip
    pl = R.plan(job)
    times = R._target_times(job, pl)
    R._open_or_create(job, pl, times, True)
    t = (0, 0)
    ph: dict[str, float] = {}

    t0 = time.perf_counter()
    fp = pl.load_geobox(*t).extent.to_crs("EPSG:4326")
    found = {r: R._search(job, r, R._lonlat_bbox(fp)) for r in ("fine", "coarse")}
    ph["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = {r: sign_items([it for it in v if R._intersects(it, fp)]) for r, v in found.items()}
    lg = pl.load_geobox(*t)
    ys, xs = pl.tile_slices(*t)
    payload = {
        "job": {**job.to_dict(), "time": tuple(job.time)},
        "fine_items": [it.to_dict() for it in sel["fine"]],
        "coarse_items": [it.to_dict() for it in sel["coarse"]],
        "shape": tuple(int(s) for s in lg.shape), "affine": lg.affine,
        "crs": str(lg.crs.to_wkt()), "margin": pl.margin,
        "tile_shape": (ys.stop - ys.start, xs.stop - xs.start), "dims": pl.dims,
        "variables": list(pl.variables), "times": [str(x) for x in times.astype("datetime64[D]")],
        "region": ((ys.start, ys.stop), (xs.start, xs.stop)), "write_block": job.chunk,
        "store": job.store, "threads": _cpus(),
    }  # fmt: skip
    ph["payload"] = time.perf_counter() - t0

    res = R.run_tile(payload)  # warm-up
    assert res["status"] == "written", res
    t0 = time.perf_counter()
    res = R.run_tile(payload)
    task_s = time.perf_counter() - t0

    m, (th, tw) = pl.margin, payload["tile_shape"]
    crop = {"y": slice(m, m + th), "x": slice(m, m + tw)}
    with dask.config.set(scheduler="threads", num_workers=_cpus()):
        t0 = time.perf_counter()
        fine_items = [pystac.Item.from_dict(d) for d in payload["fine_items"]]
        coarse_items = [pystac.Item.from_dict(d) for d in payload["coarse_items"]]
        cube = load_pair(
            fine=fine_items, coarse=coarse_items, geobox=lg, time=list(job.time),
            chunks={"time": 1, "y": min(max(lg.shape), 2048), "x": min(max(lg.shape), 2048)},
            retries=1, retry_delay=0.2,
        )  # fmt: skip
        days = cube["time"].values.astype("datetime64[D]").astype("datetime64[ns]")
        cube = cube.assign_coords(time=days)
        obs = np.asarray(cube["observed_fine"].values) | np.asarray(cube["observed_coarse"].values)
        ph["load_pair_graph"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cube = cube.isel(time=np.flatnonzero(obs)).persist()
        ph["cog_reads"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dask.compute(*[cube[n].isel(crop).notnull().mean(("y", "x")).data
                       for n in ("fine", "coarse")])  # fmt: skip
        ph["clear_fraction"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = _method(cube, method, weights)["fine"].isel(crop).compute()
        ph["method"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = out.to_dataset(name="fine").reindex(time=times).astype("float32")
        ds = ds.drop_vars(list(ds.coords)).chunk({"time": 1, "y": job.chunk, "x": job.chunk})
        region = {"time": slice(0, len(times)), "y": slice(ys.start, ys.stop),
                  "x": slice(xs.start, xs.stop)}  # fmt: skip
        ds.to_zarr(job.store, mode="r+", region=region, consolidated=False, zarr_format=3)
        ph["zarr_write"] = time.perf_counter() - t0
        # the same method with the margin culled: only the interior chunk is computed
        culled = cube.chunk({"y": (m, th, lg.shape[0] - m - th), "x": (m, tw, lg.shape[1] - m - tw)})
        t0 = time.perf_counter()
        out2 = _method(culled, method, weights)["fine"].isel(crop).compute()
        method_culled = time.perf_counter() - t0
    same = bool(np.array_equal(out.values, out2.values, equal_nan=True))
    px = th * tw
    row: dict[str, Any] = {"benchmark": f"profile_tile_{method}", "method": method,
                           "tile": tile, "margin": m, "tile_px": px, "run_tile_s": task_s}
    row.update({f"{k}_s": v for k, v in ph.items()})
    total = sum(ph.values())
    row["sum_of_phases_s"] = total
    row.update({f"share_{k}": v / total for k, v in ph.items()})
    row["method_margin_culled_s"] = method_culled
    row["margin_culled_output_identical"] = same
    row["px_s_run_tile"] = px / task_s
    row["px_s_method_only"] = px / ph["method"]
    row["load_avg_1min"] = _load()
    return row


# --------------------------------------------------------------------------------------------
# memory
def memory(server: Any, scene_gbox: Any, tmp: Path, *, tile: int,
           factors: tuple[int, ...] = (1, 4, 16)) -> list[dict[str, Any]]:  # fmt: skip
    """Peak RSS per worker (fresh 2-worker cluster) as the AOI grows, tile fixed (STARFM)."""
    rows = []
    for f in factors:
        side = tile * round(f**0.5)
        gbox = _aoi(scene_gbox, side)
        job = _job(server, gbox, tmp / f"mem{f}.zarr", method="starfm", tile=tile)
        client = _cluster(2)
        try:
            client.run(_reset_peak)
            idle = _worker_stats(client)
            wall, report = _run_once(job, client)
            after = _worker_stats(client)
        finally:
            client.close()
        rows.append({
            "benchmark": "run_memory", "method": "starfm", "aoi_factor": f, "aoi_px": side * side,
            "tile": tile, "tiles": int(report.tiles_written),
            "idle_rss_gb_per_worker": [round(idle[k][0], 3) for k in sorted(idle)],
            "peak_rss_gb_per_worker": [round(after[k][0], 3) for k in sorted(after)],
            "peak_rss_gb_max": max(v[0] for v in after.values()),
            "wall_s": wall, "px_s": report.pixels / wall, "load_avg_1min": _load(),
        })  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
def run(quick: bool = False, repeats: int = 2) -> list[dict[str, Any]]:
    """All rows. Full: 2048^2 AOI in 1024 px tiles (STARFM), 1024^2 (STTFN), memory 512 px
    tiles at 1x/4x/16x. ``quick``: 512^2 / 256^2 AOIs in 256 px tiles, one repeat."""
    from xfusion.testing import serve_stac_api

    if quick:
        s_aoi, s_tile, t_aoi, t_tile, m_tile, m_f, repeats = 512, 256, 256, 256, 256, (1, 4), 1
    else:
        s_aoi, s_tile, t_aoi, t_tile, m_tile, m_f = 2048, 1024, 1024, 1024, 512, (1, 4, 16)
    size = max(s_aoi, t_aoi, m_tile * round(max(m_f) ** 0.5))
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="xfusion-bench-run-"))
    try:
        root = tmp / "stac"
        root.mkdir()
        with serve_stac_api(root) as server:
            t0 = time.perf_counter()
            scene_gbox = _write_catalog(root, size, server)
            setup = {"benchmark": "run_setup", "scene_px": int(np.prod(scene_gbox.shape)),
                     "catalog_write_s": time.perf_counter() - t0, "cpus": _cpus(),
                     "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
            t0 = time.perf_counter()
            weights = train_weights(tmp / "sttfn-half.safetensors", epochs=1 if quick else 2)
            setup["sttfn_training_s"] = time.perf_counter() - t0
            rows.append(setup)

            # 1. + 2. STARFM: the kernel, then the pipeline in three layouts
            g = _aoi(scene_gbox, s_aoi)
            kern = kernel(_aoi_cube(server, g), method="starfm", chunk=s_tile, repeats=repeats)
            rows.append(kern)
            runs = {lay: pipeline(server, g, tmp, method="starfm", tile=s_tile, layout=lay,
                                  repeats=repeats) for lay in ("local", "1w", "2w")}  # fmt: skip
            for r in runs.values():
                r["efficiency_vs_kernel"] = r["px_s"] / kern["px_s"]
                rows.append(r)
            rows.append({
                "benchmark": "run_starfm_scaling", "px_s_local": runs["local"]["px_s"],
                "px_s_1w": runs["1w"]["px_s"], "px_s_2w": runs["2w"]["px_s"],
                "ratio_2w_over_1w": runs["2w"]["px_s"] / runs["1w"]["px_s"],
                "kernel_px_s": kern["px_s"],
                "efficiency_local": runs["local"]["efficiency_vs_kernel"],
                "efficiency_2w": runs["2w"]["efficiency_vs_kernel"],
            })  # fmt: skip
            rows.append(profile_tile(server, g, tmp, method="starfm", tile=s_tile))

            # 2. STTFN (trained weights): kernel and pipeline
            g = _aoi(scene_gbox, t_aoi)
            kern = kernel(_aoi_cube(server, g), method="sttfn", weights=weights, chunk=512,
                          repeats=repeats)  # fmt: skip
            rows.append(kern)
            for lay in ("local", "2w"):
                r = pipeline(server, g, tmp, method="sttfn", tile=t_tile, layout=lay,
                             weights=weights, repeats=repeats)  # fmt: skip
                r["efficiency_vs_kernel"] = r["px_s"] / kern["px_s"]
                rows.append(r)
            rows.append(profile_tile(server, g, tmp, method="sttfn", tile=t_tile,
                                     weights=weights))  # fmt: skip

            # 3. memory
            rows.extend(memory(server, scene_gbox, tmp, tile=m_tile, factors=m_f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small AOIs, one repeat (about a minute)")
    p.add_argument("--json", default=os.path.join("bench_out", "bench_run.json"),
                   help="where to write the rows (default bench_out/bench_run.json)")
    a = p.parse_args()
    from bench_starfm import _table  # the same row printer (benchmarks/ is on sys.path)

    result = run(quick=a.quick)
    print(_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"\nwrote {a.json}")
