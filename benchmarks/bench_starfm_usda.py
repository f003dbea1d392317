"""STARFM side by side with the USDA STARFM v1.2.1 C program, measured in one run.

The C program is not part of xfusion (and never enters the repository): build it from the
USDA-ARS package (StarFM.h, StarFM_main.c, StarFM_compute.c, StarFM_util.c, StarFM_alloc.c and
its Makefile, ``make`` -> ``StarFM.exe``, gcc -O2 -fopenmp) and point ``XFUSION_USDA_STARFM`` at
the executable (default ``../refs/usda_starfm/src/StarFM.exe`` from the project root). Without it
every row says ``skipped``.

On ``../shared/data/synthetic600`` (600 x 600) and the same stack tiled 2 x 2 (1200 x 1200), one
band, one pair, the USDA settings (750 m at 30 m: a 50 px window, 40 slices, uncertainties 50,
range 0..10000, fill -9999), both with 2 threads (``OMP_NUM_THREADS=2`` / ``threads=2``):

* parity: the C output against ``xfusion.starfm`` (reference mode) on the same int16 data;
* kernel: the C program's wall time on its own raw int16 files (read, statistics, prediction,
  write; it has no separate kernel) against xfusion's numba kernel alone (``starfm_block``);
* command line: ``StarFM.exe input.txt`` against ``xfusion fuse starfm ... --out x.tif``
  (GeoTIFF in, GeoTIFF out, a fresh process: imports included), each best of ``repeats``.

Usage: ``python benchmarks/bench_starfm_usda.py [--quick] [--json PATH]``; ``run()`` returns
the rows for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "data", "synthetic600")
DEFAULT_EXE = os.path.join(ROOT, "..", "refs", "usda_starfm", "src", "StarFM.exe")
FILL = -9999
THREADS = 2
QUOTED_USDA_C_S = {600: 3.9, 1200: 18.6}  # specs/starfm.md section 4 (2 threads), NOT measured


def usda_exe() -> str | None:
    """Path of the USDA STARFM executable, or None when it is not there."""
    exe = os.environ.get("XFUSION_USDA_STARFM", DEFAULT_EXE)
    return exe if os.path.isfile(exe) and os.access(exe, os.X_OK) else None


def _read(name: str) -> tuple[np.ndarray, Any]:
    import rasterio

    with rasterio.open(os.path.join(DATA, f"{name}.tif")) as src:
        return src.read(1), src.profile


def _stack(tile: int) -> dict[str, Any]:
    """int16 fine_t1, coarse_t1, coarse_t2 (synthetic600 tiled ``tile`` x ``tile``)."""
    out = {}
    for name in ("fine_t1", "coarse_t1", "coarse_t2"):
        arr, prof = _read(name)
        out[name] = np.tile(arr, (tile, tile)).astype(np.int16)
    out["profile"] = prof
    return out


def _write_inputs(stack: dict[str, Any], folder: str) -> dict[str, str]:
    """Raw int16 files + parameter file for the C program, GeoTIFFs for xfusion."""
    import rasterio
    from affine import Affine

    ny, nx = stack["fine_t1"].shape
    prof = dict(stack["profile"], width=nx, height=ny, dtype="int16", nodata=FILL, count=1,
                tiled=True, blockxsize=256, blockysize=256)  # fmt: skip
    t = prof["transform"]
    prof["transform"] = Affine(t.a, t.b, t.c, t.d, t.e, t.f)
    paths: dict[str, str] = {}
    for name in ("fine_t1", "coarse_t1", "coarse_t2"):
        raw = os.path.join(folder, f"{name}.bin")
        stack[name].astype("<i2").tofile(raw)
        tif = os.path.join(folder, f"{name}.tif")
        with rasterio.open(tif, "w", **prof) as dst:
            dst.write(stack[name], 1)
        paths[name] = tif
        paths[f"{name}_raw"] = raw
    paths["usda_out"] = os.path.join(folder, "usda_pred.bin")
    lines = [
        "STARFM_PARAMETER_START",
        "NUM_IN_PAIRS = 1",
        f"IN_PAIR_MODIS_FNAME = {paths['coarse_t1_raw']}",
        "IN_PAIR_MODIS_MASK = NONE",
        f"IN_PAIR_LANDSAT_FNAME = {paths['fine_t1_raw']}",
        "IN_PAIR_LANDSAT_MASK = NONE",
        f"IN_PDAY_MODIS_FNAME = {paths['coarse_t2_raw']}",
        "IN_PDAY_MODIS_MASK = NONE",
        f"OUT_PDAY_LANDSAT_FNAME = {paths['usda_out']}",
        f"NROWS = {ny}",
        f"NCOLS = {nx}",
        "RESOLUTION = 30",
        "SCALE_FACTOR = 10000",
        f"LANDSAT_FILLV = {FILL}",
        "LANDSAT_DATA_RANGE = 0, 10000",
        "LANDSAT_UNCERTAINTY = 50",
        f"MODIS_FILLV = {FILL}",
        "MODIS_DATA_RANGE = 0, 10000",
        "MODIS_UNCERTAINTY = 50",
        "USE_SPATIAL_FLAG = 1",  # the program reads it with atoi: "ON" would mean 0
        "MAX_SEARCH_DISTANCE = 750",
        "NUM_SLICE_PURE_TEST = 40",
        "STARFM_PARAMETER_END",
    ]
    paths["params"] = os.path.join(folder, "input.txt")
    with open(paths["params"], "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return paths


def _timed(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
        best = min(best, dt)
    return best


def usda_c(tile: int = 1, repeats: int = 3) -> dict[str, Any]:
    """The C program's best wall time on synthetic600 (tiled), 2 threads, or why not.

    Returns ``{"usda_c_s", "usda_c_px_s", "usda_c_source"}``: measured when the executable and
    the data are there; otherwise the spec's quoted figure (600 x 600: 3.9 s) with a source
    that says it is quoted, so that no ratio passes for a measurement.
    """
    size = 600 * tile
    exe = usda_exe()
    if exe is None or not os.path.isdir(DATA):
        seconds = QUOTED_USDA_C_S.get(size)
        why = "executable absent" if exe is None else "shared data absent"
        return {"usda_c_s": seconds, "usda_c_px_s": size * size / seconds if seconds else None,
                "usda_c_source": f"QUOTED from specs/starfm.md section 4, not measured ({why})"}
    with tempfile.TemporaryDirectory() as tmp:
        p = _write_inputs(_stack(tile), tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
        seconds = _timed([exe, p["params"]], env, repeats)
    return {"usda_c_s": seconds, "usda_c_px_s": size * size / seconds,
            "usda_c_source": f"measured side by side: {exe}, OMP_NUM_THREADS={THREADS}, best of "
                             f"{repeats}"}  # fmt: skip


def side_by_side(tile: int = 1, repeats: int = 3) -> dict[str, Any]:
    """Parity, kernel and command-line times of both programs on one stack."""
    exe = usda_exe()
    size = 600 * tile
    row: dict[str, Any] = {"benchmark": "starfm_vs_usda_c", "size": size, "threads": THREADS}
    if exe is None:
        row["skipped"] = ("USDA STARFM executable not found (set XFUSION_USDA_STARFM or build "
                          f"it at {DEFAULT_EXE})")  # fmt: skip
        return row
    if not os.path.isdir(DATA):
        row["skipped"] = f"shared data not found at {DATA}"
        return row
    import xfusion
    from xfusion.cube import from_geotiffs
    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block

    stack = _stack(tile)
    with tempfile.TemporaryDirectory() as tmp:
        p = _write_inputs(stack, tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), XFUSION_KERNEL_THREADS=str(THREADS))
        usda_s = _timed([exe, p["params"]], env, repeats)
        usda = np.fromfile(p["usda_out"], dtype="<i2").reshape(size, size)

        # parity through the public API on the same int16 GeoTIFFs
        cube = from_geotiffs(fine={"2001-01-01": p["fine_t1"]},
                             coarse={"2001-01-01": p["coarse_t1"], "2001-01-17": p["coarse_t2"]})
        ours = xfusion.starfm(cube, fine="fine", coarse="coarse", threads=THREADS).fine.values[0]
        both = (ours != FILL) & (usda != FILL)
        diff = np.abs(ours[both].astype(np.int32) - usda[both])
        row.update({"exact": float((diff == 0).mean()), "within_1": float((diff <= 1).mean()),
                    "same_fill": bool(np.array_equal(ours == FILL, usda == FILL))})  # fmt: skip

        # kernel alone, same arrays, 2 threads
        L, M1, M2 = (stack[n].astype(np.float32) for n in ("fine_t1", "coarse_t1", "coarse_t2"))
        thr = similarity_threshold(L)
        kw = {"window": 50, "thresholds": thr, "distance_scale": 25.0, "threads": THREADS}
        starfm_block(L, M1, M2, **kw)  # compile / cache load
        kernel_s = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            starfm_block(L, M1, M2, **kw)
            kernel_s = min(kernel_s, time.perf_counter() - t0)

        # whole command lines (fresh processes)
        out_tif = os.path.join(tmp, "xfusion_pred.tif")
        cli = [os.path.join(os.path.dirname(sys.executable), "xfusion"), "fuse", "starfm",
               "--fine", f"2001-01-01={p['fine_t1']}", "--coarse", f"2001-01-01={p['coarse_t1']}",
               "--coarse", f"2001-01-17={p['coarse_t2']}", "--out", out_tif, "--overwrite"]  # fmt: skip
        cli_s = _timed(cli, env, repeats)
        help_s = _timed([cli[0], "fuse", "--help"], env, repeats)
    px = size * size
    row.update({
        "usda_c_s": usda_s, "usda_c_px_s": px / usda_s,
        "xfusion_kernel_s": kernel_s, "xfusion_kernel_px_s": px / kernel_s,
        "kernel_ratio_vs_usda_c": usda_s / kernel_s,
        "xfusion_cli_s": cli_s, "xfusion_cli_px_s": px / cli_s,
        "cli_ratio_vs_usda_c": usda_s / cli_s,
        "xfusion_cli_help_s": help_s,
        "note": "USDA time = StarFM.exe on raw int16 files (its whole run, I/O included); "
                "xfusion kernel = starfm_block alone; xfusion CLI = GeoTIFF in -> GeoTIFF out "
                "in a fresh process (imports included); best of repeats, 2 threads each",
    })  # fmt: skip
    return row


def run(quick: bool = False, repeats: int = 3) -> list[dict[str, Any]]:
    """Rows for 600^2 (and 1200^2 unless ``quick``)."""
    tiles = (1,) if quick else (1, 2)
    return [side_by_side(t, repeats=1 if quick else repeats) for t in tiles]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 x 600 only, one repeat")
    ap.add_argument("--json", default=os.path.join("bench_out", "bench_starfm_usda.json"))
    a = ap.parse_args()
    rows = run(quick=a.quick)
    for r in rows:
        print(json.dumps(r, indent=1, default=str))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(rows, fh, indent=1, default=str)
