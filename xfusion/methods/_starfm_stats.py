"""STARFM's global statistic: exact, chunk-invariant moments of the fine images.

The similarity threshold of each pair date and band is ``2 * std(fine) / num_slice`` over the
WHOLE fine image (USDA). :func:`moment_parts` reduces each chunk to the count and the exact
partial sums of ``v`` and ``v * v`` (Shewchuk's non-overlapping expansions, compiled by numba);
their combination does not depend on the order of the chunks, so the threshold, and every
prediction, is bit-identical for any chunking.

Every prediction waits for that reduction over the whole image. If the predictions read the
same input chunks as the reduction, the scheduler must hold each chunk from its moments until
its predictions, and it also loads the chunks and their halos for the predictions while the
reduction waits for its last chunk: memory grows with the image (about 15 bytes per pixel for
one band). :func:`gated_blocks` gives the predictions their own reads, one task per input
block, that start once the thresholds are known (the statistics pass then frees each chunk
after its moments; the fine images of the pair dates are read twice), and
:func:`throttle_rows` lets the input blocks of a row start only when the predictions two rows
above are done, so that the threads do not read ahead: a few rows of blocks are in memory,
whatever the image size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING, Any

import dask
import numpy as np

from xfusion.errors import EmptyPredictionWarning, InvalidParameterError

if TYPE_CHECKING:
    from xfusion.methods.starfm import StarfmParams

NAME = "starfm"

__all__ = [
    "AUTO_REFLECTANCE_MAX",
    "AUTO_SCALE",
    "unit_params",
    "gated_blocks", "moment_parts", "threshold_from_parts", "thresholds", "throttle_rows"]


#: Preset "auto": a fine variable whose valid values all lie within [-AUTO_REFLECTANCE_MAX,
#: AUTO_REFLECTANCE_MAX] at the pair dates is 0..1 reflectance (odc-stac/xfusion scaling) and
#: gets the "usda" parameters x AUTO_SCALE.
AUTO_REFLECTANCE_MAX = 2.0
AUTO_SCALE = 1e-4



def unit_params(params: StarfmParams, scale: float) -> StarfmParams:
    """``params`` in a unit ``1 / scale`` times larger: every parameter in the data's unit x
    ``scale``, float mode, no fill value (``"usda"`` x 1e-4 is ``"reflectance"``)."""
    lo, hi = params.data_range
    return replace(
        params, uncertainty_fine=params.uncertainty_fine * scale,
        uncertainty_coarse=params.uncertainty_coarse * scale,
        data_range=(lo * scale, hi * scale), distance_offset=params.distance_offset * scale,
        fill=None, mode="float", auto_unit=False,
    )  # fmt: skip


_NPART = 64  # room for the partials of an exact float64 sum (at most ~40 for finite doubles)


_PARTS = 2 + 2 * _NPART  # count, overflow flag, partials of sum(v), partials of sum(v*v)


def _moments_impl(vals, lo, hi, fill, use_fill, out):  # type: ignore[no-untyped-def]
    """Exact moments of ``vals`` into ``out`` (compiled by numba, see :func:`_exact_moments`).

    ``out`` is ``_PARTS`` float64: count, overflow flag, then the non-overlapping partials of
    ``sum(v)`` and of ``sum(fl(v * v))`` (Shewchuk's grow-expansion, Python's ``msum``).
    """
    parts = out[2:].reshape(2, _NPART)
    nparts = np.zeros(2, np.int64)
    count = 0
    flat = vals.ravel()
    for k in range(flat.size):
        v = np.float64(flat[k])
        if not (v > lo and v < hi):  # also drops NaN
            continue
        if use_fill and v == fill:
            continue
        sq = v * v
        if not (abs(sq) < np.inf):
            out[1] = 1.0
            continue
        count += 1
        for q in range(2):
            x = v if q == 0 else sq
            i = 0
            for j in range(nparts[q]):
                y = parts[q, j]
                if abs(x) < abs(y):
                    x, y = y, x
                h = x + y
                r = y - (h - x)
                if r != 0.0:
                    parts[q, i] = r
                    i += 1
                x = h
            parts[q, i] = x  # at most ~40 partials for finite doubles: _NPART is enough
            nparts[q] = i + 1
    out[0] = count
    for q in range(2):  # slots past the final number of partials hold stale values
        parts[q, nparts[q] :] = 0.0


@cache
def _exact_moments() -> Any:
    """Compile :func:`_moments_impl` with numba (cached on disk; numba imported lazily)."""
    from numba import njit

    return njit(nogil=True, cache=True)(_moments_impl)


def moment_parts(
    block: np.ndarray, *, lo: float, hi: float, fill: float | None
) -> np.ndarray:
    """Exact moments of each ``(pair date, band)`` image in a ``(U, B, y, x)`` block.

    Returns ``(U, B, 1, _PARTS)`` float64: the number of pixels with ``lo < v < hi`` (and
    ``v != fill``), an overflow flag, then the non-overlapping partials (Shewchuk) whose exact
    sums are ``sum(v)`` and ``sum(fl(v * v))``. Exact sums do not depend on how the image is cut
    into blocks, so neither does the standard deviation computed from them.
    """
    moments = _exact_moments()
    u, b = block.shape[:2]
    out = np.zeros((u, b, 1, _PARTS), np.float64)
    use_fill = fill is not None and not math.isnan(fill)
    for i in range(u):
        for j in range(b):
            moments(
                np.ascontiguousarray(block[i, j]), float(lo), float(hi),
                float(fill) if use_fill else 0.0, use_fill, out[i, j, 0],
            )  # fmt: skip
    return out


def threshold_from_parts(
    parts: np.ndarray, *, num_slice: int, reference: bool, labels: Any = None
) -> np.ndarray:
    """Combine the exact moments of all blocks into one similarity threshold per image.

    ``parts`` is ``(U, B, ..., _PARTS)``: every block's moments along the middle axes.
    Returns ``(U, B)`` float64 thresholds (0 with a warning when the image has no usable pixel
    or a standard deviation that rounds to a zero threshold: no pixel can then be predicted).
    """
    from xfusion.methods._starfm_kernel import slice_from_std

    u, b = parts.shape[:2]
    flat = parts.reshape(u, b, -1, _PARTS)
    out = np.zeros((u, b), np.float64)
    for i in range(u):
        for j in range(b):
            p = flat[i, j]
            n = int(p[:, 0].sum())
            label = f" ({labels[i][j]})" if labels is not None else ""
            if p[:, 1].any():
                raise InvalidParameterError(
                    f"The fine image{label} has values too large to square in float64 (|v| > "
                    "1e154), so its standard deviation overflows. Check its scale and pass a "
                    "data_range that excludes fill values such as -3.4e38."
                )
            if n == 0:
                warnings.warn(
                    f"starfm(): the fine image{label} has no pixel strictly inside data_range, "
                    "so its similarity threshold is undefined and every prediction from it is "
                    "NaN (or the fill value). Check the data's scale against data_range.",
                    EmptyPredictionWarning,
                    stacklevel=4,
                )
                continue
            s = sum((Fraction(x) for x in p[:, 2 : 2 + _NPART].ravel() if x), Fraction(0))
            ss = sum((Fraction(x) for x in p[:, 2 + _NPART :].ravel() if x), Fraction(0))
            var = max(ss / n - (s / n) ** 2, Fraction(0))
            thr = slice_from_std(math.sqrt(float(var)), num_slice=num_slice, reference=reference)
            if thr == 0:
                warnings.warn(
                    f"starfm(): the fine image{label} is (nearly) constant (std "
                    f"{math.sqrt(float(var)):.4g}), so the similarity threshold 2*std/num_slice "
                    f"is 0 and, as in USDA STARFM, no candidate is similar to any pixel: every "
                    "prediction from it is NaN (or the fill value). Use a smaller num_slice or "
                    "another pair date.",
                    EmptyPredictionWarning,
                    stacklevel=4,
                )
            out[i, j] = thr
    return out


def _unit_parts(block: np.ndarray, *, fill: float | None) -> np.ndarray:
    """``(U, B, y, x)`` -> ``(U, B, 1, 2)``: the number of finite values (other than ``fill``)
    and their largest magnitude (0 without one), for preset "auto"'s unit detection."""
    v = block.astype(np.float64, copy=False)
    ok = np.isfinite(v)
    if fill is not None and not math.isnan(fill):
        ok &= v != fill
    out = np.zeros((*block.shape[:2], 1, 2), np.float64)
    out[..., 0, 0] = ok.sum(axis=(2, 3))
    if ok.any():
        out[..., 0, 1] = np.where(ok, np.abs(v), 0.0).max(axis=(2, 3))
    return out


#: Fine and coarse values whose largest magnitudes differ by this factor or more are taken to
#: be in different units (e.g. reflectance x1e4 and 0..1).
UNIT_RATIO = 100.0


def _check_units(uf: np.ndarray, uc: np.ndarray, names: Any) -> None:
    """Raise when a band's fine and coarse images at the pair dates are in different units:
    the coarse change would then be off by that factor and the prediction silently wrong."""
    if names is None:
        return
    nb = uf.shape[1]
    f = uf.reshape(uf.shape[0], nb, -1, 2)
    c = uc.reshape(uc.shape[0], nb, -1, 2)
    for b in range(nb):
        if f[:, b, :, 0].sum() == 0 or c[:, b, :, 0].sum() == 0:
            continue
        fmax, cmax = float(f[:, b, :, 1].max()), float(c[:, b, :, 1].max())
        lo, hi = sorted((fmax, cmax))
        if hi >= UNIT_RATIO * max(lo, 1e-300):
            fname, cname = names[0][b], names[1][b]
            raise InvalidParameterError(
                f"starfm(): the fine variable {fname!r} and the coarse variable {cname!r} are in "
                f"different units: at the pair dates the largest fine value is {fmax:.4g} and "
                f"the largest coarse value {cmax:.4g} (a factor {hi / max(lo, 1e-300):.3g}), so "
                "the coarse change would be off by that factor. Rescale one of them before "
                "fusing, e.g. reflectance x1e4 (Landsat/USDA files) vs 0..1 (MODIS via "
                f"odc-stac): ds[{cname!r}] * 1e4 or ds[{fname!r}] / 1e4."
            )


def _combine(pa: np.ndarray, pb: np.ndarray | None, uf: np.ndarray, uc: np.ndarray, *,
             params: StarfmParams, labels: Any, names: Any) -> np.ndarray:  # fmt: skip
    """``(U, B, 2)``: per pair date and band the threshold and the unit scale (preset "auto":
    per fine variable, from its largest magnitude). ``pa``/``pb``: moments with the
    parameters as given and x 1e-4 (``None`` unless "auto"); ``uf``/``uc``:
    :func:`_unit_parts` of the fine and coarse images at the pair dates."""
    _check_units(uf, uc, names)
    u, nb = pa.shape[:2]
    out = np.ones((u, nb, 2), np.float64)
    flat = uf.reshape(u, nb, -1, 2)
    alt = unit_params(params, AUTO_SCALE) if pb is not None else None
    for b in range(nb):
        small = (
            alt is not None and flat[:, b, :, 0].sum() > 0
            and float(flat[:, b, :, 1].max()) <= AUTO_REFLECTANCE_MAX
        )  # fmt: skip
        prm, parts = (alt, pb) if small else (params, pa)
        assert prm is not None and parts is not None
        out[:, b, 0] = threshold_from_parts(
            parts[:, b : b + 1], num_slice=prm.num_slice, reference=prm.mode == "reference",
            labels=None if labels is None else [[lab[b]] for lab in labels],
        )[:, 0]  # fmt: skip
        out[:, b, 1] = AUTO_SCALE if small else 1.0
    return out


def _combine_block(*arrays: np.ndarray, auto: bool, params: StarfmParams, labels: Any,
                   names: Any, block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    if block_info is None or None not in block_info:  # meta probing
        return np.ones((*arrays[0].shape[:2], 1, 2), np.float64)
    pa, pb, uf, uc = arrays if auto else (arrays[0], None, *arrays[1:])
    return _combine(pa, pb, uf, uc, params=params, labels=labels, names=names)[:, :, None, :]


def thresholds(
    pairs_img: Any, *, params: StarfmParams, labels: list[list[str]], token: str,
    coarse: Any = None, names: tuple[Any, Any] | None = None,
) -> Any:  # fmt: skip
    """Similarity thresholds and unit scales ``(U, B, 2)`` of the pair-date fine images
    ``(U, B, y, x)``: ``[..., 0]`` the threshold, ``[..., 1]`` the scale of the parameters
    (1, or 1e-4 where preset ``"auto"`` found 0..1 data, one scale per band).

    ``coarse``: the coarse images of the same dates; with ``names`` (the fine and coarse
    variable names) a band whose fine and coarse values are in different units raises
    :class:`~xfusion.errors.InvalidParameterError`. numpy in → numpy out (computed now); dask
    in → a lazy dask array computed by exact reductions over the chunks (no compute here).
    """
    lo, hi = params.data_range
    kw = {"lo": lo, "hi": hi, "fill": params.fill}
    alt_kw: dict[str, Any] = {}
    if params.auto_unit:
        alt = unit_params(params, AUTO_SCALE)
        alt_kw = {"lo": alt.data_range[0], "hi": alt.data_range[1], "fill": alt.fill}
    if coarse is None:
        coarse, names = pairs_img, None
    common = {"params": params, "labels": labels, "names": names}
    if not dask.is_dask_collection(pairs_img) and not dask.is_dask_collection(coarse):
        return _combine(
            moment_parts(pairs_img, **kw),
            moment_parts(pairs_img, **alt_kw) if params.auto_unit else None,
            _unit_parts(pairs_img, fill=params.fill), _unit_parts(coarse, fill=params.fill),
            **common,
        )  # fmt: skip
    import dask.array as da

    def parts_of(img: Any, func: Any, width: int, tag: str, **fkw: Any) -> Any:
        img = img if dask.is_dask_collection(img) else da.asarray(img)
        ny, nx = (len(c) for c in img.chunks[2:])
        out = da.map_blocks(
            func, img, **fkw,
            chunks=(*img.chunks[:2], (1,) * ny, (width,) * nx), dtype=np.float64,
            meta=np.empty((0, 0, 0, 0), np.float64), name=f"xfusion.{NAME}-{tag}-{token}",
        )  # fmt: skip
        return out.rechunk(-1)

    whole = [parts_of(pairs_img, moment_parts, _PARTS, "moments", **kw)]
    if params.auto_unit:
        whole.append(parts_of(pairs_img, moment_parts, _PARTS, "moments-unit", **alt_kw))
    whole.append(parts_of(pairs_img, _unit_parts, 2, "unit", fill=params.fill))
    whole.append(parts_of(coarse, _unit_parts, 2, "unit-coarse", fill=params.fill))
    u, nb = pairs_img.shape[:2]
    out = da.map_blocks(
        _combine_block, *whole, auto=params.auto_unit, **common,
        chunks=((u,), (nb,), (1,), (2,)), dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64), name=f"xfusion.{NAME}-threshold-{token}",
    )  # fmt: skip
    return out[:, :, 0, :]


class _Subgraph:
    """A block's own input graph, opaque to dask (run by :func:`_run_block` inside a task)."""

    def __init__(self, graph: dict[Any, Any], key: Any) -> None:
        self.graph, self.key = graph, key

    def __dask_tokenize__(self) -> Any:
        return ("xfusion.starfm-subgraph", self.key, sorted(map(str, self.graph)))


def _run_block(sub: _Subgraph, *_after: Any) -> Any:
    """Compute one input block from its own graph (synchronously, in the calling worker)."""
    from dask.local import get_sync

    return get_sync(sub.graph, sub.key)


def gated_blocks(arr: Any, thresholds_: Any, *, token: str) -> tuple[Any, dict[Any, Any]]:
    """``arr`` as one task per block that reads its own inputs once the thresholds exist.

    Each block of the copy computes its part of ``arr``'s graph itself (its inputs read
    again: the copy shares no task with the statistics pass) and depends on the single chunk
    of ``thresholds_``, so no input is read for the predictions before the global statistic is
    known. Returns the copy and the tasks' arguments for :func:`throttle_rows`. With a dask
    without task-spec graphs (< 2024.12) ``arr`` is returned as it is (same results; the
    memory then grows with the image).
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    try:
        from dask._task_spec import Task, TaskRef, convert_legacy_graph
    except ImportError:  # pragma: no cover - older dask
        return arr, {}
    gate = thresholds_.rechunk(-1) if thresholds_.npartitions > 1 else thresholds_
    (gate_key,) = dask.core.flatten(gate.__dask_keys__())
    graph = convert_legacy_graph(dict(arr.__dask_graph__()))
    name = f"xfusion.{NAME}-inputs-{token}"
    tasks, args = {}, {}
    for key in dask.core.flatten(arr.__dask_keys__()):
        needed, todo = {}, [key]
        while todo:  # the block's own sub-graph
            k = todo.pop()
            if k not in needed:
                needed[k] = graph[k]
                todo.extend(graph[k].dependencies)
        new = (name, *key[1:])
        args[new] = (_Subgraph(needed, key), gate_key)
        tasks[new] = Task(new, _run_block, args[new][0], TaskRef(gate_key))
    hlg = HighLevelGraph.from_collections(name, tasks, dependencies=(gate,))
    return da.Array(hlg, name, arr.chunks, meta=arr._meta), args


def throttle_rows(out: Any, inputs: Any, args: dict[Any, Any], *, lag: int = 2) -> Any:
    """``out`` whose input blocks of row ``i`` wait for the output blocks of row ``i - lag``.

    ``inputs`` (from :func:`gated_blocks`, same spatial chunks as ``out``) feeds ``out`` through
    a halo of at most one block, so output row ``i - lag`` never needs input row ``i`` (no
    cycle). Without this, the threads of the local scheduler read every input block as soon as
    the thresholds are known, and hold them: the memory then grows with the image; with it,
    about ``lag + 2`` rows of blocks are in memory whatever the image size. Values and keys of
    ``out`` are unchanged. Returns ``out`` as it is when the chunks do not line up.
    """
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    hlg = out.__dask_graph__()
    if (not args or out.chunks[-2:] != inputs.chunks[-2:] or out.ndim != inputs.ndim
            or not isinstance(hlg, HighLevelGraph) or inputs.name not in hlg.layers):  # fmt: skip
        return out
    from dask._task_spec import Task, TaskRef, convert_legacy_graph

    # the layers from the input blocks to the output (input blocks, halo exchange, blocks):
    # merged into the output's layer, as the new dependencies run both ways between them
    deps = hlg.dependencies
    merged = {out.name}
    todo = [out.name]
    while todo:
        for dep in deps[todo.pop()]:
            if dep not in merged and (dep == inputs.name or _reaches(deps, dep, inputs.name)):
                merged.add(dep)
                todo.append(dep)
    raw: dict[Any, Any] = {}
    for name in merged:
        raw.update(hlg.layers[name])
    graph = convert_legacy_graph(raw, all_keys=set(hlg.keys()))
    ncol = len(out.chunks[-1])
    nplane = out.numblocks[2]
    for key, (sub, gate_key) in args.items():
        *lead, row, _col = key[1:]
        if row < lag or key not in graph:
            continue
        before = [TaskRef((out.name, *lead[:2], k, row - lag, c))
                  for k in range(nplane) for c in range(ncol)]  # fmt: skip
        graph[key] = Task(key, _run_block, sub, TaskRef(gate_key), *before)
    layers = {n: lay for n, lay in hlg.layers.items() if n not in merged}
    layers[out.name] = MaterializedLayer(graph)
    dependencies = {n: set(d) for n, d in deps.items() if n not in merged}
    dependencies[out.name] = {d for n in merged for d in deps[n]} - merged
    return da.Array(HighLevelGraph(layers, dependencies), out.name, out.chunks, meta=out._meta)


def _reaches(deps: Any, start: str, target: str) -> bool:
    """Whether layer ``start`` depends (transitively) on layer ``target``."""
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n == target:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(deps[n])
    return False
