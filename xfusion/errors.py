"""Exception hierarchy of xfusion.

Every error raised on bad user input is an :class:`XFusionError` that also subclasses the
natural builtin (``ValueError``, ``KeyError``, ``ImportError``...), so existing ``except``
clauses keep working. Messages say what was wrong, what was found, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CRSMismatchError",
    "EmptySeriesWarning",
    "CheckpointError",
    "ChunkingError",
    "GridMismatchError",
    "InvalidParameterError",
    "MissingDimensionError",
    "MissingNodataError",
    "MissingOptionalDependency",
    "NotEnoughDataError",
    "NoOverlapError",
    "RasterReadError",
    "OutputWriteError",
    "EmptyPredictionError",
    "EmptyPredictionWarning",
    "IncompleteStoreWarning",
    "TimeAxisError",
    "VariableNotFoundError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "XFusionError",
    "XFusionWarning",
    # STAC search, signing and reads (xfusion.stac, load_cube, load_pair)
    "AssetReadError",
    "EmptySearchError",
    "SigningError",
    "StacApiError",
    "StacError",
    "UnknownCollectionError",
    # continental runs (xfusion.run, xfusion.cluster)
    "ClusterError",
    "JobError",
]


class XFusionError(Exception):
    """Base class of every error raised by xfusion."""


class MissingDimensionError(XFusionError, ValueError):
    """A required dimension (``time`` or a spatial one) is missing."""


class VariableNotFoundError(XFusionError, KeyError):
    """A variable name given by the user is not on the dataset."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class GridMismatchError(XFusionError, ValueError):
    """Arrays that must share one pixel grid do not."""


class CRSMismatchError(GridMismatchError):
    """Arrays that must share one CRS do not."""


class TimeAxisError(XFusionError, ValueError):
    """The time axis is unsorted, has duplicates, or lacks a needed date."""


class MissingNodataError(XFusionError, ValueError):
    """Integer data without a declared nodata value (NaN cannot mark gaps in integers)."""


class NoOverlapError(XFusionError, ValueError):
    """Fine and coarse observations share no valid pixel or no date."""


class InvalidParameterError(XFusionError, ValueError):
    """A parameter value is out of its allowed range or of the wrong kind."""


class ChunkingError(XFusionError, ValueError):
    """The dask chunking cannot be used as it is (say how to rechunk)."""


class RasterReadError(XFusionError, OSError):
    """A raster file could not be opened or read."""


class OutputWriteError(XFusionError, OSError):
    """An output (GeoTIFF, Zarr store, STAC item) could not be written; names the path."""


class EmptyPredictionError(XFusionError, ValueError):
    """A method predicted no pixel at a target (the message names the target and the cause)."""


class WeightsNotFoundError(XFusionError, FileNotFoundError):
    """Model weights could not be found."""


class MissingOptionalDependency(XFusionError, ImportError):
    """An optional dependency needed by the called function is not installed."""


class CheckpointError(XFusionError, ValueError):
    """A weights/checkpoint file is corrupt, tampered with, or not an xfusion checkpoint."""


class WeightsMismatchError(XFusionError, ValueError):
    """Weights do not fit the data or the model (bands, units, architecture)."""


class NotEnoughDataError(XFusionError, ValueError):
    """Too few valid (observed) pixels to train a model or to sample patches."""


class XFusionWarning(UserWarning):
    """Base class of the warnings xfusion emits about the data (not about deprecations)."""


class EmptyPredictionWarning(XFusionWarning):
    """A result holds a target with no predicted pixel (filter it with ``warnings``)."""


class IncompleteStoreWarning(XFusionWarning):
    """A Zarr store opened before every tile of its write landed (an interrupted write)."""


class EmptySeriesWarning(XFusionWarning):
    """Pixel series without any observation were left NaN (gap filling)."""


class StacError(XFusionError):
    """A STAC search, signing or asset-read problem (base class)."""


class StacApiError(StacError, ConnectionError):
    """A STAC API could not be reached or answered with an error (the message has the URL)."""


class EmptySearchError(StacError, LookupError):
    """A STAC search matched no items (the message repeats the search and how to widen it)."""


class UnknownCollectionError(StacError, ValueError):
    """A collection id is not offered by the STAC API (the message lists the ones that are)."""


class SigningError(StacError, PermissionError):
    """Asset URLs could not be signed, e.g. a Planetary Computer subscription key is missing."""


class AssetReadError(StacError, OSError):
    """An asset of a STAC item could not be read (the message names the item and the asset)."""


class JobError(XFusionError, ValueError):
    """A run job (``xfusion.run`` / ``xfusion run job.yaml``) is malformed or inconsistent."""


class ClusterError(XFusionError, RuntimeError):
    """A Dask cluster could not be started or reached (the message says what to install/fix)."""
