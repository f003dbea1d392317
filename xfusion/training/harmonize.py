"""Landsat-8 -> Sentinel-2 harmonization training: an ensemble of U-Nets (:func:`train_harmonizer`).

Each member is trained on patches of a Landsat scene (30 m, optionally with the 15 m pan band)
and the Sentinel-2 bands of the same date on the 10 m grid nested in it; the checkpoint holds
the members and their normalisation statistics, applied by :func:`xfusion.harmonize`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion.cube.grids import as_float, nested_grids
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.errors import NotEnoughDataError, TimeAxisError, VariableNotFoundError
from xfusion.models.registry import HARMONIZE_ARCH

__all__ = ["L8_BANDS", "S2_BANDS", "calibration_report", "fit_calibration", "stack_bands",
           "train_harmonizer"]

L8_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir08", "swir16", "swir22")
"""Landsat-8 OLI bands the harmonizer reads by default (30 m)."""
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B8A", "B11", "B12")
"""Sentinel-2 MSI bands it predicts by default (10 m)."""


def stack_bands(ds: xr.Dataset, bands: Sequence[str], *, role: str) -> xr.DataArray:
    missing = [b for b in bands if b not in ds.data_vars]
    if missing:
        raise VariableNotFoundError(
            f"The {role} band {missing[0]!r} is not on the dataset. Variables on the dataset "
            f"include {sorted(map(str, ds.data_vars))!r}; pass bands=[...] naming the "
            f"{len(bands)} bands in the order the weights expect."
        )
    parts = [as_float(ds[b]) for b in bands]
    out = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
    return out.assign_coords(band=list(bands))


MC_PASSES, MC_P, MC_SEED = 20, 0.1, 0
"""The MC-dropout setting the stored calibration is fitted for (harmonize's defaults)."""


def calibration_report(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Calibration of a predicted ``std`` on held-out data: Spearman rho of ``std`` vs the
    absolute error, and the share of errors within 1 and 2 ``std`` (ideal: 0.683, 0.954)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(mean) & np.isfinite(std) & np.isfinite(truth)
    err = np.abs(mean[ok] - truth[ok]).astype(np.float64)
    sd = std[ok].astype(np.float64)
    return {"spearman": float(spearmanr(sd, err)[0]), "within_1std": float(np.mean(err <= sd)),
            "within_2std": float(np.mean(err <= 2 * sd)), "n": int(err.size)}


def fit_calibration(mean: Any, std: Any, truth: Any, *, steps: int = 300,
                    max_pixels: int = 200_000, seed: int = 0) -> dict[str, list[float]]:
    """Fit per-band ``a, c (one per detail window), s0`` of
    :func:`xfusion.models.harmonize_unet.calibrated_std` by Gaussian maximum likelihood.

    ``mean, std, truth``: torch tensors ``(N, B, H, W)`` (the raw ensemble / MC-dropout mean
    and spread on validation patches, and the targets; NaN = unobserved).
    """
    import torch

    from xfusion.models.harmonize_unet import DETAIL_WINDOWS, calibrated_std, local_detail

    nb = mean.shape[1]
    dets = [local_detail(mean, w) for w in DETAIL_WINDOWS]
    cols = [t.permute(1, 0, 2, 3).reshape(nb, -1) for t in (mean, std, truth, *dets)]
    ok = torch.isfinite(torch.stack(cols)).all(dim=0).all(dim=0)
    cols = [c[:, ok] for c in cols]
    if cols[0].shape[1] > max_pixels:
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(cols[0].shape[1], generator=gen)[:max_pixels]
        cols = [c[:, pick] for c in cols]
    m, sd, y, *dt = cols
    r2 = (y - m) ** 2
    scale = torch.sqrt(r2.mean(dim=1)).clamp_min(1e-6)  # per-band error scale
    # log-parameters, started at: spread as is, small detail terms, floor 10% of the RMSE
    la = torch.zeros(nb, requires_grad=True)
    lc = torch.full((len(dt), nb), -2.0, requires_grad=True)
    ls = torch.log(0.1 * scale).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([la, lc, ls], lr=0.05)
    e = lambda t: t[None, :, :, None]
    for _ in range(steps):
        opt.zero_grad()
        v = calibrated_std(e(sd), [e(d) for d in dt], la.exp(), list(lc.exp()),
                           ls.exp())[0, :, :, 0] ** 2
        nll = (0.5 * (torch.log(v) + r2 / v)).mean(dim=1) - torch.log(scale)
        nll.sum().backward()
        opt.step()
    return {"a": la.exp().tolist(), "c": lc.exp().tolist(), "s0": ls.exp().tolist()}


def _calibrate_on(nets: dict[str, Any], val_ds: Any, *, nout: int, seed: int
                  ) -> dict[str, Any]:
    """Fit the calibration of each uncertainty mode on the validation patches."""
    import torch

    from xfusion.models.harmonize_unet import (
        DETAIL_WINDOWS,
        Ensemble,
        MCDropout,
        calibrated_std,
        local_detail,
    )

    members = [nets[k].eval() for k in sorted(nets)]
    modes: dict[str, Any] = {"mc-dropout": MCDropout(members[0], passes=MC_PASSES, p=MC_P,
                                                     seed=MC_SEED)}
    if len(members) > 1:
        modes["ensemble"] = Ensemble(members)
    xs, ys = zip(*[val_ds[i] for i in range(len(val_ds))], strict=True)
    x, y = torch.stack(list(xs)), torch.stack(list(ys))
    out: dict[str, Any] = {}
    for name, mod in modes.items():
        with torch.no_grad():
            o = torch.cat([mod(x[k:k + 8]) for k in range(0, x.shape[0], 8)])
        mean, std = o[:, :nout], o[:, nout:]
        cal = fit_calibration(mean, std, y, seed=seed)
        with torch.no_grad():
            cstd = calibrated_std(std, [local_detail(mean, w) for w in DETAIL_WINDOWS],
                                  torch.tensor(cal["a"]), list(torch.tensor(cal["c"])),
                                  torch.tensor(cal["s0"]))
        out[name] = {**cal, "members": len(members),
                     **({"passes": MC_PASSES, "p": MC_P, "seed": MC_SEED}
                        if name == "mc-dropout" else {}),
                     "validation_raw": calibration_report(mean.numpy(), std.numpy(), y.numpy()),
                     "validation_calibrated": calibration_report(mean.numpy(), cstd.numpy(),
                                                                 y.numpy())}
    return out


def train_harmonizer(
    landsat: xr.Dataset,
    sentinel2: xr.Dataset,
    /,
    *,
    out: str | os.PathLike[str],
    bands: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    pan: xr.DataArray | None = None,
    scale: int | None = None,
    members: int = 1,
    depth: int = 3,
    width: int = 16,
    upsample: Literal["upsample", "shuffle"] = "upsample",
    residual: bool = True,
    epochs: int = 30,
    steps_per_epoch: int = 20,
    batch_size: int = 8,
    patch: int = 64,
    lr: float = 1e-3,
    patience: int = 10,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    time_limit: float | None = None,
    verbose: bool | None = None,
    calibrate: bool = True,
) -> str:
    """Train harmonization U-Net member(s) on same-day Landsat-8 / Sentinel-2 pairs.

    The inputs are bicubic-upsampled onto the Sentinel-2 grid, lazily, and stacked with the
    targets; :class:`xfusion.training.RandomPatchSampler` draws patches of ``patch`` pixels
    from the training part of the scene (:func:`xfusion.training.spatial_split` keeps a strip
    for validation), reading only the chunks they touch; :func:`xfusion.training.fit` trains
    with the masked L1 loss (the paper's), dihedral augmentation and early stopping on the
    validation loss. ``members > 1`` trains independent networks (different seeds and
    patches) for a deep ensemble, saved in one file.

    Parameters
    ----------
    landsat : xarray.Dataset
        Landsat-8 reflectance (0..1) on the 30 m grid, optionally with ``time``.
    sentinel2 : xarray.Dataset
        Sentinel-2 reflectance (0..1, the -1000 offset of processing baseline 04.00 already
        removed) on a grid nested in the Landsat one (10 m: ``scale=3``), same dates.
    out : path
        Output checkpoint.
    bands : sequence of str, optional
        Landsat variables (default :data:`L8_BANDS` when present, else all variables).
    targets : sequence of str, optional
        Sentinel-2 variables (default :data:`S2_BANDS` when present, else all variables).
    pan : xarray.DataArray, optional
        Landsat pan reflectance on the Sentinel-2 grid (adds a 7th input channel).
    scale : int, optional
        Sentinel-2 pixels per Landsat pixel (default: from the grids).
    members : int, default 1
        Independently trained networks (a deep ensemble for ``uncertainty="ensemble"``).
    depth, width, upsample, residual
        Architecture (:class:`xfusion.models.harmonize_unet.HarmonizeUNet`); the default is
        the small CPU configuration with a global residual (bicubic Landsat + learned
        correction; not in the paper); ``depth=5, width=64, residual=False`` /
        ``depth=6, width=64, residual=False`` are the published 29 M / 116 M parameter
        models.
    epochs, steps_per_epoch, batch_size, patch, lr, patience, val_fraction, seed
        Training loop (the paper: lr 1e-5, batch 10, 200 epochs on ~60 k patches; the
        defaults here suit one scene on a CPU).
    device : str
        Training device.
    time_limit : float, optional
        Seconds per member after which training stops (end of an epoch).
    verbose : bool, optional
        Report progress per epoch with the losses (None: the session switch, see
        :func:`xfusion.set_progress`): a ``tqdm.auto`` bar in Jupyter and terminals, progress
        lines elsewhere; False silences.
    calibrate : bool, default True
        Recalibrate the uncertainty on the validation strip (needs ``val_fraction > 0``):
        for MC-dropout (20 passes, p = 0.1) and, with ``members >= 2``, the ensemble, the
        per-band ``a, c, s0`` of ``std = sqrt((a spread)^2 + (c detail)^2 + s0^2)`` (the raw
        spread, the local detail of the prediction, a floor) are fitted by Gaussian
        likelihood and stored with the weights (``meta["calibration"]``, with the Spearman
        rho and the +-1 / +-2 std coverage on the strip before and after);
        :func:`xfusion.harmonize` applies them.

    Returns
    -------
    str
        Path of the checkpoint (nets ``member0``, ``member1``...).
    """
    from xfusion.models.harmonize_unet import HarmonizeUNet
    from xfusion.training import (
        GridPatchSampler,
        PatchDataset,
        PatchSource,
        RandomPatchSampler,
        fit,
        save_checkpoint,
        spatial_split,
    )

    def pick(ds: xr.Dataset, names: Sequence[str] | None, default: Sequence[str]) -> list[str]:
        if names is not None:
            return list(names)
        return list(default) if all(b in ds.data_vars for b in default) else \
            [str(v) for v in ds.data_vars]

    bnames = pick(landsat, bands, L8_BANDS)
    tnames = pick(sentinel2, targets, S2_BANDS)
    lst = stack_bands(landsat, bnames, role="Landsat")
    tgt = stack_bands(sentinel2, tnames, role="Sentinel-2")
    grids = nested_grids(lst.isel(band=0, drop=True), tgt.isel(band=0, drop=True), scale=scale)
    s = grids.scale
    (iy, ix), (hc, wc) = grids.offset, grids.coarse.shape
    fy, fx = grids.fine_dims
    tgt = tgt.isel({fy: slice(iy, iy + s * hc), fx: slice(ix, ix + s * wc)})
    if ("time" in lst.dims) != ("time" in tgt.dims):
        raise TimeAxisError(
            "Landsat and Sentinel-2 must both have a time dim (same-day pairs) or neither."
        )
    if "time" in lst.dims:
        common = np.intersect1d(lst["time"].values, tgt["time"].values)
        if common.size == 0:
            raise TimeAxisError(
                "Landsat and Sentinel-2 share no date; harmonization trains on same-day pairs. "
                f"Landsat dates: {[str(t)[:10] for t in lst['time'].values]!r}, Sentinel-2: "
                f"{[str(t)[:10] for t in tgt['time'].values]!r}. Align them by day first."
            )
        lst, tgt = lst.sel(time=common), tgt.sel(time=common)
    cd = grids.coarse_dims
    x = lst.transpose(*[d for d in lst.dims if d not in (*cd, "band")], "band", *cd).data
    y = tgt.transpose(*[d for d in tgt.dims if d not in (fy, fx, "band")], "band", fy, fx).data
    if x.ndim == 3:
        x, y = x[None], y[None]
    layers = [bicubic_upsample(x, s, method="train_harmonizer.bicubic")]
    if pan is not None:
        pg = nested_grids(lst.isel(band=0, drop=True), pan, scale=s)
        py, px = pg.offset
        pv = as_float(pan).isel({pg.fine_dims[0]: slice(py, py + s * hc),
                                  pg.fine_dims[1]: slice(px, px + s * wc)})
        pd = pv.data.reshape(-1, 1, *pv.shape[-2:])
        if pd.shape[0] != x.shape[0]:
            pd = pd[[0] * x.shape[0]] if pd.shape[0] == 1 else pd
        layers.append(pd)
    layers.append(y)
    if any(dask.is_dask_collection(a) for a in layers):
        import dask.array as da

        ref = next(a for a in layers if dask.is_dask_collection(a))
        stack = da.concatenate(
            [(a if dask.is_dask_collection(a) else da.from_array(a)).astype(np.float32).rechunk(
                (1, -1, *ref.chunks[2:])) for a in layers], axis=1)
    else:
        stack = np.concatenate([np.asarray(a, dtype=np.float32) for a in layers], axis=1)
    n_in = stack.shape[1] - len(tnames)
    source = PatchSource(stack)
    align = 2 ** (depth - 1)
    pf = max(align, math.ceil(patch / align) * align)
    hf, wf = s * hc, s * wc
    if hf < pf or wf < pf:
        raise NotEnoughDataError(
            f"The scene ({hf} x {wf} px) is smaller than one training patch ({pf} px). Use a "
            "smaller patch= or a larger scene."
        )
    if val_fraction > 0:
        split = spatial_split((hf, wf), fraction=val_fraction, size=pf)
        if split is None:
            raise NotEnoughDataError(
                f"The scene ({hf} x {wf} px) is too small for a spatial train/validation split "
                f"with {pf}-px patches (val_fraction={val_fraction}). Use a smaller patch=, "
                "val_fraction=0, or a larger scene."
            )
        train_region, val_region = split
    else:
        train_region, val_region = [(slice(0, hf), slice(0, wf))], []
    inputs = list(range(n_in))
    targets_idx = list(range(n_in, n_in + len(tnames)))
    nets: dict[str, Any] = {}
    history = []
    for k in range(int(members)):
        sampler = RandomPatchSampler(source, size=pf, length=steps_per_epoch * batch_size,
                                     region=train_region, inputs=inputs, min_valid=0.5,
                                     seed=seed + k)
        train_ds = PatchDataset(source, sampler.patches, inputs=inputs, targets=targets_idx,
                                augment=True, seed=seed + k, nan_fill=0.0)
        val_ds = None
        if val_region:
            vs = GridPatchSampler(source, size=pf, region=val_region, inputs=inputs,
                                  min_valid=0.5)
            val_ds = PatchDataset(source, vs.patches, inputs=inputs, targets=targets_idx,
                                  nan_fill=0.0)
        model = HarmonizeUNet(n_in, len(tnames), depth, width, upsample, residual)
        res = fit(model, train_ds, val=val_ds, epochs=epochs, batch_size=batch_size, lr=lr,
                  loss="l1", patience=patience, seed=seed + k, device=device,
                  progress=verbose, time_budget=time_limit,
                  description=f"harmonizer member {k}")
        nets[f"member{k}"] = model
        history.append({"member": k, "best_epoch": res.best_epoch, "best_val_loss": res.best_loss,
                        "epochs_run": res.epochs_run, "stopped": res.stopped,
                        "seconds": round(res.seconds, 2)})
    calibration = (_calibrate_on(nets, val_ds, nout=len(tnames), seed=seed)
                   if calibrate and val_ds is not None and len(val_ds) > 0 else {})
    meta = {
        "arch": HARMONIZE_ARCH, "nbands": int(n_in), "calibration": calibration,
        "arch_params": {"out_channels": len(tnames), "depth": int(depth), "width": int(width),
                        "upsample": upsample, "residual": bool(residual)},
        "method": "harmonize", "scale": s, "halo": int(model.halo), "pan": pan is not None,
        "inputs": [*bnames, *(["pan"] if pan is not None else [])], "outputs": tnames,
        "units": "reflectance (0..1)", "members": int(members),
        "training": {"loss": "l1", "lr": lr, "batch_size": batch_size, "patch": pf,
                     "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                     "patience": patience, "val_fraction": val_fraction, "seed": seed,
                     "n_train_patches": steps_per_epoch * batch_size, "members": history},
    }
    save_checkpoint(out, nets, meta)
    return os.fspath(out)
