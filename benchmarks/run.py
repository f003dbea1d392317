"""Run xfusion's benchmarks, print a table and write JSON (``make bench``).

Every figure that matters is a ratio measured side by side in this one run (ours against a
baseline on the same data, same machine), plus peak RSS of streaming jobs measured in
separate subprocesses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (module, kwargs for the full run, kwargs for --quick)
BENCHMARKS = {
    "engine": ("bench_engine", {}, {"size": 1024, "chunk": 512}),
    "zarr": ("bench_zarr", {}, {"size": 2048}),
    "stream": ("bench_stream", {"size": 16384, "chunk": 2048}, {"size": 4096, "chunk": 2048}),
    "starfm_kernel": ("bench_starfm_kernel", {}, {"repeats": 2}),
    "starfm": ("bench_starfm", {}, {"quick": True}),
    "estarfm": ("bench_estarfm", {}, {"quick": True}),
    "fitfc": ("bench_fitfc", {}, {"quick": True}),
    "fsdaf": ("bench_fsdaf", {}, {"quick": True}),
    "starfm_usda": ("bench_starfm_usda", {}, {"quick": True}),
    "sttfn": ("bench_sttfn", {}, {"quick": True}),
    "super_resolve": ("bench_super_resolve", {}, {"quick": True}),
    "gapfill": ("bench_gapfill", {}, {"quick": True}),
    "run": ("bench_run", {}, {"quick": True}),
}


def _machine() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "platform": platform.platform()}


def _rows(result) -> list[dict]:
    return result if isinstance(result, list) else [result]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out", help="folder for results.json")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="benchmarks to run")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    a = p.parse_args(argv)
    names = a.only or list(BENCHMARKS)
    results, failures = [], {}
    for name in names:
        module, full, quick = BENCHMARKS[name]
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # a benchmark whose method has not landed
            failures[name] = f"not available: {err}"
            continue
        t0 = time.perf_counter()
        try:
            rows = _rows(mod.run(**(quick if a.quick else full)))
        except Exception as err:  # report and go on with the others
            failures[name] = f"{type(err).__name__}: {err}"
            continue
        for r in rows:
            r.setdefault("benchmark", name)
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            print(f"\n== {r['benchmark']}")
            for k, v in r.items():
                if k != "benchmark":
                    print(f"  {k:38s} {_fmt(v)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": _machine(), "quick": a.quick, "results": results, "failures": failures}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    for name, why in failures.items():
        print(f"\n!! {name}: {why}")
    print(f"\nwrote {out / 'results.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
