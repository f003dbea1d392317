"""The fusion-cube contract: dims, grid, time axis, variables and nodata.

A *fusion cube* is an :class:`xarray.Dataset` with a ``time`` dimension and the two spatial
dimensions of its CRS (``y, x`` for projected CRSs, ``latitude, longitude`` for geographic
ones, found through odc-geo, never hard-coded), a ``spatial_ref`` coordinate, and data
variables by role: fine observations and coarse observations on ONE pixel grid (the coarse
sensor resampled onto the fine grid), plus optional extra bands or guides. NaN means
unobserved. Per-time availability of a variable may be declared by the boolean coordinate
``observed_<name>`` along ``time`` (the cube builders set it).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import (
    CRSMismatchError,
    GridMismatchError,
    MissingDimensionError,
    MissingNodataError,
    NoOverlapError,
    TimeAxisError,
    VariableNotFoundError,
)

__all__ = [
    "CubeInfo",
    "get_geobox",
    "get_nodata",
    "observed_times",
    "require_same_grid",
    "require_time",
    "require_vars",
    "spatial_dims",
    "validate_cube",
]

TIME = "time"


def _names(obj: xr.Dataset | xr.DataArray) -> str:
    if isinstance(obj, xr.DataArray):
        return f"DataArray {obj.name!r}"
    return "Dataset"


def spatial_dims(obj: xr.Dataset | xr.DataArray, *, name: str = "input") -> tuple[str, str]:
    """Return the ``(y, x)``-like spatial dimension names of ``obj`` as odc-geo sees them.

    Raises
    ------
    MissingDimensionError
        When no spatial dimension pair can be found.
    """
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)

    dims = None
    try:
        dims = obj.odc.spatial_dims
    except Exception:  # odc-geo raises various errors on odd inputs
        dims = None
    if dims is None or any(d not in obj.dims for d in dims):
        raise MissingDimensionError(
            f"No spatial dimensions found on the {name} ({_names(obj)}). Found dims "
            f"{tuple(obj.dims)!r}; expected a pair such as ('y', 'x') or "
            "('latitude', 'longitude') with coordinates. Rename yours with "
            "`ds.rename({'row': 'y', 'col': 'x'})` and set the CRS with "
            "`ds.odc.assign_crs('EPSG:32633')`, or build the cube with "
            "`xfusion.cube.from_numpy(..., geobox=...)`."
        )
    return str(dims[0]), str(dims[1])


def get_geobox(obj: xr.Dataset | xr.DataArray, *, name: str = "input") -> Any:
    """Return the odc-geo ``GeoBox`` of ``obj``; raise a clear error when there is no CRS."""
    spatial_dims(obj, name=name)
    gbox = obj.odc.geobox
    if gbox is None or getattr(gbox, "crs", None) is None:
        raise GridMismatchError(
            f"The {name} has spatial dims but no CRS. Found coords {list(obj.coords)!r}. "
            "Attach one with `ds = ds.odc.assign_crs('EPSG:XXXX')` (or `ds.rio.write_crs(...)`)."
        )
    return gbox


def require_time(obj: xr.Dataset | xr.DataArray, *, name: str = "input") -> None:
    """Check that ``obj`` has a sorted, duplicate-free datetime ``time`` dimension."""
    if TIME not in obj.dims:
        raise MissingDimensionError(
            f"No time dimension on the {name}. Found dims {tuple(obj.dims)!r}. "
            "Load with `xfusion.load_cube(..., groupby='solar_day')` or add one with "
            "`ds.expand_dims(time=[np.datetime64('2020-01-01')])`."
        )
    t = obj.indexes.get(TIME) if TIME in obj.indexes else None
    if t is None:
        raise MissingDimensionError(
            f"The time dimension of the {name} has no coordinate values. "
            "Assign dates with `ds.assign_coords(time=[...])`."
        )
    if not np.issubdtype(np.asarray(t).dtype, np.datetime64):
        raise TimeAxisError(
            f"The time coordinate of the {name} is not datetime64 (found dtype {t.dtype}). "
            "Convert it with `ds['time'] = pd.to_datetime(ds['time'].values)`."
        )
    if t.has_duplicates:
        dup = sorted({str(v)[:19] for v in t[t.duplicated()]})
        raise TimeAxisError(
            f"Duplicate times on the {name}: {dup!r}. Merge them first, e.g. "
            "`ds.groupby('time').first()` or load with `groupby='solar_day'`."
        )
    if not t.is_monotonic_increasing:
        raise TimeAxisError(
            f"The time axis of the {name} is not sorted (first values "
            f"{[str(v)[:10] for v in t[:4]]!r}). Sort it with `ds.sortby('time')`."
        )


def require_vars(ds: xr.Dataset, names: Iterable[Hashable], *, role: str = "variable") -> None:
    """Raise :class:`VariableNotFoundError` listing the variables that do exist."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"Expected an xarray.Dataset with the {role} variables, found {type(ds).__name__}. "
            "Convert a DataArray with `da.to_dataset(name='...')`."
        )
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise VariableNotFoundError(
            f"{role.capitalize()} {missing[0]!r} not found on the dataset. Variables on the "
            f"dataset include {sorted(map(str, ds.data_vars))!r}."
        )


def get_nodata(var: xr.DataArray) -> float | int | None:
    """Return the declared nodata of ``var`` (``attrs['nodata']``, ``_FillValue``), or None."""
    for source in (var.attrs, var.encoding):
        for key in ("nodata", "_FillValue", "missing_value"):
            if key in source and source[key] is not None:
                val = source[key]
                return val.item() if hasattr(val, "item") else val
    return None


def _check_nodata(var: xr.DataArray, name: str) -> None:
    if np.issubdtype(var.dtype, np.integer) and get_nodata(var) is None:
        raise MissingNodataError(
            f"Variable {name!r} holds integers ({var.dtype}) but declares no nodata value, so "
            "gaps cannot be told from data. Declare it with "
            f"`ds[{name!r}].attrs['nodata'] = 0` (your fill value), or convert to float with NaN "
            f"gaps: `ds[{name!r}] = ds[{name!r}].where(ds[{name!r}] != FILL).astype('float32')`."
        )


def _crs_label(crs: Any) -> str:
    """``EPSG:XXXX`` when the CRS has an EPSG code, else its WKT (shorter messages)."""
    epsg = getattr(crs, "epsg", None)
    return f"EPSG:{epsg}" if epsg else str(crs)


def require_same_grid(
    a: xr.Dataset | xr.DataArray,
    b: xr.Dataset | xr.DataArray,
    *,
    names: tuple[str, str] = ("fine", "coarse"),
) -> None:
    """Raise when ``a`` and ``b`` are not on the same CRS and pixel grid."""
    ga, gb = get_geobox(a, name=names[0]), get_geobox(b, name=names[1])
    if ga.crs != gb.crs:
        raise CRSMismatchError(
            f"{names[0]!r} and {names[1]!r} are in different CRSs ({_crs_label(ga.crs)} vs "
            f"{_crs_label(gb.crs)}). "
            f"Reproject {names[1]!r} onto the {names[0]!r} grid with "
            f"`{names[1]}.odc.reproject(fine.odc.geobox, resampling='bilinear')`, or build the "
            "cube with `xfusion.cube.from_geotiffs(...)`, which does it for you."
        )
    if ga.shape != gb.shape or not np.allclose(
        tuple(ga.affine)[:6], tuple(gb.affine)[:6], rtol=0, atol=1e-6 * max(abs(ga.affine.a), 1e-12)
    ):
        raise GridMismatchError(
            f"{names[0]!r} and {names[1]!r} are on different pixel grids: shape "
            f"{tuple(ga.shape)} vs {tuple(gb.shape)}, transform {tuple(ga.affine)[:6]} vs "
            f"{tuple(gb.affine)[:6]}. Resample {names[1]!r} onto the {names[0]!r} grid with "
            f"`{names[1]}.odc.reproject(fine.odc.geobox, resampling='bilinear')`."
        )


@dataclass(frozen=True)
class CubeInfo:
    """What :func:`validate_cube` found out about a fusion cube."""

    dims: tuple[str, str]
    """Spatial dimension names, ``(y, x)``-like."""
    geobox: Any
    """The odc-geo GeoBox of the cube."""
    roles: dict[str, tuple[str, ...]]
    """Variable names per role (``fine``, ``coarse``, ``guides``)."""
    nodata: dict[str, float | int | None]
    """Declared nodata per variable."""


def _as_tuple(v: str | Sequence[str] | None) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(v)


def validate_cube(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str] | None = None,
    coarse: str | Sequence[str] | None = None,
    guides: str | Sequence[str] | None = None,
    require_time_dim: bool = True,
) -> CubeInfo:
    """Check that ``ds`` is a valid fusion cube for the given variable roles.

    Lazy: only metadata is inspected, no pixel is read.

    Parameters
    ----------
    ds : xarray.Dataset
        The cube.
    fine, coarse, guides : str or sequence of str, optional
        Names of the fine, coarse and guide variables.
    require_time_dim : bool
        Whether a ``time`` dimension is required (default True).

    Returns
    -------
    CubeInfo

    Raises
    ------
    MissingDimensionError, TimeAxisError, VariableNotFoundError, MissingNodataError,
    GridMismatchError
    NoOverlapError
        When every fine and coarse variable declares ``observed_<name>`` and no date has
        both a fine and a coarse observation (no pair to fuse from).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(
            f"A fusion cube is an xarray.Dataset, found {type(ds).__name__}. "
            "Convert with `da.to_dataset(name='fine')` or build one with xfusion.cube.from_numpy()."
        )
    roles = {"fine": _as_tuple(fine), "coarse": _as_tuple(coarse), "guides": _as_tuple(guides)}
    for role, names in roles.items():
        require_vars(ds, names, role=f"{role} variable")
    dims = spatial_dims(ds, name="cube")
    gbox = get_geobox(ds, name="cube")
    if require_time_dim:
        require_time(ds, name="cube")
    nodata: dict[str, float | int | None] = {}
    for names in roles.values():
        for n in names:
            var = ds[n]
            missing = [d for d in dims if d not in var.dims]
            if missing:
                raise MissingDimensionError(
                    f"Variable {n!r} lacks the spatial dims {missing!r} of the cube "
                    f"(its dims are {tuple(var.dims)!r}). Put every fine/coarse variable on the "
                    "cube's grid, e.g. with `var.odc.reproject(ds.odc.geobox)`."
                )
            if require_time_dim and TIME not in var.dims:
                raise MissingDimensionError(
                    f"Variable {n!r} has no time dimension (dims {tuple(var.dims)!r}). Add one "
                    f"with `ds[{n!r}] = ds[{n!r}].expand_dims(time=ds.time)` or build the cube "
                    "with xfusion.cube.from_geotiffs()."
                )
            _check_nodata(var, n)
            nodata[n] = get_nodata(var)
    if require_time_dim and roles["fine"] and roles["coarse"]:
        _require_pair_date(ds, roles["fine"], roles["coarse"])
    return CubeInfo(dims=dims, geobox=gbox, roles=roles, nodata=nodata)


def _dates(ds: xr.Dataset, mask: np.ndarray) -> list[str]:
    out = [str(v)[:10] for v in np.asarray(ds.indexes[TIME])[mask]]
    return out if len(out) <= 12 else [*out[:6], "...", *out[-6:]]


def _require_pair_date(ds: xr.Dataset, fine: Sequence[str], coarse: Sequence[str]) -> None:
    """Raise :class:`NoOverlapError` when declared availability leaves no (fine, coarse) pair."""
    f_obs = [observed_times(ds, n) for n in fine]
    c_obs = [observed_times(ds, n) for n in coarse]
    if any(o is None for o in (*f_obs, *c_obs)):
        return  # availability not declared: nothing can be said without reading pixels
    f_all = np.logical_and.reduce([o for o in f_obs if o is not None])
    c_all = np.logical_and.reduce([o for o in c_obs if o is not None])
    if not np.any(f_all & c_all):
        raise NoOverlapError(
            f"No date has both a fine and a coarse observation, so there is no pair to fuse "
            f"from. Fine {list(fine)!r} observed on {_dates(ds, f_all)!r}; coarse "
            f"{list(coarse)!r} observed on {_dates(ds, c_all)!r}. Add a coarse image on a "
            "fine date (or a fine image on a coarse date); if the observed_* coordinates are "
            "wrong, recompute them with `xfusion.cube.mark_observed(ds)`."
        )


def observed_times(ds: xr.Dataset, name: str) -> np.ndarray | None:
    """Return the boolean ``observed_<name>`` coordinate along time, if the cube declares it."""
    key = f"observed_{name}"
    if key in ds.coords and ds[key].dims == (TIME,):
        return np.asarray(ds[key].values, dtype=bool)
    return None
