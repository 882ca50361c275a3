"""Ranking classes by probability: the one tie rule evaluate and predict share.

Ties always go to the lower class index (what a stable sort gives), so the top-k
that evaluate counts for a test row is exactly the top-k predict answers for it.
Exact ties are common: boosting gives hundreds of real test rows two classes with
the same probability. Pure numpy, no TensorFlow.
"""

from __future__ import annotations

import numpy as np


def top_class(proba: np.ndarray) -> np.ndarray:
    """Each row's most probable class index, ties to the lower index."""
    return np.argmax(proba, axis=1)  # numpy returns the first of equal maxima


def top_k_classes(proba: np.ndarray, k: int) -> np.ndarray:
    """Each row's k most probable class indices, best first, ties to the lower index
    (what a stable argsort of -proba gives). ``k`` above the class count: all classes."""
    n = proba.shape[1]
    if k >= n:
        return np.argsort(-proba, axis=1, kind="stable")
    # Partition first: fully sorting 114 classes per row costs about half the model's time.
    part = np.argpartition(-proba, (k - 1, k), axis=1)
    top = np.sort(part[:, :k], axis=1)  # index order, so the stable sort below keeps ties by index
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(proba, top, axis=1), axis=1,
                                             kind="stable"), axis=1)
    # a tie between the k-th and (k+1)-th class: which one is in depends on the index
    kth, next_ = (np.take_along_axis(proba, part[:, i:i + 1], axis=1)[:, 0] for i in (k - 1, k))
    tied = np.flatnonzero(kth == next_)
    if tied.size:
        top[tied] = np.argsort(-proba[tied], axis=1, kind="stable")[:, :k]
    return top


def top_k_hits(y_true: np.ndarray, proba: np.ndarray, k: int) -> np.ndarray:
    """True for each row whose class is among its top k (as top_k_classes ranks them)."""
    return (top_k_classes(proba, k) == np.asarray(y_true)[:, None]).any(axis=1)
