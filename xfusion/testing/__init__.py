"""Public testing helpers: synthetic scenes with known truth, local STAC catalogs, laziness checks.

Import explicitly (``import xfusion.testing``); ``import xfusion`` does not load it.
"""

from __future__ import annotations

from xfusion.testing._dask import assert_lazy, raise_if_dask_computes

__all__ = ["assert_lazy", "raise_if_dask_computes"]
