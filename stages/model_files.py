"""Saving and loading the project's model files (used by train, evaluate, publish, predict).

A model is a plain ``.keras`` file with one extra zip member, the class list, so a
model trained on merged genres predicts merged genres wherever it travels.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from stages.common import UserError, atomic_path

CLASSES_MEMBER = "classes.json"  # extra member in the .keras zip; keras' loader ignores it


def save_model(model, path: Path, classes: list[str]) -> None:
    """Save atomically, with the class list stored inside the .keras file."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(CLASSES_MEMBER, json.dumps(classes))


def load_model(path: Path):
    """Load a saved model and its class list; a clear error when it is missing or broken.

    Keras' loader runs in safe mode (the default): a file with Python lambdas or
    custom objects is refused, so a model pulled from a remote executes no code of its own.
    """
    import keras  # noqa: PLC0415 - callers run stages.tf_setup.quiet_tensorflow() first

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found (train it: dvc repro, or get it: dvc pull)")
    try:
        with zipfile.ZipFile(path) as archive:
            classes = json.loads(archive.read(CLASSES_MEMBER))
        model = keras.models.load_model(path, safe_mode=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a model saved by this project ({exc})") from None
    return model, classes


PREDICT_BATCH = 16384


def predict_proba(model, features):
    """Class probabilities, shape (n, classes), for float32 features of shape (n, 15).

    Direct calls in large batches: much faster than ``model.predict`` for models this
    small, and every stage (evaluate, publish, predict) computes them the same way.
    """
    import numpy as np  # noqa: PLC0415

    parts = [np.asarray(model(features[i : i + PREDICT_BATCH], training=False))
             for i in range(0, len(features), PREDICT_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype="float32")
