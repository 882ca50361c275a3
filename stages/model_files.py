"""Saving and loading the project's model files (used by train, evaluate, publish, predict).

A network is a plain ``.keras`` file with two extra zip members, the class list and
the feature list, so a model trained on merged genres predicts merged genres and a
model trained on the 13 audio features asks only for those, wherever it travels. A
tree family is an ``.npz`` of plain arrays with the same two lists (stages/trees.py).
Neither format runs code from the file when it is loaded.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

from stages.common import FEATURES, MODELS_DIR, UserError, atomic_path

# extra members in the .keras zip; keras' loader ignores them
CLASSES_MEMBER = "classes.json"
FEATURES_MEMBER = "features.json"
RANGES_MEMBER = "ranges.json"  # {feature: [min, max]} over the training rows (optional)
TREE_SUFFIX = ".npz"


def family_file(family: str) -> Path:
    """Where the pipeline keeps a family's model: models/<family>.keras or .npz (trees)."""
    from stages.params import TREES  # noqa: PLC0415

    return MODELS_DIR / f"{family}{TREE_SUFFIX if family in TREES else '.keras'}"


def save_model(model, path: Path, classes: list[str], features: list[str],
               ranges: dict[str, list[float]] | None = None) -> None:
    """Save atomically, with the class and feature lists (and, when given, each feature's
    training range, for predict's plausibility check) stored inside the .keras file."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(CLASSES_MEMBER, json.dumps(classes))
            archive.writestr(FEATURES_MEMBER, json.dumps(list(features)))
            if ranges is not None:
                archive.writestr(RANGES_MEMBER, json.dumps(
                    {f: [float(low), float(high)] for f, (low, high) in ranges.items()}))


def _features_in(archive: zipfile.ZipFile) -> list[str]:
    if FEATURES_MEMBER not in archive.namelist():
        return list(FEATURES)  # saved before models recorded their features: all 15
    features = json.loads(archive.read(FEATURES_MEMBER))
    if (not isinstance(features, list) or not features
            or not all(isinstance(f, str) and f in FEATURES for f in features)):
        raise ValueError(f"{FEATURES_MEMBER} is not a list of feature names")
    return features


def _missing_file(path: Path) -> UserError:
    return UserError(f"{path}: model file not found (train it: dvc repro, or get it: dvc pull)")


def _not_ours(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: not a model saved by this project ({exc})")


def read_features(path: Path) -> list[str]:
    """The feature list a saved model takes, without loading the model (no TensorFlow)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        from stages import trees  # noqa: PLC0415

        return trees.load(path)[2]
    try:
        with zipfile.ZipFile(path) as archive:
            return _features_in(archive)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None


def _ranges_in(archive: zipfile.ZipFile) -> dict[str, list[float]] | None:
    if RANGES_MEMBER not in archive.namelist():
        return None  # saved before models recorded ranges: no plausibility check
    ranges = json.loads(archive.read(RANGES_MEMBER))
    if not isinstance(ranges, dict) or not all(
            name in FEATURES and isinstance(pair, list) and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in pair) and pair[0] <= pair[1]
            for name, pair in ranges.items()):
        raise ValueError(f"{RANGES_MEMBER} is not {{feature: [min, max]}}")
    return {name: [float(low), float(high)] for name, (low, high) in ranges.items()}


def read_ranges(path: Path) -> dict[str, list[float]] | None:
    """Each feature's training range {feature: [min, max]} stored with a model, or None
    (a model saved without them, or a tree family's .npz, which does not store them yet)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return _ranges_in(archive)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None


def load_model(path: Path):
    """Load a saved model: (model, class list, feature list); a clear error when missing or broken.

    A tree family's ``.npz`` is read with ``np.load(allow_pickle=False)`` and checked.

    Keras' loader runs in safe mode (the default): a file with Python lambdas or
    custom objects is refused, so a model pulled from a remote executes no code of its own.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_file(path)
    if path.suffix == TREE_SUFFIX:
        from stages import trees  # noqa: PLC0415

        return trees.load(path)
    import keras  # noqa: PLC0415 - callers run stages.tf_setup.quiet_tensorflow() first

    try:
        with zipfile.ZipFile(path) as archive:
            classes = json.loads(archive.read(CLASSES_MEMBER))
            features = _features_in(archive)
        model = keras.models.load_model(path, safe_mode=True)
        width = model.input_shape[-1]
        if width != len(features):
            raise ValueError(f"the model takes {width} values, its feature list names "
                             f"{len(features)}")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _not_ours(path, exc) from None
    return model, classes, features


PREDICT_BATCH = 16384


def predict_proba(model, x):
    """Class probabilities, shape (n, classes), for float32 features x of shape (n, len(features)).

    The one place every stage (evaluate, publish, predict) gets probabilities from.
    An object with its own ``predict_proba(x)`` (a tree-model family) answers itself;
    a Keras model gets direct calls in large batches: much faster than
    ``model.predict`` for models this small.
    """
    import numpy as np  # noqa: PLC0415

    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x))
    parts = [np.asarray(model(x[i : i + PREDICT_BATCH], training=False))
             for i in range(0, len(x), PREDICT_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype="float32")
