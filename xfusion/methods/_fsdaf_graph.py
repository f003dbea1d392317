"""The dask graph of FSDAF: exact chunk-independent global statistics (band stds, class
counts, the ISODATA sample), the FSDAF blocks (steps 3-12) on numpy or in row waves on dask,
and the per-pixel step 13 tasks, for :mod:`xfusion.methods.fsdaf`."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from xfusion.errors import InvalidParameterError, NotEnoughDataError
from xfusion.methods._fsdaf_params import NAME, FsdafParams
from xfusion.methods._output import to_integer


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


def _std_parts(block: np.ndarray) -> np.ndarray:
    """Exact moment partials of each band of a (B, y, x) block: (B, 1, _PARTS)."""
    from xfusion.methods._starfm_stats import moment_parts

    return moment_parts(block[None], lo=-math.inf, hi=math.inf, fill=None)[0]


def _std_from_parts(parts: np.ndarray) -> np.ndarray:
    """Sample standard deviation (IDL STDDEV, ddof=1) of each band from exact partials."""
    from xfusion.methods._starfm_stats import _NPART, _PARTS

    nb = parts.shape[0]
    flat = parts.reshape(nb, -1, _PARTS)
    out = np.zeros(nb)
    for b in range(nb):
        p = flat[b]
        n = int(p[:, 0].sum())
        if p[:, 1].any():
            raise InvalidParameterError(
                "The fine image has values too large to square in float64 (|v| > 1e154), so "
                "its standard deviation overflows. Check its scale and the nodata values."
            )
        if n < 2:
            continue
        s = sum((Fraction(x) for x in p[:, 2 : 2 + _NPART].ravel() if x), Fraction(0))
        ss = sum((Fraction(x) for x in p[:, 2 + _NPART :].ravel() if x), Fraction(0))
        var = max((ss - s * s / n) / (n - 1), Fraction(0))
        out[b] = math.sqrt(float(var))
    return out


def _global_std(f1: Any, token: str) -> Any:
    if not _is_dask(f1):
        return _std_from_parts(_std_parts(f1))
    import dask.array as da

    from xfusion.methods._starfm_stats import _PARTS

    ny, nx = (len(c) for c in f1.chunks[1:])
    parts = da.map_blocks(
        _std_parts, f1.rechunk({0: -1}), chunks=(f1.shape[0], (1,) * ny, (_PARTS,) * nx),
        dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
        name=f"xfusion.{NAME}-moments-{token}",
    )  # fmt: skip
    return da.map_blocks(
        _std_from_parts, parts.rechunk(-1), drop_axis=(1, 2), chunks=((f1.shape[0],),),
        dtype=np.float64, meta=np.empty((0,), np.float64), name=f"xfusion.{NAME}-std-{token}",
    )  # fmt: skip


def _count_classes(labels: np.ndarray) -> np.ndarray:
    u = np.unique(np.asarray(labels))
    return np.array([int(np.count_nonzero(u > 0))], np.int64)


def _n_classes(labels: Any, token: str) -> Any:
    """Number of distinct labels > 0 (labels are 0 where the fine image is background)."""
    if not _is_dask(labels):
        return _count_classes(labels)
    import dask.array as da

    uniq = da.unique(labels)  # one chunk
    return uniq.map_blocks(_count_classes, chunks=((1,),), dtype=np.int64,
                           meta=np.empty((0,), np.int64), name=f"xfusion.{NAME}-K-{token}")


def _masked_fine(f1: Any) -> Any:
    """The fine image with every band NaN where any band is (background)."""
    if _is_dask(f1):
        import dask.array as da

        return da.map_blocks(_mask_block, f1, dtype=f1.dtype)
    return _mask_block(f1)


def _mask_block(f1: np.ndarray) -> np.ndarray:
    ok = np.all(np.isfinite(f1), axis=0)
    return np.where(ok[None], f1, np.nan).astype(f1.dtype, copy=False)


def _isodata_sample(f1: Any, limit: int) -> tuple[Any, int]:
    """A regular grid sample of at most ``limit`` pixels (B, n): chunk-independent values."""
    ny, nx = f1.shape[1:]
    step = max(1, math.ceil(math.sqrt(ny * nx / limit)))
    sub = f1[:, ::step, ::step]
    return sub.reshape(f1.shape[0], -1), step


def _fit_centers(sample: np.ndarray, *, params: FsdafParams, n_total: int) -> np.ndarray:
    from xfusion.methods._fsdaf_kernel import isodata_fit

    x = np.asarray(sample, np.float64).T
    lo, hi = params.data_range
    frac = x.shape[0] / max(n_total, 1)
    return isodata_fit(
        x, min_classes=params.min_classes, max_classes=params.max_classes, iterations=20,
        change_threshold=0.05, merge_distance=0.05 * (hi - lo), merge_pairs=2,
        min_pixels=max(1, math.ceil(200 * frac)), split_std=0.05 * (hi - lo), split_mult=1.0,
        seed=0,
    )  # fmt: skip


def _classify_block(f1: np.ndarray, centers: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    from xfusion.methods._fsdaf_kernel import classify

    return classify(f1, centers)[None].astype(dtype)


def _mask_labels(lab: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """Supplied labels (1, y, x) → int32 (1, y, x), 0 where the fine image (B, y, x) is
    background; checks the values."""
    a = np.asarray(lab)
    if a.size and (np.issubdtype(a.dtype, np.floating) and not np.all(
            np.isnan(a) | (a == np.round(a)))):  # fmt: skip
        raise InvalidParameterError(
            "fsdaf() classes= must hold integer class labels (0 = background); found "
            "non-integer values. Round or relabel the class map."
        )
    with np.errstate(invalid="ignore"):
        out = np.where(np.isfinite(a), a, 0).astype(np.int64) if np.issubdtype(
            a.dtype, np.floating) else a.astype(np.int64)  # fmt: skip
    if out.size and out.min() < 0:
        raise InvalidParameterError(
            f"fsdaf() classes= must hold labels >= 0 (0 = background); found {int(out.min())}."
        )
    ok = np.all(np.isfinite(f1), axis=0)
    return np.where(ok, out, 0).astype(np.int32).reshape((1, *ok.shape))


def _block_bounds(n: int, bs: int, s: int) -> list[tuple[int, int, int, int]]:
    """(core start, core end, halo before, halo after) of the FSDAF blocks along one axis."""
    out = []
    for a in range(0, n, bs):
        b = min(n, a + bs)
        out.append((a, b, min(s, a), min(s, n - b)))
    return out


def _change_task(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, gate: Any,
                 class_change: Any = None, *, halos: tuple[tuple[int, int], ...] | None = None,
                 halos_x: tuple[tuple[int, int], ...] | None = None, halo: Any = None,
                 params: FsdafParams, s: int, with_hi: bool = True,
                 block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    """Steps 3-12 on one padded block → (B [+ 1], core): delta21 bands [and HI].

    ``gate`` is unused: on dask it is the row's gate (see :func:`_wave_dask`), a
    dependency that keeps the block from running too early.
    """
    from xfusion.methods._fsdaf_kernel import change_block

    if halo is None:
        if block_info is None or None not in block_info:  # meta probing
            return np.zeros((f1.shape[0] + with_hi, 0, 0))
        iy, ix = block_info[None]["chunk-location"][-2:]
        assert halos is not None and halos_x is not None
        halo = (*halos[iy], *halos_x[ix])
    res = change_block(
        f1, c1, c2, lab[0], s=s, halo=halo, half_window=params.half_window,
        n_pure=params.n_pure, data_range=params.data_range,
        change_quantiles=params.change_quantiles, outlier_quantiles=params.outlier_quantiles,
        max_weight=params.max_weight, interpolator=params.interpolator,
        class_change=class_change,
    )  # fmt: skip
    if not with_hi:
        return res.delta21
    return np.concatenate([res.delta21, res.hi[None]], axis=0)


def _delayed_chunks(arr: Any) -> list[Any]:
    """The chunks of a dask array as Delayed objects that keep the array's own keys.

    (``dask.delayed(f)(array)`` or ``to_delayed()`` would embed an optimised, re-keyed copy
    of the array's graph: every such use recomputes everything upstream.)
    """
    return list(arr.to_delayed(optimize_graph=False).ravel())


def _gate(*_: Any) -> None:
    """Dependency only (see :func:`_wave_dask`)."""


def _pass_gate(block: np.ndarray, _: Any) -> np.ndarray:
    return block


def _gated(arr: Any, gate: Any) -> Any:
    import dask.array as da

    return da.map_blocks(_pass_gate, arr, gate, dtype=arr.dtype, meta=arr._meta)


def _tiny(block: np.ndarray) -> np.ndarray:
    return np.zeros((1, 1, 1), np.int8)


def _stats(std: np.ndarray, kcls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(std), np.asarray(kcls)


def _predict_strip(f1: np.ndarray, d21: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                   lab: np.ndarray, stats: tuple[np.ndarray, np.ndarray], *, top: int,
                   bottom: int, w: int, nxb: int, params: FsdafParams, threads: int | None,
                   block_info: dict[Any, Any] | None = None) -> np.ndarray:  # fmt: skip
    """Step 13 on one chunk of a block row: rows ``top:-bottom`` of the strip are the core,
    columns carry an x-halo of ``w`` on their inner sides."""
    if block_info is None or None not in block_info:  # meta probing
        return np.zeros((f1.shape[0], 0, 0))
    j = block_info[None]["chunk-location"][-1]
    halo = (top, bottom, w if j > 0 else 0, w if j < nxb - 1 else 0)
    return _predict_task(f1, d21, c1, c2, lab, stats[0], stats[1], halo_sides=halo,
                         params=params, threads=threads)  # fmt: skip


def _wave_dask(f1: Any, c1: Any, c2: Any, lab: Any, std: Any, kcls: Any, *,
               params: FsdafParams, s: int, class_change: Any, token: str, diagnostics: bool,
               threads: int | None) -> tuple[Any, Any]:  # fmt: skip
    """Steps 3-13 on dask arrays, one FSDAF block row after the other.

    Every block and pixel task waits for the global statistics; the blocks of row ``j``
    also wait for the predictions of the last row that does not need them. Without these
    edges dask's ordering computes every block as soon as its inputs exist (their outputs,
    float64 changes of the whole image, then wait in memory for the last statistics) and
    a 10000^2 image needs several GB; with them a few block rows are alive at a time.
    """
    import dask
    import dask.array as da

    nb, ny, nx = f1.shape
    w = params.half_window
    bsz = params.block_cells * s
    ybs, xbs = _block_bounds(ny, bsz, s), _block_bounds(nx, bsz, s)
    gridx = tuple(b - a for a, b, _, _ in xbs)
    std_d = _delayed_chunks(std.rechunk(-1))[0]
    k_d = _delayed_chunks(kcls.rechunk(-1))[0]
    gate0 = dask.delayed(_gate, pure=True)(std_d, k_d, dask_key_name=f"xfusion.{NAME}-gate-{token}")
    stats = dask.delayed(_stats, pure=True)(std_d, k_d,
                                            dask_key_name=f"xfusion.{NAME}-stats-{token}")
    g = [da.map_blocks(_pass_gate, a, gate0, dtype=a.dtype,
                       name=f"xfusion.{NAME}-gated{k}-{token}")
         for k, a in enumerate((f1, c1, c2, lab))]  # fmt: skip
    xhalos = tuple((xl, xr) for _, _, xl, xr in xbs)
    changes: list[Any] = []
    preds: list[Any] = []
    gates: list[Any] = []
    out_ch = nb + diagnostics

    def change_row(j: int, gate: Any) -> Any:
        ya, yb, yt, ybt = ybs[j]
        # the block row with its halo rows (behind the row's gate: no copy of the inputs is
        # made before the row may start); _pad_blocks adds the column halos
        padded = [_pad_blocks(_gated(a[:, ya - yt : yb + ybt], gate),
                              [(yt, yt + yb - ya, yt, ybt)], xbs) for a in g]  # fmt: skip
        return da.map_blocks(
            _change_task, *padded, gate, class_change, halos=((yt, ybt),), halos_x=xhalos,
            params=params, s=s, with_hi=diagnostics,
            chunks=((out_ch,), (yb - ya,), gridx), dtype=np.float64,
            meta=np.empty((0, 0, 0), np.float64), name=f"xfusion.{NAME}-change{j}-{token}",
        )  # fmt: skip

    def need(i: int) -> int:
        """Last block row whose change the predictions of row i read."""
        yb = ybs[i][1]
        return max(k for k, (a, _, _, _) in enumerate(ybs) if a < min(ny, yb + w))

    # x chunks of the pixel step: the block grid, a last chunk narrower than w merged
    px = tuple(gridx) if sum(gridx) <= w or len(gridx) == 1 else tuple(
        da.overlap.ensure_minimum_chunksize(w, gridx))  # fmt: skip
    if sum(px) <= w:
        px = (nx,)

    def pred_row(i: int) -> Any:
        ya, yb, _, _ = ybs[i]
        r0, r1 = max(0, ya - w), min(ny, yb + w)
        d21 = da.concatenate([c[:nb] for c in changes], axis=1)
        gate = gates[need(i)]
        strips = [_gated(a[:, r0:r1], gate).rechunk((-1, -1, px))
                  for a in (g[0], d21, g[1], g[2], g[3])]  # fmt: skip
        if len(px) > 1:
            strips = [da.overlap.overlap(a, depth={0: 0, 1: 0, 2: w}, boundary="none")
                      for a in strips]  # fmt: skip
        return da.map_blocks(
            _predict_strip, *strips, stats, top=ya - r0, bottom=r1 - yb, w=w, nxb=len(px),
            params=params, threads=threads, chunks=((nb,), (yb - ya,), px),
            dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
            name=f"xfusion.{NAME}-predict{i}-{token}",
        )  # fmt: skip

    for j in range(len(ybs)):
        # the latest prediction row that does not read row j's change
        done = [i for i in range(len(preds)) if need(i) < j]
        if done:
            tiny = preds[done[-1]].map_blocks(_tiny, chunks=((1,), (1,), (1,) * len(px)),
                                              dtype=np.int8)  # fmt: skip
            gate = dask.delayed(_gate, pure=True)(gate0, *_delayed_chunks(tiny))
        else:
            gate = gate0
        gates.append(gate)
        changes.append(change_row(j, gate))
        while len(preds) < len(ybs) and need(len(preds)) <= j:
            preds.append(pred_row(len(preds)))
    pred = da.concatenate(preds, axis=1)
    hi = da.concatenate([c[nb] for c in changes], axis=0) if diagnostics else None
    return pred, hi


def _cell_stats(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, s: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per-cell statistics of one block core for the global unmixing (blocks=False).

    Returns (labels present, counts (L, ncells), coarse change (B, ncells), valid (ncells)).
    """
    from xfusion.methods._fsdaf_kernel import _cells

    okf = np.all(np.isfinite(f1), axis=0)
    glob = np.where(okf, lab[0], 0)
    nb, h, w = f1.shape
    ncy, ncx = -(-h // s), -(-w // s)
    exist = _cells(np.ones((1, h, w)), s, ncy, ncx, 0.0)[0]
    n_c = exist.sum(-1).ravel()
    cl = _cells(glob[None].astype(np.float64), s, ncy, ncx, 0.0)[0].reshape(ncy * ncx, -1)
    present = np.unique(glob[glob > 0])
    counts = np.stack([(cl == k).sum(-1) for k in present]) if present.size else np.zeros(
        (0, ncy * ncx))  # fmt: skip
    c1c = _cells(np.asarray(c1, np.float64), s, ncy, ncx, 0.0)
    c2c = _cells(np.asarray(c2, np.float64), s, ncy, ncx, 0.0)
    valid = np.all(np.isfinite(c1c) & np.isfinite(c2c), axis=(0, 3)).ravel()
    cnt = exist.sum(-1)
    with np.errstate(invalid="ignore"):
        dc = (c2c.sum(-1) / cnt - c1c.sum(-1) / cnt).reshape(nb, -1)
    return present, counts / n_c, dc, valid


def _global_unmix(stats: list[Any], params: FsdafParams) -> np.ndarray:
    """One unmixing over every cell of the image (blocks=False): change per global label."""
    from xfusion.methods._fsdaf_kernel import FULL_FRACTION, unmix_changes

    labels = np.unique(np.concatenate([st[0] for st in stats] + [np.zeros(0, np.int64)]))
    nb = stats[0][2].shape[0]
    fr, dcs, vs = [], [], []
    for present, frac, dc, valid in stats:
        full = np.zeros((labels.size, valid.size))
        full[np.searchsorted(labels, present)] = frac
        full[:, full.sum(0) <= FULL_FRACTION] = 0.0
        fr.append(full)
        dcs.append(dc)
        vs.append(valid)
    out = np.zeros((nb, int(labels.max()) + 1 if labels.size else 1))
    if labels.size == 0:
        return out
    frac = np.concatenate(fr, axis=1)
    un = unmix_changes(frac, np.concatenate(dcs, axis=1), np.concatenate(vs),
                       n_pure=params.n_pure, change_quantiles=params.change_quantiles)  # fmt: skip
    missing = np.flatnonzero(~un.identified.any(0))
    if missing.size:
        k = labels[missing[0]]
        npx = frac.shape[1]
        raise NotEnoughDataError(
            f"fsdaf(blocks=False) cannot estimate the change of class {int(k)}: it has no "
            f"coarse cell (of {npx}) free of background with valid coarse data at both dates. "
            "Give it more pixels or merge it into another class (classes=...), use fewer "
            "classes (max_classes=...), or use blocks=True (its change then falls back to the "
            "block's mean coarse change)."
        )
    out[:, labels] = un.delta
    return out


def _change_numpy(f1: np.ndarray, c1: np.ndarray, c2: np.ndarray, lab: np.ndarray, *,
                  params: FsdafParams, s: int, class_change: np.ndarray | None,
                  with_hi: bool = True, threads: int | None = None) -> np.ndarray:  # fmt: skip
    """Steps 3-12 over every FSDAF block of in-memory arrays (blocks run on threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from xfusion.methods._fsdaf_kernel import _resolve_threads

    nb, ny, nx = f1.shape
    bs = params.block_cells * s
    out = np.empty((nb + with_hi, ny, nx))
    def one(yb_: tuple[int, int, int, int], xb_: tuple[int, int, int, int]) -> None:
        ya, yb, yt, ybt = yb_
        xa, xb, xl, xrt = xb_
        sl = (slice(None), slice(ya - yt, yb + ybt), slice(xa - xl, xb + xrt))
        out[:, ya:yb, xa:xb] = _change_task(
            f1[sl], c1[sl], c2[sl], lab[sl], None, class_change, halo=(yt, ybt, xl, xrt), params=params,
            s=s, with_hi=with_hi,
        )  # fmt: skip

    jobs = [(a, b) for a in _block_bounds(ny, bs, s) for b in _block_bounds(nx, bs, s)]
    nthreads = min(_resolve_threads(threads), len(jobs))
    if nthreads <= 1:
        for a, b in jobs:
            one(a, b)
    else:
        with ThreadPoolExecutor(nthreads) as pool:
            for fut in [pool.submit(one, a, b) for a, b in jobs]:
                fut.result()
    return out


def _pad_blocks(a: Any, ybs: list[Any], xbs: list[Any]) -> Any:
    import dask.array as da

    a = da.concatenate([a[:, ya - yt : yb + ybt, :] for ya, yb, yt, ybt in ybs], axis=1)
    a = da.concatenate([a[:, :, xa - xl : xb + xr] for xa, xb, xl, xr in xbs], axis=2)
    return a.rechunk((-1, tuple(yb - ya + yt + ybt for ya, yb, yt, ybt in ybs),
                      tuple(xb - xa + xl + xr for xa, xb, xl, xr in xbs)))  # fmt: skip


def _class_change_dask(f1: Any, c1: Any, c2: Any, lab: Any, *, params: FsdafParams, s: int,
                       token: str) -> Any:  # fmt: skip
    import dask

    bs = params.block_cells * s
    arrs = [a.rechunk((-1, bs, bs)).to_delayed(optimize_graph=False) for a in (f1, c1, c2, lab)]
    stats = [
        dask.delayed(_cell_stats, pure=True)(arrs[0][0, i, j], arrs[1][0, i, j],
                                             arrs[2][0, i, j], arrs[3][0, i, j], s)
        for i in range(arrs[0].shape[1]) for j in range(arrs[0].shape[2])
    ]  # fmt: skip
    return dask.delayed(_global_unmix, pure=True)(stats, params,
                                                  dask_key_name=f"xfusion.{NAME}-unmix-{token}")


def _predict_task(f1: np.ndarray, d21: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                  lab: np.ndarray, std: np.ndarray, kcls: np.ndarray, *,
                  halo_sides: tuple[int, int, int, int], params: FsdafParams,
                  threads: int | None) -> np.ndarray:  # fmt: skip
    from xfusion.methods._fsdaf_similar import predict_block

    k = int(np.asarray(kcls).ravel()[0])
    th = 2.0 * np.asarray(std, np.float64) / k if k > 0 else np.zeros(f1.shape[0])
    res = predict_block(
        f1, d21, c1, c2, lab[0] > 0, thresholds=th, half_window=params.half_window,
        n_similar=params.n_similar, data_range=params.data_range, halo=halo_sides,
        threads=threads,
    )  # fmt: skip
    return res.prediction


def _to_output(block: np.ndarray, *, dtype: str, fill: float | None) -> np.ndarray:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.floating):
        return block.astype(dt)
    assert fill is not None
    return to_integer(block, dt, fill, rounding="trunc")  # IDL FIX


