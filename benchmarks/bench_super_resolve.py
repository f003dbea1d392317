"""Super-resolution: accuracy on synthetic scenes with known truth, speed, and uncertainty.

1. LST sharpening (``evaluate_synthetic``): bicubic, DMS, sif-sr1 with its defaults and the
   paper's SIF-CNN-SR (both trained self-supervised on each scene) against the true fine LST
   on held-out synthetic scenes and on real Yanco LST: RMSE, gradient RMSE, and the
   coarse-scale consistency of every method (RMSE of the aggregated output vs the input).
2. Speed: output pixels per second of bicubic, DMS, the SIF U-Net (width 16, the paper's)
   and the small harmonization U-Net, lazily over dask chunks, on the CPU and (if present)
   on CUDA.
3. Landsat -> Sentinel-2 harmonization: held-out RMSE against bicubic Landsat, and the
   calibration of the predicted standard deviation (deep ensemble, MC-dropout; raw and
   recalibrated): Spearman rank correlation with the absolute error, share of errors within
   1 and 2 std.

Run: ``python benchmarks/bench_super_resolve.py [--quick]`` (prints JSON rows).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import xarray as xr

from xfusion.config import EngineConfig
from xfusion.demo import evaluate_synthetic
from xfusion.methods.harmonize import L8_BANDS, S2_BANDS, harmonize, train_harmonizer
from xfusion.methods.super_resolve import super_resolve
from xfusion.testing import synthetic_scene
from xfusion.training.harmonize import calibration_report

_RMSE_KEYS = ("rmse", "gradient_rmse", "consistency_mean", "consistency_power", "seconds",
              "train_seconds")


def _accuracy(quick: bool, workdir: str) -> list[dict]:
    """RMSE against the true fine LST on held-out synthetic scenes (seeds never used to
    design the default) for bicubic, DMS, sif-sr1 with its defaults, and the paper's
    SIF-CNN-SR (``variant="paper"``, briefly trained)."""
    size, seeds = (128, (100,)) if quick else (256, (100, 101, 102, 103, 104, 105, 106))
    paper = ({"variant": "paper", "width": 8, "epochs": 4, "steps_per_epoch": 6,
              "batch_size": 8, "patch": 32} if quick else
             {"variant": "paper", "width": 16, "epochs": 20, "steps_per_epoch": 10,
              "batch_size": 8, "patch": 48})
    rows = []
    for seed in seeds:
        load = os.getloadavg()[0]
        res = evaluate_synthetic(methods=("bicubic", "dms", "sif-sr1"), device="cpu",
                                 workdir=workdir, size=size, seeds=(seed,),
                                 train={"verbose": False, "seed": 0})
        pap = evaluate_synthetic(methods=("sif-sr1",), device="cpu", workdir=workdir,
                                 size=size, seeds=(seed,), train={**paper, "verbose": False})
        res["sif-sr1 (paper)"] = pap["sif-sr1"]
        rows += [{"benchmark": "super_resolve_accuracy", "method": m, "scene": f"synthetic {seed}",
                  "size": size, "scale": 4, "load": round(load, 1), **r} for m, r in res.items()]
    rows += _yanco_rows(workdir, quick)
    for m in ("bicubic", "dms", "sif-sr1", "sif-sr1 (paper)"):  # the mean over the scenes
        mine = [r for r in rows if r["method"] == m and "rmse" in r]
        if mine:
            rows.append({"benchmark": "super_resolve_accuracy", "method": m, "scene": "mean",
                         **{k: float(np.mean([r[k] for r in mine])) for k in ("rmse",
                                                                             "train_seconds")}})
    return rows


YANCO = "../shared/data/yanco_lst/1_test_data"


def _yanco_rows(workdir: str, quick: bool) -> list[dict]:
    """Real LST (Yanco, Landsat 100 m, 400 x 400): the 2016-03-08 Landsat LST aggregated by 4
    and 8 is super-resolved with the 2016-02-05 Landsat LST as guide; truth: 03-08 at 100 m."""
    import rioxarray

    if quick or not os.path.isdir(YANCO):
        return []

    def read(name: str) -> xr.DataArray:
        da = rioxarray.open_rasterio(os.path.join(YANCO, name)).isel(band=0, drop=True)
        da = da.astype("float32")
        return da.where(da > 0)

    truth = read("Landsat_LST_cloudrm_20160308.tif")
    guide = read("Landsat_LST_cloudrm_20160205.tif").rename("guide")
    rows = []
    for s in (4, 8):
        lst = truth.coarsen(y=s, x=s).mean().assign_coords(spatial_ref=truth.spatial_ref)
        lst = lst.rename("lst")
        for m in ("bicubic", "dms", "sif-sr1"):
            w = None
            t0 = time.perf_counter()
            if m == "sif-sr1":
                from xfusion.training.sifsr import train_sif_sr

                w = train_sif_sr(lst, guide=guide, out=os.path.join(
                    workdir, f"yanco{s}.safetensors"), verbose=False)
            t_train = time.perf_counter() - t0
            out = super_resolve(lst, guide=guide, method=m, weights=w).values
            rows.append({"benchmark": "super_resolve_accuracy", "method": m,
                         "scene": f"yanco x{s}", "scale": s, "train_seconds": t_train,
                         "rmse": float(np.sqrt(np.nanmean((out - truth.values) ** 2)))})
    return rows


def _sif_weights(workdir: str, width: int = 16) -> str:
    """Random SIF weights (speed does not depend on training)."""
    import torch

    from xfusion.models.sifsr import SIFUNet
    from xfusion.training import save_checkpoint

    torch.manual_seed(0)
    path = os.path.join(workdir, f"sif-random-{width}.safetensors")
    save_checkpoint(path, {"model": SIFUNet(2, width)}, {
        "arch": "sif-sr", "nbands": 2, "arch_params": {"width": width}, "method": "sif-sr1",
        "scale": 4, "halo": 72, "inputs": ["lst", "ndvi"],
        "normalization": {"mean": [300.0, 0.5], "std": [5.0, 0.2]}})
    return path


def _harm_weights(workdir: str) -> str:
    import torch

    from xfusion.models.harmonize_unet import HarmonizeUNet
    from xfusion.training import save_checkpoint

    torch.manual_seed(0)
    m = HarmonizeUNet()
    path = os.path.join(workdir, "harm-random.safetensors")
    save_checkpoint(path, {"member0": m}, {
        "arch": "harmonize-unet", "nbands": 6, "method": "harmonize", "scale": 3,
        "arch_params": {"out_channels": 6, "depth": 3, "width": 16, "upsample": "upsample"},
        "halo": m.halo, "pan": False, "inputs": list(L8_BANDS), "outputs": list(S2_BANDS)})
    return path


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _speed(quick: bool, workdir: str) -> list[dict]:
    import dask
    import torch

    n = 512 if quick else 1024
    sc, modis = synthetic_scene((n, n), times=1, coarse_factor=4, ndvi=True, coarse_native=True,
                                coarse_cloud_fraction=0.0)
    lst = modis["coarse"].isel(time=0).load().chunk(128)
    ndvi = sc["ndvi"].isel(time=0).load().chunk(512)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sif = _sif_weights(workdir)
    rows = []
    cases = [("bicubic", "cpu", lambda d: super_resolve(lst, guide=ndvi, method="bicubic")),
             ("dms", "cpu", lambda d: super_resolve(lst, guide=ndvi, method="dms"))]
    cases += [("sif-sr1 (width 16)", d,
               lambda d: super_resolve(lst, guide=ndvi, weights=sif,
                                       engine=EngineConfig(tile=512, device=d)))
              for d in devices]
    l8, _ = _l8_s2(0, n=(n // 3) * 3)
    l8c = l8.chunk(128)
    hw = _harm_weights(workdir)
    cases += [("harmonize (small)", d, lambda d: harmonize(l8c, weights=hw, device=d))
              for d in devices]
    for name, dev, make in cases:
        def job(make=make, dev=dev):
            with dask.config.set(scheduler="threads"):
                out = make(dev)
                return out.compute() if hasattr(out, "compute") else out
        res = job()
        px = int(np.prod([res.sizes[d] for d in list(res.sizes)[-2:]]))
        secs = _time(job, 1 if quick else 2)
        rows.append({"benchmark": "super_resolve_speed", "method": name, "device": dev,
                     "output_px": px, "seconds": secs, "mpx_per_s": px / secs / 1e6,
                     "torch_threads": torch.get_num_threads()})
    return rows


def _l8_s2(seed: int, n: int = 144) -> tuple[xr.Dataset, xr.Dataset]:
    sc, l8 = synthetic_scene((n, n), times=["2021-07-15T10:30"], kind="reflectance",
                             bands=list(L8_BANDS), coarse_factor=3, resolution=10.0,
                             coarse_native=True, seed=seed, cloud_fraction=0.0,
                             coarse_cloud_fraction=0.0, fine_times=[0])
    l8 = l8.rename({f"coarse_{b}": b for b in L8_BANDS}).isel(time=0, drop=True)
    gain = dict(zip(S2_BANDS, (1.02, 1.03, 1.01, 0.98, 1.04, 1.05), strict=True))
    s2 = xr.Dataset({s: sc[f"truth_{b}"].isel(time=0, drop=True) * gain[s] + 0.005
                     for b, s in zip(L8_BANDS, S2_BANDS, strict=True)})
    return l8, s2


def _uncertainty(quick: bool, workdir: str) -> list[dict]:
    from scipy.stats import pearsonr, spearmanr

    n = 144 if quick else 240
    l8, s2 = _l8_s2(0, n)
    kw = ({"members": 3, "width": 8, "epochs": 8, "steps_per_epoch": 6, "batch_size": 8,
           "patch": 48} if quick else
          {"members": 4, "width": 16, "epochs": 40, "steps_per_epoch": 10, "batch_size": 8,
           "patch": 64})
    t0 = time.perf_counter()
    w = train_harmonizer(l8, s2, out=os.path.join(workdir, "harm.safetensors"), lr=2e-3,
                         device="cpu", **kw)
    t_train = time.perf_counter() - t0
    rows = []
    for seed in (7, 8) if not quick else (7,):
        l8t, s2t = _l8_s2(seed, n)
        truth = np.stack([s2t[b].values for b in S2_BANDS])
        bic = super_resolve(l8t, method="bicubic", scale=3)
        bic_rmse = float(np.sqrt(np.mean((np.stack([bic[b].values for b in L8_BANDS])
                                          - truth) ** 2)))
        for unc in ("ensemble", "mc-dropout"):
            for cal in (False, True):
                out = harmonize(l8t, weights=w, uncertainty=unc, passes=20, calibrate=cal)
                pred = np.stack([out[b].values for b in S2_BANDS])
                std = np.stack([out[f"{b}_std"].values for b in S2_BANDS])
                err = np.abs(pred - truth)
                rep = calibration_report(pred, std, truth)
                rows.append({
                    "benchmark": "harmonize_uncertainty", "uncertainty": unc,
                    "calibrated": cal, "heldout_seed": seed,
                    "size": n, "rmse": float(np.sqrt(np.mean(err**2))),
                    "bicubic_rmse": bic_rmse, "mean_std": float(std.mean()),
                    "spearman_std_abs_error": float(spearmanr(std.ravel(), err.ravel())[0]),
                    "pearson_std_abs_error": float(pearsonr(std.ravel(), err.ravel())[0]),
                    "within_1std": rep["within_1std"], "within_2std": rep["within_2std"],
                    "train_seconds": t_train, **{k: v for k, v in kw.items() if k != "patch"},
                })
    return rows


_MEM_SCRIPT = """
import resource, sys
import dask
from xfusion.config import EngineConfig
from xfusion.methods.super_resolve import super_resolve
from xfusion.testing import synthetic_scene
n, weights = int(sys.argv[1]), sys.argv[2]
sc, modis = synthetic_scene((n, n), times=1, coarse_factor=4, ndvi=True, coarse_native=True,
                            coarse_cloud_fraction=0.0, chunks={"y": 512, "x": 512})
out = super_resolve(modis["coarse"].isel(time=0), guide=sc["ndvi"].isel(time=0),
                    weights=weights, engine=EngineConfig(tile=256, device="cpu"))
with dask.config.set(scheduler="threads", num_workers=2):
    float(out.mean())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _memory(quick: bool, workdir: str) -> list[dict]:
    """Peak RSS of a lazy SIF-CNN-SR job (synthetic scene generated chunk by chunk, reduced
    to its mean) for growing outputs: O(chunk) memory means it barely grows."""
    import subprocess
    import sys

    w = _sif_weights(workdir)
    rows = []
    for n in ((512, 1024) if quick else (1024, 2048, 4096)):
        res = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n), w], check=True,
                             capture_output=True, text=True)
        rows.append({"benchmark": "super_resolve_memory", "method": "sif-sr1 (width 16)",
                     "output_px": n * n, "chunk_px": 512 * 512,
                     "peak_rss_mb": int(res.stdout.split()[-1]) / 1024})
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run all parts; return one dict per result row."""
    workdir = tempfile.mkdtemp(prefix="xfusion-bench-sr-")
    return [*_accuracy(quick, workdir), *_speed(quick, workdir),
            *_memory(quick, workdir), *_uncertainty(quick, workdir)]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    for row in run(quick=p.parse_args().quick):
        print(json.dumps(row))
