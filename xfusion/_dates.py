"""One date parser for every date xfusion accepts (CLI ``DATE=PATH``, targets, pairs, jobs).

Forms read, all as UTC:

* ISO dates and times: ``2016-02-05``, ``2016-02-05T10:30``, ``2016-02-05 10:30:00Z``,
  ``2016-02-05T10:30:00+02:00`` (converted to UTC);
* compact dates, as in Landsat file names: ``20160205`` (``YYYYMMDD``);
* day of year, as in MODIS names: ``2016-036``, ``2016036`` (``YYYY-DDD``, ``YYYYDDD``) and
  ``A2016036``;
* ``datetime.date``/``datetime.datetime`` (aware ones converted to UTC), ``numpy.datetime64``,
  ``pandas.Timestamp``, and integers ``20160205`` / ``2016036`` (YAML reads unquoted compact
  dates as numbers).

Anything else is ambiguous or not a date (``02/05/2016``, ``2016-02``, ``16-02-05``) and raises
:class:`~xfusion.errors.TimeAxisError` naming the value and the forms that work. Satellite
dates outside 1972-2100 are refused (Landsat 1 flew in 1972): a wrong form read as a far year
is caught there instead of silently labelling a result.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import numpy as np

from xfusion.errors import TimeAxisError

__all__ = ["SATELLITE_YEARS", "parse_date"]

SATELLITE_YEARS = (1972, 2100)
"""Years a satellite date may fall in (inclusive)."""

_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DOY = re.compile(r"^A?(\d{4})-?(\d{3})$")
_FORMS = (
    "write it as YYYY-MM-DD (ISO, optionally with a time: 2016-02-05T10:30Z), YYYYMMDD "
    "(20160205), or a day of year YYYY-DDD / YYYYDDD (2016-036)"
)


def _fail(value: Any, what: str, why: str) -> TimeAxisError:
    return TimeAxisError(f"The {what} {value!r} {why}; {_FORMS}.")


def _from_parts(value: Any, what: str, year: int, month: int, day: int) -> _dt.datetime:
    try:
        return _dt.datetime(year, month, day)
    except ValueError as err:
        raise _fail(value, what, f"is not a calendar date ({err})") from None


def _from_doy(value: Any, what: str, year: int, doy: int) -> _dt.datetime:
    days = 366 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 365
    if not 1 <= doy <= days:
        raise _fail(value, what, f"has day of year {doy}, outside 1-{days} for {year}")
    return _dt.datetime(year, 1, 1) + _dt.timedelta(days=doy - 1)


def _parse_text(text: str, value: Any, what: str) -> np.datetime64:
    s = text.strip()
    m = _ISO.match(s)
    if m:
        y, mo, d, hh, mm, ss, frac, tz = m.groups()
        base = _from_parts(value, what, int(y), int(mo), int(d))
        if hh is not None:
            try:
                base = base.replace(hour=int(hh), minute=int(mm), second=int(ss or 0))
            except ValueError as err:
                raise _fail(value, what, f"has an invalid time of day ({err})") from None
            if frac:
                base += _dt.timedelta(microseconds=round(float(frac) * 1e6))
        if tz not in (None, "Z"):
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            offset = _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            base -= sign * offset
        return np.datetime64(base, "ns")
    m = _COMPACT.match(s)
    if m:
        return np.datetime64(_from_parts(value, what, *(int(g) for g in m.groups())), "ns")
    m = _DOY.match(s)
    if m:
        return np.datetime64(_from_doy(value, what, int(m.group(1)), int(m.group(2))), "ns")
    if re.match(r"^\d{4}(-\d{2})?$", s):
        raise _fail(value, what, "names a year or a month, not a day")
    raise _fail(value, what, "is not a date xfusion can read unambiguously")


def parse_date(value: Any, *, what: str = "date", satellite: bool = True) -> np.datetime64:
    """Read a date-like value as ``numpy.datetime64[ns]`` (UTC).

    Parameters
    ----------
    value : str, int, datetime.date, datetime.datetime, numpy.datetime64 or pandas.Timestamp
        The date (see the module docstring for the text forms).
    what : str, default "date"
        What the value is, for error messages (``"target"``, ``"--fine date"``...).
    satellite : bool, default True
        Refuse dates outside :data:`SATELLITE_YEARS`.

    Returns
    -------
    numpy.datetime64

    Raises
    ------
    TimeAxisError
        Not a date, ambiguous, NaT, or (``satellite``) outside 1972-2100.

    Examples
    --------
    >>> str(parse_date("20160205"))[:10], str(parse_date("2016-036"))[:10]
    ('2016-02-05', '2016-02-05')
    """
    if isinstance(value, bool):
        raise _fail(value, what, "is a boolean, not a date")
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise TimeAxisError(f"The {what} {value!r} is not a valid date (NaT). Give a real date.")
        out = value.astype("datetime64[ns]")
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC).replace(tzinfo=None)
        out = np.datetime64(value, "ns")
    elif isinstance(value, _dt.date):
        out = np.datetime64(value.isoformat(), "ns")
    elif isinstance(value, str):
        out = _parse_text(value, value, what)
    elif isinstance(value, (int, np.integer)):
        out = _parse_text(str(int(value)), value, what)
    elif hasattr(value, "to_datetime64"):  # pandas.Timestamp
        import pandas as pd

        if pd.isna(value):
            raise TimeAxisError(f"The {what} {value!r} is not a valid date (NaT). Give a real date.")
        if getattr(value, "tzinfo", None) is not None:
            value = value.tz_convert("UTC").tz_localize(None)
        out = np.datetime64(value.to_datetime64(), "ns")
    else:
        raise TimeAxisError(
            f"Could not read the {what} {value!r} (a {type(value).__name__}) as a date; give "
            "a string, a datetime.date/datetime or a numpy.datetime64."
        )
    if np.isnat(out):
        raise TimeAxisError(f"The {what} {value!r} is not a valid date (NaT). Give a real date.")
    if satellite:
        year = int(str(np.datetime64(out, "Y")))
        lo, hi = SATELLITE_YEARS
        if not lo <= year <= hi:
            raise TimeAxisError(
                f"The {what} {value!r} reads as {np.datetime64(out, 'D')!s}, outside the "
                f"satellite era ({lo}-{hi}): check its form; {_FORMS}."
            )
    return out
