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
from collections.abc import Mapping, Sequence
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


Variant: TypeAlias = Literal["fixed", "faithful"]
"""``"fixed"`` (default): the public code's bugs fixed; ``"faithful"``: as the public code."""


@dataclass(frozen=True, kw_only=True)
class StoriConfig:
    """Model, preprocessing and training settings of STORI.

    ``variant`` sets the defaults of the fields left to ``None``: ``"fixed"`` corrects the
    public code (SAR step ``t`` used for step ``t``; the decay acts on the optical state;
    scene-level SAR scaling; spatially held-out validation with early stopping; a stepped
    learning rate; input-mask augmentation), ``"faithful"`` reproduces it (see
    ``../shared/specs/stori.md``).
    """

    variant: Variant = "fixed"
    """``"fixed"`` or ``"faithful"``."""
    hidden: int = 96
    """Hidden size of the LSTM cells."""
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
    sar_order: int = 2
    """Savitzky-Golay polynomial order."""
    epochs: int | None = None
    """Maximum epochs (fixed: 100 with early stopping; faithful: 250, the last one kept)."""
    batch_size: int = 256
    """Pixels per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 8e-4
    """Adam (L2) weight decay."""
    consistency: float = 0.1
    """Weight of the forward/backward consistency term."""
    lr_step: int | None = None
    """StepLR period in epochs, halving the rate (fixed: 50; faithful: None, constant)."""
    patience: int | None = None
    """Early-stopping patience in epochs on the validation MAE (fixed: 10; faithful: None)."""
    val_fraction: float | None = None
    """Share of the scene (a strip along its longer axis) held out for validation (fixed:
    0.2; faithful: 0, no validation)."""
    augment: float | None = None
    """Fraction of observed steps hidden from the input of each training batch, in runs
    (fixed: 0.2; faithful: 0)."""
    augment_max_run: int | None = None
    """Longest hidden run in steps (default: a sixth of the series, at least 1)."""
    train_pixels: int = 8192
    """At most this many pixels are used for training (a regular subsample of the scene;
    training costs about 40 MFLOP per pixel and epoch at H = 96, so raise it on a GPU)."""
    min_observed: int = 3
    """Pixels with fewer optical observations are not used for training."""
    time_budget: float | None = None
    """Stop training after the epoch during which this many seconds have passed."""
    seed: int = 0
    """Seed of initialisation, batch order, augmentation and validation masks."""
    threads: int | None = 1
    """CPU threads while training (``None``: torch's setting); small cells run fastest on one."""

    def __post_init__(self) -> None:
        require_choice(self.variant, ("fixed", "faithful"), name="variant", method="StoriConfig")
        fixed = self.variant == "fixed"
        defaults = {
            "sar_first": fixed, "decay": "optical" if fixed else "sar",
            "sar_scaling": "scene" if fixed else "sample",
            "optical_scaling": "scene" if fixed else "none", "sar_window": 7 if fixed else 19,
            "epochs": 100 if fixed else 250, "lr_step": 50 if fixed else None,
            "patience": 10 if fixed else None, "val_fraction": 0.2 if fixed else 0.0,
            "augment": 0.2 if fixed else 0.0,
        }  # fmt: skip
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        for k, choices in (("decay", ("optical", "sar")), ("sar_scaling", ("scene", "sample")),
                           ("optical_scaling", ("scene", "none"))):
            require_choice(getattr(self, k), choices, name=k, method="StoriConfig")
        ints = {"hidden": 1, "sar_window": 1, "sar_order": 0, "epochs": 0, "batch_size": 1,
                "train_pixels": 1, "min_observed": 1}
        for k, lo in ints.items():
            v = getattr(self, k)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise InvalidParameterError(
                    f"StoriConfig.{k} must be an integer >= {lo}, found {v!r}.")
        for k in ("lr_step", "patience", "augment_max_run", "threads"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise InvalidParameterError(
                    f"StoriConfig.{k} must be None or an integer >= 1, found {v!r}.")
        if not (0.0 <= float(self.val_fraction) < 0.5):  # type: ignore[arg-type]
            raise InvalidParameterError(
                f"StoriConfig.val_fraction must be in [0, 0.5), found {self.val_fraction!r}.")
        if not (0.0 <= float(self.augment) < 1.0):  # type: ignore[arg-type]
            raise InvalidParameterError(
                f"StoriConfig.augment must be in [0, 1), found {self.augment!r}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidParameterError(f"StoriConfig.lr must be > 0, found {self.lr!r}.")

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.StoriConfig", astuple(self))

    @property
    def arch(self) -> dict[str, Any]:
        """Keyword arguments of :func:`xfusion.models.stori.build_stori` (without ``n_sar``)."""
        return {"hidden": int(self.hidden), "decay": self.decay,
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
        """Number of SAR features the net expects."""
        return int(self.meta["arch_params"]["n_sar"])

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write a safetensors checkpoint (JSON metadata in the header); return its SHA-256."""
        import torch

        from xfusion.models.checkpoint import save_checkpoint

        if self.state is None:
            raise InvalidParameterError(
                f"These weights live in {self.path!r} already; copy that file instead.")
        tensors = {"stori": {k: torch.from_numpy(np.ascontiguousarray(v))
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
        if meta.get("arch") != STORI_ARCH or "stori" not in meta:
            raise WeightsMismatchError(
                f"The checkpoint {p!r} holds architecture {meta.get('arch')!r}, not STORI "
                f"({STORI_ARCH!r}). Pass a file saved by StoriWeights.save() or fit_stori(..., out=...)."
            )
        return cls(meta, path=str(os.path.abspath(p)))

    # -- model -----------------------------------------------------------------------------
    def model(self, device: torch.device) -> torch.nn.Module:
        """The net on ``device``, built once per process (a file goes through the engine's
        :class:`~xfusion.engine.ModelSpec` cache, verified, never unpickled)."""
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
    return max(1, math.ceil(math.sqrt(shape[0] * shape[1] / max_pixels)))


def _fit_task(opt: np.ndarray, sar: np.ndarray, *, stride: int, shape: tuple[int, int],
              times: np.ndarray, config: StoriConfig, names: tuple[str, tuple[str, ...]],
              device: str, progress: bool = False) -> StoriWeights:
    """Train STORI on a subsample: ``opt`` (T, ny', nx'), ``sar`` (F, T, ny', nx')."""
    from xfusion.engine.device import resolve_device
    from xfusion.models.stori import train_stori

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
    meta_st: dict[str, Any] = {
        "optical": names[0], "sar": list(names[1]), "variant": config.variant,
        "sar_scaling": config.sar_scaling, "optical_scaling": config.optical_scaling,
        "sar_window": int(config.sar_window), "sar_order": int(config.sar_order),  # type: ignore[arg-type]
        "step_days": step,
    }
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
    val = _val_pixels(iy, ix, shape, float(config.val_fraction))  # type: ignore[arg-type]
    if val is not None and (val.all() or not val.any()):
        val = None
    arch = {"n_sar": nf, **config.arch}
    max_run = config.augment_max_run or max(1, nt // 6)
    callback = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, desc="stori", unit="epoch", leave=False)

        def callback(rec: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['train_loss']:.4g}", val=f"{rec['val_mae']:.4g}")
    try:
        net, info = train_stori(
            xin, m, sin, pos, val=val, arch=arch, epochs=int(config.epochs),  # type: ignore[arg-type]
            batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
            consistency=config.consistency, lr_step=config.lr_step, lr_gamma=0.5,
            patience=config.patience, augment=float(config.augment),  # type: ignore[arg-type]
            augment_max_run=max_run, seed=config.seed, device=resolve_device(device),
            time_budget=config.time_budget, threads=config.threads, callback=callback)
    finally:
        if bar is not None:
            bar.close()
    scale = meta_st["opt_std"]
    for rec in info["history"]:
        rec["val_mae"] = rec["val_mae"] * scale if math.isfinite(rec["val_mae"]) else None
    if info["best_val_mae"] is not None:
        info["best_val_mae"] *= scale
    info.update(stride=stride, scene_shape=list(shape), n_steps=nt)
    meta = {
        "arch": STORI_ARCH, "nbands": 1, "arch_params": arch, "method": "gapfill",
        "stori": meta_st, "config": asdict(config), "training": info,
        "bands": [names[0]], "halo": 0,
    }
    state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
    return StoriWeights(meta, state=state)


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
        reset = {k: None for k in _VARIANT_FIELDS if getattr(config, k) == getattr(old, k)}
        return replace(config, **{**reset, **given})
    return replace(config, **given)


_VARIANT_FIELDS = ("sar_first", "decay", "sar_scaling", "optical_scaling", "sar_window",
                   "epochs", "lr_step", "patience", "val_fraction", "augment")


def fit_stori(
    ds: xr.Dataset,
    /,
    *,
    optical: str = "ndvi",
    sar: str | Sequence[str] | xr.Dataset | xr.DataArray = ("vh_db", "rvi"),
    config: StoriConfig | None = None,
    device: str = "auto",
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
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
        Model, preprocessing and training settings (default ``StoriConfig()``, the fixed
        variant).
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        Training device.
    out : path, optional
        Also save the weights there (safetensors + JSON metadata).
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    StoriWeights
        The trained net with its preprocessing statistics and training history.

    Raises
    ------
    NotEnoughDataError
        Fewer than 10 sample pixels with ``config.min_observed`` observations.
    VariableNotFoundError, MissingDimensionError, GridMismatchError, TimeAxisError,
    InvalidParameterError

    See Also
    --------
    gapfill : fill the gaps (pass the result as ``weights=``).
    """
    from xfusion._compat import lazy_import

    lazy_import("torch", purpose="fit_stori()")
    config = resolve_config(config, {})
    check_device(device)
    dims, opt, sars = series_inputs(ds, optical, sar, need_sar=True, rechunk=True)
    w = train_graph(opt[0], sars, dims, config, device, progress=progress, lazy=False)
    if out is not None:
        w.save(out)
        w = StoriWeights.load(out)
        w.state = None
    return w


def train_graph(opt: xr.DataArray, sars: list[xr.DataArray], dims: tuple[str, str],
                 config: StoriConfig, device: str, *, progress: bool = False,
                 lazy: bool = True) -> Any:
    """STORI weights: a dask Delayed (one training task) for dask input, else trained now."""
    shape = (opt.sizes[dims[0]], opt.sizes[dims[1]])
    stride = _sample_stride(shape, config.train_pixels)
    o = opt.data[:, ::stride, ::stride]
    s = stack_sar(sars)[:, :, ::stride, ::stride]
    times = np.asarray(opt.indexes[TIME].values, dtype="datetime64[ns]")
    names = (str(opt.name), tuple(str(v.name) for v in sars))
    kw = {"stride": stride, "shape": shape, "times": times, "config": config, "names": names,
          "device": device}
    if lazy and (dask.is_dask_collection(o) or dask.is_dask_collection(s)):
        from dask.base import tokenize

        tok = tokenize(o, s, kw)
        return dask.delayed(_fit_task, pure=True)(o, s, **kw,
                                                  dask_key_name=f"xfusion.gapfill-train-{tok}")
    if dask.is_dask_collection(o) or dask.is_dask_collection(s):
        o, s = dask.compute(o, s)
    return _fit_task(np.asarray(o), np.asarray(s), progress=progress, **kw)
