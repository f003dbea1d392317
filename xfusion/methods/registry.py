"""The method registry: one entry per method, the single source every front end reads.

Each :class:`Method` holds where the function lives (imported on first use, so listing the
methods stays fast), a typed parameter table (:class:`Param`: name, type, default, choices,
help), the halo rule of continental jobs (how many pixels a tile reads around itself, asked of
the method instead of branching on its name), and what it needs (one pair, two bracketing
pairs, a guide, SAR, trained weights). ``xfusion fuse --param``, ``xfusion super-resolve``,
``xfusion gapfill``, job YAML validation, the CLI help and the README's method table all read
it. Adding a method is one module, one :func:`register` entry (below, or from user code), and
its tests: see ``CONTRIBUTING.md``.

Examples
--------
>>> import xfusion.methods
>>> "starfm" in xfusion.methods.available(kind="fusion")
True
>>> xfusion.methods.get("starfm").param("preset").choices
('auto', 'usda', 'reflectance', 'lst')
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from xfusion.errors import InvalidParameterError

__all__ = [
    "KINDS",
    "PARAM_TYPES",
    "Method",
    "Param",
    "available",
    "get",
    "markdown_table",
    "parse_bands",
    "parse_bool",
    "parse_json",
    "parse_range",
    "register",
]

Kind: TypeAlias = Literal["fusion", "super-resolve", "gapfill"]
KINDS: tuple[str, ...] = ("fusion", "super-resolve", "gapfill")
"""``fusion``: ``xfusion fuse`` (fine + coarse dates); ``super-resolve``: one coarse image onto a
fine guide grid; ``gapfill``: optical time series."""

Pairs: TypeAlias = Literal["none", "one", "one-or-two", "two"]


# --------------------------------------------------------------------------------------------
# parameter values


def parse_bool(text: str) -> bool:
    """Parse ``true/false/yes/no/1/0/on/off`` (case-insensitive)."""
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, found {text!r}")


def parse_json(text: str) -> Any:
    """Parse a JSON value (e.g. ``{"width": 32}``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'expected JSON such as {{"width": 32}}: {err}') from None


def parse_range(text: str) -> tuple[float, float]:
    """Parse ``LO,HI`` (two numbers, ``inf`` allowed) into a float pair."""
    parts = str(text).split(",")
    if len(parts) != 2:
        raise ValueError(f"expected LO,HI such as 0,10000, found {text!r}")
    return float(parts[0]), float(parts[1])


def parse_bands(text: str) -> str | tuple[str | int, ...]:
    """Parse ``all`` or comma-separated band names / 0-based positions (``red,nir``, ``2,3``)."""
    t = str(text).strip()
    if t.lower() == "all":
        return "all"
    parts = [p.strip() for p in t.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"expected band names such as red,nir or all, found {text!r}")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def parse_int_or_none(text: str) -> int | None:
    """Parse an integer, or ``none`` for None (e.g. ``patience=none``: no early stopping)."""
    if str(text).strip().lower() == "none":
        return None
    return int(text)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "int-or-none": parse_int_or_none,
    "float": float,
    "bool": parse_bool,
    "range": parse_range,
    "json": parse_json,
    "bands": parse_bands,
}
PARAM_TYPES: tuple[str, ...] = tuple(_PARSERS)
"""Types a parameter may declare: how its ``KEY=VALUE`` text is parsed."""


@dataclass(frozen=True, kw_only=True)
class Param:
    """One keyword parameter of a method (``--param KEY=VALUE``, a job's ``params:``)."""

    name: str
    """Keyword name, as the method function takes it."""
    type: str = "str"
    """One of :data:`PARAM_TYPES`: how ``KEY=VALUE`` text is parsed."""
    default: Any = None
    """Default value (``None``: the method's own default, e.g. from its preset)."""
    choices: tuple[str, ...] | None = None
    """Allowed values, when the value is one of a fixed set."""
    help: str = ""
    """One line for ``--help`` and the README."""

    def __post_init__(self) -> None:
        if self.type not in _PARSERS:
            raise InvalidParameterError(
                f"Param {self.name!r}: type={self.type!r} is not one of {PARAM_TYPES}."
            )

    def parse(self, text: str) -> Any:
        """Turn command-line text into the value; ``ValueError`` with a readable message."""
        if self.choices is not None and text not in self.choices:
            raise ValueError(
                f"invalid value {text!r} for {self.name}; choose one of {list(self.choices)}"
            )
        try:
            return _PARSERS[self.type](text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid value {text!r} for {self.name}: {err}") from None

    def convert(self, key: str, text: str) -> Any:
        """:meth:`parse` (the name the command line used before the registry)."""
        return self.parse(text)

    def check(self, value: Any) -> Any:
        """Validate a value given as data (a job's YAML ``params:``); text is parsed."""
        if isinstance(value, str) and self.type != "str":
            return self.parse(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"invalid value {value!r} for {self.name}; choose one of {list(self.choices)}"
            )
        return value


@dataclass(frozen=True, kw_only=True)
class Method:
    """A method as every front end sees it."""

    name: str
    """Registry name (``xfusion fuse NAME``, a job's ``method:``)."""
    kind: str
    """One of :data:`KINDS`."""
    function: str
    """``"module:function"`` of the public function (``xfusion.starfm``...)."""
    help: str
    """One line for ``--help`` and the README."""
    params: tuple[Param, ...] = ()
    """Keyword parameters settable by ``--param KEY=VALUE`` and a job's ``params:``."""
    cli: str | None = None
    """``"module:function"`` called by the command line and jobs instead of :attr:`function`
    (an adapter taking the same keywords plus command-line conveniences); default
    :attr:`function`."""
    pairs: str = "none"
    """What a target needs (fusion methods): ``"one"`` pair date, ``"two"`` bracketing pairs,
    ``"one-or-two"`` (both sides when there are, else one), ``"none"``."""
    one_pair_rule: str = "nearest"
    """The rule a job uses for one-pair targets (STARFM, as USDA: ``"before"``)."""
    needs: tuple[str, ...] = ()
    """Inputs beyond fine/coarse: ``"guide"``, ``"sar"``, ``"weights"`` (required)."""
    weights: bool = False
    """Whether trained weights are accepted (``--weights``, a job's ``weights:``)."""
    progress_param: str | None = None
    """Keyword that switches the method's progress bars (silenced inside job tiles)."""
    halo: str | None = None
    """``"module:function"`` computing the pixels a job tile reads around itself:
    ``halo(params, *, resolution, weights) -> int``; None: 0."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameterError(f"Method {self.name!r}: kind={self.kind!r} not in {KINDS}.")
        if self.pairs not in ("none", "one", "one-or-two", "two"):
            raise InvalidParameterError(f"Method {self.name!r}: pairs={self.pairs!r} unknown.")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"Method {self.name!r} declares a parameter twice.")

    # -- lookups ------------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the parameters, in declaration order."""
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        """The parameter ``name`` (error listing the valid ones)."""
        for p in self.params:
            if p.name == name:
                return p
        raise InvalidParameterError(
            f"Unknown parameter {name!r} for method {self.name!r}; valid parameters: "
            f"{sorted(self.param_names)}."
        )

    def load(self) -> Callable[..., Any]:
        """Import the function front ends call (:attr:`cli`, else :attr:`function`)."""
        return _resolve(self.cli or self.function)

    def load_function(self) -> Callable[..., Any]:
        """Import the public function."""
        return _resolve(self.function)

    # -- parameter values ---------------------------------------------------------------------
    def parse_params(self, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """Command-line ``(key, text)`` pairs -> keyword values (``InvalidParameterError``)."""
        out: dict[str, Any] = {}
        for key, text in pairs:
            if key not in self.param_names:
                raise InvalidParameterError(
                    f"unknown --param {key!r} for method {self.name!r}; valid keys: "
                    f"{sorted(self.param_names)}"
                )
            if key in out:
                raise InvalidParameterError(f"--param {key!r} is given twice; give it once")
            try:
                out[key] = self.param(key).parse(text)
            except ValueError as err:
                raise InvalidParameterError(f"--param {err}") from None
        return out

    def check_params(self, params: Mapping[str, Any], *, extra: Sequence[str] = ()) -> dict[
        str, Any
    ]:
        """Validate a mapping of values (a job's ``params:``); ``extra`` keys pass as they are."""
        unknown = sorted(set(params) - set(self.param_names) - set(extra))
        if unknown:
            raise InvalidParameterError(
                f"Unknown parameter(s) {unknown} for {self.name!r}; valid: "
                f"{sorted(self.param_names)}."
            )
        out = {}
        for key, value in params.items():
            if key in extra:
                out[key] = value
                continue
            try:
                out[key] = self.param(key).check(value)
            except ValueError as err:
                raise InvalidParameterError(f"Parameter {err}") from None
        return out

    def job_halo(self, params: Mapping[str, Any], *, resolution: float,
                 weights: str | None = None) -> int:
        """Pixels a job tile reads around itself for this method (0 without a halo rule)."""
        if self.halo is None:
            return 0
        return int(_resolve(self.halo)(params, resolution=resolution, weights=weights))


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# the registry

_METHODS: dict[str, Method] = {}


def register(method: Method, *, overwrite: bool = False) -> Method:
    """Add a method (``overwrite=True`` to replace one); returns it."""
    if method.name in _METHODS and not overwrite:
        raise InvalidParameterError(
            f"A method named {method.name!r} is already registered; pass overwrite=True to "
            "replace it."
        )
    _METHODS[method.name] = method
    return method


def available(kind: str | None = None) -> list[str]:
    """Names of the registered methods (of one :data:`KINDS` ``kind``), in registry order."""
    if kind is not None and kind not in KINDS:
        raise InvalidParameterError(f"kind={kind!r} is not one of {KINDS}.")
    return [n for n, m in _METHODS.items() if kind is None or m.kind == kind]


def get(name: str, kind: str | None = None) -> Method:
    """The registered method ``name`` (of ``kind`` when given), or an error listing them."""
    m = _METHODS.get(name)
    if m is None or (kind is not None and m.kind != kind):
        raise InvalidParameterError(
            f"Unknown method {name!r}; choose one of {available(kind)}."
        )
    return m


def markdown_table(kind: str | None = None) -> str:
    """The methods and their parameters as a Markdown table (the README's is this)."""
    rows = ["| method | kind | what | parameters (`--param KEY=VALUE`) |", "|---|---|---|---|"]
    for name in available(kind):
        m = _METHODS[name]
        params = ", ".join(f"`{p.name}`" for p in m.params) or "-"
        rows.append(f"| `{name}` | {m.kind} | {m.help} | {params} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# the built-in methods

_DEVICE = Param(name="device", default="auto",
                help="auto (default: CUDA when present), cpu, cuda or cuda:N")


def _p(name: str, type: str = "str", help: str = "", **kw: Any) -> Param:
    return Param(name=name, type=type, help=help, **kw)


register(Method(
    name="baseline",
    kind="fusion",
    function="xfusion.methods.baseline:baseline",
    help="naive baselines: fine at the pair, or fine plus the coarse change",
    pairs="one",
    params=(
        _p("method", choices=("fine-plus-change", "fine-at-pair"), default="fine-plus-change",
           help="fine-plus-change (default): L1 + (M2 - M1); fine-at-pair: L1"),
        _p("pairs", help="nearest (default), before, after, or one pair date YYYY-MM-DD"),
    ),
))

register(Method(
    name="starfm",
    kind="fusion",
    function="xfusion.methods.starfm:starfm",
    cli="xfusion.methods.starfm:_starfm_cli",
    help="STARFM (Gao et al. 2006), exact to USDA v1.2.1 in mode=reference; fine dates on both "
    "sides of a target use both pairs",
    pairs="one-or-two",
    one_pair_rule="before",
    halo="xfusion.methods.starfm:job_halo",
    params=(
        _p("preset", choices=("auto", "usda", "reflectance", "lst"), default="auto",
           help="auto (default: usda on x1e4 data, reflectance on 0..1 data), usda "
           "(reflectance x1e4, reference mode), reflectance (0..1), lst (kelvin)"),
        _p("mode", choices=("reference", "float"),
           help="reference (USDA v1.2.1 rounding) or float; default from the preset"),
        _p("max_search_distance", "float", "search distance in metres (usda: 750)"),
        _p("resolution", "float",
           "pixel size in metres (default from the grid; needed for degrees)"),
        _p("num_slice", "int", "NUM_SLICE_PURE_TEST (usda: 40)"),
        _p("uncertainty_fine", "float", "fine (Landsat) uncertainty (usda: 50)"),
        _p("uncertainty_coarse", "float", "coarse (MODIS) uncertainty (usda: 50)"),
        _p("data_range", "range", "LO,HI valid data range (usda: 0,10000)"),
        _p("distance_offset", "float", "the +1 of the distance term (usda: 1)"),
        _p("fill", "float", "FILL value: inputs equal to it are nodata (usda: -9999)"),
        _p("pairs", help="bracket (default with fine dates on both sides of every target), "
           "nearest (the pair before; default otherwise), before, after, or a pair date "
           "YYYY-MM-DD"),
        _DEVICE,
    ),
))

register(Method(
    name="sttfn",
    kind="fusion",
    function="xfusion.methods.sttfn:sttfn",
    cli="xfusion.methods.sttfn:_sttfn_cli",
    help="STTFN (Yin et al. 2021): forward/backward CNNs trained on the pairs before and after "
    "each target; default variant xfusion (fine + smoothed coarse change with a learned gain, "
    "combined by temporal distance, about a minute of training on a 512 px scene), "
    "variant=paper (the paper's net and consistency weighting); --weights applies trained nets",
    pairs="two",
    weights=True,
    progress_param="progress",
    halo="xfusion.methods.sttfn:job_halo",
    params=(
        _p("variant", choices=("xfusion", "paper"),
           help="xfusion (default: xfusion-v2 nets, combine=time, short training) or paper "
           "(xfusion-v1 nets, fine-scale STC, 30 epochs on the reference pairs only)"),
        _p("epochs", "int", "training epochs per net (xfusion: 4, paper: 30)"),
        _p("seed", "int", "seed of the training (default 0)"),
        _p("patch_size", "int", "training patch size in pixels (xfusion: 96, paper: 48)"),
        _p("patches", "int", "random training patches per net (xfusion: 8, paper: 128)"),
        _p("batch_size", "int", "patches per optimizer step (xfusion: 4, paper: 16)"),
        _p("lr", "float", "Adam learning rate (default 1e-3)"),
        _p("val_fraction", "float", "share of the scene held out for early stopping (default 0.1)"),
        _p("patience", "int", "early-stopping patience in epochs (xfusion: 2, paper: 8)"),
        _p("min_valid", "float", "min observed fraction in every input of a patch (default 0.5)"),
        _p("temporal_mix", "float",
           "share of time-interpolated training items (xfusion: 1.0, paper: 0)"),
        _p("target_offset", "float",
           "std of random target offsets in training, in band stds (xfusion: 0.3, paper: 0)"),
        _p("combine", choices=("stc", "time", "stc-time"),
           help="temporal distance (xfusion), consistency weighting (paper), or both"),
        _p("stc_scale", choices=("fine", "coarse"),
           help="consistency weighting per fine pixel (default) or per coarse cell"),
        _p("coarse_factor", "int", "coarse pixel size in fine pixels (for stc_scale=coarse)"),
        _p("arch", help="architecture (xfusion: xfusion-v2, paper: xfusion-v1)"),
        _p("arch_params", "json", 'architecture parameters as JSON, e.g. {"width": 32}'),
        _p("save", help="folder to save each triplet's trained nets (.safetensors)"),
        _p("diagnostics", "bool", "also write <fine>_forward, _backward, _weight and _std",
           default=False),
        _DEVICE,
        _p("precision", choices=("float32", "bf16", "fp16"), help="autocast precision on CUDA"),
    ),
))

register(Method(
    name="estarfm",
    kind="fusion",
    function="xfusion.methods.estarfm:estarfm",
    help="ESTARFM (Zhu et al. 2010): two pairs, similar pixels weighted by spectral "
    "correlation and distance, conversion coefficients from a local regression; variants zhu "
    "(IDL/Python programs) and imagefusion (C++)",
    pairs="two",
    halo="xfusion.methods.estarfm:job_halo",
    params=(
        _p("preset", choices=("auto", "zhu", "imagefusion", "reflectance"), default="auto",
           help="auto (default: zhu on x1e4 data, reflectance on 0..1 data), zhu (reflectance "
           "x1e4, truncated), imagefusion, reflectance (0..1)"),
        _p("variant", choices=("zhu", "imagefusion"),
           help="zhu (Zhu's programs) or imagefusion (ImageFusion C++); default the preset's"),
        _p("pairs", help="bracket (default: the nearest pair before and after each target) or "
           "BEFORE,AFTER dates"),
        _p("diagnostics", "bool", "also write <fine>_n_candidates", default=False),
        _p("device", choices=("auto", "cpu"), default="auto",
           help="auto (default) or cpu: ESTARFM runs on the CPU"),
        _p("coarse_factor", "int", "coarse pixel size in fine pixels, to check the window "
           "(default: the cube's attrs)"),
        _p("half_window", "int", "half window w in fine pixels (window 2w+1; zhu: 25)",
           default=25),
        _p("num_class", "float", "number of classes: threshold std*2/num_class (4)",
           default=4.0),
        _p("data_range", "range", "DN_min,DN_max (zhu: 0,10000); turns the auto unit off",
           default=(0.0, 10000.0)),
        _p("fill", "float", "background/fill value (zhu: -9999; nan: none)", default=-9999.0),
        _p("change_min_fraction", "float", "zhu: min coarse change for V, fraction of DN_max "
           "(0.02); imagefusion: uncertainty factor (0.002)", default=0.02),
        _p("p_value", "float", "significance level of the regression F test (0.05)",
           default=0.05),
        _p("v_max", "float", "largest accepted conversion coefficient (5)", default=5.0),
        _p("min_candidates", "int", "similar pixels needed for the full prediction (6)",
           default=6),
        _p("eps_distance", "float", "added to the combined distance (1e-7)", default=1e-07),
        _p("eps_time", "float", "added to the temporal distances (1e-10)", default=1e-10),
        _p("threshold_std", choices=("sample", "population"), default="sample",
           help="sample (IDL) or population std for the thresholds"),
        _p("block", "int", "0 (default: none, chunk-invariant) or 500: Zhu's block-wise "
           "processing", default=0),
        _p("zhu_first_band_only", "bool", "zhu: test band 0 only for nodata", default=False),
        _p("use_local_tol", "bool", "imagefusion: window std for the thresholds",
           default=False),
        _p("use_quality_weighted_regression", "bool",
           "imagefusion: V = b q + (1 - q) with q the F-test CDF", default=False),
        _p("truncate", "bool", "truncate toward zero (zhu, imagefusion); turns the auto unit "
           "off", default=True),
        _p("dtype", choices=("float32", "float64"), default="float32",
           help="working dtype of the window pass: float32 (default) or float64 (bit-for-bit "
           "the reference programs)"),
    ),
))

register(Method(
    name="fsdaf",
    kind="fusion",
    function="xfusion.methods.fsdaf:fsdaf",
    help="FSDAF (Zhu et al. 2016): one pair; classification of the fine image, class-wise "
    "unmixing of the coarse change, thin-plate-spline residuals, similar-pixel smoothing",
    pairs="one",
    halo="xfusion.methods._fsdaf_params:job_halo",
    params=(
        _p("preset", choices=("zhu", "reflectance", "lst"), default="zhu",
           help="zhu (IDL defaults, x1e4 reflectance), reflectance (0..1), lst (kelvin)"),
        _p("half_window", "int", "w: window of 2w+1 pixels (similar pixels, HI) (20)",
           default=20),
        _p("n_similar", "int", "similar pixels per target (20)", default=20),
        _p("min_classes", "int", "fewest ISODATA classes (4)", default=4),
        _p("max_classes", "int", "most ISODATA classes (6)", default=6),
        _p("n_pure", "int", "purest coarse cells per class in the unmixing (100)", default=100),
        _p("data_range", "range", "LO,HI valid data range (zhu: 0,10000)"),
        _p("scale_factor", "int", "coarse/fine ratio (default: the cube's coarse_factor "
           "attribute, or detected from block-constant coarse data; required in jobs)"),
        _p("block_cells", "int", "block side in coarse cells (30)", default=30),
        _p("change_quantiles", "range", "quantiles of the coarse change kept per class "
           "(0.1,0.9)", default=(0.1, 0.9)),
        _p("outlier_quantiles", "range", "quantiles of the fine image clamped per block "
           "(0.0001,0.9999)", default=(1e-4, 0.9999)),
        _p("max_weight", "float", "cap of the residual weights (10)", default=10.0),
        _p("classes", help="class map: name of a variable of the cube (0 = background); "
           "default ISODATA"),
        _p("interpolator", choices=("tps", "idw", "bicubic"), default="tps",
           help="tps (IDL), idw (cuFSDAF) or bicubic"),
        _p("blocks", "bool", "unmixing per block (true, IDL) or global (false)", default=True),
        _p("pairs", default="nearest",
           help="nearest (before, else after), before, after, or a pair date YYYY-MM-DD"),
        _p("diagnostics", "bool", "also return the class map and HI", default=False),
        _p("device", default="auto", help="auto or cpu (FSDAF has CPU kernels only)"),
    ),
))

register(Method(
    name="fitfc",
    kind="fusion",
    function="xfusion.methods.fitfc:fitfc",
    help="Fit-FC (Wang & Atkinson 2018): local regression of the coarse change, spatial filter "
    "over similar pixels, residual compensation; variants wang (MATLAB) and imagefusion (C++)",
    pairs="one",
    halo="xfusion.methods.fitfc:job_halo",
    params=(
        _p("preset", choices=("wang", "imagefusion", "lst"), default="wang",
           help="wang (MATLAB scripts), imagefusion (ImageFusion C++), lst (kelvin)"),
        _p("variant", choices=("wang", "imagefusion"),
           help="algorithm variant; default the preset's"),
        _p("scale_factor", "int", "coarse pixel size in fine pixels (wang); default from attrs "
           "or block-constant coarse data"),
        _p("pairs", default="nearest",
           help="nearest (before, else after), before, after, or a pair date YYYY-MM-DD"),
        _p("rm_radius", "int", "RM window radius W in coarse pixels (wang)", default=1),
        _p("rm_window", "int", "RM window in fine pixels, odd (imagefusion)", default=51),
        _p("sf_half_window", "int", "SF half window w0 (wang 20, imagefusion 25)"),
        _p("n_similar", "int", "similar pixels N_S (wang 20, imagefusion 10)"),
        _p("distance_scale", "float",
           "A of 1/(1+d/A) (default (2*w0+1)/2: wang 20.5, imagefusion 25.5)"),
        _p("eps", "float", "regulariser of a = cov/(var+eps)", default=2.220446049250313e-16),
        _p("residual", choices=("before_filter", "after_filter"), default="before_filter",
           help="before_filter (codes) or after_filter (paper)"),
        _p("resolution_factor", "float",
           "residual smoothing factor f of imagefusion (1 disables)", default=30.0),
        _p("similarity_bands", "bands", "bands ranking the candidates, e.g. red,nir or all "
           "(wang red,nir; imagefusion all)"),
        _p("border", choices=("replicate", "clip"), help="replicate (wang) or clip (imagefusion)"),
        _p("fill_residual", "bool", "fill residuals with missing taps", default=False),
        _p("edge_cells", choices=("drop", "partial"), default="drop",
           help="wang: drop (whole coarse cells only, as the scripts) or partial edge cells"),
        _p("data_range", "range", "LO,HI valid input range (default: all)"),
        _p("diagnostics", "bool", "also return a, b and the residual per band", default=False),
        _p("device", default="auto", help="auto or cpu (Fit-FC has a CPU kernel only)"),
    ),
))

_SIF_PARAMS = (
    _p("variant", choices=("residual", "paper"),
       help="residual (default: learned correction of bicubic + DMS, seconds to train) or "
       "paper (SIF-CNN-SR U-Net as published)"),
    _p("epochs", "int", "maximum training epochs without --weights (default 30)"),
    _p("steps_per_epoch", "int", "optimizer steps per epoch (residual 10, paper 20)"),
    _p("batch_size", "int", "cells (residual, 2048) or patches (paper, 16) per step"),
    _p("patience", "int", "early-stopping patience in epochs (residual 8, paper 30)"),
    _p("patch", "int", "paper: training patch size in fine px (default 64)"),
    _p("width", "int", "hidden width (residual 32; paper U-Net 16)"),
    _p("lr", "float", "learning rate (residual 3e-3; paper: the paper's)"),
    _p("alpha", "float", "paper: weight of the reconstruction term"),
    _p("gamma", "float", "paper: texture gain (negative: LST edges oppose NDVI's)"),
    _p("seed", "int", "training seed (default 0)"),
    _p("tile", "int", "inference tile size in fine px (default 512)"),
    _DEVICE,
)

for _name, _variant in (("sif-sr1", "Sobel texture loss"), ("sif-sr2", "high-pass texture loss")):
    register(Method(
        name=_name,
        kind="super-resolve",
        function="xfusion.methods.super_resolve:super_resolve",
        help=f"NDVI-guided LST sharpening trained self-supervised on the scene without "
        f"--weights: by default a learned correction of bicubic + DMS; variant=paper: "
        f"SIF-CNN-SR ({_variant})",
        needs=("guide",),
        weights=True,
        params=_SIF_PARAMS,
    ))

register(Method(
    name="dms",
    kind="super-resolve",
    function="xfusion.methods.super_resolve:super_resolve",
    help="DMS data-mining sharpener: regression trees of LST on the guide, with residual "
    "correction",
    needs=("guide",),
    params=(
        _p("window", "int", "moving window in coarse px (0: global model only)"),
        _p("homogeneity", "float", "share of most homogeneous cells (0.8)"),
        _p("std_features", "bool", "add within-cell std features"),
        _p("residual", choices=("cell", "bilinear", "none"), help="residual correction (cell)"),
        _p("aggregation", choices=("power", "mean"), help="power (kelvin) or mean"),
        _p("regressor", choices=("tree", "bagging"), help="one tree or bagged trees"),
        _p("n_estimators", "int", "bagged trees (10)"),
        _p("max_depth", "int", "maximum tree depth"),
        _p("min_samples_leaf", "int", "minimum cells per leaf (5)"),
        _p("seed", "int", "random state (0)"),
    ),
))

register(Method(
    name="bicubic",
    kind="super-resolve",
    function="xfusion.methods.super_resolve:super_resolve",
    help="bicubic interpolation (Keys a = -0.5), the classic baseline",
))

register(Method(
    name="harmonize",
    kind="super-resolve",
    function="xfusion.methods.harmonize:harmonize",
    help="Landsat-8 -> Sentinel-2 harmonization U-Net with ensemble / MC-dropout uncertainty "
    "(needs --weights)",
    needs=("weights",),
    weights=True,
    params=(
        _p("uncertainty", choices=("ensemble", "mc-dropout"), help="add <band>_std bands"),
        _p("passes", "int", "MC-dropout passes (20)"),
        _p("dropout", "float", "MC-dropout probability (0.1)"),
        _p("calibrate", "bool", "apply the uncertainty calibration stored with the weights "
           "(default true)"),
        _p("tile", "int", "tile size in output px (256)"),
        _p("halo", "int", "context px around tiles and chunks"),
        _DEVICE,
    ),
))

register(Method(
    name="stori",
    kind="gapfill",
    function="xfusion.methods.gapfill:gapfill",
    help="STORI: SAR-guided gap filling trained on the series itself without --weights "
    "(default variant residual: linear fill + boosted SAR correction; faithful: the "
    "paper's recurrent net)",
    needs=("sar",),
    weights=True,
    progress_param="progress",
    halo="xfusion.methods.gapfill:job_halo",
    params=(
        _p("variant", choices=("residual", "fixed", "faithful"),
           help="residual (default), fixed or faithful (the paper's recurrent net)"),
        _p("rounds", "int", "residual: maximum boosting rounds (default 500, early-stopped)"),
        _p("train_samples", "int", "residual: hidden steps learned from (default 120000)"),
        _p("sar_spatial", "int", "residual: SAR averaging window in px (default 3)"),
        _p("epochs", "int", "recurrent: maximum training epochs (fixed: 100, faithful: 250)"),
        _p("hidden", "int", "recurrent: LSTM hidden size (default 96)"),
        _p("batch_size", "int", "recurrent: pixels per optimizer step (default 256)"),
        _p("patience", "int-or-none", "early-stopping patience in rounds/epochs (residual: "
           "60, fixed: 10; none: no early stopping)"),
        _p("seed", "int", "training seed (default 0)"),
        _p("train_pixels", "int", "at most this many training pixels (default 8192)"),
        _p("time_budget", "float", "stop training after this many seconds"),
        _DEVICE,
    ),
))

register(Method(
    name="linear",
    kind="gapfill",
    function="xfusion.methods.gapfill:gapfill",
    help="linear interpolation in time between the observed steps",
))

register(Method(
    name="savgol",
    kind="gapfill",
    function="xfusion.methods.gapfill:gapfill",
    help="Savitzky-Golay smoothing of the linearly filled series",
    params=(
        _p("window", "int", "Savitzky-Golay window in steps (default 7)"),
        _p("polyorder", "int", "Savitzky-Golay order (default 2)"),
    ),
))

register(Method(
    name="harmonic",
    kind="gapfill",
    function="xfusion.methods.gapfill:gapfill",
    help="harmonic (Fourier) regression of each pixel's series",
    params=(
        _p("harmonics", "int", "number of harmonics (default 2)"),
        _p("period", "float", "base period in days (default 365.25)"),
        _p("trend", "bool", "add a linear trend (default false)"),
    ),
))

del _name, _variant
