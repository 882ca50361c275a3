"""Tree-model families: a random forest and gradient-boosted trees, as pure functions.

``fit`` trains scikit-learn's RandomForestClassifier ("forest") or gradient-boosted
trees ("boosting", early stopping on the validation split; LightGBM, or scikit-learn's
HistGradientBoostingClassifier with ``boosting.library``) and converts them to a
compact predictor of plain arrays; ``save`` writes
those arrays, the class list and the feature names as one ``.npz``, and
``load`` reads it back with ``np.load(allow_pickle=False)`` and checks every
index before use. A model file from a DVC remote therefore executes no code
(no pickle, no joblib) and a damaged one fails with a one-line UserError.

Both families share one layout: all trees' nodes concatenated, per node the
feature (-1 at a leaf), a float32 threshold (go left when x <= threshold), the
children as offsets from the node, and where a NaN goes. Leaves differ:

* forest: the classes present in each leaf and their (bootstrap-weighted)
  counts, stored sparsely; a leaf's probabilities are count / total, exactly
  the fractions scikit-learn keeps, so the forest's probabilities equal the
  fitted RandomForestClassifier's bit for bit.
* boosting: one float64 value per leaf; tree t adds to class t % n_classes,
  on top of a per-class baseline (zero for LightGBM, which folds it into the first
  trees), then softmax (as scikit-learn and LightGBM do). LightGBM's trees become the
  same layout: its decision "x <= threshold, NaN by the split's missing type" is
  exactly this one's, so a converted model gives LightGBM's probabilities (up to the
  order of float additions) and predicting never needs LightGBM.

The trees are walked by the compiled walk of stages.tree_walk (numba; fed only
arrays that passed the checks) or by numpy; both reach the same leaves and add
them up in the same order. The compiled walk is trusted only after it has
answered a few probe rows (built from the model's own thresholds, NaN included)
exactly as the numpy walk does; any failure of it (numba missing or unable to
compile, any exception, a different answer) means the numpy walk. The file
records the library and version that fitted the model.

Two optional entries travel with a model: ``ranges`` (each feature's training
min and max, for plausibility checks on input) and ``temperature`` (T > 0,
default 1): boosting divides its raw scores by T before the softmax, the forest
raises its probabilities to 1/T and renormalises (zeros stay zero). T = 1 leaves
the output bit for bit as it was; no T changes which class is most probable.

Every predictor takes the 15 raw feature values, float32, shape (n, 15), in
``stages.common.FEATURES`` order, and returns probabilities (n, n_classes).
"""

from __future__ import annotations

import copy
import importlib
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

from stages.common import UserError, atomic_path, threads, write_npz
from stages.params import SECTIONS, BoostingParams, ForestParams
from stages.params import TREES as TREE_FAMILIES

PARAMS = {family: SECTIONS[family] for family in TREE_FAMILIES}  # their param schemas
FILE_FORMAT = "spotify-genre-trees"
FORMAT_VERSION = 1
FOREST_CHUNK = 10  # trees fitted at a time: scikit-learn keeps a dense class vector per node
PAIRS_PER_BATCH = 1 << 21  # (row, tree) pairs walked at once: bounds predict memory
CHECK_NODES = 1 << 20  # nodes checked at once when a file is read
COMPILED_ROWS = 1 << 16  # rows per batch in the compiled walk (it keeps only their sums)


# --- the shared node layout ------------------------------------------------------------

NODE_KEYS = ("tree_nodes", "feature", "threshold", "left", "right", "missing_left")
LEAF_KEYS = {"forest": ("leaf_nnz", "leaf_class", "leaf_count"),
             "boosting": ("leaf_value", "baseline")}


def _floor32(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold.

    For a float32 input x, ``x <= t`` and ``x <= _floor32(t)`` always agree, so
    storing thresholds as float32 changes no decision.
    """
    threshold = np.asarray(threshold, dtype=np.float64)
    down = threshold.astype(np.float32)
    too_high = down.astype(np.float64) > threshold
    down[too_high] = np.nextafter(down[too_high], np.float32(-np.inf))
    return down


def _small_uint(values: np.ndarray) -> np.ndarray:
    top = int(values.max()) if values.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values.astype(np.uint64)


def _node_arrays(leaf, feature, threshold, left, right, missing_left) -> dict[str, np.ndarray]:
    """One tree's nodes in the file layout (children as offsets from their parent)."""
    nodes = np.arange(len(leaf))
    return {
        "feature": np.where(leaf, -1, feature).astype(np.int8),
        "threshold": np.where(leaf, 0, _floor32(threshold)).astype(np.float32),
        "left": np.where(leaf, 0, left - nodes).astype(np.int32),
        "right": np.where(leaf, 0, right - nodes).astype(np.int32),
        "missing_left": ~leaf & (np.asarray(missing_left) != 0),
    }


def _concat(parts: list[dict[str, np.ndarray]], keys) -> dict[str, np.ndarray]:
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in keys}
    arrays["tree_nodes"] = _small_uint(np.array([len(p["feature"]) for p in parts]))
    return arrays


# the node arrays that the compiled walk takes, in its kernels' argument order
WALK_KEYS = ("feature", "missing_left", "threshold", "child", "roots", "depths")
BIT_KEYS = ("feature", "missing_right", "threshold", "mask_low", "mask_high", "halves",
            "split_start", "leaf_start")
PROBE_ROWS = 8  # probe rows spread over each feature's thresholds (plus two with NaN)


def _compiled_walk():
    """The compiled walk (stages.tree_walk, numba), or None where it cannot be imported.

    Used only for speed, and only once it has matched the numpy walk on probe rows
    (_Trees._check_walk).
    """
    try:
        return importlib.import_module("stages.tree_walk")
    except Exception:  # noqa: BLE001 - no numba, or it cannot compile here: numpy walks
        return None


def sklearn_version() -> str:
    import sklearn  # noqa: PLC0415

    return str(sklearn.__version__)


def fitted_with(library: str = "scikit-learn") -> str:
    """What a model file records as its maker: library and version."""
    if library == "lightgbm":
        return f"lightgbm {_import_lightgbm().__version__}"
    return f"scikit-learn {sklearn_version()}"


class _Trees:
    """Many binary trees in flat arrays, walked by the compiled walk (stages.tree_walk:
    blocks of rows through one tree at a time) or, without it, by numpy over (row, tree)
    pairs."""

    family = ""

    @property
    def n_threads(self) -> int:
        """Threads of the compiled walk: every core, or SPOTIFY_GENRE_THREADS (a busy
        machine or several workers should set it)."""
        return threads()

    def __init__(self, arrays: dict[str, np.ndarray], n_classes: int, n_features: int,
                 compiled: bool = True):
        self.arrays = arrays  # the file layout, kept for save()
        self.n_classes = n_classes
        self.n_features = n_features
        tree_nodes = arrays["tree_nodes"].astype(np.int64)
        self.n_trees = len(tree_nodes)
        self.bounds = np.concatenate([[0], np.cumsum(tree_nodes)])  # tree t: bounds[t:t+2]
        self.is_leaf = arrays["feature"] < 0
        self._setup_leaves(arrays)
        # metadata: set by fit() or read by load(), written by save()
        self.fitted_with: str | None = None  # the library and version that fitted the trees
        self.temperature = 1.0
        self.ranges: dict[str, tuple[float, float]] | None = None
        self.walk = None  # (compiled walk, record dtype) once trusted; None: the numpy walk
        self.walk_problem: str | None = None  # why the compiled walk is not used, if it is not
        self._cache: dict = {}  # walk arrays, built on first use
        if compiled:
            self.use_compiled_walk()

    def use_compiled_walk(self) -> bool:
        """Switch to the compiled walk if it can be imported and answers the probe rows
        exactly as the numpy walk does; True when it is used."""
        walk = _compiled_walk()
        if walk is None:
            self._use_numpy("is not available")
            return False
        self.walk, self.walk_problem = walk, None
        self._cache.clear()
        self._check_walk()
        return self.walk is not None

    def _setup_leaves(self, arrays: dict[str, np.ndarray]) -> None:
        """Per-family leaf arrays (before the walk check, which predicts)."""

    def probe_rows(self) -> np.ndarray:
        """A few rows that exercise the trees' own splits: each feature at one of its
        thresholds (goes left) or just above it (goes right), spread over its thresholds,
        then a row of NaN and a row half NaN (the missing-value routes)."""
        inner = ~self.is_leaf
        feature = self.arrays["feature"][inner].astype(np.int64)
        threshold = self.arrays["threshold"][inner].astype(np.float32)
        probe = np.zeros((PROBE_ROWS + 2, self.n_features), dtype=np.float32)
        steps = np.arange(PROBE_ROWS)
        for f in range(self.n_features):
            values = np.unique(threshold[feature == f])
            if values.size == 0:
                continue
            spread = (steps + f) % PROBE_ROWS  # features at different ranks in one row
            picks = values[spread * values.size // PROBE_ROWS]
            above = np.nextafter(picks, np.float32(np.inf))
            probe[:PROBE_ROWS, f] = np.where((steps + f) % 2 == 0, picks, above)
        probe[PROBE_ROWS] = np.nan
        probe[PROBE_ROWS + 1] = np.where(np.arange(self.n_features) % 2 == 0, np.nan, probe[0])
        return probe

    def _check_walk(self) -> None:
        """Use the compiled walk only if it answers the probe rows as the numpy walk does
        (the rows without NaN alone, then all: a kernel may treat a block with NaN apart)."""
        probe = self.probe_rows()
        plain = copy.copy(self)  # the same trees and leaves, walked by numpy
        plain.walk, plain._cache = None, {}
        try:
            same = all(np.array_equal(self._predict_rows(rows), plain._predict_rows(rows))
                       for rows in (probe[:PROBE_ROWS], probe))
        except Exception as exc:  # noqa: BLE001 - private code: any failure means numpy
            self._use_numpy(f"failed ({type(exc).__name__}: {exc})")
            return
        if not same:
            self._use_numpy("disagrees with the numpy walk on probe rows")

    def _use_numpy(self, problem: str) -> None:
        problem = " ".join(problem.split())[:200]  # one line, however the exception reads
        self.walk = None
        self.walk_problem = problem
        self._cache.clear()
        written = f", model fitted with {self.fitted_with}" if self.fitted_with else ""
        print(f"note: the compiled tree walk (numba) {problem}{written}; using the numpy "
              "walk (same answers, slower)", file=sys.stderr)

    def _layout(self) -> dict[str, np.ndarray]:
        """The compiled walk's node arrays, built on first use."""
        if "layout" not in self._cache:
            self._cache["layout"] = self.walk.node_layout(self.arrays, self.bounds)
        return self._cache["layout"]

    def _compiled_sums(self, kernel, x: np.ndarray, out: np.ndarray, *leaf_arrays):
        layout = self._layout()
        return self.walk.run(kernel, x, out, self.n_threads,
                             *(layout[k] for k in WALK_KEYS), *leaf_arrays)

    def _leaf_numbers(self) -> np.ndarray:
        """Node -> leaf number (meaningful at leaves), computed once for both walks."""
        if "leaf_number" not in self._cache:
            self._cache["leaf_number"] = np.cumsum(self.is_leaf) - 1
        return self._cache["leaf_number"]

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        """The numpy walk: leaf number reached by every (row, tree) pair, row-major (row 0's
        trees first)."""
        leaf_index = self._leaf_numbers()
        # the file's arrays, read at the nodes a row reaches only (children are offsets)
        feature, threshold, left, right, missing_left = (
            self.arrays[k] for k in ("feature", "threshold", "left", "right", "missing_left"))
        node = np.tile(self.bounds[:-1], len(x))
        row = np.repeat(np.arange(len(x)), self.n_trees)
        flat_x = x.ravel()
        active = np.flatnonzero(~self.is_leaf[node])
        while active.size:
            at = node[active]
            value = flat_x[row[active] * x.shape[1] + feature[at].astype(np.int64)]
            go_left = (value <= threshold[at]) | (np.isnan(value) & missing_left[at])
            at = at + np.where(go_left, left[at], right[at]).astype(np.int64)
            node[active] = at
            active = active[~self.is_leaf[at]]
        return leaf_index[node]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, (n, n_classes) float64, for float32 features (n, n_features)."""
        return self._walk(x, self._predict_batch)

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """What the trees add up, before the temperature: boosting's raw scores, the
        forest's class fractions. ``probabilities(raw_scores(x))`` is ``predict_proba(x)``
        bit for bit, at any temperature set in between: one walk for both sides of a
        calibration."""
        return self._walk(x, self._raw_batch, order=self.raw_order)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """raw_scores' output at this model's temperature (``raw`` is left as it is)."""
        return self._finish(raw.copy(order="K"))

    raw_order = "C"  # the memory layout of raw scores, on which the finishing sums' bits depend

    def _walk(self, x: np.ndarray, batch_output, order: str = "C") -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        if self.walk is not None:
            try:
                return self._predict_rows(x, batch_output, order)
            except Exception as exc:  # noqa: BLE001 - private code: any failure means numpy
                self._use_numpy(f"failed ({type(exc).__name__}: {exc})")
        return self._predict_rows(x, batch_output, order)

    def _predict_rows(self, x: np.ndarray, batch_output=None, order: str = "C") -> np.ndarray:
        batch_output = batch_output or self._predict_batch
        out = np.empty((len(x), self.n_classes), dtype=np.float64, order=order)
        rows = self._batch_rows()
        for begin in range(0, len(x), rows):
            batch = x[begin : begin + rows]
            out[begin : begin + len(batch)] = batch_output(batch)
        return out

    def _batch_rows(self) -> int:
        if self.walk is not None:
            return COMPILED_ROWS
        return max(1, PAIRS_PER_BATCH // self.n_trees)  # memory grows with (row, tree) pairs

    def _predict_batch(self, x: np.ndarray) -> np.ndarray:
        return self._finish(self._raw_batch(x))

    def _raw_batch(self, x: np.ndarray) -> np.ndarray:
        return self._proba(self._leaves(x), len(x))

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores to probabilities at the model's temperature (may work in place)."""
        raise NotImplementedError


class Forest(_Trees):
    """Random forest: the mean over trees of each leaf's class fractions."""

    family = "forest"

    def _setup_leaves(self, arrays):
        nnz = arrays["leaf_nnz"].astype(np.int64)
        self.leaf_start = np.concatenate([[0], np.cumsum(nnz)])
        counts = arrays["leaf_count"].astype(np.float64)
        totals = np.add.reduceat(counts, self.leaf_start[:-1])
        self.leaf_value = counts / np.repeat(totals, nnz)  # as scikit-learn computes them
        self.leaf_class = arrays["leaf_class"]

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return _temper_fractions(raw, self.temperature)

    def _raw_batch(self, x: np.ndarray) -> np.ndarray:
        if self.walk is None:
            return super()._raw_batch(x)
        if "leaves" not in self._cache:
            # the smallest integers that hold them: fewer cache lines per row and tree
            # (test rows, 2 threads: about 1.25x the rows per second of int64 arrays)
            self._cache["leaves"] = (_small_uint(np.maximum(self._leaf_numbers(), 0)),
                                     _small_uint(self.leaf_start),
                                     _small_uint(self.leaf_class),
                                     self.leaf_value)
        sums = np.empty((len(x), self.n_classes))
        return self._compiled_sums(self.walk.forest_sums, x, sums,
                                   *self._cache["leaves"]) / self.n_trees

    def _proba(self, leaf: np.ndarray, n_rows: int) -> np.ndarray:
        first = self.leaf_start[leaf]
        nnz = self.leaf_start[leaf + 1] - first
        # one entry per (row, tree, class present in the leaf)
        pair = np.repeat(np.arange(len(leaf)), nnz)
        entry = first[pair] + np.arange(len(pair)) - np.repeat(np.cumsum(nnz) - nnz, nnz)
        cell = (pair // self.n_trees) * self.n_classes + self.leaf_class[entry]
        # bincount adds in input order, so each cell sums tree 0, 1, 2...: scikit-learn's order
        sums = np.bincount(cell, weights=self.leaf_value[entry], minlength=n_rows * self.n_classes)
        return sums.reshape(n_rows, self.n_classes) / self.n_trees


class Boosting(_Trees):
    """Gradient boosting: baseline + the trees' leaf values per class, then softmax."""

    family = "boosting"

    def _setup_leaves(self, arrays):
        self.leaf_value = arrays["leaf_value"]
        self.baseline = arrays["baseline"]
        self.rounds = self.n_trees // self.n_classes

    raw_order = "F"

    def _raw_batch(self, x: np.ndarray) -> np.ndarray:
        if self.walk is None:
            return super()._raw_batch(x)
        if "kernel" not in self._cache:
            self._cache["kernel"] = self._compiled_kernel()
        kernel, arrays = self._cache["kernel"]
        # column-major, as the numpy walk's (and scikit-learn's) raw scores
        raw = np.empty((len(x), self.n_classes), order="F")
        return self.walk.run(kernel, x, raw, self.n_threads, *arrays)

    def _compiled_kernel(self):
        """(kernel, its arrays): the bit-mask kernel for trees of at most 64 leaves, the
        level walk for larger ones."""
        node_value = np.zeros(len(self.is_leaf))
        node_value[self.is_leaf] = self.leaf_value
        tree_class = np.arange(self.n_trees, dtype=np.int64) % self.n_classes
        baseline = np.ascontiguousarray(self.baseline, dtype=np.float64)
        layout = self._layout()
        bits = self.walk.bit_layout(self.arrays, layout, self.bounds)
        if bits is None:
            return self.walk.boosting_sums, (*(layout[k] for k in WALK_KEYS), tree_class,
                                             node_value, baseline)
        bits.update(self.walk.split_halves(bits["mask"]))
        return self.walk.boosting_bit_sums, (
            *(bits[k] for k in BIT_KEYS), tree_class, node_value[bits["leaf_node"]], baseline)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return _softmax(raw, self.temperature)

    def _proba(self, leaf: np.ndarray, n_rows: int) -> np.ndarray:
        tree_class = np.tile(np.arange(self.n_trees) % self.n_classes, n_rows)
        cell = np.repeat(np.arange(n_rows), self.n_trees) * self.n_classes + tree_class
        # baseline first, then the trees in order: the order scikit-learn adds them in
        start = np.arange(n_rows * self.n_classes)
        raw = np.bincount(np.concatenate([start, cell]),
                          weights=np.concatenate([np.tile(self.baseline, n_rows),
                                                  self.leaf_value[leaf]]),
                          minlength=n_rows * self.n_classes).reshape(n_rows, self.n_classes)
        # column-major like the compiled walk's (and scikit-learn's) raw scores: the softmax's
        # row sums then add in the same order, so both walks give the same bits
        return np.asfortranarray(raw)


def _softmax(raw: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if temperature != 1.0:  # T = 1: not even a division, so the output stays bit for bit
        raw /= temperature
    raw -= raw.max(axis=1, keepdims=True)  # sklearn.utils.extmath.softmax's steps
    np.exp(raw, out=raw)
    raw /= raw.sum(axis=1, keepdims=True)
    return raw


def _temper_fractions(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities to the power 1/T, renormalised: zeros stay zero, the order stays."""
    if temperature == 1.0:
        return proba
    # divide by the row's largest first: it becomes 1, so no row underflows to all zeros
    proba = proba / proba.max(axis=1, keepdims=True)
    np.power(proba, 1.0 / temperature, out=proba)
    proba /= proba.sum(axis=1, keepdims=True)
    return proba


# --- fitting -------------------------------------------------------------------------------


def _forest_tree(tree, class_codes: np.ndarray) -> dict[str, np.ndarray]:
    t = tree.tree_
    leaf = t.children_left < 0
    arrays = _node_arrays(leaf, t.feature, t.threshold, t.children_left, t.children_right,
                          t.missing_go_to_left)
    value = t.value[leaf, 0, :]  # fractions count/total of the leaf's bootstrap-weighted rows
    counts = np.rint(value * t.weighted_n_node_samples[leaf, None])
    which, column = np.nonzero(counts)
    arrays["leaf_nnz"] = np.bincount(which, minlength=int(leaf.sum()))
    arrays["leaf_class"] = class_codes[column]
    arrays["leaf_count"] = counts[which, column]
    return arrays


def fit_forest(params: ForestParams, x_train, y_train, n_classes: int, n_jobs: int = 2) -> Forest:
    """Fit a RandomForestClassifier FOREST_CHUNK trees at a time, into a compact Forest.

    warm_start grows one forest chunk by chunk and draws the same per-tree seeds
    as a single fit, so the trees equal ``RandomForestClassifier(n_estimators,
    random_state=seed)``'s. Each chunk is converted, then dropped (warm_start
    only counts the estimators): scikit-learn's dense per-node class vectors
    take ~50 MB per full-depth tree over 114 classes.
    """
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415

    if params.max_features > x_train.shape[1]:  # scikit-learn would fail mid-fit with a traceback
        raise UserError(f"forest.max_features = {params.max_features}: more than the "
                        f"{x_train.shape[1]} features the model is given")
    forest = RandomForestClassifier(
        n_estimators=0, max_features=params.max_features,
        min_samples_leaf=params.min_samples_leaf, random_state=params.seed, n_jobs=n_jobs,
        warm_start=True)
    parts = []
    while len(parts) < params.n_estimators:
        forest.n_estimators = min(len(parts) + FOREST_CHUNK, params.n_estimators)
        forest.fit(x_train, y_train)
        codes = np.asarray(forest.classes_, dtype=np.int64)
        for i in range(len(parts), forest.n_estimators):
            parts.append(_forest_tree(forest.estimators_[i], codes))
            forest.estimators_[i] = None
    arrays = _concat(parts, NODE_KEYS[1:] + LEAF_KEYS["forest"])
    for key in LEAF_KEYS["forest"]:
        arrays[key] = _small_uint(arrays[key])
    model = Forest(arrays, n_classes, x_train.shape[1])
    model.fitted_with = fitted_with()
    return model


def fit_boosting(params: BoostingParams, x_train, y_train, x_val, y_val, n_classes: int,
                 n_jobs: int = 2) -> Boosting:
    """Fit gradient-boosted trees with ``params.library``; keep the rounds up to the best
    validation loss (without a validation split: all ``params.max_rounds`` rounds, e.g. a
    refit for the rounds an earlier fit chose)."""
    if n_classes < 3:  # both libraries fit one logistic tree per round for two classes
        raise UserError(f"boosting needs at least 3 classes, got {n_classes}")
    if len(np.unique(y_train)) != n_classes:
        # one raw score per class seen in training: a class it never saw has no trees
        raise UserError(f"boosting needs training rows of all {n_classes} classes, "
                        f"got {len(np.unique(y_train))}")
    fit_library = _fit_lightgbm if params.library == "lightgbm" else _fit_hist_gradient_boosting
    arrays = fit_library(params, x_train, y_train, x_val, y_val, n_classes, n_jobs)
    model = Boosting(arrays, n_classes, x_train.shape[1])
    model.fitted_with = fitted_with(params.library)
    return model


def _fit_hist_gradient_boosting(params: BoostingParams, x_train, y_train, x_val, y_val,
                                n_classes: int, n_jobs: int) -> dict[str, np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    model = HistGradientBoostingClassifier(
        learning_rate=params.learning_rate, max_iter=params.max_rounds,
        max_leaf_nodes=params.max_leaf_nodes, min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization, max_features=params.feature_fraction,
        early_stopping=x_val is not None,
        scoring="loss", n_iter_no_change=params.patience, random_state=params.seed)
    with threadpool_limits(n_jobs, user_api="openmp"):
        if x_val is None:
            model.fit(x_train, y_train)
        else:
            model.fit(x_train, y_train, X_val=x_val, y_val=y_val)
    # validation_score_[i] is minus the loss after i rounds (0: the baseline alone)
    rounds = (max(1, int(np.argmax(model.validation_score_))) if x_val is not None
              else model.n_iter_)
    predictors = [p for iteration in model._predictors[:rounds] for p in iteration]
    parts = []
    for predictor in predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        part = _node_arrays(leaf, nodes["feature_idx"], nodes["num_threshold"],
                            nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                            nodes["missing_go_to_left"])
        part["leaf_value"] = nodes["value"][leaf].astype(np.float64)
        parts.append(part)
    arrays = _concat(parts, NODE_KEYS[1:] + ("leaf_value",))
    arrays["baseline"] = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    return arrays


def _import_lightgbm():
    try:
        import lightgbm  # noqa: PLC0415
    except (ImportError, OSError) as exc:  # OSError: its OpenMP runtime is missing
        reason = " ".join(str(exc).split())[:200]
        raise UserError(
            f"boosting.library = lightgbm: LightGBM cannot be imported ({reason}); install "
            "it with `pip install -r requirements.txt` (macOS also needs `brew install "
            "libomp`) or set boosting.library: scikit-learn") from None
    return lightgbm


def lightgbm_settings(params: BoostingParams, n_classes: int, n_jobs: int) -> dict:
    """The section's params in LightGBM's names (the same meaning as scikit-learn's)."""
    return {
        "objective": "multiclass", "num_class": n_classes, "metric": "multi_logloss",
        "learning_rate": params.learning_rate, "num_leaves": params.max_leaf_nodes,
        "min_data_in_leaf": params.min_samples_leaf, "lambda_l2": params.l2_regularization,
        "feature_fraction": params.feature_fraction, "seed": params.seed, "num_threads": n_jobs,
        # the same model from the same params and data on every run
        "deterministic": True, "force_row_wise": True, "verbose": -1,
    }


def _fit_lightgbm(params: BoostingParams, x_train, y_train, x_val, y_val, n_classes: int,
                  n_jobs: int) -> dict[str, np.ndarray]:
    lightgbm = _import_lightgbm()
    settings = lightgbm_settings(params, n_classes, n_jobs)
    train_set = lightgbm.Dataset(x_train, y_train, params=settings)
    if x_val is None:
        booster = lightgbm.train(settings, train_set, num_boost_round=params.max_rounds)
        rounds = booster.current_iteration()
    else:
        val_set = lightgbm.Dataset(x_val, y_val, reference=train_set, params=settings)
        booster = lightgbm.train(
            settings, train_set, num_boost_round=params.max_rounds, valid_sets=[val_set],
            callbacks=[lightgbm.early_stopping(params.patience, verbose=False)])
        rounds = booster.best_iteration  # the round with the lowest validation loss
    return lightgbm_arrays(booster.model_to_string(num_iteration=rounds), n_classes)


def _model_text_trees(text: str) -> list[dict[str, str]]:
    """Each tree's ``key=value`` lines from LightGBM's text model format."""
    found: list[dict[str, str]] = []
    tree = None
    for line in text.splitlines():
        if line.startswith("Tree="):
            tree = {}
            found.append(tree)
        elif line.startswith("end of trees"):
            break
        elif tree is not None and "=" in line:
            key, value = line.split("=", 1)
            tree[key] = value
    return found


def lightgbm_arrays(text: str, n_classes: int) -> dict[str, np.ndarray]:
    """A LightGBM multiclass model (its text format) in this module's boosting layout.

    LightGBM lists a tree's inner nodes, then refers to leaf k as child ~k; here a
    tree's leaves follow its inner nodes. A split's decision_type holds whether it is
    categorical (bit 0, refused), where NaN goes (bit 1) and the missing type (bits 2-3):
    NaN (NaN takes the default side), None (NaN is compared as 0.0) or Zero (refused:
    only with zero_as_missing, which this project does not set).
    """
    parts = []
    for tree in _model_text_trees(text):
        leaf_value = np.array(tree["leaf_value"].split(), dtype=np.float64)
        n_leaves = int(tree["num_leaves"])
        n_inner = n_leaves - 1
        if n_inner == 0:  # no split: one leaf
            part = _node_arrays(np.array([True]), *np.zeros((4, 1), dtype=np.int64),
                                np.zeros(1, dtype=bool))
        else:
            def column(key, dtype):
                return np.array(tree[key].split(), dtype=dtype)

            decision = column("decision_type", np.int64)
            if (decision & 1).any():
                raise ValueError("categorical splits are not supported")
            missing_type = (decision >> 2) & 3
            if (missing_type == 1).any():
                raise ValueError("zero-as-missing splits are not supported")
            threshold = column("threshold", np.float64)
            missing_left = np.where(missing_type == 2, (decision & 2) != 0, threshold >= 0.0)

            def node(child):  # a leaf ~k follows the inner nodes
                return np.where(child >= 0, child, n_inner + ~child)

            def padded(values):  # leaves get placeholders: _node_arrays clears them
                return np.concatenate([values, np.zeros(n_leaves, dtype=values.dtype)])

            leaf = np.arange(n_inner + n_leaves) >= n_inner
            part = _node_arrays(leaf, padded(column("split_feature", np.int64)),
                                padded(threshold), padded(node(column("left_child", np.int64))),
                                padded(node(column("right_child", np.int64))),
                                padded(missing_left))
        part["leaf_value"] = leaf_value
        parts.append(part)
    if not parts or len(parts) % n_classes:
        raise ValueError(f"{len(parts)} LightGBM trees is not a whole number of rounds "
                         f"of {n_classes} classes")
    arrays = _concat(parts, NODE_KEYS[1:] + ("leaf_value",))
    arrays["baseline"] = np.zeros(n_classes)  # LightGBM adds its start to the first trees
    return arrays


def fit(family: str, params, x_train, y_train, x_val, y_val, n_classes: int, n_jobs: int = 2):
    """Fit one family; return its predictor (``predict_proba(x) -> (n, n_classes)``).

    Labels are class indices 0..n_classes-1. The forest ignores the validation
    split (tune its params on it instead); boosting stops early on its loss.
    """
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    if x_train.ndim != 2 or not 1 <= x_train.shape[1] <= 127:  # features are stored as int8
        raise ValueError(f"expected features of shape (n, 1..127), got {x_train.shape}")
    if y_train.size and (y_train.min() < 0 or y_train.max() >= n_classes):
        raise UserError(f"labels must be class indices 0..{n_classes - 1}")
    if family == "forest":
        return fit_forest(params, x_train, y_train, n_classes, n_jobs)
    if family == "boosting":
        if (x_val is None) != (y_val is None):
            raise ValueError("boosting's validation split needs both features and labels")
        if x_val is not None:
            x_val, y_val = np.asarray(x_val, dtype=np.float32), np.asarray(y_val, dtype=np.int64)
        return fit_boosting(params, x_train, y_train, x_val, y_val, n_classes, n_jobs)
    raise UserError(f"unknown tree family {family!r}: {', '.join(TREE_FAMILIES)}")


# --- files --------------------------------------------------------------------------------


def _checked_temperature(value) -> float:
    temperature = float(value)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature {value!r}: must be a finite number > 0")
    return temperature


def _checked_ranges(ranges: dict, features: list[str]) -> dict[str, tuple[float, float]]:
    checked = {}
    for name, bounds in ranges.items():
        if name not in features:
            raise ValueError(f"ranges: {name!r} is not one of the model's features")
        low, high = (float(b) for b in bounds)
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"ranges: {name!r}: ({low}, {high}) is not a finite min <= max")
        checked[str(name)] = (low, high)
    return checked


# zlib's level for the tree files: the forest's (200 trees, 6.7 million nodes) writes in
# 1.9-2.0 s at 3 (31.4 MB), 5.1 s at numpy's 6 (29.3 MB), 1.1 s at 1 (34.5 MB) (2026-11-30)
NPZ_COMPRESSLEVEL = 3


def save(model: _Trees, path: str | Path, classes: list[str], features: list[str],
         ranges: dict[str, tuple[float, float]] | None = None,
         temperature: float | None = None,
         compresslevel: int | None = NPZ_COMPRESSLEVEL) -> None:
    """Write the model, its class list and feature names as one .npz, atomically.

    ``ranges`` ({feature: (training min, training max)}) and ``temperature`` (> 0)
    are optional metadata; None keeps the model's own (none, and 1.0, for a model
    just fitted; what the file held, for a loaded one). ``compresslevel``: zlib's
    (None: its default, smaller and slower than NPZ_COMPRESSLEVEL).
    """
    if len(classes) != model.n_classes:
        raise ValueError(f"{len(classes)} class names for a model of {model.n_classes} classes")
    if len(features) != model.n_features:
        raise ValueError(f"{len(features)} feature names for a model of {model.n_features} inputs")
    temperature = _checked_temperature(model.temperature if temperature is None else temperature)
    ranges = model.ranges if ranges is None else ranges
    arrays = {
        "format": np.array(FILE_FORMAT), "version": np.array(FORMAT_VERSION),
        "family": np.array(model.family),
        "classes": np.array(list(classes), dtype=str),
        "features": np.array(list(features), dtype=str),
        "temperature": np.array(temperature, dtype=np.float64),
        **model.arrays,
    }
    if model.fitted_with:  # unknown only for a model read from a file without it
        arrays["fitted_with"] = np.array(model.fitted_with)
    if ranges:
        ranges = _checked_ranges(ranges, list(features))
        arrays["range_features"] = np.array(list(ranges), dtype=str)
        arrays["ranges"] = np.array(list(ranges.values()), dtype=np.float64).reshape(-1, 2)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            write_npz(handle, arrays, compresslevel)


class _Invalid(Exception):
    pass


def _scalar(arrays: dict, key: str, kind: str):
    value = arrays.get(key)
    if value is None or value.shape != () or value.dtype.kind not in kind:
        raise _Invalid(f"no {key!r} entry")
    return value.item()


def _metadata(arrays: dict, features: list[str]) -> dict:
    """The optional entries (absent from files written before them): defaults when absent."""
    found = {"fitted_with": None, "temperature": 1.0, "ranges": None}
    if "fitted_with" in arrays:
        found["fitted_with"] = str(_scalar(arrays, "fitted_with", "U"))
    elif "sklearn_version" in arrays:  # files written before LightGBM could fit boosting
        found["fitted_with"] = f"scikit-learn {_scalar(arrays, 'sklearn_version', 'U')}"
    if "temperature" in arrays:
        found["temperature"] = _checked_temperature(_scalar(arrays, "temperature", "f"))
    if "ranges" in arrays or "range_features" in arrays:
        names = _names(arrays, "range_features")
        bounds = arrays.get("ranges")
        if (bounds is None or bounds.dtype.kind != "f" or bounds.shape != (len(names), 2)
                or len(set(names)) != len(names)):
            raise _Invalid("ranges do not match range_features")
        found["ranges"] = _checked_ranges(dict(zip(names, bounds.tolist())), features)
    return found


def _names(arrays: dict, key: str) -> list[str]:
    value = arrays.get(key)
    if value is None or value.ndim != 1 or value.dtype.kind != "U" or value.size == 0:
        raise _Invalid(f"no {key!r} list")
    return [str(v) for v in value]


def _check(arrays: dict, family: str, n_classes: int, n_features: int) -> dict:
    """Every size and index in range, so a damaged file fails here, not inside predict."""
    keys = NODE_KEYS + LEAF_KEYS[family]
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise _Invalid(f"missing {', '.join(missing)}")
    kinds = {"threshold": "f", "missing_left": "b", "leaf_value": "f", "baseline": "f"}
    for key in keys:
        if arrays[key].ndim != 1 or arrays[key].dtype.kind not in kinds.get(key, "iu"):
            raise _Invalid(f"{key}: {arrays[key].dtype} array of shape {arrays[key].shape}")
        # every index is used as an int64: a larger unsigned value would wrap to a negative one
        if arrays[key].dtype.kind == "u" and arrays[key].size \
                and arrays[key].max() > np.iinfo(np.int64).max:
            raise _Invalid(f"{key} out of range")
    tree_nodes = arrays["tree_nodes"].astype(np.int64)
    n_nodes = len(arrays["feature"])
    if tree_nodes.size == 0 or tree_nodes.min() < 1 or tree_nodes.sum() != n_nodes:
        raise _Invalid("tree sizes do not add up")
    if any(len(arrays[k]) != n_nodes for k in NODE_KEYS[2:]):
        raise _Invalid("node arrays differ in length")
    feature = arrays["feature"]
    if int(feature.min()) < -1 or int(feature.max()) >= n_features:
        raise _Invalid("feature index out of range")
    if np.isnan(arrays["threshold"]).any():
        raise _Invalid("NaN threshold")
    leaf = feature < 0
    tree_ends = np.cumsum(tree_nodes)
    # in slices of nodes: the whole file's temporaries would be 8 bytes a node each
    for begin in range(0, n_nodes, CHECK_NODES):
        stop = min(begin + CHECK_NODES, n_nodes)
        node = np.arange(begin, stop)
        tree_end = tree_ends[np.searchsorted(tree_ends, node, side="right")]
        inner = ~leaf[begin:stop]
        for side in ("left", "right"):
            child = node + arrays[side][begin:stop].astype(np.int64)
            # children after their parent, in its tree: no cycles, every walk ends at a leaf
            if np.any(inner & ((child <= node) | (child >= tree_end))):
                raise _Invalid(f"{side} child out of range")
    n_leaves = int(leaf.sum())
    if family == "forest":
        nnz = arrays["leaf_nnz"].astype(np.int64)
        if len(nnz) != n_leaves or nnz.min() < 1 or nnz.sum() != len(arrays["leaf_class"]):
            raise _Invalid("leaf arrays do not add up")
        if len(arrays["leaf_count"]) != len(arrays["leaf_class"]):
            raise _Invalid("leaf arrays differ in length")
        leaf_class = arrays["leaf_class"].astype(np.int64)
        if leaf_class.min() < 0 or leaf_class.max() >= n_classes \
                or arrays["leaf_count"].min() <= 0:
            raise _Invalid("leaf class or count out of range")
    else:
        if len(arrays["leaf_value"]) != n_leaves or len(arrays["baseline"]) != n_classes:
            raise _Invalid("leaf values or baseline do not match the trees and classes")
        if len(tree_nodes) % n_classes:
            raise _Invalid(f"{len(tree_nodes)} trees is not a whole number of rounds")
        if not (np.isfinite(arrays["leaf_value"]).all() and np.isfinite(arrays["baseline"]).all()):
            raise _Invalid("non-finite leaf values")
    return {k: arrays[k] for k in keys}


FAMILY_CLASSES = {"forest": Forest, "boosting": Boosting}


# what read_header reads: every entry but the trees themselves
HEADER_KEYS = ("format", "version", "family", "classes", "features", "temperature",
               "fitted_with", "sklearn_version", "range_features", "ranges")


def _read(path: str | Path, header_only: bool):
    """(family, classes, features, metadata, checked tree arrays or None for
    ``header_only``) of a saved model; UserError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (train it: dvc repro)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise _Invalid("a single .npy array, not an .npz archive")
            arrays = {name: archive[name] for name in archive.files
                      if not header_only or name in HEADER_KEYS}
        if _scalar(arrays, "format", "U") != FILE_FORMAT:
            raise _Invalid("not written by stages.trees")
        version = _scalar(arrays, "version", "iu")
        if version != FORMAT_VERSION:
            raise _Invalid(f"format version {version}, this code reads {FORMAT_VERSION}")
        family = _scalar(arrays, "family", "U")
        if family not in FAMILY_CLASSES:
            raise _Invalid(f"unknown family {family!r}")
        classes, features = _names(arrays, "classes"), _names(arrays, "features")
        checked = None if header_only else _check(arrays, family, len(classes), len(features))
        metadata = _metadata(arrays, features)
    except (_Invalid, ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: not a tree model saved by this project ({reason})") from None
    return family, classes, features, metadata, checked


def read_header(path: str | Path) -> tuple[list[str], list[str], dict]:
    """(classes, features, metadata: fitted_with, temperature, ranges) of a saved model,
    without reading or checking its trees (what callers that only want the lists need):
    2 ms where load() takes 0.6-1.6 s for the forest (2026-11-30)."""
    _, classes, features, metadata, _ = _read(path, header_only=True)
    return classes, features, metadata


def load(path: str | Path, compiled: bool = True):
    """Read a saved model: (predictor, classes, features); UserError when it is not one.

    ``compiled=False``: walk the trees with numpy only (no probe of the compiled walk).
    """
    family, classes, features, metadata, checked = _read(path, header_only=False)
    predictor = FAMILY_CLASSES[family](checked, len(classes), len(features), compiled=False)
    for key, value in metadata.items():
        setattr(predictor, key, value)
    if compiled:
        # probed after the version is known, so a note about a failing walk can name it
        predictor.use_compiled_walk()
    return predictor, classes, features
