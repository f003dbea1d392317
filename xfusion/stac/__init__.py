"""STAC: search, signing, reading, sensor presets, and cubes loaded from items.

* :func:`search`: items from the Planetary Computer (signed) or any STAC API by URL.
* :func:`load_cube`: items of one collection as a cube of physical values (odc-stac
  underneath; scale/offset, nodata, QA masks from the presets of :mod:`xfusion.stac.presets`),
  :func:`band_info` the per-band lookup behind it.
* :func:`sign_items` / :func:`sign_href`: (re-)sign Planetary Computer asset URLs just before
  a load; long runs call it before every batch (tokens expire after about 45 minutes).
* :func:`load_pair`: a fine and a coarse collection as one fusion cube on the fine grid;
  :func:`clear_pairs` / :func:`clear_targets` pick dates from it.
* :class:`LoadReport`: the reads that failed during a load with ``fail_on_error=False``.

Heavy dependencies (pystac-client, planetary-computer, odc-stac) are imported on first use.
"""

from __future__ import annotations

from typing import Any

from xfusion.stac._grid import grid_footprint
from xfusion.stac._items import BandInfo, band_info
from xfusion.stac._pair import (
    band_pairs,
    clear_fractions,
    clear_pairs,
    clear_targets,
    item_times,
    items_and_preset,
    load_pair,
)
from xfusion.stac._search import search
from xfusion.stac._sign import (
    PC_STAC_URL,
    has_subscription_key,
    is_blob_href,
    sign_href,
    sign_items,
    token_expiry,
)
from xfusion.stac.load import clear_fraction, load_cube

__all__ = [
    "PC_STAC_URL",
    "BandInfo",
    "FailedRead",
    "LoadReport",
    "band_info",
    "band_pairs",
    "clear_fraction",
    "clear_fractions",
    "clear_pairs",
    "clear_targets",
    "grid_footprint",
    "has_subscription_key",
    "is_blob_href",
    "item_times",
    "items_and_preset",
    "load_cube",
    "load_pair",
    "search",
    "sign_href",
    "sign_items",
    "token_expiry",
]


def __getattr__(name: str) -> Any:
    """``LoadReport``/``FailedRead`` live with the odc-stac reader, imported on first use."""
    if name in ("LoadReport", "FailedRead"):
        from xfusion.stac import _read

        return getattr(_read, name)
    raise AttributeError(f"module 'xfusion.stac' has no attribute {name!r}")
