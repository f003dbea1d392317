"""Fill cloud gaps of an 8-day NDVI series with SAR (STORI) and compare with the baselines.

Usage: ``python examples/gapfill_synthetic.py OUT_DIR`` (offline, synthetic data, < 1 minute).

1. Synthetic Sentinel-2 (B04, B08, SCL) and Sentinel-1 (VV, VH) acquisitions of one year.
2. ``xfusion.gapfill_inputs``: SCL-masked NDVI and VH dB / RVI, 8-day composites on one grid.
3. Hide 20 % of the observed composites (runs of 1-8 steps, i.e. up to 64-day gaps) to score.
4. ``ds.fusion.gapfill(method=...)`` for linear, Savitzky-Golay, harmonic and STORI, lazily
   over 16 x 16 chunks; STORI is trained on the scene's own pixels inside the graph.
5. Print MAE at the hidden observations (all, and inside 40+ day gaps) and write the STORI
   result to ``OUT_DIR/gapfill_stori.zarr``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import xfusion
from xfusion.testing import simulate_gaps, synthetic_series


def gap_length(mask: np.ndarray) -> np.ndarray:
    """Length (steps) of the missing run each step belongs to (0 where observed)."""
    nt = mask.shape[0]
    flat = mask.reshape(nt, -1)
    out = np.zeros(flat.shape, dtype=int)
    for p in range(flat.shape[1]):
        t = 0
        while t < nt:
            if flat[t, p]:
                t += 1
                continue
            s = t
            while t < nt and not flat[t, p]:
                t += 1
            out[s:t, p] = t - s
    return out.reshape(mask.shape)


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    s2, s1 = synthetic_series((32, 32), seed=11, raw=True, chunks=(16, 16))
    ds = xfusion.gapfill_inputs(s2, s1, days=8).chunk({"time": -1})
    ds = ds.compute()  # small: keep the inputs in memory, then chunk them for the fill
    truth = synthetic_series((32, 32), seed=11).ndvi_true
    gappy, hidden = simulate_gaps(ds.ndvi, fraction=0.2, max_run=8, seed=1)
    cube = ds.assign(ndvi=gappy).chunk({"time": -1, "y": 16, "x": 16})
    h = hidden.values
    long_gap = h & (gap_length(~np.isnan(gappy.values)) >= 5)
    obs = ds.ndvi.values
    print(f"{cube.sizes['time']} composites of {cube.sizes['y']}x{cube.sizes['x']} px; "
          f"observed {np.isfinite(gappy.values).mean():.0%}; scoring {h.sum()} hidden "
          f"observations ({long_gap.sum()} inside gaps of 40+ days)")
    methods = ["linear", "savgol", "harmonic"]
    try:
        import torch  # noqa: F401

        methods.append("stori")
    except ImportError:
        print("torch is not installed: STORI skipped (pip install 'xfusion[torch]')")
    print(f"{'method':10s} {'MAE hidden':>11s} {'MAE 40d+':>9s} {'MAE truth':>10s} {'s':>6s}")
    results = {}
    for m in methods:
        kw = {}
        if m == "stori":
            from xfusion.methods.gapfill import StoriConfig

            kw = {"config": StoriConfig(hidden=32, epochs=40, seed=0)}
        t0 = time.perf_counter()
        out = cube.fusion.gapfill(optical="ndvi", sar=["vh_db", "rvi"], method=m, **kw)
        res = out.compute()
        dt = time.perf_counter() - t0
        v = res.ndvi.values
        assert np.array_equal(v[~np.isnan(gappy.values)], gappy.values[~np.isnan(gappy.values)])
        results[m] = res
        print(f"{m:10s} {np.abs(v[h] - obs[h]).mean():11.4f} "
              f"{np.abs(v[long_gap] - obs[long_gap]).mean():9.4f} "
              f"{np.abs(v[h] - truth.values[h]).mean():10.4f} {dt:6.1f}")
    if "stori" in results:
        path = os.path.join(out_dir, "gapfill_stori.zarr")
        xfusion.io.to_zarr(results["stori"], path, mode="w")
        unc = results["stori"].ndvi_uncertainty.values[h]
        err = np.abs(results["stori"].ndvi.values[h] - obs[h])
        hi = unc > np.median(unc)
        print(f"STORI uncertainty: MAE where above its median {err[hi].mean():.4f}, below "
              f"{err[~hi].mean():.4f}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
