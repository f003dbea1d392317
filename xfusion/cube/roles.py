"""Roles of a fusion cube's variables, target/pair selection, stacking and result assembly.

What every method and trainer reads from a fusion cube: which variables are fine and coarse
(:func:`resolve_roles`), which dates are targets and which serve as pairs, the variables
stacked into arrays, and the result rebuilt as a Dataset (:func:`assemble_result`).

A fusion method predicts the fine variable(s) at *target* times from *pairs*: dates where both
fine and coarse are observed. Availability comes from the cube's boolean ``observed_<name>``
coordinates (set by the builders of :mod:`xfusion.cube`), never from reading pixels, so every
function here is lazy.

Selection rules (:func:`select_pairs`):

``"nearest"``
    The nearest pair strictly before the target; when there is none before, the nearest one
    strictly after. (The target date itself is never its own pair, so a date that has a fine
    image can be predicted for validation.)
``"before"`` / ``"after"``
    The nearest pair strictly before / after the target, or an error.
explicit dates
    One date for every target, one date per target, or a mapping target → pair date.

Two-pair methods (STARFM with two pairs, STTFN) use :func:`select_bracket`: the nearest pair
strictly before AND the nearest strictly after each target.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeAlias

import numpy as np
import xarray as xr

from xfusion.cube.attrs import output_attrs
from xfusion.cube.build import to_datetime64
from xfusion.cube.validate import (
    TIME,
    get_nodata,
    observed_times,
    require_same_grid,
    spatial_dims,
    validate_cube,
)
from xfusion.errors import (
    InvalidParameterError,
    MissingDimensionError,
    NoOverlapError,
    TimeAxisError,
)

__all__ = [
    "require_band_pairs",
    "PAIR_RULES",
    "PairRule",
    "Roles",
    "apply_blockwise",
    "as_names",
    "assemble_result",
    "float_data",
    "match_times",
    "require_choice",
    "resolve_roles",
    "select_bracket",
    "select_pairs",
    "select_targets",
    "sort_targets",
    "stack_vars",
    "take_time",
]

PairRule: TypeAlias = Literal["nearest", "before", "after"]
"""How a method picks its pair date per target (see the module docstring)."""

PAIR_RULES: tuple[str, ...] = ("nearest", "before", "after")

_NODATA_KEYS = ("nodata", "_FillValue", "missing_value")


# --------------------------------------------------------------------------------------------
# roles and variables


def as_names(value: str | Sequence[str] | None, *, role: str) -> tuple[str, ...]:
    """Return a variable-name argument (a name or a list of names) as a tuple of str."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise InvalidParameterError(
            f"`{role}=` must be a variable name or a list of names, found {value!r}."
        ) from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InvalidParameterError(f"`{role}=` must hold variable names (str), found {bad[0]!r}.")
    return names


@dataclass(frozen=True)
class Roles:
    """Fine and coarse variable names of a call, paired by position, and the cube's dims."""

    fine: tuple[str, ...]
    """Fine variable names."""
    coarse: tuple[str, ...]
    """Coarse variable names, ``coarse[i]`` paired with ``fine[i]``."""
    dims: tuple[str, str]
    """Spatial dims of the cube, ``(y, x)``-like."""


def resolve_roles(
    ds: xr.Dataset,
    fine: str | Sequence[str],
    coarse: str | Sequence[str],
    *,
    method: str,
) -> Roles:
    """Validate the cube for ``fine``/``coarse`` and return their names paired by position.

    Raises
    ------
    InvalidParameterError
        Empty role, or different numbers of fine and coarse names.
    VariableNotFoundError, MissingDimensionError, TimeAxisError, MissingNodataError,
    GridMismatchError, NoOverlapError
        From :func:`xfusion.cube.validate_cube`.
    """
    f = as_names(fine, role="fine")
    c = as_names(coarse, role="coarse")
    for role, names in (("fine", f), ("coarse", c)):
        if not names:
            raise InvalidParameterError(
                f"{method}() needs at least one {role} variable; `{role}=` is empty. Pass e.g. "
                f"`{role}='{role}'` or `{role}=['{role}_red', '{role}_nir']`."
            )
    if len(f) != len(c):
        raise InvalidParameterError(
            f"{method}() pairs fine and coarse variables by position, but {len(f)} fine "
            f"({list(f)!r}) and {len(c)} coarse ({list(c)!r}) names were given. Give as many "
            "coarse as fine names, in the same band order."
        )
    info = validate_cube(ds, fine=f, coarse=c)
    for fn, cn in zip(f, c, strict=True):
        fd = set(ds[fn].dims)
        cd = set(ds[cn].dims)
        if fd != cd:
            raise MissingDimensionError(
                f"Fine variable {fn!r} has dims {tuple(ds[fn].dims)!r} but its coarse partner "
                f"{cn!r} has {tuple(ds[cn].dims)!r}. Paired variables need the same dims."
            )
    return Roles(f, c, info.dims)


def require_band_pairs(ds: xr.Dataset, roles: Roles, *, method: str) -> None:
    """Each fine/coarse pair on one grid and every variable ``(time, y, x)`` only (one
    variable per band): else a clear error that says how to split a band dimension."""
    for fname, cname in zip(roles.fine, roles.coarse, strict=True):
        require_same_grid(ds[fname], ds[cname], names=(fname, cname))
        for name in (fname, cname):
            extra = [d for d in ds[name].dims if d not in (TIME, *roles.dims)]
            if extra:
                raise MissingDimensionError(
                    f"{method}() predicts (time, {roles.dims[0]}, {roles.dims[1]}) variables, "
                    f"but {name!r} also has the dim(s) {extra!r} (dims "
                    f"{tuple(ds[name].dims)!r}). Make one variable per band, e.g. "
                    f"`ds[{name!r}].to_dataset({extra[0]!r})`, and pass the lists of names as "
                    "fine=[...] and coarse=[...]."
                )


def require_choice(value: Any, choices: Sequence[str], *, name: str, method: str) -> str:
    """Raise :class:`InvalidParameterError` listing ``choices`` unless ``value`` is one."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameterError(
            f"Unknown {name}={value!r} for {method}(). Choose one of {list(choices)!r}."
        )
    return value


def float_data(ds: xr.Dataset, name: str, *, dims: tuple[str, str] | None = None) -> xr.DataArray:
    """Return variable ``name`` as floats with NaN gaps, dims ordered ``(time, y, x, ...)``.

    Integers become float32; a declared nodata value (``attrs["nodata"]``, ``_FillValue``)
    becomes NaN. Nodata attributes and encodings are dropped (NaN means unobserved). Lazy.
    """
    var = ds[name]
    sdims = dims or spatial_dims(ds, name="cube")
    order = [d for d in (TIME, *sdims) if d in var.dims]
    var = var.transpose(*order, ...)
    nd = get_nodata(var)
    out = var if np.issubdtype(var.dtype, np.floating) else var.astype(np.float32)
    if nd is not None and not (isinstance(nd, float) and np.isnan(nd)):
        out = out.where(var != nd)
    out = out.copy(deep=False)
    out.attrs = {k: v for k, v in var.attrs.items() if k not in _NODATA_KEYS}
    out.encoding = {}
    out.name = name
    return out


def stack_vars(
    ds: xr.Dataset,
    names: Sequence[str],
    *,
    dim: str = "band",
    dims: tuple[str, str] | None = None,
) -> xr.DataArray:
    """Stack variables (as :func:`float_data`) along a new ``dim`` placed after ``time``.

    The result has dims ``(time, dim, y, x)`` (``(dim, y, x)`` for static variables) and the
    variable names as ``dim`` coordinate. Lazy on dask input.
    """
    parts = [float_data(ds, n, dims=dims) for n in names]
    out = xr.concat(parts, dim=dim, coords="minimal", compat="override", join="override")
    out = out.assign_coords({dim: list(names)})
    order = [d for d in (TIME, dim) if d in out.dims]
    return out.transpose(*order, ...)


# --------------------------------------------------------------------------------------------
# time selection


def _fmt(t: Any) -> str:
    s = str(np.datetime64(t, "s"))
    return s[:10] if s.endswith("T00:00:00") else s


def _fmt_list(values: Any, limit: int = 12) -> list[str]:
    out = [_fmt(v) for v in np.asarray(values)]
    return out if len(out) <= limit else [*out[: limit // 2], "...", *out[-limit // 2 :]]


def _time_values(ds: xr.Dataset) -> np.ndarray:
    return np.asarray(ds.indexes[TIME].values, dtype="datetime64[ns]")


def _as_list(value: Any) -> list[Any]:
    """One date-like → ``[value]``; a sequence/array/index of dates → a list."""
    if isinstance(value, (str, bytes, np.datetime64, _dt.date)):
        return [value]
    if isinstance(value, (np.ndarray, xr.DataArray)):
        arr = np.asarray(value)
        return list(arr) if arr.ndim else [arr[()]]
    try:
        return list(value)
    except TypeError:
        return [value]


def match_times(ds: xr.Dataset, values: Any, *, what: str = "target") -> np.ndarray:
    """Return the positions on ``ds.time`` of one date or a sequence of dates.

    A value matches a time exactly; a date without time of day (``"2020-03-17"``) also
    matches the single time that falls on that day (cubes grouped by solar day carry the
    acquisition time).

    Raises
    ------
    TimeAxisError
        A value is not a date, or is not on the time axis (the message lists the times).
    """
    times = _time_values(ds)
    days = times.astype("datetime64[D]")
    out = []
    for v in _as_list(values):
        t = to_datetime64(v, what=what)
        hit = np.flatnonzero(times == t)
        if hit.size == 0 and t == t.astype("datetime64[D]"):
            hit = np.flatnonzero(days == t.astype("datetime64[D]"))
        if hit.size != 1:
            raise TimeAxisError(
                f"The {what} {_fmt(t)!r} is not on the time axis of the cube"
                + (" (several times fall on that day)" if hit.size > 1 else "")
                + f". Times on the cube: {_fmt_list(times)!r}. Pick one of them, or add the "
                "date to the cube (a coarse image for a target)."
            )
        out.append(int(hit[0]))
    return np.asarray(out, dtype=np.intp)


def _observed(ds: xr.Dataset, names: Sequence[str], *, scan: bool = True) -> np.ndarray | None:
    """AND of the per-time observation flags of ``names``: the declared ``observed_<name>``
    coordinates, else (``scan``) scanned from the data once
    (:func:`xfusion.cube.build.observed_flags`); None when undeclared and not scanned."""
    from xfusion.cube.build import observed_flags

    if not names:
        return None
    if not scan:
        declared = [observed_times(ds, n) for n in names]
        if any(d is None for d in declared):
            return None
        return np.logical_and.reduce(declared)
    flags = observed_flags(ds, list(names))
    return np.logical_and.reduce([flags[n] for n in names])


def select_targets(
    ds: xr.Dataset,
    roles: Roles,
    targets: Any = None,
    *,
    method: str,
    require_coarse: bool = True,
) -> np.ndarray:
    """Return the time positions to predict.

    Default: every time where all coarse variables are observed and the fine ones are not
    (sorted). Explicit ``targets`` (one date or a sequence) must lie on the time axis and are
    returned in the given order (so explicit per-target pairs line up; sort afterwards with
    :func:`sort_targets`); when coarse availability is declared and ``require_coarse``, coarse
    must be observed there.

    Raises
    ------
    TimeAxisError
        Unknown dates, coarse not observed at a target, no availability coordinates with
        default targets, or no target found.
    """
    c_obs = _observed(ds, roles.coarse, scan=targets is None)
    if targets is None:
        f_obs = _observed(ds, roles.fine)
        assert f_obs is not None and c_obs is not None
        idx = np.flatnonzero(c_obs & ~f_obs)
        if idx.size == 0:
            raise TimeAxisError(
                f"{method}() found no date to predict: no date has a coarse observation "
                f"without a fine one. Coarse observed on {_fmt_list(_time_values(ds)[c_obs])!r}"
                f", fine on {_fmt_list(_time_values(ds)[f_obs])!r}. Pass `targets=[...]` to "
                "predict chosen dates (e.g. a fine date, to validate)."
            )
        return idx
    idx = match_times(ds, targets, what="target")
    if idx.size == 0:
        raise TimeAxisError(f"{method}() got an empty targets= list; give at least one date.")
    if len(set(idx.tolist())) != idx.size:
        raise TimeAxisError(
            f"targets= lists a date twice ({_fmt_list(_time_values(ds)[idx])!r}); give each "
            "target once."
        )
    if require_coarse and c_obs is not None and not np.all(c_obs[idx]):
        bad = _time_values(ds)[idx[~c_obs[idx]]]
        raise TimeAxisError(
            f"The coarse variables {list(roles.coarse)!r} are not observed at the target(s) "
            f"{_fmt_list(bad)!r}, so {method}() has no coarse change to use there. Coarse is "
            f"observed on {_fmt_list(_time_values(ds)[c_obs])!r}."
        )
    return idx


def sort_targets(target_idx: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort target positions (the output time axis must be sorted), carrying pair arrays along.

    Call it after the pairs are chosen: explicit per-target pairs follow the user's target order.
    """
    order = np.argsort(target_idx, kind="stable")
    return (target_idx[order], *(o[order] for o in others))


def _pair_mask(ds: xr.Dataset, roles: Roles, *, method: str, rule: str) -> np.ndarray:
    f_obs, c_obs = _observed(ds, roles.fine), _observed(ds, roles.coarse)
    assert f_obs is not None and c_obs is not None
    return f_obs & c_obs


def _no_pair(
    ds: xr.Dataset, target: int, pair_mask: np.ndarray, *, side: str, method: str
) -> NoReturn:
    times = _time_values(ds)
    raise NoOverlapError(
        f"{method}() found no pair (date with both fine and coarse observed) {side} the "
        f"target {_fmt(times[target])!r}. Pair dates: {_fmt_list(times[pair_mask])!r}. Use "
        "pairs='nearest' (either side), pass explicit `pairs=`, or drop this target."
    )


def select_pairs(
    ds: xr.Dataset,
    roles: Roles,
    target_idx: np.ndarray,
    pairs: PairRule | Any = "nearest",
    *,
    method: str,
) -> np.ndarray:
    """Return one pair time position per target (see the module docstring for the rules).

    Parameters
    ----------
    pairs : {"nearest", "before", "after"}, date-like, sequence of date-like or mapping
        The rule, one date for all targets, one date per target, or a mapping target → pair.

    Raises
    ------
    NoOverlapError
        No pair on the requested side of a target.
    TimeAxisError
        Explicit dates not on the time axis or not observed by fine and coarse, wrong number
        of explicit dates, or no availability coordinates for a rule.
    InvalidParameterError
        An unknown rule string.
    """
    n = target_idx.size
    if isinstance(pairs, str) and pairs in PAIR_RULES:
        mask = _pair_mask(ds, roles, method=method, rule=pairs)
        cand = np.flatnonzero(mask)
        out = np.empty(n, dtype=np.intp)
        for k, t in enumerate(target_idx):
            before, after = cand[cand < t], cand[cand > t]
            if pairs in ("nearest", "before") and before.size:
                out[k] = before[-1]
            elif pairs in ("nearest", "after") and after.size:
                out[k] = after[0]
            else:
                side = {"nearest": "on either side of", "before": "before", "after": "after"}
                _no_pair(ds, int(t), mask, side=side[pairs], method=method)
        return out
    if isinstance(pairs, str):
        try:
            to_datetime64(pairs, what="pair")
        except TimeAxisError:
            raise InvalidParameterError(
                f"Unknown pairs={pairs!r} for {method}(). Choose one of {list(PAIR_RULES)!r}, "
                "or give pair dates ('YYYY-MM-DD')."
            ) from None
    if isinstance(pairs, Mapping):
        times = _time_values(ds)
        lookup = {int(match_times(ds, k, what="target in pairs=")[0]): v for k, v in pairs.items()}
        missing = [_fmt(times[t]) for t in target_idx if int(t) not in lookup]
        if missing:
            raise TimeAxisError(
                f"pairs= maps targets to pairs but has no entry for target(s) {missing!r}."
            )
        idx = match_times(ds, [lookup[int(t)] for t in target_idx], what="pair")
    else:
        idx = match_times(ds, pairs, what="pair")
        if idx.size == 1:
            idx = np.repeat(idx, n)
        elif idx.size != n:
            raise TimeAxisError(
                f"pairs= gives {idx.size} dates for {n} targets; give one date for all targets "
                "or one per target (in target order), or a mapping target -> pair."
            )
    _require_pair_dates(ds, roles, idx, method=method)
    return idx


def _require_pair_dates(ds: xr.Dataset, roles: Roles, idx: np.ndarray, *, method: str) -> None:
    # explicit pair dates: checked against declared availability only (no scan: stays lazy)
    f_obs = _observed(ds, roles.fine, scan=False)
    c_obs = _observed(ds, roles.coarse, scan=False)
    times = _time_values(ds)
    ok = np.ones(times.size, dtype=bool)
    for obs in (f_obs, c_obs):
        if obs is not None:
            ok &= obs
    for role, obs, names in (("fine", f_obs, roles.fine), ("coarse", c_obs, roles.coarse)):
        if obs is not None and not np.all(obs[idx]):
            bad = np.unique(times[idx[~obs[idx]]])
            raise TimeAxisError(
                f"The {role} variables {list(names)!r} are not observed at the pair date(s) "
                f"{_fmt_list(bad)!r} given to {method}(). A pair needs both fine and coarse; "
                f"pair dates on this cube: {_fmt_list(times[ok])!r}."
            )


def select_bracket(
    ds: xr.Dataset,
    roles: Roles,
    target_idx: np.ndarray,
    pairs: Literal["bracket"] | Any = "bracket",
    *,
    method: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the pair positions before and after each target (two-pair methods).

    Parameters
    ----------
    pairs : "bracket", (date, date) or sequence of (date, date)
        ``"bracket"``: the nearest pair strictly before and the nearest strictly after each
        target. Or explicit ``(before, after)`` dates for all targets or one tuple per target.

    Raises
    ------
    NoOverlapError
        A target has no pair on one side.
    TimeAxisError, InvalidParameterError
        As :func:`select_pairs`.
    """
    n = target_idx.size
    if isinstance(pairs, str):
        if pairs != "bracket":
            raise InvalidParameterError(
                f"Unknown pairs={pairs!r} for {method}(). Use 'bracket' or explicit "
                "(before, after) dates."
            )
        mask = _pair_mask(ds, roles, method=method, rule="bracket")
        cand = np.flatnonzero(mask)
        before = np.empty(n, dtype=np.intp)
        after = np.empty(n, dtype=np.intp)
        for k, t in enumerate(target_idx):
            b, a = cand[cand < t], cand[cand > t]
            if not b.size:
                _no_pair(ds, int(t), mask, side="before", method=method)
            if not a.size:
                _no_pair(ds, int(t), mask, side="after", method=method)
            before[k], after[k] = b[-1], a[0]
        return before, after
    items = list(pairs)
    if len(items) == 2 and not isinstance(items[0], (tuple, list)):
        items = [tuple(items)] * n
    if len(items) != n or any(len(p) != 2 for p in items):
        raise TimeAxisError(
            f"pairs= must be 'bracket', one (before, after) tuple, or one tuple per target "
            f"({n}); found {pairs!r}."
        )
    before = match_times(ds, [p[0] for p in items], what="pair")
    after = match_times(ds, [p[1] for p in items], what="pair")
    _require_pair_dates(ds, roles, np.concatenate([before, after]), method=method)
    return before, after


# --------------------------------------------------------------------------------------------
# computation and result assembly


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def apply_blockwise(
    func: Callable[..., np.ndarray],
    *arrays: Any,
    name: str,
    dtype: Any,
) -> Any:
    """Apply an elementwise ``func`` to same-shaped arrays: numpy in → numpy out, else dask.

    On dask, chunks are unified and the graph layer is named ``"<name>-<token>"`` (e.g.
    ``xfusion.baseline-…``), so task names say which method they come from.
    """
    if not any(_is_dask(a) for a in arrays):
        return np.asarray(func(*arrays), dtype=dtype)
    import dask.array as da
    from dask.base import tokenize

    darrs = [a if _is_dask(a) else da.asarray(a) for a in arrays]
    ndim = darrs[0].ndim
    ind = "abcdefghij"[:ndim]
    args: list[Any] = []
    for a in darrs:
        args += [a, ind]
    token = tokenize(func, *darrs, dtype)
    return da.blockwise(func, ind, *args, dtype=dtype, name=f"{name}-{token}", align_arrays=True)


def take_time(data: Any, idx: np.ndarray) -> Any:
    """Select time positions ``idx`` along axis 0 of a numpy or dask array (lazy on dask)."""
    return data[np.asarray(idx, dtype=np.intp)]


def assemble_result(
    ds: xr.Dataset,
    data: Mapping[str, Any],
    *,
    like: Mapping[str, xr.DataArray],
    target_idx: np.ndarray,
    time_coords: Mapping[str, np.ndarray] | None = None,
) -> xr.Dataset:
    """Wrap raw prediction arrays as a Dataset on the cube grid at the target times.

    Parameters
    ----------
    data : mapping of str to array
        Output variable name → array with the dims of ``like[name]`` (``time`` first), the
        time axis holding the targets.
    like : mapping of str to xarray.DataArray
        Template per output variable (as returned by :func:`float_data`): dims, non-time
        coords and attrs are copied from it.
    target_idx : numpy.ndarray
        Time positions of the targets on ``ds``.
    time_coords : mapping of str to numpy.ndarray, optional
        Extra coordinates along ``time`` given as time *positions* on ``ds`` (e.g.
        ``{"pair_time": pair_idx}``); they become datetime64 coordinates.

    Returns
    -------
    xarray.Dataset
        ``time`` = target times; the cube's spatial coords, ``spatial_ref`` and attrs; other
        time-dependent coords taken at the targets, except ``observed_*``.
    """
    times = _time_values(ds)
    out_vars: dict[Hashable, xr.DataArray] = {}
    for name, arr in data.items():
        tmpl = like[name]
        coords: dict[Hashable, Any] = {}
        for cname, coord in tmpl.coords.items():
            if TIME not in coord.dims:
                coords[cname] = coord
            elif cname != TIME and not str(cname).startswith("observed_"):
                coords[cname] = coord.isel({TIME: target_idx})
        coords[TIME] = times[target_idx]
        for cname, pos in (time_coords or {}).items():
            coords[cname] = (TIME, times[np.asarray(pos, dtype=np.intp)])
        var = xr.DataArray(arr, dims=tmpl.dims, coords=coords, name=name,
                           attrs=output_attrs(tmpl.attrs, arr.dtype, name=name))
        grid_mapping = ds[name].encoding.get("grid_mapping") if name in ds else None
        if grid_mapping is None and "spatial_ref" in var.coords:
            grid_mapping = "spatial_ref"
        if grid_mapping is not None:
            var.encoding["grid_mapping"] = grid_mapping
        out_vars[name] = var
    return xr.Dataset(out_vars, attrs=dict(ds.attrs))
