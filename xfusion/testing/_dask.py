"""Laziness checks for tests: fail on any hidden dask compute."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask

__all__ = ["CountingScheduler", "assert_lazy", "raise_if_dask_computes"]


class CountingScheduler:
    """A dask scheduler that counts calls and raises past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computations were scheduled: {self.total_computes} > "
                f"{self.max_computes} (the code under test is not lazy)"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Context manager that raises ``RuntimeError`` if dask computes more than allowed.

    Examples
    --------
    >>> with raise_if_dask_computes():
    ...     out = ds.fusion.baseline(fine="fine", coarse="coarse")  # doctest: +SKIP
    """
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


def assert_lazy(obj: Any) -> None:
    """Assert that every data variable of ``obj`` is dask-backed."""
    import xarray as xr

    arrays = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    for arr in arrays:
        if not dask.is_dask_collection(arr.data):
            raise AssertionError(f"{arr.name!r} is not dask-backed (it was computed eagerly)")
