"""Adapt the published model to your own labels: a model that predicts them.

    python -m stages.adapt FILE --label COLUMN -o my-genres.zip [--base MODEL]
                           [--decimal ,] [--column SOURCE=FEATURE ...] [--use-popularity]
                           [--head auto|linear|forest|ensemble] [--folds 5] [--seed 0]

FILE is read as predict reads its input (CSV or the audio-features API's JSON, the same
column names, aliases and ``--column`` renames, files without some features); COLUMN holds
each track's label (rows with an empty label are skipped). The published network (``--base``,
default the published genre-classifier: a blend's masked network, which takes missing
features) is run once over the file; its 114 genre log-probabilities, next to the file's raw
features, feed a small head fitted to the labels: a logistic regression (``linear``), a
random forest (``forest``), or ``ensemble``: the mean of those two and of a forest on the
raw features alone (the best of both ends on the stand-in, bench/adapt.py). ``auto`` (the
default) takes the one with the best cross-validated accuracy on the file itself.

Every run prints an honest report: k-fold cross-validation grouped by track_id (the same
track in two playlists is never on both sides), and on the same folds the from-scratch
baselines (a random forest on the raw features, and the same heads on the raw features
alone), each as accuracy and macro-F1, at 10, 20, 50, 200 and all labelled tracks per
label (the learning curve). The report is also written beside the model as
``NAME.report.json`` and ``NAME.curve.png``.

The model file is a zip: the base network's own .keras file, the head's .npz (plain
arrays, read with ``allow_pickle=False``), and the class (the labels) and feature lists;
loading it runs no code from it, and ``python -m stages.predict my-genres.zip tracks.csv``
uses it like any other model file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from stages.common import (
    FEATURES,
    ID_COLUMN,
    PUBLISHED_MODEL,
    PUBLISHED_NAME,
    UserError,
    atomic_path,
    cli,
    feature_ranges,
    fixed_date,
    write_npz,
)
from stages.inputs import DEFAULT_CHUNK_ROWS, InputReader, PlausibilityCheck, parse_renames
from stages.predict import NOT_FROM_THE_API, CappedMessages

# --- the model file -------------------------------------------------------------------

ADAPTED_MEMBER = "adapted.json"
ADAPTED_FORMAT = "spotify-genre-adapted"
ADAPTED_VERSION = 1
BASE_FILE = "members/base.keras"
HEAD_FORMAT = "spotify-genre-head"
HEAD_VERSION = 1
# the long-tailed features a network head reads as logs (as stages.models does)
LOG_SHIFT = {"duration_ms": 1.0, "speechiness": 1e-3, "acousticness": 1e-3,
             "instrumentalness": 1e-3, "liveness": 1e-3}
PROBA_FLOOR = 1e-6  # log-probabilities of the base are clipped here

# --- the method ---------------------------------------------------------------------------

SIZES = (10, 20, 50, 200)  # labelled tracks per label on the learning curve (plus all)
DEFAULT_FOLDS = 5
CV_THREADS = 2  # folds fitted at once (the 2-core machine)
MIN_TRACKS = 2  # fewest tracks a label needs
LINEAR_C = 0.1  # inverse L2 strength of the logistic regression (standardized inputs)


# --- reading the labelled file ----------------------------------------------------------


@dataclass
class Labelled:
    values: np.ndarray  # float64 (n, len(features)): the features the model will take
    labels: np.ndarray  # object array of str
    groups: np.ndarray  # int64: rows of one track_id share a group (no track_id: one per row)
    features: list[str]
    has_track_id: bool


def read_labelled(path: Path, label: str, say: Callable[[str], None], *, decimal: str = ".",
                  renames: dict[str, str] | None = None, use_popularity: bool = False,
                  ranges: dict | None = None, base_features: list[str] = FEATURES,
                  min_features: int = 1, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Labelled:
    """The file's usable rows, labels and track groups; one UserError line for bad input."""
    if label in FEATURES or label == ID_COLUMN:
        raise UserError(f"--label {label}: that column is a feature or the track id, not a label")
    with InputReader(path, base_features, decimal=decimal, renames=renames, passthrough=label,
                     chunk_rows=chunk_rows) as reader:
        if not reader.has_passthrough:
            shown = ", ".join(repr(h) for h in reader.header[:12])
            more = ", …" if len(reader.header) > 12 else ""
            raise UserError(f"{path}: no label {reader.item} {label!r} (the file has "
                            f"{shown}{more}; name it with --label)")
        for note in reader.notes:
            say(note)
        present = [f for f in base_features if f not in reader.missing]
        left_out = [] if use_popularity else [f for f in present if f in NOT_FROM_THE_API]
        features = [f for f in present if f not in left_out]
        if len(features) < min_features:
            raise UserError(f"{path}: only {len(features)} features ({', '.join(features)}): "
                            f"the base model needs at least {min_features}")
        if left_out:
            say(f"{', '.join(left_out)} left out: popularity from another dataset or time does "
                "not mean what it meant in the base model's training data (--use-popularity to "
                "use it)")
        if reader.missing:
            say(f"adapting without {', '.join(reader.missing)} (not in the file): predict "
                "will ask only for the features used here")
        columns = [base_features.index(f) for f in features]
        plausibility = PlausibilityCheck(path, features, ranges, reader.unit)
        messages = CappedMessages(say, reader.unit)
        values, labels, ids, skipped = [], [], [], 0
        for chunk in reader.chunks():
            messages.add(chunk.problems)
            x = chunk.values[:, columns]
            keep = ~plausibility.skip(x, chunk.positions)
            text = np.array([str(v).strip() for v in chunk.passthrough], dtype=object)
            empty = text == ""
            skipped += int((keep & empty).sum())
            keep &= ~empty
            values.append(x[keep])
            labels.append(text[keep])
            if chunk.track_ids is not None:
                ids.append(chunk.track_ids[keep])
        messages.finish()
        plausibility.check_majority()
        for line in plausibility.summary():
            say(line)
        has_track_id = reader.has_track_id
    values = np.concatenate(values) if values else np.zeros((0, len(features)))
    labels = np.concatenate(labels) if labels else np.zeros(0, dtype=object)
    if skipped:
        say(f"{skipped:,} rows without a label skipped")
    if not len(labels):
        raise UserError(f"{path}: no row has a label in {label!r} (all empty, or no usable row)")
    if has_track_id:
        groups = np.unique(np.concatenate(ids).astype(str), return_inverse=True)[1]
    else:
        groups = np.arange(len(labels))
    names = [str(name) for name in np.unique(labels.astype(str))]
    if len(names) < 2:
        raise UserError(f"{path}: every labelled row has the label {names[0]!r}: a model needs "
                        "at least 2 labels to tell apart")
    tracks = {name: len(np.unique(groups[labels == name])) for name in names}
    few = [name for name in names if tracks[name] < MIN_TRACKS]
    if few:
        shown = ", ".join(f"{n!r} ({tracks[n]} track{'s' if tracks[n] != 1 else ''})"
                          for n in few[:5])
        raise UserError(f"{path}: label{'s' if len(few) > 1 else ''} {shown}"
                        f"{' …' if len(few) > 5 else ''}: every label needs at least "
                        f"{MIN_TRACKS} tracks (label more tracks or drop it)")
    return Labelled(values, labels.astype(str), groups.astype(np.int64), features, has_track_id)


# --- the base network ------------------------------------------------------------------------


def base_network_bytes(path: Path) -> bytes:
    """The network file to adapt from: a .keras network as it is, or a blend's fallback
    member (the masked network that takes missing features)."""
    from stages.model_files import BLEND_MEMBER, is_blend  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: base model not found (get the published model: dvc pull, or "
                        "name one with --base)")
    if is_blend(path):
        with zipfile.ZipFile(path) as archive:
            spec = json.loads(archive.read(BLEND_MEMBER))
            fallback = spec.get("fallback")
            entry = next((m for m in spec.get("members", []) if m.get("name") == fallback), None)
            if entry is None or not str(entry.get("file", "")).endswith(".keras"):
                raise UserError(f"{path}: a blend without a network member to adapt from "
                                "(name a .keras network with --base)")
            return archive.read(entry["file"])
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise UserError(f"{path}: the base must be a network (.keras) or a blend holding one")
    return path.read_bytes()


class Base:
    """The base network, loaded: its features, classes, ranges, and log-probabilities."""

    def __init__(self, network: bytes):
        from stages.model_files import (  # noqa: PLC0415
            MISSING_MEMBER,
            load_model,
            read_member,
            read_ranges,
        )
        from stages.tf_setup import quiet_tensorflow  # noqa: PLC0415

        quiet_tensorflow()
        self.bytes = network
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "base.keras"
            path.write_bytes(network)
            self.model, self.classes, self.features = load_model(path)
            self.ranges = read_ranges(path)
            self.masking = read_member(path, MISSING_MEMBER)

    def log_proba(self, x: np.ndarray, features: list[str]) -> np.ndarray:
        """(n, base classes) log-probabilities of rows ``x`` over ``features`` (the base's
        other features missing: NaN)."""
        from stages.model_files import predict_proba  # noqa: PLC0415

        full = np.full((len(x), len(self.features)), np.nan, dtype=np.float32)
        for j, name in enumerate(self.features):
            if name in features:
                full[:, j] = x[:, features.index(name)]
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        proba = np.asarray(predict_proba(self.model, full), dtype=np.float64)
        return np.log(np.clip(proba, PROBA_FLOOR, 1.0)).astype(np.float32)


# --- heads: fitted on (raw features, base log-probabilities), saved as plain arrays ---------


class NetworkHead:
    """Dense layers in numpy on the standardized inputs (the long-tailed features as logs):
    a logistic regression is one layer. ``log_shift`` is NaN for a column read as it is."""

    kind = "network"

    def __init__(self, log_shift, mean, scale, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.log_shift = np.asarray(log_shift, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
                       for w, b in layers]

    @property
    def n_classes(self) -> int:
        return self.layers[-1][1].shape[0]

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        t = transform_inputs(np.asarray(z, dtype=np.float64), self.log_shift)
        t = (t - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            t = t @ w + b
            if i < len(self.layers) - 1:
                t = np.maximum(t, 0.0)
        t -= t.max(axis=1, keepdims=True)
        e = np.exp(t)
        return e / e.sum(axis=1, keepdims=True)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"format": np.array(HEAD_FORMAT), "version": np.array(HEAD_VERSION),
               "kind": np.array(self.kind), "log_shift": self.log_shift, "mean": self.mean,
               "scale": self.scale, "layers": np.array(len(self.layers))}
        for i, (w, b) in enumerate(self.layers):
            out[f"w{i}"], out[f"b{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, arrays: dict, width: int, n_classes: int) -> "NetworkHead":
        def get(key, ndim):
            value = arrays.get(key)
            if value is None or value.ndim != ndim or value.dtype.kind != "f" \
                    or not np.isfinite(value[~np.isnan(value)] if key == "log_shift" else value).all():
                raise ValueError(f"head: bad or missing {key!r}")
            return value

        log_shift, mean, scale = get("log_shift", 1), get("mean", 1), get("scale", 1)
        if not (log_shift.shape == mean.shape == scale.shape == (width,)) or (scale <= 0).any():
            raise ValueError("head: input statistics do not match its inputs")
        count = arrays.get("layers")
        if count is None or count.shape != () or count.dtype.kind not in "iu" or not 1 <= count <= 8:
            raise ValueError("head: bad layer count")
        layers, rows = [], width
        for i in range(int(count)):
            w, b = get(f"w{i}", 2), get(f"b{i}", 1)
            if w.shape[0] != rows or b.shape != (w.shape[1],):
                raise ValueError(f"head: layer {i} does not fit the one before")
            layers.append((w, b))
            rows = w.shape[1]
        if rows != n_classes:
            raise ValueError(f"head: {rows} outputs for {n_classes} classes")
        return cls(log_shift, mean, scale, layers)


def transform_inputs(z: np.ndarray, log_shift: np.ndarray) -> np.ndarray:
    t = z.copy()
    logged = ~np.isnan(log_shift)
    t[:, logged] = np.log(np.maximum(t[:, logged], 0.0) + log_shift[logged])
    return t


def input_log_shift(features: list[str], extra: int) -> np.ndarray:
    shift = np.full(len(features) + extra, np.nan)
    for j, name in enumerate(features):
        if name in LOG_SHIFT:
            shift[j] = LOG_SHIFT[name]
    return shift


def fit_linear(z: np.ndarray, y: np.ndarray, n_classes: int, features: list[str],
               seed: int) -> NetworkHead:
    """Multinomial logistic regression on the standardized inputs (L2, C = LINEAR_C)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    shift = input_log_shift(features, z.shape[1] - len(features))
    t = transform_inputs(z.astype(np.float64), shift)
    mean, scale = t.mean(axis=0), t.std(axis=0)
    scale[~(scale > 1e-9)] = 1.0
    present = np.unique(y)
    w = np.zeros((z.shape[1], n_classes))
    b = np.full(n_classes, -1e4)  # a label absent from the rows (a CV fold): never answered
    if len(present) == 1:  # one label in a small fold: it is the answer
        b[present] = 0.0
        return NetworkHead(shift, mean, scale, [(w, b)])
    fit = LogisticRegression(C=LINEAR_C, max_iter=300, tol=1e-4, random_state=seed)
    fit.fit((t - mean) / scale, y)
    coef, intercept = fit.coef_, fit.intercept_
    if len(present) == 2:  # scikit-learn fits one logit for two classes
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    w[:, present] = coef.T
    b[present] = intercept
    return NetworkHead(shift, mean, scale, [(w, b)])


def forest_params(width: int, inputs: str, seed: int) -> SimpleNamespace:
    """The forest of a component: on the raw features scikit-learn's default (100 trees,
    sqrt of the width per split); on features + 114 log-probabilities, whose columns are
    much alike, 50 trees and half that many per split (as accurate, a third of the time)."""
    if inputs == "features":
        return SimpleNamespace(n_estimators=100, max_features=max(1, round(math.sqrt(width))),
                               min_samples_leaf=1, seed=seed)
    return SimpleNamespace(n_estimators=50, max_features=max(1, round(math.sqrt(width) / 2)),
                           min_samples_leaf=1, seed=seed)


class _SklearnForest:
    """A fitted RandomForestClassifier answering over all n_classes (a label absent from
    the rows: probability 0); what cross-validation uses (the saved model: stages.trees)."""

    def __init__(self, forest, n_classes: int):
        self.forest, self.n_classes = forest, n_classes

    def predict_proba(self, z):
        out = np.zeros((len(z), self.n_classes))
        out[:, self.forest.classes_] = self.forest.predict_proba(z)
        return out


def fit_forest(z: np.ndarray, y: np.ndarray, n_classes: int, inputs: str, seed: int,
               saved: bool = False, n_jobs: int = 2):
    """A random forest on ``z`` as it is; ``saved``: as stages.trees' plain-array forest
    (the same trees: trees.fit_forest grows them with the same seeds)."""
    params = forest_params(z.shape[1], inputs, seed)
    z = z.astype(np.float32)
    if saved:
        from stages import trees  # noqa: PLC0415

        return trees.fit_forest(params, z, y, n_classes, n_jobs=n_jobs)
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415

    forest = RandomForestClassifier(n_estimators=params.n_estimators,
                                    max_features=params.max_features,
                                    min_samples_leaf=params.min_samples_leaf,
                                    random_state=params.seed, n_jobs=n_jobs)
    return _SklearnForest(forest.fit(z, y), n_classes)


# A head is the equal-weight mean of components: (kind, inputs). Inputs "all" are the
# features and the base model's log-probabilities, "features" the features alone.
HEADS = {
    "linear": (("linear", "all"),),
    "forest": (("forest", "all"),),
    "ensemble": (("linear", "all"), ("forest", "all"), ("forest", "features")),
}


def fit_component(kind: str, inputs: str, z: np.ndarray, y: np.ndarray, n_classes: int,
                  features: list[str], seed: int, saved: bool = False, n_jobs: int = 2):
    if kind == "linear":
        return fit_linear(z, y, n_classes, features, seed)
    return fit_forest(z, y, n_classes, inputs, seed, saved=saved, n_jobs=n_jobs)


def select_inputs(inputs: str, x: np.ndarray, logp: np.ndarray) -> np.ndarray:
    return np.hstack([x, logp]) if inputs == "all" else x


def fit_head(head: str, x: np.ndarray, logp: np.ndarray, y: np.ndarray, n_classes: int,
             features: list[str], seed: int, saved: bool = True):
    """The head's parts: (kind, inputs, fitted model, weight)."""
    parts = HEADS[head]
    return [(kind, inputs, fit_component(kind, inputs, select_inputs(inputs, x, logp), y,
                                         n_classes, features, seed, saved), 1.0 / len(parts))
            for kind, inputs in parts]


def head_proba(parts, x: np.ndarray, logp: np.ndarray) -> np.ndarray:
    total = None
    for _, inputs, model, weight in parts:
        z = select_inputs(inputs, x, logp).astype(np.float32)
        p = weight * np.asarray(model.predict_proba(z), dtype=np.float64)
        total = p if total is None else total + p
    return total / total.sum(axis=1, keepdims=True)


# --- cross-validation ------------------------------------------------------------------------


def folds_of(labels: np.ndarray, groups: np.ndarray, k: int, seed: int):
    """Grouped, label-stratified folds: (train rows, test rows); no group on both sides."""
    import warnings  # noqa: PLC0415

    from sklearn.model_selection import StratifiedGroupKFold  # noqa: PLC0415

    k = max(2, min(k, len(np.unique(groups))))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a label with fewer tracks than folds: expected
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(labels)), labels, groups))


def per_label_sample(rows: np.ndarray, y: np.ndarray, size: int | None, seed) -> np.ndarray:
    """At most ``size`` rows of each label among ``rows`` (all of them for None), drawn
    at random with ``seed``; in row order."""
    if size is None:
        return rows
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(y[rows]):
        own = rows[y[rows] == label]
        picked.append(own if len(own) <= size else rng.choice(own, size, replace=False))
    return np.sort(np.concatenate(picked))


# What the report compares: the adapted heads and the from-scratch baselines (the raw
# features alone: a random forest, and the adapted linear head without the base model).
ADAPTED = {f"adapted {head}": head for head in HEADS}
BASELINE = "forest from scratch"
BASELINES = {BASELINE: ("forest", "features"), "linear from scratch": ("linear", "features")}
METHODS = (*ADAPTED, *BASELINES)


def cross_validate(x: np.ndarray, logp: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   n_classes: int, features: list[str], folds: int, seed: int,
                   sizes=SIZES, say=lambda _: None) -> dict:
    """Out-of-fold predictions of every method at every size, scored pooled over the folds:
    {"folds": k, "sizes": [...], "scores": {method: {size: {accuracy, macro_f1}}}}.
    Each component is fitted once per fold and size; heads are means of their components."""
    from sklearn.metrics import f1_score  # noqa: PLC0415

    splits = folds_of(y, groups, folds, seed)
    largest = max(np.bincount(y[tr]).max() for tr, _ in splits)
    sizes = [s for s in sizes if s < largest] + [None]
    components = sorted({c for head in HEADS.values() for c in head} | set(BASELINES.values()))
    predicted = {(m, s): np.full(len(y), -1) for m in METHODS for s in sizes}

    def one_fold(fold: int) -> dict:
        """{(method, size): the fold's test rows' answers}; one thread, one core."""
        train_rows, test_rows = splits[fold]
        answers = {}
        for s_index, size in enumerate(sizes):
            rows = per_label_sample(train_rows, y, size, [seed, fold, s_index])
            proba = {}
            for kind, inputs in components:
                model = fit_component(kind, inputs, select_inputs(inputs, x[rows], logp[rows]),
                                      y[rows], n_classes, features, seed, n_jobs=1)
                proba[(kind, inputs)] = model.predict_proba(
                    select_inputs(inputs, x[test_rows], logp[test_rows]).astype(np.float32))
            for method in METHODS:
                parts = HEADS[ADAPTED[method]] if method in ADAPTED else (BASELINES[method],)
                mean = sum(proba[part] for part in parts) / len(parts)
                answers[(method, size)] = mean.argmax(axis=1)
        return answers

    # two folds at a time, each in its own thread (the forests and the BLAS-free parts of
    # the regressions release the GIL): both cores busy all along; the answers do not
    # depend on it (every fit has its own seed)
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(max_workers=CV_THREADS) as pool:
        for fold, answers in enumerate(pool.map(one_fold, range(len(splits)))):
            for key, guess in answers.items():
                predicted[key][splits[fold][1]] = guess
            say(f"cross-validation: fold {fold + 1} of {len(splits)} done")
    scores = {}
    for method in METHODS:
        scores[method] = {}
        for size in sizes:
            guess = predicted[(method, size)]
            scores[method][size_name(size)] = {
                "accuracy": round(float((guess == y).mean()), 4),
                "macro_f1": round(float(f1_score(y, guess, average="macro",
                                                 labels=np.arange(n_classes))), 4)}
    return {"folds": len(splits), "sizes": [size_name(s) for s in sizes], "scores": scores}


def size_name(size: int | None) -> str:
    return "all" if size is None else str(size)


def choose_head(scores: dict) -> str:
    """The adapted head with the best cross-validated accuracy with all labels (ties:
    macro-F1, then the order of HEADS)."""
    def key(head):
        s = scores[f"adapted {head}"]["all"]
        return (s["accuracy"], s["macro_f1"], -list(HEADS).index(head))

    return max(HEADS, key=key)


# --- the report ---------------------------------------------------------------------------------


def report_table(cv: dict, chosen: str, methods=None) -> str:
    methods = methods or list(cv["scores"])
    header = ["tracks per label", *[f"{m}{' (chosen)' if m == f'adapted {chosen}' else ''}"
                                    for m in methods]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size in cv["sizes"]:
        cells = [size]
        for method in methods:
            s = cv["scores"][method][size]
            cells.append(f"{s['accuracy']:.3f} / {s['macro_f1']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curve(cv: dict, chosen: str, title: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ticks = list(range(len(cv["sizes"])))
    for method, scores in cv["scores"].items():
        values = [scores[s]["accuracy"] for s in cv["sizes"]]
        chosen_one = method == f"adapted {chosen}"
        style = "-" if method.startswith("adapted") else "--"
        ax.plot(ticks, values, style, marker="o", linewidth=3 if chosen_one else 1.5,
                label=method + (" (chosen)" if chosen_one else ""))
    ax.set_xticks(ticks, cv["sizes"])
    ax.set_xlabel("labelled tracks per label (cross-validated)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


# --- saving and loading ---------------------------------------------------------------------------


def _zip_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    archive.writestr(fixed_date(name, zipfile.ZIP_STORED), data)  # same input, same bytes


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (what np.load reads) with fixed member dates (write_npz)."""
    import io  # noqa: PLC0415

    handle = io.BytesIO()
    write_npz(handle, arrays)
    return handle.getvalue()


def _component_bytes(kind: str, model, classes: list[str], width: int) -> bytes:
    if kind == "forest":  # in stages.trees' layout, at zlib's default level: the adapted
        # file is a download, where its size counts more than the seconds
        from stages import trees  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "head.npz"
            trees.save(model, path, classes, [f"input_{j}" for j in range(width)],
                       compresslevel=None)
            return path.read_bytes()
    return _npz_bytes(model.arrays())


def save_adapted(path: Path, base: Base, parts, classes: list[str], features: list[str],
                 ranges: dict, report: dict) -> None:
    """The zip: adapted.json (which member is what), the base network's .keras file as it
    was, each head component's .npz, the class, feature and range lists, the report."""
    from stages.model_files import CLASSES_MEMBER, FEATURES_MEMBER, RANGES_MEMBER  # noqa: PLC0415

    heads, contents = [], {}
    for i, (kind, inputs, model, weight) in enumerate(parts):
        name = f"members/head{i}-{kind}-{inputs}.npz"
        width = len(features) + (len(base.classes) if inputs == "all" else 0)
        contents[name] = _component_bytes(kind, model, classes, width)
        heads.append({"kind": kind, "inputs": inputs, "file": name, "weight": weight})
    spec = {"format": ADAPTED_FORMAT, "version": ADAPTED_VERSION, "base": BASE_FILE,
            "inputs": {"all": "the features, then the base network's log-probabilities",
                       "features": "the features"},
            "heads": heads}
    members = {ADAPTED_MEMBER: json.dumps(spec, indent=1).encode(),
               CLASSES_MEMBER: json.dumps(classes).encode(),
               FEATURES_MEMBER: json.dumps(features).encode(),
               RANGES_MEMBER: json.dumps(ranges).encode(),
               "report.json": json.dumps(report, indent=1).encode(),
               BASE_FILE: base.bytes, **contents}
    with atomic_path(path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, data in members.items():
                _zip_entry(archive, name, data)


def is_adapted(path: Path) -> bool:
    """True for a zip with an adapted.json member (whatever the file is named)."""
    from stages.model_files import has_member  # noqa: PLC0415

    return has_member(path, ADAPTED_MEMBER)


def load_model(path: Path):
    """``stages.model_files.load_model``, and an adapted model too: (model, classes,
    features). (Here, not in model_files: that file is a dependency of every training stage.)"""
    from stages import model_files  # noqa: PLC0415

    if is_adapted(path):
        return load_adapted(path)
    return model_files.load_model(path)


class Adapted:
    """An adapted model: the base network's log-probabilities beside the raw features,
    through the head's components; ``predict_proba(x)`` over the model's features."""

    def __init__(self, base, base_features: list[str], features: list[str], parts,
                 n_classes: int):
        self.base, self.base_features, self.features = base, base_features, features
        self.parts, self.n_classes = parts, n_classes
        self.columns = [(j, features.index(f)) for j, f in enumerate(base_features)
                        if f in features]

    def predict_proba(self, x):
        from stages.model_files import predict_proba  # noqa: PLC0415

        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.n_classes))
        full = np.full((len(x), len(self.base_features)), np.nan, dtype=np.float32)
        for j, i in self.columns:
            full[:, j] = x[:, i]
        proba = np.asarray(predict_proba(self.base, full), dtype=np.float64)
        logp = np.log(np.clip(proba, PROBA_FLOOR, 1.0)).astype(np.float32)
        return head_proba(self.parts, x, logp)


def _head_entries(spec: dict) -> list[dict]:
    heads = spec.get("heads")
    if not isinstance(heads, list) or not heads or not all(
            isinstance(h, dict) and h.get("kind") in ("linear", "forest")
            and h.get("inputs") in ("all", "features")
            and isinstance(h.get("file"), str) and h["file"].startswith("members/")
            and isinstance(h.get("weight"), (int, float)) and not isinstance(h["weight"], bool)
            and math.isfinite(h["weight"]) and h["weight"] > 0
            for h in heads):
        raise ValueError(f"{ADAPTED_MEMBER}: bad heads entry")
    return heads


def load_adapted(path: Path):
    """(Adapted, classes, features); a UserError naming the file when it is not one of ours.
    Heads are read as plain arrays (allow_pickle=False), the base as a safe-mode .keras."""
    import io  # noqa: PLC0415

    from stages import trees  # noqa: PLC0415
    from stages.model_files import CLASSES_MEMBER, _features_in, load_model  # noqa: PLC0415

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            spec = json.loads(archive.read(ADAPTED_MEMBER))
            if not isinstance(spec, dict) or spec.get("format") != ADAPTED_FORMAT:
                raise ValueError(f"{ADAPTED_MEMBER} is not an adapted model's description")
            if spec.get("version") != ADAPTED_VERSION:
                raise ValueError(f"adapted format version {spec.get('version')!r}, this code "
                                 f"reads {ADAPTED_VERSION}")
            classes = json.loads(archive.read(CLASSES_MEMBER))
            if not isinstance(classes, list) or len(classes) < 2 \
                    or not all(isinstance(c, str) for c in classes):
                raise ValueError(f"{CLASSES_MEMBER} is not a list of labels")
            features = _features_in(archive)
            heads = _head_entries(spec)
            base_bytes = archive.read(BASE_FILE)
            head_bytes = [archive.read(h["file"]) for h in heads]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a model saved by this project ({exc})") from None
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "base.keras"
        base_path.write_bytes(base_bytes)
        try:
            base, base_classes, base_features = load_model(base_path)
        except UserError as exc:
            raise UserError(f"{path}: its base network: "
                            f"{str(exc).removeprefix(f'{base_path}: ')}") from None
        unknown = [f for f in features if f not in base_features]
        if unknown:
            raise UserError(f"{path}: takes features its base network does not: "
                            f"{', '.join(unknown)}")
        parts = []
        for entry, data in zip(heads, head_bytes):
            width = len(features) + (len(base_classes) if entry["inputs"] == "all" else 0)
            where = f"{path}: head {entry['file']}"
            if entry["kind"] == "forest":
                head_path = Path(tmp) / "head.npz"
                head_path.write_bytes(data)
                try:
                    model, head_classes, head_inputs = trees.load(head_path)
                except UserError as exc:
                    raise UserError(f"{where}: {str(exc).removeprefix(f'{head_path}: ')}") \
                        from None
                if head_classes != classes or len(head_inputs) != width:
                    raise UserError(f"{where}: does not fit the model's labels and inputs")
            else:
                try:
                    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                        arrays = {name: archive[name] for name in archive.files}
                    if str(arrays.get("format", "")) != HEAD_FORMAT \
                            or int(arrays.get("version", -1)) != HEAD_VERSION:
                        raise ValueError("not a head saved by stages.adapt")
                    model = NetworkHead.from_arrays(arrays, width, len(classes))
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as exc:
                    raise UserError(f"{where}: not a head saved by this project ({exc})") \
                        from None
            parts.append((entry["kind"], entry["inputs"], model, float(entry["weight"])))
    total = sum(part[3] for part in parts)
    parts = [(k, i, m, w / total) for k, i, m, w in parts]
    return Adapted(base, base_features, features, parts, len(classes)), classes, features


# --- the command --------------------------------------------------------------------------------


def adapt(input_path: Path, label: str, output: Path, say: Callable[[str], None], *,
          base_path: Path = PUBLISHED_MODEL, decimal: str = ".",
          renames: dict[str, str] | None = None, use_popularity: bool = False,
          head: str = "auto", folds: int = DEFAULT_FOLDS, seed: int = 0,
          sizes=SIZES, chunk_rows: int = DEFAULT_CHUNK_ROWS,
          report_path: Path | None = None, plot_path: Path | None = None) -> dict:
    """Read, cross-validate, fit and save; returns the report. Writes nothing on any error."""
    if head != "auto" and head not in HEADS:
        raise UserError(f"--head {head}: one of auto, {', '.join(HEADS)}")
    if folds < 2:
        raise UserError(f"--folds {folds}: must be >= 2")
    output = Path(output)
    if output.suffix == ".npz":
        raise UserError(f"-o {output}: an adapted model is a zip (name it .zip)")
    started = time.perf_counter()
    network = base_network_bytes(base_path)
    base = Base(network)
    min_features = int(base.masking.get("min_features", 1)) if base.masking else len(base.features)
    data = read_labelled(input_path, label, say, decimal=decimal, renames=renames,
                         use_popularity=use_popularity, ranges=base.ranges,
                         base_features=base.features, min_features=min_features,
                         chunk_rows=chunk_rows)
    if base.masking is None and data.features != base.features:
        missing = [f for f in base.features if f not in data.features]
        raise UserError(f"{input_path}: missing feature(s) {', '.join(missing)}: the base "
                        f"{base_path} takes no missing features (the published "
                        f"{PUBLISHED_NAME} does)")
    classes = sorted(set(data.labels))
    y = np.searchsorted(classes, data.labels)
    counts = np.bincount(y, minlength=len(classes))
    grouping = "grouped by track_id" if data.has_track_id else "no track_id: one row per group"
    say(f"{len(y):,} labelled tracks, {len(classes)} labels ({counts.min():,} to "
        f"{counts.max():,} each), {len(data.features)} features")
    logp = base.log_proba(data.values, data.features)
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    # one BLAS thread: the logistic regressions' small products run several times slower
    # with threads competing for 2 cores (the forests use their own 2 threads)
    with threadpool_limits(1):
        cv = cross_validate(data.values, logp, y, data.groups, len(classes), data.features,
                            folds, seed, sizes, say=say)
        chosen = choose_head(cv["scores"]) if head == "auto" else head
        parts = fit_head(chosen, data.values, logp, y, len(classes), data.features, seed)
    seconds = time.perf_counter() - started
    scores = cv["scores"]
    report = {
        "input": str(input_path), "label": label, "rows": int(len(y)),
        "labels": {c: int(n) for c, n in zip(classes, counts)},
        "features": data.features, "base": str(base_path),
        "folds": cv["folds"], "grouping": grouping, "seed": seed,
        "head": chosen, "head_chosen_by": "cross-validated accuracy with all labels"
        if head == "auto" else "--head",
        "baseline": BASELINE,
        "scores": scores, "sizes": cv["sizes"],
        "gain_over_baseline": {s: round(scores[f"adapted {chosen}"][s]["accuracy"]
                                        - scores[BASELINE][s]["accuracy"], 4)
                               for s in cv["sizes"]},
        "seconds": round(seconds, 1),
    }
    ranges = feature_ranges(data.values, data.features)
    # the copy inside the model holds no timing: the same input gives the same file
    save_adapted(output, base, parts, classes, data.features, ranges,
                 {k: v for k, v in report.items() if k != "seconds"})
    report_path = report_path or output.with_suffix(".report.json")
    plot_path = plot_path or output.with_suffix(".curve.png")
    with atomic_path(report_path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    plot_curve(cv, chosen, f"{input_path.name}: {len(classes)} labels, {cv['folds']}-fold CV "
               f"({grouping})", plot_path)
    report["report_file"], report["plot_file"] = str(report_path), str(plot_path)
    return report


def summary_lines(report: dict) -> list[str]:
    chosen = report["head"]
    lines = [f"cross-validated ({report['folds']} folds, {report['grouping']}) accuracy / "
             "macro-F1 by labelled tracks per label:", "",
             report_table({"sizes": report["sizes"], "scores": report["scores"]}, chosen), ""]
    gain = report["gain_over_baseline"]
    lines.append(f"head: {chosen} on the features and the base model's "
                 f"{'genre log-probabilities'} (chosen by {report['head_chosen_by']}); "
                 f"vs the {BASELINE}: "
                 + ", ".join(f"{'+' if g >= 0 else ''}{100 * g:.1f} points at {s}"
                             for s, g in gain.items()))
    if gain["all"] < 0:
        lines.append(f"with all your labels the adapted model is {-100 * gain['all']:.1f} points "
                     f"below a {BASELINE}: the base model's genres add little for these labels")
    return lines


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.adapt",
        description="Adapt the published model to your own labels: a model that predicts them.")
    parser.add_argument("input", type=Path, help="CSV or JSON of tracks with a label column")
    parser.add_argument("--label", required=True, help="the column holding each track's label")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="the adapted model file to write (.zip); its report and curve "
                        "are written beside it (NAME.report.json, NAME.curve.png)")
    parser.add_argument("--base", type=Path, default=PUBLISHED_MODEL,
                        help=f"the model to adapt (default {PUBLISHED_MODEL}: the published "
                        "blend's masked network; or a .keras network)")
    parser.add_argument("--decimal", choices=[".", ","], default=".",
                        help="the input's decimal mark (default '.'; ',' for 0,856)")
    parser.add_argument("--column", action="append", metavar="SOURCE=FEATURE",
                        help="read the input's column SOURCE as FEATURE (repeatable)")
    parser.add_argument("--use-popularity", action="store_true",
                        help="use the file's popularity and explicit (left out by default)")
    parser.add_argument("--head", default="auto", choices=("auto", *HEADS),
                        help="the head on the base model: auto (the best in cross-validation), "
                        "linear, forest or ensemble (the mean of both and of a forest on the "
                        "features alone)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                        help=f"cross-validation folds (default {DEFAULT_FOLDS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of folds, draws and heads")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    renames = parse_renames(args.column, passthrough=args.label)

    def say(message: str) -> None:
        print(f"{args.input}: {message}", file=sys.stderr, flush=True)

    report = adapt(args.input, args.label, args.output, say, base_path=args.base,
                   decimal=args.decimal, renames=renames, use_popularity=args.use_popularity,
                   head=args.head, folds=args.folds, seed=args.seed, chunk_rows=args.chunk_rows)
    print("\n".join(summary_lines(report)))
    print(f"adapt: {report['rows']:,} tracks, {len(report['labels'])} labels, "
          f"{report['seconds']:.0f} s -> {args.output} (report {report['report_file']}, "
          f"curve {report['plot_file']})")


if __name__ == "__main__":
    main()
