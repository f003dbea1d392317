"""STARFM throughput and memory, measured side by side in one run.

* End-to-end through the public API (``xfusion.starfm``) on synthetic600 (600 x 600, one band,
  one pair, the USDA settings: 50 px window, reference mode), on a numpy cube and on a
  dask cube (4 chunks), and the numba kernel alone on the same arrays.
* Ratio against the USDA STARFM v1.2.1 C program: 92 k px/s on this stack with 2 OpenMP
  threads (3.9 s, specs/starfm.md section 4). The C program cannot be run here (not
  distributed with the project), so that figure is quoted, not measured.
* Ratio against the brute-force reference of the test suite (one centre, one candidate at a
  time, ``tests/test_starfm_kernel.py::brute_starfm``) on a small crop with full windows,
  extrapolated per pixel; the crop's outputs are also checked equal.
* Peak RSS of a 10000 x 10000 single-band prediction streamed to Zarr (inputs generated
  lazily by ``xfusion.testing.synthetic_scene``), in a fresh subprocess (``ru_maxrss``).
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
USDA_C_PX_S = 600 * 600 / 3.9  # 92.3 k px/s: USDA v1.2.1, 2 OpenMP threads, 50 px window
USDA_NOTE = (
    "USDA C figure quoted from specs/starfm.md (3.9 s at 600x600, 2 threads): the C program "
    "cannot be run here"
)
RSS_LIMIT_GB = 2.0


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
                     "px_s": px / best, "ratio_vs_usda_c": px / best / USDA_C_PX_S,
                     "usda_c_px_s": USDA_C_PX_S, "note": note, "usda_note": USDA_NOTE})  # fmt: skip

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


def _stream(size: int, chunk: int, store: str) -> dict[str, Any]:
    """Predict one band of ``size`` x ``size`` and stream it to Zarr (run in a subprocess)."""
    import xfusion
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
        cube[v] = cube[v] * 1e4
    pred = xfusion.starfm(cube, fine="fine_red", coarse="coarse_red")  # 50 px window
    to_zarr(pred, store, mode="w", progress=False)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"benchmark": "starfm_stream_rss", "size": size, "chunk": chunk, "window": 50,
            "elapsed_s": elapsed, "px_s_including_input_generation": size * size / elapsed,
            "peak_rss_gb": rss, "limit_gb": RSS_LIMIT_GB, "under_limit": rss < RSS_LIMIT_GB,
            "note": "lazy synthetic inputs -> xfusion.starfm -> xfusion.io.to_zarr, one "
                    "process; ru_maxrss of that process"}  # fmt: skip


def stream_rss(size: int = 10000, chunk: int = 1024) -> dict[str, Any]:
    """Run :func:`_stream` in a fresh subprocess so that the peak RSS is that job's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--stream", str(size), str(chunk),
             os.path.join(tmp, "starfm.zarr")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
    rows.append(stream_rss(2048, 512) if quick else stream_rss(10000, 1024))
    rows.append(gpu(1024 if quick else 4096))
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
    p.add_argument("--stream", nargs=3, metavar=("SIZE", "CHUNK", "STORE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stream:
        print(json.dumps(_stream(int(a.stream[0]), int(a.stream[1]), a.stream[2])))
        sys.exit(0)
    result = run(quick=a.quick)
    print(_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"\nwrote {a.json}")
