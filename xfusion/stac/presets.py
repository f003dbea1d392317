"""Sensor presets: how to turn the assets of a STAC collection into physical values and masks.

A :class:`Preset` is declarative data, one per collection: the bands users ask for (with the
asset keys they may have in the items, e.g. ``lwir11`` on Landsat 8/9 and ``lwir`` on Landsat
4-7), what the items often do not say (scale, offset, nodata, data type, valid range, unit),
per-item corrections driven by item properties (the Sentinel-2 ``-1000`` offset from
processing baseline 04.00), and the QA conditions that flag a pixel as cloud, shadow, snow,
fill... (bits of a bit-packed QA band, or classes of a classification band).

:func:`xfusion.load_cube` applies a preset with ``preset="landsat-c2-l2"``; users add their own
with :func:`register_preset` (or :meth:`Preset.from_dict` for YAML/JSON job files) and change
built-in ones with :func:`dataclasses.replace`.

Values come from the product user guides (USGS Landsat C2 L2 guide, LP DAAC MOD11/MOD09/MOD13/
MCD43 user guides, ESA Sentinel-2 L2A product specification) and the Planetary Computer items
(``../shared/specs/data_access.md``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from typing import Any, Literal

from xfusion.errors import InvalidParameterError

__all__ = [
    "PRESETS",
    "BandSpec",
    "Preset",
    "PropertyRule",
    "QAFlag",
    "get_preset",
    "list_presets",
    "preset_for_collection",
    "register_preset",
]

Transform = Literal["db"]
"""Derived-band transforms: ``"db"`` is ``10 * log10(value)`` (SAR backscatter)."""

_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _version_key(value: Any) -> Any:
    """``"04.00"`` -> ``(4, 0)`` so that versions compare numerically; other values as they are."""
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)*", value.strip()):
        return tuple(int(p) for p in value.strip().split("."))
    return value


@dataclass(frozen=True, kw_only=True)
class PropertyRule:
    """A per-item correction chosen by an item property (e.g. a processing baseline)."""

    property: str
    """Item property to test, e.g. ``"s2:processing_baseline"``."""
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    """Comparison; version strings such as ``"04.00"`` compare numerically."""
    value: Any
    """Value compared with."""
    scale: float | None = None
    """Scale to use when the rule matches (None: unchanged)."""
    offset: float | None = None
    """Offset to use when the rule matches (None: unchanged)."""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise InvalidParameterError(
                f"PropertyRule op={self.op!r} is not supported. Choose one of {sorted(_OPS)!r}."
            )

    def matches(self, properties: Mapping[str, Any]) -> bool:
        """Whether the rule applies to an item with these properties (missing: no)."""
        if self.property not in properties or properties[self.property] is None:
            return False
        a, b = _version_key(properties[self.property]), _version_key(self.value)
        try:
            return bool(_OPS[self.op](a, b))
        except TypeError:
            return bool(_OPS[self.op](str(properties[self.property]), str(self.value)))


@dataclass(frozen=True, kw_only=True)
class BandSpec:
    """How one band is stored and turned into physical values.

    Item metadata (``raster:bands``) wins over ``scale``/``offset``/``nodata``/``data_type``
    /``unit`` given here, which fill what the items leave out; :attr:`rules` then override
    both for the items they match.
    """

    assets: tuple[str, ...]
    """Candidate asset keys, first present in an item wins (``("lwir11", "lwir")``)."""
    scale: float | None = None
    """Default multiplier (stored -> physical)."""
    offset: float | None = None
    """Default offset (stored -> physical)."""
    nodata: float | None = None
    """Default stored fill value (becomes NaN)."""
    data_type: str | None = None
    """Default stored data type (``"uint16"``...), needed when items carry no ``raster:bands``."""
    unit: str | None = None
    """Unit of the physical values (``"K"``, ``"1"`` for reflectance, ``"dB"``)."""
    valid_range: tuple[float, float] | None = None
    """Valid stored values ``(min, max)``, inclusive; others become NaN."""
    transform: Transform | None = None
    """Derived band: ``"db"`` gives ``10 log10`` of the physical value."""
    rules: tuple[PropertyRule, ...] = ()
    """Per-item corrections by item property."""
    qa: bool = False
    """A QA/classification band: loaded with nearest resampling in its own integer type."""
    long_name: str | None = None
    """Description used as the ``long_name`` attribute."""

    def __post_init__(self) -> None:
        if isinstance(self.assets, str) or not self.assets:
            raise InvalidParameterError(
                f"BandSpec.assets must be a non-empty tuple of asset keys, found {self.assets!r}; "
                "e.g. assets=('lwir11', 'lwir')."
            )
        if self.transform not in (None, "db"):
            raise InvalidParameterError(
                f"BandSpec.transform={self.transform!r} is not supported; use None or 'db'."
            )


@dataclass(frozen=True, kw_only=True)
class QAFlag:
    """One condition on a QA asset that flags pixels (several flags may share a name)."""

    name: str
    """Flag name users mask by: ``"fill"``, ``"cloud"``, ``"shadow"``, ``"snow"``, ``"cirrus"``..."""
    asset: str
    """QA asset key (``"qa_pixel"``, ``"QC_Day"``, ``"SCL"``...)."""
    values: tuple[int, ...]
    """Flagged values of the field (bit-field value, or class value when ``bits`` is None)."""
    bits: tuple[int, int] | None = None
    """Bit field ``(first bit, number of bits)``; None compares the whole value (classes)."""
    applies_to: tuple[str, ...] | None = None
    """Asset keys of the data bands it masks; None masks every data band."""
    description: str = ""
    """What the flag means (from the product guide)."""

    def __post_init__(self) -> None:
        if not self.values:
            raise InvalidParameterError(f"QAFlag {self.name!r} needs at least one value.")
        if self.bits is not None and (self.bits[0] < 0 or self.bits[1] < 1):
            raise InvalidParameterError(
                f"QAFlag {self.name!r}: bits={self.bits!r} must be (first bit >= 0, length >= 1)."
            )

    def masks(self, asset: str) -> bool:
        """Whether this flag applies to the data asset ``asset``."""
        return self.applies_to is None or asset in self.applies_to


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Everything :func:`xfusion.load_cube` needs to know about one STAC collection."""

    name: str
    """Preset name (the Planetary Computer collection id for the built-in ones)."""
    collections: tuple[str, ...]
    """Collection ids whose items this preset reads."""
    bands: Mapping[str, BandSpec]
    """Band name -> spec; names are what users pass in ``bands=`` (``"lst"``, ``"red"``...)."""
    default_bands: tuple[str, ...]
    """Bands loaded when ``bands=`` is not given."""
    qa: tuple[QAFlag, ...] = ()
    """QA conditions available for masking."""
    default_mask: tuple[str, ...] = ()
    """Flag names masked by default (``mask="auto"``)."""
    platforms: tuple[str, ...] | None = None
    """Platforms that must not be mixed in one cube (MODIS Terra/Aqua overpass at other hours)."""
    requires_account: bool = False
    """Signing the assets needs a Planetary Computer subscription key."""
    cloud_property: str | None = "eo:cloud_cover"
    """Item property with the scene cloud cover in percent (``max_cloud=`` of search)."""
    description: str = ""
    """Short description of the product."""
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Free-form notes (product guide references...)."""
    grid_anchor: str | None = None
    """How the product's pixel grid is aligned, used whenever a grid is derived for it
    (``crs=``/``resolution=``/``bbox=``): ``"center"`` puts pixel centres on multiples of the
    pixel size (Landsat: 30 m pixels with edges on odd multiples of 15 m), ``"edge"`` puts pixel
    edges there (Sentinel-2: multiples of 10/20/60 m; MODIS tiles). ``None``: odc-stac's default."""
    utm_north_only: bool = False
    """The product is delivered in the northern UTM zones even south of the equator (negative
    northings), as Landsat Collection 2 is: ``"utm"`` grids for it use those zones."""

    def __post_init__(self) -> None:
        if not self.collections:
            raise InvalidParameterError(f"Preset {self.name!r} needs at least one collection id.")
        unknown = [b for b in self.default_bands if b not in self.bands]
        if unknown:
            raise InvalidParameterError(
                f"Preset {self.name!r}: default_bands {unknown!r} are not in its bands "
                f"{sorted(self.bands)!r}."
            )
        if self.grid_anchor not in (None, "center", "edge"):
            raise InvalidParameterError(
                f"Preset {self.name!r}: grid_anchor={self.grid_anchor!r} must be 'center', "
                "'edge' or None."
            )
        names = {f.name for f in self.qa}
        bad = [m for m in self.default_mask if m not in names]
        if bad:
            raise InvalidParameterError(
                f"Preset {self.name!r}: default_mask {bad!r} are not QA flags; it has "
                f"{sorted(names)!r}."
            )

    def __hash__(self) -> int:
        return hash((self.name, self.collections))

    def __dask_tokenize__(self) -> Any:
        """Tokenize by value (dask), as the other configs do."""
        return (
            type(self).__name__,
            self.name,
            self.collections,
            tuple((k, astuple(v)) for k, v in sorted(self.bands.items())),
            tuple(astuple(f) for f in self.qa),
            self.default_mask,
        )

    @property
    def flags(self) -> tuple[str, ...]:
        """Names of the QA flags, sorted."""
        return tuple(sorted({f.name for f in self.qa}))

    def spec(self, band: str) -> BandSpec | None:
        """The spec of a band name, or of the band whose ``assets`` hold this asset key."""
        if band in self.bands:
            return self.bands[band]
        for spec in self.bands.values():
            if band in spec.assets and spec.transform is None:
                return spec
        return None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], /) -> Preset:
        """Build a preset from plain data (a parsed YAML/JSON document).

        Bands are ``{name: {"assets": [...], "scale": ..., "rules": [{...}]}}`` and ``qa`` a
        list of ``{"name", "asset", "values", "bits", "applies_to"}`` mappings.

        Examples
        --------
        >>> p = Preset.from_dict({
        ...     "name": "my-lst", "collections": ["my-lst"], "default_bands": ["lst"],
        ...     "bands": {"lst": {"assets": ["LST"], "scale": 0.02, "nodata": 0, "unit": "K"}},
        ... })
        >>> p.bands["lst"].scale
        0.02
        """
        d = dict(doc)
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise InvalidParameterError(
                f"Unknown preset keys {extra!r}; valid keys are {sorted(known)!r}."
            )

        def tup(v: Any) -> tuple[Any, ...]:
            return (v,) if isinstance(v, (str, int, float)) else tuple(v)

        bands = {}
        for name, spec in (d.get("bands") or {}).items():
            s = dict(spec)
            s["assets"] = tup(s.get("assets", (name,)))
            s["rules"] = tuple(PropertyRule(**r) for r in s.get("rules", ()))
            if s.get("valid_range") is not None:
                s["valid_range"] = tuple(s["valid_range"])
            bands[str(name)] = BandSpec(**s)
        qa = []
        for f in d.get("qa") or ():
            g = dict(f)
            g["values"] = tup(g["values"])
            if g.get("bits") is not None:
                g["bits"] = tuple(g["bits"])
            if g.get("applies_to") is not None:
                g["applies_to"] = tup(g["applies_to"])
            qa.append(QAFlag(**g))
        d["bands"] = bands
        d["qa"] = tuple(qa)
        d["collections"] = tup(d.get("collections", (d.get("name"),)))
        d["default_bands"] = tup(d.get("default_bands", ()))
        d["default_mask"] = tup(d.get("default_mask", ()))
        if d.get("platforms") is not None:
            d["platforms"] = tup(d["platforms"])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# registry

PRESETS: dict[str, Preset] = {}
"""Registered presets by name (use :func:`register_preset` / :func:`get_preset`)."""


def register_preset(preset: Preset, /, *, overwrite: bool = False) -> Preset:
    """Register a preset so that ``load_cube(..., preset=name)`` and searches find it.

    Parameters
    ----------
    preset : Preset
        The preset (e.g. ``dataclasses.replace(get_preset("landsat-c2-l2"), name="mine")``).
    overwrite : bool, default False
        Replace a registered preset of the same name.

    Returns
    -------
    Preset
        The preset, for chaining.

    Raises
    ------
    InvalidParameterError
        When the name is taken and ``overwrite`` is False, or ``preset`` is not a Preset.
    """
    if not isinstance(preset, Preset):
        raise InvalidParameterError(
            f"register_preset() needs a Preset, found {type(preset).__name__}. Build one with "
            "Preset(...) or Preset.from_dict({...})."
        )
    if preset.name in PRESETS and not overwrite:
        raise InvalidParameterError(
            f"A preset named {preset.name!r} is already registered. Pass overwrite=True to "
            "replace it, or choose another name."
        )
    PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    """Names of the registered presets, sorted."""
    return sorted(PRESETS)


def get_preset(preset: str | Preset, /) -> Preset:
    """Return a registered preset by name (a :class:`Preset` is returned as is).

    Raises
    ------
    InvalidParameterError
        For an unknown name; the message lists the registered presets.
    """
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    by_collection = preset_for_collection(preset) if isinstance(preset, str) else None
    if by_collection is not None:
        return by_collection
    import difflib

    close = difflib.get_close_matches(str(preset), list(PRESETS), n=3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidParameterError(
        f"Unknown preset {preset!r}.{hint} Registered presets are {list_presets()!r}; add "
        "your own with xfusion.stac.presets.register_preset(Preset(...))."
    )


def preset_for_collection(collection: str | None, /) -> Preset | None:
    """The registered preset that reads ``collection`` (by name first), or None."""
    if not collection:
        return None
    if collection in PRESETS and collection in PRESETS[collection].collections:
        return PRESETS[collection]
    for p in PRESETS.values():
        if collection in p.collections:
            return p
    return None


# --------------------------------------------------------------------------------------------
# built-in presets


def _bits(
    name: str, asset: str, first: int, length: int, values: Iterable[int], what: str,
    applies_to: Sequence[str] | None = None,
) -> QAFlag:
    return QAFlag(
        name=name, asset=asset, bits=(first, length), values=tuple(values), description=what,
        applies_to=None if applies_to is None else tuple(applies_to),
    )


def _classes(
    name: str, asset: str, values: Iterable[int], what: str,
    applies_to: Sequence[str] | None = None,
) -> QAFlag:
    return QAFlag(
        name=name, asset=asset, values=tuple(values), description=what,
        applies_to=None if applies_to is None else tuple(applies_to),
    )


def _landsat() -> Preset:
    sr = {"scale": 2.75e-05, "offset": -0.2, "nodata": 0, "data_type": "uint16", "unit": "1"}
    bands = {
        "lst": BandSpec(
            assets=("lwir11", "lwir"), scale=0.00341802, offset=149.0, nodata=0,
            data_type="uint16", unit="K",
            long_name="Surface temperature (ST_B10 on Landsat 8/9, ST_B6 on Landsat 4-7)",
        ),
        "coastal": BandSpec(assets=("coastal",), long_name="Coastal aerosol reflectance", **sr),
        "blue": BandSpec(assets=("blue",), long_name="Blue surface reflectance", **sr),
        "green": BandSpec(assets=("green",), long_name="Green surface reflectance", **sr),
        "red": BandSpec(assets=("red",), long_name="Red surface reflectance", **sr),
        "nir": BandSpec(assets=("nir08",), long_name="Near-infrared surface reflectance", **sr),
        "nir08": BandSpec(assets=("nir08",), long_name="Near-infrared surface reflectance", **sr),
        "swir16": BandSpec(assets=("swir16",), long_name="SWIR 1.6 um surface reflectance", **sr),
        "swir22": BandSpec(assets=("swir22",), long_name="SWIR 2.2 um surface reflectance", **sr),
        "lst_uncertainty": BandSpec(
            assets=("qa",), scale=0.01, nodata=-9999, data_type="int16", unit="K",
            long_name="Surface temperature uncertainty (ST_QA)",
        ),
        "emis": BandSpec(
            assets=("emis",), scale=0.0001, nodata=-9999, data_type="int16", unit="1",
            long_name="Emissivity of the thermal band (ST_EMIS)",
        ),
        "qa_pixel": BandSpec(
            assets=("qa_pixel",), nodata=1, data_type="uint16", qa=True,
            long_name="Pixel quality bits (QA_PIXEL)",
        ),
    }
    qa = (
        _bits("fill", "qa_pixel", 0, 1, [1], "Fill (no data)"),
        _bits("cloud", "qa_pixel", 1, 1, [1], "Dilated cloud"),
        _bits("cloud", "qa_pixel", 3, 1, [1], "Cloud"),
        _bits("cirrus", "qa_pixel", 2, 1, [1], "Cirrus (Landsat 8/9 only)"),
        _bits("shadow", "qa_pixel", 4, 1, [1], "Cloud shadow"),
        _bits("snow", "qa_pixel", 5, 1, [1], "Snow/ice"),
        _bits("water", "qa_pixel", 7, 1, [1], "Water"),
        _bits("cloud_medium", "qa_pixel", 8, 2, [2, 3], "Cloud confidence medium or high"),
    )
    return Preset(
        name="landsat-c2-l2",
        collections=("landsat-c2-l2",),
        bands=bands,
        default_bands=("lst",),
        qa=qa,
        default_mask=("fill", "cloud", "cirrus", "shadow", "snow"),
        grid_anchor="center",
        utm_north_only=True,
        description="Landsat Collection 2 Level-2 surface reflectance and temperature (USGS)",
        extras={"guide": "Landsat 8-9 C2 L2 Science Product Guide (LSDS-1619)"},
    )


def _modis_lst() -> Preset:
    lst = {"scale": 0.02, "nodata": 0, "data_type": "uint16", "unit": "K",
           "valid_range": (7500.0, 65535.0)}
    day, night = ("LST_Day_1km",), ("LST_Night_1km",)

    def qc(asset: str, to: tuple[str, ...]) -> tuple[QAFlag, ...]:
        return (
            _bits("cloud", asset, 0, 2, [2], "LST not produced due to cloud", to),
            _bits("fill", asset, 0, 2, [3], "LST not produced (other reasons than clouds)", to),
            _bits("low_quality", asset, 0, 2, [1], "LST produced, other quality", to),
            _bits("error_gt_2k", asset, 6, 2, [2, 3], "Average LST error > 2 K", to),
            _bits("error_gt_1k", asset, 6, 2, [1, 2, 3], "Average LST error > 1 K", to),
        )

    return Preset(
        name="modis-11A1-061",
        collections=("modis-11A1-061",),
        bands={
            "lst": BandSpec(assets=day, long_name="Daytime land surface temperature", **lst),
            "lst_day": BandSpec(assets=day, long_name="Daytime land surface temperature", **lst),
            "lst_night": BandSpec(
                assets=night, long_name="Night-time land surface temperature", **lst
            ),
            "qc_day": BandSpec(assets=("QC_Day",), data_type="uint8", qa=True,
                               long_name="Daytime LST quality control bits"),
            "qc_night": BandSpec(assets=("QC_Night",), data_type="uint8", qa=True,
                                 long_name="Night-time LST quality control bits"),
            "view_time": BandSpec(assets=("Day_view_time",), scale=0.1, nodata=255,
                                  data_type="uint8", unit="h",
                                  long_name="Local solar time of the daytime observation"),
            "view_angle": BandSpec(assets=("Day_view_angl",), offset=-65.0, nodata=255,
                                   data_type="uint8", unit="degree",
                                   long_name="View zenith angle of the daytime observation"),
            "emis_31": BandSpec(assets=("Emis_31",), scale=0.002, offset=0.49, nodata=0,
                                data_type="uint8", unit="1", long_name="Band 31 emissivity"),
            "emis_32": BandSpec(assets=("Emis_32",), scale=0.002, offset=0.49, nodata=0,
                                data_type="uint8", unit="1", long_name="Band 32 emissivity"),
        },
        default_bands=("lst",),
        qa=qc("QC_Day", day) + qc("QC_Night", night),
        default_mask=("cloud", "fill"),
        platforms=("terra", "aqua"),
        grid_anchor="edge",
        description="MODIS Terra (MOD11A1) / Aqua (MYD11A1) daily LST, 1 km (LP DAAC)",
        extras={"guide": "MODIS LST Products User's Guide C6.1 (Wan 2019)"},
    )


def _modis_nbar() -> Preset:
    names = {1: "red", 2: "nir", 3: "blue", 4: "green", 5: "swir12", 6: "swir16", 7: "swir22"}
    bands: dict[str, BandSpec] = {}
    qa: list[QAFlag] = []
    for n, common in names.items():
        asset = f"Nadir_Reflectance_Band{n}"
        spec = BandSpec(assets=(asset,), scale=0.0001, nodata=32767, data_type="int16", unit="1",
                        long_name=f"Nadir BRDF-adjusted reflectance, band {n} ({common})")
        bands[common] = spec
        bands[f"band{n}"] = spec
        q = f"BRDF_Albedo_Band_Mandatory_Quality_Band{n}"
        bands[f"quality_band{n}"] = BandSpec(assets=(q,), nodata=255, data_type="uint8", qa=True)
        qa.append(_classes("fill", q, [255], f"Band {n}: fill value", [asset]))
        qa.append(_classes("low_quality", q, [1], f"Band {n}: magnitude inversion", [asset]))
    bands["nir08"] = bands["nir"]
    return Preset(
        name="modis-43A4-061",
        collections=("modis-43A4-061",),
        bands=bands,
        default_bands=("red", "nir"),
        qa=tuple(qa),
        default_mask=("fill",),
        grid_anchor="edge",
        description="MODIS MCD43A4 daily nadir BRDF-adjusted reflectance, 500 m (LP DAAC)",
    )


def _modis_state_flags(asset: str) -> tuple[QAFlag, ...]:
    return (
        _bits("cloud", asset, 0, 2, [1, 2], "Cloud state: cloudy or mixed"),
        _bits("cloud", asset, 10, 1, [1], "Internal cloud algorithm flag"),
        _bits("shadow", asset, 2, 1, [1], "Cloud shadow"),
        _bits("cirrus", asset, 8, 2, [2, 3], "Cirrus: average or high"),
        _bits("snow", asset, 15, 1, [1], "Internal snow mask"),
        _bits("snow", asset, 12, 1, [1], "MOD35 snow/ice flag"),
        _bits("adjacent_cloud", asset, 13, 1, [1], "Pixel adjacent to cloud"),
        _bits("water", asset, 3, 3, [0, 3, 4, 5, 6, 7], "Land/water flag: water"),
    )


def _modis_sr(name: str, res: str, nbands: int, qc_dtype: str) -> Preset:
    common = {1: "red", 2: "nir", 3: "blue", 4: "green", 5: "swir12", 6: "swir16", 7: "swir22"}
    sr = {"scale": 0.0001, "nodata": -28672, "data_type": "int16", "unit": "1",
          "valid_range": (-100.0, 16000.0)}
    bands: dict[str, BandSpec] = {}
    for n in range(1, nbands + 1):
        spec = BandSpec(assets=(f"sur_refl_b0{n}",),
                        long_name=f"Surface reflectance, band {n} ({common[n]})", **sr)
        bands[common[n]] = spec
        bands[f"band{n}"] = spec
    bands["nir08"] = bands["nir"]
    state, qc = f"sur_refl_state_{res}", f"sur_refl_qc_{res}"
    bands["state"] = BandSpec(assets=(state,), data_type="uint16", qa=True,
                              long_name="Surface reflectance state flags")
    bands["qc"] = BandSpec(assets=(qc,), data_type=qc_dtype, qa=True,
                           long_name="Surface reflectance band quality flags")
    qa = (*_modis_state_flags(state),
          _bits("fill", qc, 0, 2, [2, 3], "MODLAND QA: not produced"),
          _bits("low_quality", qc, 0, 2, [1], "MODLAND QA: less than ideal quality"))
    return Preset(
        name=name,
        collections=(name,),
        bands=bands,
        default_bands=("red", "nir"),
        qa=qa,
        default_mask=("cloud", "shadow", "cirrus", "snow"),
        platforms=("terra", "aqua"),
        grid_anchor="edge",
        description=f"MODIS 8-day surface reflectance ({res}), Terra MOD / Aqua MYD (LP DAAC)",
    )


def _modis_vi() -> Preset:
    vi = {"scale": 0.0001, "nodata": -3000, "data_type": "int16", "unit": "1",
          "valid_range": (-2000.0, 10000.0)}
    refl = {"scale": 0.0001, "nodata": -1000, "data_type": "int16", "unit": "1",
            "valid_range": (0.0, 10000.0)}
    rel, viq = "250m_16_days_pixel_reliability", "250m_16_days_VI_Quality"
    return Preset(
        name="modis-13Q1-061",
        collections=("modis-13Q1-061",),
        bands={
            "ndvi": BandSpec(assets=("250m_16_days_NDVI",), long_name="16-day NDVI", **vi),
            "evi": BandSpec(assets=("250m_16_days_EVI",), long_name="16-day EVI", **vi),
            "red": BandSpec(assets=("250m_16_days_red_reflectance",),
                            long_name="Red reflectance of the composited pixel", **refl),
            "nir": BandSpec(assets=("250m_16_days_NIR_reflectance",),
                            long_name="NIR reflectance of the composited pixel", **refl),
            "blue": BandSpec(assets=("250m_16_days_blue_reflectance",),
                             long_name="Blue reflectance of the composited pixel", **refl),
            "mir": BandSpec(assets=("250m_16_days_MIR_reflectance",),
                            long_name="MIR reflectance of the composited pixel", **refl),
            "reliability": BandSpec(assets=(rel,), nodata=-1, data_type="int8", qa=True,
                                    long_name="Pixel reliability rank"),
            "vi_quality": BandSpec(assets=(viq,), nodata=65535, data_type="uint16", qa=True,
                                   long_name="VI quality bits"),
        },
        default_bands=("ndvi",),
        qa=(
            _classes("fill", rel, [-1], "Fill/no data"),
            _classes("low_quality", rel, [1], "Marginal data"),
            _classes("snow", rel, [2], "Snow/ice"),
            _classes("cloud", rel, [3], "Cloudy"),
            _bits("shadow", viq, 15, 1, [1], "Possible shadow"),
            _bits("cloud", viq, 10, 1, [1], "Mixed clouds"),
            _bits("adjacent_cloud", viq, 8, 1, [1], "Adjacent cloud detected"),
        ),
        default_mask=("fill", "cloud", "snow", "shadow"),
        platforms=("terra", "aqua"),
        grid_anchor="edge",
        description="MODIS 16-day vegetation indices, 250 m (MOD13Q1 / MYD13Q1, LP DAAC)",
    )


_S2_BANDS = {  # name: (PC asset, Earth-Search/stactools asset, long name)
    "coastal": ("B01", "coastal", "Coastal aerosol (B01, 60 m)"),
    "blue": ("B02", "blue", "Blue (B02, 10 m)"),
    "green": ("B03", "green", "Green (B03, 10 m)"),
    "red": ("B04", "red", "Red (B04, 10 m)"),
    "rededge1": ("B05", "rededge1", "Red edge 1 (B05, 20 m)"),
    "rededge2": ("B06", "rededge2", "Red edge 2 (B06, 20 m)"),
    "rededge3": ("B07", "rededge3", "Red edge 3 (B07, 20 m)"),
    "nir": ("B08", "nir", "NIR (B08, 10 m)"),
    "nir08": ("B8A", "nir08", "Narrow NIR (B8A, 20 m)"),
    "nir09": ("B09", "nir09", "Water vapour (B09, 60 m)"),
    "swir16": ("B11", "swir16", "SWIR 1.6 um (B11, 20 m)"),
    "swir22": ("B12", "swir22", "SWIR 2.2 um (B12, 20 m)"),
}

S2_BASELINE_OFFSET = PropertyRule(
    property="s2:processing_baseline", op=">=", value="04.00", offset=-0.1
)
"""Processing baseline >= 04.00 (acquisitions from 2022-01-25): BOA_ADD_OFFSET = -1000 DN."""


def _sentinel2() -> Preset:
    bands: dict[str, BandSpec] = {}
    for name, (pc, es, long_name) in _S2_BANDS.items():
        spec = BandSpec(
            assets=(pc, es), scale=0.0001, offset=0.0, nodata=0, data_type="uint16", unit="1",
            rules=(S2_BASELINE_OFFSET,), long_name=f"Surface reflectance, {long_name}",
        )
        bands[name] = spec
        bands[pc] = spec
    bands["aot"] = BandSpec(assets=("AOT", "aot"), scale=0.001, nodata=0, data_type="uint16",
                            unit="1", long_name="Aerosol optical thickness")
    bands["wvp"] = BandSpec(assets=("WVP", "wvp"), scale=0.001, nodata=0, data_type="uint16",
                            unit="cm", long_name="Water vapour")
    bands["scl"] = BandSpec(assets=("SCL", "scl"), nodata=0, data_type="uint8", qa=True,
                            long_name="Scene classification")
    qa = []
    for asset in ("SCL", "scl"):
        qa += [
            _classes("fill", asset, [0], "No data"),
            _classes("saturated", asset, [1], "Saturated or defective"),
            _classes("dark", asset, [2], "Dark area / topographic shadow"),
            _classes("shadow", asset, [3], "Cloud shadow"),
            _classes("water", asset, [6], "Water"),
            _classes("cloud", asset, [8, 9], "Cloud, medium or high probability"),
            _classes("cirrus", asset, [10], "Thin cirrus"),
            _classes("snow", asset, [11], "Snow/ice"),
        ]
    return Preset(
        name="sentinel-2-l2a",
        collections=("sentinel-2-l2a",),
        bands=bands,
        default_bands=("red", "nir"),
        qa=tuple(qa),
        default_mask=("fill", "saturated", "shadow", "cloud", "cirrus", "snow"),
        grid_anchor="edge",
        description="Sentinel-2 L2A surface reflectance (ESA), -1000 DN offset from baseline 04.00",
    )


def _sentinel1() -> Preset:
    bands: dict[str, BandSpec] = {}
    for pol in ("vv", "vh", "hh", "hv"):
        lin = {"nodata": -32768, "data_type": "float32"}
        bands[pol] = BandSpec(assets=(pol,), unit="1", **lin,
                              long_name=f"{pol.upper()} gamma0 backscatter, linear power (RTC)")
        bands[f"{pol}_db"] = BandSpec(assets=(pol,), unit="dB", transform="db", **lin,
                                      long_name=f"{pol.upper()} gamma0 backscatter in dB (RTC)")
    return Preset(
        name="sentinel-1-rtc",
        collections=("sentinel-1-rtc",),
        bands=bands,
        default_bands=("vv", "vh"),
        requires_account=True,
        cloud_property=None,
        description="Sentinel-1 radiometrically terrain-corrected gamma0 (Planetary Computer)",
    )


for _p in (
    _landsat(),
    _modis_lst(),
    _modis_nbar(),
    _modis_sr("modis-09A1-061", "500m", 7, "uint32"),
    _modis_sr("modis-09Q1-061", "250m", 2, "uint16"),
    _modis_vi(),
    _sentinel2(),
    _sentinel1(),
):
    register_preset(_p)
del _p
