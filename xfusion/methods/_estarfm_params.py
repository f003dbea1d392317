"""Parameters of ESTARFM: :class:`EstarfmParams`, the presets, the halo rule and the parameter
table the method registry and the command line read (see :mod:`xfusion.methods.estarfm`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields, replace
from typing import Any, Literal, TypeAlias

import numpy as np

from xfusion.cube.roles import require_choice
from xfusion.errors import InvalidParameterError
from xfusion.methods.registry import Param

NAME = "estarfm"

EstarfmVariant: TypeAlias = Literal["zhu", "imagefusion"]
"""Which reference program ESTARFM follows (see :func:`estarfm`, Notes)."""

ESTARFM_VARIANTS: tuple[str, ...] = ("zhu", "imagefusion")
_THRESHOLD_STD = ("sample", "population")


# --------------------------------------------------------------------------------------------
# parameters and presets


@dataclass(frozen=True, kw_only=True)
class EstarfmParams:
    """A complete set of ESTARFM parameters (a preset, or a preset with overrides).

    Names follow specs/estarfm.md section 4; thresholds and ranges are in the data's unit.
    """

    half_window: int
    """``w``: the search window is ``2w + 1`` fine pixels wide (Zhu: 25, a 51 x 51 window)."""
    num_class: float
    """Estimated number of classes: similarity threshold ``std(F_k) * 2 / num_class``."""
    data_range: tuple[float, float]
    """``(DN_min, DN_max)``: predictions outside fall back to the weighted fine means; DN_max
    also scales ``change_min_fraction``."""
    fill: float | None
    """Background value: inputs equal to it are unobserved; integer outputs use it where no
    prediction is made. ``None``: only NaN / declared nodata mark gaps."""
    change_min_fraction: float
    """"zhu": the regression for V runs when the candidates' mean coarse change between the
    pairs is ``>= change_min_fraction * DN_max`` (0.02). "imagefusion": its uncertainty
    factor, the regression runs when the sample std of the candidates' coarse values exceeds
    ``DN_max * change_min_fraction * sqrt(2)`` (0.002)."""
    p_value: float
    """Significance level of the F test of the regression (0.05)."""
    v_max: float
    """Largest accepted conversion coefficient V (5)."""
    min_candidates: int
    """At least this many similar pixels for the full prediction (6, Zhu's ``> 5``)."""
    eps_distance: float
    """Added to the combined distance ``(1 - R) D`` (1e-7)."""
    eps_time: float
    """Added to the temporal distances of the two pairs (1e-10)."""
    threshold_std: str
    """``"sample"`` (n - 1, IDL ``stddev``) or ``"population"`` (n, Zhu's Python twin and
    ImageFusion) standard deviation for the similarity thresholds."""
    block: int | None
    """``None``: windows clipped at the image border only, global thresholds (chunk-invariant).
    An integer (500): Zhu's block-wise processing, tiles anchored at the image origin."""
    variant: str
    """``"zhu"`` (Zhu's ESTARFM.pro / ESTARFM.py) or ``"imagefusion"`` (ImageFusion C++)."""
    zhu_first_band_only: bool
    """"zhu": test only band 0 for nodata, as Zhu's programs do (other bands' gaps then enter
    the computation as the ``fill`` value)."""
    use_local_tol: bool
    """"imagefusion": similarity threshold from the window's population std, not the image's."""
    use_quality_weighted_regression: bool
    """"imagefusion": ``V = b q + (1 - q)`` with ``q`` the F-test CDF instead of the 0/1 test."""
    truncate: bool
    """Truncate predictions toward zero (the reference programs' integer output). Integer
    outputs are always truncated."""
    auto_unit: bool = False
    """Preset "auto": decide the unit per target from the fine images of its pairs. When
    every valid value lies in [-2, 2] (0..1 reflectance), ``data_range`` is scaled by 1e-4
    to (0, 1) and predictions are not truncated (integer outputs still are); otherwise the
    parameters apply as given (reflectance x1e4, Zhu's settings)."""
    dtype: str = "float32"
    """Working dtype of the kernel's first pass over each window (similarity tests, weights,
    weighted coarse changes): ``"float32"`` (about 1.5x faster) or ``"float64"`` (bit-for-bit
    the reference programs' double arithmetic). Regression sums, temporal weights and the
    prediction are float64 either way."""

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *astuple(self))


_ZHU = EstarfmParams(
    half_window=25,
    num_class=4.0,
    data_range=(0.0, 10000.0),
    fill=-9999.0,
    change_min_fraction=0.02,
    p_value=0.05,
    v_max=5.0,
    min_candidates=6,
    eps_distance=1e-7,
    eps_time=1e-10,
    threshold_std="sample",
    block=None,
    variant="zhu",
    zhu_first_band_only=False,
    use_local_tol=False,
    use_quality_weighted_regression=False,
    truncate=True,
)

#: defaults that follow the variant when only ``variant=`` changes it
_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "zhu": {"threshold_std": "sample", "change_min_fraction": 0.02},
    "imagefusion": {"threshold_std": "population", "change_min_fraction": 0.002},
}

ESTARFM_PRESETS: dict[str, EstarfmParams] = {
    "zhu": _ZHU,
    "imagefusion": replace(_ZHU, variant="imagefusion", **_VARIANT_DEFAULTS["imagefusion"]),
    "reflectance": replace(_ZHU, data_range=(0.0, 1.0), fill=None, truncate=False),
    "auto": replace(_ZHU, auto_unit=True),
}
"""Parameter presets by name: ``"zhu"`` and ``"imagefusion"`` for reflectance x1e4 as the
reference programs use it (integer-like output, truncated), ``"reflectance"`` for 0..1
reflectance (float output), ``"auto"`` (the default): "zhu" on data in x1e4 units and
"reflectance" on 0..1 data, decided per target from the fine images (lazily, with the
global thresholds)."""

#: the range of 0..1 reflectance as the "auto" preset recognises it
AUTO_REFLECTANCE_MAX = 2.0
AUTO_SCALE = 1e-4


def halo(params: EstarfmParams | Mapping[str, Any] | None = None) -> int:
    """Pixels of the fine grid a chunk needs around it: ``half_window`` (0 with ``block``).

    Parameters
    ----------
    params : EstarfmParams or mapping, optional
        The parameters (a mapping of overrides of the "zhu" preset); default: the "zhu" preset.

    Returns
    -------
    int
        ``params.half_window`` in the default mode; 0 in block mode, where every tile is
        predicted on its own (windows stop at the tile's edges) and chunks are aligned to tiles.
    """
    if params is None:
        params = _ZHU
    elif isinstance(params, Mapping):
        params = _resolve_params("zhu", None, params)
    return 0 if params.block is not None else int(params.half_window)


# --------------------------------------------------------------------------------------------
# the parameter table read by the method registry and the command line


def _registry_params() -> tuple[Param, ...]:
    from xfusion.methods.registry import get

    return get("estarfm").params


PARAMS: tuple[Param, ...] = _registry_params()
"""Every keyword of :func:`xfusion.methods.estarfm.estarfm` as the method registry's
:class:`~xfusion.methods.registry.Param` (type, default, choices, help): the table the CLI
(``xfusion fuse estarfm --param KEY=VALUE``) and job YAML read. On the command line
``block=0`` means no blocks and ``fill=nan`` no fill value."""


def job_halo(params: Mapping[str, Any], *, resolution: float, weights: str | None = None) -> int:
    """Pixels a job tile reads around itself (the registry's halo rule for ESTARFM).

    ``half_window`` of the preset or the override; also with ``block``, because a job tile is
    not aligned with Zhu's 500 x 500 blocks: tiles get the same halo as the default mode.
    """
    keys = {k: v for k, v in params.items() if k in _FIELD_NAMES}
    p = _resolve_params(params.get("preset", "auto"), params.get("variant"), keys)
    return int(p.half_window)


_FIELD_NAMES = tuple(f.name for f in fields(EstarfmParams) if f.name != "auto_unit")  # preset


def _number(name: str, value: Any, *, integer: bool = False, minimum: float | None = None,
            strict: bool = True, maximum: float | None = None, hint: str = "") -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    ok = ok and math.isfinite(float(value))
    if ok and integer:
        ok = float(value).is_integer()
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) < maximum
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = ""
        if minimum is not None:
            bound = f" {'>' if strict else '>='} {minimum:g}"
        if maximum is not None:
            bound += f"{' and' if bound else ''} < {maximum:g}"
        raise InvalidParameterError(
            f"estarfm() parameter {name} must be {kind}{bound}; got {value!r}.{hint}"
        )


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InvalidParameterError(
            f"estarfm() parameter {name} must be True or False; got {value!r}."
        )
    return bool(value)


def _resolve_params(
    preset: str | None, variant: str | None, overrides: Mapping[str, Any]
) -> EstarfmParams:
    """The preset, switched to ``variant`` and with ``overrides``, validated."""
    require_choice("auto" if preset is None else preset, tuple(ESTARFM_PRESETS), name="preset",
                   method=NAME)
    base = ESTARFM_PRESETS["auto" if preset is None else preset]
    unknown = sorted(set(overrides) - set(_FIELD_NAMES))
    if unknown:
        raise InvalidParameterError(
            f"Unknown estarfm() parameter(s) {unknown!r}. Parameters are {list(_FIELD_NAMES)!r} "
            "(plus fine, coarse, targets, pairs, preset, variant, diagnostics, device)."
        )
    if variant is not None:
        require_choice(variant, ESTARFM_VARIANTS, name="variant", method=NAME)
        if variant != base.variant:
            base = replace(base, variant=variant, **_VARIANT_DEFAULTS[variant])
    params = replace(base, **{k: v for k, v in overrides.items() if v is not None or k in
                              ("fill", "block")})
    if params.auto_unit and any(overrides.get(k) is not None for k in ("data_range", "truncate")):
        params = replace(params, auto_unit=False)  # the caller set the unit
    require_choice(params.variant, ESTARFM_VARIANTS, name="variant", method=NAME)
    require_choice(params.threshold_std, _THRESHOLD_STD, name="threshold_std", method=NAME)
    require_choice(params.dtype, ("float32", "float64"), name="dtype", method=NAME)
    _number("half_window", params.half_window, integer=True, minimum=1, strict=False,
            hint=" It is in fine pixels: the window is 2w+1 wide (Zhu uses 25).")
    _number("num_class", params.num_class, minimum=0, hint=" Zhu uses 4.")
    _number("change_min_fraction", params.change_min_fraction, minimum=0, strict=False)
    _number("p_value", params.p_value, minimum=0, maximum=1, hint=" The usual level is 0.05.")
    _number("v_max", params.v_max, minimum=0, hint=" Zhu uses 5.")
    _number("min_candidates", params.min_candidates, integer=True, minimum=2, strict=False,
            hint=" The regression needs 2 candidates; Zhu uses 6 (n > 5).")
    _number("eps_distance", params.eps_distance, minimum=0, hint=" Zhu uses 1e-7.")
    _number("eps_time", params.eps_time, minimum=0, hint=" Zhu uses 1e-10.")
    try:
        lo, hi = (float(x) for x in params.data_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (lo < hi) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidParameterError(
            f"estarfm() parameter data_range must be (DN_min, DN_max) with finite DN_min < "
            f"DN_max; got {params.data_range!r}. Use (0, 10000) for reflectance x1e4, (0, 1) "
            "for 0..1 reflectance (preset='reflectance')."
        )
    fill = params.fill
    if fill is not None:
        try:
            fill = float(fill)
            fill = None if math.isnan(fill) else fill  # the command line's "nan": no fill
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"estarfm() parameter fill must be a number (the background value, e.g. -9999) "
                f"or None; got {params.fill!r}."
            ) from None
    block = params.block
    if block is not None and not isinstance(block, bool) and block == 0:
        block = None  # the command line's 0: no blocks
    if block is not None:
        _number("block", block, integer=True, minimum=1, strict=False,
                hint=" Zhu processes 500 x 500 blocks (block=500); None (or 0) disables blocks.")
        block = int(block)
    flags = {n: _flag(n, getattr(params, n)) for n in
             ("zhu_first_band_only", "use_local_tol", "use_quality_weighted_regression",
              "truncate")}
    if params.variant == "imagefusion":
        if block is not None:
            raise InvalidParameterError(
                "estarfm() parameter block (Zhu's block-wise processing) only exists for "
                "variant='zhu'; ImageFusion clips windows at the image border. Pass block=None "
                "or variant='zhu'."
            )
        if flags["zhu_first_band_only"]:
            raise InvalidParameterError(
                "estarfm() parameter zhu_first_band_only only applies to variant='zhu'."
            )
    else:
        for n in ("use_local_tol", "use_quality_weighted_regression"):
            if flags[n]:
                raise InvalidParameterError(
                    f"estarfm() parameter {n} is an ImageFusion option; pass "
                    "variant='imagefusion' (or preset='imagefusion') to use it."
                )
    return replace(
        params,
        half_window=int(params.half_window),
        num_class=float(params.num_class),
        data_range=(lo, hi),
        fill=fill,
        change_min_fraction=float(params.change_min_fraction),
        p_value=float(params.p_value),
        v_max=float(params.v_max),
        min_candidates=int(params.min_candidates),
        eps_distance=float(params.eps_distance),
        eps_time=float(params.eps_time),
        block=block,
        **flags,
    )


