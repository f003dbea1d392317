"""Peak RSS of a large, lazily generated cube streamed through a small conv model to Zarr.

Run as a script it does the streaming in THIS process and prints JSON with ``ru_maxrss``;
:func:`run` starts it in a fresh subprocess so that the peak belongs to that job alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _stream(size: int, chunk: int, store: str) -> dict:
    from xfusion import apply_model
    from xfusion.config import EngineConfig
    from xfusion.engine import ModelSpec
    from xfusion.io import write_tiled
    from xfusion.testing import synthetic_scene

    t0 = time.perf_counter()
    scene = synthetic_scene((size, size), times=1, chunks={"time": 1, "y": chunk, "x": chunk})
    spec = ModelSpec(name="conv", builder="xfusion.testing.models:conv_model",
                     kwargs={"layers": 2, "width": 8, "seed": 0}, halo=2)
    pred = apply_model(scene["truth"], spec, config=EngineConfig(tile=512), method="bench",
                       name="pred")
    report = write_tiled(pred.to_dataset(), store, mode="w", max_in_flight=2, progress=False)
    elapsed = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "benchmark": "stream_to_zarr_peak_rss",
        "size": size, "chunk": chunk, "tiles": report.tiles_total,
        "elapsed_s": elapsed, "mpx_s": size * size / elapsed / 1e6,
        "peak_rss_gb": rss_kb / 1024**2,
        "data_gb": size * size * 4 / 1024**3,
    }


def run(size: int = 16384, chunk: int = 2048) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--size", str(size), "--chunk", str(chunk),
             "--store", os.path.join(tmp, "stream.zarr")],
            check=True, capture_output=True, text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--store", default=None)
    a = p.parse_args()
    if a.store is None:
        print(json.dumps(run(a.size, a.chunk)))
    else:
        print(json.dumps(_stream(a.size, a.chunk, a.store)))
