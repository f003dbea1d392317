"""STORI training: the SAR-guided recurrent imputer fitted on a series itself (:func:`fit_stori`).

:class:`StoriConfig` holds the architecture and training options (variant ``"fixed"``, the
default, or ``"faithful"`` to the public code), :class:`StoriWeights` a trained model with its
normalisation statistics; :func:`xfusion.gapfill` trains one when given no weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import dask
import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import require_choice
from xfusion.cube.validate import TIME
from xfusion.errors import InvalidParameterError, NotEnoughDataError, WeightsMismatchError
from xfusion.models.registry import STORI_ARCH
from xfusion.training.progress import TrainingInterrupted, TrainingProgress, interpreter_exiting
from xfusion.training.series import (
    prep_optical,
    prep_sar,
    series_inputs,
    series_positions,
    stack_sar,
)

if TYPE_CHECKING:
    import torch

__all__ = ["StoriConfig", "StoriWeights", "Variant", "fit_stori"]

NAME = "gapfill"


Variant: TypeAlias = Literal["residual", "fixed", "faithful"]
"""``"residual"`` (default): SAR-guided boosting of the linear fill's residual (xfusion);
``"fixed"``: the recurrent net with the public code's bugs fixed; ``"faithful"``: the recurrent
net as the public code (the paper's configuration)."""

VARIANTS: tuple[str, ...] = ("residual", "fixed", "faithful")
RECURRENT: tuple[str, ...] = ("fixed", "faithful")

AUTO = "auto"
"""Default of fields whose value depends on the variant (``None`` is a value of its own)."""

RESIDUAL_ARCH = "stori-residual"
"""Checkpoint ``arch`` of the residual variant (trees, not a torch architecture)."""

# fields that only one kind of variant reads: recurrent-only and residual-only
_RNN_ONLY = ("hidden", "epochs", "batch_size", "weight_decay", "consistency", "lr_step",
             "sar_first", "decay", "sar_scaling", "optical_scaling", "sar_window", "sar_order")
_RES_ONLY = ("rounds", "leaves", "min_leaf", "l2", "train_samples", "sar_spatial", "support")
_AUTO_FIELDS = ("lr_step", "patience")  # None means something: "auto" is the default
_SHARED = ("lr", "val_fraction", "augment")  # variant defaults, None = default


@dataclass(frozen=True, kw_only=True)
class StoriConfig:
    """Model, preprocessing and training settings of STORI.

    ``variant`` picks the model and sets the defaults of the fields left to ``"auto"`` (or
    ``None`` where ``None`` has no meaning of its own):

    ``"residual"`` (default, xfusion)
        the linear fill plus a correction predicted from SAR and the temporal context by
        gradient-boosted trees fitted on the scene's own observations (observed steps hidden in
        runs like real gaps), early-stopped on held-out pixels and shrunk toward the linear fill
        per gap length where it does not help there (:mod:`xfusion.training.stori_residual`).
        Fields: ``rounds``, ``lr`` (0.1), ``leaves``, ``min_leaf``, ``l2``, ``train_samples``,
        ``sar_spatial``, ``augment`` (share hidden), ``augment_max_run``, ``patience``
        (rounds), ``val_fraction``, ``train_pixels``, ``min_observed``, ``time_budget``,
        ``seed``. No torch needed. About 6-9 s of one core for a 64 x 64 x 73 series (2-core
        machine at load 3-6; 15-20 s at load 9), see ``benchmarks/README.md``.
    ``"fixed"``
        the recurrent net (:mod:`xfusion.models.stori`) with the public code's bugs fixed (SAR
        step ``t`` used for step ``t``; the decay acts on the optical state; scene-level SAR
        scaling; spatially held-out validation with early stopping; a stepped learning rate;
        input-mask augmentation).
    ``"faithful"``
        the recurrent net as the public code and the paper (``../shared/specs/stori.md``).

    Setting a field that the chosen variant does not read (``hidden`` for ``"residual"``,
    ``rounds`` for ``"fixed"``...) raises :class:`~xfusion.errors.InvalidParameterError`.
    """

    variant: Variant = "residual"
    """``"residual"`` (default), ``"fixed"`` or ``"faithful"``."""
    # ---- recurrent variants
    hidden: int | None = None
    """Hidden size of the LSTM cells (recurrent: 96)."""
    sar_first: bool | None = None
    """Update the SAR chain with ``SAR_t`` before regressing step ``t`` (fixed: True)."""
    decay: Literal["optical", "sar"] | None = None
    """State the optical-gap decay acts on (fixed: ``"optical"``, faithful: ``"sar"``)."""
    sar_scaling: Literal["scene", "sample"] | None = None
    """``"scene"``: standardise SAR with scene statistics (keeps absolute backscatter);
    ``"sample"``: min-max each pixel's series to [-1, 1] (faithful)."""
    optical_scaling: Literal["scene", "none"] | None = None
    """``"scene"``: standardise the optical variable with the training statistics;
    ``"none"``: use it as stored (faithful)."""
    sar_window: int | None = None
    """Savitzky-Golay window (steps) smoothing the SAR series (faithful: 19; fixed: 7,
    i.e. 56 days for 8-day composites, so harvests and mowing are not smeared over 5 months);
    capped by the series length; 1 disables it."""
    sar_order: int | None = None
    """Savitzky-Golay polynomial order (recurrent: 2)."""
    epochs: int | None = None
    """Maximum epochs (fixed: 100 with early stopping; faithful: 250, the last one kept)."""
    batch_size: int | None = None
    """Pixels per optimizer step (recurrent: 256)."""
    weight_decay: float | None = None
    """Adam (L2) weight decay (recurrent: 8e-4)."""
    consistency: float | None = None
    """Weight of the forward/backward consistency term (recurrent: 0.1)."""
    lr_step: int | Literal["auto"] | None = AUTO
    """StepLR period in epochs, halving the rate (fixed: 50; faithful: None); ``None``: a
    constant learning rate."""
    # ---- residual variant
    rounds: int | None = None
    """Maximum boosting rounds (trees) of the residual variant (500, early-stopped); the
    training budget: more rounds, ``train_samples`` or a larger ``time_budget`` train
    longer."""
    leaves: int | None = None
    """Leaves per tree (residual: 31)."""
    min_leaf: int | None = None
    """Training samples per leaf at least (residual: 50)."""
    l2: float | None = None
    """L2 penalty on the leaf values (residual: 1.0)."""
    train_samples: int | None = None
    """At most this many hidden steps to learn from (residual: 120000)."""
    sar_spatial: int | None = None
    """Side of the square window (pixels, odd) SAR is averaged over against speckle
    (residual: 3; 1 disables it). The halo of the fill."""
    support: float | None = None
    """Residual: seasons (day-of-year bins of one step) with fewer hidden training examples
    than this share of the typical season's get a proportionally smaller correction, none
    where the scene was never observed (a winter overcast). Default 0 (off): on the
    development scenes the correction learnt elsewhere in the year still helped across the
    winter overcast (0.25 raised the MAE from 0.54 to 0.73 of linear's), but on small scenes
    (24 x 24 px) it can hurt there; 0.25 is the conservative choice."""
    # ---- all variants
    lr: float | None = None
    """Learning rate: Adam's (recurrent: 1e-3) or the boosting shrinkage (residual: 0.1)."""
    patience: int | Literal["auto"] | None = AUTO
    """Early stopping: epochs (recurrent) or rounds (residual) without a better validation
    MAE before training stops, the best model kept (fixed: 10; residual: 60; faithful:
    None); ``None``: no early stopping (all epochs/rounds run; with validation the best one
    is still kept)."""
    val_fraction: float | None = None
    """Share of the scene (a strip along its longer axis) held out for validation (fixed and
    residual: 0.2; faithful: 0, no validation)."""
    augment: float | None = None
    """Share of the observed steps hidden in runs: from the input of each training batch
    (fixed: 0.2; faithful: 0), or as the targets of the residual model (residual: 0.25)."""
    augment_max_run: int | None = None
    """Longest hidden run in steps (recurrent default: a sixth of the series; residual: 60
    days), at least 1."""
    train_pixels: int = 8192
    """At most this many pixels are used for training (a regular subsample of the scene;
    recurrent training costs about 40 MFLOP per pixel and epoch at H = 96, so raise it on a
    GPU)."""
    min_observed: int = 3
    """Pixels with fewer optical observations are not used for training."""
    time_budget: float | None = None
    """Stop training after the epoch (recurrent) or validation stage (residual, every 10
    rounds) during which this many seconds have passed (the result then depends on the
    machine's speed; None keeps training deterministic)."""
    seed: int = 0
    """Seed of initialisation, batch order, hidden runs and validation masks."""
    threads: int | None = 1
    """CPU threads of the recurrent variants' training (``None``: torch's setting); small
    cells run fastest on one. The residual variant trains on one thread."""

    def __post_init__(self) -> None:
        require_choice(self.variant, VARIANTS, name="variant", method="StoriConfig")
        variant = self.variant
        recurrent = variant in RECURRENT
        wrong = _RES_ONLY if recurrent else _RNN_ONLY
        given = [k for k in wrong if getattr(self, k) not in (None, AUTO)]
        if given:
            kind = "the residual variant" if recurrent else "the recurrent variants"
            fix = ("variant='residual'" if recurrent else "variant='fixed' (or 'faithful')")
            raise InvalidParameterError(
                f"StoriConfig(variant={variant!r}) does not use {given!r}: they apply to "
                f"{kind}. Drop them, or pass {fix}.")
        fixed = variant == "fixed"
        if recurrent:
            defaults: dict[str, Any] = {
                "hidden": 96, "sar_first": fixed, "decay": "optical" if fixed else "sar",
                "sar_scaling": "scene" if fixed else "sample",
                "optical_scaling": "scene" if fixed else "none",
                "sar_window": 7 if fixed else 19, "sar_order": 2,
                "epochs": 100 if fixed else 250, "batch_size": 256, "weight_decay": 8e-4,
                "consistency": 0.1, "lr": 1e-3, "lr_step": 50 if fixed else None,
                "patience": 10 if fixed else None, "val_fraction": 0.2 if fixed else 0.0,
                "augment": 0.2 if fixed else 0.0,
            }
        else:
            defaults = {
                "rounds": 500, "leaves": 31, "min_leaf": 50, "l2": 1.0,
                "train_samples": 120_000, "sar_spatial": 3, "support": 0.0, "lr": 0.1,
                "patience": 60,
                "val_fraction": 0.2, "augment": 0.25, "lr_step": None,
            }
        for k, v in defaults.items():
            if getattr(self, k) == (AUTO if k in _AUTO_FIELDS else None):
                object.__setattr__(self, k, v)
        if recurrent:
            for k, choices in (("decay", ("optical", "sar")), ("sar_scaling", ("scene", "sample")),
                               ("optical_scaling", ("scene", "none"))):
                require_choice(getattr(self, k), choices, name=k, method="StoriConfig")
        ints = {"train_pixels": 1, "min_observed": 1}
        ints.update({"hidden": 1, "sar_window": 1, "sar_order": 0, "epochs": 0,
                     "batch_size": 1} if recurrent else
                    {"rounds": 0, "leaves": 2, "min_leaf": 1, "train_samples": 1,
                     "sar_spatial": 1})
        for k, lo in ints.items():
            v = getattr(self, k)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise InvalidParameterError(
                    f"StoriConfig.{k} must be an integer >= {lo}, found {v!r}.")
        if not recurrent and self.sar_spatial % 2 == 0:  # type: ignore[operator]
            raise InvalidParameterError(
                f"StoriConfig.sar_spatial must be odd (a centred window), found "
                f"{self.sar_spatial!r}.")
        for k in ("lr_step", "patience", "augment_max_run", "threads"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                                  or v < 1):
                raise InvalidParameterError(
                    f"StoriConfig.{k} must be None or an integer >= 1, found {v!r}.")
        if not (0.0 <= float(self.val_fraction) < 0.5):  # type: ignore[arg-type]
            raise InvalidParameterError(
                f"StoriConfig.val_fraction must be in [0, 0.5), found {self.val_fraction!r}.")
        if not (0.0 <= float(self.augment) < 1.0):  # type: ignore[arg-type]
            raise InvalidParameterError(
                f"StoriConfig.augment must be in [0, 1), found {self.augment!r}.")
        if not recurrent and not float(self.augment) > 0:  # type: ignore[arg-type]
            raise InvalidParameterError(
                "StoriConfig.augment must be > 0 for the residual variant (the share of "
                f"observed steps it learns from), found {self.augment!r}.")
        for k in ("lr",) + (("weight_decay", "consistency") if recurrent else ("l2", "support")):
            v = getattr(self, k)
            lo_ok = v > 0 if k == "lr" else v >= 0
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    lo_ok and math.isfinite(v)):
                raise InvalidParameterError(
                    f"StoriConfig.{k} must be a finite number {'>' if k == 'lr' else '>='} 0, "
                    f"found {v!r}.")
        if self.time_budget is not None and not (
                isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise InvalidParameterError(
                f"StoriConfig.time_budget must be None or a number of seconds > 0, found "
                f"{self.time_budget!r}.")

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.StoriConfig", astuple(self))

    @property
    def recurrent(self) -> bool:
        """True for the recurrent variants (``"fixed"``, ``"faithful"``: torch)."""
        return self.variant in RECURRENT

    @property
    def arch(self) -> dict[str, Any]:
        """Keyword arguments of :func:`xfusion.models.stori.build_stori` (without ``n_sar``)."""
        if not self.recurrent:
            raise InvalidParameterError(
                "StoriConfig.arch describes the recurrent net; the residual variant has none.")
        return {"hidden": int(self.hidden), "decay": self.decay,  # type: ignore[arg-type]
                "sar_first": bool(self.sar_first)}


_MODEL_CACHE: dict[tuple[str, str], Any] = {}


_MODEL_LOCK = threading.Lock()


class StoriWeights:
    """Trained STORI weights with their preprocessing, in memory or in a checkpoint file.

    Returned by :func:`fit_stori`; pass it (or the path it was saved to) as
    ``gapfill(..., weights=...)`` to fill other scenes or tiles without retraining.

    Parameters
    ----------
    meta : dict
        Checkpoint metadata (``arch``, ``arch_params``, ``stori`` preprocessing, ``training``).
    state : dict of str to numpy.ndarray, optional
        The net's parameters (in memory).
    path : str, optional
        A ``.safetensors`` checkpoint holding them instead.
    """

    def __init__(self, meta: Mapping[str, Any], state: Mapping[str, np.ndarray] | None = None,
                 path: str | None = None) -> None:
        self.meta = dict(meta)
        self.state = None if state is None else {k: np.asarray(v) for k, v in state.items()}
        self.path = path
        self._token: str | None = None

    # -- identity --------------------------------------------------------------------------
    @property
    def token(self) -> str:
        """Stable identity: the file's SHA-256, or a hash of the metadata and parameters."""
        if self._token is None:
            if self.path is not None:
                from xfusion.models.checkpoint import file_sha256

                self._token = file_sha256(self.path)
            else:
                h = hashlib.sha256(json.dumps(self.meta, sort_keys=True, default=str).encode())
                for k in sorted(self.state or {}):
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(self.state[k]).tobytes())  # type: ignore[index]
                self._token = h.hexdigest()
        return self._token

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.StoriWeights", self.token)

    def __repr__(self) -> str:
        st = self.meta.get("stori", {})
        tr = self.meta.get("training", {})
        where = f"path={self.path!r}" if self.path else "in memory"
        return (f"StoriWeights(optical={st.get('optical')!r}, sar={st.get('sar')!r}, "
                f"variant={st.get('variant')!r}, best_val_mae={tr.get('best_val_mae')!r}, "
                f"{where})")

    # -- convenience -----------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, float]]:
        """Per-epoch training records (``train_loss``, ``val_mae`` in optical units)."""
        return list(self.meta.get("training", {}).get("history", []))

    @property
    def n_sar(self) -> int:
        """Number of SAR features the model expects."""
        return int(self.meta["arch_params"]["n_sar"])

    @property
    def variant(self) -> str:
        """The STORI variant the weights were trained as."""
        return str(self.meta.get("stori", {}).get("variant", "fixed"))

    @property
    def recurrent(self) -> bool:
        """True for a recurrent net (torch), False for the residual variant's trees."""
        return self.meta.get("arch") != RESIDUAL_ARCH

    def trees(self) -> dict[str, np.ndarray]:
        """The residual variant's trees (arrays of :mod:`xfusion.training.boosting`)."""
        if self.recurrent:
            raise InvalidParameterError(
                f"These STORI weights hold a recurrent net (variant {self.variant!r}), not "
                "trees; use .model(device).")
        if self.state is not None:
            return dict(self.state)
        key = (self.token, "trees")
        with _MODEL_LOCK:
            t = _MODEL_CACHE.get(key)
            if t is None:
                from xfusion.models.checkpoint import load_checkpoint

                ck = load_checkpoint(self.path, expected_sha256=self.token)  # type: ignore[arg-type]
                t = {k: v.numpy().copy() for k, v in ck.state_dict("trees").items()}
                _MODEL_CACHE[key] = t
        return dict(t)

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write a safetensors checkpoint (JSON metadata in the header); return its SHA-256."""
        import torch

        from xfusion.models.checkpoint import save_checkpoint

        if self.state is None:
            raise InvalidParameterError(
                f"These weights live in {self.path!r} already; copy that file instead.")
        net = "stori" if self.recurrent else "trees"
        tensors = {net: {k: torch.from_numpy(np.ascontiguousarray(v))
                         for k, v in self.state.items()}}
        return save_checkpoint(path, tensors, self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StoriWeights:
        """Read a STORI checkpoint's metadata (the tensors are loaded, verified, by the workers).

        Raises
        ------
        WeightsNotFoundError, CheckpointError
            Missing, corrupt or foreign file.
        WeightsMismatchError
            A checkpoint of another architecture.
        """
        from xfusion.models.checkpoint import read_metadata

        p = os.fspath(path)
        meta = read_metadata(p)
        if meta.get("arch") not in (STORI_ARCH, RESIDUAL_ARCH) or "stori" not in meta:
            raise WeightsMismatchError(
                f"The checkpoint {p!r} holds architecture {meta.get('arch')!r}, not STORI "
                f"({STORI_ARCH!r}). Pass a file saved by StoriWeights.save() or fit_stori(..., out=...)."
            )
        return cls(meta, path=str(os.path.abspath(p)))

    # -- model -----------------------------------------------------------------------------
    def model(self, device: torch.device) -> torch.nn.Module:
        """The net on ``device``, built once per process (a file goes through the engine's
        :class:`~xfusion.engine.ModelSpec` cache, verified, never unpickled)."""
        if not self.recurrent:
            raise InvalidParameterError(
                "These STORI weights hold the residual variant's trees, not a net; use "
                ".trees().")
        if self.path is not None:
            from xfusion.engine.model import ModelSpec, get_model

            spec = ModelSpec(name="stori", builder="xfusion.models.checkpoint:build_from_checkpoint",
                             kwargs={"path": self.path, "net": "stori", "sha256": self.token},
                             out_channels=2)
            return get_model(spec, device)
        key = (self.token, str(device))
        with _MODEL_LOCK:
            net = _MODEL_CACHE.get(key)
            if net is None:
                import torch

                from xfusion.models.stori import build_stori

                net = build_stori(1, **self.meta["arch_params"])
                net.load_state_dict({k: torch.from_numpy(np.array(v))
                                     for k, v in (self.state or {}).items()})
                net = net.to(device).eval()
                _MODEL_CACHE[key] = net
        return net


def as_weights(weights: Any) -> StoriWeights:
    if isinstance(weights, StoriWeights):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        from xfusion.models.registry import resolve_weights

        path, _ = resolve_weights(os.fspath(weights))
        return StoriWeights.load(path)
    raise InvalidParameterError(
        f"weights= must be None (train on the scene), a path to a STORI .safetensors "
        f"checkpoint or a StoriWeights object, found {type(weights).__name__}."
    )


def _val_pixels(iy: np.ndarray, ix: np.ndarray, shape: tuple[int, int],
                fraction: float) -> np.ndarray | None:
    """Validation flags of sample pixels: a strip of the scene (xfusion.training.spatial_split)."""
    if fraction <= 0:
        return None
    from xfusion.training.sampling import spatial_split

    split = spatial_split(shape, fraction=fraction, size=1)
    if split is None:
        return None
    _, val_w = split
    rows, cols = val_w[0]
    return (iy >= rows.start) & (iy < rows.stop) & (ix >= cols.start) & (ix < cols.stop)


def _sample_stride(shape: tuple[int, int], max_pixels: int) -> int:
    """Smallest stride whose regular subsample has at most ``max_pixels`` pixels."""
    stride = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / max_pixels)))
    while math.ceil(shape[0] / stride) * math.ceil(shape[1] / stride) > max_pixels:
        stride += 1
    return stride


def day_of_year(times: np.ndarray) -> np.ndarray:
    """Day of year (0-based, float) of each time."""
    t = np.asarray(times, dtype="datetime64[ns]")
    return (t - t.astype("datetime64[Y]")) / np.timedelta64(1, "D")


def _fit_task(opt: np.ndarray, sar: np.ndarray, *, stride: int, shape: tuple[int, int],
              times: np.ndarray, config: StoriConfig, names: tuple[str, tuple[str, ...]],
              device: str, progress: bool | None = None,
              callback: Callable[[dict[str, float]], None] | None = None) -> StoriWeights:
    """Train STORI on a subsample: ``opt`` (T, ny', nx'), ``sar`` (F, T, ny', nx') (for the
    residual variant: SAR already averaged over ``config.sar_spatial``)."""
    opt = np.asarray(opt, dtype=np.float64)
    sar = np.asarray(sar, dtype=np.float64)
    nt, sy, sx = opt.shape
    nf = sar.shape[0]
    iy, ix = np.meshgrid(np.arange(sy) * stride, np.arange(sx) * stride, indexing="ij")
    x = opt.reshape(nt, -1)
    s = sar.reshape(nf, nt, -1)
    nobs = (~np.isnan(x)).sum(axis=0)
    use = nobs >= config.min_observed
    if use.sum() < 10:
        raise NotEnoughDataError(
            f"STORI needs pixels with at least {config.min_observed} observations of "
            f"{names[0]!r} to train on; the training sample ({x.shape[1]} pixels, every "
            f"{stride}th pixel of the {shape[0]}x{shape[1]} scene) has {int(use.sum())}. Use a "
            "larger or less cloudy scene, lower StoriConfig(min_observed=...), train elsewhere "
            "with fit_stori() and pass weights=, or use method='linear'."
        )
    x, s = x[:, use], s[:, :, use]
    iy, ix = iy.ravel()[use], ix.ravel()[use]
    pos, step = series_positions(times)
    val = _val_pixels(iy, ix, shape, float(config.val_fraction))  # type: ignore[arg-type]
    if val is not None and (val.all() or not val.any()):
        val = None
    meta_st: dict[str, Any] = {
        "optical": names[0], "sar": list(names[1]), "variant": config.variant,
        "step_days": step,
    }
    fit = _fit_recurrent if config.recurrent else _fit_residual
    meta, state = fit(x, s, pos, times, val, config=config, meta_st=meta_st, device=device,
                      progress=progress, callback=callback)
    meta["training"].update(stride=stride, scene_shape=list(shape), n_steps=nt)
    meta.update(nbands=1, method="gapfill", config=asdict(config), bands=[names[0]], halo=0)
    return StoriWeights(meta, state=state)


def _fit_residual(x: np.ndarray, s: np.ndarray, pos: np.ndarray, times: np.ndarray,
                  val: np.ndarray | None, *, config: StoriConfig, meta_st: dict[str, Any],
                  device: str, progress: bool | None,
                  callback: Callable[[dict[str, float]], None] | None
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from xfusion.training.stori_residual import fit_residual, sar_context

    step = float(meta_st["step_days"])
    sp, mean, std = sar_context(s, pos)
    max_run = config.augment_max_run or max(1, round(60.0 / step))
    trees, info = fit_residual(
        x, sp, pos, day_of_year(times), step_days=step, val=val,
        rounds=int(config.rounds), learning_rate=float(config.lr),  # type: ignore[arg-type]
        max_leaf_nodes=int(config.leaves), min_samples_leaf=int(config.min_leaf),  # type: ignore[arg-type]
        l2=float(config.l2), fraction=float(config.augment),  # type: ignore[arg-type]
        max_run=int(max_run), samples=int(config.train_samples),  # type: ignore[arg-type]
        patience=config.patience, support=float(config.support),  # type: ignore[arg-type]
        seed=config.seed,
        time_budget=config.time_budget, progress=progress, callback=callback)
    meta_st.update(sar_mean=mean, sar_std=std, sar_spatial=int(config.sar_spatial),  # type: ignore[arg-type]
                   base=info.pop("base"), alphas=info.pop("alphas"),
                   class_mae=info.pop("class_mae"), support=info.pop("support"),
                   max_run=int(max_run))
    meta = {"arch": RESIDUAL_ARCH, "arch_params": {"n_sar": int(s.shape[0])}, "stori": meta_st,
            "training": info}
    return meta, trees


def _fit_recurrent(x: np.ndarray, s: np.ndarray, pos: np.ndarray, times: np.ndarray,
                   val: np.ndarray | None, *, config: StoriConfig, meta_st: dict[str, Any],
                   device: str, progress: bool | None,
                   callback: Callable[[dict[str, float]], None] | None
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from xfusion.engine.device import resolve_device
    from xfusion.models.stori import train_stori

    nt = x.shape[0]
    nf = s.shape[0]
    meta_st.update(sar_scaling=config.sar_scaling, optical_scaling=config.optical_scaling,
                   sar_window=int(config.sar_window),  # type: ignore[arg-type]
                   sar_order=int(config.sar_order))  # type: ignore[arg-type]
    if config.optical_scaling == "scene":
        vals = x[~np.isnan(x)]
        meta_st["opt_mean"] = float(vals.mean())
        meta_st["opt_std"] = float(vals.std()) if vals.std() > 0 else 1.0
    else:
        meta_st["opt_mean"], meta_st["opt_std"] = 0.0, 1.0
    sflat = np.moveaxis(s, 0, -1).reshape(-1, nf)
    means, stds = [], []
    for f in range(nf):
        v = sflat[:, f][np.isfinite(sflat[:, f])]
        means.append(float(v.mean()) if v.size else 0.0)
        sd = float(v.std()) if v.size else 1.0
        stds.append(sd if sd > 0 else 1.0)
    meta_st["sar_mean"], meta_st["sar_std"] = means, stds
    xin = prep_optical(x, meta_st).T  # (P, T)
    m = (~np.isnan(x)).T.astype(np.float32)
    sin = prep_sar(s, pos, meta_st)
    arch = {"n_sar": nf, **config.arch}
    max_run = config.augment_max_run or max(1, nt // 6)
    scale = meta_st["opt_std"]
    bar = TrainingProgress(int(config.epochs), desc="stori", unit="epoch",  # type: ignore[arg-type]
                           progress=progress)

    def report(rec: dict[str, float]) -> None:
        vm = rec["val_mae"] * scale if math.isfinite(rec["val_mae"]) else math.nan
        bar.update(1, loss=rec["train_loss"], val=vm)
        if callback is not None:
            callback({**rec, "val_mae": vm})

    try:
        net, info = train_stori(
            xin, m, sin, pos, val=val, arch=arch, epochs=int(config.epochs),  # type: ignore[arg-type]
            batch_size=int(config.batch_size), lr=float(config.lr),  # type: ignore[arg-type]
            weight_decay=float(config.weight_decay),  # type: ignore[arg-type]
            consistency=float(config.consistency), lr_step=config.lr_step,  # type: ignore[arg-type]
            lr_gamma=0.5, patience=config.patience, augment=float(config.augment),  # type: ignore[arg-type]
            augment_max_run=max_run, seed=config.seed, device=resolve_device(device),
            time_budget=config.time_budget, threads=config.threads, callback=report,
            stop=interpreter_exiting)
    except KeyboardInterrupt:
        bar.interrupted(None)
        raise TrainingInterrupted(
            "STORI training was interrupted before its first epoch completed; there is no "
            "model to keep. Run again (fewer StoriConfig(train_pixels=...) or a smaller "
            "hidden= train faster), or use method='linear'.") from None
    if info["stopped"] == "interrupted":
        kept = info["best_epoch"]
        bar.interrupted(f"epoch {kept}" + (
            f", validation MAE {info['best_val_mae'] * scale:.4g}"
            if info["best_val_mae"] is not None else ""))
    else:
        bar.close(info["stopped"], {"best_epoch": info["best_epoch"]})
    for rec in info["history"]:
        rec["val_mae"] = rec["val_mae"] * scale if math.isfinite(rec["val_mae"]) else None
    if info["best_val_mae"] is not None:
        info["best_val_mae"] *= scale
    meta = {"arch": STORI_ARCH, "arch_params": arch, "stori": meta_st, "training": info}
    state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    return meta, state


def resolve_config(config: StoriConfig | None, overrides: Mapping[str, Any]) -> StoriConfig:
    if config is not None and not isinstance(config, StoriConfig):
        raise InvalidParameterError(
            f"config= must be a StoriConfig, found {type(config).__name__}. Build one with "
            "xfusion.methods.gapfill.StoriConfig(epochs=..., ...)."
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    if config is None:
        return StoriConfig(**given)
    if "variant" in given and given["variant"] != config.variant:
        # fields still at the old variant's defaults take the new variant's defaults
        old = StoriConfig(variant=config.variant)
        reset = {k: AUTO if k in _AUTO_FIELDS else None
                 for k in (*_RNN_ONLY, *_RES_ONLY, *_AUTO_FIELDS, *_SHARED)
                 if getattr(config, k) == getattr(old, k)}
        return replace(config, **{**reset, **given})
    return replace(config, **given)


def fit_stori(
    ds: xr.Dataset,
    /,
    *,
    optical: str = "ndvi",
    sar: str | Sequence[str] | xr.Dataset | xr.DataArray = ("vh_db", "rvi"),
    config: StoriConfig | None = None,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> StoriWeights:
    """Train STORI on a scene's own observed pixels (eager: reads the training subsample).

    Parameters
    ----------
    ds : xarray.Dataset
        Composites with ``time`` and spatial dims (see :func:`xfusion.gapfill_inputs`).
    optical : str, default "ndvi"
        The optical variable (NaN = missing).
    sar : str, sequence of str, xarray.Dataset or xarray.DataArray
        SAR features (names on ``ds``, or objects on the same grid and time axis).
    config : StoriConfig, optional
        Model, preprocessing and training settings (default ``StoriConfig()``, the residual
        variant; ``StoriConfig(variant="faithful")`` is the paper's recurrent net).
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        Training device of the recurrent variants (the residual variant trains on one CPU
        core).
    out : path, optional
        Also save the weights there (safetensors + JSON metadata; needs the ``torch`` extra).
    progress : bool or None, default None
        Report epochs/rounds, loss, validation MAE and ETA: a ``tqdm.auto`` bar in a terminal
        or Jupyter, progress lines elsewhere (see :func:`xfusion.set_progress`); ``False``:
        silent; ``None``: the session's switch (``XFUSION_PROGRESS=0`` silences it).
    callback : callable, optional
        Called with the record of every epoch (recurrent) or validation stage (residual):
        ``epoch``/``round``, the training loss, ``val_mae`` (optical units), ``seconds``.

    Returns
    -------
    StoriWeights
        The trained model with its preprocessing statistics and training history.

    Raises
    ------
    NotEnoughDataError
        Fewer than 10 sample pixels with ``config.min_observed`` observations.
    TrainingInterrupted
        Ctrl-C (KeyboardInterrupt) before the first epoch or validation stage completed.
        Later, training stops, keeps the best model so far and logs a warning.
    VariableNotFoundError, MissingDimensionError, GridMismatchError, TimeAxisError,
    InvalidParameterError

    See Also
    --------
    gapfill : fill the gaps (pass the result as ``weights=``).
    """
    config = resolve_config(config, {})
    if config.recurrent or out is not None:
        from xfusion._compat import lazy_import

        lazy_import("torch", purpose=f"fit_stori(variant={config.variant!r})"
                    if config.recurrent else "saving STORI weights (out=)")
    check_device(device)
    dims, opt, sars = series_inputs(ds, optical, sar, need_sar=True, rechunk=True)
    w = train_graph(opt[0], prepared_sar(sars, config), [str(v.name) for v in sars], dims,
                    config, device, progress=progress, callback=callback, lazy=False)
    if out is not None:
        w.save(out)
        w = StoriWeights.load(out)
        w.state = None
    return w


def prepared_sar(sars: list[xr.DataArray], config: StoriConfig | int) -> Any:
    """SAR stacked (F, T, y, x); for the residual variant averaged over ``sar_spatial`` pixels
    (lazily on dask input: a map over the spatial chunks with a halo, chunk invariant)."""
    arr = stack_sar(sars)
    window = config if isinstance(config, int) else (
        1 if config.recurrent else int(config.sar_spatial))  # type: ignore[arg-type]
    if window <= 1:
        return arr
    from xfusion.engine.run import map_blocks_halo
    from xfusion.training.stori_residual import box_mean_block

    return map_blocks_halo(box_mean_block, arr, halo=window // 2, dtype=np.float32,
                           method="gapfill-sar", token_parts=("box", window),
                           kwargs={"window": window, "dtype": np.float32})


def train_graph(opt: xr.DataArray, sar: Any, sar_names: Sequence[str], dims: tuple[str, str],
                config: StoriConfig, device: str, *, progress: bool | None = None,
                callback: Callable[[dict[str, float]], None] | None = None,
                lazy: bool = True) -> Any:
    """STORI weights: a dask Delayed (one training task) for dask input, else trained now.

    ``sar`` is :func:`prepared_sar`'s array. ``progress`` and ``callback`` do not change the
    graph's keys (they do not change the weights).
    """
    shape = (opt.sizes[dims[0]], opt.sizes[dims[1]])
    stride = _sample_stride(shape, config.train_pixels)
    o = opt.data[:, ::stride, ::stride]
    s = sar[:, :, ::stride, ::stride]
    times = np.asarray(opt.indexes[TIME].values, dtype="datetime64[ns]")
    names = (str(opt.name), tuple(map(str, sar_names)))
    kw = {"stride": stride, "shape": shape, "times": times, "config": config, "names": names,
          "device": device}
    if lazy and (dask.is_dask_collection(o) or dask.is_dask_collection(s)):
        from dask.base import tokenize

        tok = tokenize(o, s, kw)
        return dask.delayed(_fit_task, pure=True)(
            o, s, **kw, progress=progress, callback=callback,
            dask_key_name=f"xfusion.gapfill-train-{tok}")
    if dask.is_dask_collection(o) or dask.is_dask_collection(s):
        o, s = dask.compute(o, s)
    return _fit_task(np.asarray(o), np.asarray(s), progress=progress, callback=callback, **kw)
