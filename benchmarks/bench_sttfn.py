"""STTFN: inference speed, engine overhead, training time, accuracy against STARFM.

Measured side by side in one run on this machine:

* **Inference** of the two full-size ``xfusion-v1`` nets (405,025 parameters each) plus the
  STC weighting through the public API (``xfusion.sttfn(ds, weights=...)``: lazy graph,
  engine tiles with a 13 px halo, dask threads) against calling the same two nets directly
  on the same tiles (same halo, torch only) and combining them with the same numpy STC:
  pixels/s of each and the ratio (goal <= 1.15). On CUDA (if present) also with bf16.
* **Training** time per epoch of one net with the default options (128 patches of 48 px,
  batch 16) for the full-size net and for the half-width net the demo uses, and for
  ``"xfusion-v2"`` with its benchmark options (32 patches of 128 px).
* **Accuracy on synthetic LST** (``xfusion.testing.synthetic_scene``, several seeds, known
  truth; pairs at the first, middle and last of 8 dates, the 5 dates between predicted): RMSE
  and SSIM of STTFN (per-triplet, the paper's regime; and general: nets trained once on
  other seeds' scenes with fine images at every date, applied without retraining) next to
  STARFM with the ``"lst"`` preset on both pairs (``pairs="bracket"``, the same inputs) and
  the fine-plus-change baseline; the ratio STTFN / STARFM RMSE (goal <= 0.85). Each net pair
  is combined three ways from the same two predictions (``diagnostics=True``): the paper's
  fine-scale STC (``combine="stc"``, the default), coarse-scale STC and by temporal distance
  (``combine="time"``, rows ``(time)``; ``"xfusion-v2"`` is called with it, the others are
  recombined with :func:`~xfusion.methods.sttfn.stc_weighting`, which the tests show equal).
* **Accuracy on real data**, Kranj (``../shared/data``; pairs DOY 068 and 093, predict 077;
  MODIS x 1e4; six bands): RMSE/SSIM per band and mean of STTFN, STARFM (both pairs) and the
  naive baselines.

``"xfusion-v2"`` (coarse-context branch, smoothed coarse change with a per-pixel gain) is
measured next to ``"xfusion-v1"`` in every part (rows ``sttfn-v2 ...``).

* **The default configuration** (part ``default``; what ``sttfn(ds, fine=..., coarse=...)``
  and ``xfusion fuse sttfn`` do with no options, ``variant="xfusion"``): RMSE/SSIM on the
  held-out synthetic seeds 3-7 and Kranj next to STARFM (``lst`` preset, same pairs; ``usda``
  on Kranj's reflectance) and the untrained guess (``epochs=0``), training seconds, the
  calibration of ``<var>_std`` (Spearman rho vs |error|, share within 1 and 2 std), and the
  training time vs accuracy on one 512² triplet with the load average.

Usage: ``python benchmarks/bench_sttfn.py [--quick] [--parts default --seeds 3,4,5,6,7
--size 256 --no-general]``; ``run(quick)`` returns the rows for
``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
KRANJ = HERE.parent.parent / "shared" / "data" / "kranj"

HALF = {"sr_width": 32, "feat": 16, "width": 32}
"""The half-width net (104,209 parameters) used on CPU for the accuracy runs and the demo."""

PER_TRIPLET = {"epochs": 20, "patches": 128, "patch_size": 48, "arch_params": HALF}
"""Per-triplet options of the synthetic accuracy runs ("xfusion-v1")."""

PER_TRIPLET_V2 = {"arch": "xfusion-v2", "epochs": 20, "patches": 32, "patch_size": 128}
"""Per-triplet options for "xfusion-v2" (its default widths, 109,426 parameters; patches
larger than its 95 px receptive radius, the same number of pixels per epoch as above)."""

GENERAL = {"epochs": 10, "patches": 256, "patch_size": 48, "max_gap_days": 64,
           "arch_params": HALF}
"""General-regime options (nets trained once on other scenes, cases up to 64 days apart)."""


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# --------------------------------------------------------------------------------------------
# inference speed and engine overhead


def _scene(size: int, seed: int, chunks: int | None = None, **kw: Any):
    from xfusion.testing import synthetic_scene

    opts = {"times": 3, "fine_times": [0, 2], "cloud_fraction": 0.0,
            "coarse_cloud_fraction": 0.0, "seed": seed}
    opts.update(kw)
    if chunks:
        opts["chunks"] = {"time": 1, "y": chunks, "x": chunks}
    return synthetic_scene((size, size), **opts)


def _direct(nets, l1, m1, m2, l3, m3, *, tile: int, halo: int) -> np.ndarray:
    """Both nets on the engine's tiles (tile + halo, clipped at the image edge) + STC."""
    import torch

    from xfusion.methods.sttfn import stc_weighting

    h, w = l1.shape
    x_f = np.stack([l1, m1, m2])[None]
    x_b = np.stack([l3, m3, m2])[None]
    p = [np.empty((h, w), np.float32), np.empty((h, w), np.float32)]
    with torch.inference_mode():
        for r0 in range(0, h, tile):
            for c0 in range(0, w, tile):
                r1, c1 = min(r0 + tile, h), min(c0 + tile, w)
                a0, a1 = max(r0 - halo, 0), min(r1 + halo, h)
                b0, b1 = max(c0 - halo, 0), min(c1 + halo, w)
                for k, (net, x) in enumerate(zip(nets, (x_f, x_b), strict=True)):
                    y = net(torch.from_numpy(np.ascontiguousarray(x[..., a0:a1, b0:b1])))
                    p[k][r0:r1, c0:c1] = y[0, 0, r0 - a0:r1 - a0, c0 - b0:c1 - b0].numpy()
    return stc_weighting(p[0], p[1], m2)


def inference(size: int = 1024, chunk: int = 512, repeats: int = 2,
              arch: str = "xfusion-v1") -> dict[str, Any]:
    """Public-API inference vs the two nets called directly on the same tiles (CPU)."""
    import dask
    import torch

    import xfusion
    from xfusion.methods.sttfn import TrainedSttfn
    from xfusion.models import build_model

    torch.manual_seed(0)
    nets = [build_model(arch, 1, init="default", mean=[295.0], std=[6.0]).eval()
            for _ in range(2)]  # fmt: skip
    meta = {"method": "sttfn", "arch": arch, "arch_params": {}, "nbands": 1,
            "bands": ["fine"], "coarse_bands": ["coarse"], "units": ["K"],
            "halo": nets[0].halo}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = TrainedSttfn(nets[0], nets[1], meta).save(Path(tmp) / "full.safetensors")
        ds = _scene(size, 0, chunks=chunk).drop_vars("truth")
        arrays = {k: ds[v].isel(time=i).values for k, v, i in (
            ("l1", "fine", 0), ("m1", "coarse", 0), ("m2", "coarse", 1), ("l3", "fine", 2),
            ("m3", "coarse", 2))}  # fmt: skip
        ds = ds.persist()

        def engine() -> np.ndarray:
            out = xfusion.sttfn(ds, fine="fine", coarse="coarse", weights=path, tile=chunk,
                                device="cpu")
            with dask.config.set(scheduler="threads"):
                return out.fine.values[0]

        def direct() -> np.ndarray:
            return _direct(nets, **arrays, tile=chunk, halo=nets[0].halo)

        np.testing.assert_allclose(engine(), direct(), atol=2e-3)  # warm-up + equality
        t_direct = _best(direct, repeats)
        t_engine = _best(engine, repeats)
    px = size * size
    return {
        "benchmark": "sttfn_inference_cpu", "arch": arch, "halo": nets[0].halo,
        "size": size, "chunk": chunk, "tile": chunk,
        "params_per_net": sum(p.numel() for p in nets[0].parameters()),
        "torch_threads": torch.get_num_threads(),
        "engine_s": t_engine, "direct_s": t_direct,
        "engine_px_s": px / t_engine, "direct_px_s": px / t_direct,
        "ratio_engine_over_direct": t_engine / t_direct,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# training time


def training(epochs: int = 2) -> list[dict[str, Any]]:
    """Seconds per epoch of one net (default options: 128 patches of 48 px, batch 16)."""
    import xfusion

    ds = _scene(256, 0).drop_vars("truth")
    rows = []
    for label, opts in (
        ("v1 full (405,025 params)", {}),
        ("v1 half width (104,209 params)", {"arch_params": HALF}),
        ("v2 (109,426 params)", {k: v for k, v in PER_TRIPLET_V2.items() if k != "epochs"}),
    ):
        out = xfusion.sttfn(ds, fine="fine", coarse="coarse", epochs=epochs, patience=None,
                            device="cpu", **opts)
        trip = json.loads(out.attrs["xfusion_sttfn"])["triplets"][0]
        per_epoch = [m["seconds"] / max(m["epochs_run"], 1) for m in trip["metrics"].values()]
        rows.append({"benchmark": "sttfn_training_cpu", "net": label,
                     "patches": opts.get("patches", 128),
                     "patch_size": opts.get("patch_size", 48), "batch_size": 16,
                     "seconds_per_epoch": float(np.mean(per_epoch))})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# accuracy


def _rmse(pred, truth) -> float:
    d = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return float(np.sqrt(np.nanmean(d * d)))


def _ssim(pred, truth) -> float:
    """xfusion.metrics.ssim (NaN-masked windows; data range = the reference's max - min)."""
    from xfusion.metrics import ssim

    return float(ssim(pred, truth).values)


def _prior(p) -> np.ndarray:
    """The temporal weight ``(t3 - t2) / (t3 - t1)`` of the forward prediction, per target."""
    t1, t2, t3 = (np.asarray(v, "datetime64[ns]").astype(np.float64)
                  for v in (p.pair_time.values, p.time.values, p.pair_time_after.values))
    return ((t3 - t2) / (t3 - t1)).reshape(-1, 1, 1)


def _recombine(p, fine: str, coarse_at_targets: np.ndarray, **kw: Any) -> np.ndarray:
    from xfusion.methods.sttfn import stc_weighting

    return stc_weighting(p[f"{fine}_forward"].values, p[f"{fine}_backward"].values,
                         coarse_at_targets, **kw)


def synthetic_accuracy(seeds=(0, 1, 2), size: int = 256, general: bool = True,
                       train_seeds=(100, 101), train_size: int = 192) -> list[dict[str, Any]]:
    """STTFN vs STARFM (lst preset, both pairs) on synthetic LST scenes with known truth."""
    import xfusion
    from xfusion.testing import synthetic_scene

    weights = None
    t_general = 0.0
    tmp = tempfile.TemporaryDirectory()
    if general:
        t0 = time.perf_counter()
        train = [synthetic_scene((train_size, train_size), seed=s, times=8,
                                 fine_times=list(range(8)), cloud_fraction=0.0)
                 for s in train_seeds]  # fmt: skip
        weights = Path(tmp.name) / "general.safetensors"
        xfusion.train_sttfn(train, fine="fine", coarse="coarse", out=weights, seed=0,
                            device="cpu", **GENERAL)
        t_general = time.perf_counter() - t0
    rows = []
    for seed in seeds:
        s = synthetic_scene((size, size), seed=seed, times=8, fine_times=[0, 4, 7],
                            cloud_fraction=0.0)
        truth = s["truth"]
        kw = {"fine": "fine", "coarse": "coarse"}
        t0 = time.perf_counter()
        preds = {"starfm": xfusion.starfm(s, preset="lst", pairs="bracket", **kw)}
        t_starfm = time.perf_counter() - t0
        preds["fine-plus-change"] = xfusion.baseline(s, **kw)
        t0 = time.perf_counter()
        preds["sttfn per-triplet"] = xfusion.sttfn(s, seed=seed, device="cpu", diagnostics=True,
                                                   **PER_TRIPLET, **kw).compute()
        t_sttfn = time.perf_counter() - t0
        preds["sttfn untrained"] = xfusion.sttfn(s, epochs=0, diagnostics=True,
                                                 arch_params={"sr_width": 4, "feat": 4,
                                                              "width": 4}, **kw).compute()
        t0 = time.perf_counter()
        preds["sttfn-v2 per-triplet (time)"] = xfusion.sttfn(
            s, seed=seed, device="cpu", diagnostics=True, combine="time", **PER_TRIPLET_V2, **kw
        ).compute()
        t_v2 = time.perf_counter() - t0
        preds["sttfn-v2 untrained"] = xfusion.sttfn(s, arch="xfusion-v2", epochs=0,
                                                    diagnostics=True, **kw).compute()
        if weights is not None:
            preds["sttfn general"] = xfusion.sttfn(s, weights=weights, device="cpu",
                                                   diagnostics=True, **kw).compute()
        factor = int(s.attrs["coarse_factor"])
        for name in [n for n in preds if n.startswith("sttfn")]:
            p = preds[name]
            m2 = s.coarse.sel(time=p.time).values
            base = name.removesuffix(" (time)")
            variants = {f"{base} (coarse STC)": {"factor": factor},
                        f"{base} (time)": {"prior": _prior(p), "residuals": False}}
            if base != name:
                variants[base] = {}  # the paper's fine-scale STC
            for label, opts in variants.items():
                if label not in preds:
                    preds[label] = p[["fine"]].copy(data={"fine": _recombine(p, "fine", m2,
                                                                             **opts)})
        targets = preds["starfm"].time.values
        row: dict[str, Any] = {"benchmark": "sttfn_accuracy_synthetic_lst", "seed": seed,
                               "size": size, "targets": len(targets)}  # fmt: skip
        for name, p in preds.items():
            r = [_rmse(p.fine.sel(time=t), truth.sel(time=t)) for t in targets]
            q = [_ssim(p.fine.sel(time=t), truth.sel(time=t)) for t in targets]
            row[f"rmse_{name}"] = float(np.sqrt(np.mean(np.square(r))))
            row[f"ssim_{name}"] = float(np.mean(q))
        for name in [n for n in preds if n.startswith("sttfn")]:
            if f"rmse_{name}" in row:
                row[f"ratio_{name}_over_starfm"] = row[f"rmse_{name}"] / row["rmse_starfm"]
        row.update(seconds_starfm=t_starfm, seconds_sttfn_per_triplet=t_sttfn,
                   seconds_sttfn_v2_per_triplet=t_v2, seconds_general_training=t_general)
        rows.append(row)
    tmp.cleanup()
    summary = {"benchmark": "sttfn_accuracy_synthetic_lst", "seed": "mean", "size": size}
    for key in rows[0]:
        if key.startswith(("rmse_", "ssim_", "ratio_")):
            summary[key] = float(np.mean([r[key] for r in rows]))
    return [*rows, summary]


def _doy(doy: str) -> str:
    return str(np.datetime64("2020-01-01") + np.timedelta64(int(doy) - 1, "D"))


def kranj_accuracy(data: Path = KRANJ, epochs: int = 20) -> list[dict[str, Any]]:
    """Kranj: pairs DOY 068 and 093, predict 077 (six bands), STTFN vs STARFM and baselines."""
    import xfusion
    from xfusion.cube import from_geotiffs

    if not data.is_dir():
        return [{"benchmark": "sttfn_accuracy_kranj", "skipped": f"no data at {data}"}]

    def landsat(doy: str) -> str:
        return glob.glob(str(data / "landsat" / "unfilled" / f"2020{doy}_*.tif"))[0]

    def modis(doy: str) -> str:
        return glob.glob(str(data / "modis" / "filled" / f"2020{doy}_*.tif"))[0]

    ds = from_geotiffs(fine={_doy(d): landsat(d) for d in ("068", "093")},
                       coarse={_doy(d): modis(d) for d in ("068", "077", "093")})  # fmt: skip
    fine = sorted(str(v) for v in ds.data_vars if str(v).startswith("fine"))
    coarse = sorted(str(v) for v in ds.data_vars if str(v).startswith("coarse"))
    for c in coarse:
        ds[c] = ds[c] * 1e4
    truth = from_geotiffs(fine={_doy("077"): landsat("077")},
                          coarse={_doy("077"): modis("077")})  # fmt: skip
    target = [_doy("077")]
    kw = {"fine": fine, "coarse": coarse, "targets": target}
    t0 = time.perf_counter()
    preds = {
        "sttfn": xfusion.sttfn(ds, epochs=epochs, patches=64, patch_size=24, batch_size=8,
                               arch_params=HALF, seed=0, device="cpu", diagnostics=True, **kw),
    }  # fmt: skip
    t_sttfn = time.perf_counter() - t0
    preds["sttfn-v2 (time)"] = xfusion.sttfn(ds, arch="xfusion-v2", epochs=epochs, patches=16,
                                             patch_size=96, batch_size=8, seed=0, device="cpu",
                                             combine="time", diagnostics=True, **kw)
    m2 = np.stack([ds[c].sel(time=[np.datetime64(target[0])]).values for c in coarse], axis=1)
    for name in ("sttfn", "sttfn-v2 (time)"):
        p = preds[name]
        base = name.removesuffix(" (time)")
        for label, opts in ((base, {}), (f"{base} (time)", {"prior": _prior(p),
                                                            "residuals": False})):
            if label not in preds:
                preds[label] = p[fine].copy(data={
                    f: _recombine(p, f, m2[:, b], **opts) for b, f in enumerate(fine)})
    preds["sttfn-v2 untrained"] = xfusion.sttfn(ds, arch="xfusion-v2", epochs=0, **kw)
    preds["starfm (both pairs)"] = xfusion.starfm(ds, pairs="bracket", preset="usda",
                                                  max_search_distance=600, **kw)
    preds["fine-plus-change (068)"] = xfusion.baseline(ds, pairs="before", **kw)
    preds["fine-at-pair (068)"] = xfusion.baseline(ds, pairs="before", method="fine-at-pair",
                                                   **kw)
    preds["coarse at target"] = ds[coarse].sel(time=[np.datetime64(target[0])]).rename(
        dict(zip(coarse, fine, strict=True)))
    t = np.datetime64(target[0])
    ref = {f: truth[f].sel(time=t).values for f in fine}
    valid = np.logical_and.reduce([np.isfinite(v) for v in ref.values()])
    for p in preds.values():
        for f in fine:
            valid &= np.isfinite(p[f].sel(time=t).values)
    rows = []
    for name, p in preds.items():
        row: dict[str, Any] = {"benchmark": "sttfn_accuracy_kranj", "method": name,
                               "pixels": int(valid.sum())}  # fmt: skip
        for b, f in enumerate(fine, start=1):
            v = p[f].sel(time=t).where(valid)
            r = truth[f].sel(time=t).where(valid)
            row[f"rmse_b{b}"] = _rmse(v, r)
            row[f"ssim_b{b}"] = _ssim(v, r)
        row["rmse_mean"] = float(np.mean([row[f"rmse_b{b}"] for b in range(1, len(fine) + 1)]))
        row["ssim_mean"] = float(np.mean([row[f"ssim_b{b}"] for b in range(1, len(fine) + 1)]))
        if name == "sttfn":
            row["seconds"] = t_sttfn
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# the default configuration (what `sttfn(ds, fine=..., coarse=...)` and `xfusion fuse sttfn` do)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _calibration(std: np.ndarray, err: np.ndarray) -> dict[str, float]:
    """Spearman rho of the predicted spread vs |error|, share of errors within 1 and 2 std."""
    ok = np.isfinite(std) & np.isfinite(err)
    s, e = std[ok].astype(np.float64), np.abs(err[ok]).astype(np.float64)
    return {"rho": _spearman(s, e), "within_1std": float(np.mean(e <= s)),
            "within_2std": float(np.mean(e <= 2 * s))}


def _train_seconds(out) -> float:
    rec = json.loads(out.attrs["xfusion_sttfn"])
    return float(sum(t["seconds"] for t in rec.get("triplets", [])))


def default_accuracy(seeds=(3, 4, 5, 6, 7), size: int = 256, cloud_fraction: float = 0.0,
                     paper: bool = False) -> list[dict[str, Any]]:
    """The DEFAULT STTFN (no options) vs STARFM (``lst`` preset, same bracketing pairs) on
    synthetic LST scenes: RMSE/SSIM per seed, training seconds, and the calibration of the
    spread ``<var>_std`` (``diagnostics=True``); optionally ``variant="paper"`` too."""
    import xfusion
    from xfusion.testing import synthetic_scene

    rows = []
    for seed in seeds:
        s = synthetic_scene((size, size), seed=seed, times=8, fine_times=[0, 4, 7],
                            cloud_fraction=cloud_fraction)
        truth = s["truth"]
        kw = {"fine": "fine", "coarse": "coarse"}
        preds = {"starfm": xfusion.starfm(s, preset="lst", pairs="bracket", **kw).compute()}
        t0 = time.perf_counter()
        out = s.fusion.sttfn(diagnostics=True, progress=False, **kw).compute()
        t_default = time.perf_counter() - t0
        preds["sttfn default"] = out
        preds["sttfn default untrained"] = s.fusion.sttfn(epochs=0, progress=False,
                                                          **kw).compute()
        if paper:
            preds["sttfn paper"] = s.fusion.sttfn(variant="paper", progress=False,
                                                  **kw).compute()
        targets = preds["starfm"].time.values
        row: dict[str, Any] = {"benchmark": "sttfn_default_synthetic_lst", "seed": seed,
                               "size": size, "cloud_fraction": cloud_fraction,
                               "targets": len(targets), "seconds_default": t_default,
                               "train_seconds_default": _train_seconds(out)}  # fmt: skip
        for name, p in preds.items():
            r, q = [], []
            for t in targets:
                ref = truth.sel(time=t)
                ok = np.isfinite(ref.values) & np.isfinite(p.fine.sel(time=t).values)
                r.append(_rmse(p.fine.sel(time=t).values[ok], ref.values[ok]))
                q.append(_ssim(p.fine.sel(time=t).where(ok), ref.where(ok)))
            row[f"rmse_{name}"] = float(np.sqrt(np.mean(np.square(r))))
            row[f"ssim_{name}"] = float(np.mean(q))
            if name != "starfm":
                row[f"ratio_{name}"] = row[f"rmse_{name}"] / row["rmse_starfm"]
        err = out.fine.values - truth.sel(time=targets).values
        row.update({f"std_{k}": v for k, v in _calibration(out.fine_std.values, err).items()})
        rows.append(row)
    summary: dict[str, Any] = {"benchmark": "sttfn_default_synthetic_lst", "seed": "mean",
                               "size": size, "cloud_fraction": cloud_fraction}  # fmt: skip
    for key in rows[0]:
        if key.startswith(("rmse_", "ssim_", "ratio_", "std_", "seconds", "train_seconds")):
            summary[key] = float(np.mean([r[key] for r in rows]))
    summary["seeds_at_or_below_0.85"] = int(sum(r["ratio_sttfn default"] <= 0.85 for r in rows))
    return [*rows, summary]


def default_training_time(size: int = 512, budgets=(None, 12)) -> list[dict[str, Any]]:
    """Training seconds of the default configuration on one ``size``² triplet (one target
    halfway), for the default budget and larger ``epochs=``, with the RMSE against the truth
    and the machine's load average."""
    import xfusion
    from xfusion.testing import synthetic_scene

    s = synthetic_scene((size, size), seed=11, times=3, fine_times=[0, 2],
                        cloud_fraction=0.0)
    truth = s.truth.isel(time=[1]).values
    starfm = xfusion.starfm(s, preset="lst", pairs="bracket", fine="fine", coarse="coarse")
    r_starfm = _rmse(starfm.fine.values, truth)
    rows = []
    for epochs in (0, *budgets):
        load = os.getloadavg()[0]
        out = s.fusion.sttfn(fine="fine", coarse="coarse", progress=False,
                             **({} if epochs is None else {"epochs": epochs}))
        rec = json.loads(out.attrs["xfusion_sttfn"])["triplets"][0]
        rows.append({"benchmark": "sttfn_default_training_time", "size": size,
                     "epochs": "default" if epochs is None else epochs,
                     "train_seconds": rec["seconds"],
                     "epochs_run": [m["epochs_run"] for m in rec["metrics"].values()],
                     "best_epoch": [m["best_epoch"] for m in rec["metrics"].values()],
                     "rmse": _rmse(out.fine.values, truth), "rmse_starfm": r_starfm,
                     "load_1min_before": load, "load_1min_after": os.getloadavg()[0],
                     "torch_threads": __import__("torch").get_num_threads()})  # fmt: skip
    return rows


def kranj_default(data: Path = KRANJ, paper: bool = False) -> list[dict[str, Any]]:
    """Kranj (pairs DOY 068/093, predict 077, six bands): the default STTFN (and optionally
    the paper variant) vs STARFM (both pairs, ``usda`` preset with a 600 m search distance:
    the image is 44 x 45 px; the ``lst`` preset's valid range is kelvin, so it returns NaN on
    reflectance), mean RMSE/SSIM over bands."""
    import xfusion
    from xfusion.cube import from_geotiffs

    if not data.is_dir():
        return [{"benchmark": "sttfn_default_kranj", "skipped": f"no data at {data}"}]

    def landsat(doy: str) -> str:
        return glob.glob(str(data / "landsat" / "unfilled" / f"2020{doy}_*.tif"))[0]

    def modis(doy: str) -> str:
        return glob.glob(str(data / "modis" / "filled" / f"2020{doy}_*.tif"))[0]

    ds = from_geotiffs(fine={_doy(d): landsat(d) for d in ("068", "093")},
                       coarse={_doy(d): modis(d) for d in ("068", "077", "093")})  # fmt: skip
    fine = sorted(str(v) for v in ds.data_vars if str(v).startswith("fine"))
    coarse = sorted(str(v) for v in ds.data_vars if str(v).startswith("coarse"))
    for c in coarse:
        ds[c] = ds[c] * 1e4
    truth = from_geotiffs(fine={_doy("077"): landsat("077")},
                          coarse={_doy("077"): modis("077")})  # fmt: skip
    target = [_doy("077")]
    kw = {"fine": fine, "coarse": coarse, "targets": target}
    preds = {}
    t0 = time.perf_counter()
    preds["sttfn default"] = ds.fusion.sttfn(progress=False, diagnostics=True, **kw).compute()
    t_default = time.perf_counter() - t0
    preds["sttfn default untrained"] = ds.fusion.sttfn(epochs=0, progress=False, **kw)
    if paper:
        preds["sttfn paper"] = ds.fusion.sttfn(variant="paper", progress=False, **kw)
    preds["starfm usda 600 m"] = xfusion.starfm(ds, pairs="bracket", preset="usda",
                                                max_search_distance=600, **kw)
    t = np.datetime64(target[0])
    rows = []
    for name, p in preds.items():
        row: dict[str, Any] = {"benchmark": "sttfn_default_kranj", "method": name}
        r, q = [], []
        for f in fine:
            ref = truth[f].sel(time=t)
            v = p[f].sel(time=t)
            ok = np.isfinite(ref.values) & np.isfinite(v.values)
            r.append(_rmse(v.values[ok], ref.values[ok]))
            q.append(_ssim(v.where(ok), ref.where(ok)))
        row.update(rmse_mean=float(np.mean(r)), ssim_mean=float(np.mean(q)))
        if name == "sttfn default":
            row["seconds"] = t_default
            errs = np.concatenate([(p[f].sel(time=t) - truth[f].sel(time=t)).values.ravel()
                                   for f in fine])
            stds = np.concatenate([p[f"{f}_std"].sel(time=t).values.ravel() for f in fine])
            row.update({f"std_{k}": v for k, v in _calibration(stds, errs).items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------


PARTS = ("inference", "training", "synthetic", "kranj", "default")


def run(quick: bool = False, parts: tuple[str, ...] = PARTS, seeds: tuple[int, ...] | None = None,
        size: int | None = None, general: bool | None = None) -> list[dict[str, Any]]:
    """All STTFN benchmarks (``quick``: smaller sizes, one seed, no general regime)."""
    rows: list[dict[str, Any]] = []
    if "inference" in parts:
        rows += [inference(size=512 if quick else 1024, chunk=256 if quick else 512,
                           repeats=1 if quick else 2, arch=arch)
                 for arch in ("xfusion-v1", "xfusion-v2")]
    if "training" in parts:
        rows += training(epochs=1 if quick else 2)
    if "synthetic" in parts:
        rows += synthetic_accuracy(
            seeds=seeds or ((0,) if quick else (0, 1, 2)),
            size=size or (128 if quick else 256),
            general=(not quick) if general is None else general,
        )  # fmt: skip
    if "kranj" in parts:
        rows += kranj_accuracy(epochs=5 if quick else 20)
    if "default" in parts:
        rows += default_accuracy(seeds=seeds or ((3,) if quick else (3, 4, 5, 6, 7)),
                                 size=size or (128 if quick else 256))
        rows += kranj_default()
        rows += default_training_time(size=256 if quick else 512,
                                      budgets=(None,) if quick else (None, 12))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
    p.add_argument("--seeds", default=None, help="synthetic seeds, e.g. 3,4,5 (held out)")
    p.add_argument("--size", type=int, default=None, help="synthetic scene size")
    p.add_argument("--no-general", action="store_true", help="skip the general regime")
    a = p.parse_args(argv)
    seeds = tuple(int(v) for v in a.seeds.split(",")) if a.seeds else None
    rows = run(quick=a.quick, parts=tuple(a.parts.split(",")), seeds=seeds, size=a.size,
               general=False if a.no_general else None)
    for r in rows:
        print(json.dumps(r, default=str), flush=True)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
