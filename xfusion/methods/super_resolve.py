"""Guided super-resolution: coarse LST (MODIS-like) onto a fine guide grid (NDVI, bands).

:func:`super_resolve` is the entry point (also ``da.fusion.super_resolve`` and
``ds.fusion.super_resolve``). Methods:

``"sif-sr1"`` (the default) / ``"sif-sr2"``
    Learned, self-supervised sharpening. Without ``weights=`` the method first trains on the
    scene (:func:`train_sif_sr`; reads the data; seconds on a CPU for a 256 x 256 output).
    Default ``variant="residual"`` (xfusion's): a per-pixel network corrects bicubic with the
    DMS prediction and the guide, fitted one scale coarser, then every coarse cell is shifted
    back to the observed value; measured more accurate than bicubic and DMS on held-out
    synthetic and real scenes (benchmarks/README.md). ``params={"variant": "paper"}``:
    SIF-CNN-SR as published (Ait-Bachir et al. 2025): a residual U-Net on
    ``[bicubic(LST), guide]`` trained scale-invariance-free: PSF-degraded output vs the
    observed coarse LST, plus a texture term tying output edges to ``gamma x`` guide edges (4
    Sobels for SR1, a high-pass for SR2). Weights from :func:`train_sif_sr` are xfusion
    checkpoints holding the normalisation statistics with the weights.
``"dms"``
    Data-mining sharpener (Gao et al. 2012), regression trees; see :func:`xfusion.methods.dms.dms`.
``"bicubic"``
    Bicubic interpolation (Keys a = -0.75, half-pixel centres, edges replicated: OpenCV
    ``INTER_CUBIC`` / torch ``bicubic``).
``"harmonize"``
    Landsat-8 -> Sentinel-2 harmonization U-Net with uncertainty; see
    :func:`xfusion.methods.harmonize.harmonize`.

Grids: the coarse input and the guide must be *nested by* ``scale``: same CRS, axis-aligned,
pixel size ratio ``scale`` and coarse pixel edges on fine pixel edges; the guide must cover the
coarse input. The output lies on the guide's pixel grid, restricted to the coarse footprint
(the guide's own GeoBox when both cover the same area); its coordinates come from the GeoBox
(odc-geo). Everything is lazy on dask inputs and chunk-invariant: blocks carry a halo as large
as the receptive field (bicubic: 4 coarse px, the SIF U-Net: 72 fine px).

NaN means unobserved, in and out: an unobserved coarse pixel gives NaN over its whole fine
footprint, a NaN guide pixel gives a NaN output pixel. NaN never spreads further: the values
next to a hole are computed with the hole filled locally (the mean of the valid coarse pixels
within 2 pixels, or the training mean inside the network), so only outputs within the
receptive field of a hole can change, and they stay finite.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import dask
import numpy as np
import xarray as xr

from xfusion.config import EngineConfig
from xfusion.cube.grids import (
    GuidedInputs,
    NestedGrids,
    nested_grids,
    other_dims,
    prepare_guided,
    rechunk_nested,
    wrap_fine,
)
from xfusion.cube.validate import spatial_dims
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.errors import (
    InvalidParameterError,
    WeightsMismatchError,
)
from xfusion.metrics import aggregate, coarse_consistency, gradient_rmse
from xfusion.models.registry import SIF_ARCH
from xfusion.training.sifsr import train_sif_sr

__all__ = [
    "SR_METHODS",
    "NestedGrids",
    "SRMethod",
    "aggregate",
    "bicubic_upsample",
    "coarse_consistency",
    "gradient_rmse",
    "nested_grids",
    "super_resolve",
    "train_sif_sr",
]

SRMethod: TypeAlias = Literal["sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize"]
SR_METHODS: tuple[str, ...] = ("sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize")
"""Methods of :func:`super_resolve`."""


# Paper hyper-parameters (shipped *_train_params.json), per variant.
SIF_DEFAULTS: dict[str, dict[str, Any]] = {
    "sif-sr1": {"texture": "sobel", "lr": 1e-3, "alpha": 0.99, "gamma": -0.5, "patience": 30},
    "sif-sr2": {"texture": "highpass", "lr": 1e-4, "alpha": 0.5, "gamma": -0.25, "patience": 30},
}


# --------------------------------------------------------------------------------------------
# grids


# --------------------------------------------------------------------------------------------
# bicubic interpolation (numpy, block-wise)


# --------------------------------------------------------------------------------------------
# aggregation and evaluation helpers


# --------------------------------------------------------------------------------------------
# inputs


# --------------------------------------------------------------------------------------------
# SIF-CNN-SR: inference


@dataclass(frozen=True)
class _SifWeights:
    path: str
    sha256: str
    meta: dict[str, Any]
    mean: np.ndarray
    std: np.ndarray
    halo: int
    width: int


def _load_sif_weights(weights: Any, *, method: str, guide_names: Sequence[str],
                      scale: int) -> _SifWeights:
    from xfusion.models.checkpoint import file_sha256, read_metadata
    from xfusion.models.registry import resolve_weights

    path, sha = resolve_weights(weights)
    meta = read_metadata(path)
    if meta.get("arch") != SIF_ARCH:
        raise WeightsMismatchError(
            f"The weights {path!r} are for architecture {meta.get('arch')!r}, not the SIF-CNN-SR "
            f"U-Net ({SIF_ARCH!r}) that method={method!r} runs. Train SIF weights with "
            "`xfusion.methods.super_resolve.train_sif_sr(...)`."
        )
    wmethod = meta.get("method")
    if wmethod != method:
        raise WeightsMismatchError(
            f"The weights {path!r} were trained for method {wmethod!r}, but method={method!r} "
            f"was asked for. Pass method={wmethod!r}, or train {method} weights."
        )
    inputs = list(meta.get("inputs", []))
    nb = int(meta.get("nbands", 0))
    resid = (meta.get("arch_params") or {}).get("kind") == "residual-mlp"
    lst_channels = 2 if resid else 1
    what = ("bicubic and DMS LST plus, per guide band, the band and its cell detail, for the "
            "guide" if resid else "the coarse LST plus the guide")
    if (nb - lst_channels) // (2 if resid else 1) != len(guide_names):
        raise WeightsMismatchError(
            f"The weights {path!r} take {nb} input channels ({what} "
            f"bands {inputs[1:]!r}), but the guide has {len(guide_names)} band(s) "
            f"{list(guide_names)!r}. Pass a guide with the bands the weights were trained on, "
            "in that order, or train weights for this guide."
        )
    wscale = int(meta.get("scale", scale))
    if wscale != scale:
        raise WeightsMismatchError(
            f"The weights {path!r} were trained for scale={wscale}, but the grids are nested by "
            f"scale={scale}. Use a guide {wscale}x finer than the coarse input, or train "
            f"weights for scale={scale}."
        )
    norm = meta.get("normalization") or {}
    mean = np.asarray(norm.get("mean", []), dtype=np.float64)
    std = np.asarray(norm.get("std", []), dtype=np.float64)
    nstat = (nb - lst_channels) // (2 if resid else 1) + 1
    if mean.shape != (nstat,) or std.shape != (nstat,):
        raise WeightsMismatchError(
            f"The weights {path!r} carry no usable normalisation statistics (found "
            f"{norm!r}); SIF weights must be saved with their per-channel mean and std. "
            "Re-train with train_sif_sr()."
        )
    return _SifWeights(path, sha or file_sha256(path), meta, mean, std,
                       int(meta.get("halo", 72)), int(meta.get("arch_params", {}).get("width", 16)))


def _sif_engine_config(engine: EngineConfig | None, device: str) -> EngineConfig:
    if engine is not None:
        return engine
    return EngineConfig(tile=512, device=device)


def _sif_predict(inp: GuidedInputs, w: _SifWeights, *, method: str, engine: EngineConfig) -> Any:
    """Lazy SIF-CNN-SR prediction ``(T, Hf, Wf)`` in the coarse input's units."""
    import dask.array as da

    if (w.meta.get("arch_params") or {}).get("kind") == "residual-mlp":
        from xfusion.methods._sifsr_residual import predict_residual

        return predict_residual(inp, w, method=method, engine=engine)

    from xfusion.engine.model import ModelSpec
    from xfusion.engine.run import map_model

    s = inp.grids.scale
    coarse, guide = rechunk_nested(inp.coarse, inp.guide, s, multiple=8)
    mean, std = w.mean.astype(np.float32), w.std.astype(np.float32)
    zc = (coarse - mean[0]) / std[0]
    up = bicubic_upsample(zc, s, method=f"{method}.bicubic")  # (T, Hf, Wf)
    assert guide is not None
    zg = (guide - mean[1:, None, None]) / std[1:, None, None]
    nt = up.shape[0]
    if zg.shape[0] != nt:
        zg = da.broadcast_to(zg, (nt, *zg.shape[1:]), chunks=(up.chunks[0], *zg.chunks[1:])) \
            if dask.is_dask_collection(zg) else np.broadcast_to(zg, (nt, *zg.shape[1:]))
    if dask.is_dask_collection(up):
        x = da.concatenate([up[:, None], zg.rechunk((up.chunks[0], -1, *up.chunks[1:]))], axis=1)
    else:
        x = np.concatenate([up[:, None], np.asarray(zg)], axis=1)
    spec = ModelSpec(name=method, builder="xfusion.models.checkpoint:build_from_checkpoint",
                     kwargs={"path": w.path, "net": "model", "sha256": w.sha256}, halo=w.halo,
                     out_channels=1)
    y = map_model(x, spec, config=engine, method=f"super_resolve.{method}")
    return y[:, 0] * std[0] + mean[0]


# --------------------------------------------------------------------------------------------
# training (self-supervised, on patches of the cube)


# --------------------------------------------------------------------------------------------
# public entry point


_PARAMS: dict[str, tuple[str, ...]] = {
    "sif-sr1": ("train", "variant"),
    "sif-sr2": ("train", "variant"),
    "bicubic": (),
    "dms": ("window", "homogeneity", "std_features", "residual", "aggregation", "regressor",
            "n_estimators", "max_depth", "min_samples_leaf", "min_samples", "seed"),
    "harmonize": ("uncertainty", "passes", "dropout", "seed", "halo", "blend", "overlap",
                  "tile", "bands", "calibrate"),
}


def _check_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    p = dict(params or {})
    unknown = sorted(set(p) - set(_PARAMS[method]))
    if unknown:
        raise InvalidParameterError(
            f"Unknown params {unknown!r} for method={method!r}. Valid keys: "
            f"{sorted(_PARAMS[method])!r}."
        )
    return p


def _sr_one(var: xr.DataArray, *, guide: Any, scale: int | None, method: str, weights: Any,
            params: dict[str, Any], engine: EngineConfig | None, device: str,
            name: Hashable | None) -> xr.DataArray:
    attrs = dict(var.attrs)
    for k in ("nodata", "_FillValue", "missing_value"):
        attrs.pop(k, None)
    if method == "bicubic":
        inp = prepare_guided(var, guide, scale, need_guide=False)
        coarse, _ = rechunk_nested(inp.coarse, None, inp.grids.scale)
        data = bicubic_upsample(coarse, inp.grids.scale, method="super_resolve.bicubic")
    elif method == "dms":
        from xfusion.methods._dms_kernel import dms_predict

        inp = prepare_guided(var, guide, scale, need_guide=True)
        data = dms_predict(inp, **params)
    else:
        inp = prepare_guided(var, guide, scale, need_guide=True)
        if weights is None or (isinstance(weights, str) and weights == "train"):
            import tempfile

            tkw = dict(params.get("train") or {})
            if "variant" in params:
                tkw["variant"] = params["variant"]
            folder = tempfile.mkdtemp(prefix="xfusion-sif-")
            weights = train_sif_sr(var, guide=guide, scale=scale, method=method,  # type: ignore[arg-type]
                                   out=os.path.join(folder, f"{method}.safetensors"),
                                   device=device, **tkw)
        elif "variant" in params:
            raise InvalidParameterError(
                f"params={{'variant': ...}} for method={method!r} chooses what to train; with "
                "weights= the checkpoint fixes it. Drop the variant, or weights=."
            )
        w = _load_sif_weights(weights, method=method, guide_names=inp.guide_names,
                              scale=inp.grids.scale)
        data = _sif_predict(inp, w, method=method,
                            engine=_sif_engine_config(engine, device))
        attrs["weights"] = os.path.basename(w.path)
    attrs["super_resolve_method"] = method
    attrs["scale"] = inp.grids.scale
    if name is None:
        name = var.name if var.name is not None else method  # an unnamed input: the method
    return wrap_fine(data, inp, name=name, attrs=attrs)


def super_resolve(
    obj: xr.DataArray | xr.Dataset,
    /,
    *,
    guide: xr.DataArray | xr.Dataset | None = None,
    scale: int | None = None,
    method: SRMethod = "sif-sr1",
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    params: Mapping[str, Any] | None = None,
    engine: EngineConfig | None = None,
    device: str = "auto",
    name: Hashable | None = None,
) -> xr.DataArray | xr.Dataset:
    """Super-resolve coarse data onto a fine guide grid (LST sharpening, L8 -> S2).

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        Coarse input on its native grid, e.g. MODIS LST in kelvin, with the CRS's spatial
        dims and optionally ``time``. A Dataset is super-resolved variable by variable
        (``"harmonize"``: its variables are the Landsat bands, used together).
    guide : xarray.DataArray or xarray.Dataset, optional
        Fine bands on a grid nested in the coarse one by ``scale`` (NDVI at 250 m for MODIS
        LST at 1 km): a DataArray (one band, or with a band dim) or a Dataset (one variable per
        band), optionally with ``time`` (matched to the coarse dates). Required by
        ``"sif-sr*"`` and ``"dms"``; for ``"bicubic"`` and ``"harmonize"`` it only sets the
        output grid (``"harmonize"``: it is the pan band when the weights use one).
    scale : int, optional
        Fine pixels per coarse pixel; default: the pixel-size ratio of the grids (required
        without a guide).
    method : {"sif-sr1", "sif-sr2", "dms", "bicubic", "harmonize"}, default "sif-sr1"
        See the module docstring.
    weights : path, registered name or list of paths, optional
        Checkpoint(s) of the learned methods. ``"sif-sr*"``: from :func:`train_sif_sr`;
        None or ``"train"``: train on this scene first (reads the data). ``"harmonize"``: from
        :func:`xfusion.methods.harmonize.train_harmonizer`; several files (or a file with
        several members) form a deep ensemble.
    params : mapping, optional
        Method options: ``"dms"``: see :func:`xfusion.methods.dms.dms`; ``"harmonize"``:
        ``uncertainty`` (None, ``"ensemble"``, ``"mc-dropout"``), ``passes``, ``dropout``,
        ``seed``, ``halo``, ``blend``, ``overlap``, ``tile``, ``bands``, ``calibrate``;
        ``"sif-sr*"`` when training: ``variant`` (``"residual"``, default, or ``"paper"``)
        and ``train`` (keyword arguments of :func:`train_sif_sr`, e.g. ``{"epochs": 10,
        "seed": 1, "verbose": False}``).
    engine : xfusion.engine.EngineConfig, optional
        Tiling, batching and device of the neural methods (default: 512-px tiles).
    device : str, default "auto"
        Device of the neural methods when ``engine`` is not given.
    name : hashable, optional
        Name of the output DataArray (default: the input's).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Same type as ``obj``, on the output grid (the guide's grid over the coarse footprint;
        coordinates and ``spatial_ref`` from the GeoBox), dask-backed when the inputs are,
        float32, NaN where unobserved. ``"harmonize"`` returns the Sentinel-2-like bands (and
        ``<band>_std`` with uncertainty).

    Raises
    ------
    GridMismatchError, CRSMismatchError
        Grids not nested by ``scale``, or a guide that does not cover the coarse input.
    WeightsMismatchError
        Weights for another architecture, method, scale or number of guide bands.
    WeightsNotFoundError, CheckpointError
        Missing or damaged weights file.
    InvalidParameterError
        Unknown method or params, a missing guide or weights (``"harmonize"``).

    See Also
    --------
    train_sif_sr : train SIF-CNN-SR weights (self-supervised).
    xfusion.methods.dms.dms : the data-mining sharpener.
    xfusion.methods.harmonize.harmonize : Landsat-8 -> Sentinel-2 harmonization.
    coarse_consistency : RMSE of the aggregated output against the coarse input.

    Notes
    -----
    Halo: bicubic 4 coarse px; SIF U-Net 72 fine px (receptive field 140 px); DMS 1 coarse
    px; the default SIF variant that of bicubic and DMS (its network is per pixel). Memory is O(chunk): every step is a block-wise map with that halo. The SIF U-Net
    pools three times, so its output depends on the 8-px phase of a tile; coarse chunks are
    rechunked so fine chunks are multiples of 8 px, which makes chunked and unchunked results
    agree to float rounding in the interior (tiles at the far image edge may differ by a few
    millikelvin).

    References
    ----------
    Ait-Bachir R. et al., "Land Surface Temperature Super-Resolution with a
    Scale-Invariance-Free Neural Approach: Application to MODIS", IEEE JSTARS (2025).
    Gao F., Kustas W.P., Anderson M.C., "A data mining approach for sharpening thermal
    satellite imagery over land", Remote Sensing 4:3287-3319 (2012).

    Examples
    --------
    >>> from xfusion.testing import synthetic_scene
    >>> scene, modis = synthetic_scene((64, 64), times=1, coarse_factor=4, ndvi=True,
    ...                                coarse_native=True)
    >>> lst = modis["coarse"].isel(time=0)
    >>> ndvi = scene["ndvi"].isel(time=0)
    >>> out = super_resolve(lst, guide=ndvi, method="bicubic")
    >>> out.shape, out.odc.geobox == ndvi.odc.geobox
    ((64, 64), True)
    """
    if method not in SR_METHODS:
        raise InvalidParameterError(
            f"Unknown method={method!r} for super_resolve(). Choose one of {list(SR_METHODS)!r}."
        )
    p = _check_params(method, params)
    if engine is not None and not isinstance(engine, EngineConfig):
        raise InvalidParameterError(
            f"engine= must be an xfusion.engine.EngineConfig, found {type(engine).__name__}."
        )
    if method == "harmonize":
        from xfusion.methods.harmonize import harmonize

        if weights is None:
            raise InvalidParameterError(
                "method='harmonize' needs weights=: checkpoint(s) from "
                "`xfusion.methods.harmonize.train_harmonizer(landsat, sentinel2, out=...)`."
            )
        ds = obj if isinstance(obj, xr.Dataset) else obj.to_dataset(
            dim=other_dims(obj, spatial_dims(obj))[0]) if len(obj.dims) > 2 else \
            obj.to_dataset(name=obj.name or "band")
        return harmonize(ds, weights=weights, guide=guide, scale=scale, engine=engine,
                         device=device, **p)
    if isinstance(obj, xr.Dataset):
        if not obj.data_vars:
            raise InvalidParameterError("The input Dataset has no data variables.")
        outs = {n: _sr_one(obj[n], guide=guide, scale=scale, method=method, weights=weights,
                           params=p, engine=engine, device=device, name=n)
                for n in obj.data_vars}
        return xr.Dataset(outs, attrs=dict(obj.attrs))
    if not isinstance(obj, xr.DataArray):
        raise InvalidParameterError(
            f"super_resolve() takes an xarray DataArray or Dataset, found {type(obj).__name__}."
        )
    return _sr_one(obj, guide=guide, scale=scale, method=method, weights=weights, params=p,
                   engine=engine, device=device, name=name)


# --------------------------------------------------------------------------------------------
# evaluation on synthetic scenes with a known fine LST


