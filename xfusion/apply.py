"""Run a model over georeferenced xarray objects: the xarray side of :mod:`xfusion.engine`.

The engine maps models over arrays (halos, tiles, batches, devices); :func:`apply_model` takes
a DataArray, finds its spatial dims and grid, lays out channels and one batch dim for the
engine, and rebuilds the coordinates (the grid refined by the model's ``scale``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

from xfusion.config import EngineConfig
from xfusion.cube.validate import get_geobox, spatial_dims
from xfusion.engine.model import ModelSpec
from xfusion.engine.run import map_model, resolve_model
from xfusion.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["apply_model"]


def apply_model(
    obj: xr.DataArray,
    model: ModelSpec | torch.nn.Module,
    /,
    *,
    channel_dim: Hashable | None = None,
    out_channel_dim: Hashable | None = None,
    out_channels: Sequence[Any] | None = None,
    config: EngineConfig | None = None,
    method: str = "engine",
    name: Hashable | None = None,
) -> xr.DataArray:
    """Run ``model`` over a georeferenced DataArray, lazily when it is dask-backed.

    Parameters
    ----------
    obj : xarray.DataArray
        Input with the CRS's spatial dims, an optional channel dim and at most one other dim
        (e.g. ``time``), which is batched.
    model : ModelSpec or torch.nn.Module
        The model; its ``halo`` (receptive field) sets the chunk overlap.
    channel_dim : hashable, optional
        Dim holding the model's input channels (``None``: a single channel).
    out_channel_dim : hashable, optional
        Dim name for the output channels; ``None`` drops it (single output channel).
    out_channels : sequence, optional
        Coordinate values along ``out_channel_dim``.
    config : EngineConfig, optional
        Tiling, batching, device and precision.
    method : str
        Graph-key prefix ``xfusion.<method>``.
    name : hashable, optional
        Name of the returned DataArray (default: the input's).

    Returns
    -------
    xarray.DataArray
        Same non-spatial coords and attrs as ``obj``; spatial coords and ``spatial_ref`` from
        the input GeoBox refined by the model's ``scale``.
    """
    config = config or EngineConfig()
    ydim, xdim = spatial_dims(obj)
    gbox = get_geobox(obj)
    others = [d for d in obj.dims if d not in (ydim, xdim, channel_dim)]
    if channel_dim is not None and channel_dim not in obj.dims:
        raise InvalidParameterError(
            f"channel_dim={channel_dim!r} is not a dim of the input (dims {tuple(obj.dims)!r})."
        )
    if len(others) > 1:
        raise InvalidParameterError(
            f"apply_model batches over at most one non-spatial dim besides the channels; found "
            f"{others!r}. Stack them first, e.g. `obj.stack(sample={others!r})`."
        )
    order = [*others, *([channel_dim] if channel_dim is not None else []), ydim, xdim]
    arr = obj.transpose(*order).data
    if channel_dim is None:
        arr = arr[..., None, :, :] if others else arr[None, None]
    elif not others:
        arr = arr[None]
    res = resolve_model(model, config)
    out = map_model(arr, model, config=config, method=method)
    if res.scale == 1:
        spatial = {ydim: obj[ydim], xdim: obj[xdim]}
        if "spatial_ref" in obj.coords:
            spatial["spatial_ref"] = obj.coords["spatial_ref"]
    else:
        from odc.geo.xr import xr_coords

        spatial = xr_coords(gbox.zoom_out(1 / res.scale), dims=(ydim, xdim))
    dims: list[Hashable] = list(others)
    coords: dict[Hashable, Any] = {d: obj[d] for d in others if d in obj.coords}
    if out_channel_dim is not None:
        dims.append(out_channel_dim)
        if out_channels is not None:
            coords[out_channel_dim] = list(out_channels)
    else:
        if res.out_channels != 1:
            raise InvalidParameterError(
                f"Model {res.name!r} returns {res.out_channels} channels: name the output "
                "channel dim with out_channel_dim=..."
            )
        out = out[:, 0]
    if not others:
        out = out[0]
    for cname, c in obj.coords.items():
        if cname not in coords and cname not in spatial and all(d in others for d in c.dims):
            coords[cname] = c
    coords.update(spatial)
    return xr.DataArray(out, dims=[*dims, ydim, xdim], coords=coords, attrs=dict(obj.attrs),
                        name=name if name is not None else obj.name)
