"""Least-squares gradient boosting of regression trees on raw numpy arrays (numba).

A small, dependency-free booster for the per-scene models of :mod:`xfusion.training`:
histogram splits (features binned once into at most 255 quantile bins, NaN in a bin of its
own whose side is learned at every split), trees grown leaf-wise (best gain first) up to
``max_leaf_nodes`` leaves with ``min_samples_leaf`` samples each and an L2 penalty on the
leaf values, one tree per :meth:`Booster.step` so a training loop can report progress, score a
validation set, stop early or be interrupted between rounds. Everything is deterministic and
single-threaded (per-scene models train inside a dask task next to others).

Trees are plain arrays (:data:`TREE_KEYS`): ``feature``, ``threshold`` (go left when
``x <= threshold``), ``missing_left`` (where NaN goes), ``left``, ``right``, ``is_leaf``,
``value`` per node and ``roots`` (first node of every tree); :func:`predict_trees` evaluates
them. They are stored in checkpoints as tensors, never pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TREE_KEYS", "Booster", "concat_trees", "empty_trees", "predict_trees",
           "truncate_trees"]

TREE_KEYS: tuple[str, ...] = ("feature", "threshold", "missing_left", "left", "right",
                              "is_leaf", "value", "roots")
"""Arrays of a tree ensemble (nodes of all trees concatenated; ``roots`` indexes them)."""

_MISSING = 255
_KERNELS: dict[str, Callable[..., Any]] = {}


def empty_trees() -> dict[str, np.ndarray]:
    """An ensemble without trees."""
    i32, f64, u8 = np.int32, np.float64, np.uint8
    return {"feature": np.zeros(0, i32), "threshold": np.zeros(0, f64),
            "missing_left": np.zeros(0, u8), "left": np.zeros(0, i32),
            "right": np.zeros(0, i32), "is_leaf": np.zeros(0, u8), "value": np.zeros(0, f64),
            "roots": np.zeros(0, i32)}


def concat_trees(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trees of ``a`` followed by those of ``b``."""
    off = a["value"].shape[0]
    out = {}
    for k in TREE_KEYS:
        v = np.asarray(b[k])
        if k in ("left", "right", "roots"):
            v = v + off
        out[k] = np.concatenate([np.asarray(a[k]), v.astype(np.asarray(a[k]).dtype)])
    return out


def truncate_trees(t: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` trees."""
    if n >= t["roots"].shape[0]:
        return {k: np.asarray(t[k]) for k in TREE_KEYS}
    end = int(t["roots"][n])
    out = {k: np.asarray(t[k])[:end] for k in TREE_KEYS if k != "roots"}
    out["roots"] = np.asarray(t["roots"])[:n]
    return out


def _kernels() -> dict[str, Callable[..., Any]]:
    if _KERNELS:
        return _KERNELS
    from numba import njit

    @njit(cache=True, nogil=True)
    def predict(x, feature, threshold, missing_left, left, right, is_leaf, value, roots,
                base):  # pragma: no cover - compiled
        n = x.shape[0]
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            acc = base
            for k in range(roots.shape[0]):
                node = roots[k]
                while is_leaf[node] == 0:
                    v = x[i, feature[node]]
                    if np.isnan(v):
                        node = left[node] if missing_left[node] else right[node]
                    elif v <= threshold[node]:
                        node = left[node]
                    else:
                        node = right[node]
                acc += value[node]
            out[i] = acc
        return out

    @njit(cache=True, nogil=True)
    def histogram(xb, g, idx, start, end, hist):  # pragma: no cover - compiled
        hist[:] = 0.0
        nf = xb.shape[1]
        for j in range(start, end):
            i = idx[j]
            gi = g[i]
            for f in range(nf):
                b = xb[i, f]
                hist[f, b, 0] += gi
                hist[f, b, 1] += 1.0

    @njit(cache=True, nogil=True)
    def best_split(hist, nbins, min_leaf, l2):  # pragma: no cover - compiled
        # returns gain, feature, bin, missing_left
        nf = hist.shape[0]
        best_gain = 0.0
        best_f = -1
        best_b = -1
        best_ml = 0
        gt = 0.0
        nt = 0.0
        for b in range(256):
            gt += hist[0, b, 0]
            nt += hist[0, b, 1]
        parent = gt * gt / (nt + l2)
        for f in range(nf):
            gm = hist[f, 255, 0]
            nm = hist[f, 255, 1]
            gl = 0.0
            nl = 0.0
            for b in range(nbins[f]):
                gl += hist[f, b, 0]
                nl += hist[f, b, 1]
                for ml in range(2):
                    if ml == 1 and nm == 0.0:
                        continue
                    if b == nbins[f] - 1 and (ml == 1 or nm == 0.0):
                        continue  # the last bin splits only the NaN off
                    gl_ = gl + (gm if ml == 1 else 0.0)
                    nl_ = nl + (nm if ml == 1 else 0.0)
                    nr_ = nt - nl_
                    if nl_ < min_leaf or nr_ < min_leaf:
                        continue
                    gr_ = gt - gl_
                    gain = gl_ * gl_ / (nl_ + l2) + gr_ * gr_ / (nr_ + l2) - parent
                    if gain > best_gain + 1e-12:
                        best_gain = gain
                        best_f = f
                        best_b = b
                        best_ml = ml if nm > 0.0 else (1 if nl_ >= nr_ else 0)
        return best_gain, best_f, best_b, best_ml

    @njit(cache=True, nogil=True)
    def partition(xb, idx, start, end, f, b, ml, buf):  # pragma: no cover - compiled
        nl = 0
        nr = 0
        for j in range(start, end):
            i = idx[j]
            v = xb[i, f]
            go_left = (ml == 1) if v == 255 else (v <= b)
            if go_left:
                idx[start + nl] = i
                nl += 1
            else:
                buf[nr] = i
                nr += 1
        for k in range(nr):
            idx[start + nl + k] = buf[k]
        return start + nl

    @njit(cache=True, nogil=True)
    def add_leaf(pred, idx, start, end, value):  # pragma: no cover - compiled
        for j in range(start, end):
            pred[idx[j]] += value

    _KERNELS.update(predict=predict, histogram=histogram, best_split=best_split,
                    partition=partition, add_leaf=add_leaf)
    return _KERNELS


def predict_trees(trees: Mapping[str, np.ndarray], base: float, x: np.ndarray) -> np.ndarray:
    """``base`` plus the sum of the trees' leaf values for every row of ``x`` (n, k)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 0 or np.asarray(trees["roots"]).shape[0] == 0:
        return np.full(x.shape[0], float(base))
    k = _kernels()
    return k["predict"](x, *(np.ascontiguousarray(trees[key]) for key in TREE_KEYS),
                        float(base))


def bin_edges(x: np.ndarray, max_bins: int = 255, sample: int = 200_000,
              seed: int = 0) -> list[np.ndarray]:
    """Per feature, strictly increasing thresholds splitting its values into <= max_bins - 1
    bins (midpoints between distinct values, or quantiles of a subsample)."""
    rng = np.random.default_rng(seed)
    rows = x if x.shape[0] <= sample else x[np.sort(rng.choice(x.shape[0], sample, False))]
    edges = []
    nmax = max_bins - 1  # bins for values; one more for NaN
    for f in range(x.shape[1]):
        v = rows[:, f].astype(np.float64)
        v = v[~np.isnan(v)]
        u = np.unique(v)
        if u.size <= nmax:
            e = (u[:-1] + u[1:]) / 2
        else:
            q = np.percentile(v, np.linspace(0, 100, nmax + 1)[1:-1], method="midpoint")
            e = np.unique(q)
        edges.append(e.astype(np.float64))
    return edges


def apply_bins(x: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Bin indices (n, k) uint8: the number of edges below the value; NaN → 255."""
    out = np.empty(x.shape, dtype=np.uint8)
    for f, e in enumerate(edges):
        v = x[:, f].astype(np.float64)
        b = np.searchsorted(e, v, side="left")
        out[:, f] = np.where(np.isnan(v), _MISSING, b)
    return out


class Booster:
    """Least-squares gradient boosting, one tree per :meth:`step`.

    Parameters
    ----------
    x : numpy.ndarray
        Features (n, k), float32 (NaN allowed).
    y : numpy.ndarray
        Targets (n,).
    learning_rate : float
        Shrinkage of every tree.
    max_leaf_nodes : int
        Leaves per tree.
    min_samples_leaf : int
        Samples per leaf at least.
    l2 : float
        L2 penalty on the leaf values.
    max_bins : int
        Bins per feature (at most 255, one more holds NaN).
    seed : int
        Seeds the subsample the bins are computed on.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, learning_rate: float = 0.1,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20, l2: float = 0.0,
                 max_bins: int = 255, seed: int = 0) -> None:
        x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float64)
        self.learning_rate = float(learning_rate)
        self.max_leaf_nodes = max(2, int(max_leaf_nodes))
        self.min_samples_leaf = max(1, int(min_samples_leaf))
        self.l2 = float(l2)
        self.edges = bin_edges(x, min(int(max_bins), 255), seed=seed)
        self.xb = np.ascontiguousarray(apply_bins(x, self.edges))
        self.nbins = np.array([e.size + 1 for e in self.edges], dtype=np.int64)
        self.base = float(self.y.mean()) if self.y.size else 0.0
        self.pred = np.full(self.y.shape, self.base)
        self._k = _kernels()
        nf = x.shape[1]
        self._hist = np.zeros((2 * self.max_leaf_nodes, nf, 256, 2))
        self._idx = np.arange(self.y.size, dtype=np.int64)
        self._buf = np.empty(self.y.size, dtype=np.int64)

    def step(self) -> dict[str, np.ndarray]:
        """Grow one tree on the current residuals; update the training predictions; return it."""
        k = self._k
        g = self.pred - self.y  # gradient of 1/2 (pred - y)^2
        n = self.y.size
        idx = self._idx
        idx[:] = np.arange(n)
        hist = self._hist
        # node table: start, end, hist slot, parent link; leaves are candidates
        nodes: list[dict[str, Any]] = [{"start": 0, "end": n, "slot": 0}]
        k["histogram"](self.xb, g, idx, 0, n, hist[0])
        free = list(range(1, hist.shape[0]))
        cand = {0: k["best_split"](hist[0], self.nbins, self.min_samples_leaf, self.l2)}
        leaves = 1
        while leaves < self.max_leaf_nodes and cand:
            node_id = max(cand, key=lambda i: (cand[i][0], -i))
            gain, f, b, ml = cand.pop(node_id)
            if f < 0 or gain <= 0:
                continue
            nd = nodes[node_id]
            mid = k["partition"](self.xb, idx, nd["start"], nd["end"], f, b, ml, self._buf)
            left = {"start": nd["start"], "end": mid}
            right = {"start": mid, "end": nd["end"]}
            small, large = (left, right) if mid - nd["start"] <= nd["end"] - mid else (right,
                                                                                     left)
            small["slot"] = free.pop()
            k["histogram"](self.xb, g, idx, small["start"], small["end"], hist[small["slot"]])
            large["slot"] = nd["slot"]  # parent - small, in place
            hist[large["slot"]] -= hist[small["slot"]]
            nd.update(feature=f, bin=b, missing_left=ml, left=len(nodes), right=len(nodes) + 1)
            nodes += [left, right]
            leaves += 1
            for cid in (nd["left"], nd["right"]):
                c = nodes[cid]
                if c["end"] - c["start"] >= 2 * self.min_samples_leaf:
                    cand[cid] = k["best_split"](hist[c["slot"]], self.nbins,
                                                self.min_samples_leaf, self.l2)
                else:
                    free.append(c["slot"])
        m = len(nodes)
        tree = {"feature": np.zeros(m, np.int32), "threshold": np.zeros(m, np.float64),
                "missing_left": np.zeros(m, np.uint8), "left": np.zeros(m, np.int32),
                "right": np.zeros(m, np.int32), "is_leaf": np.ones(m, np.uint8),
                "value": np.zeros(m, np.float64), "roots": np.zeros(1, np.int32)}
        for i, nd in enumerate(nodes):
            if "feature" in nd:
                tree["feature"][i] = nd["feature"]
                e = self.edges[nd["feature"]]
                tree["threshold"][i] = e[nd["bin"]] if nd["bin"] < e.size else np.inf
                tree["missing_left"][i] = nd["missing_left"]
                tree["left"][i] = nd["left"]
                tree["right"][i] = nd["right"]
                tree["is_leaf"][i] = 0
            else:
                s, e = nd["start"], nd["end"]
                gsum = float(g[idx[s:e]].sum())
                val = -self.learning_rate * gsum / ((e - s) + self.l2)
                tree["value"][i] = val
                k["add_leaf"](self.pred, idx, s, e, val)
        return tree
