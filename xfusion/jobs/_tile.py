"""One tile of a job: load its area plus margin, run the method, write its region."""

from __future__ import annotations

import math
import sys
import time as _time
from collections.abc import Mapping
from typing import Any

import numpy as np

from xfusion.jobs.spec import Job

__all__ = ["run_tile"]


def _role_names(ds: Any, prefix: str) -> list[str]:
    return [str(n) for n in ds.data_vars if n == prefix or str(n).startswith(f"{prefix}_")]


def _groups(
    job: Job, times: np.ndarray, targets: np.ndarray, f_obs: np.ndarray
) -> list[tuple[list[int], dict[str, Any]]]:
    """Split the targets by the pair rule they can use: ``[(positions, extra kwargs)]``.

    From the registry's :attr:`~xfusion.methods.Method.pairs`: ``"two"`` (STTFN) needs a pair
    on both sides; ``"one-or-two"`` (STARFM) without ``pairs`` uses both pairs where a target
    has them and else the one pair it has (before, or after); with ``pairs`` set, the targets
    that rule can serve. ``"nearest"`` is the method's one-pair rule (baselines: before, else
    after; STARFM: before).
    """
    pairs = times[f_obs]
    side = {}
    for i in targets:
        t = times[i]
        side[int(i)] = (bool(np.any(pairs < t)), bool(np.any(pairs > t)))
    both = [i for i, (b, a) in side.items() if b and a]
    only_b = [i for i, (b, a) in side.items() if b and not a]
    only_a = [i for i, (b, a) in side.items() if a and not b]
    from xfusion.methods import get

    method = get(job.method)
    if method.pairs == "two":
        return [(both, {})] if both else []
    rule = job.params.get("pairs")
    if method.pairs == "one-or-two" and rule is None:
        groups = [
            (both, {"pairs": "bracket"}),
            (only_b, {"pairs": "before"}),
            (only_a, {"pairs": "after"}),
        ]
        return [(g, kw) for g, kw in groups if g]
    rule = "nearest" if rule is None else rule
    if rule == "nearest":
        rule = method.one_pair_rule  # STARFM's (USDA's) one-pair rule is "before"
    if not isinstance(rule, str) or rule not in ("nearest", "before", "after", "bracket"):
        return [([int(i) for i in targets], {})]  # explicit pair dates: the method checks them
    ok = {
        "nearest": both + only_b + only_a,
        "before": both + only_b,
        "after": both + only_a,
        "bracket": both,
    }[rule]
    return [(sorted(ok), {})] if ok else []


def _split(n: int, margin: int, threads: int) -> tuple[int, ...]:
    """Chunks along one dim of a tile plus margins: ``(margin, interior parts..., margin)``."""
    parts = max(1, min(math.ceil(math.sqrt(threads)), n // 256))
    base, extra = divmod(n, parts)
    inner = tuple(base + (1 if i < extra else 0) for i in range(parts))
    return ((margin,) if margin else ()) + inner + ((margin,) if margin else ())


def _limit_torch_threads(threads: int) -> None:
    """On a Dask worker, keep torch's intra-op threads to the worker's share of the CPUs."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _worker_threads(default: int) -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, default)


def run_tile(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Load, fuse and write one tile (the task :func:`run` submits; runs on a worker).

    Returns a small summary: ``status`` ("written", "empty" or "error"), ``reason`` (why
    empty, or the error as ``"Type: message"``), ``pixels``, ``targets``, ``items`` (ids used)
    and ``seconds``. Errors are returned, not raised, so that their messages reach the driver
    intact (some exception classes do not survive pickling between processes).
    """
    t0 = _time.perf_counter()
    try:
        return _run_tile(payload)
    except Exception as err:
        return {
            "status": "error",
            "reason": f"{type(err).__name__}: {err}",
            "pixels": 0,
            "targets": 0,
            "items": [],
            "seconds": _time.perf_counter() - t0,
        }


def _run_tile(payload: Mapping[str, Any]) -> dict[str, Any]:
    import dask
    import pystac
    import xarray as xr
    from odc.geo.geobox import GeoBox

    from xfusion.methods import get
    from xfusion.stac import load_pair

    t0 = _time.perf_counter()
    job = Job(**payload["job"])
    fine_items = [pystac.Item.from_dict(d) for d in payload["fine_items"]]
    coarse_items = [pystac.Item.from_dict(d) for d in payload["coarse_items"]]

    def empty(reason: str) -> dict[str, Any]:
        return {
            "status": "empty",
            "reason": reason,
            "pixels": 0,
            "targets": 0,
            "items": [],
            "seconds": _time.perf_counter() - t0,
        }

    if not fine_items or not coarse_items:
        return empty(f"no {job.fine if not fine_items else job.coarse} item over the tile")
    gbox = GeoBox(tuple(payload["shape"]), payload["affine"], payload["crs"])
    margin = int(payload["margin"])
    th, tw = payload["tile_shape"]
    sdims = tuple(payload["dims"])
    chunk = int(min(max(gbox.shape), 2048))
    threads = _worker_threads(int(payload.get("threads", 1)))
    if payload.get("on_worker"):
        _limit_torch_threads(threads)
    with dask.config.set(
        {"scheduler": "threads", "num_workers": threads, "xfusion.kernel-threads": threads}
    ):
        cube = load_pair(
            fine=fine_items,
            coarse=coarse_items,
            geobox=gbox,
            time=list(job.time),
            bands=job.bands,
            chunks={"time": 1, sdims[0]: chunk, sdims[1]: chunk},
            mask=job.mask,
            tolerance=job.tolerance,
            fine_platform=job.fine_platform,
            coarse_platform=job.coarse_platform,
            sign="auto",
            retries=1,
            retry_delay=0.2,
        )
        fine, coarse = _role_names(cube, "fine"), _role_names(cube, "coarse")
        times = cube["time"].values.astype("datetime64[D]").astype("datetime64[ns]")
        cube = cube.assign_coords(time=times)
        wanted = np.asarray(payload["times"], dtype="datetime64[ns]")
        f_obs = np.ones(times.size, bool)
        c_obs = np.ones(times.size, bool)
        for n in fine:
            f_obs &= np.asarray(cube[f"observed_{n}"].values, bool)
        for n in coarse:
            c_obs &= np.asarray(cube[f"observed_{n}"].values, bool)
        # read the dates that can matter (fine pairs, coarse targets) once, into memory: one
        # tile plus margin, so the memory per task does not grow with the AOI
        keep = np.flatnonzero(f_obs | (np.isin(times, wanted) & c_obs))
        if keep.size == 0:
            return empty("no fine pair and no coarse target date over the tile")
        cube = cube.isel(time=keep).persist()
        # margin | interior | margin chunks: the method reads the margin as its halo, and the
        # crop below culls the margin's own predictions; the interior is split so that the
        # task's threads share it
        if payload.get("margin_chunks", True):
            cube = cube.chunk(
                {
                    sdims[0]: _split(th, margin, threads),
                    sdims[1]: _split(tw, margin, threads),
                }
            )
        times, f_obs, c_obs = times[keep], f_obs[keep], c_obs[keep]
        crop = {sdims[0]: slice(margin, margin + th), sdims[1]: slice(margin, margin + tw)}
        clear = [cube[n].isel(crop).notnull().mean(sdims).data for n in fine + coarse]
        clear = np.stack(dask.compute(*clear)) if clear else np.ones((0, times.size))
        if job.min_clear is not None and fine:
            f_obs &= clear[: len(fine)].min(axis=0) >= float(job.min_clear)
        if coarse:
            c_obs &= clear[len(fine) :].min(axis=0) > 0.0
        in_targets = np.flatnonzero(np.isin(times, wanted) & c_obs)
        if in_targets.size == 0:
            return empty("no clear coarse observation at a target date over the tile")
        if not f_obs.any():
            return empty(
                "no fine date clear enough to serve as a pair over the tile (min_clear="
                f"{job.min_clear})"
            )
        groups = _groups(job, times, in_targets, f_obs)
        if not groups:
            return empty("no target date has the fine pair(s) its method needs over the tile")
        cube = cube.assign_coords({f"observed_{n}": ("time", f_obs) for n in fine})
        kw = dict(job.params)
        if job.weights is not None:
            kw["weights"] = job.weights
        method = get(job.method)
        if method.progress_param is not None:
            kw.setdefault(method.progress_param, False)
        func = method.load()
        parts = []
        for tidx, extra in groups:
            part = func(
                cube,
                fine=fine[0] if len(fine) == 1 else fine,
                coarse=coarse[0] if len(coarse) == 1 else coarse,
                targets=[str(np.datetime_as_string(times[i], unit="D")) for i in tidx],
                **{**kw, **extra},
            )
            parts.append(part[fine].drop_vars([c for c in part.coords if c not in part.dims]))
        out = parts[0] if len(parts) == 1 else xr.concat(parts, "time").sortby("time")
        n_pred = int(out.sizes["time"])
        names = list(payload["variables"])
        out = out.rename(dict(zip(fine, names, strict=True)))
        out = out.isel(crop)
        out = out.reindex(time=wanted).astype("float32")
        out = out.drop_vars(list(out.coords))
        block = int(payload["write_block"])
        out = out.chunk({"time": 1, sdims[0]: block, sdims[1]: block})
        ys, xs = payload["region"]
        region = {"time": slice(0, len(wanted)), sdims[0]: slice(*ys), sdims[1]: slice(*xs)}
        out.to_zarr(payload["store"], mode="r+", region=region, consolidated=False, zarr_format=3)
    used = sorted({it.id for it in fine_items} | {it.id for it in coarse_items})
    return {
        "status": "written",
        "reason": "",
        "pixels": int(th * tw * n_pred),
        "targets": n_pred,
        "items": used,
        "seconds": _time.perf_counter() - t0,
    }
