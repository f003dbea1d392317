"""Naive fusion baselines: the fine image of a pair, or it plus the coarse change since.

They are the yardsticks every fusion method must beat, and the simplest examples of the
method conventions (roles, target/pair selection, lazy result assembly) of
:mod:`xfusion.cube.roles`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import xarray as xr

from xfusion.cube.roles import (
    PairRule,
    apply_blockwise,
    assemble_result,
    float_data,
    require_choice,
    resolve_roles,
    select_pairs,
    select_targets,
    sort_targets,
    take_time,
)

__all__ = ["BASELINE_METHODS", "BaselineMethod", "baseline"]

BaselineMethod: TypeAlias = Literal["fine-at-pair", "fine-plus-change"]
"""``"fine-at-pair"``: L1. ``"fine-plus-change"``: L1 + (M2 - M1)."""

BASELINE_METHODS: tuple[str, ...] = ("fine-at-pair", "fine-plus-change")


def _fine_at_pair(l1: np.ndarray) -> np.ndarray:
    return l1.copy()


def _fine_plus_change(l1: np.ndarray, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    return l1 + (m2 - m1)


def baseline(
    ds: xr.Dataset,
    /,
    *,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    targets: Any = None,
    pairs: PairRule | Any = "nearest",
    method: BaselineMethod = "fine-plus-change",
) -> xr.Dataset:
    """Predict fine images at target dates with a naive baseline.

    For each target time ``t2`` a pair date ``t1`` (fine and coarse both observed) is chosen,
    and the prediction is

    * ``"fine-at-pair"``: ``L1``, the fine image at the pair (persistence);
    * ``"fine-plus-change"``: ``L1 + (M2 - M1)``, the fine image plus the coarse change between
      the pair and the target (coarse already resampled onto the fine grid).

    Lazy: on dask input the result is a dask graph (layers named ``xfusion.baseline-…``) and
    nothing is computed; numpy input gives numpy output with the same values.

    Parameters
    ----------
    ds : xarray.Dataset
        A fusion cube (see :func:`xfusion.cube.validate_cube`): ``time`` plus the spatial dims,
        fine and coarse variables on one grid, NaN where unobserved.
    fine, coarse : str or list of str
        Fine and coarse variable names; lists are paired by position (multi-band).
    targets : date-like or sequence of date-like, optional
        Times to predict, on the cube's time axis (a ``"YYYY-MM-DD"`` date also matches the
        one time falling on that day). Default: every time where coarse is observed and fine
        is not, per the ``observed_<name>`` coordinates.
    pairs : {"nearest", "before", "after"}, date-like, sequence of date-like or mapping
        How the pair of each target is chosen. ``"nearest"`` (default): the nearest pair
        strictly before the target, or, when there is none before, the nearest strictly
        after. ``"before"``/``"after"``: only that side. A target is never its own pair, so a
        date with a fine image can be predicted for validation. Explicit pair dates: one for
        all targets, one per target (in target order), or a mapping target → pair.
    method : {"fine-plus-change", "fine-at-pair"}
        The baseline (see above).

    Returns
    -------
    xarray.Dataset
        One variable per fine name (same names, attrs, float dtype; integer inputs become
        float32 with NaN for nodata), dims ``(time, y, x)`` with ``time`` = the targets, a
        coordinate ``pair_time`` along ``time`` (the pair used for each target), the cube's
        spatial coords, ``spatial_ref`` and attrs. NaN where an input is NaN.

    Raises
    ------
    InvalidParameterError
        Unknown ``method`` or ``pairs`` rule, fine/coarse lists of different lengths.
    TimeAxisError
        Targets or pair dates not on the time axis, coarse not observed at a target, no
        ``observed_*`` coordinates while targets/pairs are left to be chosen (compute them
        with ``xfusion.cube.mark_observed(ds)``), no date to predict.
    NoOverlapError
        No pair on the requested side of a target, or no pair date at all.
    VariableNotFoundError, MissingDimensionError, MissingNodataError, GridMismatchError
        From :func:`xfusion.cube.validate_cube`.

    See Also
    --------
    xfusion.cube.from_geotiffs : build a cube from dated GeoTIFFs.
    xfusion.cube.mark_observed : compute ``observed_<name>`` on cubes built elsewhere.

    Notes
    -----
    ``fine-plus-change`` is exact when the fine-scale change equals the coarse change (a
    uniform change); STARFM's prediction reduces to it on constant fields. Both baselines
    read only the fine and coarse images at the pair and (for ``fine-plus-change``) the
    coarse image at the target, pixel by pixel, so memory per task is one chunk of each.

    Examples
    --------
    >>> import numpy as np
    >>> from affine import Affine
    >>> from odc.geo.geobox import GeoBox
    >>> from xfusion.cube import from_numpy
    >>> gbox = GeoBox((2, 3), Affine(30, 0, 500000, 0, -30, 4000000), "EPSG:32633")
    >>> fine = np.stack([np.full((2, 3), 0.2), np.full((2, 3), np.nan)])
    >>> coarse = np.stack([np.full((2, 3), 0.25), np.full((2, 3), 0.3)])
    >>> ds = from_numpy(
    ...     {"fine": fine, "coarse": coarse},
    ...     geobox=gbox,
    ...     times=["2020-03-08", "2020-03-17"],
    ...     observed={"fine": [True, False], "coarse": [True, True]},
    ... )
    >>> out = baseline(ds, fine="fine", coarse="coarse")
    >>> out.fine.values.round(3).tolist()
    [[[0.25, 0.25, 0.25], [0.25, 0.25, 0.25]]]
    >>> str(out.pair_time.values[0])[:10]
    '2020-03-08'
    """
    name = "baseline"
    require_choice(method, BASELINE_METHODS, name="method", method=name)
    roles = resolve_roles(ds, fine, coarse, method=name)
    tidx = select_targets(
        ds, roles, targets, method=name, require_coarse=method == "fine-plus-change"
    )
    pidx = select_pairs(ds, roles, tidx, pairs, method=name)
    tidx, pidx = sort_targets(tidx, pidx)

    like: dict[str, xr.DataArray] = {}
    data: dict[str, Any] = {}
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        f = float_data(ds, fname, dims=roles.dims)
        like[fname] = f
        l1 = take_time(f.data, pidx)
        if method == "fine-at-pair":
            data[fname] = apply_blockwise(_fine_at_pair, l1, name=f"xfusion.{name}", dtype=f.dtype)
            continue
        c = float_data(ds, cname, dims=roles.dims).transpose(*f.dims)
        dtype = np.result_type(f.dtype, c.dtype)
        m1 = take_time(c.data, pidx)
        m2 = take_time(c.data, tidx)
        data[fname] = apply_blockwise(
            _fine_plus_change, l1, m1, m2, name=f"xfusion.{name}", dtype=dtype
        )
    return assemble_result(ds, data, like=like, target_idx=tidx, time_coords={"pair_time": pidx})
