"""The ``xfusion`` command line: ``xfusion fuse``, ``xfusion gapfill``, ``xfusion demo``, ``--version``.

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


def parse_json(text: str) -> Any:
    """Parse a JSON value (e.g. ``{"width": 32}``)."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f'expected JSON such as {{"width": 32}}: {err}') from None


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
    weights: bool = False
    """Whether the method accepts ``--weights PATH`` (trained models), passed as ``weights=``."""

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
    "sttfn": MethodEntry(
        target="xfusion.methods.sttfn:_sttfn_cli",
        help="STTFN (Yin et al. 2021): forward/backward CNNs trained on the pairs before and "
        "after each target, combined by consistency weighting; --weights applies trained nets",
        params={
            "epochs": Param(parse=int, help="training epochs per net (default 30)"),
            "seed": Param(parse=int, help="seed of the training (default 0)"),
            "patch_size": Param(parse=int, help="training patch size in pixels (default 48)"),
            "patches": Param(parse=int, help="random training patches per net (default 128)"),
            "batch_size": Param(parse=int, help="patches per optimizer step (default 16)"),
            "lr": Param(parse=float, help="Adam learning rate (default 1e-3)"),
            "val_fraction": Param(
                parse=float, help="share of the scene held out for early stopping (default 0.1)"
            ),
            "patience": Param(parse=int, help="early-stopping patience in epochs (default 8)"),
            "min_valid": Param(
                parse=float, help="min observed fraction in every input of a patch (default 0.5)"
            ),
            "temporal_mix": Param(
                parse=float, help="share of time-interpolated training items (default 1.0)"
            ),
            "target_offset": Param(
                parse=float,
                help="std of random target offsets in training, in band stds (default 0.3)",
            ),
            "combine": Param(
                choices=("stc", "time", "stc-time"),
                help="consistency weighting (default), temporal distance, or both",
            ),
            "stc_scale": Param(
                choices=("fine", "coarse"),
                help="consistency weighting per fine pixel (default) or per coarse cell",
            ),
            "coarse_factor": Param(
                parse=int, help="coarse pixel size in fine pixels (for stc_scale=coarse)"
            ),
            "arch": Param(help="architecture (default xfusion-v1)"),
            "arch_params": Param(
                parse=parse_json, help='architecture parameters as JSON, e.g. {"width": 32}'
            ),
            "save": Param(help="folder to save each triplet's trained nets (.safetensors)"),
            "device": Param(help="auto (default: CUDA when present), cpu, cuda or cuda:N"),
            "precision": Param(
                choices=("float32", "bf16", "fp16"), help="autocast precision on CUDA"
            ),
        },
        weights=True,
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


def _sr_methods_help() -> str:
    from xfusion.methods.super_resolve import _cli_params

    lines = ["--param keys per method:"]
    for name, params in _cli_params().items():
        lines.append(f"  {name}:" + ("" if params else " (none)"))
        for key, p in params.items():
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
    fuse.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="trained weights (.safetensors) or a registered name, for learned methods "
        f"({', '.join(n for n, e in METHODS.items() if e.weights)}): no training",
    )
    fuse.set_defaults(handler=_cmd_fuse, subparser=fuse)

    _add_gapfill_parser(sub)

    sr = sub.add_parser(
        "super-resolve",
        help="super-resolve a coarse GeoTIFF onto a fine guide grid (LST, Landsat -> S2)",
        description="Super-resolve a coarse GeoTIFF (e.g. MODIS LST) onto the grid of a fine\n"
        "guide GeoTIFF (e.g. NDVI) nested in it by --scale, and write a float32 GeoTIFF.\n"
        "Methods: sif-sr1, sif-sr2 (SIF-CNN-SR; without --weights they first train\n"
        "self-supervised on the scene, --param epochs=N), dms (regression trees), bicubic,\n"
        "harmonize (Landsat-8 6 bands -> Sentinel-2-like, needs --weights).\n\n"
        + _sr_methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sr.add_argument("method", metavar="METHOD", help="sif-sr1, sif-sr2, dms, bicubic or harmonize")
    sr.add_argument(
        "--coarse",
        metavar="C.tif",
        required=True,
        help="coarse GeoTIFF (LST in kelvin; harmonize: the Landsat bands)",
    )
    sr.add_argument(
        "--guide",
        metavar="G.tif",
        default=None,
        help="fine guide GeoTIFF on a grid nested in the coarse one (NDVI, bands)",
    )
    sr.add_argument(
        "--scale",
        metavar="N",
        type=_positive_int,
        default=None,
        help="fine pixels per coarse pixel (default: from the grids)",
    )
    sr.add_argument("--out", metavar="P.tif", required=True, help="output GeoTIFF")
    sr.add_argument(
        "--weights",
        metavar="W",
        action="append",
        default=None,
        help="checkpoint of a learned method (repeat for an ensemble)",
    )
    sr.add_argument(
        "--param",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="a method parameter (repeat for more)",
    )
    sr.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=512,
        help="spatial chunk size of the coarse input in pixels (default 512)",
    )
    sr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    sr.set_defaults(handler=_cmd_super_resolve, subparser=sr)

    demo = sub.add_parser("demo", help="run the self-contained demo (synthetic data)")
    demo.add_argument("--out", metavar="DIR", default=None, help="output folder")
    demo.add_argument("--size", metavar="N", type=_positive_int, default=None, help="image size")
    demo.set_defaults(handler=_cmd_demo, subparser=demo)
    _add_run_parser(sub)
    return parser


_RUN_EPILOG = """\
exit status: 0 when every tile is done, 1 when tiles failed (listed; re-run to retry them)
or the job is rejected, 2 on usage errors. Re-running the same job resumes it: finished
tiles are skipped.

example:
  xfusion run tahoe.yaml --cluster local --workers 2
"""


def _add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a job (AOI, period, method, output Zarr) tile by tile, resumably",
        description="Process a job file (YAML) over its whole area of interest into a Zarr v3\n"
        "store: tiles are searched, loaded, fused and written in batches; tiles already done\n"
        "are skipped, failing tiles are retried and then reported.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("job", metavar="JOB.yaml", help="the job file")
    run.add_argument(
        "--cluster",
        metavar="KIND",
        default=None,
        help="none (default: local threads, one tile at a time), auto, local, cuda, or a "
        "scheduler address tcp://HOST:PORT",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        default=None,
        help="workers of a local cluster (default: one per CPU core or GPU)",
    )
    run.add_argument(
        "--threads-per-worker",
        metavar="N",
        type=_positive_int,
        default=None,
        help="threads per worker of a local cluster (default 1)",
    )
    run.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help="output store instead of the job's output.store",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing store and start afresh (default: resume it)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_cmd_run, subparser=run)


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from xfusion.jobs import cluster, load_job, run

    job = load_job(args.job)
    if args.store:
        job = dataclasses.replace(job, store=args.store)
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger = logging.getLogger("xfusion.run")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    client = None
    if args.cluster not in (None, "none"):
        client = cluster(
            args.cluster, n_workers=args.workers, threads_per_worker=args.threads_per_worker
        )
    elif args.workers or args.threads_per_worker:
        raise _UsageError("--workers/--threads-per-worker need --cluster (e.g. --cluster local)")
    try:
        report = run(
            job,
            client=client,
            overwrite=args.overwrite,
            progress=False if args.quiet else None,
            log_every=10.0,
        )
    finally:
        if client is not None:
            client.close()
    print(report)
    return 0 if report.ok else 1


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
    if getattr(args, "weights", None) is not None:
        if not entry.weights:
            learned = sorted(n for n, e in METHODS.items() if e.weights)
            raise _UsageError(
                f"--weights applies to learned methods ({learned}), not {args.method!r}"
            )
        params["weights"] = args.weights
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


def _cmd_super_resolve(args: argparse.Namespace) -> int:
    from xfusion.methods.super_resolve import run_cli

    return run_cli(args, usage_error=_UsageError)


def _cmd_demo(args: argparse.Namespace) -> int:
    demo = importlib.import_module("xfusion.demo")
    kwargs = {k: v for k, v in (("out", args.out), ("size", args.size)) if v is not None}
    demo.run_demo(**kwargs)
    return 0


# --------------------------------------------------------------------------------------------
# gapfill (issue 7): optical time series gap filling, optionally SAR-guided

GAPFILL_PARAMS: dict[str, dict[str, Param]] = {
    "stori": {
        "variant": Param(
            choices=("fixed", "faithful"),
            help="fixed (default) or faithful (the public code's behaviour)",
        ),
        "epochs": Param(parse=int, help="maximum training epochs (fixed: 100, faithful: 250)"),
        "hidden": Param(parse=int, help="LSTM hidden size (default 96)"),
        "seed": Param(parse=int, help="training seed (default 0)"),
        "batch_size": Param(parse=int, help="pixels per optimizer step (default 256)"),
        "train_pixels": Param(parse=int, help="at most this many training pixels (default 8192)"),
        "time_budget": Param(parse=float, help="stop training after this many seconds"),
        "device": Param(help="auto (default: CUDA when present), cpu, cuda or cuda:N"),
    },
    "linear": {},
    "savgol": {
        "window": Param(parse=int, help="Savitzky-Golay window in steps (default 7)"),
        "polyorder": Param(parse=int, help="Savitzky-Golay order (default 2)"),
    },
    "harmonic": {
        "harmonics": Param(parse=int, help="number of harmonics (default 2)"),
        "period": Param(parse=float, help="base period in days (default 365.25)"),
        "trend": Param(parse=parse_bool, help="add a linear trend (default false)"),
    },
}
"""``xfusion gapfill`` method → its ``--param`` keys."""

_GAPFILL_EPILOG = """
inputs (one of):
  --optical DATE=PATH ...   single-band GeoTIFFs, one per composite date (e.g. 8-day NDVI),
                            NaN/nodata = missing; optional --sar DATE=PATH on the SAME dates,
                            one file per date whose bands are the SAR features (names from the
                            band descriptions, e.g. vh_db and rvi), reprojected onto the
                            optical grid when needed (--resampling).
  --input CUBE.zarr         a Zarr cube (xfusion.io.to_zarr) with --optical-var and, for stori,
                            --sar-var (repeat for each feature).
output layout:
  PATH.zarr  the result Dataset: VAR (filled), VAR_filled (bool), VAR_uncertainty, dims
             (time, y, x), the CRS (spatial_ref). Read it with xfusion.io.open_zarr.
  PATH.tif   the filled series, float32, one band per date (descriptions YYYY-MM-DD), NaN
             nodata; next to it PATH_uncertainty.tif and PATH_filled.tif (1 = filled).
"""


def _gapfill_methods_help() -> str:
    lines = ["methods and their --param keys:"]
    for name, params in GAPFILL_PARAMS.items():
        lines.append(f"  {name}")
        for key, p in params.items():
            lines.append(f"      {key}=...  {p.help}")
    return "\n".join(lines)


def _add_gapfill_parser(sub: Any) -> None:
    gap = sub.add_parser(
        "gapfill",
        help="fill the gaps of optical time series (STORI, linear, savgol, harmonic)",
        description="Fill the missing steps of every pixel's optical series (observed values\n"
        "are kept), optionally guided by SAR (method stori), and write the filled series,\n"
        "what was filled and an uncertainty.\n\n" + _gapfill_methods_help(),
        epilog=_GAPFILL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = gap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--optical",
        metavar="DATE=PATH",
        type=_dated_path,
        action="append",
        help="an optical GeoTIFF and its date (repeat for every date)",
    )
    src.add_argument("--input", metavar="CUBE.zarr", help="a Zarr cube holding the series")
    gap.add_argument(
        "--sar",
        metavar="DATE=PATH",
        type=_dated_path,
        action="append",
        default=None,
        help="a SAR GeoTIFF (bands = features) and its date",
    )
    gap.add_argument(
        "--optical-var",
        metavar="NAME",
        default=None,
        help="optical variable: in --input, or the name given to --optical (default ndvi)",
    )
    gap.add_argument(
        "--sar-var",
        metavar="NAME",
        action="append",
        default=None,
        help="SAR feature variable in --input (repeat for each)",
    )
    gap.add_argument(
        "--method", default="stori", help="stori (default), linear, savgol or harmonic"
    )
    gap.add_argument("--out", metavar="PATH", required=True, help="output PATH.zarr or PATH.tif")
    gap.add_argument(
        "--param",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="a method parameter (repeat for more; see above)",
    )
    gap.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="trained STORI weights (.safetensors) instead of training",
    )
    gap.add_argument(
        "--save-weights",
        metavar="PATH",
        default=None,
        help="save the STORI weights trained on this scene",
    )
    gap.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=512,
        help="spatial chunk size in pixels (default 512)",
    )
    gap.add_argument(
        "--resampling",
        default="bilinear",
        help="resampling of SAR files onto the optical grid (default bilinear)",
    )
    gap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gap.set_defaults(handler=_cmd_gapfill, subparser=gap)


def _gapfill_cube(args: argparse.Namespace) -> tuple[Any, str, list[str]]:
    """Build the input Dataset; return it with the optical and SAR variable names."""
    if args.input is not None:
        if args.sar:
            raise _UsageError("--sar files go with --optical files; with --input use --sar-var")
        if args.optical_var is None:
            raise _UsageError("--input needs --optical-var NAME (the variable to fill)")
        from xfusion.io import open_zarr

        ds = open_zarr(args.input)
        return ds, args.optical_var, list(args.sar_var or [])
    if args.sar_var:
        raise _UsageError("--sar-var names variables of --input; with --optical files use --sar")
    from xfusion.cube.build import from_geotiffs, to_datetime64
    from xfusion.errors import TimeAxisError

    name = args.optical_var or "ndvi"
    if args.sar:
        d_opt = {str(to_datetime64(d))[:10] for d, _ in args.optical}
        d_sar = {str(to_datetime64(d))[:10] for d, _ in args.sar}
        if d_opt != d_sar:
            raise TimeAxisError(
                f"The --optical and --sar files must share their dates (one composite time "
                f"axis); dates only in --optical: {sorted(d_opt - d_sar)!r}, only in --sar: "
                f"{sorted(d_sar - d_opt)!r}. Composite both onto the same periods first "
                "(xfusion.gapfill_inputs / xfusion.composite)."
            )
    # from_geotiffs needs a coarse role; the optical files stand in for it (never read: the
    # variable is dropped before anything is computed).
    ds = from_geotiffs(
        fine=args.optical,
        coarse=args.optical,
        guides={"sar": args.sar} if args.sar else None,
        fine_name=name,
        coarse_name=f"_{name}_unused",
        chunks=args.chunks,
        resampling=args.resampling,
    )
    ds = ds.drop_vars(
        [
            v
            for v in ds.variables
            if str(v).startswith(f"_{name}_unused") or str(v).startswith(f"observed__{name}_unused")
        ]
    )
    sar = [str(v) for v in ds.data_vars if v == "sar" or str(v).startswith("sar_")]
    return ds, name, sar


def _cmd_gapfill(args: argparse.Namespace) -> int:
    if args.method not in GAPFILL_PARAMS:
        raise _UsageError(
            f"unknown --method {args.method!r}; choose one of {sorted(GAPFILL_PARAMS)}"
        )
    entry = MethodEntry(
        target="xfusion.methods.gapfill:gapfill", help="", params=GAPFILL_PARAMS[args.method]
    )
    params = _method_params(entry, args.method, args.param)
    fmt = _out_format(args.out)
    if os.path.exists(args.out) and not args.overwrite:
        raise _UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")
    if (args.weights or args.save_weights) and args.method != "stori":
        raise _UsageError("--weights/--save-weights only apply to --method stori")
    from xfusion.methods.gapfill import StoriConfig, fit_stori, gapfill

    ds, optical, sar = _gapfill_cube(args)
    kwargs: dict[str, Any] = {}
    if args.method == "stori":
        if not sar:
            raise _UsageError(
                "--method stori needs SAR features: --sar DATE=PATH files or "
                "--sar-var NAME with --input"
            )
        device = params.pop("device", "auto")
        config = StoriConfig(**params)
        kwargs.update(sar=sar, device=device)
        if args.weights:
            kwargs["weights"] = args.weights
        elif args.save_weights:
            kwargs["weights"] = fit_stori(
                ds, optical=optical, sar=sar, config=config, device=device, out=args.save_weights
            )
        else:
            kwargs["config"] = config
    else:
        kwargs.update(params)
    out = gapfill(ds, optical=optical, method=args.method, rechunk=True, **kwargs)
    if fmt == "zarr":
        _write_zarr(out, args.out)
    else:
        base = args.out[: args.out.lower().rfind(".tif")]
        write_geotiff(out[[optical]], args.out)
        write_geotiff(out[[f"{optical}_uncertainty"]], f"{base}_uncertainty.tif")
        write_geotiff(out[[f"{optical}_filled"]].astype("float32"), f"{base}_filled.tif")
    print(
        f"xfusion: filled {optical!r} ({args.method}) over {out.sizes['time']} time steps; "
        f"wrote {args.out}"
    )
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
