"""STARFM throughput and memory, measured side by side in one run.

* End-to-end through the public API (``xfusion.starfm``) on synthetic600 (600 x 600, one band,
  one pair, the USDA settings: 50 px window, reference mode), on a numpy cube and on a
  dask cube (4 chunks), and the numba kernel alone on the same arrays.
* Ratio against the USDA STARFM v1.2.1 C program run in the same process tree on the same
  stack with 2 OpenMP threads, when its executable is available (``bench_starfm_usda.py``,
  which also times both command lines and checks parity); otherwise against the spec's
  figure (3.9 s), and the rows say that it is QUOTED, not measured.
* Ratio against the brute-force reference of the test suite (one centre, one candidate at a
  time, ``tests/test_starfm_kernel.py::brute_starfm``) on a small crop with full windows,
  extrapolated per pixel; the crop's outputs are also checked equal.
* Peak RSS of single-band predictions streamed from a Zarr input to a Zarr output at
  2500^2, 5000^2 and 10000^2 (1024 px chunks), each in a fresh subprocess (``ru_maxrss``):
  it must stay under 2 GB and roughly flat with the image size.
* With CUDA (torch) present: the torch kernel at 4096 x 4096.

Usage: ``python benchmarks/bench_starfm.py [--quick] [--json PATH]`` (prints a table, writes
``bench_out/bench_starfm.json``); ``run()`` returns the rows for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "synthetic600")
TESTS = os.path.join(HERE, "..", "tests")
RSS_LIMIT_GB = 2.0


def _usda_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_starfm_usda",
                                                  os.path.join(HERE, "bench_starfm_usda.py"))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _best(fn: Any, repeats: int) -> float:
    fn()  # warm-up: numba compile / cache load, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _cube(chunks: Any = None) -> Any:
    from xfusion.cube import from_geotiffs

    return from_geotiffs(
        fine={"2001-01-01": os.path.join(DATA, "fine_t1.tif")},
        coarse={"2001-01-01": os.path.join(DATA, "coarse_t1.tif"),
                "2001-01-17": os.path.join(DATA, "coarse_t2.tif")},
        chunks=chunks,
    )  # fmt: skip


def _brute() -> Any:
    spec = importlib.util.spec_from_file_location("_starfm_brute", os.path.join(
        TESTS, "test_starfm_kernel.py"))  # fmt: skip
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.brute_starfm


def throughput(repeats: int = 3, crop: int = 12) -> list[dict[str, Any]]:
    """API (numpy and dask), kernel and brute-force throughput on synthetic600 at window 50."""
    import xfusion
    from xfusion.methods._starfm_kernel import similarity_threshold, starfm_block

    px = 600 * 600
    cube = _cube()
    dcube = _cube(chunks=300)
    rows = []
    usda = _usda_module().usda_c(1, repeats=min(repeats, 3))

    def api_numpy() -> Any:
        return xfusion.starfm(cube, fine="fine", coarse="coarse")

    def api_dask() -> Any:
        return xfusion.starfm(dcube, fine="fine", coarse="coarse").compute()

    ref = api_numpy().fine.values[0]
    np.testing.assert_array_equal(api_dask().fine.values[0], ref)
    L, M1, M2 = cube.fine.values[0], cube.coarse.values[0], cube.coarse.values[1]
    thr = similarity_threshold(L)
    kw = {"window": 50, "thresholds": thr, "distance_scale": 25.0, "fill_value": np.nan}

    def kernel() -> Any:
        return starfm_block(L, M1, M2, **kw, threads=None)

    for name, fn, note in (
        ("starfm_api_numpy", api_numpy, "xfusion.starfm on a numpy cube (eager)"),
        ("starfm_api_dask", api_dask, ("xfusion.starfm on a dask cube, 4 chunks of 300x300, "
                                       "then .compute() (threaded scheduler)")),
        ("starfm_kernel", kernel, "numba kernel alone (starfm_block), all CPUs"),
    ):  # fmt: skip
        best = _best(fn, repeats)
        rows.append({"benchmark": name, "pixels": px, "window": 50, "best_s": best,
                     "px_s": px / best, "ratio_vs_usda_c": px / best / usda["usda_c_px_s"],
                     **usda, "note": note})  # fmt: skip

    # brute force: a crop with a full 50 px window around every interior pixel
    brute = _brute()
    r0, c0 = 300, 280
    h = (25, 24, 25, 24)
    sl = (slice(r0 - h[0], r0 + crop + h[1]), slice(c0 - h[2], c0 + crop + h[3]))
    t0 = time.perf_counter()
    want = brute(L[sl], M1[sl], M2[sl], window=50, thresholds=thr, halo=h, A=25.0, fill=-9999)[0]
    brute_s = time.perf_counter() - t0
    got = starfm_block(L[sl], M1[sl], M2[sl], window=50, thresholds=thr, halo=h,
                       distance_scale=25.0, threads=1)  # fmt: skip
    np.testing.assert_array_equal(got, want)
    brute_px_s = crop * crop / brute_s
    kernel_px_s = rows[2]["px_s"]
    rows.append({"benchmark": "starfm_vs_bruteforce", "crop_pixels": crop * crop, "window": 50,
                 "bruteforce_s": brute_s, "bruteforce_px_s": brute_px_s,
                 "kernel_px_s": kernel_px_s, "api_numpy_px_s": rows[0]["px_s"],
                 "ratio_kernel_vs_bruteforce": kernel_px_s / brute_px_s,
                 "ratio_api_vs_bruteforce": rows[0]["px_s"] / brute_px_s,
                 "outputs_equal_on_crop": True,
                 "note": "brute force = tests/test_starfm_kernel.py::brute_starfm (pure Python, "
                         "one candidate at a time), extrapolated per pixel"})  # fmt: skip
    return rows


def _make_input(size: int, chunk: int, store: str) -> dict[str, Any]:
    """Write the synthetic input cube (one band, reflectance x1e4, 2 dates) to a Zarr store."""
    from xfusion.io import to_zarr
    from xfusion.testing import synthetic_scene

    t0 = time.perf_counter()
    scene = synthetic_scene(
        (size, size), kind="reflectance", bands=["red"], times=2, fine_times=[0],
        cloud_fraction=0.0, coarse_cloud_fraction=0.0, seed=0,
        chunks={"time": 1, "y": chunk, "x": chunk},
    )  # fmt: skip
    cube = scene[["fine_red", "coarse_red"]]
    for v in ("fine_red", "coarse_red"):  # USDA units: reflectance x1e4
        cube[v] = (cube[v] * 1e4).astype("float32")
    to_zarr(cube, store, mode="w", progress=False)
    return {"input_s": time.perf_counter() - t0}


def _stream(src: str, dst: str) -> dict[str, Any]:
    """Zarr in -> xfusion.starfm (USDA defaults, 50 px window) -> Zarr out (in a subprocess)."""
    import xfusion
    from xfusion.io import open_zarr, to_zarr

    t0 = time.perf_counter()
    cube = open_zarr(src)
    size, chunk = cube.sizes["y"], max(cube["fine_red"].chunks[1])
    pred = xfusion.starfm(cube, fine="fine_red", coarse="coarse_red")
    to_zarr(pred, dst, mode="w", progress=False)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"benchmark": "starfm_stream_rss", "size": size, "chunk": chunk, "window": 50,
            "elapsed_s": elapsed, "px_s": size * size / elapsed,
            "peak_rss_gb": rss, "limit_gb": RSS_LIMIT_GB, "under_limit": rss < RSS_LIMIT_GB,
            "note": "Zarr input (synthetic, float32 x1e4) -> xfusion.starfm -> xfusion.io.to_zarr "
                    "in one fresh process (threaded scheduler); ru_maxrss of that process"}  # fmt: skip


def stream_rss(size: int = 10000, chunk: int = 1024) -> dict[str, Any]:
    """:func:`_stream` at ``size``^2 in a fresh subprocess (its peak RSS is that job's alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.zarr"), os.path.join(tmp, "out.zarr")
        made = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--make-input", str(size), str(chunk), src],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--stream", src, dst],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row.update(json.loads(made.stdout.strip().splitlines()[-1]))
    return row  # type: ignore[no-any-return]


def gpu(size: int = 4096) -> dict[str, Any]:
    """Torch kernel on CUDA at ``size`` x ``size`` (window 50, one pair), when available."""
    from xfusion._compat import has

    if not has("torch"):
        return {"benchmark": "starfm_gpu", "skipped": "torch not installed"}
    import torch

    if not torch.cuda.is_available():
        return {"benchmark": "starfm_gpu", "skipped": "no CUDA device on this machine"}
    from xfusion.methods._starfm_torch import starfm_block_torch

    rng = np.random.default_rng(0)
    L = rng.choice([800.0, 2000.0, 3500.0], (size, size)) + rng.uniform(0, 100, (size, size))
    M1 = L + rng.uniform(-150, 150, L.shape)
    M2 = M1 + rng.uniform(-100, 100, L.shape)

    def fn() -> Any:
        out = starfm_block_torch(L, M1, M2, window=50, thresholds=60.0, device="cuda")
        torch.cuda.synchronize()
        return out

    best = _best(fn, 2)
    return {"benchmark": "starfm_gpu", "size": size, "window": 50, "best_s": best,
            "px_s": size * size / best, "device": torch.cuda.get_device_name(0)}  # fmt: skip


def run(quick: bool = False, repeats: int = 3) -> list[dict[str, Any]]:
    """All STARFM benchmarks as rows (``quick``: fewer repeats, a 2048 px streaming job)."""
    rows = throughput(repeats=1 if quick else repeats, crop=8 if quick else 12)
    for size in (2048,) if quick else (2500, 5000, 10000):
        rows.append(stream_rss(size, 512 if quick else 1024))
    rows.append(gpu(1024 if quick else 4096))
    rows.extend(_usda_module().run(quick=quick))
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"== {r['benchmark']}")
        for k, v in r.items():
            if k != "benchmark":
                lines.append(f"  {k:34s} {v:.4g}" if isinstance(v, float) else f"  {k:34s} {v}")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.add_argument("--json", default=os.path.join("bench_out", "bench_starfm.json"),
                   help="where to write the rows (default bench_out/bench_starfm.json)")
    p.add_argument("--stream-only", nargs="*", type=int, metavar="SIZE",
                   help="only the streaming peak-RSS runs, at these sizes (default 2500 5000 "
                   "10000)")
    p.add_argument("--make-input", nargs=3, metavar=("SIZE", "CHUNK", "STORE"),
                   help=argparse.SUPPRESS)
    p.add_argument("--stream", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.make_input:
        print(json.dumps(_make_input(int(a.make_input[0]), int(a.make_input[1]), a.make_input[2])))
        sys.exit(0)
    if a.stream:
        print(json.dumps(_stream(*a.stream)))
        sys.exit(0)
    if a.stream_only is not None:
        for size in a.stream_only or (2500, 5000, 10000):
            print(json.dumps(stream_rss(size)), flush=True)
        sys.exit(0)
    result = run(quick=a.quick)
    print(_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"\nwrote {a.json}")
