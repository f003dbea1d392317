"""The ``.fusion`` accessor on :class:`xarray.Dataset` and :class:`xarray.DataArray`.

Each accessor method is a thin delegate to a function of the functional API, with the same
docstring: ``ds.fusion.starfm(...)`` is ``xfusion.starfm(ds, ...)``. The accessor holds no
state (xarray caches accessors per object, and an error in ``__init__`` would surface as an
opaque ``RuntimeError``), so validation happens inside the functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import xarray as xr

from xfusion.cube.validate import validate_cube
from xfusion.methods.baseline import baseline
from xfusion.methods.composite import composite
from xfusion.methods.dms import dms
from xfusion.methods.estarfm import estarfm
from xfusion.methods.fitfc import fitfc
from xfusion.methods.fsdaf import fsdaf
from xfusion.methods.gapfill import gapfill
from xfusion.methods.harmonize import harmonize
from xfusion.methods.starfm import starfm
from xfusion.methods.sttfn import sttfn
from xfusion.methods.super_resolve import super_resolve

__all__ = ["FusionDataArrayAccessor", "FusionDatasetAccessor"]

F = TypeVar("F", bound=Callable[..., Any])


def _delegate(func: Callable[..., Any]) -> Callable[..., Any]:
    """Make an accessor method that calls ``func(self._obj, ...)`` with ``func``'s docstring."""

    @functools.wraps(func)
    def method(self: _FusionBase, *args: Any, **kwargs: Any) -> Any:
        return func(self._obj, *args, **kwargs)

    return method


class _FusionBase:
    """Shared base: stores the wrapped object and nothing else."""

    def __init__(self, xarray_obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = xarray_obj


@xr.register_dataset_accessor("fusion")
class FusionDatasetAccessor(_FusionBase):
    """Fusion methods on a fusion cube (``ds.fusion.<method>(...)``)."""

    validate = _delegate(validate_cube)
    baseline = _delegate(baseline)
    gapfill = _delegate(gapfill)
    starfm = _delegate(starfm)
    estarfm = _delegate(estarfm)
    fitfc = _delegate(fitfc)
    fsdaf = _delegate(fsdaf)
    sttfn = _delegate(sttfn)
    super_resolve = _delegate(super_resolve)
    dms = _delegate(dms)
    harmonize = _delegate(harmonize)
    composite = _delegate(composite)


@xr.register_dataarray_accessor("fusion")
class FusionDataArrayAccessor(_FusionBase):
    """Methods whose input is one variable (``da.fusion.<method>(...)``).

    ``super_resolve`` and ``dms`` (a coarse image and a guide), ``composite`` (a time series)
    and ``gapfill`` (an optical series; the SAR-guided default also needs the SAR features,
    so give a Dataset for it, or ``sar=[...]`` DataArrays). The fusion methods (``baseline``,
    ``starfm``, ``sttfn``, ``estarfm``, ``fsdaf``, ``fitfc``) read a fine AND a coarse variable,
    and ``harmonize`` several bands: they live on ``ds.fusion`` only.
    """

    super_resolve = _delegate(super_resolve)
    dms = _delegate(dms)
    composite = _delegate(composite)
