"""Parameters of FSDAF: :class:`FsdafParams`, the presets, the halo rules and the parameter
table the method registry and the command line read (see :mod:`xfusion.methods.fsdaf`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import astuple, dataclass, replace
from dataclasses import fields as dataclasses_fields
from typing import Any, Literal, TypeAlias

import numpy as np

from xfusion.cube.roles import require_choice
from xfusion.errors import InvalidParameterError
from xfusion.methods.registry import Param

NAME = "fsdaf"

FsdafInterpolator: TypeAlias = Literal["tps", "idw", "bicubic"]
"""How the coarse image of the target date is interpolated to the fine grid (step 10)."""

FSDAF_INTERPOLATORS: tuple[str, ...] = ("tps", "idw", "bicubic")


@dataclass(frozen=True, kw_only=True)
class FsdafParams:
    """A complete set of FSDAF parameters (a preset, or a preset with overrides)."""

    half_window: int
    """``w``: the similar-pixel window is ``2 w + 1`` pixels wide (IDL ``w = 20``); also the
    window of the homogeneity index."""
    n_similar: int
    """Number of similar pixels kept per target (IDL ``num_similar_pixel = 20``)."""
    min_classes: int
    """Fewest ISODATA classes (IDL ``min_class = 4``)."""
    max_classes: int
    """Most ISODATA classes (IDL ``max_class = 6``)."""
    n_pure: int
    """Purest coarse cells per class used by the unmixing (IDL ``num_pure = 100``)."""
    data_range: tuple[float, float]
    """``(DN_min, DN_max)``: valid data range of the images (IDL ``0, 10000``)."""
    scale_factor: int | None
    """Coarse/fine ratio ``s`` (fine pixels per coarse cell side); None: from the cube (see
    :func:`fsdaf`)."""
    block_cells: int
    """Block side in coarse cells (IDL ``block_size = 30``)."""
    change_quantiles: tuple[float, float]
    """Quantiles of the coarse change kept per class in the unmixing (IDL 0.1, 0.9)."""
    outlier_quantiles: tuple[float, float]
    """Quantiles of the fine image clamped per block before steps 4-12 (IDL 1e-4, 0.9999)."""
    max_weight: float
    """Residual weights above it are replaced by the mean weight (IDL 10)."""
    interpolator: str
    """``"tps"`` (IDL, exact thin-plate spline), ``"idw"`` (cuFSDAF) or ``"bicubic"``."""
    blocks: bool
    """True: the unmixing per block (IDL); False: one global unmixing (the TPS and the
    residual distribution stay per block)."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *astuple(self))


_ZHU = FsdafParams(
    half_window=20,
    n_similar=20,
    min_classes=4,
    max_classes=6,
    n_pure=100,
    data_range=(0.0, 10000.0),
    scale_factor=None,
    block_cells=30,
    change_quantiles=(0.1, 0.9),
    outlier_quantiles=(1e-4, 0.9999),
    max_weight=10.0,
    interpolator="tps",
    blocks=True,
)


FSDAF_PRESETS: dict[str, FsdafParams] = {
    "zhu": _ZHU,
    "reflectance": replace(_ZHU, data_range=(0.0, 1.0)),
    "lst": replace(_ZHU, data_range=(150.0, 400.0)),
}
"""Parameter presets: ``"zhu"`` (the IDL defaults, reflectance x1e4), ``"reflectance"``
(0..1 reflectance), ``"lst"`` (land-surface temperature in kelvin)."""


def halo(params: FsdafParams, scale_factor: int) -> int:
    """Fine pixels of context a tile needs around it for an exact FSDAF prediction.

    ``half_window`` (the similar-pixel window reads the change image that far) plus the
    FSDAF block reach: the change image of a pixel depends on its whole block
    (``block_cells * scale_factor`` pixels) and the block's halo of one coarse cell. A tile
    also has to start on the block grid (a multiple of ``block_cells * scale_factor`` pixels
    from the image origin) to reproduce the blocks of the full image; the global statistics
    (classes, K, thresholds) of a tile are its own.
    """
    s = int(scale_factor)
    return int(params.half_window) + s + int(params.block_cells) * s


def _bad(name: str, want: str, value: Any, hint: str = "") -> InvalidParameterError:
    return InvalidParameterError(f"fsdaf() parameter {name} must be {want}; got {value!r}.{hint}")


def _as_int(name: str, value: Any, *, minimum: int, hint: str = "") -> int:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if not ok or not math.isfinite(float(value)) or not float(value).is_integer():
        raise _bad(name, f"an integer >= {minimum}", value, hint)
    if int(value) < minimum:
        raise _bad(name, f"an integer >= {minimum}", value, hint)
    return int(value)


def _as_pair(name: str, value: Any, *, unit: bool, hint: str = "") -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value)
    except (TypeError, ValueError):
        raise _bad(name, "a pair (lo, hi) of numbers with lo < hi", value, hint) from None
    if not (a < b) or math.isnan(a) or math.isnan(b) or (unit and not (a >= 0.0 and b <= 1.0)):
        want = "a pair (lo, hi) with 0 <= lo < hi <= 1" if unit else "a pair (lo, hi) with lo < hi"
        raise _bad(name, want, value, hint)
    return a, b


def _resolve_params(preset: str | None, overrides: Mapping[str, Any]) -> FsdafParams:
    base = FSDAF_PRESETS["zhu" if preset is None else
                         require_choice(preset, tuple(FSDAF_PRESETS), name="preset", method=NAME)]  # fmt: skip
    p = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    hw = _as_int("half_window", p.half_window, minimum=1, hint=" The IDL default is 20.")
    ns = _as_int("n_similar", p.n_similar, minimum=1, hint=" The IDL default is 20.")
    mn = _as_int("min_classes", p.min_classes, minimum=1, hint=" The IDL default is 4.")
    mx = _as_int("max_classes", p.max_classes, minimum=1, hint=" The IDL default is 6.")
    if mx < mn:
        raise InvalidParameterError(
            f"fsdaf() needs min_classes <= max_classes; got min_classes={mn}, max_classes={mx}."
        )
    npure = _as_int("n_pure", p.n_pure, minimum=1, hint=" The IDL default is 100.")
    bc = _as_int("block_cells", p.block_cells, minimum=1, hint=" The IDL default is 30.")
    sf = None if p.scale_factor is None else _as_int(
        "scale_factor", p.scale_factor, minimum=1,
        hint=" It is the coarse/fine pixel-size ratio, e.g. 16 for 480 m MODIS on 30 m Landsat.",
    )  # fmt: skip
    dr = _as_pair("data_range", p.data_range, unit=False,
                  hint=" The IDL default is (0, 10000) for reflectance x1e4.")  # fmt: skip
    cq = _as_pair("change_quantiles", p.change_quantiles, unit=True, hint=" IDL: (0.1, 0.9).")
    oq = _as_pair("outlier_quantiles", p.outlier_quantiles, unit=True,
                  hint=" IDL: (0.0001, 0.9999).")  # fmt: skip
    ok = not isinstance(p.max_weight, bool) and isinstance(
        p.max_weight, int | float | np.integer | np.floating)
    if not ok or not math.isfinite(float(p.max_weight)) or float(p.max_weight) <= 0:
        raise _bad("max_weight", "a finite number > 0", p.max_weight, " The IDL default is 10.")
    require_choice(p.interpolator, FSDAF_INTERPOLATORS, name="interpolator", method=NAME)
    if not isinstance(p.blocks, bool | np.bool_):
        raise _bad("blocks", "True or False", p.blocks)
    return replace(p, half_window=hw, n_similar=ns, min_classes=mn, max_classes=mx,
                   n_pure=npure, block_cells=bc, scale_factor=sf, data_range=dr,
                   change_quantiles=cq, outlier_quantiles=oq, max_weight=float(p.max_weight),
                   blocks=bool(p.blocks))  # fmt: skip


# --------------------------------------------------------------------------------------------
# the parameter table read by the method registry and the command line


def _registry_params() -> tuple[Param, ...]:
    from xfusion.methods.registry import get

    return get("fsdaf").params


PARAMS: tuple[Param, ...] = _registry_params()
"""Every keyword of :func:`xfusion.methods.fsdaf.fsdaf` as the method registry's
:class:`~xfusion.methods.registry.Param` (type, default, choices, help): the table the CLI
(``xfusion fuse fsdaf --param``), job validation and the README read."""

_PARAM_NAMES = frozenset(f.name for f in dataclasses_fields(FsdafParams))


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: str | None = None) -> int:
    """Pixels a job tile reads around itself (the registry's halo rule for FSDAF).

    Job tiles hold the coarse data resampled onto the fine grid, so FSDAF needs the
    coarse/fine ratio ``scale_factor`` in the job's ``params:``; the halo is :func:`halo` of
    the resolved parameters (similar-pixel window, one coarse cell and one FSDAF block).
    """
    s = params.get("scale_factor")
    if s is None:
        raise InvalidParameterError(
            "fsdaf jobs need params: scale_factor: the coarse/fine pixel-size ratio, e.g. 16 "
            "for 480 m MODIS on 30 m Landsat (job tiles hold the coarse data resampled onto "
            "the fine grid, so it cannot be detected)."
        )
    keys = {k: v for k, v in params.items() if k in _PARAM_NAMES}
    p = _resolve_params(params.get("preset"), keys)
    return halo(p, int(p.scale_factor or s))
