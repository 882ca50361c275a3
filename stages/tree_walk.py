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

Boosting's trees (at most 64 leaves each: LightGBM's and scikit-learn's hold 63 by
default) are not walked at all. A tree's leaves are numbered left to right, and every
split that a row fails (goes right) clears the bits of its left subtree's leaves from a
64-bit word that starts all ones: the lowest bit left is the row's leaf (any leaf to its
left parts from its path at a split that sent the row right). All the splits of a tree
are tested for a block of rows, one split at a time, as straight-line vector code: about
62 tests where a walk takes the tree's depth (13.7 levels on average, 6.6 to the leaf a
row reaches), yet 2.3-3x the rows per second (the idea of QuickScorer: Lucchese et al.,
SIGIR 2015). The word is kept as two 32-bit halves, and a split clears bits only in the
half (or, for about 7% of LightGBM's splits, both) where its left subtree's leaves are, so
a vector step covers twice the rows (test rows, 2 threads, the committed model: about
1.75x the rows per second of one 64-bit word). The sums are added in the same order, so
the answers are the same bits.
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
# Rows through the bit-mask kernel together: each split's tests are one vector loop over the
# block (test split, 2 threads: 14,700 rows/s in blocks of 128 or 256, 20,500-21,000 in 512
# or 1,024); the sums array is classes x rows float64 per thread (467 kB at 114 classes).
BITS_BLOCK = 512
BITS_LEAVES = 64  # leaves per tree at most for the bit-mask kernel: one bit each
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


_ONE = np.uint64(1)
_ALL32 = np.uint32(0xFFFFFFFF)
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)  # every 6-bit window of it differs
_DE_BRUIJN_BIT = np.zeros(64, np.uint8)  # the window a power of two shifts up -> its bit
for _bit in range(64):
    _DE_BRUIJN_BIT[int(((_DE_BRUIJN << np.uint64(_bit)) >> np.uint64(58)))] = _bit


@njit(cache=True, nogil=True, inline="always")
def _lowest_bit(word):
    """The number of the lowest set bit of a non-zero uint64."""
    low = word & (~word + _ONE)  # the lowest set bit alone: a power of two
    return _DE_BRUIJN_BIT[(low * _DE_BRUIJN) >> np.uint64(58)]


@njit(cache=True, nogil=True, inline="always")
def _clear_right(columns, f, m, limit, has_nan, nan_right, keep, bits):
    """bits[i] &= keep (uint32) for each of the block's m rows that the split sends right."""
    if has_nan:  # NaN goes the way the split says
        for i in range(m):
            v = columns[f, i]
            right = (v > limit) | (nan_right & (v != v))
            bits[i] &= keep | (np.uint32(right) - np.uint32(1))
    else:  # no branch: a vector select
        for i in range(m):
            bits[i] &= keep if columns[f, i] > limit else _ALL32


@njit(cache=True, nogil=True)
def boosting_bit_sums(x, feature, missing_right, threshold, mask_low, mask_high, halves,
                      split_start, leaf_start, tree_class, leaf_value, baseline, out, start,
                      stop):
    """boosting_sums' output from the bit-mask layout (bit_layout, split_halves): the same
    bits."""
    n_features = x.shape[1]
    n_classes = baseline.shape[0]
    columns = np.empty((n_features, BITS_BLOCK), np.float32)  # the block, feature-major
    low = np.empty(BITS_BLOCK, np.uint32)  # leaves 0-31 of each row
    high = np.empty(BITS_BLOCK, np.uint32)  # leaves 32-63
    sums = np.empty((n_classes, BITS_BLOCK), np.float64)
    for lo in range(start, stop, BITS_BLOCK):
        m = min(stop, lo + BITS_BLOCK) - lo
        has_nan = False
        for i in range(m):
            for f in range(n_features):
                v = x[lo + i, f]
                columns[f, i] = v
                has_nan |= v != v
        for c in range(n_classes):
            for i in range(m):
                sums[c, i] = 0.0 + baseline[c]  # as numpy's zeros + baseline
        for t in range(tree_class.shape[0]):
            low[:m] = _ALL32
            high[:m] = _ALL32
            for k in range(split_start[t], split_start[t + 1]):
                if halves[k] & 1:
                    _clear_right(columns, feature[k], m, threshold[k], has_nan,
                                 missing_right[k], mask_low[k], low)
                if halves[k] & 2:
                    _clear_right(columns, feature[k], m, threshold[k], has_nan,
                                 missing_right[k], mask_high[k], high)
            c = tree_class[t]
            first = leaf_start[t]
            for i in range(m):
                word = np.uint64(low[i]) | (np.uint64(high[i]) << np.uint64(32))
                sums[c, i] += leaf_value[first + _lowest_bit(word)]
        _store(sums, out, lo, m)


def split_halves(mask: np.ndarray) -> dict[str, np.ndarray]:
    """bit_layout's 64-bit masks as the kernel takes them: two 32-bit halves, and which
    halves each split clears bits in (1: low, 2: high, 3: both)."""
    mask = np.asarray(mask, dtype=np.uint64)
    low = (mask & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (mask >> np.uint64(32)).astype(np.uint32)
    halves = (low != _ALL32).astype(np.uint8) | ((high != _ALL32).astype(np.uint8) << 1)
    return {"mask_low": low, "mask_high": high, "halves": halves}


@njit(cache=True)
def _leaf_bits(child, is_leaf, roots, ends):
    """Per tree, its leaves numbered left to right and each split's mask (every bit but
    those of its left subtree's leaves); ok is False unless every tree is a tree (each
    node but the root has one parent) of at most BITS_LEAVES leaves."""
    n_nodes = is_leaf.shape[0]
    parents = np.zeros(n_nodes, np.int64)
    n_splits = 0
    for k in range(n_nodes):
        if not is_leaf[k]:
            n_splits += 1
            parents[child[2 * k]] += 1
            parents[child[2 * k + 1]] += 1
    n_trees = roots.shape[0]
    leaves = np.zeros(n_nodes, np.int64)  # leaves below a node
    first = np.zeros(n_nodes, np.int64)  # the number of its leftmost leaf in its tree
    split_node = np.zeros(n_splits, np.int64)
    mask = np.zeros(n_splits, np.uint64)
    leaf_node = np.zeros(n_nodes - n_splits, np.int64)
    split_start = np.zeros(n_trees + 1, np.int64)
    leaf_start = np.zeros(n_trees + 1, np.int64)
    ok = True
    for t in range(n_trees):
        root, end = roots[t], ends[t]
        for k in range(end - 1, root - 1, -1):  # children after their parent
            ok &= parents[k] == (0 if k == root else 1)
            leaves[k] = 1 if is_leaf[k] else leaves[child[2 * k]] + leaves[child[2 * k + 1]]
        ok &= leaves[root] <= BITS_LEAVES
        if not ok:
            break
        first[root] = 0
        split, leaf_start[t + 1] = split_start[t], leaf_start[t] + leaves[root]
        for k in range(root, end):
            if is_leaf[k]:
                leaf_node[leaf_start[t] + first[k]] = k
                continue
            left, right = child[2 * k], child[2 * k + 1]
            first[left] = first[k]
            first[right] = first[k] + leaves[left]
            split_node[split] = k
            left_bits = ((_ONE << np.uint64(leaves[left])) - _ONE) << np.uint64(first[k])
            mask[split] = ~left_bits
            split += 1
        split_start[t + 1] = split
    return ok, split_node, mask, split_start, leaf_node, leaf_start


def bit_layout(arrays: dict[str, np.ndarray], layout: dict[str, np.ndarray],
               bounds: np.ndarray) -> dict[str, np.ndarray] | None:
    """boosting_bit_sums' arrays (after its ``x``, before ``tree_class``) and ``leaf_node``
    (the node of each leaf, in their order), or None when a tree has more than
    BITS_LEAVES leaves (node_layout's walk then)."""
    is_leaf = np.ascontiguousarray(arrays["feature"] < 0)
    ok, split_node, mask, split_start, leaf_node, leaf_start = _leaf_bits(
        layout["child"], is_leaf, bounds[:-1].astype(np.int64), bounds[1:].astype(np.int64))
    if not ok:
        return None
    return {"feature": layout["feature"][split_node],
            "missing_right": ~layout["missing_left"][split_node],
            "threshold": layout["threshold"][split_node], "mask": mask,
            "split_start": split_start, "leaf_start": leaf_start, "leaf_node": leaf_node}


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
    widest = 0
    for t in range(roots.shape[0]):
        widest = max(widest, ends[t] - roots[t])
    depth = np.zeros(widest, np.int64)  # of one tree's nodes at a time
    depths = np.zeros(roots.shape[0], np.int64)
    for t in range(roots.shape[0]):
        first = roots[t]
        depth[: ends[t] - first] = 0
        for k in range(first, ends[t]):
            for side in range(2):
                below = child[2 * k + side]
                if below != k:
                    depth[below - first] = depth[k - first] + 1
            depths[t] = max(depths[t], depth[k - first])
    return depths


@njit(cache=True)
def _fill_children(leaf, left, right, child):
    """child[2k], child[2k + 1]: node k's children by number, a leaf's both itself."""
    for k in range(leaf.shape[0]):
        child[2 * k] = k if leaf[k] else k + left[k]
        child[2 * k + 1] = k if leaf[k] else k + right[k]


def node_layout(arrays: dict[str, np.ndarray], bounds: np.ndarray) -> dict[str, np.ndarray]:
    """The walk's arrays for a checked file layout (stages.trees): a leaf is its own child."""
    leaf = arrays["feature"] < 0
    child = np.empty(2 * len(leaf), dtype=np.uint32)
    _fill_children(leaf, arrays["left"], arrays["right"], child)
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
