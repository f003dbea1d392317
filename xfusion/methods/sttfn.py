"""STTFN (Yin et al. 2021): two CNNs, forward and backward, and spatiotemporal-consistency weighting.

For each target date ``t2`` with fine/coarse pairs at ``t1 < t2 < t3``:

* the forward net ``f1`` is trained on ``(L1, M1, M3) -> L3`` and applied to
  ``(L1, M1, M2)``, giving ``P1``;
* the backward net ``f3`` is trained on ``(L3, M3, M1) -> L1`` and applied to
  ``(L3, M3, M2)``, giving ``P3``;
* the two are combined per pixel by the spatiotemporal-consistency (STC) weighting
  ``w_i = (1/r_i) / (1/r_1 + 1/r_3)`` with ``r_i = |P_i - M2| + eps`` (``combine="stc"``,
  the paper's), or, as xfusion extensions, by temporal distance (``combine="time"``) or by
  both (``combine="stc-time"``).

``variant="paper"`` is that description with the spec's reconstructed net (``"xfusion-v1"``)
and STC; the default ``variant="xfusion"`` (chosen by measurement against STARFM, see
``benchmarks/README.md``) uses ``"xfusion-v2"`` nets that start from the fine image plus the
smoothed coarse change and learn a gain on it, a short training, and ``combine="time"``.

Training happens when :func:`sttfn` is called (it reads patches of the two reference pairs;
per-triplet regime, the paper's) unless ``weights=`` names a checkpoint trained beforehand by
:func:`train_sttfn` on many triplets and regions (general regime, applied without
retraining). Inference runs lazily through :func:`xfusion.engine.map_model`, chunk by chunk
with a halo of the nets' receptive field. torch is imported only when :func:`sttfn` runs.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from xfusion._compat import lazy_import
from xfusion.config import EngineConfig, check_device, check_precision
from xfusion.cube.roles import (
    Roles,
    apply_blockwise,
    assemble_result,
    float_data,
    require_choice,
    resolve_roles,
    select_bracket,
    select_targets,
    sort_targets,
    stack_vars,
)
from xfusion.cube.validate import TIME
from xfusion.errors import (
    InvalidParameterError,
    NoOverlapError,
    NotEnoughDataError,
    WeightsMismatchError,
    XFusionWarning,
)
from xfusion.training.sttfn import (
    NETS,
    SttfnTrainOptions,
    TrainedSttfn,
    band_units,
    fmt_day,
    nets_metadata,
    pair_flags,
    resolve_arch,
    stack_cases,
    train_options,
    train_pair,
    train_sttfn,
)

__all__ = ["COMBINE", "STC_SCALES", "VARIANTS", "SttfnTrainOptions", "TrainedSttfn", "stc_weighting", "sttfn",
           "train_sttfn"]

NAME = "sttfn"
STC_SCALES: tuple[str, ...] = ("fine", "coarse")
"""``"fine"``: weights from the residuals against M2 per fine pixel (the STTFN-OSU README).
``"coarse"`` (an xfusion extension): residuals of the predictions aggregated to the coarse
cells, weights broadcast back."""

COMBINE: tuple[str, ...] = ("stc", "time", "stc-time")
"""How the two predictions are combined. ``"stc"``: the spatiotemporal-consistency weighting
(the paper's; residuals at ``stc_scale``). ``"time"`` (xfusion extension): by temporal
distance only, ``w_1 = (t3 - t2) / (t3 - t1)``, the prediction from the nearer pair counts
more. ``"stc-time"`` (xfusion extension): the STC residuals multiplied by each prediction's
temporal distance, ``w_1 = (1 / (r_1 dt_1)) / (1 / (r_1 dt_1) + 1 / (r_3 dt_3))``."""


VARIANTS: dict[str, dict[str, Any]] = {
    "xfusion": {
        "arch": "xfusion-v2",
        "arch_params": {"offset": False},
        "combine": "time",
        "stc_scale": "fine",
        "train": {"epochs": 4, "patches": 8, "patch_size": 96, "batch_size": 4,
                  "patience": 2, "lr": 1e-3, "temporal_mix": 1.0, "target_offset": 0.3},
    },
    "paper": {
        "arch": "xfusion-v1",
        "arch_params": {},
        "combine": "stc",
        "stc_scale": "fine",
        "train": {"epochs": 30, "patches": 128, "patch_size": 48, "batch_size": 16,
                  "patience": 8, "lr": 1e-3, "temporal_mix": 0.0, "target_offset": 0.0},
    },
}
"""Complete configurations selected by ``sttfn(variant=...)``; any option passed explicitly
overrides the variant's value. ``"xfusion"`` (the default, chosen by measurement, see
:func:`sttfn` Notes): ``"xfusion-v2"`` nets whose untrained guess is the fine image plus the
smoothed coarse change and whose learned correction is a gain on that change, combined by
temporal distance, with a short training (the untrained guess is kept when training does not
improve the held-out strip). ``"paper"``: the spec's reconstruction of Yin et al. (2021),
``"xfusion-v1"`` nets trained on the two reference pairs only, combined by the fine-scale
spatiotemporal-consistency weighting."""


# --------------------------------------------------------------------------------------------
# STC weighting (numpy, blockwise)


def stc_weighting(p1: np.ndarray, p3: np.ndarray, m2: np.ndarray, *, eps: float = 1e-3,
                  factor: int | None = None, prior: Any = None,
                  residuals: bool = True) -> np.ndarray:
    """Combine the forward and backward predictions by spatiotemporal consistency.

    ``r_i = |P_i - M2| + eps``, ``w_i = (1/r_i) / (1/r_1 + 1/r_3)``, result
    ``w_1 P_1 + w_3 P_3``; where one prediction is NaN the other is returned. With
    ``factor`` (coarse-scale weighting), ``r_i`` is ``|mean(P_i - M2)| + eps`` over each
    ``factor x factor`` cell (anchored at the array's top-left pixel; observed pixels only),
    broadcast back to the cell's pixels. With a ``prior`` weight ``q`` of ``P_1`` (e.g. the
    temporal one, ``(t3 - t2) / (t3 - t1)``), ``w_1 = (q/r_1) / (q/r_1 + (1 - q)/r_3)``;
    without ``residuals``, ``w_1 = q``.

    Parameters
    ----------
    p1, p3, m2 : numpy.ndarray
        Forward and backward predictions and the coarse image at the target, same shape
        (spatial dims last).
    eps : float
        Added to the residuals (data units): equal residuals, including zero, give 0.5/0.5.
    factor : int, optional
        Coarse cell size in pixels for coarse-scale weighting.
    prior : float or numpy.ndarray, optional
        Prior weight of ``p1`` in [0, 1] (broadcast against the predictions); default equal.
    residuals : bool
        Whether the residuals against ``m2`` enter the weights (False needs ``prior``).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        w1 = _w1(p1, p3, m2, eps=eps, factor=factor, prior=prior, residuals=residuals)
        out = w1 * p1 + (1.0 - w1) * p3
    out = np.where(np.isnan(p1), p3, np.where(np.isnan(p3), p1, out))
    return out.astype(np.result_type(p1, p3), copy=False)


def _w1(p1: np.ndarray, p3: np.ndarray, m2: np.ndarray, *, eps: float, factor: int | None,
        prior: Any, residuals: bool) -> np.ndarray:
    """The weight of ``p1`` (NaN where a residual is; see :func:`stc_weighting`)."""
    if not residuals:
        if prior is None:
            raise InvalidParameterError(
                "stc_weighting(residuals=False) needs prior=... (the weight of p1 in [0, 1])."
            )
        return np.broadcast_to(np.asarray(prior, dtype=np.float64), np.shape(p1))
    if factor is None:
        r1, r3 = np.abs(p1 - m2), np.abs(p3 - m2)
    else:
        r1, r3 = np.abs(_cell_mean(p1 - m2, factor)), np.abs(_cell_mean(p3 - m2, factor))
    if prior is None:
        inv1, inv3 = 1.0 / (r1 + eps), 1.0 / (r3 + eps)
    else:
        q = np.asarray(prior, dtype=np.float64)
        inv1, inv3 = q / (r1 + eps), (1.0 - q) / (r3 + eps)
    return inv1 / (inv1 + inv3)


def _cell_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean of the finite values of each ``f x f`` cell (last two axes), broadcast back."""
    h, w = a.shape[-2:]
    hh, ww = -(-h // f) * f, -(-w // f) * f
    pad = [(0, 0)] * (a.ndim - 2) + [(0, hh - h), (0, ww - w)]
    p = np.pad(a.astype(np.float64), pad, constant_values=np.nan)
    shape = (*a.shape[:-2], hh // f, f, ww // f, f)
    finite = np.isfinite(p)
    s = np.where(finite, p, 0.0).reshape(shape).sum(axis=(-3, -1))
    n = finite.reshape(shape).sum(axis=(-3, -1))
    m = np.divide(s, n, out=np.full(s.shape, np.nan), where=n > 0)
    m = np.repeat(np.repeat(m, f, axis=-2), f, axis=-1)
    return m[..., :h, :w]


def _weight_block(p1: np.ndarray, p3: np.ndarray, m2: np.ndarray, q: np.ndarray | None = None,
                  *, eps: float, factor: int | None, residuals: bool = True) -> np.ndarray:
    """The weight of ``p1`` (NaN-aware as :func:`stc_weighting`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        w1 = _w1(p1, p3, m2, eps=eps, factor=factor, prior=q, residuals=residuals)
    w1 = np.where(np.isnan(p1), 0.0, np.where(np.isnan(p3), 1.0, w1))
    w1[np.isnan(p1) & np.isnan(p3)] = np.nan
    return w1.astype(np.float32)


_STD_LONG_NAME = ("spread of the forward and backward predictions, 2 sqrt(w (1 - w)) "
                  "|forward - backward| (an uncertainty indicator)")
STD_SCALE = 2.0
"""Factor of ``<var>_std`` over the two-point spread ``sqrt(w (1 - w)) |P_1 - P_3|``: fit on
the synthetic LST seeds 0-2 (the errors have heavy tails; with 1, 83 % of them fell within
±2 std, with 2, 93 %); the calibration on held-out scenes is in ``benchmarks/README.md``."""


def _std_block(p1: np.ndarray, p3: np.ndarray, m2: np.ndarray, q: np.ndarray | None = None,
               *, eps: float, factor: int | None, residuals: bool = True) -> np.ndarray:
    """Spread of the two predictions: ``STD_SCALE sqrt(w (1 - w)) |P_1 - P_3|``, the standard
    deviation of the two-point distribution with the combination's weights, scaled (NaN where
    either prediction is)."""
    w1 = _weight_block(p1, p3, m2, q, eps=eps, factor=factor, residuals=residuals)
    with np.errstate(invalid="ignore"):
        sd = STD_SCALE * np.sqrt(np.clip(w1 * (1.0 - w1), 0.0, None)) * np.abs(p1 - p3)
    return sd.astype(np.float32)


def _stc_block(p1: np.ndarray, p3: np.ndarray, m2: np.ndarray, q: np.ndarray | None = None,
               *, eps: float, factor: int | None, residuals: bool = True) -> np.ndarray:
    return stc_weighting(p1, p3, m2, eps=eps, factor=factor, prior=q, residuals=residuals)


# --------------------------------------------------------------------------------------------
# options and results






# --------------------------------------------------------------------------------------------
# helpers






def _check_brackets(ds: xr.Dataset, roles: Roles, tidx: np.ndarray) -> None:
    """Raise a clear error when a target has no pair on one side (before select_bracket)."""
    pairs = pair_flags(ds, roles)
    if pairs is None:
        return
    times = np.asarray(ds.indexes[TIME].values)
    cand = np.flatnonzero(pairs)
    for t in tidx:
        side = "before" if not np.any(cand < t) else "after" if not np.any(cand > t) else None
        if side is not None:
            raise NoOverlapError(
                f"{NAME}() needs a pair (fine and coarse both observed) before AND after each "
                f"target, but the target {fmt_day(times[t])!r} has none {side} it. Pair dates: "
                f"{[fmt_day(v) for v in times[cand]]!r}; dates on the cube: "
                f"{[fmt_day(v) for v in times[:24]]!r}. Predict only targets between two pair "
                "dates (targets=[...]), or use a one-pair method such as starfm()."
            )
















# --------------------------------------------------------------------------------------------
# training (both regimes)








# --------------------------------------------------------------------------------------------
# weights


def _load_weights(weights: Any, roles: Roles, ds: xr.Dataset, arch: str | None
                  ) -> tuple[Any, Any, dict[str, Any]]:
    """Verify a checkpoint against the cube; return engine ModelSpecs for both nets."""
    from xfusion.engine import ModelSpec
    from xfusion.models.checkpoint import file_sha256, load_checkpoint
    from xfusion.models.registry import resolve_weights

    path, expected = resolve_weights(weights)
    ckpt = load_checkpoint(path, expected_sha256=expected)  # integrity: raises on tampering
    meta = ckpt.metadata
    if meta.get("kind", "model") != "model" or meta.get("method") != NAME:
        raise WeightsMismatchError(
            f"The checkpoint {path!r} holds a {meta.get('kind', 'model')!r} for method "
            f"{meta.get('method')!r}, not trained {NAME} nets. Pass a file saved by "
            "train_sttfn(..., out=...) or sttfn(..., save=...)."
        )
    if arch is not None and meta.get("arch") != arch:
        raise WeightsMismatchError(
            f"The weights {path!r} are for architecture {meta.get('arch')!r} but "
            f"arch={arch!r} was requested. Leave arch unset to use the checkpoint's "
            "architecture, or pass weights trained for it."
        )
    bands = list(meta.get("bands", []))
    if len(bands) != len(roles.fine):
        raise WeightsMismatchError(
            f"The weights {path!r} were trained on {len(bands)} band(s) {bands!r}, but the "
            f"cube gives {len(roles.fine)} fine variable(s) {list(roles.fine)!r}. Pass the "
            "same bands, in the same order, as in training."
        )
    if bands != list(roles.fine):
        raise WeightsMismatchError(
            f"The weights {path!r} were trained on the bands {bands!r}, but the cube's fine "
            f"variables are {list(roles.fine)!r}. Rename the variables to match (e.g. "
            f"ds.rename({dict(zip(roles.fine, bands, strict=True))!r})) or train for these bands."
        )
    cube_units = band_units(ds, roles.fine)
    for b, (u_ck, u_cube) in enumerate(zip(meta.get("units", []), cube_units, strict=False)):
        if u_ck is not None and u_cube is not None and str(u_ck) != str(u_cube):
            raise WeightsMismatchError(
                f"The weights {path!r} expect band {bands[b]!r} in units {u_ck!r}, but the "
                f"cube's {roles.fine[b]!r} is in {u_cube!r}. Convert the data to {u_ck!r} "
                "(the nets' normalisation is in those units) or train for these units."
            )
    for net in NETS:
        ckpt.build(net)  # raises WeightsMismatchError on an architecture mismatch, now
    sha = file_sha256(path)
    halo = int(meta.get("halo", 0))
    specs = [
        ModelSpec(name=f"sttfn-{net}", builder="xfusion.models.checkpoint:build_from_checkpoint",
                  kwargs={"path": path, "net": net, "sha256": sha}, halo=halo,
                  out_channels=len(bands))
        for net in NETS
    ]  # fmt: skip
    return specs[0], specs[1], {"weights": path, "weights_sha256": sha, **meta}


# --------------------------------------------------------------------------------------------
# the method




def sttfn(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: Literal["bracket"] | Any = "bracket",
    variant: Literal["xfusion", "paper"] = "xfusion",
    weights: str | os.PathLike[str] | None = None,
    arch: str | None = None,
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
    combine: Literal["stc", "time", "stc-time"] | None = None,
    stc_scale: Literal["fine", "coarse"] | None = None,
    coarse_factor: int | None = None,
    stc_eps: float = 1e-3,
    device: str = "auto",
    precision: str = "float32",
    tile: int | None = 512,
    num_workers: int = 0,
    progress: bool | None = None,
    save: str | os.PathLike[str] | None = None,
    diagnostics: bool = False,
    engine: EngineConfig | None = None,
) -> xr.Dataset:
    """Predict fine images at target dates with STTFN (two CNNs + consistency weighting).

    For each target ``t2`` the nearest pair dates ``t1 < t2 < t3`` are used (fine and
    coarse observed). Per triplet, a forward net is trained on ``(L1, M1, M3) -> L3`` and
    applied to ``(L1, M1, M2)``, a backward net trained on ``(L3, M3, M1) -> L1`` and applied
    to ``(L3, M3, M2)``; the two predictions are combined per pixel by the
    spatiotemporal-consistency (STC) weighting (see Notes). With ``weights=`` the nets of a
    checkpoint (general regime, :func:`train_sttfn`) are applied instead, without training.

    Training reads patches of the reference pairs when this function is called (nothing else
    is computed); inference is lazy: on dask input the result is a dask graph (layers
    ``xfusion.sttfn-…``) computed chunk by chunk with a halo of the nets' receptive field,
    on the device chosen in each worker (``"auto"``: CUDA when present).

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`).
    fine, coarse : str or list of str
        Fine and coarse variable names, paired by position; several bands are fused by one
        pair of nets with one channel per band.
    targets : date-like or sequence of date-like, optional
        Dates to predict (default: every date with coarse but no fine observation).
    pairs : "bracket" or (date, date) or sequence of (date, date)
        ``"bracket"``: the nearest pair before and after each target; or explicit
        ``(t1, t3)`` dates for all targets or one tuple per target.
    variant : {"xfusion", "paper"}
        A complete configuration (:data:`VARIANTS`); options passed explicitly override it.
        ``"xfusion"`` (default, chosen by measurement, see Notes): ``"xfusion-v2"`` nets
        whose untrained guess is the fine image plus the smoothed coarse change and whose
        learned correction is a per-pixel gain on that change (``offset=False``), a short
        training (4 epochs of 8 random 96 px patches, batch 4, patience 2; the untrained
        guess is kept when training does not improve the held-out strip), combined by
        temporal distance (``combine="time"``). ``"paper"``: the spec's reconstruction of
        Yin et al. (2021): ``"xfusion-v1"`` nets trained on the reference pairs only
        (``temporal_mix=0``, ``target_offset=0``; 30 epochs of 128 patches of 48 px),
        combined by the fine-scale STC weighting (``combine="stc"``).
    weights : path or str, optional
        A checkpoint (``.safetensors`` saved by :func:`train_sttfn` or ``save=``) or the name
        of registered weights (:mod:`xfusion.models`); no training then. Its bands, units and
        architecture must match the cube.
    arch : str, optional
        Architecture from :func:`xfusion.models.list_architectures` (default: the
        variant's, ``"xfusion-v2"`` or, with ``variant="paper"``, ``"xfusion-v1"``, the
        spec's reconstruction; with ``weights``: the checkpoint's).
        ``"xfusion-v2"`` (an xfusion design) adds a coarse-context branch wider than a coarse
        pixel and a smoothed coarse change with a per-pixel gain in the global residual (see
        :mod:`xfusion.models.sttfn`); its 95 px receptive radius wants ``patch_size`` of
        about 128 (e.g. ``patches=32, patch_size=128``).
    arch_params : mapping, optional
        Architecture parameters (``xfusion-v1``: ``sr_width``, ``feat``, ``width``,
        ``blocks``, kernel sizes, ``init``; ``xfusion-v2`` also ``ctx_width``, ``ctx_box``,
        ``ctx_dilations``, ``guess``, ``target_features``); defaults give the spec's
        405,025-parameter net (v1) or a 109,426-parameter net (v2).
    epochs, patch_size, patches, batch_size, lr, val_fraction, patience, min_valid
        Training options, see :class:`SttfnTrainOptions` (defaults: the variant's, see
        ``variant``; ``patience="auto"`` is the variant's, ``patience=None`` never stops
        early; Adam lr 1e-3, 10 % of the scene held out as a strip for early
        stopping, patches need 50 % observed pixels in every input). A bigger budget is
        one option away (``epochs=24``, ``patches=32``); ``epochs=0`` gives the untrained
        guess.
    augment, temporal_mix, loss
        Flips/rotations (default on), the share of time-interpolated training items
        (``"xfusion"``: 1.0, an xfusion extension; ``"paper"``: 0), the loss (MSE on
        normalised errors).
    target_offset : float, optional
        Random uniform offsets added to the target coarse and fine images of the training
        items, in band standard deviations (``"xfusion"``: 0.3, an xfusion extension;
        ``"paper"``: 0; see :class:`SttfnTrainOptions`).
    seed : int
        Seed of everything random in training (same seed, same inputs → same result on the
        same device).
    combine : {"stc", "time", "stc-time"}, optional
        How the forward and backward predictions are combined (default: the variant's):
        ``"stc"`` (the paper's) the spatiotemporal-consistency weighting at ``stc_scale``;
        ``"time"`` (``variant="xfusion"``) by temporal distance,
        ``w_1 = (t3 - t2) / (t3 - t1)``; ``"stc-time"`` the STC residuals times the temporal
        distances (both xfusion extensions, see Notes).
    stc_scale : {"fine", "coarse"}, optional
        Residuals per fine pixel (default, as in STTFN) or per coarse cell (xfusion
        extension; needs ``coarse_factor``).
    coarse_factor : int, optional
        Coarse pixel size in fine pixels for ``stc_scale="coarse"`` (default: the cube's
        ``coarse_factor`` attribute).
    stc_eps : float
        The ``eps`` of the STC residuals (data units; 1e-3 K).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Device for training and inference.
    precision : {"float32", "bf16", "fp16"}
        Autocast on CUDA for training and inference.
    tile : int, optional
        Engine tile size (pixels) for inference.
    num_workers : int
        DataLoader workers for training.
    progress : bool, optional
        Progress of the training, per net: epochs, training and validation loss, time left
        (a ``tqdm.auto`` bar in Jupyter and terminals, lines on the ``xfusion.progress``
        logger, or stderr, elsewhere); ``False`` silences it, None follows
        :func:`xfusion.set_progress`. Ctrl-C stops the training at once and raises
        ``KeyboardInterrupt`` (the CLI exits with status 130).
    save : path, optional
        Folder where each triplet's trained nets are saved as
        ``sttfn_<t1>_<t3>.safetensors`` (reusable with ``weights=``).
    diagnostics : bool
        Also return ``<fine>_forward`` and ``<fine>_backward`` (the two nets' predictions),
        ``<fine>_weight`` (the weight ``w`` of the forward prediction) and ``<fine>_std``,
        the spread ``2 sqrt(w (1 - w)) |forward - backward|`` (an uncertainty indicator,
        NaN where only one direction predicts; the factor 2, :data:`STD_SCALE`, was fit on
        synthetic scenes; calibration in ``benchmarks/README.md``).
    engine : EngineConfig, optional
        Full engine configuration (overrides ``device``, ``precision``, ``tile`` for
        inference); NaN inputs are always passed to the nets, which handle them.

    Returns
    -------
    xarray.Dataset
        One float32 variable per fine name, dims ``(time, y, x)`` at the targets, NaN where
        an input is unobserved (where only one of L1/L3 is, the other direction's
        prediction is used); coordinates ``pair_time`` (t1) and ``pair_time_after`` (t3); the
        attribute ``xfusion_sttfn`` (JSON: architecture, regime, training metrics per
        triplet or the checkpoint used).

    Raises
    ------
    MissingOptionalDependency
        torch (or safetensors) is not installed: ``pip install 'xfusion[torch]'``.
    NoOverlapError
        A target has no pair before or after it (the message lists the pair dates).
    NotEnoughDataError
        Too few observed pixels in the reference pairs to train (the message gives counts).
    WeightsMismatchError, CheckpointError, WeightsNotFoundError
        ``weights`` do not match the cube's bands/units or the architecture, are corrupt or
        tampered with, or do not exist.
    InvalidParameterError, TimeAxisError
        Bad options, dates not on the cube (see :func:`xfusion.baseline`).

    See Also
    --------
    train_sttfn : train one forward/backward pair across many triplets and regions.
    xfusion.starfm : the classical one/two-pair method.
    xfusion.models.list_architectures : available architectures.

    Notes
    -----
    STC weighting: ``r_i = |P_i - M2| + eps`` and ``w_i = (1/r_i) / (1/r_1 + 1/r_3)``,
    ``L2 = w_1 P_1 + w_3 P_3`` (reconstructed from the STTFN-OSU description; equal
    residuals give 0.5/0.5). The fine-scale residuals barely tell the two predictions apart
    (``M2`` resampled from 1 km has no sub-km structure, and both predictions share the
    fine texture), so the weights hover around 0.5 whatever the target's position between
    the pairs; ``combine="time"`` weights the prediction from the nearer pair more. Measured
    (``benchmarks/bench_sttfn.py``): on synthetic LST it lowered the RMSE by 13-27 % against
    ``"stc"``; on Kranj (reflectance, target 9 and 16 days from the pairs) it was 3 % worse.

    The default ``variant="xfusion"`` was chosen by measurement (``benchmarks/README.md``,
    "STTFN accuracy"): with ``combine="time"`` the untrained ``"xfusion-v2"`` guess is
    ``q L1 + (1 - q) L3 + S(M2 - q M1 - (1 - q) M3)``, the temporal interpolation of the
    fine images plus the smoothed departure of the coarse image from its own interpolation,
    which is what beats STARFM; the short training (a gain on the smoothed change, kept only
    when it beats the untrained nets on the held-out strip) changes it little, and longer
    training made it worse on the synthetic scenes (the nets learn the t1 -> t3 change, not
    the dates between). Training time grows with ``epochs`` and ``patches``, not with the
    scene size.
    ``"xfusion-v1"`` is xfusion's reconstruction of the paper's
    network (the layer table was not available; see :mod:`xfusion.models.sttfn`): its output
    is ``L_ref + (M_tgt - M_ref) + R``, and with the default ``init="zero-head"`` the
    untrained net (``epochs=0``) returns exactly the "fine plus coarse change" baseline, so
    training only has to learn the correction. Inputs are normalised per band with the mean
    and standard deviation of the observed fine and coarse training pixels, stored with the
    nets. Receptive field (the chunk halo): 13 px for ``"xfusion-v1"``, 95 px for
    ``"xfusion-v2"``. Memory per inference task: one chunk plus
    halo of the three inputs and the nets' activations of one tile batch.

    References
    ----------
    Yin Z., Wu P., Foody G.M., Wu Y., Liu Z., Du Y., Ling F. (2021). Spatiotemporal fusion
    of land surface temperature based on a convolutional neural network. IEEE TGRS 59(2),
    1808-1822. doi:10.1109/TGRS.2020.2999943

    Examples
    --------
    >>> from xfusion.testing import synthetic_scene
    >>> scene = synthetic_scene((64, 64), fine_times=[0, 2], times=3, cloud_fraction=0.0)
    >>> out = sttfn(scene, fine="fine", coarse="coarse", epochs=1, patches=8,
    ...             patch_size=32, arch_params={"sr_width": 8, "feat": 8, "width": 8})
    >>> out.fine.dims, str(out.pair_time.values[0])[:10], str(out.pair_time_after.values[0])[:10]
    (('time', 'y', 'x'), '2021-04-03', '2021-05-05')
    """
    lazy_import("torch", purpose=f"{NAME}()")
    lazy_import("safetensors", purpose=f"{NAME}()", extra="torch")
    require_choice(variant, tuple(VARIANTS), name="variant", method=NAME)
    var = VARIANTS[variant]
    combine = combine if combine is not None else var["combine"]
    stc_scale = stc_scale if stc_scale is not None else var["stc_scale"]
    require_choice(combine, COMBINE, name="combine", method=NAME)
    require_choice(stc_scale, STC_SCALES, name="stc_scale", method=NAME)
    if not (isinstance(stc_eps, (int, float)) and stc_eps > 0):
        raise InvalidParameterError(f"{NAME}() parameter stc_eps must be > 0, found {stc_eps!r}.")
    check_device(device)
    check_precision(precision)
    factor = None
    if stc_scale == "coarse" and combine != "time":
        factor = coarse_factor if coarse_factor is not None else ds.attrs.get("coarse_factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
            raise InvalidParameterError(
                f"{NAME}(stc_scale='coarse') needs the coarse pixel size in fine pixels; found "
                f"coarse_factor={factor!r}. Pass coarse_factor=... (e.g. 33 for MODIS 1 km on "
                "a 30 m grid)."
            )
        factor = int(factor)
    opts = train_options(
        defaults=var["train"], epochs=epochs, patch_size=patch_size, patches=patches, batch_size=batch_size, lr=lr,
        val_fraction=val_fraction, patience=patience, min_valid=min_valid, augment=augment,
        temporal_mix=temporal_mix, loss=loss, target_offset=target_offset, seed=seed,
        device=device, precision=precision, num_workers=num_workers, progress=progress,
    )  # fmt: skip
    roles = resolve_roles(ds, fine, coarse, method=NAME)
    tidx = select_targets(ds, roles, targets, method=NAME)
    if isinstance(pairs, str) and pairs == "bracket":
        _check_brackets(ds, roles, tidx)
    before, after = select_bracket(ds, roles, tidx, pairs, method=NAME)
    tidx, before, after = sort_targets(tidx, before, after)
    nb = len(roles.fine)
    times = np.asarray(ds.indexes[TIME].values)
    bad = [k for k in range(len(tidx)) if not before[k] < tidx[k] < after[k]]
    if bad:
        k = bad[0]
        raise InvalidParameterError(
            f"{NAME}() needs t1 < target < t3, but target {fmt_day(times[tidx[k]])!r} got the "
            f"pairs ({fmt_day(times[before[k]])!r}, {fmt_day(times[after[k]])!r}). Give "
            "(before, after) dates around each target."
        )

    like = {f: float_data(ds, f, dims=roles.dims) for f in roles.fine}
    L = stack_vars(ds, roles.fine, dims=roles.dims).data  # (T, nb, y, x)
    M = stack_vars(ds, roles.coarse, dims=roles.dims).data
    cfg = engine or EngineConfig(device=device, precision=precision, tile=tile)
    cfg = replace(cfg, nan_fill=float("nan"))

    record: dict[str, Any] = {"variant": variant, "combine": combine, "stc_scale": stc_scale, "stc_eps": stc_eps,
                              "coarse_factor": factor, "triplets": []}  # fmt: skip
    groups: dict[tuple[int, int], list[int]] = {}
    for k in range(len(tidx)):
        groups.setdefault((int(before[k]), int(after[k])), []).append(k)

    if weights is not None:
        f_net, b_net, meta = _load_weights(weights, roles, ds, arch)
        record.update(regime="weights", arch=meta.get("arch"), weights=meta["weights"],
                      weights_sha256=meta["weights_sha256"],
                      training=meta.get("training", {}).get("regime"))
        nets = dict.fromkeys(groups, (f_net, b_net))
    else:
        if arch is None or arch == var["arch"]:
            arch = var["arch"]
            arch_params = {**var["arch_params"], **dict(arch_params or {})}
        params = resolve_arch(arch, arch_params)
        record.update(regime="per-triplet", arch=arch, arch_params=params)
        nets = {}
        for (t1, t3) in groups:
            d1, d3 = fmt_day(times[t1]), fmt_day(times[t3])
            t0 = time.perf_counter()
            case = stack_cases(ds, roles.dims, L, M, [(t1, t3)])
            try:
                fwd, bwd, info = train_pair([case], [[f"{d1}|{d3}"]], nb=nb, arch=arch,
                                             params=params, opts=opts)
            except NotEnoughDataError as err:
                # the default's nets start from a sound guess and only need a few patches:
                # on a small or cloudy scene, accept patches with fewer observed pixels
                relaxed = _relaxed(opts, variant=variant, min_valid_given=min_valid is not None)
                if relaxed is None:
                    raise
                try:
                    fwd, bwd, info = train_pair([case], [[f"{d1}|{d3}"]], nb=nb, arch=arch,
                                                 params=params, opts=relaxed)
                except NotEnoughDataError:
                    raise err from None
                warnings.warn(XFusionWarning(
                    f"{NAME}(): {d1} -> {d3}: too few clear patches at min_valid="
                    f"{opts.min_valid:g} ({str(err).split('. It needs')[0]}); trained on "
                    f"patches with at least {100 * relaxed.min_valid:.0f}% observed pixels. "
                    "Pass min_valid=... to choose."), stacklevel=2)  # fmt: skip
            nets[(t1, t3)] = (fwd, bwd)
            entry = {"t1": d1, "t3": d3, "seconds": round(time.perf_counter() - t0, 3),
                     "metrics": info["metrics"], "patch_size": info["patch_size"],
                     "normalization": info["normalization"]}  # fmt: skip
            if save is not None:
                meta = nets_metadata(arch=arch, params=params, nb=nb, roles=roles, bands=roles.fine,
                                 coarse_bands=roles.coarse, units=band_units(ds, roles.fine),
                                 halo=int(fwd.halo), info=info, opts=opts, regime="per-triplet",
                                 cases=[[d1, d3]])  # fmt: skip
                path = Path(save) / f"sttfn_{d1}_{d3}.safetensors"
                TrainedSttfn(fwd, bwd, meta).save(path)
                entry["saved"] = str(path)
            record["triplets"].append(entry)

    from xfusion.engine import map_model

    order: list[int] = []
    preds: list[Any] = []
    m2_all: list[Any] = []
    for (t1, t3), ks in groups.items():
        f_net, b_net = nets[(t1, t3)]
        t2s = [int(tidx[k]) for k in ks]
        x_f = _inputs(L, M, t1, t2s)
        x_b = _inputs(L, M, t3, t2s)
        p_f = map_model(x_f, f_net, config=cfg, method=NAME)
        p_b = map_model(x_b, b_net, config=cfg, method=NAME)
        m2 = _take(M, t2s)
        preds.append((p_f, p_b))
        m2_all.append(m2)
        order += ks
    p_f = _concat([p[0] for p in preds])
    p_b = _concat([p[1] for p in preds])
    m2 = _concat(m2_all)
    inv = np.argsort(np.asarray(order))
    if not np.array_equal(inv, np.arange(len(order))):
        p_f, p_b, m2 = p_f[inv], p_b[inv], m2[inv]
    prior = None
    if combine != "stc":
        # temporal prior weight of the forward prediction, per target (output order)
        tt = times.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
        q = (tt[after] - tt[tidx]) / (tt[after] - tt[before])
        prior = q.astype(np.float32).reshape(-1, 1, 1, 1)
    residuals = combine != "time"
    out = _stc(p_f, p_b, m2.astype(np.float32), eps=float(stc_eps), factor=factor, prior=prior,
               residuals=residuals)

    data = {fname: out[:, b] for b, fname in enumerate(roles.fine)}
    for fname in roles.fine:
        like[fname] = like[fname].astype(np.float32)
    if diagnostics:
        w = _stc(p_f, p_b, m2.astype(np.float32), eps=float(stc_eps), factor=factor,
                 prior=prior, residuals=residuals, func=_weight_block)
        sd = _stc(p_f, p_b, m2.astype(np.float32), eps=float(stc_eps), factor=factor,
                  prior=prior, residuals=residuals, func=_std_block)
        for b, fname in enumerate(roles.fine):
            for suffix, arr, long_name in (
                ("forward", p_f, "STTFN forward-net prediction (from t1)"),
                ("backward", p_b, "STTFN backward-net prediction (from t3)"),
                ("weight", w, f"{combine} weight of the forward prediction"),
                ("std", sd, _STD_LONG_NAME),
            ):
                key = f"{fname}_{suffix}"
                data[key] = arr[:, b]
                tmpl = like[fname].copy(deep=False)
                tmpl.attrs = {"long_name": long_name}
                like[key] = tmpl
    res = assemble_result(ds, data, like=like, target_idx=tidx,
                          time_coords={"pair_time": before, "pair_time_after": after})
    res.attrs["xfusion_sttfn"] = json.dumps(record, default=str)
    return res


def _take(a: Any, idx: Sequence[int]) -> Any:
    return a[np.asarray(idx, dtype=np.intp)]


def _concat(arrays: list[Any]) -> Any:
    if len(arrays) == 1:
        return arrays[0]
    if any(dask.is_dask_collection(a) for a in arrays):
        import dask.array as da

        return da.concatenate(arrays, axis=0)
    return np.concatenate(arrays, axis=0)


def _inputs(L: Any, M: Any, ref: int, tgts: Sequence[int]) -> Any:
    """``(n, 3 nb, y, x)``: ``[L_ref, M_ref, M_tgt]`` per target."""
    l_ref, m_ref = L[ref], M[ref]
    rows = [[l_ref, m_ref, M[t]] for t in tgts]
    if any(dask.is_dask_collection(a) for r in rows for a in r):
        import dask.array as da

        return da.stack([da.concatenate(r, axis=0) for r in rows])
    return np.stack([np.concatenate(r, axis=0) for r in rows]).astype(np.float32, copy=False)


def _with_prior(p_f: Any, p_b: Any, m2: Any, prior: np.ndarray | None) -> list[Any]:
    """``[p_f, p_b, m2]`` plus, with a per-target ``prior`` ``(n, 1, 1, 1)``, that prior
    broadcast to the predictions' shape (and chunks, lazily, on dask)."""
    arrs = [p_f, p_b, m2]
    if prior is None:
        return arrs
    if dask.is_dask_collection(p_f):
        import dask.array as da

        q = da.from_array(prior, chunks=(p_f.chunks[0], 1, 1, 1))
        return [*arrs, da.broadcast_to(q, p_f.shape, chunks=p_f.chunks)]
    return [*arrs, np.broadcast_to(prior, np.shape(p_f))]


def _stc(p_f: Any, p_b: Any, m2: Any, *, eps: float, factor: int | None,
         prior: np.ndarray | None = None, residuals: bool = True, func: Any = None) -> Any:
    """The combined prediction (or, with ``func=_weight_block``, the forward weight), lazily
    on dask; coarse-scale cells are rechunked to whole cells first."""
    import functools

    func = functools.partial(func or _stc_block, eps=eps, factor=factor, residuals=residuals)
    arrs = _with_prior(p_f, p_b, m2, prior)
    if factor is None:
        return apply_blockwise(func, *arrs, name=f"xfusion.{NAME}-stc", dtype=np.float32)
    if not any(dask.is_dask_collection(a) for a in arrs):
        return np.asarray(func(*arrs), dtype=np.float32)
    import dask.array as da
    from dask.base import tokenize

    arrs = [a if dask.is_dask_collection(a) else da.asarray(a) for a in arrs]
    ref = arrs[0]
    spatial = []
    for n, cs in zip(ref.shape[-2:], ref.chunks[-2:], strict=True):
        size = max(factor, round(max(cs) / factor) * factor)
        spatial.append(tuple(min(size, n - s) for s in range(0, n, size)))
    chunks = (*ref.chunks[:-2], *spatial)
    arrs = [a.rechunk(chunks) for a in arrs]
    return da.map_blocks(
        func, *arrs, dtype=np.float32,
        name=f"xfusion.{NAME}-stc-{tokenize(*arrs, eps, factor, residuals, func)}",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# general regime






def _relaxed(opts: Any, *, variant: str, min_valid_given: bool) -> Any:
    """Training options of the default variant with a lower ``min_valid`` (None: no retry)."""
    if variant != "xfusion" or min_valid_given or opts.min_valid <= _MIN_VALID_FLOOR:
        return None
    return replace(opts, min_valid=_MIN_VALID_FLOOR)


#: The lowest observed share a training patch of the default variant is relaxed to.
_MIN_VALID_FLOOR = 0.2


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: str | None = None) -> int:
    """Pixels a job tile reads around itself: the nets' receptive field (from the trained
    weights' metadata, else the architecture's), plus three (the registry's halo rule)."""
    if weights is not None:
        from xfusion.models.checkpoint import read_metadata

        return int(read_metadata(weights).get("halo", 0)) + 3
    from xfusion.models.registry import build_model

    var = VARIANTS.get(str(params.get("variant") or "xfusion"), VARIANTS["xfusion"])
    arch = params.get("arch") or var["arch"]
    arch_params = dict(params.get("arch_params") or {})
    if arch == var["arch"]:
        arch_params = {**var["arch_params"], **arch_params}
    net = build_model(arch, 1, **arch_params)
    return int(getattr(net, "halo", 0)) + 3


def _sttfn_cli(ds: xr.Dataset, /, **kwargs: Any) -> xr.Dataset:
    """CLI entry: :func:`sttfn` with the CLI's ``--param`` values (progress on a terminal)."""
    kwargs.setdefault("progress", True)
    return sttfn(ds, **kwargs)
