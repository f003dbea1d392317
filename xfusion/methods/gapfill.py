"""Gap filling of optical time series: STORI (SAR-guided, BRITS-style) and three baselines.

``gapfill(ds, optical="ndvi", sar=["vh_db", "rvi"], method=...)`` fills the missing (NaN) steps
of every pixel's series on a regular composite time axis (see
:mod:`xfusion.methods.composite`). Observed values are copied bit for bit; the filled steps
come from

``"stori"``
    a bidirectional recurrent imputer guided by SAR (:mod:`xfusion.models.stori`), trained on
    the scene's own observed pixels (or given ``weights=``);
``"linear"``
    linear interpolation in time between the neighbouring observations;
``"savgol"``
    a Savitzky-Golay smoothing of the linearly interpolated series;
``"harmonic"``
    a per-pixel least-squares harmonic regression (annual period).

The computation is per pixel, so it is mapped over the spatial chunks with the whole time axis
in one chunk (:func:`xfusion.engine.map_blocks_halo`, halo 0); graph layers are named
``xfusion.gapfill-…``. With ``method="stori"`` and no ``weights``, training is ONE task of the
graph (``xfusion.gapfill-train-…``) that reads a regular subsample of the pixels and runs when
the result is computed; numpy input trains and fills immediately.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.config import check_device
from xfusion.cube.roles import as_names, float_data, require_choice
from xfusion.cube.validate import (
    TIME,
    get_geobox,
    require_same_grid,
    require_time,
    require_vars,
    spatial_dims,
)
from xfusion.engine.run import map_blocks_halo
from xfusion.errors import (
    ChunkingError,
    EmptySeriesWarning,
    InvalidParameterError,
    MissingDimensionError,
    NotEnoughDataError,
    TimeAxisError,
    VariableNotFoundError,
    WeightsMismatchError,
)
from xfusion.models.registry import STORI_ARCH

if TYPE_CHECKING:
    import torch

__all__ = [
    "GAPFILL_METHODS",
    "GapfillMethod",
    "StoriConfig",
    "StoriWeights",
    "fit_stori",
    "gapfill",
]

NAME = "gapfill"

GapfillMethod: TypeAlias = Literal["stori", "linear", "savgol", "harmonic"]
"""The gap-filling methods of :func:`gapfill`."""

GAPFILL_METHODS: tuple[str, ...] = ("stori", "linear", "savgol", "harmonic")

Variant: TypeAlias = Literal["fixed", "faithful"]
"""``"fixed"`` (default): the public code's bugs fixed; ``"faithful"``: as the public code."""





# --------------------------------------------------------------------------------------------
# configuration


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


# --------------------------------------------------------------------------------------------
# numpy kernels: neighbours, baselines, preprocessing


def _neighbours(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the last observed step <= t and of the next observed step >= t, along axis 0
    (-1 / T when there is none)."""
    nt = obs.shape[0]
    idx = np.arange(nt).reshape((-1,) + (1,) * (obs.ndim - 1))
    prev = np.maximum.accumulate(np.where(obs, idx, -1), axis=0)
    nxt = np.minimum.accumulate(np.where(obs, idx, nt)[::-1], axis=0)[::-1]
    return prev, nxt


def _linear(x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along axis 0 of ``x`` (T, P) at positions ``pos``; edges take the
    nearest observation. Returns ``(filled, |next - previous|)`` (NaN where one-sided)."""
    nt = x.shape[0]
    obs = ~np.isnan(x)
    prev, nxt = _neighbours(obs)
    pi = np.clip(prev, 0, nt - 1)
    ni = np.clip(nxt, 0, nt - 1)
    xp = np.take_along_axis(x, pi, axis=0)
    xn = np.take_along_axis(x, ni, axis=0)
    tp = pos[pi]
    tn = pos[ni]
    both = (prev >= 0) & (nxt < nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(both & (tn > tp), (pos[:, None] - tp) / (tn - tp), 0.0)
        out = np.where(both, xp + w * (xn - xp), np.where(prev >= 0, xp, xn))
    out = np.where((prev < 0) & (nxt >= nt), np.nan, out)
    unc = np.where(both, np.abs(xn - xp), np.nan)
    return out, unc


def _rms_at_obs(fit: np.ndarray, x: np.ndarray) -> np.ndarray:
    obs = ~np.isnan(x)
    n = obs.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(np.where(obs, (fit - np.nan_to_num(x)) ** 2, 0.0).sum(axis=0) / n)
    return np.broadcast_to(np.where(n > 0, r, np.nan), x.shape)


def _odd_window(window: int, nt: int) -> int:
    w = min(int(window), nt if nt % 2 else nt - 1)
    return w if w % 2 else w - 1


def _savgol(x: np.ndarray, pos: np.ndarray, window: int, order: int,
            mode: str = "interp") -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import savgol_filter

    lin, _ = _linear(x, pos)
    w = _odd_window(window, x.shape[0])
    sm = savgol_filter(lin, w, order, axis=0, mode=mode) if w > order and w >= 3 else lin
    return sm, _rms_at_obs(sm, x)


def _harmonic(x: np.ndarray, pos_days: np.ndarray, harmonics: int, period: float,
              trend: bool) -> tuple[np.ndarray, np.ndarray]:
    nt, npx = x.shape
    obs = ~np.isnan(x)
    nobs = obs.sum(axis=0)
    t = pos_days - pos_days.mean()
    cols = [np.ones(nt)] + ([t / max(period, 1e-9)] if trend else [])
    base = len(cols)
    for k in range(1, harmonics + 1):
        ang = 2 * np.pi * k * t / period
        cols += [np.cos(ang), np.sin(ang)]
    a_full = np.stack(cols, axis=1)  # (T, p)
    x0 = np.where(obs, x, 0.0)
    fit = np.full(x.shape, np.nan)
    done = np.zeros(npx, bool)
    for k in range(harmonics, -1, -1):
        p = base + 2 * k
        sel = ~done & (nobs >= p)
        if not sel.any():
            continue
        a = a_full[:, :p]
        w = obs[:, sel].astype(np.float64)
        g = np.einsum("tp,tq,tn->npq", a, a, w)
        rhs = np.einsum("tp,tn->np", a, x0[:, sel])
        g += 1e-9 * np.eye(p)[None] * np.maximum(np.trace(g, axis1=1, axis2=2), 1.0)[:, None, None]
        coef = np.linalg.solve(g, rhs[..., None])[..., 0]  # (n, p)
        fit[:, sel] = a @ coef.T
        done |= sel
    return fit, _rms_at_obs(fit, x)


def _fill_nan_series(s: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 (T, ...) with nearest values at the edges."""
    shp = s.shape
    out, _ = _linear(s.reshape(shp[0], -1), pos)
    return out.reshape(shp)


def _prep_optical(x: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    return ((x - meta["opt_mean"]) / meta["opt_std"]).astype(np.float32)


def _prep_sar(s: np.ndarray, pos: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """SAR (F, T, P) → model input (P, T, F): gaps interpolated, scaled, smoothed, NaN → 0."""
    from scipy.signal import savgol_filter

    nf, nt, npx = s.shape
    s = _fill_nan_series(np.moveaxis(s, 1, 0).reshape(nt, nf * npx).astype(np.float64), pos)
    s = s.reshape(nt, nf, npx)
    if meta["sar_scaling"] == "scene":
        mean = np.asarray(meta["sar_mean"], np.float64)[None, :, None]
        std = np.asarray(meta["sar_std"], np.float64)[None, :, None]
        s = (s - mean) / std
    else:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(s, axis=0, keepdims=True)
            hi = np.nanmax(s, axis=0, keepdims=True)
        rng = hi - lo
        s = np.where(rng > 0, (s - lo) / np.where(rng > 0, rng, 1.0) * 2 - 1, 0.0)
    s = np.nan_to_num(s, nan=0.0)  # pixels without any SAR value: the scene mean / 0
    w = _odd_window(int(meta["sar_window"]), nt)
    order = int(meta["sar_order"])
    if w > order and w >= 3:
        mode = "wrap" if meta["sar_scaling"] == "sample" else "interp"
        s = savgol_filter(s, w, order, axis=0, mode=mode)
    return np.ascontiguousarray(np.transpose(s, (2, 0, 1))).astype(np.float32)


def _positions(times: np.ndarray) -> tuple[np.ndarray, float]:
    """Step positions (in median steps) and the median step in days."""
    days = (times - times[0]) / np.timedelta64(1, "D")
    step = float(np.median(np.diff(days))) if days.size > 1 else 1.0
    step = step if step > 0 else 1.0
    return (days / step).astype(np.float64), step


# --------------------------------------------------------------------------------------------
# STORI weights


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


def _as_weights(weights: Any) -> StoriWeights:
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


# --------------------------------------------------------------------------------------------
# training


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
    pos, step = _positions(times)
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
    xin = _prep_optical(x, meta_st).T  # (P, T)
    m = (~np.isnan(x)).T.astype(np.float32)
    sin = _prep_sar(s, pos, meta_st)
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


def _resolve_config(config: StoriConfig | None, overrides: Mapping[str, Any]) -> StoriConfig:
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


# --------------------------------------------------------------------------------------------
# inputs


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _fmt_times(t: np.ndarray, limit: int = 6) -> list[str]:
    out = [str(np.datetime64(v, "D")) for v in t]
    return out if len(out) <= limit else [*out[: limit // 2], "...", *out[-limit // 2:]]


def _series_var(obj: xr.Dataset, name: str, dims: tuple[str, str], role: str) -> xr.DataArray:
    var = float_data(obj, name, dims=dims)
    extra = [d for d in var.dims if d not in (TIME, *dims)]
    if TIME not in var.dims:
        raise MissingDimensionError(
            f"The {role} variable {name!r} has no time dimension (dims {tuple(var.dims)!r}); "
            f"gapfill() fills series along time. Give a (time, {dims[0]}, {dims[1]}) variable."
        )
    if extra:
        raise MissingDimensionError(
            f"The {role} variable {name!r} has extra dims {extra!r} besides time and "
            f"{list(dims)!r}. Select or split them first, e.g. `ds[{name!r}].isel({extra[0]}=0)` "
            f"or `ds.to_dataset(dim={extra[0]!r})`."
        )
    return var.transpose(TIME, *dims)


def _sar_vars(ds: xr.Dataset, sar: Any, dims: tuple[str, str]) -> list[xr.DataArray]:
    """Resolve ``sar=`` (names on ds, a Dataset, a DataArray or DataArrays) to variables."""
    if sar is None:
        raise InvalidParameterError(
            "method='stori' needs SAR features: pass sar=['vh_db', 'rvi'] (variables on the "
            "dataset) or a Dataset of them. Make them with xfusion.gapfill_inputs(s2, s1) or "
            "xfusion.s1_features(s1), or use a method without SAR ('linear', 'savgol', "
            "'harmonic')."
        )
    if isinstance(sar, str) or (isinstance(sar, Sequence) and all(isinstance(v, str) for v in sar)):
        names = as_names(sar, role="sar")
        if not names:
            return _sar_vars(ds, None, dims)
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"SAR variable {missing[0]!r} not found on the dataset. Variables on the dataset "
                f"include {sorted(map(str, ds.data_vars))!r}. Derive SAR features from VV/VH "
                "with xfusion.s1_features(s1) or xfusion.gapfill_inputs(s2, s1)."
            )
        return [_series_var(ds, n, dims, "SAR") for n in names]
    if isinstance(sar, xr.DataArray):
        items = [sar]
    elif isinstance(sar, xr.Dataset):
        items = [sar[v] for v in sar.data_vars if TIME in sar[v].dims]
        if not items:
            raise InvalidParameterError(
                f"The SAR dataset has no variable with a time dimension (variables "
                f"{sorted(map(str, sar.data_vars))!r}).")
    elif isinstance(sar, Sequence) and all(isinstance(v, xr.DataArray) for v in sar):
        items = list(sar)
    else:
        raise InvalidParameterError(
            f"sar= must be variable name(s) on the dataset, an xarray Dataset/DataArray or a "
            f"list of DataArrays; found {type(sar).__name__}."
        )
    out = []
    for k, da_ in enumerate(items):
        name = str(da_.name) if da_.name is not None else f"sar_{k}"
        sds = da_.to_dataset(name=name)
        require_same_grid(ds, sds, names=("optical", "sar"))
        require_time(sds, name="SAR input")
        sd = spatial_dims(sds, name="SAR input")
        var = _series_var(sds, name, sd, "SAR")
        out.append(var.rename({sd[0]: dims[0], sd[1]: dims[1]}) if sd != dims else var)
    return out


def _check_times(opt: xr.DataArray, sar: xr.DataArray) -> None:
    to = np.asarray(opt.indexes[TIME].values, dtype="datetime64[ns]")
    ts = np.asarray(sar.indexes[TIME].values, dtype="datetime64[ns]")
    if to.shape == ts.shape and np.array_equal(to, ts):
        return
    only_o = np.setdiff1d(to, ts)
    only_s = np.setdiff1d(ts, to)
    raise TimeAxisError(
        f"The SAR variable {sar.name!r} and the optical variable {opt.name!r} are on different "
        f"time axes: optical has {to.size} steps ({_fmt_times(to[[0, -1]] if to.size else to)}), "
        f"SAR has {ts.size} ({_fmt_times(ts[[0, -1]] if ts.size else ts)}); dates only in the "
        f"optical series: {_fmt_times(only_o)!r}, only in the SAR series: {_fmt_times(only_s)!r}. "
        "Composite both onto the same periods, e.g. `xfusion.gapfill_inputs(s2, s1, days=8)`, or "
        "`xfusion.composite(sar, days=8, start=..., end=...)` with the optical start and end."
    )


def _time_in_one_chunk(var: xr.DataArray, *, rechunk: bool, role: str) -> xr.DataArray:
    data = var.data
    if not _is_dask(data):
        return var
    tchunks = data.chunks[0]
    if len(tchunks) == 1:
        return var
    if rechunk:
        return var.chunk({TIME: -1})
    dims = list(var.dims[1:])
    raise ChunkingError(
        f"gapfill() needs the whole time axis of every pixel in one chunk, but the {role} "
        f"variable {var.name!r} is split into {len(tchunks)} chunks along 'time' "
        f"({tchunks[:4]}{'...' if len(tchunks) > 4 else ''}). Rechunk first: "
        f"`ds = ds.chunk({{'time': -1}})` (smaller spatial chunks keep memory down, e.g. "
        f"`ds.chunk({{'time': -1, {dims[0]!r}: 256, {dims[1]!r}: 256}})`), or pass rechunk=True."
    )


# --------------------------------------------------------------------------------------------
# the block function


def _gapfill_block(opt: np.ndarray, *rest: Any, halo_sides: tuple[int, int, int, int],
                   method: str, pos: np.ndarray, pos_days: np.ndarray, params: Mapping[str, Any],
                   name: str, device: str) -> np.ndarray:
    """Fill one block: ``opt`` (1, T, y, x) [, ``sar`` (F, T, y, x), weights] → (2, T, y, x)."""
    x = opt[0]
    nt = x.shape[0]
    out_dtype = x.dtype
    flat = x.reshape(nt, -1).astype(np.float64)
    obs = ~np.isnan(flat)
    has = obs.any(axis=0)
    n_empty = int((~has).sum())
    if n_empty and flat.shape[1]:
        warnings.warn(
            f"gapfill(): {n_empty} of {flat.shape[1]} pixel series of {name!r} in this block "
            "have no observation at all; they are left NaN (filled=False). Mask them out or "
            "use a longer time range.",
            EmptySeriesWarning,
            stacklevel=2,
        )
    fill = np.full(flat.shape, np.nan)
    unc = np.full(flat.shape, np.nan)
    sel = np.flatnonzero(has)
    if sel.size and method == "linear":
        fill[:, sel], unc[:, sel] = _linear(flat[:, sel], pos)
    elif sel.size and method == "savgol":
        fill[:, sel], unc[:, sel] = _savgol(flat[:, sel], pos, params["window"], params["order"])
    elif sel.size and method == "harmonic":
        fill[:, sel], unc[:, sel] = _harmonic(flat[:, sel], pos_days, params["harmonics"],
                                              params["period"], params["trend"])
    elif sel.size and method == "stori":
        from xfusion.engine.device import resolve_device
        from xfusion.models.stori import impute

        sar, weights = rest
        meta = weights.meta["stori"]
        nf = sar.shape[0]
        s = sar.reshape(nf, nt, -1)[:, :, sel].astype(np.float64)
        xs = flat[:, sel]
        dev = resolve_device(device)
        imp, u = impute(weights.model(dev), _prep_optical(xs, meta).T,
                        (~np.isnan(xs)).T.astype(np.float32), _prep_sar(s, pos, meta), pos,
                        device=dev)
        fill[:, sel] = imp.T.astype(np.float64) * meta["opt_std"] + meta["opt_mean"]
        unc[:, sel] = u.T.astype(np.float64) * meta["opt_std"]
    flat_in = x.reshape(nt, -1)
    val = np.where(obs, flat_in, fill.astype(out_dtype))
    unc = np.where(obs & has[None], 0.0, unc).astype(out_dtype)
    return np.stack([val, unc]).reshape((2, *x.shape))


# --------------------------------------------------------------------------------------------
# public functions


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
    config = _resolve_config(config, {})
    check_device(device)
    dims, opt, sars = _inputs(ds, optical, sar, need_sar=True, rechunk=True)
    w = _train_graph(opt[0], sars, dims, config, device, progress=progress, lazy=False)
    if out is not None:
        w.save(out)
        w = StoriWeights.load(out)
        w.state = None
    return w


def _inputs(ds: xr.Dataset, optical: Any, sar: Any, *, need_sar: bool,
            rechunk: bool) -> tuple[tuple[str, str], list[xr.DataArray], list[xr.DataArray]]:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"gapfill() expects an xarray.Dataset holding the series, found "
            f"{type(ds).__name__}. Convert a DataArray with `da.to_dataset(name='ndvi')`."
        )
    names = as_names(optical, role="optical")
    if not names:
        raise InvalidParameterError(
            "gapfill() needs an optical variable: optical= is empty. Pass e.g. optical='ndvi'.")
    require_vars(ds, names, role="optical variable")
    dims = spatial_dims(ds, name="input")
    get_geobox(ds, name="input")
    require_time(ds, name="input")
    opts = [_time_in_one_chunk(_series_var(ds, n, dims, "optical"), rechunk=rechunk,
                               role="optical") for n in names]
    sars: list[xr.DataArray] = []
    if need_sar:
        sars = [_time_in_one_chunk(v, rechunk=rechunk, role="SAR")
                for v in _sar_vars(ds, sar, dims)]
        for v in sars:
            _check_times(opts[0], v)
    return dims, opts, sars


def _stack_sar(sars: list[xr.DataArray]) -> Any:
    datas = [v.data for v in sars]
    if any(_is_dask(d) for d in datas):
        import dask.array as da

        return da.stack([d if _is_dask(d) else da.asarray(d) for d in datas]).rechunk({0: -1})
    return np.stack([np.asarray(d) for d in datas])


def _train_graph(opt: xr.DataArray, sars: list[xr.DataArray], dims: tuple[str, str],
                 config: StoriConfig, device: str, *, progress: bool = False,
                 lazy: bool = True) -> Any:
    """STORI weights: a dask Delayed (one training task) for dask input, else trained now."""
    shape = (opt.sizes[dims[0]], opt.sizes[dims[1]])
    stride = _sample_stride(shape, config.train_pixels)
    o = opt.data[:, ::stride, ::stride]
    s = _stack_sar(sars)[:, :, ::stride, ::stride]
    times = np.asarray(opt.indexes[TIME].values, dtype="datetime64[ns]")
    names = (str(opt.name), tuple(str(v.name) for v in sars))
    kw = {"stride": stride, "shape": shape, "times": times, "config": config, "names": names,
          "device": device}
    if lazy and (_is_dask(o) or _is_dask(s)):
        import dask
        from dask.base import tokenize

        tok = tokenize(o, s, kw)
        return dask.delayed(_fit_task, pure=True)(o, s, **kw,
                                                  dask_key_name=f"xfusion.gapfill-train-{tok}")
    if _is_dask(o) or _is_dask(s):
        import dask

        o, s = dask.compute(o, s)
    return _fit_task(np.asarray(o), np.asarray(s), progress=progress, **kw)


def gapfill(
    ds: xr.Dataset,
    /,
    *,
    optical: str | Sequence[str] = "ndvi",
    sar: str | Sequence[str] | xr.Dataset | xr.DataArray | None = ("vh_db", "rvi"),
    method: GapfillMethod = "stori",
    weights: str | os.PathLike[str] | StoriWeights | None = None,
    config: StoriConfig | None = None,
    variant: Variant | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    window: int = 7,
    polyorder: int = 2,
    harmonics: int = 2,
    period: float = 365.25,
    trend: bool = False,
    device: str = "auto",
    rechunk: bool = False,
) -> xr.Dataset:
    """Fill the gaps of optical time series, per pixel, optionally guided by SAR (STORI).

    Every missing (NaN) step of every pixel's series is filled; observed values are copied
    unchanged (bit for bit). Lazy on dask input: the work is mapped over the spatial chunks
    with the whole time axis in one chunk, and nothing is computed here (with STORI and no
    ``weights``, training is one task of the graph).

    Parameters
    ----------
    ds : xarray.Dataset
        Series on a regular composite time axis (e.g. from :func:`xfusion.gapfill_inputs`),
        dims ``time`` and the spatial dims (``y, x`` or ``latitude, longitude``).
    optical : str or sequence of str, default "ndvi"
        Optical variable(s) to fill (each independently; STORI trains one net per variable).
    sar : str, sequence of str, xarray.Dataset, xarray.DataArray or None
        SAR features guiding STORI, default ``("vh_db", "rvi")``: names on ``ds``, or objects
        on the same grid and time axis. SAR gaps are interpolated in time. Ignored by the
        baselines.
    method : {"stori", "linear", "savgol", "harmonic"}, default "stori"
        ``"stori"``: the SAR-guided bidirectional recurrent imputer;
        ``"linear"``: linear interpolation in time (nearest observation at the ends);
        ``"savgol"``: Savitzky-Golay (``window``, ``polyorder``) of the linear interpolation;
        ``"harmonic"``: least-squares fit of ``harmonics`` harmonics of ``period`` days
        (fewer when a pixel has few observations).
    weights : path or StoriWeights, optional
        Trained STORI weights (:func:`fit_stori`); default: train on this scene.
    config : StoriConfig, optional
        STORI settings; ``variant``, ``epochs`` and ``seed`` override its fields.
    variant : {"fixed", "faithful"}, optional
        ``"fixed"`` (default) or the public code's behaviour (see :class:`StoriConfig`).
    epochs, seed : int, optional
        Shortcuts for the config fields.
    window, polyorder : int, default 7, 2
        Savitzky-Golay window (steps, odd; capped by the series length) and order.
    harmonics : int, default 2
        Harmonic regression: number of harmonics.
    period : float, default 365.25
        Harmonic regression: base period in days.
    trend : bool, default False
        Harmonic regression: add a linear trend.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default "auto"
        STORI's device, resolved in the worker (CUDA when it has one).
    rechunk : bool, default False
        Rechunk a time axis split over several chunks into one instead of raising.

    Returns
    -------
    xarray.Dataset
        Per optical variable ``v``: ``v`` (the filled series, same dtype; NaN only for pixels
        with no observation at all), ``v_filled`` (bool, True where a value was filled) and
        ``v_uncertainty`` (0 where observed; STORI: ``|x̂_forward - x̂_backward|``, the
        disagreement of the two directions; linear: ``|next - previous observation|``, NaN
        beyond the first/last observation; savgol and harmonic: the RMS residual of the fit
        at the pixel's observations). Coordinates, ``spatial_ref`` and attrs of the input;
        attr ``gapfill_method``.

    Raises
    ------
    VariableNotFoundError
        An optical or SAR name is not on the dataset.
    MissingDimensionError
        No time or spatial dims, or extra dims on a variable.
    GridMismatchError
        SAR given as objects on another grid.
    TimeAxisError
        SAR and optical on different time axes.
    ChunkingError
        The time axis is split over several chunks (and ``rechunk=False``).
    InvalidParameterError
        Unknown method or bad parameters; STORI without SAR.
    WeightsMismatchError, WeightsNotFoundError, CheckpointError
        Weights that do not fit (number of SAR features, time step) or cannot be read.
    NotEnoughDataError
        Too few observed pixels to train STORI (raised when computing for dask input).

    Warns
    -----
    EmptySeriesWarning
        Pixel series without any observation (left NaN), with their count (per chunk when
        computing lazily).

    See Also
    --------
    gapfill_inputs, composite, time_gaps, fit_stori, StoriConfig

    Notes
    -----
    Memory per task: one spatial chunk of every input over the whole time axis. STORI costs
    about 7 MMAC per 46-step pixel (both directions, H = 96).

    References
    ----------
    Cao W. et al., BRITS: Bidirectional Recurrent Imputation for Time Series, NeurIPS 2018.

    Examples
    --------
    >>> from xfusion.testing import synthetic_series
    >>> ds = synthetic_series((8, 8), seed=0)
    >>> out = gapfill(ds, optical="ndvi", method="linear")
    >>> sorted(out.data_vars)
    ['ndvi', 'ndvi_filled', 'ndvi_uncertainty']
    >>> bool(out.ndvi.notnull().all())
    True
    """
    require_choice(method, GAPFILL_METHODS, name="method", method=NAME)
    check_device(device)
    for pname, v, lo in (("window", window, 1), ("polyorder", polyorder, 0),
                         ("harmonics", harmonics, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise InvalidParameterError(
                f"{pname}={v!r} must be an integer >= {lo} for gapfill(method={method!r}).")
    if method == "savgol" and polyorder >= _odd_window(window, 10**9):
        raise InvalidParameterError(
            f"polyorder={polyorder} must be smaller than window={window} (odd windows are "
            "used; an even window is reduced by one).")
    if not (isinstance(period, (int, float)) and period > 0):
        raise InvalidParameterError(f"period={period!r} must be a positive number of days.")
    stori = method == "stori"
    if stori:
        from xfusion._compat import lazy_import

        lazy_import("torch", purpose="gapfill(method='stori')")
    cfg = _resolve_config(config, {"variant": variant, "epochs": epochs, "seed": seed}) if (
        stori) else None
    dims, opts, sars = _inputs(ds, optical, sar, need_sar=stori, rechunk=rechunk)
    if stori and weights is not None and len(opts) > 1:
        raise InvalidParameterError(
            f"weights= holds one STORI net, but {len(opts)} optical variables were given "
            f"({[str(o.name) for o in opts]!r}); fill them one call at a time.")
    times = np.asarray(opts[0].indexes[TIME].values, dtype="datetime64[ns]")
    pos, step = _positions(times)
    pos_days = (times - times[0]) / np.timedelta64(1, "D")
    params = {"window": int(window), "order": int(polyorder), "harmonics": int(harmonics),
              "period": float(period), "trend": bool(trend)}
    wobj: Any = None
    if stori and weights is not None:
        wobj = _as_weights(weights)
        _check_weights(wobj, sars, step)
    out_vars: dict[Hashable, xr.DataArray] = {}
    for opt in opts:
        arr = opt.data[None]
        arrays: list[Any] = [arr]
        extra: tuple[Any, ...] = ()
        if stori:
            sar_arr = _stack_sar(sars)
            arrays.append(sar_arr)
            w = wobj if wobj is not None else _train_graph(opt, sars, dims, cfg, device)  # type: ignore[arg-type]
            if isinstance(w, StoriWeights) and any(_is_dask(a) for a in arrays):
                import dask

                # one graph node shared by every block task (not copied into each task)
                w = dask.delayed(w, pure=True, name=f"xfusion.gapfill-weights-{w.token}")
            extra = (w,)
        dtype = opt.dtype
        lead = ((2,), (len(times),))
        res = map_blocks_halo(
            _gapfill_block, *arrays, halo=0, dtype=dtype,
            leading_chunks=lead if any(_is_dask(a) for a in arrays) else None,
            method=NAME, token_parts=(method, params, cfg, str(opt.name)), extra=extra,
            kwargs={"method": method, "pos": pos, "pos_days": pos_days, "params": params,
                    "name": str(opt.name), "device": device},
        )
        filled_vals = res[0]
        unc = res[1]
        coords = dict(opt.coords)
        attrs = dict(opt.attrs)
        vname = str(opt.name)
        missing = opt.isnull()
        out_vars[vname] = xr.DataArray(filled_vals, dims=opt.dims, coords=coords, attrs=attrs,
                                       name=vname)
        out_vars[f"{vname}_filled"] = (missing & out_vars[vname].notnull()).rename(
            f"{vname}_filled").assign_attrs(long_name=f"{vname} value filled by gapfill")
        out_vars[f"{vname}_uncertainty"] = xr.DataArray(
            unc, dims=opt.dims, coords=coords, name=f"{vname}_uncertainty",
            attrs={"long_name": f"uncertainty of the filled {vname} ({method})",
                   **({"units": attrs["units"]} if "units" in attrs else {})})
    res_ds = xr.Dataset(out_vars, attrs={**ds.attrs, "gapfill_method": method})
    for v in res_ds.data_vars.values():
        if "spatial_ref" in res_ds.coords:
            v.encoding["grid_mapping"] = "spatial_ref"
    return res_ds


def _check_weights(w: StoriWeights, sars: list[xr.DataArray], step: float) -> None:
    if w.n_sar != len(sars):
        raise WeightsMismatchError(
            f"The STORI weights were trained with {w.n_sar} SAR feature(s) "
            f"{w.meta['stori'].get('sar')!r}, but {len(sars)} were given "
            f"({[str(v.name) for v in sars]!r}). Pass the same features in the same order."
        )
    wstep = float(w.meta["stori"].get("step_days", step))
    if abs(wstep - step) > 0.25 * wstep:
        raise WeightsMismatchError(
            f"The STORI weights were trained on {wstep:g}-day composites, but this series has "
            f"{step:g}-day steps. Composite with xfusion.composite(..., days={round(wstep)}) or "
            "train on this series (weights=None)."
        )

