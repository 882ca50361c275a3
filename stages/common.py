"""Shared schema, IO and CLI helpers for every stage.

Everything a stage writes goes through the ``atomic_*`` helpers so that an
interrupted or failed run never leaves a half-written output behind. Nothing here
imports TensorFlow (that set-up lives in ``stages.tf_setup``), so that the data
stages, which depend on this file, don't re-run when the TensorFlow set-up changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

# --- dataset schema ---------------------------------------------------------

INDEX_COLUMN = "Unnamed: 0"  # how pandas names the CSV's unnamed first column
ID_COLUMN = "track_id"
GENRE_COLUMN = "track_genre"
LABEL_COLUMN = "label"
TEXT_COLUMNS = ["artists", "album_name", "track_name"]

# The 15 feature columns, in the dataset's column order. A model takes a subset
# (param `features`) in this order; the saved model records which.
FEATURES = [
    "popularity",
    "duration_ms",
    "explicit",
    "danceability",
    "energy",
    "key",
    "loudness",
    "mode",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "time_signature",
]
# What Spotify's audio-features API returns: the 15 less popularity and explicit
# (track/catalogue data, not audio descriptors), in the same dataset order.
API_MISSING = ("popularity", "explicit")
AUDIO_FEATURES = [f for f in FEATURES if f not in API_MISSING]
# Param `features` picks one; a saved model records the list it was trained on.
FEATURE_SETS = {"all": FEATURES, "audio": AUDIO_FEATURES}
NUMERIC_COLUMNS = [f for f in FEATURES if f != "explicit"]
RAW_COLUMNS = [INDEX_COLUMN, ID_COLUMN, *TEXT_COLUMNS, *FEATURES, GENRE_COLUMN]
SPLITS = ("train", "val", "test")

# --- paths (relative to the repository root, where DVC runs every stage) -----

RAW_CSV = Path("data/raw/tracks.csv")
SPLIT_DIR = Path("data/split")
LABELED_DIR = Path("data/labeled")
CLASSES_JSON = LABELED_DIR / "classes.json"
# merge_genres.train_on = genres: how the genres the models learn become the merged classes
# they answer in (stages.merge_genres; {"fold": null} when they answer in their own)
FOLD_JSON = LABELED_DIR / "fold.json"
MODELS_DIR = Path("models")
# each family's (and the blend's) validation probabilities from its fit on train alone: what
# blend and evaluate weigh and rank by, even when the saved model was refitted on train+val
VAL_PROBA_DIR = Path("data/val_proba")
# every model's (and the blend's) test probabilities, as evaluate scored them: publish
# analyses the published model's from here, so it neither loads nor runs a model
TEST_PROBA_DIR = Path("data/test_proba")
PUBLISHED_NAME = "genre-classifier"  # the artifact this repository publishes (param `model` picks it)
PUBLISHED_MODEL = MODELS_DIR / f"{PUBLISHED_NAME}.keras"
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")  # plain outputs (provenance, data statistics, timings): not metrics
PLOTS_DIR = Path("plots")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class UserError(Exception):
    """A mistake the user can fix (bad input file, bad param): one line, no traceback."""


THREADS_VARIABLE = "SPOTIFY_GENRE_THREADS"


def thread_limit() -> int | None:
    """``SPOTIFY_GENRE_THREADS``: the most threads a stage computes with (TensorFlow's pools,
    the tree walks), so that several queued experiments or Dask workers don't oversubscribe
    the cores; None when unset."""
    value = os.environ.get(THREADS_VARIABLE)
    if not value:
        return None
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"{THREADS_VARIABLE}={value!r}: must be a whole number >= 1") from None
    return n


def threads() -> int:
    """The threads a stage computes with: SPOTIFY_GENRE_THREADS, else every core."""
    return thread_limit() or os.cpu_count() or 1


# glibc's malloc (mallopt's parameter numbers)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
HEAP_BLOCKS_UP_TO = 1 << 30  # larger blocks still go straight to the system
KEEP_FREED_UP_TO = (1 << 31) - 1  # the heap's free top is handed back only above this


def reuse_freed_memory() -> bool:
    """Let glibc's malloc reuse freed large blocks instead of returning them to the system.

    By default every block above 128 KB-32 MB is mapped on allocation and unmapped when
    freed, so each new array or tensor of that size touches fresh zeroed pages again. On a
    machine that backs memory lazily (a VM) those page faults were a tenth to a third of a
    stage's time: 15 million in one dvc repro, 80-140 s of system time. Blocks up to 1 GB
    now come from the heap, freed ones stay there for the next allocation, and the
    threads share one heap (one per thread held freed blocks that the others could not
    reuse: the forest's fit peaked 0.4 GB higher). True when glibc took the settings;
    elsewhere (macOS, Windows, musl) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO),
                mallopt(M_TRIM_THRESHOLD, KEEP_FREED_UP_TO), mallopt(M_ARENA_MAX, 1)])


def cli(main: Callable[..., None]) -> Callable[..., None]:
    """Turn UserError (and Ctrl-C) into one line on stderr and a non-zero exit; the run's
    large blocks of memory are reused (reuse_freed_memory)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        reuse_freed_memory()
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: no output was written", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Temp outputs are already cleaned up on the way here. Skip interpreter
            # teardown: TensorFlow's worker threads can stall it after an interrupt.
            os._exit(130)

    return wrapper


# --- atomic output ------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On any exception (or KeyboardInterrupt) the temporary file is removed and an
    existing ``path`` is left untouched. Temp names look like '.NAME.XXXX.tmp'
    (plus ``suffix``, for writers that insist on an extension), so a SIGKILL
    leftover is hidden, git-ignored and never mistaken for an output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes files private
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path, for a directory: fill a temp dir, then swap it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def fixed_date(name: str, compress_type: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    """A zip member dated 1980-01-01: the same contents are the same bytes (one DVC hash)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def write_npz(handle, arrays: dict, compresslevel: int | None = None) -> None:
    """Write ``arrays`` to the binary file ``handle`` as np.savez_compressed does (one .npy
    member per array, no pickles, what np.load reads), but with zlib's ``compresslevel``
    (1: fast .. 9: small; numpy always uses 6) and every member dated 1980-01-01, so the
    same arrays are the same bytes."""
    with zipfile.ZipFile(handle, "w") as archive:
        for name, value in arrays.items():
            array = io.BytesIO()
            np.lib.format.write_array(array, np.asanyarray(value), allow_pickle=False)
            # the level goes with each member: a ZipInfo ignores the archive's
            archive.writestr(fixed_date(f"{name}.npy"), array.getvalue(),
                             compresslevel=compresslevel)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    return pd.read_parquet(path, engine="pyarrow")


def write_proba(path: Path, proba) -> None:
    with atomic_path(path, ".npy") as tmp, open(tmp, "wb") as out:
        np.save(out, np.asarray(proba), allow_pickle=False)


def write_val_proba(name: str, proba) -> None:
    write_proba(VAL_PROBA_DIR / f"{name}.npy", proba)


def read_proba(path: Path, n_rows: int, n_classes: int, split: str, stage: str) -> np.ndarray:
    """Probabilities a stage saved for the ``split`` split, checked against its rows and
    classes; ``stage``: the one that writes them (named in the error)."""
    if not path.exists():
        raise UserError(f"{path}: file not found (run {stage}: dvc repro)")
    proba = np.load(path, allow_pickle=False)
    if proba.shape != (n_rows, n_classes):
        raise UserError(f"{path}: probabilities of shape {proba.shape}, but the {split} split "
                        f"has {n_rows} rows and {n_classes} classes: re-run {stage} (dvc repro)")
    return proba


def validation_proba(name: str, n_rows: int, n_classes: int, final_fit: str, predict):
    """``name``'s validation probabilities: from VAL_PROBA_DIR when its train stage wrote
    them, else ``predict()`` (a model fitted outside the pipeline), which is honest only
    when the model never saw the validation split (final_fit = train)."""
    path = VAL_PROBA_DIR / f"{name}.npy"
    if path.exists():
        return read_proba(path, n_rows, n_classes, "validation", "its train stage")
    if final_fit != "train":
        raise UserError(f"{path}: file not found: with final_fit = {final_fit} the validation "
                        "probabilities come from the fit on train alone (dvc repro)")
    return predict()


def training_rows(train_frame: pd.DataFrame, val_frame: pd.DataFrame,
                  final_fit: str) -> pd.DataFrame:
    """The rows a saved model is fitted on (param ``final_fit``): train, or train + val."""
    if final_fit == "train+val":
        return pd.concat([train_frame, val_frame], ignore_index=True)
    return train_frame


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    return json.loads(path.read_text())


def feature_ranges(values: np.ndarray, features: list[str]) -> dict[str, list[float]]:
    """Each feature's [min, max] over training rows (what a model file stores as ranges.json)."""
    values = np.asarray(values, dtype=np.float64)
    return {f: [float(np.nanmin(values[:, j])), float(np.nanmax(values[:, j]))]
            for j, f in enumerate(features)}


def read_labeled(split: str) -> pd.DataFrame:
    return read_parquet(LABELED_DIR / f"{split}.parquet")


def read_classes() -> list[str]:
    return list(read_json(CLASSES_JSON))


def label_indices(frame: pd.DataFrame, classes: list[str]):
    """Each row's label as its position in ``classes`` (the model's output order)."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame[LABEL_COLUMN]) - set(index))
    if unknown:
        raise UserError(f"labels not in the model's class list: {', '.join(unknown[:5])} "
                        "(re-run merge_genres and retrain: dvc repro)")
    return frame[LABEL_COLUMN].map(index).to_numpy(dtype="int64")


class Fold:
    """Answers at merged classes from a model of genres: each class's probability is the
    sum of its genres' (as `predict --level` folds). ``genres`` are the model's classes in
    its output order, ``targets`` the class of each; the classes are the targets sorted."""

    def __init__(self, genres: list[str], targets: list[str]):
        if len(genres) != len(targets) or len(set(genres)) != len(genres):
            raise ValueError("a fold needs one class for each of distinct genres")
        self.genres, self.targets = list(genres), list(targets)
        self.classes = sorted(set(self.targets))
        column = {name: j for j, name in enumerate(self.classes)}
        self.matrix = np.zeros((len(self.genres), len(self.classes)))
        self.matrix[np.arange(len(self.genres)), [column[t] for t in self.targets]] = 1.0

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(proba, dtype=np.float64) @ self.matrix

    def relabel(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with each row's label (a genre) replaced by its class."""
        unknown = sorted(set(frame[LABEL_COLUMN]) - set(self.genres))
        if unknown:
            raise UserError(f"{FOLD_JSON}: labels not among its genres: {', '.join(unknown[:5])} "
                            "(re-run merge_genres: dvc repro)")
        out = frame.copy()
        out[LABEL_COLUMN] = frame[LABEL_COLUMN].map(dict(zip(self.genres, self.targets)))
        return out

    def to_json(self) -> dict:
        return {"genres": self.genres, "to": self.targets}

    @classmethod
    def from_json(cls, spec, where: str) -> "Fold":
        """A fold described as to_json() does; a ValueError naming ``where`` otherwise."""
        if (not isinstance(spec, dict) or set(spec) != {"genres", "to"}
                or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                           for v in spec.values())):
            raise ValueError(f"{where}: not a fold ({{'genres': [...], 'to': [...]}})")
        try:
            return cls(spec["genres"], spec["to"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def read_fold(path: Path = FOLD_JSON) -> Fold | None:
    """The fold merge_genres wrote (None: the models answer in the classes they learned)."""
    spec = read_json(path)
    if not isinstance(spec, dict) or "fold" not in spec:
        raise UserError(f"{path}: not written by merge_genres (re-run it: dvc repro)")
    if spec["fold"] is None:
        return None
    try:
        return Fold.from_json(spec["fold"], str(path))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def answer_classes(fold: Fold | None, classes: list[str], where: str) -> list[str]:
    """The classes a model of ``classes`` answers in under ``fold``, checked to fit."""
    if fold is None:
        return classes
    if fold.genres != classes:
        raise UserError(f"{where} learned other classes than {FOLD_JSON} folds "
                        f"({len(classes)} against {len(fold.genres)}): re-run dvc repro")
    return fold.classes
