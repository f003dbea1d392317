"""The ``xfusion`` command line: ``xfusion fuse``, ``xfusion gapfill``, ``xfusion demo``, ``--version``.

``xfusion fuse METHOD --fine DATE=PATH ... --coarse DATE=PATH ... --out OUT`` builds a cube
from GeoTIFFs with :func:`xfusion.cube.from_geotiffs`, runs a method of the registry
(:mod:`xfusion.methods.registry`: its function, ``--param`` table and help) and writes a
GeoTIFF or a Zarr store; ``xfusion super-resolve`` and ``xfusion gapfill`` read the same
registry. A method registered there appears here with no change to this module. Nothing in
xfusion imports this module.

Exit codes: 0 on success, 2 for usage errors (unknown method, malformed ``DATE=PATH``, unknown
or invalid ``--param``), 1 when the inputs are rejected while running (unreadable file, no
overlap, no pair...). Errors print one message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from xfusion.errors import InvalidParameterError, XFusionError
from xfusion.methods.registry import Method, available, get

__all__ = ["build_parser", "main"]


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
        to_datetime64(date.strip(), what="date")
    except XFusionError as err:
        raise argparse.ArgumentTypeError(f"{date.strip()!r} in {text!r}: {err}") from None
    return date.strip(), path.strip()


def _date(text: str) -> str:
    from xfusion.cube.build import to_datetime64

    try:
        to_datetime64(text.strip(), what="date")
    except XFusionError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
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


def _methods_help(kind: str) -> str:
    lines = ["methods and their --param keys:"]
    for name in available(kind):
        m = get(name)
        lines.append(f"  {name}: {m.help}")
        lines.extend(f"      {p.name}=...  {p.help}" for p in m.params)
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
        "and write them to a GeoTIFF or a Zarr store.\n\n" + _methods_help("fusion"),
        epilog=_FUSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fuse.add_argument("method", metavar="METHOD", help=f"one of {available('fusion')}")
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
    fuse.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    _add_describe_args(fuse)
    fuse.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="trained weights (.safetensors) or a registered name, for learned methods "
        f"({', '.join(n for n in available('fusion') if get(n).weights)}): no training",
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
        + _methods_help("super-resolve"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sr.add_argument("method", metavar="METHOD", help=", ".join(available("super-resolve")))
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
    sr.add_argument("--out", metavar="PATH", required=True,
                    help="output PATH.tif (GeoTIFF) or PATH.zarr (resumable)")
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
    sr.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    _add_describe_args(sr)
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
    run.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
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


def _method(name: str, kind: str, what: str = "METHOD") -> Method:
    if name not in available(kind):
        choices = available(kind) if kind == "super-resolve" else sorted(available(kind))
        raise _UsageError(f"unknown {what} {name!r}; choose one of {choices}")
    return get(name)


def _method_params(method: Method, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    try:
        return method.parse_params(pairs)
    except InvalidParameterError as err:
        raise _UsageError(str(err)) from None


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
    entry = _method(args.method, "fusion")
    params = _method_params(entry, args.param)
    if getattr(args, "weights", None) is not None:
        if not entry.weights:
            learned = sorted(n for n in available("fusion") if get(n).weights)
            raise _UsageError(
                f"--weights applies to learned methods ({learned}), not {args.method!r}"
            )
        params["weights"] = args.weights
    fmt = _out_format(args.out)
    _check_out(args, fmt)

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
    names = [str(n) for n in out.data_vars if "time" in out[n].dims]
    shares, labels = _write_out(out, args.out, fmt, overwrite=args.overwrite, names=names)
    n_t = out.sizes["time"]
    print(f"xfusion: wrote {n_t} target(s) x {len(names)} variable(s) to {args.out}")
    _print_shares(shares, labels, what="predicted")
    _describe(out, args, fmt, inputs=[p for _, p in (*args.fine, *args.coarse)],
              method=args.method, params=params)
    return _empty_exit(shares, labels, ds=ds, out=out, fine=fine, coarse=coarse, params=params)




def _check_out(args: argparse.Namespace, fmt: str) -> None:
    """A GeoTIFF is never overwritten without --overwrite; a Zarr store is resumed."""
    if fmt == "tif" and os.path.exists(args.out) and not args.overwrite:
        raise _UsageError(f"--out {args.out!r} exists; pass --overwrite to replace it")


def _write_out(out: Any, path: str, fmt: str, *, overwrite: bool,
               names: Sequence[str]) -> tuple[dict[str, tuple[float, ...]], tuple[str, ...]]:
    """Write a result (GeoTIFF, or a resumable tile-by-tile Zarr store); return the share of
    valid pixels per variable and time, and the time labels."""
    if fmt == "zarr":
        import warnings

        from xfusion.errors import EmptyPredictionWarning
        from xfusion.io.tiled import write_tiled

        try:
            with warnings.catch_warnings():  # the command reports empty targets itself
                warnings.simplefilter("ignore", EmptyPredictionWarning)
                report = write_tiled(out, path, mode="w" if overwrite else "w-", resume=True,
                                     rechunk=True)
        except InvalidParameterError as err:
            if os.path.exists(path) and not overwrite:
                raise _UsageError(
                    f"--out {path!r} exists and cannot be resumed with this result ({err}); "
                    "pass --overwrite to replace it"
                ) from None
            raise
        if report.tiles_skipped:
            print(f"xfusion: resumed {path}: {report.tiles_skipped} of {report.tiles_total} "
                  "tile(s) were already written")
        return dict(report.valid_fraction or {}), tuple(report.times)
    from xfusion.io.geotiff import write_geotiff

    write_geotiff(out, path)
    return _tif_shares(path, names)


def _tif_shares(path: str, names: Sequence[str]) -> tuple[dict[str, tuple[float, ...]],
                                                          tuple[str, ...]]:
    """Share of valid pixels of each band of a written GeoTIFF (descriptions DATE[/VAR])."""
    import numpy as np
    import rasterio

    shares: dict[str, list[float]] = {}
    labels: list[str] = []
    with rasterio.open(path) as src:
        for b, desc in enumerate(src.descriptions, start=1):
            date, _, var = (desc or "").partition("/")
            var = var or (names[0] if names else "band")
            if date not in labels:
                labels.append(date)
            block = src.read(b)
            shares.setdefault(var, []).append(float(np.isfinite(block).mean()))
    return {k: tuple(v) for k, v in shares.items()}, tuple(labels)


def _print_shares(shares: dict[str, tuple[float, ...]], labels: Sequence[str], *,
                  what: str) -> None:
    for k, label in enumerate(labels):
        parts = [f"{name} {100 * frac[k]:.1f} %" for name, frac in shares.items()
                 if k < len(frac)]
        if parts:
            print(f"  {label}: {', '.join(parts)} {what}")


def _empty_exit(shares: dict[str, tuple[float, ...]], labels: Sequence[str], *, ds: Any,
                out: Any, fine: Sequence[str], coarse: Sequence[str],
                params: dict[str, Any]) -> int:
    """Exit 1 naming each target with no predicted pixel and its likely cause, else 0."""
    empty = sorted({labels[k] for frac in shares.values() for k, f in enumerate(frac)
                    if f == 0.0 and k < len(labels)})
    if not empty:
        return 0
    for label in empty:
        print(f"xfusion: error: no pixel predicted at {label}: "
              f"{_diagnose(ds, out, label, fine, coarse, params)}", file=sys.stderr)
    return 1


def _diagnose(ds: Any, out: Any, label: str, fine: Sequence[str], coarse: Sequence[str],
              params: dict[str, Any]) -> str:
    """The likely cause of an empty target, from the inputs (reads them)."""
    import numpy as np

    from xfusion.cube.build import to_datetime64

    t = to_datetime64(label, what="target")

    def stats(name: str, when: Any) -> tuple[float, float, float]:
        v = np.asarray(ds[name].sel(time=when, method="nearest").values, dtype=float)
        ok = np.isfinite(v)
        return float(ok.mean()), float(np.nanmin(v)) if ok.any() else np.nan, \
            float(np.nanmax(v)) if ok.any() else np.nan

    for c in coarse:
        share, _, _ = stats(c, t)
        if share == 0.0:
            return (f"the coarse image {c!r} has no valid pixel at {label} (all NaN or nodata); "
                    "drop that target or give a clear coarse image")
    pair = None
    if "pair_time" in out.coords:
        pair = out["pair_time"].sel(time=t, method="nearest").values
    if pair is not None and not np.isnat(np.datetime64(pair)):
        for f in fine:
            share, lo, hi = stats(f, pair)
            if share == 0.0:
                return (f"the fine image {f!r} of the pair date {str(pair)[:10]} has no valid "
                        "pixel (all NaN or nodata)")
            rng = params.get("data_range")
            if rng is not None and (hi < rng[0] or lo > rng[1]):
                return (f"the fine image {f!r} of the pair {str(pair)[:10]} spans {lo:g}..{hi:g}, "
                        f"outside data_range {tuple(rng)!r}; set --param data_range=LO,HI or a "
                        "preset for the data's unit (e.g. preset=lst for kelvin, reflectance "
                        "for 0..1)")
    ranges = []
    for name, when in [(f, pair if pair is not None else t) for f in fine] + \
            [(c, t) for c in coarse]:
        _, lo, hi = stats(name, when)
        ranges.append(f"{name} {lo:g}..{hi:g}")
    return ("the inputs hold values there (" + ", ".join(ranges) + "), so the method's "
            "parameters exclude them: check the preset/data_range against the data's unit and "
            "scale, and that fine and coarse share it (integer DN vs float reflectance)")


def _cmd_super_resolve(args: argparse.Namespace) -> int:
    import xarray as xr

    from xfusion.config import EngineConfig
    from xfusion.cube.validate import spatial_dims
    from xfusion.io.geotiff import bands_dataset, read_geotiff, write_bands

    method = args.method
    entry = _method(method, "super-resolve")
    params = _method_params(entry, args.param)
    fmt = _out_format(args.out)
    _check_out(args, fmt)
    if "guide" in entry.needs and args.guide is None:
        raise _UsageError(f"method {method!r} needs --guide G.tif (fine bands, e.g. NDVI)")
    if "weights" in entry.needs and not args.weights:
        raise _UsageError(
            "method 'harmonize' needs --weights W (train them on Landsat/Sentinel-2 pairs with "
            "xfusion.methods.harmonize.train_harmonizer)"
        )
    coarse = read_geotiff(args.coarse, chunks=args.chunks, role="coarse")
    guide = None
    if args.guide is not None:
        g = read_geotiff(args.guide, chunks=args.chunks * (args.scale or 1), role="guide")
        guide = g.isel(band=0, drop=True).rename("guide") if g.sizes["band"] == 1 else \
            bands_dataset(g)
    device = params.pop("device", "auto")
    weights: Any = args.weights[0] if args.weights and len(args.weights) == 1 else args.weights
    engine = None
    if method == "harmonize":
        from xfusion.methods.harmonize import L8_BANDS, harmonize

        ds = bands_dataset(coarse, default=L8_BANDS)
        out: xr.DataArray | xr.Dataset = harmonize(ds, weights=weights, guide=guide,
                                                   scale=args.scale, device=device, **params)
    else:
        from xfusion.methods.super_resolve import super_resolve, train_sif_sr

        lst = coarse.isel(band=0, drop=True).rename("lst")
        if method in ("sif-sr1", "sif-sr2"):
            tile = params.pop("tile", 512)
            engine = EngineConfig(tile=tile, device=device)
            if weights is None:
                wpath = os.path.splitext(args.out)[0] + ".weights.safetensors"
                kw = {"epochs": 30, **params}
                print(f"xfusion: no --weights: training {method} self-supervised on the scene "
                      f"({kw['epochs']} epochs) ...")
                weights = train_sif_sr(lst, guide=guide, scale=args.scale, method=method,
                                       out=wpath, device=device, **kw)
                print(f"xfusion: saved weights to {weights}")
            params = {}
        out = super_resolve(lst, guide=guide, scale=args.scale, method=method, weights=weights,
                            params=params or None, engine=engine, device=device)
    n = len(out.data_vars) if isinstance(out, xr.Dataset) else 1
    ydim, xdim = spatial_dims(out)
    if fmt == "zarr":
        ds_out = out if isinstance(out, xr.Dataset) else out.to_dataset(name=out.name or "sr")
        shares, labels = _write_out(ds_out, args.out, fmt, overwrite=args.overwrite,
                                    names=[str(v) for v in ds_out.data_vars])
    else:
        write_bands(out, args.out)
        shares, labels = {}, ()
    print(f"xfusion: wrote {n} band(s) of {out.sizes[ydim]} x {out.sizes[xdim]} px ({method}) "
          f"to {args.out}")
    _print_shares(shares, labels, what="valid")
    _describe(out, args, fmt, inputs=[p for p in (args.coarse, args.guide) if p],
              method=method, params=params)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    demo = importlib.import_module("xfusion.demo")
    kwargs = {k: v for k, v in (("out", args.out), ("size", args.size)) if v is not None}
    demo.run_demo(**kwargs)
    return 0


# --------------------------------------------------------------------------------------------
# gapfill (issue 7): optical time series gap filling, optionally SAR-guided

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


def _add_gapfill_parser(sub: Any) -> None:
    gap = sub.add_parser(
        "gapfill",
        help="fill the gaps of optical time series (STORI, linear, savgol, harmonic)",
        description="Fill the missing steps of every pixel's optical series (observed values\n"
        "are kept), optionally guided by SAR (method stori), and write the filled series,\n"
        "what was filled and an uncertainty.\n\n" + _methods_help("gapfill"),
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
        "--method", default="stori", help=f"{', '.join(available('gapfill'))} (default stori)"
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
    gap.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    _add_describe_args(gap)
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
    entry = _method(args.method, "gapfill", what="--method")
    params = _method_params(entry, args.param)
    fmt = _out_format(args.out)
    _check_out(args, fmt)
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
        _write_out(out, args.out, fmt, overwrite=args.overwrite, names=[optical])
    else:
        from xfusion.io.geotiff import write_geotiff

        base = args.out[: args.out.lower().rfind(".tif")]
        write_geotiff(out[[optical]], args.out)
        write_geotiff(out[[f"{optical}_uncertainty"]], f"{base}_uncertainty.tif")
        write_geotiff(out[[f"{optical}_filled"]].astype("float32"), f"{base}_filled.tif")
    print(
        f"xfusion: filled {optical!r} ({args.method}) over {out.sizes['time']} time steps; "
        f"wrote {args.out}"
    )
    _print_gapfill_shares(args.out, fmt, optical)
    inputs = [p for _, p in (args.optical or [])] + [p for _, p in (args.sar or [])]
    if getattr(args, "input", None):
        inputs.append(args.input)
    _describe(out, args, fmt, inputs=inputs, method=args.method, params=params)
    return 0


def _print_gapfill_shares(path: str, fmt: str, optical: str) -> None:
    """Per time step: the share of pixels valid after filling and the share filled (read
    back from the written product, nothing recomputed)."""
    import numpy as np

    if fmt == "zarr":
        from xfusion.io.zarr import open_zarr

        got = open_zarr(path)
        if f"{optical}_filled" not in got:
            return
        dims = [d for d in got[optical].dims if d != "time"]
        valid = got[optical].notnull().mean(dims).values
        filled = got[f"{optical}_filled"].astype(bool).mean(dims).values
        labels = [str(t)[:10] for t in got["time"].values]
    else:
        import rasterio

        base = path[: path.lower().rfind(".tif")]
        with rasterio.open(path) as a, rasterio.open(f"{base}_filled.tif") as b:
            valid = [float(np.isfinite(a.read(k)).mean()) for k in range(1, a.count + 1)]
            filled = [float((b.read(k) > 0).mean()) for k in range(1, b.count + 1)]
            labels = [(d or str(k)).partition("/")[0] for k, d in
                      enumerate(a.descriptions, start=1)]
    for label, v, f in zip(labels, valid, filled, strict=False):
        print(f"  {label}: {optical} {100 * float(v):.1f} % valid, {100 * float(f):.1f} % "
              "filled")


def _add_describe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quicklook", action="store_true",
                        help="also write a PNG quicklook next to --out (OUT.png)")
    parser.add_argument("--no-stac", action="store_true",
                        help="do not write the STAC item next to --out (OUT.stac.json)")


def _describe(out: Any, args: argparse.Namespace, fmt: str, *, inputs: Sequence[str],
              method: str, params: dict[str, Any]) -> None:
    """Write the product's STAC item (and its quicklook) next to it."""
    from xfusion.io.stac_item import item_path, quicklook, write_stac_item

    ql = None
    if getattr(args, "quicklook", False):
        ql = item_path(args.out)[: -len(".stac.json")] + ".png"
        quicklook(_reopen(args.out, fmt), ql)
        print(f"xfusion: quicklook {ql}")
    if getattr(args, "no_stac", False):
        return
    obj = out if not hasattr(out, "to_dataset") else out.to_dataset(name=out.name or "data")
    path = write_stac_item(obj, args.out, derived_from=list(inputs), quicklook_href=ql,
                           method=method, parameters={k: v for k, v in params.items()
                                                      if _jsonable(v)})
    print(f"xfusion: described in {path}")


def _jsonable(v: Any) -> bool:
    import json

    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _reopen(path: str, fmt: str) -> Any:
    """The written product, read back lazily (quicklooks read it, not the lazy result)."""
    if fmt == "zarr":
        from xfusion.io.zarr import open_zarr

        return open_zarr(path)
    import rioxarray

    da = rioxarray.open_rasterio(path, masked=True)
    return da.isel(band=0, drop=True).rename("data")


# --------------------------------------------------------------------------------------------
# entry point


_QUIET_HELP = ("no progress bar or progress lines (also: XFUSION_PROGRESS=0 in the "
               "environment)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfusion`` command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on usage errors, 1 when the inputs are rejected while running, 130
        when interrupted (Ctrl-C).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version and argparse's usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "quiet", False):
        from xfusion._progress import set_progress

        set_progress(False)
    try:
        return int(args.handler(args))
    except _UsageError as err:
        args.subparser.print_usage(sys.stderr)
        print(f"{args.subparser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # TrainingInterrupted (an XFusionError) too
        detail = f" ({err})" if isinstance(err, XFusionError) and str(err) else ""
        print(f"xfusion: interrupted (Ctrl-C){detail}; an output store resumes when the same "
              "command runs again", file=sys.stderr)
        return 130
    except XFusionError as err:
        print(f"xfusion: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file the command reads or writes (outside xfusion's wrappers)
        where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
        print(f"xfusion: error: {type(err).__name__}{where}: {err.strerror or err}",
              file=sys.stderr)
        return 1
    finally:
        if getattr(args, "quiet", False):
            from xfusion._progress import set_progress

            set_progress(None)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
