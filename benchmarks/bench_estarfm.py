"""ESTARFM: kernel speed next to STARFM, parity and speed against the reference programs,
accuracy on Kranj, peak RSS of a large streamed run. Each section is a function returning rows.

* ``speed``: the numba kernel (``estarfm_block``, both variants) and the STARFM kernel
  (``starfm_block``, two pairs and one pair, window 50) on the SAME synthetic reflectance x1e4
  data, 1200 x 1200 one band and 600 x 600 six bands, 2 threads, timings interleaved (the
  machine is shared) and the best of ``repeats`` quoted; the ratio ESTARFM / STARFM.
* ``references``: when the reference programs are built (``/work/refs``, see
  ``/work/refs/README``; never part of this repository), parity of ``xfusion.estarfm`` with
  their outputs (Kranj 6 bands, synthetic600, their runs in ``/work/refs/out``) and the wall
  time of ImageFusion's ``if_fuse estarfm`` on synthetic600 next to ours, same machine, same
  run; Zhu's Python twin's time is quoted from ``/work/refs/out/timings.tsv`` (342 s: too slow
  to repeat).
* ``kranj``: RMSE and SSIM per band on the real Kranj scene (pairs DOY 068 and 093, predict
  077; MODIS x1e4) for ESTARFM (both variants), STARFM with both pairs and the naive baselines.
* ``stream``: peak RSS of a 10000 x 10000 one-band prediction streamed to Zarr (lazy synthetic
  inputs), in a fresh subprocess (``ru_maxrss``).

Usage: ``python benchmarks/bench_estarfm.py [speed|references|kranj|stream ...] [--quick]
[--json PATH] [--half-window W] [--stream-size N]``; with no section, all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("XFUSION_SHARED_DATA",
                        os.path.join(HERE, "..", "..", "shared", "data"))  # fmt: skip
REFS = os.environ.get("XFUSION_REFS", "/work/refs")
RSS_LIMIT_GB = 2.0


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)  # fmt: skip
    except OSError:  # pragma: no cover
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "load1_at_start": _load()}


# --------------------------------------------------------------------------------------------
# speed


def _synthetic(size: int, nb: int, seed: int = 0) -> list[np.ndarray]:
    """(F1, C1, F2, C2, C0) as (nb, size, size) float32, reflectance x1e4, from
    ``synthetic_scene`` (land-cover classes, MODIS-like coarse 16 x 16 blocks)."""
    from xfusion.testing import synthetic_scene

    bands = ["blue", "green", "red", "nir", "swir16", "swir22"][:nb]
    sc = synthetic_scene((size, size), kind="reflectance", bands=bands, times=3,
                         fine_times=[0, 2], cloud_fraction=0.0, coarse_cloud_fraction=0.0,
                         coarse_factor=16, seed=seed)  # fmt: skip
    get = lambda role, t: np.stack([sc[f"{role}_{b}"].values[t] * 1e4 for b in bands])
    return [get("fine", 0).astype(np.float32), get("coarse", 0).astype(np.float32),
            get("fine", 2).astype(np.float32), get("coarse", 2).astype(np.float32),
            get("coarse", 1).astype(np.float32)]  # fmt: skip


def _speed_case(size: int, nb: int, repeats: int, threads: int) -> dict[str, Any]:
    from xfusion.methods._estarfm_kernel import estarfm_block, thresholds_numpy
    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block

    f1, c1, f2, c2, c0 = arrs = _synthetic(size, nb)
    th = {v: thresholds_numpy(*arrs, variant=v, fill=-9999.0, num_class=4.0,
                              threshold_std="sample" if v == "zhu" else "population")
          for v in ("zhu", "imagefusion")}  # fmt: skip
    sth = [[similarity_threshold(f1[b]), similarity_threshold(f2[b])] for b in range(nb)]

    def est(variant: str, dtype: str = "float32") -> Any:
        return lambda: estarfm_block(*arrs, thresholds=th[variant], variant=variant,
                                     truncate=True, threads=threads, dtype=dtype)  # fmt: skip

    def sf(npairs: int) -> Any:
        def run() -> None:
            for b in range(nb):
                if npairs == 2:
                    starfm_block(np.stack([f1[b], f2[b]]), np.stack([c1[b], c2[b]]), c0[b],
                                 window=50, thresholds=sth[b], threads=threads)  # fmt: skip
                else:
                    starfm_block(f1[b], c1[b], c0[b], window=50, thresholds=sth[b][0],
                                 threads=threads)  # fmt: skip
        return run

    fns = {"estarfm_zhu": est("zhu"), "estarfm_imagefusion": est("imagefusion"),
           "estarfm_zhu_float64": est("zhu", "float64"),
           "starfm_2pairs": sf(2), "starfm_1pair": sf(1)}  # fmt: skip
    for fn in fns.values():  # warm-up: numba compile / cache load
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    load = _load()
    for _ in range(repeats):  # interleaved, so that load changes hit every case alike
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    px = size * size
    row = {"benchmark": "estarfm_kernel_speed", "size": size, "bands": nb, "threads": threads,
           "window_estarfm": 51, "window_starfm": 50, "load1": load}  # fmt: skip
    for k, t in best.items():
        row[f"{k}_s"] = t
        row[f"{k}_px_s"] = px / t
    row["ratio_zhu_vs_starfm_2pairs"] = best["estarfm_zhu"] / best["starfm_2pairs"]
    row["ratio_imagefusion_vs_starfm_2pairs"] = best["estarfm_imagefusion"] / best["starfm_2pairs"]
    row["ratio_zhu_float64_vs_starfm_2pairs"] = best["estarfm_zhu_float64"] / best["starfm_2pairs"]
    row["ratio_zhu_vs_starfm_1pair"] = best["estarfm_zhu"] / best["starfm_1pair"]
    return row


def speed(repeats: int = 3, threads: int = 2, cases: Any = ((1200, 1), (600, 6))) -> list[dict]:
    return [_speed_case(size, nb, repeats, threads) for size, nb in cases]


# --------------------------------------------------------------------------------------------
# reference programs


def _cube(paths: list[str]) -> Any:
    """Cube of F1, C1 (2001-01-01), C0 (2001-02-01), F2, C2 (2001-03-01) from GeoTIFFs; files
    without a CRS (Zhu's test data) are put on a dummy 30 m grid."""
    import rasterio

    from xfusion.cube import from_geotiffs, from_numpy

    f1, c1, f2, c2, c0 = paths
    with rasterio.open(f1) as src:
        has_crs = src.crs is not None
    if has_crs:
        return from_geotiffs(fine={"2001-01-01": f1, "2001-03-01": f2},
                             coarse={"2001-01-01": c1, "2001-03-01": c2, "2001-02-01": c0})  # fmt: skip
    from affine import Affine
    from odc.geo.geobox import GeoBox

    arr = {n: _read(p)[0] for n, p in zip(("f1", "c1", "f2", "c2", "c0"), paths, strict=True)}
    nb, ny, nx = arr["f1"].shape
    nan = np.full((nb, ny, nx), np.nan)
    data = {}
    for b in range(nb):
        data[f"fine_b{b + 1}"] = np.stack([arr["f1"][b], nan[b], arr["f2"][b]]).astype(np.float32)
        data[f"coarse_b{b + 1}"] = np.stack([arr["c1"][b], arr["c0"][b],
                                             arr["c2"][b]]).astype(np.float32)  # fmt: skip
    observed = {k: [True, not k.startswith("fine"), True] for k in data}
    gbox = GeoBox((ny, nx), Affine(30.0, 0, 500000, 0, -30.0, 4000000), "EPSG:32633")
    return from_numpy(data, geobox=gbox, times=["2001-01-01", "2001-02-01", "2001-03-01"],
                      observed=observed)  # fmt: skip  # fmt: skip


def _read(path: str) -> tuple[np.ndarray, Any]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read().astype(np.float64), src.nodata


def _parity(pred: Any, ref_path: str, *, zero_is_gap: bool = False) -> dict[str, Any]:
    ref, nd = _read(ref_path)
    p = np.stack([pred[v].values[0] for v in pred.data_vars])
    rv = np.isfinite(ref) & (ref > -1e38)
    if nd is not None:
        rv &= ref != nd
    if zero_is_gap:  # Zhu's programs write 0 where they predict nothing
        rv &= ref != 0
    pv = np.isfinite(p)
    both = pv & rv
    d = np.abs(p[both] - ref[both])
    return {"pixels": int(both.sum()), "exact": float(np.mean(d == 0)),
            "within_1": float(np.mean(d <= 1)), "max_abs_diff": float(d.max()),
            "same_gaps": bool(np.array_equal(pv, rv)),
            "gaps_xfusion": int((~pv).sum()), "gaps_reference": int((~rv).sum())}  # fmt: skip


def references(threads: int = 2) -> list[dict]:
    from xfusion.methods.estarfm import estarfm

    out_dir = os.path.join(REFS, "out")
    if not os.path.isdir(out_dir):
        return [{"benchmark": "estarfm_references", "skipped": f"no {out_dir}"}]
    k = os.path.join(REFS, "data", "kranj", "i16")
    kr = [os.path.join(k, f"{n}.tif") for n in
          ("L_2020068", "M_2020068", "L_2020093", "M_2020093", "M_2020077")]  # fmt: skip
    s = os.path.join(SHARED, "synthetic600")
    sy = [os.path.join(s, "fine_t1.tif"), os.path.join(s, "coarse_t1.tif"),
          os.path.join(s, "fine_t2_truth.tif"), os.path.join(s, "coarse_t2.tif"),
          os.path.join(REFS, "data", "synthetic600", "coarse_tmid.tif")]  # fmt: skip
    e = os.path.join(REFS, "data", "zhu_testdata", "estarfm")
    zt = [os.path.join(e, f"{n}.tif") for n in
          ("tm0524", "modis0524", "tm0812", "modis0812", "modis0711")]  # fmt: skip
    kw = {"fine": None, "coarse": None, "targets": "2001-02-01"}
    cases = [
        ("kranj i16, zhu (Python twin: population std, no truncation)", kr,
         {"threshold_std": "population", "truncate": False}, "estarfm_zhu_kranj_i16.tif", True),
        ("kranj i16, zhu, default truncation", kr, {"threshold_std": "population"},
         "estarfm_zhu_kranj_i16.tif", True),
        ("kranj i16, imagefusion preset (if_fuse --classes 4 --data-max 10000)", kr,
         {"preset": "imagefusion"}, "estarfm_if_spec_kranj_i16.tif", False),
        ("kranj i16, imagefusion as the R wrapper (classes 64^(1/6), Int16 range)", kr,
         {"preset": "imagefusion", "num_class": 64 ** (1 / 6), "data_range": (-32767, 32767)},
         "estarfm_if_kranj_i16.tif", False),
        ("synthetic600, zhu block=500 (Python twin)", sy,
         {"threshold_std": "population", "block": 500, "truncate": False},
         "estarfm_zhu_syn600.tif", True),
        ("synthetic600, zhu default (no blocks) vs the block-wise twin", sy,
         {"threshold_std": "population", "truncate": False}, "estarfm_zhu_syn600.tif", True),
        ("synthetic600, imagefusion preset", sy, {"preset": "imagefusion"},
         "estarfm_if_spec_syn600.tif", False),
        ("synthetic600, imagefusion as the R wrapper (classes 64, Int16 range)", sy,
         {"preset": "imagefusion", "num_class": 64.0, "data_range": (-32767, 32767)},
         "estarfm_if_syn600.tif", False),
        ("Zhu's test data (400 x 400, 3 bands), zhu block=500 (Python twin)", zt,
         {"threshold_std": "population", "block": 500, "truncate": False},
         "zhutest_estarfm_zhu.tif", True),
        ("Zhu's test data, imagefusion preset", zt, {"preset": "imagefusion"},
         "zhutest_estarfm_if_spec.tif", False),
        ("Zhu's test data, imagefusion as the R wrapper (classes 64^(1/3), Int16 range)", zt,
         {"preset": "imagefusion", "num_class": 4.0, "data_range": (-32767, 32767)},
         "zhutest_estarfm_if.tif", False),
    ]  # fmt: skip
    rows = []
    for label, paths, params, ref_name, zero_gap in cases:
        ref_path = os.path.join(out_dir, ref_name)
        if not (os.path.exists(ref_path) and all(os.path.exists(p) for p in paths)):
            rows.append({"benchmark": "estarfm_parity", "case": label, "skipped": "missing"})
            continue
        ds = _cube(paths)
        kw["fine"] = [v for v in ds.data_vars if v.startswith("fine")]
        kw["coarse"] = [v for v in ds.data_vars if v.startswith("coarse")]
        for dtype in ("float32", "float64"):
            pred = estarfm(ds, **kw, **params, dtype=dtype)
            rows.append({"benchmark": "estarfm_parity", "case": label, "dtype": dtype,
                         "reference": ref_name,
                         **_parity(pred, ref_path, zero_is_gap=zero_gap)})  # fmt: skip
    rows.append(_reference_speed(sy, threads))
    return rows


def _reference_speed(paths: list[str], threads: int) -> dict[str, Any]:
    """ImageFusion's if_fuse and our kernel on synthetic600, interleaved, same machine."""
    from xfusion.methods._estarfm_kernel import estarfm_block, thresholds_numpy

    exe = os.path.join(REFS, "bin", "ref-estarfm-imagefusion")
    row: dict[str, Any] = {"benchmark": "estarfm_vs_reference_speed",
                           "data": "synthetic600 (600 x 600, 1 band), imagefusion preset"}  # fmt: skip
    arrs = [_read(p)[0] for p in paths]
    th = thresholds_numpy(*arrs, variant="imagefusion", fill=-9999.0, num_class=4.0,
                          threshold_std="population")  # fmt: skip

    def ours(nthreads: int) -> float:
        t0 = time.perf_counter()
        estarfm_block(*arrs, thresholds=th, variant="imagefusion", change_min_fraction=0.002,
                      truncate=True, threads=nthreads, dtype="float32")  # fmt: skip
        return time.perf_counter() - t0

    ours(1)  # compile / cache load
    if os.path.exists(exe):
        with tempfile.TemporaryDirectory() as tmp:
            def theirs(nthreads: int) -> float:
                t0 = time.perf_counter()
                subprocess.run([exe, *paths, os.path.join(tmp, "o.tif"), "--classes", "4",
                                "--data-min", "0", "--data-max", "10000", "--threads",
                                str(nthreads), "--quiet"], check=True, capture_output=True)  # fmt: skip
                return time.perf_counter() - t0

            for n in (1, threads):
                row[f"imagefusion_{n}t_s"] = theirs(n)
                row[f"xfusion_{n}t_s"] = ours(n)
                row[f"speedup_{n}t"] = row[f"imagefusion_{n}t_s"] / row[f"xfusion_{n}t_s"]
    else:
        row["imagefusion"] = f"not built ({exe})"
        row[f"xfusion_{threads}t_s"] = ours(threads)
    tsv = os.path.join(REFS, "out", "timings.tsv")
    if os.path.exists(tsv):
        with open(tsv) as f:
            lines = f.read().splitlines()
        for line in lines:
            parts = line.split("\t")
            if parts[0] == "estarfm_zhu_syn600":
                row["zhu_python_twin_s_quoted"] = float(parts[1])
                row["zhu_python_twin_note"] = (f"timings.tsv of /work/refs (load {parts[5]}), "
                                               "zhu block=500, 1 process")  # fmt: skip
    row["load1"] = _load()
    return row


# --------------------------------------------------------------------------------------------
# accuracy on Kranj


def kranj() -> list[dict]:
    import xarray as xr

    from xfusion.cube import from_geotiffs
    from xfusion.methods.baseline import baseline
    from xfusion.methods.estarfm import estarfm
    from xfusion.methods.starfm import starfm
    from xfusion.metrics import ssim

    k = os.path.join(SHARED, "kranj")
    if not os.path.isdir(k):
        return [{"benchmark": "estarfm_kranj", "skipped": f"no {k}"}]
    land = os.path.join(k, "landsat", "filled")
    pick = {d: next(f for f in sorted(os.listdir(land)) if f.startswith(f"2020{d}"))
            for d in ("068", "077", "093")}  # fmt: skip
    day = {"068": "2020-03-08", "077": "2020-03-17", "093": "2020-04-02"}
    ds = from_geotiffs(
        fine={day[d]: os.path.join(land, pick[d]) for d in ("068", "093")},
        coarse={day[d]: os.path.join(k, "modis", "filled", f"2020{d}_18-04_kranj.tif")
                for d in ("068", "077", "093")},
    )  # fmt: skip
    fine = [v for v in ds.data_vars if v.startswith("fine")]
    coarse = [v for v in ds.data_vars if v.startswith("coarse")]
    for v in coarse:  # MODIS is reflectance 0..1, Landsat x1e4
        ds[v] = ds[v] * 1e4
    truth_ds = from_geotiffs(fine={day["077"]: os.path.join(land, pick["077"])},
                             coarse={day["077"]: os.path.join(land, pick["077"])})  # fmt: skip
    truth = truth_ds[[v for v in truth_ds.data_vars if v.startswith("fine")]].isel(time=0)
    kw = {"fine": fine, "coarse": coarse, "targets": day["077"]}
    preds = {
        "estarfm zhu (default preset)": estarfm(ds, **kw),
        "estarfm imagefusion preset": estarfm(ds, **kw, preset="imagefusion"),
        "estarfm zhu, float output (truncate=False)": estarfm(ds, **kw, truncate=False),
        # the 44 x 45 scene is smaller than USDA's 50 px window (starfm refuses it): 43 px
        "starfm, both pairs (usda preset, 650 m)": starfm(ds, **kw, pairs="bracket",
                                                          max_search_distance=650),
        "starfm, pair 068 (usda preset, 650 m)": starfm(ds, **kw, pairs="before",
                                                        max_search_distance=650),
        "fine at 068 (persistence)": baseline(ds, **kw, pairs="before", method="fine-at-pair"),
        "fine 068 + coarse change": baseline(ds, **kw, pairs="before"),
        "fine 093 + coarse change": baseline(ds, **kw, pairs="after"),
        "coarse at 077": ds[coarse].sel(time=[day["077"]]).rename(dict(zip(coarse, fine,
                                                                           strict=True))),
    }  # fmt: skip
    rows = []
    for name, p in preds.items():
        p = p[fine].isel(time=0).drop_vars([c for c in ("pair_time", "pair_time_after", "time")
                                            if c in p.coords])  # fmt: skip
        t = truth.drop_vars([c for c in ("time",) if c in truth.coords])
        p, t = xr.align(p, t, join="override")
        row: dict[str, Any] = {"benchmark": "estarfm_kranj", "method": name}
        s = ssim(p, t, data_range=10000.0)
        for v in fine:
            err = p[v].values.astype(np.float64) - t[v].values
            row[f"rmse_{v}"] = float(np.sqrt(np.nanmean(err**2)))
            row[f"ssim_{v}"] = float(s[v])
        row["rmse_mean"] = float(np.mean([row[f"rmse_{v}"] for v in fine]))
        row["ssim_mean"] = float(np.mean([row[f"ssim_{v}"] for v in fine]))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# peak RSS of a streamed run


def _stream(size: int, chunk: int, half_window: int, store: str) -> dict[str, Any]:
    """Predict one band of ``size`` x ``size`` and stream it to Zarr (run in a subprocess)."""
    from xfusion.io import to_zarr
    from xfusion.methods.estarfm import estarfm
    from xfusion.testing import synthetic_scene

    t0 = time.perf_counter()
    scene = synthetic_scene(
        (size, size), kind="reflectance", bands=["red"], times=3, fine_times=[0, 2],
        cloud_fraction=0.0, coarse_cloud_fraction=0.0, coarse_factor=16, seed=0,
        chunks={"time": 1, "y": chunk, "x": chunk},
    )  # fmt: skip
    cube = scene[["fine_red", "coarse_red"]]
    for v in ("fine_red", "coarse_red"):  # reflectance x1e4, the zhu preset's unit
        cube[v] = cube[v] * 1e4
    pred = estarfm(cube, fine="fine_red", coarse="coarse_red", half_window=half_window)
    to_zarr(pred, store, mode="w", progress=False)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"benchmark": "estarfm_stream_rss", "size": size, "chunk": chunk,
            "half_window": half_window, "elapsed_s": elapsed,
            "px_s_including_input_generation": size * size / elapsed, "peak_rss_gb": rss,
            "limit_gb": RSS_LIMIT_GB, "under_limit": rss < RSS_LIMIT_GB, "load1_end": _load(),
            "note": "lazy synthetic inputs -> estarfm (zhu preset) -> xfusion.io.to_zarr, one "
                    "process, default dask scheduler; ru_maxrss of that process"}  # fmt: skip


def stream(size: int = 10000, chunk: int = 1024, half_window: int = 25) -> dict[str, Any]:
    """Run :func:`_stream` in a fresh subprocess so that the peak RSS is that job's alone."""
    tmp = tempfile.mkdtemp()
    try:
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_stream", str(size), str(chunk),
             str(half_window), os.path.join(tmp, "estarfm.zarr")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------


def run(quick: bool = False, sections: Any = None, half_window: int = 25,
        stream_size: int = 10000) -> list[dict]:  # fmt: skip
    """All ESTARFM benchmarks as rows (``quick``: smaller speed cases, a 2048 px stream)."""
    sections = sections or ("speed", "references", "kranj", "stream")
    rows: list[dict] = [{"benchmark": "estarfm_machine", **_machine()}]
    if "speed" in sections:
        rows += speed(repeats=1 if quick else 3,
                      cases=((300, 1), (150, 6)) if quick else ((1200, 1), (600, 6)))  # fmt: skip
    if "references" in sections:
        rows += references()
    if "kranj" in sections:
        rows += kranj()
    if "stream" in sections:
        rows.append(stream(2048, 512, half_window) if quick else
                    stream(stream_size, 1024, half_window))  # fmt: skip
    return rows


def _table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        lines.append(f"== {r['benchmark']}")
        for k, v in r.items():
            if k != "benchmark":
                lines.append(f"  {k:38s} {v:.4g}" if isinstance(v, float) else f"  {k:38s} {v}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_stream":
        size, chunk, w, store = sys.argv[2:6]
        print(json.dumps(_stream(int(size), int(chunk), int(w), store)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sections", nargs="*", choices=["speed", "references", "kranj", "stream", []])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--half-window", type=int, default=25)
    p.add_argument("--stream-size", type=int, default=10000)
    p.add_argument("--json", default=os.path.join("bench_out", "bench_estarfm.json"))
    a = p.parse_args()
    rows = run(a.quick, a.sections or None, a.half_window, a.stream_size)
    print(_table(rows))
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
    print("wrote", a.json)


if __name__ == "__main__":
    main()
