"""Graph helpers for methods with a global statistic before a blockwise map.

A method whose every block needs a statistic of the whole image (ESTARFM's similarity
thresholds, FSDAF's class statistics) would hold every input chunk in memory from the
reduction until the blocks that use it run. Computing the statistic from an independent copy
of the input graph instead lets each chunk be freed once its share of the statistic is taken
(the inputs are then read, or generated, twice).
"""

from __future__ import annotations

from typing import Any

__all__ = ["independent_copy"]


def independent_copy(*arrays: Any, seed: Any) -> list[Any]:
    """Copies of dask arrays whose graphs share no key with the originals (or each other's
    originals): computing a copy re-runs the whole chain that produces it.

    :func:`dask.graph_manipulation.clone` does the same, but in dask 2026.8 a clone of a
    graph holding a slice (``getitem``) fails when computed ("Cannot fuse tasks with multiple
    outputs"), and every cube read from GeoTIFFs holds one. This renames every key of the
    materialised graph and rewrites the tasks' references with the task spec's own
    ``substitute``.

    Parameters
    ----------
    *arrays : dask.array.Array
        The arrays to copy (their graphs are merged, so shared inputs stay shared among the
        copies).
    seed : hashable
        Makes the new key names; the same seed and arrays give the same keys (deterministic
        graphs, as dask tokenization expects).

    Returns
    -------
    list of dask.array.Array
        One copy per input, with the same chunks, dtype and meta.
    """
    import dask.array as da
    from dask._task_spec import convert_legacy_graph
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    merged: dict[Any, Any] = {}
    for a in arrays:
        merged.update(dict(a.__dask_graph__()))
    graph = convert_legacy_graph(merged)
    suffix = tokenize(seed, sorted(str(a.name) for a in arrays))[:10]

    def rename(key: Any) -> Any:
        if isinstance(key, tuple):
            return (f"{key[0]}-copy-{suffix}", *key[1:])
        return f"{key}-copy-{suffix}"

    subs = {k: rename(k) for k in graph}
    layer = {subs[k]: node.substitute(subs, key=subs[k]) for k, node in graph.items()}
    out = []
    for a in arrays:
        name = rename((a.name,))[0]
        hlg = HighLevelGraph.from_collections(name, layer, dependencies=())
        out.append(da.Array(hlg, name, a.chunks, meta=a._meta))
    return out
