"""Attributes of method outputs: what stays from the input, what is dropped, what is added.

An output is new data: GDAL's ``STATISTICS_*`` of the input file no longer describe it, and
the packing attributes of an integer file (``scale_factor``, ``add_offset``, ``_FillValue``,
``valid_range``, ``nodata``...) do not apply to float values with NaN gaps (a reader applying
them again would rescale the data). ``units`` and ``long_name`` stay, and a CF
``standard_name`` is added where the quantity is recognisable (land surface temperature in
kelvin, surface reflectance).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["PACKING_ATTRS", "output_attrs", "standard_name"]

#: attributes describing how values are stored in a file, not what they mean
PACKING_ATTRS: tuple[str, ...] = (
    "scale_factor", "add_offset", "_FillValue", "missing_value", "valid_range", "valid_min",
    "valid_max", "_Unsigned", "nodata", "scales", "offsets",
)
_STALE_PREFIXES: tuple[str, ...] = ("STATISTICS_",)
_REFLECTANCE_WORDS = ("reflectance", "nbar")
_REFLECTANCE_NAMES = {"coastal", "blue", "green", "red", "nir", "nir08", "nir09", "swir16",
                      "swir22", "rededge1", "rededge2", "rededge3", "rededge", "pan"}
_TEMPERATURE_WORDS = ("temperature", "lst")


def standard_name(name: Hashable | None, attrs: Mapping[str, Any]) -> str | None:
    """The CF standard name of a variable when its attributes make it unambiguous.

    ``surface_temperature`` for a temperature in kelvin (``units`` "K"/"kelvin" and "lst" or
    "temperature" in the name or ``long_name``); ``surface_bidirectional_reflectance`` for a
    dimensionless reflectance (``long_name`` says reflectance, or a band name such as
    ``red``/``fine_nir08`` with ``units`` "1" or none). None otherwise.
    """
    if attrs.get("standard_name"):
        return str(attrs["standard_name"])
    units = str(attrs.get("units", "")).strip().lower()
    text = f"{name or ''} {attrs.get('long_name', '')}".lower()
    if units in ("k", "kelvin") and any(w in text for w in _TEMPERATURE_WORDS):
        return "surface_temperature"
    if units in ("", "1", "none", "dimensionless", "reflectance"):
        if "uncertainty" in text or "quality" in text:
            return None
        if any(w in text for w in _REFLECTANCE_WORDS):
            return "surface_bidirectional_reflectance"
        parts = str(name or "").lower().replace("-", "_").split("_")
        if parts and parts[-1] in _REFLECTANCE_NAMES and units in ("", "1"):
            return "surface_bidirectional_reflectance"
    return None


def output_attrs(attrs: Mapping[str, Any], dtype: Any, *, name: Hashable | None = None,
                 long_name: str | None = None) -> dict[str, Any]:
    """The attributes of an output variable made from an input's ``attrs``.

    Drops GDAL statistics always and the packing attributes (:data:`PACKING_ATTRS`) on float
    outputs (integer outputs keep them: they are still packed); keeps everything else
    (``units``, ``long_name``...); sets ``long_name`` when given and adds the CF
    ``standard_name`` when :func:`standard_name` recognises the quantity.
    """
    out = {k: v for k, v in attrs.items()
           if not any(str(k).startswith(p) for p in _STALE_PREFIXES)}
    if np.issubdtype(np.dtype(dtype), np.floating):
        for k in PACKING_ATTRS:
            out.pop(k, None)
    if long_name is not None:
        out["long_name"] = long_name
    std = standard_name(name, out)
    if std is not None:
        out["standard_name"] = std
    return out
