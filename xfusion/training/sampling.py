"""Patch samplers over (Dask-backed) cubes: random and gridded, seeded, with a validity rule.

A :class:`PatchSource` views one or more georeferenced stacks as ``(sample, channel, y, x)``
arrays (numpy or dask): the *sample* axis is usually ``time`` (or, for a method that stacks
several dates into channels, one entry per training case), the channels are the variables
or bands a model sees. A sampler yields :class:`Patch` records (source, sample, window); the
source reads them, chunk by chunk, through a small LRU cache of chunk blocks, so a patch
costs the chunks it overlaps and nothing else, and the whole cube is never loaded.

* :class:`RandomPatchSampler`: seeded random patches. With ``chunk_aligned=True`` (default)
  a chunk is drawn first (weighted by its area inside the region) and the patch placed inside
  it, so each patch reads ONE spatial chunk whenever the chunks are at least the patch size
  (otherwise the patch covers the chunk and the fewest neighbours it can).
* :class:`GridPatchSampler`: a regular grid over the region with ``ceil`` coverage: the last
  patch of each row/column is shifted back inside the region, so no border is dropped and
  every patch has the exact size.

Both restrict sampling to chosen ``times`` and an optional ``region`` and apply the validity
rule ``min_valid``: a patch is kept only when every channel listed in ``inputs`` has at least
that fraction of observed (finite) pixels. Checking the rule reads the patch (through the
cache); with ``min_valid=0`` nothing is read while sampling.

:func:`spatial_split` cuts a region into a training part and a validation strip, so that
validation measures generalisation to unseen places rather than to unseen pixels next to
training ones.
"""

from __future__ import annotations

import abc
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import InvalidParameterError, NotEnoughDataError

__all__ = [
    "GridPatchSampler",
    "Patch",
    "PatchSource",
    "RandomPatchSampler",
    "Window",
    "spatial_split",
]

Window = tuple[slice, slice]
"""A pixel window ``(rows, cols)`` with integer, step-free, half-open slices."""


def _is_dask(a: Any) -> bool:
    import dask

    return bool(dask.is_dask_collection(a))


@dataclass(frozen=True, order=True)
class Patch:
    """One patch: which source, which sample along its sample axis, and where."""

    source: int
    """Index of the source array (region/cube) in the :class:`PatchSource`."""
    index: int
    """Position along the sample axis (e.g. the time step) of that source."""
    row: int
    """Top row (pixels)."""
    col: int
    """Left column (pixels)."""
    height: int
    """Rows."""
    width: int
    """Columns."""

    @property
    def rows(self) -> slice:
        """Row slice."""
        return slice(self.row, self.row + self.height)

    @property
    def cols(self) -> slice:
        """Column slice."""
        return slice(self.col, self.col + self.width)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"Patch size must be an int or (height, width), found {size!r}."
            ) from None
    if h < 1 or w < 1:
        raise InvalidParameterError(f"Patch size must be positive, found {size!r}.")
    return h, w


# --------------------------------------------------------------------------------------------
# the source


def _bounds(chunks: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


class PatchSource:
    """One or more ``(sample, channel, y, x)`` stacks to cut patches from.

    Parameters
    ----------
    data : xarray.Dataset, xarray.DataArray, array, or a sequence of them
        Each item is one source (e.g. one region or one cube). A Dataset contributes its
        ``variables`` as channels (variables without the sample dim are broadcast along it);
        a DataArray has dims ``(sample_dim, channel_dim, <y>, <x>)`` in any order, either of
        the first two optional; a bare numpy/dask array must be ``(sample, channel, y, x)``.
    sample_dim : hashable
        The dim along which samples are drawn (``"time"``).
    channel_dim : hashable, optional
        The channel dim of DataArrays (``None``: one channel).
    variables : sequence of str, optional
        Variables of Datasets, in channel order (default: all data variables).
    times : date-like, int, or a sequence of them, optional
        Keep only these entries of the sample axis: integers are positions, other values are
        labels (dates) matched on a datetime coordinate. Applies to every source.
    cache_chunks : int
        How many chunk blocks (all channels of one sample and one spatial chunk) to keep.
    scheduler : str
        Dask scheduler for the reads (``"sync"``: in the calling thread or loader worker).

    Attributes
    ----------
    arrays : list
        The ``(S, C, H, W)`` numpy or dask arrays.
    reads : int
        Chunk blocks computed so far (cache misses), for diagnostics and tests.
    """

    def __init__(
        self,
        data: Any,
        *,
        sample_dim: Hashable = "time",
        channel_dim: Hashable | None = None,
        variables: Sequence[str] | None = None,
        times: Any = None,
        cache_chunks: int = 16,
        scheduler: str = "sync",
    ) -> None:
        items = list(data) if isinstance(data, (list, tuple)) else [data]
        if not items:
            raise InvalidParameterError("PatchSource needs at least one array or cube.")
        self.arrays: list[Any] = []
        self.geoboxes: list[Any] = []
        self.sample_labels: list[np.ndarray] = []
        self.channel_names: list[str] | None = None
        for item in items:
            arr, gbox, labels, names = _as_stack(item, sample_dim, channel_dim, variables, times)
            if self.channel_names is None:
                self.channel_names = names
            elif arr.shape[1] != len(self.channel_names):
                raise InvalidParameterError(
                    f"All sources need the same channels; found {arr.shape[1]} and "
                    f"{len(self.channel_names)}."
                )
            self.arrays.append(arr)
            self.geoboxes.append(gbox)
            self.sample_labels.append(labels)
        self.cache_chunks = int(cache_chunks)
        self.scheduler = scheduler
        self.reads = 0
        self._cache: OrderedDict[tuple[int, int, int, int], np.ndarray] = OrderedDict()
        self._bounds = [
            (_bounds(a.chunks[2]), _bounds(a.chunks[3])) if _is_dask(a)
            else (np.array([0, a.shape[2]]), np.array([0, a.shape[3]]))
            for a in self.arrays
        ]  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:  # loader workers start with an empty cache
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    @property
    def nchannels(self) -> int:
        """Channels per sample."""
        return int(self.arrays[0].shape[1])

    def shape(self, source: int) -> tuple[int, int, int, int]:
        """``(S, C, H, W)`` of one source."""
        return tuple(int(v) for v in self.arrays[source].shape)  # type: ignore[return-value]

    def chunk_bounds(self, source: int) -> tuple[np.ndarray, np.ndarray]:
        """Row and column chunk boundaries of a source (one chunk for numpy sources)."""
        return self._bounds[source]

    def chunks_touched(self, patch: Patch) -> int:
        """Number of spatial chunks a patch overlaps."""
        rb, cb = self._bounds[patch.source]
        return len(_span(rb, patch.row, patch.row + patch.height)) * len(
            _span(cb, patch.col, patch.col + patch.width)
        )

    def _block(self, source: int, index: int, cy: int, cx: int) -> np.ndarray:
        key = (source, index, cy, cx)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        rb, cb = self._bounds[source]
        arr = self.arrays[source][index, :, rb[cy]:rb[cy + 1], cb[cx]:cb[cx + 1]]
        block = np.asarray(arr.compute(scheduler=self.scheduler), dtype=np.float32)
        self.reads += 1
        self._cache[key] = block
        while len(self._cache) > max(self.cache_chunks, 1):
            self._cache.popitem(last=False)
        return block

    def read(self, patch: Patch) -> np.ndarray:
        """Read a patch as float32 ``(C, height, width)`` (NaN where unobserved)."""
        arr = self.arrays[patch.source]
        r0, r1 = patch.row, patch.row + patch.height
        c0, c1 = patch.col, patch.col + patch.width
        if not _is_dask(arr):
            return np.array(arr[patch.index, :, r0:r1, c0:c1], dtype=np.float32)
        rb, cb = self._bounds[patch.source]
        out = np.empty((arr.shape[1], r1 - r0, c1 - c0), dtype=np.float32)
        for cy in _span(rb, r0, r1):
            for cx in _span(cb, c0, c1):
                block = self._block(patch.source, patch.index, cy, cx)
                ys, ye = max(r0, rb[cy]), min(r1, rb[cy + 1])
                xs, xe = max(c0, cb[cx]), min(c1, cb[cx + 1])
                out[:, ys - r0:ye - r0, xs - c0:xe - c0] = block[
                    :, ys - rb[cy]:ye - rb[cy], xs - cb[cx]:xe - cb[cx]
                ]
        return out

    def clear_cache(self) -> None:
        """Drop the cached chunk blocks."""
        self._cache.clear()

    def region_windows(self, region: Any) -> list[list[Window]]:
        """Resolve ``region`` into pixel windows, per source (see the samplers' ``region``).

        A mapping ``{source_index: region}`` gives each source its own region (sources not
        in it get none, so they are not sampled).
        """
        out = []
        for s, arr in enumerate(self.arrays):
            h, w = int(arr.shape[2]), int(arr.shape[3])
            if isinstance(region, dict):
                out.append(_windows(region[s], (h, w), self.geoboxes[s]) if s in region else [])
            else:
                out.append(_windows(region, (h, w), self.geoboxes[s]))
        return out


def _span(bounds: np.ndarray, start: int, stop: int) -> range:
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    last = int(np.searchsorted(bounds, stop, side="left")) - 1
    return range(first, last + 1)


def _time_positions(obj: Any, dim: Hashable, times: Any) -> np.ndarray:
    if times is None:
        return np.arange(obj.sizes[dim])
    vals = [times] if isinstance(times, (str, int, np.integer, np.datetime64)) else list(times)
    index = obj.indexes.get(dim) if dim in obj.indexes else None
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals)
    if not ints and index is not None and np.issubdtype(np.asarray(index).dtype, np.datetime64):
        from xfusion.cube.build import to_datetime64

        tv = np.asarray(index.values, dtype="datetime64[ns]")
        days = tv.astype("datetime64[D]")
        out = []
        for v in vals:
            t = to_datetime64(v, what="time")
            hit = np.flatnonzero(tv == t)
            if hit.size == 0:
                hit = np.flatnonzero(days == t.astype("datetime64[D]"))
            if hit.size != 1:
                raise InvalidParameterError(
                    f"times= value {v!r} is not on the {dim!r} axis of the source. Available: "
                    f"{[str(x)[:10] for x in days[:12]]!r}."
                )
            out.append(int(hit[0]))
        return np.asarray(out, dtype=np.intp)
    pos = np.asarray(vals, dtype=np.intp)
    n = obj.sizes[dim]
    if pos.size and (pos.min() < -n or pos.max() >= n):
        raise InvalidParameterError(
            f"times= positions {pos.tolist()!r} are outside the {dim!r} axis of length {n}."
        )
    return pos % n if n else pos


def _spatial(obj: Any, exclude: Sequence[Hashable]) -> tuple[tuple[str, str], Any]:
    from xfusion.cube.validate import get_geobox, spatial_dims

    try:
        dims = spatial_dims(obj)
        gbox = get_geobox(obj)
        return dims, gbox
    except Exception:  # no CRS: fall back to the last two remaining dims
        rest = [d for d in obj.dims if d not in exclude]
        if len(rest) < 2:
            raise InvalidParameterError(
                f"Cannot find two spatial dims on the input (dims {tuple(obj.dims)!r})."
            ) from None
        return (str(rest[-2]), str(rest[-1])), None


def _as_stack(
    item: Any, sample_dim: Hashable, channel_dim: Hashable | None,
    variables: Sequence[str] | None, times: Any,
) -> tuple[Any, Any, np.ndarray, list[str]]:  # fmt: skip
    """Return ``(array (S, C, H, W), geobox or None, sample labels, channel names)``."""
    if isinstance(item, xr.Dataset):
        names = list(variables) if variables is not None else [str(v) for v in item.data_vars]
        missing = [n for n in names if n not in item.data_vars]
        if missing:
            raise InvalidParameterError(
                f"Variable {missing[0]!r} is not on the dataset; variables: "
                f"{sorted(map(str, item.data_vars))!r}."
            )
        (ydim, xdim), gbox = _spatial(item, (sample_dim,))
        has_s = sample_dim in item.dims
        pos = _time_positions(item, sample_dim, times) if has_s else np.arange(1)
        sub = item.isel({sample_dim: pos}) if has_s else item
        ns = sub.sizes[sample_dim] if has_s else 1
        layers = []
        for n in names:
            v = sub[n]
            extra = [d for d in v.dims if d not in (sample_dim, ydim, xdim)]
            if extra:
                raise InvalidParameterError(
                    f"Variable {n!r} has extra dims {extra!r}; give DataArrays with a "
                    "channel_dim instead, or select one entry of those dims."
                )
            if sample_dim in v.dims:
                a = v.transpose(sample_dim, ydim, xdim).data
            else:
                a = v.transpose(ydim, xdim).data[None]
                if ns > 1:
                    a = _broadcast(a, (ns, *a.shape[1:]))
            layers.append(a)
        arr = _stack(layers, axis=1)
        labels = sub[sample_dim].values if has_s and sample_dim in sub.coords else np.arange(ns)
        return arr, gbox, np.asarray(labels), names
    if isinstance(item, xr.DataArray):
        (ydim, xdim), gbox = _spatial(item, tuple(d for d in (sample_dim, channel_dim) if d))
        has_s = sample_dim in item.dims
        pos = _time_positions(item, sample_dim, times) if has_s else np.arange(1)
        sub = item.isel({sample_dim: pos}) if has_s else item
        if channel_dim is not None and channel_dim not in sub.dims:
            raise InvalidParameterError(
                f"channel_dim={channel_dim!r} is not a dim of the DataArray (dims "
                f"{tuple(sub.dims)!r})."
            )
        extra = [d for d in sub.dims if d not in (sample_dim, channel_dim, ydim, xdim)]
        if extra:
            raise InvalidParameterError(
                f"The DataArray has dims {extra!r} besides the sample, channel and spatial "
                f"dims; select or stack them first (dims {tuple(sub.dims)!r})."
            )
        order = [d for d in (sample_dim, channel_dim) if d is not None and d in sub.dims]
        a = sub.transpose(*order, ydim, xdim).data
        if not has_s:
            a = a[None]
        if channel_dim is None:
            a = a[:, None]
        if channel_dim is not None and channel_dim in sub.coords:
            names = [str(v) for v in sub[channel_dim].values]
        else:
            names = [str(sub.name)] if channel_dim is None else [str(i) for i in range(a.shape[1])]
        labels = sub[sample_dim].values if has_s and sample_dim in sub.coords else np.arange(
            a.shape[0])
        return a, gbox, np.asarray(labels), names
    ndim = getattr(item, "ndim", None)
    if ndim != 4:
        raise InvalidParameterError(
            f"A patch source must be an xarray Dataset/DataArray or a (sample, channel, y, x) "
            f"array; found {type(item).__name__} with ndim={ndim!r}."
        )
    arr = item
    if times is not None:
        arr = arr[np.asarray([times] if np.ndim(times) == 0 else times, dtype=np.intp)]
    return arr, None, np.arange(arr.shape[0]), [str(i) for i in range(arr.shape[1])]


def _broadcast(a: Any, shape: tuple[int, ...]) -> Any:
    if _is_dask(a):
        import dask.array as da

        return da.broadcast_to(a, shape)
    return np.broadcast_to(a, shape)


def _stack(layers: list[Any], axis: int) -> Any:
    if any(_is_dask(a) for a in layers):
        import dask.array as da

        return da.stack([a if _is_dask(a) else da.asarray(a) for a in layers], axis=axis)
    return np.stack(layers, axis=axis)


# --------------------------------------------------------------------------------------------
# regions


def _check_window(win: Any, shape: tuple[int, int]) -> Window:
    try:
        rows, cols = win
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"A pixel window must be (rows, cols) slices, found {win!r}."
        ) from None
    out = []
    for sl, n in ((rows, shape[0]), (cols, shape[1])):
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise InvalidParameterError(f"A pixel window must hold step-free slices, found {win!r}.")
        start, stop, _ = sl.indices(n)
        out.append(slice(start, max(start, stop)))
    return out[0], out[1]


def _windows(region: Any, shape: tuple[int, int], gbox: Any) -> list[Window]:
    """``region`` → pixel windows: None, a bbox (4 numbers, CRS units), a window, or a list."""
    if region is None:
        return [(slice(0, shape[0]), slice(0, shape[1]))]
    if isinstance(region, list) and region and not isinstance(region[0], (int, float)):
        return [w for r in region for w in _windows(r, shape, gbox)]
    if isinstance(region, tuple) and len(region) == 2 and all(isinstance(v, slice) for v in region):
        return [_check_window(region, shape)]
    try:
        left, bottom, right, top = (float(v) for v in region)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"region= must be a bounding box (left, bottom, right, top) in the CRS units, a "
            f"pixel window (rows_slice, cols_slice) or a list of them; found {region!r}."
        ) from None
    if gbox is None:
        raise InvalidParameterError(
            "region= given as a bounding box needs georeferenced inputs (a CRS and spatial "
            "coordinates); pass a pixel window (rows_slice, cols_slice) instead."
        )
    inv = ~gbox.affine
    corners = [(x, y) for x in (left, right) for y in (bottom, top)]
    cols_ = [inv.a * x + inv.b * y + inv.c for x, y in corners]
    rows_ = [inv.d * x + inv.e * y + inv.f for x, y in corners]
    r0 = max(0, math.floor(min(rows_) + 1e-9))
    r1 = min(shape[0], math.ceil(max(rows_) - 1e-9))
    c0 = max(0, math.floor(min(cols_) + 1e-9))
    c1 = min(shape[1], math.ceil(max(cols_) - 1e-9))
    if r1 <= r0 or c1 <= c0:
        raise InvalidParameterError(
            f"region={region!r} does not overlap the grid (bounds {tuple(gbox.extent.boundingbox)!r})."
        )
    return [(slice(r0, r1), slice(c0, c1))]


def spatial_split(
    window: Window | tuple[int, int],
    *,
    fraction: float,
    size: int | tuple[int, int],
    axis: int | None = None,
) -> tuple[list[Window], list[Window]] | None:
    """Split a window into a training window and a validation strip at its end.

    The strip runs across the longer axis (``axis`` overrides: 0 = rows, 1 = columns) and is
    ``max(ceil(fraction * n), patch size)`` pixels thick, so it holds at least one patch.

    Parameters
    ----------
    window : (slice, slice) or (int, int)
        The region, or a shape (the whole grid).
    fraction : float
        Share of the region for validation (0 < fraction < 1).
    size : int or (int, int)
        Patch size: both parts must hold at least one patch.

    Returns
    -------
    (train_windows, val_windows) or None
        ``None`` when the region is too small for a patch in both parts (or the strip would
        take more than half the region).
    """
    if not 0 < fraction < 1:
        raise InvalidParameterError(f"The validation fraction must be in (0, 1), found {fraction!r}.")
    if isinstance(window[0], (int, np.integer)):
        window = (slice(0, int(window[0])), slice(0, int(window[1])))
    rows, cols = window  # type: ignore[misc]
    h, w = rows.stop - rows.start, cols.stop - cols.start
    ph, pw = _size2(size)
    if axis is None:
        axis = 0 if h >= w else 1
    n, p, other, po = (h, ph, w, pw) if axis == 0 else (w, pw, h, ph)
    strip = max(math.ceil(fraction * n), p)
    if other < po or n - strip < p or strip > n // 2:
        return None
    if axis == 0:
        cut = rows.stop - strip
        return [(slice(rows.start, cut), cols)], [(slice(cut, rows.stop), cols)]
    cut = cols.stop - strip
    return [(rows, slice(cols.start, cut))], [(rows, slice(cut, cols.stop))]


# --------------------------------------------------------------------------------------------
# samplers


class _Sampler(abc.ABC):
    def __init__(
        self,
        source: PatchSource | Any,
        *,
        size: int | tuple[int, int],
        region: Any = None,
        times: Any = None,
        inputs: Sequence[int] | None = None,
        min_valid: float = 0.0,
    ) -> None:
        if not isinstance(source, PatchSource):
            source = PatchSource(source, times=times)
        elif times is not None:
            raise InvalidParameterError(
                "Give times= to the PatchSource when passing a PatchSource to a sampler."
            )
        self.source = source
        self.size = _size2(size)
        if not 0.0 <= float(min_valid) <= 1.0:
            raise InvalidParameterError(
                f"min_valid is a fraction of observed pixels in [0, 1], found {min_valid!r}."
            )
        self.min_valid = float(min_valid)
        c = source.nchannels
        self.inputs = list(range(c)) if inputs is None else [int(i) for i in inputs]
        if any(not 0 <= i < c for i in self.inputs):
            raise InvalidParameterError(
                f"inputs= {list(inputs or [])!r} must be channel positions in [0, {c})."
            )
        self.windows = source.region_windows(region)
        ph, pw = self.size
        self._fits = [
            [w for w in wins if w[0].stop - w[0].start >= ph and w[1].stop - w[1].start >= pw]
            for wins in self.windows
        ]
        if not any(self._fits):
            sizes = sorted({(w[0].stop - w[0].start, w[1].stop - w[1].start)
                            for wins in self.windows for w in wins})  # fmt: skip
            raise InvalidParameterError(
                f"No region is large enough for a {ph}x{pw} px patch (region sizes {sizes!r} "
                "px). Use a smaller patch size or a larger region."
            )
        self._patches: list[Patch] | None = None
        self.tried = 0

    def fractions(self, patch: Patch) -> np.ndarray:
        """Observed fraction of each ``inputs`` channel in a patch (reads it)."""
        block = self.source.read(patch)[self.inputs]
        return np.isfinite(block).mean(axis=(1, 2))

    def _valid(self, patch: Patch) -> tuple[bool, np.ndarray | None]:
        if self.min_valid <= 0.0:
            return True, None
        f = self.fractions(patch)
        return bool(np.all(f >= self.min_valid)), f

    @property
    def patches(self) -> list[Patch]:
        """The sampled patches (drawn and validated on first access, then fixed)."""
        if self._patches is None:
            self._patches = self._draw()
        return self._patches

    @abc.abstractmethod
    def _draw(self) -> list[Patch]:
        """Draw the patches (each sampler's own rule)."""

    def __len__(self) -> int:
        return len(self.patches)

    def __iter__(self) -> Iterator[Patch]:
        return iter(self.patches)

    def __getitem__(self, i: int) -> Patch:
        return self.patches[i]


def _axis_range(c0: int, c1: int, w0: int, w1: int, p: int, aligned: bool) -> tuple[int, int]:
    """Inclusive range of patch starts along one axis (window [w0, w1), chunk [c0, c1))."""
    if not aligned:
        return w0, w1 - p
    a, b = max(c0, w0), min(c1, w1)
    if b - a >= p:
        return a, b - p
    return max(w0, b - p), min(a, w1 - p)


class RandomPatchSampler(_Sampler):
    """Seeded random patches over a :class:`PatchSource` (or anything it accepts).

    Parameters
    ----------
    source : PatchSource or data
        Where to sample; data is wrapped as ``PatchSource(data, times=times)``.
    size : int or (int, int)
        Patch size in pixels.
    length : int
        Number of patches.
    region : bbox, window, list of windows or mapping, optional
        Bounding box ``(left, bottom, right, top)`` in CRS units, a pixel window
        ``(rows_slice, cols_slice)``, a list of windows, or ``{source_index: region}`` for
        one region per source; patches lie entirely inside one window. Default: the whole
        grid of every source.
    times : optional
        Sample-axis entries to use (see :class:`PatchSource`).
    inputs : sequence of int, optional
        Channels the validity rule applies to (default: all).
    min_valid : float
        Minimum fraction of observed pixels in EVERY ``inputs`` channel of a patch.
    seed : int
        Seed: the same seed, source and arguments give the same patches.
    chunk_aligned : bool
        Draw a chunk first and place the patch inside it (one chunk read per patch when chunks
        are at least the patch size). ``False``: uniform positions over the region.
    max_tries : int, optional
        Candidates to examine before giving up (default ``50 * length + 100``).

    Raises
    ------
    NotEnoughDataError
        Fewer than ``length`` valid patches found within ``max_tries`` candidates (on first
        access to :attr:`patches`); the message gives the observed fractions found.
    """

    def __init__(
        self,
        source: PatchSource | Any,
        *,
        size: int | tuple[int, int],
        length: int,
        region: Any = None,
        times: Any = None,
        inputs: Sequence[int] | None = None,
        min_valid: float = 0.0,
        seed: int = 0,
        chunk_aligned: bool = True,
        max_tries: int | None = None,
    ) -> None:
        super().__init__(source, size=size, region=region, times=times, inputs=inputs,
                         min_valid=min_valid)
        if int(length) < 1:
            raise InvalidParameterError(f"length must be a positive integer, found {length!r}.")
        self.length = int(length)
        self.seed = int(seed)
        self.chunk_aligned = bool(chunk_aligned)
        self.max_tries = int(max_tries) if max_tries is not None else 50 * self.length + 100
        self._cells = self._make_cells()

    def _make_cells(self) -> list[tuple[int, int, int, int, int, float]]:
        """Candidate cells ``(source, r_lo, r_hi, c_lo, c_hi, weight)``."""
        ph, pw = self.size
        cells = []
        for s, wins in enumerate(self._fits):
            nsamp = self.source.shape(s)[0]
            rb, cb = self.source.chunk_bounds(s)
            for rows, cols in wins:
                ry = _span(rb, rows.start, rows.stop) if self.chunk_aligned else range(1)
                cx_ = _span(cb, cols.start, cols.stop) if self.chunk_aligned else range(1)
                for cy in ry:
                    for cx in cx_:
                        y0, y1 = (rb[cy], rb[cy + 1]) if self.chunk_aligned else (0, 0)
                        x0, x1 = (cb[cx], cb[cx + 1]) if self.chunk_aligned else (0, 0)
                        r_lo, r_hi = _axis_range(int(y0), int(y1), rows.start, rows.stop, ph,
                                                 self.chunk_aligned)
                        c_lo, c_hi = _axis_range(int(x0), int(x1), cols.start, cols.stop, pw,
                                                 self.chunk_aligned)
                        if self.chunk_aligned:
                            area = (min(y1, rows.stop) - max(y0, rows.start)) * (
                                min(x1, cols.stop) - max(x0, cols.start))
                        else:
                            area = (rows.stop - rows.start) * (cols.stop - cols.start)
                        if r_hi >= r_lo and c_hi >= c_lo and area > 0:
                            cells.append((s, r_lo, r_hi, c_lo, c_hi, float(area * nsamp)))
        return cells

    def _draw(self) -> list[Patch]:
        rng = np.random.default_rng(self.seed)
        weights = np.array([c[5] for c in self._cells])
        weights /= weights.sum()
        ph, pw = self.size
        out: list[Patch] = []
        best: np.ndarray | None = None
        self.tried = 0
        while len(out) < self.length:
            if self.tried >= self.max_tries:
                self._fail(len(out), best)
            self.tried += 1
            s, r_lo, r_hi, c_lo, c_hi, _ = self._cells[int(rng.choice(len(self._cells), p=weights))]
            index = int(rng.integers(self.source.shape(s)[0]))
            row = int(rng.integers(r_lo, r_hi + 1))
            col = int(rng.integers(c_lo, c_hi + 1))
            patch = Patch(s, index, row, col, ph, pw)
            ok, frac = self._valid(patch)
            if frac is not None:
                best = frac if best is None else np.maximum(best, frac)
            if ok:
                out.append(patch)
        return out

    def _fail(self, found: int, best: np.ndarray | None) -> None:
        names = self.source.channel_names or []
        detail = ""
        if best is not None:
            parts = [f"{names[i] if i < len(names) else i}: {100 * f:.1f}%"
                     for i, f in zip(self.inputs, best, strict=True)]  # fmt: skip
            detail = f" The best observed fraction per input channel was {', '.join(parts)}."
        ph, pw = self.size
        raise NotEnoughDataError(
            f"Found only {found} of {self.length} patches of {ph}x{pw} px with at least "
            f"{100 * self.min_valid:.0f}% observed pixels in every input, after {self.tried} "
            f"random candidates.{detail} Lower min_valid, use smaller patches, or give more "
            "dates or a larger region."
        )


def _grid_starts(start: int, stop: int, p: int, stride: int) -> list[int]:
    last = stop - p
    if last < start:
        return []
    out = list(range(start, last + 1, stride))
    if out[-1] != last:
        out.append(last)
    return out


class GridPatchSampler(_Sampler):
    """Patches on a regular grid covering the region, edges included (``ceil`` count).

    Along each axis the patch starts are ``start, start + stride, ...`` plus a last one
    shifted back to end exactly at the region's edge, so every pixel of the region is
    covered (when ``stride <= size``) and every patch has the exact size.

    Parameters
    ----------
    source : PatchSource or data
        Where to sample.
    size : int or (int, int)
        Patch size in pixels.
    stride : int or (int, int), optional
        Step between patches (default: ``size``, no overlap); at most ``size``.
    region, times, inputs, min_valid
        As :class:`RandomPatchSampler`; invalid patches are dropped (``min_valid > 0``).
    """

    def __init__(
        self,
        source: PatchSource | Any,
        *,
        size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        region: Any = None,
        times: Any = None,
        inputs: Sequence[int] | None = None,
        min_valid: float = 0.0,
    ) -> None:
        super().__init__(source, size=size, region=region, times=times, inputs=inputs,
                         min_valid=min_valid)
        self.stride = self.size if stride is None else _size2(stride)
        if self.stride[0] > self.size[0] or self.stride[1] > self.size[1]:
            raise InvalidParameterError(
                f"stride {self.stride!r} larger than the patch size {self.size!r} would leave "
                "gaps; use stride <= size."
            )

    def _draw(self) -> list[Patch]:
        ph, pw = self.size
        out = []
        for s, wins in enumerate(self._fits):
            for index in range(self.source.shape(s)[0]):
                for rows, cols in wins:
                    for r in _grid_starts(rows.start, rows.stop, ph, self.stride[0]):
                        for c in _grid_starts(cols.start, cols.stop, pw, self.stride[1]):
                            self.tried += 1
                            patch = Patch(s, index, r, c, ph, pw)
                            if self._valid(patch)[0]:
                                out.append(patch)
        return out
