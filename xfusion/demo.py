"""``xfusion demo``: the main job end to end on an embedded synthetic default (no network).

1. Build a synthetic Landsat/MODIS land-surface-temperature scene with known truth
   (:func:`xfusion.testing.synthetic_scene`) and write it as a local STAC catalog of COGs
   shaped like the Planetary Computer items (:func:`xfusion.testing.write_stac_catalog`).
2. Load fine (Landsat ``lwir11``) and coarse (MODIS ``LST_Day_1km``) through odc-stac onto one
   30 m GeoBox (:func:`xfusion.stac.load_cube`), lazily, and align them by day.
3. Run every fusion method that exists on the cube (see :data:`DEMO_METHODS`).
4. Write predictions and truth to ``DIR/demo.zarr``, print a metrics table against the truth,
   and save a PNG panel (inputs, predictions, truth, error maps) as ``DIR/demo.png``.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["DEMO_METHODS", "build_demo_cube", "run_demo"]


def _baseline(method: str) -> Callable[[xr.Dataset], xr.Dataset]:
    def run(cube: xr.Dataset) -> xr.Dataset:
        from xfusion.methods.baseline import baseline

        return baseline(cube, fine="fine", coarse="coarse", method=method)

    return run


def _starfm(cube: xr.Dataset) -> xr.Dataset:
    from xfusion.cube import get_geobox
    from xfusion.methods.starfm import STARFM_PRESETS, starfm

    # the lst preset's 1500 m search distance, capped at a quarter of the scene for small demos
    gbox = get_geobox(cube)
    extent = min(gbox.shape) * abs(gbox.resolution.x)
    distance = min(STARFM_PRESETS["lst"].max_search_distance, extent / 4)
    return starfm(cube, fine="fine", coarse="coarse", preset="lst", max_search_distance=distance)


def _sttfn(cube: xr.Dataset) -> dict[str, xr.Dataset]:
    from xfusion._compat import has
    from xfusion.methods.sttfn import sttfn

    if not (has("torch") and has("safetensors")):  # the core demo runs without the torch extra
        raise _Skip("needs torch: pip install 'xfusion[torch]'")
    from xfusion.cube import get_geobox

    # the default (variant "xfusion": short per-scene training, temporal-distance combination)
    default = sttfn(cube, fine="fine", coarse="coarse", seed=0, tile=256)
    # the paper's configuration, small (half-width nets, a few epochs) to stay within the
    # demo's time budget; see xfusion.sttfn for the full-size settings
    patch = max(16, min(48, min(get_geobox(cube).shape) // 4))
    paper = sttfn(cube, fine="fine", coarse="coarse", variant="paper", epochs=6, patches=64,
                  patch_size=patch, min_valid=0.3,
                  arch_params={"sr_width": 32, "feat": 16, "width": 32}, seed=0, tile=256)
    return {"sttfn": default[["fine"]], "sttfn-paper": paper[["fine"]]}


class _Skip(Exception):
    """A demo method that cannot run here (e.g. an optional dependency is missing)."""


DEMO_METHODS: dict[str, Callable[[xr.Dataset], xr.Dataset]] = {
    "fine-at-pair": _baseline("fine-at-pair"),
    "fine-plus-change": _baseline("fine-plus-change"),
    "starfm": _starfm,
    "sttfn": _sttfn,
}
"""Method label → function of the cube returning a Dataset with the predicted ``fine``
variable at the target dates (or a dict label → Dataset for variants of one method, e.g.
``"sttfn"``, the default configuration, and ``"sttfn-paper"``, the paper's). Each fusion method adds itself here when it lands."""


def _by_day(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(time=ds["time"].dt.floor("D").values)


def build_demo_cube(out: Path, *, size: int, seed: int, chunk: int) -> tuple[xr.Dataset, xr.Dataset]:
    """Write the synthetic scene as a STAC catalog under ``out`` and load it back as a cube.

    Returns ``(cube, truth)``: the fusion cube loaded through odc-stac (variables ``fine`` and
    ``coarse`` on the fine grid, ``observed_*`` coordinates) and the scene's true fine LST.
    """
    from xfusion.cube import combine
    from xfusion.stac import load_cube
    from xfusion.testing import synthetic_scene, write_stac_catalog

    scene, coarse_native = synthetic_scene(
        (size, size), kind="lst", times=8, seed=seed, coarse_native=True,
        fine_times=[0, 4, 7], cloud_fraction=[0.0, 0, 0, 0, 0.25, 0, 0, 0.2],
    )
    catalog_dir = out / "catalog"
    if catalog_dir.exists():
        shutil.rmtree(catalog_dir)
    cat = write_stac_catalog(scene, catalog_dir, coarse=coarse_native)
    gbox = scene.odc.geobox
    chunks = {"time": 1, "y": chunk, "x": chunk}
    (fine_band,) = cat.fine_bands.values()
    (coarse_band,) = cat.coarse_bands.values()
    fine = load_cube(cat.fine_items, bands=fine_band, geobox=gbox, chunks=chunks)
    coarse = load_cube(cat.coarse_items, bands=coarse_band, geobox=gbox, chunks=chunks)
    cube = combine(fine[[fine_band]], coarse[[coarse_band]], fine_name="fine",
                   coarse_name="coarse", align="day")
    cube.attrs = {"title": "xfusion demo cube (synthetic Landsat/MODIS LST)"}
    truth = _by_day(scene[["truth"]])
    return cube, truth["truth"]


def _panel(path: Path, cube: xr.Dataset, preds: dict[str, xr.Dataset], truth: xr.DataArray,
           target: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(preds.values()))
    pair = first["pair_time"].sel(time=target).values if "pair_time" in first.coords else None
    t = truth.sel(time=target).values
    lo, hi = np.nanpercentile(t, [2, 98])
    inputs = {}
    if pair is not None:
        inputs[f"fine (pair {str(pair)[:10]})"] = cube["fine"].sel(time=pair).values
        inputs[f"coarse (pair {str(pair)[:10]})"] = cube["coarse"].sel(time=pair).values
    inputs[f"coarse (target {str(target)[:10]})"] = cube["coarse"].sel(time=target).values
    ncol = max(len(inputs) + 1, len(preds))  # row 0: the inputs and the truth
    fig, axes = plt.subplots(3, ncol, figsize=(3.0 * ncol, 9.0), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, img) in zip(axes[0], {**inputs, f"truth {str(target)[:10]}": t}.items(),
                                strict=False):
        im = ax.imshow(img, vmin=lo, vmax=hi, cmap="inferno")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="LST (K)")
    for k, (name, p) in enumerate(preds.items()):
        img = p["fine"].sel(time=target).values
        axes[1, k].imshow(img, vmin=lo, vmax=hi, cmap="inferno")
        axes[1, k].set_title(f"{name}", fontsize=9)
        err = axes[2, k].imshow(img - t, vmin=-5, vmax=5, cmap="RdBu_r")
        rmse = float(np.sqrt(np.nanmean((img - t) ** 2)))
        axes[2, k].set_title(f"error, RMSE {rmse:.2f} K", fontsize=9)
    fig.colorbar(err, ax=axes[2].tolist(), shrink=0.8, label="prediction − truth (K)")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_demo(out: str | Path = "demo_out", size: int = 512, *, seed: int = 0, chunk: int = 256,
             quiet: bool = False) -> dict[str, Any]:
    """Run the demo job and return a summary (paths, timings, metrics per method).

    Parameters
    ----------
    out : str or path
        Output folder: ``catalog/`` (the local STAC catalog), ``demo.zarr``, ``demo.png``.
    size : int
        Scene size in fine pixels (square).
    seed : int
        Seed of the synthetic scene.
    chunk : int
        Dask chunk size of the loaded cube (spatial).
    quiet : bool
        Do not print.
    """
    from xfusion.cube import spatial_dims
    from xfusion.io import open_zarr, to_zarr
    from xfusion.metrics import evaluate, format_table

    say = (lambda *a: None) if quiet else print
    # GDAL warps the coarse COGs onto the fine grid through an in-memory dataset, which makes
    # rasterio emit a harmless NotGeoreferencedWarning per chunk; keep the demo output readable.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cube, truth = build_demo_cube(out, size=size, seed=seed, chunk=chunk)
    say(f"[xfusion demo] scene {size}x{size} px, {cube.sizes['time']} dates, catalog at "
        f"{out / 'catalog'} ({time.perf_counter() - t0:.1f} s)")

    preds: dict[str, xr.Dataset] = {}
    train_s: dict[str, float] = {}
    for name, func in DEMO_METHODS.items():
        tm = time.perf_counter()
        try:
            got = func(cube)
        except _Skip as why:
            say(f"[xfusion demo] skipping {name}: {why}")
            continue
        # the lazy methods return at once; the learned ones train here (predictions run later,
        # with the write)
        train_s[name] = time.perf_counter() - tm
        if train_s[name] >= 1.0:
            say(f"[xfusion demo] {name}: trained in {train_s[name]:.1f} s")
        preds.update(got if isinstance(got, dict) else {name: got})
    targets = next(iter(preds.values()))["time"].values
    result = xr.Dataset(
        {f"pred_{name.replace('-', '_')}": p["fine"] for name, p in preds.items()}
    )
    ydim, xdim = spatial_dims(cube)
    result["truth"] = truth.sel(time=targets).chunk({"time": 1, ydim: chunk, xdim: chunk})
    result.attrs = {"title": "xfusion demo: predictions of fine LST at the target dates",
                    "methods": list(preds)}
    store = out / "demo.zarr"
    t1 = time.perf_counter()
    to_zarr(result, store, mode="w", rechunk=True)
    say(f"[xfusion demo] ran {len(preds)} methods on {len(targets)} target dates and wrote "
        f"{store} ({time.perf_counter() - t1:.1f} s)")

    written = open_zarr(store)
    metrics = {
        name: evaluate(written[f"pred_{name.replace('-', '_')}"].rename("lst"),
                       written["truth"].rename("lst"), metrics=("rmse", "mae", "bias", "r",
                                                                "ssim", "psnr"))
        for name in preds
    }
    table = format_table(metrics)
    say("\nAccuracy against the true fine LST at the target dates (kelvin):")
    say(table)
    target = targets[len(targets) // 2]
    _panel(out / "demo.png", cube.compute(),
           {n: written[[f"pred_{n.replace('-', '_')}"]].rename(
               {f"pred_{n.replace('-', '_')}": "fine"}).assign_coords(
               pair_time=preds[n]["pair_time"]).compute() for n in preds},
           written["truth"].compute(), target)
    sr = _super_resolution(out, size=size, seed=seed, say=say)
    elapsed = time.perf_counter() - t0
    say(f"\n[xfusion demo] panel: {out / 'demo.png'}; total {elapsed:.1f} s")
    return {"store": str(store), "panel": str(out / "demo.png"), "elapsed_s": elapsed,
            "train_s": train_s,
            "table": table, "metrics": {k: v.compute() for k, v in metrics.items()},
            "targets": [str(t)[:10] for t in targets], "super_resolution": sr}


def _super_resolution(out: Path, *, size: int, seed: int,
                      say: Callable[..., None]) -> dict[str, dict[str, float]]:
    """LST super-resolution: coarse LST (4x coarser) sharpened with the fine NDVI as guide
    (bicubic, DMS and, with torch, sif-sr1's default variant trained on the scene itself)."""
    from xfusion._compat import has

    t0 = time.perf_counter()
    n = max(64, min(size, 192))
    methods = ["bicubic", "dms"] + (["sif-sr1"] if has("torch") and has("safetensors") else [])
    # sif-sr1 with its defaults (variant="residual": trained in seconds on the scene)
    train = {"seed": seed, "verbose": False}
    res = evaluate_synthetic(size=n, scale=4, seeds=(seed,), methods=methods, train=train,
                             workdir=out)
    say(f"\nLST super-resolution ({n}x{n} px from {n // 4}x{n // 4}, NDVI guide) against the "
        f"true fine LST, and coarse-scale consistency (kelvin; {time.perf_counter() - t0:.1f} s):")
    say(format_evaluation(res))
    return res


def evaluate_synthetic(
    *,
    size: int = 256,
    scale: int = 4,
    seeds: Sequence[int] = (0,),
    date: str = "2021-07-15T10:30",
    methods: Sequence[str] = ("bicubic", "dms", "sif-sr1"),
    train: Mapping[str, Any] | None = None,
    noise: float = 0.2,
    device: str = "auto",
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Compare super-resolution methods on synthetic LST scenes with a known fine truth.

    Each seed gives a scene (:func:`xfusion.testing.synthetic_scene`, ``kind="lst"`` with
    NDVI): the coarse LST (PSF-blurred block means + Gaussian ``noise``, no bias, no clouds)
    is super-resolved with the NDVI as guide. SIF methods are first trained self-supervised
    on the scene itself (``train``: keyword arguments of :func:`train_sif_sr`; the truth is
    never used). Reads and computes everything (evaluation helper, not lazy).

    Returns
    -------
    dict
        ``{method: {"rmse", "gradient_rmse", "consistency_mean", "consistency_power",
        "seconds", "train_seconds"}}`` averaged over the seeds (RMSE and gradient RMSE
        against the truth in kelvin; consistency: RMSE of the aggregated output against
        the coarse input; ``seconds``: inference time).
    """
    import tempfile

    from xfusion.methods.super_resolve import super_resolve
    from xfusion.metrics import coarse_consistency, gradient_rmse
    from xfusion.testing import synthetic_scene
    from xfusion.training.sifsr import SIF_DEFAULTS, train_sif_sr

    folder = os.fspath(workdir) if workdir is not None else tempfile.mkdtemp(prefix="xfusion-")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for seed in seeds:
        sc, modis = synthetic_scene((size, size), times=[date], coarse_factor=scale, ndvi=True,
                                    coarse_native=True, bias=0.0, noise=noise,
                                    coarse_cloud_fraction=0.0, seed=int(seed))
        lst = modis["coarse"].isel(time=0).rename("lst").load()
        ndvi = sc["ndvi"].isel(time=0).load()
        truth = sc["truth"].isel(time=0).values
        for m in methods:
            weights = None
            t_train = 0.0
            if m in SIF_DEFAULTS:
                t0 = time.perf_counter()
                weights = train_sif_sr(lst, guide=ndvi, method=m,  # type: ignore[arg-type]
                                       out=os.path.join(folder, f"{m}-{seed}.safetensors"),
                                       device=device, **dict(train or {}))
                t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = super_resolve(lst, guide=ndvi, method=m, weights=weights,  # type: ignore[arg-type]
                                device=device).compute()
            secs = time.perf_counter() - t0
            pred = out.values
            rows[m].append({
                "rmse": float(np.sqrt(np.nanmean((pred - truth) ** 2))),
                "gradient_rmse": gradient_rmse(pred, truth),
                "consistency_mean": float(coarse_consistency(out, lst, scale=scale)),
                "consistency_power": float(coarse_consistency(out, lst, scale=scale,
                                                              how="power")),
                "seconds": secs, "train_seconds": t_train,
            })
    return {m: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for m, rs in rows.items()}


def format_evaluation(res: Mapping[str, Mapping[str, float]]) -> str:
    """Plain-text table of :func:`evaluate_synthetic`'s result."""
    head = (f"{'method':<10} {'RMSE K':>8} {'grad RMSE':>10} {'consist. mean':>14} "
            f"{'consist. T^4':>13} {'infer s':>8} {'train s':>8}")
    lines = [head, "-" * len(head)]
    for m, r in res.items():
        lines.append(f"{m:<10} {r['rmse']:>8.3f} {r['gradient_rmse']:>10.3f} "
                     f"{r['consistency_mean']:>14.3f} {r['consistency_power']:>13.3f} "
                     f"{r['seconds']:>8.2f} {r['train_seconds']:>8.1f}")
    return "\n".join(lines)
