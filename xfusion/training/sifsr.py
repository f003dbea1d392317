"""SIF-CNN-SR training: the residual U-Net fitted self-supervised on a scene (:func:`train_sif_sr`).

The loss compares the PSF-degraded output with the observed coarse LST and ties the output's
edges to ``gamma x`` the guide's (4 Sobels for SIF-SR1, a high-pass for SIF-SR2); the
checkpoint holds the normalisation statistics with the weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion.cube.grids import GuidedInputs, prepare_guided, rechunk_nested
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.engine.device import resolve_device
from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.models.registry import SIF_ARCH

if TYPE_CHECKING:
    import torch

__all__ = ["SIF_DEFAULTS", "train_sif_sr"]

# Paper hyper-parameters (shipped *_train_params.json), per variant.
SIF_DEFAULTS: dict[str, dict[str, Any]] = {
    "sif-sr1": {"texture": "sobel", "lr": 1e-3, "alpha": 0.99, "gamma": -0.5, "patience": 30},
    "sif-sr2": {"texture": "highpass", "lr": 1e-4, "alpha": 0.5, "gamma": -0.25, "patience": 30},
}


@dataclass
class _TrainResult:
    best_epoch: int
    best_loss: float
    epochs_run: int
    history: list[dict[str, float]]
    seconds: float


def _recalibrate_bn(model: torch.nn.Module, batches: Sequence[tuple[Any, ...]],
                    device: torch.device) -> None:
    """Re-estimate BatchNorm running statistics with the current weights (cumulative average
    over ``batches``), so evaluation-mode outputs match the trained weights."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b[0].to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


def _train_loop(model: torch.nn.Module, *,
                train_batches: Callable[[int], Sequence[tuple[Any, ...]]],
                val_batches: Sequence[tuple[Any, ...]], loss_fn: Callable[..., torch.Tensor],
                epochs: int, lr: float, patience: int, device: torch.device, seed: int,
                verbose: bool | None, time_limit: float | None = None,
                freeze_bn_after: int | None = None) -> _TrainResult:
    """Adam with early stopping on the validation loss (best weights restored), for losses
    that :func:`xfusion.training.fit` cannot express (the SIF loss compares the output with
    the coarse observation through the PSF, and its texture with the guide's).

    ``train_batches(epoch)`` returns the epoch's batches (tuples of CPU tensors, the model
    input first); ``loss_fn(model, *batch)`` the loss. BatchNorm statistics are re-estimated
    after each epoch and frozen after ``freeze_bn_after`` epochs.
    """
    import copy

    import torch

    torch.manual_seed(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best_box: dict[str, Any] = {"loss": math.inf, "state": copy.deepcopy(model.state_dict()),
                                "epoch": 0}
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    epoch = 0
    from xfusion._progress import Progress

    bar = Progress(epochs, desc="sif-sr training", unit="epoch", progress=verbose, leave=False)
    try:
        epoch = _epochs(model, opt, bns, bar, train_batches=train_batches,
                        val_batches=val_batches, loss_fn=loss_fn, epochs=epochs,
                        device=device, history=history, t0=t0, time_limit=time_limit,
                        patience=patience, freeze_bn_after=freeze_bn_after, best=best_box)
    except KeyboardInterrupt:
        bar.close()
        from xfusion._progress import emit

        emit(f"sif-sr training: interrupted after {len(history)} of {epochs} epoch(s); "
             "nothing saved")
        raise
    finally:
        bar.close()
    best, best_state, best_epoch = best_box["loss"], best_box["state"], best_box["epoch"]
    model.load_state_dict(best_state)
    model.eval().cpu()
    return _TrainResult(best_epoch, best, epoch, history, time.perf_counter() - t0)


def _epochs(model: Any, opt: Any, bns: list[Any], bar: Any, *,
            train_batches: Callable[[int], Sequence[tuple[Any, ...]]],
            val_batches: Sequence[tuple[Any, ...]], loss_fn: Callable[..., Any], epochs: int,
            device: Any, history: list[dict[str, float]], t0: float,
            time_limit: float | None, patience: int, freeze_bn_after: int | None,
            best: dict[str, Any]) -> int:
    """The epochs of :func:`_train_loop` (the best weights kept in ``best``); returns the
    last epoch run."""
    import copy

    import torch

    bad = 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        frozen = freeze_bn_after is not None and epoch > freeze_bn_after
        if frozen:
            for m in bns:
                m.eval()
        batches = train_batches(epoch)
        tl = 0.0
        for batch in batches:
            b = [t.to(device) for t in batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, *b)
            loss.backward()
            opt.step()
            tl += float(loss.detach())
        tl /= max(len(batches), 1)
        if not frozen:
            _recalibrate_bn(model, batches[:4], device)
        model.eval()
        if val_batches:
            with torch.no_grad():
                vl = float(np.mean([float(loss_fn(model, *[t.to(device) for t in vb]))
                                    for vb in val_batches]))
        else:
            vl = tl
        history.append({"epoch": epoch, "train_loss": tl, "val_loss": vl})
        bar.update(1)
        bar.set_postfix_str(f"train={tl:.4g}, val={vl:.4g}")
        if vl < best["loss"]:
            best.update(loss=vl, epoch=epoch, state=copy.deepcopy(model.state_dict()))
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    return epoch


def _space_to_depth_block(x: np.ndarray, *, scale: int) -> np.ndarray:
    """``(T, C, h s, w s)`` -> ``(T, C s s, h, w)``: the ``s x s`` phases as channels."""
    t, c, hf, wf = x.shape
    s = scale
    v = x.reshape(t, c, hf // s, s, wf // s, s).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(v.reshape(t, c * s * s, hf // s, wf // s))


def _depth_to_space(x: np.ndarray, scale: int) -> np.ndarray:
    """Inverse of :func:`_space_to_depth_block` for ``(N, C s s, h, w)``."""
    n, cs, h, w = x.shape
    s = scale
    c = cs // (s * s)
    v = x.reshape(n, c, s, s, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(v.reshape(n, c, h * s, w * s))


def _coarse_stack(inp: GuidedInputs) -> Any:
    """Everything the SIF loss needs on the COARSE grid, lazily: ``(T, 1 + (1 + G) s^2, Hc,
    Wc)`` = the coarse LST, then the ``s x s`` phases of bicubic(LST) and of each guide band
    (raw values: bicubic interpolation and the local NaN fill commute with z-scoring)."""
    import dask.array as da

    s = inp.grids.scale
    coarse, guide = rechunk_nested(inp.coarse, inp.guide, s)
    up = bicubic_upsample(coarse, s, method="train_sif_sr.bicubic")
    nt = coarse.shape[0]
    assert guide is not None
    if guide.shape[0] != nt:
        guide = (da.broadcast_to(guide, (nt, *guide.shape[1:]), chunks=(coarse.chunks[0],
                                                                          *guide.chunks[1:]))
                 if dask.is_dask_collection(guide) else np.broadcast_to(guide, (nt, *guide.shape[1:])))
    if dask.is_dask_collection(up):
        fine = da.concatenate(
            [up[:, None], guide.rechunk((up.chunks[0], -1, *up.chunks[1:]))], axis=1)
        fine = fine.rechunk({1: -1})
        c = fine.shape[1]
        s2d = da.map_blocks(_space_to_depth_block, fine, scale=s, dtype=np.float32,
                            chunks=(fine.chunks[0], (c * s * s,), coarse.chunks[1],
                                    coarse.chunks[2]),
                            meta=np.empty((0, 0, 0, 0), np.float32))
        return da.concatenate([coarse[:, None].astype(np.float32), s2d], axis=1)
    fine = np.concatenate([up[:, None], np.asarray(guide, dtype=np.float32)], axis=1)
    return np.concatenate([np.asarray(coarse, dtype=np.float32)[:, None],
                           _space_to_depth_block(fine, scale=s)], axis=1)


def train_sif_sr(
    coarse: xr.DataArray,
    /,
    *,
    guide: xr.DataArray | xr.Dataset,
    out: str | os.PathLike[str],
    scale: int | None = None,
    method: Literal["sif-sr1", "sif-sr2"] = "sif-sr1",
    variant: Literal["residual", "paper"] = "residual",
    width: int | None = None,
    global_skip: bool = True,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    patch: int = 64,
    lr: float | None = None,
    alpha: float | None = None,
    gamma: float | None = None,
    patience: int | None = None,
    val_fraction: float = 0.2,
    min_valid: float = 0.5,
    mtf: float = 0.1,
    texture_mtf: float = 0.25,
    seed: int = 0,
    device: str = "auto",
    time_limit: float | None = None,
    freeze_bn_after: int | Literal["auto"] | None = "auto",
    verbose: bool | None = None,
) -> str:
    """Train SIF weights self-supervised on the scene (no fine LST needed).

    Two variants:

    ``variant="residual"`` (default, xfusion's)
        A small per-pixel network corrects the bicubic prediction using the DMS prediction
        and the guide, and every coarse cell of the result is shifted back to the observed
        value. It is trained one scale coarser: the coarse LST is the target, its
        ``scale``-times aggregate the input (see :mod:`xfusion.training.sifsr_residual`).
        ``method`` only names the checkpoint; ``width`` (32), ``epochs`` (40),
        ``steps_per_epoch`` (10), ``batch_size`` (2048 cells), ``lr`` (3e-3), ``patience``
        (8 epochs), ``val_fraction``, ``seed``, ``device``, ``time_limit`` and ``verbose``
        apply; the other parameters belong to the paper variant and are ignored. Measured
        more accurate than bicubic and DMS on held-out synthetic and real scenes, in seconds
        (benchmarks/README.md).
    ``variant="paper"``
        SIF-CNN-SR as published (Ait-Bachir et al. 2025), described below.

    Paper variant:     The cube is viewed on the coarse grid (the coarse LST plus the ``scale x scale`` phases of
    the bicubic LST and of the guide bands as channels, built lazily), so patches drawn by
    :class:`xfusion.training.RandomPatchSampler` are always aligned with coarse pixels and
    read only the chunks they touch. The loss compares the PSF-degraded output with the
    observed coarse LST (Huber, 1 coarse px border dropped) and the output's texture with
    ``gamma`` x the first guide band's (4 Sobels for ``sif-sr1``, a high-pass for
    ``sif-sr2``). Validation patches come from a strip of the scene held out by
    :func:`xfusion.training.spatial_split`; training stops early on the validation loss and
    keeps the best weights. Normalisation statistics (:func:`xfusion.training.channel_stats`
    on the training patches) are saved with the weights.

    Parameters
    ----------
    coarse : xarray.DataArray
        Coarse LST (kelvin) on its native grid, optionally with ``time`` (each date is a
        training sample). NaN = unobserved (masked out of the loss).
    guide : xarray.DataArray or xarray.Dataset
        Fine guide bands on a grid nested in the coarse one; the first band (NDVI) drives the
        texture term.
    out : path
        Output ``.safetensors`` checkpoint (weights + normalisation statistics + metadata).
    scale : int, optional
        Fine pixels per coarse pixel (default: from the grids).
    method : {"sif-sr1", "sif-sr2"}
        Texture term and the paper's default hyper-parameters (lr 1e-3 / 1e-4, alpha 0.99 /
        0.5, gamma -0.5 / -0.25, patience 30).
    variant : {"residual", "paper"}, default "residual"
        See above.
    width : int, optional
        Paper: U-Net width (default 16, the paper's, 282,705 parameters); residual: hidden
        channels (default 32).
    global_skip : bool, default True
        Add the bicubic LST to the network output (not in the paper; see
        :class:`xfusion.models.sifsr.SIFUNet`). Trained from one scene, the paper's network
        (False) under-fits the absolute LST level and ends up worse than bicubic on xfusion's
        synthetic scenes; with the skip it only learns the fine-scale correction.
    epochs, steps_per_epoch, batch_size : int, optional
        Training length (paper: 100, 20, 16 patches, redrawn every epoch; residual: 40, 10,
        2048 cells).
    patch : int, default 64
        Patch size in fine pixels, rounded up to a multiple of ``scale`` and 8.
    lr, alpha, gamma, patience : optional
        Override the paper's values.
    val_fraction : float, default 0.2
        Share of the scene (a strip along its longer axis) kept for validation; 0 disables it.
    min_valid : float, default 0.5
        Minimum share of observed coarse pixels in a patch.
    mtf, texture_mtf : float
        PSF MTF at the coarse Nyquist for the degradation (0.1) and the SR2 high-pass (0.25).
    seed : int
        Seed of initialisation and patch sampling.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    time_limit : float, optional
        Stop after this many seconds (at the end of an epoch).
    freeze_bn_after : int, "auto" or None, default "auto"
        Epoch after which the BatchNorm statistics are frozen (the layers then normalise with
        their running statistics during training too, exactly as at inference). With small
        batches of patches whose mean LST differs a lot, batch statistics make the training
        objective differ from what the evaluation-mode network computes; freezing removes that
        gap. ``"auto"``: a third of ``epochs``; None: never (the paper's setting). Before
        freezing, the running statistics are re-estimated after every epoch.
    verbose : bool, optional
        Report progress per epoch with the losses (None: the session switch, see
        :func:`xfusion.set_progress`): a ``tqdm.auto`` bar in Jupyter and terminals, progress
        lines elsewhere; False silences.

    Returns
    -------
    str
        The path of the checkpoint.

    Raises
    ------
    NotEnoughDataError
        Scene smaller than a patch or than the train/validation split, or too few observed
        patches.
    GridMismatchError, CRSMismatchError
        Grids not nested by ``scale`` (see :func:`nested_grids`).
    """
    if variant not in ("residual", "paper"):
        raise InvalidParameterError(
            f"Unknown variant={variant!r} for train_sif_sr(). Choose 'residual' (xfusion's "
            "default) or 'paper' (SIF-CNN-SR as published)."
        )
    if variant == "residual":
        from xfusion.training.sifsr_residual import train_sif_residual

        if method not in SIF_DEFAULTS:
            raise InvalidParameterError(
                f"Unknown method={method!r} for train_sif_sr(). Choose one of "
                f"{list(SIF_DEFAULTS)!r}."
            )
        return train_sif_residual(
            coarse, guide=guide, out=out, scale=scale, method=method, epochs=epochs,
            steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr, patience=patience,
            width=width, val_fraction=val_fraction, seed=seed, device=device,
            time_limit=time_limit, verbose=verbose)
    width = 16 if width is None else width
    epochs = 100 if epochs is None else epochs
    steps_per_epoch = 20 if steps_per_epoch is None else steps_per_epoch
    batch_size = 16 if batch_size is None else batch_size
    import torch

    from xfusion.models.sifsr import SIFUNet, sif_loss
    from xfusion.training import (
        GridPatchSampler,
        PatchSource,
        RandomPatchSampler,
        channel_stats,
        save_checkpoint,
        spatial_split,
    )

    if method not in SIF_DEFAULTS:
        raise InvalidParameterError(
            f"Unknown method={method!r} for train_sif_sr(). Choose one of {list(SIF_DEFAULTS)!r}."
        )
    overrides = {"lr": lr, "alpha": alpha, "gamma": gamma, "patience": patience}
    hp = {**SIF_DEFAULTS[method], **{k: v for k, v in overrides.items() if v is not None}}
    inp = prepare_guided(coarse, guide, scale, need_guide=True)
    s = inp.grids.scale
    ng = len(inp.guide_names)
    source = PatchSource(_coarse_stack(inp))
    step = 8 // math.gcd(8, s)
    pc = max(step, math.ceil(patch / s / step) * step)
    hc, wc = inp.grids.coarse.shape
    if hc < pc or wc < pc:
        raise NotEnoughDataError(
            f"The scene ({hc} x {wc} coarse px) is smaller than one training patch ({pc} coarse "
            f"px = {pc * s} fine px). Use a smaller patch= or a larger scene."
        )
    if val_fraction > 0:
        split = spatial_split((hc, wc), fraction=val_fraction, size=pc)
        if split is None:
            raise NotEnoughDataError(
                f"The scene ({hc} x {wc} coarse px) is too small for a spatial train/validation "
                f"split with patches of {pc} coarse px (val_fraction={val_fraction}). Use a "
                "smaller patch=, val_fraction=0 (no validation), or a larger scene."
            )
        train_region, val_region = split
    else:
        train_region, val_region = [(slice(0, hc), slice(0, wc))], []
    ss = s * s
    groups = [[0]] + [list(range(1 + ss * (1 + k), 1 + ss * (2 + k))) for k in range(ng)]
    grid_train = GridPatchSampler(source, size=pc, region=train_region, inputs=[0],
                                  min_valid=min_valid)
    if not grid_train.patches:
        raise NotEnoughDataError(
            f"No training patch has at least {100 * min_valid:.0f}% observed coarse pixels. "
            "Use dates with fewer clouds, a smaller patch= or a lower min_valid=."
        )
    stats = channel_stats(source, grid_train.patches, groups)
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    chan_mean = np.concatenate([[mean[0]], np.full(ss, mean[0]), np.repeat(mean[1:], ss)])
    chan_std = np.concatenate([[std[0]], np.full(ss, std[0]), np.repeat(std[1:], ss)])
    cm = chan_mean[:, None, None].astype(np.float32)
    csd = chan_std[:, None, None].astype(np.float32)

    def tensors(patches: Sequence[Any], flips: np.ndarray | None = None
                ) -> tuple[torch.Tensor, ...]:
        blocks = (np.stack([source.read(p) for p in patches]) - cm) / csd
        c = blocks[:, :1]
        fine = _depth_to_space(blocks[:, 1:], s)  # (N, 1 + G, P, P)
        cmask = np.isfinite(c)
        fmask = np.isfinite(fine).all(axis=1, keepdims=True)
        if flips is not None:
            for k in range(len(patches)):
                for ax, f in ((-1, flips[k, 0]), (-2, flips[k, 1])):
                    if f:
                        for a in (c, fine, cmask, fmask):
                            a[k] = np.flip(a[k], ax).copy()
        c = np.where(cmask, c, 0.0)
        fine = np.where(np.isfinite(fine), fine, 0.0)
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32 if a.dtype !=
                                                           bool else bool))
                     for a in (fine, c, cmask, fmask))

    def train_batches(epoch: int) -> list[tuple[torch.Tensor, ...]]:
        sampler = RandomPatchSampler(source, size=pc, length=steps_per_epoch * batch_size,
                                     region=train_region, inputs=[0], min_valid=min_valid,
                                     seed=seed * 100_003 + epoch)
        rng = np.random.default_rng([seed, epoch])
        pats = sampler.patches
        flips = rng.integers(0, 2, size=(len(pats), 2)).astype(bool)
        return [tensors(pats[k:k + batch_size], flips[k:k + batch_size])
                for k in range(0, len(pats), batch_size)]

    val_pats = (GridPatchSampler(source, size=pc, region=val_region, inputs=[0],
                                 min_valid=min_valid).patches if val_region else [])
    val_batches = [tensors(val_pats[k:k + batch_size])
                   for k in range(0, len(val_pats), batch_size)]

    def loss_fn(model: torch.nn.Module, xb: torch.Tensor, cb: torch.Tensor, cmb: torch.Tensor,
                fmb: torch.Tensor) -> torch.Tensor:
        sr = model(xb)
        return sif_loss(sr, cb, xb[:, 1:2], scale=s, alpha=hp["alpha"], gamma=hp["gamma"],
                        texture=hp["texture"], mtf=mtf, mtf_texture=texture_mtf,
                        coarse_mask=cmb, fine_mask=fmb)

    torch.manual_seed(seed)
    model = SIFUNet(in_channels=1 + ng, width=width, global_skip=global_skip)
    res = _train_loop(model, train_batches=train_batches, val_batches=val_batches,
                      loss_fn=loss_fn, epochs=epochs, lr=hp["lr"], patience=hp["patience"],
                      device=resolve_device(device), seed=seed, verbose=verbose,
                      time_limit=time_limit,
                      freeze_bn_after=(max(1, epochs // 3) if freeze_bn_after == "auto"
                                       else freeze_bn_after))
    name = str(coarse.name) if coarse.name is not None else "lst"
    meta = {
        "arch": SIF_ARCH, "nbands": 1 + ng,
        "arch_params": {"width": int(width), "align_corners": False,
                        "global_skip": bool(global_skip)},
        "method": method, "variant": "paper", "scale": s, "halo": int(model.halo),
        "inputs": [name, *inp.guide_names], "outputs": [name],
        "units": str(coarse.attrs.get("units", "")),
        "normalization": {"mean": mean.tolist(), "std": std.tolist(), "count": list(stats.count),
                          "note": "z-score per input channel (LST from the coarse pixels of "
                                  "the training patches); channel 0 also de-normalises the "
                                  "output"},
        "training": {
            "loss": {"alpha": hp["alpha"], "gamma": hp["gamma"], "texture": hp["texture"],
                     "mtf": mtf, "texture_mtf": texture_mtf, "huber_delta": 1.0},
            "lr": hp["lr"], "batch_size": batch_size, "patch": pc * s, "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "patience": hp["patience"], "seed": seed,
            "val_fraction": val_fraction, "min_valid": min_valid,
            "freeze_bn_after": freeze_bn_after, "best_epoch": res.best_epoch,
            "best_val_loss": res.best_loss, "epochs_run": res.epochs_run,
            "seconds": round(res.seconds, 2), "n_val_patches": len(val_pats),
            "history": res.history,
        },
    }
    save_checkpoint(out, {"model": model}, meta)
    return os.fspath(out)
