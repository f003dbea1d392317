"""The ``xfusion`` command line: ``xfusion fuse``, ``xfusion demo``, ``xfusion --version``.

``xfusion fuse METHOD --fine DATE=PATH ... --coarse DATE=PATH ... --out OUT`` builds a cube
from GeoTIFFs with :func:`xfusion.cube.from_geotiffs`, runs a method from :data:`METHODS` and
writes a GeoTIFF or a Zarr store. Adding a method to the CLI is one :class:`MethodEntry` in
:data:`METHODS`.

Exit codes: 0 on success, 2 for usage errors (unknown method, malformed ``DATE=PATH``, unknown
or invalid ``--param``), 1 when the inputs are rejected while running (unreadable file, no
overlap, no pair...). Errors print one message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xfusion.errors import XFusionError

__all__ = ["METHODS", "MethodEntry", "Param", "build_parser", "main"]


# --------------------------------------------------------------------------------------------
# method registry


def parse_bool(text: str) -> bool:
    """Parse ``true/false/yes/no/1/0/on/off`` (case-insensitive)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, found {text!r}")


def parse_str(text: str) -> str:
    """Return ``text`` unchanged (the identity parser)."""
    return text


def parse_range(text: str) -> tuple[float, float]:
    """Parse ``LO,HI`` (two numbers, ``inf`` allowed) into a float pair."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"expected LO,HI such as 0,10000, found {text!r}")
    return float(parts[0]), float(parts[1])


@dataclass(frozen=True, kw_only=True)
class Param:
    """One ``--param KEY=VALUE`` a method accepts."""

    parse: Callable[[str], Any] = parse_str
    """Turns the text into the keyword value (``int``, ``float``, :func:`parse_bool`...);
    raising ``ValueError`` marks the value invalid."""
    help: str = ""
    """One line shown by ``xfusion fuse --help``."""
    choices: tuple[str, ...] | None = None
    """Allowed texts, when the value is one of a fixed set."""

    def convert(self, key: str, text: str) -> Any:
        """Parse ``text``; raise ``ValueError`` with a readable message when invalid."""
        if self.choices is not None and text not in self.choices:
            raise ValueError(
                f"invalid value {text!r} for {key}; choose one of {list(self.choices)}"
            )
        try:
            return self.parse(text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid value {text!r} for {key}: {err}") from None


@dataclass(frozen=True, kw_only=True)
class MethodEntry:
    """A fusion method as the CLI sees it: where the function lives and its parameters.

    The function is called as ``func(ds, fine=..., coarse=..., targets=..., **params)``.
    """

    target: str
    """``"module:function"``, imported when the method runs (keeps ``--help`` fast)."""
    help: str
    """One line shown in ``xfusion fuse --help``."""
    params: Mapping[str, Param] = field(default_factory=dict)
    """Keyword parameters settable with ``--param KEY=VALUE``."""

    def load(self) -> Callable[..., Any]:
        """Import and return the method function."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


METHODS: dict[str, MethodEntry] = {
    "baseline": MethodEntry(
        target="xfusion.methods.baseline:baseline",
        help="naive baselines: fine at the pair, or fine plus the coarse change",
        params={
            "method": Param(
                choices=("fine-plus-change", "fine-at-pair"),
                help="fine-plus-change (default): L1 + (M2 - M1); fine-at-pair: L1",
            ),
            "pairs": Param(
                help="nearest (default), before, after, or one pair date YYYY-MM-DD",
            ),
        },
    ),
    "starfm": MethodEntry(
        target="xfusion.methods.starfm:_starfm_cli",
        help="STARFM (Gao et al. 2006), exact to USDA v1.2.1 in mode=reference; fine dates on "
        "both sides of a target use both pairs",
        params={
            "preset": Param(
                choices=("usda", "reflectance", "lst"),
                help="usda (default: reflectance x1e4, reference mode), reflectance (0..1), "
                "lst (kelvin)",
            ),
            "mode": Param(
                choices=("reference", "float"),
                help="reference (USDA v1.2.1 rounding) or float; default from the preset",
            ),
            "max_search_distance": Param(parse=float, help="search distance in metres (usda: 750)"),
            "resolution": Param(
                parse=float, help="pixel size in metres (default from the grid; needed for degrees)"
            ),
            "num_slice": Param(parse=int, help="NUM_SLICE_PURE_TEST (usda: 40)"),
            "uncertainty_fine": Param(parse=float, help="fine (Landsat) uncertainty (usda: 50)"),
            "uncertainty_coarse": Param(parse=float, help="coarse (MODIS) uncertainty (usda: 50)"),
            "data_range": Param(parse=parse_range, help="LO,HI valid data range (usda: 0,10000)"),
            "distance_offset": Param(parse=float, help="the +1 of the distance term (usda: 1)"),
            "fill": Param(
                parse=float, help="FILL value: inputs equal to it are nodata (usda: -9999)"
            ),
            "pairs": Param(
                help="bracket (default with fine dates on both sides of every target), nearest "
                "(the pair before; default otherwise), before, after, or a pair date YYYY-MM-DD",
            ),
            "device": Param(help="auto (default: CUDA when present), cpu, cuda or cuda:N"),
        },
    ),
}
"""Method name → :class:`MethodEntry`. Later methods (``starfm``, ``sttfn``...) add one entry."""


# --------------------------------------------------------------------------------------------
# argument parsing


class _UsageError(Exception):
    """A usage error detected after argparse (reported like argparse's, exit code 2)."""


def _dated_path(text: str) -> tuple[str, str]:
    from xfusion.cube.build import to_datetime64

    date, sep, path = text.partition("=")
    if not sep or not date.strip() or not path.strip():
        raise argparse.ArgumentTypeError(
            f"expected DATE=PATH such as 2020-03-08=landsat.tif, found {text!r}"
        )
    try:
        to_datetime64(date, what="date")
    except XFusionError:
        raise argparse.ArgumentTypeError(
            f"{date!r} in {text!r} is not a date; write DATE=PATH with DATE as YYYY-MM-DD"
        ) from None
    return date.strip(), path.strip()


def _date(text: str) -> str:
    from xfusion.cube.build import to_datetime64

    try:
        to_datetime64(text, what="date")
    except XFusionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD") from None
    return text.strip()


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE such as method=fine-at-pair, found {text!r}"
        )
    return key.strip(), value.strip()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def _methods_help() -> str:
    lines = ["methods and their --param keys:"]
    for name, entry in METHODS.items():
        lines.append(f"  {name}: {entry.help}")
        for key, p in entry.params.items():
            lines.append(f"      {key}=...  {p.help}")
    return "\n".join(lines)


_FUSE_EPILOG = """
output layout:
  PATH.tif   one GeoTIFF, float32, NaN nodata, one band per (target, variable), target-major.
             Band descriptions are the target dates (YYYY-MM-DD) for single-band inputs, or
             DATE/VARIABLE (e.g. 2020-03-17/fine_red) for multi-band inputs.
  PATH.zarr  a Zarr v3 store holding the result Dataset: one variable per fine band, dims
             (time, y, x) (latitude, longitude for a geographic CRS), the pair_time
             coordinate and the CRS (spatial_ref). Read it with xfusion.io.open_zarr.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the ``xfusion`` argument parser."""
    from xfusion import __version__

    parser = argparse.ArgumentParser(
        prog="xfusion",
        description="Lazy, scalable satellite image fusion on xarray/Dask datacubes.",
    )
    parser.add_argument("--version", action="version", version=f"xfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fuse = sub.add_parser(
        "fuse",
        help="fuse fine and coarse GeoTIFFs with a method",
        description="Build a cube from dated GeoTIFFs, predict fine images at target dates\n"
        "and write them to a GeoTIFF or a Zarr store.\n\n" + _methods_help(),
        epilog=_FUSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuse.add_argument("method", metavar="METHOD", help=f"one of {sorted(METHODS)}")
    fuse.add_argument(
        "--fine",
        metavar="DATE=PATH",
        type=_dated_path,
        action="append",
        required=True,
        help="a fine GeoTIFF and its date (repeat for more dates)",
    )
    fuse.add_argument(
        "--coarse",
        metavar="DATE=PATH",
        type=_dated_path,
        action="append",
        required=True,
        help="a coarse GeoTIFF and its date (any grid/CRS; reprojected onto the fine grid)",
    )
    fuse.add_argument(
        "--target",
        metavar="DATE",
        type=_date,
        action="append",
        default=None,
        help="a date to predict (repeat for more); default: every coarse date without fine",
    )
    fuse.add_argument(
        "--out", metavar="PATH", required=True, help="output PATH.tif (GeoTIFF) or PATH.zarr"
    )
    fuse.add_argument(
        "--param",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="a method parameter (repeat for more; see the list above)",
    )
    fuse.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=1024,
        help="spatial chunk size in pixels for lazy, memory-bounded processing (default 1024)",
    )
    fuse.add_argument(
        "--resampling",
        default="bilinear",
        help="resampling of coarse files onto the fine grid (default bilinear)",
    )
    fuse.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fuse.set_defaults(handler=_cmd_fuse, subparser=fuse)

    demo = sub.add_parser("demo", help="run the self-contained demo (synthetic data)")
    demo.add_argument("--out", metavar="DIR", default=None, help="output folder")
    demo.add_argument("--size", metavar="N", type=_positive_int, default=None, help="image size")
    demo.set_defaults(handler=_cmd_demo, subparser=demo)
    return parser


# --------------------------------------------------------------------------------------------
# commands


def _method_params(
    entry: MethodEntry, name: str, pairs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, text in pairs:
        if key not in entry.params:
            raise _UsageError(
                f"unknown --param {key!r} for method {name!r}; valid keys: {sorted(entry.params)}"
            )
        if key in params:
            raise _UsageError(f"--param {key!r} is given twice; give it once")
        try:
            params[key] = entry.params[key].convert(key, text)
        except ValueError as err:
            raise _UsageError(f"--param {err}") from None
    return params


def _out_format(path: str) -> str:
    low = path.rstrip("/\\").lower()
    if low.endswith((".tif", ".tiff")):
        return "tif"
    if low.endswith(".zarr"):
        return "zarr"
    raise _UsageError(f"--out must end in .tif, .tiff or .zarr, found {path!r}")


def _role_names(ds: Any, prefix: str) -> list[str]:
    return [str(n) for n in ds.data_vars if n == prefix or str(n).startswith(f"{prefix}_")]


def _cmd_fuse(args: argparse.Namespace) -> int:
    if args.method not in METHODS:
        raise _UsageError(f"unknown METHOD {args.method!r}; choose one of {sorted(METHODS)}")
    entry = METHODS[args.method]
    params = _method_params(entry, args.method, args.param)
    fmt = _out_format(args.out)
    if os.path.exists(args.out) and not args.overwrite:
        raise _UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")

    from xfusion.cube.build import from_geotiffs

    ds = from_geotiffs(
        fine=args.fine,
        coarse=args.coarse,
        chunks=args.chunks,
        resampling=args.resampling,
    )
    fine, coarse = _role_names(ds, "fine"), _role_names(ds, "coarse")
    func = entry.load()
    out = func(
        ds,
        fine=fine[0] if len(fine) == 1 else fine,
        coarse=coarse[0] if len(coarse) == 1 else coarse,
        targets=args.target,
        **params,
    )
    if fmt == "tif":
        write_geotiff(out, args.out)
    else:
        _write_zarr(out, args.out)
    n_t, names = out.sizes["time"], list(out.data_vars)
    print(f"xfusion: wrote {n_t} target(s) x {len(names)} variable(s) to {args.out}")
    return 0


def write_geotiff(out: Any, path: str) -> None:
    """Write a method's result Dataset as one float32 GeoTIFF, one band per (target, variable).

    Bands are ordered target-major; descriptions are ``YYYY-MM-DD`` (one variable) or
    ``YYYY-MM-DD/<variable>``. NaN is the nodata value. Dask inputs are written chunk by chunk.
    """
    import dask
    import numpy as np
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    from xfusion.cube.validate import get_geobox, spatial_dims

    ydim, xdim = spatial_dims(out, name="result")
    gbox = get_geobox(out, name="result")
    names = list(out.data_vars)
    dates = [str(np.datetime64(t, "D")) for t in out.indexes["time"].values]
    layers, descriptions = [], []
    for k, date in enumerate(dates):
        for n in names:
            layers.append(out[n].isel(time=k).transpose(ydim, xdim).astype(np.float32).data)
            descriptions.append(date if len(names) == 1 else f"{date}/{n}")
    if any(dask.is_dask_collection(a) for a in layers):
        import dask.array as da

        data = da.stack([a if dask.is_dask_collection(a) else da.asarray(a) for a in layers])
    else:
        data = np.stack(layers)
    arr = xr.DataArray(
        data,
        dims=("band", ydim, xdim),
        coords={"band": np.arange(1, len(layers) + 1), ydim: out[ydim], xdim: out[xdim]},
        attrs={"long_name": tuple(descriptions)},
    )
    arr = arr.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim, inplace=False)
    arr = arr.rio.write_crs(gbox.crs.to_wkt(), inplace=False)
    arr = arr.rio.write_transform(gbox.affine, inplace=False)
    arr = arr.rio.write_nodata(np.nan, encoded=False, inplace=False)
    lock = threading.Lock() if dask.is_dask_collection(data) else None
    arr.rio.to_raster(path, dtype="float32", tiled=True, lock=lock, compute=True)


def _write_zarr(out: Any, path: str) -> None:
    from xfusion.io import to_zarr

    to_zarr(out, path, mode="w", rechunk=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    demo = importlib.import_module("xfusion.demo")
    kwargs = {k: v for k, v in (("out", args.out), ("size", args.size)) if v is not None}
    demo.run_demo(**kwargs)
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfusion`` command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on usage errors, 1 when the inputs are rejected while running.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.handler(args))
    except _UsageError as err:
        args.subparser.print_usage(sys.stderr)
        print(f"{args.subparser.prog}: error: {err}", file=sys.stderr)
        return 2
    except XFusionError as err:
        print(f"xfusion: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
