"""Snapshot the outputs of every method on fixed small inputs, and compare two snapshots.

Used to show that a refactoring changes no result, bit for bit:

    python benchmarks/parity_snapshot.py save before/     # on the old code
    python benchmarks/parity_snapshot.py save after/      # on the new code
    python benchmarks/parity_snapshot.py compare before/ after/

``save`` runs the demo (``xfusion demo --size 128``: baselines, STARFM, per-triplet STTFN with
both combinations, LST super-resolution scores) and, on small seeded inputs, every other
method: STARFM presets, super_resolve (bicubic, DMS, SIF-SR trained briefly), harmonize (a
2-member ensemble trained briefly, with uncertainty), gapfill (linear, savgol, harmonic,
STORI trained briefly), composite, the metrics. Torch runs on one thread so training is
deterministic. ``compare`` exits 1 when any array differs (NaN = NaN).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np


def _arrays(obj, prefix):
    import xarray as xr

    out = {}
    if isinstance(obj, xr.Dataset):
        for v in obj.data_vars:
            out[f"{prefix}/{v}"] = np.asarray(obj[v].values)
    elif isinstance(obj, xr.DataArray):
        out[prefix] = np.asarray(obj.values)
    else:
        out[prefix] = np.asarray(obj)
    return out


def save(out: Path) -> None:
    import torch
    import xarray as xr

    import xfusion
    from xfusion.testing import synthetic_scene, synthetic_series

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}

    # the demo scene, every demo method
    from xfusion.demo import run_demo

    res = run_demo(out / "demo", size=128, seed=0, chunk=64, quiet=True)
    res = {k: v for k, v in res.items() if "metric" in k or "scores" in k}
    demo = xr.open_zarr(out / "demo" / "demo.zarr")
    for v in demo.data_vars:
        arrays[f"demo/{v}"] = np.asarray(demo[v].values)
    (out / "demo_scores.json").write_text(json.dumps(res, default=str, indent=1, sort_keys=True))

    # STARFM presets on an LST and a reflectance scene
    lst = synthetic_scene((64, 64), times=4, seed=1, coarse_factor=16)
    for preset in ("lst", "usda"):
        arrays |= _arrays(xfusion.starfm(lst, fine="fine", coarse="coarse", preset=preset,
                                         max_search_distance=600),
                          f"starfm-{preset}")
    refl = synthetic_scene((64, 64), times=4, seed=2, kind="reflectance", bands=["red", "nir"],
                           coarse_factor=16)
    arrays |= _arrays(xfusion.starfm(refl, fine=["fine_red", "fine_nir"],
                                     coarse=["coarse_red", "coarse_nir"], preset="reflectance",
                                     max_search_distance=600),
                      "starfm-reflectance")
    arrays |= _arrays(xfusion.baseline(lst, fine="fine", coarse="coarse"), "baseline")

    # super-resolution
    from xfusion.methods.super_resolve import super_resolve, train_sif_sr

    sc, native = synthetic_scene((64, 64), times=1, seed=3, coarse_factor=4, ndvi=True,
                                 coarse_native=True, cloud_fraction=0.0,
                                 coarse_cloud_fraction=0.0)
    coarse = native["coarse"].isel(time=0)
    ndvi = sc["ndvi"].isel(time=0)
    for m in ("bicubic", "dms"):
        arrays |= _arrays(super_resolve(coarse, guide=ndvi, method=m), f"sr-{m}")
    w = train_sif_sr(coarse, guide=ndvi, out=out / "sif.safetensors", width=4, epochs=2,
                     steps_per_epoch=2, batch_size=4, patch=16, seed=0)
    arrays |= _arrays(super_resolve(coarse, guide=ndvi, method="sif-sr1", weights=w), "sr-sif")

    # harmonization with uncertainty
    from xfusion.methods.harmonize import L8_BANDS, S2_BANDS, harmonize, train_harmonizer

    hs, l8 = synthetic_scene((96, 96), times=["2021-07-15T10:30"], kind="reflectance",
                             bands=list(L8_BANDS), coarse_factor=3, resolution=10.0,
                             coarse_native=True, seed=4, cloud_fraction=0.0,
                             coarse_cloud_fraction=0.0, fine_times=[0])
    l8 = l8.rename({f"coarse_{b}": b for b in L8_BANDS}).isel(time=0)
    s2 = xr.Dataset({s: hs[f"truth_{b}"].isel(time=0) * 1.03 + 0.005
                     for b, s in zip(L8_BANDS, S2_BANDS, strict=True)})
    hw = train_harmonizer(l8, s2, out=out / "harm.safetensors", members=2, depth=3, width=4,
                          epochs=2, steps_per_epoch=2, batch_size=4, patch=32, device="cpu")
    arrays |= _arrays(harmonize(l8, weights=hw), "harmonize")

    # gap filling
    from xfusion.methods.gapfill import StoriConfig

    series = synthetic_series((12, 12), seed=0)
    for m in ("linear", "savgol", "harmonic"):
        arrays |= _arrays(xfusion.gapfill(series, method=m), f"gapfill-{m}")
    arrays |= _arrays(xfusion.gapfill(series, config=StoriConfig(hidden=4, epochs=2,
                                                                  batch_size=64)),
                      "gapfill-stori")
    arrays |= _arrays(xfusion.composite(series, days=16), "composite")

    # metrics
    truth = lst["truth"]
    pred = xfusion.starfm(lst, fine="fine", coarse="coarse", preset="lst",
                          max_search_distance=600)["fine"]
    scores = xfusion.metrics.evaluate(pred, truth.sel(time=pred.time).rename("fine"))
    arrays["metrics"] = np.asarray([scores[k] for k in sorted(scores)], dtype=np.float64)

    np.savez(out / "outputs.npz", **arrays)
    print(f"saved {len(arrays)} arrays to {out / 'outputs.npz'}")


def compare(a: Path, b: Path) -> int:
    left = np.load(a / "outputs.npz")
    right = np.load(b / "outputs.npz")
    bad = []
    keys = sorted(set(left.files) | set(right.files))
    for k in keys:
        if k not in left.files or k not in right.files:
            bad.append(f"{k}: only in {'right' if k not in left.files else 'left'}")
            continue
        x, y = left[k], right[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            bad.append(f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            diff = np.nanmax(np.abs(x.astype(float) - y.astype(float)))
            bad.append(f"{k}: values differ (max |diff| {diff:.3g})")
    sa = json.loads((a / "demo_scores.json").read_text())
    sb = json.loads((b / "demo_scores.json").read_text())
    if sa != sb:
        bad.append("demo scores differ")
    print(f"{len(keys)} arrays compared: {len(keys) - len(bad)} identical, {len(bad)} differ")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["save"] and len(sys.argv) == 3:
        save(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
