"""Tile and halo arithmetic, pure integer functions (no numpy data, no dask).

Coordinates are half-open ``[start, stop)`` intervals along one axis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["Tile", "block_halos", "split_axis", "tiles_2d"]


def split_axis(n: int, tile: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """Cover ``[0, n)`` with intervals of length ``tile`` advancing by ``tile - overlap``.

    Every index is covered; no interval extends past ``n`` (the last one is shifted back inside,
    so all intervals have length ``min(tile, n)``). With ``overlap=0`` the intervals are disjoint
    except that the last one may overlap its neighbour when ``n`` is not a multiple of ``tile``;
    use :func:`tiles_2d`'s ``owned`` ranges to crop each pixel exactly once.
    """
    if n <= 0:
        return []
    if tile is None or tile >= n:
        return [(0, n)]
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    step = tile - overlap
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return [(s, s + tile) for s in starts]


@dataclass(frozen=True)
class Tile:
    """One tile of a block: where it reads, and which output pixels it owns."""

    read: tuple[slice, slice]
    """Input window (tile + halo, clipped to the block), in block input pixels."""
    core: tuple[slice, slice]
    """The tile proper (no halo) in block *interior* pixels (input resolution)."""
    offset: tuple[int, int]
    """Position of ``core`` relative to ``read`` (input pixels)."""
    owned: tuple[slice, slice]
    """Sub-range of ``core`` this tile writes when tiles are not blended (disjoint cover)."""


def _owned(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Disjoint cover from possibly overlapping spans: each span owns from its start (or the
    midpoint of the overlap with the previous span) to the next span's cut."""
    cuts = [spans[0][0]]
    for (_, prev_stop), (start, _) in itertools.pairwise(spans):
        cuts.append((start + prev_stop) // 2 if start < prev_stop else start)
    cuts.append(spans[-1][1])
    return [(cuts[i], cuts[i + 1]) for i in range(len(spans))]


def tiles_2d(
    interior: tuple[int, int],
    halo_sides: tuple[int, int, int, int],
    *,
    tile: int | None,
    halo: int,
    overlap: int = 0,
) -> list[Tile]:
    """Lay tiles over a block's interior and derive each tile's read window.

    Parameters
    ----------
    interior : (int, int)
        Interior (output-owning) size of the block in input pixels, rows and columns.
    halo_sides : (top, bottom, left, right)
        Halo actually present around the interior in the block (0 at image edges).
    tile : int or None
        Tile size in input pixels (None: one tile per block).
    halo : int
        Halo each tile reads around its core (clipped to what the block holds).
    overlap : int
        Overlap between neighbouring tiles (for blending).
    """
    top, _bottom, left, _right = halo_sides
    nrows = interior[0] + halo_sides[0] + halo_sides[1]
    ncols = interior[1] + halo_sides[2] + halo_sides[3]
    rows = split_axis(interior[0], tile, overlap)
    cols = split_axis(interior[1], tile, overlap)
    own_r, own_c = _owned(rows), _owned(cols)
    out = []
    for (r0, r1), (or0, or1) in zip(rows, own_r, strict=True):
        rr0, rr1 = max(0, r0 + top - halo), min(nrows, r1 + top + halo)
        for (c0, c1), (oc0, oc1) in zip(cols, own_c, strict=True):
            cc0, cc1 = max(0, c0 + left - halo), min(ncols, c1 + left + halo)
            out.append(
                Tile(
                    read=(slice(rr0, rr1), slice(cc0, cc1)),
                    core=(slice(r0, r1), slice(c0, c1)),
                    offset=(r0 + top - rr0, c0 + left - cc0),
                    owned=(slice(or0, or1), slice(oc0, oc1)),
                )
            )
    return out


def block_halos(
    location: tuple[int, int], nblocks: tuple[int, int], halo: int
) -> tuple[int, int, int, int]:
    """Halo present on each side of a block overlapped with ``boundary="none"``.

    Blocks on the outer edge of the image carry no halo on their outer side.
    """
    (iy, ix), (ny, nx) = location, nblocks
    return (
        0 if iy == 0 else halo,
        0 if iy == ny - 1 else halo,
        0 if ix == 0 else halo,
        0 if ix == nx - 1 else halo,
    )
