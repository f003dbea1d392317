"""Fit-FC benchmarks: kernel speed vs STARFM, parity and speed vs the reference programs,
peak RSS of a large streamed run, and accuracy on the real Kranj scene.

Parts (``--parts``, default all):

* ``kernel``: the Fit-FC block kernel (variant "wang", s = 16, w0 = 20, N_S = 20) against the
  STARFM numba kernel (USDA window of 50 px) on the SAME data, 2 threads: 1200 x 1200 one band
  and 600 x 600 six bands (a synthetic reflectance scene x1e4; STARFM runs band by band,
  Fit-FC shares its similar pixels between the bands). Best of ``repeats`` wall times after a
  warm-up; also the "imagefusion" variant.
* ``parity``: synthetic600 and Kranj through :func:`xfusion.methods.fitfc.fitfc` against
  ImageFusion's C++ program (``ref-fitfc-imagefusion``) and Wang's MATLAB scripts under Octave
  (``ref-fitfc-wang-octave``), when they are installed under ``$XFUSION_REFS`` (default
  /work/refs); the programs' wall times on the same data.
* ``rss``: a lazily generated 10000 x 10000 one-band cube through ``fitfc`` streamed to Zarr
  (``write_tiled``) in a fresh subprocess; its ``ru_maxrss``.
* ``kranj``: per-band RMSE and SSIM on Kranj (pair DOY 068, targets 077 and 093; Landsat x1e4,
  MODIS x1e4), Fit-FC variants next to STARFM and naive baselines.

Usage: ``python benchmarks/bench_fitfc.py [--parts kernel,parity,rss,kranj] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("XFUSION_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
REFS = Path(os.environ.get("XFUSION_REFS", "/work/refs"))


def _best(fn: Any, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (numba compile / cache load)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def _load() -> str:
    return os.getloadavg().__repr__()


# --------------------------------------------------------------------------------------------
# kernel


def _kernel_case(size: int, bands: list[str], repeats: int, threads: int) -> dict[str, Any]:
    from xfusion.methods._fitfc_kernel import imagefusion_block, wang_block
    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block
    from xfusion.testing import synthetic_scene

    sc = synthetic_scene((size, size), kind="reflectance", bands=bands, times=2, fine_times=[0],
                         coarse_factor=16, cloud_fraction=0.0, coarse_cloud_fraction=0.0,
                         seed=0)  # fmt: skip
    f1 = np.stack([sc[f"fine_{b}"].values[0] for b in bands]).astype(np.float64) * 1e4
    c1 = np.stack([sc[f"coarse_{b}"].values[0] for b in bands]).astype(np.float64) * 1e4
    c2 = np.stack([sc[f"coarse_{b}"].values[1] for b in bands]).astype(np.float64) * 1e4
    sim = tuple(bands.index(b) for b in ("red", "nir")) if len(bands) > 1 else (0,)
    thr = [similarity_threshold(f1[b]) for b in range(len(bands))]

    def run_starfm() -> None:  # USDA window 50, band by band
        for b in range(len(bands)):
            starfm_block(f1[b], c1[b], c2[b], window=50, thresholds=thr[b], distance_scale=25.0,
                         threads=threads)  # fmt: skip

    def run_wang() -> None:
        wang_block(f1, c1, c2, s=16, sim_bands=sim, threads=threads)

    def run_if() -> None:
        imagefusion_block(f1, c1, c2, dtype="float32", threads=threads)

    t_s, ts_s = _best(run_starfm, repeats)
    t_w, ts_w = _best(run_wang, repeats)
    t_i, ts_i = _best(run_if, repeats)
    px = size * size
    return {
        "benchmark": "fitfc_kernel", "size": size, "bands": len(bands), "threads": threads,
        "starfm_s": t_s, "fitfc_wang_s": t_w, "fitfc_imagefusion_s": t_i,
        "starfm_px_s": px / t_s, "fitfc_wang_px_s": px / t_w, "fitfc_imagefusion_px_s": px / t_i,
        "ratio_wang_vs_starfm": t_w / t_s, "ratio_imagefusion_vs_starfm": t_i / t_s,
        "times": {"starfm": ts_s, "wang": ts_w, "imagefusion": ts_i}, "loadavg": _load(),
    }  # fmt: skip


def kernel(repeats: int = 3, threads: int = 2) -> list[dict[str, Any]]:
    six = ["blue", "green", "red", "nir", "swir16", "swir22"]
    return [_kernel_case(1200, ["red"], repeats, threads), _kernel_case(600, six, repeats, threads)]


# --------------------------------------------------------------------------------------------
# parity with the reference programs


def _read(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    import rasterio

    with rasterio.open(path) as src:
        a = src.read().astype(np.float64)
        nd = src.nodata
    fill = (a == nd) if nd is not None and not np.isnan(nd) else np.isnan(a)
    return a, fill


def _compare(got: np.ndarray, got_fill: np.ndarray, ref: np.ndarray, ref_fill: np.ndarray
             ) -> dict[str, Any]:  # fmt: skip
    ok = ~got_fill & ~ref_fill
    d = np.abs(got[ok] - ref[ok])
    return {
        "same_fill": bool(np.array_equal(got_fill, ref_fill)), "pixels": int(ok.sum()),
        "within_1": float((d <= 1).mean()), "exact": float((d == 0).mean()),
        "max_abs_diff": float(d.max()), "rmse_diff": float(np.sqrt((d * d).mean())),
    }  # fmt: skip


def _kranj_inputs(tmp: Path, dtype: str) -> list[str]:
    """Kranj 068 (Landsat filled), MODIS 068 and 077, x1e4, as ``dtype`` GeoTIFFs."""
    import rasterio

    k = SHARED / "kranj"
    land = glob.glob(str(k / "landsat" / "filled" / "2020068_*.tif"))[0]
    out = []
    for p, scale in ((land, 1.0), (str(k / "modis" / "filled" / "2020068_18-04_kranj.tif"), 1e4),
                     (str(k / "modis" / "filled" / "2020077_18-04_kranj.tif"), 1e4)):  # fmt: skip
        with rasterio.open(p) as src:
            a, prof = src.read().astype(np.float64) * scale, src.profile
        a = np.round(a).astype(dtype) if dtype == "int16" else a.astype(dtype)
        q = tmp / f"kranj_{dtype}_{len(out)}.tif"
        with rasterio.open(q, "w", **{**prof, "dtype": dtype, "nodata": None}) as dst:
            dst.write(a)
        out.append(str(q))
    return out


def _cube(paths: list[str], dates: tuple[str, str], dtype: str, nodata: int | None) -> Any:
    from xfusion.cube import from_geotiffs

    ds = from_geotiffs(fine={dates[0]: paths[0]}, coarse={dates[0]: paths[1], dates[1]: paths[2]})
    if dtype == "int16":
        fill = -32768 if nodata is None else nodata
        for v in ds.data_vars:
            a = ds[v].values
            ds[v] = (ds[v].dims, np.where(np.isnan(a), fill, a).astype(np.int16),
                     {"nodata": fill})  # fmt: skip
    return ds


def _fitfc_stack(ds: Any, **kw: Any) -> tuple[np.ndarray, float]:
    from xfusion.methods.fitfc import fitfc

    fine = sorted(str(v) for v in ds.data_vars if str(v).startswith("fine"))
    coarse = ["coarse" + f[4:] for f in fine]
    t0 = time.perf_counter()
    out = fitfc(ds, fine=fine, coarse=coarse, **kw)
    got = np.stack([out[f].values[0] for f in fine]).astype(np.float64)
    return got, time.perf_counter() - t0


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def parity(threads: int = 2, octave_syn600: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ref_if = REFS / "bin" / "ref-fitfc-imagefusion"
    ref_w = REFS / "bin" / "ref-fitfc-wang-octave"
    if not ref_if.exists():
        return [{"benchmark": "fitfc_parity", "skipped": f"no reference programs at {REFS}"}]
    tmp = Path(tempfile.mkdtemp(prefix="fitfc_parity_"))
    try:
        s600 = SHARED / "synthetic600"
        paths = [str(s600 / f"{n}.tif") for n in ("fine_t1", "coarse_t1", "coarse_t2")]
        dates = ("2001-01-01", "2001-01-17")
        # ImageFusion on synthetic600 (int16 files, nodata -9999)
        wall = _run([str(ref_if), *paths, str(tmp / "if600.tif"), "--threads", str(threads),
                     "--quiet"])  # fmt: skip
        ref, ref_fill = _read(tmp / "if600.tif")
        for dtype in ("int16", "float32"):
            ds = _cube(paths, dates, dtype, -9999)
            got, t = _fitfc_stack(ds, preset="imagefusion")
            fill = got == -9999 if dtype == "int16" else np.isnan(got)
            rows.append({"benchmark": "fitfc_parity", "data": "synthetic600", "cube": dtype,
                         "reference": "ImageFusion C++ (if_fuse fitfc)", "ref_wall_s": wall,
                         "xfusion_s": t, **_compare(got, fill, ref, ref_fill)})  # fmt: skip
        # Wang's scripts on synthetic600 (s = 16; Octave takes minutes)
        if ref_w.exists() and shutil.which("octave-cli"):
            out600 = os.environ.get("FITFC_WANG_SYN600")  # a saved run of the same command
            if out600 is None and octave_syn600:
                out600 = str(tmp / "w600.tif")
                wall_w = _run([str(ref_w), *paths, out600, "--scale", "16"])
            else:
                wall_w = None
            if out600 is not None:
                ref, ref_fill = _read(out600)
                ds = _cube(paths, dates, "float32", None)
                got, t = _fitfc_stack(ds, scale_factor=16)
                rows.append({"benchmark": "fitfc_parity", "data": "synthetic600", "cube": "float32",
                             "reference": "Wang MATLAB scripts (Octave), s=16",
                             "ref_wall_s": wall_w, "xfusion_s": t,
                             **_compare(got, np.isnan(got), ref, ref_fill)})  # fmt: skip
        # Kranj (44 x 45: smaller than the 51 px windows of ImageFusion)
        kd = ("2020-03-08", "2020-03-17")
        for dtype in ("int16", "float32"):
            kp = _kranj_inputs(tmp, dtype)
            wall = _run([str(ref_if), *kp, str(tmp / f"ifk_{dtype}.tif"), "--threads", "1",
                         "--quiet"])  # fmt: skip
            ref, _ = _read(tmp / f"ifk_{dtype}.tif")
            got, t = _fitfc_stack(_cube(kp, kd, dtype, None), preset="imagefusion")
            rows.append({"benchmark": "fitfc_parity", "data": "kranj 068->077", "cube": dtype,
                         "reference": "ImageFusion C++ (if_fuse fitfc)", "ref_wall_s": wall,
                         "xfusion_s": t,
                         **_compare(got, np.isnan(got), ref, np.isnan(ref))})  # fmt: skip
        if ref_w.exists() and shutil.which("octave-cli"):
            kp = _kranj_inputs(tmp, "float32")
            for s in (4, 2):
                wall = _run([str(ref_w), *kp, str(tmp / f"wk{s}.tif"), "--scale", str(s)])
                ref, ref_fill = _read(tmp / f"wk{s}.tif")
                got, t = _fitfc_stack(_cube(kp, kd, "float32", None), scale_factor=s)
                rows.append({"benchmark": "fitfc_parity", "data": "kranj 068->077",
                             "cube": "float32", "reference": f"Wang MATLAB scripts (Octave), s={s}",
                             "ref_wall_s": wall, "xfusion_s": t,
                             **_compare(got, np.isnan(got), ref, ref_fill)})  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r["loadavg"] = _load()
    return rows


# --------------------------------------------------------------------------------------------
# peak RSS of a streamed 10000 x 10000 run


def _stream(size: int, chunk: int, store: str, preset: str) -> dict[str, Any]:
    from xfusion.io import write_tiled
    from xfusion.methods.fitfc import fitfc
    from xfusion.testing import synthetic_scene

    t0 = time.perf_counter()
    scene = synthetic_scene((size, size), kind="reflectance", bands=["red"], times=2,
                            fine_times=[0], coarse_factor=16, cloud_fraction=0.0,
                            coarse_cloud_fraction=0.0, seed=0,
                            chunks={"time": 1, "y": chunk, "x": chunk})  # fmt: skip
    scene = scene[["fine_red", "coarse_red"]]
    pred = fitfc(scene, fine="fine_red", coarse="coarse_red", preset=preset)
    report = write_tiled(pred, store, mode="w", max_in_flight=2, progress=False)
    elapsed = time.perf_counter() - t0
    return {
        "benchmark": "fitfc_stream_peak_rss", "size": size, "chunk": chunk, "preset": preset,
        "tiles": report.tiles_total, "elapsed_s": elapsed, "mpx_s": size * size / elapsed / 1e6,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "halo": json.loads(pred.attrs["xfusion_fitfc"])["halo"],
    }  # fmt: skip


def rss(size: int = 10000, chunk: int = 1024, preset: str = "wang") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--stream", "--size", str(size), "--chunk", str(chunk),
             "--preset", preset, "--store", os.path.join(tmp, "fitfc.zarr")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["loadavg"] = _load()
    return res


# --------------------------------------------------------------------------------------------
# accuracy on Kranj


def kranj() -> list[dict[str, Any]]:
    import xarray as xr

    import xfusion
    from xfusion.cube import from_geotiffs
    from xfusion.methods.fitfc import fitfc
    from xfusion.metrics import ssim

    k = SHARED / "kranj"
    if not k.is_dir():
        return [{"benchmark": "fitfc_accuracy_kranj", "skipped": f"no data at {k}"}]

    def doy(d: str) -> str:
        return str(np.datetime64("2020-01-01") + np.timedelta64(int(d) - 1, "D"))

    def landsat(d: str, kind: str = "filled") -> str:
        return glob.glob(str(k / "landsat" / kind / f"2020{d}_*.tif"))[0]

    def modis(d: str) -> str:
        return glob.glob(str(k / "modis" / "filled" / f"2020{d}_*.tif"))[0]

    ds = from_geotiffs(fine={doy("068"): landsat("068")},
                       coarse={doy(d): modis(d) for d in ("068", "077", "093")})  # fmt: skip
    fine = sorted(str(v) for v in ds.data_vars if str(v).startswith("fine"))
    coarse = ["coarse" + f[4:] for f in fine]
    for c in coarse:
        ds[c] = ds[c] * 1e4
    kw = {"fine": fine, "coarse": coarse, "targets": [doy("077"), doy("093")]}
    preds = {
        "fitfc wang (no coarse grid: fine-grid RM, f=30)": fitfc(ds, **kw),
        "fitfc wang s=16 (cell means of bilinear MODIS, partial cells)": fitfc(
            ds, **kw, scale_factor=16, edge_cells="partial"),
        "fitfc wang s=8 (partial cells)": fitfc(ds, **kw, scale_factor=8, edge_cells="partial"),
        "fitfc imagefusion": fitfc(ds, **kw, preset="imagefusion"),
        "fitfc imagefusion, residual after filter": fitfc(ds, **kw, preset="imagefusion",
                                                           residual="after_filter"),
        "starfm (usda, 600 m)": xfusion.starfm(ds, **kw, preset="usda", max_search_distance=600),
        "fine-plus-change": xfusion.baseline(ds, **kw),
        "fine-at-pair": xfusion.baseline(ds, **kw, method="fine-at-pair"),
    }  # fmt: skip
    rows = []
    for target in ("077", "093"):
        t = np.datetime64(doy(target))
        truth = from_geotiffs(fine={doy(target): landsat(target, "unfilled")},
                              coarse={doy(target): modis(target)})  # fmt: skip
        ref = {f: truth[f].sel(time=t) for f in fine}
        coarse_t = {f: ds[c].sel(time=t) for f, c in zip(fine, coarse, strict=True)}
        cases = {**{n: {f: p[f].sel(time=t) for f in fine} for n, p in preds.items()},
                 "coarse at target (MODIS)": coarse_t}  # fmt: skip
        valid = np.logical_and.reduce([np.isfinite(ref[f].values) for f in fine])
        for case in cases.values():
            for f in fine:
                valid &= np.isfinite(case[f].values)
        for name, case in cases.items():
            row: dict[str, Any] = {"benchmark": "fitfc_accuracy_kranj", "target": target,
                                   "method": name, "pixels": int(valid.sum())}  # fmt: skip
            for b, f in enumerate(fine, start=1):
                m = xr.DataArray(valid, dims=ref[f].dims)
                p = case[f].astype(np.float64).where(m)
                r = ref[f].astype(np.float64).where(m)
                row[f"rmse_b{b}"] = float(np.sqrt(np.nanmean((p.values - r.values) ** 2)))
                row[f"ssim_b{b}"] = float(ssim(p, r).values)
            nb = len(fine)
            row["rmse_mean"] = float(np.mean([row[f"rmse_b{b}"] for b in range(1, nb + 1)]))
            row["ssim_mean"] = float(np.mean([row[f"ssim_b{b}"] for b in range(1, nb + 1)]))
            rows.append(row)
    return rows


PARTS = ("kernel", "parity", "rss", "kranj")


def run(quick: bool = False, repeats: int = 3, threads: int = 2) -> list[dict[str, Any]]:
    """All Fit-FC benchmarks as rows for ``benchmarks/run.py`` (``quick``: one repeat, a
    2048 px streamed run; parity only where the reference programs are built)."""
    rows = kernel(1 if quick else repeats, threads)
    rows += parity(threads, False)
    rows.append(rss(2048 if quick else 10000, 512 if quick else 1024, "wang"))
    rows += kranj()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--octave-syn600",
        action="store_true",
        help="also run Wang's scripts on synthetic600 (minutes)",
    )
    p.add_argument("--json", default=os.path.join("bench_out", "bench_fitfc.json"))
    p.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--preset", default="wang")
    p.add_argument("--store", default=None)
    a = p.parse_args()
    if a.stream:
        print(json.dumps(_stream(a.size, a.chunk, a.store, a.preset)))
        return
    rows: list[dict[str, Any]] = []
    parts = a.parts.split(",")
    if "kernel" in parts:
        rows += kernel(a.repeats, a.threads)
    if "parity" in parts:
        rows += parity(a.threads, a.octave_syn600)
    if "rss" in parts:
        rows.append(rss(a.size, a.chunk, a.preset))
    if "kranj" in parts:
        rows += kranj()
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "times"}))
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}  # fmt: skip
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
