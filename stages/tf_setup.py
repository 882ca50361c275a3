"""TensorFlow set-up, kept apart from stages.common so that only the stages that use
TensorFlow depend on it (editing it must not re-run fetch, split or merge_genres)."""

from __future__ import annotations

import os

from stages.common import thread_limit


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ logs and make CPU math repeatable; call before importing keras.

    ``SPOTIFY_GENRE_THREADS`` caps TensorFlow's thread pools, so several queued
    experiments (``dvc queue start -j N``) don't oversubscribe the cores.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN reorders float sums between runs; off gives repeatable results.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import absl.logging  # noqa: PLC0415 - must follow the env vars above

    absl.logging.set_verbosity(absl.logging.ERROR)
    import tensorflow as tf  # noqa: PLC0415

    threads = thread_limit()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
