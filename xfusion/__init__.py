"""xfusion: lazy, scalable satellite image fusion on xarray/Dask datacubes.

Importing the package registers the ``.fusion`` accessor on xarray objects. It never imports
torch: neural methods import it when they are called.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from xfusion import accessor as _accessor  # noqa: F401  (registers .fusion)
from xfusion import errors
from xfusion.cube import combine, from_geotiffs, from_numpy, mark_observed, validate_cube
from xfusion.cube.stac import load_cube
from xfusion.methods.baseline import baseline
from xfusion.methods.starfm import starfm
from xfusion.stac import load_pair

_SUBMODULES = ("config", "cube", "engine", "io", "metrics", "stac", "testing")


def __getattr__(name: str) -> object:
    """Import the public submodules on first access (``xfusion.io.to_zarr(...)``)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"xfusion.{name}")
    raise AttributeError(f"module 'xfusion' has no attribute {name!r}")


try:
    __version__ = version("xfusion")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "baseline",
    "combine",
    "errors",
    "from_geotiffs",
    "from_numpy",
    "load_cube",
    "load_pair",
    "mark_observed",
    "starfm",
    "validate_cube",
]
