"""Landsat-8 -> Sentinel-2 harmonization and super-resolution with uncertainty.

Sambandham et al. (2024): Landsat-8 OLI surface reflectance (6 bands, 30 m; optionally the
15 m pan) is bicubic-upsampled onto the Sentinel-2 10 m grid and a U-Net
(:class:`xfusion.models.harmonize_unet.HarmonizeUNet`) predicts Sentinel-2-like B02, B03,
B04, B8A, B11 and B12 reflectance. The Planetary Computer has no Level-1 pan, so xfusion's
default is the no-pan (6-channel) variant; train with ``pan=`` to use one.

Uncertainty (output variables ``<band>_std`` next to ``<band>``):

``"ensemble"``
    Deep ensemble: ``<band>`` is the mean over the members, ``<band>_std`` the unbiased
    standard deviation across them (disagreement between independently trained networks:
    epistemic uncertainty, large off the training distribution).
``"mc-dropout"``
    Monte-Carlo dropout: dropout ``p`` after every conv block at inference (the networks are
    trained without it, as in the paper), ``passes`` stochastic passes: mean and standard
    deviation over the passes. Deterministic for a given tile (seeded), but tiles draw
    different masks.

Neither is a calibrated error bar; both rank pixels by expected error (report the Spearman
correlation between ``<band>_std`` and the absolute error on held-out data).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion.config import EngineConfig
from xfusion.cube.grids import (
    GuidedInputs,
    as_float,
    nested_grids,
    prepare_guided,
    rechunk_nested,
    wrap_fine,
)
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.errors import (
    InvalidParameterError,
    NotEnoughDataError,
    TimeAxisError,
    VariableNotFoundError,
    WeightsMismatchError,
)
from xfusion.models.registry import HARMONIZE_ARCH

__all__ = ["L8_BANDS", "S2_BANDS", "harmonize", "train_harmonizer"]

L8_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir08", "swir16", "swir22")
"""Landsat-8 OLI bands B2-B7 (Planetary Computer ``landsat-c2-l2`` asset names), in order."""
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B8A", "B11", "B12")
"""The Sentinel-2 bands predicted, in order."""

_UNCERTAINTY = (None, "ensemble", "mc-dropout")


def _stack(ds: xr.Dataset, bands: Sequence[str], *, role: str) -> xr.DataArray:
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


def _read_members(weights: Any) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """``[(path, net, sha256)]`` over all files, and the (common) metadata."""
    from xfusion.models.checkpoint import file_sha256, read_metadata
    from xfusion.models.registry import resolve_weights

    items = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
    if not items:
        raise InvalidParameterError("weights= is an empty list; give at least one checkpoint.")
    members: list[tuple[str, str, str]] = []
    first: dict[str, Any] | None = None
    for w in items:
        path, sha = resolve_weights(w)
        meta = read_metadata(path)
        if meta.get("arch") != HARMONIZE_ARCH:
            raise WeightsMismatchError(
                f"The weights {path!r} are for architecture {meta.get('arch')!r}, not the "
                f"harmonization U-Net ({HARMONIZE_ARCH!r}). Train weights with "
                "`xfusion.methods.harmonize.train_harmonizer(...)`."
            )
        if first is None:
            first = meta
        else:
            for key in ("arch_params", "inputs", "outputs", "scale", "nbands"):
                if meta.get(key) != first.get(key):
                    raise WeightsMismatchError(
                        f"The ensemble members disagree on {key!r}: {first.get(key)!r} vs "
                        f"{meta.get(key)!r} ({path!r}). Combine only weights trained for the "
                        "same bands, outputs, scale and architecture."
                    )
        sha = sha or file_sha256(path)
        members += [(path, n, sha) for n in meta.get("nets", [])]
    assert first is not None
    return members, first


def _model_spec(members: list[tuple[str, str, str]], meta: Mapping[str, Any], *,
                uncertainty: str | None, passes: int, dropout: float, seed: int,
                halo: int) -> Any:
    from xfusion.engine.model import ModelSpec

    nout = len(meta.get("outputs", S2_BANDS))
    if uncertainty == "mc-dropout":
        path, net, sha = members[0]
        return ModelSpec(name="harmonize-mc-dropout",
                         builder="xfusion.models.harmonize_unet:mc_dropout_from_checkpoint",
                         kwargs={"path": path, "net": net, "sha256": sha, "passes": passes,
                                 "p": dropout, "seed": seed},
                         halo=halo, out_channels=2 * nout)
    if len(members) == 1:
        path, net, sha = members[0]
        return ModelSpec(name="harmonize", builder="xfusion.models.checkpoint:build_from_checkpoint",
                         kwargs={"path": path, "net": net, "sha256": sha}, halo=halo,
                         out_channels=nout)
    return ModelSpec(name="harmonize-ensemble",
                     builder="xfusion.models.harmonize_unet:ensemble_from_checkpoints",
                     kwargs={"paths": tuple(m[0] for m in members),
                             "nets": tuple(m[1] for m in members),
                             "sha256s": tuple(m[2] for m in members)},
                     halo=halo, out_channels=2 * nout)


def harmonize(
    ds: xr.Dataset,
    /,
    *,
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    guide: xr.DataArray | xr.Dataset | None = None,
    scale: int | None = None,
    bands: Sequence[str] | None = None,
    uncertainty: Literal["ensemble", "mc-dropout"] | None = None,
    passes: int = 20,
    dropout: float = 0.1,
    seed: int = 0,
    halo: int | None = None,
    blend: Literal["none", "linear", "cosine"] | None = None,
    overlap: int | None = None,
    tile: int = 256,
    engine: EngineConfig | None = None,
    device: str = "auto",
) -> xr.Dataset:
    """Predict Sentinel-2-like 10 m reflectance from Landsat-8 bands (lazy, tiled).

    Parameters
    ----------
    ds : xarray.Dataset
        Landsat-8 surface reflectance (0..1) on its 30 m grid, one variable per band,
        optionally with ``time``.
    weights : path or list of paths
        Checkpoint(s) from :func:`train_harmonizer`. All members of all files form the
        ensemble (mean of the members when ``uncertainty`` is None).
    guide : xarray.DataArray, optional
        The pan band on the output grid when the weights use one; otherwise any array on the
        output grid (it only defines the grid).
    scale : int, optional
        Output pixels per input pixel (default: from ``guide``, else the weights' scale, 3).
    bands : sequence of str, optional
        Input variables in the weights' order (default: the names the weights were trained
        with).
    uncertainty : {None, "ensemble", "mc-dropout"}
        Add ``<band>_std`` variables (see the module docstring). ``"ensemble"`` needs two or
        more members.
    passes : int, default 20
        MC-dropout passes (the paper uses 500).
    dropout : float, default 0.1
        MC-dropout probability.
    seed : int, default 0
        MC-dropout seed.
    halo : int, optional
        Context (px at 10 m) each chunk and tile reads. Default: the receptive-field radius
        when it is <= 64 px (exact tiling), else 64 px with overlap blending.
    blend : {"none", "linear", "cosine"}, optional
        Tile blending; default ``"cosine"`` when ``halo`` is below the receptive field.
    overlap : int, optional
        Tile overlap for blending (default: ``halo``).
    tile : int, default 256
        Tile size in output pixels (the paper's training patch).
    engine : EngineConfig, optional
        Full engine configuration (overrides ``halo``/``blend``/``overlap``/``tile``/``device``).
    device : str, default "auto"
        Device.

    Returns
    -------
    xarray.Dataset
        One variable per Sentinel-2 band on the output grid (lazy on dask input), plus
        ``<band>_std`` with ``uncertainty``; NaN where any input band is NaN.

    Raises
    ------
    WeightsMismatchError
        Weights of another architecture, members that disagree, or a band count that differs
        from the weights'.
    VariableNotFoundError
        An input band missing from ``ds``.
    GridMismatchError
        A guide whose grid is not nested in the Landsat grid.

    References
    ----------
    Sambandham V.T. et al., "Deep learning-based harmonization and super-resolution of
    Landsat-8 and Sentinel-2 images", ISPRS J. P&RS 212:274-288 (2024).
    """
    import dask.array as da

    from xfusion.engine.run import map_model

    if uncertainty not in _UNCERTAINTY:
        raise InvalidParameterError(
            f"Unknown uncertainty={uncertainty!r}. Choose one of {list(_UNCERTAINTY)!r}."
        )
    members, meta = _read_members(weights)
    inputs = list(meta.get("inputs", []))
    use_pan = bool(meta.get("pan", False))
    want = list(bands) if bands is not None else [b for b in inputs if b != "pan" or not use_pan]
    n_ms = int(meta.get("nbands", 0)) - int(use_pan)
    if len(want) != n_ms:
        raise WeightsMismatchError(
            f"The weights take {n_ms} Landsat band(s) {inputs[:n_ms]!r}"
            f"{' plus the pan' if use_pan else ''}, but {len(want)} were given ({want!r}). "
            "Pass bands=[...] with as many bands as the weights were trained on, in order."
        )
    if uncertainty == "ensemble" and len(members) < 2:
        raise InvalidParameterError(
            f"uncertainty='ensemble' needs two or more members; the weights hold "
            f"{len(members)}. Train with train_harmonizer(..., members=4) or pass several "
            "files, or use uncertainty='mc-dropout'."
        )
    if use_pan and guide is None:
        raise InvalidParameterError(
            "These weights use the Landsat pan band: pass it as guide= on the output grid "
            "(or use weights trained without pan)."
        )
    stack = _stack(ds, want, role="Landsat")
    wscale = int(meta.get("scale", 3))
    if guide is None and scale is None:
        scale = wscale
    inp = prepare_guided(stack.isel(band=0, drop=True).rename(str(want[0])), guide, scale,
                   need_guide=False)
    s = inp.grids.scale
    if s != wscale:
        raise WeightsMismatchError(
            f"The weights were trained for scale={wscale} (30 m -> 10 m is 3), but the output "
            f"grid is {s}x finer than the input. Use a {wscale}x finer guide/grid."
        )
    cdims = inp.grids.coarse_dims
    others = [d for d in stack.dims if d not in (*cdims, "band")]
    arr = stack.transpose(*others, "band", *cdims).data
    arr = arr if others else arr[None]
    depth = int(meta.get("arch_params", {}).get("depth", 3))
    align = 2 ** (depth - 1)
    rf_halo = int(meta.get("halo", 28))
    if halo is None:
        halo = min(rf_halo, 64)
    halo = int(math.ceil(halo / align) * align)
    if blend is None:
        blend = "cosine" if halo < rf_halo else "none"
    if engine is None:
        ov = 0 if blend == "none" else int(overlap if overlap is not None else halo)
        tile_eff = max(int(tile), ov + align)
        engine = EngineConfig(tile=tile_eff, halo=halo, blend=blend, overlap=ov, device=device)
    spec = _model_spec(members, meta, uncertainty=uncertainty, passes=passes, dropout=dropout,
                       seed=seed, halo=engine.halo if engine.halo is not None else halo)
    if dask.is_dask_collection(arr) or (inp.guide is not None and dask.is_dask_collection(inp.guide)):
        if not dask.is_dask_collection(arr):
            arr = da.from_array(arr, chunks=(1, -1, 512, 512))
        arr = arr.rechunk((arr.chunks[0], -1, *arr.chunks[2:]))
        c3 = arr[:, 0]
        c3, g = rechunk_nested(c3, inp.guide if use_pan else None, s, multiple=align)
        arr = arr.rechunk((c3.chunks[0], -1, *c3.chunks[1:]))
        up = bicubic_upsample(arr, s, method="harmonize.bicubic")
        if use_pan:
            up = da.concatenate([up, g.rechunk((up.chunks[0], 1, *up.chunks[2:]))], axis=1)
    else:
        up = bicubic_upsample(np.asarray(arr), s, method="harmonize.bicubic")
        if use_pan:
            up = np.concatenate([up, np.asarray(inp.guide, dtype=np.float32)], axis=1)
    y = map_model(up, spec, config=engine, method="harmonize")
    outs = list(meta.get("outputs", S2_BANDS))
    nout = len(outs)
    template = GuidedInputs(None, None, [], inp.grids, inp.time, ds[want[0]])
    res: dict[Hashable, xr.DataArray] = {}
    for k, b in enumerate(outs):
        attrs = {"units": "1", "long_name": f"Sentinel-2-like {b} surface reflectance",
                 "harmonize_uncertainty": str(uncertainty)}
        res[b] = wrap_fine(y[:, k], template, name=b, attrs=attrs)
        if uncertainty is not None:
            sattrs = {"units": "1", "long_name": f"{uncertainty} standard deviation of {b}",
                      "description": "spread across ensemble members" if uncertainty ==
                      "ensemble" else f"spread over {passes} MC-dropout passes (p={dropout})"}
            res[f"{b}_std"] = wrap_fine(y[:, nout + k], template, name=f"{b}_std", attrs=sattrs)
    out = xr.Dataset(res, attrs={**dict(ds.attrs), "harmonize_members": len(members),
                                 "harmonize_uncertainty": str(uncertainty)})
    return out


# --------------------------------------------------------------------------------------------
# training


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
    verbose: bool = False,
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
    verbose : bool
        Show a progress bar.

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
    lst = _stack(landsat, bnames, role="Landsat")
    tgt = _stack(sentinel2, tnames, role="Sentinel-2")
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
    meta = {
        "arch": HARMONIZE_ARCH, "nbands": int(n_in),
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
