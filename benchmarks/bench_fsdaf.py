"""FSDAF benchmarks: kernel speed next to STARFM, peak RSS streamed to Zarr, accuracy.

* ``speed``: the FSDAF computation on in-memory arrays (ISODATA fit and classification,
  global statistics, steps 3-12 on the FSDAF blocks, step 13), stage by stage, next to the
  STARFM numba kernel (USDA settings: 50 px window, reference mode) on the same data:
  1200 x 1200 one band and 600 x 600 six bands (synthetic reflectance x1e4, coarse pixels of
  16 x 16), 2 threads, best of ``repeats``.
* ``stream``: peak RSS of a 10000 x 10000 one-band FSDAF prediction streamed to Zarr (lazy
  synthetic inputs, 1024 px chunks), in a fresh subprocess.
* ``accuracy``: Kranj (pair DOY 068 -> 077 and 093) and synthetic600, per band RMSE and SSIM
  of FSDAF next to STARFM, the naive baselines and, where /work/refs has it, the FSDAF Python
  port (run on the same inputs, with its own ISODATA; FSDAF is also run with the port's
  class map).

Usage: ``python benchmarks/bench_fsdaf.py {speed,stream,accuracy,all} [--json PATH]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():  # a git worktree next to the main checkout
    DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
                DATA)  # fmt: skip
PORT = Path("/work/refs/bin/ref-fsdaf-py")
RSS_LIMIT_GB = 2.0
SIX = ["blue", "green", "red", "nir", "swir16", "swir22"]


def _load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _best(fn: Any, repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time (all threads) of ``fn`` after a warm-up."""
    fn()  # warm-up (numba compile / cache load)
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


# ---------------------------------------------------------------------------------------------
# speed


def _speed_data(size: int, bands: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from xfusion.testing import synthetic_scene

    sc = synthetic_scene((size, size), kind="reflectance", bands=bands, times=3,
                         fine_times=[0, 2], coarse_factor=16, psf_sigma=0, cloud_fraction=0.0,
                         coarse_cloud_fraction=0.0, seed=3)  # fmt: skip
    f1 = np.stack([sc[f"fine_{b}"].values[0] for b in bands]).astype(np.float64) * 1e4
    c1 = np.stack([sc[f"coarse_{b}"].values[0] for b in bands]).astype(np.float64) * 1e4
    c2 = np.stack([sc[f"coarse_{b}"].values[1] for b in bands]).astype(np.float64) * 1e4
    return f1, c1, c2


def _fsdaf_stages(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, threads: int) -> dict[str, float]:
    """Every step of the method's in-memory path, timed (same calls as xfusion.fsdaf)."""
    from dataclasses import replace

    from xfusion.methods import _fsdaf_graph as G
    from xfusion.methods import fsdaf as F
    from xfusion.methods._fsdaf_kernel import ISODATA_SAMPLE

    params = replace(F.FSDAF_PRESETS["zhu"], scale_factor=16)
    ny, nx = f1.shape[1:]
    t = {}
    c_start = time.process_time()
    t0 = time.perf_counter()
    sample, _ = G._isodata_sample(f1, ISODATA_SAMPLE)
    centers = G._fit_centers(sample, params=params, n_total=ny * nx)
    lab = G._classify_block(f1, centers)
    t["classes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    std = G._global_std(f1, "")
    k = G._n_classes(lab, "")
    t["global_stats"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ch = G._change_numpy(f1, c1, c2, lab, params=params, s=16, class_change=None,
                         with_hi=False, threads=threads)  # fmt: skip
    t["blocks_steps_3_12"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    G._predict_task(f1, ch, c1, c2, lab, std, k, halo_sides=(0, 0, 0, 0), params=params,
                    threads=threads)  # fmt: skip
    t["similar_pixels_step_13"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["cpu_total"] = time.process_time() - c_start
    return t


def speed(threads: int = 2, repeats: int = 3) -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_limits

    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block

    rows = []
    for size, bands in ((1200, ["red"]), (600, SIX)):
        f1, c1, c2 = _speed_data(size, bands)
        thr = [similarity_threshold(f1[b]) for b in range(len(bands))]

        def starfm(f1: np.ndarray = f1, c1: np.ndarray = c1, c2: np.ndarray = c2,
                   thr: list[float] = thr) -> None:  # fmt: skip
            for b in range(len(thr)):
                starfm_block(f1[b], c1[b], c2[b], window=50, thresholds=thr[b],
                             distance_scale=25.0, threads=threads)  # fmt: skip

        with threadpool_limits(threads):
            _fsdaf_stages(f1, c1, c2, threads)  # warm-up
            runs = [_fsdaf_stages(f1, c1, c2, threads) for _ in range(repeats)]
            st_best, st_cpu = _best(starfm, repeats)
        best = min(runs, key=lambda r: r["total"])
        best_cpu = min(r["cpu_total"] for r in runs)
        rows.append({
            "benchmark": "fsdaf_speed", "size": size, "bands": len(bands), "threads": threads,
            "fsdaf_s": best["total"], "fsdaf_stages_s": best,
            "fsdaf_px_s": size * size / best["total"], "starfm_kernel_s": st_best,
            "ratio_fsdaf_vs_starfm": best["total"] / st_best,
            "fsdaf_cpu_s": best_cpu, "starfm_cpu_s": st_cpu,
            "cpu_ratio_fsdaf_vs_starfm": best_cpu / st_cpu,
            "step13_vs_starfm": best["similar_pixels_step_13"] / st_best,
            "load_avg": _load_avg(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "note": "FSDAF: w=20 (41x41 window), 20 similar pixels, s=16, 30-cell blocks; "
                    "STARFM: starfm_block per band, 50 px window, reference mode",
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# streaming memory


def _stream(size: int, chunk: int, store: str) -> dict[str, Any]:
    from xfusion.io import to_zarr
    from xfusion.methods.fsdaf import fsdaf
    from xfusion.testing import synthetic_scene

    t0 = time.perf_counter()
    scene = synthetic_scene(
        (size, size), kind="reflectance", bands=["red"], times=2, fine_times=[0],
        cloud_fraction=0.0, coarse_cloud_fraction=0.0, coarse_factor=16, seed=0,
        chunks={"time": 1, "y": chunk, "x": chunk},
    )  # fmt: skip
    cube = scene[["fine_red", "coarse_red"]]
    pred = fsdaf(cube, fine="fine_red", coarse="coarse_red", preset="reflectance")
    to_zarr(pred, store, mode="w", progress=False)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"benchmark": "fsdaf_stream_rss", "size": size, "chunk": chunk,
            "elapsed_s": elapsed, "px_s_including_input_generation": size * size / elapsed,
            "peak_rss_gb": rss, "limit_gb": RSS_LIMIT_GB, "under_limit": rss < RSS_LIMIT_GB,
            "load_avg_end": _load_avg(),
            "note": "lazy synthetic inputs (s = 16) -> xfusion.fsdaf (reflectance preset, "
                    "w=20, ISODATA) -> xfusion.io.to_zarr, one process; ru_maxrss"}  # fmt: skip


def stream_rss(size: int = 10000, chunk: int = 1024) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--stream", str(size), str(chunk),
             os.path.join(tmp, "fsdaf.zarr")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# accuracy


def _read(path: str | Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        a = src.read().astype(np.float64)
        nd = src.nodata
    if nd is not None:
        a[a == nd] = np.nan
    a[a < -1e30] = np.nan
    return a


def _metrics(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    import xarray as xr

    from xfusion.metrics import evaluate

    out: dict[str, list[float]] = {"rmse": [], "ssim": []}
    for b in range(truth.shape[0]):
        p = xr.DataArray(np.where(mask, pred[b], np.nan), dims=("y", "x"))
        t = xr.DataArray(np.where(mask, truth[b], np.nan), dims=("y", "x"))
        m = evaluate(p, t, metrics=("rmse", "ssim"))
        out["rmse"].append(float(m["rmse"].values.ravel()[0]))
        out["ssim"].append(float(m["ssim"].values.ravel()[0]))
    return out


def _run_port(f1: Path, c1: Path, c2: Path, out: Path, scale: int) -> Path | None:
    if not PORT.exists():
        return None
    if not out.exists():
        tmp = out.with_suffix(".tmpdir")
        subprocess.run([str(PORT), str(f1), str(c1), str(c2), str(out), "--scale", str(scale),
                        "--keep-temp", str(tmp)], check=True, capture_output=True)  # fmt: skip
    return out


def _port_classes(out: Path) -> np.ndarray | None:
    """The port's ISODATA map (one block covers the image when it is <= 480 + 2s px)."""
    cls = out.with_suffix(".tmpdir") / "class1.tif"
    return _read(cls)[0].astype(np.int64) if cls.exists() else None


def _cube(f1: np.ndarray, c1: np.ndarray, c2s: list[np.ndarray], times: list[str]) -> Any:
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from xfusion.cube import from_numpy

    nb, ny, nx = f1.shape
    data, obs = {}, {}
    nt = 1 + len(c2s)
    for b in range(nb):
        fine = np.full((nt, ny, nx), np.nan, np.float32)
        fine[0] = f1[b]
        data[f"fine{b}"] = fine
        data[f"coarse{b}"] = np.stack([c1[b], *(c[b] for c in c2s)]).astype(np.float32)
        obs[f"fine{b}"] = [True] + [False] * len(c2s)
        obs[f"coarse{b}"] = [True] * nt
    gbox = GeoBox((ny, nx), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    return from_numpy(data, geobox=gbox, times=times, observed=obs)


def _predict_all(cube: Any, nb: int, fsdaf_runs: dict[str, dict[str, Any]],
                 starfm_kw: dict[str, Any]) -> dict[str, np.ndarray]:  # fmt: skip
    import xfusion
    from xfusion.methods.fsdaf import fsdaf

    fine = [f"fine{b}" for b in range(nb)]
    coarse = [f"coarse{b}" for b in range(nb)]
    preds: dict[str, np.ndarray] = {}
    for name, kw in fsdaf_runs.items():
        out = fsdaf(cube, fine=fine, coarse=coarse, **kw)
        preds[name] = np.stack([out[f].values for f in fine], axis=1)  # (T, B, y, x)
    st = xfusion.starfm(cube, fine=fine, coarse=coarse, **starfm_kw)
    preds["STARFM (usda)"] = np.stack([st[f].values for f in fine], axis=1)
    f1 = np.stack([cube[f].values[0] for f in fine])
    c = np.stack([cube[x].values for x in coarse], axis=1)
    preds["fine at pair date"] = np.broadcast_to(f1, preds["STARFM (usda)"].shape)
    preds["coarse at target"] = c[1:]
    preds["fine + coarse change"] = f1[None] + c[1:] - c[0][None]
    return preds


def accuracy(port: bool = True) -> dict[str, Any]:
    res: dict[str, Any] = {"load_avg": _load_avg()}
    tmp = Path(tempfile.gettempdir()) / "xfusion_bench_fsdaf"
    tmp.mkdir(exist_ok=True)

    # ---- Kranj ------------------------------------------------------------------------
    k = DATA / "kranj"
    if k.is_dir():
        def ls(kind: str, doy: str) -> Path:
            return Path(glob.glob(str(k / kind / f"2020{doy}_*.tif"))[0])

        f1 = _read(ls("landsat/filled", "068"))
        cs = {d: _read(ls("modis/filled", d)) * 1e4 for d in ("068", "077", "093")}
        truth = {d: _read(ls("landsat/unfilled", d)) for d in ("077", "093")}
        cube = _cube(f1, cs["068"], [cs["077"], cs["093"]],
                     ["2020-03-08", "2020-03-17", "2020-04-02"])  # fmt: skip
        runs = {f"FSDAF s={s}": {"scale_factor": s} for s in (16, 8, 4)}
        runs["FSDAF s=4 w=10"] = {"scale_factor": 4, "half_window": 10}
        ports: dict[str, np.ndarray] = {}
        if port and PORT.exists():
            i16 = Path("/work/refs/data/kranj/i16")
            for d in ("077", "093"):
                for s in (16, 8, 4):
                    out = _run_port(i16 / "L_2020068.tif", i16 / "M_2020068.tif",
                                    i16 / f"M_2020{d}.tif", tmp / f"port_kranj_{d}_s{s}.tif", s)  # fmt: skip
                    if out is not None:
                        ports[f"{d} {s}"] = _read(out)
                        cls = _port_classes(out)
                        if cls is not None and d == "077":
                            runs[f"FSDAF s={s}, port's classes"] = {"scale_factor": s,
                                                                     "classes": cls}  # fmt: skip
        preds = _predict_all(cube, 6, runs, {"preset": "usda", "max_search_distance": 600})
        if ports:
            for s in (16, 8, 4):
                if f"077 {s}" in ports:
                    preds[f"FSDAF Python port s={s}"] = np.stack([ports[f"077 {s}"],
                                                                  ports[f"093 {s}"]])  # fmt: skip
        table: dict[str, Any] = {}
        for t, d in enumerate(("077", "093")):
            tr = truth[d]
            mask = np.all(np.isfinite(tr), axis=0)
            for p in preds.values():
                mask &= np.all(np.isfinite(p[t]), axis=0)
            table[d] = {name: _metrics(p[t], tr, mask) for name, p in preds.items()}
            table[d]["_pixels"] = int(mask.sum())
        res["kranj"] = table
        if port and PORT.exists():
            res["kranj_parity_40x40"] = _kranj_parity(tmp, truth)

    # ---- synthetic600 -----------------------------------------------------------------
    s6 = DATA / "synthetic600"
    if s6.is_dir():
        f1, c1, c2 = (_read(s6 / f"{n}.tif") for n in ("fine_t1", "coarse_t1", "coarse_t2"))
        truth6 = _read(s6 / "fine_t2_truth.tif")
        cube = _cube(f1, c1, [c2], ["2001-01-01", "2001-01-17"])
        runs = {"FSDAF (zhu, s=16)": {"scale_factor": 16}}  # coarse pixels of ~16.2 px
        port_out = None
        if port and PORT.exists():
            port_out = _run_port(s6 / "fine_t1.tif", s6 / "coarse_t1.tif", s6 / "coarse_t2.tif",
                                 tmp / "port_syn600_s16.tif", 16)  # fmt: skip
        preds = _predict_all(cube, 1, runs, {"preset": "usda"})
        if port_out is not None:
            preds["FSDAF Python port s=16"] = _read(port_out)[None]
            # the port classifies each block: its maps do not join into one image; run
            # FSDAF with the port's map of the first block where it covers
        mask = np.all(np.isfinite(truth6), axis=0)
        for p in preds.values():
            mask &= np.all(np.isfinite(p[0]), axis=0)
        res["synthetic600"] = {name: _metrics(p[0], truth6, mask) for name, p in preds.items()}
        res["synthetic600"]["_pixels"] = int(mask.sum())
    return res


def _kranj_parity(tmp: Path, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """FSDAF and the port on the 40 x 40 corner of Kranj (whole cells at s = 4 and 8, so the
    port's pooling of remainder pixels into cell 0 does not apply), with the port's classes."""
    import rasterio
    from rasterio.windows import Window

    from xfusion.methods.fsdaf import fsdaf

    i16 = Path("/work/refs/data/kranj/i16")
    crop = {}
    for n in ("L_2020068", "M_2020068", "M_2020077", "M_2020093"):
        dst = tmp / f"crop40_{n}.tif"
        with rasterio.open(i16 / f"{n}.tif") as src:
            prof = src.profile.copy()
            win = Window(0, 0, 40, 40)
            a = src.read(window=win)
            prof.update(width=40, height=40, transform=src.window_transform(win))
        if not dst.exists():
            with rasterio.open(dst, "w", **prof) as d:
                d.write(a)
        crop[n] = np.where(a == -9999, np.nan, a).astype(np.float64)
    cube = _cube(crop["L_2020068"], crop["M_2020068"], [crop["M_2020077"], crop["M_2020093"]],
                 ["2020-03-08", "2020-03-17", "2020-04-02"])  # fmt: skip
    fine = [f"fine{b}" for b in range(6)]
    coarse = [f"coarse{b}" for b in range(6)]
    out: dict[str, Any] = {}
    for s in (4, 8):
        ports = []
        for d in ("077", "093"):
            o = _run_port(tmp / "crop40_L_2020068.tif", tmp / "crop40_M_2020068.tif",
                          tmp / f"crop40_M_2020{d}.tif", tmp / f"port_crop40_{d}_s{s}.tif", s)  # fmt: skip
            assert o is not None
            ports.append(_read(o))
        cls = _port_classes(tmp / f"port_crop40_077_s{s}.tif")
        pred = fsdaf(cube, fine=fine, coarse=coarse, scale_factor=s, classes=cls)
        for t, d in enumerate(("077", "093")):
            ours = np.stack([pred[f].values[t] for f in fine])
            tr = truth[d][:, :40, :40]
            mask = np.all(np.isfinite(tr), axis=0)
            diff = np.abs(ours - ports[t])
            out[f"s={s} 068->{d}"] = {
                "rmse_fsdaf": float(np.mean(_metrics(ours, tr, mask)["rmse"])),
                "rmse_port": float(np.mean(_metrics(ports[t], tr, mask)["rmse"])),
                "max_abs_diff": float(np.nanmax(diff)), "mean_abs_diff": float(np.nanmean(diff)),
                "p99_abs_diff": float(np.nanpercentile(diff, 99)),
            }  # fmt: skip
    return out


def _print_accuracy(res: dict[str, Any]) -> None:
    def rows(table: dict[str, Any]) -> None:
        for name, m in table.items():
            if name.startswith("_"):
                continue
            r, s = m["rmse"], m["ssim"]
            print(f"  {name:34s} RMSE " + " ".join(f"{x:7.1f}" for x in r)
                  + f" | mean {np.mean(r):7.1f}   SSIM " + " ".join(f"{x:.3f}" for x in s)
                  + f" | mean {np.mean(s):.3f}")  # fmt: skip

    for d, table in res.get("kranj", {}).items():
        print(f"\nKranj 068 -> {d} ({table['_pixels']} px valid in all):")
        rows(table)
    for k, v in res.get("kranj_parity_40x40", {}).items():
        print(f"\nKranj 40x40, port's classes, {k}: " + ", ".join(f"{a} {b:.2f}" for a, b in v.items()))
    if "synthetic600" in res:
        print(f"\nsynthetic600 ({res['synthetic600']['_pixels']} px):")
        rows(res["synthetic600"])


def run(quick: bool = False, repeats: int = 3, threads: int = 2) -> list[dict[str, Any]]:
    """Speed (next to STARFM's kernel), streaming peak RSS and accuracy as rows for
    ``benchmarks/run.py`` (``quick``: one repeat, 2048 px streamed; the Python port only where
    it is installed)."""
    rows: list[dict[str, Any]] = [{"bench": "fsdaf speed", **r}
                                  for r in speed(threads, 1 if quick else repeats)]
    rows.append({"bench": "fsdaf stream", **stream_rss(2048 if quick else 10000,
                                                        512 if quick else 1024)})
    tables = dict(accuracy(port=False))
    tables.update({f"kranj 068->{d}": t for d, t in tables.pop("kranj", {}).items()})
    for scene, table in tables.items():
        if not isinstance(table, dict) or scene.startswith("kranj_parity"):
            continue
        for name, m in table.items():
            if isinstance(m, dict) and "rmse" in m:
                rows.append({"bench": f"fsdaf accuracy {scene}", "method": name,
                             "rmse_mean": float(np.mean(m["rmse"])),
                             "ssim_mean": float(np.mean(m["ssim"]))})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", default="all", choices=["speed", "stream", "accuracy", "all"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--no-port", action="store_true", help="do not run the FSDAF Python port")
    p.add_argument("--json", default=os.path.join("bench_out", "bench_fsdaf.json"))
    p.add_argument("--stream", nargs=3, metavar=("SIZE", "CHUNK", "STORE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stream:
        print(json.dumps(_stream(int(a.stream[0]), int(a.stream[1]), a.stream[2])))
        return
    out: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count(), "load_avg_start": _load_avg()}  # fmt: skip
    if a.what in ("speed", "all"):
        out["speed"] = speed(a.threads, a.repeats)
        for r in out["speed"]:
            print(f"{r['size']}^2 x {r['bands']} band(s): FSDAF {r['fsdaf_s']:.2f} s "
                  f"(stages {', '.join(f'{k} {v:.2f}' for k, v in r['fsdaf_stages_s'].items())}) | "
                  f"STARFM kernel {r['starfm_kernel_s']:.2f} s | ratio "
                  f"{r['ratio_fsdaf_vs_starfm']:.2f} (CPU s {r['fsdaf_cpu_s']:.2f} vs "
                  f"{r['starfm_cpu_s']:.2f}: {r['cpu_ratio_fsdaf_vs_starfm']:.2f}) | load "
                  f"{r['load_avg']}")  # fmt: skip
    if a.what in ("stream", "all"):
        out["stream"] = stream_rss(a.size)
        print(out["stream"])
    if a.what in ("accuracy", "all"):
        out["accuracy"] = accuracy(port=not a.no_port)
        _print_accuracy(out["accuracy"])
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(out, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
