"""Lazy mapping of block functions and torch models over Dask chunks, with halos.

Two levels:

* :func:`map_blocks_halo` maps any numpy block function over the spatial chunks of one or
  more arrays (spatial dims last), giving each block a halo of ``halo`` pixels with
  ``boundary="none"``: blocks on the image edge get no halo on their outer side, and the
  function is told which sides carry one. Output chunks are ``scale ×`` the input chunks.
* :func:`map_model` / :func:`apply_model` run a torch model (a :class:`ModelSpec` loaded once
  per worker, or an in-memory module shipped as one graph node) with halo = the model's
  receptive field, tiles batched inside each chunk, device resolved in the worker.

Graph keys are ``xfusion.<method>-<token>`` with the token derived from the model identity,
the configuration and the input arrays, so identical calls share keys and different calls
never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from xfusion.config import EngineConfig
from xfusion.engine.blocks import run_model_block
from xfusion.engine.model import ModelSpec, module_token
from xfusion.engine.tiling import block_halos
from xfusion.errors import ChunkingError, InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["ResolvedModel", "map_blocks_halo", "map_model", "resolve_model"]


def _halo_block(*args: Any, block_func: Callable[..., np.ndarray], halo: int,
                kwargs: dict[str, Any], block_info: dict[Any, Any] | None = None) -> np.ndarray:
    func = block_func
    info = block_info[None] if block_info else None
    if info is None:  # dask meta probing
        return func(*args, halo_sides=(0, 0, 0, 0), **kwargs)
    loc = tuple(info["chunk-location"][-2:])
    nblocks = tuple(info["num-chunks"][-2:])
    return func(*args, halo_sides=block_halos(loc, nblocks, halo), **kwargs)


def map_blocks_halo(
    func: Callable[..., np.ndarray],
    *arrays: Any,
    halo: int,
    dtype: Any,
    scale: int = 1,
    leading_chunks: Sequence[Sequence[int]] | None = None,
    method: str = "block",
    token_parts: Sequence[Any] = (),
    extra: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Map ``func`` over the spatial chunks of ``arrays`` with a ``halo``-pixel overlap.

    Parameters
    ----------
    func : callable
        ``func(*blocks, *extra, halo_sides=(top, bottom, left, right), **kwargs)`` returning the
        block interior at output resolution: leading dims as declared by ``leading_chunks``
        and spatial shape ``scale × (block shape − halos)``.
    *arrays : numpy or dask arrays
        Inputs of equal ndim whose last two dims are the same spatial grid. With numpy inputs
        ``func`` is called once on the whole arrays and a numpy array is returned.
    halo : int
        Halo in input pixels (``boundary="none"``).
    dtype : dtype
        Output dtype.
    scale : int
        Output pixels per input pixel along each spatial axis.
    leading_chunks : sequence of sequences of int, optional
        Output chunks of the leading (non-spatial) dims; default: those of the first array.
        They must have as many blocks per dim as the inputs.
    method : str
        Method name; graph keys are ``xfusion.<method>-<token>``.
    token_parts : sequence
        Extra objects that identify the computation (model token, parameters...).
    extra : sequence
        Extra positional arguments passed after the blocks (may be dask Delayed objects).
    kwargs : dict, optional
        Keyword arguments for ``func``.

    Returns
    -------
    numpy.ndarray or dask.array.Array
    """
    kwargs = dict(kwargs or {})
    if not arrays:
        raise InvalidParameterError("map_blocks_halo needs at least one input array.")
    ndims = {a.ndim for a in arrays}
    if len(ndims) != 1 or min(ndims) < 2:
        raise InvalidParameterError(
            f"All inputs must have the same ndim >= 2 (spatial dims last); found {sorted(ndims)}."
        )
    if not any(dask.is_dask_collection(a) for a in arrays):
        extra_vals = [e.compute() if dask.is_dask_collection(e) else e for e in extra]
        return func(*arrays, *extra_vals, halo_sides=(0, 0, 0, 0), **kwargs)

    ref = next(a for a in arrays if dask.is_dask_collection(a))
    nd = ref.ndim
    spatial_chunks = ref.chunks[-2:]
    if halo > 0:
        # an axis no longer than the halo becomes one chunk (dask cannot overlap it, and a
        # single block needs no halo: boundary="none")
        spatial_chunks = tuple(
            (sum(c),) if sum(c) <= halo else
            da.overlap.ensure_minimum_chunksize(halo, c) if len(c) > 1 else c
            for c in spatial_chunks
        )
    dask_arrays = []
    for a in arrays:
        if not dask.is_dask_collection(a):
            a = da.from_array(a, chunks=ref.chunks[:-2] + spatial_chunks)
        if a.shape[-2:] != ref.shape[-2:]:
            raise InvalidParameterError(
                f"Inputs have different spatial shapes {a.shape[-2:]} and {ref.shape[-2:]}."
            )
        if a.chunks[-2:] != spatial_chunks:
            a = a.rechunk(a.chunks[:-2] + spatial_chunks)
        dask_arrays.append(a)
    lead_blocks = [len(c) for c in dask_arrays[0].chunks[:-2]]
    for a in dask_arrays[1:]:
        if [len(c) for c in a.chunks[:-2]] != lead_blocks:
            raise ChunkingError(
                "The inputs' leading (non-spatial) dims are chunked differently: "
                f"{[a.chunks[:-2] for a in dask_arrays]}. Rechunk them alike, e.g. one chunk: "
                "`arr.rechunk({0: -1})`."
            )
    if leading_chunks is None:
        leading_chunks = dask_arrays[0].chunks[:-2]
    leading_chunks = tuple(tuple(int(v) for v in c) for c in leading_chunks)
    if [len(c) for c in leading_chunks] != lead_blocks:
        raise ChunkingError(
            f"leading_chunks {leading_chunks} must have {lead_blocks} blocks per leading dim."
        )
    if halo > 0:
        depth = {nd - 2 + k: halo if len(spatial_chunks[k]) > 1 else 0 for k in range(2)}
        dask_arrays = [da.overlap.overlap(a, depth=depth, boundary="none") for a in dask_arrays]
    out_chunks = leading_chunks + tuple(tuple(c * scale for c in cs) for cs in spatial_chunks)
    token = tokenize(func, halo, scale, dtype, out_chunks, list(token_parts),
                     [a.name for a in dask_arrays], extra, kwargs)
    return da.map_blocks(
        _halo_block,
        *dask_arrays,
        *extra,
        block_func=func,
        halo=halo,
        kwargs=kwargs,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0,) * nd, dtype=dtype),
        name=f"xfusion.{method}-{token}",
    )


class ResolvedModel:
    """A model reference the engine can put in a graph, with its halo/scale/channels."""

    def __init__(self, ref: Any, *, local: Any, token: str, name: str, halo: int, scale: int,
                 out_channels: int) -> None:
        self.ref, self.local, self.token, self.name = ref, local, token, name
        self.halo, self.scale, self.out_channels = halo, scale, out_channels


def resolve_model(model: ModelSpec | torch.nn.Module, config: EngineConfig) -> ResolvedModel:
    """Turn a spec or module into a graph-safe reference and check the halo."""
    if isinstance(model, ModelSpec):
        res = ResolvedModel(model, local=model, token=model.token, name=model.name, halo=model.halo,
                            scale=model.scale, out_channels=model.out_channels)
    else:
        try:
            import torch
        except ImportError:  # pragma: no cover - only reachable without torch
            torch = None
        if torch is None or not isinstance(model, torch.nn.Module):
            raise InvalidParameterError(
                f"model must be an xfusion.engine.ModelSpec or a torch.nn.Module, found "
                f"{type(model).__name__}. Wrap plain numpy functions with map_blocks_halo()."
            )
        missing = [a for a in ("halo", "out_channels") if not isinstance(getattr(model, a, None), int)]
        if missing:
            raise InvalidParameterError(
                f"The module {type(model).__name__} does not declare {missing!r}. The engine needs "
                "the receptive-field radius `halo` (input pixels) and `out_channels` as integer "
                "attributes (and `scale` for super-resolution), e.g. `model.halo = 3`."
            )
        token = module_token(model)
        ref = dask.delayed(model, pure=True, name=f"xfusion.model-{token}")
        res = ResolvedModel(ref, local=model, token=token, name=type(model).__name__, halo=model.halo,
                            scale=int(getattr(model, "scale", 1)), out_channels=model.out_channels)
    if config.halo is not None and config.halo < res.halo:
        raise InvalidParameterError(
            f"halo={config.halo} is smaller than the receptive field of model {res.name!r} "
            f"({res.halo} px); tiles would not match the untiled result. Use halo >= {res.halo} "
            "or leave it to None."
        )
    if config.halo is not None:
        res.halo = config.halo
    return res


def _model_block(x: np.ndarray, model_ref: Any, *, halo_sides: tuple[int, int, int, int],
                 **kwargs: Any) -> np.ndarray:
    return run_model_block(x, model_ref, halo_sides=halo_sides, **kwargs)


def map_model(
    x: Any,
    model: ModelSpec | torch.nn.Module,
    *,
    config: EngineConfig | None = None,
    method: str = "engine",
) -> Any:
    """Run ``model`` over a ``(B, C, H, W)`` numpy or dask array, lazily for dask.

    The channel axis must be one chunk; the batch axis may be chunked. Output is
    ``(B, out_channels, H*scale, W*scale)`` float32, NaN where any input channel is NaN
    (with the default ``nan_policy="mask"``).
    """
    config = config or EngineConfig()
    if x.ndim != 4:
        raise InvalidParameterError(
            f"map_model expects a (batch, channel, y, x) array, found ndim={x.ndim}."
        )
    if dask.is_dask_collection(x) and len(x.chunks[1]) > 1:
        x = x.rechunk({1: -1})
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    res = resolve_model(model, config)
    lead = (x.chunks[0], (res.out_channels,)) if dask.is_dask_collection(x) else None
    # with blending, chunks carry `overlap` more context so that the tiles can extend across
    # the chunk borders (no hard seam there: see run_model_block)
    depth = res.halo + (config.overlap if config.blend != "none" else 0)
    return map_blocks_halo(
        _model_block,
        x,
        halo=depth,
        dtype=np.float32,
        scale=res.scale,
        leading_chunks=lead,
        method=method,
        token_parts=(res.token, config),
        extra=(res.ref if dask.is_dask_collection(x) else res.local,),
        kwargs={"halo": res.halo, "scale": res.scale, "out_channels": res.out_channels,
                "config": config, "name": res.name},
    )


