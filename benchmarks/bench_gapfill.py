"""Gap filling accuracy and speed: STORI (fixed and faithful) against linear, Savitzky-Golay and
harmonic baselines on synthetic SAR + NDVI series with simulated gaps (incl. 40+ day gaps).

``run(quick=False) -> list[dict]``: one row per method with the accuracy averaged over seeds,
then speed rows (pixel-years per second on this CPU, and on CUDA when present). Also runs as a
script: ``python benchmarks/bench_gapfill.py [--quick]``.

Scoring: on each scene 20 % of the observed 8-day composites are hidden in runs of 1-8 steps
(``xfusion.testing.simulate_gaps``); the fill is scored at the hidden observations (all, and
those inside a missing run of 5+ steps = 40+ days), and against the cloud-free truth at every
filled step (natural cloud gaps included).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np


def _gap_length(observed: np.ndarray) -> np.ndarray:
    """Length in steps of the missing run each step belongs to (0 where observed)."""
    nt = observed.shape[0]
    flat = observed.reshape(nt, -1)
    out = np.zeros(flat.shape, dtype=np.int32)
    for p in range(flat.shape[1]):
        col = flat[:, p]
        t = 0
        while t < nt:
            if col[t]:
                t += 1
                continue
            s = t
            while t < nt and not col[t]:
                t += 1
            out[s:t, p] = t - s
    return out.reshape(observed.shape)


def _scores(v: np.ndarray, obs: np.ndarray, truth: np.ndarray, hidden: np.ndarray,
            glen: np.ndarray, filled: np.ndarray) -> dict[str, float]:
    e = v - obs
    return {
        "mae_hidden": float(np.abs(e[hidden]).mean()),
        "mre_hidden": float(np.abs(e[hidden]).sum() / np.abs(obs[hidden]).sum()),
        "r_hidden": float(np.corrcoef(v[hidden], obs[hidden])[0, 1]),
        "rmse_hidden": float(np.sqrt((e[hidden] ** 2).mean())),
        "mae_gap_1_2": float(np.abs(e[hidden & (glen <= 2)]).mean()),
        "mae_gap_3_4": float(np.abs(e[hidden & (glen >= 3) & (glen <= 4)]).mean()),
        "mae_gap_40d": float(np.abs(e[hidden & (glen >= 5)]).mean()),
        "mae_truth_filled": float(np.abs(v - truth)[filled].mean()),
    }


def _scene(size: int, seed: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from xfusion.testing import simulate_gaps, synthetic_series

    ds = synthetic_series((size, size), seed=seed)
    gappy, hid = simulate_gaps(ds.ndvi, fraction=0.2, max_run=8, seed=seed + 100)
    obs = ds.ndvi.values
    glen = _gap_length(~np.isnan(gappy.values))
    return ds.assign(ndvi=gappy), obs, ds.ndvi_true.values, hid.values, glen


def run(quick: bool = False, *, size: int | None = None, seeds: tuple[int, ...] | None = None,
        hidden: int | None = None, epochs: int | None = None,
        speed_size: int | None = None) -> list[dict[str, Any]]:
    """Accuracy table (one row per method, mean over seeds) and speed rows."""
    from xfusion import gapfill

    try:
        import torch

        from xfusion.methods.gapfill import StoriConfig, fit_stori
    except ImportError:  # pragma: no cover - baselines only
        torch = None
    size = size or (32 if quick else 48)
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    hidden = hidden or (32 if quick else 96)
    epochs = epochs or (60 if quick else 100)
    speed_size = speed_size or (32 if quick else 96)
    methods: dict[str, dict[str, Any]] = {
        "linear": {"method": "linear"},
        "savgol": {"method": "savgol"},
        "harmonic": {"method": "harmonic"},
    }
    if torch is not None:
        methods["stori"] = {"variant": "fixed"}
        methods["stori-faithful"] = {"variant": "faithful"}
    acc: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    weights: dict[str, Any] = {}
    for seed in seeds:
        ds, obs, truth, hid, glen = _scene(size, seed)
        filled_mask = np.isnan(ds.ndvi.values)
        for name, spec in methods.items():
            t0 = time.perf_counter()
            extra: dict[str, Any] = {}
            if name.startswith("stori"):
                cfg = StoriConfig(variant=spec["variant"], hidden=hidden, epochs=epochs, seed=seed)
                w = fit_stori(ds, config=cfg)
                weights[name] = w
                extra = {"train_s": time.perf_counter() - t0,
                         "epochs_run": len(w.history),
                         "best_epoch": w.meta["training"]["best_epoch"]}
                out = gapfill(ds, weights=w)
            else:
                out = gapfill(ds, **spec)
            v = out.ndvi.values
            keep = ~filled_mask
            assert np.array_equal(v[keep], ds.ndvi.values[keep]), name  # observed kept
            rec = _scores(v, obs, truth, hid, glen, filled_mask)
            rec.update(extra, seconds=time.perf_counter() - t0)
            acc[name].append(rec)
    rows: list[dict[str, Any]] = []
    for name, recs in acc.items():
        row: dict[str, Any] = {"benchmark": "gapfill", "method": name, "size": size,
                               "seeds": len(recs)}
        for k in recs[0]:
            row[k] = float(np.mean([r[k] for r in recs]))
        row["mae_hidden_per_seed"] = [round(r["mae_hidden"], 5) for r in recs]
        if name.startswith("stori"):
            row["hidden"] = hidden
            row["max_epochs"] = epochs
        rows.append(row)
    base = min(r["mae_hidden"] for r in rows if not r["method"].startswith("stori"))
    for r in rows:
        r["mae_vs_best_baseline"] = r["mae_hidden"] / base
    rows += _speed(speed_size, weights, quick=quick)
    return rows


def _speed(size: int, weights: dict[str, Any], *, quick: bool) -> list[dict[str, Any]]:
    """Fill throughput in pixel-years per second (46 composites = one year)."""
    from xfusion import gapfill
    from xfusion.testing import synthetic_series

    ds = synthetic_series((size, size), seed=7)
    years = ds.sizes["time"] / 46
    npx = size * size
    rows = []
    devices = ["cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            devices.append("cuda")
    except ImportError:  # pragma: no cover
        pass
    for name in ("linear", "savgol", "harmonic", "stori"):
        for dev in devices if name == "stori" else ["cpu"]:
            if name == "stori" and "stori" not in weights:
                continue
            kw = {"weights": weights["stori"], "device": dev} if name == "stori" else {
                "method": name}
            gapfill(ds.isel(x=slice(0, 4), y=slice(0, 4)), **kw)  # warm-up (imports, CUDA)
            reps = 1 if (quick or name == "stori") else 3
            t0 = time.perf_counter()
            for _ in range(reps):
                gapfill(ds, **kw)
            dt = (time.perf_counter() - t0) / reps
            rows.append({"benchmark": "gapfill-speed", "method": name, "device": dev,
                         "pixels": npx, "threads": 1 if name == "stori" else None,
                         "seconds": dt, "pixel_years_per_s": npx * years / dt})
    return rows


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for r in out:
        print(json.dumps(r, default=str))
