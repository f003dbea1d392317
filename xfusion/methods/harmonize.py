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

Raw, neither is a calibrated error bar. Weights from :func:`train_harmonizer` carry a
recalibration fitted on the validation strip (``std = sqrt((a spread)^2 + (c detail)^2 +
s0^2)`` per band, ``detail`` the local 3x3 detail of the prediction: the aleatoric part the
spread misses; also over 7x7 and 15x15), applied by default (``calibrate=False``: the raw spread). Measured
calibration (Spearman rho of std vs absolute error, share of errors within 1 and 2 std):
benchmarks/README.md.
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
    prepare_guided,
    rechunk_nested,
    wrap_fine,
)
from xfusion.engine.bicubic import bicubic_upsample
from xfusion.errors import (
    InvalidParameterError,
    WeightsMismatchError,
)
from xfusion.models.registry import HARMONIZE_ARCH
from xfusion.training.harmonize import L8_BANDS, S2_BANDS, stack_bands, train_harmonizer

__all__ = ["L8_BANDS", "S2_BANDS", "harmonize", "train_harmonizer"]


_UNCERTAINTY = (None, "ensemble", "mc-dropout")


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


def _calibration(meta: Mapping[str, Any], uncertainty: str | None, *,
                 members: list[tuple[str, str, str]],
                 dropout: float, calibrate: bool) -> dict[str, tuple[float, ...]] | None:
    """The stored calibration of ``uncertainty`` when it applies to this call (same members;
    MC-dropout: same dropout probability), else None (the raw spread)."""
    cal = (meta.get("calibration") or {}).get(str(uncertainty)) if calibrate else None
    if not cal:
        return None
    files = {m[0] for m in members}
    distinct = {(m[0], m[1]) for m in members}
    if uncertainty == "ensemble" and (len(files) != 1 or len(distinct) != len(members)
                                      or int(cal.get("members", 0)) != len(members)):
        return None  # fitted for the checkpoint's own members, not this combination
    if uncertainty == "mc-dropout" and not math.isclose(float(cal.get("p", dropout)), dropout):
        return None
    return {"a": tuple(float(v) for v in cal["a"]), "s0": tuple(float(v) for v in cal["s0"]),
            "c": tuple(tuple(float(v) for v in row) for row in cal["c"])}


def _model_spec(members: list[tuple[str, str, str]], meta: Mapping[str, Any], *,
                uncertainty: str | None, passes: int, dropout: float, seed: int,
                halo: int, calibrate: bool = True) -> Any:
    from xfusion.engine.model import ModelSpec

    nout = len(meta.get("outputs", S2_BANDS))
    cal = _calibration(meta, uncertainty, members=members, dropout=dropout,
                       calibrate=calibrate)
    if uncertainty == "mc-dropout":
        path, net, sha = members[0]
        return ModelSpec(name="harmonize-mc-dropout",
                         builder="xfusion.models.harmonize_unet:mc_dropout_from_checkpoint",
                         kwargs={"path": path, "net": net, "sha256": sha, "passes": passes,
                                 "p": dropout, "seed": seed, "calibration": cal},
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
                             "sha256s": tuple(m[2] for m in members),
                             "calibration": cal if uncertainty == "ensemble" else None},
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
    calibrate: bool = True,
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
    calibrate : bool, default True
        Apply the uncertainty calibration stored with the weights (fitted on the training
        run's validation strip, see :func:`train_harmonizer`), when it fits this call: the
        ensemble of the checkpoint's own members, MC-dropout with the same ``dropout``.
        False: the raw spread, as in the paper.

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
    stack = stack_bands(ds, want, role="Landsat")
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
    if _calibration(meta, uncertainty, members=members, dropout=dropout,
                    calibrate=calibrate) is not None:
        from xfusion.models.harmonize_unet import DETAIL_WINDOWS

        rf_halo += max(DETAIL_WINDOWS) // 2  # the calibration reads around the mean
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
                       seed=seed, halo=engine.halo if engine.halo is not None else halo,
                       calibrate=calibrate)
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


