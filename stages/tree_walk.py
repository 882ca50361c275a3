"""The compiled tree walk (numba) behind stages.trees: many rows through many trees.

A block of rows goes through one tree at a time, level by level and without branches:
each inner node sends a row to child[2 * node + (0 if it goes left else 1)], and a leaf
sends it to itself, so every row takes the tree's depth in steps and the rows of a block
are independent work for the processor (a branchy walk, row by row, mispredicts about
every other split: 2,981 rows/s against 7,239 on LightGBM's 12,084 trees, 2 threads).

The sums keep the numpy walk's order: each (row, class) cell starts from the baseline
(boosting) or zero (forest) and adds tree 0, 1, 2..., so the output is the numpy walk's
bit for bit; stages.trees still checks that on probe rows before it trusts this module.
Each kernel compiles on its first call (about 3 s for all of them); numba caches the
machine code beside this file, so later processes load it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

# Rows walked through a tree together. Boosting's trees are small (about 125 nodes, in the
# L1 cache whatever the rows); a forest's are large (about 33,000 nodes each), so the more
# rows walk one while its nodes are cached the better (200 trees, 45,120 rows, 2 threads:
# 22,905 rows/s in blocks of 256, 47,412 in blocks of 8,192), up to a sums array of
# classes x rows float64 per thread (7 MB at 114 classes).
BOOSTING_BLOCK = 256
FOREST_BLOCK = 8192
MIN_PART_ROWS = 256  # rows per thread, at least


@njit(cache=True, nogil=True, inline="always")
def _descend(xf, row0, n_features, m, feature, missing_left, threshold, child, root, depth,
             node):
    """node[:m] = the leaf that each of the m rows from row0 reaches in the tree at root."""
    for i in range(m):
        node[i] = root
    for _ in range(depth):
        for i in range(m):
            k = node[i]
            v = xf[np.uint64(row0 + i) * np.uint64(n_features) + np.uint64(feature[k])]
            go_left = (v <= threshold[k]) | ((v != v) & missing_left[k])
            node[i] = child[np.uint64(2) * np.uint64(k) + np.uint64(1 - go_left)]


@njit(cache=True, nogil=True, inline="always")
def _store(sums, out, lo, m):
    """out's rows lo..lo+m = the block's sums (classes x rows)."""
    for c in range(sums.shape[0]):
        for i in range(m):
            out[lo + i, c] = sums[c, i]


@njit(cache=True, nogil=True)
def boosting_sums(x, feature, missing_left, threshold, child, roots, depths, tree_class,
                  node_value, baseline, out, start, stop):
    """out[r] = baseline + the leaf values of the trees of each class, rows start..stop."""
    n_features = x.shape[1]
    xf = x.ravel()
    n_classes = baseline.shape[0]
    node = np.empty(BOOSTING_BLOCK, np.uint32)
    sums = np.empty((n_classes, BOOSTING_BLOCK), np.float64)
    for lo in range(start, stop, BOOSTING_BLOCK):
        m = min(stop, lo + BOOSTING_BLOCK) - lo
        for c in range(n_classes):
            for i in range(m):
                sums[c, i] = 0.0 + baseline[c]  # as numpy's zeros + baseline
        for t in range(roots.shape[0]):
            _descend(xf, lo, n_features, m, feature, missing_left, threshold, child,
                     roots[t], depths[t], node)
            c = tree_class[t]
            for i in range(m):
                sums[c, i] += node_value[node[i]]
        _store(sums, out, lo, m)


@njit(cache=True, nogil=True)
def forest_sums(x, feature, missing_left, threshold, child, roots, depths, node_leaf,
                leaf_start, leaf_class, leaf_value, out, start, stop):
    """out[r] = the sum over trees of the class fractions of the leaf each reaches."""
    n_features = x.shape[1]
    xf = x.ravel()
    n_classes = out.shape[1]
    node = np.empty(FOREST_BLOCK, np.uint32)
    sums = np.empty((n_classes, FOREST_BLOCK), np.float64)
    for lo in range(start, stop, FOREST_BLOCK):
        m = min(stop, lo + FOREST_BLOCK) - lo
        sums[:, :m] = 0.0
        for t in range(roots.shape[0]):
            _descend(xf, lo, n_features, m, feature, missing_left, threshold, child,
                     roots[t], depths[t], node)
            for i in range(m):
                leaf = node_leaf[node[i]]
                for e in range(leaf_start[leaf], leaf_start[leaf + 1]):
                    sums[leaf_class[e], i] += leaf_value[e]
        _store(sums, out, lo, m)


@njit(cache=True)
def tree_depths(child, roots, ends):
    """Each tree's depth (the most splits on a path); children come after their parent."""
    depth = np.zeros(child.shape[0] // 2, np.int64)
    depths = np.zeros(roots.shape[0], np.int64)
    for t in range(roots.shape[0]):
        for k in range(roots[t], ends[t]):
            for side in range(2):
                below = child[2 * k + side]
                if below != k:
                    depth[below] = depth[k] + 1
            depths[t] = max(depths[t], depth[k])
    return depths


def node_layout(arrays: dict[str, np.ndarray], bounds: np.ndarray) -> dict[str, np.ndarray]:
    """The walk's arrays for a checked file layout (stages.trees): a leaf is its own child."""
    leaf = arrays["feature"] < 0
    nodes = np.arange(len(leaf), dtype=np.int64)
    child = np.empty(2 * len(leaf), dtype=np.uint32)
    child[0::2] = nodes + np.where(leaf, 0, arrays["left"])
    child[1::2] = nodes + np.where(leaf, 0, arrays["right"])
    roots = bounds[:-1].astype(np.uint32)
    feature = np.where(leaf, 0, arrays["feature"])
    return {"feature": feature.astype(np.uint8 if feature.max() < 256 else np.uint32),
            "missing_left": np.ascontiguousarray(arrays["missing_left"], dtype=np.bool_),
            "threshold": np.ascontiguousarray(arrays["threshold"], dtype=np.float32),
            "child": child, "roots": roots,
            "depths": tree_depths(child, roots.astype(np.int64), bounds[1:].astype(np.int64))}


def run(kernel, x: np.ndarray, out: np.ndarray, n_threads: int, *arrays) -> np.ndarray:
    """kernel(x, *arrays, out, start, stop) over all rows, in n_threads contiguous parts
    (the kernels release the GIL); out is filled in place and returned."""
    n = len(x)
    parts = max(1, min(n_threads, -(-n // MIN_PART_ROWS)))
    edges = [n * p // parts for p in range(parts + 1)]
    if parts == 1:
        kernel(x, *arrays, out, 0, n)
        return out
    with ThreadPoolExecutor(parts) as pool:
        done = [pool.submit(kernel, x, *arrays, out, edges[p], edges[p + 1])
                for p in range(parts)]
        for part in done:
            part.result()
    return out
