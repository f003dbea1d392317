"""STTFN training: the forward/backward nets of one triplet (per-triplet regime, the paper's)
and general nets trained on many triplets (:func:`train_sttfn`).

The forward net learns ``(L1, M1, M3) -> L3`` and the backward one ``(L3, M3, M1) -> L1`` on
random patches of the two reference pairs (plus, with ``temporal_mix``, items interpolated in
time); :func:`xfusion.sttfn` applies them at the dates between. Training options are
:class:`SttfnTrainOptions`; a trained pair is :class:`TrainedSttfn`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion._compat import lazy_import
from xfusion.config import check_device, check_precision
from xfusion.cube.roles import Roles, require_choice, resolve_roles, stack_vars
from xfusion.cube.validate import TIME
from xfusion.errors import InvalidParameterError, NotEnoughDataError

if TYPE_CHECKING:
    import torch

__all__ = ["NETS", "SttfnTrainOptions", "TrainedSttfn", "train_sttfn"]

NAME = "sttfn"
NETS = ("forward", "backward")
"""The two nets of a triplet, in checkpoint order."""


@dataclass(frozen=True, kw_only=True)
class SttfnTrainOptions:
    """How the forward/backward nets are trained (both regimes)."""

    epochs: int = 30
    """Epochs (each ``patches`` random patches); early stopping may end sooner."""
    patch_size: int = 48
    """Patch size in fine pixels (capped by the image; the spec suggests 96 on a GPU)."""
    patches: int = 128
    """Random training patches per net (fixed set, re-augmented every epoch)."""
    batch_size: int = 16
    """Patches per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate."""
    val_fraction: float = 0.1
    """Share of the scene held out (a strip, by space) for validation and early stopping;
    0 disables validation (the training loss is monitored)."""
    patience: int | None = 8
    """Epochs without improvement before stopping (None: never)."""
    min_valid: float = 0.5
    """Minimum fraction of observed pixels in every input of a patch."""
    augment: bool = True
    """Random flips and 90° rotations."""
    temporal_mix: float = 1.0
    """Share of training items whose target date is moved to a random point between the two
    reference dates by linear interpolation (``M_tgt -> M_ref + a (M_tgt - M_ref)``,
    ``L_tgt -> L_ref + a (L_tgt - L_ref)``, ``a ~ U(0, 1)``): teaches the nets to scale the
    change with the coarse change, as needed when applied to an intermediate date (on
    synthetic LST it lowered the RMSE of per-triplet STTFN by about 20 % against 0). An
    xfusion extension; 0 trains on the reference pairs only (the paper's)."""
    target_offset: float = 0.3
    """Standard deviation, in units of each band's standard deviation (the normalisation
    statistics), of a random offset added to both ``M_tgt`` and ``L_tgt`` of every training
    item (one draw per item and band): teaches the nets that a uniform shift of the target
    coarse image (weather, sensor bias) shifts the prediction by as much instead of being
    scaled like a land-cover change. Measured (``benchmarks/bench_sttfn.py``): it ended the
    divergence of ``"xfusion-v2"`` per-triplet training on one synthetic LST scene (RMSE
    2.01 → 1.22 K) and lowered the Kranj RMSE of ``"xfusion-v1"`` by 6 %. An xfusion
    extension; 0 disables it (the paper's training)."""
    loss: str = "mse"
    """``"mse"``, ``"l1"`` or ``"huber"`` on normalised errors."""
    seed: int = 0
    """Seed of the initialisation, sampling, batch order and augmentation."""
    device: str = "auto"
    """Training device."""
    precision: str = "float32"
    """``"bf16"``/``"fp16"`` autocast on CUDA."""
    num_workers: int = 0
    """DataLoader workers."""
    progress: bool | None = None
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("epochs", "patch_size", "patches", "batch_size", "num_workers"):
            v = getattr(self, name)
            lo = 0 if name in ("epochs", "num_workers") else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise InvalidParameterError(
                    f"{NAME}() parameter {name} must be an integer >= {lo}, found {v!r}."
                )
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidParameterError(f"{NAME}() parameter lr must be > 0, found {self.lr!r}.")
        if not 0.0 <= float(self.val_fraction) < 0.5:
            raise InvalidParameterError(
                f"{NAME}() parameter val_fraction must be in [0, 0.5), found "
                f"{self.val_fraction!r}."
            )
        if not 0.0 <= float(self.temporal_mix) <= 1.0:
            raise InvalidParameterError(
                f"{NAME}() parameter temporal_mix is a fraction in [0, 1], found "
                f"{self.temporal_mix!r}."
            )
        if not (isinstance(self.target_offset, (int, float)) and not isinstance(
                self.target_offset, bool) and 0.0 <= float(self.target_offset) <= 10.0):
            raise InvalidParameterError(
                f"{NAME}() parameter target_offset is a standard deviation in units of the "
                f"band's (0 to 10, 0 = off), found {self.target_offset!r}."
            )
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise InvalidParameterError(
                f"{NAME}() parameter min_valid is a fraction in [0, 1], found {self.min_valid!r}."
            )
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise InvalidParameterError(
                f"{NAME}() parameter patience must be a positive integer or None, found "
                f"{self.patience!r}."
            )
        require_choice(self.loss, ("mse", "l1", "huber"), name="loss", method=NAME)
        check_device(self.device)
        check_precision(self.precision)


@dataclass
class TrainedSttfn:
    """A trained forward/backward pair with everything needed to apply or save it."""

    forward: torch.nn.Module
    """Forward net ``(L1, M1, M2) -> L2``."""
    backward: torch.nn.Module
    """Backward net ``(L3, M3, M2) -> L2``."""
    metadata: dict[str, Any]
    """Checkpoint metadata (arch, normalisation, bands, units, halo, training, metrics)."""
    path: str | None = None
    """Where it was saved (None: in memory only)."""

    def save(self, path: str | os.PathLike[str]) -> str:
        """Save as a safetensors checkpoint; return the path."""
        from xfusion.models.checkpoint import save_checkpoint

        save_checkpoint(path, {"forward": self.forward, "backward": self.backward},
                        self.metadata)
        self.path = os.fspath(path)
        return self.path


def fmt_day(t: Any) -> str:
    return str(np.datetime64(t, "D"))


def pair_flags(ds: xr.Dataset, roles: Roles) -> np.ndarray | None:
    """Dates where every fine and coarse variable is observed (scanned on first use)."""
    from xfusion.cube.build import observed_flags

    names = [*roles.fine, *roles.coarse]
    flags = observed_flags(ds, names)
    return np.logical_and.reduce([flags[n] for n in names])


def band_units(ds: xr.Dataset, names: Sequence[str]) -> list[str | None]:
    out = []
    for n in names:
        u = ds[n].attrs.get("units")
        out.append(str(u) if u is not None else None)
    return out


def resolve_arch(arch: str, arch_params: Mapping[str, Any] | None) -> dict[str, Any]:
    from xfusion.models.registry import arch_params as _ap
    from xfusion.models.registry import get_architecture

    a = get_architecture(arch)
    if a.method != NAME:
        raise InvalidParameterError(
            f"Architecture {arch!r} is for method {a.method!r}, not {NAME!r}."
        )
    return _ap(arch, arch_params)


def build_nets(arch: str, nb: int, params: Mapping[str, Any], seed: int) -> torch.nn.Module:
    import torch

    from xfusion.models.registry import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, nb, **params)


def _case_stack(L: Any, M: Any, a: int, b: int) -> Any:
    """``(4 nb, y, x)`` channels ``[L_a, M_a, L_b, M_b]`` of one training case."""
    parts = [L[a], M[a], L[b], M[b]]
    if any(dask.is_dask_collection(p) for p in parts):
        import dask.array as da

        return da.concatenate([p if dask.is_dask_collection(p) else da.asarray(p) for p in parts], axis=0)
    return np.concatenate(parts, axis=0)


def stack_cases(ds: xr.Dataset, dims: tuple[str, str], L: Any, M: Any,
                 cases: Sequence[tuple[int, int]]) -> xr.DataArray:
    """``(case, 4 nb, y, x)`` training stacks on the cube's grid (georeferenced, lazy)."""
    layers = [_case_stack(L, M, a, b) for a, b in cases]
    if any(dask.is_dask_collection(x) for x in layers):
        import dask.array as da

        data = da.stack(layers)
    else:
        data = np.stack(layers)
    ydim, xdim = dims
    coords = {ydim: ds[ydim], xdim: ds[xdim]}
    if "spatial_ref" in ds.coords:
        coords["spatial_ref"] = ds.coords["spatial_ref"]
    return xr.DataArray(data, dims=("sample", "channel", ydim, xdim), coords=coords)


def _valid_counts(arr: Any, labels: Sequence[str]) -> str:
    """Observed-pixel counts per channel and jointly (computes; error path only)."""
    a = arr.data if isinstance(arr, xr.DataArray) else arr
    finite = np.isfinite(a)
    per = finite.sum(axis=(-2, -1))
    joint = finite.all(axis=-3).sum(axis=(-2, -1))
    per, joint = dask.compute(per, joint) if dask.is_dask_collection(a) else (per, joint)
    per = np.asarray(per).reshape(-1, len(labels))
    joint = np.asarray(joint).reshape(-1)
    npx = int(a.shape[-1] * a.shape[-2])
    parts = []
    for s in range(per.shape[0]):
        each = ", ".join(f"{lab} {int(c)}" for lab, c in zip(labels, per[s], strict=True))
        parts.append(f"{int(joint[s])} of {npx} pixels observed in all inputs ({each})")
    return "; ".join(parts)


def train_pair(
    sources: list[Any],
    case_labels: list[list[str]],
    *,
    nb: int,
    arch: str,
    params: Mapping[str, Any],
    opts: SttfnTrainOptions,
    region: Any = None,
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """Train forward and backward nets on ``sources`` (each ``(S, 4 nb, H, W)``,
    channels ``[L_a, M_a, L_b, M_b]``: forward learns a → b, backward b → a)."""
    from xfusion.training.datasets import PatchDataset, channel_stats
    from xfusion.training.loop import fit
    from xfusion.training.sampling import (
        GridPatchSampler,
        PatchSource,
        RandomPatchSampler,
        spatial_split,
    )

    src = PatchSource(sources, sample_dim="sample", channel_dim="channel", cache_chunks=32)
    full = src.region_windows(region)
    smallest = min(min(w[0].stop - w[0].start, w[1].stop - w[1].start)
                   for wins in full for w in wins)  # fmt: skip
    psize = int(min(opts.patch_size, smallest))
    train_reg: dict[int, Any] = {}
    val_reg: dict[int, Any] = {}
    for s, wins in enumerate(full):
        tr: list[Any] = []
        va: list[Any] = []
        for w in wins:
            split = (spatial_split(w, fraction=opts.val_fraction, size=psize)
                     if opts.val_fraction > 0 else None)  # fmt: skip
            if split is None:
                tr.append(w)
            else:
                tr += split[0]
                va += split[1]
        train_reg[s] = tr
        if va:
            val_reg[s] = va
    sampler = RandomPatchSampler(src, size=psize, length=opts.patches, region=train_reg,
                                 min_valid=opts.min_valid, seed=opts.seed)
    try:
        patches = sampler.patches
    except NotEnoughDataError as err:
        labels = [f"{r}{'' if nb == 1 else f'[{b}]'}" for r in ("L_a", "M_a", "L_b", "M_b")
                  for b in range(nb)]  # fmt: skip
        counts = "; ".join(
            f"{' -> '.join(case_labels[s][i].split('|'))}: "
            + _valid_counts(sources[s][i:i + 1], labels)
            for s in range(len(sources)) for i in range(min(len(case_labels[s]), 4))
        )  # fmt: skip
        raise NotEnoughDataError(
            f"{NAME}() has too few valid pixels to train its nets: {counts}. It needs "
            f"{opts.patches} patches of {psize}x{psize} px with at least "
            f"{100 * opts.min_valid:.0f}% observed pixels in each of the four reference "
            f"images ({err}). Lower min_valid=..., patch_size=... or patches=..., or choose "
            "pair dates with fewer clouds."
        ) from None
    val_patches = []
    if val_reg:
        val_patches = GridPatchSampler(src, size=psize, region=val_reg,
                                       min_valid=opts.min_valid).patches
    groups = [[b, nb + b, 2 * nb + b, 3 * nb + b] for b in range(nb)]
    stats = channel_stats(src, patches, groups)
    la, ma, lb, mb = (list(range(k * nb, (k + 1) * nb)) for k in range(4))
    layout = {"forward": (la + ma + mb, lb), "backward": (lb + mb + ma, la)}
    nets: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for k, net_name in enumerate(NETS):
        inputs, targets = layout[net_name]
        train_ds = PatchDataset(src, patches, inputs=inputs, targets=targets,
                                augment=opts.augment, seed=opts.seed + k)
        if opts.temporal_mix > 0 or opts.target_offset > 0:
            offsets = [float(opts.target_offset) * float(v) for v in stats.std[:nb]]
            train_ds = _TemporalMix(train_ds, nb=nb, share=opts.temporal_mix,
                                    seed=opts.seed + 7919 * (k + 1), offset_std=offsets)
        val_ds = (PatchDataset(src, val_patches, inputs=inputs, targets=targets)
                  if val_patches else None)  # fmt: skip
        net = build_nets(arch, nb, params, opts.seed + 1000 * k)
        net.set_normalization(stats.mean, stats.std)
        res = fit(net, train_ds, val=val_ds, epochs=int(opts.epochs),
                  batch_size=int(opts.batch_size), lr=float(opts.lr), loss=opts.loss,
                  loss_scale=list(stats.std), patience=opts.patience, seed=opts.seed + k,
                  device=opts.device, precision=opts.precision, num_workers=opts.num_workers,
                  progress=opts.progress, description=f"sttfn {net_name}", keep_initial=True)
        nets[net_name] = net
        _report(net_name, res, monitored="validation strip" if val_ds is not None
                else "training loss", progress=opts.progress)
        metrics[net_name] = {
            "best_epoch": res.best_epoch, "best_loss": res.best_loss,
            "initial_loss": res.initial_loss,
            "monitored": "val_loss" if val_ds is not None else "train_loss",
            "epochs_run": res.epochs_run, "stopped": res.stopped,
            "seconds": round(res.seconds, 3), "device": res.device,
            "final_train_loss": res.history[-1]["train_loss"] if res.history else None,
        }  # fmt: skip
    info = {
        "normalization": stats.to_dict(),
        "metrics": metrics,
        "patch_size": psize,
        "train_patches": len(patches),
        "val_patches": len(val_patches),
        "sampler_tries": sampler.tried,
    }
    return nets["forward"], nets["backward"], info


def _report(net_name: str, res: Any, *, monitored: str, progress: bool | None) -> None:
    """One line on what the training of a net ended with (the progress channel)."""
    from xfusion._progress import emit, enabled

    if not enabled(progress):
        return
    kept = ("the untrained nets (no epoch beat them)" if res.best_epoch == -1
            else "no weights (no epoch)" if res.best_epoch is None
            else f"epoch {res.best_epoch + 1}")
    emit(f"{NAME} {net_name}: {res.stopped} after {res.epochs_run} epoch(s) in "
         f"{res.seconds:.1f} s; kept {kept}, {monitored} loss {res.best_loss:.4g}")


class _TemporalMix:
    """Temporal interpolation and offsets of ``([L_ref, M_ref, M_tgt], L_tgt)`` items.

    With probability ``share`` an item's target date is moved to ``a ~ U(0, 1)`` of the way
    from the reference date: ``M_tgt -> M_ref + a (M_tgt - M_ref)`` and
    ``L_tgt -> L_ref + a (L_tgt - L_ref)``. Then, with ``offset_std`` (one value per band), a
    random offset ``d_b ~ N(0, offset_std_b)`` is added to both ``M_tgt`` and ``L_tgt``.
    Draws depend on ``(seed, epoch, index)`` only. A plain map-style dataset (picklable for
    loader workers).
    """

    def __init__(self, base: Any, *, nb: int, share: float, seed: int,
                 offset_std: Sequence[float] | None = None) -> None:
        self.base, self.nb, self.share, self.seed, self.epoch = base, nb, share, seed, 0
        self.offset_std = None if not offset_std or not any(offset_std) else (
            np.asarray(offset_std, dtype=np.float32))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        x, y = self.base[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        nb = self.nb
        if rng.random() < self.share:
            a = float(rng.random())
            l_ref, m_ref, m_tgt = x[:nb], x[nb:2 * nb], x[2 * nb:]
            x, y = torch.cat([l_ref, m_ref, m_ref + a * (m_tgt - m_ref)]), l_ref + a * (y - l_ref)
        if self.offset_std is not None:
            d = torch.from_numpy((rng.standard_normal(nb) * self.offset_std).astype(np.float32))
            d = d.to(y.dtype).view(nb, *([1] * (y.ndim - 1)))
            x = torch.cat([x[:2 * nb], x[2 * nb:] + d])
            y = y + d
        return x, y


def nets_metadata(
    *, arch: str, params: Mapping[str, Any], nb: int, roles: Roles | None, bands: Sequence[str],
    coarse_bands: Sequence[str], units: Sequence[str | None], halo: int, info: Mapping[str, Any],
    opts: SttfnTrainOptions, regime: str, cases: Any,
) -> dict[str, Any]:  # fmt: skip
    return {
        "method": NAME,
        "arch": arch,
        "arch_params": dict(params),
        "nbands": nb,
        "bands": list(bands),
        "coarse_bands": list(coarse_bands),
        "units": list(units),
        "halo": int(halo),
        "normalization": info["normalization"],
        "channel_layout": "[L_ref, M_ref, M_tgt] x bands -> L_tgt",
        "training": {
            "regime": regime,
            "cases": cases,
            "options": asdict(opts),
            "patch_size": info["patch_size"],
            "train_patches": info["train_patches"],
            "val_patches": info["val_patches"],
            "validation": "spatial strip" if info["val_patches"] else "none (training loss)",
        },
        "metrics": info["metrics"],
    }


def train_options(*, defaults: Mapping[str, Any] | None = None, **kw: Any) -> SttfnTrainOptions:
    """:class:`SttfnTrainOptions` from ``defaults`` (e.g. a variant's) and the non-None ``kw``
    (``patience``: ``"auto"`` keeps the default, None means never stop early)."""
    merged = dict(defaults or {})
    merged.update({k: v for k, v in kw.items() if v is not None and k != "patience"})
    if "patience" in kw and not (isinstance(kw["patience"], str) and kw["patience"] == "auto"):
        merged["patience"] = kw["patience"]
    return replace(SttfnTrainOptions(), **merged)


def _cases_of(ds: xr.Dataset, roles: Roles, max_gap_days: float | None,
              cases: Any) -> list[tuple[int, int]]:
    times = np.asarray(ds.indexes[TIME].values, dtype="datetime64[ns]")
    if cases is not None:
        from xfusion.cube.roles import match_times

        out = []
        for a, b in cases:
            ia, ib = (int(match_times(ds, v, what="pair")[0]) for v in (a, b))
            out.append((min(ia, ib), max(ia, ib)))
        return out
    flags = pair_flags(ds, roles)
    if flags is None:
        raise InvalidParameterError(
            f"train_{NAME}() cannot tell which dates are pairs: the cube has no observed_* "
            "coordinates. Compute them with xfusion.cube.mark_observed(ds), or pass "
            "cases=[(date_a, date_b), ...]."
        )
    cand = np.flatnonzero(flags)
    out = []
    for i, a in enumerate(cand):
        for b in cand[i + 1:]:
            gap = (times[b] - times[a]) / np.timedelta64(1, "D")
            if max_gap_days is None or gap <= max_gap_days:
                out.append((int(a), int(b)))
    return out


def train_sttfn(
    cubes: xr.Dataset | Sequence[xr.Dataset],
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    out: str | os.PathLike[str] | None = None,
    cases: Any = None,
    max_gap_days: float | None = None,
    region: Any = None,
    arch: str = "xfusion-v1",
    arch_params: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    patch_size: int | None = None,
    patches: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    val_fraction: float | None = None,
    patience: int | Literal["auto"] | None = "auto",
    min_valid: float | None = None,
    augment: bool | None = None,
    temporal_mix: float | None = None,
    loss: str | None = None,
    target_offset: float | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "float32",
    num_workers: int = 0,
    progress: bool | None = None,
) -> TrainedSttfn:
    """Train one STTFN forward/backward pair across many triplets and regions (general regime).

    Every pair of pair dates ``a < b`` of every cube (within ``max_gap_days``) is a training
    case: the forward net learns ``(L_a, M_a, M_b) -> L_b``, the backward net
    ``(L_b, M_b, M_a) -> L_a``, from random patches drawn over all cases and cubes. The
    result can be saved (``out=``) and applied to new scenes with
    ``sttfn(ds, weights=path)`` without retraining.

    Parameters
    ----------
    cubes : xarray.Dataset or sequence of xarray.Dataset
        Fusion cubes (regions); each needs the same fine/coarse variable names.
    fine, coarse : str or list of str
        Variable names, paired by position.
    out : path, optional
        Where to save the checkpoint (``.safetensors``).
    cases : sequence of (date, date), optional
        Explicit training cases (applied to every cube); default: all pairs of pair dates.
    max_gap_days : float, optional
        Longest time between the two dates of a case.
    region : optional
        Sampling region for every cube (see :class:`xfusion.training.RandomPatchSampler`).
    arch, arch_params
        Architecture and its parameters (see :func:`sttfn`).
    epochs, patch_size, patches, batch_size, lr, val_fraction, patience, min_valid, augment
        Training options (:class:`SttfnTrainOptions`); ``patches`` is the total number of
        random patches over all cases; ``patience="auto"``: 8, None: never stop early.
    temporal_mix, loss, target_offset
        Training options (:class:`SttfnTrainOptions`).
    seed, device, precision, num_workers, progress
        As in :func:`sttfn`.

    Returns
    -------
    TrainedSttfn
        The nets, their metadata and the saved path.

    Raises
    ------
    NotEnoughDataError
        Too few observed pixels, or no training case.
    InvalidParameterError, VariableNotFoundError, ...
        Bad options or cubes.
    """
    lazy_import("torch", purpose=f"train_{NAME}()")
    lazy_import("safetensors", purpose=f"train_{NAME}()", extra="torch")
    cubes = [cubes] if isinstance(cubes, xr.Dataset) else list(cubes)
    if not cubes:
        raise InvalidParameterError(f"train_{NAME}() needs at least one cube.")
    opts = train_options(
        epochs=epochs, patch_size=patch_size, patches=patches, batch_size=batch_size, lr=lr,
        val_fraction=val_fraction, patience=patience, min_valid=min_valid, augment=augment,
        temporal_mix=temporal_mix, loss=loss, target_offset=target_offset, seed=seed,
        device=device, precision=precision, num_workers=num_workers, progress=progress,
    )  # fmt: skip
    params = resolve_arch(arch, arch_params)
    sources, labels, all_cases = [], [], []
    roles0 = None
    units = None
    for c, ds in enumerate(cubes):
        roles = resolve_roles(ds, fine, coarse, method=f"train_{NAME}")
        roles0 = roles0 or roles
        units = units or band_units(ds, roles.fine)
        case_idx = _cases_of(ds, roles, max_gap_days, cases)
        if not case_idx:
            continue
        L = stack_vars(ds, roles.fine, dims=roles.dims).data
        M = stack_vars(ds, roles.coarse, dims=roles.dims).data
        times = np.asarray(ds.indexes[TIME].values)
        sources.append(stack_cases(ds, roles.dims, L, M, case_idx))
        labels.append([f"{fmt_day(times[a])}|{fmt_day(times[b])}" for a, b in case_idx])
        all_cases.append({"cube": c, "cases": [lab.split("|") for lab in labels[-1]]})
    if not sources or roles0 is None:
        raise NotEnoughDataError(
            f"train_{NAME}() found no training case: no cube has two pair dates (fine and "
            f"coarse both observed){'' if max_gap_days is None else f' within {max_gap_days} days'}."
            " Add pair dates, raise max_gap_days, or pass cases=[...]."
        )
    nb = len(roles0.fine)
    fwd, bwd, info = train_pair(sources, labels, nb=nb, arch=arch, params=params, opts=opts,
                                 region=region)
    meta = nets_metadata(arch=arch, params=params, nb=nb, roles=roles0, bands=roles0.fine,
                     coarse_bands=roles0.coarse, units=units or [], halo=int(fwd.halo),
                     info=info, opts=opts, regime="general", cases=all_cases)  # fmt: skip
    trained = TrainedSttfn(fwd, bwd, meta)
    if out is not None:
        trained.save(out)
    return trained
