"""How STARFM chooses the pair date(s) of each target (see :func:`xfusion.methods.starfm.starfm`,
``pairs=``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from xfusion.cube.roles import match_times, select_bracket, select_pairs
from xfusion.cube.validate import TIME, observed_times
from xfusion.errors import InvalidParameterError, NoOverlapError, TimeAxisError

NAME = "starfm"

_PAIR_RULES = ("nearest", "before", "after", "bracket")


def _fmt_dates(ds: xr.Dataset, idx: Any) -> list[str]:
    times = np.asarray(ds.indexes[TIME].values, dtype="datetime64[ns]")
    return [str(np.datetime64(t, "D")) for t in times[np.asarray(idx, dtype=np.intp)]]


def _pair_dates(ds: xr.Dataset, roles: Any) -> list[str]:
    return _fmt_dates(ds, _pair_positions(ds, roles))


def _is_date_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and not any(
        isinstance(v, tuple | list) for v in value
    )


def _choose_pairs(
    ds: xr.Dataset, roles: Any, tidx: np.ndarray, pairs: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pair positions per target: ``(first, second)``, ``second`` None for one pair."""
    if isinstance(pairs, str) and pairs in ("nearest", "before"):
        try:
            return select_pairs(ds, roles, tidx, "before", method=NAME), None
        except NoOverlapError:
            bad = [t for t in tidx if not any(p < t for p in _pair_positions(ds, roles))]
            raise NoOverlapError(
                f"starfm() found no pair (a date with both fine and coarse observed) before the "
                f"target(s) {_fmt_dates(ds, bad)!r}; pairs={pairs!r} predicts each target from "
                f"the nearest pair BEFORE it. Pair dates: {_pair_dates(ds, roles)!r}. Use "
                "pairs='after' (the nearest pair after), explicit pairs=[...], or drop those "
                "targets."
            ) from None
    per_target_brackets = (
        isinstance(pairs, list)
        and bool(pairs)
        and all(isinstance(p, tuple | list) and _is_date_pair(tuple(p)) for p in pairs)
    )
    bracket = isinstance(pairs, str) and pairs == "bracket"
    if bracket or _is_date_pair(pairs) or per_target_brackets:
        if per_target_brackets:
            pairs = [tuple(p) for p in pairs]
        try:
            return select_bracket(ds, roles, tidx, pairs, method=NAME)
        except NoOverlapError:
            pos = _pair_positions(ds, roles)
            bad = [
                t for t in tidx if not (any(p < t for p in pos) and any(p > t for p in pos))
            ]
            raise NoOverlapError(
                f"starfm() two-pair mode (pairs='bracket') needs a pair (a date with both fine "
                f"and coarse observed) before AND after every target, but the target(s) "
                f"{_fmt_dates(ds, bad)!r} lack one side. Pair dates: "
                f"{_pair_dates(ds, roles)!r}. Use pairs='nearest' (one pair, before the "
                "target), explicit (before, after) dates, or drop those targets."
            ) from None
    if isinstance(pairs, Mapping) and pairs and all(_is_date_pair(v) for v in pairs.values()):
        lookup = {int(match_times(ds, k, what="target in pairs=")[0]): v for k, v in pairs.items()}
        missing = [t for t in tidx if int(t) not in lookup]
        if missing:
            raise TimeAxisError(
                f"pairs= maps targets to (before, after) pairs but has no entry for target(s) "
                f"{_fmt_dates(ds, missing)!r}."
            )
        return select_bracket(ds, roles, tidx, [lookup[int(t)] for t in tidx], method=NAME)
    if isinstance(pairs, str):  # "after", a date, or an unknown rule
        try:
            return select_pairs(ds, roles, tidx, pairs, method=NAME), None
        except InvalidParameterError:
            raise InvalidParameterError(
                f"Unknown pairs={pairs!r} for starfm(). Choose one of {list(_PAIR_RULES)!r}, "
                "or give pair dates ('YYYY-MM-DD'), or (before, after) tuples for two-pair mode."
            ) from None
    return select_pairs(ds, roles, tidx, pairs, method=NAME), None


def _pair_positions(ds: xr.Dataset, roles: Any) -> np.ndarray:
    ok = np.ones(ds.sizes[TIME], dtype=bool)
    for n in (*roles.fine, *roles.coarse):
        obs = observed_times(ds, n)
        if obs is not None:
            ok &= obs
    return np.flatnonzero(ok)
