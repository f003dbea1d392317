"""Engine overhead: a small conv model through the engine vs the same model called directly.

Both run on the same data on the same machine in one process, one after the other, best of
``repeats``; the ratio engine/direct is what we track (goal <= 1.15 on CPU).
"""

from __future__ import annotations

import argparse
import json
import time

import dask
import dask.array as da
import numpy as np
import torch

from xfusion.config import EngineConfig
from xfusion.engine import map_model
from xfusion.testing.models import ConvModel


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(size: int = 2048, chunk: int = 1024, tile: int | None = 512, layers: int = 3,
        width: int = 16, repeats: int = 3) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 1, size, size)).astype(np.float32)
    model = ConvModel(layers=layers, width=width)

    def direct():
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    darr = da.from_array(x, chunks=(1, 1, chunk, chunk))
    cfg = EngineConfig(tile=tile)

    def engine():
        with dask.config.set(scheduler="threads"):
            return map_model(darr, model, config=cfg).compute()

    np.testing.assert_allclose(engine(), direct(), rtol=1e-4, atol=1e-4)  # warm-up + check
    t_direct = _best(direct, repeats)
    t_engine = _best(engine, repeats)
    px = size * size
    return {
        "benchmark": "engine_overhead",
        "size": size, "chunk": chunk, "tile": tile, "layers": layers, "width": width,
        "torch_threads": torch.get_num_threads(),
        "direct_s": t_direct, "engine_s": t_engine,
        "direct_mpx_s": px / t_direct / 1e6, "engine_mpx_s": px / t_engine / 1e6,
        "ratio_engine_over_direct": t_engine / t_direct,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--tile", type=int, default=512)
    a = p.parse_args()
    print(json.dumps(run(a.size, a.chunk, a.tile), indent=1))
