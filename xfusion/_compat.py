"""Optional dependencies: probe without importing, import lazily with an install hint."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

from xfusion.errors import MissingOptionalDependency

__all__ = ["has", "lazy_import"]

_EXTRA = {"torch": "torch", "safetensors": "torch", "dask_cuda": "gpu"}


@cache
def has(name: str) -> bool:
    """Return True when module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def lazy_import(name: str, *, purpose: str = "this function", extra: str | None = None) -> ModuleType:
    """Import ``name`` or raise :class:`MissingOptionalDependency` naming the pip extra.

    Parameters
    ----------
    name : str
        Module to import, e.g. ``"torch"``.
    purpose : str
        What needs it, used in the message (e.g. ``"sttfn()"``).
    extra : str, optional
        The xfusion extra that installs it; defaults to a known mapping.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        extra = extra or _EXTRA.get(name.split(".")[0], "all")
        raise MissingOptionalDependency(
            f"{name} is required for {purpose} but could not be imported ({err}). "
            f"Install it with: pip install 'xfusion[{extra}]'"
        ) from err
